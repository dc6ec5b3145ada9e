//! Setting up what the benchmark measures: the sample app and a pair of Weft
//! sidecars (certificates, configs, processes pinned with `taskset`), the
//! resilience scenarios' processes ([`ResilienceMesh`]), and tearing it all
//! down again.
//!
//! The pieces: the processes ([`process`]), talking to them ([`net`]), identities and
//! sidecar configs ([`sidecar`]) and the benchmark's own pair ([`pair`]). The observability
//! and resilience scenarios keep their processes in their own modules, built on these.

pub mod net;
pub mod pair;
pub mod process;
pub mod sidecar;

pub use net::*;
pub use pair::*;
pub use process::*;
pub use sidecar::*;
