//! North-south: a `Gateway` of a `GatewayClass` whose `controllerName` is
//! [`super::CONTROLLER_NAME`], and the `HTTPRoute`s and `GRPCRoute`s attached to it
//! (parentRef kind `Gateway`; a GRPCRoute as the HTTPRoute it amounts to, [`super::grpc`]:
//! a method match is a path match on `/<package.Service>/<Method>`), become the gateway file of `weft-proxy --gateway` ([`GatewayFile`], the same
//! type and validation as a file an operator writes), with the PEM files its certificates name.
//!
//! - **Listeners**: `HTTPS` listeners (TLS `Terminate`) become the gateway's HTTPS listener,
//!   all on one port (Weft's gateway has one); each listener's certificate (the first
//!   `certificateRefs` Secret, of type `kubernetes.io/tls`; another namespace's only with a
//!   ReferenceGrant) serves its `hostname` by SNI, or is the default certificate when it has
//!   none. One `HTTP` port becomes the plain-HTTP listener, which only redirects to HTTPS (no
//!   route attaches to it). `TLS`, `TCP`, `UDP`, other ports: not Accepted.
//! - **Routes** ([`route`]): each match of each rule is one gateway route, with the hosts the
//!   route's `hostnames` and the listeners' `hostname`s share; precedence: exact hosts, then
//!   wildcards, then any host, then the mesh's match precedence ([`super::matches::Rank`]).
//! - **Status** ([`super::gateway_status`]): the verdicts here.

use std::collections::{BTreeSet, HashMap};

use kube::api::DynamicObject;
use weft_policy::gateway::{CertFile, GatewayFile, ListenFile, RouteFile, TlsFile};

use super::gateway_types::{GatewayClassSpec, GatewaySpec, Listener};
use super::grpc::GrpcRouteSpec;
use super::policy_attach::{Attachments, PolicyOutcome};
use super::types::{HttpRouteSpec, ParentRef};
use super::ParentVerdict;
use crate::policy::kube::objects::{Kind, ObjectKey};

use super::error::RouteError;
use super::ns_listener::{certificate, listener_shape, served_kinds};
pub use super::ns_route::Inputs;
use super::ns_route::{ListenerView, NsRoute};

/// A verdict: in force, or a Gateway API condition reason and a message.
pub type Verdict = Result<(), (&'static str, String)>;

/// A `GatewayClass` of Weft's and its verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassOutcome {
    /// Its name.
    pub name: String,
    /// Its `metadata.generation`.
    pub generation: Option<i64>,
    /// `Accepted`.
    pub accepted: Verdict,
}

/// One listener's verdicts.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerOutcome {
    /// Its name.
    pub name: String,
    /// `Accepted` (and `Programmed`).
    pub accepted: Verdict,
    /// `ResolvedRefs` (the certificate).
    pub resolved: Verdict,
    /// Served (`Programmed`): accepted, with its certificate for HTTPS.
    pub programmed: bool,
    /// Routes attached.
    pub attached_routes: i32,
    /// The route kinds it takes (`status.listeners[].supportedKinds`).
    pub supported_kinds: Vec<&'static str>,
}

/// What the gateway serves: its file and the files it names (relative path, contents).
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// The gateway file.
    pub file: GatewayFile,
    /// `tls/listener-<i>.crt` and `.key`.
    pub pems: Vec<(String, Vec<u8>)>,
}

impl GatewayConfig {
    /// The gateway file as YAML.
    pub fn yaml(&self) -> Result<String, serde_yaml::Error> {
        serde_yaml::to_string(&self.file)
    }
}

/// A `Gateway` of a Weft class: its verdicts and what it serves.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayOutcome {
    /// Which (kind `Gateway`).
    pub key: ObjectKey,
    /// Its `metadata.generation`.
    pub generation: Option<i64>,
    /// `Accepted`.
    pub accepted: Verdict,
    /// Per listener, in spec order.
    pub listeners: Vec<ListenerOutcome>,
    /// The config (then `Programmed`), or why there is none.
    pub config: Result<GatewayConfig, String>,
}

/// The whole north-south translation.
#[derive(Debug, Clone, Default)]
pub struct NorthSouth {
    /// Weft's GatewayClasses.
    pub classes: Vec<ClassOutcome>,
    /// Gateways of Weft's classes.
    pub gateways: Vec<GatewayOutcome>,
    /// One per HTTPRoute or GRPCRoute and Gateway parent of Weft's.
    pub verdicts: Vec<ParentVerdict>,
    /// One per `GatewayPolicy`.
    pub policies: Vec<PolicyOutcome>,
}

/// A listener as the translation plans it.
struct Planned {
    spec: Listener,
    /// Accepted as an HTTPS listener whose routes the gateway serves.
    https: bool,
    /// The certificate's PEMs.
    cert: Option<(Vec<u8>, Vec<u8>)>,
    outcome: ListenerOutcome,
}

/// A Gateway being translated.
struct Building {
    outcome: GatewayOutcome,
    listeners: Vec<Planned>,
    https_port: Option<i32>,
    http_port: Option<i32>,
    /// (host class, rank, route order, index) and the route.
    routes: Vec<((u8, super::matches::Rank, usize, usize), RouteFile)>,
    /// The policies whose providers and key sets its routes name (indices, oldest first).
    policies: BTreeSet<usize>,
}

fn key(kind: Kind, o: &DynamicObject) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: o.metadata.namespace.clone().unwrap_or_default(),
        name: o.metadata.name.clone().unwrap_or_default(),
    }
}

fn spec_str<'a>(o: &'a DynamicObject, field: &str) -> Option<&'a str> {
    o.data.get("spec")?.get(field)?.as_str()
}

/// Weft's GatewayClasses and their verdicts.
fn classes(inputs: &Inputs<'_>) -> Vec<ClassOutcome> {
    inputs
        .classes
        .iter()
        .filter(|c| spec_str(c, "controllerName") == Some(super::CONTROLLER_NAME))
        .map(|c| {
            let spec = c.data.get("spec").cloned().unwrap_or_default();
            let accepted = match serde_json::from_value::<GatewayClassSpec>(spec) {
                Err(e) => Err(("UnsupportedValue", format!("spec: {e}"))),
                Ok(s) if s.parameters_ref.is_some() => Err((
                    "InvalidParameters",
                    "spec.parametersRef: Weft's gateway takes no parameters".into(),
                )),
                Ok(_) => Ok(()),
            };
            ClassOutcome {
                name: c.metadata.name.clone().unwrap_or_default(),
                generation: c.metadata.generation,
                accepted,
            }
        })
        .collect()
}

/// Translate everything: Weft's classes, their Gateways, the routes attached to them.
pub fn north_south(inputs: &Inputs<'_>) -> NorthSouth {
    let classes = classes(inputs);
    let mut building: Vec<Building> = inputs
        .gateways
        .iter()
        .filter_map(|g| {
            let class = spec_str(g, "gatewayClassName")?;
            let c = classes.iter().find(|c| c.name == class)?;
            Some(plan(inputs, g, &c.accepted))
        })
        .collect();
    let mut verdicts = Vec::new();
    let policies = Attachments::new(inputs.policies);
    // Oldest first, then namespace/name: the Gateway API's tie-break between routes.
    let mut sorted: Vec<(Kind, &DynamicObject)> = (inputs.routes.iter())
        .map(|o| (Kind::HttpRoute, o))
        .chain(inputs.grpc_routes.iter().map(|o| (Kind::GrpcRoute, o)))
        .collect();
    sorted.sort_by_key(|(kind, o)| {
        (
            o.metadata.creation_timestamp.as_ref().map(|t| t.0),
            o.metadata.namespace.clone(),
            o.metadata.name.clone(),
            *kind,
        )
    });
    let mut rules: HashMap<ObjectKey, Vec<Option<String>>> = HashMap::new();
    for (order, (kind, o)) in sorted.into_iter().enumerate() {
        let spec = attach(
            inputs,
            (kind, o),
            (order, &policies),
            &mut building,
            &mut verdicts,
        );
        let names = spec.map(|s| s.rules.into_iter().map(|r| r.name).collect());
        rules.insert(key(kind, o), names.unwrap_or_default());
    }
    let outcomes = super::policy_attach::outcomes(&policies, &verdicts, &rules);
    NorthSouth {
        classes,
        gateways: (building.into_iter())
            .map(|b| finish(b, &policies))
            .collect(),
        verdicts,
        policies: outcomes,
    }
}

/// One HTTPRoute's or GRPCRoute's Gateway parents of Weft's: a verdict each, and its gateway
/// routes (with the access blocks of the policies attached to it) added to the Gateways that
/// take it. Returns its spec when it reads.
fn attach(
    inputs: &Inputs<'_>,
    (kind, o): (Kind, &DynamicObject),
    (order, policies): (usize, &Attachments),
    building: &mut [Building],
    verdicts: &mut Vec<ParentVerdict>,
) -> Option<HttpRouteSpec> {
    let key = key(kind, o);
    let raw = o.data.get("spec").cloned().unwrap_or_default();
    let spec: Result<HttpRouteSpec, _> = match kind {
        Kind::GrpcRoute => serde_json::from_value::<GrpcRouteSpec>(raw.clone()).map(Into::into),
        _ => serde_json::from_value(raw.clone()),
    };
    // A spec that does not read has its parents read loosely, so each parent hears why.
    let parents: Vec<ParentRef> = match &spec {
        Ok(s) => s.parent_refs.clone(),
        Err(_) => raw
            .get("parentRefs")
            .and_then(|p| serde_json::from_value::<Vec<ParentRef>>(p.clone()).ok())
            .unwrap_or_default(),
    };
    let plan = match &spec {
        Ok(s) => policies.plan(&key, s),
        Err(_) => Default::default(),
    };
    for (pi, parent) in parents.into_iter().enumerate() {
        if !parent.is_gateway() {
            continue;
        }
        let ns = parent.namespace.as_deref().unwrap_or(&key.namespace);
        let Some(gw) = building
            .iter_mut()
            .find(|b| b.outcome.key.namespace == ns && b.outcome.key.name == parent.name)
        else {
            continue; // another controller's Gateway, or none: not Weft's to judge
        };
        let result = match &spec {
            Err(e) => Err(RouteError::Unsupported {
                field: "spec".into(),
                why: e.to_string(),
            }),
            Ok(spec) => NsRoute {
                kind: kind_name(kind),
                namespace: &key.namespace,
                name: &key.name,
                spec,
                parent: &parent,
                parent_index: pi,
                inputs,
                access: &plan.access,
            }
            .translate(&gw.outcome.accepted, &views(gw)),
        };
        let verdict = ParentVerdict {
            key: key.clone(),
            generation: o.metadata.generation,
            parent,
            bad_ref: result.as_ref().err().is_some_and(RouteError::is_ref),
            result: match &result {
                Ok(_) => Ok(()),
                Err(e) => Err((e.reason(), e.to_string())),
            },
        };
        verdicts.push(verdict);
        if let Ok(t) = result {
            for i in &t.listeners {
                gw.listeners[*i].outcome.attached_routes += 1;
            }
            gw.policies.extend(plan.used.iter().copied());
            let n = gw.routes.len();
            gw.routes.extend(
                t.routes
                    .into_iter()
                    .enumerate()
                    .map(|(i, (class, rank, r))| ((class, rank, order, n + i), r)),
            );
        }
    }
    spec.ok()
}

/// The Gateway API kind of a route key.
fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::GrpcRoute => "GRPCRoute",
        _ => "HTTPRoute",
    }
}

/// What a route's translation needs to know of a Gateway's listeners.
fn views(b: &Building) -> Vec<ListenerView<'_>> {
    b.listeners
        .iter()
        .map(|l| ListenerView {
            name: &l.spec.name,
            port: l.spec.port,
            hostname: l.spec.hostname.as_deref(),
            serves_routes: l.https,
            kinds: &l.outcome.supported_kinds,
            http: l.spec.protocol == "HTTP",
            from_all: l
                .spec
                .allowed_routes
                .as_ref()
                .and_then(|a| a.namespaces.as_ref())
                .and_then(|n| n.from.as_deref())
                == Some("All"),
            gateway_ns: &b.outcome.key.namespace,
        })
        .collect()
}

/// A Gateway's verdict and its listeners' (see the module docs).
// Long: the Gateway's own fields, then each listener in turn (protocol, port, allowed routes,
// certificate), each refusal with its own reason; split, the shared port choice would scatter.
fn plan(inputs: &Inputs<'_>, g: &DynamicObject, class: &Verdict) -> Building {
    let key = key(Kind::Gateway, g);
    let spec =
        serde_json::from_value::<GatewaySpec>(g.data.get("spec").cloned().unwrap_or_default());
    let mut b = Building {
        outcome: GatewayOutcome {
            key: key.clone(),
            generation: g.metadata.generation,
            accepted: Ok(()),
            listeners: Vec::new(),
            config: Err("not accepted".into()),
        },
        listeners: Vec::new(),
        https_port: None,
        http_port: None,
        routes: Vec::new(),
        policies: BTreeSet::new(),
    };
    let spec = match (class, spec) {
        (Err((_, why)), _) => {
            b.outcome.accepted = Err((
                "InvalidParameters",
                format!("its GatewayClass is not accepted: {why}"),
            ));
            return b;
        }
        (_, Err(e)) => {
            b.outcome.accepted = Err(("Invalid", format!("spec: {e}")));
            return b;
        }
        (_, Ok(s)) => s,
    };
    if !spec.addresses.is_empty() {
        b.outcome.accepted = Err((
            "UnsupportedAddress",
            "spec.addresses: the gateway's Service gives its address".into(),
        ));
        return b;
    }
    for (field, set) in [
        ("infrastructure", spec.infrastructure.is_some()),
        ("backendTLS", spec.backend_tls.is_some()),
    ] {
        if set {
            b.outcome.accepted = Err(("Invalid", format!("spec.{field}: not supported")));
            return b;
        }
    }
    let mut seen_hosts: BTreeSet<Option<String>> = BTreeSet::new();
    for (i, l) in spec.listeners.into_iter().enumerate() {
        let mut outcome = ListenerOutcome {
            name: l.name.clone(),
            accepted: Ok(()),
            resolved: Ok(()),
            programmed: false,
            attached_routes: 0,
            supported_kinds: served_kinds(&l),
        };
        let f = format!("spec.listeners[{i}]");
        let mut https = false;
        let mut cert = None;
        match listener_shape(&f, &l) {
            Err(e) => outcome.accepted = Err(e),
            Ok(()) if l.protocol == "HTTP" => match b.http_port {
                Some(p) if p != l.port => {
                    outcome.accepted = Err((
                        "PortUnavailable",
                        format!("{f}.port: Weft's gateway serves plain HTTP on one port ({p})"),
                    ))
                }
                _ => {
                    b.http_port = Some(l.port);
                    outcome.programmed = true;
                }
            },
            Ok(()) => {
                let host = l.hostname.as_ref().map(|h| h.to_ascii_lowercase());
                if b.https_port.is_some_and(|p| p != l.port) {
                    outcome.accepted = Err((
                        "PortUnavailable",
                        format!(
                            "{f}.port: Weft's gateway serves HTTPS on one port ({})",
                            b.https_port.unwrap_or_default()
                        ),
                    ));
                } else if seen_hosts.contains(&host) {
                    outcome.accepted = Err((
                        "HostnameConflict",
                        format!("{f}.hostname: an earlier HTTPS listener takes the same hostname"),
                    ));
                } else {
                    match certificate(inputs, &key.namespace, &f, &l) {
                        Ok(pems) => {
                            seen_hosts.insert(host);
                            b.https_port = Some(l.port);
                            https = true;
                            outcome.programmed = true;
                            cert = Some(pems);
                        }
                        // A bad reference: accepted, not programmed (its routes do not attach).
                        Err(e) => outcome.resolved = Err(e),
                    }
                }
            }
        }
        b.listeners.push(Planned {
            spec: l,
            https,
            cert,
            outcome,
        });
    }
    b
}

/// The Gateway's config from its plan and attached routes (and the providers and key sets
/// of the policies on them).
fn finish(mut b: Building, policies: &Attachments) -> GatewayOutcome {
    b.outcome.listeners = b.listeners.iter().map(|l| l.outcome.clone()).collect();
    if b.outcome.accepted.is_err() {
        return b.outcome;
    }
    let Some(https) = b.https_port else {
        b.outcome.config = Err("no HTTPS listener with a valid certificate".into());
        return b.outcome;
    };
    let mut certificates = Vec::new();
    let mut pems = Vec::new();
    for (i, l) in b.listeners.iter().enumerate() {
        let (true, Some((crt, key))) = (l.https, &l.cert) else {
            continue;
        };
        let (c, k) = (
            format!("tls/listener-{i}.crt"),
            format!("tls/listener-{i}.key"),
        );
        certificates.push(CertFile {
            hosts: l
                .spec
                .hostname
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            cert: c.clone(),
            key: k.clone(),
            default: l.spec.hostname.is_none(),
        });
        pems.push((c, crt.clone()));
        pems.push((k, key.clone()));
    }
    b.routes.sort_by_key(|r| r.0);
    let file = GatewayFile {
        listen: ListenFile {
            https: format!("0.0.0.0:{https}"),
            http_redirect: b.http_port.map(|p| format!("0.0.0.0:{p}")),
            redirect_port: None,
        },
        tls: TlsFile {
            min_version: None,
            reload_interval: None,
            certificates,
        },
        routes: b.routes.into_iter().map(|(_, r)| r).collect(),
        auth: weft_policy::gateway_auth::wire::GatewayAuthFile {
            jwt_providers: (b.policies.iter())
                .flat_map(|i| policies.policies[*i].auth.jwt_providers.clone())
                .collect(),
            api_keys: (b.policies.iter())
                .flat_map(|i| policies.policies[*i].auth.api_keys.clone())
                .collect(),
            max_clients: None,
        },
        ..GatewayFile::default()
    };
    b.outcome.config = Ok(GatewayConfig { file, pems });
    b.outcome
}

#[cfg(test)]
#[path = "north_south_tests.rs"]
mod tests;
