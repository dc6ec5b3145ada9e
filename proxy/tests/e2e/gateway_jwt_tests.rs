//! The gateway's JWT stage against tokens signed by a real JWT library (PyJWT, RS256 and
//! ES256 keys made in the test) with keys fetched over HTTPS from a JWKS server started in the
//! test (Python's http.server with a certificate from python3-cryptography). Only the valid
//! tokens pass; a key rotated in at the issuer is found by one refresh; a flood of random
//! `kid`s causes no further fetch.

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, Method, StatusCode};
use weft_policy::gateway_auth::parse_document;
use weft_proxy::gateway::auth::{AuthStage, Incoming, RouteGuard, Verdict};
use weft_testkit::process::{output_within, spawn};
use weft_testkit::wait;

const PYTHON: &str = "/usr/bin/python3";
const ISSUER: &str = "https://issuer.test";

fn fixture_script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/gateway/jwt_fixture.py")
}

/// Starts the JWKS server on `dir`; returns its guard, port and a counter of GETs served.
fn jwks_server(dir: &Path) -> (weft_testkit::process::Guard, u16, Arc<AtomicUsize>) {
    let mut guard = spawn(
        Command::new(PYTHON)
            .arg(fixture_script())
            .args(["serve"])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    )
    .expect("start the JWKS server");
    let stdout = guard.take_stdout().expect("stdout");
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(p) = line.strip_prefix("port ") {
                let _ = port_tx.send(p.trim().parse::<u16>().ok());
            } else if line == "hit" {
                counter.fetch_add(1, SeqCst);
            }
        }
    });
    let port = port_rx
        .recv_timeout(Duration::from_secs(20))
        .ok()
        .flatten()
        .expect("the JWKS server reports its port");
    (guard, port, hits)
}

async fn admit(stage: &AuthStage, guard: &RouteGuard, token: &str) -> StatusCode {
    let mut h = HeaderMap::new();
    h.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
    );
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let req = Incoming {
        method: &Method::GET,
        headers: &h,
        client_ip: Some(IpAddr::from([127, 0, 0, 1])),
    };
    match guard.admit(stage, req, 0, unix).await {
        Verdict::Forward(_) => StatusCode::OK,
        Verdict::Answer(a) => {
            let challenge = a.headers.iter().find(|(n, _)| n == "www-authenticate");
            let challenge = challenge
                .and_then(|(_, v)| v.to_str().ok())
                .unwrap_or_default();
            assert!(
                challenge.contains("error=\"invalid_token\""),
                "a refused token gets an RFC 6750 challenge: {challenge:?}"
            );
            a.status
        }
    }
}

#[tokio::test]
async fn only_valid_pyjwt_tokens_pass_and_rotated_keys_are_fetched_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (exit, _, err) = output_within(
        Command::new(PYTHON)
            .arg(fixture_script())
            .args(["gen"])
            .arg(dir.path())
            .args([ISSUER, "orders"]),
        Duration::from_secs(60),
    );
    assert!(exit.success(), "jwt_fixture.py gen: {err}");
    std::fs::copy(dir.path().join("jwks.json"), dir.path().join("served.json")).expect("copy");
    let (_server, port, hits) = jwks_server(dir.path());
    let yaml = format!(
        "auth:\n  jwt_providers:\n    - name: main\n      issuer: {ISSUER}\n      audiences: [orders]\n      jwks_url: https://127.0.0.1:{port}/jwks.json\n      jwks_ca: ca.pem\nroutes:\n  api:\n    auth: {{jwt: main}}\n"
    );
    let doc = parse_document(&yaml, Path::new("gateway.yaml"), dir.path()).expect("config");
    let stage = AuthStage::build(&doc.gateway, weft_resilience::Clock::new()).expect("stage");
    stage.load_keys().await;
    let fetches = || stage.key_cache(0).map(|c| c.fetches());
    assert_eq!(fetches(), Some(1), "keys fetched once at start");
    server_saw(&hits, 1);
    let guard = stage.route(doc.routes["api"].clone());

    let tokens: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("tokens.json")).expect("tokens"))
            .expect("tokens json");
    let token = |name: &str| tokens[name].as_str().expect("token").to_owned();
    for name in ["valid_rs256", "valid_es256"] {
        assert_eq!(
            admit(&stage, &guard, &token(name)).await,
            StatusCode::OK,
            "{name}"
        );
    }
    for name in [
        "expired",
        "wrong_audience",
        "wrong_issuer",
        "tampered",
        "alg_none",
        "hs256_with_rsa_public_key",
        "es256_header_on_rsa_signature",
    ] {
        let status = admit(&stage, &guard, &token(name)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}");
    }
    assert_eq!(
        fetches(),
        Some(1),
        "no refused token with a known kid fetched keys"
    );

    // The issuer rotates a key in; a token signed with it is accepted after one refresh.
    std::fs::copy(
        dir.path().join("jwks-rotated.json"),
        dir.path().join("served.json"),
    )
    .expect("rotate");
    let rotated = token("rotated_kid");
    assert_eq!(admit(&stage, &guard, &rotated).await, StatusCode::OK);
    assert_eq!(
        fetches(),
        Some(2),
        "exactly one refresh for the unknown kid"
    );
    server_saw(&hits, 2);

    // A flood of random kids inside the cooldown: all refused, no fetch.
    let flood = tokens["random_kids"].as_array().expect("list");
    for t in flood {
        let t = t.as_str().expect("token");
        assert_eq!(admit(&stage, &guard, t).await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(fetches(), Some(2), "the flood caused no fetch");
    assert_eq!(hits.load(SeqCst), 2);
}

/// Waits for the server's log to show `n` GETs (its "hit" line trails the response).
fn server_saw(hits: &AtomicUsize, n: usize) {
    wait::until(
        &format!("the JWKS server to log {n} GETs"),
        Duration::from_secs(10),
        || (hits.load(SeqCst) >= n).then_some(()),
    );
    assert_eq!(hits.load(SeqCst), n);
}
