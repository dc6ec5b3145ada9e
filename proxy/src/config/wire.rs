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
    /// Mesh services this sidecar may call.
    #[serde(default)]
    pub services: Vec<Service>,
    /// Routes to mesh services.
    #[serde(default)]
    pub routes: Vec<Route>,
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
