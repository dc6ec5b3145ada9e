//! A pod runner: executes Kubernetes Pod specs on this machine the way a kubelet would, so the
//! manifests users apply (and the ones Weft's injector produces) run for real in tests without
//! a cluster.
//!
//! What it does, by stage (one module each):
//! - [`spec`]: Pod specs out of the YAML users apply (Deployments, Jobs, StatefulSets, ...).
//! - [`net`]: a "node" network namespace holding a bridge, and per pod a network namespace with
//!   its own IP on that bridge, loopback up, a default route, and an `/etc/hosts` naming the
//!   Services. Everything lives inside namespaces the runner creates; the host's own network is
//!   never touched, so parallel runners use the same private range without clashing.
//! - [`env`]: container environment (`value`, `valueFrom.fieldRef`, ConfigMap/Secret keys) and
//!   `$(VAR)` expansion exactly as the kubelet does it.
//! - [`volumes`]: emptyDir, configMap, secret and projected volumes (service-account tokens
//!   minted through [`ClusterApi`]) as directories with the spec's modes, bind-mounted at their
//!   `mountPath` in a private mount namespace per container (read-only where the spec says);
//!   ConfigMaps and Secrets are read again every [`RunnerOptions::volume_sync`] and swapped in
//!   atomically ([`atomic`]), as the kubelet updates mounted ConfigMaps.
//! - [`probes`]: `httpGet`, `tcpSocket` and `exec` probes on the spec's timings.
//! - [`lifecycle`]: Kubernetes 1.29+ ordering with native sidecars, restarts with backoff, Job
//!   completion, deletion with the grace period.
//! - [`api`]: the seam to a Kubernetes API server ([`ClusterApi`]) and an in-memory
//!   implementation ([`InMemoryApi`]).
//! - [`standin`]: [`ClusterApi`] over the stand-in API server (`weft-kube-standin`), with its
//!   EndpointSlice controller: the pods live in the API as a cluster's do ([`StandinApi`]).
//!
//! - [`rootfs`]: the images `scripts/build-images` built, mounted with buildah, so a container
//!   runs its image's own files chrooted into the image's root ([`ImageRoots`]).
//!
//! Images are never pulled: the caller either maps an image to a binary on this machine
//! ([`Images::weft_binaries`], [`Images::with`]; the container's root filesystem is then the
//! host's, seen through its own mount namespace), or mounts the locally built image
//! ([`Images::from_roots`]). Either way volumes and `/etc/hosts` are mounted in the container's
//! own mount namespace, so nothing is written to the host's real paths.

pub mod api;
mod atomic;
mod caps;
mod container;
pub mod env;
mod exec;
mod images;
mod lifecycle;
pub mod net;
mod pod;
pub mod probes;
pub mod rootfs;
mod runner;
mod shared;
pub mod spec;
pub mod standin;
mod status;
mod tokens;
pub mod volumes;

pub use api::{ApiError, ClusterApi, InMemoryApi};
pub use rootfs::ImageRoots;
pub use runner::{host_check, DeleteReport, ExecOutput, Images, PodHandle, Runner, RunnerOptions};
pub use standin::StandinApi;
pub use status::{EventKind, PodEvent};

/// What can go wrong running a pod.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The machine cannot run pods (not root, no network namespaces, a tool missing).
    #[error("this machine cannot run pods: {0}")]
    Host(String),
    /// A command the runner needs (`ip`, `mount`, ...) failed.
    #[error("`{cmd}` failed: {reason}")]
    Command {
        /// The command line.
        cmd: String,
        /// Its exit and stderr.
        reason: String,
    },
    /// The Pod spec is invalid or names something that does not exist.
    #[error("pod spec: {0}")]
    Spec(String),
    /// The spec uses a feature the runner does not implement.
    #[error("not supported by the pod runner: {0}")]
    Unsupported(String),
    /// The Kubernetes API (through [`ClusterApi`]) refused or failed.
    #[error("Kubernetes API: {0}")]
    Api(#[from] ApiError),
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A wait ran out of time.
    #[error("timed out after {limit:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        limit: std::time::Duration,
    },
    /// A manifest could not be read.
    #[error("manifest: {0}")]
    Manifest(String),
}

/// Attaches a context to an I/O error.
pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}
