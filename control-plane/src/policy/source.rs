//! Where the mesh policy comes from. A [`PolicySource`] loads the whole policy and says when it
//! may have changed; [`DirSource`] reads a directory of YAML files,
//! [`crate::policy::kube::source::KubeSource`] the Kubernetes API. [`LastGood`] keeps the policy in force: an invalid change is refused with its
//! errors and the last good policy stays.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crate::policy::mesh::{file_name, MeshPolicy, PolicyErrors};

/// How often [`DirSource`] looks at its directory.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// A source of mesh policy.
pub trait PolicySource: Send + Sync {
    /// Read and validate the whole policy as it is now.
    fn load(&self) -> Result<MeshPolicy, PolicyErrors>;

    /// Call `on_change` (from a thread of the source's own) each time the policy may have
    /// changed, until the returned [`Watch`] is dropped. Start watching before the first
    /// [`load`](Self::load), so no change falls between the two.
    fn watch(&self, on_change: Box<dyn Fn() + Send>) -> io::Result<Watch>;

    /// Where the policy comes from, for logs and status (e.g. `directory /etc/weft/policy`).
    fn describe(&self) -> String;
}

/// A running watch; dropping it stops the watching thread.
pub struct Watch {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Watch")
    }
}

impl Watch {
    /// A watch run by `thread`, which stops once `stop` sends or is dropped.
    pub(crate) fn from_thread(stop: mpsc::Sender<()>, thread: JoinHandle<()>) -> Self {
        Watch {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A directory of policy files: every `*.yaml` and `*.yml` directly in it (not in
/// subdirectories; names starting with `.` are skipped, as are editors' and Kubernetes'
/// `..data` entries), read in name order. A directory without policy files is an error, so a
/// missing mount never withdraws every route.
#[derive(Debug, Clone)]
pub struct DirSource {
    dir: PathBuf,
    interval: Duration,
}

impl DirSource {
    /// A source for `dir`, polled every [`DEFAULT_POLL_INTERVAL`].
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DirSource {
            dir: dir.into(),
            interval: DEFAULT_POLL_INTERVAL,
        }
    }

    /// Poll every `interval` instead.
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The policy files now in the directory, sorted by name.
    pub fn files(&self) -> io::Result<Vec<PathBuf>> {
        policy_files(&self.dir)
    }

    /// Every policy file now in the directory: name to text.
    pub fn texts(&self) -> Result<BTreeMap<String, String>, PolicyErrors> {
        let files = self
            .files()
            .map_err(|e| PolicyErrors::file(&self.dir, format!("cannot read directory: {e}")))?;
        let mut out = BTreeMap::new();
        for path in files {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| PolicyErrors::file(&path, format!("cannot read: {e}")))?;
            out.insert(file_name(&path), text);
        }
        Ok(out)
    }

    /// Validate `files` (name to text) as this directory's whole policy would be, in name
    /// order, each file named by its path in the directory.
    pub fn validate_set(
        &self,
        files: &BTreeMap<String, String>,
    ) -> Result<MeshPolicy, PolicyErrors> {
        if files.is_empty() {
            return Err(PolicyErrors::file(
                &self.dir,
                "no policy files (*.yaml, *.yml) in the directory",
            ));
        }
        let texts: Vec<(PathBuf, String)> = files
            .iter()
            .map(|(name, text)| (self.dir.join(name), text.clone()))
            .collect();
        MeshPolicy::from_texts(&texts)
    }

    /// Write `files` (name to text) into the directory, each atomically (a temporary file
    /// renamed over the old one, so the watcher never reads half a file); with `exact`, also
    /// remove every other policy file, so the directory holds exactly `files`. Files whose text
    /// is unchanged are not rewritten.
    pub fn write_files(&self, files: &BTreeMap<String, String>, exact: bool) -> io::Result<()> {
        for (name, text) in files {
            // Names come from the API (checked there) or from history, which recorded what the
            // directory held; never let one reach outside the directory.
            if name.is_empty() || name.contains(['/', '\0']) || name.starts_with('.') {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("file name {name:?} is not a plain file name"),
                ));
            }
            let path = self.dir.join(name);
            if std::fs::read_to_string(&path).is_ok_and(|old| old == *text) {
                continue;
            }
            weft_certs::files::write_atomically(&path, text.as_bytes(), POLICY_FILE_MODE)?;
        }
        if exact {
            for path in self.files()? {
                if !files.contains_key(&file_name(&path)) {
                    std::fs::remove_file(&path)?;
                }
            }
        }
        Ok(())
    }
}

/// Mode of policy files written through the operator API (policy is not secret).
const POLICY_FILE_MODE: u32 = 0o644;

/// Whether `name` may name a policy file written through the operator API: a plain file name
/// (no directory part, not hidden) ending in `.yaml` or `.yml`, as [`DirSource`] reads them.
pub fn check_file_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if name.is_empty() || name.len() > 200 {
        // Not echoed: it may be megabytes long.
        return Err(format!(
            "a file name of {} bytes: must have 1 to 200 characters",
            name.len()
        ));
    }
    if !ok_chars || name.starts_with('.') {
        return Err(format!(
            "file name {name:?}: only letters, digits, '.', '-' and '_', not starting with '.' \
             (no directories)"
        ));
    }
    if !(name.ends_with(".yaml") || name.ends_with(".yml")) {
        return Err(format!(
            "file name {name:?}: must end in .yaml or .yml (the directory reads nothing else)"
        ));
    }
    Ok(())
}

impl PolicySource for DirSource {
    fn load(&self) -> Result<MeshPolicy, PolicyErrors> {
        let files = self
            .files()
            .map_err(|e| PolicyErrors::file(&self.dir, format!("cannot read directory: {e}")))?;
        if files.is_empty() {
            return Err(PolicyErrors::file(
                &self.dir,
                "no policy files (*.yaml, *.yml) in the directory",
            ));
        }
        MeshPolicy::load_files(&files)
    }

    fn watch(&self, on_change: Box<dyn Fn() + Send>) -> io::Result<Watch> {
        let dir = self.dir.clone();
        let interval = self.interval;
        let mut last = fingerprint(&dir);
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("weft-policy-watch".into())
            .spawn(move || {
                // A message or a dropped sender both mean stop.
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    let now = fingerprint(&dir);
                    if now != last {
                        last = now;
                        on_change();
                    }
                }
            })?;
        Ok(Watch {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    fn describe(&self) -> String {
        format!("directory {}", self.dir.display())
    }
}

fn policy_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            continue;
        }
        let path = entry.path();
        // Follows symlinks (a Kubernetes ConfigMap mount links each file into `..data/`).
        if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// What the directory holds now: each policy file's name, size, modification time and a hash
/// of its bytes (an edit within the file system's timestamp granularity that keeps the size,
/// such as a weight 90 becoming 10, still shows), or the error reading it.
#[derive(Debug, PartialEq, Eq)]
enum Fingerprint {
    Files(Vec<(PathBuf, u64, Option<SystemTime>, [u8; 32])>),
    Error(String),
}

fn fingerprint(dir: &Path) -> Fingerprint {
    let files = match policy_files(dir) {
        Ok(f) => f,
        Err(e) => return Fingerprint::Error(e.to_string()),
    };
    let mut out = Vec::with_capacity(files.len());
    for path in files {
        let meta = std::fs::metadata(&path).ok();
        let hash = match std::fs::read(&path) {
            Ok(bytes) => {
                let d = ring::digest::digest(&ring::digest::SHA256, &bytes);
                let mut h = [0u8; 32];
                h.copy_from_slice(d.as_ref());
                h
            }
            Err(_) => [0u8; 32],
        };
        out.push((
            path,
            meta.as_ref().map_or(0, |m| m.len()),
            meta.and_then(|m| m.modified().ok()),
            hash,
        ));
    }
    Fingerprint::Files(out)
}

/// The policy in force and the last refusal: an invalid policy never replaces a valid one.
#[derive(Debug)]
pub struct LastGood {
    current: Arc<MeshPolicy>,
    rejected: Option<PolicyErrors>,
}

/// What [`LastGood::update`] did.
#[derive(Debug, PartialEq)]
pub enum Update {
    /// The policy is the one in force (same version): nothing to push.
    Unchanged,
    /// A new policy is in force.
    Applied {
        /// Version before.
        from: String,
        /// Version now.
        to: String,
    },
    /// The new policy was refused; the one in force stays.
    Rejected(PolicyErrors),
}

impl LastGood {
    /// Start with a valid policy.
    pub fn new(policy: MeshPolicy) -> Self {
        LastGood {
            current: Arc::new(policy),
            rejected: None,
        }
    }

    /// The policy in force.
    pub fn current(&self) -> &Arc<MeshPolicy> {
        &self.current
    }

    /// Why the latest attempt was refused, while it is the latest (cleared by the next valid
    /// policy).
    pub fn rejected(&self) -> Option<&PolicyErrors> {
        self.rejected.as_ref()
    }

    /// Take in a freshly loaded policy: a valid one goes in force; errors are kept for status
    /// and the policy in force stays.
    pub fn update(&mut self, loaded: Result<MeshPolicy, PolicyErrors>) -> Update {
        match loaded {
            Ok(p) => {
                self.rejected = None;
                if p.version() == self.current.version() {
                    return Update::Unchanged;
                }
                let from = self.current.version().to_owned();
                let to = p.version().to_owned();
                self.current = Arc::new(p);
                Update::Applied { from, to }
            }
            Err(e) => {
                self.rejected = Some(e.clone());
                Update::Rejected(e)
            }
        }
    }

    /// Load from `source` and [`update`](Self::update).
    pub fn reload(&mut self, source: &dyn PolicySource) -> Update {
        self.update(source.load())
    }
}
