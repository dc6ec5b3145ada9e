//! The control-plane client: with `control_plane` set, the sidecar holds one `weft.control.v1`
//! stream to the control plane and takes its policy from it.
//!
//! It runs on the control thread, never on traffic workers. Each session connects over mutual
//! TLS (the sidecar's workload certificate; the control plane must prove the configured
//! identity), says `Hello` (service, inbound address, `service.labels`), and for each
//! `Snapshot` validates and builds the new config off the hot path, swaps it in and answers
//! `Ack`, or answers `Nack` with the reason and keeps the config in force. A lost stream is
//! retried with jittered exponential backoff; traffic is served meanwhile with the last good
//! config. A renewed certificate's expiry is reported (`Certificate`); on SIGTERM the stream
//! says `Draining` so the endpoint is withdrawn at once, and is not reopened. The snapshot's
//! trust bundle replaces `tls.trust_bundle` when its roots differ
//! ([`crate::identity::trust::take_trust_bundle`]). A gateway with `--gateway-name` names its
//! Gateway in `Hello` and hands each `GatewayConfig` to its reloader
//! ([`crate::gateway::remote`]), answering for it as resource `gateway/<namespace>/<name>`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use weft_api::v1::control_plane_client::ControlPlaneClient;
use weft_api::v1::{
    control_message, sidecar_message, Ack, Certificate, Draining, Hello, Nack, SidecarMessage,
    Subscribe,
};

use crate::drain::Drain;
use crate::gateway::remote::{GatewayFeed, RESOURCE_PREFIX as GATEWAY_PREFIX};
use crate::store::Store;
use weft_policy::wire::PolicySnapshot;
use weft_policy::ControlPlane;

use crate::control::channel::{backoff, connect};
use crate::control::endpoints::{CAPABILITY, RESOURCE_PREFIX};

/// A session that lasted this long resets the backoff.
const STABLE: Duration = Duration::from_secs(10);
/// Follow the control plane (on the control thread's runtime) until the sidecar drains.
///
/// `renewed` carries the expiry of each renewed certificate, reported on the stream as
/// `Certificate`; once `drain` starts, the control plane is told (`Draining`) and no new
/// stream is opened.
pub async fn run(
    store: Arc<Store>,
    cp: ControlPlane,
    mut renewed: watch::Receiver<SystemTime>,
    drain: Arc<Drain>,
    gateway: Option<Arc<GatewayFeed>>,
) {
    let mut attempt = 0u32;
    loop {
        if drain.is_draining() {
            return;
        }
        let started = Instant::now();
        match session(&store, &cp, &mut renewed, &drain, gateway.as_ref()).await {
            Ok(()) if drain.is_draining() => return,
            Ok(()) => log::warn!("control plane {} closed the stream", cp.address),
            Err(e) => log::warn!("control plane {}: {e:#}", cp.address),
        }
        store.set_control_plane_connected(false);
        if started.elapsed() >= STABLE {
            attempt = 0;
        }
        let delay = backoff(attempt);
        attempt = attempt.saturating_add(1).min(16);
        log::info!(
            "reconnecting to the control plane in {} ms",
            delay.as_millis()
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = drain.draining() => return,
        }
    }
}

/// One stream to the control plane: `Hello`, then snapshots answered with `Ack`/`Nack`,
/// renewed certificates reported, and `Draining` once the sidecar drains.
// Long on purpose: the stream's whole conversation in one `select!` loop, which is easier to
// check against control.proto whole than split across functions sharing its state.
pub(crate) async fn session(
    store: &Arc<Store>,
    cp: &ControlPlane,
    renewed: &mut watch::Receiver<SystemTime>,
    drain: &Arc<Drain>,
    gateway: Option<&Arc<GatewayFeed>>,
) -> anyhow::Result<()> {
    let snap = store.load();
    // Where this sidecar is bound (a configured port 0 is the kernel's choice by now).
    let listening = store.listening();
    let channel = connect(cp, (*snap.tls.tcp_client).clone()).await?;
    let mut client = ControlPlaneClient::new(channel);
    let (tx, rx) = mpsc::channel::<SidecarMessage>(16);
    let hello = Hello {
        service: snap.own.name.clone(),
        endpoint_address: listening.inbound.to_string(),
        labels: snap
            .own
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        cert_not_after_unix: unix_secs(snap.tls.not_after),
        admin_address: listening.admin.to_string(),
        // Endpoints by service ([`crate::control::endpoints`]); an older control plane
        // ignores both and sends full snapshots.
        capabilities: vec![CAPABILITY.to_owned()],
        subscribe: {
            store
                .endpoints
                .want(store.control_plane_services_with_endpoints());
            store.endpoints.for_hello()
        },
        gateway: gateway.map(|g| g.name.clone()).unwrap_or_default(),
    };
    drop(snap);
    tx.send(SidecarMessage {
        kind: Some(sidecar_message::Kind::Hello(hello)),
    })
    .await
    .context("send Hello")?;
    // Held while the stream is open, so a drain waits for this session to say `Draining`.
    let hold = drain.hold_exit();
    let mut inbound = client
        .stream(ReceiverStream::new(rx))
        .await
        .context("open the stream")?
        .into_inner();
    store.set_control_plane_connected(true);
    log::info!("connected to the control plane {}", cp.address);
    // The Hello carried the current expiry.
    renewed.borrow_and_update();
    loop {
        let msg = tokio::select! {
            m = inbound.message() => m.context("receive")?,
            Ok(()) = renewed.changed() => {
                let not_after = unix_secs(*renewed.borrow_and_update());
                tx.send(SidecarMessage {
                    kind: Some(sidecar_message::Kind::Certificate(Certificate { not_after_unix: not_after })),
                })
                .await
                .context("send Certificate")?;
                continue;
            }
            services = store.endpoints.unsent() => {
                tx.send(SidecarMessage {
                    kind: Some(sidecar_message::Kind::Subscribe(Subscribe { services })),
                })
                .await
                .context("send Subscribe")?;
                continue;
            }
            () = drain.draining() => {
                announce_drain(&tx, &mut inbound).await;
                drop(hold);
                return Ok(());
            }
        };
        let Some(msg) = msg else { break };
        let Some(kind) = msg.kind else { continue };
        let reply = match kind {
            control_message::Kind::Gateway(g) => answer_gateway(store, gateway, g).await,
            control_message::Kind::Snapshot(s) => answer(store, SidecarUpdate::Snapshot(s)).await,
            control_message::Kind::Endpoints(e) => answer(store, SidecarUpdate::Endpoints(e)).await,
        };
        tx.send(SidecarMessage { kind: Some(reply) })
            .await
            .context("send Ack/Nack")?;
    }
    Ok(())
}

/// Follow the control plane as [`run`] does until `until` fires (or its sender is gone): a
/// gateway's first start waits so for its Gateway's first config (with `feed`, which names
/// the Gateway) or for the first snapshot ([`crate::gateway::first`]).
pub async fn until(
    store: &Arc<Store>,
    cp: &ControlPlane,
    feed: Option<Arc<GatewayFeed>>,
    mut until: tokio::sync::oneshot::Receiver<()>,
) {
    // Kept alive, so the session's renewal branch waits instead of firing at once.
    let (_renewals, mut renewed) = watch::channel(SystemTime::now());
    let drain = Arc::new(Drain::default());
    let mut attempt = 0u32;
    loop {
        tokio::select! {
            r = session(store, cp, &mut renewed, &drain, feed.as_ref()) => match r {
                Ok(()) => log::warn!("control plane {} closed the stream", cp.address),
                Err(e) => log::warn!("control plane {}: {e:#}", cp.address),
            },
            _ = &mut until => return,
        }
        let delay = backoff(attempt);
        attempt = attempt.saturating_add(1).min(16);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = &mut until => return,
        }
    }
}

/// What the control plane puts in force in the sidecar itself (a Gateway's config goes to the
/// gateway's reloader instead, [`answer_gateway`]).
enum SidecarUpdate {
    /// A policy snapshot.
    Snapshot(weft_api::v1::Snapshot),
    /// One service's endpoints.
    Endpoints(weft_api::v1::Endpoints),
}

/// Apply a snapshot or a service's endpoints (off the control thread) and say `Ack` or `Nack`
/// for that resource.
async fn answer(store: &Arc<Store>, update: SidecarUpdate) -> sidecar_message::Kind {
    let (what, version, resource) = match &update {
        SidecarUpdate::Snapshot(s) => ("snapshot", s.version.clone(), String::new()),
        SidecarUpdate::Endpoints(e) => (
            "endpoints",
            e.version.clone(),
            format!("{RESOURCE_PREFIX}{}", e.service),
        ),
    };
    let store2 = store.clone();
    let result = tokio::task::spawn_blocking(move || match &update {
        SidecarUpdate::Snapshot(s) => apply(&store2, s),
        SidecarUpdate::Endpoints(e) => apply_endpoints(&store2, e),
    })
    .await
    .map_err(|e| format!("apply task failed: {e}"))
    .and_then(|r| r)
    .map(|v| log::info!("control-plane {what} {resource} {version} applied: config v{v}"))
    .inspect_err(|reason| {
        log::error!("control-plane {what} {resource} {version} refused; keeping the config in force:\n{reason}");
    });
    verdict(store, version, resource, result)
}

/// Hand a Gateway's config to the gateway's reloader and say `Ack` or `Nack` for it (a proxy
/// serving no Gateway refuses it).
async fn answer_gateway(
    store: &Store,
    gateway: Option<&Arc<GatewayFeed>>,
    g: weft_api::v1::GatewayConfig,
) -> sidecar_message::Kind {
    let (version, resource) = (g.version.clone(), format!("{GATEWAY_PREFIX}{}", g.gateway));
    let result = match gateway {
        Some(feed) => feed.apply(g).await,
        None => Err("this proxy serves no Gateway (no --gateway-name)".to_owned()),
    };
    verdict(store, version, resource, result)
}

/// The answer for `resource` at `version` once it was put in force (`Ack`) or refused
/// (`Nack` with the reason), counted in `control_plane_snapshots` by result.
fn verdict(
    store: &Store,
    version: String,
    resource: String,
    result: Result<(), String>,
) -> sidecar_message::Kind {
    let counter = &store.metrics.control_plane_snapshots;
    match result {
        Ok(()) => {
            counter.with_label_values(&["ack"]).inc();
            sidecar_message::Kind::Ack(Ack { version, resource })
        }
        Err(reason) => {
            counter.with_label_values(&["nack"]).inc();
            sidecar_message::Kind::Nack(Nack {
                version,
                reason,
                resource,
            })
        }
    }
}

/// How long a draining sidecar waits for the control plane to take its `Draining` in.
const DRAIN_ANNOUNCE_LIMIT: Duration = Duration::from_secs(1);

/// Tell the control plane this sidecar is draining, so it withdraws the endpoint at once
/// instead of after its grace period; returns once the control plane ends the stream (it does
/// once it has withdrawn the endpoint) or [`DRAIN_ANNOUNCE_LIMIT`] passes. The caller's exit
/// hold keeps the process alive until then.
async fn announce_drain(
    tx: &mpsc::Sender<SidecarMessage>,
    inbound: &mut tonic::Streaming<weft_api::v1::ControlMessage>,
) {
    let sent = tx
        .send(SidecarMessage {
            kind: Some(sidecar_message::Kind::Draining(Draining {})),
        })
        .await;
    if sent.is_err() {
        return;
    }
    log::info!("draining: told the control plane to withdraw this endpoint");
    let _ = tokio::time::timeout(DRAIN_ANNOUNCE_LIMIT, async {
        while let Ok(Some(_)) = inbound.message().await {}
    })
    .await;
}

/// Seconds since the Unix epoch (0 before it).
pub(crate) fn unix_secs(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Decode and apply one snapshot; the error is the NACK reason.
fn apply(store: &Store, s: &weft_api::v1::Snapshot) -> Result<u64, String> {
    crate::identity::trust::take_trust_bundle(store, &s.trust_bundle_pem)?;
    // Forward compatible: a newer control plane's fields are ignored (and counted), not a NACK.
    let (mut policy, ignored): (PolicySnapshot, _) =
        weft_policy::lenient::from_json(&s.policy_json)
            .map_err(|e| format!("undecodable policy: {e}"))?;
    if !ignored.is_empty() {
        store
            .metrics
            .control_plane_unknown_fields
            .inc_by(ignored.len() as u64);
        log::info!(
            "control-plane snapshot {}: ignoring fields this sidecar does not know: {}",
            s.version,
            ignored.join(", ")
        );
    }
    policy.version = s.version.clone();
    let merged = store.endpoints.merged(&policy, s.endpoints_separate);
    let v = store.apply_policy(merged).map_err(|e| e.to_string())?;
    store
        .endpoints
        .snapshot_applied(policy, s.endpoints_separate);
    if let Err(e) = store.persist_policy() {
        log::warn!("cannot keep the control-plane snapshot: {e}");
    }
    Ok(v)
}

/// Put one service's endpoints in force (merged into the last good snapshot); the error is
/// the NACK reason, and then that service's previous endpoints stay.
fn apply_endpoints(store: &Store, e: &weft_api::v1::Endpoints) -> Result<u64, String> {
    let list: Vec<weft_policy::wire::Endpoint> = e
        .endpoints
        .iter()
        .map(|x| weft_policy::wire::Endpoint {
            address: x.address.clone(),
            labels: x.labels.clone().into_iter().collect(),
        })
        .collect();
    let Some(merged) = store.endpoints.merged_with(&e.service, &list) else {
        // Before the first snapshot (never sent so by the control plane): kept for it.
        store
            .endpoints
            .endpoints_applied(&e.service, &e.version, list);
        return Ok(store.load().version);
    };
    let v = store.apply_policy(merged).map_err(|e| e.to_string())?;
    store
        .endpoints
        .endpoints_applied(&e.service, &e.version, list);
    if let Err(e) = store.persist_policy() {
        log::warn!("cannot keep the control-plane snapshot: {e}");
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_control_planes_fields_are_ignored_counted_and_acked() {
        let (_dir, store, ca) = crate::store::test_support::store_in_control_plane_mode(31);
        let policy = br#"{"services": [{"name": "users", "identity": "spiffe://weft.local/ns/default/sa/users",
            "endpoints": [{"address": "127.0.0.1:7", "zone": "b"}], "slow_start": "30s"}], "compression": "zstd"}"#;
        let snapshot = weft_api::v1::Snapshot {
            version: "p2".to_owned(),
            policy_json: policy.to_vec().into(),
            trust_bundle_pem: ca.cert_pem().to_owned(),
            endpoints_separate: false,
        };
        let before = store.load().version;
        assert_eq!(apply(&store, &snapshot), Ok(before + 1), "ACKed");
        assert_eq!(store.metrics.control_plane_unknown_fields.get(), 3);
        assert!(
            store.load().routes.for_host("users").is_some(),
            "the policy is in force"
        );
        assert_eq!(store.control_plane_version().as_deref(), Some("p2"));
        // A field of the right name with a value of the wrong kind is still refused.
        let bad = weft_api::v1::Snapshot {
            policy_json: br#"{"services": [{"name": 7}]}"#.to_vec().into(),
            ..snapshot
        };
        assert!(apply(&store, &bad)
            .expect_err("NACK")
            .contains("undecodable policy"));
    }

    /// A TCP service's port is bound as soon as the snapshot naming it is in force, while its
    /// endpoints come after in their own message: a connection in between waits for them
    /// instead of being closed for want of an endpoint (CI once saw an empty echo there).
    #[tokio::test(start_paused = true)]
    async fn a_tcp_connection_waits_for_endpoints_on_their_way() {
        let (_dir, store, ca) = crate::store::test_support::store_in_control_plane_mode(32);
        let store = Arc::new(store);
        let policy =
            br#"{"services": [{"name": "db", "identity": "spiffe://weft.local/ns/default/sa/db",
            "protocol": "tcp", "port": 15999}]}"#;
        let snapshot = weft_api::v1::Snapshot {
            version: "p1".to_owned(),
            policy_json: policy.to_vec().into(),
            trust_bundle_pem: ca.cert_pem().to_owned(),
            endpoints_separate: true,
        };
        apply(&store, &snapshot).expect("ACK");
        let snap = store.load();
        let dest = snap.routes.for_port(15999).expect("db's port").clone();
        assert!(dest.endpoints.is_empty(), "no endpoints yet");
        assert_eq!(
            store.endpoints.unsent().await,
            vec!["db".to_owned()],
            "subscribed to at once"
        );

        let t0 = tokio::time::Instant::now();
        let waiting = {
            let store = store.clone();
            tokio::spawn(async move { crate::tcp::with_endpoints(&store, snap, dest).await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !waiting.is_finished(),
            "waits while the endpoints are on their way"
        );
        let endpoints = weft_api::v1::Endpoints {
            service: "db".to_owned(),
            version: "e1".to_owned(),
            endpoints: vec![weft_api::v1::Endpoint {
                address: "127.0.0.1:7".to_owned(),
                ..Default::default()
            }],
        };
        apply_endpoints(&store, &endpoints).expect("ACK");
        let (_, dest) = waiting.await.expect("no panic");
        assert_eq!(dest.endpoints, vec!["127.0.0.1:7".parse().expect("addr")]);
        assert_eq!(
            t0.elapsed(),
            Duration::from_millis(200),
            "went on when they arrived, not at the bound"
        );

        // Received, even empty: the next connection never waits.
        let empty = weft_api::v1::Endpoints {
            version: "e2".to_owned(),
            endpoints: vec![],
            ..endpoints
        };
        apply_endpoints(&store, &empty).expect("ACK");
        let snap = store.load();
        let dest = snap.routes.for_port(15999).expect("db's port").clone();
        let t0 = tokio::time::Instant::now();
        let (_, dest) = crate::tcp::with_endpoints(&store, snap, dest).await;
        assert!(dest.endpoints.is_empty());
        assert_eq!(
            t0.elapsed(),
            Duration::ZERO,
            "no wait for a known empty list"
        );
    }
}
