//! Test helpers of the load loops: a tiny keep-alive server and a target on it.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::conn::Target;

/// A tiny keep-alive server answering every request with 200 or, for
/// every `fail_every`-th request, 500.
pub(crate) async fn server(fail_every: u64) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let count = Arc::new(AtomicU64::new(0));
        for _ in 0..64 {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = 0;
                for _ in 0..1_000_000 {
                    let Ok(n) = s.read(&mut buf[got..]).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    got += n;
                    if buf[..got].ends_with(b"\r\n\r\n") {
                        got = 0;
                        let n = count.fetch_add(1, Ordering::Relaxed) + 1;
                        let resp: &[u8] = if n.checked_rem(fail_every) == Some(0) {
                            b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\n\r\nfail"
                        } else {
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"
                        };
                        if s.write_all(resp).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

pub(crate) fn target(addr: SocketAddr) -> Target {
    Target {
        addr,
        request: crate::http1::get_request("app", "/").into(),
    }
}
