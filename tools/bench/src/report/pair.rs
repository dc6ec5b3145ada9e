//! The Markdown of the main scenario (direct vs. the Weft pair), with the observability and
//! resilience sections appended, from a [`Report`] it is given.

use std::fmt::Write as _;

use crate::pair::Report;
use crate::results::{APP, DISTURBED_PCT, SIDECAR_A, SIDECAR_B};
use crate::stats::ratio;

use super::{fmt_num, fmt_opt, fmt_other_work, fmt_times};

const MIB: f64 = 1024.0;

impl Report {
    /// The report as markdown.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        self.write_header(&mut s);
        self.write_medians(&mut s);
        self.write_memory(&mut s);
        self.write_sections(&mut s);
        self.write_targets(&mut s);
        self.write_runs(&mut s);
        s
    }

    /// The title, the settings and the background load before the runs.
    fn write_header(&self, s: &mut String) {
        let c = &self.config;
        let _ = writeln!(s, "# weft-bench: direct vs. Weft sidecar pair\n");
        let _ = writeln!(
            s,
            "Medians of {} interleaved run(s) per scenario. Saturation: closed loop, {} connections, {} s after {} s warm-up. \
             Latency: open loop at {} req/s over {} connections, {} s, measured from each request's scheduled send time. \
             Load generator on CPU {}; app + sidecars (workers: 1) on CPU {}. HTTP/1.1 keep-alive `GET /`. \
             Sidecars: `{}`.\n",
            c.runs, c.connections, fmt_num(c.duration_s, 1), fmt_num(c.warmup_s, 1), fmt_num(c.rate, 0),
            c.latency_connections, fmt_num(c.duration_s, 1), c.loadgen_core, c.server_core, c.proxy_version
        );
        let bg = |core: usize| self.background_busy_pct.get(core).copied().flatten();
        let _ = writeln!(
            s,
            "Background load before the runs (other work on the machine): CPU {} {} %, CPU {} {} %.{}\n",
            c.loadgen_core,
            fmt_opt(bg(c.loadgen_core), 0),
            c.server_core,
            fmt_opt(bg(c.server_core), 0),
            if [c.loadgen_core, c.server_core]
                .iter()
                .any(|&i| bg(i).is_some_and(|b| b > 10.0))
            {
                " **The machine was not quiet: the numbers are disturbed.**"
            } else {
                ""
            }
        );
    }

    /// The medians of direct and weft side by side, with their ratio.
    // Long: one row call per metric of the table, in print order.
    fn write_medians(&self, s: &mut String) {
        let c = &self.config;
        let (d, w, r) = (&self.direct, &self.weft, &self.ratios);
        let _ = writeln!(s, "| metric | direct | weft | weft / direct |");
        let _ = writeln!(s, "| --- | ---: | ---: | ---: |");
        let mut row =
            |name: &str, dv: Option<f64>, wv: Option<f64>, prec: usize, rat: Option<f64>| {
                let _ = writeln!(
                    s,
                    "| {name} | {} | {} | {} |",
                    fmt_opt(dv, prec),
                    fmt_opt(wv, prec),
                    fmt_times(rat)
                );
            };
        row(
            "saturation throughput (req/s)",
            d.throughput_rps,
            w.throughput_rps,
            0,
            r.throughput,
        );
        row(
            &format!("latency p50 @ {} req/s (µs)", fmt_num(c.rate, 0)),
            d.p50_us,
            w.p50_us,
            0,
            r.p50,
        );
        row("latency p99 (µs)", d.p99_us, w.p99_us, 0, r.p99);
        row("latency p99.9 (µs)", d.p999_us, w.p999_us, 0, r.p999);
        row(
            "latency run achieved rate (req/s)",
            d.achieved_rps,
            w.achieved_rps,
            0,
            None,
        );
        row(
            "app CPU s / 100k req",
            d.app_cpu_s_per_100k,
            w.app_cpu_s_per_100k,
            3,
            ratio(w.app_cpu_s_per_100k, d.app_cpu_s_per_100k),
        );
        row(
            "sidecar pair CPU s / 100k req (saturation)",
            d.pair_cpu_s_per_100k,
            w.pair_cpu_s_per_100k,
            3,
            None,
        );
        row(
            &format!(
                "sidecar pair CPU s / 100k req (at {} req/s)",
                fmt_num(c.rate, 0)
            ),
            d.pair_cpu_s_per_100k_at_rate,
            w.pair_cpu_s_per_100k_at_rate,
            3,
            None,
        );
        row(
            &format!("CPU {} busy, all (%) (saturation)", c.server_core),
            d.server_core_busy_pct,
            w.server_core_busy_pct,
            0,
            None,
        );
        row(
            "… of which app + sidecars, per-process (%)",
            d.server_procs_cpu_pct,
            w.server_procs_cpu_pct,
            0,
            None,
        );
        row(
            &format!("CPU {} busy, all (%) (saturation)", c.loadgen_core),
            d.loadgen_core_busy_pct,
            w.loadgen_core_busy_pct,
            0,
            None,
        );
        row(
            "… of which load generator, per-process (%)",
            d.loadgen_proc_cpu_pct,
            w.loadgen_proc_cpu_pct,
            0,
            None,
        );
        row(
            "errors + unsent (all runs)",
            Some((d.errors + d.missed) as f64),
            Some((w.errors + w.missed) as f64),
            0,
            None,
        );
    }

    /// The processes' memory, idle and under load.
    fn write_memory(&self, s: &mut String) {
        let w = &self.weft;
        let _ = writeln!(
            s,
            "\n| process (VmRSS, MiB) | idle | peak under load, median | peak under load, max |"
        );
        let _ = writeln!(s, "| --- | ---: | ---: | ---: |");
        for (i, name) in [
            (SIDECAR_A, "sidecar A (client side)"),
            (SIDECAR_B, "sidecar B (app side)"),
            (APP, "app"),
        ] {
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {} |",
                fmt_num(self.idle_rss_kib[i] as f64 / MIB, 1),
                fmt_opt(w.peak_rss_kib[i].map(|k| k / MIB), 1),
                fmt_opt(w.peak_rss_kib_max[i].map(|k| k as f64 / MIB), 1),
            );
        }
    }

    /// The observability and resilience sections, when they ran.
    fn write_sections(&self, s: &mut String) {
        if let Some(obs) = &self.observability {
            obs.write_markdown(s);
        }
        if let Some(res) = &self.resilience {
            res.write_markdown(s);
            let _ = writeln!(s);
        }
    }

    /// The targets and whether each is met.
    fn write_targets(&self, s: &mut String) {
        let _ = writeln!(s, "\n| target | goal | measured | met |");
        let _ = writeln!(s, "| --- | ---: | ---: | :---: |");
        for t in &self.targets {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                t.what,
                t.target,
                fmt_opt(t.measured, 2),
                if t.met { "yes" } else { "**no**" }
            );
        }
    }

    /// Every run, then the notes on disturbed and flagged runs.
    fn write_runs(&self, s: &mut String) {
        let _ = writeln!(s, "\n| run | scenario | req/s | p50 µs | p99 µs | p99.9 µs | app CPU/100k | pair CPU/100k | other work % | errors |");
        let _ = writeln!(
            s,
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for run in &self.runs {
            let lat = run.latency.latency;
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                run.run,
                run.scenario.as_str(),
                fmt_num(run.saturation.rps, 0),
                fmt_opt(lat.map(|p| p.p50_us), 0),
                fmt_opt(lat.map(|p| p.p99_us), 0),
                fmt_opt(lat.map(|p| p.p999_us), 0),
                fmt_opt(run.derived.app_cpu_s_per_100k, 3),
                fmt_opt(run.derived.pair_cpu_s_per_100k, 3),
                fmt_other_work(run.derived.other_work.max()),
                run.saturation.errors + run.latency.errors + run.latency.missed,
            );
        }
        let _ = writeln!(
            s,
            "\n\"other work\": CPU time, in % of one CPU, that other user-space processes on the machine \
             (not the load generator, the app or the sidecars) used during the run's saturation or latency window, \
             whichever is larger (from /proc/PID/stat)."
        );
        if !self.disturbed.is_empty() {
            let _ = writeln!(
                s,
                "**Disturbed runs** (other work over {DISTURBED_PCT} %): {}.",
                self.disturbed.join(", ")
            );
        }
        if self.flags.is_empty() && self.resilience.is_some() {
            let _ = writeln!(
                s,
                "\nNo errors: every response was 200, apart from the failing endpoint's answers, which the \
                 resilience scenario counts; every request got an answer."
            );
        } else if self.flags.is_empty() {
            let _ = writeln!(s, "\nNo errors: every response was 200.");
        } else {
            let _ = writeln!(s, "\n**Flagged runs** (errors or unsent requests):\n");
            for f in &self.flags {
                let _ = writeln!(s, "- {f}");
            }
        }
    }
}
