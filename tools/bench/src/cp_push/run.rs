//! Running the push scenario: a real `weft-control-plane` ([`ControlPlane`]) per sidecar
//! count and run, a fleet connected to it, policy changes and the time until every sidecar
//! has ACKed each.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::time::Instant;
use weft_certs::{CertificateAuthority, Identity};

use super::control_plane::ControlPlane;
use super::fleet::*;
use super::policy::*;
use super::results::*;

/// One run at `n` sidecars against a fresh control plane.
// Long: one sidecar count's run in order: the connect storm, the idle memory, then each policy change and its ACKs.
pub(crate) async fn run_size(
    cfg: &CpPushConfig,
    dir: &Path,
    run: usize,
    n: usize,
    tls: &[Arc<ClientConfig>],
    server_name: &ServerName<'static>,
) -> anyhow::Result<SizeRun> {
    let mut cp = ControlPlane::start(cfg, dir, &format!("cp-{n}-{run}")).await?;
    let pid = cp.child.pid();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // No sidecar yet.
    let (empty_rss_kib, _) = rss_hwm_kib(pid)?;

    // Connect storm.
    let started = Instant::now();
    let fleet = Fleet::spawn((0, n), cp.listen, tls, server_name, (cfg.by_service, true));
    let deadline = started + STORM_TIMEOUT;
    let connect_s = loop {
        fleet.check()?;
        cp.child.check_alive()?;
        // A control plane busy with the storm may answer /metrics late: not yet, not an error.
        if cp.sidecars().await.ok() == Some((n, n)) && fleet.all_have_one().is_some() {
            break started.elapsed().as_secs_f64();
        }
        if Instant::now() >= deadline {
            let (c, s) = cp.sidecars().await.unwrap_or_default();
            bail!("connect storm of {n}: after {STORM_TIMEOUT:?} {c} connected, {s} in sync");
        }
        tokio::time::sleep(POLL).await;
    };
    let first_snapshot_s = fleet
        .all_have_one()
        .map_or(f64::NAN, |t| (t - started).as_secs_f64());
    // Quiet: still all in sync, nothing new received for a while.
    let mut received = fleet.received();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = fleet.received();
        if now == received {
            break;
        }
        received = now;
    }
    cp.wait_in_sync(n, Duration::from_secs(10)).await?;
    fleet.check()?;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (idle_rss_kib, idle_hwm_kib) = rss_hwm_kib(pid)?;

    let mut changes = Vec::new();
    for k in 1..=cfg.changes {
        let before = fleet.versions();
        let canary = canary_of_change(k);
        write_atomically(&cp.policy_dir, ROUTES_FILE, &to_yaml(&routes_file(canary))?)?;
        let t0 = Instant::now();
        let limit = t0 + CHANGE_TIMEOUT;
        let mut cp_in_sync_ms = None;
        let acked = loop {
            fleet.check()?;
            cp.child.check_alive()?;
            let acked = fleet.acked_new(&before, t0);
            if acked.iter().all(Option::is_some) {
                break acked;
            }
            if Instant::now() >= limit {
                bail!(
                    "change {k} at {n} sidecars: after {CHANGE_TIMEOUT:?} only {} ACKed it",
                    acked.iter().flatten().count()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        // The control plane's view (it must agree: all in sync again).
        let (c, s) = cp.sidecars().await?;
        if (c, s) == (n, n) {
            cp_in_sync_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
        } else {
            cp.wait_in_sync(n, Duration::from_secs(10)).await?;
        }
        let mut ms: Vec<f64> = acked
            .iter()
            .flatten()
            .map(|t| (*t - t0).as_secs_f64() * 1000.0)
            .collect();
        ms.sort_by(f64::total_cmp);
        let sample = ChangeSample {
            change: k,
            canary,
            p50_ms: quantile(&ms, 0.5).unwrap_or(f64::NAN),
            p99_ms: quantile(&ms, 0.99).unwrap_or(f64::NAN),
            max_ms: ms.last().copied().unwrap_or(f64::NAN),
            min_ms: ms.first().copied().unwrap_or(f64::NAN),
            cp_in_sync_ms,
        };
        eprintln!(
            "weft-bench: cp-push run {run} n={n} change {k}: ACK p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (min {:.0} ms)",
            sample.p50_ms, sample.p99_ms, sample.max_ms, sample.min_ms
        );
        changes.push(sample);
        // Let the next change start from a quiet control plane.
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let (after_rss_kib, after_hwm_kib) = rss_hwm_kib(pid)?;
    let endpoint_change =
        super::endpoint_change::measure(cfg, &mut cp, &fleet, n, tls, server_name).await?;
    eprintln!(
        "weft-bench: cp-push run {run} n={n} one pod added: {} receivers, {} Endpoints ({} B), {} snapshots ({} B), all ACKed in {:.0} ms",
        endpoint_change.receivers,
        endpoint_change.endpoints_messages,
        endpoint_change.endpoints_bytes,
        endpoint_change.snapshot_messages,
        endpoint_change.snapshot_bytes,
        endpoint_change.all_acked_ms
    );
    let storm_snapshots = received;
    drop(fleet);
    drop(cp);
    Ok(SizeRun {
        run,
        sidecars: n,
        empty_rss_kib,
        endpoint_change,
        connect_s,
        first_snapshot_s,
        storm_snapshots,
        idle_rss_kib,
        idle_hwm_kib,
        after_rss_kib,
        after_hwm_kib,
        changes,
    })
}

/// One run's figures on stderr, as the run goes.
fn log_size_run(run: usize, n: usize, r: &SizeRun) {
    eprintln!(
        "weft-bench: cp-push run {run} n={n}: connect storm {:.2} s (all hold a snapshot at {:.2} s, {} snapshots), \
         CP RSS idle {:.1} MiB (HWM {:.1}), after {:.1} MiB (HWM {:.1})",
        r.connect_s,
        r.first_snapshot_s,
        r.storm_snapshots,
        r.idle_rss_kib as f64 / 1024.0,
        r.idle_hwm_kib as f64 / 1024.0,
        r.after_rss_kib as f64 / 1024.0,
        r.after_hwm_kib as f64 / 1024.0,
    );
}

/// Runs the whole scenario in `dir` (CA, policies, the control plane's state and stderr).
pub async fn run(
    cfg: &CpPushConfig,
    dir: &Path,
    nofile: (u64, u64, u64),
) -> anyhow::Result<CpPushReport> {
    ensure!(
        cfg.binary.is_file(),
        "{} not found; build it first: cargo build --release -p weft-control-plane -p weft-benches",
        cfg.binary.display()
    );
    let max = cfg.sidecars.iter().copied().max().unwrap_or(0);
    ensure!(
        u64::try_from(max).unwrap_or(u64::MAX).saturating_add(64) <= nofile.1,
        "{max} sidecars need more open files than RLIMIT_NOFILE allows ({})",
        nofile.1
    );
    let ca = CertificateAuthority::generate(TRUST_DOMAIN, Duration::from_secs(24 * 3600))?;
    std::fs::write(dir.join("ca.crt"), ca.cert_pem())?;
    std::fs::write(dir.join("ca.key"), ca.key_pem())?;
    let tls = (0..SERVICES)
        .map(|i| client_tls(&ca, i))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cp_id = Identity::new(TRUST_DOMAIN, "weft-system", "control-plane")?;
    let server_name = ServerName::try_from(cp_id.dns_name())?;

    let mut results = Vec::new();
    for run in 1..=cfg.runs {
        for &n in &cfg.sidecars {
            eprintln!(
                "weft-bench: cp-push run {run}/{} with {n} sidecars",
                cfg.runs
            );
            let r = run_size(cfg, dir, run, n, &tls, &server_name).await?;
            log_size_run(run, n, &r);
            results.push(r);
            // Let the last run's sockets close before the next storm.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let mut by_size: BTreeMap<usize, Vec<&SizeRun>> = BTreeMap::new();
    for r in &results {
        by_size.entry(r.sidecars).or_default().push(r);
    }
    let summary = cfg
        .sidecars
        .iter()
        .filter_map(|n| by_size.get(n).map(|runs| SizeSummary::of(*n, runs)))
        .collect();
    Ok(CpPushReport {
        services: SERVICES,
        runs: cfg.runs,
        changes: cfg.changes,
        control_plane: format!(
            "the real weft-control-plane binary ({}), pinned to CPU {} with taskset, RUST_LOG=info, \
             operator-supplied CA root (--ca-cert/--ca-key), policy directory polled every 250 ms; a fresh one per sidecar count and run",
            cfg.binary.display(),
            cfg.server_core
        ),
        sidecars: format!(
            "simulated in this process (pinned to CPU {}), one task each on one runtime thread, each its own real \
             TCP connection + TLS 1.3 (a workload certificate per service) + tonic weft.control.v1 stream (none \
             multiplexed); Hello with a unique 127.0.0.x:port endpoint, every Snapshot and Endpoints ACKed at once; {}",
            cfg.client_core,
            if cfg.by_service {
                format!("endpoints by service: each announces endpoints-by-service and subscribes to the {CALLS} services after its own")
            } else {
                "full snapshots (no capability announced)".to_owned()
            }
        ),
        nofile_limit: nofile,
        results,
        summary,
    })
}
