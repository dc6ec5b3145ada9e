//! The control-plane server: wires the CA ([`crate::ca`]), the policy source
//! ([`crate::policy`]), the push ([`crate::push`], served to sidecars by `push::grpc`) and the
//! operator API ([`crate::operator::api`]), and runs them on the current Tokio runtime.
//!
//! - The policy directory is watched ([`DirSource`]); an invalid change is logged with file,
//!   line and reason, shown in `/status`, and not pushed ([`crate::policy::source::LastGood`]).
//! - The sidecars' port is gRPC over mutual TLS with the control plane's own workload
//!   certificate, issued from the mesh CA at start. A client certificate is optional at the TLS
//!   level so a sidecar without one can bootstrap with a join token (`Certify`); the stream
//!   refuses such connections.
//! - `Certify` issues workload certificates with an [`Issuer`] over the state directory's join
//!   tokens ([`JoinTokenAttestor`]) and, with [`ServerConfig::kubernetes_tokens`], projected
//!   service account tokens verified by TokenReview ([`TokenReviewAttestor`]), living
//!   [`ServerConfig::cert_lifetime`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig as TlsServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use weft_certs::Identity;

use crate::ca::ca_store::{CaStore, CaStoreOptions};
pub use crate::ca::issuer::DEFAULT_CERT_LIFETIME;
use crate::ca::issuer::{Issuer, IssuerOptions};
use crate::ca::tokenreview::{KubeConnection, TokenReviewAttestor};
use crate::ca::tokens::JoinTokenAttestor;
pub use crate::limits::{check_admin_address, ServeOptions, SidecarLimits};
use crate::listeners::{bind, Bound};
use crate::operator::auth::AdminToken;
use crate::operator::history::History;
use crate::operator::ops::Ops;
use crate::policy::kube::source::{KubeOptions, KubeSource};
use crate::policy::mesh::MeshPolicy;
use crate::policy::source::{DirSource, PolicySource, Watch};
use crate::push::hub::Hub;
use crate::shared::{self, Credentials, Replicas};
use crate::sidecar_port::serve_sidecars;
pub use crate::sidecar_port::SIDECAR_LISTEN_BACKLOG;

pub use crate::names::{CONTROL_PLANE_NAMESPACE, CONTROL_PLANE_SERVICE_ACCOUNT};

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
    /// The operator API's bearer token; `None`: the state directory's `admin.token`, created
    /// on first start.
    pub admin_token_file: Option<PathBuf>,
    /// Lifetime of the workload certificates `Certify` issues (default
    /// [`DEFAULT_CERT_LIFETIME`]); sidecars renew at about two thirds of it.
    pub cert_lifetime: Duration,
    /// Accept Kubernetes projected service account tokens (audience `weft`) in `Certify`,
    /// verified with TokenReview through this API connection (`--kubernetes-tokens`); `None`:
    /// join tokens only. Join tokens keep working either way.
    pub kubernetes_tokens: Option<KubeConnection>,
}

/// The control plane's own identity in `trust_domain`.
pub fn control_plane_identity(trust_domain: &str) -> anyhow::Result<Identity> {
    Ok(Identity::new(
        trust_domain,
        CONTROL_PLANE_NAMESPACE,
        CONTROL_PLANE_SERVICE_ACCOUNT,
    )?)
}

/// A started server.
pub struct Running {
    /// The sidecars' address actually bound.
    pub listen: SocketAddr,
    /// The operator API address actually bound.
    pub admin: SocketAddr,
    /// The metrics listener's address actually bound, if any.
    pub metrics: Option<SocketAddr>,
    /// The push state.
    pub hub: Arc<Hub>,
    /// The file holding the operator API's bearer token.
    pub admin_token_file: PathBuf,
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
        self.hub.disconnect_all();
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

/// The control plane's own serving certificate, reissued from the mesh CA at two thirds of its
/// lifetime so a long-running control plane never serves an expired one. Handshakes read it
/// through an [`ArcSwap`]; connections already open keep theirs.
#[derive(Debug)]
struct ServingCert {
    current: ArcSwap<CertifiedKey>,
    /// When the certificate in force was issued and expires.
    validity: std::sync::Mutex<(SystemTime, SystemTime)>,
}

impl ServingCert {
    fn issue(
        store: &CaStore,
        lifetime: Duration,
    ) -> anyhow::Result<(CertifiedKey, SystemTime, SystemTime)> {
        let id = control_plane_identity(store.trust_domain())?;
        let issued = store.ca().issue(&id, lifetime)?;
        let chain = pem_certs(&issued.cert_pem)?;
        let leaf = chain.first().context("issued an empty chain")?;
        let not_before = weft_certs::not_before_from_cert_der(leaf.as_ref())?;
        let not_after = weft_certs::not_after_from_cert_der(leaf.as_ref())?;
        let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())
            .map_err(|e| anyhow::anyhow!("server key: {e}"))?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| anyhow::anyhow!("server key: {e}"))?;
        Ok((CertifiedKey::new(chain, signer), not_before, not_after))
    }

    fn new(store: &CaStore, lifetime: Duration) -> anyhow::Result<Self> {
        let (key, not_before, not_after) = Self::issue(store, lifetime)?;
        Ok(Self {
            current: ArcSwap::from_pointee(key),
            validity: std::sync::Mutex::new((not_before, not_after)),
        })
    }

    /// Reissue at each renewal time, forever; a failure keeps the certificate in force and is
    /// retried in a tenth of the time left (at least a second).
    async fn renew(self: Arc<Self>, store: Arc<CaStore>, lifetime: Duration) {
        loop {
            let (not_before, not_after) = *self.validity.lock().unwrap_or_else(|e| e.into_inner());
            let due = weft_certs::renewal_time(not_before, not_after);
            if let Ok(wait) = due.duration_since(SystemTime::now()) {
                tokio::time::sleep(wait).await;
            }
            match Self::issue(&store, lifetime) {
                Ok((key, nb, na)) => {
                    self.current.store(Arc::new(key));
                    *self.validity.lock().unwrap_or_else(|e| e.into_inner()) = (nb, na);
                    log::info!(
                        "control-plane serving certificate renewed, valid until {}",
                        humantime::format_rfc3339_seconds(na)
                    );
                }
                Err(e) => {
                    let left = not_after
                        .duration_since(SystemTime::now())
                        .unwrap_or_default();
                    let retry = (left / 10).max(Duration::from_secs(1));
                    log::error!("cannot renew the control-plane serving certificate: {e:#}; retrying in {retry:?}");
                    tokio::time::sleep(retry).await;
                }
            }
        }
    }
}

impl rustls::server::ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn tls_config(store: &CaStore, cert: Arc<ServingCert>) -> anyhow::Result<TlsServerConfig> {
    rustls::crypto::ring::default_provider()
        .install_default()
        .ok();
    let mut roots = RootCertStore::empty();
    for r in store.trust_bundle_der() {
        roots.add(r.clone())?;
    }
    // A sidecar without a certificate yet may connect to bootstrap with a join token
    // (`Certify`); `Stream` refuses connections without a verified client certificate, and a
    // certificate that is presented must still verify.
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
        .allow_unauthenticated()
        .build()?;
    let mut config = TlsServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Where [`start_with`] takes the mesh policy from.
#[derive(Debug, Clone)]
pub enum PolicyFrom {
    /// The watched directory [`ServerConfig::policy_dir`], changed with `weftctl apply`.
    Directory,
    /// The Kubernetes API ([`KubeSource`]); `weftctl apply` and `rollback` are refused.
    Kubernetes(KubeOptions),
}

/// Open the CA, load the policy, bind both addresses and serve on the current Tokio runtime.
/// Fails when the policy is invalid at start (there is nothing good to keep in force).
pub async fn start(config: ServerConfig) -> anyhow::Result<Running> {
    start_with(config, PolicyFrom::Directory).await
}

/// [`start`] with the policy from `from`, with the default [`ServeOptions`].
pub async fn start_with(config: ServerConfig, from: PolicyFrom) -> anyhow::Result<Running> {
    start_bounded(config, from, ServeOptions::default()).await
}

/// [`start`] with the policy from `from` and the listeners as `options` say: the CA, the
/// policy and its source, the push, then the listeners, in that order (the first failure is
/// the error). A plaintext operator API beyond loopback is refused first
/// ([`check_admin_address`]).
// Long (about 85 lines): the start-up order the doc comment states (CA, policy, push,
// listeners), one call per step; split, the order would be spread over several functions.
pub async fn start_bounded(
    config: ServerConfig,
    from: PolicyFrom,
    options: ServeOptions,
) -> anyhow::Result<Running> {
    check_admin_address(config.admin, options.insecure_plaintext_admin)?;
    // With the policy from Kubernetes, tokens, denials and history live there too; tokens and
    // denials also when only service account tokens are reviewed there.
    let replicas = Replicas::of(&from).await?;
    let credentials = shared::credentials(
        replicas.as_ref(),
        config.kubernetes_tokens.as_ref(),
        &config.state_dir,
    )
    .await?;
    let ca = ca(&config, options.ca_admission, &credentials).await?;
    let token = AdminToken::load_or_create(&config.state_dir, config.admin_token_file.as_deref())
        .context("operator API token")?;
    // Gateway API north-south: the gateways' configs the Kubernetes source publishes.
    let gateways = match &from {
        PolicyFrom::Kubernetes(options) => Some(options.gateways.subscribe()),
        _ => None,
    };
    let policy = policy_source(&config, from).await?;
    let hub = Hub::new(
        policy.initial.clone(),
        ca.store.trust_bundle_pem().to_owned(),
        ca.store.trust_domain().to_owned(),
        config.grace,
    )
    .with_limits(options.hub);
    let hub = match policy.pods.clone() {
        Some(pods) => hub.on_kubernetes(pods),
        None => hub,
    };
    hub.check_snapshots(&policy.initial)
        .map_err(|e| anyhow::anyhow!("the policy is refused:\n{e}"))?;
    let hub = Arc::new(hub);
    let ops = operations(&config, &hub, &policy, replicas.as_ref()).await?;

    let mut tasks = vec![
        tokio::spawn(
            ca.serving
                .clone()
                .renew(ca.store.clone(), config.cert_lifetime),
        ),
        tokio::spawn(hub.clone().run_pusher()),
        tokio::spawn(reload_on_change(ops.clone(), policy.changed)),
    ];
    tasks.extend(gateways.map(|g| tokio::spawn(hub.clone().follow_gateways(g))));
    tasks.extend(replicas.as_ref().map(|r| r.hold_lease(ops.clone())));

    let Bound {
        sidecars: listener,
        listen,
        admin: admin_listener,
        admin_addr: admin,
        metrics: metrics_listener,
        metrics_addr: metrics,
    } = bind(config.listen, config.admin, options.metrics_listen).await?;

    tasks.extend(serve_sidecars(
        listener,
        ca.tls,
        hub.clone(),
        ca.issuer,
        options.sidecars,
    ));
    let admin_token_file = token.path().to_owned();
    let operators = Operators {
        hub: hub.clone(),
        ops,
        credentials,
        token,
        limits: options.admin,
    };
    if let Some(l) = metrics_listener {
        tasks.push(operators.serve(l, true));
    }
    tasks.push(operators.serve(admin_listener, false));
    log::info!("control plane: sidecars on {listen} (mTLS), operator API on http://{admin}");
    Ok(Running {
        listen,
        admin,
        metrics,
        hub,
        admin_token_file,
        tasks,
        _watch: policy.watch,
    })
}

/// The operators' changes over the policy, recording history (only while holding the writer
/// Lease when replicas share it), with the policy in force at start recorded.
async fn operations(
    config: &ServerConfig,
    hub: &Arc<Hub>,
    policy: &Policy,
    replicas: Option<&Replicas>,
) -> anyhow::Result<Arc<Ops>> {
    let history = match replicas {
        Some(r) => r.history(),
        None => History::open(&config.state_dir).context("policy history")?,
    };
    let ops = match &policy.dir {
        Some(dir) => Ops::new(hub.clone(), dir.clone(), history),
        None => Ops::read_only(hub.clone(), policy.source.clone(), history),
    };
    let ops = Arc::new(match replicas {
        Some(r) => ops.with_leader(r.leader()),
        None => ops,
    });
    // Off the workers: the history may be the Kubernetes API's (blocking calls).
    let recording = ops.clone();
    tokio::task::spawn_blocking(move || recording.record_start())
        .await?
        .context("recording the policy in history")?;
    Ok(ops)
}

/// The certificate authority as the server uses it.
struct Ca {
    store: Arc<CaStore>,
    issuer: Arc<Issuer>,
    serving: Arc<ServingCert>,
    tls: TlsAcceptor,
}

/// Open the CA in the state directory, the attestors of `Certify` (join tokens, and service
/// account tokens when configured), the issuer, and the control plane's own serving
/// certificate and TLS acceptor.
async fn ca(
    config: &ServerConfig,
    admission: crate::ca::admission::Limits,
    credentials: &Credentials,
) -> anyhow::Result<Ca> {
    let store = Arc::new(
        CaStore::open(&config.state_dir, &config.trust_domain, config.ca.clone())
            .context("certificate authority")?,
    );
    let join_tokens =
        JoinTokenAttestor::with_store(credentials.tokens.clone(), &config.trust_domain)
            .context("join tokens")?;
    let service_account_tokens: Option<Arc<dyn crate::ca::attest::Attestor>> =
        match &config.kubernetes_tokens {
            Some(connection) => {
                let client = connection
                    .client()
                    .await
                    .context("Kubernetes API for service account tokens")?;
                log::info!("accepting Kubernetes service account tokens (TokenReview)");
                Some(Arc::new(TokenReviewAttestor::new(
                    client,
                    config.trust_domain.clone(),
                    tokio::runtime::Handle::current(),
                )))
            }
            None => None,
        };
    let attestor = crate::ca::attest::ByKind::new(Arc::new(join_tokens), service_account_tokens);
    let issuer = Issuer::new(
        store.clone(),
        Arc::new(attestor),
        IssuerOptions {
            cert_lifetime: config.cert_lifetime,
            admission,
        },
    )
    .context("certificate issuer")?
    .with_denied_serials(credentials.denied.clone());
    let issuer = Arc::new(issuer);
    // The control plane's own certificate lives as long as the workload certificates it
    // issues, and is renewed the same way.
    let serving =
        Arc::new(ServingCert::new(&store, config.cert_lifetime).context("serving certificate")?);
    let tls = TlsAcceptor::from(Arc::new(tls_config(&store, serving.clone())?));
    Ok(Ca {
        store,
        issuer,
        serving,
        tls,
    })
}

/// The policy in force at start and where its changes come from.
struct Policy {
    initial: MeshPolicy,
    source: Arc<dyn PolicySource>,
    /// The directory, when the policy comes from one (operators may change it).
    dir: Option<DirSource>,
    /// The pods, when the policy comes from Kubernetes (sidecars' endpoints are checked
    /// against them).
    pods: Option<Arc<dyn crate::push::join::PodDirectory>>,
    /// Keeps the source watched.
    watch: Watch,
    /// One message per change the source saw.
    changed: mpsc::UnboundedReceiver<()>,
}

/// Connect the policy source, watch it, and load the policy; an invalid policy at start is an
/// error (there is nothing good to keep in force).
async fn policy_source(config: &ServerConfig, from: PolicyFrom) -> anyhow::Result<Policy> {
    let mut pods: Option<Arc<dyn crate::push::join::PodDirectory>> = None;
    let (source, dir): (Arc<dyn PolicySource>, Option<DirSource>) = match from {
        PolicyFrom::Directory => {
            let dir = DirSource::new(&config.policy_dir).with_interval(config.poll_interval);
            (Arc::new(dir.clone()), Some(dir))
        }
        PolicyFrom::Kubernetes(options) => {
            // Connecting waits for the first lists: off the runtime's workers.
            let kube = tokio::task::spawn_blocking(move || KubeSource::connect(options))
                .await
                .context("connecting to the Kubernetes API")??;
            pods = Some(Arc::new(kube.pods()));
            (Arc::new(kube), None)
        }
    };
    let (changed_tx, changed) = mpsc::unbounded_channel::<()>();
    let watch = source
        .watch(Box::new(move || {
            let _ = changed_tx.send(());
        }))
        .with_context(|| format!("watching {}", source.describe()))?;
    let initial = source
        .load()
        .map_err(|e| anyhow::anyhow!("the policy is invalid:\n{e}"))?;
    log::info!(
        "policy {} from {} ({} services)",
        initial.version(),
        source.describe(),
        initial.services().len()
    );
    Ok(Policy {
        initial,
        source,
        dir,
        pods,
        watch,
        changed,
    })
}

/// Reload the policy (off the runtime's workers) each time the source says it changed.
async fn reload_on_change(ops: Arc<Ops>, mut changed: mpsc::UnboundedReceiver<()>) {
    while changed.recv().await.is_some() {
        let ops = ops.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || ops.reload_from_directory()).await {
            log::error!("policy load task: {e}");
        }
    }
}

/// What the operator API and the metrics listener serve.
struct Operators {
    hub: Arc<Hub>,
    ops: Arc<Ops>,
    credentials: Credentials,
    token: AdminToken,
    limits: crate::net::Limits,
}

impl Operators {
    /// Serve on `listener`: the whole operator API, or with `open_only` the open endpoints.
    fn serve(&self, listener: TcpListener, open_only: bool) -> tokio::task::JoinHandle<()> {
        tokio::spawn(crate::operator::api::serve_admin(
            listener,
            Arc::new(crate::operator::api::Admin {
                hub: self.hub.clone(),
                ops: self.ops.clone(),
                credentials: self.credentials.clone(),
                token: self.token.clone(),
                // Both conditions hold by now: the CA opened and the policy loaded, or start
                // failed. A source that can start without a policy flips `policy` later.
                readiness: Arc::new(crate::operator::api::Readiness::new(true, true)),
            }),
            self.limits,
            open_only,
        ))
    }
}
