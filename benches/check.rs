//! Nanoseconds per check: ratelimit's GCRA beside governor's keyed limiter, in one run.
//!
//! `cargo bench -p ratelimit-benches --bench check`

use std::future::Future;
use std::hint::black_box;
use std::num::NonZeroU32;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ratelimit_core::{Algorithm, Limiter, Limits, MemoryStore};

/// A rate no benchmark reaches, so every check is an admission on both sides.
const PER_SECOND: u32 = 1_000_000_000;

fn ours(algorithm: Algorithm) -> (Limiter, Limits) {
    let limiter = Limiter::builder()
        .store(MemoryStore::new().with_capacity(4_000_000))
        .algorithm(algorithm)
        .build();
    let limits = Limits::parse(&format!("{PER_SECOND}/second")).unwrap();
    (limiter, limits)
}

fn governor() -> DefaultKeyedRateLimiter<String> {
    RateLimiter::keyed(Quota::per_second(NonZeroU32::new(PER_SECOND).unwrap()))
}

/// The in-memory store answers at once; this polls its future the way an executor would.
#[inline]
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => unreachable!("in-memory checks are ready at once"),
    }
}

fn keys(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255))
        .collect()
}

fn round_robin(c: &mut Criterion, name: &str, n: usize) {
    let keys = keys(n);
    let mut group = c.benchmark_group(name);
    let (limiter, limits) = ours(Algorithm::Gcra);
    let gov = governor();
    for key in &keys {
        assert!(limiter.check_now(&limits, key, 1).unwrap().is_allowed());
        assert!(gov.check_key(key).is_ok());
    }
    let mut i = 0;
    group.bench_function("ratelimit_gcra", |b| {
        b.iter(|| {
            i = (i + 1) % n;
            black_box(
                limiter
                    .check_now(&limits, &keys[i], 1)
                    .unwrap()
                    .is_allowed(),
            )
        })
    });
    let mut i = 0;
    group.bench_function("governor", |b| {
        b.iter(|| {
            i = (i + 1) % n;
            black_box(gov.check_key(&keys[i]).is_ok())
        })
    });
    group.finish();
}

fn one_hot_key(c: &mut Criterion) {
    let mut group = c.benchmark_group("one_hot_key");
    let key = "10.0.0.1".to_owned();
    for algorithm in Algorithm::ALL {
        let (limiter, limits) = ours(algorithm);
        group.bench_function(BenchmarkId::new("ratelimit", algorithm.name()), |b| {
            b.iter(|| {
                black_box(
                    limiter
                        .check_now(&limits, black_box(&key), 1)
                        .unwrap()
                        .is_allowed(),
                )
            })
        });
    }
    // The same check through the future that `Limiter::check` returns, polled once.
    let (limiter, limits) = ours(Algorithm::Gcra);
    group.bench_function("ratelimit_gcra_future", |b| {
        b.iter(|| {
            black_box(
                ready(limiter.check(&limits, black_box(&key), 1))
                    .unwrap()
                    .is_allowed(),
            )
        })
    });
    let gov = governor();
    group.bench_function("governor", |b| {
        b.iter(|| black_box(gov.check_key(black_box(&key)).is_ok()))
    });
    group.finish();
}

fn keys_10k(c: &mut Criterion) {
    round_robin(c, "keys_10k_round_robin", 10_000);
}

fn keys_1m(c: &mut Criterion) {
    round_robin(c, "keys_1m_round_robin", 1_000_000);
}

/// Two threads on one key: wall time over all checks of both threads.
fn two_threads(c: &mut Criterion) {
    fn run(iters: u64, check: &(dyn Fn() -> bool + Sync)) -> Duration {
        let per_thread = iters.div_ceil(2);
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..per_thread {
                        black_box(check());
                    }
                });
            }
        });
        start.elapsed()
    }
    let mut group = c.benchmark_group("two_threads_one_key");
    let key = "10.0.0.1".to_owned();
    let (limiter, limits) = ours(Algorithm::Gcra);
    group.bench_function("ratelimit_gcra", |b| {
        b.iter_custom(|iters| {
            run(iters, &|| {
                limiter.check_now(&limits, &key, 1).unwrap().is_allowed()
            })
        })
    });
    let gov = governor();
    group.bench_function("governor", |b| {
        b.iter_custom(|iters| run(iters, &|| gov.check_key(&key).is_ok()))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = one_hot_key, keys_10k, keys_1m, two_threads
}
criterion_main!(benches);
