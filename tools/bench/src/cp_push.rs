//! The control-plane push at scale (`weft-bench --cp-push`): one real `weft-control-plane`
//! process, N simulated sidecars in this process, a policy change, and how long until every
//! sidecar has ACKed it.
//!
//! For each sidecar count N (100, 250, 500, 1000 by default) and each run, a **fresh** control
//! plane is started (pinned to the server CPU, with an operator-supplied CA root made here with
//! `weft-certs`, and a policy of [`SERVICES`] services with a weighted route each). Then:
//!
//! 1. **connect storm**: N sidecars connect at once, each a small task on this process's one
//!    runtime thread: real TCP, TLS 1.3 with a workload certificate of its service (one per
//!    service, from the same CA), a tonic `weft.control.v1` stream; `Hello` with a unique
//!    `127.0.0.x:port` endpoint (nothing listens there) and labels `version: v1|v2`; every
//!    `Snapshot` is answered with `Ack` at once and its arrival recorded. Measured: from the
//!    first connect until the control plane reports all N connected and in sync
//!    (`weft_cp_sidecars`), and until every sidecar holds a snapshot;
//! 2. **idle**: the control plane's RSS (`VmRSS`, and the high-water mark `VmHWM` of the storm)
//!    with N streams;
//! 3. **policy changes** (`--cp-changes`, default 3, one after another): the routes file is
//!    rewritten (atomically, by rename) with new weights for the routes to two services, so
//!    every sidecar's snapshot changes (a sidecar's snapshot leaves out routes to its own
//!    service). Measured per sidecar: from the rename until it sent its `Ack` of the new
//!    version; p50 / p99 / max over the N sidecars. The control plane's 250 ms directory poll
//!    is part of this time. Then the RSS again.
//!
//! Every wait has a timeout, only 127.0.0.1 is contacted, and the control plane (the only
//! process started) is ended by its PID on every exit path ([`ChildGuard`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_stream::wrappers::ReceiverStream;
use weft_certs::{CertificateAuthority, Identity};
use weft_wire::v1::control_plane_client::ControlPlaneClient;
use weft_wire::v1::{control_message, sidecar_message, Ack, Hello, SidecarMessage};

use crate::mesh::{fetch_metrics, free_ports, loopback, pinned, wait_ready, ChildGuard};
use crate::stats::median;

/// The mesh's trust domain.
pub const TRUST_DOMAIN: &str = "weft.local";
/// Services in the benchmark's policy; sidecar `i` belongs to service `i % SERVICES`.
pub const SERVICES: usize = 50;
/// Sidecar counts measured by default.
pub const DEFAULT_SIDECARS: [usize; 4] = [100, 250, 500, 1000];
/// The issue's targets: every sidecar ACKed within this long after the change …
pub const TARGET_ACK: Duration = Duration::from_secs(2);
/// … and the control plane's RSS under this many MiB.
pub const TARGET_RSS_MIB: f64 = 150.0;
/// Limit on one sidecar's TCP + TLS + stream set-up (a storm of 1000 on one CPU takes a while).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Limit on the whole connect storm, until all are in sync.
const STORM_TIMEOUT: Duration = Duration::from_secs(90);
/// Limit on every sidecar ACKing a policy change.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the control plane's metrics are polled while waiting.
const POLL: Duration = Duration::from_millis(20);
/// Name of the policy file with the routes (rewritten by each change).
const ROUTES_FILE: &str = "routes.yaml";

/// What to run.
#[derive(Debug, Clone)]
pub struct CpPushConfig {
    /// Sidecar counts, in order.
    pub sidecars: Vec<usize>,
    /// Runs per sidecar count (a fresh control plane each).
    pub runs: usize,
    /// Policy changes per run.
    pub changes: usize,
    /// CPU the control plane is pinned to.
    pub server_core: usize,
    /// CPU this process (the simulated sidecars) is pinned to.
    pub client_core: usize,
    /// The `weft-control-plane` binary.
    pub binary: PathBuf,
}

/// Name of service `i`.
pub fn service_name(i: usize) -> String {
    format!("svc-{i:02}")
}

/// SPIFFE identity of service `i`.
pub fn service_identity(i: usize) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/default/sa/{}", service_name(i))
}

/// `services.yaml`: every service with its identity (endpoints come from the sidecars).
pub fn services_yaml() -> String {
    let mut out = String::from("services:\n");
    for i in 0..SERVICES {
        let _ = write!(
            out,
            "  - name: {}\n    identity: {}\n",
            service_name(i),
            service_identity(i)
        );
    }
    out
}

/// `routes.yaml`: one route per service, split between subsets `version: v1` and `v2`; the
/// routes to services 0 and 1 send `canary` percent to v2, the others 10.
pub fn routes_yaml(canary: u32) -> String {
    let mut out = String::from("routes:\n");
    for i in 0..SERVICES {
        let v2 = if i < 2 { canary } else { 10 };
        let _ = write!(
            out,
            "  - name: {svc}-api\n    service: {svc}\n    match:\n      path: {{prefix: /api}}\n    \
             backends:\n      - {{subset: {{version: v1}}, weight: {v1}}}\n      - {{subset: {{version: v2}}, weight: {v2}}}\n    \
             timeout: 2s\n    retry:\n      on: [connect-failure, refused-stream]\n      attempts: 2\n",
            svc = service_name(i),
            v1 = 100 - v2,
        );
    }
    out
}

/// The canary weight of change `k` (from 1): 20, 30, … 90, 10, 20, …; change 0 is the
/// initial 10.
pub fn canary_of_change(k: usize) -> u32 {
    // k % 9 < 9, so this fits.
    10 + 10 * u32::try_from(k % 9).unwrap_or(0)
}

/// Writes `text` to `dir/name` atomically (write a dot file, then rename), as operators'
/// tooling should; the control plane never reads half a file.
pub fn write_atomically(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(name)).with_context(|| format!("renaming {}", tmp.display()))
}

/// `VmRSS` and `VmHWM` (KiB) from the text of `/proc/PID/status`.
pub fn parse_rss_hwm_kib(status: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].split_whitespace().next()?.parse().ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// `VmRSS` and `VmHWM` of `pid`, KiB.
fn rss_hwm_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    parse_rss_hwm_kib(&status).with_context(|| format!("no VmRSS/VmHWM for pid {pid}"))
}

/// The value of the sample `name` (with its labels, exactly) in Prometheus text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The `q` quantile (nearest rank) of sorted `v`.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// What one simulated sidecar has seen: each snapshot version with when its ACK was sent.
#[derive(Debug, Default)]
struct Seen {
    acks: Vec<(String, Instant)>,
    error: Option<String>,
}

type SeenCell = Arc<Mutex<Seen>>;

fn lock(c: &SeenCell) -> MutexGuard<'_, Seen> {
    c.lock().unwrap_or_else(|e| e.into_inner())
}

/// Client TLS of one service: its workload certificate, the mesh root, TLS 1.3, `h2`.
fn client_tls(ca: &CertificateAuthority, service: usize) -> anyhow::Result<Arc<ClientConfig>> {
    let id = Identity::new(TRUST_DOMAIN, "default", &service_name(service))?;
    let issued = ca.issue(&id, Duration::from_secs(3600))?;
    let chain = weft_certs::parse_cert_chain_pem(&issued.cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("workload key: {e}"))?;
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der().clone())?;
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// One simulated sidecar: connect, `Hello`, then `Ack` every snapshot at once, recording it.
async fn sidecar(
    cp: SocketAddr,
    tls: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    hello: Hello,
    seen: SeenCell,
) -> anyhow::Result<()> {
    let connector = TlsConnector::from(tls);
    let connect = tower::service_fn(move |_: http::Uri| {
        let (connector, server_name) = (connector.clone(), server_name.clone());
        async move {
            let tcp = TcpStream::connect(cp).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    let (tx, rx) = mpsc::channel::<SidecarMessage>(4);
    let mut inbound = tokio::time::timeout(CONNECT_TIMEOUT, async {
        let channel = tonic::transport::Endpoint::from_static("http://control-plane")
            .connect_with_connector(connect)
            .await
            .context("connect")?;
        let mut client = ControlPlaneClient::new(channel);
        tx.send(SidecarMessage {
            kind: Some(sidecar_message::Kind::Hello(hello)),
        })
        .await
        .context("send Hello")?;
        let stream = client
            .stream(ReceiverStream::new(rx))
            .await
            .context("open the stream")?;
        anyhow::Ok(stream.into_inner())
    })
    .await
    .context("connect timed out")??;
    while let Some(msg) = inbound.message().await.context("receive")? {
        let Some(control_message::Kind::Snapshot(s)) = msg.kind else {
            continue;
        };
        tx.send(SidecarMessage {
            kind: Some(sidecar_message::Kind::Ack(Ack {
                version: s.version.clone(),
            })),
        })
        .await
        .context("send Ack")?;
        lock(&seen).acks.push((s.version, Instant::now()));
    }
    bail!("the control plane ended the stream")
}

/// One policy change at one sidecar count.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeSample {
    /// Which change (from 1).
    pub change: usize,
    /// The v2 weight written.
    pub canary: u32,
    /// Time from the rename to each sidecar's ACK of its new version: median, ms.
    pub p50_ms: f64,
    /// 99th percentile (nearest rank), ms.
    pub p99_ms: f64,
    /// The last sidecar, ms.
    pub max_ms: f64,
    /// The fastest sidecar, ms (the directory poll's share shows here).
    pub min_ms: f64,
    /// Until the control plane's metrics showed all N in sync again (polled every 20 ms), ms.
    pub cp_in_sync_ms: Option<f64>,
}

/// One run at one sidecar count, against a fresh control plane.
#[derive(Debug, Clone, Serialize)]
pub struct SizeRun {
    /// Run number (from 1).
    pub run: usize,
    /// Simulated sidecars.
    pub sidecars: usize,
    /// From the first connect until the control plane reported all connected and in sync, s.
    pub connect_s: f64,
    /// From the first connect until every sidecar held a snapshot, s.
    pub first_snapshot_s: f64,
    /// Snapshots the sidecars received during the storm (each ACKed), in all.
    pub storm_snapshots: usize,
    /// Control plane's VmRSS with N idle streams, KiB.
    pub idle_rss_kib: u64,
    /// Its VmHWM then (the storm's peak), KiB.
    pub idle_hwm_kib: u64,
    /// VmRSS after the last change was ACKed, KiB.
    pub after_rss_kib: u64,
    /// VmHWM then, KiB.
    pub after_hwm_kib: u64,
    /// The changes.
    pub changes: Vec<ChangeSample>,
}

/// Medians over the runs (and changes) of one sidecar count.
#[derive(Debug, Clone, Serialize)]
pub struct SizeSummary {
    /// Simulated sidecars.
    pub sidecars: usize,
    /// Runs.
    pub runs: usize,
    /// Median connect-storm time, s.
    pub connect_s: Option<f64>,
    /// Medians over all changes of all runs, ms.
    pub p50_ms: Option<f64>,
    /// "
    pub p99_ms: Option<f64>,
    /// "
    pub max_ms: Option<f64>,
    /// The largest max of any change, ms.
    pub worst_max_ms: Option<f64>,
    /// Median idle VmRSS, MiB.
    pub idle_rss_mib: Option<f64>,
    /// Median VmRSS after the changes, MiB.
    pub after_rss_mib: Option<f64>,
    /// Largest VmHWM seen, MiB.
    pub peak_hwm_mib: Option<f64>,
}

impl SizeSummary {
    fn of(sidecars: usize, runs: &[&SizeRun]) -> Self {
        let changes: Vec<&ChangeSample> = runs.iter().flat_map(|r| &r.changes).collect();
        let mib = |k: u64| k as f64 / 1024.0;
        let med = |f: &dyn Fn(&ChangeSample) -> f64| {
            median(&changes.iter().map(|c| f(c)).collect::<Vec<_>>())
        };
        SizeSummary {
            sidecars,
            runs: runs.len(),
            connect_s: median(&runs.iter().map(|r| r.connect_s).collect::<Vec<_>>()),
            p50_ms: med(&|c| c.p50_ms),
            p99_ms: med(&|c| c.p99_ms),
            max_ms: med(&|c| c.max_ms),
            worst_max_ms: changes.iter().map(|c| c.max_ms).reduce(f64::max),
            idle_rss_mib: median(&runs.iter().map(|r| mib(r.idle_rss_kib)).collect::<Vec<_>>()),
            after_rss_mib: median(
                &runs
                    .iter()
                    .map(|r| mib(r.after_rss_kib))
                    .collect::<Vec<_>>(),
            ),
            peak_hwm_mib: runs.iter().map(|r| mib(r.after_hwm_kib)).reduce(f64::max),
        }
    }

    /// Whether this count met the targets: the worst change ACKed by all within
    /// [`TARGET_ACK`], and the peak RSS under [`TARGET_RSS_MIB`].
    pub fn meets_targets(&self) -> bool {
        self.worst_max_ms
            .is_some_and(|m| m <= TARGET_ACK.as_secs_f64() * 1000.0)
            && self.peak_hwm_mib.is_some_and(|m| m < TARGET_RSS_MIB)
    }
}

/// The whole result.
#[derive(Debug, Clone, Serialize)]
pub struct CpPushReport {
    /// Services in the policy.
    pub services: usize,
    /// Runs per sidecar count.
    pub runs: usize,
    /// Changes per run.
    pub changes: usize,
    /// How the control plane ran.
    pub control_plane: String,
    /// How the sidecars ran.
    pub sidecars: String,
    /// This process's open-files limit: soft before, soft after raising, hard.
    pub nofile_limit: (u64, u64, u64),
    /// Every run.
    pub results: Vec<SizeRun>,
    /// Per sidecar count.
    pub summary: Vec<SizeSummary>,
}

impl CpPushReport {
    /// The Markdown report.
    pub fn markdown(&self) -> String {
        let f = |x: Option<f64>, p: usize| x.map_or("n/a".to_owned(), |v| format!("{v:.p$}"));
        let mut out = format!(
            "## Control-plane push at scale\n\n\
             {} services, a fresh control plane per sidecar count and run; {} run(s) x {} policy change(s); medians.\n\n\
             | sidecars | connect storm (s) | ACK after change p50 (ms) | p99 (ms) | max (ms) | worst max (ms) | CP RSS idle (MiB) | CP RSS after change (MiB) | CP peak RSS, VmHWM (MiB) |\n\
             | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
            self.services, self.runs, self.changes
        );
        for s in &self.summary {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                s.sidecars,
                f(s.connect_s, 2),
                f(s.p50_ms, 0),
                f(s.p99_ms, 0),
                f(s.max_ms, 0),
                f(s.worst_max_ms, 0),
                f(s.idle_rss_mib, 1),
                f(s.after_rss_mib, 1),
                f(s.peak_hwm_mib, 1),
            );
        }
        let _ = write!(
            out,
            "\nTime to ACK: from the rename of the policy file until each sidecar sent its ACK of the new \
             version (the control plane polls the directory every 250 ms). Targets: every sidecar within {} s, \
             control plane under {TARGET_RSS_MIB} MiB.\n\n",
            TARGET_ACK.as_secs()
        );
        for s in &self.summary {
            let _ = writeln!(
                out,
                "- {} sidecars: {}",
                s.sidecars,
                if s.meets_targets() {
                    "targets met"
                } else {
                    "TARGETS MISSED"
                }
            );
        }
        let _ = write!(
            out,
            "\nControl plane: {}.\nSidecars: {}.\n",
            self.control_plane, self.sidecars
        );
        out
    }
}

/// The running control plane of one run.
struct ControlPlane {
    child: ChildGuard,
    listen: SocketAddr,
    admin: SocketAddr,
    policy_dir: PathBuf,
}

impl ControlPlane {
    async fn start(cfg: &CpPushConfig, dir: &Path, name: &str) -> anyhow::Result<Self> {
        let policy_dir = dir.join(format!("{name}-policy"));
        std::fs::create_dir_all(&policy_dir)?;
        write_atomically(&policy_dir, "services.yaml", &services_yaml())?;
        write_atomically(&policy_dir, ROUTES_FILE, &routes_yaml(canary_of_change(0)))?;
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
    async fn sidecars(&self) -> anyhow::Result<(usize, usize)> {
        let text = fetch_metrics(self.admin).await?;
        let get = |state: &str| {
            metric_value(&text, &format!("weft_cp_sidecars{{state=\"{state}\"}}"))
                .map(|v| v as usize)
                .with_context(|| format!("no weft_cp_sidecars{{state=\"{state}\"}} in /metrics"))
        };
        Ok((get("connected")?, get("in_sync")?))
    }

    /// Waits (at most `limit`) until all `n` sidecars are connected and in sync.
    async fn wait_in_sync(&mut self, n: usize, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        let mut last = (0, 0);
        while Instant::now() < deadline {
            self.child.check_alive()?;
            last = self.sidecars().await?;
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

/// The simulated sidecars of one run; dropping them ends their tasks (and so their streams).
struct Fleet {
    seen: Vec<SeenCell>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Fleet {
    fn spawn(
        n: usize,
        cp: SocketAddr,
        tls: &[Arc<ClientConfig>],
        server_name: &ServerName<'static>,
    ) -> Self {
        let mut seen = Vec::with_capacity(n);
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            let cell = SeenCell::default();
            let service = i % SERVICES;
            // Unique per sidecar: 127.0.0.1–200, port 20000 + i (nothing listens there).
            let hello = Hello {
                service: service_name(service),
                endpoint_address: format!("127.0.0.{}:{}", 1 + i % 200, 20000 + i),
                labels: [(
                    "version".to_owned(),
                    if (i / SERVICES) % 2 == 1 { "v2" } else { "v1" }.to_owned(),
                )]
                .into(),
                cert_not_after_unix: 0,
                admin_address: String::new(),
            };
            let task = sidecar(
                cp,
                tls[service].clone(),
                server_name.clone(),
                hello,
                cell.clone(),
            );
            let cell2 = cell.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = task.await {
                    lock(&cell2).error = Some(format!("{e:#}"));
                }
            }));
            seen.push(cell);
        }
        Fleet { seen, tasks }
    }

    /// Fails with the first sidecar's error, if any has failed.
    fn check(&self) -> anyhow::Result<()> {
        for (i, c) in self.seen.iter().enumerate() {
            if let Some(e) = &lock(c).error {
                bail!("simulated sidecar {i}: {e}");
            }
        }
        Ok(())
    }

    /// Snapshots received so far, in all.
    fn received(&self) -> usize {
        self.seen.iter().map(|c| lock(c).acks.len()).sum()
    }

    /// When the last sidecar got its first snapshot, if all have one.
    fn all_have_one(&self) -> Option<Instant> {
        self.seen
            .iter()
            .map(|c| lock(c).acks.first().map(|a| a.1))
            .try_fold(None::<Instant>, |acc, t| Some(acc.max(Some(t?))))
            .flatten()
    }

    /// Each sidecar's latest version.
    fn versions(&self) -> Vec<Option<String>> {
        self.seen
            .iter()
            .map(|c| lock(c).acks.last().map(|a| a.0.clone()))
            .collect()
    }

    /// For each sidecar, when it ACKed a version other than `before[i]` after `since`.
    fn acked_new(&self, before: &[Option<String>], since: Instant) -> Vec<Option<Instant>> {
        self.seen
            .iter()
            .zip(before)
            .map(|(c, old)| {
                lock(c)
                    .acks
                    .iter()
                    .find(|(v, t)| *t >= since && Some(v) != old.as_ref())
                    .map(|a| a.1)
            })
            .collect()
    }
}

/// One run at `n` sidecars against a fresh control plane.
async fn run_size(
    cfg: &CpPushConfig,
    dir: &Path,
    run: usize,
    n: usize,
    tls: &[Arc<ClientConfig>],
    server_name: &ServerName<'static>,
) -> anyhow::Result<SizeRun> {
    let mut cp = ControlPlane::start(cfg, dir, &format!("cp-{n}-{run}")).await?;
    let pid = cp.child.pid();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Connect storm.
    let started = Instant::now();
    let fleet = Fleet::spawn(n, cp.listen, tls, server_name);
    let deadline = started + STORM_TIMEOUT;
    let connect_s = loop {
        fleet.check()?;
        cp.child.check_alive()?;
        if cp.sidecars().await? == (n, n) && fleet.all_have_one().is_some() {
            break started.elapsed().as_secs_f64();
        }
        if Instant::now() >= deadline {
            let (c, s) = cp.sidecars().await?;
            bail!("connect storm of {n}: after {STORM_TIMEOUT:?} {c} connected, {s} in sync");
        }
        tokio::time::sleep(POLL).await;
    };
    let first_snapshot_s = fleet
        .all_have_one()
        .map_or(f64::NAN, |t| (t - started).as_secs_f64());
    // Quiet: still all in sync, nothing new received for a while.
    let mut received = fleet.received();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = fleet.received();
        if now == received {
            break;
        }
        received = now;
    }
    cp.wait_in_sync(n, Duration::from_secs(10)).await?;
    fleet.check()?;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (idle_rss_kib, idle_hwm_kib) = rss_hwm_kib(pid)?;

    let mut changes = Vec::new();
    for k in 1..=cfg.changes {
        let before = fleet.versions();
        let canary = canary_of_change(k);
        write_atomically(&cp.policy_dir, ROUTES_FILE, &routes_yaml(canary))?;
        let t0 = Instant::now();
        let limit = t0 + CHANGE_TIMEOUT;
        let mut cp_in_sync_ms = None;
        let acked = loop {
            fleet.check()?;
            cp.child.check_alive()?;
            let acked = fleet.acked_new(&before, t0);
            if acked.iter().all(Option::is_some) {
                break acked;
            }
            if Instant::now() >= limit {
                bail!(
                    "change {k} at {n} sidecars: after {CHANGE_TIMEOUT:?} only {} ACKed it",
                    acked.iter().flatten().count()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        // The control plane's view (it must agree: all in sync again).
        let (c, s) = cp.sidecars().await?;
        if (c, s) == (n, n) {
            cp_in_sync_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
        } else {
            cp.wait_in_sync(n, Duration::from_secs(10)).await?;
        }
        let mut ms: Vec<f64> = acked
            .iter()
            .flatten()
            .map(|t| (*t - t0).as_secs_f64() * 1000.0)
            .collect();
        ms.sort_by(f64::total_cmp);
        let sample = ChangeSample {
            change: k,
            canary,
            p50_ms: quantile(&ms, 0.5).unwrap_or(f64::NAN),
            p99_ms: quantile(&ms, 0.99).unwrap_or(f64::NAN),
            max_ms: ms.last().copied().unwrap_or(f64::NAN),
            min_ms: ms.first().copied().unwrap_or(f64::NAN),
            cp_in_sync_ms,
        };
        eprintln!(
            "weft-bench: cp-push run {run} n={n} change {k}: ACK p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (min {:.0} ms)",
            sample.p50_ms, sample.p99_ms, sample.max_ms, sample.min_ms
        );
        changes.push(sample);
        // Let the next change start from a quiet control plane.
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let (after_rss_kib, after_hwm_kib) = rss_hwm_kib(pid)?;
    let storm_snapshots = received;
    drop(fleet);
    drop(cp);
    Ok(SizeRun {
        run,
        sidecars: n,
        connect_s,
        first_snapshot_s,
        storm_snapshots,
        idle_rss_kib,
        idle_hwm_kib,
        after_rss_kib,
        after_hwm_kib,
        changes,
    })
}

/// Runs the whole scenario in `dir` (CA, policies, the control plane's state and stderr).
pub async fn run(
    cfg: &CpPushConfig,
    dir: &Path,
    nofile: (u64, u64, u64),
) -> anyhow::Result<CpPushReport> {
    ensure!(
        cfg.binary.is_file(),
        "{} not found; build it first: cargo build --release -p weft-control-plane -p weft-benches",
        cfg.binary.display()
    );
    let max = cfg.sidecars.iter().copied().max().unwrap_or(0);
    ensure!(
        u64::try_from(max).unwrap_or(u64::MAX).saturating_add(64) <= nofile.1,
        "{max} sidecars need more open files than RLIMIT_NOFILE allows ({})",
        nofile.1
    );
    let ca = CertificateAuthority::generate(TRUST_DOMAIN, Duration::from_secs(24 * 3600))?;
    std::fs::write(dir.join("ca.crt"), ca.cert_pem())?;
    std::fs::write(dir.join("ca.key"), ca.key_pem())?;
    let tls = (0..SERVICES)
        .map(|i| client_tls(&ca, i))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cp_id = Identity::new(TRUST_DOMAIN, "weft-system", "control-plane")?;
    let server_name = ServerName::try_from(cp_id.dns_name())?;

    let mut results = Vec::new();
    for run in 1..=cfg.runs {
        for &n in &cfg.sidecars {
            eprintln!(
                "weft-bench: cp-push run {run}/{} with {n} sidecars",
                cfg.runs
            );
            let r = run_size(cfg, dir, run, n, &tls, &server_name).await?;
            eprintln!(
                "weft-bench: cp-push run {run} n={n}: connect storm {:.2} s (all hold a snapshot at {:.2} s, {} snapshots), \
                 CP RSS idle {:.1} MiB (HWM {:.1}), after {:.1} MiB (HWM {:.1})",
                r.connect_s,
                r.first_snapshot_s,
                r.storm_snapshots,
                r.idle_rss_kib as f64 / 1024.0,
                r.idle_hwm_kib as f64 / 1024.0,
                r.after_rss_kib as f64 / 1024.0,
                r.after_hwm_kib as f64 / 1024.0,
            );
            results.push(r);
            // Let the last run's sockets close before the next storm.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let mut by_size: BTreeMap<usize, Vec<&SizeRun>> = BTreeMap::new();
    for r in &results {
        by_size.entry(r.sidecars).or_default().push(r);
    }
    let summary = cfg
        .sidecars
        .iter()
        .filter_map(|n| by_size.get(n).map(|runs| SizeSummary::of(*n, runs)))
        .collect();
    Ok(CpPushReport {
        services: SERVICES,
        runs: cfg.runs,
        changes: cfg.changes,
        control_plane: format!(
            "the real weft-control-plane binary ({}), pinned to CPU {} with taskset, RUST_LOG=info, \
             operator-supplied CA root (--ca-cert/--ca-key), policy directory polled every 250 ms; a fresh one per sidecar count and run",
            cfg.binary.display(),
            cfg.server_core
        ),
        sidecars: format!(
            "simulated in this process (pinned to CPU {}), one task each on one runtime thread: TCP + TLS 1.3 \
             (a workload certificate per service) + a tonic weft.control.v1 stream; Hello with a unique \
             127.0.0.x:port endpoint, every Snapshot ACKed at once",
            cfg.client_core
        ),
        nofile_limit: nofile,
        results,
        summary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_has_a_route_per_service_and_changes_two() {
        let s = services_yaml();
        assert_eq!(s.matches("  - name: svc-").count(), SERVICES);
        let (a, b) = (routes_yaml(10), routes_yaml(20));
        assert_eq!(a.matches("backends:").count(), SERVICES);
        let differing = a.lines().zip(b.lines()).filter(|(x, y)| x != y).count();
        assert_eq!(differing, 4, "v1 and v2 weights of two routes");
        assert_eq!(canary_of_change(0), 10);
        assert_eq!(canary_of_change(1), 20);
        assert_eq!(canary_of_change(9), 10);
    }

    #[test]
    fn parses_status_metrics_and_quantiles() {
        let status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(parse_rss_hwm_kib(status), Some((1024, 2048)));
        let text =
            "weft_cp_sidecars{state=\"connected\"} 12\nweft_cp_sidecars{state=\"in_sync\"} 7\n";
        assert_eq!(
            metric_value(text, "weft_cp_sidecars{state=\"in_sync\"}"),
            Some(7.0)
        );
        assert_eq!(metric_value(text, "weft_cp_sidecars{state=\"x\"}"), None);
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(500.0));
        assert_eq!(quantile(&v, 0.99), Some(990.0));
        assert_eq!(quantile(&v, 1.0), Some(1000.0));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
