//! The observability scenario's driver: its pairs, verified, and every variant run in a
//! rotating order.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use weft_benches::load::{self, SaturationConfig, Target};
use weft_benches::mesh::{Binaries, Mesh};
use weft_benches::observability::{
    ObsConfig, ObsRun, ObsVariant, ObservabilityMesh, ObservabilityReport, PairLifetime,
};

use crate::args::Args;

/// Starts the trace collector and the observability scenario's pairs (into
/// `obs_mesh`, so the caller can still read their metrics and stderr): all
/// at once, or each right before each of its runs (`--obs-pairs`);
/// verifies each pair and runs, `--runs` times, every variant once
/// (saturation, same settings as the pair's), one at a time, in the rotating
/// order of [`ObsVariant::order`]. Returns their results.
// Long: one loop over runs and variants with each run's counting, load and progress line inline, in the order they happen.
pub async fn run_observability(
    args: &Args,
    dir: &Path,
    bins: &Binaries,
    mesh: &mut Mesh,
    obs_mesh: &mut Option<ObservabilityMesh>,
    request: &Arc<[u8]>,
    sat_cfg: SaturationConfig,
) -> anyhow::Result<ObservabilityReport> {
    let settle = Duration::from_millis(300);
    let lifetime = args.obs_pairs;
    eprintln!(
        "weft-bench: observability scenario: an OTLP/gRPC trace collector in this process (CPU {}); \
         a sidecar pair per variant ({}) in front of the app, {}",
        args.loadgen_core,
        ObsVariant::ALL.map(ObsVariant::label).join(", "),
        lifetime.describe()
    );
    let om = obs_mesh.insert(ObservabilityMesh::new(
        dir,
        bins,
        args.server_core,
        args.loadgen_core,
        mesh.app_addr.port(),
    )?);
    if lifetime == PairLifetime::Kept {
        for v in ObsVariant::ALL {
            om.start_pair(v).await?;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        for v in ObsVariant::ALL {
            om.verify(v).await?;
        }
        // Let the verification requests' spans and log lines out before the
        // first run counts.
        for v in ObsVariant::ALL {
            om.settle(v, Default::default(), (0, 0)).await?;
        }
        eprintln!(
            "weft-bench: verified: 200 through every pair; the app gets no traceparent without a collector, \
             an unsampled one at 0 %, a sampled one at 100 %"
        );
    }
    // The benchmark's own pair idles during these runs too.
    let idle_extra = [mesh.client_sidecar.pid(), mesh.app_sidecar.pid()];
    let cores = (args.loadgen_core, args.server_core);
    let mut runs: Vec<ObsRun> = Vec::new();
    for run in 1..=usize::from(args.runs) {
        for v in ObsVariant::order(run) {
            if lifetime == PairLifetime::PerRun {
                om.start_pair(v).await?;
            }
            // Counted from here: a fresh pair's verification request is part
            // of the run's requests, spans and log lines.
            let before = om.counters(v).await?;
            let collector_before = (om.collector.spans(), om.collector.requests());
            if lifetime == PairLifetime::PerRun {
                om.verify(v).await?;
            }
            let t = Target {
                addr: om.pair(v)?.outbound_addr,
                request: request.clone(),
            };
            let watch = om.watch(v, mesh.app.pid(), &idle_extra)?;
            let collector_cpu0 = om.collector.cpu_seconds().ok();
            let started = tokio::time::Instant::now();
            let sat = load::saturate(&t, sat_cfg, &watch).await?;
            let collector_cpu_pct = match (collector_cpu0, om.collector.cpu_seconds().ok()) {
                (Some(a), Some(b)) if v.exports_spans() => {
                    Some((b - a) / started.elapsed().as_secs_f64() * 100.0)
                }
                _ => None,
            };
            mesh.check_alive()?;
            om.check_alive()?;
            let telemetry = om.settle(v, before, collector_before).await?;
            let rec = ObsRun::new(run, v, sat, cores, collector_cpu_pct, telemetry);
            let tel = &rec.telemetry;
            eprintln!(
                "weft-bench: run {run}/{} observability {:<26} {:>8.0} req/s, pair CPU/100k {:.3}, idle sidecars {:.1} % CPU{}, errors {}",
                args.runs,
                v.label(),
                rec.saturation.rps,
                rec.pair_cpu_s_per_100k.unwrap_or(f64::NAN),
                rec.idle_sidecars_cpu_pct,
                if v.exports_spans() {
                    format!(
                        ", spans exported {} dropped {} received {}{}",
                        tel.spans_exported(),
                        tel.spans_dropped(),
                        tel.collector_spans,
                        if tel.accounted_for { "" } else { " (not all accounted for)" }
                    )
                } else {
                    String::new()
                },
                rec.saturation.errors,
            );
            let flagged = rec.flag();
            runs.push(rec);
            if let Some(flag) = flagged {
                eprintln!("weft-bench: flagged: {flag}");
                if lifetime == PairLifetime::PerRun {
                    // The pair ends now (and a restart overwrites its stderr): show it.
                    weft_benches::mesh::show_stderr(om.children());
                }
            }
            if lifetime == PairLifetime::PerRun {
                // The last run's counters stay in the temp dir.
                om.save_pair_metrics(v, dir).await;
                om.stop_pair(v);
            }
            tokio::time::sleep(settle).await;
        }
    }
    Ok(ObservabilityReport::new(
        ObsConfig {
            runs: usize::from(args.runs),
            connections: sat_cfg.connections,
            warmup_s: sat_cfg.warmup.as_secs_f64(),
            duration_s: sat_cfg.duration.as_secs_f64(),
            pair_lifetime: lifetime,
            processes: lifetime.describe().into(),
            collector: format!(
                "a real OTLP/gRPC collector in the benchmark process (tonic `TraceService`, decodes every \
                 export request and counts its spans) on its own thread pinned to the load generator's CPU {}",
                args.loadgen_core
            ),
            config_lines: om.config_lines.clone(),
        },
        runs,
    ))
}
