//! gRPC sample server: the `weft.sample.v1.Echo` service over h2c.
//!
//! The proto is `samples/proto/echo.proto`; its generated code is in [`pb`]
//! and the usual types are re-exported here ([`EchoClient`], [`EchoRequest`],
//! [`EchoReply`], ...).
//!
//! Calling it from another crate (which needs `tonic` as a dependency, for
//! `Request`, `Status`, `Code` and the transport):
//!
//! ```no_run
//! # async fn demo(addr: std::net::SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
//! use weft_samples::grpc::{EchoClient, EchoRequest};
//!
//! let mut client = EchoClient::connect(format!("http://{addr}")).await?;
//! let mut req = tonic::Request::new(EchoRequest { message: "hi".into(), count: 0 });
//! req.metadata_mut().insert("x-weft-caller", "spiffe://weft/ns/default/sa/a".parse()?);
//! let reply = client.unary(req).await?.into_inner();
//! assert_eq!(reply.message, "hi");
//! # Ok(()) }
//! ```
//!
//! Every response (success or failure) carries the metadata
//! `x-served-by: <name>`: in the response headers on success, in the
//! trailers (or trailers-only response) on error.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Routes;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::{accept_loop, CALLER_HEADER, SERVED_BY_HEADER};

/// Code generated from `proto/echo.proto` (package `weft.sample.v1`).
#[allow(missing_docs, clippy::all, clippy::unwrap_used)]
pub mod pb {
    tonic::include_proto!("weft.sample.v1");
}

pub use pb::echo_client::EchoClient;
pub use pb::echo_server::{Echo, EchoServer};
pub use pb::{EchoReply, EchoRequest};

/// Serves the `weft.sample.v1.Echo` gRPC service on `listener` (HTTP/2 over
/// cleartext, prior knowledge) as the instance called `name`, until the
/// returned task is aborted.
///
/// Must be called from inside a Tokio runtime.
pub fn serve(listener: TcpListener, name: impl Into<String>) -> JoinHandle<()> {
    let routes = Routes::new(EchoServer::new(EchoService::new(name))).prepare();
    tokio::spawn(accept_loop(listener, move |stream| {
        serve_conn(stream, routes.clone())
    }))
}

async fn serve_conn(stream: TcpStream, routes: Routes) {
    let builder = auto::Builder::new(TokioExecutor::new()).http2_only();
    let service = TowerToHyperService::new(routes);
    if let Err(e) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        log::debug!("grpc connection ended with error: {e}");
    }
}

/// The implementation of the [`Echo`] service behind [`serve`]; usable on
/// its own with `EchoServer::new(EchoService::new(name))` in another tonic
/// server.
///
/// * `Unary`: replies `{message, served_by, caller, seq: 0}`.
/// * `ServerStream`: `count` replies with `seq` 0, 1, ... and the request's
///   message.
/// * `ClientStream`: one reply whose message is all request messages
///   concatenated and whose `seq` is how many requests there were.
/// * `Bidi`: one reply per request, as it arrives (`seq` = its index).
/// * `Fail`: fails with status code `count` and message `message`; `count`
///   0 (OK) answers like `Unary`, and a number that is not a gRPC code gives
///   `Unknown`.
///
/// `caller` is the request's `x-weft-caller` metadata ("" if absent).
#[derive(Debug, Clone)]
pub struct EchoService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: String,
    served_by: AsciiMetadataValue,
}

impl EchoService {
    /// The service for the instance called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        let served_by = AsciiMetadataValue::try_from(name.as_str()).unwrap_or_else(|_| {
            log::warn!("service name {name:?} is not a valid metadata value");
            AsciiMetadataValue::from_static("invalid-name")
        });
        EchoService {
            inner: Arc::new(Inner { name, served_by }),
        }
    }

    fn reply(&self, message: String, caller: &str, seq: u32) -> EchoReply {
        EchoReply {
            message,
            served_by: self.inner.name.clone(),
            caller: caller.to_owned(),
            seq,
        }
    }

    fn respond<T>(&self, body: T) -> Response<T> {
        let mut resp = Response::new(body);
        resp.metadata_mut()
            .insert(SERVED_BY_HEADER, self.inner.served_by.clone());
        resp
    }
}

/// The `x-weft-caller` metadata of `req`, or "" if absent or not text.
fn caller<T>(req: &Request<T>) -> String {
    req.metadata()
        .get(CALLER_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// A boxed stream of replies, as the streaming methods return.
pub type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let caller = caller(&request);
        let req = request.into_inner();
        Ok(self.respond(self.reply(req.message, &caller, 0)))
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<Self::ServerStreamStream>, Status> {
        let caller = caller(&request);
        let req = request.into_inner();
        let this = self.clone();
        let replies = futures_util::stream::iter(0..req.count)
            .map(move |seq| Ok(this.reply(req.message.clone(), &caller, seq)));
        Ok(self.respond(Box::pin(replies) as ReplyStream))
    }

    async fn client_stream(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoReply>, Status> {
        let caller = caller(&request);
        let mut stream = request.into_inner();
        let mut message = String::new();
        let mut count: u32 = 0;
        while let Some(req) = stream.message().await? {
            message.push_str(&req.message);
            count = count.saturating_add(1);
        }
        Ok(self.respond(self.reply(message, &caller, count)))
    }

    type BidiStream = ReplyStream;

    async fn bidi(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<Self::BidiStream>, Status> {
        let caller = caller(&request);
        let this = self.clone();
        let replies = request.into_inner().enumerate().map(move |(i, req)| {
            let seq = u32::try_from(i).unwrap_or(u32::MAX);
            req.map(|req| this.reply(req.message, &caller, seq))
        });
        Ok(self.respond(Box::pin(replies) as ReplyStream))
    }

    async fn fail(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let caller = caller(&request);
        let req = request.into_inner();
        let code = i32::try_from(req.count).map_or(Code::Unknown, Code::from_i32);
        if code == Code::Ok {
            return Ok(self.respond(self.reply(req.message, &caller, 0)));
        }
        let mut status = Status::new(code, req.message);
        status
            .metadata_mut()
            .insert(SERVED_BY_HEADER, self.inner.served_by.clone());
        Err(status)
    }
}
