//! The injection webhook's bounds, against the real `weft-control-plane` binary and its TLS
//! listener: handshakes that never finish beyond the connection cap are closed at once and the
//! rest by their deadline, a client sending its headers a byte at a time is closed after the
//! header timeout, a keep-alive connection left idle after a request is closed after the idle
//! timeout, and meanwhile a real AdmissionReview is answered.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use weft_control_plane::inject::webhook;
use weft_testkit::process::{spawn, Guard};
use weft_testkit::wait;

use super::inject::{admission_review, replicaset_pod, response, webhook_certs, TestWebhook};

fn free() -> SocketAddr {
    ([127, 0, 0, 1], weft_testkit::ports::reserve()).into()
}

/// The binary serving the webhook with a cap of 4 connections and 2 s deadlines.
fn start() -> (Guard, TestWebhook) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key, tls) = webhook_certs(dir.path());
    let policy = dir.path().join("policy");
    std::fs::create_dir(&policy).expect("mkdir");
    std::fs::write(
        policy.join("mesh.yaml"),
        "services:\n  - name: orders\n    identity: spiffe://weft.local/ns/shop/sa/orders\n",
    )
    .expect("write");
    let hook_addr = free();
    let child = spawn(
        Command::new(env!("CARGO_BIN_EXE_weft-control-plane"))
            .arg("--policy-dir")
            .arg(&policy)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(["--listen", &free().to_string()])
            .args(["--admin", &free().to_string()])
            .args(["--webhook-listen", &hook_addr.to_string()])
            .arg("--webhook-cert")
            .arg(&cert)
            .arg("--webhook-key")
            .arg(&key)
            .args(["--webhook-max-connections", "4"])
            .args(["--tls-handshake-timeout", "2s"])
            .args(["--webhook-header-timeout", "2s"])
            .args(["--webhook-idle-timeout", "2s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .expect("spawn");
    let hook = TestWebhook {
        _hook: None,
        addr: hook_addr,
        tls,
        _dir: dir,
    };
    (child, hook)
}

/// Whether the server closes `s` (EOF or an error) by `deadline`; bytes it sends are skipped.
async fn closed_by<S: AsyncRead + Unpin>(s: &mut S, deadline: Instant) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// A real AdmissionReview, on its own connection, is answered and allowed; `false` when the
/// connection is refused or closed, or the answer is wrong.
async fn reviewed(hook: &TestWebhook) -> bool {
    let call = async {
        let tcp = TcpStream::connect(hook.addr).await.ok()?;
        let name = rustls_pki_types::ServerName::try_from("localhost").ok()?;
        let tls = hook.tls.connect(name, tcp).await.ok()?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .ok()?;
        tokio::spawn(conn);
        let body = admission_review("u-bounds", &replicaset_pod()).to_string();
        let req = hyper::Request::post(webhook::PATH)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .ok()?;
        let resp = sender.send_request(req).await.ok()?;
        let status = resp.status();
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        let answer: serde_json::Value = serde_json::from_slice(&body).ok()?;
        Some(status == 200 && response(&answer)["allowed"] == true)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(10), call).await,
        Ok(Some(true))
    )
}

async fn tls_connection(hook: &TestWebhook) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(hook.addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    hook.tls.connect(name, tcp).await.expect("TLS handshake")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_closes_stalled_slow_and_idle_clients_and_keeps_reviewing() {
    let (mut child, hook) = start();
    let addr = hook.addr;
    wait::until_async("the webhook to listen", Duration::from_secs(20), || {
        if let Some(exit) = child.status() {
            panic!("weft-control-plane exited: {exit}");
        }
        async move { TcpStream::connect(addr).await.ok() }
    })
    .await;
    assert!(reviewed(&hook).await);

    // 30 handshakes that never finish: half a ClientHello each. 4 hold the slots, 4 wait for
    // one; the other 22 are closed at once, long before the 2 s handshake timeout.
    let mut stalled = Vec::new();
    for _ in 0..30 {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
            .await
            .expect("write");
        stalled.push(s);
    }
    let soon = Instant::now() + Duration::from_secs(1);
    let mut at_once = 0;
    for s in &mut stalled {
        if closed_by(s, soon).await {
            at_once += 1;
        }
    }
    assert!(
        at_once >= 22,
        "{at_once} of 30 connections closed at once, beyond a cap of 4 and 4 waiting"
    );
    // A real review is answered within its deadline while they hold on.
    wait::until_async("a real review", Duration::from_secs(10), || async {
        reviewed(&hook).await.then_some(())
    })
    .await;
    // Every stalled handshake is closed by its deadline (2 s waiting, 2 s handshaking).
    let deadline = Instant::now() + Duration::from_secs(8);
    for (i, s) in stalled.iter_mut().enumerate() {
        assert!(
            closed_by(s, deadline).await,
            "stalled handshake {i} still open"
        );
    }

    // Headers a byte at a time: closed after the 2 s header timeout though it keeps sending.
    let mut slow = tls_connection(&hook).await;
    slow.write_all(b"POST /inject HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .expect("write");
    let started = Instant::now();
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(8) {
        if slow.write_all(b"x").await.is_err()
            || closed_by(&mut slow, Instant::now() + Duration::from_millis(200)).await
        {
            closed = true;
            break;
        }
    }
    assert!(closed, "the slow client was never closed");
    println!("slow client closed after {:?}", started.elapsed());

    // A keep-alive connection idle after its request: closed after the 2 s idle timeout.
    let mut idle = tls_connection(&hook).await;
    idle.write_all(b"GET /nothing HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut head = [0u8; 12];
    idle.read_exact(&mut head).await.expect("response");
    assert_eq!(&head, b"HTTP/1.1 404");
    let started = Instant::now();
    assert!(
        closed_by(&mut idle, started + Duration::from_secs(6)).await,
        "the idle keep-alive connection was never closed"
    );
    println!("idle connection closed after {:?}", started.elapsed());
    assert!(reviewed(&hook).await);
}
