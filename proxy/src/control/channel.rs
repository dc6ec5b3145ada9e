//! The channel to the control plane: mutual TLS (or, at bootstrap, TLS without a client
//! certificate) to the configured address, where the control plane must prove its configured
//! identity; and the backoff between attempts. Shared by the policy stream
//! ([`crate::control::client`]) and certificate requests ([`crate::identity::certify`]).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use weft_policy::ControlPlane;

/// First reconnect delay.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Connect (TCP + TLS) limit.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The delay before reconnect attempt `attempt` (from 0): `BACKOFF_BASE * 2^attempt`, capped
/// at [`BACKOFF_MAX`], then scaled by a random factor in [0.5, 1).
pub fn backoff(attempt: u32) -> Duration {
    weft_resilience::Backoff {
        base: BACKOFF_BASE,
        max: BACKOFF_MAX,
    }
    .equal_jitter(attempt, fastrand::f64())
}

/// A gRPC channel to the control plane over TLS with `tls` (with or without a client
/// certificate); the control plane must prove `cp.identity`.
pub async fn connect(
    cp: &ControlPlane,
    mut tls: rustls::ClientConfig,
) -> anyhow::Result<tonic::transport::Channel> {
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let connector = TlsConnector::from(Arc::new(tls));
    let server_name = ServerName::try_from(cp.identity.dns_name())
        .context("control_plane.identity as a server name")?;
    let expected = cp.identity.clone();
    let address = cp.address.clone();
    let connect = tower::service_fn(move |_uri: http::Uri| {
        let (connector, server_name, expected, address) = (
            connector.clone(),
            server_name.clone(),
            expected.clone(),
            address.clone(),
        );
        async move {
            let io = tokio::time::timeout(CONNECT_TIMEOUT, async {
                let tcp = TcpStream::connect(&address).await?;
                tcp.set_nodelay(true)?;
                let tls = connector.connect(server_name, tcp).await?;
                let peer = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| weft_certs::identity_from_cert_der(c.as_ref()).ok());
                if peer.as_ref() != Some(&expected) {
                    return Err(std::io::Error::other(format!(
                        "the control plane proved {peer:?}, expected {expected}"
                    )));
                }
                Ok(TokioIo::new(tls))
            })
            .await
            .map_err(|_| std::io::Error::other("connect timed out"))??;
            Ok::<_, std::io::Error>(io)
        }
    });
    let channel = tonic::transport::Endpoint::from_static("http://control-plane")
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect_with_connector(connect)
        .await
        .context("connect")?;
    Ok(channel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_bounded() {
        for _ in 0..100 {
            let d = backoff(0);
            assert!(d >= BACKOFF_BASE / 2 && d < BACKOFF_BASE, "{d:?}");
            let d = backoff(3);
            assert!(d >= BACKOFF_BASE * 4 && d < BACKOFF_BASE * 8, "{d:?}");
            let d = backoff(u32::MAX);
            assert!(d >= BACKOFF_MAX / 2 && d < BACKOFF_MAX, "{d:?}");
        }
    }
}
