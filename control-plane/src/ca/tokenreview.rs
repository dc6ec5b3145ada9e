//! Kubernetes service account tokens as sidecar credentials, verified with TokenReview.
//!
//! An injected sidecar presents the projected service account token the kubelet writes into its
//! pod (audience [`TOKEN_AUDIENCE`]) in `Certify`. The control plane does not parse or verify
//! the JWT itself: it asks the API server (`POST
//! /apis/authentication.k8s.io/v1/tokenreviews`, the control plane's ServiceAccount needs
//! `create` on `tokenreviews`), which knows the signing keys, the audiences, and whether the pod
//! the token is bound to still exists. A token is accepted only when the review says
//! `authenticated: true`, lists the audience `weft`, and names a service account user
//! `system:serviceaccount:<namespace>:<name>`; the identity issued is exactly
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<name>`, nothing else (the issuer then checks
//! that the CSR asks for no other name).
//!
//! The call goes through a kube-rs client ([`KubeConnection`]: in-cluster configuration or
//! `KUBECONFIG`, as `kube::Config::infer` finds them), so the path tested against a stand-in
//! API server is the one a cluster uses.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::PostParams;
use weft_certs::Identity;

use crate::ca::attest::{AttestError, Attestor, Credential};

/// The audience sidecars' projected tokens are minted for (`serviceAccountToken.audience` in
/// the injected pod), and the one every review asks the API server to check.
pub const TOKEN_AUDIENCE: &str = "weft";
/// How long one review may take, connection included, before the caller is told the API is
/// unavailable (the sidecar retries with backoff).
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to the API server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The prefix of a service account's user name in a TokenReview.
const SERVICE_ACCOUNT_USER_PREFIX: &str = "system:serviceaccount:";

/// Where the Kubernetes API server is and how to authenticate to it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KubeConnection {
    /// As `kubectl` and kube-rs find it: `KUBECONFIG` (or `~/.kube/config`) if present, else the
    /// in-cluster service account (what the control plane's Deployment uses).
    Infer,
    /// This kubeconfig file's current context.
    Kubeconfig(PathBuf),
}

/// Why no Kubernetes client could be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubeClientError {
    /// No usable configuration (neither a kubeconfig nor the in-cluster environment).
    #[error("no Kubernetes API configuration (in-cluster or KUBECONFIG): {0}")]
    Config(String),
    /// The configuration was found but no client could be built from it (bad certificates).
    #[error("cannot build a Kubernetes API client: {0}")]
    Client(#[source] kube::Error),
}

impl KubeConnection {
    /// A client for this connection, with the timeouts of a TokenReview caller. Must be
    /// called on a Tokio runtime (the client spawns its own connection tasks).
    pub async fn client(&self) -> Result<kube::Client, KubeClientError> {
        let kubeconfig = match self {
            Self::Infer => None,
            Self::Kubeconfig(path) => Some(path.as_path()),
        };
        let mut config = crate::policy::kube::client_config(kubeconfig)
            .await
            .map_err(KubeClientError::Config)?;
        config.connect_timeout = Some(CONNECT_TIMEOUT);
        config.read_timeout = Some(REVIEW_TIMEOUT);
        kube::Client::try_from(config).map_err(KubeClientError::Client)
    }
}

/// Attests [`Credential::ServiceAccountToken`]s with the API server's TokenReview.
///
/// [`Attestor`] is synchronous and the issuer runs on a blocking thread (`spawn_blocking` in
/// the Certify path, because signing costs CPU), so [`Attestor::attest`] drives the async
/// review to completion on that thread with the runtime's handle. The runtime's workers never
/// wait on the API server; a blocking thread waits at most [`REVIEW_TIMEOUT`]. Async callers
/// can use [`TokenReviewAttestor::review`] directly. `attest` must not be called on a runtime
/// worker thread (Tokio refuses to block one).
pub struct TokenReviewAttestor {
    client: kube::Client,
    trust_domain: String,
    runtime: tokio::runtime::Handle,
}

impl fmt::Debug for TokenReviewAttestor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenReviewAttestor")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl TokenReviewAttestor {
    /// An attestor asking the API server behind `client`, issuing identities in
    /// `trust_domain`; `attest` runs its reviews on `runtime`.
    pub fn new(
        client: kube::Client,
        trust_domain: impl Into<String>,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        Self {
            client,
            trust_domain: trust_domain.into(),
            runtime,
        }
    }

    /// Reviews `token` and returns the identity it proves.
    pub async fn review(&self, token: &str) -> Result<Identity, AttestError> {
        let api: kube::Api<TokenReview> = kube::Api::all(self.client.clone());
        let request = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![TOKEN_AUDIENCE.to_owned()]),
            },
            ..TokenReview::default()
        };
        let answer =
            tokio::time::timeout(REVIEW_TIMEOUT, api.create(&PostParams::default(), &request))
                .await
                .map_err(|_| {
                    AttestError::Unavailable(format!(
                        "no answer to the TokenReview within {}",
                        humantime::format_duration(REVIEW_TIMEOUT)
                    ))
                })?
                .map_err(|e| AttestError::Unavailable(describe_kube_error(&e)))?;
        let status = answer.status.unwrap_or_default();
        identity_from_review(&status, &self.trust_domain)
    }
}

impl Attestor for TokenReviewAttestor {
    fn attest(&self, credential: &Credential) -> Result<Identity, AttestError> {
        match credential {
            Credential::ServiceAccountToken(token) => self.runtime.block_on(self.review(token)),
            other => Err(AttestError::UnsupportedCredential { kind: other.kind() }),
        }
    }
}

/// A kube-rs error in words: the API's own status message when it answered, else the
/// transport error (connection refused, TLS, timeout).
fn describe_kube_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => format!(
            "the API server answered {} {}: {}",
            status.code, status.reason, status.message
        ),
        other => other.to_string(),
    }
}

/// The identity a review's status proves, or why it proves none: authenticated, for the
/// audience [`TOKEN_AUDIENCE`], and a service account user; then exactly that service
/// account's identity in `trust_domain`.
pub fn identity_from_review(
    status: &TokenReviewStatus,
    trust_domain: &str,
) -> Result<Identity, AttestError> {
    let refused = |reason: String| AttestError::ServiceAccountTokenRefused { reason };
    if status.authenticated != Some(true) {
        return Err(refused(match status.error.as_deref() {
            Some(e) if !e.trim().is_empty() => format!("not authenticated: {}", e.trim()),
            _ => "not authenticated by the Kubernetes API".to_owned(),
        }));
    }
    let audiences = status.audiences.as_deref().unwrap_or_default();
    if !audiences.iter().any(|a| a == TOKEN_AUDIENCE) {
        return Err(refused(format!(
            "the token is not for the audience {TOKEN_AUDIENCE:?} (it is for {audiences:?}); \
             mount a projected service account token with audience {TOKEN_AUDIENCE}"
        )));
    }
    let username = status
        .user
        .as_ref()
        .and_then(|u| u.username.as_deref())
        .unwrap_or_default();
    let Some((namespace, name)) = username
        .strip_prefix(SERVICE_ACCOUNT_USER_PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'))
    else {
        return Err(refused(format!(
            "the token belongs to {username:?}, not to a service account"
        )));
    };
    Ok(Identity::new(trust_domain, namespace, name)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;

    fn status(authenticated: bool, user: &str, audiences: &[&str]) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(authenticated),
            user: Some(UserInfo {
                username: Some(user.to_owned()),
                ..UserInfo::default()
            }),
            audiences: Some(audiences.iter().map(|a| (*a).to_owned()).collect()),
            error: None,
        }
    }

    #[test]
    fn only_an_authenticated_service_account_for_weft_gets_its_own_identity() {
        let ok = identity_from_review(
            &status(true, "system:serviceaccount:shop:orders", &["weft"]),
            "weft.local",
        )
        .expect("accepted");
        assert_eq!(ok.to_string(), "spiffe://weft.local/ns/shop/sa/orders");

        for (s, why) in [
            (
                status(false, "system:serviceaccount:shop:orders", &["weft"]),
                "not authenticated",
            ),
            (
                status(true, "system:serviceaccount:shop:orders", &["other"]),
                "audience",
            ),
            (
                status(true, "system:serviceaccount:shop:orders", &[]),
                "audience",
            ),
            (status(true, "alice", &["weft"]), "not to a service account"),
            (
                status(true, "system:serviceaccount:shop", &["weft"]),
                "not to a service account",
            ),
            (
                status(true, "system:serviceaccount:shop:orders:x", &["weft"]),
                "not to a service account",
            ),
            (TokenReviewStatus::default(), "not authenticated"),
        ] {
            let e = identity_from_review(&s, "weft.local").expect_err(why);
            assert!(e.is_refusal(), "{e}");
            assert!(e.to_string().contains(why), "{e} should say {why}");
        }
    }

    #[test]
    fn names_that_form_no_identity_are_a_configuration_error() {
        let e = identity_from_review(
            &status(true, "system:serviceaccount:Shop!:orders", &["weft"]),
            "weft.local",
        )
        .expect_err("invalid");
        assert!(matches!(e, AttestError::InvalidIdentity(_)), "{e}");
    }
}
