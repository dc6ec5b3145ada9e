//! Policy history and the audit log, both in the control plane's state directory.
//!
//! - `history/<seq>-<version>.json`: the whole file set of every accepted policy version
//!   ([`HistoryEntry`]), so `weftctl rollback VERSION` restores exactly what was in force.
//!   Only the newest [`HISTORY_LIMIT`] entries are kept; older ones are deleted as new ones
//!   arrive.
//! - `audit.log`: one JSON object per line ([`AuditRecord`]) for every accepted or refused
//!   change, appended and never rewritten.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::files::{self, PRIVATE_MODE};
use crate::shared::{self, DocStore, Docs, StoreError, AUDIT_DOC, HISTORY_DOC};

/// Directory of history entries in the state directory.
pub const HISTORY_DIR: &str = "history";
/// The audit log in the state directory.
pub const AUDIT_LOG: &str = "audit.log";
/// How many accepted versions are kept.
pub const HISTORY_LIMIT: usize = 100;

/// Errors reading or writing history and audit files.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A history file is not valid.
    #[error("{path}: not a valid history entry: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> HistoryError + '_ {
    move |source| HistoryError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What caused a policy change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// `POST /v1/apply`.
    Apply,
    /// `POST /v1/rollback`.
    Rollback,
    /// An edit seen in the watched policy directory (or the policy found at start).
    FileChange,
    /// A change that was refused (audit log only).
    Rejected,
}

/// One accepted policy version, with every file it was made of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Position in the history (1, 2, ...), increasing.
    pub seq: u64,
    /// The policy version.
    pub version: String,
    /// When it was accepted (RFC 3339).
    pub time: String,
    /// Who made the change, e.g. `admin (alice)` or `policy-directory`.
    pub actor: String,
    /// What made the change.
    pub action: Action,
    /// File name to text.
    pub files: BTreeMap<String, String>,
}

/// A history entry without its files, as `GET /v1/history` lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistorySummary {
    /// Position in the history.
    pub seq: u64,
    /// The policy version.
    pub version: String,
    /// When it was accepted (RFC 3339).
    pub time: String,
    /// Who made the change.
    pub actor: String,
    /// What made the change.
    pub action: Action,
    /// The names of its files.
    pub files: Vec<String>,
}

/// One line of `audit.log`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When (RFC 3339).
    pub time: String,
    /// Who.
    pub actor: String,
    /// What.
    pub action: Action,
    /// The version in force before (`None` for the first version recorded).
    pub from_version: Option<String>,
    /// The version in force after (`None` when refused).
    pub to_version: Option<String>,
    /// The files the change touched (for a refusal: the files submitted or read).
    pub files: Vec<String>,
    /// Why it was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The current time in RFC 3339 (seconds, UTC).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Audit records kept in a shared store (the newest; a file's audit log keeps them all).
pub const AUDIT_LIMIT: usize = 1000;

/// History and audit of one state directory, or of a shared store (the Kubernetes API).
#[derive(Debug, Clone)]
pub struct History {
    dir: PathBuf,
    audit: PathBuf,
    limit: usize,
    /// Entries and audit records as two documents of a shared store instead of files.
    shared: Option<Docs>,
}

impl History {
    /// The history of `state_dir` (its `history/` directory is created, mode 0700).
    pub fn open(state_dir: &Path) -> Result<Self, HistoryError> {
        let dir = state_dir.join(HISTORY_DIR);
        files::create_dir(&dir).map_err(io_err(&dir))?;
        Ok(History {
            dir,
            audit: state_dir.join(AUDIT_LOG),
            limit: HISTORY_LIMIT,
            shared: None,
        })
    }

    /// The history and audit records kept in `docs` ([`HISTORY_DOC`], [`AUDIT_DOC`]): what
    /// every replica reads, and the writer appends to.
    pub fn in_store(docs: Docs) -> Self {
        History {
            dir: PathBuf::from(docs.describe(HISTORY_DOC)),
            audit: PathBuf::from(docs.describe(AUDIT_DOC)),
            limit: HISTORY_LIMIT,
            shared: Some(docs),
        }
    }

    /// Keep only `limit` entries (at least 1) instead of [`HISTORY_LIMIT`].
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = limit.max(1);
        self
    }

    /// The audit log's path.
    pub fn audit_path(&self) -> &Path {
        &self.audit
    }

    /// History files by sequence number, oldest first.
    fn entries(&self) -> Result<Vec<(u64, PathBuf)>, HistoryError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !name.ends_with(".json") {
                continue; // temporary files of an interrupted write
            }
            let Some(seq) = name.split('-').next().and_then(|s| s.parse::<u64>().ok()) else {
                continue;
            };
            out.push((seq, entry.path()));
        }
        out.sort();
        Ok(out)
    }

    fn read(path: &Path) -> Result<HistoryEntry, HistoryError> {
        let bytes = fs::read(path).map_err(io_err(path))?;
        serde_json::from_slice(&bytes).map_err(|e| HistoryError::Corrupt {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }

    /// The newest entry, if any.
    pub fn latest(&self) -> Result<Option<HistoryEntry>, HistoryError> {
        if let Some(docs) = &self.shared {
            return Ok(self.shared_entries(docs.as_ref(), None)?.pop());
        }
        match self.entries()?.last() {
            Some((_, path)) => Ok(Some(Self::read(path)?)),
            None => Ok(None),
        }
    }

    /// Every kept entry without its files, newest first.
    pub fn list(&self) -> Result<Vec<HistorySummary>, HistoryError> {
        let entries = match &self.shared {
            Some(docs) => self.shared_entries(docs.as_ref(), None)?,
            None => self
                .entries()?
                .iter()
                .map(|(_, path)| Self::read(path))
                .collect::<Result<_, _>>()?,
        };
        let mut out = Vec::new();
        for e in entries.into_iter().rev() {
            out.push(HistorySummary {
                seq: e.seq,
                version: e.version,
                time: e.time,
                actor: e.actor,
                action: e.action,
                files: e.files.into_keys().collect(),
            });
        }
        Ok(out)
    }

    /// The newest entry of `version`, if it is still kept.
    pub fn find(&self, version: &str) -> Result<Option<HistoryEntry>, HistoryError> {
        if let Some(docs) = &self.shared {
            let entries = self.shared_entries(docs.as_ref(), None)?;
            return Ok(entries.into_iter().rev().find(|e| e.version == version));
        }
        let suffix = format!("-{version}.json");
        for (_, path) in self.entries()?.iter().rev() {
            if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(&suffix))
            {
                return Ok(Some(Self::read(path)?));
            }
        }
        Ok(None)
    }

    /// Keep a newly accepted version, then delete entries beyond the limit.
    pub fn record(
        &self,
        version: &str,
        actor: &str,
        action: Action,
        files: BTreeMap<String, String>,
    ) -> Result<HistoryEntry, HistoryError> {
        if let Some(docs) = &self.shared {
            return self.record_shared(docs.as_ref(), version, actor, action, files);
        }
        let entries = self.entries()?;
        let seq = entries.last().map_or(1, |(s, _)| s + 1);
        let entry = HistoryEntry {
            seq,
            version: version.to_owned(),
            time: now_rfc3339(),
            actor: actor.to_owned(),
            action,
            files,
        };
        let path = self.dir.join(format!("{seq:08}-{version}.json"));
        let json = serde_json::to_vec_pretty(&entry).map_err(|e| HistoryError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        weft_certs::files::write_atomically(&path, &json, PRIVATE_MODE).map_err(io_err(&path))?;
        let kept = entries.len() + 1;
        if kept > self.limit {
            for (_, old) in entries.iter().take(kept - self.limit) {
                fs::remove_file(old).map_err(io_err(old))?;
            }
        }
        Ok(entry)
    }

    /// Append one line to the audit log (created with mode 0600). One `write` of the whole
    /// line on an `O_APPEND` file, so concurrent writers never interleave within a line.
    pub fn audit(&self, record: &AuditRecord) -> Result<(), HistoryError> {
        if let Some(docs) = &self.shared {
            return self.audit_shared(docs.as_ref(), record);
        }
        let mut line = serde_json::to_vec(record).map_err(|e| HistoryError::Corrupt {
            path: self.audit.clone(),
            reason: e.to_string(),
        })?;
        line.push(b'\n');
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(PRIVATE_MODE)
            .open(&self.audit)
            .map_err(io_err(&self.audit))?;
        f.write_all(&line).map_err(io_err(&self.audit))?;
        Ok(())
    }
}

impl History {
    /// Every audit record kept, oldest first (a line of the log that does not parse is
    /// skipped: the log is appended by hand-run tools too).
    pub fn audit_records(&self) -> Result<Vec<AuditRecord>, HistoryError> {
        if let Some(docs) = &self.shared {
            return self.shared_doc(docs.as_ref(), AUDIT_DOC, None);
        }
        let text = match fs::read_to_string(&self.audit) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.audit)(e)),
        };
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }

    fn shared_error(&self, e: StoreError) -> HistoryError {
        HistoryError::Io {
            path: self.dir.clone(),
            source: io::Error::other(e.to_string()),
        }
    }

    /// A JSON array document of the shared store: `bytes` when given (a read already made),
    /// else read now.
    fn shared_doc<T: serde::de::DeserializeOwned>(
        &self,
        docs: &dyn DocStore,
        name: &str,
        bytes: Option<&[u8]>,
    ) -> Result<Vec<T>, HistoryError> {
        let read;
        let bytes = match bytes {
            Some(b) => Some(b),
            None => {
                read = docs.read(name).map_err(|e| self.shared_error(e))?;
                read.as_ref().map(|v| v.data.as_slice())
            }
        };
        match bytes {
            Some(b) if !b.is_empty() => {
                serde_json::from_slice(b).map_err(|e| HistoryError::Corrupt {
                    path: PathBuf::from(docs.describe(name)),
                    reason: e.to_string(),
                })
            }
            _ => Ok(Vec::new()),
        }
    }

    fn shared_entries(
        &self,
        docs: &dyn DocStore,
        bytes: Option<&[u8]>,
    ) -> Result<Vec<HistoryEntry>, HistoryError> {
        self.shared_doc(docs, HISTORY_DOC, bytes)
    }

    /// Appends an entry (the next sequence number) and drops the oldest beyond the limit or
    /// the size a document may have; compare-and-swap, retried on conflict.
    fn record_shared(
        &self,
        docs: &dyn DocStore,
        version: &str,
        actor: &str,
        action: Action,
        files: BTreeMap<String, String>,
    ) -> Result<HistoryEntry, HistoryError> {
        shared::update(docs, HISTORY_DOC, |current| {
            let mut entries = self.shared_entries(docs, Some(current.unwrap_or_default()))?;
            let entry = HistoryEntry {
                seq: entries.last().map_or(1, |e| e.seq + 1),
                version: version.to_owned(),
                time: now_rfc3339(),
                actor: actor.to_owned(),
                action,
                files: files.clone(),
            };
            entries.push(entry.clone());
            let keep = entries.len().saturating_sub(self.limit);
            entries.drain(..keep);
            Ok((Some(self.bounded(&mut entries)?), entry))
        })
        .map_err(|e: SharedError| e.0)
    }

    /// Appends an audit record, keeping the newest [`AUDIT_LIMIT`].
    fn audit_shared(&self, docs: &dyn DocStore, record: &AuditRecord) -> Result<(), HistoryError> {
        shared::update(docs, AUDIT_DOC, |current| {
            let mut records: Vec<AuditRecord> =
                self.shared_doc(docs, AUDIT_DOC, Some(current.unwrap_or_default()))?;
            records.push(record.clone());
            let keep = records.len().saturating_sub(AUDIT_LIMIT);
            records.drain(..keep);
            Ok((Some(self.bounded(&mut records)?), ()))
        })
        .map_err(|e: SharedError| e.0)
    }

    /// `items` as JSON, the oldest dropped until it fits a shared document (the newest stays).
    fn bounded<T: Serialize>(&self, items: &mut Vec<T>) -> Result<Vec<u8>, HistoryError> {
        loop {
            let json = serde_json::to_vec(items).map_err(|e| HistoryError::Corrupt {
                path: self.dir.clone(),
                reason: e.to_string(),
            })?;
            if json.len() <= crate::shared::kube::MAX_DOC_BYTES || items.len() <= 1 {
                return Ok(json);
            }
            items.remove(0);
        }
    }
}

/// A history error inside [`shared::update`] (which needs `From<StoreError>`).
struct SharedError(HistoryError);

impl From<StoreError> for SharedError {
    fn from(e: StoreError) -> Self {
        SharedError(HistoryError::Io {
            path: PathBuf::new(),
            source: io::Error::other(e.to_string()),
        })
    }
}

impl From<HistoryError> for SharedError {
    fn from(e: HistoryError) -> Self {
        SharedError(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_list_newest_first_find_and_prune() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let h = History::open(tmp.path()).expect("open").with_limit(3);
        let files = |t: &str| BTreeMap::from([("mesh.yaml".to_owned(), t.to_owned())]);
        for (i, v) in ["aa", "bb", "cc", "dd"].iter().enumerate() {
            let e = h
                .record(v, "admin (t)", Action::Apply, files(v))
                .expect("record");
            assert_eq!(e.seq, i as u64 + 1);
        }
        let list = h.list().expect("list");
        let versions: Vec<&str> = list.iter().map(|e| e.version.as_str()).collect();
        assert_eq!(versions, ["dd", "cc", "bb"], "newest first, oldest pruned");
        assert!(h.find("aa").expect("find").is_none());
        assert_eq!(h.find("bb").expect("find").expect("bb").files, files("bb"));
        assert_eq!(h.latest().expect("latest").expect("some").version, "dd");
        h.audit(&AuditRecord {
            time: now_rfc3339(),
            actor: "policy-directory".into(),
            action: Action::Rejected,
            from_version: Some("dd".into()),
            to_version: None,
            files: vec!["mesh.yaml".into()],
            error: Some("mesh.yaml:1:1: bad".into()),
        })
        .expect("audit");
        let log = fs::read_to_string(h.audit_path()).expect("log");
        let v: serde_json::Value = serde_json::from_str(log.trim()).expect("json line");
        assert_eq!(v["action"], "rejected");
        assert_eq!(v["to_version"], serde_json::Value::Null);
    }
}
