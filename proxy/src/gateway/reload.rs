//! The gateway's reloader (a Pingora background service, its own thread): every
//! `tls.reload_interval` it checks the gateway file, the API key files it names, and the
//! certificate files (modification time and size, as the sidecar's own watcher does).
//!
//! - The gateway file (or a key file) changed: it is read and validated again against the
//!   mesh services in force ([`Store::mesh_services`]: the sidecar file's, or the control
//!   plane's), a new [`GatewayState`] is built beside the one in force and
//!   swapped in; new connections and requests use it, those under way finish with theirs.
//!   A file that does not validate (or whose certificates or key files do not load, or that
//!   moves a listener) is refused: the log says why with `file:line:col`, the counter
//!   `weft_gateway_config_reloads_total{result="error"}` counts it, and the config in force
//!   keeps serving.
//! - A config came from the control plane ([`crate::gateway::remote`], with
//!   `--gateway-name`): the same step from its text, its files staged apart; in force, it is
//!   persisted as the gateway file (the stream ACKs it); refused, it is counted and logged
//!   the same way and the stream NACKs it with the reason.
//! - Only certificate files changed: [`EdgeTls::reload`](crate::gateway::edge_tls::EdgeTls)
//!   swaps them under the acceptor in force.
//!
//! - The mesh services changed under it (a control-plane snapshot, or a sidecar file reload,
//!   that drops a service a route names): nothing is reloaded, the config in force keeps
//!   serving (requests to the missing service get the mesh's `404` for an unknown host),
//!   and the log says which routes name which missing services, once per change of
//!   that list (`MeshWatch`); it says so again when they are all back.
//!
//! It also runs the JWT providers' refresh loops ([`KeyTasks`]), which follow each reload.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::sync::mpsc;
use weft_api::v1::GatewayConfig;
use weft_policy::gateway::{Gateway, GatewayError};

use crate::gateway::auth::refresh::KeyTasks;
use crate::gateway::edge_tls;
use crate::gateway::metrics::GatewayMetrics;
use crate::gateway::remote::{self, Remote};
use crate::gateway::state::{GatewayState, Live};
use crate::store::{file_stamps, Store};

/// Why a changed gateway file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The mesh services (which routes name) are not known.
    #[error("{0}")]
    Sidecar(#[from] weft_policy::ConfigError),
    /// The gateway file does not validate.
    #[error("{0}")]
    File(#[from] weft_policy::gateway::GatewayError),
    /// Its certificates, key files or listeners.
    #[error("{0}")]
    State(#[from] crate::gateway::state::StateError),
    /// A control-plane config's files could not be staged.
    #[error("{0}")]
    Stage(String),
}

/// Watches the gateway's files and puts a changed config in force.
pub struct GatewayReloader {
    /// The gateway file.
    pub path: PathBuf,
    /// The sidecar's store (the mesh services routes name).
    pub store: Arc<Store>,
    /// The state in force.
    pub live: Arc<Live>,
    /// Reload counters.
    pub metrics: GatewayMetrics,
    /// Configs from the control plane, when it feeds this gateway (taken at start).
    pub remote: Mutex<Option<mpsc::Receiver<Remote>>>,
}

/// The files whose change means the gateway file is read again: itself and the API key files.
fn config_files(path: &Path, gw: &Gateway) -> Vec<PathBuf> {
    let mut files = vec![path.to_owned()];
    files.extend(gw.auth.api_keys.iter().map(|k| k.file.clone()));
    files
}

impl GatewayReloader {
    /// Read the gateway file and put it in force.
    async fn reload(&self, keys: &mut KeyTasks) -> Result<Arc<GatewayState>, ReloadError> {
        let text = std::fs::read_to_string(&self.path).map_err(|source| GatewayError::Read {
            file: self.path.clone(),
            source,
        })?;
        let base = self.path.parent().unwrap_or(Path::new("."));
        self.put_in_force(&text, &self.path, base, keys).await
    }

    /// Put a control-plane config in force from its own staged files, then keep it as the
    /// gateway file; a refused one's staged files are removed.
    async fn apply_remote(
        &self,
        config: &GatewayConfig,
        keys: &mut KeyTasks,
    ) -> Result<Arc<GatewayState>, ReloadError> {
        let base = remote::stage(&self.path, config).map_err(ReloadError::Stage)?;
        let label = PathBuf::from(format!(
            "Gateway {} config {}",
            config.gateway, config.version
        ));
        match self
            .put_in_force(&config.config_yaml, &label, &base, keys)
            .await
        {
            Ok(st) => {
                if let Err(e) = remote::persist(&self.path, config) {
                    log::warn!(
                        "cannot keep the gateway config as {}: {e}",
                        self.path.display()
                    );
                }
                remote::clean(&self.path, Some(&config.version));
                Ok(st)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&base);
                Err(e)
            }
        }
    }

    /// Validate gateway `text` (`file` names it in errors, `base` resolves its relative paths)
    /// against the mesh services in force, build its state beside the one in force and swap
    /// it in: the one step a changed file and a control-plane config both take.
    async fn put_in_force(
        &self,
        text: &str,
        file: &Path,
        base: &Path,
        keys: &mut KeyTasks,
    ) -> Result<Arc<GatewayState>, ReloadError> {
        let services = self.store.mesh_services()?;
        let gw = weft_policy::gateway::parse(text, file, base, &services)?;
        let prev = self.live.load_full();
        let next = GatewayState::next(Arc::new(gw), self.metrics.clone(), Some(&prev))?;
        // A provider the edit added gets its keys before its first token.
        keys.prefetch(&next.auth).await;
        let next = Arc::new(next);
        self.live.store(next.clone());
        keys.follow(&next.auth, true);
        Ok(next)
    }

    /// Count a reload's `result` and log it: `in_force` names what a good one put in force,
    /// `refused` what a bad one was.
    fn report(
        &self,
        result: &Result<Arc<GatewayState>, ReloadError>,
        in_force: &str,
        refused: &str,
    ) {
        match result {
            Ok(st) => {
                self.metrics.config_reloads.with_label_values(&["ok"]).inc();
                log::info!(
                    "{in_force}: {} route(s); new requests use it",
                    st.routes.len()
                );
            }
            Err(e) => {
                self.metrics
                    .config_reloads
                    .with_label_values(&["error"])
                    .inc();
                log::error!("{refused} rejected, the one in force stays:\n{e}");
            }
        }
    }
}

#[async_trait]
impl BackgroundService for GatewayReloader {
    // Long: one loop owns the reloader's state (the files watched, their stamps, the
    // control-plane version in force, the JWT key tasks) for its three sources of change.
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut keys = KeyTasks::default();
        keys.follow(&self.live.load().auth, false);
        let first = self.live.load_full();
        let mut files = config_files(&self.path, &first.gw);
        let mut seen_files = file_stamps(&files);
        drop(first);
        let mut remote = self.remote.lock().unwrap_or_else(|e| e.into_inner()).take();
        // The control-plane config in force (a reconnect sends it again).
        let mut applied: Option<String> = None;
        let mut mesh = MeshWatch::default();
        let mut store_changes = self.store.subscribe();
        loop {
            let every = self.live.load().gw.reload_interval;
            let mut incoming = None;
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                r = next_remote(&mut remote) => incoming = r,
                Ok(()) = store_changes.changed() => {
                    mesh.check(&self.store, &self.live.load().gw);
                }
                _ = shutdown.changed() => break,
            }
            if let Some(r) = incoming {
                let version = r.config.version.clone();
                let verdict = if applied.as_deref() == Some(version.as_str()) {
                    Ok(())
                } else {
                    let result = self.apply_remote(&r.config, &mut keys).await;
                    self.report(
                        &result,
                        &format!(
                            "gateway config {version} of {} from the control plane in force",
                            r.config.gateway
                        ),
                        &format!("gateway config {version} from the control plane"),
                    );
                    match result {
                        Ok(st) => {
                            applied = Some(version);
                            // Checked against the mesh services in force just now.
                            mesh.missing.clear();
                            // The file was rewritten as the config in force: not a change.
                            files = config_files(&self.path, &st.gw);
                            seen_files = file_stamps(&files);
                            Ok(())
                        }
                        Err(e) => Err(e.to_string()),
                    }
                };
                let _ = r.reply.send(verdict);
            }
            let now = file_stamps(&files);
            if now != seen_files {
                // Compared later against the stamps taken before this reload: a file replaced
                // while it ran differs at the next check and is read again.
                seen_files = now;
                let result = self.reload(&mut keys).await;
                self.report(
                    &result,
                    &format!("gateway config reloaded from {}", self.path.display()),
                    "gateway config",
                );
                if let Ok(st) = result {
                    mesh.missing.clear();
                    let after = config_files(&self.path, &st.gw);
                    if after != files {
                        seen_files = file_stamps(&after);
                        files = after;
                    }
                }
            }
            // Against the stamps the acceptor in force last loaded (or tried): a reload that
            // built a new one has read the files already.
            let st = self.live.load_full();
            let now = edge_tls::stamps(&st.gw.certificates);
            if now != **st.tls.seen.load() {
                st.tls.reload(&st.gw.certificates, now, &self.metrics);
            }
        }
        keys.stop();
    }
}

/// What the gateway's routes name that the mesh services in force lack, logged once per change.
#[derive(Default)]
struct MeshWatch {
    /// The mesh services' source last checked (the control-plane policy version, or the
    /// sidecar snapshot's in static mode): endpoint updates leave it, and the check, alone.
    checked: Option<String>,
    /// `(route, service)` pairs missing at the last check.
    missing: Vec<(String, String)>,
}

impl MeshWatch {
    /// Check `gw`'s routes against the mesh services in force, if those may have changed.
    fn check(&mut self, store: &Store, gw: &Gateway) {
        let source = store
            .control_plane_version()
            .unwrap_or_else(|| format!("sidecar config v{}", store.load().version));
        if self.checked.as_deref() == Some(source.as_str()) {
            return;
        }
        // Once per source, whatever the outcome: an error is not logged again for each update.
        self.checked = Some(source.clone());
        let services = match store.mesh_services() {
            Ok(s) => s,
            Err(e) => {
                log::warn!("gateway: the mesh services in force do not validate: {e}");
                return;
            }
        };
        let missing = missing_services(gw, &services);
        if missing == self.missing {
            return;
        }
        if missing.is_empty() {
            log::info!("gateway: every service the routes name is in the mesh again ({source})");
        } else {
            let list: Vec<String> = missing
                .iter()
                .map(|(route, svc)| format!("route {route}: {svc}"))
                .collect();
            log::error!(
                "gateway: the mesh services in force ({source}) lack what routes name: {}; the \
                 gateway config in force stays, and those routes' requests fail until the \
                 services come back or the gateway file changes",
                list.join(", ")
            );
        }
        self.missing = missing;
    }
}

/// `(route, service)` for each service a route of `gw` names that `services` lacks.
fn missing_services(gw: &Gateway, services: &[weft_policy::Service]) -> Vec<(String, String)> {
    let known: std::collections::HashSet<&str> = services.iter().map(|s| s.name.as_str()).collect();
    gw.routes
        .iter()
        .flat_map(|r| r.backends.weighted().map(move |(svc, _)| (r, svc)))
        .filter(|(_, svc)| !known.contains(svc))
        .map(|(r, svc)| (r.name.clone(), svc.to_owned()))
        .collect()
}

/// The next config from the control plane; never, once there is no feed.
async fn next_remote(rx: &mut Option<mpsc::Receiver<Remote>>) -> Option<Remote> {
    match rx {
        Some(r) => {
            let got = r.recv().await;
            if got.is_none() {
                *rx = None;
            }
            got
        }
        None => std::future::pending().await,
    }
}
