//! The GAMMA translation, one HTTPRoute at a time.

use serde_json::{json, Value};

use super::super::types::{HttpRouteSpec, ReferenceGrantSpec};
use super::*;

fn svc(ns: &str, name: &str, selector: Value) -> KubeService {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": selector, "ports": [{"name": "http", "port": 8080}]}
    }))
    .expect("a Service")
}

fn services() -> Vec<KubeService> {
    vec![
        svc("shop", "orders", json!({"app": "orders"})),
        svc(
            "shop",
            "orders-v1",
            json!({"app": "orders", "version": "v1"}),
        ),
        svc(
            "shop",
            "orders-v2",
            json!({"app": "orders", "version": "v2"}),
        ),
        svc("shop", "inventory", json!({"app": "inventory"})),
        svc(
            "other",
            "orders-v3",
            json!({"app": "orders", "version": "v3"}),
        ),
    ]
}

fn mesh() -> Vec<wire::Service> {
    vec![wire::Service {
        name: "orders.shop".into(),
        hosts: vec![],
        identity: "spiffe://weft.local/ns/shop/sa/orders".into(),
        protocol: None,
        port: None,
        load_balancer: None,
        endpoints: vec![],
        retry_budget: None,
        outlier_detection: None,
        limits: None,
        escaped_slashes: None,
        opaque_ports: None,
    }]
}

fn translate(
    spec: Value,
    grants: &[(String, ReferenceGrantSpec)],
) -> Result<MeshRoutes, RouteError> {
    let spec: HttpRouteSpec = serde_json::from_value(spec).expect("spec");
    let services = services();
    let mesh = mesh();
    let cluster = Cluster {
        services: &services,
        grants,
    };
    MeshRoutes::try_from(GammaRoute {
        kind: "HTTPRoute",
        namespace: "shop",
        name: "orders-split",
        spec: &spec,
        parent: &spec.parent_refs[0],
        mesh: &mesh,
        cluster: &cluster,
    })
}

fn parent() -> Value {
    json!([{"group": "", "kind": "Service", "name": "orders", "port": 8080}])
}

#[test]
fn matches_weights_and_filters_become_mesh_routes() {
    let routes = translate(
        json!({
            "parentRefs": parent(),
            "rules": [{
                "matches": [
                    {"path": {"type": "PathPrefix", "value": "/api"}, "method": "GET",
                     "headers": [{"name": "X-Canary", "value": "yes"}]},
                    {"path": {"type": "Exact", "value": "/health"}}
                ],
                "filters": [
                    {"type": "RequestHeaderModifier",
                     "requestHeaderModifier": {"set": [{"name": "X-Via", "value": "gamma"}],
                                               "remove": ["x-debug"]}},
                    {"type": "URLRewrite",
                     "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}}}
                ],
                "backendRefs": [
                    {"name": "orders-v1", "port": 8080, "weight": 90},
                    {"name": "orders-v2", "port": 8080, "weight": 10}
                ],
                "timeouts": {"request": "2s"}
            }]
        }),
        &[],
    );
    // The Exact match has no prefix for the rewrite to replace: refused.
    assert_eq!(
        routes.as_ref().err().map(RouteError::reason),
        Some("UnsupportedValue"),
        "{routes:?}"
    );

    let MeshRoutes(routes) = translate(
        json!({
            "parentRefs": parent(),
            "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": "/api"}, "method": "GET",
                             "headers": [{"name": "X-Canary", "value": "yes"}]}],
                "filters": [
                    {"type": "RequestHeaderModifier",
                     "requestHeaderModifier": {"set": [{"name": "X-Via", "value": "gamma"}],
                                               "remove": ["x-debug"]}},
                    {"type": "URLRewrite",
                     "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}}}
                ],
                "backendRefs": [
                    {"name": "orders-v1", "port": 8080, "weight": 90},
                    {"name": "orders-v2", "port": 8080, "weight": 10}
                ],
                "timeouts": {"request": "2s"}
            }, {
                "backendRefs": [{"name": "orders"}]
            }]
        }),
        &[],
    )
    .expect("translates");
    assert_eq!(routes.len(), 2);
    let r = &routes[0].route;
    assert_eq!(r.name, "orders-split-r0-m0");
    assert_eq!(r.service, "orders.shop");
    assert_eq!(r.matches.method.as_deref(), Some("GET"));
    assert_eq!(
        r.matches.path.as_ref().and_then(|p| p.prefix.as_deref()),
        Some("/api")
    );
    assert_eq!(r.matches.headers[0].name, "x-canary");
    assert_eq!(r.matches.headers[0].exact.as_deref(), Some("yes"));
    let weights: Vec<(Option<&String>, Option<u32>)> = r
        .backends
        .iter()
        .map(|b| (b.subset.get("version"), b.weight))
        .collect();
    assert_eq!(
        weights,
        [
            (Some(&"v1".to_owned()), Some(90)),
            (Some(&"v2".to_owned()), Some(10))
        ]
    );
    assert!(
        !r.backends[0].subset.contains_key("app"),
        "the parent's labels are implied"
    );
    assert_eq!(r.rewrite.as_ref().map(|w| w.prefix.as_str()), Some("/v2"));
    let edits = r.request_headers.as_ref().expect("edits");
    assert_eq!(edits.set.get("x-via").map(String::as_str), Some("gamma"));
    assert_eq!(edits.remove, ["x-debug"]);
    assert_eq!(r.timeout.as_deref(), Some("2s"));
    // The rule without matches takes every path, to every endpoint.
    let all = &routes[1].route;
    assert_eq!(
        all.matches.path.as_ref().and_then(|p| p.prefix.as_deref()),
        Some("/")
    );
    assert!(all.backends[0].subset.is_empty());
    assert!(
        routes[0].rank < routes[1].rank,
        "the longer prefix goes first"
    );
}

#[test]
fn zero_weights_answer_500_as_the_gateway_api_says() {
    let MeshRoutes(routes) = translate(
        json!({"parentRefs": parent(), "rules": [{"backendRefs": [{"name": "orders-v1", "weight": 0}]}]}),
        &[],
    )
    .expect("translates");
    let abort = routes[0].route.fault.as_ref().and_then(|f| f.abort.clone());
    assert_eq!(abort.map(|a| (a.percent, a.status)), Some((100.0, 500)));
}

#[test]
fn unsupported_fields_and_bad_refs_say_why() {
    let cases = [
        (
            json!({"matches": [{"queryParams": [{"name": "a", "value": "b"}]}]}),
            "UnsupportedValue",
            "queryParams",
        ),
        (
            json!({"filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https"}}]}),
            "UnsupportedValue",
            "RequestRedirect",
        ),
        (
            json!({"filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"add": [{"name": "a", "value": "b"}]}}]}),
            "UnsupportedValue",
            "add",
        ),
        (
            json!({"backendRefs": [{"name": "nowhere"}]}),
            "BackendNotFound",
            "no Service shop/nowhere",
        ),
        (
            json!({"backendRefs": [{"name": "inventory"}]}),
            "UnsupportedValue",
            "outside the parent",
        ),
        (
            json!({"backendRefs": [{"name": "orders-v3", "namespace": "other"}]}),
            "RefNotPermitted",
            "ReferenceGrant",
        ),
        (
            json!({"backendRefs": [{"group": "example.com", "kind": "Bucket", "name": "b"}]}),
            "InvalidKind",
            "Bucket",
        ),
        (
            json!({"timeouts": {"backendRequest": "1s"}}),
            "UnsupportedValue",
            "backendRequest",
        ),
    ];
    for (rule, reason, says) in cases {
        let got = translate(
            json!({"parentRefs": parent(), "rules": [rule.clone()]}),
            &[],
        );
        let err = got.expect_err(&rule.to_string());
        assert_eq!(err.reason(), reason, "{rule}: {err}");
        assert!(err.to_string().contains(says), "{rule}: {err}");
    }
    let unknown: Result<HttpRouteSpec, _> = serde_json::from_value(
        json!({"parentRefs": parent(), "rules": [{"sessionPersistence": {}}]}),
    );
    assert!(unknown.is_err(), "an unknown field is refused, not ignored");
}

#[test]
fn a_reference_grant_lets_a_cross_namespace_ref_resolve() {
    let grant: ReferenceGrantSpec = serde_json::from_value(json!({
        "from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "shop"}],
        "to": [{"group": "", "kind": "Service"}]
    }))
    .expect("grant");
    let rule = json!({"backendRefs": [{"name": "orders-v3", "namespace": "other"}]});
    let spec = json!({"parentRefs": parent(), "rules": [rule]});
    // Permitted in `other`, but a mesh route cannot reach beyond the parent's endpoints.
    let err = translate(spec.clone(), &[("other".into(), grant.clone())]).expect_err("refused");
    assert_eq!(err.reason(), "UnsupportedValue", "{err}");
    // A grant in the wrong namespace permits nothing.
    let err = translate(spec, &[("shop".into(), grant)]).expect_err("refused");
    assert_eq!(err.reason(), "RefNotPermitted", "{err}");
}

#[test]
fn long_names_are_shortened_stably() {
    let long = "a".repeat(80);
    let n = route_name(&long, 12, 3);
    assert!(n.len() <= MAX_ROUTE_NAME, "{n}");
    assert!(n.ends_with("-r12-m3"), "{n}");
    assert_eq!(n, route_name(&long, 12, 3));
}
