//! HTTP/1.1 upgrades (WebSocket) across the sidecar hop, both directions.
//!
//! Between sidecars HTTP rides pooled, multiplexed HTTP/2, where `Upgrade` does not exist
//! (RFC 9113 §8.2.2) and a WebSocket would need extended CONNECT (RFC 8441), which Pingora's
//! HTTP/2 path does not expose. So an upgrade request goes to the peer sidecar on an mTLS
//! connection of its own with ALPN `http/1.1` (the same handshake proves both identities),
//! which the inbound port of an `http` service offers beside `h2`; Pingora carries the
//! handshake and, after a `101`, the bytes both ways. This module is the upgrade stage of both
//! directions: which upgrade requests are carried ([`check`]), and the timeouts that bound a
//! session ([`bound_downstream`], [`peer`]). docs/PROTOCOLS.md says why.

use std::time::Duration;

use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING, UPGRADE};
use http::{Method, Version};
use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use pingora_proxy::Session;

use crate::errors::Reject;

/// The protocols a client may upgrade to through the mesh (case-insensitive).
pub const PROTOCOLS: [&str; 1] = ["websocket"];

/// What an HTTP/1 request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// An ordinary request (an `Upgrade` the sidecar ignores was removed).
    Plain,
    /// An upgrade the mesh carries: its own HTTP/1.1 connection to the peer sidecar.
    Upgrade,
}

fn bad(why: impl Into<String>) -> Reject {
    Reject::BadUpgrade(why.into())
}

/// Whether comma-separated header values hold `token` (case-insensitive).
fn has_token(req: &RequestHeader, name: http::header::HeaderName, token: &str) -> bool {
    req.headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Judge the request's `Upgrade`, if any, and remove what the sidecar ignores.
///
/// - No `Upgrade`: [`Ask::Plain`].
/// - HTTP/1.0 (which has no upgrades) or an `h2c` offer (RFC 7540 §3.2: the hop is already
///   HTTP/2, and the client speaks HTTP/1.1 to its sidecar): the header is removed and the
///   request served as before, as RFC 9110 §7.8 lets a server ignore `Upgrade`.
/// - `websocket`, with `Connection: upgrade`, by `GET` and without a body: [`Ask::Upgrade`].
/// - Anything else is refused (400) before routing sends it anywhere: an unknown protocol
///   would reach the app as bytes no stage can read, and a body before the switch would be
///   read as the new protocol's first bytes by one side and as HTTP by the other.
pub fn check(req: &mut RequestHeader) -> Result<Ask, Reject> {
    let Some(value) = req.headers.get(UPGRADE) else {
        return Ok(Ask::Plain);
    };
    let value = value
        .to_str()
        .map_err(|_| bad("the Upgrade header is not text"))?
        .trim()
        .to_owned();
    let h2c = value
        .split(',')
        .all(|t| t.trim().eq_ignore_ascii_case("h2c"));
    if req.version != Version::HTTP_11 || h2c {
        req.remove_header(&UPGRADE);
        req.remove_header("http2-settings");
        return Ok(Ask::Plain);
    }
    if !PROTOCOLS.iter().any(|p| value.eq_ignore_ascii_case(p)) {
        return Err(bad(format!(
            "upgrade to {value:?} is not carried by the mesh (only {})",
            PROTOCOLS.join(", ")
        )));
    }
    if !has_token(req, CONNECTION, "upgrade") {
        return Err(bad("Upgrade without \"Connection: upgrade\""));
    }
    if req.method != Method::GET {
        return Err(bad(format!("a {value} upgrade must be a GET")));
    }
    let empty = req
        .headers
        .get(CONTENT_LENGTH)
        .is_none_or(|v| v.as_bytes() == b"0");
    if !empty || req.headers.contains_key(TRANSFER_ENCODING) {
        return Err(bad("an upgrade request carries no body"));
    }
    Ok(Ask::Upgrade)
}

/// Bound the client side of an upgrade by the sidecar's `idle_timeout`: a direction that
/// moves no byte for that long ends the session. Pingora's own default (a 60 s read timeout,
/// no write timeout) would cut a quiet WebSocket and let a client that never reads hold the
/// session for ever.
pub fn bound_downstream(session: &mut Session, idle: Duration) {
    let s = session.as_downstream_mut();
    s.set_read_timeout(Some(idle));
    s.set_write_timeout(Some(idle));
}

/// Make `peer` carry an upgrade: HTTP/1.1 (a connection of its own, never a pooled HTTP/2
/// one: Pingora keeps HTTP/1 and HTTP/2 connections in separate pools), reads and writes
/// bounded by `idle` rather than by a request timeout, which would cut a long session. The
/// wait for the `101` is bounded the same way.
pub fn peer(peer: &mut HttpPeer, idle: Duration) {
    let o = &mut peer.options;
    o.alpn = ALPN::H1;
    o.read_timeout = Some(idle);
    o.write_timeout = Some(idle);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, version: Version, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, b"/ws", None).expect("request");
        r.set_version(version);
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).expect("header");
        }
        r
    }

    const WS: [(&str, &str); 2] = [
        ("upgrade", "websocket"),
        ("connection", "keep-alive, Upgrade"),
    ];

    #[test]
    fn a_websocket_upgrade_is_carried() {
        let mut r = req("GET", Version::HTTP_11, &WS);
        assert_eq!(check(&mut r), Ok(Ask::Upgrade));
        let mut r = req(
            "GET",
            Version::HTTP_11,
            &[
                ("upgrade", "WebSocket"),
                ("connection", "upgrade"),
                ("content-length", "0"),
            ],
        );
        assert_eq!(check(&mut r), Ok(Ask::Upgrade));
        let mut plain = req("GET", Version::HTTP_11, &[]);
        assert_eq!(check(&mut plain), Ok(Ask::Plain));
    }

    #[test]
    fn h2c_offers_and_http10_upgrades_are_ignored() {
        let mut r = req(
            "GET",
            Version::HTTP_11,
            &[
                ("upgrade", "h2c"),
                ("connection", "Upgrade, HTTP2-Settings"),
                ("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
            ],
        );
        assert_eq!(check(&mut r), Ok(Ask::Plain));
        assert!(r.headers.get(UPGRADE).is_none());
        assert!(r.headers.get("http2-settings").is_none());
        let mut r = req("GET", Version::HTTP_10, &WS);
        assert_eq!(check(&mut r), Ok(Ask::Plain));
        assert!(r.headers.get(UPGRADE).is_none());
    }

    #[test]
    fn other_upgrades_are_refused_with_why() {
        let why = |method, headers: &[(&str, &str)]| match check(&mut req(
            method,
            Version::HTTP_11,
            headers,
        )) {
            Err(Reject::BadUpgrade(w)) => w,
            other => panic!("{other:?}"),
        };
        assert!(why("GET", &[("upgrade", "foo/1"), ("connection", "upgrade")]).contains("foo/1"));
        assert!(why(
            "GET",
            &[("upgrade", "websocket, h2c"), ("connection", "upgrade")]
        )
        .contains("not carried"));
        assert!(why("GET", &[("upgrade", "websocket")]).contains("Connection"));
        assert!(why("POST", &WS).contains("GET"));
        let body = [WS[0], WS[1], ("content-length", "5")];
        assert!(why("GET", &body).contains("no body"));
        let chunked = [WS[0], WS[1], ("transfer-encoding", "chunked")];
        assert!(why("GET", &chunked).contains("no body"));
    }
}
