use std::net::IpAddr;
use std::path::Path;

use super::*;

const SIDECAR: &str = r#"
service:
  name: gateway
  identity: spiffe://weft.local/ns/edge/sa/gateway
  app: 127.0.0.1:8080
tls: {cert: c.pem, key: k.pem, trust_bundle: ca.pem}
services:
  - name: orders
    identity: spiffe://weft.local/ns/default/sa/orders
    endpoints:
      - {address: 127.0.0.1:16001, labels: {version: v1}}
"#;

const GOOD: &str = r#"listen:
  https: 127.0.0.1:0
  http_redirect: 127.0.0.1:0
tls:
  min_version: "1.2"
  certificates:
    - {hosts: [api.example.test], cert: api.crt, key: api.key}
    - {hosts: ["*.example.test"], cert: wild.crt, key: wild.key, default: true}
hsts: {max_age: 365d, include_subdomains: true}
limits: {max_body_bytes: 1024, header_timeout: 2s}
trusted_proxies: [10.0.0.0/8, "::1"]
routes:
  - name: orders-v1
    hosts: [api.example.test]
    match: {path: {prefix: /v1/orders}}
    service: orders
    rewrite: {prefix: /orders}
    request_headers: {set: {x-api-version: v1}, remove: [cookie]}
"#;

fn services() -> Vec<Service> {
    crate::parse(SIDECAR, Path::new("s.yaml"), Path::new("/etc/weft"))
        .expect("sidecar config")
        .services
}

fn gw(text: &str) -> Result<Gateway, GatewayError> {
    parse(
        text,
        Path::new("gw.yaml"),
        Path::new("/etc/gw"),
        &services(),
    )
}

fn errors(text: &str) -> String {
    match gw(text) {
        Err(e @ GatewayError::Invalid { .. }) => e.to_string(),
        other => panic!("expected invalid, got {other:?}"),
    }
}

#[test]
fn a_good_file_validates_with_defaults() {
    let g = gw(GOOD).expect("valid");
    assert_eq!(g.https.port(), 0);
    assert!(g.http_redirect.is_some());
    assert_eq!(g.min_tls, TlsVersion::Tls12);
    assert_eq!(g.certificates.len(), 2);
    assert_eq!(g.certificates[0].cert, Path::new("/etc/gw/api.crt"));
    assert!(g.certificates[1].default);
    assert_eq!(
        g.hsts.as_ref().map(|h| h.value.to_str().unwrap_or("")),
        Some("max-age=31536000; includeSubDomains")
    );
    assert_eq!(g.limits.max_body_bytes, 1024);
    assert_eq!(g.limits.header_timeout, Duration::from_secs(2));
    assert_eq!(g.limits.idle_timeout, Limits::default().idle_timeout);
    let r = &g.routes[0];
    assert_eq!(r.backends, Backends::one("orders"));
    assert_eq!(r.rewrite_prefix.as_deref(), Some("/orders"));
    assert_eq!(r.set_headers.len(), 1);
    assert_eq!(r.remove_headers[0].as_str(), "cookie");
    assert!(g.trusted_proxies[0].contains("10.1.2.3".parse().expect("ip")));
    assert!(g.trusted_proxies[1].contains("::1".parse().expect("ip")));
}

#[test]
fn unknown_fields_are_syntax_errors_with_line_and_column() {
    let bad = GOOD.replace(
        "  https: 127.0.0.1:0",
        "  https: 127.0.0.1:0\n  colour: blue",
    );
    match gw(&bad) {
        Err(e @ GatewayError::Syntax { .. }) => {
            let msg = e.to_string();
            assert!(msg.starts_with("gw.yaml:3:"), "{msg}");
            assert!(msg.contains("colour"), "{msg}");
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

#[test]
fn field_errors_name_file_line_and_column() {
    let bad = GOOD
        .replace("service: orders", "service: payments")
        .replace("min_version: \"1.2\"", "min_version: \"1.0\"")
        .replace("10.0.0.0/8", "10.0.0.0/33");
    let msg = errors(&bad);
    let lines: Vec<&str> = msg.lines().collect();
    assert_eq!(lines.len(), 3, "{msg}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("gw.yaml:5:16: tls.min_version: ")),
        "{msg}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("gw.yaml:11:19: trusted_proxies[0]: bad CIDR")),
        "{msg}"
    );
    assert!(
        lines.iter().any(
            |l| l.starts_with("gw.yaml:16:14: routes[0].service: unknown service \"payments\"")
        ),
        "{msg}"
    );
}

#[test]
fn mesh_route_rules_apply_to_gateway_routes() {
    // Paths must be canonical, as in mesh routes; x-weft-* is the mesh's own.
    let msg = errors(&GOOD.replace(
        "{path: {prefix: /v1/orders}}",
        "{path: {prefix: /v1/../orders}}",
    ));
    assert!(msg.contains("routes[0].match.path.prefix"), "{msg}");
    let msg = errors(&GOOD.replace("x-api-version: v1", "x-weft-caller: me"));
    assert!(
        msg.contains("routes[0].request_headers.set.x-weft-caller"),
        "{msg}"
    );
    // A rewrite needs a prefix match.
    let msg = errors(&GOOD.replace(
        "{path: {prefix: /v1/orders}}",
        "{path: {exact: /v1/orders}}",
    ));
    assert!(
        msg.contains("routes[0].rewrite: a prefix rewrite needs"),
        "{msg}"
    );
}

#[test]
fn certificate_hosts_are_checked() {
    let bad = GOOD
        .replace("[api.example.test], cert", "[\"a*.example.test\"], cert")
        .replace(
            ", default: true}",
            ", default: true}\n    - {hosts: [\"*.example.test\"], cert: x, key: y, default: true}",
        );
    let msg = errors(&bad);
    assert!(
        msg.contains("tls.certificates[0].hosts[0]: bad host"),
        "{msg}"
    );
    assert!(
        msg.contains("tls.certificates[2].hosts[0]: *.example.test is served by an earlier"),
        "{msg}"
    );
    assert!(
        msg.contains("tls.certificates[2].default: only one"),
        "{msg}"
    );
}

#[test]
fn limits_are_bounded() {
    let bad = GOOD.replace(
        "{max_body_bytes: 1024, header_timeout: 2s}",
        "{max_body_bytes: 99999999999, header_timeout: 0s, max_header_bytes: 10}",
    );
    let msg = errors(&bad);
    assert!(msg.contains("limits.max_body_bytes"), "{msg}");
    assert!(msg.contains("limits.header_timeout"), "{msg}");
    assert!(msg.contains("limits.max_header_bytes"), "{msg}");
}

#[test]
fn host_patterns_match_one_label() {
    let w = host_pattern("*.example.test").expect("wildcard");
    assert!(w.matches("a.example.test"));
    assert!(!w.matches("example.test"));
    assert!(!w.matches("a.b.example.test"));
    assert!(!w.matches("aexample.test"));
    let e = host_pattern("API.example.test").expect("exact");
    assert!(e.matches("api.example.test"));
    assert!(host_pattern("*").is_err());
}

#[test]
fn cidrs_contain_their_addresses() {
    let c: Cidr = "192.168.0.0/16".parse().expect("cidr");
    let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
    assert!(c.contains(ip("192.168.4.5")));
    assert!(!c.contains(ip("192.169.0.1")));
    assert!(c.contains(ip("::ffff:192.168.1.1")), "IPv4-mapped");
    let all: Cidr = "0.0.0.0/0".parse().expect("cidr");
    assert!(all.contains(ip("8.8.8.8")));
    assert!("1.2.3.4/x".parse::<Cidr>().is_err());
    assert!("::/129".parse::<Cidr>().is_err());
}

/// The sidecar config with a second service `orders-v2` beside `orders`.
fn two_services(paths: &str) -> Vec<Service> {
    let text = format!(
        "{SIDECAR}  - name: orders-v2\n    identity: spiffe://weft.local/ns/default/sa/orders\n    {paths}endpoints: []\n"
    );
    crate::parse(&text, Path::new("s.yaml"), Path::new("/etc/weft"))
        .expect("sidecar config")
        .services
}

fn split(backends: &str, services: &[Service]) -> Result<Gateway, GatewayError> {
    let text = GOOD.replace(
        "    service: orders\n",
        &format!("    backends: {backends}\n"),
    );
    parse(&text, Path::new("gw.yaml"), Path::new("/etc/gw"), services)
}

#[test]
fn a_weighted_split_names_known_services_with_a_positive_total() {
    let services = two_services("");
    let gw = split(
        "[{service: orders, weight: 90}, {service: orders-v2, weight: 10}, {service: orders-v2x, weight: 0}]",
        &services,
    );
    let msg = gw.expect_err("orders-v2x is unknown").to_string();
    assert!(
        msg.starts_with(
            "gw.yaml:16:91: routes[0].backends[2].service: unknown service \"orders-v2x\""
        ),
        "{msg}"
    );
    let gw = split(
        "[{service: orders, weight: 90}, {service: orders-v2, weight: 10}]",
        &services,
    )
    .expect("a split");
    let b = &gw.routes[0].backends;
    assert_eq!(
        b.weighted().collect::<Vec<_>>(),
        vec![("orders", 90), ("orders-v2", 10)]
    );
    // Evenly spread draws (one in the middle of each thousandth) land in proportion to the
    // weights; the edges too.
    let (n, step) = (1000u64, u64::MAX / 1000);
    let v2 = (0..n)
        .map(|i| b.pick(i * step + step / 2))
        .filter(|s| *s == "orders-v2")
        .count();
    assert_eq!(v2, 100);
    assert_eq!(b.pick(0), "orders");
    assert_eq!(b.pick(u64::MAX), "orders-v2");

    // A 0 weight takes nothing; all 0 is refused, as are both forms, a repeat, a mismatch.
    let gw = split(
        "[{service: orders, weight: 0}, {service: orders-v2, weight: 1}]",
        &services,
    )
    .expect("a split");
    assert_eq!(gw.routes[0].backends, Backends::one("orders-v2"));
    let refused = |backends: &str, services: &[Service], want: &str| {
        let msg = split(backends, services).expect_err(want).to_string();
        assert!(msg.contains(want), "{want:?} not in {msg}");
    };
    refused(
        "[{service: orders, weight: 0}]",
        &services,
        "routes[0].backends: every weight is 0",
    );
    refused(
        "[{service: orders, weight: 1}, {service: orders, weight: 2}]",
        &services,
        "routes[0].backends[1].service: \"orders\" is named twice",
    );
    refused(
        "[{service: orders, weight: 1}, {service: orders-v2, weight: 1}]",
        &two_services("escaped_slashes: keep\n    "),
        "the services of a split must share their path options",
    );
    let both = GOOD.replace(
        "    service: orders\n",
        "    service: orders\n    backends: [{service: orders, weight: 1}]\n",
    );
    let msg = parse(&both, Path::new("gw.yaml"), Path::new("/etc/gw"), &services)
        .expect_err("both")
        .to_string();
    assert!(msg.contains("`service` or `backends`, not both"), "{msg}");
    let neither = GOOD.replace("    service: orders\n", "");
    let msg = parse(
        &neither,
        Path::new("gw.yaml"),
        Path::new("/etc/gw"),
        &services,
    )
    .expect_err("neither")
    .to_string();
    assert!(msg.contains("routes[0].service: missing"), "{msg}");
}
