//! A `GatewayPolicy` attached to an HTTPRoute: the real `weft-control-plane --kubernetes`
//! against the stand-in API server, a real `weft-proxy` gateway fed over the stream and
//! `orders` behind a real sidecar (the setup of `gateway_stream`). The policy requires a JWT
//! whose keys come from a JWKS HTTPS server started in the test, with tokens signed by PyJWT
//! (`proxy/tests/e2e/gateway/jwt_fixture.py`): through the gateway, no token is `401`, a valid
//! one `200` from orders, a wrong audience `401`; the policy's status says `Accepted` for the
//! Gateway. An invalid edit of the policy closes the route (`503`, status `Invalid`), never
//! opens it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use weft_kube_standin::{self as standin, kubeconfig};
use weft_testkit::process::{output_within, spawn, Guard};
use weft_testkit::wait;

use super::gateway_stream::{
    admin_token_and_join_tokens, curl, edge_args, edge_certs, gateway, orders_and_edge,
    orders_behind_its_sidecar, poll, proxy, HOST,
};
use super::north_south::{class, route, tls_secret};
use super::shared::spawn_control_plane;
use super::source::{meta, TD};

/// The pods' IPs: loopback addresses of their own (other tests use others).
const ORDERS_IP: &str = "127.0.24.2";
const EDGE_IP: &str = "127.0.24.3";
const PYTHON: &str = "/usr/bin/python3";
const ISSUER: &str = "https://issuer.test";

fn fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../proxy/tests/e2e/gateway/jwt_fixture.py")
}

/// Keys, tokens and the JWKS server's certificate in `dir`; the server started on it: its
/// guard and port.
fn jwks(dir: &Path) -> (Guard, u16) {
    let (exit, _, err) = output_within(
        Command::new(PYTHON)
            .arg(fixture())
            .arg("gen")
            .arg(dir)
            .args([ISSUER, "orders"]),
        Duration::from_secs(60),
    );
    assert!(exit.success(), "jwt_fixture.py gen: {err}");
    std::fs::copy(dir.join("jwks.json"), dir.join("served.json")).expect("served.json");
    let mut guard = spawn(
        Command::new(PYTHON)
            .arg(fixture())
            .arg("serve")
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    )
    .expect("start the JWKS server");
    let stdout = guard.take_stdout().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(p) = line.strip_prefix("port ") {
                let _ = tx.send(p.trim().parse::<u16>().ok());
            }
        }
    });
    let port = (rx.recv_timeout(Duration::from_secs(20)).ok().flatten())
        .expect("the JWKS server reports its port");
    (guard, port)
}

/// The JWT policy on `orders-api`, keys from the JWKS server on `port` (its CA at `ca`).
fn jwt_policy(generation: i64, port: u16, ca: &Path, audience: &str) -> Value {
    let mut m = meta("shop", "orders-jwt", "gwpol-orders-jwt");
    m["generation"] = json!(generation);
    json!({"apiVersion": "weft.dev/v1alpha1", "kind": "GatewayPolicy", "metadata": m,
    "spec": {
        "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute",
                        "name": "orders-api"}],
        "auth": {"jwt_providers": [{
            "name": "issuer", "issuer": ISSUER, "audiences": [audience],
            "jwks_url": format!("https://127.0.0.1:{port}/jwks.json"),
            "jwks_ca": ca.display().to_string(),
            "forward_claims": {"sub": "x-user"}
        }]},
        "access": {"auth": {"jwt": "issuer"}}
    }})
}

/// The `Accepted` condition Weft wrote for the Gateway `shop/edge` on the policy.
fn accepted(policy: &Value) -> Option<(String, String, String)> {
    let ancestors = policy["status"]["ancestors"].as_array()?;
    let ours = ancestors.iter().find(|a| {
        a["controllerName"] == "weft.dev/gateway-controller"
            && a["ancestorRef"]["kind"] == "Gateway"
            && a["ancestorRef"]["name"] == "edge"
    })?;
    let c = ours["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Accepted")?;
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
    Some((s("status"), s("reason"), s("message")))
}

// Long: one scenario against one control plane: the policy in force, then an invalid edit.
#[test]
fn a_jwt_policy_on_an_httproute_makes_the_gateway_ask_for_a_token() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let keys = dir.join("jwt");
    std::fs::create_dir_all(&keys).expect("jwt dir");
    let (_jwks, jwks_port) = jwks(&keys);
    let tokens: Value =
        serde_json::from_slice(&std::fs::read(keys.join("tokens.json")).expect("tokens"))
            .expect("tokens JSON");
    let token = |name: &str| tokens[name].as_str().expect("a token").to_owned();
    let ca = keys.join("ca.pem");

    let (edge_ca, crt, key) = edge_certs();
    let https_port = weft_testkit::ports::reserve();
    let orders_api = route(
        "orders-api",
        1,
        json!({
            "parentRefs": [{"name": "edge"}],
            "hostnames": [HOST],
            "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": "/orders"}}],
                "backendRefs": [{"name": "orders", "port": 8080}]
            }]
        }),
    );
    let mut objects = orders_and_edge(ORDERS_IP, EDGE_IP);
    objects.extend([
        class("weft", "weft.dev/gateway-controller"),
        gateway(https_port),
        tls_secret("api-cert", &crt, &key),
        orders_api,
        jwt_policy(1, jwks_port, &ca, "orders"),
    ]);
    let api = rt.block_on(standin::ApiServer::start(objects));
    let config = kubeconfig(dir, &api);
    let cp = spawn_control_plane(dir, &config, "cp", TD, &[] as &[&str]);
    let (listen, admin, state) = (cp.listen, cp.admin, cp.state.clone());
    let cp_log = cp.log_reader();
    admin_token_and_join_tokens(dir, admin, &state);
    std::fs::write(dir.join("edge-ca.pem"), &edge_ca).expect("edge ca");

    // orders: the sample app (it echoes the request's headers) behind its sidecar.
    let (_app, _orders) = orders_behind_its_sidecar(dir, listen, ORDERS_IP);
    let gw_args = edge_args(dir, listen, EDGE_IP, Some("shop/edge"));
    let gw_args: Vec<&str> = gw_args.iter().map(String::as_str).collect();
    let (_gw, _) = proxy(dir, "edge", &gw_args);

    let resolve = format!("{HOST}:{https_port}:127.0.0.1");
    let ca_file = dir.join("edge-ca.pem").display().to_string();
    let get = |bearer: Option<&str>| {
        let url = format!("https://{HOST}:{https_port}/orders/7");
        let auth = bearer.map(|t| format!("Authorization: Bearer {t}"));
        let mut args = vec!["--cacert", &ca_file, "--resolve", &resolve];
        if let Some(a) = &auth {
            args.extend(["-H", a.as_str()]);
        }
        args.push(&url);
        curl(&args)
    };
    let logs = || {
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        format!(
            "--- edge\n{}\n--- orders\n{}\n--- cp\n{}",
            read("edge.log"),
            read("orders.log"),
            cp_log()
        )
    };

    // The policy in force: a token is asked for, a valid one passes to orders.
    let valid = token("valid_rs256");
    poll(
        "a valid token through the gateway",
        Duration::from_secs(40),
        logs,
        || {
            let (code, text) = get(Some(&valid));
            let ok = code == 200 && text.contains("x-served-by: orders-1");
            ok.then_some(()).ok_or(text)
        },
    );
    let (code, text) = get(None);
    assert_eq!(code, 401, "no token: {text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "a challenge: {text}"
    );
    let (code, text) = get(Some(&token("wrong_audience")));
    assert_eq!(code, 401, "wrong audience: {text}");
    let (code, text) = get(Some(&valid));
    assert_eq!(code, 200, "{text}");
    assert!(
        text.contains("\"x-user\":\"alice\""),
        "the subject forwarded as a header: {text}"
    );
    let kept = std::fs::read_to_string(dir.join("gateway/gateway.yaml")).expect("the gateway file");
    assert!(kept.contains("shop/orders-jwt/issuer"), "{kept}");
    let status = wait::until("the policy's status", Duration::from_secs(20), || {
        accepted(&api.get_in("GatewayPolicy", "shop", "orders-jwt"))
    });
    assert_eq!(
        (status.0.as_str(), status.1.as_str()),
        ("True", "Accepted"),
        "{status:?}"
    );

    // An invalid edit (a relative JWKS CA path): the route closes, it does not open.
    let mut bad = jwt_policy(2, jwks_port, Path::new("ca.pem"), "orders");
    bad["metadata"]["generation"] = json!(2);
    api.put(bad);
    poll("the route closed", Duration::from_secs(20), logs, || {
        let (code, text) = get(Some(&valid));
        (code == 503).then_some(()).ok_or(text)
    });
    assert_eq!(get(None).0, 503, "closed to everyone");
    let status = wait::until("the Invalid status", Duration::from_secs(20), || {
        accepted(&api.get_in("GatewayPolicy", "shop", "orders-jwt")).filter(|s| s.0 == "False")
    });
    assert_eq!(status.1, "Invalid", "{status:?}");
    assert!(status.2.contains("jwks_ca"), "{status:?}");
    assert!(!cp_log().contains("panicked"), "{}", cp_log());
}
