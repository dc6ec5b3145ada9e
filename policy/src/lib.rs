//! Weft's policy model, shared by the sidecar and the control plane: YAML wire types
//! ([`wire`]) parsed into validated domain types ([`model`]). Parsing collects every problem
//! with its field path so an operator fixes a file in one pass.
//!
//! The validated types carry no proxy machinery (no Pingora): the sidecar builds its hot-path
//! snapshot from them, and the control plane validates operators' policy with the same code
//! before anything reaches a sidecar.
//!
//! - A sidecar's static file: [`load`] / [`parse`] into a [`Config`], which is a [`Local`]
//!   part and a [`Policy`] part ([`Config::from_parts`], [`Config::into_parts`]).
//! - A snapshot the control plane sends one sidecar ([`wire::PolicySnapshot`], the policy
//!   part's fields alone): [`validate_snapshot`] for that sidecar's [`Local`] part.
//! - The whole mesh's policy ([`wire::MeshFile`], merged from the control plane's policy
//!   directory): [`validate_mesh`], the same checks plus callers (`from`) and authorization per
//!   service. [`validate_mesh_dynamic`] is the same for a mesh whose endpoints change at run
//!   time (Kubernetes).
//! - [`locate`]: the line and column of a field path in YAML text, to point errors found after
//!   parsing at a line.

mod authz;
pub mod lenient;
mod locate;
mod matching;
pub mod model;
pub mod path;
mod resilience;
pub mod wire;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::Method;
use regex::{Regex, RegexBuilder};
use weft_certs::Identity;

pub use locate::{locate, Location};
pub use matching::prefix_matches;
pub use model::*;
pub use resilience::RETRY_CONDITIONS;

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// YAML syntax, an unknown field, or a wrong type.
    #[error("{file}:{location}{reason}")]
    Syntax {
        /// The file.
        file: PathBuf,
        /// `line:column: ` when known.
        location: String,
        /// The parser's words.
        reason: String,
    },
    /// Fields that parse but make no sense.
    #[error("{}", render_invalid(.file, .errors))]
    Invalid {
        /// The file.
        file: PathBuf,
        /// Every problem found.
        errors: Vec<FieldError>,
    },
}

/// One invalid field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, e.g. `routes[1].backends[0].weight`.
    pub field: String,
    /// What is wrong, with the bad value.
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

fn render_invalid(file: &Path, errors: &[FieldError]) -> String {
    let lines: Vec<String> = errors
        .iter()
        .map(|e| format!("{}: {e}", file.display()))
        .collect();
    lines.join("\n")
}

/// Read, parse and validate a config file. Relative certificate paths resolve against the
/// file's directory.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: path.to_owned(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, path, base)
}

/// Parse and validate config text; `file` names it in errors, `base` resolves relative paths.
pub fn parse(text: &str, file: &Path, base: &Path) -> Result<Config, ConfigError> {
    let raw: wire::ConfigFile = serde_yaml::from_str(text).map_err(|e| ConfigError::Syntax {
        file: file.to_owned(),
        location: e
            .location()
            .map(|l| format!("{}:{}: ", l.line(), l.column()))
            .unwrap_or_else(|| " ".to_owned()),
        reason: e.to_string(),
    })?;
    let mut v = Validator {
        errors: Vec::new(),
        base,
        dynamic_endpoints: false,
    };
    let config = v.config(raw);
    match config {
        Some(c) if v.errors.is_empty() => Ok(c),
        _ => Err(ConfigError::Invalid {
            file: file.to_owned(),
            errors: v.errors,
        }),
    }
}

/// Validate the policy the control plane sent one sidecar, for that sidecar's local part: the
/// same checks as a static file's `services`, `routes` and `authorization`, with the same
/// field paths, except one: a backend subset that selects none of the service's endpoints is
/// allowed (endpoints register and withdraw at run time; the control plane's `validate_mesh`
/// still checks the static ones). Join the result with [`Config::from_parts`].
pub fn validate_snapshot(
    raw: wire::PolicySnapshot,
    local: &Local,
) -> Result<Policy, Vec<FieldError>> {
    let mut v = Validator {
        errors: Vec::new(),
        base: Path::new("."),
        dynamic_endpoints: true,
    };
    let policy = v.policy(raw, &local.reserved_ports());
    if v.errors.is_empty() {
        Ok(policy)
    } else {
        Err(v.errors)
    }
}

/// Validate the whole mesh's policy (the control plane's policy directory, merged): every
/// check a sidecar makes on its `services` and `routes`, mesh-wide, plus the callers routes
/// name (`from`: known services, never the destination itself; shadowing is judged per caller)
/// and authorization per destination service (known services, one block each). Field paths
/// index the merged sections: `services[i]`, `routes[i]`, `authorization[i]`.
pub fn validate_mesh(raw: wire::MeshFile) -> Result<(), Vec<FieldError>> {
    let mut v = Validator {
        errors: Vec::new(),
        base: Path::new("."),
        dynamic_endpoints: false,
    };
    v.mesh(raw);
    if v.errors.is_empty() {
        Ok(())
    } else {
        Err(v.errors)
    }
}

/// [`validate_mesh`] for a mesh whose endpoints come and go at run time (on Kubernetes they
/// are the ready addresses of EndpointSlices): a backend subset that selects none of the
/// services' current endpoints is not an error (a canary's pods may all be starting), as in
/// [`validate_snapshot`]. Every other check is the same, with the same field paths.
pub fn validate_mesh_dynamic(raw: wire::MeshFile) -> Result<(), Vec<FieldError>> {
    let mut v = Validator {
        errors: Vec::new(),
        base: Path::new("."),
        dynamic_endpoints: true,
    };
    v.mesh(raw);
    if v.errors.is_empty() {
        Ok(())
    } else {
        Err(v.errors)
    }
}

/// A `host:port` address (a name or an IP address, and a port).
fn host_port(s: &str) -> Result<String, String> {
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) => {
            Ok(s.to_owned())
        }
        _ => Err(format!("expected host:port, got {s:?}")),
    }
}

/// The longest duration a policy accepts. Timeouts, windows and ejection times are added to
/// the clock (`Instant + Duration`), which panics past the clock's range; nothing a mesh does
/// needs more than a year, so anything longer is refused as the typo it is.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parse a duration such as `250ms`, `2s` or `1m`, at most [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| format!("bad duration {s:?}: {e}"))?;
    if d > MAX_DURATION {
        return Err(format!(
            "duration {s:?} is longer than the limit of 365 days"
        ));
    }
    Ok(d)
}

struct Validator<'a> {
    errors: Vec<FieldError>,
    base: &'a Path,
    /// Endpoints come and go at run time (a control-plane snapshot, whose endpoints include
    /// the ones sidecars registered): a subset selecting none of them is not an error (its
    /// requests find no endpoint until one registers).
    dynamic_endpoints: bool,
}

impl Validator<'_> {
    fn err(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.into(),
            reason: reason.into(),
        });
    }

    /// Run a fallible conversion; on error record it and yield `None`.
    fn check<T>(&mut self, field: impl Into<String>, r: Result<T, String>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(reason) => {
                self.err(field, reason);
                None
            }
        }
    }

    /// A path a rule compares with requests must be canonical ([`path::canonicalize`]), or
    /// no request could ever match it (requests are canonicalized first); false if not.
    fn canonical(&mut self, field: &str, p: &str, opts: &path::PathOptions) -> bool {
        match path::canonicalize(p, opts) {
            Ok(c) if c == p => true,
            Ok(c) => {
                self.err(
                    field,
                    format!("{p:?} is not a canonical path (requests are matched as {c:?})"),
                );
                false
            }
            Err(e) => {
                self.err(field, format!("{p:?} can never match a request: {e}"));
                false
            }
        }
    }

    fn config(&mut self, raw: wire::ConfigFile) -> Option<Config> {
        let (local, policy) = raw.split();
        if local.control_plane.is_some() {
            for (field, set) in [
                ("services", !policy.services.is_empty()),
                ("routes", !policy.routes.is_empty()),
                ("authorization", policy.authorization.is_some()),
            ] {
                if set {
                    self.err(
                        field,
                        "must be absent when control_plane is set: the policy comes from the control plane"
                            .to_owned(),
                    );
                }
            }
        }
        let (local, reserved) = self.local(local);
        let policy = self.policy(policy, &reserved);
        Some(Config::from_parts(local?, policy))
    }

    /// The `control_plane` block: where the policy comes from, and how a first certificate
    /// and a first policy are had.
    fn control_plane(&mut self, cp: wire::ControlPlane) -> Option<ControlPlane> {
        let address = self.check("control_plane.address", host_port(&cp.address));
        let identity = self.check("control_plane.identity", identity(&cp.identity));
        let bootstrap_timeout = self.duration(
            "control_plane.bootstrap_timeout",
            cp.bootstrap_timeout,
            DEFAULT_BOOTSTRAP_TIMEOUT,
        );
        if cp.join_token_file.as_deref() == Some("") {
            self.err(
                "control_plane.join_token_file",
                "must name a file (or be left out)",
            );
        }
        let bootstrap_authorization = cp
            .bootstrap_authorization
            .map(|a| self.authorization_at("control_plane.bootstrap_authorization", Some(a)));
        Some(ControlPlane {
            bootstrap_authorization,
            address: address?,
            identity: identity?,
            state_file: cp.state_file.map(|f| self.base.join(f)),
            join_token_file: cp
                .join_token_file
                .filter(|f| !f.is_empty())
                .map(|f| self.base.join(f)),
            bootstrap_timeout,
        })
    }

    /// The sidecar-local part, and the ports its loopback listeners take (known when the
    /// listeners are valid, even if something else is not).
    fn local(&mut self, raw: wire::LocalFile) -> (Option<Local>, Vec<u16>) {
        let own = self.own(raw.service);
        let listen = self.listen(raw.listen);
        let tls = TlsPaths {
            cert: self.base.join(raw.tls.cert),
            key: self.base.join(raw.tls.key),
            trust_bundle: self.base.join(raw.tls.trust_bundle),
        };
        let workers = raw.workers.unwrap_or(DEFAULT_WORKERS);
        if !(1..=64).contains(&workers) {
            self.err("workers", format!("must be 1 to 64, got {workers}"));
        }
        let drain_timeout =
            self.duration("drain_timeout", raw.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
        let connect_timeout = self.duration(
            "connect_timeout",
            raw.connect_timeout,
            DEFAULT_CONNECT_TIMEOUT,
        );
        let idle_timeout = self.duration("idle_timeout", raw.idle_timeout, DEFAULT_IDLE_TIMEOUT);
        let max_connections_per_listener = raw
            .max_connections_per_listener
            .unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_LISTENER);
        if !(1..=1_000_000).contains(&max_connections_per_listener) {
            self.err(
                "max_connections_per_listener",
                format!("must be 1 to 1000000, got {max_connections_per_listener}"),
            );
        }
        let tracing = self.tracing(raw.tracing.unwrap_or_default());
        let access_log = raw.access_log.map(|p| {
            if p == "-" {
                PathBuf::from("-")
            } else {
                self.base.join(p)
            }
        });
        let control_plane = raw.control_plane.and_then(|cp| self.control_plane(cp));
        let reserved = listen
            .as_ref()
            .map(|l| vec![l.outbound.port(), l.admin.port()])
            .unwrap_or_default();
        let local = match (own, listen) {
            (Some(own), Some(listen)) => Some(Local {
                own,
                listen,
                tls,
                workers,
                drain_timeout,
                connect_timeout,
                access_log,
                idle_timeout,
                max_connections_per_listener,
                tracing,
                control_plane,
            }),
            _ => None,
        };
        (local, reserved)
    }

    /// The policy part of a sidecar's config (a static file's, or a control-plane snapshot).
    /// `reserved` are loopback ports a dedicated service port must not take.
    fn policy(&mut self, raw: wire::PolicySnapshot, reserved: &[u16]) -> Policy {
        let (mut services, names) = self.services(raw.services, reserved);
        let authorization = self.authorization(raw.authorization);
        self.routes(raw.routes, &mut services, &names, Scope::Sidecar);
        Policy {
            services,
            authorization,
        }
    }

    /// The whole mesh's policy, as the control plane holds it before it cuts one snapshot per
    /// sidecar: every check a sidecar makes, plus the callers routes name and authorization per
    /// destination service.
    fn mesh(&mut self, raw: wire::MeshFile) {
        // What each service says about escaped slashes, for the authorization blocks to agree.
        let slashes: HashMap<String, wire::EscapedSlashes> = raw
            .services
            .iter()
            .filter_map(|s| Some((s.name.clone(), s.escaped_slashes?)))
            .collect();
        let (mut services, names) = self.services(raw.services, &[]);
        self.mesh_authorization(raw.authorization, &names, &slashes);
        self.routes(raw.routes, &mut services, &names, Scope::Mesh);
    }

    /// Services with unique names, hosts and dedicated ports; the name-to-index map.
    fn services(
        &mut self,
        raw: Vec<wire::Service>,
        reserved: &[u16],
    ) -> (Vec<Service>, HashMap<String, usize>) {
        let mut services = Vec::with_capacity(raw.len());
        let mut names = HashMap::new();
        let mut hosts = HashSet::new();
        let mut ports = HashSet::new();
        for (i, s) in raw.into_iter().enumerate() {
            let f = format!("services[{i}]");
            if let Some(svc) = self.service(&f, s) {
                if names.insert(svc.name.clone(), services.len()).is_some() {
                    self.err(
                        format!("{f}.name"),
                        format!("duplicate service {:?}", svc.name),
                    );
                }
                for h in &svc.hosts {
                    if !hosts.insert(h.clone()) {
                        self.err(
                            format!("{f}.hosts"),
                            format!("host {h:?} already routes to another service"),
                        );
                    }
                }
                if let Some(p) = svc.port {
                    if !ports.insert(p) || reserved.contains(&p) {
                        self.err(
                            format!("{f}.port"),
                            format!("port {p} is already used by another listener"),
                        );
                    }
                }
                services.push(svc);
            }
        }
        (services, names)
    }

    /// Routes, each added to its service in order; a route no request could reach (after a
    /// catch-all, or with the same match as an earlier one for a caller both apply to) is an
    /// error.
    fn routes(
        &mut self,
        raw: Vec<wire::Route>,
        services: &mut [Service],
        names: &HashMap<String, usize>,
        scope: Scope,
    ) {
        let mut route_names: HashSet<(String, String)> = HashSet::new();
        // The callers of each accepted route, parallel to each service's `routes`.
        let mut callers: Vec<Vec<Option<Vec<String>>>> = vec![Vec::new(); services.len()];
        for (i, mut r) in raw.into_iter().enumerate() {
            let f = format!("routes[{i}]");
            let Some(&si) = names.get(&r.service) else {
                self.err(
                    format!("{f}.service"),
                    format!("unknown service {:?}", r.service),
                );
                continue;
            };
            if !route_names.insert((r.service.clone(), r.name.clone())) {
                self.err(
                    format!("{f}.name"),
                    format!("duplicate route {:?} for service {:?}", r.name, r.service),
                );
            }
            let from = self.route_callers(&f, r.from.take(), &r.service, names, scope);
            if services[si].protocol == Protocol::Tcp {
                self.err(
                    format!("{f}.service"),
                    format!(
                        "service {:?} is tcp; routes apply to http and grpc",
                        r.service
                    ),
                );
                continue;
            }
            if let Some(route) = self.route(&f, r, &services[si]) {
                let svc = &mut services[si];
                let earlier = || {
                    svc.routes
                        .iter()
                        .zip(&callers[si])
                        .filter_map(|(p, c)| common_callers(c, &from).map(|common| (p, common)))
                };
                if let Some((prev, common)) = earlier().find(|(p, _)| p.matcher.is_catch_all()) {
                    self.err(
                        format!("{f}.match"),
                        format!(
                            "shadowed: route {:?} before it matches every request{}",
                            prev.name,
                            for_callers(&common)
                        ),
                    );
                } else if let Some((prev, common)) =
                    earlier().find(|(p, _)| same_match(&p.matcher, &route.matcher))
                {
                    self.err(
                        format!("{f}.match"),
                        format!(
                            "shadowed: route {:?} has the same match{}",
                            prev.name,
                            for_callers(&common)
                        ),
                    );
                }
                svc.routes.push(route);
                callers[si].push(from);
            }
        }
    }

    /// A route's callers: `None` is every caller. Only the mesh policy may name them.
    fn route_callers(
        &mut self,
        f: &str,
        from: Option<Vec<String>>,
        destination: &str,
        names: &HashMap<String, usize>,
        scope: Scope,
    ) -> Option<Vec<String>> {
        let from = from?;
        if scope == Scope::Sidecar {
            self.err(
                format!("{f}.from"),
                "callers are named in the control plane's policy directory; \
                 every route in a sidecar's config applies to its own app",
            );
            return None;
        }
        if from.is_empty() {
            self.err(
                format!("{f}.from"),
                "name at least one calling service, or leave `from` out for every caller",
            );
        }
        for (j, c) in from.iter().enumerate() {
            if c == destination {
                self.err(
                    format!("{f}.from[{j}]"),
                    format!("{c:?} is this route's destination; a service does not call itself through the mesh"),
                );
            } else if !names.contains_key(c) {
                self.err(format!("{f}.from[{j}]"), format!("unknown service {c:?}"));
            }
        }
        Some(from)
    }

    /// Authorization per destination service (mesh level): known services, one block each.
    fn mesh_authorization(
        &mut self,
        raw: Vec<wire::ServiceAuthorization>,
        names: &HashMap<String, usize>,
        slashes: &HashMap<String, wire::EscapedSlashes>,
    ) {
        let mut seen = HashSet::new();
        for (i, a) in raw.into_iter().enumerate() {
            let f = format!("authorization[{i}]");
            // Callers' sidecars canonicalize with the service's setting, its own inbound with
            // this one: if they differ, one side forwards what the other refuses, or rules
            // written for one form never see it.
            if let (Some(inbound), Some(outbound)) = (a.escaped_slashes, slashes.get(&a.service)) {
                if inbound != *outbound {
                    self.err(
                        format!("{f}.escaped_slashes"),
                        format!(
                            "{} here but {} on service {:?}: callers and the service's own sidecar must treat escaped slashes alike",
                            inbound.as_str(),
                            outbound.as_str(),
                            a.service
                        ),
                    );
                }
            }
            if !names.contains_key(&a.service) {
                self.err(
                    format!("{f}.service"),
                    format!("unknown service {:?}", a.service),
                );
            } else if !seen.insert(a.service.clone()) {
                self.err(
                    format!("{f}.service"),
                    format!("duplicate authorization for service {:?}", a.service),
                );
            }
            self.authorization_at(&f, Some(a.to_sidecar()));
        }
    }

    fn duration(&mut self, field: &str, raw: Option<String>, default: Duration) -> Duration {
        match raw {
            None => default,
            Some(s) => match parse_duration(&s) {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => {
                    self.err(field, "must be above zero");
                    default
                }
                Err(e) => {
                    self.err(field, e);
                    default
                }
            },
        }
    }

    fn tracing(&mut self, raw: wire::Tracing) -> Tracing {
        let d = Tracing::default();
        let collector = raw
            .collector
            .and_then(|c| self.check("tracing.collector", collector_url(&c)));
        let sampling = raw.sampling.unwrap_or(d.sampling);
        if !(0.0..=1.0).contains(&sampling) {
            self.err(
                "tracing.sampling",
                format!("must be a probability from 0.0 to 1.0, got {sampling}"),
            );
        }
        let max_queue = raw.max_queue.unwrap_or(d.max_queue);
        if !(1..=1_000_000).contains(&max_queue) {
            self.err(
                "tracing.max_queue",
                format!("must be 1 to 1000000, got {max_queue}"),
            );
        }
        let export_interval = self.bounded(
            "tracing.export_interval",
            raw.export_interval.as_deref(),
            d.export_interval,
            (Duration::from_millis(10), Duration::from_secs(60)),
        );
        Tracing {
            collector,
            sampling: if (0.0..=1.0).contains(&sampling) {
                sampling
            } else {
                d.sampling
            },
            max_queue,
            export_interval,
        }
    }

    fn own(&mut self, raw: wire::OwnService) -> Option<OwnService> {
        let name = self.check("service.name", service_name(&raw.name));
        let identity = self.check("service.identity", identity(&raw.identity));
        let app = self.check("service.app", loopback_addr(&raw.app));
        let protocol = self.check("service.protocol", protocol(raw.protocol.as_deref()));
        let rate_limit = self.rate_limit("service", raw.rate_limit, true);
        Some(OwnService {
            name: name?,
            identity: identity?,
            app: app?,
            protocol: protocol?,
            rate_limit,
            labels: raw.labels,
        })
    }

    fn listen(&mut self, raw: wire::Listen) -> Option<Listen> {
        let outbound = self.check(
            "listen.outbound",
            loopback_addr(raw.outbound.as_deref().unwrap_or(DEFAULT_OUTBOUND)),
        );
        let inbound = self.check(
            "listen.inbound",
            socket_addr(raw.inbound.as_deref().unwrap_or(DEFAULT_INBOUND)),
        );
        let admin = self.check(
            "listen.admin",
            loopback_addr(raw.admin.as_deref().unwrap_or(DEFAULT_ADMIN)),
        );
        let metrics = match raw.metrics.as_deref() {
            Some(m) => Some(self.check("listen.metrics", socket_addr(m))?),
            None => None,
        };
        let l = Listen {
            outbound: outbound?,
            inbound: inbound?,
            admin: admin?,
            metrics,
        };
        let mut ports = vec![l.outbound.port(), l.inbound.port(), l.admin.port()];
        ports.extend(l.metrics.map(|m| m.port()));
        // Port 0 asks the kernel for a free port (the sidecar reports the one it got), so
        // any number of listeners may ask for it.
        ports.retain(|&p| p != 0);
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        if distinct.len() != ports.len() {
            self.err(
                "listen",
                format!("listeners need distinct ports, got {ports:?}"),
            );
        }
        Some(l)
    }

    fn service(&mut self, f: &str, raw: wire::Service) -> Option<Service> {
        let name = self.check(format!("{f}.name"), service_name(&raw.name));
        let identity = self.check(format!("{f}.identity"), identity(&raw.identity));
        let protocol = self.check(format!("{f}.protocol"), protocol(raw.protocol.as_deref()));
        let lb = match raw.load_balancer.as_deref() {
            None | Some("p2c_ewma") => Some(LbPolicy::P2cEwma),
            Some("round_robin") => Some(LbPolicy::RoundRobin),
            Some(other) => {
                self.err(
                    format!("{f}.load_balancer"),
                    format!("unknown policy {other:?}; expected p2c_ewma or round_robin"),
                );
                None
            }
        };
        if raw.port == Some(0) {
            self.err(format!("{f}.port"), "port 0 is not a port");
        }
        if protocol == Some(Protocol::Tcp) && raw.port.is_none() {
            self.err(
                format!("{f}.port"),
                "a tcp service needs a dedicated outbound port",
            );
        }
        let mut hosts = Vec::new();
        if let Some(n) = &name {
            hosts.push(n.clone());
        }
        for (i, h) in raw.hosts.iter().enumerate() {
            match host_name(h) {
                Ok(h) => hosts.push(h),
                Err(e) => self.err(format!("{f}.hosts[{i}]"), e),
            }
        }
        let retry_budget = self.retry_budget(f, raw.retry_budget);
        let (outlier, outlier_counts_5xx) = self.outlier(f, raw.outlier_detection);
        let limits = self.limits(f, raw.limits);
        let paths = path_options(raw.escaped_slashes);
        let mut endpoints = Vec::with_capacity(raw.endpoints.len());
        let mut seen = HashSet::new();
        for (i, e) in raw.endpoints.into_iter().enumerate() {
            if let Some(addr) = self.check(
                format!("{f}.endpoints[{i}].address"),
                socket_addr(&e.address),
            ) {
                if !seen.insert(addr) {
                    self.err(
                        format!("{f}.endpoints[{i}].address"),
                        format!("duplicate endpoint {addr}"),
                    );
                }
                endpoints.push(Endpoint {
                    addr,
                    labels: e.labels,
                });
            }
        }
        Some(Service {
            name: name?,
            hosts,
            identity: identity?,
            protocol: protocol?,
            port: raw.port.filter(|p| *p != 0),
            lb: lb?,
            endpoints,
            routes: Vec::new(),
            retry_budget,
            outlier,
            outlier_counts_5xx,
            limits,
            paths,
        })
    }

    fn route(&mut self, f: &str, raw: wire::Route, svc: &Service) -> Option<Route> {
        let name = self.check(format!("{f}.name"), service_name(&raw.name));
        let matcher = self.route_match(f, raw.matches, svc);
        let mut backends = Vec::new();
        for (i, b) in raw.backends.into_iter().enumerate() {
            let backend = Backend {
                subset: b.subset,
                weight: b.weight.unwrap_or(1),
            };
            if backend.weight > 10_000 {
                self.err(
                    format!("{f}.backends[{i}].weight"),
                    format!("must be 0 to 10000, got {}", backend.weight),
                );
            }
            if backend.weight > 0
                && !self.dynamic_endpoints
                && !svc.endpoints.is_empty()
                && !svc.endpoints.iter().any(|e| backend.selects(e))
            {
                self.err(
                    format!("{f}.backends[{i}].subset"),
                    format!(
                        "{:?} selects no endpoint of service {:?}",
                        backend.subset, svc.name
                    ),
                );
            }
            backends.push(backend);
        }
        if backends.is_empty() {
            backends.push(Backend {
                subset: BTreeMap::new(),
                weight: 1,
            });
        } else if backends.iter().all(|b| b.weight == 0) {
            self.err(format!("{f}.backends"), "weights sum to zero");
        }
        let timeout = match raw.timeout {
            None => None,
            Some(t) => self.check(
                format!("{f}.timeout"),
                parse_duration(&t).and_then(|d| {
                    if d.is_zero() {
                        Err("must be above zero".to_owned())
                    } else {
                        Ok(d)
                    }
                }),
            ),
        };
        let rewrite_prefix = match (raw.rewrite, &matcher) {
            (None, _) => None,
            (
                Some(r),
                Some(RouteMatch {
                    path: Some(PathMatch::Prefix(_)),
                    ..
                }),
            ) => {
                if r.prefix.starts_with('/') {
                    self.canonical(&format!("{f}.rewrite.prefix"), &r.prefix, &svc.paths)
                        .then_some(r.prefix)
                } else {
                    self.err(
                        format!("{f}.rewrite.prefix"),
                        format!("must start with '/', got {:?}", r.prefix),
                    );
                    None
                }
            }
            (Some(_), _) => {
                self.err(
                    format!("{f}.rewrite"),
                    "a prefix rewrite needs a `match.path.prefix`",
                );
                None
            }
        };
        let edits = raw.request_headers.unwrap_or_default();
        let mut set_headers = Vec::new();
        for (k, v) in edits.set {
            let fk = format!("{f}.request_headers.set.{k}");
            let name = self.check(&fk, header_name(&k));
            let value = self.check(
                &fk,
                HeaderValue::from_str(&v).map_err(|_| format!("bad header value {v:?}")),
            );
            if let (Some(n), Some(v)) = (name, value) {
                set_headers.push((n, v));
            }
        }
        let mut remove_headers = Vec::new();
        for (i, k) in edits.remove.iter().enumerate() {
            if let Some(n) = self.check(format!("{f}.request_headers.remove[{i}]"), header_name(k))
            {
                remove_headers.push(n);
            }
        }
        let retry = self.retry(f, raw.retry, timeout);
        let rate_limit = self.rate_limit(f, raw.rate_limit, false);
        let fault = self.fault(f, raw.fault);
        Some(Route {
            name: name?,
            matcher: matcher?,
            backends,
            timeout,
            rewrite_prefix,
            set_headers,
            remove_headers,
            retry,
            rate_limit,
            fault,
        })
    }

    fn route_match(&mut self, f: &str, raw: wire::Match, svc: &Service) -> Option<RouteMatch> {
        let mut ok = true;
        let path = match raw.path {
            None => None,
            Some(p) => match (p.exact, p.prefix, p.regex) {
                (Some(e), None, None) if e.starts_with('/') => {
                    ok &= self.canonical(&format!("{f}.match.path.exact"), &e, &svc.paths);
                    Some(PathMatch::Exact(e))
                }
                (None, Some(p), None) if p.starts_with('/') => {
                    ok &= self.canonical(&format!("{f}.match.path.prefix"), &p, &svc.paths);
                    // `/api/` and `/api` mean the same segment prefix.
                    let trimmed = p.trim_end_matches('/');
                    Some(PathMatch::Prefix(if trimmed.is_empty() {
                        "/".to_owned()
                    } else {
                        trimmed.to_owned()
                    }))
                }
                (None, None, Some(r)) => match anchored(&r) {
                    Ok(re) => Some(PathMatch::Regex(re)),
                    Err(e) => {
                        self.err(format!("{f}.match.path.regex"), e);
                        ok = false;
                        None
                    }
                },
                (Some(v), None, None) | (None, Some(v), None) => {
                    self.err(
                        format!("{f}.match.path"),
                        format!("must start with '/', got {v:?}"),
                    );
                    ok = false;
                    None
                }
                _ => {
                    self.err(
                        format!("{f}.match.path"),
                        "give exactly one of exact, prefix, regex",
                    );
                    ok = false;
                    None
                }
            },
        };
        let method = match raw.method {
            None => None,
            Some(m) => match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                Ok(m) => Some(m),
                Err(_) => {
                    self.err(format!("{f}.match.method"), format!("bad method {m:?}"));
                    ok = false;
                    None
                }
            },
        };
        let mut headers = Vec::new();
        for (i, h) in raw.headers.into_iter().enumerate() {
            let fh = format!("{f}.match.headers[{i}]");
            let name = self.check(format!("{fh}.name"), header_name(&h.name));
            let value = match (h.exact, h.regex) {
                (None, None) => Some(HeaderValueMatch::Present),
                (Some(v), None) => self.check(
                    format!("{fh}.exact"),
                    HeaderValue::from_str(&v)
                        .map(HeaderValueMatch::Exact)
                        .map_err(|_| format!("bad header value {v:?}")),
                ),
                (None, Some(r)) => self.check(
                    format!("{fh}.regex"),
                    anchored(&r).map(HeaderValueMatch::Regex),
                ),
                (Some(_), Some(_)) => {
                    self.err(&fh, "give at most one of exact, regex");
                    None
                }
            };
            match (name, value) {
                (Some(name), Some(value)) => headers.push(HeaderMatch { name, value }),
                _ => ok = false,
            }
        }
        ok.then_some(RouteMatch {
            path,
            method,
            headers,
        })
    }
}

/// Which policy a route belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// One sidecar's: every route applies to its own app.
    Sidecar,
    /// The mesh's: a route may name the services whose sidecars get it.
    Mesh,
}

/// The callers two routes both apply to: `Some(None)` is every caller, `None` is nobody.
fn common_callers(a: &Option<Vec<String>>, b: &Option<Vec<String>>) -> Option<Option<Vec<String>>> {
    match (a, b) {
        (None, None) => Some(None),
        (Some(x), None) | (None, Some(x)) => Some(Some(x.clone())),
        (Some(x), Some(y)) => {
            let common: Vec<String> = x.iter().filter(|c| y.contains(c)).cloned().collect();
            (!common.is_empty()).then_some(Some(common))
        }
    }
}

fn for_callers(common: &Option<Vec<String>>) -> String {
    match common {
        None => String::new(),
        Some(c) => format!(" for callers {}", c.join(", ")),
    }
}

/// Two matchers with the same conditions (the later one can never win).
fn same_match(a: &RouteMatch, b: &RouteMatch) -> bool {
    let path_eq = match (&a.path, &b.path) {
        (None, None) => true,
        (Some(PathMatch::Exact(x)), Some(PathMatch::Exact(y))) => x == y,
        (Some(PathMatch::Prefix(x)), Some(PathMatch::Prefix(y))) => x == y,
        (Some(PathMatch::Regex(x)), Some(PathMatch::Regex(y))) => x.as_str() == y.as_str(),
        _ => false,
    };
    let headers_eq = a.headers.len() == b.headers.len()
        && a.headers.iter().zip(&b.headers).all(|(x, y)| {
            x.name == y.name
                && match (&x.value, &y.value) {
                    (HeaderValueMatch::Present, HeaderValueMatch::Present) => true,
                    (HeaderValueMatch::Exact(p), HeaderValueMatch::Exact(q)) => p == q,
                    (HeaderValueMatch::Regex(p), HeaderValueMatch::Regex(q)) => {
                        p.as_str() == q.as_str()
                    }
                    _ => false,
                }
        });
    path_eq && a.method == b.method && headers_eq
}

/// The longest regex a policy may give, in characters.
pub const MAX_REGEX_LEN: usize = 1024;
/// The most memory one compiled regex may take (`RegexBuilder::size_limit`): a short pattern
/// such as `(a{1000}){1000}` would otherwise compile to hundreds of megabytes in every
/// sidecar that receives it.
pub const MAX_REGEX_SIZE: usize = 1 << 20;

fn anchored(r: &str) -> Result<Regex, String> {
    if r.len() > MAX_REGEX_LEN {
        return Err(format!(
            "regex of {} characters is longer than the limit of {MAX_REGEX_LEN}",
            r.len()
        ));
    }
    RegexBuilder::new(&format!("^(?:{r})$"))
        .size_limit(MAX_REGEX_SIZE)
        .dfa_size_limit(MAX_REGEX_SIZE)
        .build()
        .map_err(|e| format!("bad regex {r:?}: {e}"))
}

/// The domain form of an `escaped_slashes` setting (absent is `reject`).
fn path_options(raw: Option<wire::EscapedSlashes>) -> path::PathOptions {
    path::PathOptions {
        keep_escaped_slashes: raw == Some(wire::EscapedSlashes::Keep),
    }
}

fn service_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !s.starts_with(['-', '.']);
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!("bad name {s:?}: use 1-63 of a-z, 0-9, '-', '.'"))
    }
}

fn host_name(s: &str) -> Result<String, String> {
    let h = s.to_ascii_lowercase();
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok {
        Ok(h)
    } else {
        Err(format!("bad host name {s:?}"))
    }
}

fn identity(s: &str) -> Result<Identity, String> {
    s.parse::<Identity>()
        .map_err(|e| format!("bad SPIFFE identity {s:?}: {e}"))
}

fn protocol(s: Option<&str>) -> Result<Protocol, String> {
    match s {
        None | Some("http") => Ok(Protocol::Http),
        Some("grpc") => Ok(Protocol::Grpc),
        Some("tcp") => Ok(Protocol::Tcp),
        Some(other) => Err(format!(
            "unknown protocol {other:?}; expected http, grpc or tcp"
        )),
    }
}

/// An OTLP/gRPC collector address: `http://host:port` (plaintext gRPC; TLS to the collector
/// is not supported).
fn collector_url(s: &str) -> Result<String, String> {
    let bad = |why: &str| format!("bad collector {s:?}: {why}; expected http://host:port");
    let uri: http::Uri = s.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(bad("TLS to the collector is not supported")),
        _ => return Err(bad("the scheme must be http")),
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    if authority.host().is_empty() {
        return Err(bad("no host"));
    }
    if authority.port_u16().is_none_or(|p| p == 0) {
        return Err(bad("no port"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad("gRPC needs no path"));
    }
    Ok(format!("http://{authority}"))
}

fn header_name(s: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(s.as_bytes()).map_err(|_| format!("bad header name {s:?}"))
}

fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .map_err(|_| format!("bad address {s:?}: expected ip:port"))
}

fn loopback_addr(s: &str) -> Result<SocketAddr, String> {
    let a = socket_addr(s)?;
    if a.ip().is_loopback() {
        Ok(a)
    } else {
        Err(format!("{s:?} must be a loopback address"))
    }
}

#[cfg(test)]
mod tests;
