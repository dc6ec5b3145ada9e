use super::*;

use super::test_support::routes;
use crate::telemetry::metrics::Metrics;

const ORDERS: &str = r#"services:
  - name: orders
    identity: spiffe://weft.local/ns/default/sa/orders
    hosts: [orders.shop]
    port: 7001
    endpoints:
      - {address: "127.0.0.1:16001", labels: {version: v1}}
      - {address: "127.0.0.1:16002", labels: {version: v2}}
  - name: users
    identity: spiffe://weft.local/ns/default/sa/users
    endpoints: [{address: "127.0.0.1:16003"}]
routes:
  - {name: api, service: orders, match: {path: {prefix: /api}}, backends: [{subset: {version: v2}}]}
  - {name: rest, service: orders, backends: [{subset: {version: v1}, weight: 1}, {subset: {version: v2}, weight: 0}]}
"#;

fn get(path: &str) -> RequestHeader {
    RequestHeader::build("GET", path.as_bytes(), None).expect("request")
}

#[test]
fn destinations_are_found_by_port_then_host_ignoring_port_and_case() {
    let m = Metrics::new().expect("metrics");
    let r = routes(ORDERS, None, &m);
    let name = |d: Option<&Arc<Destination>>| d.map(|d| d.name.clone());
    assert_eq!(
        name(r.destination(Some(7001), Some("users"))),
        Some("orders".into()),
        "the dedicated port wins"
    );
    assert_eq!(
        name(r.destination(Some(9), Some("Orders.Shop:80"))),
        Some("orders".into())
    );
    assert_eq!(
        name(r.destination(None, Some("users"))),
        Some("users".into())
    );
    assert_eq!(name(r.destination(None, Some("[::1]:80"))), None);
    assert_eq!(name(r.destination(None, None)), None);
    assert_eq!(r.outbound_ports(), vec![(7001, Protocol::Http)]);
}

#[test]
fn the_first_matching_route_wins_and_a_service_without_routes_gets_a_catch_all() {
    let m = Metrics::new().expect("metrics");
    let r = routes(ORDERS, None, &m);
    let orders = r.for_host("orders").expect("orders");
    let req = get("/api/x");
    let name = |path: &str| {
        orders
            .route(&Method::GET, path, &req)
            .map(|rs| rs.name.to_string())
    };
    assert_eq!(name("/api/x"), Some("api".into()));
    assert_eq!(
        name("/apix"),
        Some("rest".into()),
        "prefixes match whole segments"
    );
    let users = r.for_host("users").expect("users");
    assert_eq!(users.routes.len(), 1);
    assert!(users.route(&Method::POST, "/anything", &req).is_some());
}

#[test]
fn backends_draw_by_weight_and_subsets_pick_endpoints() {
    let m = Metrics::new().expect("metrics");
    let r = routes(ORDERS, None, &m);
    let orders = r.for_host("orders").expect("orders");
    let (api, rest) = (&orders.routes[0], &orders.routes[1]);
    for _ in 0..200 {
        assert_eq!(orders.pick(api, 0, 0), Some(1), "v2 only");
        assert_eq!(orders.pick(rest, 0, 0), Some(0), "weight 0 is never drawn");
    }
    // Tried already: a tried endpoint still beats none.
    assert_eq!(orders.pick(api, 0b10, 0), Some(1));
}

#[test]
fn live_state_survives_a_rebuild_for_the_endpoints_that_stay() {
    let m = Metrics::new().expect("metrics");
    let first = routes(ORDERS, None, &m);
    let moved = ORDERS.replace("127.0.0.1:16001", "127.0.0.1:16009");
    let second = routes(&moved, Some(&first), &m);
    let (a, b) = (
        first.for_host("orders").expect("a"),
        second.for_host("orders").expect("b"),
    );
    assert!(
        !Arc::ptr_eq(&a.stats[0], &b.stats[0]),
        "a new endpoint starts afresh"
    );
    assert!(
        Arc::ptr_eq(&a.stats[1], &b.stats[1]),
        "16002 keeps its latency history"
    );
    assert!(
        Arc::ptr_eq(&a.budget, &b.budget),
        "same budget settings, same budget"
    );
    assert!(
        Arc::ptr_eq(&a.in_flight, &b.in_flight),
        "same limits, same limiter"
    );
}

#[test]
fn request_edits_rewrite_the_prefix_and_headers() {
    let m = Metrics::new().expect("metrics");
    let text = ORDERS.replace(
            "backends: [{subset: {version: v2}}]}",
            "backends: [{subset: {version: v2}}], rewrite: {prefix: /v2}, request_headers: {set: {x-a: \"1\"}, remove: [x-b]}}",
        );
    let r = routes(&text, None, &m);
    let api = &r.for_host("orders").expect("orders").routes[0];
    let mut req = get("/api/items?q=1");
    req.insert_header("x-b", "gone").expect("header");
    api.edit_request(&mut req).expect("edit");
    assert_eq!(req.uri.to_string(), "/v2/items?q=1");
    assert_eq!(
        req.headers.get("x-a").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    assert!(req.headers.get("x-b").is_none());
}

#[test]
fn rewrites_keep_the_rest_and_query() {
    assert_eq!(rewrite_prefix("/api", "/v2", "/api/x?q=1"), "/v2/x?q=1");
    assert_eq!(rewrite_prefix("/api", "/v2", "/api"), "/v2");
    assert_eq!(rewrite_prefix("/api", "/", "/api/x"), "/x");
    assert_eq!(rewrite_prefix("/api", "/v2/", "/api?q"), "/v2/?q");
    assert_eq!(rewrite_prefix("/", "/base", "/x"), "/base/x");
}
