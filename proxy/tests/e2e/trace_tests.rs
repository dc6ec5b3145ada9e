//! Tracing: W3C trace context through two real sidecars, spans exported over OTLP/gRPC to an
//! in-test collector (a tonic server built from the OpenTelemetry protobuf definitions).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use tokio::net::TcpListener;

use crate::harness::*;

/// One span as the collector received it.
#[derive(Debug, Clone)]
struct Got {
    /// `service.name` of the resource that sent it.
    service: String,
    identity: String,
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent: String,
    attrs: BTreeMap<String, String>,
    error: bool,
    start: u64,
    end: u64,
}

const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const STATUS_ERROR: i32 = 2;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attrs(kv: &[KeyValue]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::IntValue(i)) => i.to_string(),
                Some(any_value::Value::BoolValue(b)) => b.to_string(),
                Some(any_value::Value::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

/// An OTLP/gRPC trace collector that keeps every span it is sent.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Got>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = Vec::new();
        for rs in req.into_inner().resource_spans {
            let res = attrs(rs.resource.as_ref().map_or(&[][..], |r| &r.attributes));
            for ss in rs.scope_spans {
                for s in ss.spans {
                    got.push(Got {
                        service: res.get("service.name").cloned().unwrap_or_default(),
                        identity: res.get("weft.identity").cloned().unwrap_or_default(),
                        name: s.name,
                        kind: s.kind,
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent: hex(&s.parent_span_id),
                        attrs: attrs(&s.attributes),
                        error: s.status.is_some_and(|st| st.code == STATUS_ERROR),
                        start: s.start_time_unix_nano,
                        end: s.end_time_unix_nano,
                    });
                }
            }
        }
        self.spans.lock().expect("lock").extend(got);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    async fn start() -> (SocketAddr, Collector) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let c = Collector::default();
        let svc = TraceServiceServer::new(c.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(l)),
        );
        (addr, c)
    }

    fn of(&self, trace_id: &str) -> Vec<Got> {
        self.spans
            .lock()
            .expect("lock")
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }

    /// Wait (at most 10 s) for `n` spans of a trace, then a little longer so a surplus would
    /// show; every span of the trace.
    async fn wait(&self, trace_id: &str, n: usize) -> Vec<Got> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.of(trace_id).len() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Showing that no surplus span comes: no event to wait for, so a short wait.
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.of(trace_id)
    }
}

/// What the app saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    traceparent: Option<String>,
    tracestate: Option<String>,
}

/// An app that records the trace headers it receives. `/status/503` answers 503, `/grpc`
/// answers 200 with `grpc-status: 14` (a trailers-only gRPC error), anything else 200.
async fn trace_app() -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        async move {
                            let h = |n: &str| {
                                req.headers()
                                    .get(n)
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_owned)
                            };
                            let path = req.uri().path().to_owned();
                            log.lock().expect("lock").push(Seen {
                                path: path.clone(),
                                traceparent: h("traceparent"),
                                tracestate: h("tracestate"),
                            });
                            let mut r = http::Response::builder().status(200);
                            if path == "/status/503" {
                                r = r.status(503);
                            } else if path == "/grpc" {
                                r = r.header("grpc-status", "14");
                            }
                            r.body(Full::new(Bytes::from_static(b"ok\n")))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// The traceparent the app received for the last request to `path`.
fn received(seen: &Mutex<Vec<Seen>>, path: &str) -> Seen {
    seen.lock()
        .expect("lock")
        .iter()
        .rev()
        .find(|s| s.path == path)
        .cloned()
        .unwrap_or_else(|| panic!("the app never saw {path}"))
}

/// `(trace id, parent id, flags)` of a traceparent.
fn parts(tp: &str) -> (String, String, String) {
    let p: Vec<&str> = tp.split('-').collect();
    assert_eq!(p.len(), 4, "{tp}");
    assert_eq!(p[0], "00", "{tp}");
    (p[1].to_owned(), p[2].to_owned(), p[3].to_owned())
}

fn tracing_yaml(collector: SocketAddr, extra: &str) -> String {
    format!("tracing: {{collector: \"http://{collector}\", export_interval: 50ms{extra}}}\n")
}

struct Mesh {
    fe: Sidecar,
    orders: Sidecar,
    seen: Arc<Mutex<Vec<Seen>>>,
    app: SocketAddr,
    fe_rest: String,
}

/// frontend sidecar → orders sidecar → recording app, both sidecars tracing with `tracing`.
async fn mesh(pki: &Pki, tracing: &str, fe_access_log: bool) -> Mesh {
    pki.issue("frontend");
    pki.issue("orders");
    let (app, seen) = trace_app().await;
    let mut spec = Spec::new("orders", app);
    spec.rest = tracing.to_owned();
    let orders = Sidecar::start(pki, spec).await;
    let mut spec = Spec::new("frontend", http_app("frontend").await);
    let fe_rest = format!(
        "{}services:\n{}routes:\n  - {{name: api, service: orders}}\n",
        if fe_access_log {
            "access_log: fe-access.log\n"
        } else {
            ""
        },
        service_yaml("orders", "http", None, &[(orders.inbound, "v1")])
    );
    spec.rest = format!("{tracing}{fe_rest}");
    let fe = Sidecar::start(pki, spec).await;
    Mesh {
        fe,
        orders,
        seen,
        app,
        fe_rest,
    }
}

async fn send_tp(c: &HttpClient, m: &Mesh, path: &str, headers: &[(&str, &str)]) -> Resp {
    send(c, m.fe.outbound, "orders", "GET", path, headers)
        .await
        .expect("request")
}

/// The outbound and the inbound span of one trace (exactly one each).
fn hops(spans: &[Got], m: &Mesh) -> (Got, Got) {
    let logs = || format!("{}\n{}", m.fe.log_text(), m.orders.log_text());
    assert_eq!(spans.len(), 2, "{spans:#?}\n{}", logs());
    let out = spans
        .iter()
        .find(|s| s.kind == CLIENT)
        .unwrap_or_else(|| panic!("no CLIENT span: {spans:#?}"))
        .clone();
    let inb = spans
        .iter()
        .find(|s| s.kind == SERVER)
        .unwrap_or_else(|| panic!("no SERVER span: {spans:#?}"))
        .clone();
    assert_eq!(out.service, "frontend");
    assert_eq!(inb.service, "orders");
    // The inbound hop is a child of the outbound hop.
    assert_eq!(inb.parent, out.span_id, "{spans:#?}");
    (out, inb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_from_both_sidecars_share_a_trace_and_parent_correctly() {
    let pki = Pki::new(90);
    let (collector_addr, collector) = Collector::start().await;
    let tracing = tracing_yaml(collector_addr, ", sampling: 1.0");
    let m = mesh(&pki, &tracing, true).await;
    let c = client();

    // (a) the client's sampled traceparent: both hops join its trace.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_parent = "00f067aa0ba902b7";
    let tp = format!("00-{trace}-{client_parent}-01");
    let r = send_tp(
        &c,
        &m,
        "/api/a",
        &[("traceparent", &tp), ("tracestate", "vendor=opaque,x=1")],
    )
    .await;
    assert_eq!(r.status, 200);
    let app_saw = received(&m.seen, "/api/a");
    assert_eq!(app_saw.tracestate.as_deref(), Some("vendor=opaque,x=1"));
    let (app_trace, app_parent, app_flags) =
        parts(app_saw.traceparent.as_deref().expect("traceparent"));
    assert_eq!((app_trace.as_str(), app_flags.as_str()), (trace, "01"));

    let spans = collector.wait(trace, 2).await;
    let (out, inb) = hops(&spans, &m);
    assert_eq!(out.parent, client_parent, "outbound's parent is the client");
    assert_eq!(
        app_parent, inb.span_id,
        "the app's parent is the inbound hop"
    );
    assert_ne!(out.span_id, client_parent);
    assert_eq!(out.name, "outbound orders/api");
    assert_eq!(inb.name, "inbound orders");
    assert_eq!(out.identity, spiffe("frontend"));
    assert_eq!(inb.identity, spiffe("orders"));
    for s in [&out, &inb] {
        let a = &s.attrs;
        assert_eq!(a["weft.src_service"], "frontend", "{s:#?}");
        assert_eq!(a["weft.dst_service"], "orders", "{s:#?}");
        assert_eq!(a["weft.caller"], spiffe("frontend"), "{s:#?}");
        assert_eq!(a["http.request.method"], "GET");
        assert_eq!(a["http.response.status_code"], "200");
        assert_eq!(a["url.path"], "/api/a");
        assert_eq!(a["server.address"], "127.0.0.1");
        assert!(!s.error, "{s:#?}");
        assert!(s.start > 0 && s.end >= s.start, "{s:#?}");
    }
    assert_eq!(out.attrs["weft.direction"], "outbound");
    assert_eq!(inb.attrs["weft.direction"], "inbound");
    assert_eq!(out.attrs["weft.route"], "api");
    assert_eq!(inb.attrs["weft.route"], "inbound");
    assert_eq!(out.attrs["weft.retries"], "0");
    assert_eq!(
        out.attrs["server.port"],
        m.orders.inbound.port().to_string()
    );
    assert_eq!(inb.attrs["server.port"], m.app.port().to_string());
    assert!(out.start <= inb.start, "the outbound hop starts first");

    // (b) no traceparent: the outbound sidecar starts a trace both hops share.
    let r = send_tp(&c, &m, "/api/b", &[]).await;
    assert_eq!(r.status, 200);
    let app_saw = received(&m.seen, "/api/b");
    let (fresh, app_parent, flags) = parts(app_saw.traceparent.as_deref().expect("created"));
    assert_eq!(flags, "01", "sampling 1.0 samples every new trace");
    assert_ne!(fresh, trace);
    let spans = collector.wait(&fresh, 2).await;
    let (out, inb) = hops(&spans, &m);
    assert_eq!(out.parent, "", "the outbound span is the root");
    assert_eq!(app_parent, inb.span_id);

    // (c) an unsampled traceparent: no span anywhere, the trace id still reaches the app.
    let unsampled = format!("00-{}-{client_parent}-00", "1".repeat(32));
    assert_eq!(
        send_tp(&c, &m, "/api/c", &[("traceparent", &unsampled)])
            .await
            .status,
        200
    );
    assert_eq!(
        received(&m.seen, "/api/c").traceparent.as_deref(),
        Some(unsampled.as_str()),
        "not recorded: passed through untouched"
    );

    // (e) malformed traceparents are replaced; the request succeeds.
    for (i, bad) in [
        "garbage",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
    ]
    .into_iter()
    .enumerate()
    {
        let path = format!("/api/e{i}");
        let r = send_tp(&c, &m, &path, &[("traceparent", bad)]).await;
        assert_eq!(r.status, 200, "{bad}");
        let got = received(&m.seen, &path);
        let tp = got.traceparent.expect("replaced");
        let (t, _, flags) = parts(&tp);
        assert_eq!(t.len(), 32, "{tp}");
        assert_ne!(t.to_ascii_lowercase(), trace, "{bad}: a new trace");
        assert_eq!(flags, "01");
        let spans = collector.wait(&t, 2).await;
        let (out, _) = hops(&spans, &m);
        assert_eq!(out.parent, "", "{bad}: the bad parent is not used");
    }

    // Errors and gRPC status: the app's 503 and a trailers-only gRPC error.
    let t503 = "503503503503503503503503503503ab";
    let tp503 = format!("00-{t503}-{client_parent}-01");
    let r = send_tp(&c, &m, "/status/503", &[("traceparent", &tp503)]).await;
    assert_eq!(r.status, 503);
    let tgrpc = "14141414141414141414141414141414";
    let tpgrpc = format!("00-{tgrpc}-{client_parent}-01");
    assert_eq!(
        send_tp(&c, &m, "/grpc", &[("traceparent", &tpgrpc)])
            .await
            .status,
        200
    );
    let (out, inb) = hops(&collector.wait(t503, 2).await, &m);
    for s in [&out, &inb] {
        assert!(s.error, "a 503 is an error: {s:#?}");
        assert_eq!(s.attrs["http.response.status_code"], "503");
    }
    let (out, inb) = hops(&collector.wait(tgrpc, 2).await, &m);
    for s in [&out, &inb] {
        assert_eq!(s.attrs["rpc.grpc.status_code"], "14", "{s:#?}");
    }

    // (c), checked: the unsampled request left no span (later requests' spans are in).
    assert!(collector.of(&"1".repeat(32)).is_empty());

    // The access log names the trace actually used, started here or received.
    let log = pki.path().join("fe-access.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if lines.len() >= 9 || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let by_path = |p: &str| {
        lines
            .iter()
            .find(|l| l["path"] == p)
            .unwrap_or_else(|| panic!("no access log line for {p}: {lines:#?}"))["trace_id"]
            .clone()
    };
    assert_eq!(by_path("/api/a"), trace);
    assert_eq!(by_path("/api/b"), fresh.as_str(), "the trace started here");
    assert_eq!(by_path("/api/c"), "1".repeat(32).as_str());

    // (d) sampling reloads: at 0.0 a new trace is not sampled and exports nothing, while an
    // incoming sampled decision still wins.
    let zero = tracing_yaml(collector_addr, ", sampling: 0.0");
    m.orders.rewrite(&zero);
    m.fe.rewrite(&format!("{zero}{}", m.fe_rest));
    m.orders.wait_version(2).await;
    m.fe.wait_version(2).await;
    assert_eq!(send_tp(&c, &m, "/api/d", &[]).await.status, 200);
    let (t_unsampled, _, flags) = parts(
        received(&m.seen, "/api/d")
            .traceparent
            .as_deref()
            .expect("created"),
    );
    assert_eq!(flags, "00", "sampling 0.0 samples no new trace");
    let marker = "d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0";
    let tp_marker = format!("00-{marker}-{client_parent}-01");
    assert_eq!(
        send_tp(&c, &m, "/api/d2", &[("traceparent", &tp_marker)])
            .await
            .status,
        200
    );
    hops(&collector.wait(marker, 2).await, &m);
    assert!(
        collector.of(&t_unsampled).is_empty(),
        "no span for an unsampled new trace"
    );

    // The collector cannot change on reload.
    let elsewhere = tracing_yaml(
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        ", sampling: 0.0",
    );
    m.orders.rewrite(&elsewhere);
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(m.orders.admin, "weft_config_rejected_total", &[]).await < 1.0 {
        assert!(Instant::now() < deadline, "{}", m.orders.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(m.orders.version().await, 2);
    assert!(m
        .orders
        .log_text()
        .contains("tracing.collector: cannot change without a restart"));

    for s in [&m.fe, &m.orders] {
        assert_eq!(
            metric(s.admin, "weft_trace_spans_dropped_total", &[]).await,
            0.0
        );
        assert_eq!(
            metric(s.admin, "weft_trace_export_errors_total", &[]).await,
            0.0
        );
        // a, b, e0 to e3, 503, grpc and the marker: nine sampled requests, a span each.
        assert_eq!(
            metric(s.admin, "weft_trace_spans_exported_total", &[]).await,
            9.0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_never_slows_traffic() {
    let pki = Pki::new(91);
    let closed = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let m = mesh(&pki, &tracing_yaml(closed, ", sampling: 1.0"), false).await;
    let c = client();
    for i in 0..20 {
        let start = Instant::now();
        let r = send_tp(&c, &m, &format!("/api/{i}"), &[]).await;
        assert_eq!(r.status, 200);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "request {i} took {:?}",
            start.elapsed()
        );
        // The app still gets a trace id.
        assert!(received(&m.seen, &format!("/api/{i}"))
            .traceparent
            .is_some());
    }
    for s in [&m.fe, &m.orders] {
        let deadline = Instant::now() + Duration::from_secs(10);
        let failed = [("reason", "export_failed")];
        while metric(s.admin, "weft_trace_export_errors_total", &[]).await < 1.0
            || metric(s.admin, "weft_trace_spans_dropped_total", &failed).await < 1.0
        {
            assert!(Instant::now() < deadline, "{}", s.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            metric(s.admin, "weft_trace_spans_exported_total", &[]).await,
            0.0
        );
        assert!(s.log_text().contains("trace export to"), "{}", s.log_text());
    }
    // Export failures never touch request outcomes.
    assert_eq!(
        metric(
            m.fe.admin,
            "weft_responses_total",
            &[("direction", "outbound"), ("status_code", "200")]
        )
        .await,
        20.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_still_queued_at_sigterm_are_flushed() {
    let pki = Pki::new(92);
    let (collector_addr, collector) = Collector::start().await;
    // A minute between exports: only the exit flush can send these spans in time.
    let tracing = format!(
        "tracing: {{collector: \"http://{collector_addr}\", sampling: 1.0, export_interval: 60s}}\n"
    );
    let mut m = mesh(&pki, &tracing, false).await;
    let c = client();
    let trace = "fe0fe0fe0fe0fe0fe0fe0fe0fe0fe0fe";
    let tp = format!("00-{trace}-00f067aa0ba902b7-01");
    assert_eq!(
        send_tp(&c, &m, "/api/x", &[("traceparent", &tp)])
            .await
            .status,
        200
    );
    // Showing that nothing is exported before the flush: no event to wait for.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(collector.of(trace).is_empty(), "exported before the flush");
    m.fe.signal(nix::sys::signal::Signal::SIGTERM);
    m.orders.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(m.fe.wait_exit(Duration::from_secs(10)).await, Some(0));
    assert_eq!(m.orders.wait_exit(Duration::from_secs(10)).await, Some(0));
    hops(&collector.wait(trace, 2).await, &m);
}
