//! Renewal re-attests, through the real control plane and a real tonic client over TLS 1.3:
//! a certificate whose join token was revoked or has expired, whose serial was denied, or
//! whose identity is older than the maximum age no longer renews; a live credential still
//! does; and a flood of `Certify` calls is refused with `RESOURCE_EXHAUSTED` while a
//! legitimate renewal goes through within its deadline.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tonic::Code;
use weft_api::v1::control_plane_client::ControlPlaneClient;
use weft_api::v1::{CertifyRequest, CertifyResponse};
use weft_certs::{CertificateAuthority, Identity};
use weft_control_plane::ca::ca_store::{CaStoreOptions, RootSource};
use weft_control_plane::ca::denied::DeniedSerials;
use weft_control_plane::ca::provenance::{Provenance, Source};
use weft_control_plane::ca::tokens::{JoinTokenStore, NewToken, TokenStatus};
use weft_control_plane::server::{self, Running, ServerConfig};

const TD: &str = "weft.local";

/// A policy directory, a seeded root and a state directory shared by the control planes a
/// test starts (as replicas on one volume would share them).
struct Site {
    dir: tempfile::TempDir,
    ca: CertificateAuthority,
}

fn site() -> Site {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = CertificateAuthority::generate_seeded(TD, 91).expect("mesh CA");
    std::fs::write(dir.path().join("root.crt"), ca.cert_pem()).expect("root");
    std::fs::write(dir.path().join("root.key"), ca.key_pem()).expect("key");
    std::fs::create_dir_all(dir.path().join("policy")).expect("policy dir");
    std::fs::write(
        dir.path().join("policy/mesh.yaml"),
        "services:\n  - name: frontend\n    identity: spiffe://weft.local/ns/default/sa/frontend\n",
    )
    .expect("policy");
    Site { dir, ca }
}

impl Site {
    fn state(&self) -> std::path::PathBuf {
        self.dir.path().join("state")
    }

    fn tokens(&self) -> JoinTokenStore {
        JoinTokenStore::new(self.state())
    }

    /// A control plane on this site whose identities live at most `max_age`.
    async fn start(&self, max_age: Duration) -> Running {
        self.start_gated(max_age, Default::default()).await
    }

    /// [`Site::start`] with these admission gates in front of the CA.
    async fn start_gated(
        &self,
        max_age: Duration,
        gates: weft_control_plane::ca::admission::Limits,
    ) -> Running {
        let d = self.dir.path();
        let options = server::ServeOptions {
            ca_admission: gates,
            ..Default::default()
        };
        server::start_bounded(
            ServerConfig {
                policy_dir: d.join("policy"),
                state_dir: self.state(),
                listen: "127.0.0.1:0".parse().expect("addr"),
                admin: "127.0.0.1:0".parse().expect("addr"),
                trust_domain: TD.to_owned(),
                ca: CaStoreOptions {
                    root: RootSource::Files {
                        cert: d.join("root.crt"),
                        key: d.join("root.key"),
                    },
                    max_identity_age: Some(max_age),
                    ..CaStoreOptions::default()
                },
                grace: Duration::from_secs(2),
                poll_interval: weft_control_plane::policy::source::DEFAULT_POLL_INTERVAL,
                admin_token_file: None,
                cert_lifetime: Duration::from_secs(3600),
                kubernetes_tokens: None,
            },
            server::PolicyFrom::Directory,
            options,
        )
        .await
        .expect("control plane")
    }
}

/// Connects TLS 1.3 to the control plane, verifying it as the control plane's identity.
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

/// What a sidecar holds: its certificate chain and key, PEM.
#[derive(Clone)]
struct Held {
    chain: String,
    key: String,
}

/// A client of `cp`'s sidecar port, presenting `held` as its client certificate if given.
async fn client(
    site: &Site,
    cp: &Running,
    held: Option<&Held>,
) -> ControlPlaneClient<tonic::transport::Channel> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(site.ca.cert_der().clone()).expect("root");
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("versions")
    .with_root_certificates(roots);
    let mut tls = match held {
        Some(h) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(h.chain.as_bytes())
                    .collect::<Result<_, _>>()
                    .expect("chain");
            let key = PrivateKeyDer::from_pem_slice(h.key.as_bytes()).expect("key");
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
        .timeout(Duration::from_secs(20))
        .connect_with_connector(connector)
        .await
        .expect("connect");
    ControlPlaneClient::new(channel)
}

fn frontend() -> Identity {
    Identity::new(TD, "default", "frontend").expect("identity")
}

/// One `Certify` call for a fresh key: with `held` as client certificate and `token` in the
/// request (either may be absent). Returns the new certificate and key, or the status.
async fn certify(
    site: &Site,
    cp: &Running,
    held: Option<&Held>,
    token: &str,
) -> Result<Held, tonic::Status> {
    let (csr_pem, key) = weft_certs::generate_csr(&frontend()).expect("csr");
    let answer: CertifyResponse = client(site, cp, held)
        .await
        .certify(CertifyRequest {
            csr_pem,
            join_token: token.to_owned(),
        })
        .await?
        .into_inner();
    Ok(Held {
        chain: answer.cert_chain_pem,
        key,
    })
}

fn leaf(held: &Held) -> CertificateDer<'static> {
    weft_certs::parse_cert_chain_pem(&held.chain)
        .expect("chain")
        .remove(0)
}

fn not_after(held: &Held) -> SystemTime {
    weft_certs::not_after_from_cert_der(&leaf(held)).expect("not after")
}

fn refused(r: Result<Held, tonic::Status>, code: Code, says: &str) {
    match r {
        Ok(_) => panic!("renewed, but should be refused with {code:?} ({says})"),
        Err(s) => {
            assert_eq!(s.code(), code, "{s:?}");
            assert!(
                s.message().contains(says),
                "{:?} should say {says}",
                s.message()
            );
        }
    }
}

fn token_for(tokens: &JoinTokenStore, ttl: Option<Duration>) -> String {
    tokens
        .create(&NewToken {
            ttl,
            ..NewToken::new("frontend")
        })
        .expect("token")
        .token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_join_token_stops_renewal_and_a_live_one_renews() {
    let site = site();
    let cp = site.start(Duration::from_secs(3600)).await;
    let token = token_for(&site.tokens(), None);
    let first = certify(&site, &cp, None, &token).await.expect("bootstrap");
    let p = Provenance::of_cert(&leaf(&first))
        .expect("reads")
        .expect("provenance");
    assert!(matches!(p.source, Source::JoinToken(_)), "{p:?}");

    // A live credential renews, by certificate alone and with the token again.
    let second = certify(&site, &cp, Some(&first), "")
        .await
        .expect("renew by certificate");
    let third = certify(&site, &cp, Some(&second), &token)
        .await
        .expect("renew with the token");

    site.tokens().revoke(&token).expect("revoke");
    for held in [&first, &second, &third] {
        refused(
            certify(&site, &cp, Some(held), "").await,
            Code::Unauthenticated,
            "was revoked",
        );
    }
    refused(
        certify(&site, &cp, Some(&third), &token).await,
        Code::Unauthenticated,
        "was revoked",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_join_token_stops_renewal() {
    let site = site();
    let cp = site.start(Duration::from_secs(3600)).await;
    let tokens = site.tokens();
    let token = token_for(&tokens, Some(Duration::from_secs(5)));
    let first = certify(&site, &cp, None, &token).await.expect("bootstrap");
    certify(&site, &cp, Some(&first), "")
        .await
        .expect("renews while the token is valid");
    weft_testkit::wait::until("the token to expire", Duration::from_secs(10), || {
        let list = tokens.list().expect("list");
        (list[0].status(SystemTime::now()) == TokenStatus::Expired).then_some(())
    });
    refused(
        certify(&site, &cp, Some(&first), "").await,
        Code::Unauthenticated,
        "has expired",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_serial_no_longer_renews_even_with_its_token() {
    let site = site();
    let cp = site.start(Duration::from_secs(3600)).await;
    let token = token_for(&site.tokens(), None);
    let first = certify(&site, &cp, None, &token).await.expect("bootstrap");
    let other = certify(&site, &cp, None, &token)
        .await
        .expect("second replica");
    let serial = weft_certs::serial_hex_from_cert_der(&leaf(&first)).expect("serial");
    assert!(DeniedSerials::new(site.state())
        .deny(&serial)
        .expect("deny"));
    refused(
        certify(&site, &cp, Some(&first), "").await,
        Code::PermissionDenied,
        "is denied",
    );
    refused(
        certify(&site, &cp, Some(&first), &token).await,
        Code::PermissionDenied,
        "is denied",
    );
    // Only that serial: another certificate of the same token renews.
    certify(&site, &cp, Some(&other), "")
        .await
        .expect("another serial renews");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_cannot_carry_an_identity_past_its_maximum_age() {
    let site = site();
    // Two replicas on one root and state directory: one allows an hour, one six seconds.
    let hour = site.start(Duration::from_secs(3600)).await;
    let short = site.start(Duration::from_secs(6)).await;
    let token = token_for(&site.tokens(), None);
    let first = certify(&site, &hour, None, &token)
        .await
        .expect("bootstrap");
    let attested = Provenance::of_cert(&leaf(&first))
        .expect("reads")
        .expect("provenance")
        .attested_at;
    // A renewal ends by the maximum age since the attestation, however long certificates live.
    let renewed = certify(&site, &short, Some(&first), "")
        .await
        .expect("renews within the age");
    let ends = not_after(&renewed);
    assert!(
        ends <= attested + Duration::from_secs(7),
        "renewed until {ends:?}, attested at {attested:?}"
    );
    assert!(not_after(&first) > ends + Duration::from_secs(60));
    // The attestation time carries over: renewing again does not move the end.
    let again = certify(&site, &short, Some(&renewed), "")
        .await
        .expect("renews again within the age");
    assert_eq!(not_after(&again), ends);

    weft_testkit::wait::until("the maximum age to pass", Duration::from_secs(10), || {
        (SystemTime::now() >= attested + Duration::from_secs(6)).then_some(())
    });
    refused(
        certify(&site, &short, Some(&first), "").await,
        Code::PermissionDenied,
        "attest again",
    );
    // A live credential attests again, and the new identity starts a new age.
    let fresh = certify(&site, &short, Some(&first), &token)
        .await
        .expect("attests again with the token");
    let p = Provenance::of_cert(&leaf(&fresh))
        .expect("reads")
        .expect("provenance");
    assert!(p.attested_at >= attested + Duration::from_secs(6), "{p:?}");
}

/// Floods `cp` with `Certify` calls presenting well-formed but unknown join tokens from
/// `connections` connections with `per_connection` calls in flight each, until `stop`;
/// counts the calls refused with `RESOURCE_EXHAUSTED` and all calls.
async fn flood(
    site: &Site,
    cp: &Running,
    connections: usize,
    per_connection: usize,
    stop: Arc<AtomicBool>,
    exhausted: Arc<AtomicUsize>,
    total: Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let (csr_pem, _) = weft_certs::generate_csr(&frontend()).expect("csr");
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let c = client(site, cp, None).await;
        for i in 0..per_connection {
            let (mut c, stop, exhausted, total) =
                (c.clone(), stop.clone(), exhausted.clone(), total.clone());
            let request = CertifyRequest {
                csr_pem: csr_pem.clone(),
                join_token: format!("wjt1_{:016x}_{}", i, "0".repeat(64)),
            };
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let r = c.certify(request.clone()).await;
                    total.fetch_add(1, Ordering::Relaxed);
                    if r.is_err_and(|s| s.code() == Code::ResourceExhausted) {
                        exhausted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    tasks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certify_flood_is_refused_while_a_renewal_succeeds_within_its_deadline() {
    let site = site();
    // A small gate (one call at a time, four waiting), so that the flood overflows it however
    // fast or loaded this machine is; the defaults (8 and 64) differ only in size.
    let gates = weft_control_plane::ca::admission::Limits {
        concurrency: 1,
        queue: 4,
        queue_wait: Duration::from_secs(2),
    };
    let cp = site.start_gated(Duration::from_secs(3600), gates).await;
    let token = token_for(&site.tokens(), None);
    let first = certify(&site, &cp, None, &token).await.expect("bootstrap");
    let (stop, exhausted, total) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let tasks = flood(
        &site,
        &cp,
        8,
        50,
        stop.clone(),
        exhausted.clone(),
        total.clone(),
    )
    .await;
    weft_testkit::wait::until_async("the flood to be refused", Duration::from_secs(20), || {
        let n = exhausted.load(Ordering::Relaxed);
        async move { (n >= 100).then_some(()) }
    })
    .await;
    // Under the flood, a sidecar's renewal (its certificate and its token) within the
    // sidecar's own 10 s limit, first try.
    let started = Instant::now();
    let renewed = tokio::time::timeout(
        Duration::from_secs(10),
        certify(&site, &cp, Some(&first), &token),
    )
    .await
    .expect("renewal within its deadline")
    .expect("renewed");
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("flood task");
    }
    assert_eq!(
        weft_certs::identity_from_cert_der(&leaf(&renewed)).expect("identity"),
        frontend()
    );
    eprintln!(
        "flood: {} calls, {} refused with RESOURCE_EXHAUSTED; renewal under the flood took {} ms",
        total.load(Ordering::Relaxed),
        exhausted.load(Ordering::Relaxed),
        took.as_millis()
    );
}
