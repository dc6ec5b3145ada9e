//! Gateway API routes as a policy source: `HTTPRoute`s with a Service parent (GAMMA) in the
//! stand-in API server, read by the real `weft-control-plane` binary (`--kubernetes`): the
//! mesh routes they become as `weftctl get routes` shows them (matches, weights, filters'
//! effects), their `status.parents[]` conditions (accepted; not accepted with
//! `UnsupportedValue`, `BackendNotFound`, `RefNotPermitted`, `NoMatchingParent`), a
//! `ReferenceGrant` turning a cross-namespace ref from not permitted to permitted, a weight
//! edit followed, a refused edit keeping the last accepted generation in force; and a cluster
//! without the Gateway API CRDs still syncs. The weight change
//! moving real traffic is in `canary` (`an_httproute_weight_edit_moves_traffic_within_a_second`).

use std::time::Duration;

use serde_json::{json, Value};
use weft_control_plane::operator::client::{self, Connection, Kind, OpsCommand};
use weft_control_plane::policy::kube::source::{KubeOptions, KubeSource};
use weft_control_plane::policy::source::PolicySource;
use weft_kube_standin::{self as standin, kubeconfig};

use super::shared::spawn_control_plane;
use super::source::{meta, shop, wait_until, TD};

/// A Service of `shop` selecting `selector`, with one port.
pub(super) fn selecting(name: &str, selector: Value) -> Value {
    json!({
        "kind": "Service", "apiVersion": "v1",
        "metadata": meta("shop", name, &format!("svc-{name}")),
        "spec": {"selector": selector, "ports": [{"name": "http", "port": 8080}]}
    })
}

/// An HTTPRoute of `shop` with one Service parent and `rules`.
pub(super) fn http_route(name: &str, parent: &str, generation: i64, rules: Value) -> Value {
    let mut m = meta("shop", name, &format!("httproute-{name}"));
    m["generation"] = json!(generation);
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": m,
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": parent, "port": 8080}],
            "rules": rules
        }
    })
}

fn split(v1: i64, v2: i64) -> Value {
    json!([{
        "matches": [{"path": {"type": "PathPrefix", "value": "/api"}, "method": "GET"}],
        "filters": [{"type": "RequestHeaderModifier",
                     "requestHeaderModifier": {"set": [{"name": "x-route", "value": "gamma"}]}}],
        "backendRefs": [{"name": "orders-v1", "port": 8080, "weight": v1},
                        {"name": "orders-v2", "port": 8080, "weight": v2}]
    }])
}

/// (Accepted status, reason, message), (ResolvedRefs status, reason), observedGeneration.
type ParentStatus = ((String, String, String), (String, String), i64);

/// Weft's `Accepted` and `ResolvedRefs` of a stored route's first parent: (status, reason,
/// message) each, and the observed generation.
fn parent_status(route: &Value) -> Option<ParentStatus> {
    let parent = route["status"]["parents"]
        .as_array()?
        .iter()
        .find(|p| p["controllerName"] == "weft.dev/gateway-controller")?;
    let cond = |t: &str| {
        parent["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == t)
            .cloned()
    };
    let (a, r) = (cond("Accepted")?, cond("ResolvedRefs")?);
    let s = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
    Some((
        (s(&a, "status"), s(&a, "reason"), s(&a, "message")),
        (s(&r, "status"), s(&r, "reason")),
        a["observedGeneration"].as_i64().unwrap_or(-1),
    ))
}

#[test]
fn httproutes_become_mesh_routes_with_status_and_follow_edits() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mut objects = shop();
    objects.push(selecting(
        "orders-v1",
        json!({"app": "orders", "version": "v1"}),
    ));
    objects.push(selecting(
        "orders-v2",
        json!({"app": "orders", "version": "v2"}),
    ));
    let mut other = selecting("orders-eu", json!({"app": "orders"}));
    other["metadata"]["namespace"] = json!("eu");
    objects.push(other);
    objects.push(http_route("orders-split", "orders", 1, split(90, 10)));
    objects.push(http_route(
        "orders-query",
        "orders",
        1,
        json!([{"matches": [{"queryParams": [{"name": "beta", "value": "1"}]}]}]),
    ));
    objects.push(http_route(
        "orders-missing",
        "orders",
        1,
        json!([{"matches": [{"path": {"type": "Exact", "value": "/x"}}],
                "backendRefs": [{"name": "orders-v9", "port": 8080}]}]),
    ));
    objects.push(http_route(
        "orders-eu",
        "orders",
        1,
        json!([{"matches": [{"path": {"type": "Exact", "value": "/eu"}}],
                "backendRefs": [{"name": "orders-eu", "namespace": "eu", "port": 8080}]}]),
    ));
    objects.push(http_route("legacy-route", "legacy", 1, json!([{}])));
    // A GRPCRoute of the gRPC service payments: one service's calls, by method path.
    let mut grpc = http_route(
        "payments-grpc",
        "payments",
        1,
        json!([{"matches": [{"method": {"service": "shop.Payments"}}],
                "backendRefs": [{"name": "payments", "port": 8080}]}]),
    );
    grpc["kind"] = json!("GRPCRoute");
    objects.push(grpc);
    let api = rt.block_on(standin::ApiServer::start(objects));
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = kubeconfig(tmp.path(), &api);
    let cp = spawn_control_plane(tmp.path(), &config, "cp", TD, &[] as &[&str]);
    let (admin, state) = (cp.admin, cp.state.clone());
    let cp_log = cp.log_reader();
    let routes = || {
        let conn = Connection {
            server: Some(format!("http://{admin}")),
            token_file: Some(state.join("admin.token")),
        };
        let mut out = Vec::new();
        let r = rt.block_on(client::run(
            &conn,
            OpsCommand::Get { kind: Kind::Routes },
            &mut out,
        ));
        r.ok().map(|()| String::from_utf8_lossy(&out).into_owned())
    };

    // The split is a mesh route of orders.shop: GET /api*, 90/10 between the subsets.
    let mut table = String::new();
    wait_until(
        Duration::from_secs(30),
        "the HTTPRoute as a mesh route",
        || {
            table = routes().unwrap_or_default();
            table.contains("orders-split-r0-m0")
        },
    );
    let line = table
        .lines()
        .find(|l| l.contains("orders-split-r0-m0"))
        .expect("the route's line");
    for want in [
        "orders.shop",
        "path prefix /api",
        "method GET",
        "version=v1:90",
        "version=v2:10",
    ] {
        assert!(line.contains(want), "{want:?} not in {line:?}\n{table}");
    }
    let grpc_line = table
        .lines()
        .find(|l| l.contains("payments-grpc-r0-m0"))
        .unwrap_or_else(|| panic!("the GRPCRoute's route:\n{table}"));
    assert!(
        grpc_line.contains("path prefix /shop.Payments"),
        "{grpc_line}"
    );
    for refused in [
        "orders-query",
        "orders-missing",
        "orders-eu",
        "legacy-route",
    ] {
        assert!(!table.contains(refused), "{refused} is in force:\n{table}");
    }

    // Status per parent, with reasons.
    let status = |name: &str| parent_status(&api.get_in("HTTPRoute", "shop", name));
    wait_until(Duration::from_secs(20), "route statuses", || {
        [
            "orders-split",
            "orders-query",
            "orders-missing",
            "orders-eu",
            "legacy-route",
        ]
        .iter()
        .all(|n| status(n).is_some())
            && api
                .try_get_in("GRPCRoute", "shop", "payments-grpc")
                .and_then(|r| parent_status(&r))
                .is_some()
    });
    let g = api
        .try_get_in("GRPCRoute", "shop", "payments-grpc")
        .and_then(|r| parent_status(&r))
        .expect("the GRPCRoute's status");
    assert_eq!(g.0 .0, "True", "{g:?}");
    let ok = status("orders-split").expect("status");
    assert_eq!(
        (ok.0 .0.as_str(), ok.0 .1.as_str()),
        ("True", "Accepted"),
        "{ok:?}"
    );
    assert_eq!(ok.1, ("True".into(), "ResolvedRefs".into()));
    assert_eq!(ok.2, 1, "observedGeneration");
    let q = status("orders-query").expect("status");
    assert_eq!(
        (q.0 .0.as_str(), q.0 .1.as_str()),
        ("False", "UnsupportedValue"),
        "{q:?}"
    );
    assert!(q.0 .2.contains("queryParams"), "{q:?}");
    let m = status("orders-missing").expect("status");
    assert_eq!(m.1, ("False".into(), "BackendNotFound".into()), "{m:?}");
    assert_eq!(m.0 .0, "False");
    let eu = status("orders-eu").expect("status");
    assert_eq!(eu.1, ("False".into(), "RefNotPermitted".into()), "{eu:?}");
    let legacy = status("legacy-route").expect("status");
    assert_eq!(
        (legacy.0 .0.as_str(), legacy.0 .1.as_str()),
        ("False", "NoMatchingParent"),
        "{legacy:?}"
    );
    // Another controller's entry (a Gateway parent's) is kept through Weft's writes.
    let stored = api.get_in("HTTPRoute", "shop", "orders-split");
    let mut parents = stored["status"]["parents"]
        .as_array()
        .cloned()
        .expect("parents");
    assert_eq!(parents.len(), 1, "{stored}");
    let foreign = json!({
        "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "edge"},
        "controllerName": "example.com/other",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                        "lastTransitionTime": "2026-12-01T00:00:00Z"}]
    });
    parents.insert(0, foreign.clone());
    api.update_status_in(
        "HTTPRoute",
        "shop",
        "orders-split",
        json!({"parents": parents}),
    )
    .expect("status written");

    // A ReferenceGrant in `eu` permits the ref: no longer RefNotPermitted; the mesh still
    // refuses a backend outside the parent's endpoints, saying so.
    api.put(json!({
        "apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
        "metadata": {"name": "shop-routes", "namespace": "eu"},
        "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "shop"}],
                 "to": [{"group": "", "kind": "Service"}]}
    }));
    wait_until(
        Duration::from_secs(20),
        "the grant taken into account",
        || status("orders-eu").is_some_and(|s| s.1 .0 == "True"),
    );
    let eu = status("orders-eu").expect("status");
    assert_eq!(eu.0 .1, "UnsupportedValue", "{eu:?}");
    assert!(eu.0 .2.contains("another namespace"), "{eu:?}");

    // Argo Rollouts' step: the weights move; the mesh route follows, generation 2 observed.
    api.put(http_route("orders-split", "orders", 2, split(20, 80)));
    wait_until(Duration::from_secs(20), "the new weights", || {
        routes().is_some_and(|t| t.contains("version=v1:20") && t.contains("version=v2:80"))
    });
    wait_until(Duration::from_secs(20), "generation 2 observed", || {
        status("orders-split").is_some_and(|s| s.2 == 2)
    });
    let stored = api.get_in("HTTPRoute", "shop", "orders-split");
    assert_eq!(stored["status"]["parents"][0], foreign, "{stored}");
    // The query route fixed: accepted, in force.
    api.put(http_route(
        "orders-query",
        "orders",
        2,
        json!([{"matches": [{"headers": [{"name": "x-beta", "value": "1"}]}],
                "backendRefs": [{"name": "orders-v2", "port": 8080}]}]),
    ));
    wait_until(Duration::from_secs(20), "the fixed route", || {
        routes().is_some_and(|t| t.contains("orders-query-r0-m0"))
            && status("orders-query").is_some_and(|s| s.0 .0 == "True")
    });
    // Each verdict is written once (its own write, seen back, writes nothing): the first, and
    // generation 2's.
    let writes = api
        .patches()
        .iter()
        .filter(|(k, _)| k == "httproutes/shop/orders-split")
        .count();
    assert_eq!(writes, 2, "{:?}", api.patches());

    // A refused edit (generation 3: a filter mesh routes do not take) keeps generation 2's
    // split in force, not the service's default; the status says why and what serves.
    let mut broken = split(50, 50);
    broken[0]["filters"] = json!([{"type": "RequestMirror",
        "requestMirror": {"backendRef": {"name": "orders-v2", "port": 8080}}}]);
    api.put(http_route("orders-split", "orders", 3, broken));
    wait_until(Duration::from_secs(20), "generation 3 refused", || {
        status("orders-split").is_some_and(|s| s.2 == 3)
    });
    let s = status("orders-split").expect("status");
    assert_eq!(
        (s.0 .0.as_str(), s.0 .1.as_str()),
        ("False", "UnsupportedValue"),
        "{s:?}"
    );
    assert!(
        s.0 .2.contains("RequestMirror") && s.0 .2.contains("generation 2 stays in force"),
        "{s:?}"
    );
    let table = routes().expect("routes");
    let line = (table.lines())
        .find(|l| l.contains("orders-split-r0-m0"))
        .unwrap_or_else(|| panic!("the last good split left force:\n{table}"));
    assert!(
        line.contains("version=v1:20") && line.contains("version=v2:80"),
        "{line}"
    );
    // Mended (generation 4): the new split applies and is accepted.
    api.put(http_route("orders-split", "orders", 4, split(50, 50)));
    wait_until(Duration::from_secs(20), "generation 4 in force", || {
        routes().is_some_and(|t| t.contains("version=v1:50") && t.contains("version=v2:50"))
            && status("orders-split").is_some_and(|s| s.2 == 4 && s.0 .0 == "True")
    });
    assert!(!cp_log().contains("panicked"), "{}", cp_log());
}

/// A cluster without the Gateway API CRDs: the source syncs without them and serves the rest;
/// one without GRPCRoute alone reads its HTTPRoutes.
#[test]
fn a_cluster_without_the_gateway_api_still_syncs() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let kinds: Vec<_> = standin::kinds::defaults()
        .into_iter()
        .filter(|k| k.group != standin::kinds::GATEWAY_GROUP)
        .collect();
    let api = rt.block_on(standin::ApiServer::start_with(kinds, shop()));
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut options = KubeOptions::new(TD);
    options.kubeconfig = Some(kubeconfig(tmp.path(), &api));
    options.sync_timeout = Duration::from_secs(20);
    let source = KubeSource::connect(options).expect("syncs without the Gateway API");
    let policy = source.load().expect("valid");
    assert!(policy.services().iter().any(|s| s.name == "orders.shop"));
    assert!(source.objects().http_routes.is_empty());
    drop(source);

    // Gateway API without GRPCRoute (older releases' standard channel): HTTPRoutes are read.
    let kinds: Vec<_> = standin::kinds::defaults()
        .into_iter()
        .filter(|k| k.kind != "GRPCRoute")
        .collect();
    let mut objects = shop();
    objects.push(http_route("orders-all", "orders", 1, json!([{}])));
    let api = rt.block_on(standin::ApiServer::start_with(kinds, objects));
    let mut options = KubeOptions::new(TD);
    options.kubeconfig = Some(kubeconfig(tmp.path(), &api));
    options.sync_timeout = Duration::from_secs(20);
    let source = KubeSource::connect(options).expect("syncs without GRPCRoutes");
    let policy = source.load().expect("valid");
    let names: Vec<&str> = policy.routes().iter().map(|r| r.name.as_str()).collect();
    // The shop's MeshRoute first, then the service's GAMMA routes.
    assert_eq!(names, ["orders-canary", "orders-all-r0-m0"]);
}
