//! The in-memory store: a sharded map from key to state, bounded in size.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use super::{CheckRequest, Store, StoreFuture};
use crate::algorithm::{Algorithm, State, Verdict, check_all, gcra};
use crate::clock::{Clock, MonotonicClock};
use crate::decision::Decision;
use crate::limits::RateParams;

/// Keys up to this many bytes are stored as they are; longer ones by a 128-bit hash, so one
/// client cannot make the store keep arbitrarily large keys.
pub const MAX_KEY_LEN: usize = 256;

/// The default cap on tracked keys: about 100 MB at most for short keys.
pub const DEFAULT_CAPACITY: usize = 1_000_000;

const NAMESPACE_LEN: usize = 8;
const HASHED_KEY_LEN: usize = 16;
const SHORT_KEY_LEN: usize = 56;

/// The default store: state in process memory, shared by every clone of the limiter.
///
/// - A check of a key it already tracks allocates nothing and takes no lock but the
///   read lock of the key's shard; a single GCRA rate is one atomic compare-and-swap.
/// - Memory is bounded: it tracks at most [`capacity`](MemoryStore::with_capacity) keys
///   (default [`DEFAULT_CAPACITY`]). When it is full, a new key first makes it reclaim
///   expired state (state that is as good as new, so dropping it changes no decision),
///   one shard at a time, at most once per pause proportional to the sweep's own cost.
/// - It never drops live state to make room: that would hand a limited client a fresh
///   budget. While every tracked key is live, new keys are refused (with a `Retry-After` of
///   when room is due) and a warning is logged; known keys are served as usual. So a flood
///   of distinct keys can neither grow memory past the cap nor reset anyone's limit.
///
/// ```
/// use std::time::Duration;
/// use ratelimit_core::{FakeClock, Limiter, Limits, MemoryStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let clock = FakeClock::new();
/// let store = MemoryStore::with_clock(clock.clone()).with_capacity(10_000);
/// let limiter = Limiter::builder().store(store).build();
/// let limits = Limits::parse("2/second").unwrap();
/// assert!(limiter.check(&limits, "alice", 1).await.unwrap().is_allowed());
/// assert!(limiter.check(&limits, "alice", 1).await.unwrap().is_allowed());
/// assert!(!limiter.check(&limits, "alice", 1).await.unwrap().is_allowed());
/// clock.advance(Duration::from_millis(500));
/// assert!(limiter.check(&limits, "alice", 1).await.unwrap().is_allowed());
/// # }
/// ```
pub struct MemoryStore<C: Clock = MonotonicClock> {
    map: DashMap<Box<[u8]>, Slot, foldhash::fast::RandomState>,
    clock: C,
    capacity: usize,
    len: AtomicUsize,
    /// No sweep before this instant (store clock): the sweep found nothing to free and
    /// nothing expires sooner, or the last sweep was recent for its cost.
    next_sweep: AtomicU64,
    sweeping: AtomicBool,
    refused: AtomicU64,
    long_keys: (
        foldhash::quality::RandomState,
        foldhash::quality::RandomState,
    ),
}

/// One key's state.
enum Slot {
    /// A single GCRA rate: the theoretical arrival time, updated lock-free.
    Gcra(AtomicU64),
    /// Several rates, or a window algorithm: the states behind a per-key mutex, which makes
    /// several rates pass or fail together.
    Locked(Box<Mutex<Locked>>),
}

struct Locked {
    states: Vec<State>,
    expires_at: u64,
}

impl Slot {
    fn new(algorithm: Algorithm, rates: usize) -> Slot {
        if algorithm == Algorithm::Gcra && rates == 1 {
            Slot::Gcra(AtomicU64::new(0))
        } else {
            Slot::Locked(Box::new(Mutex::new(Locked {
                states: (0..rates).map(|_| State::new(algorithm)).collect(),
                expires_at: 0,
            })))
        }
    }

    /// Whether this slot holds state of the shape `algorithm` and `rates` need. Namespaces
    /// make a mismatch all but impossible; this keeps a 64-bit collision harmless.
    fn fits(&self, algorithm: Algorithm, rates: usize) -> bool {
        match self {
            Slot::Gcra(_) => algorithm == Algorithm::Gcra && rates == 1,
            Slot::Locked(locked) => {
                let locked = locked.lock().unwrap_or_else(PoisonError::into_inner);
                locked.states.len() == rates
                    && !(algorithm == Algorithm::Gcra && rates == 1)
                    && State::new(algorithm).same_kind(&locked.states[0])
            }
        }
    }

    #[inline]
    fn check(&self, params: &[RateParams], now: u64, cost: u64, peek: bool) -> (usize, Verdict) {
        match self {
            Slot::Gcra(tat) => {
                let rate = &params[0];
                let mut current = tat.load(Ordering::Acquire);
                loop {
                    let (verdict, next) = gcra::check(current, rate, now, cost);
                    if peek || !verdict.allowed || next == current {
                        return (0, verdict);
                    }
                    match tat.compare_exchange_weak(
                        current,
                        next,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => return (0, verdict),
                        Err(actual) => current = actual,
                    }
                }
            }
            Slot::Locked(locked) => {
                let mut locked = locked.lock().unwrap_or_else(PoisonError::into_inner);
                let outcome = check_all(&mut locked.states, params, now, cost, !peek);
                if !peek && outcome.1.allowed {
                    locked.expires_at = locked
                        .states
                        .iter()
                        .zip(params)
                        .map(|(state, rate)| state.expires_at(rate))
                        .max()
                        .unwrap_or(0);
                }
                outcome
            }
        }
    }

    /// From when on dropping this slot changes no decision.
    fn expires_at(&mut self) -> u64 {
        match self {
            Slot::Gcra(tat) => *tat.get_mut(),
            Slot::Locked(locked) => {
                locked
                    .get_mut()
                    .unwrap_or_else(PoisonError::into_inner)
                    .expires_at
            }
        }
    }
}

impl MemoryStore<MonotonicClock> {
    /// An empty store on the monotonic clock, capped at [`DEFAULT_CAPACITY`] keys.
    pub fn new() -> MemoryStore<MonotonicClock> {
        MemoryStore::with_clock(MonotonicClock::new())
    }
}

impl Default for MemoryStore<MonotonicClock> {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl<C: Clock> MemoryStore<C> {
    /// An empty store that reads the time from `clock` (a [`FakeClock`](crate::FakeClock) in
    /// tests).
    pub fn with_clock(clock: C) -> MemoryStore<C> {
        MemoryStore {
            map: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            clock,
            capacity: DEFAULT_CAPACITY,
            len: AtomicUsize::new(0),
            next_sweep: AtomicU64::new(0),
            sweeping: AtomicBool::new(false),
            refused: AtomicU64::new(0),
            long_keys: Default::default(),
        }
    }

    /// Caps the number of tracked keys at `capacity` (at least 1).
    pub fn with_capacity(mut self, capacity: usize) -> MemoryStore<C> {
        self.capacity = capacity.max(1);
        self
    }

    /// The cap on tracked keys.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many keys the store tracks now, expired ones not yet reclaimed included.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether the store tracks no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many new keys were refused because the store was full of live state.
    pub fn refused_new_keys(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The store's clock.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// Judges a request at once; the [`Store`] implementation is this, made a future.
    #[inline]
    pub fn check_now(&self, request: &CheckRequest<'_>) -> Decision {
        // The stored key is `namespace ‖ key`, or `namespace ‖ hash(key)` for a key over
        // MAX_KEY_LEN bytes, built on the stack; short keys get a small buffer to fill.
        let namespace = request.namespace.to_le_bytes();
        let key = request.key.as_bytes();
        if key.len() <= SHORT_KEY_LEN {
            let mut buf = [0u8; NAMESPACE_LEN + SHORT_KEY_LEN];
            buf[..NAMESPACE_LEN].copy_from_slice(&namespace);
            buf[NAMESPACE_LEN..NAMESPACE_LEN + key.len()].copy_from_slice(key);
            self.check_stored(&buf[..NAMESPACE_LEN + key.len()], request)
        } else if key.len() <= MAX_KEY_LEN {
            let mut buf = [0u8; NAMESPACE_LEN + MAX_KEY_LEN];
            buf[..NAMESPACE_LEN].copy_from_slice(&namespace);
            buf[NAMESPACE_LEN..NAMESPACE_LEN + key.len()].copy_from_slice(key);
            self.check_stored(&buf[..NAMESPACE_LEN + key.len()], request)
        } else {
            let (a, b) = &self.long_keys;
            let mut buf = [0u8; NAMESPACE_LEN + HASHED_KEY_LEN];
            buf[..NAMESPACE_LEN].copy_from_slice(&namespace);
            buf[NAMESPACE_LEN..NAMESPACE_LEN + 8].copy_from_slice(&a.hash_one(key).to_le_bytes());
            buf[NAMESPACE_LEN + 8..].copy_from_slice(&b.hash_one(key).to_le_bytes());
            self.check_stored(&buf, request)
        }
    }

    // Inlined whole into the caller, so the decision is built where it is used rather than
    // copied out through three frames (which measurably dominated a check).
    #[inline(always)]
    fn check_stored(&self, key: &[u8], request: &CheckRequest<'_>) -> Decision {
        let params = request.limits.params();
        let now = self.clock.now();
        let known = self.map.get(key);
        let (index, verdict) = match known {
            Some(slot) if slot.fits(request.algorithm, params.len()) => {
                slot.check(params, now, request.cost, request.peek)
            }
            _ => {
                drop(known);
                match self.check_new(key, request, now) {
                    Ok(outcome) => outcome,
                    Err(retry) => return self.refusal(request, retry),
                }
            }
        };
        Decision::from_verdict(&params[index], index, verdict)
    }

    /// Checks a key the store does not track (or tracks in the wrong shape). Only a request
    /// that passes and charges needs a slot; `Err(retry)` when there is no room for one.
    #[cold]
    #[inline(never)]
    fn check_new(
        &self,
        key: &[u8],
        request: &CheckRequest<'_>,
        now: u64,
    ) -> Result<(usize, Verdict), u64> {
        let params = request.limits.params();
        let slot = Slot::new(request.algorithm, params.len());
        let outcome = slot.check(params, now, request.cost, request.peek);
        if request.peek || !outcome.1.allowed {
            return Ok(outcome);
        }
        if !self.reserve(now) {
            return Err(self.next_sweep.load(Ordering::Relaxed).saturating_sub(now));
        }
        match self.map.entry(Box::from(key)) {
            Entry::Occupied(mut existing) => {
                // Another thread inserted the key since we looked, or the slot had the wrong
                // shape: use or replace it, keeping the count as it was.
                self.len.fetch_sub(1, Ordering::Relaxed);
                if existing.get().fits(request.algorithm, params.len()) {
                    Ok(existing
                        .get()
                        .check(params, now, request.cost, request.peek))
                } else {
                    existing.insert(slot);
                    Ok(outcome)
                }
            }
            Entry::Vacant(vacant) => {
                vacant.insert(slot);
                Ok(outcome)
            }
        }
    }

    /// Takes a place for one more key, reclaiming expired state when the store is full.
    fn reserve(&self, now: u64) -> bool {
        let try_take = || {
            if self.len.fetch_add(1, Ordering::Relaxed) < self.capacity {
                true
            } else {
                self.len.fetch_sub(1, Ordering::Relaxed);
                false
            }
        };
        if try_take() {
            return true;
        }
        self.reclaim(now);
        try_take()
    }

    /// Drops every slot whose state has expired, one shard at a time.
    fn reclaim(&self, now: u64) {
        if now < self.next_sweep.load(Ordering::Relaxed)
            || self.sweeping.swap(true, Ordering::Acquire)
        {
            return;
        }
        let started = Instant::now();
        let mut removed = 0usize;
        let mut earliest = u64::MAX;
        self.map.retain(|_, slot| {
            let expires_at = slot.expires_at();
            if expires_at <= now {
                removed += 1;
                false
            } else {
                earliest = earliest.min(expires_at);
                true
            }
        });
        self.len.fetch_sub(removed, Ordering::Relaxed);
        // Sweep at most about an eighth of the time, whatever the flood.
        let cost = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let pause = now.saturating_add(cost.saturating_mul(8).max(1_000_000));
        let next = if removed == 0 {
            // Full of live state and nothing new gets in: nothing can free up before `earliest`.
            tracing::warn!(
                capacity = self.capacity,
                "rate limit store is full of live state; refusing new keys until some expires \
                 (raise MemoryStore::with_capacity if this is legitimate traffic)"
            );
            pause.max(earliest)
        } else {
            pause
        };
        self.next_sweep.store(next, Ordering::Relaxed);
        self.sweeping.store(false, Ordering::Release);
    }

    #[cold]
    fn refusal(&self, request: &CheckRequest<'_>, retry: u64) -> Decision {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let rate = &request.limits.params()[0];
        let retry = retry.clamp(1_000_000, rate.period);
        Decision::refused(rate, retry)
    }
}

impl<C: Clock> Store for MemoryStore<C> {
    fn check<'a>(&'a self, request: CheckRequest<'a>) -> StoreFuture<'a> {
        StoreFuture::ready(Ok(self.check_now(&request)))
    }
}

impl<C: Clock> std::fmt::Debug for MemoryStore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}
