//! Tenancy of the policy resources: a resource governs only its own namespace's services (a
//! takeover from namespace `aaa`, whose name sorts before `shop`, is refused with a condition
//! saying why), and of two resources claiming the same thing the older one holds it whatever
//! their names; through the mapping, and through the real `KubeSource` against the stand-in
//! API server (the condition written back to the resource's status).

use std::time::Duration;

use serde_json::{json, Value};
use weft_control_plane::policy::kube::mapping::{self, Kind, Mapped, CONFLICTED, CROSS_NAMESPACE};
use weft_control_plane::policy::kube::source::{KubeOptions, KubeSource};
use weft_control_plane::policy::source::PolicySource;
use weft_policy::wire::MeshFile;

use super::source::{created, objects, resource, shop, wait_until, TD};
use weft_kube_standin::{self as standin, kubeconfig};

/// `value` moved to namespace `ns`.
fn in_namespace(mut value: Value, ns: &str) -> Value {
    value["metadata"]["namespace"] = json!(ns);
    value
}

/// The takeover attempt: from namespace `aaa` (first by name), an `allow` for shop's orders
/// (which `shop` guards with `default: deny`), a traffic policy and a catch-all route to v2.
fn takeover() -> Vec<Value> {
    vec![
        in_namespace(
            resource(
                "AuthorizationPolicy",
                "takeover",
                1,
                json!({"service": "orders.shop", "default": "allow"}),
            ),
            "aaa",
        ),
        in_namespace(
            resource(
                "TrafficPolicy",
                "takeover",
                1,
                json!({"service": "orders.shop", "load_balancer": "random"}),
            ),
            "aaa",
        ),
        in_namespace(
            resource(
                "MeshRoute",
                "takeover",
                1,
                json!({"service": "orders.shop", "backends": [{"subset": {"version": "v2"}}]}),
            ),
            "aaa",
        ),
    ]
}

fn rejection(mapped: &Mapped, kind: Kind, ns: &str, name: &str) -> Option<(String, String)> {
    let v = mapped
        .verdicts
        .iter()
        .find(|v| v.key.kind == kind && v.key.namespace == ns && v.key.name == name)
        .unwrap_or_else(|| panic!("no verdict for {kind} {ns}/{name}: {:?}", mapped.verdicts));
    v.result
        .clone()
        .err()
        .map(|r| (r.reason.to_owned(), r.message))
}

/// Shop's own settings for orders are the ones in force.
fn assert_shop_holds_orders(mesh: &MeshFile) {
    let authz: Vec<_> = mesh
        .authorization
        .iter()
        .filter(|a| a.service == "orders.shop")
        .collect();
    assert_eq!(authz.len(), 1, "{authz:?}");
    assert_eq!(authz[0].default.as_deref(), Some("deny"));
    let orders = mesh
        .services
        .iter()
        .find(|s| s.name == "orders.shop")
        .expect("orders");
    assert_eq!(orders.load_balancer.as_deref(), Some("round_robin"));
    let routes: Vec<&str> = mesh.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(routes, ["orders-canary"]);
}

#[test]
fn a_resource_in_another_namespace_cannot_take_over_a_service() {
    let mut values = shop();
    values.extend(takeover());
    let mapped = mapping::map(&objects(&values), TD);
    for kind in [
        Kind::AuthorizationPolicy,
        Kind::TrafficPolicy,
        Kind::MeshRoute,
    ] {
        let (why, msg) = rejection(&mapped, kind, "aaa", "takeover").expect("refused");
        assert_eq!(why, CROSS_NAMESPACE, "{kind}: {msg}");
        assert!(
            msg.contains("\"orders.shop\" is not a service of namespace aaa"),
            "{msg}"
        );
    }
    assert!(rejection(&mapped, Kind::AuthorizationPolicy, "shop", "orders").is_none());
    assert!(rejection(&mapped, Kind::TrafficPolicy, "shop", "orders").is_none());
    assert_shop_holds_orders(&mapped.mesh);
}

#[test]
fn callers_of_any_namespace_may_be_named_in_from() {
    let mut values = shop();
    values.push(resource(
        "MeshRoute",
        "orders-from-elsewhere",
        1,
        json!({"service": "orders", "from": ["web.aaa"], "backends": [{"subset": {"version": "v1"}}]}),
    ));
    let mapped = mapping::map(&objects(&values), TD);
    let r = rejection(&mapped, Kind::MeshRoute, "shop", "orders-from-elsewhere");
    assert!(
        r.as_ref().is_none_or(|(why, _)| why != CROSS_NAMESPACE),
        "{r:?}"
    );
}

#[test]
fn the_older_resource_holds_a_service_whatever_the_names() {
    let mut values = shop();
    // Newer, in the same namespace, named to sort first: refused, shop/orders stays.
    values.push(created(
        resource(
            "AuthorizationPolicy",
            "a-open",
            1,
            json!({"service": "orders", "default": "allow"}),
        ),
        "2026-11-20T10:00:00Z",
    ));
    values.push(created(
        resource(
            "TrafficPolicy",
            "a-random",
            1,
            json!({"service": "orders", "load_balancer": "random"}),
        ),
        "2026-11-20T10:00:00Z",
    ));
    // A route taking the canary's name for the same service.
    values.push(created(
        resource(
            "MeshRoute",
            "a-dup",
            1,
            json!({"service": "orders", "name": "orders-canary", "match": {"path": {"prefix": "/x"}}}),
        ),
        "2026-11-20T10:00:00Z",
    ));
    let mapped = mapping::map(&objects(&values), TD);
    for (kind, name, holder) in [
        (
            Kind::AuthorizationPolicy,
            "a-open",
            "AuthorizationPolicy shop/orders ",
        ),
        (
            Kind::TrafficPolicy,
            "a-random",
            "TrafficPolicy shop/orders ",
        ),
        (Kind::MeshRoute, "a-dup", "MeshRoute shop/orders-canary "),
    ] {
        let (why, msg) = rejection(&mapped, kind, "shop", name).expect("refused");
        assert_eq!(why, CONFLICTED, "{msg}");
        assert!(msg.contains(holder), "{msg}");
        assert!(msg.contains("the oldest applies"), "{msg}");
    }
    assert_shop_holds_orders(&mapped.mesh);

    // Created in the same second: neither applies (no name decides).
    let mut values = shop();
    values.push(resource(
        "AuthorizationPolicy",
        "a-open",
        1,
        json!({"service": "orders", "default": "allow"}),
    ));
    let mapped = mapping::map(&objects(&values), TD);
    for name in ["a-open", "orders"] {
        let (why, msg) =
            rejection(&mapped, Kind::AuthorizationPolicy, "shop", name).expect("refused");
        assert_eq!(why, CONFLICTED, "{msg}");
        assert!(msg.contains("same time"), "{msg}");
    }
    assert!(mapped.mesh.authorization.is_empty());
}

#[test]
fn kube_source_refuses_the_takeover_and_says_why_in_the_status() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mut values = shop();
    values.extend(takeover());
    let api = rt.block_on(standin::ApiServer::start(values));
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut options = KubeOptions::new(TD);
    options.kubeconfig = Some(kubeconfig(tmp.path(), &api));
    options.sync_timeout = Duration::from_secs(20);
    options.debounce = Duration::from_millis(50);
    let source = KubeSource::connect(options).expect("connects and syncs");

    let policy = source.load().expect("valid");
    let mesh = MeshFile {
        services: policy.services().to_vec(),
        routes: policy.routes().to_vec(),
        authorization: policy.authorization().to_vec(),
    };
    assert_shop_holds_orders(&mesh);

    let condition =
        |kind: &str| api.get_in(kind, "aaa", "takeover")["status"]["conditions"][0].clone();
    wait_until(Duration::from_secs(10), "the takeover's conditions", || {
        ["AuthorizationPolicy", "TrafficPolicy", "MeshRoute"]
            .iter()
            .all(|k| condition(k)["type"] == "Accepted")
    });
    for kind in ["AuthorizationPolicy", "TrafficPolicy", "MeshRoute"] {
        let c = condition(kind);
        assert_eq!(c["status"], "False", "{kind}: {c}");
        assert_eq!(c["reason"], CROSS_NAMESPACE, "{kind}: {c}");
        let message = c["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("not a service of namespace aaa"),
            "{message}"
        );
    }
    wait_until(Duration::from_secs(10), "shop's condition", || {
        api.get("AuthorizationPolicy", "orders")["status"]["conditions"][0]["status"] == "True"
    });
    drop(source);
}
