//! Route matching, rewrites, header edits and weighted splits across real endpoints.

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_match_rewrite_edit_headers_and_split_by_weight() {
    let pki = Pki::new(30);
    pki.issue("frontend");
    pki.issue("orders");
    let v1 = Sidecar::start(&pki, Spec::new("orders", http_app("orders-v1").await)).await;
    let v2 = Sidecar::start(&pki, Spec::new("orders", http_app("orders-v2").await)).await;
    let mut spec = Spec::new("frontend", http_app("frontend").await);
    spec.rest = format!(
        "services:\n{}routes:\n{}",
        service_yaml(
            "orders",
            "http",
            None,
            &[(v1.inbound, "v1"), (v2.inbound, "v2")]
        ),
        r#"  - name: canary-header
    service: orders
    match: {headers: [{name: x-canary, exact: "1"}]}
    backends: [{subset: {version: v2}}]
  - name: exact
    service: orders
    match: {path: {exact: /exact}, method: GET}
    backends: [{subset: {version: v1}}]
  - name: items
    service: orders
    match: {path: {regex: "/items/[0-9]+"}}
    backends: [{subset: {version: v2}}]
    request_headers: {set: {x-route: items}, remove: [x-drop]}
  - name: old
    service: orders
    match: {path: {prefix: /old}}
    rewrite: {prefix: /new}
    backends: [{subset: {version: v1}}]
  - name: split
    service: orders
    backends: [{subset: {version: v1}, weight: 80}, {subset: {version: v2}, weight: 20}]
"#
    );
    let fe = Sidecar::start(&pki, spec).await;
    let c = client();
    let p = fe.outbound;

    for _ in 0..10 {
        let r = send(&c, p, "orders", "GET", "/anything", &[("x-canary", "1")])
            .await
            .expect("req");
        assert_eq!(r.served_by(), "orders-v2");
        assert_eq!(
            get(&c, p, "orders", "/exact").await.served_by(),
            "orders-v1"
        );
    }

    let r = send(&c, p, "orders", "GET", "/items/42", &[("x-drop", "secret")])
        .await
        .expect("req");
    assert_eq!(r.served_by(), "orders-v2");
    let j = r.json();
    assert_eq!(j["headers"]["x-route"], "items");
    assert!(j["headers"].get("x-drop").is_none(), "removed: {j}");

    let r = get(&c, p, "orders", "/old/thing?q=1").await;
    assert_eq!(r.served_by(), "orders-v1");
    assert_eq!(r.json()["path"], "/new/thing?q=1");

    // POST /exact and /items/abc fall through to the 80/20 split. Over n requests the v2 count
    // is binomial(n, 0.2); accept within 4.5 standard deviations (false alarm ~ 1e-5).
    let n = 2000usize;
    let mut v2_count = 0usize;
    for i in 0..n {
        let path = if i % 2 == 0 { "/items/abc" } else { "/exact" };
        let method = if i % 2 == 0 { "GET" } else { "POST" };
        let r = send(&c, p, "orders", method, path, &[]).await.expect("req");
        assert_eq!(r.status, 200);
        if r.served_by() == "orders-v2" {
            v2_count += 1;
        }
    }
    let mean = n as f64 * 0.2;
    let sd = (n as f64 * 0.2 * 0.8).sqrt();
    assert!(
        (v2_count as f64 - mean).abs() <= 4.5 * sd,
        "v2 got {v2_count} of {n}, expected {mean} ± {:.0}",
        4.5 * sd
    );
}
