//! The real `weft-control-plane` process of one run: started on the server core with the
//! run's policy directory and CA, and asked through its `/metrics` how many sidecars are
//! connected and in sync.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::time::Instant;

use crate::mesh::{fetch_metrics, free_ports, loopback, pinned, wait_ready, ChildGuard};

use super::policy::*;

/// The running control plane of one run.
pub(crate) struct ControlPlane {
    pub(crate) child: ChildGuard,
    pub(crate) listen: SocketAddr,
    pub(crate) admin: SocketAddr,
    pub(crate) policy_dir: PathBuf,
}

impl ControlPlane {
    pub(crate) async fn start(cfg: &CpPushConfig, dir: &Path, name: &str) -> anyhow::Result<Self> {
        let policy_dir = dir.join(format!("{name}-policy"));
        std::fs::create_dir_all(&policy_dir)?;
        write_atomically(&policy_dir, "services.yaml", &to_yaml(&services_file())?)?;
        write_atomically(
            &policy_dir,
            ROUTES_FILE,
            &to_yaml(&routes_file(canary_of_change(0)))?,
        )?;
        let ports = free_ports(2)?;
        let (listen, admin) = (loopback(ports[0]), loopback(ports[1]));
        let mut cmd = pinned(cfg.server_core, &cfg.binary);
        cmd.env("RUST_LOG", "info")
            .arg("--policy-dir")
            .arg(&policy_dir)
            .arg("--state-dir")
            .arg(dir.join(format!("{name}-state")))
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--admin")
            .arg(admin.to_string())
            .arg("--trust-domain")
            .arg(TRUST_DOMAIN)
            .arg("--ca-cert")
            .arg(dir.join("ca.crt"))
            .arg("--ca-key")
            .arg(dir.join("ca.key"));
        let mut child = ChildGuard::spawn(
            "weft-control-plane",
            cmd,
            &dir.join(format!("{name}.stderr")),
        )?;
        wait_ready(&mut child, admin, "/live").await?;
        Ok(ControlPlane {
            child,
            listen,
            admin,
            policy_dir,
        })
    }

    /// (connected, in sync) from `weft_cp_sidecars`.
    pub(crate) async fn sidecars(&self) -> anyhow::Result<(usize, usize)> {
        let text = fetch_metrics(self.admin).await?;
        let get = |state: &str| {
            metric_value(&text, &format!("weft_cp_sidecars{{state=\"{state}\"}}"))
                .map(|v| v as usize)
                .with_context(|| format!("no weft_cp_sidecars{{state=\"{state}\"}} in /metrics"))
        };
        Ok((get("connected")?, get("in_sync")?))
    }

    /// Waits (at most `limit`) until all `n` sidecars are connected and in sync.
    pub(crate) async fn wait_in_sync(&mut self, n: usize, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        let mut last = (0, 0);
        while Instant::now() < deadline {
            self.child.check_alive()?;
            if let Ok(now) = self.sidecars().await {
                last = now;
            }
            if last == (n, n) {
                return Ok(());
            }
            tokio::time::sleep(POLL).await;
        }
        bail!(
            "after {limit:?} the control plane has {} of {n} sidecars connected, {} in sync",
            last.0,
            last.1
        )
    }
}
