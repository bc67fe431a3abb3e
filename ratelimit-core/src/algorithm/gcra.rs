//! The generic cell rate algorithm: one theoretical arrival time (TAT) per key.
//!
//! A rate of `amount` per `period` spaces requests `interval = period / amount` apart (rounded
//! up, so rounding never admits more than the rate) and tolerates up to `burst` of them at
//! once: a request of cost `n` at `now` is admitted when
//! `max(tat, now) + n × interval ≤ now + burst × interval`, and then moves the TAT there.

use super::RateParams;
use super::Verdict;

/// Judges a request of `cost` at `now` against the TAT `tat`. Returns the verdict and the
/// TAT to store if the request is admitted.
#[inline]
pub(crate) fn check(tat: u64, rate: &RateParams, now: u64, cost: u64) -> (Verdict, u64) {
    let interval = rate.interval;
    let tolerance = rate.tolerance;
    let base = tat.max(now);
    let used = base - now;
    // Remaining requests are counted in nanoseconds of tolerance and divided by the interval
    // only when asked for: a division costs more than the rest of this function.
    let spare_now = tolerance.saturating_sub(used);
    if cost > rate.burst {
        return (
            Verdict::deny(spare_now, used, None).counted_in(interval),
            tat,
        );
    }
    let new_tat = base.saturating_add(cost.saturating_mul(interval));
    let after = new_tat - now;
    if after <= tolerance {
        (
            Verdict::allow(tolerance - after, after).counted_in(interval),
            new_tat,
        )
    } else {
        let retry = after - tolerance;
        (
            Verdict::deny(spare_now, used, Some(retry)).counted_in(interval),
            tat,
        )
    }
}

/// The TAT `tat`, written when requests were spaced `from` apart, re-expressed for a spacing
/// of `to` (a limit scaled at run time): the same number of requests outstanding, paid back
/// at the new rate. A TAT in the past owes nothing and stays as it is; `from` 0 means the
/// spacing is unknown (state written before it was recorded).
#[inline]
pub(crate) fn rescale(tat: u64, now: u64, from: u64, to: u64) -> u64 {
    if tat <= now || from == to || from == 0 {
        return tat;
    }
    let debt = u128::from(tat - now) * u128::from(to) / u128::from(from);
    now.saturating_add(u64::try_from(debt).unwrap_or(u64::MAX))
}

/// The TAT once `cost` more is charged whatever the rate says: a settled amount the key owes
/// (the work is done). The key's next request waits until the rate has earned it back.
pub(crate) fn debit(tat: u64, rate: &RateParams, now: u64, cost: u64) -> u64 {
    tat.max(now)
        .saturating_add(cost.saturating_mul(rate.interval))
}

/// The TAT once a charge of `cost` is given back.
pub(crate) fn refund(tat: u64, rate: &RateParams, _now: u64, cost: u64) -> u64 {
    tat.saturating_sub(cost.saturating_mul(rate.interval))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate::Rate;

    const S: u64 = 1_000_000_000;

    fn params(rate: &str, burst: Option<u64>) -> RateParams {
        RateParams::new(Rate::parse(rate).unwrap(), burst)
    }

    #[test]
    fn rescaling_keeps_the_requests_outstanding() {
        let warm = params("20/minute", None);
        let full = params("100/minute", None);
        // 20 requests at 20/minute: a minute ahead; at 100/minute that is 12 seconds.
        let tat = 20 * warm.interval;
        assert_eq!(rescale(tat, 0, warm.interval, full.interval), 12 * S);
        assert_eq!(rescale(12 * S, 0, full.interval, warm.interval), 60 * S);
        // Nothing owed, or nothing known: unchanged.
        assert_eq!(rescale(5, 10, warm.interval, full.interval), 5);
        assert_eq!(rescale(tat, 0, 0, full.interval), tat);
        assert_eq!(rescale(u64::MAX, 0, 1, u64::MAX), u64::MAX);
    }

    #[test]
    fn a_full_burst_then_one_every_interval() {
        let p = params("10/minute", None);
        let mut tat = 0;
        for i in 0..10 {
            let (v, t) = check(tat, &p, 0, 1);
            assert!(v.allowed, "request {i}");
            assert_eq!(v.remaining(), 9 - i);
            tat = t;
        }
        let (v, _) = check(tat, &p, 0, 1);
        assert_eq!(v, Verdict::deny(0, 60 * S, Some(6 * S)).counted_in(6 * S));
        // One interval later exactly one more fits.
        let (v, t) = check(tat, &p, 6 * S, 1);
        assert!(v.allowed);
        assert_eq!(v.remaining(), 0);
        let (v, _) = check(t, &p, 6 * S, 1);
        assert!(!v.allowed);
        // Just before the interval, still nothing.
        let (v, _) = check(tat, &p, 6 * S - 1, 1);
        assert_eq!(v.retry_after, Some(1));
    }

    #[test]
    fn burst_caps_what_passes_at_once() {
        let p = params("10/minute", Some(3));
        let mut tat = 0;
        for _ in 0..3 {
            let (v, t) = check(tat, &p, 0, 1);
            assert!(v.allowed);
            tat = t;
        }
        let (v, _) = check(tat, &p, 0, 1);
        assert_eq!(v.retry_after, Some(6 * S));
    }

    #[test]
    fn cost_is_all_or_nothing_and_capped() {
        let p = params("10/minute", None);
        let (v, tat) = check(0, &p, 0, 7);
        assert!(v.allowed);
        assert_eq!(v.remaining(), 3);
        let (v, same) = check(tat, &p, 0, 4);
        assert!(!v.allowed);
        assert_eq!(same, tat, "a rejection consumes nothing");
        assert_eq!(v.remaining(), 3);
        assert_eq!(v.retry_after, Some(6 * S));
        let (v, _) = check(0, &p, 0, 11);
        assert_eq!(v.retry_after, None, "a cost above the burst never passes");
        assert!(!v.allowed);
    }

    #[test]
    fn refills_fully_after_the_period() {
        let p = params("10/minute", None);
        let (_, tat) = check(0, &p, 0, 10);
        let (v, _) = check(tat, &p, 60 * S, 10);
        assert!(v.allowed);
        let (v, _) = check(tat, &p, 30 * S, 5);
        assert!(v.allowed);
        let (v, _) = check(tat, &p, 30 * S, 6);
        assert!(!v.allowed);
    }
}
