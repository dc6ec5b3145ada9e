//! The outbound listener's h2c sniff (`listen::sniff_h2c`): is a plaintext connection HTTP/2 with
//! prior knowledge? The input is the bytes an app sends, cut into reads of the sizes its first
//! bytes give (short reads are where a sniff goes wrong). Invariants: no panic; HTTP/2 exactly
//! when the bytes begin with the 24-byte preface; at most 24 bytes read before deciding; and
//! nothing lost: reading the stream afterwards gives every byte the app sent, in order.
#![no_main]

use std::io::Cursor;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use libfuzzer_sys::fuzz_target;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A peer that delivers `data` in reads no larger than the next of `cuts`, then EOF.
#[derive(Debug)]
struct Chunked {
    data: Cursor<Vec<u8>>,
    cuts: Vec<usize>,
    /// Bytes handed out so far, for the test to see after the stream owns the peer.
    read: Arc<AtomicUsize>,
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let cut = if self.cuts.is_empty() {
            usize::MAX
        } else {
            self.cuts.remove(0)
        };
        let pos = self.data.position() as usize;
        let rest = &self.data.get_ref()[pos..];
        let n = rest.len().min(cut).min(buf.remaining());
        buf.put_slice(&rest[..n]);
        self.data.set_position((pos + n) as u64);
        self.read.store(pos + n, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Chunked {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl VirtualSocket for Chunked {
    fn set_socket_option(&self, _: VirtualSockOpt) -> std::io::Result<()> {
        Ok(())
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|input: &[u8]| {
    // The first byte: how many of the next bytes are read sizes (0 meaning 1).
    let Some((&n, rest)) = input.split_first() else {
        return;
    };
    let n = usize::from(n % 8).min(rest.len());
    let (cuts, data) = rest.split_at(n);
    let cuts = cuts.iter().map(|&c| usize::from(c).max(1)).collect();
    let read = Arc::new(AtomicUsize::new(0));
    let peer = Chunked {
        data: Cursor::new(data.to_vec()),
        cuts,
        read: read.clone(),
    };
    runtime().block_on(async {
        let mut stream = L4Stream::from(VirtualSocketStream::new(Box::new(peer)));
        let h2 = weft_proxy::listen::sniff_h2c(&mut stream)
            .await
            .expect("a sniff of memory");
        assert_eq!(h2, data.starts_with(PREFACE), "wrong verdict");
        assert!(
            read.load(Ordering::Relaxed) <= PREFACE.len(),
            "read past the preface"
        );
        let mut seen = Vec::new();
        stream.read_to_end(&mut seen).await.expect("read the rest");
        assert_eq!(seen, data, "the sniff lost or reordered bytes");
    });
});
