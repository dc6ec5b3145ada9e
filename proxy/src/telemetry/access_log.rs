//! Access log: one JSON line per request, written by its own thread. The request path only
//! hands a small record to a bounded queue; when the writer falls behind, records are dropped
//! and counted, and traffic never waits.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus::IntCounter;

/// Records queued for the writer before new ones are dropped: a tick's worth at 80k requests/s.
pub const QUEUE: usize = 4096;
/// How often the writer wakes to write what queued; also the longest a line waits.
pub const TICK: Duration = Duration::from_millis(50);

/// One request, as the access log tells it.
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// When the request arrived.
    pub time: Option<SystemTime>,
    /// W3C trace id of the request: the one its `traceparent` carried, or the one this
    /// sidecar started.
    pub trace_id: Option<crate::telemetry::trace::TraceId>,
    /// `outbound` or `inbound`.
    pub direction: &'static str,
    /// SPIFFE identity of the caller.
    pub src_identity: Arc<str>,
    /// SPIFFE identity of the callee (outbound: the destination's expected identity).
    pub dst_identity: Arc<str>,
    /// Route name (`unmatched` when none).
    pub route: Arc<str>,
    /// HTTP method.
    pub method: http::Method,
    /// Host / :authority.
    pub authority: Option<http::HeaderValue>,
    /// The request URI (its path and query are logged).
    pub uri: http::Uri,
    /// Status sent (0: none).
    pub status: u16,
    /// Time to the end of the response.
    pub duration: Duration,
    /// Request body bytes read.
    pub bytes_in: usize,
    /// Response body bytes sent.
    pub bytes_out: usize,
    /// Endpoint the request went to.
    pub endpoint: Option<std::net::SocketAddr>,
    /// Retries made (none yet: retries come with the resilience policies).
    pub retries: u32,
    /// Why the sidecar answered itself: `no_route`, `no_endpoint`, `timeout`, `connect_failure`,
    /// `tls_failure`, `upstream_reset`, `bad_request`, `downstream_closed`.
    pub flags: Vec<&'static str>,
}

impl Record {
    /// The fields every request shares, read from the finished session; the caller fills in
    /// trace id, identities, route and endpoint.
    pub fn from_session(
        session: &pingora_proxy::Session,
        direction: &'static str,
        status: u16,
        elapsed: Duration,
        flag: Option<&'static str>,
    ) -> Record {
        let req = session.req_header();
        Record {
            time: SystemTime::now().checked_sub(elapsed),
            direction,
            method: req.method.clone(),
            authority: req.headers.get(http::header::HOST).cloned().or_else(|| {
                req.uri
                    .authority()
                    .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
            }),
            uri: req.uri.clone(),
            status,
            duration: elapsed,
            bytes_in: session.body_bytes_read(),
            bytes_out: session.body_bytes_sent(),
            flags: flag
                .or((status == 0).then_some("downstream_closed"))
                .into_iter()
                .collect(),
            ..Record::default()
        }
    }
}

/// A record as written: borrowed fields, serialized straight into the output buffer with no
/// intermediate JSON tree.
#[derive(serde::Serialize)]
struct Line<'a> {
    #[serde(serialize_with = "rfc3339")]
    time: Option<SystemTime>,
    #[serde(serialize_with = "display")]
    trace_id: Option<crate::telemetry::trace::TraceId>,
    direction: &'a str,
    src_identity: &'a str,
    dst_identity: &'a str,
    route: &'a str,
    method: &'a str,
    authority: Option<&'a str>,
    path: &'a str,
    status: u16,
    duration_ms: f64,
    bytes_in: usize,
    bytes_out: usize,
    #[serde(serialize_with = "display")]
    endpoint: Option<std::net::SocketAddr>,
    retries: u32,
    flags: &'a [&'static str],
}

fn display<S: serde::Serializer, T: std::fmt::Display>(
    v: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

fn rfc3339<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.collect_str(&humantime::format_rfc3339_millis(*t)),
        None => s.serialize_none(),
    }
}

impl Record {
    fn line(&self) -> Line<'_> {
        Line {
            time: self.time,
            trace_id: self.trace_id,
            direction: self.direction,
            src_identity: &self.src_identity,
            dst_identity: &self.dst_identity,
            route: &self.route,
            method: self.method.as_str(),
            authority: self.authority.as_ref().and_then(|a| a.to_str().ok()),
            path: self.uri.path_and_query().map_or("", |p| p.as_str()),
            status: self.status,
            duration_ms: self.duration.as_secs_f64() * 1000.0,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            endpoint: self.endpoint,
            retries: self.retries,
            flags: &self.flags,
        }
    }
}

/// The sending half; cheap to call from the request path.
#[derive(Debug)]
pub struct AccessLog {
    tx: SyncSender<Record>,
    dropped: IntCounter,
    /// Where lines go (for `/config_dump`).
    pub target: PathBuf,
}

impl AccessLog {
    /// Start the writer thread appending to `path` (`-` for stdout).
    pub fn start(path: &Path, dropped: IntCounter, written: IntCounter) -> std::io::Result<Self> {
        let out: Box<dyn Write + Send> = if path == Path::new("-") {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )
        };
        Ok(Self::with_writer(
            out,
            QUEUE,
            dropped,
            written,
            path.to_owned(),
        ))
    }

    /// Start a writer thread over any sink, with a given queue length.
    pub fn with_writer(
        out: Box<dyn Write + Send>,
        queue: usize,
        dropped: IntCounter,
        written: IntCounter,
        target: PathBuf,
    ) -> Self {
        let (tx, rx) = sync_channel(queue);
        std::thread::Builder::new()
            .name("weft-access-log".into())
            .spawn(move || write_loop(rx, out, written))
            .map_err(|e| log::error!("access log thread: {e}"))
            .ok();
        AccessLog {
            tx,
            dropped,
            target,
        }
    }

    /// Queue a record; never blocks.
    pub fn record(&self, r: Record) {
        match self.tx.try_send(r) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }
}

fn write_loop(rx: Receiver<Record>, out: Box<dyn Write + Send>, written: IntCounter) {
    // The writer never blocks in `recv`: a blocked receiver would be woken (a futex wake and a
    // context switch) by every request's `try_send`. It sleeps a tick instead and writes
    // whatever queued meanwhile in one go, so requests never signal anyone.
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    loop {
        std::thread::sleep(TICK);
        let mut any = false;
        loop {
            match rx.try_recv() {
                Ok(r) => {
                    any = true;
                    if serde_json::to_writer(&mut out, &r.line()).is_ok()
                        && out.write_all(b"\n").is_ok()
                    {
                        written.inc();
                    }
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            }
        }
        if any {
            let _ = out.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier, Mutex};

    use super::*;

    /// A sink that blocks its first write until released, then collects.
    struct Gate(Arc<Barrier>, Arc<Mutex<Vec<u8>>>, bool);
    impl Write for Gate {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if !self.2 {
                self.0.wait();
                self.2 = true;
            }
            self.1
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_writer_drops_and_counts_but_never_blocks() {
        let gate = Arc::new(Barrier::new(2));
        let sink = Arc::new(Mutex::new(Vec::new()));
        let dropped = IntCounter::new("d", "d").expect("counter");
        let written = IntCounter::new("w", "w").expect("counter");
        let log = AccessLog::with_writer(
            Box::new(Gate(gate.clone(), sink.clone(), false)),
            2,
            dropped.clone(),
            written.clone(),
            "-".into(),
        );
        let start = std::time::Instant::now();
        for i in 0..100u16 {
            log.record(Record {
                status: 200 + i,
                ..Record::default()
            });
        }
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "record() waited"
        );
        // The writer is stuck at its first flush, so most of the burst cannot be queued.
        assert!(dropped.get() > 0, "nothing dropped");
        gate.wait();
        // `written` counts lines handed to the buffer; the sink sees them at the next flush.
        let lines = || {
            String::from_utf8(sink.lock().expect("lock").clone())
                .expect("utf8")
                .lines()
                .count() as u64
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while (written.get() + dropped.get() < 100 || lines() < written.get())
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(written.get() + dropped.get(), 100);
        assert_eq!(lines(), written.get());
        let text = String::from_utf8(sink.lock().expect("lock").clone()).expect("utf8");
        assert!(text
            .lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
    }
}
