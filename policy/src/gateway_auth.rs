//! The gateway's authentication, CORS and per-client limit settings: strict YAML wire types
//! ([`wire`]) turned into validated domain types with `TryFrom`, as the rest of the policy
//! model is, so a typo is an error with its file:line:col and never a silently open route.
//!
//! The gateway-wide part ([`GatewayAuth`], the gateway file's `auth`) names JWT providers and
//! API key sets; each route's `access` ([`RouteAccess`]) picks one provider or key set (or
//! says the route is public), its CORS rules and its per-client limit. The proxies whose
//! `X-Forwarded-For` is believed are the gateway file's own `trusted_proxies`. Routes name
//! providers, so a route is validated against the gateway part ([`RouteAccess::validate`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use http::header::HeaderName;
use http::Method;

use crate::FieldError;

/// Default interval between JWKS refreshes from a URL.
pub const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(300);
/// Default clock skew allowed on `exp` and `nbf`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// Default bound on the clients each route's limiter tracks (see `max_clients`).
pub const DEFAULT_MAX_CLIENTS: usize = 10_000;
/// The largest `max_clients` accepted: each tracked client costs about 100 bytes.
pub const MAX_MAX_CLIENTS: usize = 1_000_000;
/// The most origins, methods or headers one CORS rule may list.
pub const MAX_CORS_ITEMS: usize = 64;

/// The YAML as operators write it. Unknown fields are errors.
pub mod wire {
    use super::*;
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    /// The gateway-wide `auth` section.
    #[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct GatewayAuthFile {
        /// JWT issuers whose tokens routes may require.
        #[serde(default)]
        pub jwt_providers: Vec<JwtProviderFile>,
        /// API key sets routes may require.
        #[serde(default)]
        pub api_keys: Vec<ApiKeySetFile>,
        /// Clients each route's limiter tracks at most (default 10000).
        #[serde(default)]
        pub max_clients: Option<usize>,
    }

    /// One JWT issuer and where its keys are.
    #[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct JwtProviderFile {
        /// The name routes use.
        pub name: String,
        /// The exact `iss` required.
        pub issuer: String,
        /// `aud` must contain one of these (when any is given).
        #[serde(default)]
        pub audiences: Vec<String>,
        /// A JWKS file (read at start and on refresh).
        #[serde(default)]
        pub jwks_file: Option<String>,
        /// An `https://` JWKS URL.
        #[serde(default)]
        pub jwks_url: Option<String>,
        /// PEM roots for the JWKS URL (default: the system's).
        #[serde(default)]
        pub jwks_ca: Option<String>,
        /// How often keys are refreshed (default 5m).
        #[serde(default)]
        pub refresh: Option<String>,
        /// Clock skew allowed on `exp`/`nbf` (default 30s).
        #[serde(default)]
        pub leeway: Option<String>,
        /// Claim name → request header set from it.
        #[serde(default)]
        pub forward_claims: BTreeMap<String, String>,
        /// Forward the token to the service (default: stripped).
        #[serde(default)]
        pub keep_token: bool,
    }

    /// A set of API keys read from a file.
    #[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct ApiKeySetFile {
        /// The name routes use.
        pub name: String,
        /// The request header carrying the key (default `x-api-key`).
        #[serde(default)]
        pub header: Option<String>,
        /// YAML list of `{consumer, key}`.
        pub file: String,
        /// Request header set to the consumer's name (optional).
        #[serde(default)]
        pub forward_consumer: Option<String>,
    }

    /// A route's `access` block.
    #[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct RouteAccessFile {
        /// Who may call (absent: public).
        #[serde(default)]
        pub auth: Option<RouteAuthFile>,
        /// CORS rules answered at the gateway.
        #[serde(default)]
        pub cors: Option<CorsFile>,
        /// Per-client token bucket.
        #[serde(default)]
        pub client_limit: Option<ClientLimitFile>,
    }

    /// Exactly one of `jwt`, `api_key`, `public: true`, `deny: true`.
    #[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct RouteAuthFile {
        /// A JWT provider's name.
        #[serde(default)]
        pub jwt: Option<String>,
        /// An API key set's name.
        #[serde(default)]
        pub api_key: Option<String>,
        /// No authentication.
        #[serde(default)]
        pub public: bool,
        /// Refuse every request (503): what the control plane puts on a route whose
        /// attached policy is invalid, so a bad policy never leaves the route open.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        pub deny: bool,
    }

    /// CORS for one route.
    #[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct CorsFile {
        /// Exact origins, `https://*.example.test`, or `*`.
        pub allow_origins: Vec<String>,
        /// Methods a preflight may ask for (default GET, HEAD, POST).
        #[serde(default)]
        pub allow_methods: Vec<String>,
        /// Request headers a preflight may ask for.
        #[serde(default)]
        pub allow_headers: Vec<String>,
        /// Response headers scripts may read.
        #[serde(default)]
        pub expose_headers: Vec<String>,
        /// How long a browser caches a preflight answer.
        #[serde(default)]
        pub max_age: Option<String>,
        /// Allow cookies and `Authorization` (never with `*`).
        #[serde(default)]
        pub allow_credentials: bool,
    }

    /// A per-client token bucket.
    #[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct ClientLimitFile {
        /// `subject`, `consumer` or `client_ip`.
        pub key: String,
        /// Tokens added per second.
        pub per_second: f64,
        /// Bucket size (default: per_second rounded up, at least 1).
        #[serde(default)]
        pub burst: Option<u32>,
    }

    /// A document of its own: the gateway part and route access blocks by route name.
    #[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct AuthDocument {
        /// The gateway-wide part.
        #[serde(default)]
        pub auth: GatewayAuthFile,
        /// Route name → access block.
        #[serde(default)]
        pub routes: BTreeMap<String, RouteAccessFile>,
    }
}

/// The validated gateway-wide part. Paths are as written; [`GatewayAuth::resolve`] joins
/// relative ones to the config file's directory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GatewayAuth {
    /// JWT providers by name.
    pub providers: Vec<JwtProvider>,
    /// API key sets by name.
    pub api_keys: Vec<ApiKeySet>,
    /// Clients each route's limiter tracks at most.
    pub max_clients: usize,
}

/// Where a provider's keys come from.
#[derive(Debug, Clone, PartialEq)]
pub enum JwksSource {
    /// A local JWKS file.
    File(PathBuf),
    /// An HTTPS URL.
    Url {
        /// The whole URL.
        url: http::Uri,
        /// PEM roots (none: the system's).
        ca: Option<PathBuf>,
    },
}

/// One validated JWT provider.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtProvider {
    /// Its name.
    pub name: String,
    /// Required `iss`.
    pub issuer: String,
    /// Accepted `aud` values (empty: `aud` not checked).
    pub audiences: Vec<String>,
    /// Key source.
    pub jwks: JwksSource,
    /// Refresh interval.
    pub refresh: Duration,
    /// Skew allowed on `exp`/`nbf`.
    pub leeway: Duration,
    /// (claim, header) pairs.
    pub forward_claims: Vec<(String, HeaderName)>,
    /// Keep `Authorization` on the forwarded request.
    pub keep_token: bool,
}

/// One validated API key set.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeySet {
    /// Its name.
    pub name: String,
    /// The header carrying the key.
    pub header: HeaderName,
    /// The keys file.
    pub file: PathBuf,
    /// Header set to the consumer's name.
    pub forward_consumer: Option<HeaderName>,
}

/// Who may call a route.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RouteAuth {
    /// Anyone.
    #[default]
    Public,
    /// A valid JWT from this provider (index into [`GatewayAuth::providers`]).
    Jwt(usize),
    /// A key from this set (index into [`GatewayAuth::api_keys`]).
    ApiKey(usize),
    /// No one: every request is refused (`503`).
    Deny,
}

/// An allowed origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    /// `*`: any origin (never with credentials).
    Any,
    /// One origin, compared exactly (ASCII case-insensitively).
    Exact(String),
    /// `scheme://*.suffix[:port]`: any subdomain of `suffix` (not `suffix` itself).
    Subdomains {
        /// `https://`
        scheme: String,
        /// `.example.test`, or `.example.test:8443`.
        suffix: String,
    },
}

impl OriginPattern {
    /// Whether `origin` (the request's `Origin` header) is allowed.
    pub fn allows(&self, origin: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(o) => o.eq_ignore_ascii_case(origin),
            Self::Subdomains { scheme, suffix } => {
                let lower = origin.to_ascii_lowercase();
                let Some(host) = lower.strip_prefix(scheme.as_str()) else {
                    return false;
                };
                // One or more labels before the suffix, made of host characters only.
                host.strip_suffix(suffix.as_str()).is_some_and(|sub| {
                    !sub.is_empty()
                        && !sub.starts_with('.')
                        && sub
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                })
            }
        }
    }
}

/// Validated CORS rules.
#[derive(Debug, Clone, PartialEq)]
pub struct Cors {
    /// Allowed origins.
    pub origins: Vec<OriginPattern>,
    /// Allowed methods.
    pub methods: Vec<Method>,
    /// Allowed request headers (lower case).
    pub headers: Vec<HeaderName>,
    /// Exposed response headers.
    pub expose: Vec<HeaderName>,
    /// Preflight cache time.
    pub max_age: Option<Duration>,
    /// `Access-Control-Allow-Credentials: true`.
    pub credentials: bool,
}

/// What a per-client bucket is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKey {
    /// The JWT `sub` (the client IP for a request without one).
    Subject,
    /// The API key's consumer (the client IP for a request without one).
    Consumer,
    /// The client IP (from `X-Forwarded-For` only through the gateway's `trusted_proxies`).
    ClientIp,
}

/// A validated per-client limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClientLimit {
    /// The key.
    pub key: ClientKey,
    /// Refill rate.
    pub per_second: f64,
    /// Bucket size.
    pub burst: u32,
}

/// A route's validated access block (default: public, no CORS, no limit).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteAccess {
    /// Who may call.
    pub auth: RouteAuth,
    /// CORS, if any.
    pub cors: Option<Cors>,
    /// Per-client limit, if any.
    pub limit: Option<ClientLimit>,
}

/// Collects field errors under a path prefix.
struct Errors<'a> {
    prefix: &'a str,
    list: Vec<FieldError>,
}

impl Errors<'_> {
    fn push(&mut self, field: impl fmt::Display, reason: impl Into<String>) {
        self.list.push(FieldError {
            field: format!("{}{field}", self.prefix),
            reason: reason.into(),
        });
    }

    fn take<T>(&mut self, field: impl fmt::Display, r: Result<T, String>) -> Option<T> {
        r.map_err(|e| self.push(field, e)).ok()
    }

    fn done<T>(self, value: T) -> Result<T, Vec<FieldError>> {
        if self.list.is_empty() {
            Ok(value)
        } else {
            Err(self.list)
        }
    }
}

mod convert;
pub use convert::{parse_document, AuthConfigError, AuthDocument};
