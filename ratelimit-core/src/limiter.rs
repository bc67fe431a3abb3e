//! The limiter: a store, a default algorithm and a key prefix, behind one cheap handle.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::algorithm::Algorithm;
use crate::decision::Decision;
use crate::limits::{Limits, fnv1a};
use crate::store::{CheckRequest, MemoryStore, Store, StoreError, StoreFuture};

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
    prefix_hash: u64,
    #[cfg(feature = "axum")]
    http: crate::http::HttpConfig,
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
    /// admits it, charges it to all of them. A refused request is charged nothing.
    ///
    /// With the in-memory store, awaiting this future neither waits nor allocates.
    #[inline]
    pub fn check<'a>(&'a self, limits: &'a Limits, key: &'a str, cost: u64) -> Check<'a> {
        self.dispatch(self.request("", limits, key, cost, false))
    }

    /// [`check`](Limiter::check) within `scope`: the same key under another scope is another
    /// budget (the attribute scopes keys by route).
    #[inline]
    pub fn check_scoped<'a>(
        &'a self,
        scope: &'a str,
        limits: &'a Limits,
        key: &'a str,
        cost: u64,
    ) -> Check<'a> {
        self.dispatch(self.request(scope, limits, key, cost, false))
    }

    /// Checks like [`check`](Limiter::check), without a future, when the store answers
    /// without waiting (every [`MemoryStore`] does); `None` when the answer needs I/O or is an
    /// error: await [`check`](Limiter::check) then.
    ///
    /// This is the fastest path: nothing is moved through a future's state, so the whole
    /// check inlines into the caller.
    ///
    /// ```
    /// use ratelimit_core::{Limiter, Limits};
    ///
    /// let limiter = Limiter::new();
    /// let limits = Limits::parse("1/second").unwrap();
    /// assert!(limiter.check_now(&limits, "k", 1).unwrap().is_allowed());
    /// assert!(!limiter.check_now(&limits, "k", 1).unwrap().is_allowed());
    /// ```
    #[inline]
    pub fn check_now(&self, limits: &Limits, key: &str, cost: u64) -> Option<Decision> {
        self.check_scoped_now("", limits, key, cost)
    }

    /// [`check_now`](Limiter::check_now) within `scope`.
    #[inline]
    pub fn check_scoped_now(
        &self,
        scope: &str,
        limits: &Limits,
        key: &str,
        cost: u64,
    ) -> Option<Decision> {
        let request = self.request(scope, limits, key, cost, false);
        match &self.inner.backend {
            Backend::Memory(store) => Some(store.check_now(&request)),
            // An unpolled future has done nothing, so one that is not ready at once is
            // dropped without effect.
            Backend::Other(store) => store.check(request).into_ready().ok()?.ok(),
        }
    }

    /// Answers what [`check`](Limiter::check) would, without charging anything.
    #[inline]
    pub fn peek<'a>(&'a self, limits: &'a Limits, key: &'a str, cost: u64) -> Check<'a> {
        self.dispatch(self.request("", limits, key, cost, true))
    }

    #[inline]
    fn dispatch<'a>(&'a self, request: CheckRequest<'a>) -> Check<'a> {
        Check(match &self.inner.backend {
            Backend::Memory(store) => Pending::Memory(store, request),
            Backend::Other(store) => Pending::Store(store.check(request)),
        })
    }

    /// The algorithm used for limits that do not name one.
    pub fn default_algorithm(&self) -> Algorithm {
        self.inner.algorithm
    }

    /// The prefix of every key this limiter stores.
    pub fn key_prefix(&self) -> &str {
        &self.inner.prefix
    }

    #[cfg(feature = "axum")]
    pub(crate) fn http(&self) -> &crate::http::HttpConfig {
        &self.inner.http
    }

    #[inline]
    fn request<'a>(
        &'a self,
        scope: &'a str,
        limits: &'a Limits,
        key: &'a str,
        cost: u64,
        peek: bool,
    ) -> CheckRequest<'a> {
        let algorithm = limits.algorithm().unwrap_or(self.inner.algorithm);
        let scope_hash = if scope.is_empty() {
            0
        } else {
            SCOPE_HASHER.hash_one(scope)
        };
        let namespace =
            (limits.id() ^ self.inner.prefix_hash ^ scope_hash ^ algorithm.code().rotate_left(56))
                .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        CheckRequest {
            limits,
            algorithm,
            namespace,
            prefix: &self.inner.prefix,
            scope,
            key,
            cost,
            peek,
        }
    }
}

/// The future of [`Limiter::check`] and [`Limiter::peek`].
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

/// Scopes are hashed into the namespace on every check: a fast fixed-seed hash (the
/// namespace is only ever compared within this process).
static SCOPE_HASHER: foldhash::fast::FixedState =
    foldhash::fast::FixedState::with_seed(0x5eed_0f5c_09e5);

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
    #[cfg(feature = "axum")]
    pub(crate) http: crate::http::HttpConfig,
}

impl Default for LimiterBuilder {
    fn default() -> LimiterBuilder {
        LimiterBuilder {
            store: None,
            algorithm: Algorithm::Gcra,
            prefix: "ratelimit".to_owned(),
            #[cfg(feature = "axum")]
            http: Default::default(),
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

    /// Builds the limiter.
    pub fn build(self) -> Limiter {
        let prefix_hash = fnv1a(self.prefix.bytes());
        Limiter {
            inner: Arc::new(Inner {
                backend: self
                    .store
                    .unwrap_or_else(|| Backend::Memory(MemoryStore::new())),
                algorithm: self.algorithm,
                prefix: self.prefix,
                prefix_hash,
                #[cfg(feature = "axum")]
                http: self.http,
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
