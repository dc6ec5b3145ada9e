//! The Kubernetes policy source: the mapping from objects (JSON as the API server serves it)
//! to the mesh policy, the generated CRDs against the checked-in ones, and the real
//! `KubeSource` driven against a stand-in API server (HTTPS, list and watch, watch restarts,
//! `410 Gone`, status patches).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{json, Value};
use weft_control_plane::kube::crds::{AuthorizationPolicy, MeshRoute, TrafficPolicy};
use weft_control_plane::kube::mapping::{self, Kind, Objects};
use weft_control_plane::kube::source::{KubeOptions, KubeSource};
use weft_control_plane::policy::MeshPolicy;
use weft_control_plane::source::PolicySource;

const TD: &str = "cluster.test";

// ---------------------------------------------------------------------------------------------
// Fixtures: objects as `kubectl get -o json` shows them (trimmed of managedFields).

fn meta(ns: &str, name: &str, uid: &str) -> Value {
    json!({
        "name": name,
        "namespace": ns,
        "uid": uid,
        "resourceVersion": "1000",
        "creationTimestamp": "2026-11-20T09:00:00Z"
    })
}

fn service(name: &str, app_protocol: Option<&str>) -> Value {
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
            "clusterIP": "10.96.12.34",
            "clusterIPs": ["10.96.12.34"],
            "type": "ClusterIP",
            "sessionAffinity": "None",
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "internalTrafficPolicy": "Cluster"
        },
        "status": {"loadBalancer": {}}
    })
}

fn pod(name: &str, app: &str, version: &str, account: &str, ip: &str, sidecar: bool) -> Value {
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
fn slice(
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

fn resource(kind: &str, name: &str, generation: i64, spec: Value) -> Value {
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

fn orders_authz() -> Value {
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
fn shop() -> Vec<Value> {
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
fn objects(values: &[Value]) -> Objects {
    fn de<T: serde::de::DeserializeOwned>(v: &Value) -> T {
        serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {v}"))
    }
    let mut o = Objects::default();
    for v in values {
        match v["kind"].as_str() {
            Some("Service") => o.services.push(de::<Service>(v)),
            Some("Pod") => o.pods.push(de::<Pod>(v)),
            Some("EndpointSlice") => o.endpoint_slices.push(de::<EndpointSlice>(v)),
            Some("MeshRoute") => o.routes.push(de::<MeshRoute>(v)),
            Some("TrafficPolicy") => o.traffic_policies.push(de::<TrafficPolicy>(v)),
            Some("AuthorizationPolicy") => o.authorization.push(de::<AuthorizationPolicy>(v)),
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
        ["orders.shop.svc", "orders.shop.svc.cluster.local"]
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
    values.retain(|v| {
        !(v["kind"] == "EndpointSlice" && v["metadata"]["name"] == "payments-m5t8c")
            && !(v["kind"] == "Pod" && v["metadata"]["name"] == "payments-84f9d7c6b-m3n5v")
    });
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
    values.push(resource(
        "TrafficPolicy",
        "orders-again",
        1,
        json!({"service": "orders", "load_balancer": "random"}),
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
    // A second authorization block for orders.
    values.push(resource(
        "AuthorizationPolicy",
        "orders-more",
        1,
        json!({"service": "orders", "default": "allow"}),
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
    assert_eq!(why, "Conflict");
    assert!(msg.contains("TrafficPolicy shop/orders"), "{msg}");
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
    for (file, text) in weft_control_plane::kube::crds::render() {
        let path = dir.join(file);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            drifted.push(path.display().to_string());
        }
    }
    assert!(
        drifted.is_empty(),
        "the CRDs in deploy/kubernetes/base/crds differ from the policy types (policy/src/wire.rs): {}\n\
         regenerate them with: cargo run -p weft-control-plane --bin weftctl -- crds --out deploy/kubernetes/base/crds",
        drifted.join(", ")
    );
}

#[test]
fn apply_and_rollback_are_refused_when_the_policy_comes_from_kubernetes() {
    use weft_control_plane::history::History;
    use weft_control_plane::hub::Hub;
    use weft_control_plane::ops::{Ops, READ_ONLY_SOURCE};

    struct Fixed(MeshPolicy);
    impl PolicySource for Fixed {
        fn load(&self) -> Result<MeshPolicy, weft_control_plane::policy::PolicyErrors> {
            Ok(self.0.clone())
        }
        fn watch(
            &self,
            _: Box<dyn Fn() + Send>,
        ) -> std::io::Result<weft_control_plane::source::Watch> {
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
