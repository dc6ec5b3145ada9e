//! The Kubernetes policy source: the mapping from objects (JSON as the API server serves it)
//! to the mesh policy, the generated CRDs against the checked-in ones, and the real
//! `KubeSource` driven against a stand-in API server (HTTPS, list and watch, watch restarts,
//! `410 Gone`, status patches).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::DynamicObject;
use serde_json::{json, Value};
use weft_control_plane::policy::kube::mapping::{self, Kind, Objects};
use weft_control_plane::policy::kube::source::{KubeOptions, KubeSource};
use weft_control_plane::policy::mesh::MeshPolicy;
use weft_control_plane::policy::source::PolicySource;
use weft_kube_standin::{self as standin, kubeconfig};
use weft_testkit::process::output_within;
use weft_testkit::wait;

pub(crate) const TD: &str = "cluster.test";

// ---------------------------------------------------------------------------------------------
// Fixtures: objects as `kubectl get -o json` shows them (trimmed of managedFields).

pub(crate) fn meta(ns: &str, name: &str, uid: &str) -> Value {
    json!({
        "name": name,
        "namespace": ns,
        "uid": uid,
        "resourceVersion": "1000",
        "creationTimestamp": "2026-11-20T09:00:00Z"
    })
}

/// A Service's ClusterIP in these tests: one per name, as a cluster allocates them.
pub(crate) fn cluster_ip(name: &str) -> String {
    let n = name
        .bytes()
        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    format!("10.96.{}.{}", (n >> 8) % 250 + 1, n % 250 + 1)
}

pub(crate) fn service(name: &str, app_protocol: Option<&str>) -> Value {
    let mut port = json!({"name": "http", "protocol": "TCP", "port": 8080, "targetPort": 8080});
    if let Some(p) = app_protocol {
        port["appProtocol"] = json!(p);
    }
    let mut m = meta("shop", name, &format!("svc-{name}"));
    m["labels"] = json!({"app": name});
    json!({
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": m,
        "spec": {
            "ports": [port],
            "selector": {"app": name},
            "clusterIP": cluster_ip(name),
            "clusterIPs": [cluster_ip(name)],
            "type": "ClusterIP",
            "sessionAffinity": "None",
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "internalTrafficPolicy": "Cluster"
        },
        "status": {"loadBalancer": {}}
    })
}

pub(crate) fn pod(
    name: &str,
    app: &str,
    version: &str,
    account: &str,
    ip: &str,
    sidecar: bool,
) -> Value {
    let mut m = meta("shop", name, &format!("pod-{name}"));
    m["labels"] = json!({"app": app, "version": version, "pod-template-hash": "7d9f8c6b5"});
    m["annotations"] = json!({"weft.dev/service": format!("{app}.shop")});
    let init: Vec<Value> = if sidecar {
        vec![json!({
            "name": "weft-proxy",
            "image": "weft-proxy:0.1.0",
            "restartPolicy": "Always",
            "ports": [{"name": "weft-inbound", "containerPort": 15006, "protocol": "TCP"}],
            "startupProbe": {"httpGet": {"path": "/ready", "port": 15000, "scheme": "HTTP"}},
            "resources": {},
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File",
            "imagePullPolicy": "IfNotPresent"
        })]
    } else {
        Vec::new()
    };
    json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": m,
        "spec": {
            "initContainers": init,
            "containers": [{
                "name": app,
                "image": format!("shop/{app}:1.0"),
                "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                "resources": {},
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent"
            }],
            "restartPolicy": "Always",
            "serviceAccountName": account,
            "serviceAccount": account,
            "nodeName": "node-1",
            "schedulerName": "default-scheduler",
            "dnsPolicy": "ClusterFirst"
        },
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "hostIP": "192.168.1.10",
            "qosClass": "BestEffort"
        }
    })
}

/// `endpoints`: (ip, pod name, ready).
pub(crate) fn slice(
    name: &str,
    service: &str,
    app_protocol: Option<&str>,
    endpoints: &[(&str, &str, bool)],
) -> Value {
    let mut m = meta("shop", name, &format!("eps-{name}"));
    m["labels"] = json!({
        "kubernetes.io/service-name": service,
        "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
        "app": service
    });
    m["generateName"] = json!(format!("{service}-"));
    m["ownerReferences"] = json!([{
        "apiVersion": "v1", "kind": "Service", "name": service, "uid": format!("svc-{service}"),
        "controller": true, "blockOwnerDeletion": true
    }]);
    let mut port = json!({"name": "http", "protocol": "TCP", "port": 8080});
    if let Some(p) = app_protocol {
        port["appProtocol"] = json!(p);
    }
    json!({
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": m,
        "addressType": "IPv4",
        "endpoints": endpoints.iter().map(|(ip, pod, ready)| json!({
            "addresses": [ip],
            "conditions": {"ready": ready, "serving": ready, "terminating": false},
            "targetRef": {"kind": "Pod", "namespace": "shop", "name": pod, "uid": format!("pod-{pod}")},
            "nodeName": "node-1"
        })).collect::<Vec<_>>(),
        "ports": [port]
    })
}

/// `value` with `metadata.creationTimestamp` set to `at`.
pub(crate) fn created(mut value: Value, at: &str) -> Value {
    value["metadata"]["creationTimestamp"] = json!(at);
    value
}

pub(crate) fn resource(kind: &str, name: &str, generation: i64, spec: Value) -> Value {
    let mut m = meta("shop", name, &format!("{kind}-{name}"));
    m["generation"] = json!(generation);
    json!({"apiVersion": "weft.dev/v1alpha1", "kind": kind, "metadata": m, "spec": spec})
}

fn canary_route() -> Value {
    resource(
        "MeshRoute",
        "orders-canary",
        1,
        json!({
            "service": "orders",
            "from": ["frontend"],
            "match": {"path": {"prefix": "/api/orders"}},
            "backends": [
                {"subset": {"version": "v1"}, "weight": 90},
                {"subset": {"version": "v2"}, "weight": 10}
            ],
            "timeout": "2s",
            "retry": {"attempts": 3, "on": ["connect-failure", "gateway-error"], "per_try_timeout": "500ms"}
        }),
    )
}

fn bad_route() -> Value {
    resource(
        "MeshRoute",
        "orders-bad",
        3,
        json!({"service": "orders", "match": {"path": {"regex": "/api/(("}}}),
    )
}

fn orders_breaker() -> Value {
    resource(
        "TrafficPolicy",
        "orders",
        1,
        json!({
            "service": "orders",
            "load_balancer": "round_robin",
            "outlier_detection": {"consecutive_failures": 5, "base_ejection_time": "10s", "failures": "5xx"},
            "retry_budget": {"ratio": 0.2, "min_per_second": 10}
        }),
    )
}

pub(crate) fn orders_authz() -> Value {
    resource(
        "AuthorizationPolicy",
        "orders",
        1,
        json!({
            "service": "orders",
            "default": "deny",
            "rules": [{"name": "frontend", "from": [format!("spiffe://{TD}/ns/shop/sa/frontend")], "paths": ["/api/orders"]}]
        }),
    )
}

/// The shop: frontend calls orders (v1 and v2 pods) and payments (gRPC); legacy runs no
/// sidecar.
pub(crate) fn shop() -> Vec<Value> {
    vec![
        service("frontend", Some("http")),
        service("orders", Some("http")),
        service("payments", Some("kubernetes.io/h2c")),
        service("legacy", None),
        pod(
            "frontend-6d4b7c9f8-abcde",
            "frontend",
            "v1",
            "frontend",
            "10.244.1.10",
            true,
        ),
        pod(
            "orders-v1-5f7d8b9c4-k2x9z",
            "orders",
            "v1",
            "orders",
            "10.244.1.20",
            true,
        ),
        pod(
            "orders-v2-7c9d6f5b8-p4q7r",
            "orders",
            "v2",
            "orders",
            "10.244.2.21",
            true,
        ),
        pod(
            "payments-84f9d7c6b-m3n5v",
            "payments",
            "v1",
            "payments",
            "10.244.2.30",
            true,
        ),
        pod(
            "legacy-5b6c7d8e9-zz9yy",
            "legacy",
            "v1",
            "default",
            "10.244.1.40",
            false,
        ),
        slice(
            "frontend-8xk2p",
            "frontend",
            Some("http"),
            &[("10.244.1.10", "frontend-6d4b7c9f8-abcde", true)],
        ),
        slice(
            "orders-q7w2n",
            "orders",
            Some("http"),
            &[
                ("10.244.1.20", "orders-v1-5f7d8b9c4-k2x9z", true),
                ("10.244.2.21", "orders-v2-7c9d6f5b8-p4q7r", true),
            ],
        ),
        slice(
            "payments-m5t8c",
            "payments",
            Some("kubernetes.io/h2c"),
            &[("10.244.2.30", "payments-84f9d7c6b-m3n5v", true)],
        ),
        slice(
            "legacy-r2d2c",
            "legacy",
            None,
            &[("10.244.1.40", "legacy-5b6c7d8e9-zz9yy", true)],
        ),
        canary_route(),
        bad_route(),
        orders_breaker(),
        orders_authz(),
    ]
}

/// Typed objects from JSON values, by `kind`.
pub(crate) fn objects(values: &[Value]) -> Objects {
    fn de<T: serde::de::DeserializeOwned>(v: &Value) -> T {
        serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {v}"))
    }
    let mut o = Objects::default();
    for v in values {
        match v["kind"].as_str() {
            Some("Service") => o.services.push(de::<Service>(v)),
            Some("Pod") => o.pods.push(de::<Pod>(v)),
            Some("EndpointSlice") => o.endpoint_slices.push(de::<EndpointSlice>(v)),
            Some("MeshRoute") => o.routes.push(de::<DynamicObject>(v)),
            Some("TrafficPolicy") => o.traffic_policies.push(de::<DynamicObject>(v)),
            Some("AuthorizationPolicy") => o.authorization.push(de::<DynamicObject>(v)),
            other => panic!("unknown kind {other:?}"),
        }
    }
    o
}

fn endpoint_addresses(mesh: &weft_policy::wire::MeshFile, service: &str) -> Vec<String> {
    mesh.services
        .iter()
        .find(|s| s.name == service)
        .map(|s| s.endpoints.iter().map(|e| e.address.clone()).collect())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// (a) The mapping.

#[test]
fn shop_objects_map_to_the_mesh_policy() {
    let mapped = mapping::map(&objects(&shop()), TD);
    let mesh = &mapped.mesh;
    let names: Vec<&str> = mesh.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["frontend.shop", "orders.shop", "payments.shop"],
        "legacy runs no sidecar"
    );

    let orders = &mesh.services[1];
    assert_eq!(
        orders.hosts,
        [
            "orders.shop.svc",
            "orders.shop.svc.cluster.local",
            &cluster_ip("orders")
        ],
        "the names, and the ClusterIP a captured connection's original destination names"
    );
    assert_eq!(orders.identity, format!("spiffe://{TD}/ns/shop/sa/orders"));
    assert_eq!(orders.protocol.as_deref(), Some("http"));
    assert_eq!(
        endpoint_addresses(mesh, "orders.shop"),
        ["10.244.1.20:15006", "10.244.2.21:15006"]
    );
    let labels = &orders.endpoints[1].labels;
    assert_eq!(labels.get("version").map(String::as_str), Some("v2"));
    assert_eq!(labels.get("app").map(String::as_str), Some("orders"));
    assert!(!labels.contains_key("pod-template-hash"), "{labels:?}");
    // The TrafficPolicy merged into its service.
    assert_eq!(orders.load_balancer.as_deref(), Some("round_robin"));
    let od = orders
        .outlier_detection
        .as_ref()
        .expect("outlier detection");
    assert_eq!(od.consecutive_failures, Some(5));
    assert_eq!(
        mesh.services[2].protocol.as_deref(),
        Some("grpc"),
        "kubernetes.io/h2c is gRPC"
    );

    // The route, its service and callers qualified with the namespace.
    assert_eq!(mesh.routes.len(), 1, "{:?}", mesh.routes);
    let r = &mesh.routes[0];
    assert_eq!(
        (r.name.as_str(), r.service.as_str()),
        ("orders-canary", "orders.shop")
    );
    assert_eq!(r.from.as_deref(), Some(&["frontend.shop".to_owned()][..]));
    assert_eq!(mesh.authorization.len(), 1);
    assert_eq!(mesh.authorization[0].service, "orders.shop");

    // The bad route alone is left out, named, with the field and the reason.
    let rejected: Vec<String> = mapped.rejected().map(|v| v.to_string()).collect();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert!(
        rejected[0].starts_with("MeshRoute shop/orders-bad: spec.match.path.regex: bad regex"),
        "{}",
        rejected[0]
    );
    let bad = mapped
        .verdicts
        .iter()
        .find(|v| v.key.name == "orders-bad")
        .expect("a verdict");
    let c = bad.condition(None, "2026-11-21T10:00:00Z");
    assert_eq!(
        (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
        ("Accepted", "False", "Invalid")
    );
    assert_eq!(c.observed_generation, Some(3));
    let good = mapped
        .verdicts
        .iter()
        .find(|v| v.key.kind == Kind::MeshRoute && v.key.name == "orders-canary")
        .expect("a verdict");
    let c = good.condition(None, "2026-11-21T10:00:00Z");
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Accepted"));
    // An unchanged status keeps its transition time.
    let again = good.condition(Some(&c), "2026-11-21T11:00:00Z");
    assert_eq!(again.last_transition_time, "2026-11-21T10:00:00Z");

    // The same domain model DirSource gives: snapshots per caller.
    let policy = MeshPolicy::from_mesh("kubernetes.yaml", mapped.mesh.clone()).expect("valid");
    let snap = policy.snapshot_for("frontend.shop");
    assert_eq!(snap.routes.len(), 1);
    assert!(
        policy.snapshot_for("payments.shop").routes.is_empty(),
        "the route is for frontend only"
    );
    assert!(policy.snapshot_for("orders.shop").authorization.is_some());
}

#[test]
fn endpoints_follow_readiness_and_deletions() {
    let mut values = shop();
    // v2 turns not ready: its endpoint leaves, the canary route stays (its subset may be
    // empty for a while on Kubernetes).
    let i = values
        .iter()
        .position(|v| v["metadata"]["name"] == "orders-q7w2n")
        .expect("slice");
    values[i]["endpoints"][1]["conditions"] =
        json!({"ready": false, "serving": false, "terminating": true});
    let mapped = mapping::map(&objects(&values), TD);
    assert_eq!(
        endpoint_addresses(&mapped.mesh, "orders.shop"),
        ["10.244.1.20:15006"]
    );
    assert_eq!(mapped.mesh.routes.len(), 1, "{:?}", mapped.verdicts);

    // A missing `ready` means ready (the API's own rule).
    values[i]["endpoints"][1]["conditions"] = json!({});
    let mapped = mapping::map(&objects(&values), TD);
    assert_eq!(endpoint_addresses(&mapped.mesh, "orders.shop").len(), 2);

    // The route deleted: gone, and its verdict too.
    values.retain(|v| v["metadata"]["name"] != "orders-canary");
    let mapped = mapping::map(&objects(&values), TD);
    assert!(mapped.mesh.routes.is_empty());
    assert!(mapped
        .verdicts
        .iter()
        .all(|v| v.key.name != "orders-canary"));

    // Payments' pod and slice deleted: no longer a mesh service.
    let gone = ["payments-m5t8c", "payments-84f9d7c6b-m3n5v"];
    values.retain(|v| !gone.iter().any(|g| v["metadata"]["name"] == *g));
    let mapped = mapping::map(&objects(&values), TD);
    assert!(mapped
        .mesh
        .services
        .iter()
        .all(|s| s.name != "payments.shop"));
}

#[test]
fn invalid_and_conflicting_resources_are_left_out_one_by_one() {
    let mut values = shop();
    // A second TrafficPolicy for orders: a conflict; one for an unknown service; an invalid one.
    values.push(created(
        resource(
            "TrafficPolicy",
            "orders-again",
            1,
            json!({"service": "orders", "load_balancer": "random"}),
        ),
        "2026-11-20T09:05:00Z",
    ));
    values.push(resource(
        "TrafficPolicy",
        "nobody",
        1,
        json!({"service": "nobody"}),
    ));
    values.push(resource(
        "TrafficPolicy",
        "payments",
        2,
        json!({"service": "payments", "retry_budget": {"window": "soon"}}),
    ));
    // A route unreachable behind an earlier catch-all for the same callers; a route for
    // another namespace's service named in full.
    values.push(resource(
        "MeshRoute",
        "a-orders-all",
        1,
        json!({"service": "orders"}),
    ));
    values.push(resource(
        "MeshRoute",
        "payments-cross",
        1,
        json!({"service": "payments.shop", "name": "pay"}),
    ));
    // A spec that does not parse (a field of a newer CRD, a wrong type): left out alone.
    values.push(resource(
        "MeshRoute",
        "orders-typo",
        1,
        json!({"service": "orders", "colour": "blue"}),
    ));
    values.push(resource(
        "AuthorizationPolicy",
        "payments",
        1,
        json!({"service": "payments", "rules": "everyone"}),
    ));
    // A second authorization block for orders.
    values.push(created(
        resource(
            "AuthorizationPolicy",
            "orders-more",
            1,
            json!({"service": "orders", "default": "allow"}),
        ),
        "2026-11-20T09:05:00Z",
    ));
    let mapped = mapping::map(&objects(&values), TD);
    let verdict = |kind: Kind, name: &str| {
        mapped
            .verdicts
            .iter()
            .find(|v| v.key.kind == kind && v.key.name == name)
            .unwrap_or_else(|| panic!("no verdict for {name}: {:?}", mapped.verdicts))
            .clone()
    };
    let reason = |kind, name| {
        verdict(kind, name)
            .result
            .err()
            .map(|r| (r.reason, r.message))
    };
    let (why, msg) = reason(Kind::TrafficPolicy, "orders-again").expect("conflict");
    assert_eq!(why, "Conflicted");
    assert!(msg.contains("TrafficPolicy shop/orders "), "{msg}");
    assert_eq!(
        reason(Kind::TrafficPolicy, "nobody").expect("not found").0,
        "ServiceNotFound"
    );
    let (why, msg) = reason(Kind::TrafficPolicy, "payments").expect("invalid");
    assert_eq!(why, "Invalid");
    assert!(
        msg.starts_with("spec.retry_budget.window: bad duration"),
        "{msg}"
    );
    assert!(verdict(Kind::TrafficPolicy, "orders").result.is_ok());
    // `a-orders-all` comes first (name order) and catches everything: the canary after it
    // can never match for frontend and is the one left out.
    let (_, msg) = reason(Kind::MeshRoute, "orders-canary").expect("shadowed");
    assert!(msg.contains("spec"), "{msg}");
    assert!(verdict(Kind::MeshRoute, "a-orders-all").result.is_ok());
    assert!(verdict(Kind::MeshRoute, "payments-cross").result.is_ok());
    assert!(reason(Kind::AuthorizationPolicy, "orders-more").is_some());
    let (why, msg) = reason(Kind::MeshRoute, "orders-typo").expect("unreadable");
    assert_eq!(why, "Invalid");
    assert!(msg.starts_with("spec: unknown field `colour`"), "{msg}");
    let (_, msg) = reason(Kind::AuthorizationPolicy, "payments").expect("unreadable");
    assert!(msg.starts_with("spec: invalid type"), "{msg}");
    assert!(verdict(Kind::AuthorizationPolicy, "orders").result.is_ok());
    // What stays is valid as a whole and in force.
    let routes: Vec<&str> = mapped.mesh.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(routes, ["a-orders-all", "pay"]);
    MeshPolicy::from_mesh("kubernetes.yaml", mapped.mesh).expect("valid");
}

#[test]
fn an_empty_route_name_in_a_policy_file_is_an_error_naming_the_field() {
    let text = "services:\n  - name: orders\n    identity: spiffe://weft.local/ns/default/sa/orders\nroutes:\n  - service: orders\n";
    let err = MeshPolicy::from_texts(&[("p.yaml".into(), text.to_owned())]).expect_err("no name");
    assert!(
        err.to_string().contains("routes[0].name: bad name \"\""),
        "{err}"
    );
}

#[test]
fn checked_in_crds_match_the_generated_ones() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/base/crds");
    let mut drifted = Vec::new();
    for (file, text) in weft_control_plane::policy::kube::crds::render() {
        let path = dir.join(file);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            drifted.push(path.display().to_string());
        }
    }
    assert!(
        drifted.is_empty(),
        "the CRDs in deploy/kubernetes/base/crds differ from the policy types (policy/src/wire.rs): {}\n\
         regenerate them with: cargo run -p weft-cli --bin weftctl -- crds --out deploy/kubernetes/base/crds",
        drifted.join(", ")
    );
}

#[test]
fn apply_and_rollback_are_refused_when_the_policy_comes_from_kubernetes() {
    use weft_control_plane::operator::history::History;
    use weft_control_plane::operator::ops::{Ops, READ_ONLY_SOURCE};
    use weft_control_plane::push::hub::Hub;

    struct Fixed(MeshPolicy);
    impl PolicySource for Fixed {
        fn load(&self) -> Result<MeshPolicy, weft_control_plane::policy::mesh::PolicyErrors> {
            Ok(self.0.clone())
        }
        fn watch(
            &self,
            _: Box<dyn Fn() + Send>,
        ) -> std::io::Result<weft_control_plane::policy::source::Watch> {
            Err(std::io::Error::other("not watched here"))
        }
        fn describe(&self) -> String {
            "Kubernetes API (test)".into()
        }
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let policy = MeshPolicy::from_mesh("kubernetes.yaml", mapping::map(&objects(&shop()), TD).mesh)
        .expect("valid");
    let hub = Arc::new(Hub::new(
        policy.clone(),
        String::new(),
        TD.to_owned(),
        Duration::from_secs(1),
    ));
    let ops = Ops::read_only(
        hub,
        Arc::new(Fixed(policy)),
        History::open(tmp.path()).expect("history"),
    );
    ops.record_start().expect("recorded");
    let files = BTreeMap::from([("x.yaml".to_owned(), "services: []\n".to_owned())]);
    let err = ops.apply(&files, "test", false).expect_err("refused");
    assert!(err.to_string().contains(READ_ONLY_SOURCE), "{err}");
    assert!(err.to_string().contains("kubectl apply"), "{err}");
    let err = ops
        .rollback("0123456789abcdef", "test")
        .expect_err("refused");
    assert!(err.to_string().contains(READ_ONLY_SOURCE), "{err}");
    // Reloads still go through (and record nothing new: same version).
    ops.reload_from_directory();
    assert_eq!(ops.history().list().expect("history").len(), 1);
}

// ---------------------------------------------------------------------------------------------
// (b) The real KubeSource against a stand-in API server.

/// Poll `cond` until it holds, for at most `limit`.
pub(crate) fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    wait::until(what, limit, || cond().then_some(()));
}

/// Wait for a change notification and a loaded policy that satisfies `cond`.
pub(crate) fn wait_for_policy(
    source: &KubeSource,
    changes: &std::sync::mpsc::Receiver<()>,
    what: &str,
    cond: impl Fn(&MeshPolicy) -> bool,
) -> MeshPolicy {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut notified = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "timed out waiting for {what} (notified: {notified})"
        );
        if changes
            .recv_timeout(left.min(Duration::from_millis(100)))
            .is_ok()
        {
            notified = true;
        }
        let p = source.load().expect("a valid policy");
        if notified && cond(&p) {
            return p;
        }
    }
}

fn routes_of(p: &MeshPolicy) -> Vec<String> {
    p.routes().iter().map(|r| r.name.clone()).collect()
}

pub(crate) fn conditions(patch: &Value) -> (String, String, String) {
    let c = &patch["status"]["conditions"][0];
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
    (s("type"), s("status"), s("message"))
}

#[test]
fn kube_source_follows_the_api_server_through_watch_restarts_and_410() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mut objects = shop();
    // A resource that does not parse fails alone, never the list it comes in.
    objects.push(resource(
        "MeshRoute",
        "orders-typo",
        1,
        json!({"service": "orders", "retry": {"grpc_codes": [-1]}}),
    ));
    let api = rt.block_on(standin::ApiServer::start(objects));
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut options = KubeOptions::new(TD);
    options.kubeconfig = Some(kubeconfig(tmp.path(), &api));
    options.sync_timeout = Duration::from_secs(20);
    options.debounce = Duration::from_millis(50);
    let source = KubeSource::connect(options).expect("connects and syncs");
    assert!(
        source.describe().contains(&api.addr.to_string()),
        "{}",
        source.describe()
    );
    let (tx, changes) = std::sync::mpsc::channel();
    let _watch = source
        .watch(Box::new(move || {
            let _ = tx.send(());
        }))
        .expect("watch");

    // The first load sees everything listed; the bad route alone is left out.
    let p = source.load().expect("valid");
    assert_eq!(routes_of(&p), ["orders-canary"]);
    let names: Vec<&str> = p.services().iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["frontend.shop", "orders.shop", "payments.shop"]);

    // Each resource gets its Accepted condition, once.
    wait_until(Duration::from_secs(10), "status patches", || {
        let patches = api.patches();
        let has = |key: &str| patches.iter().any(|(k, _)| k == key);
        has("meshroutes/shop/orders-canary")
            && has("meshroutes/shop/orders-bad")
            && has("trafficpolicies/shop/orders")
            && has("authorizationpolicies/shop/orders")
            && has("meshroutes/shop/orders-typo")
    });
    let patches = api.patches();
    let of = |key: &str| -> Vec<(String, String, String)> {
        patches
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, p)| conditions(p))
            .collect()
    };
    let (t, status, _) = &of("meshroutes/shop/orders-canary")[0];
    assert_eq!((t.as_str(), status.as_str()), ("Accepted", "True"));
    let (_, status, message) = &of("meshroutes/shop/orders-bad")[0];
    assert_eq!(status, "False");
    assert!(
        message.starts_with("spec.match.path.regex: bad regex"),
        "{message}"
    );
    let (_, status, message) = &of("meshroutes/shop/orders-typo")[0];
    assert_eq!(status, "False");
    assert!(message.starts_with("spec: "), "{message}");
    let stored = api.get("MeshRoute", "orders-bad");
    assert_eq!(stored["status"]["conditions"][0]["observedGeneration"], 1);
    assert_eq!(stored["status"]["conditions"][0]["reason"], "Invalid");

    // v2's endpoint turns not ready.
    api.put(slice(
        "orders-q7w2n",
        "orders",
        Some("http"),
        &[
            ("10.244.1.20", "orders-v1-5f7d8b9c4-k2x9z", true),
            ("10.244.2.21", "orders-v2-7c9d6f5b8-p4q7r", false),
        ],
    ));
    let p = wait_for_policy(&source, &changes, "v2 not ready", |p| {
        p.services()
            .iter()
            .find(|s| s.name == "orders.shop")
            .is_some_and(|s| s.endpoints.len() == 1)
    });
    assert_eq!(
        p.services()[1].endpoints[0].address,
        "10.244.1.20:15006",
        "{:?}",
        p.services()[1]
    );

    // 410 Gone: the watches are compacted away; the source relists, and sees what was
    // created meanwhile.
    let lists = api.lists("meshroutes");
    api.expire();
    api.put(resource(
        "MeshRoute",
        "orders-header",
        1,
        json!({"service": "orders", "match": {"headers": [{"name": "x-canary", "exact": "1"}]},
               "backends": [{"subset": {"version": "v2"}}]}),
    ));
    wait_for_policy(&source, &changes, "the route created across a 410", |p| {
        routes_of(p).contains(&"orders-header".to_owned())
    });
    wait_until(Duration::from_secs(10), "a relist", || {
        api.lists("meshroutes") > lists
    });

    // Watches closed (the server's timeout): they resume from the last version, no relist
    // needed, and a deletion meanwhile is seen.
    let (lists, watches) = (api.lists("meshroutes"), api.watches("meshroutes"));
    api.close_watches();
    api.delete("MeshRoute", "orders-canary");
    wait_for_policy(&source, &changes, "the deleted route gone", |p| {
        routes_of(p) == ["orders-header"]
    });
    assert!(api.watches("meshroutes") > watches);
    assert_eq!(
        api.lists("meshroutes"),
        lists,
        "a closed watch resumes without a relist"
    );

    // Fixing the bad route: it is accepted and its condition flips, with the new generation.
    api.put(resource(
        "MeshRoute",
        "orders-bad",
        0,
        json!({"service": "orders", "match": {"path": {"regex": "/api/v[0-9]+/orders"}}}),
    ));
    wait_for_policy(&source, &changes, "the fixed route in force", |p| {
        routes_of(p).contains(&"orders-bad".to_owned())
    });
    wait_until(
        Duration::from_secs(10),
        "the fixed route's condition",
        || api.get("MeshRoute", "orders-bad")["status"]["conditions"][0]["status"] == "True",
    );
    assert_eq!(
        api.get("MeshRoute", "orders-bad")["status"]["conditions"][0]["observedGeneration"],
        2
    );

    // Loads with nothing new write nothing: every status patch so far was a change.
    source.load().expect("valid");
    std::thread::sleep(Duration::from_millis(300));
    source.load().expect("valid");
    let patches = api.patches();
    let count = |key: &str| patches.iter().filter(|(k, _)| k == key).count();
    assert_eq!(count("meshroutes/shop/orders-canary"), 1, "{patches:?}");
    assert_eq!(count("meshroutes/shop/orders-bad"), 2, "{patches:?}");
    assert_eq!(count("meshroutes/shop/orders-header"), 1, "{patches:?}");
    assert_eq!(count("trafficpolicies/shop/orders"), 1, "{patches:?}");
    drop(source);
}

#[test]
fn the_shop_example_policy_is_accepted_whole() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/examples/kubernetes/policy.yaml");
    let text = std::fs::read_to_string(&path).expect("example");
    let mut values = vec![
        service("loadgen", Some("http")),
        service("frontend", Some("http")),
        service("orders", Some("http")),
        service("inventory", Some("grpc")),
        pod("loadgen-1", "loadgen", "v1", "loadgen", "10.244.1.5", true),
        pod(
            "frontend-1",
            "frontend",
            "v1",
            "frontend",
            "10.244.1.10",
            true,
        ),
        pod("orders-v1-1", "orders", "v1", "orders", "10.244.1.20", true),
        pod("orders-v2-1", "orders", "v2", "orders", "10.244.1.21", true),
        pod(
            "inventory-1",
            "inventory",
            "v1",
            "inventory",
            "10.244.1.30",
            true,
        ),
        slice(
            "loadgen-a",
            "loadgen",
            None,
            &[("10.244.1.5", "loadgen-1", true)],
        ),
        slice(
            "frontend-a",
            "frontend",
            None,
            &[("10.244.1.10", "frontend-1", true)],
        ),
        slice(
            "orders-a",
            "orders",
            None,
            &[
                ("10.244.1.20", "orders-v1-1", true),
                ("10.244.1.21", "orders-v2-1", true),
            ],
        ),
        slice(
            "inventory-a",
            "inventory",
            None,
            &[("10.244.1.30", "inventory-1", true)],
        ),
    ];
    // YAML 1.1 readers (kubectl) take a bare `on` key for `true`: the example quotes it.
    for line in text.lines() {
        let key = line.trim_start().trim_start_matches("- ");
        assert!(!key.starts_with("on:"), "quote the key: {line}");
    }
    let mut resources = 0;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc).expect("YAML");
        values.push(v);
        resources += 1;
    }
    assert_eq!(resources, 6);
    let mapped = mapping::map(&objects(&values), TD);
    let rejected: Vec<String> = mapped.rejected().map(|v| v.to_string()).collect();
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(mapped.verdicts.len(), 6);
    assert_eq!(mapped.mesh.routes.len(), 2);
    let orders = mapped
        .mesh
        .services
        .iter()
        .find(|s| s.name == "orders.shop")
        .expect("orders");
    assert_eq!(
        orders
            .outlier_detection
            .as_ref()
            .and_then(|o| o.consecutive_failures),
        Some(5)
    );
}

/// The `weft-control-plane` binary with `--kubernetes`: its client comes from `KUBECONFIG`
/// (the inference a real cluster's kubeconfig takes), it serves the cluster's services, and
/// `weftctl apply` is refused with the way to change the policy instead.
#[test]
fn the_binary_with_kubernetes_serves_the_cluster_and_refuses_apply() {
    use std::process::Command;
    use weft_control_plane::operator::client::{self, Connection, Kind, OpsCommand};

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let api = rt.block_on(standin::ApiServer::start(shop()));
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = kubeconfig(tmp.path(), &api);
    let cp = super::shared::spawn_control_plane(tmp.path(), &config, "cp", TD, &[] as &[&str]);
    let (admin, state) = (cp.admin, cp.state.clone());
    // (exit code, stdout, stderr) of `weftctl --server ... COMMAND`: the operator API client
    // the binary runs, in process (the binary is the weft-cli crate's), with its exit status.
    let weftctl = |command: OpsCommand| {
        let conn = Connection {
            server: Some(format!("http://{admin}")),
            token_file: Some(state.join("admin.token")),
        };
        let mut out = Vec::new();
        let r = rt.block_on(client::run(&conn, command, &mut out));
        let out = String::from_utf8_lossy(&out).into_owned();
        match r {
            Ok(()) => (Some(0), out, String::new()),
            Err(e) => (
                Some(i32::from(e.exit_code())),
                out,
                format!("weftctl: {e}\n"),
            ),
        }
    };
    let cp_log = cp.log_reader();
    let mut services = String::new();
    wait_until(
        Duration::from_secs(20),
        "the control plane's services",
        || {
            let (exit, out, _) = weftctl(OpsCommand::Get {
                kind: Kind::Services,
            });
            services = out;
            exit == Some(0)
        },
    );
    assert!(
        services.contains("orders.shop") && services.contains("payments.shop"),
        "{services}\n{}",
        cp_log()
    );
    assert!(!services.contains("legacy"), "{services}");

    let file = tmp.path().join("extra.yaml");
    std::fs::write(&file, "services: []\n").expect("write");
    let (exit, _, err) = weftctl(OpsCommand::Apply {
        files: vec![file.clone()],
        dry_run: false,
    });
    assert_eq!(exit, Some(1), "{err}");
    assert!(err.contains("kubectl apply"), "{err}");
    let (_, _, err) = weftctl(OpsCommand::Rollback {
        version: "0123456789abcdef".to_owned(),
    });
    assert!(err.contains("kubectl apply"), "{err}");

    // --policy-dir and --kubernetes exclude each other.
    let (exit, _, err) = output_within(
        Command::new(env!("CARGO_BIN_EXE_weft-control-plane"))
            .args([
                "--kubernetes",
                "--policy-dir",
                "/nonexistent",
                "--state-dir",
            ])
            .arg(tmp.path().join("other")),
        Duration::from_secs(30),
    );
    assert_eq!(exit.code(), Some(2));
    assert!(err.contains("cannot be used with"), "{err}");
}
