use std::path::Path;

use super::*;
use http::Method;

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
fn metrics_listener_is_optional_any_address_and_distinct() {
    assert_eq!(parse_str(BASE).expect("valid").listen.metrics, None);
    let ok = BASE.replace("tls:", "listen: {metrics: 0.0.0.0:15020}\ntls:");
    let c = parse_str(&ok).expect("valid");
    assert_eq!(
        c.listen.metrics.map(|m| m.to_string()).as_deref(),
        Some("0.0.0.0:15020")
    );
    let clash = BASE.replace("tls:", "listen: {metrics: 0.0.0.0:15000}\ntls:");
    assert!(invalid(&clash)
        .iter()
        .any(|e| e.field == "listen" && e.reason.contains("distinct")));
    let bad = BASE.replace("tls:", "listen: {metrics: \"nowhere\"}\ntls:");
    assert!(invalid(&bad)
        .iter()
        .any(|e| e.field == "listen.metrics" && e.reason.contains("nowhere")));
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

#[test]
fn resilience_defaults_are_documented_values() {
    let c = parse_str(BASE).expect("valid");
    let s = &c.services[0];
    assert_eq!(s.retry_budget, BudgetConfig::default());
    assert_eq!(s.outlier, OutlierConfig::default());
    assert!(!s.outlier_counts_5xx);
    assert_eq!(s.limits, Limits::default());
    assert_eq!(c.idle_timeout, DEFAULT_IDLE_TIMEOUT);
    let c = parse_str(&with_routes(
        "  - name: r\n    service: orders\n    retry: {on: [5xx]}\n",
    ))
    .expect("valid");
    let r = &c.services[0].routes[0].retry;
    assert!(r.on.server_error && !r.on.connect_failure);
    assert_eq!(r.max_attempts, DEFAULT_RETRY_ATTEMPTS);
    assert_eq!(r.backoff, Backoff::default());
}

#[test]
fn resilience_knobs_parse_into_core_types() {
    let text = format!(
        "{}    retry_budget: {{ratio: 0.5, min_per_second: 3, window: 30s}}\n\
         \x20   outlier_detection: {{consecutive_failures: 7, base_ejection_time: 1s, max_ejection_time: 1m, max_ejected_percent: 30, failures: 5xx}}\n\
         \x20   limits: {{max_in_flight: 10, max_pending: 0, queue_timeout: 50ms, max_connections: 3}}\n\
         routes:\n  - name: r\n    service: orders\n    timeout: 2s\n\
         \x20   retry: {{on: [connect-failure, reset, timeout], statuses: [409], grpc_codes: [unavailable, 8], attempts: 4, per_try_timeout: 500ms, backoff: {{base: 10ms, max: 1s}}, non_idempotent: true}}\n\
         \x20   rate_limit: {{requests_per_second: 2.5}}\n\
         \x20   fault: {{delay: {{percent: 10, duration: 5ms}}, abort: {{percent: 1.5, status: 418}}}}\n",
        BASE
    );
    let c = parse_str(&text).expect("valid");
    let s = &c.services[0];
    assert_eq!(s.retry_budget.ratio, 0.5);
    assert_eq!(s.retry_budget.window, Duration::from_secs(30));
    assert_eq!(s.outlier.consecutive_failures, 7);
    assert_eq!(s.outlier.max_ejection, Duration::from_secs(60));
    assert!(s.outlier_counts_5xx);
    assert_eq!(s.limits.max_pending, 0);
    assert_eq!(s.limits.max_connections, 3);
    let r = &s.routes[0];
    assert_eq!(r.retry.on.grpc_codes, [14, 8]);
    assert_eq!(r.retry.on.statuses, [409]);
    assert!(r.retry.on.timeout && r.retry.on.reset && !r.retry.on.gateway_error);
    assert_eq!(r.retry.per_try_timeout, Some(Duration::from_millis(500)));
    assert!(r.retry.non_idempotent);
    let rl = r.rate_limit.expect("rate limit");
    assert_eq!(
        (rl.per_second, rl.burst),
        (2.5, 3),
        "burst defaults to a second of tokens"
    );
    let f = r.fault.expect("fault");
    assert_eq!(f.delay, Some((10.0, Duration::from_millis(5))));
    assert_eq!(f.abort, Some((1.5, 418)));
}

#[test]
fn bad_resilience_knobs_name_field_and_value() {
    let text = format!(
        "{}    outlier_detection: {{base_ejection_time: 10s, max_ejection_time: 1s, failures: 4xx}}\n\
         \x20   limits: {{max_in_flight: 0}}\n\
         routes:\n  - name: r\n    service: orders\n    timeout: 100ms\n\
         \x20   retry: {{on: [5xx, sometimes], statuses: [700], grpc_codes: [nope, 0], attempts: 11, per_try_timeout: 100ms}}\n\
         \x20   rate_limit: {{requests_per_second: 0}}\n\
         \x20   fault: {{abort: {{percent: 120, status: 99}}}}\n",
        BASE
    );
    let errors = invalid(&text);
    let has = |field: &str, words: &str| {
        assert!(
            errors
                .iter()
                .any(|e| e.field == field && e.reason.contains(words)),
            "no error {field}: {words} in {errors:?}"
        )
    };
    has(
        "services[0].outlier_detection.max_ejection_time",
        "base_ejection_time",
    );
    has("services[0].outlier_detection.failures", "\"4xx\"");
    has("services[0].limits.max_in_flight", "got 0");
    has("routes[0].retry.on[1]", "\"sometimes\"");
    has("routes[0].retry.statuses[0]", "700");
    has("routes[0].retry.grpc_codes[0]", "nope");
    has("routes[0].retry.grpc_codes[1]", "0");
    has("routes[0].retry.attempts", "got 11");
    has("routes[0].retry.per_try_timeout", "impossible");
    has("routes[0].rate_limit.requests_per_second", "got 0");
    has("routes[0].fault.abort.percent", "got 120");
    has("routes[0].fault.abort.status", "got 99");
}

#[test]
fn per_caller_limits_are_inbound_only() {
    let text = with_routes(
        "  - name: r\n    service: orders\n    rate_limit: {requests_per_second: 5, per_caller: true}\n",
    );
    let errors = invalid(&text);
    assert_eq!(errors[0].field, "routes[0].rate_limit.per_caller");
    let inbound = BASE.replace(
        "  app: 127.0.0.1:8080",
        "  app: 127.0.0.1:8080\n  rate_limit: {requests_per_second: 5, burst: 2, per_caller: true}",
    );
    let c = parse_str(&inbound).expect("valid");
    assert_eq!(
        c.own.rate_limit,
        Some(RateLimit {
            per_second: 5.0,
            burst: 2,
            per_caller: true
        })
    );
}

#[test]
fn tracing_defaults_propagate_only() {
    let c = parse_str(BASE).expect("valid");
    assert_eq!(c.tracing, Tracing::default());
    assert_eq!(c.tracing.collector, None);
    assert_eq!(c.tracing.sampling, DEFAULT_TRACE_SAMPLING);
    assert_eq!(c.tracing.max_queue, DEFAULT_TRACE_MAX_QUEUE);
    assert_eq!(c.tracing.export_interval, DEFAULT_TRACE_EXPORT_INTERVAL);
    let c = parse_str(&format!(
        "{BASE}tracing: {{collector: \"http://127.0.0.1:4317/\", sampling: 1, max_queue: 10, export_interval: 100ms}}\n"
    ))
    .expect("valid");
    assert_eq!(
        c.tracing,
        Tracing {
            collector: Some("http://127.0.0.1:4317".into()),
            sampling: 1.0,
            max_queue: 10,
            export_interval: Duration::from_millis(100),
        }
    );
    let c = parse_str(&format!(
        "{BASE}tracing: {{collector: \"http://otel-agent.monitoring:4317\", sampling: 0}}\n"
    ))
    .expect("valid");
    assert_eq!(
        c.tracing.collector.as_deref(),
        Some("http://otel-agent.monitoring:4317")
    );
    assert_eq!(c.tracing.sampling, 0.0);
}

#[test]
fn bad_tracing_knobs_name_field_and_value() {
    let errors = invalid(&format!(
        "{BASE}tracing: {{collector: \"127.0.0.1:4317\", sampling: 1.5, max_queue: 0, export_interval: 1h}}\n"
    ));
    let has = |field: &str, words: &str| {
        assert!(
            errors
                .iter()
                .any(|e| e.field == field && e.reason.contains(words)),
            "no error {field}: {words} in {errors:?}"
        )
    };
    has("tracing.collector", "\"127.0.0.1:4317\"");
    has("tracing.sampling", "got 1.5");
    has("tracing.max_queue", "got 0");
    has("tracing.export_interval", "1h");
    for (bad, why) in [
        ("https://collector:4317", "TLS"),
        ("http://collector", "no port"),
        ("http://collector:4317/v1/traces", "no path"),
        ("grpc://collector:4317", "scheme"),
        ("http://:4317", "no host"),
    ] {
        let errors = invalid(&format!("{BASE}tracing: {{collector: \"{bad}\"}}\n"));
        assert!(
            errors
                .iter()
                .any(|e| e.field == "tracing.collector" && e.reason.contains(why)),
            "{bad}: {errors:?}"
        );
    }
    let errors = invalid(&format!("{BASE}tracing: {{sampling: -0.1}}\n"));
    assert_eq!(errors[0].field, "tracing.sampling");
    match parse_str(&format!("{BASE}tracing: {{endpoint: x}}\n")) {
        Err(e @ ConfigError::Syntax { .. }) => {
            assert!(e.to_string().contains("unknown field `endpoint`"), "{e}")
        }
        other => panic!("expected syntax error, got {other:?}"),
    }
}

#[test]
fn authorization_rules_parse_and_decide() {
    let text = format!(
        "{BASE}authorization:\n  default: deny\n  rules:\n\
         \x20   - {{name: reads, from: [spiffe://weft.local/ns/default/sa/frontend], paths: [/api/], methods: [GET, HEAD]}}\n\
         \x20   - {{name: ops, from: [\"*\"], paths: [/health]}}\n\
         \x20   - {{name: db, from: [spiffe://weft.local/ns/default/sa/batch]}}\n"
    );
    let c = parse_str(&text).expect("valid");
    let a = &c.authorization;
    assert!(!a.default_allow);
    let fe = "spiffe://weft.local/ns/default/sa/frontend";
    let other = "spiffe://weft.local/ns/default/sa/other";
    assert_eq!(
        a.check_http(fe, &Method::GET, "/api/orders"),
        Some(Allowed::ByRule("reads"))
    );
    assert_eq!(
        a.check_http(fe, &Method::GET, "/api"),
        Some(Allowed::ByRule("reads"))
    );
    assert_eq!(a.check_http(fe, &Method::POST, "/api/orders"), None);
    assert_eq!(a.check_http(fe, &Method::GET, "/apiary"), None);
    assert_eq!(a.check_http(other, &Method::GET, "/api/orders"), None);
    assert_eq!(
        a.check_http(other, &Method::POST, "/health"),
        Some(Allowed::ByRule("ops"))
    );
    assert!(a.allows_tcp("spiffe://weft.local/ns/default/sa/batch"));
    assert!(!a.allows_tcp(fe), "frontend's rule has path conditions");
    assert!(parse_str(BASE).expect("valid").authorization.default_allow);
}

#[test]
fn bad_authorization_names_field_and_value() {
    let text = format!(
        "{BASE}authorization:\n  default: maybe\n  rules:\n\
         \x20   - {{name: a, from: [frontend], paths: [api], methods: [get]}}\n\
         \x20   - {{name: a, from: []}}\n"
    );
    let errors = invalid(&text);
    let has = |field: &str, words: &str| {
        assert!(
            errors
                .iter()
                .any(|e| e.field == field && e.reason.contains(words)),
            "no error {field}: {words} in {errors:?}"
        )
    };
    has("authorization.default", "\"maybe\"");
    has("authorization.rules[0].from[0]", "frontend");
    has("authorization.rules[0].paths[0]", "\"api\"");
    has("authorization.rules[0].methods[0]", "\"get\"");
    has("authorization.rules[1].name", "duplicate");
    has("authorization.rules[1].from", "at least one");
}

// --- The split: local part + policy part -------------------------------------------------

fn file(s: &str) -> wire::ConfigFile {
    serde_yaml::from_str(s).expect("wire")
}

fn local_of(s: &str) -> Local {
    parse_str(s).expect("valid").into_parts().0
}

#[test]
fn a_static_file_is_its_local_part_and_its_policy_part() {
    let text = with_routes(
        "  - name: api\n    service: orders\n    match: {path: {prefix: /api}}\n    backends: [{subset: {version: v2}, weight: 3}]\n",
    );
    let raw = file(&text);
    let (local, policy) = raw.clone().split();
    assert_eq!(policy.routes.len(), 1);
    assert_eq!(policy.version, "");
    assert_eq!(wire::ConfigFile::join(local, policy), raw);

    // The policy part alone, validated for this sidecar's local part, is the static file's.
    let whole = parse_str(&text).expect("valid");
    let (_, policy) = raw.split();
    let alone = validate_snapshot(policy, &local_of(BASE)).expect("valid snapshot");
    let (local, from_file) = whole.into_parts();
    assert_eq!(format!("{:?}", alone), format!("{:?}", from_file));
    let joined = Config::from_parts(local, alone);
    assert_eq!(joined.services[0].routes[0].name, "api");
}

#[test]
fn a_snapshot_is_checked_like_a_static_file() {
    let text = with_routes("  - {name: r, service: orders, match: {path: {regex: \"((\"}}}\n");
    let (_, policy) = file(&text).split();
    let errors = validate_snapshot(policy, &local_of(BASE)).expect_err("invalid");
    assert_eq!(errors, invalid(&text));
    assert_eq!(errors[0].field, "routes[0].match.path.regex");

    // A dedicated port on a local listener's port is refused for this sidecar.
    let clash = BASE.replace(
        "    identity: spiffe://weft.local/ns/default/sa/orders\n",
        "    identity: spiffe://weft.local/ns/default/sa/orders\n    port: 15001\n",
    );
    let (_, policy) = file(&clash).split();
    let errors = validate_snapshot(policy, &local_of(BASE)).expect_err("clash");
    assert_eq!(errors[0].field, "services[0].port");
}

#[test]
fn a_snapshot_round_trips_through_serde() {
    let text = format!(
        "{}    retry_budget: {{ratio: 0.5}}\n    limits: {{max_in_flight: 10}}\n\
         routes:\n  - name: r\n    service: orders\n    match: {{path: {{prefix: /api}}, headers: [{{name: x-canary}}]}}\n\
         \x20   timeout: 2s\n    retry: {{on: [5xx], grpc_codes: [unavailable, 8], attempts: 2}}\n\
         \x20   rate_limit: {{requests_per_second: 2.5}}\n\
         authorization: {{default: deny, rules: [{{name: a, from: [\"*\"], paths: [/health]}}]}}\n",
        BASE
    );
    let (_, mut policy) = file(&text).split();
    policy.version = "v1".into();
    let yaml = serde_yaml::to_string(&policy).expect("yaml");
    let back: wire::PolicySnapshot = serde_yaml::from_str(&yaml).expect("parse back");
    assert_eq!(back, policy);
    assert!(!yaml.contains("null"), "absent fields are left out: {yaml}");
    validate_snapshot(back, &local_of(BASE)).expect("valid");
}

#[test]
fn a_sidecar_route_cannot_name_callers() {
    let errors = invalid(&with_routes(
        "  - {name: r, service: orders, from: [frontend]}\n",
    ));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].field, "routes[0].from");
    assert!(errors[0].reason.contains("policy directory"));
}

// --- The mesh policy ----------------------------------------------------------------------

const MESH: &str = r#"
services:
  - name: frontend
    identity: spiffe://weft.local/ns/default/sa/frontend
  - name: batch
    identity: spiffe://weft.local/ns/default/sa/batch
  - name: orders
    identity: spiffe://weft.local/ns/default/sa/orders
    endpoints:
      - {address: 127.0.0.1:16001, labels: {version: v1}}
      - {address: 127.0.0.1:16002, labels: {version: v2}}
"#;

fn mesh(extra: &str) -> Result<(), Vec<FieldError>> {
    validate_mesh(serde_yaml::from_str(&format!("{MESH}{extra}")).expect("wire"))
}

#[test]
fn mesh_routes_are_shadowed_only_for_callers_they_share() {
    mesh(
        "routes:\n  - {name: canary, service: orders, from: [frontend], backends: [{subset: {version: v2}}]}\n  - {name: rest, service: orders, from: [batch]}\n",
    )
    .expect("disjoint callers: no shadowing");
    let errors = mesh(
        "routes:\n  - {name: canary, service: orders, from: [frontend, batch]}\n  - {name: api, service: orders, match: {path: {prefix: /api}}}\n",
    )
    .expect_err("shadowed for both callers");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].field, "routes[1].match");
    assert!(
        errors[0]
            .reason
            .ends_with("matches every request for callers frontend, batch"),
        "{errors:?}"
    );
    let errors = mesh(
        "routes:\n  - {name: a, service: orders, from: [frontend], match: {path: {exact: /x}}}\n  - {name: b, service: orders, match: {path: {exact: /x}}}\n",
    )
    .expect_err("same match for frontend");
    assert!(errors[0].reason.contains("same match for callers frontend"));
}

#[test]
fn mesh_callers_and_authorization_name_known_services() {
    let errors = mesh(
        "routes:\n  - {name: a, service: orders, from: [fronted, orders]}\n  - {name: b, service: orders, from: []}\n\
         authorization:\n  - {service: orders, default: deny, rules: [{name: r, from: [frontend]}]}\n  - {service: orders}\n  - {service: nope}\n",
    )
    .expect_err("invalid");
    let has = |field: &str, words: &str| {
        assert!(
            errors
                .iter()
                .any(|e| e.field == field && e.reason.contains(words)),
            "no error {field}: {words} in {errors:?}"
        )
    };
    has("routes[0].from[0]", "unknown service \"fronted\"");
    has("routes[0].from[1]", "does not call itself");
    has("routes[1].from", "at least one");
    has("authorization[0].rules[0].from[0]", "bad SPIFFE identity");
    has("authorization[1].service", "duplicate");
    has("authorization[2].service", "unknown service \"nope\"");
    assert_eq!(errors.len(), 6, "{errors:?}");
}

// --- control_plane and service.labels ----------------------------------------------------

const CP_LOCAL: &str = r#"
service:
  name: frontend
  identity: spiffe://weft.local/ns/default/sa/frontend
  app: 127.0.0.1:8080
  labels: {version: v2, zone: a}
tls: {cert: c.pem, key: k.pem, trust_bundle: ca.pem}
control_plane:
  address: "127.0.0.1:7070"
  identity: spiffe://weft.local/ns/weft-system/sa/control-plane
"#;

#[test]
fn control_plane_and_labels_parse_into_the_local_part() {
    let c = parse_str(CP_LOCAL).expect("valid");
    let cp = c.control_plane.as_ref().expect("control plane");
    assert_eq!(cp.address, "127.0.0.1:7070");
    assert_eq!(
        cp.identity.to_string(),
        "spiffe://weft.local/ns/weft-system/sa/control-plane"
    );
    assert_eq!(c.own.labels.get("version").map(String::as_str), Some("v2"));
    assert!(c.services.is_empty());
    let (local, _) = c.into_parts();
    assert!(local.control_plane.is_some());
    // A static file without control_plane keeps working unchanged.
    assert!(parse_str(BASE).expect("valid").control_plane.is_none());
}

#[test]
fn control_plane_excludes_a_policy_part_in_the_file() {
    let text = format!(
        "{CP_LOCAL}services:\n  - name: orders\n    identity: spiffe://weft.local/ns/default/sa/orders\nauthorization: {{default: deny}}\n"
    );
    let errors = invalid(&text);
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert!(fields.contains(&"services"), "{errors:?}");
    assert!(fields.contains(&"authorization"), "{errors:?}");
    assert!(errors[0].reason.contains("control_plane"), "{errors:?}");
}

#[test]
fn control_plane_address_and_identity_are_checked() {
    let text = CP_LOCAL
        .replace("\"127.0.0.1:7070\"", "nowhere")
        .replace("spiffe://weft.local/ns/weft-system/sa/control-plane", "cp");
    let errors = invalid(&text);
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        ["control_plane.address", "control_plane.identity"],
        "{errors:?}"
    );
}

#[test]
fn control_plane_join_token_file_and_bootstrap_timeout() {
    let c = parse_str(CP_LOCAL).expect("valid");
    let cp = c.control_plane.as_ref().expect("control plane");
    assert_eq!(cp.join_token_file, None);
    assert_eq!(cp.bootstrap_timeout, DEFAULT_BOOTSTRAP_TIMEOUT);
    let text = CP_LOCAL.replace(
        "  identity: spiffe://weft.local/ns/weft-system/sa/control-plane\n",
        "  identity: spiffe://weft.local/ns/weft-system/sa/control-plane\n  join_token_file: token.txt\n  bootstrap_timeout: 5s\n",
    );
    let c = parse_str(&text).expect("valid");
    let cp = c.control_plane.as_ref().expect("control plane");
    assert!(cp
        .join_token_file
        .as_ref()
        .is_some_and(|f| f.ends_with("token.txt")));
    assert_eq!(cp.bootstrap_timeout, Duration::from_secs(5));
    let bad = CP_LOCAL.replace(
        "  identity: spiffe://weft.local/ns/weft-system/sa/control-plane\n",
        "  identity: spiffe://weft.local/ns/weft-system/sa/control-plane\n  join_token_file: \"\"\n  bootstrap_timeout: soon\n",
    );
    let errors = invalid(&bad);
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert!(
        fields.contains(&"control_plane.join_token_file"),
        "{errors:?}"
    );
    assert!(
        fields.contains(&"control_plane.bootstrap_timeout"),
        "{errors:?}"
    );
    let unknown = CP_LOCAL.replace(
        "  identity: spiffe://weft.local/ns/weft-system/sa/control-plane\n",
        "  identity: spiffe://weft.local/ns/weft-system/sa/control-plane\n  join_token: x\n",
    );
    assert!(parse_str(&unknown).is_err());
}

/// A duration past the clock's range used to be accepted, and a route `timeout` of that size
/// then panicked on every request (`Instant + Duration` overflow). Every duration is capped.
#[test]
fn durations_longer_than_a_year_are_refused() {
    let text = format!(
        "idle_timeout: 1000000y\n{BASE}routes:\n  - name: r\n    service: orders\n    timeout: 18446744073709551615s\n"
    );
    let errors = invalid(&text);
    for field in ["idle_timeout", "routes[0].timeout"] {
        assert!(
            errors
                .iter()
                .any(|e| e.field == field && e.reason.contains("longer than the limit of 365 days")),
            "no error for {field} in {errors:?}"
        );
    }
    // A year exactly is still a duration.
    assert_eq!(parse_duration("365d"), Ok(MAX_DURATION));
}

#[test]
fn port_zero_listeners_are_valid_and_need_not_be_distinct() {
    let text = BASE.replace(
        "tls:",
        "listen: {outbound: \"127.0.0.1:0\", inbound: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}\ntls:",
    );
    let c = parse_str(&text).expect("valid");
    assert_eq!(c.listen.outbound.port(), 0);
    let text = BASE.replace(
        "tls:",
        "listen: {outbound: \"127.0.0.1:0\", inbound: \"127.0.0.1:7\", admin: \"127.0.0.1:7\"}\ntls:",
    );
    let errors = invalid(&text);
    assert!(errors.iter().any(|e| e.field == "listen"), "{errors:?}");
}

/// `escaped_slashes` is a per-service option (outbound) and an authorization option
/// (inbound); a value that is neither `reject` nor `keep` is refused at its line and column.
#[test]
fn escaped_slashes_is_keep_or_reject_and_an_unknown_value_is_located() {
    let c = parse_str(&format!(
        "{}    escaped_slashes: keep\nauthorization:\n  escaped_slashes: keep\n",
        BASE.trim_end_matches('\n').to_owned() + "\n"
    ))
    .expect("valid");
    assert!(c.services[0].paths.keep_escaped_slashes);
    assert!(c.authorization.paths.keep_escaped_slashes);
    let c = parse_str(BASE).expect("valid");
    assert!(
        !c.services[0].paths.keep_escaped_slashes,
        "reject by default"
    );
    assert!(!c.authorization.paths.keep_escaped_slashes);

    let bad = format!("{BASE}authorization:\n  escaped_slashes: decode\n");
    match parse_str(&bad) {
        Err(e @ ConfigError::Syntax { .. }) => {
            let msg = e.to_string();
            assert!(msg.starts_with("weft.yaml:14:20: "), "{msg}");
            assert!(msg.contains("unknown variant `decode`"), "{msg}");
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

/// Requests are matched in canonical form, so a rule path that is not canonical could never
/// match: it is refused with the form requests take.
#[test]
fn rule_paths_must_be_canonical() {
    let errors = invalid(&format!(
        "{}authorization:\n  default: deny\n  rules:\n    - {{name: a, from: [\"*\"], paths: [/public/../admin, /x%2Fy]}}\n",
        with_routes(
            "  - {name: r, service: orders, match: {path: {prefix: //api}}}\n  - {name: s, service: orders, match: {path: {exact: /a/%2e}}}\n"
        )
    ));
    for (field, says) in [
        (
            "routes[0].match.path.prefix",
            "requests are matched as \"/api\"",
        ),
        (
            "routes[1].match.path.exact",
            "requests are matched as \"/a/\"",
        ),
        (
            "authorization.rules[0].paths[0]",
            "requests are matched as \"/admin\"",
        ),
        ("authorization.rules[0].paths[1]", "encoded slash"),
    ] {
        assert!(
            errors
                .iter()
                .any(|e| e.field == field && e.reason.contains(says)),
            "no {field} error saying {says:?} in {errors:?}"
        );
    }
}

/// A short regex can compile to a huge program; every policy regex has a length and a
/// compiled-size limit.
#[test]
fn regexes_are_bounded_in_length_and_compiled_size() {
    let long = "a".repeat(MAX_REGEX_LEN + 1);
    let errors = invalid(&with_routes(&format!(
        "  - {{name: r, service: orders, match: {{path: {{regex: \"{long}\"}}}}}}\n  - {{name: s, service: orders, match: {{headers: [{{name: x, regex: \"(a{{1000}}){{1000}}\"}}]}}}}\n"
    )));
    assert!(
        errors
            .iter()
            .any(|e| e.field == "routes[0].match.path.regex"
                && e.reason.contains("longer than the limit")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.field == "routes[1].match.headers[0].regex"
                && e.reason.contains("size limit")),
        "{errors:?}"
    );
}

#[test]
fn a_burst_above_a_billion_is_refused() {
    let errors = invalid(&with_routes(
        "  - {name: r, service: orders, rate_limit: {requests_per_second: 5, burst: 4000000000}}\n",
    ));
    assert!(
        errors
            .iter()
            .any(|e| e.field == "routes[0].rate_limit.burst" && e.reason.contains("got 4000000000")),
        "{errors:?}"
    );
}

// --- service.egress ----------------------------------------------------------------------

#[test]
fn egress_is_allowed_by_default_denied_on_request_and_strict() {
    assert_eq!(
        parse_str(CP_LOCAL).expect("valid").own.egress,
        wire::Egress::Allow
    );
    let deny = CP_LOCAL.replace("  labels:", "  egress: deny\n  labels:");
    assert_eq!(
        parse_str(&deny).expect("valid").own.egress,
        wire::Egress::Deny
    );
    assert_eq!(wire::Egress::Deny.as_str(), "deny");
    // Operators' files stay strict: an unknown value is an error naming where it is.
    let bad = CP_LOCAL.replace("  labels:", "  egress: block\n  labels:");
    let err = parse_str(&bad).expect_err("unknown value").to_string();
    assert!(err.contains("block") && err.contains(":6:"), "{err}");
}
