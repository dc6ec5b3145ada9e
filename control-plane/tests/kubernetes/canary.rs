//! A canary by editing a `MeshRoute` in the API, on the deployed shop (see `deployed`): the
//! shop's own route (`deploy/examples/kubernetes/policy.yaml`, `orders-api`) first sends every
//! frontend call to orders v1, then is edited to send them all to v2, while an unmodified curl
//! in the client pod keeps calling the frontend. Every request must succeed, and every request
//! started a second or more after the edit must have been served by v2.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::deployed::{can_run, curl, example, Shop, LIMIT, NS};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_follows_a_meshroute_edit_within_a_second_without_failures() {
    if !can_run() {
        return;
    }
    let mut shop = Shop::start().await;
    shop.kube.server().put(route_to("v1"));
    shop.start_pods().await;
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
    let mut edited: Option<Instant> = None;
    for _ in 0..400 {
        if batches.len() == 5 && edited.is_none() {
            shop.kube.server().put(route_to("v2"));
            edited = Some(Instant::now());
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
        "canary: {total} requests in {} batches, none failed; after the edit the last batch \
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
    let route = shop.kube.server().get_in("MeshRoute", NS, "orders-api");
    assert_eq!(
        route["spec"]["backends"][0]["subset"]["version"], "v2",
        "{route}"
    );
}
