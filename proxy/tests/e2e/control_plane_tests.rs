//! The control-plane push: a real control plane (the `weft-control-plane` server, started
//! in-process on the test's runtime so no other package's binary has to be located) and real
//! sidecar processes that take their policy from it over mTLS.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use weft_control_plane::server::Running;

use crate::harness::*;

async fn start_cp(pki: &Pki, policy_dir: &Path) -> Running {
    start_control_plane(pki, policy_dir, "127.0.0.1:0".parse().expect("addr")).await
}

/// A sidecar that takes its policy from the control plane at `cp`.
pub(crate) async fn start_sidecar(
    pki: &Pki,
    name: &str,
    version: &str,
    app: SocketAddr,
    cp: SocketAddr,
) -> Sidecar {
    let mut s = spawn_sidecar(pki, name, name, version, app, cp);
    s.wait_ready().await;
    s
}

/// A sidecar process for service `name` presenting `cert`'s certificate (and identity).
fn spawn_sidecar(
    pki: &Pki,
    name: &str,
    cert: &str,
    version: &str,
    app: SocketAddr,
    cp: SocketAddr,
) -> Sidecar {
    spawn_cp_sidecar(
        pki,
        CpSidecar {
            name,
            identity: cert,
            cert,
            version,
            protocol: "http",
            app,
            cp,
            token: None,
            mounted_bundle: None,
        },
    )
}

pub(crate) fn policy(v1: u32, v2: u32) -> String {
    format!(
        "services:\n\
         \x20 - name: frontend\n    identity: {}\n\
         \x20 - name: orders\n    identity: {}\n\
         routes:\n\
         \x20 - name: orders-split\n    service: orders\n    from: [frontend]\n\
         \x20   backends: [{{subset: {{version: v1}}, weight: {v1}}}, {{subset: {{version: v2}}, weight: {v2}}}]\n",
        spiffe("frontend"),
        spiffe("orders")
    )
}

/// Write a policy file atomically (write, then rename), as operators' tooling should.
pub(crate) fn write_policy(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, dir.join(name)).expect("rename");
}

async fn cp_status(cp: &Running) -> serde_json::Value {
    let (code, body) = cp_get(cp, "/status").await.expect("status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("json")
}

/// The frontend sidecar's entry in the control plane's status.
async fn frontend_status(cp: &Running) -> serde_json::Value {
    let st = cp_status(cp).await;
    st["sidecars"]
        .as_array()
        .expect("sidecars")
        .iter()
        .find(|s| s["service"] == "frontend" && s["connected"] == true)
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

/// The v2 share of `n` sequential requests; panics on any failure.
pub(crate) async fn v2_share(fe: &Sidecar, n: usize) -> f64 {
    let c = client();
    let mut v2 = 0;
    for _ in 0..n {
        let r = get(&c, fe.outbound, "orders", "/split").await;
        assert_eq!(r.status, 200, "{:?}", r.header("x-weft-error"));
        if r.served_by() == "orders-v2" {
            v2 += 1;
        }
    }
    v2 as f64 / n as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sidecars_follow_the_control_plane_refuse_invalid_policy_and_nack() {
    let pki = Pki::new(70);
    pki.issue("frontend");
    pki.issue("orders");
    let policy_dir: PathBuf = pki.path().join("policy");
    std::fs::create_dir(&policy_dir).expect("policy dir");
    write_policy(&policy_dir, "mesh.yaml", &policy(90, 10));
    let cp = start_cp(&pki, &policy_dir).await;

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

    // Connected, ACKed, endpoints registered and merged into the frontend's snapshot.
    let (_, ready) = admin_get(fe.admin, "/ready").await.expect("ready");
    assert!(ready.contains("control plane connected"), "{ready}");
    assert_eq!(
        metric(fe.admin, "weft_control_plane_connected", &[]).await,
        1.0
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let f = frontend_status(&cp).await;
        if !f.is_null() && f["acked_version"] == f["sent_version"] && f["nack"].is_null() {
            break;
        }
        assert!(Instant::now() < deadline, "frontend never ACKed: {f}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let share = v2_share(&fe, 300).await;
    assert!(share < 0.25, "v2 share {share} with weights 90/10");

    // Background traffic for the rest of the test: not one request may fail.
    let bg = Background::start(fe.outbound, "orders");

    // 1. Weights change in the policy directory: the frontend follows within a second.
    let before = frontend_status(&cp).await["acked_version"].clone();
    let t0 = Instant::now();
    write_policy(&policy_dir, "mesh.yaml", &policy(10, 90));
    loop {
        let f = frontend_status(&cp).await;
        if f["acked_version"] != before && f["acked_version"] == f["sent_version"] {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the new weights never reached the frontend: {f}\n{}",
            fe.log_text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = t0.elapsed();
    assert!(
        took <= Duration::from_secs(1),
        "the frontend applied the new weights after {took:?}"
    );
    let share = v2_share(&fe, 300).await;
    assert!(share > 0.75, "v2 share {share} with weights 10/90");

    // 2. An invalid policy file: refused with file and line, nothing pushed, traffic unaffected.
    let acked = frontend_status(&cp).await["acked_version"].clone();
    let version = cp_status(&cp).await["policy_version"].clone();
    write_policy(
        &policy_dir,
        "zz-bad.yaml",
        "routes:\n  - name: broken\n    service: orders\n    match: {path: {regex: \"((\"}}\n",
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let error = loop {
        let st = cp_status(&cp).await;
        if let Some(e) = st["last_policy_error"].as_str() {
            assert_eq!(
                st["policy_version"], version,
                "an invalid policy went in force"
            );
            break e.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "invalid policy not reported: {st}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(error.contains("zz-bad.yaml:4:"), "{error}");
    let (_, m) = admin_get(cp.admin, "/metrics").await.expect("cp metrics");
    assert!(m.contains("weft_cp_policy_valid 0"), "{m}");
    assert!(m.contains("weft_cp_policy_rejected_total 1"), "{m}");
    assert!(error.contains("regex"), "{error}");
    // Showing that something does NOT happen (no new version acknowledged): no event to wait
    // for, so a short wait before the check.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(frontend_status(&cp).await["acked_version"], acked);
    let share = v2_share(&fe, 200).await;
    assert!(share > 0.75, "v2 share {share} after a refused policy");
    std::fs::remove_file(policy_dir.join("zz-bad.yaml")).expect("remove");

    // 3. A snapshot the frontend cannot apply (a service port on its admin listener's port):
    // NACKed with the reason, shown in the status; its config stays.
    let clash = policy(10, 90).replace(
        &format!("  - name: orders\n    identity: {}\n", spiffe("orders")),
        &format!(
            "  - name: orders\n    identity: {}\n    port: {}\n",
            spiffe("orders"),
            fe.admin.port()
        ),
    );
    write_policy(&policy_dir, "mesh.yaml", &clash);
    let deadline = Instant::now() + Duration::from_secs(5);
    let nack = loop {
        let f = frontend_status(&cp).await;
        if !f["nack"].is_null() {
            break f;
        }
        assert!(Instant::now() < deadline, "no NACK: {f}\n{}", fe.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(nack["acked_version"], acked, "{nack}");
    assert_eq!(nack["nack"]["version"], nack["sent_version"], "{nack}");
    let reason = nack["nack"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("port"), "{reason}");
    assert!(
        metric(
            fe.admin,
            "weft_control_plane_snapshots_total",
            &[("result", "nack")]
        )
        .await
            >= 1.0
    );
    let share = v2_share(&fe, 200).await;
    assert!(share > 0.75, "v2 share {share} after a NACK");

    bg.finish().await;
    drop((v1, v2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sidecar_may_only_register_its_own_service_and_endpoints_withdraw_after_the_grace() {
    let pki = Pki::new(71);
    pki.issue("frontend");
    pki.issue("orders");
    let policy_dir: PathBuf = pki.path().join("policy");
    std::fs::create_dir(&policy_dir).expect("policy dir");
    write_policy(&policy_dir, "mesh.yaml", &policy(50, 50));
    let cp = start_cp(&pki, &policy_dir).await;

    // Service "orders" with the frontend's certificate: refused, never ready, never registered.
    let mut impostor = spawn_sidecar(
        &pki,
        "orders",
        "frontend",
        "v1",
        http_app("impostor").await,
        cp.listen,
    );
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
    let deadline = Instant::now() + Duration::from_secs(5);
    while !impostor.log_text().contains("may not speak for service") {
        assert!(
            Instant::now() < deadline,
            "impostor not refused:\n{}",
            impostor.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    impostor.wait_listening().await;
    let (code, body) = admin_get(impostor.admin, "/ready").await.expect("ready");
    assert_eq!(code, 503, "{body}");
    assert_eq!(
        metric(impostor.admin, "weft_control_plane_connected", &[]).await,
        0.0
    );
    let st = cp_status(&cp).await;
    let endpoints: Vec<&str> = st["sidecars"]
        .as_array()
        .expect("sidecars")
        .iter()
        .filter(|s| s["service"] == "orders")
        .filter_map(|s| s["endpoint"].as_str())
        .collect();
    assert_eq!(endpoints.len(), 2, "{st}");
    assert!(!endpoints.contains(&impostor.inbound.to_string().as_str()));

    // Both versions serve.
    let share = v2_share(&fe, 200).await;
    assert!((0.25..0.75).contains(&share), "v2 share {share} with 50/50");

    // v2 goes away: withdrawn after the grace, and the frontend stops sending to it.
    let v2_inbound = v2.inbound.to_string();
    drop(v2);
    let t0 = Instant::now();
    loop {
        let st = cp_status(&cp).await;
        let listed = st["sidecars"]
            .as_array()
            .expect("sidecars")
            .iter()
            .any(|s| s["endpoint"] == v2_inbound.as_str());
        if !listed {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(6),
            "never withdrawn: {st}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(1500),
        "withdrawn before the grace: {:?}",
        t0.elapsed()
    );
    // The frontend's snapshot without v2 is applied (ACKed): the v2 subset selects no endpoint
    // now, so half the requests find none; none reaches the dead endpoint.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let f = frontend_status(&cp).await;
        let (_, dump) = admin_get(fe.admin, "/config_dump").await.expect("dump");
        if f["acked_version"] == f["sent_version"] && !dump.contains(&v2_inbound) {
            break;
        }
        assert!(Instant::now() < deadline, "frontend kept v2: {f}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = client();
    for _ in 0..50 {
        let r = get(&c, fe.outbound, "orders", "/after").await;
        assert!(r.status == 200 || r.status == 503, "status {}", r.status);
        if r.status == 200 {
            assert_eq!(r.served_by(), "orders-v1");
        }
    }
    drop(v1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sidecars_keep_serving_without_the_control_plane_and_resync_when_it_returns() {
    let pki = Pki::new(72);
    pki.issue("frontend");
    pki.issue("orders");
    let policy_dir: PathBuf = pki.path().join("policy");
    std::fs::create_dir(&policy_dir).expect("policy dir");
    write_policy(&policy_dir, "mesh.yaml", &policy(100, 0));
    let cp = start_cp(&pki, &policy_dir).await;
    let listen = cp.listen;
    let v1 = start_sidecar(&pki, "orders", "v1", http_app("orders-v1").await, listen).await;
    let v2 = start_sidecar(&pki, "orders", "v2", http_app("orders-v2").await, listen).await;
    let fe = start_sidecar(&pki, "frontend", "v1", http_app("frontend").await, listen).await;

    // The control plane goes away under load: not one request fails.
    let outbound = fe.outbound;
    let during = tokio::spawn(async move { load(outbound, "orders", "/during", 400, 4).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    cp.shutdown();
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(fe.admin, "weft_control_plane_connected", &[]).await != 0.0 {
        assert!(
            Instant::now() < deadline,
            "still connected:\n{}",
            fe.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, ready) = admin_get(fe.admin, "/ready").await.expect("ready");
    assert_eq!(code, 200, "{ready}");
    assert!(ready.contains("disconnected"), "{ready}");
    let mut outcomes = during.await.expect("load");
    outcomes.extend(load(fe.outbound, "orders", "/down", 300, 4).await);
    let failed = outcomes.iter().filter(|o| o.status != 200).count();
    assert_eq!(failed, 0, "{failed} of {} failed", outcomes.len());
    assert!(outcomes.iter().all(|o| o.served_by == "orders-v1"));

    // The frontend restarts while the control plane is down: it serves from the snapshot it
    // kept (mode 0600).
    let state_file = fe.config.with_extension("cp.json");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&state_file)
            .expect("state file")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let fe = restart(fe).await;
    let (_, ready) = admin_get(fe.admin, "/ready").await.expect("ready");
    assert!(ready.contains("disconnected"), "{ready}");
    let outcomes = load(fe.outbound, "orders", "/restarted", 100, 2).await;
    assert!(
        outcomes
            .iter()
            .all(|o| o.status == 200 && o.served_by == "orders-v1"),
        "{}",
        fe.log_text()
    );

    // The policy changes while it is down; it comes back on the same address: every sidecar
    // reconnects (backoff) and gets the current policy.
    write_policy(&policy_dir, "mesh.yaml", &policy(0, 100));
    let cp = start_control_plane(&pki, &policy_dir, listen).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let st = cp_status(&cp).await;
        let sidecars = st["sidecars"].as_array().expect("sidecars");
        let synced = sidecars
            .iter()
            .filter(|s| {
                s["connected"] == true
                    && !s["sent_version"].is_null()
                    && s["acked_version"] == s["sent_version"]
            })
            .count();
        if synced == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not resynced: {st}\n{}",
            fe.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        metric(fe.admin, "weft_control_plane_connected", &[]).await,
        1.0
    );
    let share = v2_share(&fe, 50).await;
    assert_eq!(share, 1.0, "weights 0/100 after the resync");
    drop((v1, v2));
}

/// Kill a sidecar and start it again on the same config (new ports: it asks for port 0);
/// waits until ready.
async fn restart(mut s: Sidecar) -> Sidecar {
    s.child.kill();
    let log = s.log.with_extension("2.log");
    s.respawn(log);
    s.wait_ready().await;
    s
}

/// Bytes through a dedicated port: written, half-closed, echoed back.
async fn tcp_round_trip(port: u16) -> Result<Vec<u8>, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let (mut r, mut w) = s.into_split();
    w.write_all(b"weft tcp over a pushed port")
        .await
        .map_err(|e| e.to_string())?;
    w.shutdown().await.map_err(|e| e.to_string())?;
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), r.read_to_end(&mut back))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    Ok(back)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_tcp_service_gets_its_dedicated_port_without_a_restart() {
    let pki = Pki::new(94);
    for s in ["frontend", "orders", "db"] {
        pki.issue(s);
    }
    let policy_dir: PathBuf = pki.path().join("policy");
    std::fs::create_dir(&policy_dir).expect("policy dir");
    write_policy(&policy_dir, "mesh.yaml", &policy(90, 10));
    let cp = start_cp(&pki, &policy_dir).await;
    let fe = start_sidecar(
        &pki,
        "frontend",
        "v1",
        http_app("frontend").await,
        cp.listen,
    )
    .await;

    // A TCP app behind its own control-plane-mode sidecar.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let app = l.local_addr().expect("addr");
    weft_samples::tcp::serve_echo(l);
    let mut db = spawn_cp_sidecar(
        &pki,
        CpSidecar {
            name: "db",
            identity: "db",
            cert: "db",
            version: "v1",
            protocol: "tcp",
            app,
            cp: cp.listen,
            token: None,
            mounted_bundle: None,
        },
    );
    db.wait_ready().await;

    // The policy gains `db` with a dedicated port: frontend's sidecar binds it and carries
    // bytes through it, no restart.
    let with_port = |port: u16| {
        format!(
            "services:\n  - name: db\n    identity: {}\n    protocol: tcp\n    port: {port}\n",
            spiffe("db")
        )
    };
    let first = free_port();
    write_policy(&policy_dir, "tcp.yaml", &with_port(first));
    let deadline = Instant::now() + Duration::from_secs(10);
    let echoed = loop {
        match tcp_round_trip(first).await {
            Ok(b) => break b,
            Err(e) => assert!(
                Instant::now() < deadline,
                "port {first} never served: {e}\n{}",
                fe.log_text()
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(echoed, b"weft tcp over a pushed port");

    // Moving the port: the new one serves, the old one closes.
    let second = free_port();
    write_policy(&policy_dir, "tcp.yaml", &with_port(second));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let moved = tcp_round_trip(second).await.is_ok()
            && tokio::net::TcpStream::connect(("127.0.0.1", first))
                .await
                .is_err();
        if moved {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the port did not move\n{}",
            fe.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        tcp_round_trip(second).await.expect("echo"),
        b"weft tcp over a pushed port"
    );
}
