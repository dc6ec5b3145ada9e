//! A rolling update of `orders` under load, on the deployed shop (see `deployed`), the way a
//! Deployment does it with one replica and the default strategy (maxSurge 25% rounds up to
//! one, maxUnavailable 25% rounds down to none): a new `orders-v1` pod is created through the
//! webhook like the others, becomes Ready, and only then is the old one deleted with its grace
//! period (its endpoint turns terminating in the EndpointSlice, SIGTERM to the app, then to the
//! sidecar once the app has exited, SIGKILL at the grace period's end). An unmodified curl in
//! the client pod calls orders by its Service name all the while (see `load`).
//!
//! What must hold: not one request fails from the moment the old pod served a whole batch
//! until twenty batches after its deletion; after the deletion every request is served by the
//! new pod; neither of the old pod's containers had to be killed. What makes it hold (see
//! docs/KUBERNETES.md, "Rolling updates"): the sample app keeps serving for a second after
//! SIGTERM while the endpoint's removal, and the new pod's endpoint, reach the caller (with the
//! app exiting at once, requests fail: the caller may not know the new pod yet). Behind that,
//! a request that still reaches the old pod after its app stopped listening is answered by its
//! sidecar with a 503 marked `x-weft-unprocessed`, which a caller that knows another endpoint
//! retries there (the app never saw it), and the old sidecar drains its in-flight requests
//! before it exits. The client sidecar's retries are reported (none in the runs so far).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_testkit::wait;

use super::deployed::{can_run, node_get, Shop, LIMIT, NS};
use super::load::{self, Load};

const HOST: &str = "orders.shop.svc.cluster.local";
const PATH: &str = "/api/orders/7";
const OLD: &str = "orders-v1-7d4b9c8f6-b1";
/// The new ReplicaSet's pod (a new pod-template hash).
const NEW: &str = "orders-v1-5c9e8a7b4-x2";

/// The ready addresses of the orders EndpointSlice, sorted.
fn ready_ips(slice: &Value) -> Vec<String> {
    let mut ips: Vec<String> = slice["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["conditions"]["ready"] == true)
        .filter_map(|e| e["addresses"][0].as_str().map(str::to_owned))
        .collect();
    ips.sort();
    ips
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_of_orders_under_load_fails_no_request() {
    if !can_run() {
        return;
    }
    let mut shop = Shop::start().await;
    for (deployment, name) in [
        ("inventory", "inventory-7d4b9c8f6-a1"),
        ("orders-v1", OLD),
        ("client", "client-7d4b9c8f6-e1"),
    ] {
        let pod = shop.create_pod(deployment, name).await;
        shop.pods.push(pod);
    }
    for pod in &shop.pods {
        shop.ready(pod).await;
    }
    let load = Load::start(&shop.pods[2], HOST, PATH);
    // Warm-up: the old pod's readiness reaches the client's sidecar; from the first whole
    // batch it answered on, every request counts.
    load.until(
        "the old pod to answer a whole batch",
        LIMIT,
        |b: &[load::Batch]| {
            b.last()
                .is_some_and(|b| b.replies.iter().all(|r| r.ok() && r.served_by == OLD))
        },
    )
    .await;
    let counted = Instant::now();

    let created = Instant::now();
    let new = shop.create_pod("orders-v1", NEW).await;
    shop.ready(&new).await;
    // The Deployment controller acts on the Ready the kubelet wrote to the API.
    let api = shop.kube.server();
    wait::until_async(
        "the new pod Ready in the API",
        Duration::from_secs(10),
        || async {
            let pod = api.try_get_in("Pod", NS, NEW)?;
            pod["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
                .then_some(())
        },
    )
    .await;
    let ready_after = created.elapsed();
    let old = shop.pods.remove(1);
    let deleting = Instant::now();
    let report = shop.kube.delete(old).await.expect("the old pod deleted");
    let deleted = Instant::now();
    load.until(
        "twenty batches after the deletion",
        Duration::from_secs(60),
        |b: &[load::Batch]| load::ended_after(b, deleted) >= 20,
    )
    .await;
    let summary = load.stop().await;

    let warm_up = summary.batches.iter().filter(|b| b.start < counted).count();
    let counted_batches: Vec<&load::Batch> = summary.since(counted).collect();
    let total: usize = counted_batches.iter().map(|b| b.replies.len()).sum();
    let failed = load::Reply::failures(counted_batches.iter().flat_map(|b| &b.replies));
    // How many of the client sidecar's requests needed a retry (what the retry of unprocessed
    // requests and connect failures did), from its metrics: reported, not asserted.
    let metrics = node_get(
        &shop.runner,
        SocketAddr::from((shop.pods[1].ip(), 15020)),
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".into(),
    )
    .await
    .map(|(_, body)| body)
    .unwrap_or_default();
    let retried: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("weft_retried_requests_total{"))
        .collect();
    let last_old = summary
        .last_served_by(OLD)
        .map(|t| t.saturating_duration_since(deleting));
    eprintln!(
        "rolling update: {total} requests in {} batches ({warm_up} warm-up batches before), \
         {} failed; the new pod was ready {ready_after:?} after its creation; the deletion \
         took {:?} (killed: {:?}); the last batch with an answer from the old pod ended \
         {last_old:?} after the deletion began; the client sidecar's retried requests: \
         {retried:?}",
        counted_batches.len(),
        failed.len(),
        report.took,
        report.killed,
    );
    // When the failing batches started, in seconds from the deletion (negative: before it).
    let failing_at: Vec<f64> = counted_batches
        .iter()
        .filter(|b| b.replies.iter().any(|r| !r.ok()))
        .map(|b| match b.start.checked_duration_since(deleting) {
            Some(d) => d.as_secs_f64(),
            None => -deleting.duration_since(b.start).as_secs_f64(),
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {total} requests failed, in batches started at {failing_at:?} s from the \
         deletion: {failed:#?}\nold pod's events: {:#?}\nclient sidecar:\n{}\ncontrol plane:\n{}",
        failed.len(),
        report.events,
        shop.pods[1].logs("weft-proxy"),
        shop.cp_log()
    );
    assert!(
        report.killed.is_empty(),
        "the old pod's {:?} had to be killed: {:#?}",
        report.killed,
        report.events
    );
    // After the deletion only the new pod serves.
    let after: Vec<&load::Reply> = summary.since(deleted).flat_map(|b| &b.replies).collect();
    assert!(after.len() >= 20 * load::PER_BATCH);
    assert!(
        after.iter().all(|r| r.served_by == NEW),
        "served after the deletion by {:?}",
        after
            .iter()
            .map(|r| r.served_by.as_str())
            .collect::<std::collections::BTreeSet<_>>()
    );
    assert!(
        load::served_since(&summary.batches, NEW, counted),
        "the new pod served"
    );
    // The API agrees: the orders EndpointSlice lists the new pod alone, ready.
    let want = vec![new.ip().to_string()];
    wait::until_async(
        "the orders EndpointSlice listing the new pod alone",
        Duration::from_secs(10),
        || async {
            let slice = api.try_get_in("EndpointSlice", NS, "orders-podrunner")?;
            (ready_ips(&slice) == want).then_some(())
        },
    )
    .await;
    shop.pods.push(new);
}
