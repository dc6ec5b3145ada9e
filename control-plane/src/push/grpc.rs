//! The sidecars' gRPC service (`weft.control.v1` over mutual TLS).
//!
//! Sidecars connect with their workload certificates (from the mesh CA) and say `Hello` first;
//! the service they name must be one their certificate's identity may speak for, and their
//! inbound address theirs ([`crate::push::join`]). Their inbound address and labels are
//! registered as an endpoint of that service, withdrawn [`Hub::grace`] after the stream ends.
//!
//! `Certify` issues workload certificates for CSRs: with a credential in the request's token
//! field (bootstrap; the connection may have no client certificate), a join token or, with
//! `--kubernetes-tokens`, a projected service account token (told apart by form:
//! [`Credential::from_presented`]), or with the caller's current certificate (renewal).
//! `Stream` requires a client certificate.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status, Streaming};
use weft_api::v1::control_plane_server::ControlPlane;
use weft_api::v1::{
    sidecar_message, CertifyRequest, CertifyResponse, ControlMessage, SidecarMessage,
};
use weft_certs::Identity;

use crate::ca::admission::CALL_DEADLINE;
use crate::ca::attest::Credential;
use crate::ca::issuer::{IssueError, Issued, Issuer};
use crate::push::hub::{gateway_name, Hub, RegisterError, Registration, ENDPOINTS_BY_SERVICE};
use crate::push::join::{self, JoinError};
use crate::push::slot::{slot, SlotReceiver};

/// The authenticated client of a connection, from its certificate: its identity and the
/// certificate itself (DER; a renewal reads its serial and provenance); and the connection's
/// source address (on Kubernetes, the pod's IP).
#[derive(Debug, Clone)]
pub struct PeerIdentity(
    pub Option<Identity>,
    pub Option<CertificateDer<'static>>,
    pub Option<SocketAddr>,
);

/// A TLS connection that tells tonic who the client is.
pub(crate) struct TlsConn(pub(crate) TlsStream<TcpStream>);

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = PeerIdentity;
    fn connect_info(&self) -> PeerIdentity {
        let (tcp, conn) = self.0.get_ref();
        let leaf = conn.peer_certificates().and_then(|c| c.first());
        let id = leaf.and_then(|c| weft_certs::identity_from_cert_der(c.as_ref()).ok());
        PeerIdentity(
            id,
            leaf.map(|c| c.clone().into_owned()),
            tcp.peer_addr().ok(),
        )
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

pub(crate) struct Service {
    pub(crate) hub: Arc<Hub>,
    pub(crate) issuer: Arc<Issuer>,
}
type SnapshotStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<ControlMessage, Status>> + Send>>;

#[tonic::async_trait]
impl ControlPlane for Service {
    type StreamStream = SnapshotStream;

    /// Bootstrap (join token or service account token, no client certificate needed) or
    /// renewal (the verified client certificate, with the credential again when the sidecar
    /// has one). The identity comes from the credential only; the CSR can at most agree with
    /// it. Calls pass the issuer's [`Admission`](crate::ca::admission::Admission) gate and end
    /// within [`CALL_DEADLINE`].
    async fn certify(
        &self,
        req: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let peer = req.extensions().get::<PeerIdentity>().cloned();
        let CertifyRequest {
            csr_pem,
            join_token,
        } = req.into_inner();
        let credential =
            (!join_token.trim().is_empty()).then(|| Credential::from_presented(&join_token));
        let renewal = matches!(peer, Some(PeerIdentity(Some(_), Some(_), _)));
        let how = match (&peer, &credential) {
            (Some(PeerIdentity(Some(_), _, _)), Some(c)) => format!("renewal with a {}", c.kind()),
            (_, Some(c)) => c.kind().to_owned(),
            _ => "renewal".to_owned(),
        };
        let issuer = self.issuer.clone();
        let trust_domain = self.hub.trust_domain().to_owned();
        let call = async move {
            let permit = issuer
                .admission(renewal)
                .admit()
                .await
                .map_err(|e| Status::resource_exhausted(e.to_string()))?;
            // Attestation reads the token file or waits for the API server's TokenReview, and
            // signing costs a few milliseconds of CPU: keep all of it off the runtime's
            // workers. The permit goes with the work, so an abandoned call still holds its
            // slot until the blocking thread is done with it.
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                certify_blocking(&issuer, &trust_domain, peer, credential, &csr_pem)
            })
            .await
            .map_err(|e| Status::internal(format!("certificate task failed: {e}")))?
        };
        let result = tokio::time::timeout(CALL_DEADLINE, call)
            .await
            .unwrap_or_else(|_| {
                Err(Status::deadline_exceeded(format!(
                    "no certificate within {}; retry with backoff",
                    humantime::format_duration(CALL_DEADLINE)
                )))
            });
        match result {
            Ok(issued) => {
                self.hub.count_certify(true);
                log::info!(
                    "issued a certificate to {} ({how}), serial {}, valid until {}",
                    issued.identity,
                    issued.serial,
                    humantime::format_rfc3339_seconds(issued.not_after)
                );
                Ok(Response::new(CertifyResponse {
                    cert_chain_pem: issued.chain_pem,
                    trust_bundle_pem: self.issuer.trust_bundle_pem().to_owned(),
                }))
            }
            Err(status) => {
                self.hub.count_certify(false);
                log::warn!("certificate refused ({how}): {}", status.message());
                Err(status)
            }
        }
    }

    /// Served by [`crate::push::push_stream`] on the server (without a copy of each snapshot per
    /// stream); this is the same stream through tonic's encoder.
    async fn stream(
        &self,
        req: Request<Streaming<SidecarMessage>>,
    ) -> Result<Response<SnapshotStream>, Status> {
        let (peer, from) = req
            .extensions()
            .get::<PeerIdentity>()
            .map_or((None, None), |p| (p.0.clone(), p.2));
        let rx = open_stream(self.hub.clone(), peer, from, req.into_inner()).await?;
        let snapshots = rx.filter_map(|m| m.message().map(Ok));
        Ok(Response::new(Box::pin(snapshots)))
    }
}

/// Open a sidecar stream: check its `Hello` against its certificate and, on Kubernetes, its
/// pod ([`crate::push::join`]; `from` is the connection's source address), register its
/// endpoint, ask for a push and follow its answers. Returns the slot its snapshots are put in.
pub(crate) async fn open_stream(
    hub: Arc<Hub>,
    peer: Option<Identity>,
    from: Option<SocketAddr>,
    mut inbound: Streaming<SidecarMessage>,
) -> Result<SlotReceiver, Status> {
    let peer = peer.ok_or_else(|| Status::unauthenticated("no workload certificate"))?;
    let hello = match inbound.message().await? {
        Some(SidecarMessage {
            kind: Some(sidecar_message::Kind::Hello(h)),
        }) => h,
        _ => return Err(Status::invalid_argument("the first message must be Hello")),
    };
    let refused = |e: JoinError| {
        log::warn!(
            "refused {peer} (Hello for service {:?}): {e}",
            hello.service
        );
        Status::new(e.code(), e.to_string())
    };
    let endpoint =
        join::endpoint(&peer, &hello.endpoint_address, from, hub.pods()).map_err(&refused)?;
    let gateway = gateway_name(&hello.gateway, &peer).map_err(|e| {
        log::warn!("refused {peer}: {e}");
        Status::permission_denied(e.to_string())
    })?;
    // The push puts each new message in this slot; the stream sends the latest of each
    // resource.
    let (tx, rx) = slot();
    // Negotiated: a sidecar that does not announce the capability (an older one) gets full
    // snapshots, as version 1 always sent.
    let delta = hello.capabilities.iter().any(|c| c == ENDPOINTS_BY_SERVICE);
    let registration = Registration {
        peer: peer.clone(),
        service: hello.service.clone(),
        endpoint,
        labels: hello.labels.clone().into_iter().collect(),
        cert_not_after: unix_time(hello.cert_not_after_unix),
        admin: scrape_address(&hub, &hello.admin_address, endpoint),
        delta,
        subscribe: hello.subscribe.clone(),
        gateway: gateway.clone(),
    };
    let id = hub.register(registration, tx).map_err(|e| match e {
        RegisterError::TooManyStreams { .. } => {
            log::warn!("refused a stream of {peer}: {e}");
            Status::resource_exhausted(e.to_string())
        }
        RegisterError::Refused(e) => refused(e),
    })?;
    log::info!(
        "sidecar {peer} joined as {}{}, endpoint {endpoint}; {}",
        hello.service,
        gateway.map_or(String::new(), |g| format!(", gateway of {g}")),
        if delta {
            "endpoints by service (it announced endpoints-by-service)"
        } else {
            "full snapshots (it announced no endpoints-by-service)"
        }
    );
    tokio::spawn(follow(hub, id, inbound));
    Ok(rx)
}

/// Where the sidecar's metrics are scraped (`weftctl top`, shown by `status`). On Kubernetes
/// its admin port is on the pod's loopback, out of reach: the injected read-only metrics port
/// ([`crate::inject::METRICS_PORT`], `/metrics`) on the pod IP instead. Elsewhere the admin
/// address it reported, if well-formed: it is shown and scraped as is.
fn scrape_address(hub: &Hub, reported: &str, endpoint: SocketAddr) -> Option<String> {
    if hub.pods().is_some() {
        return Some(SocketAddr::new(endpoint.ip(), crate::inject::METRICS_PORT).to_string());
    }
    reported.parse::<SocketAddr>().ok().map(|a| a.to_string())
}

/// Decide how to certify and issue: a renewal when a client certificate is presented (with
/// the credential again if there is one), a first attestation with the credential otherwise;
/// the error is the status to answer, with a message that names the reason but never the
/// token's secret.
fn certify_blocking(
    issuer: &Issuer,
    trust_domain: &str,
    peer: Option<PeerIdentity>,
    credential: Option<Credential>,
    csr_pem: &str,
) -> Result<Issued, Status> {
    let result =
        match (peer, credential) {
            (Some(PeerIdentity(Some(identity), Some(cert), _)), credential) => {
                if identity.trust_domain() != trust_domain {
                    return Err(Status::permission_denied(format!(
                        "{identity} is not in trust domain {trust_domain}"
                    )));
                }
                issuer.renew(cert.as_ref(), credential.as_ref(), csr_pem)
            }
            (_, Some(credential)) => issuer.issue(&credential, csr_pem),
            (_, None) => return Err(Status::unauthenticated(
                "no credential: present a join token, or renew with a valid workload certificate",
            )),
        };
    result.map_err(|e| match &e {
        IssueError::BadCredential(_) => Status::unauthenticated(e.to_string()),
        IssueError::IdentityMismatch { .. }
        | IssueError::RenewalMismatch { .. }
        | IssueError::Denied { .. }
        | IssueError::TooOld { .. } => Status::permission_denied(e.to_string()),
        IssueError::Attestation(_) | IssueError::DeniedList(_) => {
            Status::unavailable(e.to_string())
        }
        IssueError::Signing(_) => Status::internal(e.to_string()),
        _ if e.is_caller_error() => Status::invalid_argument(e.to_string()),
        _ => Status::internal(e.to_string()),
    })
}

/// A Unix time in seconds from the wire; 0 and negative mean unknown.
fn unix_time(secs: i64) -> Option<SystemTime> {
    let secs = u64::try_from(secs).ok().filter(|s| *s > 0)?;
    SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs))
}

/// Record a sidecar's ACKs and NACKs until its stream ends, then withdraw it after the grace.
async fn follow(hub: Arc<Hub>, id: u64, mut inbound: Streaming<SidecarMessage>) {
    loop {
        let msg = match inbound.message().await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                log::debug!("sidecar stream {id}: {e}");
                break;
            }
        };
        let registered = match msg.kind {
            Some(sidecar_message::Kind::Ack(a)) => hub.ack(id, a.version, &a.resource),
            Some(sidecar_message::Kind::Nack(n)) => hub.nack(id, n.version, n.reason, &n.resource),
            Some(sidecar_message::Kind::Subscribe(s)) => hub.subscribe(id, s.services),
            Some(sidecar_message::Kind::Certificate(c)) => {
                hub.certificate(id, unix_time(c.not_after_unix))
            }
            Some(sidecar_message::Kind::Draining(_)) => {
                if hub.withdraw(id) {
                    return;
                }
                false
            }
            _ => {
                let registered = hub.is_registered(id);
                if registered {
                    log::warn!("sidecar stream {id}: unexpected message");
                }
                registered
            }
        };
        if !registered {
            break;
        }
    }
    hub.disconnected(id);
    hub.expire(id).await;
}
