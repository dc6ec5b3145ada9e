//! Edge TLS: server certificates chosen by SNI (exact names, then one-label wildcards, then
//! the default certificate if one is marked; else the handshake fails with an
//! `unrecognized_name` alert), TLS 1.2 and 1.3 or 1.3 only with rustls' default (safe)
//! cipher suites, ALPN `h2` and `http/1.1`, and certificates reloaded when their files change:
//! the gateway's reloader ([`crate::gateway::reload`]) polls the files' modification time and
//! size every `reload_interval` and calls [`EdgeTls::reload`]; a changed set that does not
//! load keeps the certificates in force and logs why.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora_core::listeners::tls::Acceptor;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use weft_policy::gateway::{EdgeCert, Gateway, HostPattern, TlsVersion};

use crate::gateway::metrics::GatewayMetrics;
use crate::store::{file_stamps, Stamps};

/// Why the certificates could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum EdgeTlsError {
    /// A file could not be read.
    #[error("{}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file held no usable PEM.
    #[error("{}: {why}", .path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// rustls refused the settings.
    #[error("TLS settings: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The certificates in force, by name.
#[derive(Debug, Default)]
pub struct CertTable {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By suffix with its dot (`.example.test`).
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl CertTable {
    /// Load every certificate of `certs`; the first error fails the whole table.
    pub fn load(certs: &[EdgeCert], provider: &CryptoProvider) -> Result<Self, EdgeTlsError> {
        let mut t = CertTable::default();
        for c in certs {
            let key = Arc::new(certified_key(&c.cert, &c.key, provider)?);
            for h in &c.hosts {
                match h {
                    HostPattern::Exact(n) => t.exact.insert(n.clone(), key.clone()),
                    HostPattern::Wildcard(s) => t.wildcard.insert(s.clone(), key.clone()),
                };
            }
            if c.default {
                t.default = Some(key);
            }
        }
        Ok(t)
    }

    /// The certificate for SNI `name` (any case), else the default.
    pub fn lookup(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let found = name.and_then(|n| {
            let n = n.trim_end_matches('.').to_ascii_lowercase();
            self.exact.get(&n).cloned().or_else(|| {
                let (_, parent) = n.split_once('.')?;
                self.wildcard.get(&format!(".{parent}")).cloned()
            })
        });
        found.or_else(|| self.default.clone())
    }
}

fn certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, EdgeTlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| EdgeTlsError::Read {
            path: p.to_owned(),
            source,
        })
    };
    let pem = |p: &Path, why: String| EdgeTlsError::Pem {
        path: p.to_owned(),
        why,
    };
    let chain = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(cert, format!("bad PEM certificate: {e}")))?;
    if chain.is_empty() {
        return Err(pem(cert, "no certificate in the file".to_owned()));
    }
    let der = PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|e| pem(key, format!("bad PEM private key: {e}")))?;
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| pem(key, format!("unusable private key: {e}")))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| {
        pem(
            key,
            format!("the key does not match {}: {e}", cert.display()),
        )
    })?;
    Ok(ck)
}

/// The SNI resolver rustls asks on every handshake; its table is swapped on reload.
#[derive(Debug)]
pub struct SniResolver {
    /// The certificates in force.
    pub table: ArcSwap<CertTable>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.table.load().lookup(hello.server_name())
    }
}

/// The edge TLS acceptor and the resolver behind it.
pub struct EdgeTls {
    /// Pingora's acceptor over the rustls config.
    pub acceptor: Arc<Acceptor>,
    /// The certificates, for the reloader.
    pub resolver: Arc<SniResolver>,
    /// The certificate files' stamps when they were last loaded (or tried: a bad file is
    /// reported once, not at every poll, and its next change is tried again).
    pub seen: ArcSwap<Stamps>,
}

/// Build the acceptor for `gw`, loading its certificates now (an error stops the start).
pub fn build(gw: &Gateway) -> Result<EdgeTls, EdgeTlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Stamped before reading: a file replaced meanwhile is read again at the next poll.
    let seen = ArcSwap::from_pointee(stamps(&gw.certificates));
    let table = CertTable::load(&gw.certificates, &provider)?;
    let resolver = Arc::new(SniResolver {
        table: ArcSwap::from_pointee(table),
    });
    let versions: &[&rustls::SupportedProtocolVersion] = match gw.min_tls {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(EdgeTls {
        acceptor: Arc::new(Acceptor::from_server_config(Arc::new(config))),
        resolver,
        seen,
    })
}

/// The stamps of every certificate and key file of `certs`.
pub fn stamps(certs: &[EdgeCert]) -> Stamps {
    let paths: Vec<&Path> = certs
        .iter()
        .flat_map(|c| [c.cert.as_path(), c.key.as_path()])
        .collect();
    file_stamps(&paths)
}

impl EdgeTls {
    /// Load `certs` again and, if they load, put them in force for new handshakes; else keep
    /// the ones in force and say why (the gateway's reloader calls this when a file changed).
    /// `now` are the files' stamps taken before reading them.
    pub fn reload(&self, certs: &[EdgeCert], now: Stamps, metrics: &GatewayMetrics) {
        self.seen.store(Arc::new(now));
        let provider = rustls::crypto::ring::default_provider();
        match CertTable::load(certs, &provider) {
            Ok(t) => {
                self.resolver.table.store(Arc::new(t));
                metrics.reloads.with_label_values(&["ok"]).inc();
                log::info!("gateway certificates reloaded: new handshakes use them");
            }
            Err(e) => {
                metrics.reloads.with_label_values(&["error"]).inc();
                log::warn!("gateway certificates not reloaded, the ones in force stay: {e}");
            }
        }
    }
}
