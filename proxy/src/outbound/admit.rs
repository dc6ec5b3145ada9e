//! The admission stage: after routing, before an endpoint is chosen, a request passes the
//! route's rate limit, its fault injection, the destination's concurrency limit (which may
//! queue it for `queue_timeout`), and then deposits into the destination's retry budget.

use weft_resilience::limiter::{Permit, Rejected};
use weft_resilience::Nanos;

use crate::errors::{Overload, RateScope, Reject};
use crate::outbound::route::{Destination, RouteState};
use crate::telemetry::metrics::Event;

/// Admit a request to route `rs` of `d` at `now`, or say why not. The permit holds the
/// request's concurrency slot until it drops.
pub async fn admit(d: &Destination, rs: &RouteState, now: Nanos) -> Result<Permit, Reject> {
    if let Some(Err(wait)) = rs.rate.as_ref().map(|b| b.try_take(now)) {
        return Err(Reject::RateLimited {
            wait,
            what: RateScope::Route {
                service: d.name.clone(),
                route: rs.name.to_string(),
            },
        });
    }
    if let Some(fault) = &rs.route.fault {
        let decided = fault.decide(fastrand::f64(), fastrand::f64());
        if let Some(delay) = decided.delay {
            rs.metrics.event(Event::FaultDelay);
            tokio::time::sleep(delay).await;
        }
        if let Some(status) = decided.abort {
            return Err(Reject::FaultAbort(status));
        }
    }
    let permit = d
        .in_flight
        .acquire(d.limits.queue_timeout)
        .await
        .map_err(|r| Reject::Overloaded {
            service: d.name.clone(),
            limit: match r {
                Rejected::InFlight => Overload::InFlight {
                    max_in_flight: d.limits.max_in_flight,
                },
                Rejected::Pending => Overload::QueueFull {
                    max_in_flight: d.limits.max_in_flight,
                    max_pending: d.limits.max_pending,
                },
                Rejected::QueueTimeout => Overload::QueueTimeout {
                    queue_timeout: d.limits.queue_timeout,
                },
            },
        })?;
    d.budget.deposit(now);
    Ok(permit)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::outbound::route::test_support::routes;
    use crate::outbound::route::Routes;
    use crate::telemetry::metrics::Metrics;

    fn table(route_extra: &str, service_extra: &str) -> Routes {
        let m = Metrics::new().expect("metrics");
        let text = format!(
            "services:\n  - name: orders\n    identity: spiffe://weft.local/ns/default/sa/orders\n    \
             endpoints: [{{address: \"127.0.0.1:16001\"}}]\n{service_extra}\
             routes:\n  - {{name: r, service: orders{route_extra}}}\n"
        );
        routes(&text, None, &m)
    }

    fn parts(r: &Routes) -> (Arc<Destination>, Arc<RouteState>) {
        let d = r.destinations[0].clone();
        let rs = d.routes[0].clone();
        (d, rs)
    }

    #[tokio::test(start_paused = true)]
    async fn a_spent_rate_limit_says_whose_and_for_how_long() {
        let r = table(", rate_limit: {requests_per_second: 1, burst: 1}", "");
        let (d, rs) = parts(&r);
        assert!(admit(&d, &rs, 0).await.is_ok());
        match admit(&d, &rs, 0).await {
            Err(Reject::RateLimited { wait, what }) => {
                assert_eq!(wait, Duration::from_secs(1));
                assert_eq!(
                    what,
                    RateScope::Route {
                        service: "orders".into(),
                        route: "r".into()
                    }
                );
            }
            other => panic!("expected a rate limit, got {other:?}"),
        }
        assert!(
            admit(&d, &rs, 1_000_000_000).await.is_ok(),
            "a token a second later"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn faults_delay_on_virtual_time_and_abort_with_their_status() {
        let r = table(
            ", fault: {delay: {percent: 100, duration: 250ms}, abort: {percent: 100, status: 418}}",
            "",
        );
        let (d, rs) = parts(&r);
        let t0 = tokio::time::Instant::now();
        assert_eq!(admit(&d, &rs, 0).await.err(), Some(Reject::FaultAbort(418)));
        assert_eq!(
            t0.elapsed(),
            Duration::from_millis(250),
            "delayed, then aborted"
        );
        assert_eq!(
            Reject::FaultAbort(418).event(),
            Some(Event::FaultAbort),
            "an abort counts as a fault, not a rejection"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_in_flight_limit_refuses_then_admits_once_a_slot_frees() {
        let r = table("", "    limits: {max_in_flight: 1, max_pending: 0}\n");
        let (d, rs) = parts(&r);
        let held = admit(&d, &rs, 0).await.expect("first");
        assert_eq!(
            admit(&d, &rs, 0).await.err(),
            Some(Reject::Overloaded {
                service: "orders".into(),
                limit: Overload::InFlight { max_in_flight: 1 }
            })
        );
        drop(held);
        assert!(admit(&d, &rs, 0).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_request_times_out_after_queue_timeout() {
        let r = table(
            "",
            "    limits: {max_in_flight: 1, max_pending: 1, queue_timeout: 40ms}\n",
        );
        let (d, rs) = parts(&r);
        let _held = admit(&d, &rs, 0).await.expect("first");
        let t0 = tokio::time::Instant::now();
        assert_eq!(
            admit(&d, &rs, 0).await.err(),
            Some(Reject::Overloaded {
                service: "orders".into(),
                limit: Overload::QueueTimeout {
                    queue_timeout: Duration::from_millis(40)
                }
            })
        );
        assert_eq!(t0.elapsed(), Duration::from_millis(40));
    }
}
