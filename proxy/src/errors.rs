//! Errors the app can read: a status and an `x-weft-error` header that says why in words.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use pingora_core::{Error, ErrorSource, ErrorType};
use pingora_http::ResponseHeader;
use pingora_proxy::{FailToProxy, Session};

/// Header naming why the mesh, not the app, answered.
pub const ERROR_HEADER: &str = "x-weft-error";

/// A response the sidecar itself gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// HTTP status.
    pub status: u16,
    /// The access log's response flag: `no_route`, `no_endpoint`, `timeout`, ...
    pub flag: &'static str,
    /// Why, in words (also the body).
    pub reason: Cow<'static, str>,
    /// Seconds for a `retry-after` header (rate limits).
    pub retry_after: Option<u64>,
}

impl Failure {
    /// A failure with a status, an access-log flag and a reason.
    pub fn new(status: u16, flag: &'static str, reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status,
            flag,
            reason: reason.into(),
            retry_after: None,
        }
    }

    /// 429 from a rate limit; `wait` until a token is free becomes `retry-after` (whole
    /// seconds, rounded up, at least 1, as RFC 9110 allows only integers).
    pub fn rate_limited(wait: Duration, what: impl Into<Cow<'static, str>>) -> Self {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Self {
            retry_after: Some(secs.max(1)),
            ..Self::new(429, "rate_limited", what)
        }
    }

    /// The error handed to Pingora so it stops the request; the response comes from
    /// [`Failure::respond`] in `fail_to_proxy`.
    pub fn to_error(&self) -> Box<Error> {
        Error::explain(
            ErrorType::HTTPStatus(self.status),
            self.reason.clone().into_owned(),
        )
    }

    /// Map a Pingora error (that we did not raise ourselves) to what the app sees. `None` means
    /// the downstream is gone and nothing can be written.
    pub fn from_pingora(e: &Error, timeout: Option<Duration>, endpoint: &str) -> Option<Self> {
        use ErrorType::*;
        if e.esource() == &ErrorSource::Downstream {
            return match e.etype() {
                ReadError | WriteError | ConnectionClosed | ReadTimedout | WriteTimedout => None,
                _ => Some(Self::new(
                    400,
                    "bad_request",
                    format!("bad request: {}", e.etype().as_str()),
                )),
            };
        }
        Some(match e.etype() {
            HTTPStatus(code) => Self::new(
                *code,
                "upstream_status",
                e.context
                    .as_ref()
                    .map(|c| c.as_str().to_owned())
                    .unwrap_or_default(),
            ),
            ConnectTimedout => Self::new(
                503,
                "connect_failure",
                format!("connect to {endpoint} timed out"),
            ),
            ConnectRefused => Self::new(
                503,
                "connect_failure",
                format!("connection refused by {endpoint}"),
            ),
            ConnectNoRoute | ConnectError | BindError | SocketError => Self::new(
                503,
                "connect_failure",
                format!("cannot connect to {endpoint}: {}", e.etype().as_str()),
            ),
            TLSHandshakeFailure | TLSHandshakeTimedout | InvalidCert | HandshakeError => Self::new(
                502,
                "tls_failure",
                format!("TLS handshake with {endpoint} failed (identity not proven)"),
            ),
            ReadTimedout | WriteTimedout => match timeout {
                Some(t) => Self::new(
                    504,
                    "timeout",
                    format!(
                        "no response from {endpoint} within the route timeout {}",
                        humantime::format_duration(t)
                    ),
                ),
                None => Self::new(504, "timeout", format!("{endpoint} timed out")),
            },
            other => Self::new(
                502,
                "upstream_reset",
                format!("upstream {endpoint} failed: {}", other.as_str()),
            ),
        })
    }

    /// Write this failure as the response. With `close`, the HTTP/1 connection ends after it
    /// and the response says so (Pingora writes `Connection` from its keepalive state, so the
    /// state is what must change). Write errors are ignored: the client may be gone.
    pub async fn respond(&self, session: &mut Session, close: bool) {
        if close {
            session.set_keepalive(None);
        }
        let body = Bytes::from(format!("{}\n", self.reason));
        let Ok(mut header) = ResponseHeader::build(self.status, Some(3)) else {
            return;
        };
        let reason = self
            .reason
            .replace(|c: char| !(c.is_ascii_graphic() || c == ' '), "?");
        let _ = header.insert_header(ERROR_HEADER, reason);
        let _ = header.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8");
        let _ = header.insert_header(http::header::CONTENT_LENGTH, body.len());
        if let Some(secs) = self.retry_after {
            let _ = header.insert_header(http::header::RETRY_AFTER, secs);
        }
        if session
            .write_response_header(Box::new(header), false)
            .await
            .is_ok()
        {
            let _ = session.write_response_body(Some(body), true).await;
        }
    }
}

/// Bound how long an HTTP/1 client connection may sit idle between requests. Only a
/// connection that stays open anyway is touched: an HTTP/1.0 request without keep-alive, or
/// `Connection: close`, still closes after its response.
pub fn idle_keepalive(session: &mut Session, idle: Duration) {
    if session.get_keepalive().is_some() {
        session.set_keepalive(Some(idle.as_secs().max(1)));
    }
}

/// Answer a failed request (if the client is still there) and tell Pingora what was sent.
/// The connection is not reused: after a failed proxy attempt its state is unknown.
pub async fn answer(session: &mut Session, failure: Option<Failure>) -> FailToProxy {
    let error_code = match failure {
        Some(f) => {
            log::debug!(
                "{} {} -> {}: {}",
                session.req_header().method,
                session.req_header().uri,
                f.status,
                f.reason
            );
            // Pingora closes the connection after a failed proxy attempt: say so, or the
            // client may reuse a connection that is closing.
            f.respond(session, true).await;
            f.status
        }
        None => 0,
    };
    FailToProxy {
        error_code,
        can_reuse_downstream: false,
    }
}
