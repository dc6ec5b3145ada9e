//! Rate limit: a [`TokenBucket`] in front of the wrapped service.

use std::sync::Arc;
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use super::{BoxFuture, IntoLayerError, LayerError};
use crate::clock::Clock;
use crate::rate::TokenBucket;

/// Admits `per_second` requests with bursts of `burst`, rejecting the rest at once with
/// [`LayerError::RateLimited`] and the time until a token is due. Each [`Layer::layer`] call
/// builds its own bucket; clones of the service share it.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    per_second: f64,
    burst: u32,
    clock: Clock,
}

impl RateLimitLayer {
    /// See [`TokenBucket::new`].
    pub fn new(per_second: f64, burst: u32) -> Self {
        Self {
            per_second,
            burst,
            clock: Clock::new(),
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            bucket: Arc::new(TokenBucket::new(self.per_second, self.burst)),
            clock: self.clock,
        }
    }
}

/// The service built by [`RateLimitLayer`].
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    bucket: Arc<TokenBucket>,
    clock: Clock,
}

impl<S, Req> Service<Req> for RateLimit<S>
where
    S: Service<Req>,
    S::Future: Send + 'static,
    S::Error: IntoLayerError,
    <S::Error as IntoLayerError>::Root: Send + 'static,
    S::Response: Send + 'static,
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
        if let Err(retry_after) = self.bucket.try_take(self.clock.now()) {
            return Box::pin(std::future::ready(Err(LayerError::RateLimited {
                retry_after,
            })));
        }
        let call = self.inner.call(req);
        Box::pin(async move { call.await.map_err(IntoLayerError::into_layer_error) })
    }
}
