//! The inbound authorize stage: a request from a proven caller passes the certificate-expiry
//! check (a connection outlives its handshake), this service's authorization rules, and its
//! inbound rate limit, or is refused with the reason.

use pingora_http::RequestHeader;
use weft_resilience::Nanos;

use crate::errors::{RateScope, Reject};
use crate::inbound::accept::PeerIdentity;
use crate::store::{PolicySource, Snapshot};

/// The caller of a request: its connection must have proven a mesh identity whose
/// certificate has not expired since.
pub fn caller(peer: Option<&PeerIdentity>) -> Result<&PeerIdentity, Reject> {
    let p = peer.ok_or(Reject::NoIdentity)?;
    // New handshakes refuse an expired certificate; this refuses it on a connection opened
    // before it expired.
    if p.not_after <= std::time::SystemTime::now() {
        return Err(Reject::CertExpired);
    }
    Ok(p)
}

/// What a caller asks of this sidecar's app.
#[derive(Debug, Clone, Copy)]
pub enum Ask<'a> {
    /// An HTTP request (gRPC included).
    Http(&'a RequestHeader),
    /// A TCP tunnel: it has neither a method nor a path, so only rules without them allow it.
    Tunnel,
}

/// The one admission rule for everything that reaches this sidecar's app from the mesh,
/// requests and tunnels alike: a policy must be known (fail closed before the first
/// control-plane snapshot), then an authorization rule must allow `caller` (a proven SPIFFE
/// identity) to ask it. Rate limits are [`authorize`]'s, for requests only.
pub fn admit(snap: &Snapshot, caller: &str, ask: Ask<'_>) -> Result<(), Reject> {
    if snap.policy == PolicySource::Pending {
        return Err(Reject::NoPolicy);
    }
    let allowed = match ask {
        Ask::Http(req) => snap
            .authz
            .check_http(caller, &req.method, req.uri.path())
            .is_some(),
        Ask::Tunnel => snap.authz.allows_tcp(caller),
    };
    if allowed {
        return Ok(());
    }
    let (method, path) = match ask {
        Ask::Http(req) => (req.method.to_string(), req.uri.path().to_owned()),
        // Reads "... allows {caller} to open a TCP tunnel".
        Ask::Tunnel => ("open".to_owned(), "a TCP tunnel".to_owned()),
    };
    Err(Reject::Denied {
        service: snap.own.name.clone(),
        caller: caller.to_owned(),
        method,
        path,
    })
}

/// Whether `caller` may make request `req` to this sidecar's app at `now`: [`admit`], then
/// the inbound rate limit must have a token for it.
pub fn authorize(
    snap: &Snapshot,
    caller: &str,
    req: &RequestHeader,
    now: Nanos,
) -> Result<(), Reject> {
    admit(snap, caller, Ask::Http(req))?;
    if let Some(Err(wait)) = snap.inbound_rate.as_ref().map(|b| b.try_take(caller, now)) {
        return Err(Reject::RateLimited {
            wait,
            what: RateScope::Inbound {
                service: snap.own.name.clone(),
            },
        });
    }
    Ok(())
}
