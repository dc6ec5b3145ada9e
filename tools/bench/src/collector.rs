//! An OpenTelemetry trace collector inside the benchmark process: a tonic
//! OTLP/gRPC server implementing `TraceService` that decodes every export
//! request (as a real collector does) and counts the spans in it.
//!
//! It runs on a thread of its own with a single-threaded tokio runtime,
//! pinned to the load generator's CPU, so it never shares the server CPU with
//! the sidecars it measures; its CPU time is read from
//! `/proc/self/task/TID/stat`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

use crate::procfs;

/// Largest export request the collector decodes (the sidecar sends at most
/// 512 spans per request, well under a MiB).
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// What the collector has received so far.
#[derive(Debug, Default)]
struct Counts {
    spans: AtomicU64,
    requests: AtomicU64,
}

/// The `TraceService` implementation: counts, answers success.
#[derive(Debug, Clone)]
struct Service {
    counts: Arc<Counts>,
}

/// Spans in one export request.
pub fn spans_in(req: &ExportTraceServiceRequest) -> u64 {
    req.resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len() as u64)
        .sum()
}

#[tonic::async_trait]
impl TraceService for Service {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let n = spans_in(req.get_ref());
        self.counts.spans.fetch_add(n, Ordering::Relaxed);
        self.counts.requests.fetch_add(1, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// The running collector. Dropping it stops the server and joins its thread.
#[derive(Debug)]
pub struct Collector {
    addr: SocketAddr,
    counts: Arc<Counts>,
    tid: u32,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Pins the calling thread to `core`.
fn pin_current_thread(core: usize) -> anyhow::Result<()> {
    let mut set = CpuSet::new();
    set.set(core).context("CPU index out of range")?;
    // PID 0: the calling thread.
    sched_setaffinity(Pid::from_raw(0), &set).context("sched_setaffinity")?;
    Ok(())
}

/// The calling thread's ID, from the `/proc/thread-self` link (`PID/task/TID`).
fn current_tid() -> anyhow::Result<u32> {
    let link = std::fs::read_link("/proc/thread-self").context("reading /proc/thread-self")?;
    link.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("unexpected /proc/thread-self: {}", link.display()))
}

impl Collector {
    /// Starts the collector on 127.0.0.1 (a free port), on a new thread
    /// pinned to CPU `core`; returns once it accepts connections.
    pub fn start(core: usize) -> anyhow::Result<Self> {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").context("binding the collector")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Counts::default());
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<anyhow::Result<u32>>(1);
        let svc = TraceServiceServer::new(Service {
            counts: counts.clone(),
        })
        .max_decoding_message_size(MAX_MESSAGE);
        let thread = std::thread::Builder::new()
            .name("otlp-collector".into())
            .spawn(move || {
                let setup = pin_current_thread(core).and_then(|()| {
                    let tid = current_tid()?;
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("building the collector's runtime")?;
                    Ok((tid, rt))
                });
                let (tid, rt) = match setup {
                    Ok(x) => x,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(anyhow!("collector listener: {e}")));
                            return;
                        }
                    };
                    let incoming = tonic::transport::server::TcpIncoming::from(listener)
                        .with_nodelay(Some(true));
                    let _ = ready_tx.send(Ok(tid));
                    let server = tonic::transport::Server::builder()
                        .add_service(svc)
                        .serve_with_incoming(incoming);
                    tokio::select! {
                        r = server => {
                            if let Err(e) = r {
                                eprintln!("weft-bench: the OTLP collector stopped: {e}");
                            }
                        }
                        _ = shutdown_rx => {}
                    }
                });
                // Dropping the runtime drops the connections' tasks.
            })
            .context("starting the collector thread")?;
        let tid = ready_rx
            .recv_timeout(Duration::from_secs(5))
            .context("the collector did not start")??;
        Ok(Collector {
            addr,
            counts,
            tid,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        })
    }

    /// Where it listens (plaintext gRPC).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Spans received so far.
    pub fn spans(&self) -> u64 {
        self.counts.spans.load(Ordering::Relaxed)
    }

    /// Export requests received so far.
    pub fn requests(&self) -> u64 {
        self.counts.requests.load(Ordering::Relaxed)
    }

    /// CPU time (user + system) its thread has used so far, seconds.
    pub fn cpu_seconds(&self) -> std::io::Result<f64> {
        procfs::thread_cpu_seconds(std::process::id(), self.tid)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn request(spans_per_scope: &[usize]) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: spans_per_scope
                    .iter()
                    .map(|&n| ScopeSpans {
                        spans: (0..n)
                            .map(|i| Span {
                                name: format!("span {i}"),
                                ..Default::default()
                            })
                            .collect(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
        }
    }

    #[test]
    fn counts_spans_of_every_scope() {
        assert_eq!(spans_in(&request(&[])), 0);
        assert_eq!(spans_in(&request(&[3, 0, 2])), 5);
    }

    #[test]
    fn receives_exports_over_grpc() {
        let c = Collector::start(0).unwrap();
        let addr = c.addr();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut client = TraceServiceClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
            client.export(request(&[2, 3])).await.unwrap();
            client.export(request(&[1])).await.unwrap();
        });
        assert_eq!(c.spans(), 6);
        assert_eq!(c.requests(), 2);
        // The collector's figure is its own thread's CPU, not the process's: burn CPU on this
        // thread, and the process's figure pulls ahead of the collector's by 0.1 s (it never
        // would if both read the whole process). Bounded by a deadline.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut x = 0u64;
        loop {
            let thread = c.cpu_seconds().unwrap();
            let process = procfs::cpu_seconds(std::process::id()).unwrap();
            if process - thread >= 0.1 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "collector thread {thread} s, process {process} s"
            );
            for i in 0..1_000_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        drop(c);
    }
}
