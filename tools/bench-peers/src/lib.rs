//! weft-bench-peers: the Weft sidecar pair side by side with an HAProxy pair and an NGINX pair
//! set up as sidecars with the same hops (plain in on loopback, mutual TLS 1.3 between the two
//! proxies verifying the peer against the mesh CA, plain to the app), and direct: HTTP/1.1,
//! gRPC and TCP throughput, latency, CPU per request and memory.
//!
//! A crate of its own, beside `weft-benches` (whose processes, load loops and statistics it
//! uses), so that the Weft load harness stays small and single-purpose.
//!
//! The modules: what is compared ([`model`]), the pairs' configs ([`configs`]), the running
//! pairs ([`pair`]), the gRPC and TCP loads ([`load`]), the results ([`results`]) and their
//! Markdown ([`report`]).

#![forbid(unsafe_code)]

pub mod configs;
pub mod load;
pub mod model;
pub mod pair;
pub mod report;
pub mod results;
