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

/// Weft sidecar proxy.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Sidecar config file (YAML).
    #[arg(long, short, required_unless_present = "probe")]
    config: Option<PathBuf>,
    /// Take the config's text from this environment variable and write it to the --config
    /// path first (Kubernetes injection: the kubelet expands `$(VAR)` references in it, and
    /// the path lies in a writable emptyDir).
    #[arg(long, value_name = "NAME")]
    config_env: Option<String>,
    /// Validate the config and its certificates, print the result, and exit.
    #[arg(long)]
    check: bool,
    /// Probe a running sidecar's admin endpoint (such as `/ready` or `/live`) on
    /// --probe-addr and exit 0 if it answers 200, else 1: the Kubernetes probes of an injected
    /// sidecar (`exec`, since the admin API listens on loopback only, which the kubelet's
    /// HTTP probes cannot reach).
    #[arg(long, value_name = "PATH", conflicts_with_all = ["config", "config_env", "check"])]
    probe: Option<String>,
    /// The admin address --probe asks.
    #[arg(long, default_value = "127.0.0.1:15000", requires = "probe")]
    probe_addr: std::net::SocketAddr,
}

/// How long a probe may take in all; the kubelet's own probe timeout is larger.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(900);

/// GET `path` from the admin API at `addr` (HTTP/1.0, no keep-alive): whether it answered 200,
/// or why not.
fn probe(addr: std::net::SocketAddr, path: &str) -> Result<(), String> {
    use std::io::{Read as _, Write as _};
    let mut tcp = std::net::TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)
        .map_err(|e| format!("{addr}: {e}"))?;
    tcp.set_read_timeout(Some(PROBE_TIMEOUT))
        .and_then(|()| tcp.set_write_timeout(Some(PROBE_TIMEOUT)))
        .map_err(|e| format!("{addr}: {e}"))?;
    write!(tcp, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .map_err(|e| format!("{addr}: {e}"))?;
    // The status line is all we need; a bounded read.
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < head.len() {
        match tcp.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(format!("{addr}: {e}")),
        }
        if head[..n].contains(&b'\n') {
            break;
        }
    }
    let line = String::from_utf8_lossy(&head[..n]);
    let line = line.lines().next().unwrap_or("").trim();
    match line.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        _ => Err(format!("{addr}{path}: {line:?}")),
    }
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
    if let Some(path) = &args.probe {
        match probe(args.probe_addr, path) {
            Ok(()) => std::process::exit(0),
            Err(e) => {
                eprintln!("probe: {e}");
                std::process::exit(1);
            }
        }
    }
    let Some(config) = args.config.clone() else {
        eprintln!("--config is required");
        std::process::exit(2);
    };
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
    use std::io::{Read as _, Write as _};

    /// One connection answered with `status`, on a thread.
    fn admin_answering(status: &'static str) -> std::net::SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf);
                let _ = write!(s, "HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
            }
        });
        addr
    }

    #[test]
    fn probe_wants_200() {
        assert_eq!(probe(admin_answering("200 OK"), "/ready"), Ok(()));
        let err = probe(admin_answering("503 Service Unavailable"), "/ready").expect_err("503");
        assert!(err.contains("503"), "{err}");
        // Nothing listening: refused, quickly.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr");
        assert!(probe(closed, "/live").is_err());
    }

    #[test]
    fn probe_needs_no_config() {
        let args = Args::try_parse_from(["weft-proxy", "--probe", "/ready"]).expect("args");
        assert_eq!(args.probe.as_deref(), Some("/ready"));
        assert!(Args::try_parse_from(["weft-proxy"]).is_err());
        assert!(Args::try_parse_from(["weft-proxy", "--probe", "/ready", "--check"]).is_err());
    }
}
