//! Workload identities over the control-plane wire: sidecars bootstrap from join tokens
//! (no certificate files made beforehand), rotate short-lived certificates under load, are
//! refused by peers once expired, and withdraw their endpoint at once when draining; and the
//! `Certify` call itself, driven by a real tonic client.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use weft_api::v1::control_plane_client::ControlPlaneClient;
use weft_api::v1::CertifyRequest;
use weft_control_plane::ca::tokens::{JoinTokenStore, NewToken};
use weft_control_plane::server::Running;

use crate::harness::*;

/// frontend may call orders (its v1 endpoints).
fn mesh_policy() -> String {
    format!(
        "services:\n\
         \x20 - name: frontend\n    identity: {}\n\
         \x20 - name: orders\n    identity: {}\n\
         routes:\n\
         \x20 - name: orders\n    service: orders\n    from: [frontend]\n\
         \x20   backends: [{{subset: {{version: v1}}, weight: 100}}]\n",
        spiffe("frontend"),
        spiffe("orders")
    )
}

async fn start_cp(pki: &Pki, grace: Duration, cert_lifetime: Duration) -> Running {
    let policy_dir: PathBuf = pki.path().join("policy");
    std::fs::create_dir_all(&policy_dir).expect("policy dir");
    std::fs::write(policy_dir.join("mesh.yaml"), mesh_policy()).expect("policy");
    start_control_plane_with(
        pki,
        &policy_dir,
        "127.0.0.1:0".parse().expect("addr"),
        grace,
        cert_lifetime,
    )
    .await
}

/// A join token for `service` (as `weftctl tokens create` makes one), written to
/// `<service>.token`.
fn token_file(pki: &Pki, service: &str) -> PathBuf {
    let created = JoinTokenStore::new(pki.path().join("cp-state"))
        .create(&NewToken::new(service))
        .expect("token");
    let path = pki.path().join(format!("{service}.token"));
    std::fs::write(&path, format!("{}\n", created.token)).expect("token file");
    path
}

/// A control-plane-mode sidecar with certificate files `<cert>.crt`/`<cert>.key` (which may
/// not exist yet) and, if given, a join token file.
fn spawn_sidecar(
    pki: &Pki,
    name: &str,
    cert: &str,
    app: SocketAddr,
    cp: SocketAddr,
    token: Option<&Path>,
) -> Sidecar {
    spawn_cp_sidecar(
        pki,
        CpSidecar {
            name,
            identity: name,
            cert,
            version: "v1",
            protocol: "http",
            app,
            cp,
            token,
            mounted_bundle: None,
        },
    )
}

async fn cp_status(cp: &Running) -> serde_json::Value {
    let (code, body) = cp_get(cp, "/v1/status").await.expect("status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("json")
}

/// Whether the control plane lists a connected `service` sidecar at `endpoint`.
async fn registered(cp: &Running, service: &str, endpoint: SocketAddr) -> bool {
    cp_status(cp).await["sidecars"]
        .as_array()
        .expect("sidecars")
        .iter()
        .any(|s| s["service"] == service && s["endpoint"] == endpoint.to_string())
}

/// Wait (at most 10 s) until the frontend routes to orders.
async fn wait_routed(fe: &Sidecar) {
    let c = client();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(&c, fe.outbound, "orders", "/warm").await;
        if r.status == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "frontend never reached orders: {} {}\n{}",
            r.status,
            r.header("x-weft-error"),
            fe.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn cp_metric(cp: &Running, series: &str) -> f64 {
    cp.hub
        .metrics()
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("the control plane exports no {series}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bootstrapped_sidecars_rotate_three_second_certificates_under_load_without_errors() {
    let pki = Pki::new(90);
    let cp = start_cp(&pki, Duration::from_secs(2), Duration::from_secs(3)).await;
    let (fe_token, orders_token) = (token_file(&pki, "frontend"), token_file(&pki, "orders"));
    for stem in ["frontend-boot", "orders-boot"] {
        assert!(!pki.path().join(format!("{stem}.crt")).exists());
        assert!(!pki.path().join(format!("{stem}.key")).exists());
    }
    let orders_app = http_app("orders-v1").await;
    let mut orders = spawn_sidecar(
        &pki,
        "orders",
        "orders-boot",
        orders_app,
        cp.listen,
        Some(&orders_token),
    );
    orders.wait_ready().await;
    let fe_app = http_app("frontend").await;
    let mut fe = spawn_sidecar(
        &pki,
        "frontend",
        "frontend-boot",
        fe_app,
        cp.listen,
        Some(&fe_token),
    );
    fe.wait_ready().await;
    // Keys made in the sidecars, kept private.
    use std::os::unix::fs::PermissionsExt;
    for stem in ["frontend-boot", "orders-boot"] {
        let key = std::fs::metadata(pki.path().join(format!("{stem}.key"))).expect("key file");
        assert_eq!(key.permissions().mode() & 0o777, 0o600, "{stem}.key");
        let cert = std::fs::read(pki.path().join(format!("{stem}.crt"))).expect("cert");
        assert!(String::from_utf8_lossy(&cert).contains("BEGIN CERTIFICATE"));
    }
    assert!(
        fe.log_text().contains("obtained a certificate"),
        "{}",
        fe.log_text()
    );
    wait_routed(&fe).await;

    // Steady load for 12 s: 4 certificate lifetimes. Besides HTTP/1.1, one HTTP/2 app
    // connection kept open as a gRPC channel keeps it. Each of its streams goes to the outbound
    // proxy in force when it starts, so renewals never close it: a gRPC client does not retry
    // a call that raced a GOAWAY (tonic reports it cancelled), so nothing here retries either.
    let start = Instant::now();
    let mut outcomes = Vec::new();
    let mut h2 = H2c::connect(fe.outbound).await;
    let (mut h2_ok, mut h2_failed) = (0usize, Vec::new());
    while start.elapsed() < Duration::from_secs(12) && outcomes.len() < 100_000 {
        outcomes.extend(load(fe.outbound, "orders", "/rotate", 100, 4).await);
        for _ in 0..20 {
            match h2.try_get("orders", "/rotate-h2").await {
                Ok(r) if r.status == 200 => h2_ok += 1,
                Ok(r) => h2_failed.push(format!("{} {}", r.status, r.header("x-weft-error"))),
                Err(e) => h2_failed.push(e),
            }
        }
    }
    assert!(
        h2_failed.is_empty(),
        "HTTP/2: {} of {} failed, e.g. {:?}\nfrontend:\n{}",
        h2_failed.len(),
        h2_failed.len() + h2_ok,
        &h2_failed[..h2_failed.len().min(5)],
        fe.log_text()
    );
    assert!(
        !h2.is_closed(),
        "the app's HTTP/2 connection was closed during the renewals"
    );
    let failed: Vec<_> = outcomes
        .iter()
        .filter(|o| o.status != 200)
        .map(|o| (o.status, o.error.clone()))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed, e.g. {:?}\nfrontend:\n{}\norders:\n{}",
        failed.len(),
        outcomes.len(),
        &failed[..failed.len().min(5)],
        fe.log_text(),
        orders.log_text()
    );
    for s in [&fe, &orders] {
        let ok = metric(s.admin, "weft_cert_renewals_total", &[("result", "ok")]).await;
        assert!(ok >= 3.0, "{}: {ok} renewals\n{}", s.name, s.log_text());
    }
    assert!(cp_metric(&cp, "weft_cp_certificates_issued_total{result=\"issued\"}") >= 8.0);
    // The control plane heard of the renewed expiry on the stream.
    let st = cp_status(&cp).await;
    let fe_entry = st["sidecars"]
        .as_array()
        .expect("sidecars")
        .iter()
        .find(|s| s["service"] == "frontend" && s["connected"] == true)
        .cloned()
        .expect("frontend registered");
    let expiry = humantime::parse_rfc3339(fe_entry["cert_not_after"].as_str().expect("expiry"))
        .expect("rfc3339");
    assert!(
        expiry > std::time::SystemTime::now() - Duration::from_secs(1),
        "{fe_entry}"
    );
    println!(
        "{} HTTP/1.1 and {h2_ok} HTTP/2 requests (one connection), 0 failed; renewals: frontend {}, orders {}",
        outcomes.len(),
        metric(fe.admin, "weft_cert_renewals_total", &[("result", "ok")]).await,
        metric(
            orders.admin,
            "weft_cert_renewals_total",
            &[("result", "ok")]
        )
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_sidecar_is_refused_by_its_peer_and_does_not_restart_without_the_control_plane()
{
    let pki = Pki::new(91);
    // orders keeps a valid 1 h certificate; frontend's come from the control plane, 3 s each.
    pki.issue("orders");
    let cp = start_cp(&pki, Duration::from_secs(2), Duration::from_secs(3)).await;
    let fe_token = token_file(&pki, "frontend");
    let orders_app = http_app("orders-v1").await;
    let mut orders = spawn_sidecar(&pki, "orders", "orders", orders_app, cp.listen, None);
    orders.wait_ready().await;
    let fe_app = http_app("frontend").await;
    let mut fe = spawn_sidecar(
        &pki,
        "frontend",
        "frontend-boot",
        fe_app,
        cp.listen,
        Some(&fe_token),
    );
    fe.wait_ready().await;
    wait_routed(&fe).await;

    // The control plane goes away; frontend cannot renew and its certificate runs out while
    // it keeps calling orders.
    drop(cp);
    let c = client();
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut refused = Vec::new();
    while Instant::now() < deadline && refused.len() < 20 {
        let r = get(&c, fe.outbound, "orders", "/expired").await;
        if r.status != 200 {
            refused.push((r.status, r.header("x-weft-error").to_owned()));
        } else {
            assert!(
                refused.is_empty(),
                "a request succeeded after refusals began"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        refused.len() >= 20,
        "frontend was not refused: {refused:?}\n{}",
        fe.log_text()
    );
    // Once refused, it stays refused.
    let r = get(&c, fe.outbound, "orders", "/expired").await;
    assert_ne!(r.status, 200);
    let expired_403 = refused
        .iter()
        .filter(|(s, e)| *s == 403 && e == "caller certificate expired")
        .count();
    let by_orders = metric(
        orders.admin,
        "weft_requests_rejected_total",
        &[("reason", "cert_expired")],
    )
    .await;
    println!(
        "refused: {} ({} as 403 on an open connection, orders counted {by_orders}); e.g. {:?}",
        refused.len(),
        expired_403,
        refused.first()
    );
    // Refused by the peer: 403 on the connection opened before the expiry, or a refused
    // handshake on a new one.
    for (status, error) in &refused {
        assert!(
            (*status == 403 && error == "caller certificate expired")
                || *status == 502
                || *status == 503,
            "{status} {error}"
        );
    }
    assert!(
        metric(fe.admin, "weft_cert_renewals_total", &[("result", "error")]).await >= 1.0,
        "{}",
        fe.log_text()
    );
    assert!(
        fe.log_text().contains("certificate has expired"),
        "{}",
        fe.log_text()
    );

    // Restarted with the expired certificate and no control plane: it refuses to start.
    fe.child.kill();
    let log = pki.path().join("frontend-restart.log");
    let mut child = spawn_proxy(&fe.config, &log);
    let status = child.wait_within(Duration::from_secs(15));
    drop(child);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let status =
        status.unwrap_or_else(|| panic!("still running with an expired certificate:\n{text}"));
    assert!(!status.success(), "{text}");
    println!(
        "restart with an expired certificate, control plane down: {status}: {}",
        text.lines().last().unwrap_or_default()
    );
    assert!(
        text.contains("no certificate from the control plane"),
        "{text}"
    );
    assert!(text.contains("expired"), "{text}");
}

/// A tonic client of the control plane's sidecar port: verifies the control plane against
/// the test CA; presents `client` (certificate chain PEM, key PEM) if given.
async fn certify_client(
    pki: &Pki,
    cp: &Running,
    client: Option<(&str, &str)>,
) -> ControlPlaneClient<tonic::transport::Channel> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    rustls::crypto::ring::default_provider()
        .install_default()
        .ok();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.cert_der().clone()).expect("root");
    let builder = rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .with_root_certificates(roots);
    let tls = match client {
        Some((chain, key)) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(chain.as_bytes())
                    .collect::<Result<_, _>>()
                    .expect("chain");
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    let target = weft_policy::ControlPlane {
        address: cp.listen.to_string(),
        identity: CP_IDENTITY.parse().expect("identity"),
        state_file: None,
        join_token_file: None,
        bootstrap_timeout: Duration::from_secs(1),
        bootstrap_authorization: None,
        trust_bundle: weft_policy::wire::TrustBundleSource::Pushed,
    };
    let channel = weft_proxy::control::channel::connect(&target, tls)
        .await
        .expect("connect");
    ControlPlaneClient::new(channel)
}

fn csr_for(sa: &str) -> (String, String) {
    let id = weft_certs::Identity::new(TD, "default", sa).expect("identity");
    weft_certs::generate_csr(&id).expect("csr")
}

fn leaf_identity(chain_pem: &str) -> String {
    let chain = weft_certs::parse_cert_chain_pem(chain_pem).expect("chain");
    weft_certs::identity_from_cert_der(chain[0].as_ref())
        .expect("identity")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certify_issues_only_the_token_s_identity_and_renews_with_the_certificate() {
    let pki = Pki::new(92);
    let cp = start_cp(&pki, Duration::from_secs(2), Duration::from_secs(3600)).await;
    let token = std::fs::read_to_string(token_file(&pki, "frontend"))
        .expect("token")
        .trim()
        .to_owned();
    let mut anon = certify_client(&pki, &cp, None).await;
    let ask = |csr: &str, token: &str| CertifyRequest {
        csr_pem: csr.to_owned(),
        join_token: token.to_owned(),
    };

    // A's token, CSR for B: refused, nothing issued.
    let (csr_b, _) = csr_for("orders");
    let e = anon
        .certify(ask(&csr_b, &token))
        .await
        .expect_err("B refused");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains(&spiffe("frontend")), "{e:?}");

    // Malformed and oversized CSRs.
    let e = anon
        .certify(ask(
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            &token,
        ))
        .await
        .expect_err("bad CSR");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let e = anon
        .certify(ask(&"x".repeat(20 * 1024), &token))
        .await
        .expect_err("huge CSR");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("bytes"), "{e:?}");

    // No token and no certificate; a token that is not valid.
    let (csr_a, key_a) = csr_for("frontend");
    let e = anon
        .certify(ask(&csr_a, ""))
        .await
        .expect_err("no credential");
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let forged = format!("wjt1_0123456789abcdef_{}", "0".repeat(64));
    let e = anon
        .certify(ask(&csr_a, &forged))
        .await
        .expect_err("forged token");
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert!(
        !e.message().contains(&"0".repeat(64)),
        "secret echoed: {e:?}"
    );

    // The stream itself still requires a client certificate.
    let hello = weft_api::v1::SidecarMessage {
        kind: Some(weft_api::v1::sidecar_message::Kind::Hello(
            weft_api::v1::Hello {
                service: "frontend".into(),
                endpoint_address: "127.0.0.1:1".into(),
                ..Default::default()
            },
        )),
    };
    let e = anon
        .stream(tokio_stream::iter(vec![hello]))
        .await
        .expect_err("stream without a certificate");
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");

    // A's token, A's CSR: a certificate for A only.
    let issued = anon
        .certify(ask(&csr_a, &token))
        .await
        .expect("issued")
        .into_inner();
    assert_eq!(leaf_identity(&issued.cert_chain_pem), spiffe("frontend"));
    assert!(issued.trust_bundle_pem.contains("BEGIN CERTIFICATE"));

    // Renewal: A's certificate, no token, a new key: A again; asking for B with it is refused.
    let mut renewing = certify_client(&pki, &cp, Some((&issued.cert_chain_pem, &key_a))).await;
    let (csr_a2, _) = csr_for("frontend");
    let renewed = renewing
        .certify(ask(&csr_a2, ""))
        .await
        .expect("renewed")
        .into_inner();
    assert_eq!(leaf_identity(&renewed.cert_chain_pem), spiffe("frontend"));
    let e = renewing
        .certify(ask(&csr_b, ""))
        .await
        .expect_err("renewal as B");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");

    // A revoked token is refused.
    JoinTokenStore::new(pki.path().join("cp-state"))
        .revoke(&token)
        .expect("revoke");
    let e = anon
        .certify(ask(&csr_a, &token))
        .await
        .expect_err("revoked");
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("revoked"), "{e:?}");

    assert_eq!(
        cp_metric(&cp, "weft_cp_certificates_issued_total{result=\"issued\"}"),
        2.0
    );
    assert_eq!(
        cp_metric(&cp, "weft_cp_certificates_issued_total{result=\"refused\"}"),
        7.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_sidecar_is_withdrawn_at_once_not_after_the_grace() {
    let pki = Pki::new(93);
    let cp = start_cp(&pki, Duration::from_secs(30), Duration::from_secs(3600)).await;
    let token = token_file(&pki, "orders");
    let app = http_app("orders-v1").await;
    let mut orders = spawn_sidecar(&pki, "orders", "orders-boot", app, cp.listen, Some(&token));
    orders.wait_ready().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !registered(&cp, "orders", orders.inbound).await {
        assert!(Instant::now() < deadline, "{}", orders.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    orders.signal(nix::sys::signal::Signal::SIGTERM);
    let t = Instant::now();
    while registered(&cp, "orders", orders.inbound).await {
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "still registered {:?} after SIGTERM (grace is 30 s)\n{}",
            t.elapsed(),
            orders.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("withdrawn {:?} after SIGTERM", t.elapsed());
    assert_eq!(orders.wait_exit(Duration::from_secs(10)).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_whose_join_token_is_revoked_stops_renewing_and_logs_why() {
    let pki = Pki::new(93);
    let cp = start_cp(&pki, Duration::from_secs(2), Duration::from_secs(3)).await;
    let fe_token = token_file(&pki, "frontend");
    let fe_app = http_app("frontend").await;
    let mut fe = spawn_sidecar(
        &pki,
        "frontend",
        "frontend-boot",
        fe_app,
        cp.listen,
        Some(&fe_token),
    );
    fe.wait_ready().await;
    // It renews (with its certificate and its token) while the token is valid.
    weft_testkit::wait::until_async("a renewal", Duration::from_secs(15), || async {
        let ok = metric(fe.admin, "weft_cert_renewals_total", &[("result", "ok")]).await;
        (ok >= 1.0).then_some(())
    })
    .await;
    let token = std::fs::read_to_string(&fe_token).expect("token");
    JoinTokenStore::new(pki.path().join("cp-state"))
        .revoke(&token)
        .expect("revoke");
    // The next renewal is refused, and the sidecar says why.
    weft_testkit::wait::until_async("a refused renewal", Duration::from_secs(15), || async {
        let refused = metric(fe.admin, "weft_cert_renewals_total", &[("result", "error")]).await;
        (refused >= 1.0 && fe.log_text().contains("was revoked")).then_some(())
    })
    .await;
    assert!(
        fe.log_text().contains("Unauthenticated"),
        "{}",
        fe.log_text()
    );
}
