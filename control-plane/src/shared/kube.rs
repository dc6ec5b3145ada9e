//! Documents in the Kubernetes API, in the control plane's namespace: join token hashes in the
//! Secret `weft-join-tokens`, every other document in a ConfigMap `weft-<name>` (the data key
//! is the document's name). A write names the `resourceVersion` it read, so the API server
//! refuses it with `409 Conflict` when another replica wrote in between; creating a document
//! that another replica just created is the same conflict (`409 AlreadyExists`).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::ByteString;
use kube::api::{ObjectMeta, PostParams};

use crate::shared::{DocStore, StoreError, Versioned, JOIN_TOKENS_DOC};

/// Longest one API call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest document kept (an object may hold 1 MiB, metadata included).
pub const MAX_DOC_BYTES: usize = 900 * 1024;
/// The label on every object kept here.
pub const LABEL: (&str, &str) = ("app.kubernetes.io/managed-by", "weft-control-plane");
/// The control plane's namespace when `POD_NAMESPACE` is not set.
pub const DEFAULT_NAMESPACE: &str = "weft-system";

/// The control plane's own namespace, where its shared state lives: `POD_NAMESPACE` (the
/// downward API), else [`DEFAULT_NAMESPACE`].
pub fn own_namespace() -> String {
    std::env::var("POD_NAMESPACE")
        .ok()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned())
}

/// Documents in the Kubernetes API, read and written from blocking threads.
#[derive(Clone)]
pub struct KubeDocs {
    client: kube::Client,
    namespace: String,
    runtime: tokio::runtime::Handle,
}

impl fmt::Debug for KubeDocs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeDocs")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// The object holding document `name`: a Secret (join tokens) or a ConfigMap, and its name.
fn object_of(name: &str) -> (bool, String) {
    let stem = name.split('.').next().unwrap_or(name);
    (name == JOIN_TOKENS_DOC, format!("weft-{stem}"))
}

impl KubeDocs {
    /// Documents in `namespace` through `client`; calls are driven on `runtime` (so they must
    /// not be made on one of its worker threads).
    pub fn new(
        client: kube::Client,
        namespace: impl Into<String>,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        Self {
            client,
            namespace: namespace.into(),
            runtime,
        }
    }

    fn call<T>(
        &self,
        name: &str,
        f: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, StoreError> {
        match self
            .runtime
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, f).await })
        {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(kube::Error::Api(s))) if s.code == 409 => {
                Err(StoreError::Conflict(self.describe(name)))
            }
            Ok(Err(e)) => Err(StoreError::Unavailable(format!(
                "{}: {e}",
                self.describe(name)
            ))),
            Err(_) => Err(StoreError::Unavailable(format!(
                "{}: no answer from the Kubernetes API within {CALL_TIMEOUT:?}",
                self.describe(name)
            ))),
        }
    }

    fn meta(&self, object: String, version: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            name: Some(object),
            namespace: Some(self.namespace.clone()),
            resource_version: version.map(str::to_owned),
            labels: Some(BTreeMap::from([(LABEL.0.to_owned(), LABEL.1.to_owned())])),
            ..ObjectMeta::default()
        }
    }
}

impl DocStore for KubeDocs {
    fn read(&self, name: &str) -> Result<Option<Versioned>, StoreError> {
        let (secret, object) = object_of(name);
        let versioned = |meta: &ObjectMeta, data: Option<Vec<u8>>| {
            data.map(|data| Versioned {
                data,
                version: meta.resource_version.clone().unwrap_or_default(),
            })
        };
        if secret {
            let api: kube::Api<Secret> =
                kube::Api::namespaced(self.client.clone(), &self.namespace);
            let got = self.call(name, api.get_opt(&object))?;
            Ok(got.and_then(|s| {
                let data = s
                    .data
                    .as_ref()
                    .and_then(|d| d.get(name))
                    .map(|b| b.0.clone());
                versioned(&s.metadata, Some(data.unwrap_or_default()))
            }))
        } else {
            let api: kube::Api<ConfigMap> =
                kube::Api::namespaced(self.client.clone(), &self.namespace);
            let got = self.call(name, api.get_opt(&object))?;
            Ok(got.and_then(|c| {
                let data = c
                    .data
                    .as_ref()
                    .and_then(|d| d.get(name))
                    .map(|s| s.clone().into_bytes());
                versioned(&c.metadata, Some(data.unwrap_or_default()))
            }))
        }
    }

    fn write(&self, name: &str, data: &[u8], version: Option<&str>) -> Result<(), StoreError> {
        if data.len() > MAX_DOC_BYTES {
            return Err(StoreError::TooLarge {
                what: self.describe(name),
                len: data.len(),
                max: MAX_DOC_BYTES,
            });
        }
        let (secret, object) = object_of(name);
        let pp = PostParams::default();
        let meta = self.meta(object.clone(), version);
        if secret {
            let api: kube::Api<Secret> =
                kube::Api::namespaced(self.client.clone(), &self.namespace);
            let s = Secret {
                metadata: meta,
                data: Some(BTreeMap::from([(
                    name.to_owned(),
                    ByteString(data.to_vec()),
                )])),
                type_: Some("Opaque".to_owned()),
                ..Secret::default()
            };
            match version {
                None => self.call(name, api.create(&pp, &s)).map(drop),
                Some(_) => self.call(name, api.replace(&object, &pp, &s)).map(drop),
            }
        } else {
            let text = String::from_utf8(data.to_vec()).map_err(|_| {
                StoreError::Unavailable(format!("{}: not UTF-8", self.describe(name)))
            })?;
            let api: kube::Api<ConfigMap> =
                kube::Api::namespaced(self.client.clone(), &self.namespace);
            let c = ConfigMap {
                metadata: meta,
                data: Some(BTreeMap::from([(name.to_owned(), text)])),
                ..ConfigMap::default()
            };
            match version {
                None => self.call(name, api.create(&pp, &c)).map(drop),
                Some(_) => self.call(name, api.replace(&object, &pp, &c)).map(drop),
            }
        }
    }

    fn describe(&self, name: &str) -> String {
        let (secret, object) = object_of(name);
        let kind = if secret { "Secret" } else { "ConfigMap" };
        format!("{kind} {}/{object}", self.namespace)
    }
}
