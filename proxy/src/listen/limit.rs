//! The connection cap of the traffic listeners: each holds at most
//! `max_connections_per_listener` connections at once, and closes more at accept (counted in
//! `weft_connections_refused_total`). Pingora accepts without a limit of its own; without this
//! a flood of idle connections (each waiting out its handshake or first-bytes timeout) could
//! take every file descriptor the sidecar has.
//!
//! The inbound port, the one other pods reach, also caps each peer address at a quarter of
//! the listener's cap ([`peer_share`]), so one hostile workload filling its share with silent
//! connections leaves the rest to everyone else.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Connections one peer address may hold on the inbound port: a quarter of the listener's
/// cap (at least one). A caller needs few (HTTP/2 multiplexes, tunnels are one each).
pub fn peer_share(max: usize) -> usize {
    (max / 4).max(1)
}

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

/// Open connections per listener, and per peer address on the inbound port, shared by every
/// worker.
#[derive(Debug, Default)]
pub struct Open {
    counts: [AtomicUsize; 3],
    /// Inbound connections per peer address; an address leaves when its last one closes, so
    /// the map never has more entries than the listener has connections.
    peers: Mutex<HashMap<IpAddr, usize>>,
}

/// One open connection; its slots are freed when this is dropped.
#[derive(Debug)]
pub struct Held {
    open: Arc<Open>,
    listener: Listener,
    peer: Option<IpAddr>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.open.counts[self.listener as usize].fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.peer {
            let mut peers = self.open.peers();
            if let Some(n) = peers.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    peers.remove(&ip);
                }
            }
        }
    }
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The listener holds its cap.
    Limit,
    /// This peer address holds its share of the inbound port.
    PeerLimit,
}

impl Refused {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Limit => "limit",
            Refused::PeerLimit => "peer_limit",
        }
    }
}

impl Open {
    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take a slot of `listener` if fewer than `max` are held, and on the inbound port one of
    /// `peer`'s share ([`peer_share`]); the reason when either is full.
    pub fn try_hold(
        self: &Arc<Self>,
        listener: Listener,
        max: usize,
        peer: Option<IpAddr>,
    ) -> Result<Held, Refused> {
        let count = &self.counts[listener as usize];
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| Refused::Limit)?;
        let peer = peer.filter(|_| listener == Listener::Inbound);
        if let Some(ip) = peer {
            let mut peers = self.peers();
            let n = peers.entry(ip).or_insert(0);
            if *n >= peer_share(max) {
                drop(peers);
                count.fetch_sub(1, Ordering::AcqRel);
                return Err(Refused::PeerLimit);
            }
            *n += 1;
        }
        Ok(Held {
            open: self.clone(),
            listener,
            peer,
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
        let a = open.try_hold(Listener::Inbound, 2, None).expect("first");
        let b = open.try_hold(Listener::Inbound, 2, None).expect("second");
        assert_eq!(
            open.try_hold(Listener::Inbound, 2, None).err(),
            Some(Refused::Limit)
        );
        // Another listener has its own count.
        let c = open
            .try_hold(Listener::Outbound, 2, None)
            .expect("outbound");
        drop(a);
        assert_eq!(open.held(Listener::Inbound), 1);
        let d = open
            .try_hold(Listener::Inbound, 2, None)
            .expect("freed slot");
        drop((b, c, d));
        assert_eq!(open.held(Listener::Inbound), 0);
        assert_eq!(open.held(Listener::Outbound), 0);
    }

    #[test]
    fn one_peer_holds_at_most_its_share_of_the_inbound_port() {
        let open = Arc::new(Open::default());
        let (hostile, other) = (Some([127, 0, 0, 2].into()), Some([127, 0, 0, 1].into()));
        let held: Vec<_> = (0..2)
            .map(|_| open.try_hold(Listener::Inbound, 8, hostile).expect("share"))
            .collect();
        assert_eq!(
            open.try_hold(Listener::Inbound, 8, hostile).err(),
            Some(Refused::PeerLimit)
        );
        // The refusal took no slot; others are served.
        assert_eq!(open.held(Listener::Inbound), 2);
        let o = open
            .try_hold(Listener::Inbound, 8, other)
            .expect("another peer");
        // The outbound port (loopback, the app's) has no per-peer share.
        let outs: Vec<_> = (0..4)
            .map(|_| {
                open.try_hold(Listener::Outbound, 8, other)
                    .expect("outbound")
            })
            .collect();
        drop((held, o, outs));
        assert_eq!(open.held(Listener::Inbound), 0);
        assert!(
            open.peers().is_empty(),
            "addresses leave with their last connection"
        );
    }
}
