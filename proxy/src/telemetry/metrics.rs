//! Every metric the sidecar exports: names (composed from one prefix with explicit units),
//! typed labels, bucket bounds, and the handles the hot path records into.
//!
//! Label values are resolved to counter and histogram handles off the hot path: per route when
//! a snapshot is built, per caller once per connection. A request then only touches atomics,
//! and its labels come from config names and mesh identities, never from the request itself, so
//! the series count is bounded by the config, not by traffic.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

pub use super::events::{Event, RejectLabel, EVENT_SLOTS};
pub use super::names;

/// Request duration bucket bounds, seconds: 1 ms to 10 s, about 2.5x apart, dense where
/// sidecar-to-sidecar latencies fall.
pub const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Which side of the sidecar handled a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the local app to a mesh service.
    Outbound,
    /// From another sidecar to the local app.
    Inbound,
}

impl Direction {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// The labels of every per-request series.
#[derive(Debug, Clone)]
pub struct RouteLabels {
    /// Outbound or inbound.
    pub direction: Direction,
    /// Calling service.
    pub src_service: String,
    /// Called service.
    pub dst_service: String,
    /// Route name from config (`default` when the service has no routes, `inbound` inbound).
    pub route: String,
    /// SPIFFE identity of the caller.
    pub caller: String,
}

const ROUTE_LABELS: &[&str] = &["direction", "src_service", "dst_service", "route", "caller"];
const ENDPOINT_LABELS: &[&str] = &["src_service", "dst_service", "endpoint"];
const DESTINATION_LABELS: &[&str] = &["src_service", "dst_service"];

const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

fn class_index(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100 - 1),
        _ => 5,
    }
}

/// Everything the sidecar exports, in one registry.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    responses: IntCounterVec,
    duration: HistogramVec,
    /// Version of the config in force.
    pub config_version: IntGauge,
    /// Refused config files.
    pub config_rejected: IntCounter,
    /// 1 while connected to the control plane.
    pub control_plane_connected: IntGauge,
    /// Control-plane snapshots, `result` = ack | nack.
    pub control_plane_snapshots: IntCounterVec,
    /// Snapshot fields ignored because this sidecar does not know them.
    pub control_plane_unknown_fields: IntCounter,
    /// 1 while the last pushed trust bundle's roots differ from the mounted ones in force.
    pub trust_bundle_differs: IntGauge,
    /// Certificate expiry, Unix seconds.
    pub cert_expiry: Gauge,
    /// Inbound handshakes, `result` = ok | refused.
    pub tls_handshakes: IntCounterVec,
    /// Connections a traffic listener closed at accept because it held its limit.
    pub connections_refused: IntCounterVec,
    /// Certificate renewals, `result` = ok | error.
    pub cert_renewals: IntCounterVec,
    /// TCP tunnels opened, by `direction`, `dst_service`.
    pub tcp_opened: IntCounterVec,
    /// TCP tunnels closed, by `direction`, `dst_service`.
    pub tcp_closed: IntCounterVec,
    /// TCP bytes, by `direction`, `dst_service`, `flow` = sent | received.
    pub tcp_bytes: IntCounterVec,
    /// TCP connections refused, by `direction`, `dst_service`, `reason`.
    pub tcp_rejected: IntCounterVec,
    /// Access log lines written.
    pub access_log_lines: IntCounter,
    /// Access log records dropped.
    pub access_log_dropped: IntCounter,
    retries: IntCounterVec,
    retried: IntCounterVec,
    skipped: IntCounterVec,
    rejected: IntCounterVec,
    faults: IntCounterVec,
    ejections: IntCounterVec,
    endpoint_ejected: IntGaugeVec,
    endpoints_healthy: IntGaugeVec,
    endpoints: IntGaugeVec,
    in_flight: IntGaugeVec,
    /// Spans the collector accepted.
    pub trace_spans_exported: IntCounter,
    trace_spans_dropped: IntCounterVec,
    /// Failed export requests.
    pub trace_export_errors: IntCounter,
}

/// Why spans were dropped.
pub const TRACE_DROP_REASONS: &[&str] = &["queue_full", "export_failed"];

fn with_label(extra: &str) -> Vec<&str> {
    let mut v = ROUTE_LABELS.to_vec();
    v.push(extra);
    v
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn status_labels() -> Vec<&'static str> {
    let mut v = ROUTE_LABELS.to_vec();
    v.extend(["status_class", "status_code"]);
    v
}

impl Metrics {
    /// A fresh registry with every family registered.
    // Long on purpose: one registration per family, in the order docs/METRICS.md lists them.
    pub fn new() -> Result<Arc<Self>, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(names::REQUESTS, "Requests received, by route."),
            ROUTE_LABELS,
        )?;
        let responses = IntCounterVec::new(
            Opts::new(
                names::RESPONSES,
                "Responses sent, by route, status class and code.",
            ),
            &status_labels(),
        )?;
        let mut dl = ROUTE_LABELS.to_vec();
        dl.push("status_class");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                names::REQUEST_DURATION,
                "Time from request to the end of the response.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &dl,
        )?;
        let config_version =
            IntGauge::new(names::CONFIG_VERSION, "Version of the config in force.")?;
        let config_rejected = IntCounter::new(names::CONFIG_REJECTED, "Config files refused.")?;
        let control_plane_connected = IntGauge::new(
            names::CONTROL_PLANE_CONNECTED,
            "1 while connected to the control plane, else 0.",
        )?;
        let trust_bundle_differs = IntGauge::new(
            names::TRUST_BUNDLE_DIFFERS,
            "1 while the control plane's roots differ from the mounted trust bundle in force.",
        )?;
        let control_plane_snapshots = IntCounterVec::new(
            Opts::new(
                names::CONTROL_PLANE_SNAPSHOTS,
                "Control-plane snapshots, by result (ack, nack).",
            ),
            &["result"],
        )?;
        let control_plane_unknown_fields = IntCounter::new(
            names::CONTROL_PLANE_UNKNOWN_FIELDS,
            "Fields of control-plane snapshots this sidecar does not know (ignored).",
        )?;
        let cert_expiry = Gauge::new(
            names::CERT_EXPIRY,
            "When the workload certificate expires (Unix seconds).",
        )?;
        let tls_handshakes = IntCounterVec::new(
            Opts::new(names::TLS_HANDSHAKES, "Inbound TLS handshakes, by result."),
            &["result"],
        )?;
        let cert_renewals = IntCounterVec::new(
            Opts::new(
                names::CERT_RENEWALS,
                "Workload certificate renewals with the control plane, by result (ok, error).",
            ),
            &["result"],
        )?;
        for r in ["ok", "error"] {
            cert_renewals.with_label_values(&[r]);
        }
        let connections_refused = IntCounterVec::new(
            Opts::new(
                names::CONNECTIONS_REFUSED,
                "Connections a traffic listener closed at accept, by listener and reason.",
            ),
            &["listener", "reason"],
        )?;
        registry.register(Box::new(connections_refused.clone()))?;
        registry.register(Box::new(cert_renewals.clone()))?;
        let tcp = ["direction", "dst_service"];
        let tcp_opened =
            IntCounterVec::new(Opts::new(names::TCP_OPENED, "TCP tunnels opened."), &tcp)?;
        let tcp_closed =
            IntCounterVec::new(Opts::new(names::TCP_CLOSED, "TCP tunnels closed."), &tcp)?;
        let tcp_bytes = IntCounterVec::new(
            Opts::new(names::TCP_BYTES, "Bytes carried by TCP tunnels."),
            &["direction", "dst_service", "flow"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(responses.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(config_version.clone()))?;
        registry.register(Box::new(config_rejected.clone()))?;
        registry.register(Box::new(control_plane_connected.clone()))?;
        registry.register(Box::new(control_plane_snapshots.clone()))?;
        registry.register(Box::new(control_plane_unknown_fields.clone()))?;
        registry.register(Box::new(trust_bundle_differs.clone()))?;
        registry.register(Box::new(cert_expiry.clone()))?;
        registry.register(Box::new(tls_handshakes.clone()))?;
        registry.register(Box::new(tcp_opened.clone()))?;
        registry.register(Box::new(tcp_closed.clone()))?;
        registry.register(Box::new(tcp_bytes.clone()))?;
        let access_log_lines =
            IntCounter::new(names::ACCESS_LOG_LINES, "Access log lines written.")?;
        let access_log_dropped = IntCounter::new(
            names::ACCESS_LOG_DROPPED,
            "Access log records dropped because the writer fell behind.",
        )?;
        registry.register(Box::new(access_log_lines.clone()))?;
        registry.register(Box::new(access_log_dropped.clone()))?;
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let retries = counter(names::RETRIES, "Retry attempts sent.", ROUTE_LABELS)?;
        let tcp_rejected = counter(
            names::TCP_REJECTED,
            "TCP connections refused before a tunnel opened, by reason.",
            &["direction", "dst_service", "reason"],
        )?;
        let retried = counter(
            names::RETRIED_REQUESTS,
            "Requests that needed at least one retry, by final result.",
            &with_label("result"),
        )?;
        let skipped = counter(
            names::RETRIES_SKIPPED,
            "Retryable failures not retried, by reason.",
            &with_label("reason"),
        )?;
        let rejected = counter(
            names::REQUESTS_REJECTED,
            "Requests refused before any endpoint saw them, by reason.",
            &with_label("reason"),
        )?;
        let faults = counter(
            names::FAULTS_INJECTED,
            "Faults injected.",
            &with_label("kind"),
        )?;
        let ejections = counter(
            names::OUTLIER_EJECTIONS,
            "Outlier ejections of an endpoint.",
            ENDPOINT_LABELS,
        )?;
        let gauge =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, prometheus::Error> {
                let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(g.clone()))?;
                Ok(g)
            };
        let endpoint_ejected = gauge(
            names::ENDPOINT_EJECTED,
            "1 while an endpoint is ejected or half-open (breaker open).",
            ENDPOINT_LABELS,
        )?;
        let endpoints_healthy = gauge(
            names::ENDPOINTS_HEALTHY,
            "Endpoints of a destination that take traffic.",
            DESTINATION_LABELS,
        )?;
        let endpoints = gauge(
            names::ENDPOINTS,
            "Endpoints of a destination.",
            DESTINATION_LABELS,
        )?;
        let in_flight = gauge(
            names::IN_FLIGHT,
            "Requests in flight to a destination.",
            DESTINATION_LABELS,
        )?;
        let trace_spans_exported = IntCounter::new(
            names::TRACE_SPANS_EXPORTED,
            "Spans the trace collector accepted.",
        )?;
        registry.register(Box::new(trace_spans_exported.clone()))?;
        let trace_spans_dropped = counter(
            names::TRACE_SPANS_DROPPED,
            "Spans dropped, by reason.",
            &["reason"],
        )?;
        for r in TRACE_DROP_REASONS {
            trace_spans_dropped.with_label_values(&[*r]);
        }
        let trace_export_errors = IntCounter::new(
            names::TRACE_EXPORT_ERRORS,
            "Span export requests that failed.",
        )?;
        registry.register(Box::new(trace_export_errors.clone()))?;
        Ok(Arc::new(Metrics {
            trace_spans_exported,
            trace_spans_dropped,
            trace_export_errors,
            tcp_rejected,
            retries,
            retried,
            skipped,
            rejected,
            faults,
            ejections,
            endpoint_ejected,
            endpoints_healthy,
            endpoints,
            in_flight,
            registry,
            requests,
            responses,
            duration,
            config_version,
            config_rejected,
            control_plane_connected,
            control_plane_snapshots,
            control_plane_unknown_fields,
            trust_bundle_differs,
            cert_expiry,
            tls_handshakes,
            connections_refused,
            cert_renewals,
            tcp_opened,
            tcp_closed,
            tcp_bytes,
            access_log_lines,
            access_log_dropped,
        }))
    }

    /// Register a family defined elsewhere (the gateway's, `crate::gateway::metrics`) in the
    /// one registry `/metrics` serves.
    pub fn register(&self, c: Box<dyn prometheus::core::Collector>) -> prometheus::Result<()> {
        self.registry.register(c)
    }

    /// Resolve the handles of one route's series (off the hot path).
    pub fn route(self: &Arc<Self>, labels: RouteLabels) -> Arc<RouteMetrics> {
        let v = label_values(&labels);
        let requests = self.requests.with_label_values(&v);
        let durations = std::array::from_fn(|i| {
            let mut l = v.clone();
            l.push(STATUS_CLASSES[i]);
            self.duration.with_label_values(&l)
        });
        Arc::new(RouteMetrics {
            retries: self.retries.with_label_values(&v),
            metrics: self.clone(),
            labels,
            requests,
            durations,
            codes: (0..CODE_SLOTS).map(|_| OnceLock::new()).collect(),
            events: std::array::from_fn(|_| OnceLock::new()),
        })
    }

    /// The dropped-span counter for one reason (see [`TRACE_DROP_REASONS`]).
    pub fn trace_dropped(&self, reason: &str) -> IntCounter {
        self.trace_spans_dropped.with_label_values(&[reason])
    }

    /// The ejection counter of one endpoint (resolved off the hot path).
    pub fn ejections(&self, src: &str, dst: &str, endpoint: &str) -> IntCounter {
        self.ejections.with_label_values(&[src, dst, endpoint])
    }

    /// Forget every destination gauge before [`Metrics::destination`] sets the current ones,
    /// so endpoints removed by a reload stop being exported.
    pub fn clear_destination_gauges(&self) {
        self.endpoint_ejected.reset();
        self.endpoints_healthy.reset();
        self.endpoints.reset();
        self.in_flight.reset();
    }

    /// Set one destination's gauges: per-endpoint ejection state, healthy and total counts,
    /// requests in flight.
    pub fn destination(
        &self,
        src: &str,
        dst: &str,
        ejected: impl Iterator<Item = (String, bool)>,
        in_flight: usize,
    ) {
        let (mut total, mut healthy) = (0, 0);
        for (endpoint, is_ejected) in ejected {
            total += 1;
            healthy += i64::from(!is_ejected);
            self.endpoint_ejected
                .with_label_values(&[src, dst, &endpoint])
                .set(i64::from(is_ejected));
        }
        self.endpoints.with_label_values(&[src, dst]).set(total);
        self.endpoints_healthy
            .with_label_values(&[src, dst])
            .set(healthy);
        self.in_flight
            .with_label_values(&[src, dst])
            .set(i64::try_from(in_flight).unwrap_or(i64::MAX));
    }

    /// The text exposition of everything.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) =
            prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out)
        {
            log::error!("metrics encoding failed: {e}");
        }
        out
    }
}

fn label_values(l: &RouteLabels) -> Vec<&str> {
    vec![
        l.direction.as_str(),
        &l.src_service,
        &l.dst_service,
        &l.route,
        &l.caller,
    ]
}

/// Status codes 100..=599 each get a slot; anything else shares the last.
const CODE_SLOTS: usize = 501;

/// One route's series, resolved; recording touches only atomics (a status code's counter is
/// looked up in the registry once, on its first use).
pub struct RouteMetrics {
    metrics: Arc<Metrics>,
    labels: RouteLabels,
    requests: IntCounter,
    durations: [Histogram; 6],
    codes: Box<[OnceLock<IntCounter>]>,
    retries: IntCounter,
    events: [OnceLock<IntCounter>; EVENT_SLOTS],
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMetrics")
            .field("labels", &self.labels)
            .finish()
    }
}

impl RouteMetrics {
    /// The labels these series carry.
    pub fn labels(&self) -> &RouteLabels {
        &self.labels
    }

    /// Count a request as received.
    pub fn request(&self) {
        self.requests.inc();
    }

    /// Count a retry attempt.
    pub fn retry(&self) {
        self.retries.inc();
    }

    /// Count an event (its series is resolved on first use).
    pub fn event(&self, e: Event) {
        self.events[e.slot()]
            .get_or_init(|| {
                let m = &self.metrics;
                let (family, value) = match e {
                    Event::RetriedSucceeded => (&m.retried, "succeeded"),
                    Event::RetriedFailed => (&m.retried, "failed"),
                    Event::Skipped(r) => (&m.skipped, r.as_str()),
                    Event::Rejected(r) => (&m.rejected, r.as_str()),
                    Event::FaultDelay => (&m.faults, "delay"),
                    Event::FaultAbort => (&m.faults, "abort"),
                };
                let mut v = label_values(&self.labels);
                v.push(value);
                family.with_label_values(&v)
            })
            .inc();
    }

    /// Record a finished response.
    pub fn response(&self, status: u16, elapsed: Duration) {
        let class = class_index(status);
        self.durations[class].observe(elapsed.as_secs_f64());
        let slot = match status {
            100..=599 => usize::from(status - 100),
            _ => CODE_SLOTS - 1,
        };
        self.codes[slot]
            .get_or_init(|| {
                let code = if slot == CODE_SLOTS - 1 {
                    "other".to_owned()
                } else {
                    status.to_string()
                };
                let mut v = label_values(&self.labels);
                v.push(STATUS_CLASSES[class]);
                v.push(&code);
                self.metrics.responses.with_label_values(&v)
            })
            .inc();
    }
}

/// At the end of a request: the status sent (0 when none was) and the time taken, recorded
/// into `metrics`. `None` when the request never started (no `start`).
pub fn finish(
    session: &pingora_proxy::Session,
    start: Option<std::time::Instant>,
    metrics: Option<&RouteMetrics>,
) -> Option<(u16, Duration)> {
    let elapsed = start?.elapsed();
    let status = session.response_written().map_or(0, |r| r.status.as_u16());
    if let Some(m) = metrics {
        m.response(status, elapsed);
    }
    Some((status, elapsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_has_a_slot_of_its_own() {
        use weft_resilience::retry::StopReason as S;
        let mut events = vec![
            Event::RetriedSucceeded,
            Event::RetriedFailed,
            Event::FaultDelay,
            Event::FaultAbort,
        ];
        events.extend(
            [
                S::BudgetExhausted,
                S::AttemptsExhausted,
                S::NonIdempotent,
                S::BodyTooLarge,
                S::NotRetryable,
            ]
            .map(Event::Skipped),
        );
        events.extend(
            [
                RejectLabel::Overloaded,
                RejectLabel::QueueFull,
                RejectLabel::QueueTimeout,
                RejectLabel::RateLimited,
                RejectLabel::BreakerOpen,
                RejectLabel::Denied,
                RejectLabel::CertExpired,
                RejectLabel::NoPolicy,
                RejectLabel::BadPath,
            ]
            .map(Event::Rejected),
        );
        let mut slots: Vec<usize> = events.iter().map(|e| e.slot()).collect();
        assert!(slots.iter().all(|&s| s < EVENT_SLOTS));
        slots.sort_unstable();
        slots.dedup();
        assert_eq!(slots.len(), events.len(), "two events share a series slot");
    }

    fn labels(route: &str) -> RouteLabels {
        RouteLabels {
            direction: Direction::Outbound,
            src_service: "a".into(),
            dst_service: "b".into(),
            route: route.into(),
            caller: "spiffe://t/ns/d/sa/a".into(),
        }
    }

    #[test]
    fn names_carry_prefix_and_units() {
        assert_eq!(names::REQUEST_DURATION, "weft_request_duration_seconds");
        assert!(names::REQUESTS.ends_with("_total"));
        assert!(DURATION_BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn records_exactly_and_resolving_twice_shares_series() {
        let m = Metrics::new().expect("metrics");
        let r = m.route(labels("api"));
        let again = m.route(labels("api"));
        for _ in 0..3 {
            r.request();
            r.response(200, Duration::from_millis(2));
        }
        again.request();
        again.response(503, Duration::from_millis(20));
        r.response(999, Duration::from_millis(1));
        let text = m.render();
        assert!(text.contains(r#"weft_requests_total{caller="spiffe://t/ns/d/sa/a",direction="outbound",dst_service="b",route="api",src_service="a"} 4"#), "{text}");
        assert!(
            text.contains(r#"status_class="2xx",status_code="200"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"status_class="5xx",status_code="503"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"status_class="other",status_code="other"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"weft_request_duration_seconds_count{caller="spiffe://t/ns/d/sa/a",direction="outbound",dst_service="b",route="api",src_service="a",status_class="2xx"} 3"#), "{text}");
    }
}
