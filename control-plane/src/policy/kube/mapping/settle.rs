//! Settling the mapped policy: what the policy crate's validation finds wrong is left out
//! item by item, each with a verdict naming its resource, until the rest is valid.

use std::collections::BTreeMap;

use weft_policy::wire::MeshFile;
use weft_policy::FieldError;

use super::{ObjectKey, Rejection, Verdict};

/// Validate `mesh` and leave out every item an error names (each section's items parallel
/// to its keys), with a verdict, until what is left is valid. Removing an item can only make
/// others fail that named it (a route to a rejected service), which the next round catches,
/// so this ends within one round per item.
pub(super) fn settle(
    mesh: &mut MeshFile,
    services: &mut Vec<ObjectKey>,
    routes: &mut Vec<ObjectKey>,
    authz: &mut Vec<ObjectKey>,
    verdicts: &mut Vec<Verdict>,
) {
    let rounds = mesh.services.len() + mesh.routes.len() + mesh.authorization.len() + 1;
    for _ in 0..rounds {
        let Err(errors) = weft_policy::validate_mesh_dynamic(mesh.clone()) else {
            return;
        };
        // Section and index to the errors naming that item.
        let mut by_item: BTreeMap<(&'static str, usize), Vec<FieldError>> = BTreeMap::new();
        for e in errors {
            match item_of(&e.field) {
                Some(item) => by_item.entry(item).or_default().push(e),
                None => log::error!("policy error naming no resource: {e}"),
            }
        }
        if by_item.is_empty() {
            // Nothing to leave out; the source reports the policy as invalid when it builds
            // it, and the last good policy stays.
            return;
        }
        // Highest index first, so removing one leaves the other indexes in place.
        for ((section, index), errs) in by_item.into_iter().rev() {
            let (keys, len) = match section {
                "services" => (&mut *services, mesh.services.len()),
                "routes" => (&mut *routes, mesh.routes.len()),
                _ => (&mut *authz, mesh.authorization.len()),
            };
            if index >= len || index >= keys.len() {
                continue;
            }
            match section {
                "services" => drop(mesh.services.remove(index)),
                "routes" => drop(mesh.routes.remove(index)),
                _ => drop(mesh.authorization.remove(index)),
            }
            let key = keys.remove(index);
            verdicts.push(Verdict {
                key,
                generation: None,
                result: Err(invalid(&errs, section)),
            });
        }
    }
}

/// `("routes", 3)` for `routes[3].match`.
fn item_of(field: &str) -> Option<(&'static str, usize)> {
    let (section, rest) = field.split_once('[')?;
    let section = match section {
        "services" => "services",
        "routes" => "routes",
        "authorization" => "authorization",
        _ => return None,
    };
    let index = rest.split_once(']')?.0.parse().ok()?;
    Some((section, index))
}

/// An `Invalid` rejection from field errors of one item: `routes[3].match.path` reads
/// `spec.match.path`, as does a TrafficPolicy's `services[0].retry_budget` (section
/// `traffic`: `spec.retry_budget`); a Service's own fields have no `spec.` (`port`).
pub(super) fn invalid(errors: &[FieldError], section: &str) -> Rejection {
    let message = errors
        .iter()
        .map(|e| {
            let tail = e.field.split_once(']').map_or(e.field.as_str(), |(_, t)| t);
            let field = match section {
                "services" => tail.trim_start_matches('.').to_owned(),
                _ => format!("spec{tail}"),
            };
            if field.is_empty() {
                e.reason.clone()
            } else {
                format!("{field}: {}", e.reason)
            }
        })
        .collect::<Vec<_>>()
        .join("; ");
    Rejection {
        reason: "Invalid",
        message,
    }
}
