//! Denied certificate serials: certificates an operator has stopped from renewing
//! (`weftctl certs deny`), such as one whose key was stolen.
//!
//! Kept in the state directory ([`DENIED_SERIALS_FILE`], mode 0600) and read on every renewal,
//! like the join tokens, so a denial takes effect in a running control plane at once. A
//! denied certificate still works until it expires (it is short-lived); it can no longer be
//! renewed, by itself or together with a credential.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::files::{self, DirLock, PRIVATE_MODE};

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
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file is not valid.
    #[error("{path}: not a valid denied-serials file: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The denied serials of a state directory. Holds no state: every call reads the file.
#[derive(Debug, Clone)]
pub struct DeniedSerials {
    state_dir: PathBuf,
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
        Self {
            state_dir: state_dir.into(),
        }
    }

    /// Path of the file.
    pub fn path(&self) -> PathBuf {
        self.state_dir.join(DENIED_SERIALS_FILE)
    }

    /// Denies `serial`; returns false when it already was.
    pub fn deny(&self, serial: &str) -> Result<bool, DeniedError> {
        let serial = normalize_serial(serial)?;
        files::create_dir(&self.state_dir).map_err(|e| self.io(&self.state_dir, e))?;
        let _lock = DirLock::acquire(&self.state_dir).map_err(|e| self.io(&self.state_dir, e))?;
        let mut file = self.load()?;
        if file.serials.iter().any(|r| r.serial == serial) {
            return Ok(false);
        }
        if file.serials.len() >= MAX_DENIED {
            return Err(DeniedError::Full { path: self.path() });
        }
        file.serials.push(DeniedRecord {
            serial,
            denied_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        });
        let path = self.path();
        let mut text = serde_json::to_string_pretty(&file).map_err(|e| DeniedError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        text.push('\n');
        weft_certs::files::write_atomically(&path, text.as_bytes(), PRIVATE_MODE)
            .map_err(|e| self.io(&path, e))?;
        Ok(true)
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
        let path = self.path();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(DeniedFile {
                    version: FILE_VERSION,
                    serials: Vec::new(),
                })
            }
            Err(e) => return Err(self.io(&path, e)),
        };
        let corrupt = |reason: String| DeniedError::Corrupt {
            path: path.clone(),
            reason,
        };
        let file: DeniedFile = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        if file.version != FILE_VERSION {
            return Err(corrupt(format!(
                "version {} is not supported",
                file.version
            )));
        }
        Ok(file)
    }

    fn io(&self, path: &Path, source: io::Error) -> DeniedError {
        DeniedError::Io {
            path: path.to_owned(),
            source,
        }
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
