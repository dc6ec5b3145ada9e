//! Weft's sidecar proxy, built on Pingora with rustls.
//!
//! Data path: the app talks plain HTTP/1.1, h2c or TCP to the outbound listeners on loopback;
//! sidecars talk HTTP/2 or TCP tunnels to each other over mutual TLS 1.3 with workload
//! identities; the inbound listener hands requests to the app with the caller's identity.
//! Config is a [`state::Snapshot`] swapped atomically on reload.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod balancer;
pub mod certify;
pub mod config;
pub mod control;
pub mod cp_client;
pub mod drain;
pub mod errors;
pub mod inbound;
pub mod metrics;
pub mod outbound;
pub mod outbound_proxy;
pub mod ports;
pub mod routing;
pub mod server;
pub mod state;
pub mod tcp;
pub mod tls;
pub mod trace;
