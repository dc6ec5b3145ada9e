//! One writer among the replicas, where order matters (the policy history's sequence): a
//! `coordination.k8s.io/v1` Lease in the control plane's namespace.
//!
//! Each replica tries every third of the lease's duration: it takes the Lease when it is
//! missing, when it holds it (renewal) or when the holder's last renewal is older than the
//! duration (the holder died). Every write names the `resourceVersion` read, so of two
//! replicas taking an expired Lease at once one gets `409 Conflict` and stays a reader. A
//! replica counts itself the writer only until its last successful renewal plus the
//! duration, measured from *before* that renewal was sent, so two replicas never both believe
//! they hold it (up to clock skew between nodes, which the duration must exceed).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};

/// The Lease's name.
pub const LEASE_NAME: &str = "weft-control-plane-writer";
/// The Lease's duration unless configured otherwise.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);

/// Whether this replica is the writer now.
#[derive(Debug, Default)]
pub struct Leader {
    until: Mutex<Option<Instant>>,
}

impl Leader {
    /// Whether this replica holds the Lease now.
    pub fn is_leader(&self) -> bool {
        self.until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|u| Instant::now() < u)
    }

    /// Records the outcome of an attempt; whether this replica just became the writer.
    fn held_until(&self, until: Option<Instant>) -> bool {
        let was = self.is_leader();
        *self.until.lock().unwrap_or_else(|e| e.into_inner()) = until;
        self.is_leader() && !was
    }
}

/// Keeps trying to hold the Lease `LEASE_NAME` in `namespace` as `identity`, forever;
/// `acquired` runs (on a blocking thread) each time this replica becomes the writer.
pub async fn hold(
    client: kube::Client,
    namespace: String,
    identity: String,
    duration: Duration,
    leader: Arc<Leader>,
    acquired: Arc<dyn Fn() + Send + Sync>,
) {
    let api: kube::Api<Lease> = kube::Api::namespaced(client, &namespace);
    let period = (duration / 3).max(Duration::from_millis(100));
    loop {
        let sent = Instant::now();
        let held = tokio::time::timeout(period, try_hold(&api, &identity, duration)).await;
        let until = match held {
            Ok(Ok(true)) => Some(sent + duration),
            Ok(Ok(false)) => None,
            Ok(Err(e)) => {
                log::warn!("Lease {namespace}/{LEASE_NAME}: {e}");
                None
            }
            Err(_) => None,
        };
        if leader.held_until(until) {
            log::info!(
                "holding Lease {namespace}/{LEASE_NAME} as {identity}: writing the shared history"
            );
            let acquired = acquired.clone();
            let _ = tokio::task::spawn_blocking(move || acquired()).await;
        }
        tokio::time::sleep(period.saturating_sub(sent.elapsed())).await;
    }
}

/// One attempt: whether `identity` holds the Lease after it.
async fn try_hold(
    api: &kube::Api<Lease>,
    identity: &str,
    duration: Duration,
) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let seconds = i32::try_from(duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let current = api.get_opt(LEASE_NAME).await?;
    let spec = |acquired: Option<MicroTime>, transitions: i32| LeaseSpec {
        holder_identity: Some(identity.to_owned()),
        lease_duration_seconds: Some(seconds),
        acquire_time: acquired.or(Some(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    };
    let pp = PostParams::default();
    let Some(lease) = current else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(LEASE_NAME.to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(spec(None, 0)),
        };
        return match api.create(&pp, &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let old = lease.spec.clone().unwrap_or_default();
    let mine = old.holder_identity.as_deref() == Some(identity);
    let expired = old.renew_time.as_ref().is_none_or(|r| {
        let held = i64::from(old.lease_duration_seconds.unwrap_or(seconds));
        r.0.as_second().saturating_add(held) < now.as_second()
    });
    if !mine && !expired {
        return Ok(false);
    }
    let transitions = old.lease_transitions.unwrap_or(0) + i32::from(!mine);
    let acquired = if mine { old.acquire_time.clone() } else { None };
    let renewed = Lease {
        metadata: lease.metadata.clone(),
        spec: Some(spec(acquired, transitions)),
    };
    match api.replace(LEASE_NAME, &pp, &renewed).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
