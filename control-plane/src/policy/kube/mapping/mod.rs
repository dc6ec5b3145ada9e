//! From the Kubernetes objects of the moment to the mesh policy: pure functions, no client.
//!
//! - **Services**: a Kubernetes Service is a mesh service when pods its EndpointSlices name
//!   run the sidecar (a container or init container named [`SIDECAR_CONTAINER`]). It is named
//!   `<service>.<namespace>` and also answers to `<service>.<namespace>.svc` and
//!   `<service>.<namespace>.svc.cluster.local`, and its ClusterIPs (the addresses a captured
//!   connection's original destination names it by); its identity is its pods' service account
//!   (`spiffe://<trust domain>/ns/<namespace>/sa/<service account>`); its protocol comes from
//!   the annotation `weft.dev/protocol`, else the first port's `appProtocol` (`http`, `grpc`,
//!   `kubernetes.io/h2c` is grpc, `tcp`); its endpoints are the ready endpoints of its
//!   EndpointSlices whose pod runs the sidecar, as `<pod IP>:15006` (the sidecar's inbound
//!   port) with the pod's labels (for subsets such as `version: v2`).
//!   Its opaque ports (never detected by callers) come from `weft.dev/opaque-ports`, non-HTTP
//!   `appProtocol`s and port names ([`opaque`]).
//! - **Resources** ([`super::crds`]): a service named in a resource (`service`, a route's
//!   `from`) is of the resource's namespace (`orders` in `shop` is `orders.shop`) unless it
//!   names its namespace itself (`orders.shop`). A `MeshRoute` without `spec.name` takes its
//!   `metadata.name`. A `TrafficPolicy` merges into its service.
//! - **Tenancy** ([`tenancy`]): a resource's `service` must be of its own namespace (else
//!   `CrossNamespace`; callers in `from` may be anywhere), and of resources claiming the same
//!   service's traffic policy or authorization, or the same route name, the oldest holds it
//!   (the others `Conflicted`; a tie refuses them all). Never the first by name.
//! - **One by one**: every resource is read on its own (the resources come in untyped, so one
//!   that does not parse, say written against a newer CRD, fails alone and never the list)
//!   and validated with the policy crate's own checks; an invalid one is left out alone, with a [`Verdict`] naming it and saying why
//!   (`MeshRoute shop/orders-api: spec.match.path.regex: bad regex ...`), and the rest stays in
//!   force. (This mapping has no memory: the source keeps an invalidly edited resource's last
//!   good version in force, [`super::last_good`].)

use std::collections::HashMap;
use std::fmt;

use k8s_openapi::api::core::v1::{Pod, Service as KubeService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::DynamicObject;
use serde::de::DeserializeOwned;
use weft_policy::wire::{self, MeshFile};

use discover::discover;
use settle::{invalid, settle};

mod discover;
mod opaque;
mod settle;
mod tenancy;

pub use opaque::OPAQUE_PORTS_ANNOTATION;
pub use tenancy::{CONFLICTED, CROSS_NAMESPACE};

use super::crds::{Condition, PolicyStatus, ACCEPTED};
pub use super::objects::{Kind, ObjectKey};

/// The name of the injected sidecar container: a pod running it is part of the mesh.
pub const SIDECAR_CONTAINER: &str = "weft-proxy";
/// The sidecar's inbound mTLS port: every endpoint's port.
pub const SIDECAR_INBOUND_PORT: u16 = 15006;
/// Service annotation naming the protocol (`http`, `grpc`, `tcp`), over `appProtocol`.
pub const PROTOCOL_ANNOTATION: &str = "weft.dev/protocol";
/// Service annotation giving the service a dedicated outbound port on the callers' loopback
/// (a `tcp` service without it gets its first Service port).
pub const PORT_ANNOTATION: &str = "weft.dev/port";
/// The cluster's DNS domain, for the long host name.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// The EndpointSlice label naming its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Pod labels that change with every rollout and select nothing a route would name.
const NOISY_LABELS: [&str; 2] = ["pod-template-hash", "controller-revision-hash"];

/// The objects the mapping reads: everything of these kinds the API server holds now.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    /// Services.
    pub services: Vec<KubeService>,
    /// EndpointSlices.
    pub endpoint_slices: Vec<EndpointSlice>,
    /// Pods.
    pub pods: Vec<Pod>,
    /// `MeshRoute` resources, untyped: each is read on its own.
    pub routes: Vec<DynamicObject>,
    /// `TrafficPolicy` resources, untyped.
    pub traffic_policies: Vec<DynamicObject>,
    /// `AuthorizationPolicy` resources, untyped.
    pub authorization: Vec<DynamicObject>,
    /// Gateway API `HTTPRoute`s, untyped (empty without the Gateway API CRDs).
    pub http_routes: Vec<DynamicObject>,
    /// Gateway API `GRPCRoute`s, untyped.
    pub grpc_routes: Vec<DynamicObject>,
    /// Gateway API `ReferenceGrant`s, untyped.
    pub reference_grants: Vec<DynamicObject>,
    /// Gateway API `GatewayClass`es, untyped (north-south).
    pub gateway_classes: Vec<DynamicObject>,
    /// Gateway API `Gateway`s, untyped.
    pub gateways: Vec<DynamicObject>,
    /// `GatewayPolicy` resources, untyped (empty when the CRD is not installed).
    pub gateway_policies: Vec<DynamicObject>,
    /// Secrets (the Gateways' certificates), or `None` when not read (no Gateway kind, or
    /// the control plane may not list Secrets).
    pub secrets: Option<Vec<k8s_openapi::api::core::v1::Secret>>,
}

/// One policy resource, read: which, its generation and creation time, and its spec.
struct Parsed<T> {
    key: ObjectKey,
    generation: Option<i64>,
    created: Option<Time>,
    spec: T,
}

/// The spec of a policy resource as `T`, or why it cannot be read (`spec: unknown field ...`).
/// The resources of one kind in namespace/name order (so the policy and its version do not
/// depend on the order the API listed them in); a resource whose spec does not parse gets its
/// verdict in `unreadable` and is left out alone.
fn parsed<T: DeserializeOwned>(
    objects: &[DynamicObject],
    kind: Kind,
    unreadable: &mut Vec<Verdict>,
) -> Vec<Parsed<T>> {
    let mut sorted: Vec<&DynamicObject> = objects.iter().collect();
    sorted.sort_by_key(|o| key_of(kind, &o.metadata));
    let mut out = Vec::with_capacity(sorted.len());
    for o in sorted {
        let key = key_of(kind, &o.metadata);
        let generation = o.metadata.generation;
        match spec_of(o) {
            Ok(spec) => out.push(Parsed {
                key,
                generation,
                created: o.metadata.creation_timestamp.clone(),
                spec,
            }),
            Err(e) => unreadable.push(Verdict {
                key,
                generation,
                result: Err(e),
            }),
        }
    }
    out
}

/// Of `items`, those of their own namespace's service and holding their claim (`claim`: the
/// field and what it claims); the others get their verdict in `verdicts`.
fn admitted<T>(
    items: Vec<Parsed<T>>,
    service: impl Fn(&T) -> &str,
    claim: impl Fn(&T) -> (&'static str, String),
    verdicts: &mut Vec<Verdict>,
) -> Vec<Parsed<T>> {
    let mut own = Vec::with_capacity(items.len());
    for p in items {
        match tenancy::foreign(p.key.kind, &p.key.namespace, service(&p.spec)) {
            Some(r) => verdicts.push(Verdict {
                key: p.key,
                generation: p.generation,
                result: Err(r),
            }),
            None => own.push(p),
        }
    }
    let refused = tenancy::contest(
        own.iter()
            .map(|p| {
                let (field, what) = claim(&p.spec);
                tenancy::Claim {
                    key: &p.key,
                    field,
                    created: p.created.as_ref(),
                    what,
                }
            })
            .collect(),
    );
    let mut kept = Vec::with_capacity(own.len());
    for p in own {
        match refused.get(&p.key) {
            Some(r) => verdicts.push(Verdict {
                key: p.key,
                generation: p.generation,
                result: Err(r.clone()),
            }),
            None => kept.push(p),
        }
    }
    kept
}

fn spec_of<T: DeserializeOwned>(object: &DynamicObject) -> Result<T, Rejection> {
    let spec = object
        .data
        .get("spec")
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    serde_json::from_value(spec).map_err(|e| Rejection {
        reason: "Invalid",
        message: format!("spec: {e}"),
    })
}

/// The `Accepted` condition a policy resource carries now, if any (an unreadable status reads
/// as none, and is then rewritten).
pub fn accepted_condition(object: &DynamicObject) -> Option<Condition> {
    let status: PolicyStatus = serde_json::from_value(object.data.get("status")?.clone()).ok()?;
    status.conditions.into_iter().find(|c| c.type_ == ACCEPTED)
}

/// Why an object was left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// A CamelCase word: `Invalid`, `CrossNamespace`, `Conflicted` or `ServiceNotFound`.
    pub reason: &'static str,
    /// Every problem, `field: reason`, joined with `; `.
    pub message: String,
}

/// What became of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The object.
    pub key: ObjectKey,
    /// Its `metadata.generation`.
    pub generation: Option<i64>,
    /// In force, or left out and why.
    pub result: Result<(), Rejection>,
}

impl Verdict {
    /// The `Accepted` condition for this verdict; `lastTransitionTime` is kept from `previous`
    /// when the status does not change, else `now` (RFC 3339).
    pub fn condition(&self, previous: Option<&Condition>, now: &str) -> Condition {
        let (status, reason, message) = match &self.result {
            Ok(()) => ("True", "Accepted", "in force".to_owned()),
            Err(r) => ("False", r.reason, r.message.clone()),
        };
        let last_transition_time = match previous {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => now.to_owned(),
        };
        Condition {
            type_: ACCEPTED.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message,
            observed_generation: self.generation,
            last_transition_time,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.result {
            Ok(()) => write!(f, "{}: accepted", self.key),
            Err(r) => write!(f, "{}: {}", self.key, r.message),
        }
    }
}

/// The mesh policy the objects make, and a verdict per resource (and per rejected Service).
#[derive(Debug, Clone, Default)]
pub struct Mapped {
    /// The accepted part, valid as a whole ([`weft_policy::validate_mesh_dynamic`]).
    pub mesh: MeshFile,
    /// One per policy resource, and one per Service left out; in object order.
    pub verdicts: Vec<Verdict>,
    /// One per Gateway API route and Service parent (GAMMA).
    pub gamma: Vec<crate::policy::kube::gateway_api::ParentVerdict>,
}

impl Mapped {
    /// The verdicts that left something out.
    pub fn rejected(&self) -> impl Iterator<Item = &Verdict> {
        self.verdicts.iter().filter(|v| v.result.is_err())
    }
}

/// `<name>.<namespace>` for a name without a dot; a dotted name already names its namespace.
pub fn qualify(name: &str, namespace: &str) -> String {
    if name.contains('.') {
        name.to_owned()
    } else {
        format!("{name}.{namespace}")
    }
}

/// Whether the pod runs the Weft sidecar.
pub fn has_sidecar(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|s| {
        s.containers.iter().any(|c| c.name == SIDECAR_CONTAINER)
            || s.init_containers
                .iter()
                .flatten()
                .any(|c| c.name == SIDECAR_CONTAINER)
    })
}

/// The mesh policy of `objects`, in `trust_domain`: one pass per resource kind in a fixed
/// order (services, traffic policies, then routes and authorization together), each judged
/// against what came before.
// Long: one pass per resource kind in the fixed order the doc comment gives, each reading the
// verdicts of the passes before it; the order is the point, so it stays in one place.
pub fn map(objects: &Objects, trust_domain: &str) -> Mapped {
    let mut verdicts = Vec::new();

    // Services, in namespace/name order so the policy (and its version) does not depend on
    // the order the API listed them in.
    let mut services: Vec<(ObjectKey, wire::Service)> = discover(objects, trust_domain);
    services.sort_by(|a, b| a.0.cmp(&b.0));
    let mut mesh = MeshFile {
        services: services.iter().map(|(_, s)| s.clone()).collect(),
        ..MeshFile::default()
    };
    let mut service_keys: Vec<ObjectKey> = services.into_iter().map(|(k, _)| k).collect();
    let mut no_keys = Vec::new();
    let mut no_keys2 = Vec::new();
    settle(
        &mut mesh,
        &mut service_keys,
        &mut no_keys,
        &mut no_keys2,
        &mut verdicts,
    );

    apply_traffic_policies(objects, &mut mesh, &mut verdicts);

    // Routes and authorization, settled together (a route's callers and an authorization
    // block name services; both are judged against the services accepted above).
    let mut route_keys = Vec::new();
    let mut generations: HashMap<ObjectKey, Option<i64>> = HashMap::new();
    // Resources whose spec does not even parse, of another namespace's service, or conflicted.
    let mut refused: Vec<Verdict> = Vec::new();
    let routes = admitted_routes(&objects.routes, &mut refused);
    for p in routes {
        mesh.routes.push(p.spec);
        generations.insert(p.key.clone(), p.generation);
        route_keys.push(p.key);
    }
    // GAMMA routes after the MeshRoutes, each service's in Gateway API precedence.
    let mut gamma = crate::policy::kube::gateway_api::gamma(
        &objects.http_routes,
        &objects.grpc_routes,
        &objects.reference_grants,
        &objects.services,
        &mesh.services,
    );
    for (key, route) in std::mem::take(&mut gamma.routes) {
        mesh.routes.push(route);
        route_keys.push(key);
    }
    let authz = admitted_authorization(&objects.authorization, &mut refused);
    let mut authz_keys = Vec::new();
    for p in authz {
        mesh.authorization.push(p.spec);
        generations.insert(p.key.clone(), p.generation);
        authz_keys.push(p.key);
    }
    let mut no_services = Vec::new();
    let mut rejected = Vec::new();
    settle(
        &mut mesh,
        &mut no_services,
        &mut route_keys,
        &mut authz_keys,
        &mut rejected,
    );
    let rejected: HashMap<ObjectKey, Rejection> = rejected
        .into_iter()
        .filter_map(|v| v.result.err().map(|r| (v.key, r)))
        .collect();
    // An HTTPRoute is all or nothing: one route of it refused as merged takes out the rest.
    let gateway_kinds = [Kind::HttpRoute, Kind::GrpcRoute];
    for (key, r) in rejected
        .iter()
        .filter(|(k, _)| gateway_kinds.contains(&k.kind))
    {
        gamma.reject(key, &r.message);
        for i in (0..route_keys.len()).rev() {
            if &route_keys[i] == key && i < mesh.routes.len() {
                mesh.routes.remove(i);
                route_keys.remove(i);
            }
        }
    }
    let mut rest: Vec<Verdict> = generations
        .into_iter()
        .map(|(key, generation)| Verdict {
            result: rejected.get(&key).cloned().map_or(Ok(()), Err),
            key,
            generation,
        })
        .collect();
    rest.extend(refused);
    rest.sort_by(|a, b| a.key.cmp(&b.key));
    verdicts.extend(rest);
    Mapped {
        mesh,
        verdicts,
        gamma: gamma.verdicts,
    }
}

/// The routes of their own namespace's services holding their names, named and qualified
/// (`name` defaults to the resource's name; services without a namespace are the resource's);
/// the others get their verdict in `refused`.
fn admitted_routes(
    objects: &[DynamicObject],
    refused: &mut Vec<Verdict>,
) -> Vec<Parsed<wire::Route>> {
    let mut routes: Vec<Parsed<wire::Route>> = parsed(objects, Kind::MeshRoute, refused);
    for Parsed {
        key, spec: route, ..
    } in &mut routes
    {
        if route.name.is_empty() {
            route.name = key.name.clone();
        }
        route.service = qualify(&route.service, &key.namespace);
        if let Some(from) = route.from.as_mut() {
            for c in from.iter_mut() {
                *c = qualify(c, &key.namespace);
            }
        }
    }
    admitted(
        routes,
        |r| &r.service,
        |r| {
            (
                "spec.name",
                format!("route {:?} of service {:?}", r.name, r.service),
            )
        },
        refused,
    )
}

/// The authorization of their own namespace's services, one per service (the oldest), the
/// service qualified; the others get their verdict in `refused`.
fn admitted_authorization(
    objects: &[DynamicObject],
    refused: &mut Vec<Verdict>,
) -> Vec<Parsed<wire::ServiceAuthorization>> {
    let mut authz: Vec<Parsed<wire::ServiceAuthorization>> =
        parsed(objects, Kind::AuthorizationPolicy, refused);
    for p in &mut authz {
        p.spec.service = qualify(&p.spec.service, &p.key.namespace);
    }
    admitted(
        authz,
        |a| &a.service,
        |a| {
            (
                "spec.service",
                format!("the authorization of service {:?}", a.service),
            )
        },
        refused,
    )
}

/// Merge each admitted traffic policy into its service, each checked on its own service.
fn apply_traffic_policies(objects: &Objects, mesh: &mut MeshFile, verdicts: &mut Vec<Verdict>) {
    let mut tps: Vec<Parsed<wire::TrafficPolicy>> =
        parsed(&objects.traffic_policies, Kind::TrafficPolicy, verdicts);
    for p in &mut tps {
        p.spec.service = qualify(&p.spec.service, &p.key.namespace);
    }
    let tps = admitted(
        tps,
        |t| &t.service,
        |t| {
            (
                "spec.service",
                format!("the traffic policy of service {:?}", t.service),
            )
        },
        verdicts,
    );
    for Parsed {
        key,
        generation,
        spec,
        ..
    } in tps
    {
        let result = match mesh.services.iter().position(|s| s.name == spec.service) {
            None => Err(service_not_found(&spec.service)),
            Some(i) => {
                let mut svc = mesh.services[i].clone();
                spec.apply_to(&mut svc);
                let alone = MeshFile {
                    services: vec![svc.clone()],
                    ..MeshFile::default()
                };
                match weft_policy::validate_mesh_dynamic(alone) {
                    Ok(()) => {
                        mesh.services[i] = svc;
                        Ok(())
                    }
                    Err(errors) => Err(invalid(&errors, "traffic")),
                }
            }
        };
        verdicts.push(Verdict {
            key,
            generation,
            result,
        });
    }
}

fn service_not_found(name: &str) -> Rejection {
    Rejection {
        reason: "ServiceNotFound",
        message: format!(
            "spec.service: no mesh service {name:?} (a Service whose pods run the {SIDECAR_CONTAINER} sidecar)"
        ),
    }
}

fn key_of(
    kind: Kind,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
    }
}
