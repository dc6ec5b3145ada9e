//! `control_plane.trust_bundle: mounted` (what the injector sets on Kubernetes): the trust
//! bundle is a file someone else keeps (the `weft-trust-bundle` ConfigMap, mounted read only),
//! the sidecar's only source of roots. A pushed bundle with other roots is neither written nor a
//! NACK (a read-only mount made every such snapshot a NACK before), it is shown in
//! `weft_trust_bundle_differs`; the file's own changes are reloaded.

use std::path::PathBuf;
use std::time::Duration;

use weft_certs::CertificateAuthority;

use crate::control_plane_tests::{policy, write_policy};
use crate::harness::*;

/// Replaces `path` the way the kubelet updates a ConfigMap volume: a new file renamed over.
fn replace(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mounted_trust_bundle_is_the_only_source_and_a_different_push_is_shown_not_applied() {
    let pki = Pki::new(81);
    pki.issue("frontend");
    pki.issue("orders");
    let policy_dir: PathBuf = pki.path().join("policy");
    std::fs::create_dir(&policy_dir).expect("policy dir");
    write_policy(&policy_dir, "mesh.yaml", &policy(100, 0));
    let cp = start_control_plane(&pki, &policy_dir, "127.0.0.1:0".parse().expect("addr")).await;

    // The mounted bundle: the mesh's root and the next one (the first step of a rotation),
    // while the control plane still pushes its one root.
    let next = CertificateAuthority::generate_seeded(TD, 82).expect("next root");
    let mounted = pki.path().join("mounted-ca.crt");
    let two_roots = format!("{}{}", pki.ca.cert_pem(), next.cert_pem());
    replace(&mounted, &two_roots);
    let written_at = std::fs::metadata(&mounted)
        .and_then(|m| m.modified())
        .expect("mtime");

    let orders_app = http_app("orders-v1").await;
    let mut orders = spawn_cp_sidecar(
        &pki,
        CpSidecar {
            name: "orders",
            identity: "orders",
            cert: "orders",
            version: "v1",
            protocol: "http",
            app: orders_app,
            cp: cp.listen,
            token: None,
            mounted_bundle: None,
        },
    );
    orders.wait_ready().await;
    let fe_app = http_app("frontend").await;
    let mut fe = spawn_cp_sidecar(
        &pki,
        CpSidecar {
            name: "frontend",
            identity: "frontend",
            cert: "frontend",
            version: "v1",
            protocol: "http",
            app: fe_app,
            cp: cp.listen,
            token: None,
            mounted_bundle: Some(&mounted),
        },
    );
    fe.wait_ready().await;

    // The push differs from the mount: ACKed (no NACK), shown, not written.
    wait_metric(
        fe.admin,
        "weft_trust_bundle_differs",
        &[],
        1.0,
        Duration::from_secs(10),
    )
    .await;
    assert!(
        metric(
            fe.admin,
            "weft_control_plane_snapshots_total",
            &[("result", "ack")]
        )
        .await
            >= 1.0
    );
    assert_eq!(
        try_metric(
            fe.admin,
            "weft_control_plane_snapshots_total",
            &[("result", "nack")]
        )
        .await
        .unwrap_or(0.0),
        0.0,
        "{}",
        fe.log_text()
    );
    assert_eq!(
        std::fs::read_to_string(&mounted).expect("read"),
        two_roots,
        "the sidecar wrote the mounted bundle"
    );
    assert_eq!(
        std::fs::metadata(&mounted)
            .and_then(|m| m.modified())
            .expect("mtime"),
        written_at
    );
    assert!(
        fe.log_text().contains("differs from the mounted"),
        "{}",
        fe.log_text()
    );
    // Traffic crosses the mTLS hop with the mounted roots in force.
    let c = client();
    let r = get(&c, fe.outbound, "orders", "/hello").await;
    assert_eq!(r.status, 200, "{:?}", r.header("x-weft-error"));
    assert_eq!(r.served_by(), "orders-v1");

    // The mount changes to the pushed root alone (the end of a rotation, seen from the other
    // side): reloaded from the file; the next push agrees with it.
    replace(&mounted, pki.ca.cert_pem());
    wait_log(&fe, "config reloaded (file changed)").await;
    // Any change of policy pushes a snapshot, which carries the control plane's roots again.
    write_policy(
        &policy_dir,
        "zz-payments.yaml",
        &format!(
            "services:\n  - name: payments\n    identity: {}\n",
            spiffe("payments")
        ),
    );
    weft_testkit::wait::until_async(
        "weft_trust_bundle_differs back to 0",
        Duration::from_secs(10),
        || async {
            (try_metric(fe.admin, "weft_trust_bundle_differs", &[]).await == Some(0.0))
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(&mounted).expect("read"),
        pki.ca.cert_pem()
    );
    let r = get(&c, fe.outbound, "orders", "/hello").await;
    assert_eq!(r.status, 200, "{:?}", r.header("x-weft-error"));
}

/// Waits until the sidecar's log holds `text`.
async fn wait_log(s: &Sidecar, text: &str) {
    weft_testkit::wait::until_async(
        &format!("{text:?} in {}'s log", s.name),
        Duration::from_secs(10),
        || async { s.log_text().contains(text).then_some(()) },
    )
    .await;
}
