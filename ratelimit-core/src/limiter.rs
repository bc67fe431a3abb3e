//! The limiter: a store, a default algorithm and a key prefix, behind one cheap handle.

use std::fmt;
use std::sync::Arc;

use crate::algorithm::Algorithm;
use crate::limits::{Limits, fnv1a};
use crate::store::{CheckRequest, MemoryStore, Store, StoreFuture};

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
    store: Arc<dyn Store>,
    algorithm: Algorithm,
    prefix: String,
    prefix_hash: u64,
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
    /// The in-memory store answers at once: awaiting this future then neither waits nor
    /// allocates.
    pub fn check<'a>(&'a self, limits: &'a Limits, key: &'a str, cost: u64) -> StoreFuture<'a> {
        self.inner
            .store
            .check(self.request(limits, key, cost, false))
    }

    /// Answers what [`check`](Limiter::check) would, without charging anything.
    pub fn peek<'a>(&'a self, limits: &'a Limits, key: &'a str, cost: u64) -> StoreFuture<'a> {
        self.inner
            .store
            .check(self.request(limits, key, cost, true))
    }

    /// The algorithm used for limits that do not name one.
    pub fn default_algorithm(&self) -> Algorithm {
        self.inner.algorithm
    }

    /// The prefix of every key this limiter stores.
    pub fn key_prefix(&self) -> &str {
        &self.inner.prefix
    }

    fn request<'a>(
        &'a self,
        limits: &'a Limits,
        key: &'a str,
        cost: u64,
        peek: bool,
    ) -> CheckRequest<'a> {
        let algorithm = limits.algorithm().unwrap_or(self.inner.algorithm);
        let namespace = (limits.id() ^ self.inner.prefix_hash ^ algorithm.code().rotate_left(56))
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        CheckRequest {
            limits,
            algorithm,
            namespace,
            prefix: &self.inner.prefix,
            key,
            cost,
            peek,
        }
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
    store: Option<Arc<dyn Store>>,
    algorithm: Algorithm,
    prefix: String,
}

impl Default for LimiterBuilder {
    fn default() -> LimiterBuilder {
        LimiterBuilder {
            store: None,
            algorithm: Algorithm::Gcra,
            prefix: "ratelimit".to_owned(),
        }
    }
}

impl LimiterBuilder {
    /// Where state lives (default: a new [`MemoryStore`]).
    pub fn store(mut self, store: impl Store) -> LimiterBuilder {
        self.store = Some(Arc::new(store));
        self
    }

    /// A store shared with other limiters or code.
    pub fn shared_store(mut self, store: Arc<dyn Store>) -> LimiterBuilder {
        self.store = Some(store);
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
                store: self.store.unwrap_or_else(|| Arc::new(MemoryStore::new())),
                algorithm: self.algorithm,
                prefix: self.prefix,
                prefix_hash,
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
