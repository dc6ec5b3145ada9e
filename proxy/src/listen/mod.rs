//! Accepting traffic: every traffic listener is one Pingora service (one runtime with the
//! configured worker threads), and [`Traffic`] dispatches each connection by the local port it
//! arrived on: the inbound port to the mTLS handshake, the outbound port to HTTP (h2c sniffed),
//! a dedicated port to its destination's HTTP or TCP path. A connection redirected to the
//! outbound port by capture goes by its original destination (a mesh service's path, or
//! egress). Ports added after start are bound by [`ports::PortManager`].

pub mod bound;
pub mod detect;
pub mod limit;
pub mod ports;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{Ssl, Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use tokio::io::AsyncReadExt;
use tokio::time::timeout;

use crate::drain::Drain;
use crate::identity::material::ALPN_TCP;
use crate::inbound::accept::{self, PeerIdentity};
use crate::inbound::InboundHttp;
use crate::outbound::connector::{InForce, OutboundProxies};
use crate::outbound::{egress, original_dst};
use crate::store::Store;
use crate::tcp;
use crate::telemetry::access_log::AccessLog;
use crate::upgrade::half_close;
use limit::Listener;
use weft_policy::Protocol;

/// How long a new plaintext connection may take to send its first bytes (matches Pingora's
/// keepalive wait between requests); a shorter `idle_timeout` shortens it.
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(60);

/// Period of each traffic worker's timer floor (see [`ensure_timer_floor`]).
const TIMER_FLOOR: Duration = Duration::from_secs(1);

/// Keeps a timer due within [`TIMER_FLOOR`] pending on this traffic worker's runtime, once per
/// worker thread.
///
/// Why: Pingora waits for a kept-alive connection's next request under a tokio timer of
/// `idle_timeout` (an hour by default). Tokio wakes its own driver through an eventfd whenever
/// a new timer falls due before every pending one, and with no other timer pending that was
/// nearly once per request: a `write` syscall plus a spurious `epoll_wait` return. With an
/// earlier timer always pending, the long ones never come first. The cost is one wake-up per
/// second per worker.
fn ensure_timer_floor() {
    thread_local!(static STARTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
    if STARTED.with(|s| s.replace(true)) {
        return;
    }
    tokio::spawn(async {
        let mut tick = tokio::time::interval(TIMER_FLOOR);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Ends with the worker's runtime.
        loop {
            tick.tick().await;
        }
    });
}

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Is this plaintext connection HTTP/2 with prior knowledge? Reads only while the bytes still
/// match the preface, then puts them back. Pingora's own h2c check waits for 24 bytes, which
/// hangs a shorter HTTP/1 request (`GET / HTTP/1.0` + CRLFs is 18) and never answers it.
/// Public only for the fuzz target (fuzz/fuzz_targets/h2c_sniff.rs).
#[doc(hidden)]
pub async fn sniff_h2c(stream: &mut L4Stream) -> std::io::Result<bool> {
    let mut buf = [0u8; 24];
    let mut n = 0;
    while n < buf.len() {
        let read = stream.read(&mut buf[n..]).await?;
        if read == 0 {
            break;
        }
        n += read;
        if buf[..n] != H2_PREFACE[..n] {
            break;
        }
    }
    stream.rewind(&buf[..n]);
    Ok(&buf == H2_PREFACE)
}

/// The connection dispatcher for every traffic listener (cheap to clone: the dedicated-port
/// manager holds a clone).
#[derive(Clone)]
pub struct Traffic {
    pub(crate) store: Arc<Store>,
    pub(crate) drain: Arc<Drain>,
    pub(crate) outbound: Arc<OutboundProxies>,
    pub(crate) inbound: Arc<HttpProxy<InboundHttp>>,
    pub(crate) outbound_port: u16,
    pub(crate) inbound_port: u16,
    /// Connections each listener holds (the cap: `max_connections_per_listener`).
    pub(crate) open: Arc<limit::Open>,
    /// Destination labels of egress connections (bounded).
    pub(crate) egress: Arc<egress::Labels>,
    /// Where egress connections are logged, when configured.
    pub(crate) access_log: Option<Arc<AccessLog>>,
}

impl Traffic {
    /// Mutual TLS from a peer sidecar ([`accept::handshake`]), then HTTP/2, HTTP/1.1 (for
    /// upgrades) or a TCP tunnel by the negotiated ALPN.
    async fn inbound_conn(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().cloned());
        let tls = accept::handshake(&self.store, stream).await?;
        match tls.selected_alpn_proto() {
            Some(ALPN::H2) => {
                // A request ends (and leaves the drain's count) when its response is handed to
                // the HTTP/2 connection, whose own task writes it; a draining sidecar must not
                // exit before that task has flushed it and closed the connection.
                let _flushing = self.drain.hold_exit();
                ServerApp::process_new(&self.inbound, Box::new(tls), shutdown).await
            }
            // HTTP/1.1 between sidecars carries upgrades (WebSocket) only: `crate::upgrade`.
            // The handshake offers it only to an `http` service; checked again here because a
            // reload may have changed the service's protocol since.
            // The connection is wrapped for the session's TCP half-close (`half_close`).
            Some(ALPN::H1) if self.store.load().own.protocol == Protocol::Http => {
                let _flushing = self.drain.hold_exit();
                let tls = Box::new(half_close::Client::new(tls));
                half_close::scope(ServerApp::process_new(&self.inbound, tls, shutdown)).await
            }
            Some(ALPN::Custom(c)) if c.protocol() == ALPN_TCP => {
                let _working = self.drain.enter();
                let caller = tls
                    .ssl_digest()
                    .and_then(|d| d.extension.get::<PeerIdentity>().map(|p| p.uri.clone()));
                tcp::inbound(
                    Box::new(tls),
                    caller,
                    self.store.load(),
                    &self.store.metrics,
                )
                .await;
                None
            }
            other => {
                log::info!("inbound from {peer:?}: unsupported ALPN {other:?}");
                None
            }
        }
    }
}

impl Traffic {
    /// Plaintext HTTP from the app: h2c goes to Pingora's HTTP/2 path; HTTP/1 sessions are fed
    /// to the proxy directly, as Pingora's own loop would, minus its blocking h2c peek.
    async fn outbound_http(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let mut l4 = stream.into_any().downcast::<L4Stream>().ok()?;
        // A client connection that has sent no request yet is idle too: `idle_timeout` bounds
        // it when shorter than the first-bytes limit (docs/CONFIG.md: "a client connection
        // with no request ... for this long is closed"). It used to wait the full 60 s
        // whatever `idle_timeout` said.
        let first_bytes = FIRST_BYTES_TIMEOUT.min(self.store.load().idle_timeout);
        let h2 = match timeout(first_bytes, sniff_h2c(&mut l4)).await {
            Ok(Ok(h2)) => h2,
            _ => return None,
        };
        self.serve_http(l4, h2, first_bytes, shutdown).await
    }

    /// Serves plaintext HTTP from the app whose first bytes said which version (`h2`: the
    /// preface), sniffed by [`Traffic::outbound_http`] or detected on a captured connection
    /// ([`detect`]): never read twice. `first_bytes` bounds an idle connection as there.
    async fn serve_http(
        self: &Arc<Self>,
        l4: Box<L4Stream>,
        h2: bool,
        first_bytes: Duration,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if h2 {
            // Every stream goes to the outbound proxy in force when it starts (`InForce`), so
            // a renewed certificate never closes the app's connection.
            let app = Arc::new(InForce::new(self.outbound.clone()));
            // As on the inbound side: responses are flushed by the connection's own task.
            let _flushing = self.drain.hold_exit();
            return ServerApp::process_new(&app, l4, shutdown).await;
        }
        // Wrapped for an upgraded session's TCP half-close (`half_close`), which each request
        // gets a fresh state for.
        let mut session = ServerSession::new_http1(Box::new(half_close::Client::new(*l4)));
        // The same bound while the rest of the first request arrives, and between requests
        // after one the sidecar answered without routing (an unknown host, say); a routed
        // request sets `idle_timeout` itself (`errors::idle_keepalive`).
        let keepalive = first_bytes.as_secs().max(1);
        session.set_keepalive(if *shutdown.borrow() {
            None
        } else {
            Some(keepalive)
        });
        // Each request takes the proxy in force when it starts: after a certificate renewal
        // the next request on a kept-alive connection already uses the new one.
        let mut result =
            half_close::scope(self.outbound.current().process_new_http(session, shutdown)).await;
        while let Some((stream, settings)) = result.map(|r| r.consume()) {
            let mut session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
            result = half_close::scope(self.outbound.current().process_new_http(session, shutdown))
                .await;
        }
        None
    }
}

impl Traffic {
    /// A connection redirected by capture (`weft-proxy init`) from the app to `to`: a mesh
    /// service's TCP tunnel or HTTP path (routed by Host, else by `to`), or egress. To an
    /// `http` or `grpc` service on a port not opaque, the first bytes decide ([`detect`]).
    async fn captured(
        self: &Arc<Self>,
        stream: Stream,
        to: std::net::SocketAddr,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let mut snap = self.store.load();
        if snap.routes.for_address(to).is_none() && self.store.endpoints.separate() {
            // Endpoints by service: a pod IP names its service only through endpoints this
            // sidecar may never have asked for. Before calling it egress, ask for every
            // service's (once; bounded), as a full snapshot would have listed them.
            let all = snap
                .routes
                .destinations
                .iter()
                .map(|d| d.name.clone())
                .collect();
            let wait = crate::control::endpoints::SUBSCRIBE_WAIT;
            if self.store.endpoints.wait_for_all(all, wait).await {
                snap = self.store.load();
            }
        }
        match snap.routes.for_address(to).cloned() {
            Some(dest) => {
                let opaque = dest.protocol == Protocol::Tcp
                    || detect::is_opaque(to.port(), &snap.own.opaque_ports, &dest.opaque_ports);
                let stream: Stream = if opaque {
                    stream
                } else {
                    let wait = snap.own.detect_timeout;
                    drop(snap);
                    let mut l4 = stream.into_any().downcast::<L4Stream>().ok()?;
                    match detect::detect(&mut l4, wait).await {
                        Ok((detect::Detected::Opaque, read)) => {
                            log::debug!(
                                "captured connection to {} ({to}): not HTTP ({read} bytes in {wait:?}); TCP path",
                                dest.name
                            );
                            l4
                        }
                        Ok((detected, _)) => {
                            // Detection already told HTTP/2 from HTTP/1: no second sniff.
                            let h2 = detected == detect::Detected::H2;
                            let first_bytes =
                                FIRST_BYTES_TIMEOUT.min(self.store.load().idle_timeout);
                            return self.serve_http(l4, h2, first_bytes, shutdown).await;
                        }
                        Err(_) => return None,
                    }
                };
                let _working = self.drain.enter();
                let (snap, dest) = tcp::with_endpoints(&self.store, self.store.load(), dest).await;
                tcp::outbound(stream, snap, dest, &self.store.metrics).await;
                None
            }
            None => {
                let _working = self.drain.enter();
                let ctx = egress::EgressCtx {
                    snap,
                    metrics: &self.store.metrics,
                    labels: &self.egress,
                    access_log: self.access_log.as_deref(),
                };
                egress::pass(stream, to, ctx).await;
                None
            }
        }
    }
}

#[async_trait]
impl ServerApp for Traffic {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        ensure_timer_floor();
        let port = stream
            .get_socket_digest()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).map(|a| a.port()))?;
        let listener = match port {
            p if p == self.inbound_port => Listener::Inbound,
            p if p == self.outbound_port => Listener::Outbound,
            _ => Listener::Dedicated,
        };
        let max = self.store.load().max_connections_per_listener;
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let _held = match self.open.try_hold(listener, max, peer) {
            Ok(held) => held,
            Err(why) => {
                // Closed at once (the stream is dropped), never queued: a flood cannot hold more.
                self.store
                    .metrics
                    .connections_refused
                    .with_label_values(&[listener.as_str(), why.as_str()])
                    .inc();
                log::debug!(
                    "{} listener: {why:?} (cap {max}); closing a connection from {peer:?}",
                    listener.as_str()
                );
                return None;
            }
        };
        if port == self.inbound_port {
            return self.inbound_conn(stream, shutdown).await;
        }
        if port == self.outbound_port {
            let to = stream
                .get_socket_digest()
                .and_then(|d| original_dst::captured(&d));
            if let Some(to) = to {
                return self.captured(stream, to, shutdown).await;
            }
            return self.outbound_http(stream, shutdown).await;
        }
        let snap = self.store.load();
        let dest = snap.routes.for_port(port)?.clone();
        if dest.protocol == Protocol::Tcp {
            let _working = self.drain.enter();
            let (snap, dest) = tcp::with_endpoints(&self.store, snap, dest).await;
            tcp::outbound(stream, snap, dest, &self.store.metrics).await;
            None
        } else {
            drop(snap);
            self.outbound_http(stream, shutdown).await
        }
    }
}
