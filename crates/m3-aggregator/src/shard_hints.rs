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
//! A hint is never trusted alone. The batch looks a hinted value's series up in the hinted
//! shard without creating it; only an entry with the same ID bytes there confirms the hint
//! (entries are created only in the shard murmur3 gave). Everything else (a tag shared by two
//! IDs, a series expired since, a shard no longer owned or writeable) goes back through
//! murmur3. So a wrong hint costs a second pass, never a value in the wrong shard.
//!
//! The table is direct-mapped and fixed in size (4 MiB, allocated on first use): one 32-bit
//! slot per hash, a 16-bit tag of the hash and the shard + 1 (0 is empty). A newer series
//! overwrites an older one's slot, so past about a million series per instance a growing
//! share of values pays murmur3 again; nothing grows with the series count. Slots are
//! relaxed atomics: connection threads read and write them without a lock, and a torn
//! interleaving only loses a hint. When the placement's shard count changes every hint is
//! cleared, since murmur3 then maps IDs elsewhere.
//!
//! [`entry_hash`]: crate::shard::entry_hash

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use prefetch_index::prefetch_index;

/// Slots in the table (a power of two): 4 MiB of `u32`.
const SLOTS: usize = 1 << 20;

/// The largest shard a slot can hold (the low half holds shard + 1).
const MAX_HINTED_SHARD: u32 = u16::MAX as u32 - 1;

/// The last shard of each hashed ID; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct ShardHints {
    slots: OnceLock<Box<[AtomicU32]>>,
    /// The shard count the hints were computed under (0 before the first).
    num_shards: AtomicU32,
}

/// The slot of `hash` and the tag stored there for it (in the high half).
fn slot_and_tag(hash: u64) -> (usize, u32) {
    ((hash as usize) & (SLOTS - 1), ((hash >> 48) as u32) << 16)
}

impl ShardHints {
    /// The table, allocated on first use.
    fn slots(&self) -> &[AtomicU32] {
        self.slots
            .get_or_init(|| (0..SLOTS).map(|_| AtomicU32::new(0)).collect())
    }

    /// Drops every hint if they were computed under another shard count than `num_shards`.
    pub(crate) fn follow_shard_count(&self, num_shards: u32) {
        // Read first: a write per batch would move the line between connection threads.
        if self.num_shards.load(Ordering::Relaxed) != num_shards
            && self.num_shards.swap(num_shards, Ordering::Relaxed) != num_shards
            && let Some(slots) = self.slots.get()
        {
            for slot in slots.iter() {
                slot.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Starts loading the slot of `hash` into the cache.
    pub(crate) fn prefetch(&self, hash: u64) {
        prefetch_index(self.slots(), slot_and_tag(hash).0);
    }

    /// The shard the ID hashed to `hash` was last routed to, if its slot still holds it.
    pub(crate) fn get(&self, hash: u64) -> Option<u32> {
        let (slot, tag) = slot_and_tag(hash);
        let held = self.slots()[slot].load(Ordering::Relaxed);
        let shard_plus_one = held & 0xffff;
        (shard_plus_one != 0 && held & 0xffff_0000 == tag).then(|| shard_plus_one - 1)
    }

    /// Remembers that the ID hashed to `hash` is in `shard`.
    pub(crate) fn set(&self, hash: u64, shard: u32) {
        if shard <= MAX_HINTED_SHARD {
            let (slot, tag) = slot_and_tag(hash);
            self.slots()[slot].store(tag | (shard + 1), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hint_is_found_by_its_hash_and_lost_to_a_newer_one_in_its_slot() {
        let hints = ShardHints::default();
        let hash = 0x1234_5678_9abc_def0_u64;
        assert_eq!(hints.get(hash), None);
        hints.set(hash, 0);
        assert_eq!(hints.get(hash), Some(0));
        // Same slot, another tag: the slot now holds the newer hint only.
        let other = hash ^ (1 << 60);
        assert_eq!(hints.get(other), None, "a tag mismatch is no hint");
        hints.set(other, 7);
        assert_eq!(hints.get(other), Some(7));
        assert_eq!(hints.get(hash), None);
    }

    #[test]
    fn a_new_shard_count_clears_every_hint() {
        let hints = ShardHints::default();
        hints.follow_shard_count(64);
        hints.set(42, 5);
        hints.follow_shard_count(64);
        assert_eq!(hints.get(42), Some(5), "the same count keeps hints");
        hints.follow_shard_count(128);
        assert_eq!(hints.get(42), None);
    }

    #[test]
    fn shards_beyond_a_slot_are_not_hinted() {
        let hints = ShardHints::default();
        hints.set(9, MAX_HINTED_SHARD);
        assert_eq!(hints.get(9), Some(MAX_HINTED_SHARD));
        hints.set(10, MAX_HINTED_SHARD + 1);
        assert_eq!(hints.get(10), None);
    }
}
