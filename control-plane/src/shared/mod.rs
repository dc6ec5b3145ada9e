//! Control-plane state every replica shares: join tokens, denied serials, policy history and
//! the audit log, as named documents in one [`DocStore`].
//!
//! Two implementations, one code path above them: [`file::FileDocs`] keeps each document as a
//! file of the state directory (local mode, `weftctl` beside the server), and
//! [`kube::KubeDocs`] keeps it in the Kubernetes API (a Secret for join token hashes,
//! ConfigMaps for the rest), so every replica reads and writes the same state and none keeps
//! any of its own. Writes are compare-and-swap on the version read ([`update`]): the file's
//! digest under the directory lock, the object's `resourceVersion` in the API (a `409
//! Conflict` is retried on a fresh read, a bounded number of times). Reads are never cached:
//! every check (a join token presented, a renewal's serial) reads the document, so a change
//! made through one replica holds at the next call through any other.

use std::fmt;
use std::sync::Arc;

pub mod file;
pub mod kube;
pub mod lease;
mod replicas;

pub use replicas::{credentials, Credentials, Replicas};

/// The join token hashes (never the tokens).
pub const JOIN_TOKENS_DOC: &str = "join-tokens.json";
/// The denied certificate serials.
pub const DENIED_SERIALS_DOC: &str = "denied-serials.json";
/// The policy history (Kubernetes only: in a state directory each entry is its own file).
pub const HISTORY_DOC: &str = "history.json";
/// The audit records (Kubernetes only: in a state directory, the append-only `audit.log`).
pub const AUDIT_DOC: &str = "audit.json";
/// How many times [`update`] reads again after a conflicting write before giving up.
pub const MAX_ATTEMPTS: usize = 8;

/// A document and the version it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// Its bytes.
    pub data: Vec<u8>,
    /// The version to write over (a digest, or a `resourceVersion`).
    pub version: String,
}

/// Why a document could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Someone else wrote the document since it was read.
    #[error("{0}: changed by another writer")]
    Conflict(String),
    /// Still conflicting after [`MAX_ATTEMPTS`] reads.
    #[error("{0}: still changed by other writers after {MAX_ATTEMPTS} attempts")]
    Contended(String),
    /// The store could not be reached or refused (I/O, the API server).
    #[error("{0}")]
    Unavailable(String),
    /// The document is too large for where it is kept.
    #[error("{what}: {len} bytes, more than the {max} a document may hold")]
    TooLarge {
        /// The document.
        what: String,
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Named documents with versions.
pub trait DocStore: Send + Sync + fmt::Debug {
    /// The document `name` now, if it exists.
    fn read(&self, name: &str) -> Result<Option<Versioned>, StoreError>;
    /// Replaces `name` with `data` if it is still at `version` (`None`: it must not exist
    /// yet); [`StoreError::Conflict`] otherwise.
    fn write(&self, name: &str, data: &[u8], version: Option<&str>) -> Result<(), StoreError>;
    /// Where `name` is kept, for messages (a path, `Secret weft-system/weft-join-tokens`).
    fn describe(&self, name: &str) -> String;
}

/// A shared store.
pub type Docs = Arc<dyn DocStore>;

/// Read-modify-write of `name`: `change` gets the current bytes (or `None`) and returns the new
/// bytes (`None`: write nothing) and a result; a conflicting write is retried on a fresh read
/// up to [`MAX_ATTEMPTS`] times.
pub fn update<T, E: From<StoreError>>(
    store: &dyn DocStore,
    name: &str,
    mut change: impl FnMut(Option<&[u8]>) -> Result<(Option<Vec<u8>>, T), E>,
) -> Result<T, E> {
    for _ in 0..MAX_ATTEMPTS {
        let current = store.read(name)?;
        let (new, result) = change(current.as_ref().map(|c| c.data.as_slice()))?;
        let Some(new) = new else {
            return Ok(result);
        };
        match store.write(name, &new, current.as_ref().map(|c| c.version.as_str())) {
            Ok(()) => return Ok(result),
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::Contended(store.describe(name)).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_retry_on_conflict_and_give_up_when_contended() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = file::FileDocs::new(dir.path());
        let mut raced = false;
        let n: Result<usize, StoreError> = update(&store, "d.json", |cur| {
            let n = cur.map_or(0, |c| c.len());
            if !raced {
                // Another writer gets in between this read and the write.
                raced = true;
                store
                    .write("d.json", b"xx", None)
                    .expect("the other writer");
            }
            Ok((Some(vec![b'y'; n + 1]), n))
        });
        assert_eq!(n.expect("after one retry"), 2);
        assert_eq!(
            store.read("d.json").expect("read").expect("some").data,
            b"yyy"
        );
        // Another writer changes it between every read and write: given up, bounded.
        let mut n = 0;
        let always: Result<(), StoreError> = update(&store, "d.json", |_| {
            n += 1;
            let now = store.read("d.json")?;
            let version = now.as_ref().map(|v| v.version.as_str());
            store.write("d.json", format!("other {n}").as_bytes(), version)?;
            Ok((Some(b"w".to_vec()), ()))
        });
        assert!(
            matches!(always, Err(StoreError::Contended(_))),
            "{always:?}"
        );
        assert_eq!(n, MAX_ATTEMPTS);
    }
}
