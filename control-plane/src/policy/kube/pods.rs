//! Who owns a pod IP: the Pod store of the Kubernetes policy source, as the push asks when a
//! sidecar joins ([`crate::push::join`]).

use std::net::IpAddr;

use ::kube::runtime::reflector::Store;
use k8s_openapi::api::core::v1::Pod;

use crate::push::join::PodDirectory;

/// The Pod store of a [`KubeSource`](super::source::KubeSource), as a [`PodDirectory`]: a live pod is one in phase
/// `Pending` (a native sidecar joins while its pod initializes) or `Running`; a finished one
/// (`Succeeded`, `Failed`) no longer owns its IP, which may be another pod's by now.
#[derive(Clone)]
pub struct KubePods(Store<Pod>);

impl KubePods {
    /// The pods `store` holds.
    pub(super) fn new(store: Store<Pod>) -> Self {
        KubePods(store)
    }
}

impl PodDirectory for KubePods {
    fn live_pod(&self, ip: IpAddr, namespace: &str, account: &str) -> Option<String> {
        // Parsed, not compared as text: an IPv6 address has several spellings.
        let is = |a: &str| a.parse::<IpAddr>().ok() == Some(ip);
        self.0.state().iter().find_map(|pod| {
            let meta = &pod.metadata;
            let status = pod.status.as_ref()?;
            let live = matches!(status.phase.as_deref(), Some("Pending" | "Running"));
            let runs_as = pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.as_deref())
                .filter(|a| !a.is_empty())
                .unwrap_or("default");
            let has_ip = status.pod_ip.as_deref().is_some_and(is)
                || status.pod_ips.iter().flatten().any(|p| is(&p.ip));
            (live && has_ip && runs_as == account && meta.namespace.as_deref() == Some(namespace))
                .then(|| meta.name.clone().unwrap_or_default())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::kube::runtime::{reflector, watcher};

    fn pod(name: &str, account: &str, ip: &str, phase: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"serviceAccountName": account, "containers": []},
            "status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}]},
        }))
        .expect("pod")
    }

    #[test]
    fn a_live_pod_of_the_namespace_and_account_owns_its_ip() {
        let (store, mut writer) = reflector::store::<Pod>();
        for p in [
            pod("a", "orders", "10.1.0.1", "Pending"),
            pod("b", "orders", "10.1.0.2", "Running"),
            pod("c", "orders", "10.1.0.3", "Succeeded"),
            pod("d", "frontend", "10.1.0.4", "Running"),
            pod("e", "orders", "fd00::0:5", "Running"),
        ] {
            writer.apply_watcher_event(&watcher::Event::Apply(p));
        }
        let pods = KubePods::new(store);
        let owner = |ip: &str, ns: &str, sa: &str| pods.live_pod(ip.parse().expect("ip"), ns, sa);
        assert_eq!(owner("10.1.0.1", "shop", "orders").as_deref(), Some("a"));
        assert_eq!(owner("10.1.0.2", "shop", "orders").as_deref(), Some("b"));
        assert_eq!(owner("10.1.0.3", "shop", "orders"), None, "finished");
        assert_eq!(owner("10.1.0.4", "shop", "orders"), None, "another account");
        assert_eq!(
            owner("10.1.0.2", "other", "orders"),
            None,
            "another namespace"
        );
        assert_eq!(owner("fd00::5", "shop", "orders").as_deref(), Some("e"));
    }
}
