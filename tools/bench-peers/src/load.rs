//! Load of the peer comparison (`weft-bench-peers`) beyond HTTP/1.1: the gRPC
//! client of the `weft-sample grpc` Echo service (its loops are in
//! [`crate::lanes`]) and bulk TCP through an echo (`weft-sample tcp`).
//!
//! Both run on the calling tokio runtime like [`weft_benches::load`], measure the
//! watched processes' CPU over the window and sample their RSS; every loop is
//! bounded in time and in count.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use weft_samples::grpc::{EchoClient, EchoRequest};

use weft_benches::load::{measure_window, Window};

/// Most chunks one TCP writer sends in one run (64 KiB each: 6.4 TB).
const MAX_CHUNKS: u64 = 100_000_000;

/// How long past the end of a run a task may still be busy before it is cut
/// off (and, for gRPC, counted as an error).
const GRACE: Duration = Duration::from_secs(5);

/// How many error messages a run keeps as examples.
const ERROR_SAMPLES: usize = 5;

/// Size of one TCP write and of the read buffer.
const TCP_CHUNK: usize = 64 * 1024;

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

/// Connects one tonic channel (prior-knowledge HTTP/2, no TLS) to `addr`.
pub async fn grpc_client(
    addr: SocketAddr,
) -> anyhow::Result<EchoClient<tonic::transport::Channel>> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .origin("http://app".parse()?)
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10));
    let channel = tokio::time::timeout(Duration::from_secs(10), endpoint.connect())
        .await
        .context("gRPC connect timed out")?
        .with_context(|| format!("gRPC connect to {addr}"))?;
    Ok(EchoClient::new(channel))
}

/// One unary Echo call; fails unless the reply echoes the message.
pub async fn grpc_call(client: &mut EchoClient<tonic::transport::Channel>) -> anyhow::Result<()> {
    let reply = client
        .unary(EchoRequest {
            message: "ping".into(),
            count: 0,
        })
        .await?
        .into_inner();
    anyhow::ensure!(reply.message == "ping", "echo answered {:?}", reply.message);
    Ok(())
}

/// Settings of a TCP throughput run.
#[derive(Debug, Clone, Copy)]
pub struct TcpConfig {
    /// Concurrent connections, each writing as fast as it can while reading
    /// the echo back.
    pub connections: usize,
    /// Load before the measured window.
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
    /// How often to sample the watched processes' RSS.
    pub rss_interval: Duration,
}

/// Result of a TCP throughput run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TcpResult {
    /// Bytes echoed back to the client in the measured window.
    pub bytes: u64,
    /// Length of the measured window in seconds.
    pub seconds: f64,
    /// `bytes / seconds / 10^6`: echoed megabytes per second (every byte
    /// crossed the path twice, there and back).
    pub mb_per_s: f64,
    /// Connections that failed (connect, write or read errors, a short echo).
    pub errors: u64,
    /// A few of the errors, as examples.
    pub error_samples: Vec<String>,
    /// CPU seconds each watched process used in the window.
    pub cpu_seconds: Vec<f64>,
    /// CPU seconds the load generator itself used in the window.
    pub loadgen_cpu_seconds: f64,
    /// Peak RSS (KiB) of each watched process, sampled during the run.
    pub peak_rss_kib: Vec<u64>,
    /// How busy each CPU was in the window, percent.
    pub cpu_busy_pct: Vec<Option<f64>>,
    /// CPU seconds all other user-space processes used in the window.
    pub others_cpu_seconds: f64,
}

/// One TCP connection: a writer half sends 64 KiB chunks until `stop`, then
/// half-closes; the reader counts echoed bytes into `received` until EOF.
/// Fails if fewer bytes came back than were sent.
async fn tcp_conn(addr: SocketAddr, stop: Instant, received: Arc<AtomicU64>) -> anyhow::Result<()> {
    let stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .context("connect timed out")??;
    stream.set_nodelay(true)?;
    let (mut r, mut w) = stream.into_split();
    let writer = tokio::spawn(async move {
        let chunk = vec![0x5au8; TCP_CHUNK];
        let mut sent = 0u64;
        for _ in 0..MAX_CHUNKS {
            if Instant::now() >= stop {
                break;
            }
            w.write_all(&chunk).await?;
            sent += chunk.len() as u64;
        }
        w.shutdown().await?;
        Ok::<u64, std::io::Error>(sent)
    });
    let mut buf = vec![0u8; TCP_CHUNK];
    let mut got = 0u64;
    let reader = async {
        // Bounded by the bytes the writer can send (each read returns at least one).
        for _ in 0..MAX_CHUNKS.saturating_mul(TCP_CHUNK as u64) {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            got += n as u64;
            received.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok::<(), std::io::Error>(())
    };
    tokio::time::timeout_at(stop + GRACE, reader)
        .await
        .context("echo not finished long after the run ended")??;
    let sent = tokio::time::timeout_at(stop + GRACE, writer)
        .await
        .context("writer still busy long after the run ended")???;
    anyhow::ensure!(got == sent, "sent {sent} bytes, {got} came back");
    Ok(())
}

/// Bulk TCP through `addr` (an echo behind it): `connections` connections
/// write and read back as fast as they can for warm-up + duration.
pub async fn tcp_throughput(
    addr: SocketAddr,
    cfg: TcpConfig,
    watch: &[u32],
) -> anyhow::Result<TcpResult> {
    anyhow::ensure!(cfg.connections > 0, "connections must be positive");
    let received = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Errors::default());
    let start = Instant::now();
    let window_start = start + cfg.warmup;
    let stop = window_start + cfg.duration;
    let tasks: Vec<JoinHandle<()>> = (0..cfg.connections)
        .map(|_| {
            let (received, errors) = (received.clone(), errors.clone());
            tokio::spawn(async move {
                if let Err(e) = tcp_conn(addr, stop, received).await {
                    errors.add(|| format!("{e:#}"));
                }
            })
        })
        .collect();
    let Window {
        count: bytes,
        cpu,
        peak_rss_kib,
    } = measure_window(
        watch,
        cfg.rss_interval,
        window_start,
        stop,
        &received,
        tasks,
    )
    .await?;
    Ok(TcpResult {
        bytes,
        seconds: cpu.seconds,
        mb_per_s: bytes as f64 / cpu.seconds / 1e6,
        errors: errors.count.load(Ordering::Relaxed),
        error_samples: errors.samples(),
        cpu_seconds: cpu.procs,
        loadgen_cpu_seconds: cpu.own,
        peak_rss_kib,
        cpu_busy_pct: cpu.busy_pct,
        others_cpu_seconds: cpu.others,
    })
}

/// One echo round trip of `data` through `addr` (a readiness check).
pub async fn tcp_echo_once(addr: SocketAddr, data: &[u8]) -> anyhow::Result<()> {
    let work = async {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (mut r, mut w) = stream.into_split();
        w.write_all(data).await?;
        w.shutdown().await?;
        let mut back = Vec::new();
        r.read_to_end(&mut back).await?;
        anyhow::ensure!(
            back == data,
            "echo returned {} of {} bytes",
            back.len(),
            data.len()
        );
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .context("echo timed out")?
}
