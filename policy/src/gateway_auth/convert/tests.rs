use super::*;

fn parse(text: &str) -> Result<AuthDocument, AuthConfigError> {
    parse_document(text, Path::new("gw.yaml"), Path::new("/etc/weft"))
}

const GOOD: &str = "\
auth:
  jwt_providers:
    - name: main
      issuer: https://issuer.test
      audiences: [orders]
      jwks_url: https://keys.test/jwks.json
      jwks_ca: ca.pem
      refresh: 1m
      leeway: 5s
      forward_claims: {sub: x-user, email: x-user-email}
  api_keys:
    - name: partners
      file: keys.yaml
      forward_consumer: x-consumer
  trusted_proxies: [10.0.0.0/8, 127.0.0.1]
  max_clients: 500
routes:
  orders:
    auth: {jwt: main}
    cors:
      allow_origins: [https://app.example.test, 'https://*.example.test']
      allow_methods: [GET, PUT]
      allow_headers: [authorization, content-type]
      max_age: 10m
      allow_credentials: true
    client_limit: {key: subject, per_second: 2, burst: 4}
  partner:
    auth: {api_key: partners}
    client_limit: {key: consumer, per_second: 0.5}
  health: {}
";

#[test]
fn a_full_document_validates_and_resolves_paths() {
    let doc = parse(GOOD).expect("valid");
    let p = &doc.gateway.providers[0];
    assert_eq!(p.refresh, Duration::from_secs(60));
    assert_eq!(p.leeway, Duration::from_secs(5));
    assert_eq!(p.forward_claims.len(), 2);
    assert!(matches!(&p.jwks, JwksSource::Url { ca: Some(c), .. } if c == Path::new("/etc/weft/ca.pem")));
    assert_eq!(doc.gateway.api_keys[0].file, Path::new("/etc/weft/keys.yaml"));
    assert_eq!(doc.gateway.max_clients, 500);
    let orders = &doc.routes["orders"];
    assert_eq!(orders.auth, RouteAuth::Jwt(0));
    let cors = orders.cors.as_ref().expect("cors");
    assert!(cors.credentials);
    assert_eq!(cors.max_age, Some(Duration::from_secs(600)));
    assert_eq!(orders.limit.map(|l| (l.key, l.burst)), Some((ClientKey::Subject, 4)));
    let partner = &doc.routes["partner"];
    assert_eq!(partner.limit.map(|l| l.burst), Some(1));
    assert_eq!(doc.routes["health"].auth, RouteAuth::Public);
}

#[test]
fn unknown_fields_are_syntax_errors_with_line_and_column() {
    let err = parse("auth:\n  jwt_providers:\n    - name: a\n      isuer: x\n").expect_err("typo");
    let text = err.to_string();
    assert!(text.starts_with("gw.yaml:4:7: "), "{text}");
    assert!(text.contains("isuer"), "{text}");
}

#[test]
fn invalid_fields_name_file_line_and_column() {
    let text = "\
auth:
  jwt_providers:
    - name: main
      issuer: https://i.test
      jwks_url: http://plain.test/jwks
routes:
  r:
    auth: {jwt: other}
    cors: {allow_origins: ['*'], allow_credentials: true}
    client_limit: {key: consumer, per_second: 1}
";
    let err = parse(text).expect_err("invalid");
    let AuthConfigError::Invalid { lines } = &err else {
        panic!("{err}");
    };
    assert!(lines[0].starts_with("gw.yaml:5:17: auth.jwt_providers[0].jwks_url:"), "{err}");
    // The gateway part failing stops before routes are judged.
    assert_eq!(lines.len(), 1, "{err}");
    let err = parse(&text.replace("http://plain", "https://keys")).expect_err("routes");
    let s = err.to_string();
    assert!(s.contains("gw.yaml:8:17: routes.r.auth.jwt: no jwt_provider is named \"other\""), "{s}");
    assert!(s.contains("routes.r.cors.allow_credentials: \"*\" cannot be combined"), "{s}");
    assert!(s.contains("routes.r.client_limit.key: `consumer` needs a route with auth.api_key"), "{s}");
}

#[test]
fn exactly_one_auth_and_one_jwks_source() {
    let text = "\
auth:
  jwt_providers:
    - {name: a, issuer: i, jwks_file: a.json, jwks_url: 'https://k.test/'}
    - {name: b, issuer: i, jwks_file: b.json}
  api_keys: [{name: b, file: k.yaml}]
";
    let s = parse(text).expect_err("both sources").to_string();
    assert!(s.contains("jwt_providers[0].jwks_file: give exactly one"), "{s}");
    assert!(s.contains("api_keys[0].name: duplicate name"), "{s}");
    let g = GatewayAuth::try_from(wire::GatewayAuthFile {
        jwt_providers: vec![wire::JwtProviderFile {
            name: "a".into(),
            issuer: "i".into(),
            jwks_file: Some("a.json".into()),
            ..Default::default()
        }],
        ..Default::default()
    })
    .expect("valid");
    let both = wire::RouteAccessFile {
        auth: Some(wire::RouteAuthFile {
            jwt: Some("a".into()),
            api_key: None,
            public: true,
        }),
        ..Default::default()
    };
    let errs = RouteAccess::validate(both, &g, "routes[0].").expect_err("two modes");
    assert_eq!(errs[0].field, "routes[0].auth");
}

#[test]
fn cidrs_contain_what_they_should() {
    let net = Cidr::parse("10.1.0.0/16").expect("cidr");
    assert!(net.contains("10.1.200.3".parse().expect("ip")));
    assert!(!net.contains("10.2.0.1".parse().expect("ip")));
    assert!(net.contains("::ffff:10.1.0.9".parse().expect("mapped")));
    assert!(Cidr::parse("::1").expect("v6").contains("::1".parse().expect("ip")));
    assert!(Cidr::parse("0.0.0.0/0").expect("all").contains("8.8.8.8".parse().expect("ip")));
    assert!(Cidr::parse("10.0.0.0/33").is_err());
    assert!(Cidr::parse("example").is_err());
}

#[test]
fn origin_patterns_match_exactly_or_by_subdomain() {
    let exact = origin("https://App.example.test").expect("exact");
    assert!(exact.allows("https://app.example.test"));
    assert!(!exact.allows("https://app.example.test.evil.test"));
    assert!(!exact.allows("http://app.example.test"));
    let wild = origin("https://*.example.test").expect("wildcard");
    assert!(wild.allows("https://a.example.test"));
    assert!(wild.allows("https://a.b.example.test"));
    assert!(!wild.allows("https://example.test"));
    assert!(!wild.allows("https://evil-example.test"));
    assert!(!wild.allows("https://a.example.test.evil.test"));
    assert!(!wild.allows("https://x/y.example.test"));
    assert!(!wild.allows("http://a.example.test"));
    assert!(origin("https://a.test/path").is_err());
    assert!(origin("https://*").is_err());
    assert!(origin("ftp://a.test").is_err());
}
