//! What the observability scenario reads back from the sidecars after a run: their span and
//! access-log counters ([`SidecarCounters`]) and whether every span and log line is
//! accounted for ([`RunTelemetry`]).

use serde::Serialize;

use super::variant::*;

/// The sum of every sample of the metric family `name` (all label sets) in
/// Prometheus text; 0 when there is none.
pub fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = match rest.as_bytes().first()? {
                b'{' => &rest[rest.rfind('}')? + 1..],
                b' ' => rest,
                _ => return None,
            };
            let v: f64 = value.split_whitespace().next()?.parse().ok()?;
            (v.is_finite() && v >= 0.0).then(|| v.round() as u64)
        })
        .sum()
}

/// A sidecar's request, span and access-log counters (from `/metrics`), or
/// their growth over a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SidecarCounters {
    /// `weft_requests_total`, all series.
    pub requests: u64,
    /// `weft_trace_spans_exported_total`.
    pub spans_exported: u64,
    /// `weft_trace_spans_dropped_total`, every reason.
    pub spans_dropped: u64,
    /// `weft_trace_export_errors_total`.
    pub export_errors: u64,
    /// `weft_access_log_lines_total`.
    pub log_lines: u64,
    /// `weft_access_log_dropped_total`.
    pub log_dropped: u64,
}

impl SidecarCounters {
    /// The counters in a `/metrics` answer.
    pub fn parse(metrics: &str) -> Self {
        SidecarCounters {
            requests: metric_sum(metrics, "weft_requests_total"),
            spans_exported: metric_sum(metrics, "weft_trace_spans_exported_total"),
            spans_dropped: metric_sum(metrics, "weft_trace_spans_dropped_total"),
            export_errors: metric_sum(metrics, "weft_trace_export_errors_total"),
            log_lines: metric_sum(metrics, "weft_access_log_lines_total"),
            log_dropped: metric_sum(metrics, "weft_access_log_dropped_total"),
        }
    }

    /// Growth since `earlier`.
    pub fn since(&self, earlier: &SidecarCounters) -> SidecarCounters {
        SidecarCounters {
            requests: self.requests.saturating_sub(earlier.requests),
            spans_exported: self.spans_exported.saturating_sub(earlier.spans_exported),
            spans_dropped: self.spans_dropped.saturating_sub(earlier.spans_dropped),
            export_errors: self.export_errors.saturating_sub(earlier.export_errors),
            log_lines: self.log_lines.saturating_sub(earlier.log_lines),
            log_dropped: self.log_dropped.saturating_sub(earlier.log_dropped),
        }
    }

    /// The sum of both.
    pub fn plus(&self, o: &SidecarCounters) -> SidecarCounters {
        SidecarCounters {
            requests: self.requests + o.requests,
            spans_exported: self.spans_exported + o.spans_exported,
            spans_dropped: self.spans_dropped + o.spans_dropped,
            export_errors: self.export_errors + o.export_errors,
            log_lines: self.log_lines + o.log_lines,
            log_dropped: self.log_dropped + o.log_dropped,
        }
    }
}

/// Whether everything a run produced has been accounted for, given the
/// growth of the pair's counters (`client`, `app`) and of the spans the
/// collector received: with spans exported, every request's span exported
/// or dropped on both sidecars and every exported span received; with access
/// logs, every request's line written or dropped. (The sidecars export
/// partial batches only every second and write logs every 50 ms, so this
/// holds a little after the load stops.)
pub fn accounted_for(
    v: ObsVariant,
    client: &SidecarCounters,
    app: &SidecarCounters,
    collector_spans: u64,
) -> bool {
    let spans = |c: &SidecarCounters| c.spans_exported + c.spans_dropped >= c.requests;
    let logs = |c: &SidecarCounters| c.log_lines + c.log_dropped >= c.requests;
    (!v.exports_spans()
        || (spans(client)
            && spans(app)
            && collector_spans >= client.spans_exported + app.spans_exported))
        && (!v.access_log() || (logs(client) && logs(app)))
}

/// What the pair's telemetry did during one run (warm-up included) and
/// until it was accounted for ([`accounted_for`]).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RunTelemetry {
    /// Growth of sidecar A's counters.
    pub client: SidecarCounters,
    /// Growth of sidecar B's counters.
    pub app: SidecarCounters,
    /// Spans the collector received.
    pub collector_spans: u64,
    /// Export requests the collector received.
    pub collector_requests: u64,
    /// Bytes both access log files grew by (they are emptied after each run).
    pub access_log_bytes: u64,
    /// Whether everything was accounted for before the wait ran out.
    pub accounted_for: bool,
    /// How long after the load that took, seconds.
    pub wait_s: f64,
}

impl RunTelemetry {
    /// Spans dropped by both sidecars.
    pub fn spans_dropped(&self) -> u64 {
        self.client.spans_dropped + self.app.spans_dropped
    }

    /// Spans exported by both sidecars.
    pub fn spans_exported(&self) -> u64 {
        self.client.spans_exported + self.app.spans_exported
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums() {
        let text = "# HELP weft_requests_total requests received\n\
            # TYPE weft_requests_total counter\n\
            weft_requests_total{direction=\"outbound\",route=\"default\"} 1200\n\
            weft_requests_total{direction=\"inbound\",route=\"x}y\"} 34\n\
            weft_requests_total_other 99\n\
            weft_trace_spans_exported_total 1.5e3\n\
            weft_trace_spans_dropped_total{reason=\"queue_full\"} 7\n\
            weft_trace_spans_dropped_total{reason=\"export_failed\"} 3\n\
            weft_access_log_lines_total 10\n";
        assert_eq!(metric_sum(text, "weft_requests_total"), 1234);
        assert_eq!(metric_sum(text, "weft_missing_total"), 0);
        let c = SidecarCounters::parse(text);
        assert_eq!(
            c,
            SidecarCounters {
                requests: 1234,
                spans_exported: 1500,
                spans_dropped: 10,
                export_errors: 0,
                log_lines: 10,
                log_dropped: 0,
            }
        );
        let earlier = SidecarCounters {
            requests: 1000,
            spans_exported: 2000,
            ..Default::default()
        };
        let d = c.since(&earlier);
        assert_eq!(d.requests, 234);
        assert_eq!(d.spans_exported, 0, "saturates");
        assert_eq!(d.plus(&d).requests, 468);
    }

    #[test]
    fn accounting() {
        let c = |requests, exported, dropped, lines| SidecarCounters {
            requests,
            spans_exported: exported,
            spans_dropped: dropped,
            log_lines: lines,
            ..Default::default()
        };
        let v = ObsVariant::Tracing100;
        assert!(accounted_for(v, &c(10, 10, 0, 0), &c(10, 8, 2, 0), 18));
        assert!(!accounted_for(v, &c(10, 10, 0, 0), &c(10, 8, 2, 0), 17));
        assert!(!accounted_for(v, &c(10, 9, 0, 0), &c(10, 10, 0, 0), 19));
        let all = ObsVariant::AccessLogTracing100;
        assert!(!accounted_for(all, &c(10, 10, 0, 9), &c(10, 10, 0, 10), 20));
        assert!(accounted_for(all, &c(10, 10, 0, 10), &c(10, 10, 0, 10), 20));
        assert!(accounted_for(
            ObsVariant::Baseline,
            &c(10, 0, 0, 0),
            &c(10, 0, 0, 0),
            0
        ));
        assert!(accounted_for(
            ObsVariant::Tracing0,
            &c(10, 0, 0, 0),
            &c(10, 0, 0, 0),
            0
        ));
        assert!(!accounted_for(
            ObsVariant::AccessLog,
            &c(10, 0, 0, 3),
            &c(10, 0, 0, 10),
            0
        ));
    }
}
