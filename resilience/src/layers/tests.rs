//! The layers on virtual time around a scripted in-memory service; the crate's integration
//! test drives them against a real HTTP server.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

use super::*;
use crate::backoff::Backoff;
use crate::budget::{BudgetConfig, RetryBudget};
use crate::outlier::OutlierConfig;
use crate::retry::{RetryOn, RetryPolicy};

const MS: Duration = Duration::from_millis(1);

#[derive(Clone, Copy)]
enum Reply {
    Status(u16),
    Grpc(u32),
    Refused,
    Hang,
}

/// A service answering call number `n` (from 0) with `script(n)` after `delay`.
#[derive(Clone)]
struct Mock {
    hits: Arc<AtomicU32>,
    script: Arc<dyn Fn(u32) -> Reply + Send + Sync>,
    delay: Duration,
}

impl Mock {
    fn new(script: impl Fn(u32) -> Reply + Send + Sync + 'static) -> Self {
        Self {
            hits: Arc::default(),
            script: Arc::new(script),
            delay: Duration::ZERO,
        }
    }

    fn hits(&self) -> u32 {
        self.hits.load(SeqCst)
    }
}

impl Service<Request<String>> for Mock {
    type Response = Response<String>;
    type Error = io::Error;
    type Future = BoxFuture<Response<String>, io::Error>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<String>) -> Self::Future {
        let reply = (self.script)(self.hits.fetch_add(1, SeqCst));
        let delay = self.delay;
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            let status = match reply {
                Reply::Status(s) => s,
                Reply::Grpc(code) => {
                    let mut r = Response::new(String::new());
                    r.headers_mut()
                        .insert("grpc-status", code.to_string().parse().expect("value"));
                    return Ok(r);
                }
                Reply::Refused => return Err(io::ErrorKind::ConnectionRefused.into()),
                Reply::Hang => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    200
                }
            };
            let mut r = Response::new(String::new());
            *r.status_mut() = http::StatusCode::from_u16(status).expect("status");
            Ok(r)
        })
    }
}

fn get() -> Request<String> {
    Request::new(String::new())
}

fn post() -> Request<String> {
    let mut r = get();
    *r.method_mut() = Method::POST;
    r
}

async fn send<S>(svc: &mut S, req: Request<String>) -> Result<u16, LayerError<io::Error>>
where
    S: Service<Request<String>, Response = Response<String>, Error = LayerError<io::Error>>,
{
    let response = svc.ready().await?.call(req).await?;
    Ok(response.status().as_u16())
}

fn retry_on(on: RetryOn, max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        on,
        max_attempts,
        ..RetryPolicy::default_policy()
    }
}

fn gateway() -> RetryOn {
    RetryOn {
        gateway_error: true,
        ..RetryOn::default()
    }
}

#[tokio::test(start_paused = true)]
async fn retry_turns_a_flaky_service_into_success() {
    let mock = Mock::new(|n| Reply::Status(if n % 2 == 0 { 503 } else { 200 }));
    let budget = Arc::new(RetryBudget::default());
    let mut svc = RetryLayer::new(retry_on(gateway(), 3), budget.clone()).layer(mock.clone());
    let start = Instant::now();
    for _ in 0..10 {
        assert_eq!(send(&mut svc, get()).await.ok(), Some(200));
    }
    assert_eq!(mock.hits(), 20);
    assert_eq!(budget.totals(0), (10, 10));
    // Ten first-retry backoffs, each under 25 ms.
    assert!(start.elapsed() <= 250 * MS, "{:?}", start.elapsed());
}

#[tokio::test(start_paused = true)]
async fn retry_waits_the_backoff_and_returns_the_last_response() {
    let mock = Mock::new(|_| Reply::Status(503));
    let policy = RetryPolicy {
        backoff: Backoff {
            base: 100 * MS,
            max: Duration::from_secs(1),
        },
        ..retry_on(gateway(), 4)
    };
    let mut svc = RetryLayer::new(policy, Arc::default()).layer(mock.clone());
    let start = Instant::now();
    assert_eq!(send(&mut svc, get()).await.ok(), Some(503));
    assert_eq!(mock.hits(), 4);
    assert!(start.elapsed() < 700 * MS, "{:?}", start.elapsed());
}

#[tokio::test(start_paused = true)]
async fn per_try_timeout_is_retried_then_reported() {
    let policy = RetryPolicy {
        per_try_timeout: Some(50 * MS),
        ..retry_on(
            RetryOn {
                timeout: true,
                ..RetryOn::default()
            },
            3,
        )
    };
    let mock = Mock::new(|n| {
        if n == 0 {
            Reply::Hang
        } else {
            Reply::Status(200)
        }
    });
    let mut svc = RetryLayer::new(policy.clone(), Arc::default()).layer(mock.clone());
    let start = Instant::now();
    assert_eq!(send(&mut svc, get()).await.ok(), Some(200));
    assert!(start.elapsed() >= 50 * MS);

    let hung = Mock::new(|_| Reply::Hang);
    let mut svc = RetryLayer::new(policy, Arc::default()).layer(hung.clone());
    assert!(matches!(
        send(&mut svc, get()).await,
        Err(LayerError::PerTryTimeout)
    ));
    assert_eq!(hung.hits(), 3);
}

#[tokio::test(start_paused = true)]
async fn post_is_retried_only_when_it_never_reached_the_app() {
    let on = RetryOn {
        connect_failure: true,
        server_error: true,
        ..RetryOn::default()
    };
    let failing = Mock::new(|_| Reply::Status(500));
    let mut svc = RetryLayer::new(retry_on(on.clone(), 3), Arc::default()).layer(failing.clone());
    assert_eq!(send(&mut svc, post()).await.ok(), Some(500));
    assert_eq!(failing.hits(), 1);

    let refusing = Mock::new(|n| {
        if n == 0 {
            Reply::Refused
        } else {
            Reply::Status(201)
        }
    });
    let mut svc = RetryLayer::new(retry_on(on, 3), Arc::default()).layer(refusing.clone());
    assert_eq!(send(&mut svc, post()).await.ok(), Some(201));
    assert_eq!(refusing.hits(), 2);
}

#[tokio::test(start_paused = true)]
async fn connect_errors_surface_once_attempts_run_out() {
    let refusing = Mock::new(|_| Reply::Refused);
    let mut svc =
        RetryLayer::new(RetryPolicy::default_policy(), Arc::default()).layer(refusing.clone());
    let err = send(&mut svc, get()).await.err();
    assert!(
        matches!(err, Some(LayerError::Inner(ref e)) if e.kind() == io::ErrorKind::ConnectionRefused)
    );
    assert_eq!(refusing.hits(), 2);
}

#[tokio::test(start_paused = true)]
async fn retry_on_grpc_status_header() {
    let mock = Mock::new(|n| {
        if n == 0 {
            Reply::Grpc(14)
        } else {
            Reply::Status(200)
        }
    });
    let on = RetryOn {
        grpc_codes: vec![14],
        ..RetryOn::default()
    };
    let mut svc = RetryLayer::new(retry_on(on, 2), Arc::default()).layer(mock.clone());
    assert_eq!(send(&mut svc, get()).await.ok(), Some(200));
    assert_eq!(mock.hits(), 2);
}

#[tokio::test(start_paused = true)]
async fn empty_budget_stops_retries() {
    let mock = Mock::new(|_| Reply::Status(503));
    let budget = Arc::new(RetryBudget::new(BudgetConfig {
        ratio: 0.0,
        min_per_second: 0,
        ..BudgetConfig::default()
    }));
    let mut svc = RetryLayer::new(retry_on(gateway(), 5), budget).layer(mock.clone());
    for _ in 0..5 {
        assert_eq!(send(&mut svc, get()).await.ok(), Some(503));
    }
    assert_eq!(mock.hits(), 5);
}

#[tokio::test(start_paused = true)]
async fn local_rejections_are_not_retried() {
    let mock = Mock::new(|_| Reply::Status(200));
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(retry_on(gateway(), 5), Arc::default()))
        .layer(RateLimitLayer::new(1.0, 1))
        .service(mock.clone());
    assert_eq!(send(&mut svc, get()).await.ok(), Some(200));
    assert!(matches!(
        send(&mut svc, get()).await,
        Err(LayerError::RateLimited { .. })
    ));
    assert_eq!(mock.hits(), 1);
}

fn breaker(failures: u32, base: Duration) -> CircuitBreakerLayer {
    CircuitBreakerLayer::new(OutlierConfig {
        consecutive_failures: failures,
        base_ejection: base,
        ..OutlierConfig::default()
    })
}

#[tokio::test(start_paused = true)]
async fn breaker_opens_fails_fast_and_recovers_through_a_probe() {
    let healthy = Arc::new(AtomicBool::new(false));
    let mock = {
        let healthy = healthy.clone();
        Mock::new(move |_| Reply::Status(if healthy.load(SeqCst) { 200 } else { 500 }))
    };
    let mut svc = breaker(3, Duration::from_secs(1)).layer(mock.clone());
    for _ in 0..3 {
        assert_eq!(send(&mut svc, get()).await.ok(), Some(500));
    }
    for _ in 0..10 {
        assert!(matches!(
            send(&mut svc, get()).await,
            Err(LayerError::BreakerOpen)
        ));
    }
    assert_eq!(mock.hits(), 3);

    // Still failing at the first probe: ejected again, for twice as long.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(send(&mut svc, get()).await.ok(), Some(500));
    assert_eq!(mock.hits(), 4);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(matches!(
        send(&mut svc, get()).await,
        Err(LayerError::BreakerOpen)
    ));

    healthy.store(true, SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    for _ in 0..5 {
        assert_eq!(send(&mut svc, get()).await.ok(), Some(200));
    }
    assert_eq!(mock.hits(), 9);
    assert_eq!(svc.detector().ejections(0), 2);
}

#[tokio::test(start_paused = true)]
async fn breaker_counts_errors_as_failures() {
    let mock = Mock::new(|_| Reply::Refused);
    let mut svc = breaker(2, Duration::from_secs(1)).layer(mock.clone());
    for _ in 0..2 {
        assert!(matches!(
            send(&mut svc, get()).await,
            Err(LayerError::Inner(_))
        ));
    }
    assert!(matches!(
        send(&mut svc, get()).await,
        Err(LayerError::BreakerOpen)
    ));
}

#[tokio::test(start_paused = true)]
async fn cancelled_probe_frees_the_slot() {
    let hang = Arc::new(AtomicBool::new(false));
    let mock = {
        let hang = hang.clone();
        Mock::new(move |_| {
            if hang.load(SeqCst) {
                Reply::Hang
            } else {
                Reply::Status(500)
            }
        })
    };
    let mut svc = breaker(1, Duration::from_secs(1)).layer(mock.clone());
    assert_eq!(send(&mut svc, get()).await.ok(), Some(500));
    tokio::time::sleep(Duration::from_secs(1)).await;
    hang.store(true, SeqCst);
    // The probe hangs and its caller gives up.
    let probe = svc.ready().await.map(|s| s.call(get()));
    assert!(tokio::time::timeout(100 * MS, probe.expect("ready"))
        .await
        .is_err());
    // Without the release this would be BreakerOpen for the 10 s probe timeout.
    hang.store(false, SeqCst);
    assert_eq!(send(&mut svc, get()).await.ok(), Some(500));
    assert_eq!(mock.hits(), 3);
}

#[tokio::test(start_paused = true)]
async fn concurrency_limit_queues_briefly_then_rejects() {
    let mut mock = Mock::new(|_| Reply::Status(200));
    mock.delay = 100 * MS;
    let mut svc = ConcurrencyLimitLayer::new(1, 1, 50 * MS).layer(mock.clone());
    let mut calls = vec![];
    for _ in 0..3 {
        calls.push(svc.ready().await.expect("ready").call(get()));
    }
    let [a, b, c] = <[_; 3]>::try_from(calls).ok().expect("three calls");
    let (a, b, c) = tokio::join!(a, b, c);
    assert_eq!(a.map(|r| r.status().as_u16()).ok(), Some(200));
    assert!(matches!(
        b,
        Err(LayerError::Overloaded(Rejected::QueueTimeout))
    ));
    assert!(matches!(c, Err(LayerError::Overloaded(Rejected::Pending))));
    assert_eq!(mock.hits(), 1);
    assert_eq!(svc.limiter().in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn rate_limit_reports_retry_after() {
    let mock = Mock::new(|_| Reply::Status(200));
    let mut svc = RateLimitLayer::new(10.0, 2).layer(mock.clone());
    assert_eq!(send(&mut svc, get()).await.ok(), Some(200));
    assert_eq!(send(&mut svc, get()).await.ok(), Some(200));
    match send(&mut svc, get()).await {
        Err(LayerError::RateLimited { retry_after }) => assert_eq!(retry_after, 100 * MS),
        other => panic!("{other:?}"),
    }
    tokio::time::sleep(100 * MS).await;
    assert_eq!(send(&mut svc, get()).await.ok(), Some(200));
    assert_eq!(mock.hits(), 3);
}

#[tokio::test(start_paused = true)]
async fn stacked_layers_keep_the_error_flat() {
    let mock = Mock::new(|_| Reply::Status(200));
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(
            RetryPolicy::default_policy(),
            Arc::default(),
        ))
        .layer(breaker(5, Duration::from_secs(10)))
        .layer(ConcurrencyLimitLayer::new(10, 0, Duration::ZERO))
        .layer(RateLimitLayer::new(100.0, 10))
        .service(mock);
    // `send` only accepts services whose error is exactly LayerError<io::Error>.
    assert_eq!(send(&mut svc, get()).await.ok(), Some(200));
}

#[test]
fn errors_display() {
    let e: LayerError<io::Error> = LayerError::Overloaded(Rejected::Pending);
    assert_eq!(
        e.to_string(),
        "overloaded: too many requests waiting for a slot"
    );
    let e: LayerError<io::Error> = LayerError::Inner(io::Error::other("boom"));
    assert_eq!(e.to_string(), "boom");
    assert_eq!(
        LayerError::<io::Error>::RateLimited {
            retry_after: 5 * MS
        }
        .to_string(),
        "rate limited, retry after 5ms"
    );
    assert!(LayerError::<io::Error>::BreakerOpen.outcome().is_none());
    assert_eq!(
        LayerError::Inner(io::Error::from(io::ErrorKind::ConnectionRefused)).outcome(),
        Some(crate::retry::Outcome::ConnectFailure)
    );
}
