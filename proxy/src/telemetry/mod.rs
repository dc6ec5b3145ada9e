//! What the sidecar tells about the traffic it carries: Prometheus [`metrics`], the JSON
//! [`access_log`] and OTLP spans ([`trace`]).

pub mod access_log;
pub mod events;
pub mod hop;
pub mod metrics;
pub mod names;
pub mod trace;
