//! Setting up what the benchmark measures: the sample app and a pair of Weft
//! sidecars (certificates, configs, processes pinned with `taskset`), the
//! resilience scenarios' processes ([`ResilienceMesh`]), and tearing it all
//! down again.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::time::Instant;

use crate::collector::Collector;
use crate::http1::{get_request, Conn};
use crate::observability::{accounted_for, ObsVariant, RunTelemetry, Side, SidecarCounters};
use crate::resilience::{self, Balancer, Policies, Variant, ENDPOINTS};

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
    app_sidecar_yaml_with_cert(app_port, ports, "app")
}

/// Config of a sidecar beside an instance of the app (service `app`), with
/// the workload certificate `<cert>.crt` / `<cert>.key`.
pub fn app_sidecar_yaml_with_cert(app_port: u16, ports: SidecarPorts, cert: &str) -> String {
    format!(
        "service: {{name: app, identity: \"{APP_ID}\", app: \"127.0.0.1:{app_port}\", protocol: http}}\n\
         listen: {{outbound: \"127.0.0.1:{o}\", inbound: \"127.0.0.1:{i}\", admin: \"127.0.0.1:{a}\"}}\n\
         tls: {{cert: {cert}.crt, key: {cert}.key, trust_bundle: ca.crt}}\n\
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
    client_sidecar_head(unused_app_port, ports)
        + &format!(
            "services:\n\
             \x20 - name: app\n\
             \x20   identity: \"{APP_ID}\"\n\
             \x20   endpoints: [{{address: \"127.0.0.1:{app_inbound}\"}}]\n"
        )
}

/// Config of an outbound sidecar beside the client (service `client`) that
/// may call `app` at the sidecars listening on `app_inbound_ports`, without
/// or with the resilience policies, with `balancer`
/// ([`resilience::services_yaml`]).
pub fn policy_client_sidecar_yaml(
    unused_app_port: u16,
    ports: SidecarPorts,
    app_inbound_ports: &[u16],
    policies: Policies,
    balancer: Balancer,
) -> String {
    client_sidecar_head(unused_app_port, ports)
        + &resilience::services_yaml(app_inbound_ports, policies, balancer)
}

/// The part of a client-side sidecar's config before `services:`.
fn client_sidecar_head(unused_app_port: u16, ports: SidecarPorts) -> String {
    format!(
        "service: {{name: client, identity: \"{CLIENT_ID}\", app: \"127.0.0.1:{unused_app_port}\", protocol: http}}\n\
         listen: {{outbound: \"127.0.0.1:{o}\", inbound: \"127.0.0.1:{i}\", admin: \"127.0.0.1:{a}\"}}\n\
         tls: {{cert: client.crt, key: client.key, trust_bundle: ca.crt}}\n\
         workers: 1\n",
        o = ports.outbound,
        i = ports.inbound,
        a = ports.admin,
    )
}

/// File stem of the workload certificate of app instance `i` (from 1) in
/// the failing-endpoint scenario: `app-<i>` (identity [`APP_ID`]).
pub fn instance_cert(i: usize) -> String {
    format!("app-{i}")
}

/// Writes `ca.crt`, `client.crt/.key`, `app.crt/.key` and, for the
/// failing-endpoint scenario's three app instances, `app-1.crt/.key` ..
/// `app-3.crt/.key` (each its own key and certificate, all of identity
/// [`APP_ID`]) into `dir`: a fresh CA, one day of validity.
pub fn write_certs(dir: &Path) -> anyhow::Result<()> {
    let day = Duration::from_secs(86_400);
    let ca = weft_certs::CertificateAuthority::generate(TRUST_DOMAIN, day)?;
    std::fs::write(dir.join("ca.crt"), ca.cert_pem())?;
    let files = [("client", "client".to_owned()), ("app", "app".to_owned())]
        .into_iter()
        .chain((1..=ENDPOINTS).map(|i| ("app", instance_cert(i))));
    for (sa, stem) in files {
        let id = weft_certs::Identity::new(TRUST_DOMAIN, "default", sa)?;
        let cert = ca.issue(&id, day)?;
        std::fs::write(dir.join(format!("{stem}.crt")), &cert.cert_pem)?;
        std::fs::write(dir.join(format!("{stem}.key")), &cert.key_pem)?;
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
    wait_status(child, addr, path, 200).await
}

/// Waits (at most [`READY_TIMEOUT`]) until `GET path` on `addr` answers
/// `status`, failing early if `child` exits.
pub async fn wait_status(
    child: &mut ChildGuard,
    addr: SocketAddr,
    path: &str,
    status: u16,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last = String::from("no attempt yet");
    // At most READY_TIMEOUT / 50 ms iterations (plus the time each takes).
    for _ in 0..(READY_TIMEOUT.as_millis() / 50 + 1) {
        child.check_alive()?;
        match tokio::time::timeout(Duration::from_secs(2), get(addr, "127.0.0.1", path)).await {
            Ok(Ok((got, _))) if got == status => return Ok(()),
            Ok(Ok((got, body))) => {
                last = format!("status {got}: {}", String::from_utf8_lossy(&body));
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
        "{} (pid {}) not ready (answering {status}) on http://{addr}{path} within {:?} (last: {last}); stderr ({}) ends with:\n{}",
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

/// Drops `path`'s pages from the page cache (after writing back any not yet on disk), so the
/// processes started from it read it back as from any installed binary. A file just written in
/// large chunks (as a post-link optimiser writes) sits in large page-cache folios, and mapping
/// one page of such a folio maps all of it: a sidecar's RSS then reads several MiB higher than
/// for the same bytes read from disk. Best effort: the measured binaries also run without it.
pub fn drop_cached(path: &Path) {
    use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
    use std::os::fd::AsRawFd;
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.sync_data();
        let _ = posix_fadvise(f.as_raw_fd(), 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED);
    }
}

impl Binaries {
    /// The binaries in `dir`, which must exist; `proxy`, when given, instead of the
    /// `weft-proxy` there.
    pub fn in_dir(dir: &Path, proxy: Option<&Path>) -> anyhow::Result<Self> {
        let b = Binaries {
            proxy: proxy.map_or_else(|| dir.join("weft-proxy"), Path::to_path_buf),
            sample: dir.join("weft-sample"),
        };
        for p in [&b.proxy, &b.sample] {
            ensure!(
                p.is_file(),
                "{} not found; build it first: cargo build --release -p weft-proxy -p weft-samples -p weft-benches",
                p.display()
            );
        }
        drop_cached(&b.proxy);
        drop_cached(&b.sample);
        Ok(b)
    }

    /// The first line of `weft-proxy --version` (it says whether the build is
    /// profile-guided and BOLT-optimised), for the reports.
    pub fn proxy_version(&self) -> String {
        version_of(&self.proxy, "--version")
    }
}

/// The first line of a program's version output (stderr when it writes there, as HAProxy
/// and NGINX do; else stdout).
pub fn version_of(program: &Path, flag: &str) -> String {
    match std::process::Command::new(program).arg(flag).output() {
        Ok(out) => {
            let text = if out.stderr.is_empty() {
                out.stdout
            } else {
                out.stderr
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        }
        Err(e) => format!("(cannot run {}: {e})", program.display()),
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

/// Runs `weft-proxy --config cfg --check`; fails with its output if the
/// config is rejected.
pub fn check_config(bins: &Binaries, cfg: &Path) -> anyhow::Result<()> {
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
    Ok(())
}

/// An outbound sidecar of the resilience scenarios.
#[derive(Debug)]
pub struct PolicySidecar {
    /// `healthy` (calls the pair's sidecar B) or `failing` (calls the three
    /// instances).
    pub kind: &'static str,
    /// Its balancer and whether it has the policies (the healthy-path ones
    /// use the default balancer).
    pub variant: Variant,
    /// The process.
    pub child: ChildGuard,
    /// Its outbound (plain HTTP) address: the load's target.
    pub outbound_addr: SocketAddr,
    /// Its admin address.
    pub admin_addr: SocketAddr,
}

impl PolicySidecar {
    /// `healthy-<without|with>` or `failing-<balancer>-<without|with>`.
    pub fn key(&self) -> String {
        if self.kind == "healthy" {
            format!("{}-{}", self.kind, self.variant.policies.as_str())
        } else {
            format!("{}-{}", self.kind, self.variant.key())
        }
    }
}

/// Most bytes [`fetch_metrics`] reads.
const MAX_METRICS: u64 = 16 * 1024 * 1024;

/// `GET /metrics` from a sidecar's admin address: the whole response (head
/// and body) as text, read until the server closes (`Connection: close`).
pub async fn fetch_metrics(admin: SocketAddr) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(admin).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        stream.take(MAX_METRICS).read_to_end(&mut buf).await?;
        anyhow::Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .with_context(|| format!("GET http://{admin}/metrics timed out"))?
}

/// Prefixes of the metric families [`ResilienceMesh::metrics`] keeps: the
/// resilience policies' counters and gauges.
pub const POLICY_METRICS: [&str; 5] = [
    "weft_retr",
    "weft_outlier",
    "weft_requests_rejected",
    "weft_endpoint",
    "weft_in_flight",
];

/// The sample lines (not comments) of `text` whose metric name starts with
/// one of `prefixes`.
pub fn metric_lines(text: &str, prefixes: &[&str]) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && prefixes.iter().any(|p| l.starts_with(p)))
        .map(str::to_owned)
        .collect()
}

/// The processes of the resilience scenarios, beside a running [`Mesh`]:
///
/// * for the healthy-path cost, two more client-side sidecars (without and
///   with policies) calling the mesh's sidecar B, i.e. the same pair with
///   another outbound config;
/// * for "one of three endpoints fails", three app instances
///   (`app-1`..`app-3`, the last answering every request with the fail
///   status), each behind its own inbound sidecar with its own certificate
///   of identity [`APP_ID`], and four outbound sidecars listing the three
///   endpoints, one per [`Variant`] (without / with policies, P2C / round
///   robin).
#[derive(Debug)]
pub struct ResilienceMesh {
    /// The app instances; the last one fails every request.
    pub apps: Vec<ChildGuard>,
    /// Their inbound sidecars, in the same order.
    pub app_sidecars: Vec<ChildGuard>,
    /// Healthy path: outbound sidecars to the mesh's sidecar B, indexed by
    /// [`Policies::index`].
    pub healthy: Vec<PolicySidecar>,
    /// Failing endpoint: outbound sidecars to the three instances, indexed
    /// by [`Variant::index`].
    pub failing: Vec<PolicySidecar>,
    /// The `services:` / `routes:` config parts of the failing-endpoint
    /// outbound sidecars, as run, by [`Variant::key`].
    pub services_yaml: BTreeMap<String, String>,
}

/// [`check_config`] for a config with the resilience policy fields; a proxy
/// that does not know them gets a hint.
fn check_policy_config(bins: &Binaries, cfg: &Path) -> anyhow::Result<()> {
    check_config(bins, cfg).map_err(|e| {
        if resilience::is_unknown_field_error(&format!("{e:#}")) {
            e.context(
                "this weft-proxy does not know the resilience policy fields \
                 (outlier_detection, retry_budget, limits, retry, rate_limit); \
                 rebuild it (cargo build --release -p weft-proxy) or skip the \
                 resilience scenarios with --no-resilience",
            )
        } else {
            e
        }
    })
}

impl ResilienceMesh {
    /// Checks, before anything of the resilience scenarios starts, that
    /// `weft-proxy --check` accepts every outbound config they will use
    /// (rendered with placeholder ports into `dir/check-*.yaml`; `dir` holds
    /// the certificates [`Mesh::start`] wrote), so a proxy without the
    /// policy fields is refused before minutes of other runs.
    pub fn preflight(dir: &Path, bins: &Binaries) -> anyhow::Result<()> {
        let ports = SidecarPorts {
            outbound: 1,
            inbound: 2,
            admin: 3,
        };
        for v in Variant::ALL {
            let yaml = policy_client_sidecar_yaml(4, ports, &[5, 6, 7], v.policies, v.balancer);
            let cfg = dir.join(format!("check-{}.yaml", v.key()));
            std::fs::write(&cfg, yaml)?;
            check_policy_config(bins, &cfg)?;
        }
        Ok(())
    }

    /// Writes the configs into `dir` (where [`Mesh::start`] wrote the
    /// certificates), checks them all with `weft-proxy --check` (a proxy
    /// that does not know the policy fields fails here, before anything
    /// starts), starts every process pinned to CPU `core` and waits until
    /// all are ready. `app_inbound` is the mesh's sidecar B inbound port.
    pub async fn start(
        dir: &Path,
        bins: &Binaries,
        core: usize,
        app_inbound: u16,
        fail_status: u16,
    ) -> anyhow::Result<Self> {
        // Per instance: app, sidecar outbound / inbound / admin; per policy
        // sidecar (2 healthy, 4 failing): outbound / inbound / admin /
        // unused app port.
        let p = free_ports(ENDPOINTS * 4 + (2 + Variant::ALL.len()) * 4)?;
        let mut next = p.into_iter();
        let mut port = || next.next().context("out of ports");
        let mut instances = Vec::new();
        for i in 1..=ENDPOINTS {
            let app_port = port()?;
            let ports = SidecarPorts {
                outbound: port()?,
                inbound: port()?,
                admin: port()?,
            };
            let cfg = dir.join(format!("sidecar-app-{i}.yaml"));
            std::fs::write(
                &cfg,
                app_sidecar_yaml_with_cert(app_port, ports, &instance_cert(i)),
            )?;
            check_config(bins, &cfg)?;
            instances.push((i, app_port, ports, cfg));
        }
        let inbound_ports: Vec<u16> = instances.iter().map(|(_, _, p, _)| p.inbound).collect();

        // The outbound sidecars: healthy path first (in Policies order), then
        // the failing endpoint's (in Variant order).
        let healthy = Policies::BOTH.map(|p| ("healthy", Variant::new(Balancer::P2cEwma, p)));
        let failing = Variant::ALL.map(|v| ("failing", v));
        let mut outbound = Vec::new();
        let mut services_yaml = BTreeMap::new();
        for (kind, v) in healthy.into_iter().chain(failing) {
            let endpoints = if kind == "healthy" {
                vec![app_inbound]
            } else {
                inbound_ports.clone()
            };
            let ports = SidecarPorts {
                outbound: port()?,
                inbound: port()?,
                admin: port()?,
            };
            let yaml =
                policy_client_sidecar_yaml(port()?, ports, &endpoints, v.policies, v.balancer);
            let stem = if kind == "healthy" {
                format!("{kind}-{}", v.policies.as_str())
            } else {
                services_yaml.insert(
                    v.key(),
                    resilience::services_yaml(&endpoints, v.policies, v.balancer),
                );
                format!("{kind}-{}", v.key())
            };
            let cfg = dir.join(format!("sidecar-{stem}.yaml"));
            std::fs::write(&cfg, &yaml)?;
            check_policy_config(bins, &cfg)?;
            outbound.push((kind, v, ports, cfg, stem));
        }

        let mut apps = Vec::new();
        let mut app_sidecars = Vec::new();
        for (i, app_port, _, cfg) in &instances {
            let name = instance_cert(*i);
            let failing = *i == ENDPOINTS;
            let mut cmd = pinned(core, &bins.sample);
            cmd.args([
                "http",
                "--listen",
                &loopback(*app_port).to_string(),
                "--name",
                &name,
                "--threads",
                "1",
            ]);
            if failing {
                cmd.args(["--fail-status", &fail_status.to_string()]);
            }
            apps.push(ChildGuard::spawn(
                &format!(
                    "{name} (weft-sample{})",
                    if failing { ", failing" } else { "" }
                ),
                cmd,
                &dir.join(format!("{name}.stderr")),
            )?);
            let mut cmd = pinned(core, &bins.proxy);
            cmd.arg("--config").arg(cfg);
            app_sidecars.push(ChildGuard::spawn(
                &format!("sidecar of {name}"),
                cmd,
                &dir.join(format!("sidecar-{name}.stderr")),
            )?);
        }
        let mut sidecars = Vec::new();
        for (kind, v, ports, cfg, stem) in &outbound {
            let mut cmd = pinned(core, &bins.proxy);
            cmd.arg("--config").arg(cfg);
            let child = ChildGuard::spawn(
                &format!("{kind}-endpoint client sidecar, {}", v.label()),
                cmd,
                &dir.join(format!("sidecar-{stem}.stderr")),
            )?;
            sidecars.push(PolicySidecar {
                kind,
                variant: *v,
                child,
                outbound_addr: loopback(ports.outbound),
                admin_addr: loopback(ports.admin),
            });
        }

        for ((i, app_port, ports, _), (app, sidecar)) in instances
            .iter()
            .zip(apps.iter_mut().zip(app_sidecars.iter_mut()))
        {
            let status = if *i == ENDPOINTS { fail_status } else { 200 };
            wait_status(app, loopback(*app_port), "/", status).await?;
            wait_ready(sidecar, loopback(ports.admin), "/ready").await?;
        }
        for s in &mut sidecars {
            wait_ready(&mut s.child, s.admin_addr, "/ready").await?;
        }
        let (healthy, failing): (Vec<_>, Vec<_>) =
            sidecars.into_iter().partition(|s| s.kind == "healthy");
        Ok(ResilienceMesh {
            apps,
            app_sidecars,
            healthy,
            failing,
            services_yaml,
        })
    }

    /// The healthy-path outbound sidecar of `policies`.
    pub fn healthy(&self, policies: Policies) -> &PolicySidecar {
        &self.healthy[policies.index()]
    }

    /// The failing-endpoint outbound sidecar of `variant`.
    pub fn failing(&self, variant: Variant) -> &PolicySidecar {
        &self.failing[variant.index()]
    }

    /// PIDs a failing-endpoint run watches: the outbound sidecar of
    /// `variant`, the inbound sidecars, the apps.
    pub fn failing_watch(&self, variant: Variant) -> Vec<u32> {
        std::iter::once(self.failing(variant).child.pid())
            .chain(self.app_sidecars.iter().map(ChildGuard::pid))
            .chain(self.apps.iter().map(ChildGuard::pid))
            .collect()
    }

    /// Each outbound sidecar's `/metrics`, written whole to
    /// `dir/metrics-<key>.txt`; returns, by [`PolicySidecar::key`], the
    /// lines of the policy metric families ([`POLICY_METRICS`]). A sidecar
    /// whose metrics cannot be read gets one line saying why.
    pub async fn metrics(&self, dir: &Path) -> BTreeMap<String, Vec<String>> {
        let mut out = BTreeMap::new();
        for s in self.healthy.iter().chain(&self.failing) {
            let lines = match fetch_metrics(s.admin_addr).await {
                Ok(text) => {
                    let path = dir.join(format!("metrics-{}.txt", s.key()));
                    if let Err(e) = std::fs::write(&path, &text) {
                        eprintln!("weft-bench: writing {}: {e}", path.display());
                    }
                    metric_lines(&text, &POLICY_METRICS)
                }
                Err(e) => vec![format!("(metrics not read: {e:#})")],
            };
            out.insert(s.key(), lines);
        }
        out
    }

    /// Every process, for messages.
    pub fn children(&self) -> Vec<&ChildGuard> {
        self.healthy
            .iter()
            .chain(&self.failing)
            .map(|s| &s.child)
            .chain(&self.app_sidecars)
            .chain(&self.apps)
            .collect()
    }

    /// Fails if any of the processes has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for s in self.healthy.iter_mut().chain(self.failing.iter_mut()) {
            s.child.check_alive()?;
        }
        for c in self.app_sidecars.iter_mut().chain(self.apps.iter_mut()) {
            c.check_alive()?;
        }
        Ok(())
    }

    /// Checks the setup once, returning by variant the instances that
    /// answered:
    ///
    /// * both healthy-path sidecars answer 200 and the app sees the client's
    ///   identity;
    /// * through the round-robin sidecar without policies, each of the three
    ///   instances answers (with its own status: 200, or `fail_status` from
    ///   the failing one), so mTLS to every inbound sidecar works;
    /// * through the P2C sidecar without policies, the answers come from the
    ///   instances and at least one is healthy (one request at a time, P2C
    ///   on peak-EWMA latency may never try an endpoint: untried ones are
    ///   assumed slow, a 5xx is charged as a slow answer);
    /// * the sidecars with policies answer.
    pub async fn verify(&self, fail_status: u16) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
        let timeout = Duration::from_secs(5);
        for p in Policies::BOTH {
            let addr = self.healthy(p).outbound_addr;
            let (status, body) = tokio::time::timeout(timeout, get(addr, "app", "/"))
                .await
                .with_context(|| format!("healthy path {}: timed out", p.label()))??;
            let text = String::from_utf8_lossy(&body);
            ensure!(
                status == 200,
                "healthy path {}: status {status}: {text}",
                p.label()
            );
            let caller = caller_of(&body)?;
            ensure!(
                caller.as_deref() == Some(CLIENT_ID),
                "healthy path {}: the app saw caller {caller:?}: {text}",
                p.label()
            );
        }
        let failing = instance_cert(ENDPOINTS);
        let mut seen_by = BTreeMap::new();
        for balancer in Balancer::ALL {
            let v = Variant::new(balancer, Policies::Without);
            let seen = self.answering(v, fail_status, 30).await?;
            let ok = match balancer {
                Balancer::RoundRobin => seen.len() == ENDPOINTS,
                Balancer::P2cEwma => seen.iter().any(|n| *n != failing),
            };
            ensure!(
                ok,
                "through the failing-endpoint sidecar ({}) only {seen:?} answered in 30 requests",
                v.label()
            );
            seen_by.insert(v.key(), seen);
        }
        for balancer in Balancer::ALL {
            let v = Variant::new(balancer, Policies::With);
            tokio::time::timeout(timeout, get(self.failing(v).outbound_addr, "app", "/"))
                .await
                .with_context(|| format!("failing endpoint, {}: timed out", v.label()))??;
        }
        Ok(seen_by)
    }

    /// Sends `n` requests, one at a time, through the failing-endpoint
    /// sidecar of `v`; checks that each answer comes from one of the
    /// instances with its status (200, `fail_status` from the failing one)
    /// and returns the names of those that answered.
    async fn answering(
        &self,
        v: Variant,
        fail_status: u16,
        n: usize,
    ) -> anyhow::Result<Vec<String>> {
        let timeout = Duration::from_secs(5);
        let addr = self.failing(v).outbound_addr;
        let failing = instance_cert(ENDPOINTS);
        let names: Vec<String> = (1..=ENDPOINTS).map(instance_cert).collect();
        let mut seen = std::collections::BTreeSet::new();
        let req = get_request("app", "/");
        let mut conn = None;
        for _ in 0..n {
            let c = match conn.as_mut() {
                Some(c) => c,
                None => conn.insert(
                    tokio::time::timeout(timeout, Conn::connect(addr))
                        .await
                        .with_context(|| {
                            format!("connecting to {addr} ({}) timed out", v.label())
                        })??,
                ),
            };
            let resp = tokio::time::timeout(timeout, c.request(&req))
                .await
                .with_context(|| format!("request through {addr} ({}) timed out", v.label()))??;
            let body: serde_json::Value = serde_json::from_slice(resp.body).with_context(|| {
                format!(
                    "failing endpoint, {}: status {}: {}",
                    v.label(),
                    resp.status,
                    String::from_utf8_lossy(resp.body)
                )
            })?;
            let name = body["service"].as_str().unwrap_or("?").to_owned();
            ensure!(
                names.contains(&name),
                "failing endpoint, {}: answered by {name:?}, not one of {names:?}: {body}",
                v.label()
            );
            let want = if name == failing { fail_status } else { 200 };
            ensure!(
                resp.status == want,
                "failing endpoint, {}: {name} answered {}: {body}",
                v.label(),
                resp.status
            );
            seen.insert(name);
            if c.is_closed() {
                conn = None;
            }
        }
        Ok(seen.into_iter().collect())
    }
}

/// The `caller` field of the sample app's default JSON body.
pub fn caller_of(body: &[u8]) -> anyhow::Result<Option<String>> {
    let v: serde_json::Value =
        serde_json::from_slice(body).context("the app's answer is not JSON")?;
    Ok(v.get("caller").and_then(|c| c.as_str()).map(str::to_owned))
}

/// One variant's sidecar pair in the observability scenario.
#[derive(Debug)]
pub struct ObsPair {
    /// Which variant.
    pub variant: ObsVariant,
    /// Sidecar A, beside the client. (Declared first: it ends first, closing
    /// its pooled connections to sidecar B, which can then exit at once.)
    pub client: ChildGuard,
    /// Sidecar B, beside the app (the benchmark's app).
    pub app: ChildGuard,
    /// Sidecar A's outbound address: the load's target.
    pub outbound_addr: SocketAddr,
    /// Sidecar A's admin address.
    pub client_admin: SocketAddr,
    /// Sidecar B's admin address.
    pub app_admin: SocketAddr,
    /// The access log files (A, B), if the variant writes them.
    pub access_logs: Vec<PathBuf>,
}

/// The observability scenario's processes, beside a running [`Mesh`]: one
/// sidecar pair per [`ObsVariant`] in front of the mesh's app (all at once,
/// or one at a time: [`PairLifetime`](crate::observability::PairLifetime)),
/// and the in-process trace collector
/// the tracing variants export to.
#[derive(Debug)]
pub struct ObservabilityMesh {
    /// The running pairs, indexed by [`ObsVariant::index`]. (Declared before
    /// the collector: the sidecars end first, so they never export into a
    /// stopped collector.)
    pairs: Vec<Option<ObsPair>>,
    /// The OTLP/gRPC collector.
    pub collector: Collector,
    /// What each variant adds to sidecar A's config, by [`ObsVariant::key`].
    pub config_lines: BTreeMap<String, String>,
    dir: PathBuf,
    bins: Binaries,
    core: usize,
    app_port: u16,
    /// Pairs started so far.
    pub starts: usize,
}

/// How long [`ObservabilityMesh::settle`] waits at most for a run's spans
/// and log lines (the sidecars export a partial batch after `export_interval`,
/// 1 s by default).
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

impl ObservabilityMesh {
    /// Checks, before anything else runs, that `weft-proxy --check` accepts
    /// the tracing variants' configs (rendered with placeholder ports into
    /// `dir/check-obs-*.yaml`; `dir` holds the certificates): a proxy
    /// without the `tracing` block is refused with a hint.
    pub fn preflight(dir: &Path, bins: &Binaries) -> anyhow::Result<()> {
        let ports = SidecarPorts {
            outbound: 1,
            inbound: 2,
            admin: 3,
        };
        for v in ObsVariant::ALL
            .into_iter()
            .filter(|v| v.sampling().is_some())
        {
            let yaml =
                client_sidecar_yaml(4, ports, 5) + &v.config_lines(Side::Client, loopback(6));
            let cfg = dir.join(format!("check-obs-{}.yaml", v.key()));
            std::fs::write(&cfg, yaml)?;
            check_config(bins, &cfg).map_err(|e| {
                if resilience::is_unknown_field_error(&format!("{e:#}")) {
                    e.context(
                        "this weft-proxy does not know the `tracing` block; rebuild it \
                         (cargo build --release -p weft-proxy) or skip the observability \
                         scenario with --no-observability",
                    )
                } else {
                    e
                }
            })?;
        }
        Ok(())
    }

    /// Starts the collector (a thread of this process, pinned to CPU
    /// `loadgen_core`); pairs run on CPU `core` in front of the app on
    /// 127.0.0.1:`app_port`, their configs and stderr in `dir` (where
    /// [`Mesh::start`] wrote the certificates). No pair runs yet.
    pub fn new(
        dir: &Path,
        bins: &Binaries,
        core: usize,
        loadgen_core: usize,
        app_port: u16,
    ) -> anyhow::Result<Self> {
        let collector = Collector::start(loadgen_core).context("starting the trace collector")?;
        let config_lines = ObsVariant::ALL
            .into_iter()
            .map(|v| {
                (
                    v.key().to_owned(),
                    v.config_lines(Side::Client, collector.addr()),
                )
            })
            .collect();
        Ok(ObservabilityMesh {
            pairs: ObsVariant::ALL.map(|_| None).into_iter().collect(),
            collector,
            config_lines,
            dir: dir.to_owned(),
            bins: bins.clone(),
            core,
            app_port,
            starts: 0,
        })
    }

    /// Starts the pair of `v` (unless it runs): writes both configs (fresh
    /// ports), checks them with `weft-proxy --check` the first time, starts
    /// both sidecars and waits until they are ready.
    pub async fn start_pair(&mut self, v: ObsVariant) -> anyhow::Result<()> {
        if self.pairs[v.index()].is_some() {
            return Ok(());
        }
        let c_addr = self.collector.addr();
        let p = free_ports(7)?;
        let a_ports = SidecarPorts {
            outbound: p[0],
            inbound: p[1],
            admin: p[2],
        };
        let unused_app_port = p[3];
        let b_ports = SidecarPorts {
            outbound: p[4],
            inbound: p[5],
            admin: p[6],
        };
        let dir = &self.dir;
        let b_cfg = dir.join(format!("sidecar-obs-{}-b.yaml", v.key()));
        let a_cfg = dir.join(format!("sidecar-obs-{}-a.yaml", v.key()));
        let first = !b_cfg.exists();
        std::fs::write(
            &b_cfg,
            app_sidecar_yaml(self.app_port, b_ports) + &v.config_lines(Side::App, c_addr),
        )?;
        std::fs::write(
            &a_cfg,
            client_sidecar_yaml(unused_app_port, a_ports, b_ports.inbound)
                + &v.config_lines(Side::Client, c_addr),
        )?;
        if first {
            for cfg in [&b_cfg, &a_cfg] {
                check_config(&self.bins, cfg)?;
            }
        }
        let mut b_cmd = pinned(self.core, &self.bins.proxy);
        b_cmd.arg("--config").arg(&b_cfg);
        let mut app = ChildGuard::spawn(
            &format!("observability {}: sidecar B (app)", v.label()),
            b_cmd,
            &dir.join(format!("sidecar-obs-{}-b.stderr", v.key())),
        )?;
        let mut a_cmd = pinned(self.core, &self.bins.proxy);
        a_cmd.arg("--config").arg(&a_cfg);
        let mut client = ChildGuard::spawn(
            &format!("observability {}: sidecar A (client)", v.label()),
            a_cmd,
            &dir.join(format!("sidecar-obs-{}-a.stderr", v.key())),
        )?;
        self.starts += 2;
        wait_ready(&mut app, loopback(b_ports.admin), "/ready").await?;
        wait_ready(&mut client, loopback(a_ports.admin), "/ready").await?;
        let access_logs = if v.access_log() {
            [Side::Client, Side::App]
                .map(|s| dir.join(v.access_log_file(s)))
                .to_vec()
        } else {
            Vec::new()
        };
        self.pairs[v.index()] = Some(ObsPair {
            variant: v,
            client,
            app,
            outbound_addr: loopback(a_ports.outbound),
            client_admin: loopback(a_ports.admin),
            app_admin: loopback(b_ports.admin),
            access_logs,
        });
        Ok(())
    }

    /// Ends the pair of `v` (by PID: sidecar A, then B), if it runs.
    pub fn stop_pair(&mut self, v: ObsVariant) {
        drop(self.pairs[v.index()].take());
    }

    /// The running pair of `v`.
    pub fn pair(&self, v: ObsVariant) -> anyhow::Result<&ObsPair> {
        self.pairs[v.index()]
            .as_ref()
            .with_context(|| format!("the observability pair {} is not running", v.label()))
    }

    /// PIDs a run of `v` watches: `app`, the pair of `v` (A, B), then every
    /// idle sidecar: the other running pairs' and `idle_extra` (from
    /// [`crate::observability::FIRST_IDLE`] on).
    pub fn watch(&self, v: ObsVariant, app: u32, idle_extra: &[u32]) -> anyhow::Result<Vec<u32>> {
        let p = self.pair(v)?;
        Ok([app, p.client.pid(), p.app.pid()]
            .into_iter()
            .chain(
                self.pairs
                    .iter()
                    .flatten()
                    .filter(|o| o.variant != v)
                    .flat_map(|o| [o.client.pid(), o.app.pid()]),
            )
            .chain(idle_extra.iter().copied())
            .collect())
    }

    /// Checks once, through the pair of `v`, that a request answers 200, the
    /// app sees the client's identity, and the trace context the app
    /// receives is the variant's ([`ObsVariant::expected_trace_flags`]): none
    /// without a collector, a `traceparent` the outbound sidecar started,
    /// unsampled at 0 % and sampled at 100 %.
    pub async fn verify(&self, v: ObsVariant) -> anyhow::Result<()> {
        let p = self.pair(v)?;
        let (status, body) =
            tokio::time::timeout(Duration::from_secs(5), get(p.outbound_addr, "app", "/"))
                .await
                .with_context(|| format!("observability {}: timed out", v.label()))??;
        let text = String::from_utf8_lossy(&body);
        ensure!(
            status == 200,
            "observability {}: status {status}: {text}",
            v.label()
        );
        let caller = caller_of(&body)?;
        ensure!(
            caller.as_deref() == Some(CLIENT_ID),
            "observability {}: the app saw caller {caller:?}: {text}",
            v.label()
        );
        let tp = header_of(&body, "traceparent")?;
        match (v.expected_trace_flags(), tp.as_deref()) {
            (None, None) => Ok(()),
            (Some(flags), Some(tp)) if traceparent_flags(tp) == Some(flags) => Ok(()),
            (want, got) => bail!(
                "observability {}: the app got traceparent {got:?}, expected {}",
                v.label(),
                want.map_or_else(|| "none".to_owned(), |f| format!("one with flags {f}"))
            ),
        }
    }

    /// Both sidecars' counters of `v`'s pair: (A, B).
    pub async fn counters(
        &self,
        v: ObsVariant,
    ) -> anyhow::Result<(SidecarCounters, SidecarCounters)> {
        let p = self.pair(v)?;
        let a = fetch_metrics(p.client_admin)
            .await
            .with_context(|| format!("metrics of {}", p.client.name()))?;
        let b = fetch_metrics(p.app_admin)
            .await
            .with_context(|| format!("metrics of {}", p.app.name()))?;
        Ok((SidecarCounters::parse(&a), SidecarCounters::parse(&b)))
    }

    /// After a run of `v`: waits (at most [`SETTLE_TIMEOUT`], polling every
    /// 100 ms) until what the run produced is accounted for
    /// ([`accounted_for`]), counted from `before` (the pair's counters and
    /// the collector's spans and requests before the run); then reads and
    /// empties the access log files.
    pub async fn settle(
        &self,
        v: ObsVariant,
        before: (SidecarCounters, SidecarCounters),
        collector_before: (u64, u64),
    ) -> anyhow::Result<RunTelemetry> {
        let started = Instant::now();
        let polls = SETTLE_TIMEOUT.as_millis() / 100 + 1;
        let mut t = RunTelemetry::default();
        for i in 0..polls {
            let (a, b) = self.counters(v).await?;
            t.client = a.since(&before.0);
            t.app = b.since(&before.1);
            t.collector_spans = self.collector.spans().saturating_sub(collector_before.0);
            t.collector_requests = self.collector.requests().saturating_sub(collector_before.1);
            t.accounted_for = accounted_for(v, &t.client, &t.app, t.collector_spans);
            if t.accounted_for || i + 1 == polls {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        t.wait_s = started.elapsed().as_secs_f64();
        for path in &self.pair(v)?.access_logs {
            t.access_log_bytes += take_file_len(path)?;
        }
        Ok(t)
    }

    /// Writes the whole `/metrics` of each running sidecar to
    /// `dir/metrics-obs-<key>-<a|b>.txt`.
    pub async fn save_metrics(&self, dir: &Path) {
        for v in ObsVariant::ALL {
            self.save_pair_metrics(v, dir).await;
        }
    }

    /// Writes the whole `/metrics` of both sidecars of `v`'s pair (if it
    /// runs) to `dir/metrics-obs-<key>-<a|b>.txt`.
    pub async fn save_pair_metrics(&self, v: ObsVariant, dir: &Path) {
        let Ok(p) = self.pair(v) else { return };
        for (side, admin) in [(Side::Client, p.client_admin), (Side::App, p.app_admin)] {
            let path = dir.join(format!("metrics-obs-{}-{}.txt", v.key(), side.letter()));
            let text = match fetch_metrics(admin).await {
                Ok(t) => t,
                Err(e) => format!("(metrics not read: {e:#})"),
            };
            if let Err(e) = std::fs::write(&path, text) {
                eprintln!("weft-bench: writing {}: {e}", path.display());
            }
        }
    }

    /// Every running process, for messages.
    pub fn children(&self) -> Vec<&ChildGuard> {
        self.pairs
            .iter()
            .flatten()
            .flat_map(|p| [&p.client, &p.app])
            .collect()
    }

    /// Fails if any of the running processes has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in self.pairs.iter_mut().flatten() {
            p.client.check_alive()?;
            p.app.check_alive()?;
        }
        Ok(())
    }
}

/// The length of the file at `path` (0 if it does not exist), which is then
/// emptied. (The sidecars open their access logs for appending, so they go
/// on writing at the new end.)
fn take_file_len(path: &Path) -> anyhow::Result<u64> {
    let f = match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let len = f.metadata()?.len();
    f.set_len(0)
        .with_context(|| format!("emptying {}", path.display()))?;
    Ok(len)
}

/// A request header the sample app echoed in its JSON body (`headers`).
pub fn header_of(body: &[u8], name: &str) -> anyhow::Result<Option<String>> {
    let v: serde_json::Value =
        serde_json::from_slice(body).context("the app's answer is not JSON")?;
    Ok(v.get("headers")
        .and_then(|h| h.get(name))
        .and_then(|c| c.as_str())
        .map(str::to_owned))
}

/// The flags of a well-formed W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
pub fn traceparent_flags(tp: &str) -> Option<&str> {
    let parts: Vec<&str> = tp.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    match parts.as_slice() {
        ["00", trace, parent, flags] if hex(trace, 32) && hex(parent, 16) && hex(flags, 2) => {
            Some(flags)
        }
        _ => None,
    }
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
    fn policy_configs() {
        let ports = SidecarPorts {
            outbound: 1001,
            inbound: 1002,
            admin: 1003,
        };
        let head = client_sidecar_head(1000, ports);
        for p in Policies::BOTH {
            for b in Balancer::ALL {
                let y = policy_client_sidecar_yaml(1000, ports, &[3001, 3002, 3003], p, b);
                assert!(y.starts_with(&head), "{y}");
                assert!(y.ends_with(&resilience::services_yaml(&[3001, 3002, 3003], p, b)));
            }
        }
        // The plain client config is the same head and one endpoint.
        let plain = client_sidecar_yaml(1000, ports, 3001);
        assert!(plain.starts_with(&head));
        assert!(!plain.contains("outlier_detection"));
        let b = app_sidecar_yaml_with_cert(1000, ports, &instance_cert(2));
        assert!(
            b.contains("tls: {cert: app-2.crt, key: app-2.key, trust_bundle: ca.crt}"),
            "{b}"
        );
        assert!(b.contains(APP_ID));
        assert_eq!(
            app_sidecar_yaml(1000, ports),
            app_sidecar_yaml_with_cert(1000, ports, "app")
        );
    }

    #[test]
    fn policy_metric_lines() {
        let text = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n\
            # HELP weft_retries_total retry attempts sent\n\
            # TYPE weft_retries_total counter\n\
            weft_retries_total{route=\"all\"} 12\n\
            weft_requests_total{code=\"200\"} 5\n\
            weft_outlier_ejections_total{endpoint=\"127.0.0.1:9\"} 1\n\
            weft_endpoint_ejected{endpoint=\"127.0.0.1:9\"} 1\n";
        assert_eq!(
            metric_lines(text, &POLICY_METRICS),
            vec![
                "weft_retries_total{route=\"all\"} 12",
                "weft_outlier_ejections_total{endpoint=\"127.0.0.1:9\"} 1",
                "weft_endpoint_ejected{endpoint=\"127.0.0.1:9\"} 1",
            ]
        );
    }

    #[test]
    fn certs_are_written() {
        let dir = tempfile::tempdir().unwrap();
        write_certs(dir.path()).unwrap();
        for f in [
            "ca.crt",
            "client.crt",
            "client.key",
            "app.crt",
            "app.key",
            "app-1.crt",
            "app-1.key",
            "app-2.crt",
            "app-2.key",
            "app-3.crt",
            "app-3.key",
        ] {
            let s = std::fs::read_to_string(dir.path().join(f)).unwrap();
            assert!(s.contains("-----BEGIN"), "{f}");
        }
        // Each instance has its own key.
        let key = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
        assert_ne!(key("app-1.key"), key("app-2.key"));
        assert_ne!(key("app.key"), key("app-3.key"));
    }

    #[test]
    fn trace_headers() {
        let body = br#"{"service":"app","caller":null,"headers":{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01","host":"app"}}"#;
        let tp = header_of(body, "traceparent").unwrap().unwrap();
        assert_eq!(traceparent_flags(&tp), Some("01"));
        assert_eq!(header_of(body, "tracestate").unwrap(), None);
        assert_eq!(
            header_of(br#"{"service":"app"}"#, "traceparent").unwrap(),
            None
        );
        assert_eq!(
            traceparent_flags("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"),
            Some("00")
        );
        for bad in [
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "",
        ] {
            assert_eq!(traceparent_flags(bad), None, "{bad}");
        }
    }

    #[test]
    fn take_file_len_empties() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        assert_eq!(take_file_len(&path).unwrap(), 0);
        {
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap();
            f.write_all(b"0123456789").unwrap();
            assert_eq!(take_file_len(&path).unwrap(), 10);
            // An appending writer goes on at the new end.
            f.write_all(b"abc").unwrap();
        }
        assert_eq!(std::fs::read(&path).unwrap(), b"abc");
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
