//! Forward-compatible reading of what a newer control plane sends. Operators' files stay
//! strict (`deny_unknown_fields`: a misspelt key is an error with its line), but a mesh
//! upgrades its control plane before its sidecars, and a field the control plane learnt in the
//! meantime must not make every older sidecar refuse the update. [`from_json`] drops the
//! fields the type's own JSON schema does not name, says which, and then reads the rest with
//! the same strict types.

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// How deep a document is followed; deeper parts are read as they are (strictly).
const MAX_DEPTH: usize = 64;

/// Read `bytes` as a `T`, ignoring the object fields `T`'s schema does not know. Returns the
/// value and the ignored fields' paths (`services[0].new_knob`).
pub fn from_json<T: DeserializeOwned + JsonSchema>(
    bytes: &[u8],
) -> Result<(T, Vec<String>), serde_json::Error> {
    let mut value: Value = serde_json::from_slice(bytes)?;
    let schema = schemars::schema_for!(T);
    let root = schema.as_value();
    let mut ignored = Vec::new();
    prune(&mut value, root, root, "", &mut ignored, 0);
    Ok((serde_json::from_value(value)?, ignored))
}

/// The schema a `$ref` (`#/$defs/Name`) points to, or `schema` itself.
fn resolve<'a>(schema: &'a Value, root: &'a Value) -> &'a Value {
    let mut s = schema;
    // Bounded: a definition that is only a reference to another is followed a few times.
    for _ in 0..8 {
        let Some(r) = s.get("$ref").and_then(Value::as_str) else {
            return s;
        };
        let Some(target) = r.strip_prefix('#').and_then(|p| root.pointer(p)) else {
            return s;
        };
        s = target;
    }
    s
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Whether `v` can be an instance of `schema` as far as choosing a branch of `anyOf`/`oneOf`
/// needs: its JSON type, an enum's values, an object's required fields.
fn fits(v: &Value, schema: &Value) -> bool {
    let json_type = match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let type_ok = match schema.get("type") {
        Some(Value::String(t)) => t == json_type || (t == "number" && json_type == "integer"),
        Some(Value::Array(ts)) => ts.iter().any(|t| {
            t.as_str()
                .is_some_and(|t| t == json_type || (t == "number" && json_type == "integer"))
        }),
        _ => true,
    };
    let enum_ok = match schema.get("enum").and_then(Value::as_array) {
        Some(values) => values.contains(v),
        None => schema.get("const").is_none_or(|c| c == v),
    };
    let required_ok = match (v, schema.get("required").and_then(Value::as_array)) {
        (Value::Object(map), Some(req)) => req
            .iter()
            .all(|k| k.as_str().is_some_and(|k| map.contains_key(k))),
        _ => true,
    };
    type_ok && enum_ok && required_ok
}

fn prune(
    v: &mut Value,
    schema: &Value,
    root: &Value,
    path: &str,
    ignored: &mut Vec<String>,
    depth: usize,
) {
    if depth > MAX_DEPTH {
        return;
    }
    let schema = resolve(schema, root);
    for key in ["anyOf", "oneOf"] {
        if let Some(branches) = schema.get(key).and_then(Value::as_array) {
            let branch = branches
                .iter()
                .map(|b| resolve(b, root))
                .find(|b| fits(v, b));
            if let Some(b) = branch {
                prune(v, b, root, path, ignored, depth + 1);
            }
            return;
        }
    }
    match v {
        Value::Object(map) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                if schema.get("additionalProperties") == Some(&Value::Bool(false)) {
                    map.retain(|k, _| {
                        let known = props.contains_key(k);
                        if !known {
                            ignored.push(join(path, k));
                        }
                        known
                    });
                }
                for (k, sub) in map.iter_mut() {
                    if let Some(s) = props.get(k) {
                        prune(sub, s, root, &join(path, k), ignored, depth + 1);
                    }
                }
            } else if let Some(values) =
                schema.get("additionalProperties").filter(|a| a.is_object())
            {
                // A map: every value has the same schema.
                for (k, sub) in map.iter_mut() {
                    prune(sub, values, root, &join(path, k), ignored, depth + 1);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = schema.get("items") {
                for (i, it) in items.iter_mut().enumerate() {
                    prune(it, item, root, &format!("{path}[{i}]"), ignored, depth + 1);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::PolicySnapshot;

    #[test]
    fn fields_a_newer_control_plane_added_are_dropped_and_named() {
        let json = br#"{
            "version": "v9",
            "compression": "zstd",
            "services": [{
                "name": "orders",
                "identity": "spiffe://weft.local/ns/default/sa/orders",
                "endpoints": [{"address": "10.0.0.1:4143", "labels": {"version": "v1"}, "zone": "a"}],
                "limits": {"max_in_flight": 10, "adaptive": true},
                "slow_start": "30s"
            }],
            "routes": [{"name": "r", "service": "orders", "match": {"path": {"prefix": "/api"}, "grpc_method": "x"}}],
            "authorization": {"mode": "deny", "rules": [{"name": "fe", "from": ["frontend"], "new_rule_knob": 1}]}
        }"#;
        let (p, ignored): (PolicySnapshot, _) = from_json(json).expect("readable");
        assert_eq!(p.version, "v9");
        assert_eq!(
            p.services[0].limits.as_ref().and_then(|l| l.max_in_flight),
            Some(10)
        );
        assert_eq!(
            p.services[0].endpoints[0]
                .labels
                .get("version")
                .map(String::as_str),
            Some("v1"),
            "a map's keys are data, not fields"
        );
        let mut ignored = ignored;
        ignored.sort();
        assert_eq!(
            ignored,
            [
                "authorization.mode",
                "authorization.rules[0].new_rule_knob",
                "compression",
                "routes[0].match.grpc_method",
                "services[0].endpoints[0].zone",
                "services[0].limits.adaptive",
                "services[0].slow_start",
            ]
        );
    }

    #[test]
    fn a_known_snapshot_reads_as_strictly_as_ever() {
        let json = br#"{"version": "v1", "services": [{"name": "orders", "identity": "spiffe://weft.local/ns/default/sa/orders"}]}"#;
        let (p, ignored): (PolicySnapshot, _) = from_json(json).expect("readable");
        assert!(ignored.is_empty());
        assert_eq!(p.services.len(), 1);
        // A known field with a wrong type is still an error, not dropped.
        let bad = br#"{"services": [{"name": 7, "identity": "x"}]}"#;
        assert!(from_json::<PolicySnapshot>(bad).is_err());
    }
}
