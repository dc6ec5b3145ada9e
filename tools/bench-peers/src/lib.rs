//! weft-bench-peers: the Weft sidecar pair side by side with an HAProxy pair and an NGINX pair
//! set up as sidecars with the same hops (plain in on loopback, mutual TLS 1.3 between the two
//! proxies verifying the peer against the mesh CA, plain to the app), and direct: HTTP/1.1,
//! gRPC and TCP throughput, latency, CPU per request and memory.
//!
//! A crate of its own, beside `weft-benches` (whose processes, load loops and statistics it
//! uses), so that the Weft load harness stays small and single-purpose.
//!
//! The modules: what is compared ([`model`]), the pairs' configs ([`configs`]), the running
//! pairs ([`pair`]), the gRPC and TCP loads ([`load`]), the closed and open loops over every
//! protocol ([`lanes`]) and what the kernel did for the proxies meanwhile ([`kernel`]), the load points' medians and paired ratios ([`rates`]), the results
//! ([`results`]) and their Markdown ([`report`]); the gateway scenario ([`gateway`], its
//! results [`gateway_results`]).

#![forbid(unsafe_code)]

/// What the kernel did for the proxies in a window (shared with `weft-bench --captured`).
pub use weft_benches::kernel;

pub mod configs;
pub mod gateway;
pub mod gateway_results;
pub mod lanes;
pub mod load;
pub mod model;
pub mod pair;
pub mod rates;
pub mod report;
pub mod results;
