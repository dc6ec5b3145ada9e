//! The push state: the policy in force, every sidecar stream (live or in its grace period),
//! what each was sent and what it answered, and the control plane's metrics.
//!
//! Each sidecar gets [`MeshPolicy::snapshot_with_endpoints`] for its service, and again whenever
//! that snapshot's version changes (policy change or endpoint change).
//!
//! A push builds each service's snapshot and its JSON once and hands the same bytes to all of
//! that service's sidecars. Registrations and withdrawals do not push themselves: they ask the
//! push task ([`Hub::run_pusher`]) for a push, and requests that arrive while it pushes (a
//! connect storm) are served together by its next round, at most every
//! [`PUSH_MIN_INTERVAL`]. Each sidecar holds one snapshot slot, not a queue: a sidecar that
//! has not yet taken a snapshot when a newer one is pushed gets only the newer one; the stream
//! sends it without copying the JSON (`push_stream`).
//!
//! The hub owns its state: the streams (`grpc`) register, ACK, NACK, report certificates and
//! withdraw through its methods here; the push rounds are in `pusher`, the metrics and status
//! documents in `metrics`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;
use weft_certs::Identity;

use crate::policy::mesh::{MeshPolicy, PolicyErrors};
use crate::policy::source::{LastGood, Update};
use crate::push::join::{check_service, JoinError, PodDirectory};
pub(crate) use crate::push::slot::Slot as SnapshotSlot;

pub(crate) use gateways::gateway_name;
pub use gateways::GATEWAY_PREFIX;
use resources::{ResourceState, Sent};
pub use resources::{ENDPOINTS_BY_SERVICE, MAX_SUBSCRIPTIONS, RESOURCE_PREFIX};

use metrics::PushHistogram;
use pusher::push_changed;

mod gateways;
mod metrics;
mod pusher;
pub(crate) mod resources;

/// How long a disconnected sidecar's endpoint stays registered.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);
/// Shortest time between the starts of two push rounds of [`Hub::run_pusher`]: the requests
/// of a connect storm that arrive meanwhile are served by one round, while a lone request is
/// served at once.
pub const PUSH_MIN_INTERVAL: Duration = Duration::from_millis(5);
pub use metrics::PUSH_DURATION_BUCKETS;
/// Default of [`HubLimits::max_streams_per_identity`]: every replica of a service shares its
/// identity, so this is a bound on replicas per service account, far above any real one.
pub const DEFAULT_MAX_STREAMS_PER_IDENTITY: usize = 1024;
/// Default of [`HubLimits::max_snapshot_bytes`]: under the 4 MiB a sidecar's gRPC client
/// decodes by default, with room for the trust bundle and the endpoints registered later.
pub const DEFAULT_MAX_SNAPSHOT_BYTES: usize = 2 * 1024 * 1024;

/// What the hub bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubLimits {
    /// Live sidecar streams one SPIFFE identity may hold; the next `Hello` is refused with
    /// `RESOURCE_EXHAUSTED`.
    pub max_streams_per_identity: usize,
    /// Largest compiled snapshot (JSON) of any one service; a policy making a larger one is
    /// refused at load and the last good one stays.
    pub max_snapshot_bytes: usize,
}

impl Default for HubLimits {
    fn default() -> Self {
        HubLimits {
            max_streams_per_identity: DEFAULT_MAX_STREAMS_PER_IDENTITY,
            max_snapshot_bytes: DEFAULT_MAX_SNAPSHOT_BYTES,
        }
    }
}

/// One sidecar stream, live or within its grace period.
#[derive(Debug)]
struct SidecarEntry {
    service: String,
    identity: String,
    endpoint: String,
    /// The sidecar's admin address (metrics), if it reported a valid one.
    admin: Option<String>,
    labels: BTreeMap<String, String>,
    sent: Option<String>,
    /// When `sent` was sent; taken when the sidecar ACKs it.
    sent_at: Option<Instant>,
    acked: Option<String>,
    nack: Option<(String, String)>,
    connected: bool,
    since: SystemTime,
    /// Expiry of the certificate the sidecar says it serves with.
    cert_not_after: Option<SystemTime>,
    /// Where its messages go ([`crate::push::slot`]); `None` once disconnected.
    tx: Option<SnapshotSlot>,
    /// It announced "endpoints-by-service": its snapshots carry no endpoints, and the services
    /// in `subscribed` come as endpoints resources ([`resources`]).
    delta: bool,
    /// Its endpoints subscriptions, each with what was sent and answered.
    subscribed: BTreeMap<String, ResourceState>,
    /// Gateway mode: the Gateway it serves and what it was sent of its config.
    gateway: Option<gateways::GatewayWatch>,
}

/// What the hub's lock guards.
struct HubState {
    policy: LastGood,
    policy_error: Option<String>,
    sidecars: BTreeMap<u64, SidecarEntry>,
    next_id: u64,
    pushes: u64,
    rejected: u64,
    push_duration: PushHistogram,
    /// Messages and bytes pushed, by kind.
    sent: Sent,
    /// Whether registered sidecars' endpoints join their callers' snapshots: not on
    /// Kubernetes, where the EndpointSlices are the endpoints.
    registered_endpoints: bool,
    /// The Gateways' configs in force ([`Hub::follow_gateways`]).
    gateways: std::sync::Arc<crate::policy::kube::gateways::GatewayConfigs>,
}

/// The shared state of the push: the policy in force, every sidecar, and what each was sent.
pub struct Hub {
    state: Mutex<HubState>,
    trust_bundle_pem: String,
    trust_domain: String,
    grace: Duration,
    /// Certificates issued through `Certify`.
    certs_issued: AtomicU64,
    /// `Certify` requests refused (bad credential or CSR) or failed.
    certs_refused: AtomicU64,
    /// Wakes [`Hub::run_pusher`]; one stored permit stands for any number of requests.
    push_requested: Notify,
    /// Push rounds run by [`Hub::run_pusher`].
    push_rounds: AtomicU64,
    limits: HubLimits,
    /// On Kubernetes, the pods: who owns an endpoint's address. Then the EndpointSlices,
    /// which follow the pods' readiness, are the endpoints; a registration only opens the
    /// stream (see `pusher::registered`).
    pods: Option<std::sync::Arc<dyn PodDirectory>>,
}

impl Hub {
    /// A hub with `policy` in force and no sidecars yet.
    pub fn new(
        policy: MeshPolicy,
        trust_bundle_pem: String,
        trust_domain: String,
        grace: Duration,
    ) -> Self {
        Self {
            state: Mutex::new(HubState {
                policy: LastGood::new(policy),
                policy_error: None,
                sidecars: BTreeMap::new(),
                next_id: 1,
                pushes: 0,
                rejected: 0,
                push_duration: PushHistogram::default(),
                sent: Sent::default(),
                registered_endpoints: true,
                gateways: Default::default(),
            }),
            trust_bundle_pem,
            trust_domain,
            grace,
            certs_issued: AtomicU64::new(0),
            certs_refused: AtomicU64::new(0),
            push_requested: Notify::new(),
            push_rounds: AtomicU64::new(0),
            limits: HubLimits::default(),
            pods: None,
        }
    }

    /// This hub on Kubernetes: sidecars join by identity and their endpoints must be the
    /// addresses of their own pods, which `pods` knows ([`crate::push::join`]).
    pub fn on_kubernetes(mut self, pods: std::sync::Arc<dyn PodDirectory>) -> Self {
        self.pods = Some(pods);
        self.state
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .registered_endpoints = false;
        self
    }

    /// The pods, on Kubernetes.
    pub(crate) fn pods(&self) -> Option<&dyn PodDirectory> {
        self.pods.as_deref()
    }

    /// This hub with `limits` instead of the defaults.
    pub fn with_limits(mut self, limits: HubLimits) -> Self {
        self.limits = limits;
        self
    }

    /// `loaded`, or why it is refused: a service's compiled snapshot over
    /// [`HubLimits::max_snapshot_bytes`] (it would be refused by the sidecars, or cost every
    /// push that much per sidecar).
    fn bounded(
        &self,
        loaded: Result<MeshPolicy, PolicyErrors>,
    ) -> Result<MeshPolicy, PolicyErrors> {
        let policy = loaded?;
        self.check_snapshots(&policy)?;
        Ok(policy)
    }

    /// Whether every service's compiled snapshot of `policy` is within
    /// [`HubLimits::max_snapshot_bytes`], else which is not.
    pub fn check_snapshots(&self, policy: &MeshPolicy) -> Result<(), PolicyErrors> {
        let max = self.limits.max_snapshot_bytes;
        for s in policy.services() {
            let size = serde_json::to_vec(&policy.snapshot_for(&s.name)).map_or(0, |j| j.len());
            if size > max {
                let file = policy.files().first().cloned().unwrap_or_default();
                return Err(PolicyErrors::file(
                    file,
                    format!(
                        "the snapshot of service {:?} is {size} bytes, over the limit of {max} \
                         (--max-snapshot-bytes); nothing was changed",
                        s.name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Count one `Certify` answer: issued, or refused/failed.
    pub(crate) fn count_certify(&self, issued: bool) {
        let c = if issued {
            &self.certs_issued
        } else {
            &self.certs_refused
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take in a freshly loaded policy: push changed snapshots, or log and record the errors.
    pub fn update_policy(&self, loaded: Result<MeshPolicy, PolicyErrors>) {
        self.take_policy(loaded);
    }

    /// [`update_policy`](Self::update_policy), saying what it did, so the caller can record
    /// the change in history and the audit log.
    pub fn take_policy(&self, loaded: Result<MeshPolicy, PolicyErrors>) -> Update {
        let loaded = self.bounded(loaded);
        let mut st = self.lock();
        let update = st.policy.update(loaded);
        match &update {
            Update::Unchanged => {
                st.policy_error = None;
            }
            Update::Applied { from, to } => {
                st.policy_error = None;
                log::info!("policy {from} -> {to}: pushing changed snapshots");
                push_changed(&mut st, &self.trust_bundle_pem);
            }
            Update::Rejected(errors) => {
                for e in errors.iter() {
                    log::error!("policy rejected: {e}");
                }
                log::error!(
                    "policy change rejected; keeping version {}",
                    st.policy.current().version()
                );
                st.policy_error = Some(errors.to_string());
                st.rejected += 1;
            }
        }
        update
    }

    /// The policy in force.
    pub fn policy(&self) -> std::sync::Arc<MeshPolicy> {
        self.lock().policy.current().clone()
    }

    /// The trust domain a sidecar's certificate must be in.
    pub(crate) fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Register a sidecar stream whose endpoint checked out, and ask for a push: its endpoint
    /// joins its callers' snapshots, and its own snapshots go to `slot`. Refused when the
    /// certificate may not speak for the service under the policy in force
    /// ([`check_service`]). Returns the stream's id.
    pub(crate) fn register(
        &self,
        hello: Registration,
        slot: SnapshotSlot,
    ) -> Result<u64, RegisterError> {
        let id = {
            let mut st = self.lock();
            check_service(
                st.policy.current(),
                &hello.peer,
                &self.trust_domain,
                &hello.service,
                self.pods.is_some(),
            )?;
            let identity = hello.peer.to_string();
            let live = st
                .sidecars
                .values()
                .filter(|s| s.connected && s.identity == identity)
                .count();
            if live >= self.limits.max_streams_per_identity {
                return Err(RegisterError::TooManyStreams {
                    identity,
                    max: self.limits.max_streams_per_identity,
                });
            }
            let id = st.next_id;
            st.next_id += 1;
            st.sidecars.insert(
                id,
                SidecarEntry {
                    service: hello.service,
                    identity: hello.peer.to_string(),
                    endpoint: hello.endpoint.to_string(),
                    labels: hello.labels,
                    sent: None,
                    sent_at: None,
                    acked: None,
                    nack: None,
                    connected: true,
                    since: SystemTime::now(),
                    cert_not_after: hello.cert_not_after,
                    admin: hello.admin,
                    tx: Some(slot),
                    delta: hello.delta,
                    subscribed: BTreeMap::new(),
                    gateway: hello.gateway.map(gateways::GatewayWatch::new),
                },
            );
            if hello.delta {
                st.subscribe(id, hello.subscribe);
            }
            id
        };
        // Coalesced with the other registrations of a connect storm (see `Hub::run_pusher`).
        self.request_push();
        Ok(id)
    }

    /// Sidecar stream `id` ACKed `version` of `resource` (empty: the snapshot); a push of it
    /// that was waiting for this ACK is observed in the push-duration histogram. False when
    /// `id` is not registered.
    pub(crate) fn ack(&self, id: u64, version: String, resource: &str) -> bool {
        let mut guard = self.lock();
        let st = &mut *guard;
        if !resource.is_empty() {
            return st.ack_resource(id, resource, version);
        }
        let Some(s) = st.sidecars.get_mut(&id) else {
            return false;
        };
        log::debug!("{} at {} ACKed {}", s.service, s.endpoint, version);
        if s.sent.as_deref() == Some(version.as_str()) {
            if let Some(at) = s.sent_at.take() {
                st.push_duration.observe(at.elapsed());
            }
        }
        s.acked = Some(version);
        true
    }

    /// Sidecar stream `id` NACKed `version` of `resource` (empty: the snapshot) for `reason`.
    /// False when `id` is not registered.
    pub(crate) fn nack(&self, id: u64, version: String, reason: String, resource: &str) -> bool {
        let mut st = self.lock();
        if !resource.is_empty() {
            return st.nack_resource(id, resource, version, reason);
        }
        let Some(s) = st.sidecars.get_mut(&id) else {
            return false;
        };
        log::warn!(
            "{} at {} NACKed {}: {}",
            s.service,
            s.endpoint,
            version,
            reason
        );
        s.nack = Some((version, reason));
        true
    }

    /// Sidecar stream `id` serves with a certificate expiring at `not_after` (unknown: kept as
    /// it was). False when `id` is not registered.
    pub(crate) fn certificate(&self, id: u64, not_after: Option<SystemTime>) -> bool {
        let mut st = self.lock();
        let Some(s) = st.sidecars.get_mut(&id) else {
            return false;
        };
        if let Some(t) = not_after {
            s.cert_not_after = Some(t);
        }
        true
    }

    /// Whether sidecar stream `id` is registered (connected or within its grace period).
    pub(crate) fn is_registered(&self, id: u64) -> bool {
        self.lock().sidecars.contains_key(&id)
    }

    /// Withdraw sidecar stream `id` at once (it is draining): its endpoint leaves the
    /// snapshots of its callers now, not after the grace period. False when `id` is not
    /// registered.
    pub(crate) fn withdraw(&self, id: u64) -> bool {
        let mut st = self.lock();
        if let Some(s) = st.sidecars.remove(&id) {
            log::info!(
                "sidecar {} at {} is draining: endpoint withdrawn",
                s.service,
                s.endpoint
            );
            push_changed(&mut st, &self.trust_bundle_pem);
            return true;
        }
        false
    }

    /// Sidecar stream `id` ended: it is sent nothing more, and its endpoint stays in its
    /// callers' snapshots for the grace period ([`Hub::expire`]).
    pub(crate) fn disconnected(&self, id: u64) {
        let mut st = self.lock();
        if let Some(s) = st.sidecars.get_mut(&id) {
            log::info!("sidecar {} at {} disconnected", s.service, s.endpoint);
            s.connected = false;
            s.tx = None;
        }
    }

    /// After the grace period, withdraw disconnected sidecar stream `id` (unless a drain did
    /// already) and ask for a push.
    pub(crate) async fn expire(&self, id: u64) {
        tokio::time::sleep(self.grace).await;
        let removed = self.lock().sidecars.remove(&id).is_some();
        if removed {
            self.request_push();
        }
    }

    /// End every sidecar stream (the control plane stops): each is marked disconnected.
    pub(crate) fn disconnect_all(&self) {
        let mut st = self.lock();
        for s in st.sidecars.values_mut() {
            s.tx = None;
            s.connected = false;
        }
    }
}

/// A sidecar's `Hello`, checked against its certificate: what [`Hub::register`] records.
pub(crate) struct Registration {
    /// The identity its certificate proves.
    pub(crate) peer: Identity,
    /// The service it speaks for.
    pub(crate) service: String,
    /// Its inbound address, which its callers are sent.
    pub(crate) endpoint: SocketAddr,
    /// Its labels (subsets of routes select on them).
    pub(crate) labels: BTreeMap<String, String>,
    /// Expiry of the certificate it serves with, if it said.
    pub(crate) cert_not_after: Option<SystemTime>,
    /// Its admin address (metrics), if it reported a valid one.
    pub(crate) admin: Option<String>,
    /// It announced "endpoints-by-service".
    pub(crate) delta: bool,
    /// Its first subscriptions (with `delta`).
    pub(crate) subscribe: Vec<String>,
    /// Gateway mode: the Gateway (`<namespace>/<name>`) it serves.
    pub(crate) gateway: Option<String>,
}

/// Why [`Hub::register`] refused a sidecar.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RegisterError {
    /// The certificate may not speak for the service.
    #[error(transparent)]
    Refused(#[from] JoinError),
    /// The identity already holds as many live streams as allowed.
    #[error("{identity} already holds {max} live streams, the most one identity may")]
    TooManyStreams {
        /// The identity.
        identity: String,
        /// The limit.
        max: usize,
    },
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    /// Service `a` and `others` more, every one a destination in `a`'s snapshot.
    fn policy(others: usize) -> MeshPolicy {
        let mut text =
            "services:\n  - name: a\n    identity: spiffe://weft.local/ns/default/sa/a\n"
                .to_owned();
        for i in 0..others {
            text.push_str(&format!(
                "  - name: s{i}\n    identity: spiffe://weft.local/ns/default/sa/s{i}\n"
            ));
        }
        MeshPolicy::from_texts(&[("p.yaml".into(), text)]).expect("valid")
    }

    fn registration(port: u16) -> Registration {
        Registration {
            peer: Identity::new("weft.local", "default", "a").expect("identity"),
            service: "a".to_owned(),
            endpoint: ([127, 0, 0, 1], port).into(),
            labels: BTreeMap::new(),
            cert_not_after: None,
            admin: None,
            delta: false,
            subscribe: Vec::new(),
            gateway: None,
        }
    }

    #[test]
    fn a_registration_flood_of_one_identity_is_refused_beyond_the_limit() {
        let hub = Hub::new(policy(0), "PEM".into(), "weft.local".into(), DEFAULT_GRACE)
            .with_limits(HubLimits {
                max_streams_per_identity: 3,
                ..HubLimits::default()
            });
        let ids: Vec<u64> = (0..3)
            .map(|i| {
                hub.register(registration(1000 + i), crate::push::slot::slot().0)
                    .expect("within the limit")
            })
            .collect();
        for i in 0..50 {
            let e = hub
                .register(registration(2000 + i), crate::push::slot::slot().0)
                .expect_err("over the limit");
            assert!(
                matches!(e, RegisterError::TooManyStreams { max: 3, .. }),
                "{e}"
            );
        }
        // The registered ones are still served; one leaving makes room for one more.
        assert!(ids.iter().all(|id| hub.is_registered(*id)));
        hub.disconnected(ids[0]);
        hub.register(registration(3000), crate::push::slot::slot().0)
            .expect("room again");
    }

    #[test]
    fn a_policy_with_an_oversized_snapshot_is_refused_and_the_last_good_stays() {
        let hub = Hub::new(policy(0), "PEM".into(), "weft.local".into(), DEFAULT_GRACE)
            .with_limits(HubLimits {
                max_snapshot_bytes: 4096,
                ..HubLimits::default()
            });
        let good = hub.policy().version().to_owned();
        match hub.take_policy(Ok(policy(200))) {
            Update::Rejected(errors) => {
                let text = errors.to_string();
                assert!(text.contains("over the limit of 4096"), "{text}");
            }
            other => panic!("not refused: {other:?}"),
        }
        assert_eq!(hub.policy().version(), good);
        assert!(matches!(
            hub.take_policy(Ok(policy(2))),
            Update::Applied { .. }
        ));
    }
}
