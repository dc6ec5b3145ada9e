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

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod authz;
mod local;
mod resilience;
mod service;

pub use authz::*;
pub use local::*;
pub use resilience::*;
pub use service::*;

/// Declares [`ConfigFile`], [`LocalFile`] and [`PolicySnapshot`] from one list of the
/// sidecar-local fields and one of the policy fields, with `split` and `join` between them.
/// Lists, because serde's `flatten` does not combine with `deny_unknown_fields`: the fields
/// must stand in each struct itself for a typo in any of the documents to stay an error with
/// its line and column.
macro_rules! sidecar_files {
    (
        local { $( $(#[$lattr:meta])* $local:ident : $lty:ty, )* }
        policy { $( $(#[$pattr:meta])* $policy:ident : $pty:ty, )* }
    ) => {
        /// A sidecar's whole static file: [`LocalFile`] and [`PolicySnapshot`] fields side by
        /// side.
        #[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
        #[serde(deny_unknown_fields)]
        pub struct ConfigFile {
            $( $(#[$lattr])* pub $local: $lty, )*
            $( $(#[$pattr])* pub $policy: $pty, )*
        }

        /// What belongs to one sidecar and never comes from the control plane: its own
        /// service, its listeners, certificate paths, workers, timeouts, access log and
        /// tracing.
        #[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
        #[serde(deny_unknown_fields)]
        pub struct LocalFile {
            $( $(#[$lattr])* pub $local: $lty, )*
        }

        /// The mesh policy one sidecar follows: whom it may call (services with their
        /// endpoints and traffic policies), its routes to them, and who may call its own app.
        /// The policy part of a static [`ConfigFile`], with the same field names; the control
        /// plane sends one per sidecar.
        #[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
        #[serde(deny_unknown_fields)]
        pub struct PolicySnapshot {
            /// Content version set by the control plane (a hash of the rest); empty in a
            /// static file. Validation ignores it.
            #[serde(default, skip_serializing_if = "String::is_empty")]
            pub version: String,
            $( $(#[$pattr])* pub $policy: $pty, )*
        }

        impl ConfigFile {
            /// The sidecar-local part and the policy part.
            pub fn split(self) -> (LocalFile, PolicySnapshot) {
                (
                    LocalFile { $( $local: self.$local, )* },
                    PolicySnapshot {
                        version: String::new(),
                        $( $policy: self.$policy, )*
                    },
                )
            }

            /// A static file from its two parts (the snapshot's `version` is dropped).
            pub fn join(local: LocalFile, policy: PolicySnapshot) -> Self {
                ConfigFile {
                    $( $local: local.$local, )*
                    $( $policy: policy.$policy, )*
                }
            }
        }
    };
}

sidecar_files! {
    local {
        /// This sidecar's own service.
        service: OwnService,
        /// Listener addresses.
        #[serde(default)]
        listen: Listen,
        /// Certificate, key and trust bundle paths.
        tls: Tls,
        /// Traffic worker threads (default 1).
        #[serde(skip_serializing_if = "Option::is_none")]
        workers: Option<usize>,
        /// How long SIGTERM waits for in-flight requests (default 25s).
        #[serde(skip_serializing_if = "Option::is_none")]
        drain_timeout: Option<String>,
        /// Connect timeout towards peers and the app (default 1s).
        #[serde(skip_serializing_if = "Option::is_none")]
        connect_timeout: Option<String>,
        /// Access log file, `-` for stdout (default: off).
        #[serde(skip_serializing_if = "Option::is_none")]
        access_log: Option<String>,
        /// Close client connections and TCP tunnels idle this long (default 1h).
        #[serde(skip_serializing_if = "Option::is_none")]
        idle_timeout: Option<String>,
        /// Connections each traffic listener (outbound, inbound, each dedicated port) holds at
        /// once; more are closed at accept (default 4096).
        #[serde(skip_serializing_if = "Option::is_none")]
        max_connections_per_listener: Option<usize>,
        /// Distributed tracing (default: propagate W3C trace context, export nothing).
        #[serde(skip_serializing_if = "Option::is_none")]
        tracing: Option<Tracing>,
        /// Take the policy part from this control plane instead of this file (then
        /// `services`, `routes` and `authorization` must be absent).
        #[serde(skip_serializing_if = "Option::is_none")]
        control_plane: Option<ControlPlane>,
    }
    policy {
        /// Mesh services this sidecar may call.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        services: Vec<Service>,
        /// Routes to mesh services, in match order per service.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        routes: Vec<Route>,
        /// Who may call this sidecar's app (default: every mesh identity).
        #[serde(skip_serializing_if = "Option::is_none")]
        authorization: Option<Authorization>,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "service: {name: orders, identity: spiffe://weft.local/ns/default/sa/orders, \
                        app: \"127.0.0.1:8080\"}\n\
                        tls: {cert: c.pem, key: k.pem, trust_bundle: ca.pem}\n\
                        idle_timeout: 2s\n\
                        services: [{name: users, identity: spiffe://weft.local/ns/default/sa/users}]\n";

    #[test]
    fn split_and_join_carry_every_field_across() {
        let file: ConfigFile = serde_yaml::from_str(FILE).expect("parse");
        let (local, policy) = file.clone().split();
        assert_eq!(local.idle_timeout.as_deref(), Some("2s"));
        assert_eq!(policy.services.len(), 1);
        assert_eq!(ConfigFile::join(local, policy), file);
    }

    #[test]
    fn both_files_refuse_an_unknown_top_level_field_with_its_line_and_column() {
        let bad = format!("{FILE}idle_timout: 3s\n");
        let e = serde_yaml::from_str::<ConfigFile>(&bad).expect_err("a typo");
        assert!(e.to_string().contains("unknown field `idle_timout`"), "{e}");
        assert!(e.to_string().contains("line 5 column 1"), "{e}");
        let local = "service: {name: a, identity: x, app: \"127.0.0.1:1\"}\n\
                     tls: {cert: c, key: k, trust_bundle: t}\nworkerz: 2\n";
        let e = serde_yaml::from_str::<LocalFile>(local).expect_err("a typo");
        assert!(e.to_string().contains("unknown field `workerz`"), "{e}");
        assert!(e.to_string().contains("line 3 column 1"), "{e}");
        // The policy part is not local: a local file that carries it is refused.
        let e = serde_yaml::from_str::<LocalFile>(FILE).expect_err("services is policy");
        assert!(e.to_string().contains("unknown field `services`"), "{e}");
    }
}
