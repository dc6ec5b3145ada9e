//! The push state: the policy in force, every sidecar stream (live or in its grace period),
//! what each was sent and what it answered, and the control plane's metrics.
//!
//! Each sidecar gets [`MeshPolicy::snapshot_with_endpoints`] for its service, and again whenever
//! that snapshot's version changes (policy change or endpoint change).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tonic::Status;
use weft_policy::wire::Endpoint;
use weft_wire::v1::{control_message, ControlMessage};

use crate::policy::{MeshPolicy, PolicyErrors};
use crate::source::{LastGood, Update};

/// How long a disconnected sidecar's endpoint stays registered.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);
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
    pub(crate) tx: Option<mpsc::UnboundedSender<Result<ControlMessage, Status>>>,
}

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

/// Endpoints registered by sidecars (connected or in grace), per service, sorted by address.
fn registered(st: &HubState) -> BTreeMap<String, Vec<Endpoint>> {
    let mut out: BTreeMap<String, Vec<Endpoint>> = BTreeMap::new();
    for s in st.sidecars.values() {
        let list = out.entry(s.service.clone()).or_default();
        if !list.iter().any(|e| e.address == s.endpoint) {
            list.push(Endpoint {
                address: s.endpoint.clone(),
                labels: s.labels.clone(),
            });
        }
    }
    for list in out.values_mut() {
        list.sort_by(|a, b| a.address.cmp(&b.address));
    }
    out
}

/// Send every connected sidecar its snapshot if its version differs from the one last sent.
pub(crate) fn push_changed(st: &mut HubState, trust_bundle_pem: &str) {
    let endpoints = registered(st);
    let policy = st.policy.current().clone();
    let mut pushed = 0;
    for s in st.sidecars.values_mut() {
        let Some(tx) = &s.tx else { continue };
        let snap = policy.snapshot_with_endpoints(&s.service, &endpoints);
        if s.sent.as_deref() == Some(snap.version.as_str()) {
            continue;
        }
        let json = match serde_json::to_vec(&snap) {
            Ok(j) => j,
            Err(e) => {
                log::error!("cannot encode the snapshot for {}: {e}", s.service);
                continue;
            }
        };
        let msg = ControlMessage {
            kind: Some(control_message::Kind::Snapshot(weft_wire::v1::Snapshot {
                version: snap.version.clone(),
                policy_json: json,
                trust_bundle_pem: trust_bundle_pem.to_owned(),
            })),
        };
        if tx.send(Ok(msg)).is_ok() {
            s.sent = Some(snap.version);
            s.sent_at = Some(Instant::now());
            pushed += 1;
        }
    }
    st.pushes += pushed;
}

#[cfg(test)]
mod tests {
    use super::*;

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
