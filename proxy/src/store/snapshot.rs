//! One immutable version of the sidecar's config ([`Snapshot`]), and how one is built from its
//! sources: the config file's text, the certificate files' PEM and the control plane's policy,
//! each validated, cross-checked and resolved off the hot path.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use weft_policy::wire::PolicySnapshot;
use weft_policy::{Config, ConfigError, FieldError, Listen, OwnService, TlsPaths};
use weft_resilience::rate::Buckets;

use crate::identity::material::{self, TlsMaterial};
use crate::outbound::route::Routes;
use crate::telemetry::metrics::Metrics;

/// One immutable version of the sidecar's config, ready for the hot path.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases with every accepted config.
    pub version: u64,
    /// This sidecar's own service.
    pub own: OwnService,
    /// Listener addresses (fixed for the process's life).
    pub listen: Listen,
    /// Traffic workers (fixed for the process's life).
    pub workers: usize,
    /// SIGTERM drain limit.
    pub drain_timeout: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Idle limit for client connections and TCP tunnels.
    pub idle_timeout: Duration,
    /// Connections each traffic listener holds at once; more are closed at accept.
    pub max_connections_per_listener: usize,
    /// Inbound rate limit.
    pub inbound_rate: Option<Buckets>,
    /// Who may call the app.
    pub authz: weft_policy::Authorization,
    /// Where `authz` came from; [`PolicySource::Pending`] refuses every inbound request.
    pub policy: PolicySource,
    /// Access log target (fixed for the process's life).
    pub access_log: Option<PathBuf>,
    /// Tracing: `sampling` reloads; collector, queue and interval are fixed for the process's
    /// life.
    pub tracing: weft_policy::Tracing,
    /// Certificates, keys, roots (shared with the snapshots that follow while the files
    /// stay the same).
    pub tls: Arc<TlsMaterial>,
    /// This sidecar's SPIFFE identity, shared with the access log.
    pub identity: Arc<str>,
    /// Where the certificate material was read from (watched for rotation).
    pub tls_paths: TlsPaths,
    /// The control plane the policy comes from (fixed for the process's life); `None` in
    /// static mode.
    pub control_plane: Option<weft_policy::ControlPlane>,
    /// Callable services and how requests find them.
    pub routes: Routes,
    /// The mesh services this snapshot was built with, validated, as a gateway's routes name
    /// them ([`Store::mesh_services`](super::Store::mesh_services)): made once, on first use
    /// (`Routes` takes the services themselves, which do not clone, and most sidecars never
    /// ask).
    pub(super) mesh_services: std::sync::OnceLock<Arc<[weft_policy::Service]>>,
}

/// Where a snapshot's policy (services, routes, authorization) came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicySource {
    /// The config file (static mode).
    File,
    /// A control-plane snapshot, pushed or restored from the state file.
    ControlPlane,
    /// Control-plane mode before the first snapshot: the file's
    /// `control_plane.bootstrap_authorization`.
    Bootstrap,
    /// Control-plane mode before the first snapshot with no bootstrap policy: the inbound side
    /// refuses every request and tunnel (fail closed) until a snapshot arrives.
    Pending,
}

/// Most distinct callers tracked by a per-caller limit; later ones share one bucket.
pub const MAX_RATE_KEYS: usize = 10_000;

impl Snapshot {
    /// Build from a validated config, reusing live endpoint state from `prev` where the
    /// endpoint survives, so latency history and ejections outlive reloads.
    pub fn build(
        config: Config,
        tls: Arc<TlsMaterial>,
        version: u64,
        prev: Option<&Snapshot>,
        metrics: &Arc<Metrics>,
    ) -> Self {
        let identity: Arc<str> = config.own.identity.to_string().into();
        let routes = Routes::build(
            config.services,
            &config.own.name,
            &identity,
            prev.map(|p| &p.routes),
            metrics,
        );
        let inbound_rate = config
            .own
            .rate_limit
            .as_ref()
            .map(|r| Buckets::new(r.per_second, r.burst, r.per_caller, MAX_RATE_KEYS));
        Snapshot {
            version,
            own: config.own,
            listen: config.listen,
            workers: config.workers,
            drain_timeout: config.drain_timeout,
            connect_timeout: config.connect_timeout,
            idle_timeout: config.idle_timeout,
            max_connections_per_listener: config.max_connections_per_listener,
            inbound_rate,
            authz: config.authorization,
            policy: PolicySource::File,
            access_log: config.access_log,
            tracing: config.tracing,
            identity,
            tls,
            tls_paths: config.tls,
            control_plane: config.control_plane,
            routes,
            mesh_services: std::sync::OnceLock::new(),
        }
    }
}

/// The certificate files' contents a snapshot's TLS material was built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pems {
    /// `tls.cert`: the workload certificate chain.
    pub cert: Vec<u8>,
    /// `tls.key`: its private key.
    pub key: Vec<u8>,
    /// `tls.trust_bundle`: the mesh roots.
    pub bundle: Vec<u8>,
}

impl Pems {
    /// Read the three files of `paths`.
    pub fn read(paths: &TlsPaths) -> Result<Self, FieldError> {
        let read = |path: &Path, field: &str| {
            std::fs::read(path).map_err(|e| FieldError {
                field: field.to_owned(),
                reason: format!("cannot read {}: {e}", path.display()),
            })
        };
        Ok(Pems {
            cert: read(&paths.cert, "tls.cert")?,
            key: read(&paths.key, "tls.key")?,
            bundle: read(&paths.trust_bundle, "tls.trust_bundle")?,
        })
    }

    /// These contents with `bytes` in place of the file at `path`, if it is one of `paths`.
    pub fn with(&self, paths: &TlsPaths, path: &Path, bytes: &[u8]) -> Self {
        let mut next = self.clone();
        if path == paths.cert {
            next.cert = bytes.to_vec();
        } else if path == paths.key {
            next.key = bytes.to_vec();
        } else if path == paths.trust_bundle {
            next.bundle = bytes.to_vec();
        }
        next
    }
}

/// What building a snapshot needs besides its sources.
pub struct Builder<'a> {
    /// The config file (names it in errors; relative paths resolve against its directory).
    pub path: &'a Path,
    /// Every exported series.
    pub metrics: &'a Arc<Metrics>,
    /// Where the listeners are bound, once they are.
    pub bound: Option<&'a Listen>,
}

impl Builder<'_> {
    /// Parse and validate the config file's `text`.
    pub fn config(&self, text: &str) -> Result<Config, ConfigError> {
        let base = self.path.parent().unwrap_or(Path::new("."));
        weft_policy::parse(text, self.path, base)
    }

    /// Read the config file's text.
    pub fn read(&self) -> Result<String, ConfigError> {
        std::fs::read_to_string(self.path).map_err(|source| ConfigError::Read {
            file: self.path.to_owned(),
            source,
        })
    }

    /// Build version `version` from `config` joined with the control plane's `cp` policy (in
    /// control-plane mode), with TLS material `tls` if given (unchanged files) or else built
    /// from `pems`; `prev` is the snapshot in force, whose live state carries over and whose
    /// fixed-for-life settings `config` must keep.
    pub fn snapshot(
        &self,
        mut config: Config,
        cp: Option<&PolicySnapshot>,
        pems: &Pems,
        tls: Option<Arc<TlsMaterial>>,
        version: u64,
        prev: Option<&Snapshot>,
    ) -> Result<Snapshot, ConfigError> {
        let invalid = |errors| ConfigError::Invalid {
            file: self.path.to_owned(),
            errors,
        };
        let mut source = self.path.to_owned();
        let origin = match (cp, &config.control_plane) {
            (_, None) => PolicySource::File,
            (Some(_), Some(_)) => PolicySource::ControlPlane,
            (None, Some(c)) => match &c.bootstrap_authorization {
                Some(a) => {
                    config.authorization = a.clone();
                    PolicySource::Bootstrap
                }
                None => PolicySource::Pending,
            },
        };
        if let (Some(policy), Some(_)) = (cp, &config.control_plane) {
            let (local, _) = config.into_parts();
            source = PathBuf::from(format!("control-plane snapshot {}", policy.version));
            let policy =
                weft_policy::validate_snapshot(policy.clone(), &local).map_err(|errors| {
                    ConfigError::Invalid {
                        file: source.clone(),
                        errors,
                    }
                })?;
            config = Config::from_parts(local, policy);
        }
        let clashes = bound_port_clashes(&config, self.bound);
        if !clashes.is_empty() {
            return Err(ConfigError::Invalid {
                file: source,
                errors: clashes,
            });
        }
        if let Some(p) = prev {
            let errors = fixed_for_life(&config, p);
            if !errors.is_empty() {
                return Err(invalid(errors));
            }
        }
        let tls = match tls {
            Some(tls) => tls,
            None => Arc::new(
                material::from_pem(
                    &config.tls,
                    &pems.cert,
                    &pems.key,
                    &pems.bundle,
                    &config.own.identity,
                    config.own.protocol,
                )
                .map_err(|e| invalid(vec![e]))?,
            ),
        };
        let mut snapshot = Snapshot::build(config, tls, version, prev, self.metrics);
        snapshot.policy = origin;
        Ok(snapshot)
    }
}

/// Dedicated outbound ports must not take a port a listener is bound to. The validator
/// checks the configured ports; a listener configured with port 0 has its port only once it is
/// bound, so the bound ports are checked here.
fn bound_port_clashes(config: &Config, bound: Option<&Listen>) -> Vec<FieldError> {
    let Some(b) = bound else {
        return Vec::new();
    };
    let mut taken = vec![b.outbound.port(), b.inbound.port(), b.admin.port()];
    taken.extend(b.metrics.map(|m| m.port()));
    config
        .services
        .iter()
        .enumerate()
        .filter_map(|(i, svc)| {
            let p = svc.port.filter(|p| taken.contains(p))?;
            Some(FieldError {
                field: format!("services[{i}].port"),
                reason: format!("port {p} is already used by another listener"),
            })
        })
        .collect()
}

/// The settings a running sidecar cannot take up without a restart (listeners, workers, the
/// access log and span export, the control plane, the app): an error per one `config` changes
/// from `p`.
fn fixed_for_life(config: &Config, p: &Snapshot) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let fixed = |field: &str, reason: String| FieldError {
        field: field.to_owned(),
        reason,
    };
    if config.listen != p.listen {
        errors.push(fixed(
            "listen",
            "listeners cannot change without a restart".into(),
        ));
    }
    if config.access_log != p.access_log {
        errors.push(fixed(
            "access_log",
            "cannot change without a restart".into(),
        ));
    }
    let t = (&config.tracing, &p.tracing);
    if t.0.collector != t.1.collector {
        errors.push(fixed(
            "tracing.collector",
            "cannot change without a restart".into(),
        ));
    }
    if t.0.max_queue != t.1.max_queue {
        errors.push(fixed(
            "tracing.max_queue",
            "cannot change without a restart".into(),
        ));
    }
    if t.0.export_interval != t.1.export_interval {
        errors.push(fixed(
            "tracing.export_interval",
            "cannot change without a restart".into(),
        ));
    }
    if config.control_plane != p.control_plane {
        errors.push(fixed(
            "control_plane",
            "cannot change without a restart".into(),
        ));
    }
    if config.workers != p.workers {
        errors.push(fixed("workers", "cannot change without a restart".into()));
    }
    if config.own.app != p.own.app || config.own.protocol != p.own.protocol {
        errors.push(fixed(
            "service",
            "app address and protocol cannot change without a restart".into(),
        ));
    }
    errors
}

/// Export the gauges a snapshot sets: its version and its certificate's expiry.
pub(super) fn observe(metrics: &Metrics, snap: &Snapshot) {
    metrics
        .config_version
        .set(i64::try_from(snap.version).unwrap_or(i64::MAX));
    let expiry = snap
        .tls
        .not_after
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    metrics.cert_expiry.set(expiry);
}
