//! Waiting for an event with a deadline: a condition polled at a short interval, never a
//! sleep followed by an assertion.

use std::time::{Duration, Instant};

/// How often a condition is polled. Short enough that a test waits barely longer than the
/// event takes, long enough that polling an admin endpoint does not load a busy machine.
pub const POLL: Duration = Duration::from_millis(25);

/// Polls `ready` until it returns `Some`, and returns that value; panics naming `what` after
/// `limit`. The loop is bounded by the deadline.
pub fn until<T>(what: &str, limit: Duration, mut ready: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = ready() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// [`until`] for async conditions (an admin request, a metric read).
pub async fn until_async<T, F, Fut>(what: &str, limit: Duration, mut ready: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = ready().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_value_once_the_condition_holds() {
        let mut n = 0;
        let v = until("the third poll", Duration::from_secs(5), || {
            n += 1;
            (n == 3).then_some(n)
        });
        assert_eq!(v, 3);
    }

    #[test]
    #[should_panic(expected = "timed out after 50ms waiting for never")]
    fn panics_with_what_was_awaited() {
        until::<()>("never", Duration::from_millis(50), || None);
    }

    #[tokio::test]
    async fn async_variant_returns_the_value() {
        let mut n = 0;
        let v = until_async("the second poll", Duration::from_secs(5), || {
            n += 1;
            let v = n;
            async move { (v == 2).then_some(v) }
        })
        .await;
        assert_eq!(v, 2);
    }
}
