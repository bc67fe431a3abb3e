//! The observer hook: what every decision is shown to, for logs and metrics.

use crate::decision::Decision;

/// One decision, as an [`Observer`] sees it.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Observation<'a> {
    /// Where the request went: the matched route for HTTP, the scope otherwise.
    pub route: &'a str,
    /// The key that bound the decision (for the client IP, its text).
    pub key: &'a [u8],
    /// The decision, bound by the limit that refused the request or has the fewest left.
    pub decision: &'a Decision,
}

/// Shown every decision of a [`Limiter`](crate::Limiter), from the one place that enforces
/// them; set with [`LimiterBuilder::observer`](crate::LimiterBuilder::observer).
///
/// It runs on the request path: keep it to counters and sampling.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use ratelimit_core::observe::{Observation, Observer};
///
/// #[derive(Default)]
/// struct Refusals(AtomicU64);
///
/// impl Observer for Refusals {
///     fn observe(&self, seen: &Observation<'_>) {
///         if !seen.decision.is_allowed() {
///             self.0.fetch_add(1, Ordering::Relaxed);
///         }
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a rate limit observer",
    note = "an observer implements `ratelimit_core::observe::Observer`: `fn observe(&self, seen: &Observation<'_>)`"
)]
pub trait Observer: Send + Sync + 'static {
    /// Called once per request with the decision that applied to it.
    fn observe(&self, seen: &Observation<'_>);
}
