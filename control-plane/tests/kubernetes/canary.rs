//! A canary by editing a `MeshRoute` in the API, on the deployed shop (see `deployed`): the
//! shop's own route (`deploy/examples/kubernetes/policy.yaml`, `orders-api`) first sends every
//! frontend call to orders v1, then is edited to send them all to v2, while an unmodified curl
//! in the client pod keeps calling the frontend. Every request must succeed, and every request
//! started a second or more after the edit must have been served by v2. The same with a
//! Gateway API `HTTPRoute` whose parent is the orders Service (GAMMA) and whose backendRefs
//! are the Services `orders-v1` and `orders-v2`: the weights Argo Rollouts or Flagger would
//! shift.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::deployed::{can_run, curl, example, Shop, LIMIT, NS};
use super::gateway_api::http_route;

/// The shop's `orders-api` route with every call going to `version`.
fn route_to(version: &str) -> Value {
    let mut route = example("policy.yaml")
        .into_iter()
        .find(|d| d["kind"] == "MeshRoute" && d["metadata"]["name"] == "orders-api")
        .expect("the orders-api MeshRoute");
    route["spec"]["backends"] = json!([{"subset": {"version": version}, "weight": 100}]);
    route
}

/// One curl run: when it started and ended, and per request its status and orders' version.
struct Batch {
    start: Instant,
    end: Instant,
    replies: Vec<(u16, String)>,
}

/// The orders version in a frontend answer (`""` when the request failed).
pub(super) fn version(code: u16, body: &str) -> String {
    if code != 200 {
        return String::new();
    }
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["order"]["version"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The Services of orders' two versions, beside the shop's `orders` (their pods are some of
/// its pods).
const ORDERS_VERSIONS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: orders-v1, namespace: shop, labels: {app: orders}}
spec:
  selector: {app: orders, version: v1}
  ports: [{name: http, port: 8080, targetPort: 8080, protocol: TCP, appProtocol: http}]
---
apiVersion: v1
kind: Service
metadata: {name: orders-v2, namespace: shop, labels: {app: orders}}
spec:
  selector: {app: orders, version: v2}
  ports: [{name: http, port: 8080, targetPort: 8080, protocol: TCP, appProtocol: http}]
"#;

/// The GAMMA route of orders, `generation` as the API server would count it, with every call
/// weighed `v1`:`v2`.
fn split(generation: i64, v1: i64, v2: i64) -> Value {
    http_route(
        "orders-split",
        "orders",
        generation,
        json!([{"backendRefs": [
            {"name": "orders-v1", "port": 8080, "weight": v1},
            {"name": "orders-v2", "port": 8080, "weight": v2}
        ]}]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_follows_a_meshroute_edit_within_a_second_without_failures() {
    if !can_run() {
        return;
    }
    let mut shop = Shop::start().await;
    shop.kube.server().put(route_to("v1"));
    shop.start_pods().await;
    switches_within_a_second(&shop, "canary", || {
        shop.kube.server().put(route_to("v2"));
    })
    .await;
    let route = shop.kube.server().get_in("MeshRoute", NS, "orders-api");
    assert_eq!(
        route["spec"]["backends"][0]["subset"]["version"], "v2",
        "{route}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_httproute_weight_edit_moves_traffic_within_a_second() {
    if !can_run() {
        return;
    }
    let mut shop = Shop::start().await;
    shop.apply(ORDERS_VERSIONS);
    shop.kube.server().put(split(1, 100, 0));
    shop.start_pods().await;
    switches_within_a_second(&shop, "httproute", || {
        shop.kube.server().put(split(2, 0, 100));
    })
    .await;
    let route = shop.kube.server().get_in("HTTPRoute", NS, "orders-split");
    let parent = &route["status"]["parents"][0];
    assert_eq!(
        parent["controllerName"], "weft.dev/gateway-controller",
        "{route}"
    );
    assert_eq!(parent["conditions"][0]["type"], "Accepted", "{route}");
    assert_eq!(parent["conditions"][0]["status"], "True", "{route}");
}

/// With the frontend's calls to orders all served by v1: keeps calling through the client
/// pod, runs `edit` (which sends them all to v2) after five batches, and checks that none
/// failed and that no batch started a second or more after the edit saw v1.
async fn switches_within_a_second(shop: &Shop, what: &str, edit: impl FnOnce()) {
    let client = &shop.pods[4];
    let host = "frontend.shop.svc.cluster.local";
    let paths: Vec<String> = (0..5).map(|i| format!("/shop/{i}")).collect();

    // Warm-up: the endpoints' readiness reaches the callers; then a whole batch from v1.
    let deadline = Instant::now() + LIMIT;
    loop {
        let replies = curl(client, host, &paths).await;
        if replies.iter().all(|(c, b)| version(*c, b) == "v1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the shop never answered from v1 only: {replies:?}\n{}",
            shop.cp_log()
        );
    }

    // The steady loop: a few batches before the edit, then until 3 s after it (bounded).
    let mut batches: Vec<Batch> = Vec::new();
    let mut edit = Some(edit);
    let mut edited: Option<Instant> = None;
    for _ in 0..400 {
        if batches.len() == 5 {
            if let Some(edit) = edit.take() {
                edit();
                edited = Some(Instant::now());
            }
        }
        let start = Instant::now();
        let replies = curl(client, host, &paths).await;
        batches.push(Batch {
            start,
            end: Instant::now(),
            replies,
        });
        if edited.is_some_and(|t| t.elapsed() > Duration::from_secs(3)) {
            break;
        }
    }
    let edited = edited.expect("the route was edited");
    assert!(
        edited.elapsed() > Duration::from_secs(3),
        "the loop ended early"
    );

    let total: usize = batches.iter().map(|b| b.replies.len()).sum();
    let failed: Vec<&(u16, String)> = batches
        .iter()
        .flat_map(|b| &b.replies)
        .filter(|(c, b)| version(*c, b).is_empty())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {total} failed: {failed:?}",
        failed.len()
    );

    // When v1 last answered, and when v2 first answered, relative to the edit.
    let last_v1 = batches
        .iter()
        .filter(|b| b.replies.iter().any(|(c, r)| version(*c, r) == "v1"))
        .map(|b| b.start.saturating_duration_since(edited))
        .max()
        .unwrap_or_default();
    let first_v2 = batches
        .iter()
        .find(|b| b.replies.iter().any(|(c, r)| version(*c, r) == "v2"))
        .map(|b| b.end.saturating_duration_since(edited))
        .expect("v2 answered after the edit");
    eprintln!(
        "{what}: {total} requests in {} batches, none failed; after the edit the last batch \
         with a v1 answer started at +{last_v1:?}, the first v2 answer came by +{first_v2:?}",
        batches.len()
    );
    assert!(
        last_v1 < Duration::from_secs(1),
        "v1 still answered a batch started {last_v1:?} after the edit"
    );
    assert!(
        batches
            .iter()
            .any(|b| b.start.saturating_duration_since(edited) >= Duration::from_secs(1)),
        "no batch started a second after the edit: the check above would be vacuous"
    );
}
