//! The gateway's reloader (a Pingora background service, its own thread): every
//! `tls.reload_interval` it checks the gateway file, the API key files it names, and the
//! certificate files (modification time and size, as the sidecar's own watcher does).
//!
//! - The gateway file (or a key file) changed: it is read and validated again against the
//!   sidecar file's `services`, a new [`GatewayState`] is built beside the one in force and
//!   swapped in; new connections and requests use it, those under way finish with theirs.
//!   A file that does not validate (or whose certificates or key files do not load, or that
//!   moves a listener) is refused: the log says why with `file:line:col`, the counter
//!   `weft_gateway_config_reloads_total{result="error"}` counts it, and the config in force
//!   keeps serving.
//! - Only certificate files changed: [`EdgeTls::reload`](crate::gateway::edge_tls::EdgeTls)
//!   swaps them under the acceptor in force.
//!
//! It also runs the JWT providers' refresh loops ([`KeyTasks`]), which follow each reload.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use weft_policy::gateway::Gateway;

use crate::gateway::auth::refresh::KeyTasks;
use crate::gateway::edge_tls::{self, Stamps};
use crate::gateway::metrics::GatewayMetrics;
use crate::gateway::state::{GatewayState, Live};

/// Why a changed gateway file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The sidecar file (which gives the services routes name) does not load.
    #[error("{0}")]
    Sidecar(#[from] weft_policy::ConfigError),
    /// The gateway file does not validate.
    #[error("{0}")]
    File(#[from] weft_policy::gateway::GatewayError),
    /// Its certificates, key files or listeners.
    #[error("{0}")]
    State(#[from] crate::gateway::state::StateError),
}

/// Watches the gateway's files and puts a changed config in force.
pub struct GatewayReloader {
    /// The gateway file.
    pub path: PathBuf,
    /// The sidecar file (its `services`).
    pub sidecar: PathBuf,
    /// The state in force.
    pub live: Arc<Live>,
    /// Reload counters.
    pub metrics: GatewayMetrics,
}

/// The files whose change means the gateway file is read again: itself and the API key files.
fn config_files<'a>(path: &'a Path, gw: &'a Gateway) -> Vec<&'a Path> {
    let mut files = vec![path];
    files.extend(gw.auth.api_keys.iter().map(|k| k.file.as_path()));
    files
}

impl GatewayReloader {
    /// Read, validate and build the file's config, then swap it in.
    async fn reload(&self, keys: &mut KeyTasks) -> Result<Arc<GatewayState>, ReloadError> {
        let services = weft_policy::load(&self.sidecar)?.services;
        let gw = weft_policy::gateway::load(&self.path, &services)?;
        let prev = self.live.load_full();
        let next = GatewayState::next(Arc::new(gw), self.metrics.clone(), Some(&prev))?;
        // A provider the edit added gets its keys before its first token.
        keys.prefetch(&next.auth).await;
        let next = Arc::new(next);
        self.live.store(next.clone());
        keys.follow(&next.auth, true);
        Ok(next)
    }
}

#[async_trait]
impl BackgroundService for GatewayReloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut keys = KeyTasks::default();
        keys.follow(&self.live.load().auth, false);
        let first = self.live.load_full();
        let mut files: Vec<PathBuf> = (config_files(&self.path, &first.gw).into_iter())
            .map(Path::to_owned)
            .collect();
        let mut seen_files = stamp(&files);
        drop(first);
        loop {
            let every = self.live.load().gw.reload_interval;
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => break,
            }
            let now = stamp(&files);
            if now != seen_files {
                // Compared later against the stamps taken before this reload: a file replaced
                // while it ran differs at the next check and is read again.
                seen_files = now;
                match self.reload(&mut keys).await {
                    Ok(st) => {
                        self.metrics.config_reloads.with_label_values(&["ok"]).inc();
                        log::info!(
                            "gateway config reloaded from {}: {} route(s); new requests use it",
                            self.path.display(),
                            st.routes.len()
                        );
                        let after: Vec<PathBuf> = (config_files(&self.path, &st.gw).into_iter())
                            .map(Path::to_owned)
                            .collect();
                        if after != files {
                            seen_files = stamp(&after);
                            files = after;
                        }
                    }
                    Err(e) => {
                        self.metrics
                            .config_reloads
                            .with_label_values(&["error"])
                            .inc();
                        log::error!("gateway config rejected, the one in force stays:\n{e}");
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

fn stamp(paths: &[PathBuf]) -> Stamps {
    let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    edge_tls::file_stamps(&refs)
}
