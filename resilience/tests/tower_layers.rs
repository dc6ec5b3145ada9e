//! The tower layers around a real `hyper_util` client talking HTTP/1 to real local servers
//! that fail in controlled ways; every server counts the requests it received.
//!
//! Real sockets need real time, so these tests run on the real clock with short durations
//! and bounded loops (the virtual-time tests live next to the layers).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use weft_resilience::layers::{
    CircuitBreakerLayer, ConcurrencyLimitLayer, LayerError, RateLimitLayer, RetryLayer,
};
use weft_resilience::{
    Backoff, BudgetConfig, Clock, OutlierConfig, Rejected, RetryBudget, RetryOn, RetryPolicy,
};

const MS: Duration = Duration::from_millis(1);

type Answer = Pin<Box<dyn Future<Output = StatusCode> + Send>>;
type HttpClient = Client<HttpConnector, Full<Bytes>>;
type Error = LayerError<hyper_util::client::legacy::Error>;

/// A local HTTP/1 server answering its request number `n` (from 0) with `answer(n)`.
struct Server {
    addr: SocketAddr,
    hits: Arc<AtomicU32>,
    accept: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(answer: impl Fn(u32) -> Answer + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicU32::new(0));
        let answer = Arc::new(answer);
        let counter = hits.clone();
        // Runs until the server is dropped (aborted) or the test's runtime ends.
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (answer, hits) = (answer.clone(), counter.clone());
                let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    let status = answer(hits.fetch_add(1, SeqCst));
                    async move {
                        let mut response = Response::new(Full::new(Bytes::new()));
                        *response.status_mut() = status.await;
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Self { addr, hits, accept }
    }

    /// A server answering `status(n)` at once.
    async fn scripted(status: impl Fn(u32) -> u16 + Send + Sync + 'static) -> Self {
        Self::start(move |n| {
            let s = StatusCode::from_u16(status(n)).expect("status");
            Box::pin(async move { s })
        })
        .await
    }

    fn hits(&self) -> u32 {
        self.hits.load(SeqCst)
    }

    fn request(&self) -> Request<Full<Bytes>> {
        Request::get(format!("http://{}/", self.addr))
            .body(Full::new(Bytes::new()))
            .expect("request")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Send one request; its status, or the layers' error.
async fn send<S>(svc: &mut S, req: Request<Full<Bytes>>) -> Result<u16, Error>
where
    S: Service<Request<Full<Bytes>>, Response = Response<Incoming>, Error = Error>,
{
    let response = svc.ready().await?.call(req).await?;
    Ok(response.status().as_u16())
}

fn fast_backoff() -> Backoff {
    Backoff {
        base: MS,
        max: 2 * MS,
    }
}

fn on_gateway_errors(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        on: RetryOn {
            gateway_error: true,
            ..RetryOn::default()
        },
        max_attempts,
        backoff: fast_backoff(),
        ..RetryPolicy::default_policy()
    }
}

#[tokio::test]
async fn retries_make_a_flaky_server_succeed() {
    // Every other request fails.
    let server = Server::scripted(|n| if n % 2 == 0 { 503 } else { 200 }).await;
    let budget = Arc::new(RetryBudget::default());
    // The whole stack, composed as a client would; limits loose enough not to interfere.
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(on_gateway_errors(3), budget))
        .layer(CircuitBreakerLayer::new(OutlierConfig::default()))
        .layer(ConcurrencyLimitLayer::new(16, 16, Duration::from_secs(1)))
        .layer(RateLimitLayer::new(10_000.0, 1_000))
        .service(client());
    for _ in 0..20 {
        assert_eq!(send(&mut svc, server.request()).await.ok(), Some(200));
    }
    assert_eq!(
        server.hits(),
        40,
        "each request failed once and was retried"
    );
}

#[tokio::test]
async fn budget_caps_retries_against_a_failing_server() {
    let server = Server::scripted(|_| 503).await;
    // 1 retry/s over 10 s = 10, plus 20 % of the requests.
    let budget = Arc::new(RetryBudget::new(BudgetConfig {
        ratio: 0.2,
        min_per_second: 1,
        window: Duration::from_secs(10),
    }));
    let clock = Clock::new();
    let mut svc = RetryLayer::new(on_gateway_errors(3), budget.clone())
        .with_clock(clock)
        .layer(client());
    for _ in 0..50 {
        assert_eq!(send(&mut svc, server.request()).await.ok(), Some(503));
    }
    // Sequential requests make the arithmetic exact: the allowance reaches 10 + 0.2 × 50.
    assert_eq!(budget.totals(clock.now()), (50, 20));
    // Without the budget the server would have seen 150 attempts.
    assert_eq!(server.hits(), 70);
}

#[tokio::test]
async fn connect_failures_are_retried_and_reported() {
    // A port nobody listens on: bind one, then free it.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let budget = Arc::new(RetryBudget::default());
    let clock = Clock::new();
    let mut svc = RetryLayer::new(RetryPolicy::default_policy(), budget.clone())
        .with_clock(clock)
        .layer(client());
    let req = Request::get(format!("http://{addr}/"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    match send(&mut svc, req).await {
        Err(LayerError::Inner(e)) => assert!(e.is_connect(), "{e}"),
        other => panic!("expected a connect error, got {other:?}"),
    }
    assert_eq!(
        budget.totals(clock.now()),
        (1, 1),
        "retried once, as by default"
    );
}

#[tokio::test]
async fn breaker_fails_fast_then_a_probe_restores_traffic() {
    let healthy = Arc::new(AtomicBool::new(false));
    let server = {
        let healthy = healthy.clone();
        Server::scripted(move |_| if healthy.load(SeqCst) { 200 } else { 500 }).await
    };
    let mut svc = CircuitBreakerLayer::new(OutlierConfig {
        consecutive_failures: 3,
        base_ejection: 500 * MS,
        ..OutlierConfig::default()
    })
    .layer(client());

    for _ in 0..3 {
        assert_eq!(send(&mut svc, server.request()).await.ok(), Some(500));
    }
    let start = Instant::now();
    for _ in 0..20 {
        assert!(matches!(
            send(&mut svc, server.request()).await,
            Err(LayerError::BreakerOpen)
        ));
    }
    // Well inside the ejection, so no probe has been due yet.
    assert!(
        start.elapsed() < 250 * MS,
        "failing fast took {:?}",
        start.elapsed()
    );
    assert_eq!(
        server.hits(),
        3,
        "open breaker kept requests off the server"
    );

    healthy.store(true, SeqCst);
    tokio::time::sleep(550 * MS).await;
    // The first request after the ejection is the probe; it succeeds and traffic resumes.
    for _ in 0..5 {
        assert_eq!(send(&mut svc, server.request()).await.ok(), Some(200));
    }
    assert_eq!(server.hits(), 3 + 5);
}

#[tokio::test]
async fn concurrency_limit_rejects_the_excess_fast() {
    // Requests hold the server until the test opens the gate.
    let gate = Arc::new(Semaphore::new(0));
    let server = {
        let gate = gate.clone();
        Server::start(move |_| {
            let gate = gate.clone();
            Box::pin(async move {
                let _pass = gate.acquire().await;
                StatusCode::OK
            })
        })
        .await
    };
    let svc = ConcurrencyLimitLayer::new(2, 0, Duration::ZERO).layer(client());
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let mut svc = svc.clone();
            let req = server.request();
            tokio::spawn(async move {
                let result = send(&mut svc, req).await;
                (result, Instant::now())
            })
        })
        .collect();

    // Bounded wait for the two admitted requests to reach the server.
    for _ in 0..200 {
        if server.hits() == 2 {
            break;
        }
        tokio::time::sleep(5 * MS).await;
    }
    assert_eq!(server.hits(), 2);
    let opened = Instant::now();
    gate.add_permits(5);

    let (mut ok, mut rejected) = (0, 0);
    for call in calls {
        match call.await.expect("task") {
            (Ok(200), _) => ok += 1,
            (Err(LayerError::Overloaded(Rejected::InFlight)), done) => {
                assert!(done < opened, "rejected without waiting for a slot");
                rejected += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((ok, rejected), (2, 3));
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn rate_limit_accepts_about_the_configured_number() {
    let server = Server::scripted(|_| 200).await;
    let (rate, burst) = (20.0, 5);
    let mut svc = RateLimitLayer::new(rate, burst).layer(client());
    let start = Instant::now();
    let (mut accepted, mut limited) = (0u32, 0u32);
    // 100 requests, one every 5 ms: about 0.5 s offered at 200/s.
    for _ in 0..100 {
        match send(&mut svc, server.request()).await {
            Ok(200) => accepted += 1,
            Err(LayerError::RateLimited { retry_after }) => {
                assert!(retry_after <= 50 * MS, "{retry_after:?}");
                limited += 1;
            }
            other => panic!("{other:?}"),
        }
        tokio::time::sleep(5 * MS).await;
    }
    let expected = f64::from(burst) + rate * start.elapsed().as_secs_f64();
    assert!(
        (f64::from(accepted) - expected).abs() <= 2.0,
        "accepted {accepted}, expected about {expected:.1}"
    );
    assert_eq!(accepted + limited, 100);
    assert_eq!(
        server.hits(),
        accepted,
        "rejected requests never left the client"
    );
}
