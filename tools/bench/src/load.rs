//! Load generation: a closed loop for saturation throughput and an open loop
//! (fixed request rate) for latency.
//!
//! Both run on the calling tokio runtime (meant to be a `current_thread`
//! runtime pinned to one core) with one task per connection, using the lean
//! client of [`crate::http1`]. Every loop is bounded in time and in count.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::http1::Conn;
use crate::procfs;
use crate::stats::{self, Percentiles};

/// Most requests one connection task sends in one run (a safety bound; the
/// time limit ends runs long before).
const MAX_REQUESTS_PER_CONN: u64 = 100_000_000;

/// Most times one connection task reconnects in one run.
const MAX_RECONNECTS: u32 = 1_000;

/// How long past the end of a run a connection may still be busy (one slow
/// request) before it is cut off and counted as an error.
const GRACE: Duration = Duration::from_secs(5);

/// How many error messages a run keeps as examples.
const ERROR_SAMPLES: usize = 5;

/// The open loop sleeps until this long before a request's scheduled time,
/// then yields in a loop until it is due (tokio timers have 1 ms granularity,
/// which would otherwise add up to 1 ms of phantom latency).
const SPIN_BEFORE: Duration = Duration::from_millis(2);

/// Where to send load and what to send.
#[derive(Debug, Clone)]
pub struct Target {
    /// The address to connect to.
    pub addr: SocketAddr,
    /// The complete request bytes, sent as is for every request.
    pub request: Arc<[u8]>,
}

/// Counters shared by the connection tasks of one run.
#[derive(Debug, Default)]
struct Counters {
    ok: AtomicU64,
    errors: AtomicU64,
    samples: Mutex<Vec<String>>,
}

impl Counters {
    fn error(&self, msg: impl FnOnce() -> String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut s) = self.samples.lock() {
            if s.len() < ERROR_SAMPLES {
                s.push(msg());
            }
        }
    }

    fn samples(&self) -> Vec<String> {
        self.samples.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Outcome of one request on a connection that may need reopening.
enum Outcome {
    Ok,
    Failed,
}

/// The open connection in `conn`, or a new one (at most [`MAX_RECONNECTS`]
/// per run); `None`, with the error counted, when connecting fails.
async fn ensure_conn<'a>(
    conn: &'a mut Option<Conn>,
    reconnects: &mut u32,
    target: &Target,
    counters: &Counters,
) -> Option<&'a mut Conn> {
    if conn.is_none() {
        if *reconnects >= MAX_RECONNECTS {
            counters.error(|| "too many reconnects".into());
            // Back off so a dead target does not turn into a hot loop.
            tokio::time::sleep(Duration::from_millis(10)).await;
            return None;
        }
        *reconnects += 1;
        match Conn::connect(target.addr).await {
            Ok(c) => *conn = Some(c),
            Err(e) => {
                counters.error(|| format!("connect {}: {e}", target.addr));
                tokio::time::sleep(Duration::from_millis(10)).await;
                return None;
            }
        }
    }
    conn.as_mut()
}

/// Sends one request on `conn`, (re)connecting first if needed, and counts
/// the result. Returns whether it succeeded with status 200.
async fn one_request(
    conn: &mut Option<Conn>,
    reconnects: &mut u32,
    target: &Target,
    counters: &Counters,
) -> Outcome {
    let Some(c) = ensure_conn(conn, reconnects, target, counters).await else {
        return Outcome::Failed;
    };
    let (outcome, reopen) = match c.request(&target.request).await {
        Ok(resp) if resp.status == 200 => (Outcome::Ok, false),
        Ok(resp) => {
            let status = resp.status;
            let body = String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)]).into_owned();
            counters.error(|| format!("status {status}: {body}"));
            (Outcome::Failed, false)
        }
        Err(e) => {
            counters.error(|| e.to_string());
            (Outcome::Failed, true)
        }
    };
    if reopen || c.is_closed() {
        *conn = None;
    }
    if matches!(outcome, Outcome::Ok) {
        counters.ok.fetch_add(1, Ordering::Relaxed);
    }
    outcome
}

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
}

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
    at: Instant,
    procs: Vec<f64>,
    own: f64,
    others: HashMap<u32, u64>,
    machine: Vec<procfs::CpuTimes>,
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
    })
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
}

/// The scheduled send time of global request number `n` at `rate` per second.
pub fn slot_time(start: Instant, n: u64, rate: f64) -> Instant {
    start + Duration::from_secs_f64(n as f64 / rate)
}

/// Waits until `t` precisely: a timer sleep to shortly before, then yielding
/// to the runtime (which keeps polling I/O) until `t`.
async fn wait_until(t: Instant) {
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
    })
}

/// Sends one request on `conn`, (re)connecting first if needed. Returns the
/// response status, or `None` (counted in `transport`) when no complete
/// response came back. Non-2xx answers are counted in `non_2xx` (with a few
/// examples), not as errors: they are what the caller measures.
async fn one_request_status(
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
struct Tally {
    /// Latency of every answered request (any status).
    all: Histogram<u64>,
    /// Latency of the 2xx answers.
    ok: Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

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

    /// A tiny keep-alive server answering every request with 200 or, for
    /// every `fail_every`-th request, 500.
    async fn server(fail_every: u64) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let count = Arc::new(AtomicU64::new(0));
            for _ in 0..64 {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let count = count.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut got = 0;
                    for _ in 0..1_000_000 {
                        let Ok(n) = s.read(&mut buf[got..]).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        got += n;
                        if buf[..got].ends_with(b"\r\n\r\n") {
                            got = 0;
                            let n = count.fetch_add(1, Ordering::Relaxed) + 1;
                            let resp: &[u8] = if n.checked_rem(fail_every) == Some(0) {
                                b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\n\r\nfail"
                            } else {
                                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"
                            };
                            if s.write_all(resp).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    fn target(addr: SocketAddr) -> Target {
        Target {
            addr,
            request: crate::http1::get_request("app", "/").into(),
        }
    }

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
