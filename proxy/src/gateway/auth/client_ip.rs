//! The client's IP: the TCP peer, unless the peer is a configured trusted proxy, in which
//! case `X-Forwarded-For` is read from the right (the hop nearest the gateway) past every
//! trusted proxy; the first address not trusted is the client. An untrusted peer's
//! `X-Forwarded-For` is ignored, so a client cannot pick its own rate-limit key.

use std::net::IpAddr;

use http::header::HeaderMap;
use weft_policy::gateway_auth::Cidr;

/// Entries of `X-Forwarded-For` read at most (from the right).
pub const MAX_HOPS: usize = 32;

fn trusted(ip: IpAddr, proxies: &[Cidr]) -> bool {
    proxies.iter().any(|c| c.contains(ip))
}

/// The client IP for a request from `peer` with `headers`.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, proxies: &[Cidr]) -> IpAddr {
    if !trusted(peer, proxies) {
        return peer;
    }
    // Several X-Forwarded-For fields are one list, in order (RFC 9110 §5.3).
    let fields: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let mut client = peer;
    for hop in fields.iter().rev().flat_map(|f| f.rsplit(',')).take(MAX_HOPS) {
        let Some(ip) = parse_hop(hop.trim()) else {
            // Garbage written by the hop we trust least so far: stop at that hop.
            return client;
        };
        client = ip;
        if !trusted(ip, proxies) {
            return ip;
        }
    }
    client
}

/// An address as proxies write them: `1.2.3.4`, `2001:db8::1`, `[2001:db8::1]:443`,
/// `1.2.3.4:80`.
fn parse_hop(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    s.parse::<std::net::SocketAddr>().ok().map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn xff(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_static(*v));
        }
        h
    }

    #[test]
    fn untrusted_peers_cannot_spoof() {
        let proxies = [Cidr::parse("10.0.0.0/8").expect("cidr")];
        assert_eq!(client_ip(ip("203.0.113.9"), &xff(&["1.1.1.1"]), &proxies), ip("203.0.113.9"));
    }

    #[test]
    fn trusted_chain_is_walked_from_the_right() {
        let proxies = [Cidr::parse("10.0.0.0/8").expect("cidr")];
        let peer = ip("10.0.0.1");
        // The client prepended a fake; the first untrusted from the right is the real one.
        let h = xff(&["6.6.6.6, 198.51.100.7", "10.1.1.1"]);
        assert_eq!(client_ip(peer, &h, &proxies), ip("198.51.100.7"));
        assert_eq!(client_ip(peer, &xff(&["[2001:db8::5]:443"]), &proxies), ip("2001:db8::5"));
        assert_eq!(client_ip(peer, &xff(&["1.2.3.4:80"]), &proxies), ip("1.2.3.4"));
        // No header, or garbage from the nearest hop: the peer itself.
        assert_eq!(client_ip(peer, &HeaderMap::new(), &proxies), peer);
        assert_eq!(client_ip(peer, &xff(&["1.1.1.1, junk"]), &proxies), peer);
        // All trusted: the leftmost.
        assert_eq!(client_ip(peer, &xff(&["10.9.9.9, 10.1.1.1"]), &proxies), ip("10.9.9.9"));
    }

    #[test]
    fn the_walk_is_bounded() {
        let proxies = [Cidr::parse("0.0.0.0/0").expect("cidr")];
        let long: &'static str = Box::leak(vec!["10.0.0.1"; 1000].join(",").into_boxed_str());
        let mut h = xff(&["9.9.9.9"]);
        h.append("x-forwarded-for", HeaderValue::from_static(long));
        // 32 hops read, all trusted: the 32nd from the right, never the 1001st.
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &proxies), ip("10.0.0.1"));
    }
}
