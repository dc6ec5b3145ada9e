//! Routes: their callers (mesh `from`), matches, backends, rewrites, header edits and
//! resilience, and the shadowing check (a route an earlier one always wins over).

use std::collections::{BTreeMap, HashMap, HashSet};

use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::Method;

use crate::fields::{anchored, header_name, parse_duration, service_name};
use crate::model::*;
use crate::{wire, Validator};

impl Validator<'_> {
    /// Routes, each added to its service in order; a route no request could reach (after a
    /// catch-all, or with the same match as an earlier one for a caller both apply to) is an
    /// error.
    pub(super) fn routes(
        &mut self,
        raw: Vec<wire::Route>,
        services: &mut [Service],
        names: &HashMap<String, usize>,
        scope: Scope,
    ) {
        let mut route_names: HashSet<(String, String)> = HashSet::new();
        // The callers of each accepted route, parallel to each service's `routes`.
        let mut callers: Vec<Vec<Option<Vec<String>>>> = vec![Vec::new(); services.len()];
        for (i, mut r) in raw.into_iter().enumerate() {
            let f = format!("routes[{i}]");
            let Some(&si) = names.get(&r.service) else {
                self.err(
                    format!("{f}.service"),
                    format!("unknown service {:?}", r.service),
                );
                continue;
            };
            if !route_names.insert((r.service.clone(), r.name.clone())) {
                self.err(
                    format!("{f}.name"),
                    format!("duplicate route {:?} for service {:?}", r.name, r.service),
                );
            }
            let from = self.route_callers(&f, r.from.take(), &r.service, names, scope);
            if services[si].protocol == Protocol::Tcp {
                self.err(
                    format!("{f}.service"),
                    format!(
                        "service {:?} is tcp; routes apply to http and grpc",
                        r.service
                    ),
                );
                continue;
            }
            if let Some(route) = self.route(&f, r, &services[si]) {
                let svc = &mut services[si];
                let earlier = || {
                    svc.routes
                        .iter()
                        .zip(&callers[si])
                        .filter_map(|(p, c)| common_callers(c, &from).map(|common| (p, common)))
                };
                if let Some((prev, common)) = earlier().find(|(p, _)| p.matcher.is_catch_all()) {
                    self.err(
                        format!("{f}.match"),
                        format!(
                            "shadowed: route {:?} before it matches every request{}",
                            prev.name,
                            for_callers(&common)
                        ),
                    );
                } else if let Some((prev, common)) =
                    earlier().find(|(p, _)| same_match(&p.matcher, &route.matcher))
                {
                    self.err(
                        format!("{f}.match"),
                        format!(
                            "shadowed: route {:?} has the same match{}",
                            prev.name,
                            for_callers(&common)
                        ),
                    );
                }
                svc.routes.push(route);
                callers[si].push(from);
            }
        }
    }

    /// A route's callers: `None` is every caller. Only the mesh policy may name them.
    pub(super) fn route_callers(
        &mut self,
        f: &str,
        from: Option<Vec<String>>,
        destination: &str,
        names: &HashMap<String, usize>,
        scope: Scope,
    ) -> Option<Vec<String>> {
        let from = from?;
        if scope == Scope::Sidecar {
            self.err(
                format!("{f}.from"),
                "callers are named in the control plane's policy directory; \
                 every route in a sidecar's config applies to its own app",
            );
            return None;
        }
        if from.is_empty() {
            self.err(
                format!("{f}.from"),
                "name at least one calling service, or leave `from` out for every caller",
            );
        }
        for (j, c) in from.iter().enumerate() {
            if c == destination {
                self.err(
                    format!("{f}.from[{j}]"),
                    format!("{c:?} is this route's destination; a service does not call itself through the mesh"),
                );
            } else if !names.contains_key(c) {
                self.err(format!("{f}.from[{j}]"), format!("unknown service {c:?}"));
            }
        }
        Some(from)
    }

    pub(super) fn route(&mut self, f: &str, raw: wire::Route, svc: &Service) -> Option<Route> {
        let name = self.check(format!("{f}.name"), service_name(&raw.name));
        let matcher = self.route_match(f, raw.matches, svc);
        let backends = self.backends(f, raw.backends, svc);
        let timeout = self.route_timeout(f, raw.timeout);
        let rewrite_prefix = self.rewrite(f, raw.rewrite, matcher.as_ref(), svc);
        let (set_headers, remove_headers) = self.header_edits(f, raw.request_headers);
        let retry = self.retry(f, raw.retry, timeout);
        let rate_limit = self.rate_limit(f, raw.rate_limit, false);
        let fault = self.fault(f, raw.fault);
        Some(Route {
            name: name?,
            matcher: matcher?,
            backends,
            timeout,
            rewrite_prefix,
            set_headers,
            remove_headers,
            retry,
            rate_limit,
            fault,
        })
    }

    /// The route's backends (one taking every endpoint when none is given): weights within
    /// 0..=10000 and not all zero, subsets that select an endpoint when endpoints are static.
    fn backends(&mut self, f: &str, raw: Vec<wire::Backend>, svc: &Service) -> Vec<Backend> {
        let mut backends = Vec::new();
        for (i, b) in raw.into_iter().enumerate() {
            let backend = Backend {
                subset: b.subset,
                weight: b.weight.unwrap_or(1),
            };
            if backend.weight > 10_000 {
                self.err(
                    format!("{f}.backends[{i}].weight"),
                    format!("must be 0 to 10000, got {}", backend.weight),
                );
            }
            if backend.weight > 0
                && !self.dynamic_endpoints
                && !svc.endpoints.is_empty()
                && !svc.endpoints.iter().any(|e| backend.selects(e))
            {
                self.err(
                    format!("{f}.backends[{i}].subset"),
                    format!(
                        "{:?} selects no endpoint of service {:?}",
                        backend.subset, svc.name
                    ),
                );
            }
            backends.push(backend);
        }
        if backends.is_empty() {
            backends.push(Backend {
                subset: BTreeMap::new(),
                weight: 1,
            });
        } else if backends.iter().all(|b| b.weight == 0) {
            self.err(format!("{f}.backends"), "weights sum to zero");
        }
        backends
    }

    /// The route's overall timeout, above zero.
    fn route_timeout(&mut self, f: &str, raw: Option<String>) -> Option<Duration> {
        match raw {
            None => None,
            Some(t) => self.check(
                format!("{f}.timeout"),
                parse_duration(&t).and_then(|d| {
                    if d.is_zero() {
                        Err("must be above zero".to_owned())
                    } else {
                        Ok(d)
                    }
                }),
            ),
        }
    }

    /// A prefix rewrite: only for a route matching a path prefix, to a canonical path.
    pub(super) fn rewrite(
        &mut self,
        f: &str,
        raw: Option<wire::Rewrite>,
        matcher: Option<&RouteMatch>,
        svc: &Service,
    ) -> Option<String> {
        match (raw, matcher) {
            (None, _) => None,
            (
                Some(r),
                Some(RouteMatch {
                    path: Some(PathMatch::Prefix(_)),
                    ..
                }),
            ) => {
                if r.prefix.starts_with('/') {
                    self.canonical(&format!("{f}.rewrite.prefix"), &r.prefix, &svc.paths)
                        .then_some(r.prefix)
                } else {
                    self.err(
                        format!("{f}.rewrite.prefix"),
                        format!("must start with '/', got {:?}", r.prefix),
                    );
                    None
                }
            }
            (Some(_), _) => {
                self.err(
                    format!("{f}.rewrite"),
                    "a prefix rewrite needs a `match.path.prefix`",
                );
                None
            }
        }
    }

    /// Request header edits: headers to set (valid names and values) and to remove.
    pub(super) fn header_edits(
        &mut self,
        f: &str,
        raw: Option<wire::HeaderEdits>,
    ) -> (Vec<(HeaderName, HeaderValue)>, Vec<HeaderName>) {
        let edits = raw.unwrap_or_default();
        let mut set_headers = Vec::new();
        for (k, v) in edits.set {
            let fk = format!("{f}.request_headers.set.{k}");
            let name = self.check(&fk, header_name(&k));
            let value = self.check(
                &fk,
                HeaderValue::from_str(&v).map_err(|_| format!("bad header value {v:?}")),
            );
            if let (Some(n), Some(v)) = (name, value) {
                set_headers.push((n, v));
            }
        }
        let mut remove_headers = Vec::new();
        for (i, k) in edits.remove.iter().enumerate() {
            if let Some(n) = self.check(format!("{f}.request_headers.remove[{i}]"), header_name(k))
            {
                remove_headers.push(n);
            }
        }
        (set_headers, remove_headers)
    }

    pub(super) fn route_match(
        &mut self,
        f: &str,
        raw: wire::Match,
        svc: &Service,
    ) -> Option<RouteMatch> {
        let mut ok = true;
        let path = self.path_match(f, raw.path, svc, &mut ok);
        let method = match raw.method {
            None => None,
            Some(m) => match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                Ok(m) => Some(m),
                Err(_) => {
                    self.err(format!("{f}.match.method"), format!("bad method {m:?}"));
                    ok = false;
                    None
                }
            },
        };
        let headers = self.header_matches(f, raw.headers, &mut ok);
        ok.then_some(RouteMatch {
            path,
            method,
            headers,
        })
    }

    /// The path condition: exactly one of a canonical exact path, a canonical segment prefix
    /// (a trailing `/` means the same prefix), or an anchored regex; `ok` turns false on error.
    fn path_match(
        &mut self,
        f: &str,
        raw: Option<wire::PathMatch>,
        svc: &Service,
        ok: &mut bool,
    ) -> Option<PathMatch> {
        match raw {
            None => None,
            Some(p) => match (p.exact, p.prefix, p.regex) {
                (Some(e), None, None) if e.starts_with('/') => {
                    *ok &= self.canonical(&format!("{f}.match.path.exact"), &e, &svc.paths);
                    Some(PathMatch::Exact(e))
                }
                (None, Some(p), None) if p.starts_with('/') => {
                    *ok &= self.canonical(&format!("{f}.match.path.prefix"), &p, &svc.paths);
                    // `/api/` and `/api` mean the same segment prefix.
                    let trimmed = p.trim_end_matches('/');
                    Some(PathMatch::Prefix(if trimmed.is_empty() {
                        "/".to_owned()
                    } else {
                        trimmed.to_owned()
                    }))
                }
                (None, None, Some(r)) => match anchored(&r) {
                    Ok(re) => Some(PathMatch::Regex(re)),
                    Err(e) => {
                        self.err(format!("{f}.match.path.regex"), e);
                        *ok = false;
                        None
                    }
                },
                (Some(v), None, None) | (None, Some(v), None) => {
                    self.err(
                        format!("{f}.match.path"),
                        format!("must start with '/', got {v:?}"),
                    );
                    *ok = false;
                    None
                }
                _ => {
                    self.err(
                        format!("{f}.match.path"),
                        "give exactly one of exact, prefix, regex",
                    );
                    *ok = false;
                    None
                }
            },
        }
    }

    /// Header conditions: a valid name, and present, an exact value, or an anchored regex;
    /// `ok` turns false on error.
    fn header_matches(
        &mut self,
        f: &str,
        raw: Vec<wire::HeaderMatch>,
        ok: &mut bool,
    ) -> Vec<HeaderMatch> {
        let mut headers = Vec::new();
        for (i, h) in raw.into_iter().enumerate() {
            let fh = format!("{f}.match.headers[{i}]");
            let name = self.check(format!("{fh}.name"), header_name(&h.name));
            let value = match (h.exact, h.regex) {
                (None, None) => Some(HeaderValueMatch::Present),
                (Some(v), None) => self.check(
                    format!("{fh}.exact"),
                    HeaderValue::from_str(&v)
                        .map(HeaderValueMatch::Exact)
                        .map_err(|_| format!("bad header value {v:?}")),
                ),
                (None, Some(r)) => self.check(
                    format!("{fh}.regex"),
                    anchored(&r).map(HeaderValueMatch::Regex),
                ),
                (Some(_), Some(_)) => {
                    self.err(&fh, "give at most one of exact, regex");
                    None
                }
            };
            match (name, value) {
                (Some(name), Some(value)) => headers.push(HeaderMatch { name, value }),
                _ => *ok = false,
            }
        }
        headers
    }
}

/// Which policy a route belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// One sidecar's: every route applies to its own app.
    Sidecar,
    /// The mesh's: a route may name the services whose sidecars get it.
    Mesh,
}

/// The callers two routes both apply to: `Some(None)` is every caller, `None` is nobody.
pub(crate) fn common_callers(
    a: &Option<Vec<String>>,
    b: &Option<Vec<String>>,
) -> Option<Option<Vec<String>>> {
    match (a, b) {
        (None, None) => Some(None),
        (Some(x), None) | (None, Some(x)) => Some(Some(x.clone())),
        (Some(x), Some(y)) => {
            let common: Vec<String> = x.iter().filter(|c| y.contains(c)).cloned().collect();
            (!common.is_empty()).then_some(Some(common))
        }
    }
}

fn for_callers(common: &Option<Vec<String>>) -> String {
    match common {
        None => String::new(),
        Some(c) => format!(" for callers {}", c.join(", ")),
    }
}

/// Two matchers with the same conditions (the later one can never win).
fn same_match(a: &RouteMatch, b: &RouteMatch) -> bool {
    let path_eq = match (&a.path, &b.path) {
        (None, None) => true,
        (Some(PathMatch::Exact(x)), Some(PathMatch::Exact(y))) => x == y,
        (Some(PathMatch::Prefix(x)), Some(PathMatch::Prefix(y))) => x == y,
        (Some(PathMatch::Regex(x)), Some(PathMatch::Regex(y))) => x.as_str() == y.as_str(),
        _ => false,
    };
    let headers_eq = a.headers.len() == b.headers.len()
        && a.headers.iter().zip(&b.headers).all(|(x, y)| {
            x.name == y.name
                && match (&x.value, &y.value) {
                    (HeaderValueMatch::Present, HeaderValueMatch::Present) => true,
                    (HeaderValueMatch::Exact(p), HeaderValueMatch::Exact(q)) => p == q,
                    (HeaderValueMatch::Regex(p), HeaderValueMatch::Regex(q)) => {
                        p.as_str() == q.as_str()
                    }
                    _ => false,
                }
        });
    path_eq && a.method == b.method && headers_eq
}
