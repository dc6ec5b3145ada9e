//! The path stage, on both sides: the request's path is made canonical
//! ([`weft_policy::path::canonicalize`]) once, before routing, authorization and rewrite read
//! it, and the canonical path is what goes on (to the peer sidecar, to the app). Otherwise
//! `/public/../admin` would pass a rule for `/public` and reach an app that serves `/admin`.
//!
//! HTTP/1.1, h2 and h2c (gRPC included) all arrive as the same Pingora `RequestHeader`, so one
//! stage covers them.

use http::uri::{PathAndQuery, Uri};
use http::Method;
use pingora_http::RequestHeader;
use weft_policy::path::{canonicalize, PathError, PathOptions};

use crate::errors::Reject;

/// Make `req`'s path canonical under `opts`, or refuse it. The query is kept byte for byte.
/// The URI is replaced whenever the target on the wire would differ from it: a changed path,
/// or an absolute-form HTTP/1 target (`GET http://host/a/../b`), which Pingora would otherwise
/// forward as received.
pub fn canonical(req: &mut RequestHeader, opts: &PathOptions) -> Result<(), Reject> {
    // A target that was not UTF-8 reaches the URI as a lossy rendering: nothing about it is
    // certain.
    if !req.raw_path_is_utf8() {
        return Err(Reject::BadPath(PathError::NonAscii));
    }
    let path = req.uri.path();
    // The asterisk-form (`OPTIONS * HTTP/1.1`) asks about the server, not a resource.
    if path == "*" && req.method == Method::OPTIONS {
        return Ok(());
    }
    let canonical = canonicalize(path, opts).map_err(Reject::BadPath)?;
    let as_sent = req.uri.path_and_query().map(|pq| pq.as_str().as_bytes());
    if canonical == path && as_sent == Some(req.raw_path()) {
        return Ok(());
    }
    let pq = match req.uri.query() {
        Some(q) => format!("{canonical}?{q}"),
        None => canonical.into_owned(),
    };
    // Cannot fail on a canonical path and a query the URI parser already accepted; refused
    // rather than trusted if it ever does.
    let pq = PathAndQuery::try_from(pq).map_err(|_| Reject::BadPath(PathError::Control))?;
    let mut parts = req.uri.clone().into_parts();
    parts.path_and_query = Some(pq);
    let uri = Uri::from_parts(parts).map_err(|_| Reject::BadPath(PathError::NotAbsolute))?;
    req.set_uri(uri);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(method: &str, target: &str, keep: bool) -> Result<(String, Vec<u8>), Reject> {
        let mut req = RequestHeader::build(method, target.as_bytes(), None).expect("request");
        canonical(
            &mut req,
            &PathOptions {
                keep_escaped_slashes: keep,
            },
        )?;
        let pq = req
            .uri
            .path_and_query()
            .map_or("", |p| p.as_str())
            .to_owned();
        Ok((pq, req.raw_path().to_vec()))
    }

    #[test]
    fn the_path_becomes_canonical_and_the_query_is_kept_byte_for_byte() {
        let (pq, wire) = run("GET", "/public/%2e%2e/admin?a=%2e%2e/x&b=..%2F#", false).expect("ok");
        assert_eq!(pq, "/admin?a=%2e%2e/x&b=..%2F");
        assert_eq!(
            wire,
            pq.as_bytes(),
            "what goes on the wire is the canonical form"
        );
        let (pq, _) = run("GET", "//a/./b?", false).expect("ok");
        assert_eq!(pq, "/a/b?", "an empty query stays");
        let (pq, _) = run("GET", "/x%2fy", true).expect("ok");
        assert_eq!(pq, "/x%2Fy");
    }

    #[test]
    fn an_absolute_form_target_goes_on_in_origin_form() {
        let (pq, wire) = run("GET", "http://orders/public/../admin?q=1", false).expect("ok");
        assert_eq!(
            (pq.as_str(), wire.as_slice()),
            ("/admin?q=1", &b"/admin?q=1"[..])
        );
        let (_, wire) = run("GET", "http://orders/ok?q=1", false).expect("ok");
        assert_eq!(wire, b"/ok?q=1");
    }

    #[test]
    fn refusals_are_typed_and_asterisk_is_for_options_only() {
        assert_eq!(
            run("GET", "/public/..%2fadmin", false),
            Err(Reject::BadPath(PathError::EncodedSlash))
        );
        assert_eq!(
            run("GET", "/a\\b", false),
            Err(Reject::BadPath(PathError::Backslash))
        );
        assert!(run("OPTIONS", "*", false).is_ok());
        assert_eq!(
            run("GET", "*", false),
            Err(Reject::BadPath(PathError::NotAbsolute))
        );
        let mut req = RequestHeader::build("GET", &b"/a\xff"[..], None).expect("request");
        assert_eq!(
            canonical(&mut req, &PathOptions::default()),
            Err(Reject::BadPath(PathError::NonAscii))
        );
    }
}
