//! Bytes per tracked key, ratelimit beside governor: each side tracks a million keys in a
//! child process of its own, and the growth of its resident memory is divided by the count.
//!
//! `cargo bench -p ratelimit-benches --bench memory`

#![allow(clippy::print_stdout)] // the report is its output

use std::num::NonZeroU32;
use std::process::Command;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ratelimit_core::{Limiter, Limits, MemoryStore};

const KEYS: usize = 1_000_000;

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn keys() -> Vec<String> {
    (0..KEYS)
        .map(|i| format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255))
        .collect()
}

fn child(side: &str) -> u64 {
    let keys = keys();
    let before = resident_bytes();
    match side {
        "ratelimit" => {
            let limiter = Limiter::builder()
                .store(MemoryStore::new().with_capacity(2 * KEYS))
                .build();
            let limits = Limits::parse("100/minute").unwrap();
            for key in &keys {
                let mut f = std::pin::pin!(limiter.check(&limits, key, 1));
                let cx = &mut std::task::Context::from_waker(std::task::Waker::noop());
                assert!(
                    matches!(f.as_mut().poll(cx), std::task::Poll::Ready(Ok(d)) if d.is_allowed())
                );
            }
            let grown = resident_bytes() - before;
            std::hint::black_box(&limiter);
            grown
        }
        _ => {
            let gov: DefaultKeyedRateLimiter<String> =
                RateLimiter::keyed(Quota::per_minute(NonZeroU32::new(100).unwrap()));
            for key in &keys {
                assert!(gov.check_key(key).is_ok());
            }
            let grown = resident_bytes() - before;
            std::hint::black_box(&gov);
            grown
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--child") {
        let grown = child(&args[pos + 1]);
        println!("{grown}");
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return; // `cargo bench -- --list` asks every bench target for its benchmarks
    }
    let exe = std::env::current_exe().unwrap();
    let measure = |side: &str| -> u64 {
        let out = Command::new(&exe).args(["--child", side]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let ours = measure("ratelimit");
    let theirs = measure("governor");
    let per = |b: u64| b as f64 / KEYS as f64;
    println!("memory/bytes_per_key ({KEYS} keys, resident growth)");
    println!("  ratelimit_gcra: {:.1} bytes/key", per(ours));
    println!("  governor:       {:.1} bytes/key", per(theirs));
    println!("  ratio:          {:.3}", ours as f64 / theirs as f64);
}
