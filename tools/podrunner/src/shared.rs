//! What the runner and its pods share: the runner's settings, the node, and the registry of
//! pods the Services' names resolve to (each pod's hosts file is rewritten from it).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;

use crate::api::ClusterApi;
use crate::container::Tools;
use crate::images::Images;
use crate::net::{self, Node};

/// How the runner is set up.
pub struct RunnerOptions {
    /// The Kubernetes API (ConfigMaps, Secrets, tokens, Pod status).
    pub api: Arc<dyn ClusterApi>,
    /// Images → binaries.
    pub images: Images,
    /// `spec.nodeName` the pods see.
    pub node_name: String,
    /// Restart backoff: first wait and cap (the kubelet's are 10 s and 5 min; tests want less).
    pub backoff: (Duration, Duration),
    /// Restarts of one container before the runner gives up (a bound the kubelet lacks).
    pub max_restarts: u32,
    /// How often each pod's configMap, secret and projected volumes are read from the API
    /// again and updated in place when they changed (the kubelet's sync period, about a
    /// minute; tests want less). `None`: only on demand ([`PodHandle::sync_volumes`]).
    pub volume_sync: Option<Duration>,
}

impl RunnerOptions {
    /// Defaults: node `weft-node`, backoff 1 s doubling to 10 s, at most 5 restarts, volumes
    /// refreshed every 60 s.
    pub fn new(api: Arc<dyn ClusterApi>, images: Images) -> Self {
        RunnerOptions {
            api,
            images,
            node_name: "weft-node".into(),
            backoff: (Duration::from_secs(1), Duration::from_secs(10)),
            max_restarts: 5,
            volume_sync: Some(Duration::from_secs(60)),
        }
    }
}

/// A pod as the Services see it.
#[derive(Debug, Clone)]
pub(crate) struct Registered {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub ip: Ipv4Addr,
    pub ready: bool,
    pub hosts: PathBuf,
}

pub(crate) struct Inner {
    pub node: Node,
    pub tools: Tools,
    pub opts: RunnerOptions,
    pub scratch: tempfile::TempDir,
    pub pods: Mutex<BTreeMap<(String, String), Registered>>,
    pub services: Mutex<Vec<Service>>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    /// Records whether a pod is ready (for the Services' names) and rewrites the hosts files
    /// when that changed.
    pub fn set_ready(&self, namespace: &str, name: &str, ready: bool) {
        let changed = match lock(&self.pods).get_mut(&(namespace.to_string(), name.to_string())) {
            Some(p) if p.ready != ready => {
                p.ready = ready;
                true
            }
            _ => false,
        };
        if changed {
            self.refresh_hosts();
        }
    }

    /// Rewrites every pod's hosts file (in place: it is bind-mounted into the containers).
    pub fn refresh_hosts(&self) {
        let pods = lock(&self.pods).clone();
        let services = lock(&self.services).clone();
        let mut entries = Vec::new();
        for s in &services {
            let ns = s
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            let name = s.metadata.name.clone().unwrap_or_default();
            let Some(sel) = s
                .spec
                .as_ref()
                .and_then(|s| s.selector.clone())
                .filter(|s| !s.is_empty())
            else {
                // A Service without a selector whose clusterIP is set resolves to that address
                // (what kube-proxy would forward): how pods reach something outside them, such
                // as a control plane on the node's network.
                let ip = s
                    .spec
                    .as_ref()
                    .and_then(|s| s.cluster_ip.as_deref())
                    .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
                if let Some(ip) = ip {
                    entries.push((ns, name, vec![ip]));
                }
                continue;
            };
            let ips: Vec<Ipv4Addr> = pods
                .values()
                .filter(|p| {
                    p.ready
                        && p.namespace == ns
                        && sel.iter().all(|(k, v)| p.labels.get(k) == Some(v))
                })
                .map(|p| p.ip)
                .collect();
            entries.push((ns, name, ips));
        }
        for ((ns, name), p) in &pods {
            let text = net::hosts_file(name, ns, p.ip, &entries);
            // A failed write leaves the previous names; the next change rewrites it.
            let _ = std::fs::write(&p.hosts, text);
        }
    }
}
