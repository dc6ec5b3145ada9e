//! The simulated sidecars of the push scenario ([`Fleet`]): each speaks weft.control.v1 over
//! TLS 1.3 with its own workload certificate, ACKs every snapshot and records when.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{bail, Context as _};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_stream::wrappers::ReceiverStream;
use weft_api::v1::control_plane_client::ControlPlaneClient;
use weft_api::v1::{control_message, sidecar_message, Ack, Hello, SidecarMessage};

use weft_certs::{CertificateAuthority, Identity};

use super::policy::*;

/// The capability a sidecar announces for endpoints by service (`weft.control.v1`).
const ENDPOINTS_BY_SERVICE: &str = "endpoints-by-service";
/// The prefix of an endpoints resource's name in `Ack.resource`.
const RESOURCE_PREFIX: &str = "endpoints/";
/// Sidecars setting up their stream (TCP, TLS, `Hello`) at once.
pub(crate) const CONNECTING: usize = 256;

/// What one simulated sidecar has seen: each snapshot version with when its ACK was sent.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    pub(crate) acks: Vec<(String, Instant)>,
    /// Each `Endpoints` ACKed: service, when.
    pub(crate) endpoint_acks: Vec<(String, Instant)>,
    pub(crate) error: Option<String>,
}

pub(crate) type SeenCell = Arc<Mutex<Seen>>;

pub(crate) fn lock(c: &SeenCell) -> MutexGuard<'_, Seen> {
    c.lock().unwrap_or_else(|e| e.into_inner())
}

/// Client TLS of one service: its workload certificate, the mesh root, TLS 1.3, `h2`.
pub(crate) fn client_tls(
    ca: &CertificateAuthority,
    service: usize,
) -> anyhow::Result<Arc<ClientConfig>> {
    let id = Identity::new(TRUST_DOMAIN, "default", &service_name(service))?;
    let issued = ca.issue(&id, Duration::from_secs(3600))?;
    let chain = weft_certs::parse_cert_chain_pem(&issued.cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("workload key: {e}"))?;
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der().clone())?;
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// One simulated sidecar: connect, `Hello`, then `Ack` every snapshot at once, recording it.
pub(crate) async fn sidecar(
    cp: SocketAddr,
    tls: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    hello: Hello,
    seen: SeenCell,
    connecting: Arc<tokio::sync::Semaphore>,
) -> anyhow::Result<()> {
    // At most CONNECTING set-ups at once: 10,000 simultaneous TLS handshakes on the control
    // plane's one core outlast its handshake timeout.
    let permit = connecting.acquire_owned().await.context("connect gate")?;
    let connector = TlsConnector::from(tls);
    let connect = tower::service_fn(move |_: http::Uri| {
        let (connector, server_name) = (connector.clone(), server_name.clone());
        async move {
            let tcp = TcpStream::connect(cp).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    let (tx, rx) = mpsc::channel::<SidecarMessage>(4);
    let mut inbound = tokio::time::timeout(CONNECT_TIMEOUT, async {
        let channel = tonic::transport::Endpoint::from_static("http://control-plane")
            .connect_with_connector(connect)
            .await
            .context("connect")?;
        let mut client = ControlPlaneClient::new(channel);
        tx.send(SidecarMessage {
            kind: Some(sidecar_message::Kind::Hello(hello)),
        })
        .await
        .context("send Hello")?;
        let stream = client
            .stream(ReceiverStream::new(rx))
            .await
            .context("open the stream")?;
        anyhow::Ok(stream.into_inner())
    })
    .await
    .context("connect timed out")??;
    drop(permit);
    while let Some(msg) = inbound.message().await.context("receive")? {
        let (version, resource) = match &msg.kind {
            Some(control_message::Kind::Snapshot(s)) => (s.version.clone(), String::new()),
            Some(control_message::Kind::Endpoints(e)) => {
                (e.version.clone(), format!("{RESOURCE_PREFIX}{}", e.service))
            }
            // The fleet asks for no Gateway.
            Some(control_message::Kind::Gateway(_)) | None => continue,
        };
        tx.send(SidecarMessage {
            kind: Some(sidecar_message::Kind::Ack(Ack {
                version: version.clone(),
                resource: resource.clone(),
            })),
        })
        .await
        .context("send Ack")?;
        let mut seen = lock(&seen);
        match resource.strip_prefix(RESOURCE_PREFIX) {
            Some(service) => seen
                .endpoint_acks
                .push((service.to_owned(), Instant::now())),
            None => seen.acks.push((version, Instant::now())),
        }
    }
    bail!("the control plane ended the stream")
}
/// The simulated sidecars of one run; dropping them ends their tasks (and so their streams).
pub(crate) struct Fleet {
    pub(crate) seen: Vec<SeenCell>,
    pub(crate) tasks: Vec<JoinHandle<()>>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Fleet {
    /// Sidecars `first .. first + n`; with `by_service` they announce the capability and
    /// subscribe to their [`callees`] when `calls`.
    pub(crate) fn spawn(
        (first, n): (usize, usize),
        cp: SocketAddr,
        tls: &[Arc<ClientConfig>],
        server_name: &ServerName<'static>,
        (by_service, calls): (bool, bool),
    ) -> Self {
        let mut seen = Vec::with_capacity(n);
        let mut tasks = Vec::with_capacity(n);
        let connecting = Arc::new(tokio::sync::Semaphore::new(CONNECTING));
        for i in first..first + n {
            let cell = SeenCell::default();
            let service = i % SERVICES;
            // Unique per sidecar: 127.0.0.1–200, port 20000 + i (nothing listens there).
            let hello = Hello {
                service: service_name(service),
                endpoint_address: format!("127.0.0.{}:{}", 1 + i % 200, 20000 + i),
                labels: [(
                    "version".to_owned(),
                    if (i / SERVICES) % 2 == 1 { "v2" } else { "v1" }.to_owned(),
                )]
                .into(),
                cert_not_after_unix: 0,
                admin_address: String::new(),
                capabilities: if by_service {
                    vec![ENDPOINTS_BY_SERVICE.to_owned()]
                } else {
                    Vec::new()
                },
                subscribe: if by_service && calls {
                    callees(service)
                } else {
                    Vec::new()
                },
                gateway: String::new(),
            };
            let task = sidecar(
                cp,
                tls[service].clone(),
                server_name.clone(),
                hello,
                cell.clone(),
                connecting.clone(),
            );
            let cell2 = cell.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = task.await {
                    lock(&cell2).error = Some(format!("{e:#}"));
                }
            }));
            seen.push(cell);
        }
        Fleet { seen, tasks }
    }

    /// Fails with the first sidecar's error, if any has failed.
    pub(crate) fn check(&self) -> anyhow::Result<()> {
        for (i, c) in self.seen.iter().enumerate() {
            if let Some(e) = &lock(c).error {
                bail!("simulated sidecar {i}: {e}");
            }
        }
        Ok(())
    }

    /// Snapshots received so far, in all.
    pub(crate) fn received(&self) -> usize {
        self.seen.iter().map(|c| lock(c).acks.len()).sum()
    }

    /// When the last sidecar got its first snapshot, if all have one.
    pub(crate) fn all_have_one(&self) -> Option<Instant> {
        self.seen
            .iter()
            .map(|c| lock(c).acks.first().map(|a| a.1))
            .try_fold(None::<Instant>, |acc, t| Some(acc.max(Some(t?))))
            .flatten()
    }

    /// Each sidecar's latest version.
    pub(crate) fn versions(&self) -> Vec<Option<String>> {
        self.seen
            .iter()
            .map(|c| lock(c).acks.last().map(|a| a.0.clone()))
            .collect()
    }

    /// For each sidecar, when it ACKed a version other than `before[i]` after `since`.
    pub(crate) fn acked_new(
        &self,
        before: &[Option<String>],
        since: Instant,
    ) -> Vec<Option<Instant>> {
        self.seen
            .iter()
            .zip(before)
            .map(|(c, old)| {
                lock(c)
                    .acks
                    .iter()
                    .find(|(v, t)| *t >= since && Some(v) != old.as_ref())
                    .map(|a| a.1)
            })
            .collect()
    }
}
