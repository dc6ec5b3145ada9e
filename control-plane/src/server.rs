//! The control-plane server: the policy push (`weft.control.v1`, gRPC over mutual TLS) and
//! the operator status endpoint.
//!
//! - Sidecars connect with their workload certificates (from the mesh CA) and say `Hello`
//!   first; the service they name must be their certificate's service account (and, when the
//!   policy lists the service, its identity). Their inbound address and labels are registered
//!   as an endpoint of that service, withdrawn [`ServerConfig::grace`] after the stream ends.
//! - Each sidecar gets [`MeshPolicy::snapshot_with_endpoints`] for its service, and again
//!   whenever that snapshot's version changes (policy change or endpoint change). It answers
//!   `Ack` or `Nack`; both are recorded and shown by `GET /status`.
//! - The policy directory is watched ([`DirSource`]); an invalid change is logged with file,
//!   line and reason, shown in `/status`, and not pushed ([`LastGood`]).
//!
//! The status endpoint is plain HTTP on a loopback address and not authenticated yet.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig as TlsServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tonic::{Request, Response, Status, Streaming};
use weft_certs::Identity;
use weft_policy::wire::Endpoint;
use weft_wire::v1::control_plane_server::{ControlPlane, ControlPlaneServer};
use weft_wire::v1::{control_message, sidecar_message, ControlMessage, SidecarMessage};

use crate::ca_store::{CaStore, CaStoreOptions};
use crate::policy::{MeshPolicy, PolicyErrors};
use crate::source::{DirSource, LastGood, PolicySource, Update, Watch};

/// Namespace and service account of the control plane's own identity.
pub const CONTROL_PLANE_NAMESPACE: &str = "weft-system";
/// Service account of the control plane's own identity.
pub const CONTROL_PLANE_SERVICE_ACCOUNT: &str = "control-plane";
/// Lifetime of the serving certificate the control plane issues itself at start.
pub const SERVER_CERT_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long a disconnected sidecar's endpoint stays registered.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);
/// Upper bounds (seconds) of the `weft_cp_push_duration_seconds` buckets: 1 ms … 10 s.
pub const PUSH_DURATION_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Push latency: from sending a snapshot version to a sidecar until it ACKs that version.
#[derive(Debug, Default)]
struct PushHistogram {
    /// Observations per bucket of [`PUSH_DURATION_BUCKETS`] (not cumulative); the last slot
    /// counts those above the largest bound.
    counts: [u64; PUSH_DURATION_BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl PushHistogram {
    fn observe(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = PUSH_DURATION_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(PUSH_DURATION_BUCKETS.len());
        self.counts[i] += 1;
        self.sum += secs;
        self.count += 1;
    }

    /// Prometheus text of the family `weft_cp_push_duration_seconds`.
    fn render(&self) -> String {
        let mut out = String::from(
            "# HELP weft_cp_push_duration_seconds Time from sending a snapshot version to a sidecar until it ACKs that version (NACKs are not observed).\n\
             # TYPE weft_cp_push_duration_seconds histogram\n",
        );
        let mut cumulative = 0;
        for (b, c) in PUSH_DURATION_BUCKETS.iter().zip(self.counts) {
            cumulative += c;
            out.push_str(&format!(
                "weft_cp_push_duration_seconds_bucket{{le=\"{b}\"}} {cumulative}\n"
            ));
        }
        out.push_str(&format!(
            "weft_cp_push_duration_seconds_bucket{{le=\"+Inf\"}} {}\n\
             weft_cp_push_duration_seconds_sum {}\n\
             weft_cp_push_duration_seconds_count {}\n",
            self.count, self.sum, self.count
        ));
        out
    }
}

/// How to run the server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The policy directory.
    pub policy_dir: PathBuf,
    /// The CA state directory.
    pub state_dir: PathBuf,
    /// The sidecars' address (mTLS gRPC).
    pub listen: SocketAddr,
    /// The operator API address (plain HTTP, loopback).
    pub admin: SocketAddr,
    /// The mesh trust domain.
    pub trust_domain: String,
    /// Where the CA root comes from.
    pub ca: CaStoreOptions,
    /// How long a disconnected sidecar's endpoint stays registered.
    pub grace: Duration,
    /// How often the policy directory is checked.
    pub poll_interval: Duration,
}

/// The control plane's own identity in `trust_domain`.
pub fn control_plane_identity(trust_domain: &str) -> anyhow::Result<Identity> {
    Ok(Identity::new(
        trust_domain,
        CONTROL_PLANE_NAMESPACE,
        CONTROL_PLANE_SERVICE_ACCOUNT,
    )?)
}

/// One sidecar stream, live or within its grace period.
#[derive(Debug)]
struct SidecarEntry {
    service: String,
    identity: String,
    endpoint: String,
    labels: BTreeMap<String, String>,
    sent: Option<String>,
    /// When `sent` was sent; taken when the sidecar ACKs it.
    sent_at: Option<Instant>,
    acked: Option<String>,
    nack: Option<(String, String)>,
    connected: bool,
    since: SystemTime,
    tx: Option<mpsc::UnboundedSender<Result<ControlMessage, Status>>>,
}

struct HubState {
    policy: LastGood,
    policy_error: Option<String>,
    sidecars: BTreeMap<u64, SidecarEntry>,
    next_id: u64,
    pushes: u64,
    rejected: u64,
    push_duration: PushHistogram,
}

/// The shared state of the push: the policy in force, every sidecar, and what each was sent.
pub struct Hub {
    state: Mutex<HubState>,
    trust_bundle_pem: String,
    trust_domain: String,
    grace: Duration,
}

impl Hub {
    fn lock(&self) -> MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take in a freshly loaded policy: push changed snapshots, or log and record the errors.
    pub fn update_policy(&self, loaded: Result<MeshPolicy, PolicyErrors>) {
        let mut st = self.lock();
        match st.policy.update(loaded) {
            Update::Unchanged => {
                st.policy_error = None;
            }
            Update::Applied { from, to } => {
                st.policy_error = None;
                log::info!("policy {from} -> {to}: pushing changed snapshots");
                push_changed(&mut st, &self.trust_bundle_pem);
            }
            Update::Rejected(errors) => {
                for e in errors.iter() {
                    log::error!("policy rejected: {e}");
                }
                log::error!(
                    "policy change rejected; keeping version {}",
                    st.policy.current().version()
                );
                st.policy_error = Some(errors.to_string());
                st.rejected += 1;
            }
        }
    }

    /// Prometheus text of `GET /metrics`.
    pub fn metrics(&self) -> String {
        let st = self.lock();
        let connected = st.sidecars.values().filter(|s| s.connected).count();
        let in_sync = st
            .sidecars
            .values()
            .filter(|s| s.connected && s.sent.is_some() && s.acked == s.sent)
            .count();
        let nacking = st
            .sidecars
            .values()
            .filter(|s| {
                s.connected && s.nack.as_ref().map(|(v, _)| Some(v)) == Some(s.sent.as_ref())
            })
            .count();
        format!(
            "# HELP weft_cp_sidecars Sidecars with a stream, by state (connected; in_sync: ACKed the snapshot last sent; nacking: NACKed it).\n\
             # TYPE weft_cp_sidecars gauge\n\
             weft_cp_sidecars{{state=\"connected\"}} {connected}\n\
             weft_cp_sidecars{{state=\"in_sync\"}} {in_sync}\n\
             weft_cp_sidecars{{state=\"nacking\"}} {nacking}\n\
             # HELP weft_cp_policy_valid 1 when the latest policy change was accepted, 0 while it is refused.\n\
             # TYPE weft_cp_policy_valid gauge\n\
             weft_cp_policy_valid {}\n\
             # HELP weft_cp_policy_rejected_total Policy changes refused.\n\
             # TYPE weft_cp_policy_rejected_total counter\n\
             weft_cp_policy_rejected_total {}\n\
             # HELP weft_cp_snapshots_pushed_total Snapshots sent to sidecars.\n\
             # TYPE weft_cp_snapshots_pushed_total counter\n\
             weft_cp_snapshots_pushed_total {}\n\
             {}",
            u8::from(st.policy_error.is_none()),
            st.rejected,
            st.pushes,
            st.push_duration.render()
        )
    }

    /// The status document of `GET /status`.
    pub fn status(&self) -> serde_json::Value {
        let st = self.lock();
        let sidecars: Vec<serde_json::Value> = st
            .sidecars
            .values()
            .map(|s| {
                serde_json::json!({
                    "service": s.service,
                    "identity": s.identity,
                    "endpoint": s.endpoint,
                    "labels": s.labels,
                    "connected": s.connected,
                    "since": humantime::format_rfc3339_seconds(s.since).to_string(),
                    "sent_version": s.sent,
                    "acked_version": s.acked,
                    "nack": s.nack.as_ref().map(|(v, r)| serde_json::json!({"version": v, "reason": r})),
                })
            })
            .collect();
        serde_json::json!({
            "policy_version": st.policy.current().version(),
            "policy_files": st.policy.current().files().iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
            "last_policy_error": st.policy_error,
            "snapshots_pushed": st.pushes,
            "sidecars": sidecars,
        })
    }
}

/// Endpoints registered by sidecars (connected or in grace), per service, sorted by address.
fn registered(st: &HubState) -> BTreeMap<String, Vec<Endpoint>> {
    let mut out: BTreeMap<String, Vec<Endpoint>> = BTreeMap::new();
    for s in st.sidecars.values() {
        let list = out.entry(s.service.clone()).or_default();
        if !list.iter().any(|e| e.address == s.endpoint) {
            list.push(Endpoint {
                address: s.endpoint.clone(),
                labels: s.labels.clone(),
            });
        }
    }
    for list in out.values_mut() {
        list.sort_by(|a, b| a.address.cmp(&b.address));
    }
    out
}

/// Send every connected sidecar its snapshot if its version differs from the one last sent.
fn push_changed(st: &mut HubState, trust_bundle_pem: &str) {
    let endpoints = registered(st);
    let policy = st.policy.current().clone();
    let mut pushed = 0;
    for s in st.sidecars.values_mut() {
        let Some(tx) = &s.tx else { continue };
        let snap = policy.snapshot_with_endpoints(&s.service, &endpoints);
        if s.sent.as_deref() == Some(snap.version.as_str()) {
            continue;
        }
        let json = match serde_json::to_vec(&snap) {
            Ok(j) => j,
            Err(e) => {
                log::error!("cannot encode the snapshot for {}: {e}", s.service);
                continue;
            }
        };
        let msg = ControlMessage {
            kind: Some(control_message::Kind::Snapshot(weft_wire::v1::Snapshot {
                version: snap.version.clone(),
                policy_json: json,
                trust_bundle_pem: trust_bundle_pem.to_owned(),
            })),
        };
        if tx.send(Ok(msg)).is_ok() {
            s.sent = Some(snap.version);
            s.sent_at = Some(Instant::now());
            pushed += 1;
        }
    }
    st.pushes += pushed;
}

/// The authenticated client of a connection, from its certificate.
#[derive(Debug, Clone)]
pub struct PeerIdentity(pub Option<Identity>);

/// A TLS connection that tells tonic who the client is.
struct TlsConn(TlsStream<TcpStream>);

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = PeerIdentity;
    fn connect_info(&self) -> PeerIdentity {
        let (_, conn) = self.0.get_ref();
        let id = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| weft_certs::identity_from_cert_der(c.as_ref()).ok());
        PeerIdentity(id)
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

struct Service {
    hub: Arc<Hub>,
}

type SnapshotStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<ControlMessage, Status>> + Send>>;

#[tonic::async_trait]
impl ControlPlane for Service {
    type StreamStream = SnapshotStream;

    async fn stream(
        &self,
        req: Request<Streaming<SidecarMessage>>,
    ) -> Result<Response<SnapshotStream>, Status> {
        let peer = req
            .extensions()
            .get::<PeerIdentity>()
            .and_then(|p| p.0.clone())
            .ok_or_else(|| Status::unauthenticated("no workload certificate"))?;
        let mut inbound = req.into_inner();
        let hello = match inbound.message().await? {
            Some(SidecarMessage {
                kind: Some(sidecar_message::Kind::Hello(h)),
            }) => h,
            _ => return Err(Status::invalid_argument("the first message must be Hello")),
        };
        let hub = self.hub.clone();
        if peer.trust_domain() != hub.trust_domain || peer.service_account() != hello.service {
            log::warn!(
                "refused {peer}: Hello names service {:?}, the certificate does not",
                hello.service
            );
            return Err(Status::permission_denied(format!(
                "{peer} may not speak for service {:?}",
                hello.service
            )));
        }
        let endpoint: SocketAddr = hello.endpoint_address.parse().map_err(|e| {
            Status::invalid_argument(format!(
                "bad endpoint address {:?}: {e}",
                hello.endpoint_address
            ))
        })?;
        if endpoint.ip().is_unspecified() || endpoint.port() == 0 {
            return Err(Status::invalid_argument(format!(
                "endpoint address {endpoint} is not reachable by other sidecars; set listen.inbound to the sidecar's own address"
            )));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let id = {
            let mut st = hub.lock();
            if let Some(s) = st
                .policy
                .current()
                .services()
                .iter()
                .find(|s| s.name == hello.service)
            {
                if s.identity != peer.to_string() {
                    return Err(Status::permission_denied(format!(
                        "service {} has identity {}, not {peer}",
                        s.name, s.identity
                    )));
                }
            }
            let id = st.next_id;
            st.next_id += 1;
            st.sidecars.insert(
                id,
                SidecarEntry {
                    service: hello.service.clone(),
                    identity: peer.to_string(),
                    endpoint: endpoint.to_string(),
                    labels: hello.labels.into_iter().collect(),
                    sent: None,
                    sent_at: None,
                    acked: None,
                    nack: None,
                    connected: true,
                    since: SystemTime::now(),
                    tx: Some(tx),
                },
            );
            push_changed(&mut st, &hub.trust_bundle_pem);
            id
        };
        log::info!("sidecar {peer} connected, endpoint {endpoint}");
        tokio::spawn(follow(hub, id, inbound));
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
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
        let mut st = hub.lock();
        let st = &mut *st;
        let Some(s) = st.sidecars.get_mut(&id) else {
            break;
        };
        match msg.kind {
            Some(sidecar_message::Kind::Ack(a)) => {
                log::debug!("{} at {} ACKed {}", s.service, s.endpoint, a.version);
                if s.sent.as_deref() == Some(a.version.as_str()) {
                    if let Some(at) = s.sent_at.take() {
                        st.push_duration.observe(at.elapsed());
                    }
                }
                s.acked = Some(a.version);
            }
            Some(sidecar_message::Kind::Nack(n)) => {
                log::warn!(
                    "{} at {} NACKed {}: {}",
                    s.service,
                    s.endpoint,
                    n.version,
                    n.reason
                );
                s.nack = Some((n.version, n.reason));
            }
            _ => log::warn!("sidecar stream {id}: unexpected message"),
        }
    }
    {
        let mut st = hub.lock();
        if let Some(s) = st.sidecars.get_mut(&id) {
            log::info!("sidecar {} at {} disconnected", s.service, s.endpoint);
            s.connected = false;
            s.tx = None;
        }
    }
    tokio::time::sleep(hub.grace).await;
    let mut st = hub.lock();
    if st.sidecars.remove(&id).is_some() {
        push_changed(&mut st, &hub.trust_bundle_pem);
    }
}

/// A started server.
pub struct Running {
    /// The sidecars' address actually bound.
    pub listen: SocketAddr,
    /// The operator API address actually bound.
    pub admin: SocketAddr,
    /// The push state.
    pub hub: Arc<Hub>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _watch: Watch,
}

impl Running {
    /// Stop: no more connections or policy reloads, and every sidecar stream is ended (the
    /// sidecars reconnect with backoff and keep serving meanwhile). Dropping does the same.
    pub fn shutdown(self) {}
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let mut st = self.hub.lock();
        for s in st.sidecars.values_mut() {
            s.tx = None;
            s.connected = false;
        }
    }
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("listen", &self.listen)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

fn pem_certs(pem: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    Ok(weft_certs::parse_cert_chain_pem(pem)?)
}

fn tls_config(store: &CaStore) -> anyhow::Result<TlsServerConfig> {
    rustls::crypto::ring::default_provider()
        .install_default()
        .ok();
    let id = control_plane_identity(store.trust_domain())?;
    let issued = store.ca().issue(&id, SERVER_CERT_LIFETIME)?;
    let chain = pem_certs(&issued.cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("server key: {e}"))?;
    let mut roots = RootCertStore::empty();
    for r in store.trust_bundle_der() {
        roots.add(r.clone())?;
    }
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots)).build()?;
    let mut config = TlsServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Open the CA, load the policy, bind both addresses and serve on the current Tokio runtime.
/// Fails when the policy is invalid at start (there is nothing good to keep in force).
pub async fn start(config: ServerConfig) -> anyhow::Result<Running> {
    let store = CaStore::open(&config.state_dir, &config.trust_domain, config.ca.clone())
        .context("certificate authority")?;
    let tls = TlsAcceptor::from(Arc::new(tls_config(&store)?));
    let source = DirSource::new(&config.policy_dir).with_interval(config.poll_interval);
    let (changed_tx, mut changed) = mpsc::unbounded_channel::<()>();
    let watch = source
        .watch(Box::new(move || {
            let _ = changed_tx.send(());
        }))
        .context("watching the policy directory")?;
    let policy = source
        .load()
        .map_err(|e| anyhow::anyhow!("the policy is invalid:\n{e}"))?;
    log::info!(
        "policy {} from {} ({} services)",
        policy.version(),
        source.describe(),
        policy.services().len()
    );
    let hub = Arc::new(Hub {
        state: Mutex::new(HubState {
            policy: LastGood::new(policy),
            policy_error: None,
            sidecars: BTreeMap::new(),
            next_id: 1,
            pushes: 0,
            rejected: 0,
            push_duration: PushHistogram::default(),
        }),
        trust_bundle_pem: store.trust_bundle_pem().to_owned(),
        trust_domain: store.trust_domain().to_owned(),
        grace: config.grace,
    });

    let mut tasks = Vec::new();
    {
        let hub = hub.clone();
        tasks.push(tokio::spawn(async move {
            while changed.recv().await.is_some() {
                let source = source.clone();
                let loaded = tokio::task::spawn_blocking(move || source.load()).await;
                match loaded {
                    Ok(l) => hub.update_policy(l),
                    Err(e) => log::error!("policy load task: {e}"),
                }
            }
        }));
    }

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let listen = listener.local_addr()?;
    let admin_listener = TcpListener::bind(config.admin)
        .await
        .with_context(|| format!("binding {}", config.admin))?;
    let admin = admin_listener.local_addr()?;

    let (conn_tx, conn_rx) = mpsc::channel::<Result<TlsConn, std::io::Error>>(64);
    tasks.push(tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    log::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (tls, conn_tx) = (tls.clone(), conn_tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), tls.accept(tcp)).await {
                    Ok(Ok(s)) => {
                        let _ = conn_tx.send(Ok(TlsConn(s))).await;
                    }
                    Ok(Err(e)) => log::warn!("TLS handshake from {peer}: {e}"),
                    Err(_) => log::warn!("TLS handshake from {peer}: timed out"),
                }
            });
        }
    }));
    let svc = ControlPlaneServer::new(Service { hub: hub.clone() });
    tasks.push(tokio::spawn(async move {
        let r = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .add_service(svc)
            .serve_with_incoming(ReceiverStream::new(conn_rx))
            .await;
        if let Err(e) = r {
            log::error!("gRPC server: {e}");
        }
    }));
    tasks.push(tokio::spawn(serve_admin(admin_listener, hub.clone())));
    log::info!("control plane: sidecars on {listen} (mTLS), operator API on http://{admin}");
    Ok(Running {
        listen,
        admin,
        hub,
        tasks,
        _watch: watch,
    })
}

async fn serve_admin(listener: TcpListener, hub: Arc<Hub>) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                log::warn!("admin accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let hub = hub.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let hub = hub.clone();
                    async move {
                        let (status, ctype, body) = match (req.method(), req.uri().path()) {
                            (&hyper::Method::GET, "/status") => {
                                (200, "application/json", format!("{:#}\n", hub.status()))
                            }
                            (&hyper::Method::GET, "/live") => (200, "text/plain", "live\n".into()),
                            (&hyper::Method::GET, "/metrics") => {
                                (200, "text/plain; version=0.0.4", hub.metrics())
                            }
                            _ => (
                                404,
                                "text/plain",
                                "not found; try GET /status or /metrics\n".into(),
                            ),
                        };
                        let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
                        *r.status_mut() = hyper::StatusCode::from_u16(status)
                            .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
                        r.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static(ctype),
                        );
                        Ok::<_, Infallible>(r)
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_histogram_renders_cumulative_buckets() {
        let mut h = PushHistogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(20));
        let text = h.render();
        assert!(text.contains("# TYPE weft_cp_push_duration_seconds histogram"));
        assert!(text.contains("weft_cp_push_duration_seconds_bucket{le=\"0.001\"} 1\n"));
        assert!(text.contains("weft_cp_push_duration_seconds_bucket{le=\"0.025\"} 1\n"));
        assert!(text.contains("weft_cp_push_duration_seconds_bucket{le=\"0.05\"} 2\n"));
        assert!(text.contains("weft_cp_push_duration_seconds_bucket{le=\"10\"} 2\n"));
        assert!(text.contains("weft_cp_push_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("weft_cp_push_duration_seconds_count 3\n"));
    }
}
