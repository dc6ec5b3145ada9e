//! The objects, their resource versions and the event history watches replay: the API
//! server's storage semantics (create/update/patch/delete with optimistic concurrency,
//! status subresources, generations, graceful deletion, compaction).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::SystemTime;

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::kinds::KindSpec;
use crate::select::{merge_patch, Selector};
use crate::ApiError;

/// Events kept for watches to resume from; older ones are compacted away (`410 Gone`).
pub(crate) const MAX_EVENTS: usize = 10_000;
/// Events a watcher may have unread before it is closed (the client watches again), as the
/// API server drops watchers that do not keep up.
pub(crate) const WATCH_BUFFER: usize = 1024;

/// One change, as watches see it.
pub(crate) struct Event {
    kind: usize,
    rv: u64,
    object: Value,
    line: Bytes,
}

/// An open watch.
pub(crate) struct Watcher {
    pub(crate) kind: usize,
    pub(crate) filter: Filter,
    pub(crate) tx: mpsc::Sender<Bytes>,
}

/// Which objects a list or watch is about.
#[derive(Debug, Default, Clone)]
pub(crate) struct Filter {
    pub(crate) namespace: Option<String>,
    pub(crate) labels: Selector,
    pub(crate) fields: Selector,
}

impl Filter {
    pub(crate) fn matches(&self, object: &Value) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| object["metadata"]["namespace"] == ns)
            && self.labels.matches_labels(object)
            && self.fields.matches_fields(object)
    }
}

/// Which part of an object a write changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    /// The object (status untouched where the kind has a status subresource).
    Main,
    /// `/status`: only the status.
    Status,
    /// The test's own writes: everything as given.
    Seed,
}

/// Namespace and name.
pub(crate) type Key = (String, String);

/// The stand-in's whole state.
pub(crate) struct State {
    pub(crate) rv: u64,
    /// Watches from before this version get `410 Gone`.
    pub(crate) compacted: u64,
    pub(crate) kinds: Vec<KindSpec>,
    pub(crate) objects: Vec<BTreeMap<Key, Value>>,
    events: VecDeque<Event>,
    pub(crate) watchers: Vec<Watcher>,
    pub(crate) lists: HashMap<String, usize>,
    pub(crate) watches: HashMap<String, usize>,
    pub(crate) gets: HashMap<String, usize>,
    pub(crate) patches: Vec<(String, Value)>,
    pub(crate) tokens: Tokens,
    uids: u64,
}

/// A token minted by the stand-in.
#[derive(Debug, Clone)]
pub(crate) struct Minted {
    pub(crate) namespace: String,
    pub(crate) service_account: String,
    pub(crate) service_account_uid: String,
    pub(crate) audiences: Vec<String>,
    pub(crate) expires: SystemTime,
    /// The pod it is bound to: name and uid.
    pub(crate) pod: Option<(String, String)>,
}

/// Every token minted (the TokenRequest and TokenReview handlers are in `crate::auth`).
#[derive(Debug, Default)]
pub(crate) struct Tokens {
    pub(crate) minted: HashMap<String, Minted>,
    pub(crate) reviews: usize,
}

/// The current time in RFC 3339, as the API server writes timestamps.
pub(crate) fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

impl State {
    pub(crate) fn new(kinds: Vec<KindSpec>) -> Self {
        let objects = kinds.iter().map(|_| BTreeMap::new()).collect();
        Self {
            rv: 100,
            compacted: 0,
            kinds,
            objects,
            events: VecDeque::new(),
            watchers: Vec::new(),
            lists: HashMap::new(),
            watches: HashMap::new(),
            gets: HashMap::new(),
            patches: Vec::new(),
            tokens: Tokens::default(),
            uids: fastrand::u64(..),
        }
    }

    /// The kind named `kind` (and `api_version`, when given).
    pub(crate) fn kind_named(&self, kind: &str, api_version: Option<&str>) -> Option<usize> {
        self.kinds.iter().position(|k| {
            k.kind == kind && api_version.is_none_or(|v| v.is_empty() || v == k.api_version())
        })
    }

    /// The kind served at `group/version/plural`.
    pub(crate) fn kind_at(&self, group: &str, version: &str, plural: &str) -> Option<usize> {
        self.kinds
            .iter()
            .position(|k| k.group == group && k.version == version && k.plural == plural)
    }

    fn not_found(&self, kind: usize, name: &str) -> ApiError {
        let k = &self.kinds[kind];
        ApiError::not_found(format!("{} {name:?} not found", k.qualified()))
    }

    fn event(&mut self, kind: usize, event_type: &str, object: &Value) {
        let line = Bytes::from(format!(
            "{}\n",
            json!({"type": event_type, "object": object})
        ));
        self.watchers.retain(|w| {
            w.kind != kind || !w.filter.matches(object) || w.tx.try_send(line.clone()).is_ok()
        });
        self.events.push_back(Event {
            kind,
            rv: self.rv,
            object: object.clone(),
            line,
        });
        while self.events.len() > MAX_EVENTS {
            if let Some(e) = self.events.pop_front() {
                self.compacted = self.compacted.max(e.rv);
            }
        }
    }

    /// The recorded events of `kind` after version `from` that `filter` matches.
    pub(crate) fn events_since(&self, kind: usize, from: u64, filter: &Filter) -> Vec<Bytes> {
        self.events
            .iter()
            .filter(|e| e.kind == kind && e.rv > from && filter.matches(&e.object))
            .map(|e| e.line.clone())
            .collect()
    }

    pub(crate) fn get(&self, kind: usize, key: &Key) -> Result<Value, ApiError> {
        self.objects[kind]
            .get(key)
            .cloned()
            .ok_or_else(|| self.not_found(kind, &key.1))
    }

    pub(crate) fn list(&self, kind: usize, filter: &Filter) -> Vec<Value> {
        self.objects[kind]
            .values()
            .filter(|o| filter.matches(o))
            .cloned()
            .collect()
    }

    /// Stores `object` under `key` (as new when `old` is `None`) with the next version.
    fn store(&mut self, kind: usize, key: Key, mut object: Value, old: Option<&Value>) -> Value {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.objects[kind].insert(key, object.clone());
        let event_type = if old.is_some() { "MODIFIED" } else { "ADDED" };
        self.event(kind, event_type, &object);
        object
    }

    fn fresh_uid(&mut self) -> String {
        self.uids = self.uids.wrapping_add(1);
        let n = self.uids;
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            n >> 32,
            (n >> 16) & 0xffff,
            n & 0xfff,
            (n >> 4) & 0xfff,
            n & 0xffff_ffff_ffff
        )
    }

    /// Create: a name (or `generateName` plus a suffix), 409 `AlreadyExists` when taken; the
    /// server sets uid, creationTimestamp, generation, and drops a status the kind's
    /// subresource owns.
    pub(crate) fn create(
        &mut self,
        kind: usize,
        namespace: Option<&str>,
        mut object: Value,
        part: Part,
    ) -> Result<Value, ApiError> {
        let spec = self.kinds[kind].clone();
        if !object.is_object() || !object["metadata"].is_object() && !object["metadata"].is_null() {
            return Err(ApiError::bad_request(
                "the body is not an object with metadata",
            ));
        }
        let body_ns = object["metadata"]["namespace"].as_str().map(str::to_owned);
        let namespace = match (spec.namespaced, namespace, body_ns) {
            (false, _, _) => String::new(),
            (true, Some(p), Some(b)) if p != b => {
                return Err(ApiError::bad_request(format!(
                    "the namespace of the object ({b}) does not match the namespace of the request ({p})"
                )))
            }
            (true, Some(p), _) => p.to_owned(),
            (true, None, Some(b)) if part == Part::Seed => b,
            (true, None, _) => {
                return Err(ApiError::bad_request("a namespaced object needs a namespace"))
            }
        };
        let name = match (
            object["metadata"]["name"].as_str(),
            object["metadata"]["generateName"].as_str(),
        ) {
            (Some(n), _) if !n.is_empty() => n.to_owned(),
            (_, Some(prefix)) => format!("{prefix}{}", fastrand::u32(..) % 100_000),
            _ => {
                return Err(ApiError::bad_request(
                    "metadata.name or generateName is required",
                ))
            }
        };
        valid_name(&name)?;
        let key = (namespace.clone(), name.clone());
        if self.objects[kind].contains_key(&key) {
            return Err(ApiError::conflict(
                "AlreadyExists",
                format!("{} {name:?} already exists", spec.qualified()),
            ));
        }
        object["kind"] = json!(spec.kind);
        object["apiVersion"] = json!(spec.api_version());
        let meta = &mut object["metadata"];
        meta["name"] = json!(name);
        if spec.namespaced {
            meta["namespace"] = json!(namespace);
        }
        if part != Part::Seed || meta.get("uid").is_none() {
            let uid = self.fresh_uid();
            object["metadata"]["uid"] = json!(uid);
        }
        if part != Part::Seed || object["metadata"].get("creationTimestamp").is_none() {
            object["metadata"]["creationTimestamp"] = json!(now());
        }
        if spec.generation {
            object["metadata"]["generation"] = json!(1);
        }
        if spec.status_subresource && part != Part::Seed {
            if let Some(o) = object.as_object_mut() {
                o.remove("status");
            }
        }
        Ok(self.store(kind, key, object, None))
    }

    /// Update: 404 when missing; 409 `Conflict` when `metadata.resourceVersion` is given and
    /// is not the stored one; uid and creationTimestamp kept; only the part written changes.
    pub(crate) fn update(
        &mut self,
        kind: usize,
        key: Key,
        mut object: Value,
        part: Part,
    ) -> Result<Value, ApiError> {
        let spec = self.kinds[kind].clone();
        let old = self.get(kind, &key)?;
        if object["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n != key.1)
        {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name in the path",
            ));
        }
        let precondition = match part {
            Part::Seed => None,
            _ => object["metadata"]["resourceVersion"].as_str(),
        };
        if let Some(rv) = precondition {
            if rv != old["metadata"]["resourceVersion"] {
                return Err(ApiError::conflict(
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {} {:?}: the object has been modified; \
                         please apply your changes to the latest version and try again",
                        spec.qualified(),
                        key.1
                    ),
                ));
            }
        }
        match part {
            Part::Status => {
                let status = object.get("status").cloned().unwrap_or(Value::Null);
                object = old.clone();
                object["status"] = status;
            }
            Part::Main if spec.status_subresource => {
                object["status"] = old.get("status").cloned().unwrap_or(Value::Null);
            }
            Part::Main | Part::Seed => {
                if part == Part::Seed && object.get("status").is_none() && spec.status_subresource {
                    object["status"] = old.get("status").cloned().unwrap_or(Value::Null);
                }
            }
        }
        if object["status"].is_null() {
            if let Some(o) = object.as_object_mut() {
                o.remove("status");
            }
        }
        object["kind"] = json!(spec.kind);
        object["apiVersion"] = json!(spec.api_version());
        for k in ["uid", "creationTimestamp", "namespace", "deletionTimestamp"] {
            let kept = old["metadata"].get(k).cloned();
            if part != Part::Seed || object["metadata"].get(k).is_none() {
                match kept {
                    Some(v) => object["metadata"][k] = v,
                    None => {
                        if let Some(m) = object["metadata"].as_object_mut() {
                            m.remove(k);
                        }
                    }
                }
            }
        }
        object["metadata"]["name"] = json!(key.1);
        if spec.generation {
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
            let moved = part != Part::Status && old.get("spec") != object.get("spec");
            object["metadata"]["generation"] = json!(generation + i64::from(moved));
        }
        Ok(self.store(kind, key, object, Some(&old)))
    }

    /// Merge patch (RFC 7386) of `part`, then an update (a `resourceVersion` in the patch is
    /// a precondition, as on the API server).
    pub(crate) fn patch(
        &mut self,
        kind: usize,
        key: Key,
        patch: &Value,
        part: Part,
    ) -> Result<Value, ApiError> {
        let mut object = self.get(kind, &key)?;
        let precondition = patch["metadata"]["resourceVersion"].clone();
        merge_patch(&mut object, patch);
        if precondition.is_null() {
            if let Some(m) = object["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
        }
        if part == Part::Status {
            let key = format!("{}/{}/{}", self.kinds[kind].plural, key.0, key.1);
            self.patches.push((key, patch.clone()));
        }
        self.update(kind, key, object, part)
    }

    /// Delete: the object as it was last, or (graceful kinds, bound to a node, without
    /// `grace_zero`) the object marked with `deletionTimestamp`, deleted later.
    pub(crate) fn delete(
        &mut self,
        kind: usize,
        key: Key,
        grace_zero: bool,
    ) -> Result<Value, ApiError> {
        let old = self.get(kind, &key)?;
        let spec = &self.kinds[kind];
        let bound = old["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty());
        if spec.graceful_delete && bound && !grace_zero {
            if old["metadata"].get("deletionTimestamp").is_some() {
                return Ok(old);
            }
            let mut marked = old.clone();
            marked["metadata"]["deletionTimestamp"] = json!(now());
            let grace = old["spec"]["terminationGracePeriodSeconds"]
                .as_i64()
                .unwrap_or(30);
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            return Ok(self.store(kind, key, marked, Some(&old)));
        }
        self.rv += 1;
        let mut object = self.objects[kind]
            .remove(&key)
            .ok_or_else(|| self.not_found(kind, &key.1))?;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.event(kind, "DELETED", &object);
        Ok(object)
    }
}

/// A DNS-1123 subdomain, as the API server requires of most names.
fn valid_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist \
             of lower case alphanumeric characters, '-' or '.'"
        )))
    }
}
