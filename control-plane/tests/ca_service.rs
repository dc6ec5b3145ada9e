//! The mesh CA service: CA store, join tokens and issuance, through the library.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use weft_certs::{generate_csr, parse_cert_chain_pem, CertificateAuthority, Identity};
use weft_control_plane::ca::attest::{AttestError, Attestor, Credential};
use weft_control_plane::ca::ca_store::{
    CaStore, CaStoreError, CaStoreOptions, RootOrigin, RootSource, EXTRA_ROOTS_FILE,
};
use weft_control_plane::ca::issuer::{
    IssueError, Issued, Issuer, IssuerConfigError, IssuerOptions, MAX_CERT_LIFETIME,
};
use weft_control_plane::ca::tokens::{
    JoinTokenAttestor, JoinTokenStore, NewToken, Revocation, TokenError, TokenStatus,
    JOIN_TOKENS_FILE,
};
use x509_parser::extensions::GeneralName;

#[path = "ca_service/renewal.rs"]
mod renewal;

const TD: &str = "weft.local";
const HOUR: Duration = Duration::from_secs(3600);

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

fn id(service: &str) -> Identity {
    Identity::new(TD, "default", service).expect("identity")
}

/// Writes a seeded (deterministic) test CA to `dir` and returns the options to use it.
fn seeded_root(dir: &Path, seed: u64) -> (CertificateAuthority, CaStoreOptions) {
    let ca = CertificateAuthority::generate_seeded(TD, seed).expect("seeded CA");
    fs::create_dir_all(dir).expect("mkdir");
    let cert = dir.join(format!("root-{seed}.crt"));
    let key = dir.join(format!("root-{seed}.key"));
    fs::write(&cert, ca.cert_pem()).expect("write cert");
    fs::write(&key, ca.key_pem()).expect("write key");
    let options = CaStoreOptions {
        root: RootSource::Files { cert, key },
        ..CaStoreOptions::default()
    };
    (ca, options)
}

fn at(t: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(t.duration_since(UNIX_EPOCH).expect("after epoch"))
}

fn root_store(bundle: &[CertificateDer<'static>]) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for der in bundle {
        roots.add(der.clone()).expect("valid root");
    }
    Arc::new(roots)
}

/// Verifies `leaf` as a server for `identity`'s DNS name and as a client, with rustls' WebPKI
/// verifiers over `bundle`.
fn verify_chain(
    bundle: &[CertificateDer<'static>],
    leaf: &CertificateDer<'_>,
    identity: &Identity,
) -> Result<(), rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let now = at(SystemTime::now());
    let name = ServerName::try_from(identity.dns_name()).expect("server name");
    WebPkiServerVerifier::builder_with_provider(root_store(bundle), provider.clone())
        .build()
        .expect("server verifier")
        .verify_server_cert(leaf, &[], &name, &[], now)?;
    WebPkiClientVerifier::builder_with_provider(root_store(bundle), provider)
        .build()
        .expect("client verifier")
        .verify_client_cert(leaf, &[], now)?;
    Ok(())
}

fn leaf_of(issued: &Issued) -> CertificateDer<'static> {
    let mut chain = parse_cert_chain_pem(&issued.chain_pem).expect("chain");
    assert_eq!(chain.len(), 1, "leaf only: the root signs directly");
    chain.remove(0)
}

/// A CA store on a seeded root, an issuer over join tokens in the same state directory, and a
/// token for `frontend`.
struct Mesh {
    _tmp: tempfile::TempDir,
    state: PathBuf,
    store: Arc<CaStore>,
    tokens: JoinTokenStore,
    issuer: Issuer,
    frontend_token: Credential,
}

fn mesh(lifetime: Duration) -> Mesh {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    let (_, options) = seeded_root(&tmp.path().join("operator"), 7);
    let store = Arc::new(CaStore::open(&state, TD, options).expect("open"));
    let tokens = JoinTokenStore::new(&state);
    let created = tokens.create(&NewToken::new("frontend")).expect("token");
    let attestor = Arc::new(JoinTokenAttestor::new(&state, TD).expect("attestor"));
    let issuer = Issuer::new(
        store.clone(),
        attestor,
        IssuerOptions {
            cert_lifetime: lifetime,
            ..IssuerOptions::default()
        },
    )
    .expect("issuer");
    Mesh {
        _tmp: tmp,
        state,
        store,
        tokens,
        issuer,
        frontend_token: Credential::JoinToken(created.token),
    }
}

fn csr_with(sans: Vec<rcgen::SanType>, alg: &'static rcgen::SignatureAlgorithm) -> String {
    let key = rcgen::KeyPair::generate_for(alg).expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = sans;
    params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem")
}

fn uri_san(id: &Identity) -> rcgen::SanType {
    rcgen::SanType::URI(id.spiffe_uri().try_into().expect("ia5"))
}

#[test]
fn root_is_created_on_first_start_and_reloaded_identically() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");

    let first = CaStore::open(&state, TD, CaStoreOptions::default()).expect("first open");
    assert_eq!(first.root_origin(), RootOrigin::Created);
    assert_eq!(first.trust_domain(), TD);
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("ca.key")), 0o600);
    assert_eq!(mode(&state.join("ca.crt")), 0o644);
    assert_eq!(first.root_cert_path(), state.join("ca.crt"));
    assert_eq!(first.trust_bundle_der(), [first.ca().cert_der().clone()]);
    assert_eq!(first.trust_bundle_pem(), first.ca().cert_pem());

    let second = CaStore::open(&state, TD, CaStoreOptions::default()).expect("second open");
    assert_eq!(second.root_origin(), RootOrigin::Loaded);
    assert_eq!(second.ca().cert_der(), first.ca().cert_der());
    assert_eq!(second.ca().key_pem(), first.ca().key_pem());
    assert_eq!(second.trust_bundle_pem(), first.trust_bundle_pem());
    // Nothing else was written (no temporary files left behind).
    let mut names: Vec<_> = fs::read_dir(&state)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
        .collect();
    names.sort();
    assert_eq!(names, ["ca.crt", "ca.key"]);
}

#[test]
fn state_dir_root_for_another_trust_domain_is_refused_naming_both() {
    let tmp = tempfile::tempdir().expect("tempdir");
    CaStore::open(tmp.path(), TD, CaStoreOptions::default()).expect("open");
    let err = CaStore::open(tmp.path(), "other.local", CaStoreOptions::default())
        .expect_err("trust domain mismatch");
    assert!(
        matches!(err, CaStoreError::TrustDomainMismatch { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("\"weft.local\"") && text.contains("\"other.local\""),
        "{text}"
    );
    assert!(matches!(
        CaStore::open(tmp.path(), "Not Valid", CaStoreOptions::default()),
        Err(CaStoreError::TrustDomain(_))
    ));
}

#[test]
fn state_dir_root_with_open_key_or_missing_half_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    CaStore::open(tmp.path(), TD, CaStoreOptions::default()).expect("open");
    let key = tmp.path().join("ca.key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = CaStore::open(tmp.path(), TD, CaStoreOptions::default()).expect_err("open key");
    assert!(
        matches!(err, CaStoreError::KeyPermissions { mode: 0o644, .. }),
        "{err:?}"
    );
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod");

    fs::remove_file(tmp.path().join("ca.crt")).expect("rm");
    let err = CaStore::open(tmp.path(), TD, CaStoreOptions::default()).expect_err("incomplete");
    assert!(matches!(err, CaStoreError::Incomplete { .. }), "{err:?}");
    // The key was not replaced behind the operator's back.
    assert!(key.exists());
}

#[test]
fn operator_supplied_root_is_validated() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    let (ca, options) = seeded_root(tmp.path(), 1);
    let store = CaStore::open(&state, TD, options.clone()).expect("operator root");
    assert_eq!(store.root_origin(), RootOrigin::Supplied);
    assert_eq!(store.ca().cert_der(), ca.cert_der());
    // Used in place: nothing copied into the state directory.
    assert!(!state.join("ca.key").exists());

    let RootSource::Files { cert, key } = &options.root else {
        unreachable!("seeded_root gives files")
    };
    let with = |cert: &Path, key: &Path| CaStoreOptions {
        root: RootSource::Files {
            cert: cert.to_owned(),
            key: key.to_owned(),
        },
        ..CaStoreOptions::default()
    };

    // A workload certificate is not a CA.
    let issued = ca.issue(&id("frontend"), HOUR).expect("issue");
    let leaf_cert = tmp.path().join("leaf.crt");
    let leaf_key = tmp.path().join("leaf.key");
    fs::write(&leaf_cert, &issued.cert_pem).expect("write");
    fs::write(&leaf_key, &issued.key_pem).expect("write");
    let err = CaStore::open(&state, TD, with(&leaf_cert, &leaf_key)).expect_err("not a CA");
    assert!(
        matches!(
            err,
            CaStoreError::InvalidRoot {
                source: weft_certs::Error::InvalidCaCert(_),
                ..
            }
        ),
        "{err:?}"
    );

    // The key of another CA.
    let (_, other) = seeded_root(tmp.path(), 2);
    let RootSource::Files { key: other_key, .. } = &other.root else {
        unreachable!("seeded_root gives files")
    };
    let err = CaStore::open(&state, TD, with(cert, other_key)).expect_err("mismatched key");
    assert!(
        matches!(
            err,
            CaStoreError::InvalidRoot {
                source: weft_certs::Error::CaKeyMismatch,
                ..
            }
        ),
        "{err:?}"
    );

    // A Weft root for another trust domain.
    let err = CaStore::open(&state, "other.local", with(cert, key)).expect_err("other domain");
    assert!(
        matches!(err, CaStoreError::TrustDomainMismatch { .. }),
        "{err:?}"
    );

    // A root from another PKI (no spiffe:// SAN) signs for the configured trust domain.
    let key_pair = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let corp = params.self_signed(&key_pair).expect("corp root");
    let (corp_cert, corp_key) = (tmp.path().join("corp.crt"), tmp.path().join("corp.key"));
    fs::write(&corp_cert, corp.pem()).expect("write");
    fs::write(&corp_key, key_pair.serialize_pem()).expect("write");
    let store = CaStore::open(&state, TD, with(&corp_cert, &corp_key)).expect("corp root");
    assert_eq!(store.trust_domain(), TD);

    // Missing files are named.
    let err = CaStore::open(&state, TD, with(&tmp.path().join("nope.crt"), key))
        .expect_err("missing file");
    assert!(err.to_string().contains("nope.crt"), "{err}");
}

#[test]
fn trust_bundle_carries_two_roots_during_rotation() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    let token = JoinTokenStore::new(&state)
        .create(&NewToken::new("frontend"))
        .expect("token")
        .token;
    let credential = Credential::JoinToken(token);
    let attestor: Arc<dyn Attestor> = Arc::new(JoinTokenAttestor::new(&state, TD).expect("att"));
    let frontend = id("frontend");
    let issue = |store: &Arc<CaStore>| {
        let issuer =
            Issuer::new(store.clone(), attestor.clone(), IssuerOptions::default()).expect("issuer");
        let (csr, _key) = generate_csr(&frontend).expect("csr");
        leaf_of(&issuer.issue(&credential, &csr).expect("issue"))
    };

    // Before: the root the control plane created on first start.
    let old = Arc::new(CaStore::open(&state, TD, CaStoreOptions::default()).expect("open"));
    let old_leaf = issue(&old);

    // Rotation: the old root goes into extra_roots.pem, an operator-supplied root signs.
    fs::copy(state.join("ca.crt"), state.join(EXTRA_ROOTS_FILE)).expect("copy");
    let (new_ca, options) = seeded_root(&tmp.path().join("operator"), 3);
    let new = Arc::new(CaStore::open(&state, TD, options.clone()).expect("rotated"));
    assert_eq!(
        new.trust_bundle_der(),
        [new_ca.cert_der().clone(), old.ca().cert_der().clone()]
    );
    let pem = new.trust_bundle_pem();
    assert_eq!(parse_cert_chain_pem(pem).expect("bundle").len(), 2);
    assert!(pem.starts_with(new_ca.cert_pem()), "signing root first");
    let new_leaf = issue(&new);

    // Workloads on either root verify against the bundle; the old bundle knows only the old.
    verify_chain(new.trust_bundle_der(), &old_leaf, &frontend).expect("old leaf");
    verify_chain(new.trust_bundle_der(), &new_leaf, &frontend).expect("new leaf");
    verify_chain(old.trust_bundle_der(), &new_leaf, &frontend).expect_err("unknown issuer");

    // Extra roots may also come from options; duplicates are dropped.
    let dup = tmp.path().join("dup.pem");
    fs::write(
        &dup,
        format!("{}{}", new_ca.cert_pem(), old.ca().cert_pem()),
    )
    .expect("write");
    let mut with_dup = options.clone();
    with_dup.extra_roots.push(dup);
    let store = CaStore::open(&state, TD, with_dup).expect("dup");
    assert_eq!(store.trust_bundle_der().len(), 2);

    // Extra roots must be CA certificates of this trust domain, and listed files must exist.
    let leaf_file = tmp.path().join("leaf.pem");
    fs::write(&leaf_file, new_leaf_pem(&new_ca)).expect("write");
    let mut bad = options.clone();
    bad.extra_roots.push(leaf_file);
    assert!(matches!(
        CaStore::open(&state, TD, bad),
        Err(CaStoreError::InvalidExtraRoot { .. })
    ));
    let foreign = CertificateAuthority::generate_seeded("other.local", 4).expect("CA");
    let foreign_file = tmp.path().join("foreign.pem");
    fs::write(&foreign_file, foreign.cert_pem()).expect("write");
    let mut bad = options.clone();
    bad.extra_roots.push(foreign_file);
    assert!(matches!(
        CaStore::open(&state, TD, bad),
        Err(CaStoreError::TrustDomainMismatch { .. })
    ));
    let mut bad = options;
    bad.extra_roots.push(tmp.path().join("missing.pem"));
    assert!(matches!(
        CaStore::open(&state, TD, bad),
        Err(CaStoreError::Io { .. })
    ));
}

fn new_leaf_pem(ca: &CertificateAuthority) -> String {
    ca.issue(&id("frontend"), HOUR).expect("issue").cert_pem
}

#[test]
fn issued_cert_chains_to_the_root_with_both_sans_and_the_configured_lifetime() {
    let m = mesh(HOUR);
    let frontend = id("frontend");
    let (csr, key_pem) = generate_csr(&frontend).expect("csr");
    let before = SystemTime::now();
    let issued = m.issuer.issue(&m.frontend_token, &csr).expect("issue");
    assert_eq!(issued.identity, frontend);
    let leaf = leaf_of(&issued);
    verify_chain(m.store.trust_bundle_der(), &leaf, &frontend).expect("chains to the root");
    assert_eq!(m.issuer.trust_bundle_pem(), m.store.trust_bundle_pem());

    let (_, x509) = x509_parser::parse_x509_certificate(&leaf).expect("parse");
    let san = x509.subject_alternative_name().expect("SAN").expect("SAN");
    assert_eq!(
        san.value.general_names,
        [
            GeneralName::URI(&frontend.spiffe_uri()),
            GeneralName::DNSName(&frontend.dns_name())
        ]
    );
    // The certificate certifies the workload's key (which the control plane never saw).
    let key = rcgen::KeyPair::from_pem(&key_pem).expect("key");
    assert_eq!(
        x509.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
    // Lifetime: notBefore backdated by the skew allowance, notAfter = issue time + 1 h.
    assert_eq!(
        issued
            .not_after
            .duration_since(issued.not_before)
            .expect("order"),
        HOUR + weft_certs::CLOCK_SKEW_ALLOWANCE
    );
    let until_expiry = issued.not_after.duration_since(before).expect("future");
    assert!(
        until_expiry > HOUR - Duration::from_secs(5) && until_expiry <= HOUR,
        "{until_expiry:?}"
    );
    assert_eq!(
        SystemTime::from(x509.validity().not_after.to_datetime()),
        issued.not_after
    );

    // The sidecar renews two thirds of the way through.
    let renew = weft_certs::renew_at(issued.not_before, issued.not_after);
    assert_eq!(
        renew.duration_since(issued.not_before).expect("order"),
        (HOUR + weft_certs::CLOCK_SKEW_ALLOWANCE) * 2 / 3
    );

    // An Ed25519 key is fine too.
    let ed = csr_with(vec![uri_san(&frontend)], &rcgen::PKCS_ED25519);
    let issued = m.issuer.issue(&m.frontend_token, &ed).expect("Ed25519");
    verify_chain(m.store.trust_bundle_der(), &leaf_of(&issued), &frontend).expect("chains");
}

#[test]
fn a_token_for_a_cannot_obtain_b() {
    let m = mesh(HOUR);
    let backend = id("backend");
    let (csr, _) = generate_csr(&backend).expect("csr");
    let err = m
        .issuer
        .issue(&m.frontend_token, &csr)
        .expect_err("identity mismatch");
    match &err {
        IssueError::IdentityMismatch { requested, allowed } => {
            assert_eq!(allowed, &id("frontend"));
            assert!(requested.contains(&backend.spiffe_uri()), "{requested:?}");
        }
        other => panic!("expected an identity mismatch, got {other:?}"),
    }
    assert!(err.is_caller_error());
    let text = err.to_string();
    assert!(
        text.contains("spiffe://weft.local/ns/default/sa/backend")
            && text.contains("spiffe://weft.local/ns/default/sa/frontend"),
        "{text}"
    );

    // Another namespace is another identity too.
    let other_ns = Identity::new(TD, "prod", "frontend").expect("identity");
    let (csr, _) = generate_csr(&other_ns).expect("csr");
    assert!(matches!(
        m.issuer.issue(&m.frontend_token, &csr),
        Err(IssueError::IdentityMismatch { .. })
    ));

    // A CSR that names nobody gets the token's identity.
    let nameless = csr_with(vec![], &rcgen::PKCS_ECDSA_P256_SHA256);
    let issued = m.issuer.issue(&m.frontend_token, &nameless).expect("issue");
    assert_eq!(issued.identity, id("frontend"));
    let leaf = leaf_of(&issued);
    assert_eq!(
        weft_certs::identity_from_cert_der(&leaf).expect("identity"),
        id("frontend")
    );
    verify_chain(m.store.trust_bundle_der(), &leaf, &id("frontend")).expect("both SANs");

    // A token bound to another namespace and service account proves that identity.
    let created = m
        .tokens
        .create(&NewToken {
            service: "checkout".into(),
            namespace: "prod".into(),
            service_account: Some("payments".into()),
            ttl: None,
        })
        .expect("token");
    let who = Identity::new(TD, "prod", "payments").expect("identity");
    let (csr, _) = generate_csr(&who).expect("csr");
    let issued = m
        .issuer
        .issue(&Credential::JoinToken(created.token), &csr)
        .expect("issue");
    assert_eq!(issued.identity, who);
}

#[test]
fn bad_tokens_are_refused() {
    let m = mesh(HOUR);
    let (csr, _) = generate_csr(&id("frontend")).expect("csr");
    let Credential::JoinToken(good) = &m.frontend_token else {
        unreachable!("join token")
    };
    let id_part = &good["wjt1_".len().."wjt1_".len() + 16];
    let wrong_secret = format!("wjt1_{id_part}_{}", "0".repeat(64));
    let unknown_id = format!("wjt1_{}_{}", "f".repeat(16), &good[good.len() - 64..]);
    for (token, expect_invalid) in [
        ("", false),
        ("hunter2", false),
        ("wjt1_zz", false),
        (wrong_secret.as_str(), true),
        (unknown_id.as_str(), true),
    ] {
        let err = m
            .issuer
            .issue(&Credential::JoinToken(token.to_owned()), &csr)
            .expect_err("refused");
        match &err {
            IssueError::BadCredential(AttestError::InvalidToken { .. }) if expect_invalid => {}
            IssueError::BadCredential(AttestError::MalformedToken) if !expect_invalid => {}
            other => panic!("{token:?}: unexpected {other:?}"),
        }
        assert!(err.is_caller_error());
        assert!(!err.to_string().contains(&good[good.len() - 64..]));
    }
    // A trailing newline (token read from a file) is fine.
    m.issuer
        .issue(&Credential::JoinToken(format!("{good}\n")), &csr)
        .expect("trimmed");
    // Debug output never shows the secret.
    assert_eq!(format!("{:?}", m.frontend_token), "JoinToken(<redacted>)");
}

#[test]
fn garbage_and_tampered_csrs_are_refused() {
    let m = mesh(HOUR);
    let issue = |csr: &str| m.issuer.issue(&m.frontend_token, csr);
    for garbage in [
        "",
        "not a csr",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        m.store.trust_bundle_pem(),
    ] {
        assert!(
            matches!(issue(garbage), Err(IssueError::CsrUnparsable)),
            "{garbage:?}"
        );
    }

    // One bit of the signature flipped.
    let (csr, _) = generate_csr(&id("frontend")).expect("csr");
    let mut der = pem::parse(&csr).expect("pem").into_contents();
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
    let err = issue(&tampered).expect_err("bad signature");
    assert!(matches!(err, IssueError::CsrSignatureInvalid), "{err:?}");
    assert!(err.is_caller_error());

    // Another key in the CSR than the one that signed it: the signature no longer verifies.
    let (csr_a, _) = generate_csr(&id("frontend")).expect("csr");
    let (csr_b, _) = generate_csr(&id("frontend")).expect("csr");
    let swapped = swap_public_key(&csr_a, &csr_b);
    assert!(matches!(
        issue(&swapped),
        Err(IssueError::CsrSignatureInvalid)
    ));

    // Keys other than P-256 and Ed25519.
    let p384 = csr_with(
        vec![uri_san(&id("frontend"))],
        &rcgen::PKCS_ECDSA_P384_SHA384,
    );
    match issue(&p384) {
        Err(IssueError::CsrKeyAlgorithm(alg)) => assert!(alg.contains("P-384"), "{alg}"),
        other => panic!("expected a key algorithm error, got {other:?}"),
    }

    // Asking to be a CA.
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_csr = params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    assert!(matches!(issue(&ca_csr), Err(IssueError::CsrRequestsCa)));

    // Oversized input is not parsed at all.
    let huge = "A".repeat(weft_control_plane::ca::issuer::MAX_CSR_PEM_LEN + 1);
    assert!(matches!(issue(&huge), Err(IssueError::CsrTooLarge { .. })));

    // The credential is checked before the CSR: a stranger learns nothing about its CSR.
    assert!(matches!(
        m.issuer
            .issue(&Credential::JoinToken("nope".into()), "garbage"),
        Err(IssueError::BadCredential(_))
    ));
}

/// `csr_a` with the subject public key of `csr_b` (and `csr_a`'s signature).
fn swap_public_key(csr_a: &str, csr_b: &str) -> String {
    let a = pem::parse(csr_a).expect("pem").into_contents();
    let b = pem::parse(csr_b).expect("pem").into_contents();
    let key_a = spki(&a);
    let key_b = spki(&b);
    assert_eq!(key_a.len(), key_b.len(), "P-256 keys have one size");
    let at = a
        .windows(key_a.len())
        .position(|w| w == key_a)
        .expect("key in CSR");
    let mut out = a.clone();
    out[at..at + key_b.len()].copy_from_slice(&key_b);
    pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", out))
}

fn spki(csr_der: &[u8]) -> Vec<u8> {
    use x509_parser::prelude::FromDer;
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(csr_der)
        .expect("csr");
    csr.certification_request_info
        .subject_pki
        .subject_public_key
        .data
        .to_vec()
}

#[test]
fn revoked_and_expired_tokens_are_refused() {
    let m = mesh(HOUR);
    let (csr, _) = generate_csr(&id("frontend")).expect("csr");
    m.issuer.issue(&m.frontend_token, &csr).expect("before");
    let Credential::JoinToken(token) = &m.frontend_token else {
        unreachable!("join token")
    };
    let listed = m.tokens.list().expect("list");
    assert_eq!(listed.len(), 1);
    let token_id = listed[0].id.clone();
    assert!(token.starts_with(&format!("wjt1_{token_id}_")));

    match m.tokens.revoke(&token_id).expect("revoke") {
        Revocation::Revoked(info) => {
            assert_eq!(info.status(SystemTime::now()), TokenStatus::Revoked)
        }
        other => panic!("{other:?}"),
    }
    let err = m
        .issuer
        .issue(&m.frontend_token, &csr)
        .expect_err("revoked");
    assert!(
        matches!(err, IssueError::BadCredential(AttestError::Revoked { .. })),
        "{err:?}"
    );
    assert!(matches!(
        m.tokens.revoke(&token_id).expect("again"),
        Revocation::AlreadyRevoked(_)
    ));
    assert!(matches!(
        m.tokens.revoke("0000000000000000"),
        Err(TokenError::UnknownId { .. })
    ));

    // Expiry, at chosen times.
    let created = m
        .tokens
        .create(&NewToken {
            ttl: Some(HOUR),
            ..NewToken::new("frontend")
        })
        .expect("token");
    let expires = created.info.expires.expect("expires");
    assert_eq!(
        expires.duration_since(created.info.created).expect("order"),
        HOUR
    );
    let info = m
        .tokens
        .verify(&created.token, expires - Duration::from_secs(1))
        .expect("valid until expiry");
    assert_eq!(info.id, created.info.id);
    assert!(matches!(
        m.tokens.verify(&created.token, expires),
        Err(AttestError::Expired { .. })
    ));
    // Revoking by the whole token works too.
    assert!(matches!(
        m.tokens.revoke(&created.token).expect("revoke"),
        Revocation::Revoked(_)
    ));
}

#[test]
fn token_file_keeps_hashes_only_and_rejects_unknown_fields() {
    let m = mesh(HOUR);
    let path = m.state.join(JOIN_TOKENS_FILE);
    assert_eq!(mode(&path), 0o600);
    let text = fs::read_to_string(&path).expect("read");
    let Credential::JoinToken(token) = &m.frontend_token else {
        unreachable!("join token")
    };
    let secret = &token[token.len() - 64..];
    assert!(!text.contains(secret), "the secret is not stored");
    assert!(text.contains("\"sha256\""), "{text}");

    // Bad names and TTLs are refused before anything is written.
    for bad in [
        NewToken::new("Frontend"),
        NewToken {
            namespace: "a/b".into(),
            ..NewToken::new("frontend")
        },
        NewToken {
            service_account: Some("-x".into()),
            ..NewToken::new("frontend")
        },
    ] {
        assert!(matches!(
            m.tokens.create(&bad),
            Err(TokenError::InvalidName(_))
        ));
    }
    assert!(matches!(
        m.tokens.create(&NewToken {
            ttl: Some(Duration::ZERO),
            ..NewToken::new("frontend")
        }),
        Err(TokenError::InvalidTtl(_))
    ));
    assert_eq!(fs::read_to_string(&path).expect("read"), text);

    // A file with a field this version does not know is refused, and so are its tokens: the
    // control plane fails closed and says why (not the caller's fault).
    fs::write(
        &path,
        text.replacen("\"tokens\"", "\"extra\": 1, \"tokens\"", 1),
    )
    .expect("write");
    assert!(matches!(m.tokens.list(), Err(TokenError::Corrupt { .. })));
    let (csr, _) = generate_csr(&id("frontend")).expect("csr");
    let err = m
        .issuer
        .issue(&m.frontend_token, &csr)
        .expect_err("corrupt store");
    assert!(matches!(err, IssueError::Attestation(_)), "{err:?}");
    assert!(!err.is_caller_error());
}

#[test]
fn certificate_lifetime_is_bounded() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_, options) = seeded_root(tmp.path(), 5);
    let store = Arc::new(CaStore::open(&tmp.path().join("s"), TD, options).expect("open"));
    let attestor: Arc<dyn Attestor> =
        Arc::new(JoinTokenAttestor::new(tmp.path().join("s"), TD).expect("attestor"));
    let build = |lifetime| {
        Issuer::new(
            store.clone(),
            attestor.clone(),
            IssuerOptions {
                cert_lifetime: lifetime,
                ..IssuerOptions::default()
            },
        )
    };
    for bad in [
        Duration::ZERO,
        Duration::from_millis(999),
        MAX_CERT_LIFETIME + Duration::from_secs(1),
    ] {
        assert!(matches!(
            build(bad),
            Err(IssuerConfigError::CertLifetime(_))
        ));
    }
    assert_eq!(
        build(Duration::from_secs(1)).expect("1 s").cert_lifetime(),
        Duration::from_secs(1)
    );
    assert_eq!(
        Issuer::new(store, attestor, IssuerOptions::default())
            .expect("default")
            .cert_lifetime(),
        Duration::from_secs(24 * 3600)
    );

    // A one-second certificate, for tests that watch rotation.
    let m = mesh(Duration::from_secs(1));
    let (csr, _) = generate_csr(&id("frontend")).expect("csr");
    let issued = m.issuer.issue(&m.frontend_token, &csr).expect("issue");
    assert_eq!(
        issued
            .not_after
            .duration_since(issued.not_before)
            .expect("order"),
        Duration::from_secs(1) + weft_certs::CLOCK_SKEW_ALLOWANCE
    );
}
