//! The benchmark's results: per-run records, medians, ratios to direct, the
//! issue's targets, and their rendering as a markdown table. The resilience
//! scenarios' part is in [`crate::resilience`], the observability
//! scenario's in [`crate::observability`].

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;

use serde::Serialize;

use crate::load::{RateResult, SaturationResult};
use crate::observability::ObservabilityReport;
use crate::resilience::ResilienceReport;
use crate::results::{check, TargetCheck, APP, DISTURBED_PCT, SIDECAR_A, SIDECAR_B};
use crate::stats::{median, median_opt, ratio};

/// Which path the load takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Client → app.
    Direct,
    /// Client → sidecar A → mTLS HTTP/2 → sidecar B → app.
    Weft,
}

impl Scenario {
    /// The scenario's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::Direct => "direct",
            Scenario::Weft => "weft",
        }
    }
}

/// The benchmark's settings, recorded with the results.
#[derive(Debug, Clone, Serialize)]
pub struct BenchConfig {
    /// Repetitions of each scenario.
    pub runs: usize,
    /// Connections of the saturation runs.
    pub connections: usize,
    /// Measured seconds per run.
    pub duration_s: f64,
    /// Warm-up seconds before each measured window.
    pub warmup_s: f64,
    /// Request rate of the latency runs.
    pub rate: f64,
    /// Connections of the latency runs.
    pub latency_connections: usize,
    /// CPU the load generator is pinned to.
    pub loadgen_core: usize,
    /// CPU the app and sidecars are pinned to.
    pub server_core: usize,
    /// CPUs available to the benchmark when it started.
    pub cpus: usize,
    /// `sysconf(_SC_CLK_TCK)`.
    pub clock_ticks_per_second: u64,
    /// Seconds since the Unix epoch when the benchmark started.
    pub started_unix_s: u64,
    /// `weft-proxy --version` of the measured sidecars.
    pub proxy_version: String,
}

/// Figures derived from one run's raw results.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Derived {
    /// App CPU seconds per 100k requests (saturation run).
    pub app_cpu_s_per_100k: Option<f64>,
    /// Sidecar A + B CPU seconds per 100k requests (Weft scenario only).
    pub pair_cpu_s_per_100k: Option<f64>,
    /// Sidecar A + B CPU seconds per 100k requests in the fixed-rate run
    /// (Weft scenario only): the cost when the pair is not saturated.
    pub pair_cpu_s_per_100k_at_rate: Option<f64>,
    /// App + sidecars CPU time (per-process accounting) over wall time,
    /// percent of one CPU.
    pub server_procs_cpu_pct: f64,
    /// Load generator CPU time (per-process accounting) over wall time,
    /// percent of one CPU.
    pub loadgen_proc_cpu_pct: f64,
    /// How busy the server CPU was, all processes and interrupts, percent.
    pub server_core_busy_pct: Option<f64>,
    /// How busy the load generator's CPU was, all processes and interrupts, percent.
    pub loadgen_core_busy_pct: Option<f64>,
    /// Work of other processes on the machine during the run.
    pub other_work: OtherWork,
}

/// CPU time other user-space processes on the machine used during a run,
/// in percent of one CPU: work competing with the benchmark (e.g. a build).
/// Large values mean the run was disturbed.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct OtherWork {
    /// During the saturation window.
    pub saturation_pct: f64,
    /// During the latency window.
    pub latency_pct: f64,
}

impl OtherWork {
    /// The larger of the two.
    pub fn max(&self) -> f64 {
        self.saturation_pct.max(self.latency_pct)
    }
}

fn pct_of_one_cpu(cpu_s: f64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        cpu_s / seconds * 100.0
    } else {
        0.0
    }
}

impl Derived {
    /// Derives the per-request CPU figures and the other work on the
    /// machine from a saturation and a latency run, with the load
    /// generator on `loadgen_core` and the servers on `server_core`.
    pub fn of(
        scenario: Scenario,
        sat: &SaturationResult,
        lat: &RateResult,
        loadgen_core: usize,
        server_core: usize,
    ) -> Self {
        let per_100k = |cpu: f64| (sat.requests > 0).then(|| cpu / sat.requests as f64 * 1e5);
        let cpu = |i: usize| sat.cpu_seconds.get(i).copied().unwrap_or(0.0);
        let core = |i: usize| sat.cpu_busy_pct.get(i).copied().flatten();
        let pair = cpu(SIDECAR_A) + cpu(SIDECAR_B);
        Derived {
            app_cpu_s_per_100k: per_100k(cpu(APP)),
            pair_cpu_s_per_100k: match scenario {
                Scenario::Direct => None,
                Scenario::Weft => per_100k(pair),
            },
            pair_cpu_s_per_100k_at_rate: match scenario {
                Scenario::Direct => None,
                Scenario::Weft => (lat.ok > 0).then(|| {
                    let at = |i: usize| lat.cpu_seconds.get(i).copied().unwrap_or(0.0);
                    (at(SIDECAR_A) + at(SIDECAR_B)) / lat.ok as f64 * 1e5
                }),
            },
            server_procs_cpu_pct: (cpu(APP) + pair) / sat.seconds * 100.0,
            loadgen_proc_cpu_pct: sat.loadgen_cpu_seconds / sat.seconds * 100.0,
            server_core_busy_pct: core(server_core),
            loadgen_core_busy_pct: core(loadgen_core),
            other_work: OtherWork {
                saturation_pct: pct_of_one_cpu(sat.others_cpu_seconds, sat.seconds),
                latency_pct: pct_of_one_cpu(lat.others_cpu_seconds, lat.seconds),
            },
        }
    }
}

/// One scenario's saturation and latency runs in one repetition.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    /// Repetition number, from 1.
    pub run: usize,
    /// Which scenario.
    pub scenario: Scenario,
    /// The closed-loop run.
    pub saturation: SaturationResult,
    /// The fixed-rate run.
    pub latency: RateResult,
    /// Figures derived from `saturation`.
    pub derived: Derived,
}

impl RunRecord {
    /// Builds the record, deriving the CPU figures (`config` says which
    /// CPUs the load generator and the servers ran on).
    pub fn new(
        config: &BenchConfig,
        run: usize,
        scenario: Scenario,
        saturation: SaturationResult,
        latency: RateResult,
    ) -> Self {
        let derived = Derived::of(
            scenario,
            &saturation,
            &latency,
            config.loadgen_core,
            config.server_core,
        );
        RunRecord {
            run,
            scenario,
            saturation,
            latency,
            derived,
        }
    }

    /// Why this run's numbers are suspect, if they are.
    pub fn flag(&self) -> Option<String> {
        let (s, l) = (&self.saturation, &self.latency);
        if s.errors == 0 && l.errors == 0 && l.missed == 0 {
            return None;
        }
        let mut msg = format!(
            "run {} {}: {} saturation error(s), {} latency error(s), {} latency request(s) never sent",
            self.run,
            self.scenario.as_str(),
            s.errors,
            l.errors,
            l.missed
        );
        let examples: Vec<&str> = s
            .error_samples
            .iter()
            .chain(&l.error_samples)
            .map(String::as_str)
            .take(3)
            .collect();
        if !examples.is_empty() {
            let _ = write!(msg, "; e.g. {}", examples.join(" | "));
        }
        Some(msg)
    }
}

/// Medians over one scenario's runs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScenarioSummary {
    /// Runs summarized.
    pub runs: usize,
    /// Saturation throughput, requests per second.
    pub throughput_rps: Option<f64>,
    /// Latency p50 at the fixed rate, µs.
    pub p50_us: Option<f64>,
    /// Latency p99 at the fixed rate, µs.
    pub p99_us: Option<f64>,
    /// Latency p99.9 at the fixed rate, µs.
    pub p999_us: Option<f64>,
    /// Achieved rate of the latency runs, requests per second.
    pub achieved_rps: Option<f64>,
    /// App CPU seconds per 100k requests.
    pub app_cpu_s_per_100k: Option<f64>,
    /// Sidecar pair CPU seconds per 100k requests.
    pub pair_cpu_s_per_100k: Option<f64>,
    /// Sidecar pair CPU seconds per 100k requests at the fixed rate.
    pub pair_cpu_s_per_100k_at_rate: Option<f64>,
    /// App + sidecars CPU (per-process accounting), percent of one CPU.
    pub server_procs_cpu_pct: Option<f64>,
    /// Load generator CPU (per-process accounting), percent of one CPU.
    pub loadgen_proc_cpu_pct: Option<f64>,
    /// Server CPU busy (all processes and interrupts), percent.
    pub server_core_busy_pct: Option<f64>,
    /// Load generator CPU busy (all processes and interrupts), percent.
    pub loadgen_core_busy_pct: Option<f64>,
    /// Peak RSS under load (median over runs), KiB, per watched process.
    pub peak_rss_kib: [Option<f64>; 3],
    /// Peak RSS under load (largest over runs), KiB, per watched process.
    pub peak_rss_kib_max: [Option<u64>; 3],
    /// Errors over all runs.
    pub errors: u64,
    /// Latency requests never sent over all runs.
    pub missed: u64,
    /// Runs with errors or missed requests.
    pub flagged_runs: usize,
}

impl ScenarioSummary {
    /// Summarizes the runs of `scenario` in `runs`.
    pub fn of(scenario: Scenario, runs: &[RunRecord]) -> Self {
        let rs: Vec<&RunRecord> = runs.iter().filter(|r| r.scenario == scenario).collect();
        let med = |f: &dyn Fn(&RunRecord) -> Option<f64>| median_opt(rs.iter().map(|r| f(r)));
        let peak = |i: usize| med(&|r| r.saturation.peak_rss_kib.get(i).map(|&k| k as f64));
        let peak_max = |i: usize| {
            rs.iter()
                .filter_map(|r| r.saturation.peak_rss_kib.get(i).copied())
                .max()
        };
        ScenarioSummary {
            runs: rs.len(),
            throughput_rps: median(&rs.iter().map(|r| r.saturation.rps).collect::<Vec<_>>()),
            p50_us: med(&|r| r.latency.latency.map(|p| p.p50_us)),
            p99_us: med(&|r| r.latency.latency.map(|p| p.p99_us)),
            p999_us: med(&|r| r.latency.latency.map(|p| p.p999_us)),
            achieved_rps: med(&|r| Some(r.latency.achieved_rps)),
            app_cpu_s_per_100k: med(&|r| r.derived.app_cpu_s_per_100k),
            pair_cpu_s_per_100k: med(&|r| r.derived.pair_cpu_s_per_100k),
            pair_cpu_s_per_100k_at_rate: med(&|r| r.derived.pair_cpu_s_per_100k_at_rate),
            server_procs_cpu_pct: med(&|r| Some(r.derived.server_procs_cpu_pct)),
            loadgen_proc_cpu_pct: med(&|r| Some(r.derived.loadgen_proc_cpu_pct)),
            server_core_busy_pct: med(&|r| r.derived.server_core_busy_pct),
            loadgen_core_busy_pct: med(&|r| r.derived.loadgen_core_busy_pct),
            peak_rss_kib: [peak(APP), peak(SIDECAR_A), peak(SIDECAR_B)],
            peak_rss_kib_max: [peak_max(APP), peak_max(SIDECAR_A), peak_max(SIDECAR_B)],
            errors: rs
                .iter()
                .map(|r| r.saturation.errors + r.latency.errors)
                .sum(),
            missed: rs.iter().map(|r| r.latency.missed).sum(),
            flagged_runs: rs.iter().filter(|r| r.flag().is_some()).count(),
        }
    }
}

/// Weft's medians over direct's.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Ratios {
    /// Throughput, weft / direct.
    pub throughput: Option<f64>,
    /// Latency p50, weft / direct.
    pub p50: Option<f64>,
    /// Latency p99, weft / direct.
    pub p99: Option<f64>,
    /// Latency p99.9, weft / direct.
    pub p999: Option<f64>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Settings.
    pub config: BenchConfig,
    /// RSS (KiB) after start, before any load: app, sidecar A, sidecar B.
    pub idle_rss_kib: [u64; 3],
    /// How busy each CPU was for a second before any load (other work on
    /// the machine), percent, indexed by CPU number.
    pub background_busy_pct: Vec<Option<f64>>,
    /// Direct medians.
    pub direct: ScenarioSummary,
    /// Weft medians.
    pub weft: ScenarioSummary,
    /// Weft over direct.
    pub ratios: Ratios,
    /// The targets.
    pub targets: Vec<TargetCheck>,
    /// Runs with errors or missed requests, explained.
    pub flags: Vec<String>,
    /// Runs during which other work used the benchmark's CPUs noticeably.
    pub disturbed: Vec<String>,
    /// Every run, in the order they ran.
    pub runs: Vec<RunRecord>,
    /// The observability cost scenario (access logs, tracing at 0 % and
    /// 100 %, against the default settings), unless skipped.
    pub observability: Option<ObservabilityReport>,
    /// The resilience scenarios (one of three endpoints fails; the
    /// policies' healthy-path cost), unless skipped.
    pub resilience: Option<ResilienceReport>,
}

const MIB: f64 = 1024.0;

impl Report {
    /// Builds the report from the runs.
    pub fn new(
        config: BenchConfig,
        idle_rss_kib: [u64; 3],
        background_busy_pct: Vec<Option<f64>>,
        runs: Vec<RunRecord>,
    ) -> Self {
        let direct = ScenarioSummary::of(Scenario::Direct, &runs);
        let weft = ScenarioSummary::of(Scenario::Weft, &runs);
        let ratios = Ratios {
            throughput: ratio(weft.throughput_rps, direct.throughput_rps),
            p50: ratio(weft.p50_us, direct.p50_us),
            p99: ratio(weft.p99_us, direct.p99_us),
            p999: ratio(weft.p999_us, direct.p999_us),
        };
        let mut targets = vec![
            check(
                "pair throughput, % of direct",
                ">= 14",
                ratios.throughput.map(|r| r * 100.0),
                |v| v >= 14.0,
            ),
            check(
                "pair CPU s / 100k requests",
                "<= 3.5",
                weft.pair_cpu_s_per_100k,
                |v| v <= 3.5,
            ),
        ];
        for (i, name) in [(SIDECAR_A, "sidecar A"), (SIDECAR_B, "sidecar B")] {
            targets.push(check(
                &format!("{name} RSS idle, MiB"),
                "< 12",
                Some(idle_rss_kib[i] as f64 / MIB),
                |v| v < 12.0,
            ));
            targets.push(check(
                &format!("{name} RSS under load (max over runs), MiB"),
                "< 20",
                weft.peak_rss_kib_max[i].map(|k| k as f64 / MIB),
                |v| v < 20.0,
            ));
        }
        let flags = runs.iter().filter_map(RunRecord::flag).collect();
        let disturbed = runs
            .iter()
            .filter(|r| r.derived.other_work.max() > DISTURBED_PCT)
            .map(|r| format!("run {} {}", r.run, r.scenario.as_str()))
            .collect();
        Report {
            config,
            idle_rss_kib,
            background_busy_pct,
            direct,
            weft,
            ratios,
            targets,
            flags,
            disturbed,
            runs,
            observability: None,
            resilience: None,
        }
    }

    /// Adds the observability scenario's results, its target, flagged and
    /// disturbed runs.
    pub fn with_observability(mut self, observability: ObservabilityReport) -> Self {
        self.targets.extend(observability.targets());
        self.flags.extend(observability.flags());
        self.disturbed.extend(observability.disturbed());
        self.observability = Some(observability);
        self
    }

    /// Adds the resilience scenarios' results, their targets, flagged and
    /// disturbed runs.
    pub fn with_resilience(mut self, resilience: ResilienceReport) -> Self {
        self.targets.extend(resilience.targets());
        self.flags.extend(resilience.flags());
        self.disturbed.extend(resilience.disturbed());
        self.resilience = Some(resilience);
        self
    }

    /// The report as markdown.
    pub fn markdown(&self) -> String {
        let c = &self.config;
        let (d, w, r) = (&self.direct, &self.weft, &self.ratios);
        let mut s = String::new();
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
        let _ = writeln!(s, "| metric | direct | weft | weft / direct |");
        let _ = writeln!(s, "| --- | ---: | ---: | ---: |");
        let mut row =
            |name: &str, dv: Option<f64>, wv: Option<f64>, prec: usize, rat: Option<f64>| {
                let _ = writeln!(
                    s,
                    "| {name} | {} | {} | {} |",
                    fmt_opt(dv, prec),
                    fmt_opt(wv, prec),
                    rat.map_or_else(|| "–".to_owned(), |x| format!("{}×", fmt_num(x, 3)))
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

        if let Some(obs) = &self.observability {
            obs.write_markdown(&mut s);
        }
        if let Some(res) = &self.resilience {
            res.write_markdown(&mut s);
            let _ = writeln!(s);
        }

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
                match run.derived.other_work.max() {
                    o if o > DISTURBED_PCT => format!("**{}**", fmt_num(o, 0)),
                    o => fmt_num(o, 0),
                },
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
        s
    }
}

/// The one way a report leaves the benchmark: writes `<stem>.md` and `<stem>.json` into `out_dir`, then the Markdown to stdout.
pub fn write(
    out_dir: &Path,
    stem: &str,
    md: &str,
    report: &impl serde::Serialize,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let md_path = out_dir.join(format!("{stem}.md"));
    let json_path = out_dir.join(format!("{stem}.json"));
    std::fs::write(&md_path, md).with_context(|| format!("writing {}", md_path.display()))?;
    let json = serde_json::to_string_pretty(report)?;
    std::fs::write(&json_path, json).with_context(|| format!("writing {}", json_path.display()))?;
    // Files first, then stdout: a closed stdout (e.g. `| head`) must neither lose them nor
    // panic.
    let _ = writeln!(std::io::stdout(), "{md}");
    eprintln!(
        "weft-bench: wrote {} and {}",
        md_path.display(),
        json_path.display()
    );
    Ok(())
}

/// `x` with `prec` decimals and thin grouping of thousands (`12 345.6`).
pub fn fmt_num(x: f64, prec: usize) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    let s = format!("{:.*}", prec, x.abs());
    let (int, frac) = s
        .split_once('.')
        .map_or((s.as_str(), None), |(i, f)| (i, Some(f)));
    let mut out = String::new();
    if x < 0.0 && s.chars().any(|c| c.is_ascii_digit() && c != '0') {
        out.push('-');
    }
    for (i, ch) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(ch);
    }
    if let Some(f) = frac {
        out.push('.');
        out.push_str(f);
    }
    out
}

/// [`fmt_num`], or `–` for `None`.
pub fn fmt_opt(x: Option<f64>, prec: usize) -> String {
    x.map_or_else(|| "–".to_owned(), |v| fmt_num(v, prec))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::stats::Percentiles;

    #[test]
    fn number_formatting() {
        assert_eq!(fmt_num(0.0, 0), "0");
        assert_eq!(fmt_num(999.0, 0), "999");
        assert_eq!(fmt_num(1234.5, 1), "1 234.5");
        assert_eq!(fmt_num(1234567.0, 0), "1 234 567");
        assert_eq!(fmt_num(-1234.0, 0), "-1 234");
        assert_eq!(fmt_num(0.1234, 3), "0.123");
        assert_eq!(fmt_opt(None, 2), "–");
    }

    fn run(run: usize, scenario: Scenario, rps: f64, p50: f64, errors: u64) -> RunRecord {
        let secs = 5.0;
        let requests = (rps * secs) as u64;
        let sat = SaturationResult {
            requests,
            seconds: secs,
            rps,
            errors,
            error_samples: if errors > 0 {
                vec!["status 503: x".into()]
            } else {
                vec![]
            },
            // app, sidecar A, sidecar B
            cpu_seconds: vec![1.0, 1.5, 2.0],
            loadgen_cpu_seconds: 2.5,
            peak_rss_kib: vec![4096, 10 * 1024, 12 * 1024],
            cpu_busy_pct: vec![Some(60.0), Some(95.0)],
            others_cpu_seconds: 0.1,
        };
        let lat = RateResult {
            rate: 2000.0,
            scheduled: 10_000,
            ok: 10_000,
            errors: 0,
            missed: 0,
            achieved_rps: 2000.0,
            latency: Some(Percentiles {
                count: 10_000,
                p50_us: p50,
                p90_us: p50 * 2.0,
                p99_us: p50 * 4.0,
                p999_us: p50 * 8.0,
                max_us: p50 * 10.0,
            }),
            error_samples: vec![],
            cpu_seconds: vec![0.1, 0.2, 0.2],
            loadgen_cpu_seconds: 5.0,
            seconds: 5.0,
            cpu_busy_pct: vec![Some(100.0), Some(40.0)],
            others_cpu_seconds: if run == 3 { 1.5 } else { 0.2 },
        };
        RunRecord::new(&config(), run, scenario, sat, lat)
    }

    fn config() -> BenchConfig {
        BenchConfig {
            runs: 3,
            connections: 32,
            duration_s: 5.0,
            warmup_s: 1.0,
            rate: 2000.0,
            latency_connections: 16,
            loadgen_core: 0,
            server_core: 1,
            cpus: 2,
            clock_ticks_per_second: 100,
            started_unix_s: 0,
            proxy_version: "weft-proxy 0.1.0".into(),
        }
    }

    #[test]
    fn derived_cpu_per_100k() {
        let r = run(1, Scenario::Weft, 10_000.0, 100.0, 0);
        // 50k requests; pair used 3.5 s → 7 s per 100k; app 1 s → 2 s per 100k.
        assert!((r.derived.pair_cpu_s_per_100k.unwrap() - 7.0).abs() < 1e-9);
        assert!((r.derived.app_cpu_s_per_100k.unwrap() - 2.0).abs() < 1e-9);
        assert!((r.derived.server_procs_cpu_pct - 90.0).abs() < 1e-9);
        assert!((r.derived.loadgen_proc_cpu_pct - 50.0).abs() < 1e-9);
        assert_eq!(r.derived.server_core_busy_pct, Some(95.0));
        assert_eq!(r.derived.loadgen_core_busy_pct, Some(60.0));
        let o = r.derived.other_work;
        assert!((o.saturation_pct - 2.0).abs() < 1e-9);
        assert!((o.latency_pct - 4.0).abs() < 1e-9);
        assert!((o.max() - 4.0).abs() < 1e-9);
        // 10k requests at the fixed rate; pair used 0.4 s → 4 s per 100k.
        assert!((r.derived.pair_cpu_s_per_100k_at_rate.unwrap() - 4.0).abs() < 1e-9);
        let d = run(1, Scenario::Direct, 10_000.0, 100.0, 0);
        assert_eq!(d.derived.pair_cpu_s_per_100k, None);
        assert_eq!(d.derived.pair_cpu_s_per_100k_at_rate, None);
    }

    #[test]
    fn medians_ratios_targets_and_flags() {
        let runs = vec![
            run(1, Scenario::Direct, 40_000.0, 100.0, 0),
            run(1, Scenario::Weft, 8_000.0, 300.0, 0),
            run(2, Scenario::Direct, 50_000.0, 120.0, 0),
            run(2, Scenario::Weft, 9_000.0, 330.0, 2),
            run(3, Scenario::Direct, 45_000.0, 110.0, 0),
            run(3, Scenario::Weft, 10_000.0, 360.0, 0),
        ];
        let rep = Report::new(
            config(),
            [3000, 8 * 1024, 9 * 1024],
            vec![Some(2.0), Some(30.0)],
            runs,
        );
        assert_eq!(rep.direct.runs, 3);
        assert_eq!(rep.direct.throughput_rps, Some(45_000.0));
        assert_eq!(rep.weft.throughput_rps, Some(9_000.0));
        assert!((rep.ratios.throughput.unwrap() - 0.2).abs() < 1e-9);
        assert!((rep.ratios.p50.unwrap() - 3.0).abs() < 1e-9);
        assert_eq!(rep.weft.errors, 2);
        assert_eq!(rep.weft.flagged_runs, 1);
        assert_eq!(rep.flags.len(), 1);
        assert!(rep.flags[0].contains("run 2 weft"), "{:?}", rep.flags);
        assert!(rep.flags[0].contains("status 503"), "{:?}", rep.flags);
        let t = |what: &str| {
            rep.targets
                .iter()
                .find(|t| t.what.starts_with(what))
                .unwrap()
        };
        assert!(t("pair throughput").met);
        assert!(!t("pair CPU").met);
        assert!(t("sidecar A RSS idle").met);
        assert!(t("sidecar B RSS under load").met);

        let md = rep.markdown();
        assert!(
            md.contains("| saturation throughput (req/s) | 45 000 | 9 000 | 0.200× |"),
            "{md}"
        );
        assert!(md.contains("**Flagged runs**"), "{md}");
        assert!(md.contains("not quiet"), "{md}");
        assert_eq!(rep.disturbed, vec!["run 3 direct", "run 3 weft"]);
        assert!(md.contains("| **30** |"), "{md}");
        let json = serde_json::to_value(&rep).unwrap();
        assert_eq!(json["runs"].as_array().unwrap().len(), 6);
        assert_eq!(json["runs"][1]["scenario"], "weft");
    }
}
