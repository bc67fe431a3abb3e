//! The engine behind [`ratelimit`](https://docs.rs/ratelimit): the rate grammar, the
//! algorithms, the stores and the [`Limiter`].
//!
//! It is a plain library as well: no web framework is needed to limit anything.
//!
//! ```
//! use ratelimit_core::{Limiter, Limits};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let limiter = Limiter::new();
//! let limits: Limits = "3/second; 100/hour".parse().unwrap();
//! for _ in 0..3 {
//!     assert!(limiter.check(&limits, "gpu-worker-7", 1).await.unwrap().is_allowed());
//! }
//! let refused = limiter.check(&limits, "gpu-worker-7", 1).await.unwrap();
//! assert!(!refused.is_allowed());
//! assert_eq!(refused.rate().to_string(), "3 per 1 second");
//! assert!(refused.retry_after().unwrap().as_millis() <= 334);
//! # }
//! ```
//!
//! Without the default `runtime` feature only the [`rate`] grammar and the [`Algorithm`] names
//! are built, with no
//! dependency at all: that is how the `#[rate_limit]` attribute checks its string at compile
//! time.

pub mod rate;

mod algorithm;

#[doc(hidden)]
pub mod attribute;
#[cfg(feature = "axum")]
mod capacity;
#[cfg(feature = "runtime")]
mod clock;
#[cfg(feature = "runtime")]
mod decision;
#[cfg(feature = "runtime")]
mod limiter;
#[cfg(feature = "runtime")]
mod limits;
#[cfg(feature = "runtime")]
pub mod observe;
#[cfg(feature = "runtime")]
mod reservation;
#[cfg(feature = "runtime")]
pub mod store;

#[cfg(feature = "axum")]
pub mod http;

pub use algorithm::{Algorithm, UnknownAlgorithm};
#[cfg(feature = "runtime")]
pub use algorithm::{InvalidScale, RateParams, Scale};
#[cfg(feature = "axum")]
pub use capacity::{CapacityLimit, CapacityStats, QUEUE_PER_CLIENT, QUEUE_TOTAL, Shed};
#[cfg(feature = "runtime")]
pub use clock::{Clock, FakeClock, MonotonicClock};
#[cfg(feature = "runtime")]
pub use decision::Decision;
#[cfg(feature = "axum")]
pub use limiter::Capacities;
#[cfg(feature = "runtime")]
pub use limiter::{Check, Limiter, LimiterBuilder, SlotLease};
#[cfg(feature = "runtime")]
pub use limits::{Limits, LimitsRef, Priority};
pub use rate::{ParseError, Rate, Unit};
#[cfg(feature = "runtime")]
pub use reservation::{Meter, Reservation};
#[cfg(feature = "runtime")]
pub use store::{MemoryStore, SlotCheck, Store, StoreError};
