use super::*;

fn f(r: Reject) -> (u16, &'static str, String) {
    let f = r.failure();
    (f.status, f.flag, f.reason.into_owned())
}

#[test]
fn each_rejection_has_one_status_flag_and_reason() {
    let s = String::from;
    assert_eq!(
        f(Reject::UnknownHost(s("nope"))),
        (404, "no_route", s("no route: unknown host \"nope\""))
    );
    assert_eq!(
        f(Reject::NoRouteMatch {
            service: s("orders"),
            method: s("GET"),
            path: s("/x")
        }),
        (
            404,
            "no_route",
            s("no route: no route of orders matches GET /x")
        )
    );
    assert_eq!(f(Reject::FaultAbort(418)).0, 418);
    assert_eq!(
        f(Reject::Overloaded {
            service: s("orders"),
            limit: Overload::QueueFull {
                max_in_flight: 2,
                max_pending: 3
            }
        }),
        (
            503,
            "queue_full",
            s("overloaded: orders has 2 requests in flight and 3 waiting")
        )
    );
    assert_eq!(
        f(Reject::Timeout {
            timeout: Some(Duration::from_millis(300)),
            attempts: 2
        }),
        (
            504,
            "timeout",
            s("route timeout 300ms passed after 2 attempts")
        )
    );
    assert_eq!(
        f(Reject::Timeout {
            timeout: None,
            attempts: 0
        })
        .2,
        "route timeout passed before an endpoint was tried"
    );
    assert_eq!(
        f(Reject::BreakerOpen {
            service: s("orders"),
            route: s("r")
        })
        .1,
        "breaker_open"
    );
    assert_eq!(
        f(Reject::NoIdentity),
        (403, "denied", s("caller has no mesh identity"))
    );
    assert_eq!(f(Reject::CertExpired).1, "cert_expired");
    assert_eq!(f(Reject::NoPolicy).0, 503);
    assert_eq!(
        f(Reject::Denied {
            service: s("orders"),
            caller: s("spiffe://a"),
            method: s("POST"),
            path: s("/p")
        })
        .2,
        "denied: no authorization rule of orders allows spiffe://a to POST /p"
    );
    assert_eq!(
        f(Reject::BadPath(weft_policy::path::PathError::EncodedSlash)),
        (
            400,
            "bad_path",
            s("bad path: an encoded slash (%2F) in the path")
        )
    );
}

#[test]
fn rate_limits_carry_retry_after_in_whole_seconds_rounded_up() {
    let r = |wait| Reject::RateLimited {
        wait,
        what: RateScope::Inbound {
            service: "orders".into(),
        },
    };
    let limited = r(Duration::from_millis(1500)).failure();
    assert_eq!((limited.status, limited.retry_after), (429, Some(2)));
    assert_eq!(
        limited.reason,
        "rate limited: orders is over its inbound limit"
    );
    assert_eq!(r(Duration::ZERO).failure().retry_after, Some(1));
}

#[test]
fn the_counted_event_matches_the_flag() {
    let rejections = [
        Reject::RateLimited {
            wait: Duration::ZERO,
            what: RateScope::Inbound {
                service: "o".into(),
            },
        },
        Reject::Overloaded {
            service: "o".into(),
            limit: Overload::InFlight { max_in_flight: 1 },
        },
        Reject::Overloaded {
            service: "o".into(),
            limit: Overload::QueueTimeout {
                queue_timeout: Duration::ZERO,
            },
        },
        Reject::BreakerOpen {
            service: "o".into(),
            route: "r".into(),
        },
        Reject::CertExpired,
        Reject::NoPolicy,
        Reject::Denied {
            service: "o".into(),
            caller: "c".into(),
            method: "GET".into(),
            path: "/".into(),
        },
        Reject::BadPath(weft_policy::path::PathError::EncodedSlash),
    ];
    for r in rejections {
        match r.event() {
            Some(Event::Rejected(label)) => assert_eq!(label.as_str(), r.failure().flag),
            other => panic!("{r:?} counts {other:?}"),
        }
    }
    assert_eq!(Reject::UnknownHost("h".into()).event(), None);
    assert_eq!(Reject::NoIdentity.event(), None);
}
