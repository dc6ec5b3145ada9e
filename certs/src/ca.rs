//! The mesh certificate authority, workload certificates and CSRs.

use std::fmt;
use std::time::{Duration, SystemTime};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber, SignatureAlgorithm, PKCS_ECDSA_P256_SHA256, PKCS_ED25519,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use time::OffsetDateTime;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
    OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::error::{Error, Result};
use crate::identity::{validate_trust_domain, Identity};
use crate::parse::{cert_pem_from_der, not_after_from_cert_der, trust_domain_from_ca_cert_der};

/// How far `notBefore` is backdated, to tolerate clock skew between peers.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60);

/// Longest common name X.509 allows (ub-common-name).
const MAX_COMMON_NAME: usize = 64;

/// A freshly issued workload certificate and its private key.
#[derive(Clone)]
pub struct IssuedCert {
    /// The certificate, PEM (`CERTIFICATE`); the leaf only, without the CA.
    pub cert_pem: String,
    /// The private key, PEM (PKCS#8 `PRIVATE KEY`, ECDSA P-256).
    pub key_pem: String,
    /// The certificate's `notAfter`.
    pub not_after: SystemTime,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// The mesh certificate authority: a self-signed root that signs workload certificates for one
/// trust domain.
///
/// The CA certificate records its trust domain as a `spiffe://<trust-domain>` URI SAN, so
/// [`from_pem`](Self::from_pem) can recover it.
pub struct CertificateAuthority {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
    not_after: OffsetDateTime,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Generates a new self-signed CA for `trust_domain` with a fresh ECDSA P-256 key.
    ///
    /// The certificate has basicConstraints `cA` (path length 0: it signs workload certificates
    /// directly), key usage keyCertSign + cRLSign, `notBefore` backdated by
    /// [`CLOCK_SKEW_ALLOWANCE`] and `notAfter` = now + `validity`.
    pub fn generate(trust_domain: &str, validity: Duration) -> Result<Self> {
        validate_trust_domain(trust_domain)?;
        let now = OffsetDateTime::now_utc();
        let not_after = add_validity(now, validity)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(Error::Generate)?;
        Self::self_signed(
            trust_domain,
            key,
            now - CLOCK_SKEW_ALLOWANCE,
            not_after,
            &random_serial::<16>()?,
        )
    }

    /// Generates a CA whose key (ECDSA P-256) and serial number are derived from `seed`.
    ///
    /// **For tests only**: anyone who knows the seed has the CA key. The same seed always gives
    /// the same key, subject and validity (2020-01-01 to 2100-01-01), so CAs generated from one
    /// seed in different processes trust each other's certificates; the certificate bytes still
    /// differ because ECDSA signatures are randomized.
    #[cfg(feature = "test-util")]
    pub fn generate_seeded(trust_domain: &str, seed: u64) -> Result<Self> {
        validate_trust_domain(trust_domain)?;
        let key = seeded_p256_key(seed)?;
        let serial = seeded_bytes(b"serial", seed, 0);
        let mut serial = serial.as_ref()[..16].to_vec();
        serial[0] &= 0x7f;
        let (Ok(not_before), Ok(not_after)) = (
            OffsetDateTime::from_unix_timestamp(1_577_836_800), // 2020-01-01T00:00:00Z
            OffsetDateTime::from_unix_timestamp(4_102_444_800), // 2100-01-01T00:00:00Z
        ) else {
            return Err(Error::InvalidValidity(Duration::ZERO));
        };
        Self::self_signed(trust_domain, key, not_before, not_after, &serial)
    }

    /// Loads a CA from its certificate and private key (PKCS#8 `PRIVATE KEY`), both PEM.
    ///
    /// The certificate must be a CA carrying a `spiffe://<trust-domain>` URI SAN (as written by
    /// [`generate`](Self::generate)), and the key must match its public key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let cert_der = first_cert_der(cert_pem)?;
        let trust_domain = trust_domain_from_ca_cert_der(&cert_der)?;
        Self::load(cert_der, key_pem, trust_domain)
    }

    /// Loads a CA, PEM certificate and key as for [`from_pem`](Self::from_pem), that signs for
    /// `trust_domain`: for an operator-supplied root made by another PKI.
    ///
    /// Such a CA certificate need not carry a `spiffe://` URI SAN; the trust domain then comes
    /// from configuration. If it carries one, it must name `trust_domain`
    /// ([`Error::CaTrustDomainMismatch`]). It must still be a CA certificate (basicConstraints
    /// `cA`, and keyCertSign if it has a key usage extension) whose public key matches the key.
    /// Only the first certificate of `cert_pem` is used.
    pub fn from_pem_for_trust_domain(
        cert_pem: &str,
        key_pem: &str,
        trust_domain: &str,
    ) -> Result<Self> {
        validate_trust_domain(trust_domain)?;
        let cert_der = first_cert_der(cert_pem)?;
        match trust_domain_from_ca_cert_der(&cert_der) {
            Ok(named) if named == trust_domain => {}
            Ok(named) => {
                return Err(Error::CaTrustDomainMismatch {
                    cert: named,
                    expected: trust_domain.to_owned(),
                })
            }
            // A root from another PKI names no trust domain; configuration supplies it.
            Err(Error::NoSpiffeId) => {}
            Err(e) => return Err(e),
        }
        Self::load(cert_der, key_pem, trust_domain.to_owned())
    }

    fn load(
        cert_der: CertificateDer<'static>,
        key_pem: &str,
        trust_domain: String,
    ) -> Result<Self> {
        let (_, x509) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|_| Error::InvalidCaCert("cannot parse certificate"))?;
        if !x509.is_ca() {
            return Err(Error::InvalidCaCert("not a CA certificate"));
        }
        if let Ok(Some(ku)) = x509.key_usage() {
            if !ku.value.key_cert_sign() {
                return Err(Error::InvalidCaCert("key usage lacks keyCertSign"));
            }
        }
        let key = KeyPair::from_pem(key_pem).map_err(Error::InvalidCaKey)?;
        if key.public_key_raw() != x509.public_key().subject_public_key.data.as_ref() {
            return Err(Error::CaKeyMismatch);
        }
        let not_after = x509.validity().not_after.to_datetime();
        let key_pem = key.serialize_pem();
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|_| Error::InvalidCaCert("unsupported certificate contents"))?;
        Ok(Self {
            trust_domain,
            issuer,
            cert_pem: cert_pem_from_der(&cert_der),
            cert_der,
            key_pem,
            not_after,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER (for a trust bundle / root store).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA private key, PEM (PKCS#8 `PRIVATE KEY`). Keep it secret.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The trust domain this CA signs for.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The CA certificate's `notAfter`.
    pub fn not_after(&self) -> SystemTime {
        self.not_after.into()
    }

    /// Issues a workload certificate for `identity` with a fresh ECDSA P-256 key.
    ///
    /// For static configuration (`weftctl certs issue`); sidecars use
    /// [`generate_csr`] + [`sign_csr`](Self::sign_csr) so their key never leaves them. The
    /// certificate is as described in [`sign_csr`](Self::sign_csr).
    pub fn issue(&self, identity: &Identity, validity: Duration) -> Result<IssuedCert> {
        self.check_trust_domain(identity)?;
        let params = self.leaf_params(identity, validity)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(Error::Generate)?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(Error::Generate)?;
        Ok(IssuedCert {
            not_after: not_after_from_cert_der(cert.der())?,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a PEM CSR from a workload whose identity the caller has established as `expected`,
    /// and returns the certificate, PEM (leaf only).
    ///
    /// Refuses a CSR that does not parse ([`Error::CsrUnparsable`]), whose key is neither
    /// ECDSA P-256 (signed with SHA-256) nor Ed25519 ([`Error::CsrKeyAlgorithm`]), whose
    /// signature does not verify ([`Error::CsrSignatureInvalid`]), that carries an extension
    /// this CA does not understand ([`Error::CsrInvalid`]), that asks for a CA
    /// ([`Error::CsrRequestsCa`]), or that asks for a name that is not `expected`'s
    /// ([`Error::CsrIdentityMismatch`]): every subject alternative name must be `expected`'s
    /// SPIFFE URI or its DNS name, and a common name if any one of those two. A CSR may ask for
    /// no name at all: the caller has already established who it is. Whatever the CSR asked, the
    /// certificate carries exactly: URI SAN = [`Identity::spiffe_uri`], DNS SAN =
    /// [`Identity::dns_name`], extended key usage serverAuth + clientAuth, key usage
    /// digitalSignature, basicConstraints not CA, `notBefore` = now − [`CLOCK_SKEW_ALLOWANCE`],
    /// `notAfter` = now + `validity` (but no later than the CA's own `notAfter`), subject CN =
    /// the SPIFFE URI (or the DNS name when the URI is longer than 64 characters), a random
    /// serial number and an authority key identifier.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        expected: &Identity,
        validity: Duration,
    ) -> Result<String> {
        self.sign_csr_with(csr_pem, expected, validity, &[])
    }

    /// [`CertificateAuthority::sign_csr`], adding the non-critical extensions `extra` (object
    /// identifier arcs and DER value each) that the CA itself vouches for, such as when and
    /// with which credential the identity was attested.
    pub fn sign_csr_with(
        &self,
        csr_pem: &str,
        expected: &Identity,
        validity: Duration,
        extra: &[(&[u64], Vec<u8>)],
    ) -> Result<String> {
        self.check_trust_domain(expected)?;
        let csr = parse_csr(csr_pem)?;
        if matches!(csr.params.is_ca, IsCa::Ca(_)) {
            return Err(Error::CsrRequestsCa);
        }
        check_requested_names(&csr.params, expected)?;
        let mut params = self.leaf_params(expected, validity)?;
        params.custom_extensions = extra
            .iter()
            .map(|(oid, value)| rcgen::CustomExtension::from_oid_content(oid, value.clone()))
            .collect();
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(Error::Generate)?;
        Ok(cert.pem())
    }

    fn self_signed(
        trust_domain: &str,
        key: KeyPair,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
        serial: &[u8],
    ) -> Result<Self> {
        let mut params = CertificateParams::default();
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(SerialNumber::from_slice(serial));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Weft");
        // A short serial-derived tag tells rotated roots of one trust domain apart.
        let tag: String = serial.iter().take(4).map(|b| format!("{b:02x}")).collect();
        dn.push(DnType::CommonName, format!("Weft CA {tag}"));
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(ia5(format!("spiffe://{trust_domain}"))?)];
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).map_err(Error::Generate)?;
        let key_pem = key.serialize_pem();
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_pem,
            not_after: params.not_after.replace_nanosecond(0).unwrap_or(not_after),
            issuer: Issuer::new(params, key),
        })
    }

    fn check_trust_domain(&self, identity: &Identity) -> Result<()> {
        if identity.trust_domain() != self.trust_domain {
            return Err(Error::TrustDomainMismatch {
                ca: self.trust_domain.clone(),
                identity: identity.trust_domain().to_owned(),
            });
        }
        Ok(())
    }

    fn leaf_params(&self, identity: &Identity, validity: Duration) -> Result<CertificateParams> {
        let now = OffsetDateTime::now_utc();
        if self.not_after <= now {
            return Err(Error::InvalidCaCert("CA certificate has expired"));
        }
        let not_after = add_validity(now, validity)?.min(self.not_after);
        let mut params = subject_params(identity)?;
        params.not_before = now - CLOCK_SKEW_ALLOWANCE;
        params.not_after = not_after;
        params.serial_number = Some(SerialNumber::from_slice(&random_serial::<8>()?));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }
}

/// Generates a CSR for `identity` with a fresh ECDSA P-256 key; returns `(csr_pem, key_pem)`.
///
/// The CSR requests the identity's SPIFFE URI SAN and DNS SAN, which is what
/// [`CertificateAuthority::sign_csr`] expects. The key (PKCS#8 `PRIVATE KEY`) stays with the
/// caller.
pub fn generate_csr(identity: &Identity) -> Result<(String, String)> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(Error::Generate)?;
    let csr = subject_params(identity)?
        .serialize_request(&key)
        .map_err(Error::Generate)?;
    let csr_pem = csr.pem().map_err(Error::Generate)?;
    Ok((csr_pem, key.serialize_pem()))
}

/// Subject and SANs of a workload certificate (and of its CSR).
fn subject_params(identity: &Identity) -> Result<CertificateParams> {
    let spiffe = identity.spiffe_uri();
    let dns = identity.dns_name();
    let mut dn = DistinguishedName::new();
    if spiffe.len() <= MAX_COMMON_NAME {
        dn.push(DnType::CommonName, spiffe.clone());
    } else if dns.len() <= MAX_COMMON_NAME {
        dn.push(DnType::CommonName, dns.clone());
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(ia5(spiffe)?), SanType::DnsName(ia5(dns)?)];
    Ok(params)
}

/// Parses a PEM CSR, checks its key algorithm and verifies its signature.
fn parse_csr(csr_pem: &str) -> Result<CertificateSigningRequestParams> {
    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|_| Error::CsrUnparsable)?;
    let (rest, request) =
        X509CertificationRequest::from_der(&der).map_err(|_| Error::CsrUnparsable)?;
    if !rest.is_empty() {
        return Err(Error::CsrUnparsable);
    }
    // Checked before anything else looks at the key: rcgen derives the certificate's key
    // algorithm from the CSR's *signature* algorithm, so a P-384 key signed "with SHA-256" would
    // otherwise be certified as a (malformed) P-256 key.
    let spki = &request.certification_request_info.subject_pki;
    let expected_alg = allowed_key_algorithm(spki)?;
    let csr = CertificateSigningRequestParams::from_der(&der).map_err(|e| match e {
        rcgen::Error::CouldNotParseCertificationRequest => Error::CsrUnparsable,
        rcgen::Error::InvalidCertificationRequestSignature => Error::CsrSignatureInvalid,
        rcgen::Error::UnsupportedSignatureAlgorithm => {
            Error::CsrKeyAlgorithm(format!("{} (signature algorithm)", describe_spki(spki)))
        }
        e => Error::CsrInvalid(e),
    })?;
    if csr.public_key.algorithm() != expected_alg {
        return Err(Error::CsrKeyAlgorithm(format!(
            "{} signed with {:?}",
            describe_spki(spki),
            csr.public_key.algorithm()
        )));
    }
    Ok(csr)
}

/// The signature algorithm a CSR with this key must use, if the key is one the mesh allows.
fn allowed_key_algorithm(spki: &SubjectPublicKeyInfo<'_>) -> Result<&'static SignatureAlgorithm> {
    let alg = &spki.algorithm;
    if alg.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY
        && alg
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .is_some_and(|curve| curve == OID_EC_P256)
    {
        return Ok(&PKCS_ECDSA_P256_SHA256);
    }
    if alg.algorithm == OID_SIG_ED25519 {
        return Ok(&PKCS_ED25519);
    }
    Err(Error::CsrKeyAlgorithm(describe_spki(spki)))
}

/// A short name for a public key's algorithm, for error messages.
fn describe_spki(spki: &SubjectPublicKeyInfo<'_>) -> String {
    let alg = &spki.algorithm;
    if alg.algorithm == OID_PKCS1_RSAENCRYPTION {
        return "RSA".to_owned();
    }
    if alg.algorithm == OID_SIG_ED25519 {
        return "Ed25519".to_owned();
    }
    if alg.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = alg.parameters.as_ref().and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 => "ECDSA P-256".to_owned(),
            Some(c) if c == OID_NIST_EC_P384 => "ECDSA P-384".to_owned(),
            Some(c) if c == OID_NIST_EC_P521 => "ECDSA P-521".to_owned(),
            Some(c) => format!("ECDSA on curve {c}"),
            None => "ECDSA without a named curve".to_owned(),
        };
    }
    format!("key algorithm {}", alg.algorithm)
}

/// Checks that a CSR asks for none but `expected`'s names.
fn check_requested_names(params: &CertificateParams, expected: &Identity) -> Result<()> {
    let spiffe = expected.spiffe_uri();
    let dns = expected.dns_name();
    let mut requested = Vec::with_capacity(params.subject_alt_names.len() + 1);
    let mut matches = true;
    for san in &params.subject_alt_names {
        match san {
            SanType::URI(uri) => {
                matches &= uri.as_str() == spiffe;
                requested.push(uri.as_str().to_owned());
            }
            SanType::DnsName(name) => {
                matches &= name.as_str() == dns;
                requested.push(name.as_str().to_owned());
            }
            other => {
                matches = false;
                requested.push(format!("{other:?}"));
            }
        }
    }
    if let Some(cn) = params.distinguished_name.get(&DnType::CommonName) {
        let cn = match cn {
            DnValue::Utf8String(s) => s.clone(),
            DnValue::PrintableString(s) => s.as_str().to_owned(),
            DnValue::Ia5String(s) => s.as_str().to_owned(),
            other => format!("{other:?}"),
        };
        matches &= cn == spiffe || cn == dns;
        requested.push(format!("CN={cn}"));
    }
    if matches {
        Ok(())
    } else {
        Err(Error::CsrIdentityMismatch {
            expected: spiffe,
            requested,
        })
    }
}

/// The first `CERTIFICATE` of a PEM string.
fn first_cert_der(cert_pem: &str) -> Result<CertificateDer<'static>> {
    CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => Error::NoCertificates,
        e => Error::Pem(e),
    })
}

fn ia5(s: String) -> Result<Ia5String> {
    Ia5String::try_from(s).map_err(Error::Generate)
}

fn add_validity(now: OffsetDateTime, validity: Duration) -> Result<OffsetDateTime> {
    if validity.is_zero() {
        return Err(Error::InvalidValidity(validity));
    }
    time::Duration::try_from(validity)
        .ok()
        .and_then(|d| now.checked_add(d))
        // Beyond year 9999 X.509 GeneralizedTime cannot encode it.
        .filter(|t| t.year() <= 9999)
        .ok_or(Error::InvalidValidity(validity))
}

/// A positive random serial number of `N` bytes (the top bit cleared).
///
/// The CA's own serial is 16 bytes. Workload certificates take 8 (63 random bits): unique per
/// CA with overwhelming probability for any realistic issuance count (the birthday bound is
/// about three billion certificates per CA), and short on purpose: Pingora formats the client
/// certificate's serial as hex text into its connection-pool key on every proxied request
/// (twice), so each byte costs the outbound sidecar work per request. Measured with callgrind,
/// 16-byte serials spent about 15% of the outbound sidecar's instructions there.
fn random_serial<const N: usize>() -> Result<[u8; N]> {
    let mut serial = [0u8; N];
    SystemRandom::new()
        .fill(&mut serial)
        .map_err(|_| Error::Rng)?;
    serial[0] &= 0x7f;
    Ok(serial)
}

#[cfg(feature = "test-util")]
fn seeded_bytes(purpose: &[u8], seed: u64, counter: u32) -> ring::digest::Digest {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"weft-certs seeded CA v1\0");
    ctx.update(purpose);
    ctx.update(&seed.to_be_bytes());
    ctx.update(&counter.to_be_bytes());
    ctx.finish()
}

/// Derives a P-256 key from `seed`.
///
/// ring only generates ECDSA keys from a `SecureRandom`, a sealed trait; its (deprecated)
/// fixed-output test RNG is the one way to feed it chosen bytes. A candidate scalar out of range
/// (probability about 2^-32) makes ring give up, and the next counter value is tried.
#[allow(deprecated)]
#[cfg(feature = "test-util")]
fn seeded_p256_key(seed: u64) -> Result<KeyPair> {
    use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
    for counter in 0..16 {
        let bytes = seeded_bytes(b"p256 key", seed, counter);
        let rng = ring::deprecated_test::rand::FixedSliceRandom {
            bytes: bytes.as_ref(),
        };
        if let Ok(pkcs8) = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng) {
            return KeyPair::try_from(pkcs8.as_ref()).map_err(Error::Generate);
        }
    }
    Err(Error::Rng)
}
