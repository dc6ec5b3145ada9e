//! One route's series: the handles [`Metrics::route`] resolves once per route (or per caller),
//! so that recording a request, a response or an event touches only atomics.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus::{Histogram, IntCounter};

use super::{Metrics, RouteLabels};
use crate::telemetry::events::{Event, EVENT_SLOTS};

impl Metrics {
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
}

const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

fn class_index(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100 - 1),
        _ => 5,
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
