//! An invalid edit of a `MeshRoute` keeps its last good version in force: the resource says
//! `Accepted=False` with the reason and the field, traffic keeps going where the last accepted
//! generation sent it, and the next valid edit is accepted and followed. First on the mapping
//! alone (`LastGood` over the source's fixtures), then on the deployed shop (see `deployed`):
//! the shop's `orders-api` route sends every frontend call to orders v1; it is edited to an
//! invalid route (v2 only, behind a path regex that does not compile) while an unmodified curl
//! in the client pod keeps calling; then to a valid v2-only route.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weft_control_plane::policy::kube::last_good::LastGood;
use weft_control_plane::policy::kube::mapping::{Kind, Mapped};
use weft_testkit::wait;

use super::canary::version;
use super::deployed::{can_run, curl, example, Shop, LIMIT, NS};
use super::source::{objects, resource, shop, TD};

/// The regex of the invalid edits: it does not compile.
const BAD_REGEX: &str = "/api/((";

/// The backend version `orders-api` sends to in `m` (`None`: the route is not in force).
fn orders_api_version(m: &Mapped) -> Option<String> {
    let route = m.mesh.routes.iter().find(|r| r.name == "orders-api")?;
    let v = serde_json::to_value(route).expect("a route");
    v["backends"][0]["subset"]["version"]
        .as_str()
        .map(str::to_owned)
}

fn fixture_route(generation: i64, version: &str, path: Value) -> Value {
    resource(
        "MeshRoute",
        "orders-api",
        generation,
        json!({"service": "orders", "match": {"path": path},
               "backends": [{"subset": {"version": version}, "weight": 100}]}),
    )
}

#[test]
fn an_invalid_edit_keeps_the_last_good_generation_until_a_valid_one() {
    let last = LastGood::default();
    let with = |route: Value| {
        let mut all = shop();
        all.push(route);
        objects(&all)
    };
    let verdict = |m: &Mapped| {
        m.verdicts
            .iter()
            .find(|v| v.key.kind == Kind::MeshRoute && v.key.name == "orders-api")
            .expect("a verdict for orders-api")
            .clone()
    };

    let m = last.map(&with(fixture_route(1, "v1", json!({"prefix": "/api"}))), TD);
    assert_eq!(orders_api_version(&m).as_deref(), Some("v1"));
    assert!(verdict(&m).result.is_ok());
    // A route that was never accepted stays out (the fixtures' `orders-bad`).
    assert!(m.mesh.routes.iter().all(|r| r.name != "orders-bad"));

    // The invalid edit: rejected for its own generation, generation 1 serves.
    let m = last.map(
        &with(fixture_route(2, "v2", json!({"regex": BAD_REGEX}))),
        TD,
    );
    assert_eq!(orders_api_version(&m).as_deref(), Some("v1"));
    let v = verdict(&m);
    assert_eq!(v.generation, Some(2));
    let r = v.result.expect_err("rejected");
    assert_eq!(r.reason, "Invalid");
    assert!(
        r.message.starts_with("spec.match.path.regex: bad regex")
            && r.message.ends_with("(generation 1 stays in force)"),
        "{}",
        r.message
    );
    assert!(m.mesh.routes.iter().all(|r| r.name != "orders-bad"));

    // A valid edit replaces it.
    let m = last.map(&with(fixture_route(3, "v2", json!({"prefix": "/api"}))), TD);
    assert_eq!(orders_api_version(&m).as_deref(), Some("v2"));
    assert!(verdict(&m).result.is_ok());

    // Deleted and created again (another uid), invalid: nothing of the old one is held.
    let mut recreated = fixture_route(1, "v1", json!({"regex": BAD_REGEX}));
    recreated["metadata"]["uid"] = json!("another-uid");
    let m = last.map(&with(recreated), TD);
    assert_eq!(orders_api_version(&m), None);
    let r = verdict(&m).result.expect_err("rejected");
    assert!(!r.message.contains("stays in force"), "{}", r.message);
}

/// The shop's `orders-api` route with every call going to `version`; with `regex`, matched
/// by that path regex instead of its prefix.
fn route_to(version: &str, regex: Option<&str>) -> Value {
    let mut route = example("policy.yaml")
        .into_iter()
        .find(|d| d["kind"] == "MeshRoute" && d["metadata"]["name"] == "orders-api")
        .expect("the orders-api MeshRoute");
    route["spec"]["backends"] = json!([{"subset": {"version": version}, "weight": 100}]);
    if let Some(r) = regex {
        route["spec"]["match"]["path"] = json!({ "regex": r });
    }
    route
}

/// One curl run: when it started, and per request the orders version (`""`: failed).
struct Batch {
    start: Instant,
    versions: Vec<String>,
}

/// The route's `Accepted` condition once it is about `generation` and says `status` (waited
/// for, bounded: before its pods are ready the route's service is not yet a mesh service).
async fn condition_for(shop: &Shop, generation: i64, status: &str) -> Value {
    let api = shop.kube.server();
    wait::until_async(
        &format!("orders-api's condition for generation {generation}"),
        Duration::from_secs(20),
        || async {
            let route = api.try_get_in("MeshRoute", NS, "orders-api")?;
            let c = route["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Accepted")?
                .clone();
            (c["observedGeneration"] == generation && c["status"] == status).then_some(c)
        },
    )
    .await
}

/// Calls the frontend from `client` in batches of `paths` for `span` after `from` (bounded in
/// count too), returning every batch.
async fn load(shop: &Shop, from: Instant, span: Duration) -> Vec<Batch> {
    let client = &shop.pods[4];
    let paths: Vec<String> = (0..5).map(|i| format!("/shop/{i}")).collect();
    let mut batches = Vec::new();
    for _ in 0..400 {
        let start = Instant::now();
        let versions = curl(client, "frontend.shop.svc.cluster.local", &paths)
            .await
            .iter()
            .map(|(c, b)| version(*c, b))
            .collect();
        batches.push(Batch { start, versions });
        if from.elapsed() > span {
            break;
        }
    }
    batches
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_meshroute_edit_is_refused_with_its_field_and_traffic_keeps_the_last_good_route()
{
    if !can_run() {
        return;
    }
    let mut shop = Shop::start().await;
    shop.kube.server().put(route_to("v1", None));
    shop.start_pods().await;
    let api = shop.kube.server();
    let generation = |api: &weft_kube_standin::ApiServer| {
        api.get_in("MeshRoute", NS, "orders-api")["metadata"]["generation"]
            .as_i64()
            .expect("a generation")
    };
    let good = generation(api);
    condition_for(&shop, good, "True").await;

    // Warm-up: the endpoints' readiness reaches the callers; then a whole batch from v1.
    let client = &shop.pods[4];
    let paths: Vec<String> = (0..5).map(|i| format!("/shop/{i}")).collect();
    let deadline = Instant::now() + LIMIT;
    loop {
        let replies = curl(client, "frontend.shop.svc.cluster.local", &paths).await;
        if replies.iter().all(|(c, b)| version(*c, b) == "v1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the shop never answered from v1 only: {replies:?}\n{}",
            shop.cp_log()
        );
    }

    // The invalid edit, under load: refused, with the field; every request still v1.
    let edited = Instant::now();
    api.put(route_to("v2", Some(BAD_REGEX)));
    let bad = generation(api);
    assert!(bad > good);
    let (mut batches, (c, refused_after)) =
        tokio::join!(load(&shop, edited, Duration::from_secs(4)), async {
            (condition_for(&shop, bad, "False").await, edited.elapsed())
        });
    assert_eq!(c["status"], "False", "{c}");
    assert_eq!(c["reason"], "Invalid", "{c}");
    let message = c["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("spec.match.path.regex: bad regex")
            && message.ends_with(&format!("(generation {good} stays in force)")),
        "{c}"
    );
    batches.extend(load(&shop, Instant::now(), Duration::from_secs(1)).await);
    let during: usize = batches.iter().map(|b| b.versions.len()).sum();
    let wrong: Vec<&String> = batches
        .iter()
        .flat_map(|b| &b.versions)
        .filter(|v| *v != "v1")
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {during} requests failed or left v1 after the invalid edit: {wrong:?}\n{}",
        wrong.len(),
        shop.cp_log()
    );

    // A valid edit is accepted and followed.
    let fixed_at = Instant::now();
    api.put(route_to("v2", None));
    let fixed = generation(api);
    let (batches, accepted_after) =
        tokio::join!(load(&shop, fixed_at, Duration::from_secs(3)), async {
            condition_for(&shop, fixed, "True").await;
            fixed_at.elapsed()
        });
    let after: usize = batches.iter().map(|b| b.versions.len()).sum();
    let failed = batches
        .iter()
        .flat_map(|b| &b.versions)
        .filter(|v| v.is_empty())
        .count();
    assert_eq!(failed, 0, "requests failed after the valid edit");
    let late: Vec<&Batch> = batches
        .iter()
        .filter(|b| b.start.saturating_duration_since(fixed_at) >= Duration::from_secs(1))
        .collect();
    assert!(!late.is_empty(), "no batch started a second after the edit");
    assert!(
        late.iter().all(|b| b.versions.iter().all(|v| v == "v2")),
        "v1 still answered a second after the valid edit"
    );
    eprintln!(
        "invalid route: {during} requests after the invalid edit, all from v1, none failed; \
         refused (condition written) within {refused_after:?}; {after} requests after the \
         valid edit (accepted within {accepted_after:?}), none failed, v2 only from +1 s"
    );
}
