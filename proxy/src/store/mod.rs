//! The running config: an immutable [`Snapshot`] built off the hot path from a validated
//! [`Config`] and swapped in whole through [`Store`]. Requests hold the snapshot they started
//! with, so a reload never changes a request midway.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use weft_policy::wire::PolicySnapshot;
use weft_policy::{Config, ConfigError, FieldError, Listen, OwnService, TlsPaths};
use weft_resilience::rate::Buckets;

use crate::identity::material::{self, TlsMaterial};
use crate::outbound::route::Routes;
use crate::telemetry::metrics::Metrics;

/// One immutable version of the sidecar's config, ready for the hot path.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases with every accepted config.
    pub version: u64,
    /// This sidecar's own service.
    pub own: OwnService,
    /// Listener addresses (fixed for the process's life).
    pub listen: Listen,
    /// Traffic workers (fixed for the process's life).
    pub workers: usize,
    /// SIGTERM drain limit.
    pub drain_timeout: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Idle limit for client connections and TCP tunnels.
    pub idle_timeout: Duration,
    /// Inbound rate limit.
    pub inbound_rate: Option<Buckets>,
    /// Who may call the app.
    pub authz: weft_policy::Authorization,
    /// Access log target (fixed for the process's life).
    pub access_log: Option<PathBuf>,
    /// Tracing: `sampling` reloads; collector, queue and interval are fixed for the process's
    /// life.
    pub tracing: weft_policy::Tracing,
    /// Certificates, keys, roots.
    pub tls: TlsMaterial,
    /// This sidecar's SPIFFE identity, shared with the access log.
    pub identity: Arc<str>,
    /// Where the certificate material was read from (watched for rotation).
    pub tls_paths: TlsPaths,
    /// The control plane the policy comes from (fixed for the process's life); `None` in
    /// static mode.
    pub control_plane: Option<weft_policy::ControlPlane>,
    /// Callable services and how requests find them.
    pub routes: Routes,
}

/// Most distinct callers tracked by a per-caller limit; later ones share one bucket.
pub const MAX_RATE_KEYS: usize = 10_000;

impl Snapshot {
    /// Build from a validated config, reusing live endpoint state from `prev` where the
    /// endpoint survives, so latency history and ejections outlive reloads.
    pub fn build(
        config: Config,
        tls: TlsMaterial,
        version: u64,
        prev: Option<&Snapshot>,
        metrics: &Arc<Metrics>,
    ) -> Self {
        let identity: Arc<str> = config.own.identity.to_string().into();
        let routes = Routes::build(
            config.services,
            &config.own.name,
            &identity,
            prev.map(|p| &p.routes),
            metrics,
        );
        let inbound_rate = config
            .own
            .rate_limit
            .as_ref()
            .map(|r| Buckets::new(r.per_second, r.burst, r.per_caller, MAX_RATE_KEYS));
        Snapshot {
            version,
            own: config.own,
            listen: config.listen,
            workers: config.workers,
            drain_timeout: config.drain_timeout,
            connect_timeout: config.connect_timeout,
            idle_timeout: config.idle_timeout,
            inbound_rate,
            authz: config.authorization,
            access_log: config.access_log,
            tracing: config.tracing,
            identity,
            tls,
            tls_paths: config.tls,
            control_plane: config.control_plane,
            routes,
        }
    }
}

/// The current snapshot, swapped atomically on reload; readers never take a lock.
pub struct Store {
    current: ArcSwap<Snapshot>,
    path: PathBuf,
    /// Every exported series.
    pub metrics: Arc<Metrics>,
    /// With `control_plane` set: the policy last applied from the control plane (the file's
    /// local part is joined with it on every rebuild). The lock also serializes rebuilds.
    cp_policy: std::sync::Mutex<Option<PolicySnapshot>>,
    cp_connected: std::sync::atomic::AtomicBool,
    /// Where the listeners are bound, once they are (fixed for the process's life).
    listening: std::sync::OnceLock<Listen>,
    /// The version of the snapshot in force, for whoever must act on a change (see
    /// [`Store::subscribe`]).
    changed: tokio::sync::watch::Sender<u64>,
}

impl Store {
    /// Load the config file and its certificates into a first snapshot.
    pub fn open(path: &Path, metrics: Arc<Metrics>) -> Result<Self, ConfigError> {
        let snapshot = load_snapshot(path, 1, None, &metrics, None, None)?;
        observe(&metrics, &snapshot);
        let state_file = snapshot
            .control_plane
            .as_ref()
            .and_then(|cp| cp.state_file.clone());
        let store = Store {
            changed: tokio::sync::watch::Sender::new(snapshot.version),
            current: ArcSwap::from_pointee(snapshot),
            path: path.to_owned(),
            metrics,
            cp_policy: std::sync::Mutex::new(None),
            cp_connected: std::sync::atomic::AtomicBool::new(false),
            listening: std::sync::OnceLock::new(),
        };
        if let Some(file) = state_file.filter(|f| f.exists()) {
            let restored = std::fs::read(&file)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    serde_json::from_slice::<PolicySnapshot>(&b).map_err(|e| e.to_string())
                })
                .and_then(|p| store.apply_policy(p).map_err(|e| e.to_string()));
            match restored {
                Ok(_) => log::info!(
                    "serving the last good control-plane snapshot {} from {} until the control plane answers",
                    store.control_plane_version().unwrap_or_default(),
                    file.display()
                ),
                Err(e) => log::warn!("cannot use {}: {e}; starting with no policy", file.display()),
            }
        }
        Ok(store)
    }

    /// Keep the policy in force in the control plane's `state_file` (mode 0600, written then
    /// renamed), if one is configured.
    pub fn persist_policy(&self) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let Some(file) = self
            .load()
            .control_plane
            .as_ref()
            .and_then(|cp| cp.state_file.clone())
        else {
            return Ok(());
        };
        let Some(policy) = self.cp_lock().clone() else {
            return Ok(());
        };
        let bytes = serde_json::to_vec(&policy).map_err(std::io::Error::other)?;
        let tmp = file.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &file)
    }

    fn cp_lock(&self) -> std::sync::MutexGuard<'_, Option<PolicySnapshot>> {
        self.cp_policy.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Apply a policy the control plane sent: validated for this sidecar's local part (read
    /// from its file again), built off the hot path and swapped in whole. On error the
    /// snapshot in force stays.
    pub fn apply_policy(&self, policy: PolicySnapshot) -> Result<u64, ConfigError> {
        let mut cp = self.cp_lock();
        let prev = self.current.load_full();
        let next = load_snapshot(
            &self.path,
            prev.version + 1,
            Some(&prev),
            &self.metrics,
            Some(&policy),
            self.listening.get(),
        )?;
        let version = self.swap_in(next);
        *cp = Some(policy);
        Ok(version)
    }

    /// The version (content hash) of the control-plane policy in force, if any.
    pub fn control_plane_version(&self) -> Option<String> {
        self.cp_lock().as_ref().map(|p| p.version.clone())
    }

    /// Where the listeners are bound: the configured addresses until they are, then the bound
    /// ones (a configured port 0 replaced by the kernel's choice).
    pub fn listening(&self) -> Listen {
        self.listening
            .get()
            .cloned()
            .unwrap_or_else(|| self.load().listen.clone())
    }

    /// Record where the listeners are bound (once; later calls are ignored, as the
    /// listeners live as long as the process).
    pub fn set_listening(&self, bound: Listen) {
        let _ = self.listening.set(bound);
    }

    /// Whether the sidecar holds a stream to its control plane now.
    pub fn control_plane_connected(&self) -> bool {
        self.cp_connected.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Record whether the stream to the control plane is up.
    pub fn set_control_plane_connected(&self, up: bool) {
        self.cp_connected
            .store(up, std::sync::atomic::Ordering::Relaxed);
        self.metrics.control_plane_connected.set(i64::from(up));
    }

    /// Wakes on every snapshot swapped in (its value is the new version). For control work
    /// that follows the config, such as rebuilding the outbound connector; requests read
    /// [`Store::load`].
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The snapshot in force now; hold it for the whole request.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Re-read the file; on success swap the new snapshot in, else keep the current one.
    pub fn reload(&self) -> Result<u64, ConfigError> {
        let cp = self.cp_lock();
        self.rebuild(cp.as_ref())
    }

    /// Replace certificate files (each written atomically: a temporary file in the same
    /// directory, then a rename) and rebuild the snapshot from them at once.
    ///
    /// Runs under the rebuild lock, so no reload (file watcher, SIGHUP, control-plane
    /// snapshot) reads a half-installed set such as a new key with the old certificate.
    /// `files` are `(path, contents, mode)`.
    ///
    /// Nothing waits for the disk: the files are renamed into place unsynced and the snapshot
    /// rebuilt from them (the page cache), then synced to disk on a thread of their own. On a
    /// busy disk an fsync can take seconds, and a certificate must not expire (nor reloads
    /// stall) waiting for it.
    pub fn install_files(&self, files: &[(&Path, &[u8], u32)]) -> Result<u64, InstallError> {
        let written = {
            let cp = self.cp_lock();
            for (path, bytes, mode) in files {
                write_replacing(path, bytes, *mode, false).map_err(|source| {
                    InstallError::Write {
                        path: path.to_path_buf(),
                        source,
                    }
                })?;
            }
            self.rebuild(cp.as_ref()).map_err(InstallError::Rejected)
        };
        if let Ok(v) = &written {
            log::info!("installed {} file(s): config v{v}", files.len());
        }
        // Not even the caller waits for the disk: a renewal loop held up by a slow sync renews
        // the next certificate late (a 2.8 s sync outlived a 3 s certificate in a loaded test).
        let paths: Vec<PathBuf> = files.iter().map(|(p, _, _)| p.to_path_buf()).collect();
        let sync = move || sync_to_disk(&paths);
        if let Err(e) = std::thread::Builder::new()
            .name("weft-fsync".into())
            .spawn(sync.clone())
        {
            log::warn!("no thread to sync installed files in the background ({e}); syncing now");
            sync();
        }
        written
    }

    fn rebuild(&self, cp: Option<&PolicySnapshot>) -> Result<u64, ConfigError> {
        let prev = self.current.load_full();
        let next = match load_snapshot(
            &self.path,
            prev.version + 1,
            Some(&prev),
            &self.metrics,
            cp,
            self.listening.get(),
        ) {
            Ok(next) => next,
            Err(e) => {
                self.metrics.config_rejected.inc();
                return Err(e);
            }
        };
        Ok(self.swap_in(next))
    }

    /// Put `next` in force: its gauges, the swap, and a wake-up for the watchers of [`Store::subscribe`].
    /// The one place a snapshot is swapped in.
    fn swap_in(&self, next: Snapshot) -> u64 {
        let version = next.version;
        observe(&self.metrics, &next);
        self.current.store(Arc::new(next));
        self.changed.send_replace(version);
        version
    }

    /// The config file this store follows.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Sync installed files and their directories, warning about failures and slow disks.
fn sync_to_disk(paths: &[PathBuf]) {
    let started = std::time::Instant::now();
    for path in paths {
        if let Err(e) = sync_file_and_dir(path) {
            log::warn!("cannot sync {} to disk: {e}", path.display());
        }
    }
    if started.elapsed() > Duration::from_secs(1) {
        log::warn!(
            "syncing {} file(s) to disk took {} ms",
            paths.len(),
            started.elapsed().as_millis()
        );
    }
}

/// Why [`Store::install_files`] failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The files were written but the config built from them was refused; the snapshot in
    /// force stays.
    #[error("{0}")]
    Rejected(ConfigError),
}

/// Write `bytes` to `path` atomically: a temporary file in the same directory (created with
/// `mode`), synced, then renamed over `path`. Readers see the old or the new file, never a
/// part of one.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    write_replacing(path, bytes, mode, true)
}

/// Flush a file and its directory entry to disk.
fn sync_file_and_dir(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Temporary file (created with `mode`), optionally synced, renamed over `path`.
fn write_replacing(path: &Path, bytes: &[u8], mode: u32, sync: bool) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.weft-tmp"));
    // A temporary file left by a crash may have another mode; `mode` applies on creation only.
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    if sync {
        f.sync_all()?;
    }
    drop(f);
    std::fs::rename(&tmp, path)
}

fn observe(metrics: &Metrics, snap: &Snapshot) {
    metrics
        .config_version
        .set(i64::try_from(snap.version).unwrap_or(i64::MAX));
    let expiry = snap
        .tls
        .not_after
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    metrics.cert_expiry.set(expiry);
}

/// Dedicated outbound ports must not take a port a listener is bound to. The validator
/// checks the configured ports; a listener configured with port 0 has its port only once it is
/// bound, so the bound ports are checked here.
fn bound_port_clashes(config: &Config, bound: Option<&Listen>) -> Vec<FieldError> {
    let Some(b) = bound else {
        return Vec::new();
    };
    let mut taken = vec![b.outbound.port(), b.inbound.port(), b.admin.port()];
    taken.extend(b.metrics.map(|m| m.port()));
    config
        .services
        .iter()
        .enumerate()
        .filter_map(|(i, svc)| {
            let p = svc.port.filter(|p| taken.contains(p))?;
            Some(FieldError {
                field: format!("services[{i}].port"),
                reason: format!("port {p} is already used by another listener"),
            })
        })
        .collect()
}

/// The settings a running sidecar cannot take up without a restart (listeners, workers, the
/// access log and span export, the control plane, the app): an error per one `config` changes
/// from `p`.
fn fixed_for_life(config: &Config, p: &Snapshot) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let fixed = |field: &str, reason: String| FieldError {
        field: field.to_owned(),
        reason,
    };
    if config.listen != p.listen {
        errors.push(fixed(
            "listen",
            "listeners cannot change without a restart".into(),
        ));
    }
    if config.access_log != p.access_log {
        errors.push(fixed(
            "access_log",
            "cannot change without a restart".into(),
        ));
    }
    let t = (&config.tracing, &p.tracing);
    if t.0.collector != t.1.collector {
        errors.push(fixed(
            "tracing.collector",
            "cannot change without a restart".into(),
        ));
    }
    if t.0.max_queue != t.1.max_queue {
        errors.push(fixed(
            "tracing.max_queue",
            "cannot change without a restart".into(),
        ));
    }
    if t.0.export_interval != t.1.export_interval {
        errors.push(fixed(
            "tracing.export_interval",
            "cannot change without a restart".into(),
        ));
    }
    if config.control_plane != p.control_plane {
        errors.push(fixed(
            "control_plane",
            "cannot change without a restart".into(),
        ));
    }
    if config.workers != p.workers {
        errors.push(fixed("workers", "cannot change without a restart".into()));
    }
    if config.own.app != p.own.app || config.own.protocol != p.own.protocol {
        errors.push(fixed(
            "service",
            "app address and protocol cannot change without a restart".into(),
        ));
    }
    errors
}

fn load_snapshot(
    path: &Path,
    version: u64,
    prev: Option<&Snapshot>,
    metrics: &Arc<Metrics>,
    cp_policy: Option<&PolicySnapshot>,
    bound: Option<&Listen>,
) -> Result<Snapshot, ConfigError> {
    let mut config = weft_policy::load(path)?;
    let invalid = |errors| ConfigError::Invalid {
        file: path.to_owned(),
        errors,
    };
    if let (Some(policy), Some(_)) = (cp_policy, &config.control_plane) {
        let (local, _) = config.into_parts();
        let source = PathBuf::from(format!("control-plane snapshot {}", policy.version));
        let policy = weft_policy::validate_snapshot(policy.clone(), &local).map_err(|errors| {
            ConfigError::Invalid {
                file: source.clone(),
                errors,
            }
        })?;
        config = Config::from_parts(local, policy);
        let clashes = bound_port_clashes(&config, bound);
        if !clashes.is_empty() {
            return Err(ConfigError::Invalid {
                file: source,
                errors: clashes,
            });
        }
    } else {
        let clashes = bound_port_clashes(&config, bound);
        if !clashes.is_empty() {
            return Err(invalid(clashes));
        }
    }
    if let Some(p) = prev {
        let errors = fixed_for_life(&config, p);
        if !errors.is_empty() {
            return Err(invalid(errors));
        }
    }
    let tls = material::load(&config.tls, &config.own.identity).map_err(|e| invalid(vec![e]))?;
    Ok(Snapshot::build(config, tls, version, prev, metrics))
}

/// Test fixtures shared by the modules whose tests need a real [`Store`].
#[cfg(test)]
pub(crate) mod test_support {
    use std::time::Duration;

    use weft_certs::{CertificateAuthority, Identity};

    use super::Store;

    /// The identity of [`store_with_files`]'s sidecar.
    pub fn orders() -> Identity {
        Identity::new("weft.local", "default", "orders").expect("identity")
    }

    /// A static-mode sidecar's files in a temp dir (`o.crt`, `o.key`, `ca.crt`,
    /// `sidecar.yaml`), signed by a CA seeded with `seed`, and a store opened on them.
    pub fn store_with_files(seed: u64) -> (tempfile::TempDir, Store, CertificateAuthority) {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = CertificateAuthority::generate_seeded("weft.local", seed).expect("ca");
        let issued = ca
            .issue(&orders(), Duration::from_secs(3600))
            .expect("issue");
        std::fs::write(dir.path().join("ca.crt"), ca.cert_pem()).expect("ca");
        std::fs::write(dir.path().join("o.crt"), &issued.cert_pem).expect("cert");
        std::fs::write(dir.path().join("o.key"), &issued.key_pem).expect("key");
        let config = dir.path().join("sidecar.yaml");
        std::fs::write(
            &config,
            "service: {name: orders, identity: spiffe://weft.local/ns/default/sa/orders, app: \"127.0.0.1:1\"}\n\
             listen: {outbound: \"127.0.0.1:1\", inbound: \"127.0.0.1:2\", admin: \"127.0.0.1:3\"}\n\
             tls: {cert: o.crt, key: o.key, trust_bundle: ca.crt}\n",
        )
        .expect("config");
        let metrics = crate::telemetry::metrics::Metrics::new().expect("metrics");
        let store = Store::open(&config, metrics).expect("store");
        (dir, store, ca)
    }
}
