//! Bounds on the control plane's listeners, against the real `weft-control-plane` binary
//! (operator API, sidecars' port): slow and idle clients are closed after their timeout while
//! a legitimate client is still served, connections beyond the cap are refused, the process's
//! memory stays bounded, and a plaintext operator API beyond loopback is refused at start. The
//! registration flood and the sidecars' connection cap over real mTLS are `sidecar_port.rs`;
//! the webhook's bounds `kubernetes/webhook_bounds.rs`; the snapshot bound the hub's unit tests
//! and `weft-cli`'s `ops_cli.rs`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weft_testkit::process::{output_within, spawn, Guard};
use weft_testkit::wait;

const POLICY: &str =
    "services:\n  - name: orders\n    identity: spiffe://weft.local/ns/default/sa/orders\n";

fn free_addr() -> SocketAddr {
    ([127, 0, 0, 1], weft_testkit::ports::reserve()).into()
}

fn policy_dir(dir: &Path) {
    std::fs::create_dir_all(dir.join("policy")).expect("mkdir");
    std::fs::write(dir.join("policy/mesh.yaml"), POLICY).expect("write");
}

fn cp_command(dir: &Path, listen: SocketAddr, admin: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weft-control-plane"));
    cmd.arg("--policy-dir")
        .arg(dir.join("policy"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--admin")
        .arg(admin);
    cmd
}

/// `GET /live` answered 200 within `limit`, on a fresh connection.
fn live(addr: SocketAddr, limit: Duration) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, limit) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(limit));
    if s.write_all(b"GET /live HTTP/1.1\r\nHost: cp\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200")
}

/// Whether the server closes `s` (EOF or reset) within `limit`; bytes it sends are skipped.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).expect("timeout");
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true, // reset
        }
    }
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn start_binary(dir: &Path, listen: SocketAddr, admin: SocketAddr, extra: &[&str]) -> Guard {
    policy_dir(dir);
    let child = spawn(
        cp_command(dir, listen, &admin.to_string())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .expect("spawn");
    wait::until("the operator API", Duration::from_secs(20), || {
        live(admin, Duration::from_secs(1)).then_some(())
    });
    child
}

#[test]
fn operator_api_closes_slow_and_idle_clients_and_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = free_addr();
    let cp = start_binary(
        dir.path(),
        free_addr(),
        admin,
        &[
            "--admin-max-connections",
            "8",
            "--admin-header-timeout",
            "1s",
            "--admin-idle-timeout",
            "2s",
        ],
    );
    let before = rss_kib(cp.id());

    // A slow client: a request line, then one header byte now and then.
    let mut slow = TcpStream::connect(admin).expect("connect");
    slow.write_all(b"GET /live HTTP/1.1\r\nX-Slow: ")
        .expect("write");
    // Idle connections, far beyond the cap (8 served, 8 waiting, the rest closed at once).
    let mut idle: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(admin).expect("connect"))
        .collect();

    // A legitimate client is served within its deadline while they hold on.
    wait::until("a legitimate request", Duration::from_secs(10), || {
        live(admin, Duration::from_secs(5)).then_some(())
    });

    // The slow client is closed after the header timeout, though it keeps sending.
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut closed = false;
    while Instant::now() < deadline {
        if slow.write_all(b"x").is_err() || closed_within(&mut slow, Duration::from_millis(300)) {
            closed = true;
            break;
        }
    }
    assert!(closed, "the slow client was never closed");
    // Every idle connection is closed: at once beyond the cap, else after its timeout.
    for (i, s) in idle.iter_mut().enumerate() {
        assert!(
            closed_within(s, Duration::from_secs(10)),
            "idle connection {i} still open"
        );
    }
    let after = rss_kib(cp.id());
    println!(
        "RSS of the control plane: {before} KiB before, {after} KiB after 200 idle connections"
    );
    assert!(
        after < before + 16 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    assert!(live(admin, Duration::from_secs(5)));
}

#[test]
fn sidecar_port_closes_a_client_that_never_finishes_the_handshake() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (listen, admin) = (free_addr(), free_addr());
    let _cp = start_binary(
        dir.path(),
        listen,
        admin,
        &[
            "--tls-handshake-timeout",
            "1s",
            "--sidecar-max-connections",
            "4",
        ],
    );
    // Half a ClientHello, then nothing; and more silent connections than the cap.
    let mut stalled = TcpStream::connect(listen).expect("connect");
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .expect("write");
    let mut silent: Vec<TcpStream> = (0..12)
        .map(|_| TcpStream::connect(listen).expect("connect"))
        .collect();
    assert!(
        closed_within(&mut stalled, Duration::from_secs(5)),
        "the stalled handshake was never closed"
    );
    for (i, s) in silent.iter_mut().enumerate() {
        assert!(
            closed_within(s, Duration::from_secs(5)),
            "silent connection {i} still open"
        );
    }
    // The port still accepts and handshakes: a fresh connection gets a TLS alert or
    // ServerHello for a bad ClientHello rather than silence.
    let mut s = TcpStream::connect(listen).expect("connect");
    s.write_all(b"not TLS at all\r\n\r\n").expect("write");
    assert!(closed_within(&mut s, Duration::from_secs(5)));
    assert!(live(admin, Duration::from_secs(5)));
}

#[test]
fn refuses_a_plaintext_operator_api_beyond_loopback() {
    let dir = tempfile::tempdir().expect("tempdir");
    policy_dir(dir.path());
    let port = weft_testkit::ports::reserve();
    let (exit, _, err) = output_within(
        &mut cp_command(dir.path(), free_addr(), &format!("0.0.0.0:{port}")),
        Duration::from_secs(20),
    );
    assert_eq!(exit.code(), Some(1), "{err}");
    assert!(err.contains("beyond loopback"), "{err}");
    assert!(err.contains("--insecure-plaintext-operator-api"), "{err}");

    // Told so explicitly, it starts.
    let _cp = spawn(
        cp_command(dir.path(), free_addr(), &format!("0.0.0.0:{port}"))
            .arg("--insecure-plaintext-operator-api")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .expect("spawn");
    let admin: SocketAddr = ([127, 0, 0, 1], port).into();
    wait::until("the operator API", Duration::from_secs(20), || {
        live(admin, Duration::from_secs(1)).then_some(())
    });
}

#[test]
fn metrics_listener_serves_only_the_open_endpoints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = free_addr();
    let _cp = start_binary(
        dir.path(),
        free_addr(),
        free_addr(),
        &["--metrics-listen", &metrics.to_string()],
    );
    assert!(live(metrics, Duration::from_secs(5)));
    let mut s = TcpStream::connect(metrics).expect("connect");
    s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: cp\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
}
