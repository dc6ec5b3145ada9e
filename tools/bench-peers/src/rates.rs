//! The load points of a comparison (fixed rates and saturation) as numbers per column: what
//! one column measured at one point in one run ([`Metrics`]), medians over the runs and the
//! **paired** ratio to the best peer ([`PointSummary`]: in each run, the column's value over
//! the best of the peers' values in that same run, then the median), and the Markdown table
//! with one row per column and a group of cells per point ([`table`]).
//!
//! Shared by the sidecar-pair comparison and the gateway scenario. The proxies are the
//! watched processes after the first (the app), so their CPU and RSS are the proxies' own.

use serde::Serialize;
use weft_benches::load::SaturationResult;
use weft_benches::report::{fmt_num, fmt_opt};
use weft_benches::stats::{median, median_opt};

use crate::kernel::KernelCounts;
use crate::lanes::RatePoint;

/// A load point: an open-loop fixed rate, or saturation (closed loop).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Point {
    /// Requests per second.
    Rate(f64),
    /// As fast as the path goes.
    Saturation,
}

impl Point {
    /// Its name in tables.
    pub fn label(self) -> String {
        match self {
            Point::Rate(r) => format!("{} req/s", fmt_num(r, 0)),
            Point::Saturation => "saturation".into(),
        }
    }
}

/// What one column measured at one point in one run. The proxies are the watched processes
/// after the app (index 0); direct has none, so no CPU or RSS.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Metrics {
    /// Answered requests per second.
    pub throughput: Option<f64>,
    /// Latency from the scheduled send time (fixed rates only), µs.
    pub p50_us: Option<f64>,
    /// p99, µs.
    pub p99_us: Option<f64>,
    /// p99.9, µs.
    pub p999_us: Option<f64>,
    /// The proxies' CPU-seconds (on-CPU time from /proc) per 100k answered requests.
    pub cpu_per_100k: Option<f64>,
    /// The proxies' wake-ups (times their threads were scheduled onto a CPU) per answered
    /// request.
    pub wakeups_per_req: Option<f64>,
    /// The proxies' system calls per answered request (fixed rates, where perf counts them).
    pub syscalls_per_req: Option<f64>,
    /// The share of the proxies' CPU time spent in the kernel, percent (fixed rates).
    pub kernel_pct: Option<f64>,
    /// Each proxy's peak RSS, KiB.
    pub rss_kib: Option<Vec<u64>>,
}

/// The proxies' CPU-seconds per 100k of `requests` (`None` without a proxy or a request).
fn proxies_cpu_per_100k(cpu: &[f64], requests: u64) -> Option<f64> {
    (cpu.len() >= 2 && requests > 0)
        .then(|| cpu[1..].iter().sum::<f64>() / requests as f64 * 100_000.0)
}

/// The proxies' wake-ups per one of `requests` (`None` without a proxy, a request, or the
/// kernel's count).
fn proxies_wakeups_per_req(wakeups: Option<&Vec<u64>>, requests: u64) -> Option<f64> {
    let w = wakeups?;
    (w.len() >= 2 && requests > 0).then(|| w[1..].iter().sum::<u64>() as f64 / requests as f64)
}

/// The proxies' system calls per one of `requests` and their kernel share of CPU, percent
/// (`None` without a proxy: the app is first).
fn proxies_kernel(k: Option<&KernelCounts>, requests: u64) -> (Option<f64>, Option<f64>) {
    match k {
        Some(k) if k.stat_seconds.len() >= 2 => k.per_request(requests, 1),
        _ => (None, None),
    }
}

/// The proxies' peak RSS (`None` without a proxy).
fn proxies_rss(peaks: &[u64]) -> Option<Vec<u64>> {
    (peaks.len() >= 2).then(|| peaks[1..].to_vec())
}

impl Metrics {
    /// Of an open-loop run.
    pub fn of_rate(p: &RatePoint) -> Self {
        let lat = p.result.latency;
        let (syscalls_per_req, kernel_pct) = proxies_kernel(p.kernel.as_ref(), p.result.ok);
        Metrics {
            throughput: Some(p.result.achieved_rps),
            p50_us: lat.map(|l| l.p50_us),
            p99_us: lat.map(|l| l.p99_us),
            p999_us: lat.map(|l| l.p999_us),
            cpu_per_100k: proxies_cpu_per_100k(&p.result.cpu_seconds, p.result.ok),
            wakeups_per_req: proxies_wakeups_per_req(p.result.wakeups.as_ref(), p.result.ok),
            syscalls_per_req,
            kernel_pct,
            rss_kib: proxies_rss(&p.peak_rss_kib),
        }
    }

    /// Of a closed-loop run.
    pub fn of_saturation(s: &SaturationResult) -> Self {
        Metrics {
            throughput: Some(s.rps),
            cpu_per_100k: proxies_cpu_per_100k(&s.cpu_seconds, s.requests),
            wakeups_per_req: proxies_wakeups_per_req(s.wakeups.as_ref(), s.requests),
            rss_kib: proxies_rss(&s.peak_rss_kib),
            ..Default::default()
        }
    }

    /// The proxies' RSS summed, MiB.
    fn rss_sum_mib(&self) -> Option<f64> {
        self.rss_kib
            .as_ref()
            .map(|v| v.iter().sum::<u64>() as f64 / 1024.0)
    }
}

/// One column's metrics at one point in one run.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Run number (from 1).
    pub run: usize,
    /// The column's name.
    pub column: String,
    /// Whether the column is one of the peers the ratios compare with.
    pub peer: bool,
    /// What it measured.
    pub m: Metrics,
}

/// Paired ratios to the best peer, each `[median, lowest, highest]` over the runs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Ratios {
    /// Throughput (the best peer is the fastest).
    pub throughput: Option<[f64; 3]>,
    /// p50 (the best peer is the lowest; so for all below).
    pub p50: Option<[f64; 3]>,
    /// p99.
    pub p99: Option<[f64; 3]>,
    /// p99.9.
    pub p999: Option<[f64; 3]>,
    /// CPU per 100k requests.
    pub cpu: Option<[f64; 3]>,
    /// Wake-ups per request.
    pub wakeups: Option<[f64; 3]>,
    /// System calls per request.
    pub syscalls: Option<[f64; 3]>,
    /// The proxies' RSS, summed.
    pub rss: Option<[f64; 3]>,
}

/// One column at one point: medians over the runs and the paired ratios.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PointSummary {
    /// The point's name (`1 000 req/s`, `saturation`).
    pub point: String,
    /// The fixed rate, if it is one.
    pub rate: Option<f64>,
    /// Answered requests per second.
    pub throughput: Option<f64>,
    /// p50, µs.
    pub p50_us: Option<f64>,
    /// p99, µs.
    pub p99_us: Option<f64>,
    /// p99.9, µs.
    pub p999_us: Option<f64>,
    /// The proxies' CPU-seconds per 100k requests.
    pub cpu_per_100k: Option<f64>,
    /// The proxies' wake-ups per request.
    pub wakeups_per_req: Option<f64>,
    /// The proxies' system calls per request.
    pub syscalls_per_req: Option<f64>,
    /// The share of the proxies' CPU time in the kernel, percent.
    pub kernel_pct: Option<f64>,
    /// Each proxy's peak RSS, MiB.
    pub rss_mib: Option<Vec<f64>>,
    /// × the best peer, paired per run.
    pub vs_best_peer: Ratios,
    /// Runs.
    pub runs: usize,
}

/// In each run of `column`, its `f` over the best peer's `f` in that run (largest if
/// `larger_is_better`, else smallest): median, lowest, highest.
fn paired(
    samples: &[Sample],
    column: &str,
    f: impl Fn(&Metrics) -> Option<f64>,
    larger_is_better: bool,
) -> Option<[f64; 3]> {
    let mut ratios: Vec<f64> = samples
        .iter()
        .filter(|s| s.column == column)
        .filter_map(|s| {
            let peers = samples
                .iter()
                .filter(|p| p.peer && p.run == s.run)
                .filter_map(|p| f(&p.m));
            let best = if larger_is_better {
                peers.max_by(f64::total_cmp)
            } else {
                peers.min_by(f64::total_cmp)
            }?;
            let v = f(&s.m)?;
            (best > 0.0).then(|| v / best)
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    Some([median(&ratios)?, *ratios.first()?, *ratios.last()?])
}

/// `column`'s medians at `point` over `samples` (every column's samples of that point, so
/// the peers' are there to compare with), `None` if it has none.
pub fn summarize(samples: &[Sample], column: &str, point: Point) -> Option<PointSummary> {
    let mine: Vec<&Metrics> = samples
        .iter()
        .filter(|s| s.column == column)
        .map(|s| &s.m)
        .collect();
    if mine.is_empty() {
        return None;
    }
    let med = |f: fn(&Metrics) -> Option<f64>| median_opt(mine.iter().map(|m| f(m)));
    let procs = mine
        .iter()
        .filter_map(|m| m.rss_kib.as_ref().map(Vec::len))
        .max()
        .unwrap_or(0);
    let rss: Option<Vec<f64>> = (0..procs)
        .map(|i| {
            median_opt(mine.iter().map(|m| {
                m.rss_kib
                    .as_ref()
                    .and_then(|v| v.get(i))
                    .map(|&k| k as f64 / 1024.0)
            }))
        })
        .collect();
    Some(PointSummary {
        point: point.label(),
        rate: match point {
            Point::Rate(r) => Some(r),
            Point::Saturation => None,
        },
        throughput: med(|m| m.throughput),
        p50_us: med(|m| m.p50_us),
        p99_us: med(|m| m.p99_us),
        p999_us: med(|m| m.p999_us),
        cpu_per_100k: med(|m| m.cpu_per_100k),
        wakeups_per_req: med(|m| m.wakeups_per_req),
        syscalls_per_req: med(|m| m.syscalls_per_req),
        kernel_pct: med(|m| m.kernel_pct),
        rss_mib: rss.filter(|v| !v.is_empty()),
        vs_best_peer: Ratios {
            throughput: paired(samples, column, |m| m.throughput, true),
            p50: paired(samples, column, |m| m.p50_us, false),
            p99: paired(samples, column, |m| m.p99_us, false),
            p999: paired(samples, column, |m| m.p999_us, false),
            cpu: paired(samples, column, |m| m.cpu_per_100k, false),
            wakeups: paired(samples, column, |m| m.wakeups_per_req, false),
            syscalls: paired(samples, column, |m| m.syscalls_per_req, false),
            rss: paired(samples, column, Metrics::rss_sum_mib, false),
        },
        runs: mine.len(),
    })
}

/// `×0.93`, or nothing without a ratio.
fn times(r: Option<[f64; 3]>) -> Option<String> {
    r.map(|[m, _, _]| format!("×{}", fmt_num(m, 2)))
}

/// A value and, in parentheses, its ratios (those there are).
fn cell(value: String, ratios: &[Option<[f64; 3]>]) -> String {
    let rs: Vec<String> = ratios.iter().filter_map(|r| times(*r)).collect();
    if rs.is_empty() || value == "–" {
        value
    } else {
        format!("{value} ({})", rs.join(" / "))
    }
}

/// A Markdown table: one row per column (`rows`: its name and its summary per point, in the
/// order of `points`), three cells per point: latency p50 / p99 / p99.9 µs (throughput at
/// saturation), the proxies' CPU-s per 100k requests and their wake-ups per request, each
/// proxy's RSS (MiB); each with its paired median ratio to the best peer.
pub fn table(points: &[Point], rows: &[(String, Vec<Option<PointSummary>>)]) -> String {
    let mut md = String::from("| |");
    let mut rule = String::from("|---|");
    for p in points {
        let first = match p {
            Point::Rate(_) => "p50 / p99 / p99.9 µs",
            Point::Saturation => "req/s",
        };
        md += &format!(
            " {l}: {first} | {l}: CPU-s / 100k | {l}: wake-ups / req | {l}: RSS MiB |",
            l = p.label()
        );
        rule += "---:|---:|---:|---:|";
    }
    md += "\n";
    md += &rule;
    md += "\n";
    for (name, sums) in rows {
        md += &format!("| {name} |");
        for (p, s) in points.iter().zip(sums) {
            let Some(s) = s else {
                md += " not run | | | |";
                continue;
            };
            let r = &s.vs_best_peer;
            let first = match p {
                Point::Rate(_) => cell(
                    format!(
                        "{} / {} / {}",
                        fmt_opt(s.p50_us, 0),
                        fmt_opt(s.p99_us, 0),
                        fmt_opt(s.p999_us, 0)
                    ),
                    &[r.p50, r.p99, r.p999],
                ),
                Point::Saturation => cell(fmt_opt(s.throughput, 0), &[r.throughput]),
            };
            let rss = s.rss_mib.as_ref().map_or_else(
                || "–".to_owned(),
                |v| {
                    v.iter()
                        .map(|x| fmt_num(*x, 1))
                        .collect::<Vec<_>>()
                        .join(" / ")
                },
            );
            md += &format!(
                " {first} | {} | {} | {} |",
                cell(fmt_opt(s.cpu_per_100k, 3), &[r.cpu]),
                cell(fmt_opt(s.wakeups_per_req, 2), &[r.wakeups]),
                cell(rss, &[r.rss])
            );
        }
        md += "\n";
    }
    md
}

/// A Markdown table of the fixed rates in `points`: per row (as [`table`]'s), the proxies'
/// system calls per request (with the paired ratio) and the kernel's share of their CPU time.
pub fn kernel_table(points: &[Point], rows: &[(String, Vec<Option<PointSummary>>)]) -> String {
    let rates: Vec<usize> = (0..points.len())
        .filter(|&i| matches!(points[i], Point::Rate(_)))
        .collect();
    let mut md = String::from("| |");
    let mut rule = String::from("|---|");
    for &i in &rates {
        md += &format!(
            " {l}: syscalls / req | {l}: kernel % of CPU |",
            l = points[i].label()
        );
        rule += "---:|---:|";
    }
    md += &format!("\n{rule}\n");
    for (name, sums) in rows {
        md += &format!("| {name} |");
        for &i in &rates {
            match sums.get(i).and_then(Option::as_ref) {
                Some(s) => {
                    md += &format!(
                        " {} | {} |",
                        cell(fmt_opt(s.syscalls_per_req, 1), &[s.vs_best_peer.syscalls]),
                        fmt_opt(s.kernel_pct, 0)
                    )
                }
                None => md += " not run | |",
            }
        }
        md += "\n";
    }
    md
}

/// Parses `--rates`: comma-separated requests per second, each in (0, 1 000 000].
pub fn parse_rates(s: &str) -> Result<Vec<f64>, String> {
    let rates: Vec<f64> = s
        .split(',')
        .map(|r| {
            let r = r.trim().replace('_', "");
            r.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x > 0.0 && *x <= 1_000_000.0)
                .ok_or_else(|| format!("{r:?}: not a rate in (0, 1000000]"))
        })
        .collect::<Result<_, _>>()?;
    if rates.is_empty() || rates.len() > 16 {
        return Err("give 1 to 16 rates".into());
    }
    Ok(rates)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample(run: usize, column: &str, peer: bool, p50: f64, cpu: f64) -> Sample {
        Sample {
            run,
            column: column.into(),
            peer,
            m: Metrics {
                throughput: Some(1000.0),
                p50_us: Some(p50),
                p99_us: Some(p50 * 2.0),
                p999_us: Some(p50 * 3.0),
                cpu_per_100k: Some(cpu),
                wakeups_per_req: Some(cpu / 10.0),
                syscalls_per_req: Some(cpu),
                kernel_pct: Some(60.0),
                rss_kib: Some(vec![10_240, 12_288]),
            },
        }
    }

    #[test]
    fn ratios_are_paired_per_run_against_the_best_peer() {
        // Run 2 is twice as slow for everyone: the paired ratio does not move.
        let s = vec![
            sample(1, "weft", false, 90.0, 9.0),
            sample(1, "nginx", true, 100.0, 10.0),
            sample(1, "haproxy", true, 120.0, 12.0),
            sample(2, "weft", false, 180.0, 18.0),
            sample(2, "nginx", true, 200.0, 20.0),
            sample(2, "haproxy", true, 240.0, 24.0),
        ];
        let w = summarize(&s, "weft", Point::Rate(1000.0)).unwrap();
        assert_eq!(w.point, "1 000 req/s");
        assert_eq!(w.p50_us, Some(135.0));
        let [m, lo, hi] = w.vs_best_peer.p50.unwrap();
        assert!((m - 0.9).abs() < 1e-9 && (lo - 0.9).abs() < 1e-9 && (hi - 0.9).abs() < 1e-9);
        assert!((w.vs_best_peer.cpu.unwrap()[0] - 0.9).abs() < 1e-9);
        assert_eq!(w.vs_best_peer.rss.unwrap()[0], 1.0);
        assert_eq!(w.rss_mib, Some(vec![10.0, 12.0]));
        assert!(summarize(&s, "linkerd", Point::Saturation).is_none());
        let md = table(
            &[Point::Rate(1000.0), Point::Saturation],
            &[("weft".into(), vec![Some(w), None])],
        );
        assert!(
            md.contains("| weft | 135 / 270 / 405 (×0.90 / ×0.90 / ×0.90) | 13.500 (×0.90) | 1.35 (×0.90) | 10.0 / 12.0 (×1.00) | not run | | | |"),
            "{md}"
        );
        assert!(md.contains("1 000 req/s: p50 / p99 / p99.9 µs"), "{md}");
        let w = summarize(&s, "weft", Point::Rate(1000.0)).unwrap();
        assert_eq!(w.syscalls_per_req, Some(13.5));
        let k = kernel_table(
            &[Point::Rate(1000.0), Point::Saturation],
            &[("weft".into(), vec![Some(w), None])],
        );
        assert_eq!(
            k,
            "| | 1 000 req/s: syscalls / req | 1 000 req/s: kernel % of CPU |\n|---|---:|---:|\n\
             | weft | 13.5 (×0.90) | 60 |\n",
        );
    }

    #[test]
    fn rates_parse_and_bad_ones_are_refused() {
        assert_eq!(
            parse_rates("200,1_000, 2000").unwrap(),
            vec![200.0, 1000.0, 2000.0]
        );
        assert!(parse_rates("200,,1000").is_err());
        assert!(parse_rates("0").is_err());
        assert!(parse_rates("nan").is_err());
        assert!(parse_rates("2e7").is_err());
    }
}
