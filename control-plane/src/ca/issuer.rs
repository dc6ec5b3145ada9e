//! Certificate issuance: a credential and a CSR in, a workload certificate out.
//!
//! The workload makes its key pair and sends only a CSR, so its private key never leaves it; the
//! control plane decides the identity from the credential alone, and the CSR can at most agree
//! with that decision.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use weft_certs::{
    not_after_from_cert_der, not_before_from_cert_der, parse_cert_chain_pem, Identity,
};

use crate::ca::admission::{Admission, Limits};
use crate::ca::attest::{AttestError, Attestor, Credential};
use crate::ca::ca_store::CaStore;
use crate::ca::denied::DeniedSerials;
use crate::ca::provenance::{Provenance, Source, PROVENANCE_OID};

/// Lifetime of workload certificates unless configured otherwise.
pub const DEFAULT_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Shortest configurable lifetime (tests use it to watch rotation happen).
pub const MIN_CERT_LIFETIME: Duration = Duration::from_secs(1);
/// Longest configurable lifetime: certificates stay short-lived, so a leaked key or a revoked
/// token stops mattering within a week at most.
pub const MAX_CERT_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// Largest CSR accepted, PEM. A P-256 or Ed25519 CSR for any valid identity is well under 2 KiB;
/// the bound keeps a hostile caller from making the issuer parse megabytes.
pub const MAX_CSR_PEM_LEN: usize = 16 * 1024;

/// Options of an [`Issuer`].
#[derive(Debug)]
pub struct IssuerOptions {
    /// Lifetime of issued certificates, between [`MIN_CERT_LIFETIME`] and
    /// [`MAX_CERT_LIFETIME`]. A certificate never outlives the signing root, whatever this says.
    pub cert_lifetime: Duration,
    /// The bounds of each `Certify` gate (first attestations and renewals each have one).
    pub admission: Limits,
}

impl Default for IssuerOptions {
    fn default() -> Self {
        Self {
            cert_lifetime: DEFAULT_CERT_LIFETIME,
            admission: Limits::default(),
        }
    }
}

/// Why an [`Issuer`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssuerConfigError {
    /// The certificate lifetime is out of bounds.
    #[error(
        "certificate lifetime {} is out of bounds: it must be between {} and {}",
        humantime::format_duration(*.0),
        humantime::format_duration(MIN_CERT_LIFETIME),
        humantime::format_duration(MAX_CERT_LIFETIME)
    )]
    CertLifetime(Duration),
}

/// A certificate issued to a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The identity certified: the one the credential proved.
    pub identity: Identity,
    /// The certificate chain, PEM: the workload certificate, then any intermediates (none while
    /// the signing root signs directly). Never the root: that comes in the trust bundle.
    pub chain_pem: String,
    /// The certificate's `notBefore` (backdated by [`weft_certs::CLOCK_SKEW_ALLOWANCE`]).
    pub not_before: SystemTime,
    /// The certificate's `notAfter`.
    pub not_after: SystemTime,
    /// The certificate's serial, lowercase hex (what `weftctl certs deny` takes).
    pub serial: String,
}

/// Why a certificate was not issued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    /// The credential proves no identity.
    #[error("credential refused: {0}")]
    BadCredential(#[source] AttestError),
    /// The credential could not be checked (a failure on the control plane's side).
    #[error("cannot check the credential: {0}")]
    Attestation(#[source] AttestError),
    /// The CSR is larger than [`MAX_CSR_PEM_LEN`].
    #[error("certificate signing request is {len} bytes, more than the {max} allowed")]
    CsrTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The CSR is not a PEM PKCS#10 certificate signing request.
    #[error("cannot parse the certificate signing request (expected PEM `CERTIFICATE REQUEST`)")]
    CsrUnparsable,
    /// The CSR's signature does not verify with its own public key.
    #[error("certificate signing request signature does not verify")]
    CsrSignatureInvalid,
    /// The CSR's key is neither ECDSA P-256 nor Ed25519.
    #[error("certificate signing request key {0} is not allowed: use ECDSA P-256 or Ed25519")]
    CsrKeyAlgorithm(String),
    /// The CSR asks to be a CA.
    #[error("certificate signing request asks for a CA certificate")]
    CsrRequestsCa,
    /// The CSR carries something the CA does not sign (such as an unknown extension).
    #[error("certificate signing request not accepted: {0}")]
    CsrInvalid(String),
    /// The CSR asks for another identity than the credential proves.
    #[error(
        "certificate signing request asks for {} but the credential is for {allowed}: \
         a credential obtains only its own identity",
        .requested.join(", ")
    )]
    IdentityMismatch {
        /// The names the CSR asked for.
        requested: Vec<String>,
        /// The identity the credential proves.
        allowed: Identity,
    },
    /// The certificate asking to be renewed has a denied serial (`weftctl certs deny`).
    #[error("certificate serial {serial} is denied: it can no longer be renewed; the workload must attest again")]
    Denied {
        /// The serial, lowercase hex.
        serial: String,
    },
    /// The list of denied serials could not be read (a failure on the control plane's side).
    #[error("cannot read the denied serials: {0}")]
    DeniedList(String),
    /// The identity was attested longer ago than the maximum age allows renewing for.
    #[error(
        "this identity was attested at {} and may be renewed for at most {} since: attest again \
         with a live credential (join token or service account token)",
        humantime::format_rfc3339_seconds(*attested_at),
        humantime::format_duration(*max_age)
    )]
    TooOld {
        /// When it was last attested.
        attested_at: SystemTime,
        /// The configured maximum age.
        max_age: Duration,
    },
    /// The credential presented with a renewal proves another identity than the certificate.
    #[error(
        "the certificate is for {certificate} but the credential presented is for {credential}"
    )]
    RenewalMismatch {
        /// The certificate's identity.
        certificate: Box<Identity>,
        /// The credential's identity.
        credential: Box<Identity>,
    },
    /// Signing failed on the control plane's side (for example, the root has expired).
    #[error("cannot sign the certificate: {0}")]
    Signing(#[source] weft_certs::Error),
}

impl IssueError {
    /// Whether the caller's request was refused, as opposed to the control plane failing.
    ///
    /// A server answers the first kind with an "unauthenticated", "permission denied" or
    /// "invalid argument" status and the second with "internal" or "unavailable".
    pub fn is_caller_error(&self) -> bool {
        !matches!(
            self,
            Self::Attestation(_) | Self::Signing(_) | Self::DeniedList(_)
        )
    }
}

/// Sorts an attestation error into the caller's fault and ours.
fn attest_error(e: AttestError) -> IssueError {
    if e.is_refusal() {
        IssueError::BadCredential(e)
    } else {
        IssueError::Attestation(e)
    }
}

/// Issues workload certificates: attests the credential, checks the CSR, signs.
///
/// Cheap to share (`Arc<Issuer>`): `issue` takes `&self` and holds no lock.
pub struct Issuer {
    store: Arc<CaStore>,
    attestor: Arc<dyn Attestor>,
    cert_lifetime: Duration,
    first: Admission,
    renewal: Admission,
    denied: DeniedSerials,
}

impl fmt::Debug for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issuer")
            .field("store", &self.store)
            .field("cert_lifetime", &self.cert_lifetime)
            .finish_non_exhaustive()
    }
}

impl Issuer {
    /// An issuer signing with `store`'s root for identities `attestor` proves.
    pub fn new(
        store: Arc<CaStore>,
        attestor: Arc<dyn Attestor>,
        options: IssuerOptions,
    ) -> Result<Self, IssuerConfigError> {
        let lifetime = options.cert_lifetime;
        if !(MIN_CERT_LIFETIME..=MAX_CERT_LIFETIME).contains(&lifetime) {
            return Err(IssuerConfigError::CertLifetime(lifetime));
        }
        Ok(Self {
            attestor,
            cert_lifetime: lifetime,
            first: Admission::new(options.admission),
            renewal: Admission::new(options.admission),
            denied: DeniedSerials::new(store.state_dir()),
            store,
        })
    }

    /// Issues a certificate for the identity `credential` proves, certifying the key of
    /// `csr_pem`.
    ///
    /// The credential is checked first, so an unauthenticated caller learns nothing about its
    /// CSR. The CSR must parse, verify, use an ECDSA P-256 or Ed25519 key, not ask for a CA,
    /// and ask for no name but the attested identity's (its SPIFFE URI or DNS form; asking for
    /// none is fine): a join token for service A cannot obtain an identity for service B. The
    /// certificate carries the attested identity's SPIFFE URI SAN and DNS SAN and its
    /// [`Provenance`] (this credential, now), and lives for the configured lifetime (at most
    /// until the root expires); see
    /// [`CertificateAuthority::sign_csr`](weft_certs::CertificateAuthority::sign_csr).
    pub fn issue(&self, credential: &Credential, csr_pem: &str) -> Result<Issued, IssueError> {
        let identity = self.attest(credential)?;
        let provenance = Provenance::now(source_of(credential));
        self.sign(identity, &provenance, csr_pem)
    }

    /// Take denied serials from `denied` instead of the state directory (on Kubernetes, the
    /// API every replica shares).
    pub fn with_denied_serials(mut self, denied: DeniedSerials) -> Self {
        self.denied = denied;
        self
    }

    /// Renews the certificate `current` (DER; its chain and possession of its key already
    /// verified by the TLS handshake) for the key of `csr_pem`, re-attesting the identity.
    ///
    /// Refused when `current`'s serial is denied ([`DeniedSerials`]). With a `credential`
    /// (what a sidecar that has one presents on every renewal), it must prove `current`'s
    /// identity, and the identity counts as attested now. Without, the credential named by
    /// `current`'s [`Provenance`] is re-checked (a join token still there, neither revoked nor
    /// expired; a service account token cannot be re-checked without itself, so it must be
    /// presented), and the identity must be younger than the maximum age
    /// ([`CaStore::max_identity_age`]) since it was last attested; the new certificate ends by
    /// then at the latest.
    pub fn renew(
        &self,
        current: &[u8],
        credential: Option<&Credential>,
        csr_pem: &str,
    ) -> Result<Issued, IssueError> {
        let identity = weft_certs::identity_from_cert_der(current).map_err(IssueError::Signing)?;
        let serial = weft_certs::serial_hex_from_cert_der(current).map_err(IssueError::Signing)?;
        match self.denied.is_denied(&serial) {
            Ok(false) => {}
            Ok(true) => return Err(IssueError::Denied { serial }),
            Err(e) => return Err(IssueError::DeniedList(e.to_string())),
        }
        let provenance = match credential {
            Some(credential) => {
                let attested = self.attest(credential)?;
                if attested != identity {
                    return Err(IssueError::RenewalMismatch {
                        certificate: Box::new(identity),
                        credential: Box::new(attested),
                    });
                }
                Provenance::now(source_of(credential))
            }
            None => self.recheck(current, &identity)?,
        };
        self.sign(identity, &provenance, csr_pem)
    }

    /// The provenance of `current` after re-checking its credential and its age.
    fn recheck(&self, current: &[u8], identity: &Identity) -> Result<Provenance, IssueError> {
        let provenance = match Provenance::of_cert(current) {
            Ok(Some(p)) => p,
            Ok(None) => Provenance {
                attested_at: not_before_from_cert_der(current).map_err(IssueError::Signing)?,
                source: Source::Unknown,
            },
            Err(e) => return Err(IssueError::BadCredential(AttestError::Provenance(e))),
        };
        self.attestor
            .recheck(&provenance.source, identity)
            .map_err(attest_error)?;
        let max_age = self.store.max_identity_age();
        if provenance.attested_at + max_age <= SystemTime::now() {
            return Err(IssueError::TooOld {
                attested_at: provenance.attested_at,
                max_age,
            });
        }
        Ok(provenance)
    }

    fn attest(&self, credential: &Credential) -> Result<Identity, IssueError> {
        self.attestor.attest(credential).map_err(attest_error)
    }

    /// Signs `csr_pem` for `identity` with `provenance`, for the configured lifetime but never
    /// past the identity's maximum age.
    fn sign(
        &self,
        identity: Identity,
        provenance: &Provenance,
        csr_pem: &str,
    ) -> Result<Issued, IssueError> {
        if csr_pem.len() > MAX_CSR_PEM_LEN {
            return Err(IssueError::CsrTooLarge {
                len: csr_pem.len(),
                max: MAX_CSR_PEM_LEN,
            });
        }
        let ends = provenance.attested_at + self.store.max_identity_age();
        let left = ends.duration_since(SystemTime::now()).unwrap_or_default();
        let lifetime = self.cert_lifetime.min(left).max(MIN_CERT_LIFETIME);
        let cert_pem = self
            .store
            .ca()
            .sign_csr_with(
                csr_pem,
                &identity,
                lifetime,
                &[(PROVENANCE_OID, provenance.to_der())],
            )
            .map_err(|e| csr_error(e, &identity))?;
        let leaf = parse_cert_chain_pem(&cert_pem)
            .ok()
            .and_then(|chain| chain.into_iter().next())
            .ok_or(IssueError::Signing(weft_certs::Error::NoCertificates))?;
        let not_before = not_before_from_cert_der(&leaf).map_err(IssueError::Signing)?;
        let not_after = not_after_from_cert_der(&leaf).map_err(IssueError::Signing)?;
        let serial = weft_certs::serial_hex_from_cert_der(&leaf).map_err(IssueError::Signing)?;
        Ok(Issued {
            identity,
            chain_pem: cert_pem,
            not_before,
            not_after,
            serial,
        })
    }

    /// The trust bundle workloads should verify peers with, PEM (see
    /// [`CaStore::trust_bundle_pem`]).
    pub fn trust_bundle_pem(&self) -> &str {
        self.store.trust_bundle_pem()
    }

    /// The CA store it signs with.
    pub fn ca_store(&self) -> &Arc<CaStore> {
        &self.store
    }

    /// The gate a `Certify` call passes before attesting and signing: the renewals' gate for
    /// a caller with a workload certificate, else the first attestations'.
    pub fn admission(&self, renewal: bool) -> &Admission {
        if renewal {
            &self.renewal
        } else {
            &self.first
        }
    }

    /// Lifetime of the certificates it issues.
    pub fn cert_lifetime(&self) -> Duration {
        self.cert_lifetime
    }
}

/// Sorts a signing error into the caller's fault and ours.
fn csr_error(e: weft_certs::Error, identity: &Identity) -> IssueError {
    use weft_certs::Error as E;
    match e {
        E::CsrUnparsable => IssueError::CsrUnparsable,
        E::CsrSignatureInvalid => IssueError::CsrSignatureInvalid,
        E::CsrKeyAlgorithm(alg) => IssueError::CsrKeyAlgorithm(alg),
        E::CsrRequestsCa => IssueError::CsrRequestsCa,
        E::CsrInvalid(e) => IssueError::CsrInvalid(e.to_string()),
        E::CsrIdentityMismatch { requested, .. } => IssueError::IdentityMismatch {
            requested,
            allowed: identity.clone(),
        },
        e => IssueError::Signing(e),
    }
}

/// The provenance source of a presented credential: a join token by its id (never its
/// secret), or the service account. Here, not in `provenance`, so that module needs neither
/// the credential types nor the token store.
fn source_of(credential: &Credential) -> Source {
    match credential {
        Credential::JoinToken(token) => Source::JoinToken(
            crate::ca::tokens::token_id(token)
                .unwrap_or_default()
                .to_owned(),
        ),
        Credential::ServiceAccountToken(_) => Source::ServiceAccount,
    }
}
