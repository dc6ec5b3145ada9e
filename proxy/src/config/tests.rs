use std::path::Path;

use super::*;

const BASE: &str = r#"
service:
  name: frontend
  identity: spiffe://weft.local/ns/default/sa/frontend
  app: 127.0.0.1:8080
tls: {cert: c.pem, key: k.pem, trust_bundle: ca.pem}
services:
  - name: orders
    identity: spiffe://weft.local/ns/default/sa/orders
    endpoints:
      - {address: 127.0.0.1:16001, labels: {version: v1}}
      - {address: 127.0.0.1:16002, labels: {version: v2}}
"#;

fn parse_str(s: &str) -> Result<Config, ConfigError> {
    parse(s, Path::new("weft.yaml"), Path::new("/etc/weft"))
}

fn with_routes(routes: &str) -> String {
    format!("{BASE}routes:\n{routes}")
}

fn invalid(s: &str) -> Vec<FieldError> {
    match parse_str(s) {
        Err(ConfigError::Invalid { errors, .. }) => errors,
        other => panic!("expected invalid, got {other:?}"),
    }
}

#[test]
fn defaults_apply_and_paths_resolve() {
    let c = parse_str(BASE).expect("valid");
    assert_eq!(c.listen.outbound.to_string(), DEFAULT_OUTBOUND);
    assert_eq!(c.listen.inbound.to_string(), DEFAULT_INBOUND);
    assert_eq!(c.listen.admin.to_string(), DEFAULT_ADMIN);
    assert_eq!(c.workers, DEFAULT_WORKERS);
    assert_eq!(c.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
    assert_eq!(c.tls.cert, Path::new("/etc/weft/c.pem"));
    assert_eq!(c.own.protocol, Protocol::Http);
    let s = &c.services[0];
    assert_eq!(s.lb, LbPolicy::P2cEwma);
    assert_eq!(s.hosts, ["orders"]);
    assert!(s.routes.is_empty());
}

#[test]
fn unknown_field_is_a_syntax_error_with_line() {
    let bad = BASE.replace(
        "  app: 127.0.0.1:8080",
        "  app: 127.0.0.1:8080\n  colour: blue",
    );
    match parse_str(&bad) {
        Err(e @ ConfigError::Syntax { .. }) => {
            let msg = e.to_string();
            assert!(msg.starts_with("weft.yaml:6:"), "{msg}");
            assert!(msg.contains("unknown field `colour`"), "{msg}");
        }
        other => panic!("expected syntax error, got {other:?}"),
    }
}

#[test]
fn every_bad_field_is_named_with_its_value() {
    let bad = with_routes(
        r#"
  - name: r1
    service: nope
  - name: r2
    service: orders
    match: {path: {regex: "(("}, method: "G ET"}
  - name: r3
    service: orders
    match: {path: {prefix: api}}
    backends: [{subset: {version: v9}, weight: 5}]
    timeout: soon
"#,
    )
    .replace("127.0.0.1:8080", "10.0.0.1:8080");
    let errors = invalid(&bad);
    let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    let has = |field: &str, word: &str| {
        assert!(
            errors
                .iter()
                .any(|e| e.field == field && e.reason.contains(word)),
            "missing {field} ~ {word} in {text:#?}"
        )
    };
    has("service.app", "10.0.0.1:8080");
    has("routes[0].service", "\"nope\"");
    has("routes[1].match.path.regex", "((");
    has("routes[1].match.method", "G ET");
    has("routes[2].match.path", "must start with '/'");
    has("routes[2].backends[0].subset", "v9");
    has("routes[2].timeout", "soon");
}

#[test]
fn routes_match_rewrite_and_split() {
    let c = parse_str(&with_routes(
        r#"
  - name: api
    service: orders
    match:
      path: {prefix: /api/}
      method: get
      headers: [{name: x-canary, exact: "yes"}, {name: x-debug}]
    backends: [{subset: {version: v1}, weight: 90}, {subset: {version: v2}, weight: 10}]
    timeout: 250ms
    rewrite: {prefix: /v2}
    request_headers: {set: {x-route: api}, remove: [x-debug]}
  - name: rest
    service: orders
"#,
    ))
    .expect("valid");
    let r = &c.services[0].routes;
    assert_eq!(r.len(), 2);
    assert!(matches!(&r[0].matcher.path, Some(PathMatch::Prefix(p)) if p == "/api"));
    assert_eq!(r[0].matcher.method, Some(Method::GET));
    assert_eq!(r[0].timeout, Some(Duration::from_millis(250)));
    assert_eq!(r[0].rewrite_prefix.as_deref(), Some("/v2"));
    assert_eq!(r[0].backends.iter().map(|b| b.weight).sum::<u32>(), 100);
    assert!(r[1].matcher.is_catch_all());
}

#[test]
fn shadowed_and_duplicate_routes_are_rejected() {
    let errors = invalid(&with_routes(
        r#"
  - {name: all, service: orders}
  - {name: later, service: orders, match: {path: {exact: /x}}}
"#,
    ));
    assert!(errors
        .iter()
        .any(|e| e.field == "routes[1].match" && e.reason.contains("shadowed")));
    let errors = invalid(&with_routes(
        r#"
  - {name: a, service: orders, match: {path: {exact: /x}}}
  - {name: a, service: orders, match: {path: {exact: /x}}}
"#,
    ));
    assert!(errors.iter().any(|e| e.field == "routes[1].name"));
    assert!(errors.iter().any(|e| e.reason.contains("same match")));
}

#[test]
fn rewrite_needs_a_prefix_match_and_tcp_needs_a_port() {
    let errors = invalid(&with_routes(
        "  - {name: a, service: orders, rewrite: {prefix: /v2}}\n",
    ));
    assert!(errors.iter().any(|e| e.field == "routes[0].rewrite"));
    let tcp = BASE.replace(
        "    identity: spiffe://weft.local/ns/default/sa/orders\n",
        "    identity: spiffe://weft.local/ns/default/sa/orders\n    protocol: tcp\n",
    );
    let errors = invalid(&tcp);
    assert!(errors.iter().any(|e| e.field == "services[0].port"));
}

#[test]
fn listeners_must_be_loopback_and_distinct() {
    let bad = BASE.replace("tls:", "listen: {outbound: 0.0.0.0:15001}\ntls:");
    let errors = invalid(&bad);
    assert!(errors
        .iter()
        .any(|e| e.field == "listen.outbound" && e.reason.contains("loopback")));
    let bad = BASE.replace("tls:", "listen: {admin: 127.0.0.1:15006}\ntls:");
    let errors = invalid(&bad);
    assert!(errors
        .iter()
        .any(|e| e.field == "listen" && e.reason.contains("distinct")));
}

#[test]
fn errors_render_with_file_field_and_reason() {
    let e = parse_str(&BASE.replace("sa/orders", "sa/Orders!")).expect_err("invalid");
    let msg = e.to_string();
    assert!(
        msg.starts_with("weft.yaml: services[0].identity: bad SPIFFE identity"),
        "{msg}"
    );
}
