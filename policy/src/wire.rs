//! The policy as it appears in YAML: plain serde types, no meaning attached.
//!
//! Every struct rejects unknown fields so that a typo is an error, not a silently ignored knob.
//! [`super::model`] turns these into validated domain types.
//!
//! Three documents share these types:
//! - [`ConfigFile`], a sidecar's static file: its local part ([`LocalFile`]: own service,
//!   listeners, certificates, workers, timeouts, access log, tracing) and its policy part
//!   ([`PolicySnapshot`]: `services`, `routes`, `authorization`) in one file.
//! - [`PolicySnapshot`], what the control plane sends one sidecar: the policy part alone, with
//!   the same field names and shapes.
//! - [`MeshFile`], one file of the control plane's policy directory: every service, routes that
//!   may name their callers (`from`), and authorization per destination service.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A sidecar's whole static file: [`LocalFile`] and [`PolicySnapshot`] fields side by side.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// How long SIGTERM waits for in-flight requests (default 25s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<String>,
    /// Connect timeout towards peers and the app (default 1s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<String>,
    /// Access log file, `-` for stdout (default: off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_log: Option<String>,
    /// Close client connections and TCP tunnels idle this long (default 1h).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    /// Connections each traffic listener (outbound, inbound, each dedicated port) holds at once;
    /// more are closed at accept (default 4096).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_listener: Option<usize>,
    /// Distributed tracing (default: propagate W3C trace context, export nothing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
    /// Take the policy part from this control plane instead of this file (then `services`,
    /// `routes` and `authorization` must be absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<ControlPlane>,
    /// Mesh services this sidecar may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
    /// Routes to mesh services.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// Who may call this sidecar's app (default: every mesh identity).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Authorization>,
}

impl ConfigFile {
    /// The sidecar-local part and the policy part.
    pub fn split(self) -> (LocalFile, PolicySnapshot) {
        (
            LocalFile {
                service: self.service,
                listen: self.listen,
                tls: self.tls,
                workers: self.workers,
                drain_timeout: self.drain_timeout,
                connect_timeout: self.connect_timeout,
                access_log: self.access_log,
                idle_timeout: self.idle_timeout,
                max_connections_per_listener: self.max_connections_per_listener,
                tracing: self.tracing,
                control_plane: self.control_plane,
            },
            PolicySnapshot {
                version: String::new(),
                services: self.services,
                routes: self.routes,
                authorization: self.authorization,
            },
        )
    }

    /// A static file from its two parts (the snapshot's `version` is dropped).
    pub fn join(local: LocalFile, policy: PolicySnapshot) -> Self {
        ConfigFile {
            service: local.service,
            listen: local.listen,
            tls: local.tls,
            workers: local.workers,
            drain_timeout: local.drain_timeout,
            connect_timeout: local.connect_timeout,
            access_log: local.access_log,
            idle_timeout: local.idle_timeout,
            max_connections_per_listener: local.max_connections_per_listener,
            tracing: local.tracing,
            control_plane: local.control_plane,
            services: policy.services,
            routes: policy.routes,
            authorization: policy.authorization,
        }
    }
}

/// What belongs to one sidecar and never comes from the control plane: its own service, its
/// listeners, certificate paths, workers, timeouts, access log and tracing.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LocalFile {
    /// This sidecar's own service.
    pub service: OwnService,
    /// Listener addresses.
    #[serde(default)]
    pub listen: Listen,
    /// Certificate, key and trust bundle paths.
    pub tls: Tls,
    /// Traffic worker threads (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// How long SIGTERM waits for in-flight requests (default 25s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<String>,
    /// Connect timeout towards peers and the app (default 1s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<String>,
    /// Access log file, `-` for stdout (default: off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_log: Option<String>,
    /// Close client connections and TCP tunnels idle this long (default 1h).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    /// Connections each traffic listener (outbound, inbound, each dedicated port) holds at once;
    /// more are closed at accept (default 4096).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_listener: Option<usize>,
    /// Distributed tracing (default: propagate W3C trace context, export nothing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
    /// Take the policy part from this control plane instead of this file (then `services`,
    /// `routes` and `authorization` must be absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<ControlPlane>,
}

/// The mesh policy one sidecar follows: whom it may call (services with their endpoints and
/// traffic policies), its routes to them, and who may call its own app. The policy part of a
/// static [`ConfigFile`], with the same field names; the control plane sends one per sidecar.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicySnapshot {
    /// Content version set by the control plane (a hash of the rest); empty in a static file.
    /// Validation ignores it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// Mesh services this sidecar may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
    /// Routes to mesh services, in match order per service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// Who may call this sidecar's app (default: every mesh identity).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Authorization>,
}

/// One file of the control plane's policy directory. Every section is optional; the directory's
/// files together make the mesh policy.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MeshFile {
    /// Mesh services, with their endpoints and traffic policies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
    /// Routes; `from` limits a route to some callers' sidecars.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// Who may call each service, one block per destination service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorization: Vec<ServiceAuthorization>,
}

/// Inbound authorization of one destination service, at the mesh level: becomes that
/// service's sidecars' `authorization`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceAuthorization {
    /// The destination service these rules protect.
    pub service: String,
    /// `allow` (the default) or `deny`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// Allow rules; a request any rule matches is allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AuthzRule>,
    /// Inbound requests whose path holds `%2F` or `%5C`: `reject` (the default, 400) or
    /// `keep` (forwarded encoded; `paths` compare the encoded form).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub escaped_slashes: Option<EscapedSlashes>,
}

impl ServiceAuthorization {
    /// The sidecar-level block (without the service name).
    pub fn to_sidecar(&self) -> Authorization {
        Authorization {
            default: self.default.clone(),
            rules: self.rules.clone(),
            escaped_slashes: self.escaped_slashes,
        }
    }
}

/// The traffic policy of one service, apart from its definition: how callers balance load,
/// retry, eject endpoints and queue towards it. On Kubernetes it is a `TrafficPolicy` resource
/// (services themselves come from the cluster); [`TrafficPolicy::apply_to`] merges it into
/// the [`Service`] with the same field names.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrafficPolicy {
    /// The service these settings apply to.
    pub service: String,
    /// p2c_ewma (default) or round_robin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<String>,
    /// How many retries calls to this service may add.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
    /// Per-endpoint ejection on consecutive failures (the circuit breaker).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Concurrency limits towards this service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// Requests to this service whose path holds `%2F` or `%5C`: `reject` (the default, 400)
    /// or `keep`. One setting for both sides: callers' sidecars and the service's own
    /// inbound canonicalize alike (an authorization block that says otherwise is an error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub escaped_slashes: Option<EscapedSlashes>,
}

impl TrafficPolicy {
    /// Set the given settings on `service` (its `name` is not looked at; settings left out
    /// keep the service's own).
    pub fn apply_to(&self, service: &mut Service) {
        if self.load_balancer.is_some() {
            service.load_balancer = self.load_balancer.clone();
        }
        if self.retry_budget.is_some() {
            service.retry_budget = self.retry_budget.clone();
        }
        if self.outlier_detection.is_some() {
            service.outlier_detection = self.outlier_detection.clone();
        }
        if self.limits.is_some() {
            service.limits = self.limits.clone();
        }
        if self.escaped_slashes.is_some() {
            service.escaped_slashes = self.escaped_slashes;
        }
    }
}

/// Inbound authorization: allow rules and what happens to requests no rule allows.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Authorization {
    /// `allow` (the default) or `deny`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// Allow rules; a request any rule matches is allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AuthzRule>,
    /// Inbound requests whose path holds `%2F` or `%5C`: `reject` (the default, 400) or
    /// `keep` (forwarded encoded; `paths` compare the encoded form).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub escaped_slashes: Option<EscapedSlashes>,
}

/// One allow rule; every given condition must hold.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthzRule {
    /// Rule name, for errors and logs.
    pub name: String,
    /// Caller SPIFFE identities, or `"*"` for any mesh identity.
    pub from: Vec<String>,
    /// Path prefixes (default: any path).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Methods (default: any method).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
}

/// Distributed tracing.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tracing {
    /// OTLP/gRPC collector URL, `http://host:port` (default: none, no spans exported).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collector: Option<String>,
    /// Probability of sampling a trace that starts here (default 0.01).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampling: Option<f64>,
    /// Spans queued for export before new ones are dropped (default 2048).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_queue: Option<usize>,
    /// Longest a finished span waits before it is sent (default 1s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub export_interval: Option<String>,
}

/// This sidecar's own service.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OwnService {
    /// Service name.
    pub name: String,
    /// SPIFFE identity this sidecar's certificate must carry.
    pub identity: String,
    /// Address of the app on localhost.
    pub app: String,
    /// Protocol the app speaks (default http).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Inbound rate limit (default: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Labels of this sidecar's endpoint (e.g. `version: v2`), sent to the control plane when
    /// it registers the endpoint; unused in static mode.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// What happens to a captured connection the app opens to an address no mesh service
    /// has: `allow` (the default: passed through as plain TCP) or `deny` (closed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Egress>,
    /// How long a captured connection to an `http` or `grpc` service may take to send the
    /// bytes that say whether it is HTTP (default 300ms, at most 5s): `crate::DEFAULT_DETECT_TIMEOUT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detect_timeout: Option<String>,
    /// Destination ports never detected (server-first protocols): captured connections to
    /// them take the TCP path at once. Default `crate::DEFAULT_OPAQUE_PORTS`; `[]` for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opaque_ports: Option<Vec<u16>>,
}

/// Egress: a captured connection to an address the mesh does not know (not an endpoint's or a
/// service's IP). A serde enum, so an unknown value is an error at its line and column.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Egress {
    /// Pass the connection through as plain TCP to its original destination (the default).
    #[default]
    Allow,
    /// Close the connection at once.
    Deny,
}

impl Egress {
    /// The value as written in config files.
    pub fn as_str(self) -> &'static str {
        match self {
            Egress::Allow => "allow",
            Egress::Deny => "deny",
        }
    }
}

/// The control plane a sidecar takes its policy from.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlane {
    /// `host:port` of the control plane's sidecar endpoint (mTLS gRPC).
    pub address: String,
    /// SPIFFE identity the control plane's certificate must carry.
    pub identity: String,
    /// File where the last applied snapshot is kept (mode 0600), served from at start until
    /// the control plane answers (default: not kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_file: Option<String>,
    /// File holding a join token (`weftctl tokens create`): when set, the sidecar obtains its
    /// workload certificate from the control plane at start if `tls.cert`/`tls.key` are
    /// missing, expired or for another identity (default: none, the files must be provided).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_token_file: Option<String>,
    /// How long the sidecar keeps trying to obtain its first certificate before it exits
    /// (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_timeout: Option<String>,
    /// Who may call the app until the first control-plane snapshot is applied or restored.
    /// Left out, inbound requests are refused (503 `no_policy`) until then: fail closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_authorization: Option<Authorization>,
    /// Where the mesh's roots come from (default `pushed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_bundle: Option<TrustBundleSource>,
}

/// Where a sidecar in control-plane mode takes the mesh's roots from. A serde enum, so an
/// unknown value is an error at its line and column.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrustBundleSource {
    /// The control plane's snapshots carry the roots; the sidecar writes them to
    /// `tls.trust_bundle` and trusts a new root at once (local mode, `weft up`).
    #[default]
    Pushed,
    /// `tls.trust_bundle` alone, kept by someone else (on Kubernetes the `weft-trust-bundle`
    /// ConfigMap, mounted read only): the sidecar reloads it when it changes and never writes
    /// it; a pushed bundle with other roots is logged and shown as
    /// `weft_trust_bundle_differs 1`, never applied and never a NACK.
    Mounted,
}

/// Listener addresses; each has a default.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// Outbound HTTP listener (default 127.0.0.1:15001).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound: Option<String>,
    /// Inbound mTLS listener (default 0.0.0.0:15006).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbound: Option<String>,
    /// Admin listener (default 127.0.0.1:15000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
    /// Read-only listener serving only `/metrics`, `/live` and `/ready`, for Prometheus and
    /// kubelet probes on a pod's address (default: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
}

/// Certificate material.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
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
