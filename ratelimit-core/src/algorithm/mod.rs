//! The algorithms: their names (one table, dependency-free, which the `#[rate_limit]`
//! attribute shares at compile time) and, with the `runtime` feature, the four of them, each
//! a pure function of its state, the rate, the time and the cost.
//!
//! Nothing here reads a clock or touches a store: the caller passes `now` (nanoseconds since
//! its clock's origin), which is what lets every algorithm run on a fake clock in tests and
//! lets the Redis store run the same arithmetic on the server's clock. All time and count
//! arithmetic saturates: no rate the grammar accepts, no burst and no cost can overflow it.

#[cfg(feature = "runtime")]
pub(crate) mod fixed_window;
#[cfg(feature = "runtime")]
pub(crate) mod gcra;
#[cfg(feature = "runtime")]
pub(crate) mod moving_window;
#[cfg(feature = "runtime")]
mod params;
#[cfg(feature = "runtime")]
pub(crate) mod sliding_window;

use std::fmt;
use std::str::FromStr;

#[cfg(feature = "runtime")]
pub use params::{InvalidScale, RateParams, Scale};

/// How requests are counted against a rate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Generic cell rate algorithm (the default): one 64-bit theoretical arrival time per
    /// key, updated with a lock-free compare-and-swap. Requests are spread evenly over the
    /// period, with a burst of up to the rate's amount (or the configured burst) at once.
    #[default]
    Gcra,
    /// A fixed window that opens on a key's first request and admits the amount until it
    /// closes. Cheap, but a client can spend two windows' worth across a boundary.
    FixedWindow,
    /// The sliding window counter of Python's `limits`: the previous window's count, weighted
    /// by how much of it still overlaps the sliding period, plus the current window's count.
    SlidingWindow,
    /// A moving window: a log of the admitted requests of the last period. Exact, and the
    /// most memory per key (at most one entry per admitted request).
    MovingWindow,
}

impl Algorithm {
    /// Every algorithm.
    pub const ALL: [Algorithm; 4] = [
        Algorithm::Gcra,
        Algorithm::FixedWindow,
        Algorithm::SlidingWindow,
        Algorithm::MovingWindow,
    ];

    /// The algorithm's name as the attribute spells it: `gcra`, `fixed_window`,
    /// `sliding_window`, `moving_window`.
    pub const fn name(self) -> &'static str {
        match self {
            Algorithm::Gcra => "gcra",
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::MovingWindow => "moving_window",
        }
    }

    /// The algorithm's position in [`Algorithm::ALL`]; what the attribute's expansion names.
    pub const fn index(self) -> usize {
        match self {
            Algorithm::Gcra => 0,
            Algorithm::FixedWindow => 1,
            Algorithm::SlidingWindow => 2,
            Algorithm::MovingWindow => 3,
        }
    }

    /// Whether `burst` means something to this algorithm (only GCRA has one: the window
    /// algorithms admit their amount per window).
    pub const fn has_burst(self) -> bool {
        matches!(self, Algorithm::Gcra)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error of [`Algorithm::from_str`]: a name that is not one of the four.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownAlgorithm(pub String);

impl fmt::Display for UnknownAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown algorithm {:?}: expected one of gcra, fixed_window, sliding_window, moving_window",
            self.0
        )
    }
}

impl std::error::Error for UnknownAlgorithm {}

impl FromStr for Algorithm {
    type Err = UnknownAlgorithm;

    fn from_str(s: &str) -> Result<Algorithm, UnknownAlgorithm> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownAlgorithm(s.to_owned()))
    }
}

#[cfg(feature = "runtime")]
pub(crate) use runtime::*;

#[cfg(feature = "runtime")]
mod runtime {
    use super::{Algorithm, RateParams, fixed_window, gcra, moving_window, sliding_window};

    /// What one rate says of one request. Times are nanoseconds from `now`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) struct Verdict {
        pub(crate) allowed: bool,
        /// Requests left after this one (allowed) or right now (denied) are `spare / per`: GCRA
        /// counts in nanoseconds, and the division waits until someone asks.
        pub(crate) spare: u64,
        pub(crate) per: u64,
        /// Until the key's budget for this rate is whole again.
        pub(crate) reset_after: u64,
        /// Until a retry of the same cost can pass; `None` when allowed, or when the cost exceeds
        /// what the rate can ever admit.
        pub(crate) retry_after: Option<u64>,
    }

    impl Verdict {
        pub(crate) fn remaining(&self) -> u64 {
            self.spare / self.per
        }

        /// The same verdict with `spare` counted in units of `per`.
        pub(crate) fn counted_in(mut self, per: u64) -> Verdict {
            self.per = per;
            self
        }

        pub(crate) fn allow(remaining: u64, reset_after: u64) -> Verdict {
            Verdict {
                allowed: true,
                spare: remaining,
                per: 1,
                reset_after,
                retry_after: None,
            }
        }

        pub(crate) fn deny(remaining: u64, reset_after: u64, retry_after: Option<u64>) -> Verdict {
            Verdict {
                allowed: false,
                spare: remaining,
                per: 1,
                reset_after,
                retry_after,
            }
        }
    }

    /// One key's state for one rate, for the algorithms that need more than one word or must
    /// change several rates together.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub(crate) enum State {
        /// The TAT, and the spacing it was written with (0: none yet), so that a limit
        /// scaled since keeps the number of requests outstanding.
        Gcra {
            tat: u64,
            interval: u64,
        },
        Fixed(fixed_window::FixedWindow),
        Sliding(sliding_window::SlidingWindow),
        Moving(moving_window::MovingWindow),
    }

    impl State {
        pub(crate) fn new(algorithm: Algorithm) -> State {
            match algorithm {
                Algorithm::Gcra => State::Gcra {
                    tat: 0,
                    interval: 0,
                },
                Algorithm::FixedWindow => State::Fixed(Default::default()),
                Algorithm::SlidingWindow => State::Sliding(Default::default()),
                Algorithm::MovingWindow => State::Moving(Default::default()),
            }
        }

        /// Judges a request of `cost` at `now`; applies it only when `consume` and allowed.
        #[inline]
        pub(crate) fn check(
            &mut self,
            rate: &RateParams,
            now: u64,
            cost: u64,
            consume: bool,
        ) -> Verdict {
            match self {
                State::Gcra { tat, interval } => {
                    let base = gcra::rescale(*tat, now, *interval, rate.interval);
                    let (verdict, new_tat) = gcra::check(base, rate, now, cost);
                    if consume && cost > 0 && verdict.allowed {
                        *tat = new_tat;
                        *interval = rate.interval;
                    }
                    verdict
                }
                State::Fixed(s) => s.check(rate, now, cost, consume),
                State::Sliding(s) => s.check(rate, now, cost, consume),
                State::Moving(s) => s.check(rate, now, cost, consume),
            }
        }

        /// Gives back a charge of `cost` made at about `now` (a request that another limit
        /// refused afterwards). The state ends as if the charge had not been made, or a
        /// little more generous when the charge's window has since closed.
        pub(crate) fn refund(&mut self, rate: &RateParams, now: u64, cost: u64) {
            match self {
                State::Gcra { tat, interval } => {
                    let base = gcra::rescale(*tat, now, *interval, rate.interval);
                    *tat = gcra::refund(base, rate, now, cost);
                    *interval = rate.interval;
                }
                State::Fixed(s) => s.refund(rate, now, cost),
                State::Sliding(s) => s.refund(rate, now, cost),
                State::Moving(s) => s.refund(cost),
            }
        }

        /// Charges `cost` at `now` whatever the rate says: a settled amount the key owes.
        pub(crate) fn debit(&mut self, rate: &RateParams, now: u64, cost: u64) {
            match self {
                State::Gcra { tat, interval } => {
                    let base = gcra::rescale(*tat, now, *interval, rate.interval);
                    *tat = gcra::debit(base, rate, now, cost);
                    *interval = rate.interval;
                }
                State::Fixed(s) => s.debit(rate, now, cost),
                State::Sliding(s) => s.debit(rate, now, cost),
                State::Moving(s) => s.debit(rate, now, cost),
            }
        }

        /// Whether both states belong to the same algorithm.
        pub(crate) fn same_kind(&self, other: &State) -> bool {
            std::mem::discriminant(self) == std::mem::discriminant(other)
        }

        /// The instant from which this state is as good as new, so it can be dropped.
        #[inline]
        pub(crate) fn expires_at(&self, rate: &RateParams) -> u64 {
            match self {
                State::Gcra { tat, .. } => *tat,
                State::Fixed(s) => s.expires_at(rate),
                State::Sliding(s) => s.expires_at(rate),
                State::Moving(s) => s.expires_at(rate),
            }
        }
    }

    /// Checks a request against several rates at once: all pass and all are charged, or none is.
    /// Returns the index of the binding rate with its verdict.
    pub(crate) fn check_all(
        states: &mut [State],
        rates: &[RateParams],
        now: u64,
        cost: u64,
        consume: bool,
    ) -> (usize, Verdict) {
        if let ([state], [rate]) = (&mut *states, rates) {
            return (0, state.check(rate, now, cost, consume));
        }
        let judge = |states: &mut [State], consume: bool| {
            let mut worst: Option<(usize, Verdict)> = None;
            for (i, (state, rate)) in states.iter_mut().zip(rates).enumerate() {
                let verdict = state.check(rate, now, cost, consume);
                if worst.is_none_or(|(_, w)| binds_harder(&verdict, &w)) {
                    worst = Some((i, verdict));
                }
            }
            worst.unwrap_or((0, Verdict::allow(0, 0)))
        };
        let (index, verdict) = judge(states, false);
        if consume && verdict.allowed {
            // Every rate passed without being charged; charge them all now, at the same instant.
            judge(states, true)
        } else {
            (index, verdict)
        }
    }

    /// Gives back a charge that [`check_all`] admitted.
    pub(crate) fn refund_all(states: &mut [State], rates: &[RateParams], now: u64, cost: u64) {
        for (state, rate) in states.iter_mut().zip(rates) {
            state.refund(rate, now, cost);
        }
    }

    /// Charges `cost` to every rate whatever they say ([`State::debit`]).
    pub(crate) fn debit_all(states: &mut [State], rates: &[RateParams], now: u64, cost: u64) {
        for (state, rate) in states.iter_mut().zip(rates) {
            state.debit(rate, now, cost);
        }
    }

    /// Whether `a` is the verdict to report over `b`: a denial over an admission, the longest
    /// wait among denials (never being the longest), the fewest remaining among admissions.
    pub(crate) fn binds_harder(a: &Verdict, b: &Verdict) -> bool {
        match (a.allowed, b.allowed) {
            (false, true) => true,
            (true, false) => false,
            (false, false) => match (a.retry_after, b.retry_after) {
                (None, Some(_)) => true,
                (Some(x), Some(y)) => x > y,
                _ => false,
            },
            (true, true) => a.remaining() < b.remaining(),
        }
    }
}
