//! Shard hints: the shard a series ID was last routed to, found by the hash the shards
//! already compute, so a known series is not hashed with murmur3 again.
//!
//! Every value received over rawtcp names its series by ID and nothing else; the shard is
//! `murmur3_32(id) % numShards`, a serial chain of multiplies over the whole ID (about 150 ns
//! for a 240-byte ID, 22% of an aggregator's CPU under relay load). The engine hashes every ID
//! anyway with a fast hash to find its entry in the shard ([`entry_hash`]). This table maps
//! that hash to the shard murmur3 gave the last time, so the known series of a batch (nearly
//! all of them: Prometheus resends the same series every scrape) skip murmur3.
//!
//! A hint is never trusted alone. It holds the shard count it was computed under, and only a
//! hint of the placement's current count is read, so it names murmur3's shard for the ID it
//! was written for. The batch then looks the value's series up in the hinted shard without
//! creating it: only an entry with the same ID bytes there confirms the hint. Everything else
//! (two IDs sharing a slot and tag, a series expired since, a shard no longer owned or
//! writeable) goes back through murmur3 and the checks of an unhinted value, as does a value
//! its metadata rejects unless murmur3 agrees with the hint. So a wrong hint costs a second
//! pass, not a value in the wrong shard. (The one exception needs two IDs to agree on 44
//! bits or more of their hash and the shard count to have changed, leaving the other ID's entry from
//! the old count in the hinted shard.)
//!
//! The table is direct-mapped: one 64-bit slot per hash, holding a 32-bit tag of the hash,
//! the shard count and the shard + 1 (0 is empty). A newer series overwrites an older one's
//! slot. It starts at 4,096 slots (32 KiB, allocated on first use) and is replaced by one four
//! times larger once half its slots are filled, up to 2^20 slots (8 MiB): an instance with a
//! few thousand series does not pay for a million. A replacement starts empty, so each known
//! series pays murmur3 once more; at most four replacements ever happen. Past about a million
//! series per instance a growing share of values pays murmur3 again. Slots are relaxed
//! atomics written whole, without a lock; a batch reads the current table once
//! ([`ShardHints::table`]). A race between connections loses a hint, or, when another
//! connection overwrites a slot or creates a series while a batch is being added, lets a value
//! of that series whose hint was not confirmed be added after a later value of the same batch.
//!
//! [`entry_hash`]: crate::shard::entry_hash

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::RwLock;
use prefetch_index::prefetch_index;

/// Slots of the first table (a power of two): 32 KiB of `u64`.
const MIN_SLOTS: usize = 1 << 12;
/// Slots of the largest table: 8 MiB.
const MAX_SLOTS: usize = 1 << 20;
/// How many times larger a replacement table is.
const GROWTH: usize = 4;

/// The largest shard count and shard a slot can hold (16 bits each, the shard as shard + 1).
const MAX_HINTED_COUNT: u32 = u16::MAX as u32;

/// The last shard of each hashed ID; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct ShardHints {
    /// The table batches read and write; `None` until the first batch.
    current: RwLock<Option<Arc<HintTable>>>,
}

impl ShardHints {
    /// The current table, allocated on first use: a batch reads it once and uses it
    /// throughout.
    pub(crate) fn table(&self) -> Arc<HintTable> {
        if let Some(table) = self.current.read().as_ref() {
            return Arc::clone(table);
        }
        Arc::clone(
            self.current
                .write()
                .get_or_insert_with(|| Arc::new(HintTable::with_slots(MIN_SLOTS))),
        )
    }

    /// Replaces `table` with an empty one four times larger when half its slots are filled
    /// and it is still the current one (another batch may have replaced it already).
    pub(crate) fn grow_if_full(&self, table: &Arc<HintTable>) {
        let slots = table.slots.len();
        if slots >= MAX_SLOTS || table.filled.load(Ordering::Relaxed) <= slots / 2 {
            return;
        }
        let mut current = self.current.write();
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, table)) {
            *current = Some(Arc::new(HintTable::with_slots(slots * GROWTH)));
        }
    }
}

/// One table of hints; see the module docs.
#[derive(Debug)]
pub(crate) struct HintTable {
    slots: Box<[AtomicU64]>,
    /// Slots written while empty: how full the table is.
    filled: AtomicUsize,
}

impl HintTable {
    fn with_slots(slots: usize) -> HintTable {
        HintTable {
            slots: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            filled: AtomicUsize::new(0),
        }
    }

    /// The slot of `hash` and the tag stored there for it (in the high half).
    fn slot_and_tag(&self, hash: u64) -> (usize, u64) {
        ((hash as usize) & (self.slots.len() - 1), (hash >> 32) << 32)
    }

    /// Starts loading the slot of `hash` into the cache.
    pub(crate) fn prefetch(&self, hash: u64) {
        prefetch_index(&self.slots, self.slot_and_tag(hash).0);
    }

    /// The shard the ID hashed to `hash` was last routed to under `num_shards` shards, if its
    /// slot still holds it.
    pub(crate) fn get(&self, hash: u64, num_shards: u32) -> Option<u32> {
        let (slot, tag) = self.slot_and_tag(hash);
        let held = self.slots[slot].load(Ordering::Relaxed);
        let shard_plus_one = (held & 0xffff) as u32;
        let count = ((held >> 16) & 0xffff) as u32;
        (shard_plus_one != 0 && held & !0xffff_ffff == tag && count == num_shards)
            .then(|| shard_plus_one - 1)
    }

    /// Remembers that the ID hashed to `hash` is in `shard` of `num_shards`.
    pub(crate) fn set(&self, hash: u64, shard: u32, num_shards: u32) {
        if num_shards <= MAX_HINTED_COUNT && shard < num_shards {
            let (slot, tag) = self.slot_and_tag(hash);
            let held = tag | (u64::from(num_shards) << 16) | u64::from(shard + 1);
            if self.slots[slot].swap(held, Ordering::Relaxed) == 0 {
                self.filled.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hint_is_found_by_its_hash_and_lost_to_a_newer_one_in_its_slot() {
        let hints = ShardHints::default().table();
        let hash = 0x1234_5678_9abc_def0_u64;
        assert_eq!(hints.get(hash, 64), None);
        hints.set(hash, 0, 64);
        assert_eq!(hints.get(hash, 64), Some(0));
        // Same slot, another tag: the slot now holds the newer hint only.
        let other = hash ^ (1 << 60);
        assert_eq!(hints.get(other, 64), None, "a tag mismatch is no hint");
        hints.set(other, 7, 64);
        assert_eq!(hints.get(other, 64), Some(7));
        assert_eq!(hints.get(hash, 64), None);
    }

    #[test]
    fn a_hint_holds_only_under_the_shard_count_it_was_computed_with() {
        let hints = ShardHints::default().table();
        hints.set(42, 5, 64);
        assert_eq!(hints.get(42, 64), Some(5));
        assert_eq!(hints.get(42, 128), None);
        hints.set(42, 69, 128);
        assert_eq!(hints.get(42, 64), None);
        assert_eq!(hints.get(42, 128), Some(69));
    }

    #[test]
    fn counts_beyond_a_slot_and_shards_beyond_the_count_are_not_hinted() {
        let hints = ShardHints::default().table();
        hints.set(9, MAX_HINTED_COUNT - 1, MAX_HINTED_COUNT);
        assert_eq!(hints.get(9, MAX_HINTED_COUNT), Some(MAX_HINTED_COUNT - 1));
        hints.set(10, 3, MAX_HINTED_COUNT + 1);
        assert_eq!(hints.get(10, MAX_HINTED_COUNT + 1), None);
        hints.set(11, 8, 8);
        assert_eq!(hints.get(11, 8), None);
    }

    /// The table starts small, is replaced by one four times larger (and empty) once half
    /// full, and stops growing at the largest size.
    #[test]
    fn the_table_grows_with_the_series_it_holds_up_to_its_largest() {
        let hints = ShardHints::default();
        let mut table = hints.table();
        assert_eq!(table.slots.len(), MIN_SLOTS);
        // Consecutive hashes fill consecutive slots: half the table, then one more.
        for hash in 0..=(MIN_SLOTS / 2) as u64 {
            table.set(hash, 1, 64);
        }
        // Writing a filled slot again does not count it twice.
        table.set(0, 2, 64);
        assert_eq!(table.filled.load(Ordering::Relaxed), MIN_SLOTS / 2 + 1);
        let stale = Arc::clone(&table);
        hints.grow_if_full(&table);
        table = hints.table();
        assert_eq!(table.slots.len(), MIN_SLOTS * GROWTH);
        assert_eq!(table.get(5, 64), None, "a new table starts empty");
        // A batch still holding the old table does not replace the new one.
        hints.grow_if_full(&stale);
        assert!(Arc::ptr_eq(&hints.table(), &table));
        // Not half full: no growth.
        table.set(5, 3, 64);
        hints.grow_if_full(&table);
        assert!(Arc::ptr_eq(&hints.table(), &table));
        while table.slots.len() < MAX_SLOTS {
            for hash in 0..=(table.slots.len() / 2) as u64 {
                table.set(hash, 1, 64);
            }
            hints.grow_if_full(&table);
            table = hints.table();
        }
        assert_eq!(table.slots.len(), MAX_SLOTS);
        for hash in 0..=(MAX_SLOTS / 2) as u64 {
            table.set(hash, 1, 64);
        }
        hints.grow_if_full(&table);
        assert!(
            Arc::ptr_eq(&hints.table(), &table),
            "no table past the largest"
        );
    }
}
