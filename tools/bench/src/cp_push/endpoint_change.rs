//! One endpoint change at N sidecars: one more sidecar of `svc-00` connects (a pod added),
//! and the control plane's own counters (`weft_cp_push_messages_total`,
//! `weft_cp_push_bytes_total`) say what that cost. With endpoints by service only the
//! sidecars calling `svc-00` ([`CALLS`] services' sidecars, `2N/50`) get a message, the
//! `Endpoints` of `svc-00`; with full snapshots every sidecar not of `svc-00` gets a whole
//! new snapshot listing every endpoint of the mesh.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::time::Instant;

use crate::mesh::fetch_metrics;

use super::control_plane::ControlPlane;
use super::fleet::*;
use super::policy::*;
use super::results::EndpointChange;

/// (snapshot messages, snapshot bytes, endpoints messages, endpoints bytes) so far.
async fn counters(cp: &ControlPlane) -> anyhow::Result<[u64; 4]> {
    let text = fetch_metrics(cp.admin).await?;
    let get = |name: &str, kind: &str| {
        metric_value(&text, &format!("{name}{{kind=\"{kind}\"}}"))
            .map(|v| v as u64)
            .with_context(|| format!("no {name}{{kind=\"{kind}\"}} in /metrics"))
    };
    Ok([
        get("weft_cp_push_messages_total", "snapshot")?,
        get("weft_cp_push_bytes_total", "snapshot")?,
        get("weft_cp_push_messages_total", "endpoints")?,
        get("weft_cp_push_bytes_total", "endpoints")?,
    ])
}

/// Connect one more sidecar of `svc-00` to a quiet control plane with `fleet` (N sidecars)
/// in sync, wait until every receiver ACKed what the change sent it, and read the cost.
pub(crate) async fn measure(
    cfg: &CpPushConfig,
    cp: &mut ControlPlane,
    fleet: &Fleet,
    n: usize,
    tls: &[Arc<ClientConfig>],
    server_name: &ServerName<'static>,
) -> anyhow::Result<EndpointChange> {
    let receivers: Vec<usize> = (0..n)
        .filter(|i| {
            let s = i % SERVICES;
            if cfg.by_service {
                callees(s).contains(&service_name(0))
            } else {
                s != 0
            }
        })
        .collect();
    let before = counters(cp).await?;
    let t0 = Instant::now();
    // The new pod calls nothing itself: what it is sent is only its own snapshot.
    let pod = Fleet::spawn(
        (n + (SERVICES - n % SERVICES) % SERVICES, 1),
        cp.listen,
        tls,
        server_name,
        (cfg.by_service, false),
    );
    let limit = t0 + CHANGE_TIMEOUT;
    let all_acked = loop {
        fleet.check()?;
        pod.check()?;
        cp.child.check_alive()?;
        let last = receivers
            .iter()
            .map(|&i| {
                let seen = lock(&fleet.seen[i]);
                if cfg.by_service {
                    seen.endpoint_acks
                        .iter()
                        .rev()
                        .find(|a| a.1 >= t0)
                        .map(|a| a.1)
                } else {
                    seen.acks.iter().rev().find(|a| a.1 >= t0).map(|a| a.1)
                }
            })
            .try_fold(t0, |acc, t| t.map(|t| acc.max(t)));
        if let Some(t) = last {
            break t;
        }
        if Instant::now() >= limit {
            bail!("endpoint change at {n}: not every receiver ACKed within {CHANGE_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    cp.wait_in_sync(n + 1, Duration::from_secs(30)).await?;
    let after = counters(cp).await?;
    drop(pod);
    let d = |k: usize| after[k].saturating_sub(before[k]);
    Ok(EndpointChange {
        receivers: receivers.len(),
        snapshot_messages: d(0),
        snapshot_bytes: d(1),
        endpoints_messages: d(2),
        endpoints_bytes: d(3),
        all_acked_ms: (all_acked - t0).as_secs_f64() * 1000.0,
    })
}
