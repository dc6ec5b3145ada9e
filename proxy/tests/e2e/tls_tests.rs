//! Mutual TLS between sidecars: who may connect, and who the outbound side accepts.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;
use crate::pair;

pub(crate) fn client_config(
    pki_for_roots: &Pki,
    client_cert: Option<(&Pki, &str)>,
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(pki_for_roots.ca.cert_der().clone())
        .expect("root");
    let b = rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .with_root_certificates(roots);
    let mut c = match client_cert {
        None => b.with_no_client_auth(),
        Some((pki, sa)) => {
            let (chain, key) = client_identity(pki, sa);
            b.with_client_auth_cert(chain, key).expect("client auth")
        }
    };
    c.alpn_protocols = vec![b"h2".to_vec()];
    c
}

/// Try a full HTTP/2 request over TLS with this client config; Ok(status) only if the mesh let
/// it through.
async fn try_request(
    inbound: std::net::SocketAddr,
    config: rustls::ClientConfig,
) -> Result<u16, String> {
    h2_get(handshake(inbound, Arc::new(config)).await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_refuses_plaintext_foreign_ca_and_no_client_cert() {
    let pki = Pki::new(20);
    let (_fe, orders) = pair(&pki, "").await;

    // Plaintext HTTP to the inbound port gets no HTTP answer.
    let mut s = tokio::net::TcpStream::connect(orders.inbound)
        .await
        .expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: orders\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(
        !buf.windows(5).any(|w| w == b"HTTP/"),
        "plaintext answered: {:?}",
        String::from_utf8_lossy(&buf)
    );

    // The control: a mesh client certificate gets through (so the refusals below mean something).
    assert_eq!(
        try_request(
            orders.inbound,
            client_config(&pki, Some((&pki, "frontend")))
        )
        .await,
        Ok(200)
    );

    // No client certificate.
    let r = try_request(orders.inbound, client_config(&pki, None)).await;
    assert!(r.is_err(), "no client cert got {r:?}");

    // A client certificate from another CA (same trust domain and name, different root).
    let foreign = Pki::new(21);
    foreign.issue("frontend");
    let r = try_request(
        orders.inbound,
        client_config(&pki, Some((&foreign, "frontend"))),
    )
    .await;
    assert!(r.is_err(), "foreign CA got {r:?}");
    assert!(orders.log_text().contains("refused"), "refusals are logged");
    // Counted exactly: the three refusals above and nothing else (the harness's readiness
    // check reads the socket table and never touches the inbound port).
    let admin = orders.admin;
    let refused = wait_metric(
        admin,
        "weft_tls_handshakes_total",
        &[("result", "refused")],
        3.0,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(refused, 3.0, "plaintext, no client certificate, foreign CA");
    assert!(metric(admin, "weft_tls_handshakes_total", &[("result", "ok")]).await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_refuses_a_server_with_the_wrong_identity() {
    let pki = Pki::new(22);
    pki.issue("frontend");
    pki.issue("payments");
    // A sidecar with a valid mesh certificate, but for `payments`, posing as an `orders` endpoint.
    let impostor = Sidecar::start(&pki, Spec::new("payments", http_app("payments").await)).await;
    let mut spec = Spec::new("frontend", http_app("frontend").await);
    spec.rest = format!(
        "services:\n{}",
        service_yaml("orders", "http", None, &[(impostor.inbound, "v1")])
    );
    let fe = Sidecar::start(&pki, spec).await;

    let r = get(&client(), fe.outbound, "orders", "/").await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(
        r.header("x-weft-error").contains("identity not proven"),
        "{r:?}"
    );
    assert_ne!(r.served_by(), "payments");
}

/// A workload holding a mesh certificate asks an HTTP service's inbound port for a TCP tunnel
/// (ALPN `weft-tcp`), through which it would write its own `x-weft-caller` to the app past the
/// HTTP authorization: the inbound port offers only its service's protocol, so the handshake
/// fails; the same certificate asking for HTTP/2 gets through (the control).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_to_an_http_service_is_refused_at_the_handshake() {
    let pki = Pki::new(24);
    let (_fe, orders) = pair(&pki, "").await;
    // No refusal yet may mean no series yet: the baseline is the only read allowed to find none.
    let before = try_metric(
        orders.admin,
        "weft_tls_handshakes_total",
        &[("result", "refused")],
    )
    .await
    .unwrap_or(0.0);
    let mut tunnel = client_config(&pki, Some((&pki, "frontend")));
    tunnel.alpn_protocols = vec![b"weft-tcp".to_vec()];
    match handshake(orders.inbound, Arc::new(tunnel)).await {
        Ok(_) => panic!("an HTTP service accepted a TCP tunnel"),
        Err(e) => assert!(e.to_lowercase().contains("protocol"), "{e}"),
    }
    wait_metric(
        orders.admin,
        "weft_tls_handshakes_total",
        &[("result", "refused")],
        before + 1.0,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        try_request(
            orders.inbound,
            client_config(&pki, Some((&pki, "frontend")))
        )
        .await,
        Ok(200)
    );
}
