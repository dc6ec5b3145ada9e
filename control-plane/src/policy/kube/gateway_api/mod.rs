//! Gateway API v1 resources as a policy source (`gateway.networking.k8s.io`): `HTTPRoute`s
//! and `GRPCRoute`s ([`grpc`]) whose parent is a Service (GAMMA, east-west, [`gamma`]) become
//! mesh routes of that service,
//! merged into the policy the control plane pushes after the `MeshRoute`s of the same
//! service; each route's `status.parents[]` says, per Service parent, `Accepted` and
//! `ResolvedRefs` ([`status`]).
//!
//! The kinds are optional: a cluster without the Gateway API CRDs is told apart at start (a
//! list answers 404) and watched without them.

use std::collections::HashMap;

use kube::api::{ApiResource, DynamicObject};
use weft_policy::wire;

mod error;
mod filters;
pub mod gamma;
pub mod gateway_status;
pub mod gateway_types;
pub mod grpc;
mod matches;
pub mod north_south;
mod ns_listener;
pub mod ns_route;
pub mod policy_attach;
pub mod policy_status;
pub mod status;
pub mod types;

pub use error::RouteError;
use gamma::{Cluster, GammaRoute, MeshRoutes};
use types::{HttpRouteSpec, ParentRef, ReferenceGrantSpec};

use super::objects::{Kind, ObjectKey};

/// The Gateway API's group.
pub const GROUP: &str = "gateway.networking.k8s.io";
/// The controller name Weft writes in route status (`status.parents[].controllerName`) and
/// answers to in a `GatewayClass`'s `controllerName`.
pub const CONTROLLER_NAME: &str = "weft.dev/gateway-controller";

/// The `HTTPRoute` resource (`v1`).
pub fn http_routes() -> ApiResource {
    resource("v1", "HTTPRoute", "httproutes")
}

/// The `GRPCRoute` resource (`v1`).
pub fn grpc_routes() -> ApiResource {
    resource("v1", "GRPCRoute", "grpcroutes")
}

/// The `GatewayClass` resource (`v1`, cluster-scoped).
pub fn gateway_classes() -> ApiResource {
    resource("v1", "GatewayClass", "gatewayclasses")
}

/// The `Gateway` resource (`v1`).
pub fn gateways() -> ApiResource {
    resource("v1", "Gateway", "gateways")
}

/// The `ReferenceGrant` resource (`v1beta1`).
pub fn reference_grants() -> ApiResource {
    resource("v1beta1", "ReferenceGrant", "referencegrants")
}

fn resource(version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: GROUP.into(),
        version: version.into(),
        api_version: format!("{GROUP}/{version}"),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// What became of one route for one of its Service parents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentVerdict {
    /// The route.
    pub key: ObjectKey,
    /// Its `metadata.generation`.
    pub generation: Option<i64>,
    /// The parent, as the route names it.
    pub parent: ParentRef,
    /// In force, or the reason (a Gateway API condition reason) and message.
    pub result: Result<(), (&'static str, String)>,
    /// Whether the rejection is about a reference (`ResolvedRefs` False).
    pub bad_ref: bool,
}

/// GAMMA's share of the mesh policy: routes (each with the key of its HTTPRoute) and a
/// verdict per route and Service parent.
#[derive(Debug, Clone, Default)]
pub struct Gamma {
    /// The mesh routes, in Gateway API precedence within each service.
    pub routes: Vec<(ObjectKey, wire::Route)>,
    /// One per HTTPRoute and Service parent.
    pub verdicts: Vec<ParentVerdict>,
}

impl Gamma {
    /// Marks `key`'s verdicts rejected (the policy's validation refused one of its routes as
    /// merged: a route shadowed by an earlier one, say) with `message`.
    pub fn reject(&mut self, key: &ObjectKey, message: &str) {
        for v in self.verdicts.iter_mut().filter(|v| &v.key == key) {
            if v.result.is_ok() {
                v.result = Err(("UnsupportedValue", message.to_owned()));
            }
        }
    }
}

/// The GAMMA routes of `http` and `grpc` (untyped HTTPRoutes and GRPCRoutes) given the cluster's Services, grants and
/// the mesh services accepted so far. Each HTTPRoute is all or nothing: its routes are
/// checked on their own with the policy crate's validation before they join.
// Long: the whole GAMMA pass in order (read each route, check its parents, translate, validate
// with the policy crate, keep or refuse it all, record one verdict per parent).
pub fn gamma(
    http: &[DynamicObject],
    grpc: &[DynamicObject],
    grants: &[DynamicObject],
    services: &[k8s_openapi::api::core::v1::Service],
    mesh: &[wire::Service],
) -> Gamma {
    let grants: Vec<(String, ReferenceGrantSpec)> = grants
        .iter()
        .filter_map(|g| {
            let spec = serde_json::from_value(g.data.get("spec")?.clone()).ok()?;
            Some((g.metadata.namespace.clone().unwrap_or_default(), spec))
        })
        .collect();
    let cluster = Cluster {
        services,
        grants: &grants,
    };
    // Oldest first, then namespace/name: the Gateway API's tie-break between routes.
    let mut sorted: Vec<(Kind, &DynamicObject)> = http
        .iter()
        .map(|o| (Kind::HttpRoute, o))
        .chain(grpc.iter().map(|o| (Kind::GrpcRoute, o)))
        .collect();
    sorted.sort_by_key(|(kind, o)| {
        (
            o.metadata.creation_timestamp.as_ref().map(|t| t.0),
            o.metadata.namespace.clone(),
            o.metadata.name.clone(),
            *kind,
        )
    });
    let mut out = Gamma::default();
    let mut ranked = Vec::new();
    for (order, (kind, o)) in sorted.into_iter().enumerate() {
        let key = ObjectKey {
            kind,
            namespace: o.metadata.namespace.clone().unwrap_or_default(),
            name: o.metadata.name.clone().unwrap_or_default(),
        };
        let generation = o.metadata.generation;
        let raw = o.data.get("spec").cloned().unwrap_or_default();
        let spec: Result<HttpRouteSpec, _> = match kind {
            Kind::GrpcRoute => {
                serde_json::from_value::<grpc::GrpcRouteSpec>(raw.clone()).map(Into::into)
            }
            _ => serde_json::from_value(raw.clone()),
        };
        // Only Service parents are ours; a spec that does not read has its parents read
        // loosely, so each Service parent still hears why.
        let parents: Vec<ParentRef> = match &spec {
            Ok(s) => s.parent_refs.clone(),
            Err(_) => raw
                .get("parentRefs")
                .and_then(|p| serde_json::from_value::<Vec<ParentRef>>(p.clone()).ok())
                .unwrap_or_default(),
        };
        for parent in parents.into_iter().filter(ParentRef::is_service) {
            let result = match &spec {
                Err(e) => Err(RouteError::Unsupported {
                    field: "spec".into(),
                    why: e.to_string(),
                }),
                Ok(spec) => MeshRoutes::try_from(GammaRoute {
                    kind: if kind == Kind::GrpcRoute {
                        "GRPCRoute"
                    } else {
                        "HTTPRoute"
                    },
                    namespace: &key.namespace,
                    name: &key.name,
                    spec,
                    parent: &parent,
                    mesh,
                    cluster: &cluster,
                })
                .and_then(|r| alone(r, mesh)),
            };
            let verdict = ParentVerdict {
                key: key.clone(),
                generation,
                parent,
                bad_ref: result.as_ref().err().is_some_and(RouteError::is_ref),
                result: match &result {
                    Ok(_) => Ok(()),
                    Err(e) => Err((e.reason(), e.to_string())),
                },
            };
            out.verdicts.push(verdict);
            if let Ok(MeshRoutes(routes)) = result {
                for (i, r) in routes.into_iter().enumerate() {
                    ranked.push((r.rank, order, i, key.clone(), r.route));
                }
            }
        }
    }
    ranked.sort_by_key(|a| (a.0, a.1, a.2));
    out.routes = ranked.into_iter().map(|(_, _, _, k, r)| (k, r)).collect();
    out
}

/// `routes` if they are valid on their own with their service, else why not.
fn alone(routes: MeshRoutes, mesh: &[wire::Service]) -> Result<MeshRoutes, RouteError> {
    let names: Vec<&str> = routes.0.iter().map(|r| r.route.service.as_str()).collect();
    let file = wire::MeshFile {
        services: mesh
            .iter()
            .filter(|s| names.contains(&s.name.as_str()))
            .cloned()
            .collect(),
        routes: routes.0.iter().map(|r| r.route.clone()).collect(),
        ..wire::MeshFile::default()
    };
    match weft_policy::validate_mesh_dynamic(file) {
        Ok(()) => Ok(routes),
        Err(errors) => {
            let by_route: HashMap<String, &str> = routes
                .0
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("routes[{i}]"), r.route.name.as_str()))
                .collect();
            let why = errors
                .iter()
                .map(|e| {
                    let (item, tail) = e
                        .field
                        .split_once(']')
                        .map_or((e.field.as_str(), ""), |(h, t)| (h, t));
                    let name = by_route.get(&format!("{item}]")).copied().unwrap_or(item);
                    format!("route {name}{tail}: {}", e.reason)
                })
                .collect::<Vec<_>>()
                .join("; ");
            Err(RouteError::Unsupported {
                field: "spec.rules".into(),
                why,
            })
        }
    }
}
