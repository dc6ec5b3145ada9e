//! Reading a JWKS: from a file, or with one HTTPS GET (rustls, HTTP/1.1), both capped in size
//! ([`MAX_JWKS_BYTES`]) and the GET in time ([`FETCH_TIMEOUT`], connect to last byte), so a
//! slow or huge JWKS server cannot hold a request or the gateway's memory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::AsyncReadExt;
use tokio_rustls::TlsConnector;
use weft_policy::gateway_auth::JwksSource;

use super::jwks::Fetch;

/// The largest JWKS document read.
pub const MAX_JWKS_BYTES: usize = 64 * 1024;
/// The time one HTTPS fetch may take, connect to last byte.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// A JWKS file, read whole on each fetch.
pub struct FileFetch(pub PathBuf);

#[async_trait]
impl Fetch for FileFetch {
    async fn fetch(&self) -> Result<Vec<u8>, String> {
        let file = tokio::fs::File::open(&self.0)
            .await
            .map_err(|e| format!("{}: {e}", self.0.display()))?;
        let mut bytes = Vec::new();
        file.take(MAX_JWKS_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| format!("{}: {e}", self.0.display()))?;
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(format!(
                "{}: larger than {MAX_JWKS_BYTES} bytes",
                self.0.display()
            ));
        }
        Ok(bytes)
    }
}

/// An HTTPS JWKS URL.
pub struct HttpsFetch {
    url: http::Uri,
    host: String,
    port: u16,
    tls: TlsConnector,
}

impl HttpsFetch {
    /// A fetcher for `url` trusting the PEM roots in `ca` (none: the system's roots).
    pub fn new(url: http::Uri, ca: Option<&std::path::Path>) -> Result<Self, String> {
        let host = url.host().ok_or("the URL has no host")?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url.port_u16().unwrap_or(443);
        let roots = roots(ca)?;
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
        Ok(Self {
            url,
            host,
            port,
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    async fn get(&self) -> Result<Vec<u8>, String> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::try_from(self.host.clone()).map_err(|e| e.to_string())?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let driver = tokio::spawn(conn);
        let path = self.url.path_and_query().map_or("/", |p| p.as_str());
        let authority = self.url.authority().map_or("", |a| a.as_str());
        let req = http::Request::get(path)
            .header(http::header::HOST, authority)
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let result = if resp.status() != http::StatusCode::OK {
            Err(format!("status {}", resp.status()))
        } else {
            Limited::new(resp.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map(|b| b.to_bytes().to_vec())
                .map_err(|e| format!("body: {e}"))
        };
        driver.abort();
        result
    }
}

#[async_trait]
impl Fetch for HttpsFetch {
    async fn fetch(&self) -> Result<Vec<u8>, String> {
        tokio::time::timeout(FETCH_TIMEOUT, self.get())
            .await
            .map_err(|_| format!("{}: no answer within {FETCH_TIMEOUT:?}", self.url))?
            .map_err(|e| format!("{}: {e}", self.url))
    }
}

fn roots(ca: Option<&std::path::Path>) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match ca {
        Some(path) => {
            let pem =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let certs = weft_certs::parse_cert_chain_pem(&pem)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            for c in certs {
                store
                    .add(c)
                    .map_err(|e| format!("{}: unusable root: {e}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
        }
    }
    if store.is_empty() {
        return Err("no trusted roots for the JWKS URL".into());
    }
    Ok(store)
}

/// The fetcher for a provider's key source.
pub fn fetcher(source: &JwksSource) -> Result<Box<dyn Fetch>, String> {
    Ok(match source {
        JwksSource::File(path) => Box::new(FileFetch(path.clone())),
        JwksSource::Url { url, ca } => Box::new(HttpsFetch::new(url.clone(), ca.as_deref())?),
    })
}
