//! The gateway's per-route admission: CORS preflight, authentication (JWT or API key) and
//! per-client rate limits, in that order, as one stage the gateway's request path calls once
//! per request ([`RouteGuard::admit`]).
//!
//! A preflight is answered before authentication because browsers send preflights without
//! credentials. Every answer the stage makes (401, 403, 429) carries the route's CORS
//! headers, so a page's script can read why it was refused.
//!
//! - [`jwk`] / [`jwt`]: keys and token verification (pure).
//! - [`jwks`] / [`fetch`]: the key cache, its refresh, and reading a JWKS file or URL.
//! - [`apikey`]: API keys compared in constant time.
//! - [`cors`], [`limit`].
//!
//! The gateway's [`admit`](crate::gateway::admit) step calls it and writes its answers.

pub mod apikey;
pub mod cors;
pub mod fetch;
pub mod jwk;
pub mod jwks;
pub mod jwt;
pub mod limit;
pub mod refresh;

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use weft_policy::gateway_auth::{
    ApiKeySet, ClientKey, GatewayAuth, JwtProvider, RouteAccess, RouteAuth,
};
use weft_resilience::{Clock, Nanos};

use self::apikey::ApiKeys;
use self::cors::Headers;
use self::jwks::KeyCache;
use self::jwt::JwtError;
use self::limit::ClientBuckets;

/// The realm named in `WWW-Authenticate`.
pub const REALM: &str = "weft";

/// A response the gateway makes itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// Status.
    pub status: StatusCode,
    /// The access log's response flag (empty for a preflight answered 204).
    pub flag: &'static str,
    /// Why, in words (the body of a refusal).
    pub reason: String,
    /// Headers, `x-weft-error` included when the answer is a refusal.
    pub headers: Headers,
    /// How authentication ended, when it ran.
    pub auth: Option<AuthOutcome>,
}

/// How a route's authentication ended (`weft_gateway_auth_total`; both words from fixed sets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthOutcome {
    /// `jwt` or `api_key`.
    pub method: &'static str,
    /// `accepted`, or why not: `missing`, `unknown_key` (API keys), or a token's fault
    /// ([`JwtError::label`]).
    pub result: &'static str,
}

impl Answer {
    /// An answer; a non-empty `flag` adds `x-weft-error: <flag>: <reason>`.
    pub fn new(status: StatusCode, flag: &'static str, reason: &str) -> Self {
        let mut headers = Vec::new();
        if !flag.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&format!("{flag}: {reason}")) {
                headers.push((HeaderName::from_static(crate::errors::ERROR_HEADER), v));
            }
        }
        Self {
            status,
            flag,
            reason: reason.to_owned(),
            headers,
            auth: None,
        }
    }

    /// The same with more headers.
    pub fn with(mut self, headers: Headers) -> Self {
        self.headers.extend(headers);
        self
    }
}

/// Who the request was authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A JWT's `sub` (empty when the token has none).
    Subject(String),
    /// An API key's consumer.
    Consumer(String),
}

/// A request the stage let through, and what to change on it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Forward {
    /// Who it is, when the route authenticates.
    pub principal: Option<Principal>,
    /// Request headers to remove (before `set` is applied).
    pub remove: Vec<HeaderName>,
    /// Request headers to set (claims, consumer).
    pub set: Headers,
    /// Headers to add to the response (CORS, `RateLimit`).
    pub response: Headers,
    /// How authentication ended, when the route authenticates.
    pub auth: Option<AuthOutcome>,
}

/// The stage's decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Forward the request, edited.
    Forward(Forward),
    /// Answer it here.
    Answer(Answer),
}

/// What the stage reads of a request.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    /// Method.
    pub method: &'a Method,
    /// Headers.
    pub headers: &'a HeaderMap,
    /// The client's address (the peer's, or from a trusted proxy's `X-Forwarded-For`, as the
    /// gateway's hygiene step derived it).
    pub client_ip: Option<IpAddr>,
}

/// Why the stage could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A provider's key source is unusable (bad CA file).
    #[error("jwt provider {name}: {reason}")]
    Provider {
        /// Provider.
        name: String,
        /// Why.
        reason: String,
    },
    /// A keys file is unusable.
    #[error("api key set {name}: {source}")]
    Keys {
        /// Set.
        name: String,
        /// Why, with file:line:col.
        source: apikey::KeysError,
    },
}

/// The gateway-wide part: providers with their key caches, and key sets.
#[derive(Debug, Default)]
pub struct AuthStage {
    providers: Vec<(JwtProvider, Arc<KeyCache>)>,
    key_sets: Vec<(ApiKeySet, ApiKeys)>,
    max_clients: usize,
}

impl AuthStage {
    /// Build from validated config: reads API key files and prepares key fetchers (call
    /// [`AuthStage::load_keys`] and spawn [`AuthStage::refreshers`] to fill the caches).
    pub fn build(cfg: &GatewayAuth, clock: Clock) -> Result<Self, BuildError> {
        Self::rebuild(cfg, clock, None)
    }

    /// [`AuthStage::build`] for a reloaded config: a provider equal to one of `prev` keeps
    /// its key cache (its keys, its fetcher), so a reload costs its tokens nothing.
    pub fn rebuild(
        cfg: &GatewayAuth,
        clock: Clock,
        prev: Option<&AuthStage>,
    ) -> Result<Self, BuildError> {
        let mut providers = Vec::new();
        for p in &cfg.providers {
            let kept = prev.and_then(|s| s.providers.iter().find(|(q, _)| q == p));
            if let Some((_, cache)) = kept {
                providers.push((p.clone(), Arc::clone(cache)));
                continue;
            }
            let fetcher = fetch::fetcher(&p.jwks).map_err(|reason| BuildError::Provider {
                name: p.name.clone(),
                reason,
            })?;
            let cache = Arc::new(KeyCache::new(&p.name, fetcher, clock));
            providers.push((p.clone(), cache));
        }
        let mut key_sets = Vec::new();
        for k in &cfg.api_keys {
            let keys = ApiKeys::load(&k.file).map_err(|source| BuildError::Keys {
                name: k.name.clone(),
                source,
            })?;
            key_sets.push((k.clone(), keys));
        }
        Ok(Self {
            providers,
            key_sets,
            max_clients: cfg.max_clients,
        })
    }

    /// Fetch every provider's keys once; failures are logged and retried by the refreshers
    /// (tokens of that provider fail with 401 until keys arrive).
    pub async fn load_keys(&self) {
        for (p, cache) in &self.providers {
            if let Err(e) = cache.refresh().await {
                log::warn!("jwt provider {}: no keys yet: {e}", p.name);
            }
        }
    }

    /// The refresh loops, one per provider, to spawn on the gateway's runtime.
    pub fn refreshers(&self) -> Vec<impl std::future::Future<Output = ()> + Send + 'static> {
        (self.providers.iter())
            .map(|(p, cache)| Arc::clone(cache).refresh_every(p.refresh))
            .collect()
    }

    /// Each provider's key cache and refresh interval (the gateway's key refresher).
    pub fn caches(&self) -> Vec<(Arc<KeyCache>, std::time::Duration)> {
        (self.providers.iter())
            .map(|(p, c)| (Arc::clone(c), p.refresh))
            .collect()
    }

    /// The key cache of provider `i` (tests, metrics).
    pub fn key_cache(&self, i: usize) -> Option<&Arc<KeyCache>> {
        self.providers.get(i).map(|(_, c)| c)
    }

    /// A route's guard.
    pub fn route(&self, access: RouteAccess) -> RouteGuard {
        let buckets = access
            .limit
            .map(|l| ClientBuckets::new(l.per_second, l.burst, self.max_clients));
        RouteGuard { access, buckets }
    }
}

/// One route's admission state.
#[derive(Debug)]
pub struct RouteGuard {
    access: RouteAccess,
    buckets: Option<ClientBuckets>,
}

impl RouteGuard {
    /// Decide on a request at `now` (monotonic, for buckets) and `unix_now` (seconds, for
    /// token times).
    pub async fn admit(
        &self,
        stage: &AuthStage,
        req: Incoming<'_>,
        now: Nanos,
        unix_now: u64,
    ) -> Verdict {
        let cors_headers = match &self.access.cors {
            Some(c) if cors::is_preflight(req.method, req.headers) => {
                return Verdict::Answer(cors::preflight(c, req.headers));
            }
            Some(c) => cors::response_headers(c, req.headers),
            None => Vec::new(),
        };
        let mut forward = match self.authenticate(stage, req, unix_now).await {
            Ok(f) => f,
            Err(a) => return Verdict::Answer(a.with(cors_headers)),
        };
        forward.response = cors_headers;
        if let (Some(limit), Some(buckets)) = (self.access.limit, &self.buckets) {
            let key = match (limit.key, &forward.principal) {
                (ClientKey::Subject, Some(Principal::Subject(s))) => format!("sub:{s}"),
                (ClientKey::Consumer, Some(Principal::Consumer(c))) => format!("consumer:{c}"),
                _ => match req.client_ip {
                    Some(ip) => format!("ip:{ip}"),
                    // No address (a Unix socket): all such clients share one bucket.
                    None => "ip:unknown".to_owned(),
                },
            };
            let d = buckets.take(&key, now);
            if !d.allowed {
                let a = Answer::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "client_rate_limited",
                    "this client's rate limit is spent",
                );
                let a = a.with(d.headers()).with(forward.response);
                // Authenticated, then limited: the outcome still counts as accepted.
                return Verdict::Answer(Answer {
                    auth: forward.auth,
                    ..a
                });
            }
            forward.response.extend(d.headers());
        }
        Verdict::Forward(forward)
    }

    async fn authenticate(
        &self,
        stage: &AuthStage,
        req: Incoming<'_>,
        unix_now: u64,
    ) -> Result<Forward, Answer> {
        match self.access.auth {
            RouteAuth::Public => Ok(Forward::default()),
            // A route the control plane closed (its attached policy is invalid).
            RouteAuth::Deny => Err(Answer::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "route_closed",
                "this route's access policy is invalid",
            )),
            RouteAuth::Jwt(i) => match stage.providers.get(i) {
                Some((p, cache)) => {
                    let (r, result) = jwt_auth(p, cache, req.headers, unix_now).await;
                    outcome(r, "jwt", result)
                }
                None => Err(Answer::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "auth_config",
                    "unknown provider",
                )),
            },
            RouteAuth::ApiKey(i) => match stage.key_sets.get(i) {
                Some((set, keys)) => {
                    let r = key_auth(set, keys, req.headers);
                    let result = if r.is_ok() {
                        "accepted"
                    } else if req.headers.contains_key(&set.header) {
                        "unknown_key"
                    } else {
                        "missing"
                    };
                    outcome(r, "api_key", result)
                }
                None => Err(Answer::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "auth_config",
                    "unknown key set",
                )),
            },
        }
    }
}

/// `r` marked with how authentication by `method` ended.
fn outcome(
    r: Result<Forward, Answer>,
    method: &'static str,
    result: &'static str,
) -> Result<Forward, Answer> {
    let o = Some(AuthOutcome { method, result });
    r.map(|f| Forward { auth: o, ..f })
        .map_err(|a| Answer { auth: o, ..a })
}

fn unauthorized(error: Option<&JwtError>) -> Answer {
    let (challenge, reason) = match error {
        // RFC 6750 §3.1: no error code when the request had no credentials.
        None => (
            format!("Bearer realm=\"{REALM}\""),
            "a bearer token is required".to_owned(),
        ),
        Some(e) => (
            format!("Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{e}\""),
            e.to_string(),
        ),
    };
    let mut a = Answer::new(StatusCode::UNAUTHORIZED, "unauthenticated", &reason);
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        a.headers.push((header::WWW_AUTHENTICATE, v));
    }
    a
}

/// The token of the one `Authorization: Bearer` header (`Err(None)`: none; more than one
/// `Authorization` header is malformed, since which one a service reads is anyone's guess).
fn bearer(headers: &HeaderMap) -> Result<&str, Option<JwtError>> {
    let mut all = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(v), None) = (all.next(), all.next()) else {
        return Err(headers
            .contains_key(header::AUTHORIZATION)
            .then_some(JwtError::Malformed("more than one Authorization header")));
    };
    let s = v
        .to_str()
        .map_err(|_| Some(JwtError::Malformed("not ASCII")))?;
    match s.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(token.trim()),
        _ => Err(None),
    }
}

/// A JWT route's authentication, and its outcome word.
async fn jwt_auth(
    p: &JwtProvider,
    cache: &KeyCache,
    headers: &HeaderMap,
    unix_now: u64,
) -> (Result<Forward, Answer>, &'static str) {
    match verify_jwt(p, cache, headers, unix_now).await {
        Ok(f) => (Ok(f), "accepted"),
        Err(e) => {
            let result = e.as_ref().map_or("missing", JwtError::label);
            (Err(unauthorized(e.as_ref())), result)
        }
    }
}

async fn verify_jwt(
    p: &JwtProvider,
    cache: &KeyCache,
    headers: &HeaderMap,
    unix_now: u64,
) -> Result<Forward, Option<JwtError>> {
    let token = bearer(headers)?;
    let claims = match jwt::verify(token, &cache.keys(), p, unix_now) {
        Err(JwtError::UnknownKid) => {
            let kid = jwt::peek(token)
                .ok()
                .and_then(|(kid, _)| kid)
                .unwrap_or_default();
            if !cache.on_unknown_kid(&kid).await {
                return Err(Some(JwtError::UnknownKid));
            }
            jwt::verify(token, &cache.keys(), p, unix_now)
        }
        other => other,
    }
    .map_err(Some)?;
    let mut f = Forward {
        principal: Some(Principal::Subject(
            claims.subject().unwrap_or_default().to_owned(),
        )),
        ..Forward::default()
    };
    // The client's own copies of claim headers never pass, whether or not the claim exists.
    for (claim, h) in &p.forward_claims {
        f.remove.push(h.clone());
        if let Some(v) = claims.header_value(claim) {
            f.set.push((h.clone(), v));
        }
    }
    if !p.keep_token {
        f.remove.push(header::AUTHORIZATION);
    }
    Ok(f)
}

fn key_auth(set: &ApiKeySet, keys: &ApiKeys, headers: &HeaderMap) -> Result<Forward, Answer> {
    let mut values = headers.get_all(&set.header).iter();
    let consumer = match (values.next(), values.next()) {
        (Some(v), None) => keys.consumer(v.as_bytes()),
        _ => None,
    };
    let Some(consumer) = consumer else {
        let reason = format!("a valid key in {} is required", set.header);
        let mut a = Answer::new(StatusCode::UNAUTHORIZED, "unauthenticated", &reason);
        if let Ok(v) = HeaderValue::from_str(&format!(
            "ApiKey realm=\"{REALM}\", header=\"{}\"",
            set.header
        )) {
            a.headers.push((header::WWW_AUTHENTICATE, v));
        }
        return Err(a);
    };
    let mut f = Forward {
        principal: Some(Principal::Consumer(consumer.to_owned())),
        remove: vec![set.header.clone()],
        ..Forward::default()
    };
    if let Some(h) = &set.forward_consumer {
        f.remove.push(h.clone());
        if let Ok(v) = HeaderValue::from_str(consumer) {
            f.set.push((h.clone(), v));
        }
    }
    Ok(f)
}

#[cfg(test)]
#[path = "stage_tests.rs"]
mod tests;
