//! The gateway's per-route admission step: the ONE place in the request path where a route
//! may refuse a request after it matched and before anything is forwarded (authentication,
//! CORS preflight answers, per-client rate limits). [`Gateway::request_filter`] calls
//! [`admit`] with the matched route and the request; `Ok` goes on into the mesh, `Err` is
//! answered with its status.
//!
//! Today it admits every request: the stages that refuse (JWT / API keys, CORS, per-client
//! limits) are built under `gateway/auth/` and chain here, each reading the route's optional
//! config field.
//!
//! [`Gateway::request_filter`]: pingora_proxy::ProxyHttp::request_filter

use std::net::IpAddr;

use pingora_proxy::Session;

use crate::errors::Failure;
use crate::gateway::state::RouteEntry;

/// What admission knows about the request besides the session.
pub struct Caller {
    /// The client's address (the peer's, or from a trusted proxy's `X-Forwarded-For`: see
    /// [`crate::gateway::hygiene::client_ip`]).
    pub client_ip: Option<IpAddr>,
}

/// Admit or refuse a request for `route`. It may also edit the request (claims forwarded as
/// headers, a token stripped) before the gateway forwards it.
pub async fn admit(
    route: &RouteEntry,
    session: &mut Session,
    caller: &Caller,
) -> Result<(), Failure> {
    let _ = (route, session, caller);
    Ok(())
}
