//! `weft-sample`: runs one of the Weft sample services as a standalone
//! program, e.g. beside a sidecar in the demo or the benchmarks.
//!
//! ```text
//! weft-sample http|grpc|tcp [--listen 127.0.0.1:8080] [--name NAME] [--threads N]
//! weft-sample http --fail-status 500 ...   # a broken instance: every request answers 500
//! weft-sample inventory --listen ADDR         # the shop: gRPC stock service
//! weft-sample orders --proxy SIDECAR --app-version v2 --listen ADDR
//! weft-sample frontend --proxy SIDECAR --listen ADDR
//! weft-sample frontend --no-proxy --orders-host orders:8080 --inventory-host inventory:8080
//! ```
//!
//! On start it logs one line (to stderr) with the bound address; `--listen`
//! may use port 0 to let the OS choose. It runs until killed or Ctrl-C. On SIGTERM (a pod
//! being deleted) it keeps serving for `--shutdown-delay-ms` before it exits, as Kubernetes
//! apps should: the kubelet's SIGTERM and the endpoint's removal from every caller race, so an
//! app that exits at once answers requests still on their way to it with a broken connection.

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use tokio::net::TcpListener;

/// Which sample to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    /// HTTP/1.1 + h2c app (`/bytes/{n}`, `/sink`, `/echo`, `/delay/{ms}`, `/status/{code}`, JSON default route).
    Http,
    /// gRPC `weft.sample.v1.Echo` over h2c.
    Grpc,
    /// Raw TCP echo (honours half-close).
    Tcp,
    /// The shop's front page: calls `orders` (HTTP) and `inventory` (gRPC) through `--proxy`.
    Frontend,
    /// The shop's orders API: calls `inventory` (gRPC) through `--proxy`.
    Orders,
    /// The shop's stock service (gRPC `shop.inventory.v1.Inventory`).
    Inventory,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Http => "http",
            Kind::Grpc => "grpc",
            Kind::Tcp => "tcp",
            Kind::Frontend => "frontend",
            Kind::Orders => "orders",
            Kind::Inventory => "inventory",
        }
    }
}

/// Runs a Weft sample service.
#[derive(Debug, Parser)]
#[command(name = "weft-sample", version, about)]
struct Args {
    /// Which sample to run.
    #[arg(value_enum)]
    kind: Kind,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Name of this instance, reported in `x-served-by` / `served_by`.
    #[arg(long, default_value = "weft-sample")]
    name: String,
    /// Tokio worker threads (1 = single-threaded runtime).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    threads: u16,
    /// `http` only: answer every request with this status (200-599) and a short
    /// JSON body, keeping connections alive: a failing endpoint for tests and benchmarks.
    #[arg(long, value_name = "CODE", value_parser = clap::value_parser!(u16).range(200..=599))]
    fail_status: Option<u16>,
    /// `frontend`, `orders`: the local sidecar's outbound HTTP listener, through which every
    /// call to another shop service goes (routed by Host / `:authority`).
    #[arg(long, default_value = "127.0.0.1:15001")]
    proxy: std::net::SocketAddr,
    /// `frontend`, `orders`: no proxy; dial `--orders-host` / `--inventory-host` (with their
    /// ports) by name, resolved by the system, as an unmodified app does under transparent
    /// capture (`weft-proxy init`), where the pod's rules carry the connection to the sidecar.
    #[arg(long, conflicts_with = "proxy")]
    no_proxy: bool,
    /// `orders`: the version this instance reports (`v1`; anything else also quotes a
    /// delivery estimate).
    #[arg(long, default_value = "v1")]
    app_version: String,
    /// `frontend`: the Host its calls to `orders` carry (on Kubernetes the mesh name is
    /// `orders.<namespace>`, e.g. `orders.shop.svc.cluster.local`).
    #[arg(long, default_value = "orders")]
    orders_host: String,
    /// `frontend`, `orders`: the `:authority` their calls to `inventory` carry.
    #[arg(long, default_value = "inventory")]
    inventory_host: String,
    /// On SIGTERM, keep serving this many milliseconds (while the endpoint's removal reaches
    /// the callers), then exit. 0 exits at once.
    #[arg(long, default_value_t = 1000)]
    shutdown_delay_ms: u64,
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    if args.fail_status.is_some() && args.kind != Kind::Http {
        anyhow::bail!(
            "--fail-status is only supported by `weft-sample http`, not {}",
            args.kind.as_str()
        );
    }
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(args.threads))
            .enable_all()
            .build()
    }
    .context("building the tokio runtime")?;
    runtime.block_on(run(args))
}

fn upstream(args: &Args, authority: &str) -> weft_samples::shop::Upstream {
    weft_samples::shop::Upstream {
        proxy: (!args.no_proxy).then_some(args.proxy),
        authority: authority.to_owned(),
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let server = match (args.kind, args.fail_status) {
        (Kind::Http, Some(status)) => {
            weft_samples::http::serve_failing(listener, args.name.clone(), status)
        }
        (Kind::Http, None) => weft_samples::http::serve(listener, args.name.clone()),
        (Kind::Grpc, _) => weft_samples::grpc::serve(listener, args.name.clone()),
        (Kind::Tcp, _) => weft_samples::tcp::serve_echo(listener),
        (Kind::Inventory, _) => weft_samples::shop::serve_inventory(listener, args.name.clone()),
        (Kind::Orders, _) => weft_samples::shop::serve_orders(
            listener,
            args.name.clone(),
            args.app_version.clone(),
            &upstream(&args, &args.inventory_host),
        )
        .map_err(anyhow::Error::msg)?,
        (Kind::Frontend, _) => weft_samples::shop::serve_frontend(
            listener,
            args.name.clone(),
            &upstream(&args, &args.orders_host),
            &upstream(&args, &args.inventory_host),
        )
        .map_err(anyhow::Error::msg)?,
    };
    let failing = args
        .fail_status
        .map_or_else(String::new, |s| format!(", failing every request with {s}"));
    log::info!(
        "weft-sample {} '{}' listening on {addr} ({} thread(s){failing})",
        args.kind.as_str(),
        args.name,
        args.threads
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("watching for SIGTERM")?;
    let delay = std::time::Duration::from_millis(args.shutdown_delay_ms);
    tokio::pin!(server);
    tokio::select! {
        res = &mut server => res.context("server task failed")?,
        res = tokio::signal::ctrl_c() => {
            res.context("waiting for ctrl-c")?;
            log::info!("interrupted, exiting");
        }
        _ = term.recv() => {
            log::info!("SIGTERM: serving {delay:?} more, then exiting");
            // Still serving: the server task runs on while this sleeps.
            tokio::select! {
                res = &mut server => res.context("server task failed")?,
                () = tokio::time::sleep(delay) => log::info!("exiting after SIGTERM"),
            }
        }
    }
    Ok(())
}
