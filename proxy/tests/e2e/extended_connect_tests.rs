//! WebSockets over HTTP/2 (RFC 8441 extended CONNECT) across the sidecar hop, and the answers
//! to upgrades the peer cannot take. The client and the app are Node's own `http2` module
//! (`websocket/h2_client.js`, `websocket/h2_app.js`: they drive it and print what happened; a
//! small shared codec in `websocket/wsframe.js` frames the WebSocket messages), unmodified
//! HTTP/2 on both ends, real mutual TLS between the sidecars. These tests judge.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/e2e/websocket")
        .join(name)
}

/// The h2c WebSocket app on an OS-assigned port, in `mode` (see `h2_app.js`); each session it
/// saw is a JSON line of `log`.
struct H2App {
    _child: Guard,
    addr: SocketAddr,
    log: PathBuf,
}

impl H2App {
    fn start(pki: &Pki, mode: &str) -> H2App {
        let tag = unique_tag("h2-app");
        let port_file = pki.path().join(format!("{tag}.port"));
        let log = pki.path().join(format!("{tag}.log"));
        std::fs::write(&log, "").expect("session log");
        let child = guarded::spawn(
            Command::new(weft_testkit::tools::find("node"))
                .arg(script("h2_app.js"))
                .arg(&port_file)
                .arg(&log)
                .arg(mode),
        )
        .expect("start the h2 app");
        let port: u16 =
            weft_testkit::wait::until("the h2 app's port", Duration::from_secs(20), || {
                std::fs::read_to_string(&port_file)
                    .ok()?
                    .trim()
                    .parse()
                    .ok()
            });
        H2App {
            _child: child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
        }
    }

    /// Waits (at most 10 s) until the app has logged `n` ended sessions.
    fn sessions(&self, n: usize) -> Vec<Value> {
        weft_testkit::wait::until(
            &format!("{n} sessions at the app"),
            Duration::from_secs(10),
            || {
                let v: Vec<Value> = std::fs::read_to_string(&self.log)
                    .ok()?
                    .lines()
                    .map(|l| serde_json::from_str(l).expect("JSON line"))
                    .collect();
                (v.len() >= n).then_some(v)
            },
        )
    }
}

/// Runs the Node client (at most 60 s) against `proxy`; what it printed, as JSON.
async fn h2_client(proxy: SocketAddr, items: &[&str]) -> Value {
    let node = weft_testkit::tools::find("node");
    let mut args = vec![script("h2_client.js").display().to_string()];
    args.push(items[0].to_owned());
    args.push(proxy.to_string());
    args.extend(items[1..].iter().map(|s| s.to_string()));
    let (exit, out, err) = tokio::task::spawn_blocking(move || {
        guarded::output_within(Command::new(node).args(&args), Duration::from_secs(60))
    })
    .await
    .expect("client task");
    assert!(exit.success(), "h2 client: {exit}\n{out}\n{err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("client output ({e}): {out}"))
}

/// A `grpc` (h2c to its app) service `name` for `app`, allowing `frontend` on `/chat` only.
async fn h2_service(pki: &Pki, name: &'static str, app: SocketAddr, idle: &str) -> Sidecar {
    pki.issue(name);
    let mut spec = Spec::new(name, app);
    spec.protocol = "grpc";
    spec.rest = format!(
        "access_log: {name}-h2.log\nauthorization:\n  default: deny\n  rules:\n\
         \x20   - {{name: chat, from: [\"{}\"], paths: [/chat]}}\n",
        spiffe("frontend")
    );
    let idle = idle.to_owned();
    Sidecar::start_edited(pki, spec, move |f| f.idle_timeout = Some(idle.clone())).await
}

fn lines(path: &Path, n: usize) -> Vec<Value> {
    weft_testkit::wait::until(
        &format!("{n} lines in {}", path.display()),
        Duration::from_secs(10),
        || {
            let text = std::fs::read_to_string(path).ok()?;
            let v: Vec<Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).expect("JSON line"))
                .collect();
            (v.len() >= n).then_some(v)
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_over_http2_crosses_the_hop_with_half_close_both_ways() {
    let pki = Pki::new(170);
    let app = H2App::start(&pki, "ws");
    let orders = h2_service(&pki, "orders", app.addr, "1h").await;
    pki.issue("frontend");
    let mut spec = Spec::new("frontend", http_app("frontend").await);
    spec.rest = format!(
        "access_log: fe-h2.log\nservices:\n{}",
        service_yaml("orders", "grpc", None, &[(orders.inbound, "v1")])
    );
    let fe = Sidecar::start(&pki, spec).await;

    // The client half-closes first; the app's frames after that still arrive, to its end.
    let got = h2_client(fe.outbound, &["exchange", "orders", "/chat"]).await;
    assert_eq!(got["enable_connect_protocol"], true, "{got}");
    assert_eq!(got["status"], 200, "{got}");
    let echoes = got["echoes"].as_array().expect("echoes");
    assert_eq!(echoes.len(), 4, "{got}");
    for e in echoes {
        assert_eq!(e["sent"], e["got"], "echoed unchanged");
    }
    let largest = |kind: &str| {
        echoes
            .iter()
            .filter(|e| e["got"]["kind"] == kind)
            .filter_map(|e| e["got"]["len"].as_u64())
            .max()
    };
    assert_eq!(largest("text"), Some(1 << 20));
    assert_eq!(largest("binary"), Some(1 << 20));
    let seen = &app.sessions(1)[0];
    assert_eq!(seen["method"], "CONNECT");
    assert_eq!(seen["protocol"], "websocket", "the app got :protocol");
    assert_eq!(seen["path"], "/chat");
    assert_eq!(
        seen["callers"],
        json!([spiffe("frontend")]),
        "never the forged one"
    );
    assert_eq!(seen["client_ended"], true);
    let after: Vec<Value> = got["after_end"]
        .as_array()
        .expect("after_end")
        .iter()
        .map(|d| json!({"kind": d["kind"], "len": d["len"], "sha256": d["sha256"]}))
        .collect();
    assert_eq!(
        Value::Array(after),
        seen["after_client_end"],
        "what the app sent after the client's FIN arrived whole"
    );
    assert_eq!(got["server_ended"], true, "{got}");
    assert_eq!(got["rst_code"], 0, "the stream ended cleanly: {got}");

    // The app ends its half first; the client's 1 MiB after that still reaches it.
    let first = h2_client(fe.outbound, &["server-half-close", "orders", "/chat"]).await;
    assert_eq!(first["status"], 200, "{first}");
    assert_eq!(first["server_ended"], true, "{first}");
    let seen = &app.sessions(2)[1];
    assert_eq!(seen["server_ended_first"], true, "{seen}");
    let last = seen["received"]
        .as_array()
        .expect("received")
        .last()
        .cloned();
    assert_eq!(
        last.as_ref(),
        Some(&first["sent_after_server_end"]),
        "{seen}"
    );
    assert_eq!(first["rst_code"], 0, "{first}");

    // Authorization sees the request: another path is refused before anything is opened.
    let denied = h2_client(
        fe.outbound,
        &["status", "orders", "/admin", "CONNECT", "websocket"],
    )
    .await;
    assert_eq!(denied["status"], 403, "{denied}");

    // Each session is one request on each side, answered 200, lasting the session.
    for (admin, direction) in [(fe.admin, "outbound"), (orders.admin, "inbound")] {
        let ok = [
            ("direction", direction),
            ("dst_service", "orders"),
            ("status_code", "200"),
        ];
        wait_metric(
            admin,
            "weft_responses_total",
            &ok,
            2.0,
            Duration::from_secs(10),
        )
        .await;
        let dir = [("direction", direction), ("dst_service", "orders")];
        assert_eq!(
            metric(admin, "weft_requests_total", &dir).await,
            3.0,
            "{direction}"
        );
    }
    let half = got["half_closed_at_ms"]
        .as_f64()
        .expect("half_closed_at_ms");
    for (file, direction) in [("fe-h2.log", "outbound"), ("orders-h2.log", "inbound")] {
        let log = lines(&pki.path().join(file), 3);
        let first = &log[0];
        assert_eq!(first["direction"], direction);
        assert_eq!(first["status"], 200, "{first}");
        assert_eq!(first["path"], "/chat");
        assert_eq!(first["method"], "CONNECT", "{first}");
        let ms = first["duration_ms"].as_f64().expect("duration");
        assert!(
            ms >= half,
            "{direction}: the session lasted past the half-close: {first}"
        );
    }
}

/// The raw response head and body start of an HTTP/1.1 request on a fresh connection.
async fn raw_http1(addr: SocketAddr, request: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, s.read(&mut chunk))
            .await
            .expect("a response within 15 s")
            .expect("read");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        let whole = text.split_once("\r\n\r\n").is_some_and(|(head, body)| {
            head.lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .and_then(|v| v.trim().parse::<usize>().ok())
                .is_some_and(|len| body.len() >= len)
        });
        if n == 0 || whole {
            return text.into_owned();
        }
        assert!(buf.len() < 64 << 10, "response too long");
    }
}

/// Upgrades the peer cannot take get a clear answer, never a hang: an h2 app without extended
/// CONNECT (502), an app that never answers (504 within the idle timeout), a service whose app
/// speaks HTTP/1.1 (400 before anything is sent), and an HTTP/1.1 app that answers a WebSocket
/// upgrade with a plain response (passed through unchanged). Hostile CONNECTs get 400, a
/// `:protocol` on a GET a stream reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_the_peer_cannot_take_and_hostile_connects_get_a_clear_answer() {
    let pki = Pki::new(171);
    let plain_h2 = H2App::start(&pki, "no-connect");
    let hung = H2App::start(&pki, "hang");
    let nc = h2_service(&pki, "nc", plain_h2.addr, "1h").await;
    let hang = h2_service(&pki, "hang", hung.addr, "2s").await;
    pki.issue("plain");
    let plain = Sidecar::start(&pki, Spec::new("plain", http_app("plain-v1").await)).await;
    pki.issue("frontend");
    let mut spec = Spec::new("frontend", http_app("frontend").await);
    spec.rest = format!(
        "services:\n{}{}{}",
        service_yaml("nc", "grpc", None, &[(nc.inbound, "v1")]),
        service_yaml("hang", "grpc", None, &[(hang.inbound, "v1")]),
        service_yaml("plain", "http", None, &[(plain.inbound, "v1")]),
    );
    let fe = Sidecar::start_edited(&pki, spec, |f| f.idle_timeout = Some("2s".into())).await;
    let ws = |host: &'static str| ["status", host, "/chat", "CONNECT", "websocket"];

    // An h2 app that did not advertise extended CONNECT resets the stream: 502, at once.
    let got = h2_client(fe.outbound, &ws("nc")).await;
    assert_eq!(got["status"], 502, "{got}");

    // An app that never answers: 504 once the idle timeout (2 s) passes, never a hang.
    let started = Instant::now();
    let got = h2_client(fe.outbound, &ws("hang")).await;
    let waited = started.elapsed();
    assert_eq!(got["status"], 504, "{got}");
    assert!(
        waited < Duration::from_secs(15),
        "answered after {waited:?}"
    );

    // A service whose app speaks HTTP/1.1: refused by the caller's sidecar, with the way out.
    let got = h2_client(fe.outbound, &ws("plain")).await;
    assert_eq!(got["status"], 400, "{got}");
    let why = got["error"].as_str().expect("x-weft-error");
    assert!(why.contains("open it over HTTP/1.1"), "{why}");

    // Hostile or unsupported CONNECTs. A plain CONNECT has no path (its target is an
    // authority): the path stage refuses it before the upgrade stage would.
    let got = h2_client(fe.outbound, &["status", "plain:80", "/", "CONNECT", "-"]).await;
    assert_eq!(got["status"], 400, "{got}");
    assert!(
        got["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{got}"
    );
    let got = h2_client(
        fe.outbound,
        &["status", "nc", "/chat", "CONNECT", "connect-udp"],
    )
    .await;
    assert_eq!(got["status"], 400, "{got}");
    assert!(
        got["error"].as_str().unwrap_or("").contains("connect-udp"),
        "{got}"
    );
    let got = h2_client(fe.outbound, &["status", "nc", "/chat", "GET", "websocket"]).await;
    assert_eq!(
        got["rst_code"], 1,
        ":protocol on a GET: PROTOCOL_ERROR: {got}"
    );
    let connect = "CONNECT plain:80 HTTP/1.1\r\nHost: plain:80\r\n\r\n";
    let head = raw_http1(fe.outbound, connect).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(head.contains("x-weft-error: "), "{head}");

    // An HTTP/1.1 app that answers a WebSocket upgrade with a plain response: passed through.
    let upgrade = "GET /chat HTTP/1.1\r\nHost: plain\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let answer = raw_http1(fe.outbound, upgrade).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("plain-v1"), "the app's own body: {answer}");
}
