//! Denied certificate serials: certificates an operator has stopped from renewing
//! (`weftctl certs deny`), such as one whose key was stolen.
//!
//! Kept in the state directory ([`DENIED_SERIALS_FILE`], mode 0600) and read on every renewal,
//! like the join tokens, so a denial takes effect in a running control plane at once. A
//! denied certificate still works until it expires (it is short-lived); it can no longer be
//! renewed, by itself or together with a credential.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::shared::file::FileDocs;
use crate::shared::{self, Docs, StoreError};

/// File of denied serials in a state directory.
pub const DENIED_SERIALS_FILE: &str = "denied-serials.json";
/// Most serials one file may hold: a denial outlives the certificate by at most its
/// lifetime, so the list stays short; the bound keeps a broken script from growing it forever.
pub const MAX_DENIED: usize = 100_000;
const FILE_VERSION: u32 = 1;

/// Why the denied serials could not be read or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeniedError {
    /// The serial is not hexadecimal (colons allowed, as `openssl x509 -serial` and
    /// `weftctl certs show` print it).
    #[error("{0:?} is not a certificate serial (hexadecimal, colons allowed)")]
    BadSerial(String),
    /// The file already holds [`MAX_DENIED`] serials.
    #[error("{path}: already {MAX_DENIED} denied serials")]
    Full {
        /// The file.
        path: PathBuf,
    },
    /// Reading or writing the shared store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The file is not valid.
    #[error("{path}: not a valid denied-serials file: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The denied serials of a state directory, or of the Kubernetes API (any [`DocStore`]).
/// Holds no state: every call reads the document.
#[derive(Debug, Clone)]
pub struct DeniedSerials {
    docs: Docs,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeniedFile {
    version: u32,
    serials: Vec<DeniedRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeniedRecord {
    serial: String,
    denied_unix: u64,
}

/// A serial in the one form compared: lowercase hex, no colons, no leading zero bytes (DER
/// integers may carry one that `openssl` prints and others do not).
pub fn normalize_serial(serial: &str) -> Result<String, DeniedError> {
    let bad = || DeniedError::BadSerial(serial.to_owned());
    let hex: String = serial
        .trim()
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if hex.is_empty() || hex.len() > 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let trimmed = hex.trim_start_matches('0');
    Ok(if trimmed.is_empty() {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    })
}

impl DeniedSerials {
    /// The denied serials of `state_dir` (which need not exist yet).
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self::in_store(Arc::new(FileDocs::new(state_dir)))
    }

    /// The denied serials kept in `docs`.
    pub fn in_store(docs: Docs) -> Self {
        Self { docs }
    }

    /// Where they are kept (the file's path, or the ConfigMap).
    pub fn path(&self) -> PathBuf {
        PathBuf::from(self.docs.describe(DENIED_SERIALS_FILE))
    }

    /// Denies `serial`; returns false when it already was.
    pub fn deny(&self, serial: &str) -> Result<bool, DeniedError> {
        let serial = normalize_serial(serial)?;
        shared::update(self.docs.as_ref(), DENIED_SERIALS_FILE, |current| {
            let mut file = self.parse(current)?;
            if file.serials.iter().any(|r| r.serial == serial) {
                return Ok((None, false));
            }
            if file.serials.len() >= MAX_DENIED {
                return Err(DeniedError::Full { path: self.path() });
            }
            file.serials.push(DeniedRecord {
                serial: serial.clone(),
                denied_unix: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            });
            let mut text = serde_json::to_vec_pretty(&file).map_err(|e| DeniedError::Corrupt {
                path: self.path(),
                reason: e.to_string(),
            })?;
            text.push(b'\n');
            Ok((Some(text), true))
        })
    }

    /// Whether `serial` is denied.
    pub fn is_denied(&self, serial: &str) -> Result<bool, DeniedError> {
        let serial = normalize_serial(serial)?;
        Ok(self.load()?.serials.iter().any(|r| r.serial == serial))
    }

    /// Every denied serial, oldest first.
    pub fn list(&self) -> Result<Vec<String>, DeniedError> {
        Ok(self.load()?.serials.into_iter().map(|r| r.serial).collect())
    }

    fn load(&self) -> Result<DeniedFile, DeniedError> {
        let current = self.docs.read(DENIED_SERIALS_FILE)?;
        self.parse(current.as_ref().map(|c| c.data.as_slice()))
    }

    /// The document from its bytes (none, or empty: nothing denied yet).
    fn parse(&self, bytes: Option<&[u8]>) -> Result<DeniedFile, DeniedError> {
        let bytes = match bytes {
            Some(b) if !b.is_empty() => b,
            _ => {
                return Ok(DeniedFile {
                    version: FILE_VERSION,
                    serials: Vec::new(),
                })
            }
        };
        let corrupt = |reason: String| DeniedError::Corrupt {
            path: self.path(),
            reason,
        };
        let file: DeniedFile = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        if file.version != FILE_VERSION {
            return Err(corrupt(format!(
                "version {} is not supported",
                file.version
            )));
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_compare_in_one_form() {
        assert_eq!(normalize_serial("00:AB:cd").expect("ok"), "abcd");
        assert_eq!(normalize_serial(" 0abc\n").expect("ok"), "abc");
        assert_eq!(normalize_serial("00").expect("ok"), "0");
        for bad in ["", ":", "xyz", "12 34", &"a".repeat(65)] {
            assert!(normalize_serial(bad).is_err(), "{bad}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let denied = DeniedSerials::new(dir.path());
        assert!(!denied.is_denied("ab").expect("empty"));
        assert!(denied.deny("00:AB").expect("deny"));
        assert!(!denied.deny("ab").expect("again"));
        assert!(denied.is_denied("AB").expect("read"));
        assert_eq!(denied.list().expect("list"), ["ab"]);
    }
}
