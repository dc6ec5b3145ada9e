//! WebSocket through the gateway: the `websockets` package's own client, outside the mesh,
//! over TLS (wss) to a real `weft-proxy --gateway`, whose route requires a JWT (PyJWT RS256
//! tokens); the gateway carries the upgrade into the mesh over mutual TLS to `orders`' sidecar
//! and its app, the package's own server (the upgrade tests' `websocket/app.py`). Text and
//! binary frames both ways, 1 byte to 1 MiB; the app sees the gateway's identity; a missing or
//! bad token gets 401 before any upgrade.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::gateway_tests::spawn_gateway;
use crate::harness::*;

const HOST: &str = "api.example.test";

fn e2e(dir: &str, name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/e2e")
        .join(dir)
        .join(name)
}

/// The Python with the `websockets` package (`scripts/setup`'s virtualenv first).
fn python() -> PathBuf {
    let py = weft_testkit::tools::find("python3");
    let (exit, _, err) = guarded::output_within(
        Command::new(&py).args(["-c", "import websockets"]),
        Duration::from_secs(30),
    );
    assert!(
        exit.success(),
        "{} cannot import websockets: run scripts/setup ({err})",
        py.display()
    );
    py
}

/// The WebSocket app on an OS-assigned port; its handshakes are lines of the returned log.
fn ws_app(pki: &Pki) -> (Guard, SocketAddr, PathBuf) {
    let tag = unique_tag("gw-ws-app");
    let port_file = pki.path().join(format!("{tag}.port"));
    let log = pki.path().join(format!("{tag}.log"));
    std::fs::write(&log, "").expect("handshake log");
    let child = guarded::spawn(
        Command::new(python())
            .arg(e2e("websocket", "app.py"))
            .arg(&port_file)
            .arg(&log),
    )
    .expect("start the WebSocket app");
    let port: u16 = weft_testkit::wait::until("the app's port", Duration::from_secs(20), || {
        std::fs::read_to_string(&port_file)
            .ok()?
            .trim()
            .parse()
            .ok()
    });
    (child, SocketAddr::from(([127, 0, 0, 1], port)), log)
}

/// Run `ws_client.py` (at most 60 s); what it printed, as JSON.
async fn ws_client(args: Vec<String>) -> serde_json::Value {
    let py = python();
    let (exit, out, err) = tokio::task::spawn_blocking(move || {
        guarded::output_within(
            Command::new(py)
                .arg(e2e("gateway", "ws_client.py"))
                .args(&args),
            Duration::from_secs(60),
        )
    })
    .await
    .expect("client task");
    assert!(exit.success(), "WebSocket client: {exit}\n{out}\n{err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("client output ({e}): {out}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_from_outside_crosses_the_gateway_into_the_mesh() {
    let fx = tempfile::tempdir().expect("tempdir");
    let (exit, _, err) = guarded::output_within(
        Command::new("/usr/bin/python3")
            .arg(e2e("gateway", "jwt_fixture.py"))
            .arg("gen")
            .arg(fx.path())
            .args(["https://issuer.test", "orders"]),
        Duration::from_secs(60),
    );
    assert!(exit.success(), "jwt_fixture.py gen: {err}");
    let tokens: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fx.path().join("tokens.json")).expect("tokens"))
            .expect("tokens json");
    let token = |name: &str| tokens[name].as_str().expect("token").to_owned();

    let pki = Pki::new(2306);
    pki.issue("orders");
    let (_app, app, handshakes) = ws_app(&pki);
    let orders = Sidecar::start(&pki, Spec::new("orders", app)).await;
    let f = |name: &str| fx.path().join(name).display().to_string();
    let file = pki.path().join("gateway-ws.yaml");
    std::fs::write(
        &file,
        format!(
            "listen: {{https: 127.0.0.1:0}}
tls:
  certificates: [{{hosts: [{HOST}], cert: {}, key: {}}}]
auth:
  jwt_providers:
    - {{name: main, issuer: https://issuer.test, audiences: [orders], jwks_file: {}}}
routes:
  - name: chat
    hosts: [{HOST}]
    match: {{path: {{prefix: /chat}}}}
    service: orders
    access: {{auth: {{jwt: main}}}}
",
            f("server.pem"),
            f("server-key.pem"),
            f("jwks.json")
        ),
    )
    .expect("gateway file");
    let services = service_yaml("orders", "http", None, &[(orders.inbound, "v1")]);
    let (gw, at) = spawn_gateway(&pki, &services, &file).await;
    let run = |mode: &str, token: String| {
        let args = [
            mode.to_owned(),
            at.https.to_string(),
            HOST.to_owned(),
            "/chat".to_owned(),
            f("ca.pem"),
            token,
        ];
        ws_client(args.to_vec())
    };

    // No token, and an expired one: 401 with the Bearer challenge, before any upgrade.
    let r = run("status", "-".to_owned()).await;
    assert_eq!(r["status"], 401, "{r}");
    assert_eq!(r["www_authenticate"], "Bearer realm=\"weft\"", "{r}");
    let r = run("status", token("expired")).await;
    assert_eq!(r["status"], 401, "{r}");
    assert!(
        r["www_authenticate"]
            .as_str()
            .is_some_and(|v| v.contains("invalid_token")),
        "{r}"
    );
    let lines = std::fs::read_to_string(&handshakes).expect("handshake log");
    assert!(
        lines.is_empty(),
        "no refused upgrade reached the app: {lines}"
    );

    // A valid token: 101, then text and binary frames both ways, echoed intact.
    let r = run("exchange", token("valid_rs256")).await;
    assert_eq!(
        r["whoami"]["callers"],
        serde_json::json!([spiffe("gateway")]),
        "the app sees the gateway's identity: {r}"
    );
    assert_eq!(r["whoami"]["path"], "/chat", "{r}");
    let messages = r["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 12, "{r}");
    for m in messages {
        assert_eq!(m["sent"], m["got"], "echoed intact: {m}");
    }
    let kinds: Vec<&str> = (messages.iter())
        .filter_map(|m| m["got"]["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"text") && kinds.contains(&"binary"), "{r}");
    assert_eq!(
        messages
            .iter()
            .filter_map(|m| m["got"]["len"].as_u64())
            .max(),
        Some(1 << 20),
        "a 1 MiB message, over the gateway's body limit, is session bytes, not a body"
    );
    assert_eq!(r["close_rcvd"][0], 1000, "{r}");
    let got = wait_metric(
        gw.admin,
        "weft_gateway_requests_total",
        &[("route", "chat"), ("code", "101")],
        1.0,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(got, 1.0);
    let got = metric(
        gw.admin,
        "weft_gateway_requests_total",
        &[("route", "chat"), ("code", "401")],
    )
    .await;
    assert_eq!(got, 2.0);
}
