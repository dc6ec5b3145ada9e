//! The injection webhook: a mutating admission webhook (HTTPS, `POST /inject`, AdmissionReview
//! `admission.k8s.io/v1` in and out) that runs [`super::inject_object`] on the Pod of each
//! review and answers with the difference as an RFC 6902 JSON patch. The same mutation as
//! `weftctl inject`, so a pod is injected the same way whichever path it takes.
//!
//! - Opted out, already injected (with this version) or any object the mutation leaves alone:
//!   `allowed: true` without a patch.
//! - A bad `weft.dev/*` annotation or a pod that cannot be meshed (host network): `allowed:
//!   false` with the reason in `status.message`, which `kubectl` shows to whoever created the
//!   pod.
//! - A malformed review: `allowed: false` with the reason when it has a `request.uid` to answer,
//!   else HTTP 400 with the reason; a body over [`MAX_REVIEW_BYTES`] gets 413. Never a panic.
//!
//! The serving certificate and key are read from files and read again when either file
//! changes (cert-manager or the installer rotate the Secret; the kubelet updates the mounted
//! files), checked at most every [`CERT_RECHECK`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, StatusCode};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::{inject_object, Settings};

/// Largest AdmissionReview accepted (the API server's own limit on objects is far above any
/// sane Pod; 1 MiB bounds what one request can make us allocate).
pub const MAX_REVIEW_BYTES: usize = 1024 * 1024;
/// Longest a client may take to send its request headers, and then its body.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the certificate files are checked for changes (at a handshake).
pub const CERT_RECHECK: Duration = Duration::from_secs(10);
/// The path reviews are posted to.
pub const PATH: &str = "/inject";

/// Why the webhook cannot start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The certificate or key file is unreadable or unusable.
    #[error("webhook certificate: {0}")]
    Cert(String),
    /// The listen address cannot be bound.
    #[error("webhook: binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The injection settings are wrong.
    #[error("webhook: {0}")]
    Settings(#[from] super::InjectError),
}

/// How to run the webhook.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Address to listen on (HTTPS).
    pub listen: SocketAddr,
    /// Serving certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// What to inject.
    pub settings: Settings,
}

/// A running webhook; dropping it stops accepting connections.
#[derive(Debug)]
pub struct Webhook {
    /// The address actually bound.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Load the certificate, bind and serve on the current Tokio runtime, within
/// [`default_limits`].
pub async fn start(config: WebhookConfig) -> Result<Webhook, WebhookError> {
    start_with_limits(config, default_limits()).await
}

/// [`start`] within `limits`.
pub async fn start_with_limits(
    config: WebhookConfig,
    limits: crate::net::Limits,
) -> Result<Webhook, WebhookError> {
    config.settings.validate()?;
    rustls::crypto::ring::default_provider()
        .install_default()
        .ok();
    let resolver = Arc::new(FileCert::load(&config.cert, &config.key)?);
    let mut tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| WebhookError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| WebhookError::Bind {
        addr: config.listen,
        source,
    })?;
    let settings = Arc::new(config.settings);
    log::info!("injection webhook on https://{addr}{PATH}");
    let task = tokio::spawn(accept_loop(listener, acceptor, settings, limits));
    Ok(Webhook { addr, task })
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    settings: Arc<Settings>,
    limits: crate::net::Limits,
) {
    crate::net::serve_http1(listener, Some(acceptor), limits, "webhook", move |req| {
        let settings = settings.clone();
        async move { handle(&settings, req).await }
    })
    .await;
}

/// The webhook's bounds: the API server's calls (one per pod created) at once, and the
/// handshake and headers within [`READ_TIMEOUT`].
pub fn default_limits() -> crate::net::Limits {
    crate::net::Limits {
        max_connections: 256,
        handshake_timeout: READ_TIMEOUT,
        header_read_timeout: READ_TIMEOUT,
        idle_timeout: Duration::from_secs(90),
    }
}

type Response = hyper::Response<Full<Bytes>>;

fn respond(status: StatusCode, body: &Value) -> Response {
    let mut r = hyper::Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn plain_error(status: StatusCode, message: &str) -> Response {
    respond(status, &json!({ "error": message }))
}

async fn handle(settings: &Settings, req: hyper::Request<hyper::body::Incoming>) -> Response {
    if req.uri().path() != PATH {
        return plain_error(StatusCode::NOT_FOUND, "not found; reviews go to /inject");
    }
    if req.method() != Method::POST {
        return plain_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "POST an AdmissionReview to /inject",
        );
    }
    let too_big = || {
        plain_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the AdmissionReview is larger than {MAX_REVIEW_BYTES} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_REVIEW_BYTES as u64) {
        return too_big();
    }
    let body = Limited::new(req.into_body(), MAX_REVIEW_BYTES);
    let bytes = match tokio::time::timeout(READ_TIMEOUT, body.collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_big(),
        Ok(Err(e)) => {
            return plain_error(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the body: {e}"),
            )
        }
        Err(_) => {
            return plain_error(
                StatusCode::REQUEST_TIMEOUT,
                "the body did not arrive in time",
            )
        }
    };
    let (status, body) = review(&bytes, settings);
    respond(status, &body)
}

/// Answer one AdmissionReview body: the HTTP status and the JSON to send back (an
/// AdmissionReview response, or `{"error": ...}` with 400 when there is no uid to answer).
pub fn review(body: &[u8], settings: &Settings) -> (StatusCode, Value) {
    let bad = |message: String| {
        (
            StatusCode::BAD_REQUEST,
            json!({ "error": format!("not an AdmissionReview: {message}") }),
        )
    };
    let review: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return bad(format!("the body is not JSON: {e}")),
    };
    if !review.is_object() {
        return bad("the body is not a JSON object".into());
    }
    let Some(request) = review.get("request").filter(|r| r.is_object()) else {
        return bad("no request".into());
    };
    let Some(uid) = request
        .get("uid")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
    else {
        return bad("request.uid is missing".into());
    };
    let deny = |message: String| (StatusCode::OK, denial(uid, &message));
    let api_version = review.get("apiVersion").and_then(Value::as_str);
    let kind = review.get("kind").and_then(Value::as_str);
    if api_version != Some("admission.k8s.io/v1") || kind != Some("AdmissionReview") {
        return deny(format!(
            "want apiVersion admission.k8s.io/v1 and kind AdmissionReview, got {} {}",
            api_version.unwrap_or("(none)"),
            kind.unwrap_or("(none)")
        ));
    }
    // Only creation is injected: most of a Pod's spec cannot change afterwards.
    if let Some(op) = request.get("operation").and_then(Value::as_str) {
        if op != "CREATE" {
            return (StatusCode::OK, allowed(uid, None));
        }
    }
    let Some(object) = request.get("object").filter(|o| o.is_object()) else {
        return deny("request.object is missing or not an object".into());
    };
    let mut object = object.clone();
    // A pod created by a controller has no namespace in its body yet; the review names it,
    // and messages read better with it.
    if let (Some(ns), Some(meta)) = (
        request.get("namespace").and_then(Value::as_str),
        object.get_mut("metadata").and_then(Value::as_object_mut),
    ) {
        meta.entry("namespace")
            .or_insert_with(|| Value::String(ns.to_owned()));
    }
    let injected = match inject_object(&object, settings) {
        Ok(v) => v,
        Err(e) => return deny(format!("weft sidecar injection: {e}")),
    };
    let patch = json_patch::diff(&object, &injected);
    if patch.0.is_empty() {
        return (StatusCode::OK, allowed(uid, None));
    }
    match serde_json::to_vec(&patch) {
        Ok(p) => (StatusCode::OK, allowed(uid, Some(&p))),
        Err(e) => deny(format!("cannot encode the patch: {e}")),
    }
}

fn allowed(uid: &str, patch: Option<&[u8]>) -> Value {
    let mut response = json!({ "uid": uid, "allowed": true });
    if let (Some(p), Some(r)) = (patch, response.as_object_mut()) {
        r.insert("patchType".into(), json!("JSONPatch"));
        r.insert(
            "patch".into(),
            json!(base64::engine::general_purpose::STANDARD.encode(p)),
        );
    }
    envelope(response)
}

fn denial(uid: &str, message: &str) -> Value {
    envelope(json!({
        "uid": uid,
        "allowed": false,
        "status": {"status": "Failure", "code": 400, "reason": "BadRequest", "message": message},
    }))
}

fn envelope(response: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    })
}

/// The serving certificate from two files, read again when either changes.
#[derive(Debug)]
struct FileCert {
    cert: PathBuf,
    key: PathBuf,
    /// How often the files are looked at ([`CERT_RECHECK`]).
    recheck: Duration,
    state: Mutex<CertState>,
}

#[derive(Debug)]
struct CertState {
    current: Arc<CertifiedKey>,
    stamp: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl FileCert {
    fn load(cert: &Path, key: &Path) -> Result<Self, WebhookError> {
        let stamp = (mtime(cert), mtime(key));
        let current = Arc::new(read_cert(cert, key)?);
        Ok(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            recheck: CERT_RECHECK,
            state: Mutex::new(CertState {
                current,
                stamp,
                checked: Instant::now(),
            }),
        })
    }
}

fn read_cert(cert: &Path, key: &Path) -> Result<CertifiedKey, WebhookError> {
    let err = |p: &Path, e: String| WebhookError::Cert(format!("{}: {e}", p.display()));
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| err(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(err(cert, "no certificate in the file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| err(key, e.to_string()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| err(key, e.to_string()))?;
    let certified = CertifiedKey::new(chain, signer);
    certified
        .keys_match()
        .map_err(|e| err(key, format!("does not match the certificate: {e}")))?;
    Ok(certified)
}

impl FileCert {
    /// The certificate to serve, read again first if the files changed since the last look
    /// (at most every `recheck`).
    fn current(&self) -> Arc<CertifiedKey> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.checked.elapsed() >= self.recheck {
            st.checked = Instant::now();
            let stamp = (mtime(&self.cert), mtime(&self.key));
            if stamp != st.stamp {
                // A half-written pair fails to load: keep the current one and look again at
                // the next check.
                match read_cert(&self.cert, &self.key) {
                    Ok(c) => {
                        st.current = Arc::new(c);
                        st.stamp = stamp;
                        log::info!("webhook certificate reloaded");
                    }
                    Err(e) => log::warn!("webhook certificate not reloaded: {e}"),
                }
            }
        }
        st.current.clone()
    }
}

impl rustls::server::ResolvesServerCert for FileCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "p", "labels": {"app": "orders"}},
               "spec": {"containers": [{"name": "app", "image": "orders:1"}]}})
    }

    fn write_self_signed(cert: &Path, key: &Path) -> Vec<u8> {
        let k = rcgen::KeyPair::generate().expect("key");
        let c = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .self_signed(&k)
            .expect("cert");
        std::fs::write(cert, c.pem()).expect("write");
        std::fs::write(key, k.serialize_pem()).expect("write");
        c.der().to_vec()
    }

    #[test]
    fn changed_certificate_files_are_read_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let first = write_self_signed(&cert, &key);
        let mut fc = FileCert::load(&cert, &key).expect("load");
        fc.recheck = Duration::ZERO;
        assert_eq!(fc.current().cert[0].as_ref(), first.as_slice());
        // A half-written pair (the key is not the certificate's) keeps the one in force.
        let other_key = dir.path().join("other.key");
        write_self_signed(&dir.path().join("other.crt"), &other_key);
        std::fs::copy(&other_key, &key).expect("copy");
        bump_mtime(&key);
        assert_eq!(fc.current().cert[0].as_ref(), first.as_slice());
        // The whole new pair is taken.
        let second = write_self_signed(&cert, &key);
        bump_mtime(&cert);
        assert_eq!(fc.current().cert[0].as_ref(), second.as_slice());
        // Unusable files at start are an error naming the file.
        let err = FileCert::load(&dir.path().join("missing.crt"), &key).expect_err("missing");
        assert!(err.to_string().contains("missing.crt"), "{err}");
    }

    /// File times may be coarse: move the modification time on explicitly, further each call.
    fn bump_mtime(p: &Path) {
        static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let f = std::fs::File::options().append(true).open(p).expect("open");
        f.set_modified(SystemTime::now() + Duration::from_secs(10 * n))
            .expect("set mtime");
    }

    #[test]
    fn not_json_is_400() {
        let (s, b) = review(b"{nope", &Settings::default());
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(
            b["error"].as_str().unwrap_or("").contains("not JSON"),
            "{b}"
        );
    }

    #[test]
    fn wrong_version_is_denied_with_uid() {
        let body = json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview",
                          "request": {"uid": "u1", "object": pod()}});
        let (s, b) = review(body.to_string().as_bytes(), &Settings::default());
        assert_eq!(s, StatusCode::OK);
        assert_eq!(b["response"]["uid"], "u1");
        assert_eq!(b["response"]["allowed"], false);
        assert!(b["response"]["status"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("admission.k8s.io/v1"));
    }

    #[test]
    fn opted_out_has_no_patch() {
        let mut p = pod();
        p["metadata"]["annotations"] = json!({"weft.dev/inject": "false"});
        let body = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                          "request": {"uid": "u2", "operation": "CREATE", "object": p}});
        let (_, b) = review(body.to_string().as_bytes(), &Settings::default());
        assert_eq!(b["response"]["allowed"], true);
        assert!(b["response"].get("patch").is_none());
    }
}
