//! The north-south translation and its status, on objects as the API server holds them.

use std::collections::HashMap;

use base64::Engine;
use k8s_openapi::api::core::v1::{Secret, Service as KubeService};
use serde_json::{json, Value};
use weft_policy::wire;

use super::super::gateway_status;
use super::super::ns_route::intersect;
use super::super::types::ReferenceGrantSpec;
use super::*;

const CRT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";

fn obj(v: Value) -> DynamicObject {
    serde_json::from_value(v).expect("an object")
}

fn class(name: &str, controller: &str) -> DynamicObject {
    obj(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": name, "generation": 1},
        "spec": {"controllerName": controller}
    }))
}

fn gateway(listeners: Value) -> DynamicObject {
    obj(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "edge", "namespace": "infra", "generation": 2},
        "spec": {"gatewayClassName": "weft", "listeners": listeners}
    }))
}

fn https(name: &str, host: Option<&str>, secret: &str) -> Value {
    let mut l = json!({
        "name": name, "port": 443, "protocol": "HTTPS",
        "tls": {"certificateRefs": [{"name": secret}]},
        "allowedRoutes": {"namespaces": {"from": "All"}}
    });
    if let Some(h) = host {
        l["hostname"] = json!(h);
    }
    l
}

fn route(name: &str, created: &str, spec: Value) -> DynamicObject {
    obj(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "shop", "generation": 3,
                     "creationTimestamp": created},
        "spec": spec
    }))
}

fn secret(ns: &str, name: &str) -> Secret {
    let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": ns},
        "data": {"tls.crt": b(CRT), "tls.key": b(KEY)}
    }))
    .expect("a Secret")
}

fn svc(ns: &str, name: &str) -> KubeService {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 8080}]}
    }))
    .expect("a Service")
}

fn mesh_service(name: &str) -> wire::Service {
    wire::Service {
        name: name.into(),
        hosts: vec![],
        identity: format!(
            "spiffe://weft.local/ns/shop/sa/{}",
            name.split('.').next().unwrap_or(name)
        ),
        protocol: None,
        port: None,
        load_balancer: None,
        endpoints: vec![],
        retry_budget: None,
        outlier_detection: None,
        limits: None,
        escaped_slashes: None,
        opaque_ports: None,
    }
}

struct World {
    classes: Vec<DynamicObject>,
    gateways: Vec<DynamicObject>,
    routes: Vec<DynamicObject>,
    grpc_routes: Vec<DynamicObject>,
    grants: Vec<(String, ReferenceGrantSpec)>,
    services: Vec<KubeService>,
    secrets: Vec<Secret>,
    mesh: Vec<wire::Service>,
    policies: Vec<DynamicObject>,
}

impl World {
    fn new(listeners: Value, routes: Vec<DynamicObject>) -> Self {
        World {
            classes: vec![
                class("weft", super::super::CONTROLLER_NAME),
                class("other", "example.com/other"),
            ],
            gateways: vec![gateway(listeners)],
            routes,
            grpc_routes: Vec::new(),
            grants: Vec::new(),
            services: vec![
                svc("shop", "orders"),
                svc("shop", "catalog"),
                svc("shop", "plain"),
            ],
            secrets: vec![secret("infra", "api-cert"), secret("infra", "shop-cert")],
            mesh: vec![mesh_service("orders.shop"), mesh_service("catalog.shop")],
            policies: Vec::new(),
        }
    }

    fn run(&self) -> NorthSouth {
        north_south(&Inputs {
            classes: &self.classes,
            gateways: &self.gateways,
            routes: &self.routes,
            grpc_routes: &self.grpc_routes,
            grants: &self.grants,
            services: &self.services,
            secrets: Some(&self.secrets),
            mesh: &self.mesh,
            policies: &self.policies,
        })
    }
}

fn to_edge(extra: Value) -> Value {
    let mut parent = json!({"name": "edge", "namespace": "infra"});
    if let (Some(p), Some(e)) = (parent.as_object_mut(), extra.as_object()) {
        p.extend(e.clone());
    }
    parent
}

/// Two hosts, `/v1/orders` rewritten to `/orders` with a header set, weights with a drained
/// backend, and a catch-all to another service.
fn orders_route() -> DynamicObject {
    route(
        "orders-api",
        "2026-01-01T00:00:00Z",
        json!({
            "parentRefs": [to_edge(json!({}))],
            "hostnames": ["api.example.test", "shop.example.test"],
            "rules": [
                {"matches": [{"path": {"type": "PathPrefix", "value": "/v1/orders"}}],
                 "filters": [
                    {"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/orders"}}},
                    {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "X-Api-Version", "value": "v1"}], "remove": ["Cookie"]}}
                 ],
                 "backendRefs": [{"name": "orders", "port": 8080, "weight": 100},
                                 {"name": "catalog", "port": 8080, "weight": 0}]},
                {"backendRefs": [{"name": "catalog", "port": 8080}]}
            ]
        }),
    )
}

#[test]
fn a_gateway_and_its_route_become_the_gateway_file() {
    let w = World::new(
        json!([
            https("api", Some("api.example.test"), "api-cert"),
            https("shop", Some("shop.example.test"), "shop-cert"),
            {"name": "plain", "port": 80, "protocol": "HTTP"}
        ]),
        vec![orders_route()],
    );
    let ns = w.run();
    assert_eq!(ns.classes.len(), 1, "only Weft's class: {:?}", ns.classes);
    assert_eq!(ns.classes[0].accepted, Ok(()));
    let g = &ns.gateways[0];
    assert_eq!(g.accepted, Ok(()));
    assert_eq!(ns.verdicts.len(), 1);
    assert_eq!(ns.verdicts[0].result, Ok(()));
    let attached: Vec<i32> = g.listeners.iter().map(|l| l.attached_routes).collect();
    assert_eq!(attached, [1, 1, 0]);
    let config = g.config.clone().expect("a config");
    let f = &config.file;
    assert_eq!(f.listen.https, "0.0.0.0:443");
    assert_eq!(f.listen.http_redirect.as_deref(), Some("0.0.0.0:80"));
    assert_eq!(f.tls.certificates.len(), 2);
    assert_eq!(f.tls.certificates[0].hosts, ["api.example.test"]);
    assert_eq!(config.pems.len(), 4);
    assert_eq!(config.pems[0].1, CRT.as_bytes());
    let names: Vec<&str> = f.routes.iter().map(|r| r.name.as_str()).collect();
    // The prefix before the catch-all.
    assert_eq!(names, ["shop.orders-api-r0-m0", "shop.orders-api-r1-m0"]);
    let r = &f.routes[0];
    assert_eq!(r.hosts, ["api.example.test", "shop.example.test"]);
    assert_eq!(r.service, "orders.shop");
    assert_eq!(
        r.rewrite.as_ref().map(|r| r.prefix.as_str()),
        Some("/orders")
    );
    let edits = r.request_headers.clone().expect("edits");
    assert_eq!(
        edits.set.get("x-api-version").map(String::as_str),
        Some("v1")
    );
    assert_eq!(edits.remove, ["cookie"]);
    assert_eq!(f.routes[1].service, "catalog.shop");
    // The YAML is a gateway file the proxy's own parser takes.
    let yaml = config.yaml().expect("yaml");
    let back: weft_policy::gateway::GatewayFile = serde_yaml::from_str(&yaml).expect("reads");
    assert_eq!(&back, f);
}

#[test]
fn weighted_backend_refs_across_services_become_a_split() {
    let split = route(
        "canary",
        "2026-01-01T00:00:00Z",
        json!({
            "parentRefs": [to_edge(json!({}))],
            "rules": [{"backendRefs": [
                {"name": "orders", "port": 8080, "weight": 90},
                {"name": "catalog", "weight": 10},
                {"name": "orders", "weight": 5}
            ]}]
        }),
    );
    let w = World::new(
        json!([https("api", Some("api.example.test"), "api-cert")]),
        vec![split],
    );
    let ns = w.run();
    assert_eq!(ns.verdicts[0].result, Ok(()));
    let config = ns.gateways[0].config.clone().expect("a config");
    let r = &config.file.routes[0];
    assert_eq!(r.service, "", "the split form, not one service");
    let backends: Vec<(&str, u32)> = r
        .backends
        .iter()
        .map(|b| (b.service.as_str(), b.weight))
        .collect();
    // The same Service named twice adds up.
    assert_eq!(backends, [("orders.shop", 95), ("catalog.shop", 10)]);
    // And the gateway file's own checks take it.
    let yaml = config.yaml().expect("yaml");
    let back: weft_policy::gateway::GatewayFile = serde_yaml::from_str(&yaml).expect("reads");
    assert_eq!(&back, &config.file);
}

fn verdict(w: &World) -> (&'static str, String) {
    let ns = w.run();
    ns.verdicts[0].result.clone().expect_err("refused")
}

#[test]
fn unsupported_fields_and_bad_references_are_named() {
    let listeners = json!([https("api", Some("api.example.test"), "api-cert")]);
    let with_rules = |rules: Value| {
        route(
            "r",
            "2026-01-01T00:00:00Z",
            json!({"parentRefs": [to_edge(json!({}))], "rules": rules}),
        )
    };
    let cases = [
        (
            json!([{"filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https"}}], "backendRefs": [{"name": "orders"}]}]),
            "UnsupportedValue",
            "spec.rules[0].filters[0].type",
        ),
        (
            json!([{"backendRefs": [{"name": "orders", "weight": 0}, {"name": "catalog", "weight": 0}]}]),
            "UnsupportedValue",
            "spec.rules[0].backendRefs",
        ),
        (
            json!([{"backendRefs": [{"name": "orders", "weight": -1}]}]),
            "UnsupportedValue",
            "spec.rules[0].backendRefs[0].weight",
        ),
        (
            json!([{"backendRefs": [{"name": "missing"}]}]),
            "BackendNotFound",
            "no Service shop/missing",
        ),
        (
            json!([{"backendRefs": [{"name": "plain"}]}]),
            "BackendNotFound",
            "not a mesh service",
        ),
        (
            json!([{"backendRefs": [{"name": "orders", "namespace": "other"}]}]),
            "RefNotPermitted",
            "ReferenceGrant",
        ),
        (
            json!([{"timeouts": {"request": "1s"}, "backendRefs": [{"name": "orders"}]}]),
            "UnsupportedValue",
            "spec.rules[0].timeouts",
        ),
        (
            json!([{"sessionPersistence": {}, "backendRefs": [{"name": "orders"}]}]),
            "UnsupportedValue",
            "sessionPersistence",
        ),
        (
            json!([{"matches": [{"path": {"type": "RegularExpression", "value": "(("}}], "backendRefs": [{"name": "orders"}]}]),
            "UnsupportedValue",
            "route shop.r-r0-m0",
        ),
    ];
    for (rules, reason, says) in cases {
        let w = World::new(listeners.clone(), vec![with_rules(rules.clone())]);
        let (r, message) = verdict(&w);
        assert_eq!(r, reason, "{rules}: {message}");
        assert!(message.contains(says), "{rules}: {message}");
    }
}

#[test]
fn attachment_follows_listeners_and_hostnames() {
    let listeners = json!([
        https("api", Some("api.example.test"), "api-cert"),
        {"name": "plain", "port": 80, "protocol": "HTTP"},
        {"name": "own", "port": 443, "protocol": "HTTPS", "hostname": "own.example.test",
         "tls": {"certificateRefs": [{"name": "shop-cert"}]}}
    ]);
    let attach = |parent: Value, hostnames: Value| {
        let r = route(
            "r",
            "2026-01-01T00:00:00Z",
            json!({"parentRefs": [to_edge(parent)], "hostnames": hostnames,
                   "rules": [{"backendRefs": [{"name": "orders"}]}]}),
        );
        verdict(&World::new(listeners.clone(), vec![r])).0
    };
    assert_eq!(
        attach(json!({"sectionName": "nope"}), json!([])),
        "NoMatchingParent"
    );
    assert_eq!(
        attach(json!({"sectionName": "plain"}), json!([])),
        "NotAllowedByListeners"
    );
    // `own` takes routes of the Gateway's namespace only.
    assert_eq!(
        attach(json!({"sectionName": "own"}), json!([])),
        "NotAllowedByListeners"
    );
    assert_eq!(
        attach(json!({"sectionName": "api"}), json!(["www.example.test"])),
        "NoMatchingListenerHostname"
    );
    assert_eq!(
        intersect(Some("*.example.test"), &["a.b.example.test".into()]),
        Some(vec!["a.b.example.test".into()])
    );
    assert_eq!(
        intersect(Some("api.example.test"), &["*.example.test".into()]),
        Some(vec!["api.example.test".into()])
    );
    assert_eq!(
        intersect(Some("*.example.test"), &["*.a.example.test".into()]),
        Some(vec!["*.a.example.test".into()])
    );
    assert_eq!(intersect(None, &[]), Some(vec![]));
    assert_eq!(intersect(Some("a.test"), &["b.test".into()]), None);
}

#[test]
fn a_missing_secret_is_an_invalid_certificate_ref_in_the_status() {
    let mut w = World::new(
        json!([
            https("api", Some("api.example.test"), "api-cert"),
            https("gone", Some("gone.example.test"), "no-such-secret")
        ]),
        vec![orders_route()],
    );
    w.grants.clear();
    let ns = w.run();
    let g = &ns.gateways[0];
    assert_eq!(
        g.listeners[1].resolved.as_ref().map_err(|e| e.0),
        Err("InvalidCertificateRef")
    );
    assert!(!g.listeners[1].programmed);
    // The route attaches to the listener that works: for its host only.
    let f = &g.config.as_ref().expect("config").file;
    assert_eq!(f.routes[0].hosts, ["api.example.test"]);
    let status = gateway_status::gateway_status(g, None, "2026-12-07T00:00:00Z");
    assert_eq!(status["conditions"][0]["type"], "Accepted");
    assert_eq!(status["conditions"][1]["status"], "True");
    let gone = &status["listeners"][1];
    assert_eq!(gone["attachedRoutes"], 0);
    assert_eq!(gone["conditions"][2]["type"], "ResolvedRefs");
    assert_eq!(gone["conditions"][2]["reason"], "InvalidCertificateRef");
    assert_eq!(gone["conditions"][1]["status"], "False");
    assert_eq!(status["listeners"][0]["attachedRoutes"], 1);

    // Written once; the same verdict again writes nothing; a status seen back is left alone.
    let mut sent = HashMap::new();
    let writes = gateway_status::pending(&ns, &w.classes, &w.gateways, &mut sent, "t1");
    assert_eq!(writes.len(), 2, "the class and the gateway: {writes:?}");
    assert!(gateway_status::pending(&ns, &w.classes, &w.gateways, &mut sent, "t2").is_empty());
    let mut stored = w.gateways.clone();
    stored[0].data["status"] = writes[1].1.clone();
    let mut fresh = HashMap::new();
    let again = gateway_status::pending(&ns, &w.classes, &stored, &mut fresh, "t3");
    assert_eq!(again.len(), 1, "only the class: {again:?}");
}

#[test]
fn cross_namespace_secrets_need_a_grant_and_no_certificate_means_not_programmed() {
    let mut w = World::new(
        json!([{"name": "api", "port": 443, "protocol": "HTTPS", "hostname": "api.example.test",
                "tls": {"certificateRefs": [{"name": "api-cert", "namespace": "certs"}]}}]),
        vec![],
    );
    w.secrets.push(secret("certs", "api-cert"));
    let ns = w.run();
    let g = &ns.gateways[0];
    assert_eq!(
        g.listeners[0].resolved.as_ref().map_err(|e| e.0),
        Err("RefNotPermitted")
    );
    assert!(g.config.is_err());
    w.grants.push((
        "certs".into(),
        serde_json::from_value(json!({
            "from": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "infra"}],
            "to": [{"group": "", "kind": "Secret"}]
        }))
        .expect("grant"),
    ));
    assert!(w.run().gateways[0].config.is_ok());
}

#[test]
fn listeners_weft_cannot_serve_are_refused() {
    let w = World::new(
        json!([
            https("api", Some("api.example.test"), "api-cert"),
            {"name": "tcp", "port": 9000, "protocol": "TCP"},
            {"name": "alt", "port": 8443, "protocol": "HTTPS", "hostname": "b.example.test",
             "tls": {"certificateRefs": [{"name": "shop-cert"}]}},
            {"name": "pass", "port": 443, "protocol": "HTTPS", "tls": {"mode": "Passthrough"}}
        ]),
        vec![],
    );
    let ns = w.run();
    let reasons: Vec<Option<&str>> = ns.gateways[0]
        .listeners
        .iter()
        .map(|l| l.accepted.as_ref().err().map(|e| e.0))
        .collect();
    assert_eq!(
        reasons,
        [
            None,
            Some("UnsupportedProtocol"),
            Some("PortUnavailable"),
            Some("UnsupportedValue")
        ]
    );
    // A Gateway of another class is not Weft's; an unknown field refuses the whole Gateway.
    let mut w = World::new(json!([]), vec![]);
    w.gateways[0].data["spec"]["gatewayClassName"] = json!("other");
    assert!(w.run().gateways.is_empty());
    let mut w = World::new(json!([]), vec![]);
    w.gateways[0].data["spec"]["somethingNew"] = json!(1);
    let g = &w.run().gateways[0];
    assert_eq!(g.accepted.as_ref().map_err(|e| e.0), Err("Invalid"));
}

#[test]
fn gateway_routes_are_checked_against_the_mesh_services() {
    let r = |service: &str| RouteFile {
        name: "a".into(),
        service: service.into(),
        ..RouteFile::default()
    };
    let mesh = || vec![mesh_service("orders.shop")];
    assert_eq!(
        weft_policy::gateway::validate_routes(vec![r("orders.shop")], mesh()),
        Ok(())
    );
    let e =
        weft_policy::gateway::validate_routes(vec![r("nope.shop")], mesh()).expect_err("unknown");
    assert_eq!(e[0].field, "routes[0].service");
}

/// A GRPCRoute on a Gateway: a service/method match is the exact path of the call, a service
/// alone its prefix, backends weighted as an HTTPRoute's; its verdict is keyed as a GRPCRoute.
#[test]
fn a_grpc_route_becomes_gateway_routes_on_the_call_paths() {
    let mut grpc = route(
        "payments-grpc",
        "2026-01-01T00:00:00Z",
        json!({
            "parentRefs": [to_edge(json!({}))],
            "hostnames": ["api.example.test"],
            "rules": [
                {"matches": [{"method": {"service": "shop.Orders", "method": "Get"}}],
                 "backendRefs": [{"name": "orders", "port": 8080, "weight": 80},
                                 {"name": "catalog", "port": 8080, "weight": 20}]},
                {"matches": [{"method": {"service": "shop.Catalog"}}],
                 "backendRefs": [{"name": "catalog", "port": 8080}]}
            ]
        }),
    );
    grpc.types.as_mut().expect("types").kind = "GRPCRoute".into();
    let mut w = World::new(
        json!([https("api", Some("api.example.test"), "api-cert")]),
        vec![],
    );
    w.grpc_routes.push(grpc);
    let ns = w.run();
    assert_eq!(ns.verdicts.len(), 1);
    assert_eq!(ns.verdicts[0].key.kind, Kind::GrpcRoute);
    assert_eq!(ns.verdicts[0].result, Ok(()), "{:?}", ns.verdicts[0]);
    let g = &ns.gateways[0];
    assert_eq!(g.listeners[0].attached_routes, 1);
    assert_eq!(g.listeners[0].supported_kinds, ["HTTPRoute", "GRPCRoute"]);
    let f = g.config.clone().expect("a config").file;
    let paths: Vec<String> = (f.routes.iter())
        .map(|r| {
            let p = r.matches.path.clone().expect("a path match");
            format!("{:?} {:?}", p.exact, p.prefix)
        })
        .collect();
    // The exact call path ranks before the service's prefix.
    assert_eq!(
        paths,
        [
            "Some(\"/shop.Orders/Get\") None",
            "None Some(\"/shop.Catalog\")"
        ],
        "{f:?}"
    );
    let split: Vec<(&str, u32)> = (f.routes[0].backends.iter())
        .map(|b| (b.service.as_str(), b.weight))
        .collect();
    assert_eq!(split, [("orders.shop", 80), ("catalog.shop", 20)]);
    assert_eq!(f.routes[1].service, "catalog.shop");
    assert_eq!(f.routes[0].hosts, ["api.example.test"]);

    // A listener that takes HTTPRoutes only: the GRPCRoute does not attach, and says why.
    let mut only_http = https("api", Some("api.example.test"), "api-cert");
    only_http["allowedRoutes"]["kinds"] = json!([{"kind": "HTTPRoute"}]);
    w.gateways = vec![gateway(json!([only_http]))];
    let ns = w.run();
    assert_eq!(ns.gateways[0].listeners[0].supported_kinds, ["HTTPRoute"]);
    let (reason, why) = ns.verdicts[0].result.clone().expect_err("refused");
    assert_eq!(reason, "NotAllowedByListeners");
    assert!(why.contains("GRPCRoute"), "{why}");
}

#[path = "policy_tests.rs"]
mod policy;
