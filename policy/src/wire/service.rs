//! Mesh services as written: endpoints, routes, matches, backends, rewrites and header edits.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::resilience::{Fault, Limits, OutlierDetection, RateLimit, Retry, RetryBudget};

/// A mesh service this sidecar may call.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Service name; also the Host it answers to.
    pub name: String,
    /// Extra Host names that route to this service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// SPIFFE identity the service's sidecars must present.
    pub identity: String,
    /// http (default), grpc or tcp.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Optional dedicated outbound port on 127.0.0.1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// p2c_ewma (default) or round_robin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<String>,
    /// Inbound addresses of the service's sidecars.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
    /// How many retries calls to this service may add.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
    /// Per-endpoint ejection on consecutive failures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Concurrency limits towards this service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// Requests to this service whose path holds `%2F` or `%5C`: `reject` (the default, 400)
    /// or `keep` (forwarded encoded; path rules compare the encoded form).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub escaped_slashes: Option<EscapedSlashes>,
    /// Ports of this service never detected: a captured connection to one takes the TCP
    /// path at once (besides the caller's own `service.opaque_ports`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opaque_ports: Option<Vec<u16>>,
}

/// What a sidecar does with an escaped slash or backslash (`%2F`, `%5C`) in a request path.
/// A serde enum, so an unknown value is an error at its line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    /// Answer 400 (the default): servers disagree on whether `%2F` separates segments.
    Reject,
    /// Forward the escape unchanged (hex upper-cased), never decoded, never a separator.
    Keep,
}

impl EscapedSlashes {
    /// The value as written in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            EscapedSlashes::Reject => "reject",
            EscapedSlashes::Keep => "keep",
        }
    }
}

/// One endpoint of a service.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// host:port of the endpoint's inbound sidecar listener.
    pub address: String,
    /// Labels used by route backends to pick subsets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A route to a mesh service.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Route name, used in errors and (later) metrics. Required in policy files; a
    /// `MeshRoute` resource may leave it out and is then named after its `metadata.name`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Destination service name.
    pub service: String,
    /// Calling services whose sidecars get this route (default: every caller). Only the
    /// control plane's policy directory may name callers; a sidecar's own routes all apply to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<String>>,
    /// What requests this route takes (default: all).
    #[serde(default, rename = "match", skip_serializing_if = "Match::is_empty")]
    pub matches: Match,
    /// Weighted endpoint subsets (default: all endpoints).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<Backend>,
    /// Time allowed until the response headers arrive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Path prefix rewrite.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    /// Request header edits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderEdits>,
    /// When and how to retry (default: only failures that never reached the app).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Token bucket for this route (default: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Injected delays and aborts (default: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
}

/// Request match; every given condition must hold.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// Path condition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// HTTP method.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Header conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
}

impl Match {
    /// No condition: the match takes every request.
    pub fn is_empty(&self) -> bool {
        self.path.is_none() && self.method.is_none() && self.headers.is_empty()
    }
}

/// Exactly one of the three.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PathMatch {
    /// Whole path equals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// Path starts with, on a segment boundary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Whole path matches the regex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// A header condition: `exact`, `regex`, or neither (present).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    /// Header name.
    pub name: String,
    /// Value equals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// Value matches the regex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// A weighted subset of the service's endpoints.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// Labels an endpoint must carry (default: none, i.e. all endpoints).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subset: BTreeMap<String, String>,
    /// Relative weight (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

/// Replace a matched path prefix.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    /// The new prefix.
    pub prefix: String,
}

/// Header additions (set, replacing) and removals.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderEdits {
    /// Headers set on the request.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Header names removed from the request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}
