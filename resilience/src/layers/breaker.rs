//! A circuit breaker: [`OutlierDetector`] over the one endpoint a service stands for.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use super::{BoxFuture, IntoLayerError, LayerError};
use crate::clock::{Clock, Nanos};
use crate::outlier::{Admission, EndpointHealth, OutlierConfig, OutlierDetector};

/// Fails requests fast while the wrapped service is ejected.
///
/// A 5xx response or an error from the wrapped service counts as a failure; local
/// rejections from layers further in count as neither. With one endpoint the
/// `max_ejected_percent` cap always allows the ejection. Each [`Layer::layer`] call builds a
/// breaker with its own state; clones of the service share it.
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer {
    cfg: OutlierConfig,
    clock: Clock,
}

impl CircuitBreakerLayer {
    /// Break after `cfg.consecutive_failures` failures in a row, for `cfg`'s ejection times.
    pub fn new(cfg: OutlierConfig) -> Self {
        Self {
            cfg,
            clock: Clock::new(),
        }
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreaker<S>;

    fn layer(&self, inner: S) -> CircuitBreaker<S> {
        let health = vec![Arc::new(EndpointHealth::default())];
        CircuitBreaker {
            inner,
            detector: Arc::new(OutlierDetector::new(self.cfg, health)),
            clock: self.clock,
        }
    }
}

/// The service built by [`CircuitBreakerLayer`].
#[derive(Debug, Clone)]
pub struct CircuitBreaker<S> {
    inner: S,
    detector: Arc<OutlierDetector>,
    clock: Clock,
}

impl<S> CircuitBreaker<S> {
    /// The breaker's state, as endpoint 0 of a one-endpoint detector (for metrics).
    pub fn detector(&self) -> &Arc<OutlierDetector> {
        &self.detector
    }
}

impl<S, B, R> Service<Request<B>> for CircuitBreaker<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
    S::Error: IntoLayerError,
    <S::Error as IntoLayerError>::Root: Send + 'static,
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
        let admitted_at = self.clock.now();
        let admission = self.detector.admit(0, admitted_at);
        if admission == Admission::Rejected {
            return Box::pin(std::future::ready(Err(LayerError::BreakerOpen)));
        }
        let call = self.inner.call(req);
        let mut probe = ProbeSlot {
            detector: Arc::clone(&self.detector),
            admitted_at,
            held: admission == Admission::Probe,
        };
        let clock = self.clock;
        Box::pin(async move {
            let result = call.await.map_err(IntoLayerError::into_layer_error);
            let success = match &result {
                Ok(response) => Some(!response.status().is_server_error()),
                Err(LayerError::Inner(_) | LayerError::PerTryTimeout) => Some(false),
                // Turned away further in: the upstream was not tried.
                Err(_) => None,
            };
            if let Some(success) = success {
                probe.held = false;
                probe
                    .detector
                    .record_admitted(0, admission, success, clock.now());
            }
            result
        })
    }
}

/// Frees a claimed probe slot if the probe ends without an outcome (cancelled or turned
/// away further in), so the next request can probe at once instead of after the timeout.
struct ProbeSlot {
    detector: Arc<OutlierDetector>,
    admitted_at: Nanos,
    held: bool,
}

impl Drop for ProbeSlot {
    fn drop(&mut self) {
        if self.held {
            self.detector.abandon_probe(0, self.admitted_at);
        }
    }
}
