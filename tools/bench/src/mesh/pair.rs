//! The benchmark's own pair: the sample app and a Weft sidecar on each side of it
//! ([`Mesh`]), started with certificates and configs, verified, and ended with it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context as _};

use super::net::*;
use super::process::*;
use super::sidecar::*;

/// The running app and sidecar pair.
#[derive(Debug)]
pub struct Mesh {
    /// The sample app.
    pub app: ChildGuard,
    /// Sidecar A, beside the client.
    pub client_sidecar: ChildGuard,
    /// Sidecar B, beside the app.
    pub app_sidecar: ChildGuard,
    /// The app's address (the direct scenario's target).
    pub app_addr: SocketAddr,
    /// Sidecar A's outbound address (the Weft scenario's target).
    pub outbound_addr: SocketAddr,
    /// Sidecar B's inbound (mTLS) port.
    pub app_inbound: u16,
}

impl Mesh {
    /// Writes certificates and configs into `dir`, starts the app and both
    /// sidecars pinned to CPU `core`, and waits until all are ready.
    pub async fn start(
        dir: &Path,
        bins: &Binaries,
        core: usize,
        access_log: bool,
    ) -> anyhow::Result<Self> {
        write_certs(dir).context("generating certificates")?;
        let p = free_ports(8)?;
        let app_port = p[0];
        let b_ports = SidecarPorts {
            outbound: p[1],
            inbound: p[2],
            admin: p[3],
        };
        let a_ports = SidecarPorts {
            outbound: p[4],
            inbound: p[5],
            admin: p[6],
        };
        let unused_app_port = p[7];
        let b_cfg = dir.join("sidecar-b.yaml");
        let a_cfg = dir.join("sidecar-a.yaml");
        let mut b = app_sidecar(app_port, b_ports);
        let mut a = client_sidecar(unused_app_port, a_ports, b_ports.inbound);
        if access_log {
            b.access_log = Some("access-b.log".into());
            a.access_log = Some("access-a.log".into());
        }
        write_config(&b_cfg, &b)?;
        write_config(&a_cfg, &a)?;
        for cfg in [&b_cfg, &a_cfg] {
            check_config(bins, cfg)?;
        }

        let app_addr = loopback(app_port);
        let mut app_cmd = pinned(core, &bins.sample);
        app_cmd.args([
            "http",
            "--listen",
            &app_addr.to_string(),
            "--name",
            "app",
            "--threads",
            "1",
        ]);
        let mut app = ChildGuard::spawn("app (weft-sample)", app_cmd, &dir.join("app.stderr"))?;
        let mut b_cmd = pinned(core, &bins.proxy);
        b_cmd.arg("--config").arg(&b_cfg);
        let mut app_sidecar =
            ChildGuard::spawn("sidecar B (app)", b_cmd, &dir.join("sidecar-b.stderr"))?;
        let mut a_cmd = pinned(core, &bins.proxy);
        a_cmd.arg("--config").arg(&a_cfg);
        let mut client_sidecar =
            ChildGuard::spawn("sidecar A (client)", a_cmd, &dir.join("sidecar-a.stderr"))?;

        wait_ready(&mut app, app_addr, "/").await?;
        wait_ready(&mut app_sidecar, loopback(b_ports.admin), "/ready").await?;
        wait_ready(&mut client_sidecar, loopback(a_ports.admin), "/ready").await?;
        Ok(Mesh {
            app,
            client_sidecar,
            app_sidecar,
            app_addr,
            outbound_addr: loopback(a_ports.outbound),
            app_inbound: b_ports.inbound,
        })
    }

    /// The processes, for messages: sidecar A, sidecar B, the app.
    pub fn children(&self) -> [&ChildGuard; 3] {
        [&self.client_sidecar, &self.app_sidecar, &self.app]
    }

    /// Fails if any of the processes has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.app.check_alive()?;
        self.app_sidecar.check_alive()?;
        self.client_sidecar.check_alive()
    }

    /// Checks once that a request through the pair answers 200 and that the
    /// app saw the client's mTLS identity as the caller.
    pub async fn verify(&self) -> anyhow::Result<()> {
        let (status, body) =
            tokio::time::timeout(Duration::from_secs(5), get(self.outbound_addr, "app", "/"))
                .await
                .context("request through the sidecar pair timed out")??;
        let text = String::from_utf8_lossy(&body);
        ensure!(status == 200, "through the pair: status {status}: {text}");
        let caller = caller_of(&body)?;
        ensure!(
            caller.as_deref() == Some(CLIENT_ID),
            "through the pair the app saw caller {caller:?}, not {CLIENT_ID}: {text}"
        );
        let (status, body) =
            tokio::time::timeout(Duration::from_secs(5), get(self.app_addr, "app", "/"))
                .await
                .context("direct request timed out")??;
        ensure!(
            status == 200,
            "direct: status {status}: {}",
            String::from_utf8_lossy(&body)
        );
        Ok(())
    }
}
