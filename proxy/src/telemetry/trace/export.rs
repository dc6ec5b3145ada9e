//! The span exporter: a bounded queue the request path `try_send`s finished spans into, and a
//! thread of its own (`weft-trace`, with a single-threaded runtime) that drains the queue on a
//! 50 ms tick and sends batches to the collector with the OpenTelemetry OTLP/gRPC exporter.
//!
//! Traffic never waits for tracing: a full queue drops the span and counts it
//! (`weft_trace_spans_dropped_total{reason="queue_full"}`); a failed export drops its batch and
//! counts it (`reason="export_failed"`, plus `weft_trace_export_errors_total`). As with the
//! access log, the exporter never blocks in `recv`, so requests never wake it.

use std::collections::HashMap;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use opentelemetry::trace::{SpanContext, SpanKind, Status, TraceFlags, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use opentelemetry_sdk::Resource;
use prometheus::IntCounter;

use super::SpanRecord;
use crate::telemetry::metrics::{Direction, Metrics, RouteMetrics};
use weft_policy::Tracing;

/// How often the exporter drains the queue.
pub const TICK: Duration = Duration::from_millis(50);
/// Most spans in one export request (the OpenTelemetry SDK's default batch size).
pub const MAX_BATCH: usize = 512;
/// Longest one export request may take before it counts as failed (the OTLP default).
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// While exports keep failing, the failure is logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// The request path's handle: queue a finished span, never wait.
pub struct Tracer {
    tx: SyncSender<SpanRecord>,
    flush: Mutex<Sender<SyncSender<()>>>,
    dropped: IntCounter,
    /// The collector spans go to (for `/config_dump` and logs).
    pub collector: String,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("collector", &self.collector)
            .finish()
    }
}

/// The exporter's counters.
#[derive(Clone)]
struct Counters {
    exported: IntCounter,
    failed: IntCounter,
    errors: IntCounter,
}

impl Tracer {
    /// Start the exporter thread for `config` (which must name a collector); spans carry a
    /// resource naming this sidecar's `service` and `identity`. Fails only on a bad collector
    /// address or when the thread cannot start; an unreachable collector is not an error.
    pub fn start(
        config: &Tracing,
        service: &str,
        identity: &str,
        metrics: &Metrics,
    ) -> anyhow::Result<Arc<Tracer>> {
        let collector = config
            .collector
            .clone()
            .context("tracing needs a collector")?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mut exporter = {
            // The gRPC channel connects lazily but needs a runtime to exist in.
            let _in_runtime = rt.enter();
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(collector.clone())
                .with_timeout(EXPORT_TIMEOUT)
                .build()
                .with_context(|| format!("OTLP exporter for {collector}"))?
        };
        exporter.set_resource(&resource(service, identity));
        let (tx, rx) = sync_channel(config.max_queue);
        let (flush_tx, flush_rx) = channel();
        let counters = Counters {
            exported: metrics.trace_spans_exported.clone(),
            failed: metrics.trace_dropped("export_failed"),
            errors: metrics.trace_export_errors.clone(),
        };
        let run = Exporter {
            rx,
            flush: flush_rx,
            exporter,
            interval: config.export_interval,
            drain_limit: config.max_queue.max(MAX_BATCH) * 4,
            counters,
            convert: Convert::new(service),
            collector: collector.clone(),
        };
        std::thread::Builder::new()
            .name("weft-trace".into())
            .spawn(move || rt.block_on(run.run()))
            .context("trace exporter thread")?;
        Ok(Arc::new(Tracer {
            tx,
            flush: Mutex::new(flush_tx),
            dropped: metrics.trace_dropped("queue_full"),
            collector,
        }))
    }

    /// Queue a finished span; never blocks. A full queue drops it (counted).
    pub fn record(&self, span: SpanRecord) {
        if self.tx.try_send(span).is_err() {
            self.dropped.inc();
        }
    }

    /// Export what is queued now and wait for it, at most `limit` (used once, at exit; never
    /// on the request path). True when the exporter confirmed.
    pub fn flush(&self, limit: Duration) -> bool {
        let (ack, done) = sync_channel(1);
        let sent = match self.flush.lock() {
            Ok(f) => f.send(ack).is_ok(),
            Err(_) => false,
        };
        sent && done.recv_timeout(limit).is_ok()
    }
}

/// The resource every span carries: `service.name` is this sidecar's service, `weft.identity`
/// its SPIFFE identity (plus the SDK's `telemetry.sdk.*` and `OTEL_RESOURCE_ATTRIBUTES`).
fn resource(service: &str, identity: &str) -> Resource {
    Resource::builder()
        .with_service_name(service.to_owned())
        .with_attribute(KeyValue::new("weft.identity", identity.to_owned()))
        .build()
}

struct Exporter {
    rx: Receiver<SpanRecord>,
    flush: Receiver<SyncSender<()>>,
    exporter: opentelemetry_otlp::SpanExporter,
    interval: Duration,
    drain_limit: usize,
    counters: Counters,
    convert: Convert,
    collector: String,
}

impl Exporter {
    async fn run(mut self) {
        let mut pending: Vec<SpanRecord> = Vec::with_capacity(MAX_BATCH);
        let mut oldest = Instant::now();
        let mut health = Health::default();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let flush = self.flush.try_recv().ok();
            let mut closed = false;
            for _ in 0..self.drain_limit {
                match self.rx.try_recv() {
                    Ok(span) => {
                        if pending.is_empty() {
                            oldest = Instant::now();
                        }
                        pending.push(span);
                        if pending.len() >= MAX_BATCH {
                            self.export(&mut pending, &mut health).await;
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            let due = oldest.elapsed() >= self.interval || flush.is_some() || closed;
            if !pending.is_empty() && due {
                self.export(&mut pending, &mut health).await;
            }
            if let Some(ack) = flush {
                let _ = ack.try_send(());
            }
            if closed {
                return;
            }
        }
    }

    async fn export(&mut self, pending: &mut Vec<SpanRecord>, health: &mut Health) {
        let n = pending.len() as u64;
        let batch: Vec<SpanData> = pending
            .drain(..)
            .map(|s| self.convert.span_data(s))
            .collect();
        let result = tokio::time::timeout(
            EXPORT_TIMEOUT + Duration::from_secs(1),
            self.exporter.export(batch),
        )
        .await;
        let error = match result {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer within {EXPORT_TIMEOUT:?}")),
        };
        match error {
            None => {
                self.counters.exported.inc_by(n);
                if health.failing.take().is_some() {
                    log::info!("trace export to {} works again", self.collector);
                }
            }
            Some(e) => {
                self.counters.errors.inc();
                self.counters.failed.inc_by(n);
                let now = Instant::now();
                let quiet = health.failing.is_some_and(|last| now - last < LOG_EVERY);
                if !quiet {
                    log::warn!(
                        "trace export to {} failed, {n} span(s) dropped: {e}",
                        self.collector
                    );
                    health.failing = Some(now);
                }
            }
        }
    }
}

/// Most routes (and addresses) whose attributes are kept ready; past it the cache starts over.
const CACHE_LIMIT: usize = 4096;

/// What one route's spans share, made once: the span name and the label attributes with
/// refcounted values, so converting a span clones pointers instead of strings.
struct RouteAttrs {
    /// Keeps the series alive, so its address cannot be reused while cached.
    _route: Option<Arc<RouteMetrics>>,
    name: Arc<str>,
    attributes: Vec<KeyValue>,
}

/// Converts finished spans to the SDK's form, on the exporter thread.
struct Convert {
    scope: InstrumentationScope,
    own_service: Arc<str>,
    routes: HashMap<usize, RouteAttrs>,
    addresses: HashMap<std::net::IpAddr, Arc<str>>,
}

impl Convert {
    fn new(own_service: &str) -> Self {
        Convert {
            scope: InstrumentationScope::builder("weft-proxy")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            own_service: own_service.into(),
            routes: HashMap::new(),
            addresses: HashMap::new(),
        }
    }

    fn route(&mut self, direction: Direction, labels: Option<&Arc<RouteMetrics>>) -> &RouteAttrs {
        let key = labels.map_or(0, |l| Arc::as_ptr(l) as usize);
        if self.routes.len() >= CACHE_LIMIT && !self.routes.contains_key(&key) {
            self.routes.clear();
        }
        let own = &self.own_service;
        self.routes.entry(key).or_insert_with(|| {
            let value = |s: &str| opentelemetry::Value::from(Arc::<str>::from(s));
            let mut attributes = vec![KeyValue::new("weft.direction", direction.as_str())];
            let (name, route) = match labels {
                Some(m) => {
                    let l = m.labels();
                    attributes.extend([
                        KeyValue::new("weft.route", value(&l.route)),
                        KeyValue::new("weft.src_service", value(&l.src_service)),
                        KeyValue::new("weft.dst_service", value(&l.dst_service)),
                        KeyValue::new("weft.caller", value(&l.caller)),
                    ]);
                    let name = match direction {
                        Direction::Outbound => format!("outbound {}/{}", l.dst_service, l.route),
                        Direction::Inbound => format!("inbound {}", l.dst_service),
                    };
                    (name, Some(m.clone()))
                }
                // Only an inbound request from a caller without a mesh identity has no series.
                None => {
                    attributes.push(KeyValue::new("weft.dst_service", own.clone()));
                    (format!("{} {own}", direction.as_str()), None)
                }
            };
            RouteAttrs {
                _route: route,
                name: name.into(),
                attributes,
            }
        })
    }

    fn address(&mut self, ip: std::net::IpAddr) -> Arc<str> {
        if self.addresses.len() >= CACHE_LIMIT && !self.addresses.contains_key(&ip) {
            self.addresses.clear();
        }
        self.addresses
            .entry(ip)
            .or_insert_with(|| ip.to_string().into())
            .clone()
    }

    /// The OpenTelemetry form of a finished span.
    fn span_data(&mut self, s: SpanRecord) -> SpanData {
        let server = s.server.map(|a| (self.address(a.ip()), a.port()));
        let route = self.route(s.direction, s.labels.as_ref());
        let mut attributes = Vec::with_capacity(route.attributes.len() + 10);
        attributes.extend(route.attributes.iter().cloned());
        let name = route.name.to_string();
        let kind = match s.direction {
            Direction::Outbound => SpanKind::Client,
            Direction::Inbound => SpanKind::Server,
        };
        attributes.push(KeyValue::new("http.request.method", method(&s.method)));
        attributes.push(KeyValue::new("url.path", s.uri.path().to_owned()));
        if s.status != 0 {
            attributes.push(KeyValue::new(
                "http.response.status_code",
                i64::from(s.status),
            ));
        }
        if let Some((ip, port)) = server {
            attributes.push(KeyValue::new("server.address", ip));
            attributes.push(KeyValue::new("server.port", i64::from(port)));
        }
        if let Some(r) = s.retries {
            attributes.push(KeyValue::new("weft.retries", i64::from(r)));
        }
        if let Some(g) = s.grpc_status {
            attributes.push(KeyValue::new("rpc.grpc.status_code", i64::from(g)));
        }
        let flag = s.flag.or((s.status == 0).then_some("downstream_closed"));
        let status = match flag {
            Some(f) => {
                attributes.push(KeyValue::new("weft.flags", f));
                attributes.push(KeyValue::new("error.type", f));
                Status::error(f)
            }
            None if s.status >= 500 => {
                attributes.push(KeyValue::new("error.type", s.status.to_string()));
                Status::error(format!("status {}", s.status))
            }
            None => Status::Unset,
        };
        SpanData {
            span_context: SpanContext::new(
                opentelemetry::trace::TraceId::from(s.trace_id.0),
                opentelemetry::trace::SpanId::from(s.span_id.0),
                TraceFlags::new(s.flags),
                false,
                TraceState::default(),
            ),
            parent_span_id: s.parent.map_or(opentelemetry::trace::SpanId::INVALID, |p| {
                opentelemetry::trace::SpanId::from(p.0)
            }),
            parent_span_is_remote: s.parent.is_some(),
            span_kind: kind,
            name: name.into(),
            start_time: s.end.checked_sub(s.duration).unwrap_or(s.end),
            end_time: s.end,
            attributes,
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status,
            instrumentation_scope: self.scope.clone(),
        }
    }
}

/// The method as a static string when it is a standard one (no allocation).
fn method(m: &http::Method) -> opentelemetry::Value {
    use http::Method as M;
    let s = match *m {
        M::GET => "GET",
        M::POST => "POST",
        M::PUT => "PUT",
        M::DELETE => "DELETE",
        M::HEAD => "HEAD",
        M::OPTIONS => "OPTIONS",
        M::PATCH => "PATCH",
        M::CONNECT => "CONNECT",
        M::TRACE => "TRACE",
        _ => return m.as_str().to_owned().into(),
    };
    s.into()
}

/// Export failure state, for quiet logs.
#[derive(Default)]
struct Health {
    /// When a failure was last logged, while exports fail.
    failing: Option<Instant>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::trace::{SpanId, TraceId};

    fn span() -> SpanRecord {
        SpanRecord {
            trace_id: TraceId(1),
            span_id: SpanId(2),
            parent: None,
            flags: 1,
            direction: Direction::Outbound,
            labels: None,
            method: http::Method::GET,
            uri: http::Uri::from_static("/x"),
            status: 200,
            grpc_status: None,
            server: None,
            retries: Some(0),
            flag: None,
            end: std::time::SystemTime::now(),
            duration: Duration::from_millis(1),
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_but_never_blocks() {
        let metrics = Metrics::new().expect("metrics");
        // Nothing listens there: exports fail, but requests must not notice.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let config = Tracing {
            collector: Some(format!("http://127.0.0.1:{port}")),
            max_queue: 2,
            export_interval: Duration::from_secs(60),
            ..Tracing::default()
        };
        let tracer = Tracer::start(&config, "a", "spiffe://t/ns/d/sa/a", &metrics).expect("start");
        let start = Instant::now();
        for _ in 0..100 {
            tracer.record(span());
        }
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "record() waited"
        );
        let dropped = metrics.trace_dropped("queue_full").get();
        // The exporter drains at most a queue's worth (2) per 50 ms tick.
        assert!(dropped >= 50, "only {dropped} of 100 dropped");
        // The flush exports what was queued; the dead collector makes that fail, counted.
        assert!(tracer.flush(Duration::from_secs(5)), "flush not confirmed");
        let failed = metrics.trace_dropped("export_failed").get();
        assert_eq!(dropped + failed, 100, "every span is accounted for");
        assert!(metrics.trace_export_errors.get() >= 1);
        assert_eq!(metrics.trace_spans_exported.get(), 0);
    }
}
