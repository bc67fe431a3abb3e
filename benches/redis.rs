//! The Redis store beside the physical floor, a bare `PING` round trip over the same client,
//! against a local `redis-server` this benchmark starts on a free port: decisions per second
//! and p50/p99 latency of `Limiter::check` at concurrency 1, 16 and 64; Redis commands per
//! decision (`INFO commandstats`); a refused key with and without the blocked-key cache.
//! Cases are interleaved round by round; medians of the rounds.
//!
//! `taskset -c 0 cargo bench -p ratelimit-benches --features redis --bench redis`: the benchmark
//! on core 0 and, moved there once started, `redis-server` on core 1, as client and server on
//! two machines would be (unpinned, loopback latency swings threefold with where the
//! scheduler puts the two).

#![allow(clippy::print_stdout)] // the report is its output

#[path = "../ratelimit-core/tests/support/redis_server.rs"]
mod redis_server;
#[path = "../ratelimit-core/tests/support/redis_stats.rs"]
mod redis_stats;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ratelimit_core::store::RedisStore;
use ratelimit_core::{Limiter, Limits};
use redis_server::RedisServer;
use redis_stats::commands;

const ROUNDS: usize = 5;
/// Calls per task and case in a round.
const CALLS: usize = 2_000;

struct Run {
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

/// Runs `tasks` tasks of `CALLS` calls each; latencies of every call.
async fn run<F, Fut>(tasks: usize, call: F) -> Run
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let call = Arc::new(call);
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(CALLS);
                for i in 0..CALLS {
                    let at = Instant::now();
                    call(t, i).await;
                    latencies.push(at.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for handle in handles {
        all.extend(handle.await.unwrap());
    }
    let elapsed = started.elapsed();
    all.sort();
    Run {
        per_second: all.len() as f64 / elapsed.as_secs_f64(),
        p50: all[all.len() / 2],
        p99: all[all.len() * 99 / 100],
    }
}

fn median<T: Copy + PartialOrd>(mut values: Vec<T>) -> T {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let server = RedisServer::start();
        // Its own core, when there is one (taskset is util-linux's).
        let _ = std::process::Command::new("taskset")
            .args(["-cp", "1", &server.pid().to_string()])
            .stdout(std::process::Stdio::null())
            .status();
        let url = server.url();
        let client = redis::Client::open(url.as_str()).unwrap();
        let ping = redis::aio::ConnectionManager::new(client).await.unwrap();
        let store = RedisStore::connect(&url).await.unwrap();
        let limiter = Limiter::builder().store(store).build();
        let admitted = Arc::new(Limits::parse("1000000000/second").unwrap());

        println!("redis/check beside PING (medians of {ROUNDS} rounds, {CALLS} calls per task)");
        for tasks in [1usize, 16, 64] {
            let (mut pings, mut checks) = (Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                let connection = ping.clone();
                pings.push(
                    run(tasks, move |_, _| {
                        let mut connection = connection.clone();
                        async move {
                            let () = redis::cmd("PING")
                                .query_async(&mut connection)
                                .await
                                .unwrap();
                        }
                    })
                    .await,
                );
                let (limiter, limits) = (limiter.clone(), admitted.clone());
                checks.push(
                    run(tasks, move |t, i| {
                        let (limiter, limits) = (limiter.clone(), limits.clone());
                        async move {
                            let key = format!("10.0.{}.{}", t, i % 250);
                            assert!(limiter.check(&limits, &key, 1).await.unwrap().is_allowed());
                        }
                    })
                    .await,
                );
            }
            for (name, runs) in [("PING", &pings), ("check", &checks)] {
                println!(
                    "  concurrency {tasks:>2} {name:<5}: {:>8.0}/s  p50 {:>6.1} µs  p99 {:>7.1} µs",
                    median(runs.iter().map(|r| r.per_second).collect()),
                    median(runs.iter().map(|r| r.p50.as_secs_f64() * 1e6).collect()),
                    median(runs.iter().map(|r| r.p99.as_secs_f64() * 1e6).collect()),
                );
            }
            let ratio = median(checks.iter().map(|r| r.p50.as_secs_f64()).collect())
                / median(pings.iter().map(|r| r.p50.as_secs_f64()).collect());
            println!("  concurrency {tasks:>2} p50 check / p50 PING: {ratio:.2}");
        }

        // Commands per decision, admitted and refused.
        let limits = Limits::parse("1000000000/second").unwrap();
        let before = commands(&url).await;
        for i in 0..1_000 {
            limiter.check(&limits, &format!("c{i}"), 1).await.unwrap();
        }
        let after = commands(&url).await;
        println!(
            "redis/commands per decision (1,000 admitted checks): {:.3} sent by the client; {:.3} run by Redis, the script's own included",
            (after.0 - before.0) as f64 / 1_000.0,
            (after.1 - before.1) as f64 / 1_000.0,
        );

        // A settlement beside the check that reserved: over-reserved (a refund) and
        // under-reserved (debt), at concurrency 1, interleaved with checks.
        let tokens = Arc::new(Limits::parse("1000000000/second").unwrap());
        let (mut checks, mut refunds, mut debts) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            let (l, t) = (limiter.clone(), tokens.clone());
            checks.push(
                run(1, move |_, i| {
                    let (l, t) = (l.clone(), t.clone());
                    async move {
                        let key = format!("s{round}-{i}");
                        assert!(l.check(&t, &key, 64).await.unwrap().is_allowed());
                    }
                })
                .await,
            );
            for (actual, into) in [(10, &mut refunds), (100, &mut debts)] {
                let (l, t) = (limiter.clone(), tokens.clone());
                into.push(
                    run(1, move |_, i| {
                        let (l, t) = (l.clone(), t.clone());
                        async move {
                            let key = format!("s{round}-{i}");
                            l.settle("", &t, key.as_bytes(), 64, actual).await.unwrap();
                        }
                    })
                    .await,
                );
            }
        }
        let p50 = |runs: &[Run]| median(runs.iter().map(|r| r.p50.as_secs_f64() * 1e6).collect());
        println!(
            "redis/settle beside check (concurrency 1, medians of {ROUNDS} rounds): check p50 {:.1} µs; settle over-reserved p50 {:.1} µs ({:.2}); under-reserved p50 {:.1} µs ({:.2})",
            p50(&checks),
            p50(&refunds),
            p50(&refunds) / p50(&checks),
            p50(&debts),
            p50(&debts) / p50(&checks),
        );
        let before = commands(&url).await;
        for i in 0..1_000 {
            limiter
                .settle("", &tokens, format!("c{i}").as_bytes(), 64, 100)
                .await
                .unwrap();
        }
        let after = commands(&url).await;
        println!(
            "redis/commands per settlement (1,000): {:.3} sent by the client",
            (after.0 - before.0) as f64 / 1_000.0
        );

        // A refused key, with the blocked-key cache (the default) and without.
        let blocked = Limits::parse("1/hour").unwrap();
        let uncached = Limiter::builder()
            .store(
                RedisStore::connect(&url)
                    .await
                    .unwrap()
                    .cache_blocked_keys(false),
            )
            .key_prefix("uncached")
            .build();
        for l in [&limiter, &uncached] {
            l.check(&blocked, "abuser", 1).await.unwrap();
        }
        let mut refused = [Vec::new(), Vec::new()];
        let mut refused_commands = [0.0, 0.0];
        for _ in 0..ROUNDS {
            for (i, l) in [&limiter, &uncached].into_iter().enumerate() {
                let before = commands(&url).await;
                let l = l.clone();
                let blocked = blocked.clone();
                let r =
                    run(1, move |_, _| {
                        let (l, blocked) = (l.clone(), blocked.clone());
                        async move {
                            assert!(!l.check(&blocked, "abuser", 1).await.unwrap().is_allowed())
                        }
                    })
                    .await;
                refused_commands[i] = (commands(&url).await.0 - before.0) as f64 / CALLS as f64;
                refused[i].push(r.p50.as_secs_f64() * 1e9);
            }
        }
        for (i, name) in ["with the blocked-key cache", "without"]
            .into_iter()
            .enumerate()
        {
            println!(
                "redis/refused key {name}: p50 {:.0} ns, {:.3} commands sent per decision",
                median(refused[i].clone()),
                refused_commands[i]
            );
        }

        // The same refusal from the in-memory store, for comparison.
        let memory = Limiter::new();
        memory.check(&blocked, "abuser", 1).await.unwrap();
        let mut memory_refused = Vec::new();
        for _ in 0..ROUNDS {
            let (memory, blocked) = (memory.clone(), blocked.clone());
            let r = run(1, move |_, _| {
                let (memory, blocked) = (memory.clone(), blocked.clone());
                async move {
                    assert!(
                        !memory
                            .check(&blocked, "abuser", 1)
                            .await
                            .unwrap()
                            .is_allowed()
                    )
                }
            })
            .await;
            memory_refused.push(r.p50.as_secs_f64() * 1e9);
        }
        println!("memory/refused key: p50 {:.0} ns", median(memory_refused));

        // redis-benchmark's own PING, for reference.
        if let Ok(out) = std::process::Command::new("redis-benchmark")
            .args([
                "-p",
                &server.port.to_string(),
                "-t",
                "ping",
                "-n",
                "100000",
                "-c",
                "1",
                "-q",
            ])
            .output()
        {
            for line in String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.contains("PING"))
            {
                println!(
                    "redis-benchmark -c 1: {}",
                    line.trim().rsplit('\r').next().unwrap_or(line)
                );
            }
        }
    });
}
