//! A lean HTTP/1.1 keep-alive client for load generation.
//!
//! It sends precomputed request bytes and parses only what the benchmark
//! needs from each response: the status code, `Content-Length` and whether
//! the server closes the connection. Buffers are reused across requests, so
//! a request costs one `write` and (usually) one `read` system call and no
//! allocation. Chunked responses are not supported (the sample app always
//! sends `Content-Length` for its default route).

use std::fmt;
use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response (head + body) the client accepts.
pub const MAX_RESPONSE: usize = 64 * 1024;

/// Largest response head the parser looks at before giving up.
pub const MAX_HEAD: usize = 16 * 1024;

/// The bytes of a `GET` request with the given host and path, keep-alive
/// (the HTTP/1.1 default) and no body.
pub fn get_request(host: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: weft-bench\r\n\r\n").into_bytes()
}

/// What the client needs to know about a response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    /// The status code.
    pub status: u16,
    /// Length of the head, including the blank line that ends it.
    pub head_len: usize,
    /// The body length from `Content-Length`.
    pub content_length: usize,
    /// Whether the server said `Connection: close` (or answered HTTP/1.0
    /// without `Connection: keep-alive`).
    pub close: bool,
}

/// Why a response could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// The status line is not `HTTP/1.x NNN ...`.
    BadStatusLine,
    /// A header line has no colon or is not UTF-8 where it matters.
    BadHeader,
    /// `Content-Length` is missing, repeated with different values, or not a number.
    BadContentLength,
    /// The response uses `Transfer-Encoding`, which this client does not decode.
    TransferEncoding,
    /// The head is longer than [`MAX_HEAD`].
    HeadTooLong,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ParseError::BadStatusLine => "malformed status line",
            ParseError::BadHeader => "malformed header line",
            ParseError::BadContentLength => "missing or malformed content-length",
            ParseError::TransferEncoding => "transfer-encoding is not supported",
            ParseError::HeadTooLong => "response head too long",
        };
        f.write_str(s)
    }
}

impl std::error::Error for ParseError {}

/// Finds the end of the head (`\r\n\r\n`) in `buf`, starting the search at
/// `from` (bytes before it are known not to complete the terminator, minus
/// the three bytes that may start it). Returns the head length.
pub fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    buf.get(start..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| start + p + 4)
}

/// Parses a response head from the start of `buf`.
///
/// Returns `Ok(None)` if the head is not complete yet (`scanned` is how many
/// bytes were already searched in an earlier call, to avoid rescanning).
pub fn parse_head(buf: &[u8], scanned: usize) -> Result<Option<ResponseHead>, ParseError> {
    let Some(head_len) = find_head_end(buf, scanned) else {
        if buf.len() > MAX_HEAD {
            return Err(ParseError::HeadTooLong);
        }
        return Ok(None);
    };
    let head = &buf[..head_len - 4];
    let mut lines = head.split(|&b| b == b'\n').map(trim_cr);
    let status_line = lines.next().ok_or(ParseError::BadStatusLine)?;
    let (minor, status) = parse_status_line(status_line)?;
    let mut content_length: Option<usize> = None;
    let mut close = minor == 0;
    for line in lines {
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(ParseError::BadHeader)?;
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_usize(value).ok_or(ParseError::BadContentLength)?;
            if content_length.is_some_and(|old| old != n) {
                return Err(ParseError::BadContentLength);
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Err(ParseError::TransferEncoding);
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(trim) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && minor == 0 {
                    close = false;
                }
            }
        }
    }
    // Responses that never have a body.
    let no_body = (100..200).contains(&status) || status == 204 || status == 304;
    let content_length = match content_length {
        Some(n) => n,
        None if no_body => 0,
        None => return Err(ParseError::BadContentLength),
    };
    Ok(Some(ResponseHead {
        status,
        head_len,
        content_length,
        close,
    }))
}

/// Parses `HTTP/1.x NNN reason`, returning the minor version and the status.
fn parse_status_line(line: &[u8]) -> Result<(u8, u16), ParseError> {
    let rest = line
        .strip_prefix(b"HTTP/1.")
        .ok_or(ParseError::BadStatusLine)?;
    let (&minor, rest) = rest.split_first().ok_or(ParseError::BadStatusLine)?;
    let minor = match minor {
        b'0' => 0,
        b'1' => 1,
        _ => return Err(ParseError::BadStatusLine),
    };
    let rest = rest.strip_prefix(b" ").ok_or(ParseError::BadStatusLine)?;
    let code = rest.get(..3).ok_or(ParseError::BadStatusLine)?;
    if rest.len() > 3 && rest[3] != b' ' {
        return Err(ParseError::BadStatusLine);
    }
    let mut status: u16 = 0;
    for &d in code {
        if !d.is_ascii_digit() {
            return Err(ParseError::BadStatusLine);
        }
        status = status * 10 + u16::from(d - b'0');
    }
    if status < 100 {
        return Err(ParseError::BadStatusLine);
    }
    Ok((minor, status))
}

fn parse_usize(s: &[u8]) -> Option<usize> {
    if s.is_empty() || s.len() > 15 {
        return None;
    }
    let mut n: usize = 0;
    for &d in s {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + usize::from(d - b'0');
    }
    Some(n)
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end]
}

/// Why a request failed.
#[derive(Debug)]
pub enum RequestError {
    /// Reading, writing or connecting failed.
    Io(io::Error),
    /// The server closed the connection before the response was complete.
    Closed,
    /// The response could not be parsed.
    Parse(ParseError),
    /// The response is larger than [`MAX_RESPONSE`].
    TooLarge,
    /// The server sent bytes beyond the response (nothing was pipelined).
    TrailingBytes,
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::Io(e) => write!(f, "i/o error: {e}"),
            RequestError::Closed => f.write_str("connection closed mid-response"),
            RequestError::Parse(e) => write!(f, "bad response: {e}"),
            RequestError::TooLarge => f.write_str("response too large"),
            RequestError::TrailingBytes => f.write_str("unexpected bytes after the response"),
        }
    }
}

impl std::error::Error for RequestError {}

impl From<io::Error> for RequestError {
    fn from(e: io::Error) -> Self {
        RequestError::Io(e)
    }
}

/// One keep-alive connection with a reusable receive buffer.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    buf: Box<[u8]>,
    /// Whether the last response asked to close the connection.
    closed: bool,
}

/// A response read by [`Conn::request`]; the body borrows the connection's buffer.
#[derive(Debug)]
pub struct Response<'a> {
    /// The status code.
    pub status: u16,
    /// The body bytes.
    pub body: &'a [u8],
}

impl Conn {
    /// Connects to `addr` (with `TCP_NODELAY`).
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: vec![0u8; MAX_RESPONSE].into_boxed_slice(),
            closed: false,
        })
    }

    /// Whether the server asked to close the connection (it must not be reused).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Sends `request` (complete request bytes) and reads the whole response.
    pub async fn request(&mut self, request: &[u8]) -> Result<Response<'_>, RequestError> {
        self.stream.write_all(request).await?;
        let mut filled = 0usize;
        let mut scanned = 0usize;
        // Each iteration reads at least one byte into a bounded buffer, so
        // the loop runs at most MAX_RESPONSE times.
        let head = loop {
            if filled == self.buf.len() {
                return Err(RequestError::TooLarge);
            }
            let n = self.stream.read(&mut self.buf[filled..]).await?;
            if n == 0 {
                return Err(RequestError::Closed);
            }
            filled += n;
            match parse_head(&self.buf[..filled], scanned) {
                Ok(Some(head)) => break head,
                Ok(None) => scanned = filled,
                Err(e) => return Err(RequestError::Parse(e)),
            }
        };
        let total = head
            .head_len
            .checked_add(head.content_length)
            .filter(|&t| t <= self.buf.len())
            .ok_or(RequestError::TooLarge)?;
        while filled < total {
            let n = self.stream.read(&mut self.buf[filled..total]).await?;
            if n == 0 {
                return Err(RequestError::Closed);
            }
            filled += n;
        }
        if filled > total {
            return Err(RequestError::TrailingBytes);
        }
        self.closed = head.close;
        Ok(Response {
            status: head.status,
            body: &self.buf[head.head_len..total],
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn request_bytes() {
        assert_eq!(
            get_request("app", "/"),
            b"GET / HTTP/1.1\r\nHost: app\r\nUser-Agent: weft-bench\r\n\r\n"
        );
    }

    #[test]
    fn parses_a_typical_response() {
        let resp = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Length: 12\r\nx-served-by: app\r\n\r\n{\"a\":\"bcd\"}!";
        let head = parse_head(resp, 0).unwrap().unwrap();
        assert_eq!(
            head,
            ResponseHead {
                status: 200,
                head_len: resp.len() - 12,
                content_length: 12,
                close: false
            }
        );
    }

    #[test]
    fn incomplete_head_needs_more() {
        let full = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
        for cut in 0..full.len() {
            assert_eq!(parse_head(&full[..cut], 0), Ok(None), "cut at {cut}");
        }
        // Resuming the scan from any earlier point finds the end.
        for scanned in 0..full.len() {
            let head = parse_head(full, scanned).unwrap().unwrap();
            assert_eq!(head.status, 404);
            assert_eq!(head.head_len, full.len());
        }
    }

    #[test]
    fn connection_close_and_http10() {
        let h = parse_head(
            b"HTTP/1.1 503 Service Unavailable\r\nConnection: keep-alive, Close\r\ncontent-length: 3\r\n\r\n",
            0,
        )
        .unwrap()
        .unwrap();
        assert!(h.close);
        assert_eq!(h.status, 503);
        let h = parse_head(b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", 0)
            .unwrap()
            .unwrap();
        assert!(h.close);
        let h = parse_head(
            b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n",
            0,
        )
        .unwrap()
        .unwrap();
        assert!(!h.close);
    }

    #[test]
    fn no_body_statuses_need_no_length() {
        let h = parse_head(b"HTTP/1.1 204 No Content\r\n\r\n", 0)
            .unwrap()
            .unwrap();
        assert_eq!(h.content_length, 0);
    }

    #[test]
    fn rejects_what_it_cannot_handle() {
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\n\r\n", 0),
            Err(ParseError::BadContentLength)
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", 0),
            Err(ParseError::TransferEncoding)
        );
        assert_eq!(
            parse_head(
                b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
                0
            ),
            Err(ParseError::BadContentLength)
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n", 0),
            Err(ParseError::BadContentLength)
        );
        assert_eq!(
            parse_head(b"HTTP/2 200 OK\r\ncontent-length: 0\r\n\r\n", 0),
            Err(ParseError::BadStatusLine)
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 2000 OK\r\ncontent-length: 0\r\n\r\n", 0),
            Err(ParseError::BadStatusLine)
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\nbogus\r\n\r\n", 0),
            Err(ParseError::BadHeader)
        );
        let long = vec![b'a'; MAX_HEAD + 1];
        assert_eq!(parse_head(&long, 0), Err(ParseError::HeadTooLong));
    }

    #[test]
    fn status_line_without_reason() {
        let h = parse_head(b"HTTP/1.1 200\r\ncontent-length: 0\r\n\r\n", 0)
            .unwrap()
            .unwrap();
        assert_eq!(h.status, 200);
    }

    #[tokio::test]
    async fn round_trips_over_loopback() {
        use tokio::net::TcpListener;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            for i in 0..3u8 {
                let mut got = 0;
                while !buf[..got].ends_with(b"\r\n\r\n") {
                    got += s.read(&mut buf[got..]).await.unwrap();
                }
                // Split the response in two writes to exercise partial reads.
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhe")
                    .await
                    .unwrap();
                s.flush().await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                s.write_all(&[b'l', b'l', b'0' + i]).await.unwrap();
            }
        });
        let mut conn = Conn::connect(addr).await.unwrap();
        let req = get_request("app", "/");
        for i in 0..3u8 {
            let resp = conn.request(&req).await.unwrap();
            assert_eq!(resp.status, 200);
            assert_eq!(resp.body, &[b'h', b'e', b'l', b'l', b'0' + i]);
        }
        assert!(!conn.is_closed());
        server.await.unwrap();
        assert!(matches!(
            conn.request(&req).await,
            Err(RequestError::Closed | RequestError::Io(_))
        ));
    }
}
