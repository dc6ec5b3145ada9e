//! Opaque TCP: each client connection rides its own mutual-TLS connection (ALPN `weft-tcp`)
//! to a peer sidecar, which connects it to its app. Half-close is carried both ways: a FIN
//! becomes a TLS close_notify and back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pingora_core::protocols::Stream;
use rustls::pki_types::ServerName;
use tokio::io::{copy_bidirectional_with_sizes, AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use crate::metrics::Metrics;
use crate::state::Snapshot;
use crate::tls::ALPN_TCP;

/// Copy buffer per direction: one TLS record.
const BUF: usize = 16 * 1024;

/// Copy both ways until both sides close; count the tunnel and its bytes. `a` is the side
/// that opened the tunnel, so a→b bytes are `sent`.
async fn splice<A, B>(mut a: A, mut b: B, metrics: &Metrics, direction: &str, dst: &str)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    metrics
        .tcp_opened
        .with_label_values(&[direction, dst])
        .inc();
    let (sent, received) = match copy_bidirectional_with_sizes(&mut a, &mut b, BUF, BUF).await {
        Ok(counts) => counts,
        Err(e) => {
            log::debug!("tcp {direction} {dst}: ended: {e}");
            (0, 0)
        }
    };
    metrics
        .tcp_closed
        .with_label_values(&[direction, dst])
        .inc();
    metrics
        .tcp_bytes
        .with_label_values(&[direction, dst, "sent"])
        .inc_by(sent);
    metrics
        .tcp_bytes
        .with_label_values(&[direction, dst, "received"])
        .inc_by(received);
}

/// Carry an app's connection to an endpoint of destination `dest`.
pub async fn outbound(client: Stream, snap: Arc<Snapshot>, dest: usize, metrics: &Metrics) {
    let d = &snap.destinations[dest];
    let Some(ep) = d.pick_any() else {
        log::warn!("tcp to {}: no endpoint", d.name);
        return;
    };
    let addr = d.endpoints[ep];
    let in_flight = d.stats[ep].start();
    let tls = match connect(addr, &d.sni, &snap).await {
        Ok(t) => {
            in_flight.success();
            t
        }
        Err(e) => {
            in_flight.failure();
            log::warn!("tcp to {} endpoint {addr}: {e}", d.name);
            return;
        }
    };
    splice(client, tls, metrics, "outbound", &d.name).await;
}

async fn connect(
    addr: SocketAddr,
    sni: &str,
    snap: &Snapshot,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let limit = snap.connect_timeout;
    let tcp = timeout(limit, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connect timed out after {limit:?}"))?
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(sni.to_owned())
        .map_err(|e| format!("bad server name {sni:?}: {e}"))?;
    let tls = timeout(
        limit.max(Duration::from_secs(5)),
        TlsConnector::from(snap.tls.tcp_client.clone()).connect(name, tcp),
    )
    .await
    .map_err(|_| "TLS handshake timed out".to_owned())?
    .map_err(|e| format!("TLS handshake (identity not proven?): {e}"))?;
    if tls.get_ref().1.alpn_protocol() != Some(ALPN_TCP) {
        return Err("peer did not accept a TCP tunnel".to_owned());
    }
    Ok(tls)
}

/// Connect a tunnel that arrived over mutual TLS to the local app.
pub async fn inbound(tunnel: Stream, snap: Arc<Snapshot>, metrics: &Metrics) {
    let app = snap.own.app;
    match timeout(snap.connect_timeout, TcpStream::connect(app)).await {
        Ok(Ok(tcp)) => {
            let _ = tcp.set_nodelay(true);
            splice(tunnel, tcp, metrics, "inbound", &snap.own.name).await;
        }
        Ok(Err(e)) => log::warn!("tcp tunnel to app {app}: {e}"),
        Err(_) => log::warn!("tcp tunnel to app {app}: connect timed out"),
    }
}
