//! Through the real gateway with curl: `weft-proxy --gateway` in front of a meshed `orders`
//! (its own sidecar, mTLS), a route that requires a JWT (PyJWT RS256 tokens), forwards `sub`
//! as `x-user`, answers CORS, and limits each subject to a burst of 2.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use weft_testkit::process::{output_within, spawn, Guard};
use weft_testkit::wait;

use crate::harness::{http_app, service_yaml, Pki, Sidecar, Spec};

const PYTHON: &str = "/usr/bin/python3";
const HOST: &str = "api.example.test";

/// One curl call's status, lower-cased headers and body.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        (self.headers.iter())
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn curl(port: u16, ca: &Path, args: &[&str]) -> Reply {
    let dir = tempfile::tempdir().expect("tempdir");
    let head = dir.path().join("head");
    let (exit, body, err) = output_within(
        Command::new("curl")
            .args(["-sS", "--max-time", "10", "--resolve"])
            .arg(format!("{HOST}:{port}:127.0.0.1"))
            .arg("--cacert")
            .arg(ca)
            .arg("-D")
            .arg(&head)
            .args(args)
            .arg(format!("https://{HOST}:{port}/orders")),
        Duration::from_secs(20),
    );
    assert!(exit.success(), "curl {args:?}: {err}");
    let text = std::fs::read_to_string(&head).expect("headers");
    let mut lines = text.lines();
    let status = (lines.next().unwrap_or_default().split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body,
    }
}

/// The gateway process and the port its HTTPS listener got.
fn start_gateway(
    pki: &Pki,
    orders_inbound: std::net::SocketAddr,
    app: std::net::SocketAddr,
    fx: &Path,
) -> (Guard, u16) {
    pki.issue("gateway");
    let mut spec = Spec::new("gateway", app);
    spec.rest = format!(
        "services:\n{}",
        service_yaml("orders", "http", None, &[(orders_inbound, "v1")])
    );
    let head = serde_yaml::to_string(&Sidecar::config_head(&spec)).expect("yaml");
    let config = pki.path().join("gateway.yaml");
    std::fs::write(&config, format!("{head}{}", spec.rest)).expect("write config");
    let f = |name: &str| fx.join(name).display().to_string();
    let gateway = format!(
        "listen: {{https: 127.0.0.1:0}}
tls:
  certificates: [{{hosts: [{HOST}], cert: {}, key: {}}}]
auth:
  jwt_providers:
    - {{name: main, issuer: https://issuer.test, audiences: [orders], jwks_file: {}, forward_claims: {{sub: x-user}}}}
routes:
  - name: orders
    hosts: [{HOST}]
    service: orders
    access:
      auth: {{jwt: main}}
      cors: {{allow_origins: [https://app.example.test], allow_methods: [GET], allow_headers: [authorization], allow_credentials: true, max_age: 60s}}
      client_limit: {{key: subject, per_second: 0.01, burst: 2}}
",
        f("server.pem"),
        f("server-key.pem"),
        f("jwks.json")
    );
    let edge = pki.path().join("edge.yaml");
    std::fs::write(&edge, gateway).expect("write gateway file");
    let ready = pki.path().join("gateway.ready");
    let log = std::fs::File::create(pki.path().join("gateway.log")).expect("log");
    let child = spawn(
        Command::new(env!("CARGO_BIN_EXE_weft-proxy"))
            .arg("--config")
            .arg(&config)
            .arg("--gateway")
            .arg(&edge)
            .arg("--ready-file")
            .arg(&ready)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log),
    )
    .expect("spawn the gateway");
    let port = wait::until("the gateway's ready file", Duration::from_secs(20), || {
        let text = std::fs::read_to_string(&ready).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        let addr: std::net::SocketAddr = v["gateway_https"].as_str()?.parse().ok()?;
        Some(addr.port())
    });
    (child, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_through_the_gateway_jwt_claims_limits_and_cors() {
    let fx = tempfile::tempdir().expect("tempdir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/gateway/jwt_fixture.py");
    let (exit, _, err) = output_within(
        Command::new(PYTHON)
            .arg(script)
            .arg("gen")
            .arg(fx.path())
            .args(["https://issuer.test", "orders"]),
        Duration::from_secs(60),
    );
    assert!(exit.success(), "jwt_fixture.py gen: {err}");
    let tokens: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fx.path().join("tokens.json")).expect("tokens"))
            .expect("tokens json");
    let bearer = |name: &str| {
        format!(
            "Authorization: Bearer {}",
            tokens[name].as_str().unwrap_or_default()
        )
    };

    let pki = Pki::new(23);
    pki.issue("orders");
    let orders = Sidecar::start(&pki, Spec::new("orders", http_app("orders").await)).await;
    let own_app = http_app("gateway-app").await;
    let (_gateway, port) = start_gateway(&pki, orders.inbound, own_app, fx.path());
    let ca = fx.path().join("ca.pem");

    // No token, then a bad one: 401 with RFC 6750 challenges.
    let r = curl(port, &ca, &[]);
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"weft\""));
    for bad in ["expired", "wrong_audience", "tampered", "alg_none"] {
        let r = curl(port, &ca, &["-H", &bearer(bad)]);
        assert_eq!(r.status, 401, "{bad}");
        assert!(
            r.header("www-authenticate")
                .is_some_and(|v| v.contains("invalid_token")),
            "{bad}"
        );
    }

    // alice: the service sees x-user, never the token; then her burst of 2 is spent.
    let r = curl(
        port,
        &ca,
        &["-H", &bearer("valid_rs256"), "-H", "x-user: root"],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let seen: serde_json::Value = serde_json::from_str(&r.body).expect("app JSON");
    assert_eq!(seen["headers"]["x-user"], "alice", "{}", r.body);
    assert!(seen["headers"].get("authorization").is_none(), "{}", r.body);
    assert_eq!(r.header("ratelimit"), Some("\"client\";r=1;t=100"));
    assert_eq!(curl(port, &ca, &["-H", &bearer("valid_rs256")]).status, 200);
    let r = curl(port, &ca, &["-H", &bearer("valid_rs256")]);
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r
        .header("retry-after")
        .is_some_and(|s| s.parse::<u64>().is_ok_and(|n| n >= 1)));
    assert_eq!(r.header("ratelimit-policy"), Some("\"client\";q=2;w=200"));
    // bob is not limited by alice's spending.
    let r = curl(
        port,
        &ca,
        &[
            "-H",
            &bearer("valid_bob"),
            "-H",
            "Origin: https://app.example.test",
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.test")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));

    // CORS preflight: answered at the gateway, without credentials.
    let preflight = |origin: &str| {
        curl(
            port,
            &ca,
            &[
                "-X",
                "OPTIONS",
                "-H",
                &format!("Origin: {origin}"),
                "-H",
                "Access-Control-Request-Method: GET",
                "-H",
                "Access-Control-Request-Headers: authorization",
            ],
        )
    };
    let r = preflight("https://app.example.test");
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.test")
    );
    assert_eq!(r.header("access-control-max-age"), Some("60"));
    let r = preflight("https://evil.example.test");
    assert_eq!(r.status, 403);
    assert!(r.header("access-control-allow-origin").is_none());
}
