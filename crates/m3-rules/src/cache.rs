//! Match results per series ID, so a series seen before costs one lookup.
//!
//! Prometheus sends the same series every scrape: matching its tags against every rule again
//! would cost more than everything else the write path does. The cache maps the series' ID
//! bytes to what the caller computed from the match (the encoded metadatas, the rollup IDs).
//! It is bounded: when full it is emptied and refills with the series still being written, which
//! keeps the bound without the bookkeeping of an LRU. Rules only change at restart, so nothing
//! else invalidates an entry.

use std::sync::Arc;

use hashbrown::HashMap;
use parking_lot::RwLock;

/// A bounded map from series ID to a shared value.
#[derive(Debug)]
pub struct MatchCache<V> {
    entries: RwLock<HashMap<Box<[u8]>, Arc<V>>>,
    capacity: usize,
}

impl<V> MatchCache<V> {
    /// A cache of at most `capacity` series (at least 1).
    pub fn new(capacity: usize) -> MatchCache<V> {
        MatchCache {
            entries: RwLock::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// The value for `id`, computing and keeping it when absent.
    pub fn get_or_insert_with(&self, id: &[u8], compute: impl FnOnce() -> V) -> Arc<V> {
        if let Some(v) = self.entries.read().get(id) {
            return Arc::clone(v);
        }
        let value = Arc::new(compute());
        let mut entries = self.entries.write();
        if entries.len() >= self.capacity {
            entries.clear();
        }
        entries.insert(id.into(), Arc::clone(&value));
        value
    }

    /// Series cached.
    pub fn len(&self) -> usize {
        self.entries.read().len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
}
