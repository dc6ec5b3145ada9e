//! Outlier ejection (circuit breaking per endpoint), after Envoy's consecutive-5xx detector.
//!
//! An endpoint that fails `consecutive_failures` times in a row is ejected for
//! `base_ejection × 2^(k−1)` (capped at `max_ejection`), `k` counting its ejections. When the
//! ejection expires the endpoint is half-open: [`OutlierDetector::admit`] lets exactly one
//! probe request through (a CAS on the probe slot), and only that probe's outcome, reported
//! with [`OutlierDetector::record_probe`], ends the ejection (success) or renews it, longer
//! (failure). Outcomes of requests admitted before the ejection (stragglers) arrive through
//! [`OutlierDetector::record`] and are ignored while the endpoint is ejected or half-open, so
//! a slow success from before cannot return a broken endpoint.
//!
//! A probe whose outcome never comes (its request was dropped) would strand the endpoint, so
//! a probe older than [`OutlierDetector::probe_timeout`] = `max(base_ejection, 10 s)` no
//! longer holds the slot. Any probe outcome that arrives while the endpoint is half-open with
//! a probe in flight counts, whichever of an expired and a newer probe reports first; the
//! later one then finds the endpoint healthy (counted as a normal request) or ejected anew
//! (ignored).
//!
//! At most `max(1, ⌊n × max_ejected_percent / 100⌋)` endpoints are ejected or half-open at a
//! time, so a fleet-wide failure (most likely a bad client or a shared dependency) does not
//! eject every endpoint. The cap is checked by scanning, not reserved: two endpoints crossing
//! the threshold at the same instant may both be ejected.
//!
//! Every state lives in [`EndpointHealth`] atomics; the detector itself is immutable, so a
//! config reload builds a new detector around the same `Arc<EndpointHealth>`s and the state
//! carries over.

use std::sync::atomic::{
    AtomicU32, AtomicU64,
    Ordering::{AcqRel, Acquire, Relaxed, Release},
};
use std::sync::Arc;
use std::time::Duration;

use crate::backoff::exp_capped;
use crate::clock::{nanos, Nanos};

/// Shortest time a probe holds the half-open slot before another may replace it.
pub const MIN_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Outlier ejection parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutlierConfig {
    /// Consecutive failures that eject an endpoint; 0 disables ejection.
    pub consecutive_failures: u32,
    /// Length of the first ejection; each further one doubles it.
    pub base_ejection: Duration,
    /// Cap on the ejection length.
    pub max_ejection: Duration,
    /// Share of endpoints that may be ejected at once (at least one always may).
    pub max_ejected_percent: u8,
}

impl Default for OutlierConfig {
    /// 5 consecutive failures (as Envoy), 10 s first ejection, 300 s cap (as Envoy), at most
    /// half the endpoints out.
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

/// Result of [`OutlierDetector::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Healthy: send, then report with [`OutlierDetector::record`].
    Healthy,
    /// This request is the half-open probe: send, then report with
    /// [`OutlierDetector::record_probe`] (or [`OutlierDetector::abandon_probe`] if not sent).
    Probe,
    /// Ejected, or another request holds the probe slot: do not send here.
    Rejected,
}

/// A change of ejection state caused by a recorded outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The endpoint was ejected (or its ejection renewed) for this long.
    Ejected(Duration),
    /// The probe succeeded: the endpoint is healthy again.
    Returned,
}

/// Ejection state of an endpoint at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthState {
    /// Takes traffic.
    Healthy,
    /// Ejected, and the ejection has not expired.
    Ejected,
    /// Ejection expired: waiting for, or running, the probe that decides.
    HalfOpen,
}

/// Ejection state of one endpoint, all atomics. Share it as `Arc<EndpointHealth>` across
/// config reloads so ejections survive them.
#[derive(Debug, Default)]
pub struct EndpointHealth {
    /// Failures in a row while healthy.
    failures: AtomicU32,
    /// 0 while healthy, else the instant the ejection ends (at least 1).
    ejected_until: AtomicU64,
    /// 0 when no probe is in flight, else 1 + the instant it was admitted.
    probe: AtomicU64,
    /// `k` of the latest ejection: the exponent of its length.
    level: AtomicU32,
    /// When the endpoint last returned from an ejection.
    returned_at: AtomicU64,
    /// Ejections so far, renewals included.
    ejections: AtomicU32,
}

/// Outlier ejection over a fixed set of endpoints, addressed by index.
///
/// Methods taking `ep` panic if `ep >= len()`, like slice indexing.
#[derive(Debug)]
pub struct OutlierDetector {
    cfg: OutlierConfig,
    endpoints: Vec<Arc<EndpointHealth>>,
    cap: usize,
    probe_timeout: Nanos,
}

impl OutlierDetector {
    /// A detector over `endpoints`, which keep whatever state they already carry.
    pub fn new(cfg: OutlierConfig, endpoints: Vec<Arc<EndpointHealth>>) -> Self {
        let pct = usize::from(cfg.max_ejected_percent.min(100));
        Self {
            cap: (endpoints.len() * pct / 100).max(1),
            probe_timeout: nanos(cfg.base_ejection.max(MIN_PROBE_TIMEOUT)),
            cfg,
            endpoints,
        }
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// True when there are no endpoints.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// The configuration.
    pub fn config(&self) -> OutlierConfig {
        self.cfg
    }

    /// The shared state of endpoint `ep` (hand it to the next detector on reload).
    pub fn health(&self, ep: usize) -> &Arc<EndpointHealth> {
        &self.endpoints[ep]
    }

    /// How long a probe holds the half-open slot: `max(base_ejection, 10 s)`, long enough for
    /// any sane request, short enough that a lost probe does not strand the endpoint.
    pub fn probe_timeout(&self) -> Duration {
        Duration::from_nanos(self.probe_timeout)
    }

    fn disabled(&self) -> bool {
        self.cfg.consecutive_failures == 0
    }

    fn probe_live(&self, probe: u64, now: Nanos) -> bool {
        probe != 0 && now.saturating_sub(probe - 1) < self.probe_timeout
    }

    /// Whether a request may be routed to `ep` now: healthy, or half-open with the probe slot
    /// free. A pure read, cheap enough to filter every candidate with.
    pub fn selectable(&self, ep: usize, now: Nanos) -> bool {
        if self.disabled() {
            return true;
        }
        let h = &self.endpoints[ep];
        match h.ejected_until.load(Acquire) {
            0 => true,
            until if now < until => false,
            _ => !self.probe_live(h.probe.load(Acquire), now),
        }
    }

    /// Admit one request to `ep`, the endpoint finally chosen. When half-open, the first
    /// caller claims the probe slot and gets [`Admission::Probe`]; the rest are rejected.
    pub fn admit(&self, ep: usize, now: Nanos) -> Admission {
        if self.disabled() {
            return Admission::Healthy;
        }
        let h = &self.endpoints[ep];
        let until = h.ejected_until.load(Acquire);
        if until == 0 {
            return Admission::Healthy;
        }
        let probe = h.probe.load(Acquire);
        if now < until || self.probe_live(probe, now) {
            return Admission::Rejected;
        }
        let claim = now.saturating_add(1);
        if h.probe
            .compare_exchange(probe, claim, AcqRel, Relaxed)
            .is_err()
        {
            return Admission::Rejected;
        }
        // The endpoint may have returned and been ejected again between the first load and
        // the claim; then this claim belongs to no live half-open period: undo it.
        match h.ejected_until.load(Acquire) {
            current if current == until => Admission::Probe,
            current => {
                let _ = h.probe.compare_exchange(claim, 0, AcqRel, Relaxed);
                if current == 0 {
                    Admission::Healthy
                } else {
                    Admission::Rejected
                }
            }
        }
    }

    /// Report the outcome of a request admitted as [`Admission::Healthy`].
    ///
    /// While the endpoint is ejected or half-open this is a straggler and is ignored. A
    /// success only clears the failure count (and writes only when it is nonzero, keeping
    /// the hot path free of cache-line writes); the failure that completes
    /// `consecutive_failures` ejects the endpoint if the cap allows, else the count restarts.
    pub fn record(&self, ep: usize, success: bool, now: Nanos) -> Option<Transition> {
        if self.disabled() {
            return None;
        }
        let h = &self.endpoints[ep];
        if success {
            if h.failures.load(Relaxed) != 0 {
                h.failures.store(0, Relaxed);
            }
            return None;
        }
        if h.ejected_until.load(Acquire) != 0 {
            return None;
        }
        // Exactly one caller sees the count reach the threshold; it alone decides.
        if h.failures.fetch_add(1, Relaxed).wrapping_add(1) != self.cfg.consecutive_failures {
            return None;
        }
        self.eject_healthy(h, now)
    }

    fn eject_healthy(&self, h: &EndpointHealth, now: Nanos) -> Option<Transition> {
        let out = self
            .endpoints
            .iter()
            .filter(|e| e.ejected_until.load(Relaxed) != 0)
            .count();
        if out >= self.cap {
            h.failures.store(0, Relaxed);
            return None;
        }
        // The multiplier is forgiven once the endpoint has stayed up for max_ejection since
        // it last returned; computing that here, lazily, keeps successes write-free.
        let prev = h.level.load(Relaxed);
        let forgiven =
            now.saturating_sub(h.returned_at.load(Relaxed)) >= nanos(self.cfg.max_ejection);
        let level = if forgiven { 1 } else { prev.saturating_add(1) };
        let (time, until) = self.ejection(level, now);
        if h.ejected_until
            .compare_exchange(0, until, AcqRel, Relaxed)
            .is_err()
        {
            return None;
        }
        h.probe.store(0, Release);
        h.level.store(level, Relaxed);
        h.failures.store(0, Relaxed);
        h.ejections.fetch_add(1, Relaxed);
        Some(Transition::Ejected(time))
    }

    /// Length of ejection number `level` and its end as stored (never 0, which means
    /// healthy).
    fn ejection(&self, level: u32, now: Nanos) -> (Duration, Nanos) {
        let time = exp_capped(
            self.cfg.base_ejection,
            self.cfg.max_ejection,
            level.saturating_sub(1),
        );
        (time, now.saturating_add(nanos(time)).max(1))
    }

    /// Report the outcome of a request admitted as [`Admission::Probe`]: success returns the
    /// endpoint, failure ejects it again for the next longer time.
    ///
    /// If the endpoint is healthy by now (another probe returned it) this counts as a normal
    /// [`record`](Self::record); if it is ejected anew, or has no probe in flight, it is
    /// ignored.
    pub fn record_probe(&self, ep: usize, success: bool, now: Nanos) -> Option<Transition> {
        if self.disabled() {
            return None;
        }
        let h = &self.endpoints[ep];
        let until = h.ejected_until.load(Acquire);
        if until == 0 {
            return self.record(ep, success, now);
        }
        if now < until || h.probe.load(Acquire) == 0 {
            return None;
        }
        if success {
            // Written before the state flips so a later ejection reads it; harmless if the
            // swap below loses, as only a return makes the endpoint healthy again.
            h.returned_at.store(now, Relaxed);
            h.failures.store(0, Relaxed);
            h.ejected_until
                .compare_exchange(until, 0, AcqRel, Relaxed)
                .ok()?;
            h.probe.store(0, Release);
            return Some(Transition::Returned);
        }
        let level = h.level.load(Relaxed).saturating_add(1);
        let (time, next) = self.ejection(level, now);
        h.ejected_until
            .compare_exchange(until, next, AcqRel, Relaxed)
            .ok()?;
        h.probe.store(0, Release);
        h.level.store(level, Relaxed);
        h.ejections.fetch_add(1, Relaxed);
        Some(Transition::Ejected(time))
    }

    /// Report an outcome with the admission it was sent under: [`Admission::Probe`] goes to
    /// [`record_probe`](Self::record_probe), anything else to [`record`](Self::record).
    pub fn record_admitted(
        &self,
        ep: usize,
        admission: Admission,
        success: bool,
        now: Nanos,
    ) -> Option<Transition> {
        match admission {
            Admission::Probe => self.record_probe(ep, success, now),
            _ => self.record(ep, success, now),
        }
    }

    /// Free the probe slot claimed by `admit(ep, admitted_at)` when the probe was never
    /// sent or its outcome is unknown (cancelled), so the next request may probe at once
    /// rather than after the probe timeout. No effect if the slot has moved on.
    pub fn abandon_probe(&self, ep: usize, admitted_at: Nanos) {
        let _ = self.endpoints[ep].probe.compare_exchange(
            admitted_at.saturating_add(1),
            0,
            AcqRel,
            Relaxed,
        );
    }

    /// The state of `ep` at `now`.
    pub fn state(&self, ep: usize, now: Nanos) -> HealthState {
        if self.disabled() {
            return HealthState::Healthy;
        }
        match self.endpoints[ep].ejected_until.load(Acquire) {
            0 => HealthState::Healthy,
            until if now < until => HealthState::Ejected,
            _ => HealthState::HalfOpen,
        }
    }

    /// Ejections of `ep` so far, renewals after a failed probe included (for metrics).
    pub fn ejections(&self, ep: usize) -> u32 {
        self.endpoints[ep].ejections.load(Relaxed)
    }
}

#[cfg(test)]
mod tests;
