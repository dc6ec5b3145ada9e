//! The sidecar's one monotonic clock. The resilience core never reads a clock itself (its
//! tests run on virtual time); the request path, the balancer's EWMA and the TCP idle
//! watchdog all read this one, so their timestamps compare.

use std::sync::OnceLock;

use weft_resilience::Nanos;

/// Nanoseconds on the process's monotonic clock (from its first use).
pub fn now() -> Nanos {
    static CLOCK: OnceLock<weft_resilience::Clock> = OnceLock::new();
    CLOCK.get_or_init(weft_resilience::Clock::new).now()
}
