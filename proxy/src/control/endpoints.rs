//! Endpoints by service, the sidecar's side: with a control plane that agrees to
//! "endpoints-by-service" (`Snapshot.endpoints_separate`), the snapshot lists the services
//! without endpoints, and this sidecar gets the endpoints of the services it subscribed to as
//! `Endpoints` resources, each versioned, ACKed and NACKed on its own.
//!
//! A sidecar subscribes to a service when it first calls it: the request waits, at most
//! [`SUBSCRIBE_WAIT`], for the service's endpoints ([`Subscriptions::wait_for`]) and then goes
//! on with whatever is in force (no endpoints yet: the usual 503 `no_endpoint`). Services
//! with a dedicated outbound port or the TCP protocol are subscribed to at once (their port
//! is bound as soon as the snapshot is in force; a connection that comes before the endpoints
//! waits for them the same way, [`crate::tcp::with_endpoints`]), and so are, after a restart, the
//! services the persisted policy had endpoints for. A subscription lasts for the process's
//! life and is named again in `Hello` after a reconnect.
//!
//! The policy in force is the last good snapshot with the last good endpoints of each
//! service merged in; a refused `Endpoints` (NACK) leaves that service's previous list, and
//! every other resource, in force.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use weft_policy::wire::{Endpoint, PolicySnapshot};

/// The capability announced in `Hello.capabilities`.
pub const CAPABILITY: &str = "endpoints-by-service";
/// The prefix of an endpoints resource in `Ack.resource` / `Nack.resource`.
pub const RESOURCE_PREFIX: &str = "endpoints/";
/// Longest a request waits for the endpoints of a service it is the first to call.
pub const SUBSCRIBE_WAIT: Duration = Duration::from_secs(3);

#[derive(Debug, Default)]
struct State {
    /// The control plane sends endpoints separately (its last snapshot said so).
    separate: bool,
    /// Services subscribed to.
    wanted: BTreeSet<String>,
    /// Of those, the ones not yet told to the control plane on this stream.
    unsent: BTreeSet<String>,
    /// The last good endpoints of each service: version and list.
    received: BTreeMap<String, (String, Vec<Endpoint>)>,
    /// The last good snapshot, as sent (without endpoints).
    base: Option<PolicySnapshot>,
}

/// The subscriptions and the last good endpoints; one per sidecar (in its store).
#[derive(Debug)]
pub struct Subscriptions {
    state: Mutex<State>,
    /// Wakes the control-plane stream to send new subscriptions.
    wake: Notify,
    /// Bumped whenever a service's endpoints are put in force.
    arrived: watch::Sender<u64>,
}

impl Default for Subscriptions {
    fn default() -> Self {
        Subscriptions {
            state: Mutex::default(),
            wake: Notify::new(),
            arrived: watch::Sender::new(0),
        }
    }
}

impl Subscriptions {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Subscribe to `services` (e.g. those the persisted policy had endpoints for); returns
    /// whether any is new.
    pub fn want(&self, services: impl IntoIterator<Item = String>) -> bool {
        let mut st = self.lock();
        let mut added = false;
        for s in services {
            if st.wanted.insert(s.clone()) {
                st.unsent.insert(s);
                added = true;
            }
        }
        drop(st);
        if added {
            self.wake.notify_one();
        }
        added
    }

    /// A new stream: every subscription goes in its `Hello` (returned), none is unsent.
    pub fn for_hello(&self) -> Vec<String> {
        let mut st = self.lock();
        st.unsent.clear();
        st.wanted.iter().cloned().collect()
    }

    /// Wait until there are subscriptions the control plane has not been told of; returns
    /// them (for a `Subscribe`).
    pub async fn unsent(&self) -> Vec<String> {
        loop {
            let notified = self.wake.notified();
            {
                let mut st = self.lock();
                if !st.unsent.is_empty() {
                    return std::mem::take(&mut st.unsent).into_iter().collect();
                }
            }
            notified.await;
        }
    }

    /// The policy to put in force for a snapshot `policy` as received: with `separate`, its
    /// services with the last good endpoints merged in; otherwise as it is.
    pub fn merged(&self, policy: &PolicySnapshot, separate: bool) -> PolicySnapshot {
        let st = self.lock();
        if !separate {
            return policy.clone();
        }
        merge(policy, &st.received)
    }

    /// A snapshot was put in force: remember it (the base the endpoints are merged into).
    /// With `separate`, services whose connections cannot wait for a subscription are
    /// subscribed to now.
    pub fn snapshot_applied(&self, policy: PolicySnapshot, separate: bool) {
        let eager: Vec<String> = policy
            .services
            .iter()
            .filter(|s| s.port.is_some() || s.protocol.as_deref() == Some("tcp"))
            .map(|s| s.name.clone())
            .collect();
        {
            let mut st = self.lock();
            st.separate = separate;
            st.base = separate.then_some(policy);
        }
        if separate {
            self.want(eager);
        }
    }

    /// The policy to put in force for `service`'s endpoints `list`: the last good snapshot
    /// with them in place of the service's previous ones. `None` before any snapshot.
    pub fn merged_with(&self, service: &str, list: &[Endpoint]) -> Option<PolicySnapshot> {
        let st = self.lock();
        let base = st.base.as_ref()?;
        let mut received = st.received.clone();
        received.insert(service.to_owned(), (String::new(), list.to_vec()));
        Some(merge(base, &received))
    }

    /// `service`'s endpoints `version` are in force (or, before any snapshot, kept for it).
    pub fn endpoints_applied(&self, service: &str, version: &str, list: Vec<Endpoint>) {
        self.lock()
            .received
            .insert(service.to_owned(), (version.to_owned(), list));
        self.arrived.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Whether the control plane sends endpoints separately.
    pub fn separate(&self) -> bool {
        self.lock().separate
    }

    /// The version of `service`'s endpoints in force, if any were received.
    pub fn version(&self, service: &str) -> Option<String> {
        self.lock().received.get(service).map(|r| r.0.clone())
    }

    /// A request for `service`, which has no endpoints in force: with endpoints by service
    /// and none received for it yet, subscribe and wait, at most `limit`, until they are in
    /// force. True when they arrived (the caller reloads its config).
    pub async fn wait_for(&self, service: &str, limit: Duration) -> bool {
        self.subscribe_and_wait(vec![service.to_owned()], limit)
            .await
    }

    /// A captured connection to an address no service in force claims: with endpoints by
    /// service, the address may be a pod of a service whose endpoints were never asked for
    /// (only endpoints map a pod IP to its service). Subscribe to every one of `services` not
    /// received yet and wait, at most `limit`, until all are in force. True when any arrived
    /// (the caller looks the address up again). Once done, later calls return at once.
    pub async fn wait_for_all(&self, services: Vec<String>, limit: Duration) -> bool {
        self.subscribe_and_wait(services, limit).await
    }

    /// The one bounded wait of [`wait_for`](Self::wait_for) and
    /// [`wait_for_all`](Self::wait_for_all): with endpoints by service, subscribe to those of
    /// `services` not received yet and wait, at most `limit`, until all of them are in force.
    /// True when any of them arrived; false at once when none was missing (or endpoints come
    /// with the snapshot), so a later call for the same services never waits again.
    async fn subscribe_and_wait(&self, services: Vec<String>, limit: Duration) -> bool {
        // Subscribed to before the check, so an arrival between the check and the wait
        // still wakes it.
        let mut arrived = self.arrived.subscribe();
        let missing: Vec<String> = {
            let st = self.lock();
            if !st.separate {
                return false;
            }
            services
                .into_iter()
                .filter(|s| !st.received.contains_key(s))
                .collect()
        };
        if missing.is_empty() {
            return false;
        }
        self.want(missing.iter().cloned());
        let all_in = || {
            let st = self.lock();
            missing.iter().all(|s| st.received.contains_key(s))
        };
        let wait = async {
            while !all_in() {
                if arrived.changed().await.is_err() {
                    return;
                }
            }
        };
        // Whatever arrived within the limit is in force either way; the caller looks again.
        let _all = tokio::time::timeout(limit, wait).await;
        let st = self.lock();
        missing.iter().any(|s| st.received.contains_key(s))
    }
}

/// `base` with each service's endpoints from `received` (services not received: none).
fn merge(
    base: &PolicySnapshot,
    received: &BTreeMap<String, (String, Vec<Endpoint>)>,
) -> PolicySnapshot {
    let mut out = base.clone();
    for s in &mut out.services {
        s.endpoints = received
            .get(&s.name)
            .map(|r| r.1.clone())
            .unwrap_or_default();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> PolicySnapshot {
        serde_json::from_str(
            r#"{"version": "p1", "services": [
                {"name": "a", "identity": "spiffe://weft.local/ns/default/sa/a"},
                {"name": "b", "identity": "spiffe://weft.local/ns/default/sa/b"},
                {"name": "t", "identity": "spiffe://weft.local/ns/default/sa/t", "protocol": "tcp"}]}"#,
        )
        .expect("policy")
    }

    fn ep(address: &str) -> Endpoint {
        Endpoint {
            address: address.into(),
            labels: BTreeMap::new(),
        }
    }

    #[tokio::test]
    async fn a_first_call_subscribes_and_waits_for_the_endpoints() {
        let subs = std::sync::Arc::new(Subscriptions::default());
        // Full snapshots: nothing to wait for.
        assert!(!subs.wait_for("a", Duration::from_secs(5)).await);
        subs.snapshot_applied(policy(), true);
        // The TCP service was subscribed to at once.
        assert_eq!(subs.unsent().await, ["t"]);
        let waiter = {
            let subs = subs.clone();
            tokio::spawn(async move { subs.wait_for("a", Duration::from_secs(10)).await })
        };
        // The stream learns of the subscription, then the endpoints arrive.
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(10), subs.unsent())
                .await
                .expect("told"),
            ["a"]
        );
        let merged = subs.merged_with("a", &[ep("127.0.0.1:9")]).expect("base");
        assert_eq!(merged.services[0].endpoints, [ep("127.0.0.1:9")]);
        assert!(merged.services[1].endpoints.is_empty());
        subs.endpoints_applied("a", "v1", vec![ep("127.0.0.1:9")]);
        assert!(waiter.await.expect("task"), "the request went on with them");
        // Known now (even an empty list would be): no second wait.
        assert!(!subs.wait_for("a", Duration::from_secs(5)).await);
        // A reconnect names every subscription in Hello.
        assert_eq!(subs.for_hello(), ["a", "t"]);
    }

    #[tokio::test]
    async fn the_wait_is_bounded() {
        let subs = Subscriptions::default();
        subs.snapshot_applied(policy(), true);
        let started = std::time::Instant::now();
        assert!(!subs.wait_for("b", Duration::from_millis(50)).await);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_captured_address_nobody_claims_subscribes_to_every_service_once() {
        let subs = std::sync::Arc::new(Subscriptions::default());
        let all = || vec!["a".to_owned(), "b".to_owned(), "t".to_owned()];
        // Full snapshots: every endpoint is already known.
        assert!(!subs.wait_for_all(all(), Duration::from_secs(5)).await);
        subs.snapshot_applied(policy(), true);
        assert_eq!(subs.unsent().await, ["t"]);
        let waiter = {
            let subs = subs.clone();
            tokio::spawn(async move { subs.wait_for_all(all(), Duration::from_secs(3)).await })
        };
        // The stream is told of the two not asked for yet (t already was).
        assert_eq!(subs.unsent().await, ["a", "b"]);
        subs.endpoints_applied("a", "v1", vec![ep("10.0.0.1:8080")]);
        subs.endpoints_applied("t", "v1", vec![ep("10.0.0.2:9000")]);
        subs.endpoints_applied("b", "v1", vec![]);
        assert!(
            waiter.await.expect("task"),
            "the lookup goes again with them"
        );
        // Every service is known now: a second unknown address does not wait.
        assert!(!subs.wait_for_all(all(), Duration::from_secs(3)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_for_every_service_is_bounded_and_keeps_what_arrived() {
        let subs = std::sync::Arc::new(Subscriptions::default());
        subs.snapshot_applied(policy(), true);
        // Nothing arrives: false once the limit passes (virtual time).
        let ab = vec!["a".to_owned(), "b".to_owned()];
        assert!(!subs.wait_for_all(ab.clone(), Duration::from_secs(3)).await);
        // One of two arrives, the other never: at the limit the lookup is worth another try.
        let waiter = {
            let subs = subs.clone();
            tokio::spawn(async move { subs.wait_for_all(ab, Duration::from_secs(3)).await })
        };
        tokio::task::yield_now().await;
        subs.endpoints_applied("a", "v1", vec![ep("10.0.0.1:8080")]);
        assert!(waiter.await.expect("task"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_shared_wait_returns_at_once_when_nothing_is_missing() {
        let subs = Subscriptions::default();
        subs.snapshot_applied(policy(), true);
        assert_eq!(subs.unsent().await, ["t"]);
        subs.endpoints_applied("a", "v1", vec![ep("10.0.0.1:8080")]);
        let started = tokio::time::Instant::now();
        // No service, or only received ones (named twice): no subscription, no wait.
        assert!(!subs.wait_for_all(vec![], Duration::from_secs(3)).await);
        let aa = vec!["a".to_owned(), "a".to_owned()];
        assert!(!subs.wait_for_all(aa, Duration::from_secs(3)).await);
        assert!(!subs.wait_for("a", Duration::from_secs(3)).await);
        assert_eq!(started.elapsed(), Duration::ZERO, "waited on virtual time");
        assert_eq!(subs.for_hello(), ["t"], "subscribed to nothing new");
    }

    #[test]
    fn a_new_snapshot_keeps_the_last_good_endpoints_of_each_service() {
        let subs = Subscriptions::default();
        subs.snapshot_applied(policy(), true);
        subs.endpoints_applied("a", "v1", vec![ep("127.0.0.1:9")]);
        subs.endpoints_applied("b", "v1", vec![ep("127.0.0.1:10")]);
        // A refused list for b is simply never recorded: the merge keeps v1.
        let mut next = policy();
        next.version = "p2".into();
        let merged = subs.merged(&next, true);
        assert_eq!(merged.services[0].endpoints, [ep("127.0.0.1:9")]);
        assert_eq!(merged.services[1].endpoints, [ep("127.0.0.1:10")]);
        assert_eq!(subs.version("b").as_deref(), Some("v1"));
        // A full snapshot is taken as it is.
        assert_eq!(subs.merged(&next, false), next);
    }
}
