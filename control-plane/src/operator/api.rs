//! The operator API: plain HTTP on a loopback address (the control plane refuses to start
//! with it elsewhere unless told so), bounded by [`crate::net::Limits`].
//!
//! `/live`, `/ready` and `/metrics` are open (probes and Prometheus); everything else requires
//! `Authorization: Bearer <admin token>` ([`crate::operator::auth`]) and answers 401 without it. The
//! JSON API lives under `/v1/` (see docs/OPERATIONS.md); `GET /status` is the older name of
//! `GET /v1/status`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use hyper::{Method, StatusCode};
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::operator::auth::AdminToken;
use crate::operator::http::{actor, body_json, error, json, refused, respond, Refusal, Response};
pub use crate::operator::http::{ACTOR_HEADER, BODY_READ_TIMEOUT, MAX_BODY};
use crate::operator::ops::{Ops, OpsError};
use crate::policy::mesh::{file_name, PolicyError, PolicyErrors};
use crate::push::hub::Hub;

/// What the operator API serves.
pub(crate) struct Admin {
    pub(crate) hub: Arc<Hub>,
    pub(crate) ops: Arc<Ops>,
    pub(crate) token: AdminToken,
    pub(crate) readiness: Arc<Readiness>,
    /// Join tokens and denied serials (the state directory's, or the shared ones).
    pub(crate) credentials: crate::operator::state_api::Credentials,
}

/// What `GET /ready` answers: ready (200) once the control plane holds an accepted policy and
/// its CA is loaded, else 503 naming what is missing. On Kubernetes this is the readiness
/// probe, so a replica gets sidecar traffic only once it can both push policy and sign.
#[derive(Debug, Default)]
pub struct Readiness {
    policy: AtomicBool,
    ca: AtomicBool,
}

impl Readiness {
    /// Readiness with the two conditions as given.
    pub fn new(policy_accepted: bool, ca_loaded: bool) -> Self {
        Self {
            policy: AtomicBool::new(policy_accepted),
            ca: AtomicBool::new(ca_loaded),
        }
    }

    /// Record that a policy was accepted (a source that starts empty calls this on its first).
    pub fn set_policy_accepted(&self) {
        self.policy.store(true, Ordering::Release);
    }

    /// Record that the CA is loaded.
    pub fn set_ca_loaded(&self) {
        self.ca.store(true, Ordering::Release);
    }

    /// What is still missing, in words; empty when ready.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if !self.policy.load(Ordering::Acquire) {
            missing.push("no accepted policy yet");
        }
        if !self.ca.load(Ordering::Acquire) {
            missing.push("the certificate authority is not loaded");
        }
        missing
    }
}

/// Serve the operator API on `listener` within `limits`; `open_only`: only the open endpoints
/// (`/live`, `/ready`, `/metrics`), for a listener that may face the network.
pub(crate) async fn serve_admin(
    listener: TcpListener,
    admin: Arc<Admin>,
    limits: crate::net::Limits,
    open_only: bool,
) {
    let what = if open_only { "metrics" } else { "admin" };
    crate::net::serve_http1(listener, None, limits, what, move |req| {
        let admin = admin.clone();
        async move {
            if open_only && !OPEN_PATHS.contains(&req.uri().path()) {
                return error(
                    StatusCode::NOT_FOUND,
                    "this listener serves only /live, /ready and /metrics; the operator API is \
                     on the --admin address",
                );
            }
            handle(&admin, req).await
        }
    })
    .await;
}

/// The endpoints served without a token.
const OPEN_PATHS: [&str; 3] = ["/live", "/ready", "/metrics"];

/// Policy errors as JSON: file (name), line, column, field, reason, and the one-line message.
pub fn errors_json(errors: &PolicyErrors) -> serde_json::Value {
    errors
        .iter()
        .map(|e| {
            // The file by its name: the client sent names, and the directory is the server's.
            let shown = PolicyError {
                file: file_name(&e.file).into(),
                ..e.clone()
            };
            serde_json::json!({
                "file": file_name(&e.file),
                "line": e.location.map(|l| l.0),
                "column": e.location.map(|l| l.1),
                "field": e.field,
                "reason": e.reason,
                "message": shown.to_string(),
            })
        })
        .collect()
}

fn ops_error(e: OpsError) -> Response {
    match e {
        OpsError::BadRequest(m) => error(StatusCode::BAD_REQUEST, m),
        OpsError::Invalid(errors) => json(
            StatusCode::UNPROCESSABLE_ENTITY,
            &serde_json::json!({
                "error": "the policy is invalid; nothing was changed",
                "errors": errors_json(&errors),
            }),
        ),
        OpsError::UnknownVersion(_) => error(StatusCode::NOT_FOUND, e.to_string()),
        OpsError::History(_) | OpsError::Directory(_) => {
            log::error!("operator API: {e}");
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

/// The body of a validate or apply request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilesRequest {
    files: BTreeMap<String, String>,
}

/// The body of a rollback request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    version: String,
}

/// `dry_run` from the query string.
fn dry_run(query: Option<&str>) -> Result<bool, Refusal> {
    let mut dry = false;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=').unwrap_or((pair, "true")) {
            ("dry_run", "true" | "1") => dry = true,
            ("dry_run", "false" | "0") => dry = false,
            (k, v) => {
                return Err(refused(
                    StatusCode::BAD_REQUEST,
                    format!("unknown query parameter {k}={v}; only dry_run=true|false"),
                ))
            }
        }
    }
    Ok(dry)
}

/// Run a blocking operation (file I/O under the operations lock) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, OpsError> + Send + 'static,
) -> Result<T, Refusal> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| Box::new(ops_error(e))),
        Err(e) => Err(refused(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("operation failed: {e}"),
        )),
    }
}

async fn handle(admin: &Admin, req: hyper::Request<hyper::body::Incoming>) -> Response {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/live") => return respond(StatusCode::OK, "text/plain", "live\n".into()),
        (&Method::GET, "/ready") => {
            let missing = admin.readiness.missing();
            return if missing.is_empty() {
                respond(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: {}\n", missing.join("; ")),
                )
            };
        }
        (&Method::GET, "/metrics") => {
            return respond(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                admin.hub.metrics(),
            )
        }
        _ => {}
    }
    let auth = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if !admin.token.verify_header(auth) {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "missing or invalid admin token: send `Authorization: Bearer <token>` with the token \
             of the control plane's admin.token file (weftctl --token-file)",
        );
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Bearer realm=\"weft\""),
        );
        return r;
    }
    match result(admin, req, &method, &path).await {
        Ok(r) => r,
        Err(r) => *r,
    }
}

/// The method `path` takes, or the refusal: 404 for an unknown path, 405 (with `Allow`) for
/// another method.
fn check_method(path: &str, method: &Method) -> Result<(), Refusal> {
    let allowed = match path {
        "/status" | "/v1/status" | "/v1/services" | "/v1/routes" | "/v1/endpoints"
        | "/v1/history" => Method::GET,
        "/v1/validate" | "/v1/apply" | "/v1/rollback" => Method::POST,
        _ => {
            return Err(refused(
                StatusCode::NOT_FOUND,
                format!(
                    "no {path}; try GET /v1/status, /v1/services, /v1/routes, /v1/endpoints, \
                     /v1/history, /v1/audit, /v1/tokens, POST /v1/validate, /v1/apply, \
                     /v1/rollback, /v1/tokens, /v1/tokens/revoke, /v1/certs/deny, or GET /metrics"
                ),
            ))
        }
    };
    if *method != allowed {
        let mut r = error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{path} takes {allowed}, not {method}"),
        );
        if let Ok(v) = hyper::header::HeaderValue::from_str(allowed.as_str()) {
            r.headers_mut().insert(hyper::header::ALLOW, v);
        }
        return Err(Box::new(r));
    }
    Ok(())
}

async fn result(
    admin: &Admin,
    req: hyper::Request<hyper::body::Incoming>,
    method: &Method,
    path: &str,
) -> Result<Response, Refusal> {
    if crate::operator::state_api::PATHS.contains(&path) {
        return crate::operator::state_api::handle(
            &admin.credentials,
            admin.hub.trust_domain(),
            &admin.ops,
            req,
            method,
            path,
        )
        .await;
    }
    check_method(path, method)?;
    let ok = |v: serde_json::Value| Ok(json(StatusCode::OK, &v));
    match path {
        "/status" | "/v1/status" => ok(admin.hub.status()),
        "/v1/services" => {
            let p = admin.hub.policy();
            ok(serde_json::json!({ "policy_version": p.version(), "services": p.services() }))
        }
        "/v1/routes" => {
            let p = admin.hub.policy();
            ok(serde_json::json!({ "policy_version": p.version(), "routes": p.routes() }))
        }
        "/v1/endpoints" => ok(serde_json::json!({ "endpoints": admin.hub.endpoints() })),
        "/v1/history" => {
            let ops = admin.ops.clone();
            let list = blocking(move || Ok(ops.history().list()?)).await?;
            ok(serde_json::json!({
                "limit": crate::operator::history::HISTORY_LIMIT,
                "history": list,
            }))
        }
        "/v1/validate" => {
            let body: FilesRequest = body_json(req).await?;
            let ops = admin.ops.clone();
            let p = blocking(move || ops.validate(&body.files)).await?;
            ok(serde_json::json!({ "valid": true, "version": p.version() }))
        }
        "/v1/apply" => {
            let dry = dry_run(req.uri().query())?;
            let who = actor(&req);
            let body: FilesRequest = body_json(req).await?;
            let ops = admin.ops.clone();
            let outcome = blocking(move || ops.apply(&body.files, &who, dry)).await?;
            ok(serde_json::json!(outcome))
        }
        "/v1/rollback" => {
            let who = actor(&req);
            let body: RollbackRequest = body_json(req).await?;
            let ops = admin.ops.clone();
            let outcome = blocking(move || ops.rollback(body.version.trim(), &who)).await?;
            ok(serde_json::json!(outcome))
        }
        _ => Err(refused(StatusCode::NOT_FOUND, format!("no {path}"))),
    }
}

#[cfg(test)]
mod readiness_tests {
    use super::Readiness;

    #[test]
    fn ready_only_with_policy_and_ca() {
        let r = Readiness::new(false, false);
        assert_eq!(r.missing().len(), 2);
        r.set_ca_loaded();
        assert_eq!(r.missing(), vec!["no accepted policy yet"]);
        r.set_policy_accepted();
        assert!(r.missing().is_empty());
    }
}
