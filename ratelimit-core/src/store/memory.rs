//! The in-memory store: sharded maps from key to state, bounded in size.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use super::slots::Slots;
use super::state::check_states;
use super::table::Table;
use super::{
    Charge, CheckRequest, LimitState, Mode, SlotCheck, SlotRequest, Store, StoreError, StoreFuture,
};
use crate::algorithm::{Algorithm, RateParams, State, gcra};
use crate::clock::{Clock, MonotonicClock};
use crate::decision::Decision;

/// The default cap on tracked keys: under 100 MB for IPv4 clients.
pub const DEFAULT_CAPACITY: usize = 1_000_000;

/// What a full [`MemoryStore`] does with a key it does not track yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum WhenFull {
    /// Reclaim expired state, then evict the least recently used state (the default, as
    /// nginx's `limit_req` zones do): a flood of distinct keys cannot lock new clients out.
    /// An evicted client starts over with a full budget, so under a flood the least recently
    /// seen clients are the ones that gain.
    #[default]
    EvictLeastRecentlyUsed,
    /// Reclaim expired state, and while every tracked key is live refuse new keys (with a
    /// retry-after of when room is due): no client ever regains budget early, and a flood of
    /// distinct keys locks new clients out until its state expires.
    RefuseNewKeys,
}

/// The default store: state in process memory, shared by every clone of the limiter.
///
/// - A check of a key it already tracks allocates nothing and takes no lock but the read
///   lock of the key's shard; a single GCRA rate is one atomic compare-and-swap on a 32-byte
///   table entry.
/// - Every key takes 16 bytes inside the table, whatever its length: a 128-bit hash of the
///   key and the name of its state, keyed at random per store, so a client cannot make the
///   store keep large keys, nor aim for collisions (two keys share state by chance with a
///   probability of about 2^-128).
/// - Memory is bounded: it tracks at most [`capacity`](MemoryStore::with_capacity) keys
///   (default [`DEFAULT_CAPACITY`]). When it is full, a new key first makes it reclaim
///   expired state (state that is as good as new, so dropping it changes no decision), and
///   then, by default, evict the least recently used eighth of its state
///   ([`WhenFull::EvictLeastRecentlyUsed`]); evictions are counted
///   ([`evictions`](MemoryStore::evictions)) and logged at most once a minute.
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
    /// Keys limited by a single GCRA rate: one theoretical arrival time each, updated by a
    /// compare-and-swap under the shard's read lock, in a table that keeps each key beside
    /// its state (one cache line read per check among a million keys).
    gcra: Table<GcraSlot>,
    /// Keys limited by several rates, or by a window algorithm: their states behind a
    /// per-key mutex, which makes several rates pass or fail together.
    locked: DashMap<StoredKey, Box<Mutex<Locked>>, Lane>,
    /// Keys limited by a single rate of a fixed or sliding window.
    windows: DashMap<StoredKey, WindowSlot, Lane>,
    clock: C,
    capacity: usize,
    when_full: WhenFull,
    len: AtomicUsize,
    /// No sweep before this instant (store clock), when refusing new keys: the last sweep
    /// found nothing to free and nothing expires sooner, or it was recent for its cost.
    next_sweep: AtomicU64,
    sweep: Mutex<Sweep>,
    refused: AtomicU64,
    evicted: AtomicU64,
    seeds: KeySeeds,
    slots: Slots,
}

#[derive(Default)]
struct Sweep {
    last_warning: Option<Instant>,
}

impl Sweep {
    /// Whether to log now: at most once a minute, however long the flood.
    fn may_warn(&mut self) -> bool {
        let due = self
            .last_warning
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(60));
        if due {
            self.last_warning = Some(Instant::now());
        }
        due
    }
}

/// A GCRA key: its theoretical arrival time, and in one more word when it was last checked
/// (the low 32 bits of its tick) and the spacing the TAT was written with (the high 32 bits:
/// the interval as an `f32`, 0 before the first write), so that a limit scaled since keeps
/// the number of requests outstanding ([`gcra::rescale`]). Two words: with the 16-byte key,
/// 32 bytes a key.
#[derive(Default)]
struct GcraSlot {
    tat: AtomicU64,
    meta: AtomicU64,
}

#[inline]
fn meta(interval_bits: u64, now: u64) -> u64 {
    (interval_bits << 32) | (tick(now) & u64::from(u32::MAX))
}

/// The full tick of a slot's 32-bit one, seen at `now`: ticks wrap every 52 days, and a slot
/// untouched for longer looks as recent as one touched a wrap ago (harmless for eviction:
/// expired state is reclaimed first).
#[inline]
fn full_tick(meta: u64, now: u64) -> u64 {
    let age = (tick(now) as u32).wrapping_sub(meta as u32);
    tick(now).saturating_sub(u64::from(age))
}

struct Locked {
    state: LimitState,
    expires_at: u64,
    touched: u64,
}

/// When a slot was last checked, in units of about a millisecond (2^20 ns): writing it only
/// when it changes keeps a hot key's cache line from bouncing on every refused check.
#[inline]
fn tick(now: u64) -> u64 {
    now >> 20
}

/// What the two tables keep per key.
trait Slot: Send + Sync + Sized + 'static {
    fn new(charge: &Charge<'_>, now: u64) -> Self;
    /// Judges a request with the slot to itself (its shard locked, or not yet in the table).
    fn check(&mut self, charge: &Charge<'_>, now: u64, mode: Mode) -> Decision;
    /// From when on dropping this slot changes no decision.
    fn expires_at(&mut self) -> u64;
    /// When the slot was last checked, as a tick (see [`tick`]).
    fn touched(&mut self, now: u64) -> u64;
}

/// A table of slots: the [`Table`] of single-rate GCRA keys, or a `DashMap`.
trait SlotMap<V> {
    /// `f` on the slot of `key`, after storing `slot` if there was none (`f` is told whether
    /// there was), the key's shard locked for writing.
    fn upsert<R>(&self, key: StoredKey, slot: V, f: impl FnOnce(&mut V, bool) -> R) -> R;
}

impl<V: Default> SlotMap<V> for Table<V> {
    fn upsert<R>(&self, key: StoredKey, slot: V, f: impl FnOnce(&mut V, bool) -> R) -> R {
        Table::upsert(self, key, slot, f)
    }
}

impl<V> SlotMap<V> for DashMap<StoredKey, V, Lane> {
    fn upsert<R>(&self, key: StoredKey, slot: V, f: impl FnOnce(&mut V, bool) -> R) -> R {
        match self.entry(key) {
            Entry::Occupied(mut existing) => f(existing.get_mut(), true),
            Entry::Vacant(vacant) => f(vacant.insert(slot).value_mut(), false),
        }
    }
}

impl Slot for GcraSlot {
    fn new(charge: &Charge<'_>, now: u64) -> GcraSlot {
        GcraSlot {
            tat: AtomicU64::new(0),
            meta: AtomicU64::new(meta(u64::from(charge.param(0).interval_bits), now)),
        }
    }

    fn check(&mut self, charge: &Charge<'_>, now: u64, mode: Mode) -> Decision {
        self.check_shared(charge, now, mode)
    }

    fn expires_at(&mut self) -> u64 {
        *self.tat.get_mut()
    }

    fn touched(&mut self, now: u64) -> u64 {
        full_tick(*self.meta.get_mut(), now)
    }
}

impl GcraSlot {
    /// Judges a request with the shard read-locked: other keys' checks, and this key's on
    /// other threads, go on meanwhile (one compare-and-swap decides between them).
    #[inline(always)]
    fn check_shared(&self, charge: &Charge<'_>, now: u64, mode: Mode) -> Decision {
        if charge.scale.is_full() {
            self.check_at(charge, &charge.limits.params()[0], now, mode)
        } else {
            self.check_scaled(charge, now, mode)
        }
    }

    /// A check under a scaled limit: its numbers made on the stack first.
    #[inline(never)]
    fn check_scaled(&self, charge: &Charge<'_>, now: u64, mode: Mode) -> Decision {
        self.check_at(charge, &charge.param(0), now, mode)
    }

    #[inline(always)]
    fn check_at(&self, charge: &Charge<'_>, rate: &RateParams, now: u64, mode: Mode) -> Decision {
        // The interval's bits: an `f32`, exact to 1 part in 16 million, which is all a
        // rescaling needs; never 0 for an interval of at least 1 ns.
        let spacing = u64::from(rate.interval_bits);
        let seen = self.meta.load(Ordering::Relaxed);
        if seen >> 32 != spacing {
            return self.check_rescaled(charge, rate, now, mode, seen);
        }
        // Touched now: written once per tick, so a hot key's line is not written on every
        // check.
        if seen != meta(spacing, now) {
            self.meta.store(meta(spacing, now), Ordering::Relaxed);
        }
        self.run(charge, rate, now, mode, None)
    }
    /// A check of a TAT written at another spacing: a limit scaled since (or a slot written
    /// before the spacing was kept). What the key owes is re-expressed at the new spacing.
    #[cold]
    #[inline(never)]
    fn check_rescaled(
        &self,
        charge: &Charge<'_>,
        rate: &RateParams,
        now: u64,
        mode: Mode,
        seen: u64,
    ) -> Decision {
        let written_at = match seen >> 32 {
            0 => None,
            bits => Some(f32::from_bits(bits as u32) as u64),
        };
        // Touched now, keeping the spacing the TAT was written with until it is written again.
        let fresh = meta(seen >> 32, now);
        if seen != fresh {
            let _ = self
                .meta
                .compare_exchange(seen, fresh, Ordering::Relaxed, Ordering::Relaxed);
        }
        self.run(charge, rate, now, mode, written_at.or(Some(rate.interval)))
    }

    /// Judges and, as `mode` says, writes the TAT; `written_at`: the spacing the stored TAT
    /// was written with, when it is not `rate`'s (then the TAT is rescaled, and the slot
    /// records `rate`'s spacing when it writes).
    #[inline(always)]
    fn run(
        &self,
        charge: &Charge<'_>,
        rate: &RateParams,
        now: u64,
        mode: Mode,
        written_at: Option<u64>,
    ) -> Decision {
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let base = match written_at {
                Some(from) => gcra::rescale(tat, now, from, rate.interval),
                None => tat,
            };
            let (verdict, next) = match mode {
                Mode::Refund => {
                    let refunded = gcra::refund(base, rate, now, charge.cost);
                    (gcra::check(refunded, rate, now, 0).0, refunded)
                }
                Mode::Debit => {
                    let owed = gcra::debit(base, rate, now, charge.cost);
                    (gcra::check(owed, rate, now, 0).0, owed)
                }
                Mode::Charge | Mode::Peek => gcra::check(base, rate, now, charge.cost),
            };
            let write = match mode {
                Mode::Peek => false,
                Mode::Charge => verdict.allowed && charge.cost > 0,
                Mode::Refund | Mode::Debit => true,
            };
            if !write || (next == tat && written_at.is_none()) {
                return Decision::from_verdict(rate, 0, verdict);
            }
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    if written_at.is_some() {
                        // Written at the new spacing now. (A check that read the old
                        // spacing before this store and the new TAT after the exchange
                        // rescales once more: only at the first write after a change.)
                        self.meta
                            .store(meta(u64::from(rate.interval_bits), now), Ordering::Relaxed);
                    }
                    return Decision::from_verdict(rate, 0, verdict);
                }
                Err(actual) => tat = actual,
            }
        }
    }
}

impl Slot for Box<Mutex<Locked>> {
    fn new(charge: &Charge<'_>, now: u64) -> Box<Mutex<Locked>> {
        Box::new(Mutex::new(Locked {
            state: LimitState::new(charge),
            expires_at: 0,
            touched: tick(now),
        }))
    }

    fn check(&mut self, charge: &Charge<'_>, now: u64, mode: Mode) -> Decision {
        self.get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .check(charge, now, mode)
    }

    fn expires_at(&mut self) -> u64 {
        self.get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .expires_at
    }

    fn touched(&mut self, _now: u64) -> u64 {
        self.get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .touched
    }
}

impl Locked {
    fn check(&mut self, charge: &Charge<'_>, now: u64, mode: Mode) -> Decision {
        self.touched = tick(now);
        let decision = self.state.check(charge, now, mode);
        if mode != Mode::Peek {
            self.expires_at = self.state.expires_at(charge);
        }
        decision
    }
}

/// A key under one rate counted by a fixed or sliding window: its state in the table
/// itself, judged with the shard write-locked (two atomic operations a check, where a
/// boxed per-key mutex under a read lock takes four and a pointer chase).
struct WindowSlot {
    state: State,
    expires_at: u64,
    touched: u64,
}

impl Slot for WindowSlot {
    fn new(charge: &Charge<'_>, now: u64) -> WindowSlot {
        WindowSlot {
            state: State::new(charge.algorithm),
            expires_at: 0,
            touched: tick(now),
        }
    }

    #[inline(always)]
    fn check(&mut self, charge: &Charge<'_>, now: u64, mode: Mode) -> Decision {
        self.touched = tick(now);
        if charge.scale.is_full() {
            self.check_at(charge, &charge.limits.params()[0], now, mode)
        } else {
            self.check_scaled(charge, now, mode)
        }
    }

    fn expires_at(&mut self) -> u64 {
        self.expires_at
    }

    fn touched(&mut self, _now: u64) -> u64 {
        self.touched
    }
}

impl WindowSlot {
    #[inline(always)]
    fn check_at(
        &mut self,
        charge: &Charge<'_>,
        rate: &RateParams,
        now: u64,
        mode: Mode,
    ) -> Decision {
        let decision = check_states(
            std::slice::from_mut(&mut self.state),
            std::slice::from_ref(rate),
            now,
            charge.cost,
            mode,
        );
        if mode != Mode::Peek {
            self.expires_at = self.state.expires_at(rate);
        }
        decision
    }

    /// A check under a scaled limit: its numbers made on the stack first.
    #[inline(never)]
    fn check_scaled(&mut self, charge: &Charge<'_>, now: u64, mode: Mode) -> Decision {
        self.check_at(charge, &charge.param(0), now, mode)
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
            gcra: Table::default(),
            locked: DashMap::with_hasher(Lane(0)),
            windows: DashMap::with_hasher(Lane(0)),
            clock,
            capacity: DEFAULT_CAPACITY,
            when_full: WhenFull::default(),
            len: AtomicUsize::new(0),
            next_sweep: AtomicU64::new(0),
            sweep: Mutex::default(),
            refused: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            seeds: KeySeeds::default(),
            slots: Slots::default(),
        }
    }

    /// The concurrency slots this store counts.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn slots(&self) -> &Slots {
        &self.slots
    }

    /// Caps the number of tracked keys at `capacity` (at least 1).
    pub fn with_capacity(mut self, capacity: usize) -> MemoryStore<C> {
        self.capacity = capacity.max(1);
        self
    }

    /// What to do with new keys when full (default: evict the least recently used state).
    pub fn when_full(mut self, policy: WhenFull) -> MemoryStore<C> {
        self.when_full = policy;
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

    /// How many new keys were refused because the store was full of live state
    /// ([`WhenFull::RefuseNewKeys`]).
    pub fn refused_new_keys(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// How many live keys were evicted to make room ([`WhenFull::EvictLeastRecentlyUsed`]).
    pub fn evictions(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
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
        self.check_named(request, Prefix::of(request.prefix))
    }

    /// [`check_now`](MemoryStore::check_now) with the prefix's part of the state's name
    /// worked out already: by the limiter that owns the store, once.
    #[inline(always)]
    pub(crate) fn check_named(&self, request: &CheckRequest<'_>, prefix: Prefix) -> Decision {
        let now = self.clock.now();
        match request.charges {
            [charge] => self.check_charge(request, prefix, charge, now, request.mode),
            charges => self.check_several(request, prefix, charges, now),
        }
    }

    /// [`Store::check_with_slot`] at once: the slot, then the rates, the slot given back
    /// when they refuse.
    pub(crate) fn check_with_slot_now(
        &self,
        request: &CheckRequest<'_>,
        prefix: Prefix,
        slot: &SlotRequest<'_>,
    ) -> SlotCheck {
        if !self.slots.acquire(slot) {
            return SlotCheck::NoSlot;
        }
        let decision = self.check_named(request, prefix);
        if decision.is_allowed() {
            SlotCheck::Admitted(decision, 0)
        } else {
            self.slots.release(slot);
            SlotCheck::Refused(decision)
        }
    }

    /// Several charges under one key: each charged in turn, and those already charged given
    /// back when one refuses, so that the request is charged by all or none.
    #[inline(never)]
    fn check_several(
        &self,
        request: &CheckRequest<'_>,
        prefix: Prefix,
        charges: &[Charge<'_>],
        now: u64,
    ) -> Decision {
        let mut binding: Option<Decision> = None;
        let mut bind = |decision: Decision| {
            if binding.is_none_or(|b| decision.binds_harder_than(&b)) {
                binding = Some(decision);
            }
        };
        for (i, charge) in charges.iter().enumerate() {
            let decision = self
                .check_charge(request, prefix, charge, now, request.mode)
                .at_charge(i);
            if request.mode == Mode::Charge && !decision.is_allowed() {
                for earlier in &charges[..i] {
                    self.check_charge(request, prefix, earlier, now, Mode::Refund);
                }
                // The longest wait among the rest decides the retry-after.
                bind(decision);
                for (j, later) in charges.iter().enumerate().skip(i + 1) {
                    bind(
                        self.check_charge(request, prefix, later, now, Mode::Peek)
                            .at_charge(j),
                    );
                }
                break;
            }
            bind(decision);
        }
        binding.expect("a request carries at least one charge")
    }

    #[inline(always)]
    fn check_charge(
        &self,
        request: &CheckRequest<'_>,
        prefix: Prefix,
        charge: &Charge<'_>,
        now: u64,
        mode: Mode,
    ) -> Decision {
        let namespace = namespace(prefix, charge);
        let key = StoredKey::new(namespace, request.key, &self.seeds);
        // A charge of cost 0 stores nothing: it is a peek.
        let mode = if charge.cost == 0 && mode == Mode::Charge {
            Mode::Peek
        } else {
            mode
        };
        let single = charge.limits.params().len() == 1;
        match charge.algorithm {
            Algorithm::Gcra if single => {
                match self
                    .gcra
                    .with(&key, |slot| slot.check_shared(charge, now, mode))
                {
                    Some(decision) => decision,
                    None => self.check_new(&self.gcra, key, charge, now, mode),
                }
            }
            Algorithm::FixedWindow | Algorithm::SlidingWindow if single => {
                match self.windows.get_mut(&key) {
                    Some(mut slot) => slot.check(charge, now, mode),
                    None => self.check_new(&self.windows, key, charge, now, mode),
                }
            }
            _ => match self.locked.get(&key) {
                Some(slot) => slot
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .check(charge, now, mode),
                None => self.check_new(&self.locked, key, charge, now, mode),
            },
        }
    }

    /// Checks a key the store does not track. Only a request that passes and charges needs
    /// a slot.
    #[cold]
    #[inline(never)]
    fn check_new<V: Slot, M: SlotMap<V>>(
        &self,
        map: &M,
        key: StoredKey,
        charge: &Charge<'_>,
        now: u64,
        mode: Mode,
    ) -> Decision {
        let mut slot = V::new(charge, now);
        match mode {
            Mode::Charge => {}
            // A peek: nothing to store.
            Mode::Peek => return slot.check(charge, now, Mode::Peek),
            // A refund of state that is not here (never charged, or reclaimed since): the
            // state as it is, fresh.
            Mode::Refund => {
                let nothing = Charge { cost: 0, ..*charge };
                return slot.check(&nothing, now, Mode::Peek);
            }
            // A debit is stored whatever the limits say, in a place taken like a charge's
            // (refused only by a store full of live state that refuses new keys).
            Mode::Debit => {
                if charge.cost == 0 {
                    return slot.check(charge, now, Mode::Peek);
                }
                if !self.reserve(now) {
                    return self.refusal(charge, now);
                }
                return self.charge_new(map, key, slot, charge, now, mode);
            }
        }
        let decision = slot.check(charge, now, Mode::Peek);
        if !decision.is_allowed() {
            return decision;
        }
        if !self.reserve(now) {
            return self.refusal(charge, now);
        }
        self.charge_new(map, key, slot, charge, now, mode)
    }

    /// Stores `slot` for `key` and charges it, once a place is reserved: unless another
    /// thread inserted the key since it was looked up, whose slot is charged instead (and
    /// the place given back).
    fn charge_new<V: Slot, M: SlotMap<V>>(
        &self,
        map: &M,
        key: StoredKey,
        slot: V,
        charge: &Charge<'_>,
        now: u64,
        mode: Mode,
    ) -> Decision {
        map.upsert(key, slot, |slot, existed| {
            if existed {
                self.len.fetch_sub(1, Ordering::Relaxed);
            }
            slot.check(charge, now, mode)
        })
    }

    /// Takes a place for one more key, making room when the store is full.
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
        if self.when_full == WhenFull::RefuseNewKeys
            && now < self.next_sweep.load(Ordering::Relaxed)
        {
            return false;
        }
        // Threads that find the store full while another makes room wait for it: a cold
        // path, taken once per eighth of the capacity at most.
        let mut sweep = self.sweep.lock().unwrap_or_else(PoisonError::into_inner);
        if try_take() {
            return true;
        }
        self.make_room(now, &mut sweep);
        try_take()
    }

    /// Drops every slot whose state has expired and, when that frees less than an eighth of
    /// the capacity and the policy allows, the least recently used slots up to that eighth.
    fn make_room(&self, now: u64, sweep: &mut Sweep) {
        let started = Instant::now();
        let target = (self.capacity / 8).max(1);
        let mut removed = 0usize;
        let mut earliest = u64::MAX;
        let mut touched = Vec::new();
        self.gcra
            .retain(|slot| keep_live(slot, now, &mut removed, &mut earliest, &mut touched));
        self.locked
            .retain(|_, slot| keep_live(slot, now, &mut removed, &mut earliest, &mut touched));
        self.windows
            .retain(|_, slot| keep_live(slot, now, &mut removed, &mut earliest, &mut touched));
        self.len.fetch_sub(removed, Ordering::Relaxed);
        if removed >= target {
            return;
        }
        match self.when_full {
            WhenFull::EvictLeastRecentlyUsed => {
                let evict = (target - removed).min(touched.len());
                if evict == 0 {
                    return;
                }
                // Evict the `evict` least recently touched: those at most the threshold,
                // counting down so that ties at the threshold stop at the number wanted.
                let (_, &mut threshold, _) = touched.select_nth_unstable(evict - 1);
                let mut left = evict;
                let mut evicting = |t: u64| {
                    if left > 0 && t <= threshold {
                        left -= 1;
                        false
                    } else {
                        true
                    }
                };
                self.gcra.retain(|slot| evicting(slot.touched(now)));
                self.locked.retain(|_, slot| evicting(slot.touched(now)));
                self.windows.retain(|_, slot| evicting(slot.touched(now)));
                let evicted = evict - left;
                self.len.fetch_sub(evicted, Ordering::Relaxed);
                self.evicted.fetch_add(evicted as u64, Ordering::Relaxed);
                if sweep.may_warn() {
                    tracing::warn!(
                        capacity = self.capacity,
                        evicted_total = self.evictions(),
                        "rate limit store is full of live state; evicting the least recently \
                         used keys, which start over with a full budget (raise \
                         MemoryStore::with_capacity if this is legitimate traffic)"
                    );
                }
            }
            WhenFull::RefuseNewKeys => {
                // Sweep at most about an eighth of the time, whatever the flood.
                let cost = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                let pause = now.saturating_add(cost.saturating_mul(8).max(1_000_000));
                let next = if removed == 0 {
                    if sweep.may_warn() {
                        tracing::warn!(
                            capacity = self.capacity,
                            "rate limit store is full of live state; refusing new keys until \
                             some expires (raise MemoryStore::with_capacity if this is \
                             legitimate traffic)"
                        );
                    }
                    // Nothing frees up before the earliest expiry.
                    pause.max(earliest)
                } else {
                    pause
                };
                self.next_sweep.store(next, Ordering::Relaxed);
            }
        }
    }

    #[cold]
    fn refusal(&self, charge: &Charge<'_>, now: u64) -> Decision {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let rate = &charge.param(0);
        let retry = self
            .next_sweep
            .load(Ordering::Relaxed)
            .saturating_sub(now)
            .clamp(1_000_000, rate.period_nanos());
        let retry = Duration::from_nanos(retry);
        Decision::refused(rate.rate(), 0, retry, Some(retry))
    }
}

fn keep_live<V: Slot>(
    slot: &mut V,
    now: u64,
    removed: &mut usize,
    earliest: &mut u64,
    touched: &mut Vec<u64>,
) -> bool {
    let expires_at = slot.expires_at();
    if expires_at <= now {
        *removed += 1;
        false
    } else {
        *earliest = (*earliest).min(expires_at);
        touched.push(slot.touched(now));
        true
    }
}

/// The in-process name of a charge's state: prefix, scope, algorithm and the periods of its
/// rates ([`Limits::shape`](crate::Limits::shape)), never the amounts. The prefix's part is
/// worked out once by the limiter that owns the store ([`Prefix`]), the empty scope's is 0:
/// a check under [`Limiter::check_now`](crate::Limiter::check_now) hashes no string but the
/// client's key.
#[inline]
fn namespace(prefix: Prefix, charge: &Charge<'_>) -> u64 {
    let scope = match charge.scope {
        "" => 0,
        scope => SCOPE.hash_one(scope),
    };
    let shape = charge.limits.shape() ^ charge.algorithm.index() as u64;
    folded_multiply(prefix.0 ^ scope ^ NAME_SEEDS[0], shape ^ NAME_SEEDS[1])
}

/// A key prefix's part of the names of the states it counts (see [`namespace`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Prefix(u64);

impl Prefix {
    pub(crate) fn of(prefix: &str) -> Prefix {
        Prefix(PREFIX.hash_one(prefix))
    }
}

// Fixed, not random: a name tells configured prefixes, scopes and limits apart, none of
// which a client chooses (the client's key is hashed under the store's random seeds).
static PREFIX: foldhash::fast::FixedState = foldhash::fast::FixedState::with_seed(0x5eed_0f5c_09e5);
static SCOPE: foldhash::fast::FixedState = foldhash::fast::FixedState::with_seed(0x5c09_e0f5_a1e5);
const NAME_SEEDS: [u64; 2] = [0x243f_6a88_85a3_08d3, 0x1319_8a2e_0370_7344];

impl<C: Clock> Store for MemoryStore<C> {
    fn check<'a>(&'a self, request: CheckRequest<'a>) -> StoreFuture<'a> {
        StoreFuture::ready(Ok(self.check_now(&request)))
    }

    fn answer_now(&self, request: &CheckRequest<'_>) -> Option<Result<Decision, StoreError>> {
        Some(Ok(self.check_now(request)))
    }

    /// Slots are counted in process memory and come back when their request ends; the
    /// lease is always 0.
    fn acquire_slot<'a>(&'a self, request: SlotRequest<'a>) -> StoreFuture<'a, Option<u64>> {
        StoreFuture::ready(Ok(self.slots.acquire(&request).then_some(0)))
    }

    fn check_with_slot<'a>(
        &'a self,
        request: CheckRequest<'a>,
        slot: SlotRequest<'a>,
    ) -> StoreFuture<'a, SlotCheck> {
        StoreFuture::ready(Ok(self.check_with_slot_now(
            &request,
            Prefix::of(request.prefix),
            &slot,
        )))
    }

    fn release_slot(&self, request: SlotRequest<'_>, _lease: u64) {
        self.slots.release(&request);
    }
}

impl<C: Clock> std::fmt::Debug for MemoryStore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .field("when_full", &self.when_full)
            .finish_non_exhaustive()
    }
}
/// A stored key: a 128-bit hash of the state's namespace and the client key, keyed at random
/// per store, as two independent 64-bit lanes. Keys of up to 15 bytes enter it as they are
/// (two words, their length in the last byte); longer ones as a keyed 128-bit hash of their
/// bytes (with the top bit of the last byte set), so that no key is ever kept and none costs
/// more than another. Fixed-size: a GCRA entry is 32 bytes, a lookup allocates nothing, and
/// the table's hash is the first lane as it is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct StoredKey([u64; 2]);

impl StoredKey {
    /// A free entry's key in the [`Table`].
    pub(super) const EMPTY: StoredKey = StoredKey([0, 0]);
    /// Where the table keeps the one key equal to [`EMPTY`](StoredKey::EMPTY).
    pub(super) const EMPTY_STAND_IN: StoredKey = StoredKey([0, 1]);

    /// The first lane: the tables' hash.
    #[inline]
    pub(super) fn lane(&self) -> u64 {
        self.0[0]
    }

    #[cfg(test)]
    pub(super) fn from_lanes(first: u64, second: u64) -> StoredKey {
        StoredKey([first, second])
    }
}

const INLINE_KEY_LEN: usize = 15;
const HASHED: u64 = 1 << 63;

/// The random keys of a store's [`StoredKey`]s: two per lane, and two for keys longer than
/// [`INLINE_KEY_LEN`].
struct KeySeeds {
    lanes: [u64; 4],
    long: (LongKeySeed, LongKeySeed),
}

impl Default for KeySeeds {
    fn default() -> KeySeeds {
        let random = foldhash::quality::RandomState::default();
        KeySeeds {
            lanes: [0u64, 1, 2, 3].map(|i| random.hash_one(i)),
            long: Default::default(),
        }
    }
}

/// The high and low halves of the 128-bit product, folded: foldhash's mixing step, which
/// hashes 16 bytes keyed by two secret words in one multiplication.
#[inline(always)]
fn folded_multiply(x: u64, y: u64) -> u64 {
    let product = u128::from(x) * u128::from(y);
    (product as u64) ^ ((product >> 64) as u64)
}

impl StoredKey {
    #[inline]
    fn new(namespace: u64, key: &[u8], seeds: &KeySeeds) -> StoredKey {
        let (lo, hi) = if key.len() <= INLINE_KEY_LEN {
            let (lo, hi) = key.split_at(key.len().min(8));
            (load_le(lo), load_le(hi) | (key.len() as u64) << 56)
        } else {
            StoredKey::long(key, &seeds.long)
        };
        // Each lane: the key's 16 bytes and the namespace, under two secret words of its own.
        let [a, b, c, d] = seeds.lanes;
        StoredKey([
            folded_multiply(lo ^ a, hi ^ b ^ namespace),
            folded_multiply(lo ^ c ^ namespace, hi ^ d),
        ])
    }

    #[cold]
    fn long(key: &[u8], (a, b): &(LongKeySeed, LongKeySeed)) -> (u64, u64) {
        (a.hash_one(key), b.hash_one(key) | HASHED)
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
        // Already a keyed hash: the table takes its first lane as it is ([`Lane`]).
        state.write_u64(self.0[0]);
    }
}

/// The table's hasher: a [`StoredKey`]'s first lane, unchanged.
#[derive(Clone, Copy, Default)]
struct Lane(u64);

impl Hasher for Lane {
    #[inline]
    fn write(&mut self, _: &[u8]) {
        unreachable!("a stored key hashes as one u64");
    }

    #[inline]
    fn write_u64(&mut self, lane: u64) {
        self.0 = lane;
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

impl BuildHasher for Lane {
    type Hasher = Lane;

    #[inline]
    fn build_hasher(&self) -> Lane {
        Lane(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Algorithm, Limits};

    #[test]
    fn a_gcra_entry_is_32_bytes() {
        assert_eq!(size_of::<StoredKey>(), 16);
        assert_eq!(size_of::<(StoredKey, GcraSlot)>(), 32);
        assert_eq!(size_of::<(StoredKey, Box<Mutex<Locked>>)>(), 24);
        // A window's state inline: the algorithms' state enum, its expiry and its tick.
        assert!(size_of::<(StoredKey, WindowSlot)>() <= 72);
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
        let seeds = KeySeeds::default();
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
            assert!(stored == StoredKey::new(7, key, &seeds), "deterministic");
            assert!(stored != StoredKey::new(8, key, &seeds), "namespaced");
            assert!(
                stored != StoredKey::new(7, key, &KeySeeds::default()),
                "keyed per store"
            );
            seen.insert(stored.0);
        }
        let distinct: std::collections::HashSet<&Vec<u8>> = keys.iter().collect();
        assert_eq!(seen.len(), distinct.len());
    }

    #[test]
    fn namespaces_tell_every_part_apart() {
        let minute = Limits::parse("10/minute").unwrap();
        let hour = Limits::parse("10/hour").unwrap();
        let long = "/v1/models/{model}/generate".repeat(3);
        let names = [
            ("ratelimit", "", &minute, Algorithm::Gcra),
            ("ratelimit", "", &minute, Algorithm::FixedWindow),
            ("ratelimit", "", &hour, Algorithm::Gcra),
            ("ratelimit", "/predict", &minute, Algorithm::Gcra),
            // Where the prefix ends and the scope begins.
            ("ab", "c", &minute, Algorithm::Gcra),
            ("a", "bc", &minute, Algorithm::Gcra),
            ("abc", "", &minute, Algorithm::Gcra),
            ("", "abc", &minute, Algorithm::Gcra),
            ("ratelimit", &long, &minute, Algorithm::Gcra),
            (&long, "ratelimit", &minute, Algorithm::Gcra),
        ];
        let mut seen = std::collections::HashSet::new();
        for (prefix, scope, limits, algorithm) in names {
            let charge = Charge::new(scope, limits, algorithm, 1);
            let name = namespace(Prefix::of(prefix), &charge);
            assert_eq!(
                name,
                namespace(Prefix::of(prefix), &charge),
                "deterministic"
            );
            assert!(
                seen.insert(name),
                "{prefix:?} {scope:?} {limits} {algorithm:?}"
            );
        }
        // The amounts are not part of it: scaled limits keep their counted state.
        let ten = Charge::new("", &minute, Algorithm::Gcra, 1);
        let five = Limits::parse("5/minute").unwrap();
        let five = Charge::new("", &five, Algorithm::Gcra, 1);
        assert_eq!(
            namespace(Prefix::of("p"), &ten),
            namespace(Prefix::of("p"), &five)
        );
    }
}
