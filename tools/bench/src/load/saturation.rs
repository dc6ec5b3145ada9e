//! The closed loop: every connection sends its next request as soon as the last answered;
//! the saturation throughput.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::conn::*;
use super::window::*;

/// Settings of a saturation (closed-loop) run.
#[derive(Debug, Clone, Copy)]
pub struct SaturationConfig {
    /// Concurrent connections, each with one request in flight.
    pub connections: usize,
    /// Load before the measured window.
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
    /// How often to sample the watched processes' RSS.
    pub rss_interval: Duration,
}

/// Result of a saturation run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SaturationResult {
    /// Successful (200) responses completed in the measured window.
    pub requests: u64,
    /// Length of the measured window in seconds.
    pub seconds: f64,
    /// `requests / seconds`.
    pub rps: f64,
    /// Failed requests over the whole run (warm-up included).
    pub errors: u64,
    /// A few of the errors, as examples.
    pub error_samples: Vec<String>,
    /// CPU seconds each watched process used in the window.
    pub cpu_seconds: Vec<f64>,
    /// CPU seconds the load generator itself used in the window.
    pub loadgen_cpu_seconds: f64,
    /// Peak RSS (KiB) of each watched process, sampled during the run.
    pub peak_rss_kib: Vec<u64>,
    /// How busy each CPU was in the window (all processes, from
    /// `/proc/stat`), percent, indexed by CPU number.
    pub cpu_busy_pct: Vec<Option<f64>>,
    /// CPU seconds all other user-space processes on the machine used in
    /// the window (work that competes with the benchmark).
    pub others_cpu_seconds: f64,
    /// Times each watched process's threads were scheduled onto a CPU in the window (its
    /// wake-ups: `/proc/PID/task/*/schedstat`'s run count), where the load measures it.
    pub wakeups: Option<Vec<u64>>,
}
/// Runs the closed loop against `target`: `connections` tasks each send a
/// request, wait for the whole response and repeat, for warm-up + duration.
/// Measures CPU time of the processes in `watch` (and of this process) over
/// the window, and samples their RSS during the whole run.
pub async fn saturate(
    target: &Target,
    cfg: SaturationConfig,
    watch: &[u32],
) -> anyhow::Result<SaturationResult> {
    let counters = Arc::new(Counters::default());
    let start = Instant::now();
    let window_start = start + cfg.warmup;
    let stop = window_start + cfg.duration;

    let tasks: Vec<JoinHandle<()>> = (0..cfg.connections)
        .map(|_| {
            let (target, counters) = (target.clone(), counters.clone());
            tokio::spawn(async move {
                let work = async {
                    let mut conn = None;
                    let mut reconnects = 0;
                    for _ in 0..MAX_REQUESTS_PER_CONN {
                        if Instant::now() >= stop {
                            break;
                        }
                        one_request(&mut conn, &mut reconnects, &target, &counters).await;
                    }
                };
                if tokio::time::timeout_at(stop + GRACE, work).await.is_err() {
                    counters.error(|| "request still pending long after the run ended".into());
                }
            })
        })
        .collect();

    let Window {
        count: requests,
        cpu,
        peak_rss_kib,
    } = measure_window(
        watch,
        cfg.rss_interval,
        window_start,
        stop,
        &counters.ok,
        tasks,
    )
    .await?;
    Ok(SaturationResult {
        requests,
        seconds: cpu.seconds,
        rps: requests as f64 / cpu.seconds,
        errors: counters.errors.load(Ordering::Relaxed),
        error_samples: counters.samples(),
        cpu_seconds: cpu.procs,
        loadgen_cpu_seconds: cpu.own,
        peak_rss_kib,
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
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn saturation_counts_requests_and_errors() {
        let addr = server(10).await;
        let cfg = SaturationConfig {
            connections: 4,
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(300),
            rss_interval: Duration::from_millis(100),
        };
        let r = saturate(&target(addr), cfg, &[std::process::id()])
            .await
            .unwrap();
        assert!(r.requests > 0, "{r:?}");
        assert!(r.errors > 0, "{r:?}");
        assert!(r.error_samples[0].starts_with("status 500"), "{r:?}");
        assert!((r.seconds - 0.3).abs() < 0.1, "{r:?}");
        assert_eq!(r.cpu_seconds.len(), 1);
        assert!(r.peak_rss_kib[0] > 0, "{r:?}");
    }
    #[tokio::test]
    async fn dead_target_is_all_errors_and_bounded() {
        // Bind and drop to get a port nobody listens on.
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let cfg = SaturationConfig {
            connections: 2,
            warmup: Duration::from_millis(50),
            duration: Duration::from_millis(100),
            rss_interval: Duration::from_millis(100),
        };
        let r = saturate(&target(addr), cfg, &[]).await.unwrap();
        assert_eq!(r.requests, 0);
        assert!(r.errors > 0);
    }
}
