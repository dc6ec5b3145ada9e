//! The gateway's routing stage: the request's host (Host or :authority, without the port),
//! the first gateway route whose hosts and match take the request, and the route's edits:
//! the prefix rewrite and header edits of mesh routes, then the mesh service as the request's
//! Host, so the outbound stage routes it into the mesh like an app's request.

use http::header::HOST;
use http::{HeaderValue, Uri};
use pingora_http::RequestHeader;
use weft_policy::gateway::GatewayRoute;
use weft_policy::PathMatch;

use crate::errors::Failure;
use crate::outbound::route::rewrite_prefix;

/// The request's host name: the Host header, else the URI's authority (HTTP/2), lower case,
/// without a port or a trailing dot; `None` when absent or not a plain name or address.
pub fn request_host(req: &RequestHeader) -> Option<String> {
    let raw = req
        .headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))?;
    let host = match raw.strip_prefix('[') {
        // An IPv6 literal: `[::1]:443`.
        Some(v6) => v6.split_once(']').map(|(h, _)| h)?,
        None => raw.rsplit_once(':').map_or(raw, |(h, _)| h),
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':'));
    ok.then_some(host)
}

/// The index of the first route that takes the request.
pub fn find(routes: &[GatewayRoute], host: Option<&str>, req: &RequestHeader) -> Option<usize> {
    routes.iter().position(|r| {
        let host_ok =
            r.hosts.is_empty() || host.is_some_and(|h| r.hosts.iter().any(|p| p.matches(h)));
        host_ok && r.matcher.matches(&req.method, req.uri.path(), &req.headers)
    })
}

/// Apply the route's edits and point the request at its mesh service (one of a weighted
/// split, drawn per request): the URI becomes origin-form (path and query) and Host the
/// service's name.
pub fn apply(route: &GatewayRoute, req: &mut RequestHeader) -> Result<(), Failure> {
    let pq = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let pq = match (&route.rewrite_prefix, &route.matcher.path) {
        (Some(new), Some(PathMatch::Prefix(old))) => rewrite_prefix(old, new, pq),
        _ => pq.to_owned(),
    };
    let uri: Uri = pq
        .parse()
        .map_err(|_| Failure::new(400, "bad_request", "the rewritten path is not a URI"))?;
    req.set_uri(uri);
    for name in &route.remove_headers {
        req.remove_header(name);
    }
    let internal = |_| Failure::new(500, "bad_request", "a header edit failed");
    for (name, value) in &route.set_headers {
        req.insert_header(name.clone(), value.clone())
            .map_err(internal)?;
    }
    let service = HeaderValue::from_str(route.backends.pick(fastrand::u64(..)))
        .map_err(|_| Failure::new(500, "bad_request", "bad service name"))?;
    req.insert_header(HOST, service).map_err(internal)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn routes() -> Vec<GatewayRoute> {
        let sidecar = "service: {name: gw, identity: spiffe://weft.local/ns/edge/sa/gw, app: 127.0.0.1:1}\n\
                       tls: {cert: c, key: k, trust_bundle: b}\n\
                       services:\n  - {name: orders, identity: spiffe://weft.local/ns/default/sa/orders, endpoints: []}\n\
                       \x20 - {name: orders-v2, identity: spiffe://weft.local/ns/default/sa/orders, endpoints: []}\n";
        let services = weft_policy::parse(sidecar, Path::new("s"), Path::new("."))
            .expect("sidecar")
            .services;
        let gw = "listen: {https: 127.0.0.1:0}\n\
                  tls: {certificates: [{hosts: [a.test], cert: c, key: k}]}\n\
                  routes:\n\
                  \x20 - {name: v1, hosts: [\"*.example.test\"], match: {path: {prefix: /v1/orders}}, service: orders, rewrite: {prefix: /orders}, request_headers: {set: {x-api-version: v1}, remove: [cookie]}}\n\
                  \x20 - {name: canary, match: {path: {prefix: /canary}}, backends: [{service: orders, weight: 3}, {service: orders-v2, weight: 1}]}\n\
                  \x20 - {name: any, match: {path: {prefix: /}}, service: orders}\n";
        weft_policy::gateway::parse(gw, Path::new("g"), Path::new("."), &services)
            .expect("gateway")
            .routes
    }

    fn req(host: &str, path: &str) -> RequestHeader {
        let mut r = RequestHeader::build("GET", path.as_bytes(), None).expect("req");
        r.insert_header(HOST, host).expect("host");
        r.insert_header("cookie", "a=b").expect("cookie");
        r
    }

    #[test]
    fn hosts_lose_ports_and_case() {
        assert_eq!(
            request_host(&req("API.Example.test:8443", "/")).as_deref(),
            Some("api.example.test")
        );
        assert_eq!(
            request_host(&req("[::1]:8443", "/")).as_deref(),
            Some("::1")
        );
        assert_eq!(request_host(&req("a b", "/")), None);
    }

    #[test]
    fn first_matching_route_rewrites_and_names_the_service() {
        let routes = routes();
        let mut r = req("api.example.test", "/v1/orders/7?x=1");
        let i = find(&routes, request_host(&r).as_deref(), &r).expect("route");
        assert_eq!(routes[i].name, "v1");
        apply(&routes[i], &mut r).expect("apply");
        assert_eq!(r.uri.to_string(), "/orders/7?x=1");
        assert_eq!(
            r.headers.get(HOST).map(|v| v.as_bytes()),
            Some(&b"orders"[..])
        );
        assert_eq!(
            r.headers.get("x-api-version").map(|v| v.as_bytes()),
            Some(&b"v1"[..])
        );
        assert!(r.headers.get("cookie").is_none());
        // Another host: the catch-all, no rewrite.
        let r = req("other.test", "/v1/orders/7");
        assert_eq!(find(&routes, Some("other.test"), &r), Some(2));
        // A segment prefix: /v1/ordersx is not under /v1/orders.
        let r = req("a.example.test", "/v1/ordersx");
        assert_eq!(find(&routes, Some("a.example.test"), &r), Some(2));
    }

    #[test]
    fn a_weighted_split_sends_each_request_to_one_service_in_proportion() {
        let routes = routes();
        let (mut orders, mut v2) = (0u32, 0u32);
        for _ in 0..4000 {
            let mut r = req("a.test", "/canary/x");
            let i = find(&routes, Some("a.test"), &r).expect("route");
            assert_eq!(routes[i].name, "canary");
            apply(&routes[i], &mut r).expect("apply");
            match r.headers.get(HOST).map(|v| v.as_bytes()) {
                Some(b"orders") => orders += 1,
                Some(b"orders-v2") => v2 += 1,
                other => panic!("Host {other:?}"),
            }
        }
        // 3:1 of 4000 is 1000 to v2; six standard deviations (27 each) either way.
        assert!(
            (840..=1160).contains(&v2),
            "orders {orders}, orders-v2 {v2}"
        );
    }
}
