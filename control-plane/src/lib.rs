//! Weft control plane.
//!
//! - The mesh certificate authority service, as a library a server calls directly:
//!   [`ca_store::CaStore`] (signing root and trust bundle in a state directory),
//!   [`attest`] (credentials to identities; [`tokens::JoinTokenAttestor`] for local mode) and
//!   [`issuer::Issuer`] (credential + CSR to certificate).
//! - [`tokens`]: join tokens, managed with `weftctl tokens`.
//! - [`certs`]: the logic of `weftctl certs`, a file-based mesh CA that issues workload
//!   certificates (keys included) for static configuration.

pub mod attest;
pub mod ca_store;
pub mod certs;
pub mod issuer;
mod state;
pub mod tokens;
