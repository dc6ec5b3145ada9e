//! The open loop that counts each answer's status (the failing-endpoint scenario): success
//! rate, 2xx per second, latency of all and of 2xx, and what got no answer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::http1::Conn;
use crate::stats::{self, Percentiles};

use super::conn::*;
use super::rate::*;
use super::window::*;

/// Sends one request on `conn`, (re)connecting first if needed. Returns the
/// response status, or `None` (counted in `transport`) when no complete
/// response came back. Non-2xx answers are counted in `non_2xx` (with a few
/// examples), not as errors: they are what the caller measures.
pub(crate) async fn one_request_status(
    conn: &mut Option<Conn>,
    reconnects: &mut u32,
    target: &Target,
    transport: &Counters,
    non_2xx: &Counters,
) -> Option<u16> {
    let c = ensure_conn(conn, reconnects, target, transport).await?;
    let (status, reopen) = match c.request(&target.request).await {
        Ok(resp) => {
            let status = resp.status;
            if !(200..300).contains(&status) {
                let body =
                    String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)]).into_owned();
                non_2xx.error(|| format!("status {status}: {body}"));
            }
            (Some(status), false)
        }
        Err(e) => {
            transport.error(|| e.to_string());
            (None, true)
        }
    };
    if reopen || c.is_closed() {
        *conn = None;
    }
    status
}

/// What one connection task of [`fixed_rate_statuses`] saw in the measured
/// window.
pub(crate) struct Tally {
    /// Latency of every answered request (any status).
    pub(crate) all: Histogram<u64>,
    /// Latency of the 2xx answers.
    pub(crate) ok: Histogram<u64>,
    pub(crate) statuses: BTreeMap<u16, u64>,
    pub(crate) transport_errors: u64,
}

/// Result of a fixed-rate run that expects some requests to fail
/// ([`fixed_rate_statuses`]). Counts are of the requests scheduled in the
/// measured window unless noted.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StatusRateResult {
    /// The requested rate.
    pub rate: f64,
    /// Requests scheduled in the measured window.
    pub scheduled: u64,
    /// Of those, answered with a 2xx status.
    pub ok_2xx: u64,
    /// Of those, answered at all (any status).
    pub answered: u64,
    /// Answers by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Of those, requests without a complete answer (connect or I/O error,
    /// malformed response, still pending long after the run).
    pub transport_errors: u64,
    /// Scheduled requests never sent because the run's grace period ran out
    /// (whole run).
    pub missed: u64,
    /// `ok_2xx / scheduled`: the client-visible success rate.
    pub success_rate: Option<f64>,
    /// `ok_2xx / duration`: successful requests per second.
    pub ok_rps: f64,
    /// Latency percentiles of every answered request (from each request's
    /// scheduled send time).
    pub latency: Option<Percentiles>,
    /// Latency percentiles of the 2xx answers only.
    pub latency_2xx: Option<Percentiles>,
    /// Transport errors over the whole run (warm-up included).
    pub transport_errors_total: u64,
    /// A few of the transport errors, as examples.
    pub error_samples: Vec<String>,
    /// Non-2xx answers over the whole run (warm-up included).
    pub non_2xx_total: u64,
    /// A few of the non-2xx answers, as examples.
    pub non_2xx_samples: Vec<String>,
    /// CPU seconds each watched process used in the measured window.
    pub cpu_seconds: Vec<f64>,
    /// CPU seconds the load generator itself used in the window.
    pub loadgen_cpu_seconds: f64,
    /// Length of the measured window in seconds (as timed for `cpu_seconds`).
    pub seconds: f64,
    /// How busy each CPU was in the window (all processes), percent.
    pub cpu_busy_pct: Vec<Option<f64>>,
    /// CPU seconds all other user-space processes on the machine used in
    /// the window.
    pub others_cpu_seconds: f64,
}

/// Like [`fixed_rate`], but for a target where some requests are expected to
/// fail: every answer is a result (counted by status), not an error. Latency
/// is recorded for every answered request and, separately, for the 2xx
/// ones, from each request's scheduled send time.
// Long: one task per connection whose send/receive loop shares the run's counters and bounds; split, every piece would take the same captures.
pub async fn fixed_rate_statuses(
    target: &Target,
    cfg: RateConfig,
    watch: &[u32],
) -> anyhow::Result<StatusRateResult> {
    anyhow::ensure!(
        cfg.rate > 0.0 && cfg.connections > 0,
        "rate and connections must be positive"
    );
    let transport = Arc::new(Counters::default());
    let non_2xx = Arc::new(Counters::default());
    let missed = Arc::new(AtomicU64::new(0));
    let scheduled_in_window = Arc::new(AtomicU64::new(0));
    // Leave time for every connection to be opened before the first slot.
    let start = Instant::now() + Duration::from_millis(200);
    let window_start = start + cfg.warmup;
    let stop = window_start + cfg.duration;
    let n_conns = cfg.connections as u64;

    let tasks: Vec<JoinHandle<Tally>> = (0..n_conns)
        .map(|i| {
            let (target, transport, non_2xx) = (target.clone(), transport.clone(), non_2xx.clone());
            let (missed, scheduled_in_window) = (missed.clone(), scheduled_in_window.clone());
            let rate = cfg.rate;
            tokio::spawn(async move {
                let mut tally = Tally {
                    all: stats::latency_histogram(),
                    ok: stats::latency_histogram(),
                    statuses: BTreeMap::new(),
                    transport_errors: 0,
                };
                let mut conn = None;
                let mut reconnects = 0;
                if let Ok(c) = Conn::connect(target.addr).await {
                    conn = Some(c);
                }
                for k in 0..MAX_REQUESTS_PER_CONN {
                    let intended = slot_time(start, i + k * n_conns, rate);
                    if intended >= stop {
                        break;
                    }
                    let measured = intended >= window_start;
                    if measured {
                        scheduled_in_window.fetch_add(1, Ordering::Relaxed);
                    }
                    if Instant::now() >= stop + GRACE {
                        // Hopelessly behind: count what is left as missed.
                        let left = (stop - intended).as_secs_f64() * rate / n_conns as f64;
                        missed.fetch_add(1 + left as u64, Ordering::Relaxed);
                        break;
                    }
                    wait_until(intended).await;
                    let deadline = stop + GRACE + GRACE;
                    let res = tokio::time::timeout_at(
                        deadline,
                        one_request_status(
                            &mut conn,
                            &mut reconnects,
                            &target,
                            &transport,
                            &non_2xx,
                        ),
                    )
                    .await;
                    match res {
                        Ok(Some(status)) => {
                            if measured {
                                let ns = (Instant::now() - intended).as_nanos();
                                let ns = u64::try_from(ns).unwrap_or(u64::MAX).max(1);
                                // Values past the histogram's range are clamped.
                                tally.all.saturating_record(ns);
                                if (200..300).contains(&status) {
                                    tally.ok.saturating_record(ns);
                                }
                                *tally.statuses.entry(status).or_insert(0) += 1;
                            }
                        }
                        Ok(None) => {
                            if measured {
                                tally.transport_errors += 1;
                            }
                        }
                        Err(_) => {
                            transport
                                .error(|| "request still pending long after the run ended".into());
                            if measured {
                                tally.transport_errors += 1;
                            }
                            break;
                        }
                    }
                }
                tally
            })
        })
        .collect();

    tokio::time::sleep_until(window_start).await;
    let cpu0 = CpuSnapshot::take(watch)?;
    tokio::time::sleep_until(stop).await;
    let cpu = CpuSnapshot::take(watch)?.since(&cpu0);

    let mut all = stats::latency_histogram();
    let mut ok = stats::latency_histogram();
    let mut statuses = BTreeMap::new();
    let mut transport_errors = 0;
    for t in tasks {
        let tally = t.await?;
        all.add(tally.all)?;
        ok.add(tally.ok)?;
        for (status, n) in tally.statuses {
            *statuses.entry(status).or_insert(0) += n;
        }
        transport_errors += tally.transport_errors;
    }
    let scheduled = scheduled_in_window.load(Ordering::Relaxed);
    Ok(StatusRateResult {
        rate: cfg.rate,
        scheduled,
        ok_2xx: ok.len(),
        answered: all.len(),
        statuses,
        transport_errors,
        missed: missed.load(Ordering::Relaxed),
        success_rate: stats::success_rate(ok.len(), scheduled),
        ok_rps: ok.len() as f64 / cfg.duration.as_secs_f64(),
        latency: stats::percentiles(&all),
        latency_2xx: stats::percentiles(&ok),
        transport_errors_total: transport.errors.load(Ordering::Relaxed),
        error_samples: transport.samples(),
        non_2xx_total: non_2xx.errors.load(Ordering::Relaxed),
        non_2xx_samples: non_2xx.samples(),
        cpu_seconds: cpu.procs,
        loadgen_cpu_seconds: cpu.own,
        seconds: cpu.seconds,
        cpu_busy_pct: cpu.busy_pct,
        others_cpu_seconds: cpu.others,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::load::testing::{server, target};
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn fixed_rate_statuses_counts_each_status() {
        // Every 4th answer is a 500.
        let addr = server(4).await;
        let cfg = RateConfig {
            connections: 4,
            rate: 400.0,
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(500),
        };
        let r = fixed_rate_statuses(&target(addr), cfg, &[std::process::id()])
            .await
            .unwrap();
        assert_eq!(r.scheduled, 200, "{r:?}");
        assert_eq!(r.transport_errors, 0, "{r:?}");
        assert_eq!(r.missed, 0, "{r:?}");
        assert_eq!(r.answered, 200, "{r:?}");
        assert_eq!(r.statuses.values().sum::<u64>(), 200, "{r:?}");
        assert_eq!(r.ok_2xx, r.statuses[&200], "{r:?}");
        // 240 requests in all (warm-up included), every 4th failed: 60; the
        // window saw its share of them.
        assert_eq!(r.non_2xx_total, 60, "{r:?}");
        let failed = r.statuses[&500];
        assert!((45..=55).contains(&failed), "{r:?}");
        assert!(r.non_2xx_samples[0].starts_with("status 500"), "{r:?}");
        let rate = r.success_rate.unwrap();
        assert!((rate - r.ok_2xx as f64 / 200.0).abs() < 1e-12, "{r:?}");
        assert!((r.ok_rps - r.ok_2xx as f64 / 0.5).abs() < 1e-9, "{r:?}");
        assert_eq!(r.latency.unwrap().count, 200);
        assert_eq!(r.latency_2xx.unwrap().count, r.ok_2xx);
        assert_eq!(r.error_samples.len(), 0);
    }

    #[tokio::test]
    async fn fixed_rate_statuses_against_a_dead_target() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let cfg = RateConfig {
            connections: 2,
            rate: 100.0,
            warmup: Duration::from_millis(50),
            duration: Duration::from_millis(200),
        };
        let r = fixed_rate_statuses(&target(addr), cfg, &[]).await.unwrap();
        assert_eq!(r.scheduled, 20, "{r:?}");
        assert_eq!(r.ok_2xx, 0);
        assert_eq!(r.transport_errors, 20, "{r:?}");
        assert_eq!(r.success_rate, Some(0.0));
        assert!(r.latency.is_none());
    }
}
