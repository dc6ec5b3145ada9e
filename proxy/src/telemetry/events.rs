//! The per-route events the sidecar counts besides requests and responses: retries that
//! helped or not, retries skipped and why, rejections and injected faults. Each has a slot of
//! its own, so a route resolves each series once, on first use.

/// Why the sidecar refused a request before any endpoint saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectLabel {
    /// Over the destination's in-flight limit with no queue.
    Overloaded,
    /// The wait queue was full.
    QueueFull,
    /// Waited `queue_timeout` for a slot.
    QueueTimeout,
    /// Over a rate limit.
    RateLimited,
    /// Every endpoint is ejected.
    BreakerOpen,
    /// No authorization rule allows the caller (inbound).
    Denied,
    /// The caller's certificate expired since its connection was opened (inbound).
    CertExpired,
    /// No authorization policy yet: a control-plane sidecar before its first snapshot, with no
    /// bootstrap policy (inbound; fail closed).
    NoPolicy,
    /// The request path has no canonical form (`weft_policy::path`).
    BadPath,
}

impl RejectLabel {
    /// Label value (also the access log's response flag).
    pub fn as_str(self) -> &'static str {
        match self {
            RejectLabel::Overloaded => "overloaded",
            RejectLabel::QueueFull => "queue_full",
            RejectLabel::QueueTimeout => "queue_timeout",
            RejectLabel::RateLimited => "rate_limited",
            RejectLabel::BreakerOpen => "breaker_open",
            RejectLabel::Denied => "denied",
            RejectLabel::CertExpired => "cert_expired",
            RejectLabel::NoPolicy => "no_policy",
            RejectLabel::BadPath => "bad_path",
        }
    }
}

/// Per-route events, each counted in its own lazily resolved series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A retried request ended well (status below 500).
    RetriedSucceeded,
    /// A retried request still failed.
    RetriedFailed,
    /// A retryable failure was not retried for this reason.
    Skipped(weft_resilience::retry::StopReason),
    /// Refused before reaching an endpoint.
    Rejected(RejectLabel),
    /// An injected delay.
    FaultDelay,
    /// An injected abort.
    FaultAbort,
}

/// Series slots per route: one per [`Event`] (see [`Event::slot`]).
pub const EVENT_SLOTS: usize = 18;

impl Event {
    /// The event's own slot among [`EVENT_SLOTS`].
    pub fn slot(self) -> usize {
        use weft_resilience::retry::StopReason as S;
        match self {
            Event::RetriedSucceeded => 0,
            Event::RetriedFailed => 1,
            Event::Skipped(r) => match r {
                S::BudgetExhausted => 2,
                S::AttemptsExhausted => 3,
                S::NonIdempotent => 4,
                S::BodyTooLarge => 5,
                S::Succeeded | S::NotRetryable => 6,
            },
            Event::Rejected(r) => 7 + r as usize,
            // After the nine rejection slots (7..=15).
            Event::FaultDelay => 16,
            Event::FaultAbort => 17,
        }
    }
}
