//! Outbound HTTP: the app's plain HTTP/1.1 or h2c request is routed by Host / :authority (or by
//! the dedicated port it arrived on) and sent over pooled, multiplexed HTTP/2 on mutual TLS to
//! an endpoint's sidecar, which must prove the destination's identity.

pub mod balance;
pub mod connector;
pub mod route;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use weft_resilience::limiter::{Permit, Rejected};
use weft_resilience::outlier::{Admission, Transition};
use weft_resilience::retry::{Attempt, Decision, Outcome, StopReason};

use crate::clock;
use crate::drain::{Drain, Working};
use crate::errors::{self, Failure};
use crate::outbound::balance::InFlight;
use crate::outbound::route::rewrite_prefix;
use crate::store::{Snapshot, Store};
use crate::telemetry::access_log::{AccessLog, Record};
use crate::telemetry::metrics::{self, Event, Reject, RouteMetrics};
use crate::telemetry::trace::{Hop, SpanRecord, Tracer};

/// Concurrent streams allowed on one pooled HTTP/2 connection to a peer sidecar. Pingora's
/// default of 1 would open a connection per in-flight request.
pub const MAX_H2_STREAMS: usize = 256;
/// How long an idle pooled connection to a peer is kept.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The outbound proxy logic (cheap to clone: each rebuilt proxy gets a clone, see
/// [`crate::outbound::connector`]).
#[derive(Clone)]
pub struct Outbound {
    store: Arc<Store>,
    drain: Arc<Drain>,
    access_log: Option<Arc<AccessLog>>,
    tracer: Option<Arc<Tracer>>,
}

impl Outbound {
    /// Outbound proxy reading config from `store`; spans go to `tracer` when there is one.
    pub fn new(
        store: Arc<Store>,
        drain: Arc<Drain>,
        access_log: Option<Arc<AccessLog>>,
        tracer: Option<Arc<Tracer>>,
    ) -> Self {
        Self {
            store,
            drain,
            access_log,
            tracer,
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
    /// Attempts sent to endpoints so far.
    attempts: u32,
    /// Endpoints tried (bit per index below 64), so a retry goes elsewhere.
    tried: u64,
    /// The current attempt is the half-open probe of an ejected endpoint.
    probe: bool,
    /// Wait before the next attempt.
    backoff: Option<Duration>,
    /// `upstream_response_filter` already chose to retry this error.
    retry_decided: bool,
    permit: Option<Permit>,
    /// Trace context of this request.
    trace: Hop,
    /// `grpc-status` of the response, when recording a span.
    grpc_status: Option<u32>,
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

    /// No downstream modules: Pingora's default adds a (disabled) response-compression module
    /// whose per-request context and filter calls cost every request; a sidecar never
    /// compresses.
    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {}

    async fn request_filter(&self, session: &mut Session, ctx: &mut OutCtx) -> Result<bool> {
        ctx._working = Some(self.drain.enter());
        ctx.start = Some(Instant::now());
        let snap = self.store.load();
        ctx.trace = Hop::start(
            &session.req_header().headers,
            self.tracer.is_some(),
            snap.tracing.sampling,
        );
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
        let rs = &d.routes[route];
        rs.metrics.request();
        ctx.metrics = Some(rs.metrics.clone());
        // Checked: a deadline past the clock's range (the policy caps timeouts, but this is
        // the request path) means none, never a panic.
        ctx.deadline = rs.route.timeout.and_then(|t| Instant::now().checked_add(t));
        ctx.dest = dest;
        ctx.route = route;
        ctx.matched = true;
        crate::errors::idle_keepalive(session, snap.idle_timeout);
        ctx.snap = Some(snap.clone());
        let now = clock::now();
        if let Some(Err(wait)) = rs.rate.as_ref().map(|b| b.try_take(now)) {
            let f = Failure::rate_limited(
                wait,
                format!(
                    "rate limited: route {:?} of {} is over its limit",
                    rs.name, d.name
                ),
            );
            reject(session, ctx, Reject::RateLimited, f).await;
            return Ok(true);
        }
        if let Some(fault) = &rs.route.fault {
            let decided = fault.decide(fastrand::f64(), fastrand::f64());
            if let Some(delay) = decided.delay {
                rs.metrics.event(Event::FaultDelay);
                tokio::time::sleep(delay).await;
            }
            if let Some(status) = decided.abort {
                rs.metrics.event(Event::FaultAbort);
                ctx.flag = Some("fault_abort");
                Failure::new(status, "fault_abort", "fault injected: abort")
                    .respond(session, false)
                    .await;
                return Ok(true);
            }
        }
        match d.in_flight.acquire(d.limits.queue_timeout).await {
            Ok(p) => ctx.permit = Some(p),
            Err(r) => {
                let (why, reason) = match r {
                    Rejected::InFlight => (
                        Reject::Overloaded,
                        format!(
                            "overloaded: {} already has {} requests in flight",
                            d.name, d.limits.max_in_flight
                        ),
                    ),
                    Rejected::Pending => (
                        Reject::QueueFull,
                        format!(
                            "overloaded: {} has {} requests in flight and {} waiting",
                            d.name, d.limits.max_in_flight, d.limits.max_pending
                        ),
                    ),
                    Rejected::QueueTimeout => (
                        Reject::QueueTimeout,
                        format!(
                            "overloaded: no slot to {} freed within {}",
                            d.name,
                            humantime::format_duration(d.limits.queue_timeout)
                        ),
                    ),
                };
                reject(session, ctx, why, Failure::new(503, why.as_str(), reason)).await;
                return Ok(true);
            }
        }
        d.budget.deposit(now);
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
        let rs = &d.routes[ctx.route];
        if let Some(wait) = ctx.backoff.take() {
            let left = ctx
                .deadline
                .map_or(wait, |dl| dl.saturating_duration_since(Instant::now()));
            tokio::time::sleep(wait.min(left)).await;
        }
        let left = match ctx.deadline {
            None => None,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    let what = if ctx.attempts == 0 {
                        "route timeout passed before an endpoint was tried".to_owned()
                    } else {
                        format!(
                            "route timeout {} passed after {} attempts",
                            rs.route
                                .timeout
                                .map(humantime::format_duration)
                                .map(|d| d.to_string())
                                .unwrap_or_default(),
                            ctx.attempts
                        )
                    };
                    return Err(fail(ctx, Failure::new(504, "timeout", what)));
                }
                Some(left)
            }
        };
        let now = clock::now();
        let mut chosen = None;
        // Bounded: losing the race for a probe slot twice in a row is already unlikely.
        for _ in 0..3 {
            let Some(ep) = d.pick(ctx.route, ctx.tried, now) else {
                break;
            };
            match d.health.admit(ep, now) {
                Admission::Healthy => {}
                Admission::Probe => ctx.probe = true,
                Admission::Rejected => {
                    ctx.tried |= bit(ep);
                    continue;
                }
            }
            chosen = Some(ep);
            break;
        }
        let Some(ep) = chosen else {
            let f = if d.endpoints.is_empty() {
                Failure::new(
                    503,
                    "no_endpoint",
                    format!(
                        "no endpoint: {} route {:?} has no endpoint",
                        d.name, rs.name
                    ),
                )
            } else {
                rs.metrics.event(Event::Rejected(Reject::BreakerOpen));
                Failure::new(
                    503,
                    "breaker_open",
                    format!(
                        "breaker open: every endpoint of {} for route {:?} is ejected after consecutive failures",
                        d.name, rs.name
                    ),
                )
            };
            return Err(fail(ctx, f));
        };
        // No client certificate or roots on the peer: they are the connector's (see
        // `crate::outbound::connector`), which keeps Pingora's per-request pool key cheap.
        let mut peer = HttpPeer::new(d.endpoints[ep], true, d.sni.clone());
        let o = &mut peer.options;
        o.alpn = ALPN::H2;
        o.max_h2_streams = MAX_H2_STREAMS;
        o.connection_timeout = Some(snap.connect_timeout);
        o.idle_timeout = Some(POOL_IDLE_TIMEOUT);
        o.read_timeout = match (rs.route.retry.per_try_timeout, left) {
            (Some(p), Some(l)) => Some(p.min(l)),
            (p, l) => p.or(l),
        };
        if ctx.attempts > 0 {
            rs.metrics.retry();
        }
        ctx.attempts += 1;
        ctx.tried |= bit(ep);
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
        ctx.trace.propagate(req)?;
        let Some(snap) = &ctx.snap else { return Ok(()) };
        let route = &snap.destinations[ctx.dest].routes[ctx.route].route;
        if let (Some(new), Some(weft_policy::PathMatch::Prefix(old))) =
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
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut OutCtx,
    ) -> Result<()> {
        let status = resp.status.as_u16();
        if let Some(f) = ctx.in_flight.take() {
            if status < 500 {
                f.success();
            } else {
                f.failure();
            }
        }
        let counts_5xx = ctx
            .snap
            .as_ref()
            .is_some_and(|s| s.destinations[ctx.dest].outlier_counts_5xx);
        let failed = matches!(status, 502..=504) || (counts_5xx && status >= 500);
        feed_health(ctx, !failed);
        let grpc = crate::telemetry::trace::grpc_status(&resp.headers);
        ctx.grpc_status = grpc;
        let outcome = Outcome::from_response(status, grpc);
        // Nothing has gone downstream yet: the header is still in our hands, so a retry on a
        // response status is as safe here as one on a connect failure.
        if decide(session, ctx, outcome) {
            ctx.retry_decided = true;
            let mut e = Error::explain(
                ErrorType::HTTPStatus(status),
                format!("retrying after status {status}"),
            );
            e.set_retry(true);
            return Err(e);
        }
        Ok(())
    }

    fn upstream_response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut OutCtx,
    ) -> Result<()> {
        if ctx.trace.recording {
            ctx.grpc_status = crate::telemetry::trace::grpc_status(trailers).or(ctx.grpc_status);
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut OutCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(f) = ctx.in_flight.take() {
            f.failure();
        }
        feed_health(ctx, false);
        let retry = decide(session, ctx, Outcome::ConnectFailure);
        e.set_retry(retry);
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
        if std::mem::take(&mut ctx.retry_decided) {
            return e;
        }
        if let Some(f) = ctx.in_flight.take() {
            f.failure();
        }
        let mut e = e.more_context(format!("peer: {peer}"));
        if e.esource() == &ErrorSource::Downstream {
            // The client went away or sent garbage: nothing to retry, no endpoint to blame.
            e.set_retry(false);
            return e;
        }
        feed_health(ctx, false);
        let deadline_left = ctx.deadline.is_none_or(|d| Instant::now() < d);
        let per_try = ctx.snap.as_ref().is_some_and(|s| {
            s.destinations[ctx.dest].routes[ctx.route]
                .route
                .retry
                .per_try_timeout
                .is_some()
        });
        let idempotent = session.req_header().method.is_idempotent();
        let outcome = match e.etype() {
            ErrorType::ReadTimedout | ErrorType::WriteTimedout if !deadline_left || !per_try => {
                e.set_retry(false);
                return e;
            }
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => Outcome::PerTryTimeout,
            // Pingora marks GOAWAY(NO_ERROR) and REFUSED_STREAM as never processed.
            _ if matches!(e.retry, pingora_core::RetryType::Decided(true)) => {
                Outcome::RefusedStream
            }
            // A pooled connection the peer had silently dropped: Pingora's own rule retries
            // idempotent requests on it; they were most likely never processed.
            _ if matches!(e.retry, pingora_core::RetryType::ReusedOnly)
                && client_reused
                && idempotent =>
            {
                Outcome::RefusedStream
            }
            _ => Outcome::Reset,
        };
        let retry = decide(session, ctx, outcome);
        e.set_retry(retry);
        e
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut OutCtx) {
        ctx.permit = None;
        let Some((status, elapsed)) = metrics::finish(session, ctx.start, ctx.metrics.as_deref())
        else {
            return;
        };
        if ctx.attempts > 1 {
            if let Some(m) = &ctx.metrics {
                m.event(if (1..500).contains(&status) {
                    Event::RetriedSucceeded
                } else {
                    Event::RetriedFailed
                });
            }
        }
        let dest = ctx.snap.as_ref().and_then(|s| s.destinations.get(ctx.dest));
        let endpoint = dest.zip(ctx.endpoint).map(|(d, e)| d.endpoints[e]);
        if let (Some(tracer), Some((trace_id, span_id))) = (&self.tracer, ctx.trace.span()) {
            tracer.record(SpanRecord {
                trace_id,
                span_id,
                parent: ctx.trace.parent,
                flags: ctx.trace.flags,
                direction: metrics::Direction::Outbound,
                labels: ctx.metrics.clone(),
                method: session.req_header().method.clone(),
                uri: session.req_header().uri.clone(),
                status,
                grpc_status: ctx.grpc_status,
                server: endpoint,
                retries: Some(ctx.attempts.saturating_sub(1)),
                flag: ctx.flag,
                end: std::time::SystemTime::now(),
                duration: elapsed,
            });
        }
        let (Some(log), Some(snap)) = (&self.access_log, &ctx.snap) else {
            return;
        };
        log.record(Record {
            trace_id: ctx.trace.trace_id,
            src_identity: snap.identity.clone(),
            dst_identity: dest.map_or_else(|| "".into(), |d| d.identity.clone()),
            route: match (dest, ctx.matched) {
                (Some(d), true) => d.routes[ctx.route].name.clone(),
                _ => "unmatched".into(),
            },
            endpoint,
            retries: ctx.attempts.saturating_sub(1),
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

fn bit(ep: usize) -> u64 {
    if ep < 64 {
        1 << ep
    } else {
        0
    }
}

/// Record a failure the sidecar raised itself, for `fail_to_proxy` to send.
fn fail(ctx: &mut OutCtx, f: Failure) -> Box<Error> {
    let e = f.to_error();
    ctx.failure = Some(f);
    e
}

/// Answer at once with `f`, counting why.
async fn reject(session: &mut Session, ctx: &mut OutCtx, why: Reject, f: Failure) {
    if let Some(m) = &ctx.metrics {
        m.event(Event::Rejected(why));
    }
    ctx.flag = Some(why.as_str());
    f.respond(session, false).await;
}

/// Feed the attempt's outcome to the endpoint's outlier detector.
fn feed_health(ctx: &mut OutCtx, success: bool) {
    let (Some(snap), Some(ep)) = (&ctx.snap, ctx.endpoint) else {
        return;
    };
    let d = &snap.destinations[ctx.dest];
    let probe = std::mem::take(&mut ctx.probe);
    let now = clock::now();
    let t = if probe {
        d.health.record_probe(ep, success, now)
    } else {
        d.health.record(ep, success, now)
    };
    match t {
        Some(Transition::Ejected(time)) => {
            d.ejections[ep].inc();
            log::warn!(
                "{} endpoint {} ejected for {} after consecutive failures",
                d.name,
                d.endpoints[ep],
                humantime::format_duration(time)
            );
        }
        Some(Transition::Returned) => {
            log::info!(
                "{} endpoint {} returned after a successful probe",
                d.name,
                d.endpoints[ep]
            );
        }
        None => {}
    }
}

/// Whether to retry after `outcome`: the route's policy decides (the one place retryability
/// is decided); this only gathers the request's facts and counts a skipped retry.
fn decide(session: &Session, ctx: &mut OutCtx, outcome: Outcome) -> bool {
    let Some(snap) = &ctx.snap else { return false };
    let d = &snap.destinations[ctx.dest];
    let rs = &d.routes[ctx.route];
    let attempt = Attempt {
        attempts_made: ctx.attempts,
        idempotent: session.req_header().method.is_idempotent(),
        body_replayable: !session.as_ref().retry_buffer_truncated(),
    };
    match rs
        .route
        .retry
        .decide(&outcome, attempt, &d.budget, clock::now(), fastrand::f64())
    {
        Decision::Retry { backoff } => {
            ctx.backoff = Some(backoff);
            true
        }
        Decision::Stop(StopReason::Succeeded | StopReason::NotRetryable) => false,
        Decision::Stop(reason) => {
            rs.metrics.event(Event::Skipped(reason));
            false
        }
    }
}
