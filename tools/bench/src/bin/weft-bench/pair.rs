//! The main scenario's driver: the app and the sidecar pair, direct and weft runs
//! interleaved, then the observability and resilience scenarios on the same app.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use weft_benches::http1::get_request;
use weft_benches::load::{self, RateConfig, SaturationConfig, Target};
use weft_benches::mesh::{show_stderr, Binaries, Mesh};
use weft_benches::observability::{ObservabilityMesh, ObservabilityReport};
use weft_benches::pair::{BenchConfig, Report, RunRecord, Scenario};
use weft_benches::procfs;
use weft_benches::resilience::ResilienceMesh;

use crate::args::Args;

/// The main scenario, then the observability and resilience scenarios on the same app;
/// every process has ended on return.
pub async fn run(args: &Args, bins: &Binaries, dir: &Path, cpus: usize) -> anyhow::Result<Report> {
    let started_unix_s = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (mut mesh, idle_rss_kib, background_busy_pct) = start(args, bins, dir).await?;
    let request: Arc<[u8]> = get_request("app", "/").into();
    let (sat_cfg, rate_cfg) = loads(args);
    let config = BenchConfig {
        runs: usize::from(args.runs),
        connections: usize::from(args.connections),
        duration_s: args.duration.as_secs_f64(),
        warmup_s: args.warmup.as_secs_f64(),
        rate: args.rate,
        latency_connections: usize::from(args.latency_connections),
        loadgen_core: args.loadgen_core,
        server_core: args.server_core,
        cpus,
        clock_ticks_per_second: procfs::clock_ticks_per_second(),
        started_unix_s,
        proxy_version: bins.proxy_version(),
    };
    let runs = pair_runs(args, &mut mesh, &config, &request, sat_cfg, rate_cfg).await?;
    let mut report = Report::new(config, idle_rss_kib, background_busy_pct, runs);

    // The observability scenario runs after the pair's runs (its idle pairs
    // would share CPU 1 with them) and its processes end before the
    // resilience scenarios start.
    if !args.no_observability {
        let obs = observability(args, dir, bins, &mut mesh, &request, sat_cfg).await?;
        report = report.with_observability(obs);
    }

    // The resilience scenarios run after the pair's, so that their processes
    // (idle but awake) do not share CPU 1 with the direct / weft runs.
    let mut res_mesh = None;
    if !args.no_resilience {
        let fail_cfg = RateConfig {
            duration: args.fail_duration,
            ..rate_cfg
        };
        let res = crate::resilience::run_resilience(
            args,
            bins,
            dir,
            &mut mesh,
            &mut res_mesh,
            &request,
            sat_cfg,
            fail_cfg,
        )
        .await?;
        report = report.with_resilience(res);
    }
    if !report.flags.is_empty() {
        let res_children = res_mesh.as_ref().map(ResilienceMesh::children);
        show_stderr(
            mesh.children()
                .into_iter()
                .chain(res_children.into_iter().flatten()),
        );
    }
    drop(res_mesh);
    drop(mesh);

    Ok(report)
}

/// Starts the app and the pair (after checking the other scenarios' configs, so a proxy
/// without their fields fails before minutes of runs), then reads their idle RSS and the
/// machine's background load, and verifies the pair.
async fn start(
    args: &Args,
    bins: &Binaries,
    dir: &Path,
) -> anyhow::Result<(Mesh, [u64; 3], Vec<Option<f64>>)> {
    eprintln!(
        "weft-bench: starting app and sidecar pair on CPU {} (temp dir {})",
        args.server_core,
        dir.display()
    );
    let mesh = Mesh::start(dir, bins, args.server_core, args.access_log).await?;
    if !args.no_resilience {
        // Fail fast (before minutes of runs) on a proxy without the policy fields.
        ResilienceMesh::preflight(dir, bins)?;
    }
    if !args.no_observability {
        // The same for a proxy without the `tracing` block.
        ObservabilityMesh::preflight(dir, bins)?;
    }
    // Let start-up settle, then take the idle RSS before any traffic.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut idle_rss_kib = [0u64; 3];
    for (rss, pid) in idle_rss_kib.iter_mut().zip(watched(&mesh)) {
        *rss = procfs::rss_kib(pid).with_context(|| format!("reading the RSS of pid {pid}"))?;
    }
    let before = procfs::cpu_times()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let background_busy_pct = procfs::busy_pct(&before, &procfs::cpu_times()?);
    mesh.verify().await?;
    eprintln!(
        "weft-bench: verified: 200 through the pair, the app sees caller {}",
        weft_benches::mesh::CLIENT_ID
    );
    Ok((mesh, idle_rss_kib, background_busy_pct))
}

/// The processes whose CPU and memory the pair's runs watch: the app, sidecar A, sidecar B.
fn watched(mesh: &Mesh) -> [u32; 3] {
    [
        mesh.app.pid(),
        mesh.client_sidecar.pid(),
        mesh.app_sidecar.pid(),
    ]
}

/// The saturation and fixed-rate loads of the flags.
fn loads(args: &Args) -> (SaturationConfig, RateConfig) {
    let sat_cfg = SaturationConfig {
        connections: usize::from(args.connections),
        warmup: args.warmup,
        duration: args.duration,
        rss_interval: Duration::from_millis(100),
    };
    let rate_cfg = RateConfig {
        connections: usize::from(args.latency_connections),
        rate: args.rate,
        warmup: args.warmup,
        duration: args.duration,
    };
    (sat_cfg, rate_cfg)
}

/// `--runs` times, direct then weft: a saturation run and a fixed-rate run each.
async fn pair_runs(
    args: &Args,
    mesh: &mut Mesh,
    config: &BenchConfig,
    request: &Arc<[u8]>,
    sat_cfg: SaturationConfig,
    rate_cfg: RateConfig,
) -> anyhow::Result<Vec<RunRecord>> {
    let settle = Duration::from_millis(300);
    let watch = watched(mesh);
    let mut runs = Vec::new();
    for run in 1..=usize::from(args.runs) {
        for scenario in [Scenario::Direct, Scenario::Weft] {
            let t = Target {
                addr: match scenario {
                    Scenario::Direct => mesh.app_addr,
                    Scenario::Weft => mesh.outbound_addr,
                },
                request: request.clone(),
            };
            let sat = load::saturate(&t, sat_cfg, &watch).await?;
            mesh.check_alive()?;
            tokio::time::sleep(settle).await;
            let lat = load::fixed_rate(&t, rate_cfg, &watch).await?;
            mesh.check_alive()?;
            let rec = RunRecord::new(config, run, scenario, sat, lat);
            eprintln!(
                "weft-bench: run {run}/{} {:<6} {:>8.0} req/s, p50 {} µs, p99 {} µs, errors {}",
                args.runs,
                scenario.as_str(),
                rec.saturation.rps,
                rec.latency.latency.map_or(f64::NAN, |p| p.p50_us).round(),
                rec.latency.latency.map_or(f64::NAN, |p| p.p99_us).round(),
                rec.saturation.errors + rec.latency.errors + rec.latency.missed,
            );
            if let Some(flag) = rec.flag() {
                eprintln!("weft-bench: flagged: {flag}");
            }
            runs.push(rec);
            tokio::time::sleep(settle).await;
        }
    }
    Ok(runs)
}

/// The observability scenario; its pairs' metrics are saved and, if a run was flagged,
/// their stderr shown, before they end.
async fn observability(
    args: &Args,
    dir: &Path,
    bins: &Binaries,
    mesh: &mut Mesh,
    request: &Arc<[u8]>,
    sat_cfg: SaturationConfig,
) -> anyhow::Result<ObservabilityReport> {
    let mut obs_mesh = None;
    let obs = crate::observability::run_observability(
        args,
        dir,
        bins,
        mesh,
        &mut obs_mesh,
        request,
        sat_cfg,
    )
    .await?;
    if let Some(om) = obs_mesh.as_ref() {
        om.save_metrics(dir).await;
        if !obs.flags().is_empty() {
            show_stderr(om.children());
        }
    }
    Ok(obs)
}
