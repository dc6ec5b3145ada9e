//! `weft up`: a complete local mesh, captured in network namespaces or on loopback.
//!
//! ```text
//! traffic ─▶ loadgen sidecar ─mTLS─▶ frontend ─mTLS─▶ orders v1 / v2 ─mTLS─▶ inventory (gRPC)
//!                                        └──────────────mTLS──────────────────▲
//! ```
//!
//! The control plane runs embedded (file policy source in `<dir>/policy`, CA in
//! `<dir>/state`). Every sidecar is a real `weft-proxy` process that bootstraps its identity
//! with a join token (its key never leaves it) and takes its policy from the control plane;
//! every app is a real `weft-sample` process. What runs where is written to `<dir>/up.json`.
//!
//! Two modes. Captured (the default when root with network namespaces and nftables): each
//! instance in a network namespace of its own with `weft-proxy init`'s capture, the apps
//! calling `http://orders:8080` by name with no proxy setting (`pods`). Loopback (`--loopback`,
//! or the fallback, which says why): everything on 127.0.0.1 at ports chosen here, the apps
//! pointed at their sidecar's outbound listener.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use weft_control_plane::ca::ca_store::CaStoreOptions;
use weft_control_plane::ca::tokens::{JoinTokenStore, NewToken};
use weft_control_plane::server::{self, Running, ServerConfig};

use crate::mesh::write_private;
use crate::mesh::{watch_children, Children, Instance, Ports, StopSignals, Traffic};
use crate::pods::{self, Pods};
use crate::{edge, prometheus, view};

pub use crate::mesh::TRUST_DOMAIN;
/// How long every sidecar may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The shop's policy, as shipped in `deploy/examples/shop/`.
const POLICY: [(&str, &str); 3] = [
    (
        "services.yaml",
        include_str!("../../deploy/examples/shop/services.yaml"),
    ),
    (
        "routes.yaml",
        include_str!("../../deploy/examples/shop/routes.yaml"),
    ),
    (
        "authorization.yaml",
        include_str!("../../deploy/examples/shop/authorization.yaml"),
    ),
];

/// Options of `weft up`.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Directory for the mesh's files (policy, CA state, sidecar configs, logs, up.json).
    /// Default: a new temporary directory, removed at exit.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Stop by itself after this long (e.g. `30s`, `5m`); default: run until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Requests per second the traffic generator sends through frontend.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=5000))]
    rate: u32,
    /// Print one summary line every 5 s instead of the full-screen live view (the default
    /// when standard output is not a terminal).
    #[arg(long)]
    no_view: bool,
    /// Also start Prometheus (if `prometheus` is installed) scraping every sidecar and the
    /// control plane, with the project's alert rules.
    #[arg(long)]
    prometheus: bool,
    /// Lifetime of the workload certificates the control plane issues (renewed at 2/3); the
    /// control plane's default. Try `30s` to watch rotation happen.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    cert_lifetime: Duration,
    /// Run everything on loopback even when network namespaces are available (the apps then
    /// call their sidecar's outbound listener explicitly).
    #[arg(long)]
    loopback: bool,
}

/// Where the other binaries are: beside this one (cargo builds them all into one directory).
fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating weft")?;
    let dir = exe.parent().context("weft has no directory")?;
    // `cargo test` runs from target/<profile>/deps; the binaries are one level up.
    for d in [dir, dir.parent().unwrap_or(dir)] {
        let p = d.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "{name} not found beside {}; build it: cargo build --release -p weft-proxy -p weft-samples -p weft-cli",
        exe.display()
    )
}

fn sidecar_config(
    i: &Instance,
    protocol: &str,
    cp: SocketAddr,
    metrics: Option<SocketAddr>,
) -> String {
    let metrics = metrics.map_or_else(String::new, |m| format!(", metrics: \"{m}\""));
    let labels = i
        .version
        .map_or_else(String::new, |v| format!("  labels: {{version: {v}}}\n"));
    format!(
        "# Sidecar of {name}, written by `weft up`. Its policy comes from the control plane.\n\
         service:\n  name: {service}\n  identity: spiffe://{TRUST_DOMAIN}/ns/default/sa/{service}\n  \
         app: \"{app}\"\n  protocol: {protocol}\n{labels}\
         listen: {{outbound: \"{outbound}\", inbound: \"{inbound}\", admin: \"{admin}\"{metrics}}}\n\
         tls: {{cert: cert.pem, key: key.pem, trust_bundle: ca.pem}}\n\
         workers: 1\n\
         drain_timeout: 2s\n\
         control_plane:\n  address: \"{cp}\"\n  identity: spiffe://{TRUST_DOMAIN}/ns/weft-system/sa/control-plane\n  \
         state_file: state.json\n  join_token_file: token\n",
        name = i.name,
        service = i.service,
        app = i.app,
        outbound = i.outbound,
        inbound = i.inbound,
        admin = i.admin,
    )
}

/// The mesh's layout: which instances run, and on which ports.
pub(crate) fn plan(ports: &mut Ports) -> anyhow::Result<Vec<Instance>> {
    let mut out = Vec::new();
    for (name, service, version) in [
        ("inventory", "inventory", None),
        ("orders-v1", "orders", Some("v1")),
        ("orders-v2", "orders", Some("v2")),
        ("frontend", "frontend", None),
        ("loadgen", "loadgen", None),
    ] {
        out.push(Instance {
            name: name.to_owned(),
            service,
            version,
            admin: ports.next()?,
            outbound: ports.next()?,
            inbound: ports.next()?,
            app: ports.next()?,
        });
    }
    Ok(out)
}

/// The app process of an instance (loadgen has none: the generator runs in `weft up`): with
/// `pods`, in its pod as the apps' UID, calling the others by name with no proxy setting.
fn app_command(
    sample: &Path,
    i: &Instance,
    pods: Option<&Pods>,
) -> anyhow::Result<Option<Command>> {
    let kind = match i.service {
        "inventory" => "inventory",
        "orders" => "orders",
        "frontend" => "frontend",
        _ => return Ok(None),
    };
    let mut cmd = match pods {
        Some(p) => p.command(&i.name, sample, true)?,
        None => Command::new(sample),
    };
    cmd.arg(kind).arg("--name").arg(&i.name);
    if pods.is_some() {
        let port = pods::APP_PORT;
        cmd.arg("--listen")
            .arg(format!("0.0.0.0:{port}"))
            .arg("--no-proxy");
        cmd.arg("--orders-host").arg(format!("orders:{port}"));
        cmd.arg("--inventory-host").arg(format!("inventory:{port}"));
    } else {
        cmd.arg("--listen").arg(i.app.to_string());
        cmd.arg("--proxy").arg(i.outbound.to_string());
    }
    if let Some(v) = i.version {
        cmd.arg("--app-version").arg(v);
    }
    Ok(Some(cmd))
}

/// Until every `(name, admin address)` answers `/ready` with 200 (at most [`READY_TIMEOUT`]).
async fn wait_ready(
    client: &view::Client,
    admins: &[(&str, SocketAddr)],
    children: &mut Children,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    for (name, admin) in admins {
        loop {
            if client
                .get(*admin, "/ready")
                .await
                .is_ok_and(|(s, _)| s == 200)
            {
                break;
            }
            if let Some(why) = children.exited() {
                bail!("{why} while starting; see the logs");
            }
            if Instant::now() > deadline {
                bail!("sidecar {name} not ready within {READY_TIMEOUT:?}; see its log");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Send `rate` requests a second to frontend through the loadgen sidecar, forever.
async fn generate(client: view::Client, loadgen: SocketAddr, rate: u32, traffic: Arc<Traffic>) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        n += 1;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            traffic.skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let (client, traffic) = (client.clone(), traffic.clone());
        let path = format!("/shop/{}", n % 50);
        tokio::spawn(async move {
            match client.get_host(loadgen, "frontend", &path).await {
                Ok((status, _)) if (200..300).contains(&status) => {
                    traffic.ok.fetch_add(1, Ordering::Relaxed);
                }
                Ok((status, body)) => {
                    let body = String::from_utf8_lossy(&body);
                    let first = body.lines().next().unwrap_or_default();
                    traffic.failed(format!(
                        "{status} {}",
                        first.chars().take(200).collect::<String>()
                    ));
                }
                Err(e) => traffic.failed(format!("{e:#}")),
            }
            drop(permit);
        });
    }
}

/// Run the mesh until Ctrl-C, SIGTERM or `--duration`.
// Long (about 165 lines): the start-up is one ordered script (control plane, apps, sidecars,
// readiness, traffic, view) whose steps share the children to stop on any failure.
pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    // The stop signals are registered before anything starts: a SIGTERM or Ctrl-C during
    // start-up is then held until the mesh is up and stops it in order, instead of ending this
    // process by the default action and orphaning the sidecars and apps already started.
    let stop = StopSignals::install()?;
    let (dir, _temp) = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("{}", d.display()))?;
            (d.canonicalize()?, None)
        }
        None => {
            let t = tempfile::Builder::new().prefix("weft-up.").tempdir()?;
            (t.path().to_owned(), Some(t))
        }
    };
    let log = std::fs::File::create(dir.join("control-plane.log"))?;
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .target(env_logger::Target::Pipe(Box::new(log)))
        .try_init()
        .ok();
    let proxy = binary("weft-proxy")?;
    let sample = binary("weft-sample")?;

    // The control plane, embedded.
    let policy_dir = dir.join("policy");
    std::fs::create_dir_all(&policy_dir)?;
    for (name, text) in POLICY {
        let path = policy_dir.join(name);
        if !path.exists() {
            std::fs::write(&path, text)?;
        }
    }
    let state_dir = dir.join("state");
    let mut ports = Ports::default();
    let cp = server::start(ServerConfig {
        policy_dir: policy_dir.clone(),
        state_dir: state_dir.clone(),
        listen: ports.next()?,
        admin: ports.next()?,
        trust_domain: TRUST_DOMAIN.to_owned(),
        ca: CaStoreOptions::default(),
        grace: weft_control_plane::push::hub::DEFAULT_GRACE,
        poll_interval: weft_control_plane::policy::source::DEFAULT_POLL_INTERVAL,
        admin_token_file: None,
        cert_lifetime: args.cert_lifetime,
        kubernetes_tokens: None,
    })
    .await
    .context("starting the control plane")?;
    let trust_bundle =
        std::fs::read_to_string(state_dir.join(weft_control_plane::ca::ca_store::CA_CERT_FILE))
            .context("reading the mesh root")?;

    // The mode, then sidecars and apps. `pods` is declared before `children`, so it is dropped
    // after them: the namespaces go once every process in them has ended.
    let mut instances = plan(&mut ports)?;
    let (pods, mode) = pods::choose(
        args.loopback,
        &mut instances,
        &mut ports,
        cp.listen,
        &proxy,
        &sample,
        plan,
    )
    .await?;
    let tokens = JoinTokenStore::new(&state_dir);
    let mut children = Children::default();
    let mut pids = Vec::new();
    for i in &instances {
        let sdir = dir.join("sidecars").join(&i.name);
        std::fs::create_dir_all(&sdir)?;
        // `weft up`'s state directory lives as long as the session: its tokens need not
        // expire (a certificate renews only while its token is valid).
        let token = tokens
            .create(&NewToken {
                ttl: None,
                ..NewToken::new(i.service)
            })
            .with_context(|| format!("join token for {}", i.name))?;
        write_private(&sdir.join("token"), &token.token)?;
        std::fs::write(sdir.join("ca.pem"), &trust_bundle)?;
        let protocol = if i.service == "inventory" {
            "grpc"
        } else {
            "http"
        };
        let config = match pods.as_ref().and_then(|p| Some((p, p.listen(i)?))) {
            Some((p, [outbound, inbound, admin, app, metrics])) => {
                let inside = Instance {
                    outbound,
                    inbound,
                    admin,
                    app,
                    ..i.clone()
                };
                sidecar_config(&inside, protocol, p.control_plane(), Some(metrics))
            }
            None => sidecar_config(i, protocol, cp.listen, None),
        };
        std::fs::write(sdir.join("sidecar.yaml"), config)?;
        if let Some(mut cmd) = app_command(&sample, i, pods.as_ref())? {
            let pid =
                children.spawn(&format!("{} app", i.name), &mut cmd, &sdir.join("app.log"))?;
            pids.push(serde_json::json!({"name": format!("{} app", i.name), "pid": pid}));
        }
        let mut sidecar = match &pods {
            Some(p) => p.command(&i.name, &proxy, false)?,
            None => Command::new(&proxy),
        };
        let pid = children.spawn(
            &format!("{} sidecar", i.name),
            sidecar
                .arg("--config")
                .arg(sdir.join("sidecar.yaml"))
                .env("RUST_LOG", "info"),
            &sdir.join("sidecar.log"),
        )?;
        pids.push(serde_json::json!({"name": format!("{} sidecar", i.name), "pid": pid}));
    }
    let client = view::Client::new();
    let admins: Vec<_> = instances
        .iter()
        .map(|i| (i.name.as_str(), i.admin))
        .collect();
    wait_ready(&client, &admins, &mut children).await?;
    // The gateway in front of frontend, once frontend serves.
    // It joins as every sidecar does; in captured mode it runs in the node namespace, which
    // reaches the control plane's relay on the bridge.
    let join = edge::Join {
        control_plane: pods.as_ref().map_or(cp.listen, Pods::control_plane),
        token: tokens
            .create(&NewToken {
                ttl: None,
                ..NewToken::new("gateway")
            })
            .context("join token for the gateway")?
            .token,
        trust_bundle: trust_bundle.clone(),
    };
    let gateway = edge::start(
        &dir.join("gateway"),
        &join,
        &proxy,
        pods.as_ref(),
        &mut ports,
        &mut children,
    )?;
    pids.push(serde_json::json!({"name": "gateway", "pid": gateway.pid}));
    wait_ready(&client, &[("gateway", gateway.admin)], &mut children).await?;
    let prometheus = if args.prometheus {
        prometheus::start(&dir, &mut ports, &instances, cp.admin, &mut children)?
    } else {
        None
    };

    let status = serde_json::json!({
        "mode": if pods.is_some() { "captured" } else { "loopback" },
        "dir": dir,
        "policy_dir": policy_dir,
        "control_plane": {
            "listen": cp.listen,
            "admin": format!("http://{}", cp.admin),
            "admin_token_file": cp.admin_token_file,
        },
        "prometheus": prometheus.map(|p| format!("http://{p}")),
        "sidecars": instances.iter().map(|i| serde_json::json!({
            "name": i.name, "service": i.service, "version": i.version,
            "admin": format!("http://{}", i.admin), "outbound": i.outbound,
            "inbound": i.inbound, "app": i.app,
            "netns": pods.as_ref().and_then(|p| Some(p.pod(&i.name)?.netns.clone())),
        })).collect::<Vec<_>>(),
        "gateway": {
            "https": gateway.https, "admin": format!("http://{}", gateway.admin),
            "ca": gateway.ca, "token": gateway.token, "curl": gateway.curl(),
        },
        "processes": pids,
    });
    std::fs::write(dir.join("up.json"), format!("{status:#}\n"))?;
    print_where(
        &mode,
        &dir,
        &policy_dir,
        &cp,
        &instances,
        prometheus,
        args.dir.is_none(),
    );
    gateway.print();
    println!("  stop           Ctrl-C (every process ends, nothing stays listening)\n");

    let traffic = Arc::new(Traffic::default());
    let loadgen = instances
        .iter()
        .find(|i| i.service == "loadgen")
        .map(|i| i.outbound)
        .context("no loadgen")?;
    let generator = tokio::spawn(generate(
        client.clone(),
        loadgen,
        args.rate,
        traffic.clone(),
    ));
    let full_screen = !args.no_view && std::io::stdout().is_terminal();
    let footer = format!(
        "policy: {}  (edit routes.yaml: canary weights, failure drill)\n\
         weftctl: WEFT_SERVER=http://{} WEFT_ADMIN_TOKEN_FILE={} weftctl status\n\
         Ctrl-C stops everything\n",
        policy_dir.display(),
        cp.admin,
        cp.admin_token_file.display()
    );
    let viewer = view::View::new(
        client,
        instances.clone(),
        cp.hub.clone(),
        traffic,
        args.rate,
        footer,
    );
    let outcome = tokio::select! {
        r = viewer.run(full_screen) => r,
        r = stop.wait(args.duration) => r,
        why = watch_children(&mut children) => Err(anyhow::anyhow!("{why}; see the logs in {}", dir.display())),
    };
    generator.abort();
    let n = children.stop().await;
    drop(cp);
    println!("\nweft up stopped: {n} processes ended, control plane stopped.");
    if args.dir.is_some() {
        println!("files kept in {}", dir.display());
    }
    outcome
}

fn print_where(
    mode: &str,
    dir: &Path,
    policy_dir: &Path,
    cp: &Running,
    instances: &[Instance],
    prometheus: Option<SocketAddr>,
    temporary: bool,
) {
    println!(
        "weft up: a local mesh, {mode} (files in {}{})",
        dir.display(),
        if temporary { ", removed at exit" } else { "" }
    );
    println!(
        "  control plane  sidecars: {} (mTLS)   operator API: http://{}",
        cp.listen, cp.admin
    );
    println!(
        "  weftctl        export WEFT_SERVER=http://{} WEFT_ADMIN_TOKEN_FILE={}; weftctl status",
        cp.admin,
        cp.admin_token_file.display()
    );
    for i in instances {
        println!(
            "  {:<10} metrics: http://{}/metrics   app: {}   inbound (mTLS): {}",
            i.name, i.admin, i.app, i.inbound
        );
    }
    if let Some(p) = prometheus {
        println!("  prometheus     http://{p}  (Grafana: point a Prometheus data source here and import deploy/grafana/*.json)");
    }
    println!(
        "  policy         {}  (edit routes.yaml: the canary weights, the failure drill)",
        policy_dir.display()
    );
    println!(
        "  try            curl -H 'Host: frontend' http://{}/shop/7",
        instances
            .iter()
            .find(|i| i.service == "loadgen")
            .map_or_else(String::new, |i| i.outbound.to_string())
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn the_shipped_policy_is_valid() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, text) in POLICY {
            std::fs::write(dir.path().join(name), text).expect("write");
        }
        let source = weft_control_plane::policy::source::DirSource::new(dir.path());
        use weft_control_plane::policy::source::PolicySource as _;
        let policy = source.load().expect("the shop policy validates");
        let names: Vec<_> = policy.services().iter().map(|s| s.name.clone()).collect();
        assert_eq!(names.len(), 4, "{names:?}");
    }

    #[test]
    fn sidecar_configs_are_valid_sidecar_configs() {
        let mut ports = Ports::default();
        let instances = plan(&mut ports).expect("plan");
        let cp: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let text = sidecar_config(&instances[1], "http", cp, None);
        assert!(text.contains("labels: {version: v1}"), "{text}");
        let all: BTreeSet<u16> = instances
            .iter()
            .flat_map(|i| [i.admin, i.outbound, i.inbound, i.app])
            .map(|a| a.port())
            .collect();
        assert_eq!(all.len(), instances.len() * 4, "ports are distinct");
    }
}
