//! Query strings, label and field selectors, and JSON merge patches (RFC 7386).

use std::collections::HashMap;

use serde_json::Value;

/// Decodes `%XX` escapes and `+` (form encoding, as clients send selectors); `None` for a
/// malformed escape or bytes that are not UTF-8.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The query parameters, decoded; `None` when one is malformed.
pub(crate) fn query(q: Option<&str>) -> Option<HashMap<String, String>> {
    let mut out = HashMap::new();
    for pair in q.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(percent_decode(k)?, percent_decode(v)?);
    }
    Some(out)
}

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

/// A label selector (`a=b,c!=d,e,!f`) or a field selector (`metadata.name=x`, dotted paths
/// into the object); set-based forms (`in`, `notin`) are refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// Parses a selector; the error says what is not understood.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part.contains('(') || part.contains(" in ") || part.contains(" notin ") {
                return Err(format!("set-based selector {part:?} is not supported"));
            }
            let r = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Equals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::Absent(k.trim().to_owned())
            } else {
                Requirement::Exists(part.to_owned())
            };
            requirements.push(r);
        }
        Ok(Self { requirements })
    }

    /// Whether `object`'s labels satisfy the selector.
    pub(crate) fn matches_labels(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        self.matches(|k| labels.get(k).and_then(Value::as_str).map(str::to_owned))
    }

    /// Whether `object`'s fields (dotted paths) satisfy the selector.
    pub(crate) fn matches_fields(&self, object: &Value) -> bool {
        self.matches(|path| {
            let v = path.split('.').try_fold(object, |v, k| v.get(k))?;
            Some(match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
        })
    }

    fn matches(&self, value: impl Fn(&str) -> Option<String>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => value(k).as_deref() == Some(v.as_str()),
            Requirement::NotEquals(k, v) => value(k).as_deref() != Some(v.as_str()),
            Requirement::Exists(k) => value(k).is_some(),
            Requirement::Absent(k) => value(k).is_none(),
        })
    }
}

/// Applies a JSON merge patch (RFC 7386) to `target`.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    if let Value::Object(t) = target {
        for (k, v) in patch {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selectors_match_labels_and_fields() {
        let pod = json!({"metadata": {"name": "a", "labels": {"app": "orders", "v": "2"}},
                         "spec": {"nodeName": "node-1"}});
        let yes = ["app=orders", "app==orders,v!=1", "app", "!missing", ""];
        for s in yes {
            assert!(Selector::parse(s).expect(s).matches_labels(&pod), "{s}");
        }
        for s in ["app=frontend", "app,missing", "!app", "v!=2"] {
            assert!(!Selector::parse(s).expect(s).matches_labels(&pod), "{s}");
        }
        let f = Selector::parse("spec.nodeName=node-1,metadata.name=a").expect("fields");
        assert!(f.matches_fields(&pod));
        assert!(!Selector::parse("spec.nodeName=node-2")
            .expect("fields")
            .matches_fields(&pod));
        assert!(Selector::parse("app in (a,b)").is_err());
        let q = query(Some("labelSelector=app%3Dorders&watch=1&x")).expect("query");
        assert_eq!(q["labelSelector"], "app=orders");
        assert_eq!(q["x"], "");
        assert!(query(Some("a=%zz")).is_none());
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut v = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut v, &json!({"a": "z", "c": {"f": null}, "n": [1]}));
        assert_eq!(v, json!({"a": "z", "c": {"d": "e"}, "n": [1]}));
    }
}
