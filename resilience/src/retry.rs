//! Retry policy: whether, and after how long, to retry an attempt. Decided here and only
//! here, so the sidecar and the tower layer cannot drift apart.

use std::time::Duration;

use crate::backoff::Backoff;
use crate::budget::RetryBudget;
use crate::clock::Nanos;

/// Conditions that make an attempt retryable (Envoy's `retry_on` vocabulary).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// The connection to the upstream could not be set up.
    pub connect_failure: bool,
    /// The upstream refused the stream before processing it (HTTP/2 REFUSED_STREAM).
    pub refused_stream: bool,
    /// The connection or stream was reset or closed before a response.
    pub reset: bool,
    /// Any 5xx status.
    pub server_error: bool,
    /// 502, 503 or 504.
    pub gateway_error: bool,
    /// The per-try timeout fired.
    pub timeout: bool,
    /// These statuses.
    pub statuses: Vec<u16>,
    /// These non-OK gRPC status codes (see [`grpc_code_from_name`]).
    pub grpc_codes: Vec<u32>,
}

/// A route's retry policy.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Which outcomes are retried.
    pub on: RetryOn,
    /// Attempts in all, the first included (1 = never retry).
    pub max_attempts: u32,
    /// Limit on each attempt, after which it counts as [`Outcome::PerTryTimeout`].
    pub per_try_timeout: Option<Duration>,
    /// Wait before each retry.
    pub backoff: Backoff,
    /// Retry non-idempotent requests (e.g. POST) even when the upstream may have acted on
    /// them. Failures that never reached the upstream are retried regardless.
    pub non_idempotent: bool,
}

impl RetryPolicy {
    /// The policy of a route with no retry block: one retry, only of failures that never
    /// reached the application (connect failure, refused stream), which are always safe.
    pub fn default_policy() -> Self {
        Self {
            on: RetryOn {
                connect_failure: true,
                refused_stream: true,
                ..RetryOn::default()
            },
            max_attempts: 2,
            per_try_timeout: None,
            backoff: Backoff::default(),
            non_idempotent: false,
        }
    }
}

impl Default for RetryPolicy {
    /// [`RetryPolicy::default_policy`].
    fn default() -> Self {
        Self::default_policy()
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response the caller treats as success.
    Success,
    /// No connection to the upstream.
    ConnectFailure,
    /// The upstream refused the stream unprocessed.
    RefusedStream,
    /// The connection or stream broke before a response.
    Reset,
    /// The per-try timeout fired.
    PerTryTimeout,
    /// A response with this (error) status.
    Status(u16),
    /// A response whose headers carry this non-OK `grpc-status`.
    Grpc(u32),
}

impl Outcome {
    /// Classify a response: a status of 400 or more is [`Outcome::Status`], else a non-zero
    /// `grpc-status` (from the response headers; trailers come too late to retry) is
    /// [`Outcome::Grpc`], else [`Outcome::Success`].
    pub fn from_response(status: u16, grpc_status: Option<u32>) -> Self {
        match (status, grpc_status) {
            (400.., _) => Self::Status(status),
            (_, Some(code)) if code != 0 => Self::Grpc(code),
            _ => Self::Success,
        }
    }

    /// True for outcomes that prove the request never reached the application, which makes
    /// a retry safe whatever the method.
    pub fn never_reached_app(&self) -> bool {
        matches!(self, Self::ConnectFailure | Self::RefusedStream)
    }
}

/// Where the request stands after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// Attempts made so far, the one just finished included.
    pub attempts_made: u32,
    /// The method is idempotent (GET, HEAD, OPTIONS, TRACE, PUT, DELETE).
    pub idempotent: bool,
    /// The request body is still available to send again.
    pub body_replayable: bool,
}

/// Whether to retry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Send again after waiting `backoff`.
    Retry {
        /// Wait before the next attempt.
        backoff: Duration,
    },
    /// Return this attempt's result.
    Stop(StopReason),
}

/// Why no retry is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The attempt succeeded.
    Succeeded,
    /// The outcome matches no retry condition.
    NotRetryable,
    /// The method is not idempotent and the upstream may have acted on the request.
    NonIdempotent,
    /// `max_attempts` reached.
    AttemptsExhausted,
    /// The body was too large to buffer, so it cannot be sent again.
    BodyTooLarge,
    /// The retry budget is spent.
    BudgetExhausted,
}

impl StopReason {
    /// snake_case name, for metric labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::NotRetryable => "not_retryable",
            Self::NonIdempotent => "non_idempotent",
            Self::AttemptsExhausted => "attempts_exhausted",
            Self::BodyTooLarge => "body_too_large",
            Self::BudgetExhausted => "budget_exhausted",
        }
    }
}

impl RetryPolicy {
    /// Whether `outcome` matches one of the policy's retry conditions.
    pub fn is_retryable(&self, outcome: &Outcome) -> bool {
        let on = &self.on;
        match *outcome {
            Outcome::Success => false,
            Outcome::ConnectFailure => on.connect_failure,
            Outcome::RefusedStream => on.refused_stream,
            Outcome::Reset => on.reset,
            Outcome::PerTryTimeout => on.timeout,
            Outcome::Status(s) => {
                (on.server_error && (500..600).contains(&s))
                    || (on.gateway_error && matches!(s, 502..=504))
                    || on.statuses.contains(&s)
            }
            Outcome::Grpc(code) => on.grpc_codes.contains(&code),
        }
    }

    /// Decide whether to retry after `attempt` ended with `outcome`.
    ///
    /// The checks run from cheapest and most fundamental to the budget, which is consulted
    /// last because withdrawing spends it: only a retry that will be sent is charged.
    pub fn decide(
        &self,
        outcome: &Outcome,
        attempt: Attempt,
        budget: &RetryBudget,
        now: Nanos,
        rand: f64,
    ) -> Decision {
        let stop = if *outcome == Outcome::Success {
            StopReason::Succeeded
        } else if !self.is_retryable(outcome) {
            StopReason::NotRetryable
        } else if !attempt.idempotent
            && !outcome.never_reached_app()
            && !matches!(outcome, Outcome::Grpc(_))
            && !self.non_idempotent
        {
            // Every gRPC call is a POST; the operator who lists gRPC codes for a route has
            // judged those codes safe to retry (as Envoy and Linkerd treat them), so the
            // method says nothing here.
            StopReason::NonIdempotent
        } else if attempt.attempts_made >= self.max_attempts {
            StopReason::AttemptsExhausted
        } else if !attempt.body_replayable {
            StopReason::BodyTooLarge
        } else if !budget.try_withdraw(now) {
            StopReason::BudgetExhausted
        } else {
            return Decision::Retry {
                backoff: self
                    .backoff
                    .delay(attempt.attempts_made.saturating_sub(1), rand),
            };
        };
        Decision::Stop(stop)
    }
}

/// Canonical gRPC status names, indexed by code.
const GRPC_CODES: [&str; 17] = [
    "ok",
    "cancelled",
    "unknown",
    "invalid_argument",
    "deadline_exceeded",
    "not_found",
    "already_exists",
    "permission_denied",
    "resource_exhausted",
    "failed_precondition",
    "aborted",
    "out_of_range",
    "unimplemented",
    "internal",
    "unavailable",
    "data_loss",
    "unauthenticated",
];

/// The code of a non-OK gRPC status given by name (`unavailable`, `RESOURCE_EXHAUSTED`,
/// `deadline-exceeded`, `DeadlineExceeded`, also `canceled`) or number (1..=16).
///
/// OK (0) is not an error and so not accepted.
pub fn grpc_code_from_name(s: &str) -> Option<u32> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u32>() {
        return (1..=16).contains(&n).then_some(n);
    }
    // Compare ignoring case, '-' and '_' so every spelling in use matches.
    let wanted_is = |name: &str| squashed(s).eq(squashed(name));
    if wanted_is("canceled") {
        return Some(1);
    }
    (1..GRPC_CODES.len())
        .find(|&i| wanted_is(GRPC_CODES[i]))
        .and_then(|i| u32::try_from(i).ok())
}

fn squashed(t: &str) -> impl Iterator<Item = char> + '_ {
    t.chars()
        .filter(|c| !matches!(c, '_' | '-'))
        .map(|c| c.to_ascii_lowercase())
}

/// The value of a `grpc-status` header, if it is a number.
pub fn parse_grpc_status(value: &[u8]) -> Option<u32> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// The `grpc-status` of a header block (response headers or trailers), if it carries a
/// numeric one.
pub fn grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    // A `HeaderName`, not a string: a string key is parsed and hashed anew on every lookup,
    // and this runs on every response.
    const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
    parse_grpc_status(headers.get(GRPC_STATUS)?.as_bytes())
}

#[cfg(test)]
mod tests;
