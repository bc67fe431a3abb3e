//! Where the in-memory store reads the time: a monotonic clock in production, a fake one
//! that tests move by hand.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A monotonic source of time in nanoseconds since the clock's own origin.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a rate limiter clock",
    note = "a clock implements `ratelimit_core::Clock` with `fn now(&self) -> u64` (nanoseconds since its origin); use `MonotonicClock` in production and `FakeClock` in tests"
)]
pub trait Clock: Send + Sync + 'static {
    /// Nanoseconds since the clock's origin; never decreases.
    fn now(&self) -> u64;
}

/// The production clock: monotonic, and cheap to read (the CPU's time-stamp counter where it
/// is reliable, the OS monotonic clock elsewhere).
#[derive(Clone, Debug)]
pub struct MonotonicClock {
    clock: quanta::Clock,
    origin: u64,
}

impl MonotonicClock {
    /// A clock whose origin is now.
    pub fn new() -> MonotonicClock {
        let clock = quanta::Clock::new();
        let origin = clock.raw();
        MonotonicClock { clock, origin }
    }
}

impl Default for MonotonicClock {
    fn default() -> MonotonicClock {
        MonotonicClock::new()
    }
}

impl Clock for MonotonicClock {
    #[inline]
    fn now(&self) -> u64 {
        self.clock.delta_as_nanos(self.origin, self.clock.raw())
    }
}

/// A clock that moves only when told to: every clone shares the same time.
///
/// ```
/// use std::time::Duration;
/// use ratelimit_core::{Clock, FakeClock};
///
/// let clock = FakeClock::new();
/// let handle = clock.clone();
/// handle.advance(Duration::from_secs(2));
/// assert_eq!(clock.now(), 2_000_000_000);
/// ```
#[derive(Clone, Debug, Default)]
pub struct FakeClock {
    nanos: Arc<AtomicU64>,
}

impl FakeClock {
    /// A clock at its origin.
    pub fn new() -> FakeClock {
        FakeClock::default()
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(by, Ordering::SeqCst);
    }

    /// Sets the clock to `nanos` since its origin. Setting it backwards is allowed, for tests
    /// of what a store does when time seems to go back.
    pub fn set(&self, nanos: u64) {
        self.nanos.store(nanos, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> u64 {
        self.nanos.load(Ordering::SeqCst)
    }
}
