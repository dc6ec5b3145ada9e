//! `weft-bench-peers`: the Weft sidecar pair against HAProxy and NGINX pairs set up as
//! sidecars with the same hops (and direct), on HTTP/1.1, gRPC and TCP: throughput, latency,
//! CPU per request and memory. Writes `peers.{md,json}` (default `target/bench/`).
//!
//! ```text
//! cargo build --release -p weft-proxy -p weft-samples -p weft-bench-peers && target/release/weft-bench-peers
//! target/release/weft-bench-peers --only-weft --quick   # Weft and direct, one short run
//! target/release/weft-bench-peers --rates 200,1000,2000   # the fixed rates (the default)
//! target/release/weft-bench-peers --gateway   # Weft's gateway vs. NGINX at the edge
//! ```
//!
//! HTTP/1.1 and gRPC run an open loop at each of `--rates`, then saturation; each load gives
//! latency percentiles, the proxies' CPU per 100k requests and RSS, with the paired ratio
//! to the best peer. `--gateway` writes `gateway.{md,json}` instead.
//!
//! The load generator runs on CPU 0 (this process pins itself), the apps and all proxies on
//! CPU 1. Progress goes to stderr, the Markdown to stdout.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context as _};
use clap::Parser;

use weft_bench_peers::gateway;
use weft_bench_peers::gateway_results::GatewayConfig;
use weft_bench_peers::lanes::{self, Kind, RatePoint, Timing};
use weft_bench_peers::load::{self as peer_load, TcpConfig};
use weft_bench_peers::model::{Column, Sizing, Workload};
use weft_bench_peers::pair::{self, Negotiated, Pair, PeersFound};
use weft_bench_peers::rates::parse_rates;
use weft_bench_peers::results::{PeerRun, PeersConfig, PeersReport};
use weft_benches::cli::{self, parse_duration, TempGuard};
use weft_benches::http1::get_request;
use weft_benches::mesh::{self, Binaries, ChildGuard};
use weft_benches::{procfs, report};

/// Weft vs. HAProxy vs. NGINX sidecar pairs (and direct) on HTTP/1.1, gRPC and TCP.
#[derive(Debug, Parser)]
#[command(name = "weft-bench-peers", version, about)]
struct Args {
    /// Repetitions (the columns are interleaved in each run).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=100))]
    runs: u16,
    /// Measured time of each load (e.g. `5s`, `1500ms`, or seconds).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Warm-up before each measured window.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Connections of the HTTP saturation (closed-loop) runs.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=4096))]
    connections: u16,
    /// Request rates of the open-loop (latency) runs of HTTP/1.1 and gRPC, requests per
    /// second, comma-separated; each is measured, then saturation.
    #[arg(long, default_value = "200,1000,2000")]
    rates: String,
    /// Lanes (connections for HTTP, calls in flight for gRPC) the open-loop runs spread
    /// their requests over.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=4096))]
    latency_connections: u16,
    /// gRPC calls in flight (spread over --grpc-channels HTTP/2 connections).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=4096))]
    grpc_concurrency: u16,
    /// HTTP/2 connections of the gRPC load.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    grpc_channels: u16,
    /// TCP connections of the throughput load.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    tcp_connections: u16,
    /// Smoke check: one run, 2 s each.
    #[arg(long)]
    quick: bool,
    /// Where `weft-proxy` and `weft-sample` are (default: this executable's directory).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Where to write peers.md and .json (default: `<bin-dir>/../bench`, i.e. target/bench).
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// CPU for the load generator.
    #[arg(long, default_value_t = 0)]
    loadgen_core: usize,
    /// CPU for the apps and the proxies.
    #[arg(long, default_value_t = 1)]
    server_core: usize,
    /// Keep the temporary directory (certs, configs, stderr logs) even on success.
    #[arg(long)]
    keep_temp: bool,
    /// The `weft-proxy` binary to measure (default: the one in --bin-dir), e.g. the
    /// optimised build of `scripts/build-pgo` (PGO + BOLT); the report names its `--version`.
    #[arg(long, value_name = "PATH")]
    proxy: Option<PathBuf>,
    /// A second Weft column, "weft-baseline", running this `weft-proxy` (e.g. the plain
    /// release build when --proxy is the optimised one).
    #[arg(long, value_name = "PATH")]
    baseline_proxy: Option<PathBuf>,
    /// Weft and direct only, even when HAProxy or NGINX is installed.
    #[arg(long)]
    only_weft: bool,
    /// The gateway scenario instead (issue 23): `weft-proxy --gateway` terminating TLS and
    /// forwarding over mutual TLS to a sidecar in front of the app, against NGINX as a TLS
    /// reverse proxy to the same app. Writes gateway.{md,json}.
    #[arg(long)]
    gateway: bool,
}

fn main() -> ExitCode {
    match real_main(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-bench-peers: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Checks the flags, runs the comparison and writes peers.md and .json.
fn real_main(mut args: Args) -> anyhow::Result<()> {
    if args.quick {
        args.runs = 1;
        args.duration = Duration::from_secs(2);
    }
    let rates = parse_rates(&args.rates).map_err(|e| anyhow::anyhow!("--rates: {e}"))?;
    ensure!(!args.duration.is_zero(), "--duration must be positive");
    ensure!(
        args.loadgen_core != args.server_core,
        "--loadgen-core and --server-core must differ"
    );
    let (bin_dir, out_dir) =
        cli::bin_and_out_dirs(args.bin_dir.as_deref(), args.out_dir.as_deref())?;
    let bins = Binaries::in_dir(&bin_dir, args.proxy.as_deref())?;
    // HAProxy's maxconn and NGINX's worker_connections follow the open-files limit.
    let nofile = cli::raise_nofile_limit()?;
    cli::pin_self(args.loadgen_core)?;
    let mut temp = TempGuard::new()?;
    let errors: u64 = if args.gateway {
        let cfg = GatewayConfig {
            runs: usize::from(args.runs),
            timing: timing(&args),
            connections: usize::from(args.connections),
            rates: rates.clone(),
            latency_connections: usize::from(args.latency_connections),
            loadgen_core: args.loadgen_core,
            server_core: args.server_core,
            only_weft: args.only_weft,
        };
        // Every process has ended (dropped in `gateway::run`).
        let report = cli::until_interrupted(gateway::run(cfg, &bins, temp.path(), nofile.1))?;
        report::write(&out_dir, "gateway", &report.markdown(), &report)?;
        report.errors()
    } else {
        // Every process has ended (dropped in `run_peers`).
        let report =
            cli::until_interrupted(run_peers(&args, &rates, &bins, temp.path(), nofile.1))?;
        report::write(&out_dir, "peers", &report.markdown(), &report)?;
        report.runs.iter().map(PeerRun::errors).sum()
    };
    if errors == 0 {
        temp.keep = args.keep_temp;
    } else {
        eprintln!("weft-bench: {errors} error(s) in the runs; see the per-run table");
    }
    Ok(())
}

/// Warm-up, window and RSS sampling of every load, from the flags.
fn timing(args: &Args) -> Timing {
    Timing {
        warmup: args.warmup,
        duration: args.duration,
        rss_interval: Duration::from_millis(100),
    }
}

/// The loads every column runs, from the flags.
#[derive(Debug, Clone)]
struct Loads {
    /// HTTP saturation connections.
    connections: usize,
    /// gRPC saturation calls in flight, and the HTTP/2 connections they share.
    grpc_concurrency: usize,
    grpc_channels: usize,
    timing: Timing,
    rates: Vec<f64>,
    latency_lanes: usize,
    tcp: TcpConfig,
    request: Arc<[u8]>,
}

impl Loads {
    fn of(args: &Args, rates: &[f64]) -> Self {
        Loads {
            connections: usize::from(args.connections),
            grpc_concurrency: usize::from(args.grpc_concurrency),
            grpc_channels: usize::from(args.grpc_channels),
            timing: timing(args),
            rates: rates.to_vec(),
            latency_lanes: usize::from(args.latency_connections),
            tcp: TcpConfig {
                connections: usize::from(args.tcp_connections),
                warmup: args.warmup,
                duration: args.duration,
                rss_interval: Duration::from_millis(100),
            },
            request: get_request("app", "/").into(),
        }
    }
}

/// Pause after a pair starts and after each load.
const SETTLE: Duration = Duration::from_millis(300);

/// Starts an app per workload, then, `--runs` times, for each workload every
/// column (direct and each pair found) in a rotating order: a fresh pair
/// (its idle RSS), the load, the pair ended. Returns the results.
// Long: the comparison in order (peers, apps, probes, the interleaved runs, the report), each step a call.
async fn run_peers(
    args: &Args,
    rates: &[f64],
    bins: &Binaries,
    dir: &Path,
    nofile: u64,
) -> anyhow::Result<PeersReport> {
    let found = detect(args, bins)?;
    mesh::write_certs(dir).context("generating certificates")?;
    pair::write_combined_pems(dir)?;
    let sizing = Sizing::new(
        nofile,
        u64::from(
            args.connections
                .max(args.latency_connections)
                .max(args.grpc_concurrency),
        ),
    );
    let mut apps = start_apps(args, bins, dir).await?;
    let columns = found.columns();
    eprintln!(
        "weft-bench: peers: {} on CPU {}, load on CPU {}",
        columns
            .iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        args.server_core,
        args.loadgen_core
    );
    let http_app = apps[0].1;
    let (negotiated, configs) =
        probe_pairs(args, bins, dir, &found, &columns, http_app, sizing).await?;

    let loads = Loads::of(args, rates);
    let mut runs = Vec::new();
    for run in 1..=usize::from(args.runs) {
        for (w, app_addr, app) in apps.iter_mut() {
            for col in Column::order(&columns, run) {
                if !found.supports(col, *w) {
                    continue;
                }
                let pair = match col {
                    Column::Direct => None,
                    _ => Some(
                        Pair::start(
                            col,
                            *w,
                            *app_addr,
                            dir,
                            bins,
                            &found,
                            args.server_core,
                            sizing,
                        )
                        .await?,
                    ),
                };
                let rec = measure(args, &loads, run, *w, col, *app_addr, app, pair).await?;
                runs.push(rec);
                tokio::time::sleep(SETTLE).await;
            }
        }
    }
    drop(apps);
    Ok(PeersReport::new(
        PeersConfig {
            runs: usize::from(args.runs),
            duration_s: args.duration.as_secs_f64(),
            warmup_s: args.warmup.as_secs_f64(),
            connections: loads.connections,
            rates: rates.to_vec(),
            latency_connections: loads.latency_lanes,
            grpc_channels: loads.grpc_channels,
            grpc_concurrency: loads.grpc_concurrency,
            tcp_connections: loads.tcp.connections,
            sizing,
            loadgen_core: args.loadgen_core,
            server_core: args.server_core,
        },
        found,
        negotiated,
        configs,
        runs,
    ))
}

/// The peers on this machine (none with `--only-weft`), with the measured `weft-proxy`'s
/// version and the baseline's, each printed.
fn detect(args: &Args, bins: &Binaries) -> anyhow::Result<PeersFound> {
    let mut found = PeersFound::detect();
    if args.only_weft {
        found.haproxy = None;
        found.nginx = None;
        found.versions.clear();
        found
            .skipped
            .push("HAProxy and NGINX pairs: --only-weft".into());
    }
    found
        .versions
        .insert("weft-proxy".into(), bins.proxy_version());
    if let Some(p) = &args.baseline_proxy {
        ensure!(p.is_file(), "--baseline-proxy {} not found", p.display());
        mesh::drop_cached(p);
        found.versions.insert(
            "weft-proxy (weft-baseline)".into(),
            mesh::version_of(p, "--version"),
        );
        found.weft_baseline = Some(p.clone());
    }
    for s in &found.skipped {
        eprintln!("weft-bench: {s}");
    }
    for (k, v) in &found.versions {
        eprintln!("weft-bench: {k}: {v}");
    }
    Ok(found)
}

/// One app per workload, for the whole comparison (idle between its runs), each answering.
async fn start_apps(
    args: &Args,
    bins: &Binaries,
    dir: &Path,
) -> anyhow::Result<Vec<(Workload, SocketAddr, ChildGuard)>> {
    let mut apps = Vec::new();
    for w in Workload::ALL {
        let (addr, child) = pair::start_app(w, args.server_core, bins, dir).await?;
        apps.push((w, addr, child));
    }
    Ok(apps)
}

/// Per pair, the TLS suite a probe handshake negotiates with B's listener, and the HTTP
/// workload's config files for the record.
async fn probe_pairs(
    args: &Args,
    bins: &Binaries,
    dir: &Path,
    found: &PeersFound,
    columns: &[Column],
    http_app: SocketAddr,
    sizing: Sizing,
) -> anyhow::Result<(BTreeMap<String, Negotiated>, BTreeMap<String, String>)> {
    let mut negotiated = BTreeMap::new();
    let mut configs = BTreeMap::new();
    for &col in columns.iter().filter(|c| **c != Column::Direct) {
        let pair = Pair::start(
            col,
            Workload::Http,
            http_app,
            dir,
            bins,
            found,
            args.server_core,
            sizing,
        )
        .await?;
        let alpn: &[&str] = if col.is_weft() {
            &["h2"]
        } else {
            &["http/1.1"]
        };
        let n = pair::probe_tls(dir, pair.tls, alpn)
            .await
            .with_context(|| format!("TLS probe of the {} pair", col.as_str()))?;
        eprintln!(
            "weft-bench: {} pair: B's TLS listener negotiated {} {} (ALPN {})",
            col.as_str(),
            n.version,
            n.suite,
            n.alpn.as_deref().unwrap_or("none")
        );
        negotiated.insert(col.as_str().to_owned(), n);
        for side in ["a", "b"] {
            let ext = match col {
                Column::Weft | Column::WeftBaseline => "yaml",
                Column::Haproxy => "cfg",
                _ => "conf",
            };
            let f = dir.join(format!("peers-{}-http-{side}.{ext}", col.as_str()));
            if let Ok(text) = std::fs::read_to_string(&f) {
                configs.insert(format!("{}-{side}", col.as_str()), text);
            }
        }
        drop(pair);
    }
    Ok((negotiated, configs))
}

/// One column's run of workload `w`: after the pair (if any) settles, its idle RSS, then the
/// workload's loads; the pair ends (by PID) on return, before the next column starts.
#[allow(clippy::too_many_arguments)]
async fn measure(
    args: &Args,
    loads: &Loads,
    run: usize,
    w: Workload,
    col: Column,
    app_addr: SocketAddr,
    app: &mut ChildGuard,
    mut pair: Option<Pair>,
) -> anyhow::Result<PeerRun> {
    // Let start-up settle, then the idle RSS before the load.
    tokio::time::sleep(SETTLE).await;
    let mut rec = PeerRun {
        run,
        workload: w,
        column: col,
        idle_rss_kib: None,
        saturation: None,
        rates: Vec::new(),
        tcp: None,
    };
    let (entry, watch) = match &pair {
        Some(p) => {
            let [a, b] = p.pids();
            rec.idle_rss_kib = Some([procfs::rss_kib(a)?, procfs::rss_kib(b)?]);
            (p.entry, vec![app.pid(), a, b])
        }
        None => (app_addr, vec![app.pid()]),
    };
    let (kind, lanes) = match w {
        Workload::Http => (
            Kind::Http {
                addr: entry,
                request: loads.request.clone(),
            },
            loads.connections,
        ),
        Workload::Grpc => (
            Kind::Grpc {
                addr: entry,
                channels: loads.grpc_channels,
            },
            loads.grpc_concurrency,
        ),
        Workload::Tcp => {
            rec.tcp = Some(peer_load::tcp_throughput(entry, loads.tcp, &watch).await?);
            (
                Kind::Http {
                    addr: entry,
                    request: loads.request.clone(),
                },
                0,
            )
        }
    };
    if w != Workload::Tcp {
        let clients = lanes::clients(&kind, lanes).await?;
        rec.saturation = Some(lanes::closed_loop(&kind, clients, loads.timing, &watch).await?);
        rec.rates = fixed_rates(loads, &kind, &watch).await?;
    }
    app.check_alive()?;
    if let Some(p) = pair.as_mut() {
        p.check_alive()?;
    }
    print_run(args, &rec);
    Ok(rec)
}

/// One open-loop run per rate of `--rates` (fresh lanes each, after a pause).
async fn fixed_rates(loads: &Loads, kind: &Kind, watch: &[u32]) -> anyhow::Result<Vec<RatePoint>> {
    let mut out = Vec::new();
    for &rate in &loads.rates {
        tokio::time::sleep(SETTLE).await;
        let lanes = lanes::clients(kind, loads.latency_lanes).await?;
        out.push(lanes::open_loop(kind, lanes, rate, loads.timing, watch).await?);
    }
    Ok(out)
}

/// The run's one progress line (and error samples) on stderr.
fn print_run(args: &Args, rec: &PeerRun) {
    let (w, col) = (rec.workload, rec.column);
    let p: Vec<String> = rec
        .rates
        .iter()
        .map(|r| {
            r.result.latency.map_or_else(
                || format!("{:.0}/s: –", r.rate),
                |l| {
                    format!(
                        "{:.0}/s: p50 {:.0} µs p99 {:.0} µs",
                        r.rate, l.p50_us, l.p99_us
                    )
                },
            )
        })
        .collect();
    eprintln!(
        "weft-bench: run {}/{} {:<4} {:<7} {:>10.1} {}{}, pair CPU-s/100k {}, errors {}",
        rec.run,
        args.runs,
        w.as_str(),
        col.as_str(),
        rec.throughput().unwrap_or(f64::NAN),
        if w == Workload::Tcp { "MB/s" } else { "req/s" },
        if p.is_empty() {
            String::new()
        } else {
            format!(", {}", p.join(", "))
        },
        rec.pair_cpu_per_100k()
            .map_or_else(|| "–".to_owned(), |x| format!("{x:.3}")),
        rec.errors(),
    );
    if rec.errors() > 0 {
        let samples: Vec<&String> = rec
            .saturation
            .iter()
            .flat_map(|s| &s.error_samples)
            .chain(rec.rates.iter().flat_map(|l| &l.result.error_samples))
            .chain(rec.tcp.iter().flat_map(|t| &t.error_samples))
            .collect();
        eprintln!("weft-bench: errors, e.g.: {samples:?}");
    }
}
