//! The server's side of shared state: where join tokens, denied serials and history live
//! (the state directory, or with `--kubernetes` the Kubernetes API), and the writer Lease.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::ca::denied::DeniedSerials;
use crate::ca::tokenreview::KubeConnection;
use crate::ca::tokens::JoinTokenStore;
use crate::operator::history::History;
use crate::operator::ops::Ops;
use crate::server::PolicyFrom;
use crate::shared::kube::KubeDocs;
use crate::shared::lease::{self, Leader};
use crate::shared::Docs;

pub use crate::operator::state_api::Credentials;

/// Replicas sharing their state through the Kubernetes API.
#[derive(Clone)]
pub struct Replicas {
    docs: Docs,
    client: kube::Client,
    namespace: String,
    lease_duration: Duration,
    leader: Arc<Leader>,
}

impl std::fmt::Debug for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicas")
            .field("namespace", &self.namespace)
            .field("lease_duration", &self.lease_duration)
            .finish_non_exhaustive()
    }
}

impl Replicas {
    /// The shared state of a control plane taking its policy from `from`: in the Kubernetes
    /// API with `--kubernetes` (through the same connection as the policy source), else none
    /// (the state directory).
    pub async fn of(from: &PolicyFrom) -> anyhow::Result<Option<Self>> {
        let PolicyFrom::Kubernetes(o) = from else {
            return Ok(None);
        };
        let connection = match &o.kubeconfig {
            Some(path) => KubeConnection::Kubeconfig(path.clone()),
            None => KubeConnection::Infer,
        };
        Ok(Some(Self::connect(&connection, o.lease_duration).await?))
    }

    /// Connects through `connection`; documents and the Lease live in the control plane's own
    /// namespace (`POD_NAMESPACE`, else `weft-system`). Must be called on the runtime the
    /// stores will drive their calls on.
    pub async fn connect(
        connection: &KubeConnection,
        lease_duration: Duration,
    ) -> anyhow::Result<Self> {
        let client = connection
            .client()
            .await
            .context("Kubernetes API for the shared control-plane state")?;
        let namespace = crate::shared::kube::own_namespace();
        let docs: Docs = Arc::new(KubeDocs::new(
            client.clone(),
            namespace.clone(),
            tokio::runtime::Handle::current(),
        ));
        Ok(Self {
            docs,
            client,
            namespace,
            lease_duration,
            leader: Arc::new(Leader::default()),
        })
    }

    /// The join tokens and denied serials every replica shares.
    pub fn credentials(&self) -> Credentials {
        Credentials {
            tokens: JoinTokenStore::in_store(self.docs.clone()),
            denied: DeniedSerials::in_store(self.docs.clone()),
        }
    }

    /// The history every replica reads and the Lease holder writes.
    pub fn history(&self) -> History {
        History::in_store(self.docs.clone())
    }

    /// Whether this replica holds the writer Lease now.
    pub fn leader(&self) -> Arc<Leader> {
        self.leader.clone()
    }

    /// Keeps trying to hold the writer Lease for `ops` (which record history only while it
    /// is held); whoever takes it records the policy in force, in case the last writer did
    /// not get to.
    pub fn hold_lease(&self, ops: Arc<Ops>) -> tokio::task::JoinHandle<()> {
        let acquired = Arc::new(move || {
            if let Err(e) = ops.record_start() {
                log::error!("recording the policy in the shared history: {e}");
            }
        });
        let identity = std::env::var("POD_NAME")
            .ok()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| format!("weft-control-plane-{}", std::process::id()));
        tokio::spawn(lease::hold(
            self.client.clone(),
            self.namespace.clone(),
            identity,
            self.lease_duration,
            self.leader.clone(),
            acquired,
        ))
    }
}

/// The join tokens and denied serials, in one place whatever the mode: `replicas`' shared
/// ones; else, when the control plane reviews service account tokens through `tokens_api`,
/// the same documents in that API (it runs on Kubernetes, where its state directory is one
/// replica's `emptyDir`); else `state_dir`'s. Must be called on the runtime the stores drive
/// their calls on.
pub async fn credentials(
    replicas: Option<&Replicas>,
    tokens_api: Option<&KubeConnection>,
    state_dir: &Path,
) -> anyhow::Result<Credentials> {
    if let Some(r) = replicas {
        return Ok(r.credentials());
    }
    let Some(connection) = tokens_api else {
        return Ok(Credentials {
            tokens: JoinTokenStore::new(state_dir),
            denied: DeniedSerials::new(state_dir),
        });
    };
    let client = connection
        .client()
        .await
        .context("Kubernetes API for join tokens and denied serials")?;
    let docs: Docs = Arc::new(KubeDocs::new(
        client,
        crate::shared::kube::own_namespace(),
        tokio::runtime::Handle::current(),
    ));
    Ok(Credentials {
        tokens: JoinTokenStore::in_store(docs.clone()),
        denied: DeniedSerials::in_store(docs),
    })
}
