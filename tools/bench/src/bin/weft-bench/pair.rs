//! The main scenario's driver: the app and the sidecar pair, direct and weft runs
//! interleaved, then the observability and resilience scenarios on the same app.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use weft_benches::http1::get_request;
use weft_benches::load::{self, RateConfig, SaturationConfig, Target};
use weft_benches::mesh::{Binaries, Mesh};
use weft_benches::observability::ObservabilityMesh;
use weft_benches::pair::{BenchConfig, Report, RunRecord, Scenario};
use weft_benches::procfs;
use weft_benches::resilience::ResilienceMesh;

use crate::args::Args;

pub async fn run(args: &Args, bins: &Binaries, dir: &Path, cpus: usize) -> anyhow::Result<Report> {
    let started_unix_s = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    eprintln!(
        "weft-bench: starting app and sidecar pair on CPU {} (temp dir {})",
        args.server_core,
        dir.display()
    );
    let mut mesh = Mesh::start(dir, bins, args.server_core, args.access_log).await?;
    if !args.no_resilience {
        // Fail fast (before minutes of runs) on a proxy without the policy fields.
        ResilienceMesh::preflight(dir, bins)?;
    }
    if !args.no_observability {
        // The same for a proxy without the `tracing` block.
        ObservabilityMesh::preflight(dir, bins)?;
    }
    let watch = [
        mesh.app.pid(),
        mesh.client_sidecar.pid(),
        mesh.app_sidecar.pid(),
    ];
    // Let start-up settle, then take the idle RSS before any traffic.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut idle_rss_kib = [0u64; 3];
    for (rss, &pid) in idle_rss_kib.iter_mut().zip(&watch) {
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

    let request: Arc<[u8]> = get_request("app", "/").into();
    let (direct_addr, weft_addr) = (mesh.app_addr, mesh.outbound_addr);
    let target = |scenario| Target {
        addr: match scenario {
            Scenario::Direct => direct_addr,
            Scenario::Weft => weft_addr,
        },
        request: request.clone(),
    };
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
    let settle = Duration::from_millis(300);
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
    let mut runs = Vec::new();
    for run in 1..=usize::from(args.runs) {
        for scenario in [Scenario::Direct, Scenario::Weft] {
            let t = target(scenario);
            let sat = load::saturate(&t, sat_cfg, &watch).await?;
            mesh.check_alive()?;
            tokio::time::sleep(settle).await;
            let lat = load::fixed_rate(&t, rate_cfg, &watch).await?;
            mesh.check_alive()?;
            let rec = RunRecord::new(&config, run, scenario, sat, lat);
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
    let mut report = Report::new(config, idle_rss_kib, background_busy_pct, runs);

    // The observability scenario runs after the pair's runs (its idle pairs
    // would share CPU 1 with them) and its processes end before the
    // resilience scenarios start.
    if !args.no_observability {
        let mut obs_mesh = None;
        let obs = crate::observability::run_observability(
            args,
            dir,
            bins,
            &mut mesh,
            &mut obs_mesh,
            &request,
            sat_cfg,
        )
        .await?;
        let flagged = !obs.flags().is_empty();
        report = report.with_observability(obs);
        if let Some(om) = obs_mesh.as_ref() {
            om.save_metrics(dir).await;
            if flagged {
                for child in om.children() {
                    eprintln!(
                        "weft-bench: {} stderr ({}), last lines:\n{}",
                        child.name(),
                        child.stderr_path().display(),
                        child.stderr_tail(20)
                    );
                }
            }
        }
        drop(obs_mesh);
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
        for child in mesh
            .children()
            .into_iter()
            .chain(res_children.into_iter().flatten())
        {
            eprintln!(
                "weft-bench: {} stderr ({}), last lines:\n{}",
                child.name(),
                child.stderr_path().display(),
                child.stderr_tail(20)
            );
        }
    }
    drop(res_mesh);
    drop(mesh);

    Ok(report)
}
