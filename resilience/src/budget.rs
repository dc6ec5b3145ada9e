//! Retry budget (Finagle, Linkerd): over a trailing window, retries may add at most a fixed
//! ratio of the original requests, plus a small per-second minimum so low-traffic routes can
//! still retry. Unlike a per-request attempt cap it bounds the extra load retries put on a
//! failing upstream, which is what turns a partial outage into a retry storm.
//!
//! The window is a ring of [`SLOTS`] time slots of atomic counters. A slot is reused when its
//! epoch (slot number since the clock's zero) is older than the window, reset by whoever
//! first touches it in the new epoch. The reset is not atomic with the counters: a thread
//! that counts into a slot between another thread's epoch swap and its counter reset loses
//! that one count. So each rollover (once per `window / SLOTS`) can lose at most one deposit
//! and one withdrawal per thread racing on that slot, and concurrent `try_withdraw`s that
//! check the balance at the same instant can each take the last retry; both errors are
//! bounded by the number of concurrent callers and never accumulate across slots.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::clock::{nanos, Nanos};

/// Number of time slots the window is divided into.
pub const SLOTS: usize = 10;

/// Retry budget parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    /// Retries allowed per original request over the window (0.2 = 20 % extra load).
    pub ratio: f64,
    /// Retries per second allowed regardless of traffic.
    pub min_per_second: u32,
    /// Trailing window over which requests and retries are counted.
    pub window: Duration,
}

impl Default for BudgetConfig {
    /// Linkerd's and Finagle's defaults: 20 % plus 10 retries/s over 10 s.
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_second: 10,
            window: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Default)]
struct Slot {
    epoch: AtomicU64,
    deposits: AtomicU64,
    withdrawals: AtomicU64,
}

/// A lock-free retry budget shared by every request of one route or destination.
#[derive(Debug)]
pub struct RetryBudget {
    cfg: BudgetConfig,
    slot_ns: u64,
    /// `min_per_second × window` in retries, precomputed off the hot path.
    floor: f64,
    ratio: f64,
    slots: [Slot; SLOTS],
}

impl RetryBudget {
    /// A budget with nothing deposited or withdrawn yet.
    pub fn new(cfg: BudgetConfig) -> Self {
        Self {
            cfg,
            slot_ns: (nanos(cfg.window) / SLOTS as u64).max(1),
            floor: f64::from(cfg.min_per_second) * cfg.window.as_secs_f64(),
            // A negative or NaN ratio would make the allowance meaningless; treat it as 0.
            ratio: if cfg.ratio > 0.0 { cfg.ratio } else { 0.0 },
            slots: Default::default(),
        }
    }

    /// The configuration this budget was built with.
    pub fn config(&self) -> BudgetConfig {
        self.cfg
    }

    /// Count one original request (not a retry) at `now`.
    pub fn deposit(&self, now: Nanos) {
        self.slot(now).deposits.fetch_add(1, Relaxed);
    }

    /// Take one retry from the budget at `now`: true if allowed (and counted), false if the
    /// window's retries are already at `min_per_second × window + ratio × requests`.
    pub fn try_withdraw(&self, now: Nanos) -> bool {
        let (deposits, withdrawals) = self.totals(now);
        let allowance = self.floor + self.ratio * deposits as f64;
        if (withdrawals + 1) as f64 > allowance {
            return false;
        }
        self.slot(now).withdrawals.fetch_add(1, Relaxed);
        true
    }

    /// Requests and retries counted in the window ending at `now`.
    pub fn totals(&self, now: Nanos) -> (u64, u64) {
        let epoch = now / self.slot_ns;
        let (mut deposits, mut withdrawals) = (0, 0);
        for slot in &self.slots {
            // Slots still holding an epoch from before the window are stale, not cleared.
            if epoch.wrapping_sub(slot.epoch.load(Relaxed)) < SLOTS as u64 {
                deposits += slot.deposits.load(Relaxed);
                withdrawals += slot.withdrawals.load(Relaxed);
            }
        }
        (deposits, withdrawals)
    }

    /// The slot for `now`, reset first if it still holds an older epoch.
    fn slot(&self, now: Nanos) -> &Slot {
        let epoch = now / self.slot_ns;
        let slot = &self.slots[(epoch % SLOTS as u64) as usize];
        let seen = slot.epoch.load(Relaxed);
        // A newer epoch means a caller with a later `now` already took the slot: count into
        // it rather than wipe it.
        if seen < epoch
            && slot
                .epoch
                .compare_exchange(seen, epoch, Relaxed, Relaxed)
                .is_ok()
        {
            slot.deposits.store(0, Relaxed);
            slot.withdrawals.store(0, Relaxed);
        }
        slot
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self::new(BudgetConfig::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Nanos = 1_000_000_000;

    /// Offer `rate` requests/s for `secs` seconds, every one failing and asking for up to
    /// `retries_each` retries; returns (requests, retries granted).
    fn failing_load(b: &RetryBudget, rate: u64, secs: u64, retries_each: u32) -> (u64, u64) {
        let step = SEC / rate;
        let (mut requests, mut retries) = (0, 0);
        for i in 0..rate * secs {
            let now = i * step;
            b.deposit(now);
            requests += 1;
            for _ in 0..retries_each {
                if b.try_withdraw(now) {
                    retries += 1;
                }
            }
        }
        (requests, retries)
    }

    #[test]
    fn failing_load_is_capped_at_ratio_plus_minimum() {
        let cfg = BudgetConfig::default();
        for rate in [50, 100, 1000] {
            let b = RetryBudget::new(cfg);
            let (requests, retries) = failing_load(&b, rate, 60, 3);
            let share = retries as f64 / requests as f64;
            let bound = cfg.ratio + f64::from(cfg.min_per_second) / rate as f64;
            // Retries leave the window slot by slot as requests do, so in steady state each
            // slot grants its share of the minimum plus the ratio of its own requests: the
            // bound holds to within rounding, and the budget is used up to it.
            assert!(share <= bound + 0.005, "rate {rate}: {share} > {bound}");
            assert!(
                share >= bound - 0.01,
                "rate {rate}: budget unused: {share} < {bound}"
            );
        }
    }

    #[test]
    fn minimum_allowance_without_requests() {
        let b = RetryBudget::default();
        let granted = (0..1000).filter(|_| b.try_withdraw(5 * SEC)).count();
        assert_eq!(granted, 100, "10/s over a 10 s window");
    }

    #[test]
    fn ratio_alone_without_minimum() {
        let b = RetryBudget::new(BudgetConfig {
            ratio: 0.5,
            min_per_second: 0,
            window: Duration::from_secs(10),
        });
        assert!(!b.try_withdraw(0));
        for _ in 0..10 {
            b.deposit(0);
        }
        let granted = (0..100).filter(|_| b.try_withdraw(SEC)).count();
        assert_eq!(granted, 5);
    }

    #[test]
    fn old_requests_expire_out_of_the_window() {
        let b = RetryBudget::new(BudgetConfig {
            ratio: 1.0,
            min_per_second: 0,
            window: Duration::from_secs(10),
        });
        for _ in 0..100 {
            b.deposit(0);
        }
        assert_eq!(b.totals(9 * SEC), (100, 0));
        assert!(b.try_withdraw(9 * SEC));
        // At 11 s the slot holding the deposits has left the window; the retry has not.
        assert_eq!(b.totals(11 * SEC), (0, 1));
        assert!(!b.try_withdraw(11 * SEC));
    }

    #[test]
    fn retries_expire_too_and_the_minimum_refills() {
        let b = RetryBudget::default();
        assert_eq!((0..200).filter(|_| b.try_withdraw(0)).count(), 100);
        assert!(!b.try_withdraw(9 * SEC));
        assert_eq!((0..200).filter(|_| b.try_withdraw(10 * SEC)).count(), 100);
    }

    #[test]
    fn slot_reuse_resets_counts() {
        let b = RetryBudget::new(BudgetConfig {
            ratio: 1.0,
            min_per_second: 0,
            window: Duration::from_secs(1),
        });
        b.deposit(0);
        // 1 s later the same ring slot (epoch 10) is reused and starts from zero.
        b.deposit(SEC);
        assert_eq!(b.totals(SEC), (1, 0));
    }

    #[test]
    fn concurrent_use_is_safe() {
        let b = std::sync::Arc::new(RetryBudget::new(BudgetConfig {
            ratio: 0.1,
            min_per_second: 0,
            window: Duration::from_secs(10),
        }));
        let granted: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let b = b.clone();
                    s.spawn(move || {
                        (0..1000)
                            .filter(|_| {
                                b.deposit(SEC);
                                b.try_withdraw(SEC)
                            })
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        // No slot rolls over here, so only the check-then-count race applies: ≤ 1 per thread.
        assert!((399..=404).contains(&granted), "{granted}");
    }
}
