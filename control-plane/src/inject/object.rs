//! Where a Kubernetes object keeps its pod template and metadata, and how to reach into them.

use serde_json::{Map, Value};

/// JSON pointer of the pod template (`metadata` + `spec`) of each kind that has one.
pub(super) fn pod_template_path(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// `Kind namespace/name` (or `generateName*` for a pod not yet named) for messages.
pub(super) fn describe(object: &Value) -> String {
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("object");
    let meta = object.get("metadata");
    let field = |f: &str| meta.and_then(|m| m.get(f)).and_then(Value::as_str);
    let name = match (field("name"), field("generateName")) {
        (Some(n), _) if !n.is_empty() => n.to_owned(),
        (_, Some(g)) if !g.is_empty() => format!("{g}*"),
        _ => "(unnamed)".to_owned(),
    };
    match field("namespace").filter(|n| !n.is_empty()) {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

pub(super) fn annotations(v: Option<&Value>) -> Map<String, Value> {
    v.and_then(Value::as_object).cloned().unwrap_or_default()
}

/// The object at `pointer`, creating empty objects on the way ("" is the root). `None` when
/// something on the way is not an object.
pub(super) fn pointer_mut_or_create<'a>(
    root: &'a mut Value,
    pointer: &str,
) -> Option<&'a mut Value> {
    let mut here = root;
    for part in pointer.split('/').skip(1) {
        here = here
            .as_object_mut()?
            .entry(part.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    here.is_object().then_some(here)
}
