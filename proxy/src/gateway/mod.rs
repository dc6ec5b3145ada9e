//! Gateway mode: `weft-proxy --config sidecar.yaml --gateway gateway.yaml` puts an edge in
//! front of the mesh, in the same binary and policy model (like Istio's ingress gateway and
//! Linkerd's). The sidecar config gives the gateway its workload identity and its view of
//! the mesh's services; the gateway file gives the edge listeners, certificates and routes.
//!
//! A request from outside goes: [`listener`] (TLS by SNI from [`edge_tls`], HTTP/1.1 or
//! HTTP/2 by ALPN, connection cap, handshake and header timeouts) → [`Gateway`]'s
//! `request_filter`: [`hygiene`] (size limits, hop-by-hop and `x-weft-*` headers removed,
//! forwarding headers) → [`route`] (host and path, first match; none is a 404 from the gateway)
//! → [`admit`] (the per-route admission step; authentication, CORS and per-client limits
//! chain there) → the route's rewrite and header edits, with the mesh service as Host → the
//! sidecar's own outbound stages ([`crate::outbound::Outbound`]: mesh route, retries,
//! timeouts, balancing, breakers, mTLS with the gateway's identity).

pub mod admit;
pub mod auth;
pub mod edge_tls;
pub mod first;
pub mod hygiene;
pub mod listener;
pub mod metrics;
pub mod reload;
pub mod remote;
pub mod route;
pub mod state;

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use weft_policy::path::PathOptions;

use crate::errors::{self, Failure};
use crate::http_path;
use crate::outbound::{OutCtx, Outbound};
use crate::telemetry::access_log::{AccessLog, Record};
use state::{GatewayState, Live};

/// The gateway's proxy logic: its own stages, then the outbound proxy's (cheap to clone).
#[derive(Clone)]
pub struct Gateway {
    outbound: Outbound,
    live: Arc<Live>,
    access_log: Option<Arc<AccessLog>>,
}

impl Gateway {
    /// Gateway logic over `outbound` for the config in force in `live`.
    pub fn new(outbound: Outbound, live: Arc<Live>, access_log: Option<Arc<AccessLog>>) -> Self {
        Self {
            outbound,
            live,
            access_log,
        }
    }
}

/// Per request: the gateway's part and the outbound stages' context.
pub struct GwCtx {
    out: OutCtx,
    /// The config in force when the request started (a reload applies to the next one).
    state: Arc<GatewayState>,
    route: Option<usize>,
    started: Option<Instant>,
    /// The request line as the client sent it, for the access log.
    uri: Option<http::Uri>,
    flag: Option<&'static str>,
    body_bytes: u64,
    too_large: bool,
    /// The request went on to the outbound stages.
    forwarded: bool,
    /// A WebSocket upgrade: after the `101` its bytes are a session, not a body.
    upgrade: bool,
    /// Headers admission earned for the response (CORS, `RateLimit`).
    response_headers: auth::cors::Headers,
}

impl Gateway {
    /// Answer `f` now; the request goes no further.
    async fn refuse(&self, session: &mut Session, ctx: &mut GwCtx, f: Failure) -> Result<bool> {
        ctx.flag = Some(f.flag);
        // A refused body may still be on its way: the connection is not reused after a 413.
        let close = f.status == 413;
        f.respond(session, close).await;
        Ok(true)
    }

    /// The gateway's stages before the mesh's: `Err` is the answer; `Ok(true)` means
    /// admission answered the request itself.
    async fn edge(
        &self,
        session: &mut Session,
        ctx: &mut GwCtx,
    ) -> std::result::Result<bool, Failure> {
        let st = ctx.state.clone();
        hygiene::check_sizes(session.req_header(), &st.gw.limits)?;
        // One canonical path before matching, as the mesh does (`/v1/orders/../admin` must not
        // match `/v1/orders`); ambiguous encodings are refused.
        http_path::canonical(session.req_header_mut(), &PathOptions::default())
            .map_err(|r| r.failure())?;
        let host = route::request_host(session.req_header());
        let Some(i) = route::find(&st.gw.routes, host.as_deref(), session.req_header()) else {
            return Err(Failure::new(
                404,
                "no_route",
                format!(
                    "no gateway route for host {} path {}",
                    host.as_deref().unwrap_or("(none)"),
                    session.req_header().uri.path()
                ),
            ));
        };
        ctx.route = Some(i);
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let caller = admit::Caller {
            client_ip: hygiene::client_ip(session.req_header(), peer, &st.gw.trusted_proxies),
        };
        match admit::admit(&st.routes[i], &st.auth, &st.metrics, session, &caller).await? {
            admit::Admitted::Forward(headers) => ctx.response_headers = headers,
            admit::Admitted::Answered(flag) => {
                ctx.flag = Some(flag);
                return Ok(true);
            }
        }
        let req = session.req_header_mut();
        let websocket = hygiene::asks_websocket(req);
        hygiene::strip(req);
        if websocket {
            hygiene::keep_websocket(req)?;
            ctx.upgrade = true;
        }
        hygiene::forward(req, peer, &st.gw.trusted_proxies, host.as_deref());
        route::apply(st.routes[i].config(), req).map(|()| false)
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = GwCtx;

    fn new_ctx(&self) -> GwCtx {
        GwCtx {
            out: self.outbound.new_ctx(),
            state: self.live.load_full(),
            route: None,
            started: None,
            uri: None,
            flag: None,
            body_bytes: 0,
            too_large: false,
            forwarded: false,
            upgrade: false,
            response_headers: Vec::new(),
        }
    }

    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {}

    async fn request_filter(&self, session: &mut Session, ctx: &mut GwCtx) -> Result<bool> {
        ctx.started = Some(Instant::now());
        ctx.uri = Some(session.req_header().uri.clone());
        let limits = ctx.state.gw.limits.clone();
        match self.edge(session, ctx).await {
            Err(f) => return self.refuse(session, ctx, f).await,
            Ok(true) => return Ok(true),
            Ok(false) => {}
        }
        ctx.forwarded = true;
        let done = self.outbound.request_filter(session, &mut ctx.out).await?;
        // After the outbound stage, which sets the sidecar's own idle time.
        errors::idle_keepalive(session, limits.idle_timeout);
        if ctx.upgrade {
            // A WebSocket is quiet for long stretches: each direction is bounded by the
            // gateway's idle time, not by the body's read time.
            crate::upgrade::bound_downstream(session, limits.idle_timeout);
        } else {
            session.set_read_timeout(Some(limits.body_timeout));
        }
        Ok(done)
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut GwCtx,
    ) -> Result<()> {
        if ctx.upgrade {
            // The session's bytes (an upgrade carries no body: the outbound stage refuses
            // one), for the session's half-close.
            return (self.outbound)
                .request_body_filter(session, body, end_of_stream, &mut ctx.out)
                .await;
        }
        // A body without a length (chunked, HTTP/2) is counted as it streams.
        ctx.body_bytes += body.as_ref().map_or(0, |b| b.len() as u64);
        if ctx.body_bytes > ctx.state.gw.limits.max_body_bytes {
            ctx.too_large = true;
            // A downstream error: Pingora then stops the exchange (an error of no source is
            // taken for an upstream send failure, and the proxy would wait on for the
            // upstream's answer to a body that never ends).
            return Err(Error::explain(
                ErrorType::HTTPStatus(413),
                "request body over the gateway's limit",
            )
            .into_down());
        }
        Ok(())
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut GwCtx) -> Result<Box<HttpPeer>> {
        self.outbound.upstream_peer(session, &mut ctx.out).await
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut GwCtx,
    ) -> Result<()> {
        self.outbound
            .upstream_request_filter(session, req, &mut ctx.out)
            .await
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut GwCtx,
    ) -> Result<()> {
        self.outbound
            .upstream_response_filter(session, resp, &mut ctx.out)
            .await
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut GwCtx,
    ) -> Result<()> {
        if let Some(h) = &ctx.state.gw.hsts {
            resp.insert_header(http::header::STRICT_TRANSPORT_SECURITY, h.value.clone())?;
        }
        for (name, value) in std::mem::take(&mut ctx.response_headers) {
            resp.append_header(name, value)?;
        }
        Ok(())
    }

    fn upstream_response_trailer_filter(
        &self,
        session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut GwCtx,
    ) -> Result<()> {
        self.outbound
            .upstream_response_trailer_filter(session, trailers, &mut ctx.out)
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut GwCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        self.outbound
            .fail_to_connect(session, peer, &mut ctx.out, e)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut GwCtx,
        client_reused: bool,
    ) -> Box<Error> {
        self.outbound
            .error_while_proxy(peer, session, e, &mut ctx.out, client_reused)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut GwCtx,
    ) -> FailToProxy {
        if ctx.too_large {
            let f = hygiene::too_large(ctx.state.gw.limits.max_body_bytes);
            ctx.flag = Some(f.flag);
            return errors::answer(session, Some(f)).await;
        }
        self.outbound.fail_to_proxy(session, e, &mut ctx.out).await
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut GwCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let route = ctx
            .route
            .map_or_else(|| "unmatched".into(), |i| ctx.state.routes[i].name.clone());
        let elapsed = ctx.started.map(|s| s.elapsed()).unwrap_or_default();
        let m = &ctx.state.metrics;
        m.requests
            .with_label_values(&[&*route, status_code(status)])
            .inc();
        m.duration
            .with_label_values(&[&*route])
            .observe(elapsed.as_secs_f64());
        if let Some(log) = &self.access_log {
            let mut r = Record::from_session(session, "gateway", status, elapsed, ctx.flag);
            r.route = route;
            if let Some(uri) = ctx.uri.take() {
                r.uri = uri;
            }
            log.record(r);
        }
        if ctx.forwarded {
            self.outbound.logging(session, e, &mut ctx.out).await;
        }
    }
}

/// The status as a label value, from a fixed set (anything unusual is `other`).
fn status_code(s: u16) -> &'static str {
    match s {
        0 => "0",
        101 => "101",
        200 => "200",
        201 => "201",
        204 => "204",
        301 => "301",
        302 => "302",
        304 => "304",
        308 => "308",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        408 => "408",
        413 => "413",
        429 => "429",
        431 => "431",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        _ => "other",
    }
}
