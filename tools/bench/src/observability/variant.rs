//! What the observability scenario varies: access logs and tracing per pair
//! ([`ObsVariant`]), which side of a pair ([`Side`]), how long its pairs live
//! ([`PairLifetime`]) and the sidecar config lines each variant adds.

use std::fmt::Write as _;
use std::net::SocketAddr;

use serde::Serialize;
use weft_policy::wire::{ConfigFile, Tracing};

/// The largest throughput cost of access logs (on both sidecars, against
/// the default settings) the issue allows, percent.
pub const MAX_ACCESS_LOG_COST_PCT: f64 = 10.0;

/// `tracing.max_queue` of the 100 % variants: about three seconds of spans
/// at the pair's saturation rate, so that a short stall of the exporter does
/// not drop spans.
pub const TRACE_MAX_QUEUE: usize = 65_536;

/// Where the observability runs' watched processes are in
/// [`SaturationResult::cpu_seconds`] past the app and the variant's pair:
/// every idle sidecar (the other variants' pairs and the benchmark's pair).
pub const FIRST_IDLE: usize = 3;

/// How the observability variants' pairs live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PairLifetime {
    /// Every pair started once, before the first run, and kept: the other
    /// variants' pairs idle (on the server CPU) during each run.
    Kept,
    /// Each pair started right before each of its runs and ended right
    /// after: no other variant's sidecar exists during a run.
    PerRun,
}

impl PairLifetime {
    /// In the report.
    pub fn describe(self) -> &'static str {
        match self {
            PairLifetime::Kept => {
                "all pairs started once and kept for all runs, idle while the others run"
            }
            PairLifetime::PerRun => {
                "each pair started right before each of its runs and ended right after, so no other \
                 variant's sidecar exists during a run"
            }
        }
    }
}

/// One configuration of the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ObsVariant {
    /// The default config: metrics (always on), no access log, no `tracing`
    /// block (no trace starts at the sidecar; received context passes on).
    #[serde(rename = "baseline")]
    Baseline,
    /// `access_log: <file>` on both sidecars.
    #[serde(rename = "access-log")]
    AccessLog,
    /// `tracing: {collector, sampling: 0.0}` on both: the outbound sidecar
    /// starts every trace, unsampled; no span is recorded.
    #[serde(rename = "tracing-0")]
    Tracing0,
    /// `tracing: {collector, sampling: 1.0, max_queue: 65536}` on both: every
    /// request is traced, two spans exported per request.
    #[serde(rename = "tracing-100")]
    Tracing100,
    /// Access log and tracing at 100 %.
    #[serde(rename = "access-log+tracing-100")]
    AccessLogTracing100,
}

/// Which sidecar of a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Sidecar A, beside the client (outbound).
    Client,
    /// Sidecar B, beside the app (inbound).
    App,
}

impl Side {
    /// `a` / `b`, as in the benchmark's pair.
    pub fn letter(self) -> &'static str {
        match self {
            Side::Client => "a",
            Side::App => "b",
        }
    }
}

impl ObsVariant {
    /// Every variant, baseline first (the order of [`ObsVariant::index`]).
    pub const ALL: [ObsVariant; 5] = [
        ObsVariant::Baseline,
        ObsVariant::AccessLog,
        ObsVariant::Tracing0,
        ObsVariant::Tracing100,
        ObsVariant::AccessLogTracing100,
    ];

    /// Position in [`ObsVariant::ALL`].
    pub fn index(self) -> usize {
        match self {
            ObsVariant::Baseline => 0,
            ObsVariant::AccessLog => 1,
            ObsVariant::Tracing0 => 2,
            ObsVariant::Tracing100 => 3,
            ObsVariant::AccessLogTracing100 => 4,
        }
    }

    /// Short name (JSON, file names): `baseline`, `access-log`, `tracing-0`,
    /// `tracing-100`, `access-log+tracing-100`.
    pub fn key(self) -> &'static str {
        match self {
            ObsVariant::Baseline => "baseline",
            ObsVariant::AccessLog => "access-log",
            ObsVariant::Tracing0 => "tracing-0",
            ObsVariant::Tracing100 => "tracing-100",
            ObsVariant::AccessLogTracing100 => "access-log+tracing-100",
        }
    }

    /// Name in tables.
    pub fn label(self) -> &'static str {
        match self {
            ObsVariant::Baseline => "baseline (defaults)",
            ObsVariant::AccessLog => "access log",
            ObsVariant::Tracing0 => "tracing 0 %",
            ObsVariant::Tracing100 => "tracing 100 %",
            ObsVariant::AccessLogTracing100 => "access log + tracing 100 %",
        }
    }

    /// Whether both sidecars write access logs.
    pub fn access_log(self) -> bool {
        matches!(
            self,
            ObsVariant::AccessLog | ObsVariant::AccessLogTracing100
        )
    }

    /// `tracing.sampling`, if the variant has a `tracing` block (with a
    /// collector).
    pub fn sampling(self) -> Option<f64> {
        match self {
            ObsVariant::Baseline | ObsVariant::AccessLog => None,
            ObsVariant::Tracing0 => Some(0.0),
            ObsVariant::Tracing100 | ObsVariant::AccessLogTracing100 => Some(1.0),
        }
    }

    /// Whether every request is traced (spans exported).
    pub fn exports_spans(self) -> bool {
        self.sampling().is_some_and(|p| p > 0.0)
    }

    /// The access log file of `side` (relative to the config's directory).
    pub fn access_log_file(self, side: Side) -> String {
        format!("access-{}-{}.log", self.key(), side.letter())
    }

    /// The `tracing` block of this variant's sidecars, exporting to `collector` (none for
    /// the variants without tracing).
    pub fn tracing(self, collector: SocketAddr) -> Option<Tracing> {
        self.sampling().map(|p| Tracing {
            collector: Some(format!("http://{collector}")),
            sampling: Some(p),
            // The bounded export queue only matters when spans are exported.
            max_queue: (p > 0.0).then_some(TRACE_MAX_QUEUE),
            export_interval: None,
        })
    }

    /// What this variant sets in `side`'s config (nothing for the baseline): the access
    /// log, and the `tracing` block with the collector at `collector`.
    pub fn apply(self, cfg: &mut ConfigFile, side: Side, collector: SocketAddr) {
        if self.access_log() {
            cfg.access_log = Some(self.access_log_file(side));
        }
        cfg.tracing = self.tracing(collector);
    }

    /// For the report: the top-level lines [`ObsVariant::apply`] adds to `side`'s config,
    /// `key: value` with the `tracing` block serialized as JSON (YAML's flow style, so a
    /// table cell reads like the config); empty for the baseline.
    pub fn config_lines(self, side: Side, collector: SocketAddr) -> String {
        let mut s = String::new();
        if self.access_log() {
            let log = serde_yaml::to_string(&self.access_log_file(side)).unwrap_or_default();
            let _ = writeln!(s, "access_log: {}", log.trim_end());
        }
        if let Some(t) = self.tracing(collector) {
            let _ = writeln!(
                s,
                "tracing: {}",
                serde_json::to_string(&t).unwrap_or_default()
            );
        }
        s
    }

    /// The order the variants run in during run `run` (from 1):
    /// [`ObsVariant::ALL`] rotated by `run - 1`, so over five runs each
    /// variant runs once in each position.
    pub fn order(run: usize) -> [ObsVariant; 5] {
        let mut v = Self::ALL;
        v.rotate_left(run.saturating_sub(1) % Self::ALL.len());
        v
    }

    /// What the app must see of trace context through this variant's pair
    /// (the load sends no `traceparent`): none without a collector; one that
    /// the outbound sidecar started, unsampled (flags `00`) at 0 %, sampled
    /// (`01`) at 100 %.
    pub fn expected_trace_flags(self) -> Option<&'static str> {
        match self.sampling() {
            None => None,
            Some(p) if p > 0.0 => Some("01"),
            Some(_) => Some("00"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn collector() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 4317))
    }

    #[test]
    fn config_lines_per_variant() {
        let c = collector();
        assert_eq!(ObsVariant::Baseline.config_lines(Side::Client, c), "");
        assert_eq!(
            ObsVariant::AccessLog.config_lines(Side::Client, c),
            "access_log: access-access-log-a.log\n"
        );
        assert_eq!(
            ObsVariant::AccessLog.config_lines(Side::App, c),
            "access_log: access-access-log-b.log\n"
        );
        assert_eq!(
            ObsVariant::Tracing0.config_lines(Side::App, c),
            "tracing: {\"collector\":\"http://127.0.0.1:4317\",\"sampling\":0.0}\n"
        );
        assert_eq!(
            ObsVariant::Tracing100.config_lines(Side::Client, c),
            "tracing: {\"collector\":\"http://127.0.0.1:4317\",\"sampling\":1.0,\"max_queue\":65536}\n"
        );
        assert_eq!(
            ObsVariant::AccessLogTracing100.config_lines(Side::Client, c),
            "access_log: access-access-log+tracing-100-a.log\n\
             tracing: {\"collector\":\"http://127.0.0.1:4317\",\"sampling\":1.0,\"max_queue\":65536}\n"
        );
        // The lines are what `apply` sets, read back as YAML.
        for v in ObsVariant::ALL {
            let y = v.config_lines(Side::Client, c);
            let back: serde_yaml::Value = serde_yaml::from_str(&y).unwrap();
            assert_eq!(back.get("tracing").is_some(), v.sampling().is_some(), "{y}");
        }
        for v in ObsVariant::ALL {
            let y = v.config_lines(Side::Client, c);
            assert_eq!(y.contains("access_log"), v.access_log(), "{y}");
            assert_eq!(y.contains("tracing"), v.sampling().is_some(), "{y}");
        }
    }

    #[test]
    fn variants() {
        for (i, v) in ObsVariant::ALL.into_iter().enumerate() {
            assert_eq!(v.index(), i);
        }
        assert_eq!(ObsVariant::order(1), ObsVariant::ALL);
        assert_eq!(
            ObsVariant::order(2),
            [
                ObsVariant::AccessLog,
                ObsVariant::Tracing0,
                ObsVariant::Tracing100,
                ObsVariant::AccessLogTracing100,
                ObsVariant::Baseline,
            ]
        );
        assert_eq!(ObsVariant::order(6), ObsVariant::ALL);
        // Over five runs each variant runs once in each position.
        for pos in 0..5 {
            let mut at: Vec<usize> = (1..=5).map(|r| ObsVariant::order(r)[pos].index()).collect();
            at.sort_unstable();
            assert_eq!(at, vec![0, 1, 2, 3, 4]);
        }
        assert!(!ObsVariant::Tracing0.exports_spans());
        assert!(ObsVariant::AccessLogTracing100.exports_spans());
        assert_eq!(ObsVariant::Baseline.expected_trace_flags(), None);
        assert_eq!(ObsVariant::Tracing0.expected_trace_flags(), Some("00"));
        assert_eq!(ObsVariant::Tracing100.expected_trace_flags(), Some("01"));
        assert_eq!(
            serde_json::to_value(ObsVariant::AccessLogTracing100).unwrap(),
            serde_json::json!("access-log+tracing-100")
        );
    }
}
