//! Which Kubernetes Services are mesh services: those whose EndpointSlices name pods running
//! the sidecar, with those pods' addresses, labels and identity (the mapping's first step).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use weft_policy::wire;

use super::{
    has_sidecar, Kind, ObjectKey, Objects, CLUSTER_DOMAIN, NOISY_LABELS, PORT_ANNOTATION,
    PROTOCOL_ANNOTATION, SERVICE_NAME_LABEL, SIDECAR_INBOUND_PORT,
};

/// The mesh services: Services whose EndpointSlices name pods running the sidecar.
// Long (about 155 lines): the join of Services, EndpointSlices and Pods is one loop whose
// steps (ready pods, ports, protocol, identity) each feed the next.
pub(super) fn discover(objects: &Objects, trust_domain: &str) -> Vec<(ObjectKey, wire::Service)> {
    let pods: HashMap<(&str, &str), &Pod> = objects
        .pods
        .iter()
        .filter_map(|p| {
            Some((
                (
                    p.metadata.namespace.as_deref()?,
                    p.metadata.name.as_deref()?,
                ),
                p,
            ))
        })
        .collect();
    let mut slices: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for s in &objects.endpoint_slices {
        let (Some(ns), Some(svc)) = (
            s.metadata.namespace.as_deref(),
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                .map(String::as_str),
        ) else {
            continue;
        };
        slices.entry((ns, svc)).or_default().push(s);
    }
    let mut out = Vec::new();
    for ks in &objects.services {
        let (Some(ns), Some(name)) = (
            ks.metadata.namespace.as_deref(),
            ks.metadata.name.as_deref(),
        ) else {
            continue;
        };
        let spec = ks.spec.as_ref();
        if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            continue;
        }
        // Service accounts of the mesh pods (ready ones count first) and ready endpoints.
        let mut ready_accounts: BTreeMap<String, usize> = BTreeMap::new();
        let mut all_accounts: BTreeMap<String, usize> = BTreeMap::new();
        let mut endpoints: Vec<wire::Endpoint> = Vec::new();
        let mut seen = BTreeSet::new();
        for slice in slices.get(&(ns, name)).into_iter().flatten() {
            for ep in &slice.endpoints {
                let Some(pod) = ep
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| r.name.as_deref())
                    .and_then(|pod| pods.get(&(ns, pod)))
                else {
                    continue;
                };
                if !has_sidecar(pod) {
                    continue;
                }
                let account = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.service_account_name.clone())
                    .filter(|a| !a.is_empty())
                    .unwrap_or_else(|| "default".to_owned());
                // The API's own rule: a missing `ready` means ready.
                let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                *all_accounts.entry(account.clone()).or_default() += 1;
                if !ready {
                    continue;
                }
                *ready_accounts.entry(account).or_default() += 1;
                // Consumers use the first address only (the others are the same pod).
                let Some(ip) = ep.addresses.first() else {
                    continue;
                };
                let address = if ip.contains(':') {
                    format!("[{ip}]:{SIDECAR_INBOUND_PORT}")
                } else {
                    format!("{ip}:{SIDECAR_INBOUND_PORT}")
                };
                if !seen.insert(address.clone()) {
                    continue;
                }
                let labels = pod
                    .metadata
                    .labels
                    .iter()
                    .flatten()
                    .filter(|(k, _)| !NOISY_LABELS.contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                endpoints.push(wire::Endpoint { address, labels });
            }
        }
        if all_accounts.is_empty() {
            continue; // no pod of it runs the sidecar: not a mesh service
        }
        // One identity per service: the account most of its (ready) pods run as, ties to the
        // first name. Pods under another account fail the callers' identity check, which is
        // what a misconfigured rollout should do.
        let counts = if ready_accounts.is_empty() {
            &all_accounts
        } else {
            &ready_accounts
        };
        let account = counts
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map(|(a, _)| a.clone())
            .unwrap_or_default();
        endpoints.sort_by(|a, b| a.address.cmp(&b.address));
        let annotations = ks.metadata.annotations.as_ref();
        let ports = spec.and_then(|s| s.ports.as_ref());
        let protocol = annotations
            .and_then(|a| a.get(PROTOCOL_ANNOTATION))
            .cloned()
            .or_else(|| {
                ports
                    .and_then(|p| p.iter().find_map(|p| p.app_protocol.as_deref()))
                    .map(app_protocol)
            });
        let mut port = annotations
            .and_then(|a| a.get(PORT_ANNOTATION))
            .and_then(|p| p.trim().parse::<u16>().ok());
        if port.is_none() && protocol.as_deref() == Some("tcp") {
            port = ports
                .and_then(|p| p.first())
                .and_then(|p| u16::try_from(p.port).ok());
        }
        let full = format!("{name}.{ns}");
        let opaque_ports = super::opaque::service_opaque_ports(
            &full,
            annotations
                .and_then(|a| a.get(super::opaque::OPAQUE_PORTS_ANNOTATION))
                .map(String::as_str),
            ports.map(Vec::as_slice).unwrap_or_default(),
        );
        let mut hosts = vec![
            format!("{full}.svc"),
            format!("{full}.svc.{CLUSTER_DOMAIN}"),
        ];
        // The Service's virtual IPs: a captured connection to `<clusterIP>:<port>` (an
        // unmodified client that resolved the name through cluster DNS) names this service
        // by its original destination. Headless Services (`None`) have none.
        let cluster_ips = spec
            .and_then(|s| s.cluster_ips.clone())
            .filter(|ips| !ips.is_empty())
            .or_else(|| spec.and_then(|s| s.cluster_ip.clone()).map(|ip| vec![ip]))
            .unwrap_or_default();
        for ip in cluster_ips {
            if let Ok(ip) = ip.parse::<std::net::IpAddr>() {
                hosts.push(ip.to_string());
            }
        }
        out.push((
            ObjectKey {
                kind: Kind::Service,
                namespace: ns.to_owned(),
                name: name.to_owned(),
            },
            wire::Service {
                hosts,
                name: full,
                identity: format!("spiffe://{trust_domain}/ns/{ns}/sa/{account}"),
                protocol,
                port,
                load_balancer: None,
                endpoints,
                retry_budget: None,
                outlier_detection: None,
                limits: None,
                escaped_slashes: None,
                opaque_ports,
            },
        ));
    }
    out
}

/// The mesh protocol of a Service port's `appProtocol`: unknown values are HTTP, the mesh's
/// default (`kubernetes.io/ws`, `https` to the app are still HTTP to the sidecar).
fn app_protocol(p: &str) -> String {
    match p.to_ascii_lowercase().as_str() {
        "grpc" | "kubernetes.io/h2c" | "h2c" => "grpc",
        "tcp" => "tcp",
        _ => "http",
    }
    .to_owned()
}
