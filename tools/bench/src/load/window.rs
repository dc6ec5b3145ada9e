//! The measuring half of every load: the CPU counters of the watched processes, of this
//! process, of other processes and of every CPU at the window's edges, and their RSS
//! sampled throughout.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::procfs;

/// What a measured window saw.
pub struct Window {
    /// How much the counter grew inside the window.
    pub count: u64,
    /// CPU use inside the window.
    pub cpu: CpuDelta,
    /// Peak RSS (KiB) of each watched process over the whole run.
    pub peak_rss_kib: Vec<u64>,
}

/// The measuring half of every closed-loop run: sample the watched processes' RSS until
/// `stop`, read `counter` and the CPU counters at `window_start` and `stop`, then wait for the
/// load `tasks` to finish.
pub async fn measure_window(
    watch: &[u32],
    rss_interval: Duration,
    window_start: Instant,
    stop: Instant,
    counter: &AtomicU64,
    tasks: Vec<JoinHandle<()>>,
) -> anyhow::Result<Window> {
    let sampler = rss_sampler(watch, rss_interval, stop);
    tokio::time::sleep_until(window_start).await;
    let c0 = counter.load(Ordering::Relaxed);
    let cpu0 = CpuSnapshot::take(watch)?;
    tokio::time::sleep_until(stop).await;
    let c1 = counter.load(Ordering::Relaxed);
    let cpu = CpuSnapshot::take(watch)?.since(&cpu0);
    for t in tasks {
        t.await?;
    }
    Ok(Window {
        count: c1 - c0,
        cpu,
        peak_rss_kib: sampler.await?,
    })
}

/// CPU counters at one instant: of the watched processes, of this process,
/// of every other process and of every CPU.
pub(crate) struct CpuSnapshot {
    pub(crate) at: Instant,
    pub(crate) procs: Vec<f64>,
    pub(crate) own: f64,
    pub(crate) others: HashMap<u32, u64>,
    pub(crate) machine: Vec<procfs::CpuTimes>,
}

/// CPU use between two snapshots.
pub struct CpuDelta {
    /// Wall-clock seconds between the snapshots.
    pub seconds: f64,
    /// CPU seconds of each watched process.
    pub procs: Vec<f64>,
    /// CPU seconds of this process (the load generator).
    pub own: f64,
    /// CPU seconds of every other user-space process on the machine.
    pub others: f64,
    /// How busy each CPU was, percent.
    pub busy_pct: Vec<Option<f64>>,
}

impl CpuSnapshot {
    pub(crate) fn take(pids: &[u32]) -> anyhow::Result<Self> {
        let procs = pids
            .iter()
            .map(|&p| procfs::cpu_seconds(p))
            .collect::<Result<Vec<_>, _>>()?;
        let own_pid = std::process::id();
        let mut exclude = pids.to_vec();
        exclude.push(own_pid);
        Ok(CpuSnapshot {
            at: Instant::now(),
            procs,
            own: procfs::cpu_seconds(own_pid)?,
            others: procfs::other_processes_cpu_ticks(&exclude)?,
            machine: procfs::cpu_times()?,
        })
    }

    pub(crate) fn since(&self, earlier: &CpuSnapshot) -> CpuDelta {
        CpuDelta {
            seconds: (self.at - earlier.at).as_secs_f64(),
            procs: self
                .procs
                .iter()
                .zip(&earlier.procs)
                .map(|(b, a)| b - a)
                .collect(),
            own: self.own - earlier.own,
            others: procfs::other_cpu_ticks_between(&earlier.others, &self.others) as f64
                / procfs::clock_ticks_per_second() as f64,
            busy_pct: procfs::busy_pct(&earlier.machine, &self.machine),
        }
    }
}
/// Samples the RSS of `pids` every `interval` until `stop` (bounded by the
/// run's length); the task's result is each process's peak, KiB.
pub(crate) fn rss_sampler(pids: &[u32], interval: Duration, stop: Instant) -> JoinHandle<Vec<u64>> {
    let pids = pids.to_vec();
    let interval = interval.max(Duration::from_millis(10));
    tokio::spawn(async move {
        let mut peaks = vec![0u64; pids.len()];
        let mut tick = tokio::time::interval(interval);
        let max_ticks = (stop - Instant::now()).as_millis() / interval.as_millis() + 2;
        for _ in 0..max_ticks {
            tick.tick().await;
            if Instant::now() > stop {
                break;
            }
            for (peak, &pid) in peaks.iter_mut().zip(&pids) {
                if let Ok(rss) = procfs::rss_kib(pid) {
                    *peak = (*peak).max(rss);
                }
            }
        }
        peaks
    })
}
