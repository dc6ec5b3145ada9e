//! A stand-in Kubernetes API server for tests: HTTPS with its own CA (clients trust it through a
//! kubeconfig, [`kubeconfig`]), bearer-token authentication ([`TOKEN`], or a service account
//! token it minted for the API server's audience), and the API conventions Weft's pieces rely
//! on, for every registered kind ([`kinds::defaults`], or [`ApiServer::start_with`]):
//!
//! - paths: `/api/v1/{plural}`, `/api/v1/namespaces/{ns}/{plural}[/{name}[/status]]`, and the
//!   same under `/apis/{group}/{version}`; cluster-scoped kinds (Namespaces) without the
//!   namespace part;
//! - GET, LIST (`labelSelector` and `fieldSelector`: equality, inequality, existence), WATCH
//!   (newline-delimited events from `resourceVersion`, or the current objects as `ADDED`
//!   without one; a `BOOKMARK`; `ERROR 410 Gone` once the version is compacted away, see
//!   [`ApiServer::expire`]; `timeoutSeconds`; a watcher that falls [`store::WATCH_BUFFER`]
//!   events behind is closed), POST (create; `409 AlreadyExists`; `generateName`), PUT (update;
//!   `409 Conflict` when `metadata.resourceVersion` is not the stored one), PATCH (merge patch,
//!   on the object or its `/status`), DELETE (Pods bound to a node are first marked with
//!   `deletionTimestamp`, and go with `gracePeriodSeconds=0`, as a kubelet finishes them);
//! - server-set fields: `uid`, `creationTimestamp`, `resourceVersion` (one counter for all),
//!   `generation` of custom resources (moves with `spec`); a status subresource (Pods, the Weft
//!   CRDs) keeps writes to the object from changing `status` and writes to `/status` from
//!   changing anything else;
//! - TokenRequest (`POST .../serviceaccounts/{name}/token`, as a kubelet mints projected
//!   tokens, [`ApiServer::mint_token`] from Rust) and TokenReview (`POST
//!   /apis/authentication.k8s.io/v1/tokenreviews`): see [`auth`].
//!
//! Request bodies are capped ([`http::MAX_BODY`]), the event history too
//! ([`store::MAX_EVENTS`], older versions are compacted). Not modelled: RBAC (every
//! authenticated caller may do everything), admission, namespace existence for namespaced
//! objects, cascading deletion, server-side apply, JSON patch, protobuf, pagination (a `limit`
//! is ignored: lists are whole).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

pub mod auth;
pub mod http;
pub mod kinds;
mod select;
pub mod store;
mod tls;

pub use auth::API_AUDIENCE;
pub use kinds::KindSpec;
use store::{Part, State};

/// The bearer token of the stand-in's administrator (what [`kubeconfig`] writes).
pub const TOKEN: &str = "standin-token";

/// An error as the API server answers it: a `Status` object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub code: StatusCode,
    /// The `reason`, such as `NotFound` or `Conflict`.
    pub reason: &'static str,
    /// The message.
    pub message: String,
}

impl ApiError {
    pub(crate) fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
        }
    }

    pub(crate) fn not_found(message: String) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFound", message)
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", message)
    }

    pub(crate) fn conflict(reason: &'static str, message: String) -> Self {
        Self::new(StatusCode::CONFLICT, reason, message)
    }

    /// The `Status` object.
    pub fn status(&self) -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": self.message, "reason": self.reason, "code": self.code.as_u16()})
    }

    pub(crate) fn response(&self) -> hyper::Response<http::Body> {
        http::reply(self.code, &self.status())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.code.as_u16(),
            self.reason,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

/// A running stand-in; it stops serving when dropped.
pub struct ApiServer {
    state: Arc<Mutex<State>>,
    /// Where it listens (127.0.0.1, a port the OS chose).
    pub addr: SocketAddr,
    /// Its CA certificate, PEM: what clients trust.
    pub ca_pem: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ApiServer {
    /// Starts serving the [default kinds](kinds::defaults) on the current Tokio runtime, with
    /// `objects` stored as [`ApiServer::put`] stores them.
    pub async fn start(objects: Vec<Value>) -> ApiServer {
        Self::start_with(kinds::defaults(), objects).await
    }

    /// [`ApiServer::start`] serving `kinds`.
    pub async fn start_with(kinds: Vec<KindSpec>, objects: Vec<Value>) -> ApiServer {
        let state = Arc::new(Mutex::new(State::new(kinds)));
        let pki = tls::Pki::new();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(pki.server_config()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the stand-in API server");
        let addr = listener.local_addr().expect("its address");
        let served = state.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                while connections.try_join_next().is_some() {}
                let (acceptor, state) = (acceptor.clone(), served.clone());
                connections.spawn(async move {
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp));
                    let Ok(Ok(tls)) = handshake.await else {
                        return;
                    };
                    let svc =
                        hyper::service::service_fn(move |req| http::handle(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        let server = ApiServer {
            state,
            addr,
            ca_pem: pki.ca_pem,
            task,
        };
        for o in objects {
            server.put(o);
        }
        server
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn kind(&self, st: &State, kind: &str) -> usize {
        st.kind_named(kind, None)
            .unwrap_or_else(|| panic!("the stand-in serves no kind {kind}"))
    }

    /// Creates or replaces `object` (its `kind` picks the collection) as given: its uid,
    /// timestamps and status are kept (a replaced custom resource keeps its status when the
    /// new one has none); the server sets `resourceVersion`, and the `generation` of a custom
    /// resource (1, moving when `spec` does). Watches see `ADDED` or `MODIFIED`.
    pub fn put(&self, object: Value) -> Value {
        let mut st = self.lock();
        let kind_name = object["kind"]
            .as_str()
            .expect("the object's kind")
            .to_owned();
        let kind = self.kind(&st, &kind_name);
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let name = object["metadata"]["name"]
            .as_str()
            .expect("the object's name")
            .to_owned();
        let key = (ns, name.clone());
        let written = if st.objects[kind].contains_key(&key) {
            st.update(kind, key, object, Part::Seed)
        } else {
            st.create(kind, None, object, Part::Seed)
        };
        written.unwrap_or_else(|e| panic!("put {kind_name} {name}: {e}"))
    }

    /// Deletes the `kind` named `name` in namespace `shop` (see [`ApiServer::delete_in`]).
    pub fn delete(&self, kind: &str, name: &str) {
        self.delete_in(kind, "shop", name);
    }

    /// Deletes the `kind` named `name` in `namespace` at once (no grace period).
    pub fn delete_in(&self, kind: &str, namespace: &str, name: &str) {
        let mut st = self.lock();
        let k = self.kind(&st, kind);
        st.delete(k, (namespace.to_owned(), name.to_owned()), true)
            .unwrap_or_else(|e| panic!("delete {kind} {namespace}/{name}: {e}"));
    }

    /// Deletes the `kind` named `name` in `namespace` as a DELETE request does: a Pod bound to
    /// a node is only marked (`deletionTimestamp`, `deletionGracePeriodSeconds`) unless
    /// `grace_zero`, as `gracePeriodSeconds=0` asks (what a kubelet sends once the containers
    /// ended). Returns the object as it is (marked) or was last (deleted).
    pub fn delete_with(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        grace_zero: bool,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        let k = self.kind(&st, kind);
        st.delete(k, (namespace.to_owned(), name.to_owned()), grace_zero)
    }

    /// Replaces the `status` of the `kind` named `name` in `namespace` as a PUT to `/status`
    /// does (nothing else of the object changes; no resourceVersion precondition), and returns
    /// the object stored.
    pub fn update_status_in(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        status: Value,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        let k = self.kind(&st, kind);
        let body = json!({"metadata": {"name": name}, "status": status});
        st.update(
            k,
            (namespace.to_owned(), name.to_owned()),
            body,
            Part::Status,
        )
    }

    /// The `kind` named `name` in namespace `shop`; panics when there is none.
    pub fn get(&self, kind: &str, name: &str) -> Value {
        self.get_in(kind, "shop", name)
    }

    /// The `kind` named `name` in `namespace`; panics when there is none.
    pub fn get_in(&self, kind: &str, namespace: &str, name: &str) -> Value {
        self.try_get_in(kind, namespace, name)
            .unwrap_or_else(|| panic!("no {kind} {namespace}/{name}"))
    }

    /// The `kind` named `name` in `namespace` (empty for cluster-scoped kinds), if any.
    pub fn try_get_in(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let st = self.lock();
        let k = self.kind(&st, kind);
        st.objects[k]
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Every `kind` object, in every namespace.
    pub fn all(&self, kind: &str) -> Vec<Value> {
        let st = self.lock();
        let k = self.kind(&st, kind);
        st.objects[k].values().cloned().collect()
    }

    /// Compacts history: every open watch gets `ERROR 410 Gone` and is closed, and so will any
    /// watch from an older version.
    pub fn expire(&self) {
        let mut st = self.lock();
        st.compacted = st.rv;
        let rv = st.rv;
        for w in st.watchers.drain(..) {
            let _ = w.tx.try_send(http::gone(rv));
        }
    }

    /// Closes every open watch (as the API server does at its timeout).
    pub fn close_watches(&self) {
        self.lock().watchers.clear();
    }

    /// How many lists of `plural` were served.
    pub fn lists(&self, plural: &str) -> usize {
        self.lock().lists.get(plural).copied().unwrap_or(0)
    }

    /// How many watches of `plural` were opened.
    pub fn watches(&self, plural: &str) -> usize {
        self.lock().watches.get(plural).copied().unwrap_or(0)
    }

    /// How many GETs of one `plural` object were served.
    pub fn gets(&self, plural: &str) -> usize {
        self.lock().gets.get(plural).copied().unwrap_or(0)
    }

    /// Status patches received: (`plural/namespace/name`, body).
    pub fn patches(&self) -> Vec<(String, Value)> {
        self.lock().patches.clone()
    }

    /// How many TokenReviews were answered.
    pub fn reviews(&self) -> usize {
        self.lock().tokens.reviews
    }

    /// Mints a service account token as TokenRequest does (the ServiceAccount, and the pod
    /// when given, must exist), for `audiences` (none: the API server's, [`API_AUDIENCE`]),
    /// valid for `ttl` (no 10-minute minimum here, so tests can watch one expire).
    pub fn mint_token(
        &self,
        namespace: &str,
        service_account: &str,
        audiences: &[&str],
        ttl: Duration,
        pod: Option<&str>,
    ) -> Result<String, ApiError> {
        let audiences = audiences.iter().map(|a| (*a).to_owned()).collect();
        self.lock()
            .mint(namespace, service_account, audiences, ttl, pod)
            .map(|(token, _)| token)
    }
}

/// Writes a kubeconfig at `path` for the API server at `server` (HTTPS, trusting `ca_pem`),
/// authenticating with [`TOKEN`].
pub fn write_kubeconfig(path: &Path, server: SocketAddr, ca_pem: &str) {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: https://{server}\n    certificate-authority-data: {ca}\n\
         users:\n- name: weft\n  user:\n    token: {TOKEN}\ncontexts:\n- name: standin\n  context:\n    cluster: standin\n    user: weft\n\
         current-context: standin\n"
    );
    std::fs::write(path, text).expect("write the kubeconfig");
}

/// Writes `dir/kubeconfig` for `api` and returns its path.
pub fn kubeconfig(dir: &Path, api: &ApiServer) -> PathBuf {
    let path = dir.join("kubeconfig");
    write_kubeconfig(&path, api.addr, &api.ca_pem);
    path
}
