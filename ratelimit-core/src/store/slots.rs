//! Concurrency slots in process memory: how many requests of one key are in flight under one
//! scope (`concurrency = N` on the attribute).

use std::hash::{BuildHasher, Hasher};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use super::SlotRequest;

/// The in-flight count of every key that holds a slot; a key whose last slot comes back is
/// removed, so the table holds only keys with requests in flight.
#[derive(Debug, Default)]
pub(crate) struct Slots {
    held: DashMap<(u64, u64), u32, foldhash::fast::RandomState>,
}

impl Slots {
    /// Takes a slot: `true` when fewer than `request.limit` were held.
    pub(crate) fn acquire(&self, request: &SlotRequest<'_>) -> bool {
        let mut held = self.held.entry(name(request)).or_insert(0);
        if *held < request.limit {
            *held += 1;
            true
        } else {
            false
        }
    }

    /// Gives a slot back.
    pub(crate) fn release(&self, request: &SlotRequest<'_>) {
        if let Entry::Occupied(mut held) = self.held.entry(name(request)) {
            if *held.get() <= 1 {
                held.remove();
            } else {
                *held.get_mut() -= 1;
            }
        }
    }

    /// How many slots of `request`'s key are held.
    #[cfg(test)]
    pub(crate) fn held(&self, request: &SlotRequest<'_>) -> u32 {
        self.held.get(&name(request)).map_or(0, |held| *held)
    }
}

/// Two independent 64-bit hashes of prefix, scope and key: 128 bits, so no two keys share a
/// count in practice, and nothing is allocated per request.
fn name(request: &SlotRequest<'_>) -> (u64, u64) {
    let hash = |state: &foldhash::fast::FixedState| {
        let mut hasher = state.build_hasher();
        hasher.write(request.prefix.as_bytes());
        hasher.write_u8(0xff);
        hasher.write(request.scope.as_bytes());
        hasher.write_u8(0xff);
        hasher.write(request.key);
        hasher.finish()
    };
    (hash(&SEEDS.0), hash(&SEEDS.1))
}

static SEEDS: (foldhash::fast::FixedState, foldhash::fast::FixedState) = (
    foldhash::fast::FixedState::with_seed(0x510f_0c0c_0a11),
    foldhash::fast::FixedState::with_seed(0x0ff1_c1a1_5eed),
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_key_and_scope_and_come_back() {
        let slots = Slots::default();
        let a = SlotRequest {
            prefix: "p",
            scope: "/heavy",
            key: b"1.2.3.4",
            limit: 2,
        };
        let b = SlotRequest {
            key: b"5.6.7.8",
            ..a
        };
        let other_scope = SlotRequest {
            scope: "/other",
            ..a
        };
        assert!(slots.acquire(&a));
        assert!(slots.acquire(&a));
        assert!(!slots.acquire(&a));
        assert!(slots.acquire(&b));
        assert!(slots.acquire(&other_scope));
        slots.release(&a);
        assert_eq!(slots.held(&a), 1);
        assert!(slots.acquire(&a));
        slots.release(&a);
        slots.release(&a);
        slots.release(&a); // one too many: nothing below zero
        assert_eq!(slots.held(&a), 0);
        assert!(slots.held.get(&name(&a)).is_none());
    }
}
