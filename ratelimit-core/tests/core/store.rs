//! The in-memory store under contention and under a flood of distinct keys.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ratelimit_core::store::WhenFull;
use ratelimit_core::{Algorithm, FakeClock, Limiter, Limits, MemoryStore};

use crate::common::ready;

#[test]
fn eight_threads_on_one_key_admit_exactly_the_limit() {
    for algorithm in Algorithm::ALL {
        for rate in ["1000/hour", "1000/hour; 5000/day"] {
            let clock = FakeClock::new();
            let limiter = Limiter::builder()
                .store(MemoryStore::with_clock(clock.clone()))
                .algorithm(algorithm)
                .build();
            let limits = Arc::new(Limits::parse(rate).unwrap());
            let admitted = Arc::new(AtomicU64::new(0));
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    let (limiter, limits, admitted) =
                        (limiter.clone(), limits.clone(), admitted.clone());
                    std::thread::spawn(move || {
                        for _ in 0..500 {
                            if ready(limiter.check(&limits, "hot", 1))
                                .unwrap()
                                .is_allowed()
                            {
                                admitted.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(admitted.load(Ordering::Relaxed), 1000, "{algorithm} {rate}");
        }
    }
}

#[test]
fn refusing_new_keys_a_flood_neither_grows_memory_nor_resets_a_limit() {
    const CAP: usize = 100_000;
    const FLOOD: usize = 2_000_000;
    let clock = FakeClock::new();
    let store = Arc::new(
        MemoryStore::with_clock(clock.clone())
            .with_capacity(CAP)
            .when_full(WhenFull::RefuseNewKeys),
    );
    let limiter = Limiter::builder().shared_store(store.clone()).build();
    let limits = Limits::parse("10/minute").unwrap();

    // The victim of the story: a client who spent its budget and must stay limited.
    for _ in 0..10 {
        assert!(
            ready(limiter.check(&limits, "abuser", 1))
                .unwrap()
                .is_allowed()
        );
    }
    // GCRA gives one request back every 6 s; a full budget of 10 within the minute would
    // mean its state had been dropped.
    let blocked = |at: &str| {
        let d = ready(limiter.peek(&limits, "abuser", 10)).unwrap();
        assert!(!d.is_allowed(), "{at}: the spent key got its budget back");
    };

    let mut key = String::new();
    let mut admitted = 0;
    let mut last_admitted = String::new();
    for i in 0..FLOOD {
        // 2,000,000 keys over 20 seconds of fake time: all of them live for a minute.
        if i % 100_000 == 0 {
            clock.advance(Duration::from_secs(1));
            blocked(&format!("after {i} flood keys"));
            assert!(store.len() <= CAP, "{} keys tracked", store.len());
        }
        key.clear();
        key.push_str("flood-");
        key.push_str(&i.to_string());
        if ready(limiter.check(&limits, &key, 1)).unwrap().is_allowed() {
            admitted += 1;
            last_admitted.clone_from(&key);
        }
    }
    assert!(store.len() <= CAP);
    // Full of live state, the store refused newcomers; it let more in only as the state of
    // earlier ones expired (a GCRA key that spent 1 of 10 a minute is whole again in 6 s).
    assert!(
        (CAP - 1..FLOOD / 2).contains(&admitted),
        "{admitted} admitted"
    );
    assert_eq!(store.refused_new_keys(), (FLOOD - admitted) as u64);
    // A flood key that got in kept its state: it has 9 left, not 10.
    assert!(
        !ready(limiter.check(&limits, &last_admitted, 10))
            .unwrap()
            .is_allowed()
    );
    assert!(
        ready(limiter.check(&limits, &last_admitted, 9))
            .unwrap()
            .is_allowed()
    );
    blocked("after the flood");

    // Once the minute has passed, expired state is reclaimed and new keys get in again.
    clock.advance(Duration::from_secs(61));
    assert!(
        ready(limiter.check(&limits, "newcomer", 1))
            .unwrap()
            .is_allowed()
    );
    assert!(
        store.len() < CAP / 2,
        "expired state was reclaimed: {} left",
        store.len()
    );
    assert!(
        ready(limiter.check(&limits, "abuser", 10))
            .unwrap()
            .is_allowed()
    );
}

/// A flood of `flood` new keys, one every 10 µs of fake time, through a store capped at `cap`
/// that evicts (the default), counted by `algorithm` at 10 a minute; a key that spent its 10
/// at the start ("hammer") tries once more every 1,000 flood keys. Asserts that every flood
/// key was served and the cap held; answers how many of the hammer's requests passed, and
/// the check.
fn flood_beside_a_hammer(
    algorithm: Algorithm,
    cap: usize,
    flood: usize,
) -> (u64, impl Fn(&str, u64) -> bool) {
    let clock = FakeClock::new();
    let store = Arc::new(MemoryStore::with_clock(clock.clone()).with_capacity(cap));
    let limiter = Limiter::builder()
        .shared_store(store.clone())
        .algorithm(algorithm)
        .build();
    let limits = Limits::parse("10/minute").unwrap();
    let check = move |key: &str, cost: u64| {
        ready(limiter.check(&limits, key, cost))
            .unwrap()
            .is_allowed()
    };
    assert!(check("hammer", 10));
    let mut key = String::new();
    let mut hammer_admitted = 10;
    for i in 0..flood {
        clock.advance(Duration::from_micros(10));
        if i % 1_000 == 0 {
            hammer_admitted += u64::from(check("hammer", 1));
            assert!(
                store.len() <= cap,
                "{algorithm}: {} keys tracked",
                store.len()
            );
        }
        key.clear();
        key.push_str("flood-");
        key.push_str(&i.to_string());
        assert!(check(&key, 1), "{algorithm}: {key} was not served");
    }
    assert!(store.len() <= cap);
    assert!(store.evictions() >= (flood - cap) as u64, "{algorithm}");
    assert_eq!(store.refused_new_keys(), 0);
    (hammer_admitted, check)
}

/// The default policy under a flood: the store keeps serving. New clients get in (the least
/// recently used state makes room), a key that keeps hammering stays limited, and memory never
/// passes the cap.
#[test]
fn evicting_a_flood_keeps_serving_new_clients_and_keeps_the_hammering_key_limited() {
    // 2,000,000 keys over 20 seconds of fake time: all of them live for a minute. The
    // hammering key tries every 10 ms and gets one request every 6 s: its state is never the
    // least recently used.
    let (hammer_admitted, check) = flood_beside_a_hammer(Algorithm::Gcra, 100_000, 2_000_000);
    assert!(check("newcomer", 1), "a new client is admitted");
    // 10 at once, then one per 6 s over 20 s: 13. Evicted even once, it would have had 10
    // more.
    assert_eq!(hammer_admitted, 13, "the hammering key stayed limited");
    assert!(!check("hammer", 2));
}

/// The same flood for a single rate counted by a window, whose state the store keeps in a
/// table of its own: eviction reaches it, and spares the key that keeps hammering.
#[test]
fn evicting_a_flood_spares_the_hammering_key_under_a_window_algorithm() {
    const FLOOD: usize = 200_000;
    for algorithm in [Algorithm::FixedWindow, Algorithm::SlidingWindow] {
        // 200,000 keys over 2 seconds of fake time: the hammer's window stays open.
        let (hammer_admitted, check) = flood_beside_a_hammer(algorithm, 10_000, FLOOD);
        // Evicted even once, the hammer would have had a fresh window of 10.
        assert_eq!(
            hammer_admitted, 10,
            "{algorithm}: the hammering key stayed limited"
        );
        // A flood key kept its window: 9 left of 10.
        let last = format!("flood-{}", FLOOD - 1);
        assert!(!check(&last, 10), "{algorithm}");
        assert!(check(&last, 9), "{algorithm}");
    }
}

#[test]
fn long_keys_are_stored_hashed_and_stay_distinct() {
    let clock = FakeClock::new();
    let store = Arc::new(MemoryStore::with_clock(clock));
    let limiter = Limiter::builder().shared_store(store.clone()).build();
    let limits = Limits::parse("1/minute").unwrap();
    let a = "a".repeat(10_000);
    let mut b = a.clone();
    b.push('b');
    assert!(ready(limiter.check(&limits, &a, 1)).unwrap().is_allowed());
    assert!(!ready(limiter.check(&limits, &a, 1)).unwrap().is_allowed());
    assert!(ready(limiter.check(&limits, &b, 1)).unwrap().is_allowed());
    assert_eq!(store.len(), 2);
}

#[test]
fn a_refused_or_peeked_new_key_takes_no_place() {
    let store = Arc::new(MemoryStore::with_clock(FakeClock::new()));
    let limiter = Limiter::builder().shared_store(store.clone()).build();
    let limits = Limits::parse("1/minute").unwrap();
    for i in 0..100 {
        let key = format!("k{i}");
        assert!(ready(limiter.peek(&limits, &key, 1)).unwrap().is_allowed());
        assert!(
            ready(limiter.check(&limits, &key, 2))
                .unwrap()
                .exceeds_capacity()
        );
    }
    assert!(store.is_empty());
}
