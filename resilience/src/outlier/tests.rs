use super::*;

const SEC: Nanos = 1_000_000_000;

fn detector(n: usize, cfg: OutlierConfig) -> OutlierDetector {
    OutlierDetector::new(cfg, (0..n).map(|_| Arc::default()).collect())
}

fn cfg(failures: u32) -> OutlierConfig {
    OutlierConfig {
        consecutive_failures: failures,
        ..OutlierConfig::default()
    }
}

/// Fail `ep` until it is ejected (at most `limit` times); the transition, if any.
fn fail_until_ejected(d: &OutlierDetector, ep: usize, now: Nanos) -> Option<Transition> {
    (0..d.config().consecutive_failures).find_map(|_| d.record(ep, false, now))
}

#[test]
fn ejects_after_consecutive_failures() {
    let d = detector(4, cfg(3));
    assert_eq!(d.record(0, false, 0), None);
    assert_eq!(d.record(0, false, 0), None);
    assert!(d.selectable(0, 0));
    assert_eq!(
        d.record(0, false, 0),
        Some(Transition::Ejected(Duration::from_secs(10)))
    );
    assert!(!d.selectable(0, SEC));
    assert_eq!(d.state(0, SEC), HealthState::Ejected);
    assert_eq!(d.admit(0, SEC), Admission::Rejected);
    assert_eq!(d.ejections(0), 1);
    assert_eq!(d.state(1, SEC), HealthState::Healthy);
}

#[test]
fn success_in_between_resets_the_count() {
    let d = detector(2, cfg(3));
    for _ in 0..10 {
        assert_eq!(d.record(0, false, 0), None);
        assert_eq!(d.record(0, false, 0), None);
        assert_eq!(d.record(0, true, 0), None);
    }
    assert_eq!(d.state(0, 0), HealthState::Healthy);
}

#[test]
fn cap_of_half_of_three_ejects_only_one() {
    let d = detector(3, cfg(2));
    assert!(fail_until_ejected(&d, 0, 0).is_some());
    assert_eq!(fail_until_ejected(&d, 1, 0), None);
    assert_eq!(fail_until_ejected(&d, 2, 0), None);
    assert_eq!(d.state(1, 0), HealthState::Healthy);
    // The count restarted: one more failure does not eject at the cap either.
    assert_eq!(d.record(1, false, 0), None);
    // Half-open still counts against the cap.
    assert_eq!(d.state(0, 11 * SEC), HealthState::HalfOpen);
    assert_eq!(fail_until_ejected(&d, 1, 11 * SEC), None);
    // Once endpoint 0 returns, another may go.
    assert_eq!(d.admit(0, 11 * SEC), Admission::Probe);
    assert_eq!(
        d.record_probe(0, true, 11 * SEC),
        Some(Transition::Returned)
    );
    assert!(fail_until_ejected(&d, 1, 11 * SEC).is_some());
}

#[test]
fn one_endpoint_may_always_be_ejected() {
    let d = detector(
        1,
        OutlierConfig {
            max_ejected_percent: 10,
            ..cfg(1)
        },
    );
    assert!(d.record(0, false, 0).is_some());
}

#[test]
fn ejection_time_doubles_and_caps() {
    let d = detector(
        1,
        OutlierConfig {
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            ..cfg(1)
        },
    );
    let mut now = 0;
    let mut times = vec![];
    for _ in 0..7 {
        match d.record(0, false, now).or_else(|| {
            // Already ejected: wait for half-open and fail the probe.
            assert_eq!(d.admit(0, now), Admission::Probe);
            d.record_probe(0, false, now)
        }) {
            Some(Transition::Ejected(t)) => {
                times.push(t.as_secs());
                now += t.as_nanos() as u64;
            }
            other => panic!("expected ejection, got {other:?}"),
        }
    }
    assert_eq!(times, [10, 20, 40, 80, 160, 300, 300]);
    assert_eq!(d.ejections(0), 7);
}

#[test]
fn half_open_admits_exactly_one_probe() {
    let d = detector(2, cfg(1));
    d.record(0, false, 0);
    let t = 10 * SEC;
    assert!(!d.selectable(0, t - 1));
    assert!(d.selectable(0, t));
    assert_eq!(d.state(0, t), HealthState::HalfOpen);
    assert_eq!(d.admit(0, t), Admission::Probe);
    assert!(!d.selectable(0, t + 1));
    assert_eq!(d.admit(0, t + 1), Admission::Rejected);
    assert_eq!(d.admit(0, t + 2), Admission::Rejected);
}

#[test]
fn concurrent_admits_yield_one_probe() {
    let d = detector(1, cfg(1));
    d.record(0, false, 0);
    let probes = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    (0..100)
                        .filter(|_| d.admit(0, 10 * SEC) == Admission::Probe)
                        .count()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .sum::<usize>()
    });
    assert_eq!(probes, 1);
}

#[test]
fn probe_success_returns_the_endpoint() {
    let d = detector(1, cfg(2));
    fail_until_ejected(&d, 0, 0);
    let t = 10 * SEC;
    assert_eq!(d.admit(0, t), Admission::Probe);
    assert_eq!(d.record_probe(0, true, t + 5), Some(Transition::Returned));
    assert_eq!(d.state(0, t + 5), HealthState::Healthy);
    assert_eq!(d.admit(0, t + 6), Admission::Healthy);
    // The failure count starts afresh.
    assert_eq!(d.record(0, false, t + 7), None);
}

#[test]
fn probe_failure_re_ejects_longer() {
    let d = detector(1, cfg(1));
    d.record(0, false, 0);
    let t = 10 * SEC;
    assert_eq!(d.admit(0, t), Admission::Probe);
    assert_eq!(
        d.record_probe(0, false, t),
        Some(Transition::Ejected(Duration::from_secs(20)))
    );
    assert_eq!(d.state(0, t + 19 * SEC), HealthState::Ejected);
    assert_eq!(d.admit(0, t + 19 * SEC), Admission::Rejected);
    // The new half-open period has its own probe slot.
    assert_eq!(d.admit(0, t + 20 * SEC), Admission::Probe);
}

#[test]
fn lost_probe_times_out() {
    let d = detector(1, cfg(1));
    d.record(0, false, 0);
    let t = 10 * SEC;
    assert_eq!(d.probe_timeout(), Duration::from_secs(10));
    assert_eq!(d.admit(0, t), Admission::Probe);
    // The probe's outcome never arrives.
    assert!(!d.selectable(0, t + 10 * SEC - 1));
    assert_eq!(d.admit(0, t + 10 * SEC - 1), Admission::Rejected);
    assert!(d.selectable(0, t + 10 * SEC));
    assert_eq!(d.admit(0, t + 10 * SEC), Admission::Probe);
    assert_eq!(
        d.record_probe(0, true, t + 10 * SEC),
        Some(Transition::Returned)
    );
}

#[test]
fn late_result_of_a_replaced_probe_is_not_double_counted() {
    let d = detector(1, cfg(1));
    d.record(0, false, 0);
    let t = 10 * SEC;
    assert_eq!(d.admit(0, t), Admission::Probe);
    assert_eq!(d.admit(0, t + 10 * SEC), Admission::Probe);
    // The newer probe fails and re-ejects; the old probe's late success is ignored.
    assert!(matches!(
        d.record_probe(0, false, t + 10 * SEC),
        Some(Transition::Ejected(_))
    ));
    assert_eq!(d.record_probe(0, true, t + 11 * SEC), None);
    assert_eq!(d.state(0, t + 11 * SEC), HealthState::Ejected);
}

#[test]
fn abandoned_probe_frees_the_slot() {
    let d = detector(1, cfg(1));
    d.record(0, false, 0);
    let t = 10 * SEC;
    assert_eq!(d.admit(0, t), Admission::Probe);
    d.abandon_probe(0, t);
    assert_eq!(d.admit(0, t + 1), Admission::Probe);
    // Abandoning with a stale admission time does not free someone else's probe.
    d.abandon_probe(0, t);
    assert_eq!(d.admit(0, t + 2), Admission::Rejected);
}

#[test]
fn stragglers_do_not_end_an_ejection() {
    let d = detector(1, cfg(2));
    fail_until_ejected(&d, 0, 0);
    for now in [SEC, 10 * SEC, 11 * SEC] {
        assert_eq!(d.record(0, true, now), None);
        assert_eq!(d.record(0, false, now), None);
    }
    assert_eq!(d.state(0, 11 * SEC), HealthState::HalfOpen);
    assert_eq!(d.admit(0, 11 * SEC), Admission::Probe);
    // Even with a probe in flight, a normal request's success is not the probe's.
    assert_eq!(d.record(0, true, 11 * SEC), None);
    assert_eq!(d.state(0, 11 * SEC), HealthState::HalfOpen);
    assert_eq!(d.ejections(0), 1);
}

#[test]
fn probe_result_without_a_probe_is_ignored() {
    let d = detector(1, cfg(1));
    d.record(0, false, 0);
    assert_eq!(d.record_probe(0, true, 10 * SEC), None);
    assert_eq!(d.record_probe(0, true, SEC), None);
    assert_eq!(d.state(0, 10 * SEC), HealthState::HalfOpen);
}

#[test]
fn multiplier_resets_after_a_long_healthy_period() {
    let d = detector(1, cfg(1));
    let eject = |now| match d.record(0, false, now) {
        Some(Transition::Ejected(t)) => t.as_secs(),
        other => panic!("{other:?}"),
    };
    let recover = |now| {
        assert_eq!(d.admit(0, now), Admission::Probe);
        assert_eq!(d.record_probe(0, true, now), Some(Transition::Returned));
    };
    assert_eq!(eject(0), 10);
    recover(10 * SEC);
    // Back for less than max_ejection (300 s): the next ejection is longer.
    assert_eq!(eject(20 * SEC), 20);
    recover(40 * SEC);
    // Back for max_ejection: forgiven.
    assert_eq!(eject(340 * SEC), 10);
}

#[test]
fn disabled_detector_is_inert() {
    let d = detector(2, cfg(0));
    for _ in 0..100 {
        assert_eq!(d.record(0, false, 0), None);
    }
    assert!(d.selectable(0, 0));
    assert_eq!(d.admit(0, 0), Admission::Healthy);
    assert_eq!(d.state(0, 0), HealthState::Healthy);
    assert_eq!(d.ejections(0), 0);
}

#[test]
fn state_survives_a_reload() {
    let d = detector(2, cfg(1));
    d.record(1, false, 0);
    let carried = vec![d.health(1).clone(), Arc::default(), d.health(0).clone()];
    let reloaded = OutlierDetector::new(cfg(1), carried);
    assert_eq!(reloaded.len(), 3);
    assert_eq!(reloaded.state(0, SEC), HealthState::Ejected);
    assert_eq!(reloaded.state(2, SEC), HealthState::Healthy);
    assert_eq!(reloaded.ejections(0), 1);
}

#[test]
fn selectable_has_no_side_effect() {
    let d = detector(1, cfg(1));
    d.record(0, false, 0);
    for _ in 0..3 {
        assert!(d.selectable(0, 10 * SEC));
    }
    assert_eq!(d.admit(0, 10 * SEC), Admission::Probe);
}

#[test]
fn empty_detector() {
    let d = detector(0, cfg(5));
    assert!(d.is_empty());
    assert_eq!(d.len(), 0);
}
