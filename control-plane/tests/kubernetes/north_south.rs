//! Gateway API north-south: a `GatewayClass` of Weft's controller, a `Gateway` and the
//! `HTTPRoute`s and a `GRPCRoute` (a method match: the exact call path, weighted backends)
//! attached to it in the stand-in API server, read by the real
//! `weft-control-plane` binary (`--kubernetes --gateway-dir`): the gateway file it writes
//! (listeners, certificates from Secrets, routes with two hosts, a `/v1/orders` → `/orders`
//! rewrite, weights), which the proxy's own gateway parser takes; the status of the class, the
//! Gateway (listeners, attached routes, a missing Secret) and each route (accepted, and
//! `UnsupportedValue`, `BackendNotFound`, `NoMatchingParent`, `NotAllowedByListeners`); an
//! HTTPRoute edit rewriting the file within a second.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use weft_kube_standin::{self as standin, kubeconfig};
use weft_policy::gateway::GatewayFile;

use super::shared::spawn_control_plane;
use super::source::{meta, shop, wait_until, TD};

const GROUP_V1: &str = "gateway.networking.k8s.io/v1";

pub(super) fn class(name: &str, controller: &str) -> Value {
    json!({"apiVersion": GROUP_V1, "kind": "GatewayClass",
           "metadata": {"name": name, "uid": format!("gc-{name}"), "resourceVersion": "1",
                        "creationTimestamp": "2026-11-20T09:00:00Z"},
           "spec": {"controllerName": controller}})
}

pub(super) fn tls_secret(name: &str, crt: &str, key: &str) -> Value {
    let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
           "metadata": meta("shop", name, &format!("secret-{name}")),
           "data": {"tls.crt": b(crt), "tls.key": b(key)}})
}

fn https(name: &str, host: &str, secret: &str) -> Value {
    json!({"name": name, "port": 8443, "protocol": "HTTPS", "hostname": host,
           "tls": {"certificateRefs": [{"name": secret}]}})
}

fn gateway() -> Value {
    json!({"apiVersion": GROUP_V1, "kind": "Gateway",
    "metadata": meta("shop", "edge", "gw-edge"),
    "spec": {"gatewayClassName": "weft", "listeners": [
        https("api", "api.example.test", "api-cert"),
        https("shop", "shop.example.test", "shop-cert"),
        {"name": "plain", "port": 8080, "protocol": "HTTP"},
        https("gone", "gone.example.test", "no-such-secret")
    ]}})
}

pub(super) fn route(name: &str, generation: i64, spec: Value) -> Value {
    let mut m = meta("shop", name, &format!("httproute-{name}"));
    m["generation"] = json!(generation);
    json!({"apiVersion": GROUP_V1, "kind": "HTTPRoute", "metadata": m, "spec": spec})
}

/// Two hosts; `/v1/orders` (or `prefix`) rewritten to `/orders`, `orders` and `frontend`
/// weighted `w`; everything else to `frontend`.
fn orders_api(generation: i64, prefix: &str, w: (i64, i64)) -> Value {
    route(
        "orders-api",
        generation,
        json!({
            "parentRefs": [{"name": "edge"}],
            "hostnames": ["api.example.test", "shop.example.test"],
            "rules": [
                {"matches": [{"path": {"type": "PathPrefix", "value": prefix}}],
                 "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {
                     "type": "ReplacePrefixMatch", "replacePrefixMatch": "/orders"}}}],
                 "backendRefs": [{"name": "orders", "port": 8080, "weight": w.0},
                                 {"name": "frontend", "port": 8080, "weight": w.1}]},
                {"backendRefs": [{"name": "frontend", "port": 8080}]}
            ]
        }),
    )
}

/// A GRPCRoute: `shop.Payments/Charge` on api.example.test, split 3:1 between `payments` and
/// `orders`.
fn payments_grpc() -> Value {
    let mut r = route(
        "payments-grpc",
        1,
        json!({
            "parentRefs": [{"name": "edge", "sectionName": "api"}],
            "hostnames": ["api.example.test"],
            "rules": [{
                "matches": [{"method": {"service": "shop.Payments", "method": "Charge"}}],
                "backendRefs": [{"name": "payments", "port": 8080, "weight": 3},
                                {"name": "orders", "port": 8080, "weight": 1}]
            }]
        }),
    );
    r["kind"] = json!("GRPCRoute");
    r
}

fn bad(name: &str, parent: Value, rule: Value) -> Value {
    route(
        name,
        1,
        json!({"parentRefs": [parent], "hostnames": ["api.example.test"], "rules": [rule]}),
    )
}

/// Weft's (Accepted, Programmed) or (Accepted, ResolvedRefs) conditions as (type, status,
/// reason, message).
fn conditions(v: &Value) -> Vec<(String, String, String, String)> {
    let s = |c: &Value, k: &str| c[k].as_str().unwrap_or_default().to_owned();
    v["conditions"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    (
                        s(c, "type"),
                        s(c, "status"),
                        s(c, "reason"),
                        s(c, "message"),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The Weft `status.parents[]` entry's Accepted (status, reason, message).
fn route_accepted(route: &Value) -> Option<(String, String, String)> {
    let parent = route["status"]["parents"]
        .as_array()?
        .iter()
        .find(|p| p["controllerName"] == "weft.dev/gateway-controller")?;
    let (_, s, r, m) = conditions(parent).into_iter().find(|c| c.0 == "Accepted")?;
    Some((s, r, m))
}

fn read_gateway(path: &Path) -> Option<GatewayFile> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_yaml::from_str(&text).ok()
}

// Long: one scenario against one control plane: the file, the statuses, then an edit.
#[test]
fn a_gateway_and_its_httproutes_and_grpcroute_become_the_gateway_file_with_status() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (crt, key) = (
        "-----BEGIN CERTIFICATE-----\nMIIBapi\n-----END CERTIFICATE-----\n",
        "-----BEGIN PRIVATE KEY-----\nMIIEapi\n-----END PRIVATE KEY-----\n",
    );
    let mut objects = shop();
    objects.extend([
        class("weft", "weft.dev/gateway-controller"),
        class("other", "example.com/other"),
        gateway(),
        tls_secret("api-cert", crt, key),
        tls_secret("shop-cert", crt, key),
        orders_api(1, "/v1/orders", (100, 0)),
        payments_grpc(),
        bad(
            "redirect",
            json!({"name": "edge"}),
            json!({"filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https"}}],
                   "backendRefs": [{"name": "orders", "port": 8080}]}),
        ),
        bad(
            "missing",
            json!({"name": "edge"}),
            json!({"matches": [{"path": {"type": "Exact", "value": "/m"}}],
                   "backendRefs": [{"name": "nowhere", "port": 8080}]}),
        ),
        bad(
            "no-listener",
            json!({"name": "edge", "sectionName": "nope"}),
            json!({"backendRefs": [{"name": "orders", "port": 8080}]}),
        ),
        bad(
            "plain-only",
            json!({"name": "edge", "sectionName": "plain"}),
            json!({"backendRefs": [{"name": "orders", "port": 8080}]}),
        ),
    ]);
    let api = rt.block_on(standin::ApiServer::start(objects));
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = kubeconfig(tmp.path(), &api);
    let dir = tmp.path().join("gateways");
    let cp = spawn_control_plane(
        tmp.path(),
        &config,
        "cp",
        TD,
        &[std::ffi::OsStr::new("--gateway-dir"), dir.as_os_str()],
    );
    let cp_log = cp.log_reader();

    // The gateway file: one HTTPS port, the redirect port, two certificates, the routes.
    let file = dir.join("shop/edge/gateway.yaml");
    let mut gw = None;
    wait_until(Duration::from_secs(30), "the gateway file", || {
        gw = read_gateway(&file);
        gw.is_some() && route_accepted(&api.get_in("HTTPRoute", "shop", "orders-api")).is_some()
    });
    gw = read_gateway(&file);
    let gw = gw.expect("read");
    assert_eq!(gw.listen.https, "0.0.0.0:8443");
    assert_eq!(gw.listen.http_redirect.as_deref(), Some("0.0.0.0:8080"));
    let hosts: Vec<&[String]> = gw.tls.certificates.iter().map(|c| &c.hosts[..]).collect();
    assert_eq!(hosts, [["api.example.test"], ["shop.example.test"]]);
    let cert = file.with_file_name(&gw.tls.certificates[0].cert);
    assert_eq!(std::fs::read_to_string(&cert).expect("cert"), crt);
    let key_file = file.with_file_name(&gw.tls.certificates[0].key);
    assert_eq!(std::fs::read_to_string(&key_file).expect("key"), key);
    let mode = std::fs::metadata(&key_file)
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let names: Vec<&str> = gw.routes.iter().map(|r| r.name.as_str()).collect();
    // The GRPCRoute's exact call path ranks before the prefix, the catch-all last.
    assert_eq!(
        names,
        [
            "shop.payments-grpc-r0-m0",
            "shop.orders-api-r0-m0",
            "shop.orders-api-r1-m0"
        ],
        "{gw:?}\n{}\n{}",
        api.get_in("HTTPRoute", "shop", "orders-api")["status"],
        cp_log()
    );
    let g = &gw.routes[0];
    assert_eq!(g.hosts, ["api.example.test"]);
    assert_eq!(
        g.matches.path.as_ref().and_then(|p| p.exact.as_deref()),
        Some("/shop.Payments/Charge")
    );
    let split: Vec<(&str, u32)> = (g.backends.iter())
        .map(|b| (b.service.as_str(), b.weight))
        .collect();
    assert_eq!(split, [("payments.shop", 3), ("orders.shop", 1)]);
    let r = &gw.routes[1];
    assert_eq!(r.hosts, ["api.example.test", "shop.example.test"]);
    assert_eq!(
        r.matches.path.as_ref().and_then(|p| p.prefix.as_deref()),
        Some("/v1/orders")
    );
    assert_eq!(
        r.rewrite.as_ref().map(|w| w.prefix.as_str()),
        Some("/orders")
    );
    assert_eq!(gw.routes[2].service, "frontend.shop");

    // Status: the class, the Gateway and its listeners, each route.
    wait_until(Duration::from_secs(20), "the statuses", || {
        api.try_get_in("Gateway", "shop", "edge").is_some_and(|g| {
            g["status"]["listeners"]
                .as_array()
                .is_some_and(|l| l.len() == 4)
        }) && [
            "orders-api",
            "redirect",
            "missing",
            "no-listener",
            "plain-only",
        ]
        .iter()
        .all(|n| route_accepted(&api.get_in("HTTPRoute", "shop", n)).is_some())
            && route_accepted(&api.get_in("GRPCRoute", "shop", "payments-grpc")).is_some()
    });
    let weft = api.get_in("GatewayClass", "", "weft");
    assert_eq!(conditions(&weft["status"])[0].1, "True", "{weft}");
    let other = api.get_in("GatewayClass", "", "other");
    assert!(
        other["status"].is_null() || other["status"]["conditions"].is_null(),
        "{other}"
    );
    let g = api.get_in("Gateway", "shop", "edge");
    let gc = conditions(&g["status"]);
    assert_eq!(
        (gc[0].0.as_str(), gc[0].1.as_str()),
        ("Accepted", "True"),
        "{g}"
    );
    assert_eq!(
        (gc[1].0.as_str(), gc[1].1.as_str()),
        ("Programmed", "True"),
        "{g}"
    );
    let listeners = g["status"]["listeners"].as_array().expect("listeners");
    let attached: Vec<i64> = listeners
        .iter()
        .map(|l| l["attachedRoutes"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(attached, [2, 1, 0, 0], "{g}");
    let kinds: Vec<&str> = (listeners[0]["supportedKinds"]
        .as_array()
        .into_iter()
        .flatten())
    .filter_map(|k| k["kind"].as_str())
    .collect();
    assert_eq!(kinds, ["HTTPRoute", "GRPCRoute"], "{g}");
    let gone = conditions(&listeners[3]);
    let resolved = gone
        .iter()
        .find(|c| c.0 == "ResolvedRefs")
        .expect("ResolvedRefs");
    assert_eq!(
        (resolved.1.as_str(), resolved.2.as_str()),
        ("False", "InvalidCertificateRef")
    );
    assert!(resolved.3.contains("no-such-secret"), "{resolved:?}");
    let status = |n: &str| route_accepted(&api.get_in("HTTPRoute", "shop", n)).expect("status");
    assert_eq!(status("orders-api").0, "True");
    let grpc = route_accepted(&api.get_in("GRPCRoute", "shop", "payments-grpc"));
    assert_eq!(grpc.map(|s| s.0).as_deref(), Some("True"));
    for (name, reason, says) in [
        ("redirect", "UnsupportedValue", "filters[0].type"),
        ("missing", "BackendNotFound", "nowhere"),
        ("no-listener", "NoMatchingParent", "nope"),
        ("plain-only", "NotAllowedByListeners", "redirects"),
    ] {
        let (s, r, m) = status(name);
        assert_eq!((s.as_str(), r.as_str()), ("False", reason), "{name}: {m}");
        assert!(m.contains(says), "{name}: {m}");
    }

    // An edit (a new prefix, the weights moved to frontend) rewrites the file within a second.
    let before = std::fs::metadata(&file)
        .and_then(|m| m.modified())
        .expect("mtime");
    let edited = Instant::now();
    api.put(orders_api(2, "/v2/orders", (0, 100)));
    wait_until(Duration::from_secs(20), "the edited route", || {
        read_gateway(&file).is_some_and(|g| {
            g.routes[1]
                .matches
                .path
                .as_ref()
                .and_then(|p| p.prefix.as_deref())
                == Some("/v2/orders")
        })
    });
    let took = edited.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "the file followed the edit in {took:?}"
    );
    let gw = read_gateway(&file).expect("file");
    assert_eq!(gw.routes[1].service, "frontend.shop");
    assert!(
        std::fs::metadata(&file)
            .and_then(|m| m.modified())
            .expect("mtime")
            > before
    );
    assert!(!cp_log().contains("panicked"), "{}", cp_log());
}
