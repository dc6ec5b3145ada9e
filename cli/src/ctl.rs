//! The commands of `weftctl` besides `certs` and `tokens`: the operator commands (run by the
//! control plane's operator API client, [`weft_control_plane::operator::client`]), `top` (live
//! numbers per route from the sidecars' own metrics), `inject` and `crds`. They live in the
//! library so tests can run exactly what the binary runs, in process.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use weft_control_plane::operator::client::{self, Connection, CtlError, OpsCommand};

/// The commands of `weftctl` this library runs.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// The operator commands (`validate`, `apply`, `get`, `status`, `history`, `rollback`).
    #[command(flatten)]
    Ops(OpsCommand),
    /// Live numbers per route from the sidecars' own metrics, like `linkerd viz stat`:
    /// requests/s, success rate, p50/p99 latency, retries/s and open breakers over each
    /// interval.
    Top {
        /// A sidecar's admin address (`host:port` or `http://host:port`); repeat for several.
        /// Default: every connected sidecar that reported its admin address to the control
        /// plane (asked with --server and the admin token).
        #[arg(long = "sidecar", value_name = "ADDR")]
        sidecars: Vec<String>,
        /// Time between frames.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Print this many frames, then exit [default: until interrupted].
        #[arg(long)]
        count: Option<u32>,
    },
    /// Add the weft-proxy sidecar to Kubernetes workloads (Deployments, StatefulSets,
    /// DaemonSets, ReplicaSets, Jobs, CronJobs, Pods, Lists; multi-document YAML) and print them;
    /// other objects pass through unchanged. Exit 1 when an object cannot be injected.
    Inject(crate::inject::InjectArgs),
    /// Print the CustomResourceDefinitions of the policy resources (MeshRoute,
    /// TrafficPolicy, AuthorizationPolicy), generated from the policy types; no server.
    Crds {
        /// Write one file per CRD into this directory instead (e.g.
        /// deploy/kubernetes/base/crds).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

/// Run `command`, writing its output to `out`. Exit statuses as
/// [`CtlError::exit_code`] gives them.
pub async fn run(conn: &Connection, command: Command, out: &mut dyn Write) -> Result<(), CtlError> {
    match command {
        Command::Ops(command) => client::run(conn, command, out).await,
        Command::Top {
            sidecars,
            interval,
            count,
        } => top(conn, sidecars, interval, count, out).await,
        Command::Inject(args) => crate::inject::run(&args, out),
        Command::Crds { out: dir } => crds(dir.as_deref(), out),
    }
}

/// `weftctl crds`: the CRDs as one YAML stream on `out`, or one file each in `dir`.
fn crds(dir: Option<&Path>, out: &mut dyn Write) -> Result<(), CtlError> {
    let rendered = weft_control_plane::policy::kube::crds::render();
    match dir {
        None => {
            for (i, (_, text)) in rendered.iter().enumerate() {
                if i > 0 {
                    out.write_all(b"---\n").map_err(client::output_error)?;
                }
                out.write_all(text.as_bytes())
                    .map_err(client::output_error)?;
            }
        }
        Some(dir) => {
            for (file, text) in &rendered {
                let path = dir.join(file);
                std::fs::write(&path, text)
                    .map_err(|e| CtlError::Usage(format!("writing {}: {e}", path.display())))?;
                writeln!(out, "wrote {}", path.display()).map_err(client::output_error)?;
            }
        }
    }
    Ok(())
}

/// Longest a scrape of one sidecar may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);

/// `host:port` of each sidecar admin address given, or of every connected sidecar the control
/// plane knows the admin address of.
async fn top_targets(conn: &Connection, given: Vec<String>) -> Result<Vec<String>, CtlError> {
    if !given.is_empty() {
        return Ok(given
            .into_iter()
            .map(|a| {
                a.trim_start_matches("http://")
                    .trim_end_matches('/')
                    .to_owned()
            })
            .collect());
    }
    let status = client::get(conn, "/v1/status").await?;
    let found: Vec<String> = status["sidecars"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["connected"] == true)
        .filter_map(|s| s["admin"].as_str().filter(|a| !a.is_empty()))
        .map(str::to_owned)
        .collect();
    if found.is_empty() {
        return Err(CtlError::Refused(
            "no connected sidecar reported an admin address; name them with --sidecar".into(),
        ));
    }
    Ok(found)
}

async fn scrape_all(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    targets: &[String],
) -> (Vec<crate::top::Sample>, Vec<String>) {
    let calls = targets.iter().map(|t| async move {
        let uri: hyper::Uri = format!("http://{t}/metrics")
            .parse()
            .map_err(|e| format!("{t}: {e}"))?;
        let fetch = async {
            let resp = client.get(uri).await.map_err(|e| e.to_string())?;
            if !resp.status().is_success() {
                return Err(format!("HTTP {}", resp.status()));
            }
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            crate::top::parse(&String::from_utf8_lossy(&body)).map_err(|e| e.to_string())
        };
        tokio::time::timeout(SCRAPE_TIMEOUT, fetch)
            .await
            .map_err(|_| "timed out".to_owned())
            .and_then(|r| r)
            .map_err(|e| format!("{t}: {e}"))
    });
    let mut samples = Vec::new();
    let mut errors = Vec::new();
    for r in futures_util::future::join_all(calls).await {
        match r {
            Ok(s) => samples.extend(s),
            Err(e) => errors.push(e),
        }
    }
    (samples, errors)
}

async fn top(
    conn: &Connection,
    sidecars: Vec<String>,
    interval: Duration,
    count: Option<u32>,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    if interval < Duration::from_millis(100) {
        return Err(CtlError::Usage("--interval must be at least 100ms".into()));
    }
    let targets = top_targets(conn, sidecars).await?;
    let client = Client::builder(TokioExecutor::new()).build_http();
    let (mut prev, _) = scrape_all(&client, &targets).await;
    let mut prev_at = std::time::Instant::now();
    let mut frames = 0u32;
    loop {
        tokio::time::sleep(interval).await;
        let (now, errors) = scrape_all(&client, &targets).await;
        let rows = crate::top::rows(&prev, &now, prev_at.elapsed());
        prev = now;
        prev_at = std::time::Instant::now();
        let mut frame = format!(
            "{} sidecars, every {}\n",
            targets.len(),
            humantime::format_duration(interval)
        );
        for e in &errors {
            frame.push_str(&format!("unreachable: {e}\n"));
        }
        frame.push_str(&crate::top::render(&rows));
        frame.push('\n');
        out.write_all(frame.as_bytes())
            .map_err(client::output_error)?;
        out.flush().map_err(client::output_error)?;
        frames += 1;
        if count.is_some_and(|c| frames >= c) {
            return Ok(());
        }
    }
}
