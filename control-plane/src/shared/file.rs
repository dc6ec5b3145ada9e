//! Documents as files of a state directory (mode 0600), each write under the directory lock
//! and atomic (rename); a document's version is the SHA-256 of its bytes.

use std::io;
use std::path::{Path, PathBuf};

use crate::files::{self, DirLock, PRIVATE_MODE};
use crate::shared::{DocStore, StoreError, Versioned};

/// The documents of one state directory.
#[derive(Debug, Clone)]
pub struct FileDocs {
    dir: PathBuf,
}

impl FileDocs {
    /// The documents of `dir` (created, mode 0700, on the first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The path of document `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn unavailable(path: &Path, e: io::Error) -> StoreError {
        StoreError::Unavailable(format!("{}: {e}", path.display()))
    }
}

fn digest(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl DocStore for FileDocs {
    fn read(&self, name: &str) -> Result<Option<Versioned>, StoreError> {
        let path = self.path(name);
        match std::fs::read(&path) {
            Ok(data) => Ok(Some(Versioned {
                version: digest(&data),
                data,
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Self::unavailable(&path, e)),
        }
    }

    fn write(&self, name: &str, data: &[u8], version: Option<&str>) -> Result<(), StoreError> {
        files::create_dir(&self.dir).map_err(|e| Self::unavailable(&self.dir, e))?;
        let _lock = DirLock::acquire(&self.dir).map_err(|e| Self::unavailable(&self.dir, e))?;
        let now = self.read(name)?;
        if now.as_ref().map(|v| v.version.as_str()) != version {
            return Err(StoreError::Conflict(self.describe(name)));
        }
        let path = self.path(name);
        weft_certs::files::write_atomically(&path, data, PRIVATE_MODE)
            .map_err(|e| Self::unavailable(&path, e))
    }

    fn describe(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}
