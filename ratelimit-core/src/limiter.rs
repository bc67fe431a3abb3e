//! The limiter: a store, a default algorithm, a key prefix and an observer, behind one cheap
//! handle.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::algorithm::{Algorithm, Scale};
#[cfg(feature = "axum")]
use crate::capacity::{Capacity, CapacityLimit, CapacityStats};
use crate::decision::Decision;
use crate::limits::Limits;
use crate::observe::{Observation, Observer, Outcome};
use crate::store::{
    Charge, CheckRequest, MemoryStore, Mode, Prefix, SlotCheck, SlotRequest, Store, StoreError,
    StoreFuture,
};

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
    /// This process's scale ([`Scale::to_bits`]), for a store that shares none.
    scale: AtomicU64,
    /// Nanoseconds since `SCALE_EPOCH` after which `scale` is whole again; `u64::MAX`: never.
    scale_until: AtomicU64,
    algorithm: Algorithm,
    prefix: String,
    /// The prefix's part of the names the memory store gives state, worked out once.
    named: Prefix,
    observer: Option<Box<dyn Observer>>,
    /// Each route's capacity in this instance (`capacity =`), made on its first request.
    #[cfg(feature = "axum")]
    capacities: dashmap::DashMap<Box<str>, Arc<Capacity>, foldhash::fast::RandomState>,
    /// Capacities set on the builder, overriding the attribute's.
    #[cfg(feature = "axum")]
    capacity_overrides: Vec<(Box<str>, CapacityLimit)>,
}

/// The default store is called directly, so its checks inline into the caller; any other
/// store goes through the trait object.
// Held once, in the limiter's `Arc`: the size of the memory store's variant costs nothing.
#[allow(clippy::large_enum_variant)]
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
    /// call, made when the future is first polled.
    pub fn check<'a>(
        &'a self,
        limits: &'a Limits,
        key: &'a str,
        cost: u64,
    ) -> impl Future<Output = Result<Decision, StoreError>> + Send + 'a {
        self.check_scoped("", limits, key, cost)
    }

    /// [`check`](Limiter::check) within `scope`: the same key under another scope is another
    /// budget (the attribute scopes keys by route).
    pub fn check_scoped<'a>(
        &'a self,
        scope: &'a str,
        limits: &'a Limits,
        key: &'a str,
        cost: u64,
    ) -> impl Future<Output = Result<Decision, StoreError>> + Send + 'a {
        self.checking(scope, limits, key, cost, Mode::Charge)
    }

    /// Answers what [`check`](Limiter::check) would, without charging anything.
    pub fn peek<'a>(
        &'a self,
        limits: &'a Limits,
        key: &'a str,
        cost: u64,
    ) -> impl Future<Output = Result<Decision, StoreError>> + Send + 'a {
        self.checking("", limits, key, cost, Mode::Peek)
    }

    /// The future of a check or a peek: the in-memory store answers in its first poll,
    /// without the state machine a store that waits needs.
    fn checking<'a>(
        &'a self,
        scope: &'a str,
        limits: &'a Limits,
        key: &'a str,
        cost: u64,
        mode: Mode,
    ) -> Checking<'a, impl Future<Output = Result<Decision, StoreError>> + Send + 'a> {
        let args = CheckArgs {
            limiter: self,
            scope,
            limits,
            key,
            cost,
            mode,
        };
        match &self.inner.backend {
            Backend::Memory(store) => Checking::Memory {
                store,
                args: Some(args),
            },
            Backend::Other(_) => Checking::Waiting {
                future: args.waiting(),
            },
        }
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
        let request = self.request(key.as_bytes(), std::slice::from_ref(&charge), Mode::Charge);
        let decision = match &self.inner.backend {
            Backend::Memory(store) => store.check_named(&request, self.inner.named),
            Backend::Other(store) => store.answer_now(&request)?.ok()?,
        };
        if self.is_observed() {
            self.observe_decision("", key.as_bytes(), limits, &decision);
        }
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
            scale: self.scale(),
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
            Backend::Memory(store) => Pending::Memory(store, request, self.inner.named),
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
            Backend::Memory(store) => Some(Ok(store.check_named(&request, self.inner.named))),
            Backend::Other(store) => store.answer_now(&request),
        }
    }

    /// Whether the store answers without waiting (the default in-memory store): then
    /// [`check_charges_now`](Limiter::check_charges_now) always answers.
    pub fn answers_now(&self) -> bool {
        matches!(self.inner.backend, Backend::Memory(_))
    }

    /// Shows what became of a request to the observer, if any.
    #[inline]
    pub fn observe(&self, seen: &Observation<'_>) {
        if let Some(observer) = &self.inner.observer {
            observer.observe(seen);
        }
    }

    /// Whether an observer is set (then the enforcement site times each check for it).
    #[inline]
    pub fn is_observed(&self) -> bool {
        self.inner.observer.is_some()
    }

    /// Shows a settled reservation to the observer, if any.
    pub(crate) fn observe_settlement(&self, seen: &crate::observe::Settlement<'_>) {
        if let Some(observer) = &self.inner.observer {
            observer.settled(seen);
        }
    }

    /// Shows a decision on `limits` to the observer, if any.
    #[cold]
    #[inline(never)]
    fn observe_decision(&self, route: &str, key: &[u8], limits: &Limits, decision: &Decision) {
        if self.is_observed() {
            let outcome = if decision.is_allowed() {
                Outcome::Allowed
            } else {
                Outcome::Limited
            };
            self.observe(
                &Observation::new(route, key, outcome)
                    .with_decision(decision)
                    .with_label(limits.label()),
            );
        }
    }

    /// The factor on every limit's amount right now: [`Scale::FULL`] unless
    /// [`set_scale`](Limiter::set_scale) changed it. With a store shared by several
    /// instances (Redis), the scale the instances share, as this one last read it (at most
    /// about a second old).
    #[inline]
    pub fn scale(&self) -> Scale {
        if let Backend::Other(store) = &self.inner.backend {
            if let Some(shared) = store.shared_scale(&self.inner.prefix) {
                return shared;
            }
        }
        let bits = self.inner.scale.load(Ordering::Relaxed);
        if bits == FULL_BITS {
            return Scale::FULL;
        }
        // Scaled: the clock is read only then, to see whether the scale has run out.
        if scale_clock() >= self.inner.scale_until.load(Ordering::Relaxed) {
            return Scale::FULL;
        }
        Scale::from_bits(bits)
    }

    /// Scales every limit checked through this limiter from now on, such as to 1/5 while a
    /// model warms up, and back with [`Scale::FULL`]: no restart, no count lost (state is
    /// named without the amounts, and every algorithm keeps its counts: see [`Scale`]).
    /// Requests already admitted stay admitted; a client past the scaled amount is refused
    /// until its use falls below it.
    ///
    /// With a store shared by several instances (Redis) the scale is written to the store,
    /// and every instance on the same key prefix follows it within about a second; the
    /// error says the store could not be reached (this instance uses the new scale
    /// anyway). The scale never touches a [`Limits`]: configuration is not mutated, and
    /// nothing a request does changes it.
    ///
    /// ```
    /// use ratelimit_core::{Limiter, Limits, Scale};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new();
    /// let limits = Limits::parse("10/minute").unwrap();
    /// limiter.set_scale(Scale::new(1, 5).unwrap()).await.unwrap(); // warming up
    /// assert!(limiter.check(&limits, "k", 1).await.unwrap().is_allowed());
    /// assert!(limiter.check(&limits, "k", 1).await.unwrap().is_allowed());
    /// assert!(!limiter.check(&limits, "k", 1).await.unwrap().is_allowed()); // 2 per minute
    /// limiter.set_scale(Scale::FULL).await.unwrap(); // ready
    /// let decision = limiter.check(&limits, "k", 1).await.unwrap();
    /// assert_eq!(decision.remaining(), 7); // the two counted requests still count
    /// # }
    /// ```
    pub async fn set_scale(&self, scale: Scale) -> Result<(), StoreError> {
        self.set_scale_until(scale, None).await
    }

    /// [`set_scale`](Limiter::set_scale) for at most `ttl`, after which limits are whole
    /// again unless the scale was set since: for a scale that must not outlive whoever set it.
    /// With Redis, an instance that starts warming up, scales the fleet down and then dies
    /// before it is ready would otherwise leave every instance scaled down; with a `ttl`, the
    /// scale expires in Redis too.
    ///
    /// ```
    /// use std::time::Duration;
    /// use ratelimit_core::{Limiter, Scale};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new();
    /// let warming = Scale::new(1, 5).unwrap();
    /// limiter.set_scale_for(warming, Duration::from_millis(50)).await.unwrap();
    /// assert_eq!(limiter.scale(), warming);
    /// std::thread::sleep(Duration::from_millis(60));
    /// assert_eq!(limiter.scale(), Scale::FULL);
    /// # }
    /// ```
    pub async fn set_scale_for(&self, scale: Scale, ttl: Duration) -> Result<(), StoreError> {
        self.set_scale_until(scale, Some(ttl)).await
    }

    async fn set_scale_until(&self, scale: Scale, ttl: Option<Duration>) -> Result<(), StoreError> {
        let until = ttl.map_or(u64::MAX, |ttl| {
            scale_clock().saturating_add(u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX))
        });
        self.inner.scale_until.store(until, Ordering::Relaxed);
        self.inner.scale.store(scale.to_bits(), Ordering::Relaxed);
        match &self.inner.backend {
            Backend::Memory(_) => Ok(()),
            Backend::Other(store) => store.publish_scale(&self.inner.prefix, scale, ttl).await,
        }
    }

    /// Takes one of `limit` concurrency slots of `key` under `scope` (an inference slot): a
    /// [`SlotLease`] that gives the slot back when dropped, or `None` when `limit` requests
    /// of the key already hold one. What `concurrency = N` on the attribute calls.
    ///
    /// ```
    /// use ratelimit_core::Limiter;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new();
    /// let first = limiter.acquire_slot("/heavy", "k", 1).await.unwrap();
    /// assert!(first.is_some());
    /// assert!(limiter.acquire_slot("/heavy", "k", 1).await.unwrap().is_none());
    /// drop(first); // the request ended, or its client went away
    /// assert!(limiter.acquire_slot("/heavy", "k", 1).await.unwrap().is_some());
    /// # }
    /// ```
    pub async fn acquire_slot(
        &self,
        scope: &str,
        key: impl AsRef<[u8]>,
        limit: u32,
    ) -> Result<Option<SlotLease>, StoreError> {
        let key = key.as_ref();
        let request = SlotRequest {
            prefix: &self.inner.prefix,
            scope,
            key,
            limit,
        };
        let lease = match &self.inner.backend {
            Backend::Memory(store) => store.acquire_slot(request).await,
            Backend::Other(store) => store.acquire_slot(request).await,
        }?;
        Ok(lease.map(|lease| SlotLease {
            limiter: self.clone(),
            scope: scope.into(),
            key: key.into(),
            limit,
            lease,
        }))
    }

    /// [`check_charges`](Limiter::check_charges) in [`Mode::Charge`] with one of `limit`
    /// concurrency slots of the same key under `scope`, as one store call (one round trip
    /// with Redis): [`SlotCheck::NoSlot`] when `limit` requests of the key hold one (nothing
    /// charged), [`SlotCheck::Refused`] when the rates refuse (no slot taken), otherwise
    /// [`SlotCheck::Admitted`] with the [`SlotLease`]. What `concurrency = N` beside the
    /// key's own rates calls.
    ///
    /// ```
    /// use ratelimit_core::store::SlotCheck;
    /// use ratelimit_core::{Limiter, Limits};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = Limiter::new();
    /// let limits = Limits::parse("10/minute").unwrap();
    /// let charges = [limiter.charge("/heavy", &limits, 1)];
    /// let first = limiter.check_with_slot(b"k", &charges, "/heavy", 1).await.unwrap();
    /// assert!(matches!(first, SlotCheck::Admitted(..)));
    /// let second = limiter.check_with_slot(b"k", &charges, "/heavy", 1).await.unwrap();
    /// assert!(matches!(second, SlotCheck::NoSlot)); // and not charged
    /// drop(first);
    /// let third = limiter.check_with_slot(b"k", &charges, "/heavy", 1).await.unwrap();
    /// let SlotCheck::Admitted(decision, _lease) = third else { panic!() };
    /// assert_eq!(decision.remaining(), 8);
    /// # }
    /// ```
    pub async fn check_with_slot(
        &self,
        key: &[u8],
        charges: &[Charge<'_>],
        scope: &str,
        limit: u32,
    ) -> Result<SlotCheck<SlotLease>, StoreError> {
        let request = self.request(key, charges, Mode::Charge);
        let slot = SlotRequest {
            prefix: &self.inner.prefix,
            scope,
            key,
            limit,
        };
        let checked = match &self.inner.backend {
            Backend::Memory(store) => store.check_with_slot_now(&request, self.inner.named, &slot),
            Backend::Other(store) => store.check_with_slot(request, slot).await?,
        };
        Ok(match checked {
            SlotCheck::NoSlot => SlotCheck::NoSlot,
            SlotCheck::Refused(decision) => SlotCheck::Refused(decision),
            SlotCheck::Admitted(decision, lease) => SlotCheck::Admitted(
                decision,
                SlotLease {
                    limiter: self.clone(),
                    scope: scope.into(),
                    key: key.into(),
                    limit,
                    lease,
                },
            ),
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

/// The capacities of a limiter's routes (`capacity =`), as its observer reads them
/// ([`Observer::attached`]): held weakly, so an observer does not keep its limiter alive.
#[cfg(feature = "axum")]
#[derive(Clone)]
pub struct Capacities(std::sync::Weak<Inner>);

#[cfg(feature = "axum")]
impl Capacities {
    /// Every capacity made so far, by scope; nothing once the limiter is gone.
    pub fn read(&self) -> Vec<(String, CapacityStats)> {
        self.0
            .upgrade()
            .map(|inner| Limiter { inner }.capacities())
            .unwrap_or_default()
    }

    /// Whether the limiter is gone.
    pub fn is_gone(&self) -> bool {
        self.0.strong_count() == 0
    }
}

#[cfg(feature = "axum")]
impl fmt::Debug for Capacities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.read()).finish()
    }
}

#[cfg(feature = "axum")]
impl Limiter {
    /// What the capacity of the route (or `scope`) named `scope` holds now: its limit,
    /// requests in flight and waiting, latency. `None` before its first request, or when its
    /// attribute has no `capacity`.
    pub fn capacity(&self, scope: &str) -> Option<CapacityStats> {
        self.inner.capacities.get(scope).map(|c| c.stats())
    }

    /// Every capacity made so far, by scope.
    pub fn capacities(&self) -> Vec<(String, CapacityStats)> {
        let mut all: Vec<(String, CapacityStats)> = self
            .inner
            .capacities
            .iter()
            .map(|entry| (entry.key().to_string(), entry.value().stats()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The capacity of `scope`, made under `spec` (or the builder's override) on first use.
    pub(crate) fn capacity_of(&self, scope: &str, spec: CapacityLimit) -> Arc<Capacity> {
        if let Some(capacity) = self.inner.capacities.get(scope) {
            return Arc::clone(&capacity);
        }
        let spec = self
            .inner
            .capacity_overrides
            .iter()
            .find(|(s, _)| &**s == scope)
            .map_or(spec, |(_, limit)| *limit);
        Arc::clone(
            &self
                .inner
                .capacities
                .entry(scope.into())
                .or_insert_with(|| Arc::new(Capacity::new(spec))),
        )
    }
}

/// What [`Limiter::check_scoped`] or [`Limiter::peek`] was asked.
#[derive(Clone, Copy)]
struct CheckArgs<'a> {
    limiter: &'a Limiter,
    scope: &'a str,
    limits: &'a Limits,
    key: &'a str,
    cost: u64,
    mode: Mode,
}

impl<'a> CheckArgs<'a> {
    #[inline]
    fn charge(&self) -> Charge<'a> {
        self.limiter.charge(self.scope, self.limits, self.cost)
    }

    /// `decision`, shown to the observer if it is a check's.
    #[inline]
    fn observed(&self, decision: Decision) -> Decision {
        if self.mode == Mode::Charge && self.limiter.is_observed() {
            let key = self.key.as_bytes();
            self.limiter
                .observe_decision(self.scope, key, self.limits, &decision);
        }
        decision
    }

    #[inline]
    fn in_memory(self, store: &MemoryStore) -> Decision {
        let charge = self.charge();
        let charges = std::slice::from_ref(&charge);
        let request = self
            .limiter
            .request(self.key.as_bytes(), charges, self.mode);
        self.observed(store.check_named(&request, self.limiter.inner.named))
    }

    async fn waiting(self) -> Result<Decision, StoreError> {
        let charge = self.charge();
        let charges = std::slice::from_ref(&charge);
        let key = self.key.as_bytes();
        let decision = self.limiter.check_charges(key, charges, self.mode).await?;
        Ok(self.observed(decision))
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Limiter::check_scoped`] and [`Limiter::peek`].
    #[project = CheckingProjection]
    enum Checking<'a, F> {
        Memory { store: &'a MemoryStore, args: Option<CheckArgs<'a>> },
        Waiting { #[pin] future: F },
    }
}

impl<F> Future for Checking<'_, F>
where
    F: Future<Output = Result<Decision, StoreError>>,
{
    type Output = Result<Decision, StoreError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            CheckingProjection::Memory { store, args } => {
                let args = args.take().expect("a check polled after it completed");
                Poll::Ready(Ok(args.in_memory(store)))
            }
            CheckingProjection::Waiting { future } => future.poll(cx),
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
    Memory(&'a MemoryStore, CheckRequest<'a>, Prefix),
    Store(StoreFuture<'a>),
}

impl Future for Check<'_> {
    type Output = Result<Decision, StoreError>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            Pending::Memory(store, request, prefix) => {
                Poll::Ready(Ok(store.check_named(request, *prefix)))
            }
            Pending::Store(future) => Pin::new(future).poll(cx),
        }
    }
}

impl fmt::Debug for Check<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Check").finish_non_exhaustive()
    }
}

/// A concurrency slot held ([`Limiter::acquire_slot`]): given back when dropped, however
/// the request ends.
#[must_use = "the slot is given back as soon as the lease is dropped"]
pub struct SlotLease {
    limiter: Limiter,
    scope: Box<str>,
    key: Box<[u8]>,
    limit: u32,
    lease: u64,
}

impl Drop for SlotLease {
    fn drop(&mut self) {
        let request = SlotRequest {
            prefix: &self.limiter.inner.prefix,
            scope: &self.scope,
            key: &self.key,
            limit: self.limit,
        };
        match &self.limiter.inner.backend {
            Backend::Memory(store) => store.release_slot(request, self.lease),
            Backend::Other(store) => store.release_slot(request, self.lease),
        }
    }
}

impl fmt::Debug for SlotLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlotLease")
            .field("scope", &self.scope)
            .field("key", &String::from_utf8_lossy(&self.key))
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

const FULL_BITS: u64 = Scale::FULL.to_bits();

/// Nanoseconds on a process-wide monotonic clock, for the expiry of a scale.
fn scale_clock() -> u64 {
    static EPOCH: std::sync::LazyLock<std::time::Instant> =
        std::sync::LazyLock::new(std::time::Instant::now);
    u64::try_from(EPOCH.elapsed().as_nanos()).unwrap_or(u64::MAX)
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
    #[cfg(feature = "axum")]
    capacities: Vec<(Box<str>, CapacityLimit)>,
}

impl Default for LimiterBuilder {
    fn default() -> LimiterBuilder {
        LimiterBuilder {
            store: None,
            algorithm: Algorithm::Gcra,
            prefix: "ratelimit".to_owned(),
            observer: None,
            #[cfg(feature = "axum")]
            capacities: Vec::new(),
        }
    }
}

impl LimiterBuilder {
    /// The capacity of the route (or `scope`) named `scope`, instead of what its attribute's
    /// `capacity =` says: how a deployment sizes a model's capacity from its configuration.
    /// Applies only to routes whose attribute has a `capacity`.
    ///
    /// ```
    /// use ratelimit_core::{CapacityLimit, Limiter};
    ///
    /// let limiter = Limiter::builder()
    ///     .capacity("/models/heavy", CapacityLimit::fixed(8))
    ///     .build();
    /// assert_eq!(limiter.capacity("/models/heavy"), None); // made on its first request
    /// ```
    #[cfg(feature = "axum")]
    pub fn capacity(mut self, scope: &str, limit: CapacityLimit) -> LimiterBuilder {
        self.capacities.retain(|(s, _)| &**s != scope);
        self.capacities.push((scope.into(), limit));
        self
    }

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
        let limiter = Limiter {
            inner: Arc::new(Inner {
                backend: self
                    .store
                    .unwrap_or_else(|| Backend::Memory(MemoryStore::new())),
                scale: AtomicU64::new(Scale::FULL.to_bits()),
                scale_until: AtomicU64::new(u64::MAX),
                algorithm: self.algorithm,
                named: Prefix::of(&self.prefix),
                prefix: self.prefix,
                observer: self.observer,
                #[cfg(feature = "axum")]
                capacities: Default::default(),
                #[cfg(feature = "axum")]
                capacity_overrides: self.capacities,
            }),
        };
        #[cfg(feature = "axum")]
        if let Some(observer) = &limiter.inner.observer {
            observer.attached(Capacities(Arc::downgrade(&limiter.inner)));
        }
        limiter
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
