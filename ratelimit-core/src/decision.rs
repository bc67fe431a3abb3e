//! The answer to a check.

use std::time::Duration;

use crate::algorithm::Verdict;
use crate::limits::RateParams;
use crate::rate::Rate;

/// Whether a request may pass, and what the binding limit has left.
///
/// When several rates are checked together, the binding one is the rate that refused the
/// request (the one with the longest wait, if several did) or, when all passed, the one with
/// the fewest requests left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub(crate) allowed: bool,
    pub(crate) rate: Rate,
    pub(crate) index: usize,
    pub(crate) remaining: u64,
    pub(crate) reset_after: Duration,
    pub(crate) retry_after: Option<Duration>,
}

impl Decision {
    /// Whether the request passed (and was charged, unless this was a peek).
    pub fn is_allowed(&self) -> bool {
        self.allowed
    }

    /// The binding rate.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// The binding rate's position in the limits that were checked.
    pub fn rate_index(&self) -> usize {
        self.index
    }

    /// The binding rate's amount: the most requests it admits per period.
    pub fn limit(&self) -> u64 {
        self.rate.amount()
    }

    /// Requests of cost 1 the binding rate still admits: after this request when it passed,
    /// right now when it was refused.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// How long until the binding rate's budget for this key is whole again.
    pub fn reset_after(&self) -> Duration {
        self.reset_after
    }

    /// When refused: how long until the same request can pass. `None` when the request
    /// passed, and when its cost is more than the limit can ever admit (see
    /// [`exceeds_capacity`](Decision::exceeds_capacity)).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Whether the request was refused because its cost is more than the binding rate admits
    /// even to a fresh key: waiting will not help.
    pub fn exceeds_capacity(&self) -> bool {
        !self.allowed && self.retry_after.is_none()
    }
}

impl Decision {
    pub(crate) fn from_verdict(rate: &RateParams, index: usize, verdict: Verdict) -> Decision {
        Decision {
            allowed: verdict.allowed,
            rate: rate.rate,
            index,
            remaining: verdict.remaining,
            reset_after: Duration::from_nanos(verdict.reset_after),
            retry_after: verdict.retry_after.map(Duration::from_nanos),
        }
    }
}
