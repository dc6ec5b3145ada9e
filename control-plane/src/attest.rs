//! Attestation: turning the credential a workload presents into the identity it may have.
//!
//! Today the one credential is a join token ([`crate::tokens::JoinTokenAttestor`]), for local
//! mode. On Kubernetes a projected service account token will be another [`Credential`] variant
//! with its own [`Attestor`]; the issuer does not change.

use std::fmt;

use weft_certs::{Identity, IdentityError};

use crate::tokens::TokenError;

/// What a workload presents to prove who it is.
///
/// `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Credential {
    /// A join token created with `weftctl tokens create` (`wjt1_<id>_<secret>`).
    JoinToken(String),
}

impl Credential {
    /// A short name of the credential's kind, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::JoinToken(_) => "join token",
        }
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::JoinToken(_) => f.write_str("JoinToken(<redacted>)"),
        }
    }
}

/// Decides which identity a credential entitles its holder to.
///
/// Synchronous on purpose: the join-token attestor reads a small local file, and a Kubernetes
/// attestor can verify service account tokens locally against the cluster's cached signing
/// keys. An attestor that must call out per request would make this trait async.
pub trait Attestor: Send + Sync {
    /// Returns the identity `credential` proves, or why it proves none.
    fn attest(&self, credential: &Credential) -> Result<Identity, AttestError>;
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
    /// The credential is genuine but bound to names that form no valid identity in this trust
    /// domain (a configuration error, such as a trust domain too long for the names).
    #[error("credential is bound to an invalid identity: {0}")]
    InvalidIdentity(#[from] IdentityError),
    /// The token store could not be read.
    #[error("cannot read join tokens: {0}")]
    Store(#[source] TokenError),
}

impl AttestError {
    /// Whether the caller's credential was refused (as opposed to the control plane failing).
    pub fn is_refusal(&self) -> bool {
        !matches!(self, Self::Store(_) | Self::InvalidIdentity(_))
    }
}
