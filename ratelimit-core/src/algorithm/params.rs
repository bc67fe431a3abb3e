//! A rate with the numbers the algorithms need, worked out once.

use crate::rate::Rate;

/// A rate with the numbers the algorithms need, worked out once when the limits are built.
///
/// A store that runs the algorithms elsewhere (a Redis script) reads them from here, so that
/// every store counts with the same numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateParams {
    pub(crate) rate: Rate,
    pub(crate) amount: u64,
    /// The period in nanoseconds.
    pub(crate) period: u64,
    /// GCRA: the spacing of requests, `period / amount` rounded up.
    pub(crate) interval: u64,
    /// GCRA: how many requests may pass at once.
    pub(crate) burst: u64,
    /// GCRA: `burst × interval`, saturated.
    pub(crate) tolerance: u64,
}

impl RateParams {
    /// The numbers of `rate`, with a GCRA burst of `burst` (default: the rate's amount).
    pub fn new(rate: Rate, burst: Option<u64>) -> RateParams {
        let amount = rate.amount();
        let period = rate.period_nanos();
        let interval = period.div_ceil(amount).max(1);
        let burst = burst.unwrap_or(amount).max(1);
        RateParams {
            rate,
            amount,
            period,
            interval,
            burst,
            tolerance: interval.saturating_mul(burst),
        }
    }

    /// The rate.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// The most units the rate admits per period.
    pub fn amount(&self) -> u64 {
        self.amount
    }

    /// The period in nanoseconds.
    pub fn period_nanos(&self) -> u64 {
        self.period
    }

    /// GCRA: nanoseconds between two requests of cost 1 (the period over the amount, rounded
    /// up so that rounding never admits more than the rate).
    pub fn interval_nanos(&self) -> u64 {
        self.interval
    }

    /// GCRA: how many units may pass at once.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// GCRA: how far ahead of now the theoretical arrival time may run, `burst × interval`
    /// (saturated at `u64::MAX`).
    pub fn tolerance_nanos(&self) -> u64 {
        self.tolerance
    }
}
