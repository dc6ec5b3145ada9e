//! The runner's pods living in the stand-in API server (`weft-kube-standin`), as a kubelet's
//! live in the cluster's: [`StandinApi`] implements [`ClusterApi`] over it (ConfigMaps and
//! Secrets read from it, projected tokens minted by its TokenRequest so its TokenReview
//! authenticates them, Pod status written to its `/status`), and plays the EndpointSlice
//! controller for the Services it holds: after every Pod status write or deletion step, each
//! selecting Service's slice lists the matching pods that have an IP, with the conditions the
//! controller derives (`ready` = Ready and not terminating, `serving` = Ready, `terminating` =
//! `deletionTimestamp` set).
//!
//! [`StandinApi::schedule`] creates a Pod bound to the node and starts it on a [`Runner`];
//! [`StandinApi::delete`] deletes it the way the API server and kubelet do together: marked
//! (endpoints turn terminating), SIGTERM and the grace period, then removed.
//!
//! The stand-in is called in-process (it runs in the test's process), one call per method,
//! with the API server's semantics for each (status subresource, graceful deletion).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use k8s_openapi::api::authentication::v1::{TokenRequestSpec, TokenRequestStatus};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodStatus, Secret};
use serde_json::{json, Value};
use weft_kube_standin::ApiServer;

use crate::api::{ApiError, ClusterApi};
use crate::{DeleteReport, Error, PodHandle, Runner};

/// Who manages the slices [`StandinApi`] writes (the real controller's name, so readers that
/// filter on it see them as a cluster's).
const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

/// [`ClusterApi`] over an in-process stand-in API server, plus its EndpointSlice controller.
pub struct StandinApi {
    /// Set once ([`StandinApi::attach`]): a stand-in started inside the runner's node network
    /// exists only after the runner does.
    api: OnceLock<Arc<ApiServer>>,
    node_name: String,
    /// One slice sync at a time: two interleaved syncs could write an older view last.
    sync: tokio::sync::Mutex<()>,
}

fn api_err(e: impl std::fmt::Display) -> ApiError {
    ApiError(e.to_string())
}

impl StandinApi {
    /// Serves `api` to pods of the node `node_name` (their `spec.nodeName`).
    pub fn new(api: Arc<ApiServer>, node_name: &str) -> Arc<Self> {
        let me = Self::unattached(node_name);
        me.attach(api);
        me
    }

    /// Not serving yet: every call fails until [`StandinApi::attach`] (for a stand-in started on
    /// the runner's node, after the runner).
    pub fn unattached(node_name: &str) -> Arc<Self> {
        Arc::new(StandinApi {
            api: OnceLock::new(),
            node_name: node_name.to_owned(),
            sync: tokio::sync::Mutex::new(()),
        })
    }

    /// Serves `api` from now on (a second call changes nothing).
    pub fn attach(&self, api: Arc<ApiServer>) {
        let _ = self.api.set(api);
    }

    fn api(&self) -> Result<&ApiServer, ApiError> {
        self.api
            .get()
            .map(|a| a.as_ref())
            .ok_or_else(|| ApiError("no API server attached yet".into()))
    }

    /// The stand-in. Panics before [`StandinApi::attach`] (a test's setup error).
    pub fn server(&self) -> &ApiServer {
        match self.api.get() {
            Some(api) => api,
            None => panic!("StandinApi::server before attach"),
        }
    }

    /// Creates `pod` in the API as the scheduler leaves it (bound to this node: `nodeName`
    /// set), and starts the stored Pod (its server-set uid, which tokens are bound to) on
    /// `runner`.
    pub async fn schedule(&self, runner: &Runner, mut pod: Pod) -> Result<PodHandle, Error> {
        let spec = pod
            .spec
            .as_mut()
            .ok_or_else(|| Error::Spec("pod has no spec".into()))?;
        spec.node_name = Some(self.node_name.clone());
        pod.metadata
            .namespace
            .get_or_insert_with(|| "default".into());
        pod.metadata.uid = None;
        pod.status = None;
        let mut value = serde_json::to_value(&pod).map_err(|e| Error::Spec(e.to_string()))?;
        value["kind"] = json!("Pod");
        value["apiVersion"] = json!("v1");
        let (ns, name) = (
            value["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            value["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        if name.is_empty() {
            return Err(Error::Spec("pod has no name".into()));
        }
        if self.api()?.try_get_in("Pod", &ns, &name).is_some() {
            return Err(Error::Spec(format!("pod {ns}/{name} already exists")));
        }
        let stored = self.api()?.put(value);
        let started = match serde_json::from_value::<Pod>(stored) {
            Ok(pod) => runner.start(pod).await,
            Err(e) => Err(Error::Spec(e.to_string())),
        };
        if started.is_err() {
            // Never started: nothing to wait for, as a kubelet's rejected pod is removed.
            let _ = self.api()?.delete_with("Pod", &ns, &name, true);
        }
        started
    }

    /// Deletes the pod of `handle` as a `kubectl delete pod` goes: the API marks it
    /// (`deletionTimestamp`; its endpoints turn terminating, no longer ready), the kubelet stops
    /// it within its grace period, then removes the object (its endpoints go).
    pub async fn delete(&self, handle: PodHandle) -> Result<DeleteReport, Error> {
        let (ns, name) = (handle.namespace().to_owned(), handle.name().to_owned());
        self.api()?
            .delete_with("Pod", &ns, &name, false)
            .map_err(api_err)?;
        self.sync_endpoints(&ns).await?;
        let report = handle.delete().await?;
        self.api()?
            .delete_with("Pod", &ns, &name, true)
            .map_err(api_err)?;
        self.sync_endpoints(&ns).await?;
        Ok(report)
    }

    /// Writes each selecting Service's EndpointSlice in `namespace` from the Pods the API holds
    /// (only those that changed).
    pub async fn sync_endpoints(&self, namespace: &str) -> Result<(), ApiError> {
        let _one = self.sync.lock().await;
        let api = self.api()?;
        let pods: Vec<Value> = api
            .all("Pod")
            .into_iter()
            .filter(|p| p["metadata"]["namespace"] == namespace)
            .collect();
        for svc in api.all("Service") {
            if svc["metadata"]["namespace"] != namespace {
                continue;
            }
            let Some(slice) = desired_slice(&svc, &pods) else {
                continue;
            };
            let name = slice["metadata"]["name"].as_str().unwrap_or_default();
            let current = api.try_get_in("EndpointSlice", namespace, name);
            let same = current.as_ref().is_some_and(|c| {
                c["endpoints"] == slice["endpoints"] && c["ports"] == slice["ports"]
            });
            if !same {
                api.put(slice);
            }
        }
        Ok(())
    }
}

/// Whether `pod` matches the Service's `selector`.
fn selects(selector: &serde_json::Map<String, Value>, pod: &Value) -> bool {
    selector
        .iter()
        .all(|(k, v)| &pod["metadata"]["labels"][k] == v)
}

/// The `Ready` condition of a stored Pod.
fn pod_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// The slice the EndpointSlice controller keeps for `svc` (`None`: no selector, so none).
fn desired_slice(svc: &Value, pods: &[Value]) -> Option<Value> {
    let selector = svc["spec"]["selector"]
        .as_object()
        .filter(|s| !s.is_empty())?;
    let svc_name = svc["metadata"]["name"].as_str()?;
    let ns = svc["metadata"]["namespace"].as_str().unwrap_or("default");
    let mut endpoints: Vec<Value> = pods
        .iter()
        .filter(|p| selects(selector, p))
        .filter(|p| !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
        .filter_map(|p| {
            let ip = p["status"]["podIP"].as_str().filter(|ip| !ip.is_empty())?;
            let terminating = p["metadata"].get("deletionTimestamp").is_some();
            let ready = pod_ready(p);
            Some(json!({
                "addresses": [ip],
                "conditions": {
                    "ready": ready && !terminating,
                    "serving": ready,
                    "terminating": terminating,
                },
                "targetRef": {"kind": "Pod", "namespace": ns,
                              "name": p["metadata"]["name"], "uid": p["metadata"]["uid"]},
                "nodeName": p["spec"]["nodeName"],
            }))
        })
        .collect();
    endpoints.sort_by(|a, b| a["addresses"][0].as_str().cmp(&b["addresses"][0].as_str()));
    let ports: Vec<Value> = svc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            // A numeric targetPort is the endpoint's port; a named one (or none) falls back to
            // the Service port, which the shop's manifests keep equal.
            let port = p["targetPort"].as_i64().or(p["port"].as_i64());
            let mut out = json!({"name": p["name"].as_str().unwrap_or(""), "port": port,
                                  "protocol": p["protocol"].as_str().unwrap_or("TCP")});
            if let Some(ap) = p["appProtocol"].as_str() {
                out["appProtocol"] = json!(ap);
            }
            out
        })
        .collect();
    Some(json!({
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {
            "name": format!("{svc_name}-podrunner"),
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": svc_name,
                       "endpointslice.kubernetes.io/managed-by": MANAGED_BY},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": svc_name,
                                 "uid": svc["metadata"]["uid"], "controller": true,
                                 "blockOwnerDeletion": true}],
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports,
    }))
}

#[async_trait]
impl ClusterApi for StandinApi {
    async fn config_map(&self, namespace: &str, name: &str) -> Result<Option<ConfigMap>, ApiError> {
        self.api()?
            .try_get_in("ConfigMap", namespace, name)
            .map(serde_json::from_value)
            .transpose()
            .map_err(api_err)
    }

    async fn secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>, ApiError> {
        self.api()?
            .try_get_in("Secret", namespace, name)
            .map(serde_json::from_value)
            .transpose()
            .map_err(api_err)
    }

    async fn create_token(
        &self,
        namespace: &str,
        service_account: &str,
        spec: TokenRequestSpec,
    ) -> Result<TokenRequestStatus, ApiError> {
        let seconds = spec.expiration_seconds.unwrap_or(3600).max(1);
        let ttl = Duration::from_secs(u64::try_from(seconds).unwrap_or(3600));
        let audiences: Vec<&str> = spec.audiences.iter().map(String::as_str).collect();
        let pod = spec
            .bound_object_ref
            .as_ref()
            .and_then(|r| r.name.as_deref());
        let token = self
            .api()?
            .mint_token(namespace, service_account, &audiences, ttl, pod)
            .map_err(api_err)?;
        let expires = SystemTime::now() + ttl;
        let secs = expires
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let at = k8s_openapi::jiff::Timestamp::from_second(i64::try_from(secs).unwrap_or(0))
            .map_err(api_err)?;
        Ok(TokenRequestStatus {
            token,
            expiration_timestamp: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at),
        })
    }

    async fn update_pod_status(
        &self,
        namespace: &str,
        name: &str,
        status: PodStatus,
    ) -> Result<(), ApiError> {
        let status = serde_json::to_value(status).map_err(api_err)?;
        self.api()?
            .update_status_in("Pod", namespace, name, status)
            .map_err(api_err)?;
        self.sync_endpoints(namespace).await
    }
}
