//! Inbound authorization: allow rules by caller identity, path prefix and method, with a
//! default-deny, enforced on HTTP requests and TCP tunnels, changed by reload.

use std::time::Duration;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_deny_admits_only_what_a_rule_allows() {
    let pki = Pki::new(80);
    for sa in ["orders", "frontend", "billing"] {
        pki.issue(sa);
    }
    let app = TestApp::start("orders", 200).await;
    let mut spec = Spec::new("orders", app.addr);
    spec.rest = format!(
        "authorization:\n  default: deny\n  rules:\n\
         \x20   - {{name: frontend-reads, from: [\"{}\"], paths: [/api], methods: [GET]}}\n\
         \x20   - {{name: health, from: [\"*\"], paths: [/health]}}\n",
        spiffe("frontend")
    );
    let orders = Sidecar::start(&pki, spec).await;
    let mut callers = Vec::new();
    for name in ["frontend", "billing"] {
        let mut spec = Spec::new(name, http_app(name).await);
        spec.rest = format!(
            "services:\n{}",
            service_yaml("orders", "http", None, &[(orders.inbound, "v1")])
        );
        callers.push(Sidecar::start(&pki, spec).await);
    }
    let (fe, billing) = (&callers[0], &callers[1]);
    let c = client();
    let status = |r: Result<Resp, String>| r.expect("request").status;
    assert_eq!(
        get(&c, fe.outbound, "orders", "/api/orders/1").await.status,
        200
    );
    assert_eq!(get(&c, fe.outbound, "orders", "/health").await.status, 200);
    assert_eq!(
        get(&c, billing.outbound, "orders", "/health").await.status,
        200
    );
    let r = get(&c, billing.outbound, "orders", "/api/orders/1").await;
    assert_eq!(r.status, 403);
    assert!(
        r.header("x-weft-error").starts_with("denied: no authorization rule of orders allows spiffe://weft.local/ns/default/sa/billing"),
        "{}",
        r.header("x-weft-error")
    );
    assert_eq!(
        status(send(&c, fe.outbound, "orders", "POST", "/api/orders", &[]).await),
        403
    );
    assert_eq!(get(&c, fe.outbound, "orders", "/admin").await.status, 403);
    assert_eq!(app.hits(), 3, "denied requests never reach the app");
    let denied = metric(
        orders.admin,
        "weft_requests_rejected_total",
        &[("reason", "denied")],
    )
    .await;
    assert_eq!(denied, 3.0);
    let by_billing = metric(
        orders.admin,
        "weft_requests_rejected_total",
        &[("reason", "denied"), ("caller", &spiffe("billing"))],
    )
    .await;
    assert_eq!(by_billing, 1.0);

    // An operator opens the service to billing: applied on reload, no restart.
    orders.rewrite(
        "authorization:\n  default: deny\n  rules:\n\
         \x20   - {name: everyone-reads, from: [\"*\"], methods: [GET]}\n",
    );
    orders.wait_version(2).await;
    assert_eq!(
        get(&c, billing.outbound, "orders", "/api/orders/1")
            .await
            .status,
        200
    );
    assert_eq!(
        status(send(&c, fe.outbound, "orders", "POST", "/api/orders", &[]).await),
        403
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_tunnels_from_callers_no_rule_allows_are_closed() {
    let pki = Pki::new(81);
    for sa in ["db", "frontend", "billing"] {
        pki.issue(sa);
    }
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let app = l.local_addr().expect("addr");
    weft_samples::tcp::serve_echo(l);
    let mut spec = Spec::new("db", app);
    spec.protocol = "tcp";
    spec.rest = format!(
        "authorization:\n  default: deny\n  rules:\n    - {{name: fe, from: [\"{}\"]}}\n",
        spiffe("frontend")
    );
    let db = Sidecar::start(&pki, spec).await;
    let mut ports = Vec::new();
    for name in ["frontend", "billing"] {
        let port = free_port();
        let mut spec = Spec::new(name, http_app(name).await);
        spec.rest = format!(
            "services:\n{}",
            service_yaml("db", "tcp", Some(port), &[(db.inbound, "v1")])
        );
        ports.push((Sidecar::start(&pki, spec).await, port));
    }
    let mut ok = tokio::net::TcpStream::connect(("127.0.0.1", ports[0].1))
        .await
        .expect("connect");
    assert_eq!(crate::resilience_tests::echo(&mut ok).await, Some(*b"ping"));
    let mut no = tokio::net::TcpStream::connect(("127.0.0.1", ports[1].1))
        .await
        .expect("connect");
    assert_eq!(crate::resilience_tests::echo(&mut no).await, None);
    // The refusal is counted (waited for: the count may land just after the close).
    let denied = wait_metric(
        db.admin,
        "weft_tcp_connections_rejected_total",
        &[("reason", "denied")],
        1.0,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(denied, 1.0);
}
