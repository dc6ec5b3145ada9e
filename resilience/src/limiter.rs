//! Per-destination concurrency limit with a small bounded queue.
//!
//! Admission is one CAS on the in-flight count. Waiters, at most `max_pending` of them, park
//! on a `Notify` for at most `max_wait`; a released permit wakes one of them, and touches the
//! `Notify` only when someone waits, so the uncontended path is a few atomic operations and
//! no allocation. Excess load is rejected at once rather than queued without bound: a queue
//! the upstream cannot drain only adds latency before the same failure.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// Attempts at the in-flight CAS before giving up; each failure means another caller made
/// progress, so running out needs dozens of simultaneous callers on one limiter.
const CAS_ATTEMPTS: usize = 64;

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// `max_in_flight` requests are running and queueing is disabled.
    #[error("too many requests in flight")]
    InFlight,
    /// `max_pending` requests are already waiting.
    #[error("too many requests waiting for a slot")]
    Pending,
    /// No slot freed up within the wait limit.
    #[error("timed out waiting for a slot")]
    QueueTimeout,
}

/// A concurrency limit: at most `max_in_flight` [`Permit`]s exist at once.
#[derive(Debug)]
pub struct ConcurrencyLimiter {
    max_in_flight: usize,
    max_pending: usize,
    // Sequentially consistent: a releaser decrements `in_flight` then reads `pending`, a
    // waiter increments `pending` then reads `in_flight`; with weaker orderings both could
    // miss the other's write and the waiter would sleep through a free slot.
    in_flight: AtomicUsize,
    pending: AtomicUsize,
    freed: Notify,
}

impl ConcurrencyLimiter {
    /// A limiter admitting `max_in_flight` requests (`usize::MAX`: unlimited) with up to
    /// `max_pending` waiting for a slot (0: no queueing, reject at once).
    pub fn new(max_in_flight: usize, max_pending: usize) -> Arc<Self> {
        Arc::new(Self {
            max_in_flight,
            max_pending,
            in_flight: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            freed: Notify::new(),
        })
    }

    /// Requests holding a permit.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(SeqCst)
    }

    /// Requests waiting for a permit.
    pub fn pending(&self) -> usize {
        self.pending.load(SeqCst)
    }

    /// The configured `(max_in_flight, max_pending)`.
    pub fn limits(&self) -> (usize, usize) {
        (self.max_in_flight, self.max_pending)
    }

    /// A permit if fewer than `max_in_flight` are out, without waiting.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        bounded_increment(&self.in_flight, self.max_in_flight).then(|| Permit {
            limiter: Arc::clone(self),
        })
    }

    /// A permit, waiting up to `max_wait` in the queue if none is free.
    pub async fn acquire(self: &Arc<Self>, max_wait: Duration) -> Result<Permit, Rejected> {
        if let Some(permit) = self.try_acquire() {
            return Ok(permit);
        }
        if self.max_pending == 0 {
            return Err(Rejected::InFlight);
        }
        if !bounded_increment(&self.pending, self.max_pending) {
            return Err(Rejected::Pending);
        }
        let _waiting = Waiting(self);
        tokio::time::timeout(max_wait, self.wait_for_permit())
            .await
            .map_err(|_| Rejected::QueueTimeout)
    }

    /// Loops once per wake-up; ends when a permit is won or, from outside, at the timeout.
    async fn wait_for_permit(self: &Arc<Self>) -> Permit {
        loop {
            let notified = self.freed.notified();
            tokio::pin!(notified);
            // Registered before the check, so a release between the check and the await
            // still wakes this waiter.
            notified.as_mut().enable();
            if let Some(permit) = self.try_acquire() {
                return permit;
            }
            notified.await;
        }
    }
}

/// Increment `counter` if below `limit`; false when at the limit (or, improbably, when
/// [`CAS_ATTEMPTS`] races were lost).
fn bounded_increment(counter: &AtomicUsize, limit: usize) -> bool {
    let mut current = counter.load(SeqCst);
    for _ in 0..CAS_ATTEMPTS {
        if current >= limit {
            return false;
        }
        match counter.compare_exchange_weak(current, current + 1, SeqCst, SeqCst) {
            Ok(_) => return true,
            Err(seen) => current = seen,
        }
    }
    false
}

/// Holds a queue slot; released on drop, including when the waiting future is cancelled.
struct Waiting<'a>(&'a ConcurrencyLimiter);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, SeqCst);
    }
}

/// One admitted request; the slot is released when it drops.
#[derive(Debug)]
pub struct Permit {
    limiter: Arc<ConcurrencyLimiter>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let l = &self.limiter;
        l.in_flight.fetch_sub(1, SeqCst);
        if l.pending.load(SeqCst) > 0 {
            // A waiter that times out after being picked passes the wake-up on (tokio's
            // Notify forwards an unconsumed notify_one), so the slot is not lost.
            l.freed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn limit_is_enforced_and_released_on_drop() {
        let l = ConcurrencyLimiter::new(2, 0);
        let a = l.try_acquire().expect("first");
        let b = l.try_acquire().expect("second");
        assert!(l.try_acquire().is_none());
        assert_eq!(l.in_flight(), 2);
        drop(a);
        assert_eq!(l.in_flight(), 1);
        let c = l.try_acquire().expect("freed slot");
        drop((b, c));
        assert_eq!(l.in_flight(), 0);
    }

    #[test]
    fn unlimited() {
        let l = ConcurrencyLimiter::new(usize::MAX, 0);
        let permits: Vec<_> = (0..1000).filter_map(|_| l.try_acquire()).collect();
        assert_eq!(permits.len(), 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_queue_excess_is_rejected_at_once() {
        let l = ConcurrencyLimiter::new(1, 0);
        let _p = l.acquire(MS).await.expect("free");
        assert_eq!(
            l.acquire(Duration::from_secs(60)).await.err(),
            Some(Rejected::InFlight)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn queue_is_bounded() {
        let l = ConcurrencyLimiter::new(1, 2);
        let _p = l.try_acquire().expect("free");
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let l = l.clone();
                tokio::spawn(async move { l.acquire(Duration::from_secs(1)).await.map(drop) })
            })
            .collect();
        tokio::task::yield_now().await;
        assert_eq!(l.pending(), 2);
        assert_eq!(
            l.acquire(Duration::from_secs(1)).await.err(),
            Some(Rejected::Pending)
        );
        for w in waiters {
            assert_eq!(w.await.expect("task"), Err(Rejected::QueueTimeout));
        }
        assert_eq!(l.pending(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn queue_timeout_is_max_wait() {
        let l = ConcurrencyLimiter::new(1, 1);
        let _p = l.try_acquire().expect("free");
        let start = tokio::time::Instant::now();
        assert_eq!(
            l.acquire(250 * MS).await.err(),
            Some(Rejected::QueueTimeout)
        );
        assert_eq!(start.elapsed(), 250 * MS);
        assert_eq!(l.pending(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gets_the_released_slot() {
        let l = ConcurrencyLimiter::new(1, 4);
        let p = l.try_acquire().expect("free");
        let waiter = {
            let l = l.clone();
            tokio::spawn(async move {
                let start = tokio::time::Instant::now();
                let permit = l.acquire(Duration::from_secs(10)).await;
                (permit.map(drop), start.elapsed())
            })
        };
        tokio::time::sleep(100 * MS).await;
        assert_eq!(l.pending(), 1);
        drop(p);
        let (got, waited) = waiter.await.expect("task");
        assert_eq!(got, Ok(()));
        assert_eq!(waited, 100 * MS);
        assert_eq!((l.in_flight(), l.pending()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_are_served_one_per_release() {
        let l = ConcurrencyLimiter::new(1, 8);
        let first = l.try_acquire().expect("free");
        let served = Arc::new(AtomicUsize::new(0));
        let waiters: Vec<_> = (0..5)
            .map(|_| {
                let (l, served) = (l.clone(), served.clone());
                tokio::spawn(async move {
                    let permit = l.acquire(Duration::from_secs(10)).await;
                    served.fetch_add(1, SeqCst);
                    // Hold the slot a while so the others must wait for it.
                    tokio::time::sleep(10 * MS).await;
                    permit.map(drop)
                })
            })
            .collect();
        tokio::time::sleep(MS).await;
        assert_eq!(served.load(SeqCst), 0);
        drop(first);
        for w in waiters {
            assert_eq!(w.await.expect("task"), Ok(()));
        }
        assert_eq!(served.load(SeqCst), 5);
    }
}
