//! CORS (the Fetch standard's CORS protocol) for one route. A preflight (`OPTIONS` with
//! `Origin` and `Access-Control-Request-Method`) is answered here and never reaches the
//! service; an actual request's response gets the CORS headers when its origin is allowed.
//! A disallowed origin, method or header gets no CORS headers at all, so the browser blocks
//! the call. Every answer carries `Vary: Origin`, so caches never serve one origin's answer to
//! another.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use weft_policy::gateway_auth::{Cors, OriginPattern};

use super::Answer;

/// Headers (name, value) to add to a response.
pub type Headers = Vec<(HeaderName, HeaderValue)>;

fn join<T: AsRef<str>>(items: impl Iterator<Item = T>) -> Option<HeaderValue> {
    let s: Vec<String> = items.map(|i| i.as_ref().to_owned()).collect();
    HeaderValue::from_str(&s.join(", ")).ok()
}

fn allowed_origin<'a>(cors: &Cors, headers: &'a HeaderMap) -> Option<&'a HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    let s = origin.to_str().ok()?;
    cors.origins.iter().any(|p| p.allows(s)).then_some(origin)
}

/// `Access-Control-Allow-Origin` (and `-Credentials`) for an allowed origin.
fn origin_headers(cors: &Cors, origin: &HeaderValue, out: &mut Headers) {
    let any = !cors.credentials && cors.origins.contains(&OriginPattern::Any);
    let value = if any {
        HeaderValue::from_static("*")
    } else {
        origin.clone()
    };
    out.push((header::ACCESS_CONTROL_ALLOW_ORIGIN, value));
    if cors.credentials {
        out.push((
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        ));
    }
}

/// Whether this request is a CORS preflight.
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The answer to a preflight: `204` with the CORS headers when the origin, the method and
/// every requested header are allowed; `403` without them otherwise.
pub fn preflight(cors: &Cors, headers: &HeaderMap) -> Answer {
    let mut out: Headers = vec![(
        header::VARY,
        HeaderValue::from_static(
            "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        ),
    )];
    let method_ok = headers
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
        .is_some_and(|m| cors.methods.contains(&m));
    let requested: Option<Vec<String>> = headers
        .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .iter()
        .map(|v| v.to_str().ok())
        .collect::<Option<Vec<_>>>()
        .map(|vs| {
            vs.iter()
                .flat_map(|v| v.split(','))
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect()
        });
    let headers_ok = requested.as_ref().is_some_and(|hs| {
        hs.iter()
            .all(|h| cors.headers.iter().any(|a| a.as_str() == h))
    });
    let origin = allowed_origin(cors, headers);
    let (Some(origin), true, true) = (origin, method_ok, headers_ok) else {
        return Answer::new(
            StatusCode::FORBIDDEN,
            "cors_denied",
            "CORS preflight not allowed",
        )
        .with(out);
    };
    origin_headers(cors, origin, &mut out);
    out.extend(join(cors.methods.iter()).map(|v| (header::ACCESS_CONTROL_ALLOW_METHODS, v)));
    if let Some(hs) = requested.filter(|hs| !hs.is_empty()) {
        out.extend(join(hs.iter()).map(|v| (header::ACCESS_CONTROL_ALLOW_HEADERS, v)));
    }
    if let Some(age) = cors.max_age {
        out.push((
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from(age.as_secs()),
        ));
    }
    Answer::new(StatusCode::NO_CONTENT, "", "").with(out)
}

/// Headers for the response to an actual (non-preflight) request: `Vary: Origin` always,
/// the CORS headers when the origin is allowed.
pub fn response_headers(cors: &Cors, headers: &HeaderMap) -> Headers {
    let mut out: Headers = vec![(header::VARY, HeaderValue::from_static("Origin"))];
    if let Some(origin) = allowed_origin(cors, headers) {
        origin_headers(cors, origin, &mut out);
        if !cors.expose.is_empty() {
            out.extend(
                join(cors.expose.iter()).map(|v| (header::ACCESS_CONTROL_EXPOSE_HEADERS, v)),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cors(credentials: bool, origins: Vec<OriginPattern>) -> Cors {
        Cors {
            origins,
            methods: vec![Method::GET, Method::PUT],
            headers: vec![header::AUTHORIZATION, header::CONTENT_TYPE],
            expose: vec![HeaderName::from_static("x-request-id")],
            max_age: Some(Duration::from_secs(600)),
            credentials,
        }
    }

    fn req(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn get<'a>(a: &'a Headers, name: &HeaderName) -> Option<&'a str> {
        a.iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.to_str().ok())
    }

    #[test]
    fn allowed_preflight_is_answered_with_the_origin_not_a_star() {
        let c = cors(
            true,
            vec![OriginPattern::Subdomains {
                scheme: "https://".into(),
                suffix: ".example.test".into(),
            }],
        );
        let h = req(&[
            ("origin", "https://app.example.test"),
            ("access-control-request-method", "PUT"),
            (
                "access-control-request-headers",
                "Authorization, content-type",
            ),
        ]);
        assert!(is_preflight(&Method::OPTIONS, &h));
        let a = preflight(&c, &h);
        assert_eq!(a.status, StatusCode::NO_CONTENT);
        assert_eq!(
            get(&a.headers, &header::ACCESS_CONTROL_ALLOW_ORIGIN),
            Some("https://app.example.test")
        );
        assert_eq!(
            get(&a.headers, &header::ACCESS_CONTROL_ALLOW_CREDENTIALS),
            Some("true")
        );
        assert_eq!(
            get(&a.headers, &header::ACCESS_CONTROL_ALLOW_METHODS),
            Some("GET, PUT")
        );
        assert_eq!(
            get(&a.headers, &header::ACCESS_CONTROL_ALLOW_HEADERS),
            Some("authorization, content-type")
        );
        assert_eq!(
            get(&a.headers, &header::ACCESS_CONTROL_MAX_AGE),
            Some("600")
        );
        assert!(get(&a.headers, &header::VARY).is_some_and(|v| v.starts_with("Origin")));
    }

    #[test]
    fn disallowed_origin_method_or_header_gets_no_cors_headers() {
        let c = cors(
            true,
            vec![OriginPattern::Exact("https://app.example.test".into())],
        );
        for h in [
            req(&[
                ("origin", "https://evil.test"),
                ("access-control-request-method", "GET"),
            ]),
            req(&[
                ("origin", "https://app.example.test"),
                ("access-control-request-method", "DELETE"),
            ]),
            req(&[
                ("origin", "https://app.example.test"),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "x-admin"),
            ]),
        ] {
            let a = preflight(&c, &h);
            assert_eq!(a.status, StatusCode::FORBIDDEN);
            assert!(
                a.headers
                    .iter()
                    .all(|(n, _)| !n.as_str().starts_with("access-control-")),
                "{a:?}"
            );
            assert!(get(&a.headers, &header::VARY).is_some());
        }
        let actual = response_headers(&c, &req(&[("origin", "https://evil.test")]));
        assert_eq!(actual.len(), 1, "only Vary: {actual:?}");
        let actual = response_headers(&c, &req(&[("origin", "https://app.example.test")]));
        assert_eq!(
            get(&actual, &header::ACCESS_CONTROL_EXPOSE_HEADERS),
            Some("x-request-id")
        );
        assert_eq!(
            get(&actual, &header::ACCESS_CONTROL_ALLOW_ORIGIN),
            Some("https://app.example.test")
        );
    }

    #[test]
    fn star_is_sent_only_without_credentials() {
        let c = cors(false, vec![OriginPattern::Any]);
        let h = req(&[("origin", "https://any.test")]);
        let out = response_headers(&c, &h);
        assert_eq!(get(&out, &header::ACCESS_CONTROL_ALLOW_ORIGIN), Some("*"));
        assert_eq!(get(&out, &header::ACCESS_CONTROL_ALLOW_CREDENTIALS), None);
        assert!(!is_preflight(&Method::GET, &h));
    }
}
