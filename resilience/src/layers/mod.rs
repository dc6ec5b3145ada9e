//! Tower front end: the core's rules as `tower` layers around an `http` client service
//! (e.g. a `hyper_util` legacy `Client`), so a Rust service can embed the mesh's resilience
//! in-process.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use std::{sync::Arc, time::Duration};
//!
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper_util::{client::legacy::Client, rt::TokioExecutor};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use weft_resilience::layers::{
//!     CircuitBreakerLayer, ConcurrencyLimitLayer, RateLimitLayer, RetryLayer,
//! };
//! use weft_resilience::{OutlierConfig, RetryBudget, RetryPolicy};
//!
//! let hyper_client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
//! let budget = Arc::new(RetryBudget::default());
//! let mut client = ServiceBuilder::new()
//!     // Outermost, so the breaker and the limits below see every attempt.
//!     .layer(RetryLayer::new(RetryPolicy::default_policy(), budget))
//!     .layer(CircuitBreakerLayer::new(OutlierConfig::default()))
//!     .layer(ConcurrencyLimitLayer::new(100, 10, Duration::from_millis(50)))
//!     .layer(RateLimitLayer::new(200.0, 50))
//!     .service(hyper_client);
//! let request = http::Request::get("http://orders.internal/").body(Full::new(Bytes::new()))?;
//! let response = client.ready().await?.call(request).await?;
//! # drop(response);
//! # Ok(())
//! # }
//! ```
//!
//! Every layer's error is a flat [`LayerError<E>`] over the client's own error `E`, however
//! many layers are stacked: a layer passes inner [`LayerError`]s through unchanged (see
//! [`IntoLayerError`]). Rejections made locally (breaker open, overloaded, rate limited) are
//! never retried: they say nothing about the upstream, and retrying one into the same
//! full limiter only adds load.
//!
//! Futures are boxed: one allocation per call, a fair price in a client library and the
//! reason the sidecar drives the core directly instead.

mod breaker;
mod limit;
mod rate;
mod retry;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub use breaker::{CircuitBreaker, CircuitBreakerLayer};
pub use limit::{ConcurrencyLimit, ConcurrencyLimitLayer};
pub use rate::{RateLimit, RateLimitLayer};
pub use retry::{Retry, RetryLayer};

use crate::limiter::Rejected;
use crate::retry::Outcome;

/// The boxed response future of every layer.
pub type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'static>>;

/// Error of a resilience layer over a client whose own error is `E`.
#[derive(Debug, thiserror::Error)]
pub enum LayerError<E> {
    /// The wrapped client failed.
    #[error(transparent)]
    Inner(E),
    /// The circuit breaker is open: the request was failed fast without being sent.
    #[error("circuit breaker open")]
    BreakerOpen,
    /// The concurrency limit turned the request away.
    #[error("overloaded: {0}")]
    Overloaded(Rejected),
    /// The rate limit turned the request away; a token is due after `retry_after`.
    #[error("rate limited, retry after {retry_after:?}")]
    RateLimited {
        /// How long until the rate limit would admit a request.
        retry_after: Duration,
    },
    /// The last attempt hit the retry policy's per-try timeout.
    #[error("per-try timeout")]
    PerTryTimeout,
}

impl<E: ClassifyError> LayerError<E> {
    /// What this error says about the upstream, or `None` for a local rejection.
    pub fn outcome(&self) -> Option<Outcome> {
        match self {
            Self::Inner(e) => Some(e.outcome()),
            Self::PerTryTimeout => Some(Outcome::PerTryTimeout),
            Self::BreakerOpen | Self::Overloaded(_) | Self::RateLimited { .. } => None,
        }
    }
}

/// Errors a layer's inner service may return: a client's own error, wrapped as
/// [`LayerError::Inner`], or a [`LayerError`] from a layer further in, passed through as is
/// so stacked layers do not nest.
///
/// Implemented for the usual client errors; implement it for your client's error type as
/// `LayerError::Inner(self)` with `Root = Self`.
pub trait IntoLayerError {
    /// The client's own error type.
    type Root;
    /// Convert, keeping an existing `LayerError` flat.
    fn into_layer_error(self) -> LayerError<Self::Root>;
}

impl<E> IntoLayerError for LayerError<E> {
    type Root = E;
    fn into_layer_error(self) -> Self {
        self
    }
}

macro_rules! root_error {
    ($($t:ty),*) => {$(
        impl IntoLayerError for $t {
            type Root = Self;
            fn into_layer_error(self) -> LayerError<Self> {
                LayerError::Inner(self)
            }
        }
    )*};
}

root_error!(
    hyper_util::client::legacy::Error,
    std::io::Error,
    std::convert::Infallible,
    tower::BoxError
);

/// Maps a client error to the retry [`Outcome`] it represents.
pub trait ClassifyError {
    /// The outcome of an attempt that failed with this error.
    fn outcome(&self) -> Outcome;
}

impl ClassifyError for hyper_util::client::legacy::Error {
    /// A connect error never reached the upstream; anything else broke mid-request.
    fn outcome(&self) -> Outcome {
        if self.is_connect() {
            Outcome::ConnectFailure
        } else {
            Outcome::Reset
        }
    }
}

impl ClassifyError for std::io::Error {
    fn outcome(&self) -> Outcome {
        match self.kind() {
            std::io::ErrorKind::ConnectionRefused => Outcome::ConnectFailure,
            _ => Outcome::Reset,
        }
    }
}

impl ClassifyError for std::convert::Infallible {
    fn outcome(&self) -> Outcome {
        match *self {}
    }
}

impl ClassifyError for tower::BoxError {
    /// Classifies a boxed hyper-util client or I/O error as such, anything else as a reset.
    fn outcome(&self) -> Outcome {
        if let Some(e) = self.downcast_ref::<hyper_util::client::legacy::Error>() {
            e.outcome()
        } else if let Some(e) = self.downcast_ref::<std::io::Error>() {
            e.outcome()
        } else {
            Outcome::Reset
        }
    }
}

#[cfg(test)]
mod tests;
