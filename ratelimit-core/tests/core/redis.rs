//! The Redis store against real `redis-server` processes that the tests start on free ports:
//! the same decisions as the in-memory store, one limit shared by several instances, state
//! that outlives an instance, scripts reloaded after a flush, readable names with TTLs.
#![cfg(feature = "redis")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use ratelimit_core::store::{FailurePolicy, Mode, RedisStore, SlotCheck};
use ratelimit_core::{Algorithm, Decision, FakeClock, Limiter, Limits, MemoryStore};

use crate::model;
use crate::redis_server::{RedisCluster, RedisServer, free_port};
use crate::redis_stats::script_calls;

/// A small deterministic generator for the request sequences.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

/// Redis counts in microseconds (its clock's resolution), memory in nanoseconds: a wait of
/// 473 ms and 1 ns in memory is 473 ms and 1 µs in Redis. Compared to the microsecond, up.
fn micros(d: Duration) -> u128 {
    d.as_nanos().div_ceil(1_000)
}

fn same(redis: &Decision, memory: &Decision, what: &str) {
    assert_eq!(
        (
            redis.is_allowed(),
            redis.remaining(),
            micros(redis.reset_after()),
            redis.retry_after().map(micros),
            redis.rate_index(),
            redis.charge_index(),
        ),
        (
            memory.is_allowed(),
            memory.remaining(),
            micros(memory.reset_after()),
            memory.retry_after().map(micros),
            memory.rate_index(),
            memory.charge_index(),
        ),
        "{what}"
    );
}

#[tokio::test]
async fn every_algorithm_decides_as_the_memory_store_does() {
    let server = RedisServer::start();
    // Rates whose intervals are whole microseconds, so both stores count alike.
    let sets = [
        "4/second",
        "5/second; 20/minute",
        "10/minute",
        "4/2 seconds; 8/minute",
    ];
    for algorithm in Algorithm::ALL {
        for set in sets {
            let clock = FakeClock::new();
            clock.set(1_700_000_000_000_000_000); // a realistic epoch-like start
            let memory = Limiter::builder()
                .store(MemoryStore::with_clock(clock.clone()))
                .algorithm(algorithm)
                .build();
            let redis = Limiter::builder()
                .store(
                    RedisStore::connect(&server.url())
                        .await
                        .unwrap()
                        .with_clock(clock.clone())
                        .cache_blocked_keys(false), // every answer from the script itself
                )
                .algorithm(algorithm)
                .key_prefix(format!("eq-{algorithm}-{set}"))
                .build();
            let limits = Limits::parse(set).unwrap();
            let mut rng = Lcg(7);
            // A second charge under the same key, counted by another algorithm, joins one
            // request in three: both must pass or neither is charged.
            let other = Limits::parse("6/second")
                .unwrap()
                .with_algorithm(Algorithm::ALL[(algorithm.index() + 1) % 4]);
            for step in 0..400 {
                clock.advance(Duration::from_millis(rng.next(400)));
                let key = ["a", "b"][rng.next(2) as usize];
                let cost = [1, 1, 1, 2, 0, 5][rng.next(6) as usize];
                let mode = [
                    Mode::Charge,
                    Mode::Charge,
                    Mode::Charge,
                    Mode::Peek,
                    Mode::Refund,
                ][rng.next(5) as usize];
                let two = rng.next(3) == 0;
                let m = [
                    memory.charge("s", &limits, cost),
                    memory.charge("t", &other, 1),
                ];
                let r = [
                    redis.charge("s", &limits, cost),
                    redis.charge("t", &other, 1),
                ];
                let n = if two { 2 } else { 1 };
                let expected = memory
                    .check_charges(key.as_bytes(), &m[..n], mode)
                    .await
                    .unwrap();
                let got = redis
                    .check_charges(key.as_bytes(), &r[..n], mode)
                    .await
                    .unwrap();
                same(
                    &got,
                    &expected,
                    &format!("{algorithm} {set} step {step} {mode:?} cost {cost}, {n} charges"),
                );
            }
        }
    }
}

#[tokio::test]
async fn several_charges_under_one_key_pass_or_fail_as_one_call() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let limiter = Limiter::builder().store(store).build();
    let tight = Limits::parse("1/minute").unwrap();
    let loose = Limits::parse("5/minute")
        .unwrap()
        .with_algorithm(Algorithm::FixedWindow);
    let charges = [
        limiter.charge("loose", &loose, 1),
        limiter.charge("tight", &tight, 1),
    ];
    let first = limiter
        .check_charges(b"k", &charges, Mode::Charge)
        .await
        .unwrap();
    assert!(first.is_allowed());
    assert_eq!(first.charge_index(), 1, "the tight one has the fewest left");
    let refused = limiter
        .check_charges(b"k", &charges, Mode::Charge)
        .await
        .unwrap();
    assert!(!refused.is_allowed());
    assert_eq!(refused.charge_index(), 1);
    let loose_left = limiter
        .check_charges(b"k", &charges[..1], Mode::Peek)
        .await
        .unwrap();
    assert_eq!(
        loose_left.remaining(),
        3,
        "charged once, not twice (a peek at cost 1 says 3)"
    );
    // A refund gives the charge back.
    limiter
        .check_charges(b"k", &charges, Mode::Refund)
        .await
        .unwrap();
    assert!(
        limiter
            .check_charges(b"k", &charges, Mode::Charge)
            .await
            .unwrap()
            .is_allowed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_one_limit_exactly_under_a_concurrent_burst() {
    let server = RedisServer::start();
    let limits = Arc::new(Limits::parse("100/hour").unwrap());
    // A timeout no loaded machine reaches: this is about Redis deciding, not the fallback.
    let patient = Duration::from_secs(10);
    let a = Limiter::builder()
        .store(
            RedisStore::connect(&server.url())
                .await
                .unwrap()
                .timeout(patient),
        )
        .build();
    let b = Limiter::builder()
        .store(
            RedisStore::connect(&server.url())
                .await
                .unwrap()
                .timeout(patient),
        )
        .build();
    let tasks: Vec<_> = (0..500)
        .map(|i| {
            let limiter = if i % 2 == 0 { a.clone() } else { b.clone() };
            let limits = limits.clone();
            tokio::spawn(async move {
                limiter
                    .check(&limits, "shared", 1)
                    .await
                    .unwrap()
                    .is_allowed()
            })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        admitted += usize::from(task.await.unwrap());
    }
    assert_eq!(admitted, 100);
    // A new instance (an app restart) finds the counts where they were.
    let restarted = Limiter::builder()
        .store(RedisStore::connect(&server.url()).await.unwrap())
        .build();
    assert!(
        !restarted
            .check(&limits, "shared", 1)
            .await
            .unwrap()
            .is_allowed()
    );
}

#[tokio::test]
async fn state_is_named_readably_expires_and_survives_a_script_flush() {
    let server = RedisServer::start();
    let limiter = Limiter::builder()
        .store(RedisStore::connect(&server.url()).await.unwrap())
        .key_prefix("api")
        .build();
    let limits = Limits::parse("10/minute; 100/hour").unwrap();
    assert!(
        limiter
            .check_scoped("/predict", &limits, "203.0.113.7", 1)
            .await
            .unwrap()
            .is_allowed()
    );
    let client = redis::Client::open(server.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let mut names: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut connection)
        .await
        .unwrap();
    names.sort();
    assert_eq!(
        names,
        [
            "api:{203.0.113.7}:/predict:gcra:3600000ms:1",
            "api:{203.0.113.7}:/predict:gcra:60000ms:0",
        ]
    );
    for name in &names {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(name)
            .query_async(&mut connection)
            .await
            .unwrap();
        assert!(
            (1..=60_001).contains(&ttl),
            "{name} expires when its state stops mattering: {ttl} ms"
        );
    }
    // The server forgets the script: the next check loads it again.
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut connection)
        .await
        .unwrap();
    let d = limiter
        .check_scoped("/predict", &limits, "203.0.113.7", 1)
        .await
        .unwrap();
    assert!(d.is_allowed());
    assert_eq!(d.remaining(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_redis_mid_load_falls_back_to_memory_and_recovers() {
    let server = RedisServer::start();
    let port = server.port;
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let limiter = Limiter::builder().store(store.clone()).build();
    let limits = Limits::parse("1000000/second").unwrap();
    let mut slowest = Duration::ZERO;
    let mut server = Some(server);
    for i in 0..300 {
        if i == 100 {
            drop(server.take()); // Redis dies mid-load
        }
        let started = Instant::now();
        let decision = limiter.check(&limits, "k", 1).await;
        slowest = slowest.max(started.elapsed());
        assert!(
            decision.unwrap().is_allowed(),
            "request {i}: no error, no refusal"
        );
    }
    assert!(
        slowest < Duration::from_secs(1),
        "slowest request {slowest:?}"
    );
    assert!(!store.is_available());
    assert!(
        store.fallbacks() >= 190,
        "{} answered from memory",
        store.fallbacks()
    );
    // Redis comes back: within seconds, checks reach it again (probed, not on every request).
    let _server = RedisServer::on(port);
    let started = Instant::now();
    while !store.is_available() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "not back after 5 s"
        );
        limiter.check(&limits, "k", 1).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = store.fallbacks();
    for _ in 0..10 {
        limiter.check(&limits, "k", 1).await.unwrap();
    }
    assert_eq!(store.fallbacks(), before, "back on Redis");
}

#[tokio::test]
async fn without_redis_each_policy_answers_as_it_says() {
    // Nothing listens here: Redis is down from the start, which is not an error.
    let url = format!("redis://127.0.0.1:{}", free_port());
    let limits = Limits::parse("2/minute").unwrap();
    let memory = RedisStore::connect(&url).await.unwrap();
    assert!(!memory.is_available());
    let limiter = Limiter::builder().store(memory).build();
    let answers: Vec<bool> = [(); 3]
        .iter()
        .map(|()| {
            limiter
                .check_now(&limits, "k", 1)
                .is_some_and(|d| d.is_allowed())
        })
        .collect();
    assert_eq!(
        answers,
        [true, true, false],
        "the fallback still limits, at once"
    );

    let open = RedisStore::connect(&url)
        .await
        .unwrap()
        .on_failure(FailurePolicy::FailOpen);
    let limiter = Limiter::builder().store(open).build();
    for _ in 0..5 {
        assert!(limiter.check(&limits, "k", 1).await.unwrap().is_allowed());
    }

    let closed = RedisStore::connect(&url)
        .await
        .unwrap()
        .on_failure(FailurePolicy::FailClosed);
    let limiter = Limiter::builder().store(closed).build();
    assert!(limiter.check(&limits, "k", 1).await.is_err());
}

#[tokio::test]
async fn a_blocked_key_is_refused_locally_until_redis_would_admit_it() {
    let server = RedisServer::start();
    let clock = FakeClock::new();
    clock.set(1_700_000_000_000_000_000);
    let store = RedisStore::connect(&server.url())
        .await
        .unwrap()
        .with_clock(clock.clone());
    let limiter = Limiter::builder().store(store.clone()).build();
    let limits = Limits::parse("2/minute").unwrap();
    assert!(
        limiter
            .check(&limits, "abuser", 1)
            .await
            .unwrap()
            .is_allowed()
    );
    assert!(
        limiter
            .check(&limits, "abuser", 1)
            .await
            .unwrap()
            .is_allowed()
    );
    let refused = limiter.check(&limits, "abuser", 1).await.unwrap();
    assert_eq!(refused.retry_after(), Some(Duration::from_secs(30)));
    let calls = script_calls(&server.url()).await;
    // Before the retry instant: refused with no round trip, the wait counting down.
    for second in 1..=29 {
        clock.advance(Duration::from_secs(1));
        let d = limiter
            .check_now(&limits, "abuser", 1)
            .expect("answered at once");
        assert!(!d.is_allowed());
        assert_eq!(d.retry_after(), Some(Duration::from_secs(30 - second)));
    }
    assert_eq!(script_calls(&server.url()).await, calls, "zero round trips");
    assert_eq!(store.cached_refusals(), 29);
    // Another key, and another cost, still go to Redis.
    assert!(
        limiter
            .check(&limits, "someone-else", 1)
            .await
            .unwrap()
            .is_allowed()
    );
    // At the retry instant Redis is asked again, and admits.
    clock.advance(Duration::from_secs(1));
    assert!(
        limiter.check_now(&limits, "abuser", 1).is_none(),
        "not cached any more"
    );
    assert!(
        limiter
            .check(&limits, "abuser", 1)
            .await
            .unwrap()
            .is_allowed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_serves_keys_on_every_node() {
    let cluster = RedisCluster::start();
    let store = RedisStore::cluster(cluster.urls()).await.unwrap();
    assert!(store.is_available());
    let limiter = Limiter::builder().store(store).build();
    // Several rates and scopes per key: one call each, on the node that holds the key's slot.
    let limits = Limits::parse("3/minute; 10/hour").unwrap();
    let keys: Vec<String> = (0..30).map(|i| format!("client-{i}")).collect();
    for key in &keys {
        for expected in [true, true, true, false] {
            let d = limiter
                .check_scoped("/predict", &limits, key, 1)
                .await
                .unwrap();
            assert_eq!(d.is_allowed(), expected, "{key}");
        }
    }
    // Every node holds some of the state: keys whose slot lives on each node all worked.
    for port in &cluster.ports {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let size: u64 = redis::cmd("DBSIZE")
            .query_async(&mut connection)
            .await
            .unwrap();
        assert!(size > 0, "node {port} holds no state");
    }
}

#[tokio::test]
async fn rediss_connects_over_tls() {
    let dir = std::env::temp_dir().join(format!("ratelimit-tls-{}", free_port()));
    let (server, root) = RedisServer::start_tls(&dir);
    let url = format!("rediss://127.0.0.1:{}", server.port);
    let store = RedisStore::connect_tls(&url, &root)
        .await
        .unwrap()
        .timeout(Duration::from_secs(5));
    let limiter = Limiter::builder().store(store.clone()).build();
    let limits = Limits::parse("2/minute").unwrap();
    // The first ping has the default 50 ms, which a handshake in an unoptimised build on a
    // loaded machine may miss: then the store probes again (a check at cost 0 stores nothing).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !store.is_available() {
        assert!(Instant::now() < deadline, "never reached Redis over TLS");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = limiter.check(&limits, "probe", 0).await;
    }
    let fallbacks = store.fallbacks();
    let answers = [
        limiter.check(&limits, "k", 1).await.unwrap().is_allowed(),
        limiter.check(&limits, "k", 1).await.unwrap().is_allowed(),
        limiter.check(&limits, "k", 1).await.unwrap().is_allowed(),
    ];
    assert_eq!(answers, [true, true, false]);
    assert_eq!(store.fallbacks(), fallbacks, "every answer came from Redis");
    // Without trusting the certificate, the connection is refused: the policy answers.
    let untrusted = RedisStore::connect(&url).await.unwrap();
    assert!(!untrusted.is_available());
    let _ = std::fs::remove_dir_all(dir);
}

/// The reference models the in-memory store is held to (`algorithms.rs`), held against
/// Redis: the same runs, at Redis's resolution (a microsecond), on rates whose intervals are
/// whole microseconds.
#[test]
fn every_algorithm_matches_the_reference_model_on_redis() {
    use proptest::test_runner::{Config, TestRunner};
    let server = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let case = std::sync::atomic::AtomicUsize::new(0);
    for algorithm in Algorithm::ALL {
        let clock = FakeClock::new();
        let store = runtime
            .block_on(RedisStore::connect(&server.url()))
            .unwrap()
            .with_clock(clock.clone())
            .cache_blocked_keys(false);
        let mut runner = TestRunner::new(Config {
            cases: 40,
            failure_persistence: None,
            ..Config::default()
        });
        let rates = proptest::sample::select(vec!["5/second", "4/second", "8/2 seconds"]);
        runner
            .run(&(model::steps(), rates), |(steps, rate)| {
                let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let limiter = Limiter::builder()
                    .store(store.clone())
                    .algorithm(algorithm)
                    .key_prefix(format!("model-{n}"))
                    .build();
                let limits = Limits::parse(rate).unwrap();
                model::run(algorithm, &limits, 1_000, &steps, |t, cost, debit| {
                    clock.set(t);
                    match debit {
                        true => runtime.block_on(limiter.settle("", &limits, b"k", 0, cost)),
                        false => runtime.block_on(limiter.check(&limits, "k", cost)),
                    }
                    .unwrap()
                })
            })
            .unwrap_or_else(|e| panic!("{algorithm} on Redis: {e}"));
    }
}

#[tokio::test]
async fn redis_unix_connects_over_a_socket() {
    let socket = std::env::temp_dir().join(format!("ratelimit-{}.sock", free_port()));
    let _server = RedisServer::start_unix(&socket);
    let url = format!("redis+unix://{}", socket.display());
    let store = RedisStore::connect(&url).await.unwrap();
    assert!(store.is_available(), "reached Redis over {url}");
    let limiter = Limiter::builder().store(store.clone()).build();
    let limits = Limits::parse("1/minute").unwrap();
    assert!(limiter.check(&limits, "k", 1).await.unwrap().is_allowed());
    assert!(!limiter.check(&limits, "k", 1).await.unwrap().is_allowed());
    assert_eq!(store.fallbacks(), 0);
}

async fn on_redis(url: &str, store: impl FnOnce(RedisStore) -> RedisStore) -> Limiter {
    Limiter::builder()
        .store(store(RedisStore::connect(url).await.unwrap()))
        .build()
}

/// Waits until `limiter` uses `scale` (an instance reads the shared scale again about once a
/// second), for at most `within`.
async fn wait_for_scale(limiter: &Limiter, scale: ratelimit_core::Scale, within: Duration) {
    let deadline = Instant::now() + within;
    while limiter.scale() != scale {
        assert!(Instant::now() < deadline, "the scale never became {scale}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a slot of `key` under `scope` is free (the lease, if any, is given back at once).
async fn has_slot(limiter: &Limiter, scope: &str, key: &str, limit: u32) -> bool {
    limiter
        .acquire_slot(scope, key, limit)
        .await
        .unwrap()
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_slots_are_shared_by_instances_and_come_back() {
    let server = RedisServer::start();
    let a = on_redis(&server.url(), |s| s).await;
    let b = on_redis(&server.url(), |s| s).await;
    let first = a.acquire_slot("/heavy", "client", 2).await.unwrap();
    let second = b.acquire_slot("/heavy", "client", 2).await.unwrap();
    assert!(first.is_some() && second.is_some());
    // Both slots are taken, whichever instance asks.
    assert!(!has_slot(&a, "/heavy", "client", 2).await);
    assert!(!has_slot(&b, "/heavy", "client", 2).await);
    // Another key, another scope: slots of their own.
    assert!(has_slot(&a, "/heavy", "other", 2).await);
    assert!(has_slot(&a, "/light", "client", 2).await);
    // Giving one back (on another instance than the one that took the other) frees it.
    drop(second);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(again) = a.acquire_slot("/heavy", "client", 2).await.unwrap() {
            drop(again);
            break;
        }
        assert!(Instant::now() < deadline, "the slot never came back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_held_past_its_lease_by_a_running_request_is_not_given_to_another() {
    let server = RedisServer::start();
    let lease = Duration::from_millis(300);
    let running = on_redis(&server.url(), |s| s.slot_lease(lease)).await;
    let other = on_redis(&server.url(), |s| s.slot_lease(lease)).await;
    let held = running
        .acquire_slot("/heavy", "client", 1)
        .await
        .unwrap()
        .unwrap();
    // Four leases long: the instance running the request renews it every 100 ms.
    stays_held(&other, lease * 4).await;
    // Given back when the request ends: free at once, and no longer renewed.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    let taken = loop {
        if let Some(taken) = other.acquire_slot("/heavy", "client", 1).await.unwrap() {
            break taken;
        }
        assert!(Instant::now() < deadline, "the slot never came back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    tokio::time::sleep(lease * 2).await;
    assert!(!has_slot(&running, "/heavy", "client", 1).await);
    drop(taken);
}

/// Asserts, every 50 ms for `during`, that `other` finds the slot of `client` under
/// `/heavy` (limit 1) held.
async fn stays_held(other: &Limiter, during: Duration) {
    let start = Instant::now();
    while start.elapsed() < during {
        assert!(
            !has_slot(other, "/heavy", "client", 1).await,
            "the slot was given away after {:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `limiter` can take a slot of `key` under `scope` (a lease given back by
/// another instance is removed in the background), for at most five seconds.
async fn wait_for_free_slot(limiter: &Limiter, scope: &str, key: &str, limit: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !has_slot(limiter, scope, key, limit).await {
        assert!(Instant::now() < deadline, "the slot never came back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_and_the_rates_are_taken_in_one_script_call_all_or_nothing() {
    let server = RedisServer::start();
    let a = on_redis(&server.url(), |s| s).await;
    let b = on_redis(&server.url(), |s| s).await;
    let limits = Limits::parse("3/minute").unwrap();
    let charges = |limiter: &Limiter| [limiter.charge("/heavy", &limits, 1)];
    let remaining = |limiter: &Limiter| {
        let charges = [limiter.charge("/heavy", &limits, 0)];
        let limiter = limiter.clone();
        async move {
            limiter
                .check_charges(b"client", &charges, Mode::Charge)
                .await
                .unwrap()
                .remaining()
        }
    };
    // Loads the script, so that every call below is one EVALSHA.
    assert_eq!(remaining(&a).await, 3);
    assert_eq!(remaining(&b).await, 3);

    let before = script_calls(&server.url()).await;
    let SlotCheck::Admitted(decision, held) = a
        .check_with_slot(b"client", &charges(&a), "/heavy", 1)
        .await
        .unwrap()
    else {
        panic!("the first request is admitted with its slot");
    };
    assert_eq!(decision.remaining(), 2);
    assert_eq!(script_calls(&server.url()).await - before, 1, "one call");

    // The slot is held, on every instance: refused before any rate is charged.
    let before = script_calls(&server.url()).await;
    let checked = b
        .check_with_slot(b"client", &charges(&b), "/heavy", 1)
        .await
        .unwrap();
    assert!(matches!(checked, SlotCheck::NoSlot), "{checked:?}");
    assert_eq!(script_calls(&server.url()).await - before, 1, "one call");
    assert_eq!(remaining(&a).await, 2, "nothing charged without a slot");
    // Another key has slots of its own.
    let other = b
        .check_with_slot(b"other", &charges(&b), "/heavy", 1)
        .await
        .unwrap();
    assert!(matches!(other, SlotCheck::Admitted(..)), "{other:?}");
    drop(other);

    // Given back (in the background): the other instance takes it once it is, and the rates
    // count across both. Tries that find no slot charge nothing.
    let once_free = |limiter: &Limiter| {
        let limiter = limiter.clone();
        let charges = charges(&limiter);
        async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match limiter
                    .check_with_slot(b"client", &charges, "/heavy", 1)
                    .await
                    .unwrap()
                {
                    SlotCheck::NoSlot if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    checked => return checked,
                }
            }
        }
    };
    drop(held);
    for (limiter, left) in [(&b, 1), (&a, 0)] {
        let SlotCheck::Admitted(decision, held) = once_free(limiter).await else {
            panic!("a free slot and a rate left admit");
        };
        assert_eq!(decision.remaining(), left);
        drop(held);
    }
    // The rates refuse: no slot is taken.
    let checked = once_free(&b).await;
    let SlotCheck::Refused(decision) = checked else {
        panic!("over the rate: {checked:?}");
    };
    assert!(decision.retry_after().is_some());
    assert!(
        has_slot(&a, "/heavy", "client", 1).await,
        "no slot was taken"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_taken_with_the_rates_is_renewed_while_held() {
    let server = RedisServer::start();
    let lease = Duration::from_millis(300);
    let running = on_redis(&server.url(), |s| s.slot_lease(lease)).await;
    let other = on_redis(&server.url(), |s| s.slot_lease(lease)).await;
    let limits = Limits::parse("10/minute").unwrap();
    let charges = [running.charge("/heavy", &limits, 1)];
    let SlotCheck::Admitted(_, held) = running
        .check_with_slot(b"client", &charges, "/heavy", 1)
        .await
        .unwrap()
    else {
        panic!("admitted with its slot");
    };
    // Four leases long: the instance running the request renews it every 100 ms.
    stays_held(&other, lease * 4).await;
    drop(held);
    wait_for_free_slot(&other, "/heavy", "client", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_instances_slots_expire_with_their_leases() {
    let server = RedisServer::start();
    let lease = Duration::from_millis(400);
    let survivor = on_redis(&server.url(), |s| s.slot_lease(lease)).await;
    // An instance that dies holding its slot never gives it back, nor renews it: its own
    // runtime, dropped with the slot forgotten, as a crashed process's.
    let url = server.url();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let crashed = on_redis(&url, |s| s.slot_lease(lease)).await;
            let held = crashed
                .acquire_slot("/heavy", "client", 1)
                .await
                .unwrap()
                .unwrap();
            std::mem::forget(held);
        });
    })
    .join()
    .unwrap();
    let taken_at = Instant::now();
    assert!(
        survivor
            .acquire_slot("/heavy", "client", 1)
            .await
            .unwrap()
            .is_none()
    );
    // Until its lease runs out.
    let lease_back = loop {
        if let Some(slot) = survivor.acquire_slot("/heavy", "client", 1).await.unwrap() {
            break (taken_at.elapsed(), slot);
        }
        assert!(
            taken_at.elapsed() < Duration::from_secs(5),
            "the lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        lease_back.0 >= Duration::from_millis(300),
        "{:?}",
        lease_back.0
    );
    // The slot set itself expires with the last lease.
    let client = redis::Client::open(server.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg("ratelimit:{client}:/heavy:slots")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!((1..=400).contains(&ttl), "ttl {ttl}");
}

#[tokio::test]
async fn without_redis_slots_follow_the_failure_policy() {
    let url = format!("redis://127.0.0.1:{}", free_port());
    let memory = on_redis(&url, |s| s.on_failure(FailurePolicy::FallBackToMemory)).await;
    let held = memory.acquire_slot("/heavy", "k", 1).await.unwrap();
    assert!(held.is_some(), "the fallback counts slots in memory");
    assert!(
        memory
            .acquire_slot("/heavy", "k", 1)
            .await
            .unwrap()
            .is_none()
    );
    drop(held);
    assert!(
        memory
            .acquire_slot("/heavy", "k", 1)
            .await
            .unwrap()
            .is_some()
    );
    let open = on_redis(&url, |s| s.on_failure(FailurePolicy::FailOpen)).await;
    let a = open.acquire_slot("/heavy", "k", 1).await.unwrap();
    assert!(a.is_some() && open.acquire_slot("/heavy", "k", 1).await.unwrap().is_some());
    let closed = on_redis(&url, |s| s.on_failure(FailurePolicy::FailClosed)).await;
    assert!(closed.acquire_slot("/heavy", "k", 1).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_set_on_one_instance_reaches_every_instance() {
    let server = RedisServer::start();
    let a = on_redis(&server.url(), |s| s).await;
    let b = on_redis(&server.url(), |s| s).await;
    // The moving window counts exactly (a sliding window's weighting would move the counts
    // when a minute of Redis's clock ends mid-test).
    let limits = Limits::parse("100/minute")
        .unwrap()
        .with_algorithm(Algorithm::MovingWindow);
    assert_eq!(b.check(&limits, "k", 1).await.unwrap().limit(), 100);
    a.set_scale(ratelimit_core::Scale::new(1, 5).unwrap())
        .await
        .unwrap();
    // `a` at once; `b` within about a second, in the background.
    assert_eq!(a.check(&limits, "k", 1).await.unwrap().limit(), 20);
    wait_for_scale(
        &b,
        ratelimit_core::Scale::new(1, 5).unwrap(),
        Duration::from_secs(5),
    )
    .await;
    let decision = b.check(&limits, "k", 1).await.unwrap();
    assert_eq!(decision.limit(), 20);
    assert_eq!(
        decision.remaining(),
        17,
        "three counted, whoever counted them"
    );
    // A new instance starts on the shared scale; back to whole, and every count is kept.
    let c = on_redis(&server.url(), |s| s).await;
    c.scale(); // starts reading the shared scale
    wait_for_scale(
        &c,
        ratelimit_core::Scale::new(1, 5).unwrap(),
        Duration::from_secs(5),
    )
    .await;
    c.set_scale(ratelimit_core::Scale::FULL).await.unwrap();
    wait_for_scale(&a, ratelimit_core::Scale::FULL, Duration::from_secs(5)).await;
    let decision = a.check(&limits, "k", 1).await.unwrap();
    assert_eq!((decision.limit(), decision.remaining()), (100, 96));
}

/// GCRA in Redis keeps the count across a change of scale, as in memory: 20 made at 1/5
/// leave 80 of 100.
#[tokio::test]
async fn gcra_in_redis_keeps_the_count_across_a_scale() {
    let server = RedisServer::start();
    let limiter = on_redis(&server.url(), |s| s).await;
    let limits = Limits::parse("100/minute").unwrap();
    limiter
        .set_scale(ratelimit_core::Scale::new(1, 5).unwrap())
        .await
        .unwrap();
    for _ in 0..20 {
        assert!(limiter.check(&limits, "k", 1).await.unwrap().is_allowed());
    }
    assert!(!limiter.check(&limits, "k", 1).await.unwrap().is_allowed());
    limiter
        .set_scale(ratelimit_core::Scale::FULL)
        .await
        .unwrap();
    let decision = limiter.check(&limits, "k", 1).await.unwrap();
    assert_eq!((decision.limit(), decision.remaining()), (100, 79));
}

/// A scale set for a while expires on every instance: one that scaled the fleet down and
/// died cannot leave it scaled down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_set_for_a_while_expires_everywhere() {
    let server = RedisServer::start();
    let dying = on_redis(&server.url(), |s| s).await;
    let other = on_redis(&server.url(), |s| s).await;
    let warming = ratelimit_core::Scale::new(1, 5).unwrap();
    dying
        .set_scale_for(warming, Duration::from_millis(1500))
        .await
        .unwrap();
    drop(dying);
    wait_for_scale(&other, warming, Duration::from_secs(5)).await;
    wait_for_scale(&other, ratelimit_core::Scale::FULL, Duration::from_secs(6)).await;
}
