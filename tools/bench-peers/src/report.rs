//! The peer comparison's Markdown report, written from the results it is given
//! ([`PeersReport`]) with the formatting helpers of [`weft_benches::report`].

use crate::model::{Column, Workload};
use crate::rates::{self, PointSummary};
use crate::results::{points, PeersReport};
use weft_benches::report::{fmt_num, fmt_opt};

impl PeersReport {
    /// The markdown report.
    // Long: the report's sections in print order; the throughput and latency tables share one column list and lookups.
    pub fn markdown(&self) -> String {
        let c = &self.config;
        let mut md =
            String::from("# weft-bench-peers: Weft vs. HAProxy vs. NGINX sidecar pairs\n\n");
        md += &format!(
            "Each pair: client → proxy A (plain, loopback) → mutual TLS 1.3 (client certificate both ways, \
             verified against the mesh CA) → proxy B → app; one worker each; apps and proxies on CPU {}, \
             load generator on CPU {}. {} run(s), columns interleaved (order per run from a balanced Latin square), medians and paired ratios; \
             {} s measured after {} s warm-up. HTTP: {} keep-alive connections (saturation); open loop at {} req/s \
             over {} connections (latency from the scheduled send time). gRPC: unary Echo, {} calls in flight \
             over {} HTTP/2 connections (saturation); the same fixed rates, as many calls in flight at most as the HTTP \
             open loop has connections. TCP: {} connections writing 64 KiB chunks through an echo, MB/s echoed back.\n\n",
            c.server_core,
            c.loadgen_core,
            c.runs,
            fmt_num(c.duration_s, 1),
            fmt_num(c.warmup_s, 1),
            c.connections,
            c.rates
                .iter()
                .map(|r| fmt_num(*r, 0))
                .collect::<Vec<_>>()
                .join(", "),
            c.latency_connections,
            c.grpc_concurrency,
            c.grpc_channels,
            c.tcp_connections,
        );
        for (k, v) in &self.found.versions {
            md += &format!("- {k}: {v}\n");
        }
        for s in &self.found.skipped {
            md += &format!("- **skipped**: {s}\n");
        }
        for (k, n) in &self.negotiated {
            md += &format!(
                "- {k}: probe handshake with B's TLS listener negotiated {} {} (ALPN {})\n",
                n.version,
                n.suite,
                n.alpn.as_deref().unwrap_or("none")
            );
        }
        md += "\n";
        let get = |w: Workload, col: Column| {
            self.summary
                .get(w.as_str())
                .and_then(|m| m.get(col.as_str()))
        };
        let cols: Vec<Column> = Column::ALL
            .into_iter()
            .filter(|&col| Workload::ALL.iter().any(|&w| get(w, col).is_some()))
            .collect();
        md += "## Throughput\n\n| | HTTP/1.1 req/s | × direct | × best peer | gRPC req/s | × direct | × best peer | TCP MB/s | × direct | × best peer |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
        for &col in &cols {
            md += &format!("| {} ", col.as_str());
            for w in Workload::ALL {
                match get(w, col) {
                    Some(s) => {
                        md += &format!(
                            "| {} | {} | {} ",
                            fmt_opt(s.throughput, if w == Workload::Tcp { 1 } else { 0 }),
                            fmt_opt(s.vs_direct, 2),
                            fmt_opt(s.vs_best_peer, 2)
                        )
                    }
                    None => md += "| not run | | ",
                }
            }
            md += "|\n";
        }
        let paired: Vec<String> = Workload::ALL
            .into_iter()
            .flat_map(|w| cols.iter().map(move |&c| (w, c)))
            .filter(|(_, c)| c.is_weft())
            .filter_map(|(w, c)| {
                let [m, lo, hi] = get(w, c)?.per_run_vs_best_peer?;
                Some(format!(
                    "{} {}: {} ({}–{})",
                    c.as_str(),
                    w.as_str(),
                    fmt_num(m, 2),
                    fmt_num(lo, 2),
                    fmt_num(hi, 2)
                ))
            })
            .collect();
        if !paired.is_empty() {
            md += &format!(
                "\nPaired, × the best peer of the same run (median, lowest–highest over the runs): {}.\n",
                paired.join("; ")
            );
        }
        let pts = points(&c.rates);
        for (w, name) in [(Workload::Http, "HTTP/1.1"), (Workload::Grpc, "gRPC")] {
            let rows: Vec<(String, Vec<Option<PointSummary>>)> = cols
                .iter()
                .filter_map(|&col| {
                    let s = get(w, col)?;
                    let by_point = pts
                        .iter()
                        .map(|p| s.points.iter().find(|x| x.point == p.label()).cloned())
                        .collect();
                    Some((col.as_str().to_owned(), by_point))
                })
                .collect();
            if !rows.is_empty() {
                md += &format!("\n## {name}: latency, CPU and memory at each rate\n\n");
                md += &rates::table(&pts, &rows);
                md += &format!("\n### {name}: the kernel's part at the fixed rates\n\n");
                md += &rates::kernel_table(&pts, &rows);
            }
        }
        md += "\nLatency from each request's scheduled send time (open loop). CPU-s / 100k: both proxies' \
               on-CPU time over the measured window (every thread's, /proc/PID/task/*/schedstat), per 100k answered requests. Wake-ups / req: the times both proxies' threads were \
               scheduled onto a CPU (schedstat's run count) per answered request. RSS: each \
               proxy's (A / B) peak VmRSS sampled every 100 ms under that load. (×N): the pair's value over \
               the best peer's (HAProxy / NGINX) in the same run, median over the runs (latency ratios: p50 / \
               p99 / p99.9; RSS: of A + B). Syscalls / req: both proxies' system calls over the window \
               (`perf stat -e raw_syscalls:sys_enter -p PID`, exact counts) per answered request; kernel %: \
               their stime over utime + stime (/proc/PID/stat, 10 ms ticks).\n";
        md += "\n## TCP and idle memory\n\n| | pair CPU-s / GB TCP | RSS idle A / B MiB | errors |\n|---|---:|---:|---:|\n";
        let rss = |x: Option<[f64; 2]>| {
            x.map_or_else(
                || "–".to_owned(),
                |[a, b]| format!("{} / {}", fmt_num(a, 1), fmt_num(b, 1)),
            )
        };
        for &col in &cols {
            let h = get(Workload::Http, col);
            let g = get(Workload::Grpc, col);
            let t = get(Workload::Tcp, col);
            let errors: u64 = [h, g, t].iter().flatten().map(|s| s.errors).sum();
            md += &format!(
                "| {} | {} | {} | {} |\n",
                col.as_str(),
                fmt_opt(t.and_then(|s| s.pair_cpu_per_gb), 2),
                rss(h.and_then(|s| s.idle_rss_mib)),
                errors,
            );
        }
        md += "\n";
        md += "## Targets of issues 6 and 24 (benchmarks, not tests)\n\n| what | target | measured | met |\n|---|---|---:|---|\n";
        for t in &self.targets {
            md += &format!(
                "| {} | {} | {} | {} |\n",
                t.what,
                t.target,
                fmt_opt(t.measured, 2),
                if t.measured.is_none() {
                    "n/a"
                } else if t.met {
                    "yes"
                } else {
                    "**no**"
                }
            );
        }
        let other: Vec<String> = self
            .runs
            .iter()
            .map(|r| r.other_work_s())
            .filter(|&s| s > 0.5)
            .map(|s| fmt_num(s, 1))
            .collect();
        if !other.is_empty() {
            md += &format!(
                "\nOther processes on the machine used CPU during {} run(s) (CPU-s per run: {}): the numbers \
                 are only meaningful on an otherwise idle machine.\n",
                other.len(),
                other.join(", ")
            );
        }
        md += "\n## Per run\n\n| run | workload | column | throughput | p50 µs at the top rate | p99 µs | pair CPU-s / 100k | errors | other work CPU-s |\n|---:|---|---|---:|---:|---:|---:|---:|---:|\n";
        for r in &self.runs {
            let p = r.top_rate().and_then(|l| l.result.latency);
            md += &format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                r.run,
                r.workload.as_str(),
                r.column.as_str(),
                fmt_opt(r.throughput(), 1),
                fmt_opt(p.map(|p| p.p50_us), 0),
                fmt_opt(p.map(|p| p.p99_us), 0),
                fmt_opt(r.pair_cpu_per_100k(), 3),
                r.errors(),
                fmt_num(r.other_work_s(), 2),
            );
        }
        md
    }
}
