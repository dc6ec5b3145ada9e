//! The observability scenario's results: one variant's run ([`ObsRun`]), the medians per
//! variant ([`ObsSummary`]) and the scenario's targets and flags
//! ([`ObservabilityReport`]). [`crate::report`] writes their Markdown.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::load::SaturationResult;
use crate::results::{check, TargetCheck, DISTURBED_PCT, SIDECAR_A, SIDECAR_B};
use crate::stats::{median, median_opt, pct_of_one_cpu, ratio};

use super::telemetry::*;
use super::variant::*;

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
            &format!(">= {}", 100.0 - MAX_ACCESS_LOG_COST_PCT),
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
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn collector() -> SocketAddr {
        "127.0.0.1:4317".parse().unwrap()
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
            wakeups: None,
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
            "| access log + tracing 100 % | `access_log: access-access-log+tracing-100-a.log<br>tracing: {\"collector\":\"http://127.0.0.1:4317\",\"sampling\":1.0,\"max_queue\":65536}` | 14 000 |",
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
            .contains("\"sampling\":0.0"));
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
