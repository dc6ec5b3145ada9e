//! Weft control plane.
//!
//! - The mesh certificate authority service, as a library a server calls directly:
//!   [`ca_store::CaStore`] (signing root and trust bundle in a state directory),
//!   [`attest`] (credentials to identities; [`tokens::JoinTokenAttestor`] for local mode) and
//!   [`issuer::Issuer`] (credential + CSR to certificate).
//! - [`tokens`]: join tokens, managed with `weftctl tokens`.
//! - [`certs`]: the logic of `weftctl certs`, a file-based mesh CA that issues workload
//!   certificates (keys included) for static configuration.
//! - [`policy`]: the mesh policy ([`policy::MeshPolicy`]), validated with the sidecar's own
//!   code (`weft-policy`) and cut into one snapshot per calling service; [`source`]: where it
//!   comes from ([`source::DirSource`], a watched directory of YAML files) and
//!   [`source::LastGood`], which keeps the last valid policy in force.
//! - [`server`]: the push to sidecars (`weft.control.v1` over mTLS) and the operator status
//!   endpoint; the `weft-control-plane` binary runs it.

mod admin;
pub mod attest;
pub mod ca_store;
pub mod certs;
mod grpc;
pub mod hub;
pub mod issuer;
pub mod policy;
mod push_stream;
pub mod server;
pub mod source;
mod state;
pub mod tokens;
