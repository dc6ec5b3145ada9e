//! The resilience scenarios: their sidecar configs (without and with the
//! resilience policies), their per-run records, medians and report section.
//!
//! * **One of three endpoints fails**: three instances of the service `app`,
//!   each behind its own inbound sidecar, one of them answering every request
//!   with 500; the client drives an outbound sidecar that lists the three
//!   endpoints, open loop at a fixed rate. Measured: the client-visible
//!   success rate (2xx share), successful requests per second and latency.
//!   Both variants run with the default balancer (P2C on peak-EWMA latency)
//!   and again with round robin: P2C charges every 5xx as a one-second
//!   answer and so, policies or not, all but stops sending to the failing
//!   endpoint; round robin keeps sending it a third of the requests, which
//!   is what shows what the policies themselves do.
//! * **Healthy path cost**: the benchmark's sidecar pair (one healthy
//!   endpoint), outbound config without vs. with the policies, saturation
//!   throughput. The policies must cost less than [`MAX_HEALTHY_COST_PCT`].
//!
//! They run after the pair's direct / weft runs. Each variant has its own
//! outbound sidecar (same binary, configs that differ only in the policy
//! fields and the balancer), started once and kept for all runs, so
//! the with-policies sidecar's outlier state carries over from run to run as
//! it would in production.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::load::{SaturationResult, StatusRateResult};
use crate::mesh::APP_ID;
use crate::report::{fmt_num, fmt_opt};
use crate::results::{check, TargetCheck, DISTURBED_PCT};
use crate::stats::{median, median_opt, ratio};

/// The largest healthy-path throughput cost of the policies the issue allows, percent.
pub const MAX_HEALTHY_COST_PCT: f64 = 5.0;

/// The with-policies success rate this benchmark expects (percent) when one
/// of three endpoints fails.
pub const MIN_SUCCESS_WITH_POLICIES_PCT: f64 = 99.9;

/// Endpoints of the service in the failing-endpoint scenario.
pub const ENDPOINTS: usize = 3;

/// The status the failing endpoint answers every request with.
pub const FAIL_STATUS: u16 = 500;

/// The outbound sidecar's load balancer in the failing-endpoint scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balancer {
    /// The default: power of two choices on peak-EWMA latency (no
    /// `load_balancer` line in the config).
    P2cEwma,
    /// `load_balancer: round_robin`.
    RoundRobin,
}

impl Balancer {
    /// Both, default first.
    pub const ALL: [Balancer; 2] = [Balancer::P2cEwma, Balancer::RoundRobin];

    /// The config value: `p2c_ewma` / `round_robin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Balancer::P2cEwma => "p2c_ewma",
            Balancer::RoundRobin => "round_robin",
        }
    }

    /// Name in tables.
    pub fn label(self) -> &'static str {
        match self {
            Balancer::P2cEwma => "P2C (default)",
            Balancer::RoundRobin => "round robin",
        }
    }
}

/// One variant of the failing-endpoint scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Variant {
    /// The outbound sidecar's balancer.
    pub balancer: Balancer,
    /// Without or with the policies.
    pub policies: Policies,
}

impl Variant {
    /// Every variant, in the order of [`Variant::index`].
    pub const ALL: [Variant; 4] = [
        Variant::new(Balancer::P2cEwma, Policies::Without),
        Variant::new(Balancer::P2cEwma, Policies::With),
        Variant::new(Balancer::RoundRobin, Policies::Without),
        Variant::new(Balancer::RoundRobin, Policies::With),
    ];

    /// The variant.
    pub const fn new(balancer: Balancer, policies: Policies) -> Self {
        Variant { balancer, policies }
    }

    /// Position in [`Variant::ALL`].
    pub fn index(self) -> usize {
        let b = match self.balancer {
            Balancer::P2cEwma => 0,
            Balancer::RoundRobin => 2,
        };
        b + self.policies.index()
    }

    /// `<balancer>-<without|with>`, e.g. `round_robin-with`.
    pub fn key(self) -> String {
        format!("{}-{}", self.balancer.as_str(), self.policies.as_str())
    }

    /// Name in messages, e.g. `round robin, with policies`.
    pub fn label(self) -> String {
        format!("{}, {}", self.balancer.label(), self.policies.label())
    }

    /// The order the variants run in during run `run` (from 1): balancer by
    /// balancer, each pair in [`Policies::order`].
    pub fn order(run: usize) -> [Variant; 4] {
        let [a, b] = Policies::order(run);
        [
            Variant::new(Balancer::P2cEwma, a),
            Variant::new(Balancer::P2cEwma, b),
            Variant::new(Balancer::RoundRobin, a),
            Variant::new(Balancer::RoundRobin, b),
        ]
    }
}

/// Whether the outbound sidecar's config carries the resilience policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Policies {
    /// Outlier detection off (`consecutive_failures: 0`), no retry, no rate
    /// limit; everything else default.
    Without,
    /// Outlier detection, retry budget, limits, retries and a rate limit
    /// (never reached): see [`services_yaml`].
    With,
}

impl Policies {
    /// Both variants.
    pub const BOTH: [Policies; 2] = [Policies::Without, Policies::With];

    /// Short name: `without` / `with`.
    pub fn as_str(self) -> &'static str {
        match self {
            Policies::Without => "without",
            Policies::With => "with",
        }
    }

    /// Name in tables: `without policies` / `with policies`.
    pub fn label(self) -> &'static str {
        match self {
            Policies::Without => "without policies",
            Policies::With => "with policies",
        }
    }

    /// Index into per-variant arrays (`Without` 0, `With` 1).
    pub fn index(self) -> usize {
        match self {
            Policies::Without => 0,
            Policies::With => 1,
        }
    }

    /// The order the two variants run in during run `run` (from 1):
    /// alternating (without, with), (with, without), ... so that neither
    /// always goes first.
    pub fn order(run: usize) -> [Policies; 2] {
        if run % 2 == 1 {
            [Policies::Without, Policies::With]
        } else {
            [Policies::With, Policies::Without]
        }
    }
}

/// The `services:` and `routes:` part of an outbound sidecar's config: the
/// service `app` (identity [`APP_ID`]) at the sidecars listening on
/// `127.0.0.1:<port>` for each of `endpoint_ports`, with one catch-all route
/// `all`, without or with the resilience policies, with `balancer` (the
/// default one is left implicit).
pub fn services_yaml(endpoint_ports: &[u16], policies: Policies, balancer: Balancer) -> String {
    let endpoints: Vec<String> = endpoint_ports
        .iter()
        .map(|p| format!("{{address: \"127.0.0.1:{p}\"}}"))
        .collect();
    let mut s = format!(
        "services:\n\
         \x20 - name: app\n\
         \x20   identity: \"{APP_ID}\"\n\
         \x20   endpoints: [{}]\n",
        endpoints.join(", ")
    );
    if balancer != Balancer::P2cEwma {
        let _ = writeln!(s, "    load_balancer: {}", balancer.as_str());
    }
    match policies {
        Policies::Without => {
            s.push_str(
                "    outlier_detection: {consecutive_failures: 0}\n\
                 routes:\n\
                 \x20 - name: all\n\
                 \x20   service: app\n",
            );
        }
        Policies::With => {
            s.push_str(
                "    outlier_detection: {consecutive_failures: 5, base_ejection_time: 10s, max_ejection_time: 300s, max_ejected_percent: 50, failures: 5xx}\n\
                 \x20   retry_budget: {ratio: 0.2, min_per_second: 10, window: 10s}\n\
                 \x20   limits: {max_in_flight: 1024, max_pending: 1024, queue_timeout: 1s}\n\
                 routes:\n\
                 \x20 - name: all\n\
                 \x20   service: app\n\
                 \x20   retry:\n\
                 \x20     on: [5xx, connect-failure, refused-stream, reset]\n\
                 \x20     attempts: 3\n\
                 \x20     backoff: {base: 25ms, max: 250ms}\n\
                 \x20   rate_limit: {requests_per_second: 1000000000, burst: 1000000}\n",
            );
        }
    }
    s
}

/// Whether `weft-proxy --check` output says the config has fields it does
/// not know (a proxy built before the resilience policies).
pub fn is_unknown_field_error(check_output: &str) -> bool {
    check_output.contains("unknown field")
}

/// The resilience scenarios' settings, recorded with the results.
#[derive(Debug, Clone, Serialize)]
pub struct ResilienceConfig {
    /// Endpoints of the service in the failing-endpoint scenario.
    pub endpoints: usize,
    /// Of those, answering every request with `fail_status`.
    pub failing_endpoints: usize,
    /// The failing endpoint's status.
    pub fail_status: u16,
    /// How the failing-endpoint scenario loads the sidecar.
    pub load: String,
    /// The balancers it runs both variants with.
    pub balancers: Vec<Balancer>,
    /// Its request rate, requests per second.
    pub rate: f64,
    /// Its keep-alive connections.
    pub connections: usize,
    /// Its warm-up, seconds.
    pub warmup_s: f64,
    /// Its measured window, seconds.
    pub duration_s: f64,
    /// Connections of the healthy-path saturation runs.
    pub healthy_connections: usize,
    /// Measured window of the healthy-path saturation runs, seconds.
    pub healthy_duration_s: f64,
    /// The failing-endpoint outbound sidecars' `services:` / `routes:` (as
    /// run), by [`Variant::key`]. (The healthy-path ones are the P2C ones
    /// with the pair's one endpoint.)
    pub services_yaml: BTreeMap<String, String>,
}

fn pct_of_one_cpu(cpu_s: f64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        cpu_s / seconds * 100.0
    } else {
        0.0
    }
}

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
            &format!(">= {}", fmt_num(100.0 - MAX_HEALTHY_COST_PCT, 0)),
            self.healthy.ratio.map(|r| r * 100.0),
            |v| v >= 100.0 - MAX_HEALTHY_COST_PCT,
        )];
        for f in self.failing.iter().filter(|f| f.policies == Policies::With) {
            t.push(check(
                &format!(
                    "one of three endpoints fails, {}: success rate with policies, %",
                    f.balancer.label()
                ),
                &format!(">= {}", fmt_num(MIN_SUCCESS_WITH_POLICIES_PCT, 1)),
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

    /// Appends the report section (markdown) to `s`.
    pub fn write_markdown(&self, s: &mut String) {
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
            h.ratio
                .map_or_else(|| "–".to_owned(), |r| format!("{}×", fmt_num(r, 3))),
            fmt_opt(h.cost_pct, 1),
            fmt_num(MAX_HEALTHY_COST_PCT, 0),
            match h.cost_pct {
                Some(c) if c < MAX_HEALTHY_COST_PCT => "met",
                Some(_) => "**not met**",
                None => "not measured",
            },
            h.paired_ratio_median
                .map_or_else(|| "–".to_owned(), |r| format!("{}×", fmt_num(r, 3))),
            fmt_opt(h.without_pair_cpu_s_per_100k, 3),
            fmt_opt(h.with_pair_cpu_s_per_100k, 3),
        );

        let other = |o: f64| {
            if o > DISTURBED_PCT {
                format!("**{}**", fmt_num(o, 0))
            } else {
                fmt_num(o, 0)
            }
        };
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
                other(r.other_work_pct),
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
                other(r.other_work_pct),
                x.transport_errors_total + x.missed,
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::stats::Percentiles;

    const P2C: Balancer = Balancer::P2cEwma;
    const RR: Balancer = Balancer::RoundRobin;

    #[test]
    fn without_policies_disables_outlier_detection_only() {
        let y = services_yaml(&[1001], Policies::Without, P2C);
        assert_eq!(
            y,
            "services:\n\
             \x20 - name: app\n\
             \x20   identity: \"spiffe://weft.local/ns/default/sa/app\"\n\
             \x20   endpoints: [{address: \"127.0.0.1:1001\"}]\n\
             \x20   outlier_detection: {consecutive_failures: 0}\n\
             routes:\n\
             \x20 - name: all\n\
             \x20   service: app\n"
        );
        for absent in [
            "retry",
            "rate_limit",
            "limits",
            "retry_budget",
            "load_balancer",
        ] {
            assert!(!y.contains(absent), "{absent} in\n{y}");
        }
    }

    #[test]
    fn with_policies_is_the_agreed_block() {
        let y = services_yaml(&[1001, 1002, 1003], Policies::With, P2C);
        assert_eq!(
            y,
            r#"services:
  - name: app
    identity: "spiffe://weft.local/ns/default/sa/app"
    endpoints: [{address: "127.0.0.1:1001"}, {address: "127.0.0.1:1002"}, {address: "127.0.0.1:1003"}]
    outlier_detection: {consecutive_failures: 5, base_ejection_time: 10s, max_ejection_time: 300s, max_ejected_percent: 50, failures: 5xx}
    retry_budget: {ratio: 0.2, min_per_second: 10, window: 10s}
    limits: {max_in_flight: 1024, max_pending: 1024, queue_timeout: 1s}
routes:
  - name: all
    service: app
    retry:
      on: [5xx, connect-failure, refused-stream, reset]
      attempts: 3
      backoff: {base: 25ms, max: 250ms}
    rate_limit: {requests_per_second: 1000000000, burst: 1000000}
"#
        );
        // Both variants differ only in the policy lines.
        let without = services_yaml(&[1001, 1002, 1003], Policies::Without, P2C);
        let common = |y: &str| -> Vec<String> {
            y.lines()
                .filter(|l| {
                    ![
                        "outlier_detection",
                        "retry",
                        "limits",
                        "on:",
                        "attempts",
                        "backoff",
                        "rate_limit",
                    ]
                    .iter()
                    .any(|k| l.trim_start().starts_with(k))
                })
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(common(&y), common(&without));
    }

    #[test]
    fn round_robin_adds_one_line() {
        for p in Policies::BOTH {
            let p2c = services_yaml(&[1, 2, 3], p, P2C);
            let rr = services_yaml(&[1, 2, 3], p, RR);
            let mut lines: Vec<&str> = rr.lines().collect();
            assert_eq!(lines.remove(4), "    load_balancer: round_robin", "{rr}");
            assert_eq!(lines, p2c.lines().collect::<Vec<_>>());
        }
    }

    #[test]
    fn variant_order_alternates() {
        assert_eq!(Policies::order(1), [Policies::Without, Policies::With]);
        assert_eq!(Policies::order(2), [Policies::With, Policies::Without]);
        assert_eq!(Policies::order(3), [Policies::Without, Policies::With]);
        assert_eq!(Policies::With.index(), 1);
        assert_eq!(
            serde_json::to_value(Policies::Without).unwrap(),
            serde_json::json!("without")
        );
        assert_eq!(
            serde_json::to_value(Variant::new(RR, Policies::With)).unwrap(),
            serde_json::json!({"balancer": "round_robin", "policies": "with"})
        );
        for (i, v) in Variant::ALL.into_iter().enumerate() {
            assert_eq!(v.index(), i);
        }
        assert_eq!(
            Variant::order(2),
            [
                Variant::new(P2C, Policies::With),
                Variant::new(P2C, Policies::Without),
                Variant::new(RR, Policies::With),
                Variant::new(RR, Policies::Without),
            ]
        );
        assert_eq!(
            Variant::new(RR, Policies::Without).key(),
            "round_robin-without"
        );
        assert_eq!(
            Variant::new(P2C, Policies::With).label(),
            "P2C (default), with policies"
        );
    }

    #[test]
    fn unknown_field_detection() {
        assert!(is_unknown_field_error(
            "a.yaml:7:5: services[0]: unknown field `outlier_detection`, expected one of `name`"
        ));
        assert!(!is_unknown_field_error("a.yaml: tls.cert: no such file"));
    }

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
                .map(|v| (v.key(), services_yaml(&[1, 2, 3], v.policies, v.balancer)))
                .collect(),
        }
    }

    fn report() -> ResilienceReport {
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
