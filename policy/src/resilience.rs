//! Validation of the resilience knobs: retries, budgets, outlier ejection, limits, rate limits
//! and faults. Each turns into the core's own config types (`weft-resilience`), so the sidecar
//! and the tower layers share one meaning.

use std::time::Duration;

use weft_resilience::retry::grpc_code_from_name;

use super::model::*;
use crate::{parse_duration, wire, Validator};

/// Retry conditions a route may name, with what each means.
pub const RETRY_CONDITIONS: &[&str] = &[
    "connect-failure",
    "refused-stream",
    "reset",
    "5xx",
    "gateway-error",
    "timeout",
];

impl Validator<'_> {
    /// A duration field with a default and an allowed range.
    pub(super) fn bounded(
        &mut self,
        field: &str,
        raw: Option<&str>,
        default: Duration,
        range: (Duration, Duration),
    ) -> Duration {
        let Some(s) = raw else { return default };
        match parse_duration(s) {
            Ok(d) if d >= range.0 && d <= range.1 => d,
            Ok(d) => {
                self.err(
                    field,
                    format!(
                        "must be {} to {}, got {}",
                        humantime::format_duration(range.0),
                        humantime::format_duration(range.1),
                        humantime::format_duration(d)
                    ),
                );
                default
            }
            Err(e) => {
                self.err(field, e);
                default
            }
        }
    }

    pub(super) fn retry_budget(&mut self, f: &str, raw: Option<wire::RetryBudget>) -> BudgetConfig {
        let d = BudgetConfig::default();
        let Some(raw) = raw else { return d };
        let ratio = raw.ratio.unwrap_or(d.ratio);
        if !(0.0..=10.0).contains(&ratio) {
            self.err(
                format!("{f}.retry_budget.ratio"),
                format!("must be 0 to 10, got {ratio}"),
            );
        }
        let min_per_second = raw.min_per_second.unwrap_or(d.min_per_second);
        if min_per_second > 100_000 {
            self.err(
                format!("{f}.retry_budget.min_per_second"),
                format!("must be at most 100000, got {min_per_second}"),
            );
        }
        let window = self.bounded(
            &format!("{f}.retry_budget.window"),
            raw.window.as_deref(),
            d.window,
            (Duration::from_secs(1), Duration::from_secs(300)),
        );
        BudgetConfig {
            ratio,
            min_per_second,
            window,
        }
    }

    /// Outlier ejection, and whether any 5xx (not only gateway errors) counts as a failure.
    pub(super) fn outlier(
        &mut self,
        f: &str,
        raw: Option<wire::OutlierDetection>,
    ) -> (OutlierConfig, bool) {
        let d = OutlierConfig::default();
        let Some(raw) = raw else { return (d, false) };
        let f = format!("{f}.outlier_detection");
        let counts_5xx = match raw.failures.as_deref() {
            None | Some("gateway-error") => false,
            Some("5xx") => true,
            Some(other) => {
                self.err(
                    format!("{f}.failures"),
                    format!("unknown failure class {other:?}; expected gateway-error or 5xx"),
                );
                false
            }
        };
        let consecutive_failures = raw.consecutive_failures.unwrap_or(d.consecutive_failures);
        if consecutive_failures > 10_000 {
            self.err(
                format!("{f}.consecutive_failures"),
                format!("must be 0 (off) to 10000, got {consecutive_failures}"),
            );
        }
        let range = (Duration::from_millis(10), Duration::from_secs(24 * 3600));
        let base_ejection = self.bounded(
            &format!("{f}.base_ejection_time"),
            raw.base_ejection_time.as_deref(),
            d.base_ejection,
            range,
        );
        let max_ejection = self.bounded(
            &format!("{f}.max_ejection_time"),
            raw.max_ejection_time.as_deref(),
            d.max_ejection.max(base_ejection),
            range,
        );
        if max_ejection < base_ejection {
            self.err(
                format!("{f}.max_ejection_time"),
                "must not be below base_ejection_time",
            );
        }
        let max_ejected_percent = raw.max_ejected_percent.unwrap_or(d.max_ejected_percent);
        if max_ejected_percent > 100 {
            self.err(
                format!("{f}.max_ejected_percent"),
                format!("must be 0 to 100, got {max_ejected_percent}"),
            );
        }
        let cfg = OutlierConfig {
            consecutive_failures,
            base_ejection,
            max_ejection,
            max_ejected_percent,
        };
        (cfg, counts_5xx)
    }

    pub(super) fn limits(&mut self, f: &str, raw: Option<wire::Limits>) -> Limits {
        let d = Limits::default();
        let Some(raw) = raw else { return d };
        let mut count = |name: &str, v: Option<usize>, default: usize, min: usize| {
            let v = v.unwrap_or(default);
            if v < min || v > 1_000_000 {
                self.err(
                    format!("{f}.limits.{name}"),
                    format!("must be {min} to 1000000, got {v}"),
                );
            }
            v
        };
        let max_in_flight = count("max_in_flight", raw.max_in_flight, d.max_in_flight, 1);
        let max_pending = count("max_pending", raw.max_pending, d.max_pending, 0);
        let max_connections = count("max_connections", raw.max_connections, d.max_connections, 1);
        let queue_timeout = self.bounded(
            &format!("{f}.limits.queue_timeout"),
            raw.queue_timeout.as_deref(),
            d.queue_timeout,
            (Duration::from_millis(1), Duration::from_secs(60)),
        );
        Limits {
            max_in_flight,
            max_pending,
            queue_timeout,
            max_connections,
        }
    }

    pub(super) fn rate_limit(
        &mut self,
        f: &str,
        raw: Option<wire::RateLimit>,
        inbound: bool,
    ) -> Option<RateLimit> {
        let raw = raw?;
        let f = format!("{f}.rate_limit");
        let rps = raw.requests_per_second;
        if !(rps.is_finite() && rps > 0.0 && rps <= 1e9) {
            self.err(
                format!("{f}.requests_per_second"),
                format!("must be above 0 and at most 1e9, got {rps}"),
            );
            return None;
        }
        let burst = raw
            .burst
            .unwrap_or_else(|| rps.ceil().clamp(1.0, 1e9) as u32);
        if !(1..=1_000_000_000).contains(&burst) {
            self.err(
                format!("{f}.burst"),
                format!("must be 1 to 1000000000, got {burst}"),
            );
        }
        let per_caller = raw.per_caller.unwrap_or(false);
        if per_caller && !inbound {
            self.err(
                format!("{f}.per_caller"),
                "per-caller buckets apply to inbound limits (service.rate_limit); \
                 every outbound request comes from this service's own app",
            );
        }
        Some(RateLimit {
            per_second: rps,
            burst: burst.max(1),
            per_caller,
        })
    }

    pub(super) fn fault(&mut self, f: &str, raw: Option<wire::Fault>) -> Option<Fault> {
        let raw = raw?;
        let f = format!("{f}.fault");
        let mut percent = |field: String, p: f64| {
            if !(0.0..=100.0).contains(&p) {
                self.err(field, format!("must be 0 to 100, got {p}"));
            }
            p
        };
        let delay = raw
            .delay
            .map(|d| (percent(format!("{f}.delay.percent"), d.percent), d.duration));
        let abort = raw
            .abort
            .map(|a| (percent(format!("{f}.abort.percent"), a.percent), a.status));
        let delay = delay.map(|(p, d)| {
            let d = self.bounded(
                &format!("{f}.delay.duration"),
                Some(&d),
                Duration::ZERO,
                (Duration::from_millis(1), Duration::from_secs(3600)),
            );
            (p, d)
        });
        if let Some((_, status)) = abort {
            if !(200..=599).contains(&status) {
                self.err(
                    format!("{f}.abort.status"),
                    format!("must be 200 to 599, got {status}"),
                );
            }
        }
        Some(Fault { delay, abort })
    }

    /// A route's retry policy; `timeout` is the route's whole-request timeout, which a
    /// per-try timeout must fit inside.
    pub(super) fn retry(
        &mut self,
        f: &str,
        raw: Option<wire::Retry>,
        timeout: Option<Duration>,
    ) -> RetryPolicy {
        let Some(raw) = raw else {
            return RetryPolicy::default_policy();
        };
        let f = format!("{f}.retry");
        let on = self.retry_on(&f, &raw);
        let max_attempts = raw.attempts.unwrap_or(DEFAULT_RETRY_ATTEMPTS);
        if !(1..=10).contains(&max_attempts) {
            self.err(
                format!("{f}.attempts"),
                format!("must be 1 to 10, got {max_attempts}"),
            );
        }
        let per_try_timeout = self.per_try_timeout(&f, raw.per_try_timeout.as_deref(), timeout);
        let backoff = self.backoff(&f, raw.backoff);
        RetryPolicy {
            on,
            max_attempts,
            per_try_timeout,
            backoff,
            non_idempotent: raw.non_idempotent.unwrap_or(false),
        }
    }

    /// What a retry is for: named conditions (the default three when none are given), HTTP
    /// statuses and gRPC codes.
    fn retry_on(&mut self, f: &str, raw: &wire::Retry) -> RetryOn {
        let mut on = RetryOn::default();
        let names = raw.on.clone().unwrap_or_else(|| {
            ["connect-failure", "refused-stream", "gateway-error"]
                .map(str::to_owned)
                .to_vec()
        });
        for (i, name) in names.iter().enumerate() {
            match name.as_str() {
                "connect-failure" => on.connect_failure = true,
                "refused-stream" => on.refused_stream = true,
                "reset" => on.reset = true,
                "5xx" => on.server_error = true,
                "gateway-error" => on.gateway_error = true,
                "timeout" => on.timeout = true,
                other => self.err(
                    format!("{f}.on[{i}]"),
                    format!(
                        "unknown condition {other:?}; expected one of {}",
                        RETRY_CONDITIONS.join(", ")
                    ),
                ),
            }
        }
        for (i, s) in raw.statuses.iter().enumerate() {
            if !(100..=599).contains(s) {
                self.err(
                    format!("{f}.statuses[{i}]"),
                    format!("not an HTTP status: {s}"),
                );
            }
        }
        on.statuses = raw.statuses.clone();
        for (i, c) in raw.grpc_codes.iter().enumerate() {
            let code = match c {
                wire::NameOrNumber::Number(n) if (1..=16).contains(n) => Some(*n),
                wire::NameOrNumber::Number(_) => None,
                wire::NameOrNumber::Name(n) => grpc_code_from_name(n),
            };
            match code {
                Some(c) => on.grpc_codes.push(c),
                None => self.err(
                    format!("{f}.grpc_codes[{i}]"),
                    format!("not a retryable gRPC status code: {c:?} (use 1 to 16 or a name such as unavailable)"),
                ),
            }
        }
        on
    }

    /// A per-try timeout, which must be below the route's whole-request `timeout`.
    fn per_try_timeout(
        &mut self,
        f: &str,
        raw: Option<&str>,
        timeout: Option<Duration>,
    ) -> Option<Duration> {
        let per_try_timeout = raw.map(|s| {
            self.bounded(
                &format!("{f}.per_try_timeout"),
                Some(s),
                Duration::from_secs(1),
                (Duration::from_millis(1), Duration::from_secs(3600)),
            )
        });
        if let (Some(p), Some(t)) = (per_try_timeout, timeout) {
            if p >= t {
                self.err(
                    format!("{f}.per_try_timeout"),
                    format!(
                        "impossible: {} is not below the route timeout {}, so no retry could ever start",
                        humantime::format_duration(p),
                        humantime::format_duration(t)
                    ),
                );
            }
        }
        per_try_timeout
    }

    /// Retry backoff: base and max within 1 ms..60 s, max not below base.
    fn backoff(&mut self, f: &str, raw: Option<wire::Backoff>) -> Backoff {
        let d = Backoff::default();
        match raw {
            None => d,
            Some(b) => {
                let range = (Duration::from_millis(1), Duration::from_secs(60));
                let base = self.bounded(
                    &format!("{f}.backoff.base"),
                    b.base.as_deref(),
                    d.base,
                    range,
                );
                let max = self.bounded(
                    &format!("{f}.backoff.max"),
                    b.max.as_deref(),
                    d.max.max(base),
                    range,
                );
                if max < base {
                    self.err(format!("{f}.backoff.max"), "must not be below backoff.base");
                }
                Backoff { base, max }
            }
        }
    }
}
