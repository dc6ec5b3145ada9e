//! Inbound: mutual TLS from other sidecars, then HTTP/2 to the app (as HTTP/1.1 or h2c) with
//! the caller's proven identity in a header.
//!
//! [`InboundHttp`] is the Pingora `ProxyHttp`; the connection was accepted by [`accept`], and
//! each request passes [`authorize`] before it reaches the app.

pub mod accept;
pub mod authorize;

use std::sync::Arc;

use async_trait::async_trait;
use http::HeaderValue;
use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, Result};
use pingora_http::RequestHeader;
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::clock;
use crate::drain::{Drain, Working};
use crate::errors::{self, Failure};
use crate::http_path;
use crate::outbound::MAX_H2_STREAMS;
use crate::store::{Snapshot, Store};
use crate::telemetry::access_log::Record;
use crate::telemetry::hop::{Ending, HopState, Reporters};
use crate::telemetry::metrics::{self};
use crate::upgrade;
use accept::PeerIdentity;
use weft_policy::Protocol;

/// Header carrying the caller's SPIFFE identity to the app. Any value the caller sent is
/// replaced, so the app can trust it.
pub const CALLER_HEADER: &str = "x-weft-caller";

/// The inbound HTTP proxy logic.
pub struct InboundHttp {
    store: Arc<Store>,
    drain: Arc<Drain>,
    report: Reporters,
}

impl InboundHttp {
    /// Inbound proxy reading config from `store`, reporting finished requests to `report`.
    pub fn new(store: Arc<Store>, drain: Arc<Drain>, report: Reporters) -> Self {
        Self {
            store,
            drain,
            report,
        }
    }
}

/// Per-request state.
#[derive(Default)]
pub struct InCtx {
    snap: Option<Arc<Snapshot>>,
    caller: Option<HeaderValue>,
    caller_id: Option<Arc<str>>,
    /// What is reported when the request ends.
    hop: HopState,
    /// An upgrade ([`crate::upgrade`]), on the HTTP/1.1 connection the caller opened for it.
    upgrade: bool,
    /// An HTTP/2 extended CONNECT ([`crate::upgrade`]): a stream to an app that speaks HTTP/2.
    extended: bool,
    _working: Option<Working>,
}

#[async_trait]
impl ProxyHttp for InboundHttp {
    type CTX = InCtx;

    fn new_ctx(&self) -> InCtx {
        InCtx::default()
    }

    /// No downstream modules: Pingora's default adds a (disabled) response-compression module
    /// whose per-request context and filter calls cost every request; a sidecar never
    /// compresses.
    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {}

    /// The caller's identity, then the authorize stage; a refusal is answered here.
    async fn request_filter(&self, session: &mut Session, ctx: &mut InCtx) -> Result<bool> {
        ctx._working = Some(self.drain.enter());
        let snap = self.store.load();
        ctx.snap = Some(snap.clone());
        ctx.hop.begin(
            &session.req_header().headers,
            &self.report,
            snap.tracing.sampling,
        );
        let peer = session
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .and_then(|s| s.extension.get::<PeerIdentity>());
        if let Some(p) = peer {
            p.metrics.request();
            ctx.hop.metrics = Some(p.metrics.clone());
            ctx.caller = Some(p.header.clone());
            ctx.caller_id = Some(p.uri.clone());
        }
        let checked = authorize::caller(peer)
            .map(|p| p.uri.clone())
            .and_then(|caller| {
                errors::idle_keepalive(session, snap.idle_timeout);
                // The path stage before authorization reads the path; the app gets the same.
                http_path::canonical(session.req_header_mut(), &snap.authz.paths)?;
                authorize::authorize(&snap, &caller, session.req_header(), clock::now())?;
                let ask = upgrade_stage(session, &snap)?;
                ctx.upgrade = ask == upgrade::Ask::Upgrade;
                ctx.extended = ask == upgrade::Ask::Connect;
                Ok(())
            });
        match checked {
            Ok(()) => Ok(false),
            Err(reject) => {
                ctx.hop.flag = Some(reject.respond(session, ctx.hop.metrics.as_deref()).await);
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut InCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(snap) = &ctx.snap else {
            return Err(Error::explain(
                pingora_core::ErrorType::InternalError,
                "no snapshot",
            ));
        };
        let mut peer = HttpPeer::new(snap.own.app, false, String::new());
        let o = &mut peer.options;
        o.connection_timeout = Some(snap.connect_timeout);
        if ctx.upgrade {
            let to_app = std::sync::Arc::new(upgrade::connect::ToApp::new(snap.connect_timeout));
            upgrade::peer(&mut peer, snap.idle_timeout, to_app);
        } else if snap.own.protocol == Protocol::Grpc {
            // h2c with prior knowledge: gRPC apps speak HTTP/2 in the clear on loopback.
            o.alpn = ALPN::H2;
            o.max_h2_streams = MAX_H2_STREAMS;
            if ctx.extended {
                upgrade::stream_peer(&mut peer, snap.idle_timeout);
            }
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut InCtx,
    ) -> Result<()> {
        if let Some(caller) = &ctx.caller {
            req.insert_header(CALLER_HEADER, caller.clone())?;
        }
        ctx.hop.trace.propagate(req)
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut pingora_http::ResponseHeader,
        ctx: &mut InCtx,
    ) -> Result<()> {
        // Only this sidecar may say the app never saw a request (its callers retry on it).
        resp.remove_header(errors::UNPROCESSED_HEADER);
        if ctx.hop.trace.recording {
            ctx.hop.grpc_status = weft_resilience::retry::grpc_status(&resp.headers);
        }
        if ctx.upgrade && resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
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
        ctx: &mut InCtx,
    ) -> Result<()> {
        if ctx.upgrade {
            upgrade::half_close::to_peer(body);
        }
        Ok(())
    }

    fn upstream_response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut InCtx,
    ) -> Result<()> {
        ctx.hop.trailers(trailers);
        Ok(())
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut InCtx) {
        let ending = Ending {
            direction: metrics::Direction::Inbound,
            server: ctx.snap.as_ref().map(|s| s.own.app),
            retries: None,
        };
        let Some((status, elapsed)) = self.report.finish(session, &ctx.hop, ending) else {
            return;
        };
        let (Some(log), Some(snap)) = (&self.report.access_log, &ctx.snap) else {
            return;
        };
        log.record(Record {
            trace_id: ctx.hop.trace.trace_id,
            src_identity: ctx.caller_id.clone().unwrap_or_else(|| "".into()),
            dst_identity: snap.identity.clone(),
            route: "inbound".into(),
            endpoint: Some(snap.own.app),
            ..Record::from_session(session, "inbound", status, elapsed, ctx.hop.flag)
        });
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut InCtx,
    ) -> FailToProxy {
        let app = ctx
            .snap
            .as_ref()
            .map(|s| format!("app {} at {}", s.own.name, s.own.app))
            .unwrap_or_default();
        let failure = Failure::from_pingora(e, None, &app);
        ctx.hop.flag = Some(failure.as_ref().map_or("downstream_closed", |f| f.flag));
        errors::answer(session, failure).await
    }
}

/// The inbound upgrade stage, after authorization: an upgrade the mesh carries
/// ([`upgrade::check`]) gets the sidecar's idle timeout on the caller's side. HTTP/1.1 between
/// sidecars exists only for upgrades (every other request rides HTTP/2), so a plain request on
/// it is refused: one protocol per purpose keeps the surface a caller can probe small. An
/// extended CONNECT (HTTP/2) goes only to an app that speaks HTTP/2 (a `grpc` service), as
/// the caller's sidecar already checked; checked again for a caller that skips its sidecar.
fn upgrade_stage(
    session: &mut Session,
    snap: &Snapshot,
) -> std::result::Result<upgrade::Ask, errors::Reject> {
    let ask = upgrade::check(session.req_header_mut())?;
    if session.as_downstream().is_http2() {
        return match ask {
            upgrade::Ask::Connect if snap.own.protocol != Protocol::Grpc => {
                Err(errors::Reject::BadUpgrade(
                    "extended CONNECT reaches only an app that speaks HTTP/2 (a grpc service)"
                        .into(),
                ))
            }
            upgrade::Ask::Connect => Ok(ask),
            _ => Ok(upgrade::Ask::Plain),
        };
    }
    if ask == upgrade::Ask::Plain {
        return Err(errors::Reject::BadUpgrade(
            "HTTP/1.1 between sidecars carries upgrade requests only".into(),
        ));
    }
    upgrade::bound_downstream(session, snap.idle_timeout);
    Ok(ask)
}
