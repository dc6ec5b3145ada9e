//! Opaque TCP: each client connection rides its own mutual-TLS connection (ALPN `weft-tcp`)
//! to a peer sidecar, which connects it to its app. Half-close is carried both ways: a FIN
//! becomes a TLS close_notify and back.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pingora_core::protocols::Stream;
use rustls::pki_types::ServerName;
use tokio::io::{copy_bidirectional_with_sizes, AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use weft_resilience::outlier::Admission;

use crate::clock;
use crate::errors::Reject;
use crate::identity::material::ALPN_TCP;
use crate::inbound::authorize::{self, Ask};
use crate::outbound::endpoint::{self, Chosen};
use crate::outbound::route::Destination;
use crate::store::{Snapshot, Store};
use crate::telemetry::metrics::Metrics;

/// Connect attempts for one tunnel: a refused or failed connect never reached the app, so
/// the next endpoint is always safe to try.
const CONNECT_ATTEMPTS: u32 = 2;

/// A stream that notes the time of its last read, so a watchdog can end an idle tunnel.
struct Activity<'a, S> {
    inner: S,
    last: &'a AtomicU64,
}

impl<S: AsyncRead + Unpin> AsyncRead for Activity<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if r.is_ready() {
            self.last.store(clock::now(), Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Activity<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Copy both ways until both sides close or nothing moves for `idle`.
async fn copy_until_idle<A, B>(a: A, b: B, idle: Duration) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let last = AtomicU64::new(clock::now());
    let mut a = Activity {
        inner: a,
        last: &last,
    };
    let mut b = Activity {
        inner: b,
        last: &last,
    };
    let copy = copy_bidirectional_with_sizes(&mut a, &mut b, BUF, BUF);
    tokio::pin!(copy);
    let idle_ns = u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX);
    // Each wake either finishes or finds fresh activity and sleeps again; a tunnel that
    // moves data wakes the watchdog at most once per `idle`.
    loop {
        let since = clock::now().saturating_sub(last.load(Relaxed));
        if since >= idle_ns {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"));
        }
        tokio::select! {
            r = &mut copy => return r,
            _ = tokio::time::sleep(Duration::from_nanos(idle_ns - since)) => {}
        }
    }
}

/// Copy buffer per direction: one TLS record.
const BUF: usize = 16 * 1024;

/// Copy both ways until both sides close; count the tunnel and its bytes, and return them
/// (sent, received). `a` is the side that opened the tunnel, so a→b bytes are `sent`.
pub(crate) async fn splice<A, B>(
    a: A,
    b: B,
    idle: Duration,
    metrics: &Metrics,
    direction: &str,
    dst: &str,
) -> (u64, u64)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    metrics
        .tcp_opened
        .with_label_values(&[direction, dst])
        .inc();
    let (sent, received) = match copy_until_idle(a, b, idle).await {
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
    (sent, received)
}

/// The config for a TCP connection to `dest` (of `snap`), which may have no endpoints in
/// force yet. With endpoints by service a TCP service is subscribed to when the snapshot
/// naming it arrives, and its dedicated port is bound at once: a connection in between would
/// be closed for want of endpoints that are on their way. It waits for them as an HTTP
/// request's first call does (bounded by
/// [`SUBSCRIBE_WAIT`](crate::control::endpoints::SUBSCRIBE_WAIT); at once when they were
/// received, even empty), then goes with the config that has them.
pub(crate) async fn with_endpoints(
    store: &Store,
    snap: Arc<Snapshot>,
    dest: Arc<Destination>,
) -> (Arc<Snapshot>, Arc<Destination>) {
    if !dest.endpoints.is_empty() {
        return (snap, dest);
    }
    let wait = crate::control::endpoints::SUBSCRIBE_WAIT;
    if !store.endpoints.wait_for(&dest.name, wait).await {
        return (snap, dest);
    }
    let now = store.load();
    match now.routes.for_host(&dest.name).cloned() {
        Some(d) => (now, d),
        None => (snap, dest),
    }
}

/// Carry an app's connection to an endpoint of destination `d` (of the snapshot `snap`).
pub async fn outbound(client: Stream, snap: Arc<Snapshot>, d: Arc<Destination>, metrics: &Metrics) {
    let Some(_permit) = d.tunnels.try_acquire() else {
        metrics
            .tcp_rejected
            .with_label_values(&["outbound", &d.name, "overloaded"])
            .inc();
        log::warn!(
            "tcp to {}: refused, {} tunnels already open",
            d.name,
            d.limits.max_connections
        );
        return;
    };
    let mut tried = 0u64;
    for _ in 0..CONNECT_ATTEMPTS {
        let now = clock::now();
        let Some(ep) = d.pick_any(tried, now) else {
            let why = if d.endpoints.is_empty() {
                "no_endpoint"
            } else {
                "breaker_open"
            };
            metrics
                .tcp_rejected
                .with_label_values(&["outbound", &d.name, why])
                .inc();
            log::warn!("tcp to {}: no endpoint available ({why})", d.name);
            return;
        };
        if ep < 64 {
            tried |= 1 << ep;
        }
        let probe = match d.health.admit(ep, now) {
            Admission::Healthy => false,
            Admission::Probe => true,
            Admission::Rejected => continue,
        };
        let addr = d.endpoints[ep];
        let in_flight = d.stats[ep].start();
        let result = connect(addr, &d.sni, &snap).await;
        endpoint::record_health(&d, Chosen { ep, probe }, result.is_ok(), clock::now());
        match result {
            Ok(tls) => {
                in_flight.success();
                splice(client, tls, snap.idle_timeout, metrics, "outbound", &d.name).await;
                return;
            }
            Err(e) => {
                in_flight.failure();
                log::warn!("tcp to {} endpoint {addr}: {e}", d.name);
            }
        }
    }
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

/// Connect a tunnel that arrived over mutual TLS from `caller` to the local app, if the
/// authorization rules let it in.
pub async fn inbound(
    tunnel: Stream,
    caller: Option<Arc<str>>,
    snap: Arc<Snapshot>,
    metrics: &Metrics,
) {
    let app = snap.own.app;
    // The same admission as a request's; a tunnel without a proven identity is denied.
    let admitted = match caller.as_deref() {
        Some(c) => authorize::admit(&snap, c, Ask::Tunnel),
        None => Err(Reject::NoIdentity),
    };
    if let Err(reject) = admitted {
        // The request path's flag (`denied`, `no_policy`) is the tunnel's reason label too.
        let failure = reject.failure();
        metrics
            .tcp_rejected
            .with_label_values(&["inbound", &snap.own.name, failure.flag])
            .inc();
        log::info!("tcp tunnel from {caller:?} refused: {}", failure.reason);
        return;
    }
    match timeout(snap.connect_timeout, TcpStream::connect(app)).await {
        Ok(Ok(tcp)) => {
            let _ = tcp.set_nodelay(true);
            splice(
                tunnel,
                tcp,
                snap.idle_timeout,
                metrics,
                "inbound",
                &snap.own.name,
            )
            .await;
        }
        Ok(Err(e)) => log::warn!("tcp tunnel to app {app}: {e}"),
        Err(_) => log::warn!("tcp tunnel to app {app}: connect timed out"),
    }
}
