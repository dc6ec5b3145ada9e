//! `GatewayPolicy` status: `status.ancestors[]`, one entry per ancestor Weft judged
//! ([`super::policy_attach::outcomes`]), with `controllerName` [`super::CONTROLLER_NAME`] and an
//! `Accepted` condition (`observedGeneration`, a `lastTransitionTime` kept while its status
//! stands). Other controllers' entries are kept as they are.

use std::collections::HashMap;

use kube::api::DynamicObject;
use serde_json::Value;

use super::policy_attach::PolicyOutcome;
use super::CONTROLLER_NAME;
use crate::policy::kube::crds::{Condition, PolicyAncestorStatus};
use crate::policy::kube::objects::{Kind, ObjectKey};

/// The `status` `outcome` calls for on `object` (its current status read for transition
/// times and other controllers' entries).
pub fn policy_status(object: &DynamicObject, outcome: &PolicyOutcome, now: &str) -> Value {
    let (ours, theirs) =
        super::status::ours_and_theirs::<PolicyAncestorStatus>(object, "/status/ancestors");
    let mut ancestors = theirs;
    for (ancestor, said) in &outcome.ancestors {
        let before = (ours.iter())
            .find(|o| &o.ancestor_ref == ancestor)
            .and_then(|o| o.conditions.iter().find(|c| c.type_ == "Accepted"));
        let status = if said.accepted { "True" } else { "False" };
        let entry = PolicyAncestorStatus {
            ancestor_ref: ancestor.clone(),
            controller_name: CONTROLLER_NAME.to_owned(),
            conditions: vec![Condition {
                type_: "Accepted".into(),
                status: status.into(),
                reason: said.reason.into(),
                message: said.message.clone(),
                observed_generation: outcome.generation,
                last_transition_time: match before {
                    Some(b) if b.status == status => b.last_transition_time.clone(),
                    _ => now.to_owned(),
                },
            }],
        };
        ancestors.extend(serde_json::to_value(entry).ok());
    }
    serde_json::json!({ "ancestors": ancestors })
}

/// The status writes `outcomes` call for on `policies` (the stored objects): each whose status
/// says something else, unless the same was sent already (`sent`; policies gone are
/// forgotten).
pub fn pending(
    outcomes: &[PolicyOutcome],
    policies: &[DynamicObject],
    sent: &mut HashMap<ObjectKey, Value>,
    now: &str,
) -> Vec<(ObjectKey, Value)> {
    sent.retain(|k, _| k.kind != Kind::GatewayPolicy || outcomes.iter().any(|o| &o.key == k));
    let mut out = Vec::new();
    for o in outcomes {
        let Some(object) = policies.iter().find(|p| {
            p.metadata.namespace.as_deref() == Some(&o.key.namespace)
                && p.metadata.name.as_deref() == Some(&o.key.name)
        }) else {
            continue;
        };
        let status = policy_status(object, o, now);
        let stored = object.data.pointer("/status/ancestors").map(timeless);
        if stored.as_ref() == status.get("ancestors").map(timeless).as_ref() {
            sent.remove(&o.key);
            continue;
        }
        if sent
            .get(&o.key)
            .is_some_and(|s| timeless(s) == timeless(&status))
        {
            continue;
        }
        sent.insert(o.key.clone(), status.clone());
        out.push((o.key.clone(), status));
    }
    out
}

/// A status without its conditions' `lastTransitionTime`s.
fn timeless(status: &Value) -> Value {
    match status {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| *k != "lastTransitionTime")
                .map(|(k, v)| (k.clone(), timeless(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(timeless).collect()),
        other => other.clone(),
    }
}
