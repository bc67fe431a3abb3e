//! The sliding window counter of Python's `limits`: windows aligned on multiples of the
//! period, and a count of `previous × (time left in the current window / period) + current`
//! (rounded down), which approximates a moving window in two counters.

use super::RateParams;
use super::Verdict;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SlidingWindow {
    index: u64,
    previous: u64,
    current: u64,
}

impl SlidingWindow {
    fn roll(&mut self, index: u64) {
        if index == self.index.wrapping_add(1) {
            self.previous = self.current;
            self.current = 0;
        } else if index != self.index {
            self.previous = 0;
            self.current = 0;
        }
        self.index = index;
    }

    pub(crate) fn check(
        &mut self,
        rate: &RateParams,
        now: u64,
        cost: u64,
        consume: bool,
    ) -> Verdict {
        let period = rate.period;
        let index = now / period;
        self.roll(index);
        let left = period - (now - index * period);
        let weighted = scale(self.previous, left, period).saturating_add(self.current);
        let free = rate.amount.saturating_sub(weighted);
        if cost > rate.amount {
            return Verdict::deny(free, self.reset_after(left, period), None);
        }
        if cost <= free {
            let mut after = *self;
            after.current = after.current.saturating_add(cost);
            let reset = after.reset_after(left, period);
            if consume {
                *self = after;
            }
            return Verdict::allow(free - cost, reset);
        }
        let room_now = (rate.amount - cost).checked_sub(self.current);
        let retry = match room_now {
            // Passes in this window once the previous window's weight has fallen enough.
            Some(room) => left - left.min(threshold(room, period, self.previous)),
            // Passes in the next window, where this window's count carries the weight.
            None => {
                let room = rate.amount - cost;
                left.saturating_add(period - period.min(threshold(room, period, self.current)))
            }
        };
        Verdict::deny(free, self.reset_after(left, period), Some(retry))
    }

    fn reset_after(&self, left: u64, period: u64) -> u64 {
        if self.current > 0 {
            left.saturating_add(period)
        } else if self.previous > 0 {
            left
        } else {
            0
        }
    }

    /// Counts `cost` more in the current window, past the amount if need be: it weighs on
    /// this window and the next as a request's cost does.
    pub(crate) fn debit(&mut self, rate: &RateParams, now: u64, cost: u64) {
        self.roll(now / rate.period);
        self.current = self.current.saturating_add(cost);
    }

    /// Takes `cost` units off the current window (off the previous one for what the current
    /// cannot give back, when the window turned since the charge).
    pub(crate) fn refund(&mut self, rate: &RateParams, now: u64, cost: u64) {
        self.roll(now / rate.period);
        let from_current = cost.min(self.current);
        self.current -= from_current;
        self.previous = self.previous.saturating_sub(cost - from_current);
    }

    pub(crate) fn expires_at(&self, rate: &RateParams) -> u64 {
        let periods = if self.current > 0 {
            2
        } else if self.previous > 0 {
            1
        } else {
            0
        };
        (self.index + periods).saturating_mul(rate.period)
    }
}

/// `floor(count × part / whole)` without overflow.
fn scale(count: u64, part: u64, whole: u64) -> u64 {
    (u128::from(count) * u128::from(part) / u128::from(whole)) as u64
}

/// The longest overlap `x` (in nanoseconds) for which `floor(count × x / period) ≤ room`.
fn threshold(room: u64, period: u64, count: u64) -> u64 {
    let max = (u128::from(room) + 1) * u128::from(period) - 1;
    (max / u128::from(count.max(1))).min(u128::from(u64::MAX)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate::Rate;

    const S: u64 = 1_000_000_000;

    #[test]
    fn the_previous_window_weighs_by_its_overlap() {
        let p = RateParams::new(Rate::parse("10/minute").unwrap(), None);
        let mut w = SlidingWindow::default();
        assert!(w.check(&p, 0, 10, true).allowed);
        assert!(!w.check(&p, 59 * S, 1, true).allowed);
        // A quarter into the next window the previous ten weigh 7.5, rounded down to 7.
        let v = w.check(&p, 75 * S, 3, true);
        assert_eq!(v, Verdict::allow(0, 45 * S + 60 * S));
        let v = w.check(&p, 75 * S, 1, true);
        assert!(!v.allowed);
        // 7 + 3 + 1 > 10 until the previous weighs under 7: under 42 s of overlap, past 78 s.
        assert_eq!(v.retry_after, Some(3 * S + 1));
        let later = 75 * S + v.retry_after.unwrap();
        assert!(!w.check(&p, later - 1, 1, false).allowed);
        assert!(w.check(&p, later, 1, true).allowed);
    }

    #[test]
    fn a_full_current_window_waits_for_the_next() {
        let p = RateParams::new(Rate::parse("4/second").unwrap(), None);
        let mut w = SlidingWindow::default();
        assert!(w.check(&p, 0, 4, true).allowed);
        let v = w.check(&p, 0, 2, true);
        // Next window: 4 × (1 - u) ≤ 2 → u ≥ 0.5 s past the boundary, and floor allows a hair
        // earlier: 4 × overlap < 3 → overlap < 0.75 s → u > 0.25 s.
        assert_eq!(v.retry_after, Some(S + S / 4 + 1));
        assert!(!w.check(&p, S + S / 4, 2, false).allowed);
        assert!(w.check(&p, S + S / 4 + 1, 2, true).allowed);
        assert_eq!(w.check(&p, 0, 5, true).retry_after, None);
    }

    #[test]
    fn windows_far_apart_forget_everything() {
        let p = RateParams::new(Rate::parse("2/second").unwrap(), None);
        let mut w = SlidingWindow::default();
        assert!(w.check(&p, 0, 2, true).allowed);
        assert_eq!(w.expires_at(&p), 2 * S);
        assert!(w.check(&p, 2 * S, 2, true).allowed);
    }
}
