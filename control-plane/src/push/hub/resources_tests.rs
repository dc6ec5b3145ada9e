//! Which sidecars an endpoint change reaches, the resources' versions, and per-resource ACK
//! and NACK.

use std::collections::BTreeMap;

use weft_api::v1::{control_message, ControlMessage};
use weft_certs::Identity;

use super::*;
use crate::push::hub::pusher::push_changed;
use crate::push::hub::{Hub, Registration, DEFAULT_GRACE};
use crate::push::slot::{slot, SlotReceiver};

fn hub() -> Hub {
    let text = "services:\n\
        \x20 - name: a\n    identity: spiffe://weft.local/ns/default/sa/a\n\
        \x20 - name: b\n    identity: spiffe://weft.local/ns/default/sa/b\n\
        \x20   endpoints:\n      - address: 10.0.0.9:15006\n\
        \x20 - name: c\n    identity: spiffe://weft.local/ns/default/sa/c\n\
        \x20 - name: x\n    identity: spiffe://weft.local/ns/default/sa/x\n";
    let policy = MeshPolicy::from_texts(&[("p.yaml".into(), text.to_owned())]).expect("valid");
    Hub::new(policy, "PEM".into(), "weft.local".into(), DEFAULT_GRACE)
}

fn register(
    hub: &Hub,
    service: &str,
    port: u16,
    delta: bool,
    subscribe: &[&str],
) -> (u64, SlotReceiver) {
    let (tx, rx) = slot();
    let id = hub
        .register(
            Registration {
                peer: Identity::new("weft.local", "default", service).expect("identity"),
                service: service.to_owned(),
                endpoint: ([127, 0, 0, 1], port).into(),
                labels: BTreeMap::new(),
                cert_not_after: None,
                admin: None,
                delta,
                subscribe: subscribe.iter().map(|s| (*s).to_owned()).collect(),
                gateway: None,
            },
            tx,
        )
        .expect("registered");
    (id, rx)
}

/// What a stream was sent, decoded: snapshots (version, whether separate, endpoint count of
/// every service) and endpoints (service, version, addresses).
#[derive(Debug, Default)]
struct Got {
    snapshots: Vec<(String, bool, usize)>,
    endpoints: Vec<(String, String, Vec<String>)>,
    framed: Vec<bytes::Bytes>,
}

fn take(rx: &mut SlotReceiver) -> Got {
    let mut got = Got::default();
    for o in rx.take_now() {
        if let Outgoing::Encoded(b) = &o {
            got.framed.push(b.clone());
        }
        match o.message() {
            Some(ControlMessage {
                kind: Some(control_message::Kind::Snapshot(s)),
            }) => {
                let json: weft_policy::wire::PolicySnapshot =
                    serde_json::from_slice(&s.policy_json).expect("json");
                let eps = json.services.iter().map(|s| s.endpoints.len()).sum();
                got.snapshots.push((s.version, s.endpoints_separate, eps));
            }
            Some(ControlMessage {
                kind: Some(control_message::Kind::Endpoints(e)),
            }) => got.endpoints.push((
                e.service,
                e.version,
                e.endpoints.into_iter().map(|e| e.address).collect(),
            )),
            other => panic!("unexpected {other:?}"),
        }
    }
    got
}

fn push(hub: &Hub) {
    push_changed(&mut hub.lock(), "PEM");
}

#[test]
fn an_endpoint_change_reaches_the_services_subscribers_only() {
    let hub = hub();
    let (_, mut calls_a) = register(&hub, "c", 1001, true, &["a"]);
    let (_, mut calls_b) = register(&hub, "c", 1002, true, &["b"]);
    let (_, mut calls_none) = register(&hub, "c", 1003, true, &[]);
    let (_, mut full) = register(&hub, "x", 1004, false, &[]);
    push(&hub);
    let first_a = take(&mut calls_a);
    assert_eq!(first_a.snapshots.len(), 1);
    assert!(first_a.snapshots[0].1, "separate endpoints");
    assert_eq!(
        first_a.snapshots[0].2, 0,
        "a delta snapshot lists no endpoints"
    );
    assert_eq!(first_a.endpoints.len(), 1);
    assert_eq!(first_a.endpoints[0].0, "a");
    assert!(first_a.endpoints[0].2.is_empty(), "no pod of a yet");
    let first_b = take(&mut calls_b);
    assert_eq!(
        first_b.endpoints[0].2,
        ["10.0.0.9:15006"],
        "b's static endpoint"
    );
    let none = take(&mut calls_none);
    assert_eq!((none.snapshots.len(), none.endpoints.len()), (1, 0));
    let first_full = take(&mut full);
    assert!(!first_full.snapshots[0].1);
    assert!(
        first_full.snapshots[0].2 >= 4,
        "a full snapshot lists every endpoint"
    );
    let before = hub.lock().sent;

    // One pod of a added: a's subscriber gets a's endpoints, nobody else of the delta
    // sidecars gets anything; the full-snapshot sidecar gets a whole new snapshot.
    let (_, _pod) = register(&hub, "a", 2001, true, &[]);
    push(&hub);
    let got = take(&mut calls_a);
    assert!(got.snapshots.is_empty(), "the snapshot did not change");
    assert_eq!(got.endpoints.len(), 1);
    assert_eq!(got.endpoints[0].2, ["127.0.0.1:2001"]);
    assert_ne!(got.endpoints[0].1, first_a.endpoints[0].1, "a new version");
    let quiet = take(&mut calls_b);
    assert!(quiet.snapshots.is_empty() && quiet.endpoints.is_empty());
    let quiet = take(&mut calls_none);
    assert!(quiet.snapshots.is_empty() && quiet.endpoints.is_empty());
    assert_eq!(take(&mut full).snapshots.len(), 1);
    let after = hub.lock().sent;
    assert_eq!(after.endpoints_messages - before.endpoints_messages, 1);
    assert_eq!(
        after.snapshot_messages - before.snapshot_messages,
        2,
        "x, and the new pod"
    );
}

#[test]
fn subscribers_share_one_encoded_message_and_equal_lists_keep_their_version() {
    let hub = hub();
    let mut rxs: Vec<SlotReceiver> = (0..3)
        .map(|i| register(&hub, "c", 1000 + i, true, &["b"]).1)
        .collect();
    push(&hub);
    let gots: Vec<Got> = rxs.iter_mut().map(take).collect();
    let ptr = gots[0].framed[0].as_ptr();
    assert!(
        gots.iter().all(|g| g.framed[0].as_ptr() == ptr),
        "one encoding, shared"
    );
    // A late subscriber gets the same version; the others are not sent it again.
    let (id, mut late) = register(&hub, "c", 1010, true, &[]);
    assert!(hub.subscribe(id, vec!["b".into()]));
    push(&hub);
    assert_eq!(take(&mut late).endpoints[0].1, gots[0].endpoints[0].1);
    assert!(rxs.iter_mut().all(|rx| take(rx).endpoints.is_empty()));
    // A subscription to a service the policy does not list sends nothing.
    assert!(hub.subscribe(id, vec!["nope".into()]));
    push(&hub);
    assert!(take(&mut late).endpoints.is_empty());
}

#[test]
fn a_nack_of_one_resource_leaves_the_others_and_the_snapshot_in_sync() {
    let hub = hub();
    let (id, mut rx) = register(&hub, "c", 1001, true, &["a", "b"]);
    push(&hub);
    let got = take(&mut rx);
    let snap = got.snapshots[0].0.clone();
    let va = got
        .endpoints
        .iter()
        .find(|e| e.0 == "a")
        .expect("a")
        .1
        .clone();
    let vb = got
        .endpoints
        .iter()
        .find(|e| e.0 == "b")
        .expect("b")
        .1
        .clone();
    assert!(hub.ack(id, snap.clone(), ""));
    assert!(hub.ack(id, vb.clone(), "endpoints/b"));
    assert!(hub.nack(id, va.clone(), "bad address".into(), "endpoints/a"));
    let status = hub.status();
    let me = &status["sidecars"][0];
    assert_eq!(me["mode"], "endpoints_by_service");
    assert_eq!(me["acked_version"], snap.as_str());
    assert_eq!(me["endpoints"]["b"]["acked_version"], vb.as_str());
    assert_eq!(me["endpoints"]["a"]["nack"]["version"], va.as_str());
    assert!(me["endpoints"]["a"]["acked_version"].is_null());
    assert!(me["endpoints"]["b"]["nack"].is_null());
    let metrics = hub.metrics();
    assert!(
        metrics.contains("weft_cp_sidecars{state=\"in_sync\"} 0\n"),
        "{metrics}"
    );
    assert!(metrics.contains("weft_cp_sidecars_by_mode{mode=\"endpoints_by_service\"} 1\n"));
    assert!(metrics.contains("weft_cp_endpoint_subscriptions 2\n"));
    // Nothing is re-sent for the NACK: the same version would be NACKed again.
    push(&hub);
    assert!(take(&mut rx).endpoints.is_empty());
    // An ACK of a resource it never subscribed to is ignored, not an error.
    assert!(hub.ack(id, "v".into(), "endpoints/zzz"));
    assert!(!hub.ack(999, "v".into(), "endpoints/a"), "unknown stream");
}

#[test]
fn subscriptions_are_bounded() {
    let hub = hub();
    let (id, _rx) = register(&hub, "c", 1001, true, &[]);
    let many: Vec<String> = (0..MAX_SUBSCRIPTIONS + 100)
        .map(|i| format!("s{i}"))
        .collect();
    assert!(hub.subscribe(id, many));
    assert!(hub.subscribe(id, vec![String::new(), "y".repeat(300)]));
    let st = hub.lock();
    assert_eq!(st.sidecars[&id].subscribed.len(), MAX_SUBSCRIPTIONS);
}
