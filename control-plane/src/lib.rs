//! Weft control plane: the server that pushes the mesh policy to sidecars, issues their
//! certificates and serves the operator API. Directories by role:
//!
//! - [`policy`]: the mesh policy ([`policy::mesh::MeshPolicy`]) and its sources (a watched
//!   directory, [`policy::source`]; the Kubernetes API, [`policy::kube`]).
//! - [`push`]: the push to sidecars (`weft.control.v1` over mTLS), through [`push::hub::Hub`].
//! - [`ca`]: the mesh certificate authority: root and trust bundle, attestation (join tokens,
//!   Kubernetes TokenReview), issuance.
//! - [`operator`]: the operator API, its token, validate/apply/rollback, history and audit log,
//!   and the API's client.
//! - [`inject`]: the Kubernetes sidecar injection of `weftctl inject` and of the mutating
//!   admission webhook ([`inject::webhook`]).
//! - [`shared`]: state every replica shares (join tokens, denied serials, history, audit), in
//!   the state directory or the Kubernetes API, and the Lease that picks the one writer.
//! - [`server`]: assembles them; the `weft-control-plane` binary runs it.
//!
//! The `weftctl` command-line tool is the `weft-cli` crate's; it runs the operator API's client,
//! [`operator::client`], and the injection of [`inject`].

pub mod ca;
mod files;
pub mod inject;
pub mod limits;
mod listeners;
mod names;
pub mod net;
pub mod operator;
pub mod policy;
pub mod push;
pub mod server;
pub mod shared;
mod sidecar_port;
