//! gRPC (unary and streaming) and opaque TCP through two sidecars.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use weft_samples::grpc::{EchoClient, EchoRequest};

use crate::harness::*;

fn req(message: &str, count: u32) -> EchoRequest {
    EchoRequest {
        message: message.to_owned(),
        count,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_streaming_through_two_sidecars() {
    let pki = Pki::new(10);
    pki.issue("frontend");
    pki.issue("inventory");
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let app = l.local_addr().expect("addr");
    weft_samples::grpc::serve(l, "inventory-1");
    let mut spec = Spec::new("inventory", app);
    spec.protocol = "grpc";
    let inv = Sidecar::start(&pki, spec).await;
    let port = free_port();
    let mut spec = Spec::new("frontend", http_app("frontend").await);
    spec.rest = format!(
        "services:\n{}",
        service_yaml("inventory", "grpc", Some(port), &[(inv.inbound, "v1")])
    );
    let fe = Sidecar::start(&pki, spec).await;

    // By dedicated port, and by :authority on the shared outbound port.
    let by_port =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")).expect("uri");
    let by_host = tonic::transport::Endpoint::from_shared(format!("http://{}", fe.outbound))
        .expect("uri")
        .origin("http://inventory".parse().expect("origin"));
    for endpoint in [by_port, by_host] {
        let mut c = EchoClient::new(endpoint.connect().await.expect("connect"));

        let r = c.unary(req("hi", 0)).await.expect("unary").into_inner();
        assert_eq!(
            (r.message.as_str(), r.served_by.as_str()),
            ("hi", "inventory-1")
        );
        assert_eq!(r.caller, spiffe("frontend"));

        let mut s = c
            .server_stream(req("s", 50))
            .await
            .expect("server stream")
            .into_inner();
        let mut seqs = Vec::new();
        while let Some(m) = s.message().await.expect("stream message") {
            seqs.push(m.seq);
        }
        assert_eq!(seqs, (0..50).collect::<Vec<u32>>());

        let msgs = futures_util::stream::iter((0..10).map(|i| req(&i.to_string(), 0)));
        let r = c
            .client_stream(msgs)
            .await
            .expect("client stream")
            .into_inner();
        assert_eq!(r.seq, 10);
        assert_eq!(r.message, "0123456789");

        let msgs = futures_util::stream::iter((0..5).map(|i| req(&format!("b{i}"), 0)));
        let mut s = c.bidi(msgs).await.expect("bidi").into_inner();
        let mut got = Vec::new();
        while let Some(m) = s.message().await.expect("bidi message") {
            got.push(m.message);
        }
        assert_eq!(got, ["b0", "b1", "b2", "b3", "b4"]);

        // A gRPC error status (carried in trailers) reaches the client intact.
        let e = c.fail(req("nope", 5)).await.expect_err("fails");
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert_eq!(e.message(), "nope");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_round_trips_both_ways_and_honours_half_close() {
    let pki = Pki::new(11);
    pki.issue("frontend");
    pki.issue("db");
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let app = l.local_addr().expect("addr");
    weft_samples::tcp::serve_echo(l);
    let mut spec = Spec::new("db", app);
    spec.protocol = "tcp";
    let db = Sidecar::start(&pki, spec).await;
    let port = free_port();
    let mut spec = Spec::new("frontend", http_app("frontend").await);
    spec.rest = format!(
        "services:\n{}",
        service_yaml("db", "tcp", Some(port), &[(db.inbound, "v1")])
    );
    let _fe = Sidecar::start(&pki, spec).await;

    for size in [1usize, 70_000, 4 << 20] {
        let data: Vec<u8> = (0..size).map(|i| (i * 7 % 256) as u8).collect();
        let s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let (mut r, mut w) = s.into_split();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&sent).await.expect("write");
            w.shutdown().await.expect("half-close");
        });
        let mut back = Vec::with_capacity(size);
        tokio::time::timeout(Duration::from_secs(20), r.read_to_end(&mut back))
            .await
            .expect("EOF arrives after the half-close")
            .expect("read");
        writer.await.expect("writer");
        assert_eq!(back.len(), size);
        assert!(back == data, "bytes differ for size {size}");
    }
}
