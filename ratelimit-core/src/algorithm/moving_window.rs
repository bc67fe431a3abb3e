//! A moving window: a log of the requests admitted in the last period. A request fits when
//! the costs logged in `(now - period, now]` plus its own stay within the amount.

use std::collections::VecDeque;

use super::RateParams;
use super::Verdict;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct MovingWindow {
    /// `(time, cost)` of admitted requests, oldest first; the costs sum to `count`, which
    /// exceeds the amount only by settled debt, so the log holds at most `amount` entries
    /// and one per settlement.
    log: VecDeque<(u64, u64)>,
    count: u64,
}

impl MovingWindow {
    pub(crate) fn check(
        &mut self,
        rate: &RateParams,
        now: u64,
        cost: u64,
        consume: bool,
    ) -> Verdict {
        let period = rate.period;
        self.forget(period, now);
        // The count may exceed a limit scaled down at run time: saturate.
        let free = rate.amount.saturating_sub(self.count);
        // An empty log resets one period from now, as `limits` reports it
        // (`test_moving_window_empty_stats`): a request now would be counted until then.
        let reset = self.log.back().map_or(period, |&(at, _)| {
            at.saturating_add(period).saturating_sub(now)
        });
        if cost > rate.amount {
            return Verdict::deny(free, reset, None);
        }
        if cost <= free {
            if cost == 0 {
                // Logs nothing (a client that sends empty batches must not grow the log)
                // and reports the state as it is.
                return Verdict::allow(free, reset);
            }
            if consume {
                match self.log.back_mut() {
                    Some((at, n)) if *at == now => *n += cost,
                    _ => self.log.push_back((now, cost)),
                }
                self.count += cost;
            }
            return Verdict::allow(free - cost, period);
        }
        // What must leave the window: more than `cost` when it holds more than the amount
        // (settled debt, or a limit scaled down since).
        let mut need = self.count.saturating_add(cost) - rate.amount;
        let mut retry = 0;
        for &(at, n) in &self.log {
            retry = at.saturating_add(period).saturating_sub(now);
            if n >= need {
                break;
            }
            need -= n;
        }
        Verdict::deny(free, reset, Some(retry))
    }

    /// Logs `cost` more at `now`, past the amount if need be: the window refuses until enough
    /// has left it.
    pub(crate) fn debit(&mut self, rate: &RateParams, now: u64, cost: u64) {
        self.forget(rate.period, now);
        if cost == 0 {
            return;
        }
        match self.log.back_mut() {
            Some((at, n)) if *at == now => *n = n.saturating_add(cost),
            _ => self.log.push_back((now, cost)),
        }
        self.count = self.count.saturating_add(cost);
    }

    /// Drops what left the window `(now - period, now]`.
    fn forget(&mut self, period: u64, now: u64) {
        while let Some(&(at, n)) = self.log.front() {
            if at.saturating_add(period) > now {
                break;
            }
            self.log.pop_front();
            self.count -= n;
        }
    }

    /// Takes `cost` units off the newest entries.
    pub(crate) fn refund(&mut self, cost: u64) {
        let mut left = cost;
        while left > 0 {
            let Some((_, n)) = self.log.back_mut() else {
                break;
            };
            let take = left.min(*n);
            *n -= take;
            self.count -= take;
            left -= take;
            if *n == 0 {
                self.log.pop_back();
            }
        }
    }

    pub(crate) fn expires_at(&self, rate: &RateParams) -> u64 {
        self.log
            .back()
            .map_or(0, |&(at, _)| at.saturating_add(rate.period))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate::Rate;

    const S: u64 = 1_000_000_000;

    #[test]
    fn counts_exactly_the_last_period() {
        let p = RateParams::new(Rate::parse("3/minute").unwrap(), None);
        let mut w = MovingWindow::default();
        assert!(w.check(&p, 0, 1, true).allowed);
        assert!(w.check(&p, 10 * S, 2, true).allowed);
        let v = w.check(&p, 30 * S, 1, true);
        assert_eq!(v, Verdict::deny(0, 40 * S, Some(30 * S)));
        // At 60 s the first request leaves the window; the next two leave at 70 s.
        assert!(!w.check(&p, 60 * S - 1, 1, true).allowed);
        assert!(w.check(&p, 60 * S, 1, true).allowed);
        let v = w.check(&p, 60 * S, 2, true);
        assert_eq!(v.retry_after, Some(10 * S));
        assert_eq!(w.check(&p, 60 * S, 4, true).retry_after, None);
    }

    /// `limits`' `test_moving_window_empty_stats`: 10 per 2 seconds with nothing logged has
    /// 10 remaining and resets 2 seconds from now.
    #[test]
    fn empty_stats_reset_one_period_from_now() {
        let p = RateParams::new(Rate::parse("10/2 seconds").unwrap(), None);
        let mut w = MovingWindow::default();
        assert_eq!(w.check(&p, 5 * S, 0, false), Verdict::allow(10, 2 * S));
        assert_eq!(w.check(&p, 5 * S, 1, false), Verdict::allow(9, 2 * S));
        // Once what was logged has left the window, the log is empty again.
        assert!(w.check(&p, 5 * S, 1, true).allowed);
        assert_eq!(w.check(&p, 9 * S, 0, false), Verdict::allow(10, 2 * S));
    }

    #[test]
    fn a_peek_logs_nothing() {
        let p = RateParams::new(Rate::parse("1/second").unwrap(), None);
        let mut w = MovingWindow::default();
        assert!(w.check(&p, 0, 1, false).allowed);
        assert!(w.check(&p, 0, 1, true).allowed);
        assert!(!w.check(&p, 0, 1, true).allowed);
        assert_eq!(w.expires_at(&p), S);
    }
}
