//! Small statistics helpers: medians, ratios and latency percentiles.

use hdrhistogram::Histogram;

/// Median of `values` (mean of the two middle values for an even count);
/// `None` if there are none. NaNs sort last.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// Median of the values present in `values`.
pub fn median_opt(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    let v: Vec<f64> = values.into_iter().flatten().collect();
    median(&v)
}

/// `num / den`, or `None` when either is missing or `den` is zero.
pub fn ratio(num: Option<f64>, den: Option<f64>) -> Option<f64> {
    match (num, den) {
        (Some(n), Some(d)) if d != 0.0 => Some(n / d),
        _ => None,
    }
}

/// Share of `scheduled` requests that succeeded, `ok / scheduled` (0..=1);
/// `None` when nothing was scheduled.
pub fn success_rate(ok: u64, scheduled: u64) -> Option<f64> {
    (scheduled > 0).then(|| ok.min(scheduled) as f64 / scheduled as f64)
}

/// A new latency histogram in nanoseconds, 1 ns ..= 60 s, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts (low >= 1,
    // high >= 2 * low, sigfig <= 5), so this cannot fail.
    match Histogram::new_with_bounds(1, 60_000_000_000, 3) {
        Ok(h) => h,
        Err(e) => unreachable!("constant histogram bounds rejected: {e}"),
    }
}

/// Latency percentiles of one run, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Percentiles {
    /// Number of recorded samples.
    pub count: u64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest sample.
    pub max_us: f64,
}

/// Percentiles of a nanosecond histogram, or `None` if it is empty.
pub fn percentiles(h: &Histogram<u64>) -> Option<Percentiles> {
    if h.is_empty() {
        return None;
    }
    let us = |ns: u64| ns as f64 / 1000.0;
    Some(Percentiles {
        count: h.len(),
        p50_us: us(h.value_at_quantile(0.50)),
        p90_us: us(h.value_at_quantile(0.90)),
        p99_us: us(h.value_at_quantile(0.99)),
        p999_us: us(h.value_at_quantile(0.999)),
        max_us: us(h.max()),
    })
}

/// `cpu_s` CPU seconds over `seconds` of wall time, in percent of one CPU (0 for an empty
/// window).
pub fn pct_of_one_cpu(cpu_s: f64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        cpu_s / seconds * 100.0
    } else {
        0.0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(
            median_opt([None, Some(2.0), Some(9.0), None, Some(4.0)]),
            Some(4.0)
        );
        assert_eq!(median_opt([None, None]), None);
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(Some(1.0), Some(4.0)), Some(0.25));
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
    }

    #[test]
    fn success_rates() {
        assert_eq!(success_rate(0, 0), None);
        assert_eq!(success_rate(0, 10), Some(0.0));
        assert_eq!(success_rate(10, 10), Some(1.0));
        assert_eq!(success_rate(2, 3), Some(2.0 / 3.0));
        assert_eq!(success_rate(9_990, 10_000), Some(0.999));
        // Never above 1, even if counts disagree.
        assert_eq!(success_rate(11, 10), Some(1.0));
    }

    #[test]
    fn percentiles_of_uniform_samples() {
        let mut h = latency_histogram();
        assert_eq!(percentiles(&h), None);
        // 1..=1000 µs, one sample each.
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap();
        }
        let p = percentiles(&h).unwrap();
        assert_eq!(p.count, 1000);
        // Three significant digits: within 0.1 % of the exact rank value.
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 1e-9;
        assert!(close(p.p50_us, 500.0), "{p:?}");
        assert!(close(p.p90_us, 900.0), "{p:?}");
        assert!(close(p.p99_us, 990.0), "{p:?}");
        assert!(close(p.p999_us, 999.0), "{p:?}");
        assert!(close(p.max_us, 1000.0), "{p:?}");
    }

    #[test]
    fn percentiles_see_the_tail() {
        // 99.5 % fast, 0.5 % very slow: p99 is fast, p99.9 is slow.
        let mut h = latency_histogram();
        h.record_n(100_000, 995).unwrap();
        h.record_n(50_000_000, 5).unwrap();
        let p = percentiles(&h).unwrap();
        assert!(p.p99_us < 101.0, "{p:?}");
        assert!(p.p999_us > 49_000.0, "{p:?}");
    }
}
