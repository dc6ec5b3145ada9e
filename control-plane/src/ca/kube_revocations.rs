//! Revocations every replica sees, on Kubernetes: a ConfigMap in the control plane's namespace.
//!
//! Replicas keep their state directories on `emptyDir` volumes, so a denial written to one
//! replica's `denied-serials.json` would reach only that replica. The ConfigMap
//! [`REVOCATIONS_CONFIGMAP`] is read through the same API client the TokenReview attestor uses,
//! on every certificate call (no cache: a revocation holds from the next call on, at any
//! replica). Its data:
//!
//! - `denied-serials`: certificate serials (hex, any case, colons allowed), separated by
//!   whitespace: those certificates no longer renew.
//! - `revoked-join-tokens`: join token ids, separated by whitespace: certificates obtained with
//!   them no longer renew, and the tokens obtain nothing.
//!
//! The control plane's ServiceAccount needs `get` on that ConfigMap; an operator edits it
//! (`kubectl edit configmap weft-revocations -n weft-system`). A missing ConfigMap means
//! nothing is revoked; an API that cannot be asked fails the call as unavailable (never as
//! "not revoked").

use std::fmt;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;

use crate::ca::denied::normalize_serial;

/// Name of the ConfigMap.
pub const REVOCATIONS_CONFIGMAP: &str = "weft-revocations";
/// Key of the denied serials.
pub const DENIED_SERIALS_KEY: &str = "denied-serials";
/// Key of the revoked join token ids.
pub const REVOKED_TOKENS_KEY: &str = "revoked-join-tokens";
/// Namespace used when `POD_NAMESPACE` is not set.
pub const DEFAULT_NAMESPACE: &str = "weft-system";
/// Longest one read may take.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What the ConfigMap revokes, read once per call.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Revoked {
    serials: Vec<String>,
    token_ids: Vec<String>,
}

impl Revoked {
    /// Parses the ConfigMap's data; entries that are not serials are ignored with a warning
    /// rather than failing every renewal.
    pub fn from_configmap(cm: &ConfigMap) -> Self {
        let data = cm.data.as_ref();
        let field = |key: &str| {
            data.and_then(|d| d.get(key))
                .map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        let serials = field(DENIED_SERIALS_KEY)
            .iter()
            .filter_map(|s| match normalize_serial(s) {
                Ok(s) => Some(s),
                Err(e) => {
                    log::warn!("{REVOCATIONS_CONFIGMAP}: {e}; ignored");
                    None
                }
            })
            .collect();
        Self {
            serials,
            token_ids: field(REVOKED_TOKENS_KEY),
        }
    }

    /// Whether the serial (any form [`normalize_serial`] takes) is denied.
    pub fn serial_denied(&self, serial: &str) -> bool {
        normalize_serial(serial).is_ok_and(|s| self.serials.contains(&s))
    }

    /// Whether the join token with this id is revoked.
    pub fn token_revoked(&self, id: &str) -> bool {
        self.token_ids.iter().any(|t| t == id)
    }
}

/// Reads [`REVOCATIONS_CONFIGMAP`] from a blocking thread (as the issuer runs).
pub struct KubeRevocations {
    client: kube::Client,
    namespace: String,
    runtime: tokio::runtime::Handle,
}

impl fmt::Debug for KubeRevocations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeRevocations")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl KubeRevocations {
    /// Reads the ConfigMap in `namespace` through `client`, driving the request on `runtime`.
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

    /// The control plane's own namespace: `POD_NAMESPACE` (the downward API), else
    /// [`DEFAULT_NAMESPACE`].
    pub fn own_namespace() -> String {
        std::env::var("POD_NAMESPACE")
            .ok()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned())
    }

    /// The revocations now. Must not be called on a runtime worker thread.
    pub fn read(&self) -> Result<Revoked, String> {
        let api: kube::Api<ConfigMap> = kube::Api::namespaced(self.client.clone(), &self.namespace);
        let got = self.runtime.block_on(async {
            tokio::time::timeout(READ_TIMEOUT, api.get_opt(REVOCATIONS_CONFIGMAP)).await
        });
        match got {
            Ok(Ok(Some(cm))) => Ok(Revoked::from_configmap(&cm)),
            Ok(Ok(None)) => Ok(Revoked::default()),
            Ok(Err(e)) => Err(format!(
                "cannot read ConfigMap {}/{REVOCATIONS_CONFIGMAP}: {e}",
                self.namespace
            )),
            Err(_) => Err(format!(
                "no answer reading ConfigMap {}/{REVOCATIONS_CONFIGMAP} within {}",
                self.namespace,
                humantime::format_duration(READ_TIMEOUT)
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_serials_and_token_ids_separated_by_whitespace() {
        let cm = ConfigMap {
            data: Some(
                [
                    (
                        DENIED_SERIALS_KEY.to_owned(),
                        "00:AB:cd\n 1f  zz\n".to_owned(),
                    ),
                    (REVOKED_TOKENS_KEY.to_owned(), "0123456789abcdef".to_owned()),
                ]
                .into(),
            ),
            ..ConfigMap::default()
        };
        let r = Revoked::from_configmap(&cm);
        assert!(r.serial_denied("abcd") && r.serial_denied("1F"));
        assert!(!r.serial_denied("ab") && !r.serial_denied("zz"));
        assert!(r.token_revoked("0123456789abcdef") && !r.token_revoked("0123"));
        assert_eq!(
            Revoked::from_configmap(&ConfigMap::default()),
            Revoked::default()
        );
    }
}
