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
//! `--captured` runs only the captured path instead (see `weft_benches::captured`; root),
//! writing `target/bench/captured.{md,json}`.
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

mod args;
mod observability;
mod pair;
mod resilience;

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{ensure, Context as _};
use clap::Parser;

use weft_benches::captured;
use weft_benches::cli::{self, pin_self, until_interrupted, TempGuard};
use weft_benches::cp_push::{self, CpPushConfig};
use weft_benches::mesh::Binaries;

use args::Args;

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
    let (bin_dir, out_dir) =
        cli::bin_and_out_dirs(args.bin_dir.as_deref(), args.out_dir.as_deref())?;
    if args.cp_push {
        return cp_push_main(&args, &bin_dir, &out_dir);
    }
    if args.captured {
        return captured_main(&args, &bin_dir, &out_dir);
    }
    if let Some(addr) = args.drive {
        return drive_main(&args, addr);
    }
    let bins = Binaries::in_dir(&bin_dir, args.proxy.as_deref())?;
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    pin_self(args.loadgen_core)?;

    let mut temp = TempGuard::new()?;
    // On success the processes are gone (the mesh was dropped in `run`).
    let report = until_interrupted(pair::run(&args, &bins, temp.path(), cpus))?;
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
        by_service: !args.cp_full_snapshots,
    };
    let mut temp = TempGuard::new()?;
    // The control planes and the simulated sidecars are gone (dropped in `run`).
    let report = until_interrupted(cp_push::run(&cfg, temp.path(), nofile))?;
    weft_benches::report::write(out_dir, "cp-push", &report.markdown(), &report)?;
    temp.keep = args.keep_temp;
    Ok(())
}

/// `--captured`: the captured path against the same pods without the mesh; writes
/// captured.md and .json to `out_dir`.
fn captured_main(args: &Args, bin_dir: &Path, out_dir: &Path) -> anyhow::Result<()> {
    let bins = Binaries::in_dir(bin_dir, args.proxy.as_deref())?;
    pin_self(args.loadgen_core)?;
    let cfg = captured::CapturedConfig {
        runs: usize::from(args.runs),
        warmup: args.warmup,
        duration: args.duration,
        connections: usize::from(args.connections),
        rate: args.rate,
        latency_connections: usize::from(args.latency_connections),
        server_core: args.server_core,
    };
    let mut temp = TempGuard::new()?;
    // The pods (namespaces) and their processes are gone on return from `run`.
    let report = until_interrupted(captured::run(&cfg, &bins, temp.path()))?;
    weft_benches::report::write(out_dir, "captured", &report.markdown(), &report)?;
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
