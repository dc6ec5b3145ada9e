//! `weft-bench`: HTTP/1.1 keep-alive load, direct vs. through a Weft sidecar
//! pair, interleaved, with medians and ratios to direct; the observability
//! cost scenario: the pair's throughput with access logs on and with tracing
//! at 0 % and 100 % (exporting to an in-process OTLP/gRPC collector), against
//! the default settings; and the resilience scenarios: one of three endpoints
//! fails (success rate and latency without vs. with the policies), and the
//! policies' cost on the healthy pair.
//!
//! ```text
//! cargo build --release -p weft-proxy -p weft-samples -p weft-benches && target/release/weft-bench
//! target/release/weft-bench --quick      # one short run of each, a smoke check
//! ```
//!
//! `--cp-push` runs only the control-plane push at scale instead (see
//! `weft_benches::cp_push`), writing `target/bench/cp-push.{md,json}`:
//!
//! ```text
//! cargo build --release -p weft-control-plane -p weft-benches && target/release/weft-bench --cp-push --runs 3
//! ```
//!
//! The load generator (and the trace collector) runs on CPU 0 (this process
//! pins itself), the apps and all sidecars on CPU 1 (started with `taskset`). Progress goes to stderr,
//! the markdown table to stdout and to `target/bench/weft-bench.md`, the full
//! results to `target/bench/weft-bench.json`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{ensure, Context as _};
use clap::Parser;

use weft_benches::cli::{self, parse_duration, pin_self, until_interrupted, TempGuard};
use weft_benches::cp_push::{self, CpPushConfig};
use weft_benches::http1::get_request;
use weft_benches::load::{self, RateConfig, SaturationConfig, Target};
use weft_benches::mesh::{Binaries, Mesh, ObservabilityMesh, ResilienceMesh};
use weft_benches::observability::{
    ObsConfig, ObsRun, ObsVariant, ObservabilityReport, PairLifetime,
};
use weft_benches::procfs;
use weft_benches::report::{BenchConfig, Report, RunRecord, Scenario};
use weft_benches::resilience::{
    Balancer, FailRun, HealthyRun, Policies, ResilienceConfig, ResilienceReport, Variant,
    ENDPOINTS, FAIL_STATUS,
};

/// Load benchmark: direct vs. through a Weft sidecar pair.
#[derive(Debug, Parser)]
#[command(name = "weft-bench", version, about)]
struct Args {
    /// Repetitions of each scenario (runs are interleaved: direct, weft, direct, ...).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=100))]
    runs: u16,
    /// Measured time of each saturation and latency run (e.g. `5s`, `1500ms`, or seconds).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Warm-up before each measured window.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Connections of the saturation (closed-loop) runs.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=4096))]
    connections: u16,
    /// Request rate of the latency (open-loop) runs, requests per second.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Connections the latency runs spread their requests over.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=4096))]
    latency_connections: u16,
    /// Measured time of each run of the failing-endpoint scenario (open loop at
    /// --rate over --latency-connections, after --warmup).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    fail_duration: Duration,
    /// Skip the resilience scenarios (one of three endpoints fails; the
    /// policies' healthy-path cost).
    #[arg(long)]
    no_resilience: bool,
    /// Skip the observability cost scenario (the pair with access logs, with
    /// tracing at 0 % and 100 %, against the default settings).
    #[arg(long)]
    no_observability: bool,
    /// How the observability scenario's pairs live: `per-run` (each pair
    /// started right before each of its runs, ended right after) or `kept`
    /// (all started once; the others idle on the server CPU during a run).
    #[arg(long, value_enum, default_value_t = PairLifetime::PerRun)]
    obs_pairs: PairLifetime,
    /// Smoke check: one run of each scenario, 2 s each.
    #[arg(long)]
    quick: bool,
    /// Where `weft-proxy` and `weft-sample` are (default: this executable's directory).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Where to write weft-bench.md and .json (default: `<bin-dir>/../bench`, i.e. target/bench).
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// CPU for the load generator.
    #[arg(long, default_value_t = 0)]
    loadgen_core: usize,
    /// CPU for the app and the sidecars.
    #[arg(long, default_value_t = 1)]
    server_core: usize,
    /// Keep the temporary directory (certs, configs, stderr logs) even on success.
    #[arg(long)]
    keep_temp: bool,
    /// Turn on both sidecars' JSON access logs (written to files in the temp dir), to
    /// measure their cost against a run without.
    #[arg(long)]
    access_log: bool,
    /// Instead of the load scenarios: the control-plane push at scale (one real
    /// weft-control-plane, simulated sidecars, time until all ACK a policy change, its RSS).
    #[arg(long)]
    cp_push: bool,
    /// Sidecar counts of --cp-push, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100,250,500,1000")]
    cp_sidecars: Vec<usize>,
    /// Policy changes per sidecar count and run of --cp-push.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=100))]
    cp_changes: u16,
    /// Instead of the scenarios: drive a listener that is already running (a sidecar under
    /// a profiler, say) with the saturation load (--connections, --warmup, --duration) and
    /// print requests/s. Loopback addresses only.
    #[arg(long, value_name = "ADDR")]
    drive: Option<std::net::SocketAddr>,
    /// The `weft-proxy` binary to measure (default: the one in --bin-dir), e.g. the
    /// optimised build of `scripts/build-pgo` (PGO + BOLT); reports name its `--version`.
    #[arg(long, value_name = "PATH")]
    proxy: Option<PathBuf>,
    /// --drive: an open loop at this many requests/s over --latency-connections instead of
    /// the saturation load; prints latency percentiles.
    #[arg(long, value_name = "RPS")]
    drive_rate: Option<f64>,
    /// --drive: the Host header and path of the requests.
    #[arg(long, default_value = "app/")]
    drive_url: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match real_main(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(mut args: Args) -> anyhow::Result<()> {
    if args.quick {
        args.runs = 1;
        args.duration = Duration::from_secs(2);
        args.fail_duration = args.fail_duration.min(Duration::from_secs(2));
    }
    ensure!(
        args.rate.is_finite() && args.rate > 0.0 && args.rate <= 1_000_000.0,
        "--rate must be in (0, 1000000]"
    );
    ensure!(!args.duration.is_zero(), "--duration must be positive");
    ensure!(
        !args.fail_duration.is_zero(),
        "--fail-duration must be positive"
    );
    ensure!(
        args.loadgen_core != args.server_core,
        "--loadgen-core and --server-core must differ"
    );
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .context("locating this executable")?
            .parent()
            .context("this executable has no directory")?
            .to_owned(),
    };
    let out_dir = match &args.out_dir {
        Some(d) => d.clone(),
        None => bin_dir
            .parent()
            .map_or_else(|| bin_dir.join("bench"), |p| p.join("bench")),
    };
    if args.cp_push {
        return cp_push_main(&args, &bin_dir, &out_dir);
    }
    if let Some(addr) = args.drive {
        return drive_main(&args, addr);
    }
    let bins = Binaries::in_dir(&bin_dir, args.proxy.as_deref())?;
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    pin_self(args.loadgen_core)?;

    let mut temp = TempGuard::new()?;
    // On success the processes are gone (the mesh was dropped in `run`).
    let report = until_interrupted(run(&args, &bins, temp.path(), cpus))?;
    weft_benches::report::write(&out_dir, "weft-bench", &report.markdown(), &report)?;
    if report.flags.is_empty() {
        temp.keep = args.keep_temp;
    } else {
        eprintln!(
            "weft-bench: {} run(s) had errors; see the flagged runs above",
            report.flags.len()
        );
    }
    Ok(())
}

/// `--cp-push`: the control-plane push at scale; writes cp-push.md and .json to `out_dir`.
fn cp_push_main(args: &Args, bin_dir: &Path, out_dir: &Path) -> anyhow::Result<()> {
    ensure!(
        !args.cp_sidecars.is_empty() && args.cp_sidecars.iter().all(|n| (1..=10_000).contains(n)),
        "--cp-sidecars must be counts in 1..=10000"
    );
    // A socket per simulated sidecar: the soft limit is often 1024.
    let nofile = cli::raise_nofile_limit()?;
    eprintln!(
        "weft-bench: open-files limit {} (was {}, hard {})",
        nofile.1, nofile.0, nofile.2
    );
    pin_self(args.loadgen_core)?;
    let cfg = CpPushConfig {
        sidecars: args.cp_sidecars.clone(),
        runs: usize::from(args.runs),
        changes: usize::from(args.cp_changes),
        server_core: args.server_core,
        client_core: args.loadgen_core,
        binary: bin_dir.join("weft-control-plane"),
    };
    let mut temp = TempGuard::new()?;
    // The control planes and the simulated sidecars are gone (dropped in `run`).
    let report = until_interrupted(cp_push::run(&cfg, temp.path(), nofile))?;
    weft_benches::report::write(out_dir, "cp-push", &report.markdown(), &report)?;
    temp.keep = args.keep_temp;
    Ok(())
}

/// `--drive`: the saturation load against `addr`, its result on stdout.
fn drive_main(args: &Args, addr: std::net::SocketAddr) -> anyhow::Result<()> {
    ensure!(
        addr.ip().is_loopback(),
        "--drive: {addr} is not a loopback address"
    );
    let (host, path) = match args.drive_url.find('/') {
        Some(i) => args.drive_url.split_at(i),
        None => (args.drive_url.as_str(), "/"),
    };
    pin_self(args.loadgen_core)?;
    let target = weft_benches::load::Target {
        addr,
        request: weft_benches::http1::get_request(host, path).into(),
    };
    if let Some(rate) = args.drive_rate {
        let cfg = weft_benches::load::RateConfig {
            connections: usize::from(args.latency_connections),
            rate,
            warmup: args.warmup,
            duration: args.duration,
        };
        let r = until_interrupted(weft_benches::load::fixed_rate(&target, cfg, &[]))?;
        let l = r.latency.context("no request succeeded")?;
        println!(
            "{} ok of {} at {rate} req/s: p50 {:.0} µs, p90 {:.0}, p99 {:.0}, p99.9 {:.0}, max {:.0}; {} errors {:?}",
            r.ok, r.scheduled, l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, r.errors, r.error_samples
        );
        return Ok(());
    }
    let cfg = weft_benches::load::SaturationConfig {
        connections: usize::from(args.connections),
        warmup: args.warmup,
        duration: args.duration,
        rss_interval: Duration::from_millis(100),
    };
    let r = until_interrupted(weft_benches::load::saturate(&target, cfg, &[]))?;
    println!(
        "{} requests in {:.2} s: {:.0} req/s, {} errors {:?}",
        r.requests, r.seconds, r.rps, r.errors, r.error_samples
    );
    Ok(())
}

async fn run(args: &Args, bins: &Binaries, dir: &Path, cpus: usize) -> anyhow::Result<Report> {
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
        let obs =
            run_observability(args, dir, bins, &mut mesh, &mut obs_mesh, &request, sat_cfg).await?;
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
        let res = run_resilience(
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

/// Starts the trace collector and the observability scenario's pairs (into
/// `obs_mesh`, so the caller can still read their metrics and stderr): all
/// at once, or each right before each of its runs (`--obs-pairs`);
/// verifies each pair and runs, `--runs` times, every variant once
/// (saturation, same settings as the pair's), one at a time, in the rotating
/// order of [`ObsVariant::order`]. Returns their results.
async fn run_observability(
    args: &Args,
    dir: &Path,
    bins: &Binaries,
    mesh: &mut Mesh,
    obs_mesh: &mut Option<ObservabilityMesh>,
    request: &Arc<[u8]>,
    sat_cfg: SaturationConfig,
) -> anyhow::Result<ObservabilityReport> {
    let settle = Duration::from_millis(300);
    let lifetime = args.obs_pairs;
    eprintln!(
        "weft-bench: observability scenario: an OTLP/gRPC trace collector in this process (CPU {}); \
         a sidecar pair per variant ({}) in front of the app, {}",
        args.loadgen_core,
        ObsVariant::ALL.map(ObsVariant::label).join(", "),
        lifetime.describe()
    );
    let om = obs_mesh.insert(ObservabilityMesh::new(
        dir,
        bins,
        args.server_core,
        args.loadgen_core,
        mesh.app_addr.port(),
    )?);
    if lifetime == PairLifetime::Kept {
        for v in ObsVariant::ALL {
            om.start_pair(v).await?;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        for v in ObsVariant::ALL {
            om.verify(v).await?;
        }
        // Let the verification requests' spans and log lines out before the
        // first run counts.
        for v in ObsVariant::ALL {
            om.settle(v, Default::default(), (0, 0)).await?;
        }
        eprintln!(
            "weft-bench: verified: 200 through every pair; the app gets no traceparent without a collector, \
             an unsampled one at 0 %, a sampled one at 100 %"
        );
    }
    // The benchmark's own pair idles during these runs too.
    let idle_extra = [mesh.client_sidecar.pid(), mesh.app_sidecar.pid()];
    let cores = (args.loadgen_core, args.server_core);
    let mut runs: Vec<ObsRun> = Vec::new();
    for run in 1..=usize::from(args.runs) {
        for v in ObsVariant::order(run) {
            if lifetime == PairLifetime::PerRun {
                om.start_pair(v).await?;
            }
            // Counted from here: a fresh pair's verification request is part
            // of the run's requests, spans and log lines.
            let before = om.counters(v).await?;
            let collector_before = (om.collector.spans(), om.collector.requests());
            if lifetime == PairLifetime::PerRun {
                om.verify(v).await?;
            }
            let t = Target {
                addr: om.pair(v)?.outbound_addr,
                request: request.clone(),
            };
            let watch = om.watch(v, mesh.app.pid(), &idle_extra)?;
            let collector_cpu0 = om.collector.cpu_seconds().ok();
            let started = tokio::time::Instant::now();
            let sat = load::saturate(&t, sat_cfg, &watch).await?;
            let collector_cpu_pct = match (collector_cpu0, om.collector.cpu_seconds().ok()) {
                (Some(a), Some(b)) if v.exports_spans() => {
                    Some((b - a) / started.elapsed().as_secs_f64() * 100.0)
                }
                _ => None,
            };
            mesh.check_alive()?;
            om.check_alive()?;
            let telemetry = om.settle(v, before, collector_before).await?;
            let rec = ObsRun::new(run, v, sat, cores, collector_cpu_pct, telemetry);
            let tel = &rec.telemetry;
            eprintln!(
                "weft-bench: run {run}/{} observability {:<26} {:>8.0} req/s, pair CPU/100k {:.3}, idle sidecars {:.1} % CPU{}, errors {}",
                args.runs,
                v.label(),
                rec.saturation.rps,
                rec.pair_cpu_s_per_100k.unwrap_or(f64::NAN),
                rec.idle_sidecars_cpu_pct,
                if v.exports_spans() {
                    format!(
                        ", spans exported {} dropped {} received {}{}",
                        tel.spans_exported(),
                        tel.spans_dropped(),
                        tel.collector_spans,
                        if tel.accounted_for { "" } else { " (not all accounted for)" }
                    )
                } else {
                    String::new()
                },
                rec.saturation.errors,
            );
            let flagged = rec.flag();
            runs.push(rec);
            if let Some(flag) = flagged {
                eprintln!("weft-bench: flagged: {flag}");
                if lifetime == PairLifetime::PerRun {
                    // The pair ends now (and a restart overwrites its stderr): show it.
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
            if lifetime == PairLifetime::PerRun {
                // The last run's counters stay in the temp dir.
                om.save_pair_metrics(v, dir).await;
                om.stop_pair(v);
            }
            tokio::time::sleep(settle).await;
        }
    }
    Ok(ObservabilityReport::new(
        ObsConfig {
            runs: usize::from(args.runs),
            connections: sat_cfg.connections,
            warmup_s: sat_cfg.warmup.as_secs_f64(),
            duration_s: sat_cfg.duration.as_secs_f64(),
            pair_lifetime: lifetime,
            processes: lifetime.describe().into(),
            collector: format!(
                "a real OTLP/gRPC collector in the benchmark process (tonic `TraceService`, decodes every \
                 export request and counts its spans) on its own thread pinned to the load generator's CPU {}",
                args.loadgen_core
            ),
            config_lines: om.config_lines.clone(),
        },
        runs,
    ))
}

/// Starts the resilience scenarios' processes (into `res_mesh`, so the
/// caller can still show their stderr), verifies them and runs, `--runs`
/// times: the healthy path without and with policies (saturation, through
/// the pair's sidecar B and app), then every failing-endpoint variant (open
/// loop). Returns their results.
#[allow(clippy::too_many_arguments)]
async fn run_resilience(
    args: &Args,
    bins: &Binaries,
    dir: &Path,
    mesh: &mut Mesh,
    res_mesh: &mut Option<ResilienceMesh>,
    request: &Arc<[u8]>,
    sat_cfg: SaturationConfig,
    fail_cfg: RateConfig,
) -> anyhow::Result<ResilienceReport> {
    let settle = Duration::from_millis(300);
    eprintln!(
        "weft-bench: starting the resilience scenarios' processes: {ENDPOINTS} app instances (one failing \
         with {FAIL_STATUS}) with their sidecars, 6 client-side sidecars (healthy path and failing \
         endpoint, without/with policies; the latter with P2C and round robin)"
    );
    let rm = res_mesh.insert(
        ResilienceMesh::start(dir, bins, args.server_core, mesh.app_inbound, FAIL_STATUS).await?,
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = rm.verify(FAIL_STATUS).await?;
    let seen: Vec<String> = seen
        .iter()
        .map(|(k, names)| format!("{k}: {}", names.join(" ")))
        .collect();
    eprintln!(
        "weft-bench: verified: healthy path 200 without and with policies; answering through the \
         failing-endpoint sidecars without policies: {}",
        seen.join("; ")
    );

    let mut fail_runs = Vec::new();
    let mut healthy_runs = Vec::new();
    for run in 1..=usize::from(args.runs) {
        // Healthy path: the pair with the other outbound configs.
        for policies in Policies::order(run) {
            let t = Target {
                addr: rm.healthy(policies).outbound_addr,
                request: request.clone(),
            };
            let watch = [
                mesh.app.pid(),
                rm.healthy(policies).child.pid(),
                mesh.app_sidecar.pid(),
            ];
            let sat = load::saturate(&t, sat_cfg, &watch).await?;
            mesh.check_alive()?;
            rm.check_alive()?;
            let rec = HealthyRun::new(run, policies, sat);
            eprintln!(
                "weft-bench: run {run}/{} healthy path {:<16} {:>8.0} req/s, errors {}",
                args.runs,
                policies.label(),
                rec.saturation.rps,
                rec.saturation.errors,
            );
            if let Some(flag) = rec.flag() {
                eprintln!("weft-bench: flagged: {flag}");
            }
            healthy_runs.push(rec);
            tokio::time::sleep(settle).await;
        }
        // One of three endpoints fails.
        for variant in Variant::order(run) {
            let t = Target {
                addr: rm.failing(variant).outbound_addr,
                request: request.clone(),
            };
            let r = load::fixed_rate_statuses(&t, fail_cfg, &rm.failing_watch(variant)).await?;
            rm.check_alive()?;
            let rec = FailRun::new(run, variant, r);
            let r = &rec.result;
            eprintln!(
                "weft-bench: run {run}/{} one endpoint failing, {:<31} success {:>7.3} %, {:>6.0} 2xx/s, p50 {} µs, p99 {} µs, no answer {}",
                args.runs,
                variant.label(),
                r.success_rate.map_or(f64::NAN, |x| x * 100.0),
                r.ok_rps,
                r.latency.map_or(f64::NAN, |p| p.p50_us).round(),
                r.latency.map_or(f64::NAN, |p| p.p99_us).round(),
                r.transport_errors_total + r.missed,
            );
            if let Some(flag) = rec.flag() {
                eprintln!("weft-bench: flagged: {flag}");
            }
            fail_runs.push(rec);
            tokio::time::sleep(settle).await;
        }
    }
    let mut r = ResilienceReport::new(
        ResilienceConfig {
            endpoints: ENDPOINTS,
            failing_endpoints: 1,
            fail_status: FAIL_STATUS,
            load: "open loop (fixed rate)".into(),
            rate: fail_cfg.rate,
            connections: fail_cfg.connections,
            warmup_s: fail_cfg.warmup.as_secs_f64(),
            duration_s: fail_cfg.duration.as_secs_f64(),
            healthy_connections: sat_cfg.connections,
            healthy_duration_s: sat_cfg.duration.as_secs_f64(),
            balancers: Balancer::ALL.to_vec(),
            services_yaml: rm.services_yaml.clone(),
        },
        fail_runs,
        healthy_runs,
    );
    r.sidecar_metrics = rm.metrics(dir).await;
    Ok(r)
}
