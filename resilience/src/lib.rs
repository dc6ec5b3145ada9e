//! Resilience for Weft: retry policy and budget, outlier ejection (circuit breaking),
//! concurrency and rate limits, and fault injection.
//!
//! One core, two front ends. The core modules are I/O-free state machines: they never read a
//! clock (every call takes `now: Nanos` from the caller), never sleep and never lock, so the
//! rules are tested on virtual time and behave the same wherever they run. Two front ends
//! drive them:
//!
//! * the Weft sidecar calls the core directly from its Pingora hooks;
//! * [`layers`] wraps the same core as `tower` layers, so a Rust service can embed the mesh's
//!   resilience in-process around an `http` client.
//!
//! Retryability in particular is decided in one place, [`retry::RetryPolicy::decide`], which
//! both front ends call.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod budget;
pub mod clock;
pub mod fault;
pub mod layers;
pub mod limiter;
pub mod outlier;
pub mod rate;
pub mod retry;

pub use backoff::Backoff;
pub use budget::{BudgetConfig, RetryBudget};
pub use clock::{Clock, Nanos};
pub use fault::{Fault, FaultDecision};
pub use limiter::{ConcurrencyLimiter, Permit, Rejected};
pub use outlier::{
    Admission, EndpointHealth, HealthState, OutlierConfig, OutlierDetector, Transition,
};
pub use rate::{KeyedBuckets, TokenBucket};
pub use retry::{
    grpc_code_from_name, Attempt, Decision, Outcome, RetryOn, RetryPolicy, StopReason,
};
