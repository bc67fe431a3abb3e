//! The in-memory store: sharded maps from key to state, bounded in size.

use std::hash::{BuildHasher, Hash, Hasher};
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

/// The default cap on tracked keys: under 100 MB for IPv4 clients.
pub const DEFAULT_CAPACITY: usize = 1_000_000;

type Hasher64 = foldhash::fast::RandomState;

/// The default store: state in process memory, shared by every clone of the limiter.
///
/// - A check of a key it already tracks allocates nothing and takes no lock but the read
///   lock of the key's shard; a single GCRA rate is one atomic compare-and-swap on a 32-byte
///   table entry.
/// - Every key takes 24 bytes inside the table, whatever its length: keys of up to 15 bytes
///   (every IPv4 client) as they are, longer ones by a 128-bit hash keyed at random per store,
///   so a client cannot make the store keep large keys, nor aim for collisions.
/// - Memory is bounded: it tracks at most [`capacity`](MemoryStore::with_capacity) keys
///   (default [`DEFAULT_CAPACITY`]). When it is full, a new key first makes it reclaim
///   expired state (state that is as good as new, so dropping it changes no decision), one
///   shard at a time, at most once per pause proportional to the sweep's own cost.
/// - It never drops live state to make room: that would hand a limited client a fresh
///   budget. While every tracked key is live, new keys are refused (with a retry-after of
///   when room is due) and a warning is logged; known keys are served as usual. So a flood
///   of distinct keys can neither grow memory past the cap nor reset anyone's limit.
///
/// ```
/// use std::time::Duration;
/// use ratelimit_core::{FakeClock, Limiter, Limits, MemoryStore};
///
/// let clock = FakeClock::new();
/// let store = MemoryStore::with_clock(clock.clone()).with_capacity(10_000);
/// let limiter = Limiter::builder().store(store).build();
/// let limits = Limits::parse("2/second").unwrap();
/// let mut check = || limiter.check_now(&limits, "alice", 1).unwrap().is_allowed();
/// assert!(check() && check() && !check());
/// clock.advance(Duration::from_millis(500));
/// assert!(check());
/// ```
pub struct MemoryStore<C: Clock = MonotonicClock> {
    /// Keys limited by a single GCRA rate: one theoretical arrival time each, lock-free.
    gcra: DashMap<StoredKey, AtomicU64, Hasher64>,
    /// Keys limited by several rates, or by a window algorithm: their states behind a
    /// per-key mutex, which makes several rates pass or fail together.
    locked: DashMap<StoredKey, Box<Mutex<Locked>>, Hasher64>,
    clock: C,
    capacity: usize,
    len: AtomicUsize,
    /// No sweep before this instant (store clock): the last sweep found nothing to free and
    /// nothing expires sooner, or it was recent for its cost.
    next_sweep: AtomicU64,
    sweeping: AtomicBool,
    refused: AtomicU64,
    long_keys: (
        foldhash::quality::RandomState,
        foldhash::quality::RandomState,
    ),
}

struct Locked {
    states: Vec<State>,
    expires_at: u64,
}

/// What the two tables keep per key.
trait Slot: Send + Sync + Sized + 'static {
    fn new(algorithm: Algorithm, rates: usize) -> Self;
    fn check(&self, request: &CheckRequest<'_>, now: u64) -> (usize, Verdict);
    /// From when on dropping this slot changes no decision.
    fn expires_at(&mut self) -> u64;
}

impl Slot for AtomicU64 {
    fn new(_: Algorithm, _: usize) -> AtomicU64 {
        AtomicU64::new(0)
    }

    #[inline]
    fn check(&self, request: &CheckRequest<'_>, now: u64) -> (usize, Verdict) {
        let rate = &request.limits.params()[0];
        let mut tat = self.load(Ordering::Acquire);
        loop {
            let (verdict, next) = gcra::check(tat, rate, now, request.cost);
            if request.peek || !verdict.allowed || next == tat {
                return (0, verdict);
            }
            match self.compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return (0, verdict),
                Err(actual) => tat = actual,
            }
        }
    }

    fn expires_at(&mut self) -> u64 {
        *self.get_mut()
    }
}

impl Slot for Box<Mutex<Locked>> {
    fn new(algorithm: Algorithm, rates: usize) -> Box<Mutex<Locked>> {
        Box::new(Mutex::new(Locked {
            states: (0..rates).map(|_| State::new(algorithm)).collect(),
            expires_at: 0,
        }))
    }

    fn check(&self, request: &CheckRequest<'_>, now: u64) -> (usize, Verdict) {
        let params = request.limits.params();
        let mut locked = self.lock().unwrap_or_else(PoisonError::into_inner);
        let fresh = State::new(request.algorithm);
        if locked.states.len() != params.len() || !locked.states.iter().all(|s| s.same_kind(&fresh))
        {
            // Namespaces make this a 64-bit hash collision; start over rather than misread.
            *locked = Locked {
                states: vec![fresh; params.len()],
                expires_at: 0,
            };
        }
        let outcome = check_all(&mut locked.states, params, now, request.cost, !request.peek);
        if !request.peek && outcome.1.allowed {
            locked.expires_at = expiry(&locked.states, params);
        }
        outcome
    }

    fn expires_at(&mut self) -> u64 {
        self.get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .expires_at
    }
}

fn expiry(states: &[State], params: &[RateParams]) -> u64 {
    states
        .iter()
        .zip(params)
        .map(|(state, rate)| state.expires_at(rate))
        .max()
        .unwrap_or(0)
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
            gcra: DashMap::with_hasher(Hasher64::default()),
            locked: DashMap::with_hasher(Hasher64::default()),
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
    // Inlined whole into the caller, so the decision is built where it is used rather than
    // copied out through several frames (which measurably dominated a check).
    #[inline(always)]
    pub fn check_now(&self, request: &CheckRequest<'_>) -> Decision {
        let key = StoredKey::new(request.namespace, request.key.as_bytes(), &self.long_keys);
        let params = request.limits.params();
        let now = self.clock.now();
        let outcome = if request.algorithm == Algorithm::Gcra && params.len() == 1 {
            self.check_in(&self.gcra, key, request, now)
        } else {
            self.check_in(&self.locked, key, request, now)
        };
        match outcome {
            Ok((index, verdict)) => Decision::from_verdict(&params[index], index, verdict),
            Err(retry) => self.refusal(request, retry),
        }
    }

    #[inline(always)]
    fn check_in<V: Slot>(
        &self,
        map: &DashMap<StoredKey, V, Hasher64>,
        key: StoredKey,
        request: &CheckRequest<'_>,
        now: u64,
    ) -> Result<(usize, Verdict), u64> {
        match map.get(&key) {
            Some(slot) => Ok(slot.check(request, now)),
            None => self.check_new(map, key, request, now),
        }
    }

    /// Checks a key the store does not track. Only a request that passes and charges needs
    /// a slot; `Err(retry)` when there is no room for one.
    #[cold]
    #[inline(never)]
    fn check_new<V: Slot>(
        &self,
        map: &DashMap<StoredKey, V, Hasher64>,
        key: StoredKey,
        request: &CheckRequest<'_>,
        now: u64,
    ) -> Result<(usize, Verdict), u64> {
        let slot = V::new(request.algorithm, request.limits.params().len());
        let outcome = slot.check(request, now);
        if request.peek || !outcome.1.allowed {
            return Ok(outcome);
        }
        if !self.reserve(now) {
            return Err(self.next_sweep.load(Ordering::Relaxed).saturating_sub(now));
        }
        match map.entry(key) {
            Entry::Occupied(existing) => {
                // Another thread inserted the key since we looked: charge its slot instead.
                self.len.fetch_sub(1, Ordering::Relaxed);
                Ok(existing.get().check(request, now))
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
        let mut keep = |expires_at: u64| {
            if expires_at <= now {
                removed += 1;
                false
            } else {
                earliest = earliest.min(expires_at);
                true
            }
        };
        self.gcra.retain(|_, slot| keep(slot.expires_at()));
        self.locked.retain(|_, slot| keep(slot.expires_at()));
        self.len.fetch_sub(removed, Ordering::Relaxed);
        // Sweep at most about an eighth of the time, whatever the flood.
        let cost = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let pause = now.saturating_add(cost.saturating_mul(8).max(1_000_000));
        let next = if removed == 0 {
            // Full of live state, and nothing new gets in: nothing frees up before `earliest`.
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
        Decision::refused(rate, retry.clamp(1_000_000, rate.period))
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

/// A stored key: the namespace, then the client key in 16 bytes, as it is when it has at
/// most 15 bytes (its length in the last byte), or else as a keyed 128-bit hash with the top
/// bit of the last byte set. Fixed-size, so a GCRA entry is 32 bytes, a lookup allocates
/// nothing, and hashing and comparing it are a few word operations.
#[derive(Clone, Copy, PartialEq, Eq)]
struct StoredKey([u64; 3]);

const INLINE_KEY_LEN: usize = 15;
const HASHED: u64 = 1 << 63;

impl StoredKey {
    #[inline]
    fn new(namespace: u64, key: &[u8], seeds: &(LongKeySeed, LongKeySeed)) -> StoredKey {
        if key.len() <= INLINE_KEY_LEN {
            let (lo, hi) = key.split_at(key.len().min(8));
            let len = (key.len() as u64) << 56;
            StoredKey([namespace, load_le(lo), load_le(hi) | len])
        } else {
            StoredKey::hashed(namespace, key, seeds)
        }
    }

    #[cold]
    fn hashed(namespace: u64, key: &[u8], (a, b): &(LongKeySeed, LongKeySeed)) -> StoredKey {
        StoredKey([namespace, a.hash_one(key), b.hash_one(key) | HASHED])
    }
}

type LongKeySeed = foldhash::quality::RandomState;

/// Up to 8 bytes as a little-endian integer, read with whole-word loads: filling a buffer
/// byte by byte and reading it back as a word stalls the CPU's store forwarding, which cost
/// more than the rest of a check.
#[inline]
fn load_le(bytes: &[u8]) -> u64 {
    let n = bytes.len();
    let word = |at: usize| {
        u64::from(u32::from_le_bytes([
            bytes[at],
            bytes[at + 1],
            bytes[at + 2],
            bytes[at + 3],
        ]))
    };
    match n {
        8 => u64::from_le_bytes([
            bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
        ]),
        // Two overlapping 4-byte reads; the overlap holds the same bytes in both.
        4..=7 => word(0) | (word(n - 4) << (8 * (n - 4))),
        1..=3 => {
            u64::from(bytes[0])
                | (u64::from(bytes[n / 2]) << (8 * (n / 2)))
                | (u64::from(bytes[n - 1]) << (8 * (n - 1)))
        }
        _ => 0,
    }
}

impl Hash for StoredKey {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        // One 128-bit write (one folded multiply in foldhash). Folding the namespace in by
        // xor keeps the map from key to hash input one-to-one for each namespace.
        let [namespace, lo, hi] = self.0;
        state.write_u128(u128::from(lo ^ namespace) | (u128::from(hi) << 64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gcra_entry_is_32_bytes() {
        assert_eq!(size_of::<StoredKey>(), 24);
        assert_eq!(size_of::<(StoredKey, AtomicU64)>(), 32);
        assert_eq!(size_of::<(StoredKey, Box<Mutex<Locked>>)>(), 32);
    }

    #[test]
    fn load_le_reads_every_length() {
        let bytes: Vec<u8> = (1..=8).collect();
        for n in 0..=8 {
            let mut expected = [0u8; 8];
            expected[..n].copy_from_slice(&bytes[..n]);
            assert_eq!(
                load_le(&bytes[..n]),
                u64::from_le_bytes(expected),
                "{n} bytes"
            );
        }
    }

    #[test]
    fn stored_keys_are_distinct_and_never_confuse_inline_with_hashed() {
        let seeds = Default::default();
        let keys: Vec<Vec<u8>> = [0usize, 1, 2, 14, 15, 16, 17, 300]
            .iter()
            .flat_map(|&len| {
                [
                    vec![b'a'; len],
                    vec![0; len],
                    (0..len).map(|i| i as u8).collect(),
                ]
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        for key in &keys {
            let stored = StoredKey::new(7, key, &seeds);
            assert_eq!(stored.0[2] & HASHED != 0, key.len() > INLINE_KEY_LEN);
            assert!(stored == StoredKey::new(7, key, &seeds), "deterministic");
            assert!(stored != StoredKey::new(8, key, &seeds), "namespaced");
            seen.insert(stored.0);
        }
        let distinct: std::collections::HashSet<&Vec<u8>> = keys.iter().collect();
        assert_eq!(seen.len(), distinct.len());
    }
}
