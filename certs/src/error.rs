//! Error types of this crate.

use std::time::Duration;

/// Why a trust domain, namespace, service account or SPIFFE ID was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The trust domain is not a lowercase DNS name such as `weft.local`.
    #[error("invalid trust domain {value:?}: {reason}")]
    InvalidTrustDomain {
        /// The rejected value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The namespace is not a DNS label (`[a-z0-9-]`, 1 to 63 characters).
    #[error("invalid namespace {value:?}: {reason}")]
    InvalidNamespace {
        /// The rejected value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The service account is not a DNS label (`[a-z0-9-]`, 1 to 63 characters).
    #[error("invalid service account {value:?}: {reason}")]
    InvalidServiceAccount {
        /// The rejected value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The identity's DNS name would be longer than the 253 characters DNS allows.
    #[error("identity DNS name would be {len} characters long, more than 253")]
    DnsNameTooLong {
        /// Length the DNS name would have had.
        len: usize,
    },
    /// The string does not start with `spiffe://`.
    #[error("not a SPIFFE ID (expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>): {0:?}")]
    NotSpiffe(String),
    /// The string is a SPIFFE ID but its path is not `/ns/<namespace>/sa/<service-account>`.
    #[error("malformed SPIFFE ID {value:?}: {reason}")]
    MalformedSpiffeId {
        /// The rejected value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Errors from certificate authority operations, CSR handling and certificate parsing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An identity or trust domain was invalid.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A validity period was zero or too large to represent.
    #[error("invalid validity period {0:?}: must be non-zero and representable as a date")]
    InvalidValidity(Duration),
    /// The identity belongs to a different trust domain than the CA.
    #[error("identity is in trust domain {identity:?} but this CA signs for {ca:?}")]
    TrustDomainMismatch {
        /// The CA's trust domain.
        ca: String,
        /// The identity's trust domain.
        identity: String,
    },
    /// A CA certificate names a different trust domain than the one it was loaded for.
    #[error(
        "CA certificate is for trust domain {cert:?} but trust domain {expected:?} is configured"
    )]
    CaTrustDomainMismatch {
        /// The trust domain named in the CA certificate's `spiffe://` URI SAN.
        cert: String,
        /// The trust domain the caller asked for.
        expected: String,
    },
    /// Key generation or certificate/CSR serialization failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[source] rcgen::Error),
    /// The CA private key PEM could not be parsed (a PKCS#8 `PRIVATE KEY` is required).
    #[error("invalid CA private key: {0}")]
    InvalidCaKey(#[source] rcgen::Error),
    /// The CA certificate is not usable as a Weft CA.
    #[error("invalid CA certificate: {0}")]
    InvalidCaCert(&'static str),
    /// The CA private key does not belong to the CA certificate.
    #[error("CA private key does not match the CA certificate's public key")]
    CaKeyMismatch,
    /// The input is not a PEM or DER PKCS#10 certificate signing request.
    #[error("cannot parse the certificate signing request (expected PEM `CERTIFICATE REQUEST`)")]
    CsrUnparsable,
    /// The CSR's self-signature does not verify against the public key it carries, so whoever
    /// sent it may not hold the private key.
    #[error("certificate signing request signature does not verify")]
    CsrSignatureInvalid,
    /// The CSR's key (or the algorithm it signed with) is not one this mesh issues certificates
    /// for: ECDSA P-256 with SHA-256, or Ed25519.
    #[error(
        "certificate signing request key algorithm {0} is not allowed (ECDSA P-256 or Ed25519)"
    )]
    CsrKeyAlgorithm(String),
    /// The CSR parses and verifies but carries something this CA does not sign, such as an
    /// unsupported extension.
    #[error("invalid certificate signing request: {0}")]
    CsrInvalid(#[source] rcgen::Error),
    /// The CSR asks for a name that is not the expected identity's.
    #[error("CSR requests {requested:?} but the caller is {expected}")]
    CsrIdentityMismatch {
        /// SPIFFE ID of the identity the CSR was expected to request.
        expected: String,
        /// Names the CSR requested (subject alternative names, and its common name if any).
        requested: Vec<String>,
    },
    /// The CSR asks for a CA certificate.
    #[error("CSR requests a CA certificate")]
    CsrRequestsCa,
    /// A certificate's DER could not be parsed.
    #[error("cannot parse certificate: {0}")]
    CertParse(#[source] x509_parser::error::X509Error),
    /// The certificate has no `spiffe://` URI subject alternative name.
    #[error("certificate has no spiffe:// URI subject alternative name")]
    NoSpiffeId,
    /// The certificate has more than one `spiffe://` URI subject alternative name.
    #[error("certificate has {0} spiffe:// URI subject alternative names, exactly one is allowed")]
    MultipleSpiffeIds(usize),
    /// PEM input was malformed.
    #[error("invalid PEM: {0}")]
    Pem(#[source] rustls_pki_types::pem::Error),
    /// PEM input held no `CERTIFICATE` block.
    #[error("no CERTIFICATE found in PEM input")]
    NoCertificates,
    /// The system random number generator failed.
    #[error("system random number generator failed")]
    Rng,
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
