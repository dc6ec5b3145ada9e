//! The shop: three small services that call each other only through their sidecars.
//!
//! ```text
//! client ──HTTP──▶ frontend ──HTTP──▶ orders (v1, v2) ──gRPC──▶ inventory
//!                      └──────────────gRPC──────────────────────────▲
//! ```
//!
//! * [`serve_inventory`]: the `shop.inventory.v1.Inventory` gRPC service (`proto/shop.proto`); stock
//!   levels are a fixed function of the SKU, so answers are repeatable.
//! * [`serve_orders`]: HTTP `GET /api/orders/{id}` looks the order's SKU up in inventory and answers
//!   JSON with the serving `version` (`v2` also quotes a delivery estimate), so a canary split
//!   is visible in the responses.
//! * [`serve_frontend`]: HTTP `GET /` and `GET /shop/{id}` call orders (HTTP) and inventory
//!   (gRPC) and combine both answers; a failed dependency makes a 502 that says which one.
//!
//! Outbound calls go to an [`Upstream`]: the local sidecar's outbound listener plus the
//! destination's mesh name as Host / `:authority`, which is how the sidecar routes; or, with
//! no proxy, the name itself, resolved by the system (`/etc/hosts`) and dialled directly, as an
//! unmodified app does when transparent capture carries its connections into the sidecar.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tonic::service::Routes;
use tonic::transport::{Channel, Endpoint};

use crate::{accept_loop, CALLER_HEADER, SERVED_BY_HEADER};

/// Code generated from `proto/shop.proto` (package `shop.inventory.v1`).
#[allow(missing_docs, clippy::all, clippy::unwrap_used)]
pub mod pb {
    tonic::include_proto!("shop.inventory.v1");
}

pub use pb::inventory_client::InventoryClient;
pub use pb::inventory_server::{Inventory, InventoryServer};
pub use pb::{CheckReply, CheckRequest};

/// How long a call to a dependency may take before the caller gives up with 504.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a dependency is reached: the local sidecar's outbound listener, and the mesh name
/// the sidecar routes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// The sidecar's outbound HTTP listener, e.g. `127.0.0.1:15001`; `None`: connect to the
    /// authority itself (resolved by the system), as an app under transparent capture does.
    pub proxy: Option<SocketAddr>,
    /// The destination's mesh name, sent as Host / `:authority`, e.g. `orders` (with a port,
    /// `orders:8080`, when there is no proxy).
    pub authority: String,
}

/// Stock of `sku`: a fixed function of its name (FNV-1a), 0..=99, so every instance and
/// every run agree.
pub fn stock_of(sku: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in sku.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % 100
}

#[derive(Debug, Clone)]
struct InventoryService {
    name: Arc<str>,
}

#[tonic::async_trait]
impl Inventory for InventoryService {
    async fn check(
        &self,
        req: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckReply>, tonic::Status> {
        let caller = req
            .metadata()
            .get(CALLER_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let req = req.into_inner();
        if req.sku.is_empty() || req.sku.len() > 64 {
            return Err(tonic::Status::invalid_argument(
                "sku must be 1 to 64 characters",
            ));
        }
        let available = stock_of(&req.sku);
        Ok(tonic::Response::new(CheckReply {
            in_stock: available >= req.quantity.max(1),
            sku: req.sku,
            available,
            served_by: self.name.to_string(),
            caller,
        }))
    }
}

/// Serves `shop.inventory.v1.Inventory` over h2c on `listener` as the instance `name`, until the
/// returned task is aborted. Must be called inside a Tokio runtime.
pub fn serve_inventory(listener: TcpListener, name: impl Into<String>) -> JoinHandle<()> {
    let svc = InventoryService {
        name: name.into().into(),
    };
    let routes = Routes::new(InventoryServer::new(svc)).prepare();
    tokio::spawn(accept_loop(listener, move |stream| {
        serve_grpc_conn(stream, routes.clone())
    }))
}

async fn serve_grpc_conn(stream: TcpStream, routes: Routes) {
    let builder = auto::Builder::new(TokioExecutor::new()).http2_only();
    if let Err(e) = builder
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(routes))
        .await
    {
        log::debug!("grpc connection ended with error: {e}");
    }
}

/// A gRPC channel to `up`'s inventory through the sidecar; connects lazily, so the caller
/// starts before its sidecar is ready.
fn inventory_client(up: &Upstream) -> Result<InventoryClient<Channel>, String> {
    let origin: http::Uri = format!("http://{}", up.authority)
        .parse()
        .map_err(|e| format!("bad authority {:?}: {e}", up.authority))?;
    let target = up
        .proxy
        .map_or_else(|| up.authority.clone(), |p| p.to_string());
    let channel = Endpoint::from_shared(format!("http://{target}"))
        .map_err(|e| format!("bad address {target}: {e}"))?
        .origin(origin)
        .timeout(CALL_TIMEOUT)
        .connect_lazy();
    Ok(InventoryClient::new(channel))
}

type HttpClient = Client<ProxyConnector, Full<Bytes>>;

/// Connects every request to the sidecar's outbound listener, whatever the URI's host (the
/// host stays in the request for the sidecar to route on); with no proxy, to the URI's host
/// and port, resolved by the system.
#[derive(Debug, Clone)]
struct ProxyConnector(Option<SocketAddr>);

impl tower::Service<http::Uri> for ProxyConnector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let proxy = self.0;
        let host = uri.host().unwrap_or_default().to_owned();
        let port = uri.port_u16().unwrap_or(80);
        Box::pin(async move {
            let tcp = match proxy {
                Some(addr) => TcpStream::connect(addr).await?,
                None => TcpStream::connect((host.as_str(), port)).await?,
            };
            tcp.set_nodelay(true)?;
            Ok(TokioIo::new(tcp))
        })
    }
}

fn http_client(proxy: Option<SocketAddr>) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(ProxyConnector(proxy))
}

fn json(status: StatusCode, name: &str, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = http::HeaderValue::from_str(name) {
        h.insert(SERVED_BY_HEADER, v);
    }
    resp
}

fn error(status: StatusCode, name: &str, reason: impl Into<String>) -> Response<Full<Bytes>> {
    json(
        status,
        name,
        serde_json::json!({ "error": reason.into(), "served_by": name }),
    )
}

fn health(name: &str) -> Response<Full<Bytes>> {
    json(StatusCode::OK, name, serde_json::json!({ "status": "ok" }))
}

/// `{id}` of `/prefix/{id}`: 1 to 32 ASCII alphanumerics or `-`.
fn id_after<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let id = path.strip_prefix(prefix)?;
    (!id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        .then_some(id)
}

/// The result of a dependency call turned into an HTTP status and reason.
fn grpc_failure(dep: &str, e: &tonic::Status) -> (StatusCode, String) {
    let status = if e.code() == tonic::Code::DeadlineExceeded {
        StatusCode::GATEWAY_TIMEOUT
    } else {
        StatusCode::BAD_GATEWAY
    };
    (status, format!("{dep}: {} {}", e.code(), e.message()))
}

struct Orders {
    name: String,
    version: String,
    inventory: InventoryClient<Channel>,
}

impl Orders {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET {
            return error(StatusCode::METHOD_NOT_ALLOWED, &self.name, "only GET");
        }
        if req.uri().path() == "/health" {
            return health(&self.name);
        }
        let Some(id) = id_after(req.uri().path(), "/api/orders/") else {
            return error(
                StatusCode::NOT_FOUND,
                &self.name,
                "try GET /api/orders/{id} (id: 1 to 32 letters, digits or -)",
            );
        };
        let sku = format!("sku-{id}");
        let mut inv = self.inventory.clone();
        let reply = match inv
            .check(CheckRequest {
                sku: sku.clone(),
                quantity: 1,
            })
            .await
        {
            Ok(r) => r.into_inner(),
            Err(e) => {
                let (status, reason) = grpc_failure("inventory", &e);
                return error(status, &self.name, reason);
            }
        };
        let mut body = serde_json::json!({
            "order": id,
            "sku": sku,
            "in_stock": reply.in_stock,
            "version": self.version,
            "served_by": self.name,
        });
        if self.version != "v1" {
            // The canary's visible change: v2 quotes a delivery estimate.
            body["delivery_days"] = serde_json::json!(1 + stock_of(&sku) % 5);
        }
        json(StatusCode::OK, &self.name, body)
    }
}

/// Serves the orders API on `listener` as the instance `name` of `version` (e.g. `v1`),
/// calling inventory through `inventory`, until the returned task is aborted.
pub fn serve_orders(
    listener: TcpListener,
    name: impl Into<String>,
    version: impl Into<String>,
    inventory: &Upstream,
) -> Result<JoinHandle<()>, String> {
    let app = Arc::new(Orders {
        name: name.into(),
        version: version.into(),
        inventory: inventory_client(inventory)?,
    });
    Ok(serve_http(listener, move |req| {
        let app = app.clone();
        async move { app.handle(req).await }
    }))
}

struct Frontend {
    name: String,
    orders: Upstream,
    http: HttpClient,
    inventory: InventoryClient<Channel>,
}

impl Frontend {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET {
            return error(StatusCode::METHOD_NOT_ALLOWED, &self.name, "only GET");
        }
        let path = req.uri().path();
        if path == "/health" {
            return health(&self.name);
        }
        let id = if path == "/" {
            // Spread the default page over a few orders so traffic is not one cache line.
            (fastrand_id() % 20).to_string()
        } else if let Some(id) = id_after(path, "/shop/") {
            id.to_owned()
        } else {
            return error(
                StatusCode::NOT_FOUND,
                &self.name,
                "try GET / or GET /shop/{id}",
            );
        };
        let (order, stock) = tokio::join!(self.order(&id), self.stock(&id));
        let order = match order {
            Ok(o) => o,
            Err((status, reason)) => return error(status, &self.name, reason),
        };
        let stock = match stock {
            Ok(s) => s,
            Err((status, reason)) => return error(status, &self.name, reason),
        };
        json(
            StatusCode::OK,
            &self.name,
            serde_json::json!({
                "order": order,
                "available": stock.available,
                "inventory_served_by": stock.served_by,
                "served_by": self.name,
            }),
        )
    }

    async fn order(&self, id: &str) -> Result<serde_json::Value, (StatusCode, String)> {
        let bad = |e: String| (StatusCode::BAD_GATEWAY, format!("orders: {e}"));
        let req = Request::get(format!("http://{}/api/orders/{id}", self.orders.authority))
            .body(Full::new(Bytes::new()))
            .map_err(|e| bad(e.to_string()))?;
        let resp = tokio::time::timeout(CALL_TIMEOUT, self.http.request(req))
            .await
            .map_err(|_| (StatusCode::GATEWAY_TIMEOUT, "orders: timed out".to_owned()))?
            .map_err(|e| bad(e.to_string()))?;
        let status = resp.status();
        let weft_error = resp
            .headers()
            .get("x-weft-error")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = tokio::time::timeout(CALL_TIMEOUT, resp.into_body().collect())
            .await
            .map_err(|_| (StatusCode::GATEWAY_TIMEOUT, "orders: timed out".to_owned()))?
            .map_err(|e| bad(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            let why =
                weft_error.unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_owned());
            return Err(bad(format!("{status}: {why}")));
        }
        serde_json::from_slice(&body).map_err(|e| bad(format!("not JSON: {e}")))
    }

    async fn stock(&self, id: &str) -> Result<CheckReply, (StatusCode, String)> {
        let mut inv = self.inventory.clone();
        inv.check(CheckRequest {
            sku: format!("sku-{id}"),
            quantity: 1,
        })
        .await
        .map(tonic::Response::into_inner)
        .map_err(|e| grpc_failure("inventory", &e))
    }
}

/// A cheap per-process counter standing in for randomness in the default page's order id.
fn fastrand_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(7, std::sync::atomic::Ordering::Relaxed)
}

/// Serves the shop's front page on `listener` as the instance `name`, calling `orders` over
/// HTTP and `inventory` over gRPC, until the returned task is aborted.
pub fn serve_frontend(
    listener: TcpListener,
    name: impl Into<String>,
    orders: &Upstream,
    inventory: &Upstream,
) -> Result<JoinHandle<()>, String> {
    let app = Arc::new(Frontend {
        name: name.into(),
        orders: orders.clone(),
        http: http_client(orders.proxy),
        inventory: inventory_client(inventory)?,
    });
    Ok(serve_http(listener, move |req| {
        let app = app.clone();
        async move { app.handle(req).await }
    }))
}

fn serve_http<F, Fut>(listener: TcpListener, handler: F) -> JoinHandle<()>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    tokio::spawn(accept_loop(listener, move |stream| {
        let handler = handler.clone();
        async move {
            let svc = hyper::service::service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, std::convert::Infallible>(handler(req).await) }
            });
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                log::debug!("http connection ended with error: {e}");
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stock_is_a_fixed_function_of_the_sku() {
        assert_eq!(stock_of("sku-1"), stock_of("sku-1"));
        assert!((0..200).all(|i| stock_of(&format!("sku-{i}")) < 100));
        let distinct: std::collections::BTreeSet<_> =
            (0..50).map(|i| stock_of(&format!("sku-{i}"))).collect();
        assert!(distinct.len() > 10, "{distinct:?}");
    }

    #[test]
    fn ids_are_short_and_plain() {
        assert_eq!(id_after("/api/orders/42", "/api/orders/"), Some("42"));
        assert_eq!(id_after("/orders/", "/orders/"), None);
        assert_eq!(id_after("/orders/a/b", "/orders/"), None);
        assert_eq!(
            id_after(&format!("/orders/{}", "x".repeat(33)), "/orders/"),
            None
        );
    }
}
