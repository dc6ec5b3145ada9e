//! A gateway's first start in control-plane mode, before its gateway file is loaded: it
//! follows the control plane first (the same stream as later,
//! [`crate::control::client::until`]) until what the file needs is there.
//!
//! - With `--gateway-name` and no gateway file yet ([`fetch`]): its listeners are bound from
//!   the config, so it waits until the Gateway's config arrives and checks out, and keeps it
//!   as the gateway file, which the start then serves like any other.
//! - With a gateway file at hand (written by hand, or kept from an earlier start) and no
//!   control-plane snapshot in force yet, not even a persisted one ([`snapshot`]): the file's
//!   routes name mesh services, which only the control plane's snapshot lists, so it waits
//!   for the first snapshot (at most `control_plane.bootstrap_timeout`) and the start then
//!   checks the file against that snapshot's services.
//!
//! Later configs and snapshots go through the reloader ([`crate::gateway::reload`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

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
        crate::control::client::until(store, &cp, Some(Arc::new(feed)), first).await;
    });
    Ok(())
}

/// In control-plane mode with no snapshot in force (none received, none persisted): follow
/// the control plane until its first snapshot is in force, at most
/// `control_plane.bootstrap_timeout`. Does nothing in static mode or with a snapshot in force
/// (a restart with the control plane gone serves the persisted one). The stream names no
/// Gateway: a file at hand is the config, whatever the control plane has for the name.
pub fn snapshot(store: &Arc<Store>) -> anyhow::Result<()> {
    let Some(cp) = store.load().control_plane.clone() else {
        return Ok(());
    };
    if store.control_plane_version().is_some() {
        return Ok(());
    }
    log::info!(
        "waiting for the first snapshot of the control plane {} (at most {}): the gateway \
         file's routes name the mesh services it lists",
        cp.address,
        humantime::format_duration(cp.bootstrap_timeout)
    );
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let in_force = rt.block_on(async {
        let mut changes = store.subscribe();
        let (done, first) = oneshot::channel();
        let store2 = store.clone();
        tokio::spawn(async move {
            // Each snapshot applied bumps the store's version; a certificate or file reload
            // does too, hence the check of what is in force.
            while store2.control_plane_version().is_none() {
                if changes.changed().await.is_err() {
                    return;
                }
            }
            let _ = done.send(());
        });
        let follow = crate::control::client::until(store, &cp, None, first);
        tokio::time::timeout(cp.bootstrap_timeout, follow).await
    });
    match (in_force, store.control_plane_version()) {
        (Ok(()), Some(version)) => {
            log::info!(
                "control-plane snapshot {version} in force after {} ms",
                started.elapsed().as_millis()
            );
            Ok(())
        }
        _ => anyhow::bail!(
            "no snapshot from the control plane {} within control_plane.bootstrap_timeout ({}): \
             the gateway file's routes are checked against the mesh services it lists",
            cp.address,
            humantime::format_duration(cp.bootstrap_timeout)
        ),
    }
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
