//! The sidecars' port over real mutual TLS: the control plane in process (the server the
//! binary runs), real tonic clients presenting workload certificates from the mesh CA.
//!
//! - A registration flood: more `Hello` streams for one identity than
//!   `--max-streams-per-identity` allows are refused with `RESOURCE_EXHAUSTED`, while the
//!   registered streams keep getting their pushes and another identity still registers.
//! - The connection cap: a connection beyond the cap and its waiting room is closed at once,
//!   one waiting beyond the handshake timeout is closed, and a legitimate sidecar's handshake
//!   succeeds as soon as a slot frees.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};
use weft_api::v1::control_plane_client::ControlPlaneClient;
use weft_api::v1::{control_message, sidecar_message, ControlMessage, Hello, SidecarMessage};
use weft_certs::{CertificateAuthority, Identity};
use weft_control_plane::ca::ca_store::{CaStoreOptions, RootSource};
use weft_control_plane::push::hub::HubLimits;
use weft_control_plane::server::{
    self, PolicyFrom, Running, ServeOptions, ServerConfig, SidecarLimits,
};
use weft_testkit::wait;

const TD: &str = "weft.local";

fn policy(extra: &str) -> String {
    format!(
        "services:\n\
         \x20 - name: orders\n    identity: spiffe://{TD}/ns/default/sa/orders\n\
         \x20 - name: payments\n    identity: spiffe://{TD}/ns/default/sa/payments\n{extra}"
    )
}

fn free_addr() -> SocketAddr {
    ([127, 0, 0, 1], weft_testkit::ports::reserve()).into()
}

/// The control plane in process on a seeded mesh CA, with `options`.
struct Mesh {
    // Declared first: the server stops before its directory goes.
    cp: Running,
    ca: CertificateAuthority,
    dir: tempfile::TempDir,
}

impl Mesh {
    async fn start(options: ServeOptions) -> Mesh {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = CertificateAuthority::generate_seeded(TD, 11).expect("CA");
        let (cert, key) = (dir.path().join("root.crt"), dir.path().join("root.key"));
        std::fs::write(&cert, ca.cert_pem()).expect("write");
        std::fs::write(&key, ca.key_pem()).expect("write");
        std::fs::create_dir(dir.path().join("policy")).expect("mkdir");
        std::fs::write(dir.path().join("policy/mesh.yaml"), policy("")).expect("write");
        let config = ServerConfig {
            policy_dir: dir.path().join("policy"),
            state_dir: dir.path().join("state"),
            listen: free_addr(),
            admin: free_addr(),
            trust_domain: TD.to_owned(),
            ca: CaStoreOptions {
                root: RootSource::Files { cert, key },
                ..CaStoreOptions::default()
            },
            grace: Duration::from_millis(200),
            poll_interval: Duration::from_millis(100),
            admin_token_file: None,
            cert_lifetime: Duration::from_secs(3600),
            kubernetes_tokens: None,
        };
        let cp = server::start_bounded(config, PolicyFrom::Directory, options)
            .await
            .expect("control plane");
        Mesh { cp, ca, dir }
    }

    fn policy_file(&self) -> PathBuf {
        self.dir.path().join("policy/mesh.yaml")
    }

    /// A TLS client trusting the mesh root, presenting a workload certificate of `service`
    /// (or none).
    fn tls(&self, service: Option<&str>) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.cert_der().clone()).expect("root");
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_root_certificates(roots);
        let mut tls = match service {
            Some(service) => {
                let id = Identity::new(TD, "default", service).expect("identity");
                let issued = self
                    .ca
                    .issue(&id, Duration::from_secs(3600))
                    .expect("issue");
                let chain =
                    vec![CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).expect("cert")];
                let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).expect("key");
                builder
                    .with_client_auth_cert(chain, key)
                    .expect("client auth")
            }
            None => builder.with_no_client_auth(),
        };
        tls.alpn_protocols = vec![b"h2".to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(tls))
    }

    /// A tonic client over mutual TLS as sidecar `service`.
    async fn client(&self, service: &str) -> ControlPlaneClient<tonic::transport::Channel> {
        connect(self.connector(service)).await
    }

    fn connector(&self, service: &str) -> Connector {
        Connector {
            addr: self.cp.listen,
            tls: self.tls(Some(service)),
        }
    }

    /// A completed TLS handshake without a client certificate, then nothing.
    async fn handshake_only(&self) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.cp.listen).await.expect("connect");
        tokio::time::timeout(
            Duration::from_secs(5),
            self.tls(None).connect(server_name(), tcp),
        )
        .await
        .expect("handshake in time")
        .expect("handshake")
    }
}

/// A tonic client through `connector`.
async fn connect(connector: Connector) -> ControlPlaneClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_static("http://control-plane")
        .connect_timeout(Duration::from_secs(10))
        .connect_with_connector(connector)
        .await
        .expect("connect");
    ControlPlaneClient::new(channel)
}

fn server_name() -> ServerName<'static> {
    let cp = server::control_plane_identity(TD).expect("identity");
    ServerName::try_from(cp.dns_name()).expect("server name")
}

/// Connects TLS to the control plane, verifying it as the control plane's identity.
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
            let tcp = TcpStream::connect(addr).await?;
            Ok(TokioIo::new(tls.connect(server_name(), tcp).await?))
        })
    }
}

/// A sidecar stream: its sender (kept open) and the pushes it receives.
struct Stream {
    _tx: mpsc::Sender<SidecarMessage>,
    pushes: Streaming<ControlMessage>,
}

impl Stream {
    /// The version of the next snapshot pushed, within 10 s.
    async fn next_version(&mut self) -> String {
        let msg = tokio::time::timeout(Duration::from_secs(10), self.pushes.message())
            .await
            .expect("a push in time")
            .expect("stream ok")
            .expect("stream open");
        match msg.kind {
            Some(control_message::Kind::Snapshot(s)) => s.version,
            other => panic!("not a snapshot: {other:?}"),
        }
    }
}

/// Open a stream as `service` with endpoint port `port`: its first snapshot's version, or
/// the refusal.
async fn hello(
    client: &mut ControlPlaneClient<tonic::transport::Channel>,
    service: &str,
    port: u16,
) -> Result<(Stream, String), Status> {
    let (tx, rx) = mpsc::channel(4);
    tx.send(SidecarMessage {
        kind: Some(sidecar_message::Kind::Hello(Hello {
            service: service.to_owned(),
            endpoint_address: format!("127.0.0.1:{port}"),
            ..Hello::default()
        })),
    })
    .await
    .expect("send");
    let pushes = client.stream(ReceiverStream::new(rx)).await?.into_inner();
    let mut stream = Stream { _tx: tx, pushes };
    let first = tokio::time::timeout(Duration::from_secs(10), stream.pushes.message())
        .await
        .expect("an answer in time")?
        .ok_or_else(|| Status::unknown("stream ended without a snapshot"))?;
    match first.kind {
        Some(control_message::Kind::Snapshot(s)) => Ok((stream, s.version)),
        other => panic!("not a snapshot: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_flood_of_one_identity_is_refused_and_the_others_are_served() {
    let mesh = Mesh::start(ServeOptions {
        hub: HubLimits {
            max_streams_per_identity: 4,
            ..HubLimits::default()
        },
        ..ServeOptions::default()
    })
    .await;
    let mut orders = mesh.client("orders").await;
    let mut registered = Vec::new();
    for i in 0..4 {
        let (stream, _) = hello(&mut orders, "orders", 20_000 + i)
            .await
            .expect("within the limit");
        registered.push(stream);
    }

    // The flood: 40 more streams of the same identity, at once, over connections of their
    // own (the bound is per identity, not per connection), 10 per connection (within the 16
    // streams a connection may carry, so that bound does not answer first).
    let mut flood_clients = Vec::new();
    for _ in 0..4 {
        flood_clients.push(mesh.client("orders").await);
    }
    let flood = (0..40u16).map(|i| {
        let mut c = flood_clients[usize::from(i % 4)].clone();
        async move { hello(&mut c, "orders", 30_000 + i).await.map(|_| ()) }
    });
    let refused = futures_util::future::join_all(flood).await;
    for (i, r) in refused.iter().enumerate() {
        let e = r.as_ref().expect_err("over the limit");
        assert_eq!(e.code(), Code::ResourceExhausted, "stream {i}: {e:?}");
        assert!(
            e.message().contains("already holds 4 live streams"),
            "{}",
            e.message()
        );
    }

    // Another identity is still served.
    let mut payments = mesh.client("payments").await;
    let (_payments_stream, _) = hello(&mut payments, "payments", 21_000)
        .await
        .expect("another identity");

    // The registered streams are still served: a policy change reaches every one.
    std::fs::write(
        mesh.policy_file(),
        policy(&format!(
            "\x20 - name: inventory\n    identity: spiffe://{TD}/ns/default/sa/inventory\n"
        )),
    )
    .expect("write");
    let mut versions = Vec::new();
    for s in &mut registered {
        versions.push(s.next_version().await);
    }
    assert!(versions.windows(2).all(|w| w[0] == w[1]), "{versions:?}");

    // A bound on live streams, not a lockout: once one ends, the identity may open one more.
    drop(registered.pop());
    let replaced = wait::until_async(
        "a stream in the freed place",
        Duration::from_secs(10),
        || {
            let mut c = orders.clone();
            async move { hello(&mut c, "orders", 22_000).await.ok() }
        },
    )
    .await;
    drop(replaced);
}

/// Whether the server closes `s` (EOF or reset) within `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_connection_cap_a_sidecar_gets_the_next_free_slot() {
    let mesh = Mesh::start(ServeOptions {
        sidecars: SidecarLimits {
            max_connections: 2,
            handshake_timeout: Duration::from_secs(2),
            ..SidecarLimits::default()
        },
        ..ServeOptions::default()
    })
    .await;
    let listen = mesh.cp.listen;
    // Both slots held by connections that finished their handshake and send nothing.
    let first = mesh.handshake_only().await;
    let _second = mesh.handshake_only().await;
    // Three more, sending nothing: two wait for a slot (the waiting room is as large as the
    // cap), and one is closed at once, well before any handshake timeout. Which one is up to
    // the order the server's tasks run in, not the order of the connects.
    let mut extra = Vec::new();
    for _ in 0..3 {
        extra.push(TcpStream::connect(listen).await.expect("connect"));
    }
    let soon = Duration::from_secs(1);
    let mut at_once = 0;
    let started = Instant::now();
    for s in &mut extra {
        let left = soon.saturating_sub(started.elapsed());
        if closed_within(s, left).await {
            at_once += 1;
        }
    }
    assert_eq!(
        at_once, 1,
        "connections closed at once beyond a cap of 2 and 2 waiting"
    );
    // Those waiting are closed when no slot frees within the handshake timeout.
    for (i, s) in extra.iter_mut().enumerate() {
        assert!(
            closed_within(s, Duration::from_secs(6)).await,
            "waiting connection {i} still open"
        );
    }

    // A legitimate sidecar connects while the slots are full, and gets the one freed.
    let connector = mesh.connector("orders");
    let sidecar = tokio::spawn(async move {
        let mut client = connect(connector).await;
        hello(&mut client, "orders", 23_000).await.map(|(_, v)| v)
    });
    drop(first);
    let version = tokio::time::timeout(Duration::from_secs(15), sidecar)
        .await
        .expect("the sidecar got a slot in time")
        .expect("task")
        .expect("registered");
    assert!(!version.is_empty());
}
