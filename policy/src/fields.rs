//! Field values: each turns one string of a policy file into its domain value or says what is
//! wrong with it, in words that name the value (the caller adds the field path).

use std::net::SocketAddr;
use std::time::Duration;

use http::header::HeaderName;
use regex::{Regex, RegexBuilder};
use weft_certs::Identity;

use crate::{path, wire};

/// A `host:port` address (a name or an IP address, and a port).
pub(crate) fn host_port(s: &str) -> Result<String, String> {
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) => {
            Ok(s.to_owned())
        }
        _ => Err(format!("expected host:port, got {s:?}")),
    }
}

/// The longest duration a policy accepts. Timeouts, windows and ejection times are added to
/// the clock (`Instant + Duration`), which panics past the clock's range; nothing a mesh does
/// needs more than a year, so anything longer is refused as the typo it is.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parse a duration such as `250ms`, `2s` or `1m`, at most [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| format!("bad duration {s:?}: {e}"))?;
    if d > MAX_DURATION {
        return Err(format!(
            "duration {s:?} is longer than the limit of 365 days"
        ));
    }
    Ok(d)
}

/// The longest regex a policy may give, in characters.
pub const MAX_REGEX_LEN: usize = 1024;

/// The most memory one compiled regex may take (`RegexBuilder::size_limit`): a short pattern
/// such as `(a{1000}){1000}` would otherwise compile to hundreds of megabytes in every
/// sidecar that receives it.
pub const MAX_REGEX_SIZE: usize = 1 << 20;

pub(crate) fn anchored(r: &str) -> Result<Regex, String> {
    if r.len() > MAX_REGEX_LEN {
        return Err(format!(
            "regex of {} characters is longer than the limit of {MAX_REGEX_LEN}",
            r.len()
        ));
    }
    RegexBuilder::new(&format!("^(?:{r})$"))
        .size_limit(MAX_REGEX_SIZE)
        .dfa_size_limit(MAX_REGEX_SIZE)
        .build()
        .map_err(|e| format!("bad regex {r:?}: {e}"))
}

/// The domain form of an `escaped_slashes` setting (absent is `reject`).
pub(crate) fn path_options(raw: Option<wire::EscapedSlashes>) -> path::PathOptions {
    path::PathOptions {
        keep_escaped_slashes: raw == Some(wire::EscapedSlashes::Keep),
    }
}

pub(crate) fn service_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !s.starts_with(['-', '.']);
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!("bad name {s:?}: use 1-63 of a-z, 0-9, '-', '.'"))
    }
}

pub(crate) fn host_name(s: &str) -> Result<String, String> {
    let h = s.to_ascii_lowercase();
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok {
        Ok(h)
    } else {
        Err(format!("bad host name {s:?}"))
    }
}

pub(crate) fn identity(s: &str) -> Result<Identity, String> {
    s.parse::<Identity>()
        .map_err(|e| format!("bad SPIFFE identity {s:?}: {e}"))
}

/// An OTLP/gRPC collector address: `http://host:port` (plaintext gRPC; TLS to the collector
/// is not supported).
pub(crate) fn collector_url(s: &str) -> Result<String, String> {
    let bad = |why: &str| format!("bad collector {s:?}: {why}; expected http://host:port");
    let uri: http::Uri = s.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(bad("TLS to the collector is not supported")),
        _ => return Err(bad("the scheme must be http")),
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    if authority.host().is_empty() {
        return Err(bad("no host"));
    }
    if authority.port_u16().is_none_or(|p| p == 0) {
        return Err(bad("no port"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad("gRPC needs no path"));
    }
    Ok(format!("http://{authority}"))
}

pub(crate) fn header_name(s: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(s.as_bytes()).map_err(|_| format!("bad header name {s:?}"))
}

pub(crate) fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .map_err(|_| format!("bad address {s:?}: expected ip:port"))
}

pub(crate) fn loopback_addr(s: &str) -> Result<SocketAddr, String> {
    let a = socket_addr(s)?;
    if a.ip().is_loopback() {
        Ok(a)
    } else {
        Err(format!("{s:?} must be a loopback address"))
    }
}
