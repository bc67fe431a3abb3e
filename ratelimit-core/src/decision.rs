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
    pub(crate) rate: Rate,
    /// Requests left are `spare / per` (see `Verdict`).
    pub(crate) spare: u64,
    pub(crate) per: u64,
    /// Nanoseconds.
    pub(crate) reset_after: u64,
    /// Nanoseconds; `NEVER` when the cost can never pass, unused when allowed.
    pub(crate) retry_after: u64,
    pub(crate) index: u32,
    pub(crate) allowed: bool,
}

/// A decision is returned on every request: it stays small (and so cheap to move).
const NEVER: u64 = u64::MAX;

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
        self.index as usize
    }

    /// The binding rate's amount: the most requests it admits per period.
    pub fn limit(&self) -> u64 {
        self.rate.amount()
    }

    /// Requests of cost 1 the binding rate still admits: after this request when it passed,
    /// right now when it was refused.
    pub fn remaining(&self) -> u64 {
        self.spare / self.per
    }

    /// How long until the binding rate's budget for this key is whole again.
    pub fn reset_after(&self) -> Duration {
        Duration::from_nanos(self.reset_after)
    }

    /// When refused: how long until the same request can pass. `None` when the request
    /// passed, and when its cost is more than the limit can ever admit (see
    /// [`exceeds_capacity`](Decision::exceeds_capacity)).
    pub fn retry_after(&self) -> Option<Duration> {
        (!self.allowed && self.retry_after != NEVER).then(|| Duration::from_nanos(self.retry_after))
    }

    /// Whether the request was refused because its cost is more than the binding rate admits
    /// even to a fresh key: waiting will not help.
    pub fn exceeds_capacity(&self) -> bool {
        !self.allowed && self.retry_after == NEVER
    }
}

impl Decision {
    #[inline]
    pub(crate) fn from_verdict(rate: &RateParams, index: usize, verdict: Verdict) -> Decision {
        Decision {
            rate: rate.rate,
            spare: verdict.spare,
            per: verdict.per,
            reset_after: verdict.reset_after,
            retry_after: verdict.retry_after.unwrap_or(NEVER),
            index: index as u32,
            allowed: verdict.allowed,
        }
    }

    /// A refusal by `rate` (the store could not take the key) with a wait of `retry` ns.
    pub(crate) fn refused(rate: &RateParams, retry: u64) -> Decision {
        Decision {
            rate: rate.rate,
            spare: 0,
            per: 1,
            reset_after: retry,
            retry_after: retry,
            index: 0,
            allowed: false,
        }
    }
}
