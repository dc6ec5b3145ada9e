//! Weft control plane.
//!
//! For now this holds the logic of `weftctl certs` ([`certs`]): a file-based mesh CA that
//! issues workload certificates for static configuration.

pub mod certs;
