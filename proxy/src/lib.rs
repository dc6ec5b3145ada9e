//! Weft's sidecar proxy, built on Pingora with rustls.
//!
//! Data path: the app talks plain HTTP/1.1, h2c or TCP to the outbound listeners on loopback;
//! sidecars talk HTTP/2 or TCP tunnels to each other over mutual TLS 1.3 with workload
//! identities; the inbound listener hands requests to the app with the caller's identity.
//! Config is a [`store::Snapshot`] swapped atomically on reload.
//!
//! Modules follow the request: [`listen`] accepts and dispatches by port; [`outbound`] and
//! [`inbound`] are the two HTTP directions, each a thin Pingora `ProxyHttp` whose phases call
//! one stage module apiece; [`tcp`] carries opaque tunnels; [`errors`] is the one place a
//! rejection becomes a response; [`upgrade`] decides which HTTP/1.1 upgrades (WebSocket)
//! cross the hop. Around them: [`store`] (the config in force), [`identity`]
//! (certificates), [`control`] (admin API, reloads, the control-plane client) and
//! [`telemetry`] (metrics, access log, traces). [`app`] assembles them. [`capture`] is
//! `weft-proxy init`, which redirects a pod's traffic into the sidecar. [`gateway`] is
//! gateway mode (`--gateway`): edge TLS and routes from outside into the mesh.
#![forbid(unsafe_code)]

pub mod app;
pub mod capture;
pub mod clock;
pub mod control;
pub mod drain;
pub mod errors;
pub mod gateway;
pub mod http_path;
pub mod identity;
pub mod inbound;
pub mod listen;
pub mod outbound;
pub mod store;
pub mod tcp;
pub mod telemetry;
pub mod upgrade;
