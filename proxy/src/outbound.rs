//! Outbound HTTP: the app's plain HTTP/1.1 or h2c request is routed by Host / :authority (or by
//! the dedicated port it arrived on) and sent over pooled, multiplexed HTTP/2 on mutual TLS to
//! an endpoint's sidecar, which must prove the destination's identity.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::access_log::{AccessLog, Record};
use crate::balancer::InFlight;
use crate::drain::{Drain, Working};
use crate::errors::{self, Failure};
use crate::metrics::{self, RouteMetrics};
use crate::routing::rewrite_prefix;
use crate::state::{Snapshot, Store};

/// Concurrent streams allowed on one pooled HTTP/2 connection to a peer sidecar. Pingora's
/// default of 1 would open a connection per in-flight request.
pub const MAX_H2_STREAMS: usize = 256;
/// How long an idle pooled connection to a peer is kept.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The outbound proxy logic.
pub struct Outbound {
    store: Arc<Store>,
    drain: Arc<Drain>,
    access_log: Option<Arc<AccessLog>>,
}

impl Outbound {
    /// Outbound proxy reading config from `store`.
    pub fn new(store: Arc<Store>, drain: Arc<Drain>, access_log: Option<Arc<AccessLog>>) -> Self {
        Self {
            store,
            drain,
            access_log,
        }
    }
}

/// Per-request state.
#[derive(Default)]
pub struct OutCtx {
    snap: Option<Arc<Snapshot>>,
    dest: usize,
    route: usize,
    endpoint: Option<usize>,
    deadline: Option<Instant>,
    in_flight: Option<InFlight>,
    failure: Option<Failure>,
    metrics: Option<Arc<RouteMetrics>>,
    start: Option<Instant>,
    matched: bool,
    flag: Option<&'static str>,
    _working: Option<Working>,
}

fn host(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

impl OutCtx {
    fn endpoint_name(&self) -> String {
        let Some(d) = self
            .snap
            .as_ref()
            .and_then(|s| s.destinations.get(self.dest))
        else {
            return String::new();
        };
        match self.endpoint.and_then(|e| d.endpoints.get(e)) {
            Some(addr) => format!("{} endpoint {addr}", d.name),
            None => d.name.clone(),
        }
    }

    fn timeout(&self) -> Option<Duration> {
        if !self.matched {
            return None;
        }
        let d = self.snap.as_ref()?.destinations.get(self.dest)?;
        d.routes.get(self.route)?.route.timeout
    }
}

#[async_trait]
impl ProxyHttp for Outbound {
    type CTX = OutCtx;

    fn new_ctx(&self) -> OutCtx {
        OutCtx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut OutCtx) -> Result<bool> {
        ctx._working = Some(self.drain.enter());
        ctx.start = Some(Instant::now());
        let snap = self.store.load();
        let local_port = session
            .server_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.port());
        let dest = match local_port.and_then(|p| snap.destination_for_port(p)) {
            Some(d) => Some(d),
            None => host(session.req_header()).and_then(|h| snap.destination_for_host(h)),
        };
        let Some(dest) = dest else {
            snap.unknown_host.request();
            ctx.metrics = Some(snap.unknown_host.clone());
            ctx.flag = Some("no_route");
            ctx.snap = Some(snap.clone());
            ctx.dest = usize::MAX;
            let h = host(session.req_header()).unwrap_or("(none)").to_owned();
            Failure::new(404, "no_route", format!("no route: unknown host {h:?}"))
                .respond(session, false)
                .await;
            return Ok(true);
        };
        let req = session.req_header();
        let d = &snap.destinations[dest];
        let Some(route) = d.route(&req.method, req.uri.path(), req) else {
            d.unmatched.request();
            ctx.metrics = Some(d.unmatched.clone());
            ctx.flag = Some("no_route");
            ctx.dest = dest;
            let f = Failure::new(
                404,
                "no_route",
                format!(
                    "no route: no route of {} matches {} {}",
                    d.name,
                    req.method,
                    req.uri.path()
                ),
            );
            f.respond(session, false).await;
            return Ok(true);
        };
        let metrics = d.routes[route].metrics.clone();
        metrics.request();
        ctx.metrics = Some(metrics);
        ctx.deadline = d.routes[route].route.timeout.map(|t| Instant::now() + t);
        ctx.dest = dest;
        ctx.route = route;
        ctx.matched = true;
        ctx.snap = Some(snap);
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut OutCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(snap) = ctx.snap.clone() else {
            return Err(Error::explain(
                pingora_core::ErrorType::InternalError,
                "no snapshot",
            ));
        };
        let d = &snap.destinations[ctx.dest];
        let Some(ep) = d.pick(ctx.route) else {
            let f = Failure::new(
                503,
                "no_endpoint",
                format!(
                    "no endpoint: {} route {:?} has no endpoint",
                    d.name, d.routes[ctx.route].route.name
                ),
            );
            let e = f.to_error();
            ctx.failure = Some(f);
            return Err(e);
        };
        let mut peer = HttpPeer::new(d.endpoints[ep], true, d.sni.clone());
        let o = &mut peer.options;
        o.alpn = ALPN::H2;
        o.max_h2_streams = MAX_H2_STREAMS;
        o.ca = Some(snap.tls.roots.clone());
        o.connection_timeout = Some(snap.connect_timeout);
        o.idle_timeout = Some(POOL_IDLE_TIMEOUT);
        if let Some(deadline) = ctx.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let f = Failure::new(
                    504,
                    "timeout",
                    "route timeout passed before an endpoint was tried",
                );
                let e = f.to_error();
                ctx.failure = Some(f);
                return Err(e);
            }
            o.read_timeout = Some(left);
        }
        peer.client_cert_key = Some(snap.tls.cert_key.clone());
        ctx.endpoint = Some(ep);
        ctx.in_flight = Some(d.stats[ep].start());
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut OutCtx,
    ) -> Result<()> {
        let Some(snap) = &ctx.snap else { return Ok(()) };
        let route = &snap.destinations[ctx.dest].routes[ctx.route].route;
        if let (Some(new), Some(crate::config::PathMatch::Prefix(old))) =
            (&route.rewrite_prefix, &route.matcher.path)
        {
            let pq = req.uri.path_and_query().map_or("/", |p| p.as_str());
            let rewritten = rewrite_prefix(old, new, pq);
            let mut parts = req.uri.clone().into_parts();
            parts.path_and_query = rewritten.parse().ok();
            if let Ok(uri) = http::Uri::from_parts(parts) {
                req.set_uri(uri);
            }
        }
        for name in &route.remove_headers {
            req.remove_header(name);
        }
        for (name, value) in &route.set_headers {
            req.insert_header(name.clone(), value.clone())?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _resp: &mut ResponseHeader,
        ctx: &mut OutCtx,
    ) -> Result<()> {
        if let Some(f) = &ctx.in_flight {
            f.success();
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut OutCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        if let Some(f) = ctx.in_flight.take() {
            f.failure();
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut OutCtx,
        client_reused: bool,
    ) -> Box<Error> {
        if let Some(f) = ctx.in_flight.take() {
            f.failure();
        }
        // Pingora's default: a request that failed on a reused (possibly stale) pooled
        // connection may be retried once if it is idempotent and its body is still buffered.
        let mut e = e.more_context(format!("peer: {peer}"));
        if !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut OutCtx) {
        let Some((status, elapsed)) = metrics::finish(session, ctx.start, ctx.metrics.as_deref())
        else {
            return;
        };
        let (Some(log), Some(snap)) = (&self.access_log, &ctx.snap) else {
            return;
        };
        let dest = snap.destinations.get(ctx.dest);
        log.record(Record {
            src_identity: snap.identity.clone(),
            dst_identity: dest.map_or_else(|| "".into(), |d| d.identity.clone()),
            route: match (dest, ctx.matched) {
                (Some(d), true) => d.routes[ctx.route].name.clone(),
                _ => "unmatched".into(),
            },
            endpoint: dest.zip(ctx.endpoint).map(|(d, e)| d.endpoints[e]),
            ..Record::from_session(session, "outbound", status, elapsed, ctx.flag)
        });
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut OutCtx,
    ) -> FailToProxy {
        let failure = ctx
            .failure
            .take()
            .or_else(|| Failure::from_pingora(e, ctx.timeout(), &ctx.endpoint_name()));
        ctx.flag = Some(failure.as_ref().map_or("downstream_closed", |f| f.flag));
        errors::answer(session, failure).await
    }
}
