//! The resilience scenarios: their sidecar configs (without and with the
//! resilience policies), their per-run records, medians and report section.
//!
//! * **One of three endpoints fails**: three instances of the service `app`,
//!   each behind its own inbound sidecar, one of them answering every request
//!   with 500; the client drives an outbound sidecar that lists the three
//!   endpoints, open loop at a fixed rate. Measured: the client-visible
//!   success rate (2xx share), successful requests per second and latency.
//!   Both variants run with the default balancer (P2C on peak-EWMA latency)
//!   and again with round robin: P2C charges every 5xx as a one-second
//!   answer and so, policies or not, all but stops sending to the failing
//!   endpoint; round robin keeps sending it a third of the requests, which
//!   is what shows what the policies themselves do.
//! * **Healthy path cost**: the benchmark's sidecar pair (one healthy
//!   endpoint), outbound config without vs. with the policies, saturation
//!   throughput. The policies must cost less than [`MAX_HEALTHY_COST_PCT`].
//!
//! They run after the pair's direct / weft runs. Each variant has its own
//! outbound sidecar (same binary, configs that differ only in the policy
//! fields and the balancer), started once and kept for all runs, so
//! the with-policies sidecar's outlier state carries over from run to run as
//! it would in production.
//!
//! The pieces: what is varied ([`variant`]), the outbound configs ([`config`]), the
//! processes ([`mesh`]) and the results ([`results`]).

pub mod config;
pub mod mesh;
pub mod results;
pub mod variant;

pub use config::*;
pub use mesh::*;
pub use results::*;
pub use variant::*;
