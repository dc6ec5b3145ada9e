//! Weft control plane.
//!
//! - The mesh certificate authority service, as a library a server calls directly:
//!   [`ca_store::CaStore`] (signing root and trust bundle in a state directory),
//!   [`attest`] (credentials to identities; [`tokens::JoinTokenAttestor`] for local mode) and
//!   [`issuer::Issuer`] (credential + CSR to certificate).
//! - [`tokens`]: join tokens, managed with `weftctl tokens`; [`tokenreview`]: Kubernetes
//!   service account tokens as credentials, verified with the API server's TokenReview.
//! - [`certs`]: the logic of `weftctl certs`, a file-based mesh CA that issues workload
//!   certificates (keys included) for static configuration.
//! - [`policy`]: the mesh policy ([`policy::MeshPolicy`]), validated with the sidecar's own
//!   code (`weft-policy`) and cut into one snapshot per calling service; [`source`]: where it
//!   comes from ([`source::DirSource`], a watched directory of YAML files) and
//!   [`source::LastGood`], which keeps the last valid policy in force.
//! - [`server`]: the push to sidecars (`weft.control.v1` over mTLS), certificate issuance to
//!   sidecars (`Certify`: join token or renewal, through [`issuer::Issuer`]) and the operator
//!   API (bearer token: [`auth`]); the `weft-control-plane` binary runs it.
//! - [`ops`]: operators' validate, apply and rollback; [`history`]: every accepted version's
//!   files and the audit log; [`ctl`]: the client side, the operator commands of `weftctl`;
//!   [`top`]: the live per-route numbers of `weftctl top` and `weft up`.
//! - [`inject`]: the Kubernetes sidecar injection of `weftctl inject` and of the mutating
//!   admission webhook ([`inject::webhook`]).

pub mod admin;
pub mod attest;
pub mod auth;
pub mod ca_store;
pub mod certs;
pub mod ctl;
mod files;
mod grpc;
pub mod history;
pub mod hub;
pub mod inject;
pub mod issuer;
pub mod kube;
pub mod ops;
pub mod policy;
mod push_stream;
pub mod server;
pub mod source;
pub mod tokenreview;
pub mod tokens;
pub mod top;
