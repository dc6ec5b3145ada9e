//! The one outcome classifier: what an attempt to an endpoint came to (a response, a failed
//! connect, a broken stream), judged once for the three parts that learn from it: the
//! balancer's latency estimate, the outlier detector, and the retry policy.
//!
//! The three keep their own rules, written here side by side: the balancer counts any 5xx as
//! slow (a failing endpoint must not look fast), the outlier detector counts only gateway
//! failures (502, 503, 504) unless the service says every 5xx, and the retry policy judges
//! the [`Outcome`] (status, `grpc-status`, how the stream ended).

use pingora_core::{Error, ErrorSource, ErrorType, RetryType};
use weft_resilience::retry::Outcome;

/// What one attempt came to.
#[derive(Debug)]
pub enum Attempt<'a> {
    /// Response headers arrived.
    Response {
        /// HTTP status.
        status: u16,
        /// `grpc-status` in the response headers.
        grpc: Option<u32>,
    },
    /// No connection (refused, timed out, TLS failed).
    ConnectFailed,
    /// The peer sidecar answered that its app never saw the request (a 503 with
    /// [`crate::errors::UNPROCESSED_HEADER`]: it could not connect to the app, e.g. one that
    /// stopped on SIGTERM): retried like a refused stream, whatever the method.
    Unprocessed,
    /// The exchange broke after the connection was made.
    StreamFailed {
        /// Pingora's error.
        error: &'a Error,
        /// The pooled connection had served requests before.
        client_reused: bool,
        /// The request's method is idempotent.
        idempotent: bool,
        /// The route's deadline has not passed.
        within_deadline: bool,
        /// The route has a per-try timeout (so a read timeout is one try's, not the route's).
        per_try_timeout: bool,
    },
}

/// The judgement of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// For the balancer's latency estimate: the endpoint answered well (else the attempt is
    /// charged the failure penalty).
    pub fast: bool,
    /// For the outlier detector: `Some(success)`, or `None` when the endpoint is not to blame
    /// (the client went away).
    pub healthy: Option<bool>,
    /// For the retry policy: the outcome to judge, or `None` when no retry can help (the
    /// client went away, or the route's own timeout fired).
    pub retry: Option<Outcome>,
}

/// Judge `attempt`; `counts_5xx` is the service's `outlier` rule that any 5xx is a failure.
pub fn classify(attempt: &Attempt<'_>, counts_5xx: bool) -> Verdict {
    match *attempt {
        Attempt::Response { status, grpc } => Verdict {
            fast: status < 500,
            healthy: Some(!(matches!(status, 502..=504) || (counts_5xx && status >= 500))),
            retry: Some(Outcome::from_response(status, grpc)),
        },
        Attempt::ConnectFailed => Verdict {
            fast: false,
            healthy: Some(false),
            retry: Some(Outcome::ConnectFailure),
        },
        Attempt::Unprocessed => Verdict {
            fast: false,
            healthy: Some(false),
            retry: Some(Outcome::RefusedStream),
        },
        Attempt::StreamFailed {
            error,
            client_reused,
            idempotent,
            within_deadline,
            per_try_timeout,
        } => {
            if error.esource() == &ErrorSource::Downstream {
                // The client went away or sent garbage: nothing to retry, no endpoint to blame.
                return Verdict {
                    fast: false,
                    healthy: None,
                    retry: None,
                };
            }
            let retry = match error.etype() {
                ErrorType::ReadTimedout | ErrorType::WriteTimedout
                    if !within_deadline || !per_try_timeout =>
                {
                    None
                }
                ErrorType::ReadTimedout | ErrorType::WriteTimedout => Some(Outcome::PerTryTimeout),
                // Pingora marks GOAWAY(NO_ERROR) and REFUSED_STREAM as never processed.
                _ if matches!(error.retry, RetryType::Decided(true)) => {
                    Some(Outcome::RefusedStream)
                }
                // A pooled connection the peer had silently dropped: Pingora's own rule retries
                // idempotent requests on it; they were most likely never processed.
                _ if matches!(error.retry, RetryType::ReusedOnly)
                    && client_reused
                    && idempotent =>
                {
                    Some(Outcome::RefusedStream)
                }
                _ => Some(Outcome::Reset),
            };
            Verdict {
                fast: false,
                healthy: Some(false),
                retry,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, grpc: Option<u32>, counts_5xx: bool) -> Verdict {
        classify(&Attempt::Response { status, grpc }, counts_5xx)
    }

    fn stream(
        error: &Error,
        reused: bool,
        idempotent: bool,
        within: bool,
        per_try: bool,
    ) -> Verdict {
        classify(
            &Attempt::StreamFailed {
                error,
                client_reused: reused,
                idempotent,
                within_deadline: within,
                per_try_timeout: per_try,
            },
            false,
        )
    }

    fn upstream(etype: ErrorType, retry: Option<bool>) -> Box<Error> {
        let mut e = Error::new_up(etype);
        if let Some(r) = retry {
            e.set_retry(r);
        }
        e
    }

    #[test]
    fn responses_are_judged_by_three_rules() {
        assert_eq!(
            response(200, None, false),
            Verdict {
                fast: true,
                healthy: Some(true),
                retry: Some(Outcome::Success)
            }
        );
        // A 500 is slow for the balancer, healthy for the detector by default, and a status
        // the retry policy judges.
        assert_eq!(
            response(500, None, false),
            Verdict {
                fast: false,
                healthy: Some(true),
                retry: Some(Outcome::Status(500))
            }
        );
        assert_eq!(response(500, None, true).healthy, Some(false));
        for gateway in [502, 503, 504] {
            assert_eq!(response(gateway, None, false).healthy, Some(false));
        }
        assert_eq!(response(404, None, true).healthy, Some(true));
        assert_eq!(
            response(200, Some(14), false).retry,
            Some(Outcome::Grpc(14))
        );
        assert!(
            response(200, Some(14), false).fast,
            "a gRPC error came back fast"
        );
    }

    #[test]
    fn a_failed_connect_is_slow_unhealthy_and_retryable() {
        assert_eq!(
            classify(&Attempt::ConnectFailed, false),
            Verdict {
                fast: false,
                healthy: Some(false),
                retry: Some(Outcome::ConnectFailure)
            }
        );
    }

    #[test]
    fn an_answer_the_app_never_saw_is_retried_as_refused() {
        let v = classify(&Attempt::Unprocessed, false);
        assert_eq!(v.retry, Some(Outcome::RefusedStream));
        assert!(v.retry.is_some_and(|o| o.never_reached_app()));
        assert_eq!(v.healthy, Some(false));
    }

    #[test]
    fn a_client_gone_blames_no_endpoint_and_retries_nothing() {
        let e = Error::new_down(ErrorType::ConnectionClosed);
        assert_eq!(
            stream(&e, true, true, true, true),
            Verdict {
                fast: false,
                healthy: None,
                retry: None
            }
        );
    }

    #[test]
    fn read_timeouts_retry_only_per_try_and_within_the_deadline() {
        let e = upstream(ErrorType::ReadTimedout, None);
        assert_eq!(
            stream(&e, false, true, true, true).retry,
            Some(Outcome::PerTryTimeout)
        );
        assert_eq!(
            stream(&e, false, true, true, false).retry,
            None,
            "the route's timeout"
        );
        assert_eq!(
            stream(&e, false, true, false, true).retry,
            None,
            "deadline passed"
        );
        assert_eq!(stream(&e, false, true, false, true).healthy, Some(false));
    }

    #[test]
    fn refused_streams_and_stale_pooled_connections() {
        let refused = upstream(ErrorType::H2Error, Some(true));
        assert_eq!(
            stream(&refused, false, false, true, false).retry,
            Some(Outcome::RefusedStream)
        );
        let mut stale = upstream(ErrorType::ConnectionClosed, None);
        stale.retry = RetryType::ReusedOnly;
        assert_eq!(
            stream(&stale, true, true, true, false).retry,
            Some(Outcome::RefusedStream)
        );
        assert_eq!(
            stream(&stale, true, false, true, false).retry,
            Some(Outcome::Reset),
            "POST"
        );
        assert_eq!(
            stream(&stale, false, true, true, false).retry,
            Some(Outcome::Reset),
            "fresh"
        );
        let reset = upstream(ErrorType::ConnectionClosed, Some(false));
        assert_eq!(
            stream(&reset, true, true, true, false).retry,
            Some(Outcome::Reset)
        );
    }
}
