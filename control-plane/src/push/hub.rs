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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::{watch, Notify};
use weft_policy::wire::Endpoint;
use weft_wire::v1::{control_message, ControlMessage};

use crate::policy::mesh::{MeshPolicy, PolicyErrors};
use crate::policy::source::{LastGood, Update};

/// How long a disconnected sidecar's endpoint stays registered.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);
/// Shortest time between the starts of two push rounds of [`Hub::run_pusher`]: the requests
/// of a connect storm that arrive meanwhile are served by one round, while a lone request is
/// served at once.
pub const PUSH_MIN_INTERVAL: Duration = Duration::from_millis(5);
/// Upper bounds (seconds) of the `weft_cp_push_duration_seconds` buckets: 1 ms … 10 s.
pub const PUSH_DURATION_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Push latency: from sending a snapshot version to a sidecar until it ACKs that version.
#[derive(Debug, Default)]
pub(crate) struct PushHistogram {
    /// Observations per bucket of [`PUSH_DURATION_BUCKETS`] (not cumulative); the last slot
    /// counts those above the largest bound.
    counts: [u64; PUSH_DURATION_BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl PushHistogram {
    pub(crate) fn observe(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = PUSH_DURATION_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(PUSH_DURATION_BUCKETS.len());
        self.counts[i] += 1;
        self.sum += secs;
        self.count += 1;
    }

    /// Prometheus text of the family `weft_cp_push_duration_seconds`.
    fn render(&self) -> String {
        let mut out = String::from(
            "# HELP weft_cp_push_duration_seconds Time from sending a snapshot version to a sidecar until it ACKs that version (NACKs are not observed).\n\
             # TYPE weft_cp_push_duration_seconds histogram\n",
        );
        let mut cumulative = 0;
        for (b, c) in PUSH_DURATION_BUCKETS.iter().zip(self.counts) {
            cumulative += c;
            out.push_str(&format!(
                "weft_cp_push_duration_seconds_bucket{{le=\"{b}\"}} {cumulative}\n"
            ));
        }
        out.push_str(&format!(
            "weft_cp_push_duration_seconds_bucket{{le=\"+Inf\"}} {}\n\
             weft_cp_push_duration_seconds_sum {}\n\
             weft_cp_push_duration_seconds_count {}\n",
            self.count, self.sum, self.count
        ));
        out
    }
}

/// One sidecar stream, live or within its grace period.
#[derive(Debug)]
pub(crate) struct SidecarEntry {
    pub(crate) service: String,
    pub(crate) identity: String,
    pub(crate) endpoint: String,
    /// The sidecar's admin address (metrics), if it reported a valid one.
    pub(crate) admin: Option<String>,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) sent: Option<String>,
    /// When `sent` was sent; taken when the sidecar ACKs it.
    pub(crate) sent_at: Option<Instant>,
    pub(crate) acked: Option<String>,
    pub(crate) nack: Option<(String, String)>,
    pub(crate) connected: bool,
    pub(crate) since: SystemTime,
    /// Expiry of the certificate the sidecar says it serves with.
    pub(crate) cert_not_after: Option<SystemTime>,
    pub(crate) tx: Option<SnapshotSlot>,
}

/// Where a sidecar stream's next snapshot is put: the latest one only, so a slow sidecar costs
/// one pending snapshot, not a queue of superseded ones. The stream ends when it is dropped.
pub(crate) type SnapshotSlot = watch::Sender<Option<ControlMessage>>;

pub(crate) struct HubState {
    pub(crate) policy: LastGood,
    pub(crate) policy_error: Option<String>,
    pub(crate) sidecars: BTreeMap<u64, SidecarEntry>,
    pub(crate) next_id: u64,
    pub(crate) pushes: u64,
    pub(crate) rejected: u64,
    pub(crate) push_duration: PushHistogram,
}

/// The shared state of the push: the policy in force, every sidecar, and what each was sent.
pub struct Hub {
    pub(crate) state: Mutex<HubState>,
    pub(crate) trust_bundle_pem: String,
    pub(crate) trust_domain: String,
    pub(crate) grace: Duration,
    /// Certificates issued through `Certify`.
    pub(crate) certs_issued: AtomicU64,
    /// `Certify` requests refused (bad credential or CSR) or failed.
    pub(crate) certs_refused: AtomicU64,
    /// Wakes [`Hub::run_pusher`]; one stored permit stands for any number of requests.
    push_requested: Notify,
    /// Push rounds run by [`Hub::run_pusher`].
    push_rounds: AtomicU64,
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
            }),
            trust_bundle_pem,
            trust_domain,
            grace,
            certs_issued: AtomicU64::new(0),
            certs_refused: AtomicU64::new(0),
            push_requested: Notify::new(),
            push_rounds: AtomicU64::new(0),
        }
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

    /// Prometheus text of `weft_cp_certificates_issued_total`.
    fn certificate_metrics(&self) -> String {
        format!(
            "# HELP weft_cp_certificates_issued_total Certify requests, by result (issued; refused: bad credential or CSR, or a failure).\n\
             # TYPE weft_cp_certificates_issued_total counter\n\
             weft_cp_certificates_issued_total{{result=\"issued\"}} {}\n\
             weft_cp_certificates_issued_total{{result=\"refused\"}} {}\n",
            self.certs_issued.load(Ordering::Relaxed),
            self.certs_refused.load(Ordering::Relaxed)
        )
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take in a freshly loaded policy: push changed snapshots, or log and record the errors.
    pub fn update_policy(&self, loaded: Result<MeshPolicy, PolicyErrors>) {
        self.take_policy(loaded);
    }

    /// [`update_policy`](Self::update_policy), saying what it did, so the caller can record
    /// the change in history and the audit log.
    pub fn take_policy(&self, loaded: Result<MeshPolicy, PolicyErrors>) -> Update {
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

    /// Endpoints per service: those the policy lists (`source: static`) and those sidecars
    /// registered (`source: registered`, connected or within their grace period), as
    /// `GET /v1/endpoints` shows them.
    pub fn endpoints(&self) -> serde_json::Value {
        let st = self.lock();
        let mut out: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
        for svc in st.policy.current().services() {
            let list = out.entry(svc.name.clone()).or_default();
            for e in &svc.endpoints {
                list.push(serde_json::json!({
                    "address": e.address,
                    "labels": e.labels,
                    "source": "static",
                    "connected": serde_json::Value::Null,
                }));
            }
        }
        for s in st.sidecars.values() {
            out.entry(s.service.clone())
                .or_default()
                .push(serde_json::json!({
                    "address": s.endpoint,
                    "labels": s.labels,
                    "source": "registered",
                    "connected": s.connected,
                }));
        }
        serde_json::json!(out)
    }

    /// Withdraw sidecar stream `id` at once (it is draining): its endpoint leaves the
    /// snapshots of its callers now, not after the grace period.
    pub(crate) fn withdraw(&self, id: u64) {
        let mut st = self.lock();
        if let Some(s) = st.sidecars.remove(&id) {
            log::info!(
                "sidecar {} at {} is draining: endpoint withdrawn",
                s.service,
                s.endpoint
            );
            push_changed(&mut st, &self.trust_bundle_pem);
        }
    }

    /// Prometheus text of `GET /metrics`.
    pub fn metrics(&self) -> String {
        let st = self.lock();
        let connected = st.sidecars.values().filter(|s| s.connected).count();
        let in_sync = st
            .sidecars
            .values()
            .filter(|s| s.connected && s.sent.is_some() && s.acked == s.sent)
            .count();
        let nacking = st
            .sidecars
            .values()
            .filter(|s| {
                s.connected && s.nack.as_ref().map(|(v, _)| Some(v)) == Some(s.sent.as_ref())
            })
            .count();
        format!(
            "# HELP weft_cp_sidecars Sidecars with a stream, by state (connected; in_sync: ACKed the snapshot last sent; nacking: NACKed it).\n\
             # TYPE weft_cp_sidecars gauge\n\
             weft_cp_sidecars{{state=\"connected\"}} {connected}\n\
             weft_cp_sidecars{{state=\"in_sync\"}} {in_sync}\n\
             weft_cp_sidecars{{state=\"nacking\"}} {nacking}\n\
             # HELP weft_cp_policy_valid 1 when the latest policy change was accepted, 0 while it is refused.\n\
             # TYPE weft_cp_policy_valid gauge\n\
             weft_cp_policy_valid {}\n\
             # HELP weft_cp_policy_rejected_total Policy changes refused.\n\
             # TYPE weft_cp_policy_rejected_total counter\n\
             weft_cp_policy_rejected_total {}\n\
             # HELP weft_cp_snapshots_pushed_total Snapshots sent to sidecars.\n\
             # TYPE weft_cp_snapshots_pushed_total counter\n\
             weft_cp_snapshots_pushed_total {}\n\
             {}",
            u8::from(st.policy_error.is_none()),
            st.rejected,
            st.pushes,
            st.push_duration.render()
        ) + &self.certificate_metrics()
    }

    /// The status document of `GET /status`.
    pub fn status(&self) -> serde_json::Value {
        let st = self.lock();
        let sidecars: Vec<serde_json::Value> = st
            .sidecars
            .values()
            .map(|s| {
                serde_json::json!({
                    "service": s.service,
                    "identity": s.identity,
                    "endpoint": s.endpoint,
                    "admin": s.admin,
                    "labels": s.labels,
                    "connected": s.connected,
                    "since": humantime::format_rfc3339_seconds(s.since).to_string(),
                    "cert_not_after": s.cert_not_after.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                    "sent_version": s.sent,
                    "acked_version": s.acked,
                    "nack": s.nack.as_ref().map(|(v, r)| serde_json::json!({"version": v, "reason": r})),
                })
            })
            .collect();
        serde_json::json!({
            "policy_version": st.policy.current().version(),
            "policy_files": st.policy.current().files().iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
            "last_policy_error": st.policy_error,
            "snapshots_pushed": st.pushes,
            "sidecars": sidecars,
        })
    }
}

impl Hub {
    /// Ask the push task for a push (after a registration or withdrawal). Cheap, never
    /// blocks; requests made while a round runs or waits are served together by the next one.
    pub(crate) fn request_push(&self) {
        self.push_requested.notify_one();
    }

    /// The push task: one push round per wake-up ([`Hub::request_push`]), rounds at least
    /// [`PUSH_MIN_INTERVAL`] apart. Runs until its task is aborted.
    pub async fn run_pusher(self: std::sync::Arc<Self>) {
        loop {
            self.push_requested.notified().await;
            let started = Instant::now();
            {
                let mut st = self.lock();
                push_changed(&mut st, &self.trust_bundle_pem);
            }
            self.push_rounds.fetch_add(1, Ordering::Relaxed);
            let took = started.elapsed();
            log::debug!("push round took {} µs", took.as_micros());
            tokio::time::sleep(PUSH_MIN_INTERVAL.saturating_sub(took)).await;
        }
    }

    /// Push rounds run by [`Hub::run_pusher`] so far.
    pub fn push_rounds(&self) -> u64 {
        self.push_rounds.load(Ordering::Relaxed)
    }
}

/// Endpoints registered by sidecars (connected or in grace), per service, sorted by address.
fn registered(st: &HubState) -> BTreeMap<String, Vec<Endpoint>> {
    let mut out: BTreeMap<String, BTreeMap<&str, &BTreeMap<String, String>>> = BTreeMap::new();
    for s in st.sidecars.values() {
        // The first registration of an address wins (the older stream, by id).
        out.entry(s.service.clone())
            .or_default()
            .entry(s.endpoint.as_str())
            .or_insert(&s.labels);
    }
    out.into_iter()
        .map(|(service, eps)| {
            let list = eps
                .into_iter()
                .map(|(address, labels)| Endpoint {
                    address: address.to_owned(),
                    labels: labels.clone(),
                })
                .collect();
            (service, list)
        })
        .collect()
}

/// One service's snapshot as sent: its version and the message every sidecar of the service
/// gets (the JSON is shared, not copied, between them).
struct Built {
    version: String,
    msg: ControlMessage,
}

/// Build the snapshot message of `service`, or `None` (logged) if it cannot be encoded.
fn build(
    policy: &MeshPolicy,
    service: &str,
    endpoints: &BTreeMap<String, Vec<Endpoint>>,
    trust_bundle_pem: &str,
) -> Option<Built> {
    let snap = policy.snapshot_with_endpoints(service, endpoints);
    let json = match serde_json::to_vec(&snap) {
        Ok(j) => Bytes::from(j),
        Err(e) => {
            log::error!("cannot encode the snapshot for {service}: {e}");
            return None;
        }
    };
    Some(Built {
        msg: ControlMessage {
            kind: Some(control_message::Kind::Snapshot(weft_wire::v1::Snapshot {
                version: snap.version.clone(),
                policy_json: json,
                trust_bundle_pem: trust_bundle_pem.to_owned(),
            })),
        },
        version: snap.version,
    })
}

/// Send every connected sidecar its snapshot if its version differs from the one last sent.
/// Each service's snapshot is built once, however many sidecars it has.
pub(crate) fn push_changed(st: &mut HubState, trust_bundle_pem: &str) {
    let endpoints = registered(st);
    let policy = st.policy.current().clone();
    let services: BTreeSet<&str> = st
        .sidecars
        .values()
        .filter(|s| s.tx.is_some())
        .map(|s| s.service.as_str())
        .collect();
    let built: HashMap<String, Built> = services
        .into_iter()
        .filter_map(|svc| {
            build(&policy, svc, &endpoints, trust_bundle_pem).map(|b| (svc.to_owned(), b))
        })
        .collect();
    let mut pushed = 0;
    for s in st.sidecars.values_mut() {
        let Some(tx) = &s.tx else { continue };
        let Some(b) = built.get(&s.service) else {
            continue;
        };
        if s.sent.as_deref() == Some(b.version.as_str()) {
            continue;
        }
        // Fails only when the stream is gone (its end is recorded by `follow`).
        if tx.send(Some(b.msg.clone())).is_ok() {
            s.sent = Some(b.version.clone());
            s.sent_at = Some(Instant::now());
            pushed += 1;
        }
    }
    st.pushes += pushed;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn hub() -> Arc<Hub> {
        let text = "services:\n\
            \x20 - name: a\n    identity: spiffe://weft.local/ns/default/sa/a\n\
            \x20 - name: b\n    identity: spiffe://weft.local/ns/default/sa/b\n";
        let policy = MeshPolicy::from_texts(&[("p.yaml".into(), text.to_owned())]).expect("valid");
        Arc::new(Hub::new(
            policy,
            "PEM".into(),
            "weft.local".into(),
            DEFAULT_GRACE,
        ))
    }

    /// Register a sidecar as `grpc` does, without pushing; returns its snapshot slot.
    fn register(hub: &Hub, service: &str, port: u16) -> watch::Receiver<Option<ControlMessage>> {
        let (tx, rx) = watch::channel(None);
        let mut st = hub.lock();
        let id = st.next_id;
        st.next_id += 1;
        st.sidecars.insert(
            id,
            SidecarEntry {
                service: service.to_owned(),
                identity: format!("spiffe://weft.local/ns/default/sa/{service}"),
                endpoint: format!("127.0.0.1:{port}"),
                labels: BTreeMap::new(),
                sent: None,
                sent_at: None,
                acked: None,
                nack: None,
                connected: true,
                since: SystemTime::now(),
                cert_not_after: None,
                admin: None,
                tx: Some(tx),
            },
        );
        rx
    }

    fn snapshot(rx: &watch::Receiver<Option<ControlMessage>>) -> weft_wire::v1::Snapshot {
        match rx.borrow().clone() {
            Some(ControlMessage {
                kind: Some(control_message::Kind::Snapshot(s)),
            }) => s,
            other => panic!("no snapshot: {other:?}"),
        }
    }

    #[test]
    fn a_push_builds_each_service_once_and_shares_its_json() {
        let hub = hub();
        let mut a: Vec<_> = (0..3).map(|i| register(&hub, "a", 1000 + i)).collect();
        let mut b: Vec<_> = (0..2).map(|i| register(&hub, "b", 2000 + i)).collect();
        push_changed(&mut hub.lock(), "PEM");
        let (sa, sb) = (snapshot(&a[0]), snapshot(&b[0]));
        assert_ne!(sa.version, sb.version);
        for rx in &a {
            let s = snapshot(rx);
            assert_eq!(s.version, sa.version);
            // The same bytes, not a copy per sidecar.
            assert_eq!(s.policy_json.as_ptr(), sa.policy_json.as_ptr());
        }
        for rx in &b {
            assert_eq!(snapshot(rx).policy_json.as_ptr(), sb.policy_json.as_ptr());
        }
        // What a's sidecars get lists b's two endpoints.
        let json: serde_json::Value = serde_json::from_slice(&sa.policy_json).expect("json");
        assert_eq!(
            json["services"][0]["endpoints"].as_array().map(Vec::len),
            Some(2)
        );
        assert_eq!(hub.lock().pushes, 5);

        // Nothing changed: nobody is sent anything.
        for rx in a.iter_mut().chain(b.iter_mut()) {
            rx.mark_unchanged();
        }
        push_changed(&mut hub.lock(), "PEM");
        assert!(a
            .iter()
            .chain(&b)
            .all(|rx| !rx.has_changed().expect("open")));
        assert_eq!(hub.lock().pushes, 5);

        // A new b sidecar changes a's snapshots only (b's does not list b).
        let _b3 = register(&hub, "b", 2002);
        push_changed(&mut hub.lock(), "PEM");
        assert!(a.iter().all(|rx| rx.has_changed().expect("open")));
        assert!(b.iter().all(|rx| !rx.has_changed().expect("open")));
        assert_ne!(snapshot(&a[0]).version, sa.version);
        assert_eq!(hub.lock().pushes, 5 + 3 + 1);
    }

    #[tokio::test]
    async fn a_connect_storm_is_pushed_in_few_rounds_and_a_lone_change_at_once() {
        let hub = hub();
        let pusher = tokio::spawn(hub.clone().run_pusher());
        // 200 registrations, each asking for a push, before the push task gets to run (this
        // runtime has one thread): one round serves them all.
        let slots: Vec<_> = (0..200)
            .map(|i| {
                let rx = register(&hub, if i % 2 == 0 { "a" } else { "b" }, 1000 + i);
                hub.request_push();
                rx
            })
            .collect();
        let all_sent = || {
            let st = hub.lock();
            st.sidecars.values().all(|s| s.sent.is_some())
        };
        tokio::time::timeout(Duration::from_secs(5), async {
            while !all_sent() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("every sidecar is sent a snapshot");
        assert_eq!(hub.push_rounds(), 1);
        // Each got the final snapshot of its service, once.
        assert_eq!(hub.lock().pushes, 200);
        let (va, vb) = (snapshot(&slots[0]).version, snapshot(&slots[1]).version);
        for (i, rx) in slots.iter().enumerate() {
            assert_eq!(&snapshot(rx).version, if i % 2 == 0 { &va } else { &vb });
        }

        // One more sidecar later: its request is served by a round of its own, promptly.
        tokio::time::sleep(PUSH_MIN_INTERVAL * 2).await;
        let started = Instant::now();
        let late = register(&hub, "a", 5000);
        hub.request_push();
        tokio::time::timeout(Duration::from_secs(5), async {
            while late.borrow().is_none() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the late sidecar is sent a snapshot");
        assert!(started.elapsed() < Duration::from_millis(500));
        assert_eq!(hub.push_rounds(), 2);
        // b's sidecars see the new endpoint; a's (whose snapshot does not list a) do not.
        assert_eq!(hub.lock().pushes, 200 + 1 + 100);
        pusher.abort();
    }

    #[test]
    fn push_histogram_renders_cumulative_buckets() {
        let mut h = PushHistogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(20));
        let text = h.render();
        assert!(text.contains("# TYPE weft_cp_push_duration_seconds histogram"));
        assert!(text.contains("weft_cp_push_duration_seconds_bucket{le=\"0.001\"} 1\n"));
        assert!(text.contains("weft_cp_push_duration_seconds_bucket{le=\"0.025\"} 1\n"));
        assert!(text.contains("weft_cp_push_duration_seconds_bucket{le=\"0.05\"} 2\n"));
        assert!(text.contains("weft_cp_push_duration_seconds_bucket{le=\"10\"} 2\n"));
        assert!(text.contains("weft_cp_push_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("weft_cp_push_duration_seconds_count 3\n"));
    }
}
