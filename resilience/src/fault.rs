//! Fault injection (as Envoy's and Istio's HTTP fault filter): delay and/or abort a share of
//! requests to test how callers cope. The random draws come from the caller so the decision
//! is a pure function and tests are reproducible.

use std::time::Duration;

/// Faults to inject into a share of requests.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Fault {
    /// Delay `(percent of requests in 0..=100, by how long)`.
    pub delay: Option<(f64, Duration)>,
    /// Abort `(percent of requests in 0..=100, with this HTTP status)` without calling the
    /// upstream.
    pub abort: Option<(f64, u16)>,
}

/// What to do to one request. Both may apply: delay, then abort.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultDecision {
    /// Wait this long before going on.
    pub delay: Option<Duration>,
    /// Answer with this status instead of calling the upstream.
    pub abort: Option<u16>,
}

impl Fault {
    /// Decide for one request from two independent draws in `[0, 1)`: each fault applies when
    /// `r × 100 < percent`.
    pub fn decide(&self, r_delay: f64, r_abort: f64) -> FaultDecision {
        FaultDecision {
            delay: self
                .delay
                .and_then(|(pct, d)| (r_delay * 100.0 < pct).then_some(d)),
            abort: self
                .abort
                .and_then(|(pct, status)| (r_abort * 100.0 < pct).then_some(status)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_fault_by_default() {
        assert_eq!(Fault::default().decide(0.0, 0.0), FaultDecision::default());
    }

    #[test]
    fn threshold_is_strict() {
        let f = Fault {
            delay: Some((50.0, Duration::from_millis(5))),
            abort: Some((100.0, 503)),
        };
        assert_eq!(f.decide(0.49, 0.999).delay, Some(Duration::from_millis(5)));
        assert_eq!(f.decide(0.5, 0.999).delay, None);
        assert_eq!(f.decide(0.5, 0.999).abort, Some(503));
        let never = Fault {
            abort: Some((0.0, 500)),
            ..Fault::default()
        };
        assert_eq!(never.decide(0.0, 0.0).abort, None);
    }

    #[test]
    fn shares_match_percentages() {
        let f = Fault {
            delay: Some((10.0, Duration::from_millis(1))),
            abort: Some((25.5, 503)),
        };
        let mut rng = fastrand::Rng::with_seed(7);
        let n = 100_000;
        let (mut delayed, mut aborted, mut both) = (0, 0, 0);
        for _ in 0..n {
            let d = f.decide(rng.f64(), rng.f64());
            delayed += usize::from(d.delay.is_some());
            aborted += usize::from(d.abort.is_some());
            both += usize::from(d.delay.is_some() && d.abort.is_some());
        }
        let share = |k: usize| k as f64 * 100.0 / n as f64;
        // ±0.5 points is over 5 standard deviations at n = 100 000.
        assert!((share(delayed) - 10.0).abs() < 0.5, "{}", share(delayed));
        assert!((share(aborted) - 25.5).abs() < 0.5, "{}", share(aborted));
        // Independent draws: both apply to 10 % × 25.5 % of requests.
        assert!((share(both) - 2.55).abs() < 0.3, "{}", share(both));
    }
}
