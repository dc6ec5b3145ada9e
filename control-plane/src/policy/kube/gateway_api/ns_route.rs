//! North-south routes: one `HTTPRoute` or `GRPCRoute` and one of its Gateway parents
//! ([`NsRoute`]; a GRPCRoute read as the HTTPRoute it amounts to, [`super::grpc`]) become
//! gateway routes ([`Translated`]) or a typed refusal ([`RouteError`], one variant per Gateway
//! API reason).
//!
//! - **Attachment**: the listeners the parentRef names (`sectionName`, `port`; none: every
//!   listener) that serve routes (accepted HTTPS: Weft's plain-HTTP listener only redirects)
//!   and allow the route's namespace (`Same`, `All`); none named: `NoMatchingParent`; none
//!   allowing: `NotAllowedByListeners`; no host in common: `NoMatchingListenerHostname`.
//! - **Hosts**: the route's `hostnames` that the listeners' `hostname`s take (a wildcard
//!   meets a name under it, the narrower of two wildcards wins), or the listeners' when the
//!   route has none.
//! - **Matches**: as GAMMA's ([`super::matches`]): paths exact, prefix, regex; headers; method.
//! - **Backends**: core Services of the mesh (another namespace's with a ReferenceGrant),
//!   weighted: one Service takes every request, several split them by weight per request
//!   (a canary across Services, moved by editing the weights); weight 0 takes none, and a
//!   rule where none takes any is refused.
//! - **Filters**: `RequestHeaderModifier` (`set`, `remove`), `URLRewrite` `ReplacePrefixMatch`
//!   on prefix matches. The rest (`RequestRedirect`, host rewrites, `add`, mirrors, response
//!   headers, CORS, extensions) and `timeouts` are refused: the gateway model has no field
//!   for them.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Secret, Service as KubeService};
use kube::api::DynamicObject;
use weft_policy::gateway::{BackendFile, RouteFile};
use weft_policy::gateway_auth::wire::RouteAccessFile;
use weft_policy::wire;

use super::error::RouteError;
use super::filters::{self, Place};
use super::matches::{route_match, Rank};
use super::types::ReferenceGrantSpec;
use super::types::{BackendRef, HttpRouteMatch, HttpRouteRule, HttpRouteSpec, ParentRef};

/// The longest gateway route name.
const MAX_ROUTE_NAME: usize = 63;

/// What the translation reads.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    /// Every `GatewayClass`.
    pub classes: &'a [DynamicObject],
    /// Every `Gateway`.
    pub gateways: &'a [DynamicObject],
    /// Every `HTTPRoute`.
    pub routes: &'a [DynamicObject],
    /// Every `GRPCRoute`.
    pub grpc_routes: &'a [DynamicObject],
    /// Every ReferenceGrant, with its namespace.
    pub grants: &'a [(String, ReferenceGrantSpec)],
    /// Every Service.
    pub services: &'a [KubeService],
    /// Every Secret, or `None` when the control plane may not read them.
    pub secrets: Option<&'a [Secret]>,
    /// The mesh services (named `<service>.<namespace>`).
    pub mesh: &'a [wire::Service],
    /// Every `GatewayPolicy`.
    pub policies: &'a [DynamicObject],
}

impl Inputs<'_> {
    /// Whether a grant in `to_ns` lets a `from_kind` of `from_ns` refer to the core
    /// `to_kind` object `name`.
    pub fn granted(
        &self,
        (from_kind, from_ns): (&str, &str),
        (to_kind, to_ns, name): (&str, &str, &str),
    ) -> bool {
        self.grants.iter().any(|(ns, g)| {
            ns == to_ns
                && g.from.iter().any(|f| {
                    f.group == super::GROUP && f.kind == from_kind && f.namespace == from_ns
                })
                && g.to.iter().any(|t| {
                    t.group.is_empty()
                        && t.kind == to_kind
                        && t.name.as_deref().is_none_or(|n| n == name)
                })
        })
    }
}

/// What a route needs to know of one listener of its Gateway.
#[derive(Debug, Clone, Copy)]
pub struct ListenerView<'a> {
    /// Name (`sectionName`).
    pub name: &'a str,
    /// Port.
    pub port: i32,
    /// Its hostname.
    pub hostname: Option<&'a str>,
    /// Accepted as HTTPS: routes attach.
    pub serves_routes: bool,
    /// The route kinds it takes (`allowedRoutes.kinds`, or every kind Weft serves).
    pub kinds: &'a [&'static str],
    /// A plain-HTTP listener (redirects only).
    pub http: bool,
    /// `allowedRoutes.namespaces.from: All`.
    pub from_all: bool,
    /// The Gateway's namespace.
    pub gateway_ns: &'a str,
}

/// One HTTPRoute (or GRPCRoute, read as the HTTPRoute it amounts to) and one of its Gateway
/// parents, to translate.
pub struct NsRoute<'a> {
    /// `HTTPRoute` or `GRPCRoute`: which listeners take it, which grants let it refer.
    pub kind: &'a str,
    /// The route's namespace.
    pub namespace: &'a str,
    /// The route's name.
    pub name: &'a str,
    /// Its spec.
    pub spec: &'a HttpRouteSpec,
    /// The parent ([`ParentRef::is_gateway`]).
    pub parent: &'a ParentRef,
    /// The parent's index in `parentRefs` (route names of a second parent differ).
    pub parent_index: usize,
    /// The cluster.
    pub inputs: &'a Inputs<'a>,
    /// Per rule, the access block its attached policy gives it ([`super::policy_attach`]).
    pub access: &'a [Option<RouteAccessFile>],
}

/// A route's share of one Gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct Translated {
    /// The listeners it attached to (indices into the Gateway's).
    pub listeners: Vec<usize>,
    /// Gateway routes with their precedence (host class: 0 exact, 1 wildcard, 2 any; the
    /// match's rank).
    pub routes: Vec<(u8, Rank, RouteFile)>,
}

impl NsRoute<'_> {
    /// The gateway routes for a Gateway whose verdict is `gateway` and listeners `listeners`.
    // Long: attachment in the Gateway API's order of reasons (parent, listener, namespace,
    // hostname), then the rules; each refusal says which step failed.
    pub fn translate(
        &self,
        gateway: &Result<(), (&'static str, String)>,
        listeners: &[ListenerView<'_>],
    ) -> Result<Translated, RouteError> {
        let p = self.parent;
        if let Err((_, why)) = gateway {
            return Err(RouteError::NoMatchingParent(format!(
                "Gateway {} is not accepted: {why}",
                p.name
            )));
        }
        let named: Vec<(usize, &ListenerView<'_>)> = listeners
            .iter()
            .enumerate()
            .filter(|(_, l)| {
                p.section_name.as_deref().is_none_or(|s| s == l.name)
                    && p.port.is_none_or(|n| n == l.port)
            })
            .collect();
        if named.is_empty() {
            return Err(RouteError::NoMatchingParent(format!(
                "Gateway {} has no listener {}",
                p.name,
                p.section_name
                    .clone()
                    .or(p.port.map(|n| format!("on port {n}")))
                    .unwrap_or_default()
            )));
        }
        let allowed: Vec<(usize, &ListenerView<'_>)> = named
            .iter()
            .copied()
            .filter(|(_, l)| {
                l.serves_routes
                    && (l.from_all || l.gateway_ns == self.namespace)
                    && l.kinds.contains(&self.kind)
            })
            .collect();
        if allowed.is_empty() {
            let kinds = format!(
                "the listeners it names take no {}s (allowedRoutes.kinds)",
                self.kind
            );
            let why = if named.iter().all(|(_, l)| l.http) {
                "Weft's plain-HTTP listener only redirects to HTTPS: attach to an HTTPS listener"
            } else if named.iter().all(|(_, l)| !l.serves_routes) {
                "the listeners it names are not programmed (see the Gateway's status.listeners)"
            } else if named
                .iter()
                .all(|(_, l)| !l.serves_routes || !l.kinds.contains(&self.kind))
            {
                kinds.as_str()
            } else {
                "the listeners it names take routes of the Gateway's namespace only \
                 (allowedRoutes.namespaces.from)"
            };
            return Err(RouteError::NotAllowedByListeners(why.into()));
        }
        let mut attached = Vec::new();
        let mut any_host = false;
        let mut hosts = BTreeSet::new();
        for (i, l) in allowed {
            if let Some(h) = intersect(l.hostname, &self.spec.hostnames) {
                attached.push(i);
                any_host |= h.is_empty();
                hosts.extend(h);
            }
        }
        if attached.is_empty() {
            return Err(RouteError::NoMatchingListenerHostname(
                "no hostname of the route is one the listeners take".into(),
            ));
        }
        let hosts: Vec<String> = if any_host {
            Vec::new()
        } else {
            hosts.into_iter().collect()
        };
        let class = match () {
            _ if hosts.is_empty() => 2,
            _ if hosts.iter().any(|h| h.starts_with("*.")) => 1,
            _ => 0,
        };
        let mut routes = Vec::new();
        for (ri, rule) in self.spec.rules.iter().enumerate() {
            for (rank, r) in self.rule(ri, rule, &hosts)? {
                routes.push((class, rank, r));
            }
        }
        self.alone(&routes)?;
        Ok(Translated {
            listeners: attached,
            routes,
        })
    }

    /// One rule's routes, one per match.
    fn rule(
        &self,
        ri: usize,
        rule: &HttpRouteRule,
        hosts: &[String],
    ) -> Result<Vec<(Rank, RouteFile)>, RouteError> {
        let f = format!("spec.rules[{ri}]");
        if rule.timeouts.is_some() {
            return Err(RouteError::unsupported(
                format!("{f}.timeouts"),
                "not supported at the gateway (set the service's timeouts with a MeshRoute \
                 or a GAMMA HTTPRoute)",
            ));
        }
        let backends = self.backends(&f, rule)?;
        // One Service: the plain form; several: the weighted split.
        let (service, backends) = match &backends[..] {
            [(one, _)] => (one.clone(), Vec::new()),
            _ => (
                String::new(),
                backends
                    .into_iter()
                    .map(|(service, weight)| BackendFile { service, weight })
                    .collect(),
            ),
        };
        let (rewrite, headers) = filters::translate(&f, &rule.filters, Place::Gateway)?;
        let defaults = [HttpRouteMatch::default()];
        let matches = if rule.matches.is_empty() {
            &defaults[..]
        } else {
            &rule.matches[..]
        };
        let mut out = Vec::new();
        for (mi, m) in matches.iter().enumerate() {
            let fm = format!("{f}.matches[{mi}]");
            let (matches, rank, prefix) = route_match(&fm, m)?;
            if rewrite.is_some() && !prefix {
                return Err(RouteError::unsupported(
                    format!("{f}.filters"),
                    "URLRewrite ReplacePrefixMatch needs PathPrefix matches",
                ));
            }
            out.push((
                rank,
                RouteFile {
                    name: self.route_name(ri, mi),
                    hosts: hosts.to_vec(),
                    matches,
                    service: service.clone(),
                    backends: backends.clone(),
                    rewrite: rewrite.clone(),
                    request_headers: headers.clone(),
                    access: self.access.get(ri).cloned().flatten(),
                },
            ));
        }
        Ok(out)
    }

    /// The mesh services a rule's backendRefs send requests to, each with its weight (above
    /// 0; the same Service named twice adds up).
    fn backends(&self, f: &str, rule: &HttpRouteRule) -> Result<Vec<(String, u32)>, RouteError> {
        let mut taking: Vec<(String, u32)> = Vec::new();
        for (bi, b) in rule.backend_refs.iter().enumerate() {
            let fb = format!("{f}.backendRefs[{bi}]");
            let name = self.backend_service(&fb, b)?;
            let weight = u32::try_from(b.weight.unwrap_or(1)).map_err(|_| {
                RouteError::unsupported(format!("{fb}.weight"), "a weight is 0 or more")
            })?;
            if weight == 0 {
                continue;
            }
            match taking.iter_mut().find(|(s, _)| *s == name) {
                Some((_, w)) => *w = w.saturating_add(weight),
                None => taking.push((name, weight)),
            }
        }
        if taking.is_empty() {
            return Err(RouteError::unsupported(
                format!("{f}.backendRefs"),
                "no backend takes requests (none, or every weight 0): not supported at the \
                 gateway",
            ));
        }
        Ok(taking)
    }

    /// The mesh service (`<name>.<namespace>`) a backendRef names.
    fn backend_service(&self, fb: &str, b: &BackendRef) -> Result<String, RouteError> {
        let group = b.group.as_deref().unwrap_or("");
        let kind = b.kind.as_deref().unwrap_or("Service");
        if !group.is_empty() || kind != "Service" {
            return Err(RouteError::InvalidKind {
                field: fb.to_owned(),
                why: format!("{kind} of group {group:?}: only core Services are backends"),
            });
        }
        if !b.filters.is_empty() {
            return Err(RouteError::unsupported(
                format!("{fb}.filters"),
                "per-backend filters are not supported (put them on the rule)",
            ));
        }
        let ns = b.namespace.as_deref().unwrap_or(self.namespace);
        if ns != self.namespace
            && !self
                .inputs
                .granted((self.kind, self.namespace), ("Service", ns, &b.name))
        {
            return Err(RouteError::RefNotPermitted {
                field: fb.to_owned(),
                why: format!(
                    "Service {ns}/{} is of another namespace and no ReferenceGrant in {ns} lets \
                     {}s of {} refer to it",
                    b.name, self.kind, self.namespace
                ),
            });
        }
        let found = self.inputs.services.iter().find(|s| {
            s.metadata.namespace.as_deref() == Some(ns)
                && s.metadata.name.as_deref() == Some(&b.name)
        });
        let Some(svc) = found else {
            return Err(RouteError::BackendNotFound {
                field: fb.to_owned(),
                why: format!("no Service {ns}/{}", b.name),
            });
        };
        if let Some(port) = b.port {
            let ports = svc.spec.as_ref().and_then(|s| s.ports.clone());
            if !ports.unwrap_or_default().iter().any(|p| p.port == port) {
                return Err(RouteError::BackendNotFound {
                    field: format!("{fb}.port"),
                    why: format!("Service {ns}/{} has no port {port}", b.name),
                });
            }
        }
        let mesh = format!("{}.{ns}", b.name);
        if !self.inputs.mesh.iter().any(|s| s.name == mesh) {
            return Err(RouteError::BackendNotFound {
                field: fb.to_owned(),
                why: format!(
                    "Service {ns}/{} is not a mesh service (a Service whose pods run the \
                     weft-proxy sidecar)",
                    b.name
                ),
            });
        }
        Ok(mesh)
    }

    /// `<namespace>.<route>[-p<parent>]-r<rule>-m<match>`, shortened with a hash of the whole
    /// to fit a route name.
    fn route_name(&self, rule: usize, m: usize) -> String {
        let parent = match self.parent_index {
            0 => String::new(),
            n => format!("-p{n}"),
        };
        let suffix = format!("{parent}-r{rule}-m{m}");
        let head = format!("{}.{}", self.namespace, self.name);
        let full = format!("{head}{suffix}");
        if full.len() <= MAX_ROUTE_NAME {
            return full;
        }
        // FNV-1a: stable across processes (the name is a metric label).
        let hash = full.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        let keep = MAX_ROUTE_NAME - suffix.len() - 9;
        let head: String = head.chars().take(keep).collect();
        format!(
            "{}-{:08x}{suffix}",
            head.trim_end_matches(['-', '.']),
            hash as u32
        )
    }

    /// The routes pass the gateway file's own route checks on their own, or the route is
    /// refused with what those checks say (access blocks aside: their policies were checked
    /// on their own).
    fn alone(&self, routes: &[(u8, Rank, RouteFile)]) -> Result<(), RouteError> {
        let files: Vec<RouteFile> = (routes.iter())
            .map(|(_, _, r)| RouteFile {
                access: None,
                ..r.clone()
            })
            .collect();
        let services: Vec<wire::Service> = self
            .inputs
            .mesh
            .iter()
            .filter(|s| {
                files
                    .iter()
                    .any(|r| r.service == s.name || r.backends.iter().any(|b| b.service == s.name))
            })
            .cloned()
            .collect();
        weft_policy::gateway::validate_routes(files.clone(), services).map_err(|errors| {
            let why = errors
                .iter()
                .map(|e| {
                    let (item, tail) = e.field.split_once(']').unwrap_or((&e.field, ""));
                    let i: Option<usize> =
                        item.strip_prefix("routes[").and_then(|n| n.parse().ok());
                    let name = i
                        .and_then(|i| files.get(i))
                        .map_or(item, |r| r.name.as_str());
                    format!("route {name}{tail}: {}", e.reason)
                })
                .collect::<Vec<_>>()
                .join("; ");
            RouteError::unsupported("spec.rules", why)
        })
    }
}

/// The hosts a listener of `hostname` and a route of `route` share: `None` when none, an
/// empty list for any host.
pub fn intersect(listener: Option<&str>, route: &[String]) -> Option<Vec<String>> {
    let route: Vec<String> = route.iter().map(|h| h.to_ascii_lowercase()).collect();
    let Some(l) = listener.map(str::to_ascii_lowercase) else {
        return Some(route);
    };
    if route.is_empty() {
        return Some(vec![l]);
    }
    let out: Vec<String> = route.iter().filter_map(|r| meet(&l, r)).collect();
    (!out.is_empty()).then_some(out)
}

/// The narrower of two host patterns when one takes the other, as the Gateway API says (a
/// wildcard takes names of one or more labels under it).
fn meet(a: &str, b: &str) -> Option<String> {
    let under = |wild: &str, name: &str| {
        wild.strip_prefix('*')
            .is_some_and(|suffix| name.len() > suffix.len() && name.ends_with(suffix))
    };
    match (a.starts_with("*."), b.starts_with("*.")) {
        (false, false) => (a == b).then(|| a.to_owned()),
        (true, false) => under(a, b).then(|| b.to_owned()),
        (false, true) => under(b, a).then(|| a.to_owned()),
        (true, true) if a == b => Some(a.to_owned()),
        (true, true) if under(a, &b[1..]) => Some(b.to_owned()),
        (true, true) => under(b, &a[1..]).then(|| a.to_owned()),
    }
}
