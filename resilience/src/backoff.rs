//! Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And
//! Jitter"): spreading retries uniformly over the whole interval de-synchronises clients that
//! failed together better than jitter around a fixed delay.

use std::time::Duration;

/// Retry backoff: the `n`-th retry (0 first) waits `rand × min(max, base × 2ⁿ)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Interval before the first retry.
    pub base: Duration,
    /// Cap on the interval however many retries have been made.
    pub max: Duration,
}

impl Default for Backoff {
    /// Envoy's defaults: 25 ms base, 250 ms cap.
    fn default() -> Self {
        Self {
            base: Duration::from_millis(25),
            max: Duration::from_millis(250),
        }
    }
}

impl Backoff {
    /// Delay before retry number `retry` (0 = first retry), for `rand` drawn from `[0, 1)`.
    ///
    /// Saturating: any `retry` is fine and a `rand` outside `[0, 1]` is clamped (NaN → 0).
    pub fn delay(&self, retry: u32, rand: f64) -> Duration {
        let cap = exp_capped(self.base, self.max, retry);
        if rand >= 1.0 {
            return cap;
        }
        if rand.is_nan() || rand <= 0.0 {
            return Duration::ZERO;
        }
        // In nanoseconds rather than `Duration::mul_f64`, which panics when float rounding
        // lands just past `Duration::MAX`; `as` saturates instead.
        from_nanos_u128((cap.as_nanos() as f64 * rand) as u128).min(cap)
    }
}

impl Backoff {
    /// Delay before attempt `attempt` (0 = first) with "equal jitter": between half and all of
    /// `min(max, base × 2ⁿ)`, for `rand` drawn from `[0, 1)`. For reconnecting to a server and
    /// renewing a certificate, where a retry at once (full jitter's zero) only adds load to a
    /// server that is recovering, while the spread still de-synchronises clients.
    pub fn equal_jitter(&self, attempt: u32, rand: f64) -> Duration {
        let cap = exp_capped(self.base, self.max, attempt);
        let rand = if rand.is_nan() {
            0.0
        } else {
            rand.clamp(0.0, 1.0)
        };
        from_nanos_u128((cap.as_nanos() as f64 * (0.5 + rand / 2.0)) as u128).min(cap)
    }
}

/// `min(max, base × 2^exp)` without overflow for any `exp`.
pub(crate) fn exp_capped(base: Duration, max: Duration, exp: u32) -> Duration {
    // u128 nanoseconds hold base × 2^exp for any base while exp < 34; beyond, saturate.
    let factor = 1u128.checked_shl(exp).unwrap_or(u128::MAX);
    let grown = base.as_nanos().saturating_mul(factor);
    if grown >= max.as_nanos() {
        return max;
    }
    from_nanos_u128(grown)
}

/// A duration of `n` nanoseconds, saturating at `Duration::MAX`.
pub(crate) fn from_nanos_u128(n: u128) -> Duration {
    match u64::try_from(n / 1_000_000_000) {
        // The remainder is below 10⁹, so it always fits in u32.
        Ok(secs) => Duration::new(secs, u32::try_from(n % 1_000_000_000).unwrap_or(0)),
        Err(_) => Duration::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn envoy_defaults() {
        let b = Backoff::default();
        assert_eq!((b.base, b.max), (25 * MS, 250 * MS));
    }

    #[test]
    fn upper_bound_doubles_then_caps() {
        let b = Backoff::default();
        // rand just below 1 shows the interval's upper end.
        let top = |n| b.delay(n, 1.0);
        assert_eq!(top(0), 25 * MS);
        assert_eq!(top(1), 50 * MS);
        assert_eq!(top(2), 100 * MS);
        assert_eq!(top(3), 200 * MS);
        assert_eq!(top(4), 250 * MS);
        assert_eq!(top(40), 250 * MS);
    }

    #[test]
    fn full_jitter_scales_the_interval() {
        let b = Backoff::default();
        assert_eq!(b.delay(0, 0.0), Duration::ZERO);
        assert_eq!(b.delay(1, 0.5), 25 * MS);
        assert_eq!(b.delay(9, 0.5), 125 * MS);
    }

    #[test]
    fn huge_retry_counts_and_odd_rand_saturate() {
        let b = Backoff {
            base: Duration::from_nanos(1),
            max: Duration::MAX,
        };
        assert_eq!(b.delay(u32::MAX, 1.0), Duration::MAX);
        assert_eq!(b.delay(40, 1.0), Duration::from_nanos(1 << 40));
        let d = Backoff::default();
        assert_eq!(d.delay(u32::MAX, 7.0), 250 * MS);
        assert_eq!(d.delay(3, -1.0), Duration::ZERO);
        assert_eq!(d.delay(3, f64::NAN), Duration::ZERO);
    }

    #[test]
    fn base_above_max_is_capped() {
        let b = Backoff {
            base: Duration::from_secs(5),
            max: Duration::from_secs(1),
        };
        assert_eq!(b.delay(0, 1.0), Duration::from_secs(1));
    }

    #[test]
    fn equal_jitter_stays_in_the_upper_half_and_caps() {
        let b = Backoff {
            base: 100 * MS,
            max: 10_000 * MS,
        };
        assert_eq!(b.equal_jitter(0, 0.0), 50 * MS);
        assert_eq!(b.equal_jitter(3, 1.0), 800 * MS);
        assert_eq!(b.equal_jitter(u32::MAX, 0.0), 5_000 * MS);
        assert_eq!(b.equal_jitter(u32::MAX, f64::NAN), 5_000 * MS);
        assert_eq!(b.equal_jitter(2, 0.5), 300 * MS);
    }
}
