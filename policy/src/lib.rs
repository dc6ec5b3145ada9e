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
mod detection;
mod fields;
pub mod gateway;
pub mod gateway_auth;
pub mod lenient;
mod locate;
mod matching;
pub mod model;
pub mod path;
mod resilience;
mod routes;
mod sidecar;
pub mod wire;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use detection::{
    DEFAULT_DETECT_TIMEOUT, DEFAULT_OPAQUE_PORTS, DETECT_TIMEOUT_RANGE, MAX_OPAQUE_PORTS,
};
pub use fields::{parse_duration, MAX_DURATION, MAX_REGEX_LEN, MAX_REGEX_SIZE};
pub use locate::{locate, Location};
pub use matching::prefix_matches;
pub use model::*;
pub use resilience::RETRY_CONDITIONS;

use fields::*;
use routes::Scope;

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

    fn service(&mut self, f: &str, raw: wire::Service) -> Option<Service> {
        let name = self.check(format!("{f}.name"), service_name(&raw.name));
        let identity = self.check(format!("{f}.identity"), identity(&raw.identity));
        let protocol = self.check(
            format!("{f}.protocol"),
            Protocol::from_field(raw.protocol.as_deref()),
        );
        let lb = self.check(
            format!("{f}.load_balancer"),
            LbPolicy::from_field(raw.load_balancer.as_deref()),
        );
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
        let opaque_ports = self.opaque_ports(
            &format!("{f}.opaque_ports"),
            raw.opaque_ports.unwrap_or_default(),
        );
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
            opaque_ports,
        })
    }
}

#[cfg(test)]
mod tests;
