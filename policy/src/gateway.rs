//! The gateway's static file (`weft-proxy --gateway FILE`): edge listeners, server
//! certificates by SNI, hygiene limits, trusted proxies, and routes by host and path to mesh
//! services. Wire types ([`GatewayFile`]) are strict (unknown fields are errors) and are
//! turned into the domain [`Gateway`] by [`load`] / [`parse`], which check every field against
//! the sidecar config's services and report each problem as `file:line:col: field: reason`.
//!
//! A gateway route uses the mesh routes' match and rewrite model ([`RouteMatch`], a prefix
//! rewrite, request header edits): the same validator checks them.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use crate::fields::{host_name, parse_duration, socket_addr};
use crate::model::{RouteMatch, Service};
use crate::{locate, wire, FieldError, Validator};

/// The gateway file as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayFile {
    /// Listener addresses.
    pub listen: ListenFile,
    /// Edge TLS: certificates, versions, reloads.
    pub tls: TlsFile,
    /// `Strict-Transport-Security` on HTTPS responses (default: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsts: Option<HstsFile>,
    /// Size and time limits (defaults in [`Limits`]).
    #[serde(default)]
    pub limits: LimitsFile,
    /// Peers (CIDRs) whose `X-Forwarded-For` / `Forwarded` are kept and appended to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
    /// Routes, first match wins.
    #[serde(default)]
    pub routes: Vec<RouteFile>,
    /// JWT providers and API key sets routes may require ([`crate::gateway_auth`]).
    #[serde(default, skip_serializing_if = "is_default_auth")]
    pub auth: crate::gateway_auth::wire::GatewayAuthFile,
}

fn is_default_auth(a: &crate::gateway_auth::wire::GatewayAuthFile) -> bool {
    *a == crate::gateway_auth::wire::GatewayAuthFile::default()
}

/// Listener addresses as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenFile {
    /// The HTTPS listener (`ip:port`; port 0: the kernel's choice).
    pub https: String,
    /// A plain-HTTP listener that only redirects (308) to HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_redirect: Option<String>,
    /// The HTTPS port redirects name (default: the HTTPS listener's bound port; 443 is left
    /// out of the URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_port: Option<u16>,
}

/// Edge TLS as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// `"1.2"` (default) or `"1.3"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<String>,
    /// How often certificate files are checked for changes (default 2s; 100ms to 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload_interval: Option<String>,
    /// Server certificates.
    pub certificates: Vec<CertFile>,
}

/// One server certificate as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertFile {
    /// SNI names it serves: `api.example.test` or `*.example.test` (one label).
    pub hosts: Vec<String>,
    /// PEM chain, leaf first (relative paths: from the gateway file's directory).
    pub cert: String,
    /// PEM private key.
    pub key: String,
    /// Served to clients whose SNI matches no certificate (or who send none). At most one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub default: bool,
}

/// HSTS as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HstsFile {
    /// `max-age` (e.g. `365d`).
    pub max_age: String,
    /// Adds `includeSubDomains`.
    #[serde(default)]
    pub include_subdomains: bool,
    /// Adds `preload`.
    #[serde(default)]
    pub preload: bool,
}

/// Limits as written (each optional).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Largest request body in bytes.
    pub max_body_bytes: Option<u64>,
    /// Largest request header block (names and values) in bytes.
    pub max_header_bytes: Option<usize>,
    /// TLS handshake time.
    pub handshake_timeout: Option<String>,
    /// Time allowed for each read of the request header.
    pub header_timeout: Option<String>,
    /// Time allowed for each read of the request body.
    pub body_timeout: Option<String>,
    /// Idle time of a kept-alive client connection between requests.
    pub idle_timeout: Option<String>,
    /// Most client connections held at once per listener.
    pub max_connections: Option<usize>,
}

/// One route as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// Route name (metrics label, access log, errors).
    pub name: String,
    /// Host names it takes (`*.example.test` allowed); default: any host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Path, method and header conditions, as for mesh routes.
    #[serde(default, rename = "match")]
    pub matches: wire::Match,
    /// The mesh service requests go to (a `services` entry of the sidecar config); empty
    /// with `backends`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
    /// A weighted split between mesh services instead of one `service`: each request goes to
    /// one of them in proportion to its weight (a canary across Services, as a Gateway API
    /// route's weighted `backendRefs` asks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<BackendFile>,
    /// Prefix rewrite (needs `match.path.prefix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<wire::Rewrite>,
    /// Request header edits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<wire::HeaderEdits>,
    /// Authentication, CORS and per-client limit ([`crate::gateway_auth`]; absent: public).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<crate::gateway_auth::wire::RouteAccessFile>,
}

/// One service of a route's weighted split.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendFile {
    /// The mesh service (a `services` entry of the sidecar config).
    pub service: String,
    /// Its share: requests go to it with probability `weight / sum of weights`.
    pub weight: u32,
}

/// Where a route's requests go: one mesh service, or a weighted split between several.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backends {
    /// The services with weight above 0, and each one's cumulative weight (the last is the
    /// total), so a pick is one binary search.
    services: Vec<(String, u64)>,
}

impl Backends {
    /// All requests to `service`.
    pub fn one(service: impl Into<String>) -> Self {
        Backends {
            services: vec![(service.into(), 1)],
        }
    }

    /// A split from services with cumulative weights (ascending, each step above 0).
    pub(crate) fn from_cumulative(services: Vec<(String, u64)>) -> Self {
        Backends { services }
    }

    /// The services in order, with their weights (each above 0).
    pub fn weighted(&self) -> impl Iterator<Item = (&str, u64)> {
        let mut before = 0;
        self.services.iter().map(move |(s, upto)| {
            let w = upto - before;
            before = *upto;
            (s.as_str(), w)
        })
    }

    /// The service for a request drawn `r` (uniform over `u64`): each service's share of
    /// draws is its weight over the total.
    pub fn pick(&self, r: u64) -> &str {
        let total = self.services.last().map_or(1, |s| s.1);
        // Multiply-shift maps `r` onto [0, total) without the bias of `r % total`.
        let at = ((u128::from(r) * u128::from(total)) >> 64) as u64;
        let i = self.services.partition_point(|s| s.1 <= at);
        self.services
            .get(i)
            .or(self.services.last())
            .map_or("", |s| s.0.as_str())
    }
}

/// A host name or a one-label wildcard (`*.example.test` matches `a.example.test`, not
/// `example.test` nor `a.b.example.test`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// The whole name, lower case.
    Exact(String),
    /// The suffix after `*`, with its leading dot (`.example.test`).
    Wildcard(String),
}

impl HostPattern {
    /// Whether `host` (lower case, no port) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Wildcard(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        }
    }
}

/// An IP network (`10.0.0.0/8`, `::1/128`; a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// Network address.
    pub addr: IpAddr,
    /// Prefix length.
    pub bits: u8,
}

impl Cidr {
    /// Whether `ip` lies in the network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, bits) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = ip
            .parse()
            .map_err(|_| format!("bad CIDR {s:?}: expected ip/prefix"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = if bits.is_empty() {
            max
        } else {
            bits.parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("bad CIDR {s:?}: prefix must be 0-{max}"))?
        };
        Ok(Cidr { addr, bits })
    }
}

/// Lowest TLS version offered to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

/// A validated server certificate entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeCert {
    /// SNI names.
    pub hosts: Vec<HostPattern>,
    /// Chain file.
    pub cert: PathBuf,
    /// Key file.
    pub key: PathBuf,
    /// The certificate for unknown names.
    pub default: bool,
}

/// HSTS header settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hsts {
    /// The header's value, ready to send.
    pub value: HeaderValue,
}

/// Size and time limits, every one bounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Default 1 MiB.
    pub max_body_bytes: u64,
    /// Default 16 KiB (Pingora itself refuses more than 1 MiB or 256 headers).
    pub max_header_bytes: usize,
    /// Default 10s.
    pub handshake_timeout: Duration,
    /// Default 10s.
    pub header_timeout: Duration,
    /// Default 30s.
    pub body_timeout: Duration,
    /// Default 60s.
    pub idle_timeout: Duration,
    /// Default 10000.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 1 << 20,
            max_header_bytes: 16 << 10,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
        }
    }
}

/// A validated gateway route.
#[derive(Debug)]
pub struct GatewayRoute {
    /// Name.
    pub name: String,
    /// Hosts (empty: any).
    pub hosts: Vec<HostPattern>,
    /// Conditions.
    pub matcher: RouteMatch,
    /// The mesh service, or the weighted split, requests go to.
    pub backends: Backends,
    /// New path prefix for the matched prefix.
    pub rewrite_prefix: Option<String>,
    /// Headers set.
    pub set_headers: Vec<(HeaderName, HeaderValue)>,
    /// Headers removed.
    pub remove_headers: Vec<HeaderName>,
    /// Authentication, CORS and per-client limit.
    pub access: crate::gateway_auth::RouteAccess,
}

/// The validated gateway.
#[derive(Debug)]
pub struct Gateway {
    /// HTTPS listener.
    pub https: SocketAddr,
    /// Redirect listener.
    pub http_redirect: Option<SocketAddr>,
    /// Port named in redirects, when not the HTTPS listener's.
    pub redirect_port: Option<u16>,
    /// Lowest TLS version.
    pub min_tls: TlsVersion,
    /// Certificate file poll period.
    pub reload_interval: Duration,
    /// Certificates, in file order.
    pub certificates: Vec<EdgeCert>,
    /// HSTS.
    pub hsts: Option<Hsts>,
    /// Limits.
    pub limits: Limits,
    /// Trusted proxies.
    pub trusted_proxies: Vec<Cidr>,
    /// Routes, first match wins.
    pub routes: Vec<GatewayRoute>,
    /// JWT providers and API key sets, paths resolved.
    pub auth: crate::gateway_auth::GatewayAuth,
}

/// One problem with its place in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// `line:col` when found.
    pub at: Option<locate::Location>,
    /// The field and reason.
    pub error: FieldError,
}

/// Why a gateway file was refused.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Unreadable.
    #[error("{}: cannot read: {source}", .file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Syntax, unknown field, wrong type.
    #[error("{}:{location}{reason}", .file.display())]
    Syntax {
        /// The file.
        file: PathBuf,
        /// `line:col: ` when known.
        location: String,
        /// The parser's words.
        reason: String,
    },
    /// Fields that parse but are wrong, each with its line.
    #[error("{}", render(.file, .errors))]
    Invalid {
        /// The file.
        file: PathBuf,
        /// Every problem.
        errors: Vec<Located>,
    },
}

fn render(file: &Path, errors: &[Located]) -> String {
    let lines: Vec<String> = errors
        .iter()
        .map(|e| match e.at {
            Some(l) => format!("{}:{}:{}: {}", file.display(), l.line, l.column, e.error),
            None => format!("{}: {}", file.display(), e.error),
        })
        .collect();
    lines.join("\n")
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(s) => write!(f, "*{s}"),
        }
    }
}

/// Read and validate the gateway file at `path` against the sidecar's `services`.
pub fn load(path: &Path, services: &[Service]) -> Result<Gateway, GatewayError> {
    let text = std::fs::read_to_string(path).map_err(|source| GatewayError::Read {
        file: path.to_owned(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, path, base, services)
}

/// Validate gateway text; `file` names it in errors, `base` resolves relative paths.
pub fn parse(
    text: &str,
    file: &Path,
    base: &Path,
    services: &[Service],
) -> Result<Gateway, GatewayError> {
    let raw: GatewayFile = serde_yaml::from_str(text).map_err(|e| GatewayError::Syntax {
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
    let gw = v.gateway(raw, services);
    match gw {
        Some(g) if v.errors.is_empty() => Ok(g),
        _ => Err(GatewayError::Invalid {
            file: file.to_owned(),
            errors: v
                .errors
                .into_iter()
                .map(|error| Located {
                    at: locate::locate(text, &error.field),
                    error,
                })
                .collect(),
        }),
    }
}

/// Check gateway routes on their own against the mesh services they name (the control
/// plane's translation of Gateway API routes): the checks [`parse`] makes on `routes`, with
/// field paths `routes[i]...`. No route takes an `access` section here.
pub fn validate_routes(
    routes: Vec<RouteFile>,
    services: Vec<wire::Service>,
) -> Result<(), Vec<FieldError>> {
    let mut v = Validator {
        errors: Vec::new(),
        base: Path::new("."),
        dynamic_endpoints: true,
    };
    let (services, _) = v.services(services, &[]);
    // The services were checked with the mesh: only the routes' errors count here.
    v.errors.clear();
    v.gateway_routes(
        routes,
        &services,
        &crate::gateway_auth::GatewayAuth::default(),
    );
    if v.errors.is_empty() {
        Ok(())
    } else {
        Err(v.errors)
    }
}

/// A SNI or route host: a name, or `*.` and a name.
pub fn host_pattern(s: &str) -> Result<HostPattern, String> {
    match s.strip_prefix("*.") {
        Some(rest) => {
            let h = host_name(rest)?;
            Ok(HostPattern::Wildcard(format!(".{h}")))
        }
        None if s.contains('*') => Err(format!(
            "bad host {s:?}: a wildcard is `*.` followed by a name"
        )),
        None => host_name(s).map(HostPattern::Exact),
    }
}

fn bounded(s: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < min || d > max {
        return Err(format!("{s:?} must be between {min:?} and {max:?}"));
    }
    Ok(d)
}

#[path = "gateway_validate.rs"]
mod validate;

#[cfg(test)]
#[path = "gateway_tests.rs"]
mod tests;
