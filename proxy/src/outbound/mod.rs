//! Outbound HTTP: the app's plain HTTP/1.1 or h2c request is routed by Host / :authority (or by
//! the dedicated port it arrived on) and sent over pooled, multiplexed HTTP/2 on mutual TLS to
//! an endpoint's sidecar, which must prove the destination's identity.
//!
//! [`Outbound`] is the Pingora `ProxyHttp`; each phase calls one stage: [`route`] (destination,
//! route, backend, rewrite; [`original_dst`] names a captured connection's service),
//! [`admit`] (rate, fault, limit, budget), [`endpoint`] (balancer, outlier admission, peer), [`outcome`] (the one classifier feeding balancer, outlier
//! detector and retries). Rejections are typed ([`crate::errors::Reject`]) and answered in one
//! place; [`connector`] holds the mTLS client identity Pingora dials with.

pub mod admit;
pub mod balance;
pub mod connector;
pub mod ctx;
pub mod egress;
pub mod endpoint;
pub mod original_dst;
pub mod outcome;
pub mod route;

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use weft_resilience::retry::{Attempt as RetryAttempt, Decision, Outcome, StopReason};

use crate::clock;
use crate::drain::Drain;
use crate::errors::{self, Failure, Reject};
use crate::http_path;
use crate::store::Store;
use crate::telemetry::access_log::Record;
use crate::telemetry::hop::{Ending, Reporters};
use crate::telemetry::metrics::{self, Event};
use crate::upgrade;
use weft_policy::Protocol;

pub use ctx::OutCtx;
pub use endpoint::{MAX_H2_STREAMS, POOL_IDLE_TIMEOUT};
use outcome::{Attempt, Verdict};

/// The outbound proxy logic (cheap to clone: each rebuilt proxy gets a clone, see
/// [`connector`]).
#[derive(Clone)]
pub struct Outbound {
    store: Arc<Store>,
    drain: Arc<Drain>,
    report: Reporters,
}

impl Outbound {
    /// Outbound proxy reading config from `store`, reporting finished requests to `report`.
    pub fn new(store: Arc<Store>, drain: Arc<Drain>, report: Reporters) -> Self {
        Self {
            store,
            drain,
            report,
        }
    }
}

fn host(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
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

    /// Routing, then admission; a rejection is answered here (the connection stays usable).
    async fn request_filter(&self, session: &mut Session, ctx: &mut OutCtx) -> Result<bool> {
        ctx._working = Some(self.drain.enter());
        let snap = self.store.load();
        ctx.snap = Some(snap.clone());
        ctx.hop.begin(
            &session.req_header().headers,
            &self.report,
            snap.tracing.sampling,
        );
        self.await_endpoints(session, ctx).await;
        if let Err(reject) = self
            .route(session, ctx)
            .and_then(|()| self.upgrade(session, ctx))
        {
            ctx.hop.flag = Some(reject.respond(session, ctx.hop.metrics.as_deref()).await);
            return Ok(true);
        }
        errors::idle_keepalive(session, snap.idle_timeout);
        let (Some(d), Some(rs)) = (ctx.dest.clone(), ctx.route.clone()) else {
            return Ok(false);
        };
        match admit::admit(&d, &rs, clock::now()).await {
            Ok(permit) => {
                ctx.permit = Some(permit);
                Ok(false)
            }
            Err(reject) => {
                ctx.hop.flag = Some(reject.respond(session, ctx.hop.metrics.as_deref()).await);
                Ok(true)
            }
        }
    }

    /// The endpoint stage: back off if a retry asked to, check the route's deadline, choose an
    /// endpoint and build its peer.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut OutCtx,
    ) -> Result<Box<HttpPeer>> {
        let (Some(snap), Some(d), Some(rs)) =
            (ctx.snap.clone(), ctx.dest.clone(), ctx.route.clone())
        else {
            return Err(Error::explain(ErrorType::InternalError, "no route"));
        };
        if let Some(wait) = ctx.backoff.take() {
            let left = ctx
                .deadline
                .map_or(wait, |dl| dl.saturating_duration_since(Instant::now()));
            tokio::time::sleep(wait.min(left)).await;
        }
        let chosen = endpoint::time_left(ctx.deadline, &rs, ctx.attempts).and_then(|left| {
            let chosen = endpoint::choose(&d, &rs, &mut ctx.tried, clock::now())?;
            Ok((chosen, left))
        });
        let (chosen, left) = match chosen {
            Ok(c) => c,
            Err(reject) => return Err(fail(ctx, &reject)),
        };
        let mut peer = endpoint::peer(
            &d,
            chosen.ep,
            snap.connect_timeout,
            rs.route.retry.per_try_timeout,
            left,
        );
        if ctx.extended {
            upgrade::stream_peer(&mut peer, snap.idle_timeout);
        } else if ctx.upgrade {
            let to = upgrade::connect::ToSidecar::new(
                &snap.tls.tcp_client,
                peer.sni.clone(),
                snap.connect_timeout,
            );
            upgrade::peer(&mut peer, snap.idle_timeout, Arc::new(to));
        }
        endpoint::count_retry(&rs, ctx.attempts);
        ctx.attempts += 1;
        ctx.tried |= endpoint::bit(chosen.ep);
        ctx.endpoint = Some(chosen);
        ctx.in_flight = Some(d.stats[chosen.ep].start());
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut OutCtx,
    ) -> Result<()> {
        ctx.hop.trace.propagate(req)?;
        match &ctx.route {
            Some(rs) => rs.edit_request(req),
            None => Ok(()),
        }
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut OutCtx,
    ) -> Result<()> {
        let status = resp.status.as_u16();
        let grpc = weft_resilience::retry::grpc_status(&resp.headers);
        ctx.hop.grpc_status = grpc;
        // A peer sidecar that could not reach its app says so: the request was never
        // processed, so it is retried like a refused stream. Only a mesh peer (mTLS, an
        // identity) is believed; its inbound side strips the header from app responses.
        let unprocessed = status == 503
            && resp.headers.contains_key(errors::UNPROCESSED_HEADER)
            && ctx.dest.as_ref().is_some_and(|d| !d.identity.is_empty());
        let attempt = if unprocessed {
            Attempt::Unprocessed
        } else {
            Attempt::Response { status, grpc }
        };
        // Nothing has gone downstream yet: the header is still in our hands, so a retry on a
        // response status is as safe here as one on a connect failure.
        if self.settle(session, ctx, &attempt) {
            ctx.retry_decided = true;
            let mut e = Error::explain(
                ErrorType::HTTPStatus(status),
                format!("retrying after status {status}"),
            );
            e.set_retry(true);
            return Err(e);
        }
        if ctx.upgrade && !ctx.extended && status == 101 {
            upgrade::half_close::switched();
        }
        Ok(())
    }

    /// What an upgraded session's client sent, counted for its half-close
    /// ([`upgrade::half_close`]).
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut OutCtx,
    ) -> Result<()> {
        if ctx.upgrade && !ctx.extended {
            upgrade::half_close::to_peer(body);
        }
        Ok(())
    }

    fn upstream_response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut OutCtx,
    ) -> Result<()> {
        ctx.hop.trailers(trailers);
        Ok(())
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut OutCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let retry = self.settle(session, ctx, &Attempt::ConnectFailed);
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
        if ctx.upgrade && session.response_written().is_some() {
            // The switch was answered: the session is over, never replayed.
            return e;
        }
        let mut e = e.more_context(format!("peer: {peer}"));
        let attempt = Attempt::StreamFailed {
            error: &e,
            client_reused,
            idempotent: session.req_header().method.is_idempotent(),
            within_deadline: ctx.deadline.is_none_or(|d| Instant::now() < d),
            per_try_timeout: ctx
                .route
                .as_ref()
                .is_some_and(|rs| rs.route.retry.per_try_timeout.is_some()),
        };
        let retry = self.settle(session, ctx, &attempt);
        e.set_retry(retry);
        e
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut OutCtx) {
        ctx.permit = None;
        let endpoint = ctx.endpoint_addr();
        let ending = Ending {
            direction: metrics::Direction::Outbound,
            server: endpoint,
            retries: Some(ctx.attempts.saturating_sub(1)),
        };
        let Some((status, elapsed)) = self.report.finish(session, &ctx.hop, ending) else {
            return;
        };
        if ctx.attempts > 1 {
            if let Some(m) = &ctx.hop.metrics {
                m.event(endpoint::retried_event(status));
            }
        }
        let (Some(log), Some(snap)) = (&self.report.access_log, &ctx.snap) else {
            return;
        };
        log.record(Record {
            trace_id: ctx.hop.trace.trace_id,
            src_identity: snap.identity.clone(),
            dst_identity: ctx
                .dest
                .as_ref()
                .map_or_else(|| "".into(), |d| d.identity.clone()),
            route: ctx
                .route
                .as_ref()
                .map_or_else(|| "unmatched".into(), |rs| rs.name.clone()),
            endpoint,
            retries: ctx.attempts.saturating_sub(1),
            ..Record::from_session(session, "outbound", status, elapsed, ctx.hop.flag)
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
        ctx.hop.flag = Some(failure.as_ref().map_or("downstream_closed", |f| f.flag));
        errors::answer(session, failure).await
    }
}

impl Outbound {
    /// The routing stage: the destination (by dedicated port, else Host, else a captured
    /// connection's original address), then the first route that matches. Sets the series
    /// the request counts in, found or not.
    /// Endpoints by service: the first request to a service this sidecar has no endpoints of
    /// subscribes to them and waits, bounded, until they are in force
    /// ([`crate::control::endpoints`]); then it routes with the config that has them.
    async fn await_endpoints(&self, session: &Session, ctx: &mut OutCtx) {
        let Some(snap) = ctx.snap.clone() else { return };
        let port = session
            .server_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.port());
        let Some(d) = snap.routes.destination(port, host(session.req_header())) else {
            return;
        };
        if !d.endpoints.is_empty() {
            return;
        }
        let wait = crate::control::endpoints::SUBSCRIBE_WAIT;
        if self.store.endpoints.wait_for(&d.name, wait).await {
            ctx.snap = Some(self.store.load());
        }
    }

    fn route(&self, session: &mut Session, ctx: &mut OutCtx) -> std::result::Result<(), Reject> {
        let Some(snap) = ctx.snap.clone() else {
            return Ok(());
        };
        let port = session
            .server_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.port());
        let found = snap.routes.destination(port, host(session.req_header()));
        let captured = || snap.routes.for_address(original_dst::of_session(session)?);
        let Some(d) = found.or_else(captured) else {
            snap.routes.unknown_host.request();
            ctx.hop.metrics = Some(snap.routes.unknown_host.clone());
            return Err(Reject::UnknownHost(
                host(session.req_header()).unwrap_or("(none)").to_owned(),
            ));
        };
        ctx.dest = Some(d.clone());
        // The path stage, with the destination's options, before any route reads the path.
        if let Err(reject) = http_path::canonical(session.req_header_mut(), &d.paths) {
            d.unmatched.request();
            ctx.hop.metrics = Some(d.unmatched.clone());
            return Err(reject);
        }
        let req = session.req_header();
        let Some(rs) = d.route(&req.method, req.uri.path(), req) else {
            d.unmatched.request();
            ctx.hop.metrics = Some(d.unmatched.clone());
            return Err(Reject::NoRouteMatch {
                service: d.name.clone(),
                method: req.method.to_string(),
                path: req.uri.path().to_owned(),
            });
        };
        rs.metrics.request();
        ctx.hop.metrics = Some(rs.metrics.clone());
        // Checked: a deadline past the clock's range (the policy caps timeouts, but this is
        // the request path) means none, never a panic.
        ctx.deadline = rs.route.timeout.and_then(|t| Instant::now().checked_add(t));
        ctx.route = Some(rs.clone());
        Ok(())
    }

    /// The upgrade stage, once routed: is this an upgrade the mesh carries
    /// ([`upgrade::check`]), and to a service whose app can take it? An HTTP/1.1 upgrade needs
    /// an `http` service (a gRPC service's inbound port offers only `h2`); an extended CONNECT
    /// needs an app that speaks HTTP/2 (a `grpc` service: an `http` service's app speaks
    /// HTTP/1.1, and the `101` it would answer cannot be written to an HTTP/2 stream). An
    /// upgrade's client side gets the sidecar's idle timeout.
    fn upgrade(&self, session: &mut Session, ctx: &mut OutCtx) -> std::result::Result<(), Reject> {
        let ask = upgrade::check(session.req_header_mut())?;
        let needs = match ask {
            upgrade::Ask::Plain => return Ok(()),
            upgrade::Ask::Upgrade => Protocol::Http,
            upgrade::Ask::Connect => Protocol::Grpc,
        };
        if let Some(d) = ctx.dest.as_ref().filter(|d| d.protocol != needs) {
            let speaks = format!("{:?}", d.protocol).to_lowercase();
            return Err(Reject::BadUpgrade(match ask {
                upgrade::Ask::Connect => format!(
                    "{} speaks {speaks}; a WebSocket over HTTP/2 (extended CONNECT) reaches only \
                     an app that speaks HTTP/2 (a grpc service): open it over HTTP/1.1",
                    d.name
                ),
                _ => format!(
                    "{} speaks {speaks}; only http services take upgrades",
                    d.name
                ),
            }));
        }
        ctx.extended = ask == upgrade::Ask::Connect;
        if let Some(snap) = &ctx.snap {
            upgrade::bound_downstream(session, snap.idle_timeout);
        }
        // The route's timeout bounds a request's whole life and would cut a long session.
        ctx.deadline = None;
        ctx.upgrade = true;
        Ok(())
    }

    /// Judge the attempt once ([`outcome::classify`]) and feed the verdict to the balancer's
    /// latency estimate, the outlier detector and the retry policy; true to retry.
    fn settle(&self, session: &Session, ctx: &mut OutCtx, attempt: &Attempt<'_>) -> bool {
        let counts_5xx = ctx.dest.as_ref().is_some_and(|d| d.outlier_counts_5xx);
        let Verdict {
            fast,
            healthy,
            retry,
        } = outcome::classify(attempt, counts_5xx);
        if let Some(f) = ctx.in_flight.take() {
            if fast {
                f.success();
            } else {
                f.failure();
            }
        }
        if let (Some(d), Some(chosen), Some(healthy)) = (&ctx.dest, ctx.endpoint, healthy) {
            // A probe is judged once: a retry to the same endpoint is an ordinary attempt.
            if let Some(c) = ctx.endpoint.as_mut() {
                c.probe = false;
            }
            endpoint::record_health(d, chosen, healthy, clock::now());
        }
        match retry {
            Some(outcome) => self.decide(session, ctx, outcome),
            None => false,
        }
    }

    /// Whether to retry after `outcome`: the route's policy decides (the one place
    /// retryability is decided); this only gathers the request's facts and counts a skipped
    /// retry.
    fn decide(&self, session: &Session, ctx: &mut OutCtx, outcome: Outcome) -> bool {
        let (Some(d), Some(rs)) = (&ctx.dest, &ctx.route) else {
            return false;
        };
        let attempt = RetryAttempt {
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
}

/// Record a rejection the sidecar raised while choosing an endpoint (counted now), for
/// `fail_to_proxy` to send.
fn fail(ctx: &mut OutCtx, reject: &Reject) -> Box<Error> {
    let f = reject.counted(ctx.hop.metrics.as_deref());
    let e = f.to_error();
    ctx.failure = Some(f);
    e
}
