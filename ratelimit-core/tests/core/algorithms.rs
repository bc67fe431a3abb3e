//! Every algorithm through the limiter and the in-memory store on a fake clock, against
//! simple reference models built from the log of admitted requests.

use std::time::Duration;

use proptest::prelude::*;
use ratelimit_core::{Algorithm, FakeClock, Limiter, Limits, MemoryStore};

use crate::common::ready;
use crate::model;

fn limiter(algorithm: Algorithm) -> (Limiter, FakeClock) {
    let clock = FakeClock::new();
    let limiter = Limiter::builder()
        .store(MemoryStore::with_clock(clock.clone()))
        .algorithm(algorithm)
        .build();
    (limiter, clock)
}

fn run(algorithm: Algorithm, rate: &str, steps: &[(u64, u64, bool)]) -> Result<(), TestCaseError> {
    let (limiter, clock) = limiter(algorithm);
    let limits = Limits::parse(rate).unwrap();
    let check = |t: u64, n: u64, debit: bool| {
        clock.set(t);
        match debit {
            // Settled to `n` more than was reserved: debt.
            true => ready(limiter.settle("", &limits, b"k", 0, n)).unwrap(),
            false => ready(limiter.check(&limits, "k", n)).unwrap(),
        }
    };
    model::run(algorithm, &limits, 1, steps, check)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn moving_window_matches_the_log(steps in model::steps(), rate in prop::sample::select(vec!["5/second", "3/250ms", "8/2 seconds"])) {
        run(Algorithm::MovingWindow, rate, &steps)?;
    }

    #[test]
    fn fixed_window_matches_the_log(steps in model::steps(), rate in prop::sample::select(vec!["5/second", "3/250ms", "8/2 seconds"])) {
        run(Algorithm::FixedWindow, rate, &steps)?;
    }

    #[test]
    fn sliding_window_matches_the_log(steps in model::steps(), rate in prop::sample::select(vec!["5/second", "3/250ms", "8/2 seconds"])) {
        run(Algorithm::SlidingWindow, rate, &steps)?;
    }

    #[test]
    fn gcra_matches_the_leaky_bucket(steps in model::steps(), rate in prop::sample::select(vec!["5/second", "3/250ms", "7/second", "8/2 seconds"])) {
        run(Algorithm::Gcra, rate, &steps)?;
    }
}

#[test]
fn several_rates_pass_or_fail_as_one() {
    for algorithm in Algorithm::ALL {
        let (limiter, clock) = limiter(algorithm);
        let limits = Limits::parse("3/second; 5/minute").unwrap();
        let at = |secs: u64| {
            clock.set(secs * 1_000_000_000);
            ready(limiter.check(&limits, "k", 1)).unwrap()
        };
        for _ in 0..3 {
            assert!(at(0).is_allowed(), "{algorithm}");
        }
        let refused = at(0);
        assert!(!refused.is_allowed());
        assert_eq!(
            (refused.rate_index(), refused.limit()),
            (0, 3),
            "{algorithm}: the second-rate limit binds"
        );
        // 3 s later the per-second rate passes again, and the minute has 2 left: the
        // refusal above took nothing from the minute.
        assert!(at(3).is_allowed(), "{algorithm}");
        let last = at(3);
        assert!(last.is_allowed(), "{algorithm}");
        assert_eq!((last.rate_index(), last.remaining()), (1, 0), "{algorithm}");
        let refused = at(3);
        assert_eq!(refused.rate_index(), 1, "{algorithm}: now the minute binds");
        // The minute refused, so the second was not charged either.
        let peek = ready(limiter.peek(&limits, "k", 2)).unwrap();
        assert_eq!(peek.rate_index(), 1);
    }
}

#[test]
fn peek_charges_nothing_and_keys_and_limits_are_separate() {
    for algorithm in Algorithm::ALL {
        let (limiter, _clock) = limiter(algorithm);
        let limits = Limits::parse("2/minute").unwrap();
        for _ in 0..5 {
            let d = ready(limiter.peek(&limits, "a", 2)).unwrap();
            assert!(d.is_allowed(), "{algorithm}");
            assert_eq!(d.remaining(), 0);
        }
        assert!(ready(limiter.check(&limits, "a", 2)).unwrap().is_allowed());
        assert!(!ready(limiter.check(&limits, "a", 1)).unwrap().is_allowed());
        assert!(
            ready(limiter.check(&limits, "b", 2)).unwrap().is_allowed(),
            "{algorithm}: b has its own budget"
        );
        let other = Limits::parse("3/hour").unwrap();
        assert!(
            ready(limiter.check(&other, "a", 3)).unwrap().is_allowed(),
            "{algorithm}: another period, another budget"
        );
    }
}

#[test]
fn a_cost_beyond_the_limit_is_a_clear_refusal() {
    for algorithm in Algorithm::ALL {
        let (limiter, _clock) = limiter(algorithm);
        let limits = Limits::parse("10/minute").unwrap();
        let d = ready(limiter.check(&limits, "batch", 11)).unwrap();
        assert!(!d.is_allowed() && d.exceeds_capacity(), "{algorithm}");
        assert_eq!(d.remaining(), 10, "{algorithm}: nothing was charged");
        assert!(
            ready(limiter.check(&limits, "batch", 10))
                .unwrap()
                .is_allowed()
        );
        let huge = ready(limiter.check(&limits, "batch", u64::MAX)).unwrap();
        assert!(huge.exceeds_capacity(), "{algorithm}");
    }
}

#[test]
fn burst_and_prefix() {
    let (limiter, clock) = limiter(Algorithm::Gcra);
    let limits = Limits::parse("60/minute")
        .unwrap()
        .with_burst(std::num::NonZeroU64::new(2).unwrap());
    assert!(ready(limiter.check(&limits, "k", 1)).unwrap().is_allowed());
    assert!(ready(limiter.check(&limits, "k", 1)).unwrap().is_allowed());
    let refused = ready(limiter.check(&limits, "k", 1)).unwrap();
    assert_eq!(refused.retry_after(), Some(Duration::from_secs(1)));
    clock.advance(Duration::from_secs(1));
    assert!(ready(limiter.check(&limits, "k", 1)).unwrap().is_allowed());

    let store = std::sync::Arc::new(MemoryStore::with_clock(clock.clone()));
    let a = Limiter::builder()
        .shared_store(store.clone())
        .key_prefix("a")
        .build();
    let b = Limiter::builder()
        .shared_store(store.clone())
        .key_prefix("b")
        .build();
    let one = Limits::parse("1/minute").unwrap();
    assert!(ready(a.check(&one, "k", 1)).unwrap().is_allowed());
    assert!(!ready(a.check(&one, "k", 1)).unwrap().is_allowed());
    assert!(
        ready(b.check(&one, "k", 1)).unwrap().is_allowed(),
        "another prefix, another budget"
    );
    assert_eq!(store.len(), 2);
}
