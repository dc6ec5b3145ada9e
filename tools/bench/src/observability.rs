//! The observability cost scenario: what access logs and tracing cost the
//! sidecar pair's saturation throughput, against the default settings.
//!
//! The same pair topology as the benchmark's weft scenario (client → outbound
//! sidecar → mTLS → inbound sidecar → the same app), one pair per
//! [`ObsVariant`], each started once with its own configs (access log and
//! collector are fixed for a sidecar's life) and kept for all runs; within
//! each run every variant is driven once, closed loop, one at a time, in an
//! order that rotates from run to run. The tracing variants export to a real
//! OTLP/gRPC collector inside the benchmark process
//! ([`crate::collector`]); after each run the sidecars' span and access-log
//! counters are read from their `/metrics`, so spans that were dropped
//! (which makes the measured cost too low) are reported.
//!
//! Metrics are always on (they cannot be turned off), so the baseline, the
//! default settings, includes them. The bound (observability at
//! default settings under 10 % of throughput) is checked as the cost of
//! turning the access logs on relative to that baseline
//! ([`MAX_ACCESS_LOG_COST_PCT`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;

use serde::Serialize;

use crate::load::SaturationResult;
use crate::report::{fmt_num, fmt_opt};
use crate::results::{check, TargetCheck, DISTURBED_PCT, SIDECAR_A, SIDECAR_B};
use crate::stats::{median, median_opt, ratio};

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

    /// The lines this variant adds to the top level of `side`'s config
    /// (empty for the baseline): the access log, the `tracing` block with
    /// the collector at `collector`.
    pub fn config_lines(self, side: Side, collector: SocketAddr) -> String {
        let mut s = String::new();
        if self.access_log() {
            let _ = writeln!(s, "access_log: {}", self.access_log_file(side));
        }
        match self.sampling() {
            Some(p) if p > 0.0 => {
                let _ = writeln!(
                    s,
                    "tracing: {{collector: \"http://{collector}\", sampling: {p:.1}, max_queue: {TRACE_MAX_QUEUE}}}"
                );
            }
            Some(p) => {
                let _ = writeln!(
                    s,
                    "tracing: {{collector: \"http://{collector}\", sampling: {p:.1}}}"
                );
            }
            None => {}
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

fn pct_of_one_cpu(cpu_s: f64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        cpu_s / seconds * 100.0
    } else {
        0.0
    }
}

/// One variant's saturation run.
#[derive(Debug, Clone, Serialize)]
pub struct ObsRun {
    /// Repetition number, from 1.
    pub run: usize,
    /// Which variant.
    pub variant: ObsVariant,
    /// The closed-loop run. Watched processes (`cpu_seconds`): the app, the
    /// variant's sidecar A and B, then every idle sidecar.
    pub saturation: SaturationResult,
    /// Sidecar A + B CPU seconds per 100k requests.
    pub pair_cpu_s_per_100k: Option<f64>,
    /// CPU the idle sidecars (other variants' pairs, the benchmark's pair)
    /// used during the window, percent of one CPU.
    pub idle_sidecars_cpu_pct: f64,
    /// CPU other processes on the machine used during the window, percent
    /// of one CPU.
    pub other_work_pct: f64,
    /// How busy the load generator's CPU (which also runs the collector) was
    /// during the window, percent.
    pub loadgen_core_busy_pct: Option<f64>,
    /// How busy the server CPU was during the window, percent.
    pub server_core_busy_pct: Option<f64>,
    /// The collector thread's CPU over the whole run (warm-up included),
    /// percent of one CPU (variants that export spans).
    pub collector_cpu_pct: Option<f64>,
    /// Span and access-log counters.
    pub telemetry: RunTelemetry,
}

impl ObsRun {
    /// Builds the record; `loadgen_core` / `server_core` are the CPUs.
    pub fn new(
        run: usize,
        variant: ObsVariant,
        saturation: SaturationResult,
        (loadgen_core, server_core): (usize, usize),
        collector_cpu_pct: Option<f64>,
        telemetry: RunTelemetry,
    ) -> Self {
        let cpu = |i: usize| saturation.cpu_seconds.get(i).copied().unwrap_or(0.0);
        let pair = cpu(SIDECAR_A) + cpu(SIDECAR_B);
        let idle: f64 = saturation.cpu_seconds.iter().skip(FIRST_IDLE).sum();
        let core = |i: usize| saturation.cpu_busy_pct.get(i).copied().flatten();
        ObsRun {
            run,
            variant,
            pair_cpu_s_per_100k: (saturation.requests > 0)
                .then(|| pair / saturation.requests as f64 * 1e5),
            idle_sidecars_cpu_pct: pct_of_one_cpu(idle, saturation.seconds),
            other_work_pct: pct_of_one_cpu(saturation.others_cpu_seconds, saturation.seconds),
            loadgen_core_busy_pct: core(loadgen_core),
            server_core_busy_pct: core(server_core),
            collector_cpu_pct,
            telemetry,
            saturation,
        }
    }

    /// Why this run's numbers are suspect (any error: every answer must be 200).
    pub fn flag(&self) -> Option<String> {
        let s = &self.saturation;
        if s.errors == 0 {
            return None;
        }
        let mut msg = format!(
            "run {} observability, {}: {} error(s)",
            self.run,
            self.variant.label(),
            s.errors
        );
        if !s.error_samples.is_empty() {
            let examples: Vec<&str> = s.error_samples.iter().map(String::as_str).take(3).collect();
            let _ = write!(msg, "; e.g. {}", examples.join(" | "));
        }
        Some(msg)
    }
}

/// Medians over one variant's runs, and its ratios to the baseline's.
#[derive(Debug, Clone, Serialize)]
pub struct ObsSummary {
    /// Which variant.
    pub variant: ObsVariant,
    /// Runs summarized.
    pub runs: usize,
    /// Saturation throughput, req/s, median.
    pub rps: Option<f64>,
    /// `rps` over the baseline's.
    pub ratio: Option<f64>,
    /// `(1 - ratio) * 100`: the throughput it costs, percent.
    pub cost_pct: Option<f64>,
    /// Median of the per-run ratios (this variant over the same run's baseline).
    pub paired_ratio_median: Option<f64>,
    /// Pair CPU seconds per 100k requests, median.
    pub pair_cpu_s_per_100k: Option<f64>,
    /// `pair_cpu_s_per_100k` over the baseline's.
    pub cpu_ratio: Option<f64>,
    /// Load generator (and collector) CPU busy, percent, median.
    pub loadgen_core_busy_pct: Option<f64>,
    /// Server CPU busy, percent, median.
    pub server_core_busy_pct: Option<f64>,
    /// Idle sidecars' CPU, percent of one CPU, median.
    pub idle_sidecars_cpu_pct: Option<f64>,
    /// The collector thread's CPU, percent of one CPU, median.
    pub collector_cpu_pct: Option<f64>,
    /// Sidecar A's counters, summed over the runs.
    pub client: SidecarCounters,
    /// Sidecar B's counters, summed over the runs.
    pub app: SidecarCounters,
    /// Spans the collector received, over the runs.
    pub collector_spans: u64,
    /// Access log bytes written (both files), over the runs.
    pub access_log_bytes: u64,
    /// Runs whose telemetry was not all accounted for in time.
    pub unaccounted_runs: usize,
    /// Errors over all runs.
    pub errors: u64,
}

impl ObsSummary {
    /// Summarizes `variant`'s runs in `runs`.
    pub fn of(variant: ObsVariant, runs: &[ObsRun]) -> Self {
        let of = |v: ObsVariant| runs.iter().filter(move |r| r.variant == v);
        let rs: Vec<&ObsRun> = of(variant).collect();
        let med = |f: &dyn Fn(&ObsRun) -> Option<f64>| median_opt(rs.iter().map(|r| f(r)));
        let rps_of = |v: ObsVariant| median(&of(v).map(|r| r.saturation.rps).collect::<Vec<_>>());
        let cpu_of = |v: ObsVariant| median_opt(of(v).map(|r| r.pair_cpu_s_per_100k));
        let rps = rps_of(variant);
        let r = ratio(rps, rps_of(ObsVariant::Baseline));
        let paired: Vec<f64> = rs
            .iter()
            .filter_map(|x| {
                let b = of(ObsVariant::Baseline).find(|b| b.run == x.run)?;
                ratio(Some(x.saturation.rps), Some(b.saturation.rps))
            })
            .collect();
        let pair_cpu = cpu_of(variant);
        let zero = SidecarCounters::default();
        ObsSummary {
            variant,
            runs: rs.len(),
            rps,
            ratio: r,
            cost_pct: r.map(|r| (1.0 - r) * 100.0),
            paired_ratio_median: median(&paired),
            pair_cpu_s_per_100k: pair_cpu,
            cpu_ratio: ratio(pair_cpu, cpu_of(ObsVariant::Baseline)),
            loadgen_core_busy_pct: med(&|r| r.loadgen_core_busy_pct),
            server_core_busy_pct: med(&|r| r.server_core_busy_pct),
            idle_sidecars_cpu_pct: med(&|r| Some(r.idle_sidecars_cpu_pct)),
            collector_cpu_pct: med(&|r| r.collector_cpu_pct),
            client: rs.iter().fold(zero, |a, r| a.plus(&r.telemetry.client)),
            app: rs.iter().fold(zero, |a, r| a.plus(&r.telemetry.app)),
            collector_spans: rs.iter().map(|r| r.telemetry.collector_spans).sum(),
            access_log_bytes: rs.iter().map(|r| r.telemetry.access_log_bytes).sum(),
            unaccounted_runs: rs.iter().filter(|r| !r.telemetry.accounted_for).count(),
            errors: rs.iter().map(|r| r.saturation.errors).sum(),
        }
    }

    /// Spans dropped by both sidecars over the runs.
    pub fn spans_dropped(&self) -> u64 {
        self.client.spans_dropped + self.app.spans_dropped
    }

    /// Spans exported by both sidecars over the runs.
    pub fn spans_exported(&self) -> u64 {
        self.client.spans_exported + self.app.spans_exported
    }
}

/// The scenario's settings, recorded with the results.
#[derive(Debug, Clone, Serialize)]
pub struct ObsConfig {
    /// Runs per variant.
    pub runs: usize,
    /// Connections of the saturation runs.
    pub connections: usize,
    /// Warm-up before each measured window, seconds.
    pub warmup_s: f64,
    /// Measured window, seconds.
    pub duration_s: f64,
    /// How the variants' pairs live.
    pub pair_lifetime: PairLifetime,
    /// The same, in words.
    pub processes: String,
    /// The collector.
    pub collector: String,
    /// What each variant adds to sidecar A's config (sidecar B's differs
    /// only in the access log's file name), by [`ObsVariant::key`].
    pub config_lines: BTreeMap<String, String>,
}

/// The observability scenario's results.
#[derive(Debug, Clone, Serialize)]
pub struct ObservabilityReport {
    /// Settings.
    pub config: ObsConfig,
    /// One summary per variant that ran, in the order of [`ObsVariant::ALL`].
    pub variants: Vec<ObsSummary>,
    /// Every run, in the order they ran.
    pub runs: Vec<ObsRun>,
}

impl ObservabilityReport {
    /// Builds the summaries from the runs.
    pub fn new(config: ObsConfig, runs: Vec<ObsRun>) -> Self {
        let variants = ObsVariant::ALL
            .into_iter()
            .filter(|&v| runs.iter().any(|r| r.variant == v))
            .map(|v| ObsSummary::of(v, &runs))
            .collect();
        ObservabilityReport {
            config,
            variants,
            runs,
        }
    }

    /// The variant's summary, if it ran.
    pub fn summary(&self, v: ObsVariant) -> Option<&ObsSummary> {
        self.variants.iter().find(|s| s.variant == v)
    }

    /// The target: with access logs on, the pair keeps at least
    /// `100 - MAX_ACCESS_LOG_COST_PCT` % of the default settings' throughput.
    pub fn targets(&self) -> Vec<TargetCheck> {
        vec![check(
            "observability: pair throughput with access logs on, % of default settings (metrics on, logs off)",
            &format!(">= {}", fmt_num(100.0 - MAX_ACCESS_LOG_COST_PCT, 0)),
            self.summary(ObsVariant::AccessLog)
                .and_then(|s| s.ratio)
                .map(|r| r * 100.0),
            |v| v >= 100.0 - MAX_ACCESS_LOG_COST_PCT,
        )]
    }

    /// Runs with errors.
    pub fn flags(&self) -> Vec<String> {
        self.runs.iter().filter_map(ObsRun::flag).collect()
    }

    /// Runs during which other work used the CPUs noticeably.
    pub fn disturbed(&self) -> Vec<String> {
        self.runs
            .iter()
            .filter(|r| r.other_work_pct > DISTURBED_PCT)
            .map(|r| format!("run {} observability {}", r.run, r.variant.label()))
            .collect()
    }

    /// Spans dropped over every run of every variant.
    pub fn spans_dropped(&self) -> u64 {
        self.variants.iter().map(ObsSummary::spans_dropped).sum()
    }

    /// Appends the report section (markdown) to `s`.
    pub fn write_markdown(&self, s: &mut String) {
        let c = &self.config;
        let _ = writeln!(s, "\n## Observability cost\n");
        let _ = writeln!(
            s,
            "The same pair (client → sidecar A → mTLS → sidecar B → the same app) in {} configurations, one pair \
             per variant ({}); closed loop, {} connections, {} s after {} s warm-up, the variants one at a time, \
             interleaved (the order rotates from run to run), medians of {} run(s). The tracing variants export to \
             {}. Ratios are to the baseline (the default settings).\n",
            self.variants.len(),
            c.processes,
            c.connections,
            fmt_num(c.duration_s, 1),
            fmt_num(c.warmup_s, 1),
            c.runs,
            c.collector,
        );
        let _ = writeln!(
            s,
            "| variant | added to both sidecars' configs | req/s | × baseline | cost | per-run ratio, median | pair CPU s / 100k | × baseline | CPU busy: server / load generator % | errors |"
        );
        let _ = writeln!(
            s,
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        let x =
            |r: Option<f64>| r.map_or_else(|| "–".to_owned(), |r| format!("{}×", fmt_num(r, 3)));
        for v in &self.variants {
            let lines = c
                .config_lines
                .get(v.variant.key())
                .map(|l| l.trim_end().replace('\n', "<br>"))
                .filter(|l| !l.is_empty())
                .map_or_else(
                    || "– (metrics on; no access log; no `tracing`)".to_owned(),
                    |l| format!("`{l}`"),
                );
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} |",
                v.variant.label(),
                lines,
                fmt_opt(v.rps, 0),
                x(v.ratio),
                if v.variant == ObsVariant::Baseline {
                    "–".to_owned()
                } else {
                    fmt_opt(v.cost_pct, 1) + " %"
                },
                x(v.paired_ratio_median),
                fmt_opt(v.pair_cpu_s_per_100k, 3),
                x(v.cpu_ratio),
                fmt_opt(v.server_core_busy_pct, 0),
                fmt_opt(v.loadgen_core_busy_pct, 0),
                v.errors,
            );
        }

        let base = self.summary(ObsVariant::Baseline);
        let log = self.summary(ObsVariant::AccessLog);
        let _ = writeln!(
            s,
            "\n**Metrics + logs at default settings.** The default settings are the baseline: metrics on (always: they \
             cannot be turned off, so their cost is inside the baseline, and inside the weft column above, and this \
             benchmark cannot separate it), access log off, no `tracing` block: {} req/s, {} pair CPU s / 100k. \
             **Access logs on** (both sidecars) against that: {} req/s = **{}** of the default settings, cost **{} %** \
             (bound: under {} %: {}), pair CPU s / 100k {}.",
            fmt_opt(base.and_then(|b| b.rps), 0),
            fmt_opt(base.and_then(|b| b.pair_cpu_s_per_100k), 3),
            fmt_opt(log.and_then(|l| l.rps), 0),
            x(log.and_then(|l| l.ratio)),
            fmt_opt(log.and_then(|l| l.cost_pct), 1),
            fmt_num(MAX_ACCESS_LOG_COST_PCT, 0),
            match log.and_then(|l| l.cost_pct) {
                Some(c) if c < MAX_ACCESS_LOG_COST_PCT => "met",
                Some(_) => "**not met**",
                None => "not measured",
            },
            x(log.and_then(|l| l.cpu_ratio)),
        );
        let checked =
            |r: &&ObsRun| matches!(r.variant, ObsVariant::Baseline | ObsVariant::AccessLog);
        let disturbed = self
            .runs
            .iter()
            .filter(checked)
            .filter(|r| r.other_work_pct > DISTURBED_PCT)
            .count();
        if disturbed > 0 {
            let _ = writeln!(
                s,
                "\n**{disturbed} of the {} baseline and access-log runs were disturbed** (other work over {} % of a \
                 CPU): these medians are not reliable; the median of the per-run ratios ({}), which compares runs \
                 a few seconds apart, is the better estimate, and a quiet machine the real answer.",
                self.runs.iter().filter(checked).count(),
                fmt_num(DISTURBED_PCT, 0),
                x(log.and_then(|l| l.paired_ratio_median)),
            );
        }

        let logged: Vec<&ObsSummary> = self
            .variants
            .iter()
            .filter(|v| v.variant.access_log())
            .collect();
        if !logged.is_empty() {
            let parts: Vec<String> = logged
                .iter()
                .map(|v| {
                    let lines = v.client.log_lines + v.app.log_lines;
                    format!(
                        "{}: {} lines written ({} bytes per line), {} dropped",
                        v.variant.label(),
                        fmt_num(lines as f64, 0),
                        if lines > 0 {
                            fmt_num(v.access_log_bytes as f64 / lines as f64, 0)
                        } else {
                            "–".to_owned()
                        },
                        fmt_num((v.client.log_dropped + v.app.log_dropped) as f64, 0),
                    )
                })
                .collect();
            let _ = writeln!(
                s,
                "\nAccess logs, both sidecars, all runs (warm-up included): {}.",
                parts.join("; ")
            );
        }

        let traced: Vec<&ObsSummary> = self
            .variants
            .iter()
            .filter(|v| v.variant.sampling().is_some())
            .collect();
        if !traced.is_empty() {
            let _ = writeln!(
                s,
                "\n| spans, all runs ({}) | requests A / B | exported A / B | dropped A / B | export errors | received by the collector | collector CPU % |",
                match c.pair_lifetime {
                    PairLifetime::PerRun => "warm-up and verification requests included",
                    PairLifetime::Kept => "warm-up included",
                }
            );
            let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
            let n = |v: u64| fmt_num(v as f64, 0);
            for v in &traced {
                let _ = writeln!(
                    s,
                    "| {} | {} / {} | {} / {} | {} / {} | {} | {} | {} |",
                    v.variant.label(),
                    n(v.client.requests),
                    n(v.app.requests),
                    n(v.client.spans_exported),
                    n(v.app.spans_exported),
                    n(v.client.spans_dropped),
                    n(v.app.spans_dropped),
                    n(v.client.export_errors + v.app.export_errors),
                    n(v.collector_spans),
                    fmt_opt(v.collector_cpu_pct, 0),
                );
            }
            let dropped = self.spans_dropped();
            if dropped > 0 {
                let _ = writeln!(
                    s,
                    "\n**{} span(s) dropped** (`weft_trace_spans_dropped_total`): the exporter fell behind, so the spans it \
                     dropped were never converted or sent and **the tracing cost above is understated**.",
                    fmt_num(dropped as f64, 0)
                );
            } else if traced.iter().any(|v| v.variant.exports_spans()) {
                let _ = writeln!(
                    s,
                    "\nNo span dropped: at 100 % every request's span on both sidecars was exported, and the collector \
                     received them (the cost above is the whole cost of exporting them)."
                );
            }
        }
        let unaccounted: usize = self.variants.iter().map(|v| v.unaccounted_runs).sum();
        if unaccounted > 0 {
            let _ = writeln!(
                s,
                "\n{unaccounted} run(s) ended before every span or log line was accounted for (exported / written or \
                 dropped); their counts are low."
            );
        }
        let idle = median_opt(self.runs.iter().map(|r| Some(r.idle_sidecars_cpu_pct)));
        let idle_max = self
            .runs
            .iter()
            .map(|r| r.idle_sidecars_cpu_pct)
            .max_by(f64::total_cmp);
        let _ = writeln!(
            s,
            "\nThe idle sidecars on the server CPU during a run ({}) used {} % of one CPU (median; at most {} %). \
             CPU busy is of the server CPU (app + sidecars) and of the load generator's CPU (load generator + \
             collector).",
            match c.pair_lifetime {
                PairLifetime::Kept => "the other variants' pairs and the benchmark's pair",
                PairLifetime::PerRun => "the benchmark's pair",
            },
            fmt_opt(idle, 1),
            fmt_opt(idle_max, 1),
        );

        let other = |o: f64| {
            if o > DISTURBED_PCT {
                format!("**{}**", fmt_num(o, 0))
            } else {
                fmt_num(o, 0)
            }
        };
        let _ = writeln!(
            s,
            "\n| run | variant | req/s | × run's baseline | pair CPU/100k | spans exported / dropped | idle sidecars CPU % | other work % | errors |"
        );
        let _ = writeln!(
            s,
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for r in &self.runs {
            let base = self
                .runs
                .iter()
                .find(|b| b.run == r.run && b.variant == ObsVariant::Baseline)
                .map(|b| b.saturation.rps);
            let t = &r.telemetry;
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.run,
                r.variant.label(),
                fmt_num(r.saturation.rps, 0),
                x(ratio(Some(r.saturation.rps), base)),
                fmt_opt(r.pair_cpu_s_per_100k, 3),
                if r.variant.sampling().is_some() {
                    format!(
                        "{} / {}",
                        fmt_num(t.spans_exported() as f64, 0),
                        fmt_num(t.spans_dropped() as f64, 0)
                    )
                } else {
                    "–".to_owned()
                },
                fmt_num(r.idle_sidecars_cpu_pct, 1),
                other(r.other_work_pct),
                r.saturation.errors,
            );
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
            "tracing: {collector: \"http://127.0.0.1:4317\", sampling: 0.0}\n"
        );
        assert_eq!(
            ObsVariant::Tracing100.config_lines(Side::Client, c),
            "tracing: {collector: \"http://127.0.0.1:4317\", sampling: 1.0, max_queue: 65536}\n"
        );
        assert_eq!(
            ObsVariant::AccessLogTracing100.config_lines(Side::Client, c),
            "access_log: access-access-log+tracing-100-a.log\n\
             tracing: {collector: \"http://127.0.0.1:4317\", sampling: 1.0, max_queue: 65536}\n"
        );
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

    fn sat(rps: f64, errors: u64) -> SaturationResult {
        SaturationResult {
            requests: (rps * 5.0) as u64,
            seconds: 5.0,
            rps,
            errors,
            error_samples: if errors > 0 {
                vec!["status 503: x".into()]
            } else {
                vec![]
            },
            // app, A, B, then two idle sidecars
            cpu_seconds: vec![1.0, 2.0, 2.0, 0.05, 0.05],
            loadgen_cpu_seconds: 2.0,
            peak_rss_kib: vec![1, 2, 3, 4, 5],
            cpu_busy_pct: vec![Some(40.0), Some(99.0)],
            others_cpu_seconds: 0.1,
        }
    }

    fn obs_run(run: usize, v: ObsVariant, rps: f64, dropped: u64) -> ObsRun {
        let n = (rps * 6.0) as u64;
        let side = |d: u64| SidecarCounters {
            requests: n,
            spans_exported: if v.exports_spans() { n - d } else { 0 },
            spans_dropped: d,
            export_errors: 0,
            log_lines: if v.access_log() { n } else { 0 },
            log_dropped: 0,
        };
        let telemetry = RunTelemetry {
            client: side(dropped),
            app: side(0),
            collector_spans: if v.exports_spans() {
                2 * n - dropped
            } else {
                0
            },
            collector_requests: 10,
            access_log_bytes: if v.access_log() { 2 * n * 400 } else { 0 },
            accounted_for: true,
            wait_s: 0.5,
        };
        ObsRun::new(
            run,
            v,
            sat(rps, 0),
            (0, 1),
            v.exports_spans().then_some(12.0),
            telemetry,
        )
    }

    fn config() -> ObsConfig {
        ObsConfig {
            runs: 3,
            connections: 32,
            warmup_s: 1.0,
            duration_s: 5.0,
            pair_lifetime: PairLifetime::Kept,
            processes: PairLifetime::Kept.describe().into(),
            collector: "an in-process OTLP/gRPC collector".into(),
            config_lines: ObsVariant::ALL
                .into_iter()
                .map(|v| {
                    (
                        v.key().to_owned(),
                        v.config_lines(Side::Client, collector()),
                    )
                })
                .collect(),
        }
    }

    fn report(log_rps: [f64; 3], dropped: u64) -> ObservabilityReport {
        use ObsVariant::*;
        let mut runs = Vec::new();
        for run in 1..=3 {
            for v in ObsVariant::order(run) {
                let rps = match v {
                    Baseline => [20_000.0, 21_000.0, 20_500.0][run - 1],
                    AccessLog => log_rps[run - 1],
                    Tracing0 => 19_800.0,
                    Tracing100 => 15_000.0,
                    AccessLogTracing100 => 14_000.0,
                };
                runs.push(obs_run(
                    run,
                    v,
                    rps,
                    if v == Tracing100 { dropped } else { 0 },
                ));
            }
        }
        ObservabilityReport::new(config(), runs)
    }

    #[test]
    fn summaries_ratios_and_target() {
        let rep = report([18_800.0, 19_000.0, 19_600.0], 0);
        assert_eq!(rep.variants.len(), 5);
        let b = rep.summary(ObsVariant::Baseline).unwrap();
        assert_eq!(b.rps, Some(20_500.0));
        assert_eq!(b.ratio, Some(1.0));
        let l = rep.summary(ObsVariant::AccessLog).unwrap();
        assert_eq!(l.runs, 3);
        assert_eq!(l.rps, Some(19_000.0));
        let r = 19_000.0 / 20_500.0;
        assert!((l.ratio.unwrap() - r).abs() < 1e-12);
        assert!((l.cost_pct.unwrap() - (1.0 - r) * 100.0).abs() < 1e-9);
        // Per-run ratios 0.94, 0.9048, 0.9561: median 0.94.
        assert!((l.paired_ratio_median.unwrap() - 0.94).abs() < 1e-12);
        // Pair CPU 4 s per run: 4 / (rps * 5) * 1e5.
        assert!((l.pair_cpu_s_per_100k.unwrap() - 4.0 / (19_000.0 * 5.0) * 1e5).abs() < 1e-9);
        assert!((l.cpu_ratio.unwrap() - 20_500.0 / 19_000.0).abs() < 1e-9);
        assert_eq!(l.collector_cpu_pct, None);
        assert_eq!(l.client.log_lines, (18_800 + 19_000 + 19_600) * 6);
        let t = rep.summary(ObsVariant::Tracing100).unwrap();
        assert_eq!(t.collector_cpu_pct, Some(12.0));
        assert_eq!(t.spans_exported(), 3 * 2 * 90_000);
        assert_eq!(t.collector_spans, 3 * 2 * 90_000);
        assert_eq!(rep.spans_dropped(), 0);
        // Idle: 0.1 s over 5 s.
        assert!((rep.runs[0].idle_sidecars_cpu_pct - 2.0).abs() < 1e-9);

        let targets = rep.targets();
        assert_eq!(targets.len(), 1);
        assert!(targets[0].met, "{targets:?}"); // cost 7.3 %
        assert!((targets[0].measured.unwrap() - r * 100.0).abs() < 1e-9);
        assert!(rep.flags().is_empty());
        assert!(rep.disturbed().is_empty());

        let mut md = String::new();
        rep.write_markdown(&mut md);
        for row in [
            "## Observability cost",
            "| baseline (defaults) | – (metrics on; no access log; no `tracing`) | 20 500 | 1.000× | – | 1.000× |",
            "| access log | `access_log: access-access-log-a.log` | 19 000 | 0.927× | 7.3 % | 0.940× |",
            "| access log + tracing 100 % | `access_log: access-access-log+tracing-100-a.log<br>tracing: {collector: \"http://127.0.0.1:4317\", sampling: 1.0, max_queue: 65536}` | 14 000 |",
            "= **0.927×** of the default settings, cost **7.3 %** (bound: under 10 %: met)",
            "| tracing 100 % | 270 000 / 270 000 | 270 000 / 270 000 | 0 / 0 | 0 | 540 000 | 12 |",
            "| tracing 0 % | 356 400 / 356 400 | 0 / 0 | 0 / 0 | 0 | 0 | – |",
            "No span dropped",
            "| 2 | access log | 19 000 | 0.905× | 4.211 | – | 2.0 | 2 | 0 |",
            "| 1 | tracing 100 % | 15 000 | 0.750× | 5.333 | 180 000 / 0 | 2.0 | 2 | 0 |",
            "access log: 688 800 lines written (400 bytes per line), 0 dropped",
        ] {
            assert!(md.contains(row), "{row} missing in\n{md}");
        }
        assert!(!md.contains("understated"), "{md}");
        assert!(!md.contains("were disturbed"), "{md}");

        let json = serde_json::to_value(&rep).unwrap();
        assert_eq!(json["runs"].as_array().unwrap().len(), 15);
        assert_eq!(json["variants"][3]["variant"], "tracing-100");
        assert_eq!(json["runs"][0]["variant"], "baseline");
        assert_eq!(json["variants"][3]["client"]["spans_exported"], 270_000);
        assert!(json["config"]["config_lines"]["tracing-0"]
            .as_str()
            .unwrap()
            .contains("sampling: 0.0"));
    }

    #[test]
    fn drops_and_over_bound_are_reported() {
        let rep = report([18_000.0, 18_000.0, 18_000.0], 500);
        let t = rep.targets();
        assert!(!t[0].met, "{t:?}"); // cost 12.2 %
        assert_eq!(rep.spans_dropped(), 1500);
        let mut md = String::new();
        rep.write_markdown(&mut md);
        assert!(md.contains("(bound: under 10 %: **not met**)"), "{md}");
        assert!(md.contains("**1 500 span(s) dropped**"), "{md}");
        assert!(md.contains("understated"), "{md}");
        assert!(md.contains("| 179 500 / 500 |"), "{md}");
    }

    #[test]
    fn errors_flag_and_disturbed_runs() {
        let mut r = obs_run(2, ObsVariant::Tracing0, 19_000.0, 0);
        r.saturation = sat(19_000.0, 3);
        let mut rec = ObsRun::new(
            2,
            ObsVariant::Tracing0,
            r.saturation.clone(),
            (0, 1),
            None,
            r.telemetry,
        );
        assert!(rec
            .flag()
            .unwrap()
            .contains("run 2 observability, tracing 0 %: 3 error(s); e.g. status 503"));
        rec.other_work_pct = 30.0;
        let mut base = obs_run(2, ObsVariant::Baseline, 20_000.0, 0);
        base.other_work_pct = 30.0;
        let rep = ObservabilityReport::new(config(), vec![rec.clone(), base]);
        assert_eq!(rep.flags().len(), 1);
        assert_eq!(
            rep.disturbed(),
            vec![
                "run 2 observability tracing 0 %",
                "run 2 observability baseline (defaults)"
            ]
        );
        let mut md = String::new();
        rep.write_markdown(&mut md);
        assert!(
            md.contains("**1 of the 1 baseline and access-log runs were disturbed**"),
            "{md}"
        );
        let rep = ObservabilityReport::new(config(), vec![rec]);
        // No baseline: no ratios, the target is not measured.
        assert_eq!(rep.variants[0].ratio, None);
        assert!(!rep.targets()[0].met);
    }
}
