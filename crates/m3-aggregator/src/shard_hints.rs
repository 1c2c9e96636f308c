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
//! (two IDs sharing a bucket and tag, a series expired since, a shard no longer owned or
//! writeable) goes back through murmur3 and the checks of an unhinted value, as does a value
//! its metadata rejects unless murmur3 agrees with the hint. So a wrong hint costs a second
//! pass, not a value in the wrong shard. (The one exception needs two IDs to agree on 41 bits
//! or more of their hash, those of the bucket and the tag, and the shard count to have
//! changed, leaving the other ID's entry from the old count in the hinted shard.)
//!
//! The table is set-associative: a hash picks a bucket of eight 64-bit slots, one cache line,
//! and a slot holds a 32-bit tag of the hash, the shard count and the shard + 1 (0 is empty).
//! A hint goes in the slot that holds its tag, else in an empty one; only in a full bucket
//! does a newer series replace an older one's hint. With eight ways, a table a quarter full
//! keeps nearly every hint, where a direct-mapped one of that size lost about one in eight
//! to a shared slot, and the table can be sized to the series. It starts at 4,096 slots
//! (32 KiB, allocated on first use) and is replaced by one four times larger once half its
//! slots are filled, up to 2^20 slots (8 MiB): an instance with a few thousand series does
//! not pay for a million, and one with fifty thousand reads 2 MiB instead of 8. A replacement
//! starts empty, so each known series pays murmur3 once more; at most four replacements ever
//! happen. Past about a million series per instance a growing share of values pays murmur3
//! again. Slots are relaxed atomics written whole, without a lock; a batch reads the current
//! table once ([`ShardHints::table`]). A race between connections loses a hint or writes one
//! twice in a bucket (the first found is read; both name the shard murmur3 gave), or, when
//! another connection replaces a hint or creates a series while a batch is being added, lets
//! a value of that series whose hint was not confirmed be added after a later value of the
//! same batch.
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
        let slots = table.slots();
        if slots >= MAX_SLOTS || table.filled.load(Ordering::Relaxed) <= slots / 2 {
            return;
        }
        let mut current = self.current.write();
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, table)) {
            *current = Some(Arc::new(HintTable::with_slots(slots * GROWTH)));
        }
    }
}

/// Hints in one bucket: one cache line of `u64` slots.
const BUCKET_SLOTS: usize = 8;

/// One bucket, aligned to its cache line so a lookup reads one line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Bucket([AtomicU64; BUCKET_SLOTS]);

/// One table of hints; see the module docs.
#[derive(Debug)]
pub(crate) struct HintTable {
    buckets: Box<[Bucket]>,
    /// Slots written while empty: how full the table is.
    filled: AtomicUsize,
}

/// The part of a slot that holds the hash's tag (its high half).
const TAG_MASK: u64 = !0xffff_ffff;

impl HintTable {
    fn with_slots(slots: usize) -> HintTable {
        HintTable {
            buckets: (0..slots / BUCKET_SLOTS)
                .map(|_| Bucket::default())
                .collect(),
            filled: AtomicUsize::new(0),
        }
    }

    /// How many hints the table holds at most.
    fn slots(&self) -> usize {
        self.buckets.len() * BUCKET_SLOTS
    }

    /// The bucket of `hash` and the tag stored there for it (in the high half).
    fn bucket_and_tag(&self, hash: u64) -> (usize, u64) {
        ((hash as usize) & (self.buckets.len() - 1), hash & TAG_MASK)
    }

    /// Starts loading the bucket of `hash` into the cache.
    pub(crate) fn prefetch(&self, hash: u64) {
        prefetch_index(&self.buckets, self.bucket_and_tag(hash).0);
    }

    /// The shard the ID hashed to `hash` was last routed to under `num_shards` shards, if its
    /// bucket still holds it.
    pub(crate) fn get(&self, hash: u64, num_shards: u32) -> Option<u32> {
        let (bucket, tag) = self.bucket_and_tag(hash);
        self.buckets[bucket].0.iter().find_map(|slot| {
            let held = slot.load(Ordering::Relaxed);
            let shard_plus_one = (held & 0xffff) as u32;
            let count = ((held >> 16) & 0xffff) as u32;
            (shard_plus_one != 0 && held & TAG_MASK == tag && count == num_shards)
                .then(|| shard_plus_one - 1)
        })
    }

    /// Remembers that the ID hashed to `hash` is in `shard` of `num_shards`: in the slot that
    /// holds its tag, else in an empty one, else in place of a hint the hash picks.
    pub(crate) fn set(&self, hash: u64, shard: u32, num_shards: u32) {
        if num_shards > MAX_HINTED_COUNT || shard >= num_shards {
            return;
        }
        let (bucket, tag) = self.bucket_and_tag(hash);
        let held = tag | (u64::from(num_shards) << 16) | u64::from(shard + 1);
        let slots = &self.buckets[bucket].0;
        if let Some(slot) = slots.iter().find(|slot| {
            let held = slot.load(Ordering::Relaxed);
            held != 0 && held & TAG_MASK == tag
        }) {
            slot.store(held, Ordering::Relaxed);
            return;
        }
        for slot in slots {
            if slot
                .compare_exchange(0, held, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                self.filled.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        // Full: the bucket bits are the hash's lowest, the tag its highest; bits between pick
        // the hint to replace.
        slots[(hash >> 24) as usize % BUCKET_SLOTS].store(held, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hash whose bucket is `i` (in a table of more than `i` buckets) and whose tag is `i`.
    fn spread(i: u64) -> u64 {
        i | (i << 32)
    }

    #[test]
    fn a_bucket_keeps_eight_hints_and_a_ninth_replaces_one() {
        let hints = ShardHints::default().table();
        let buckets = hints.buckets.len() as u64;
        // Nine hashes of bucket 3, each with its own tag.
        let hashes: Vec<u64> = (1..=9)
            .map(|tag| (tag << 32) | (3 + buckets * tag))
            .collect();
        assert_eq!(hints.get(hashes[0], 64), None);
        for (shard, &hash) in hashes[..8].iter().enumerate() {
            hints.set(hash, shard as u32, 64);
        }
        for (shard, &hash) in hashes[..8].iter().enumerate() {
            assert_eq!(hints.get(hash, 64), Some(shard as u32), "hint {shard}");
        }
        assert_eq!(hints.get(hashes[8], 64), None, "a tag mismatch is no hint");
        // Its tag already there: written in place, nothing else lost.
        hints.set(hashes[2], 40, 64);
        assert_eq!(hints.get(hashes[2], 64), Some(40));
        assert_eq!(hints.filled.load(Ordering::Relaxed), 8);
        hints.set(hashes[8], 50, 64);
        assert_eq!(hints.get(hashes[8], 64), Some(50));
        let kept = hashes[..8]
            .iter()
            .filter(|&&hash| hints.get(hash, 64).is_some())
            .count();
        assert_eq!(kept, 7, "the ninth replaced exactly one");
        // Other buckets are untouched.
        assert_eq!(hints.get(spread(4), 64), None);
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
        assert_eq!(table.slots(), MIN_SLOTS);
        // Spread hashes fill the buckets in turn: half the table, then one more.
        for i in 0..=(MIN_SLOTS / 2) as u64 {
            table.set(spread(i), 1, 64);
        }
        // Writing a filled slot again does not count it twice.
        table.set(spread(0), 2, 64);
        assert_eq!(table.filled.load(Ordering::Relaxed), MIN_SLOTS / 2 + 1);
        let stale = Arc::clone(&table);
        hints.grow_if_full(&table);
        table = hints.table();
        assert_eq!(table.slots(), MIN_SLOTS * GROWTH);
        assert_eq!(table.get(spread(5), 64), None, "a new table starts empty");
        // A batch still holding the old table does not replace the new one.
        hints.grow_if_full(&stale);
        assert!(Arc::ptr_eq(&hints.table(), &table));
        // Not half full: no growth.
        table.set(spread(5), 3, 64);
        hints.grow_if_full(&table);
        assert!(Arc::ptr_eq(&hints.table(), &table));
        while table.slots() < MAX_SLOTS {
            for i in 0..=(table.slots() / 2) as u64 {
                table.set(spread(i), 1, 64);
            }
            hints.grow_if_full(&table);
            table = hints.table();
        }
        assert_eq!(table.slots(), MAX_SLOTS);
        for i in 0..=(MAX_SLOTS / 2) as u64 {
            table.set(spread(i), 1, 64);
        }
        hints.grow_if_full(&table);
        assert!(
            Arc::ptr_eq(&hints.table(), &table),
            "no table past the largest"
        );
    }
}
