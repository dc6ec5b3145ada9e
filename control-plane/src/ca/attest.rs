//! Attestation: turning the credential a workload presents into the identity it may have.
//!
//! Two credentials: a join token ([`crate::ca::tokens::JoinTokenAttestor`], local mode and any host)
//! and, on Kubernetes, a projected service account token
//! ([`crate::ca::tokenreview::TokenReviewAttestor`], verified by the API server's TokenReview).
//! [`Credential::from_presented`] tells them apart by form; [`ByKind`] sends each to its own
//! attestor. The issuer does not change.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use weft_certs::{Identity, IdentityError};

use crate::ca::provenance::Source;

/// What a workload presents to prove who it is.
///
/// `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Credential {
    /// A join token created with `weftctl tokens create` (`wjt1_<id>_<secret>`).
    JoinToken(String),
    /// A Kubernetes projected service account token (a JWT, audience `weft`), as the kubelet
    /// writes it into the pod.
    ServiceAccountToken(String),
}

/// The prefix every join token starts with.
const JOIN_TOKEN_PREFIX: &str = "wjt1_";

impl Credential {
    /// A short name of the credential's kind, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::JoinToken(_) => "join token",
            Self::ServiceAccountToken(_) => "service account token",
        }
    }

    /// The credential a sidecar presented in `Certify`'s token field, told apart by its form:
    /// `wjt1_...` is a join token; three non-empty dot-separated base64url parts make a JWT,
    /// which can only be a service account token. Anything else is taken for a (malformed)
    /// join token, so the caller hears the join-token format it most likely meant.
    pub fn from_presented(token: &str) -> Self {
        let token = token.trim();
        if !token.starts_with(JOIN_TOKEN_PREFIX) && looks_like_jwt(token) {
            Self::ServiceAccountToken(token.to_owned())
        } else {
            Self::JoinToken(token.to_owned())
        }
    }
}

/// Whether `token` has a JWS compact serialization's form (header.payload.signature, each
/// base64url). Nothing is decoded: only the API server's TokenReview decides what it means.
fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::JoinToken(_) => f.write_str("JoinToken(<redacted>)"),
            Self::ServiceAccountToken(_) => f.write_str("ServiceAccountToken(<redacted>)"),
        }
    }
}

/// Decides which identity a credential entitles its holder to.
///
/// Synchronous: the join-token attestor reads a small local file, and the issuer is called off
/// the runtime's workers (`spawn_blocking`, as signing costs CPU anyway). An attestor that
/// must call out, such as [`crate::ca::tokenreview::TokenReviewAttestor`], blocks that thread on
/// its request; see its documentation.
pub trait Attestor: Send + Sync {
    /// Returns the identity `credential` proves, or why it proves none.
    fn attest(&self, credential: &Credential) -> Result<Identity, AttestError>;

    /// Checks, for a renewal by certificate alone, that the credential `identity` was attested
    /// with (`source`, from the certificate's provenance) is still valid. An attestor that
    /// cannot re-check without the credential itself refuses with
    /// [`AttestError::CredentialRequired`].
    fn recheck(&self, source: &Source, identity: &Identity) -> Result<(), AttestError> {
        let _ = identity;
        Err(AttestError::CredentialRequired {
            kind: source.kind(),
        })
    }
}

/// Why a credential was not accepted.
///
/// [`AttestError::Store`] and [`AttestError::InvalidIdentity`] are failures on the control
/// plane's side ([`is_refusal`](Self::is_refusal) is false); every other variant refuses the
/// caller's credential. The
/// messages name token ids (which `weftctl tokens list` shows) but never secrets. A server may
/// prefer to tell callers less than the message says, and log the rest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// This attestor does not take this kind of credential.
    #[error("{kind} credentials are not accepted here")]
    UnsupportedCredential {
        /// The credential's kind ([`Credential::kind`]).
        kind: &'static str,
    },
    /// The join token is not of the form `weftctl tokens create` prints.
    #[error(
        "malformed join token (expected wjt1_<id>_<secret>, as printed by weftctl tokens create)"
    )]
    MalformedToken,
    /// No join token has this id, or its secret is wrong.
    #[error("join token {id} is not valid")]
    InvalidToken {
        /// The id part of the presented token.
        id: String,
    },
    /// The join token was revoked.
    #[error("join token {id} was revoked")]
    Revoked {
        /// The token's id.
        id: String,
    },
    /// The join token has expired.
    #[error("join token {id} has expired")]
    Expired {
        /// The token's id.
        id: String,
    },
    /// A renewal by certificate alone cannot re-check this kind of credential: the workload
    /// must present the credential again.
    #[error("this identity was attested with a {kind}: renew by presenting the {kind} again")]
    CredentialRequired {
        /// The credential's kind.
        kind: &'static str,
    },
    /// The certificate's provenance (which the CA signed) does not read: refused rather than
    /// guessed at.
    #[error(transparent)]
    Provenance(#[from] crate::ca::provenance::ProvenanceError),
    /// The credential is genuine but bound to names that form no valid identity in this trust
    /// domain (a configuration error, such as a trust domain too long for the names).
    #[error("credential is bound to an invalid identity: {0}")]
    InvalidIdentity(#[from] IdentityError),
    /// The token store could not be read.
    #[error("cannot read join tokens: {0}")]
    Store(#[source] TokenError),
    /// The Kubernetes API server did not authenticate the service account token (invalid,
    /// expired, for a deleted pod, or not for the audience `weft`), or it authenticated
    /// something other than a service account.
    #[error("service account token refused: {reason}")]
    ServiceAccountTokenRefused {
        /// Why, in words (the API server's own reason when it gave one).
        reason: String,
    },
    /// The Kubernetes API server could not be asked (unreachable, timed out, or it refused the
    /// control plane's own TokenReview request): nothing is known about the token.
    #[error("cannot verify the service account token with the Kubernetes API: {0}")]
    Unavailable(String),
}

impl AttestError {
    /// Whether the caller's credential was refused (as opposed to the control plane failing).
    pub fn is_refusal(&self) -> bool {
        !matches!(
            self,
            Self::Store(_) | Self::InvalidIdentity(_) | Self::Unavailable(_)
        )
    }
}

/// Sends each kind of credential to its own attestor: join tokens always, service account
/// tokens only when Kubernetes tokens are enabled (`--kubernetes-tokens`).
pub struct ByKind {
    join_token: Arc<dyn Attestor>,
    service_account_token: Option<Arc<dyn Attestor>>,
}

impl fmt::Debug for ByKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ByKind")
            .field(
                "service_account_tokens",
                &self.service_account_token.is_some(),
            )
            .finish_non_exhaustive()
    }
}

impl ByKind {
    /// Join tokens go to `join_token`; service account tokens to `service_account_token`, or
    /// are refused as unsupported when it is `None`.
    pub fn new(
        join_token: Arc<dyn Attestor>,
        service_account_token: Option<Arc<dyn Attestor>>,
    ) -> Self {
        Self {
            join_token,
            service_account_token,
        }
    }
}

impl Attestor for ByKind {
    fn recheck(&self, source: &Source, identity: &Identity) -> Result<(), AttestError> {
        match source {
            Source::JoinToken(_) => self.join_token.recheck(source, identity),
            Source::ServiceAccount => match &self.service_account_token {
                Some(a) => a.recheck(source, identity),
                None => Err(AttestError::UnsupportedCredential {
                    kind: source.kind(),
                }),
            },
            // Nothing to re-check: the maximum age alone bounds such a chain.
            Source::Unknown => Ok(()),
        }
    }

    fn attest(&self, credential: &Credential) -> Result<Identity, AttestError> {
        match credential {
            Credential::JoinToken(_) => self.join_token.attest(credential),
            Credential::ServiceAccountToken(_) => match &self.service_account_token {
                Some(a) => a.attest(credential),
                None => Err(AttestError::UnsupportedCredential {
                    kind: credential.kind(),
                }),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_join_tokens_from_jwts_by_form() {
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";
        assert_eq!(
            Credential::from_presented(&format!(" {jwt}\n")),
            Credential::ServiceAccountToken(jwt.to_owned())
        );
        for join in [
            "wjt1_abc_def",
            "wjt1_a.b.c",
            "not-a-token",
            "a.b",
            "a..c",
            "a.b.c.d",
            "a.b+.c",
        ] {
            assert_eq!(
                Credential::from_presented(join),
                Credential::JoinToken(join.to_owned()),
                "{join}"
            );
        }
        let debug = format!("{:?}", Credential::ServiceAccountToken(jwt.to_owned()));
        assert!(!debug.contains("eyJ"), "{debug}");
    }

    #[test]
    fn service_account_tokens_are_refused_unless_enabled() {
        struct Never;
        impl Attestor for Never {
            fn attest(&self, _: &Credential) -> Result<Identity, AttestError> {
                Err(AttestError::MalformedToken)
            }
        }
        let by_kind = ByKind::new(Arc::new(Never), None);
        let e = by_kind
            .attest(&Credential::ServiceAccountToken("a.b.c".into()))
            .expect_err("refused");
        assert!(
            matches!(e, AttestError::UnsupportedCredential { .. }),
            "{e}"
        );
        assert!(e.is_refusal());
        assert!(!AttestError::Unavailable("down".into()).is_refusal());
    }
}

/// Errors of join token management ([`crate::ca::tokens::JoinTokenStore`]). Defined here, beside
/// the attestation errors that carry it, so the attestor and the store import each other one way.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The service, namespace or service account is not a valid name.
    #[error(transparent)]
    InvalidName(#[from] IdentityError),
    /// The TTL is zero or longer than [`MAX_TOKEN_TTL`](crate::ca::tokens::MAX_TOKEN_TTL).
    #[error("invalid token TTL {}: must be more than 0 and at most 10 years", humantime::format_duration(*.0))]
    InvalidTtl(Duration),
    /// No token has this id.
    #[error("no join token with id {id:?} (weftctl tokens list shows them)")]
    UnknownId {
        /// The id asked for.
        id: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The token file is not valid.
    #[error("{path}: not a valid join token file: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The system random number generator failed.
    #[error("system random number generator failed")]
    Rng,
    /// The shared store could not be read or written.
    #[error(transparent)]
    Store(#[from] crate::shared::StoreError),
}

impl TokenError {
    /// Whether the request itself was wrong (a bad name, TTL or id), as opposed to a failure.
    pub fn is_invalid_request(&self) -> bool {
        matches!(
            self,
            Self::InvalidName(_) | Self::InvalidTtl(_) | Self::UnknownId { .. }
        )
    }
}
