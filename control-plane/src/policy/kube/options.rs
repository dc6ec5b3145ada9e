//! How the Kubernetes policy source is reached and configured ([`KubeOptions`]), and why it
//! may not start ([`KubeError`]).

use std::path::PathBuf;
use std::time::Duration;

/// How to reach the API server and map what it holds.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// The mesh trust domain (identities are `spiffe://<trust domain>/ns/<ns>/sa/<sa>`).
    pub trust_domain: String,
    /// A kubeconfig file to use instead of the usual inference (in-cluster service account,
    /// else `KUBECONFIG`, else `~/.kube/config`).
    pub kubeconfig: Option<PathBuf>,
    /// How long [`KubeSource::connect`] waits for the first complete list of every kind.
    pub sync_timeout: Duration,
    /// How long [`PolicySource::watch`] gathers changes before it calls back once.
    pub debounce: Duration,
    /// Where the gateway files of Weft's Gateways are written (north-south; none: not
    /// written, statuses still are).
    pub gateway_dir: Option<PathBuf>,
    /// Where the Gateways' configs are published for the gateways' streams (always, with or
    /// without `gateway_dir`).
    pub gateways: super::gateways::GatewayBoard,
    /// How long the control plane's writer Lease lasts without renewal
    /// ([`crate::shared::lease`]): the longest the shared history goes without a writer after
    /// the writer dies.
    pub lease_duration: Duration,
}

impl KubeOptions {
    /// Defaults for `trust_domain`: inferred client, 60 s to sync, 100 ms debounce.
    pub fn new(trust_domain: impl Into<String>) -> Self {
        KubeOptions {
            trust_domain: trust_domain.into(),
            kubeconfig: None,
            sync_timeout: Duration::from_secs(60),
            debounce: Duration::from_millis(100),
            gateway_dir: None,
            gateways: super::gateways::GatewayBoard::default(),
            lease_duration: crate::shared::lease::DEFAULT_LEASE_DURATION,
        }
    }
}

/// Why the source could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// No usable client configuration (no in-cluster account, no kubeconfig).
    #[error("Kubernetes client configuration: {0}")]
    Config(String),
    /// The client could not be built.
    #[error("Kubernetes client: {0}")]
    Client(String),
    /// The first lists did not complete in time.
    #[error(
        "the Kubernetes API did not list {0} within {1:?} (is the API server reachable, are \
         the weft.dev CRDs installed and may the control plane's service account list and \
         watch them?)"
    )]
    Sync(String, Duration),
    /// The source's thread or runtime could not start.
    #[error("starting the Kubernetes watcher: {0}")]
    Start(String),
}
