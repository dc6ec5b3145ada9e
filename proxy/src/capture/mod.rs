//! `weft-proxy init`: transparent capture for a pod, as linkerd-init and istio-init do it.
//! Run once in the pod's network namespace before the app starts (on Kubernetes, an init
//! container with `NET_ADMIN` and `NET_RAW` only); it redirects the pod's TCP into the sidecar:
//! outbound connections from every UID but the sidecar's to the outbound listener, inbound
//! connections to the inbound mTLS listener. The sidecar reads a redirected connection's
//! original destination (`SO_ORIGINAL_DST`) to pick the service (see
//! `outbound::original_dst`).
//!
//! Two backends, one set of rules (`--backend`): nftables (the `nft` command; `rules.rs`) and
//! iptables (`iptables-restore`; `iptables.rs`). nftables is preferred: a ruleset file is
//! applied in one transaction for both IPv4 and IPv6, and the rules live in a table of their own
//! (`inet weft`) so capture never reads, reorders or deletes anyone else's rules, and removing
//! capture is deleting that table. But NAT in the `inet` family needs Linux 5.2, and some nodes
//! have only the iptables tools; there iptables does the same with chains of Weft's own
//! (`WEFT_*`) in table `nat`, one `iptables-restore --noflush` transaction per family.
//! `--backend auto` (the default) asks the kernel whether it accepts an `inet` NAT chain
//! (`nft --check`: nothing is loaded) and takes iptables when it does not.
//!
//! CNI-free trade-off: no node-level plugin is needed, but every pod carries an init step with
//! `NET_ADMIN` (docs/KUBERNETES.md, "Transparent capture").

mod exec;
pub mod iptables;
pub mod rules;

use iptables::{Current, Family};
use rules::{Cidr, Plan, PortRange};

/// Why `init` failed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// `--proxy-uid` is needed to set capture up.
    #[error(
        "--proxy-uid is required (the sidecar's UID; its own connections are never redirected)"
    )]
    NoProxyUid,
    /// The two listener ports are the same.
    #[error("--outbound-port and --inbound-port must differ (both {0})")]
    SamePorts(u16),
    /// A loader (`nft`, `iptables-restore`, `iptables-save`) could not be started.
    #[error("cannot run {program}: {source} (install {package})")]
    Spawn {
        /// The program run.
        program: String,
        /// The Debian package that has it.
        package: &'static str,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A loader refused the rules or failed.
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        /// The program run.
        program: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
}

/// Options of `weft-proxy init` (its help text is on the subcommand, in main.rs).
#[derive(clap::Args, Debug, Clone)]
pub struct InitArgs {
    /// UID the sidecar runs as; its connections are never redirected.
    #[arg(long, value_name = "UID", required_unless_present = "remove")]
    pub proxy_uid: Option<u32>,
    /// The sidecar's outbound listener port (on 127.0.0.1).
    #[arg(long, default_value_t = 15001, value_name = "PORT")]
    pub outbound_port: u16,
    /// The sidecar's inbound mTLS listener port (on the pod IP or 0.0.0.0).
    #[arg(long, default_value_t = 15006, value_name = "PORT")]
    pub inbound_port: u16,
    /// Destination ports (or ranges a-b) whose outbound connections are not captured,
    /// comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "PORTS")]
    pub outbound_skip_ports: Vec<PortRange>,
    /// Destination networks (CIDR) whose outbound connections are not captured.
    #[arg(long, value_delimiter = ',', value_name = "CIDRS")]
    pub outbound_skip_cidrs: Vec<Cidr>,
    /// Local ports (or ranges) whose inbound connections are not captured: health probes,
    /// metrics scrapes. These reach the app in plaintext, around mTLS.
    #[arg(long, value_delimiter = ',', value_name = "PORTS")]
    pub inbound_skip_ports: Vec<PortRange>,
    /// Source networks (CIDR) whose inbound connections are not captured.
    #[arg(long, value_delimiter = ',', value_name = "CIDRS")]
    pub inbound_skip_cidrs: Vec<Cidr>,
    /// Also capture connections over the loopback interface (by default they are left
    /// alone; destinations in 127.0.0.0/8 and ::1 are never captured).
    #[arg(long)]
    pub capture_loopback: bool,
    /// Leave outbound connections alone.
    #[arg(long)]
    pub no_outbound: bool,
    /// Leave inbound connections alone.
    #[arg(long)]
    pub no_inbound: bool,
    /// Delete capture's rules (and nothing else) and exit; no error if there are none. With
    /// `--backend auto`, both backends' rules go (table `inet weft`, chains `WEFT_*`), each
    /// where its tools are installed.
    #[arg(long, conflicts_with = "proxy_uid")]
    pub remove: bool,
    /// Print the script(s) instead of loading them (iptables: computed from the current
    /// rules when they can be read, else for a namespace without Weft's rules).
    #[arg(long)]
    pub dry_run: bool,
    /// Which rules to write: `nftables` (table `inet weft`), `iptables` (chains `WEFT_*` in
    /// table `nat`, IPv4 and IPv6), or `auto`: nftables when the kernel accepts NAT in the
    /// `inet` family (Linux 5.2+) and `nft` is installed, else iptables.
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    pub backend: Backend,
    /// The nft program.
    #[arg(long, default_value = "nft", value_name = "PATH")]
    pub nft: String,
    /// The iptables variant: `iptables` (the system's choice), `iptables-nft`,
    /// `iptables-legacy`, or a path to one; `-restore`/`-save` and `ip6tables` are derived.
    #[arg(long, default_value = "iptables", value_name = "NAME", value_parser = iptables_variant)]
    pub iptables: String,
}

/// `--iptables`: the file name must start with `iptables`, since the IPv6 tools' names are
/// derived from it (`iptables-legacy` → `ip6tables-legacy-restore`).
fn iptables_variant(s: &str) -> Result<String, String> {
    let file = s.rsplit('/').next().unwrap_or(s);
    if file.starts_with("iptables") {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?}: expected iptables, iptables-nft, iptables-legacy or a path to one"
        ))
    }
}

/// `--backend`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// nftables where the kernel can, else iptables.
    Auto,
    /// Table `inet weft`, loaded by `nft`.
    Nftables,
    /// Chains `WEFT_*` in table `nat`, loaded by `iptables-restore` and `ip6tables-restore`.
    Iptables,
}

impl InitArgs {
    /// The validated plan.
    pub fn plan(&self) -> Result<Plan, CaptureError> {
        let proxy_uid = self.proxy_uid.ok_or(CaptureError::NoProxyUid)?;
        if self.outbound_port == self.inbound_port {
            return Err(CaptureError::SamePorts(self.outbound_port));
        }
        Ok(Plan {
            proxy_uid,
            outbound_port: self.outbound_port,
            inbound_port: self.inbound_port,
            outbound_skip_ports: self.outbound_skip_ports.clone(),
            outbound_skip_cidrs: self.outbound_skip_cidrs.clone(),
            inbound_skip_ports: self.inbound_skip_ports.clone(),
            inbound_skip_cidrs: self.inbound_skip_cidrs.clone(),
            capture_loopback: self.capture_loopback,
            outbound: !self.no_outbound,
            inbound: !self.no_inbound,
        })
    }

    /// The nftables script this invocation loads with `--backend nftables`.
    pub fn script(&self) -> Result<String, CaptureError> {
        if self.remove {
            return Ok(rules::remove_script());
        }
        Ok(self.plan()?.script())
    }
}

/// What `run` did: the backend it used and the script(s) it loaded (or would load).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `nftables` or `iptables` (or both, for `--remove` with `auto`).
    pub backends: Vec<Backend>,
    /// The scripts, each headed by a `#` line naming its loader.
    pub script: String,
}

impl Outcome {
    /// One line for the operator: what is now in place.
    pub fn summary(&self, remove: bool) -> String {
        let what: Vec<&str> = self
            .backends
            .iter()
            .map(|b| match b {
                Backend::Iptables => "iptables chains WEFT_* (table nat, IPv4 and IPv6)",
                _ => "nftables table inet weft",
            })
            .collect();
        let verb = if remove { "removed" } else { "loaded" };
        if what.is_empty() {
            return "no capture rules to remove (neither nft nor iptables is installed)".into();
        }
        format!("{} {verb}", what.join(" and "))
    }
}

/// The nftables script `auto` tries with `nft --check`: the kernel validates it (an `inet`
/// NAT chain needs Linux 5.2) and the transaction is aborted, so nothing is left behind.
const PROBE: &str =
    "add table inet weft_probe\nadd chain inet weft_probe p { type nat hook output priority -100; }\n";

/// Whether nftables can carry capture here: `nft` installed and the kernel accepting an
/// `inet` NAT chain.
pub fn nftables_usable(nft: &str) -> bool {
    exec::pipe(nft, &["--check", "-f", "-"], PROBE, "nftables").is_ok()
}

/// Runs `init`: loads (or with `--dry-run` only computes) the rules; returns what it did.
pub fn run(args: &InitArgs) -> Result<Outcome, CaptureError> {
    let plan = if args.remove {
        None
    } else {
        Some(args.plan()?)
    };
    let backends = match (args.backend, args.remove) {
        (Backend::Auto, false) if nftables_usable(&args.nft) => vec![Backend::Nftables],
        (Backend::Auto, false) => vec![Backend::Iptables],
        // Removal takes what either backend left, where its tools exist (a node may have
        // changed kernels, or a pod image its tools, since the rules were loaded).
        (Backend::Auto, true) => {
            let mut found = Vec::new();
            if exec::present(&args.nft) {
                found.push(Backend::Nftables);
            }
            if exec::present(&Family::V4.program(&args.iptables, "-save")) {
                found.push(Backend::Iptables);
            }
            found
        }
        (b, _) => vec![b],
    };
    let mut script = String::new();
    for backend in &backends {
        match backend {
            Backend::Iptables => script.push_str(&run_iptables(args, plan.as_ref())?),
            _ => {
                let text = args.script()?;
                if !args.dry_run {
                    load(&args.nft, &text)?;
                }
                script.push_str(&format!("# {} -f -\n{text}", args.nft));
            }
        }
    }
    Ok(Outcome { backends, script })
}

/// Whether this machine (this network namespace's kernel) has IPv6: without it there is no
/// IPv6 nat table to write, and ip6tables-restore would fail.
fn ipv6_enabled() -> bool {
    std::path::Path::new("/proc/net/if_inet6").exists()
}

/// The iptables backend: per family, read the nat table, compute the script that takes it to
/// `plan` (or to no Weft rules), and load it in one `--noflush` transaction.
fn run_iptables(args: &InitArgs, plan: Option<&Plan>) -> Result<String, CaptureError> {
    let mut shown = String::new();
    for family in Family::ALL {
        if family == Family::V6 && !ipv6_enabled() {
            continue;
        }
        let save = family.program(&args.iptables, "-save");
        let restore = family.program(&args.iptables, "-restore");
        let current = match exec::pipe(&save, &["-t", "nat"], "", "iptables") {
            Ok(text) => Current::parse(&text),
            // A dry run needs no privileges: it shows the script for a clean namespace.
            Err(_) if args.dry_run => Current::default(),
            Err(e) => return Err(e),
        };
        let Some(text) = iptables::script(plan, family, &current) else {
            continue;
        };
        if !args.dry_run {
            exec::pipe(&restore, &["--noflush"], &text, "iptables")?;
        }
        shown.push_str(&format!("# {restore} --noflush\n{text}"));
    }
    Ok(shown)
}

/// Feeds `script` to `nft -f -`: one transaction, all or nothing.
pub fn load(nft: &str, script: &str) -> Result<(), CaptureError> {
    exec::pipe(nft, &["-f", "-"], script, "nftables").map(drop)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        init: InitArgs,
    }

    fn parse(args: &[&str]) -> Result<InitArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("init").chain(args.iter().copied())).map(|c| c.init)
    }

    #[test]
    fn options_parse_into_a_plan() {
        let a = parse(&[
            "--proxy-uid",
            "2102",
            "--outbound-skip-ports",
            "443,9000-9100",
            "--inbound-skip-cidrs",
            "10.0.0.0/8",
        ])
        .expect("args");
        let p = a.plan().expect("plan");
        assert_eq!(
            (p.proxy_uid, p.outbound_port, p.inbound_port),
            (2102, 15001, 15006)
        );
        assert_eq!(p.outbound_skip_ports.len(), 2);
        assert!(p.inbound && p.outbound && !p.capture_loopback);
    }

    #[test]
    fn bad_values_and_missing_uid_are_refused() {
        assert!(parse(&[]).is_err(), "--proxy-uid is required");
        assert!(parse(&["--proxy-uid", "1", "--outbound-skip-ports", "x"]).is_err());
        assert!(parse(&["--proxy-uid", "1", "--inbound-skip-cidrs", "10.0.0.0/40"]).is_err());
        let same = parse(&[
            "--proxy-uid",
            "1",
            "--outbound-port",
            "7",
            "--inbound-port",
            "7",
        ])
        .expect("args");
        assert!(matches!(same.plan(), Err(CaptureError::SamePorts(7))));
        let remove = parse(&["--remove"]).expect("remove needs no uid");
        assert_eq!(remove.script().expect("script"), rules::remove_script());
    }

    #[test]
    fn backends_parse_and_auto_falls_back_to_iptables_without_nft() {
        let a = parse(&["--proxy-uid", "1", "--backend", "iptables"]).expect("args");
        assert_eq!(a.backend, Backend::Iptables);
        assert!(parse(&["--proxy-uid", "1", "--backend", "ipchains"]).is_err());
        assert!(parse(&["--proxy-uid", "1", "--iptables", "/usr/sbin/xtables"]).is_err());
        assert!(parse(&[
            "--proxy-uid",
            "1",
            "--iptables",
            "/usr/sbin/iptables-legacy"
        ])
        .is_ok());
        // No nft here: auto takes iptables. The dry run cannot read the (absent) iptables
        // tools either, so it shows the script for a namespace without Weft's rules.
        let a = parse(&[
            "--proxy-uid",
            "7",
            "--dry-run",
            "--nft",
            "/nonexistent/nft",
            "--iptables",
            "/nonexistent/iptables",
        ])
        .expect("args");
        let out = run(&a).expect("dry run");
        assert_eq!(out.backends, [Backend::Iptables]);
        assert!(out
            .script
            .starts_with("# /nonexistent/iptables-restore --noflush\n*nat\n"));
        assert!(out
            .script
            .contains("-A WEFT_OUTBOUND -m owner --uid-owner 7 -j RETURN"));
        assert!(out.summary(false).starts_with("iptables chains WEFT_*"));
        // Removal with auto and neither tool installed: nothing to do, and it says so.
        let r = parse(&[
            "--remove",
            "--nft",
            "/nonexistent/nft",
            "--iptables",
            "/nonexistent/iptables",
        ])
        .expect("args");
        let out = run(&r).expect("nothing to remove");
        assert!(out.backends.is_empty() && out.script.is_empty());
        // An explicit backend whose tool is missing is an error that names the package.
        let e = parse(&[
            "--remove",
            "--backend",
            "iptables",
            "--iptables",
            "/x/iptables",
        ])
        .expect("args");
        let err = run(&e).expect_err("missing iptables-save");
        assert!(err.to_string().contains("install iptables"), "{err}");
    }

    #[test]
    fn a_missing_nft_says_so() {
        let err = load("/nonexistent/nft", "").expect_err("no such program");
        assert!(err.to_string().contains("install nftables"), "{err}");
    }
}
