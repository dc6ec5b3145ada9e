//! The hub's numbers as operators read them: the Prometheus text of `GET /metrics`
//! (sidecars by state, policy validity, pushes, the push-duration histogram, certificates
//! issued), and the JSON documents of `GET /status` (sidecars, and gateways with their
//! Gateway config's ACK or NACK) and `GET /v1/endpoints`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Hub;

/// Upper bounds (seconds) of the `weft_cp_push_duration_seconds` buckets: 1 ms … 10 s.
pub const PUSH_DURATION_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Push latency: from sending a snapshot version to a sidecar until it ACKs that version.
#[derive(Debug, Default)]
pub(super) struct PushHistogram {
    /// Observations per bucket of [`PUSH_DURATION_BUCKETS`] (not cumulative); the last slot
    /// counts those above the largest bound.
    counts: [u64; PUSH_DURATION_BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl PushHistogram {
    pub(super) fn observe(&mut self, d: Duration) {
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

impl Hub {
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

    /// Prometheus text of `GET /metrics`.
    pub fn metrics(&self) -> String {
        let st = self.lock();
        let connected = st.sidecars.values().filter(|s| s.connected).count();
        let in_sync = st
            .sidecars
            .values()
            .filter(|s| {
                s.connected
                    && s.sent.is_some()
                    && s.acked == s.sent
                    && s.subscribed.values().all(|r| r.acked == r.sent)
            })
            .count();
        let by_service = st
            .sidecars
            .values()
            .filter(|s| s.connected && s.delta)
            .count();
        let subscriptions: usize = st
            .sidecars
            .values()
            .filter(|s| s.connected)
            .map(|s| s.subscribed.len())
            .sum();
        let sent = st.sent;
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
             # HELP weft_cp_sidecars_by_mode Connected sidecars by how they take endpoints (endpoints_by_service: per-service resources they subscribe to; full_snapshots: every snapshot lists every endpoint, as for sidecars that do not announce endpoints-by-service).\n\
             # TYPE weft_cp_sidecars_by_mode gauge\n\
             weft_cp_sidecars_by_mode{{mode=\"endpoints_by_service\"}} {by_service}\n\
             weft_cp_sidecars_by_mode{{mode=\"full_snapshots\"}} {}\n\
             # HELP weft_cp_endpoint_subscriptions Endpoints subscriptions held by connected sidecars (one per sidecar and service it calls).\n\
             # TYPE weft_cp_endpoint_subscriptions gauge\n\
             weft_cp_endpoint_subscriptions {subscriptions}\n\
             # HELP weft_cp_push_messages_total Messages put on sidecar streams, by kind (snapshot; endpoints: one service's endpoints).\n\
             # TYPE weft_cp_push_messages_total counter\n\
             weft_cp_push_messages_total{{kind=\"snapshot\"}} {}\n\
             weft_cp_push_messages_total{{kind=\"endpoints\"}} {}\n\
             # HELP weft_cp_push_bytes_total Bytes of those messages (gRPC framing included; HTTP/2 and TLS framing not), by kind.\n\
             # TYPE weft_cp_push_bytes_total counter\n\
             weft_cp_push_bytes_total{{kind=\"snapshot\"}} {}\n\
             weft_cp_push_bytes_total{{kind=\"endpoints\"}} {}\n\
             {}",
            u8::from(st.policy_error.is_none()),
            st.rejected,
            st.pushes,
            connected - by_service,
            sent.snapshot_messages,
            sent.endpoints_messages,
            sent.snapshot_bytes,
            sent.endpoints_bytes,
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
                    "mode": if s.delta { "endpoints_by_service" } else { "full_snapshots" },
                    "endpoints": s.subscribed.iter().map(|(svc, r)| (svc.clone(), serde_json::json!({
                        "sent_version": r.sent,
                        "acked_version": r.acked,
                        "nack": r.nack.as_ref().map(|(v, why)| serde_json::json!({"version": v, "reason": why})),
                    }))).collect::<serde_json::Map<_, _>>(),
                })
            })
            .collect();
        // Gateway-mode proxies also answer for their Gateway's config (`gateway/<ns>/<name>`),
        // a resource of its own: listed apart, so a refused gateway config is as visible as a
        // refused snapshot.
        let gateways: Vec<serde_json::Value> = st
            .sidecars
            .values()
            .filter_map(|s| {
                let gw = s.gateway.as_ref()?;
                Some(serde_json::json!({
                    "gateway": gw.name,
                    "identity": s.identity,
                    "endpoint": s.endpoint,
                    "connected": s.connected,
                    "sent_version": gw.state.sent,
                    "acked_version": gw.state.acked,
                    "nack": gw.state.nack.as_ref().map(|(v, r)| serde_json::json!({"version": v, "reason": r})),
                }))
            })
            .collect();
        serde_json::json!({
            "policy_version": st.policy.current().version(),
            "policy_files": st.policy.current().files().iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
            "last_policy_error": st.policy_error,
            "snapshots_pushed": st.pushes,
            "sidecars": sidecars,
            "gateways": gateways,
        })
    }
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
