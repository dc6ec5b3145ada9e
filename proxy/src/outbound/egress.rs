//! The egress stage: a captured connection to an address no mesh service has (a database
//! outside the mesh, a public API). By default it is passed through as plain TCP to the
//! address the app dialled (the sidecar's own connections are not captured, so this one goes
//! out directly); with `service.egress: deny` it is closed at once. Either way it is counted
//! per destination (`weft_tcp_*` with `direction="egress"`) and written to the access log.
//!
//! The destination label is the address (`ip:port`), for the first [`MAX_LABELS`] distinct
//! addresses a sidecar sees; later ones share the label `other`, so an app that dials many
//! addresses cannot grow the metrics without bound.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use pingora_core::protocols::Stream;
use tokio::net::TcpStream;
use tokio::time::timeout;
use weft_policy::wire::Egress;

use crate::store::Snapshot;
use crate::tcp;
use crate::telemetry::access_log::{AccessLog, Record};
use crate::telemetry::metrics::Metrics;

/// Distinct destination labels per sidecar; the rest are `other`.
pub const MAX_LABELS: usize = 64;

/// The label every destination past [`MAX_LABELS`] shares.
pub const OTHER: &str = "other";

/// The destination labels handed out so far.
#[derive(Debug, Default)]
pub struct Labels {
    seen: Mutex<HashSet<SocketAddr>>,
}

impl Labels {
    /// The label for `to`: its address while fewer than [`MAX_LABELS`] are in use.
    pub fn label(&self, to: SocketAddr) -> String {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(&to) || (seen.len() < MAX_LABELS && seen.insert(to)) {
            to.to_string()
        } else {
            OTHER.to_owned()
        }
    }
}

/// What egress needs besides the connection.
pub struct EgressCtx<'a> {
    /// The config in force.
    pub snap: Arc<Snapshot>,
    /// Where the counters are.
    pub metrics: &'a Metrics,
    /// The destination labels.
    pub labels: &'a Labels,
    /// The access log, when configured.
    pub access_log: Option<&'a AccessLog>,
}

/// Pass `client`'s connection through to `to`, or refuse it, as `snap` says.
pub async fn pass(client: Stream, to: SocketAddr, e: EgressCtx<'_>) {
    let label = e.labels.label(to);
    let started = Instant::now();
    let mut record = Record {
        time: Some(SystemTime::now()),
        direction: "egress",
        src_identity: e.snap.identity.clone(),
        route: Arc::from("egress"),
        method: http::Method::from_bytes(b"TCP").unwrap_or_default(),
        authority: http::HeaderValue::from_str(&to.to_string()).ok(),
        endpoint: Some(to),
        ..Record::default()
    };
    let flag = match e.snap.own.egress {
        Egress::Deny => Some("egress_denied"),
        Egress::Allow => match timeout(e.snap.connect_timeout, TcpStream::connect(to)).await {
            Ok(Ok(upstream)) => {
                let _ = upstream.set_nodelay(true);
                let (sent, received) = tcp::splice(
                    client,
                    upstream,
                    e.snap.idle_timeout,
                    e.metrics,
                    "egress",
                    &label,
                )
                .await;
                record.bytes_in = usize::try_from(sent).unwrap_or(usize::MAX);
                record.bytes_out = usize::try_from(received).unwrap_or(usize::MAX);
                None
            }
            Ok(Err(err)) => {
                log::info!("egress to {to}: {err}");
                Some("connect_failure")
            }
            Err(_) => {
                log::info!("egress to {to}: connect timed out");
                Some("timeout")
            }
        },
    };
    if let Some(flag) = flag {
        e.metrics
            .tcp_rejected
            .with_label_values(&["egress", &label, flag])
            .inc();
        log::debug!("egress to {to}: {flag}");
    }
    record.duration = started.elapsed();
    record.flags = vec![flag.unwrap_or("egress")];
    if let Some(log) = e.access_log {
        log.record(record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_addresses_until_the_cap_then_other() {
        let labels = Labels::default();
        let addr = |i: usize| SocketAddr::from(([192, 0, 2, 1], 1000 + i as u16));
        for i in 0..MAX_LABELS {
            assert_eq!(labels.label(addr(i)), addr(i).to_string());
        }
        assert_eq!(labels.label(addr(MAX_LABELS)), OTHER);
        // Addresses already labelled keep their label.
        assert_eq!(labels.label(addr(3)), addr(3).to_string());
    }
}
