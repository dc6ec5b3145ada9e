//! The open loop at a fixed rate: each request sent at its scheduled time, latency measured
//! from that time (no coordinated omission).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::http1::Conn;
use crate::stats::{self, Percentiles};

use super::conn::*;
use super::window::*;

/// Settings of a fixed-rate (open-loop) latency run.
#[derive(Debug, Clone, Copy)]
pub struct RateConfig {
    /// Connections the requests are spread over (round robin).
    pub connections: usize,
    /// Total request rate, requests per second.
    pub rate: f64,
    /// Load before the measured window (latencies not recorded).
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
}

/// Result of a fixed-rate run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RateResult {
    /// The requested rate.
    pub rate: f64,
    /// Requests scheduled in the measured window.
    pub scheduled: u64,
    /// Of those, answered 200 (their latencies are recorded).
    pub ok: u64,
    /// Failed requests over the whole run (warm-up included).
    pub errors: u64,
    /// Scheduled requests never sent because the run's grace period ran out.
    pub missed: u64,
    /// `ok / duration`.
    pub achieved_rps: f64,
    /// Latency percentiles (from each request's scheduled send time).
    pub latency: Option<Percentiles>,
    /// A few of the errors, as examples.
    pub error_samples: Vec<String>,
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
    /// Times each watched process's threads were scheduled onto a CPU in the window (its
    /// wake-ups: `/proc/PID/task/*/schedstat`'s run count), where the load measures it.
    pub wakeups: Option<Vec<u64>>,
}

/// The scheduled send time of global request number `n` at `rate` per second.
pub fn slot_time(start: Instant, n: u64, rate: f64) -> Instant {
    start + Duration::from_secs_f64(n as f64 / rate)
}

/// Waits until `t` precisely: a timer sleep to shortly before, then yielding
/// to the runtime (which keeps polling I/O) until `t`.
pub async fn wait_until(t: Instant) {
    if let Some(early) = t.checked_sub(SPIN_BEFORE) {
        if early > Instant::now() {
            tokio::time::sleep_until(early).await;
        }
    }
    // Each iteration is at least one trip through the runtime; the bound is
    // far above what SPIN_BEFORE (plus timer lateness) needs.
    for _ in 0..10_000_000u32 {
        if Instant::now() >= t {
            return;
        }
        tokio::task::yield_now().await;
    }
}

/// Runs the open loop against `target`: requests are scheduled at fixed
/// intervals (`1 / rate`), spread round robin over `connections` keep-alive
/// connections. Latency is measured from each request's *scheduled* time, so
/// a stall that delays later requests counts against them too (no
/// coordinated omission). Measures the CPU use of the processes in `watch`
/// and of every CPU over the window.
// Long: one task per connection whose scheduled-send loop shares the run's counters and bounds; split, every piece would take the same captures.
pub async fn fixed_rate(
    target: &Target,
    cfg: RateConfig,
    watch: &[u32],
) -> anyhow::Result<RateResult> {
    anyhow::ensure!(
        cfg.rate > 0.0 && cfg.connections > 0,
        "rate and connections must be positive"
    );
    let counters = Arc::new(Counters::default());
    let missed = Arc::new(AtomicU64::new(0));
    let scheduled_in_window = Arc::new(AtomicU64::new(0));
    // Leave time for every connection to be opened before the first slot.
    let start = Instant::now() + Duration::from_millis(200);
    let window_start = start + cfg.warmup;
    let stop = window_start + cfg.duration;
    let n_conns = cfg.connections as u64;

    let tasks: Vec<JoinHandle<Histogram<u64>>> = (0..n_conns)
        .map(|i| {
            let (target, counters) = (target.clone(), counters.clone());
            let (missed, scheduled_in_window) = (missed.clone(), scheduled_in_window.clone());
            let rate = cfg.rate;
            tokio::spawn(async move {
                let mut hist = stats::latency_histogram();
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
                        one_request(&mut conn, &mut reconnects, &target, &counters),
                    )
                    .await;
                    match res {
                        Ok(Outcome::Ok) => {
                            if measured {
                                let ns = (Instant::now() - intended).as_nanos();
                                let ns = u64::try_from(ns).unwrap_or(u64::MAX).max(1);
                                // Values past the histogram's range are clamped.
                                hist.saturating_record(ns);
                            }
                        }
                        Ok(Outcome::Failed) => {}
                        Err(_) => {
                            counters
                                .error(|| "request still pending long after the run ended".into());
                            break;
                        }
                    }
                }
                hist
            })
        })
        .collect();

    tokio::time::sleep_until(window_start).await;
    let cpu0 = CpuSnapshot::take(watch)?;
    tokio::time::sleep_until(stop).await;
    let cpu = CpuSnapshot::take(watch)?.since(&cpu0);

    let mut hist = stats::latency_histogram();
    for t in tasks {
        hist.add(t.await?)?;
    }
    let ok = hist.len();
    Ok(RateResult {
        rate: cfg.rate,
        scheduled: scheduled_in_window.load(Ordering::Relaxed),
        ok,
        errors: counters.errors.load(Ordering::Relaxed),
        missed: missed.load(Ordering::Relaxed),
        achieved_rps: ok as f64 / cfg.duration.as_secs_f64(),
        latency: stats::percentiles(&hist),
        error_samples: counters.samples(),
        cpu_seconds: cpu.procs,
        loadgen_cpu_seconds: cpu.own,
        seconds: cpu.seconds,
        cpu_busy_pct: cpu.busy_pct,
        others_cpu_seconds: cpu.others,
        wakeups: None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::load::testing::{server, target};

    #[test]
    fn slots_are_evenly_spaced() {
        let start = Instant::now();
        assert_eq!(slot_time(start, 0, 2000.0), start);
        assert_eq!(
            slot_time(start, 1, 2000.0) - start,
            Duration::from_micros(500)
        );
        assert_eq!(
            slot_time(start, 2000, 2000.0) - start,
            Duration::from_secs(1)
        );
    }
    #[tokio::test]
    async fn fixed_rate_sends_the_scheduled_requests() {
        let addr = server(0).await;
        let cfg = RateConfig {
            connections: 4,
            rate: 400.0,
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(500),
        };
        let r = fixed_rate(&target(addr), cfg, &[std::process::id()])
            .await
            .unwrap();
        assert_eq!(r.cpu_seconds.len(), 1);
        assert!((r.seconds - 0.5).abs() < 0.1, "{r:?}");
        assert_eq!(r.errors, 0, "{r:?}");
        assert_eq!(r.missed, 0, "{r:?}");
        assert_eq!(r.scheduled, 200, "{r:?}");
        assert_eq!(r.ok, 200, "{r:?}");
        let lat = r.latency.unwrap();
        assert!(lat.p50_us < 50_000.0, "{lat:?}");
    }
}
