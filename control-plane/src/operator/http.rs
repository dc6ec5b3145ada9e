//! The operator API's HTTP plumbing shared by its handlers ([`super::api`] and
//! [`super::state_api`]): bounded JSON bodies, JSON answers and errors, and the actor a request
//! names for the audit log.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::StatusCode;

use crate::operator::auth::ADMIN_TOKEN_NAME;

/// Largest request body accepted (a whole policy directory fits many times over).
pub const MAX_BODY: usize = 8 * 1024 * 1024;
/// Longest a client may take to send a request body.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Header naming the person behind a request (weftctl sends the local `$USER`).
pub const ACTOR_HEADER: &str = "x-weft-actor";

pub(crate) type Response = hyper::Response<crate::net::Body>;
/// An early answer (an error) from a handler step; boxed, as a response is large.
pub(crate) type Refusal = Box<Response>;

pub(crate) fn refused(status: StatusCode, message: impl Into<String>) -> Refusal {
    Box::new(error(status, message))
}

pub(crate) fn respond(status: StatusCode, ctype: &'static str, body: String) -> Response {
    let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ctype),
    );
    r
}

pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response {
    respond(status, "application/json", format!("{value:#}\n"))
}

pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    json(status, &serde_json::json!({ "error": message.into() }))
}

/// `admin` plus the sanitized `X-Weft-Actor`, e.g. `admin (alice)`.
pub(crate) fn actor(req: &hyper::Request<hyper::body::Incoming>) -> String {
    let who: String = req
        .headers()
        .get(ACTOR_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .chars()
        // The audit log is read by people and tools: no control characters, bounded length.
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | ' '))
        .take(64)
        .collect();
    let who = who.trim();
    if who.is_empty() {
        ADMIN_TOKEN_NAME.to_owned()
    } else {
        format!("{ADMIN_TOKEN_NAME} ({who})")
    }
}

pub(crate) async fn body_json<T: serde::de::DeserializeOwned>(
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<T, Refusal> {
    let body = Limited::new(req.into_body(), MAX_BODY).collect();
    // The connection's idle timeout does not run while a request is in flight.
    let Ok(read) = tokio::time::timeout(BODY_READ_TIMEOUT, body).await else {
        return Err(refused(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request body did not arrive within {BODY_READ_TIMEOUT:?}"),
        ));
    };
    let bytes = match read {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Err(refused(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("cannot read the request body (at most {MAX_BODY} bytes): {e}"),
            ))
        }
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| refused(StatusCode::BAD_REQUEST, format!("bad request body: {e}")))
}
