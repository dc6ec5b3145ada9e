//! Operators' policy changes through the control plane's API (`weftctl`'s own code, run in
//! process against a control plane started in process), with real sidecars and apps: an
//! apply moves traffic, a rollback restores the split at every sidecar without a failed
//! request, and a sidecar's NACK shows in `weftctl status`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use weft_control_plane::operator::client::{self as ctl, Connection, CtlError, OpsCommand};
use weft_control_plane::server::Running;

use crate::control_plane_tests::{policy, start_sidecar, v2_share};
use crate::harness::*;

/// Run a weftctl operator command against `cp`; its result and standard output.
async fn weftctl(cp: &Running, command: OpsCommand) -> (Result<(), CtlError>, String) {
    let conn = Connection {
        server: Some(format!("http://{}", cp.admin)),
        token_file: Some(cp.admin_token_file.clone()),
    };
    let mut out = Vec::new();
    let r = ctl::run(&conn, command, &mut out).await;
    (r, String::from_utf8_lossy(&out).into_owned())
}

async fn cp_status(cp: &Running) -> serde_json::Value {
    let (code, body) = cp_get(cp, "/v1/status").await.expect("status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("json")
}

/// The policy version a sidecar says (in `/ready`) it applied from the control plane.
async fn applied_cp_version(s: &Sidecar) -> String {
    let (_, body) = admin_get(s.admin, "/ready").await.expect("ready");
    body.split_once("; policy ")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(v, _)| v.to_owned())
        .unwrap_or_default()
}

/// Wait (at most 10 s) until every sidecar in `sidecars` has ACKed what the control plane last
/// sent it and applied exactly that version; the frontend's version then.
async fn wait_in_sync(cp: &Running, sidecars: &[&Sidecar], frontend: &Sidecar) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = cp_status(cp).await;
        let entries = st["sidecars"].as_array().cloned().unwrap_or_default();
        let mut all = true;
        let mut fe_version = String::new();
        for s in sidecars {
            let inbound = s.inbound.to_string();
            let e = entries
                .iter()
                .find(|e| e["endpoint"] == inbound.as_str() && e["connected"] == true);
            let ok = match e {
                Some(e) => {
                    let sent = e["sent_version"].as_str().unwrap_or_default();
                    !sent.is_empty()
                        && e["acked_version"] == e["sent_version"]
                        && applied_cp_version(s).await == sent
                }
                None => false,
            };
            if ok && s.inbound == frontend.inbound {
                fe_version = applied_cp_version(s).await;
            }
            all &= ok;
        }
        if all {
            return fe_version;
        }
        assert!(Instant::now() < deadline, "sidecars not in sync: {st}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn apply_and_rollback_through_the_api_move_traffic_and_a_nack_shows_in_weftctl_status() {
    let pki = Pki::new(74);
    pki.issue("frontend");
    pki.issue("orders");
    let policy_dir: PathBuf = pki.path().join("policy");
    std::fs::create_dir(&policy_dir).expect("policy dir");
    std::fs::write(policy_dir.join("mesh.yaml"), policy(90, 10)).expect("write");
    let cp = start_control_plane(&pki, &policy_dir, "127.0.0.1:0".parse().expect("addr")).await;
    let v1 = start_sidecar(&pki, "orders", "v1", http_app("orders-v1").await, cp.listen).await;
    let v2 = start_sidecar(&pki, "orders", "v2", http_app("orders-v2").await, cp.listen).await;
    let fe = start_sidecar(
        &pki,
        "frontend",
        "v1",
        http_app("frontend").await,
        cp.listen,
    )
    .await;
    let all = [&v1, &v2, &fe];
    let fe_v0 = wait_in_sync(&cp, &all, &fe).await;
    let share = v2_share(&fe, 200).await;
    assert!(share < 0.25, "v2 share {share} with weights 90/10");
    // `weftctl get endpoints`: both orders sidecars, registered, with their labels.
    let (r, out) = weftctl(
        &cp,
        OpsCommand::Get {
            kind: ctl::Kind::Endpoints,
        },
    )
    .await;
    assert!(r.is_ok(), "{r:?}");
    for (s, label) in [(&v1, "version=v1"), (&v2, "version=v2")] {
        let row = out
            .lines()
            .find(|l| l.contains(&s.inbound.to_string()))
            .unwrap_or_default();
        assert!(
            row.starts_with("orders ")
                && row.contains(label)
                && row.contains("registered")
                && row.ends_with("yes"),
            "{out}"
        );
    }
    let version0 = cp_status(&cp).await["policy_version"]
        .as_str()
        .expect("version")
        .to_owned();

    // Background traffic for the rest of the test: not one request may fail.
    let bg = Background::start(fe.outbound, "orders");

    // 1. A weight change applied through the API: every sidecar in sync, traffic follows.
    let tmp = tempfile::tempdir().expect("tempdir");
    let changed = file(tmp.path(), "mesh.yaml", &policy(10, 90));
    let (r, out) = weftctl(
        &cp,
        OpsCommand::Apply {
            files: vec![changed],
            dry_run: false,
        },
    )
    .await;
    assert!(r.is_ok(), "{r:?}: {out}");
    assert!(
        out.contains(&format!("applied: version {version0} -> ")),
        "{out}"
    );
    let fe_v1 = wait_in_sync(&cp, &all, &fe).await;
    assert_ne!(fe_v1, fe_v0, "the frontend's snapshot changed");
    let share = v2_share(&fe, 300).await;
    assert!(share > 0.75, "v2 share {share} after applying 10/90");

    // 2. Rollback to the first version: the frontend is back on its first snapshot, every
    // sidecar applied what the control plane sent, and the split is 90/10 again.
    let (r, out) = weftctl(
        &cp,
        OpsCommand::Rollback {
            version: version0.clone(),
        },
    )
    .await;
    assert!(r.is_ok(), "{r:?}: {out}");
    assert!(out.contains(&format!("-> {version0}")), "{out}");
    let fe_back = wait_in_sync(&cp, &all, &fe).await;
    assert_eq!(fe_back, fe_v0, "the frontend is back on the first snapshot");
    assert_eq!(cp_status(&cp).await["policy_version"], version0.as_str());
    let share = v2_share(&fe, 300).await;
    assert!(share < 0.25, "v2 share {share} after the rollback to 90/10");
    let (r, out) = weftctl(&cp, OpsCommand::History).await;
    assert!(r.is_ok(), "{r:?}");
    let newest = out.lines().nth(1).unwrap_or_default();
    assert!(
        newest.contains(&version0) && newest.ends_with("rollback"),
        "{out}"
    );

    // 3. A snapshot the frontend cannot apply (a service port on its admin listener's port):
    // the control plane accepts it, the frontend NACKs, and `weftctl status` says why.
    let clash = policy(90, 10).replace(
        &format!("  - name: orders\n    identity: {}\n", spiffe("orders")),
        &format!(
            "  - name: orders\n    identity: {}\n    port: {}\n",
            spiffe("orders"),
            fe.admin.port()
        ),
    );
    let clash = file(tmp.path(), "mesh.yaml", &clash);
    let (r, out) = weftctl(
        &cp,
        OpsCommand::Apply {
            files: vec![clash],
            dry_run: false,
        },
    )
    .await;
    assert!(r.is_ok(), "{r:?}: {out}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let (r, out) = weftctl(&cp, OpsCommand::Status).await;
        assert!(r.is_ok(), "{r:?}");
        let row = out
            .lines()
            .find(|l| l.starts_with("frontend ") && l.contains(&fe.inbound.to_string()))
            .unwrap_or_default()
            .to_owned();
        if row.contains("port") {
            break out;
        }
        assert!(
            Instant::now() < deadline,
            "no NACK in status:\n{out}\n{}",
            fe.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let header = status.lines().nth(1).unwrap_or_default();
    assert!(
        header.starts_with("SERVICE") && header.contains("NACK"),
        "{status}"
    );
    let row = status
        .lines()
        .find(|l| l.starts_with("frontend "))
        .unwrap_or_default();
    assert!(
        row.contains(&fe_v0),
        "still on the last snapshot it applied: {status}"
    );
    assert!(row.contains(" no "), "not in sync: {status}");
    assert_eq!(applied_cp_version(&fe).await, fe_v0);
    let share = v2_share(&fe, 200).await;
    assert!(share < 0.25, "v2 share {share} after a NACK");

    bg.finish().await;
}
