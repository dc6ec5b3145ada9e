//! The whole stage on a route: CORS, then authentication, then limits, with a JWKS file and
//! a keys file on disk and virtual time for the buckets.

use serde_json::json;
use weft_policy::gateway_auth::{ClientLimit, Cors, JwksSource, OriginPattern};

use super::jwt::tests::{provider, Signer};
use super::*;

const NOW: u64 = 1_800_000_000;
const S: u64 = 1_000_000_000;

struct Fixture {
    _dir: tempfile::TempDir,
    signer: Signer,
    stage: AuthStage,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let signer = Signer::new();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, signer.jwks_json()).expect("write jwks");
    let keys = dir.path().join("keys.yaml");
    std::fs::write(
        &keys,
        "keys:\n- {consumer: acme, key: acme-key-0123456789}\n",
    )
    .expect("write keys");
    let mut p = provider();
    p.jwks = JwksSource::File(jwks);
    p.forward_claims = vec![("sub".into(), HeaderName::from_static("x-user"))];
    let cfg = GatewayAuth {
        providers: vec![p],
        api_keys: vec![ApiKeySet {
            name: "partners".into(),
            header: HeaderName::from_static("x-api-key"),
            file: keys,
            forward_consumer: Some(HeaderName::from_static("x-consumer")),
        }],
        max_clients: 100,
    };
    let stage = AuthStage::build(&cfg, Clock::new()).expect("stage");
    stage.load_keys().await;
    Fixture {
        _dir: dir,
        signer,
        stage,
    }
}

fn token(s: &Signer, sub: &str, exp: u64) -> String {
    s.sign(
        json!({"alg": "ES256", "kid": "ec"}),
        json!({"iss": "https://issuer.test", "aud": "orders", "sub": sub, "exp": exp}),
    )
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    h
}

fn incoming<'a>(m: &'a Method, h: &'a HeaderMap) -> Incoming<'a> {
    Incoming {
        method: m,
        headers: h,
        client_ip: "203.0.113.5".parse().ok(),
    }
}

fn header<'a>(hs: &'a Headers, name: &str) -> Option<&'a str> {
    hs.iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.to_str().ok())
}

fn jwt_route(limit: Option<ClientLimit>) -> RouteAccess {
    RouteAccess {
        auth: RouteAuth::Jwt(0),
        cors: Some(Cors {
            origins: vec![OriginPattern::Exact("https://app.test".into())],
            methods: vec![Method::GET],
            headers: vec![header::AUTHORIZATION],
            expose: Vec::new(),
            max_age: None,
            credentials: true,
        }),
        limit,
    }
}

#[tokio::test]
async fn a_valid_token_is_forwarded_with_claims_and_without_the_token() {
    let f = fixture().await;
    let guard = f.stage.route(jwt_route(None));
    let bearer = format!("Bearer {}", token(&f.signer, "alice", NOW + 60));
    let h = headers(&[
        ("authorization", &bearer),
        ("x-user", "root"),
        ("origin", "https://app.test"),
    ]);
    let Verdict::Forward(fw) = guard
        .admit(&f.stage, incoming(&Method::GET, &h), 0, NOW)
        .await
    else {
        panic!("refused");
    };
    assert_eq!(fw.principal, Some(Principal::Subject("alice".into())));
    assert!(
        fw.remove.contains(&HeaderName::from_static("x-user")),
        "the client's x-user goes"
    );
    assert!(fw.remove.contains(&header::AUTHORIZATION));
    assert_eq!(header(&fw.set, "x-user"), Some("alice"));
    assert_eq!(
        header(&fw.response, "access-control-allow-origin"),
        Some("https://app.test")
    );
}

#[tokio::test]
async fn a_closed_route_refuses_every_request_even_with_a_valid_token() {
    let f = fixture().await;
    let guard = f.stage.route(RouteAccess {
        auth: RouteAuth::Deny,
        cors: None,
        limit: None,
    });
    let bearer = format!("Bearer {}", token(&f.signer, "alice", NOW + 60));
    for h in [headers(&[]), headers(&[("authorization", &bearer)])] {
        let Verdict::Answer(a) = guard
            .admit(&f.stage, incoming(&Method::GET, &h), 0, NOW)
            .await
        else {
            panic!("a closed route forwarded");
        };
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(a.flag, "route_closed");
    }
}

#[tokio::test]
async fn missing_and_bad_tokens_get_rfc6750_challenges_with_cors() {
    let f = fixture().await;
    let guard = f.stage.route(jwt_route(None));
    let h = headers(&[("origin", "https://app.test")]);
    let Verdict::Answer(a) = guard
        .admit(&f.stage, incoming(&Method::GET, &h), 0, NOW)
        .await
    else {
        panic!("no token passed");
    };
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let outcome = |method, result| Some(AuthOutcome { method, result });
    assert_eq!(a.auth, outcome("jwt", "missing"));
    assert_eq!(
        header(&a.headers, "www-authenticate"),
        Some("Bearer realm=\"weft\"")
    );
    assert_eq!(
        header(&a.headers, "access-control-allow-origin"),
        Some("https://app.test")
    );
    let expired = format!("Bearer {}", token(&f.signer, "alice", NOW - 3600));
    let h = headers(&[("authorization", &expired)]);
    let Verdict::Answer(a) = guard
        .admit(&f.stage, incoming(&Method::GET, &h), 0, NOW)
        .await
    else {
        panic!("expired passed");
    };
    assert_eq!(a.auth, outcome("jwt", "expired"));
    assert_eq!(
        header(&a.headers, "www-authenticate"),
        Some("Bearer realm=\"weft\", error=\"invalid_token\", error_description=\"token expired\"")
    );
    // Two Authorization headers: refused, whichever is valid.
    let good = format!("Bearer {}", token(&f.signer, "alice", NOW + 60));
    let h = headers(&[("authorization", &good), ("authorization", &good)]);
    assert!(matches!(
        guard
            .admit(&f.stage, incoming(&Method::GET, &h), 0, NOW)
            .await,
        Verdict::Answer(_)
    ));
}

#[tokio::test]
async fn preflight_is_answered_before_authentication() {
    let f = fixture().await;
    let guard = f.stage.route(jwt_route(None));
    let h = headers(&[
        ("origin", "https://app.test"),
        ("access-control-request-method", "GET"),
    ]);
    let Verdict::Answer(a) = guard
        .admit(&f.stage, incoming(&Method::OPTIONS, &h), 0, NOW)
        .await
    else {
        panic!("preflight forwarded");
    };
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert_eq!(
        header(&a.headers, "access-control-allow-credentials"),
        Some("true")
    );
}

#[tokio::test]
async fn subjects_have_their_own_buckets() {
    let f = fixture().await;
    let limit = ClientLimit {
        key: ClientKey::Subject,
        per_second: 1.0,
        burst: 2,
    };
    let guard = f.stage.route(jwt_route(Some(limit)));
    let ask = |sub: &str, at: Nanos| {
        let h = headers(&[(
            "authorization",
            &format!("Bearer {}", token(&f.signer, sub, NOW + 60)),
        )]);
        let guard = &guard;
        let stage = &f.stage;
        async move {
            guard
                .admit(stage, incoming(&Method::GET, &h), at, NOW)
                .await
        }
    };
    for _ in 0..2 {
        let Verdict::Forward(fw) = ask("alice", 5 * S).await else {
            panic!("within burst");
        };
        assert!(header(&fw.response, "ratelimit").is_some());
    }
    let Verdict::Answer(a) = ask("alice", 5 * S).await else {
        panic!("over the limit");
    };
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&a.headers, "retry-after"), Some("1"));
    assert_eq!(
        header(&a.headers, "ratelimit-policy"),
        Some("\"client\";q=2;w=2")
    );
    assert!(
        matches!(ask("bob", 5 * S).await, Verdict::Forward(_)),
        "bob is not limited"
    );
    assert!(
        matches!(ask("alice", 6 * S).await, Verdict::Forward(_)),
        "a second later"
    );
}

#[tokio::test]
async fn api_keys_name_consumers_and_client_ips_have_their_own_buckets() {
    let f = fixture().await;
    let access = RouteAccess {
        auth: RouteAuth::ApiKey(0),
        cors: None,
        limit: Some(ClientLimit {
            key: ClientKey::ClientIp,
            per_second: 0.001,
            burst: 1,
        }),
    };
    let guard = f.stage.route(access);
    let h = headers(&[
        ("x-api-key", "acme-key-0123456789"),
        ("x-consumer", "admin"),
        ("x-forwarded-for", "1.1.1.1"),
    ]);
    let Verdict::Forward(fw) = guard
        .admit(&f.stage, incoming(&Method::GET, &h), 0, NOW)
        .await
    else {
        panic!("valid key refused");
    };
    assert_eq!(fw.principal, Some(Principal::Consumer("acme".into())));
    let outcome = |result| {
        Some(AuthOutcome {
            method: "api_key",
            result,
        })
    };
    assert_eq!(fw.auth, outcome("accepted"));
    assert_eq!(header(&fw.set, "x-consumer"), Some("acme"));
    assert!(fw.remove.contains(&HeaderName::from_static("x-api-key")));
    // Keyed by client IP: the same address again is limited, another address is not.
    let h2 = headers(&[("x-api-key", "acme-key-0123456789")]);
    let Verdict::Answer(a) = guard
        .admit(&f.stage, incoming(&Method::GET, &h2), 0, NOW)
        .await
    else {
        panic!("second request from the same address passed");
    };
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.auth, outcome("accepted"), "authenticated, then limited");
    let other = Incoming {
        client_ip: "198.51.100.1".parse().ok(),
        ..incoming(&Method::GET, &h2)
    };
    assert!(matches!(
        guard.admit(&f.stage, other, 0, NOW).await,
        Verdict::Forward(_)
    ));
    let wrong = headers(&[("x-api-key", "acme-key-012345678X")]);
    let Verdict::Answer(a) = guard
        .admit(&f.stage, incoming(&Method::GET, &wrong), 0, NOW)
        .await
    else {
        panic!("wrong key passed");
    };
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.auth, outcome("unknown_key"));
}
