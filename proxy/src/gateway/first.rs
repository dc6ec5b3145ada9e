//! A gateway's first start with `--gateway-name` and no gateway file yet: its listeners are
//! bound from the config, so it follows the control plane first (the same stream as later,
//! [`crate::control::client::until`]) until the Gateway's config arrives and checks out, and
//! keeps it as the gateway file, which the start then serves like any other. Later configs go
//! through the reloader ([`crate::gateway::reload`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::oneshot;
use weft_api::v1::GatewayConfig;

use crate::gateway::edge_tls;
use crate::gateway::remote::{self, GatewayFeed};
use crate::store::Store;

/// Wait for Gateway `name`'s first config from the control plane and write it to `path`.
pub fn fetch(store: &Arc<Store>, name: &str, path: &Path) -> anyhow::Result<()> {
    let cp = store
        .load()
        .control_plane
        .clone()
        .context("--gateway-name needs control_plane in the sidecar config")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (feed, mut configs) = GatewayFeed::new(name.to_owned());
        let (done, first) = oneshot::channel();
        let (store2, path2) = (store.clone(), path.to_owned());
        tokio::spawn(async move {
            let mut done = Some(done);
            while let Some(r) = configs.recv().await {
                let verdict = write_first(&store2, &path2, &r.config);
                match &verdict {
                    Ok(()) => {
                        log::info!(
                            "gateway config {} of {} from the control plane kept as {}",
                            r.config.version,
                            r.config.gateway,
                            path2.display()
                        );
                        if let Some(d) = done.take() {
                            let _ = d.send(());
                        }
                    }
                    Err(e) => log::error!("gateway config {} refused:\n{e}", r.config.version),
                }
                let _ = r.reply.send(verdict);
            }
        });
        crate::control::client::until(store, &cp, Arc::new(feed), first).await;
    });
    Ok(())
}

/// Check `config` as the start will (its text against the mesh services in force, its
/// certificates loaded) from its staged files, then persist it.
fn write_first(store: &Store, path: &Path, config: &GatewayConfig) -> Result<(), String> {
    let base = remote::stage(path, config)?;
    let label = PathBuf::from(format!(
        "Gateway {} config {}",
        config.gateway, config.version
    ));
    let checked = store
        .mesh_services()
        .map_err(|e| e.to_string())
        .and_then(|services| {
            weft_policy::gateway::parse(&config.config_yaml, &label, &base, &services)
                .map_err(|e| e.to_string())
        })
        .and_then(|gw| edge_tls::build(&gw).map(drop).map_err(|e| e.to_string()));
    let _ = std::fs::remove_dir_all(&base);
    checked?;
    remote::persist(path, config).map_err(|e| format!("writing {}: {e}", path.display()))
}
