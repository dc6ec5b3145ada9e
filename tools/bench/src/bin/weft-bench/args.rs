//! The flags of `weft-bench`, in their own module so that each scenario's driver reads
//! them without importing the binary's root.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use weft_benches::cli::parse_duration;
use weft_benches::observability::PairLifetime;

/// Load benchmark: direct vs. through a Weft sidecar pair.
#[derive(Debug, Parser)]
#[command(name = "weft-bench", version, about)]
pub struct Args {
    /// Repetitions of each scenario (runs are interleaved: direct, weft, direct, ...).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub runs: u16,
    /// Measured time of each saturation and latency run (e.g. `5s`, `1500ms`, or seconds).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Warm-up before each measured window.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Connections of the saturation (closed-loop) runs.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub connections: u16,
    /// Request rate of the latency (open-loop) runs, requests per second.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Connections the latency runs spread their requests over.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub latency_connections: u16,
    /// Measured time of each run of the failing-endpoint scenario (open loop at
    /// --rate over --latency-connections, after --warmup).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub fail_duration: Duration,
    /// Skip the resilience scenarios (one of three endpoints fails; the
    /// policies' healthy-path cost).
    #[arg(long)]
    pub no_resilience: bool,
    /// Skip the observability cost scenario (the pair with access logs, with
    /// tracing at 0 % and 100 %, against the default settings).
    #[arg(long)]
    pub no_observability: bool,
    /// How the observability scenario's pairs live: `per-run` (each pair
    /// started right before each of its runs, ended right after) or `kept`
    /// (all started once; the others idle on the server CPU during a run).
    #[arg(long, value_enum, default_value_t = PairLifetime::PerRun)]
    pub obs_pairs: PairLifetime,
    /// Smoke check: one run of each scenario, 2 s each.
    #[arg(long)]
    pub quick: bool,
    /// Where `weft-proxy` and `weft-sample` are (default: this executable's directory).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Where to write weft-bench.md and .json (default: `<bin-dir>/../bench`, i.e. target/bench).
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// CPU for the load generator.
    #[arg(long, default_value_t = 0)]
    pub loadgen_core: usize,
    /// CPU for the app and the sidecars.
    #[arg(long, default_value_t = 1)]
    pub server_core: usize,
    /// Keep the temporary directory (certs, configs, stderr logs) even on success.
    #[arg(long)]
    pub keep_temp: bool,
    /// Turn on both sidecars' JSON access logs (written to files in the temp dir), to
    /// measure their cost against a run without.
    #[arg(long)]
    pub access_log: bool,
    /// Instead of the load scenarios: the control-plane push at scale (one real
    /// weft-control-plane, simulated sidecars, time until all ACK a policy change, its RSS).
    #[arg(long)]
    pub cp_push: bool,
    /// Instead of the load scenarios: the captured path (load generator and app each in a
    /// network namespace of its own, capture on both sides) against the same namespaces
    /// without the mesh. Needs root (namespaces, nftables). Uses --runs, --warmup,
    /// --duration, --connections, --rate and --latency-connections.
    #[arg(long)]
    pub captured: bool,
    /// Sidecar counts of --cp-push, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    pub cp_sidecars: Vec<usize>,
    /// Policy changes per sidecar count and run of --cp-push.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub cp_changes: u16,
    /// --cp-push with sidecars that take full snapshots (as before endpoints by service)
    /// instead of announcing endpoints-by-service.
    #[arg(long)]
    pub cp_full_snapshots: bool,
    /// Instead of the scenarios: drive a listener that is already running (a sidecar under
    /// a profiler, say) with the saturation load (--connections, --warmup, --duration) and
    /// print requests/s. Loopback addresses only.
    #[arg(long, value_name = "ADDR")]
    pub drive: Option<std::net::SocketAddr>,
    /// The `weft-proxy` binary to measure (default: the one in --bin-dir), e.g. the
    /// optimised build of `scripts/build-pgo` (PGO + BOLT); reports name its `--version`.
    #[arg(long, value_name = "PATH")]
    pub proxy: Option<PathBuf>,
    /// --drive: an open loop at this many requests/s over --latency-connections instead of
    /// the saturation load; prints latency percentiles.
    #[arg(long, value_name = "RPS")]
    pub drive_rate: Option<f64>,
    /// --drive: the Host header and path of the requests.
    #[arg(long, default_value = "app/")]
    pub drive_url: String,
}
