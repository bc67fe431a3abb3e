//! A reference model of the four algorithms, built from the log of admitted requests, and
//! the run that compares a store's decisions with it: shared by the in-memory tests and the
//! Redis ones, so both stores are held to the same model.

#![allow(dead_code)] // each test file uses a part

use proptest::prelude::*;
use ratelimit_core::{Algorithm, Decision, Limits};

/// A reference model: the admitted requests, and what each algorithm says of a new one.
pub struct Model {
    algorithm: Algorithm,
    amount: u64,
    period: u64,
    admitted: Vec<(u64, u64)>,
}

impl Model {
    fn sum(&self, pred: impl Fn(u64) -> bool) -> u64 {
        self.admitted
            .iter()
            .filter(|(t, _)| pred(*t))
            .map(|(_, n)| n)
            .sum()
    }

    fn admits(&self, t: u64, n: u64) -> bool {
        let (a, w) = (self.amount, self.period);
        match self.algorithm {
            Algorithm::MovingWindow => self.sum(|ti| ti + w > t) + n <= a,
            Algorithm::SlidingWindow => {
                let idx = t / w;
                let prev = self.sum(|ti| idx > 0 && ti / w == idx - 1);
                let curr = self.sum(|ti| ti / w == idx);
                let left = w - (t - idx * w);
                (u128::from(prev) * u128::from(left) / u128::from(w)) as u64 + curr + n <= a
            }
            Algorithm::FixedWindow => {
                let mut start: Option<u64> = None;
                let mut count = 0;
                for &(ti, ni) in &self.admitted {
                    if start.is_none_or(|s| ti >= s + w) {
                        start = Some(ti);
                        count = 0;
                    }
                    count += ni;
                }
                if start.is_none_or(|s| t >= s + w) {
                    count = 0;
                }
                count + n <= a
            }
            Algorithm::Gcra => {
                // A leaky bucket of "time owed": each request pours n × interval in, and it
                // drains one nanosecond per nanosecond; it may hold amount × interval.
                let interval = w.div_ceil(a);
                self.level(t) + n * interval <= a * interval
            }
        }
    }

    fn level(&self, t: u64) -> u64 {
        let interval = self.period.div_ceil(self.amount);
        let (mut level, mut last) = (0u64, 0u64);
        for &(ti, ni) in &self.admitted {
            level = level.saturating_sub(ti - last) + ni * interval;
            last = ti;
        }
        level.saturating_sub(t - last)
    }
}

/// Runs `steps` (a gap to the previous request, a cost, and whether the cost is settled debt
/// rather than a request) through `check` (a store's decision at time `t` for cost `n`, or
/// its answer to a debit of `n`), and compares every decision with the model, where debt is
/// a request admitted whatever the limit says. `tick` is the smallest time the store counts
/// (1 ns in memory, 1,000 ns in Redis): its waits are exact to that.
pub fn run(
    algorithm: Algorithm,
    limits: &Limits,
    tick: u64,
    steps: &[(u64, u64, bool)],
    mut check: impl FnMut(u64, u64, bool) -> Decision,
) -> Result<(), TestCaseError> {
    let r = limits.rates().next().unwrap();
    let mut model = Model {
        algorithm,
        amount: r.amount(),
        period: r.period().as_nanos() as u64,
        admitted: vec![],
    };
    let mut t = 1_000 * tick; // away from zero, where nothing has happened yet
    let mut indebted = false;
    for &(dt, n, debit) in steps {
        t += dt / tick * tick;
        let d = check(t, n, debit);
        if debit {
            // Charged whatever the limit says: the work was done.
            model.admitted.push((t, n));
            indebted = true;
            continue;
        }
        prop_assert_eq!(
            d.is_allowed(),
            model.admits(t, n),
            "{} at {} cost {}",
            algorithm,
            t,
            n
        );
        if d.is_allowed() {
            if algorithm == Algorithm::Gcra {
                let interval = model.period.div_ceil(model.amount);
                let left = (model.amount * interval - model.level(t) - n * interval) / interval;
                prop_assert_eq!(d.remaining(), left, "GCRA remaining at {}", t);
            }
            model.admitted.push((t, n));
        } else if let Some(retry) = d.retry_after() {
            let retry = retry.as_nanos() as u64;
            prop_assert!(
                model.admits(t + retry, n),
                "{algorithm}: not admitted at retry_after {retry}"
            );
            prop_assert!(
                !model.admits(t + retry - tick, n),
                "{algorithm}: retry_after {retry} is late"
            );
        } else {
            prop_assert!(
                n > model.amount,
                "never admitted only when the cost exceeds the amount"
            );
        }
    }
    // The property the windows exist for (debt may break it: it is charged, not admitted).
    if indebted {
        return Ok(());
    }
    let (a, w) = (model.amount, model.period);
    match algorithm {
        Algorithm::MovingWindow => {
            for &(ti, _) in &model.admitted {
                prop_assert!(model.sum(|tj| tj <= ti && tj + w > ti) <= a);
            }
        }
        Algorithm::FixedWindow => {
            let mut start = None;
            let mut count = 0;
            for &(ti, ni) in &model.admitted {
                if start.is_none_or(|s| ti >= s + w) {
                    start = Some(ti);
                    count = 0;
                }
                count += ni;
                prop_assert!(count <= a);
            }
        }
        _ => {}
    }
    Ok(())
}

/// Request sequences: gaps from nothing to a bit over a period of the rates the tests use,
/// and costs up to 6; about one step in eight settles debt instead (a cost up to 12,
/// charged whatever the limit says).
pub fn steps() -> impl Strategy<Value = Vec<(u64, u64, bool)>> {
    let gap = prop_oneof![Just(0u64), 1u64..2_000_000, 1_000_000u64..1_500_000_000];
    let step = prop_oneof![
        7 => (1u64..=6).prop_map(|n| (n, false)),
        1 => (1u64..=12).prop_map(|n| (n, true)),
    ];
    prop::collection::vec(
        (gap, step).prop_map(|(gap, (n, debit))| (gap, n, debit)),
        1..80,
    )
}
