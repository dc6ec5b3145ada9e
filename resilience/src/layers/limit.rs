//! Concurrency limit: a [`ConcurrencyLimiter`] in front of the wrapped service.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower_layer::Layer;
use tower_service::Service;

use super::{BoxFuture, IntoLayerError, LayerError};
use crate::limiter::ConcurrencyLimiter;

/// Limits requests in flight, queueing a bounded number for a bounded time and rejecting
/// the rest with [`LayerError::Overloaded`].
///
/// A request holds its slot until the wrapped service's future completes (response
/// headers), not while the body streams. Each [`Layer::layer`] call builds its own limiter;
/// clones of the service share it.
#[derive(Debug, Clone, Copy)]
pub struct ConcurrencyLimitLayer {
    max_in_flight: usize,
    max_pending: usize,
    max_wait: Duration,
}

impl ConcurrencyLimitLayer {
    /// See [`ConcurrencyLimiter::new`] for the limits; a queued request waits at most
    /// `max_wait`.
    pub fn new(max_in_flight: usize, max_pending: usize, max_wait: Duration) -> Self {
        Self {
            max_in_flight,
            max_pending,
            max_wait,
        }
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;

    fn layer(&self, inner: S) -> ConcurrencyLimit<S> {
        ConcurrencyLimit {
            inner,
            limiter: ConcurrencyLimiter::new(self.max_in_flight, self.max_pending),
            max_wait: self.max_wait,
        }
    }
}

/// The service built by [`ConcurrencyLimitLayer`].
#[derive(Debug, Clone)]
pub struct ConcurrencyLimit<S> {
    inner: S,
    limiter: Arc<ConcurrencyLimiter>,
    max_wait: Duration,
}

impl<S> ConcurrencyLimit<S> {
    /// The limiter (for metrics).
    pub fn limiter(&self) -> &Arc<ConcurrencyLimiter> {
        &self.limiter
    }
}

impl<S, Req> Service<Req> for ConcurrencyLimit<S>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: IntoLayerError,
    <S::Error as IntoLayerError>::Root: Send + 'static,
    S::Response: Send + 'static,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = LayerError<<S::Error as IntoLayerError>::Root>;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(IntoLayerError::into_layer_error)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // The call may wait for a slot, so it takes the instance polled ready along.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let (limiter, max_wait) = (Arc::clone(&self.limiter), self.max_wait);
        Box::pin(async move {
            let permit = limiter
                .acquire(max_wait)
                .await
                .map_err(LayerError::Overloaded)?;
            let result = inner.call(req).await;
            drop(permit);
            result.map_err(IntoLayerError::into_layer_error)
        })
    }
}
