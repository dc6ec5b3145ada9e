//! The `weft-control-plane` binary: starts on a policy directory and answers `GET /status`;
//! refuses to start on an invalid policy, naming file and line.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use weft_testkit::process::{output_within, spawn};
use weft_testkit::wait;

const POLICY: &str =
    "services:\n  - name: orders\n    identity: spiffe://weft.local/ns/default/sa/orders\n";

/// A loopback port reserved for this test process (see `weft_testkit::ports`).
fn free_addr() -> SocketAddr {
    ([127, 0, 0, 1], weft_testkit::ports::reserve()).into()
}

/// `weft-control-plane` serving `<dir>/policy`, its state in `<dir>/state`, on `listen` and
/// `admin`.
fn cp_command(dir: &std::path::Path, listen: SocketAddr, admin: SocketAddr) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weft-control-plane"));
    cmd.arg("--policy-dir")
        .arg(dir.join("policy"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--admin")
        .arg(admin.to_string());
    cmd
}

fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    http_get_auth(addr, path, "")
}

fn http_get_auth(addr: SocketAddr, path: &str, headers: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: cp\r\nConnection: close\r\n{headers}\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[test]
fn serves_status_on_the_admin_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy");
    std::fs::create_dir(&policy).expect("mkdir");
    std::fs::write(policy.join("mesh.yaml"), POLICY).expect("write");
    let (listen, admin) = (free_addr(), free_addr());
    let _child = spawn(
        cp_command(dir.path(), listen, admin)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .expect("spawn");
    // The operator API needs the admin token the control plane created in its state dir.
    let body = wait::until("/status", Duration::from_secs(15), || {
        let token = std::fs::read_to_string(dir.path().join("state/admin.token"));
        token.ok().and_then(|t| {
            http_get_auth(
                admin,
                "/status",
                &format!("Authorization: Bearer {}\r\n", t.trim()),
            )
        })
    });
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("\"policy_version\""), "{body}");
    assert!(body.contains("\"sidecars\": []"), "{body}");
    let metrics = http_get(admin, "/metrics").expect("metrics");
    assert!(metrics.contains("weft_cp_policy_valid 1"), "{metrics}");
    assert!(
        metrics.contains("weft_cp_sidecars{state=\"connected\"} 0"),
        "{metrics}"
    );
    // The root was created in the state directory.
    assert!(dir.path().join("state/ca.crt").exists());
}

#[test]
fn refuses_to_start_on_an_invalid_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy");
    std::fs::create_dir(&policy).expect("mkdir");
    std::fs::write(
        policy.join("mesh.yaml"),
        format!("{POLICY}routes:\n  - name: r\n    service: nowhere\n"),
    )
    .expect("write");
    let (exit, _, err) = output_within(
        &mut cp_command(dir.path(), free_addr(), free_addr()),
        Duration::from_secs(30),
    );
    assert_eq!(exit.code(), Some(1));
    assert!(err.contains("mesh.yaml:6:"), "{err}");
}

#[test]
fn refuses_a_certificate_lifetime_out_of_bounds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy");
    std::fs::create_dir(&policy).expect("mkdir");
    std::fs::write(policy.join("mesh.yaml"), POLICY).expect("write");
    let (exit, _, err) = output_within(
        cp_command(dir.path(), free_addr(), free_addr())
            .arg("--cert-lifetime")
            .arg("30d"),
        Duration::from_secs(30),
    );
    assert_eq!(exit.code(), Some(1));
    assert!(
        err.contains("certificate lifetime 30days is out of bounds"),
        "{err}"
    );
}
