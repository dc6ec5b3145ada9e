//! Admission of `Certify` calls: at most a few attest and sign at once, a bounded number wait
//! for a turn for a bounded time, and the rest are refused at once. The issuer keeps two
//! gates: one for first attestations (anyone who can reach the port may call) and one for
//! renewals (callers with a valid workload certificate), so an anonymous flood never delays
//! a renewal.
//!
//! Each admitted call runs on the blocking thread pool (signing costs CPU; a TokenReview may
//! wait up to its timeout on the API server). Unbounded, a flood of calls would take every
//! blocking thread and leave legitimate renewals queued behind it; bounded, the flood meets
//! `RESOURCE_EXHAUSTED` and a renewal waits behind at most [`Admission::concurrency`] calls
//! plus the queue.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Calls that attest and sign at once unless configured otherwise.
pub const DEFAULT_CONCURRENCY: usize = 8;
/// Calls that may wait for a turn unless configured otherwise.
pub const DEFAULT_QUEUE: usize = 64;
/// Longest a call waits for a turn.
pub const DEFAULT_QUEUE_WAIT: Duration = Duration::from_secs(5);
/// Longest one call may take, waiting included (below the sidecar's own 10 s limit, so the
/// sidecar hears why).
pub const CALL_DEADLINE: Duration = Duration::from_secs(8);

/// The bounds of one [`Admission`] gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Calls admitted at once (at least 1).
    pub concurrency: usize,
    /// Calls that may wait for a turn.
    pub queue: usize,
    /// Longest a call waits for a turn.
    pub queue_wait: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            concurrency: DEFAULT_CONCURRENCY,
            queue: DEFAULT_QUEUE,
            queue_wait: DEFAULT_QUEUE_WAIT,
        }
    }
}

/// Why a call was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    /// Every slot is busy and the queue is full.
    #[error("the certificate authority is busy ({busy} calls in progress, {queued} waiting); retry with backoff")]
    Full {
        /// Calls in progress.
        busy: usize,
        /// Calls waiting.
        queued: usize,
    },
    /// No slot freed up within the queue wait.
    #[error("the certificate authority is busy: no turn within {}; retry with backoff", humantime::format_duration(*.0))]
    Timeout(Duration),
}

/// The gate in front of attestation and signing. Cheap to share.
#[derive(Debug)]
pub struct Admission {
    slots: Arc<Semaphore>,
    concurrency: usize,
    queue: usize,
    waiting: AtomicUsize,
    queue_wait: Duration,
}

/// Counts a waiter while it waits (also when its future is dropped by a deadline).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    /// A gate with these limits.
    pub fn new(limits: Limits) -> Self {
        let concurrency = limits.concurrency.max(1);
        Self {
            slots: Arc::new(Semaphore::new(concurrency)),
            concurrency,
            queue: limits.queue,
            waiting: AtomicUsize::new(0),
            queue_wait: limits.queue_wait,
        }
    }

    /// Calls admitted at once.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// A turn: at once if a slot is free, else after waiting in the queue if there is room.
    /// The permit is held until the work it admits is done (move it into the blocking task).
    pub async fn admit(&self) -> Result<OwnedSemaphorePermit, Refused> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let queued = self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.waiting);
        if queued >= self.queue {
            return Err(Refused::Full {
                busy: self.concurrency,
                queued,
            });
        }
        match tokio::time::timeout(self.queue_wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; a closed one admits nobody.
            Ok(Err(_)) | Err(_) => Err(Refused::Timeout(self.queue_wait)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounds_work_and_queue_and_wait() {
        let gate = Admission::new(Limits {
            concurrency: 1,
            queue: 1,
            queue_wait: Duration::from_millis(50),
        });
        let held = gate.admit().await.expect("free slot");
        let queued = gate.admit();
        tokio::pin!(queued);
        // The first waiter takes the one queue place...
        assert!(futures_util::poll!(queued.as_mut()).is_pending());
        // ...so the next is refused at once.
        assert!(matches!(gate.admit().await, Err(Refused::Full { .. })));
        drop(held);
        let permit = queued.await.expect("turn after release");
        // A waiter whose turn does not come within the wait is refused.
        let e = gate.admit().await.expect_err("times out");
        assert_eq!(e, Refused::Timeout(Duration::from_millis(50)));
        drop(permit);
        assert!(gate.admit().await.is_ok());
    }
}
