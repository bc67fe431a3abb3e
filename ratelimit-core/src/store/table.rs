//! The in-memory store's table of single-rate GCRA keys: an open-addressing table whose
//! entries hold their key beside their state, two to a cache line, so that finding a key
//! that is there reads one line (a `HashMap`'s control bytes and its entry are two lines, two
//! cache misses in turn when the keys far outnumber the cache: the price of a check among a
//! million clients).
//!
//! Sharded like `DashMap`: each shard is a read-write lock around a linear-probing table.
//! A check takes its shard's read lock and updates the state's atomics in place; only a new
//! key, a growth or a sweep takes the write lock.

use dashmap::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::memory::StoredKey;

/// Shards: enough that writers (new keys) on different cores rarely meet.
const SHARDS: usize = 32;
/// The high bits of a key's first lane pick its shard; the low bits its place in the shard.
const SHARD_SHIFT: u32 = 64 - SHARDS.trailing_zeros();
/// A shard's first allocation, in entries.
const FIRST_CAPACITY: usize = 16;

/// An entry: its key (`EMPTY` when free) and its value. 32 bytes for a GCRA slot, aligned so
/// that no entry straddles two cache lines.
#[repr(align(32))]
struct Entry<V> {
    key: StoredKey,
    value: V,
}

/// One shard's table: `entries.len()` is zero or a power of two, at most three quarters
/// full.
struct Shard<V> {
    entries: Vec<Entry<V>>,
    len: usize,
}

/// Aligned to a cache line: a shard's lock is written by every check of its keys, and two
/// shards' locks on one line would make checks of unrelated keys contend.
#[repr(align(64))]
struct Padded<T>(T);

/// A map from [`StoredKey`] to `V` (`V::default()` is a free entry's filler, never seen).
pub(super) struct Table<V> {
    shards: Box<[Padded<RwLock<Shard<V>>>]>,
}

impl<V: Default> Default for Table<V> {
    fn default() -> Table<V> {
        Table {
            shards: (0..SHARDS)
                .map(|_| {
                    Padded(RwLock::new(Shard {
                        entries: Vec::new(),
                        len: 0,
                    }))
                })
                .collect(),
        }
    }
}

/// The key as stored: the one key equal to `EMPTY` (a chance of 2^-128) is moved aside.
#[inline]
fn stored(key: StoredKey) -> StoredKey {
    if key == StoredKey::EMPTY {
        StoredKey::EMPTY_STAND_IN
    } else {
        key
    }
}

impl<V: Default> Table<V> {
    #[inline]
    fn shard(&self, key: &StoredKey) -> &RwLock<Shard<V>> {
        &self.shards[(key.lane() >> SHARD_SHIFT) as usize].0
    }

    // `DashMap`'s own lock: no poisoning (a panic while a shard is written leaves whole
    // entries: every write completes before anything that can panic), and a read is one
    // atomic add.
    #[inline]
    fn read(&self, key: &StoredKey) -> RwLockReadGuard<'_, Shard<V>> {
        self.shard(key).read()
    }

    fn write(&self, key: &StoredKey) -> RwLockWriteGuard<'_, Shard<V>> {
        self.shard(key).write()
    }

    /// `f` on the value of `key`, under its shard's read lock; `None` when absent.
    #[inline]
    pub(super) fn with<R>(&self, key: &StoredKey, f: impl FnOnce(&V) -> R) -> Option<R> {
        let key = stored(*key);
        let shard = self.read(&key);
        shard.find(&key).map(|at| f(&shard.entries[at].value))
    }

    /// `f` on the value of `key` under its shard's write lock, after inserting `value` if
    /// the key was absent; `f` is told whether the key was already there.
    pub(super) fn upsert<R>(
        &self,
        key: StoredKey,
        value: V,
        f: impl FnOnce(&mut V, bool) -> R,
    ) -> R {
        let key = stored(key);
        let mut shard = self.write(&key);
        if let Some(at) = shard.find(&key) {
            return f(&mut shard.entries[at].value, true);
        }
        if (shard.len + 1) * 4 > shard.entries.len() * 3 {
            shard.grow();
        }
        let at = shard.place(key, value);
        f(&mut shard.entries[at].value, false)
    }

    /// Keeps the entries for which `keep` answers `true`, shard by shard.
    pub(super) fn retain(&self, mut keep: impl FnMut(&mut V) -> bool) {
        for shard in self.shards.iter() {
            shard.0.write().retain(&mut keep);
        }
    }

    /// How many keys the table holds.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.0.read().len).sum()
    }
}

impl<V: Default> Shard<V> {
    /// Where `key` is, probing from its place to the first free entry.
    #[inline]
    fn find(&self, key: &StoredKey) -> Option<usize> {
        let mask = self.entries.len().checked_sub(1)?;
        let mut at = key.lane() as usize & mask;
        loop {
            let entry = &self.entries[at];
            if entry.key == *key {
                return Some(at);
            }
            if entry.key == StoredKey::EMPTY {
                return None;
            }
            at = (at + 1) & mask;
        }
    }

    /// Puts an absent `key` in the first free entry from its place (there is one: the table
    /// is at most three quarters full).
    fn place(&mut self, key: StoredKey, value: V) -> usize {
        let mask = self.entries.len() - 1;
        let mut at = key.lane() as usize & mask;
        while self.entries[at].key != StoredKey::EMPTY {
            at = (at + 1) & mask;
        }
        self.entries[at] = Entry { key, value };
        self.len += 1;
        at
    }

    /// Doubles the table (or makes its first), and places every entry again.
    #[cold]
    fn grow(&mut self) {
        let capacity = (self.entries.len() * 2).max(FIRST_CAPACITY);
        self.rebuild(capacity);
    }

    /// Keeps the entries `keep` approves of. Linear probing cannot leave holes in a probe
    /// sequence, so the survivors are placed again in a fresh table (a sweep is rare: once
    /// per eighth of the store's capacity at most).
    fn retain(&mut self, keep: &mut impl FnMut(&mut V) -> bool) {
        let before = self.len;
        let mut kept = 0;
        for entry in &mut self.entries {
            if entry.key != StoredKey::EMPTY && keep(&mut entry.value) {
                kept += 1;
            } else {
                entry.key = StoredKey::EMPTY;
            }
        }
        if kept == before {
            return;
        }
        // Shrink while at most an eighth full, then place the survivors again.
        let mut capacity = self.entries.len();
        while capacity > FIRST_CAPACITY && kept * 8 <= capacity {
            capacity /= 2;
        }
        if kept == 0 {
            self.entries = Vec::new();
            self.len = 0;
            return;
        }
        self.rebuild(capacity);
    }

    /// Places the entries that are not free in a table of `capacity` entries.
    fn rebuild(&mut self, capacity: usize) {
        let old = std::mem::replace(
            &mut self.entries,
            (0..capacity)
                .map(|_| Entry {
                    key: StoredKey::EMPTY,
                    value: V::default(),
                })
                .collect(),
        );
        self.len = 0;
        for entry in old {
            if entry.key != StoredKey::EMPTY {
                self.place(entry.key, entry.value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    fn key(n: u64) -> StoredKey {
        // Spread over shards and places like a hash, with collisions in the low bits.
        StoredKey::from_lanes(n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (n & 7), n)
    }

    #[test]
    fn an_entry_sits_in_one_cache_line() {
        assert_eq!(std::mem::size_of::<Entry<[u64; 2]>>(), 32);
        assert_eq!(std::mem::align_of::<Entry<[u64; 2]>>(), 32);
    }

    #[test]
    fn the_empty_key_is_stored_aside() {
        let table: Table<u64> = Table::default();
        table.upsert(StoredKey::EMPTY, 7, |_, existed| assert!(!existed));
        assert_eq!(table.with(&StoredKey::EMPTY, |v| *v), Some(7));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn keys_that_share_a_place_probe_past_the_end_and_survive_a_sweep() {
        let table: Table<u64> = Table::default();
        // One shard (the top bits 0), one place (the last, whatever the table's size), many
        // keys: each probes from the last entry round to the first.
        let crowded = |n: u64| StoredKey::from_lanes(u64::from(u32::MAX), n);
        for n in 1..=40 {
            table.upsert(crowded(n), n, |_, existed| assert!(!existed));
        }
        for n in 1..=40 {
            assert_eq!(table.with(&crowded(n), |v| *v), Some(n));
        }
        table.retain(|v| *v % 3 != 0);
        for n in 1..=40 {
            let expected = (n % 3 != 0).then_some(n);
            assert_eq!(table.with(&crowded(n), |v| *v), expected, "key {n}");
        }
        assert_eq!(table.len(), 27);
        table.retain(|_| false);
        assert_eq!(table.len(), 0);
        assert_eq!(table.with(&crowded(1), |v| *v), None);
        table.upsert(crowded(1), 9, |_, existed| assert!(!existed));
        assert_eq!(table.with(&crowded(1), |v| *v), Some(9));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Upsert(u64, u64),
        Get(u64),
        RetainEven,
        RetainBelow(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..300u64, any::<u64>()).prop_map(|(k, v)| Op::Upsert(k, v)),
            3 => (0..300u64).prop_map(Op::Get),
            1 => Just(Op::RetainEven),
            1 => (0..300u64).prop_map(Op::RetainBelow),
        ]
    }

    proptest! {
        /// The table answers as a `HashMap` does, through inserts, growth and sweeps.
        #[test]
        fn behaves_as_a_map(ops in proptest::collection::vec(op(), 1..400)) {
            let table: Table<u64> = Table::default();
            let mut model: HashMap<u64, u64> = HashMap::new();
            for op in ops {
                match op {
                    Op::Upsert(k, v) => {
                        let existed = table.upsert(key(k), v, |value, existed| {
                            if existed {
                                *value = v;
                            }
                            existed
                        });
                        prop_assert_eq!(existed, model.insert(k, v).is_some());
                    }
                    Op::Get(k) => {
                        prop_assert_eq!(table.with(&key(k), |v| *v), model.get(&k).copied());
                    }
                    Op::RetainEven => {
                        table.retain(|v| *v % 2 == 0);
                        model.retain(|_, v| *v % 2 == 0);
                    }
                    Op::RetainBelow(limit) => {
                        table.retain(|v| *v < limit);
                        model.retain(|_, v| *v < limit);
                    }
                }
                prop_assert_eq!(table.len(), model.len());
            }
            for (k, v) in &model {
                prop_assert_eq!(table.with(&key(*k), |value| *value), Some(*v));
            }
        }
    }
}
