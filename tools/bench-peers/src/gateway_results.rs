//! The gateway scenario's results (issue 23): what each column measured in each run
//! ([`GatewayRun`]), the medians and paired ratios to NGINX per load point, and the Markdown.
//! The runner is [`crate::gateway`]; the values here come from it.

use std::collections::BTreeMap;

use serde::Serialize;
use weft_benches::load::SaturationResult;
use weft_benches::report::fmt_num;

use crate::lanes::{RatePoint, Timing};
use crate::rates::{self, Metrics, Point, PointSummary, Sample};

/// The scenario's settings.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayConfig {
    /// Repetitions (the columns interleaved in each).
    pub runs: usize,
    /// Warm-up, window and RSS sampling of every load.
    #[serde(skip)]
    pub timing: Timing,
    /// Connections of the saturation (closed-loop) runs.
    pub connections: usize,
    /// The fixed rates (open loop), requests per second.
    pub rates: Vec<f64>,
    /// Connections the open-loop runs spread their requests over.
    pub latency_connections: usize,
    /// The load generator's CPU.
    pub loadgen_core: usize,
    /// The app's and the proxies' CPU.
    pub server_core: usize,
    /// Weft only, even when NGINX is installed.
    pub only_weft: bool,
}

/// A column of the scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GatewayColumn {
    /// client → TLS → `weft-proxy --gateway` → mutual TLS → Weft sidecar → app.
    WeftGateway,
    /// client → TLS → NGINX → app.
    Nginx,
}

impl GatewayColumn {
    /// Its name in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            GatewayColumn::WeftGateway => "weft-gateway",
            GatewayColumn::Nginx => "nginx",
        }
    }
}

/// One column's loads in one run. Watched processes: the app, then the edge proxy (the
/// gateway or NGINX), then (Weft) the sidecar in front of the app.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayRun {
    /// Run number (from 1).
    pub run: usize,
    /// Which column.
    pub column: GatewayColumn,
    /// The proxies' RSS (KiB) after start, before traffic.
    pub idle_rss_kib: Vec<u64>,
    /// Saturation (closed loop).
    pub saturation: SaturationResult,
    /// Each fixed rate (open loop).
    pub rates: Vec<RatePoint>,
}

impl GatewayRun {
    /// Its metrics at `point`; with `edge_only`, CPU and RSS of the edge proxy alone.
    pub fn metrics(&self, point: Point, edge_only: bool) -> Option<Metrics> {
        // The app and the edge proxy are the first two watched processes.
        let keep = |v: &mut Vec<f64>, r: &mut Vec<u64>| {
            if edge_only {
                v.truncate(2);
                r.truncate(2);
            }
        };
        match point {
            Point::Saturation => {
                let mut s = self.saturation.clone();
                keep(&mut s.cpu_seconds, &mut s.peak_rss_kib);
                Some(Metrics::of_saturation(&s))
            }
            Point::Rate(rate) => {
                let mut p = self.rates.iter().find(|p| p.rate == rate)?.clone();
                keep(&mut p.result.cpu_seconds, &mut p.peak_rss_kib);
                Some(Metrics::of_rate(&p))
            }
        }
    }

    /// Errors over its loads (failed and missed requests).
    pub fn errors(&self) -> u64 {
        self.saturation.errors
            + self
                .rates
                .iter()
                .map(|p| p.result.errors + p.result.missed)
                .sum::<u64>()
    }
}

/// The scenario's results.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayReport {
    /// Settings.
    pub config: GatewayConfig,
    /// Versions of what ran.
    pub versions: BTreeMap<String, String>,
    /// What was left out, and why.
    pub skipped: Vec<String>,
    /// Per column, per point (each rate, then saturation): the whole path's proxies (Weft:
    /// gateway + sidecar; NGINX: itself), medians and paired ratios to NGINX.
    pub path: BTreeMap<String, Vec<PointSummary>>,
    /// The same with the edge proxy alone (Weft: the gateway process).
    pub edge: BTreeMap<String, Vec<PointSummary>>,
    /// Every run.
    pub runs: Vec<GatewayRun>,
}

/// The points: each rate, then saturation.
fn points(rates: &[f64]) -> Vec<Point> {
    rates
        .iter()
        .map(|&r| Point::Rate(r))
        .chain([Point::Saturation])
        .collect()
}

/// Per column, its summary at each point (NGINX is the peer the ratios compare with).
fn summaries(
    runs: &[GatewayRun],
    pts: &[Point],
    edge_only: bool,
) -> BTreeMap<String, Vec<PointSummary>> {
    let mut out = BTreeMap::new();
    for col in [GatewayColumn::WeftGateway, GatewayColumn::Nginx] {
        let sums: Vec<PointSummary> = pts
            .iter()
            .filter_map(|&p| {
                let samples: Vec<Sample> = runs
                    .iter()
                    .filter_map(|r| {
                        Some(Sample {
                            run: r.run,
                            column: r.column.as_str().to_owned(),
                            peer: r.column == GatewayColumn::Nginx,
                            m: r.metrics(p, edge_only)?,
                        })
                    })
                    .collect();
                rates::summarize(&samples, col.as_str(), p)
            })
            .collect();
        if !sums.is_empty() {
            out.insert(col.as_str().to_owned(), sums);
        }
    }
    out
}

impl GatewayReport {
    /// Medians and paired ratios from every run.
    pub fn new(
        config: GatewayConfig,
        versions: BTreeMap<String, String>,
        skipped: Vec<String>,
        runs: Vec<GatewayRun>,
    ) -> Self {
        let pts = points(&config.rates);
        GatewayReport {
            path: summaries(&runs, &pts, false),
            edge: summaries(&runs, &pts, true),
            config,
            versions,
            skipped,
            runs,
        }
    }

    /// Errors over every run.
    pub fn errors(&self) -> u64 {
        self.runs.iter().map(GatewayRun::errors).sum()
    }

    /// The Markdown report.
    pub fn markdown(&self) -> String {
        let c = &self.config;
        let mut md =
            String::from("# weft-bench-peers --gateway: Weft's gateway vs. NGINX at the edge\n\n");
        md += &format!(
            "weft-gateway: client → TLS 1.3 → `weft-proxy --gateway` (edge TLS, route, the mesh's \
             outbound stages) → mutual TLS 1.3 → Weft sidecar → app. nginx: client → TLS 1.3 → NGINX \
             (TLS reverse proxy, upstream keep-alive) → app. The same server certificate and suite \
             (TLS_AES_256_GCM_SHA384), HTTP/1.1 keep-alive from the client, one worker each, app and \
             proxies on CPU {}, load generator on CPU {}. {} run(s), columns interleaved, medians and \
             ratios paired per run; {} s measured after {} s warm-up; saturation over {} connections, \
             fixed rates over {} connections, latency from the scheduled send time.\n\n",
            c.server_core,
            c.loadgen_core,
            c.runs,
            fmt_num(c.timing.duration.as_secs_f64(), 1),
            fmt_num(c.timing.warmup.as_secs_f64(), 1),
            c.connections,
            c.latency_connections,
        );
        for (k, v) in &self.versions {
            md += &format!("- {k}: {v}\n");
        }
        for s in &self.skipped {
            md += &format!("- **skipped**: {s}\n");
        }
        let pts = points(&c.rates);
        let rows =
            |m: &BTreeMap<String, Vec<PointSummary>>| -> Vec<(String, Vec<Option<PointSummary>>)> {
                m.iter()
                    .map(|(name, sums)| {
                        let by_point = pts
                            .iter()
                            .map(|p| sums.iter().find(|s| s.point == p.label()).cloned())
                            .collect();
                        (name.clone(), by_point)
                    })
                    .collect()
            };
        md += "\n## The whole path (Weft: gateway + sidecar; NGINX: itself)\n\n";
        md += &rates::table(&pts, &rows(&self.path));
        md += "\n## The edge proxy alone (Weft: the gateway process)\n\n";
        md += &rates::table(&pts, &rows(&self.edge));
        md += "\n### The kernel's part at the fixed rates (whole path; edge proxy alone)\n\n";
        md += &rates::kernel_table(&pts, &rows(&self.path));
        md += "\n";
        md += &rates::kernel_table(&pts, &rows(&self.edge));
        md +=
            "\n(×N): the column's value over NGINX's in the same run, median over the runs. CPU: \
               the proxies' on-CPU time over the measured window (every thread's, /proc/PID/task/*/schedstat), \
               per 100k answered requests. Wake-ups / req: the times their threads were scheduled \
               onto a CPU (schedstat's run count) per answered request. RSS: each proxy's peak VmRSS sampled every 100 ms under that load. \
               Syscalls / req: the proxies' system calls (`perf stat -e raw_syscalls:sys_enter`) per answered request; kernel %: their \
               stime over utime + stime (/proc/PID/stat).\n";
        md += "\n## Per run\n\n| run | column | saturation req/s | idle RSS MiB | errors |\n|---:|---|---:|---:|---:|\n";
        for r in &self.runs {
            let idle: Vec<String> = r
                .idle_rss_kib
                .iter()
                .map(|k| fmt_num(*k as f64 / 1024.0, 1))
                .collect();
            md += &format!(
                "| {} | {} | {} | {} | {} |\n",
                r.run,
                r.column.as_str(),
                fmt_num(r.saturation.rps, 0),
                idle.join(" / "),
                r.errors()
            );
        }
        md
    }
}
