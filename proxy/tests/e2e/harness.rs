//! Test mesh: a seeded CA, real `weft-proxy` processes on loopback, real sample apps.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::pem::PemObject;
use tokio::net::TcpListener;
use weft_certs::{CertificateAuthority, Identity};
pub use weft_policy::wire;
pub use weft_testkit::process::{self as guarded, Guard};

pub const TD: &str = "weft.local";

/// A loopback port for a sidecar or app to bind, reserved for this test process (below the
/// ephemeral range, locked against other test processes: see `weft_testkit::ports`).
pub fn free_port() -> u16 {
    weft_testkit::ports::reserve()
}

pub fn spiffe(sa: &str) -> String {
    format!("spiffe://{TD}/ns/default/sa/{sa}")
}

/// Certificates for a test mesh, written to a temp dir.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: CertificateAuthority,
}

impl Pki {
    pub fn new(seed: u64) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = CertificateAuthority::generate_seeded(TD, seed).expect("ca");
        std::fs::write(dir.path().join("ca.crt"), ca.cert_pem()).expect("write ca");
        Pki { dir, ca }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Issue `<sa>.crt` / `<sa>.key` for a service account.
    pub fn issue(&self, sa: &str) {
        let id = Identity::new(TD, "default", sa).expect("identity");
        let cert = self
            .ca
            .issue(&id, Duration::from_secs(3600))
            .expect("issue");
        std::fs::write(self.path().join(format!("{sa}.crt")), cert.cert_pem).expect("write");
        std::fs::write(self.path().join(format!("{sa}.key")), cert.key_pem).expect("write");
    }
}

/// Start a sample HTTP app on an OS-assigned port.
pub async fn http_app(name: &str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = l.local_addr().expect("addr");
    weft_samples::http::serve(l, name.to_owned());
    a
}

/// A running sidecar process, in its own process group; killed on drop (and when the test
/// process dies: see `weft_testkit::process`).
pub struct Sidecar {
    pub child: Guard,
    pub name: String,
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
    /// `listen.metrics`, when the config has one.
    pub metrics: Option<SocketAddr>,
    pub config: PathBuf,
    pub log: PathBuf,
    /// The config without its `services`/`routes` part.
    pub head: String,
    /// Its `--ready-file`, when the config asks for port 0 (the addresses above are
    /// `127.0.0.1:0` until [`Sidecar::wait_ready`] reads them from it).
    pub ready: Option<PathBuf>,
}

/// Where a sidecar started with `--ready-file` listens.
#[derive(Debug, serde::Deserialize)]
pub struct Listening {
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
    pub metrics: Option<SocketAddr>,
    pub pid: u32,
}

/// Any address, until the sidecar says which (see [`Sidecar::ready`]).
pub const ANY_PORT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// A file name no other sidecar of this test process uses.
pub fn unique_tag(name: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{name}-{}-{n}", std::process::id())
}

/// What a sidecar is and whom it may call.
pub struct Spec<'a> {
    /// Service (and service-account) name; the cert `<cert>.crt` is used.
    pub name: &'a str,
    /// Which issued certificate to present (normally the same as name).
    pub cert: &'a str,
    pub app: SocketAddr,
    pub protocol: &'a str,
    /// YAML appended to the config: `services:` and `routes:`.
    pub rest: String,
    /// `listen.metrics`, when set.
    pub metrics: Option<SocketAddr>,
}

impl<'a> Spec<'a> {
    pub fn new(name: &'a str, app: SocketAddr) -> Self {
        Spec {
            name,
            cert: name,
            app,
            protocol: "http",
            rest: String::new(),
            metrics: None,
        }
    }
}

/// YAML for one destination service entry.
pub fn service_yaml(
    name: &str,
    protocol: &str,
    port: Option<u16>,
    endpoints: &[(SocketAddr, &str)],
) -> String {
    let mut s = format!(
        "  - name: {name}\n    identity: {}\n    protocol: {protocol}\n",
        spiffe(name)
    );
    if let Some(p) = port {
        s.push_str(&format!("    port: {p}\n"));
    }
    s.push_str("    endpoints:\n");
    for (a, version) in endpoints {
        s.push_str(&format!(
            "      - {{address: \"{a}\", labels: {{version: {version}}}}}\n"
        ));
    }
    s
}

impl Sidecar {
    /// The config file of `spec` without its `services`/`routes` part (those come as YAML in
    /// `spec.rest`), every listener on port 0 (the sidecar reports the ports it gets).
    pub fn config_head(spec: &Spec) -> wire::ConfigFile {
        let addr = |a: SocketAddr| Some(a.to_string());
        wire::ConfigFile {
            service: wire::OwnService {
                name: spec.name.to_owned(),
                identity: spiffe(spec.name),
                app: spec.app.to_string(),
                protocol: Some(spec.protocol.to_owned()),
                ..Default::default()
            },
            listen: wire::Listen {
                outbound: addr(ANY_PORT),
                inbound: addr(ANY_PORT),
                admin: addr(ANY_PORT),
                metrics: spec.metrics.and_then(addr),
            },
            tls: wire::Tls {
                cert: format!("{}.crt", spec.cert),
                key: format!("{}.key", spec.cert),
                trust_bundle: "ca.crt".to_owned(),
            },
            drain_timeout: Some("10s".to_owned()),
            ..Default::default()
        }
    }

    pub async fn start(pki: &Pki, spec: Spec<'_>) -> Sidecar {
        Self::start_edited(pki, spec, |_| {}).await
    }

    /// [`Sidecar::start`] with the config head edited by `edit`: for keys the head already
    /// writes (`drain_timeout`), which a second occurrence in `rest` would duplicate.
    pub async fn start_edited(
        pki: &Pki,
        mut spec: Spec<'_>,
        edit: impl FnOnce(&mut wire::ConfigFile),
    ) -> Sidecar {
        let tag = unique_tag(spec.name);
        let config = pki.path().join(format!("{tag}.yaml"));
        let rest = std::mem::take(&mut spec.rest);
        let mut file = Self::config_head(&spec);
        edit(&mut file);
        let head = serde_yaml::to_string(&file).expect("config YAML");
        std::fs::write(&config, format!("{head}{rest}")).expect("write config");
        let log = pki.path().join(format!("{tag}.log"));
        let ready = pki.path().join(format!("{tag}.ready"));
        let child = spawn_proxy_reporting(&config, &log, &ready);
        let mut s = Sidecar {
            child,
            name: spec.name.to_owned(),
            outbound: ANY_PORT,
            inbound: ANY_PORT,
            admin: ANY_PORT,
            metrics: spec.metrics,
            config,
            log,
            head,
            ready: Some(ready),
        };
        s.wait_ready().await;
        s
    }

    /// Replace the config's `services`/`routes` part atomically (write, then rename), as an
    /// operator's tooling should.
    pub fn rewrite(&self, rest: &str) {
        let tmp = self.config.with_extension("yaml.tmp");
        std::fs::write(&tmp, format!("{}{rest}", self.head)).expect("write");
        std::fs::rename(&tmp, &self.config).expect("rename");
    }

    /// Wait (at most 10 s) until the config version reaches `v`.
    pub async fn wait_version(&self, v: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.version().await < v {
            assert!(
                Instant::now() < deadline,
                "version {v} not reached:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait (at most `limit`) for the process to exit; its exit code.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(exit) = self.child.status() {
                return exit.code();
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Start this sidecar's config again (after its process ended) with a fresh log and, if
    /// it reports its ports, a fresh ready file; [`Sidecar::wait_ready`] then reads the new
    /// ports.
    pub fn respawn(&mut self, log: PathBuf) {
        self.child = match &mut self.ready {
            Some(ready) => {
                *ready = ready.with_extension("again.ready");
                (self.outbound, self.inbound, self.admin) = (ANY_PORT, ANY_PORT, ANY_PORT);
                spawn_proxy_reporting(&self.config, &log, ready)
            }
            None => spawn_proxy(&self.config, &log),
        };
        self.log = log;
    }

    /// The addresses the sidecar reports in its ready file, once it has written it (at most
    /// 15 s; fails at once if the process ends first).
    pub async fn wait_listening(&mut self) {
        let Some(ready) = self.ready.clone() else {
            return;
        };
        if self.admin.port() != 0 {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        let text = loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                break text;
            }
            if let Some(exit) = self.child.status() {
                panic!(
                    "sidecar {} exited ({exit:?}) before it was ready:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "sidecar {} wrote no ready file in 15 s:\n{}",
                self.name,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let l: Listening = serde_json::from_str(&text).expect("ready file");
        assert_eq!(l.pid, self.child.id(), "the ready file of this process");
        (self.outbound, self.inbound, self.admin) = (l.outbound, l.inbound, l.admin);
        self.metrics = l.metrics;
    }

    /// Read the ports (see [`Sidecar::wait_listening`]), then poll `/ready` and the traffic
    /// ports, for at most 15 s.
    pub async fn wait_ready(&mut self) {
        self.wait_listening().await;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let ready = admin_get(self.admin, "/ready")
                .await
                .is_some_and(|(s, _)| s == 200);
            // Read from the kernel's socket table, not by connecting: a probe connection to
            // the inbound port would be a handshake the TLS tests count.
            let listening = is_listening(self.outbound) && is_listening(self.inbound);
            if ready && listening {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sidecar {} not ready:\n{}",
                self.name,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("signal");
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// The config version `/ready` reports.
    pub async fn version(&self) -> u64 {
        let (_, body) = admin_get(self.admin, "/ready").await.expect("ready");
        body.rsplit('v')
            .next()
            .and_then(|v| v.trim().parse().ok())
            .expect("version")
    }
}

/// Whether some socket listens on `addr` (IPv4), from `/proc/net/tcp`: no connection is made.
pub fn is_listening(addr: SocketAddr) -> bool {
    let SocketAddr::V4(a) = addr else {
        panic!("is_listening reads /proc/net/tcp: IPv4 only ({addr})")
    };
    // `local_address` is the address as a little-endian hex u32, then the port in hex;
    // state 0A is LISTEN.
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(a.ip().octets()),
        a.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table.lines().skip(1).any(|l| {
        let mut f = l.split_whitespace();
        let local = f.nth(1);
        let state = f.nth(1);
        local == Some(want.as_str()) && state == Some("0A")
    })
}

/// TLS server name of the `orders` identity.
pub const ORDERS_NAME: &str = "orders.default.serviceaccount.identity.weft.local";

pub type MeshTls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS handshake with an `orders` sidecar's inbound listener (at most 5 s).
pub async fn handshake(
    addr: SocketAddr,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> Result<MeshTls, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = rustls::pki_types::ServerName::try_from(ORDERS_NAME).expect("name");
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| "handshake timed out".to_owned())?
    .map_err(|e| format!("handshake: {e}"))
}

/// One HTTP/2 GET over an established mesh TLS connection; the status, body read.
pub async fn h2_get(tls: MeshTls) -> Result<u16, String> {
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .map_err(|e| format!("h2: {e}"))?;
    tokio::spawn(conn);
    let req = http::Request::get("http://orders/")
        .body(Full::new(Bytes::new()))
        .expect("req");
    let r = tokio::time::timeout(Duration::from_secs(5), send.send_request(req))
        .await
        .map_err(|_| "request timed out".to_owned())?
        .map_err(|e| format!("request: {e}"))?;
    let status = r.status().as_u16();
    r.into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?;
    Ok(status)
}

/// The certificate chain and key issued to `sa` by `pki`, for a TLS client that presents it.
pub fn client_identity(
    pki: &Pki,
    sa: &str,
) -> (
    Vec<rustls_pki_types::CertificateDer<'static>>,
    rustls_pki_types::PrivateKeyDer<'static>,
) {
    let cert = std::fs::read(pki.path().join(format!("{sa}.crt"))).expect("cert");
    let key = std::fs::read(pki.path().join(format!("{sa}.key"))).expect("key");
    let chain = rustls_pki_types::CertificateDer::pem_slice_iter(&cert)
        .collect::<Result<Vec<_>, _>>()
        .expect("pem");
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(&key).expect("pem key");
    (chain, key)
}

/// [`spawn_proxy`] with `--ready-file <ready>`: the sidecar writes its bound addresses there.
pub fn spawn_proxy_reporting(config: &Path, log: &Path, ready: &Path) -> Guard {
    spawn_proxy_with(config, log, Some(ready))
}

/// Start `weft-proxy --config <config>` guarded, its stderr to `log`.
pub fn spawn_proxy(config: &Path, log: &Path) -> Guard {
    spawn_proxy_with(config, log, None)
}

fn spawn_proxy_with(config: &Path, log: &Path, ready: Option<&Path>) -> Guard {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weft-proxy"));
    cmd.arg("--config").arg(config);
    if let Some(ready) = ready {
        cmd.arg("--ready-file").arg(ready);
    }
    guarded::spawn(
        cmd.env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("log file")),
    )
    .expect("spawn weft-proxy")
}

pub async fn admin_get(admin: SocketAddr, path: &str) -> Option<(u16, String)> {
    let r = client()
        .get(format!("http://{admin}{path}").parse().ok()?)
        .await
        .ok()?;
    let status = r.status().as_u16();
    let body = r.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// GET `path` from a control plane's operator API, with its admin token.
pub async fn cp_get(cp: &weft_control_plane::server::Running, path: &str) -> Option<(u16, String)> {
    let token = std::fs::read_to_string(&cp.admin_token_file).ok()?;
    let req = http::Request::get(format!("http://{}{path}", cp.admin))
        .header("authorization", format!("Bearer {}", token.trim()))
        .body(Full::new(Bytes::new()))
        .ok()?;
    let r = client().request(req).await.ok()?;
    let status = r.status().as_u16();
    let body = r.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

#[allow(dead_code)]
pub fn h2c_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A response, fully read.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    pub fn served_by(&self) -> &str {
        self.header("x-served-by")
    }
}

/// Send a request through `proxy` with the given Host.
pub async fn send(
    c: &HttpClient,
    proxy: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Resp, String> {
    send_body(c, proxy, host, method, path, headers, Bytes::new()).await
}

/// [`send`] with a request body.
pub async fn send_body(
    c: &HttpClient,
    proxy: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Resp, String> {
    let mut b = http::Request::builder()
        .method(method)
        .uri(format!("http://{proxy}{path}"))
        .header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(body)).map_err(|e| e.to_string())?;
    let r = c.request(req).await.map_err(|e| format!("{e:?}"))?;
    read_resp(r).await
}

/// Status, headers and the whole body of a response.
async fn read_resp(r: http::Response<hyper::body::Incoming>) -> Result<Resp, String> {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Resp {
        status,
        headers,
        body,
    })
}

pub async fn get(c: &HttpClient, proxy: SocketAddr, host: &str, path: &str) -> Resp {
    send(c, proxy, host, "GET", path, &[])
        .await
        .expect("request")
}

/// An h2c connection to a sidecar's outbound port that sends `:authority` as a real h2 app
/// does (the legacy client would take the authority from the socket address).
pub struct H2c {
    send: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
}

impl H2c {
    pub async fn connect(proxy: SocketAddr) -> H2c {
        let tcp = tokio::net::TcpStream::connect(proxy)
            .await
            .expect("connect");
        let (send, conn) = hyper::client::conn::http2::handshake(
            TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .expect("h2 handshake");
        tokio::spawn(conn);
        H2c { send }
    }

    pub async fn get(&mut self, authority: &str, path: &str) -> Resp {
        self.try_get(authority, path).await.expect("h2 request")
    }

    /// [`H2c::get`], returning transport errors (such as a stream refused after GOAWAY).
    #[allow(dead_code)]
    pub async fn try_get(&mut self, authority: &str, path: &str) -> Result<Resp, String> {
        let req = http::Request::get(format!("http://{authority}{path}"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let r = self
            .send
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        read_resp(r).await
    }

    /// Whether the sidecar has closed this connection (after a GOAWAY, say).
    #[allow(dead_code)]
    pub fn is_closed(&self) -> bool {
        self.send.is_closed()
    }
}

/// Resident set size of a process in KiB, from /proc (0 if gone).
pub fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The known mix of outcomes the metrics tests count: 7 × 200 on `/api/x`, 3 × 503 on
/// `/status/503`, 2 × 404 on an unmatched path (the sidecar needs routes `api` and `status`).
pub async fn mixed_traffic(c: &HttpClient, outbound: SocketAddr) {
    for _ in 0..7 {
        assert_eq!(get(c, outbound, "orders", "/api/x").await.status, 200);
    }
    for _ in 0..3 {
        assert_eq!(get(c, outbound, "orders", "/status/503").await.status, 503);
    }
    for _ in 0..2 {
        assert_eq!(get(c, outbound, "orders", "/nowhere").await.status, 404);
    }
}

/// A scriptable app: answers every request with `status` (changeable at run time) after
/// `delay_ms`, names itself in `x-served-by`, and counts what it received.
#[derive(Clone)]
pub struct TestApp {
    pub addr: SocketAddr,
    pub hits: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub status: std::sync::Arc<std::sync::atomic::AtomicU16>,
    pub delay_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Open (`true`) lets answers go; closed, every request waits at the app (counted in
    /// `hits`) until [`TestApp::release`]: exact arrival without racing the clock.
    pub gate: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
}

impl TestApp {
    pub async fn start(name: &str, status: u16) -> TestApp {
        use std::sync::atomic::Ordering::Relaxed;
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let app = TestApp {
            addr: l.local_addr().expect("addr"),
            hits: Default::default(),
            status: std::sync::Arc::new(status.into()),
            delay_ms: Default::default(),
            gate: std::sync::Arc::new(tokio::sync::watch::Sender::new(true)),
        };
        let (a, name) = (app.clone(), name.to_owned());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = l.accept().await else {
                    return;
                };
                let (a, name) = (a.clone(), name.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let (a, name) = (a.clone(), name.clone());
                            async move {
                                // Read the whole body first, as most apps do before answering.
                                let _ = req.into_body().collect().await;
                                a.hits.fetch_add(1, Relaxed);
                                let _ = a.gate.subscribe().wait_for(|open| *open).await;
                                let d = a.delay_ms.load(Relaxed);
                                if d > 0 {
                                    tokio::time::sleep(Duration::from_millis(d)).await;
                                }
                                http::Response::builder()
                                    .status(a.status.load(Relaxed))
                                    .header("x-served-by", name)
                                    .body(Full::new(Bytes::from_static(b"ok\n")))
                            }
                        },
                    );
                    let io = hyper_util::rt::TokioIo::new(tcp);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                });
            }
        });
        app
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_status(&self, s: u16) {
        self.status.store(s, std::sync::atomic::Ordering::Relaxed);
    }

    /// Hold every request at the app until [`TestApp::release`].
    pub fn hold(&self) {
        self.gate.send_replace(false);
    }

    /// Let the held requests (and all later ones) be answered.
    pub fn release(&self) {
        self.gate.send_replace(true);
    }
}

/// One response of a load run.
pub struct Outcome {
    pub status: u16,
    pub latency: Duration,
    pub served_by: String,
    pub error: String,
    pub retry_after: String,
}

/// `n` GETs of `path` through `proxy` as `host`, `concurrency` at a time; every outcome,
/// transport errors as status 0.
pub async fn load(
    proxy: SocketAddr,
    host: &str,
    path: &str,
    n: usize,
    concurrency: usize,
) -> Vec<Outcome> {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (next, host, path) = (next.clone(), host.to_owned(), path.to_owned());
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut out = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let t = Instant::now();
                let r = send(&c, proxy, &host, "GET", &path, &[]).await;
                let latency = t.elapsed();
                out.push(match r {
                    Ok(r) => Outcome {
                        status: r.status,
                        latency,
                        served_by: r.served_by().to_owned(),
                        error: r.header("x-weft-error").to_owned(),
                        retry_after: r.header("retry-after").to_owned(),
                    },
                    Err(e) => Outcome {
                        status: 0,
                        latency,
                        served_by: String::new(),
                        error: e,
                        retry_after: String::new(),
                    },
                });
            }
            out
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await.expect("load task"));
    }
    all
}

/// The sum of the exported series named `name` whose labels include `labels`; `None` when the
/// sidecar exports no such series.
pub async fn try_metric(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let (_, text) = admin_get(admin, "/metrics").await.expect("metrics");
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Waits (at most `limit`) until the series `name` with `labels` at `admin` exists and is at
/// least `min`; its value then. Counters land just after the response that moved them, so a
/// test waits for the count rather than reading it at once.
pub async fn wait_metric(
    admin: SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
    min: f64,
    limit: Duration,
) -> f64 {
    weft_testkit::wait::until_async(
        &format!("{name} {labels:?} at {admin} to reach {min}"),
        limit,
        || async { try_metric(admin, name, labels).await.filter(|n| *n >= min) },
    )
    .await
}

/// [`try_metric`] where the series must exist: a missing metric fails the test, it is never
/// read as 0.
pub async fn metric(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    try_metric(admin, name, labels)
        .await
        .unwrap_or_else(|| panic!("no series {name} with {labels:?} at {admin}/metrics"))
}

/// A control plane in-process, signing with the test CA, serving `policy_dir`, its sidecar
/// streams on `listen` (port 0: the OS picks one).
pub async fn start_control_plane(
    pki: &Pki,
    policy_dir: &Path,
    listen: SocketAddr,
) -> weft_control_plane::server::Running {
    start_control_plane_with(
        pki,
        policy_dir,
        listen,
        Duration::from_secs(2),
        weft_control_plane::server::DEFAULT_CERT_LIFETIME,
    )
    .await
}

/// [`start_control_plane`] with an endpoint `grace` and a workload `cert_lifetime`.
pub async fn start_control_plane_with(
    pki: &Pki,
    policy_dir: &Path,
    listen: SocketAddr,
    grace: Duration,
    cert_lifetime: Duration,
) -> weft_control_plane::server::Running {
    use weft_control_plane::ca::ca_store::{CaStoreOptions, RootSource};
    std::fs::write(pki.path().join("ca.key"), pki.ca.key_pem()).expect("ca key");
    weft_control_plane::server::start(weft_control_plane::server::ServerConfig {
        policy_dir: policy_dir.to_owned(),
        state_dir: pki.path().join("cp-state"),
        listen,
        admin: "127.0.0.1:0".parse().expect("addr"),
        trust_domain: TD.to_owned(),
        ca: CaStoreOptions {
            root: RootSource::Files {
                cert: pki.path().join("ca.crt"),
                key: pki.path().join("ca.key"),
            },
            ..CaStoreOptions::default()
        },
        grace,
        poll_interval: weft_control_plane::policy::source::DEFAULT_POLL_INTERVAL,
        admin_token_file: None,
        cert_lifetime,
        kubernetes_tokens: None,
    })
    .await
    .expect("control plane")
}

/// SPIFFE identity of the control plane the tests start.
pub const CP_IDENTITY: &str = "spiffe://weft.local/ns/weft-system/sa/control-plane";

/// A control-plane-mode sidecar of [`spawn_cp_sidecar`].
pub struct CpSidecar<'a> {
    /// Its service.
    pub name: &'a str,
    /// The service account of `service.identity` (usually `name`; another one for impostors).
    pub identity: &'a str,
    /// Certificate files `<cert>.crt`/`<cert>.key` (which may not exist yet when `token` is
    /// given: the sidecar bootstraps them).
    pub cert: &'a str,
    /// Its `version` label.
    pub version: &'a str,
    /// Its app's protocol (`http`, `grpc`, `tcp`).
    pub protocol: &'a str,
    /// Its app.
    pub app: SocketAddr,
    /// The control plane's sidecar address.
    pub cp: SocketAddr,
    /// A join token file.
    pub token: Option<&'a Path>,
    /// A trust bundle of its own, `control_plane.trust_bundle: mounted` (as injected on
    /// Kubernetes); `None`: the shared `ca.crt`, pushed.
    pub mounted_bundle: Option<&'a Path>,
}

/// A sidecar process that takes its policy from the control plane.
pub fn spawn_cp_sidecar(pki: &Pki, spec: CpSidecar<'_>) -> Sidecar {
    let CpSidecar {
        name,
        identity,
        cert,
        version,
        protocol,
        app,
        cp,
        token,
        mounted_bundle,
    } = spec;
    let (outbound, inbound, admin) = (ANY_PORT, ANY_PORT, ANY_PORT);
    let tag = unique_tag(name);
    let file = wire::ConfigFile {
        service: wire::OwnService {
            name: name.to_owned(),
            identity: spiffe(identity),
            app: app.to_string(),
            protocol: Some(protocol.to_owned()),
            labels: [("version".to_owned(), version.to_owned())].into(),
            ..Default::default()
        },
        listen: wire::Listen {
            outbound: Some(outbound.to_string()),
            inbound: Some(inbound.to_string()),
            admin: Some(admin.to_string()),
            metrics: None,
        },
        tls: wire::Tls {
            cert: format!("{cert}.crt"),
            key: format!("{cert}.key"),
            trust_bundle: mounted_bundle
                .map_or_else(|| "ca.crt".to_owned(), |b| b.display().to_string()),
        },
        drain_timeout: Some("10s".to_owned()),
        control_plane: Some(wire::ControlPlane {
            address: cp.to_string(),
            identity: CP_IDENTITY.to_owned(),
            state_file: Some(format!("{tag}.cp.json")),
            join_token_file: token.map(|t| t.display().to_string()),
            bootstrap_timeout: token.map(|_| "3s".to_owned()),
            bootstrap_authorization: None,
            trust_bundle: mounted_bundle.map(|_| wire::TrustBundleSource::Mounted),
        }),
        ..Default::default()
    };
    let head = serde_yaml::to_string(&file).expect("config YAML");
    let config = pki.path().join(format!("{tag}.yaml"));
    std::fs::write(&config, &head).expect("write config");
    let log = pki.path().join(format!("{tag}.log"));
    let ready = pki.path().join(format!("{tag}.ready"));
    let child = spawn_proxy_reporting(&config, &log, &ready);
    Sidecar {
        child,
        name: name.to_owned(),
        outbound,
        inbound,
        admin,
        metrics: None,
        config,
        log,
        head,
        ready: Some(ready),
    }
}

/// Steady GETs to `host` through a sidecar's outbound listener, one at a time, until
/// [`Background::finish`]: the traffic a test keeps up while it changes something.
pub struct Background {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    failures: std::sync::Arc<std::sync::atomic::AtomicU64>,
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<Option<String>>,
}

impl Background {
    /// Start sending `GET /bg` to `host` via `outbound`, one request every ~2 ms.
    pub fn start(outbound: SocketAddr, host: &str) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let failures = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let task = {
            let (stop, failures, sent, host) = (
                stop.clone(),
                failures.clone(),
                sent.clone(),
                host.to_owned(),
            );
            tokio::spawn(async move {
                let c = client();
                let mut first_failure = None;
                while !stop.load(Ordering::Relaxed) {
                    let r = send(&c, outbound, &host, "GET", "/bg", &[]).await;
                    sent.fetch_add(1, Ordering::Relaxed);
                    match r {
                        Ok(r) if r.status == 200 => {}
                        other => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            first_failure.get_or_insert(format!("{:?}", other.map(|r| r.status)));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                first_failure
            })
        };
        Self {
            stop,
            failures,
            sent,
            task,
        }
    }

    /// Stop, and assert that not one request failed and more than 100 were sent.
    pub async fn finish(self) {
        use std::sync::atomic::Ordering;
        self.stop.store(true, Ordering::Relaxed);
        let first_failure = self.task.await.expect("background traffic");
        let (failures, sent) = (
            self.failures.load(Ordering::Relaxed),
            self.sent.load(Ordering::Relaxed),
        );
        assert_eq!(
            failures, 0,
            "{failures} of {sent} background requests failed, first: {first_failure:?}"
        );
        assert!(sent > 100);
    }
}

/// Whether the peer has closed `s` (EOF or reset), read without waiting.
pub fn closed(s: &tokio::net::TcpStream) -> bool {
    let mut b = [0u8; 64];
    match s.try_read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// Waits (bounded) until the peer closes `s`.
pub async fn wait_closed(what: &str, s: &tokio::net::TcpStream, limit: Duration) {
    weft_testkit::wait::until_async(what, limit, || {
        let c = closed(s);
        async move { c.then_some(()) }
    })
    .await;
}
