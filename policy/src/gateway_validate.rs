//! Field checks of the gateway file: each section into its domain value, every problem
//! recorded with its field path (which `parse` turns into a line and column).

use std::time::Duration;

use http::header::HeaderValue;

use super::*;

/// The shortest and longest certificate poll period.
const RELOAD_RANGE: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(3600));
/// Limits on the limits: a timeout of zero would refuse everything, one of a day would be a
/// slowloris's friend.
const TIMEOUT_RANGE: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(3600));
/// The largest body limit (1 GiB): the gateway streams bodies, but a limit is a limit.
const MAX_BODY_LIMIT: u64 = 1 << 30;
/// Pingora refuses a request header block over 1 MiB before the gateway sees it.
const MAX_HEADER_LIMIT: usize = (1 << 20) - 1;
/// Most services in one route's weighted split (a canary needs two; a hundred is a mistake).
const MAX_BACKENDS: usize = 16;

impl Validator<'_> {
    pub(super) fn gateway(&mut self, raw: GatewayFile, services: &[Service]) -> Option<Gateway> {
        let https = self.check("listen.https", socket_addr(&raw.listen.https));
        let http_redirect = raw
            .listen
            .http_redirect
            .as_deref()
            .and_then(|a| self.check("listen.http_redirect", socket_addr(a)));
        if raw.listen.redirect_port == Some(0) {
            self.err("listen.redirect_port", "must be a port above 0");
        }
        let min_tls = match raw.tls.min_version.as_deref() {
            None | Some("1.2") => TlsVersion::Tls12,
            Some("1.3") => TlsVersion::Tls13,
            Some(other) => {
                self.err(
                    "tls.min_version",
                    format!("unknown TLS version {other:?}; expected \"1.2\" or \"1.3\""),
                );
                TlsVersion::Tls12
            }
        };
        let reload_interval = match raw.tls.reload_interval.as_deref() {
            None => Duration::from_secs(2),
            Some(s) => self
                .check(
                    "tls.reload_interval",
                    bounded(s, RELOAD_RANGE.0, RELOAD_RANGE.1),
                )
                .unwrap_or_default(),
        };
        let certificates = self.edge_certificates(raw.tls.certificates);
        let hsts = raw.hsts.and_then(|h| self.edge_hsts(h));
        let limits = self.edge_limits(raw.limits);
        let trusted_proxies = raw
            .trusted_proxies
            .iter()
            .enumerate()
            .filter_map(|(i, c)| self.check(format!("trusted_proxies[{i}]"), c.parse()))
            .collect();
        let auth = self.gateway_auth(raw.auth);
        let routes = self.gateway_routes(raw.routes, services, &auth);
        Some(Gateway {
            https: https?,
            http_redirect,
            redirect_port: raw.listen.redirect_port,
            min_tls,
            reload_interval,
            certificates,
            hsts,
            limits,
            trusted_proxies,
            routes,
            auth,
        })
    }

    fn edge_certificates(&mut self, raw: Vec<CertFile>) -> Vec<EdgeCert> {
        if raw.is_empty() {
            self.err("tls.certificates", "give at least one certificate");
        }
        let mut seen: Vec<HostPattern> = Vec::new();
        let mut out = Vec::new();
        for (i, c) in raw.into_iter().enumerate() {
            let f = format!("tls.certificates[{i}]");
            if c.hosts.is_empty() && !c.default {
                self.err(
                    format!("{f}.hosts"),
                    "name at least one host (or set default)",
                );
            }
            let mut hosts = Vec::new();
            for (j, h) in c.hosts.iter().enumerate() {
                let Some(p) = self.check(format!("{f}.hosts[{j}]"), host_pattern(h)) else {
                    continue;
                };
                if seen.contains(&p) {
                    self.err(
                        format!("{f}.hosts[{j}]"),
                        format!("{p} is served by an earlier certificate"),
                    );
                }
                seen.push(p.clone());
                hosts.push(p);
            }
            if c.default && out.iter().any(|e: &EdgeCert| e.default) {
                self.err(
                    format!("{f}.default"),
                    "only one certificate may be the default",
                );
            }
            out.push(EdgeCert {
                hosts,
                cert: self.base.join(&c.cert),
                key: self.base.join(&c.key),
                default: c.default,
            });
        }
        out
    }

    fn edge_hsts(&mut self, raw: HstsFile) -> Option<Hsts> {
        let age = self.check("hsts.max_age", parse_duration(&raw.max_age))?;
        let mut value = format!("max-age={}", age.as_secs());
        if raw.include_subdomains {
            value.push_str("; includeSubDomains");
        }
        if raw.preload {
            value.push_str("; preload");
        }
        let value = self.check(
            "hsts",
            HeaderValue::from_str(&value).map_err(|e| e.to_string()),
        )?;
        Some(Hsts { value })
    }

    fn edge_limits(&mut self, raw: LimitsFile) -> Limits {
        let d = Limits::default();
        let time = |v: &mut Self, name: &str, s: Option<String>, default: Duration| match s {
            None => default,
            Some(s) => v
                .check(
                    format!("limits.{name}"),
                    bounded(&s, TIMEOUT_RANGE.0, TIMEOUT_RANGE.1),
                )
                .unwrap_or(default),
        };
        let limits = Limits {
            max_body_bytes: raw.max_body_bytes.unwrap_or(d.max_body_bytes),
            max_header_bytes: raw.max_header_bytes.unwrap_or(d.max_header_bytes),
            handshake_timeout: time(
                self,
                "handshake_timeout",
                raw.handshake_timeout,
                d.handshake_timeout,
            ),
            header_timeout: time(self, "header_timeout", raw.header_timeout, d.header_timeout),
            body_timeout: time(self, "body_timeout", raw.body_timeout, d.body_timeout),
            idle_timeout: time(self, "idle_timeout", raw.idle_timeout, d.idle_timeout),
            max_connections: raw.max_connections.unwrap_or(d.max_connections),
        };
        if limits.max_body_bytes > MAX_BODY_LIMIT {
            self.err(
                "limits.max_body_bytes",
                format!(
                    "{} is above the limit of {MAX_BODY_LIMIT}",
                    limits.max_body_bytes
                ),
            );
        }
        if !(1024..=MAX_HEADER_LIMIT).contains(&limits.max_header_bytes) {
            self.err(
                "limits.max_header_bytes",
                format!(
                    "{} must be between 1024 and {MAX_HEADER_LIMIT}",
                    limits.max_header_bytes
                ),
            );
        }
        if limits.max_connections == 0 {
            self.err("limits.max_connections", "must be above 0");
        }
        limits
    }

    /// The `auth` section: JWT providers and API key sets, relative paths resolved.
    fn gateway_auth(
        &mut self,
        raw: crate::gateway_auth::wire::GatewayAuthFile,
    ) -> crate::gateway_auth::GatewayAuth {
        match crate::gateway_auth::GatewayAuth::try_from(raw) {
            Ok(a) => a.resolve(self.base),
            Err(errors) => {
                for e in errors {
                    self.err(format!("auth.{}", e.field), e.reason);
                }
                crate::gateway_auth::GatewayAuth::default()
            }
        }
    }

    pub(super) fn gateway_routes(
        &mut self,
        raw: Vec<RouteFile>,
        services: &[Service],
        auth: &crate::gateway_auth::GatewayAuth,
    ) -> Vec<GatewayRoute> {
        let mut names: Vec<String> = Vec::new();
        let mut out = Vec::new();
        for (i, r) in raw.into_iter().enumerate() {
            let f = format!("routes[{i}]");
            if let Err(e) = crate::fields::service_name(&r.name) {
                self.err(format!("{f}.name"), e);
            } else if names.contains(&r.name) {
                self.err(
                    format!("{f}.name"),
                    format!("route {:?} is named twice", r.name),
                );
            }
            names.push(r.name.clone());
            let access = crate::gateway_auth::RouteAccess::validate(
                r.access.unwrap_or_default(),
                auth,
                &format!("{f}.access."),
            )
            .unwrap_or_else(|errors| {
                self.errors.extend(errors);
                crate::gateway_auth::RouteAccess::default()
            });
            let hosts: Vec<HostPattern> = r
                .hosts
                .iter()
                .enumerate()
                .filter_map(|(j, h)| self.check(format!("{f}.hosts[{j}]"), host_pattern(h)))
                .collect();
            let Some((backends, svc)) = self.route_backends(&f, &r.service, r.backends, services)
            else {
                continue;
            };
            let Some(matcher) = self.route_match(&f, r.matches, svc) else {
                continue;
            };
            let rewrite_prefix = self.rewrite(&f, r.rewrite, Some(&matcher), svc);
            let (set_headers, remove_headers) = self.header_edits(&f, r.request_headers);
            for (j, (name, _)) in set_headers.iter().enumerate() {
                if name.as_str().starts_with("x-weft-") {
                    self.err(
                        format!("{f}.request_headers.set.{name}"),
                        format!("x-weft-* headers are the mesh's own (entry {j})"),
                    );
                }
            }
            out.push(GatewayRoute {
                name: r.name,
                hosts,
                matcher,
                backends,
                rewrite_prefix,
                set_headers,
                remove_headers,
                access,
            });
        }
        out
    }

    /// A route's `service`, or its weighted `backends`, checked against the sidecar config's
    /// services; with the service whose path options the route's match is checked with (every
    /// service of a split must share them: the match is canonicalized once).
    fn route_backends<'s>(
        &mut self,
        f: &str,
        service: &str,
        raw: Vec<BackendFile>,
        services: &'s [Service],
    ) -> Option<(Backends, &'s Service)> {
        let find = |name: &str| services.iter().find(|s| s.name == name);
        match (service.is_empty(), raw.is_empty()) {
            (false, true) => {
                let Some(svc) = find(service) else {
                    self.err(format!("{f}.service"), unknown_service(service));
                    return None;
                };
                Some((Backends::one(&svc.name), svc))
            }
            (true, false) => self.weighted_split(f, raw, services),
            (false, false) => {
                self.err(
                    format!("{f}.backends"),
                    "a route names `service` or `backends`, not both",
                );
                None
            }
            (true, true) => {
                self.err(
                    format!("{f}.service"),
                    "missing: a route names a `service` or weighted `backends`",
                );
                None
            }
        }
    }

    /// A route's weighted `backends`: each a known service named once, not all of weight 0,
    /// all with the same path options.
    fn weighted_split<'s>(
        &mut self,
        f: &str,
        raw: Vec<BackendFile>,
        services: &'s [Service],
    ) -> Option<(Backends, &'s Service)> {
        let find = |name: &str| services.iter().find(|s| s.name == name);
        if raw.len() > MAX_BACKENDS {
            self.err(
                format!("{f}.backends"),
                format!("{} backends; at most {MAX_BACKENDS}", raw.len()),
            );
            return None;
        }
        let mut ok = true;
        let mut split: Vec<(String, u64)> = Vec::new();
        let mut first: Option<&Service> = None;
        let mut named: Vec<String> = Vec::new();
        for (j, b) in raw.into_iter().enumerate() {
            let fb = format!("{f}.backends[{j}]");
            let Some(svc) = find(&b.service) else {
                self.err(format!("{fb}.service"), unknown_service(&b.service));
                ok = false;
                continue;
            };
            if named.contains(&svc.name) {
                self.err(
                    format!("{fb}.service"),
                    format!("{:?} is named twice", b.service),
                );
                ok = false;
            }
            named.push(svc.name.clone());
            match first {
                Some(p) if p.paths != svc.paths => {
                    self.err(
                        format!("{fb}.service"),
                        format!(
                            "{:?} canonicalizes paths unlike {:?}: the services of a \
                             split must share their path options",
                            svc.name, p.name
                        ),
                    );
                    ok = false;
                }
                Some(_) => {}
                None => first = Some(svc),
            }
            if b.weight > 0 {
                let upto = split.last().map_or(0, |s| s.1) + u64::from(b.weight);
                split.push((svc.name.clone(), upto));
            }
        }
        if ok && split.is_empty() {
            self.err(
                format!("{f}.backends"),
                "every weight is 0: no service would take a request",
            );
            ok = false;
        }
        let svc = first?;
        ok.then(|| (Backends::from_cumulative(split), svc))
    }
}

/// Why a route's service is refused when the sidecar config does not have it.
fn unknown_service(name: &str) -> String {
    format!(
        "unknown service {name:?}: a gateway route names a `services` entry of the sidecar config"
    )
}
