//! Errors the app can read: a status and an `x-weft-error` header that says why in words.
//!
//! Every rejection on the request path, in both directions, is a typed [`Reject`];
//! [`Reject::failure`] is the one place it becomes a status, a response flag and a reason, and
//! [`Reject::event`] the one place it becomes a metric event (linkerd2-proxy's `ServerRescue`
//! plays this part). Failures of the upstream that Pingora reports are mapped in
//! [`Failure::from_pingora`].

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use pingora_core::{Error, ErrorSource, ErrorType};
use pingora_http::ResponseHeader;
use pingora_proxy::{FailToProxy, Session};

use crate::telemetry::metrics::{Event, RejectLabel, RouteMetrics};

/// Why the sidecar answered a request itself, before (or instead of) an endpoint or the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    /// Outbound: no destination has this Host / :authority (`(none)` when there was none).
    UnknownHost(String),
    /// Outbound: no route of `service` matches the request.
    NoRouteMatch {
        /// The destination service.
        service: String,
        /// The request's method.
        method: String,
        /// The request's path.
        path: String,
    },
    /// A rate limit is spent; a token is free again after `wait`.
    RateLimited {
        /// Until a token is free (becomes `retry-after`).
        wait: Duration,
        /// Whose limit, in words (`route "r" of orders`, `orders`' inbound limit).
        what: RateScope,
    },
    /// Fault injection aborted the request with this status.
    FaultAbort(u16),
    /// A destination's concurrency limit refused the request.
    Overloaded {
        /// The destination service.
        service: String,
        /// Which limit, with its setting.
        limit: Overload,
    },
    /// The route's timeout passed before an attempt could be made.
    Timeout {
        /// The route's timeout.
        timeout: Option<Duration>,
        /// Attempts made before it passed.
        attempts: u32,
    },
    /// The route's backend has no endpoint at all.
    NoEndpoint {
        /// The destination service.
        service: String,
        /// The route.
        route: String,
    },
    /// Every endpoint of the route's backend is ejected.
    BreakerOpen {
        /// The destination service.
        service: String,
        /// The route.
        route: String,
    },
    /// Inbound: the connection proved no mesh identity.
    NoIdentity,
    /// Inbound: the caller's certificate expired since its connection was opened.
    CertExpired,
    /// Inbound: no authorization policy is known yet (control-plane mode before the first
    /// snapshot, with no bootstrap policy): fail closed.
    NoPolicy,
    /// Inbound: no authorization rule of `service` allows `caller` to make this request.
    Denied {
        /// This sidecar's service.
        service: String,
        /// The caller's SPIFFE identity.
        caller: String,
        /// The request's method.
        method: String,
        /// The request's path.
        path: String,
    },
    /// Either way: the request path has no canonical form (answered before routing and
    /// authorization see it). The path itself is not echoed back.
    BadPath(weft_policy::path::PathError),
    /// Either way: an `Upgrade` the mesh does not carry, or a malformed one (see
    /// [`crate::upgrade::check`]); on the inbound side also a plain request on the HTTP/1.1
    /// connection that exists only for upgrades.
    BadUpgrade(String),
}

/// Whose rate limit refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateScope {
    /// A route's limit.
    Route {
        /// The destination service.
        service: String,
        /// The route.
        route: String,
    },
    /// This sidecar's inbound limit.
    Inbound {
        /// This sidecar's service.
        service: String,
    },
}

/// Which concurrency limit refused a request, with its setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overload {
    /// `max_in_flight` requests were in flight and no queue is allowed.
    InFlight {
        /// The limit.
        max_in_flight: usize,
    },
    /// `max_pending` requests were already waiting.
    QueueFull {
        /// The in-flight limit.
        max_in_flight: usize,
        /// The queue's limit.
        max_pending: usize,
    },
    /// No slot was freed within `queue_timeout`.
    QueueTimeout {
        /// How long the request waited.
        queue_timeout: Duration,
    },
}

impl Reject {
    /// The response this rejection gets: status, flag and reason, decided here only.
    // Long on purpose: one arm per rejection, so the whole mapping reads as one table.
    pub fn failure(&self) -> Failure {
        match self {
            Reject::UnknownHost(host) => Failure::new(
                404,
                "no_route",
                format!("no route: unknown host {host:?}"),
            ),
            Reject::NoRouteMatch {
                service,
                method,
                path,
            } => Failure::new(
                404,
                "no_route",
                format!("no route: no route of {service} matches {method} {path}"),
            ),
            Reject::RateLimited { wait, what } => Failure::rate_limited(
                *wait,
                match what {
                    RateScope::Route { service, route } => {
                        format!("rate limited: route {route:?} of {service} is over its limit")
                    }
                    RateScope::Inbound { service } => {
                        format!("rate limited: {service} is over its inbound limit")
                    }
                },
            ),
            Reject::FaultAbort(status) => {
                Failure::new(*status, "fault_abort", "fault injected: abort")
            }
            Reject::Overloaded { service, limit } => {
                let (flag, reason) = match limit {
                    Overload::InFlight { max_in_flight } => (
                        "overloaded",
                        format!(
                            "overloaded: {service} already has {max_in_flight} requests in flight"
                        ),
                    ),
                    Overload::QueueFull {
                        max_in_flight,
                        max_pending,
                    } => (
                        "queue_full",
                        format!(
                            "overloaded: {service} has {max_in_flight} requests in flight and {max_pending} waiting"
                        ),
                    ),
                    Overload::QueueTimeout { queue_timeout } => (
                        "queue_timeout",
                        format!(
                            "overloaded: no slot to {service} freed within {}",
                            humantime::format_duration(*queue_timeout)
                        ),
                    ),
                };
                Failure::new(503, flag, reason)
            }
            Reject::Timeout { timeout, attempts } => Failure::new(
                504,
                "timeout",
                if *attempts == 0 {
                    "route timeout passed before an endpoint was tried".to_owned()
                } else {
                    format!(
                        "route timeout {} passed after {attempts} attempts",
                        timeout
                            .map(|t| humantime::format_duration(t).to_string())
                            .unwrap_or_default()
                    )
                },
            ),
            Reject::NoEndpoint { service, route } => Failure::new(
                503,
                "no_endpoint",
                format!("no endpoint: {service} route {route:?} has no endpoint"),
            ),
            Reject::BreakerOpen { service, route } => Failure::new(
                503,
                "breaker_open",
                format!(
                    "breaker open: every endpoint of {service} for route {route:?} is ejected after consecutive failures"
                ),
            ),
            Reject::BadPath(e) => Failure::new(400, "bad_path", format!("bad path: {e}")),
            Reject::BadUpgrade(why) => {
                Failure::new(400, "bad_upgrade", format!("bad upgrade: {why}"))
            }
            Reject::NoIdentity => Failure::new(403, "denied", "caller has no mesh identity"),
            Reject::CertExpired => {
                Failure::new(403, "cert_expired", "caller certificate expired")
            }
            // 503, not 403: nothing was decided about this caller, and the policy is on its
            // way; a client may retry.
            Reject::NoPolicy => Failure::new(
                503,
                "no_policy",
                "no authorization policy yet: waiting for the control plane's first snapshot",
            ),
            Reject::Denied {
                service,
                caller,
                method,
                path,
            } => Failure::new(
                403,
                "denied",
                format!(
                    "denied: no authorization rule of {service} allows {caller} to {method} {path}"
                ),
            ),
        }
    }

    /// The per-route event this rejection counts, if it counts one. Routing misses have
    /// their own series (`unmatched`) instead; a missing identity has no caller to count by.
    pub fn event(&self) -> Option<Event> {
        Some(match self {
            Reject::RateLimited { .. } => Event::Rejected(RejectLabel::RateLimited),
            Reject::FaultAbort(_) => Event::FaultAbort,
            Reject::Overloaded { limit, .. } => Event::Rejected(match limit {
                Overload::InFlight { .. } => RejectLabel::Overloaded,
                Overload::QueueFull { .. } => RejectLabel::QueueFull,
                Overload::QueueTimeout { .. } => RejectLabel::QueueTimeout,
            }),
            Reject::BreakerOpen { .. } => Event::Rejected(RejectLabel::BreakerOpen),
            Reject::CertExpired => Event::Rejected(RejectLabel::CertExpired),
            Reject::NoPolicy => Event::Rejected(RejectLabel::NoPolicy),
            Reject::Denied { .. } => Event::Rejected(RejectLabel::Denied),
            Reject::BadPath(_) => Event::Rejected(RejectLabel::BadPath),
            Reject::UnknownHost(_)
            | Reject::NoRouteMatch { .. }
            | Reject::Timeout { .. }
            | Reject::NoEndpoint { .. }
            | Reject::BadUpgrade(_)
            | Reject::NoIdentity => return None,
        })
    }

    /// Count this rejection on `metrics` (if it counts) and turn it into its response.
    pub fn counted(&self, metrics: Option<&RouteMetrics>) -> Failure {
        if let (Some(m), Some(e)) = (metrics, self.event()) {
            m.event(e);
        }
        self.failure()
    }

    /// Answer the request now with this rejection (the connection stays usable), counting it;
    /// returns the response flag for the access log and span.
    pub async fn respond(
        &self,
        session: &mut Session,
        metrics: Option<&RouteMetrics>,
    ) -> &'static str {
        let f = self.counted(metrics);
        f.respond(session, false).await;
        f.flag
    }
}

/// Header naming why the mesh, not the app, answered.
pub const ERROR_HEADER: &str = "x-weft-error";

/// Header a sidecar adds to a failure that proves the request never reached the app behind it
/// (no connection to it could be made), so the caller's sidecar may retry it elsewhere
/// whatever its method: the app had nothing to act on. This is what makes an app that stopped
/// listening (a pod being deleted, before its endpoint's removal reached every caller) cost no
/// failed request. The inbound side strips it from app responses, so only a sidecar sets it.
pub const UNPROCESSED_HEADER: &str = "x-weft-unprocessed";

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
        if session.response_written().is_some() {
            // The head already went out (an upgraded session's 101, or a response cut off
            // midway): a second head or this text would land inside the body or the upgraded
            // bytes. Ending the connection is the only answer left.
            session.set_keepalive(None);
            return;
        }
        let body = Bytes::from(format!("{}\n", self.reason));
        let Ok(mut header) = ResponseHeader::build(self.status, Some(3)) else {
            return;
        };
        let reason = self
            .reason
            .replace(|c: char| !(c.is_ascii_graphic() || c == ' '), "?");
        let _ = header.insert_header(ERROR_HEADER, reason);
        if self.flag == "connect_failure" {
            let _ = header.insert_header(UNPROCESSED_HEADER, "1");
        }
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

#[cfg(test)]
mod tests;
