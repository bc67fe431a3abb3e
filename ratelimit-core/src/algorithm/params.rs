//! A rate with the numbers the algorithms need, worked out once.

use std::fmt;
use std::num::NonZeroU64;
use std::str::FromStr;

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
    /// GCRA: the interval as an `f32`'s bits, worked out here so that a store that records
    /// the spacing its state was written with compares one word per check.
    pub(crate) interval_bits: u32,
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
            interval_bits: (interval as f32).to_bits(),
        }
    }

    /// These numbers with the amount (and a burst other than the amount) scaled by `scale`,
    /// at least 1: what a rate counts with while [`Limiter::set_scale`](crate::Limiter::set_scale)
    /// has scaled it.
    #[inline]
    pub fn scaled(&self, scale: Scale) -> RateParams {
        if scale.is_full() {
            return *self;
        }
        let amount = NonZeroU64::new(scale.apply(self.amount)).unwrap_or(NonZeroU64::MIN);
        let rate = self.rate.with_amount(amount);
        let burst = (self.burst != self.amount).then(|| scale.apply(self.burst));
        RateParams::new(rate, burst)
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

/// A factor applied to every amount at run time, such as 1/5 while a model warms up: set with
/// [`Limiter::set_scale`](crate::Limiter::set_scale).
///
/// A scaled amount is `amount × numerator / denominator`, rounded down and at least 1; an
/// explicit GCRA burst scales the same way. State is named without the amounts (see
/// [`Limits::shape`](crate::Limits::shape)), so scaling keeps the **count** of every key, with
/// every algorithm: a client that made 15 of its 100 requests before the scale went to 1/5
/// has 5 of 20 left, and 20 made during a warm-up at 1/5 leave 80 of 100 once the scale is
/// whole again. (GCRA keeps, beside its theoretical arrival time, the spacing it was written
/// with, and re-expresses what a key owes at the new spacing when it is next charged: the
/// same requests outstanding, paid back at the new rate; until then they drain at the old
/// one.)
///
/// ```
/// use ratelimit_core::{Limits, Scale};
///
/// let limits = Limits::parse("100/minute;7/second").unwrap();
/// let warming = Scale::new(1, 5).unwrap();
/// let scaled: Vec<u64> = limits.params().iter().map(|p| p.scaled(warming).amount()).collect();
/// assert_eq!(scaled, [20, 1]); // 7/5 rounds down to 1; never 0
/// assert_eq!(warming.to_string(), "1/5");
/// assert!(Scale::FULL.is_full());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Scale {
    numerator: u32,
    denominator: u32,
}

impl Scale {
    /// Every limit as configured.
    pub const FULL: Scale = Scale {
        numerator: 1,
        denominator: 1,
    };

    /// `numerator / denominator`; `None` when either is 0.
    pub const fn new(numerator: u32, denominator: u32) -> Option<Scale> {
        if numerator == 0 || denominator == 0 {
            None
        } else {
            Some(Scale {
                numerator,
                denominator,
            })
        }
    }

    /// The numerator.
    pub const fn numerator(self) -> u32 {
        self.numerator
    }

    /// The denominator.
    pub const fn denominator(self) -> u32 {
        self.denominator
    }

    /// Whether this scale leaves amounts as they are.
    pub const fn is_full(self) -> bool {
        self.numerator == self.denominator
    }

    /// `amount` scaled: rounded down, at least 1, at most `u64::MAX`.
    pub fn apply(self, amount: u64) -> u64 {
        if self.is_full() {
            return amount;
        }
        let scaled = u128::from(amount) * u128::from(self.numerator) / u128::from(self.denominator);
        u64::try_from(scaled).unwrap_or(u64::MAX).max(1)
    }

    /// Packed in one word, for an atomic.
    pub(crate) const fn to_bits(self) -> u64 {
        ((self.numerator as u64) << 32) | self.denominator as u64
    }

    /// Unpacked from [`to_bits`](Scale::to_bits); `FULL` for a word no scale packs to.
    pub(crate) const fn from_bits(bits: u64) -> Scale {
        match Scale::new((bits >> 32) as u32, bits as u32) {
            Some(scale) => scale,
            None => Scale::FULL,
        }
    }
}

impl Default for Scale {
    fn default() -> Scale {
        Scale::FULL
    }
}

impl fmt::Display for Scale {
    /// `1/5`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.numerator, self.denominator)
    }
}

impl FromStr for Scale {
    type Err = InvalidScale;

    /// `1/5`, or one whole number (`2` for twice the limits).
    fn from_str(s: &str) -> Result<Scale, InvalidScale> {
        let (n, d) = s.split_once('/').unwrap_or((s, "1"));
        let n = n.trim().parse().map_err(|_| InvalidScale)?;
        let d = d.trim().parse().map_err(|_| InvalidScale)?;
        Scale::new(n, d).ok_or(InvalidScale)
    }
}

/// A scale that is not `N/D` with both whole numbers above 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidScale;

impl fmt::Display for InvalidScale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid scale: expected N/D with N and D whole numbers above 0, such as 1/5")
    }
}

impl std::error::Error for InvalidScale {}
