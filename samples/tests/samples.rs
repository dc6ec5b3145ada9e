//! End-to-end tests of the sample servers with real clients on loopback.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt as _;
use weft_samples::grpc::{EchoClient, EchoRequest};
use weft_samples::http::{pattern_byte, Checksum, CHUNK_SIZE};
use weft_testkit::process::{output_within, spawn, Guard};

type Body = BoxBody<Bytes, Infallible>;

const MIB: usize = 1024 * 1024;

async fn bind() -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

async fn start_http(name: &str) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let (listener, addr) = bind().await?;
    Ok((addr, weft_samples::http::serve(listener, name.to_owned())))
}

/// An HTTP/1.1 or h2c client connection.
enum Client {
    H1(hyper::client::conn::http1::SendRequest<Body>),
    H2(hyper::client::conn::http2::SendRequest<Body>),
}

impl Client {
    async fn h1(addr: SocketAddr) -> anyhow::Result<Self> {
        let io = TokioIo::new(TcpStream::connect(addr).await?);
        let (send, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        Ok(Client::H1(send))
    }

    async fn h2(addr: SocketAddr) -> anyhow::Result<Self> {
        let io = TokioIo::new(TcpStream::connect(addr).await?);
        let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        Ok(Client::H2(send))
    }

    async fn both(addr: SocketAddr) -> anyhow::Result<[Self; 2]> {
        Ok([Self::h1(addr).await?, Self::h2(addr).await?])
    }

    fn is_h2(&self) -> bool {
        matches!(self, Client::H2(_))
    }

    /// A request builder with the right URI form for the protocol
    /// (origin-form + Host for HTTP/1.1, absolute for h2).
    fn request(&self, method: Method, path: &str) -> http::request::Builder {
        match self {
            Client::H1(_) => Request::builder()
                .method(method)
                .uri(path)
                .header(header::HOST, "app.test"),
            Client::H2(_) => Request::builder()
                .method(method)
                .uri(format!("http://app.test{path}")),
        }
    }

    async fn send(&mut self, req: Request<Body>) -> anyhow::Result<Response<Incoming>> {
        Ok(match self {
            Client::H1(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
            Client::H2(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
        })
    }

    async fn get(&mut self, path: &str) -> anyhow::Result<(Response<()>, Bytes)> {
        let req = self.request(Method::GET, path).body(empty())?;
        let resp = self.send(req).await?;
        split(resp).await
    }
}

fn empty() -> Body {
    Empty::new().boxed()
}

fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).boxed()
}

/// Collects the body, returning the response head (with an emptied body).
async fn split(resp: Response<Incoming>) -> anyhow::Result<(Response<()>, Bytes)> {
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await?.to_bytes();
    Ok((Response::from_parts(parts, ()), bytes))
}

fn header_str<'a, T>(resp: &'a Response<T>, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// `len` bytes of a sample payload for request bodies (not the /bytes
/// pattern, so echo/sink tests cannot pass by accident).
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(31) % 256) as u8).collect()
}

#[tokio::test]
async fn http_default_route_h1_and_h2() -> anyhow::Result<()> {
    let (addr, server) = start_http("app-a").await?;
    for mut client in Client::both(addr).await? {
        let h2 = client.is_h2();
        // Two requests on the same connection (keep-alive on HTTP/1.1).
        for round in 0..2 {
            let req = client
                .request(Method::GET, "/some/path?x=1&y=%22")
                .header("x-weft-caller", "spiffe://weft/ns/default/sa/b")
                .header("x-multi", "one")
                .header("x-multi", "two")
                .header("x-quote", "a\"b\\c")
                .body(empty())?;
            let (resp, body) = split(client.send(req).await?).await?;
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(header_str(&resp, "x-served-by"), Some("app-a"));
            assert_eq!(header_str(&resp, "content-type"), Some("application/json"));
            let expected_len = body.len().to_string();
            assert_eq!(
                header_str(&resp, "content-length"),
                Some(expected_len.as_str())
            );
            let v: Value = serde_json::from_slice(&body)
                .with_context(|| format!("bad JSON: {}", String::from_utf8_lossy(&body)))?;
            assert_eq!(v["service"], "app-a");
            assert_eq!(v["method"], "GET");
            assert_eq!(v["path"], "/some/path?x=1&y=%22");
            assert_eq!(v["host"], "app.test", "round {round}");
            assert_eq!(v["caller"], "spiffe://weft/ns/default/sa/b");
            assert_eq!(v["version"], if h2 { "HTTP/2" } else { "HTTP/1.1" });
            assert_eq!(v["headers"]["x-multi"], "one, two");
            assert_eq!(v["headers"]["x-quote"], "a\"b\\c");
            assert_eq!(
                v["headers"]["x-weft-caller"],
                "spiffe://weft/ns/default/sa/b"
            );
            if !h2 {
                assert_eq!(v["headers"]["host"], "app.test");
            }
        }
        // No caller header -> null; POST works on the default route.
        let req = client.request(Method::POST, "/").body(full("ignored"))?;
        let (resp, body) = split(client.send(req).await?).await?;
        assert_eq!(resp.status(), StatusCode::OK);
        let v: Value = serde_json::from_slice(&body)?;
        assert_eq!(v["caller"], Value::Null);
        assert_eq!(v["method"], "POST");
        assert_eq!(v["path"], "/");
    }
    server.abort();
    Ok(())
}

#[tokio::test]
async fn http_bytes_streams_pattern() -> anyhow::Result<()> {
    let (addr, server) = start_http("bytes").await?;
    let n: u64 = 10 * MIB as u64 + 12_345;
    for mut client in Client::both(addr).await? {
        let req = client
            .request(Method::GET, &format!("/bytes/{n}"))
            .body(empty())?;
        let resp = client.send(req).await?;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(header_str(&resp, "x-served-by"), Some("bytes"));
        let expected_len = n.to_string();
        assert_eq!(
            header_str(&resp, "content-length"),
            Some(expected_len.as_str())
        );
        let mut body = resp.into_body();
        let mut seen: u64 = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            for (i, &b) in data.iter().enumerate() {
                let at = seen + i as u64;
                ensure!(b == pattern_byte(at), "byte {at} is {b}");
            }
            seen += data.len() as u64;
        }
        assert_eq!(seen, n);

        // Edge sizes.
        for n in [
            0u64,
            1,
            250,
            251,
            252,
            CHUNK_SIZE as u64,
            CHUNK_SIZE as u64 + 1,
        ] {
            let (resp, body) = client.get(&format!("/bytes/{n}")).await?;
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(body.len() as u64, n);
            let expected: Vec<u8> = (0..n).map(pattern_byte).collect();
            assert_eq!(&body[..], &expected[..]);
        }

        // HEAD: length announced, no body.
        let req = client.request(Method::HEAD, "/bytes/12345").body(empty())?;
        let (resp, body) = split(client.send(req).await?).await?;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(header_str(&resp, "content-length"), Some("12345"));
        assert!(body.is_empty());

        // Errors.
        let (resp, _) = client.get("/bytes/lots").await?;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let req = client.request(Method::POST, "/bytes/10").body(empty())?;
        let (resp, _) = split(client.send(req).await?).await?;
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);

        // The connection is still usable after all that.
        let (resp, _) = client.get("/").await?;
        assert_eq!(resp.status(), StatusCode::OK);
    }
    server.abort();
    Ok(())
}

#[tokio::test]
async fn http_sink_checksums_streamed_body() -> anyhow::Result<()> {
    let (addr, server) = start_http("sink").await?;
    for (mut client, method) in Client::both(addr)
        .await?
        .into_iter()
        .zip([Method::POST, Method::PUT])
    {
        // 10 MiB in odd-sized chunks, streamed through a channel.
        let data = Bytes::from(payload(10 * MIB + 7));
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        let req = client
            .request(method.clone(), "/sink")
            .body(StreamBody::new(ReceiverStream::new(rx)).boxed())?;
        let sender = {
            let data = data.clone();
            tokio::spawn(async move {
                for chunk in data.chunks(100_003) {
                    if tx
                        .send(Ok(Frame::data(data.slice_ref(chunk))))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            })
        };
        let (resp, body) = split(client.send(req).await?).await?;
        sender.await?;
        assert_eq!(resp.status(), StatusCode::OK, "{method}");
        assert_eq!(header_str(&resp, "x-served-by"), Some("sink"));
        let v: Value = serde_json::from_slice(&body)?;
        assert_eq!(v["bytes"], data.len() as u64);
        assert_eq!(v["checksum"], Checksum::of(&data));

        // Empty and small bodies.
        for body in [&b""[..], b"x", b"hello world"] {
            let req = client
                .request(Method::POST, "/sink")
                .body(full(body.to_vec()))?;
            let (_, resp_body) = split(client.send(req).await?).await?;
            let v: Value = serde_json::from_slice(&resp_body)?;
            assert_eq!(v["bytes"], body.len());
            assert_eq!(v["checksum"], Checksum::of(body));
        }
        let (resp, _) = client.get("/sink").await?;
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(header_str(&resp, "allow"), Some("POST, PUT"));
    }
    server.abort();
    Ok(())
}

#[tokio::test]
async fn http_echo_full_and_interactive() -> anyhow::Result<()> {
    let (addr, server) = start_http("echo").await?;
    for mut client in Client::both(addr).await? {
        // A whole body.
        let data = payload(3 * MIB + 1);
        let req = client
            .request(Method::POST, "/echo")
            .body(full(data.clone()))?;
        let (resp, body) = split(client.send(req).await?).await?;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(header_str(&resp, "x-served-by"), Some("echo"));
        let expected_len = data.len().to_string();
        assert_eq!(
            header_str(&resp, "content-length"),
            Some(expected_len.as_str())
        );
        assert_eq!(&body[..], &data[..]);

        // Interactive: each chunk comes back before the next is sent, which
        // proves the body is streamed in both directions.
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
        let req = client
            .request(Method::POST, "/echo")
            .body(StreamBody::new(ReceiverStream::new(rx)).boxed())?;
        tx.send(Ok(Frame::data(Bytes::from_static(b"ping-0"))))
            .await?;
        let resp = tokio::time::timeout(Duration::from_secs(10), client.send(req)).await??;
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body();
        for i in 0..5 {
            let expected = format!("ping-{i}");
            let mut got = Vec::new();
            while got.len() < expected.len() {
                let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
                    .await?
                    .context("echo body ended early")??;
                if let Some(d) = frame.data_ref() {
                    got.extend_from_slice(d);
                }
            }
            assert_eq!(got, expected.as_bytes());
            if i < 4 {
                tx.send(Ok(Frame::data(Bytes::from(format!("ping-{}", i + 1)))))
                    .await?;
            }
        }
        drop(tx);
        let rest = body.collect().await?.to_bytes();
        assert!(rest.is_empty());

        let (resp, _) = client.get("/echo").await?;
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
    server.abort();
    Ok(())
}

#[tokio::test]
async fn http_status_and_delay() -> anyhow::Result<()> {
    let (addr, server) = start_http("status").await?;
    for mut client in Client::both(addr).await? {
        for code in [200u16, 201, 404, 418, 500, 503] {
            let (resp, body) = client.get(&format!("/status/{code}?q=1")).await?;
            assert_eq!(resp.status().as_u16(), code);
            assert_eq!(header_str(&resp, "x-served-by"), Some("status"));
            let v: Value = serde_json::from_slice(&body)?;
            assert_eq!(v["service"], "status");
            assert_eq!(v["path"], format!("/status/{code}?q=1"));
        }
        let (resp, body) = client.get("/status/204").await?;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert!(body.is_empty());
        for bad in ["/status/abc", "/status/99", "/status/100", "/status/1000"] {
            let (resp, body) = client.get(bad).await?;
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad}");
            let v: Value = serde_json::from_slice(&body)?;
            assert!(v["error"].is_string());
        }

        let start = Instant::now();
        let (resp, body) = client.get("/delay/150").await?;
        assert!(start.elapsed() >= Duration::from_millis(150));
        assert_eq!(resp.status(), StatusCode::OK);
        let v: Value = serde_json::from_slice(&body)?;
        assert_eq!(v["path"], "/delay/150");
        let (resp, _) = client.get("/delay/x").await?;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    }
    server.abort();
    Ok(())
}

#[tokio::test]
async fn http_failing_answers_every_request_with_its_status() -> anyhow::Result<()> {
    let (listener, addr) = bind().await?;
    let server = weft_samples::http::serve_failing(listener, "app-3", 500);
    for mut client in Client::both(addr).await? {
        let h2 = client.is_h2();
        // Several requests on one connection: the connection stays usable.
        for path in ["/", "/status/200", "/bytes/10", "/delay/5000", "/x?y=1"] {
            let (resp, body) = client.get(path).await?;
            assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR, "{path}");
            assert_eq!(header_str(&resp, "x-served-by"), Some("app-3"));
            assert_eq!(header_str(&resp, "content-type"), Some("application/json"));
            assert_ne!(header_str(&resp, "connection"), Some("close"));
            let v: Value = serde_json::from_slice(&body)?;
            assert_eq!(v["error"], "failing on purpose");
            assert_eq!(v["service"], "app-3");
            assert_eq!(v["status"], 500);
            assert!(body.len() < 100, "short body: {}", body.len());
        }
        // A request body is drained; the next request on the connection still works.
        let req = client
            .request(Method::POST, "/sink")
            .body(full(payload(256 * 1024)))?;
        let (resp, _) = split(client.send(req).await?).await?;
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR, "h2={h2}");
        let req = client.request(Method::HEAD, "/").body(empty())?;
        let (resp, body) = split(client.send(req).await?).await?;
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR, "h2={h2}");
        assert!(body.is_empty());
        let (resp, _) = client.get("/").await?;
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR, "h2={h2}");
    }
    // Keep-alive seen on the wire: two requests, one after the other, on
    // one raw socket, each answered in full (the JSON body ends with `}`).
    let mut raw = TcpStream::connect(addr).await?;
    let mut got = Vec::new();
    for _ in 0..2 {
        raw.write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
            .await?;
        let mut buf = [0u8; 1024];
        for _ in 0..100 {
            let n = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf)).await??;
            ensure!(n > 0, "connection closed after {got:?}");
            got.extend_from_slice(&buf[..n]);
            if got.ends_with(b"}") {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert_eq!(text.matches("HTTP/1.1 500").count(), 2, "{text}");
    server.abort();

    // Any final status, and none of a body where the status has none.
    let (listener, addr) = bind().await?;
    let server = weft_samples::http::serve_failing(listener, "app-x", 503);
    let mut client = Client::h1(addr).await?;
    let (resp, body) = client.get("/").await?;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(serde_json::from_slice::<Value>(&body)?["status"], 503);
    server.abort();
    let (listener, addr) = bind().await?;
    let server = weft_samples::http::serve_failing(listener, "app-y", 204);
    let mut client = Client::h1(addr).await?;
    let (resp, body) = client.get("/").await?;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(body.is_empty());
    server.abort();
    Ok(())
}

#[tokio::test]
async fn http_abort_stops_server_and_connections() -> anyhow::Result<()> {
    let (addr, server) = start_http("gone").await?;
    let mut client = Client::h1(addr).await?;
    let (resp, _) = client.get("/").await?;
    assert_eq!(resp.status(), StatusCode::OK);
    server.abort();
    assert!(server.await.is_err_and(|e| e.is_cancelled()));
    // Existing keep-alive connection is closed, new ones are refused.
    let res = tokio::time::timeout(Duration::from_secs(5), client.get("/")).await?;
    assert!(res.is_err());
    assert!(TcpStream::connect(addr).await.is_err());
    Ok(())
}

async fn start_grpc(
    name: &str,
) -> anyhow::Result<(EchoClient<tonic::transport::Channel>, JoinHandle<()>)> {
    let (listener, addr) = bind().await?;
    let server = weft_samples::grpc::serve(listener, name.to_owned());
    let client = EchoClient::connect(format!("http://{addr}")).await?;
    Ok((client, server))
}

fn grpc_req<T>(msg: T, caller: Option<&str>) -> anyhow::Result<tonic::Request<T>> {
    let mut req = tonic::Request::new(msg);
    if let Some(caller) = caller {
        req.metadata_mut().insert("x-weft-caller", caller.parse()?);
    }
    Ok(req)
}

fn echo_req(message: &str, count: u32) -> EchoRequest {
    EchoRequest {
        message: message.to_owned(),
        count,
    }
}

#[tokio::test]
async fn grpc_unary_and_server_stream() -> anyhow::Result<()> {
    let (mut client, server) = start_grpc("grpc-a").await?;

    let resp = client
        .unary(grpc_req(
            echo_req("hello", 0),
            Some("spiffe://weft/ns/x/sa/c"),
        )?)
        .await?;
    assert_eq!(
        resp.metadata()
            .get("x-served-by")
            .map(|v| v.to_str())
            .transpose()?,
        Some("grpc-a")
    );
    let reply = resp.into_inner();
    assert_eq!(reply.message, "hello");
    assert_eq!(reply.served_by, "grpc-a");
    assert_eq!(reply.caller, "spiffe://weft/ns/x/sa/c");
    assert_eq!(reply.seq, 0);

    let reply = client.unary(echo_req("anon", 0)).await?.into_inner();
    assert_eq!(reply.caller, "");

    let mut stream = client
        .server_stream(grpc_req(echo_req("tick", 5), Some("c1"))?)
        .await?
        .into_inner();
    let mut seqs = Vec::new();
    while let Some(reply) = stream.message().await? {
        assert_eq!(reply.message, "tick");
        assert_eq!(reply.caller, "c1");
        assert_eq!(reply.served_by, "grpc-a");
        seqs.push(reply.seq);
    }
    assert_eq!(seqs, vec![0, 1, 2, 3, 4]);

    let mut stream = client
        .server_stream(echo_req("none", 0))
        .await?
        .into_inner();
    assert!(stream.message().await?.is_none());
    server.abort();
    Ok(())
}

#[tokio::test]
async fn grpc_client_stream_and_bidi() -> anyhow::Result<()> {
    let (mut client, server) = start_grpc("grpc-b").await?;

    let reqs = tokio_stream::iter(["a", "bb", "ccc"].map(|m| echo_req(m, 0)));
    let reply = client
        .client_stream(grpc_req(reqs, Some("streamer"))?)
        .await?
        .into_inner();
    assert_eq!(reply.message, "abbccc");
    assert_eq!(reply.seq, 3);
    assert_eq!(reply.caller, "streamer");
    assert_eq!(reply.served_by, "grpc-b");

    // Bidi, interactively: each reply arrives before the next request is sent.
    let (tx, rx) = mpsc::channel(1);
    tx.send(echo_req("m0", 0)).await?;
    let mut replies = client
        .bidi(grpc_req(ReceiverStream::new(rx), Some("bidi-caller"))?)
        .await?
        .into_inner();
    for i in 0..4u32 {
        let reply = tokio::time::timeout(Duration::from_secs(10), replies.message())
            .await??
            .context("bidi ended early")?;
        assert_eq!(reply.message, format!("m{i}"));
        assert_eq!(reply.seq, i);
        assert_eq!(reply.caller, "bidi-caller");
        if i < 3 {
            tx.send(echo_req(&format!("m{}", i + 1), 0)).await?;
        }
    }
    drop(tx);
    assert!(replies.message().await?.is_none());

    // The generated client works on plain streams too.
    let many = tokio_stream::iter(0..100).map(|i| echo_req(&i.to_string(), 0));
    let replies: Vec<_> = client
        .bidi(many)
        .await?
        .into_inner()
        .collect::<Result<_, _>>()
        .await?;
    assert_eq!(replies.len(), 100);
    assert!(replies
        .iter()
        .enumerate()
        .all(|(i, r)| r.message == i.to_string() && r.seq as usize == i));
    server.abort();
    Ok(())
}

#[tokio::test]
async fn grpc_fail_propagates_status() -> anyhow::Result<()> {
    let (mut client, server) = start_grpc("grpc-c").await?;
    for (count, code) in [
        (5, tonic::Code::NotFound),
        (14, tonic::Code::Unavailable),
        (3, tonic::Code::InvalidArgument),
        (999, tonic::Code::Unknown),
    ] {
        let status = client
            .fail(echo_req("boom", count))
            .await
            .err()
            .context("Fail with a non-zero code succeeded")?;
        assert_eq!(status.code(), code);
        assert_eq!(status.message(), "boom");
        assert_eq!(
            status
                .metadata()
                .get("x-served-by")
                .map(|v| v.to_str())
                .transpose()?,
            Some("grpc-c")
        );
    }
    let reply = client.fail(echo_req("fine", 0)).await?.into_inner();
    assert_eq!(reply.message, "fine");
    assert_eq!(reply.served_by, "grpc-c");
    server.abort();
    Ok(())
}

#[tokio::test]
async fn tcp_echo_honours_half_close() -> anyhow::Result<()> {
    let (listener, addr) = bind().await?;
    let server = weft_samples::tcp::serve_echo(listener);

    // Interactive round trips first, then half-close.
    let mut conn = TcpStream::connect(addr).await?;
    for i in 0..3 {
        let msg = format!("line {i}\n");
        conn.write_all(msg.as_bytes()).await?;
        let mut buf = vec![0; msg.len()];
        conn.read_exact(&mut buf).await?;
        assert_eq!(buf, msg.as_bytes());
    }
    conn.write_all(b"last words").await?;
    conn.shutdown().await?;
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut rest)).await??;
    assert_eq!(rest, b"last words");

    // A large payload, written while reading, then half-closed.
    let data = payload(8 * MIB + 3);
    let conn = TcpStream::connect(addr).await?;
    let (mut read, mut write) = conn.into_split();
    let writer = {
        let data = data.clone();
        tokio::spawn(async move {
            write.write_all(&data).await?;
            write.shutdown().await
        })
    };
    let mut echoed = Vec::with_capacity(data.len());
    tokio::time::timeout(Duration::from_secs(30), read.read_to_end(&mut echoed)).await??;
    writer.await??;
    assert_eq!(echoed.len(), data.len());
    assert!(echoed == data);

    // Immediate half-close with nothing sent: EOF right away.
    let mut conn = TcpStream::connect(addr).await?;
    conn.shutdown().await?;
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut rest)).await??;
    assert!(rest.is_empty());
    server.abort();
    Ok(())
}

#[tokio::test]
async fn binary_serves_and_logs_bound_address() -> anyhow::Result<()> {
    // start_binary reads the bound address from the binary's first log line.
    let (mut child, addr) = start_binary(&["http", "--name", "bin-app", "--threads", "2"]).await?;
    let mut client = Client::h2(addr).await?;
    let (resp, body) = client.get("/bin").await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = serde_json::from_slice(&body)?;
    assert_eq!(v["service"], "bin-app");
    child.kill();
    Ok(())
}

/// Starts the `weft-sample` binary with `args` (plus `--listen 127.0.0.1:0`), guarded (its
/// process group is killed when the guard drops), and returns it with the address it logged.
/// Spawned from the test's own thread: the parent-death signal is tied to the spawning thread.
async fn start_binary(args: &[&str]) -> anyhow::Result<(Guard, SocketAddr)> {
    use tokio::io::AsyncBufReadExt;

    let mut child = spawn(
        std::process::Command::new(env!("CARGO_BIN_EXE_weft-sample"))
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .stderr(std::process::Stdio::piped()),
    )?;
    let stderr = child.take_stderr().context("no stderr")?;
    let stderr = tokio::process::ChildStderr::from_std(stderr)?;
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await??
        .context("no start line")?;
    let addr: SocketAddr = line
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .with_context(|| format!("no address in {line:?}"))?
        .parse()?;
    Ok((child, addr))
}

#[tokio::test]
async fn binary_fail_status() -> anyhow::Result<()> {
    let (mut child, addr) =
        start_binary(&["http", "--name", "broken", "--fail-status", "500"]).await?;
    for mut client in Client::both(addr).await? {
        for _ in 0..3 {
            let (resp, body) = client.get("/").await?;
            assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
            assert_eq!(header_str(&resp, "x-served-by"), Some("broken"));
            let v: Value = serde_json::from_slice(&body)?;
            assert_eq!(v["service"], "broken");
        }
    }
    child.kill();

    // Out of range, or on a sample other than http: refused before serving.
    for args in [
        &["http", "--fail-status", "600"][..],
        &["http", "--fail-status", "100"][..],
        &["tcp", "--fail-status", "500"][..],
        &["grpc", "--fail-status", "500"][..],
    ] {
        let (exit, _, err) = output_within(
            std::process::Command::new(env!("CARGO_BIN_EXE_weft-sample"))
                .args(args)
                .args(["--listen", "127.0.0.1:0"]),
            Duration::from_secs(30),
        );
        ensure!(!exit.success(), "{args:?} was accepted");
        assert!(err.contains("fail-status"), "{args:?}: {err}");
    }
    Ok(())
}

/// The shop wired directly (no sidecars): each dependency's "proxy" is the service itself.
#[tokio::test]
async fn shop_frontend_combines_orders_and_inventory() -> anyhow::Result<()> {
    use weft_samples::shop::{self, Upstream};
    let (l, inventory) = bind().await?;
    let _inv = shop::serve_inventory(l, "inventory-1");
    let inv_up = Upstream {
        proxy: Some(inventory),
        authority: "inventory".into(),
    };
    let (l, orders) = bind().await?;
    let _orders = shop::serve_orders(l, "orders-v2", "v2", &inv_up).map_err(anyhow::Error::msg)?;
    let orders_up = Upstream {
        proxy: Some(orders),
        authority: "orders".into(),
    };
    let (l, frontend) = bind().await?;
    let _fe =
        shop::serve_frontend(l, "frontend-1", &orders_up, &inv_up).map_err(anyhow::Error::msg)?;

    let [mut h1, _] = Client::both(frontend).await?;
    let req = Request::get("/shop/42")
        .header(header::HOST, "frontend")
        .body(empty())?;
    let (resp, body) = split(h1.send(req).await?).await?;
    ensure!(resp.status() == StatusCode::OK, "{resp:?} {body:?}");
    let v: Value = serde_json::from_slice(&body)?;
    ensure!(v["order"]["order"] == "42", "{v}");
    ensure!(v["order"]["version"] == "v2", "{v}");
    ensure!(
        v["order"]["delivery_days"].is_u64(),
        "v2 quotes delivery: {v}"
    );
    ensure!(v["available"] == shop::stock_of("sku-42"), "{v}");
    ensure!(v["inventory_served_by"] == "inventory-1", "{v}");

    // The default page works too, and bad paths and methods get 4xx, not 5xx.
    let (resp, _) = split(h1.send(Request::get("/").body(empty())?).await?).await?;
    ensure!(resp.status() == StatusCode::OK);
    let (resp, _) = split(h1.send(Request::get("/health").body(empty())?).await?).await?;
    ensure!(resp.status() == StatusCode::OK);
    let (resp, _) = split(h1.send(Request::get("/nope").body(empty())?).await?).await?;
    ensure!(resp.status() == StatusCode::NOT_FOUND);
    let (resp, _) = split(h1.send(Request::post("/shop/1").body(empty())?).await?).await?;
    ensure!(resp.status() == StatusCode::METHOD_NOT_ALLOWED);

    // A dead dependency is a 502 that names it.
    let (l, dead) = bind().await?;
    drop(l);
    let dead_up = Upstream {
        proxy: Some(dead),
        authority: "orders".into(),
    };
    let (l, broken) = bind().await?;
    let _broken =
        shop::serve_frontend(l, "frontend-2", &dead_up, &inv_up).map_err(anyhow::Error::msg)?;
    let [mut c, _] = Client::both(broken).await?;
    let (resp, body) = split(c.send(Request::get("/shop/1").body(empty())?).await?).await?;
    ensure!(resp.status() == StatusCode::BAD_GATEWAY, "{resp:?}");
    ensure!(
        String::from_utf8_lossy(&body).contains("orders"),
        "{body:?}"
    );
    Ok(())
}
