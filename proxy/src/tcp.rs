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

use crate::state::Snapshot;
use crate::tls::ALPN_TCP;

/// Copy buffer per direction: one TLS record.
const BUF: usize = 16 * 1024;

async fn splice<A, B>(mut a: A, mut b: B, what: &str)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    match copy_bidirectional_with_sizes(&mut a, &mut b, BUF, BUF).await {
        Ok((up, down)) => log::debug!("{what}: closed after {up} bytes up, {down} down"),
        Err(e) => log::debug!("{what}: ended: {e}"),
    }
}

/// Carry an app's connection to an endpoint of destination `dest`.
pub async fn outbound(client: Stream, snap: Arc<Snapshot>, dest: usize) {
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
    splice(client, tls, "tcp outbound").await;
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
pub async fn inbound(tunnel: Stream, snap: Arc<Snapshot>) {
    let app = snap.own.app;
    match timeout(snap.connect_timeout, TcpStream::connect(app)).await {
        Ok(Ok(tcp)) => {
            let _ = tcp.set_nodelay(true);
            splice(tunnel, tcp, "tcp inbound").await;
        }
        Ok(Err(e)) => log::warn!("tcp tunnel to app {app}: {e}"),
        Err(_) => log::warn!("tcp tunnel to app {app}: connect timed out"),
    }
}
