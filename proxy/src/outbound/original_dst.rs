//! The original-destination stage: which mesh service a captured connection was for.
//!
//! With capture (`weft-proxy init`), the app's connection to `10.0.3.7:8080` arrives on the
//! outbound listener; nftables' `redirect` recorded the address the app dialled in conntrack,
//! and `SO_ORIGINAL_DST` reads it back (Pingora's `SocketDigest::original_dst` makes the
//! call, so no unsafe code is needed here). That address names the destination: an
//! endpoint's exact address, a service's virtual IP (a host of the service that is an IP
//! address, such as its Kubernetes ClusterIP), or a pod IP of one of its endpoints on any
//! port. An address no service has is egress (see `listen::captured`).
//!
//! A connection made to the outbound listener itself (no capture, or capture of loopback
//! left off) has no original destination of its own: conntrack reports the listener's
//! address, or nothing when conntrack is not loaded. Both mean "not captured", and the
//! connection is routed by Host as before.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use pingora_core::protocols::SocketDigest;
use pingora_proxy::Session;
use weft_policy::Service;

/// The address a captured connection was made to; `None` when it was not captured.
pub fn captured(digest: &SocketDigest) -> Option<SocketAddr> {
    let original = *digest.original_dst()?.as_inet()?;
    let local = digest.local_addr().and_then(|a| a.as_inet().copied());
    (Some(original) != local).then_some(original)
}

/// The original address of the connection `session` arrived on, when it was captured: the
/// routing stage looks it up ([`Routes::for_address`](crate::outbound::route::Routes)) as its
/// last resort after the dedicated port and the Host (an unmodified client sends
/// `Host: 10.0.3.7:8080`, which names no service).
pub fn of_session(session: &Session) -> Option<SocketAddr> {
    let digest = session.digest()?.socket_digest.as_ref()?;
    captured(digest)
}

/// Destinations by address, built with the routing table. The first service to claim an
/// address keeps it, so a clash (two services listing one IP) resolves the same way on every
/// rebuild.
#[derive(Debug, Default)]
pub struct AddressIndex {
    /// Endpoint addresses, exact.
    exact: HashMap<SocketAddr, usize>,
    /// Virtual IPs (hosts that parse as IP addresses) and endpoint IPs.
    ip: HashMap<IpAddr, usize>,
}

impl AddressIndex {
    /// Index `svc`, destination number `idx`.
    pub fn add(&mut self, svc: &Service, idx: usize) {
        for h in &svc.hosts {
            if let Ok(ip) = h.parse::<IpAddr>() {
                self.ip.entry(ip).or_insert(idx);
            }
        }
        for e in &svc.endpoints {
            self.exact.entry(e.addr).or_insert(idx);
            // A loopback endpoint (every sidecar on one host) names no pod: a captured
            // connection never has a loopback destination anyway.
            let ip = e.addr.ip();
            if !ip.is_loopback() && !ip.is_unspecified() {
                self.ip.entry(ip).or_insert(idx);
            }
        }
    }

    /// The destination number for `addr`: exact endpoint first, then by IP.
    pub fn find(&self, addr: SocketAddr) -> Option<usize> {
        self.exact
            .get(&addr)
            .or_else(|| self.ip.get(&addr.ip()))
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use crate::outbound::route::test_support::routes;
    use crate::outbound::route::Routes;
    use crate::telemetry::metrics::Metrics;

    const MESH: &str = r#"services:
  - name: orders
    identity: spiffe://weft.local/ns/default/sa/orders
    hosts: [orders.shop, 10.96.0.10]
    endpoints: [{address: "10.0.3.7:15006"}, {address: "127.0.0.1:16001"}]
  - name: users
    identity: spiffe://weft.local/ns/default/sa/users
    hosts: [10.0.3.7]
    endpoints: [{address: "10.0.4.2:15006"}, {address: "10.0.3.7:15007"}]
"#;

    fn name(r: &Routes, addr: &str) -> Option<String> {
        r.for_address(addr.parse().expect("addr"))
            .map(|d| d.name.clone())
    }

    #[test]
    fn endpoints_and_virtual_ips_name_their_service_and_the_rest_is_egress() {
        let m = Metrics::new().expect("metrics");
        let r = routes(MESH, None, &m);
        // A pod IP on the app's port (not the sidecar's): the pod's service.
        assert_eq!(name(&r, "10.0.3.7:8080").as_deref(), Some("orders"));
        assert_eq!(name(&r, "10.0.4.2:5432").as_deref(), Some("users"));
        // The exact endpoint address wins over an IP another service claimed first.
        assert_eq!(name(&r, "10.0.3.7:15007").as_deref(), Some("users"));
        // A virtual IP, any port.
        assert_eq!(name(&r, "10.96.0.10:80").as_deref(), Some("orders"));
        // Unknown addresses, and loopback endpoints' IP on another port: egress.
        assert_eq!(name(&r, "192.0.2.1:443"), None);
        assert_eq!(name(&r, "127.0.0.1:9999"), None);
        assert_eq!(name(&r, "127.0.0.1:16001").as_deref(), Some("orders"));
    }
}
