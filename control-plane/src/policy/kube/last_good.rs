//! The last good version of each policy resource: an edit that makes an accepted resource
//! invalid does not take it out of force. Its condition says `Accepted=False` for the new
//! generation (reason and message naming the field, as for any rejection), and the generation
//! accepted before keeps serving until a valid edit replaces it or the resource is deleted.
//!
//! Why: the mapping alone ([`super::mapping::map`]) leaves an invalid resource out, which for an
//! edited route means its traffic falls back to the service's default (every endpoint): one
//! typo in a canary split would send all traffic to the canary's unfinished version. A
//! policy file behaves the same way (the last good policy stays, `docs/CONFIG.md`), so a
//! resource in the API now does too.
//!
//! What is held is in memory, per process: a control plane started while a resource is
//! invalid never saw its last good version and leaves it out. Only `Invalid` rejections fall
//! back (a resource refused as `Conflicted` or `CrossNamespace` is refused whatever its
//! version), and only to a version of the same object (same `uid`: a resource deleted and
//! created again starts afresh).
//!
//! Gateway API routes (`HTTPRoute`, `GRPCRoute` with Service parents, GAMMA) are held the same
//! way: a route refused for every one of its Service parents (any reason: its last good
//! version is judged again against the cluster as it is now, so a revoked `ReferenceGrant` or
//! a deleted backend takes that version out too) is mapped with its last accepted version,
//! and its `status.parents[]` say why the new generation was refused and which one serves.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use ::kube::api::DynamicObject;

use super::gateway_api::ParentVerdict;
use super::mapping::{self, Kind, Mapped, ObjectKey, Objects};

/// The reason of a rejection that falls back to the last good version.
const INVALID: &str = "Invalid";

/// The last accepted object of each policy resource (see the module docs).
#[derive(Debug, Default)]
pub struct LastGood {
    held: Mutex<HashMap<ObjectKey, DynamicObject>>,
}

impl LastGood {
    /// Maps `objects` as [`mapping::map`] does, except that a resource rejected as `Invalid`
    /// whose last accepted version is held is mapped with that version (its verdict stays the
    /// rejection of the current generation, its message saying which generation stays in
    /// force); then remembers every resource accepted as it is now.
    pub fn map(&self, objects: &Objects, trust_domain: &str) -> Mapped {
        let first = mapping::map(objects, trust_domain);
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let present: HashSet<ObjectKey> = policy_objects(objects).map(|(k, _)| k).collect();
        held.retain(|k, _| present.contains(k));

        let falls_back: HashSet<&ObjectKey> = first
            .rejected()
            .filter(|v| v.result.as_ref().is_err_and(|r| r.reason == INVALID))
            .map(|v| &v.key)
            .chain(refused_routes(&first))
            .filter(|k| held.contains_key(*k))
            .collect();
        if falls_back.is_empty() {
            remember(&mut held, objects, &first, &HashMap::new());
            return first;
        }
        let mut substituted = Objects {
            routes: Vec::with_capacity(objects.routes.len()),
            traffic_policies: Vec::with_capacity(objects.traffic_policies.len()),
            authorization: Vec::with_capacity(objects.authorization.len()),
            http_routes: Vec::with_capacity(objects.http_routes.len()),
            grpc_routes: Vec::with_capacity(objects.grpc_routes.len()),
            ..objects.clone()
        };
        let mut used: HashMap<ObjectKey, Option<i64>> = HashMap::new();
        for (key, object) in policy_objects(objects) {
            let good = held
                .get(&key)
                .filter(|_| falls_back.contains(&key))
                .filter(|g| g.metadata.uid == object.metadata.uid);
            let chosen = match good {
                Some(g) => {
                    used.insert(key.clone(), g.metadata.generation);
                    g.clone()
                }
                None => object.clone(),
            };
            match key.kind {
                Kind::MeshRoute => substituted.routes.push(chosen),
                Kind::TrafficPolicy => substituted.traffic_policies.push(chosen),
                Kind::AuthorizationPolicy => substituted.authorization.push(chosen),
                Kind::HttpRoute => substituted.http_routes.push(chosen),
                Kind::GrpcRoute => substituted.grpc_routes.push(chosen),
                Kind::Service | Kind::Gateway | Kind::GatewayClass | Kind::GatewayPolicy => {}
            }
        }
        let mapped = if used.is_empty() {
            first
        } else {
            let second = mapping::map(&substituted, trust_domain);
            let current: HashMap<&ObjectKey, &mapping::Verdict> =
                first.verdicts.iter().map(|v| (&v.key, v)).collect();
            let verdicts = second
                .verdicts
                .iter()
                .map(|v| match (used.get(&v.key), current.get(&v.key)) {
                    // The current generation's rejection, saying what serves meanwhile.
                    (Some(generation), Some(now)) => {
                        let mut now = (*now).clone();
                        if let (Err(r), Ok(())) = (&mut now.result, &v.result) {
                            r.message.push_str(&match generation {
                                Some(g) => format!(" (generation {g} stays in force)"),
                                None => " (the last accepted version stays in force)".into(),
                            });
                        }
                        now
                    }
                    _ => v.clone(),
                })
                .collect();
            Mapped {
                gamma: gamma_verdicts(&first, &second, &used),
                mesh: second.mesh,
                verdicts,
            }
        };
        remember(&mut held, objects, &mapped, &used);
        mapped
    }
}

/// The Gateway API routes `mapped` refused for every Service parent they name.
fn refused_routes(mapped: &Mapped) -> impl Iterator<Item = &ObjectKey> {
    let keys: HashSet<&ObjectKey> = mapped.gamma.iter().map(|v| &v.key).collect();
    keys.into_iter().filter(|k| {
        (mapped.gamma.iter())
            .filter(|v| &v.key == *k)
            .all(|v| v.result.is_err())
    })
}

/// The route verdicts to report: a route in force by its last good version keeps the current
/// generation's refusals (`first`), each saying which generation serves meanwhile when that
/// version was accepted (`second`); every other route's verdicts are `second`'s.
fn gamma_verdicts(
    first: &Mapped,
    second: &Mapped,
    used: &HashMap<ObjectKey, Option<i64>>,
) -> Vec<ParentVerdict> {
    let mut out: Vec<ParentVerdict> = (second.gamma.iter())
        .filter(|v| !used.contains_key(&v.key))
        .cloned()
        .collect();
    for v in first.gamma.iter().filter(|v| used.contains_key(&v.key)) {
        let mut now = v.clone();
        let serving = (second.gamma.iter()).any(|s| s.key == v.key && s.result.is_ok());
        if let (Err((_, message)), true) = (&mut now.result, serving) {
            message.push_str(&match used.get(&v.key).copied().flatten() {
                Some(g) => format!(" (generation {g} stays in force)"),
                None => " (the last accepted version stays in force)".into(),
            });
        }
        out.push(now);
    }
    out
}

/// Holds every resource of `objects` that `mapped` accepted as it is now (not those in force
/// by their last good version, listed in `used`).
fn remember(
    held: &mut HashMap<ObjectKey, DynamicObject>,
    objects: &Objects,
    mapped: &Mapped,
    used: &HashMap<ObjectKey, Option<i64>>,
) {
    let refused: HashSet<&ObjectKey> = (mapped.gamma.iter())
        .filter(|v| v.result.is_err())
        .map(|v| &v.key)
        .collect();
    // A Gateway API route is held when every Service parent accepted it.
    let accepted: HashSet<&ObjectKey> = (mapped.verdicts.iter())
        .filter(|v| v.result.is_ok())
        .map(|v| &v.key)
        .chain(mapped.gamma.iter().map(|v| &v.key))
        .filter(|k| !used.contains_key(*k) && !refused.contains(*k))
        .collect();
    for (key, object) in policy_objects(objects) {
        if accepted.contains(&key) {
            held.insert(key, object.clone());
        }
    }
}

/// Every policy resource of `objects` with its key.
fn policy_objects(objects: &Objects) -> impl Iterator<Item = (ObjectKey, &DynamicObject)> {
    [
        (Kind::MeshRoute, &objects.routes),
        (Kind::TrafficPolicy, &objects.traffic_policies),
        (Kind::AuthorizationPolicy, &objects.authorization),
        (Kind::HttpRoute, &objects.http_routes),
        (Kind::GrpcRoute, &objects.grpc_routes),
    ]
    .into_iter()
    .flat_map(|(kind, list)| {
        list.iter().map(move |o| {
            let key = ObjectKey {
                kind,
                namespace: o.metadata.namespace.clone().unwrap_or_default(),
                name: o.metadata.name.clone().unwrap_or_default(),
            };
            (key, o)
        })
    })
}
