//! A hand-written gateway file on a gateway that joins the control plane: the real
//! `weft-control-plane --kubernetes` against the stand-in API server, a real `weft-proxy
//! --config edge.yaml --gateway gateway.yaml` (no `--gateway-name`) whose sidecar file has a
//! `control_plane` block and a join token and lists no services, and `orders` behind a real
//! sidecar. The gateway waits for the control plane's first snapshot before it checks the file
//! (whose route names `orders.shop`, which only the snapshot lists), then curl over HTTPS through
//! it reaches orders. The Service removed, the next snapshot lacks `orders.shop`: the gateway
//! logs which route names it and keeps running on the config in force; the Service back, orders
//! answers again. A file naming a service the snapshot lacks is refused with `file:line:col`
//! (exit 2); with no snapshot within `control_plane.bootstrap_timeout` the start gives up
//! (exit 3).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use weft_kube_standin::{self as standin, kubeconfig};
use weft_testkit::process::{output_within, Exit};
use weft_testkit::wait;

use super::gateway_stream::{
    admin_token_and_join_tokens, curl, edge_certs, orders_and_edge, orders_behind_its_sidecar,
    poll, proxy, sidecar_config, HOST,
};
use super::shared::spawn_control_plane;
use super::source::{service, TD};

/// The pods' IPs: loopback addresses of their own (`gateway_stream` may run at the same time).
const ORDERS_IP: &str = "127.0.25.2";
const EDGE_IP: &str = "127.0.25.3";

/// A gateway file with one route, `/v1/orders` to `service` (rewritten to `/orders`).
fn gateway_file(https_port: u16, service: &str) -> String {
    format!(
        "# Written by hand: the gateway's own edge, its mesh services from the control plane.\n\
         listen:\n  https: 127.0.0.1:{https_port}\n\
         tls:\n  certificates:\n    - {{hosts: [{HOST}], cert: edge-tls.crt, key: edge-tls.key}}\n\
         routes:\n  - name: orders-v1\n    hosts: [{HOST}]\n    \
         match: {{path: {{prefix: /v1/orders}}}}\n    service: {service}\n    \
         rewrite: {{prefix: /orders}}\n"
    )
}

/// Run `weft-proxy --config config --gateway gateway` to its exit (it must refuse to start).
fn refused(dir: &Path, config: &str, gateway: &str) -> (Exit, String) {
    let (exit, _, err) = output_within(
        Command::new(super::shared::weft_proxy_binary())
            .current_dir(dir)
            .args(["--config", config, "--gateway", gateway])
            .env("RUST_LOG", "info"),
        Duration::from_secs(60),
    );
    (exit, err)
}

// Long: one scenario against one control plane: the start, a service gone and back, the two
// refusals.
#[test]
fn a_hand_written_gateway_file_joins_the_control_plane() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (edge_ca, crt, key) = edge_certs();
    let https_port = weft_testkit::ports::reserve();
    let objects = orders_and_edge(ORDERS_IP, EDGE_IP);
    let api = rt.block_on(standin::ApiServer::start(objects));
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let config = kubeconfig(dir, &api);
    let cp = spawn_control_plane(dir, &config, "cp", TD, &[] as &[&str]);
    let (listen, admin, state) = (cp.listen, cp.admin, cp.state.clone());
    let cp_log = cp.log_reader();
    admin_token_and_join_tokens(dir, admin, &state);
    std::fs::write(dir.join("edge-ca.pem"), &edge_ca).expect("edge ca");
    std::fs::write(dir.join("edge-tls.crt"), &crt).expect("edge crt");
    std::fs::write(dir.join("edge-tls.key"), &key).expect("edge key");

    let (_app, _orders) = orders_behind_its_sidecar(dir, listen, ORDERS_IP);

    // The gateway: a join token, no certificate, no snapshot kept yet, no services in its
    // sidecar file; the gateway file names orders.shop.
    let edge = sidecar_config(
        dir,
        "edge",
        &format!("{EDGE_IP}:15006"),
        "127.0.0.1:9",
        listen,
    );
    assert!(!std::fs::read_to_string(&edge)
        .expect("edge.yaml")
        .contains("services:"));
    std::fs::write(
        dir.join("gateway.yaml"),
        gateway_file(https_port, "orders.shop"),
    )
    .expect("gateway file");
    let edge_arg = edge.display().to_string();
    let (gw, _) = proxy(
        dir,
        "edge",
        &["--config", &edge_arg, "--gateway", "gateway.yaml"],
    );
    let edge_log = || std::fs::read_to_string(dir.join("edge.log")).unwrap_or_default();
    assert!(
        edge_log().contains("waiting for the first snapshot"),
        "{}",
        edge_log()
    );
    let resolve = format!("{HOST}:{https_port}:127.0.0.1");
    let ca_file = dir.join("edge-ca.pem").display().to_string();
    let get = |path: &str| {
        let url = format!("https://{HOST}:{https_port}{path}");
        curl(&["--cacert", &ca_file, "--resolve", &resolve, &url])
    };
    let logs = || format!("--- edge\n{}\n--- cp\n{}", edge_log(), cp_log());
    let served = || {
        let (code, text) = get("/v1/orders/7");
        (code == 200 && text.contains("x-served-by: orders-1"))
            .then_some(())
            .ok_or(text)
    };
    poll(
        "orders through the gateway",
        Duration::from_secs(30),
        logs,
        served,
    );

    // The Service gone: the next snapshot lacks orders.shop. The gateway says so and runs on.
    let dropped = Instant::now();
    api.delete("Service", "orders");
    poll(
        "the gateway's error about orders.shop",
        Duration::from_secs(30),
        logs,
        || {
            let log = edge_log();
            let line = log.lines().find(|l| l.contains("lack what routes name"));
            match line {
                Some(l) if l.contains("route orders-v1: orders.shop") => Ok(()),
                _ => Err("no error logged yet".to_owned()),
            }
        },
    );
    eprintln!(
        "the missing service was logged after {:?}",
        dropped.elapsed()
    );
    let (code, text) = get("/v1/orders/7");
    // The mesh's answer for a Host it does not know, through the config in force.
    assert_eq!(code, 404, "orders.shop is gone: {text}");
    assert!(text.contains("x-weft-error: no route"), "{text}");
    let mut gw = gw;
    assert!(gw.status().is_none(), "the gateway runs on\n{}", logs());

    // Back: the same config serves orders again.
    api.put(service("orders", Some("http")));
    poll("orders back", Duration::from_secs(30), logs, served);
    wait::until(
        "the gateway saying the services are back",
        Duration::from_secs(10),
        || edge_log().contains("is in the mesh again").then_some(()),
    );

    // A file naming a service the control plane does not list: refused after the first
    // snapshot (waited for again: the kept one removed), with its line and column.
    std::fs::write(dir.join("bad.yaml"), gateway_file(0, "payments.shop")).expect("bad file");
    std::fs::remove_file(dir.join("edge.cp.json")).expect("the snapshot kept");
    let (exit, err) = refused(dir, &edge_arg, "bad.yaml");
    assert_eq!(exit.code(), Some(2), "{err}");
    assert!(err.contains("control-plane snapshot"), "waited: {err}");
    assert!(
        err.contains("bad.yaml:11:") && err.contains("payments.shop"),
        "file:line:col and the service: {err}"
    );

    // No control plane and no snapshot kept: the start gives up after the bound.
    drop(gw);
    drop(cp);
    let text = std::fs::read_to_string(&edge).expect("edge.yaml");
    let alone = text
        .replace("state_file: edge.cp.json", "state_file: alone.cp.json")
        .replace("bootstrap_timeout: 30s", "bootstrap_timeout: 2s");
    assert_ne!(alone, text);
    std::fs::write(dir.join("alone.yaml"), alone).expect("alone.yaml");
    let started = Instant::now();
    let (exit, err) = refused(dir, "alone.yaml", "gateway.yaml");
    assert_eq!(exit.code(), Some(3), "{err}");
    assert!(
        err.contains("no snapshot from the control plane")
            && err.contains("control_plane.bootstrap_timeout"),
        "{err}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "waited the bound"
    );
    assert!(!edge_log().contains("panicked"), "{}", edge_log());
}
