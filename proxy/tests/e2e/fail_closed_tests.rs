//! Fail closed: a sidecar that takes its policy from the control plane refuses inbound
//! requests and tunnels until it knows a policy (a snapshot pushed or restored, or the
//! file's bootstrap authorization). Before, it allowed every mesh identity until then, and for
//! as long as the control plane stayed unreachable after a restart without a usable state file.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::harness::*;
use crate::tls_tests::client_config;

/// An `orders` sidecar whose control plane never answers (nothing listens on its address).
async fn orders_without_control_plane(pki: &Pki, protocol: &str, app: SocketAddr) -> Sidecar {
    let mut s = spawn_cp_sidecar(
        pki,
        CpSidecar {
            name: "orders",
            identity: "orders",
            cert: "orders",
            version: "v1",
            protocol,
            app,
            cp: SocketAddr::from(([127, 0, 0, 1], free_port())),
            token: None,
            mounted_bundle: None,
        },
    );
    s.wait_listening().await;
    s
}

/// One h2 request to `orders`' inbound port as the mesh identity `sa`: the status.
async fn call_as(pki: &Pki, orders: &Sidecar, sa: &str) -> Result<u16, String> {
    let tls = handshake(
        orders.inbound,
        Arc::new(client_config(pki, Some((pki, sa)))),
    )
    .await?;
    h2_get(tls).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_the_first_snapshot_inbound_requests_and_tunnels_are_refused() {
    let pki = Pki::new(91);
    pki.issue("orders");
    pki.issue("frontend");
    let app = TestApp::start("orders", 200).await;
    let mut orders = orders_without_control_plane(&pki, "http", app.addr).await;

    let (code, ready) = admin_get(orders.admin, "/ready").await.expect("ready");
    assert_eq!(code, 503, "{ready}");
    assert!(ready.contains("fail closed"), "{ready}");
    // A valid mesh identity, before any policy: refused by the sidecar, never seen by the app.
    assert_eq!(call_as(&pki, &orders, "frontend").await, Ok(503));
    wait_metric(
        orders.admin,
        "weft_requests_rejected_total",
        &[("reason", "no_policy")],
        1.0,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(app.hits(), 0, "the app was reached before any policy");
    assert!(
        orders.log_text().contains("no policy yet"),
        "{}",
        orders.log_text()
    );

    // A corrupt state file is no policy either.
    orders.child.kill();
    std::fs::write(orders.config.with_extension("cp.json"), b"{not json").expect("state");
    let log = orders.log.with_extension("2.log");
    orders.respawn(log);
    orders.wait_listening().await;
    assert_eq!(call_as(&pki, &orders, "frontend").await, Ok(503));
    assert_eq!(app.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_the_first_snapshot_a_tcp_tunnel_is_refused() {
    let pki = Pki::new(92);
    pki.issue("orders");
    pki.issue("frontend");
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let app = l.local_addr().expect("addr");
    let orders = orders_without_control_plane(&pki, "tcp", app).await;
    let mut c = client_config(&pki, Some((&pki, "frontend")));
    c.alpn_protocols = vec![b"weft-tcp".to_vec()];
    let mut tunnel = handshake(orders.inbound, Arc::new(c))
        .await
        .expect("a tcp service's handshake");
    // The sidecar closes the tunnel without connecting to the app.
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), tunnel.read(&mut buf))
        .await
        .expect("the refused tunnel is closed");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    wait_metric(
        orders.admin,
        "weft_tcp_connections_rejected_total",
        &[("reason", "no_policy")],
        1.0,
        Duration::from_secs(5),
    )
    .await;
    // Nothing reached the app: its listener has no connection waiting.
    let accepted = tokio::time::timeout(Duration::from_millis(200), l.accept()).await;
    assert!(accepted.is_err(), "the app got a connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_authorization_applies_until_the_first_snapshot() {
    let pki = Pki::new(93);
    pki.issue("orders");
    pki.issue("frontend");
    pki.issue("intruder");
    let app = TestApp::start("orders", 200).await;
    let mut orders = orders_without_control_plane(&pki, "http", app.addr).await;
    orders.child.kill();
    let text = std::fs::read_to_string(&orders.config).expect("config");
    let mut file: weft_policy::wire::ConfigFile = serde_yaml::from_str(&text).expect("yaml");
    let cp = file.control_plane.as_mut().expect("control_plane");
    cp.bootstrap_authorization = Some(weft_policy::wire::Authorization {
        default: Some("deny".to_owned()),
        rules: vec![weft_policy::wire::AuthzRule {
            name: "frontend".to_owned(),
            from: vec![spiffe("frontend")],
            paths: Vec::new(),
            methods: Vec::new(),
        }],
        ..Default::default()
    });
    std::fs::write(&orders.config, serde_yaml::to_string(&file).expect("yaml")).expect("write");
    let log = orders.log.with_extension("2.log");
    orders.respawn(log);
    orders.wait_listening().await;

    let (code, ready) = admin_get(orders.admin, "/ready").await.expect("ready");
    assert_eq!(code, 503, "{ready}");
    assert!(ready.contains("bootstrap policy"), "{ready}");
    assert_eq!(call_as(&pki, &orders, "frontend").await, Ok(200));
    assert_eq!(call_as(&pki, &orders, "intruder").await, Ok(403));
    assert_eq!(app.hits(), 1);
}
