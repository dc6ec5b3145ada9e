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
    assert!(
        matches!(&p.jwks, JwksSource::Url { ca: Some(c), .. } if c == Path::new("/etc/weft/ca.pem"))
    );
    assert_eq!(
        doc.gateway.api_keys[0].file,
        Path::new("/etc/weft/keys.yaml")
    );
    assert_eq!(doc.gateway.max_clients, 500);
    let orders = &doc.routes["orders"];
    assert_eq!(orders.auth, RouteAuth::Jwt(0));
    let cors = orders.cors.as_ref().expect("cors");
    assert!(cors.credentials);
    assert_eq!(cors.max_age, Some(Duration::from_secs(600)));
    assert_eq!(
        orders.limit.map(|l| (l.key, l.burst)),
        Some((ClientKey::Subject, 4))
    );
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
    assert!(
        lines[0].starts_with("gw.yaml:5:17: auth.jwt_providers[0].jwks_url:"),
        "{err}"
    );
    // The gateway part failing stops before routes are judged.
    assert_eq!(lines.len(), 1, "{err}");
    let err = parse(&text.replace("http://plain", "https://keys")).expect_err("routes");
    let s = err.to_string();
    assert!(
        s.contains("gw.yaml:8:17: routes.r.auth.jwt: no jwt_provider is named \"other\""),
        "{s}"
    );
    assert!(
        s.contains("routes.r.cors.allow_credentials: \"*\" cannot be combined"),
        "{s}"
    );
    assert!(
        s.contains("routes.r.client_limit.key: `consumer` needs a route with auth.api_key"),
        "{s}"
    );
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
    assert!(
        s.contains("jwt_providers[0].jwks_file: give exactly one"),
        "{s}"
    );
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
            deny: false,
        }),
        ..Default::default()
    };
    let errs = RouteAccess::validate(both, &g, "routes[0].").expect_err("two modes");
    assert_eq!(errs[0].field, "routes[0].auth");
    let deny_and_jwt = wire::RouteAccessFile {
        auth: Some(wire::RouteAuthFile {
            jwt: Some("a".into()),
            deny: true,
            ..Default::default()
        }),
        ..Default::default()
    };
    let errs = RouteAccess::validate(deny_and_jwt, &g, "").expect_err("deny and a jwt");
    assert_eq!(errs[0].field, "auth");
    let deny = wire::RouteAccessFile {
        auth: Some(wire::RouteAuthFile {
            deny: true,
            ..Default::default()
        }),
        ..Default::default()
    };
    let closed = RouteAccess::validate(deny, &g, "").expect("deny alone");
    assert_eq!(closed.auth, RouteAuth::Deny);
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

/// The gateway file carries `auth` and each route's `access` (crate::gateway::parse).
mod in_the_gateway_file {
    use super::*;

    const SIDECAR: &str = "
service: {name: gateway, identity: spiffe://weft.local/ns/edge/sa/gateway, app: 127.0.0.1:8080}
tls: {cert: c.pem, key: k.pem, trust_bundle: ca.pem}
services:
  - name: orders
    identity: spiffe://weft.local/ns/default/sa/orders
    endpoints: [{address: 127.0.0.1:16001}]
";

    fn gateway(text: &str) -> Result<crate::gateway::Gateway, String> {
        let services = crate::parse(SIDECAR, Path::new("s.yaml"), Path::new("/etc/weft"))
            .expect("sidecar config")
            .services;
        crate::gateway::parse(text, Path::new("gw.yaml"), Path::new("/etc/gw"), &services)
            .map_err(|e| e.to_string())
    }

    const FILE: &str = "listen: {https: 127.0.0.1:0}
tls:
  certificates: [{hosts: [api.example.test], cert: api.crt, key: api.key}]
auth:
  jwt_providers: [{name: main, issuer: https://i.test, jwks_file: jwks.json}]
routes:
  - name: orders
    service: orders
    access:
      auth: {jwt: main}
      client_limit: {key: subject, per_second: 1}
  - name: open
    service: orders
";

    #[test]
    fn routes_carry_their_access_and_paths_resolve() {
        let g = gateway(FILE).expect("valid");
        assert_eq!(g.routes[0].access.auth, RouteAuth::Jwt(0));
        assert_eq!(g.routes[1].access, RouteAccess::default());
        assert!(
            matches!(&g.auth.providers[0].jwks, JwksSource::File(f) if f == Path::new("/etc/gw/jwks.json"))
        );
    }

    #[test]
    fn access_errors_point_at_the_route() {
        let bad = FILE.replace("auth: {jwt: main}", "auth: {jwt: other}");
        let e = gateway(&bad).expect_err("unknown provider");
        assert!(
            e.contains("gw.yaml:10:")
                && e.contains("routes[0].access.auth.jwt: no jwt_provider is named \"other\""),
            "{e}"
        );
        let bad = FILE.replace("jwks_file: jwks.json", "jwks_url: http://plain.test/");
        let e = gateway(&bad).expect_err("plain URL");
        assert!(e.contains("auth.jwt_providers[0].jwks_url"), "{e}");
        let typo = FILE.replace("client_limit:", "client_limits:");
        assert!(gateway(&typo)
            .expect_err("unknown field")
            .contains("client_limits"));
    }
}
