//! Declarative rate limiting for axum handlers, built for APIs that serve machine-learning
//! models, where one request can cost a GPU-second.
//!
//! Put [`#[rate_limit]`](rate_limit) on an axum handler and it is protected; the rest of
//! this crate is [`ratelimit_core`] re-exported: the rate grammar, the algorithms (GCRA,
//! fixed window, sliding window counter, moving window), the bounded in-memory store, the
//! [`Limiter`] and its axum [layer](Limiter::layer).
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
/// Rate limits an axum handler: `#[rate_limit("10/minute", key = ip)]`.
///
/// ```
/// use axum::{Json, Router, routing::post};
/// use ratelimit::{Limiter, rate_limit};
///
/// #[rate_limit("10/minute", key = ip)]
/// async fn predict(Json(input): Json<Vec<f32>>) -> Json<f32> {
///     Json(input.iter().sum())
/// }
///
/// let limiter = Limiter::new();
/// let app: Router = Router::new().route("/predict", post(predict)).layer(limiter.layer());
/// // Serve with `app.into_make_service_with_connect_info::<std::net::SocketAddr>()`:
/// // `key = ip` reads the peer address.
/// ```
///
/// # Arguments
///
/// - **`LIMITS`**, first: a string in the [rate grammar](crate::rate) (`"10/minute"`,
///   `"5 per 5 minutes"`, `"10/minute;100/hour"`), checked at compile time; or the path of a
///   function `fn(&Parts) -> L` returning the limits of each request, where `L` is
///   `&'static Limits`, `&'static LazyLock<Limits>`, `Arc<Limits>` or `Limits`.
/// - **`key = ip | global | header("X-API-Key") | path`**: who is counted. `ip` is the peer
///   address (IPv6 by /64; behind
///   [trusted proxies](http::RateLimitLayer::trusted_proxies) the right-most untrusted
///   forwarded hop), `global` is everyone together, `header` the header's bytes (a request
///   without it is counted by its client address), and a path names a function
///   `fn(&Parts) -> K` or `async fn(&Parts) -> K` whose `K` is a `String`, `&'static str`,
///   `Cow<'static, str>`, an [`Identity`](http::Identity) (a key, the client address, and
///   optionally a tier's limits, which then replace `LIMITS`), a
///   [`ClientAddr`](http::ClientAddr), an `Option` of one (`None` is counted by the client
///   address, never under one key shared by every such request), or a `Result` of one whose
///   error is the answer (a 401 for an unknown API key). A key function gets the client
///   address exactly as `key = ip` derives it from [`ClientAddr::of`](http::ClientAddr::of)
///   or [`Identity::client`](http::Identity::client); for API keys that a client cannot
///   forge, see [`ApiKeys`](http::ApiKeys). Default: the layer's
///   [default key](http::RateLimitLayer::default_key), the client IP.
/// - **`scope = "name"`**: one budget shared by every handler naming it. Without it, keys are
///   scoped by the matched route template (`/items/1` and `/items/2` share `/items/{id}`).
/// - **`algorithm = gcra | fixed_window | sliding_window | moving_window`** (default: the
///   limiter's, GCRA) and **`burst = N`** (GCRA only).
/// - **`cost = EXPR`**: the units a request takes, an integer expression. It may use the
///   handler's arguments (`cost = batch.len()`); then the check runs once they are
///   extracted, and otherwise before the body is read. A cost larger than the whole limit is
///   refused with a 429 that says so (and no `Retry-After`: waiting will not help).
/// - **`reserve = EXPR`**: the cost is an estimate known before the work (a prompt's tokens
///   and its `max_tokens`), reserved like a cost, all or nothing with the other limits; the
///   handler takes a parameter `reservation: Reservation` and settles what the work really
///   used with `reservation.settle(actual).await`: the over-reserved part is given back, the
///   under-reserved part is debt the key's next requests wait for (never a refusal: the work
///   is done). From inside a streamed response, `reservation.meter()` counts as it goes and
///   settles when the stream ends or is dropped (a client that hangs up pays for what was
///   produced). A reservation dropped unsettled keeps its estimate. `reserve` and `cost` do
///   not go together; one attribute per handler reserves; a `Reservation` parameter without
///   `reserve` (or the reverse) is a compile error.
/// - **`concurrency = N`**: at most `N` requests of one key in flight at once (an inference
///   slot). The slot is taken before any rate is charged and given back when the handler's
///   future completes or is dropped (the client went away); a request that finds every slot
///   taken gets `429` with `{"detail": "Too many concurrent requests: ..."}` and
///   `Retry-After: 1` (at once, or after waiting `queue`) and is charged no rate. With
///   Redis, slots are leases that expire (`RedisStore::slot_lease`) and are renewed while
///   their request runs, so a crashed instance cannot hold them for ever.
/// - **`capacity = adaptive | adaptive(min = A, max = B) | N`**: at most so many requests of
///   the route in flight across every client of this instance; `adaptive` follows the
///   handler's latency (TCP Vegas). A client holds at most its fair share; a request that
///   finds the route full is shed with `503`, `Retry-After` and `{"detail": "The server is
///   overloaded: ..."}` (its rates given back), unless it may wait (`queue`).
/// - **`queue = "2s"`**: how long a request waits for `capacity` (round robin across
///   clients, [`Priority::High`] first) or for a `concurrency` slot before it is refused.
/// - **`exempt_when = path`**: a `fn(&Parts) -> bool`; requests for which it is true skip
///   the limit.
/// - **`error_message = "..."`**: the `detail` of the 429 answer.
/// - **`crate = path`**: where to find this crate if it was renamed.
///
/// Several attributes on one handler all apply, as one: a request refused by any of them (or
/// by the layer's default and application limits) is charged by none. The attribute goes on
/// free `async fn` handlers; on a method it is a compile error. A refused request gets `429` with
/// `{"detail": "Rate limit exceeded: 10 per 1 minute"}`, `Retry-After`, and the rate limit
/// headers; with [`Limiter::layer`] every response of a limited route carries them.
///
/// # What it stands for
///
/// The attribute puts the check in front of the handler's first argument, and adds a hidden
/// item describing the limit; the body is untouched. The example above is, give or take
/// names:
///
/// ```
/// # use axum::Json;
/// use ratelimit::__private::{Checked, Spec};
///
/// struct PredictLimit;
///
/// impl Spec for PredictLimit {
///     // The handler's path, then "10/minute" (9 bytes) counted by the client IP.
///     const TEXT: &'static str = "my_app::predict\nl9:10/minuteki;";
/// }
///
/// async fn predict(
///     Checked(Json(input), _, _): Checked<PredictLimit, Json<Vec<f32>>, ()>,
/// ) -> Json<f32> {
///     Json(input.iter().sum())
/// }
/// ```
///
/// `Checked` (a handler's only argument) and `CheckedParts` (the first of several) check the
/// request before their argument, or any other, is extracted, then extract it; the handler
/// binds its own pattern inside. A handler without arguments takes a `Guard<PredictLimit>`
/// instead. Either way axum compiles the handler's extraction for as many extractors as it
/// had (each one more is the largest part of an attribute's build time).
///
/// The options are data in one string constant (a struct literal per attribute took the
/// compiler five times as long to check), read once, on the handler's first request.
/// Several attributes on one handler follow each other in it, checked as one. Their hooks
/// (`exempt_when`, a `limits` function, a `cost` that uses no argument) are plain functions
/// in a table beside it, `HOOKS`, one `Hooks` per attribute.
///
/// A `cost` that uses the arguments moves the check after them:
/// - when it uses only the last argument (`cost = batch.len()` with `Json(batch)` last), that
///   argument becomes a `CostedArg<PredictLimit, Json<Vec<f32>>, 1>` (1: the number of
///   attributes), which finds the keys before the argument is extracted, then asks the
///   spec's `Costed` impl for the costs from it and checks; the handler binds the
///   argument's pattern inside it (`CostedArg(Json(batch), slots, _)`, the slots held until
///   its future completes or is dropped), and the body and the return type are untouched;
/// - otherwise the handler takes a `Deferred<PredictLimit, 1>` first, returns
///   `Result<T, Rejection>`, and checks the request at its cost before the original body,
///   which runs in place when nothing in it leaves early (no `return`, `?` or unknown macro)
///   and in an `async` block of its own when something might.
///
/// With a key function (`key = path`, which may be `async`), the spec also implements
/// `KeyedSpec`, whose `key` awaits it, and the guards are `KeyedGuard` and `KeyedDeferred`
/// (both sized by the number of attributes), in front of the arguments.
/// With `concurrency` or `capacity`, whose slot or place the request holds while the handler
/// runs, the checked argument's second field binds the slots (`Checked<_, _, Leases>`), and
/// the guard is a `HoldingGuard` (a plain `Guard` holds nothing).
pub use ratelimit_macros::rate_limit;

/// What the code generated by `#[rate_limit]` names; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use ratelimit_core::Algorithm;
    pub use ratelimit_core::http::Leases;
    pub use ratelimit_core::http::support::{Cost, KeyFromFuture, KeyFromValue, Probe, returns};
    pub use ratelimit_core::http::{
        Checked, CheckedParts, Costed, CostedArg, Deferred, Guard, HoldingGuard, Hooks, Identity,
        KeyedDeferred, KeyedGuard, KeyedSpec, LimitsRef, Rejection, Spec,
    };
    pub use std::num::NonZeroU64;

    pub use http::request::Parts;
}

// The README's examples are compiled and run as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
