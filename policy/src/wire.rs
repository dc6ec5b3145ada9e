//! The sidecar config as it appears in YAML: plain serde types, no meaning attached.
//!
//! Every struct rejects unknown fields so that a typo is an error, not a silently ignored knob.
//! [`super::model`] turns these into validated domain types; nothing else reads them.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// This sidecar's own service.
    pub service: OwnService,
    /// Listener addresses.
    #[serde(default)]
    pub listen: Listen,
    /// Certificate, key and trust bundle paths.
    pub tls: Tls,
    /// Traffic worker threads (default 1).
    pub workers: Option<usize>,
    /// How long SIGTERM waits for in-flight requests (default 25s).
    pub drain_timeout: Option<String>,
    /// Connect timeout towards peers and the app (default 1s).
    pub connect_timeout: Option<String>,
    /// Access log file, `-` for stdout (default: off).
    pub access_log: Option<String>,
    /// Close client connections and TCP tunnels idle this long (default 1h).
    pub idle_timeout: Option<String>,
    /// Distributed tracing (default: propagate W3C trace context, export nothing).
    pub tracing: Option<Tracing>,
    /// Mesh services this sidecar may call.
    #[serde(default)]
    pub services: Vec<Service>,
    /// Routes to mesh services.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Who may call this sidecar's app (default: every mesh identity).
    pub authorization: Option<Authorization>,
}

/// Inbound authorization: allow rules and what happens to requests no rule allows.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authorization {
    /// `allow` (the default) or `deny`.
    pub default: Option<String>,
    /// Allow rules; a request any rule matches is allowed.
    #[serde(default)]
    pub rules: Vec<AuthzRule>,
}

/// One allow rule; every given condition must hold.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthzRule {
    /// Rule name, for errors and logs.
    pub name: String,
    /// Caller SPIFFE identities, or `"*"` for any mesh identity.
    pub from: Vec<String>,
    /// Path prefixes (default: any path).
    #[serde(default)]
    pub paths: Vec<String>,
    /// Methods (default: any method).
    #[serde(default)]
    pub methods: Vec<String>,
}

/// Distributed tracing.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tracing {
    /// OTLP/gRPC collector URL, `http://host:port` (default: none, no spans exported).
    pub collector: Option<String>,
    /// Probability of sampling a trace that starts here (default 0.01).
    pub sampling: Option<f64>,
    /// Spans queued for export before new ones are dropped (default 2048).
    pub max_queue: Option<usize>,
    /// Longest a finished span waits before it is sent (default 1s).
    pub export_interval: Option<String>,
}

/// This sidecar's own service.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnService {
    /// Service name.
    pub name: String,
    /// SPIFFE identity this sidecar's certificate must carry.
    pub identity: String,
    /// Address of the app on localhost.
    pub app: String,
    /// Protocol the app speaks (default http).
    pub protocol: Option<String>,
    /// Inbound rate limit (default: none).
    pub rate_limit: Option<RateLimit>,
}

/// Listener addresses; each has a default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// Outbound HTTP listener (default 127.0.0.1:15001).
    pub outbound: Option<String>,
    /// Inbound mTLS listener (default 0.0.0.0:15006).
    pub inbound: Option<String>,
    /// Admin listener (default 127.0.0.1:15000).
    pub admin: Option<String>,
}

/// Certificate material.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain of this workload.
    pub cert: String,
    /// PEM private key of this workload.
    pub key: String,
    /// PEM roots of the mesh (one or more).
    pub trust_bundle: String,
}

/// A mesh service this sidecar may call.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Service name; also the Host it answers to.
    pub name: String,
    /// Extra Host names that route to this service.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// SPIFFE identity the service's sidecars must present.
    pub identity: String,
    /// http (default), grpc or tcp.
    pub protocol: Option<String>,
    /// Optional dedicated outbound port on 127.0.0.1.
    pub port: Option<u16>,
    /// p2c_ewma (default) or round_robin.
    pub load_balancer: Option<String>,
    /// Inbound addresses of the service's sidecars.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// How many retries calls to this service may add.
    pub retry_budget: Option<RetryBudget>,
    /// Per-endpoint ejection on consecutive failures.
    pub outlier_detection: Option<OutlierDetection>,
    /// Concurrency limits towards this service.
    pub limits: Option<Limits>,
}

/// One endpoint of a service.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// host:port of the endpoint's inbound sidecar listener.
    pub address: String,
    /// Labels used by route backends to pick subsets.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A route to a mesh service.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Route name, used in errors and (later) metrics.
    pub name: String,
    /// Destination service name.
    pub service: String,
    /// What requests this route takes (default: all).
    #[serde(default, rename = "match")]
    pub matches: Match,
    /// Weighted endpoint subsets (default: all endpoints).
    #[serde(default)]
    pub backends: Vec<Backend>,
    /// Time allowed until the response headers arrive.
    pub timeout: Option<String>,
    /// Path prefix rewrite.
    pub rewrite: Option<Rewrite>,
    /// Request header edits.
    pub request_headers: Option<HeaderEdits>,
    /// When and how to retry (default: only failures that never reached the app).
    pub retry: Option<Retry>,
    /// Token bucket for this route (default: none).
    pub rate_limit: Option<RateLimit>,
    /// Injected delays and aborts (default: none).
    pub fault: Option<Fault>,
}

/// Request match; every given condition must hold.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// Path condition.
    pub path: Option<PathMatch>,
    /// HTTP method.
    pub method: Option<String>,
    /// Header conditions.
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
}

/// Exactly one of the three.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathMatch {
    /// Whole path equals.
    pub exact: Option<String>,
    /// Path starts with, on a segment boundary.
    pub prefix: Option<String>,
    /// Whole path matches the regex.
    pub regex: Option<String>,
}

/// A header condition: `exact`, `regex`, or neither (present).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    /// Header name.
    pub name: String,
    /// Value equals.
    pub exact: Option<String>,
    /// Value matches the regex.
    pub regex: Option<String>,
}

/// A weighted subset of the service's endpoints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// Labels an endpoint must carry (default: none, i.e. all endpoints).
    #[serde(default)]
    pub subset: BTreeMap<String, String>,
    /// Relative weight (default 1).
    pub weight: Option<u32>,
}

/// Replace a matched path prefix.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    /// The new prefix.
    pub prefix: String,
}

/// Header additions (set, replacing) and removals.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderEdits {
    /// Headers set on the request.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Header names removed from the request.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A retry budget: retries may add `ratio` of requests over `window`, plus `min_per_second`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudget {
    /// Share of requests that may be retried (default 0.2).
    pub ratio: Option<f64>,
    /// Retries always allowed per second (default 10).
    pub min_per_second: Option<u32>,
    /// Accounting window (default 10s).
    pub window: Option<String>,
}

/// Outlier ejection.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive failures that eject an endpoint; 0 disables (default 5).
    pub consecutive_failures: Option<u32>,
    /// First ejection time; doubles with each ejection (default 10s).
    pub base_ejection_time: Option<String>,
    /// Longest ejection (default 300s).
    pub max_ejection_time: Option<String>,
    /// Most endpoints ejected at once, percent; at least one may be (default 50).
    pub max_ejected_percent: Option<u8>,
    /// Which responses count as failures besides connect failures, resets and timeouts:
    /// `gateway-error` (502, 503, 504; the default) or `5xx`.
    pub failures: Option<String>,
}

/// Concurrency limits.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Requests in flight at once (default 1024).
    pub max_in_flight: Option<usize>,
    /// Requests waiting for an in-flight slot (default 1024).
    pub max_pending: Option<usize>,
    /// How long a request may wait for a slot (default 1s).
    pub queue_timeout: Option<String>,
    /// Open TCP tunnels (default 1024).
    pub max_connections: Option<usize>,
}

/// A retry policy.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Conditions (default: connect-failure, refused-stream, gateway-error).
    pub on: Option<Vec<String>>,
    /// Extra response statuses to retry.
    #[serde(default)]
    pub statuses: Vec<u16>,
    /// gRPC status codes to retry (names or numbers).
    #[serde(default)]
    pub grpc_codes: Vec<NameOrNumber>,
    /// Attempts including the first (default 3).
    pub attempts: Option<u32>,
    /// Time allowed for one attempt's response headers (default: none).
    pub per_try_timeout: Option<String>,
    /// Exponential backoff with full jitter.
    pub backoff: Option<Backoff>,
    /// Retry non-idempotent methods on more than connect failures (default false).
    pub non_idempotent: Option<bool>,
}

/// A name or a number (gRPC codes).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum NameOrNumber {
    /// A number.
    Number(u32),
    /// A name.
    Name(String),
}

/// Backoff bounds.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// First retry's upper bound (default 25ms).
    pub base: Option<String>,
    /// Largest upper bound (default 250ms).
    pub max: Option<String>,
}

/// A token bucket.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained rate.
    pub requests_per_second: f64,
    /// Bucket size (default: one second of tokens).
    pub burst: Option<u32>,
    /// One bucket per caller identity (inbound only; default false).
    pub per_caller: Option<bool>,
}

/// Fault injection.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Delay a share of requests.
    pub delay: Option<FaultDelay>,
    /// Answer a share of requests with a status.
    pub abort: Option<FaultAbort>,
}

/// Injected delay.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultDelay {
    /// Percent of requests, 0 to 100.
    pub percent: f64,
    /// How long.
    pub duration: String,
}

/// Injected abort.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultAbort {
    /// Percent of requests, 0 to 100.
    pub percent: f64,
    /// Status sent.
    pub status: u16,
}
