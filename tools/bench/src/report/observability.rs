//! The observability section of the report, from an [`ObservabilityReport`] it is given.

use std::fmt::Write as _;

use crate::observability::{
    ObsRun, ObsSummary, ObsVariant, ObservabilityReport, PairLifetime, MAX_ACCESS_LOG_COST_PCT,
};
use crate::results::DISTURBED_PCT;
use crate::stats::{median_opt, ratio};

use super::{fmt_num, fmt_opt, fmt_other_work, fmt_times};

impl ObservabilityReport {
    /// Appends the report section (markdown) to `s`.
    pub fn write_markdown(&self, s: &mut String) {
        self.write_variants(s);
        self.write_bound(s);
        self.write_access_logs(s);
        self.write_spans(s);
        self.write_idle(s);
        self.write_runs(s);
    }

    /// The heading, the settings and one row per variant.
    fn write_variants(&self, s: &mut String) {
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
                fmt_times(v.ratio),
                if v.variant == ObsVariant::Baseline {
                    "–".to_owned()
                } else {
                    fmt_opt(v.cost_pct, 1) + " %"
                },
                fmt_times(v.paired_ratio_median),
                fmt_opt(v.pair_cpu_s_per_100k, 3),
                fmt_times(v.cpu_ratio),
                fmt_opt(v.server_core_busy_pct, 0),
                fmt_opt(v.loadgen_core_busy_pct, 0),
                v.errors,
            );
        }
    }

    /// The access-log bound against the baseline, and the disturbed runs.
    fn write_bound(&self, s: &mut String) {
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
            fmt_times(log.and_then(|l| l.ratio)),
            fmt_opt(log.and_then(|l| l.cost_pct), 1),
            fmt_num(MAX_ACCESS_LOG_COST_PCT, 0),
            match log.and_then(|l| l.cost_pct) {
                Some(c) if c < MAX_ACCESS_LOG_COST_PCT => "met",
                Some(_) => "**not met**",
                None => "not measured",
            },
            fmt_times(log.and_then(|l| l.cpu_ratio)),
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
                fmt_times(log.and_then(|l| l.paired_ratio_median)),
            );
        }
    }

    /// The access log lines written and dropped per variant.
    fn write_access_logs(&self, s: &mut String) {
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
    }

    /// The spans requested, exported, dropped and received per tracing variant.
    fn write_spans(&self, s: &mut String) {
        let c = &self.config;
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
    }

    /// The idle sidecars' CPU during the runs.
    fn write_idle(&self, s: &mut String) {
        let c = &self.config;
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
    }

    /// Every run.
    fn write_runs(&self, s: &mut String) {
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
                fmt_times(ratio(Some(r.saturation.rps), base)),
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
                fmt_other_work(r.other_work_pct),
                r.saturation.errors,
            );
        }
    }
}
