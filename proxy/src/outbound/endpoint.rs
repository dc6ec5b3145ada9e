//! The endpoint stage: which endpoint of the route's backend gets this attempt (the balancer's
//! choice, then the outlier detector's admission), the Pingora peer that dials it, and what
//! the attempt's outcome teaches the endpoint's health.

use std::time::{Duration, Instant};

use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::HttpPeer;
use weft_resilience::outlier::{Admission, Transition};
use weft_resilience::Nanos;

use crate::errors::Reject;
use crate::outbound::route::{Destination, RouteState};
use crate::telemetry::metrics::Event;

/// Concurrent streams allowed on one pooled HTTP/2 connection to a peer sidecar. Pingora's
/// default of 1 would open a connection per in-flight request.
pub const MAX_H2_STREAMS: usize = 256;
/// How long an idle pooled connection to a peer is kept.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Endpoint choices per attempt: losing the race for a half-open probe slot twice in a row is
/// already unlikely.
const CHOICES: usize = 3;

/// The endpoint an attempt goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chosen {
    /// Index into the destination's endpoints.
    pub ep: usize,
    /// The attempt is the half-open probe of an ejected endpoint.
    pub probe: bool,
}

/// The bit of endpoint `ep` in a `tried` set (endpoints from 64 on are not tracked).
pub fn bit(ep: usize) -> u64 {
    if ep < 64 {
        1 << ep
    } else {
        0
    }
}

/// Choose an endpoint of `rs`'s backend for the next attempt, preferring one not in `tried`;
/// endpoints the outlier detector turns away are added to `tried`.
pub fn choose(
    d: &Destination,
    rs: &RouteState,
    tried: &mut u64,
    now: Nanos,
) -> Result<Chosen, Reject> {
    for _ in 0..CHOICES {
        let Some(ep) = d.pick(rs, *tried, now) else {
            break;
        };
        match d.health.admit(ep, now) {
            Admission::Healthy => return Ok(Chosen { ep, probe: false }),
            Admission::Probe => return Ok(Chosen { ep, probe: true }),
            Admission::Rejected => *tried |= bit(ep),
        }
    }
    Err(if d.endpoints.is_empty() {
        Reject::NoEndpoint {
            service: d.name.clone(),
            route: rs.name.to_string(),
        }
    } else {
        Reject::BreakerOpen {
            service: d.name.clone(),
            route: rs.name.to_string(),
        }
    })
}

/// Time left before the route's `deadline`, or the rejection once it has passed.
pub fn time_left(
    deadline: Option<Instant>,
    rs: &RouteState,
    attempts: u32,
) -> Result<Option<Duration>, Reject> {
    let Some(deadline) = deadline else {
        return Ok(None);
    };
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Reject::Timeout {
            timeout: rs.route.timeout,
            attempts,
        });
    }
    Ok(Some(left))
}

/// The peer for an attempt to endpoint `ep` of `d`: HTTP/2 over mutual TLS to its sidecar,
/// which must prove `d`'s identity. The read timeout is the per-try timeout, cut to what is
/// `left` of the route's.
pub fn peer(
    d: &Destination,
    ep: usize,
    connect_timeout: Duration,
    per_try: Option<Duration>,
    left: Option<Duration>,
) -> HttpPeer {
    // No client certificate or roots on the peer: they are the connector's (see
    // `crate::outbound::connector`), which keeps Pingora's per-request pool key cheap.
    let mut peer = HttpPeer::new(d.endpoints[ep], true, d.sni.clone());
    let o = &mut peer.options;
    o.alpn = ALPN::H2;
    o.max_h2_streams = MAX_H2_STREAMS;
    o.connection_timeout = Some(connect_timeout);
    o.idle_timeout = Some(POOL_IDLE_TIMEOUT);
    o.read_timeout = match (per_try, left) {
        (Some(p), Some(l)) => Some(p.min(l)),
        (p, l) => p.or(l),
    };
    peer
}

/// Teach endpoint `ep`'s outlier detector the attempt's outcome, logging an ejection or a
/// return. `probe`: the attempt was its half-open probe.
pub fn record_health(d: &Destination, chosen: Chosen, success: bool, now: Nanos) {
    let Chosen { ep, probe } = chosen;
    let t = if probe {
        d.health.record_probe(ep, success, now)
    } else {
        d.health.record(ep, success, now)
    };
    match t {
        Some(Transition::Ejected(time)) => {
            d.ejections[ep].inc();
            log::warn!(
                "{} endpoint {} ejected for {} after consecutive failures",
                d.name,
                d.endpoints[ep],
                humantime::format_duration(time)
            );
        }
        Some(Transition::Returned) => {
            log::info!(
                "{} endpoint {} returned after a successful probe",
                d.name,
                d.endpoints[ep]
            );
        }
        None => {}
    }
}

/// Count a retry on the route (the attempt about to go out is not the first).
pub fn count_retry(rs: &RouteState, attempts: u32) {
    if attempts > 0 {
        rs.metrics.retry();
    }
}

/// The event a finished request that was retried counts: did the retries help?
pub fn retried_event(status: u16) -> Event {
    if (1..500).contains(&status) {
        Event::RetriedSucceeded
    } else {
        Event::RetriedFailed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::route::test_support::routes;
    use crate::telemetry::metrics::Metrics;

    const TWO: &str = "services:\n  - name: orders\n    identity: spiffe://weft.local/ns/default/sa/orders\n    \
                       outlier_detection: {consecutive_failures: 1, base_ejection_time: 10s, max_ejected_percent: 100}\n    \
                       endpoints: [{address: \"127.0.0.1:16001\"}, {address: \"127.0.0.1:16002\"}]\n";

    #[test]
    fn a_retry_prefers_an_endpoint_not_tried() {
        let m = Metrics::new().expect("metrics");
        let r = routes(TWO, None, &m);
        let d = &r.destinations[0];
        let rs = &d.routes[0];
        for _ in 0..50 {
            let mut tried = bit(0);
            let c = choose(d, rs, &mut tried, 0).expect("chosen");
            assert_eq!(
                c,
                Chosen {
                    ep: 1,
                    probe: false
                }
            );
        }
    }

    #[test]
    fn ejected_endpoints_open_the_breaker_and_return_as_a_probe() {
        let m = Metrics::new().expect("metrics");
        let r = routes(TWO, None, &m);
        let d = &r.destinations[0];
        let rs = &d.routes[0];
        for ep in [0, 1] {
            record_health(d, Chosen { ep, probe: false }, false, 0);
            assert_eq!(d.ejections[ep].get(), 1, "one failure ejects endpoint {ep}");
        }
        let mut tried = 0;
        assert_eq!(
            choose(d, rs, &mut tried, 1),
            Err(Reject::BreakerOpen {
                service: "orders".into(),
                route: "default".into()
            })
        );
        let later = 11_000_000_000;
        let c = choose(d, rs, &mut 0, later).expect("a probe after the ejection time");
        assert!(c.probe);
        record_health(d, c, true, later);
        assert_eq!(
            d.health.state(c.ep, later),
            weft_resilience::outlier::HealthState::Healthy,
            "returned after its probe"
        );
    }

    #[test]
    fn no_endpoint_and_a_passed_deadline_are_rejections() {
        let m = Metrics::new().expect("metrics");
        let none =
            "services:\n  - name: orders\n    identity: spiffe://weft.local/ns/default/sa/orders\n";
        let r = routes(none, None, &m);
        let d = &r.destinations[0];
        let rs = &d.routes[0];
        assert!(matches!(
            choose(d, rs, &mut 0, 0),
            Err(Reject::NoEndpoint { .. })
        ));
        assert_eq!(time_left(None, rs, 0), Ok(None));
        let past = Instant::now();
        assert_eq!(
            time_left(Some(past), rs, 2),
            Err(Reject::Timeout {
                timeout: None,
                attempts: 2
            })
        );
        let soon = Instant::now() + Duration::from_secs(60);
        assert!(
            matches!(time_left(Some(soon), rs, 0), Ok(Some(left)) if left > Duration::from_secs(59))
        );
    }

    #[test]
    fn the_read_timeout_is_the_per_try_timeout_cut_to_what_is_left() {
        let m = Metrics::new().expect("metrics");
        let r = routes(TWO, None, &m);
        let d = &r.destinations[0];
        let s = Duration::from_secs;
        let read = |p, l| peer(d, 0, s(1), p, l).options.read_timeout;
        assert_eq!(read(Some(s(2)), Some(s(5))), Some(s(2)));
        assert_eq!(read(Some(s(2)), Some(s(1))), Some(s(1)));
        assert_eq!(read(None, Some(s(3))), Some(s(3)));
        assert_eq!(read(None, None), None);
        let p = peer(d, 1, s(1), None, None);
        assert_eq!(p.options.max_h2_streams, MAX_H2_STREAMS);
        assert_eq!(p.sni, "orders.default.serviceaccount.identity.weft.local");
    }
}
