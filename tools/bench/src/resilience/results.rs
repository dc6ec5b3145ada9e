//! The resilience scenarios' results: each failing-endpoint and healthy-path run, their
//! medians, and the scenarios' targets and flags ([`ResilienceReport`]).
//! [`crate::report`] writes their Markdown.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::load::{SaturationResult, StatusRateResult};
use crate::results::{check, TargetCheck, DISTURBED_PCT};
use crate::stats::{median, median_opt, pct_of_one_cpu, ratio};

use super::config::ResilienceConfig;
use super::variant::*;

/// One variant's fixed-rate run in the failing-endpoint scenario.
#[derive(Debug, Clone, Serialize)]
pub struct FailRun {
    /// Repetition number, from 1.
    pub run: usize,
    /// The outbound sidecar's balancer.
    pub balancer: Balancer,
    /// Without or with the policies.
    pub policies: Policies,
    /// What the client saw. Watched processes (`cpu_seconds`): the outbound
    /// sidecar, the three inbound sidecars, the three apps.
    pub result: StatusRateResult,
    /// CPU other processes used during the window, percent of one CPU.
    pub other_work_pct: f64,
}

impl FailRun {
    /// Builds the record.
    pub fn new(run: usize, variant: Variant, result: StatusRateResult) -> Self {
        let other_work_pct = pct_of_one_cpu(result.others_cpu_seconds, result.seconds);
        FailRun {
            run,
            balancer: variant.balancer,
            policies: variant.policies,
            result,
            other_work_pct,
        }
    }

    /// Why this run's numbers are suspect (requests without an answer or
    /// never sent; non-2xx answers are what is measured, not a flaw).
    pub fn flag(&self) -> Option<String> {
        let r = &self.result;
        if r.transport_errors_total == 0 && r.missed == 0 {
            return None;
        }
        let mut msg = format!(
            "run {} failing endpoint, {}: {} request(s) without an answer, {} never sent",
            self.run,
            self.variant().label(),
            r.transport_errors_total,
            r.missed
        );
        if !r.error_samples.is_empty() {
            let examples: Vec<&str> = r.error_samples.iter().map(String::as_str).take(3).collect();
            let _ = write!(msg, "; e.g. {}", examples.join(" | "));
        }
        Some(msg)
    }

    /// The run's variant.
    pub fn variant(&self) -> Variant {
        Variant::new(self.balancer, self.policies)
    }
}

/// One variant's saturation run on the healthy pair.
#[derive(Debug, Clone, Serialize)]
pub struct HealthyRun {
    /// Repetition number, from 1.
    pub run: usize,
    /// Which variant.
    pub policies: Policies,
    /// The closed-loop run. Watched processes: the app, the variant's
    /// outbound sidecar, the app's sidecar.
    pub saturation: SaturationResult,
    /// Outbound + app-side sidecar CPU seconds per 100k requests.
    pub pair_cpu_s_per_100k: Option<f64>,
    /// CPU other processes used during the window, percent of one CPU.
    pub other_work_pct: f64,
}

impl HealthyRun {
    /// Builds the record.
    pub fn new(run: usize, policies: Policies, saturation: SaturationResult) -> Self {
        let cpu = |i: usize| saturation.cpu_seconds.get(i).copied().unwrap_or(0.0);
        let pair = cpu(crate::results::SIDECAR_A) + cpu(crate::results::SIDECAR_B);
        let pair_cpu_s_per_100k =
            (saturation.requests > 0).then(|| pair / saturation.requests as f64 * 1e5);
        let other_work_pct = pct_of_one_cpu(saturation.others_cpu_seconds, saturation.seconds);
        HealthyRun {
            run,
            policies,
            saturation,
            pair_cpu_s_per_100k,
            other_work_pct,
        }
    }

    /// Why this run's numbers are suspect (any error: the path is healthy).
    pub fn flag(&self) -> Option<String> {
        let s = &self.saturation;
        if s.errors == 0 {
            return None;
        }
        let mut msg = format!(
            "run {} healthy path, {}: {} error(s)",
            self.run,
            self.policies.label(),
            s.errors
        );
        if !s.error_samples.is_empty() {
            let examples: Vec<&str> = s.error_samples.iter().map(String::as_str).take(3).collect();
            let _ = write!(msg, "; e.g. {}", examples.join(" | "));
        }
        Some(msg)
    }
}

/// Medians over one variant's failing-endpoint runs.
#[derive(Debug, Clone, Serialize)]
pub struct FailSummary {
    /// The outbound sidecar's balancer.
    pub balancer: Balancer,
    /// Without or with the policies.
    pub policies: Policies,
    /// Runs summarized.
    pub runs: usize,
    /// Client-visible success rate (2xx share of the scheduled requests), median, 0..=1.
    pub success_rate: Option<f64>,
    /// The lowest success rate of any run.
    pub success_rate_min: Option<f64>,
    /// Successful requests per second, median.
    pub ok_rps: Option<f64>,
    /// Latency p50 of every answered request, µs, median.
    pub p50_us: Option<f64>,
    /// Latency p99 of every answered request, µs, median.
    pub p99_us: Option<f64>,
    /// Latency p99.9 of every answered request, µs, median.
    pub p999_us: Option<f64>,
    /// Latency p99 of the 2xx answers, µs, median.
    pub p99_2xx_us: Option<f64>,
    /// Answers by status over all runs' windows.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests without an answer over all runs' windows.
    pub transport_errors: u64,
    /// Requests never sent over all runs.
    pub missed: u64,
}

impl FailSummary {
    /// Summarizes the runs of `variant` in `runs`.
    pub fn of(variant: Variant, runs: &[FailRun]) -> Self {
        let rs: Vec<&StatusRateResult> = runs
            .iter()
            .filter(|r| r.variant() == variant)
            .map(|r| &r.result)
            .collect();
        let med =
            |f: &dyn Fn(&StatusRateResult) -> Option<f64>| median_opt(rs.iter().map(|r| f(r)));
        let mut statuses = BTreeMap::new();
        for r in &rs {
            for (&status, &n) in &r.statuses {
                *statuses.entry(status).or_insert(0) += n;
            }
        }
        FailSummary {
            balancer: variant.balancer,
            policies: variant.policies,
            runs: rs.len(),
            success_rate: med(&|r| r.success_rate),
            success_rate_min: rs
                .iter()
                .filter_map(|r| r.success_rate)
                .min_by(f64::total_cmp),
            ok_rps: med(&|r| Some(r.ok_rps)),
            p50_us: med(&|r| r.latency.map(|p| p.p50_us)),
            p99_us: med(&|r| r.latency.map(|p| p.p99_us)),
            p999_us: med(&|r| r.latency.map(|p| p.p999_us)),
            p99_2xx_us: med(&|r| r.latency_2xx.map(|p| p.p99_us)),
            statuses,
            transport_errors: rs.iter().map(|r| r.transport_errors).sum(),
            missed: rs.iter().map(|r| r.missed).sum(),
        }
    }

    /// Non-2xx answers over all runs' windows.
    pub fn non_2xx(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(s, _)| !(200..300).contains(*s))
            .map(|(_, n)| n)
            .sum()
    }
}

/// The healthy path's throughput without vs. with policies.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HealthySummary {
    /// Runs per variant.
    pub runs: usize,
    /// Saturation throughput without policies, req/s, median.
    pub without_rps: Option<f64>,
    /// Saturation throughput with policies, req/s, median.
    pub with_rps: Option<f64>,
    /// `with_rps / without_rps`.
    pub ratio: Option<f64>,
    /// Median of the per-run ratios (with / without of the same run).
    pub paired_ratio_median: Option<f64>,
    /// `(1 - ratio) * 100`: the throughput the policies cost, percent.
    pub cost_pct: Option<f64>,
    /// Pair CPU seconds per 100k requests without policies, median.
    pub without_pair_cpu_s_per_100k: Option<f64>,
    /// Pair CPU seconds per 100k requests with policies, median.
    pub with_pair_cpu_s_per_100k: Option<f64>,
    /// Errors over all runs (both variants).
    pub errors: u64,
}

impl HealthySummary {
    /// Summarizes the healthy-path runs.
    pub fn of(runs: &[HealthyRun]) -> Self {
        let of = |p: Policies| runs.iter().filter(move |r| r.policies == p);
        let rps = |p: Policies| median(&of(p).map(|r| r.saturation.rps).collect::<Vec<_>>());
        let cpu = |p: Policies| median_opt(of(p).map(|r| r.pair_cpu_s_per_100k));
        let (without_rps, with_rps) = (rps(Policies::Without), rps(Policies::With));
        let r = ratio(with_rps, without_rps);
        let paired: Vec<f64> = of(Policies::With)
            .filter_map(|w| {
                let wo = of(Policies::Without).find(|x| x.run == w.run)?;
                ratio(Some(w.saturation.rps), Some(wo.saturation.rps))
            })
            .collect();
        HealthySummary {
            runs: of(Policies::Without)
                .count()
                .min(of(Policies::With).count()),
            without_rps,
            with_rps,
            ratio: r,
            paired_ratio_median: median(&paired),
            cost_pct: r.map(|r| (1.0 - r) * 100.0),
            without_pair_cpu_s_per_100k: cpu(Policies::Without),
            with_pair_cpu_s_per_100k: cpu(Policies::With),
            errors: runs.iter().map(|r| r.saturation.errors).sum(),
        }
    }
}

/// The resilience scenarios' results.
#[derive(Debug, Clone, Serialize)]
pub struct ResilienceReport {
    /// Settings.
    pub config: ResilienceConfig,
    /// Failing endpoint, one summary per variant run, in the order of
    /// [`Variant::ALL`].
    pub failing: Vec<FailSummary>,
    /// Healthy path cost.
    pub healthy: HealthySummary,
    /// Every failing-endpoint run, in the order they ran.
    pub fail_runs: Vec<FailRun>,
    /// Every healthy-path run, in the order they ran.
    pub healthy_runs: Vec<HealthyRun>,
    /// The policy metrics (retries, ejections, rejections; from `/metrics`)
    /// of each outbound sidecar after the last run, by `healthy-<without|with>`
    /// and `failing-<balancer>-<without|with>`.
    pub sidecar_metrics: BTreeMap<String, Vec<String>>,
}

impl ResilienceReport {
    /// Builds the summaries from the runs.
    pub fn new(
        config: ResilienceConfig,
        fail_runs: Vec<FailRun>,
        healthy_runs: Vec<HealthyRun>,
    ) -> Self {
        let failing = Variant::ALL
            .into_iter()
            .filter(|&v| fail_runs.iter().any(|r| r.variant() == v))
            .map(|v| FailSummary::of(v, &fail_runs))
            .collect();
        ResilienceReport {
            failing,
            healthy: HealthySummary::of(&healthy_runs),
            config,
            fail_runs,
            healthy_runs,
            sidecar_metrics: BTreeMap::new(),
        }
    }

    /// The variant's failing-endpoint summary, if it ran.
    pub fn fail(&self, v: Variant) -> Option<&FailSummary> {
        self.failing
            .iter()
            .find(|f| f.balancer == v.balancer && f.policies == v.policies)
    }

    /// The targets: the policies' healthy-path cost, and the success rate
    /// with policies when one endpoint fails, per balancer.
    pub fn targets(&self) -> Vec<TargetCheck> {
        let mut t = vec![check(
            "healthy path: pair throughput with policies, % of without",
            &format!(">= {}", 100.0 - MAX_HEALTHY_COST_PCT),
            self.healthy.ratio.map(|r| r * 100.0),
            |v| v >= 100.0 - MAX_HEALTHY_COST_PCT,
        )];
        for f in self.failing.iter().filter(|f| f.policies == Policies::With) {
            t.push(check(
                &format!(
                    "one of three endpoints fails, {}: success rate with policies, %",
                    f.balancer.label()
                ),
                &format!(">= {MIN_SUCCESS_WITH_POLICIES_PCT:.1}"),
                f.success_rate.map(|r| r * 100.0),
                |v| v >= MIN_SUCCESS_WITH_POLICIES_PCT,
            ));
        }
        t
    }

    /// Runs with errors (healthy path) or unanswered requests (failing endpoint).
    pub fn flags(&self) -> Vec<String> {
        self.healthy_runs
            .iter()
            .filter_map(HealthyRun::flag)
            .chain(self.fail_runs.iter().filter_map(FailRun::flag))
            .collect()
    }

    /// Runs during which other work used the CPUs noticeably.
    pub fn disturbed(&self) -> Vec<String> {
        let healthy = self
            .healthy_runs
            .iter()
            .filter(|r| r.other_work_pct > DISTURBED_PCT)
            .map(|r| format!("run {} healthy path {}", r.run, r.policies.label()));
        let fail = self
            .fail_runs
            .iter()
            .filter(|r| r.other_work_pct > DISTURBED_PCT)
            .map(|r| format!("run {} failing endpoint {}", r.run, r.variant().label()));
        healthy.chain(fail).collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use crate::resilience::config::services_yaml;
    use crate::stats::Percentiles;

    const P2C: Balancer = Balancer::P2cEwma;
    const RR: Balancer = Balancer::RoundRobin;

    fn pct(p50: f64, p99: f64) -> Percentiles {
        Percentiles {
            count: 1,
            p50_us: p50,
            p90_us: p50,
            p99_us: p99,
            p999_us: p99 * 2.0,
            max_us: p99 * 3.0,
        }
    }

    fn fail_run(run: usize, v: Variant, ok: u64, failed: u64, p99: f64) -> FailRun {
        let scheduled = ok + failed;
        let mut statuses = BTreeMap::new();
        statuses.insert(200, ok);
        if failed > 0 {
            statuses.insert(500, failed);
        }
        FailRun::new(
            run,
            v,
            StatusRateResult {
                rate: 2000.0,
                scheduled,
                ok_2xx: ok,
                answered: scheduled,
                statuses,
                transport_errors: 0,
                missed: 0,
                success_rate: crate::stats::success_rate(ok, scheduled),
                ok_rps: ok as f64 / 3.0,
                latency: Some(pct(100.0, p99)),
                latency_2xx: Some(pct(100.0, p99 - 10.0)),
                transport_errors_total: 0,
                error_samples: vec![],
                non_2xx_total: failed,
                non_2xx_samples: vec![],
                cpu_seconds: vec![0.1; 7],
                loadgen_cpu_seconds: 1.0,
                seconds: 3.0,
                cpu_busy_pct: vec![Some(50.0), Some(20.0)],
                others_cpu_seconds: if run == 2 { 0.9 } else { 0.0 },
            },
        )
    }

    fn healthy_run(run: usize, p: Policies, rps: f64, errors: u64) -> HealthyRun {
        HealthyRun::new(
            run,
            p,
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
                cpu_seconds: vec![1.0, 2.0, 2.0],
                loadgen_cpu_seconds: 3.0,
                peak_rss_kib: vec![1, 2, 3],
                cpu_busy_pct: vec![Some(60.0), Some(99.0)],
                others_cpu_seconds: 0.0,
                wakeups: None,
            },
        )
    }

    fn config() -> ResilienceConfig {
        ResilienceConfig {
            endpoints: 3,
            failing_endpoints: 1,
            fail_status: 500,
            load: "open loop (fixed rate)".into(),
            balancers: Balancer::ALL.to_vec(),
            rate: 2000.0,
            connections: 16,
            warmup_s: 1.0,
            duration_s: 3.0,
            healthy_connections: 32,
            healthy_duration_s: 5.0,
            services_yaml: Variant::ALL
                .into_iter()
                .map(|v| {
                    (
                        v.key(),
                        services_yaml(&[1, 2, 3], v.policies, v.balancer).unwrap(),
                    )
                })
                .collect(),
        }
    }

    pub(crate) fn report() -> ResilienceReport {
        let rr = |p| Variant::new(RR, p);
        let p2c = |p| Variant::new(P2C, p);
        let (wo, w) = (Policies::Without, Policies::With);
        let fail_runs = vec![
            fail_run(1, p2c(wo), 5998, 2, 300.0),
            fail_run(1, p2c(w), 6000, 0, 310.0),
            fail_run(1, rr(wo), 4000, 2000, 300.0),
            fail_run(1, rr(w), 6000, 0, 400.0),
            fail_run(2, p2c(w), 6000, 0, 300.0),
            fail_run(2, p2c(wo), 6000, 0, 300.0),
            fail_run(2, rr(w), 5994, 6, 30_000.0),
            fail_run(2, rr(wo), 3900, 2100, 320.0),
            fail_run(3, p2c(wo), 6000, 0, 300.0),
            fail_run(3, p2c(w), 6000, 0, 300.0),
            fail_run(3, rr(wo), 4100, 1900, 310.0),
            fail_run(3, rr(w), 6000, 0, 380.0),
        ];
        let healthy_runs = vec![
            healthy_run(1, wo, 20_000.0, 0),
            healthy_run(1, w, 19_600.0, 0),
            healthy_run(2, w, 19_000.0, 0),
            healthy_run(2, wo, 21_000.0, 1),
            healthy_run(3, wo, 20_500.0, 0),
            healthy_run(3, w, 20_090.0, 0),
        ];
        ResilienceReport::new(config(), fail_runs, healthy_runs)
    }

    #[test]
    fn failing_endpoint_medians() {
        let rep = report();
        assert_eq!(rep.failing.len(), 4);
        let order: Vec<Variant> = rep
            .failing
            .iter()
            .map(|f| Variant::new(f.balancer, f.policies))
            .collect();
        assert_eq!(order, Variant::ALL);
        let w = rep.fail(Variant::new(RR, Policies::Without)).unwrap();
        assert_eq!(w.runs, 3);
        // Success rates 2/3, 0.65, 0.6833: median 2/3.
        assert!((w.success_rate.unwrap() - 4000.0 / 6000.0).abs() < 1e-12);
        assert!((w.success_rate_min.unwrap() - 0.65).abs() < 1e-12);
        assert_eq!(w.p99_us, Some(310.0));
        assert_eq!(w.p99_2xx_us, Some(300.0));
        assert_eq!(w.statuses[&500], 6000);
        assert_eq!(w.non_2xx(), 6000);
        assert!((w.ok_rps.unwrap() - 4000.0 / 3.0).abs() < 1e-9);
        let p = rep.fail(Variant::new(RR, Policies::With)).unwrap();
        assert_eq!(p.success_rate, Some(1.0));
        assert!((p.success_rate_min.unwrap() - 0.999).abs() < 1e-12);
        // The one slow run does not move the median.
        assert_eq!(p.p99_us, Some(400.0));
        assert_eq!(p.non_2xx(), 6);
        let d = rep.fail(Variant::new(P2C, Policies::Without)).unwrap();
        assert_eq!(d.non_2xx(), 2);
        assert_eq!(d.success_rate, Some(1.0));
    }

    #[test]
    fn healthy_ratio_and_targets() {
        let rep = report();
        let h = &rep.healthy;
        assert_eq!(h.runs, 3);
        assert_eq!(h.without_rps, Some(20_500.0));
        assert_eq!(h.with_rps, Some(19_600.0));
        let r = 19_600.0 / 20_500.0;
        assert!((h.ratio.unwrap() - r).abs() < 1e-12);
        assert!((h.cost_pct.unwrap() - (1.0 - r) * 100.0).abs() < 1e-9);
        // Per-run ratios 0.98, 0.9048, 0.98: median 0.98.
        assert!((h.paired_ratio_median.unwrap() - 0.98).abs() < 1e-12);
        // 2 s of pair CPU per 100k: (2 + 2) / (rps * 5) * 1e5.
        assert!((h.with_pair_cpu_s_per_100k.unwrap() - 4.0 / (19_600.0 * 5.0) * 1e5).abs() < 1e-9);
        assert_eq!(h.errors, 1);

        let t = rep.targets();
        assert_eq!(t.len(), 3, "{t:?}");
        assert!(t[0].met, "{t:?}"); // cost 4.4 %
        assert!((t[0].measured.unwrap() - r * 100.0).abs() < 1e-9);
        assert!(t[1].what.contains("P2C"), "{t:?}");
        assert!(t[2].what.contains("round robin"), "{t:?}");
        assert!(t[1].met && t[2].met, "{t:?}"); // median success 100 %

        let flags = rep.flags();
        assert_eq!(flags.len(), 1, "{flags:?}");
        assert!(
            flags[0].contains("run 2 healthy path, without policies"),
            "{flags:?}"
        );
        assert!(flags[0].contains("status 503"), "{flags:?}");
        let disturbed = rep.disturbed();
        assert_eq!(disturbed.len(), 4, "{disturbed:?}");
        assert_eq!(
            disturbed[0],
            "run 2 failing endpoint P2C (default), with policies"
        );
    }

    #[test]
    fn cost_over_five_percent_is_not_met() {
        let healthy_runs = vec![
            healthy_run(1, Policies::Without, 20_000.0, 0),
            healthy_run(1, Policies::With, 18_900.0, 0),
        ];
        let fail_runs = vec![
            fail_run(1, Variant::new(RR, Policies::Without), 4000, 2000, 300.0),
            fail_run(1, Variant::new(RR, Policies::With), 5900, 100, 400.0),
        ];
        let rep = ResilienceReport::new(config(), fail_runs, healthy_runs);
        assert_eq!(rep.failing.len(), 2);
        let t = rep.targets();
        assert_eq!(t.len(), 2, "{t:?}");
        assert!(!t[0].met, "{t:?}");
        assert!(!t[1].met, "{t:?}"); // 98.3 % < 99.9 %
        let mut md = String::new();
        rep.write_markdown(&mut md);
        assert!(md.contains("**not met**"), "{md}");
    }
}
