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

/// Whether `caller` may make request `req` to this sidecar's app at `now`: a policy must be
/// known (fail closed before the first control-plane snapshot), an authorization rule must
/// allow it, then the inbound rate limit must have a token for it.
pub fn authorize(
    snap: &Snapshot,
    caller: &str,
    req: &RequestHeader,
    now: Nanos,
) -> Result<(), Reject> {
    if snap.policy == PolicySource::Pending {
        return Err(Reject::NoPolicy);
    }
    if snap
        .authz
        .check_http(caller, &req.method, req.uri.path())
        .is_none()
    {
        return Err(Reject::Denied {
            service: snap.own.name.clone(),
            caller: caller.to_owned(),
            method: req.method.to_string(),
            path: req.uri.path().to_owned(),
        });
    }
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
