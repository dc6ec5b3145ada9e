//! `weft up`'s gateway: a `weft-proxy --gateway` in front of `frontend`, the way in from
//! outside the mesh, with an HTTPS listener, a route that requires a JWT, and a demo token.
//!
//! ```text
//! curl ─HTTPS, Bearer token─▶ gateway (identity gateway) ─mTLS─▶ frontend sidecar ─▶ frontend
//! ```
//!
//! Keys: the demo token's Ed25519 signing key is made here and never leaves this process's
//! memory (it signs the one token and is dropped); the gateway gets only the public JWKS. The
//! edge CA's key likewise lives only while it signs the edge certificate, so nothing else can be
//! made to pass for `localhost`; the edge certificate's key is written 0600 for the gateway.
//!
//! The gateway joins the control plane like every sidecar of `weft up`: its sidecar file has a
//! `control_plane` block and a join token for the service `gateway` (identity
//! `spiffe://weft.local/ns/default/sa/gateway`, the one the shop's `authorization.yaml` lets
//! call `frontend`), so it bootstraps its own mesh certificate (its key never leaves it) and
//! takes the mesh services, `frontend`'s endpoints among them, from the control plane's
//! snapshots. The gateway file is written here by hand and names `frontend`; the gateway waits
//! for the first snapshot before it checks it (docs/CONFIG.md, "Gateway mode").

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair as _};

use crate::mesh::{write_private, TRUST_DOMAIN};
use crate::mesh::{Children, Ports};
use crate::pods::Pods;

/// The JWT issuer and audience of the demo token (what the gateway's provider requires).
pub const ISSUER: &str = "https://weft-up.local";
pub const AUDIENCE: &str = "frontend";
/// The host name the edge certificate is for, and the route's host.
pub const HOST: &str = "localhost";
/// How long the demo token is valid.
const LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The gateway's listeners inside the node namespace (captured mode), which has ports of its
/// own; the host reaches HTTPS and admin through relays.
const NODE_PORTS: [u16; 5] = [8443, 15000, 15001, 15006, 8080];

/// The running gateway, as the host reaches it.
pub struct Gateway {
    /// Its HTTPS listener.
    pub https: SocketAddr,
    /// Its admin listener (`/metrics`, `/ready`).
    pub admin: SocketAddr,
    /// The edge CA's certificate (for `curl --cacert`).
    pub ca: PathBuf,
    /// The demo token (a JWT for `frontend`, subject `demo`).
    pub token: String,
    /// The gateway process.
    pub pid: u32,
}

impl Gateway {
    /// What `weft up` prints about its gateway.
    pub fn print(&self) {
        println!(
            "  gateway        https://{HOST}:{}  (route / to frontend; a JWT of issuer {ISSUER} required)",
            self.https.port()
        );
        println!("  try (gateway)  {}", self.curl());
    }

    /// A `curl` line through the gateway to `frontend`, ready to paste.
    pub fn curl(&self) -> String {
        format!(
            "curl --cacert {} -H 'Authorization: Bearer {}' https://{HOST}:{}/shop/7",
            self.ca.display(),
            self.token,
            self.https.port()
        )
    }
}

/// A signed demo token (EdDSA, `sub: demo`) and the JWKS with its public key; the private
/// key exists only inside this function.
pub fn demo_token(now: SystemTime) -> anyhow::Result<(String, String)> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| anyhow::anyhow!("generating the demo signing key"))?;
    let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| anyhow::anyhow!("loading the demo signing key"))?;
    let kid = "weft-up-demo";
    let iat = now.duration_since(UNIX_EPOCH)?.as_secs();
    let header = serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": kid});
    let claims = serde_json::json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "demo",
        "iat": iat, "exp": iat + LIFETIME.as_secs(),
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = key.sign(signing_input.as_bytes());
    let token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()));
    let jwks = serde_json::json!({"keys": [{
        "kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA", "use": "sig",
        "x": URL_SAFE_NO_PAD.encode(key.public_key().as_ref()),
    }]});
    Ok((token, format!("{jwks:#}\n")))
}

/// An edge CA and a certificate for [`HOST`] (and 127.0.0.1) signed by it, in `dir`:
/// `edge-ca.pem`, `edge.crt`, `edge.key` (0600). The CA's key is dropped here.
pub fn edge_certificates(dir: &Path) -> anyhow::Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "weft up edge CA");
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::new(vec![HOST.to_owned()])?;
    leaf.subject_alt_names
        .push(SanType::IpAddress(Ipv4Addr::LOCALHOST.into()));
    leaf.distinguished_name.push(DnType::CommonName, HOST);
    let key = KeyPair::generate()?;
    let cert = leaf.signed_by(&key, &issuer)?;
    std::fs::write(dir.join("edge-ca.pem"), ca_cert.pem())?;
    std::fs::write(dir.join("edge.crt"), cert.pem())?;
    write_private(&dir.join("edge.key"), &key.serialize_pem())
}

/// The gateway file (beside the files it names): HTTPS on `https`, one route to `frontend`
/// that requires the demo JWT.
pub fn gateway_file(https: SocketAddr) -> String {
    format!(
        "# weft up's gateway (docs/CONFIG.md \"Gateway mode\"), written by `weft up`.\n\
         listen: {{https: \"{https}\"}}\n\
         tls:\n  certificates: [{{hosts: [{HOST}], cert: edge.crt, key: edge.key}}]\n\
         auth:\n  jwt_providers:\n    - {{name: demo, issuer: \"{ISSUER}\", audiences: [{AUDIENCE}], \
         jwks_file: jwks.json, forward_claims: {{sub: x-user}}}}\n\
         routes:\n  - name: frontend\n    hosts: [{HOST}]\n    service: frontend\n    \
         access: {{auth: {{jwt: demo}}}}\n"
    )
}

/// How the gateway joins the mesh: the control plane's address as the gateway reaches it, its
/// join token and the mesh's root certificate (PEM).
pub struct Join {
    /// The control plane's sidecar address (in captured mode, its relay on the bridge).
    pub control_plane: SocketAddr,
    /// A join token for the service `gateway`.
    pub token: String,
    /// The mesh root, the gateway's trust bundle.
    pub trust_bundle: String,
}

/// The gateway's sidecar file: its identity, listeners `[https, admin, outbound, inbound,
/// app]` (nothing listens at `app`), and the control plane at `cp`, which gives it its
/// certificate (with the join token in `token`) and the mesh services.
pub fn sidecar_file(listen: [SocketAddr; 5], cp: SocketAddr) -> String {
    let [_, admin, outbound, inbound, app] = listen;
    format!(
        "# The gateway's sidecar file, written by `weft up`: its mesh identity; its certificate\n\
         # and the mesh services come from the control plane, as every sidecar's.\n\
         service:\n  name: gateway\n  identity: spiffe://{TRUST_DOMAIN}/ns/default/sa/gateway\n  \
         app: \"{app}\"\n  protocol: http\n\
         listen: {{outbound: \"{outbound}\", inbound: \"{inbound}\", admin: \"{admin}\"}}\n\
         tls: {{cert: mesh.crt, key: mesh.key, trust_bundle: mesh-ca.pem}}\n\
         workers: 1\n\
         drain_timeout: 2s\n\
         control_plane:\n  address: \"{cp}\"\n  identity: spiffe://{TRUST_DOMAIN}/ns/weft-system/sa/control-plane\n  \
         state_file: state.json\n  join_token_file: token\n",
    )
}

/// Writes the gateway's files into `dir` and starts it (in the node namespace with `pods`,
/// else on loopback), joining the mesh as `join` says.
pub fn start(
    dir: &Path,
    join: &Join,
    proxy: &Path,
    pods: Option<&Pods>,
    ports: &mut Ports,
    children: &mut Children,
) -> anyhow::Result<Gateway> {
    std::fs::create_dir_all(dir)?;
    let (token, jwks) = demo_token(SystemTime::now())?;
    std::fs::write(dir.join("jwks.json"), jwks)?;
    edge_certificates(dir)?;
    write_private(&dir.join("token"), &join.token)?;
    std::fs::write(dir.join("mesh-ca.pem"), &join.trust_bundle)?;
    let listen: [SocketAddr; 5] = match pods {
        Some(_) => NODE_PORTS.map(|p| SocketAddrV4::new(Ipv4Addr::LOCALHOST, p).into()),
        None => [
            ports.next()?,
            ports.next()?,
            ports.next()?,
            ports.next()?,
            ports.next()?,
        ],
    };
    std::fs::write(dir.join("gateway.yaml"), gateway_file(listen[0]))?;
    std::fs::write(
        dir.join("sidecar.yaml"),
        sidecar_file(listen, join.control_plane),
    )?;
    let mut cmd = match pods {
        Some(p) => p.node_command(proxy),
        None => Command::new(proxy),
    };
    cmd.arg("--config")
        .arg(dir.join("sidecar.yaml"))
        .arg("--gateway")
        .arg(dir.join("gateway.yaml"))
        .env("RUST_LOG", "info");
    let pid = children.spawn("gateway", &mut cmd, &dir.join("gateway.log"))?;
    let (https, admin) = match pods {
        Some(p) => (
            p.expose_node(listen[0], ports, "gateway https")?,
            p.expose_node(listen[1], ports, "gateway admin")?,
        ),
        None => (listen[0], listen[1]),
    };
    Ok(Gateway {
        https,
        admin,
        ca: dir.join("edge-ca.pem"),
        token,
        pid,
    })
}
