//! Setting up what the benchmark measures: the sample app and a pair of Weft
//! sidecars (certificates, configs, processes pinned with `taskset`), and
//! tearing it all down again.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::time::Instant;

use crate::http1::{get_request, Conn};

/// The mesh's trust domain.
pub const TRUST_DOMAIN: &str = "weft.local";

/// SPIFFE identity of the calling side (sidecar A).
pub const CLIENT_ID: &str = "spiffe://weft.local/ns/default/sa/client";

/// SPIFFE identity of the app's side (sidecar B).
pub const APP_ID: &str = "spiffe://weft.local/ns/default/sa/app";

/// How long a started process may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// A child process this benchmark started. Dropping it ends the process (by
/// its PID: SIGTERM, then SIGKILL if it has not exited within a second) and
/// reaps it, also when unwinding from a panic.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Child,
    stderr_path: PathBuf,
}

impl ChildGuard {
    /// Spawns `cmd` with stdin/stdout from/to nowhere and stderr to
    /// `stderr_path`.
    pub fn spawn(name: &str, mut cmd: Command, stderr_path: &Path) -> anyhow::Result<Self> {
        let stderr = File::create(stderr_path)
            .with_context(|| format!("creating {}", stderr_path.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(ChildGuard {
            name: name.to_owned(),
            child,
            stderr_path: stderr_path.to_owned(),
        })
    }

    /// The process's name in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where the process's stderr goes.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// The last `lines` lines of the process's stderr.
    pub fn stderr_tail(&self, lines: usize) -> String {
        match std::fs::read_to_string(&self.stderr_path) {
            Ok(s) => {
                let all: Vec<&str> = s.lines().collect();
                all[all.len().saturating_sub(lines)..].join("\n")
            }
            Err(e) => format!("(cannot read {}: {e})", self.stderr_path.display()),
        }
    }

    /// Fails (with the end of its stderr) if the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!(
                "{} (pid {}) exited: {status}; stderr ({}) ends with:\n{}",
                self.name,
                self.pid(),
                self.stderr_path.display(),
                self.stderr_tail(30)
            ),
            Err(e) => bail!("{}: cannot check its status: {e}", self.name),
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let Ok(raw) = i32::try_from(self.child.id()) else {
            return;
        };
        // Only ever the PID of the child we spawned and have not yet reaped.
        let _ = kill(Pid::from_raw(raw), Signal::SIGTERM);
        for _ in 0..100 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` distinct free TCP ports on 127.0.0.1 (all bound at once, then released).
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("binding 127.0.0.1:0")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// Loopback address with `port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Ports of one sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SidecarPorts {
    /// Plain-HTTP outbound listener (the local app's calls).
    pub outbound: u16,
    /// mTLS inbound listener (other sidecars' calls).
    pub inbound: u16,
    /// Admin listener (`/ready`).
    pub admin: u16,
}

/// Config of sidecar B, beside the app (service `app`).
pub fn app_sidecar_yaml(app_port: u16, ports: SidecarPorts) -> String {
    format!(
        "service: {{name: app, identity: \"{APP_ID}\", app: \"127.0.0.1:{app_port}\", protocol: http}}\n\
         listen: {{outbound: \"127.0.0.1:{o}\", inbound: \"127.0.0.1:{i}\", admin: \"127.0.0.1:{a}\"}}\n\
         tls: {{cert: app.crt, key: app.key, trust_bundle: ca.crt}}\n\
         workers: 1\n",
        o = ports.outbound,
        i = ports.inbound,
        a = ports.admin,
    )
}

/// Config of sidecar A, beside the client (service `client`, may call `app`
/// at `app_inbound`, sidecar B's inbound port). `unused_app_port` is where
/// its own (absent) app would be.
pub fn client_sidecar_yaml(unused_app_port: u16, ports: SidecarPorts, app_inbound: u16) -> String {
    format!(
        "service: {{name: client, identity: \"{CLIENT_ID}\", app: \"127.0.0.1:{unused_app_port}\", protocol: http}}\n\
         listen: {{outbound: \"127.0.0.1:{o}\", inbound: \"127.0.0.1:{i}\", admin: \"127.0.0.1:{a}\"}}\n\
         tls: {{cert: client.crt, key: client.key, trust_bundle: ca.crt}}\n\
         workers: 1\n\
         services:\n\
         \x20 - name: app\n\
         \x20   identity: \"{APP_ID}\"\n\
         \x20   endpoints: [{{address: \"127.0.0.1:{app_inbound}\"}}]\n",
        o = ports.outbound,
        i = ports.inbound,
        a = ports.admin,
    )
}

/// Writes `ca.crt`, `client.crt/.key` and `app.crt/.key` (a fresh CA, one
/// day of validity) into `dir`.
pub fn write_certs(dir: &Path) -> anyhow::Result<()> {
    let day = Duration::from_secs(86_400);
    let ca = weft_certs::CertificateAuthority::generate(TRUST_DOMAIN, day)?;
    std::fs::write(dir.join("ca.crt"), ca.cert_pem())?;
    for sa in ["client", "app"] {
        let id = weft_certs::Identity::new(TRUST_DOMAIN, "default", sa)?;
        let cert = ca.issue(&id, day)?;
        std::fs::write(dir.join(format!("{sa}.crt")), &cert.cert_pem)?;
        std::fs::write(dir.join(format!("{sa}.key")), &cert.key_pem)?;
    }
    Ok(())
}

/// A command that runs `program` pinned to CPU `core` with `taskset`.
/// (`taskset` execs the program, so the child's PID is the program's.)
pub fn pinned(core: usize, program: &Path) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.arg("-c").arg(core.to_string()).arg(program);
    cmd.env("RUST_LOG", "warn");
    cmd
}

/// Sends `GET path` with `Host: host` to `addr` on a fresh connection;
/// returns the status and body.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut conn = Conn::connect(addr).await?;
    let resp = conn.request(&get_request(host, path)).await?;
    Ok((resp.status, resp.body.to_vec()))
}

/// Waits (at most [`READY_TIMEOUT`]) until `GET path` on `addr` answers 200,
/// failing early if `child` exits.
pub async fn wait_ready(
    child: &mut ChildGuard,
    addr: SocketAddr,
    path: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last = String::from("no attempt yet");
    // At most READY_TIMEOUT / 50 ms iterations (plus the time each takes).
    for _ in 0..(READY_TIMEOUT.as_millis() / 50 + 1) {
        child.check_alive()?;
        match tokio::time::timeout(Duration::from_secs(2), get(addr, "127.0.0.1", path)).await {
            Ok(Ok((200, _))) => return Ok(()),
            Ok(Ok((status, body))) => {
                last = format!("status {status}: {}", String::from_utf8_lossy(&body));
            }
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "timed out".into(),
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "{} (pid {}) not ready on http://{addr}{path} within {:?} (last: {last}); stderr ({}) ends with:\n{}",
        child.name(),
        child.pid(),
        READY_TIMEOUT,
        child.stderr_path().display(),
        child.stderr_tail(30)
    )
}

/// Where the binaries the benchmark runs are.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `weft-proxy`.
    pub proxy: PathBuf,
    /// `weft-sample`.
    pub sample: PathBuf,
}

impl Binaries {
    /// The binaries in `dir`, which must exist.
    pub fn in_dir(dir: &Path) -> anyhow::Result<Self> {
        let b = Binaries {
            proxy: dir.join("weft-proxy"),
            sample: dir.join("weft-sample"),
        };
        for p in [&b.proxy, &b.sample] {
            ensure!(
                p.is_file(),
                "{} not found; build it first: cargo build --release -p weft-proxy -p weft-samples -p weft-benches",
                p.display()
            );
        }
        Ok(b)
    }
}

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
        let log = |name: &str| {
            if access_log {
                format!("access_log: {name}\n")
            } else {
                String::new()
            }
        };
        std::fs::write(
            &b_cfg,
            app_sidecar_yaml(app_port, b_ports) + &log("access-b.log"),
        )?;
        std::fs::write(
            &a_cfg,
            client_sidecar_yaml(unused_app_port, a_ports, b_ports.inbound) + &log("access-a.log"),
        )?;
        for cfg in [&b_cfg, &a_cfg] {
            let out = Command::new(&bins.proxy)
                .arg("--config")
                .arg(cfg)
                .arg("--check")
                .output()
                .with_context(|| format!("running {} --check", bins.proxy.display()))?;
            ensure!(
                out.status.success(),
                "{} rejected by weft-proxy --check: {}{}",
                cfg.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
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
        })
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

/// The `caller` field of the sample app's default JSON body.
pub fn caller_of(body: &[u8]) -> anyhow::Result<Option<String>> {
    let v: serde_json::Value =
        serde_json::from_slice(body).context("the app's answer is not JSON")?;
    Ok(v.get("caller").and_then(|c| c.as_str()).map(str::to_owned))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct() {
        let mut p = free_ports(8).unwrap();
        p.sort_unstable();
        p.dedup();
        assert_eq!(p.len(), 8);
    }

    #[test]
    fn configs_mention_every_port() {
        let ports = SidecarPorts {
            outbound: 1001,
            inbound: 1002,
            admin: 1003,
        };
        let b = app_sidecar_yaml(1000, ports);
        for s in [
            "127.0.0.1:1000",
            "127.0.0.1:1001",
            "127.0.0.1:1002",
            "127.0.0.1:1003",
            APP_ID,
            "workers: 1",
        ] {
            assert!(b.contains(s), "{s} missing in\n{b}");
        }
        let a = client_sidecar_yaml(2000, ports, 3002);
        for s in [
            "127.0.0.1:2000",
            "address: \"127.0.0.1:3002\"",
            CLIENT_ID,
            APP_ID,
            "  - name: app\n    identity:",
        ] {
            assert!(a.contains(s), "{s} missing in\n{a}");
        }
    }

    #[test]
    fn certs_are_written() {
        let dir = tempfile::tempdir().unwrap();
        write_certs(dir.path()).unwrap();
        for f in ["ca.crt", "client.crt", "client.key", "app.crt", "app.key"] {
            let s = std::fs::read_to_string(dir.path().join(f)).unwrap();
            assert!(s.contains("-----BEGIN"), "{f}");
        }
    }

    #[test]
    fn caller_field() {
        let body = br#"{"service":"app","caller":"spiffe://weft.local/ns/default/sa/client","headers":{}}"#;
        assert_eq!(caller_of(body).unwrap().as_deref(), Some(CLIENT_ID));
        assert_eq!(caller_of(br#"{"caller":null}"#).unwrap(), None);
        assert!(caller_of(b"nope").is_err());
    }

    #[test]
    fn child_guard_ends_its_process() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let mut g = ChildGuard::spawn("sleep", cmd, &dir.path().join("sleep.stderr")).unwrap();
        g.check_alive().unwrap();
        let pid = g.pid();
        drop(g);
        // Reaped: the PID no longer names our child.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
        assert!(stat.map_or(true, |s| !s.contains("(sleep)")));
    }
}
