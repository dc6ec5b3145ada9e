//! The outbound request's state between Pingora's phases: what routing found, the attempts
//! made so far, and what the logging phase reports.

use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_resilience::limiter::Permit;

use crate::drain::Working;
use crate::errors::Failure;
use crate::outbound::balance::InFlight;
use crate::outbound::endpoint::Chosen;
use crate::outbound::route::{Destination, RouteState};
use crate::store::Snapshot;
use crate::telemetry::hop::HopState;

/// Per-request state.
#[derive(Default)]
pub struct OutCtx {
    /// The snapshot the request started with.
    pub(super) snap: Option<Arc<Snapshot>>,
    /// The destination, once found.
    pub(super) dest: Option<Arc<Destination>>,
    /// The matched route, once matched.
    pub(super) route: Option<Arc<RouteState>>,
    /// The endpoint of the current attempt.
    pub(super) endpoint: Option<Chosen>,
    /// When the route's timeout ends.
    pub(super) deadline: Option<Instant>,
    /// The current attempt, for the balancer's latency estimate.
    pub(super) in_flight: Option<InFlight>,
    /// A failure the sidecar raised itself, for `fail_to_proxy` to send.
    pub(super) failure: Option<Failure>,
    /// Attempts sent to endpoints so far.
    pub(super) attempts: u32,
    /// Endpoints tried (bit per index below 64), so a retry goes elsewhere.
    pub(super) tried: u64,
    /// Wait before the next attempt.
    pub(super) backoff: Option<Duration>,
    /// `upstream_response_filter` already chose to retry this error.
    pub(super) retry_decided: bool,
    /// The request is an upgrade the mesh carries ([`crate::upgrade`]): its own HTTP/1.1
    /// connection to the peer, no retry once the switch was answered.
    pub(super) upgrade: bool,
    /// The upgrade is an HTTP/2 extended CONNECT: a stream on the pooled HTTP/2 connection
    /// rather than a connection of its own.
    pub(super) extended: bool,
    /// The concurrency slot, held until the request is logged.
    pub(super) permit: Option<Permit>,
    /// What is reported when the request ends.
    pub(super) hop: HopState,
    /// Keeps a draining sidecar up until the request ends.
    pub(super) _working: Option<Working>,
}

impl OutCtx {
    /// The destination and, if chosen, the endpoint, for error messages.
    pub(super) fn endpoint_name(&self) -> String {
        let Some(d) = &self.dest else {
            return String::new();
        };
        match self.endpoint.and_then(|c| d.endpoints.get(c.ep)) {
            Some(addr) => format!("{} endpoint {addr}", d.name),
            None => d.name.clone(),
        }
    }

    /// The matched route's timeout (none for an upgrade, which `idle_timeout` bounds).
    pub(super) fn timeout(&self) -> Option<Duration> {
        if self.upgrade {
            return None;
        }
        self.route.as_ref()?.route.timeout
    }

    /// The endpoint's address, once one was chosen.
    pub(super) fn endpoint_addr(&self) -> Option<std::net::SocketAddr> {
        let d = self.dest.as_ref()?;
        d.endpoints.get(self.endpoint?.ep).copied()
    }
}
