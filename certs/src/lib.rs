//! Weft mesh identities and certificates.
//!
//! - [`Identity`]: a workload identity, `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`,
//!   with a DNS form `<sa>.<ns>.serviceaccount.identity.<trust-domain>` for TLS hostname checks.
//! - [`CertificateAuthority`]: the mesh CA (ECDSA P-256) that issues workload certificates,
//!   directly ([`CertificateAuthority::issue`]) or from a sidecar's CSR
//!   ([`CertificateAuthority::sign_csr`], with [`generate_csr`] on the sidecar side).
//! - Certificate inspection: [`identity_from_cert_der`], [`not_before_from_cert_der`],
//!   [`not_after_from_cert_der`], [`trust_domain_from_ca_cert_der`]; PEM: [`parse_cert_chain_pem`],
//!   [`cert_pem_from_der`], [`key_pem_from_der`].
//! - Rotation timing: [`renew_at`], when a workload renews its certificate.
//! - [`files`]: the one atomic file write (exact mode, temporary file, rename, directory sync)
//!   every component writes its keys, certificates and state through.

mod ca;
mod error;
pub mod files;
mod identity;
mod parse;
mod rotation;

pub use ca::{generate_csr, CertificateAuthority, IssuedCert, CLOCK_SKEW_ALLOWANCE};
pub use error::{Error, IdentityError, Result};
pub use identity::{validate_namespace, validate_service_account, validate_trust_domain, Identity};
pub use parse::{
    cert_pem_from_der, extension_from_cert_der, identity_from_cert_der, key_pem_from_der,
    not_after_from_cert_der, not_before_from_cert_der, parse_cert_chain_pem,
    serial_hex_from_cert_der, trust_domain_from_ca_cert_der,
};
pub use rotation::{renew_at, renewal_time};
