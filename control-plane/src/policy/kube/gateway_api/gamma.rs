//! GAMMA (east-west): an `HTTPRoute` whose parent is a core `Service` becomes mesh routes of
//! that service ([`GammaRoute`] → [`MeshRoutes`], a `TryFrom` whose error, [`RouteError`],
//! says which Gateway API reason applies).
//!
//! - **Matches**: each match of each rule is one mesh route (a rule without matches takes
//!   every path): `Exact`, `PathPrefix`, `RegularExpression` paths; `Exact` and
//!   `RegularExpression` headers; the method. Query parameter matches are refused.
//! - **Backends**: mesh routes pick among the parent Service's own endpoints, so a backendRef
//!   names a Service whose pods are some of the parent's: the parent itself (every endpoint),
//!   or a Service whose selector holds the parent's selector and more labels (`app: orders,
//!   version: v2` under `app: orders`), which become the backend's subset. Weights carry over
//!   (the canary split Argo Rollouts and Flagger drive). No backend, or every weight 0, answers
//!   500 (as the Gateway API says), by a fault abort of every request.
//! - **Filters**: `RequestHeaderModifier` (`set`, `remove`), `URLRewrite` with
//!   `ReplacePrefixMatch` on `PathPrefix` matches; the rest (`add`, `ReplaceFullPath`, host
//!   rewrites, `RequestRedirect`, response headers, mirrors, CORS, extensions, per-backend
//!   filters) are refused.
//! - **Timeouts**: `timeouts.request` is the route timeout (`0s`: none);
//!   `timeouts.backendRequest` is refused.
//!
//! Anything refused makes the route not Accepted (`UnsupportedValue`, naming the field); it
//! is never silently dropped.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service as KubeService;
use weft_policy::wire;

use super::error::RouteError;
use super::filters::{self, Place};
use super::matches::{route_match, Rank};
use super::types::{
    BackendRef, HttpRouteMatch, HttpRouteRule, HttpRouteSpec, ParentRef, ReferenceGrantSpec,
};

/// Labels endpoints never carry (the mapping drops them): a subset naming one selects nothing.
const NOISY_LABELS: [&str; 2] = ["pod-template-hash", "controller-revision-hash"];
/// The longest mesh route name.
const MAX_ROUTE_NAME: usize = 63;

/// What a GAMMA translation needs besides the route: the cluster's Services and grants.
pub struct Cluster<'a> {
    /// Every Service.
    pub services: &'a [KubeService],
    /// Every ReferenceGrant, with its namespace.
    pub grants: &'a [(String, ReferenceGrantSpec)],
}

impl Cluster<'_> {
    fn service(&self, namespace: &str, name: &str) -> Option<&KubeService> {
        self.services.iter().find(|s| {
            s.metadata.namespace.as_deref() == Some(namespace)
                && s.metadata.name.as_deref() == Some(name)
        })
    }

    /// Whether a grant in `to_ns` lets a `from_kind` of `from_ns` refer to the Service `name`.
    pub fn granted(&self, from_kind: &str, from_ns: &str, to_ns: &str, name: &str) -> bool {
        self.grants.iter().any(|(ns, g)| {
            ns == to_ns
                && g.from.iter().any(|f| {
                    f.group == super::GROUP && f.kind == from_kind && f.namespace == from_ns
                })
                && g.to.iter().any(|t| {
                    t.group.is_empty()
                        && t.kind == "Service"
                        && t.name.as_deref().is_none_or(|n| n == name)
                })
        })
    }
}

/// One HTTPRoute and one of its Service parents, to translate.
pub struct GammaRoute<'a> {
    /// `HTTPRoute` or `GRPCRoute` (as ReferenceGrants name it).
    pub kind: &'a str,
    /// The route's namespace.
    pub namespace: &'a str,
    /// The route's name.
    pub name: &'a str,
    /// Its spec.
    pub spec: &'a HttpRouteSpec,
    /// The parent (a Service, [`ParentRef::is_service`]).
    pub parent: &'a ParentRef,
    /// The mesh services accepted so far (the parent must be one).
    pub mesh: &'a [wire::Service],
    /// Services and grants.
    pub cluster: &'a Cluster<'a>,
}

/// A mesh route with its Gateway API precedence ([`Rank`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RankedRoute {
    /// Where it goes among the routes of its service.
    pub rank: Rank,
    /// The route.
    pub route: wire::Route,
}

/// The mesh routes of one HTTPRoute for one Service parent, in rule and match order.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshRoutes(pub Vec<RankedRoute>);

impl TryFrom<GammaRoute<'_>> for MeshRoutes {
    type Error = RouteError;

    fn try_from(g: GammaRoute<'_>) -> Result<Self, RouteError> {
        let parent_ns = g.parent.namespace.as_deref().unwrap_or(g.namespace);
        if parent_ns != g.namespace {
            return Err(RouteError::unsupported(
                "spec.parentRefs",
                format!(
                    "Service {parent_ns}/{} is of another namespace: consumer routes are not \
                     supported (put the route in the Service's namespace)",
                    g.parent.name
                ),
            ));
        }
        let mesh_name = format!("{}.{parent_ns}", g.parent.name);
        let parent = match (
            g.cluster.service(parent_ns, &g.parent.name),
            g.mesh.iter().any(|s| s.name == mesh_name),
        ) {
            (Some(p), true) => p,
            _ => {
                return Err(RouteError::NoMatchingParent(format!(
                    "Service {parent_ns}/{} is not a mesh service (a Service whose pods run \
                     the weft-proxy sidecar)",
                    g.parent.name
                )))
            }
        };
        parent_port(g.parent, parent)?;
        if !g.spec.hostnames.is_empty() {
            return Err(RouteError::unsupported(
                "spec.hostnames",
                "a route to a Service takes no hostnames",
            ));
        }
        let mut out = Vec::new();
        for (ri, rule) in g.spec.rules.iter().enumerate() {
            let f = format!("spec.rules[{ri}]");
            let shared = RuleParts::new(&f, rule, &g, parent)?;
            let defaults = [HttpRouteMatch::default()];
            let matches = if rule.matches.is_empty() {
                &defaults[..]
            } else {
                &rule.matches[..]
            };
            for (mi, m) in matches.iter().enumerate() {
                let fm = format!("{f}.matches[{mi}]");
                let (matches, rank, prefix) = route_match(&fm, m)?;
                if shared.rewrite.is_some() && !prefix {
                    return Err(RouteError::unsupported(
                        format!("{f}.filters"),
                        "URLRewrite ReplacePrefixMatch needs PathPrefix matches",
                    ));
                }
                out.push(RankedRoute {
                    rank,
                    route: wire::Route {
                        name: route_name(g.name, ri, mi),
                        service: mesh_name.clone(),
                        from: None,
                        matches,
                        backends: shared.backends.clone(),
                        timeout: shared.timeout.clone(),
                        rewrite: shared.rewrite.clone(),
                        request_headers: shared.headers.clone(),
                        retry: None,
                        rate_limit: None,
                        fault: shared.fault.clone(),
                    },
                });
            }
        }
        Ok(MeshRoutes(out))
    }
}

/// A port or port name in the parentRef must name the Service's only port: mesh routes apply
/// to every port of a service.
fn parent_port(p: &ParentRef, svc: &KubeService) -> Result<(), RouteError> {
    if p.port.is_none() && p.section_name.is_none() {
        return Ok(());
    }
    let ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    let named = ports.iter().any(|sp| {
        p.port.is_none_or(|n| sp.port == n)
            && p.section_name
                .as_deref()
                .is_none_or(|s| sp.name.as_deref() == Some(s))
    });
    if !named {
        return Err(RouteError::NoMatchingParent(format!(
            "Service {} has no port {}",
            p.name,
            p.section_name
                .clone()
                .or(p.port.map(|n| n.to_string()))
                .unwrap_or_default()
        )));
    }
    if ports.len() > 1 {
        return Err(RouteError::unsupported(
            "spec.parentRefs",
            "a route to one port of a Service of several ports: mesh routes apply to every \
             port (leave port and sectionName out)",
        ));
    }
    Ok(())
}

/// What every match of one rule shares.
struct RuleParts {
    backends: Vec<wire::Backend>,
    fault: Option<wire::Fault>,
    timeout: Option<String>,
    rewrite: Option<wire::Rewrite>,
    headers: Option<wire::HeaderEdits>,
}

impl RuleParts {
    fn new(
        f: &str,
        rule: &HttpRouteRule,
        g: &GammaRoute<'_>,
        parent: &KubeService,
    ) -> Result<Self, RouteError> {
        let mut backends = Vec::new();
        for (bi, b) in rule.backend_refs.iter().enumerate() {
            let fb = format!("{f}.backendRefs[{bi}]");
            let subset = backend_subset(&fb, b, g, parent)?;
            let weight = b.weight.unwrap_or(1);
            let weight = u32::try_from(weight).map_err(|_| {
                RouteError::unsupported(format!("{fb}.weight"), "a weight is 0 or more")
            })?;
            backends.push(wire::Backend {
                subset,
                weight: Some(weight),
            });
        }
        // The Gateway API answers 500 when no backend may take the request.
        let fault = if backends.iter().all(|b| b.weight == Some(0)) {
            backends = vec![wire::Backend {
                subset: BTreeMap::new(),
                weight: Some(1),
            }];
            Some(wire::Fault {
                delay: None,
                abort: Some(wire::FaultAbort {
                    percent: 100.0,
                    status: 500,
                }),
            })
        } else {
            None
        };
        let timeout = match &rule.timeouts {
            None => None,
            Some(t) => {
                if t.backend_request.is_some() {
                    return Err(RouteError::unsupported(
                        format!("{f}.timeouts.backendRequest"),
                        "not supported (use a Weft MeshRoute's retry.per_try_timeout)",
                    ));
                }
                // `0s` turns the timeout off.
                t.request
                    .clone()
                    .filter(|r| weft_policy::parse_duration(r).map_or(true, |d| !d.is_zero()))
            }
        };
        let (rewrite, headers) = filters::translate(f, &rule.filters, Place::Mesh)?;
        Ok(RuleParts {
            backends,
            fault,
            timeout,
            rewrite,
            headers,
        })
    }
}

/// The subset of the parent's endpoints a backendRef names (see the module docs).
// Long: every check a backendRef must pass (kind, namespace and grant, the Service, its
// selector within the parent's) in the order the Gateway API reasons rank them.
fn backend_subset(
    fb: &str,
    b: &BackendRef,
    g: &GammaRoute<'_>,
    parent: &KubeService,
) -> Result<BTreeMap<String, String>, RouteError> {
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
    let ns = b.namespace.as_deref().unwrap_or(g.namespace);
    if ns != g.namespace {
        if !g.cluster.granted(g.kind, g.namespace, ns, &b.name) {
            return Err(RouteError::RefNotPermitted {
                field: fb.to_owned(),
                why: format!(
                    "Service {ns}/{} is of another namespace and no ReferenceGrant in {ns} \
                     lets {}s of {} refer to it",
                    b.name, g.kind, g.namespace
                ),
            });
        }
        return Err(RouteError::unsupported(
            fb,
            format!(
                "Service {ns}/{} is of another namespace than the parent Service: mesh routes \
                 pick among the parent's own endpoints",
                b.name
            ),
        ));
    }
    let Some(backend) = g.cluster.service(ns, &b.name) else {
        return Err(RouteError::BackendNotFound {
            field: fb.to_owned(),
            why: format!("no Service {ns}/{}", b.name),
        });
    };
    if let Some(port) = b.port {
        let ports = backend.spec.as_ref().and_then(|s| s.ports.clone());
        if !ports.unwrap_or_default().iter().any(|p| p.port == port) {
            return Err(RouteError::BackendNotFound {
                field: format!("{fb}.port"),
                why: format!("Service {ns}/{} has no port {port}", b.name),
            });
        }
    }
    if b.name == g.parent.name {
        return Ok(BTreeMap::new());
    }
    let selector = |s: &KubeService| -> BTreeMap<String, String> {
        s.spec
            .as_ref()
            .and_then(|sp| sp.selector.clone())
            .unwrap_or_default()
    };
    let (theirs, parents) = (selector(backend), selector(parent));
    let within = !theirs.is_empty()
        && !parents.is_empty()
        && parents.iter().all(|(k, v)| theirs.get(k) == Some(v));
    if !within {
        return Err(RouteError::unsupported(
            fb,
            format!(
                "Service {ns}/{} may select pods outside the parent Service {}: its selector \
                 must hold the parent's ({parents:?}) and more labels",
                b.name, g.parent.name
            ),
        ));
    }
    let subset: BTreeMap<String, String> = theirs
        .into_iter()
        .filter(|(k, _)| !parents.contains_key(k))
        .collect();
    if let Some(k) = subset.keys().find(|k| NOISY_LABELS.contains(&k.as_str())) {
        return Err(RouteError::unsupported(
            fb,
            format!(
                "Service {ns}/{} selects by {k}, a label endpoints do not carry",
                b.name
            ),
        ));
    }
    Ok(subset)
}

/// `<route>-r<rule>-m<match>`, shortened with a hash of the whole to fit a mesh route name.
fn route_name(route: &str, rule: usize, m: usize) -> String {
    let suffix = format!("-r{rule}-m{m}");
    let full = format!("{route}{suffix}");
    if full.len() <= MAX_ROUTE_NAME {
        return full;
    }
    // FNV-1a: stable across processes and versions (the name is in metrics and logs).
    let hash = full.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let keep = MAX_ROUTE_NAME - suffix.len() - 9;
    let head: String = route.chars().take(keep).collect();
    format!(
        "{}-{:08x}{suffix}",
        head.trim_end_matches(['-', '.']),
        hash as u32
    )
}

#[cfg(test)]
#[path = "gamma_tests.rs"]
mod tests;
