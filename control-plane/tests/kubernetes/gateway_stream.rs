//! A gateway fed over the stream: the real `weft-control-plane --kubernetes` against the
//! stand-in API server (the fixtures of `north_south`), a real `weft-proxy --gateway PATH
//! --gateway-name shop/edge` that bootstraps its own identity with a join token and has no
//! gateway file at start, and `orders` behind a real sidecar (mTLS) on loopback addresses that
//! are the pods' IPs in the stand-in. curl over HTTPS through the gateway reaches orders; an
//! HTTPRoute edit changes the routing within a bounded wait (the time is printed); a Secret
//! made unusable is NACKed (`/v1/status` and `weftctl status` name the gateway and the reason)
//! and the last good keeps serving; the gateway restarted with the control plane gone serves
//! the config it kept.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weft_kube_standin::{self as standin, kubeconfig};
use weft_testkit::process::{spawn, Guard};
use weft_testkit::{tools, wait};

use super::north_south::{class, route, tls_secret};
use super::shared::{spawn_control_plane, ControlPlane};
use super::source::{meta, pod, service, slice, TD};

/// The pods' IPs: loopback addresses, so the sidecars bind them without network namespaces.
const ORDERS_IP: &str = "127.0.23.2";
const EDGE_IP: &str = "127.0.23.3";
pub(super) const HOST: &str = "api.example.test";

/// An edge CA and a certificate for [`HOST`] signed by it: (CA PEM, certificate, key).
pub(super) fn edge_certs() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    // Names of their own: a leaf whose subject is its issuer's looks self-signed to curl.
    ca.distinguished_name
        .push(DnType::CommonName, "gateway stream test edge CA");
    let ca_key = KeyPair::generate().expect("key");
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::new(vec![HOST.to_owned()]).expect("params");
    leaf.distinguished_name.push(DnType::CommonName, HOST);
    let key = KeyPair::generate().expect("key");
    let cert = leaf.signed_by(&key, &issuer).expect("leaf");
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

pub(super) fn gateway(port: u16) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
    "metadata": meta("shop", "edge", "gw-edge"),
    "spec": {"gatewayClassName": "weft", "listeners": [
        {"name": "api", "port": port, "protocol": "HTTPS", "hostname": HOST,
         "tls": {"certificateRefs": [{"name": "api-cert"}]}}
    ]}})
}

/// `prefix` rewritten to `/orders`, to `orders`.
fn orders_api(generation: i64, prefix: &str) -> Value {
    route(
        "orders-api",
        generation,
        json!({
            "parentRefs": [{"name": "edge"}],
            "hostnames": [HOST],
            "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": prefix}}],
                "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {
                    "type": "ReplacePrefixMatch", "replacePrefixMatch": "/orders"}}}],
                "backendRefs": [{"name": "orders", "port": 8080}]
            }]
        }),
    )
}

/// `curl` with `args`: (status, headers and body); 0 when curl got no answer.
pub(super) fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-D", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl runs");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    let code = text
        .rsplit('\n')
        .next()
        .and_then(|c| c.trim().parse().ok())
        .unwrap_or(0);
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (code, text)
}

/// A join token for `service` (service account `account` of `shop`) from the operator API.
pub(super) fn join_token(admin: SocketAddr, bearer: &str, service: &str, account: &str) -> String {
    let body =
        json!({"service": service, "namespace": "shop", "service_account": account}).to_string();
    let auth = format!("Authorization: Bearer {bearer}");
    let url = format!("http://{admin}/v1/tokens");
    // The token file is written before the operator API listens.
    let text = wait::until("a join token", Duration::from_secs(30), || {
        let (code, text) = curl(&["-X", "POST", "-H", &auth, "--data", &body, &url]);
        assert!(code == 0 || code == 201, "{text}");
        (code == 201).then_some(text)
    });
    let json = text
        .find("\r\n\r\n")
        .map(|i| &text[i + 4..])
        .and_then(|b| b.rsplit_once('\n'))
        .and_then(|(b, _)| serde_json::from_str::<Value>(b).ok())
        .unwrap_or_else(|| panic!("token JSON: {text}"));
    json["token"].as_str().expect("token").to_owned()
}

/// A sidecar config in `dir` for `name` (`<app>.shop`, service account `app`) with its join
/// token; returns its path.
pub(super) fn sidecar_config(
    dir: &Path,
    app: &str,
    inbound: &str,
    app_addr: &str,
    cp: SocketAddr,
) -> PathBuf {
    let text = format!(
        "service:\n  name: {app}.shop\n  identity: spiffe://{TD}/ns/shop/sa/{app}\n  app: {app_addr}\n  \
         protocol: http\nlisten:\n  outbound: 127.0.0.1:0\n  inbound: {inbound}\n  admin: 127.0.0.1:0\n\
         tls:\n  cert: {app}.crt\n  key: {app}.key\n  trust_bundle: ca.crt\n\
         control_plane:\n  address: {cp}\n  identity: spiffe://{TD}/ns/weft-system/sa/control-plane\n  \
         state_file: {app}.cp.json\n  join_token_file: {app}.token\n  bootstrap_timeout: 30s\n"
    );
    let path = dir.join(format!("{app}.yaml"));
    std::fs::write(&path, text).expect("config");
    path
}

/// The Services, pods and EndpointSlices of `orders` and `edge` (the gateway), on pod IPs
/// `orders_ip` and `edge_ip`.
pub(super) fn orders_and_edge(orders_ip: &str, edge_ip: &str) -> Vec<Value> {
    vec![
        service("orders", Some("http")),
        service("edge", Some("http")),
        pod("orders-1", "orders", "v1", "orders", orders_ip, true),
        pod("edge-1", "edge", "v1", "edge", edge_ip, true),
        slice(
            "orders-a1",
            "orders",
            Some("http"),
            &[(orders_ip, "orders-1", true)],
        ),
        slice(
            "edge-a1",
            "edge",
            Some("http"),
            &[(edge_ip, "edge-1", true)],
        ),
    ]
}

/// Once the control plane (admin API `admin`, state directory `state`) has made its admin token
/// and CA: the CA copied into `dir`, join tokens for `orders` and `edge` written there
/// (`<app>.token`); returns the admin token.
pub(super) fn admin_token_and_join_tokens(dir: &Path, admin: SocketAddr, state: &Path) -> String {
    let bearer = wait::until("the admin token", Duration::from_secs(30), || {
        let t = std::fs::read_to_string(state.join("admin.token")).ok()?;
        let ca = std::fs::read(state.join("ca.crt")).ok()?;
        std::fs::write(dir.join("ca.crt"), ca).ok()?;
        Some(t.trim().to_owned()).filter(|t| !t.is_empty())
    });
    for app in ["orders", "edge"] {
        let token = join_token(admin, &bearer, app, app);
        std::fs::write(dir.join(format!("{app}.token")), token).expect("token");
    }
    bearer
}

/// orders: the sample app (`orders-1`, it echoes the request) behind its sidecar on its pod's
/// IP `ip` (each test its own, as they may run at once), joined to the control plane at `cp`;
/// the two guards end both.
pub(super) fn orders_behind_its_sidecar(dir: &Path, cp: SocketAddr, ip: &str) -> (Guard, Guard) {
    let app_port = weft_testkit::ports::reserve();
    let app = spawn(
        Command::new(tools::workspace_binary("weft-sample", &["samples/src"]))
            .args([
                "http",
                "--listen",
                &format!("127.0.0.1:{app_port}"),
                "--name",
                "orders-1",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .expect("spawn sample");
    let orders = sidecar_config(
        dir,
        "orders",
        &format!("{ip}:15006"),
        &format!("127.0.0.1:{app_port}"),
        cp,
    );
    let (sidecar, _) = proxy(dir, "orders", &["--config", &orders.display().to_string()]);
    (app, sidecar)
}

/// The edge gateway's sidecar config (identity `edge`, on its pod's IP `ip`) and its
/// `weft-proxy` arguments: that config, `--gateway DIR/gateway/gateway.yaml` and
/// `--gateway-name` if given.
pub(super) fn edge_args(dir: &Path, cp: SocketAddr, ip: &str, name: Option<&str>) -> Vec<String> {
    let edge = sidecar_config(dir, "edge", &format!("{ip}:15006"), "127.0.0.1:9", cp);
    let mut args = vec![
        "--config".to_owned(),
        edge.display().to_string(),
        "--gateway".to_owned(),
        dir.join("gateway/gateway.yaml").display().to_string(),
    ];
    if let Some(name) = name {
        args.extend(["--gateway-name".to_owned(), name.to_owned()]);
    }
    args
}

/// Start `weft-proxy` with `args`; wait for its ready file and return it (JSON) with the guard.
pub(super) fn proxy(dir: &Path, tag: &str, args: &[&str]) -> (Guard, Value) {
    let bin = super::shared::weft_proxy_binary();
    let ready = dir.join(format!("{tag}.ready"));
    let _ = std::fs::remove_file(&ready);
    let log = std::fs::File::create(dir.join(format!("{tag}.log"))).expect("log");
    let guard = spawn(
        Command::new(bin)
            .current_dir(dir)
            .args(args)
            .arg("--ready-file")
            .arg(&ready)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log),
    )
    .expect("spawn weft-proxy");
    let listening = wait::until(&format!("{tag} ready"), Duration::from_secs(90), || {
        let text = std::fs::read_to_string(&ready).ok()?;
        serde_json::from_str::<Value>(&text).ok()
    });
    (guard, listening)
}

/// Poll `check` until it says `Ok` or `limit` passes; then fail with its last word and `logs`.
pub(super) fn poll(
    what: &str,
    limit: Duration,
    logs: impl Fn() -> String,
    mut check: impl FnMut() -> Result<(), String>,
) {
    let deadline = Instant::now() + limit;
    loop {
        let last = match check() {
            Ok(()) => return,
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}: {last}\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn metric(admin: &str, name: &str) -> f64 {
    let (_, text) = curl(&[&format!("http://{admin}/metrics")]);
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The body of a `curl` answer (headers, body, then the status line `curl` was asked for).
fn body_json(text: &str) -> Value {
    text.find("\r\n\r\n")
        .map(|i| &text[i + 4..])
        .and_then(|b| b.rsplit_once('\n'))
        .and_then(|(b, _)| serde_json::from_str::<Value>(b).ok())
        .unwrap_or_else(|| panic!("JSON body: {text}"))
}

/// The gateway's NACK as operators see it: `GET /v1/status` lists the gateway (its Gateway,
/// identity, the version it ACKed, the one it refused and why), and so does the real
/// `weftctl status`.
fn nack_in_status(rt: &tokio::runtime::Runtime, cp: &ControlPlane, bearer: &str) {
    let auth = format!("Authorization: Bearer {bearer}");
    let (code, text) = curl(&["-H", &auth, &format!("http://{}/v1/status", cp.admin)]);
    assert_eq!(code, 200, "{text}");
    let status = body_json(&text);
    // The first start's own stream (which fetched the first config) is listed too, as
    // disconnected, until its grace period ends: the running gateway is the connected one.
    let gw = (status["gateways"].as_array().into_iter().flatten())
        .find(|g| g["gateway"] == "shop/edge" && g["connected"] == true)
        .unwrap_or_else(|| panic!("the gateway in /v1/status: {status:#}"));
    let identity = format!("spiffe://{TD}/ns/shop/sa/edge");
    assert_eq!(gw["identity"], identity.as_str(), "{gw:#}");
    let acked = gw["acked_version"].as_str().expect("a version ACKed");
    let refused = gw["nack"]["version"].as_str().expect("the version NACKed");
    assert_ne!(acked, refused, "{gw:#}");
    let reason = gw["nack"]["reason"].as_str().expect("the reason");
    assert!(reason.contains("gateway certificates"), "{reason}");

    let out = rt.block_on(super::ctl::ok(cp.admin, &cp.token_file(), &["status"]));
    let wants = [identity.as_str(), acked, refused, "gateway certificates"];
    assert!(
        (out.lines()).any(|l| l.starts_with("shop/edge") && wants.iter().all(|w| l.contains(w))),
        "a line of the gateway with {wants:?} in weftctl status:\n{out}"
    );
}

// Long: one scenario against one control plane: start, an edit, a bad edit, a restart.
#[test]
fn a_gateway_takes_its_config_over_the_stream_and_keeps_the_last_good() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (edge_ca, crt, key) = edge_certs();
    let https_port = weft_testkit::ports::reserve();
    let mut objects = orders_and_edge(ORDERS_IP, EDGE_IP);
    objects.extend([
        class("weft", "weft.dev/gateway-controller"),
        gateway(https_port),
        tls_secret("api-cert", &crt, &key),
        orders_api(1, "/v1/orders"),
    ]);
    let api = rt.block_on(standin::ApiServer::start(objects));
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let config = kubeconfig(dir, &api);
    let cp = spawn_control_plane(dir, &config, "cp", TD, &[] as &[&str]);
    let (listen, admin, state) = (cp.listen, cp.admin, cp.state.clone());
    let cp_log = cp.log_reader();
    let bearer = admin_token_and_join_tokens(dir, admin, &state);
    std::fs::write(dir.join("edge-ca.pem"), &edge_ca).expect("edge ca");

    // orders: the sample app behind its sidecar on its pod's IP.
    let (_app, _orders) = orders_behind_its_sidecar(dir, listen, ORDERS_IP);

    // The gateway: its own identity, no gateway file yet; the config comes over the stream.
    let gw_args = edge_args(dir, listen, EDGE_IP, Some("shop/edge"));
    let gw_args: Vec<&str> = gw_args.iter().map(String::as_str).collect();
    let (gw, ready) = proxy(dir, "edge", &gw_args);
    let gw_file = dir.join("gateway/gateway.yaml");
    let gw_admin = ready["admin"].as_str().expect("admin").to_owned();
    let resolve = format!("{HOST}:{https_port}:127.0.0.1");
    let ca_file = dir.join("edge-ca.pem").display().to_string();
    let get = |path: &str| {
        let url = format!("https://{HOST}:{https_port}{path}");
        curl(&["--cacert", &ca_file, "--resolve", &resolve, &url])
    };
    let edge_log = || std::fs::read_to_string(dir.join("edge.log")).unwrap_or_default();

    // curl → gateway (edge TLS) → orders' sidecar (mTLS, the gateway's identity) → orders.
    let logs = || {
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        let (edge, orders) = (read("edge.log"), read("orders.log"));
        format!(
            "--- edge\n{edge}\n--- orders\n{orders}\n--- cp\n{}",
            cp_log()
        )
    };
    poll(
        "orders through the gateway",
        Duration::from_secs(30),
        logs,
        || {
            let (code, text) = get("/v1/orders/7");
            let ok = code == 200 && text.contains("x-served-by: orders-1");
            ok.then_some(()).ok_or(text)
        },
    );
    let kept = std::fs::read_to_string(&gw_file).expect("the config kept as the gateway file");
    assert!(
        kept.contains("/v1/orders") && kept.contains("Gateway shop/edge"),
        "{kept}"
    );

    // An HTTPRoute edit: the new prefix routes, the old one no longer does.
    let edited = Instant::now();
    api.put(orders_api(2, "/v2/orders"));
    wait::until("the edited route in force", Duration::from_secs(20), || {
        (get("/v2/orders/7").0 == 200 && get("/v1/orders/7").0 == 404).then_some(())
    });
    let took = edited.elapsed();
    eprintln!("the HTTPRoute edit routed through the gateway after {took:?}");
    assert!(took < Duration::from_secs(5), "the edit took {took:?}");

    // A bad edit: the certificate unusable. NACKed, counted, and the last good still serves.
    let errors_before = metric(
        &gw_admin,
        "weft_gateway_config_reloads_total{result=\"error\"}",
    );
    api.put(tls_secret(
        "api-cert",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        &key,
    ));
    wait::until(
        "the NACK at the control plane",
        Duration::from_secs(20),
        || cp_log().contains("NACKed gateway/shop/edge").then_some(()),
    );
    let nack = cp_log()
        .lines()
        .find(|l| l.contains("NACKed gateway/shop/edge"))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(nack.contains("gateway certificates"), "the reason: {nack}");
    nack_in_status(&rt, &cp, &bearer);
    let errors = metric(
        &gw_admin,
        "weft_gateway_config_reloads_total{result=\"error\"}",
    );
    assert!(
        errors > errors_before,
        "{errors} <= {errors_before}\n{}",
        edge_log()
    );
    assert!(
        edge_log().contains("rejected, the one in force stays"),
        "{}",
        edge_log()
    );
    let (code, text) = get("/v2/orders/7");
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("x-served-by: orders-1"), "{text}");
    let kept = std::fs::read_to_string(&gw_file).expect("file");
    assert!(
        kept.contains("/v2/orders"),
        "the last good stays the file: {kept}"
    );
    let kept_crt = std::fs::read_to_string(dir.join("gateway/tls/listener-0.crt")).expect("crt");
    assert_eq!(kept_crt, crt, "the refused certificate is not kept");

    // The control plane gone, the gateway restarted: it serves the config it kept.
    drop(gw);
    drop(cp);
    let (_gw, _) = proxy(dir, "edge-restarted", &gw_args);
    wait::until(
        "the kept config after a restart",
        Duration::from_secs(30),
        || (get("/v2/orders/7").0 == 200).then_some(()),
    );
    assert!(!cp_log().contains("panicked"), "{}", cp_log());
    assert!(!edge_log().contains("panicked"), "{}", edge_log());
}
