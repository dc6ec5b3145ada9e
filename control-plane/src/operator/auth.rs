//! The operator API's bearer token.
//!
//! On first start the control plane creates a random admin token in its state directory
//! ([`ADMIN_TOKEN_FILE`], mode 0600) unless one exists; `--admin-token-file` supplies one
//! instead. Requests present it as `Authorization: Bearer <token>`. Only a SHA-256 of the token
//! is held in memory, and presented tokens are hashed and compared in constant time, so the
//! comparison's timing says nothing about the secret.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;

use crate::files::{self, DirLock, PRIVATE_MODE};

/// The admin token file in the state directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// Name of the admin token, as actors in history and the audit log show it.
pub const ADMIN_TOKEN_NAME: &str = "admin";
/// Shortest token accepted from an operator-supplied file.
pub const MIN_TOKEN_LEN: usize = 16;

/// Errors loading or creating the admin token.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Reading or writing the token file failed.
    #[error("admin token {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The token file's content is not a usable token.
    #[error("admin token {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The system random number generator failed.
    #[error("system random number generator failed")]
    Rng,
}

/// The admin token the operator API accepts (only its hash is held).
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
    path: PathBuf,
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminToken")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl AdminToken {
    /// The token of `supplied` if given, else of `state_dir`'s [`ADMIN_TOKEN_FILE`], created
    /// (32 random bytes, base64url) when missing.
    pub fn load_or_create(state_dir: &Path, supplied: Option<&Path>) -> Result<Self, AuthError> {
        if let Some(path) = supplied {
            return Self::read(path);
        }
        let path = state_dir.join(ADMIN_TOKEN_FILE);
        let io = |source| AuthError::Io {
            path: path.clone(),
            source,
        };
        files::create_dir(state_dir).map_err(io)?;
        // Two first starts at once must not write two different tokens.
        let _lock = DirLock::acquire(state_dir).map_err(io)?;
        if !files::exists(&path) {
            let mut secret = [0u8; 32];
            SystemRandom::new()
                .fill(&mut secret)
                .map_err(|_| AuthError::Rng)?;
            let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
            weft_certs::files::write_atomically(
                &path,
                format!("{token}\n").as_bytes(),
                PRIVATE_MODE,
            )
            .map_err(io)?;
            log::info!("created the admin token {}", path.display());
        }
        Self::read(&path)
    }

    /// The token in `path` (surrounding white space ignored).
    pub fn read(path: &Path) -> Result<Self, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Io {
            path: path.to_owned(),
            source,
        })?;
        let token = text.trim();
        if token.len() < MIN_TOKEN_LEN || !token.chars().all(|c| c.is_ascii_graphic()) {
            return Err(AuthError::Invalid {
                path: path.to_owned(),
                reason: format!(
                    "must be at least {MIN_TOKEN_LEN} printable ASCII characters without spaces"
                ),
            });
        }
        Ok(AdminToken {
            digest: sha256(token.as_bytes()),
            path: path.to_owned(),
        })
    }

    /// The file the token was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether an `Authorization` header value carries this token.
    pub fn verify_header(&self, authorization: Option<&[u8]>) -> bool {
        let Some(value) = authorization else {
            return false;
        };
        let Some(token) = value
            .strip_prefix(b"Bearer ")
            .or_else(|| value.strip_prefix(b"bearer "))
        else {
            return false;
        };
        let token = token.trim_ascii();
        bool::from(sha256(token).ct_eq(&self.digest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_with_mode_0600_and_verifies() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let t = AdminToken::load_or_create(tmp.path(), None).expect("create");
        let path = tmp.path().join(ADMIN_TOKEN_FILE);
        let text = std::fs::read_to_string(&path).expect("read");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).expect("meta").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(text.trim().len(), 43, "32 bytes base64url");
        let again = AdminToken::load_or_create(tmp.path(), None).expect("load");
        assert_eq!(again.digest, t.digest, "kept, not replaced");
        let header = format!("Bearer {}", text.trim());
        assert!(t.verify_header(Some(header.as_bytes())));
        assert!(!t.verify_header(Some(b"Bearer nope")));
        assert!(!t.verify_header(Some(text.trim().as_bytes())));
        assert!(!t.verify_header(None));
        std::fs::write(tmp.path().join("short"), "abc").expect("write");
        assert!(AdminToken::load_or_create(tmp.path(), Some(&tmp.path().join("short"))).is_err());
    }
}
