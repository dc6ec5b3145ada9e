//! Endpoints by service ("endpoints-by-service"): real sidecar processes and the real control
//! plane. A sidecar gets a service's endpoints once it calls the service by Host (the first
//! request waits for them and succeeds); a pod added to that service then reaches its callers
//! as one `Endpoints` message each, and nothing at all reaches a sidecar that never called
//! it, counted by the control plane's own metrics.

use std::path::PathBuf;
use std::time::Duration;

use weft_control_plane::server::Running;

use crate::control_plane_tests::{start_sidecar, write_policy};
use crate::harness::*;

const LIMIT: Duration = Duration::from_secs(10);

fn mesh() -> String {
    format!(
        "services:\n\
         \x20 - name: frontend\n    identity: {}\n\
         \x20 - name: orders\n    identity: {}\n    load_balancer: round_robin\n\
         \x20 - name: users\n    identity: {}\n",
        spiffe("frontend"),
        spiffe("orders"),
        spiffe("users")
    )
}

/// The connected sidecar of `service`'s entry in the control plane's `/status`.
async fn status_of(cp: &Running, service: &str) -> serde_json::Value {
    let (code, body) = cp_get(cp, "/status").await.expect("status");
    assert_eq!(code, 200, "{body}");
    let st: serde_json::Value = serde_json::from_str(&body).expect("json");
    st["sidecars"]
        .as_array()
        .expect("sidecars")
        .iter()
        .find(|s| s["service"] == service && s["connected"] == true)
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

/// `weft_cp_push_messages_total` / `weft_cp_push_bytes_total` of `kind`.
async fn pushed(cp: &Running, kind: &str) -> (f64, f64) {
    (
        metric(cp.admin, "weft_cp_push_messages_total", &[("kind", kind)]).await,
        metric(cp.admin, "weft_cp_push_bytes_total", &[("kind", kind)]).await,
    )
}

/// GET http://<host>/ through a sidecar's outbound listener with the machine's `curl`:
/// (status, body).
async fn curl(outbound: std::net::SocketAddr, host: &str) -> (u16, String) {
    let out = tokio::time::timeout(
        LIMIT,
        tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "8", "-w", "\n%{http_code}", "-H"])
            .arg(format!("Host: {host}"))
            .arg(format!("http://{outbound}/who"))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("curl within its deadline")
    .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_endpoint_change_reaches_the_services_callers_only_and_a_first_call_by_host_succeeds() {
    let pki = Pki::new(77);
    for s in ["frontend", "orders", "users"] {
        pki.issue(s);
    }
    let policy_dir: PathBuf = pki.path().join("policy");
    std::fs::create_dir(&policy_dir).expect("policy dir");
    write_policy(&policy_dir, "mesh.yaml", &mesh());
    let cp = weft_control_plane_start(&pki, &policy_dir).await;
    let listen = cp.listen;
    let _v1 = start_sidecar(&pki, "orders", "v1", http_app("orders-v1").await, listen).await;
    let fe = start_sidecar(&pki, "frontend", "v1", http_app("frontend").await, listen).await;
    let users = start_sidecar(&pki, "users", "v1", http_app("users").await, listen).await;

    // Every sidecar announced the capability; none has subscribed to anything yet.
    let f = status_of(&cp, "frontend").await;
    assert_eq!(f["mode"], "endpoints_by_service", "{f}");
    assert_eq!(f["endpoints"], serde_json::json!({}), "{f}");
    assert_eq!(
        metric(
            cp.admin,
            "weft_cp_sidecars_by_mode",
            &[("mode", "full_snapshots")]
        )
        .await,
        0.0
    );

    // 1. The frontend's first call to orders by Host: it subscribes, waits for the endpoints
    // and the request succeeds.
    let (code, body) = curl(fe.outbound, "orders").await;
    assert_eq!(code, 200, "{body}\n{}", fe.log_text());
    let f =
        weft_testkit::wait::until_async("the frontend ACKs orders' endpoints", LIMIT, || async {
            let f = status_of(&cp, "frontend").await;
            let o = &f["endpoints"]["orders"];
            (!o["acked_version"].is_null() && o["acked_version"] == o["sent_version"]).then_some(f)
        })
        .await;
    let orders_v1 = f["endpoints"]["orders"]["acked_version"].clone();
    let users_before = status_of(&cp, "users").await;
    assert_eq!(users_before["endpoints"], serde_json::json!({}));
    let (msgs0, bytes0) = pushed(&cp, "endpoints").await;
    let (snaps0, _) = pushed(&cp, "snapshot").await;

    // 2. One pod added to orders: the frontend (its only caller) gets orders' endpoints
    // again, one message; users, which never called orders, gets nothing, not even a
    // snapshot; the only new snapshot is the new pod's own.
    let v2 = start_sidecar(&pki, "orders", "v2", http_app("orders-v2").await, listen).await;
    weft_testkit::wait::until_async("the frontend ACKs orders' new endpoints", LIMIT, || async {
        let o = status_of(&cp, "frontend").await["endpoints"]["orders"].clone();
        (o["acked_version"] != orders_v1 && o["acked_version"] == o["sent_version"]).then_some(())
    })
    .await;
    let (msgs1, bytes1) = pushed(&cp, "endpoints").await;
    let (snaps1, _) = pushed(&cp, "snapshot").await;
    assert_eq!(
        msgs1 - msgs0,
        1.0,
        "one Endpoints message, to the one caller"
    );
    assert!(bytes1 > bytes0, "its bytes are counted");
    assert_eq!(snaps1 - snaps0, 1.0, "only the new pod's own snapshot");
    let users_after = status_of(&cp, "users").await;
    assert_eq!(
        users_after["endpoints"],
        serde_json::json!({}),
        "{users_after}"
    );
    assert_eq!(users_after["sent_version"], users_before["sent_version"]);
    // The frontend's config in force lists the new pod, and its requests still succeed.
    let v2_address = v2.inbound.to_string();
    weft_testkit::wait::until_async("the frontend's config lists orders-v2", LIMIT, || async {
        let (_, dump) = admin_get(fe.admin, "/config_dump").await?;
        dump.contains(&v2_address).then_some(())
    })
    .await;
    let (code, body) = curl(fe.outbound, "orders").await;
    assert_eq!(code, 200, "{body}");

    // 3. users calls orders for the first time, after the change: it too gets the current
    // endpoints and its request succeeds.
    let (code, body) = curl(users.outbound, "orders").await;
    assert_eq!(code, 200, "{body}\n{}", users.log_text());
    let u = status_of(&cp, "users").await;
    assert_eq!(
        u["endpoints"]["orders"]["sent_version"],
        status_of(&cp, "frontend").await["endpoints"]["orders"]["acked_version"],
        "{u}"
    );
}

async fn weft_control_plane_start(pki: &Pki, policy_dir: &std::path::Path) -> Running {
    start_control_plane(pki, policy_dir, "127.0.0.1:0".parse().expect("addr")).await
}
