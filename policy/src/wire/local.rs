//! The sidecar's own part of its file: its service, egress, control plane, listeners, TLS paths
//! and tracing; none of it comes from the control plane.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::authz::Authorization;
use super::resilience::RateLimit;

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
