//! What changed between two policies, by service and route name (`weftctl apply --dry-run`'s
//! summary).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::policy::mesh::MeshPolicy;

/// Items by name, each as its JSON, for comparing definitions.
fn by_name<T: Serialize>(items: &[T], name: impl Fn(&T) -> &str) -> BTreeMap<String, String> {
    items
        .iter()
        .map(|i| {
            (
                name(i).to_owned(),
                serde_json::to_string(i).unwrap_or_default(),
            )
        })
        .collect()
}

fn compare(
    a: &BTreeMap<String, String>,
    b: &BTreeMap<String, String>,
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let added = b.keys().filter(|k| !a.contains_key(*k)).cloned().collect();
    let removed = a.keys().filter(|k| !b.contains_key(*k)).cloned().collect();
    let changed = a
        .iter()
        .filter(|(k, v)| b.get(*k).is_some_and(|w| w != *v))
        .map(|(k, _)| k.clone())
        .collect();
    (added, removed, changed)
}

/// Services and routes added, removed and changed from `a` to `b`.
pub fn summary(a: &MeshPolicy, b: &MeshPolicy) -> Summary {
    let (services_added, services_removed, services_changed) = compare(
        &by_name(a.services(), |s| &s.name),
        &by_name(b.services(), |s| &s.name),
    );
    let (routes_added, routes_removed, routes_changed) = compare(
        &by_name(a.routes(), |r| &r.name),
        &by_name(b.routes(), |r| &r.name),
    );
    Summary {
        services_added,
        services_removed,
        services_changed,
        routes_added,
        routes_removed,
        routes_changed,
    }
}

/// Services and routes added, removed or changed between two policies (by name).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Services only in the new policy.
    pub services_added: Vec<String>,
    /// Services only in the old policy.
    pub services_removed: Vec<String>,
    /// Services in both, defined differently.
    pub services_changed: Vec<String>,
    /// Routes only in the new policy.
    pub routes_added: Vec<String>,
    /// Routes only in the old policy.
    pub routes_removed: Vec<String>,
    /// Routes in both, defined differently.
    pub routes_changed: Vec<String>,
}
