//! Policy changes made by operators: validate, apply (or preview) and roll back files of the
//! policy directory, and record every accepted change in [`History`] and every change, refused
//! ones too, in the audit log.
//!
//! Every change, the watched directory's included, runs under one lock, so an apply's own
//! write is never mistaken for a directory edit: when the watcher reloads after an apply, it
//! finds the version already in force and records nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use crate::operator::history::{
    now_rfc3339, Action, AuditRecord, History, HistoryEntry, HistoryError,
};
pub use crate::operator::summary::{summary, Summary};
use crate::policy::mesh::{MeshPolicy, PolicyErrors};
use crate::policy::source::{check_file_name, DirSource, PolicySource, Update};
use crate::push::hub::Hub;
use crate::shared::lease::Leader;

/// Policy files: name to text.
type Files = BTreeMap<String, String>;

/// Actor of changes seen in the watched policy directory.
pub const DIRECTORY_ACTOR: &str = "policy-directory";

/// Why an operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The request itself is malformed (a bad file name, no files).
    #[error("{0}")]
    BadRequest(String),
    /// The resulting policy is invalid; nothing was changed.
    #[error("the policy is invalid:\n{0}")]
    Invalid(PolicyErrors),
    /// No kept history entry has this version.
    #[error("no policy version {0:?} in the history (weftctl history lists them)")]
    UnknownVersion(String),
    /// History or audit files could not be read or written.
    #[error(transparent)]
    History(#[from] HistoryError),
    /// The policy directory could not be read or written.
    #[error("policy directory: {0}")]
    Directory(String),
}

/// One file's change, as a unified diff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileDiff {
    /// The file name.
    pub file: String,
    /// `added`, `removed` or `changed`.
    pub change: &'static str,
    /// Unified diff (`--- a/NAME`, `+++ b/NAME`, hunks).
    pub diff: String,
}

/// What an apply or rollback did, or would do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// Whether anything was written (false for a dry run).
    pub applied: bool,
    /// The version in force before.
    pub from_version: String,
    /// The version of the resulting policy (in force unless a dry run).
    pub to_version: String,
    /// Whether the policy version changes.
    pub changed: bool,
    /// The file diffs (directory now against the result).
    pub diffs: Vec<FileDiff>,
    /// The service and route changes.
    pub summary: Summary,
    /// A problem after the policy went in force (history or audit log not written).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// Where the policy of [`Ops`] comes from.
enum Source {
    /// A directory operators change through the API.
    Dir(DirSource),
    /// A source changed elsewhere (the Kubernetes API): only watched.
    ReadOnly(Arc<dyn PolicySource>),
}

/// Why `apply` and `rollback` are refused when the policy comes from the Kubernetes API.
pub const READ_ONLY_SOURCE: &str = "the policy comes from the Kubernetes API (weft.dev \
     MeshRoute, TrafficPolicy and AuthorizationPolicy resources): change it with `kubectl apply`, \
     not weftctl apply or rollback";

/// Operators' policy changes over one policy directory, hub and history.
pub struct Ops {
    hub: Arc<Hub>,
    source: Source,
    history: History,
    lock: Mutex<()>,
    /// With a shared history, whether this replica is its one writer now; `None`: always.
    leader: Option<Arc<Leader>>,
}

impl std::fmt::Debug for Ops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match &self.source {
            Source::Dir(d) => format!("{d:?}"),
            Source::ReadOnly(s) => s.describe(),
        };
        f.debug_struct("Ops")
            .field("source", &source)
            .field("history", &self.history)
            .finish_non_exhaustive()
    }
}

impl Ops {
    /// Operations on `source`'s directory, pushing through `hub`, recording in `history`.
    pub fn new(hub: Arc<Hub>, source: DirSource, history: History) -> Self {
        Ops {
            hub,
            source: Source::Dir(source),
            history,
            lock: Mutex::new(()),
            leader: None,
        }
    }

    /// Operations over a source changed elsewhere (the Kubernetes API): reloads are recorded;
    /// validate, apply and rollback are refused with [`READ_ONLY_SOURCE`].
    pub fn read_only(hub: Arc<Hub>, source: Arc<dyn PolicySource>, history: History) -> Self {
        Ops {
            hub,
            source: Source::ReadOnly(source),
            history,
            lock: Mutex::new(()),
            leader: None,
        }
    }

    /// Record history and audit only while `leader` says this replica is the writer (the
    /// history is shared by replicas that all see the same changes: one records them).
    pub fn with_leader(mut self, leader: Arc<Leader>) -> Self {
        self.leader = Some(leader);
        self
    }

    /// Whether this replica records history now.
    fn writer(&self) -> bool {
        self.leader.as_ref().is_none_or(|l| l.is_leader())
    }

    /// The policy directory, or the refusal when the policy comes from elsewhere.
    fn dir(&self) -> Result<&DirSource, OpsError> {
        match &self.source {
            Source::Dir(d) => Ok(d),
            Source::ReadOnly(_) => Err(OpsError::BadRequest(READ_ONLY_SOURCE.to_owned())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The history.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// At start: record the policy in force unless it is already the newest history entry
    /// (it is then the same version the control plane last ran).
    pub fn record_start(&self) -> Result<(), OpsError> {
        let _g = self.lock();
        if !self.writer() {
            return Ok(());
        }
        let policy = self.hub.policy();
        let latest = self.history.latest()?;
        if latest.as_ref().map(|e| e.version.as_str()) == Some(policy.version()) {
            return Ok(());
        }
        let from = latest
            .as_ref()
            .map(|e| e.version.clone())
            .unwrap_or_default();
        let before = latest.map(|e| e.files).unwrap_or_default();
        self.accepted(&from, &policy, &before, DIRECTORY_ACTOR, Action::FileChange)
    }

    /// Reload the watched directory: an accepted change is recorded with actor
    /// [`DIRECTORY_ACTOR`], a refused one is audited with its errors.
    pub fn reload_from_directory(&self) {
        let _g = self.lock();
        let before = self.hub.policy();
        let loaded = match &self.source {
            Source::Dir(d) => d.load(),
            Source::ReadOnly(s) => s.load(),
        };
        let update = self.hub.take_policy(loaded);
        if !self.writer() {
            return;
        }
        let result = match update {
            Update::Unchanged => Ok(()),
            Update::Applied { .. } => {
                let now = self.hub.policy();
                self.accepted(
                    before.version(),
                    &now,
                    &before.file_texts(),
                    DIRECTORY_ACTOR,
                    Action::FileChange,
                )
            }
            Update::Rejected(errors) => {
                let files = match &self.source {
                    Source::Dir(d) => d
                        .files()
                        .map(|f| {
                            f.iter()
                                .map(|p| crate::policy::mesh::file_name(p))
                                .collect()
                        })
                        .unwrap_or_default(),
                    Source::ReadOnly(_) => before.file_texts().into_keys().collect(),
                };
                self.history
                    .audit(&AuditRecord {
                        time: now_rfc3339(),
                        actor: DIRECTORY_ACTOR.to_owned(),
                        action: Action::Rejected,
                        from_version: Some(before.version().to_owned()),
                        to_version: None,
                        files,
                        error: Some(errors.to_string()),
                    })
                    .map_err(OpsError::from)
            }
        };
        if let Err(e) = result {
            log::error!("recording a policy change: {e}");
        }
    }

    /// Record an accepted version in history and the audit log.
    fn accepted(
        &self,
        from: &str,
        policy: &MeshPolicy,
        before: &BTreeMap<String, String>,
        actor: &str,
        action: Action,
    ) -> Result<(), OpsError> {
        let files = policy.file_texts();
        let touched = changed_files(before, &files);
        self.history
            .record(policy.version(), actor, action, files)?;
        self.history.audit(&AuditRecord {
            time: now_rfc3339(),
            actor: actor.to_owned(),
            action,
            // Empty for the first version recorded: there was none before it.
            from_version: Some(from.to_owned()).filter(|f| !f.is_empty()),
            to_version: Some(policy.version().to_owned()),
            files: touched,
            error: None,
        })?;
        Ok(())
    }

    fn check_names(files: &BTreeMap<String, String>) -> Result<(), OpsError> {
        if files.is_empty() {
            return Err(OpsError::BadRequest("no files given".into()));
        }
        for name in files.keys() {
            check_file_name(name).map_err(OpsError::BadRequest)?;
        }
        Ok(())
    }

    /// The directory's files now, and with `files` added or replaced.
    fn merged(&self, files: &Files) -> Result<(Files, Files), OpsError> {
        let now = self
            .dir()?
            .texts()
            .map_err(|e| OpsError::Directory(e.to_string()))?;
        let mut merged = now.clone();
        merged.extend(files.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok((now, merged))
    }

    /// Validate the policy directory as it would be with `files` (name to text) added or
    /// replaced; nothing is written.
    pub fn validate(&self, files: &BTreeMap<String, String>) -> Result<MeshPolicy, OpsError> {
        Self::check_names(files)?;
        let (_, merged) = self.merged(files)?;
        self.checked(self.dir()?, &merged)
            .map_err(OpsError::Invalid)
    }

    /// The policy `files` make, valid and within the hub's bounds (a snapshot over
    /// `--max-snapshot-bytes` is refused here, before anything is written), or why not.
    fn checked(
        &self,
        dir: &DirSource,
        files: &BTreeMap<String, String>,
    ) -> Result<MeshPolicy, PolicyErrors> {
        let policy = dir.validate_set(files)?;
        self.hub.check_snapshots(&policy)?;
        Ok(policy)
    }

    /// Apply `files` (added or replaced in the directory): validated first, then written
    /// atomically and put in force at once (not at the next poll). With `dry_run`, only the
    /// diff is computed. A refused apply (not a dry run) is audited.
    pub fn apply(
        &self,
        files: &BTreeMap<String, String>,
        actor: &str,
        dry_run: bool,
    ) -> Result<Outcome, OpsError> {
        self.dir()?;
        Self::check_names(files)?;
        let _g = self.lock();
        let (now, merged) = self.merged(files)?;
        self.change(&now, merged, false, actor, Action::Apply, dry_run)
    }

    /// Restore exactly the files of history version `version` (other policy files are
    /// removed) and put it in force.
    pub fn rollback(&self, version: &str, actor: &str) -> Result<Outcome, OpsError> {
        self.dir()?;
        let _g = self.lock();
        let entry: HistoryEntry = self
            .history
            .find(version)?
            .ok_or_else(|| OpsError::UnknownVersion(version.to_owned()))?;
        let now = self
            .dir()?
            .texts()
            .map_err(|e| OpsError::Directory(e.to_string()))?;
        self.change(&now, entry.files, true, actor, Action::Rollback, false)
    }

    /// Validate `target`, then (unless `dry_run`) write it, put it in force and record it.
    fn change(
        &self,
        now: &BTreeMap<String, String>,
        target: BTreeMap<String, String>,
        exact: bool,
        actor: &str,
        action: Action,
        dry_run: bool,
    ) -> Result<Outcome, OpsError> {
        let before = self.hub.policy();
        let policy = match self.checked(self.dir()?, &target) {
            Ok(p) => p,
            Err(errors) => {
                if !dry_run {
                    self.history.audit(&AuditRecord {
                        time: now_rfc3339(),
                        actor: actor.to_owned(),
                        action: Action::Rejected,
                        from_version: Some(before.version().to_owned()),
                        to_version: None,
                        files: changed_files(now, &target),
                        error: Some(errors.to_string()),
                    })?;
                }
                return Err(OpsError::Invalid(errors));
            }
        };
        let mut outcome = Outcome {
            applied: false,
            from_version: before.version().to_owned(),
            to_version: policy.version().to_owned(),
            changed: policy.version() != before.version(),
            diffs: diffs(now, &target, exact),
            summary: summary(&before, &policy),
            warning: None,
        };
        if dry_run {
            return Ok(outcome);
        }
        let written = if exact {
            target.clone()
        } else {
            target
                .iter()
                .filter(|(k, v)| now.get(*k) != Some(*v))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        self.dir()?
            .write_files(&written, exact)
            .map_err(|e| OpsError::Directory(e.to_string()))?;
        outcome.applied = true;
        if let Update::Applied { .. } = self.hub.take_policy(Ok(policy)) {
            let in_force = self.hub.policy();
            // The policy is in force now: an error here must not read as a refusal (a retry
            // would change nothing), so it is reported alongside the result.
            if let Err(e) = self.accepted(
                before.version(),
                &in_force,
                &before.file_texts(),
                actor,
                action,
            ) {
                log::error!(
                    "policy {} is in force, but recording it failed: {e}",
                    in_force.version()
                );
                outcome.warning = Some(format!(
                    "the policy is in force, but recording it failed: {e}"
                ));
            }
        }
        Ok(outcome)
    }
}

/// Names of files added, removed or changed from `a` to `b`.
fn changed_files(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<String> {
    let names: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    names
        .into_iter()
        .filter(|n| a.get(*n) != b.get(*n))
        .cloned()
        .collect()
}

/// Unified diffs from `now` to `target`; with `exact`, files missing from `target` are
/// removals, otherwise they stay as they are.
fn diffs(
    now: &BTreeMap<String, String>,
    target: &BTreeMap<String, String>,
    exact: bool,
) -> Vec<FileDiff> {
    let mut out = Vec::new();
    for name in changed_files(now, target) {
        let (old, new) = (now.get(&name), target.get(&name));
        if new.is_none() && !exact {
            continue;
        }
        let change = match (old, new) {
            (None, _) => "added",
            (_, None) => "removed",
            _ => "changed",
        };
        let (old, new) = (
            old.map_or("", String::as_str),
            new.map_or("", String::as_str),
        );
        let diff = similar::TextDiff::from_lines(old, new)
            .unified_diff()
            .context_radius(3)
            .header(&format!("a/{name}"), &format!("b/{name}"))
            .to_string();
        out.push(FileDiff {
            file: name,
            change,
            diff,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_and_changed_files() {
        let a = BTreeMap::from([
            ("a.yaml".to_owned(), "x: 1\ny: 2\n".to_owned()),
            ("b.yaml".to_owned(), "z: 1\n".to_owned()),
        ]);
        let b = BTreeMap::from([
            ("a.yaml".to_owned(), "x: 1\ny: 3\n".to_owned()),
            ("c.yaml".to_owned(), "w: 1\n".to_owned()),
        ]);
        assert_eq!(changed_files(&a, &b), ["a.yaml", "b.yaml", "c.yaml"]);
        let d = diffs(&a, &b, false);
        assert_eq!(d.len(), 2, "b.yaml kept when not exact");
        assert_eq!(d[0].change, "changed");
        assert!(d[0].diff.contains("--- a/a.yaml"), "{}", d[0].diff);
        assert!(d[0].diff.contains("-y: 2\n+y: 3\n"), "{}", d[0].diff);
        assert_eq!(d[1].change, "added");
        let d = diffs(&a, &b, true);
        assert_eq!(d.len(), 3);
        assert_eq!(d[1].change, "removed");
    }
}
