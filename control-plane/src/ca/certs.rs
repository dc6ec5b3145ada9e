//! `weftctl certs`: a file-based mesh CA for static configuration.
//!
//! A CA directory holds [`CA_CERT_FILE`] and [`CA_KEY_FILE`]; [`issue`] writes
//! `<service-account>.crt` and `<service-account>.key` next to them. Private keys are written with
//! mode 0600, certificates with 0644, each atomically (temporary file + rename).

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use weft_certs::{
    identity_from_cert_der, not_after_from_cert_der, parse_cert_chain_pem,
    trust_domain_from_ca_cert_der, CertificateAuthority, Identity,
};

use crate::files::{self, PRIVATE_MODE as KEY_MODE, PUBLIC_MODE as CERT_MODE};

/// File name of the CA certificate in a CA directory.
pub const CA_CERT_FILE: &str = "ca.crt";
/// File name of the CA private key in a CA directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// Default trust domain of `weftctl certs init`.
pub const DEFAULT_TRUST_DOMAIN: &str = "weft.local";

/// Errors of the `certs` commands.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertsError {
    /// `init` found an existing CA and was not told to overwrite it.
    #[error("a CA already exists at {0} (pass --force to replace it)")]
    CaExists(PathBuf),
    /// The service account name would overwrite the CA's own files.
    #[error("service account name {0:?} is reserved (its files would overwrite the CA's)")]
    ReservedName(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A certificate operation failed or a file's contents were invalid.
    #[error("{path}: {source}")]
    Certs {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: weft_certs::Error,
    },
    /// A certificate is neither a workload certificate nor a Weft CA certificate.
    #[error("{path}: not a Weft workload or CA certificate: {source}")]
    NotWeftCert {
        /// The certificate file.
        path: PathBuf,
        /// Why it is not a workload certificate.
        #[source]
        source: weft_certs::Error,
    },
}

impl CertsError {
    /// Whether the request itself was wrong (an existing CA without `--force`, an invalid name,
    /// trust domain or validity), as opposed to a failure reading or using files.
    pub fn is_invalid_request(&self) -> bool {
        match self {
            Self::CaExists(_) | Self::ReservedName(_) => true,
            Self::Certs { source, .. } => matches!(
                source,
                weft_certs::Error::Identity(_) | weft_certs::Error::InvalidValidity(_)
            ),
            Self::Io { .. } | Self::NotWeftCert { .. } => false,
        }
    }
}

/// Result type of the `certs` commands.
pub type Result<T, E = CertsError> = std::result::Result<T, E>;

/// What [`init`] created.
#[derive(Debug, Clone)]
pub struct InitReport {
    /// Path of the CA certificate.
    pub cert_path: PathBuf,
    /// Path of the CA private key.
    pub key_path: PathBuf,
    /// The CA's trust domain.
    pub trust_domain: String,
    /// The CA certificate's `notAfter`.
    pub not_after: SystemTime,
}

/// What [`issue`] created.
#[derive(Debug, Clone)]
pub struct IssueReport {
    /// The certified identity.
    pub identity: Identity,
    /// Path of the workload certificate (leaf only; the CA is in [`CA_CERT_FILE`]).
    pub cert_path: PathBuf,
    /// Path of the workload private key.
    pub key_path: PathBuf,
    /// The certificate's `notAfter`.
    pub not_after: SystemTime,
}

/// Whom a certificate inspected by [`show`] belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSubject {
    /// A workload certificate for this identity.
    Workload(Identity),
    /// A Weft CA certificate for this trust domain.
    CertificateAuthority {
        /// The trust domain the CA signs for.
        trust_domain: String,
    },
}

/// What [`show`] found in a certificate file.
#[derive(Debug, Clone)]
pub struct CertSummary {
    /// Whom the (first) certificate in the file belongs to.
    pub subject: CertSubject,
    /// Its `notAfter`.
    pub not_after: SystemTime,
}

/// `weftctl certs init`: creates a CA for `trust_domain` valid for `validity` in `dir`.
///
/// Creates `dir` (mode 0700) if needed. Refuses to replace an existing [`CA_CERT_FILE`] or
/// [`CA_KEY_FILE`] unless `force`.
pub fn init(dir: &Path, trust_domain: &str, validity: Duration, force: bool) -> Result<InitReport> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    if !force {
        for path in [&cert_path, &key_path] {
            if files::exists(path) {
                return Err(CertsError::CaExists(path.clone()));
            }
        }
    }
    let ca = CertificateAuthority::generate(trust_domain, validity).map_err(|source| {
        CertsError::Certs {
            path: dir.to_owned(),
            source,
        }
    })?;
    files::create_dir(dir).map_err(|source| io_error(dir, source))?;
    write_atomically(&key_path, ca.key_pem().as_bytes(), KEY_MODE)?;
    write_atomically(&cert_path, ca.cert_pem().as_bytes(), CERT_MODE)?;
    Ok(InitReport {
        cert_path,
        key_path,
        trust_domain: ca.trust_domain().to_owned(),
        not_after: ca.not_after(),
    })
}

/// Loads the CA kept in `dir` (as written by [`init`]).
pub fn load_ca(dir: &Path) -> Result<CertificateAuthority> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    let cert_pem = read_to_string(&cert_path)?;
    let key_pem = read_to_string(&key_path)?;
    CertificateAuthority::from_pem(&cert_pem, &key_pem).map_err(|source| CertsError::Certs {
        path: dir.to_owned(),
        source,
    })
}

/// `weftctl certs issue`: issues a certificate for `namespace`/`service_account` in the trust
/// domain of the CA in `dir`, valid for `validity`, and writes `<service_account>.crt` and
/// `<service_account>.key` (mode 0600) into `dir`, replacing earlier ones.
pub fn issue(
    dir: &Path,
    namespace: &str,
    service_account: &str,
    validity: Duration,
) -> Result<IssueReport> {
    let ca = load_ca(dir)?;
    let identity =
        Identity::new(ca.trust_domain(), namespace, service_account).map_err(|source| {
            CertsError::Certs {
                path: dir.to_owned(),
                source: source.into(),
            }
        })?;
    // Identity validation guarantees the name is a plain `[a-z0-9-]` file name.
    let cert_name = format!("{service_account}.crt");
    let key_name = format!("{service_account}.key");
    if cert_name == CA_CERT_FILE || key_name == CA_KEY_FILE {
        return Err(CertsError::ReservedName(service_account.to_owned()));
    }
    let cert_path = dir.join(cert_name);
    let key_path = dir.join(key_name);
    let issued = ca
        .issue(&identity, validity)
        .map_err(|source| CertsError::Certs {
            path: dir.to_owned(),
            source,
        })?;
    write_atomically(&key_path, issued.key_pem.as_bytes(), KEY_MODE)?;
    write_atomically(&cert_path, issued.cert_pem.as_bytes(), CERT_MODE)?;
    Ok(IssueReport {
        identity,
        cert_path,
        key_path,
        not_after: issued.not_after,
    })
}

/// `weftctl certs show`: reads the first certificate of a PEM file and tells whose it is and
/// when it expires.
pub fn show(path: &Path) -> Result<CertSummary> {
    let pem = read_to_string(path)?;
    let certs_error = |source| CertsError::Certs {
        path: path.to_owned(),
        source,
    };
    let chain = parse_cert_chain_pem(&pem).map_err(certs_error)?;
    let der = &chain[0];
    let not_after = not_after_from_cert_der(der).map_err(certs_error)?;
    let subject = match identity_from_cert_der(der) {
        Ok(identity) => CertSubject::Workload(identity),
        Err(workload_err) => match trust_domain_from_ca_cert_der(der) {
            Ok(trust_domain) => CertSubject::CertificateAuthority { trust_domain },
            Err(_) => {
                return Err(CertsError::NotWeftCert {
                    path: path.to_owned(),
                    source: workload_err,
                })
            }
        },
    };
    Ok(CertSummary { subject, not_after })
}

impl fmt::Display for InitReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "trust domain: {}", self.trust_domain)?;
        writeln!(f, "certificate:  {}", self.cert_path.display())?;
        writeln!(f, "private key:  {}", self.key_path.display())?;
        write!(f, "not after:    {}", describe_expiry(self.not_after))
    }
}

impl fmt::Display for IssueReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "identity:     {}", self.identity)?;
        writeln!(f, "dns name:     {}", self.identity.dns_name())?;
        writeln!(f, "certificate:  {}", self.cert_path.display())?;
        writeln!(f, "private key:  {}", self.key_path.display())?;
        write!(f, "not after:    {}", describe_expiry(self.not_after))
    }
}

impl fmt::Display for CertSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.subject {
            CertSubject::Workload(identity) => {
                writeln!(f, "identity:     {identity}")?;
                writeln!(f, "dns name:     {}", identity.dns_name())?;
            }
            CertSubject::CertificateAuthority { trust_domain } => {
                writeln!(f, "CA for trust domain: {trust_domain}")?;
            }
        }
        write!(f, "not after:    {}", describe_expiry(self.not_after))
    }
}

/// A time as RFC 3339 in UTC, such as `2025-01-02T03:04:05Z`.
pub fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{t:?}"))
}

/// `2025-01-02T03:04:05Z (in 23h 59m)` or `... (expired 2h 3m ago)`.
fn describe_expiry(not_after: SystemTime) -> String {
    let when = rfc3339(not_after);
    match not_after.duration_since(SystemTime::now()) {
        Ok(left) => format!("{when} (in {})", human_duration(left)),
        Err(e) => format!("{when} (expired {} ago)", human_duration(e.duration())),
    }
}

fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (days, hours, minutes) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {minutes}m")
    } else {
        format!("{minutes}m {}s", secs % 60)
    }
}

fn io_error(path: &Path, source: io::Error) -> CertsError {
    CertsError::Io {
        path: path.to_owned(),
        source,
    }
}

fn read_to_string(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|source| io_error(path, source))
}

fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    weft_certs::files::write_atomically(path, contents, mode)
        .map_err(|source| io_error(path, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations() {
        assert_eq!(human_duration(Duration::from_secs(59)), "0m 59s");
        assert_eq!(human_duration(Duration::from_secs(3600 + 120)), "1h 2m");
        assert_eq!(
            human_duration(Duration::from_secs(3 * 86_400 + 7200)),
            "3d 2h"
        );
    }
}
