//! When a workload renews its certificate.

use std::time::SystemTime;

/// When to renew a certificate valid from `not_before` to `not_after`: two thirds of the way
/// through its lifetime (16 h into a 24 h certificate).
///
/// Why two thirds: the last third (8 h of a 24 h certificate) is the time left to retry while
/// the current certificate keeps serving, so a control plane that is down or being redeployed
/// for hours costs no outage; renewing earlier would buy more retry time but shorten each
/// certificate's useful life and raise the CA's signing load for the same mesh. This is the
/// moment to *start* renewing: callers retry with backoff until they succeed or the certificate
/// expires, keep the current certificate meanwhile, and may add jitter so that workloads started
/// together do not all renew in the same second.
///
/// Compute it from the certificate itself (see
/// [`not_before_from_cert_der`](crate::not_before_from_cert_der) and
/// [`not_after_from_cert_der`](crate::not_after_from_cert_der)) rather than from the time of
/// the request, so a certificate capped by its CA's expiry is renewed in time too. A certificate
/// with no lifetime (`not_after <= not_before`) should be renewed at once: the result is then
/// `not_after`, which is not later than now for any certificate that has ever been valid.
pub fn renew_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    match not_after.duration_since(not_before) {
        // `lifetime - lifetime / 3` cannot overflow, unlike `lifetime * 2 / 3`.
        Ok(lifetime) if !lifetime.is_zero() => not_before + (lifetime - lifetime / 3),
        _ => not_after,
    }
}

/// [`renew_at`] for a certificate issued by the mesh CA, measured from the moment of issue: the
/// CA backdates `notBefore` by [`CLOCK_SKEW_ALLOWANCE`](crate::CLOCK_SKEW_ALLOWANCE) (60 s) for
/// peers with slow clocks, which would otherwise pull the renewal of a short-lived certificate
/// before its issue (a 3 s certificate would be "due" 18 s before it was made, and renewed in a
/// loop). A certificate shorter than the allowance is taken as not backdated.
pub fn renewal_time(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let issued = not_before
        .checked_add(crate::CLOCK_SKEW_ALLOWANCE)
        .filter(|t| *t < not_after)
        .unwrap_or(not_before);
    renew_at(issued, not_after)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn renewal_is_measured_from_issue_not_from_the_backdated_not_before() {
        let skew = crate::CLOCK_SKEW_ALLOWANCE;
        // A 3 s certificate, backdated by the allowance: due 2 s after issue, not before it.
        let issued = t(100);
        assert_eq!(
            renewal_time(issued - skew, issued + Duration::from_secs(3)),
            t(102)
        );
        // A certificate shorter than the allowance (not backdated): plain two thirds.
        assert_eq!(renewal_time(t(0), t(3)), t(2));
        // 24 h: 16 h after issue.
        assert_eq!(
            renewal_time(issued - skew, issued + 24 * HOUR),
            issued + 16 * HOUR
        );
    }

    #[test]
    fn two_thirds_of_the_lifetime() {
        assert_eq!(renew_at(t(0), t(0) + 24 * HOUR), t(0) + 16 * HOUR);
        assert_eq!(renew_at(t(0), t(3)), t(2));
        assert_eq!(
            renew_at(t(0), t(1)),
            t(0) + Duration::from_nanos(666_666_667)
        );
        // An issued certificate is backdated by the clock skew allowance: 2/3 of 24 h + 60 s.
        let not_before = t(0) - crate::CLOCK_SKEW_ALLOWANCE;
        assert_eq!(
            renew_at(not_before, t(0) + 24 * HOUR),
            t(0) + 16 * HOUR - Duration::from_secs(20)
        );
    }

    #[test]
    fn renews_between_issue_and_expiry() {
        for secs in [1, 2, 59, 3600, 86_400, 7 * 86_400, 365 * 86_400] {
            let not_after = t(secs);
            let at = renew_at(t(0), not_after);
            assert!(at > t(0) && at < not_after, "{secs}");
        }
    }

    #[test]
    fn no_lifetime_means_renew_now() {
        assert_eq!(renew_at(t(10), t(10)), t(10));
        assert_eq!(renew_at(t(10), t(5)), t(5));
    }

    #[test]
    fn extreme_times_do_not_panic() {
        let far = UNIX_EPOCH + Duration::from_secs(u64::MAX / 4);
        let at = renew_at(UNIX_EPOCH, far);
        assert!(at > UNIX_EPOCH && at < far);
    }
}
