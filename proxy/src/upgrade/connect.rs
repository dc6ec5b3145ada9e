//! The connections an HTTP/1.1 upgrade rides, made by Weft rather than by Pingora's connector
//! (`PeerOptions::custom_l4`), so that the stream Pingora relays is a [`Peer`]: the half-close
//! stage ([`super::half_close`]) must sit above TLS, where a FIN is a close_notify.
//!
//! - [`ToSidecar`] (outbound): mutual TLS 1.3 to the peer sidecar with ALPN `http/1.1`, the
//!   workload certificate and trust bundle of the TCP tunnels' client config, the server
//!   proven by the destination's identity name (SNI), as Pingora's connector would. Pingora
//!   sees a plaintext HTTP/1.1 peer.
//! - [`ToApp`] (inbound): plain TCP to the app on loopback.
//!
//! Pingora applies no connect timeout to a custom L4 connect: each bounds its own, with the
//! error types Pingora's connector would give (so the retry and `x-weft-error` answers are
//! unchanged: 503 `connect_failure`, 502 `tls_failure`).

use std::io;
use std::net::SocketAddr as InetAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::connectors::L4Connect;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::l4::virt::VirtualSocketStream;
use pingora_core::{Error, ErrorType, Result};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use super::half_close::Peer;
use crate::identity::material::ALPN_HTTP1;

/// The floor of the TLS handshake's bound (as for TCP tunnels): a short connect timeout
/// should not fail handshakes on a loaded host.
const HANDSHAKE_FLOOR: Duration = Duration::from_secs(5);

fn inet(addr: &SocketAddr) -> Result<InetAddr> {
    addr.as_inet()
        .copied()
        .ok_or_else(|| Error::explain(ErrorType::ConnectError, "an upgrade peer is an IP address"))
}

async fn tcp(addr: InetAddr, limit: Duration) -> Result<TcpStream> {
    let tcp = match timeout(limit, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            let etype = if e.kind() == io::ErrorKind::ConnectionRefused {
                ErrorType::ConnectRefused
            } else {
                ErrorType::ConnectError
            };
            return Err(Error::because(etype, format!("connecting to {addr}"), e));
        }
        Err(_) => {
            return Err(Error::explain(
                ErrorType::ConnectTimedout,
                format!("timeout {limit:?} connecting to {addr}"),
            ))
        }
    };
    // Small frames (a WebSocket ping) go out at once.
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

fn stream<S>(s: S) -> L4Stream
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync + 'static,
{
    L4Stream::from(VirtualSocketStream::new(Box::new(Peer::new(s))))
}

/// Mutual TLS with ALPN `http/1.1` to a peer sidecar named `sni`.
#[derive(Debug)]
pub struct ToSidecar {
    tls: Arc<ClientConfig>,
    sni: String,
    connect_timeout: Duration,
}

impl ToSidecar {
    /// `tunnels`: the TCP tunnels' client config (workload certificate, trust bundle), whose
    /// ALPN is replaced by `http/1.1`.
    pub fn new(tunnels: &ClientConfig, sni: String, connect_timeout: Duration) -> Self {
        let mut tls = tunnels.clone();
        tls.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
        ToSidecar {
            tls: Arc::new(tls),
            sni,
            connect_timeout,
        }
    }
}

#[async_trait]
impl L4Connect for ToSidecar {
    async fn connect(&self, addr: &SocketAddr) -> Result<L4Stream> {
        let addr = inet(addr)?;
        let tcp = tcp(addr, self.connect_timeout).await?;
        let name = ServerName::try_from(self.sni.clone()).map_err(|e| {
            Error::because(
                ErrorType::TLSHandshakeFailure,
                format!("bad server name {:?}", self.sni),
                e,
            )
        })?;
        let limit = self.connect_timeout.max(HANDSHAKE_FLOOR);
        let tls = match timeout(
            limit,
            TlsConnector::from(self.tls.clone()).connect(name, tcp),
        )
        .await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                return Err(Error::because(
                    ErrorType::TLSHandshakeFailure,
                    format!("TLS handshake with {addr} ({})", self.sni),
                    e,
                ))
            }
            Err(_) => {
                return Err(Error::explain(
                    ErrorType::TLSHandshakeTimedout,
                    format!("TLS handshake with {addr} timed out after {limit:?}"),
                ))
            }
        };
        if tls.get_ref().1.alpn_protocol() != Some(ALPN_HTTP1) {
            return Err(Error::explain(
                ErrorType::TLSHandshakeFailure,
                format!("{addr} did not accept http/1.1 (a sidecar without upgrades)"),
            ));
        }
        Ok(stream(tls))
    }
}

/// Plain TCP to the app.
#[derive(Debug)]
pub struct ToApp {
    connect_timeout: Duration,
}

impl ToApp {
    /// Connects within `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> Self {
        ToApp { connect_timeout }
    }
}

#[async_trait]
impl L4Connect for ToApp {
    async fn connect(&self, addr: &SocketAddr) -> Result<L4Stream> {
        let tcp = tcp(inet(addr)?, self.connect_timeout).await?;
        Ok(stream(tcp))
    }
}
