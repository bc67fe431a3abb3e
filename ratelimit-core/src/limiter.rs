//! The limiter: a store, a default algorithm, a key prefix and an observer, behind one cheap
//! handle.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::algorithm::Algorithm;
use crate::decision::Decision;
use crate::limits::Limits;
use crate::observe::{Observation, Observer};
use crate::store::{Charge, CheckRequest, MemoryStore, Mode, Store, StoreError, StoreFuture};

/// Checks keys against limits. Cloning it is cheap and every clone shares the same state.
///
/// ```
/// use ratelimit_core::{Limiter, Limits};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = Limiter::new(); // in memory, GCRA
/// let limits = Limits::parse("10/minute").unwrap();
/// let decision = limiter.check(&limits, "203.0.113.7", 1).await.unwrap();
/// assert!(decision.is_allowed());
/// assert_eq!(decision.remaining(), 9);
/// # }
/// ```
#[derive(Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    algorithm: Algorithm,
    prefix: String,
    observer: Option<Box<dyn Observer>>,
}

/// The default store is called directly, so its checks inline into the caller; any other
/// store goes through the trait object.
enum Backend {
    Memory(MemoryStore),
    Other(Arc<dyn Store>),
}

impl Limiter {
    /// A limiter on a fresh in-memory store, with GCRA and the prefix `ratelimit`.
    pub fn new() -> Limiter {
        Limiter::builder().build()
    }

    /// Starts configuring a limiter.
    pub fn builder() -> LimiterBuilder {
        LimiterBuilder::default()
    }

    /// Checks a request of `cost` units from `key` against `limits` and, when every rate
    /// admits it, charges it to all of them. A refused request is charged nothing. One store
    /// call.
    pub async fn check(
        &self,
        limits: &Limits,
        key: &str,
        cost: u64,
    ) -> Result<Decision, StoreError> {
        self.check_scoped("", limits, key, cost).await
    }

    /// [`check`](Limiter::check) within `scope`: the same key under another scope is another
    /// budget (the attribute scopes keys by route).
    pub async fn check_scoped(
        &self,
        scope: &str,
        limits: &Limits,
        key: &str,
        cost: u64,
    ) -> Result<Decision, StoreError> {
        let charge = self.charge(scope, limits, cost);
        let decision = self
            .check_charges(key.as_bytes(), std::slice::from_ref(&charge), Mode::Charge)
            .await?;
        self.observe(scope, key.as_bytes(), &decision);
        Ok(decision)
    }

    /// Answers what [`check`](Limiter::check) would, without charging anything.
    pub async fn peek(
        &self,
        limits: &Limits,
        key: &str,
        cost: u64,
    ) -> Result<Decision, StoreError> {
        let charge = self.charge("", limits, cost);
        self.check_charges(key.as_bytes(), std::slice::from_ref(&charge), Mode::Peek)
            .await
    }

    /// Checks like [`check`](Limiter::check) without a future, when the store answers without
    /// waiting (every [`MemoryStore`] does); `None` when it would wait (then nothing was sent
    /// to it: await [`check`](Limiter::check)) or failed.
    ///
    /// ```
    /// use ratelimit_core::{Limiter, Limits};
    ///
    /// let limiter = Limiter::new();
    /// let limits = Limits::parse("1/second").unwrap();
    /// assert!(limiter.check_now(&limits, "k", 1).unwrap().is_allowed());
    /// assert!(!limiter.check_now(&limits, "k", 1).unwrap().is_allowed());
    /// ```
    #[inline(always)]
    pub fn check_now(&self, limits: &Limits, key: &str, cost: u64) -> Option<Decision> {
        let charge = self.charge("", limits, cost);
        let decision = self
            .check_charges_now(key.as_bytes(), std::slice::from_ref(&charge), Mode::Charge)?
            .ok()?;
        self.observe("", key.as_bytes(), &decision);
        Some(decision)
    }

    /// A charge of `cost` units under `limits` in `scope`, counted by the limits' algorithm
    /// or else the limiter's default.
    #[inline]
    pub fn charge<'a>(&self, scope: &'a str, limits: &'a Limits, cost: u64) -> Charge<'a> {
        Charge {
            scope,
            limits,
            algorithm: limits.algorithm().unwrap_or(self.inner.algorithm),
            cost,
        }
    }

    /// Everything one request must pass under one `key`, in one store call: all charged, or
    /// none (see [`Store`]). What the HTTP glue calls; a request that must pass limits under
    /// several keys makes one call per key, and gives back the charges already made when a
    /// later key refuses ([`Mode::Refund`]).
    #[inline]
    pub fn check_charges<'a>(
        &'a self,
        key: &'a [u8],
        charges: &'a [Charge<'a>],
        mode: Mode,
    ) -> Check<'a> {
        let request = self.request(key, charges, mode);
        Check(match &self.inner.backend {
            Backend::Memory(store) => Pending::Memory(store, request),
            Backend::Other(store) => Pending::Store(store.check(request)),
        })
    }

    /// [`check_charges`](Limiter::check_charges) without a future, when the store answers
    /// without waiting ([`Store::answer_now`]); `None` when it would wait, and then nothing
    /// was sent to it.
    #[inline(always)]
    pub fn check_charges_now(
        &self,
        key: &[u8],
        charges: &[Charge<'_>],
        mode: Mode,
    ) -> Option<Result<Decision, StoreError>> {
        let request = self.request(key, charges, mode);
        match &self.inner.backend {
            Backend::Memory(store) => Some(Ok(store.check_now(&request))),
            Backend::Other(store) => store.answer_now(&request),
        }
    }

    /// Whether the store answers without waiting (the default in-memory store): then
    /// [`check_charges_now`](Limiter::check_charges_now) always answers.
    pub fn answers_now(&self) -> bool {
        matches!(self.inner.backend, Backend::Memory(_))
    }

    /// Shows `decision` to the observer, if any.
    #[inline]
    pub fn observe(&self, route: &str, key: &[u8], decision: &Decision) {
        if let Some(observer) = &self.inner.observer {
            observer.observe(&Observation {
                route,
                key,
                decision,
            });
        }
    }

    /// The algorithm used for limits that do not name one.
    pub fn default_algorithm(&self) -> Algorithm {
        self.inner.algorithm
    }

    /// The prefix of every key this limiter stores.
    pub fn key_prefix(&self) -> &str {
        &self.inner.prefix
    }

    #[inline]
    fn request<'a>(
        &'a self,
        key: &'a [u8],
        charges: &'a [Charge<'a>],
        mode: Mode,
    ) -> CheckRequest<'a> {
        CheckRequest {
            prefix: &self.inner.prefix,
            key,
            charges,
            mode,
        }
    }
}

/// The future of [`Limiter::check_charges`]: one store call.
///
/// With the in-memory store it is ready at its first poll: the check runs inside `poll`, so
/// the decision is written once, straight to the caller.
#[must_use = "a check does nothing until it is awaited"]
pub struct Check<'a>(Pending<'a>);

enum Pending<'a> {
    Memory(&'a MemoryStore, CheckRequest<'a>),
    Store(StoreFuture<'a>),
}

impl Future for Check<'_> {
    type Output = Result<Decision, StoreError>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            Pending::Memory(store, request) => Poll::Ready(Ok(store.check_now(request))),
            Pending::Store(future) => Pin::new(future).poll(cx),
        }
    }
}

impl fmt::Debug for Check<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Check").finish_non_exhaustive()
    }
}

/// The process-wide limiter.
static GLOBAL: std::sync::LazyLock<Limiter> = std::sync::LazyLock::new(Limiter::new);

impl Limiter {
    /// The process-wide in-memory limiter, which serves `#[rate_limit]` handlers of routers
    /// without a layer.
    pub fn global() -> &'static Limiter {
        &GLOBAL
    }
}

impl Default for Limiter {
    fn default() -> Limiter {
        Limiter::new()
    }
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field("algorithm", &self.inner.algorithm)
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

/// Configures a [`Limiter`].
#[must_use]
pub struct LimiterBuilder {
    store: Option<Backend>,
    algorithm: Algorithm,
    prefix: String,
    observer: Option<Box<dyn Observer>>,
}

impl Default for LimiterBuilder {
    fn default() -> LimiterBuilder {
        LimiterBuilder {
            store: None,
            algorithm: Algorithm::Gcra,
            prefix: "ratelimit".to_owned(),
            observer: None,
        }
    }
}

impl LimiterBuilder {
    /// Where state lives (default: a new [`MemoryStore`]).
    pub fn store<S: Store>(mut self, store: S) -> LimiterBuilder {
        // The default store is kept by its own type, so its checks are direct calls that
        // inline (see `Backend`); any other goes behind the trait object.
        let store: Box<dyn Any> = Box::new(store);
        self.store = Some(match store.downcast::<MemoryStore>() {
            Ok(memory) => Backend::Memory(*memory),
            Err(other) => Backend::Other(Arc::new(
                *other.downcast::<S>().expect("the store's own type"),
            )),
        });
        self
    }

    /// A store shared with other limiters or code.
    pub fn shared_store(mut self, store: Arc<dyn Store>) -> LimiterBuilder {
        self.store = Some(Backend::Other(store));
        self
    }

    /// The algorithm for limits that do not name their own (default: GCRA).
    pub fn algorithm(mut self, algorithm: Algorithm) -> LimiterBuilder {
        self.algorithm = algorithm;
        self
    }

    /// The prefix of every stored key (default `ratelimit`). Limiters with different prefixes
    /// never share a budget, even on one store.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> LimiterBuilder {
        self.prefix = prefix.into();
        self
    }

    /// Shows every decision to `observer` (logs, metrics).
    pub fn observer(mut self, observer: impl Observer) -> LimiterBuilder {
        self.observer = Some(Box::new(observer));
        self
    }

    /// Builds the limiter.
    pub fn build(self) -> Limiter {
        Limiter {
            inner: Arc::new(Inner {
                backend: self
                    .store
                    .unwrap_or_else(|| Backend::Memory(MemoryStore::new())),
                algorithm: self.algorithm,
                prefix: self.prefix,
                observer: self.observer,
            }),
        }
    }
}

impl fmt::Debug for LimiterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimiterBuilder")
            .field("algorithm", &self.algorithm)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}
