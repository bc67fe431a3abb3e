//! One key's state under one charge's limits, for stores that keep state themselves.

use super::{Charge, Mode};
use crate::algorithm::{RateParams, State, check_all, debit_all, refund_all};
use crate::decision::Decision;

/// The state of one key under one [`Charge`]'s limits (one entry per rate), with the
/// algorithms that judge it: what a store that keeps its own state (in a map behind a lock,
/// in a database row) stores per key and scope.
///
/// ```
/// use ratelimit_core::store::{Charge, LimitState, Mode};
/// use ratelimit_core::{Algorithm, Limits};
///
/// let limits = Limits::parse("2/second").unwrap();
/// let charge = Charge::new("", &limits, Algorithm::Gcra, 1);
/// let mut state = LimitState::new(&charge);
/// assert!(state.check(&charge, 0, Mode::Charge).is_allowed());
/// assert!(state.check(&charge, 0, Mode::Charge).is_allowed());
/// assert!(!state.check(&charge, 0, Mode::Charge).is_allowed());
/// state.check(&charge, 0, Mode::Refund);
/// assert!(state.check(&charge, 0, Mode::Charge).is_allowed());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitState {
    states: Vec<State>,
}

impl LimitState {
    /// A fresh state for `charge`'s limits and algorithm.
    pub fn new(charge: &Charge<'_>) -> LimitState {
        LimitState {
            states: vec![State::new(charge.algorithm); charge.limits.params().len()],
        }
    }

    /// Judges `charge` at `now` (nanoseconds on the store's clock) and, as `mode` says,
    /// charges it (when every rate admits it), peeks, gives an earlier charge back, or charges
    /// it whatever the rates say (a debit). The
    /// decision is bound by the rate that refused, or the one with the fewest left.
    ///
    /// A state made for other limits (another number of rates, another algorithm) starts
    /// over.
    pub fn check(&mut self, charge: &Charge<'_>, now: u64, mode: Mode) -> Decision {
        let params = charge.params();
        let params = &*params;
        let fresh = State::new(charge.algorithm);
        if self.states.len() != params.len() || !self.states.iter().all(|s| s.same_kind(&fresh)) {
            self.states = vec![fresh; params.len()];
        }
        check_states(&mut self.states, params, now, charge.cost, mode)
    }

    /// From when on (store clock) this state is as good as new, so dropping it changes no
    /// decision.
    pub fn expires_at(&self, charge: &Charge<'_>) -> u64 {
        self.states
            .iter()
            .zip(charge.params().iter())
            .map(|(state, rate)| state.expires_at(rate))
            .max()
            .unwrap_or(0)
    }
}

/// [`LimitState::check`] of states already made for `params` (one per rate, of the charge's
/// algorithm): what a store that keeps a single rate's state inline calls.
#[inline]
pub(crate) fn check_states(
    states: &mut [State],
    params: &[RateParams],
    now: u64,
    cost: u64,
    mode: Mode,
) -> Decision {
    // After a refund or a debit, the answer describes the state as it is (a judgement at
    // cost 0).
    let cost = match mode {
        Mode::Refund => {
            refund_all(states, params, now, cost);
            0
        }
        Mode::Debit => {
            debit_all(states, params, now, cost);
            0
        }
        Mode::Charge | Mode::Peek => cost,
    };
    let consume = mode == Mode::Charge && cost > 0;
    let (index, verdict) = check_all(states, params, now, cost, consume);
    Decision::from_verdict(&params[index], index, verdict)
}
