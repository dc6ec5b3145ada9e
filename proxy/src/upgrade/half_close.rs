//! TCP half-close inside an upgraded HTTP/1.1 session: one side's FIN ends only its
//! direction, and the other keeps flowing until it ends too.
//!
//! Pingora 0.9.1 relays an upgraded session itself (`pingora-proxy/src/proxy_h1.rs`,
//! `proxy_1to1`) and ends the whole session when either side reads EOF
//! (`proxy_handle_upstream`: "An upgraded request is terminated when either side is done";
//! `proxy_handle_downstream` marks the response done on a downstream EOF and stops reading the
//! client when the upstream ends), with no hook to change that. So the FIN is handled below
//! Pingora, in the two streams it relays between, which Weft owns:
//!
//! - [`Client`] wraps the client's connection (the outbound port's HTTP/1, the inbound port's
//!   HTTP/1.1 over mTLS) before Pingora's session is built on it;
//! - [`Peer`] is the upstream connection, made by Weft through `PeerOptions::custom_l4`
//!   ([`super::connect`]) so that it sits above TLS (a TLS FIN is a close_notify, which only
//!   the TLS owner can send or hide).
//!
//! After the `101` ([`switched`]), a side's EOF (its FIN) is kept from Pingora: its read
//! stays pending, so Pingora keeps relaying the other direction. The other side's write half
//! is shut down (a FIN, or a close_notify and FIN over TLS) once every byte that came before
//! the EOF has been written to it: counted by the request body filter ([`to_peer`]) and by
//! [`Peer`]'s reads, against the bytes written. When both sides have ended, the peer's EOF is
//! let through and Pingora finishes the session as usual, writing out what it still holds
//! both ways: the access-log line and duration are the whole session's. (The client's EOF is
//! never let through after the switch: Pingora would end both directions at once and drop
//! what it still holds of the other.) Nothing is buffered here (Pingora's bounded task pipe
//! carries the bytes), and a session stays bounded by `idle_timeout`: Pingora re-arms its
//! read timeouts whenever a byte moves, so a session ends when nothing moves either way for
//! that long, half-closed or not.
//!
//! Both streams and the filters find the session's state in a task-local ([`scope`]): Pingora
//! relays an HTTP/1 session within the task that serves the connection. A stream polled
//! outside a scope (a pooled connection's idle watch) or before the switch is plain.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::protocols::l4::virt::{VirtualSockOpt, VirtualSocket};
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, UniqueID, UniqueIDType,
    ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

tokio::task_local! {
    static SESSION: RefCell<State>;
}

/// Runs `f` (one connection's or one request's proxying) with its own half-close state.
pub fn scope<F: Future>(f: F) -> impl Future<Output = F::Output> {
    SESSION.scope(RefCell::new(State::default()), f)
}

/// The upgrade was answered `101`: from now on each side's FIN is carried on its own.
/// Called from the `upstream_response_filter`, before the `101` goes to the client and before
/// any byte of the new protocol moves.
pub fn switched() {
    with(|s| {
        *s = State {
            armed: true,
            ..State::default()
        }
    });
}

/// Pingora took `body` from the client, for the peer (the `request_body_filter`, which sees
/// every byte read from the client before the next read: when the client's EOF is read, all
/// it sent is counted).
pub fn to_peer(body: &Option<Bytes>) {
    let n = body.as_ref().map_or(0, Bytes::len) as u64;
    if n > 0 {
        with(|s| {
            if s.armed {
                s.peer.owed += n;
            }
        });
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    /// The connection Pingora serves (downstream).
    Client,
    /// The connection Pingora opened (upstream).
    Peer,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::Client => Side::Peer,
            Side::Peer => Side::Client,
        }
    }
}

/// One side of the session, after the switch.
#[derive(Default, Debug)]
struct End {
    /// It sent its FIN (its read reached EOF).
    ended: bool,
    /// Bytes Pingora took from the other side for this one.
    owed: u64,
    /// Bytes written to it (the `101` head excluded).
    written: u64,
    /// Its write half is shut down.
    shut: bool,
}

/// The CRLF CRLF that ends the `101` head written to the client.
const HEAD_END: &[u8; 4] = b"\r\n\r\n";

#[derive(Default, Debug)]
struct State {
    armed: bool,
    client: End,
    peer: End,
    /// How much of [`HEAD_END`] the client's writes have matched (4: the head is out).
    head: usize,
    /// The task to wake when a side ends or a write half becomes due.
    waker: Option<Waker>,
}

impl State {
    fn end(&mut self, side: Side) -> &mut End {
        match side {
            Side::Client => &mut self.client,
            Side::Peer => &mut self.peer,
        }
    }

    /// Should `side`'s write half be shut now: the other side has ended and everything it
    /// sent before has been written to `side`.
    fn shut_due(&mut self, side: Side) -> bool {
        let head_out = side == Side::Peer || self.head == HEAD_END.len();
        let other_ended = self.end(side.other()).ended;
        let e = self.end(side);
        other_ended && head_out && !e.shut && e.written >= e.owed
    }

    /// Counts `n` bytes of `bufs` written to `side`; bytes of the `101` head do not count.
    fn wrote(&mut self, side: Side, bufs: &[&[u8]], mut n: usize) {
        for b in bufs {
            let b = &b[..n.min(b.len())];
            n -= b.len();
            let mut body = b;
            if side == Side::Client {
                body = &b[scan_head(&mut self.head, b)..];
            }
            self.end(side).written += body.len() as u64;
        }
        if self.shut_due(side) {
            self.wake();
        }
    }

    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

fn with<R>(f: impl FnOnce(&mut State) -> R) -> Option<R> {
    SESSION.try_with(|s| f(&mut s.borrow_mut())).ok()
}

fn armed() -> bool {
    with(|s| s.armed).unwrap_or(false)
}

/// Shuts `side`'s write half down if that is due (see [`State::shut_due`]).
fn poll_carry_fin<S: AsyncWrite + Unpin>(
    side: Side,
    inner: &mut S,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    if with(|s| s.shut_due(side)).unwrap_or(false) {
        ready!(Pin::new(inner).poll_shutdown(cx))?;
        with(|s| s.end(side).shut = true);
    }
    Poll::Ready(Ok(()))
}

/// A read of `side` after the switch: its EOF is noted and held back. The client's is never
/// passed on: Pingora would end both directions at once, dropping what it still holds of
/// the other one. The peer's goes through once the client has ended too: Pingora then
/// writes out everything it holds both ways, in order, and finishes the session.
fn poll_read_switched<S: AsyncRead + AsyncWrite + Unpin>(
    side: Side,
    inner: &mut S,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
    peer_body: Option<&mut HeadThenBody>,
) -> Poll<io::Result<()>> {
    // A read of each side is pending for as long as the session lasts, so this is where a
    // FIN owed to this side goes out when nothing is being written to it.
    ready!(poll_carry_fin(side, inner, cx))?;
    let ended = with(|s| s.end(side).ended).unwrap_or(false);
    if !ended {
        let before = buf.filled().len();
        ready!(Pin::new(&mut *inner).poll_read(cx, buf))?;
        let got = &buf.filled()[before..];
        if !got.is_empty() {
            if let Some(p) = peer_body {
                p.read(got);
            }
            return Poll::Ready(Ok(()));
        }
        with(|s| {
            s.end(side).ended = true;
            if side == Side::Peer {
                // Everything Pingora read from the peer is for the client: its write half
                // is shut once all of it is written.
                s.client.owed = peer_body.as_ref().map_or(0, |p| p.body);
            }
        });
        // The other side's write half may be due now: let its read or flush run again.
        cx.waker().wake_by_ref();
    }
    let release = with(|s| {
        let release = side == Side::Peer && s.client.ended;
        if release {
            s.wake();
        } else {
            s.waker = Some(cx.waker().clone());
        }
        release
    })
    .unwrap_or(true);
    if release {
        Poll::Ready(Ok(()))
    } else {
        Poll::Pending
    }
}

/// Where a peer's response head ends and its body (the new protocol's bytes) begins, counted
/// on the bytes read since the request was written: the body bytes Pingora took with the
/// `101` head, before [`switched`], count too.
#[derive(Default, Debug)]
pub(super) struct HeadThenBody {
    head: usize,
    body: u64,
}

impl HeadThenBody {
    fn read(&mut self, bytes: &[u8]) {
        let used = scan_head(&mut self.head, bytes);
        self.body += (bytes.len() - used) as u64;
    }
}

/// Advances `progress` (how much of [`HEAD_END`] matched) over `bytes`; returns how many of
/// them belong to the head.
fn scan_head(progress: &mut usize, bytes: &[u8]) -> usize {
    let mut used = 0;
    for &c in bytes {
        if *progress == HEAD_END.len() {
            break;
        }
        used += 1;
        *progress = if c == HEAD_END[*progress] {
            *progress + 1
        } else {
            usize::from(c == b'\r')
        };
    }
    used
}

fn poll_write<S: AsyncWrite + Unpin>(
    side: Side,
    inner: &mut S,
    cx: &mut Context<'_>,
    buf: &[u8],
) -> Poll<io::Result<usize>> {
    let n = ready!(Pin::new(inner).poll_write(cx, buf))?;
    if armed() {
        with(|s| s.wrote(side, &[buf], n));
    }
    Poll::Ready(Ok(n))
}

fn poll_flush<S: AsyncWrite + Unpin>(
    side: Side,
    inner: &mut S,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    ready!(Pin::new(&mut *inner).poll_flush(cx))?;
    // Pingora flushes after each write and when it finishes a direction: the FIN follows the
    // last byte.
    if armed() {
        ready!(poll_carry_fin(side, inner, cx))?;
    }
    Poll::Ready(Ok(()))
}

/// The client's connection, as Pingora's HTTP/1 session sees it (every trait delegated).
#[derive(Debug)]
pub struct Client<S> {
    inner: S,
}

impl<S> Client<S> {
    /// Wraps the client's connection `inner`.
    pub fn new(inner: S) -> Self {
        Client { inner }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Client<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let inner = &mut self.get_mut().inner;
        if buf.remaining() == 0 || !armed() {
            return Pin::new(inner).poll_read(cx, buf);
        }
        poll_read_switched(Side::Client, inner, cx, buf, None)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Client<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        poll_write(Side::Client, &mut self.get_mut().inner, cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let inner = &mut self.get_mut().inner;
        let n = ready!(Pin::new(inner).poll_write_vectored(cx, bufs))?;
        if armed() {
            let slices: Vec<&[u8]> = bufs.iter().map(|b| &**b).collect();
            with(|s| s.wrote(Side::Client, &slices, n));
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        poll_flush(Side::Client, &mut self.get_mut().inner, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl<S: Shutdown + Send> Shutdown for Client<S> {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl<S: UniqueID> UniqueID for Client<S> {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl<S: Ssl> Ssl for Client<S> {
    fn get_ssl(&self) -> Option<&pingora_core::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<std::sync::Arc<pingora_core::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl<S: GetTimingDigest> GetTimingDigest for Client<S> {
    fn get_timing_digest(&self) -> Vec<Option<pingora_core::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl<S: GetProxyDigest> GetProxyDigest for Client<S> {
    fn get_proxy_digest(
        &self,
    ) -> Option<std::sync::Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: pingora_core::protocols::raw_connect::ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl<S: GetSocketDigest> GetSocketDigest for Client<S> {
    fn get_socket_digest(&self) -> Option<std::sync::Arc<pingora_core::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: pingora_core::protocols::SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl<S: Peek + Send> Peek for Client<S> {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

/// The upstream connection of an upgrade, handed to Pingora as a virtual L4 socket (made by
/// [`super::connect`]).
pub struct Peer<S> {
    inner: S,
    /// What was read since the request was written: its response's head, then body.
    body: HeadThenBody,
}

impl<S> Peer<S> {
    /// Wraps the upstream connection `inner`.
    pub fn new(inner: S) -> Self {
        Peer {
            inner,
            body: HeadThenBody::default(),
        }
    }
}

impl<S> std::fmt::Debug for Peer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("upgrade peer")
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Peer<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 || !armed() {
            // Before the switch: the response head, and maybe the first bytes after it.
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            this.body.read(&buf.filled()[before..]);
            return Poll::Ready(Ok(()));
        }
        poll_read_switched(Side::Peer, &mut this.inner, cx, buf, Some(&mut this.body))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Peer<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !armed() {
            // A request (head) going out: its response starts afresh. A connection kept
            // after a refused upgrade serves the next one.
            this.body = HeadThenBody::default();
        }
        poll_write(Side::Peer, &mut this.inner, cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        poll_flush(Side::Peer, &mut self.get_mut().inner, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + Sync> VirtualSocket for Peer<S> {
    /// `TCP_NODELAY` is set when the socket is made; keepalive is not used on these.
    fn set_socket_option(&self, _opt: VirtualSockOpt) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn switched_state() -> State {
        State {
            armed: true,
            ..State::default()
        }
    }

    #[test]
    fn the_101_head_is_not_body_however_the_writes_split_it() {
        let mut s = switched_state();
        let parts: [&[u8]; 3] = [
            b"HTTP/1.1 101 Switching\r\nUpgrade: x\r",
            b"\n\r",
            b"\nhello",
        ];
        for p in parts {
            s.wrote(Side::Client, &[p], p.len());
        }
        assert_eq!(s.client.written, 5);
        // Only what was written counts, across the slices of a vectored write.
        s.wrote(Side::Client, &[b"abc", b"def"], 4);
        assert_eq!(s.client.written, 9);
        // The peer's writes are all body (its request head went out before the switch).
        s.wrote(Side::Peer, &[b"\r\n\r\nab"], 6);
        assert_eq!(s.peer.written, 6);
    }

    #[test]
    fn the_peers_body_starts_after_its_head_however_the_reads_split_it() {
        let mut p = HeadThenBody::default();
        p.read(b"HTTP/1.1 101 Switching Protocols\r\n\r");
        assert_eq!(p.body, 0);
        p.read(b"\nab");
        p.read(b"\r\n\r\n");
        assert_eq!(p.body, 6);
    }

    #[test]
    fn a_fin_is_due_once_the_other_side_ended_and_all_it_sent_is_written() {
        let mut s = switched_state();
        s.peer.owed = 10;
        assert!(!s.shut_due(Side::Peer), "the client has not ended");
        s.client.ended = true;
        assert!(!s.shut_due(Side::Peer), "10 bytes still to write");
        s.wrote(Side::Peer, &[&[0u8; 10]], 10);
        assert!(s.shut_due(Side::Peer));
        s.peer.shut = true;
        assert!(!s.shut_due(Side::Peer), "once");
        s.peer.ended = true;
        assert!(!s.shut_due(Side::Client), "the 101 head is not out yet");
        s.wrote(Side::Client, &[b"HTTP/1.1 101 x\r\n\r\n"], 18);
        assert!(s.shut_due(Side::Client));
    }

    #[tokio::test]
    async fn a_clients_eof_is_plain_before_the_switch_and_held_after_it() {
        scope(async {
            let (a, mut b) = tokio::io::duplex(64);
            let mut client = Client::new(a);
            b.write_all(b"GET").await.expect("write");
            AsyncWriteExt::shutdown(&mut b).await.expect("shutdown");
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.expect("read");
            assert_eq!(got, b"GET");
            switched();
            let mut buf = [0u8; 8];
            let held = tokio::time::timeout(Duration::from_millis(50), client.read(&mut buf)).await;
            assert!(held.is_err(), "the EOF is held: {held:?}");
            assert!(with(|s| s.client.ended).unwrap_or(false));
        })
        .await;
        // Outside a scope a stream is plain.
        let (a, b) = tokio::io::duplex(64);
        drop(b);
        let mut got = Vec::new();
        Client::new(a).read_to_end(&mut got).await.expect("read");
        assert!(got.is_empty());
    }
}
