//! The resilience section of the report, from a [`ResilienceReport`] it is given.

use std::fmt::Write as _;

use crate::resilience::{ResilienceReport, MAX_HEALTHY_COST_PCT};

use super::{fmt_num, fmt_opt, fmt_other_work, fmt_times};

impl ResilienceReport {
    /// Appends the report section (markdown) to `s`.
    pub fn write_markdown(&self, s: &mut String) {
        self.write_failing(s);
        self.write_healthy(s);
        self.write_runs(s);
    }

    /// The failing-endpoint scenario: settings and one row per variant.
    fn write_failing(&self, s: &mut String) {
        let c = &self.config;
        let runs = self.failing.iter().map(|f| f.runs).max().unwrap_or(0);
        let _ = writeln!(s, "\n## Resilience: one of three endpoints fails\n");
        let _ = writeln!(
            s,
            "Three `weft-sample http` instances of `app`, each behind its own inbound sidecar (own workload \
             certificate, same identity); {} of them answers every request with {}. The load generator drives an \
             outbound sidecar whose config lists the three endpoints: {}, {} req/s over {} keep-alive connections, \
             `GET /`, {} s after {} s warm-up, latency from each request's scheduled send time (no coordinated \
             omission). After the direct / weft runs; medians of {} interleaved run(s) per variant; each variant has \
             its own outbound sidecar, kept across runs. *Without policies*: outlier detection off (`consecutive_failures: 0`), no retry, \
             no rate limit. *With policies*: outlier detection (5 consecutive 5xx, `failures: 5xx`, \
             10 s base ejection), retry budget 20 % + 10/s, limits, retries on 5xx / \
             connect-failure / refused-stream / reset (3 attempts, 25–250 ms backoff), a rate limit too high to \
             reach. Both run with the default balancer (P2C on peak-EWMA latency, which charges any 5xx as a 1 s \
             answer and so all but stops choosing the failing endpoint, policies or not) and with round robin \
             (a third of the requests keep going to the failing endpoint: what the policies themselves do).\n",
            c.failing_endpoints,
            c.fail_status,
            c.load,
            fmt_num(c.rate, 0),
            c.connections,
            fmt_num(c.duration_s, 1),
            fmt_num(c.warmup_s, 1),
            runs,
        );
        let _ = writeln!(
            s,
            "| balancer | variant | success rate (2xx) | worst run | 2xx req/s | p50 µs | p99 µs | p99.9 µs | p99 of 2xx µs | non-2xx | no answer |"
        );
        let _ = writeln!(
            s,
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        let pct = |x: Option<f64>| fmt_opt(x.map(|v| v * 100.0), 2) + " %";
        for f in &self.failing {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                f.balancer.label(),
                f.policies.label(),
                pct(f.success_rate),
                pct(f.success_rate_min),
                fmt_opt(f.ok_rps, 0),
                fmt_opt(f.p50_us, 0),
                fmt_opt(f.p99_us, 0),
                fmt_opt(f.p999_us, 0),
                fmt_opt(f.p99_2xx_us, 0),
                fmt_num(f.non_2xx() as f64, 0),
                fmt_num((f.transport_errors + f.missed) as f64, 0),
            );
        }
        let _ = writeln!(
            s,
            "\nLatency percentiles are over every answered request (any status); \"non-2xx\" and \"no answer\" \
             are totals over all runs' measured windows."
        );
    }

    /// The healthy path without vs. with the policies.
    fn write_healthy(&self, s: &mut String) {
        let c = &self.config;
        let h = &self.healthy;
        let _ = writeln!(
            s,
            "\n**Healthy path cost** (the pair above, one healthy endpoint; closed loop, {} connections, {} s; \
             outbound config without vs. with the same policies, interleaved, medians of {} run(s)): \
             {} req/s without, {} req/s with policies: **with / without = {}** (cost {} %, must be under {} %: {}); \
             median of the per-run ratios {}. Pair CPU s / 100k requests: {} without, {} with.",
            c.healthy_connections,
            fmt_num(c.healthy_duration_s, 1),
            h.runs,
            fmt_opt(h.without_rps, 0),
            fmt_opt(h.with_rps, 0),
            fmt_times(h.ratio),
            fmt_opt(h.cost_pct, 1),
            fmt_num(MAX_HEALTHY_COST_PCT, 0),
            match h.cost_pct {
                Some(c) if c < MAX_HEALTHY_COST_PCT => "met",
                Some(_) => "**not met**",
                None => "not measured",
            },
            fmt_times(h.paired_ratio_median),
            fmt_opt(h.without_pair_cpu_s_per_100k, 3),
            fmt_opt(h.with_pair_cpu_s_per_100k, 3),
        );
    }

    /// Every run of both scenarios.
    fn write_runs(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "\n| run | healthy path | req/s | pair CPU/100k | other work % | errors |"
        );
        let _ = writeln!(s, "| ---: | --- | ---: | ---: | ---: | ---: |");
        for r in &self.healthy_runs {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                r.run,
                r.policies.label(),
                fmt_num(r.saturation.rps, 0),
                fmt_opt(r.pair_cpu_s_per_100k, 3),
                fmt_other_work(r.other_work_pct),
                r.saturation.errors,
            );
        }
        let _ = writeln!(
            s,
            "\n| run | failing endpoint | success % | 2xx req/s | p50 µs | p99 µs | non-2xx | other work % | no answer |"
        );
        let _ = writeln!(
            s,
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for r in &self.fail_runs {
            let x = &r.result;
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.run,
                r.variant().label(),
                fmt_opt(x.success_rate.map(|v| v * 100.0), 2),
                fmt_num(x.ok_rps, 0),
                fmt_opt(x.latency.map(|p| p.p50_us), 0),
                fmt_opt(x.latency.map(|p| p.p99_us), 0),
                fmt_num(
                    x.statuses
                        .iter()
                        .filter(|(c, _)| !(200..300).contains(*c))
                        .map(|(_, n)| n)
                        .sum::<u64>() as f64,
                    0
                ),
                fmt_other_work(r.other_work_pct),
                x.transport_errors_total + x.missed,
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::resilience::results::tests::report;

    #[test]
    fn markdown_section() {
        let rep = report();
        let mut md = String::new();
        rep.write_markdown(&mut md);
        assert!(
            md.contains("## Resilience: one of three endpoints fails"),
            "{md}"
        );
        for row in [
            "| P2C (default) | without policies | 100.00 % | 99.97 % | 2 000 | 100 | 300 | 600 | 290 | 2 | 0 |",
            "| round robin | without policies | 66.67 % | 65.00 % | 1 333 | 100 | 310 | 620 | 300 | 6 000 | 0 |",
            "| round robin | with policies | 100.00 % | 99.90 % | 2 000 | 100 | 400 | 800 | 390 | 6 | 0 |",
            "**with / without = 0.956×** (cost 4.4 %, must be under 5 %: met)",
            "| 2 | with policies | 19 000 | 4.211 | 0 | 0 |",
            "| 2 | without policies | 21 000 | 3.810 | 0 | 1 |",
            "| 2 | round robin, with policies | 99.90 | 1 998 | 100 | 30 000 | 6 | **30** | 0 |",
            "| 2 | round robin, without policies | 65.00 | 1 300 | 100 | 320 | 2 100 | **30** | 0 |",
        ] {
            assert!(md.contains(row), "{row} missing in\n{md}");
        }
        let json = serde_json::to_value(&rep).unwrap();
        assert_eq!(json["fail_runs"].as_array().unwrap().len(), 12);
        assert_eq!(json["fail_runs"][0]["policies"], "without");
        assert_eq!(json["fail_runs"][2]["balancer"], "round_robin");
        assert_eq!(json["failing"][2]["statuses"]["500"], 6000);
        assert!(json["config"]["services_yaml"]["round_robin-with"]
            .as_str()
            .unwrap()
            .contains("load_balancer: round_robin"));
    }
}
