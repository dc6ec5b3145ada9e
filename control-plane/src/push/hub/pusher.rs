//! The push rounds: each builds every service's snapshot once (its JSON shared by all the
//! service's sidecars) and sends it to the sidecars whose last snapshot differs. Rounds run
//! on the push task ([`Hub::run_pusher`]), coalescing the requests of a connect storm, or at
//! once on a policy change or a withdrawal.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use weft_api::v1::{control_message, ControlMessage};
use weft_policy::wire::Endpoint;

use super::{resources, Hub, HubState, PUSH_MIN_INTERVAL};
use crate::policy::mesh::MeshPolicy;
use crate::push::slot::Outgoing;

impl Hub {
    /// Ask the push task for a push (after a registration or withdrawal). Cheap, never
    /// blocks; requests made while a round runs or waits are served together by the next one.
    pub(super) fn request_push(&self) {
        self.push_requested.notify_one();
    }

    /// The push task: one push round per wake-up (`Hub::request_push`), rounds at least
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

/// Endpoints registered by sidecars (connected or in grace), per service, sorted by address;
/// none on Kubernetes, where the EndpointSlices list the endpoints and follow the pods'
/// readiness (a sidecar connects before its app is ready, and must not get traffic before).
fn registered(st: &HubState) -> BTreeMap<String, Vec<Endpoint>> {
    if !st.registered_endpoints {
        return BTreeMap::new();
    }
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
    msg: Outgoing,
}

/// Build the snapshot message of `service` (without endpoints when `separate`: they go as
/// resources of their own, [`resources`]), or `None` (logged) if it cannot be encoded.
fn build(
    policy: &MeshPolicy,
    service: &str,
    separate: bool,
    endpoints: &BTreeMap<String, Vec<Endpoint>>,
    trust_bundle_pem: &str,
) -> Option<Built> {
    let snap = if separate {
        policy.snapshot_without_endpoints(service)
    } else {
        policy.snapshot_with_endpoints(service, endpoints)
    };
    let json = match serde_json::to_vec(&snap) {
        Ok(j) => Bytes::from(j),
        Err(e) => {
            log::error!("cannot encode the snapshot for {service}: {e}");
            return None;
        }
    };
    Some(Built {
        msg: Outgoing::Snapshot(ControlMessage {
            kind: Some(control_message::Kind::Snapshot(weft_api::v1::Snapshot {
                version: snap.version.clone(),
                policy_json: json,
                trust_bundle_pem: trust_bundle_pem.to_owned(),
                endpoints_separate: separate,
            })),
        }),
        version: snap.version,
    })
}

/// Send every connected sidecar its snapshot if its version differs from the one last sent,
/// and a sidecar taking endpoints by service each subscribed service's endpoints whose
/// version differs. Each service's snapshot (per mode) and endpoints are built once, however
/// many sidecars get them.
pub(super) fn push_changed(st: &mut HubState, trust_bundle_pem: &str) {
    let endpoints = registered(st);
    let policy = st.policy.current().clone();
    let services: BTreeSet<(&str, bool)> = st
        .sidecars
        .values()
        .filter(|s| s.tx.is_some())
        .map(|s| (s.service.as_str(), s.delta))
        .collect();
    let built: HashMap<(String, bool), Built> = services
        .into_iter()
        .filter_map(|(svc, delta)| {
            build(&policy, svc, delta, &endpoints, trust_bundle_pem)
                .map(|b| ((svc.to_owned(), delta), b))
        })
        .collect();
    let mut by_service = HashMap::new();
    let mut sent = st.sent;
    let mut pushed = 0;
    for s in st.sidecars.values_mut() {
        let Some(tx) = &s.tx else { continue };
        if let Some(b) = built.get(&(s.service.clone(), s.delta)) {
            // `put` fails only when the stream is gone (its end is recorded by `follow`).
            if s.sent.as_deref() != Some(b.version.as_str()) && tx.put("", b.msg.clone()) {
                s.sent = Some(b.version.clone());
                s.sent_at = Some(Instant::now());
                pushed += 1;
                sent.snapshot_messages += 1;
                sent.snapshot_bytes += b.msg.wire_len() as u64;
            }
        }
        if s.delta {
            let (m, b) = resources::push_endpoints(s, &policy, &endpoints, &mut by_service);
            sent.endpoints_messages += m;
            sent.endpoints_bytes += b;
        }
    }
    st.sent = sent;
    st.pushes += pushed;
    // After the snapshots: a gateway's config follows its first snapshot.
    super::gateways::push_gateways(st);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    use weft_certs::Identity;

    use crate::push::hub::{Registration, DEFAULT_GRACE};
    use crate::push::slot::{slot, SlotReceiver};

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

    /// Register a sidecar as `grpc` does (its push request is served only where a test runs
    /// the push task); returns its snapshot slot.
    fn register(hub: &Hub, service: &str, port: u16) -> Rx {
        let (tx, rx) = slot();
        let registration = Registration {
            peer: Identity::new("weft.local", "default", service).expect("identity"),
            service: service.to_owned(),
            endpoint: ([127, 0, 0, 1], port).into(),
            labels: BTreeMap::new(),
            cert_not_after: None,
            admin: None,
            delta: false,
            subscribe: Vec::new(),
            gateway: None,
        };
        hub.register(registration, tx).expect("registered");
        Rx { rx, last: None }
    }

    /// A slot's receiver and the last snapshot taken from it.
    struct Rx {
        rx: SlotReceiver,
        last: Option<weft_api::v1::Snapshot>,
    }

    impl Rx {
        /// Take what is pending; whether a snapshot was.
        fn take(&mut self) -> bool {
            let mut got = false;
            for o in self.rx.take_now() {
                if let Some(ControlMessage {
                    kind: Some(control_message::Kind::Snapshot(s)),
                }) = o.message()
                {
                    self.last = Some(s);
                    got = true;
                }
            }
            got
        }
    }

    fn snapshot(rx: &mut Rx) -> weft_api::v1::Snapshot {
        rx.take();
        rx.last.clone().expect("a snapshot")
    }

    #[test]
    fn a_push_builds_each_service_once_and_shares_its_json() {
        let hub = hub();
        let mut a: Vec<_> = (0..3).map(|i| register(&hub, "a", 1000 + i)).collect();
        let mut b: Vec<_> = (0..2).map(|i| register(&hub, "b", 2000 + i)).collect();
        push_changed(&mut hub.lock(), "PEM");
        let (sa, sb) = (snapshot(&mut a[0]), snapshot(&mut b[0]));
        assert_ne!(sa.version, sb.version);
        for rx in &mut a {
            let s = snapshot(rx);
            assert_eq!(s.version, sa.version);
            // The same bytes, not a copy per sidecar.
            assert_eq!(s.policy_json.as_ptr(), sa.policy_json.as_ptr());
        }
        for rx in &mut b {
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
        push_changed(&mut hub.lock(), "PEM");
        assert!(a.iter_mut().chain(b.iter_mut()).all(|rx| !rx.take()));
        assert_eq!(hub.lock().pushes, 5);

        // A new b sidecar changes a's snapshots only (b's does not list b).
        let _b3 = register(&hub, "b", 2002);
        push_changed(&mut hub.lock(), "PEM");
        assert!(a.iter_mut().all(|rx| rx.take()));
        assert!(b.iter_mut().all(|rx| !rx.take()));
        assert_ne!(snapshot(&mut a[0]).version, sa.version);
        assert_eq!(hub.lock().pushes, 5 + 3 + 1);
    }

    #[tokio::test]
    async fn a_connect_storm_is_pushed_in_few_rounds_and_a_lone_change_at_once() {
        let hub = hub();
        let pusher = tokio::spawn(hub.clone().run_pusher());
        // 200 registrations, each asking for a push, before the push task gets to run (this
        // runtime has one thread): one round serves them all.
        let mut slots: Vec<_> = (0..200)
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
        let (va, vb) = (
            snapshot(&mut slots[0]).version,
            snapshot(&mut slots[1]).version,
        );
        for (i, rx) in slots.iter_mut().enumerate() {
            assert_eq!(&snapshot(rx).version, if i % 2 == 0 { &va } else { &vb });
        }

        // One more sidecar later: its request is served by a round of its own, promptly.
        tokio::time::sleep(PUSH_MIN_INTERVAL * 2).await;
        let started = Instant::now();
        let mut late = register(&hub, "a", 5000);
        hub.request_push();
        tokio::time::timeout(Duration::from_secs(5), async {
            while !late.take() {
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
}
