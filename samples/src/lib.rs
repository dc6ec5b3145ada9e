//! Small, real sample services for Weft.
//!
//! They are used in-process by the proxy's integration tests and as
//! standalone programs (the `weft-sample` binary) beside sidecars in the demo
//! and the benchmarks. They speak only plaintext HTTP/1.1, h2c, gRPC over h2c
//! and raw TCP on loopback: the sidecar in front of them does the mTLS.
//!
//! Every server takes an already bound [`tokio::net::TcpListener`] (so tests
//! can bind `127.0.0.1:0` and read the OS-assigned port first) and returns a
//! [`tokio::task::JoinHandle`]. The server runs until that task is aborted;
//! aborting it also closes every connection the server had accepted. The
//! `serve*` functions must be called from inside a Tokio runtime.
//!
//! * [`http::serve`]: HTTP/1.1 (keep-alive) and h2c prior knowledge on one
//!   port, with `/bytes/{n}`, `/sink`, `/echo`, `/delay/{ms}`,
//!   `/status/{code}` and a JSON "who am I / what did you send" default route;
//!   [`http::serve_failing`] is the same app broken on purpose, answering
//!   every request with one fixed status (e.g. 500).
//! * [`grpc::serve`]: the `weft.sample.v1.Echo` gRPC service (see
//!   `proto/echo.proto`); its generated client is [`grpc::EchoClient`].
//! * [`tcp::serve_echo`]: a raw TCP echo server that honours half-close.
//! * [`shop`]: the shop sample (`frontend`, `orders`, `inventory`) whose services call each
//!   other only through their sidecars.

pub mod grpc;
pub mod http;
pub mod shop;
pub mod tcp;

use std::future::Future;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Name of the request header (HTTP) / metadata key (gRPC) whose value the
/// samples report back as the caller's identity. The sidecar sets it from
/// the peer's verified identity.
pub const CALLER_HEADER: &str = "x-weft-caller";

/// Name of the response header (HTTP) / metadata key (gRPC) every sample
/// response carries, holding the serving instance's name.
pub const SERVED_BY_HEADER: &str = "x-served-by";

/// Accepts connections forever and runs `handle` for each one in a
/// [`JoinSet`] owned by this future, so that dropping (aborting) the future
/// also ends every connection it accepted.
pub(crate) async fn accept_loop<F, Fut>(listener: TcpListener, mut handle: F)
where
    F: FnMut(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    // Latency matters more than packet count for these
                    // request/response workloads.
                    if let Err(e) = stream.set_nodelay(true) {
                        log::debug!("set_nodelay failed: {e}");
                    }
                    conns.spawn(handle(stream));
                }
                Err(e) => {
                    // E.g. EMFILE: back off briefly instead of spinning.
                    log::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(done) = conns.join_next(), if !conns.is_empty() => {
                if let Err(e) = done {
                    if e.is_panic() {
                        log::error!("connection task panicked: {e}");
                    }
                }
            }
        }
    }
}
