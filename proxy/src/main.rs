//! `weft-proxy`: the Weft sidecar.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;

// mimalloc: a proxy allocates and frees many small buffers per request; glibc malloc cost
// about 10% of sidecar CPU in the load benchmark.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `--version`: the crate version, and whether the binary was built with profile-guided
/// optimisation (`scripts/build-pgo` sets `WEFT_PGO`), so a benchmark report can name it.
const VERSION: &str = match option_env!("WEFT_PGO") {
    Some(_) => concat!(env!("CARGO_PKG_VERSION"), " (profile-guided build)"),
    None => env!("CARGO_PKG_VERSION"),
};

/// Weft sidecar proxy.
#[derive(Parser, Debug)]
#[command(version = VERSION, about)]
struct Args {
    /// Sidecar config file (YAML).
    #[arg(long, short)]
    config: PathBuf,
    /// Take the config's text from this environment variable and write it to the --config
    /// path first (Kubernetes injection: the kubelet expands `$(VAR)` references in it, and
    /// the path lies in a writable emptyDir).
    #[arg(long, value_name = "NAME")]
    config_env: Option<String>,
    /// Validate the config and its certificates, print the result, and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> anyhow::Result<()> {
    // The logger passes everything; `log::set_max_level` is the one filter, so the admin
    // API can change it at runtime. WEFT_LOG (set by the Kubernetes injector) or else
    // RUST_LOG gives the starting level (default info).
    let level = std::env::var("WEFT_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|l| l.parse::<log::LevelFilter>().ok())
        .unwrap_or(log::LevelFilter::Info);
    env_logger::Builder::new()
        .filter_level(log::LevelFilter::Trace)
        .init();
    log::set_max_level(level);
    let args = Args::parse();
    let config = args.config.clone();
    if let Some(name) = &args.config_env {
        if let Err(e) = weft_proxy::config::write_from_env(name, &config) {
            eprintln!("--config-env: {e}");
            std::process::exit(2);
        }
    }
    // Before the store opens: a sidecar with a join token and no usable certificate obtains
    // one from the control plane first (see `weft_proxy::certify`).
    if !args.check {
        if let Err(e) = weft_proxy::certify::bootstrap_if_needed(&config) {
            eprintln!("{}: cannot start: {e}", config.display());
            std::process::exit(3);
        }
    }
    let metrics = weft_proxy::metrics::Metrics::new().context("metrics registry")?;
    let store = match weft_proxy::state::Store::open(&config, metrics) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if args.check {
        let snap = store.load();
        println!(
            "{}: ok: service {} ({}), {} destination(s)",
            config.display(),
            snap.own.name,
            snap.tls.identity,
            snap.destinations.len()
        );
        return Ok(());
    }
    // On Kubernetes the sidecar is a native sidecar (an init container with `restartPolicy:
    // Always`): the kubelet sends it SIGTERM only after the app containers have exited, so a
    // Job's pod completes without the app having to stop the proxy.
    weft_proxy::server::run(Arc::new(store)).context("sidecar failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_required() {
        assert!(Args::try_parse_from(["weft-proxy"]).is_err());
        let args =
            Args::try_parse_from(["weft-proxy", "--config", "c.yaml", "--check"]).expect("args");
        assert!(args.check && args.config_env.is_none());
    }
}
