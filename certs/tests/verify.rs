//! End-to-end checks of issued certificates with rustls' WebPKI verifiers.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, RootCertStore};
use weft_certs::{
    generate_csr, identity_from_cert_der, key_pem_from_der, not_after_from_cert_der,
    parse_cert_chain_pem, trust_domain_from_ca_cert_der, CertificateAuthority, Error, Identity,
    IdentityError, CLOCK_SKEW_ALLOWANCE,
};
use x509_parser::extensions::{GeneralName, ParsedExtension};

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(cas: &[&CertificateAuthority]) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots
            .add(ca.cert_der().clone())
            .expect("CA is a valid root");
    }
    Arc::new(roots)
}

fn server_verifier(cas: &[&CertificateAuthority]) -> Arc<WebPkiServerVerifier> {
    WebPkiServerVerifier::builder_with_provider(roots(cas), provider())
        .build()
        .expect("server verifier")
}

fn client_verifier(cas: &[&CertificateAuthority]) -> Arc<dyn ClientCertVerifier> {
    WebPkiClientVerifier::builder_with_provider(roots(cas), provider())
        .build()
        .expect("client verifier")
}

fn leaf(cert_pem: &str) -> CertificateDer<'static> {
    let mut chain = parse_cert_chain_pem(cert_pem).expect("cert pem");
    assert_eq!(chain.len(), 1);
    chain.remove(0)
}

fn at(t: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(t.duration_since(UNIX_EPOCH).expect("after epoch"))
}

fn verify_server(
    cas: &[&CertificateAuthority],
    cert: &CertificateDer<'_>,
    name: &str,
    now: SystemTime,
) -> Result<(), rustls::Error> {
    let name = ServerName::try_from(name.to_owned()).expect("valid server name");
    server_verifier(cas)
        .verify_server_cert(cert, &[], &name, &[], at(now))
        .map(|_| ())
}

fn cert_error(r: Result<(), rustls::Error>) -> CertificateError {
    match r {
        Err(rustls::Error::InvalidCertificate(e)) => e,
        other => panic!("expected a certificate error, got {other:?}"),
    }
}

fn frontend() -> Identity {
    Identity::new("weft.local", "default", "frontend").expect("identity")
}

fn new_ca() -> CertificateAuthority {
    CertificateAuthority::generate("weft.local", DAY * 30).expect("CA")
}

#[test]
fn ca_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<CertificateAuthority>();
}

#[test]
fn issued_cert_verifies_as_server_for_its_dns_name_only() {
    let ca = new_ca();
    let id = frontend();
    let issued = ca.issue(&id, DAY).expect("issue");
    let cert = leaf(&issued.cert_pem);
    let now = SystemTime::now();

    verify_server(&[&ca], &cert, &id.dns_name(), now).expect("valid for its own DNS name");

    let other = Identity::new("weft.local", "default", "backend").expect("identity");
    let err = cert_error(verify_server(&[&ca], &cert, &other.dns_name(), now));
    assert!(
        matches!(
            err,
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        ),
        "{err:?}"
    );
}

#[test]
fn issued_cert_verifies_as_client() {
    let ca = new_ca();
    let issued = ca.issue(&frontend(), DAY).expect("issue");
    let cert = leaf(&issued.cert_pem);
    client_verifier(&[&ca])
        .verify_client_cert(&cert, &[], at(SystemTime::now()))
        .expect("valid client cert");
}

#[test]
fn cert_from_another_ca_is_rejected_and_bundles_hold_several_roots() {
    let ca = new_ca();
    let other_ca = new_ca();
    let id = frontend();
    let cert = leaf(&other_ca.issue(&id, DAY).expect("issue").cert_pem);
    let now = SystemTime::now();
    let err = cert_error(verify_server(&[&ca], &cert, &id.dns_name(), now));
    assert_eq!(err, CertificateError::UnknownIssuer);
    let err = client_verifier(&[&ca])
        .verify_client_cert(&cert, &[], at(now))
        .expect_err("unknown issuer");
    assert!(matches!(
        err,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    ));

    // A bundle with both roots (CA rotation overlap) accepts either CA's certificates.
    verify_server(&[&ca, &other_ca], &cert, &id.dns_name(), now).expect("rotation bundle");
    let cert2 = leaf(&ca.issue(&id, DAY).expect("issue").cert_pem);
    verify_server(&[&ca, &other_ca], &cert2, &id.dns_name(), now).expect("rotation bundle");
}

#[test]
fn validity_window_is_computed_and_enforced() {
    let ca = new_ca();
    let id = frontend();
    let before = SystemTime::now();
    let issued = ca.issue(&id, HOUR).expect("issue");
    let after = SystemTime::now();
    let cert = leaf(&issued.cert_pem);

    assert_eq!(
        not_after_from_cert_der(&cert).expect("not_after"),
        issued.not_after
    );
    // X.509 times have one-second resolution: notAfter is now + validity, truncated.
    assert!(issued.not_after <= after + HOUR, "{:?}", issued.not_after);
    assert!(
        issued.not_after + Duration::from_secs(1) >= before + HOUR,
        "{:?}",
        issued.not_after
    );

    let name = id.dns_name();
    // Valid just before notAfter, expired just after.
    verify_server(
        &[&ca],
        &cert,
        &name,
        issued.not_after - Duration::from_secs(1),
    )
    .expect("valid before notAfter");
    let err = cert_error(verify_server(
        &[&ca],
        &cert,
        &name,
        issued.not_after + Duration::from_secs(1),
    ));
    assert!(
        matches!(
            err,
            CertificateError::Expired | CertificateError::ExpiredContext { .. }
        ),
        "{err:?}"
    );

    // notBefore is backdated by the clock-skew allowance, and no more.
    verify_server(&[&ca], &cert, &name, before - CLOCK_SKEW_ALLOWANCE / 2)
        .expect("valid within skew allowance");
    let err = cert_error(verify_server(
        &[&ca],
        &cert,
        &name,
        after - CLOCK_SKEW_ALLOWANCE - Duration::from_secs(2),
    ));
    assert!(
        matches!(
            err,
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. }
        ),
        "{err:?}"
    );
}

#[test]
fn leaf_validity_is_clamped_to_the_ca() {
    let ca = CertificateAuthority::generate("weft.local", HOUR).expect("CA");
    let issued = ca.issue(&frontend(), DAY).expect("issue");
    assert!(issued.not_after <= ca.not_after());
    assert!(issued.not_after + Duration::from_secs(1) >= ca.not_after());
}

#[test]
fn bad_validity_and_foreign_trust_domain_are_refused() {
    let ca = new_ca();
    assert!(matches!(
        ca.issue(&frontend(), Duration::ZERO),
        Err(Error::InvalidValidity(_))
    ));
    assert!(matches!(
        ca.issue(&frontend(), Duration::MAX),
        Err(Error::InvalidValidity(_))
    ));
    assert!(matches!(
        CertificateAuthority::generate("weft.local", Duration::ZERO),
        Err(Error::InvalidValidity(_))
    ));
    assert!(matches!(
        CertificateAuthority::generate("Not A Domain", DAY),
        Err(Error::Identity(IdentityError::InvalidTrustDomain { .. }))
    ));
    let foreign = Identity::new("other.local", "default", "frontend").expect("identity");
    assert!(matches!(
        ca.issue(&foreign, DAY),
        Err(Error::TrustDomainMismatch { .. })
    ));
    let (csr, _key) = generate_csr(&foreign).expect("csr");
    assert!(matches!(
        ca.sign_csr(&csr, &foreign, DAY),
        Err(Error::TrustDomainMismatch { .. })
    ));
}

#[test]
fn issued_cert_has_exactly_the_identity_and_workload_extensions() {
    let ca = new_ca();
    let id = frontend();
    let cert = leaf(&ca.issue(&id, DAY).expect("issue").cert_pem);
    assert_eq!(identity_from_cert_der(&cert).expect("identity"), id);

    let (_, x509) = x509_parser::parse_x509_certificate(&cert).expect("parse");
    let san = x509
        .subject_alternative_name()
        .expect("unique SAN")
        .expect("SAN present");
    assert_eq!(
        san.value.general_names,
        vec![
            GeneralName::URI(&id.spiffe_uri()),
            GeneralName::DNSName(&id.dns_name())
        ]
    );
    let eku = x509
        .extended_key_usage()
        .expect("eku")
        .expect("eku present");
    assert!(eku.value.server_auth && eku.value.client_auth);
    assert!(!eku.value.any && !eku.value.code_signing);
    let ku = x509.key_usage().expect("ku").expect("ku present");
    assert!(ku.critical);
    assert!(ku.value.digital_signature() && !ku.value.key_cert_sign());
    assert!(!x509.is_ca());
    let cn: Vec<_> = x509
        .subject()
        .iter_common_name()
        .map(|cn| cn.as_str().expect("utf8"))
        .collect();
    assert_eq!(cn, vec![id.spiffe_uri().as_str()]);
    assert!(x509.extensions().iter().any(|e| matches!(
        e.parsed_extension(),
        ParsedExtension::AuthorityKeyIdentifier(_)
    )));

    // Two certificates for the same identity get distinct serial numbers.
    let cert2 = leaf(&ca.issue(&id, DAY).expect("issue").cert_pem);
    let (_, x509_2) = x509_parser::parse_x509_certificate(&cert2).expect("parse");
    assert_ne!(x509.raw_serial(), x509_2.raw_serial());
}

#[test]
fn ca_cert_has_ca_extensions_and_trust_domain() {
    let ca = new_ca();
    assert_eq!(ca.trust_domain(), "weft.local");
    let (_, x509) = x509_parser::parse_x509_certificate(ca.cert_der()).expect("parse");
    let bc = x509.basic_constraints().expect("bc").expect("bc present");
    assert!(bc.critical && bc.value.ca);
    let ku = x509.key_usage().expect("ku").expect("ku present");
    assert!(ku.value.key_cert_sign() && ku.value.crl_sign());
    assert_eq!(
        trust_domain_from_ca_cert_der(ca.cert_der()).expect("td"),
        "weft.local"
    );
    // A CA certificate carries no workload identity.
    assert!(matches!(
        identity_from_cert_der(ca.cert_der()),
        Err(Error::Identity(IdentityError::MalformedSpiffeId { .. }))
    ));
}

#[test]
fn sign_csr_accepts_a_matching_csr() {
    let ca = new_ca();
    let id = frontend();
    let (csr, key_pem) = generate_csr(&id).expect("csr");
    assert!(csr.contains("BEGIN CERTIFICATE REQUEST"));
    let cert_pem = ca.sign_csr(&csr, &id, DAY).expect("signed");
    let cert = leaf(&cert_pem);
    assert_eq!(identity_from_cert_der(&cert).expect("identity"), id);
    verify_server(&[&ca], &cert, &id.dns_name(), SystemTime::now()).expect("verifies");

    // The certificate certifies the caller's key.
    let key = rcgen::KeyPair::from_pem(&key_pem).expect("key");
    let (_, x509) = x509_parser::parse_x509_certificate(&cert).expect("parse");
    assert_eq!(
        x509.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
}

#[test]
fn sign_csr_refuses_another_identity() {
    let ca = new_ca();
    let id = frontend();
    let other = Identity::new("weft.local", "default", "backend").expect("identity");
    let (csr, _) = generate_csr(&other).expect("csr");
    match ca.sign_csr(&csr, &id, DAY) {
        Err(Error::CsrIdentityMismatch {
            expected,
            requested,
        }) => {
            assert_eq!(expected, id.spiffe_uri());
            assert!(requested.contains(&other.spiffe_uri()), "{requested:?}");
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
}

fn custom_csr(sans: Vec<rcgen::SanType>, cn: Option<&str>, is_ca: bool) -> String {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(cn) = cn {
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
    }
    params.subject_alt_names = sans;
    if is_ca {
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    }
    params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem")
}

fn uri(s: String) -> rcgen::SanType {
    rcgen::SanType::URI(s.try_into().expect("ia5"))
}

fn dns(s: &str) -> rcgen::SanType {
    rcgen::SanType::DnsName(s.try_into().expect("ia5"))
}

#[test]
fn sign_csr_refuses_extra_or_missing_names() {
    let ca = new_ca();
    let id = frontend();
    let mismatch = |csr: String| {
        matches!(
            ca.sign_csr(&csr, &id, DAY),
            Err(Error::CsrIdentityMismatch { .. })
        )
    };
    // Extra DNS name.
    assert!(mismatch(custom_csr(
        vec![uri(id.spiffe_uri()), dns("evil.example.com")],
        None,
        false
    )));
    // Second SPIFFE ID.
    assert!(mismatch(custom_csr(
        vec![
            uri(id.spiffe_uri()),
            uri("spiffe://weft.local/ns/default/sa/admin".into())
        ],
        None,
        false
    )));
    // Only a foreign DNS name.
    assert!(mismatch(custom_csr(
        vec![dns("backend.default.serviceaccount.identity.weft.local")],
        None,
        false
    )));
    // Foreign common name.
    assert!(mismatch(custom_csr(
        vec![uri(id.spiffe_uri())],
        Some("admin"),
        false
    )));
    // SPIFFE ID only, no CN: accepted, and the certificate still gets both SANs.
    let cert_pem = ca
        .sign_csr(
            &custom_csr(vec![uri(id.spiffe_uri())], None, false),
            &id,
            DAY,
        )
        .expect("spiffe-only CSR");
    let cert = leaf(&cert_pem);
    verify_server(&[&ca], &cert, &id.dns_name(), SystemTime::now()).expect("has DNS SAN");
    // No name at all, or only the DNS form: the caller's identity decides, the certificate gets
    // both SANs.
    for csr in [
        custom_csr(vec![], None, false),
        custom_csr(vec![dns(&id.dns_name())], None, false),
        custom_csr(vec![], Some(&id.dns_name()), false),
    ] {
        let cert = leaf(&ca.sign_csr(&csr, &id, DAY).expect("nameless CSR"));
        assert_eq!(identity_from_cert_der(&cert).expect("identity"), id);
        verify_server(&[&ca], &cert, &id.dns_name(), SystemTime::now()).expect("has DNS SAN");
    }
    // CSR asking to be a CA.
    assert!(matches!(
        ca.sign_csr(
            &custom_csr(vec![uri(id.spiffe_uri())], None, true),
            &id,
            DAY
        ),
        Err(Error::CsrRequestsCa)
    ));
}

#[test]
fn sign_csr_refuses_garbage_and_bad_signatures() {
    let ca = new_ca();
    let id = frontend();
    for garbage in [
        "",
        "hello",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        ca.cert_pem(),
    ] {
        assert!(
            matches!(ca.sign_csr(garbage, &id, DAY), Err(Error::CsrUnparsable)),
            "{garbage:?}"
        );
    }

    // Flip a bit in the signature: it no longer verifies.
    let (csr, _) = generate_csr(&id).expect("csr");
    let mut der = pem::parse(&csr).expect("pem").into_contents();
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
    assert!(matches!(
        ca.sign_csr(&tampered, &id, DAY),
        Err(Error::CsrSignatureInvalid)
    ));
}

fn csr_with_key(alg: &'static rcgen::SignatureAlgorithm, id: &Identity) -> String {
    let key = rcgen::KeyPair::generate_for(alg).expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![uri(id.spiffe_uri())];
    params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem")
}

#[test]
fn sign_csr_accepts_p256_and_ed25519_keys_only() {
    let ca = new_ca();
    let id = frontend();
    let cert = leaf(
        &ca.sign_csr(&csr_with_key(&rcgen::PKCS_ED25519, &id), &id, DAY)
            .expect("Ed25519 CSR"),
    );
    verify_server(&[&ca], &cert, &id.dns_name(), SystemTime::now()).expect("verifies");
    ca.sign_csr(&csr_with_key(&rcgen::PKCS_ECDSA_P256_SHA256, &id), &id, DAY)
        .expect("P-256 CSR");
    match ca.sign_csr(&csr_with_key(&rcgen::PKCS_ECDSA_P384_SHA384, &id), &id, DAY) {
        Err(e @ Error::CsrKeyAlgorithm(_)) => {
            assert!(e.to_string().contains("ECDSA P-384"), "{e}");
        }
        other => panic!("expected a key algorithm error, got {other:?}"),
    }
}

#[test]
fn ca_round_trips_through_pem() {
    let ca = new_ca();
    let loaded = CertificateAuthority::from_pem(ca.cert_pem(), ca.key_pem()).expect("load");
    assert_eq!(loaded.trust_domain(), "weft.local");
    assert_eq!(loaded.cert_der(), ca.cert_der());
    assert_eq!(loaded.cert_pem(), ca.cert_pem());
    assert_eq!(loaded.not_after(), ca.not_after());
    let id = frontend();
    let cert = leaf(&loaded.issue(&id, DAY).expect("issue").cert_pem);
    // Verified against the original CA certificate.
    verify_server(&[&ca], &cert, &id.dns_name(), SystemTime::now()).expect("verifies");

    let other = CertificateAuthority::generate("weft.local", DAY).expect("CA");
    assert!(matches!(
        CertificateAuthority::from_pem(ca.cert_pem(), other.key_pem()),
        Err(Error::CaKeyMismatch)
    ));
    assert!(matches!(
        CertificateAuthority::from_pem(ca.cert_pem(), "not a key"),
        Err(Error::InvalidCaKey(_))
    ));
    assert!(matches!(
        CertificateAuthority::from_pem("", ca.key_pem()),
        Err(Error::NoCertificates)
    ));
    let issued = ca.issue(&id, DAY).expect("issue");
    assert!(matches!(
        CertificateAuthority::from_pem(&issued.cert_pem, &issued.key_pem),
        Err(Error::InvalidCaCert(_))
    ));
}

/// A CA certificate as another PKI would make it: no `spiffe://` SAN.
fn foreign_pki_ca(is_ca: bool) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Corp Root");
    if is_ca {
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    }
    let cert = params.self_signed(&key).expect("cert");
    (cert.pem(), key.serialize_pem())
}

#[test]
fn ca_from_another_pki_is_loaded_for_a_configured_trust_domain() {
    let (cert_pem, key_pem) = foreign_pki_ca(true);
    // Without a trust domain in the certificate, `from_pem` cannot tell which one it signs for.
    assert!(matches!(
        CertificateAuthority::from_pem(&cert_pem, &key_pem),
        Err(Error::NoSpiffeId)
    ));
    let ca = CertificateAuthority::from_pem_for_trust_domain(&cert_pem, &key_pem, "weft.local")
        .expect("loads");
    assert_eq!(ca.trust_domain(), "weft.local");
    let id = frontend();
    let (csr, _) = generate_csr(&id).expect("csr");
    let cert = leaf(&ca.sign_csr(&csr, &id, DAY).expect("signs"));
    verify_server(&[&ca], &cert, &id.dns_name(), SystemTime::now()).expect("verifies");

    // A Weft CA names its trust domain, which must be the configured one.
    let weft = new_ca();
    CertificateAuthority::from_pem_for_trust_domain(weft.cert_pem(), weft.key_pem(), "weft.local")
        .expect("same trust domain");
    match CertificateAuthority::from_pem_for_trust_domain(
        weft.cert_pem(),
        weft.key_pem(),
        "other.local",
    ) {
        Err(e @ Error::CaTrustDomainMismatch { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("weft.local") && text.contains("other.local"),
                "{text}"
            );
        }
        other => panic!("expected a trust domain mismatch, got {other:?}"),
    }

    // Not a CA, or a key that does not match.
    let (leaf_pem, leaf_key) = foreign_pki_ca(false);
    assert!(matches!(
        CertificateAuthority::from_pem_for_trust_domain(&leaf_pem, &leaf_key, "weft.local"),
        Err(Error::InvalidCaCert(_))
    ));
    assert!(matches!(
        CertificateAuthority::from_pem_for_trust_domain(&cert_pem, weft.key_pem(), "weft.local"),
        Err(Error::CaKeyMismatch)
    ));
}

#[test]
fn seeded_ca_is_deterministic() {
    let a = CertificateAuthority::generate_seeded("weft.local", 42).expect("seeded");
    let b = CertificateAuthority::generate_seeded("weft.local", 42).expect("seeded");
    let c = CertificateAuthority::generate_seeded("weft.local", 43).expect("seeded");
    assert_eq!(a.key_pem(), b.key_pem());
    assert_ne!(a.key_pem(), c.key_pem());
    // Certificates issued by one verify against the other's root.
    let id = frontend();
    let cert = leaf(&a.issue(&id, DAY).expect("issue").cert_pem);
    verify_server(&[&b], &cert, &id.dns_name(), SystemTime::now()).expect("same CA");
    let err = cert_error(verify_server(
        &[&c],
        &cert,
        &id.dns_name(),
        SystemTime::now(),
    ));
    assert_eq!(err, CertificateError::UnknownIssuer);
}

#[test]
fn identity_extraction_requires_exactly_one_spiffe_id() {
    let no_uri = rcgen::generate_simple_self_signed(vec!["example.com".to_owned()])
        .expect("cert")
        .cert;
    assert!(matches!(
        identity_from_cert_der(no_uri.der()),
        Err(Error::NoSpiffeId)
    ));

    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![
        uri("spiffe://weft.local/ns/default/sa/a".into()),
        uri("https://example.com/".into()),
        uri("spiffe://weft.local/ns/default/sa/b".into()),
    ];
    let two = params.self_signed(&key).expect("cert");
    assert!(matches!(
        identity_from_cert_der(two.der()),
        Err(Error::MultipleSpiffeIds(2))
    ));

    params.subject_alt_names = vec![
        uri("https://example.com/".into()),
        uri("spiffe://weft.local/ns/default/sa/a".into()),
    ];
    let one = params.self_signed(&key).expect("cert");
    assert_eq!(
        identity_from_cert_der(one.der())
            .expect("identity")
            .spiffe_uri(),
        "spiffe://weft.local/ns/default/sa/a"
    );

    assert!(matches!(
        identity_from_cert_der(b"not a certificate"),
        Err(Error::CertParse(_))
    ));
    assert!(matches!(
        not_after_from_cert_der(b""),
        Err(Error::CertParse(_))
    ));
}

#[test]
fn cert_chain_pem_parsing() {
    let ca = new_ca();
    let issued = ca.issue(&frontend(), DAY).expect("issue");
    let bundle = format!("{}{}{}", issued.cert_pem, issued.key_pem, ca.cert_pem());
    let chain = parse_cert_chain_pem(&bundle).expect("chain");
    assert_eq!(chain.len(), 2);
    assert_eq!(&chain[1], ca.cert_der());
    assert!(matches!(
        parse_cert_chain_pem(&issued.key_pem),
        Err(Error::NoCertificates)
    ));
    assert!(matches!(
        parse_cert_chain_pem(""),
        Err(Error::NoCertificates)
    ));
}

/// Workload serials are short (Pingora formats them into its pool key per request), positive,
/// and still distinct from one issue to the next.
#[test]
fn leaf_serials_are_short_positive_and_distinct() {
    let ca = CertificateAuthority::generate_seeded("weft.local", 7).expect("ca");
    let id = Identity::new("weft.local", "default", "orders").expect("identity");
    let mut seen = std::collections::HashSet::new();
    for _ in 0..64 {
        let cert = ca.issue(&id, HOUR).expect("issue");
        let der = leaf(&cert.cert_pem);
        let (_, x509) = x509_parser::parse_x509_certificate(der.as_ref()).expect("parse");
        let raw = x509.raw_serial();
        assert!(!raw.is_empty() && raw.len() <= 8, "serial {raw:02x?}");
        assert!(raw[0] & 0x80 == 0, "serial must be positive: {raw:02x?}");
        assert!(seen.insert(raw.to_vec()), "serial repeated: {raw:02x?}");
    }
}

#[test]
fn key_pem_from_der_round_trips_an_issued_key_with_its_label() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::PrivateKeyDer;
    let ca = CertificateAuthority::generate_seeded("weft.local", 21).expect("ca");
    let id = Identity::new("weft.local", "default", "orders").expect("identity");
    let issued = ca.issue(&id, HOUR).expect("issue");
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).expect("key");
    let pem = key_pem_from_der(&key);
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
    let again = PrivateKeyDer::from_pem_slice(pem.as_bytes()).expect("re-read");
    assert_eq!(again.secret_der(), key.secret_der());
    // A SEC1 key keeps its own label, so a PEM reader picks the right decoder.
    let sec1 = PrivateKeyDer::Sec1(key.secret_der().to_vec().into());
    assert!(key_pem_from_der(&sec1).starts_with("-----BEGIN EC PRIVATE KEY-----\n"));
}
