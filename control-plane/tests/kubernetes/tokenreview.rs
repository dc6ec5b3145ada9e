//! Bootstrap with a Kubernetes projected service account token: the real control plane, in
//! process, asks a stand-in API server (HTTPS with a test CA, reached through a kubeconfig file,
//! so the kube-rs client path is the one a cluster uses) to review each token, and a real tonic
//! client calls `Certify` over mutual-TLS-capable TLS 1.3.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tonic::Code;
use weft_api::v1::control_plane_client::ControlPlaneClient;
use weft_api::v1::CertifyRequest;
use weft_certs::{CertificateAuthority, Identity};
use weft_control_plane::ca::ca_store::{CaStoreOptions, RootSource};
use weft_control_plane::ca::tokenreview::KubeConnection;
use weft_control_plane::server::{self, Running, ServerConfig};
use weft_kube_standin::{kubeconfig, ApiServer};

pub(crate) const TD: &str = "weft.local";
/// Not a token the API server minted: not authenticated.
const TOKEN_B: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJleHBpcmVkIn0.c2lnbmF0dXJlLUI";

/// The stand-in API server with the service account `shop/orders` and a pod running as it,
/// and two tokens the kubelet would have minted for that pod: `a` for the audience `weft`,
/// `c` for another audience only.
struct StandIn {
    server: ApiServer,
    a: String,
    c: String,
}

async fn stand_in() -> StandIn {
    let server = ApiServer::start(vec![
        serde_json::json!({"kind": "ServiceAccount", "apiVersion": "v1",
            "metadata": {"name": "orders", "namespace": "shop"}}),
        serde_json::json!({"kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": "orders-v1-6d9f7c8b5-x2x9q", "namespace": "shop"},
            "spec": {"serviceAccountName": "orders", "containers": [{"name": "orders"}]}}),
    ])
    .await;
    let pod = Some("orders-v1-6d9f7c8b5-x2x9q");
    let hour = Duration::from_secs(3600);
    let a = server
        .mint_token("shop", "orders", &["weft"], hour, pod)
        .expect("token A");
    let c = server
        .mint_token("shop", "orders", &["vault"], hour, pod)
        .expect("token C");
    StandIn { server, a, c }
}

pub(crate) struct Mesh {
    pub(crate) dir: tempfile::TempDir,
    ca: CertificateAuthority,
}

pub(crate) fn mesh() -> Mesh {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = CertificateAuthority::generate_seeded(TD, 71).expect("mesh CA");
    std::fs::write(dir.path().join("root.crt"), ca.cert_pem()).expect("root");
    std::fs::write(dir.path().join("root.key"), ca.key_pem()).expect("key");
    std::fs::create_dir_all(dir.path().join("policy")).expect("policy dir");
    std::fs::write(
        dir.path().join("policy/mesh.yaml"),
        "services:\n  - name: orders\n    identity: spiffe://weft.local/ns/shop/sa/orders\n",
    )
    .expect("policy");
    Mesh { dir, ca }
}

async fn start_cp(mesh: &Mesh, state: &str, kubeconfig: PathBuf) -> Running {
    let d = mesh.dir.path();
    server::start(ServerConfig {
        policy_dir: d.join("policy"),
        state_dir: d.join(state),
        listen: "127.0.0.1:0".parse().expect("addr"),
        admin: "127.0.0.1:0".parse().expect("addr"),
        trust_domain: TD.to_owned(),
        ca: CaStoreOptions {
            root: RootSource::Files {
                cert: d.join("root.crt"),
                key: d.join("root.key"),
            },
            ..CaStoreOptions::default()
        },
        grace: Duration::from_secs(2),
        poll_interval: weft_control_plane::policy::source::DEFAULT_POLL_INTERVAL,
        admin_token_file: None,
        cert_lifetime: Duration::from_secs(3600),
        kubernetes_tokens: Some(KubeConnection::Kubeconfig(kubeconfig)),
    })
    .await
    .expect("control plane")
}

/// Connects TLS to the control plane, verifying it as the control plane's identity; no
/// client certificate (a bootstrapping sidecar has none).
#[derive(Clone)]
struct Connector {
    addr: SocketAddr,
    tls: tokio_rustls::TlsConnector,
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let (addr, tls) = (self.addr, self.tls.clone());
        Box::pin(async move {
            let cp = server::control_plane_identity(TD).map_err(std::io::Error::other)?;
            let name = ServerName::try_from(cp.dns_name()).map_err(std::io::Error::other)?;
            let tcp = TcpStream::connect(addr).await?;
            Ok(TokioIo::new(tls.connect(name, tcp).await?))
        })
    }
}

async fn client(mesh: &Mesh, cp: &Running) -> ControlPlaneClient<tonic::transport::Channel> {
    client_with(mesh, cp, None).await
}

/// [`client`] presenting `held` (certificate chain PEM, key PEM) as its client certificate.
async fn client_with(
    mesh: &Mesh,
    cp: &Running,
    held: Option<(&str, &str)>,
) -> ControlPlaneClient<tonic::transport::Channel> {
    client_at(mesh, cp.listen, held).await
}

/// A client of the control plane at `addr`, presenting `held` (certificate chain PEM, key
/// PEM) as its client certificate when given.
pub(crate) async fn client_at(
    mesh: &Mesh,
    addr: SocketAddr,
    held: Option<(&str, &str)>,
) -> ControlPlaneClient<tonic::transport::Channel> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(mesh.ca.cert_der().clone()).expect("root");
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("versions")
    .with_root_certificates(roots);
    let mut tls = match held {
        Some((chain, key)) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(chain.as_bytes())
                    .collect::<Result<_, _>>()
                    .expect("chain");
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
            builder.with_client_auth_cert(chain, key).expect("client")
        }
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let connector = Connector {
        addr,
        tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
    };
    let channel = tonic::transport::Endpoint::from_static("http://control-plane")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect_with_connector(connector)
        .await
        .expect("connect");
    ControlPlaneClient::new(channel)
}

pub(crate) fn csr(namespace: &str, sa: &str) -> String {
    let id = Identity::new(TD, namespace, sa).expect("identity");
    weft_certs::generate_csr(&id).expect("csr").0
}

pub(crate) fn ask(csr: &str, token: &str) -> CertifyRequest {
    CertifyRequest {
        csr_pem: csr.to_owned(),
        join_token: token.to_owned(),
    }
}

/// `GET path` on the admin port; returns the status line and body.
async fn admin_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = TcpStream::connect(addr).await.expect("admin");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: cp\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .expect("admin answer in time")
        .expect("read");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_tokens_get_exactly_their_service_account_identity() {
    let api = stand_in().await;
    let mesh = mesh();
    let kubeconfig = kubeconfig(mesh.dir.path(), &api.server);
    let cp = start_cp(&mesh, "state", kubeconfig).await;
    let mut sidecar = client(&mesh, &cp).await;

    // Probes: /ready is open (no bearer token) and says ready once policy and CA are in.
    let ready = admin_get(cp.admin, "/ready").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");

    // Token A (shop/orders, audience weft) + CSR for that identity: issued, exactly it.
    let issued = sidecar
        .certify(ask(&csr("shop", "orders"), &api.a))
        .await
        .expect("token A is accepted")
        .into_inner();
    let chain = weft_certs::parse_cert_chain_pem(&issued.cert_chain_pem).expect("chain");
    let leaf = chain.first().expect("leaf");
    assert_eq!(
        weft_certs::identity_from_cert_der(leaf.as_ref())
            .expect("identity")
            .to_string(),
        "spiffe://weft.local/ns/shop/sa/orders"
    );
    assert!(issued.trust_bundle_pem.contains("BEGIN CERTIFICATE"));

    // Token A + a CSR for another identity (same namespace, or another namespace): refused.
    for (ns, sa) in [("shop", "payments"), ("default", "orders")] {
        let e = sidecar
            .certify(ask(&csr(ns, sa), &api.a))
            .await
            .expect_err("another identity is refused");
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(
            e.message()
                .contains("spiffe://weft.local/ns/shop/sa/orders"),
            "{}",
            e.message()
        );
    }

    // Token B (not authenticated) and token C (another audience): unauthenticated.
    for (token, why) in [(TOKEN_B, "not authenticated"), (api.c.as_str(), "audience")] {
        let e = sidecar
            .certify(ask(&csr("shop", "orders"), token))
            .await
            .expect_err("refused");
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        assert!(e.message().contains(why), "{}", e.message());
        assert!(
            !e.message().contains(token),
            "the token leaked: {}",
            e.message()
        );
    }
    assert_eq!(api.server.reviews(), 5, "one review per call");

    // Join tokens keep working beside service account tokens, without a TokenReview; created
    // as an operator does on Kubernetes (weftctl through the operator API: the tokens live in
    // the Kubernetes API, not in this replica's state directory).
    let join = super::ctl::ok(
        cp.admin,
        &cp.admin_token_file,
        &["tokens", "create", "frontend"],
    )
    .await;
    assert!(
        !mesh.dir.path().join("state/join-tokens.json").exists(),
        "no token in the replica's own directory"
    );
    assert!(api
        .server
        .try_get_in("Secret", "weft-system", "weft-join-tokens")
        .is_some());
    let issued = sidecar
        .certify(ask(&csr("default", "frontend"), join.trim()))
        .await
        .expect("join token accepted")
        .into_inner();
    let chain = weft_certs::parse_cert_chain_pem(&issued.cert_chain_pem).expect("chain");
    assert_eq!(
        weft_certs::identity_from_cert_der(chain[0].as_ref())
            .expect("identity")
            .to_string(),
        "spiffe://weft.local/ns/default/sa/frontend"
    );
    assert_eq!(api.server.reviews(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_identity_renews_only_with_a_token_the_api_still_authenticates() {
    let api = stand_in().await;
    let mesh = mesh();
    let kubeconfig = kubeconfig(mesh.dir.path(), &api.server);
    let cp = start_cp(&mesh, "state", kubeconfig).await;
    let id = Identity::new(TD, "shop", "orders").expect("identity");
    let (csr_pem, key) = weft_certs::generate_csr(&id).expect("csr");
    let issued = client(&mesh, &cp)
        .await
        .certify(ask(&csr_pem, &api.a))
        .await
        .expect("token A is accepted")
        .into_inner();
    let mut renewing = client_with(&mesh, &cp, Some((&issued.cert_chain_pem, &key))).await;

    // By certificate alone the API cannot be asked: refused, saying what to present.
    let e = renewing
        .certify(ask(&csr_pem, ""))
        .await
        .expect_err("a service account identity does not renew by certificate alone");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(
        e.message().contains("presenting the service account token"),
        "{}",
        e.message()
    );
    // With the token the kubelet keeps fresh: re-reviewed, renewed.
    let before = api.server.reviews();
    renewing
        .certify(ask(&csr_pem, &api.a))
        .await
        .expect("renews with a live token");
    assert_eq!(api.server.reviews(), before + 1);
    // The same token once its pod is deleted: the API no longer authenticates it, refused.
    api.server
        .delete_in("Pod", "shop", "orders-v1-6d9f7c8b5-x2x9q");
    let e = renewing
        .certify(ask(&csr_pem, &api.a))
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("not authenticated"), "{}", e.message());
    assert!(e.message().contains("has been deleted"), "{}", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serial_denied_in_the_api_is_refused_by_every_replica() {
    let api = stand_in().await;
    let mesh = mesh();
    let kubeconfig = kubeconfig(mesh.dir.path(), &api.server);
    // Two replicas: one root, one API server, each its own (emptyDir) state directory.
    let one = start_cp(&mesh, "state-1", kubeconfig.clone()).await;
    let two = start_cp(&mesh, "state-2", kubeconfig).await;
    let id = Identity::new(TD, "shop", "orders").expect("identity");
    let (csr_pem, key) = weft_certs::generate_csr(&id).expect("csr");
    let issued = client(&mesh, &one)
        .await
        .certify(ask(&csr_pem, &api.a))
        .await
        .expect("token A is accepted")
        .into_inner();
    let held = Some((issued.cert_chain_pem.as_str(), key.as_str()));
    let chain = weft_certs::parse_cert_chain_pem(&issued.cert_chain_pem).expect("chain");
    let serial = weft_certs::serial_hex_from_cert_der(&chain[0]).expect("serial");
    for cp in [&one, &two] {
        client_with(&mesh, cp, held)
            .await
            .certify(ask(&csr_pem, &api.a))
            .await
            .expect("renews before the denial");
    }

    // Denied through one replica with the real weftctl, as an operator does: into the API
    // every replica reads.
    let said = super::ctl::ok(
        one.admin,
        &one.admin_token_file,
        &["certs", "deny", &serial.to_uppercase()],
    )
    .await;
    assert!(said.contains("no longer renews"), "{said}");
    let reads = api.server.gets("configmaps");
    for cp in [&one, &two] {
        let e = client_with(&mesh, cp, held)
            .await
            .certify(ask(&csr_pem, &api.a))
            .await
            .expect_err("denied at every replica");
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("is denied"), "{}", e.message());
    }
    assert_eq!(api.server.gets("configmaps"), reads + 2);
    // Another certificate of the same service account still renews.
    let (csr2, key2) = weft_certs::generate_csr(&id).expect("csr");
    let other = client(&mesh, &two)
        .await
        .certify(ask(&csr2, &api.a))
        .await
        .expect("a new attestation")
        .into_inner();
    client_with(&mesh, &one, Some((&other.cert_chain_pem, &key2)))
        .await
        .certify(ask(&csr2, &api.a))
        .await
        .expect("another serial renews");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_down_is_unavailable_not_a_refusal() {
    let api = stand_in().await;
    // A port that was just free: nothing listens there, so connections are refused.
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let mesh = mesh();
    let kubeconfig = mesh.dir.path().join("kubeconfig-down");
    weft_kube_standin::write_kubeconfig(&kubeconfig, down, &api.server.ca_pem);
    let cp = start_cp(&mesh, "state-down", kubeconfig).await;
    let mut sidecar = client(&mesh, &cp).await;
    let started = std::time::Instant::now();
    let e = sidecar
        .certify(ask(&csr("shop", "orders"), &api.a))
        .await
        .expect_err("no API, no certificate");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("Kubernetes API"), "{}", e.message());
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "answered within the review timeout"
    );
}
