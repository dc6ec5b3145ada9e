//! HTTP/1.1 + h2c sample server.
//!
//! One port serves HTTP/1.1 (with keep-alive) and HTTP/2 over cleartext with
//! prior knowledge (h2c), detected per connection from the client preface.
//!
//! Routes (every response carries `x-served-by: <name>`):
//!
//! | route | answer |
//! | --- | --- |
//! | `GET\|HEAD /bytes/{n}` | `n` bytes of [`pattern_byte`], streamed in [`CHUNK_SIZE`] chunks, with `content-length: n` |
//! | `POST\|PUT /sink` | reads the body, answers `{"bytes": N, "checksum": C}` ([`Checksum`], FNV-1a 64) |
//! | `POST /echo` | streams the request body back (and its length, if known) |
//! | `/delay/{ms}` | sleeps `ms` milliseconds, then answers like the default route |
//! | `/status/{code}` | the default route's body with status `code` (no body for 204/304) |
//! | anything else | 200, the default route's JSON body (see [`serve`]) |
//!
//! A malformed number in a route answers 400 and a known route with the
//! wrong method answers 405, both with a JSON `{"error": ...}` body.
//!
//! [`serve_failing`] runs a broken instance instead: every request, whatever
//! its route, is answered with one fixed status (e.g. 500) and a short JSON
//! body, keeping the connection alive, so tests and benchmarks can put a
//! failing endpoint behind a sidecar.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::{accept_loop, CALLER_HEADER, SERVED_BY_HEADER};

/// Size of the data chunks `/bytes/{n}` streams (the last one may be shorter).
pub const CHUNK_SIZE: usize = 64 * 1024;

/// Period of the `/bytes/{n}` pattern (a prime, so chunk boundaries never
/// line up with it).
const PATTERN_PERIOD: usize = 251;

/// The pattern, long enough that any chunk of [`CHUNK_SIZE`] bytes starting at
/// any phase is a plain slice of it: chunks are served with zero copies and
/// zero allocations.
static PATTERN: [u8; CHUNK_SIZE + PATTERN_PERIOD] = make_pattern();

const fn make_pattern() -> [u8; CHUNK_SIZE + PATTERN_PERIOD] {
    let mut buf = [0u8; CHUNK_SIZE + PATTERN_PERIOD];
    let mut i = 0;
    while i < buf.len() {
        buf[i] = (i % PATTERN_PERIOD) as u8;
        i += 1;
    }
    buf
}

/// Byte number `i` (from 0) of every `/bytes/{n}` response body:
/// `(i % 251) as u8`.
pub fn pattern_byte(i: u64) -> u8 {
    (i % PATTERN_PERIOD as u64) as u8
}

/// The checksum `/sink` reports: 64-bit FNV-1a over all body bytes, in order.
///
/// ```
/// use weft_samples::http::Checksum;
/// let mut c = Checksum::new();
/// c.update(b"hello ");
/// c.update(b"world");
/// assert_eq!(c.finish(), Checksum::of(b"hello world"));
/// assert_eq!(Checksum::new().finish(), 0xcbf2_9ce4_8422_2325);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checksum(u64);

impl Checksum {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    /// A checksum over no bytes.
    pub fn new() -> Self {
        Checksum(Self::OFFSET_BASIS)
    }

    /// Feeds `data` (which follows everything fed before).
    pub fn update(&mut self, data: &[u8]) {
        let mut h = self.0;
        for &b in data {
            h ^= u64::from(b);
            h = h.wrapping_mul(Self::PRIME);
        }
        self.0 = h;
    }

    /// The checksum of everything fed so far.
    pub fn finish(&self) -> u64 {
        self.0
    }

    /// The checksum of `data` alone.
    pub fn of(data: &[u8]) -> u64 {
        let mut c = Self::new();
        c.update(data);
        c.finish()
    }
}

impl Default for Checksum {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves the sample HTTP app on `listener` (HTTP/1.1 and h2c on the same
/// port) as the instance called `name`, until the returned task is aborted.
///
/// The default route answers 200 with `content-type: application/json` and a
/// body such as
///
/// ```json
/// {"service":"a","method":"GET","path":"/x?y=1","host":"a.local:80",
///  "caller":"spiffe://weft/ns/default/sa/b","version":"HTTP/1.1",
///  "headers":{"host":"a.local:80","x-weft-caller":"spiffe://weft/ns/default/sa/b"}}
/// ```
///
/// where `host` is the request URI's authority (HTTP/2 `:authority`) or else
/// the `Host` header (or `null`), `caller` the value of `x-weft-caller` (or
/// `null`), `version` one of `"HTTP/1.0"`, `"HTTP/1.1"`, `"HTTP/2"`, and
/// `headers` maps each lower-cased request header name to its value (repeated
/// headers joined with `", "`).
///
/// Must be called from inside a Tokio runtime. If `name` is not a valid
/// header value, `x-served-by` carries `invalid-name` instead.
pub fn serve(listener: TcpListener, name: impl Into<String>) -> JoinHandle<()> {
    spawn_app(listener, name.into(), None)
}

/// Serves a *failing* instance of the sample HTTP app on `listener` as the
/// instance called `name`, until the returned task is aborted: every request
/// (any method, any path, HTTP/1.1 or h2c) is answered with `status` and a
/// short JSON body such as
///
/// ```json
/// {"error":"failing on purpose","service":"app-3","status":500}
/// ```
///
/// (no body for 204 and 304), with `x-served-by: <name>` like [`serve`]. A
/// request body is read and discarded first, so HTTP/1.1 connections stay
/// alive for the next request.
///
/// Must be called from inside a Tokio runtime.
///
/// # Panics
///
/// If `status` is not a final status code, i.e. not in `200..=599`
/// (see [`is_fail_status`]).
pub fn serve_failing(
    listener: TcpListener,
    name: impl Into<String>,
    status: u16,
) -> JoinHandle<()> {
    let status = match StatusCode::from_u16(status) {
        Ok(s) if is_fail_status(status) => s,
        _ => panic!("serve_failing: {status} is not a status in 200..=599"),
    };
    spawn_app(listener, name.into(), Some(status))
}

/// Whether `code` is a status [`serve_failing`] accepts: `200..=599`.
pub fn is_fail_status(code: u16) -> bool {
    (200..=599).contains(&code)
}

fn spawn_app(listener: TcpListener, name: String, fail: Option<StatusCode>) -> JoinHandle<()> {
    let served_by = HeaderValue::from_str(&name).unwrap_or_else(|_| {
        log::warn!("service name {name:?} is not a valid header value");
        HeaderValue::from_static("invalid-name")
    });
    let app = Arc::new(App {
        name: name.into(),
        served_by,
        fail,
    });
    tokio::spawn(accept_loop(listener, move |stream| {
        serve_conn(stream, app.clone())
    }))
}

/// Per-server state shared by all requests.
struct App {
    name: Box<str>,
    served_by: HeaderValue,
    /// `Some`: answer every request with this status ([`serve_failing`]).
    fail: Option<StatusCode>,
}

async fn serve_conn(stream: TcpStream, app: Arc<App>) {
    let service = hyper::service::service_fn(move |req| handle(app.clone(), req));
    let builder = auto::Builder::new(TokioExecutor::new());
    if let Err(e) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        log::debug!("http connection ended with error: {e}");
    }
}

async fn handle(app: Arc<App>, req: Request<Incoming>) -> Result<Response<SampleBody>, Infallible> {
    let is_head = req.method() == Method::HEAD;
    let mut resp = route(&app, req).await;
    resp.headers_mut()
        .insert(SERVED_BY_HEADER, app.served_by.clone());
    if is_head {
        // hyper's HTTP/2 server would send the body of a HEAD response:
        // drop it here but keep the length it would have had.
        let status = resp.status();
        let len = resp.body().size_hint().exact();
        let has_body = !(status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED);
        if let Some(len) = len.filter(|_| has_body) {
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        *resp.body_mut() = SampleBody::empty();
    }
    Ok(resp)
}

async fn route(app: &App, req: Request<Incoming>) -> Response<SampleBody> {
    if let Some(status) = app.fail {
        return failing(app, status, req.into_body()).await;
    }
    let path = req.uri().path();
    if let Some(n) = path.strip_prefix("/bytes/") {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return method_not_allowed("GET, HEAD");
        }
        let Ok(n) = n.parse::<u64>() else {
            return error(StatusCode::BAD_REQUEST, "bad byte count");
        };
        let mut resp = Response::new(SampleBody::pattern(n));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        return resp;
    }
    match path {
        "/sink" => {
            if req.method() != Method::POST && req.method() != Method::PUT {
                return method_not_allowed("POST, PUT");
            }
            return sink(req.into_body()).await;
        }
        "/echo" => {
            if req.method() != Method::POST {
                return method_not_allowed("POST");
            }
            let mut resp = Response::new(SampleBody::Echo(req.into_body()));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            return resp;
        }
        _ => {}
    }
    if let Some(ms) = path.strip_prefix("/delay/") {
        let Ok(ms) = ms.parse::<u64>() else {
            return error(StatusCode::BAD_REQUEST, "bad delay");
        };
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return info(app, &req, StatusCode::OK);
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let status = match code.parse::<u16>().map(StatusCode::from_u16) {
            Ok(Ok(s)) if !s.is_informational() => s,
            _ => return error(StatusCode::BAD_REQUEST, "bad status code"),
        };
        if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            let mut resp = Response::new(SampleBody::empty());
            *resp.status_mut() = status;
            return resp;
        }
        return info(app, &req, status);
    }
    info(app, &req, StatusCode::OK)
}

/// The answer of a [`serve_failing`] instance: the request body is drained
/// (so the HTTP/1.1 connection can be reused), then `status` with a short
/// JSON body.
async fn failing(app: &App, status: StatusCode, mut body: Incoming) -> Response<SampleBody> {
    while let Some(frame) = body.frame().await {
        if let Err(e) = frame {
            log::debug!("failing: reading body failed: {e}");
            break;
        }
    }
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        let mut resp = Response::new(SampleBody::empty());
        *resp.status_mut() = status;
        return resp;
    }
    let mut out = Vec::with_capacity(64 + app.name.len());
    out.extend_from_slice(b"{\"error\":\"failing on purpose\",\"service\":");
    json_str(&mut out, app.name.as_bytes());
    out.extend_from_slice(format!(",\"status\":{}}}", status.as_u16()).as_bytes());
    json(status, Bytes::from(out))
}

/// `/sink`: reads the whole body (frame by frame, never buffering it) and
/// reports its length and checksum.
async fn sink(mut body: Incoming) -> Response<SampleBody> {
    let mut len: u64 = 0;
    let mut sum = Checksum::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    len += data.len() as u64;
                    sum.update(data);
                }
            }
            Err(e) => {
                log::debug!("sink: reading body failed: {e}");
                return error(StatusCode::BAD_REQUEST, "request body failed");
            }
        }
    }
    let body = format!("{{\"bytes\":{len},\"checksum\":{}}}", sum.finish());
    json(StatusCode::OK, Bytes::from(body))
}

/// The default route: a JSON description of the request.
fn info(app: &App, req: &Request<Incoming>, status: StatusCode) -> Response<SampleBody> {
    let headers = req.headers();
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path(), |pq| pq.as_str());
    let host: Option<&[u8]> = match req.uri().authority() {
        Some(a) => Some(a.as_str().as_bytes()),
        None => headers.get(header::HOST).map(HeaderValue::as_bytes),
    };
    let caller = headers.get(CALLER_HEADER).map(HeaderValue::as_bytes);
    let version = match req.version() {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "unknown",
    };

    // One allocation, sized up front (escaping rarely makes it grow).
    let headers_len: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 6)
        .sum();
    let mut out = Vec::with_capacity(
        96 + app.name.len()
            + req.method().as_str().len()
            + path.len()
            + host.map_or(4, <[u8]>::len)
            + caller.map_or(4, <[u8]>::len)
            + headers_len,
    );
    out.extend_from_slice(b"{\"service\":");
    json_str(&mut out, app.name.as_bytes());
    out.extend_from_slice(b",\"method\":");
    json_str(&mut out, req.method().as_str().as_bytes());
    out.extend_from_slice(b",\"path\":");
    json_str(&mut out, path.as_bytes());
    out.extend_from_slice(b",\"host\":");
    json_opt_str(&mut out, host);
    out.extend_from_slice(b",\"caller\":");
    json_opt_str(&mut out, caller);
    out.extend_from_slice(b",\"version\":");
    json_str(&mut out, version.as_bytes());
    out.extend_from_slice(b",\"headers\":{");
    json_headers(&mut out, headers);
    out.extend_from_slice(b"}}");
    json(status, Bytes::from(out))
}

fn json_headers(out: &mut Vec<u8>, headers: &HeaderMap) {
    let mut first = true;
    for name in headers.keys() {
        if !first {
            out.push(b',');
        }
        first = false;
        json_str(out, name.as_str().as_bytes());
        out.push(b':');
        let mut values = headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (Some(v), None) => json_str(out, v.as_bytes()),
            (first_value, second) => {
                // Repeated header: join the values with ", ".
                let mut joined = Vec::new();
                for (i, v) in first_value
                    .into_iter()
                    .chain(second)
                    .chain(values)
                    .enumerate()
                {
                    if i > 0 {
                        joined.extend_from_slice(b", ");
                    }
                    joined.extend_from_slice(v.as_bytes());
                }
                json_str(out, &joined);
            }
        }
    }
}

fn json_opt_str(out: &mut Vec<u8>, s: Option<&[u8]>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// Writes `s` as a JSON string. Bytes that are not valid UTF-8 (possible in
/// header values) become U+FFFD.
fn json_str(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let s = String::from_utf8_lossy(s);
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f | 0x7f => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

fn json(status: StatusCode, body: Bytes) -> Response<SampleBody> {
    let mut resp = Response::new(SampleBody::Full(Some(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn error(status: StatusCode, msg: &'static str) -> Response<SampleBody> {
    let body = format!("{{\"error\":\"{msg}\"}}");
    json(status, Bytes::from(body))
}

fn method_not_allowed(allow: &'static str) -> Response<SampleBody> {
    let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

/// Response body of every route: a buffered body, the `/bytes` pattern
/// generated chunk by chunk, or the request body streamed back.
enum SampleBody {
    /// One data frame (or none once sent / when `None`).
    Full(Option<Bytes>),
    /// The `/bytes/{n}` pattern: `remaining` bytes left, starting at byte
    /// `offset` of the pattern.
    Pattern { offset: u64, remaining: u64 },
    /// `/echo`: the request body, frames passed through as they arrive.
    Echo(Incoming),
}

impl SampleBody {
    fn empty() -> Self {
        SampleBody::Full(None)
    }

    fn pattern(len: u64) -> Self {
        SampleBody::Pattern {
            offset: 0,
            remaining: len,
        }
    }
}

impl Body for SampleBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            SampleBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            SampleBody::Pattern { offset, remaining } => {
                if *remaining == 0 {
                    return Poll::Ready(None);
                }
                // Both bounded by CHUNK_SIZE / PATTERN_PERIOD, so the casts
                // cannot truncate.
                let len = (*remaining).min(CHUNK_SIZE as u64) as usize;
                let phase = (*offset % PATTERN_PERIOD as u64) as usize;
                let chunk = Bytes::from_static(&PATTERN[phase..phase + len]);
                *offset += len as u64;
                *remaining -= len as u64;
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            SampleBody::Echo(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            SampleBody::Full(data) => data.is_none(),
            SampleBody::Pattern { remaining, .. } => *remaining == 0,
            SampleBody::Echo(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            SampleBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            SampleBody::Pattern { remaining, .. } => SizeHint::with_exact(*remaining),
            SampleBody::Echo(body) => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_statuses() {
        for ok in [200, 204, 404, 500, 503, 599] {
            assert!(is_fail_status(ok), "{ok}");
        }
        for bad in [0, 99, 100, 101, 199, 600, 999, 1000] {
            assert!(!is_fail_status(bad), "{bad}");
        }
    }

    #[tokio::test]
    #[should_panic(expected = "not a status in 200..=599")]
    async fn serve_failing_rejects_informational_status() {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding 127.0.0.1:0");
        let _server = serve_failing(listener, "x", 100);
    }
}
