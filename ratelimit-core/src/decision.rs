//! The answer to a check.

use std::time::Duration;

use crate::algorithm::{RateParams, Verdict};
use crate::rate::Rate;

/// Whether a request may pass, and what the binding limit has left.
///
/// When several rates are checked together, the binding one is the rate that refused the
/// request (the one with the longest wait, if several did) or, when all passed, the one with
/// the fewest requests left.
///
/// Any store builds its answers with [`Decision::allowed`] and [`Decision::refused`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    rate: Rate,
    /// Requests left are `spare / per` (see `Verdict`).
    spare: u64,
    per: u64,
    /// Nanoseconds.
    reset_after: u64,
    /// Nanoseconds; `NEVER` when the cost can never pass, unused when allowed.
    retry_after: u64,
    index: u16,
    charge: u16,
    allowed: bool,
}

/// A decision is returned on every request: it stays small (and so cheap to move).
const NEVER: u64 = u64::MAX;

impl Decision {
    /// An admission by `rate`, which has `remaining` requests of cost 1 left after this one
    /// and is whole again after `reset_after`.
    pub fn allowed(rate: Rate, remaining: u64, reset_after: Duration) -> Decision {
        Decision {
            rate,
            spare: remaining,
            per: 1,
            reset_after: nanos(reset_after),
            retry_after: 0,
            index: 0,
            charge: 0,
            allowed: true,
        }
    }

    /// A refusal by `rate`, which has `remaining` requests left now, is whole again after
    /// `reset_after`, and admits the same request after `retry_after` (`None` when its cost is
    /// more than the rate can ever admit).
    pub fn refused(
        rate: Rate,
        remaining: u64,
        reset_after: Duration,
        retry_after: Option<Duration>,
    ) -> Decision {
        Decision {
            rate,
            spare: remaining,
            per: 1,
            reset_after: nanos(reset_after),
            retry_after: retry_after.map_or(NEVER, |d| nanos(d).min(NEVER - 1)),
            index: 0,
            charge: 0,
            allowed: false,
        }
    }

    /// The same decision, bound by the rate at `index` of the limits checked.
    pub fn at_rate(mut self, index: usize) -> Decision {
        self.index = u16::try_from(index).unwrap_or(u16::MAX);
        self
    }

    /// The same decision, bound by the charge at `index` of the request (see
    /// [`CheckRequest::charges`](crate::store::CheckRequest::charges)).
    pub fn at_charge(mut self, index: usize) -> Decision {
        self.charge = u16::try_from(index).unwrap_or(u16::MAX);
        self
    }

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
        usize::from(self.index)
    }

    /// The binding charge's position in the request, when one request carried several.
    pub fn charge_index(&self) -> usize {
        usize::from(self.charge)
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

    /// Whether `self` is the decision to report over `other` for one request: a refusal over
    /// an admission, the longest wait among refusals, the fewest remaining among admissions.
    pub fn binds_harder_than(&self, other: &Decision) -> bool {
        match (self.allowed, other.allowed) {
            (false, true) => true,
            (true, false) => false,
            (false, false) => {
                self.retry_after != other.retry_after
                    && (self.retry_after == NEVER
                        || (other.retry_after != NEVER && self.retry_after > other.retry_after))
            }
            (true, true) => self.remaining() < other.remaining(),
        }
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
            retry_after: verdict.retry_after.map_or(NEVER, |r| r.min(NEVER - 1)),
            index: index as u16,
            charge: 0,
            allowed: verdict.allowed,
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
