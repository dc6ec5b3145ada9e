//! The control-plane push scenario's inputs: its settings ([`CpPushConfig`]), the policy
//! directory it writes (services and the routes a change rewrites) and small readers of
//! `/proc` status and the control plane's metrics.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use weft_policy::wire::{Backend, Match, MeshFile, PathMatch, Retry, Route, Service};

/// The mesh's trust domain.
pub const TRUST_DOMAIN: &str = "weft.local";
/// Services in the benchmark's policy; sidecar `i` belongs to service `i % SERVICES`.
pub const SERVICES: usize = 50;
/// Sidecar counts measured by default.
pub const DEFAULT_SIDECARS: [usize; 3] = [100, 1000, 10_000];
/// Services each simulated sidecar calls (with endpoints by service: subscribes to), the
/// next ones after its own: service `s` is called by the sidecars of `s - 1 … s - CALLS`.
pub const CALLS: usize = 2;
/// The targets: every sidecar ACKed within this long after the change …
pub const TARGET_ACK: Duration = Duration::from_secs(5);
/// … and the control plane's RSS growth per connected sidecar under this many KiB.
pub const TARGET_KIB_PER_SIDECAR: f64 = 100.0;
/// Services sidecar-of-service `s` calls.
pub fn callees(s: usize) -> Vec<String> {
    (1..=CALLS)
        .map(|k| service_name((s + k) % SERVICES))
        .collect()
}
/// Limit on one sidecar's TCP + TLS + stream set-up (a storm of 1000 on one CPU takes a while).
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Limit on the whole connect storm, until all are in sync.
pub(crate) const STORM_TIMEOUT: Duration = Duration::from_secs(300);
/// Limit on every sidecar ACKing a policy change.
pub(crate) const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the control plane's metrics are polled while waiting.
pub(crate) const POLL: Duration = Duration::from_millis(20);
/// Name of the policy file with the routes (rewritten by each change).
pub(crate) const ROUTES_FILE: &str = "routes.yaml";

/// What to run.
#[derive(Debug, Clone)]
pub struct CpPushConfig {
    /// Sidecar counts, in order.
    pub sidecars: Vec<usize>,
    /// Runs per sidecar count (a fresh control plane each).
    pub runs: usize,
    /// Policy changes per run.
    pub changes: usize,
    /// CPU the control plane is pinned to.
    pub server_core: usize,
    /// CPU this process (the simulated sidecars) is pinned to.
    pub client_core: usize,
    /// The `weft-control-plane` binary.
    pub binary: PathBuf,
    /// The sidecars announce "endpoints-by-service" and subscribe to the services they call
    /// ([`CALLS`]); false: full snapshots, as sidecars before it.
    pub by_service: bool,
}

/// Name of service `i`.
pub fn service_name(i: usize) -> String {
    format!("svc-{i:02}")
}

/// SPIFFE identity of service `i`.
pub fn service_identity(i: usize) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/default/sa/{}", service_name(i))
}

/// `services.yaml`: every service with its identity (endpoints come from the sidecars).
pub fn services_file() -> MeshFile {
    MeshFile {
        services: (0..SERVICES)
            .map(|i| Service {
                name: service_name(i),
                hosts: Vec::new(),
                identity: service_identity(i),
                protocol: None,
                port: None,
                load_balancer: None,
                endpoints: Vec::new(),
                retry_budget: None,
                outlier_detection: None,
                limits: None,
                escaped_slashes: None,
                opaque_ports: None,
            })
            .collect(),
        routes: Vec::new(),
        authorization: Vec::new(),
    }
}

/// `routes.yaml`: one route per service, split between subsets `version: v1` and `v2`; the
/// routes to services 0 and 1 send `canary` percent to v2, the others 10.
pub fn routes_file(canary: u32) -> MeshFile {
    let backend = |version: &str, weight: u32| Backend {
        subset: BTreeMap::from([("version".to_owned(), version.to_owned())]),
        weight: Some(weight),
    };
    let route = |i: usize| {
        let v2 = if i < 2 { canary } else { 10 };
        Route {
            name: format!("{}-api", service_name(i)),
            service: service_name(i),
            from: None,
            matches: Match {
                path: Some(PathMatch {
                    exact: None,
                    prefix: Some("/api".to_owned()),
                    regex: None,
                }),
                method: None,
                headers: Vec::new(),
            },
            backends: vec![backend("v1", 100 - v2), backend("v2", v2)],
            timeout: Some("2s".to_owned()),
            rewrite: None,
            request_headers: None,
            retry: Some(Retry {
                on: Some(vec![
                    "connect-failure".to_owned(),
                    "refused-stream".to_owned(),
                ]),
                attempts: Some(2),
                ..Default::default()
            }),
            rate_limit: None,
            fault: None,
        }
    };
    MeshFile {
        services: Vec::new(),
        routes: (0..SERVICES).map(route).collect(),
        authorization: Vec::new(),
    }
}

/// A policy-directory file as the YAML the control plane reads.
pub fn to_yaml(file: &MeshFile) -> anyhow::Result<String> {
    serde_yaml::to_string(file).context("serializing a policy file")
}

/// The canary weight of change `k` (from 1): 20, 30, … 90, 10, 20, …; change 0 is the
/// initial 10.
pub fn canary_of_change(k: usize) -> u32 {
    // k % 9 < 9, so this fits.
    10 + 10 * u32::try_from(k % 9).unwrap_or(0)
}

/// Writes `text` to `dir/name` atomically (write a dot file, then rename), as operators'
/// tooling should; the control plane never reads half a file.
pub fn write_atomically(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(name)).with_context(|| format!("renaming {}", tmp.display()))
}

/// `VmRSS` and `VmHWM` (KiB) from the text of `/proc/PID/status`.
pub fn parse_rss_hwm_kib(status: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].split_whitespace().next()?.parse().ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// `VmRSS` and `VmHWM` of `pid`, KiB.
pub(crate) fn rss_hwm_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    parse_rss_hwm_kib(&status).with_context(|| format!("no VmRSS/VmHWM for pid {pid}"))
}

/// The value of the sample `name` (with its labels, exactly) in Prometheus text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The `q` quantile (nearest rank) of sorted `v`.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn policy_has_a_route_per_service_and_changes_two() {
        let s = services_file();
        assert_eq!(s.services.len(), SERVICES);
        assert_eq!(s.services[3].identity, service_identity(3));
        let (a, b) = (routes_file(10), routes_file(20));
        assert_eq!(a.routes.len(), SERVICES);
        assert!(a.routes.iter().all(|r| r.backends.len() == 2));
        let differing: Vec<usize> = (0..SERVICES)
            .filter(|&i| a.routes[i] != b.routes[i])
            .collect();
        assert_eq!(differing, vec![0, 1], "the v1 and v2 weights of two routes");
        assert_eq!(b.routes[0].backends[1].weight, Some(20));
        // What is written is what the control plane's parser reads back.
        let back: MeshFile = serde_yaml::from_str(&to_yaml(&b).unwrap()).unwrap();
        assert_eq!(back, b);
        assert_eq!(canary_of_change(0), 10);
        assert_eq!(canary_of_change(1), 20);
        assert_eq!(canary_of_change(9), 10);
    }

    #[test]
    fn parses_status_metrics_and_quantiles() {
        let status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(parse_rss_hwm_kib(status), Some((1024, 2048)));
        let text =
            "weft_cp_sidecars{state=\"connected\"} 12\nweft_cp_sidecars{state=\"in_sync\"} 7\n";
        assert_eq!(
            metric_value(text, "weft_cp_sidecars{state=\"in_sync\"}"),
            Some(7.0)
        );
        assert_eq!(metric_value(text, "weft_cp_sidecars{state=\"x\"}"), None);
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(500.0));
        assert_eq!(quantile(&v, 0.99), Some(990.0));
        assert_eq!(quantile(&v, 1.0), Some(1000.0));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
