//! GatewayPolicy attachment: what the routes made from a targeted HTTPRoute carry, the
//! gateway file's `auth`, conflicts, invalid policies (closed routes) and the status.

use super::*;
use crate::policy::kube::gateway_api::policy_attach::PolicyOutcome;
use crate::policy::kube::gateway_api::policy_status;
use weft_policy::gateway_auth::{GatewayAuth, RouteAccess};

fn policy(name: &str, created: &str, spec: Value) -> DynamicObject {
    obj(json!({
        "apiVersion": "weft.dev/v1alpha1", "kind": "GatewayPolicy",
        "metadata": {"name": name, "namespace": "shop", "generation": 4,
                     "creationTimestamp": created},
        "spec": spec
    }))
}

fn target(name: &str, section: Option<&str>) -> Value {
    let mut t = json!({"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": name});
    if let Some(s) = section {
        t["sectionName"] = json!(s);
    }
    t
}

/// A JWT policy on `targets` (provider `main`, keys from a JWKS URL), with CORS and a
/// per-subject limit.
fn jwt_policy(name: &str, created: &str, targets: Value) -> DynamicObject {
    policy(
        name,
        created,
        json!({
            "targetRefs": targets,
            "auth": {"jwt_providers": [{
                "name": "main", "issuer": "https://issuer.example.test",
                "audiences": ["orders"],
                "jwks_url": "https://issuer.example.test/jwks.json"
            }]},
            "access": {
                "auth": {"jwt": "main"},
                "cors": {"allow_origins": ["https://shop.example.test"]},
                "client_limit": {"key": "subject", "per_second": 5.0}
            }
        }),
    )
}

/// `orders_route` with its rules named `orders` and `rest`.
fn named_route() -> DynamicObject {
    let mut r = orders_route();
    let rules = r.data["spec"]["rules"].as_array_mut().expect("rules");
    rules[0]["name"] = json!("orders");
    rules[1]["name"] = json!("rest");
    r
}

fn world(policies: Vec<DynamicObject>) -> World {
    let mut w = World::new(
        json!([https("api", Some("api.example.test"), "api-cert")]),
        vec![named_route()],
    );
    w.policies = policies;
    w
}

fn file(ns: &NorthSouth) -> weft_policy::gateway::GatewayFile {
    ns.gateways[0].config.clone().expect("a config").file
}

fn only(ns: &NorthSouth, name: &str) -> PolicyOutcome {
    (ns.policies.iter())
        .find(|p| p.key.name == name)
        .cloned()
        .unwrap_or_else(|| panic!("policy {name} in {:?}", ns.policies))
}

fn edge() -> crate::policy::kube::crds::AncestorRef {
    crate::policy::kube::crds::AncestorRef {
        group: "gateway.networking.k8s.io".into(),
        kind: "Gateway".into(),
        namespace: "infra".into(),
        name: "edge".into(),
    }
}

#[test]
fn a_jwt_policy_on_an_httproute_reaches_every_route_made_from_it() {
    let ns = world(vec![jwt_policy(
        "orders-jwt",
        "2026-02-01T00:00:00Z",
        json!([target("orders-api", None)]),
    )])
    .run();
    assert_eq!(ns.verdicts[0].result, Ok(()), "{:?}", ns.verdicts);
    let f = file(&ns);
    assert_eq!(f.auth.jwt_providers.len(), 1, "{:?}", f.auth);
    let p = &f.auth.jwt_providers[0];
    assert_eq!(p.name, "shop/orders-jwt/main", "named after its policy");
    assert_eq!(
        p.jwks_url.as_deref(),
        Some("https://issuer.example.test/jwks.json")
    );
    assert_eq!(f.routes.len(), 2);
    for r in &f.routes {
        let access = r.access.clone().expect("an access block");
        let auth = access.auth.clone().expect("auth");
        assert_eq!(
            auth.jwt.as_deref(),
            Some("shop/orders-jwt/main"),
            "{}",
            r.name
        );
        assert_eq!(
            access.client_limit.as_ref().map(|l| l.key.as_str()),
            Some("subject")
        );
        // The route and the file's auth validate as the gateway validates them.
        let gw = GatewayAuth::try_from(f.auth.clone()).expect("the gateway's auth");
        RouteAccess::validate(access, &gw, "").expect("the route's access");
    }
    let o = only(&ns, "orders-jwt");
    assert_eq!(o.ancestors.len(), 1);
    assert_eq!(o.ancestors[0].0, edge());
    assert!(o.ancestors[0].1.accepted, "{o:?}");
    assert_eq!(o.ancestors[0].1.reason, "Accepted");
}

#[test]
fn a_section_name_picks_one_rule_and_wins_over_the_whole_route() {
    let cors_only = policy(
        "public-cors",
        "2026-01-15T00:00:00Z",
        json!({"targetRefs": [target("orders-api", None)],
               "access": {"cors": {"allow_origins": ["*"]}}}),
    );
    let ns = world(vec![
        cors_only,
        jwt_policy(
            "orders-jwt",
            "2026-02-01T00:00:00Z",
            json!([target("orders-api", Some("orders"))]),
        ),
    ])
    .run();
    let f = file(&ns);
    let by_name = |n: &str| {
        (f.routes.iter())
            .find(|r| r.name == n)
            .and_then(|r| r.access.clone())
            .unwrap_or_else(|| panic!("{n} with access: {:?}", f.routes))
    };
    let orders = by_name("shop.orders-api-r0-m0");
    assert_eq!(
        orders.auth.and_then(|a| a.jwt).as_deref(),
        Some("shop/orders-jwt/main")
    );
    let rest = by_name("shop.orders-api-r1-m0");
    assert_eq!(rest.auth, None, "the rest is public");
    assert_eq!(rest.cors.map(|c| c.allow_origins), Some(vec!["*".into()]));
    for name in ["public-cors", "orders-jwt"] {
        let o = only(&ns, name);
        assert!(o.ancestors[0].1.accepted, "{o:?}");
    }
    // Both rules named by policies of their own: the whole-route one is in force nowhere.
    let ns = world(vec![
        policy(
            "public-cors",
            "2026-01-15T00:00:00Z",
            json!({"targetRefs": [target("orders-api", None)],
                   "access": {"cors": {"allow_origins": ["*"]}}}),
        ),
        jwt_policy(
            "orders-jwt",
            "2026-02-01T00:00:00Z",
            json!([
                target("orders-api", Some("orders")),
                target("orders-api", Some("rest"))
            ]),
        ),
    ])
    .run();
    assert!(file(&ns).routes.iter().all(|r| r
        .access
        .as_ref()
        .and_then(|a| a.auth.as_ref())
        .is_some_and(|a| a.jwt.is_some())));
    let said = &only(&ns, "public-cors").ancestors[0].1;
    assert!(!said.accepted, "{said:?}");
    assert_eq!(said.reason, "Conflicted");
}

#[test]
fn of_two_policies_on_one_route_the_older_wins_and_the_other_is_conflicted() {
    let ns = world(vec![
        jwt_policy(
            "newer",
            "2026-03-01T00:00:00Z",
            json!([target("orders-api", None)]),
        ),
        jwt_policy(
            "older",
            "2026-02-01T00:00:00Z",
            json!([target("orders-api", None)]),
        ),
    ])
    .run();
    let f = file(&ns);
    let names: Vec<&str> = (f.auth.jwt_providers.iter())
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["shop/older/main"], "only the winner's provider");
    let newer = only(&ns, "newer");
    let said = &newer.ancestors[0].1;
    assert!(!said.accepted);
    assert_eq!(said.reason, "Conflicted");
    assert!(
        said.message.contains("GatewayPolicy shop/older"),
        "{said:?}"
    );
    assert!(only(&ns, "older").ancestors[0].1.accepted);
}

#[test]
fn an_invalid_policy_closes_its_routes_and_says_why() {
    let cases = [
        // An access block naming a provider the policy does not have.
        json!({"targetRefs": [target("orders-api", None)],
               "access": {"auth": {"jwt": "nobody"}}}),
        // A JWKS file by a relative path (it would resolve into the gateway's config dir).
        json!({"targetRefs": [target("orders-api", None)],
               "auth": {"jwt_providers": [{"name": "main", "issuer": "i", "jwks_file": "jwks.json"}]},
               "access": {"auth": {"jwt": "main"}}}),
        // A field the policy does not have.
        json!({"targetRefs": [target("orders-api", None)], "acces": {}}),
        // A target of a kind Weft does not serve next to a good one.
        json!({"targetRefs": [target("orders-api", None),
                              {"group": "", "kind": "Service", "name": "orders"}]}),
    ];
    for spec in cases {
        let ns = world(vec![policy("bad", "2026-02-01T00:00:00Z", spec.clone())]).run();
        let f = file(&ns);
        assert!(f.auth.jwt_providers.is_empty(), "{spec}: {:?}", f.auth);
        for r in &f.routes {
            let auth = r.access.clone().and_then(|a| a.auth);
            assert!(
                auth.is_some_and(|a| a.deny),
                "{spec}: {} closed: {:?}",
                r.name,
                r.access
            );
        }
        let o = only(&ns, "bad");
        let said = &o.ancestors[0].1;
        assert!(!said.accepted, "{spec}");
        assert_eq!(said.reason, "Invalid", "{spec}");
        assert!(said.message.contains("spec"), "{spec}: {said:?}");
        // A closed route is a gateway route the gateway's own checks take.
        let gw = GatewayAuth::try_from(f.auth.clone()).expect("auth");
        let access = f.routes[0].access.clone().expect("access");
        let checked = RouteAccess::validate(access, &gw, "").expect("a closed route validates");
        assert_eq!(checked.auth, weft_policy::gateway_auth::RouteAuth::Deny);
    }
}

#[test]
fn an_invalid_policy_closes_a_route_even_when_a_valid_one_is_older() {
    let ns = world(vec![
        jwt_policy(
            "good",
            "2026-02-01T00:00:00Z",
            json!([target("orders-api", None)]),
        ),
        policy(
            "broken",
            "2026-03-01T00:00:00Z",
            json!({"targetRefs": [target("orders-api", None)],
                   "access": {"auth": {"api_key": "missing"}}}),
        ),
    ])
    .run();
    let f = file(&ns);
    for r in &f.routes {
        let auth = r.access.clone().and_then(|a| a.auth).expect("auth");
        assert!(auth.deny, "{}: {auth:?}", r.name);
    }
}

#[test]
fn a_policy_whose_target_is_missing_says_target_not_found() {
    let ns = world(vec![jwt_policy(
        "lost",
        "2026-02-01T00:00:00Z",
        json!([
            target("no-such-route", None),
            target("orders-api", Some("nope"))
        ]),
    )])
    .run();
    let f = file(&ns);
    assert!(
        f.routes.iter().all(|r| r.access.is_none()),
        "{:?}",
        f.routes
    );
    assert!(f.auth.jwt_providers.is_empty());
    let o = only(&ns, "lost");
    assert_eq!(o.ancestors.len(), 1);
    let (ancestor, said) = &o.ancestors[0];
    assert_eq!(
        (ancestor.kind.as_str(), ancestor.name.as_str()),
        ("HTTPRoute", "no-such-route"),
        "no Gateway: the target stands in"
    );
    assert!(!said.accepted);
    assert_eq!(said.reason, "TargetNotFound");
    assert!(
        said.message.contains("no such route") && said.message.contains("no rule named nope"),
        "{said:?}"
    );
}

#[test]
fn policy_status_has_one_ancestor_per_gateway_and_keeps_other_controllers() {
    let mut p = jwt_policy(
        "orders-jwt",
        "2026-02-01T00:00:00Z",
        json!([target("orders-api", None)]),
    );
    let ns = world(vec![p.clone()]).run();
    let o = only(&ns, "orders-jwt");
    p.data["status"] = json!({"ancestors": [{
        "ancestorRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway",
                        "namespace": "infra", "name": "other"},
        "controllerName": "example.com/other", "conditions": []
    }]});
    let mut sent = HashMap::new();
    let writes = policy_status::pending(
        &ns.policies,
        std::slice::from_ref(&p),
        &mut sent,
        "2026-04-01T00:00:00Z",
    );
    assert_eq!(writes.len(), 1);
    let (key, status) = &writes[0];
    assert_eq!(key, &o.key);
    let ancestors = status["ancestors"].as_array().expect("ancestors");
    assert_eq!(ancestors.len(), 2, "{status:#}");
    assert_eq!(ancestors[0]["controllerName"], "example.com/other");
    let ours = &ancestors[1];
    assert_eq!(
        ours["controllerName"],
        crate::policy::kube::gateway_api::CONTROLLER_NAME
    );
    assert_eq!(ours["ancestorRef"]["name"], "edge");
    assert_eq!(ours["conditions"][0]["type"], "Accepted");
    assert_eq!(ours["conditions"][0]["status"], "True");
    assert_eq!(ours["conditions"][0]["observedGeneration"], 4);
    // The same again: nothing to send while the first is not seen back.
    let again = policy_status::pending(&ns.policies, &[p.clone()], &mut sent, "later");
    assert!(again.is_empty(), "{again:?}");
    // Seen back: nothing to write either.
    p.data["status"] = status.clone();
    let mut fresh = HashMap::new();
    let seen = policy_status::pending(&ns.policies, &[p], &mut fresh, "later");
    assert!(seen.is_empty(), "{seen:?}");
}

#[test]
fn the_example_in_kubernetes_md_is_accepted() {
    let doc = include_str!("../../../../../docs/KUBERNETES.md");
    let start = doc.find("kind: GatewayPolicy\n").expect("the example");
    let block = &doc[doc[..start].rfind("```yaml\n").expect("its block") + 8..];
    let block = &block[..block.find("```").expect("its end")];
    let mut value: Value = serde_yaml::from_str(block).expect("the example reads");
    value["metadata"]["creationTimestamp"] = json!("2026-02-01T00:00:00Z");
    let ns = world(vec![obj(value)]).run();
    let o = only(&ns, "orders-jwt");
    assert!(o.ancestors[0].1.accepted, "{o:?}");
    let f = file(&ns);
    assert_eq!(f.auth.jwt_providers[0].name, "shop/orders-jwt/issuer");
    assert!(
        f.routes.iter().all(|r| r.access.is_some()),
        "{:?}",
        f.routes
    );
}

#[test]
fn a_policy_on_one_rule_of_a_grpc_route_reaches_that_rule_only() {
    let mut grpc = route(
        "payments-grpc",
        "2026-01-01T00:00:00Z",
        json!({
            "parentRefs": [to_edge(json!({}))],
            "hostnames": ["api.example.test"],
            "rules": [
                {"name": "charge",
                 "matches": [{"method": {"service": "shop.Payments", "method": "Charge"}}],
                 "backendRefs": [{"name": "orders", "port": 8080}]},
                {"matches": [{"method": {"service": "shop.Catalog"}}],
                 "backendRefs": [{"name": "catalog", "port": 8080}]}
            ]
        }),
    );
    grpc.types.as_mut().expect("types").kind = "GRPCRoute".into();
    let mut w = world(vec![jwt_policy(
        "charge-jwt",
        "2026-02-01T00:00:00Z",
        json!([{"group": "gateway.networking.k8s.io", "kind": "GRPCRoute",
                "name": "payments-grpc", "sectionName": "charge"}]),
    )]);
    w.routes.clear();
    w.grpc_routes.push(grpc);
    let ns = w.run();
    let f = file(&ns);
    let access: Vec<(&str, bool)> = (f.routes.iter())
        .map(|r| (r.name.as_str(), r.access.is_some()))
        .collect();
    assert_eq!(access.iter().filter(|(_, a)| *a).count(), 1, "{access:?}");
    let charged = (f.routes.iter())
        .find(|r| r.access.is_some())
        .expect("the charge rule");
    assert!(charged.name.contains("-r0-"), "{}", charged.name);
    assert!(only(&ns, "charge-jwt").ancestors[0].1.accepted);
}
