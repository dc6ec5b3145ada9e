//! HTTP through two sidecars: versions, identity, errors in words.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;
use crate::pair;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_h2c_reach_the_app_with_the_caller_identity() {
    let pki = Pki::new(1);
    let (fe, _orders) = pair(&pki, "").await;

    let r = get(&client(), fe.outbound, "orders", "/hello?x=1").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.served_by(), "orders-v1");
    let j = r.json();
    assert_eq!(j["caller"], spiffe("frontend"), "app sees who called");
    assert_eq!(j["path"], "/hello?x=1");
    assert_eq!(
        j["version"], "HTTP/1.1",
        "the app gets HTTP/1.1 for protocol http"
    );

    // A caller cannot forge its identity: the inbound sidecar replaces the header.
    let r = send(
        &client(),
        fe.outbound,
        "orders:80",
        "GET",
        "/",
        &[("x-weft-caller", "spiffe://evil/ns/x/sa/y")],
    )
    .await
    .expect("request");
    assert_eq!(r.json()["caller"], spiffe("frontend"));

    let mut h2 = H2c::connect(fe.outbound).await;
    for _ in 0..3 {
        let r = h2.get("orders", "/h2").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["caller"], spiffe("frontend"));
        assert_eq!(
            r.json()["version"],
            "HTTP/1.1",
            "h2c from the app, HTTP/1.1 to the http app"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_and_unmatched_route_get_404_in_words() {
    let pki = Pki::new(2);
    let routes = "routes:\n  - {name: api, service: orders, match: {path: {prefix: /api}}}\n";
    let (fe, _orders) = pair(&pki, routes).await;
    let c = client();

    let r = get(&c, fe.outbound, "nowhere", "/").await;
    assert_eq!(r.status, 404);
    assert!(
        r.header("x-weft-error")
            .contains("unknown host \"nowhere\""),
        "{r:?}"
    );

    let r = get(&c, fe.outbound, "orders", "/other").await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.header("connection"),
        "keep-alive",
        "a 404 before proxying keeps the connection"
    );
    assert!(r.header("x-weft-error").contains("no route"), "{r:?}");

    let r = get(&c, fe.outbound, "orders", "/api/x").await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http_gets_400_and_the_sidecar_lives_on() {
    let pki = Pki::new(3);
    let (fe, _orders) = pair(&pki, "").await;
    for garbage in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: orders\r\nBad Header\r\n\r\n",
        b"GET /\x01 HTTP/9.9\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: orders\r\nContent-Length: abc\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: orders\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"\x16\x03\x01\x00\x05hello\r\n\r\n",
    ] {
        let mut s = tokio::net::TcpStream::connect(fe.outbound)
            .await
            .expect("connect");
        s.write_all(garbage).await.expect("write");
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        let text = String::from_utf8_lossy(&buf);
        assert!(
            text.starts_with("HTTP/1.1 400"),
            "{} -> {text:?}\n{}",
            garbage.escape_ascii(),
            fe.log_text()
        );
    }
    let mut s = tokio::net::TcpStream::connect(fe.outbound)
        .await
        .expect("connect");
    s.write_all(b"GET / HTTP/1.0\r\nHost: orders\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("answered")
        .expect("read");
    assert!(
        buf.starts_with(b"HTTP/1.0 200") || buf.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    let r = get(&client(), fe.outbound, "orders", "/").await;
    assert_eq!(r.status, 200, "still serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_endpoint_503_and_timeout_504() {
    let pki = Pki::new(4);
    pki.issue("frontend");
    pki.issue("orders");
    let orders = Sidecar::start(&pki, Spec::new("orders", http_app("orders").await)).await;
    let mut spec = Spec::new("frontend", http_app("frontend").await);
    spec.rest = format!(
        "services:\n{}{}routes:\n  - {{name: slow, service: orders, match: {{path: {{prefix: /delay}}}}, timeout: 300ms}}\n",
        service_yaml("orders", "http", None, &[(orders.inbound, "v1")]),
        "  - name: empty\n    identity: spiffe://weft.local/ns/default/sa/empty\n    endpoints: []\n",
    );
    let fe = Sidecar::start(&pki, spec).await;
    let c = client();

    let r = send(&c, fe.outbound, "empty", "GET", "/", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", fe.log_text()));
    assert_eq!(r.status, 503);
    assert!(r.header("x-weft-error").contains("no endpoint"), "{r:?}");
    assert_eq!(
        r.header("connection"),
        "close",
        "the client must not reuse a closing connection"
    );

    let start = Instant::now();
    let r = send(&c, fe.outbound, "orders", "GET", "/delay/3000", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", fe.log_text(), orders.log_text()));
    let took = start.elapsed();
    assert_eq!(r.status, 504, "{r:?}");
    assert!(
        r.header("x-weft-error").contains("route timeout 300ms"),
        "{r:?}"
    );
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_millis(2000),
        "{took:?}"
    );

    let r = get(&c, fe.outbound, "orders", "/delay/10").await;
    assert_eq!(r.status, 200, "fast enough: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_is_refused_at_start_with_file_field_and_reason() {
    let pki = Pki::new(5);
    pki.issue("frontend");
    let run = |yaml: &str, extra: &[&str]| {
        let path = pki.path().join("bad.yaml");
        std::fs::write(&path, yaml).expect("write");
        // A deadline: a regression that makes it serve instead of refusing fails, not hangs.
        let (exit, stdout, stderr) = guarded::output_within(
            std::process::Command::new(env!("CARGO_BIN_EXE_weft-proxy"))
                .arg("--config")
                .arg(&path)
                .args(extra),
            Duration::from_secs(30),
        );
        (exit.code(), stderr, stdout)
    };
    let good = format!(
        "service: {{name: frontend, identity: {}, app: \"127.0.0.1:9\"}}\n\
         tls: {{cert: frontend.crt, key: frontend.key, trust_bundle: ca.crt}}\n",
        spiffe("frontend")
    );
    let (code, _, stdout) = run(&good, &["--check"]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("ok: service frontend"), "{stdout}");

    let (code, stderr, _) = run(&good.replace("frontend.crt", "missing.crt"), &[]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("bad.yaml: tls.cert: cannot read"),
        "{stderr}"
    );

    let (code, stderr, _) = run(&format!("{good}workers: 0\nconnect_timeout: fast\n"), &[]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("bad.yaml: workers: must be 1 to 64, got 0"),
        "{stderr}"
    );
    assert!(
        stderr.contains("bad.yaml: connect_timeout: bad duration \"fast\""),
        "{stderr}"
    );

    let (code, stderr, _) = run(
        &format!("{good}listen: {{outbound: \"127.0.0.1:1\", inbund: x}}\n"),
        &[],
    );
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("bad.yaml:3:") && stderr.contains("unknown field `inbund`"),
        "{stderr}"
    );
}
