//! The bounds of the control plane's listeners and push, as the server is started with them
//! ([`ServeOptions`]): the sidecars' port ([`SidecarLimits`]), the operator API's and the
//! webhook's ([`crate::net::Limits`]), the hub's ([`crate::push::hub::HubLimits`]); and the
//! refusal of a plaintext operator API beyond loopback ([`check_admin_address`]).

use std::net::SocketAddr;
use std::time::Duration;

/// The bounds of the sidecars' port (gRPC over mutual TLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SidecarLimits {
    /// Connections at once; as many again may wait `handshake_timeout` for a slot, any beyond
    /// are closed at once.
    pub max_connections: usize,
    /// Longest a TLS handshake may take.
    pub handshake_timeout: Duration,
    /// HTTP/2 streams at once per connection (a sidecar uses one, and `Certify` calls).
    pub max_streams_per_connection: u32,
    /// Largest gRPC message decoded (a `Certify` CSR, a sidecar's ACK).
    pub max_message_bytes: usize,
    /// Longest a unary call (`Certify`) may take; streams are not limited.
    pub unary_timeout: Duration,
    /// HTTP/2 PING interval; a peer that does not answer within `keepalive_timeout` is
    /// closed.
    pub keepalive_interval: Duration,
    /// See `keepalive_interval`.
    pub keepalive_timeout: Duration,
}

impl Default for SidecarLimits {
    fn default() -> Self {
        SidecarLimits {
            max_connections: 16_384,
            handshake_timeout: Duration::from_secs(10),
            max_streams_per_connection: 16,
            max_message_bytes: 1024 * 1024,
            unary_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

/// How the listeners are bounded and exposed, beyond [`ServerConfig`].
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// The operator API's bounds (and the metrics listener's).
    pub admin: crate::net::Limits,
    /// The sidecars' port's bounds.
    pub sidecars: SidecarLimits,
    /// Streams per identity and snapshot size.
    pub hub: crate::push::hub::HubLimits,
    /// The certificate authority's admission gates (first certificates and renewals each).
    pub ca_admission: crate::ca::admission::Limits,
    /// A second plain HTTP listener serving only `/live`, `/ready` and `/metrics`, on any
    /// address (kubelet probes, Prometheus), so the operator API can stay on loopback.
    pub metrics_listen: Option<SocketAddr>,
    /// Serve the plaintext operator API on a non-loopback address anyway
    /// (`--insecure-plaintext-operator-api`): its bearer token then crosses the network in
    /// the clear.
    pub insecure_plaintext_admin: bool,
}

/// Why the control plane refuses a plaintext operator API beyond loopback.
pub fn check_admin_address(addr: SocketAddr, insecure: bool) -> anyhow::Result<()> {
    if addr.ip().is_loopback() || insecure {
        return Ok(());
    }
    anyhow::bail!(
        "the operator API is plain HTTP and would listen on {addr}, beyond loopback: its bearer \
         token would cross the network in the clear. Bind it to 127.0.0.1 (use `kubectl \
         port-forward` or an SSH tunnel to reach it; --metrics-listen serves /live, /ready and \
         /metrics on any address), or pass --insecure-plaintext-operator-api to do it anyway"
    )
}
