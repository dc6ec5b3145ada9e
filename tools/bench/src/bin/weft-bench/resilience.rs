//! The resilience scenarios' driver: their processes, verified, the healthy-path runs and
//! the failing-endpoint runs.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use weft_benches::load::{self, RateConfig, SaturationConfig, Target};
use weft_benches::mesh::{Binaries, Mesh};
use weft_benches::resilience::{
    Balancer, FailRun, HealthyRun, Policies, ResilienceConfig, ResilienceMesh, ResilienceReport,
    Variant, ENDPOINTS, FAIL_STATUS,
};

use crate::args::Args;

/// Starts the resilience scenarios' processes (into `res_mesh`, so the
/// caller can still show their stderr), verifies them and runs, `--runs`
/// times: the healthy path without and with policies (saturation, through
/// the pair's sidecar B and app), then every failing-endpoint variant (open
/// loop). Returns their results.
// Long: the two scenarios' run loops (healthy path, then failing endpoint) with their progress lines, in run order.
#[allow(clippy::too_many_arguments)]
pub async fn run_resilience(
    args: &Args,
    bins: &Binaries,
    dir: &Path,
    mesh: &mut Mesh,
    res_mesh: &mut Option<ResilienceMesh>,
    request: &Arc<[u8]>,
    sat_cfg: SaturationConfig,
    fail_cfg: RateConfig,
) -> anyhow::Result<ResilienceReport> {
    let settle = Duration::from_millis(300);
    eprintln!(
        "weft-bench: starting the resilience scenarios' processes: {ENDPOINTS} app instances (one failing \
         with {FAIL_STATUS}) with their sidecars, 6 client-side sidecars (healthy path and failing \
         endpoint, without/with policies; the latter with P2C and round robin)"
    );
    let rm = res_mesh.insert(
        ResilienceMesh::start(dir, bins, args.server_core, mesh.app_inbound, FAIL_STATUS).await?,
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = rm.verify(FAIL_STATUS).await?;
    let seen: Vec<String> = seen
        .iter()
        .map(|(k, names)| format!("{k}: {}", names.join(" ")))
        .collect();
    eprintln!(
        "weft-bench: verified: healthy path 200 without and with policies; answering through the \
         failing-endpoint sidecars without policies: {}",
        seen.join("; ")
    );

    let mut fail_runs = Vec::new();
    let mut healthy_runs = Vec::new();
    for run in 1..=usize::from(args.runs) {
        // Healthy path: the pair with the other outbound configs.
        for policies in Policies::order(run) {
            let t = Target {
                addr: rm.healthy(policies).outbound_addr,
                request: request.clone(),
            };
            let watch = [
                mesh.app.pid(),
                rm.healthy(policies).child.pid(),
                mesh.app_sidecar.pid(),
            ];
            let sat = load::saturate(&t, sat_cfg, &watch).await?;
            mesh.check_alive()?;
            rm.check_alive()?;
            let rec = HealthyRun::new(run, policies, sat);
            eprintln!(
                "weft-bench: run {run}/{} healthy path {:<16} {:>8.0} req/s, errors {}",
                args.runs,
                policies.label(),
                rec.saturation.rps,
                rec.saturation.errors,
            );
            if let Some(flag) = rec.flag() {
                eprintln!("weft-bench: flagged: {flag}");
            }
            healthy_runs.push(rec);
            tokio::time::sleep(settle).await;
        }
        // One of three endpoints fails.
        for variant in Variant::order(run) {
            let t = Target {
                addr: rm.failing(variant).outbound_addr,
                request: request.clone(),
            };
            let r = load::fixed_rate_statuses(&t, fail_cfg, &rm.failing_watch(variant)).await?;
            rm.check_alive()?;
            let rec = FailRun::new(run, variant, r);
            let r = &rec.result;
            eprintln!(
                "weft-bench: run {run}/{} one endpoint failing, {:<31} success {:>7.3} %, {:>6.0} 2xx/s, p50 {} µs, p99 {} µs, no answer {}",
                args.runs,
                variant.label(),
                r.success_rate.map_or(f64::NAN, |x| x * 100.0),
                r.ok_rps,
                r.latency.map_or(f64::NAN, |p| p.p50_us).round(),
                r.latency.map_or(f64::NAN, |p| p.p99_us).round(),
                r.transport_errors_total + r.missed,
            );
            if let Some(flag) = rec.flag() {
                eprintln!("weft-bench: flagged: {flag}");
            }
            fail_runs.push(rec);
            tokio::time::sleep(settle).await;
        }
    }
    let mut r = ResilienceReport::new(
        ResilienceConfig {
            endpoints: ENDPOINTS,
            failing_endpoints: 1,
            fail_status: FAIL_STATUS,
            load: "open loop (fixed rate)".into(),
            rate: fail_cfg.rate,
            connections: fail_cfg.connections,
            warmup_s: fail_cfg.warmup.as_secs_f64(),
            duration_s: fail_cfg.duration.as_secs_f64(),
            healthy_connections: sat_cfg.connections,
            healthy_duration_s: sat_cfg.duration.as_secs_f64(),
            balancers: Balancer::ALL.to_vec(),
            services_yaml: rm.services_yaml.clone(),
        },
        fail_runs,
        healthy_runs,
    );
    r.sidecar_metrics = rm.metrics(dir).await;
    Ok(r)
}
