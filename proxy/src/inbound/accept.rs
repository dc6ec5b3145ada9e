//! The inbound accept stage: the mutual-TLS handshake with a calling sidecar, bounded in
//! time, which proves the caller's SPIFFE identity and attaches it ([`PeerIdentity`]) to the
//! connection once, for every request on it to read.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use http::HeaderValue;
use pingora_core::listeners::TlsAccept;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::tls::server::handshake_with_callback;
use pingora_core::protocols::tls::TlsRef;
use pingora_core::protocols::tls::TlsStream;
use pingora_core::protocols::Stream;
use tokio::time::timeout;
use weft_certs::Identity;

use crate::store::Store;
use crate::telemetry::metrics::{Direction, Metrics, RouteLabels, RouteMetrics};

/// A TLS handshake slower than this is dropped (slowloris on the inbound port).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Complete the mutual-TLS handshake of an inbound connection, counting it (`ok` or
/// `refused`); `None` when it fails or takes longer than [`HANDSHAKE_TIMEOUT`].
pub async fn handshake(store: &Store, stream: Stream) -> Option<TlsStream<L4Stream>> {
    // The acceptor comes from the snapshot in force now, so rotated certificates and trust
    // bundles apply to new connections without a restart.
    let snap = store.load();
    let acceptor = snap.tls.acceptor.clone();
    let callback = IdentityCallback {
        metrics: store.metrics.clone(),
        own_service: snap.own.name.clone(),
    };
    drop(snap);
    let handshakes = &store.metrics.tls_handshakes;
    let peer = stream
        .get_socket_digest()
        .and_then(|d| d.peer_addr().cloned());
    let l4 = stream.into_any().downcast::<L4Stream>().ok()?;
    match timeout(
        HANDSHAKE_TIMEOUT,
        handshake_with_callback(&acceptor, *l4, &callback),
    )
    .await
    {
        Ok(Ok(tls)) => {
            handshakes.with_label_values(&["ok"]).inc();
            Some(tls)
        }
        Ok(Err(e)) => {
            handshakes.with_label_values(&["refused"]).inc();
            log::info!("inbound TLS from {peer:?} refused: {e}");
            None
        }
        Err(_) => {
            handshakes.with_label_values(&["refused"]).inc();
            log::info!("inbound TLS from {peer:?}: handshake timed out");
            None
        }
    }
}

/// The authenticated caller of an inbound connection, attached to the TLS digest once per
/// handshake so each request reads it without parsing a certificate or resolving labels.
#[derive(Debug)]
pub struct PeerIdentity {
    /// The caller's identity.
    pub identity: Identity,
    /// The same, ready to be sent to the app as a header value.
    pub header: HeaderValue,
    /// The same as text, shared with the access log.
    pub uri: Arc<str>,
    /// The caller's inbound request series.
    pub metrics: Arc<RouteMetrics>,
    /// When the caller's certificate expires: a connection outlives the handshake, so each
    /// request checks this again (one comparison) and a caller whose certificate has expired
    /// since is refused.
    pub not_after: SystemTime,
}

/// Handshake callback that extracts the caller's SPIFFE identity.
pub struct IdentityCallback {
    /// Where the caller's series live.
    pub metrics: Arc<Metrics>,
    /// This sidecar's service (the `dst_service` label).
    pub own_service: String,
}

#[async_trait]
impl TlsAccept for IdentityCallback {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        let der = tls.peer_certificate_der()?;
        let identity = weft_certs::identity_from_cert_der(der).ok()?;
        let not_after = weft_certs::not_after_from_cert_der(der).ok()?;
        let uri = identity.to_string();
        let header = HeaderValue::from_str(&uri).ok()?;
        let metrics = self.metrics.route(RouteLabels {
            direction: Direction::Inbound,
            src_service: identity.service_account().to_owned(),
            dst_service: self.own_service.clone(),
            route: "inbound".to_owned(),
            caller: uri.clone(),
        });
        Some(Arc::new(PeerIdentity {
            identity,
            header,
            uri: uri.into(),
            metrics,
            not_after,
        }))
    }
}
