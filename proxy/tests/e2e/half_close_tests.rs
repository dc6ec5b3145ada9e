//! TCP half-close inside an upgraded HTTP/1.1 session, across the sidecar hop: a raw TCP
//! client (the upgrade request written by hand) behind one sidecar, a raw TCP app behind the
//! other, real mutual TLS between them. One side ends its write half (`shutdown(Write)`, a
//! FIN) and keeps reading; every byte the other side sends afterwards must still arrive, and
//! the session ends cleanly when both sides are done. (The HTTP/2 extended-CONNECT path has
//! its own half-close test: `extended_connect_tests`.)

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::harness::*;
use crate::upgrade_tests::{access_log, read_head, upgrade, upgrade_pair};

/// What the app sends after the client's FIN (and the client after the app's).
const PAYLOAD: usize = 1 << 20;
/// What the client sends before its FIN.
const BEFORE_FIN: usize = 256 << 10;
/// How long each side waits before it ends its half: the session lasts at least this.
const HOLD: Duration = Duration::from_millis(1500);
/// Every wait in these tests.
const LIMIT: Duration = Duration::from_secs(30);

/// Bytes `0..n` of a pattern in which a lost, repeated or reordered block shows.
fn pattern(seed: u8, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(7) as u8 ^ seed)
        .collect()
}

/// Reads until EOF (bounded by [`LIMIT`]); an error (a reset) fails the test.
async fn read_to_eof(s: &mut TcpStream, mut got: Vec<u8>, what: &str) -> Vec<u8> {
    tokio::time::timeout(LIMIT, s.read_to_end(&mut got))
        .await
        .unwrap_or_else(|_| panic!("{what}: no EOF within {LIMIT:?} ({} bytes)", got.len()))
        .unwrap_or_else(|e| panic!("{what}: {e} after {} bytes", got.len()));
    got
}

/// What the app saw of one session: the request head and every byte after the switch.
#[derive(Debug)]
struct Seen {
    head: String,
    body: Vec<u8>,
}

/// A raw app: answers each upgrade `101`, then by path
/// - `/client-first`: reads to EOF, then sends [`PAYLOAD`] and closes;
/// - `/app-first`: sends [`PAYLOAD`], ends its write half, then reads to EOF and closes;
/// - `/silent`: reads to EOF, then holds the connection, sending nothing, for a minute.
async fn raw_app() -> (SocketAddr, mpsc::Receiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        // Bounded: the tests make a handful of sessions.
        for _ in 0..16 {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let (head, rest) = read_head(&mut s, LIMIT).await;
                s.write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                      Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
                )
                .await
                .expect("write 101");
                let body = if head.starts_with("GET /silent ") {
                    let got = read_to_eof(&mut s, rest, "app").await;
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    got
                } else if head.starts_with("GET /app-first ") {
                    s.write_all(&pattern(2, PAYLOAD)).await.expect("payload");
                    s.shutdown().await.expect("app shutdown(Write)");
                    read_to_eof(&mut s, rest, "app").await
                } else {
                    let got = read_to_eof(&mut s, rest, "app").await;
                    s.write_all(&pattern(2, PAYLOAD))
                        .await
                        .expect("payload after the client's FIN");
                    got
                };
                let _ = tx.send(Seen { head, body }).await;
            });
        }
    });
    (addr, rx)
}

/// frontend sidecar → orders sidecar → `app`, allowing the raw app's paths; access logs
/// `fe-hc.log` and `orders-hc.log`. `edit` changes both config heads.
async fn pair(pki: &Pki, app: SocketAddr, edit: fn(&mut wire::ConfigFile)) -> (Sidecar, Sidecar) {
    let paths = ["/client-first", "/app-first", "/silent"];
    upgrade_pair(pki, app, "hc", &paths, edit).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_upgrade_keeps_the_other_direction_until_it_ends() {
    let pki = Pki::new(2401);
    let (app, mut seen) = raw_app().await;
    let (fe, orders) = pair(&pki, app, |_| {}).await;

    // The client sends, ends its half, and keeps reading: the app's 1 MiB, sent only after
    // it read the client's EOF, arrives whole, then a clean EOF.
    let started = Instant::now();
    let (mut s, rest) = upgrade(fe.outbound, "/client-first").await;
    assert!(
        rest.is_empty(),
        "the app sends nothing before the client's FIN"
    );
    let sent = pattern(1, BEFORE_FIN);
    s.write_all(&sent).await.expect("client bytes");
    tokio::time::sleep(HOLD).await;
    s.shutdown().await.expect("client shutdown(Write)");
    let got = read_to_eof(&mut s, rest, "client").await;
    assert_eq!(got.len(), PAYLOAD, "the app's bytes after the client's FIN");
    assert!(got == pattern(2, PAYLOAD), "unchanged, in order");
    let at_app = tokio::time::timeout(LIMIT, seen.recv())
        .await
        .expect("the app's report")
        .expect("report");
    assert!(
        at_app.head.starts_with("GET /client-first "),
        "{}",
        at_app.head
    );
    assert!(
        at_app
            .head
            .to_ascii_lowercase()
            .contains("x-weft-caller: spiffe://weft.local/ns/default/sa/frontend"),
        "{}",
        at_app.head
    );
    assert_eq!(at_app.body.len(), BEFORE_FIN);
    assert!(at_app.body == sent, "the client's bytes, unchanged");

    // The other way round: the app sends, ends its half, and keeps reading; the client reads
    // to that EOF, then sends 1 MiB and ends its own half.
    let (mut s, rest) = upgrade(fe.outbound, "/app-first").await;
    let got = read_to_eof(&mut s, rest, "client, before its FIN").await;
    assert!(
        got == pattern(2, PAYLOAD),
        "the app's bytes ({})",
        got.len()
    );
    tokio::time::sleep(HOLD).await;
    let sent = pattern(3, PAYLOAD);
    s.write_all(&sent)
        .await
        .expect("the client's bytes after the app's FIN");
    s.shutdown().await.expect("client shutdown(Write)");
    let after = read_to_eof(&mut s, Vec::new(), "client, after its FIN").await;
    assert!(after.is_empty(), "{} bytes after EOF", after.len());
    let at_app = tokio::time::timeout(LIMIT, seen.recv())
        .await
        .expect("the app's report")
        .expect("report");
    assert!(
        at_app.head.starts_with("GET /app-first "),
        "{}",
        at_app.head
    );
    assert_eq!(
        at_app.body.len(),
        PAYLOAD,
        "the client's bytes after the app's FIN"
    );
    assert!(at_app.body == sent, "unchanged, in order");
    let both = started.elapsed();

    // Each session is one request on each side, answered 101, lasting the session (at least
    // its hold), with no error flag.
    for (side, admin, direction) in [
        ("frontend", fe.admin, "outbound"),
        ("orders", orders.admin, "inbound"),
    ] {
        let labels = [
            ("direction", direction),
            ("dst_service", "orders"),
            ("status_code", "101"),
        ];
        wait_metric(admin, "weft_responses_total", &labels, 2.0, LIMIT).await;
        let dir = [("direction", direction), ("dst_service", "orders")];
        assert_eq!(
            metric(admin, "weft_requests_total", &dir).await,
            2.0,
            "{side}"
        );
        assert_eq!(
            metric(admin, "weft_responses_total", &dir).await,
            2.0,
            "{side}"
        );
        let n = metric(admin, "weft_request_duration_seconds_count", &dir).await;
        assert_eq!(n, 2.0, "{side}");
        let secs = metric(admin, "weft_request_duration_seconds_sum", &dir).await;
        let hold = 2.0 * HOLD.as_secs_f64();
        assert!(
            secs >= hold && secs <= both.as_secs_f64() + 1.0,
            "{side}: sessions lasted {secs} s in all"
        );
    }
    for (file, direction) in [("fe-hc.log", "outbound"), ("orders-hc.log", "inbound")] {
        let lines = access_log(&pki.path().join(file), 2);
        assert_eq!(lines.len(), 2, "{lines:#?}");
        for (line, path) in lines.iter().zip(["/client-first", "/app-first"]) {
            assert_eq!(line["direction"], direction);
            assert_eq!(line["status"], 101, "{line}");
            assert_eq!(line["path"], path, "{line}");
            let ms = line["duration_ms"].as_f64().expect("duration");
            assert!(ms >= HOLD.as_secs_f64() * 1000.0, "{direction}: {line}");
            let flags = line["flags"].as_array().map_or(0, Vec::len);
            assert_eq!(flags, 0, "a clean end has no flag: {line}");
        }
    }
}

/// A half-closed session in which the other side then sends nothing and never ends is still
/// bounded by `idle_timeout` (2 s here): the client's read ends within it, never held for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_session_that_goes_quiet_ends_within_the_idle_timeout() {
    let pki = Pki::new(2402);
    let (app, _seen) = raw_app().await;
    let two = |f: &mut wire::ConfigFile| f.idle_timeout = Some("2s".to_owned());
    let (fe, _orders) = pair(&pki, app, two).await;
    let (mut s, rest) = upgrade(fe.outbound, "/silent").await;
    s.write_all(b"last words").await.expect("client bytes");
    let started = Instant::now();
    s.shutdown().await.expect("client shutdown(Write)");
    let mut got = rest;
    // EOF or a reset: either way the sidecar let the session go.
    let _ = tokio::time::timeout(LIMIT, s.read_to_end(&mut got))
        .await
        .expect("the quiet session ends within the limit");
    assert!(
        got.is_empty(),
        "{} bytes: {:?}",
        got.len(),
        String::from_utf8_lossy(&got)
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(10),
        "ended after {waited:?}"
    );
}
