//! Protocol detection for captured connections to a mesh service declared `http` or `grpc`:
//! the first bytes the app sends say whether the connection is HTTP (an HTTP/1.x request line
//! or the HTTP/2 preface) or something else, read under a short timeout
//! (`service.detect_timeout`, default [`DEFAULT_DETECT_TIMEOUT`]).
//!
//! Server-first protocols (MySQL, SMTP) send nothing until the server speaks, so detection
//! cannot see them before its timeout: their ports are declared opaque
//! (`service.opaque_ports`, a service's `opaque_ports`, Kubernetes' `weft.dev/opaque-ports`)
//! and a connection to an opaque port is never read here. Linkerd waits 10 s on such a port
//! when it is not declared; the timeout here is a few hundred milliseconds.
//!
//! What detection read is put back on the stream (Pingora's `rewind`), at most
//! [`MAX_PEEK`] bytes, so the HTTP or TCP path sees the connection from its first byte.

use std::time::Duration;

use pingora_core::protocols::l4::stream::Stream as L4Stream;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

pub use weft_policy::{DEFAULT_DETECT_TIMEOUT, DEFAULT_OPAQUE_PORTS};

use super::H2_PREFACE;

/// The most bytes detection reads (and puts back): the HTTP/2 preface's length, longer than
/// the longest method this module knows plus its space.
pub const MAX_PEEK: usize = H2_PREFACE.len();

/// Request methods an HTTP/1.x request line may start with (RFC 9110 and WebDAV's common
/// ones). A request with another method is carried as TCP, which an HTTP service's sidecar
/// refuses: a clear close, never a misrouted request.
const METHODS: [&[u8]; 16] = [
    b"GET",
    b"HEAD",
    b"POST",
    b"PUT",
    b"DELETE",
    b"CONNECT",
    b"OPTIONS",
    b"TRACE",
    b"PATCH",
    b"PROPFIND",
    b"PROPPATCH",
    b"MKCOL",
    b"COPY",
    b"MOVE",
    b"LOCK",
    b"UNLOCK",
];

/// What the first bytes of a connection are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// An HTTP/1.x request line's method and space.
    Http1,
    /// The HTTP/2 connection preface (h2c with prior knowledge, gRPC).
    H2,
    /// Anything else, or nothing within the timeout: the TCP path.
    Opaque,
}

/// The verdict on the bytes read so far: `None` while they are still a prefix of something
/// HTTP (more bytes may decide it).
pub fn classify(bytes: &[u8]) -> Option<Detected> {
    let bytes = &bytes[..bytes.len().min(MAX_PEEK)];
    if bytes.is_empty() {
        return None;
    }
    if bytes.len() == MAX_PEEK && bytes == H2_PREFACE {
        return Some(Detected::H2);
    }
    let mut undecided = H2_PREFACE.starts_with(bytes);
    for m in METHODS {
        if bytes.len() > m.len() {
            if bytes.starts_with(m) && bytes[m.len()] == b' ' {
                return Some(Detected::Http1);
            }
        } else if m.starts_with(bytes) {
            undecided = true;
        }
    }
    if undecided && bytes.len() < MAX_PEEK {
        None
    } else {
        Some(Detected::Opaque)
    }
}

/// Is `port` opaque: in this sidecar's list (`service.opaque_ports`, the well-known list by
/// default) or in the destination service's own `opaque_ports`?
pub fn is_opaque(port: u16, own: &[u16], service: &[u16]) -> bool {
    own.contains(&port) || service.contains(&port)
}

/// Reads the connection's first bytes until [`classify`] decides, the client closes, or
/// `wait` passes (then [`Detected::Opaque`]), and puts every byte read back on the stream.
/// Returns the verdict and how many bytes it read.
pub async fn detect(stream: &mut L4Stream, wait: Duration) -> std::io::Result<(Detected, usize)> {
    let mut buf = [0u8; MAX_PEEK];
    let mut n = 0;
    let deadline = Instant::now() + wait;
    let verdict = loop {
        // Bounded: every turn reads at least one byte into a MAX_PEEK buffer, or ends.
        let read = match tokio::time::timeout_at(deadline, stream.read(&mut buf[n..])).await {
            Ok(Ok(read)) => read,
            Ok(Err(e)) => {
                stream.rewind(&buf[..n]);
                return Err(e);
            }
            Err(_) => break Detected::Opaque,
        };
        if read == 0 {
            break Detected::Opaque;
        }
        n += read;
        if let Some(d) = classify(&buf[..n]) {
            break d;
        }
    };
    stream.rewind(&buf[..n]);
    Ok((verdict, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_are_http1_and_the_preface_is_h2() {
        for line in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /orders HTTP/1.1\r\nHost: x\r\n",
            b"OPTIONS * HTTP/1.1",
            b"DELETE ",
            b"PROPFIND /dav HTTP/1.1",
        ] {
            assert_eq!(classify(line), Some(Detected::Http1), "{line:?}");
        }
        assert_eq!(classify(H2_PREFACE), Some(Detected::H2));
        // A longer read than MAX_PEEK is classified on its first MAX_PEEK bytes.
        let mut long = H2_PREFACE.to_vec();
        long.extend_from_slice(b"\0\0\x12\x04");
        assert_eq!(classify(&long), Some(Detected::H2));
    }

    #[test]
    fn prefixes_wait_for_more_bytes() {
        for partial in [
            &b"G"[..],
            b"GE",
            b"GET",
            b"P",
            b"PR",
            b"PRI * HTTP/2.0\r\n",
            b"PROP",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r",
        ] {
            assert_eq!(classify(partial), None, "{partial:?}");
        }
        assert_eq!(classify(b""), None);
    }

    #[test]
    fn other_protocols_are_opaque_at_their_first_distinguishing_byte() {
        // PostgreSQL's SSLRequest and StartupMessage, a TLS ClientHello, Redis, memcached.
        for first in [
            &[0u8, 0, 0, 8, 4, 0xd2, 0x16, 0x2f][..],
            &[0, 0, 0, 0x54, 0, 3, 0, 0],
            &[0x16, 3, 1, 2, 0],
            b"*1\r\n$4\r\nPING\r\n",
            b"stats\r\n",
            b"get key\r\n",
            b"GETX / HTTP/1.1",
            b"GET\t/",
            b"get / HTTP/1.1",
            b"PRI * HTTP/1.1\r\n",
        ] {
            assert_eq!(classify(first), Some(Detected::Opaque), "{first:?}");
        }
        // 24 bytes of method-like text with no space: never waits for a 25th.
        assert_eq!(
            classify(b"GETGETGETGETGETGETGETGET"),
            Some(Detected::Opaque)
        );
    }

    #[test]
    fn opaque_ports_come_from_either_list() {
        assert!(is_opaque(5432, &DEFAULT_OPAQUE_PORTS, &[]));
        assert!(is_opaque(2525, &[], &[2525]));
        assert!(!is_opaque(8080, &DEFAULT_OPAQUE_PORTS, &[9000]));
        assert!(!is_opaque(5432, &[], &[]));
    }

    /// A real socket pair: bytes arriving in pieces are classified when decided, put back
    /// whole, and a silent client is opaque after the timeout.
    #[tokio::test]
    async fn detection_reads_in_pieces_puts_bytes_back_and_times_out() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let mut server = L4Stream::from(server);
        client.write_all(b"GE").await.expect("write");
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            client
                .write_all(b"T /x HTTP/1.1\r\n\r\n")
                .await
                .expect("write");
            client
        });
        let (d, n) = detect(&mut server, Duration::from_secs(5))
            .await
            .expect("detect");
        assert_eq!(d, Detected::Http1);
        assert!((4..=MAX_PEEK).contains(&n), "{n}");
        let _client = writer.await.expect("writer");
        let mut again = vec![0u8; n];
        server.read_exact(&mut again).await.expect("replayed");
        assert!(again.starts_with(b"GET /"), "{again:?}");

        let mut silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let mut server = L4Stream::from(server);
        let started = std::time::Instant::now();
        let (d, n) = detect(&mut server, Duration::from_millis(100))
            .await
            .expect("detect");
        assert_eq!((d, n), (Detected::Opaque, 0));
        assert!(started.elapsed() >= Duration::from_millis(100));
        // Afterwards the server still reads the client's first bytes.
        silent.write_all(b"\0\0\0\x08").await.expect("write");
        let mut four = [0u8; 4];
        server.read_exact(&mut four).await.expect("read");
        assert_eq!(&four, b"\0\0\0\x08");
    }
}
