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

/// `--version`: the crate version and how the binary was optimised, so a benchmark report can
/// name the build it measured: profile-guided (`scripts/build-pgo` sets `WEFT_PGO` at compile
/// time) and BOLT-rewritten (found in the executable itself, because BOLT runs after the link).
fn version() -> String {
    let pgo = option_env!("WEFT_PGO").is_some();
    let bolt = std::env::current_exe()
        .ok()
        .and_then(|exe| elf_has_section(&exe, BOLT_NOTE).ok())
        .unwrap_or(false);
    let build = match (pgo, bolt) {
        (true, true) => " (profile-guided build, BOLT-optimised)",
        (true, false) => " (profile-guided build)",
        (false, true) => " (BOLT-optimised)",
        (false, false) => "",
    };
    format!("{}{build}", env!("CARGO_PKG_VERSION"))
}

/// The note section LLVM BOLT adds to every binary it rewrites.
const BOLT_NOTE: &str = ".note.bolt_info";

/// Whether the object file at `path` has a section called `name`; `Ok(false)` for a file that
/// is not one. Reads only the headers it needs, not the whole file.
fn elf_has_section(path: &std::path::Path, name: &str) -> std::io::Result<bool> {
    use object::{Object, ObjectSection};
    let cache = object::ReadCache::new(std::fs::File::open(path)?);
    Ok(object::File::parse(&cache)
        .is_ok_and(|file| file.sections().any(|s| s.name().is_ok_and(|n| n == name))))
}

/// Weft sidecar proxy.
#[derive(Parser, Debug)]
#[command(about, disable_version_flag = true, subcommand_negates_reqs = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Sidecar config file (YAML).
    #[arg(long, short, required_unless_present = "version")]
    config: Option<PathBuf>,
    /// Print the version and how the binary was optimised, and exit.
    // Our own flag, not clap's: the answer reads the executable, which only this flag should
    // pay for, not every start-up.
    #[arg(long, short = 'V')]
    version: bool,
    /// Take the config's text from this environment variable and write it to the --config
    /// path first (Kubernetes injection: the kubelet expands `$(VAR)` references in it, and
    /// the path lies in a writable emptyDir).
    #[arg(long, value_name = "NAME")]
    config_env: Option<String>,
    /// Once every listener is bound, write their addresses (JSON: `outbound`, `inbound`,
    /// `admin`, `metrics`, `pid`) to this file; with port 0 in `listen`, the kernel's choice.
    #[arg(long, value_name = "PATH")]
    ready_file: Option<PathBuf>,
    /// Validate the config and its certificates, print the result, and exit.
    #[arg(long)]
    check: bool,
    /// Gateway mode: also serve the edge listeners and routes of this gateway file (YAML,
    /// docs/CONFIG.md "Gateway"); the --config file gives the gateway its identity and mesh.
    #[arg(long, value_name = "PATH")]
    gateway: Option<PathBuf>,
    /// Gateway mode with the config from the control plane: the Gateway API Gateway
    /// (`<namespace>/<name>`, in this proxy's own namespace) whose config the control plane
    /// sends on the stream. Each one that checks out is put in force and kept as the --gateway
    /// file (a restart without the control plane serves it); with no file yet, the start
    /// waits for the first.
    #[arg(long, value_name = "NAMESPACE/NAME", requires = "gateway")]
    gateway_name: Option<String>,
}

/// Subcommands beside running the sidecar.
#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Redirect this network namespace's TCP into the sidecar (transparent capture).
    ///
    /// Like linkerd-init / istio-init, run once per pod before the app starts: outbound TCP
    /// from every UID but --proxy-uid goes to the outbound listener, inbound TCP to the
    /// inbound mTLS listener. Only the nftables table `inet weft` is written (or, with
    /// --backend iptables or on kernels without inet NAT, chains WEFT_* in table nat), in
    /// one atomic transaction (per family for iptables); running it again leaves the same
    /// ruleset; --remove deletes only what capture added.
    /// Needs CAP_NET_ADMIN and CAP_NET_RAW, nothing else. See docs/KUBERNETES.md,
    /// "Transparent capture".
    Init(weft_proxy::capture::InitArgs),
}

/// `weft-proxy init`: prints the script(s) with `--dry-run`, else loads them and says so.
fn init(args: &weft_proxy::capture::InitArgs) -> anyhow::Result<()> {
    let outcome = weft_proxy::capture::run(args)?;
    if args.dry_run {
        print!("{}", outcome.script);
    } else {
        println!("weft-proxy init: {}", outcome.summary(args.remove));
    }
    Ok(())
}

/// `weft-proxy --config-env NAME`: write the config text held in env var `name` to `path`
/// (mode 0600, atomically) before anything reads `path`. On Kubernetes the injector puts the
/// sidecar's config in an env var, where the kubelet expands `$(POD_NAMESPACE)` and the like,
/// and `path` lies in a writable emptyDir (the root filesystem is read-only); relative paths
/// in the config then resolve against that directory, as for any config file. Every later
/// reader (bootstrap, the store, reloads) keeps reading a plain file.
fn write_from_env(name: &str, path: &std::path::Path) -> Result<(), String> {
    let text = std::env::var(name).map_err(|e| format!("env var {name}: {e}"))?;
    if text.trim().is_empty() {
        return Err(format!("env var {name} is empty"));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    weft_proxy::store::write_atomically(path, text.as_bytes(), 0o600)
        .map_err(|e| format!("writing {}: {e}", path.display()))
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
    if let Some(Cmd::Init(init_args)) = &args.command {
        return init(init_args);
    }
    if args.version {
        println!("{} {}", env!("CARGO_PKG_NAME"), version());
        return Ok(());
    }
    // clap enforces it (`required_unless_present`); this only keeps the types honest.
    let Some(config) = args.config.clone() else {
        anyhow::bail!("--config is required");
    };
    if let Some(name) = &args.config_env {
        if let Err(e) = write_from_env(name, &config) {
            eprintln!("--config-env: {e}");
            std::process::exit(2);
        }
    }
    // Before the store opens: a sidecar with a join token and no usable certificate obtains
    // one from the control plane first (see `weft_proxy::identity::certify`).
    if !args.check {
        if let Err(e) = weft_proxy::identity::bootstrap::bootstrap_if_needed(&config) {
            eprintln!("{}: cannot start: {e}", config.display());
            std::process::exit(3);
        }
    }
    let metrics = weft_proxy::telemetry::metrics::Metrics::new().context("metrics registry")?;
    let store = match weft_proxy::store::Store::open(&config, metrics) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    gateway_first_start(&args, &store, &config);
    let gateway = match &args.gateway {
        Some(path) => match load_gateway(path, &store) {
            Ok(gw) => Some(weft_proxy::gateway::listener::GatewayFile {
                path: path.clone(),
                config: Arc::new(gw),
                name: args.gateway_name.clone(),
            }),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(2);
            }
        },
        None => None,
    };
    if args.check {
        let snap = store.load();
        println!(
            "{}: ok: service {} ({}), {} destination(s)",
            config.display(),
            snap.own.name,
            snap.tls.identity,
            snap.routes.destinations.len()
        );
        return Ok(());
    }
    // On Kubernetes the sidecar is a native sidecar (an init container with `restartPolicy:
    // Always`): the kubelet sends it SIGTERM only after the app containers have exited, so a
    // Job's pod completes without the app having to stop the proxy.
    weft_proxy::app::run_with(store, args.ready_file.as_deref(), gateway).context("sidecar failed")
}

/// Before the gateway file loads: with `--gateway-name`, check the name, and with no gateway
/// file yet wait for the Gateway's first config from the control plane; in control-plane
/// mode, wait for the first snapshot (the mesh services the file's routes name). Exits 2 on a
/// bad name, 3 on a failed wait (`weft_proxy::gateway::first`).
fn gateway_first_start(
    args: &Args,
    store: &Arc<weft_proxy::store::Store>,
    config: &std::path::Path,
) {
    let Some(path) = &args.gateway else {
        return;
    };
    if let Some(name) = &args.gateway_name {
        if let Err(e) = weft_proxy::gateway::remote::check_name(name) {
            eprintln!("{e}");
            std::process::exit(2);
        }
    }
    if args.check {
        return;
    }
    let cannot_start = |e: anyhow::Error| {
        eprintln!("{}: cannot start: {e:#}", config.display());
        std::process::exit(3)
    };
    if let Some(name) = &args.gateway_name {
        if !path.exists() {
            log::info!(
                "no gateway file {} yet: waiting for Gateway {name}'s config from the control plane",
                path.display()
            );
            if let Err(e) = weft_proxy::gateway::first::fetch(store, name, path) {
                cannot_start(e);
            }
        }
    }
    if let Err(e) = weft_proxy::gateway::first::snapshot(store) {
        cannot_start(e);
    }
}

/// The gateway file at `path`, checked against the mesh services in force (the sidecar
/// file's, or the control plane's last good snapshot's).
fn load_gateway(
    path: &std::path::Path,
    store: &weft_proxy::store::Store,
) -> Result<weft_policy::gateway::Gateway, String> {
    let services = store.mesh_services().map_err(|e| e.to_string())?;
    weft_policy::gateway::load(path, &services).map_err(|e| e.to_string())
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

    #[test]
    fn init_needs_no_config() {
        let args = Args::try_parse_from(["weft-proxy", "init", "--proxy-uid", "2102"])
            .expect("init parses without --config");
        assert!(matches!(args.command, Some(Cmd::Init(ref i)) if i.proxy_uid == Some(2102)));
        assert!(
            Args::try_parse_from(["weft-proxy", "init"]).is_err(),
            "uid required"
        );
    }

    #[test]
    fn bolt_note_is_found_by_section_name() {
        let exe = std::env::current_exe().expect("exe");
        // Every ELF executable the toolchain links has a .text section; this test binary was
        // not rewritten by BOLT.
        assert!(elf_has_section(&exe, ".text").expect("read"));
        assert!(!elf_has_section(&exe, BOLT_NOTE).expect("read"));
        assert!(
            !elf_has_section(&exe, ".tex").expect("read"),
            "whole names only"
        );
        let dir = tempfile::tempdir().expect("tmp");
        let not_elf = dir.path().join("script");
        std::fs::write(&not_elf, "#!/bin/sh\n".repeat(10)).expect("write");
        assert!(!elf_has_section(&not_elf, ".text").expect("read"));
        assert!(elf_has_section(&dir.path().join("absent"), ".text").is_err());
        assert!(version().starts_with(env!("CARGO_PKG_VERSION")));
    }

    #[test]
    fn config_from_env_is_written_and_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run/config.yaml");
        let text = "service:\n  name: orders.shop\n  identity: spiffe://weft.local/ns/shop/sa/orders\n  \
                    app: 127.0.0.1:8080\ntls:\n  cert: cert.pem\n  key: key.pem\n  trust_bundle: ca.crt\n";
        // A name no other test uses: the environment is shared by the test threads.
        std::env::set_var("WEFT_TEST_CONFIG_ENV_7F3A", text);
        write_from_env("WEFT_TEST_CONFIG_ENV_7F3A", &path).expect("write");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), text);
        let raw: weft_policy::wire::ConfigFile = serde_yaml::from_str(text).expect("parse");
        assert_eq!(raw.service.name, "orders.shop");
        assert!(write_from_env("WEFT_TEST_CONFIG_ENV_MISSING_7F3A", &path)
            .expect_err("missing")
            .contains("WEFT_TEST_CONFIG_ENV_MISSING_7F3A"));
    }
}
