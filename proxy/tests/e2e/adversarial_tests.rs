//! An attacker on the request path: path tricks against `default: deny` + allow `/public`,
//! forged caller headers, and the wrong protocol at a service's inbound port. Every request
//! is real: HTTP/1.1 bytes written on a socket to the outbound port, h2 over mutual TLS with a
//! real mesh certificate straight at the inbound port, h2c to the outbound port (an http and a
//! grpc service). The sample app echoes the path and the caller header it received.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;
use crate::tls_tests::client_config;

/// The authorization of every protected service here: nothing but `/public`.
fn deny_but_public() -> String {
    "authorization:\n  default: deny\n  rules:\n    - {name: public, from: [\"*\"], paths: [/public]}\n"
        .to_owned()
}

/// Paths that resolve to `/admin` in most web frameworks, each with what the mesh must answer:
/// 403 (canonicalized to `/admin`, which no rule allows) or 400 (no canonical form).
const TRICKS: &[(&str, u16)] = &[
    ("/public/../admin", 403),
    ("/public/./../admin", 403),
    ("/public/%2e%2e/admin", 403),
    ("/public/%2E%2E/admin", 403),
    ("/public/.%2e/admin", 403),
    ("/public/%2e./admin", 403),
    ("//admin", 403),
    ("/public/..%2fadmin", 400),
    ("/public/..%2Fadmin", 400),
    ("/public\\..\\admin", 400),
    ("/public/..;/admin", 400),
];

/// What came back: the status, the mesh's `x-weft-error` (empty when the app answered), and
/// the app's echo of the request (`Null` when the app did not answer).
#[derive(Debug)]
struct Seen {
    status: u16,
    error: String,
    echo: serde_json::Value,
}

impl Seen {
    fn app_path(&self) -> &str {
        self.echo["path"].as_str().unwrap_or("")
    }

    fn app_caller(&self) -> &str {
        self.echo["caller"].as_str().unwrap_or("")
    }

    /// The attack failed: the mesh answered `want` itself, and the app saw nothing.
    fn refused(&self, want: u16, what: &str) {
        assert_eq!(self.status, want, "{what}: {self:?}");
        assert!(
            !self.error.is_empty(),
            "{what}: not the mesh's answer: {self:?}"
        );
        assert!(self.echo.is_null(), "{what}: the app answered: {self:?}");
    }
}

fn seen(status: u16, headers: &http::HeaderMap, body: &[u8]) -> Seen {
    let error = headers
        .get("x-weft-error")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let echo = if error.is_empty() {
        serde_json::from_slice(body).unwrap_or(serde_json::Value::Null)
    } else {
        serde_json::Value::Null
    };
    Seen {
        status,
        error,
        echo,
    }
}

/// One HTTP/1.1 request written byte for byte (no client library normalizes the target),
/// `Connection: close`, the response read to its end (at most 10 s).
async fn http1(proxy: SocketAddr, host: &str, target: &str) -> Seen {
    let mut s = tokio::net::TcpStream::connect(proxy)
        .await
        .expect("connect");
    let req = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("response within 10 s")
        .expect("read");
    let text = String::from_utf8_lossy(&buf);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        panic!("no HTTP response to {target}: {text:?}");
    };
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .unwrap_or(0);
    let mut map = http::HeaderMap::new();
    for (k, v) in lines.filter_map(|l| l.split_once(':')) {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(k.trim().as_bytes()),
            http::HeaderValue::from_str(v.trim()),
        ) {
            map.append(n, v);
        }
    }
    // The sample app answers with a content-length body; the mesh's answers too.
    seen(status, &map, body.as_bytes())
}

/// One h2 request on an open connection (TLS or h2c), with extra headers.
async fn h2(
    send: &mut SendRequest<Full<Bytes>>,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Seen {
    let mut b = http::Request::get(format!("http://{authority}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(Bytes::new())).expect("request");
    let r = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .expect("response within 10 s")
        .expect("h2 request");
    let (parts, body) = r.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    seen(parts.status.as_u16(), &parts.headers, &body)
}

async fn h2_over<T>(io: T) -> SendRequest<Full<Bytes>>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(io),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    send
}

/// An attacker with the `frontend` mesh certificate, h2 straight at `inbound`.
async fn attacker(pki: &Pki, inbound: SocketAddr) -> SendRequest<Full<Bytes>> {
    let tls = handshake(
        inbound,
        Arc::new(client_config(pki, Some((pki, "frontend")))),
    )
    .await
    .expect("mesh handshake");
    h2_over(tls).await
}

/// `orders` (http) and `payments` (grpc, h2c to the app) both `default: deny` + allow
/// `/public`, and a `frontend` sidecar that may call both.
async fn protected_mesh(pki: &Pki) -> (Sidecar, Sidecar, Sidecar) {
    for sa in ["frontend", "orders", "payments"] {
        pki.issue(sa);
    }
    let mut spec = Spec::new("orders", http_app("orders").await);
    spec.rest = deny_but_public();
    let orders = Sidecar::start(pki, spec).await;
    // The sample app serves h2c too: a grpc service's inbound speaks h2c to it, and it still
    // echoes the path it was given.
    let mut spec = Spec::new("payments", http_app("payments").await);
    spec.protocol = "grpc";
    spec.rest = deny_but_public();
    let payments = Sidecar::start(pki, spec).await;
    let mut spec = Spec::new("frontend", http_app("frontend").await);
    spec.rest = format!(
        "services:\n{}{}",
        service_yaml("orders", "http", None, &[(orders.inbound, "v1")]),
        service_yaml("payments", "grpc", None, &[(payments.inbound, "v1")])
    );
    let frontend = Sidecar::start(pki, spec).await;
    (frontend, orders, payments)
}

/// An allowed request with a non-canonical path and a query the mesh must not touch: the app
/// receives the canonical path and the query byte for byte.
const ALLOWED: &str = "/public//a/./b/../c%7e?q=%2e%2e/x&r=..%2F";
const ALLOWED_AS_SEEN: &str = "/public/a/c~?q=%2e%2e/x&r=..%2F";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_tricks_through_the_outbound_port_never_reach_the_app_as_admin() {
    let pki = Pki::new(100);
    let (frontend, _orders, _payments) = protected_mesh(&pki).await;
    for (trick, want) in TRICKS {
        http1(frontend.outbound, "orders", trick)
            .await
            .refused(*want, &format!("HTTP/1.1 {trick}"));
    }
    let ok = http1(frontend.outbound, "orders", ALLOWED).await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.app_path(), ALLOWED_AS_SEEN, "{ok:?}");
    // Absolute-form: the path inside the URL is canonicalized too, and goes on in origin-form.
    http1(frontend.outbound, "orders", "http://orders/public/../admin")
        .await
        .refused(403, "absolute-form");
    let ok = http1(
        frontend.outbound,
        "orders",
        "http://orders/public/./x?y=%2e",
    )
    .await;
    assert_eq!(
        (ok.status, ok.app_path()),
        (200, "/public/x?y=%2e"),
        "{ok:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_tricks_straight_at_the_inbound_port_over_h2_never_reach_the_app_as_admin() {
    let pki = Pki::new(101);
    let (_frontend, orders, _payments) = protected_mesh(&pki).await;
    let mut send = attacker(&pki, orders.inbound).await;
    for (trick, want) in TRICKS {
        h2(&mut send, "orders", trick, &[])
            .await
            .refused(*want, &format!("h2 inbound {trick}"));
    }
    let ok = h2(&mut send, "orders", ALLOWED, &[]).await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.app_path(), ALLOWED_AS_SEEN, "{ok:?}");
    // Counted where the caller's other refusals are.
    let bad = metric(
        orders.admin,
        "weft_requests_rejected_total",
        &[("reason", "bad_path")],
    )
    .await;
    let refused_400 = TRICKS.iter().filter(|(_, s)| *s == 400).count() as f64;
    assert_eq!(bad, refused_400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_tricks_over_h2c_to_http_and_grpc_services_never_reach_the_app_as_admin() {
    let pki = Pki::new(102);
    let (frontend, _orders, _payments) = protected_mesh(&pki).await;
    let tcp = tokio::net::TcpStream::connect(frontend.outbound)
        .await
        .expect("connect");
    let mut send = h2_over(tcp).await;
    for service in ["orders", "payments"] {
        let grpc: &[(&str, &str)] = if service == "payments" {
            &[("content-type", "application/grpc"), ("te", "trailers")]
        } else {
            &[]
        };
        for (trick, want) in TRICKS {
            h2(&mut send, service, trick, grpc)
                .await
                .refused(*want, &format!("h2c to {service} {trick}"));
        }
        let ok = h2(&mut send, service, ALLOWED, grpc).await;
        assert_eq!(ok.status, 200, "{service}: {ok:?}");
        assert_eq!(ok.app_path(), ALLOWED_AS_SEEN, "{service}: {ok:?}");
    }
}

/// The caller header is the mesh's word: forged on h2 straight at the inbound port, or by an
/// app over h2c to its outbound port, the app behind the destination sees the verified
/// identity only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_caller_header_never_reaches_the_app() {
    let pki = Pki::new(103);
    let (frontend, orders, _payments) = protected_mesh(&pki).await;
    let forged = spiffe("admin");
    let verified = spiffe("frontend");
    let forge = [("x-weft-caller", forged.as_str())];

    let mut send = attacker(&pki, orders.inbound).await;
    let r = h2(&mut send, "orders", "/public/x", &forge).await;
    assert_eq!(
        (r.status, r.app_caller()),
        (200, verified.as_str()),
        "{r:?}"
    );
    assert_eq!(
        r.echo["headers"]["x-weft-caller"],
        verified.as_str(),
        "{r:?}"
    );

    let tcp = tokio::net::TcpStream::connect(frontend.outbound)
        .await
        .expect("connect");
    let mut send = h2_over(tcp).await;
    for service in ["orders", "payments"] {
        let r = h2(&mut send, service, "/public/x", &forge).await;
        assert_eq!(
            (r.status, r.app_caller()),
            (200, verified.as_str()),
            "{service}: {r:?}"
        );
    }
}

/// The mirror of `tls_tests::a_tunnel_to_an_http_service_is_refused_at_the_handshake`: a
/// workload with a mesh certificate asks a **tcp** service's inbound port for HTTP/2 or
/// HTTP/1.1 (which would put its own headers and paths in front of a raw TCP app): the port
/// offers only `weft-tcp`, so the handshake fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_to_a_tcp_service_is_refused_at_the_handshake() {
    let pki = Pki::new(104);
    pki.issue("frontend");
    pki.issue("orders");
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let app = l.local_addr().expect("addr");
    weft_samples::tcp::serve_echo(l);
    // Named `orders` so the harness's handshake checks this sidecar's identity.
    let mut spec = Spec::new("orders", app);
    spec.protocol = "tcp";
    let db = Sidecar::start(&pki, spec).await;
    match handshake(
        db.inbound,
        Arc::new(client_config(&pki, Some((&pki, "frontend")))),
    )
    .await
    {
        Ok(_) => panic!("a tcp service accepted an HTTP/2 connection"),
        Err(e) => assert!(e.to_lowercase().contains("protocol"), "{e}"),
    }
    // Nor HTTP/1.1, which an http service offers for upgrades (WebSocket).
    let mut h1 = client_config(&pki, Some((&pki, "frontend")));
    h1.alpn_protocols = vec![b"http/1.1".to_vec()];
    match handshake(db.inbound, Arc::new(h1)).await {
        Ok(_) => panic!("a tcp service accepted an HTTP/1.1 connection"),
        Err(e) => assert!(e.to_lowercase().contains("protocol"), "{e}"),
    }
    // The control: the same certificate asking for a tunnel gets one.
    let mut tunnel = client_config(&pki, Some((&pki, "frontend")));
    tunnel.alpn_protocols = vec![b"weft-tcp".to_vec()];
    let mut tls = handshake(db.inbound, Arc::new(tunnel))
        .await
        .expect("a tunnel handshake");
    tls.write_all(b"ping").await.expect("write");
    let mut got = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut got))
        .await
        .expect("echo within 5 s")
        .expect("read");
    assert_eq!(&got, b"ping");
}
