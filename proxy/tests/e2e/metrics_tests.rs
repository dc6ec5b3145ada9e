//! `/metrics` tells exactly what happened, with series bounded by config, not by traffic.

use crate::harness::*;
use crate::pair;

/// The value of the one sample whose line contains every fragment (0 when absent).
fn sample(text: &str, name: &str, fragments: &[&str]) -> f64 {
    let hits: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && fragments.iter().all(|f| l.contains(f)))
        .collect();
    assert!(hits.len() <= 1, "ambiguous {name} {fragments:?}: {hits:#?}");
    hits.first()
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no series {name} {fragments:?} in\n{text}"))
}

/// Sum of every `weft_responses_total` sample whose line contains `fragment`.
fn responses(text: &str, fragment: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("weft_responses_total{") && l.contains(fragment))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Scrape until `n` responses matching `fragment` are recorded (responses are recorded in the
/// logging phase, just after the client has its answer), for at most 10 s.
async fn scrape_settled(admin: std::net::SocketAddr, fragment: &str, n: f64) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, text) = admin_get(admin, "/metrics").await.expect("scrape");
        assert_eq!(status, 200);
        if responses(&text, fragment) >= n || std::time::Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

fn series(text: &str) -> usize {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_and_series_stay_bounded() {
    let pki = Pki::new(50);
    let routes = "routes:\n  - {name: api, service: orders, match: {path: {prefix: /api}}}\n  - {name: status, service: orders, match: {path: {prefix: /status}}}\n";
    let (fe, orders) = pair(&pki, routes).await;
    let c = client();
    mixed_traffic(&c, fe.outbound).await;
    assert_eq!(get(&c, fe.outbound, "elsewhere", "/").await.status, 404);

    let out = r#"direction="outbound""#;
    let text = scrape_settled(fe.admin, out, 13.0).await;
    assert_eq!(responses(&text, out), 13.0, "{text}");
    assert_eq!(
        sample(&text, "weft_requests_total", &[out, r#"route="api""#]),
        7.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "weft_requests_total", &[out, r#"route="status""#]),
        3.0
    );
    assert_eq!(
        sample(
            &text,
            "weft_requests_total",
            &[out, r#"dst_service="orders""#, r#"route="unmatched""#]
        ),
        2.0
    );
    assert_eq!(
        sample(
            &text,
            "weft_requests_total",
            &[out, r#"dst_service="unknown""#]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "weft_responses_total",
            &[r#"route="api""#, r#"status_code="200""#]
        ),
        7.0
    );
    assert_eq!(
        sample(
            &text,
            "weft_responses_total",
            &[r#"route="status""#, r#"status_code="503""#]
        ),
        3.0
    );
    assert_eq!(
        sample(
            &text,
            "weft_responses_total",
            &[
                r#"route="unmatched""#,
                r#"dst_service="orders""#,
                r#"status_code="404""#
            ]
        ),
        2.0
    );
    assert_eq!(
        sample(
            &text,
            "weft_request_duration_seconds_count",
            &[r#"route="api""#, r#"status_class="2xx""#]
        ),
        7.0
    );
    assert!(text.contains("weft_config_version 1"), "{text}");
    assert!(
        text.contains("weft_certificate_expiry_timestamp_seconds "),
        "{text}"
    );

    // The orders sidecar counted the same requests inbound, labelled with the proven caller.
    let inbound = scrape_settled(orders.admin, r#"direction="inbound""#, 10.0).await;
    let caller = format!(r#"caller="{}""#, spiffe("frontend"));
    assert_eq!(
        sample(
            &inbound,
            "weft_requests_total",
            &[r#"direction="inbound""#, &caller]
        ),
        10.0,
        "{inbound}"
    );
    assert_eq!(
        sample(
            &inbound,
            "weft_responses_total",
            &[r#"direction="inbound""#, r#"status_code="503""#]
        ),
        3.0
    );
    assert!(sample(&inbound, "weft_tls_handshakes_total", &[r#"result="ok""#]) >= 1.0);

    // Unbounded request paths do not create series: only config names and identities label them.
    let before = series(&text);
    for i in 0..300 {
        let path = format!("/api/{i}/{}", i * 7919);
        assert_eq!(get(&c, fe.outbound, "orders", &path).await.status, 200);
        let _ = get(&c, fe.outbound, "orders", &format!("/random-{i}")).await;
    }
    let after = scrape_settled(fe.admin, out, 613.0).await;
    assert_eq!(responses(&after, out), 613.0);
    let old: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.rsplit_once(' ').map(|x| x.0))
        .collect();
    let new: Vec<&str> = after
        .lines()
        .filter_map(|l| l.rsplit_once(' ').map(|x| x.0))
        .filter(|k| !old.contains(k))
        .collect();
    assert!(new.is_empty(), "new series: {new:#?}");
    assert_eq!(
        series(&after),
        before,
        "series count changed with request paths"
    );
    assert_eq!(
        sample(&after, "weft_requests_total", &[out, r#"route="api""#]),
        307.0
    );
}
