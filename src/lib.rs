//! Declarative rate limiting for axum handlers, built for APIs that serve machine-learning
//! models, where one request can cost a GPU-second.
//!
//! This facade re-exports [`ratelimit_core`]: the rate grammar, the algorithms (GCRA, fixed
//! window, sliding window counter, moving window), the bounded in-memory store and the
//! [`Limiter`].
//!
//! ```
//! use ratelimit::{Limiter, Limits};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let limiter = Limiter::new();
//! let predict: Limits = "10/minute".parse().unwrap();
//! let decision = limiter.check(&predict, "203.0.113.7", 1).await.unwrap();
//! assert!(decision.is_allowed());
//! assert_eq!(decision.remaining(), 9);
//! # }
//! ```

pub use ratelimit_core::*;

// The README's examples are compiled and run as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
