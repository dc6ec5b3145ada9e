//! Rate limits as GCRA (the generic cell rate algorithm): a token bucket kept as a single
//! "theoretical arrival time" (TAT), so taking a token is one CAS on one `AtomicU64` and the
//! bucket never needs a refill timer.
//!
//! Each accepted request pushes the TAT one emission interval `T = 1/rate` further; a request
//! is accepted while the TAT is at most `τ = T × (burst − 1)` ahead of now. Over any span of
//! `d` this accepts at most `⌊d / T⌋ + burst` requests, exactly as a token bucket would.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::clock::Nanos;

/// Attempts at the TAT CAS; every lost race is another caller's accepted request, so running
/// out needs dozens of simultaneous callers on one bucket.
const CAS_ATTEMPTS: usize = 64;

/// A token bucket (GCRA) refilled at `per_second` with room for `burst` tokens.
#[derive(Debug)]
pub struct TokenBucket {
    /// Emission interval `T` in nanoseconds.
    interval: u64,
    /// Burst tolerance `τ = T × (burst − 1)` in nanoseconds.
    tolerance: u64,
    tat: AtomicU64,
}

impl TokenBucket {
    /// A full bucket. `per_second` must be positive and `burst` at least 1; other values are
    /// raised to the smallest valid ones (a rate too small to represent allows one request
    /// per ~584 years).
    pub fn new(per_second: f64, burst: u32) -> Self {
        // `as` saturates: a tiny rate gives u64::MAX, a huge one 0, raised to 1 ns.
        let interval = (1e9 / per_second.max(f64::MIN_POSITIVE)) as u64;
        let interval = interval.max(1);
        Self {
            interval,
            tolerance: interval.saturating_mul(u64::from(burst.max(1) - 1)),
            tat: AtomicU64::new(0),
        }
    }

    /// Take one token at `now`; if there is none, how long until there will be (for
    /// `retry-after`).
    pub fn try_take(&self, now: Nanos) -> Result<(), Duration> {
        let mut tat = self.tat.load(Relaxed);
        for _ in 0..CAS_ATTEMPTS {
            let start = tat.max(now);
            let ahead = start - now;
            if ahead > self.tolerance {
                return Err(Duration::from_nanos(ahead - self.tolerance));
            }
            match self.tat.compare_exchange_weak(
                tat,
                start.saturating_add(self.interval),
                Relaxed,
                Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(seen) => tat = seen,
            }
        }
        // Contended beyond reason: the others are taking the tokens, try again next interval.
        Err(Duration::from_nanos(self.interval))
    }
}

/// Buckets keyed by, e.g., caller identity, at most `max_keys` of them.
///
/// Lookups are lock-free reads of an immutable map; a new key copies the map (rare: once per
/// key). Once `max_keys` keys have buckets, further keys share one overflow bucket, so an
/// unbounded key space costs bounded memory while each known key keeps its own limit. Keys
/// are never evicted: build a new `KeyedBuckets` (e.g. on config reload) to start afresh.
#[derive(Debug)]
pub struct KeyedBuckets {
    per_second: f64,
    burst: u32,
    max_keys: usize,
    buckets: ArcSwap<HashMap<Box<str>, Arc<TokenBucket>>>,
    overflow: TokenBucket,
}

impl KeyedBuckets {
    /// Each key gets `per_second` with `burst`; keys beyond `max_keys` share one such bucket.
    pub fn new(per_second: f64, burst: u32, max_keys: usize) -> Self {
        Self {
            per_second,
            burst,
            max_keys,
            buckets: ArcSwap::default(),
            overflow: TokenBucket::new(per_second, burst),
        }
    }

    /// Take a token from `key`'s bucket at `now` (see [`TokenBucket::try_take`]).
    pub fn try_take(&self, key: &str, now: Nanos) -> Result<(), Duration> {
        if let Some(bucket) = self.buckets.load().get(key) {
            return bucket.try_take(now);
        }
        match self.insert(key) {
            Some(bucket) => bucket.try_take(now),
            None => self.overflow.try_take(now),
        }
    }

    /// Keys with a bucket of their own.
    pub fn len(&self) -> usize {
        self.buckets.load().len()
    }

    /// True when no key has a bucket of its own yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bucket for a new `key`, or `None` when the map is full.
    fn insert(&self, key: &str) -> Option<Arc<TokenBucket>> {
        // Each failed swap means another key went in, so max_keys + 1 attempts always
        // suffice to either insert or find the map full.
        for _ in 0..=self.max_keys {
            let current = self.buckets.load();
            if let Some(bucket) = current.get(key) {
                return Some(Arc::clone(bucket));
            }
            if current.len() >= self.max_keys {
                return None;
            }
            let bucket = Arc::new(TokenBucket::new(self.per_second, self.burst));
            let mut next = HashMap::clone(&current);
            next.insert(key.into(), Arc::clone(&bucket));
            let previous = self.buckets.compare_and_swap(&current, Arc::new(next));
            if Arc::ptr_eq(&previous, &current) {
                return Some(bucket);
            }
        }
        None
    }
}

/// The buckets of one limit: one shared by every request, or one per key (e.g. per caller
/// identity).
#[derive(Debug)]
pub enum Buckets {
    /// Every request draws from one bucket.
    Shared(TokenBucket),
    /// Each key has its own (see [`KeyedBuckets`]).
    Keyed(KeyedBuckets),
}

impl Buckets {
    /// `per_second` with `burst`, shared, or per key (at most `max_keys` keys of their own)
    /// when `per_key`.
    pub fn new(per_second: f64, burst: u32, per_key: bool, max_keys: usize) -> Self {
        if per_key {
            Buckets::Keyed(KeyedBuckets::new(per_second, burst, max_keys))
        } else {
            Buckets::Shared(TokenBucket::new(per_second, burst))
        }
    }

    /// Take a token for `key` at `now`; `Err` says when one will be available.
    pub fn try_take(&self, key: &str, now: Nanos) -> Result<(), Duration> {
        match self {
            Buckets::Shared(b) => b.try_take(now),
            Buckets::Keyed(k) => k.try_take(key, now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Nanos = 1_000_000_000;

    /// Offer one request every `step` for `secs`; count the accepted ones.
    fn offered(b: &TokenBucket, step: Nanos, secs: u64) -> u64 {
        (0..secs * SEC / step)
            .filter(|i| b.try_take(i * step).is_ok())
            .count() as u64
    }

    #[test]
    fn accepts_rate_times_span_plus_burst() {
        for (rate, burst) in [(100.0, 1), (100.0, 20), (7.0, 3), (1000.0, 50)] {
            let b = TokenBucket::new(rate, burst);
            // 10 kHz offered: well above every rate tested.
            let accepted = offered(&b, SEC / 10_000, 10);
            let expected = (rate * 10.0) as u64 + u64::from(burst);
            assert!(
                accepted.abs_diff(expected) <= 1,
                "rate {rate} burst {burst}: {accepted} vs {expected}"
            );
        }
    }

    #[test]
    fn burst_then_retry_after() {
        let b = TokenBucket::new(10.0, 3);
        for _ in 0..3 {
            assert_eq!(b.try_take(0), Ok(()));
        }
        assert_eq!(b.try_take(0), Err(Duration::from_millis(100)));
        assert_eq!(b.try_take(40 * SEC / 1000), Err(Duration::from_millis(60)));
        // At exactly the promised time a token is there, and then it is gone again.
        assert_eq!(b.try_take(100 * SEC / 1000), Ok(()));
        assert_eq!(
            b.try_take(100 * SEC / 1000),
            Err(Duration::from_millis(100))
        );
    }

    #[test]
    fn idle_time_refills_only_up_to_burst() {
        let b = TokenBucket::new(1.0, 2);
        assert!(b.try_take(0).is_ok());
        let later = 3600 * SEC;
        assert!(b.try_take(later).is_ok());
        assert!(b.try_take(later).is_ok());
        assert_eq!(b.try_take(later), Err(Duration::from_secs(1)));
    }

    #[test]
    fn degenerate_parameters_are_raised() {
        let b = TokenBucket::new(0.0, 0);
        assert!(b.try_take(0).is_ok());
        assert!(b.try_take(SEC).is_err());
        let b = TokenBucket::new(f64::INFINITY, 1);
        assert!(b.try_take(0).is_ok());
        assert!(b.try_take(1).is_ok());
    }

    #[test]
    fn keys_are_independent() {
        let k = KeyedBuckets::new(1.0, 2, 10);
        assert!(k.try_take("a", 0).is_ok());
        assert!(k.try_take("a", 0).is_ok());
        assert!(k.try_take("a", 0).is_err());
        assert!(k.try_take("b", 0).is_ok());
        assert!(k.try_take("b", 0).is_ok());
        assert!(k.try_take("b", 0).is_err());
        assert_eq!(k.len(), 2);
    }

    #[test]
    fn keys_beyond_the_bound_share_the_overflow_bucket() {
        let k = KeyedBuckets::new(1.0, 3, 2);
        assert!(k.is_empty());
        let accepted = (0..100)
            .filter(|i| k.try_take(&format!("caller-{i}"), 0).is_ok())
            .count();
        // Two keys with their own burst of 3 each took one; 98 more share a burst of 3.
        assert_eq!(accepted, 2 + 3);
        assert_eq!(k.len(), 2);
        // Known keys keep their own buckets.
        assert!(k.try_take("caller-0", 0).is_ok());
    }

    #[test]
    fn concurrent_takes_never_exceed_the_burst() {
        let b = TokenBucket::new(1.0, 100);
        let accepted: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..1000).filter(|_| b.try_take(0).is_ok()).count()))
                .collect();
            handles.into_iter().map(|h| h.join().expect("thread")).sum()
        });
        assert_eq!(accepted, 100);
    }

    #[test]
    fn concurrent_inserts_respect_max_keys() {
        let k = KeyedBuckets::new(1.0, 1, 8);
        std::thread::scope(|s| {
            for t in 0..4 {
                let k = &k;
                s.spawn(move || {
                    for i in 0..50 {
                        let _ = k.try_take(&format!("{t}-{i}"), 0);
                    }
                });
            }
        });
        assert_eq!(k.len(), 8);
    }

    #[test]
    fn shared_buckets_ignore_the_key_and_keyed_ones_do_not() {
        let shared = Buckets::new(1.0, 1, false, 8);
        assert!(shared.try_take("a", 0).is_ok());
        assert!(shared.try_take("b", 0).is_err(), "one bucket for every key");
        let keyed = Buckets::new(1.0, 1, true, 8);
        assert!(keyed.try_take("a", 0).is_ok());
        assert!(keyed.try_take("b", 0).is_ok(), "a bucket per key");
        assert!(keyed.try_take("a", 0).is_err());
    }
}
