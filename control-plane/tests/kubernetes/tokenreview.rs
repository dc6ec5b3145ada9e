//! Bootstrap with a Kubernetes projected service account token: the real control plane, in
//! process, asks a stand-in API server (HTTPS with a test CA, reached through a kubeconfig file,
//! so the kube-rs client path is the one a cluster uses) to review each token, and a real tonic
//! client calls `Certify` over mutual-TLS-capable TLS 1.3.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tonic::Code;
use weft_api::v1::control_plane_client::ControlPlaneClient;
use weft_api::v1::CertifyRequest;
use weft_certs::{CertificateAuthority, Identity};
use weft_control_plane::ca::ca_store::{CaStoreOptions, RootSource};
use weft_control_plane::ca::tokenreview::KubeConnection;
use weft_control_plane::ca::tokens::{JoinTokenStore, NewToken};
use weft_control_plane::server::{self, Running, ServerConfig};

const TD: &str = "weft.local";
/// The control plane's own credential at the stand-in API (what its ServiceAccount would have).
const CP_BEARER: &str = "control-plane-sa-token";
/// Authenticated as `system:serviceaccount:shop:orders`, audience `weft`.
const TOKEN_A: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzaG9wOm9yZGVycyJ9.c2lnbmF0dXJlLUE";
/// Not authenticated.
const TOKEN_B: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJleHBpcmVkIn0.c2lnbmF0dXJlLUI";
/// Authenticated, but for another audience only.
const TOKEN_C: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJvdGhlciJ9.c2lnbmF0dXJlLUM";

/// The stand-in API server's answer to a TokenReview for `token`, shaped as the API server
/// serves it (`authentication.k8s.io/v1`, status with user, audiences, error).
fn review_answer(token: &str) -> serde_json::Value {
    let status = match token {
        TOKEN_A => serde_json::json!({
            "authenticated": true,
            "user": {
                "username": "system:serviceaccount:shop:orders",
                "uid": "4b1e4b2c-8c43-4b2a-9d0c-0f4f3d6c1a11",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:shop", "system:authenticated"],
                "extra": {
                    "authentication.kubernetes.io/pod-name": ["orders-v1-6d9f7c8b5-x2x9q"],
                    "authentication.kubernetes.io/pod-uid": ["9a0d3f1e-2b7c-4d55-8a3e-5f1c2b7d9e01"]
                }
            },
            "audiences": ["weft"]
        }),
        TOKEN_C => serde_json::json!({
            "authenticated": true,
            "user": { "username": "system:serviceaccount:shop:orders" },
            "audiences": ["vault"]
        }),
        _ => serde_json::json!({
            "user": {},
            "error": "[invalid bearer token, token has been invalidated]"
        }),
    };
    serde_json::json!({
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": { "creationTimestamp": null },
        "spec": { "token": token, "audiences": ["weft"] },
        "status": status,
    })
}

/// A test CA and a serving certificate for `localhost` and 127.0.0.1.
struct ApiPki {
    ca_pem: String,
    cert: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn api_pki() -> ApiPki {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "stand-in kubernetes CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca");
    let key = rcgen::KeyPair::generate().expect("server key");
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    let cert = params.signed_by(&key, &ca).expect("server cert");
    ApiPki {
        ca_pem: ca.pem(),
        cert: vec![cert.der().clone()],
        key: PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).expect("key"),
    }
}

/// The stand-in API server: answers TokenReview POSTs from a client bearing [`CP_BEARER`].
struct StandInApi {
    addr: SocketAddr,
    reviews: Arc<AtomicUsize>,
    /// The ConfigMap `weft-system/weft-revocations`'s data, if it exists.
    revocations: Revocations,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StandInApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn stand_in_api(pki: &ApiPki) -> StandInApi {
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(pki.cert.clone(), pki.key.clone_key())
    .expect("server tls");
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let reviews = Arc::new(AtomicUsize::new(0));
    let counted = reviews.clone();
    let revocations = Revocations::default();
    let stored = revocations.clone();
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, counted, stored) = (acceptor.clone(), counted.clone(), stored.clone());
            connections.spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req| {
                    let (counted, stored) = (counted.clone(), stored.clone());
                    async move { Ok::<_, Infallible>(api_handle(req, &counted, &stored).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    StandInApi {
        addr,
        reviews,
        revocations,
        task,
    }
}

/// The data of the stand-in's one ConfigMap, `weft-system/weft-revocations` (absent: `None`),
/// and how many times it was read.
#[derive(Clone, Default)]
struct Revocations {
    data: Arc<std::sync::Mutex<Option<serde_json::Value>>>,
    reads: Arc<AtomicUsize>,
}

impl Revocations {
    fn set(&self, data: serde_json::Value) {
        *self.data.lock().expect("lock") = Some(data);
    }
}

const REVOCATIONS_PATH: &str = "/api/v1/namespaces/weft-system/configmaps/weft-revocations";

async fn api_handle(
    req: hyper::Request<hyper::body::Incoming>,
    reviews: &AtomicUsize,
    revocations: &Revocations,
) -> hyper::Response<Full<Bytes>> {
    let reply = |status: u16, body: serde_json::Value| {
        hyper::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("response")
    };
    let authorized = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {CP_BEARER}"));
    if !authorized {
        return reply(
            401,
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": "Unauthorized", "reason": "Unauthorized", "code": 401}),
        );
    }
    if req.method() == hyper::Method::GET && req.uri().path() == REVOCATIONS_PATH {
        revocations.reads.fetch_add(1, Ordering::SeqCst);
        let data = revocations.data.lock().expect("lock").clone();
        if let Some(data) = data {
            return reply(
                200,
                serde_json::json!({"kind": "ConfigMap", "apiVersion": "v1",
                    "metadata": {"name": "weft-revocations", "namespace": "weft-system"},
                    "data": data}),
            );
        }
    }
    if req.method() != hyper::Method::POST
        || req.uri().path() != "/apis/authentication.k8s.io/v1/tokenreviews"
    {
        return reply(
            404,
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": "the server could not find the requested resource",
                "reason": "NotFound", "code": 404}),
        );
    }
    let body = req.into_body().collect().await.expect("body").to_bytes();
    let review: serde_json::Value = serde_json::from_slice(&body).expect("review json");
    assert_eq!(review["kind"], "TokenReview", "{review}");
    assert_eq!(review["apiVersion"], "authentication.k8s.io/v1", "{review}");
    assert_eq!(
        review["spec"]["audiences"],
        serde_json::json!(["weft"]),
        "{review}"
    );
    reviews.fetch_add(1, Ordering::SeqCst);
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    reply(201, review_answer(token))
}

/// A kubeconfig for `server`, trusting `ca_pem`, authenticating with [`CP_BEARER`].
fn write_kubeconfig(dir: &Path, name: &str, server: SocketAddr, ca_pem: &str) -> PathBuf {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: stand-in\n  cluster:\n    \
             server: https://{server}\n    certificate-authority-data: {ca}\n\
             users:\n- name: control-plane\n  user:\n    token: {CP_BEARER}\n\
             contexts:\n- name: stand-in\n  context:\n    cluster: stand-in\n    user: control-plane\n\
             current-context: stand-in\n"
        ),
    )
    .expect("kubeconfig");
    path
}

struct Mesh {
    dir: tempfile::TempDir,
    ca: CertificateAuthority,
}

fn mesh() -> Mesh {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = CertificateAuthority::generate_seeded(TD, 71).expect("mesh CA");
    std::fs::write(dir.path().join("root.crt"), ca.cert_pem()).expect("root");
    std::fs::write(dir.path().join("root.key"), ca.key_pem()).expect("key");
    std::fs::create_dir_all(dir.path().join("policy")).expect("policy dir");
    std::fs::write(
        dir.path().join("policy/mesh.yaml"),
        "services:\n  - name: orders\n    identity: spiffe://weft.local/ns/shop/sa/orders\n",
    )
    .expect("policy");
    Mesh { dir, ca }
}

async fn start_cp(mesh: &Mesh, state: &str, kubeconfig: PathBuf) -> Running {
    let d = mesh.dir.path();
    server::start(ServerConfig {
        policy_dir: d.join("policy"),
        state_dir: d.join(state),
        listen: "127.0.0.1:0".parse().expect("addr"),
        admin: "127.0.0.1:0".parse().expect("addr"),
        trust_domain: TD.to_owned(),
        ca: CaStoreOptions {
            root: RootSource::Files {
                cert: d.join("root.crt"),
                key: d.join("root.key"),
            },
            ..CaStoreOptions::default()
        },
        grace: Duration::from_secs(2),
        poll_interval: weft_control_plane::policy::source::DEFAULT_POLL_INTERVAL,
        admin_token_file: None,
        cert_lifetime: Duration::from_secs(3600),
        kubernetes_tokens: Some(KubeConnection::Kubeconfig(kubeconfig)),
    })
    .await
    .expect("control plane")
}

/// Connects TLS to the control plane, verifying it as the control plane's identity; no
/// client certificate (a bootstrapping sidecar has none).
#[derive(Clone)]
struct Connector {
    addr: SocketAddr,
    tls: tokio_rustls::TlsConnector,
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let (addr, tls) = (self.addr, self.tls.clone());
        Box::pin(async move {
            let cp = server::control_plane_identity(TD).map_err(std::io::Error::other)?;
            let name = ServerName::try_from(cp.dns_name()).map_err(std::io::Error::other)?;
            let tcp = TcpStream::connect(addr).await?;
            Ok(TokioIo::new(tls.connect(name, tcp).await?))
        })
    }
}

async fn client(mesh: &Mesh, cp: &Running) -> ControlPlaneClient<tonic::transport::Channel> {
    client_with(mesh, cp, None).await
}

/// [`client`] presenting `held` (certificate chain PEM, key PEM) as its client certificate.
async fn client_with(
    mesh: &Mesh,
    cp: &Running,
    held: Option<(&str, &str)>,
) -> ControlPlaneClient<tonic::transport::Channel> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(mesh.ca.cert_der().clone()).expect("root");
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("versions")
    .with_root_certificates(roots);
    let mut tls = match held {
        Some((chain, key)) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(chain.as_bytes())
                    .collect::<Result<_, _>>()
                    .expect("chain");
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
            builder.with_client_auth_cert(chain, key).expect("client")
        }
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let connector = Connector {
        addr: cp.listen,
        tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
    };
    let channel = tonic::transport::Endpoint::from_static("http://control-plane")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect_with_connector(connector)
        .await
        .expect("connect");
    ControlPlaneClient::new(channel)
}

fn csr(namespace: &str, sa: &str) -> String {
    let id = Identity::new(TD, namespace, sa).expect("identity");
    weft_certs::generate_csr(&id).expect("csr").0
}

fn ask(csr: &str, token: &str) -> CertifyRequest {
    CertifyRequest {
        csr_pem: csr.to_owned(),
        join_token: token.to_owned(),
    }
}

/// `GET path` on the admin port; returns the status line and body.
async fn admin_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = TcpStream::connect(addr).await.expect("admin");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: cp\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .expect("admin answer in time")
        .expect("read");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_tokens_get_exactly_their_service_account_identity() {
    let api_pki = api_pki();
    let api = stand_in_api(&api_pki).await;
    let mesh = mesh();
    let kubeconfig = write_kubeconfig(mesh.dir.path(), "kubeconfig", api.addr, &api_pki.ca_pem);
    let cp = start_cp(&mesh, "state", kubeconfig).await;
    let mut sidecar = client(&mesh, &cp).await;

    // Probes: /ready is open (no bearer token) and says ready once policy and CA are in.
    let ready = admin_get(cp.admin, "/ready").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");

    // Token A (shop/orders, audience weft) + CSR for that identity: issued, exactly it.
    let issued = sidecar
        .certify(ask(&csr("shop", "orders"), TOKEN_A))
        .await
        .expect("token A is accepted")
        .into_inner();
    let chain = weft_certs::parse_cert_chain_pem(&issued.cert_chain_pem).expect("chain");
    let leaf = chain.first().expect("leaf");
    assert_eq!(
        weft_certs::identity_from_cert_der(leaf.as_ref())
            .expect("identity")
            .to_string(),
        "spiffe://weft.local/ns/shop/sa/orders"
    );
    assert!(issued.trust_bundle_pem.contains("BEGIN CERTIFICATE"));

    // Token A + a CSR for another identity (same namespace, or another namespace): refused.
    for (ns, sa) in [("shop", "payments"), ("default", "orders")] {
        let e = sidecar
            .certify(ask(&csr(ns, sa), TOKEN_A))
            .await
            .expect_err("another identity is refused");
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(
            e.message()
                .contains("spiffe://weft.local/ns/shop/sa/orders"),
            "{}",
            e.message()
        );
    }

    // Token B (not authenticated) and token C (another audience): unauthenticated.
    for (token, why) in [(TOKEN_B, "not authenticated"), (TOKEN_C, "audience")] {
        let e = sidecar
            .certify(ask(&csr("shop", "orders"), token))
            .await
            .expect_err("refused");
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        assert!(e.message().contains(why), "{}", e.message());
        assert!(
            !e.message().contains(token),
            "the token leaked: {}",
            e.message()
        );
    }
    assert_eq!(api.reviews.load(Ordering::SeqCst), 5, "one review per call");

    // Join tokens keep working beside service account tokens, without asking the API.
    let join = JoinTokenStore::new(mesh.dir.path().join("state"))
        .create(&NewToken::new("frontend"))
        .expect("join token");
    let issued = sidecar
        .certify(ask(&csr("default", "frontend"), &join.token))
        .await
        .expect("join token accepted")
        .into_inner();
    let chain = weft_certs::parse_cert_chain_pem(&issued.cert_chain_pem).expect("chain");
    assert_eq!(
        weft_certs::identity_from_cert_der(chain[0].as_ref())
            .expect("identity")
            .to_string(),
        "spiffe://weft.local/ns/default/sa/frontend"
    );
    assert_eq!(api.reviews.load(Ordering::SeqCst), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_identity_renews_only_with_a_token_the_api_still_authenticates() {
    let api_pki = api_pki();
    let api = stand_in_api(&api_pki).await;
    let mesh = mesh();
    let kubeconfig = write_kubeconfig(mesh.dir.path(), "kubeconfig", api.addr, &api_pki.ca_pem);
    let cp = start_cp(&mesh, "state", kubeconfig).await;
    let id = Identity::new(TD, "shop", "orders").expect("identity");
    let (csr_pem, key) = weft_certs::generate_csr(&id).expect("csr");
    let issued = client(&mesh, &cp)
        .await
        .certify(ask(&csr_pem, TOKEN_A))
        .await
        .expect("token A is accepted")
        .into_inner();
    let mut renewing = client_with(&mesh, &cp, Some((&issued.cert_chain_pem, &key))).await;

    // By certificate alone the API cannot be asked: refused, saying what to present.
    let e = renewing
        .certify(ask(&csr_pem, ""))
        .await
        .expect_err("a service account identity does not renew by certificate alone");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(
        e.message().contains("presenting the service account token"),
        "{}",
        e.message()
    );
    // With the token the kubelet keeps fresh: re-reviewed, renewed.
    let before = api.reviews.load(Ordering::SeqCst);
    renewing
        .certify(ask(&csr_pem, TOKEN_A))
        .await
        .expect("renews with a live token");
    assert_eq!(api.reviews.load(Ordering::SeqCst), before + 1);
    // A token the API no longer authenticates (its pod or service account deleted): refused.
    let e = renewing
        .certify(ask(&csr_pem, TOKEN_B))
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("not authenticated"), "{}", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serial_denied_in_the_api_is_refused_by_every_replica() {
    let api_pki = api_pki();
    let api = stand_in_api(&api_pki).await;
    let mesh = mesh();
    let kubeconfig = write_kubeconfig(mesh.dir.path(), "kubeconfig", api.addr, &api_pki.ca_pem);
    // Two replicas: one root, one API server, each its own (emptyDir) state directory.
    let one = start_cp(&mesh, "state-1", kubeconfig.clone()).await;
    let two = start_cp(&mesh, "state-2", kubeconfig).await;
    let id = Identity::new(TD, "shop", "orders").expect("identity");
    let (csr_pem, key) = weft_certs::generate_csr(&id).expect("csr");
    let issued = client(&mesh, &one)
        .await
        .certify(ask(&csr_pem, TOKEN_A))
        .await
        .expect("token A is accepted")
        .into_inner();
    let held = Some((issued.cert_chain_pem.as_str(), key.as_str()));
    let chain = weft_certs::parse_cert_chain_pem(&issued.cert_chain_pem).expect("chain");
    let serial = weft_certs::serial_hex_from_cert_der(&chain[0]).expect("serial");
    for cp in [&one, &two] {
        client_with(&mesh, cp, held)
            .await
            .certify(ask(&csr_pem, TOKEN_A))
            .await
            .expect("renews before the denial");
    }

    // Denied where every replica looks: the API (as `kubectl edit` would write it).
    api.revocations
        .set(serde_json::json!({"denied-serials": format!("0123\n{}\n", serial.to_uppercase())}));
    let reads = api.revocations.reads.load(Ordering::SeqCst);
    for cp in [&one, &two] {
        let e = client_with(&mesh, cp, held)
            .await
            .certify(ask(&csr_pem, TOKEN_A))
            .await
            .expect_err("denied at every replica");
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("is denied"), "{}", e.message());
    }
    assert_eq!(api.revocations.reads.load(Ordering::SeqCst), reads + 2);
    // Another certificate of the same service account still renews.
    let (csr2, key2) = weft_certs::generate_csr(&id).expect("csr");
    let other = client(&mesh, &two)
        .await
        .certify(ask(&csr2, TOKEN_A))
        .await
        .expect("a new attestation")
        .into_inner();
    client_with(&mesh, &one, Some((&other.cert_chain_pem, &key2)))
        .await
        .certify(ask(&csr2, TOKEN_A))
        .await
        .expect("another serial renews");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_down_is_unavailable_not_a_refusal() {
    let api_pki = api_pki();
    // A port that was just free: nothing listens there, so connections are refused.
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let mesh = mesh();
    let kubeconfig = write_kubeconfig(mesh.dir.path(), "kubeconfig-down", down, &api_pki.ca_pem);
    let cp = start_cp(&mesh, "state-down", kubeconfig).await;
    let mut sidecar = client(&mesh, &cp).await;
    let started = std::time::Instant::now();
    let e = sidecar
        .certify(ask(&csr("shop", "orders"), TOKEN_A))
        .await
        .expect_err("no API, no certificate");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("Kubernetes API"), "{}", e.message());
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "answered within the review timeout"
    );
}
