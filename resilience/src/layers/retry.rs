//! Retries by [`RetryPolicy::decide`], charged to a shared [`RetryBudget`].

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{request::Parts, Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use super::{BoxFuture, ClassifyError, IntoLayerError, LayerError};
use crate::budget::RetryBudget;
use crate::clock::Clock;
use crate::retry::{parse_grpc_status, Attempt, Decision, Outcome, RetryPolicy};

/// Retries requests by a [`RetryPolicy`] within a [`RetryBudget`].
///
/// The request body type must be `Clone` (e.g. `http_body_util::Full<Bytes>`): each attempt
/// sends a clone. Responses are classified by status and `grpc-status` header, errors by
/// [`ClassifyError`]; each original request is deposited into the budget.
#[derive(Debug, Clone)]
pub struct RetryLayer {
    policy: Arc<RetryPolicy>,
    budget: Arc<RetryBudget>,
    clock: Clock,
}

impl RetryLayer {
    /// Retry by `policy`, drawing retries from `budget` (share one budget per destination).
    pub fn new(policy: RetryPolicy, budget: Arc<RetryBudget>) -> Self {
        Self {
            policy: Arc::new(policy),
            budget,
            clock: Clock::new(),
        }
    }

    /// Use `clock` for the budget's time, e.g. the clock of other users of the same budget.
    pub fn with_clock(self, clock: Clock) -> Self {
        Self { clock, ..self }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            policy: Arc::clone(&self.policy),
            budget: Arc::clone(&self.budget),
            clock: self.clock,
        }
    }
}

/// The service built by [`RetryLayer`].
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    policy: Arc<RetryPolicy>,
    budget: Arc<RetryBudget>,
    clock: Clock,
}

impl<S> Retry<S> {
    /// The budget retries are drawn from.
    pub fn budget(&self) -> &Arc<RetryBudget> {
        &self.budget
    }
}

impl<S, B, R> Service<Request<B>> for Retry<S>
where
    S: Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: IntoLayerError,
    <S::Error as IntoLayerError>::Root: ClassifyError + Send + 'static,
    B: Clone + Send + 'static,
    R: Send + 'static,
{
    type Response = Response<R>;
    type Error = LayerError<<S::Error as IntoLayerError>::Root>;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(IntoLayerError::into_layer_error)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The instance polled ready goes with this call; a fresh clone stays for the next.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let (policy, budget, clock) = (self.policy.clone(), self.budget.clone(), self.clock);
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            budget.deposit(clock.now());
            let idempotent = parts.method.is_idempotent();
            let timeout = policy.per_try_timeout;
            let mut made = 1;
            let mut result = send(&mut inner, &parts, &body, timeout).await;
            // Bounded by max_attempts; `decide` stops there too, this only makes it visible.
            while made < policy.max_attempts {
                let Some(outcome) = classify(&result) else {
                    break;
                };
                let attempt = Attempt {
                    attempts_made: made,
                    idempotent,
                    body_replayable: true,
                };
                let Decision::Retry { backoff } =
                    policy.decide(&outcome, attempt, &budget, clock.now(), fastrand::f64())
                else {
                    break;
                };
                // Release the failed response (and its connection) before waiting.
                drop(result);
                tokio::time::sleep(backoff).await;
                std::future::poll_fn(|cx| inner.poll_ready(cx))
                    .await
                    .map_err(IntoLayerError::into_layer_error)?;
                made += 1;
                result = send(&mut inner, &parts, &body, timeout).await;
            }
            result
        })
    }
}

/// One attempt, under the per-try timeout if there is one.
///
/// Not an `async fn`: the request is built before the future, which so holds no borrow of
/// the body and does not need `B: Sync` to be `Send`.
fn send<S, B, R>(
    inner: &mut S,
    parts: &Parts,
    body: &B,
    timeout: Option<Duration>,
) -> impl Future<Output = Result<Response<R>, LayerError<<S::Error as IntoLayerError>::Root>>>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Error: IntoLayerError,
    B: Clone,
{
    let call = inner.call(Request::from_parts(parts.clone(), body.clone()));
    async move {
        let result = match timeout {
            None => call.await,
            Some(limit) => match tokio::time::timeout(limit, call).await {
                Ok(result) => result,
                Err(_) => return Err(LayerError::PerTryTimeout),
            },
        };
        result.map_err(IntoLayerError::into_layer_error)
    }
}

/// The outcome of an attempt, or `None` for a local rejection (never retried).
fn classify<R, E: ClassifyError>(result: &Result<Response<R>, LayerError<E>>) -> Option<Outcome> {
    match result {
        Ok(response) => Some(Outcome::from_response(
            response.status().as_u16(),
            response
                .headers()
                .get("grpc-status")
                .and_then(|v| parse_grpc_status(v.as_bytes())),
        )),
        Err(e) => e.outcome(),
    }
}
