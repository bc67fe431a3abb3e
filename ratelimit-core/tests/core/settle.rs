//! Reserve before, settle after: the over-reserved part comes back, the under-reserved part
//! is debt the key pays before its next request passes, exactly once, for every algorithm,
//! in memory and (with the `redis` feature) in Redis, on a fake clock.

use std::sync::Arc;
use std::time::Duration;

use ratelimit_core::{Algorithm, Decision, FakeClock, Limiter, Limits, MemoryStore};

#[cfg(feature = "redis")]
use crate::redis_server;
#[cfg(feature = "redis")]
use crate::redis_stats;

/// Where the state lives: memory, or a Redis server started for the test.
enum Backend {
    Memory,
    #[cfg(feature = "redis")]
    Redis(redis_server::RedisServer),
}

impl Backend {
    fn all() -> Vec<Backend> {
        vec![
            Backend::Memory,
            #[cfg(feature = "redis")]
            Backend::Redis(redis_server::RedisServer::start()),
        ]
    }

    fn name(&self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            #[cfg(feature = "redis")]
            Backend::Redis(_) => "redis",
        }
    }

    /// A limiter on this backend with `algorithm`, on `clock`, its state under `prefix`.
    async fn limiter(&self, algorithm: Algorithm, clock: &FakeClock, prefix: &str) -> Limiter {
        let builder = Limiter::builder().algorithm(algorithm).key_prefix(prefix);
        match self {
            Backend::Memory => builder
                .store(MemoryStore::with_clock(clock.clone()))
                .build(),
            #[cfg(feature = "redis")]
            Backend::Redis(server) => builder
                .store(
                    ratelimit_core::store::RedisStore::connect(&server.url())
                        .await
                        .unwrap()
                        .with_clock(clock.clone())
                        .timeout(Duration::from_secs(5)),
                )
                .build(),
        }
    }
}

fn clock() -> FakeClock {
    let clock = FakeClock::new();
    clock.set(1_700_000_000_000_000_000); // epoch-like, in nanoseconds
    clock
}

fn tokens(rate: &str) -> Arc<Limits> {
    Arc::new(Limits::parse(rate).unwrap())
}

async fn remaining(limiter: &Limiter, limits: &Limits, key: &str) -> u64 {
    limiter.peek(limits, key, 0).await.unwrap().remaining()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_was_over_reserved_comes_back() {
    for backend in Backend::all() {
        for algorithm in Algorithm::ALL {
            let clock = clock();
            let prefix = format!("back-{algorithm}");
            let limiter = backend.limiter(algorithm, &clock, &prefix).await;
            let limits = tokens("100/minute");
            let what = format!("{} {algorithm}", backend.name());
            let reservation = limiter
                .reserve("", limits.clone(), "k", 64)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(reservation.admitted().remaining(), 36, "{what}");
            assert_eq!(remaining(&limiter, &limits, "k").await, 36, "{what}");
            let after = reservation.settle(10).await.unwrap();
            assert!(after.is_allowed(), "{what}");
            assert_eq!(after.remaining(), 90, "{what}: 54 given back");
            assert_eq!(remaining(&limiter, &limits, "k").await, 90, "{what}");
            // Settled to what was reserved: nothing changes; to 0: everything comes back.
            let r = limiter.reserve("", limits.clone(), "k", 30).await;
            let same = r.unwrap().unwrap().settle(30).await.unwrap();
            assert_eq!(same.remaining(), 60, "{what}");
            let r = limiter.reserve("", limits.clone(), "k", 30).await;
            let none = r.unwrap().unwrap().settle(0).await.unwrap();
            assert_eq!(none.remaining(), 60, "{what}");
        }
    }
}

/// The wait a refused request is told, to the tick the store counts in.
fn retry(decision: &Decision) -> Duration {
    decision.retry_after().expect("refused with a wait")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_was_under_reserved_is_debt_paid_before_the_next_request() {
    for backend in Backend::all() {
        let clock = clock();
        let limiter = backend.limiter(Algorithm::Gcra, &clock, "debt").await;
        // 64 a minute: one every 937.5 ms.
        let limits = tokens("64/minute");
        let reservation = limiter
            .reserve("", limits.clone(), "k", 64)
            .await
            .unwrap()
            .unwrap();
        let after = reservation.settle(100).await.unwrap();
        assert!(!after.is_allowed(), "{}: 36 in debt", backend.name());
        // The next request waits for the 36 owed (33.75 s) and its own unit (937.5 ms).
        let next = limiter.check(&limits, "k", 1).await.unwrap();
        assert!(!next.is_allowed());
        let wait = Duration::from_micros(34_687_500);
        assert_eq!(retry(&next), wait, "{}", backend.name());
        clock.advance(wait - Duration::from_micros(1));
        assert!(!limiter.check(&limits, "k", 1).await.unwrap().is_allowed());
        clock.advance(Duration::from_micros(1));
        assert!(
            limiter.check(&limits, "k", 1).await.unwrap().is_allowed(),
            "{}: admitted once the debt is paid",
            backend.name()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debt_in_the_windows_holds_the_key_until_it_leaves_the_window() {
    for backend in Backend::all() {
        for algorithm in [
            Algorithm::FixedWindow,
            Algorithm::SlidingWindow,
            Algorithm::MovingWindow,
        ] {
            let what = format!("{} {algorithm}", backend.name());
            let clock = clock();
            let limiter = backend
                .limiter(algorithm, &clock, &format!("w-{algorithm}"))
                .await;
            let limits = tokens("64/minute");
            let reservation = limiter.reserve("", limits.clone(), "k", 64).await;
            reservation.unwrap().unwrap().settle(100).await.unwrap();
            let next = limiter.check(&limits, "k", 1).await.unwrap();
            assert!(!next.is_allowed(), "{what}");
            let wait = retry(&next);
            clock.advance(wait - Duration::from_micros(1));
            assert!(
                !limiter.check(&limits, "k", 1).await.unwrap().is_allowed(),
                "{what}: refused until the wait said"
            );
            clock.advance(Duration::from_micros(1));
            assert!(
                limiter.check(&limits, "k", 1).await.unwrap().is_allowed(),
                "{what}: admitted when the wait said"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reservation_reserves_nothing() {
    for backend in Backend::all() {
        let clock = clock();
        let limiter = backend
            .limiter(Algorithm::FixedWindow, &clock, "refused")
            .await;
        let limits = tokens("100/minute");
        let refused = limiter.reserve("", limits.clone(), "k", 101).await;
        let decision = refused.unwrap().expect_err("more than the limit");
        assert_eq!(decision.retry_after(), None, "can never pass");
        let r = limiter.reserve("", limits.clone(), "k", 80).await;
        let _kept = r.unwrap().unwrap(); // dropped unsettled: keeps its estimate
        let refused = limiter.reserve("", limits.clone(), "k", 30).await;
        assert!(refused.unwrap().is_err());
        assert_eq!(remaining(&limiter, &limits, "k").await, 20);
    }
}

/// 50 reservations of 40 settled at once, half on each of two instances sharing a store:
/// exactly the sum of the settled amounts stays charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_settlements_leave_exactly_what_was_settled() {
    for backend in Backend::all() {
        let clock = clock();
        let limits = tokens("100000/hour");
        let a = backend
            .limiter(Algorithm::FixedWindow, &clock, "many")
            .await;
        let b = match &backend {
            // Two limiters on one memory store: the same state, as two Redis clients share.
            Backend::Memory => a.clone(),
            #[cfg(feature = "redis")]
            Backend::Redis(_) => {
                backend
                    .limiter(Algorithm::FixedWindow, &clock, "many")
                    .await
            }
        };
        let tasks: Vec<_> = (0..50u64)
            .map(|i| {
                let limiter = if i % 2 == 0 { a.clone() } else { b.clone() };
                let limits = limits.clone();
                tokio::spawn(async move {
                    let reservation = limiter
                        .reserve("", limits, "shared", 40)
                        .await
                        .unwrap()
                        .unwrap();
                    tokio::task::yield_now().await;
                    // Some under, some over what was reserved.
                    let actual = i * 3 % 80;
                    reservation.settle(actual).await.unwrap();
                    actual
                })
            })
            .collect();
        let mut settled = 0;
        for task in tasks {
            settled += task.await.unwrap();
        }
        assert_eq!(
            remaining(&a, &limits, "shared").await,
            100_000 - settled,
            "{}",
            backend.name()
        );
    }
}

/// A settlement is one script call (`EVALSHA`): the refund or the debit of every rate in one
/// round trip.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settlement_is_one_command_sent_to_redis() {
    let server = redis_server::RedisServer::start();
    let backend = Backend::Redis(server);
    let Backend::Redis(server) = &backend else {
        unreachable!()
    };
    let url = server.url();
    let clock = clock();
    let limiter = backend.limiter(Algorithm::Gcra, &clock, "one").await;
    let limits = tokens("2000/minute; 50000/hour");
    for actual in [10, 100] {
        let reservation = limiter.reserve("", limits.clone(), "k", 64).await;
        let reservation = reservation.unwrap().unwrap();
        let before = redis_stats::script_calls(&url).await;
        reservation.settle(actual).await.unwrap();
        assert_eq!(
            redis_stats::script_calls(&url).await - before,
            1,
            "settled to {actual}"
        );
    }
}

/// Work that stops early (a client that hangs up mid-stream) pays for what was used: the
/// meter settles when it is dropped, at once in memory, in a task of its own with Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_meter_settles_what_was_used() {
    for backend in Backend::all() {
        let clock = clock();
        let limiter = backend
            .limiter(Algorithm::FixedWindow, &clock, "meter")
            .await;
        let limits = tokens("2000/minute");
        let reservation = limiter.reserve("", limits.clone(), "k", 10 + 512).await;
        let mut meter = reservation.unwrap().unwrap().meter();
        meter.add(10); // the prompt
        for _ in 0..3 {
            meter.add(1); // three tokens streamed, then the client went away
        }
        drop(meter);
        let mut left = 0;
        for _ in 0..200 {
            left = remaining(&limiter, &limits, "k").await;
            if left == 2000 - 13 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(left, 2000 - 13, "{}", backend.name());
        // Settled explicitly, the meter answers the state after it.
        let reservation = limiter.reserve("", limits.clone(), "k", 100).await;
        let mut meter = reservation.unwrap().unwrap().meter();
        meter.add(40);
        let after = meter.settle().await.unwrap().unwrap();
        assert_eq!(after.remaining(), 2000 - 53, "{}", backend.name());
    }
}
