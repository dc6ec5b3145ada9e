//! Graceful drain on SIGTERM: stop accepting (Pingora's shutdown broadcast), let in-flight
//! requests and tunnels finish up to the drain timeout, then exit 0 as soon as none remain.
//!
//! Pingora's own graceful terminate always sleeps its whole grace period; counting in-flight
//! work ourselves lets the sidecar leave the moment it is idle.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, SignalKind};

/// Work to do just before the process exits (flush queued spans); never on the hot path.
type ExitHook = Box<dyn FnOnce() + Send>;

/// Counts in-flight requests and tunnels.
#[derive(Default)]
pub struct Drain {
    in_flight: AtomicUsize,
    draining: AtomicBool,
    /// Wakes [`Drain::draining`] waiters when SIGTERM arrives.
    started: tokio::sync::Notify,
    /// Exit holds ([`Drain::hold_exit`]) not yet released.
    holds: AtomicUsize,
    at_exit: Mutex<Vec<ExitHook>>,
}

impl std::fmt::Debug for Drain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drain")
            .field("in_flight", &self.in_flight)
            .field("draining", &self.draining)
            .finish()
    }
}

/// One unit of in-flight work; dropping it ends the work.
#[derive(Debug)]
pub struct Working(Arc<Drain>);

impl Drop for Working {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Delays the exit of a draining sidecar until dropped (see [`Drain::hold_exit`]).
#[derive(Debug)]
pub struct ExitHold(Arc<Drain>);

impl Drop for ExitHold {
    fn drop(&mut self) {
        self.0.holds.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drain {
    /// Keep the process from exiting after a drain until the hold is dropped (at most until the
    /// drain timeout): the control-plane session holds one while its stream is open, so it can
    /// say `Draining` however slowly the control thread is scheduled, and each HTTP/2
    /// connection holds one until its task has flushed the last responses. Not counted as
    /// in-flight work.
    pub fn hold_exit(self: &Arc<Self>) -> ExitHold {
        self.holds.fetch_add(1, Ordering::AcqRel);
        ExitHold(self.clone())
    }

    /// Start a unit of work.
    pub fn enter(self: &Arc<Self>) -> Working {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Working(self.clone())
    }

    /// Work in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Run `hook` when the drain ends, just before the process exits.
    pub fn at_exit(&self, hook: impl FnOnce() + Send + 'static) {
        if let Ok(mut hooks) = self.at_exit.lock() {
            hooks.push(Box::new(hook));
        }
    }

    /// True once SIGTERM arrived.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Resolves once the drain has started (at once if it already has); any runtime may await
    /// it (the control thread does, to tell the control plane).
    pub async fn draining(&self) {
        loop {
            let notified = self.started.notified();
            tokio::pin!(notified);
            // Registered before the check, so a drain starting in between still wakes us.
            notified.as_mut().enable();
            if self.is_draining() {
                return;
            }
            notified.await;
        }
    }

    /// Mark the drain started and wake every [`Drain::draining`] waiter.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
        self.started.notify_waiters();
    }

    /// Wait (on a plain thread, outside every runtime) until nothing is in flight or `limit`
    /// passes, then end the process with status 0.
    fn exit_when_idle(self: Arc<Self>, limit: Duration) {
        std::thread::spawn(move || {
            let start = Instant::now();
            // Give the listeners a moment to close so nothing new slips in after the check.
            std::thread::sleep(Duration::from_millis(50));
            while (self.in_flight() > 0 || self.holds.load(Ordering::Acquire) > 0)
                && start.elapsed() < limit
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            let left = self.in_flight();
            if left > 0 {
                log::warn!("drain timeout {limit:?} reached with {left} in flight; exiting");
            } else {
                log::info!("drained in {:?}; exiting", start.elapsed());
            }
            let hooks = self.at_exit.lock().map(|mut h| std::mem::take(&mut *h));
            for hook in hooks.unwrap_or_default() {
                hook();
            }
            std::process::exit(0);
        });
    }
}

/// Pingora shutdown watcher: SIGTERM and SIGINT drain; SIGQUIT (Pingora's fd-passing upgrade,
/// which a sidecar does not use) is treated the same.
pub struct DrainSignals {
    /// The counter to wait on.
    pub drain: Arc<Drain>,
    /// Drain limit.
    pub limit: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for DrainSignals {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            log::error!("cannot install signal handlers; SIGTERM will not drain");
            return std::future::pending().await;
        };
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = quit.recv() => "SIGQUIT",
        };
        log::info!(
            "{name}: draining {} in flight, up to {:?}",
            self.drain.in_flight(),
            self.limit
        );
        self.drain.start_draining();
        self.drain.clone().exit_when_idle(self.limit);
        ShutdownSignal::GracefulTerminate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn draining_wakes_waiters_and_resolves_at_once_afterwards() {
        let drain = Arc::new(Drain::default());
        let waiter = tokio::spawn({
            let drain = drain.clone();
            async move { drain.draining().await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished());
        drain.start_draining();
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("woken")
            .expect("task");
        tokio::time::timeout(Duration::from_millis(1), drain.draining())
            .await
            .expect("already draining");
        assert!(drain.is_draining());
    }
}
