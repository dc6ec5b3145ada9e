//! North-south status: a Weft `GatewayClass`'s `Accepted`; a `Gateway`'s `Accepted` and
//! `Programmed` and `status.listeners[]` (`supportedKinds`, `attachedRoutes`, `Accepted`,
//! `Programmed`, `ResolvedRefs`), each condition with `observedGeneration` and a
//! `lastTransitionTime` kept while its status stands. HTTPRoute `status.parents[]` entries for
//! Gateway parents are written by [`super::status`] with the GAMMA ones.

use std::collections::HashMap;

use kube::api::DynamicObject;
use serde_json::{json, Value};

use super::north_south::{ClassOutcome, GatewayOutcome, NorthSouth, Verdict};
use crate::policy::kube::crds::Condition;
use crate::policy::kube::objects::{Kind, ObjectKey};

/// A condition's status, reason and message.
type Said<'a> = (&'a str, &'a str, String);

/// One condition of `type_`, its transition time carried over from `before` while its
/// status stands.
fn condition(
    type_: &str,
    said: Said<'_>,
    generation: Option<i64>,
    before: &[Condition],
    now: &str,
) -> Condition {
    let (status, reason, message) = said;
    let previous = before.iter().find(|c| c.type_ == type_);
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: match previous {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => now.to_owned(),
        },
    }
}

/// True with `ok` as the reason, or False with the verdict's reason.
fn said<'a>(v: &'a Verdict, ok: &'a str, message: &str) -> Said<'a> {
    match v {
        Ok(()) => ("True", ok, message.to_owned()),
        Err((reason, why)) => ("False", reason, why.clone()),
    }
}

fn conditions_at(status: Option<&Value>) -> Vec<Condition> {
    status
        .and_then(|s| s.get("conditions"))
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default()
}

/// The `status` a GatewayClass should hold.
pub fn class_status(c: &ClassOutcome, current: Option<&Value>, now: &str) -> Value {
    let before = conditions_at(current);
    let accepted = condition(
        "Accepted",
        said(
            &c.accepted,
            "Accepted",
            "served by weft-proxy in gateway mode",
        ),
        c.generation,
        &before,
        now,
    );
    json!({ "conditions": [accepted] })
}

/// The `status` a Gateway should hold.
pub fn gateway_status(g: &GatewayOutcome, current: Option<&Value>, now: &str) -> Value {
    let before = conditions_at(current);
    let accepted = condition(
        "Accepted",
        said(&g.accepted, "Accepted", "accepted"),
        g.generation,
        &before,
        now,
    );
    let programmed = match (&g.accepted, &g.config) {
        (Ok(()), Ok(_)) => (
            "True",
            "Programmed",
            "the gateway config is written".to_owned(),
        ),
        (Err((_, why)), _) => ("False", "Invalid", why.clone()),
        (_, Err(why)) => ("False", "Invalid", why.clone()),
    };
    let programmed = condition("Programmed", programmed, g.generation, &before, now);
    let listeners_before: Vec<Value> = current
        .and_then(|s| s.get("listeners"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let listeners: Vec<Value> = g
        .listeners
        .iter()
        .map(|l| {
            let before = listeners_before
                .iter()
                .find(|b| b["name"] == l.name.as_str());
            let before = conditions_at(before);
            let programmed = if l.programmed {
                ("True", "Programmed", "served".to_owned())
            } else {
                ("False", "Invalid", "not served".to_owned())
            };
            let conditions = [
                condition(
                    "Accepted",
                    said(&l.accepted, "Accepted", "accepted"),
                    g.generation,
                    &before,
                    now,
                ),
                condition("Programmed", programmed, g.generation, &before, now),
                condition(
                    "ResolvedRefs",
                    said(&l.resolved, "ResolvedRefs", "every reference resolved"),
                    g.generation,
                    &before,
                    now,
                ),
            ];
            json!({
                "name": l.name,
                "supportedKinds": l.supported_kinds.iter()
                    .map(|k| json!({"group": super::GROUP, "kind": k}))
                    .collect::<Vec<_>>(),
                "attachedRoutes": l.attached_routes,
                "conditions": conditions,
            })
        })
        .collect();
    json!({ "conditions": [accepted, programmed], "listeners": listeners })
}

/// A status without its conditions' `lastTransitionTime`s (wherever they are).
fn timeless(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| k.as_str() != "lastTransitionTime")
                .map(|(k, v)| (k.clone(), timeless(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(timeless).collect()),
        other => other.clone(),
    }
}

/// The status writes the north-south verdicts call for on `classes` and `gateways` (the
/// stored objects): each whose status says something else, unless the same was sent already
/// (`sent`, per object; objects gone are forgotten).
pub fn pending(
    ns: &NorthSouth,
    classes: &[DynamicObject],
    gateways: &[DynamicObject],
    sent: &mut HashMap<ObjectKey, Value>,
    now: &str,
) -> Vec<(ObjectKey, Value)> {
    let stored = |kind: Kind, list: &[DynamicObject], namespace: &str, name: &str| {
        list.iter()
            .find(|o| {
                o.metadata.name.as_deref() == Some(name)
                    && (kind == Kind::GatewayClass
                        || o.metadata.namespace.as_deref() == Some(namespace))
            })
            .map(|o| o.data.get("status").cloned().unwrap_or(Value::Null))
    };
    let mut wanted: Vec<(ObjectKey, Option<Value>, Value)> = Vec::new();
    for c in &ns.classes {
        let key = ObjectKey {
            kind: Kind::GatewayClass,
            namespace: String::new(),
            name: c.name.clone(),
        };
        let current = stored(Kind::GatewayClass, classes, "", &c.name);
        let status = class_status(c, current.as_ref(), now);
        wanted.push((key, current, status));
    }
    for g in &ns.gateways {
        let current = stored(Kind::Gateway, gateways, &g.key.namespace, &g.key.name);
        let status = gateway_status(g, current.as_ref(), now);
        wanted.push((g.key.clone(), current, status));
    }
    // The map is shared with the GatewayPolicies' (`super::policy_status`): only this kind's
    // entries are forgotten here.
    sent.retain(|k, _| {
        !matches!(k.kind, Kind::Gateway | Kind::GatewayClass)
            || wanted.iter().any(|(w, _, _)| w == k)
    });
    let mut out = Vec::new();
    for (key, current, status) in wanted {
        let theirs = current.as_ref().map(timeless);
        // Compare only what Weft writes (another writer's fields, such as addresses, stay).
        let ours_now = theirs.as_ref().map(|t| {
            let mut t = t.clone();
            if let Some(m) = t.as_object_mut() {
                m.retain(|k, _| k == "conditions" || k == "listeners");
            }
            t
        });
        if ours_now.as_ref() == Some(&timeless(&status)) {
            sent.remove(&key);
            continue;
        }
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
