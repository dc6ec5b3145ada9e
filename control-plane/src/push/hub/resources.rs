//! Endpoints as per-service resources ("endpoints-by-service"), for the sidecars that
//! announce the capability: their snapshot lists the services without endpoints, and each
//! service they subscribed to comes as an `Endpoints` message of its own, with its own
//! version, ACK and NACK. A pod added to service A then costs one `Endpoints` of A to each
//! sidecar subscribed to A, and nothing to anyone else; a full snapshot would cost every
//! sidecar of the mesh a list of every endpoint.
//!
//! Who gets what: a sidecar subscribes to a service when it first calls it (the sidecar's
//! request waits, bounded, for the endpoints), and names its subscriptions again in `Hello`
//! after a reconnect. The policy cannot say in advance whom a sidecar will call (every
//! service may call every other unless a route's `from` says otherwise), so the sidecar
//! tells.
//!
//! Each push builds and encodes a service's endpoints once, only for the services someone
//! subscribed to, and shares the encoded message (`Bytes`) between all its subscribers.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use weft_api::v1::{control_message, ControlMessage, Endpoint as WireEndpoint, Endpoints};
use weft_policy::wire::Endpoint;

use super::{HubState, SidecarEntry};
use crate::policy::mesh::MeshPolicy;
use crate::push::slot::{encode_framed, Outgoing};

/// The capability a sidecar announces in `Hello.capabilities` for this mode.
pub const ENDPOINTS_BY_SERVICE: &str = "endpoints-by-service";
/// The prefix of an endpoints resource's name in `Ack.resource` / `Nack.resource`.
pub const RESOURCE_PREFIX: &str = "endpoints/";
/// Most subscriptions one stream may hold: a sidecar subscribes only to services its
/// snapshot lists, so this bounds a hostile one, not a real one.
pub const MAX_SUBSCRIPTIONS: usize = 4096;

/// What one sidecar was sent of one resource and what it answered.
#[derive(Debug, Default, Clone)]
pub(crate) struct ResourceState {
    pub(crate) sent: Option<String>,
    pub(crate) sent_at: Option<Instant>,
    pub(crate) acked: Option<String>,
    pub(crate) nack: Option<(String, String)>,
}

/// A service's endpoints as sent: version and the encoded message.
pub(super) struct BuiltEndpoints {
    version: String,
    msg: Outgoing,
}

/// Messages and bytes pushed, by kind (`weft_cp_push_messages_total`, `..._bytes_total`).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Sent {
    pub(crate) snapshot_messages: u64,
    pub(crate) snapshot_bytes: u64,
    pub(crate) endpoints_messages: u64,
    pub(crate) endpoints_bytes: u64,
}

/// The endpoints of `service`: those the policy lists, then those registered (addresses
/// already listed skipped), as a full snapshot would list them.
fn endpoints_of(
    policy: &MeshPolicy,
    service: &str,
    registered: &BTreeMap<String, Vec<Endpoint>>,
) -> Vec<Endpoint> {
    let mut out: Vec<Endpoint> = policy.static_endpoints(service).to_vec();
    for e in registered.get(service).into_iter().flatten() {
        if !out.iter().any(|x| x.address == e.address) {
            out.push(e.clone());
        }
    }
    out
}

/// Build (and encode once) the `Endpoints` message of `service`; `None` for a service the
/// policy does not list (a subscription to it waits for a policy that does).
pub(super) fn build_endpoints(
    policy: &MeshPolicy,
    service: &str,
    registered: &BTreeMap<String, Vec<Endpoint>>,
) -> Option<BuiltEndpoints> {
    if !policy.service_names().contains(service) {
        return None;
    }
    let list = endpoints_of(policy, service, registered);
    let version = version_of(service, &list);
    let msg = ControlMessage {
        kind: Some(control_message::Kind::Endpoints(Endpoints {
            service: service.to_owned(),
            version: version.clone(),
            endpoints: list
                .into_iter()
                .map(|e| WireEndpoint {
                    address: e.address,
                    labels: e.labels.into_iter().collect(),
                })
                .collect(),
        })),
    };
    let framed = encode_framed(&msg)?;
    Some(BuiltEndpoints {
        version,
        msg: Outgoing::Encoded(framed),
    })
}

/// A content hash of a service's endpoint list.
fn version_of(service: &str, list: &[Endpoint]) -> String {
    let bytes = serde_json::to_vec(&(service, list)).unwrap_or_default();
    let d = ring::digest::digest(&ring::digest::SHA256, &bytes);
    d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Send a delta-mode sidecar each subscribed service's endpoints whose version differs from
/// the one last sent; each service built once per push (`built`). Returns (messages, bytes).
pub(super) fn push_endpoints(
    s: &mut SidecarEntry,
    policy: &MeshPolicy,
    registered: &BTreeMap<String, Vec<Endpoint>>,
    built: &mut HashMap<String, Option<BuiltEndpoints>>,
) -> (u64, u64) {
    let Some(tx) = &s.tx else { return (0, 0) };
    let (mut messages, mut bytes) = (0, 0);
    for (service, state) in &mut s.subscribed {
        let b = built
            .entry(service.clone())
            .or_insert_with(|| build_endpoints(policy, service, registered));
        let Some(b) = b else { continue };
        if state.sent.as_deref() == Some(b.version.as_str()) {
            continue;
        }
        let key = format!("{RESOURCE_PREFIX}{service}");
        if tx.put(&key, b.msg.clone()) {
            state.sent = Some(b.version.clone());
            state.sent_at = Some(Instant::now());
            messages += 1;
            bytes += b.msg.wire_len() as u64;
        }
    }
    (messages, bytes)
}

impl HubState {
    /// Add `services` to sidecar `id`'s subscriptions (up to [`MAX_SUBSCRIPTIONS`]). Returns
    /// whether any is new (then a push is due); `None` when `id` is not registered.
    pub(crate) fn subscribe(&mut self, id: u64, services: Vec<String>) -> Option<bool> {
        let s = self.sidecars.get_mut(&id)?;
        let mut added = false;
        for name in services {
            if s.subscribed.len() >= MAX_SUBSCRIPTIONS && !s.subscribed.contains_key(&name) {
                log::warn!(
                    "sidecar {} at {}: more than {MAX_SUBSCRIPTIONS} subscriptions; {name:?} ignored",
                    s.service,
                    s.endpoint
                );
                continue;
            }
            if name.is_empty() || name.len() > 253 {
                continue;
            }
            s.subscribed.entry(name).or_insert_with(|| {
                added = true;
                ResourceState::default()
            });
        }
        Some(added)
    }
}

impl HubState {
    /// The subscription `resource` (`endpoints/<service>`) of sidecar `id`, if it has it.
    fn resource_mut(&mut self, id: u64, resource: &str) -> Option<&mut ResourceState> {
        let s = self.sidecars.get_mut(&id)?;
        if let Some(name) = resource.strip_prefix(super::GATEWAY_PREFIX) {
            return s
                .gateway
                .as_mut()
                .filter(|g| g.name == name)
                .map(|g| &mut g.state);
        }
        let service = resource.strip_prefix(RESOURCE_PREFIX)?;
        s.subscribed.get_mut(service)
    }

    /// Sidecar `id` ACKed `version` of `resource`. False when `id` is not registered; an
    /// ACK of a resource it does not hold is logged and ignored.
    pub(crate) fn ack_resource(&mut self, id: u64, resource: &str, version: String) -> bool {
        if !self.sidecars.contains_key(&id) {
            return false;
        }
        let mut took = None;
        match self.resource_mut(id, resource) {
            Some(r) => {
                if r.sent.as_deref() == Some(version.as_str()) {
                    took = r.sent_at.take().map(|at| at.elapsed());
                }
                r.acked = Some(version);
            }
            None => log::debug!("sidecar stream {id} ACKed {resource:?}, which it was not sent"),
        }
        if let Some(d) = took {
            self.push_duration.observe(d);
        }
        true
    }

    /// Sidecar `id` NACKed `version` of `resource` for `reason`: recorded for that resource
    /// only (its other resources and its snapshot stand). False when `id` is not registered.
    pub(crate) fn nack_resource(
        &mut self,
        id: u64,
        resource: &str,
        version: String,
        reason: String,
    ) -> bool {
        if !self.sidecars.contains_key(&id) {
            return false;
        }
        log::warn!("sidecar stream {id} NACKed {resource} {version}: {reason}");
        if let Some(r) = self.resource_mut(id, resource) {
            r.nack = Some((version, reason));
        }
        true
    }
}

impl super::Hub {
    /// Sidecar stream `id` subscribes to `services`' endpoints; a push is asked for when one
    /// is new. False when `id` is not registered.
    pub(crate) fn subscribe(&self, id: u64, services: Vec<String>) -> bool {
        let added = self.lock().subscribe(id, services);
        if added == Some(true) {
            self.request_push();
        }
        added.is_some()
    }
}

#[cfg(test)]
#[path = "resources_tests.rs"]
mod tests;
