//! The captured path (`weft-bench --captured`): the load generator and the app each in a
//! network namespace of its own (a pod, with its own address on a bridge), the load sent to
//! the app pod's address as an unmodified client sends it. Run by run, interleaved, the same
//! pods are measured twice:
//!
//! - **direct**: no capture rules, no sidecar in the way (the sidecars idle);
//! - **mesh**: `weft-proxy init` in both pods, so the load pod's connections are redirected
//!   to its sidecar, carried over mTLS to the app pod, redirected there into the app's
//!   sidecar, and only then reach the app: the whole path a meshed pod's traffic takes.
//!
//! Saturation (closed loop) and a fixed rate (open loop) in each, with the CPU of the app and
//! both sidecars from /proc, reported as medians and as the median of each run's paired
//! mesh/direct ratio. The loopback pair (the default `weft-bench` scenarios) is the same mesh
//! path without capture; this one adds the nftables redirects, the original-destination
//! lookup and protocol detection, and the namespaces' veths.
//!
//! The sidecars run as UID [`PROXY_UID`] (capture exempts it), the app as 65534; the load
//! generator is a thread of this process (root) that entered the load pod's namespace, so its
//! connections are captured like any app's.

pub mod netns;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use serde::Serialize;

use crate::http1::get_request;
use crate::load::{fixed_rate, saturate, RateConfig, SaturationConfig, Target};
use crate::mesh::{
    app_service, caller_of, check_config, client_sidecar_base, get, sidecar, write_certs,
    write_config, Binaries, ChildGuard, SidecarPorts, APP_ID, CLIENT_ID,
};
use crate::report::{fmt_num, fmt_opt, fmt_times};
use crate::stats::{median, median_opt, ratio};
use netns::{in_pod, Pod, Pods};

/// The sidecars' UID: capture never redirects its connections.
pub const PROXY_UID: u32 = 2102;
/// The app's UID (`nobody`).
const APP_UID: &str = "65534";
/// The app's port in its pod.
const APP_PORT: u16 = 8080;
/// The sidecars' ports, as `weft-proxy init` expects them by default.
const PORTS: SidecarPorts = SidecarPorts {
    outbound: 15001,
    inbound: 15006,
    admin: 15000,
};
/// How long a started process may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// What to measure.
#[derive(Debug, Clone)]
pub struct CapturedConfig {
    /// Interleaved runs of each variant.
    pub runs: usize,
    /// Warm-up before each measured window.
    pub warmup: Duration,
    /// Each measured window.
    pub duration: Duration,
    /// Connections of the saturation runs.
    pub connections: usize,
    /// Requests/s of the fixed-rate runs.
    pub rate: f64,
    /// Connections of the fixed-rate runs.
    pub latency_connections: usize,
    /// CPU of the app and the sidecars (the load generator stays on the caller's).
    pub server_core: usize,
}

/// One variant's numbers in one run.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Saturation throughput, requests/s.
    pub rps: f64,
    /// App + sidecars CPU seconds per 100k requests at saturation.
    pub cpu_s_per_100k: Option<f64>,
    /// Fixed-rate median latency, microseconds.
    pub p50_us: Option<f64>,
    /// Fixed-rate 99th percentile, microseconds.
    pub p99_us: Option<f64>,
    /// App + sidecars CPU seconds per 100k requests at the fixed rate.
    pub rate_cpu_s_per_100k: Option<f64>,
    /// App + sidecars system calls per request at the fixed rate (perf).
    pub rate_syscalls_per_req: Option<f64>,
    /// The kernel's share of the app's and sidecars' CPU at the fixed rate, percent.
    pub rate_kernel_pct: Option<f64>,
    /// Failed requests in both runs (warm-up included).
    pub errors: u64,
    /// A few of them.
    pub error_samples: Vec<String>,
}

/// Medians of a variant.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Saturation requests/s.
    pub rps: Option<f64>,
    /// CPU seconds per 100k requests at saturation.
    pub cpu_s_per_100k: Option<f64>,
    /// Fixed-rate p50, µs.
    pub p50_us: Option<f64>,
    /// Fixed-rate p99, µs.
    pub p99_us: Option<f64>,
    /// CPU seconds per 100k requests at the fixed rate.
    pub rate_cpu_s_per_100k: Option<f64>,
    /// System calls per request at the fixed rate.
    pub rate_syscalls_per_req: Option<f64>,
    /// The kernel's share of CPU at the fixed rate, percent (no ratio).
    pub rate_kernel_pct: Option<f64>,
}

impl Summary {
    fn of(samples: &[Sample]) -> Summary {
        let pick = |f: fn(&Sample) -> Option<f64>| median_opt(samples.iter().map(f));
        Summary {
            rps: median(&samples.iter().map(|s| s.rps).collect::<Vec<_>>()),
            cpu_s_per_100k: pick(|s| s.cpu_s_per_100k),
            p50_us: pick(|s| s.p50_us),
            p99_us: pick(|s| s.p99_us),
            rate_cpu_s_per_100k: pick(|s| s.rate_cpu_s_per_100k),
            rate_syscalls_per_req: pick(|s| s.rate_syscalls_per_req),
            rate_kernel_pct: pick(|s| s.rate_kernel_pct),
        }
    }
}

/// The whole result.
#[derive(Debug, Clone, Serialize)]
pub struct CapturedReport {
    /// `weft-proxy --version`.
    pub proxy_version: String,
    /// Runs, window, connections, rate.
    pub settings: String,
    /// Each run's direct numbers.
    pub direct: Vec<Sample>,
    /// Each run's mesh numbers.
    pub mesh: Vec<Sample>,
    /// Medians of `direct`.
    pub direct_median: Summary,
    /// Medians of `mesh`.
    pub mesh_median: Summary,
    /// Median over runs of mesh/direct, paired by run: rps, CPU/request, p50, p99.
    pub paired_ratio: Summary,
    /// The app saw the load pod's sidecar's identity through the mesh (checked each run).
    pub caller_verified: bool,
}

impl CapturedReport {
    /// The markdown table.
    pub fn markdown(&self) -> String {
        let row = |name: &str, s: &Summary, ratio: bool| {
            let f = |x: Option<f64>, p: usize| {
                if ratio {
                    fmt_times(x)
                } else {
                    fmt_opt(x, p)
                }
            };
            format!(
                "| {name} | {} | {} | {} / {} | {} | {} | {} |\n",
                f(s.rps, 0),
                f(s.cpu_s_per_100k, 2),
                f(s.p50_us, 0),
                f(s.p99_us, 0),
                f(s.rate_cpu_s_per_100k, 2),
                f(s.rate_syscalls_per_req, 1),
                fmt_opt(s.rate_kernel_pct, 0),
            )
        };
        let errors: u64 = self.direct.iter().chain(&self.mesh).map(|s| s.errors).sum();
        format!(
            "## Captured path (pods in network namespaces, capture on both sides)\n\n\
             {}; {}\n\n\
             | variant | saturation req/s | CPU-s/100k at saturation | p50 / p99 µs at the rate | CPU-s/100k at the rate | syscalls / req at the rate | kernel % of CPU at the rate |\n\
             |---|---:|---:|---|---:|---:|---:|\n{}{}{}\n\
             CPU: the app and both sidecars (the load generator excluded). Syscalls: theirs, counted by \
             `perf stat -e raw_syscalls:sys_enter`; kernel %: their stime over utime + stime. Errors: {}. \
             The app saw the caller's mesh identity: {}.\n",
            self.settings,
            self.proxy_version,
            row("direct (same pods, no capture)", &self.direct_median, false),
            row("mesh (captured both sides)", &self.mesh_median, false),
            row("mesh / direct (paired, median)", &self.paired_ratio, true),
            fmt_num(errors as f64, 0),
            self.caller_verified,
        )
    }
}

/// Runs the scenario in `dir` (certificates, configs, the processes' stderr).
pub async fn run(
    cfg: &CapturedConfig,
    bins: &Binaries,
    dir: &Path,
) -> anyhow::Result<CapturedReport> {
    ensure!(cfg.runs > 0, "at least one run");
    let mut pods = Pods::create()?;
    let load = pods.pod("load", 2)?;
    let app_pod = pods.pod("app", 3)?;
    let mut procs = Processes::start(cfg, bins, dir, &load, &app_pod).await?;
    let target = SocketAddr::from((app_pod.ip, APP_PORT));
    let host = target.to_string();

    let (mut direct, mut mesh) = (Vec::new(), Vec::new());
    for i in 0..cfg.runs {
        eprintln!("weft-bench: captured run {}/{}: direct", i + 1, cfg.runs);
        check(&load, target, &host, None).await?;
        direct.push(measure(cfg, &load, target, &host, vec![procs.app.pid()]).await?);

        eprintln!("weft-bench: captured run {}/{}: mesh", i + 1, cfg.runs);
        capture(bins, &[&load, &app_pod], true)?;
        let result = async {
            procs.check_alive()?;
            check(&load, target, &host, Some(CLIENT_ID)).await?;
            measure(cfg, &load, target, &host, procs.pids()).await
        }
        .await;
        capture(bins, &[&load, &app_pod], false)?;
        mesh.push(result?);
    }
    drop(procs);
    drop(pods);

    let paired = |f: fn(&Sample) -> Option<f64>| {
        median_opt(direct.iter().zip(&mesh).map(|(d, m)| ratio(f(m), f(d))))
    };
    Ok(CapturedReport {
        proxy_version: bins.proxy_version(),
        settings: format!(
            "{} runs interleaved, {:?} windows after {:?} warm-up, saturation over {} \
             connections, fixed rate {} req/s over {} connections",
            cfg.runs, cfg.duration, cfg.warmup, cfg.connections, cfg.rate, cfg.latency_connections
        ),
        direct_median: Summary::of(&direct),
        mesh_median: Summary::of(&mesh),
        paired_ratio: Summary {
            rps: paired(|s| Some(s.rps)),
            cpu_s_per_100k: paired(|s| s.cpu_s_per_100k),
            p50_us: paired(|s| s.p50_us),
            p99_us: paired(|s| s.p99_us),
            rate_cpu_s_per_100k: paired(|s| s.rate_cpu_s_per_100k),
            rate_syscalls_per_req: paired(|s| s.rate_syscalls_per_req),
            rate_kernel_pct: None,
        },
        direct,
        mesh,
        caller_verified: true,
    })
}

/// The app and the two sidecars, ended (by PID) on drop.
struct Processes {
    app: ChildGuard,
    load_sidecar: ChildGuard,
    app_sidecar: ChildGuard,
}

impl Processes {
    async fn start(
        cfg: &CapturedConfig,
        bins: &Binaries,
        dir: &Path,
        load: &Pod,
        app_pod: &Pod,
    ) -> anyhow::Result<Processes> {
        write_certs(dir).context("generating certificates")?;
        // The sidecars read their certificates and keys, and write their ready files, as
        // PROXY_UID: the directory is theirs (root still reads it).
        let run_dir = dir.join("run");
        std::fs::create_dir_all(&run_dir)?;
        own_by_proxy(dir)?;

        let mut app_cfg = sidecar("app", APP_ID, APP_PORT, "http", PORTS, "app");
        app_cfg.listen.inbound = Some(format!("{}:{}", app_pod.ip, PORTS.inbound));
        let mut load_cfg = client_sidecar_base(APP_PORT + 1, PORTS);
        load_cfg.listen.inbound = Some(format!("{}:{}", load.ip, PORTS.inbound));
        let mut service = app_service(&[PORTS.inbound]);
        service.endpoints[0].address = format!("{}:{}", app_pod.ip, PORTS.inbound);
        load_cfg.services.push(service);
        let (app_path, load_path) = (dir.join("app-sidecar.yaml"), dir.join("load-sidecar.yaml"));
        write_config(&app_path, &app_cfg)?;
        write_config(&load_path, &load_cfg)?;
        for p in [&app_path, &load_path] {
            check_config(bins, p)?;
            own_by_proxy(p)?;
        }

        let core = cfg.server_core.to_string();
        let mut app_cmd = app_pod.command("taskset");
        app_cmd.args([
            "-c", &core, "setpriv", "--reuid", APP_UID, "--regid", APP_UID,
        ]);
        app_cmd.arg("--clear-groups").arg(&bins.sample);
        let listen = format!("0.0.0.0:{APP_PORT}");
        app_cmd.args([
            "http",
            "--listen",
            &listen,
            "--name",
            "app",
            "--threads",
            "1",
        ]);
        app_cmd.env("RUST_LOG", "warn");
        let app = ChildGuard::spawn("app (weft-sample)", app_cmd, &dir.join("app.stderr"))?;

        let sidecar = |pod: &Pod, name: &str, config: &Path| {
            let uid = PROXY_UID.to_string();
            let mut cmd = pod.command("taskset");
            cmd.args(["-c", &core, "setpriv", "--reuid", &uid, "--regid", &uid]);
            cmd.arg("--clear-groups").arg(&bins.proxy);
            cmd.arg("--config").arg(config);
            cmd.arg("--ready-file")
                .arg(run_dir.join(format!("{name}.ready")));
            cmd.env("RUST_LOG", "warn");
            ChildGuard::spawn(name, cmd, &dir.join(format!("{name}.stderr")))
        };
        let mut procs = Processes {
            app,
            app_sidecar: sidecar(app_pod, "app-sidecar", &app_path)?,
            load_sidecar: sidecar(load, "load-sidecar", &load_path)?,
        };
        for name in ["app-sidecar", "load-sidecar"] {
            wait_file(&mut procs, &run_dir.join(format!("{name}.ready"))).await?;
        }
        Ok(procs)
    }

    fn pids(&self) -> Vec<u32> {
        vec![
            self.app.pid(),
            self.load_sidecar.pid(),
            self.app_sidecar.pid(),
        ]
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        self.app.check_alive()?;
        self.load_sidecar.check_alive()?;
        self.app_sidecar.check_alive()
    }
}

/// Gives `path` (and, for a directory, what it holds) to [`PROXY_UID`].
fn own_by_proxy(path: &Path) -> anyhow::Result<()> {
    let id = Some(nix::unistd::Uid::from_raw(PROXY_UID));
    let gid = Some(nix::unistd::Gid::from_raw(PROXY_UID));
    let mut paths: Vec<PathBuf> = vec![path.to_owned()];
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            paths.push(entry?.path());
        }
    }
    for p in paths {
        nix::unistd::chown(&p, id, gid).with_context(|| format!("chown {}", p.display()))?;
    }
    Ok(())
}

/// Waits (bounded) until `file` exists, failing early if a process exited.
async fn wait_file(procs: &mut Processes, file: &Path) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    for _ in 0..(READY_TIMEOUT.as_millis() / 50 + 1) {
        procs.check_alive()?;
        if file.exists() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{} did not appear within {READY_TIMEOUT:?}", file.display())
}

/// Loads (`on`) or removes the capture rules in each of `pods`.
fn capture(bins: &Binaries, pods: &[&Pod], on: bool) -> anyhow::Result<()> {
    for pod in pods {
        let proxy = bins.proxy.display().to_string();
        let uid = PROXY_UID.to_string();
        let args: Vec<&str> = if on {
            vec!["init", "--proxy-uid", &uid]
        } else {
            vec!["init", "--remove"]
        };
        let out = pod
            .command(&proxy)
            .args(&args)
            .output()
            .context("running weft-proxy init")?;
        ensure!(
            out.status.success(),
            "weft-proxy {} in {}: {}",
            args.join(" "),
            pod.ns,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// From the load pod, `GET /` at `target` answers 200 (waiting, bounded, for the path to be
/// up) and the app saw `caller` (`None`: no mesh identity, the direct path).
async fn check(
    load: &Pod,
    target: SocketAddr,
    host: &str,
    caller: Option<&str>,
) -> anyhow::Result<()> {
    let (host, want) = (host.to_owned(), caller.map(str::to_owned));
    in_pod(load, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let mut last = String::new();
            for _ in 0..100 {
                match tokio::time::timeout(Duration::from_secs(2), get(target, &host, "/")).await {
                    Ok(Ok((200, body))) => {
                        let saw = caller_of(&body)?;
                        ensure!(saw == want, "the app saw caller {saw:?}, expected {want:?}");
                        return Ok(());
                    }
                    Ok(Ok((status, body))) => {
                        last = format!("{status}: {}", String::from_utf8_lossy(&body));
                    }
                    Ok(Err(e)) => last = format!("{e:#}"),
                    Err(_) => last = "timed out".into(),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            bail!("GET http://{target}/ from the load pod never answered 200 (last: {last})")
        })
    })
    .await
}

/// One saturation run and one fixed-rate run from the load pod, watching `pids`.
async fn measure(
    cfg: &CapturedConfig,
    load: &Pod,
    target: SocketAddr,
    host: &str,
    pids: Vec<u32>,
) -> anyhow::Result<Sample> {
    let t = Target {
        addr: target,
        request: get_request(host, "/").into(),
    };
    let (sat_cfg, rate_cfg) = (
        SaturationConfig {
            connections: cfg.connections,
            warmup: cfg.warmup,
            duration: cfg.duration,
            rss_interval: Duration::from_millis(200),
        },
        RateConfig {
            connections: cfg.latency_connections,
            rate: cfg.rate,
            warmup: cfg.warmup,
            duration: cfg.duration,
        },
    );
    in_pod(load, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let sat = saturate(&t, sat_cfg, &pids).await?;
            // The window fixed_rate opens: 200 ms to connect, the warm-up, the duration.
            let from = tokio::time::Instant::now() + Duration::from_millis(200) + rate_cfg.warmup;
            let kernel = crate::kernel::count(&pids, from, from + rate_cfg.duration);
            let rate = fixed_rate(&t, rate_cfg, &pids).await?;
            let kernel = kernel.await?;
            let (rate_syscalls_per_req, rate_kernel_pct) = match &kernel {
                Some(k) => k.per_request(rate.ok, 0),
                None => (None, None),
            };
            let per_100k = |cpu: &[f64], n: u64| {
                (n > 0).then(|| cpu.iter().sum::<f64>() / n as f64 * 100_000.0)
            };
            let mut error_samples = sat.error_samples.clone();
            error_samples.extend(rate.error_samples.iter().cloned());
            error_samples.truncate(5);
            Ok(Sample {
                rps: sat.rps,
                cpu_s_per_100k: per_100k(&sat.cpu_seconds, sat.requests),
                p50_us: rate.latency.as_ref().map(|l| l.p50_us),
                p99_us: rate.latency.as_ref().map(|l| l.p99_us),
                rate_cpu_s_per_100k: per_100k(&rate.cpu_seconds, rate.ok),
                rate_syscalls_per_req,
                rate_kernel_pct,
                errors: sat.errors + rate.errors,
                error_samples,
            })
        })
    })
    .await
}
