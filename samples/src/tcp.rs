//! Raw TCP echo sample server.

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::accept_loop;

/// Read buffer size per connection.
const BUF_SIZE: usize = 64 * 1024;

/// Serves a TCP echo on `listener` until the returned task is aborted.
///
/// Everything a client sends is written back. Half-close is honoured: when
/// the client shuts down its write side, the server finishes writing back
/// what it read, then shuts down its own write side, so the client reads
/// EOF after the last echoed byte.
///
/// Must be called from inside a Tokio runtime.
pub fn serve_echo(listener: TcpListener) -> JoinHandle<()> {
    tokio::spawn(accept_loop(listener, echo_conn))
}

async fn echo_conn(mut stream: TcpStream) {
    let (read, mut write) = stream.split();
    let mut read = BufReader::with_capacity(BUF_SIZE, read);
    match tokio::io::copy_buf(&mut read, &mut write).await {
        Ok(_) => {
            if let Err(e) = write.shutdown().await {
                log::debug!("tcp echo: shutdown failed: {e}");
            }
        }
        Err(e) => log::debug!("tcp echo: connection ended with error: {e}"),
    }
}
