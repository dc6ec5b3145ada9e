//! The connection cap of the traffic listeners: each holds at most
//! `max_connections_per_listener` connections at once, and closes more at accept (counted in
//! `weft_connections_refused_total`). Pingora accepts without a limit of its own; without this
//! a flood of idle connections (each waiting out its handshake or first-bytes timeout) could
//! take every file descriptor the sidecar has.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Which traffic listener a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The inbound mTLS port.
    Inbound,
    /// The outbound HTTP port.
    Outbound,
    /// The dedicated outbound ports, together.
    Dedicated,
}

impl Listener {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Inbound => "inbound",
            Listener::Outbound => "outbound",
            Listener::Dedicated => "dedicated",
        }
    }
}

/// Open connections per listener, shared by every worker.
#[derive(Debug, Default)]
pub struct Open {
    counts: [AtomicUsize; 3],
}

/// One open connection; its slot is freed when this is dropped.
#[derive(Debug)]
pub struct Held {
    open: Arc<Open>,
    listener: Listener,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.open.counts[self.listener as usize].fetch_sub(1, Ordering::AcqRel);
    }
}

impl Open {
    /// Take a slot of `listener` if fewer than `max` are held; `None` when it is full.
    pub fn try_hold(self: &Arc<Self>, listener: Listener, max: usize) -> Option<Held> {
        let count = &self.counts[listener as usize];
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Held {
            open: self.clone(),
            listener,
        })
    }

    /// Connections `listener` holds now.
    pub fn held(&self, listener: Listener) -> usize {
        self.counts[listener as usize].load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_per_listener_and_freed_on_drop() {
        let open = Arc::new(Open::default());
        let a = open.try_hold(Listener::Inbound, 2).expect("first");
        let b = open.try_hold(Listener::Inbound, 2).expect("second");
        assert!(
            open.try_hold(Listener::Inbound, 2).is_none(),
            "over the cap"
        );
        // Another listener has its own count.
        let c = open.try_hold(Listener::Outbound, 2).expect("outbound");
        drop(a);
        assert_eq!(open.held(Listener::Inbound), 1);
        let d = open.try_hold(Listener::Inbound, 2).expect("freed slot");
        drop((b, c, d));
        assert_eq!(open.held(Listener::Inbound), 0);
        assert_eq!(open.held(Listener::Outbound), 0);
    }
}
