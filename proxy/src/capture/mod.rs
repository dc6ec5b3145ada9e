//! `weft-proxy init`: transparent capture for a pod, as linkerd-init and istio-init do it.
//! Run once in the pod's network namespace before the app starts (on Kubernetes, an init
//! container with `NET_ADMIN` and `NET_RAW` only); it redirects the pod's TCP into the sidecar:
//! outbound connections from every UID but the sidecar's to the outbound listener, inbound
//! connections to the inbound mTLS listener. The sidecar reads a redirected connection's
//! original destination (`SO_ORIGINAL_DST`) to pick the service (see
//! `outbound::original_dst`).
//!
//! Why nftables (the `nft` command) and not iptables: a ruleset file is applied in one
//! transaction (no window with half the rules), the rules live in a table of their own
//! (`inet weft`, both IPv4 and IPv6) so capture never reads, reorders or deletes anyone else's
//! rules, and removing capture is deleting that table. Kernels since 5.2 support NAT in the
//! `inet` family; iptables-nft on current distributions writes nftables underneath anyway.
//!
//! CNI-free trade-off: no node-level plugin is needed, but every pod carries an init step with
//! `NET_ADMIN` (docs/KUBERNETES.md, "Transparent capture").

pub mod rules;

use std::io::Write as _;
use std::process::{Command, Stdio};

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
    /// `nft` could not be started.
    #[error("cannot run {program}: {source} (install nftables)")]
    Spawn {
        /// The program run.
        program: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// `nft` refused the ruleset or failed.
    #[error("{program} failed ({status}): {stderr}")]
    Nft {
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
    /// Delete table `inet weft` (and nothing else) and exit; no error if it is absent.
    #[arg(long, conflicts_with = "proxy_uid")]
    pub remove: bool,
    /// Print the nftables script instead of loading it.
    #[arg(long)]
    pub dry_run: bool,
    /// The nft program.
    #[arg(long, default_value = "nft", value_name = "PATH")]
    pub nft: String,
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

    /// The script this invocation loads.
    pub fn script(&self) -> Result<String, CaptureError> {
        if self.remove {
            return Ok(rules::remove_script());
        }
        Ok(self.plan()?.script())
    }
}

/// Runs `init`: loads (or with `--dry-run` prints) the script; returns what was loaded.
pub fn run(args: &InitArgs) -> Result<String, CaptureError> {
    let script = args.script()?;
    if args.dry_run {
        return Ok(script);
    }
    load(&args.nft, &script)?;
    Ok(script)
}

/// Feeds `script` to `nft -f -`: one transaction, all or nothing.
pub fn load(nft: &str, script: &str) -> Result<(), CaptureError> {
    let spawn = |source| CaptureError::Spawn {
        program: nft.to_owned(),
        source,
    };
    let mut child = Command::new(nft)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(spawn)?;
        // Dropped here: nft reads to the end of its input before it applies anything.
    }
    let out = child.wait_with_output().map_err(spawn)?;
    if out.status.success() {
        return Ok(());
    }
    Err(CaptureError::Nft {
        program: nft.to_owned(),
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
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
    fn a_missing_nft_says_so() {
        let err = load("/nonexistent/nft", "").expect_err("no such program");
        assert!(err.to_string().contains("install nftables"), "{err}");
    }
}
