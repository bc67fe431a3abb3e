//! Where the state of every key lives: in memory by default, in Redis when several instances
//! share their limits.
//!
//! A store answers one [`CheckRequest`] at a time with a [`StoreFuture`]. The trait is
//! object-safe, so a [`Limiter`](crate::Limiter) holds any store behind one pointer, and the
//! future is ready at once for a store that answers without waiting (the in-memory one),
//! so that path allocates nothing; a networked store boxes its `async` block.

mod memory;
#[cfg(feature = "redis")]
mod redis;
mod slots;
mod state;
mod table;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

pub(crate) use memory::Prefix;
pub use memory::{DEFAULT_CAPACITY, MemoryStore, WhenFull};
#[cfg(feature = "redis")]
pub use redis::{DEFAULT_SLOT_LEASE, DEFAULT_TIMEOUT, FailurePolicy, RedisStore};
pub use state::LimitState;

use crate::algorithm::{Algorithm, RateParams, Scale};
use crate::decision::Decision;
use crate::limits::Limits;

/// What a check does to the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Judge the request and, when every charge passes, charge them all; when any refuses,
    /// charge none.
    Charge,
    /// Judge the request without charging anything.
    Peek,
    /// Give back what an earlier [`Mode::Charge`] of the same request charged: another key's
    /// limits refused the request afterwards (see
    /// [`Limiter::check_charges`](crate::Limiter::check_charges)), or what a reservation
    /// over-estimated ([`Limiter::settle`](crate::Limiter::settle)).
    Refund,
    /// Charge every charge whatever its limits say: what a reservation under-estimated, once
    /// the work is done ([`Limiter::settle`](crate::Limiter::settle)). Never refused; the
    /// key owes it, and its next requests wait until the limits have earned it back. The
    /// decision describes the state after it.
    Debit,
}

/// One set of limits a request must pass under one key: a scope, the limits, the algorithm
/// that counts them and the cost.
#[derive(Clone, Copy, Debug)]
pub struct Charge<'a> {
    /// Who shares the budget with this key: a route, a name several routes share, or the
    /// application. Part of the state's name.
    pub scope: &'a str,
    /// The rates that must all pass.
    pub limits: &'a Limits,
    /// The algorithm that counts them (the limits' own, or the limiter's default).
    pub algorithm: Algorithm,
    /// How many units the request takes (0 judges without storing anything).
    pub cost: u64,
    /// The factor on every amount, [`Scale::FULL`] unless the limiter was scaled
    /// ([`Limiter::set_scale`](crate::Limiter::set_scale)). Stores count with
    /// [`params`](Charge::params), which applies it.
    pub scale: Scale,
}

impl<'a> Charge<'a> {
    /// A charge of `cost` units under `limits`, counted by `algorithm`, unscaled.
    pub fn new(scope: &'a str, limits: &'a Limits, algorithm: Algorithm, cost: u64) -> Charge<'a> {
        Charge {
            scope,
            limits,
            algorithm,
            cost,
            scale: Scale::FULL,
        }
    }

    /// The numbers of each rate as the algorithms count them: the limits' own, scaled.
    /// Borrowed when the scale is full; built on the stack for up to four scaled rates.
    #[inline]
    pub fn params(&self) -> Params<'a> {
        let params = self.limits.params();
        if self.scale.is_full() {
            return Params::Borrowed(params);
        }
        if params.len() <= INLINE_PARAMS {
            let mut inline = [params[0]; INLINE_PARAMS];
            for (slot, p) in inline.iter_mut().zip(params) {
                *slot = p.scaled(self.scale);
            }
            return Params::Inline(inline, params.len());
        }
        Params::Heap(params.iter().map(|p| p.scaled(self.scale)).collect())
    }

    /// The numbers of the rate at `index`, scaled.
    #[inline(always)]
    pub fn param(&self, index: usize) -> RateParams {
        self.limits.params()[index].scaled(self.scale)
    }
}

const INLINE_PARAMS: usize = 4;

/// The scaled numbers of a charge's rates ([`Charge::params`]); derefs to a slice.
// A temporary on the stack, whose point is not to allocate: the inline variant stays.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Params<'a> {
    /// The limits' own numbers (scale 1).
    Borrowed(&'a [RateParams]),
    /// Up to four scaled rates: the first `len` of the array.
    Inline([RateParams; INLINE_PARAMS], usize),
    /// More scaled rates.
    Heap(Vec<RateParams>),
}

impl std::ops::Deref for Params<'_> {
    type Target = [RateParams];

    fn deref(&self) -> &[RateParams] {
        match self {
            Params::Borrowed(params) => params,
            Params::Inline(params, len) => &params[..*len],
            Params::Heap(params) => params,
        }
    }
}

/// One request of one key, against everything that applies to it under that key.
///
/// State is named by what a user configured, so that every process and version agrees on it:
/// the [`prefix`](CheckRequest::prefix), each charge's [`scope`](Charge::scope), the
/// [`key`](CheckRequest::key), and each rate's period and position in its limits
/// ([`Limits::shape`], [`Limits::params`]); never by the amounts, so that limits scaled at
/// run time keep their counts.
#[derive(Clone, Copy, Debug)]
pub struct CheckRequest<'a> {
    /// The limiter's key prefix.
    pub prefix: &'a str,
    /// Who is counted: a client address, an API key's bytes (not necessarily UTF-8).
    pub key: &'a [u8],
    /// What the request must pass, all or nothing.
    pub charges: &'a [Charge<'a>],
    /// Charge, peek or refund.
    pub mode: Mode,
}

/// A place that keeps rate limit state and applies the algorithms to it.
///
/// The contract, which the limiter relies on:
///
/// - one call per request and key: every charge of a [`CheckRequest`] is judged and, in
///   [`Mode::Charge`], charged together, all or nothing: when any rate of any charge refuses
///   it, no rate is charged;
/// - the answer is the binding decision: the refusing rate with the longest wait, or the
///   admitting rate with the fewest requests left, marked with
///   [`at_rate`](Decision::at_rate) and [`at_charge`](Decision::at_charge);
/// - [`Mode::Refund`] gives back an earlier charge of the same request, and answers with the
///   state as it is then (a judgement at cost 0);
/// - a charge of cost 0 stores nothing.
///
/// [`LimitState`] runs the algorithms on one key's state, for stores that keep state
/// themselves; a store can also delegate to another (a [`MemoryStore`]).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a rate limit store",
    note = "a store implements `ratelimit_core::store::Store`: `fn check<'a>(&'a self, request: CheckRequest<'a>) -> StoreFuture<'a>`; `MemoryStore` is the built-in one"
)]
pub trait Store: Send + Sync + 'static {
    /// Judges `request` and, as its [`mode`](CheckRequest::mode) says, charges, peeks or
    /// refunds it.
    fn check<'a>(&'a self, request: CheckRequest<'a>) -> StoreFuture<'a>;

    /// The answer at once, for a store that never waits (in memory); `None`, the default,
    /// for one that does, which is then sent the same request through
    /// [`check`](Store::check). Returning `None` must leave the state untouched: either way,
    /// a request reaches the store once.
    fn answer_now(&self, request: &CheckRequest<'_>) -> Option<Result<Decision, StoreError>> {
        let _ = request;
        None
    }

    /// Takes one of `request.limit` slots: `Some(lease)` when one was free (give it back
    /// with [`release_slot`](Store::release_slot)), `None` when all are taken. A slot must
    /// come back even when its holder never returns it (a crashed instance): a shared store
    /// gives its slots as leases that expire. The default keeps no slots and says so.
    fn acquire_slot<'a>(&'a self, request: SlotRequest<'a>) -> StoreFuture<'a, Option<u64>> {
        let _ = request;
        StoreFuture::ready(Err(StoreError::new(
            "this store keeps no concurrency slots",
        )))
    }

    /// [`acquire_slot`](Store::acquire_slot) and then [`check`](Store::check) of the same
    /// key as one (`concurrency = N` beside the key's rates, in [`Mode::Charge`]): when
    /// every slot is held, [`SlotCheck::NoSlot`] and nothing judged or charged; when the
    /// rates refuse, [`SlotCheck::Refused`] and no slot taken; otherwise both taken. The
    /// default makes the two calls (giving the slot back when the rates refuse); a networked
    /// store does it in one round trip.
    fn check_with_slot<'a>(
        &'a self,
        request: CheckRequest<'a>,
        slot: SlotRequest<'a>,
    ) -> StoreFuture<'a, SlotCheck> {
        StoreFuture::new(async move {
            let Some(lease) = self.acquire_slot(slot).await? else {
                return Ok(SlotCheck::NoSlot);
            };
            match self.check(request).await {
                Ok(decision) if decision.is_allowed() => Ok(SlotCheck::Admitted(decision, lease)),
                checked => {
                    self.release_slot(slot, lease);
                    checked.map(SlotCheck::Refused)
                }
            }
        })
    }

    /// Gives back the slot `lease` (from [`acquire_slot`](Store::acquire_slot)) when the
    /// request ends or is dropped. Returns at once; a networked store sends it in the
    /// background (and, should that fail, the lease expires).
    fn release_slot(&self, request: SlotRequest<'_>, lease: u64) {
        let _ = (request, lease);
    }

    /// For a store shared by several instances: the [`Scale`] they share under `prefix`,
    /// as this process last read it (it reads it again in the background, at most about a
    /// second apart). `None`, the default, for a store private to this process: then the
    /// limiter's own scale applies.
    fn shared_scale(&self, prefix: &str) -> Option<Scale> {
        let _ = prefix;
        None
    }

    /// Makes `scale` the one every instance sharing this store uses under `prefix`, for at
    /// most `ttl` when one is given ([`Limiter::set_scale`](crate::Limiter::set_scale),
    /// [`Limiter::set_scale_for`](crate::Limiter::set_scale_for)). The default has nobody to
    /// tell.
    fn publish_scale<'a>(
        &'a self,
        prefix: &'a str,
        scale: Scale,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, ()> {
        let _ = (prefix, scale, ttl);
        StoreFuture::ready(Ok(()))
    }
}

impl<S: Store + ?Sized> Store for std::sync::Arc<S> {
    fn check<'a>(&'a self, request: CheckRequest<'a>) -> StoreFuture<'a> {
        (**self).check(request)
    }

    fn answer_now(&self, request: &CheckRequest<'_>) -> Option<Result<Decision, StoreError>> {
        (**self).answer_now(request)
    }

    fn acquire_slot<'a>(&'a self, request: SlotRequest<'a>) -> StoreFuture<'a, Option<u64>> {
        (**self).acquire_slot(request)
    }

    fn check_with_slot<'a>(
        &'a self,
        request: CheckRequest<'a>,
        slot: SlotRequest<'a>,
    ) -> StoreFuture<'a, SlotCheck> {
        (**self).check_with_slot(request, slot)
    }

    fn release_slot(&self, request: SlotRequest<'_>, lease: u64) {
        (**self).release_slot(request, lease);
    }

    fn shared_scale(&self, prefix: &str) -> Option<Scale> {
        (**self).shared_scale(prefix)
    }

    fn publish_scale<'a>(
        &'a self,
        prefix: &'a str,
        scale: Scale,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, ()> {
        (**self).publish_scale(prefix, scale, ttl)
    }
}

type Boxed<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// The future a [`Store`] answers with: ready at once, or a boxed `async` block. A check
/// answers a [`Decision`]; the other calls answer what they say.
#[must_use = "a store call does nothing until it is awaited"]
pub struct StoreFuture<'a, T = Decision>(Inner<'a, T>);

enum Inner<'a, T> {
    Ready(Option<Result<T, StoreError>>),
    Pending(Boxed<'a, T>),
}

impl<'a, T> StoreFuture<'a, T> {
    /// An answer that is already known.
    #[inline]
    pub fn ready(result: Result<T, StoreError>) -> StoreFuture<'a, T> {
        StoreFuture(Inner::Ready(Some(result)))
    }

    /// An answer that takes I/O: `StoreFuture::new(async move { ... })`.
    pub fn new(
        future: impl Future<Output = Result<T, StoreError>> + Send + 'a,
    ) -> StoreFuture<'a, T> {
        StoreFuture(Inner::Pending(Box::pin(future)))
    }

    /// The answer, when it was known at once; the future back otherwise (not yet polled, so
    /// it has done nothing).
    pub fn into_ready(self) -> Result<Result<T, StoreError>, StoreFuture<'a, T>> {
        match self.0 {
            Inner::Ready(Some(result)) => Ok(result),
            inner => Err(StoreFuture(inner)),
        }
    }
}

// Nothing in it is pinned in place: the pending future is boxed.
impl<T> Unpin for StoreFuture<'_, T> {}

impl<T> Future for StoreFuture<'_, T> {
    type Output = Result<T, StoreError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().0 {
            Inner::Ready(result) => {
                Poll::Ready(result.take().expect("StoreFuture polled after completion"))
            }
            Inner::Pending(future) => future.as_mut().poll(cx),
        }
    }
}

impl<T> fmt::Debug for StoreFuture<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.0 {
            Inner::Ready(_) => "ready",
            Inner::Pending(_) => "pending",
        };
        f.debug_tuple("StoreFuture").field(&state).finish()
    }
}

/// One request asking for a concurrency slot (`concurrency = N` on the attribute): at most
/// `limit` requests of `key` under `scope` in flight at once.
#[derive(Clone, Copy, Debug)]
pub struct SlotRequest<'a> {
    /// The limiter's key prefix.
    pub prefix: &'a str,
    /// The route, or the name several routes share.
    pub scope: &'a str,
    /// Who is counted.
    pub key: &'a [u8],
    /// How many requests of the key may be in flight at once.
    pub limit: u32,
}

/// What a check that also takes a concurrency slot found ([`Store::check_with_slot`],
/// [`Limiter::check_with_slot`](crate::Limiter::check_with_slot)); `L` is the lease: its id
/// from a store, a [`SlotLease`](crate::SlotLease) from a limiter.
#[derive(Debug)]
pub enum SlotCheck<L = u64> {
    /// Every slot of the key was held: nothing was judged or charged.
    NoSlot,
    /// A slot was free, but the rates refused the request: nothing was charged and no slot
    /// taken.
    Refused(Decision),
    /// Admitted and charged, holding the slot `L`.
    Admitted(Decision, L),
}

/// A store could not answer: its server is down, timed out, or said something unexpected.
#[derive(Debug)]
pub struct StoreError(Box<ErrorInner>);

// Boxed: a `Result<Decision, StoreError>` is returned on every check and must stay small.
#[derive(Debug)]
struct ErrorInner {
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl StoreError {
    /// An error with a message.
    pub fn new(message: impl Into<String>) -> StoreError {
        StoreError(Box::new(ErrorInner {
            message: message.into(),
            source: None,
        }))
    }

    /// An error with a message and the error that caused it.
    pub fn with_source(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> StoreError {
        StoreError(Box::new(ErrorInner {
            message: message.into(),
            source: Some(Box::new(source)),
        }))
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rate limit store failed: {}", self.0.message)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source.as_deref().map(|e| e as _)
    }
}
