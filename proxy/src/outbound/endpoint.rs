//! The endpoint stage: which endpoint of the route's backend gets this attempt (the balancer's
//! choice, then the outlier detector's admission), the Pingora peer that dials it, and what
//! the attempt's outcome teaches the endpoint's health.

use std::time::{Duration, Instant};

use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::HttpPeer;
use weft_policy::Protocol;
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

/// Requests in flight to one endpoint from which an HTTP/1.x caller's request takes the
/// multiplexed HTTP/2 hop after all: requests no longer travel alone there, and HTTP/2 carries
/// several in one TLS record and one wake-up (at saturation it costs less CPU per request than
/// HTTP/1.1, which also holds a connection per request in flight).
pub const HOP_H1_MAX_IN_FLIGHT: u32 = 4;

/// Pingora's pool group of the HTTP/1.1-preferring hop (`HttpPeer::group_key`, part of the
/// pool key): its lookups never find the HTTP/2 connections of the multiplexed hop (group 0),
/// which Pingora would otherwise reuse first, keeping the requests that travel alone on HTTP/2
/// for as long as one such connection stays busy.
pub const HOP_H1_GROUP: u64 = 1;

/// The HTTP version of the hop to endpoint `ep`'s sidecar, by what the request is and what
/// else is in flight there. An HTTP/1.x caller's request to an `http` service while fewer than
/// [`HOP_H1_MAX_IN_FLIGHT`] are in flight there crosses as HTTP/1.1 over a pooled mutual-TLS
/// connection (one request at a time on it). An HTTP/2 caller's (h2c, gRPC, extended
/// CONNECT), a `grpc` service's, and a request to a busy endpoint cross as streams of a
/// multiplexed HTTP/2 connection.
///
/// Why: a request that travels alone (a mesh's usual rate) costs an HTTP/2 stream on both
/// sidecars (HPACK, stream state, the connection task woken both ways, a task per stream
/// inbound), against one TLS record each way on a connection the request has to itself
/// (README, "The hop between sidecars", measured per request at fixed rates and saturation).
///
/// HTTP/1.x offers both (`h2`, `http/1.1`) and the server picks: a sidecar that prefers
/// `http/1.1` for them (this version on) takes it, an older one picks `h2`, so a mesh
/// mid-upgrade keeps working.
pub fn hop_alpn(d: &Destination, ep: usize, caller_h2: bool) -> ALPN {
    let busy = d
        .stats
        .get(ep)
        .is_some_and(|s| s.pending() >= HOP_H1_MAX_IN_FLIGHT);
    if caller_h2 || d.protocol != Protocol::Http || busy {
        ALPN::H2
    } else {
        ALPN::H2H1
    }
}

/// The peer for an attempt to endpoint `ep` of `d`: over mutual TLS to its sidecar, which must
/// prove `d`'s identity, as `alpn` ([`hop_alpn`]). The read timeout is the per-try timeout,
/// cut to what is `left` of the route's.
pub fn peer(
    d: &Destination,
    ep: usize,
    alpn: ALPN,
    connect_timeout: Duration,
    per_try: Option<Duration>,
    left: Option<Duration>,
) -> HttpPeer {
    // No client certificate or roots on the peer: they are the connector's (see
    // `crate::outbound::connector`), which keeps Pingora's per-request pool key cheap.
    let mut peer = HttpPeer::new(d.endpoints[ep], true, d.sni.clone());
    if alpn == ALPN::H2H1 {
        peer.group_key = HOP_H1_GROUP;
    }
    let o = &mut peer.options;
    o.alpn = alpn;
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
        let read = |p, l| peer(d, 0, ALPN::H2, s(1), p, l).options.read_timeout;
        assert_eq!(read(Some(s(2)), Some(s(5))), Some(s(2)));
        assert_eq!(read(Some(s(2)), Some(s(1))), Some(s(1)));
        assert_eq!(read(None, Some(s(3))), Some(s(3)));
        assert_eq!(read(None, None), None);
        let p = peer(d, 1, ALPN::H2H1, s(1), None, None);
        assert_eq!(p.options.max_h2_streams, MAX_H2_STREAMS);
        assert_eq!(p.options.alpn, ALPN::H2H1);
        assert_eq!(
            p.group_key, HOP_H1_GROUP,
            "pooled apart from the multiplexed hop"
        );
        assert_eq!(peer(d, 1, ALPN::H2, s(1), None, None).group_key, 0);
        assert_eq!(p.sni, "orders.default.serviceaccount.identity.weft.local");
    }

    #[test]
    fn the_hop_follows_the_callers_version_until_an_endpoint_is_busy() {
        let m = Metrics::new().expect("metrics");
        let r = routes(TWO, None, &m);
        let d = &r.destinations[0];
        assert_eq!(d.protocol, Protocol::Http);
        assert_eq!(hop_alpn(d, 0, false), ALPN::H2H1, "HTTP/1.x caller");
        assert_eq!(hop_alpn(d, 0, true), ALPN::H2, "HTTP/2 caller");
        let held: Vec<_> = (0..HOP_H1_MAX_IN_FLIGHT)
            .map(|_| d.stats[0].start())
            .collect();
        assert_eq!(hop_alpn(d, 0, false), ALPN::H2, "endpoint 0 is busy");
        assert_eq!(hop_alpn(d, 1, false), ALPN::H2H1, "endpoint 1 is not");
        drop(held);
        assert_eq!(hop_alpn(d, 0, false), ALPN::H2H1, "no longer busy");

        let grpc = TWO.replace("identity: spiffe", "protocol: grpc\n    identity: spiffe");
        let r = routes(&grpc, None, &m);
        assert_eq!(r.destinations[0].protocol, Protocol::Grpc);
        assert_eq!(
            hop_alpn(&r.destinations[0], 0, false),
            ALPN::H2,
            "a grpc service"
        );
    }
}
