//! One load loop for every protocol the comparison drives: a [`Client`] makes one request
//! (plain HTTP/1.1, HTTP/1.1 over TLS, or a gRPC unary call) and the loops run lanes of them,
//! closed ([`closed_loop`]: saturation) or open ([`open_loop`]: a fixed rate, latency from
//! each request's scheduled time, so a stall counts against every request it delays).
//!
//! Both loops measure the watched processes' CPU over the window (every thread's on-CPU
//! nanoseconds and wake-ups from /proc, [`sched`]) and sample their RSS with
//! [`measure_window`]; every loop is bounded in time and in count.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use weft_benches::http1::{parse_head, Conn, MAX_RESPONSE};
use weft_benches::load::{
    measure_window, slot_time, wait_until, RateResult, SaturationResult, Window,
};
use weft_benches::stats;
use weft_samples::grpc::EchoClient;

use crate::load::{grpc_call, grpc_client};

/// Most requests one lane makes in one run (a safety bound; the time limit ends runs first).
const MAX_CALLS_PER_LANE: u64 = 100_000_000;

/// How long past the end of a run a lane may still be busy before it is cut off (counted as
/// an error).
const GRACE: Duration = Duration::from_secs(5);

/// How many error messages a run keeps as examples.
const ERROR_SAMPLES: usize = 5;

/// What one lane sends: where, and over which protocol.
#[derive(Clone)]
pub enum Kind {
    /// HTTP/1.1 keep-alive, plain; `request` is sent as is.
    Http {
        /// Where.
        addr: SocketAddr,
        /// The complete request bytes.
        request: Arc<[u8]>,
    },
    /// HTTP/1.1 keep-alive over TLS (the edge of the gateway scenario).
    Https {
        /// Where.
        addr: SocketAddr,
        /// The complete request bytes.
        request: Arc<[u8]>,
        /// The client's TLS settings and the server name it verifies.
        tls: TlsConnector,
        /// The name in SNI and in the certificate.
        name: rustls::pki_types::ServerName<'static>,
    },
    /// gRPC unary Echo calls, prior-knowledge HTTP/2.
    Grpc {
        /// Where.
        addr: SocketAddr,
        /// HTTP/2 connections the lanes share (round robin).
        channels: usize,
    },
}

/// A lane's connection: one request at a time.
pub enum Client {
    /// Plain HTTP/1.1 (reopened after a failure).
    Http(Option<Conn>),
    /// HTTP/1.1 over TLS (reopened after a failure).
    Https(Option<Box<TlsStream<TcpStream>>>, Box<[u8]>),
    /// A gRPC channel (tonic reconnects by itself).
    Grpc(EchoClient<tonic::transport::Channel>),
}

/// `lanes` clients of `kind`, connected (a connection failure here fails the run).
pub async fn clients(kind: &Kind, lanes: usize) -> anyhow::Result<Vec<Client>> {
    anyhow::ensure!(lanes > 0, "lanes must be positive");
    let mut out = Vec::with_capacity(lanes);
    match kind {
        Kind::Grpc { addr, channels } => {
            let mut chans = Vec::new();
            for _ in 0..(*channels).clamp(1, lanes) {
                chans.push(grpc_client(*addr).await?);
            }
            for i in 0..lanes {
                out.push(Client::Grpc(chans[i % chans.len()].clone()));
            }
        }
        _ => {
            for _ in 0..lanes {
                let mut c = match kind {
                    Kind::Http { .. } => Client::Http(None),
                    _ => Client::Https(None, vec![0u8; MAX_RESPONSE].into_boxed_slice()),
                };
                c.connect(kind).await?;
                out.push(c);
            }
        }
    }
    Ok(out)
}

impl Client {
    /// Opens the connection if it is not open.
    async fn connect(&mut self, kind: &Kind) -> anyhow::Result<()> {
        let connect = |addr: SocketAddr| async move {
            let s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
                .await
                .context("connect timed out")??;
            s.set_nodelay(true)?;
            Ok::<_, anyhow::Error>(s)
        };
        match (self, kind) {
            (Client::Http(c @ None), Kind::Http { addr, .. }) => {
                *c = Some(Conn::connect(*addr).await?);
            }
            (
                Client::Https(c @ None, _),
                Kind::Https {
                    addr, tls, name, ..
                },
            ) => {
                let tcp = connect(*addr).await?;
                let s =
                    tokio::time::timeout(Duration::from_secs(5), tls.connect(name.clone(), tcp))
                        .await
                        .context("TLS handshake timed out")??;
                *c = Some(Box::new(s));
            }
            _ => {}
        }
        Ok(())
    }

    /// One request; fails unless it is answered 200 (HTTP) or echoed (gRPC). After a failure
    /// the connection is dropped and the next call opens a new one.
    pub async fn call(&mut self, kind: &Kind) -> anyhow::Result<()> {
        if let Client::Grpc(c) = self {
            return grpc_call(c).await;
        }
        self.connect(kind).await?;
        let res = match (&mut *self, kind) {
            (Client::Http(Some(c)), Kind::Http { request, .. }) => match c.request(request).await {
                Ok(r) if r.status == 200 => Ok(c.is_closed()),
                Ok(r) => Err(anyhow::anyhow!("status {}", r.status)),
                Err(e) => Err(e.into()),
            },
            (Client::Https(Some(s), buf), Kind::Https { request, .. }) => {
                s.write_all(request).await?;
                read_response(s, buf).await
            }
            _ => bail!("a client of another kind"),
        };
        if !matches!(res, Ok(false)) {
            match self {
                Client::Http(c) => *c = None,
                Client::Https(c, _) => *c = None,
                Client::Grpc(_) => {}
            }
        }
        res.map(|_| ())
    }
}

/// Reads one response into `buf` (bounded by its size); `Ok(close)` for a 200 with its whole
/// body, `close` when the server asked to close.
async fn read_response<S: AsyncRead + Unpin>(s: &mut S, buf: &mut [u8]) -> anyhow::Result<bool> {
    let (mut filled, mut scanned) = (0usize, 0usize);
    // Each iteration reads at least one byte into the bounded buffer.
    let head = loop {
        anyhow::ensure!(filled < buf.len(), "response over {} bytes", buf.len());
        let n = s.read(&mut buf[filled..]).await?;
        anyhow::ensure!(n > 0, "connection closed mid-response");
        filled += n;
        match parse_head(&buf[..filled], scanned)? {
            Some(h) => break h,
            None => scanned = filled,
        }
    };
    let total = head
        .head_len
        .checked_add(head.content_length)
        .filter(|&t| t <= buf.len())
        .context("response too large")?;
    while filled < total {
        let n = s.read(&mut buf[filled..total]).await?;
        anyhow::ensure!(n > 0, "connection closed mid-body");
        filled += n;
    }
    anyhow::ensure!(filled == total, "bytes after the response");
    anyhow::ensure!(head.status == 200, "status {}", head.status);
    Ok(head.close)
}

/// What the scheduler counted for every thread of `pid`, from `/proc/PID/task/*/schedstat`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sched {
    /// On-CPU time in seconds (the first field, nanoseconds): exact, where `/proc/PID/stat`'s
    /// utime + stime count clock ticks (10 ms), too coarse for the few hundred requests of a
    /// low rate's window.
    pub cpu_seconds: f64,
    /// Times a thread was scheduled onto a CPU (the third field): its wake-ups, plus a return
    /// after each preemption.
    pub runs: u64,
}

/// [`Sched`] of `pid`; `None` if the kernel does not give it.
pub fn sched(pid: u32) -> Option<Sched> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let (mut ns, mut runs) = (0u64, 0u64);
    // Bounded by the process's threads.
    for t in dir {
        let path = t.ok()?.path().join("schedstat");
        // A thread that ended since the listing has nothing left to count.
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        let mut fields = text.split_whitespace();
        ns += fields.next()?.parse::<u64>().ok()?;
        runs += fields.nth(1)?.parse::<u64>().ok()?;
    }
    Some(Sched {
        cpu_seconds: ns as f64 / 1e9,
        runs,
    })
}

/// The watched processes' on-CPU seconds and wake-ups between `from` and `to` ([`sched`]),
/// `None` if any could not be read.
fn precise_cpu(
    watch: &[u32],
    from: Instant,
    to: Instant,
) -> JoinHandle<Option<(Vec<f64>, Vec<u64>)>> {
    let watch = watch.to_vec();
    tokio::spawn(async move {
        let read = || -> Option<Vec<Sched>> { watch.iter().map(|&p| sched(p)).collect() };
        tokio::time::sleep_until(from).await;
        let a = read()?;
        tokio::time::sleep_until(to).await;
        let b = read()?;
        Some(
            b.iter()
                .zip(&a)
                .map(|(b, a)| (b.cpu_seconds - a.cpu_seconds, b.runs.saturating_sub(a.runs)))
                .unzip(),
        )
    })
}

/// The processes' CPU seconds and wake-ups from [`precise_cpu`], or, when schedstat could not
/// be read, the coarser CPU seconds `sampled` from clock ticks and no wake-ups.
fn cpu_and_wakeups(
    precise: Option<(Vec<f64>, Vec<u64>)>,
    sampled: Vec<f64>,
) -> (Vec<f64>, Option<Vec<u64>>) {
    match precise {
        Some((cpu, wakeups)) => (cpu, Some(wakeups)),
        None => (sampled, None),
    }
}

/// Errors of one run: a count and a few examples.
#[derive(Debug, Default)]
struct Errors {
    count: AtomicU64,
    samples: Mutex<Vec<String>>,
}

impl Errors {
    fn add(&self, msg: impl FnOnce() -> String) {
        self.count.fetch_add(1, Ordering::Relaxed);
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

/// Timing of a run: warm-up, measured window, RSS sampling.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Load before the measured window.
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
    /// How often the watched processes' RSS is sampled.
    pub rss_interval: Duration,
}

/// Closed loop: each lane sends its next request when the last one is answered, for warm-up
/// + duration. `requests` are the successful ones in the window.
pub async fn closed_loop(
    kind: &Kind,
    lanes: Vec<Client>,
    t: Timing,
    watch: &[u32],
) -> anyhow::Result<SaturationResult> {
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Errors::default());
    let window_start = Instant::now() + t.warmup;
    let stop = window_start + t.duration;
    let tasks: Vec<JoinHandle<()>> = lanes
        .into_iter()
        .map(|mut client| {
            let (ok, errors, kind) = (ok.clone(), errors.clone(), kind.clone());
            tokio::spawn(async move {
                let work = async {
                    for _ in 0..MAX_CALLS_PER_LANE {
                        if Instant::now() >= stop {
                            break;
                        }
                        match client.call(&kind).await {
                            Ok(()) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                errors.add(|| format!("{e:#}"));
                                // Do not spin on a dead peer.
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                        }
                    }
                };
                if tokio::time::timeout_at(stop + GRACE, work).await.is_err() {
                    errors.add(|| "request still pending long after the run ended".into());
                }
            })
        })
        .collect();
    let precise = precise_cpu(watch, window_start, stop);
    let Window {
        count: requests,
        cpu,
        peak_rss_kib,
    } = measure_window(watch, t.rss_interval, window_start, stop, &ok, tasks).await?;
    let (cpu_seconds, wakeups) = cpu_and_wakeups(precise.await?, cpu.procs);
    Ok(SaturationResult {
        requests,
        seconds: cpu.seconds,
        rps: requests as f64 / cpu.seconds,
        errors: errors.count.load(Ordering::Relaxed),
        error_samples: errors.samples(),
        cpu_seconds,
        loadgen_cpu_seconds: cpu.own,
        peak_rss_kib,
        cpu_busy_pct: cpu.busy_pct,
        others_cpu_seconds: cpu.others,
        wakeups,
    })
}

/// One open-loop run at a fixed rate: the latencies and CPU ([`RateResult`]) and the watched
/// processes' peak RSS during it.
#[derive(Debug, Clone, Serialize)]
pub struct RatePoint {
    /// Requests per second asked for.
    pub rate: f64,
    /// What the run measured (CPU per watched process over the window, latencies).
    pub result: RateResult,
    /// Peak RSS (KiB) of each watched process during the run.
    pub peak_rss_kib: Vec<u64>,
    /// The watched processes' system calls and kernel CPU in the window.
    pub kernel: Option<crate::kernel::KernelCounts>,
}

/// Open loop at `rate` requests/s: slots every `1 / rate` spread round robin over the lanes
/// (lane `i` of `n` takes slots `i, i + n, ...`); latency from each slot's time.
// Long: one task per lane whose scheduled-send loop shares the run's counters and bounds; split, every piece would take the same captures.
pub async fn open_loop(
    kind: &Kind,
    lanes: Vec<Client>,
    rate: f64,
    t: Timing,
    watch: &[u32],
) -> anyhow::Result<RatePoint> {
    anyhow::ensure!(
        rate > 0.0 && !lanes.is_empty(),
        "rate and lanes must be positive"
    );
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Errors::default());
    let missed = Arc::new(AtomicU64::new(0));
    let scheduled = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Mutex::new(stats::latency_histogram()));
    // Every lane is connected already; leave time for the tasks to start before the first slot.
    let start = Instant::now() + Duration::from_millis(200);
    let window_start = start + t.warmup;
    let stop = window_start + t.duration;
    let n = lanes.len() as u64;
    let tasks: Vec<JoinHandle<()>> = lanes
        .into_iter()
        .zip(0u64..)
        .map(|(mut client, i)| {
            let (ok, errors, kind) = (ok.clone(), errors.clone(), kind.clone());
            let (missed, scheduled, hist) = (missed.clone(), scheduled.clone(), hist.clone());
            tokio::spawn(async move {
                let mut mine = stats::latency_histogram();
                for k in 0..MAX_CALLS_PER_LANE {
                    let slot = slot_time(start, i + k * n, rate);
                    if slot >= stop {
                        break;
                    }
                    let measured = slot >= window_start;
                    if measured {
                        scheduled.fetch_add(1, Ordering::Relaxed);
                    }
                    if Instant::now() >= stop + GRACE {
                        // Hopelessly behind: what is left of this lane's slots is missed.
                        let left = (stop - slot).as_secs_f64() * rate / n as f64;
                        missed.fetch_add(1 + left as u64, Ordering::Relaxed);
                        break;
                    }
                    wait_until(slot).await;
                    let res = tokio::time::timeout_at(stop + GRACE + GRACE, client.call(&kind));
                    match res.await {
                        Ok(Ok(())) => {
                            if measured {
                                ok.fetch_add(1, Ordering::Relaxed);
                                let ns = u64::try_from((Instant::now() - slot).as_nanos())
                                    .unwrap_or(u64::MAX)
                                    .max(1);
                                mine.saturating_record(ns);
                            }
                        }
                        Ok(Err(e)) => errors.add(|| format!("{e:#}")),
                        Err(_) => {
                            errors.add(|| "request still pending long after the run ended".into());
                            break;
                        }
                    }
                }
                if let Ok(mut h) = hist.lock() {
                    // Same bounds on both sides, so adding cannot fail.
                    let _ = h.add(&mine);
                }
            })
        })
        .collect();
    let precise = precise_cpu(watch, window_start, stop);
    let kernel = crate::kernel::count(watch, window_start, stop);
    let Window {
        count: _,
        cpu,
        peak_rss_kib,
    } = measure_window(watch, t.rss_interval, window_start, stop, &ok, tasks).await?;
    let latency = hist
        .lock()
        .map_err(|_| anyhow::anyhow!("a lane panicked"))
        .map(|h| stats::percentiles(&h))?;
    let ok = ok.load(Ordering::Relaxed);
    let (cpu_seconds, wakeups) = cpu_and_wakeups(precise.await?, cpu.procs);
    let kernel = kernel.await?;
    Ok(RatePoint {
        rate,
        kernel,
        result: RateResult {
            rate,
            scheduled: scheduled.load(Ordering::Relaxed),
            ok,
            errors: errors.count.load(Ordering::Relaxed),
            missed: missed.load(Ordering::Relaxed),
            achieved_rps: ok as f64 / t.duration.as_secs_f64(),
            latency,
            error_samples: errors.samples(),
            cpu_seconds,
            loadgen_cpu_seconds: cpu.own,
            seconds: cpu.seconds,
            cpu_busy_pct: cpu.busy_pct,
            others_cpu_seconds: cpu.others,
            wakeups,
        },
        peak_rss_kib,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_counts_this_process_busy_time() {
        let pid = std::process::id();
        let a = sched(pid).unwrap().cpu_seconds;
        let t0 = std::time::Instant::now();
        let mut x = 0u64;
        let mut b = a;
        // Busy until 20 ms of on-CPU time show (on a shared machine the wall time is longer);
        // bounded by 10 s of wall time.
        while b - a < 0.02 && t0.elapsed() < Duration::from_secs(10) {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            b = sched(pid).unwrap().cpu_seconds;
        }
        assert!(b - a >= 0.02 && b - a < 10.0, "{a} {b}");
        assert!(sched(u32::MAX).is_none());
    }
}
