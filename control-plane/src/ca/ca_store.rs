//! The mesh CA's signing root and trust bundle, kept in the control plane's state directory.
//!
//! Layout of a state directory (mode 0700 when created here):
//!
//! | file | what |
//! |---|---|
//! | [`CA_CERT_FILE`] (`ca.crt`, 0644) | the root created on first start (the same layout `weftctl certs init` writes) |
//! | [`CA_KEY_FILE`] (`ca.key`, 0600) | its private key; refused if readable by group or others |
//! | [`EXTRA_ROOTS_FILE`] (`extra_roots.pem`, optional) | more roots to trust, not to sign with: the previous root while a rotation overlaps |
//! | [`JOIN_TOKENS_FILE`](crate::ca::tokens::JOIN_TOKENS_FILE) | join tokens, hashed (see [`crate::ca::tokens`]) |
//!
//! **Rotating the root**: put the current `ca.crt` into `extra_roots.pem`, switch the signing
//! root (an operator-supplied one with [`RootSource::Files`], or move `ca.crt`/`ca.key` away so a
//! new one is created), restart; workloads renew onto the new root while certificates from the
//! old one still verify. Remove the old root from `extra_roots.pem` once every workload has
//! renewed (one certificate lifetime later).

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use weft_certs::{
    cert_pem_from_der, parse_cert_chain_pem, trust_domain_from_ca_cert_der, validate_trust_domain,
    CertificateAuthority, IdentityError,
};

pub use crate::ca::certs::{CA_CERT_FILE, CA_KEY_FILE};
use crate::files::{self, DirLock, PRIVATE_MODE, PUBLIC_MODE};

/// File of extra trusted roots (PEM, any number of `CERTIFICATE` blocks) in a state directory.
pub const EXTRA_ROOTS_FILE: &str = "extra_roots.pem";

/// Validity of a root created on first start: ten years, since nothing rotates it automatically
/// yet and an expired root stops the whole mesh.
pub const DEFAULT_ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Where the signing root comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RootSource {
    /// Created in the state directory on first start ([`CA_CERT_FILE`], [`CA_KEY_FILE`]),
    /// loaded from there on later starts.
    StateDir {
        /// Validity of a root created now.
        validity: Duration,
    },
    /// Supplied by the operator: a CA certificate and its private key (PKCS#8 `PRIVATE KEY`),
    /// both PEM. Used in place; nothing is copied into the state directory.
    Files {
        /// The CA certificate. It must be a CA (basicConstraints `cA`); if it carries a
        /// `spiffe://` URI SAN it must name the configured trust domain.
        cert: PathBuf,
        /// Its private key.
        key: PathBuf,
    },
}

impl Default for RootSource {
    fn default() -> Self {
        Self::StateDir {
            validity: DEFAULT_ROOT_VALIDITY,
        }
    }
}

/// Options of [`CaStore::open`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaStoreOptions {
    /// Where the signing root comes from.
    pub root: RootSource,
    /// PEM files of more roots to trust, besides [`EXTRA_ROOTS_FILE`] in the state directory.
    /// Each must exist and hold at least one CA certificate.
    pub extra_roots: Vec<PathBuf>,
    /// How long an identity may be renewed by certificate alone after the credential that
    /// proved it was last checked ([`DEFAULT_MAX_IDENTITY_AGE`] when `None`); then the workload
    /// must attest again with a live credential.
    pub max_identity_age: Option<Duration>,
}

/// Longest an identity lives through renewals by certificate alone unless configured
/// otherwise: a stolen key stops renewing within this, even if nobody denies it.
pub const DEFAULT_MAX_IDENTITY_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

/// How [`CaStore::open`] obtained the signing root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootOrigin {
    /// Created now, in the state directory (first start).
    Created,
    /// Loaded from the state directory.
    Loaded,
    /// Loaded from operator-supplied files.
    Supplied,
}

/// Why a [`CaStore`] could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaStoreError {
    /// The configured trust domain is not valid.
    #[error(transparent)]
    TrustDomain(#[from] IdentityError),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A root certificate names another trust domain than the configured one.
    #[error(
        "{path} is a CA for trust domain {found:?} but trust domain {configured:?} is configured"
    )]
    TrustDomainMismatch {
        /// The certificate file.
        path: PathBuf,
        /// The trust domain the certificate names.
        found: String,
        /// The configured trust domain.
        configured: String,
    },
    /// Only one of the root's certificate and key is in the state directory.
    #[error(
        "{present} exists but {missing} does not: restore it, or remove {present} to create a new root"
    )]
    Incomplete {
        /// The file that exists.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
    /// The state directory's root key is readable or writable by group or others.
    #[error("{path} has mode {mode:o}, open to group or others: it must be 600 (chmod 600 it)")]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The signing root (certificate or key) is not usable.
    #[error("signing root {cert} / {key}: {source}")]
    InvalidRoot {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why it is not usable.
        #[source]
        source: weft_certs::Error,
    },
    /// The signing root has expired.
    #[error("signing root {path} expired at {}", crate::ca::certs::rfc3339(*.not_after))]
    RootExpired {
        /// The certificate file.
        path: PathBuf,
        /// Its `notAfter`.
        not_after: SystemTime,
    },
    /// A file of extra roots holds something other than CA certificates.
    #[error("extra roots {path}: {source}")]
    InvalidExtraRoot {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: weft_certs::Error,
    },
    /// Creating the root failed.
    #[error("cannot create the signing root: {0}")]
    Generate(#[source] weft_certs::Error),
}

/// The mesh CA: the active signing root plus the trust bundle workloads verify peers with.
///
/// Immutable once open; share it (`Arc<CaStore>`) between the issuer and whatever serves the
/// trust bundle. A rotation is a new `CaStore` (reopen the state directory).
pub struct CaStore {
    ca: CertificateAuthority,
    state_dir: PathBuf,
    cert_path: PathBuf,
    origin: RootOrigin,
    bundle_der: Vec<CertificateDer<'static>>,
    bundle_pem: String,
    max_identity_age: Duration,
}

impl fmt::Debug for CaStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaStore")
            .field("ca", &self.ca)
            .field("state_dir", &self.state_dir)
            .field("cert_path", &self.cert_path)
            .field("origin", &self.origin)
            .field("trust_bundle_roots", &self.bundle_der.len())
            .finish()
    }
}

impl CaStore {
    /// Opens the CA kept in `state_dir` for `trust_domain`.
    ///
    /// Creates `state_dir` (mode 0700) if missing. With [`RootSource::StateDir`] on first start
    /// (neither `ca.crt` nor `ca.key` there) it creates a root and writes `ca.key` (created with
    /// mode 0600) and `ca.crt` (0644); later it loads them, refusing a key open to group or
    /// others and a root for another trust domain (naming both). With [`RootSource::Files`] it
    /// loads and validates the operator's root (a CA whose key matches). An expired root is
    /// refused. Then it builds the trust bundle: the signing root first, then the roots of
    /// [`EXTRA_ROOTS_FILE`] (if present) and of `options.extra_roots`, without duplicates.
    ///
    /// The state directory is locked while this runs, so two control planes starting at once
    /// on one directory cannot create two different roots.
    pub fn open(
        state_dir: &Path,
        trust_domain: &str,
        options: CaStoreOptions,
    ) -> Result<Self, CaStoreError> {
        validate_trust_domain(trust_domain)?;
        files::create_dir(state_dir).map_err(|e| io_error(state_dir, e))?;
        let _lock = DirLock::acquire(state_dir).map_err(|e| io_error(state_dir, e))?;

        let (ca, cert_path, origin) = match &options.root {
            RootSource::StateDir { validity } => {
                open_state_dir_root(state_dir, trust_domain, *validity)?
            }
            RootSource::Files { cert, key } => {
                let cert_pem = read(cert)?;
                let key_pem = read(key)?;
                let ca = CertificateAuthority::from_pem_for_trust_domain(
                    &cert_pem,
                    &key_pem,
                    trust_domain,
                )
                .map_err(|source| match source {
                    weft_certs::Error::CaTrustDomainMismatch { cert: found, .. } => {
                        CaStoreError::TrustDomainMismatch {
                            path: cert.clone(),
                            found,
                            configured: trust_domain.to_owned(),
                        }
                    }
                    source => CaStoreError::InvalidRoot {
                        cert: cert.clone(),
                        key: key.clone(),
                        source,
                    },
                })?;
                (ca, cert.clone(), RootOrigin::Supplied)
            }
        };
        if ca.not_after() <= SystemTime::now() {
            return Err(CaStoreError::RootExpired {
                path: cert_path,
                not_after: ca.not_after(),
            });
        }

        let mut bundle_der = vec![ca.cert_der().clone()];
        let mut extra_files = Vec::with_capacity(options.extra_roots.len() + 1);
        let in_state_dir = state_dir.join(EXTRA_ROOTS_FILE);
        if files::exists(&in_state_dir) {
            extra_files.push(in_state_dir);
        }
        extra_files.extend(options.extra_roots.iter().cloned());
        for path in &extra_files {
            for der in read_extra_roots(path, trust_domain)? {
                if !bundle_der.contains(&der) {
                    bundle_der.push(der);
                }
            }
        }
        let bundle_pem = bundle_der
            .iter()
            .map(|der| cert_pem_from_der(der))
            .collect();

        Ok(Self {
            ca,
            state_dir: state_dir.to_owned(),
            cert_path,
            origin,
            bundle_der,
            bundle_pem,
            max_identity_age: options.max_identity_age.unwrap_or(DEFAULT_MAX_IDENTITY_AGE),
        })
    }

    /// How long renewals by certificate alone may carry an identity past its last attestation
    /// ([`CaStoreOptions::max_identity_age`]).
    pub fn max_identity_age(&self) -> Duration {
        self.max_identity_age
    }

    /// The signing CA.
    pub fn ca(&self) -> &CertificateAuthority {
        &self.ca
    }

    /// The trust domain the CA signs for.
    pub fn trust_domain(&self) -> &str {
        self.ca.trust_domain()
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The signing root's certificate file.
    pub fn root_cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// How the signing root was obtained.
    pub fn root_origin(&self) -> RootOrigin {
        self.origin
    }

    /// Every trusted root, PEM: the signing root first, then the extra roots.
    pub fn trust_bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    /// Every trusted root, DER, in the order of [`trust_bundle_pem`](Self::trust_bundle_pem).
    pub fn trust_bundle_der(&self) -> &[CertificateDer<'static>] {
        &self.bundle_der
    }
}

/// Creates or loads the root kept in the state directory.
fn open_state_dir_root(
    state_dir: &Path,
    trust_domain: &str,
    validity: Duration,
) -> Result<(CertificateAuthority, PathBuf, RootOrigin), CaStoreError> {
    let cert_path = state_dir.join(CA_CERT_FILE);
    let key_path = state_dir.join(CA_KEY_FILE);
    match (files::exists(&cert_path), files::exists(&key_path)) {
        (false, false) => {
            let ca = CertificateAuthority::generate(trust_domain, validity)
                .map_err(CaStoreError::Generate)?;
            // Key first: a crash in between leaves a key without a certificate, which the next
            // start reports ([`CaStoreError::Incomplete`]) instead of silently replacing.
            weft_certs::files::write_atomically(&key_path, ca.key_pem().as_bytes(), PRIVATE_MODE)
                .map_err(|e| io_error(&key_path, e))?;
            weft_certs::files::write_atomically(&cert_path, ca.cert_pem().as_bytes(), PUBLIC_MODE)
                .map_err(|e| io_error(&cert_path, e))?;
            Ok((ca, cert_path, RootOrigin::Created))
        }
        (true, true) => {
            let mode = fs::metadata(&key_path)
                .map_err(|e| io_error(&key_path, e))?
                .permissions()
                .mode()
                & 0o777;
            if mode & 0o077 != 0 {
                return Err(CaStoreError::KeyPermissions {
                    path: key_path,
                    mode,
                });
            }
            let cert_pem = read(&cert_path)?;
            let key_pem = read(&key_path)?;
            let ca = CertificateAuthority::from_pem(&cert_pem, &key_pem).map_err(|source| {
                CaStoreError::InvalidRoot {
                    cert: cert_path.clone(),
                    key: key_path.clone(),
                    source,
                }
            })?;
            if ca.trust_domain() != trust_domain {
                return Err(CaStoreError::TrustDomainMismatch {
                    path: cert_path,
                    found: ca.trust_domain().to_owned(),
                    configured: trust_domain.to_owned(),
                });
            }
            Ok((ca, cert_path, RootOrigin::Loaded))
        }
        (true, false) => Err(CaStoreError::Incomplete {
            present: cert_path,
            missing: key_path,
        }),
        (false, true) => Err(CaStoreError::Incomplete {
            present: key_path,
            missing: cert_path,
        }),
    }
}

/// Reads a file of extra roots: CA certificates, for `trust_domain` if they name one.
fn read_extra_roots(
    path: &Path,
    trust_domain: &str,
) -> Result<Vec<CertificateDer<'static>>, CaStoreError> {
    let pem = read(path)?;
    let invalid = |source| CaStoreError::InvalidExtraRoot {
        path: path.to_owned(),
        source,
    };
    let roots = parse_cert_chain_pem(&pem).map_err(invalid)?;
    for der in &roots {
        match trust_domain_from_ca_cert_der(der) {
            Ok(found) if found == trust_domain => {}
            Ok(found) => {
                return Err(CaStoreError::TrustDomainMismatch {
                    path: path.to_owned(),
                    found,
                    configured: trust_domain.to_owned(),
                })
            }
            // A CA that names no trust domain (another PKI's root) is fine.
            Err(weft_certs::Error::NoSpiffeId) => {}
            Err(source) => return Err(invalid(source)),
        }
    }
    Ok(roots)
}

fn read(path: &Path) -> Result<String, CaStoreError> {
    fs::read_to_string(path).map_err(|e| io_error(path, e))
}

fn io_error(path: &Path, source: io::Error) -> CaStoreError {
    CaStoreError::Io {
        path: path.to_owned(),
        source,
    }
}
