//! What both proxy directions report about a request they finish: the response counted in the
//! request's series, a span when the request is sampled, and an access-log record. Each
//! direction's context holds a [`HopState`]; each proxy holds the [`Reporters`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::HeaderMap;
use pingora_proxy::Session;

use crate::telemetry::access_log::AccessLog;
use crate::telemetry::metrics::{self, Direction, RouteMetrics};
use crate::telemetry::trace::{grpc_status, Hop, SpanRecord, Tracer};

/// Where finished requests are reported, beyond their metrics.
#[derive(Clone, Default)]
pub struct Reporters {
    /// The access log, when configured.
    pub access_log: Option<Arc<AccessLog>>,
    /// The span exporter, when configured.
    pub tracer: Option<Arc<Tracer>>,
}

/// A request's telemetry, kept in its context from the first phase to `logging`.
#[derive(Default)]
pub struct HopState {
    /// When the request arrived (`None`: it never started, nothing to report).
    pub start: Option<Instant>,
    /// The series the request is counted in.
    pub metrics: Option<Arc<RouteMetrics>>,
    /// The access log's response flag.
    pub flag: Option<&'static str>,
    /// Trace context of this request.
    pub trace: Hop,
    /// `grpc-status` of the response, when recording a span.
    pub grpc_status: Option<u32>,
}

impl HopState {
    /// The request arrived with `headers`; `sampling` applies when a span exporter exists.
    pub fn begin(&mut self, headers: &HeaderMap, reporters: &Reporters, sampling: f64) {
        self.start = Some(Instant::now());
        self.trace = Hop::start(headers, reporters.tracer.is_some(), sampling);
    }

    /// Note the `grpc-status` of trailers (it wins over the headers') for the span.
    pub fn trailers(&mut self, trailers: &HeaderMap) {
        if self.trace.recording {
            self.grpc_status = grpc_status(trailers).or(self.grpc_status);
        }
    }
}

/// How a request ended, beyond what the session says.
pub struct Ending {
    /// Which way it went.
    pub direction: Direction,
    /// The endpoint (outbound) or app (inbound) that served it.
    pub server: Option<SocketAddr>,
    /// Retries made (outbound only).
    pub retries: Option<u32>,
}

impl Reporters {
    /// Count the response in the request's series and record its span if sampled; the status
    /// and duration for the access log, or `None` when the request never started.
    pub fn finish(
        &self,
        session: &Session,
        hop: &HopState,
        end: Ending,
    ) -> Option<(u16, Duration)> {
        let (status, elapsed) = metrics::finish(session, hop.start, hop.metrics.as_deref())?;
        if let (Some(tracer), Some((trace_id, span_id))) = (&self.tracer, hop.trace.span()) {
            tracer.record(SpanRecord {
                trace_id,
                span_id,
                parent: hop.trace.parent,
                flags: hop.trace.flags,
                direction: end.direction,
                labels: hop.metrics.clone(),
                method: session.req_header().method.clone(),
                uri: session.req_header().uri.clone(),
                status,
                grpc_status: hop.grpc_status,
                server: end.server,
                retries: end.retries,
                flag: hop.flag,
                end: SystemTime::now(),
                duration: elapsed,
            });
        }
        Some((status, elapsed))
    }
}
