//! Kubernetes as the policy source: the policy resources ([`crds`]), the mapping from
//! Services, EndpointSlices, Pods and those resources to the mesh policy ([`mapping`], pure),
//! the watching source behind [`crate::policy::source::PolicySource`] ([`source::KubeSource`]),
//! which keeps an invalidly edited resource's last good version in force ([`last_good`]),
//! and its pods as the owners of sidecars' addresses ([`pods::KubePods`]); Gateway API routes
//! ([`gateway_api`]) join the routes.

pub mod crds;
pub mod gateway_api;
pub mod gateways;
pub mod last_good;
pub mod mapping;
mod objects;
mod options;
pub mod pods;
mod reflect;
pub mod source;
mod status_write;

/// The API client configuration every Kubernetes caller here uses (the policy source and the
/// TokenReview attestor): the kubeconfig at `kubeconfig` when given, else what
/// `kube::Config::infer` finds (the pod's service account in a cluster, else `KUBECONFIG`).
/// The error says which file or why inference failed.
pub async fn client_config(kubeconfig: Option<&std::path::Path>) -> Result<::kube::Config, String> {
    use ::kube::config::{KubeConfigOptions, Kubeconfig};
    match kubeconfig {
        Some(path) => {
            let file =
                Kubeconfig::read_from(path).map_err(|e| format!("{}: {e}", path.display()))?;
            ::kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|e| format!("{}: {e}", path.display()))
        }
        None => ::kube::Config::infer().await.map_err(|e| e.to_string()),
    }
}
