//! A hash index from 64-bit hashes to 32-bit values, built for batches: how the storage head
//! finds a series' reference by the hash of its labels, and an aggregator shard a series' slot
//! by the hash of its ID.
//!
//! Past 100,000 series such a table does not fit in the processor's caches. A lookup into
//! hashbrown's table waited for two cache misses in turn (its control bytes, then the
//! bucket): 15% of `m3 local`'s CPU under full-speed remote write in the head alone. Here a
//! table is one array of 8-byte buckets (a 32-bit tag of the hash and the value), so a lookup
//! touches one cache line in the common case, and a caller that knows the hashes of a whole
//! batch [`prefetch`](HashIndex::prefetch)es the buckets of the lookups
//! [`PREFETCH_AHEAD`] ahead of the one it is doing: their misses overlap instead of following
//! each other.
//!
//! Open addressing with linear probing, at most seven eighths full (the table doubles before
//! it would pass that, so a probe always meets an empty bucket). Three quarters, as before,
//! doubled every table of a store at 98,305 series: at 100,000 each of `m3 local`'s four (three
//! heads and the coordinator's series cache) held 2 MiB, five eighths of it empty. At seven
//! eighths a lookup that finds its value reads 4.5 buckets on average at the fullest, 36
//! bytes, most often in one cache line (2.5 at three quarters). `head/append/100k`, whose table
//! then runs three quarters full instead of three eighths, took 384–421 µs per 2,000 samples in
//! three runs against 383–387 in two, alternated: a few percent of a lookup for a sixth of the
//! memory on average, half at the counts just past a doubling. The bucket a hash starts at
//! and its tag both come from the hash's high 32 bits, so growing and removing (which shifts
//! the buckets after the removed one back, leaving no tombstones) need nothing but the
//! buckets. A tag is a filter, not an identity: a lookup confirms every bucket whose tag
//! matches with the caller's `eq`.

use prefetch_index::prefetch_index;

/// How many lookups ahead of the current one a batch prefetches: about as many cache misses as
/// a core keeps in flight, and far fewer than a batch's lookups.
pub const PREFETCH_AHEAD: usize = 16;

/// One bucket: `tag` 0 is empty.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Bucket {
    tag: u32,
    value: u32,
}

/// The smallest table allocated (buckets).
const MIN_BUCKETS: usize = 16;

/// The tag of `hash`: its high half, never 0 (0 marks an empty bucket).
fn tag_of(hash: u64) -> u32 {
    ((hash >> 32) as u32).max(1)
}

/// Values found by hash; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct HashIndex {
    /// Empty, or a power of two of buckets.
    buckets: Vec<Bucket>,
    len: usize,
}

impl HashIndex {
    /// An empty index; it allocates on the first insert.
    pub fn new() -> HashIndex {
        HashIndex::default()
    }

    /// Values held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no value is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Heap bytes held.
    pub fn allocation_size(&self) -> usize {
        self.buckets.capacity() * std::mem::size_of::<Bucket>()
    }

    /// The bucket a lookup of `tag` starts at (the table is not empty).
    fn home(&self, tag: u32) -> usize {
        tag as usize & (self.buckets.len() - 1)
    }

    /// Starts loading the bucket a lookup of `hash` starts at into the cache, without waiting
    /// for it.
    pub fn prefetch(&self, hash: u64) {
        if !self.buckets.is_empty() {
            prefetch_index(&self.buckets, self.home(tag_of(hash)));
        }
    }

    /// The first value stored under `hash` for which `eq` holds.
    pub fn find(&self, hash: u64, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
        if self.buckets.is_empty() {
            return None;
        }
        let tag = tag_of(hash);
        let mask = self.buckets.len() - 1;
        let mut i = self.home(tag);
        loop {
            let bucket = self.buckets[i];
            if bucket.tag == 0 {
                return None;
            }
            if bucket.tag == tag && eq(bucket.value) {
                return Some(bucket.value);
            }
            i = (i + 1) & mask;
        }
    }

    /// Stores `value` under `hash`. The caller knows it is not stored there yet (a second
    /// insert would store it twice).
    pub fn insert(&mut self, hash: u64, value: u32) {
        if (self.len + 1) * 8 > self.buckets.len() * 7 {
            self.grow();
        }
        self.place(Bucket {
            tag: tag_of(hash),
            value,
        });
        self.len += 1;
    }

    /// Puts `bucket` in the first empty bucket from its home on (there is one).
    fn place(&mut self, bucket: Bucket) {
        let mask = self.buckets.len() - 1;
        let mut i = self.home(bucket.tag);
        while self.buckets[i].tag != 0 {
            i = (i + 1) & mask;
        }
        self.buckets[i] = bucket;
    }

    /// Doubles the table (or allocates the first one) and places every value again.
    fn grow(&mut self) {
        self.rebuild((self.buckets.len() * 2).max(MIN_BUCKETS));
    }

    /// Places every value again in a table of `buckets` (a power of two that holds them).
    fn rebuild(&mut self, buckets: usize) {
        let old = std::mem::replace(&mut self.buckets, vec![Bucket::default(); buckets]);
        for bucket in old {
            if bucket.tag != 0 {
                self.place(bucket);
            }
        }
    }

    /// Gives memory back after many removals: once at most a sixteenth of the buckets hold a
    /// value, places them again in a table at most half full. A table only grows otherwise,
    /// so series that came and went (pods replaced) would keep the largest size it ever had.
    /// Returns whether it shrank.
    pub fn shrink_if_sparse(&mut self) -> bool {
        if self.buckets.len() <= MIN_BUCKETS || self.len * 16 > self.buckets.len() {
            return false;
        }
        self.rebuild((self.len * 2).next_power_of_two().max(MIN_BUCKETS));
        true
    }

    /// Stores `new` in place of `old` under `hash` (a value that moved); `false` if `old` is
    /// not stored there.
    pub fn replace(&mut self, hash: u64, old: u32, new: u32) -> bool {
        match self.position(hash, old) {
            Some(i) => {
                self.buckets[i].value = new;
                true
            }
            None => false,
        }
    }

    /// The bucket holding `value` under `hash`.
    fn position(&self, hash: u64, value: u32) -> Option<usize> {
        if self.buckets.is_empty() {
            return None;
        }
        let wanted = Bucket {
            tag: tag_of(hash),
            value,
        };
        let mask = self.buckets.len() - 1;
        let mut i = self.home(wanted.tag);
        loop {
            let bucket = self.buckets[i];
            if bucket.tag == 0 {
                return None;
            }
            if bucket == wanted {
                return Some(i);
            }
            i = (i + 1) & mask;
        }
    }

    /// Removes `value` stored under `hash`; `false` if it is not stored there.
    pub fn remove(&mut self, hash: u64, value: u32) -> bool {
        let Some(mut hole) = self.position(hash, value) else {
            return false;
        };
        let mask = self.buckets.len() - 1;
        // Shift back every following bucket of the run that may sit at the hole: one whose
        // home is not after the hole, so that its lookup still passes no empty bucket.
        let mut next = (hole + 1) & mask;
        loop {
            let bucket = self.buckets[next];
            if bucket.tag == 0 {
                break;
            }
            let from_home = next.wrapping_sub(self.home(bucket.tag)) & mask;
            let from_hole = next.wrapping_sub(hole) & mask;
            if from_home >= from_hole {
                self.buckets[hole] = bucket;
                hole = next;
            }
            next = (next + 1) & mask;
        }
        self.buckets[hole] = Bucket::default();
        self.len -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    /// The hash a test stores `value` under: one of 32, so tags and homes collide often
    /// (high halves 0..8, where 0 and 1 give the same tag; low halves 0..4).
    fn hash_of(value: u32) -> u64 {
        (u64::from(value % 8) << 32) | u64::from(value / 8 % 4)
    }

    proptest! {
        /// Against a set of values: after any inserts, removes and moves, each value is found under
        /// its hash exactly when the model holds it, and the lengths agree.
        #[test]
        fn finds_what_a_model_holds(ops in proptest::collection::vec((0u8..3, 0u32..64), 0..300)) {
            let mut index = HashIndex::new();
            let mut model = HashSet::new();
            for (op, value) in ops {
                match op {
                    0 => {
                        if model.insert(value) {
                            index.insert(hash_of(value), value);
                        }
                    }
                    1 => prop_assert_eq!(index.remove(hash_of(value), value), model.remove(&value)),
                    _ => {
                        // Values stay under their hash: `value` + 32 has the same one.
                        let moved = (value + 32) % 64;
                        let (has_value, has_moved) = (model.contains(&value), model.contains(&moved));
                        if !(has_value && has_moved) {
                            prop_assert_eq!(index.replace(hash_of(value), value, moved), has_value);
                            if has_value {
                                model.remove(&value);
                                model.insert(moved);
                            }
                        }
                    }
                }
                // Shrinking (when sparse) keeps every value where a lookup finds it.
                index.shrink_if_sparse();
                prop_assert_eq!(index.len(), model.len());
                for v in 0u32..64 {
                    let found = index.find(hash_of(v), |x| x == v) == Some(v);
                    prop_assert_eq!(found, model.contains(&v), "value {}", v);
                }
            }
        }
    }

    #[test]
    fn an_empty_index_finds_and_removes_nothing() {
        let mut index = HashIndex::new();
        index.prefetch(7);
        assert_eq!(index.find(7, |_| true), None);
        assert!(!index.remove(7, 1));
        assert_eq!(index.allocation_size(), 0);
    }

    #[test]
    fn grows_past_seven_eighths_and_keeps_every_value() {
        let mut index = HashIndex::new();
        let hash = |v: u32| u64::from(v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for v in 0..10_000u32 {
            index.insert(hash(v), v);
            assert!(index.len() * 8 <= index.buckets.len() * 7);
        }
        // 14,336 values fit 16,384 buckets at seven eighths (12,288 did at three quarters).
        for v in 10_000..14_336u32 {
            index.insert(hash(v), v);
        }
        assert_eq!(index.buckets.len(), 16_384);
        for v in 0..14_336u32 {
            assert_eq!(index.find(hash(v), |x| x == v), Some(v));
        }
        index.insert(hash(14_336), 14_336);
        assert_eq!(index.buckets.len(), 32_768, "past seven eighths it doubles");
        for v in 0..=14_336u32 {
            assert_eq!(index.find(hash(v), |x| x == v), Some(v));
        }
        assert_eq!(index.find(hash(20_000), |x| x == 20_000), None);
    }

    #[test]
    fn shrinks_once_sparse_and_keeps_every_value() {
        let mut index = HashIndex::new();
        let hash = |v: u32| u64::from(v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for v in 0..10_000u32 {
            index.insert(hash(v), v);
        }
        for v in 0..8_900u32 {
            assert!(index.remove(hash(v), v));
        }
        assert!(
            !index.shrink_if_sparse(),
            "1,100 of 16,384: not sparse enough"
        );
        for v in 8_900..9_500u32 {
            assert!(index.remove(hash(v), v));
        }
        assert!(index.shrink_if_sparse());
        assert_eq!(index.buckets.len(), 1_024, "500 values at most half full");
        assert!(!index.shrink_if_sparse());
        for v in 0..10_000u32 {
            let want = (v >= 9_500).then_some(v);
            assert_eq!(index.find(hash(v), |x| x == v), want);
        }
        for v in 0..10_000u32 {
            if v < 9_500 {
                index.insert(hash(v), v);
            }
        }
        assert_eq!(index.len(), 10_000);
        assert_eq!(index.buckets.len(), 16_384);
    }
}
