//! The edges: cost 0, the whole range of amounts, periods, bursts, costs and times the
//! grammar and the API accept (no panic, in debug builds where overflow panics), limits
//! scaled at run time, and gave-back charges.

use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use ratelimit_core::store::{Charge, LimitState, Mode};
use ratelimit_core::{Algorithm, FakeClock, Limiter, Limits, MemoryStore, Rate, Unit};

use crate::common::ready;

fn charge(limits: &Limits, algorithm: Algorithm, cost: u64) -> Charge<'_> {
    Charge::new("", limits, algorithm, cost)
}

#[test]
fn cost_zero_stores_nothing_and_reports_the_state_as_it_is() {
    for algorithm in Algorithm::ALL {
        let clock = FakeClock::new();
        let store = Arc::new(MemoryStore::with_clock(clock.clone()));
        let limiter = Limiter::builder()
            .shared_store(store.clone())
            .algorithm(algorithm)
            .build();
        let limits = Limits::parse("10/minute").unwrap();
        // A fresh key: whole, nothing to wait for, nothing stored (as `limits` says: the
        // reset of an untouched window is now, but an empty moving window resets one period
        // from now, `test_moving_window_empty_stats`).
        let d = ready(limiter.check(&limits, "fresh", 0)).unwrap();
        assert!(d.is_allowed(), "{algorithm}");
        assert_eq!(d.remaining(), 10, "{algorithm}");
        let reset = match algorithm {
            Algorithm::MovingWindow => Duration::from_secs(60),
            _ => Duration::ZERO,
        };
        assert_eq!(d.reset_after(), reset, "{algorithm}");
        assert!(store.is_empty(), "{algorithm}: cost 0 stored a key");
        // A used key: the same answer as a peek at cost 0, and the state is unchanged.
        ready(limiter.check(&limits, "used", 4)).unwrap();
        clock.advance(Duration::from_secs(1));
        let zero = ready(limiter.check(&limits, "used", 0)).unwrap();
        let peek = ready(limiter.peek(&limits, "used", 0)).unwrap();
        assert_eq!(zero, peek, "{algorithm}");
        assert_eq!(zero.remaining(), 6, "{algorithm}");
        assert_eq!(zero.reset_after(), peek.reset_after());
    }
}

#[test]
fn a_flood_of_cost_zero_requests_never_grows_a_moving_window_log() {
    let limits = Limits::parse("1000/hour").unwrap();
    let spend = charge(&limits, Algorithm::MovingWindow, 1);
    let nothing = charge(&limits, Algorithm::MovingWindow, 0);
    let mut state = LimitState::new(&spend);
    for now in 0..10 {
        assert!(state.check(&spend, now, Mode::Charge).is_allowed());
    }
    let before = state.clone();
    for now in 10..100_000 {
        assert!(state.check(&nothing, now, Mode::Charge).is_allowed());
    }
    assert_eq!(state, before, "cost 0 logged entries");
}

#[test]
fn a_refund_gives_a_charge_back() {
    for algorithm in Algorithm::ALL {
        let limits = Limits::parse("3/minute").unwrap();
        let c = charge(&limits, algorithm, 2);
        let mut state = LimitState::new(&c);
        let fresh = state.check(&c, 5, Mode::Peek);
        assert!(state.check(&c, 5, Mode::Charge).is_allowed());
        assert!(
            !state.check(&c, 6, Mode::Charge).is_allowed(),
            "{algorithm}"
        );
        state.check(&c, 6, Mode::Refund);
        let after = state.check(&c, 6, Mode::Peek);
        assert_eq!(after.remaining(), fresh.remaining(), "{algorithm}");
        assert!(state.check(&c, 6, Mode::Charge).is_allowed(), "{algorithm}");
    }
}

#[test]
fn a_scaled_limit_keeps_its_counted_state() {
    for algorithm in Algorithm::ALL {
        let clock = FakeClock::new();
        let limiter = Limiter::builder()
            .store(MemoryStore::with_clock(clock.clone()))
            .algorithm(algorithm)
            .build();
        let normal = Limits::parse("10/minute").unwrap();
        let warming = Limits::parse("2/minute").unwrap();
        assert!(ready(limiter.check(&normal, "k", 10)).unwrap().is_allowed());
        // Scaled down (a model warming up) and back: the 10 spent still count.
        let d = ready(limiter.check(&warming, "k", 1)).unwrap();
        assert!(
            !d.is_allowed(),
            "{algorithm}: scaling down forgot the count"
        );
        assert_eq!(d.remaining(), 0);
        assert!(
            !ready(limiter.check(&normal, "k", 1)).unwrap().is_allowed(),
            "{algorithm}: scaling back forgot the count"
        );
    }
}

/// `Limiter::set_scale` keeps the count, whatever the algorithm, on both of the memory
/// store's paths (one GCRA rate: lock-free; several rates: locked): 20 made while warming up
/// at 1/5 leave 80 of 100, and 50 made at full strength are too many at 1/5.
#[test]
fn scaling_keeps_the_count_for_every_algorithm() {
    let warming = ratelimit_core::Scale::new(1, 5).unwrap();
    for algorithm in Algorithm::ALL {
        for rates in ["100/minute", "100/minute;10000/day"] {
            let clock = FakeClock::new();
            let limiter = Limiter::builder()
                .store(MemoryStore::with_clock(clock.clone()))
                .algorithm(algorithm)
                .build();
            let limits = Limits::parse(rates).unwrap();
            let what = format!("{algorithm} {rates}");
            ready(limiter.set_scale(warming)).unwrap();
            for i in 0..20 {
                let d = ready(limiter.check(&limits, "up", 1)).unwrap();
                assert!(d.is_allowed(), "{what}: warm-up request {i}");
                assert_eq!(d.limit(), 20, "{what}");
            }
            assert!(
                !ready(limiter.check(&limits, "up", 1)).unwrap().is_allowed(),
                "{what}"
            );
            clock.advance(Duration::from_millis(10));
            ready(limiter.set_scale(ratelimit_core::Scale::FULL)).unwrap();
            let d = ready(limiter.check(&limits, "up", 1)).unwrap();
            assert!(d.is_allowed(), "{what}");
            assert_eq!(
                (d.limit(), d.remaining()),
                (100, 79),
                "{what}: the count after the warm-up"
            );

            for _ in 0..50 {
                assert!(
                    ready(limiter.check(&limits, "down", 1))
                        .unwrap()
                        .is_allowed()
                );
            }
            ready(limiter.set_scale(warming)).unwrap();
            let d = ready(limiter.check(&limits, "down", 1)).unwrap();
            assert!(!d.is_allowed(), "{what}: 50 made are more than 20");
            assert_eq!(d.remaining(), 0, "{what}");
        }
    }
}

#[test]
fn a_year_is_360_days_as_in_limits() {
    let rate = Rate::parse("1/year").unwrap();
    assert_eq!(rate.period(), Duration::from_secs(360 * 24 * 3600));
    assert_eq!(Rate::parse("1/month").unwrap().period() * 12, rate.period());
}

/// Any rate the grammar accepts: every unit, any multiple that fits, any amount.
fn any_rate() -> impl Strategy<Value = Rate> {
    let units = prop::sample::select(Unit::ALL.to_vec());
    let extreme = prop_oneof![
        Just(1u64),
        Just(2),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        1..=u64::MAX
    ];
    (units, extreme.clone(), extreme).prop_map(|(unit, amount, multiples)| {
        let max = u64::MAX / unit.nanos();
        let multiples = NonZeroU64::new(multiples % max + 1).unwrap();
        Rate::new(NonZeroU64::new(amount).unwrap(), multiples, unit).expect("fits")
    })
}

fn any_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        any::<u64>(),
        0..1_000u64
    ]
}

fn any_mode() -> impl Strategy<Value = Mode> {
    prop::sample::select(vec![Mode::Charge, Mode::Peek, Mode::Refund])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// Whatever the numbers, in any order and at any time (time may even go back), no
    /// algorithm panics, and every decision is coherent.
    #[test]
    fn no_accepted_input_panics(
        rates in prop::collection::vec(any_rate(), 1..3),
        burst in prop::option::of(any_u64()),
        ops in prop::collection::vec((any_u64(), any_u64(), any_mode()), 1..24),
    ) {
        let mut limits = Limits::from_rates(rates).unwrap();
        if let Some(burst) = burst.and_then(NonZeroU64::new) {
            limits = limits.with_burst(burst);
        }
        for algorithm in Algorithm::ALL {
            let mut state = LimitState::new(&charge(&limits, algorithm, 1));
            for &(now, cost, mode) in &ops {
                let c = charge(&limits, algorithm, cost);
                let d = state.check(&c, now, mode);
                let _ = (d.remaining(), d.reset_after(), d.retry_after(), d.exceeds_capacity());
                let _ = state.expires_at(&c);
            }
        }
    }
}
