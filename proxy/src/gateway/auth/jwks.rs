//! A provider's keys, cached and refreshed: on an interval, and once when a token names an
//! unknown `kid` (a key rotated in at the issuer). The unknown-`kid` refresh is single-flight
//! and rate-limited: at most one fetch per [`UNKNOWN_KID_COOLDOWN`], however many tokens
//! with random `kid`s arrive, and requests wait for it at most the fetch's own time cap.
//! A failed fetch keeps the keys in force.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use weft_resilience::clock::nanos;
use weft_resilience::{Clock, Nanos};

use super::jwk::{parse_jwks, KeySet};

/// The least time between two fetches caused by unknown `kid`s.
pub const UNKNOWN_KID_COOLDOWN: Duration = Duration::from_secs(10);

/// Where keys come from (a file, an HTTPS URL, or a test's fake).
#[async_trait]
pub trait Fetch: Send + Sync {
    /// The JWKS document's bytes, size- and time-capped by the implementation.
    async fn fetch(&self) -> Result<Vec<u8>, String>;
}

/// The cached keys of one provider.
pub struct KeyCache {
    name: String,
    fetcher: Box<dyn Fetch>,
    keys: ArcSwap<KeySet>,
    clock: Clock,
    /// When the last unknown-`kid` fetch started (`None`: never).
    last_on_demand: Mutex<Option<Nanos>>,
    /// Completed fetch attempts; a waiter that sees it move knows someone else fetched.
    generation: AtomicU64,
    /// Single flight: one fetch at a time.
    flight: tokio::sync::Mutex<()>,
    /// Fetches made (successful or not), for tests and metrics.
    fetches: AtomicU64,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache")
            .field("name", &self.name)
            .finish()
    }
}

impl KeyCache {
    /// An empty cache for provider `name`; call [`KeyCache::refresh`] to load it.
    pub fn new(name: &str, fetcher: Box<dyn Fetch>, clock: Clock) -> Self {
        Self {
            name: name.to_owned(),
            fetcher,
            keys: ArcSwap::default(),
            clock,
            last_on_demand: Mutex::new(None),
            generation: AtomicU64::new(0),
            flight: tokio::sync::Mutex::new(()),
            fetches: AtomicU64::new(0),
        }
    }

    /// The keys in force.
    pub fn keys(&self) -> Arc<KeySet> {
        self.keys.load_full()
    }

    /// Fetches made so far.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Relaxed)
    }

    /// Fetch and install the keys now (single flight with any other fetch).
    pub async fn refresh(&self) -> Result<usize, String> {
        let _flight = self.flight.lock().await;
        self.fetch_locked().await
    }

    async fn fetch_locked(&self) -> Result<usize, String> {
        self.fetches.fetch_add(1, Relaxed);
        let result = match self.fetcher.fetch().await {
            Ok(bytes) => match parse_jwks(&bytes) {
                Ok(set) if !set.keys.is_empty() => {
                    let n = set.keys.len();
                    self.keys.store(Arc::new(set));
                    Ok(n)
                }
                Ok(_) => Err("the JWKS has no usable key; keeping the keys in force".into()),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e),
        };
        self.generation.fetch_add(1, Relaxed);
        if let Err(e) = &result {
            log::warn!("jwt provider {}: key refresh failed: {e}", self.name);
        }
        result
    }

    /// A token named `kid`, which no key has: refresh at most once per cooldown, then say
    /// whether the keys now have it. Concurrent callers share one fetch.
    pub async fn on_unknown_kid(&self, kid: &str) -> bool {
        let seen = self.generation.load(Relaxed);
        let fetch = self.may_fetch_on_demand();
        // Gate closed or not, wait for a fetch in flight: it may be bringing this key.
        let _flight = self.flight.lock().await;
        if !fetch {
            return self.keys.load().has_kid(kid);
        }
        if self.generation.load(Relaxed) == seen {
            // Nobody fetched while this caller waited: fetch (errors are logged).
            let _ = self.fetch_locked().await;
        }
        self.keys.load().has_kid(kid)
    }

    /// The cooldown gate: true (and the gate closes) when the last on-demand fetch is at
    /// least [`UNKNOWN_KID_COOLDOWN`] old.
    fn may_fetch_on_demand(&self) -> bool {
        let now = self.clock.now();
        let mut last = self
            .last_on_demand
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let open = last.is_none_or(|t| now.saturating_sub(t) >= nanos(UNKNOWN_KID_COOLDOWN));
        if open {
            *last = Some(now);
        }
        open
    }

    /// Refresh every `interval`, forever (spawn it; dropping the task stops it). A failed
    /// refresh is retried after a tenth of the interval (at least a second) until one works.
    pub async fn refresh_every(self: Arc<Self>, interval: Duration) {
        let retry = (interval / 10).max(Duration::from_secs(1));
        let mut wait = interval;
        loop {
            tokio::time::sleep(wait).await;
            wait = match self.refresh().await {
                Ok(_) => interval,
                Err(_) => retry.min(interval),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Serves document `docs[min(i, last)]` on the i-th fetch, after `delay`.
    struct Fake {
        docs: Vec<&'static str>,
        calls: Arc<AtomicUsize>,
        delay: Duration,
    }

    #[async_trait]
    impl Fetch for Fake {
        async fn fetch(&self) -> Result<Vec<u8>, String> {
            let i = self.calls.fetch_add(1, Relaxed);
            tokio::time::sleep(self.delay).await;
            let doc = self.docs[i.min(self.docs.len() - 1)];
            if doc == "fail" {
                return Err("connection refused".into());
            }
            Ok(doc.as_bytes().to_vec())
        }
    }

    const A: &str = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"a","x":"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc"}]}"#;
    const AB: &str = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"a","x":"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc"},{"kty":"OKP","crv":"Ed25519","kid":"b","x":"CAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAg"}]}"#;

    fn cache(docs: Vec<&'static str>, delay: Duration) -> (Arc<KeyCache>, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let fake = Fake {
            docs,
            calls: Arc::clone(&calls),
            delay,
        };
        (
            Arc::new(KeyCache::new("t", Box::new(fake), Clock::new())),
            calls,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_kid_refreshes_once_per_cooldown() {
        let (c, calls) = cache(vec![A, AB], Duration::ZERO);
        assert_eq!(c.refresh().await, Ok(1));
        assert!(
            c.on_unknown_kid("b").await,
            "rotated-in key found by one refresh"
        );
        assert_eq!(calls.load(Relaxed), 2);
        // A flood of random kids inside the cooldown: no fetch at all.
        for i in 0..1000 {
            assert!(!c.on_unknown_kid(&format!("random-{i}")).await);
        }
        assert_eq!(calls.load(Relaxed), 2);
        tokio::time::advance(UNKNOWN_KID_COOLDOWN).await;
        assert!(!c.on_unknown_kid("random").await);
        assert_eq!(calls.load(Relaxed), 3, "one more fetch after the cooldown");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_unknown_kids_share_one_fetch() {
        let (c, calls) = cache(vec![A, AB], Duration::from_millis(200));
        assert_eq!(c.refresh().await, Ok(1));
        let waiters: Vec<_> = (0..50)
            .map(|_| {
                let c = Arc::clone(&c);
                tokio::spawn(async move { c.on_unknown_kid("b").await })
            })
            .collect();
        let mut found = 0;
        for w in waiters {
            found += usize::from(w.await.unwrap_or(false));
        }
        assert_eq!(calls.load(Relaxed), 2);
        // The first caller fetched; the others, inside the cooldown, waited for that fetch.
        assert_eq!(found, 50);
    }

    #[tokio::test(start_paused = true)]
    async fn interval_refresh_keeps_old_keys_on_failure() {
        let (c, calls) = cache(vec![A, "fail", "{\"keys\":[]}", AB], Duration::ZERO);
        assert_eq!(c.refresh().await, Ok(1));
        let task = tokio::spawn(Arc::clone(&c).refresh_every(Duration::from_secs(60)));
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert_eq!(calls.load(Relaxed), 2);
        assert!(c.keys().has_kid("a"), "a failed fetch keeps the keys");
        // Retried after 6 s (a tenth of the interval): an empty set is refused too.
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(calls.load(Relaxed), 3);
        assert!(c.keys().has_kid("a") && !c.keys().has_kid("b"));
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(calls.load(Relaxed), 4);
        assert!(c.keys().has_kid("b"));
        task.abort();
    }
}
