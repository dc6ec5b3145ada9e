//! The mesh certificate authority: [`ca_store::CaStore`] (signing root and trust bundle in a
//! state directory), [`attest`] (credentials to identities), [`tokens`] (join tokens, local
//! mode) and [`tokenreview`] (Kubernetes service account tokens) as attestors,
//! [`issuer::Issuer`] (credential + CSR to certificate), and [`certs`] (the file-based CA of
//! `weftctl certs`, for static configuration).

pub mod admission;
pub mod attest;
pub mod ca_store;
pub mod certs;
pub mod denied;
pub mod issuer;
pub mod provenance;
pub mod tokenreview;
pub mod tokens;
