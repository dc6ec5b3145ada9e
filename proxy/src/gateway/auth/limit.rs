//! Per-client token buckets for one route, keyed by JWT subject, API-key consumer or client
//! IP, in bounded memory.
//!
//! Each client's bucket is GCRA state (one "theoretical arrival time", as
//! `weft_resilience::rate` keeps it) plus when it was last seen: about 100 bytes with its key.
//! At most `max_clients` are tracked. When a new client arrives at the cap, buckets that have
//! refilled completely are dropped first (forgetting a full bucket changes nothing: a new one
//! starts full), and if none has, the least recently seen eighth goes (those clients start
//! again with a full bucket: the price of a bound under a flood of distinct keys).
//!
//! The answer carries what the IETF rate-limit headers need (draft-ietf-httpapi-ratelimit-
//! headers-10 syntax): [`Decision::headers`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use weft_resilience::Nanos;

/// The policy name used in `RateLimit-Policy` and `RateLimit`.
pub const POLICY_NAME: &str = "client";

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// GCRA theoretical arrival time.
    tat: Nanos,
    /// Last request seen.
    seen: Nanos,
}

/// One route's per-client buckets.
#[derive(Debug)]
pub struct ClientBuckets {
    /// Emission interval `T` (ns per token).
    interval: u64,
    burst: u32,
    max_clients: usize,
    clients: Mutex<HashMap<Box<str>, Entry>>,
}

/// The outcome of taking a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may go on.
    pub allowed: bool,
    /// Tokens left after this request.
    pub remaining: u32,
    /// Until the bucket is full again.
    pub reset: Duration,
    /// Until a token is available (zero when allowed).
    pub retry_after: Duration,
    /// Bucket size (`q`).
    pub burst: u32,
    /// Seconds an empty bucket takes to refill (`w`).
    pub window: u64,
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl Decision {
    /// `RateLimit-Policy`, `RateLimit` and, when refused, `Retry-After` (whole seconds,
    /// rounded up, at least 1).
    pub fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let policy = format!("\"{POLICY_NAME}\";q={};w={}", self.burst, self.window);
        let now = format!(
            "\"{POLICY_NAME}\";r={};t={}",
            self.remaining,
            ceil_secs(self.reset)
        );
        let mut out = vec![
            (
                HeaderName::from_static("ratelimit-policy"),
                HeaderValue::from_str(&policy),
            ),
            (
                HeaderName::from_static("ratelimit"),
                HeaderValue::from_str(&now),
            ),
        ];
        if !self.allowed {
            let secs = ceil_secs(self.retry_after).max(1);
            out.push((RETRY_AFTER, Ok(HeaderValue::from(secs))));
        }
        out.into_iter()
            .filter_map(|(n, v)| Some((n, v.ok()?)))
            .collect()
    }
}

impl ClientBuckets {
    /// `per_second` tokens a second, `burst` at most, for at most `max_clients` clients.
    pub fn new(per_second: f64, burst: u32, max_clients: usize) -> Self {
        let interval = ((1e9 / per_second.max(1e-9)) as u64).max(1);
        Self {
            interval,
            burst: burst.max(1),
            max_clients: max_clients.max(1),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Clients tracked now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no client is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Entry>> {
        self.clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Take a token from `client`'s bucket at `now`.
    pub fn take(&self, client: &str, now: Nanos) -> Decision {
        let full = self.interval.saturating_mul(u64::from(self.burst));
        let mut map = self.lock();
        if !map.contains_key(client) && map.len() >= self.max_clients {
            self.evict(&mut map, now);
        }
        let entry = map.entry(client.into()).or_insert(Entry {
            tat: now,
            seen: now,
        });
        entry.seen = now;
        let start = entry.tat.max(now);
        let next = start.saturating_add(self.interval);
        let allowed = next - now <= full;
        if allowed {
            entry.tat = next;
        }
        let ahead = entry.tat.saturating_sub(now);
        let remaining = (full.saturating_sub(ahead) / self.interval) as u32;
        let window = full.div_ceil(1_000_000_000);
        Decision {
            allowed,
            remaining: remaining.min(self.burst),
            reset: Duration::from_nanos(ahead),
            retry_after: if allowed {
                Duration::ZERO
            } else {
                Duration::from_nanos(next - now - full)
            },
            burst: self.burst,
            window,
        }
    }

    fn evict(&self, map: &mut HashMap<Box<str>, Entry>, now: Nanos) {
        map.retain(|_, e| e.tat > now);
        if map.len() < self.max_clients {
            return;
        }
        let n = (self.max_clients / 8).max(1);
        let mut seen: Vec<Nanos> = map.values().map(|e| e.seen).collect();
        let (_, cut, _) = seen.select_nth_unstable(n - 1);
        let cut = *cut;
        let mut dropped = 0;
        map.retain(|_, e| {
            let keep = e.seen > cut || dropped >= n;
            dropped += usize::from(!keep);
            keep
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_client_gets_its_burst_then_the_rate() {
        let b = ClientBuckets::new(2.0, 4, 100);
        let t0 = 10 * S;
        for left in (0..4).rev() {
            let d = b.take("alice", t0);
            assert!(d.allowed);
            assert_eq!(d.remaining, left);
        }
        let d = b.take("alice", t0);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_millis(500));
        assert_eq!(d.reset, Duration::from_secs(2));
        // Another client is not affected.
        assert!(b.take("bob", t0).allowed);
        // Half a second later one token is back.
        assert!(b.take("alice", t0 + S / 2).allowed);
        assert!(!b.take("alice", t0 + S / 2).allowed);
    }

    #[test]
    fn headers_follow_the_draft_syntax() {
        let b = ClientBuckets::new(1.0, 2, 10);
        b.take("c", 0);
        b.take("c", 0);
        let d = b.take("c", 0);
        let h: Vec<(String, String)> = d
            .headers()
            .into_iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or_default().to_owned()))
            .collect();
        assert_eq!(
            h,
            [
                (
                    "ratelimit-policy".to_owned(),
                    "\"client\";q=2;w=2".to_owned()
                ),
                ("ratelimit".to_owned(), "\"client\";r=0;t=2".to_owned()),
                ("retry-after".to_owned(), "1".to_owned()),
            ]
        );
    }

    #[test]
    fn memory_is_bounded_and_full_buckets_go_first() {
        let b = ClientBuckets::new(1.0, 1, 64);
        // A flood of distinct keys, one request each, all at t=0: the cap holds.
        for i in 0..10_000 {
            b.take(&format!("flood-{i}"), 0);
            assert!(b.len() <= 64);
        }
        // Fill to the cap (eviction happens only there), still at t=0.
        for i in 0..64 {
            if b.len() == 64 {
                break;
            }
            b.take(&format!("fill-{i}"), 0);
        }
        assert_eq!(b.len(), 64);
        // At t=10 s every bucket has refilled: the next new key sweeps them all.
        b.take("late", 10 * S);
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn the_least_recently_seen_are_evicted_when_none_is_full() {
        let b = ClientBuckets::new(0.001, 1, 8);
        for i in 0..8u64 {
            assert!(b.take(&format!("c{i}"), i * S).allowed);
        }
        // c7 is the newest; a new client evicts the oldest eighth (c0).
        assert!(b.take("new", 9 * S).allowed);
        assert_eq!(b.len(), 8);
        assert!(!b.take("c7", 9 * S).allowed, "c7 kept its empty bucket");
        assert!(
            b.take("c0", 9 * S).allowed,
            "c0 was forgotten, so it starts full"
        );
    }
}
