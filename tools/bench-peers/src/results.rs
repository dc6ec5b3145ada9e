//! The peer comparison's results: one column's measurements in one run ([`PeerRun`]), their
//! medians and ratios ([`PeerSummary`]) and the targets, gathered in [`PeersReport`]. The
//! Markdown is written by [`crate::report`] from these values.

use std::collections::BTreeMap;

use serde::Serialize;
use weft_benches::load::SaturationResult;
use weft_benches::results::{check, TargetCheck};
use weft_benches::stats::{median, median_opt, ratio, Percentiles};

use crate::lanes::RatePoint;
use crate::load::TcpResult;
use crate::model::{Column, Sizing, Workload};
use crate::pair::{Negotiated, PeersFound};
use crate::rates::{self, Metrics, Point, PointSummary, Sample};

/// Measurements of one column in one run of one workload.
#[derive(Debug, Clone, Serialize)]
pub struct PeerRun {
    /// Run number (from 1).
    pub run: usize,
    /// The workload.
    pub workload: Workload,
    /// Direct or which pair.
    pub column: Column,
    /// The proxies' RSS (KiB) after start, before traffic: A, B.
    pub idle_rss_kib: Option<[u64; 2]>,
    /// HTTP and gRPC: saturation (closed loop). Watched: app, A, B.
    pub saturation: Option<SaturationResult>,
    /// HTTP and gRPC: each fixed rate (open loop), in the order of `--rates`.
    pub rates: Vec<RatePoint>,
    /// TCP: throughput.
    pub tcp: Option<TcpResult>,
}

impl PeerRun {
    /// req/s (HTTP, gRPC) or MB/s (TCP).
    pub fn throughput(&self) -> Option<f64> {
        match self.workload {
            Workload::Tcp => self.tcp.as_ref().map(|t| t.mb_per_s),
            _ => self.saturation.as_ref().map(|s| s.rps),
        }
    }

    /// CPU-seconds of both proxies per 100k requests in the saturation window.
    pub fn pair_cpu_per_100k(&self) -> Option<f64> {
        let s = self.saturation.as_ref()?;
        if self.column == Column::Direct || s.requests == 0 || s.cpu_seconds.len() < 3 {
            return None;
        }
        Some((s.cpu_seconds[1] + s.cpu_seconds[2]) / s.requests as f64 * 100_000.0)
    }

    /// CPU-seconds of both proxies per GB echoed (TCP).
    pub fn pair_cpu_per_gb(&self) -> Option<f64> {
        let t = self.tcp.as_ref()?;
        if self.column == Column::Direct || t.bytes == 0 || t.cpu_seconds.len() < 3 {
            return None;
        }
        Some((t.cpu_seconds[1] + t.cpu_seconds[2]) / t.bytes as f64 * 1e9)
    }

    /// Peak RSS (KiB) of A and B under load.
    pub fn load_rss_kib(&self) -> Option<[u64; 2]> {
        let peaks = match (&self.saturation, &self.tcp) {
            (Some(s), _) => &s.peak_rss_kib,
            (None, Some(t)) => &t.peak_rss_kib,
            _ => return None,
        };
        if self.column == Column::Direct || peaks.len() < 3 {
            return None;
        }
        Some([peaks[1], peaks[2]])
    }

    /// Its metrics at `point` (`None` if it did not run there).
    pub fn metrics(&self, point: Point) -> Option<Metrics> {
        match point {
            Point::Saturation => self.saturation.as_ref().map(Metrics::of_saturation),
            Point::Rate(r) => self
                .rates
                .iter()
                .find(|p| p.rate == r)
                .map(Metrics::of_rate),
        }
    }

    /// The open-loop run at the highest rate (the latency the older reports gave).
    pub fn top_rate(&self) -> Option<&RatePoint> {
        self.rates.iter().max_by(|a, b| a.rate.total_cmp(&b.rate))
    }

    /// Errors over the run's loads.
    pub fn errors(&self) -> u64 {
        self.saturation.as_ref().map_or(0, |s| s.errors)
            + self
                .rates
                .iter()
                .map(|p| p.result.errors + p.result.missed)
                .sum::<u64>()
            + self.tcp.as_ref().map_or(0, |t| t.errors)
    }

    /// CPU seconds other processes on the machine used in this run's windows.
    pub fn other_work_s(&self) -> f64 {
        self.saturation
            .as_ref()
            .map_or(0.0, |s| s.others_cpu_seconds)
            + self
                .rates
                .iter()
                .map(|p| p.result.others_cpu_seconds)
                .sum::<f64>()
            + self.tcp.as_ref().map_or(0.0, |t| t.others_cpu_seconds)
    }
}

/// Medians of one column and workload over the runs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PeerSummary {
    /// req/s (HTTP, gRPC) or MB/s (TCP).
    pub throughput: Option<f64>,
    /// × direct.
    pub vs_direct: Option<f64>,
    /// × the best peer (HAProxy / NGINX) in this workload.
    pub vs_best_peer: Option<f64>,
    /// Paired: in each run, this column's throughput × the best peer's in that same run;
    /// median, lowest, highest over the runs. Columns of one run are measured minutes apart at
    /// most, so a slow drift in the machine's speed largely cancels out of each ratio.
    pub per_run_vs_best_peer: Option<[f64; 3]>,
    /// HTTP and gRPC: each fixed rate, then saturation.
    pub points: Vec<PointSummary>,
    /// At the highest fixed rate: p50, p99, p99.9 (µs).
    pub p50_us: Option<f64>,
    /// p99 (µs).
    pub p99_us: Option<f64>,
    /// p99.9 (µs).
    pub p999_us: Option<f64>,
    /// CPU-seconds of both proxies per 100k requests (HTTP, gRPC).
    pub pair_cpu_per_100k: Option<f64>,
    /// CPU-seconds of both proxies per GB echoed (TCP).
    pub pair_cpu_per_gb: Option<f64>,
    /// RSS idle, MiB: A, B.
    pub idle_rss_mib: Option<[f64; 2]>,
    /// Peak RSS under load, MiB: A, B.
    pub load_rss_mib: Option<[f64; 2]>,
    /// Errors over all runs.
    pub errors: u64,
    /// Runs.
    pub runs: usize,
}

/// The comparison's settings.
#[derive(Debug, Clone, Serialize)]
pub struct PeersConfig {
    /// Repetitions.
    pub runs: usize,
    /// Measured window of each load, seconds.
    pub duration_s: f64,
    /// Warm-up, seconds.
    pub warmup_s: f64,
    /// HTTP saturation connections.
    pub connections: usize,
    /// Fixed rates of the latency runs (`--rates`).
    pub rates: Vec<f64>,
    /// Its connections.
    pub latency_connections: usize,
    /// gRPC: HTTP/2 connections and calls in flight.
    pub grpc_channels: usize,
    /// Calls in flight.
    pub grpc_concurrency: usize,
    /// TCP connections.
    pub tcp_connections: usize,
    /// The peers' sizing.
    pub sizing: Sizing,
    /// CPUs: load generator, server.
    pub loadgen_core: usize,
    /// The apps' and proxies' CPU.
    pub server_core: usize,
}

/// The peer comparison's results.
#[derive(Debug, Clone, Serialize)]
pub struct PeersReport {
    /// Settings.
    pub config: PeersConfig,
    /// What was found, versions, what was skipped.
    pub found: PeersFound,
    /// Per pair, what a rustls probe handshake negotiated with its TLS listener (HTTP workload).
    pub negotiated: BTreeMap<String, Negotiated>,
    /// The peers' config files of the HTTP workload (as run, for the record).
    pub configs: BTreeMap<String, String>,
    /// Medians: workload → column → summary.
    pub summary: BTreeMap<String, BTreeMap<String, PeerSummary>>,
    /// Issue 6's targets.
    pub targets: Vec<TargetCheck>,
    /// Every run.
    pub runs: Vec<PeerRun>,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Medians of `runs` of one column and workload.
pub fn summarize(runs: &[&PeerRun]) -> PeerSummary {
    let lat = |f: fn(&Percentiles) -> f64| {
        median_opt(
            runs.iter()
                .map(|r| r.top_rate().and_then(|l| l.result.latency.as_ref()).map(f)),
        )
    };
    let rss = |f: fn(&PeerRun) -> Option<[u64; 2]>| {
        let a = median_opt(runs.iter().map(|r| f(r).map(|x| mib(x[0]))));
        let b = median_opt(runs.iter().map(|r| f(r).map(|x| mib(x[1]))));
        a.zip(b).map(|(a, b)| [a, b])
    };
    PeerSummary {
        throughput: median_opt(runs.iter().map(|r| r.throughput())),
        p50_us: lat(|p| p.p50_us),
        p99_us: lat(|p| p.p99_us),
        p999_us: lat(|p| p.p999_us),
        pair_cpu_per_100k: median_opt(runs.iter().map(|r| r.pair_cpu_per_100k())),
        pair_cpu_per_gb: median_opt(runs.iter().map(|r| r.pair_cpu_per_gb())),
        idle_rss_mib: rss(|r| r.idle_rss_kib),
        load_rss_mib: rss(PeerRun::load_rss_kib),
        errors: runs.iter().map(|r| r.errors()).sum(),
        runs: runs.len(),
        ..Default::default()
    }
}

impl PeersReport {
    /// Medians, ratios and target checks from every run.
    pub fn new(
        config: PeersConfig,
        found: PeersFound,
        negotiated: BTreeMap<String, Negotiated>,
        configs: BTreeMap<String, String>,
        runs: Vec<PeerRun>,
    ) -> Self {
        let mut summary = BTreeMap::new();
        for w in Workload::ALL {
            let mut cols: BTreeMap<Column, PeerSummary> = BTreeMap::new();
            for c in Column::ALL {
                let rs: Vec<&PeerRun> = runs
                    .iter()
                    .filter(|r| r.workload == w && r.column == c)
                    .collect();
                if !rs.is_empty() {
                    cols.insert(c, summarize(&rs));
                }
            }
            let direct = cols.get(&Column::Direct).and_then(|s| s.throughput);
            let best = best_peer(&cols, |s| s.throughput, true);
            for (c, s) in cols.iter_mut() {
                s.vs_direct = ratio(s.throughput, direct);
                s.vs_best_peer = ratio(s.throughput, best);
                s.per_run_vs_best_peer = per_run_vs_best_peer(&runs, w, *c);
                if w != Workload::Tcp {
                    s.points = point_summaries(&runs, w, *c, &points(&config.rates));
                }
            }
            if !cols.is_empty() {
                summary.insert(
                    w.as_str().to_owned(),
                    cols.into_iter()
                        .map(|(c, s)| (c.as_str().to_owned(), s))
                        .collect(),
                );
            }
        }
        let mut targets = targets(&summary);
        targets.extend(fixed_rate_targets(&summary));
        PeersReport {
            config,
            found,
            negotiated,
            configs,
            summary,
            targets,
            runs,
        }
    }
}

/// The load points of HTTP and gRPC: each fixed rate, then saturation.
pub fn points(rates: &[f64]) -> Vec<Point> {
    rates
        .iter()
        .map(|&r| Point::Rate(r))
        .chain([Point::Saturation])
        .collect()
}

/// `col`'s summary at each of `points` in workload `w` (the points it ran).
fn point_summaries(
    runs: &[PeerRun],
    w: Workload,
    col: Column,
    points: &[Point],
) -> Vec<PointSummary> {
    points
        .iter()
        .filter_map(|&p| {
            let samples: Vec<Sample> = runs
                .iter()
                .filter(|r| r.workload == w)
                .filter_map(|r| {
                    Some(Sample {
                        run: r.run,
                        column: r.column.as_str().to_owned(),
                        peer: r.column.is_peer(),
                        m: r.metrics(p)?,
                    })
                })
                .collect();
            rates::summarize(&samples, col.as_str(), p)
        })
        .collect()
}

/// Issue 24's targets for the Weft pair, from the paired medians: at every fixed rate, CPU
/// per request at most 0.9× the best peer's, p50 and p99 no worse; at saturation at least
/// 1.2× the best peer's throughput.
pub fn fixed_rate_targets(
    summary: &BTreeMap<String, BTreeMap<String, PeerSummary>>,
) -> Vec<TargetCheck> {
    let mut out = Vec::new();
    for (w, name) in [("http", "HTTP/1.1"), ("grpc", "gRPC")] {
        let Some(weft) = summary.get(w).and_then(|m| m.get("weft")) else {
            continue;
        };
        for p in &weft.points {
            let r = &p.vs_best_peer;
            let m = |x: Option<[f64; 3]>| x.map(|[m, _, _]| m);
            if p.rate.is_none() {
                out.push(check(
                    &format!("{name} saturation throughput, × best peer (paired)"),
                    ">= 1.2",
                    m(r.throughput),
                    |x| x >= 1.2,
                ));
                continue;
            }
            let at = &p.point;
            out.push(check(
                &format!("{name} pair CPU per request at {at}, × best peer (paired)"),
                "<= 0.9",
                m(r.cpu),
                |x| x <= 0.9,
            ));
            for (what, v) in [("p50", r.p50), ("p99", r.p99)] {
                out.push(check(
                    &format!("{name} {what} at {at}, × best peer (paired)"),
                    "<= 1.0",
                    m(v),
                    |x| x <= 1.0,
                ));
            }
        }
    }
    out
}

/// `col`'s throughput in each run × the best peer's in the same run: median, lowest, highest.
fn per_run_vs_best_peer(runs: &[PeerRun], w: Workload, col: Column) -> Option<[f64; 3]> {
    let mut ratios: Vec<f64> = runs
        .iter()
        .filter(|r| r.workload == w && r.column == col)
        .filter_map(|r| {
            let best = runs
                .iter()
                .filter(|p| p.run == r.run && p.workload == w && p.column.is_peer())
                .filter_map(PeerRun::throughput)
                .max_by(f64::total_cmp);
            ratio(r.throughput(), best)
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    let (lo, hi) = (*ratios.first()?, *ratios.last()?);
    Some([median(&ratios)?, lo, hi])
}

/// The best peer's value of `f` in `cols` (largest if `larger_is_better`).
fn best_peer(
    cols: &BTreeMap<Column, PeerSummary>,
    f: impl Fn(&PeerSummary) -> Option<f64>,
    larger_is_better: bool,
) -> Option<f64> {
    let vals = cols
        .iter()
        .filter(|(c, _)| c.is_peer())
        .filter_map(|(_, s)| f(s));
    if larger_is_better {
        vals.max_by(f64::total_cmp)
    } else {
        vals.min_by(f64::total_cmp)
    }
}

/// Issue 6's targets from the medians.
pub fn targets(summary: &BTreeMap<String, BTreeMap<String, PeerSummary>>) -> Vec<TargetCheck> {
    let http = summary.get("http");
    let get = |k: &str| http.and_then(|m| m.get(k));
    let peers = || ["haproxy", "nginx"].into_iter().filter_map(&get);
    let weft = get("weft");
    let best_rps = peers().filter_map(|s| s.throughput).max_by(f64::total_cmp);
    let best_cpu = peers()
        .filter_map(|s| s.pair_cpu_per_100k)
        .min_by(f64::total_cmp);
    let best_p50 = peers().filter_map(|s| s.p50_us).min_by(f64::total_cmp);
    let weft_rss = weft.and_then(|s| s.load_rss_mib).map(|[a, b]| a.max(b));
    vec![
        check(
            "HTTP/1.1 pair throughput, × best of HAProxy / NGINX",
            ">= 1.25",
            ratio(weft.and_then(|s| s.throughput), best_rps),
            |x| x >= 1.25,
        ),
        check(
            "pair CPU-s per 100k HTTP requests, × best of HAProxy / NGINX",
            "<= 0.8",
            ratio(weft.and_then(|s| s.pair_cpu_per_100k), best_cpu),
            |x| x <= 0.8,
        ),
        check(
            "p50 at a fixed rate, × best of HAProxy / NGINX",
            "<= 1.0",
            ratio(weft.and_then(|s| s.p50_us), best_p50),
            |x| x <= 1.0,
        ),
        check(
            "each Weft sidecar's RSS under HTTP load, MiB",
            "< 15",
            weft_rss,
            |x| x < 15.0,
        ),
    ]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use weft_benches::load::RateResult;

    use super::*;

    fn sizing() -> Sizing {
        Sizing::new(20_000, 32)
    }

    fn run(col: Column, rps: f64, cpu: [f64; 3], p50: f64) -> PeerRun {
        PeerRun {
            run: 1,
            workload: Workload::Http,
            column: col,
            idle_rss_kib: Some([5_000, 6_000]),
            saturation: Some(SaturationResult {
                requests: (rps * 5.0) as u64,
                seconds: 5.0,
                rps,
                errors: 0,
                error_samples: vec![],
                cpu_seconds: cpu.to_vec(),
                loadgen_cpu_seconds: 1.0,
                peak_rss_kib: vec![1, 10_240, 12_288],
                cpu_busy_pct: vec![],
                others_cpu_seconds: 0.0,
                wakeups: None,
            }),
            rates: vec![RatePoint {
                rate: 2000.0,
                peak_rss_kib: vec![1, 10_240, 12_288],
                kernel: None,
                result: RateResult {
                    rate: 2000.0,
                    scheduled: 10,
                    ok: 10,
                    errors: 0,
                    missed: 0,
                    achieved_rps: 2000.0,
                    latency: Some(Percentiles {
                        count: 10,
                        p50_us: p50,
                        p90_us: p50,
                        p99_us: p50 * 2.0,
                        p999_us: p50 * 3.0,
                        max_us: p50 * 4.0,
                    }),
                    error_samples: vec![],
                    cpu_seconds: vec![0.5, 0.5, 0.5],
                    loadgen_cpu_seconds: 0.0,
                    seconds: 5.0,
                    cpu_busy_pct: vec![],
                    others_cpu_seconds: 0.0,
                    wakeups: None,
                },
            }],
            tcp: None,
        }
    }

    #[test]
    fn report_ratios_and_targets() {
        let runs = vec![
            run(Column::Direct, 40_000.0, [5.0, 0.0, 0.0], 50.0),
            run(Column::Weft, 15_000.0, [1.0, 1.5, 1.5], 200.0),
            run(Column::Haproxy, 10_000.0, [1.0, 2.0, 2.0], 250.0),
            run(Column::Nginx, 12_000.0, [1.0, 2.0, 2.0], 220.0),
        ];
        let cfg = PeersConfig {
            runs: 1,
            duration_s: 5.0,
            warmup_s: 1.0,
            connections: 32,
            rates: vec![2000.0],
            latency_connections: 16,
            grpc_channels: 4,
            grpc_concurrency: 32,
            tcp_connections: 4,
            sizing: sizing(),
            loadgen_core: 0,
            server_core: 1,
        };
        let r = PeersReport::new(
            cfg,
            PeersFound::default(),
            BTreeMap::new(),
            BTreeMap::new(),
            runs,
        );
        let w = &r.summary["http"]["weft"];
        assert_eq!(w.vs_best_peer, Some(1.25));
        assert_eq!(w.per_run_vs_best_peer, Some([1.25; 3]));
        assert_eq!(w.vs_direct, Some(0.375));
        // 3 CPU-s / 75k requests * 100k = 4; nginx 4 / 60k * 100k = 6.67.
        assert!((w.pair_cpu_per_100k.unwrap() - 4.0).abs() < 1e-9);
        assert_eq!(w.load_rss_mib, Some([10.0, 12.0]));
        assert!(r.targets[0].met, "{:?}", r.targets[0]);
        assert!(r.targets[1].met);
        assert!(r.targets[2].met);
        assert!(r.targets[3].met);
        let md = r.markdown();
        assert!(md.contains("| weft | 15 000 | 0.38 | 1.25 "), "{md}");
        assert!(md.contains("weft http: 1.25 (1.25–1.25)"), "{md}");
        assert!(md.contains("| **skipped**") || !md.contains("skipped"));
        let _ = serde_json::to_string(&r).unwrap();
    }
}
