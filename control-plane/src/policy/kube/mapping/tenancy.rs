//! Tenancy of the policy resources: a resource governs only services of its own namespace,
//! and when two resources claim the same thing (a service's traffic policy or authorization, a
//! service's route name) the older one holds it, never the one whose name sorts first.
//!
//! Why: the resources are namespaced and RBAC is granted per namespace, so a namespace's
//! owner must not be able to change another namespace's service (a route in `aaa` hijacking
//! `orders.shop`'s traffic, an `allow` authorization replacing `shop`'s `deny`), and a
//! resource created later, by whoever may create resources in the same namespace, must not
//! displace the one in force by picking a name that sorts first.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{Kind, ObjectKey, Rejection};

/// The reason of a resource naming another namespace's service.
pub const CROSS_NAMESPACE: &str = "CrossNamespace";
/// The reason of a resource that lost (or tied) a claim to another.
pub const CONFLICTED: &str = "Conflicted";

/// `None` when `service` (qualified, `<name>.<namespace>`) is a service of `namespace`; else
/// why a resource in `namespace` may not name it.
pub(crate) fn foreign(kind: Kind, namespace: &str, service: &str) -> Option<Rejection> {
    match service.split_once('.') {
        Some((_, ns)) if ns == namespace => None,
        _ => Some(Rejection {
            reason: CROSS_NAMESPACE,
            message: format!(
                "spec.service: {service:?} is not a service of namespace {namespace}: a {kind} \
                 governs only services of its own namespace (callers in `from` may be of any \
                 namespace)"
            ),
        }),
    }
}

/// One resource's claim: `what` (e.g. `service "orders.shop"`) held by `key`, created at
/// `created`.
pub(crate) struct Claim<'a> {
    pub(crate) key: &'a ObjectKey,
    /// The field that claims it (`spec.service`).
    pub(crate) field: &'static str,
    pub(crate) created: Option<&'a Time>,
    pub(crate) what: String,
}

/// The claims that are refused: of the resources claiming the same thing, the one created
/// strictly first keeps it and every other is refused naming it; when the oldest are created
/// in the same second (the API's resolution) or carry no creation time, all of them are
/// refused, as no rule other than a name would pick one.
pub(crate) fn contest(claims: Vec<Claim<'_>>) -> HashMap<ObjectKey, Rejection> {
    let mut by_what: BTreeMap<String, Vec<Claim<'_>>> = BTreeMap::new();
    for c in claims {
        by_what.entry(c.what.clone()).or_default().push(c);
    }
    let mut refused = HashMap::new();
    for (what, mut claims) in by_what {
        if claims.len() < 2 {
            continue;
        }
        // No creation time sorts last: such a resource never displaces one that has one.
        claims.sort_by(|a, b| {
            (a.created.is_none(), a.created)
                .cmp(&(b.created.is_none(), b.created))
                .then_with(|| a.key.cmp(b.key))
        });
        let first = &claims[0];
        let tied: Vec<&Claim<'_>> = claims
            .iter()
            .take_while(|c| c.created == first.created)
            .collect();
        if tied.len() > 1 {
            for c in &tied {
                let others = names(tied.iter().filter(|o| o.key != c.key).map(|o| o.key));
                refused.insert(
                    c.key.clone(),
                    Rejection {
                        reason: CONFLICTED,
                        message: format!(
                            "{}: {what} is also claimed by {others}, created at the same time; \
                             none applies until all but one are deleted",
                            c.field
                        ),
                    },
                );
            }
        }
        let holder = (tied.len() == 1).then_some(first);
        for c in claims.iter().skip(tied.len()) {
            let message = match holder {
                Some(h) => format!(
                    "{}: {what} is already held by {} (created {}, before this one); the \
                     oldest applies",
                    c.field,
                    h.key,
                    h.created.map_or_else(String::new, |t| t.0.to_string())
                ),
                None => format!(
                    "{}: {what} is claimed by {} as well, created before this one",
                    c.field,
                    names(tied.iter().map(|o| o.key))
                ),
            };
            refused.insert(
                c.key.clone(),
                Rejection {
                    reason: CONFLICTED,
                    message,
                },
            );
        }
    }
    refused
}

fn names<'a>(keys: impl Iterator<Item = &'a ObjectKey>) -> String {
    keys.map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ObjectKey {
        ObjectKey {
            kind: Kind::AuthorizationPolicy,
            namespace: "shop".into(),
            name: name.into(),
        }
    }

    fn at(s: &str) -> Time {
        Time(s.parse().expect("timestamp"))
    }

    #[test]
    fn only_own_namespace_services() {
        assert!(foreign(Kind::MeshRoute, "shop", "orders.shop").is_none());
        let r = foreign(Kind::MeshRoute, "aaa", "orders.shop").expect("foreign");
        assert_eq!(r.reason, CROSS_NAMESPACE);
        assert!(foreign(Kind::MeshRoute, "shop", "orders.shop.svc").is_some());
        assert!(foreign(Kind::MeshRoute, "shop", "orders").is_some());
    }

    #[test]
    fn the_oldest_holds_and_a_tie_refuses_all() {
        let (a, b, c) = (key("a"), key("b"), key("c"));
        let (t1, t2) = (at("2026-01-01T00:00:00Z"), at("2026-01-02T00:00:00Z"));
        let claim = |key, created| Claim {
            key,
            field: "spec.service",
            created,
            what: "service \"orders.shop\"".into(),
        };
        // `a` sorts first by name but is newer: `b` holds.
        let refused = contest(vec![claim(&a, Some(&t2)), claim(&b, Some(&t1))]);
        assert!(refused.contains_key(&a) && !refused.contains_key(&b));
        assert!(refused[&a].message.contains("shop/b"), "{:?}", refused[&a]);
        // Same second: nobody holds.
        let refused = contest(vec![
            claim(&a, Some(&t1)),
            claim(&b, Some(&t1)),
            claim(&c, Some(&t2)),
        ]);
        assert_eq!(refused.len(), 3);
        // No creation time never wins.
        let refused = contest(vec![claim(&a, None), claim(&b, Some(&t2))]);
        assert!(refused.contains_key(&a) && !refused.contains_key(&b));
    }
}
