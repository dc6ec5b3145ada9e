//! Endpoint choice: power of two choices on peak-EWMA latency (the default, as in
//! linkerd2-proxy and Finagle), or round robin.
//!
//! Per-endpoint stats are atomics updated without locks. The EWMA and its timestamp are two
//! separate atomics, so a racing update may blend two samples slightly differently than a
//! mutex would; for a load heuristic that is harmless and keeps the hot path lock-free.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_policy::LbPolicy;

/// RTT assumed for an endpoint never observed (linkerd2-proxy's default).
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// Decay time constant of the EWMA: how fast a past peak is forgotten (linkerd2-proxy: 10 s).
pub const DECAY: Duration = Duration::from_secs(10);
/// RTT charged for a failed attempt, so a fast-failing endpoint does not look attractive.
pub const FAILURE_PENALTY: Duration = Duration::from_secs(1);

/// Load statistics of one endpoint; shared across config snapshots so a reload keeps history.
#[derive(Debug)]
pub struct EndpointStats {
    ewma_ns: AtomicU64,
    stamp_ns: AtomicU64,
    pending: AtomicU32,
}

impl Default for EndpointStats {
    fn default() -> Self {
        Self {
            ewma_ns: AtomicU64::new((DEFAULT_RTT.as_nanos() as f64).to_bits()),
            stamp_ns: AtomicU64::new(crate::clock::now()),
            pending: AtomicU32::new(0),
        }
    }
}

impl EndpointStats {
    fn decayed_ewma(&self, now: u64) -> f64 {
        let ewma = f64::from_bits(self.ewma_ns.load(Relaxed));
        let elapsed = now.saturating_sub(self.stamp_ns.load(Relaxed)) as f64;
        ewma * (-elapsed / DECAY.as_nanos() as f64).exp()
    }

    /// Expected cost of sending one more request here.
    pub fn cost(&self) -> f64 {
        self.decayed_ewma(crate::clock::now()) * f64::from(self.pending.load(Relaxed) + 1)
    }

    /// Outstanding requests.
    pub fn pending(&self) -> u32 {
        self.pending.load(Relaxed)
    }

    /// Record an observed round trip: a peak is taken at once, a lower value blends in.
    pub fn observe(&self, rtt: Duration) {
        let now = crate::clock::now();
        let rtt = rtt.as_nanos() as f64;
        let prev = self.decayed_ewma(now);
        let next = if rtt > prev {
            rtt
        } else {
            let elapsed = now.saturating_sub(self.stamp_ns.load(Relaxed)) as f64;
            let w = (-elapsed / DECAY.as_nanos() as f64).exp();
            prev * w + rtt * (1.0 - w)
        };
        self.ewma_ns.store(next.to_bits(), Relaxed);
        self.stamp_ns.store(now, Relaxed);
    }

    /// Count a request as outstanding until the guard drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.pending.fetch_add(1, Relaxed);
        InFlight {
            stats: self.clone(),
            started: Instant::now(),
        }
    }
}

/// One outstanding request on an endpoint.
#[derive(Debug)]
pub struct InFlight {
    stats: Arc<EndpointStats>,
    started: Instant,
}

impl InFlight {
    /// Feed the latency of a successful response (headers received).
    pub fn success(&self) {
        self.stats.observe(self.started.elapsed());
    }

    /// Feed a failure.
    pub fn failure(&self) {
        self.stats
            .observe(self.started.elapsed().max(FAILURE_PENALTY));
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats.pending.fetch_sub(1, Relaxed);
    }
}

/// Choose one of `candidates` (indices into `stats`) for which `usable` holds, or `None`.
///
/// `usable` (not ejected, not tried yet) is checked only on the endpoints looked at, so the
/// common all-healthy case costs two checks, not a scan; a scan from a random start happens
/// only when both P2C draws are unusable.
pub fn choose(
    policy: LbPolicy,
    candidates: &[usize],
    stats: &[Arc<EndpointStats>],
    rr: &AtomicUsize,
    usable: impl Fn(usize) -> bool,
) -> Option<usize> {
    let n = candidates.len();
    let scan = |start: usize| {
        (0..n)
            .map(|i| candidates[(start + i) % n])
            .find(|&e| usable(e))
    };
    match n {
        0 => None,
        1 => usable(candidates[0]).then_some(candidates[0]),
        _ => match policy {
            LbPolicy::RoundRobin => scan(rr.fetch_add(1, Relaxed) % n),
            LbPolicy::P2cEwma => {
                let a = fastrand::usize(0..n);
                let mut b = fastrand::usize(0..n - 1);
                if b >= a {
                    b += 1;
                }
                let (a, b) = (candidates[a], candidates[b]);
                match (usable(a), usable(b)) {
                    (true, true) => Some(if stats[a].cost() <= stats[b].cost() {
                        a
                    } else {
                        b
                    }),
                    (true, false) => Some(a),
                    (false, true) => Some(b),
                    (false, false) => scan(fastrand::usize(0..n)),
                }
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(n: usize) -> Vec<Arc<EndpointStats>> {
        (0..n).map(|_| Arc::new(EndpointStats::default())).collect()
    }

    #[test]
    fn round_robin_cycles_through_candidates() {
        let s = stats(3);
        let rr = AtomicUsize::new(0);
        let picks: Vec<_> = (0..6)
            .map(|_| choose(LbPolicy::RoundRobin, &[0, 1, 2], &s, &rr, |_| true))
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2].map(Some));
    }

    #[test]
    fn empty_and_single_candidates() {
        let s = stats(2);
        let rr = AtomicUsize::new(0);
        assert_eq!(choose(LbPolicy::P2cEwma, &[], &s, &rr, |_| true), None);
        assert_eq!(choose(LbPolicy::P2cEwma, &[1], &s, &rr, |_| true), Some(1));
    }

    #[test]
    fn p2c_prefers_the_faster_endpoint() {
        let s = stats(2);
        s[0].observe(Duration::from_millis(200));
        s[1].observe(Duration::from_millis(2));
        let rr = AtomicUsize::new(0);
        let fast = (0..1000)
            .filter(|_| choose(LbPolicy::P2cEwma, &[0, 1], &s, &rr, |_| true) == Some(1))
            .count();
        assert_eq!(
            fast, 1000,
            "with two candidates P2C compares both every time"
        );
    }

    #[test]
    fn unusable_endpoints_are_skipped_by_both_policies() {
        let s = stats(3);
        let rr = AtomicUsize::new(0);
        for policy in [LbPolicy::P2cEwma, LbPolicy::RoundRobin] {
            for _ in 0..300 {
                let pick = choose(policy, &[0, 1, 2], &s, &rr, |e| e != 1);
                assert!(matches!(pick, Some(0 | 2)), "{policy:?} picked {pick:?}");
            }
            assert_eq!(choose(policy, &[0, 1, 2], &s, &rr, |e| e == 2), Some(2));
            assert_eq!(choose(policy, &[0, 1, 2], &s, &rr, |_| false), None);
        }
    }

    #[test]
    fn pending_requests_raise_cost_and_guards_release_them() {
        let s = stats(1);
        let base = s[0].cost();
        let guards: Vec<_> = (0..3).map(|_| s[0].start()).collect();
        assert_eq!(s[0].pending(), 3);
        assert!(s[0].cost() > 3.5 * base);
        drop(guards);
        assert_eq!(s[0].pending(), 0);
    }

    #[test]
    fn peak_is_taken_at_once_and_failures_are_penalised() {
        let s = EndpointStats::default();
        s.observe(Duration::from_millis(500));
        assert!(
            s.cost() > 0.45e9,
            "peak sample adopted immediately: {}",
            s.cost()
        );
        let s = Arc::new(EndpointStats::default());
        s.start().failure();
        assert!(s.cost() >= 0.9 * FAILURE_PENALTY.as_nanos() as f64);
    }
}
