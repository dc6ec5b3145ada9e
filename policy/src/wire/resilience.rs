//! Resilience knobs as written: retry budget, outlier detection, limits, retries, backoff, rate
//! limits and fault injection.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A retry budget: retries may add `ratio` of requests over `window`, plus `min_per_second`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryBudget {
    /// Share of requests that may be retried (default 0.2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// Retries always allowed per second (default 10).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_per_second: Option<u32>,
    /// Accounting window (default 10s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
}

/// Outlier ejection.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive failures that eject an endpoint; 0 disables (default 5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    /// First ejection time; doubles with each ejection (default 10s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<String>,
    /// Longest ejection (default 300s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ejection_time: Option<String>,
    /// Most endpoints ejected at once, percent; at least one may be (default 50).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ejected_percent: Option<u8>,
    /// Which responses count as failures besides connect failures, resets and timeouts:
    /// `gateway-error` (502, 503, 504; the default) or `5xx`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failures: Option<String>,
}

/// Concurrency limits.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Requests in flight at once (default 1024).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<usize>,
    /// Requests waiting for an in-flight slot (default 1024).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pending: Option<usize>,
    /// How long a request may wait for a slot (default 1s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_timeout: Option<String>,
    /// Open TCP tunnels (default 1024).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
}

/// A retry policy.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Conditions (default: connect-failure, refused-stream, gateway-error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on: Option<Vec<String>>,
    /// Extra response statuses to retry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub statuses: Vec<u16>,
    /// gRPC status codes to retry (names or numbers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grpc_codes: Vec<NameOrNumber>,
    /// Attempts including the first (default 3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// Time allowed for one attempt's response headers (default: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<String>,
    /// Exponential backoff with full jitter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    /// Retry non-idempotent methods on more than connect failures (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub non_idempotent: Option<bool>,
}

/// A name or a number (gRPC codes).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum NameOrNumber {
    /// A number.
    Number(u32),
    /// A name.
    Name(String),
}

/// Kubernetes' own shape for a value that is an integer or a string
/// (`x-kubernetes-int-or-string`): a structural schema has no other way to say "either", and
/// the derived untagged-enum schema (`anyOf` with types) is not structural.
impl JsonSchema for NameOrNumber {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "NameOrNumber".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A gRPC status code: its name (`unavailable`) or its number (14).",
            "x-kubernetes-int-or-string": true
        })
    }
}

/// Backoff bounds.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// First retry's upper bound (default 25ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// Largest upper bound (default 250ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<String>,
}

/// A token bucket.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained rate.
    pub requests_per_second: f64,
    /// Bucket size (default: one second of tokens).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// One bucket per caller identity (inbound only; default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_caller: Option<bool>,
}

/// Fault injection.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Delay a share of requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    /// Answer a share of requests with a status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// Injected delay.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultDelay {
    /// Percent of requests, 0 to 100.
    pub percent: f64,
    /// How long.
    pub duration: String,
}

/// Injected abort.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultAbort {
    /// Percent of requests, 0 to 100.
    pub percent: f64,
    /// Status sent.
    pub status: u16,
}
