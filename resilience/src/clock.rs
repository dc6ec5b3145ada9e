//! Explicit time. The core never reads a clock: callers pass `now` so tests run on virtual
//! time and one request's decisions all see the same instant.

use tokio::time::Instant;

/// Nanoseconds on a monotonic clock chosen by the caller (only differences matter).
pub type Nanos = u64;

/// Converts a duration to [`Nanos`], saturating (u64 nanoseconds last 584 years).
pub fn nanos(d: std::time::Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A monotonic clock as [`Nanos`] since its creation.
///
/// Built on `tokio::time::Instant`, so under paused tokio time (tests) it reads virtual time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

impl Clock {
    /// A clock whose zero is now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }

    /// Nanoseconds elapsed since this clock was created.
    pub fn now(&self) -> Nanos {
        nanos(self.origin.elapsed())
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn follows_paused_time() {
        let clock = Clock::new();
        assert_eq!(clock.now(), 0);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(clock.now(), 1_500_000_000);
    }

    #[test]
    fn nanos_saturates() {
        assert_eq!(nanos(Duration::MAX), u64::MAX);
        assert_eq!(nanos(Duration::from_micros(3)), 3_000);
    }
}
