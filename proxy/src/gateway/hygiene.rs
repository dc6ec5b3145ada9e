//! What the gateway does to every request from outside before it enters the mesh: size
//! checks, hop-by-hop headers removed, the client's `x-weft-*` headers removed (the mesh's
//! own: an outside client must never name a caller identity), and `X-Forwarded-For`,
//! `X-Forwarded-Proto`, `X-Forwarded-Host` and `Forwarded` (RFC 7239) set. An incoming
//! `X-Forwarded-For` / `Forwarded` is kept and appended to only when the peer is a trusted
//! proxy; from anyone else it is replaced, so a client cannot choose the address services see.

use std::net::IpAddr;

use http::header::{HeaderName, HeaderValue, CONNECTION, TE, TRAILER, UPGRADE};
use pingora_http::RequestHeader;
use weft_policy::gateway::{Cidr, Limits};

use crate::errors::Failure;

/// Hop-by-hop headers (RFC 9110 §7.6.1, plus the old `Proxy-Connection` and `Keep-Alive`).
/// `Transfer-Encoding` and `Content-Length` stay: Pingora frames the body with them.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
];

/// Refuse a request whose header block is over `limits.max_header_bytes` (431) or whose
/// declared body is over `limits.max_body_bytes` (413).
pub fn check_sizes(req: &RequestHeader, limits: &Limits) -> Result<(), Failure> {
    let header_bytes: usize = req
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + req.uri.path_and_query().map_or(0, |p| p.as_str().len());
    if header_bytes > limits.max_header_bytes {
        return Err(Failure::new(
            431,
            "bad_request",
            format!(
                "request header of {header_bytes} bytes is over the gateway's limit of {}",
                limits.max_header_bytes
            ),
        ));
    }
    let declared = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes) {
        return Err(too_large(limits.max_body_bytes));
    }
    Ok(())
}

/// The 413 answer.
pub fn too_large(limit: u64) -> Failure {
    Failure::new(
        413,
        "bad_request",
        format!("request body is over the gateway's limit of {limit} bytes"),
    )
}

/// Whether `peer` is one of the trusted proxies.
pub fn trusted(peer: Option<IpAddr>, proxies: &[Cidr]) -> bool {
    peer.is_some_and(|p| proxies.iter().any(|c| c.contains(p)))
}

/// The client's address: the peer's, or, when the peer is a trusted proxy, the right-most
/// address of `X-Forwarded-For` that is not itself a trusted proxy (what rate limits by
/// client IP key on).
pub fn client_ip(req: &RequestHeader, peer: Option<IpAddr>, proxies: &[Cidr]) -> Option<IpAddr> {
    if !trusted(peer, proxies) {
        return peer;
    }
    let chain: Vec<IpAddr> = req
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    chain
        .into_iter()
        .rev()
        .find(|a| !trusted(Some(*a), proxies))
        .or(peer)
}

/// Remove hop-by-hop headers (and those `Connection` names) and every `x-weft-*` header.
pub fn strip(req: &mut RequestHeader) {
    let named: Vec<HeaderName> = req
        .headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        // Never the body's framing, even when a client lists it.
        if n != http::header::CONTENT_LENGTH && n != http::header::TRANSFER_ENCODING {
            req.remove_header(&n);
        }
    }
    for n in [CONNECTION, TE, TRAILER, UPGRADE] {
        req.remove_header(&n);
    }
    for n in HOP_BY_HOP {
        req.remove_header(n);
    }
    let internal: Vec<HeaderName> = req
        .headers
        .keys()
        .filter(|n| n.as_str().starts_with("x-weft-"))
        .cloned()
        .collect();
    for n in internal {
        req.remove_header(&n);
    }
}

/// Whether `req` asks for a WebSocket: HTTP/1.1, `Upgrade: websocket`, `Connection` naming
/// `upgrade`. The one upgrade the gateway carries into the mesh; whether it is well formed
/// (a `GET` without a body) is the outbound stage's check ([`crate::upgrade::check`]), which
/// answers 400 otherwise. Any other `Upgrade` is removed as a hop-by-hop header and the request
/// served as an ordinary one (RFC 9110 §7.8 lets a server ignore `Upgrade`).
pub fn asks_websocket(req: &RequestHeader) -> bool {
    let tokens = |name: HeaderName| {
        req.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .collect::<Vec<_>>()
    };
    req.version == http::Version::HTTP_11
        && tokens(UPGRADE) == ["websocket"]
        && tokens(CONNECTION).iter().any(|t| t == "upgrade")
}

/// Put back, after [`strip`], the two hop-by-hop headers a WebSocket upgrade travels on (only
/// these: whatever else the client's `Connection` named stays removed).
pub fn keep_websocket(req: &mut RequestHeader) -> Result<(), Failure> {
    let bad = |_| Failure::new(500, "bad_request", "cannot restore the upgrade headers");
    req.insert_header(UPGRADE, HeaderValue::from_static("websocket"))
        .map_err(bad)?;
    req.insert_header(CONNECTION, HeaderValue::from_static("upgrade"))
        .map_err(bad)
}

/// Set the forwarding headers for a request that came over HTTPS from `peer` for `host`.
pub fn forward(
    req: &mut RequestHeader,
    peer: Option<IpAddr>,
    proxies: &[Cidr],
    host: Option<&str>,
) {
    let keep = trusted(peer, proxies);
    let joined = |req: &RequestHeader, name: &str| -> Option<String> {
        let parts: Vec<&str> = req
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        (keep && !parts.is_empty()).then(|| parts.join(", "))
    };
    let peer_text = peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string());
    let xff = match joined(req, "x-forwarded-for") {
        Some(prev) => format!("{prev}, {peer_text}"),
        None => peer_text.clone(),
    };
    let node = match peer {
        Some(IpAddr::V6(v6)) => format!("\"[{v6}]\""),
        Some(v4) => v4.to_string(),
        None => "unknown".to_owned(),
    };
    let mut element = format!("for={node};proto=https");
    if let Some(h) = host {
        element.push_str(&format!(";host=\"{h}\""));
    }
    let forwarded = match joined(req, "forwarded") {
        Some(prev) => format!("{prev}, {element}"),
        None => element,
    };
    set(req, "x-forwarded-for", &xff);
    set(req, "forwarded", &forwarded);
    set(req, "x-forwarded-proto", "https");
    match host {
        Some(h) => set(req, "x-forwarded-host", h),
        None => {
            req.remove_header("x-forwarded-host");
        }
    }
}

/// Replace every value of `name` with `value` (values made here from addresses and a checked
/// host name are valid header values; anything else is dropped).
fn set(req: &mut RequestHeader, name: &'static str, value: &str) {
    req.remove_header(name);
    if let Ok(v) = HeaderValue::from_str(value) {
        // Inserting a static name with a valid value does not fail.
        let _ = req.insert_header(name, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).expect("req");
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).expect("header");
        }
        r
    }

    fn get<'a>(r: &'a RequestHeader, n: &str) -> &'a str {
        r.headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    fn cidrs(s: &[&str]) -> Vec<Cidr> {
        s.iter().map(|c| c.parse().expect("cidr")).collect()
    }

    #[test]
    fn an_untrusted_peer_cannot_choose_the_client_address() {
        let mut r = req(&[("x-forwarded-for", "6.6.6.6"), ("forwarded", "for=6.6.6.6")]);
        let peer = Some("127.0.0.1".parse().expect("ip"));
        assert_eq!(client_ip(&r, peer, &[]), peer);
        forward(&mut r, peer, &[], Some("api.example.test"));
        assert_eq!(get(&r, "x-forwarded-for"), "127.0.0.1");
        assert_eq!(
            get(&r, "forwarded"),
            "for=127.0.0.1;proto=https;host=\"api.example.test\""
        );
        assert_eq!(get(&r, "x-forwarded-proto"), "https");
        assert_eq!(get(&r, "x-forwarded-host"), "api.example.test");
    }

    #[test]
    fn a_trusted_proxy_chain_is_kept_and_appended_to() {
        let proxies = cidrs(&["10.0.0.0/8"]);
        let mut r = req(&[
            ("x-forwarded-for", "203.0.113.9, 10.0.0.7"),
            ("forwarded", "for=203.0.113.9"),
        ]);
        let peer = Some("10.1.1.1".parse().expect("ip"));
        assert_eq!(
            client_ip(&r, peer, &proxies),
            Some("203.0.113.9".parse().expect("ip"))
        );
        forward(&mut r, peer, &proxies, None);
        assert_eq!(
            get(&r, "x-forwarded-for"),
            "203.0.113.9, 10.0.0.7, 10.1.1.1"
        );
        assert_eq!(
            get(&r, "forwarded"),
            "for=203.0.113.9, for=10.1.1.1;proto=https"
        );
        let v6 = Some("::1".parse().expect("ip"));
        forward(&mut r, v6, &[], None);
        assert_eq!(get(&r, "forwarded"), "for=\"[::1]\";proto=https");
    }

    #[test]
    fn hop_by_hop_and_mesh_headers_are_removed() {
        let mut r = req(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("upgrade", "h2c"),
            ("x-weft-caller", "spiffe://weft.local/ns/default/sa/admin"),
            ("X-Weft-Anything", "x"),
            ("content-length", "0"),
            ("accept", "*/*"),
        ]);
        strip(&mut r);
        let mut names: Vec<&str> = r.headers.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["accept", "content-length"]);
    }

    #[test]
    fn sizes_are_checked() {
        let limits = Limits {
            max_body_bytes: 10,
            max_header_bytes: 1024,
            ..Limits::default()
        };
        assert!(check_sizes(&req(&[("content-length", "10")]), &limits).is_ok());
        assert_eq!(
            check_sizes(&req(&[("content-length", "11")]), &limits).map_err(|f| f.status),
            Err(413)
        );
        let big = "x".repeat(2000);
        assert_eq!(
            check_sizes(&req(&[("x-big", &big)]), &limits).map_err(|f| f.status),
            Err(431)
        );
    }
}
