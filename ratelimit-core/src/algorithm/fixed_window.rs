//! A fixed window that opens on a key's first request, as Python's `limits` does in memory:
//! `amount` requests fit until `period` after that first request, then the count starts over.

use super::RateParams;
use super::Verdict;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct FixedWindow {
    start: u64,
    count: u64,
}

impl FixedWindow {
    pub(crate) fn check(
        &mut self,
        rate: &RateParams,
        now: u64,
        cost: u64,
        consume: bool,
    ) -> Verdict {
        if self.count == 0 || now >= self.start.saturating_add(rate.period) {
            self.start = now;
            self.count = 0;
        }
        let end = self.start.saturating_add(rate.period) - now;
        // The count may exceed a limit scaled down at run time: saturate.
        let left = rate.amount.saturating_sub(self.count);
        let reset = if self.count == 0 { 0 } else { end };
        if cost > rate.amount {
            return Verdict::deny(left, reset, None);
        }
        if cost <= left {
            if consume {
                self.count += cost;
            }
            // A request of cost 0 changes nothing, so it reports the state as it is.
            Verdict::allow(left - cost, if cost == 0 { reset } else { end })
        } else {
            Verdict::deny(left, reset, Some(end))
        }
    }

    /// Counts `cost` more in the window open at `now` (opening one if none is), past the
    /// amount if need be: the window then refuses until it closes.
    pub(crate) fn debit(&mut self, rate: &RateParams, now: u64, cost: u64) {
        if self.count == 0 || now >= self.start.saturating_add(rate.period) {
            self.start = now;
            self.count = 0;
        }
        self.count = self.count.saturating_add(cost);
    }

    pub(crate) fn refund(&mut self, rate: &RateParams, now: u64, cost: u64) {
        // Only a charge of the window still open can be given back.
        if now < self.start.saturating_add(rate.period) {
            self.count = self.count.saturating_sub(cost);
        }
    }

    pub(crate) fn expires_at(&self, rate: &RateParams) -> u64 {
        if self.count == 0 {
            0
        } else {
            self.start.saturating_add(rate.period)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate::Rate;

    const S: u64 = 1_000_000_000;

    #[test]
    fn the_window_opens_on_the_first_hit_and_closes_a_period_later() {
        let p = RateParams::new(Rate::parse("3/minute").unwrap(), None);
        let mut w = FixedWindow::default();
        let t0 = 5 * S;
        for left in [2, 1, 0] {
            assert_eq!(w.check(&p, t0, 1, true), Verdict::allow(left, 60 * S));
        }
        assert_eq!(
            w.check(&p, t0 + S, 1, true),
            Verdict::deny(0, 59 * S, Some(59 * S))
        );
        // One nanosecond before the end: still closed; at the end: a new window.
        assert!(!w.check(&p, t0 + 60 * S - 1, 1, true).allowed);
        assert_eq!(w.check(&p, t0 + 60 * S, 3, true), Verdict::allow(0, 60 * S));
    }

    #[test]
    fn cost_and_peek() {
        let p = RateParams::new(Rate::parse("10/minute").unwrap(), None);
        let mut w = FixedWindow::default();
        assert!(w.check(&p, 0, 10, false).allowed);
        assert_eq!(w.expires_at(&p), 0, "a peek consumes nothing");
        assert!(w.check(&p, 0, 8, true).allowed);
        let denied = w.check(&p, 0, 3, true);
        assert_eq!(denied, Verdict::deny(2, 60 * S, Some(60 * S)));
        assert!(
            w.check(&p, 0, 2, true).allowed,
            "the rejection took nothing"
        );
        assert_eq!(w.check(&p, 0, 11, true).retry_after, None);
    }
}
