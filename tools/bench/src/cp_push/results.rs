//! The push scenario's results: each policy change's ACK times ([`ChangeSample`]), each
//! run per sidecar count ([`SizeRun`]), their medians ([`SizeSummary`]) and the whole
//! [`CpPushReport`]. [`crate::report`] writes its Markdown.

use serde::Serialize;

use crate::stats::median;

use super::policy::*;

/// One policy change at one sidecar count.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeSample {
    /// Which change (from 1).
    pub change: usize,
    /// The v2 weight written.
    pub canary: u32,
    /// Time from the rename to each sidecar's ACK of its new version: median, ms.
    pub p50_ms: f64,
    /// 99th percentile (nearest rank), ms.
    pub p99_ms: f64,
    /// The last sidecar, ms.
    pub max_ms: f64,
    /// The fastest sidecar, ms (the directory poll's share shows here).
    pub min_ms: f64,
    /// Until the control plane's metrics showed all N in sync again (polled every 20 ms), ms.
    pub cp_in_sync_ms: Option<f64>,
}

/// One run at one sidecar count, against a fresh control plane.
#[derive(Debug, Clone, Serialize)]
pub struct SizeRun {
    /// Run number (from 1).
    pub run: usize,
    /// Simulated sidecars.
    pub sidecars: usize,
    /// Control plane's VmRSS before any sidecar connected, KiB.
    pub empty_rss_kib: u64,
    /// One pod added, after the policy changes.
    pub endpoint_change: EndpointChange,
    /// From the first connect until the control plane reported all connected and in sync, s.
    pub connect_s: f64,
    /// From the first connect until every sidecar held a snapshot, s.
    pub first_snapshot_s: f64,
    /// Snapshots the sidecars received during the storm (each ACKed), in all.
    pub storm_snapshots: usize,
    /// Control plane's VmRSS with N idle streams, KiB.
    pub idle_rss_kib: u64,
    /// Its VmHWM then (the storm's peak), KiB.
    pub idle_hwm_kib: u64,
    /// VmRSS after the last change was ACKed, KiB.
    pub after_rss_kib: u64,
    /// VmHWM then, KiB.
    pub after_hwm_kib: u64,
    /// The changes.
    pub changes: Vec<ChangeSample>,
}

/// Medians over the runs (and changes) of one sidecar count.
#[derive(Debug, Clone, Serialize)]
pub struct SizeSummary {
    /// Simulated sidecars.
    pub sidecars: usize,
    /// Runs.
    pub runs: usize,
    /// Median connect-storm time, s.
    pub connect_s: Option<f64>,
    /// Medians over all changes of all runs, ms.
    pub p50_ms: Option<f64>,
    /// "
    pub p99_ms: Option<f64>,
    /// "
    pub max_ms: Option<f64>,
    /// The largest max of any change, ms.
    pub worst_max_ms: Option<f64>,
    /// Median idle VmRSS, MiB.
    pub idle_rss_mib: Option<f64>,
    /// Median VmRSS after the changes, MiB.
    pub after_rss_mib: Option<f64>,
    /// Largest VmHWM seen, MiB.
    pub peak_hwm_mib: Option<f64>,
    /// Median (idle VmRSS - VmRSS with no sidecar) / sidecars, KiB.
    pub kib_per_sidecar: Option<f64>,
    /// The endpoint change of the first run.
    pub endpoint_change: Option<EndpointChange>,
}

impl SizeSummary {
    pub(crate) fn of(sidecars: usize, runs: &[&SizeRun]) -> Self {
        let changes: Vec<&ChangeSample> = runs.iter().flat_map(|r| &r.changes).collect();
        let mib = |k: u64| k as f64 / 1024.0;
        let med = |f: &dyn Fn(&ChangeSample) -> f64| {
            median(&changes.iter().map(|c| f(c)).collect::<Vec<_>>())
        };
        SizeSummary {
            sidecars,
            runs: runs.len(),
            connect_s: median(&runs.iter().map(|r| r.connect_s).collect::<Vec<_>>()),
            p50_ms: med(&|c| c.p50_ms),
            p99_ms: med(&|c| c.p99_ms),
            max_ms: med(&|c| c.max_ms),
            worst_max_ms: changes.iter().map(|c| c.max_ms).reduce(f64::max),
            idle_rss_mib: median(&runs.iter().map(|r| mib(r.idle_rss_kib)).collect::<Vec<_>>()),
            after_rss_mib: median(
                &runs
                    .iter()
                    .map(|r| mib(r.after_rss_kib))
                    .collect::<Vec<_>>(),
            ),
            peak_hwm_mib: runs.iter().map(|r| mib(r.after_hwm_kib)).reduce(f64::max),
            kib_per_sidecar: median(
                &runs
                    .iter()
                    .map(|r| {
                        r.idle_rss_kib.saturating_sub(r.empty_rss_kib) as f64
                            / sidecars.max(1) as f64
                    })
                    .collect::<Vec<_>>(),
            ),
            endpoint_change: runs.first().map(|r| r.endpoint_change.clone()),
        }
    }

    /// Whether this count met the targets: the worst change ACKed by all within
    /// [`TARGET_ACK`], and the RSS per connected sidecar under [`TARGET_KIB_PER_SIDECAR`].
    pub fn meets_targets(&self) -> bool {
        self.worst_max_ms
            .is_some_and(|m| m <= TARGET_ACK.as_secs_f64() * 1000.0)
            && self
                .kib_per_sidecar
                .is_some_and(|k| k <= TARGET_KIB_PER_SIDECAR)
    }
}

/// The whole result.
#[derive(Debug, Clone, Serialize)]
pub struct CpPushReport {
    /// Services in the policy.
    pub services: usize,
    /// Runs per sidecar count.
    pub runs: usize,
    /// Changes per run.
    pub changes: usize,
    /// How the control plane ran.
    pub control_plane: String,
    /// How the sidecars ran.
    pub sidecars: String,
    /// This process's open-files limit: soft before, soft after raising, hard.
    pub nofile_limit: (u64, u64, u64),
    /// Every run.
    pub results: Vec<SizeRun>,
    /// Per sidecar count.
    pub summary: Vec<SizeSummary>,
}

/// What one endpoint change cost.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointChange {
    /// Sidecars that call the changed service (subscribed to it); with full snapshots, every
    /// sidecar whose snapshot lists it.
    pub receivers: usize,
    /// `Endpoints` messages the control plane sent, and their bytes (gRPC framing included).
    pub endpoints_messages: u64,
    /// "
    pub endpoints_bytes: u64,
    /// Snapshots sent, and their bytes (the new pod's own first snapshot included).
    pub snapshot_messages: u64,
    /// "
    pub snapshot_bytes: u64,
    /// From the new sidecar's start until the last receiver ACKed, ms.
    pub all_acked_ms: f64,
}
