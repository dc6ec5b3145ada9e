//! Gateway mode end to end: a real `weft-proxy --gateway` process in front of a real mesh
//! (the `orders` sidecar and its app), driven by the machine's `curl` over real TLS with
//! certificates made here (their own CA, DNS names), on ports the OS assigns and the gateway
//! reports in its ready file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SerialNumber};
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

/// The edge CA and the certificates the gateway serves.
pub(crate) struct EdgePki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl EdgePki {
    pub(crate) fn new(dir: &Path) -> Self {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "weft test edge CA");
        let key = KeyPair::generate().expect("ca key");
        let cert = params.self_signed(&key).expect("ca cert");
        std::fs::write(dir.join("edge-ca.pem"), cert.pem()).expect("write ca");
        EdgePki {
            dir: dir.to_owned(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Write `<file>.crt` / `<file>.key` for `name` with `serial`; tmp + rename, so the
    /// gateway's poll never reads half a file.
    pub(crate) fn issue(&self, file: &str, name: &str, serial: u64) {
        let mut params = CertificateParams::new(vec![name.to_owned()]).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.serial_number = Some(SerialNumber::from(serial));
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        self.replace(&format!("{file}.key"), &key.serialize_pem());
        self.replace(&format!("{file}.crt"), &cert.pem());
    }

    pub(crate) fn replace(&self, file: &str, text: &str) {
        let tmp = self.dir.join(format!("{file}.tmp"));
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, self.dir.join(file)).expect("rename");
    }
}

/// A running gateway and where it listens.
pub(crate) struct Gw {
    pub sidecar: Sidecar,
    pub edge: EdgePki,
    pub https: SocketAddr,
    pub http: SocketAddr,
    pub ca: PathBuf,
}

const GATEWAY_FILE: &str = r#"listen:
  https: 127.0.0.1:0
  http_redirect: 127.0.0.1:0
tls:
  min_version: "1.2"
  reload_interval: 200ms
  certificates:
    - {hosts: [api.example.test], cert: api.crt, key: api.key}
    - {hosts: [shop.test], cert: shop.crt, key: shop.key}
    - {hosts: ["*.example.test"], cert: wild.crt, key: wild.key}
hsts: {max_age: 365d, include_subdomains: true}
limits: {max_body_bytes: 1024, max_header_bytes: 4096, handshake_timeout: 1s, header_timeout: 1s}
routes:
  - name: orders-v1
    hosts: ["*.example.test", api.example.test]
    match: {path: {prefix: /v1/orders}}
    service: orders
    rewrite: {prefix: /orders}
    request_headers: {set: {x-api-version: v1}}
  - name: shop
    hosts: [shop.test]
    service: orders
"#;

/// Where a gateway started by [`spawn_gateway`] listens (from its ready file).
pub(crate) struct Listening {
    /// HTTPS.
    pub https: SocketAddr,
    /// The plain-HTTP redirect listener, when the gateway file has one.
    pub http: Option<SocketAddr>,
}

/// The gateway set-up every gateway test shares: `weft-proxy --config <sidecar> --gateway
/// <gateway_file>` with identity `gateway` (its certificate issued here) and the mesh
/// `services` given (the YAML of the `services:` list), started and waited on until its ready
/// file names its listeners.
pub(crate) async fn spawn_gateway(
    pki: &Pki,
    services: &str,
    gateway_file: &Path,
) -> (Sidecar, Listening) {
    pki.issue("gateway");
    let spec = Spec::new("gateway", http_app("gateway-unused").await);
    let head = serde_yaml::to_string(&Sidecar::config_head(&spec)).expect("yaml");
    let tag = unique_tag("gateway");
    let config = pki.path().join(format!("{tag}.yaml"));
    std::fs::write(&config, format!("{head}services:\n{services}")).expect("config");
    let log = pki.path().join(format!("{tag}.log"));
    let ready = pki.path().join(format!("{tag}.ready"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weft-proxy"));
    cmd.arg("--config")
        .arg(&config)
        .arg("--gateway")
        .arg(gateway_file)
        .arg("--ready-file")
        .arg(&ready);
    let child = guarded::spawn(
        cmd.env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log")),
    )
    .expect("spawn gateway");
    let mut sidecar = Sidecar {
        child,
        name: "gateway".to_owned(),
        outbound: ANY_PORT,
        inbound: ANY_PORT,
        admin: ANY_PORT,
        metrics: None,
        config,
        log,
        head,
        ready: Some(ready.clone()),
    };
    sidecar.wait_ready().await;
    let text = std::fs::read_to_string(&ready).expect("ready file");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let addr = |k: &str| -> Option<SocketAddr> { v[k].as_str().and_then(|s| s.parse().ok()) };
    let https =
        addr("gateway_https").unwrap_or_else(|| panic!("gateway_https in the ready file: {text}"));
    let listening = Listening {
        https,
        http: addr("gateway_http"),
    };
    (sidecar, listening)
}

/// The orders sidecar and app, and a gateway (identity `gateway`) routing to it.
async fn start(pki: &Pki) -> (Gw, Sidecar) {
    pki.issue("orders");
    let orders_app = http_app("orders-v1").await;
    let orders = Sidecar::start(pki, Spec::new("orders", orders_app)).await;
    let edge = EdgePki::new(pki.path());
    edge.issue("api", "api.example.test", 1001);
    edge.issue("shop", "shop.test", 2001);
    edge.issue("wild", "*.example.test", 3001);
    let file = pki.path().join("gateway.yaml");
    std::fs::write(&file, GATEWAY_FILE).expect("gateway file");
    let services = service_yaml("orders", "http", None, &[(orders.inbound, "v1")]);
    let (sidecar, at) = spawn_gateway(pki, &services, &file).await;
    let gw = Gw {
        edge,
        https: at.https,
        http: at.http.expect("the redirect listener"),
        ca: pki.path().join("edge-ca.pem"),
        sidecar,
    };
    (gw, orders)
}

/// The output of one `curl` run: exit code, stdout, stderr.
pub(crate) struct Curl {
    pub code: Option<i32>,
    pub out: String,
    pub err: String,
}

impl Gw {
    /// `curl` to `https://<host>:<port><path>` resolved to the gateway, trusting the edge CA,
    /// with `extra` arguments; stdout ends with a line `<status> <http version>`.
    pub(crate) fn curl(&self, host: &str, path: &str, extra: &[&str]) -> Curl {
        let port = self.https.port();
        let resolve = format!("{host}:{port}:127.0.0.1");
        let url = format!("https://{host}:{port}{path}");
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-m", "10", "--noproxy", "*", "--cacert"])
            .arg(&self.ca)
            .args([
                "--resolve",
                &resolve,
                "-w",
                "\n%{http_code} %{http_version}",
            ])
            .args(extra)
            .arg(&url);
        let (exit, out, err) = guarded::output_within(&mut cmd, Duration::from_secs(15));
        Curl {
            code: exit.code(),
            out,
            err,
        }
    }
}

impl Curl {
    /// The response body (JSON from the sample app) and the status line curl wrote last.
    pub(crate) fn parts(&self) -> (serde_json::Value, String) {
        let (body, status) = self.out.rsplit_once('\n').unwrap_or(("", &self.out));
        let body = body
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or(serde_json::Value::Null);
        (body, status.to_owned())
    }
}

/// The serial curl reports for the server's leaf certificate (`%{certs}`: certinfo, leaf
/// first), as a number.
fn leaf_serial(gw: &Gw, host: &str) -> Option<u64> {
    let c = gw.curl(host, "/v1/orders/1", &["-o", "/dev/null", "-w", "%{certs}"]);
    let serial = c
        .out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Serial Number:"))?;
    let hex: String = serial.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    u64::from_str_radix(&hex, 16).ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_routes_from_outside_into_the_mesh_with_its_own_identity() {
    let pki = Pki::new(2301);
    let (gw, _orders) = start(&pki).await;
    // HTTP/2 by ALPN (curl's default over TLS), SNI for api.example.test, a spoofed XFF and
    // mesh headers from the client.
    let c = gw.curl(
        "api.example.test",
        "/v1/orders/7?x=1",
        &[
            "-H",
            "x-weft-caller: spiffe://weft.local/ns/default/sa/admin",
            "-H",
            "x-weft-anything: 1",
            "-H",
            "X-Forwarded-For: 6.6.6.6",
            "-D",
            "-",
        ],
    );
    assert_eq!(c.code, Some(0), "{} {}", c.out, c.err);
    let (body, status) = c.parts();
    assert_eq!(status, "200 2", "{}", c.out);
    assert_eq!(body["path"], "/orders/7?x=1", "{body}");
    assert_eq!(
        body["caller"],
        spiffe("gateway"),
        "the app sees the gateway's identity"
    );
    let h = &body["headers"];
    assert!(h.get("x-weft-anything").is_none(), "{h}");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h}");
    assert_eq!(h["x-forwarded-proto"], "https", "{h}");
    assert_eq!(h["x-forwarded-host"], "api.example.test", "{h}");
    assert_eq!(
        h["forwarded"], "for=127.0.0.1;proto=https;host=\"api.example.test\"",
        "{h}"
    );
    assert_eq!(h["x-api-version"], "v1", "{h}");
    assert!(
        c.out
            .to_ascii_lowercase()
            .contains("strict-transport-security: max-age=31536000; includesubdomains"),
        "{}",
        c.out
    );
    // HTTP/1.1 by ALPN, the wildcard certificate, and the second host's route.
    let c = gw.curl("eu.example.test", "/v1/orders/8", &["--http1.1"]);
    let (body, status) = c.parts();
    assert_eq!(status, "200 1.1", "{} {}", c.out, c.err);
    assert_eq!(body["path"], "/orders/8");
    let c = gw.curl("shop.test", "/cart", &[]);
    let (body, status) = c.parts();
    assert_eq!(status, "200 2", "{} {}", c.out, c.err);
    assert_eq!(body["path"], "/cart");
    // Each name gets its own certificate.
    assert_eq!(leaf_serial(&gw, "api.example.test"), Some(1001));
    assert_eq!(leaf_serial(&gw, "shop.test"), Some(2001));
    assert_eq!(leaf_serial(&gw, "eu.example.test"), Some(3001));
    // No certificate and no default: the handshake fails (curl: 35, SSL connect error).
    let c = gw.curl("unknown.test", "/", &[]);
    assert_eq!(c.code, Some(35), "{} {}", c.out, c.err);
    // TLS 1.2 is offered, and so is 1.3.
    let c = gw.curl(
        "api.example.test",
        "/v1/orders/1",
        &["-v", "--tls-max", "1.2"],
    );
    assert!(c.err.contains("TLSv1.2"), "{}", c.err);
    let c = gw.curl("api.example.test", "/v1/orders/1", &["-v", "--tlsv1.3"]);
    assert!(c.err.contains("TLSv1.3"), "{}", c.err);
    // No route: a 404 from the gateway itself.
    let c = gw.curl("api.example.test", "/v2/nothing", &[]);
    assert_eq!(c.parts().1, "404 2", "{}", c.out);
    // Per-route metrics.
    wait_metric(
        gw.sidecar.admin,
        "weft_gateway_requests_total",
        &[("route", "orders-v1"), ("code", "200")],
        1.0,
        Duration::from_secs(10),
    )
    .await;
    wait_metric(
        gw.sidecar.admin,
        "weft_gateway_requests_total",
        &[("route", "unmatched"), ("code", "404")],
        1.0,
        Duration::from_secs(10),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_redirects_plain_http_and_enforces_limits() {
    let pki = Pki::new(2302);
    let (gw, _orders) = start(&pki).await;
    // The redirect listener: 308 to the same host and path over HTTPS, no HSTS on plain HTTP.
    let url = format!("http://api.example.test:{}/v1/orders?x=1", gw.http.port());
    let resolve = format!("api.example.test:{}:127.0.0.1", gw.http.port());
    let (exit, out, err) = guarded::output_within(
        Command::new("curl").args([
            "-sS",
            "-m",
            "10",
            "--noproxy",
            "*",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "--resolve",
            &resolve,
            &url,
        ]),
        Duration::from_secs(15),
    );
    assert!(exit.success(), "{out} {err}");
    let lower = out.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 308"), "{out}");
    let want = format!(
        "location: https://api.example.test:{}/v1/orders?x=1",
        gw.https.port()
    );
    assert!(lower.contains(&want), "{out}");
    assert!(!lower.contains("strict-transport-security"), "{out}");
    // A body over the limit: 413, by its declared length.
    let big = pki.path().join("big.bin");
    std::fs::write(&big, vec![b'x'; 4096]).expect("big");
    let data = format!("@{}", big.display());
    // HTTP/1.1: curl asks `Expect: 100-continue` and the gateway answers 413 before any of
    // the body is sent.
    let c = gw.curl(
        "api.example.test",
        "/v1/orders",
        &["--http1.1", "--data-binary", &data],
    );
    assert_eq!(c.parts().1, "413 1.1", "{} {}", c.out, c.err);
    // A body without a length (chunked), to the app's `/sink`, which reads all of it before
    // it answers: counted as it streams.
    let c = gw.curl(
        "shop.test",
        "/sink",
        &[
            "--http1.1",
            "-H",
            "Expect:",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &data,
        ],
    );
    assert_eq!(c.parts().1, "413 1.1", "{} {}", c.out, c.err);
    let c = gw.curl(
        "api.example.test",
        "/v1/orders",
        &["--data-binary", "small"],
    );
    assert_eq!(c.parts().1, "200 2", "{} {}", c.out, c.err);
    // A header block over the limit: 431.
    let huge = format!("x-big: {}", "y".repeat(5000));
    let c = gw.curl("api.example.test", "/v1/orders", &["-H", &huge]);
    assert_eq!(c.parts().1, "431 2", "{} {}", c.out, c.err);
    // A path that climbs out of the route's prefix is made canonical first: /v1/orders/../x
    // is /v1/x, which no route takes.
    let c = gw.curl("api.example.test", "/v1/orders/../x", &["--path-as-is"]);
    assert_eq!(c.parts().1, "404 2", "{} {}", c.out, c.err);
}

/// Read until EOF or error; true when the peer closed within `limit`.
async fn closed_within(s: &mut (impl AsyncReadExt + Unpin), limit: Duration) -> bool {
    let mut buf = [0u8; 512];
    tokio::time::timeout(limit, async {
        // Bounded by the timeout; each read returns data, EOF or an error.
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_times_out_slow_clients() {
    let pki = Pki::new(2303);
    let (gw, _orders) = start(&pki).await;
    // A client that connects and never starts the handshake: closed after handshake_timeout.
    let mut tcp = tokio::net::TcpStream::connect(gw.https)
        .await
        .expect("connect");
    assert!(
        closed_within(&mut tcp, Duration::from_secs(10)).await,
        "handshake stall not cut"
    );
    // A client that completes TLS and sends half a request header, then stalls.
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&gw.ca).expect("ca");
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.expect("pem")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(gw.https)
        .await
        .expect("connect");
    let name = rustls_pki_types::ServerName::try_from("api.example.test").expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("handshake");
    tls.write_all(b"GET /v1/orders HTTP/1.1\r\nHost: api.exa")
        .await
        .expect("write");
    assert!(
        closed_within(&mut tls, Duration::from_secs(10)).await,
        "header stall not cut"
    );
    wait_metric(
        gw.sidecar.admin,
        "weft_gateway_tls_handshakes_total",
        &[("result", "timeout")],
        1.0,
        Duration::from_secs(10),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_reloads_certificates_when_the_files_change() {
    let pki = Pki::new(2304);
    let (gw, _orders) = start(&pki).await;
    assert_eq!(leaf_serial(&gw, "api.example.test"), Some(1001));
    // A bad file: the gateway says why and keeps the certificate in force.
    std::fs::write(pki.path().join("api.crt.tmp"), "not a certificate").expect("write");
    std::fs::rename(pki.path().join("api.crt.tmp"), pki.path().join("api.crt")).expect("rename");
    weft_testkit::wait::until(
        "the refused reload in the log",
        Duration::from_secs(10),
        || {
            gw.sidecar
                .log_text()
                .contains("gateway certificates not reloaded")
                .then_some(())
        },
    );
    assert_eq!(leaf_serial(&gw, "api.example.test"), Some(1001));
    // A good new certificate: the next handshake presents it.
    gw.edge.issue("api", "api.example.test", 4097);
    weft_testkit::wait::until(
        "the new serial in a handshake",
        Duration::from_secs(10),
        || (leaf_serial(&gw, "api.example.test") == Some(4097)).then_some(()),
    );
    let c = gw.curl("api.example.test", "/v1/orders/1", &[]);
    assert_eq!(c.parts().1, "200 2", "{} {}", c.out, c.err);
}
