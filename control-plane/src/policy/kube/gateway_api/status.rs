//! Route status: `status.parents[]`, one entry per Service parent Weft judged, with
//! `controllerName` [`super::CONTROLLER_NAME`] and two conditions, `Accepted` and
//! `ResolvedRefs`, each with `observedGeneration`. Other controllers' entries (a Gateway
//! parent's) are kept as they are.

use std::collections::HashMap;

use kube::api::DynamicObject;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::types::ParentRef;
use super::{ParentVerdict, CONTROLLER_NAME};
use crate::policy::kube::crds::Condition;
use crate::policy::kube::mapping::{Kind, ObjectKey, Objects};

/// One `status.parents[]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    /// The parent as the route names it.
    pub parent_ref: ParentRef,
    /// Who wrote the entry.
    pub controller_name: String,
    /// `Accepted` and `ResolvedRefs`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// The entries of the status list at `pointer` of `object`: Weft's (those that parse as `T`;
/// the rest of Weft's are dropped, to be written anew) and, as they are, other controllers'.
pub(super) fn ours_and_theirs<T: serde::de::DeserializeOwned>(
    object: &DynamicObject,
    pointer: &str,
) -> (Vec<T>, Vec<Value>) {
    let current: Vec<Value> = (object.data.pointer(pointer))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let (ours, theirs): (Vec<Value>, Vec<Value>) = current
        .into_iter()
        .partition(|p| p["controllerName"] == CONTROLLER_NAME);
    let ours = ours
        .into_iter()
        .filter_map(|p| serde_json::from_value(p).ok())
        .collect();
    (ours, theirs)
}

/// The new `status` of `object` given Weft's `verdicts` on it, or `None` when what it holds
/// already says the same (times aside). `now` is RFC 3339.
pub fn route_status(
    object: &DynamicObject,
    verdicts: &[&ParentVerdict],
    now: &str,
) -> Option<Value> {
    let (ours, theirs) = ours_and_theirs::<RouteParentStatus>(object, "/status/parents");
    let wanted: Vec<RouteParentStatus> = verdicts
        .iter()
        .map(|v| {
            let before = ours.iter().find(|o| o.parent_ref == v.parent);
            entry(v, before, now)
        })
        .collect();
    let same = wanted.len() == ours.len()
        && wanted.iter().zip(&ours).all(|(w, o)| {
            w.parent_ref == o.parent_ref
                && w.conditions.len() == o.conditions.len()
                && w.conditions.iter().zip(&o.conditions).all(|(a, b)| {
                    a.type_ == b.type_
                        && a.status == b.status
                        && a.reason == b.reason
                        && a.message == b.message
                        && a.observed_generation == b.observed_generation
                })
        });
    if same {
        return None;
    }
    let mut parents = theirs;
    parents.extend(wanted.iter().filter_map(|w| serde_json::to_value(w).ok()));
    Some(serde_json::json!({ "parents": parents }))
}

fn entry(v: &ParentVerdict, before: Option<&RouteParentStatus>, now: &str) -> RouteParentStatus {
    let (accepted, resolved) = match &v.result {
        Ok(()) => (
            ("True", "Accepted", "in force".to_owned()),
            (
                "True",
                "ResolvedRefs",
                "every backendRef resolved".to_owned(),
            ),
        ),
        Err((reason, message)) if v.bad_ref => (
            ("False", *reason, message.clone()),
            ("False", *reason, message.clone()),
        ),
        Err((reason, message)) => (
            ("False", *reason, message.clone()),
            (
                "True",
                "ResolvedRefs",
                "every backendRef resolved".to_owned(),
            ),
        ),
    };
    let condition = |type_: &str, (status, reason, message): (&str, &str, String)| {
        let previous = before.and_then(|b| b.conditions.iter().find(|c| c.type_ == type_));
        Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message,
            observed_generation: v.generation,
            last_transition_time: match previous {
                Some(p) if p.status == status => p.last_transition_time.clone(),
                _ => now.to_owned(),
            },
        }
    };
    RouteParentStatus {
        parent_ref: v.parent.clone(),
        controller_name: CONTROLLER_NAME.to_owned(),
        conditions: vec![
            condition("Accepted", accepted),
            condition("ResolvedRefs", resolved),
        ],
    }
}

/// The status writes `verdicts` call for on `objects`' HTTPRoutes and GRPCRoutes: each route whose status
/// says something else than it should, unless the same was sent already (`sent`, the last
/// status sent per route and not yet seen back; routes gone are forgotten).
pub fn pending(
    objects: &Objects,
    verdicts: &[ParentVerdict],
    sent: &mut HashMap<ObjectKey, Value>,
    now: &str,
) -> Vec<(ObjectKey, Value)> {
    let routes: Vec<(ObjectKey, &DynamicObject)> = objects
        .http_routes
        .iter()
        .map(|o| (route_key(Kind::HttpRoute, o), o))
        .chain(
            objects
                .grpc_routes
                .iter()
                .map(|o| (route_key(Kind::GrpcRoute, o), o)),
        )
        .collect();
    sent.retain(|k, _| routes.iter().any(|(r, _)| r == k));
    let mut out = Vec::new();
    for (key, o) in routes {
        let mine: Vec<&ParentVerdict> = verdicts.iter().filter(|v| v.key == key).collect();
        let Some(status) = route_status(o, &mine, now) else {
            sent.remove(&key);
            continue;
        };
        if sent
            .get(&key)
            .is_some_and(|s| timeless(s) == timeless(&status))
        {
            continue;
        }
        sent.insert(key.clone(), status.clone());
        out.push((key, status));
    }
    out
}

/// A route status without its conditions' `lastTransitionTime`s.
fn timeless(status: &Value) -> Value {
    let mut v = status.clone();
    let parents = v.get_mut("parents").and_then(Value::as_array_mut);
    for p in parents.into_iter().flatten() {
        let conditions = p.get_mut("conditions").and_then(Value::as_array_mut);
        for c in conditions.into_iter().flatten() {
            if let Some(c) = c.as_object_mut() {
                c.remove("lastTransitionTime");
            }
        }
    }
    v
}

/// The key of a route of `kind`.
pub fn route_key(kind: Kind, o: &DynamicObject) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: o.metadata.namespace.clone().unwrap_or_default(),
        name: o.metadata.name.clone().unwrap_or_default(),
    }
}
