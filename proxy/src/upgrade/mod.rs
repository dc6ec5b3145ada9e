//! Upgrades (WebSocket) across the sidecar hop, both directions: HTTP/1.1 `Upgrade` and
//! HTTP/2 extended CONNECT (RFC 8441).
//!
//! Between sidecars HTTP rides pooled, multiplexed HTTP/2, where `Upgrade` does not exist
//! (RFC 9113 §8.2.2). So an HTTP/1.1 upgrade goes to the peer sidecar on an mTLS connection of
//! its own with ALPN `http/1.1` (the same handshake proves both identities), which the inbound
//! port of an `http` service offers beside `h2`; Pingora carries the handshake and, after a
//! `101`, the bytes both ways. An extended CONNECT from an h2c client is already HTTP/2: it
//! rides the pooled connection as one more stream, with `:protocol` kept (Pingora's HTTP/2
//! client sends the request's `h2::ext::Protocol` extension), to an app that speaks HTTP/2 (a
//! `grpc` service). This module is the upgrade stage of both directions: which requests are
//! carried ([`check`]), the timeouts that bound a session ([`bound_downstream`], [`peer`],
//! [`stream_peer`]), and TCP half-close within an HTTP/1.1 session ([`half_close`], over the
//! connections [`connect`] makes). docs/PROTOCOLS.md says why.

pub mod connect;
pub mod half_close;

use std::sync::Arc;
use std::time::Duration;

use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING, UPGRADE};
use http::{Method, Version};
use pingora_core::connectors::L4Connect;
use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::{HttpPeer, Scheme};
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
    /// An HTTP/2 extended CONNECT (RFC 8441, `:protocol websocket`): a stream on the pooled
    /// HTTP/2 connection, to an app that speaks HTTP/2.
    Connect,
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
/// - `CONNECT`: [`connect`].
pub fn check(req: &mut RequestHeader) -> Result<Ask, Reject> {
    if req.method == Method::CONNECT {
        return connect(req);
    }
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

/// Judge a `CONNECT`. Only RFC 8441's extended CONNECT over HTTP/2 with `:protocol websocket`
/// is carried ([`Ask::Connect`]); Pingora refuses every `CONNECT` unless told otherwise, and
/// is told otherwise only so that this one reaches the stage. A plain `CONNECT` (a tunnel to
/// whatever `:authority` names, or HTTP/1.1's proxy tunnel) is refused: the mesh routes to
/// services, it opens no tunnels to arbitrary hosts. A `:protocol` on any other method never
/// gets here: the h2 library resets that stream as malformed (RFC 8441 §4).
fn connect(req: &RequestHeader) -> Result<Ask, Reject> {
    let Some(protocol) = req.extensions.get::<h2::ext::Protocol>() else {
        return Err(bad(
            "CONNECT without :protocol is a tunnel the mesh does not open \
             (a WebSocket is a GET with Upgrade, or an HTTP/2 CONNECT with :protocol websocket)",
        ));
    };
    if req.version != Version::HTTP_2 {
        return Err(bad("extended CONNECT is HTTP/2 only"));
    }
    let value = protocol.as_str();
    if !PROTOCOLS.iter().any(|p| value.eq_ignore_ascii_case(p)) {
        return Err(bad(format!(
            "extended CONNECT to {value:?} is not carried by the mesh (only {})",
            PROTOCOLS.join(", ")
        )));
    }
    Ok(Ask::Connect)
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
/// wait for the `101` is bounded the same way. The connection is made by `connect`
/// ([`connect::ToSidecar`] or [`connect::ToApp`]), so that its half-close is Weft's
/// ([`half_close`]); for a peer sidecar Pingora then sees plaintext HTTP/1.1, and the TLS
/// (the same identities as Pingora's connector proves) is `connect`'s.
pub fn peer(peer: &mut HttpPeer, idle: Duration, connect: Arc<dyn L4Connect + Send + Sync>) {
    peer.scheme = Scheme::HTTP;
    let o = &mut peer.options;
    o.alpn = ALPN::H1;
    o.read_timeout = Some(idle);
    o.write_timeout = Some(idle);
    o.custom_l4 = Some(connect);
}

/// Let an HTTP/2 server (the outbound port's h2c, the inbound port's `h2`) take extended
/// CONNECT: Pingora's bounded defaults plus `SETTINGS_ENABLE_CONNECT_PROTOCOL` (RFC 8441 §3),
/// and `CONNECT` let through to the request stage, where [`check`] refuses all but
/// `:protocol websocket` (Pingora's own answer to any `CONNECT` is a bare `405`).
pub fn allow_extended_connect<SV>(proxy: &mut pingora_proxy::HttpProxy<SV>) {
    let mut h2 = pingora_core::protocols::http::v2::server::default_h2_options();
    h2.enable_connect_protocol();
    proxy.h2_options = Some(h2);
    proxy
        .server_options
        .get_or_insert_with(Default::default)
        .allow_connect_method_proxying = true;
}

/// Make `peer` carry an extended CONNECT: the stream stays on HTTP/2 (its ALPN untouched), and
/// its reads and writes are bounded by `idle`, as for [`peer`], rather than by a request
/// timeout.
pub fn stream_peer(peer: &mut HttpPeer, idle: Duration) {
    let o = &mut peer.options;
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

    fn connect(version: Version, protocol: Option<&'static str>) -> RequestHeader {
        let mut r = req("CONNECT", version, &[]);
        if let Some(p) = protocol {
            r.extensions_mut().insert(h2::ext::Protocol::from_static(p));
        }
        r
    }

    #[test]
    fn extended_connect_for_websocket_is_carried_and_every_other_connect_refused() {
        let mut ws = connect(Version::HTTP_2, Some("websocket"));
        assert_eq!(check(&mut ws), Ok(Ask::Connect));
        let mut ws = connect(Version::HTTP_2, Some("WebSocket"));
        assert_eq!(check(&mut ws), Ok(Ask::Connect));
        let why = |mut r: RequestHeader| match check(&mut r) {
            Err(Reject::BadUpgrade(w)) => w,
            other => panic!("{other:?}"),
        };
        assert!(why(connect(Version::HTTP_2, None)).contains("without :protocol"));
        assert!(why(connect(Version::HTTP_11, None)).contains("without :protocol"));
        assert!(why(connect(Version::HTTP_11, Some("websocket"))).contains("HTTP/2 only"));
        assert!(why(connect(Version::HTTP_2, Some("connect-udp"))).contains("connect-udp"));
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
