//! Policy attachment (GEP-713, direct): each `GatewayPolicy` ([`crate::policy::kube::crds`])
//! names routes (`HTTPRoute`, `GRPCRoute`) of its own namespace, or one rule of one by
//! `sectionName`, and gives the gateway routes made from them its `access` block, with its
//! own JWT providers and API key sets in the gateway file's `auth` (renamed
//! `<namespace>/<policy>/<name>`, so two policies' names never meet).
//!
//! - **Precedence**: for one rule, a policy naming the rule wins over one naming the whole
//!   route; of several naming the same target, the oldest (`creationTimestamp`, then
//!   namespace/name) wins and the others are `Conflicted` there.
//! - **Fail closed**: an invalid policy (a spec that does not read, a provider without keys,
//!   an access block naming no provider of its own, a relative path) still takes its targets,
//!   and their routes refuse every request (`auth: {deny: true}`: 503) until it is fixed: a
//!   broken JWT policy never leaves a route open, nor lets its requests fall to another route.
//! - **Status** ([`outcomes`]): per Gateway its targets attach to, `Accepted` True, or False
//!   with `Invalid`, `Conflicted` or `TargetNotFound`.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use kube::api::DynamicObject;
use weft_policy::gateway_auth::wire::{GatewayAuthFile, RouteAccessFile, RouteAuthFile};
use weft_policy::gateway_auth::{GatewayAuth, RouteAccess};

use super::types::HttpRouteSpec;
use super::ParentVerdict;
use crate::policy::kube::crds::{AncestorRef, GatewayPolicySpec, PolicyTargetRef};
use crate::policy::kube::objects::{Kind, ObjectKey};

/// A policy's `Accepted` condition: status, reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Said {
    /// True or False.
    pub accepted: bool,
    /// `Accepted`, `Invalid`, `Conflicted`, `TargetNotFound`.
    pub reason: &'static str,
    /// For people.
    pub message: String,
}

fn said(accepted: bool, reason: &'static str, message: String) -> Said {
    Said {
        accepted,
        reason,
        message,
    }
}

/// One policy, read and checked.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Which (kind `GatewayPolicy`).
    pub key: ObjectKey,
    /// Its `metadata.generation`.
    pub generation: Option<i64>,
    /// Its targets (read loosely when the spec does not read).
    pub targets: Vec<PolicyTargetRef>,
    /// Why it is invalid, if it is.
    pub invalid: Option<String>,
    /// Its providers and key sets, renamed (empty when invalid).
    pub auth: GatewayAuthFile,
    /// Its access block, naming the renamed providers (closed when invalid).
    pub access: RouteAccessFile,
}

/// What one target slot (a route, or one of its rules) gets: the winning policy's access.
#[derive(Debug, Clone)]
struct Slot {
    /// Policies naming it, oldest first (indices into [`Attachments::policies`]).
    candidates: Vec<usize>,
}

/// Every policy and what each route's rules get from them.
#[derive(Debug, Clone, Default)]
pub struct Attachments {
    /// Oldest first.
    pub policies: Vec<Policy>,
    /// (route, rule name or none for the whole route) → the policies naming it.
    slots: HashMap<(ObjectKey, Option<String>), Slot>,
}

/// What a route's rules carry: per rule, the access block (if any policy applies) and the
/// policies whose `auth` the gateway file must then hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteAccessPlan {
    /// Per rule index.
    pub access: Vec<Option<RouteAccessFile>>,
    /// Policies applied (indices into [`Attachments::policies`]).
    pub used: BTreeSet<usize>,
}

/// The access block of a closed route: every request refused.
pub fn closed() -> RouteAccessFile {
    RouteAccessFile {
        auth: Some(RouteAuthFile {
            deny: true,
            ..RouteAuthFile::default()
        }),
        ..RouteAccessFile::default()
    }
}

fn route_kind(kind: &str) -> Option<Kind> {
    match kind {
        "HTTPRoute" => Some(Kind::HttpRoute),
        "GRPCRoute" => Some(Kind::GrpcRoute),
        _ => None,
    }
}

impl Attachments {
    /// Read every policy of `objects`.
    pub fn new(objects: &[DynamicObject]) -> Self {
        let mut sorted: Vec<&DynamicObject> = objects.iter().collect();
        sorted.sort_by_key(|o| {
            (
                o.metadata.creation_timestamp.as_ref().map(|t| t.0),
                o.metadata.namespace.clone(),
                o.metadata.name.clone(),
            )
        });
        let mut out = Attachments::default();
        for (i, o) in sorted.into_iter().enumerate() {
            let p = read(o);
            for t in &p.targets {
                let Some(kind) = route_kind(&t.kind).filter(|_| t.group == super::GROUP) else {
                    continue;
                };
                let route = ObjectKey {
                    kind,
                    namespace: p.key.namespace.clone(),
                    name: t.name.clone(),
                };
                let slot = out
                    .slots
                    .entry((route, t.section_name.clone()))
                    .or_insert(Slot {
                        candidates: Vec::new(),
                    });
                if !slot.candidates.contains(&i) {
                    slot.candidates.push(i);
                }
            }
            out.policies.push(p);
        }
        out
    }

    /// The access of one slot: closed when any policy naming it is invalid, else the oldest's.
    fn slot_access(&self, slot: &Slot) -> Option<(usize, RouteAccessFile)> {
        let first = *slot.candidates.first()?;
        if let Some(bad) = (slot.candidates.iter()).find(|c| self.policies[**c].invalid.is_some()) {
            return Some((*bad, closed()));
        }
        Some((first, self.policies[first].access.clone()))
    }

    /// What the rules of the route `key` (of `spec`) carry.
    pub fn plan(&self, key: &ObjectKey, spec: &HttpRouteSpec) -> RouteAccessPlan {
        let whole = self.slots.get(&(key.clone(), None));
        let mut plan = RouteAccessPlan::default();
        for rule in &spec.rules {
            let named = (rule.name.clone())
                .and_then(|n| self.slots.get(&(key.clone(), Some(n))))
                .filter(|s| !s.candidates.is_empty());
            let got = named.or(whole).and_then(|s| self.slot_access(s));
            if let Some((i, _)) = &got {
                if self.policies[*i].invalid.is_none() {
                    plan.used.insert(*i);
                }
            }
            plan.access.push(got.map(|(_, a)| a));
        }
        plan
    }
}

/// One policy object read: its targets and its renamed settings, or why it is invalid.
fn read(o: &DynamicObject) -> Policy {
    let key = ObjectKey {
        kind: Kind::GatewayPolicy,
        namespace: o.metadata.namespace.clone().unwrap_or_default(),
        name: o.metadata.name.clone().unwrap_or_default(),
    };
    let raw = o.data.get("spec").cloned().unwrap_or_default();
    let mut p = Policy {
        key,
        generation: o.metadata.generation,
        targets: Vec::new(),
        invalid: None,
        auth: GatewayAuthFile::default(),
        access: closed(),
    };
    let spec = match serde_json::from_value::<GatewayPolicySpec>(raw.clone()) {
        Ok(s) => s,
        Err(e) => {
            // Its targets read loosely, so they are closed and hear why.
            p.targets = (raw.get("targetRefs").and_then(|t| t.as_array()))
                .into_iter()
                .flatten()
                .filter_map(|t| serde_json::from_value(t.clone()).ok())
                .collect();
            p.invalid = Some(format!("spec: {e}"));
            return p;
        }
    };
    p.targets = spec.target_refs.clone();
    match check(&spec) {
        Err(why) => p.invalid = Some(why),
        Ok(()) => {
            let prefix = format!("{}/{}/", p.key.namespace, p.key.name);
            let (auth, access) = renamed(spec.auth, spec.access, &prefix);
            p.auth = auth;
            p.access = access;
        }
    }
    p
}

/// The spec's own checks, as the gateway makes them, and Kubernetes' own.
fn check(spec: &GatewayPolicySpec) -> Result<(), String> {
    if spec.target_refs.is_empty() {
        return Err("spec.targetRefs: name at least one HTTPRoute or GRPCRoute".into());
    }
    for (i, t) in spec.target_refs.iter().enumerate() {
        if t.group != super::GROUP || route_kind(&t.kind).is_none() {
            return Err(format!(
                "spec.targetRefs[{i}]: {} of group {:?}: only HTTPRoutes and GRPCRoutes of {} \
                 are targets",
                t.kind,
                t.group,
                super::GROUP
            ));
        }
    }
    if spec.auth.max_clients.is_some() {
        return Err("spec.auth.max_clients: the gateway's own setting, not a policy's".into());
    }
    let paths = (spec.auth.jwt_providers.iter().enumerate())
        .flat_map(|(i, p)| {
            [
                (format!("jwt_providers[{i}].jwks_file"), p.jwks_file.clone()),
                (format!("jwt_providers[{i}].jwks_ca"), p.jwks_ca.clone()),
            ]
        })
        .chain(
            (spec.auth.api_keys.iter().enumerate())
                .map(|(i, k)| (format!("api_keys[{i}].file"), Some(k.file.clone()))),
        );
    for (field, path) in paths {
        if let Some(path) = path.filter(|p| !Path::new(p).is_absolute()) {
            return Err(format!(
                "spec.auth.{field}: {path:?} is relative: name a file mounted in the gateway's \
                 pod by its absolute path (or use jwks_url)"
            ));
        }
    }
    let auth = GatewayAuth::try_from(spec.auth.clone()).map_err(|errors| {
        let lines: Vec<String> = (errors.iter())
            .map(|e| format!("spec.auth.{}: {}", e.field, e.reason))
            .collect();
        lines.join("; ")
    })?;
    RouteAccess::validate(spec.access.clone(), &auth, "").map_err(|errors| {
        let lines: Vec<String> = (errors.iter())
            .map(|e| format!("spec.access.{}: {}", e.field, e.reason))
            .collect();
        lines.join("; ")
    })?;
    Ok(())
}

/// `auth` and `access` with every provider and key set name prefixed with `prefix`.
fn renamed(
    mut auth: GatewayAuthFile,
    mut access: RouteAccessFile,
    prefix: &str,
) -> (GatewayAuthFile, RouteAccessFile) {
    for p in &mut auth.jwt_providers {
        p.name = format!("{prefix}{}", p.name);
    }
    for k in &mut auth.api_keys {
        k.name = format!("{prefix}{}", k.name);
    }
    if let Some(a) = &mut access.auth {
        for n in [&mut a.jwt, &mut a.api_key].into_iter().flatten() {
            *n = format!("{prefix}{n}");
        }
    }
    (auth, access)
}

/// What became of one policy, per ancestor.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyOutcome {
    /// Which.
    pub key: ObjectKey,
    /// Its `metadata.generation`.
    pub generation: Option<i64>,
    /// Per ancestor (the Gateways its targets attach to, or the first target when none).
    pub ancestors: Vec<(AncestorRef, Said)>,
}

/// Each policy's verdicts, given the routes' (`verdicts`: per route and Gateway parent of
/// Weft's) and `routes`, the routes that exist (with their specs' rule names).
pub fn outcomes(
    at: &Attachments,
    verdicts: &[ParentVerdict],
    routes: &HashMap<ObjectKey, Vec<Option<String>>>,
) -> Vec<PolicyOutcome> {
    (at.policies.iter().enumerate())
        .map(|(i, p)| outcome(at, i, p, verdicts, routes))
        .collect()
}

// Long: one policy's verdict from each of its targets (found? attached? won?), then one
// entry per Gateway those targets attach to.
fn outcome(
    at: &Attachments,
    i: usize,
    p: &Policy,
    verdicts: &[ParentVerdict],
    routes: &HashMap<ObjectKey, Vec<Option<String>>>,
) -> PolicyOutcome {
    let mut gateways: BTreeSet<AncestorRef> = BTreeSet::new();
    let mut missing = Vec::new();
    let mut lost = Vec::new();
    let mut applied = 0;
    for t in &p.targets {
        let what = match &t.section_name {
            Some(s) => format!("{} {} rule {s}", t.kind, t.name),
            None => format!("{} {}", t.kind, t.name),
        };
        let Some(kind) = route_kind(&t.kind).filter(|_| t.group == super::GROUP) else {
            missing.push(format!("{what}: not a route kind Weft serves"));
            continue;
        };
        let route = ObjectKey {
            kind,
            namespace: p.key.namespace.clone(),
            name: t.name.clone(),
        };
        let Some(rules) = routes.get(&route) else {
            missing.push(format!("{what}: no such route"));
            continue;
        };
        if let Some(s) = &t.section_name {
            if !rules.iter().any(|r| r.as_deref() == Some(s)) {
                missing.push(format!("{what}: the route has no rule named {s}"));
                continue;
            }
        }
        let parents: Vec<AncestorRef> = (verdicts.iter())
            .filter(|v| v.key == route && v.result.is_ok())
            .map(|v| AncestorRef {
                group: super::GROUP.into(),
                kind: "Gateway".into(),
                namespace: (v.parent.namespace.clone()).unwrap_or_else(|| route.namespace.clone()),
                name: v.parent.name.clone(),
            })
            .collect();
        if parents.is_empty() {
            missing.push(format!("{what}: attached to no Gateway of Weft's"));
            continue;
        }
        gateways.extend(parents);
        // A whole-route target whose every rule is named by a policy of its own is taken.
        let all_named = t.section_name.is_none()
            && !rules.is_empty()
            && rules.iter().all(|n| {
                n.as_ref()
                    .is_some_and(|n| at.slots.contains_key(&(route.clone(), Some(n.clone()))))
            });
        if all_named && p.invalid.is_none() {
            lost.push(format!("{what}: each of its rules has a policy naming it"));
            continue;
        }
        let slot = at.slots.get(&(route, t.section_name.clone()));
        match slot.and_then(|s| s.candidates.first()) {
            Some(first) if *first != i && p.invalid.is_none() => {
                let w = &at.policies[*first].key;
                lost.push(format!(
                    "{what}: GatewayPolicy {}/{} is older",
                    w.namespace, w.name
                ));
            }
            _ => applied += 1,
        }
    }
    let verdict = if let Some(why) = &p.invalid {
        said(
            false,
            "Invalid",
            format!("{why} (the routes it targets refuse every request until it is fixed)"),
        )
    } else if applied == 0 && !lost.is_empty() {
        said(false, "Conflicted", lost.join("; "))
    } else if applied == 0 {
        said(false, "TargetNotFound", missing.join("; "))
    } else if missing.is_empty() && lost.is_empty() {
        said(true, "Accepted", "in force".into())
    } else {
        // In force on some targets: accepted, and the message says where it is not.
        let mut all = missing;
        all.extend(lost);
        said(
            true,
            "Accepted",
            format!("in force; not on: {}", all.join("; ")),
        )
    };
    let ancestors: Vec<AncestorRef> = if gateways.is_empty() {
        // No Gateway to name: the first target stands in as the ancestor.
        let t = p.targets.first();
        vec![AncestorRef {
            group: t.map_or(super::GROUP.into(), |t| t.group.clone()),
            kind: t.map_or("HTTPRoute".into(), |t| t.kind.clone()),
            namespace: p.key.namespace.clone(),
            name: t.map_or(String::new(), |t| t.name.clone()),
        }]
    } else {
        gateways.into_iter().collect()
    };
    PolicyOutcome {
        key: p.key.clone(),
        generation: p.generation,
        ancestors: ancestors
            .into_iter()
            .map(|a| (a, verdict.clone()))
            .collect(),
    }
}
