//! Accepting connections: one loop every listener of the control plane shares (sidecar
//! streams, operator API, injection webhook), so none spins on an accept error.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// The next connection on `listener`. An accept error (such as running out of file
/// descriptors) is logged and retried after a short pause, so the loop never spins.
pub(crate) async fn accept(listener: &TcpListener, what: &str) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(c) => return c,
            Err(e) => {
                log::warn!("{what} accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
