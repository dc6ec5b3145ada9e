//! The observability cost scenario: what access logs and tracing cost the
//! sidecar pair's saturation throughput, against the default settings.
//!
//! The same pair topology as the benchmark's weft scenario (client → outbound
//! sidecar → mTLS → inbound sidecar → the same app), one pair per
//! [`ObsVariant`], each started once with its own configs (access log and
//! collector are fixed for a sidecar's life) and kept for all runs; within
//! each run every variant is driven once, closed loop, one at a time, in an
//! order that rotates from run to run. The tracing variants export to a real
//! OTLP/gRPC collector inside the benchmark process
//! ([`crate::collector`]); after each run the sidecars' span and access-log
//! counters are read from their `/metrics`, so spans that were dropped
//! (which makes the measured cost too low) are reported.
//!
//! Metrics are always on (they cannot be turned off), so the baseline, the
//! default settings, includes them. The bound (observability at
//! default settings under 10 % of throughput) is checked as the cost of
//! turning the access logs on relative to that baseline
//! ([`MAX_ACCESS_LOG_COST_PCT`]).
//!
//! The pieces: what is varied ([`variant`]), what is read back from the sidecars
//! ([`telemetry`]), the processes ([`mesh`]) and the results ([`results`]).

pub mod mesh;
pub mod results;
pub mod telemetry;
pub mod variant;

pub use mesh::*;
pub use results::*;
pub use telemetry::*;
pub use variant::*;
