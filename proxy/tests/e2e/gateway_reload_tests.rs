//! The gateway file reloads: a real `weft-proxy --gateway` in front of a meshed `orders`,
//! driven by `curl`. A route added by editing the file starts answering; an edit that does
//! not validate (a field that is wrong, a field that does not exist) is refused with
//! `file:line:col` in the log and `weft_gateway_config_reloads_total{result="error"}`, and the
//! routes in force keep serving. Every wait is on the reload counter, never a sleep.

use std::path::PathBuf;
use std::time::Duration;

use crate::gateway_tests::{spawn_gateway, EdgePki, Gw};
use crate::harness::*;

const HOST: &str = "api.example.test";

const HEAD: &str = "listen: {https: 127.0.0.1:0}
tls:
  reload_interval: 100ms
  certificates: [{hosts: [api.example.test], cert: api.crt, key: api.key}]
routes:
  - name: orders
    hosts: [api.example.test]
    match: {path: {prefix: /orders}}
    service: orders
";

/// Added by the first edit: `/shop` reaches `orders` as `/orders`, marked by a header.
const SHOP: &str = "  - name: shop
    hosts: [api.example.test]
    match: {path: {prefix: /shop}}
    service: orders
    rewrite: {prefix: /orders}
    request_headers: {set: {x-route: shop}}
";

/// Valid YAML, wrong field: no service `nowhere` in the sidecar file.
const BAD_SERVICE: &str = "  - name: lost
    service: nowhere
";

/// A field the gateway file does not have.
const UNKNOWN_FIELD: &str = "  - name: odd
    service: orders
    colour: red
";

/// Wait until the reload counter with `result` reaches `n`.
async fn reloads(gw: &Gw, result: &str, n: f64) {
    let got = wait_metric(
        gw.sidecar.admin,
        "weft_gateway_config_reloads_total",
        &[("result", result)],
        n,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(got, n, "reloads {result}");
}

/// A gateway serving gateway file `text` (written as `gateway.yaml` in `pki`'s directory,
/// returned) with a certificate for [`HOST`] from a fresh edge CA, in front of a sidecar with
/// `services`.
async fn gateway_for(pki: &Pki, services: &str, text: &str) -> (Gw, PathBuf) {
    let edge = EdgePki::new(pki.path());
    edge.issue("api", HOST, 1001);
    let file = pki.path().join("gateway.yaml");
    std::fs::write(&file, text).expect("gateway file");
    let (sidecar, at) = spawn_gateway(pki, services, &file).await;
    let gw = Gw {
        sidecar,
        https: at.https,
        http: at.https,
        ca: pki.path().join("edge-ca.pem"),
        edge,
    };
    (gw, file)
}

/// The status curl reports for `path`, with the app's view of the request.
fn get(gw: &Gw, path: &str) -> (String, serde_json::Value) {
    let c = gw.curl(HOST, path, &[]);
    let (body, status) = c.parts();
    (status, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_file_edit_applies_and_a_bad_one_keeps_the_routes_in_force() {
    let pki = Pki::new(2305);
    pki.issue("orders");
    let orders = Sidecar::start(&pki, Spec::new("orders", http_app("orders-v1").await)).await;
    let services = service_yaml("orders", "http", None, &[(orders.inbound, "v1")]);
    let (gw, file) = gateway_for(&pki, &services, HEAD).await;
    assert_eq!(get(&gw, "/orders/1").0, "200 2");
    assert_eq!(get(&gw, "/shop/1").0, "404 2", "no shop route yet");

    // Edit: a route added. Written with a rename, as an editor or a ConfigMap update does.
    gw.edge.replace("gateway.yaml", &format!("{HEAD}{SHOP}"));
    reloads(&gw, "ok", 1.0).await;
    let (status, body) = get(&gw, "/shop/1");
    assert_eq!(status, "200 2", "{body}");
    assert_eq!(body["path"], "/orders/1", "{body}");
    assert_eq!(body["headers"]["x-route"], "shop", "{body}");
    assert_eq!(
        body["caller"],
        spiffe("gateway"),
        "mTLS with the gateway's identity"
    );

    // A broken edit: a route naming a service the mesh does not have. Refused with the
    // place in the file; both routes keep serving.
    let text = format!("{HEAD}{SHOP}{BAD_SERVICE}");
    gw.edge.replace("gateway.yaml", &text);
    reloads(&gw, "error", 1.0).await;
    let line = text
        .lines()
        .position(|l| l.contains("nowhere"))
        .expect("line")
        + 1;
    let log = gw.sidecar.log_text();
    let want = format!(
        "{}:{line}:14: routes[2].service: unknown service \"nowhere\"",
        file.display()
    );
    assert!(log.contains(&want), "no {want} in the log:\n{log}");
    assert_eq!(get(&gw, "/orders/2").0, "200 2");
    assert_eq!(
        get(&gw, "/shop/2").0,
        "200 2",
        "the last good config serves"
    );

    // Another: a field that does not exist (a syntax error, with its line and column).
    let text = format!("{HEAD}{SHOP}{UNKNOWN_FIELD}");
    gw.edge.replace("gateway.yaml", &text);
    reloads(&gw, "error", 2.0).await;
    let line = text
        .lines()
        .position(|l| l.contains("colour"))
        .expect("line")
        + 1;
    let log = gw.sidecar.log_text();
    let want = format!("{}:{line}:5: ", file.display());
    assert!(
        log.contains(&want) && log.contains("unknown field `colour`"),
        "no {want}unknown field in the log:\n{log}"
    );
    assert_eq!(
        get(&gw, "/shop/3").0,
        "200 2",
        "the last good config serves"
    );
    let ok = metric(
        gw.sidecar.admin,
        "weft_gateway_config_reloads_total",
        &[("result", "ok")],
    )
    .await;
    assert_eq!(ok, 1.0, "nothing else was put in force");

    // Mended: the next edit applies again (the shop route gone, so its path is a 404).
    gw.edge.replace("gateway.yaml", HEAD);
    reloads(&gw, "ok", 2.0).await;
    assert_eq!(get(&gw, "/shop/4").0, "404 2");
    assert_eq!(get(&gw, "/orders/4").0, "200 2");
}

/// A route splitting requests between two services by weight, as a Gateway API canary does.
fn split(orders: u32, v2: u32) -> String {
    format!(
        "listen: {{https: 127.0.0.1:0}}
tls:
  reload_interval: 100ms
  certificates: [{{hosts: [api.example.test], cert: api.crt, key: api.key}}]
routes:
  - name: canary
    hosts: [api.example.test]
    backends: [{{service: orders, weight: {orders}}}, {{service: orders-v2, weight: {v2}}}]
"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_weighted_split_reaches_both_services_and_a_weight_edit_moves_it() {
    let pki = Pki::new(2306);
    for s in ["orders", "orders-v2"] {
        pki.issue(s);
    }
    let orders = Sidecar::start(&pki, Spec::new("orders", http_app("orders").await)).await;
    let v2 = Sidecar::start(&pki, Spec::new("orders-v2", http_app("orders-v2").await)).await;
    let services = format!(
        "{}{}",
        service_yaml("orders", "http", None, &[(orders.inbound, "v1")]),
        service_yaml("orders-v2", "http", None, &[(v2.inbound, "v2")])
    );
    let (gw, _) = gateway_for(&pki, &services, &split(1, 1)).await;
    // Which app answered each of `n` requests.
    let answered = |n: usize| -> Vec<String> {
        (0..n)
            .map(|i| {
                let (status, body) = get(&gw, &format!("/orders/{i}"));
                assert_eq!(status, "200 2", "{body}");
                body["service"].as_str().unwrap_or("?").to_owned()
            })
            .collect()
    };
    // 1:1 over 40 requests: each side gets some (all to one side: odds 2^-39).
    let seen = answered(40);
    let to_v2 = seen.iter().filter(|s| *s == "orders-v2").count();
    assert!(
        (1..40).contains(&to_v2),
        "both services answer a 1:1 split: {seen:?}"
    );
    assert!(
        seen.iter().all(|s| s == "orders" || s == "orders-v2"),
        "{seen:?}"
    );

    // The canary takes everything: after the reload, every request reaches orders-v2.
    gw.edge.replace("gateway.yaml", &split(0, 1));
    reloads(&gw, "ok", 1.0).await;
    let seen = answered(20);
    assert!(seen.iter().all(|s| s == "orders-v2"), "{seen:?}");
}
