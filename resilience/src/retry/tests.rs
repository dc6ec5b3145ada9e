use super::*;
use crate::budget::BudgetConfig;

const MS: Duration = Duration::from_millis(1);

fn attempt(attempts_made: u32) -> Attempt {
    Attempt {
        attempts_made,
        idempotent: true,
        body_replayable: true,
    }
}

fn roomy_budget() -> RetryBudget {
    RetryBudget::default()
}

fn empty_budget() -> RetryBudget {
    RetryBudget::new(BudgetConfig {
        ratio: 0.0,
        min_per_second: 0,
        ..BudgetConfig::default()
    })
}

fn policy(on: RetryOn) -> RetryPolicy {
    RetryPolicy {
        on,
        max_attempts: 3,
        ..RetryPolicy::default_policy()
    }
}

fn stop(reason: StopReason) -> Decision {
    Decision::Stop(reason)
}

#[test]
fn default_policy_retries_only_failures_before_the_app() {
    let p = RetryPolicy::default_policy();
    assert_eq!(p.max_attempts, 2);
    assert_eq!(p.per_try_timeout, None);
    assert_eq!(p.backoff, Backoff::default());
    assert!(!p.non_idempotent);
    assert_eq!(RetryPolicy::default(), p);
    assert!(p.is_retryable(&Outcome::ConnectFailure));
    assert!(p.is_retryable(&Outcome::RefusedStream));
    for o in [
        Outcome::Success,
        Outcome::Reset,
        Outcome::PerTryTimeout,
        Outcome::Status(503),
        Outcome::Grpc(14),
    ] {
        assert!(!p.is_retryable(&o), "{o:?}");
    }
}

#[test]
fn each_condition_matches_its_outcomes() {
    let only = |f: fn(&mut RetryOn)| {
        let mut on = RetryOn::default();
        f(&mut on);
        policy(on)
    };
    assert!(only(|o| o.reset = true).is_retryable(&Outcome::Reset));
    assert!(only(|o| o.timeout = true).is_retryable(&Outcome::PerTryTimeout));
    assert!(!only(|o| o.timeout = true).is_retryable(&Outcome::Reset));

    let server = only(|o| o.server_error = true);
    assert!(server.is_retryable(&Outcome::Status(500)));
    assert!(server.is_retryable(&Outcome::Status(599)));
    assert!(!server.is_retryable(&Outcome::Status(499)));
    assert!(!server.is_retryable(&Outcome::Status(600)));

    let gateway = only(|o| o.gateway_error = true);
    assert!(!gateway.is_retryable(&Outcome::Status(500)));
    assert!(!gateway.is_retryable(&Outcome::Status(501)));
    for s in [502, 503, 504] {
        assert!(gateway.is_retryable(&Outcome::Status(s)));
    }
    assert!(!gateway.is_retryable(&Outcome::Status(505)));

    let listed = only(|o| o.statuses = vec![409, 429]);
    assert!(listed.is_retryable(&Outcome::Status(429)));
    assert!(!listed.is_retryable(&Outcome::Status(503)));

    let grpc = only(|o| o.grpc_codes = vec![14]);
    assert!(grpc.is_retryable(&Outcome::Grpc(14)));
    assert!(!grpc.is_retryable(&Outcome::Grpc(13)));
    assert!(!grpc.is_retryable(&Outcome::Status(503)));
}

#[test]
fn success_stops_first() {
    let p = policy(RetryOn::default());
    assert_eq!(
        p.decide(&Outcome::Success, attempt(99), &empty_budget(), 0, 0.5),
        stop(StopReason::Succeeded)
    );
}

#[test]
fn unmatched_outcome_is_not_retryable() {
    let p = RetryPolicy::default_policy();
    assert_eq!(
        p.decide(&Outcome::Status(503), attempt(1), &roomy_budget(), 0, 0.5),
        stop(StopReason::NotRetryable)
    );
}

#[test]
fn non_idempotent_requests_retry_only_failures_before_the_app() {
    let p = policy(RetryOn {
        connect_failure: true,
        refused_stream: true,
        reset: true,
        server_error: true,
        ..RetryOn::default()
    });
    let post = Attempt {
        idempotent: false,
        ..attempt(1)
    };
    let b = roomy_budget();
    for o in [Outcome::Reset, Outcome::Status(500)] {
        assert_eq!(
            p.decide(&o, post, &b, 0, 0.5),
            stop(StopReason::NonIdempotent)
        );
    }
    for o in [Outcome::ConnectFailure, Outcome::RefusedStream] {
        assert!(matches!(
            p.decide(&o, post, &b, 0, 0.5),
            Decision::Retry { .. }
        ));
    }
    let opted_in = RetryPolicy {
        non_idempotent: true,
        ..p
    };
    assert!(matches!(
        opted_in.decide(&Outcome::Reset, post, &b, 0, 0.5),
        Decision::Retry { .. }
    ));
}

#[test]
fn listed_grpc_codes_retry_although_grpc_calls_are_posts() {
    let p = policy(RetryOn {
        grpc_codes: vec![14],
        ..RetryOn::default()
    });
    let post = Attempt {
        idempotent: false,
        ..attempt(1)
    };
    let b = roomy_budget();
    assert!(matches!(
        p.decide(&Outcome::Grpc(14), post, &b, 0, 0.5),
        Decision::Retry { .. }
    ));
    assert_eq!(
        p.decide(&Outcome::Grpc(5), post, &b, 0, 0.5),
        stop(StopReason::NotRetryable)
    );
}

#[test]
fn attempts_are_capped_including_the_first() {
    let p = policy(RetryOn {
        reset: true,
        ..RetryOn::default()
    });
    let b = roomy_budget();
    assert!(matches!(
        p.decide(&Outcome::Reset, attempt(2), &b, 0, 0.5),
        Decision::Retry { .. }
    ));
    assert_eq!(
        p.decide(&Outcome::Reset, attempt(3), &b, 0, 0.5),
        stop(StopReason::AttemptsExhausted)
    );
    let once = RetryPolicy {
        max_attempts: 1,
        ..p
    };
    assert_eq!(
        once.decide(&Outcome::Reset, attempt(1), &b, 0, 0.5),
        stop(StopReason::AttemptsExhausted)
    );
}

#[test]
fn unreplayable_body_stops() {
    let p = RetryPolicy::default_policy();
    let a = Attempt {
        body_replayable: false,
        ..attempt(1)
    };
    assert_eq!(
        p.decide(&Outcome::ConnectFailure, a, &roomy_budget(), 0, 0.5),
        stop(StopReason::BodyTooLarge)
    );
}

#[test]
fn budget_is_checked_last_and_only_spent_on_retries() {
    let p = RetryPolicy::default_policy();
    let b = RetryBudget::new(BudgetConfig {
        ratio: 0.0,
        min_per_second: 1,
        window: Duration::from_secs(1),
    });
    // Earlier stops leave the single retry in the budget.
    p.decide(&Outcome::Status(500), attempt(1), &b, 0, 0.5);
    p.decide(&Outcome::ConnectFailure, attempt(2), &b, 0, 0.5);
    p.decide(
        &Outcome::ConnectFailure,
        Attempt {
            body_replayable: false,
            ..attempt(1)
        },
        &b,
        0,
        0.5,
    );
    assert_eq!(b.totals(0), (0, 0));
    assert!(matches!(
        p.decide(&Outcome::ConnectFailure, attempt(1), &b, 0, 0.5),
        Decision::Retry { .. }
    ));
    assert_eq!(
        p.decide(&Outcome::ConnectFailure, attempt(1), &b, 0, 0.5),
        stop(StopReason::BudgetExhausted)
    );
}

#[test]
fn stop_order_follows_the_contract() {
    // An outcome failing every check reports the first one in order.
    let p = policy(RetryOn {
        reset: true,
        ..RetryOn::default()
    });
    let worst = Attempt {
        attempts_made: 9,
        idempotent: false,
        body_replayable: false,
    };
    let b = empty_budget();
    assert_eq!(
        p.decide(&Outcome::Status(500), worst, &b, 0, 0.5),
        stop(StopReason::NotRetryable)
    );
    assert_eq!(
        p.decide(&Outcome::Reset, worst, &b, 0, 0.5),
        stop(StopReason::NonIdempotent)
    );
    let idempotent = Attempt {
        idempotent: true,
        ..worst
    };
    assert_eq!(
        p.decide(&Outcome::Reset, idempotent, &b, 0, 0.5),
        stop(StopReason::AttemptsExhausted)
    );
    let early = Attempt {
        attempts_made: 1,
        ..idempotent
    };
    assert_eq!(
        p.decide(&Outcome::Reset, early, &b, 0, 0.5),
        stop(StopReason::BodyTooLarge)
    );
}

#[test]
fn backoff_grows_with_the_retry_number() {
    let p = RetryPolicy {
        max_attempts: 10,
        ..RetryPolicy::default_policy()
    };
    let b = roomy_budget();
    let wait = |made| match p.decide(&Outcome::ConnectFailure, attempt(made), &b, 0, 0.999_999) {
        Decision::Retry { backoff } => backoff,
        other => panic!("{other:?}"),
    };
    // Upper ends of the jitter intervals: 25, 50, 100, 200, 250 ms.
    let expect = [25, 50, 100, 200, 250, 250];
    for (made, ms) in (1..).zip(expect) {
        let w = wait(made);
        assert!(w <= ms * MS && w > (ms * MS).mul_f64(0.99), "{made}: {w:?}");
    }
    assert_eq!(
        p.decide(&Outcome::ConnectFailure, attempt(1), &b, 0, 0.0),
        Decision::Retry {
            backoff: Duration::ZERO
        }
    );
}

#[test]
fn stop_reasons_have_snake_case_labels() {
    let all = [
        (StopReason::Succeeded, "succeeded"),
        (StopReason::NotRetryable, "not_retryable"),
        (StopReason::NonIdempotent, "non_idempotent"),
        (StopReason::AttemptsExhausted, "attempts_exhausted"),
        (StopReason::BodyTooLarge, "body_too_large"),
        (StopReason::BudgetExhausted, "budget_exhausted"),
    ];
    for (reason, label) in all {
        assert_eq!(reason.as_str(), label);
    }
}

#[test]
fn outcome_from_response() {
    assert_eq!(Outcome::from_response(200, None), Outcome::Success);
    assert_eq!(Outcome::from_response(204, Some(0)), Outcome::Success);
    assert_eq!(Outcome::from_response(200, Some(14)), Outcome::Grpc(14));
    assert_eq!(Outcome::from_response(503, Some(14)), Outcome::Status(503));
    assert_eq!(Outcome::from_response(404, None), Outcome::Status(404));
    assert_eq!(Outcome::from_response(302, None), Outcome::Success);
}

#[test]
fn grpc_names_in_every_spelling() {
    for s in ["unavailable", "UNAVAILABLE", "Unavailable", "14", " 14 "] {
        assert_eq!(grpc_code_from_name(s), Some(14), "{s}");
    }
    for s in [
        "resource_exhausted",
        "RESOURCE_EXHAUSTED",
        "resource-exhausted",
        "ResourceExhausted",
    ] {
        assert_eq!(grpc_code_from_name(s), Some(8), "{s}");
    }
    assert_eq!(grpc_code_from_name("deadline-exceeded"), Some(4));
    assert_eq!(grpc_code_from_name("cancelled"), Some(1));
    assert_eq!(grpc_code_from_name("CANCELED"), Some(1));
    assert_eq!(grpc_code_from_name("unauthenticated"), Some(16));
    assert_eq!(grpc_code_from_name("internal"), Some(13));
    for (code, name) in GRPC_CODES.iter().enumerate().skip(1) {
        assert_eq!(grpc_code_from_name(name), u32::try_from(code).ok());
    }
}

#[test]
fn grpc_names_rejected() {
    for s in [
        "",
        "ok",
        "OK",
        "0",
        "17",
        "-1",
        "unavailabl",
        "un available",
        "5xx",
    ] {
        assert_eq!(grpc_code_from_name(s), None, "{s:?}");
    }
}

#[test]
fn grpc_status_header_values() {
    assert_eq!(parse_grpc_status(b"14"), Some(14));
    assert_eq!(parse_grpc_status(b" 0"), Some(0));
    assert_eq!(parse_grpc_status(b"x"), None);
    assert_eq!(parse_grpc_status(&[0xff]), None);
}
