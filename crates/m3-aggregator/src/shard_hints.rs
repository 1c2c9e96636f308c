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
//! pass, not a value in the wrong shard. (The one exception needs two IDs to agree on 52
//! bits of their hash and the shard count to have changed, leaving the other ID's entry from
//! the old count in the hinted shard.)
//!
//! The table is direct-mapped and fixed in size (8 MiB, allocated on first use): one 64-bit
//! slot per hash, holding a 32-bit tag of the hash, the shard count and the shard + 1 (0 is
//! empty). A newer series overwrites an older one's slot, so past about a million series per
//! instance a growing share of values pays murmur3 again; nothing grows with the series
//! count. Slots are relaxed atomics written whole, without a lock. A race between
//! connections loses a hint, or, when another connection overwrites a slot or creates a
//! series while a batch is being added, lets a value of that series whose hint was not
//! confirmed be added after a later value of the same batch.
//!
//! [`entry_hash`]: crate::shard::entry_hash

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use prefetch_index::prefetch_index;

/// Slots in the table (a power of two): 8 MiB of `u64`.
const SLOTS: usize = 1 << 20;

/// The largest shard count and shard a slot can hold (16 bits each, the shard as shard + 1).
const MAX_HINTED_COUNT: u32 = u16::MAX as u32;

/// The last shard of each hashed ID; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct ShardHints {
    slots: OnceLock<Box<[AtomicU64]>>,
}

/// The slot of `hash` and the tag stored there for it (in the high half).
fn slot_and_tag(hash: u64) -> (usize, u64) {
    ((hash as usize) & (SLOTS - 1), (hash >> 32) << 32)
}

impl ShardHints {
    /// The table, allocated on first use.
    fn slots(&self) -> &[AtomicU64] {
        self.slots
            .get_or_init(|| (0..SLOTS).map(|_| AtomicU64::new(0)).collect())
    }

    /// Starts loading the slot of `hash` into the cache.
    pub(crate) fn prefetch(&self, hash: u64) {
        prefetch_index(self.slots(), slot_and_tag(hash).0);
    }

    /// The shard the ID hashed to `hash` was last routed to under `num_shards` shards, if its
    /// slot still holds it.
    pub(crate) fn get(&self, hash: u64, num_shards: u32) -> Option<u32> {
        let (slot, tag) = slot_and_tag(hash);
        let held = self.slots()[slot].load(Ordering::Relaxed);
        let shard_plus_one = (held & 0xffff) as u32;
        let count = ((held >> 16) & 0xffff) as u32;
        (shard_plus_one != 0 && held & !0xffff_ffff == tag && count == num_shards)
            .then(|| shard_plus_one - 1)
    }

    /// Remembers that the ID hashed to `hash` is in `shard` of `num_shards`.
    pub(crate) fn set(&self, hash: u64, shard: u32, num_shards: u32) {
        if num_shards <= MAX_HINTED_COUNT && shard < num_shards {
            let (slot, tag) = slot_and_tag(hash);
            let held = tag | (u64::from(num_shards) << 16) | u64::from(shard + 1);
            self.slots()[slot].store(held, Ordering::Relaxed);
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
        let hints = ShardHints::default();
        hints.set(42, 5, 64);
        assert_eq!(hints.get(42, 64), Some(5));
        assert_eq!(hints.get(42, 128), None);
        hints.set(42, 69, 128);
        assert_eq!(hints.get(42, 64), None);
        assert_eq!(hints.get(42, 128), Some(69));
    }

    #[test]
    fn counts_beyond_a_slot_and_shards_beyond_the_count_are_not_hinted() {
        let hints = ShardHints::default();
        hints.set(9, MAX_HINTED_COUNT - 1, MAX_HINTED_COUNT);
        assert_eq!(hints.get(9, MAX_HINTED_COUNT), Some(MAX_HINTED_COUNT - 1));
        hints.set(10, 3, MAX_HINTED_COUNT + 1);
        assert_eq!(hints.get(10, MAX_HINTED_COUNT + 1), None);
        hints.set(11, 8, 8);
        assert_eq!(hints.get(11, 8), None);
    }
}
