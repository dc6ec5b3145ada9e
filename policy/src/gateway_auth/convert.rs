//! Wire → domain for the gateway's auth settings, and the errors an operator reads
//! (`file:line:col: field: reason`).

use std::collections::HashSet;
use std::path::Path;

use super::wire::*;
use super::*;
use crate::fields::header_name;
use crate::{locate, parse_duration};

impl TryFrom<GatewayAuthFile> for GatewayAuth {
    type Error = Vec<FieldError>;

    fn try_from(raw: GatewayAuthFile) -> Result<Self, Self::Error> {
        let mut e = Errors {
            prefix: "",
            list: Vec::new(),
        };
        let mut names = HashSet::new();
        let mut providers = Vec::new();
        for (i, p) in raw.jwt_providers.into_iter().enumerate() {
            if !names.insert(p.name.clone()) {
                e.push(format_args!("jwt_providers[{i}].name"), "duplicate name");
            }
            let mut pe = Errors {
                prefix: &format!("jwt_providers[{i}]."),
                list: Vec::new(),
            };
            if let Some(p) = provider(p, &mut pe) {
                providers.push(p);
            }
            e.list.append(&mut pe.list);
        }
        let mut api_keys = Vec::new();
        for (i, k) in raw.api_keys.into_iter().enumerate() {
            if !names.insert(k.name.clone()) {
                e.push(format_args!("api_keys[{i}].name"), "duplicate name");
            }
            let header = e.take(
                format_args!("api_keys[{i}].header"),
                header_name(k.header.as_deref().unwrap_or("x-api-key")),
            );
            let forward = match k.forward_consumer.as_deref() {
                Some(h) => e
                    .take(
                        format_args!("api_keys[{i}].forward_consumer"),
                        header_name(h),
                    )
                    .map(Some),
                None => Some(None),
            };
            if k.file.is_empty() {
                e.push(
                    format_args!("api_keys[{i}].file"),
                    "a keys file is required",
                );
            }
            if let (Some(header), Some(forward_consumer)) = (header, forward) {
                api_keys.push(ApiKeySet {
                    name: k.name,
                    header,
                    file: PathBuf::from(k.file),
                    forward_consumer,
                });
            }
        }
        let max_clients = raw.max_clients.unwrap_or(DEFAULT_MAX_CLIENTS);
        if max_clients == 0 || max_clients > MAX_MAX_CLIENTS {
            e.push(
                "max_clients",
                format!("{max_clients} is outside 1 to {MAX_MAX_CLIENTS}"),
            );
        }
        e.done(GatewayAuth {
            providers,
            api_keys,
            max_clients,
        })
    }
}

fn provider(p: JwtProviderFile, e: &mut Errors<'_>) -> Option<JwtProvider> {
    if p.issuer.is_empty() {
        e.push(
            "issuer",
            "an issuer is required (the exact `iss` of the tokens)",
        );
    }
    let jwks = match (p.jwks_file, p.jwks_url) {
        (Some(f), None) => Some(JwksSource::File(PathBuf::from(f))),
        (None, Some(u)) => e
            .take("jwks_url", https_url(&u))
            .map(|url| JwksSource::Url {
                url,
                ca: p.jwks_ca.map(PathBuf::from),
            }),
        _ => {
            e.push("jwks_file", "give exactly one of jwks_file and jwks_url");
            None
        }
    };
    let refresh = match p.refresh.as_deref() {
        Some(s) => e.take("refresh", parse_duration(s)).filter(|d| {
            let ok = *d >= Duration::from_secs(1);
            if !ok {
                e.push("refresh", format!("{s:?} is shorter than 1s"));
            }
            ok
        }),
        None => Some(DEFAULT_JWKS_REFRESH),
    };
    let leeway = match p.leeway.as_deref() {
        Some(s) => e.take("leeway", parse_duration(s)),
        None => Some(DEFAULT_LEEWAY),
    };
    let mut forward_claims = Vec::new();
    for (claim, header) in p.forward_claims {
        if let Some(h) = e.take(format_args!("forward_claims.{claim}"), header_name(&header)) {
            forward_claims.push((claim, h));
        }
    }
    Some(JwtProvider {
        name: p.name,
        issuer: p.issuer,
        audiences: p.audiences,
        jwks: jwks?,
        refresh: refresh?,
        leeway: leeway?,
        forward_claims,
        keep_token: p.keep_token,
    })
}

fn https_url(s: &str) -> Result<http::Uri, String> {
    let url: http::Uri = s.parse().map_err(|_| format!("bad URL {s:?}"))?;
    if url.scheme_str() != Some("https") || url.host().is_none() {
        return Err(format!("{s:?} must be an https:// URL with a host"));
    }
    Ok(url)
}

impl GatewayAuth {
    /// Joins relative key and JWKS paths to `base` (the config file's directory).
    pub fn resolve(mut self, base: &Path) -> Self {
        for p in &mut self.providers {
            match &mut p.jwks {
                JwksSource::File(f) => *f = base.join(&*f),
                JwksSource::Url { ca: Some(c), .. } => *c = base.join(&*c),
                JwksSource::Url { ca: None, .. } => {}
            }
        }
        for k in &mut self.api_keys {
            k.file = base.join(&k.file);
        }
        self
    }
}

impl RouteAccess {
    /// Validate a route's access block against the gateway part it names providers from;
    /// errors are prefixed with `prefix` (e.g. `routes[2].access.`).
    pub fn validate(
        raw: RouteAccessFile,
        gateway: &GatewayAuth,
        prefix: &str,
    ) -> Result<Self, Vec<FieldError>> {
        let mut e = Errors {
            prefix,
            list: Vec::new(),
        };
        let auth = route_auth(raw.auth.unwrap_or_default(), gateway, &mut e);
        let cors = raw.cors.and_then(|c| cors(c, &mut e));
        let limit = raw
            .client_limit
            .and_then(|l| client_limit(l, &auth, &mut e));
        e.done(RouteAccess { auth, cors, limit })
    }
}

fn route_auth(a: RouteAuthFile, g: &GatewayAuth, e: &mut Errors<'_>) -> RouteAuth {
    if a.deny {
        if a.jwt.is_some() || a.api_key.is_some() || a.public {
            e.push(
                "auth",
                "give exactly one of jwt, api_key, public: true, deny: true",
            );
        }
        return RouteAuth::Deny;
    }
    match (a.jwt, a.api_key, a.public) {
        (Some(name), None, false) => match g.providers.iter().position(|p| p.name == name) {
            Some(i) => RouteAuth::Jwt(i),
            None => {
                e.push("auth.jwt", format!("no jwt_provider is named {name:?}"));
                RouteAuth::Public
            }
        },
        (None, Some(name), false) => match g.api_keys.iter().position(|k| k.name == name) {
            Some(i) => RouteAuth::ApiKey(i),
            None => {
                e.push("auth.api_key", format!("no api_keys set is named {name:?}"));
                RouteAuth::Public
            }
        },
        (None, None, _) => RouteAuth::Public,
        _ => {
            e.push(
                "auth",
                "give exactly one of jwt, api_key, public: true, deny: true",
            );
            RouteAuth::Public
        }
    }
}

fn cors(c: CorsFile, e: &mut Errors<'_>) -> Option<Cors> {
    for (field, n) in [
        ("cors.allow_origins", c.allow_origins.len()),
        ("cors.allow_methods", c.allow_methods.len()),
        ("cors.allow_headers", c.allow_headers.len()),
        ("cors.expose_headers", c.expose_headers.len()),
    ] {
        if n > MAX_CORS_ITEMS {
            e.push(field, format!("{n} items; the limit is {MAX_CORS_ITEMS}"));
        }
    }
    if c.allow_origins.is_empty() {
        e.push("cors.allow_origins", "at least one origin is required");
    }
    let origins: Vec<_> = (c.allow_origins.iter().enumerate())
        .filter_map(|(i, o)| e.take(format_args!("cors.allow_origins[{i}]"), origin(o)))
        .collect();
    if c.allow_credentials && origins.contains(&OriginPattern::Any) {
        e.push(
            "cors.allow_credentials",
            "\"*\" cannot be combined with allow_credentials: list the origins",
        );
    }
    let methods_raw = if c.allow_methods.is_empty() {
        vec!["GET".into(), "HEAD".into(), "POST".into()]
    } else {
        c.allow_methods
    };
    let methods = (methods_raw.iter().enumerate())
        .filter_map(|(i, m)| {
            let r = Method::from_bytes(m.as_bytes()).map_err(|_| format!("bad method {m:?}"));
            e.take(format_args!("cors.allow_methods[{i}]"), r)
        })
        .collect();
    let headers = names(&c.allow_headers, "cors.allow_headers", e);
    let expose = names(&c.expose_headers, "cors.expose_headers", e);
    let max_age = match c.max_age.as_deref() {
        Some(s) => Some(e.take("cors.max_age", parse_duration(s))?),
        None => None,
    };
    Some(Cors {
        origins,
        methods,
        headers,
        expose,
        max_age,
        credentials: c.allow_credentials,
    })
}

fn names(list: &[String], field: &str, e: &mut Errors<'_>) -> Vec<HeaderName> {
    (list.iter().enumerate())
        .filter_map(|(i, h)| e.take(format_args!("{field}[{i}]"), header_name(h)))
        .collect()
}

fn origin(s: &str) -> Result<OriginPattern, String> {
    if s == "*" {
        return Ok(OriginPattern::Any);
    }
    let lower = s.to_ascii_lowercase();
    let (scheme, rest) = match lower.split_once("://") {
        Some((sc, rest)) if sc == "http" || sc == "https" => (format!("{sc}://"), rest),
        _ => {
            return Err(format!(
                "{s:?} must be \"*\" or start with http:// or https://"
            ))
        }
    };
    let valid = |h: &str| {
        !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
    };
    if let Some(suffix) = rest.strip_prefix('*') {
        if !suffix.starts_with('.') || suffix.len() < 2 || !valid(suffix) || suffix.contains('*') {
            return Err(format!("{s:?}: a wildcard is `scheme://*.domain`"));
        }
        return Ok(OriginPattern::Subdomains {
            scheme,
            suffix: suffix.to_owned(),
        });
    }
    if !valid(rest) {
        return Err(format!(
            "{s:?} is not an origin (scheme://host[:port], no path)"
        ));
    }
    Ok(OriginPattern::Exact(lower))
}

fn client_limit(l: ClientLimitFile, auth: &RouteAuth, e: &mut Errors<'_>) -> Option<ClientLimit> {
    let key = match (l.key.as_str(), auth) {
        ("subject", RouteAuth::Jwt(_)) => ClientKey::Subject,
        ("consumer", RouteAuth::ApiKey(_)) => ClientKey::Consumer,
        ("client_ip", _) => ClientKey::ClientIp,
        ("subject", _) => return bad(e, "`subject` needs a route with auth.jwt"),
        ("consumer", _) => return bad(e, "`consumer` needs a route with auth.api_key"),
        (other, _) => {
            return bad(
                e,
                &format!("{other:?}: expected subject, consumer or client_ip"),
            )
        }
    };
    if !(l.per_second.is_finite() && l.per_second > 0.0 && l.per_second <= 1e6) {
        e.push(
            "client_limit.per_second",
            format!("{} is outside (0, 1000000]", l.per_second),
        );
        return None;
    }
    let burst = l.burst.unwrap_or(l.per_second.ceil() as u32).max(1);
    Some(ClientLimit {
        key,
        per_second: l.per_second,
        burst,
    })
}

fn bad<T>(e: &mut Errors<'_>, reason: &str) -> Option<T> {
    e.push("client_limit.key", reason);
    None
}

/// Why an auth document was refused; each line reads `file:line:col: field: reason`.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// Unreadable file.
    #[error("{}: cannot read: {source}", .file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// YAML syntax, unknown field or wrong type.
    #[error("{}:{line}:{column}: {reason}", .file.display())]
    Syntax {
        /// The file.
        file: PathBuf,
        /// Line (0 when unknown).
        line: usize,
        /// Column.
        column: usize,
        /// The parser's words.
        reason: String,
    },
    /// Fields that parse but make no sense.
    #[error("{}", .lines.join("\n"))]
    Invalid {
        /// One rendered line per problem.
        lines: Vec<String>,
    },
}

/// A validated [`wire::AuthDocument`].
#[derive(Debug, Clone, PartialEq)]
pub struct AuthDocument {
    /// The gateway part, paths resolved.
    pub gateway: GatewayAuth,
    /// Route name → access.
    pub routes: BTreeMap<String, RouteAccess>,
}

/// Parse and validate an auth document; relative paths resolve against `base`.
pub fn parse_document(
    text: &str,
    file: &Path,
    base: &Path,
) -> Result<AuthDocument, AuthConfigError> {
    let raw: wire::AuthDocument = serde_yaml::from_str(text).map_err(|e| {
        let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        AuthConfigError::Syntax {
            file: file.to_owned(),
            line,
            column,
            reason: e.to_string(),
        }
    })?;
    let render = |errors: Vec<FieldError>, under: &str| -> Vec<String> {
        (errors.into_iter())
            .map(|fe| {
                let path = format!("{under}{}", fe.field);
                let (l, c) = locate(text, &path).map_or((0, 0), |l| (l.line, l.column));
                format!("{}:{l}:{c}: {path}: {}", file.display(), fe.reason)
            })
            .collect()
    };
    let gateway = GatewayAuth::try_from(raw.auth)
        .map_err(|errs| AuthConfigError::Invalid {
            lines: render(errs, "auth."),
        })?
        .resolve(base);
    let mut routes = BTreeMap::new();
    let mut lines = Vec::new();
    for (name, access) in raw.routes {
        match RouteAccess::validate(access, &gateway, "") {
            Ok(a) => {
                routes.insert(name, a);
            }
            Err(errs) => lines.extend(render(errs, &format!("routes.{name}."))),
        }
    }
    if !lines.is_empty() {
        return Err(AuthConfigError::Invalid { lines });
    }
    Ok(AuthDocument { gateway, routes })
}

#[cfg(test)]
mod tests;
