//! The limiter as a plain library: two clients of a model endpoint, one of them greedy, and
//! a batch whose cost is its size.
//!
//! `cargo run --example plain_limiter`

#![allow(clippy::print_stdout)] // an example talks to its reader

use ratelimit::{Algorithm, Limiter, Limits};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let limiter = Limiter::new();
    let predict: Limits = "10/minute; 100/hour".parse().expect("a valid rate");
    let batch = Limits::parse("30/minute")
        .expect("a valid rate")
        .with_algorithm(Algorithm::SlidingWindow);

    println!("POST /predict, limits {predict}");
    for i in 1..=12 {
        let client = if i % 4 == 0 {
            "198.51.100.2"
        } else {
            "203.0.113.7"
        };
        let d = limiter
            .check(&predict, client, 1)
            .await
            .expect("memory never fails");
        if d.is_allowed() {
            println!(
                "  #{i:<2} {client:<13} allowed, {} left of {}",
                d.remaining(),
                d.limit()
            );
        } else {
            let wait = d.retry_after().map_or(f64::INFINITY, |w| w.as_secs_f64());
            println!(
                "  #{i:<2} {client:<13} 429: Rate limit exceeded: {} (retry in {wait:.1} s)",
                d.rate()
            );
        }
    }

    println!("POST /batch-predict, limits {batch}, cost = batch size");
    for size in [8, 16, 8, 40] {
        let d = limiter
            .check(&batch, "203.0.113.7", size)
            .await
            .expect("memory never fails");
        let verdict = if d.is_allowed() {
            "allowed".to_owned()
        } else if d.exceeds_capacity() {
            format!("refused: a batch of {size} can never fit {}", d.rate())
        } else {
            format!(
                "429, retry in {:.1} s",
                d.retry_after().unwrap_or_default().as_secs_f64()
            )
        };
        println!("  batch of {size:<2}: {verdict}, {} left", d.remaining());
    }
}
