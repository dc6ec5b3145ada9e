use std::time::Duration;

use super::*;

#[test]
fn every_event_has_a_slot_of_its_own() {
    use weft_resilience::retry::StopReason as S;
    let mut events = vec![
        Event::RetriedSucceeded,
        Event::RetriedFailed,
        Event::FaultDelay,
        Event::FaultAbort,
    ];
    events.extend(
        [
            S::BudgetExhausted,
            S::AttemptsExhausted,
            S::NonIdempotent,
            S::BodyTooLarge,
            S::NotRetryable,
        ]
        .map(Event::Skipped),
    );
    events.extend(
        [
            RejectLabel::Overloaded,
            RejectLabel::QueueFull,
            RejectLabel::QueueTimeout,
            RejectLabel::RateLimited,
            RejectLabel::BreakerOpen,
            RejectLabel::Denied,
            RejectLabel::CertExpired,
            RejectLabel::NoPolicy,
            RejectLabel::BadPath,
        ]
        .map(Event::Rejected),
    );
    let mut slots: Vec<usize> = events.iter().map(|e| e.slot()).collect();
    assert!(slots.iter().all(|&s| s < EVENT_SLOTS));
    slots.sort_unstable();
    slots.dedup();
    assert_eq!(slots.len(), events.len(), "two events share a series slot");
}

fn labels(route: &str) -> RouteLabels {
    RouteLabels {
        direction: Direction::Outbound,
        src_service: "a".into(),
        dst_service: "b".into(),
        route: route.into(),
        caller: "spiffe://t/ns/d/sa/a".into(),
    }
}

#[test]
fn names_carry_prefix_and_units() {
    assert_eq!(names::REQUEST_DURATION, "weft_request_duration_seconds");
    assert!(names::REQUESTS.ends_with("_total"));
    assert!(DURATION_BUCKETS.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn records_exactly_and_resolving_twice_shares_series() {
    let m = Metrics::new().expect("metrics");
    let r = m.route(labels("api"));
    let again = m.route(labels("api"));
    for _ in 0..3 {
        r.request();
        r.response(200, Duration::from_millis(2));
    }
    again.request();
    again.response(503, Duration::from_millis(20));
    r.response(999, Duration::from_millis(1));
    let text = m.render();
    assert!(text.contains(r#"weft_requests_total{caller="spiffe://t/ns/d/sa/a",direction="outbound",dst_service="b",route="api",src_service="a"} 4"#), "{text}");
    assert!(
        text.contains(r#"status_class="2xx",status_code="200"} 3"#),
        "{text}"
    );
    assert!(
        text.contains(r#"status_class="5xx",status_code="503"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"status_class="other",status_code="other"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"weft_request_duration_seconds_count{caller="spiffe://t/ns/d/sa/a",direction="outbound",dst_service="b",route="api",src_service="a",status_class="2xx"} 3"#), "{text}");
}
