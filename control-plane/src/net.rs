//! Accepting connections: one loop every listener of the control plane shares (sidecar
//! streams, operator API, injection webhook), so none spins on an accept error; and the bounds
//! every listener keeps ([`Limits`], [`Gate`]), so a slow or idle client, or many of them, can
//! hold neither a connection slot nor memory for long.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The next connection on `listener`. An accept error (such as running out of file
/// descriptors) is logged and retried after a short pause, so the loop never spins.
pub(crate) async fn accept(listener: &TcpListener, what: &str) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(c) => return c,
            Err(e) => {
                log::warn!("{what} accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The bounds of one HTTP/1 listener (operator API, metrics, webhook).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; the next ones wait for a slot, as many again at most, for
    /// up to `header_read_timeout`, and any beyond that are closed at once.
    pub max_connections: usize,
    /// Longest a client may take over its TLS handshake (TLS listeners only).
    pub handshake_timeout: Duration,
    /// Longest a client may take to send a request's headers once it started one.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and no byte read or written for this long is
    /// closed (keep-alive connections left open, clients that connect and send nothing).
    pub idle_timeout: Duration,
}

impl Default for Limits {
    /// The operator API's: a handful of operators and scrapers.
    fn default() -> Self {
        Limits {
            max_connections: 64,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// The connection cap of one listener: a slot per connection served, and a bounded wait for
/// one.
#[derive(Debug, Clone)]
pub(crate) struct Gate {
    slots: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    max: usize,
    wait: Duration,
}

impl Gate {
    /// At most `max` connections at once; as many again may wait up to `wait` for a slot.
    pub(crate) fn new(max: usize, wait: Duration) -> Self {
        Gate {
            slots: Arc::new(Semaphore::new(max.max(1))),
            waiting: Arc::new(AtomicUsize::new(0)),
            max: max.max(1),
            wait,
        }
    }

    /// A slot for one connection, or `None`: the connection is to be closed at once (too many
    /// already wait, or none freed up in time).
    pub(crate) async fn enter(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Some(p);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let slot = tokio::time::timeout(self.wait, self.slots.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        slot.ok().and_then(Result::ok)
    }
}

/// Milliseconds since `origin` when the connection last moved a byte.
struct Activity {
    origin: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long until the connection has been idle for `limit` (zero: it has).
    fn idle_left(&self, limit: Duration) -> Duration {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return limit;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        (last + limit).saturating_sub(self.origin.elapsed())
    }
}

/// An I/O that records when it last moved a byte.
struct Watched<T> {
    io: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Marks a request in flight while it lives (an idle connection has none).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The response body every HTTP/1 listener here answers with.
pub(crate) type Body = http_body_util::Full<bytes::Bytes>;

/// Serve HTTP/1 on `listener` within `limits`: each connection takes a slot of the
/// listener's [`Gate`], completes its TLS handshake (with `tls`) in time, sends its headers in
/// time and is closed once idle; `handle` answers each request.
pub(crate) async fn serve_http1<H, F>(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: Limits,
    what: &'static str,
    handle: H,
) where
    H: Fn(hyper::Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = hyper::Response<Body>> + Send + 'static,
{
    let gate = Gate::new(limits.max_connections, limits.header_read_timeout);
    loop {
        let (tcp, peer) = accept(&listener, what).await;
        let (gate, tls, handle) = (gate.clone(), tls.clone(), handle.clone());
        tokio::spawn(async move {
            let Some(_slot) = gate.enter().await else {
                log::warn!("{what}: closing the connection from {peer}: too many connections");
                return;
            };
            match tls {
                None => serve_conn(tcp, limits, handle).await,
                Some(tls) => {
                    match tokio::time::timeout(limits.handshake_timeout, tls.accept(tcp)).await {
                        Ok(Ok(s)) => serve_conn(s, limits, handle).await,
                        Ok(Err(e)) => log::warn!("{what} TLS handshake from {peer}: {e}"),
                        Err(_) => log::warn!("{what} TLS handshake from {peer}: timed out"),
                    }
                }
            }
        });
    }
}

/// One connection: hyper's header-read timeout, and closed after `limits.idle_timeout`
/// without a request in flight or a byte moved.
async fn serve_conn<T, H, F>(io: T, limits: Limits, handle: H)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(hyper::Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = hyper::Response<Body>> + Send + 'static,
{
    let activity = Arc::new(Activity {
        origin: Instant::now(),
        last_ms: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
    });
    let io = Watched {
        io,
        activity: activity.clone(),
    };
    let svc = {
        let activity = activity.clone();
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let busy = InFlight::new(&activity);
            let answer = handle(req);
            async move {
                let r = answer.await;
                drop(busy);
                Ok::<_, std::convert::Infallible>(r)
            }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(TokioIo::new(io), svc);
    let mut conn = std::pin::pin!(conn);
    loop {
        let left = activity.idle_left(limits.idle_timeout);
        if left.is_zero() {
            return; // dropping the connection closes it
        }
        tokio::select! {
            _ = conn.as_mut() => return,
            () = tokio::time::sleep(left) => {}
        }
    }
}

/// A connection holding its listener's [`Gate`] slot until it is dropped (tonic owns the
/// sidecars' connections: the slot goes with them).
pub(crate) struct Slotted<T> {
    io: T,
    _slot: OwnedSemaphorePermit,
}

impl<T> Slotted<T> {
    pub(crate) fn new(io: T, slot: OwnedSemaphorePermit) -> Self {
        Slotted { io, _slot: slot }
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Slotted<T> {
    type ConnectInfo = T::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Slotted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Slotted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
