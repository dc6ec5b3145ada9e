//! The seam to a Kubernetes API server: what a kubelet reads (ConfigMaps, Secrets), mints
//! (service-account tokens through TokenRequest) and writes (Pod status, from which an
//! EndpointSlice controller derives ready/serving/terminating endpoints).
//!
//! An adapter to a real or stand-in API server implements [`ClusterApi`] with one request per
//! method; [`InMemoryApi`] serves tests that need no server.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use k8s_openapi::api::authentication::v1::{TokenRequestSpec, TokenRequestStatus};
use k8s_openapi::api::core::v1::{ConfigMap, PodStatus, Secret};

/// An API call failed (the server's message, or why it could not be reached).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ApiError(pub String);

/// What the runner asks of the Kubernetes API, as a kubelet would.
#[async_trait]
pub trait ClusterApi: Send + Sync + 'static {
    /// `GET /api/v1/namespaces/{namespace}/configmaps/{name}`; `Ok(None)` when it does not exist.
    async fn config_map(&self, namespace: &str, name: &str) -> Result<Option<ConfigMap>, ApiError>;

    /// `GET /api/v1/namespaces/{namespace}/secrets/{name}`; `Ok(None)` when it does not exist.
    async fn secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>, ApiError>;

    /// `POST /api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token`: mints a
    /// token for a projected `serviceAccountToken` volume source. `spec` carries the audience,
    /// `expirationSeconds` and the bound Pod (`boundObjectRef`: kind Pod, name, uid).
    async fn create_token(
        &self,
        namespace: &str,
        service_account: &str,
        spec: TokenRequestSpec,
    ) -> Result<TokenRequestStatus, ApiError>;

    /// `PUT /api/v1/namespaces/{namespace}/pods/{name}/status`: the pod's phase, IP, conditions
    /// (`Initialized`, `ContainersReady`, `Ready`) and container statuses, sent whenever they change.
    async fn update_pod_status(
        &self,
        namespace: &str,
        name: &str,
        status: PodStatus,
    ) -> Result<(), ApiError>;
}

/// A token minted by [`InMemoryApi`], as recorded for tests to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MintedToken {
    /// `system:serviceaccount:<namespace>:<name>`.
    pub subject: String,
    /// The requested audiences.
    pub audiences: Vec<String>,
    /// The requested lifetime.
    pub expiration_seconds: Option<i64>,
    /// The bound pod's name.
    pub pod: Option<String>,
    /// The token text written to the volume.
    pub token: String,
}

/// An in-memory [`ClusterApi`]: ConfigMaps and Secrets put in by the test, tokens minted as
/// readable strings, every Pod status update recorded in order.
#[derive(Debug, Default)]
pub struct InMemoryApi {
    config_maps: Mutex<BTreeMap<(String, String), ConfigMap>>,
    secrets: Mutex<BTreeMap<(String, String), Secret>>,
    tokens: Mutex<Vec<MintedToken>>,
    statuses: Mutex<Vec<(String, String, PodStatus)>>,
}

fn key(namespace: &str, name: &str) -> (String, String) {
    (namespace.to_string(), name.to_string())
}

impl InMemoryApi {
    /// An empty API.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores a ConfigMap with string data.
    pub fn put_config_map(&self, namespace: &str, name: &str, data: &[(&str, &str)]) {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(name.to_string());
        cm.metadata.namespace = Some(namespace.to_string());
        cm.data = Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        lock(&self.config_maps).insert(key(namespace, name), cm);
    }

    /// Stores a Secret.
    pub fn put_secret(&self, namespace: &str, name: &str, data: &[(&str, &[u8])]) {
        let mut s = Secret::default();
        s.metadata.name = Some(name.to_string());
        s.metadata.namespace = Some(namespace.to_string());
        s.data = Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), k8s_openapi::ByteString(v.to_vec())))
                .collect(),
        );
        lock(&self.secrets).insert(key(namespace, name), s);
    }

    /// Every token minted so far.
    pub fn tokens(&self) -> Vec<MintedToken> {
        lock(&self.tokens).clone()
    }

    /// Every status update of the pod `namespace/name`, oldest first.
    pub fn statuses(&self, namespace: &str, name: &str) -> Vec<PodStatus> {
        lock(&self.statuses)
            .iter()
            .filter(|(ns, n, _)| ns == namespace && n == name)
            .map(|(_, _, s)| s.clone())
            .collect()
    }
}

/// A poisoned lock only means another test thread panicked; the data is still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[async_trait]
impl ClusterApi for InMemoryApi {
    async fn config_map(&self, namespace: &str, name: &str) -> Result<Option<ConfigMap>, ApiError> {
        Ok(lock(&self.config_maps).get(&key(namespace, name)).cloned())
    }

    async fn secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>, ApiError> {
        Ok(lock(&self.secrets).get(&key(namespace, name)).cloned())
    }

    async fn create_token(
        &self,
        namespace: &str,
        service_account: &str,
        spec: TokenRequestSpec,
    ) -> Result<TokenRequestStatus, ApiError> {
        let subject = format!("system:serviceaccount:{namespace}:{service_account}");
        let pod = spec.bound_object_ref.as_ref().and_then(|r| r.name.clone());
        let n = lock(&self.tokens).len();
        // Readable, unique per mint: tests check what reached the volume.
        let token = format!(
            "in-memory-token.{subject}.aud={}.exp={}.n={n}",
            spec.audiences.join(","),
            spec.expiration_seconds.unwrap_or(3600)
        );
        lock(&self.tokens).push(MintedToken {
            subject,
            audiences: spec.audiences.clone(),
            expiration_seconds: spec.expiration_seconds,
            pod,
            token: token.clone(),
        });
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let expires = i64::try_from(now)
            .unwrap_or(0)
            .saturating_add(spec.expiration_seconds.unwrap_or(3600));
        let expiration_timestamp = k8s_openapi::jiff::Timestamp::from_second(expires)
            .map_err(|e| ApiError(format!("expiration: {e}")))?;
        Ok(TokenRequestStatus {
            token,
            expiration_timestamp: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                expiration_timestamp,
            ),
        })
    }

    async fn update_pod_status(
        &self,
        namespace: &str,
        name: &str,
        status: PodStatus,
    ) -> Result<(), ApiError> {
        lock(&self.statuses).push((namespace.to_string(), name.to_string(), status));
        Ok(())
    }
}
