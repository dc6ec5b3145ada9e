//! Access logs: one JSON line per request on each side, with flags that say why.

use std::time::{Duration, Instant};

use crate::harness::*;

fn lines(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let v: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line ({e}): {l}")))
            .collect();
        if v.len() >= n || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_logs_tell_each_request_on_both_sides() {
    let pki = Pki::new(70);
    pki.issue("frontend");
    pki.issue("orders");
    let mut spec = Spec::new("orders", http_app("orders-v1").await);
    spec.rest = "access_log: orders-access.log\n".into();
    let orders = Sidecar::start(&pki, spec).await;
    let mut spec = Spec::new("frontend", http_app("frontend").await);
    spec.rest = format!(
        "access_log: fe-access.log\nservices:\n{}routes:\n  - {{name: slow, service: orders, match: {{path: {{prefix: /delay}}}}, timeout: 200ms}}\n  - {{name: api, service: orders}}\n",
        service_yaml("orders", "http", None, &[(orders.inbound, "v1")])
    );
    let fe = Sidecar::start(&pki, spec).await;
    let c = client();
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for _ in 0..3 {
        let r = send(
            &c,
            fe.outbound,
            "orders",
            "GET",
            "/api/x?q=1",
            &[("traceparent", tp)],
        )
        .await
        .expect("req");
        assert_eq!(r.status, 200);
    }
    assert_eq!(get(&c, fe.outbound, "nowhere", "/").await.status, 404);
    assert_eq!(
        get(&c, fe.outbound, "orders", "/delay/2000").await.status,
        504
    );

    let out = lines(&pki.path().join("fe-access.log"), 5);
    assert_eq!(out.len(), 5, "{out:#?}");
    let ok = &out[0];
    assert_eq!(ok["direction"], "outbound");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["route"], "api");
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["authority"], "orders");
    assert_eq!(ok["path"], "/api/x?q=1");
    assert_eq!(ok["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(ok["src_identity"], spiffe("frontend"));
    assert_eq!(ok["dst_identity"], spiffe("orders"));
    assert_eq!(ok["endpoint"], orders.inbound.to_string());
    assert!(ok["bytes_out"].as_u64().expect("bytes") > 0);
    assert_eq!(ok["flags"], serde_json::json!([]));
    assert!(ok["duration_ms"].as_f64().expect("ms") > 0.0);
    let no_route = &out[3];
    assert_eq!(
        (no_route["status"].as_u64(), no_route["route"].as_str()),
        (Some(404), Some("unmatched"))
    );
    assert_eq!(no_route["flags"], serde_json::json!(["no_route"]));
    let timeout = &out[4];
    assert_eq!(
        (timeout["status"].as_u64(), timeout["route"].as_str()),
        (Some(504), Some("slow"))
    );
    assert_eq!(timeout["flags"], serde_json::json!(["timeout"]));

    let inb = lines(&pki.path().join("orders-access.log"), 3);
    assert!(inb.len() >= 3, "{inb:#?}");
    assert_eq!(inb[0]["direction"], "inbound");
    assert_eq!(
        inb[0]["src_identity"],
        spiffe("frontend"),
        "the proven caller"
    );
    assert_eq!(inb[0]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(inb[0]["status"], 200);

    let (_, metrics) = admin_get(fe.admin, "/metrics").await.expect("scrape");
    assert!(
        metrics.contains("weft_access_log_lines_total 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains("weft_access_log_dropped_total 0"),
        "{metrics}"
    );
}
