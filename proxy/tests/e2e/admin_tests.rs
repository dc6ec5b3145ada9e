//! Admin API on loopback: config dump without key material, certificate, runtime log level.

use crate::harness::*;
use crate::pair;

async fn admin(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("req");
    let r = client().request(req).await.expect("admin");
    let status = r.status().as_u16();
    let body = http_body_util::BodyExt::collect(r.into_body())
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_shows_config_certs_and_changes_log_level() {
    let pki = Pki::new(60);
    let routes =
        "routes:\n  - {name: api, service: orders, match: {path: {prefix: /api}}, timeout: 2s}\n";
    let (fe, _orders) = pair(&pki, routes).await;
    assert!(fe.admin.ip().is_loopback());

    let (status, dump) = admin(fe.admin, "GET", "/config_dump").await;
    assert_eq!(status, 200);
    let j: serde_json::Value = serde_json::from_str(&dump).expect("json");
    assert_eq!(j["version"], 1);
    assert_eq!(j["service"]["identity"], spiffe("frontend"));
    assert_eq!(j["services"][0]["name"], "orders");
    assert_eq!(
        j["services"][0]["server_name"],
        "orders.default.serviceaccount.identity.weft.local"
    );
    assert_eq!(j["services"][0]["routes"][0]["name"], "api");
    assert_eq!(j["services"][0]["routes"][0]["timeout_ms"], 2000);
    let key = std::fs::read_to_string(pki.path().join("frontend.key")).expect("key");
    let key_body = key.lines().nth(1).expect("key line");
    assert!(
        !dump.contains("PRIVATE KEY") && !dump.contains(key_body),
        "key material leaked"
    );

    let (status, certs) = admin(fe.admin, "GET", "/certs").await;
    assert_eq!(status, 200);
    let c: serde_json::Value = serde_json::from_str(&certs).expect("json");
    assert_eq!(c["identity"], spiffe("frontend"));
    let left = c["expires_in_seconds"].as_u64().expect("seconds");
    assert!(left > 3500 && left <= 3600, "{left}");

    assert_eq!(
        admin(fe.admin, "GET", "/log-level").await,
        (200, "INFO\n".into())
    );
    assert_eq!(
        admin(fe.admin, "POST", "/log-level?level=debug").await,
        (200, "DEBUG\n".into())
    );
    assert_eq!(
        admin(fe.admin, "GET", "/log-level").await,
        (200, "DEBUG\n".into())
    );
    // Debug lines now appear for traffic.
    let _ = get(&client(), fe.outbound, "orders", "/api/x").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !fe.log_text().contains("DEBUG") {
        assert!(
            std::time::Instant::now() < deadline,
            "no debug output:\n{}",
            fe.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        admin(fe.admin, "POST", "/log-level?level=loud").await.0,
        400
    );
    assert_eq!(admin(fe.admin, "DELETE", "/log-level").await.0, 405);
    assert_eq!(
        admin(fe.admin, "POST", "/log-level?level=info").await,
        (200, "INFO\n".into())
    );
    assert_eq!(admin(fe.admin, "GET", "/nope").await.0, 404);
}

/// `listen.metrics` serves `/metrics`, `/live` and `/ready` (for Prometheus and kubelet probes on
/// a pod's address) and nothing else: no config dump, no log-level changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listener_serves_only_read_only_endpoints() {
    let pki = Pki::new(61);
    pki.issue("orders");
    let app = http_app("orders-v1").await;
    let mut spec = Spec::new("orders", app);
    // Port 0: the kernel picks it, the ready file says which.
    spec.metrics = Some(ANY_PORT);
    let orders = Sidecar::start(&pki, spec).await;
    let m = orders.metrics.expect("the metrics listener's address");
    assert_ne!(m.port(), 0);

    let (status, body) = admin(m, "GET", "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("weft_"), "{body}");
    assert_eq!(admin(m, "GET", "/live").await, (200, "live\n".into()));
    let (status, body) = admin(m, "GET", "/ready").await;
    assert_eq!(status, 200, "{body}");
    for path in ["/config_dump", "/certs", "/log-level"] {
        assert_eq!(admin(m, "GET", path).await.0, 404, "{path}");
    }
    assert_eq!(admin(m, "POST", "/log-level?level=trace").await.0, 404);
    assert_eq!(
        admin(orders.admin, "GET", "/log-level").await,
        (200, "INFO\n".into())
    );
    assert_eq!(admin(orders.admin, "GET", "/config_dump").await.0, 200);
}

/// The admin listener holds no connection forever and no more than its cap: a client that
/// sends nothing, or headers that never end, is closed after the header timeout (5 s), and
/// beyond 64 open connections a new one is closed at once while the 64 are still open.
/// (Before, the hyper server had no timer and no cap: both kinds stayed open indefinitely.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connections_have_a_header_timeout_and_a_cap() {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let pki = Pki::new(61);
    let (fe, _orders) = pair(&pki, "").await;
    let admin_addr = fe.admin;
    let connect = || async move {
        tokio::net::TcpStream::connect(admin_addr)
            .await
            .expect("connect")
    };

    // Silent, and half a request: both closed by the header timeout (waited for, bounded).
    let mut silent = connect().await;
    let mut partial = connect().await;
    partial
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\n")
        .await
        .expect("write");
    for (what, s) in [("silent", &mut silent), ("partial", &mut partial)] {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "{what} connection still open after 20 s");
    }
    drop((silent, partial));

    // 64 open (idle) connections, then one more: closed at once, while the 64 stay open.
    let mut held = Vec::new();
    for _ in 0..64 {
        held.push(connect().await);
    }
    let extra = connect().await;
    wait_closed(
        "the 65th connection to be closed",
        &extra,
        Duration::from_secs(4),
    )
    .await;
    let open = held.iter().filter(|s| !closed(s)).count();
    assert_eq!(open, 64, "the first 64 are still open (not timed out yet)");

    // Once they go, the admin API serves again.
    drop(held);
    weft_testkit::wait::until_async(
        "the admin API to serve again",
        Duration::from_secs(10),
        || async {
            admin_get(admin_addr, "/ready")
                .await
                .filter(|(s, _)| *s == 200)
        },
    )
    .await;
}
