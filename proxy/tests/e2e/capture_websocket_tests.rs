//! A WebSocket through transparent capture: the `websockets` package's own client, unmodified
//! and with no proxy setting, in one pod dials the other pod's app by its pod IP and by the
//! service's name; both pods' rules (`weft-proxy init`) take the connection through the two
//! sidecars and mutual TLS. The app (the package's own server, on `0.0.0.0`) echoes. Reuses
//! the namespaces of `capture_tests` and the scripts of `upgrade_tests`.
//!
//! Needs root (network namespaces, nftables, iptables); see `capture_tests` for `WEFT_NO_NETNS`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

use weft_testkit::wait;

use crate::capture_tests::{
    capture, client_services, config, three_pods, Backend, Pod, APP_PORT, AS_APP, CMD_LIMIT,
};
use crate::harness::spiffe;
use crate::upgrade_tests::{access_log, python, run_ws_client, script, WsApp};

/// The WebSocket client in `pod` with `args`: as the app's UID (so capture takes it) when
/// `as_app`, else as root (which a pod without capture is anyway). Its environment is
/// emptied but for `PATH`, so no proxy variable reaches it.
async fn ws_client_in(pod: &Pod, as_app: bool, args: &[&str]) -> serde_json::Value {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &pod.ns]);
    if as_app {
        cmd.args(AS_APP);
    }
    cmd.arg(python())
        .arg(script("client.py"))
        .args(args)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    run_ws_client(cmd).await
}

/// `/etc/netns/<pod>/hosts`, which `ip netns exec` puts in place of `/etc/hosts` for that
/// pod's commands (as `weft up` names its pods); removed on drop.
struct Hosts(PathBuf);

impl Hosts {
    fn write(pod: &Pod, lines: &str) -> Hosts {
        let dir = Path::new("/etc/netns").join(&pod.ns);
        std::fs::create_dir_all(&dir).expect("/etc/netns/<pod>");
        std::fs::write(dir.join("hosts"), format!("127.0.0.1 localhost\n{lines}")).expect("hosts");
        Hosts(dir)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_websocket_crosses_mtls_nftables() {
    a_captured_websocket_crosses_mtls_with_frames_to_1_mib_and_plaintext_is_refused(
        Backend::Nftables,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_websocket_crosses_mtls_iptables() {
    a_captured_websocket_crosses_mtls_with_frames_to_1_mib_and_plaintext_is_refused(
        Backend::Iptables,
    )
    .await;
}

async fn a_captured_websocket_crosses_mtls_with_frames_to_1_mib_and_plaintext_is_refused(
    backend: Backend,
) {
    let Some((_net, [client, server, outsider], pki)) = three_pods(2210) else {
        return;
    };
    let bind = SocketAddr::from((Ipv4Addr::UNSPECIFIED, APP_PORT));
    let app = WsApp::start_in(&pki, Some(&server.ns), bind);

    let logs = |side: &str| pki.path().join(format!("{side}-access.log"));
    let server_log = format!("access_log: {}\n", logs("server").display());
    capture(&server, backend);
    let server_sidecar = server.sidecar(
        pki.path(),
        "server",
        &config("server", &server, "", &server_log),
    );
    capture(&client, backend);
    let rest = format!(
        "access_log: {}\n{}",
        logs("client").display(),
        client_services(&server)
    );
    let client_sidecar =
        client.sidecar(pki.path(), "client", &config("client", &client, "", &rest));

    // By the server pod's IP and the app's port, with no proxy: "whoami", then text and
    // binary messages of 1 B to 1 MiB each echoed, a hold, and the client's close.
    let target = format!("{}:{APP_PORT}", server.ip);
    let hold = 1.0;
    let forged = "spiffe://weft.local/ns/default/sa/forged";
    let exchange = ["exchange", "-", &target, "/chat", "1.0", forged];
    let got = ws_client_in(&client, true, &exchange).await;

    // The app saw the upgrade request with the caller's identity proven by mTLS (the
    // client's own x-weft-caller was dropped): the session crossed both sidecars.
    assert_eq!(
        got["whoami"],
        serde_json::json!({"path": "/chat", "callers": [spiffe("client")]}),
        "{got}\n{}",
        client_sidecar.log_text()
    );
    let messages = got["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 12, "{got}");
    for m in messages {
        // Length and SHA-256 of what was sent and of what came back, both ways.
        assert_eq!(m["sent"], m["got"], "echoed unchanged: {m}");
    }
    for kind in ["text", "binary"] {
        let sizes: Vec<u64> = messages
            .iter()
            .filter(|m| m["got"]["kind"] == kind)
            .filter_map(|m| m["got"]["len"].as_u64())
            .collect();
        for size in [1, 64 << 10, 1 << 20] {
            assert!(sizes.contains(&size), "{kind} {size} B: {sizes:?}");
        }
    }
    assert_eq!(got["close_sent"], serde_json::json!([1000, "client done"]));
    assert_eq!(got["close_rcvd"], serde_json::json!([1000, "client done"]));
    assert_eq!(app.wait_handshakes(1).len(), 1);

    // The session is one request on each side, on the mesh route to `server`, answered 101
    // and lasting the session, in the metrics and in the access log with the client's
    // identity.
    for (side, sidecar, direction) in [
        ("client", &client_sidecar, "outbound"),
        ("server", &server_sidecar, "inbound"),
    ] {
        let dir = [("direction", direction), ("dst_service", "server")];
        let upgraded = [dir[0], dir[1], ("status_code", "101")];
        wait::until(&format!("{side}: the 101 counted"), CMD_LIMIT, || {
            (sidecar.metric("weft_responses_total", &upgraded) >= 1.0).then_some(())
        });
        assert_eq!(sidecar.metric("weft_requests_total", &dir), 1.0, "{side}");
        assert_eq!(sidecar.metric("weft_responses_total", &dir), 1.0, "{side}");
        let n = sidecar.metric("weft_request_duration_seconds_count", &dir);
        assert_eq!(n, 1.0, "{side}");
        let secs = sidecar.metric("weft_request_duration_seconds_sum", &dir);
        assert!(secs >= hold, "{side}: the session lasted {secs} s");
        let lines = access_log(&logs(side), 1);
        assert_eq!(lines.len(), 1, "{side}: {lines:#?}");
        let line = &lines[0];
        assert_eq!(line["direction"], direction, "{line}");
        assert_eq!(line["dst_identity"], spiffe("server"), "{line}");
        assert_eq!(line["status"], 101, "{line}");
        assert_eq!(line["path"], "/chat", "{line}");
        assert_eq!(line["src_identity"], spiffe("client"), "{line}");
    }

    // By the service's name, as an app finds it (a hosts entry for the pod): the same
    // captured path, routed by the Host the client sends.
    let _hosts = Hosts::write(&client, &format!("{} server\n", server.ip));
    let by_name = format!("server:{APP_PORT}");
    let named = ws_client_in(&client, true, &["status", "-", &by_name, "/chat"]).await;
    assert_eq!(named["status"], 101, "{named}");
    let seen = app.wait_handshakes(2);
    assert_eq!(seen[1]["callers"], serde_json::json!([spiffe("client")]));

    // The same WebSocket from a third pod, in plaintext straight to the app's pod IP and
    // port: inbound capture hands it to the sidecar's mTLS listener, which refuses it.
    let plain = ws_client_in(&outsider, false, &["status", "-", &target, "/chat"]).await;
    assert!(
        plain["refused"].is_string(),
        "plaintext got through: {plain}"
    );
    assert_eq!(app.handshakes().len(), 2, "the app saw no third handshake");
}
