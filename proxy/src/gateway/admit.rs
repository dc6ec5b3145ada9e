//! The gateway's per-route admission step: the ONE place in the request path where a route
//! may refuse a request after it matched and before anything is forwarded. It runs the
//! route's [`RouteGuard`](crate::gateway::auth::RouteGuard) (CORS preflight, JWT or API key,
//! per-client limit): a request let through is edited (claims forwarded as headers, the token
//! stripped) and the response headers it earned (CORS, `RateLimit`) are handed back for the
//! response; anything else is answered here with the guard's status and headers.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use crate::errors::Failure;
use crate::gateway::auth::cors::Headers;
use crate::gateway::auth::{Answer, AuthStage, Incoming, Verdict};
use crate::gateway::metrics::GatewayMetrics;
use crate::gateway::state::RouteEntry;

/// What admission knows about the request besides the session.
pub struct Caller {
    /// The client's address (the peer's, or from a trusted proxy's `X-Forwarded-For`: see
    /// [`crate::gateway::hygiene::client_ip`]).
    pub client_ip: Option<IpAddr>,
}

/// The outcome of admission.
pub enum Admitted {
    /// Forward the request; add these headers to its response.
    Forward(Headers),
    /// The gateway answered (a preflight, 401, 403, 429); the flag is for the access log.
    Answered(&'static str),
}

/// Admit, answer or refuse a request for `route`.
/// `metrics` counts how authentication ended (`weft_gateway_auth_total`).
pub async fn admit(
    route: &RouteEntry,
    stage: &AuthStage,
    metrics: &GatewayMetrics,
    session: &mut Session,
    caller: &Caller,
) -> Result<Admitted, Failure> {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let verdict = {
        let req = session.req_header();
        let incoming = Incoming {
            method: &req.method,
            headers: &req.headers,
            client_ip: caller.client_ip,
        };
        route
            .guard
            .admit(stage, incoming, crate::clock::now(), unix)
            .await
    };
    let auth = match &verdict {
        Verdict::Forward(f) => f.auth,
        Verdict::Answer(a) => a.auth,
    };
    if let Some(o) = auth {
        (metrics.auth)
            .with_label_values(&[&*route.name, o.method, o.result])
            .inc();
    }
    match verdict {
        Verdict::Forward(f) => {
            let req = session.req_header_mut();
            for name in &f.remove {
                req.remove_header(name);
            }
            for (name, value) in f.set {
                req.insert_header(name, value)
                    .map_err(|_| Failure::new(500, "auth_header", "cannot set a claim header"))?;
            }
            Ok(Admitted::Forward(f.response))
        }
        Verdict::Answer(a) => {
            let flag = if a.flag.is_empty() {
                "cors_preflight"
            } else {
                a.flag
            };
            write(session, a).await;
            Ok(Admitted::Answered(flag))
        }
    }
}

/// Write the guard's answer: its status and headers, the reason as a text body.
async fn write(session: &mut Session, a: Answer) {
    let body = if a.reason.is_empty() {
        Bytes::new()
    } else {
        Bytes::from(format!("{}\n", a.reason))
    };
    let Ok(mut header) = ResponseHeader::build(a.status, Some(a.headers.len() + 2)) else {
        return;
    };
    for (name, value) in a.headers {
        let _ = header.append_header(name, value);
    }
    if !body.is_empty() {
        let _ = header.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8");
    }
    let _ = header.insert_header(http::header::CONTENT_LENGTH, body.len());
    if session
        .write_response_header(Box::new(header), body.is_empty())
        .await
        .is_ok()
        && !body.is_empty()
    {
        let _ = session.write_response_body(Some(body), true).await;
    }
}
