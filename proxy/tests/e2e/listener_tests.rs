//! Bounds on the traffic listeners: a connection cap per listener (more are closed at accept
//! and counted) and timeouts for connections that never speak, while legitimate callers keep
//! being served. Before, Pingora accepted without limit: idle connections could take every
//! file descriptor the sidecar had.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::harness::*;
use crate::pair;

const CAP: usize = 4;

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_listeners_cap_their_connections_and_close_silent_ones() {
    let pki = Pki::new(94);
    let limits = format!("max_connections_per_listener: {CAP}\nidle_timeout: 1s\n");
    let (fe, orders) = pair(&pki, "").await;
    drop(fe);
    // A frontend with the cap and a 1 s idle limit, calling the same orders.
    let mut spec = Spec::new("frontend", http_app("frontend").await);
    spec.rest = format!(
        "{limits}services:\n{}",
        service_yaml("orders", "http", None, &[(orders.inbound, "v1")])
    );
    let fe = Sidecar::start(&pki, spec).await;
    let mut spec = Spec::new("orders", http_app("orders-v1").await);
    spec.rest = limits.clone();
    let capped_orders = Sidecar::start(&pki, spec).await;

    for (name, addr, admin, label) in [
        ("outbound", fe.outbound, fe.admin, "outbound"),
        (
            "inbound",
            capped_orders.inbound,
            capped_orders.admin,
            "inbound",
        ),
    ] {
        // CAP silent connections are held; one more is closed at once and counted. Each from
        // its own address, so that the inbound port's per-peer share is not what refuses.
        let mut held = Vec::new();
        for i in 0..CAP {
            held.push(connect_from([127, 0, 1, 10 + i as u8], addr).await);
        }
        let extra = connect_from([127, 0, 1, 100], addr).await;
        wait_closed(
            &format!("{name}: the connection over the cap to be closed"),
            &extra,
            Duration::from_secs(3),
        )
        .await;
        wait_metric(
            admin,
            "weft_connections_refused_total",
            &[("listener", label), ("reason", "limit")],
            1.0,
            Duration::from_secs(5),
        )
        .await;
        // The silent ones are closed by a timeout (outbound: the 1 s idle limit before the
        // first bytes; inbound: the 10 s TLS handshake limit), freeing their slots.
        for s in &held {
            wait_closed(
                &format!("{name}: a silent connection to time out"),
                s,
                Duration::from_secs(15),
            )
            .await;
        }
        drop(held);
    }

    // Legitimate traffic is served again on both: frontend → orders (capped) is not needed;
    // the outbound port of the capped frontend and the inbound port of the capped orders.
    let r = get(&client(), fe.outbound, "orders", "/after").await;
    assert_eq!(r.status, 200, "{r:?}");
    let mut probe = connect(capped_orders.inbound).await;
    let mut b = [0u8; 1];
    // Still accepted (not closed at once): the handshake waits for the client hello.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), probe.read(&mut b))
            .await
            .is_err(),
        "a connection under the cap was closed"
    );
}

/// A silent connection from `ip` (a loopback address of the test's choosing) to `addr`.
async fn connect_from(ip: [u8; 4], addr: SocketAddr) -> TcpStream {
    let s = tokio::net::TcpSocket::new_v4().expect("socket");
    s.bind(SocketAddr::from((ip, 0))).expect("bind");
    s.connect(addr).await.expect("connect")
}

/// One hostile workload (its own address, 127.0.0.2) holding as many silent connections to
/// the inbound port as it can gets a quarter of the cap; the next is closed at once, and a
/// legitimate caller from another address is served meanwhile, with the sidecar's memory
/// barely moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_cannot_take_the_inbound_port_from_the_others() {
    const CAP: usize = 64;
    let pki = Pki::new(95);
    pki.issue("frontend");
    pki.issue("orders");
    let mut spec = Spec::new("orders", http_app("orders-v1").await);
    spec.rest = format!("max_connections_per_listener: {CAP}\n");
    let orders = Sidecar::start(&pki, spec).await;
    let mut spec = Spec::new("frontend", http_app("frontend").await);
    spec.rest = format!(
        "services:\n{}",
        service_yaml("orders", "http", None, &[(orders.inbound, "v1")])
    );
    let fe = Sidecar::start(&pki, spec).await;
    let before = orders.rss_kib();

    let share = CAP / 4;
    let mut held = Vec::new();
    for _ in 0..share {
        held.push(connect_from([127, 0, 0, 2], orders.inbound).await);
    }
    let extra = connect_from([127, 0, 0, 2], orders.inbound).await;
    wait_closed(
        "the hostile peer's connection over its share to be closed",
        &extra,
        Duration::from_secs(3),
    )
    .await;
    wait_metric(
        orders.admin,
        "weft_connections_refused_total",
        &[("listener", "inbound"), ("reason", "peer_limit")],
        1.0,
        Duration::from_secs(5),
    )
    .await;
    // The others are served while the hostile connections are still held.
    let r = get(&client(), fe.outbound, "orders", "/while-flooded").await;
    assert_eq!(r.status, 200, "{r:?}");
    let open = held.iter().filter(|s| !closed(s)).count();
    assert_eq!(open, share, "the hostile peer's share is still held");
    let grown = orders.rss_kib().saturating_sub(before);
    assert!(
        grown < 8 * 1024,
        "RSS grew {grown} KiB for {share} idle connections"
    );
}
