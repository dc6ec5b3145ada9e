//! Reading identities, expiry and trust domains out of certificates, and PEM helpers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::certificate::{X509Certificate, X509CertificateParser};
use x509_parser::error::X509Error;
use x509_parser::extensions::{GeneralName, SubjectAlternativeName};
use x509_parser::nom::Parser;
use x509_parser::oid_registry::OID_X509_EXT_SUBJECT_ALT_NAME;
use x509_parser::prelude::FromDer;
use x509_parser::time::ASN1Time;

use crate::error::{Error, Result};
use crate::identity::{validate_trust_domain, Identity};

const SPIFFE_SCHEME: &str = "spiffe://";

/// Extracts the workload identity from a DER certificate.
///
/// The certificate must carry exactly one `spiffe://` URI subject alternative name, and it must
/// be a valid Weft identity (`spiffe://<td>/ns/<ns>/sa/<sa>`). Other SANs are ignored.
///
/// This neither verifies the certificate's signature nor checks its validity period: call it on a
/// certificate that TLS has already verified. It is meant to run once per handshake, so it parses
/// the certificate shallowly and decodes only the subject alternative name extension.
pub fn identity_from_cert_der(der: &[u8]) -> Result<Identity> {
    let cert = parse_shallow(der)?;
    let uri = single_spiffe_uri(&cert)?;
    Ok(uri.parse()?)
}

/// Returns a DER certificate's `notAfter` time.
pub fn not_after_from_cert_der(der: &[u8]) -> Result<SystemTime> {
    let cert = parse_shallow(der)?;
    Ok(asn1_to_system_time(cert.validity().not_after))
}

/// Returns a DER certificate's `notBefore` time.
pub fn not_before_from_cert_der(der: &[u8]) -> Result<SystemTime> {
    let cert = parse_shallow(der)?;
    Ok(asn1_to_system_time(cert.validity().not_before))
}

/// Returns the trust domain a Weft CA certificate signs for.
///
/// The certificate must be a CA (basicConstraints `cA` true) and carry exactly one `spiffe://`
/// URI SAN naming only a trust domain (`spiffe://<td>`), as
/// [`CertificateAuthority::generate`](crate::CertificateAuthority::generate) writes it.
///
/// A certificate that is not a CA fails with [`Error::InvalidCaCert`] before its names are
/// looked at, so [`Error::NoSpiffeId`] means "a CA that names no trust domain" (such as a root
/// made by another PKI).
pub fn trust_domain_from_ca_cert_der(der: &[u8]) -> Result<String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| Error::CertParse(nom_error(e)))?;
    if !cert.is_ca() {
        return Err(Error::InvalidCaCert("not a CA certificate"));
    }
    let uri = single_spiffe_uri(&cert)?;
    let trust_domain = uri
        .strip_prefix(SPIFFE_SCHEME)
        .ok_or(Error::NoSpiffeId)?
        .trim_end_matches('/');
    validate_trust_domain(trust_domain)?;
    Ok(trust_domain.to_owned())
}

/// Parses every `CERTIFICATE` block of a PEM string, in order (leaf first for a chain).
///
/// Other PEM blocks (such as keys) are skipped. Fails on malformed PEM or when no certificate is
/// present.
pub fn parse_cert_chain_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(Error::Pem)?;
    if certs.is_empty() {
        return Err(Error::NoCertificates);
    }
    Ok(certs)
}

/// Encodes a DER certificate as PEM (`CERTIFICATE`, LF line endings).
pub fn cert_pem_from_der(der: &[u8]) -> String {
    pem_from_der("CERTIFICATE", der)
}

/// Encodes a DER private key as PEM, labelled by its encoding (`PRIVATE KEY` for PKCS#8,
/// `EC PRIVATE KEY` for SEC1, `RSA PRIVATE KEY` for PKCS#1), LF line endings.
pub fn key_pem_from_der(key: &PrivateKeyDer<'_>) -> String {
    let label = match key {
        PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
        PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
        _ => "PRIVATE KEY",
    };
    pem_from_der(label, key.secret_der())
}

fn pem_from_der(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// Parses a certificate without decoding its extensions' contents.
/// The serial number of a certificate (DER), lowercase hex without separators.
pub fn serial_hex_from_cert_der(der: &[u8]) -> Result<String> {
    let cert = parse_shallow(der)?;
    Ok(cert
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The value of the extension `oid` (arcs) of a certificate (DER), if it has exactly one.
pub fn extension_from_cert_der(der: &[u8], oid: &[u64]) -> Result<Option<Vec<u8>>> {
    let cert = parse_shallow(der)?;
    let oid = x509_parser::der_parser::oid::Oid::from(oid)
        .map_err(|_| Error::CertParse(X509Error::InvalidExtensions))?;
    let ext = cert.get_extension_unique(&oid).map_err(Error::CertParse)?;
    Ok(ext.map(|e| e.value.to_vec()))
}

fn parse_shallow(der: &[u8]) -> Result<X509Certificate<'_>> {
    let (_, cert) = X509CertificateParser::new()
        .with_deep_parse_extensions(false)
        .parse(der)
        .map_err(|e| Error::CertParse(nom_error(e)))?;
    Ok(cert)
}

/// Finds the single `spiffe://` URI SAN of a certificate.
fn single_spiffe_uri<'a>(cert: &X509Certificate<'a>) -> Result<&'a str> {
    let ext = cert
        .get_extension_unique(&OID_X509_EXT_SUBJECT_ALT_NAME)
        .map_err(Error::CertParse)?
        .ok_or(Error::NoSpiffeId)?;
    let (_, san) =
        SubjectAlternativeName::from_der(ext.value).map_err(|e| Error::CertParse(nom_error(e)))?;
    let mut found = None;
    let mut count = 0;
    for name in san.general_names {
        if let GeneralName::URI(uri) = name {
            if uri.starts_with(SPIFFE_SCHEME) {
                count += 1;
                found = Some(uri);
            }
        }
    }
    match (found, count) {
        (Some(uri), 1) => Ok(uri),
        (None, _) => Err(Error::NoSpiffeId),
        (Some(_), n) => Err(Error::MultipleSpiffeIds(n)),
    }
}

fn nom_error(e: x509_parser::nom::Err<X509Error>) -> X509Error {
    match e {
        x509_parser::nom::Err::Error(e) | x509_parser::nom::Err::Failure(e) => e,
        x509_parser::nom::Err::Incomplete(_) => X509Error::InvalidCertificate,
    }
}

fn asn1_to_system_time(t: ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}
