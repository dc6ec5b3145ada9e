//! Documented behaviour no other test covered: the inbound listener refuses TLS 1.2; the
//! SIGTERM drain (unready, GOAWAY, `drain_timeout` bounds the exit); certificate files rotated
//! under load; 503s in words for refused and timed-out connects and an open breaker;
//! `workers`; `hosts` aliases; the HTTP client idle timeout.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use nix::sys::signal::Signal;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_testkit::wait::until_async;

use crate::harness::*;
use crate::pair;

const HANDSHAKES: &str = "weft_tls_handshakes_total";

/// The `orders` sidecar alone, in front of the sample app.
async fn orders_alone(pki: &Pki) -> Sidecar {
    pki.issue("orders");
    Sidecar::start(pki, Spec::new("orders", http_app("orders-v1").await)).await
}

/// A frontend sidecar calling `orders` at `endpoint`, with `top` (top-level keys) before its
/// services and `extra` appended to the `orders` service entry.
async fn frontend_to(pki: &Pki, endpoint: SocketAddr, top: &str, extra: &str) -> Sidecar {
    pki.issue("frontend");
    let mut spec = Spec::new("frontend", http_app("frontend").await);
    spec.rest = format!(
        "{top}services:\n{}{extra}",
        service_yaml("orders", "http", None, &[(endpoint, "v1")])
    );
    Sidecar::start(pki, spec).await
}

/// The first certificate of a PEM chain, DER.
fn leaf_der(pem: &str) -> Vec<u8> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .expect("a certificate")
        .expect("PEM")
        .to_vec()
}

/// A mesh client presenting `<sa>.crt` from `pki`, trusting its CA, limited to `version`,
/// offering ALPN h2 as a peer sidecar does.
fn mesh_client(
    pki: &Pki,
    sa: &str,
    version: &'static rustls::SupportedProtocolVersion,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.cert_der().clone()).expect("root");
    let (chain, key) = client_identity(pki, sa);
    let mut c = rustls::ClientConfig::builder_with_protocol_versions(&[version])
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client auth");
    c.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(c)
}

/// The leaf certificate the server presented, DER.
fn peer_leaf(tls: &MeshTls) -> Vec<u8> {
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("server certificate")
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_refuses_tls12_even_with_a_valid_mesh_certificate() {
    let pki = Pki::new(90);
    pki.issue("frontend");
    let orders = orders_alone(&pki).await;

    // The control: the same certificate over TLS 1.3 gets through, so the refusal below is
    // for the protocol version alone.
    let tls = handshake(
        orders.inbound,
        mesh_client(&pki, "frontend", &rustls::version::TLS13),
    )
    .await
    .expect("TLS 1.3 handshake");
    assert_eq!(h2_get(tls).await, Ok(200));
    let ok = wait_metric(
        orders.admin,
        HANDSHAKES,
        &[("result", "ok")],
        1.0,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(ok, 1.0);
    assert_eq!(
        try_metric(orders.admin, HANDSHAKES, &[("result", "refused")]).await,
        None,
        "nothing refused yet"
    );

    let err = match handshake(
        orders.inbound,
        mesh_client(&pki, "frontend", &rustls::version::TLS12),
    )
    .await
    {
        Ok(tls) => panic!(
            "TLS 1.2 handshake accepted ({:?})",
            tls.get_ref().1.protocol_version()
        ),
        Err(e) => e,
    };
    assert!(
        err.contains("ProtocolVersion"),
        "refused for its version: {err}"
    );
    wait_metric(
        orders.admin,
        HANDSHAKES,
        &[("result", "refused")],
        1.0,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        metric(orders.admin, HANDSHAKES, &[("result", "refused")]).await,
        1.0
    );
    assert_eq!(
        metric(orders.admin, HANDSHAKES, &[("result", "ok")]).await,
        1.0,
        "the refused handshake is not counted as ok"
    );
    assert!(
        orders.log_text().contains("refused"),
        "{}",
        orders.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drain_turns_unready_sends_goaway_and_exits_at_the_drain_timeout() {
    let pki = Pki::new(91);
    let orders = orders_alone(&pki).await;
    pki.issue("frontend");
    let mut spec = Spec::new("frontend", http_app("frontend").await);
    spec.rest = format!(
        "services:\n{}",
        service_yaml("orders", "http", None, &[(orders.inbound, "v1")])
    );
    let mut fe = Sidecar::start_edited(&pki, spec, |f| f.drain_timeout = Some("2s".into())).await;
    assert!(fe.head.contains("drain_timeout: 2s\n"), "{}", fe.head);

    // An idle HTTP/2 connection (one request done on it).
    let mut h2 = H2c::connect(fe.outbound).await;
    assert_eq!(h2.get("orders", "/before").await.status, 200);

    // A request that outlives the drain timeout by far, in flight at the orders sidecar.
    let inbound = [("direction", "inbound")];
    let before = metric(orders.admin, "weft_requests_total", &inbound).await;
    let (c, p) = (client(), fe.outbound);
    let slow = tokio::spawn(async move { send(&c, p, "orders", "GET", "/delay/30000", &[]).await });
    // The slow request has reached orders.
    wait_metric(
        orders.admin,
        "weft_requests_total",
        &inbound,
        before + 1.0,
        Duration::from_secs(10),
    )
    .await;

    let t0 = Instant::now();
    fe.signal(Signal::SIGTERM);
    let (_, body) = until_async(
        "/ready to answer 503 while draining",
        Duration::from_secs(5),
        || async {
            admin_get(fe.admin, "/ready")
                .await
                .filter(|(s, _)| *s == 503)
        },
    )
    .await;
    assert_eq!(body.trim(), "draining");
    until_async(
        "the idle HTTP/2 connection to be closed (GOAWAY)",
        Duration::from_secs(5),
        || async { h2.is_closed().then_some(()) },
    )
    .await;
    // Both seen during the drain, not because the process died: it still runs (the slow
    // request holds it until the drain timeout).
    assert!(
        fe.child.status().is_none(),
        "exited before the drain timeout:\n{}",
        fe.log_text()
    );
    let after = h2.try_get("orders", "/after").await;
    assert!(
        after.is_err(),
        "a request on the drained connection: {after:?}"
    );

    let code = fe.wait_exit(Duration::from_secs(10)).await;
    let took = t0.elapsed();
    let log = fe.log_text();
    assert_eq!(code, Some(0), "{log}");
    // Not before the drain timeout (the request was still in flight), and at it: well before
    // the app's 30 s and before Pingora's own backstop (drain_timeout + 2 s, then its
    // shutdown timeout).
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_millis(3500),
        "exited {took:?} after SIGTERM\n{log}"
    );
    assert!(
        log.contains("drain timeout 2s reached with 1 in flight; exiting"),
        "{log}"
    );
    let r = tokio::time::timeout(Duration::from_secs(5), slow)
        .await
        .expect("the slow request ends with the sidecar")
        .expect("task");
    assert!(
        !matches!(&r, Ok(resp) if resp.status == 200),
        "the slow request cannot have completed: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificate_files_are_served_under_load_without_a_failed_request() {
    let pki = Pki::new(92);
    pki.issue("probe");
    let (fe, orders) = pair(&pki, "").await;
    let old_der =
        leaf_der(&std::fs::read_to_string(pki.path().join("orders.crt")).expect("orders.crt"));
    let not_after = |admin: SocketAddr| async move {
        let (status, body) = admin_get(admin, "/certs").await.expect("/certs");
        assert_eq!(status, 200, "{body}");
        let j: serde_json::Value = serde_json::from_str(&body).expect("json");
        j["not_after_unix"].as_u64().expect("not_after_unix")
    };
    let old_not_after = not_after(orders.admin).await;

    // Traffic through the frontend's pooled connection, and new handshakes straight to the
    // orders sidecar (with another mesh identity), each on a connection of its own: the
    // certificate a new connection meets is the one in force.
    let bg = Background::start(fe.outbound, "orders");
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let fresh = {
        let (stop, seen) = (stop.clone(), seen.clone());
        let (config, inbound) = (
            mesh_client(&pki, "probe", &rustls::version::TLS13),
            orders.inbound,
        );
        tokio::spawn(async move {
            let (mut failures, mut n) = (Vec::new(), 0u64);
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                match handshake(inbound, config.clone()).await {
                    Ok(tls) => {
                        let leaf = peer_leaf(&tls);
                        {
                            let mut seen = seen.lock().expect("lock");
                            if seen.last() != Some(&leaf) {
                                seen.push(leaf);
                            }
                        }
                        match h2_get(tls).await {
                            Ok(200) => {}
                            other => failures.push(format!("{other:?}")),
                        }
                    }
                    Err(e) => failures.push(e),
                }
                // Pacing only (two shared cores), never a wait for an outcome.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (failures, n)
        })
    };
    let outbound = [("direction", "outbound")];
    // 100 requests through the frontend before the swap.
    wait_metric(
        fe.admin,
        "weft_requests_total",
        &outbound,
        100.0,
        Duration::from_secs(20),
    )
    .await;

    // Issue a new certificate and key (a longer lifetime, so /certs tells them apart) and
    // swap each file in with a rename. A reload that falls between the two renames meets a
    // key that does not fit the certificate and is refused, keeping the old pair in force.
    let id = weft_certs::Identity::new(TD, "default", "orders").expect("identity");
    let new = pki.ca.issue(&id, Duration::from_secs(7200)).expect("issue");
    let new_der = leaf_der(&new.cert_pem);
    let new_not_after = new
        .not_after
        .duration_since(UNIX_EPOCH)
        .expect("time")
        .as_secs();
    assert_ne!(new_der, old_der);
    assert_ne!(new_not_after, old_not_after);
    for (file, text) in [("orders.key", &new.key_pem), ("orders.crt", &new.cert_pem)] {
        let tmp = pki.path().join(format!("{file}.tmp"));
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, pki.path().join(file)).expect("rename");
    }

    until_async(
        "/certs to show the new certificate",
        Duration::from_secs(10),
        || async { (not_after(orders.admin).await == new_not_after).then_some(()) },
    )
    .await;
    until_async(
        "a new connection to meet the new certificate",
        Duration::from_secs(10),
        || async { (seen.lock().expect("lock").last() == Some(&new_der)).then_some(()) },
    )
    .await;
    // Traffic keeps flowing after the swap.
    let at_swap = metric(fe.admin, "weft_requests_total", &outbound).await;
    wait_metric(
        fe.admin,
        "weft_requests_total",
        &outbound,
        at_swap + 100.0,
        Duration::from_secs(20),
    )
    .await;

    stop.store(true, Ordering::Relaxed);
    let (failures, handshakes) = fresh.await.expect("fresh handshakes");
    bg.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {handshakes} fresh connections failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    // Old, then new, never back: the swap is one step.
    assert!(
        *seen.lock().expect("lock") == [old_der, new_der],
        "certificates met in order: {} distinct",
        seen.lock().expect("lock").len()
    );
    assert!(
        orders.log_text().contains("config reloaded (file changed)"),
        "{}",
        orders.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_timed_out_connects_and_an_open_breaker_get_503_in_words() {
    let pki = Pki::new(93);
    pki.issue("frontend");
    // Nothing listens on `ghost`.
    let ghost = SocketAddr::from(([127, 0, 0, 1], free_port()));
    assert!(!is_listening(ghost));
    // `blackhole` listens with an accept queue of length 0 and never accepts: once one
    // connection fills the queue, Linux drops further SYNs, so a connect there never
    // completes, as with a peer that never answers, all on loopback.
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = sock.listen(0).expect("listen");
    let blackhole = listener.local_addr().expect("addr");
    let mut fillers = Vec::new();
    let mut full = false;
    for _ in 0..8 {
        // A connect that does not complete within 300 ms shows the queue is full (a
        // proof that something does not happen, so a bounded wait).
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(blackhole)).await
        {
            Ok(Ok(s)) => fillers.push(s),
            Ok(Err(e)) => panic!("connect to the blackhole listener: {e}"),
            Err(_) => {
                full = true;
                break;
            }
        }
    }
    assert!(
        full,
        "the accept queue never filled ({} connected)",
        fillers.len()
    );

    let mut spec = Spec::new("frontend", http_app("frontend").await);
    spec.rest = format!(
        "connect_timeout: 300ms\nservices:\n{}    outlier_detection: {{consecutive_failures: 3}}\n{}\
         routes:\n  - {{name: ghost, service: ghost, retry: {{attempts: 1}}}}\n  - {{name: blackhole, service: blackhole, retry: {{attempts: 1}}}}\n",
        service_yaml("ghost", "http", None, &[(ghost, "v1")]),
        service_yaml("blackhole", "http", None, &[(blackhole, "v1")]),
    );
    let fe = Sidecar::start(&pki, spec).await;
    let c = client();

    // Connection refused, three times in a row: the third ejects the only endpoint.
    for i in 0..3 {
        let r = send(&c, fe.outbound, "ghost", "GET", "/", &[])
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", fe.log_text()));
        assert_eq!(r.status, 503, "attempt {i}: {r:?}");
        assert_eq!(
            r.header("x-weft-error"),
            format!("connection refused by ghost endpoint {ghost}"),
            "attempt {i}"
        );
    }
    // Every endpoint ejected: the breaker is open, and nothing is tried.
    let r = send(&c, fe.outbound, "ghost", "GET", "/", &[])
        .await
        .expect("request");
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(
        r.header("x-weft-error"),
        "breaker open: every endpoint of ghost for route \"ghost\" is ejected after consecutive failures",
        "{r:?}"
    );
    assert_eq!(
        metric(
            fe.admin,
            "weft_requests_rejected_total",
            &[("reason", "breaker_open"), ("dst_service", "ghost")]
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            fe.admin,
            "weft_outlier_ejections_total",
            &[("endpoint", &ghost.to_string())]
        )
        .await,
        1.0
    );

    // Connect timeout: 503 in words after the configured 300 ms, not the default 1 s.
    let t = Instant::now();
    let r = send(&c, fe.outbound, "blackhole", "GET", "/", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", fe.log_text()));
    let took = t.elapsed();
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(
        r.header("x-weft-error"),
        format!("connect to blackhole endpoint {blackhole} timed out"),
        "{r:?}"
    );
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_millis(900),
        "{took:?}"
    );
    drop(fillers);
}

/// Thread ids of a process's traffic workers (Pingora names them after the service).
fn traffic_threads(pid: i32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("/proc tasks")
        .filter_map(|e| {
            let tid = e.ok()?.file_name().into_string().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok()?;
            (comm.trim() == "weft traffic").then_some(tid)
        })
        .collect()
}

/// Nanoseconds a thread has run on a CPU (from schedstat, not tick-sampled).
fn cpu_ns(pid: i32, tid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat"))
        .expect("schedstat")
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("run time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_serve_concurrent_requests_on_several_threads() {
    let pki = Pki::new(94);
    let orders = orders_alone(&pki).await;
    let one = frontend_to(&pki, orders.inbound, "", "").await;
    let four = frontend_to(&pki, orders.inbound, "workers: 4\n", "").await;
    assert_eq!(
        traffic_threads(one.pid()).len(),
        1,
        "workers: 1 (the default) runs one traffic thread"
    );
    let threads = traffic_threads(four.pid());
    assert_eq!(threads.len(), 4, "workers: 4 runs four traffic threads");
    let (_, dump) = admin_get(four.admin, "/config_dump").await.expect("dump");
    let dump: serde_json::Value = serde_json::from_str(&dump).expect("json");
    assert_eq!(dump["workers"], 4);

    let before: Vec<u64> = threads.iter().map(|t| cpu_ns(four.pid(), t)).collect();
    // 16 keep-alive clients: connections land on workers at random.
    let out = load(four.outbound, "orders", "/", 2000, 16).await;
    let bad: Vec<_> = out
        .iter()
        .filter(|o| o.status != 200 || o.served_by != "orders-v1")
        .take(3)
        .map(|o| (o.status, o.error.clone()))
        .collect();
    assert!(bad.is_empty(), "failed: {bad:?}");
    assert_eq!(out.len(), 2000);
    let busy: Vec<u64> = threads
        .iter()
        .zip(&before)
        .map(|(t, b)| cpu_ns(four.pid(), t) - b)
        .collect();
    // An idle worker only wakes once a second (its timer floor): microseconds.
    assert!(
        busy.iter().filter(|ns| **ns > 5_000_000).count() >= 2,
        "CPU ns per traffic thread during the load: {busy:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_aliases_route_to_their_service_and_unknown_hosts_get_404() {
    let pki = Pki::new(95);
    let orders = orders_alone(&pki).await;
    let fe = frontend_to(
        &pki,
        orders.inbound,
        "",
        "    hosts: [orders.default.svc.cluster.local, Orders.Mesh]\n",
    )
    .await;
    let c = client();
    for host in [
        "orders",
        "orders.default.svc.cluster.local",
        "orders.default.svc.cluster.local:8080",
        "ORDERS.Default.SVC.cluster.local",
        "orders.mesh",
        "ORDERS.MESH:80",
    ] {
        let r = get(&c, fe.outbound, host, "/alias").await;
        assert_eq!(r.status, 200, "{host}: {r:?}");
        assert_eq!(r.served_by(), "orders-v1", "{host}");
    }
    // HTTP/2 takes the alias from :authority.
    let mut h2 = H2c::connect(fe.outbound).await;
    let r = h2.get("orders.mesh", "/alias").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.served_by(), "orders-v1");

    for host in ["orders.default", "payments.mesh", "mesh"] {
        let r = get(&c, fe.outbound, host, "/alias").await;
        assert_eq!(r.status, 404, "{host}: {r:?}");
        assert_eq!(
            r.header("x-weft-error"),
            format!("no route: unknown host {host:?}"),
            "{r:?}"
        );
    }
}

/// Wait for the sidecar to close `s`, which must stay open for the first half of the 2 s
/// idle timeout; how long after `since` it closed.
async fn closed_after_idling(what: &str, mut s: TcpStream, since: Instant) -> Duration {
    let mut b = [0u8; 1];
    // Proving that something has not happened yet: still open at half the idle timeout.
    let early = tokio::time::timeout(Duration::from_millis(1000), s.read(&mut b)).await;
    assert!(
        early.is_err(),
        "{what}: closed (or answered) before half the idle timeout: {early:?}"
    );
    let n = tokio::time::timeout(Duration::from_secs(8), s.read(&mut b))
        .await
        .unwrap_or_else(|_| panic!("{what}: not closed within 9 s of idling"))
        .unwrap_or(0);
    assert_eq!(n, 0, "{what}: EOF, not data");
    since.elapsed()
}

/// Read one HTTP/1.1 response with a `content-length` from `s`; its head.
async fn read_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("response within 5 s")
            .expect("read");
        assert!(
            n > 0,
            "closed mid-response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no content-length: {head}"));
    while buf.len() < head_end + len {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("body within 5 s")
            .expect("read");
        assert!(n > 0, "closed mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
    head
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_connections_are_closed_after_the_idle_timeout() {
    let pki = Pki::new(96);
    let (fe, _orders) = pair(&pki, "idle_timeout: 2s\n").await;

    // A kept-alive connection after one request.
    let mut after_request = TcpStream::connect(fe.outbound).await.expect("connect");
    after_request
        .write_all(b"GET /idle HTTP/1.1\r\nHost: orders\r\n\r\n")
        .await
        .expect("write");
    let head = read_response(&mut after_request).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "kept alive: {head}");
    let answered = Instant::now();
    // A connection that never sends a request.
    let silent = TcpStream::connect(fe.outbound).await.expect("connect");
    let opened = Instant::now();

    let (idle_after_request, idle_silent) = tokio::join!(
        closed_after_idling("after a request", after_request, answered),
        closed_after_idling("without a request", silent, opened)
    );
    for (what, idle) in [
        ("after a request", idle_after_request),
        ("without a request", idle_silent),
    ] {
        assert!(
            idle < Duration::from_millis(4500),
            "{what}: closed after {idle:?} for a 2 s idle timeout"
        );
    }
}
