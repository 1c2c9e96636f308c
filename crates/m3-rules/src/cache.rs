//! Match results per series ID, so a series seen before costs one lookup.
//!
//! Prometheus sends the same series every scrape: matching its tags against every rule again
//! would cost more than everything else the write path does. The cache maps the series' ID
//! bytes to what the caller computed from the match (the encoded metadatas, the rollup IDs).
//! It is bounded in series and in bytes: when either bound would be passed it is emptied and
//! refills with the series still being written, which keeps the bound without the bookkeeping
//! of an LRU. The byte bound is what keeps long IDs and many rollup targets per series (each an
//! ID of its own) from making a series bound of a million cost gigabytes. Rules only change at
//! restart, so nothing else invalidates an entry.

use std::sync::Arc;

use hashbrown::HashMap;
use parking_lot::RwLock;

/// A map from series ID to a shared value, bounded in entries and in bytes.
#[derive(Debug)]
pub struct MatchCache<V> {
    cached: RwLock<Cached<V>>,
    capacity: usize,
    max_bytes: usize,
    /// The heap bytes a value holds beyond its own size.
    heap_bytes: fn(&V) -> usize,
}

#[derive(Debug)]
struct Cached<V> {
    entries: HashMap<Box<[u8]>, Arc<V>>,
    /// What the entries cost, as [`MatchCache::cost`] counts it.
    bytes: usize,
}

impl<V> MatchCache<V> {
    /// A cache of at most `capacity` series (at least 1), not bounded in bytes.
    pub fn new(capacity: usize) -> MatchCache<V> {
        MatchCache::bounded(capacity, usize::MAX, |_| 0)
    }

    /// A cache of at most `capacity` series (at least 1) costing at most `max_bytes`: each
    /// entry's ID, the value with the heap bytes `heap_bytes` says it holds, and the map's
    /// and the shared pointer's share.
    pub fn bounded(
        capacity: usize,
        max_bytes: usize,
        heap_bytes: fn(&V) -> usize,
    ) -> MatchCache<V> {
        MatchCache {
            cached: RwLock::new(Cached {
                entries: HashMap::new(),
                bytes: 0,
            }),
            capacity: capacity.max(1),
            max_bytes,
            heap_bytes,
        }
    }

    /// What keeping `value` under `id` costs.
    fn cost(&self, id: &[u8], value: &V) -> usize {
        // The map's slot, the reference counts beside the value, and the value itself.
        let fixed = std::mem::size_of::<(Box<[u8]>, Arc<V>)>()
            + 2 * std::mem::size_of::<usize>()
            + std::mem::size_of::<V>();
        fixed + id.len() + (self.heap_bytes)(value)
    }

    /// The value for `id`, computing and keeping it when absent.
    pub fn get_or_insert_with(&self, id: &[u8], compute: impl FnOnce() -> V) -> Arc<V> {
        if let Some(v) = self.cached.read().entries.get(id) {
            return Arc::clone(v);
        }
        let value = Arc::new(compute());
        let cost = self.cost(id, &value);
        let mut cached = self.cached.write();
        // Another caller may have kept it meanwhile.
        if let Some(v) = cached.entries.get(id) {
            return Arc::clone(v);
        }
        if cached.entries.len() >= self.capacity
            || cached.bytes.saturating_add(cost) > self.max_bytes
        {
            cached.entries.clear();
            cached.bytes = 0;
        }
        // A value alone over the budget is computed every time rather than kept.
        if cost <= self.max_bytes {
            cached.entries.insert(id.into(), Arc::clone(&value));
            cached.bytes += cost;
        }
        value
    }

    /// Series cached.
    pub fn len(&self) -> usize {
        self.cached.read().entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What the cached entries cost in bytes, as the byte bound counts it.
    pub fn bytes(&self) -> usize {
        self.cached.read().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn computes_once_and_stays_bounded() {
        let cache = MatchCache::new(2);
        let mut calls = 0;
        for id in [b"a", b"a", b"b", b"a"] {
            cache.get_or_insert_with(id, || {
                calls += 1;
                id[0]
            });
        }
        assert_eq!(calls, 2);
        cache.get_or_insert_with(b"c", || b'c');
        assert_eq!(cache.len(), 1, "emptied when full, then refilled");
        assert_eq!(*cache.get_or_insert_with(b"c", || 0), b'c');
    }

    #[test]
    fn long_ids_and_large_values_are_bounded_in_bytes() {
        const BUDGET: usize = 64 * 1024;
        let cache: MatchCache<Vec<u8>> = MatchCache::bounded(1_000_000, BUDGET, Vec::capacity);
        for i in 0..10_000u32 {
            let id = format!("{i:0>250}");
            let value = cache.get_or_insert_with(id.as_bytes(), || vec![0u8; 500]);
            assert_eq!(value.len(), 500);
            assert!(cache.bytes() <= BUDGET, "{} bytes at {i}", cache.bytes());
        }
        // Each entry costs its ID, the value's heap and its fixed share: about 800 bytes.
        let entries = cache.len();
        assert!((40..=BUDGET / 750).contains(&entries), "{entries} entries");
        // A value alone over the budget is not kept, and the rest stays.
        let huge = cache.get_or_insert_with(b"huge", || vec![0u8; BUDGET]);
        assert_eq!(huge.len(), BUDGET);
        assert!(cache.bytes() <= BUDGET);
        let mut computed = false;
        cache.get_or_insert_with(b"huge", || {
            computed = true;
            Vec::new()
        });
        assert!(computed, "a value over the budget is computed again");
    }
}
