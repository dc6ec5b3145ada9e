//! HTTP/1.1 upgrades (WebSocket) across the sidecar hop: a real WebSocket server app (the
//! `websockets` package's own server) behind one sidecar, its real, unmodified client behind
//! the other, real mutual TLS between them. The Python scripts in `websocket/` only drive the
//! package and print what happened; these tests judge it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;
use crate::tls_tests::client_config;

/// The Python that `scripts/setup` gave the `websockets` package (its virtualenv first).
pub(crate) fn python() -> PathBuf {
    let py = weft_testkit::tools::find("python3");
    let (exit, _, err) = guarded::output_within(
        Command::new(&py).args(["-c", "import websockets"]),
        Duration::from_secs(30),
    );
    assert!(
        exit.success(),
        "{} cannot import the websockets package: run scripts/setup, which installs it ({err})",
        py.display()
    );
    py
}

/// The path of `websocket/<name>`.
pub(crate) fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/e2e/websocket")
        .join(name)
}

/// The WebSocket app, on an OS-assigned port; each handshake it accepted is a line of `log`.
pub(crate) struct WsApp {
    _child: Guard,
    addr: SocketAddr,
    log: PathBuf,
}

impl WsApp {
    fn start(pki: &Pki) -> WsApp {
        WsApp::start_in(pki, None, SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The app bound on `bind` (port 0: one the OS picks), inside network namespace `netns`
    /// when given (run as `ip netns exec`, which execs the app: the guard is its process).
    pub(crate) fn start_in(pki: &Pki, netns: Option<&str>, bind: SocketAddr) -> WsApp {
        let tag = unique_tag("ws-app");
        let port_file = pki.path().join(format!("{tag}.port"));
        let log = pki.path().join(format!("{tag}.log"));
        std::fs::write(&log, "").expect("handshake log");
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(python());
                c
            }
            None => Command::new(python()),
        };
        cmd.arg(script("app.py"))
            .arg(&port_file)
            .arg(&log)
            .arg(bind.ip().to_string())
            .arg(bind.port().to_string());
        let child = guarded::spawn(&mut cmd).expect("start the WebSocket app");
        let port: u16 =
            weft_testkit::wait::until("the WebSocket app's port", Duration::from_secs(20), || {
                std::fs::read_to_string(&port_file)
                    .ok()?
                    .trim()
                    .parse()
                    .ok()
            });
        WsApp {
            _child: child,
            addr: SocketAddr::new(bind.ip(), port),
            log,
        }
    }

    /// Waits (at most 10 s) until the app has logged `n` handshakes; they then. The client
    /// has its `101` just before the app's handler runs and logs.
    pub(crate) fn wait_handshakes(&self, n: usize) -> Vec<serde_json::Value> {
        weft_testkit::wait::until(
            &format!("{n} handshakes at the app"),
            Duration::from_secs(10),
            || Some(self.handshakes()).filter(|h| h.len() >= n),
        )
    }

    /// The handshakes the app accepted so far: path and the `x-weft-caller` values it saw.
    pub(crate) fn handshakes(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .expect("handshake log")
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect()
    }
}

/// Run the WebSocket client (at most 60 s); what it printed, as JSON.
async fn ws_client(args: Vec<String>) -> serde_json::Value {
    let mut cmd = Command::new(python());
    cmd.arg(script("client.py")).args(&args);
    run_ws_client(cmd).await
}

/// Runs `cmd`, a WebSocket client command (at most 60 s); what it printed, as JSON.
pub(crate) async fn run_ws_client(mut cmd: Command) -> serde_json::Value {
    let (exit, out, err) = tokio::task::spawn_blocking(move || {
        guarded::output_within(&mut cmd, Duration::from_secs(60))
    })
    .await
    .expect("client task");
    assert!(exit.success(), "WebSocket client: {exit}\n{out}\n{err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("client output ({e}): {out}"))
}

fn args(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// frontend sidecar → orders sidecar → `app`, `orders` allowing `frontend` a GET on `paths`
/// only (rule `tag`); the sidecars write access logs `fe-{tag}.log` and `orders-{tag}.log`.
/// `edit` changes both config heads.
pub(crate) async fn upgrade_pair(
    pki: &Pki,
    app: SocketAddr,
    tag: &str,
    paths: &[&str],
    edit: fn(&mut wire::ConfigFile),
) -> (Sidecar, Sidecar) {
    pki.issue("frontend");
    pki.issue("orders");
    let mut spec = Spec::new("orders", app);
    spec.rest = format!(
        "access_log: orders-{tag}.log\nauthorization:\n  default: deny\n  rules:\n\
         \x20   - {{name: {tag}, from: [\"{}\"], paths: [{}], methods: [GET]}}\n",
        spiffe("frontend"),
        paths.join(", ")
    );
    let orders = Sidecar::start_edited(pki, spec, edit).await;
    let mut spec = Spec::new("frontend", http_app("frontend").await);
    spec.rest = format!(
        "access_log: fe-{tag}.log\nservices:\n{}",
        service_yaml("orders", "http", None, &[(orders.inbound, "v1")])
    );
    let fe = Sidecar::start_edited(pki, spec, edit).await;
    (fe, orders)
}

/// [`upgrade_pair`] to the WebSocket app, allowing `/chat`.
async fn ws_pair(
    pki: &Pki,
    app: SocketAddr,
    edit: fn(&mut wire::ConfigFile),
) -> (Sidecar, Sidecar) {
    upgrade_pair(pki, app, "ws", &["/chat"], edit).await
}

/// The JSON lines of access log `path` once it has at least `n` (waits at most 10 s).
pub(crate) fn access_log(path: &Path, n: usize) -> Vec<serde_json::Value> {
    weft_testkit::wait::until(
        &format!("{n} lines in {}", path.display()),
        Duration::from_secs(10),
        || {
            let text = std::fs::read_to_string(path).ok()?;
            let v: Vec<serde_json::Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).expect("JSON line"))
                .collect();
            (v.len() >= n).then_some(v)
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_crosses_the_hop_with_frames_both_ways_and_the_callers_identity() {
    let pki = Pki::new(140);
    let app = WsApp::start(&pki);
    let (fe, orders) = ws_pair(&pki, app.addr, |_| {}).await;
    let proxy = fe.outbound.to_string();
    let hold = 1.5;
    let got = ws_client(args(&[
        "exchange",
        &proxy,
        "orders",
        "/chat",
        &hold.to_string(),
        "spiffe://weft.local/ns/default/sa/forged",
    ]))
    .await;

    // The app saw the upgrade request with the caller proven by mTLS, never the forged one.
    assert_eq!(
        got["whoami"],
        serde_json::json!({"path": "/chat", "callers": [spiffe("frontend")]}),
        "{got}"
    );
    let messages = got["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 12, "{got}");
    for m in messages {
        assert_eq!(m["sent"], m["got"], "echoed unchanged: {m}");
    }
    let largest = |kind: &str| {
        messages
            .iter()
            .filter(|m| m["got"]["kind"] == kind)
            .filter_map(|m| m["got"]["len"].as_u64())
            .max()
    };
    assert_eq!(largest("text"), Some(1 << 20));
    assert_eq!(largest("binary"), Some(1 << 20));
    // The close handshake, started by the client, answered by the app through both sidecars.
    assert_eq!(got["close_sent"], serde_json::json!([1000, "client done"]));
    assert_eq!(got["close_rcvd"], serde_json::json!([1000, "client done"]));

    // The app closes: its close frame reaches the client after the frames before it.
    let closed = ws_client(args(&["server-close", &proxy, "orders", "/chat"])).await;
    assert_eq!(closed["echoed"]["len"], 14, "{closed}");
    assert_eq!(
        closed["close_rcvd"],
        serde_json::json!([4000, "server done"])
    );
    assert_eq!(
        closed["close_sent"],
        serde_json::json!([4000, "server done"])
    );
    assert_eq!(app.handshakes().len(), 2);

    // Each session is one request on each side, answered 101, lasting the session.
    for (side, admin, direction) in [
        ("frontend", fe.admin, "outbound"),
        ("orders", orders.admin, "inbound"),
    ] {
        let labels = [
            ("direction", direction),
            ("dst_service", "orders"),
            ("status_code", "101"),
        ];
        wait_metric(
            admin,
            "weft_responses_total",
            &labels,
            2.0,
            Duration::from_secs(10),
        )
        .await;
        let dir = [("direction", direction), ("dst_service", "orders")];
        assert_eq!(
            metric(admin, "weft_responses_total", &dir).await,
            2.0,
            "{side}"
        );
        assert_eq!(
            metric(admin, "weft_requests_total", &dir).await,
            2.0,
            "{side}"
        );
        let secs = metric(admin, "weft_request_duration_seconds_sum", &dir).await;
        assert!(secs >= hold, "{side}: sessions lasted {secs} s in all");
        let n = metric(admin, "weft_request_duration_seconds_count", &dir).await;
        assert_eq!(n, 2.0, "{side}");
    }
    for (file, direction) in [("fe-ws.log", "outbound"), ("orders-ws.log", "inbound")] {
        let lines = access_log(&pki.path().join(file), 2);
        assert_eq!(lines.len(), 2, "{lines:#?}");
        let first = &lines[0];
        assert_eq!(first["direction"], direction);
        assert_eq!(first["status"], 101, "{first}");
        assert_eq!(first["path"], "/chat");
        assert_eq!(first["src_identity"], spiffe("frontend"));
        let ms = first["duration_ms"].as_f64().expect("duration");
        assert!(ms >= hold * 1000.0, "{direction}: {first}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_denied_upgrade_gets_403_before_any_upgrade() {
    let pki = Pki::new(141);
    let app = WsApp::start(&pki);
    let (fe, orders) = ws_pair(&pki, app.addr, |_| {}).await;
    let proxy = fe.outbound.to_string();
    let denied = ws_client(args(&["status", &proxy, "orders", "/admin"])).await;
    assert_eq!(denied["status"], 403, "{denied}");
    let why = denied["error"].as_str().expect("x-weft-error");
    assert!(
        why.starts_with("denied: no authorization rule of orders allows"),
        "{why}"
    );
    let allowed = ws_client(args(&["status", &proxy, "orders", "/chat"])).await;
    assert_eq!(allowed["status"], 101, "{allowed}");
    let seen: Vec<_> = app
        .wait_handshakes(1)
        .iter()
        .map(|h| h["path"].clone())
        .collect();
    assert_eq!(
        seen,
        [serde_json::json!("/chat")],
        "the denied one never reached the app"
    );
    wait_metric(
        orders.admin,
        "weft_requests_rejected_total",
        &[("reason", "denied")],
        1.0,
        Duration::from_secs(10),
    )
    .await;
}

/// Reads a request or response head from `s` (to the blank line, within `limit`); returns it
/// and any bytes after it.
pub(crate) async fn read_head<S>(s: &mut S, limit: Duration) -> (String, Vec<u8>)
where
    S: tokio::io::AsyncRead + Unpin,
{
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return (String::from_utf8_lossy(&buf).into_owned(), rest);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, s.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("a head within {limit:?}"))
            .expect("read a head");
        assert!(
            n > 0,
            "closed before the head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        assert!(buf.len() < 64 << 10, "head too long");
    }
}

/// The raw response head of `request` sent on `stream`: status and `x-weft-error`.
async fn raw_exchange<S>(stream: &mut S, request: &str) -> (u16, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream.write_all(request.as_bytes()).await.expect("write");
    let (text, _) = read_head(stream, Duration::from_secs(15)).await;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status: {text}"));
    let error = text
        .lines()
        .find_map(|l| l.strip_prefix("x-weft-error: "))
        .unwrap_or_default()
        .to_owned();
    (status, error)
}

/// Opens a WebSocket upgrade to `path` of `orders` through `outbound`, written by hand;
/// returns the stream after the `101` and any bytes that came after it.
pub(crate) async fn upgrade(outbound: SocketAddr, path: &str) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(outbound).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: orders\r\n{WS_HEADERS}\r\n");
    s.write_all(req.as_bytes()).await.expect("write request");
    let (head, rest) = read_head(&mut s, Duration::from_secs(30)).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    (s, rest)
}

const WS_HEADERS: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_upgrades_get_a_clear_400_and_never_reach_the_app() {
    let pki = Pki::new(142);
    let app = WsApp::start(&pki);
    let (fe, orders) = ws_pair(&pki, app.addr, |_| {}).await;
    let cases = [
        (
            "GET /chat HTTP/1.1\r\nHost: orders\r\nUpgrade: foo/1\r\nConnection: upgrade\r\n\r\n"
                .to_owned(),
            "not carried by the mesh",
        ),
        (
            format!(
                "GET /chat HTTP/1.1\r\nHost: orders\r\n{WS_HEADERS}Content-Length: 5\r\n\r\nhello"
            ),
            "carries no body",
        ),
        (
            format!("POST /chat HTTP/1.1\r\nHost: orders\r\n{WS_HEADERS}Content-Length: 0\r\n\r\n"),
            "must be a GET",
        ),
        (
            "GET /chat HTTP/1.1\r\nHost: orders\r\nUpgrade: websocket\r\n\r\n".to_owned(),
            "Connection: upgrade",
        ),
    ];
    for (request, why) in &cases {
        let mut s = tokio::net::TcpStream::connect(fe.outbound)
            .await
            .expect("connect");
        let (status, error) = raw_exchange(&mut s, request).await;
        assert_eq!(status, 400, "{request:?}: {error}");
        assert!(
            error.starts_with("bad upgrade: ") && error.contains(why),
            "{error}"
        );
    }

    // Straight at the inbound port with a mesh certificate: HTTP/1.1 is offered to an http
    // service for upgrades only; a plain request on it is refused, an upgrade is authorized
    // as any request and carries the certificate's identity, not the header sent.
    let mut h1 = client_config(&pki, Some((&pki, "frontend")));
    h1.alpn_protocols = vec![b"http/1.1".to_vec()];
    let h1 = std::sync::Arc::new(h1);
    let mut tls = handshake(orders.inbound, h1.clone())
        .await
        .expect("an http/1.1 handshake");
    let (status, error) = raw_exchange(
        &mut tls,
        "GET /chat HTTP/1.1\r\nHost: orders\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400, "{error}");
    assert!(error.contains("upgrade requests only"), "{error}");
    assert!(app.handshakes().is_empty(), "{:?}", app.handshakes());

    let mut tls = handshake(orders.inbound, h1).await.expect("handshake");
    let forged = "x-weft-caller: spiffe://weft.local/ns/default/sa/forged\r\n";
    let (status, _) = raw_exchange(
        &mut tls,
        &format!("GET /chat HTTP/1.1\r\nHost: orders\r\n{forged}{WS_HEADERS}\r\n"),
    )
    .await;
    assert_eq!(status, 101);
    let seen = app.wait_handshakes(1);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["callers"], serde_json::json!([spiffe("frontend")]));
}

/// A hung app (it accepts and never answers) and an idle session both end within the
/// sidecars' `idle_timeout` (2 s here), never holding the client for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_peer_and_an_idle_session_end_within_the_idle_timeout() {
    let pki = Pki::new(143);
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hung_addr = hung.local_addr().expect("addr");
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        // Bounded: the test makes one connection through the sidecars.
        while conns.len() < 16 {
            match hung.accept().await {
                Ok((s, _)) => conns.push(s),
                Err(_) => break,
            }
        }
    });
    let two = |f: &mut wire::ConfigFile| f.idle_timeout = Some("2s".to_owned());
    let (fe, _orders) = ws_pair(&pki, hung_addr, two).await;
    let started = Instant::now();
    let mut s = tokio::net::TcpStream::connect(fe.outbound)
        .await
        .expect("connect");
    let (status, error) = raw_exchange(
        &mut s,
        &format!("GET /chat HTTP/1.1\r\nHost: orders\r\n{WS_HEADERS}\r\n"),
    )
    .await;
    let waited = started.elapsed();
    assert_eq!(status, 504, "{error}");
    assert!(error.contains("timed out"), "{error}");
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(10),
        "answered after {waited:?}"
    );
    held.abort();

    // An established session in which nobody sends anything is closed after 2 s.
    let pki = Pki::new(144);
    let app = WsApp::start(&pki);
    let (fe, _orders) = ws_pair(&pki, app.addr, two).await;
    let started = Instant::now();
    let (mut s, mut rest) = upgrade(fe.outbound, "/chat").await;
    tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut rest))
        .await
        .expect("the idle session is closed within 15 s")
        .expect("read");
    let lasted = started.elapsed();
    assert!(
        lasted >= Duration::from_millis(1900) && lasted < Duration::from_secs(10),
        "idle session closed after {lasted:?}"
    );
}
