//! The running config: an immutable [`Snapshot`] built off the hot path and swapped in whole
//! through [`Store`]. Requests hold the snapshot they started with, so a reload never changes
//! a request midway.
//!
//! Each source of change updates its own part in memory: a control-plane policy is joined
//! with the config text held here (no file is read), a renewed certificate is built from the
//! PEM in hand (the files are written as persistence), and a reload (SIGHUP, the file
//! watcher) reads the files and rebuilds only if they differ from what is in force, so the
//! store's own writes do not come back as a second rebuild. TLS material is rebuilt only when
//! the certificate files' contents change.

mod persist;
mod snapshot;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use weft_policy::wire::PolicySnapshot;
use weft_policy::{ConfigError, Listen};

use crate::telemetry::metrics::Metrics;
pub use persist::{file_stamps, write_atomically, Stamps};
use persist::{sync_to_disk, write_replacing};
use snapshot::{observe, Builder};
pub use snapshot::{Pems, PolicySource, Snapshot, MAX_RATE_KEYS};

/// What the snapshot in force was built from. Behind the store's lock, which also serializes
/// rebuilds.
struct Sources {
    /// The config file's text.
    text: String,
    /// The certificate files' contents.
    pems: Pems,
    /// With `control_plane` set: the policy last applied from the control plane.
    cp_policy: Option<PolicySnapshot>,
}

/// The current snapshot, swapped atomically on reload; readers never take a lock.
pub struct Store {
    current: ArcSwap<Snapshot>,
    path: PathBuf,
    /// Every exported series.
    pub metrics: Arc<Metrics>,
    sources: Mutex<Sources>,
    cp_connected: std::sync::atomic::AtomicBool,
    /// Where the listeners are bound, once they are (fixed for the process's life).
    listening: std::sync::OnceLock<Listen>,
    /// The version of the snapshot in force, for whoever must act on a change (see
    /// [`Store::subscribe`]).
    changed: tokio::sync::watch::Sender<u64>,
    /// Endpoints by service: subscriptions and the last good endpoints of each.
    pub endpoints: crate::control::endpoints::Subscriptions,
}

impl Store {
    /// Load the config file and its certificates into a first snapshot.
    pub fn open(path: &Path, metrics: Arc<Metrics>) -> Result<Self, ConfigError> {
        let builder = Builder {
            path,
            metrics: &metrics,
            bound: None,
        };
        let text = builder.read()?;
        let config = builder.config(&text)?;
        let pems = Pems::read(&config.tls).map_err(|e| ConfigError::Invalid {
            file: path.to_owned(),
            errors: vec![e],
        })?;
        let snapshot = builder.snapshot(config, None, &pems, None, 1, None)?;
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
            sources: Mutex::new(Sources {
                text,
                pems,
                cp_policy: None,
            }),
            cp_connected: std::sync::atomic::AtomicBool::new(false),
            listening: std::sync::OnceLock::new(),
            endpoints: Default::default(),
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
        match store.load().policy {
            PolicySource::Pending => log::warn!(
                "no policy yet: inbound requests and tunnels are refused (503 no_policy) until the \
                 control plane's first snapshot; control_plane.bootstrap_authorization would \
                 allow some before it"
            ),
            PolicySource::Bootstrap => log::info!(
                "serving control_plane.bootstrap_authorization until the first control-plane snapshot"
            ),
            PolicySource::File | PolicySource::ControlPlane => {}
        }
        Ok(store)
    }

    fn builder(&self) -> Builder<'_> {
        Builder {
            path: &self.path,
            metrics: &self.metrics,
            bound: self.listening.get(),
        }
    }

    fn sources(&self) -> MutexGuard<'_, Sources> {
        self.sources.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keep the policy in force in the control plane's `state_file` (mode 0600, written then
    /// renamed), if one is configured.
    pub fn persist_policy(&self) -> std::io::Result<()> {
        let Some(file) = self
            .load()
            .control_plane
            .as_ref()
            .and_then(|cp| cp.state_file.clone())
        else {
            return Ok(());
        };
        let Some(policy) = self.sources().cp_policy.clone() else {
            return Ok(());
        };
        let bytes = serde_json::to_vec(&policy).map_err(std::io::Error::other)?;
        write_atomically(&file, &bytes, 0o600)
    }

    /// Apply a policy the control plane sent: validated for this sidecar's local part (the
    /// config text in memory), built off the hot path with the TLS material in force, and
    /// swapped in whole. On error the snapshot in force stays.
    pub fn apply_policy(&self, policy: PolicySnapshot) -> Result<u64, ConfigError> {
        let mut src = self.sources();
        let prev = self.current.load_full();
        let b = self.builder();
        let config = b.config(&src.text)?;
        let next = b.snapshot(
            config,
            Some(&policy),
            &src.pems,
            Some(prev.tls.clone()),
            prev.version + 1,
            Some(&prev),
        )?;
        let version = self.swap_in(next);
        src.cp_policy = Some(policy);
        Ok(version)
    }

    /// The mesh services in force, validated, as a gateway's routes name them: the config
    /// file's, or in control-plane mode those of the control plane's policy in force (none
    /// before its first snapshot). Made once per snapshot and kept with it.
    pub fn mesh_services(&self) -> Result<Arc<[weft_policy::Service]>, ConfigError> {
        let src = self.sources();
        // Under the lock, the snapshot in force is the one `src` built (each swap and its
        // sources' update happen under it together).
        let snap = self.current.load_full();
        if let Some(services) = snap.mesh_services.get() {
            return Ok(services.clone());
        }
        let services: Arc<[weft_policy::Service]> = self.validated_services(&src)?.into();
        let _ = snap.mesh_services.set(services.clone());
        Ok(services)
    }

    /// The mesh services `src` names, parsed and validated again.
    fn validated_services(&self, src: &Sources) -> Result<Vec<weft_policy::Service>, ConfigError> {
        let config = self.builder().config(&src.text)?;
        let (Some(policy), Some(_)) = (&src.cp_policy, &config.control_plane) else {
            return Ok(config.services);
        };
        let (local, _) = config.into_parts();
        let policy = weft_policy::validate_snapshot(policy.clone(), &local).map_err(|errors| {
            ConfigError::Invalid {
                file: PathBuf::from(format!("control-plane snapshot {}", policy.version)),
                errors,
            }
        })?;
        Ok(weft_policy::Config::from_parts(local, policy).services)
    }

    /// The version (content hash) of the control-plane policy in force, if any.
    pub fn control_plane_version(&self) -> Option<String> {
        self.sources().cp_policy.as_ref().map(|p| p.version.clone())
    }

    /// The services the control plane's policy in force lists endpoints for (after a
    /// restart: the persisted one's), which a new stream subscribes to.
    pub fn control_plane_services_with_endpoints(&self) -> Vec<String> {
        let src = self.sources();
        let services = src
            .cp_policy
            .as_ref()
            .map(|p| &p.services[..])
            .unwrap_or(&[]);
        services
            .iter()
            .filter(|s| !s.endpoints.is_empty())
            .map(|s| s.name.clone())
            .collect()
    }

    /// The trust bundle (PEM) in force.
    pub fn trust_bundle_pem(&self) -> Vec<u8> {
        self.sources().pems.bundle.clone()
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

    /// Re-read the config file and its certificate files; if either differs from what is in
    /// force, build and swap the new snapshot in (TLS material rebuilt only if the
    /// certificate files changed), else keep the current one. Returns the version in force.
    pub fn reload(&self) -> Result<u64, ConfigError> {
        let mut src = self.sources();
        let prev = self.current.load_full();
        let b = self.builder();
        let read = b.read().and_then(|text| {
            let config = b.config(&text)?;
            let pems = Pems::read(&config.tls).map_err(|e| ConfigError::Invalid {
                file: self.path.clone(),
                errors: vec![e],
            })?;
            Ok((text, config, pems))
        });
        let (text, config, pems) = read.inspect_err(|_| self.metrics.config_rejected.inc())?;
        if text == src.text && pems == src.pems {
            return Ok(prev.version);
        }
        let tls = (pems == src.pems).then(|| prev.tls.clone());
        let next = b
            .snapshot(
                config,
                src.cp_policy.as_ref(),
                &pems,
                tls,
                prev.version + 1,
                Some(&prev),
            )
            .inspect_err(|_| self.metrics.config_rejected.inc())?;
        let version = self.swap_in(next);
        (src.text, src.pems) = (text, pems);
        Ok(version)
    }

    /// Replace certificate files and put their contents in force at once: the snapshot is
    /// rebuilt from the bytes in hand (the config text in memory), and the files, each
    /// written atomically (a temporary file in the same directory, then a rename), are its
    /// persistence.
    ///
    /// Runs under the store's lock, so no reload (file watcher, SIGHUP, control-plane
    /// snapshot) reads a half-installed set such as a new key with the old certificate.
    /// `files` are `(path, contents, mode)`.
    ///
    /// Nothing waits for the disk: the files are renamed into place unsynced, then synced on
    /// a thread of their own. On a busy disk an fsync can take seconds, and a certificate
    /// must not expire (nor reloads stall) waiting for it.
    pub fn install_files(&self, files: &[(&Path, &[u8], u32)]) -> Result<u64, InstallError> {
        let written = {
            let mut src = self.sources();
            let prev = self.current.load_full();
            let mut pems = src.pems.clone();
            for (path, bytes, mode) in files {
                write_replacing(path, bytes, *mode).map_err(|source| InstallError::Write {
                    path: path.to_path_buf(),
                    source,
                })?;
                pems = pems.with(&prev.tls_paths, path, bytes);
            }
            let b = self.builder();
            let built = b.config(&src.text).and_then(|config| {
                b.snapshot(
                    config,
                    src.cp_policy.as_ref(),
                    &pems,
                    None,
                    prev.version + 1,
                    Some(&prev),
                )
            });
            match built {
                Ok(next) => {
                    src.pems = pems;
                    Ok(self.swap_in(next))
                }
                Err(e) => {
                    self.metrics.config_rejected.inc();
                    Err(InstallError::Rejected(e))
                }
            }
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

    /// Put `next` in force: its gauges, the swap, and a wake-up for the watchers of
    /// [`Store::subscribe`]. The one place a snapshot is swapped in.
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

    /// [`store_with_files`] with a `control_plane` (nothing listens there): the policy comes
    /// from [`Store::apply_policy`].
    pub fn store_in_control_plane_mode(
        seed: u64,
    ) -> (tempfile::TempDir, Store, CertificateAuthority) {
        let (dir, _static, ca) = store_with_files(seed);
        let config = dir.path().join("sidecar.yaml");
        let text = std::fs::read_to_string(&config).expect("read");
        std::fs::write(
            &config,
            text + "control_plane: {address: \"127.0.0.1:9\", identity: spiffe://weft.local/ns/weft-system/sa/control-plane}\n",
        )
        .expect("write");
        let metrics = crate::telemetry::metrics::Metrics::new().expect("metrics");
        let store = Store::open(&config, metrics).expect("control-plane mode");
        (dir, store, ca)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::test_support::{orders, store_with_files};

    #[test]
    fn a_reload_with_nothing_changed_builds_nothing() {
        let (dir, store, _ca) = store_with_files(21);
        let v = store.load().version;
        assert_eq!(store.reload().expect("reload"), v);
        assert_eq!(store.load().version, v, "no new snapshot");
        // A changed config: rebuilt, with the same TLS material (the files did not change).
        let tls = store.load().tls.clone();
        let config = dir.path().join("sidecar.yaml");
        let text = std::fs::read_to_string(&config).expect("read") + "idle_timeout: 30s\n";
        std::fs::write(&config, text).expect("write");
        assert_eq!(store.reload().expect("reload"), v + 1);
        assert!(std::sync::Arc::ptr_eq(&tls, &store.load().tls));
        assert_eq!(store.load().idle_timeout, Duration::from_secs(30));
    }

    #[test]
    fn installed_certificates_are_in_force_at_once_and_do_not_echo_as_a_reload() {
        let (dir, store, ca) = store_with_files(22);
        let v = store.load().version;
        let issued = ca
            .issue(&orders(), Duration::from_secs(7200))
            .expect("issue");
        let (cert, key) = (dir.path().join("o.crt"), dir.path().join("o.key"));
        store
            .install_files(&[
                (&key, issued.key_pem.as_bytes(), 0o600),
                (&cert, issued.cert_pem.as_bytes(), 0o644),
            ])
            .expect("install");
        let snap = store.load();
        assert_eq!(snap.version, v + 1);
        assert_eq!(
            snap.tls.client.chain_pem, issued.cert_pem,
            "the new certificate"
        );
        // The file watcher then sees the files it wrote: nothing more is built.
        assert_eq!(store.reload().expect("reload"), v + 1);
    }

    #[test]
    fn a_control_plane_policy_is_joined_with_the_config_in_memory() {
        let (dir, store, _ca) = super::test_support::store_in_control_plane_mode(23);
        let config = dir.path().join("sidecar.yaml");
        let v = store.load().version;
        // The file is unreadable now; a policy still applies: it is joined with the text the
        // store holds, and no file is read.
        std::fs::write(&config, "not: [valid").expect("garble");
        let policy: weft_policy::wire::PolicySnapshot = serde_json::from_str(
            r#"{"version": "p1", "services": [{"name": "users", "identity": "spiffe://weft.local/ns/default/sa/users", "endpoints": [{"address": "127.0.0.1:7"}]}]}"#,
        )
        .expect("policy");
        assert_eq!(store.apply_policy(policy).expect("apply"), v + 1);
        assert_eq!(store.control_plane_version().as_deref(), Some("p1"));
        assert!(store.load().routes.for_host("users").is_some());
        assert!(
            store.reload().is_err(),
            "the garbled file is refused on reload"
        );
        assert_eq!(
            store.load().version,
            v + 1,
            "and the snapshot in force stays"
        );
    }

    #[test]
    fn the_mesh_services_are_made_once_per_snapshot() {
        let (_dir, store, _ca) = super::test_support::store_in_control_plane_mode(24);
        let names = |s: &[weft_policy::Service]| -> Vec<String> {
            s.iter().map(|s| s.name.clone()).collect()
        };
        let before = store.mesh_services().expect("services");
        assert!(before.is_empty(), "none before the first snapshot");
        let policy = |version: &str, name: &str| -> weft_policy::wire::PolicySnapshot {
            serde_json::from_str(&format!(
                r#"{{"version": "{version}", "services": [{{"name": "{name}", "identity": "spiffe://weft.local/ns/default/sa/{name}"}}]}}"#
            ))
            .expect("policy")
        };
        store.apply_policy(policy("p1", "users")).expect("apply");
        let first = store.mesh_services().expect("services");
        assert_eq!(names(&first), ["users"]);
        let again = store.mesh_services().expect("services");
        assert!(
            std::sync::Arc::ptr_eq(&first, &again),
            "kept, not made again"
        );
        store.apply_policy(policy("p2", "carts")).expect("apply");
        assert_eq!(names(&store.mesh_services().expect("services")), ["carts"]);
    }
}
