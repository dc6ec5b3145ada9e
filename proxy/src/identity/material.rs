//! Certificate material: loaded and validated once per config (re)load, never on the hot path.
//!
//! Pingora's rustls connector panics on a malformed key or root, so everything handed to Pingora
//! is parsed here first.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use pingora_core::listeners::tls::Acceptor;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use weft_certs::Identity;

use weft_policy::{FieldError, Protocol, TlsPaths};

/// ALPN protocol of an opaque TCP tunnel between sidecars.
pub const ALPN_TCP: &[u8] = b"weft-tcp";
/// ALPN protocol of HTTP between sidecars.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN protocol of an HTTP/1.1 upgrade (WebSocket) between sidecars: see [`crate::upgrade`].
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Everything TLS a snapshot needs, built and checked off the hot path.
pub struct TlsMaterial {
    /// This workload's identity, read from its certificate.
    pub identity: Identity,
    /// When the workload certificate became valid.
    pub not_before: SystemTime,
    /// When the workload certificate expires.
    pub not_after: SystemTime,
    /// Certificate chain, key and mesh roots of the outbound HTTP connector (see
    /// [`crate::outbound::connector`]).
    pub client: Arc<ClientIdentity>,
    /// Roots in the trust bundle.
    pub root_count: usize,
    /// Acceptor for the inbound listener: TLS 1.3 only, client certificate required.
    pub acceptor: Arc<Acceptor>,
    /// Client config for TCP tunnels: TLS 1.3, client certificate, ALPN `weft-tcp`.
    pub tcp_client: Arc<ClientConfig>,
}

/// What the outbound HTTP connector presents and trusts, as PEM: the workload certificate
/// chain, its private key and the mesh roots. Equal values make equal connectors, so a
/// snapshot rebuilt with the same files leaves the connector (and its pooled connections)
/// alone.
#[derive(PartialEq, Eq)]
pub struct ClientIdentity {
    /// Workload certificate chain, leaf first.
    pub chain_pem: String,
    /// Its private key; it stays in this process (see [`crate::outbound::connector`]).
    pub key_pem: String,
    /// Mesh roots.
    pub roots_pem: String,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("chain_pem", &self.chain_pem)
            .field("key_pem", &"<redacted>")
            .field("roots_pem", &self.roots_pem)
            .finish()
    }
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("identity", &self.identity.to_string())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn ferr(field: &str, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

fn read(path: &Path, field: &str) -> Result<Vec<u8>, FieldError> {
    std::fs::read(path).map_err(|e| ferr(field, format!("cannot read {}: {e}", path.display())))
}

fn certs(pem: &[u8], path: &Path, field: &str) -> Result<Vec<CertificateDer<'static>>, FieldError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| ferr(field, format!("{}: bad PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ferr(
            field,
            format!("{}: no certificate found", path.display()),
        ));
    }
    for c in &certs {
        x509_parser::parse_x509_certificate(c.as_ref())
            .map_err(|e| ferr(field, format!("{}: bad certificate: {e}", path.display())))?;
    }
    Ok(certs)
}

/// Load and cross-check the workload certificate, key and trust bundle.
///
/// Refuses a certificate that does not carry `expected`, has expired, or does not chain to the
/// trust bundle, so a sidecar never serves with an identity it cannot prove.
pub fn load(
    paths: &TlsPaths,
    expected: &Identity,
    inbound: Protocol,
) -> Result<TlsMaterial, FieldError> {
    let cert_pem = read(&paths.cert, "tls.cert")?;
    let bundle_pem = read(&paths.trust_bundle, "tls.trust_bundle")?;
    let key_pem = read(&paths.key, "tls.key")?;
    from_pem(paths, &cert_pem, &key_pem, &bundle_pem, expected, inbound)
}

/// Parse the mesh roots of a trust bundle (PEM, one or more certificates); `path` names it in
/// errors.
pub fn trust_bundle(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, FieldError> {
    certs(pem, path, "tls.trust_bundle")
}

/// [`load`] from PEM already in memory (`paths` name the files in errors): a renewed
/// certificate is checked this way before it replaces the files.
// Long on purpose: parse, cross-check (identity, key, chain to the roots) and build the three
// TLS configs in one place, so no config can be built from material that was not checked.
pub fn from_pem(
    paths: &TlsPaths,
    cert_pem: &[u8],
    key_pem: &[u8],
    bundle_pem: &[u8],
    expected: &Identity,
    inbound: Protocol,
) -> Result<TlsMaterial, FieldError> {
    rustls::crypto::ring::default_provider()
        .install_default()
        .ok();
    let chain = certs(cert_pem, &paths.cert, "tls.cert")?;
    let roots_der = certs(bundle_pem, &paths.trust_bundle, "tls.trust_bundle")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => ferr(
            "tls.key",
            format!("{}: no private key found", paths.key.display()),
        ),
        e => ferr("tls.key", format!("{}: bad PEM: {e}", paths.key.display())),
    })?;

    let identity = weft_certs::identity_from_cert_der(chain[0].as_ref())
        .map_err(|e| ferr("tls.cert", format!("no workload identity: {e}")))?;
    if &identity != expected {
        return Err(ferr(
            "tls.cert",
            format!("certificate is for {identity}, but service.identity is {expected}"),
        ));
    }
    let not_after = weft_certs::not_after_from_cert_der(chain[0].as_ref())
        .map_err(|e| ferr("tls.cert", e.to_string()))?;
    let not_before = weft_certs::not_before_from_cert_der(chain[0].as_ref())
        .map_err(|e| ferr("tls.cert", e.to_string()))?;
    if not_after <= SystemTime::now() {
        return Err(ferr(
            "tls.cert",
            format!(
                "certificate expired at {}",
                humantime::format_rfc3339(not_after)
            ),
        ));
    }

    let mut store = RootCertStore::empty();
    for r in &roots_der {
        store
            .add(r.clone())
            .map_err(|e| ferr("tls.trust_bundle", format!("unusable root: {e}")))?;
    }
    let store = Arc::new(store);

    let verifier = WebPkiClientVerifier::builder(store.clone())
        .build()
        .map_err(|e| ferr("tls.trust_bundle", e.to_string()))?;
    let mut server = ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| ferr("tls.key", format!("key does not fit certificate: {e}")))?;
    // Only the ALPNs of this sidecar's own protocol: a caller asking an HTTP service for a TCP
    // tunnel (which would carry its own `x-weft-caller` header to the app, past authorization)
    // or a TCP service for HTTP fails the handshake. An `http` service also takes HTTP/1.1,
    // for upgrades only (`crate::upgrade`); `h2` comes first, so rustls picks it when a
    // client offers both.
    server.alpn_protocols = match inbound {
        Protocol::Tcp => vec![ALPN_TCP.to_vec()],
        Protocol::Http => vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()],
        Protocol::Grpc => vec![ALPN_H2.to_vec()],
    };

    let mut tcp_client = ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .with_root_certificates(store)
        .with_client_auth_cert(chain.clone(), key.clone_key())
        .map_err(|e| ferr("tls.key", format!("key does not fit certificate: {e}")))?;
    tcp_client.alpn_protocols = vec![ALPN_TCP.to_vec()];

    // Re-encoded from the DER checked above, so Pingora's loader (which panics on a key or root
    // it cannot use) reads only what rustls has just accepted here.
    let client = ClientIdentity {
        chain_pem: chain
            .iter()
            .map(|c| weft_certs::cert_pem_from_der(c.as_ref()))
            .collect(),
        key_pem: weft_certs::key_pem_from_der(&key),
        roots_pem: roots_der
            .iter()
            .map(|r| weft_certs::cert_pem_from_der(r.as_ref()))
            .collect(),
    };

    Ok(TlsMaterial {
        identity,
        not_before,
        not_after,
        client: Arc::new(client),
        root_count: roots_der.len(),
        acceptor: Arc::new(Acceptor::from_server_config(Arc::new(server))),
        tcp_client: Arc::new(tcp_client),
    })
}
