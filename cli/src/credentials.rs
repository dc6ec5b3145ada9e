//! Where `weftctl tokens …` and `weftctl certs deny` act: a control plane's state directory
//! (local mode, `weftctl` beside the server), or the control plane's operator API (any mode;
//! the only one on Kubernetes, where tokens and denied serials live in the Kubernetes API that
//! every replica reads, and no replica's directory is the truth).
//!
//! Both give the same answers (the token infos the store keeps), so the command prints the
//! same thing whichever it talked to.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use weft_control_plane::ca::denied::{normalize_serial, DeniedError, DeniedSerials};
use weft_control_plane::ca::tokens::{
    token_id, JoinTokenStore, NewToken, Revocation, TokenError, TokenInfo,
};
use weft_control_plane::operator::client::{self, Connection, CtlError, EXIT_FAILURE};

/// Why a credential command failed.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The state directory's join tokens.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The state directory's denied serials.
    #[error(transparent)]
    Denied(#[from] DeniedError),
    /// The operator API (unreachable, refused, or it failed).
    #[error(transparent)]
    Api(#[from] CtlError),
    /// The operator API answered something this `weftctl` cannot read (another version).
    #[error("the control plane's answer has no valid {0}")]
    Answer(&'static str),
}

impl CredentialsError {
    /// The process exit status: 1 for invalid or refused input, else 2.
    pub fn exit_code(&self) -> u8 {
        let invalid = match self {
            Self::Token(e) => e.is_invalid_request(),
            Self::Denied(e) => matches!(e, DeniedError::BadSerial(_)),
            Self::Api(e) => return e.exit_code(),
            Self::Answer(_) => false,
        };
        if invalid {
            client::EXIT_REFUSED
        } else {
            EXIT_FAILURE
        }
    }
}

/// A token just created: the only time its secret is shown.
pub struct Created {
    /// The token.
    pub token: String,
    /// What is kept of it.
    pub info: TokenInfo,
    /// The identity it proves, when the trust domain is known.
    pub identity: Option<String>,
}

/// Where the credentials are.
#[derive(Debug, Clone)]
pub enum Place {
    /// A control plane's state directory.
    Dir(PathBuf),
    /// A control plane's operator API.
    Server(Connection),
}

impl Place {
    /// `state_dir` when given, else the operator API `connection` names.
    pub fn new(state_dir: Option<PathBuf>, connection: &Connection) -> Self {
        match state_dir {
            Some(dir) => Self::Dir(dir),
            None => Self::Server(connection.clone()),
        }
    }

    /// Where, for messages.
    pub fn describe(&self) -> String {
        match self {
            Self::Dir(dir) => format!("the control plane of {}", dir.display()),
            Self::Server(c) => format!("the control plane at {}", client::server_url(c)),
        }
    }

    /// Creates a token for `request`.
    pub async fn create(&self, request: &NewToken) -> Result<Created, CredentialsError> {
        match self {
            Self::Dir(dir) => {
                let created = JoinTokenStore::new(dir).create(request)?;
                let identity = trust_domain(dir)
                    .and_then(|td| created.info.identity(&td).ok())
                    .map(|i| i.to_string());
                Ok(Created {
                    token: created.token,
                    info: created.info,
                    identity,
                })
            }
            Self::Server(c) => {
                let body = json!({
                    "service": request.service,
                    "namespace": request.namespace,
                    "service_account": request.service_account,
                    "ttl": ttl_text(request.ttl),
                });
                let v = client::post(c, "/v1/tokens", &body).await?;
                Ok(Created {
                    token: v["token"]
                        .as_str()
                        .ok_or(CredentialsError::Answer("token"))?
                        .to_owned(),
                    info: info_from_json(&v)?,
                    identity: v["identity"].as_str().map(str::to_owned),
                })
            }
        }
    }

    /// Every token (never a secret).
    pub async fn list(&self) -> Result<Vec<TokenInfo>, CredentialsError> {
        match self {
            Self::Dir(dir) => Ok(JoinTokenStore::new(dir).list()?),
            Self::Server(c) => client::get(c, "/v1/tokens").await?["tokens"]
                .as_array()
                .ok_or(CredentialsError::Answer("tokens"))?
                .iter()
                .map(info_from_json)
                .collect(),
        }
    }

    /// Revokes the token with id `id` (or the token itself: only its id is sent).
    pub async fn revoke(&self, id: &str) -> Result<Revocation, CredentialsError> {
        match self {
            Self::Dir(dir) => Ok(JoinTokenStore::new(dir).revoke(id)?),
            Self::Server(c) => {
                let id = token_id(id).unwrap_or(id.trim());
                let v = client::post(c, "/v1/tokens/revoke", &json!({ "id": id })).await?;
                let info = info_from_json(&v["token"])?;
                Ok(if v["already_revoked"].as_bool() == Some(true) {
                    Revocation::AlreadyRevoked(info)
                } else {
                    Revocation::Revoked(info)
                })
            }
        }
    }

    /// Denies `serial`: whether it was newly denied.
    pub async fn deny(&self, serial: &str) -> Result<bool, CredentialsError> {
        match self {
            Self::Dir(dir) => Ok(DeniedSerials::new(dir).deny(serial)?),
            Self::Server(c) => {
                // Refused here already, so a typo never reaches the server.
                let serial = normalize_serial(serial)?;
                let v = client::post(c, "/v1/certs/deny", &json!({ "serial": serial })).await?;
                v["already_denied"]
                    .as_bool()
                    .map(|already| !already)
                    .ok_or(CredentialsError::Answer("already_denied"))
            }
        }
    }
}

/// The trust domain of the root in `state_dir`, if there is one yet.
fn trust_domain(state_dir: &std::path::Path) -> Option<String> {
    let pem = std::fs::read_to_string(state_dir.join(weft_control_plane::ca::certs::CA_CERT_FILE))
        .ok()?;
    let der = weft_certs::parse_cert_chain_pem(&pem)
        .ok()?
        .into_iter()
        .next()?;
    weft_certs::trust_domain_from_ca_cert_der(&der).ok()
}

/// A token info as the operator API writes it (`GET /v1/tokens`).
fn info_from_json(v: &Value) -> Result<TokenInfo, CredentialsError> {
    let text = |key: &'static str| {
        v[key]
            .as_str()
            .map(str::to_owned)
            .ok_or(CredentialsError::Answer(key))
    };
    let time = |key: &'static str| -> Result<Option<SystemTime>, CredentialsError> {
        match &v[key] {
            Value::Null => Ok(None),
            Value::String(t) => humantime::parse_rfc3339(t)
                .map(Some)
                .map_err(|_| CredentialsError::Answer(key)),
            _ => Err(CredentialsError::Answer(key)),
        }
    };
    Ok(TokenInfo {
        id: text("id")?,
        service: text("service")?,
        namespace: text("namespace")?,
        service_account: text("service_account")?,
        created: time("created")?.ok_or(CredentialsError::Answer("created"))?,
        expires: time("expires")?,
        revoked: time("revoked")?,
    })
}

/// A token's lifetime as the operator API's `ttl` takes it.
fn ttl_text(d: Option<Duration>) -> String {
    d.map_or_else(
        || "never".to_owned(),
        |d| humantime::format_duration(d).to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_infos_the_api_writes_and_refuses_others() {
        let v = json!({"id": "0123456789abcdef", "service": "orders", "namespace": "shop",
            "service_account": "orders", "created": "2026-12-06T10:00:00Z",
            "expires": "2026-12-07T10:00:00Z", "revoked": null, "status": "active"});
        let info = info_from_json(&v).expect("valid");
        assert_eq!(info.namespace, "shop");
        assert_eq!(
            info.expires
                .expect("expires")
                .duration_since(info.created)
                .ok(),
            Some(Duration::from_secs(24 * 3600))
        );
        assert!(info.revoked.is_none());
        let mut bad = v.clone();
        bad["created"] = json!(12);
        assert!(matches!(
            info_from_json(&bad),
            Err(CredentialsError::Answer("created"))
        ));
        let mut missing = v;
        missing.as_object_mut().expect("object").remove("service");
        assert!(matches!(
            info_from_json(&missing),
            Err(CredentialsError::Answer("service"))
        ));
        assert_eq!(ttl_text(None), "never");
        assert_eq!(ttl_text(Some(Duration::from_secs(7200))), "2h");
    }
}
