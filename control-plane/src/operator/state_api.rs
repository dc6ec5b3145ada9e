//! The operator API's join tokens, denied serials and audit records, read and written through
//! the same store the issuer checks (the state directory, or on Kubernetes the API every
//! replica shares), so a token created through one replica joins through any other:
//!
//! - `GET /v1/tokens`: the tokens (ids, identities, status; never secrets);
//! - `POST /v1/tokens` `{"service", "namespace"?, "service_account"?, "ttl"?}` (`ttl`: a
//!   duration such as `24h`, or `never`): the token, shown this once;
//! - `POST /v1/tokens/revoke` `{"id"}`;
//! - `POST /v1/certs/deny` `{"serial"}`: the serial no longer renews;
//! - `GET /v1/audit`: the audit records, oldest first.

use std::time::{Duration, SystemTime};

use hyper::{Method, StatusCode};
use serde::Deserialize;

use crate::ca::denied::{DeniedError, DeniedSerials};
use crate::ca::tokens::{
    JoinTokenStore, NewToken, Revocation, TokenError, TokenInfo, DEFAULT_TOKEN_TTL,
};
use crate::operator::http::{actor, body_json, error, json, refused, Refusal, Response};
use crate::operator::ops::Ops;

/// The paths served here.
pub(crate) const PATHS: [&str; 4] = [
    "/v1/tokens",
    "/v1/tokens/revoke",
    "/v1/certs/deny",
    "/v1/audit",
];

/// Where join tokens and denied serials are kept.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The join tokens.
    pub tokens: JoinTokenStore,
    /// The denied serials.
    pub denied: DeniedSerials,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    service: String,
    namespace: Option<String>,
    service_account: Option<String>,
    ttl: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DenyRequest {
    serial: String,
}

fn rfc3339(t: Option<SystemTime>) -> Option<String> {
    t.map(|t| humantime::format_rfc3339_seconds(t).to_string())
}

/// A token as the API lists it; `identity` is the SPIFFE ID it proves in `trust_domain`.
fn info_json(info: &TokenInfo, trust_domain: &str) -> serde_json::Value {
    serde_json::json!({
        "identity": info.identity(trust_domain).ok().map(|i| i.to_string()),
        "id": info.id,
        "service": info.service,
        "namespace": info.namespace,
        "service_account": info.service_account,
        "created": rfc3339(Some(info.created)),
        "expires": rfc3339(info.expires),
        "revoked": rfc3339(info.revoked),
        "status": info.status(SystemTime::now()).to_string(),
    })
}

fn token_error(e: TokenError) -> Refusal {
    if e.is_invalid_request() {
        let status = match e {
            TokenError::UnknownId { .. } => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_REQUEST,
        };
        refused(status, e.to_string())
    } else {
        log::error!("operator API: join tokens: {e}");
        refused(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

fn denied_error(e: DeniedError) -> Refusal {
    match e {
        DeniedError::BadSerial(_) => refused(StatusCode::BAD_REQUEST, e.to_string()),
        e => {
            log::error!("operator API: denied serials: {e}");
            refused(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

/// The TTL of a create request: a duration, `never` (none), or the default.
fn ttl(text: Option<&str>) -> Result<Option<Duration>, Refusal> {
    match text.map(str::trim) {
        None => Ok(Some(DEFAULT_TOKEN_TTL)),
        Some("never") => Ok(None),
        Some(t) => humantime::parse_duration(t).map(Some).map_err(|e| {
            refused(
                StatusCode::BAD_REQUEST,
                format!("ttl {t:?}: {e} (a duration such as 1h, or never)"),
            )
        }),
    }
}

/// Runs `f` on a blocking thread (the stores block: file locks, API calls).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Refusal> + Send + 'static,
) -> Result<T, Refusal> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(refused(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("operation failed: {e}"),
        ))
    })
}

/// Serves one of [`PATHS`].
pub(crate) async fn handle(
    credentials: &Credentials,
    trust_domain: &str,
    ops: &std::sync::Arc<Ops>,
    req: hyper::Request<hyper::body::Incoming>,
    method: &Method,
    path: &str,
) -> Result<Response, Refusal> {
    let c = credentials.clone();
    let td = trust_domain.to_owned();
    let info_json = |info: &TokenInfo| info_json(info, &td);
    let ok = |v: serde_json::Value| Ok(json(StatusCode::OK, &v));
    match (method, path) {
        (&Method::GET, "/v1/tokens") => {
            let list = blocking(move || c.tokens.list().map_err(token_error)).await?;
            ok(serde_json::json!({"tokens": list.iter().map(&info_json).collect::<Vec<_>>()}))
        }
        (&Method::POST, "/v1/tokens") => {
            let body: CreateRequest = body_json(req).await?;
            let request = NewToken {
                ttl: ttl(body.ttl.as_deref())?,
                namespace: body
                    .namespace
                    .unwrap_or_else(|| crate::ca::tokens::DEFAULT_NAMESPACE.to_owned()),
                service_account: body.service_account,
                service: body.service,
            };
            let created = blocking(move || c.tokens.create(&request).map_err(token_error)).await?;
            let mut out = info_json(&created.info);
            out["token"] = serde_json::json!(created.token);
            Ok(json(StatusCode::CREATED, &out))
        }
        (&Method::POST, "/v1/tokens/revoke") => {
            let who = actor(&req);
            let body: RevokeRequest = body_json(req).await?;
            let done = blocking(move || c.tokens.revoke(&body.id).map_err(token_error)).await?;
            let (info, already) = match done {
                Revocation::Revoked(i) => (i, false),
                Revocation::AlreadyRevoked(i) => (i, true),
            };
            log::info!("join token {} revoked by {who}", info.id);
            ok(serde_json::json!({"token": info_json(&info), "already_revoked": already}))
        }
        (&Method::POST, "/v1/certs/deny") => {
            let who = actor(&req);
            let body: DenyRequest = body_json(req).await?;
            let serial = body.serial.clone();
            let new = blocking(move || c.denied.deny(&body.serial).map_err(denied_error)).await?;
            log::info!("certificate serial {serial} denied by {who}");
            ok(serde_json::json!({"serial": serial, "already_denied": !new}))
        }
        (&Method::GET, "/v1/audit") => {
            let ops = ops.clone();
            let records = blocking(move || {
                ops.history()
                    .audit_records()
                    .map_err(|e| refused(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
            })
            .await?;
            ok(serde_json::json!({"audit": records}))
        }
        _ => Err(Box::new(error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} {path} is not served; see docs/OPERATIONS.md"),
        ))),
    }
}
