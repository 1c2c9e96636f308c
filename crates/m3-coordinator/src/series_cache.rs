//! The series the coordinator has routed before: for each, its tag-encoded ID and the ID's
//! murmur3 (which picks its shard), so a series Prometheus sends again every scrape is routed
//! after one lookup instead of being tag-encoded and hashed again.
//!
//! A series is known by its label bytes ([`SeriesRef::label_bytes`]): the same labels written
//! the same way. An entry is found through a [`HashIndex`] of the label bytes' hash and
//! confirmed by comparing the bytes, so two series never share an entry.
//!
//! Entries lie one after the other in chunks of [`CHUNK_BYTES`] (a header, the label bytes,
//! the ID), so a lookup touches the index's bucket and one place in a chunk, and the cache
//! holds no allocation per series. It is bounded in bytes: when a new chunk would pass the
//! bound, the cache is emptied and refills with the series still being written (as
//! `m3_rules::MatchCache` does), which keeps the bound without an LRU's bookkeeping on the
//! hot path.
//!
//! A request reads the cache under one read lock for its whole loop over series (nothing
//! under it waits for I/O) and adds the series it did not find afterwards, under the write
//! lock, once ([`NewSeries`]).
//!
//! [`SeriesRef::label_bytes`]: crate::remote_write::SeriesRef::label_bytes

use std::hash::BuildHasher;

use m3_hash_index::HashIndex;
use parking_lot::{RwLock, RwLockReadGuard};

/// The size of one chunk of entries; an entry larger than this is not cached.
pub const CHUNK_BYTES: usize = 1 << 20;

/// The default bound of a cache: about 600,000 series of ten labels.
pub const DEFAULT_MAX_BYTES: usize = 256 << 20;

/// The most a request's [`NewSeries`] keeps allocated between requests.
const NEW_SERIES_RETAINED_BYTES: usize = 256 << 10;

/// Cache lines of an entry [`CacheView::prefetch_entries`] loads.
const PREFETCH_LINES: usize = 3;

/// Cache lines of an ID [`CacheView::prefetch_series`] loads: a Prometheus series' ID of ten
/// labels or so.
const PREFETCH_ID_LINES: usize = 4;

/// An entry's header: the label bytes' length, the ID's length, the ID's murmur3.
const HEADER_BYTES: usize = 12;

/// The series seen before, shared by every request.
#[derive(Debug)]
pub struct SeriesCache {
    hasher: hashbrown::DefaultHashBuilder,
    max_chunks: usize,
    table: RwLock<Table>,
}

#[derive(Debug, Default)]
struct Table {
    /// Hash of the label bytes → the entry's offset (chunk × [`CHUNK_BYTES`] + position).
    index: HashIndex,
    chunks: Vec<Vec<u8>>,
}

/// A series found in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachedSeries<'a> {
    /// The tag-encoded ID.
    pub id: &'a [u8],
    /// `murmur3_32` of the ID.
    pub id_hash: u32,
}

/// Where a series is in a [`CacheView`]: its entry's offset and the length of its label
/// bytes (which says where its ID starts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSlot {
    entry: u32,
    label_len: u32,
}

/// The cache as one request reads it.
#[derive(Debug)]
pub struct CacheView<'a> {
    table: RwLockReadGuard<'a, Table>,
}

/// Series a request did not find, kept until it adds them all at once.
#[derive(Debug, Default)]
pub struct NewSeries {
    /// Per series: the hash of its label bytes and where its entry starts in `entries`.
    keys: Vec<(u64, usize)>,
    /// The entries, laid out as in a chunk.
    entries: Vec<u8>,
}

impl SeriesCache {
    /// A cache of at most `max_bytes`, in whole chunks (at least one); 0: a cache that keeps
    /// nothing.
    pub fn new(max_bytes: usize) -> SeriesCache {
        // Offsets are `u32`s.
        let max_bytes = max_bytes.min(u32::MAX as usize);
        let max_chunks = match max_bytes {
            0 => 0,
            _ => (max_bytes / CHUNK_BYTES).max(1),
        };
        SeriesCache {
            hasher: hashbrown::DefaultHashBuilder::default(),
            max_chunks,
            table: RwLock::new(Table::default()),
        }
    }

    /// The hash a series is found by.
    pub fn key(&self, label_bytes: &[u8]) -> u64 {
        self.hasher.hash_one(label_bytes)
    }

    /// The cache for one request's lookups.
    pub fn read(&self) -> CacheView<'_> {
        CacheView {
            table: self.table.read(),
        }
    }

    /// Whether the cache keeps anything (its bound is not 0).
    pub fn is_enabled(&self) -> bool {
        self.max_chunks > 0
    }

    /// Series cached.
    pub fn len(&self) -> usize {
        self.table.read().index.len()
    }

    /// Whether no series is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held by the chunks and the index.
    pub fn allocated_bytes(&self) -> usize {
        let table = self.table.read();
        table.chunks.len() * CHUNK_BYTES + table.index.allocation_size()
    }

    /// Adds the series of `new` that are not cached yet (another request may have added one
    /// meanwhile), and empties `new`.
    pub fn insert(&self, new: &mut NewSeries) {
        if new.keys.is_empty() || self.max_chunks == 0 {
            new.clear();
            return;
        }
        let mut table = self.table.write();
        for (i, &(key, start)) in new.keys.iter().enumerate() {
            let end = new
                .keys
                .get(i + 1)
                .map_or(new.entries.len(), |&(_, next)| next);
            let entry = &new.entries[start..end];
            let Some(label_bytes) = entry_parts(entry).map(|(labels, _, _)| labels) else {
                continue;
            };
            if table.find(key, label_bytes).is_none() {
                table.add(key, entry, self.max_chunks);
            }
        }
        new.clear();
    }
}

impl Table {
    fn entry(&self, offset: u32) -> Option<(&[u8], &[u8], u32)> {
        let offset = offset as usize;
        let chunk = self.chunks.get(offset / CHUNK_BYTES)?;
        entry_parts(chunk.get(offset % CHUNK_BYTES..)?)
    }

    fn find(&self, key: u64, label_bytes: &[u8]) -> Option<u32> {
        self.index.find(key, |offset| {
            self.entry(offset)
                .is_some_and(|(labels, _, _)| labels == label_bytes)
        })
    }

    /// Appends `entry` (header and bytes) and indexes it under `key`.
    fn add(&mut self, key: u64, entry: &[u8], max_chunks: usize) {
        if entry.len() > CHUNK_BYTES {
            return;
        }
        let fits = self
            .chunks
            .last()
            .is_some_and(|chunk| chunk.len() + entry.len() <= CHUNK_BYTES);
        if !fits {
            if self.chunks.len() >= max_chunks {
                self.chunks.clear();
                self.index = HashIndex::new();
            }
            self.chunks.push(Vec::with_capacity(CHUNK_BYTES));
        }
        let chunk_number = self.chunks.len() - 1;
        let Some(chunk) = self.chunks.last_mut() else {
            return;
        };
        let offset = chunk_number * CHUNK_BYTES + chunk.len();
        let Ok(offset) = u32::try_from(offset) else {
            return;
        };
        chunk.extend_from_slice(entry);
        self.index.insert(key, offset);
    }
}

/// Splits an entry that starts `bytes` into its label bytes, ID and ID hash.
fn entry_parts(bytes: &[u8]) -> Option<(&[u8], &[u8], u32)> {
    let header = bytes.get(..HEADER_BYTES)?;
    let word = |i: usize| {
        let mut le = [0u8; 4];
        le.copy_from_slice(&header[i * 4..i * 4 + 4]);
        u32::from_le_bytes(le)
    };
    let (label_len, id_len, id_hash) = (word(0) as usize, word(1) as usize, word(2));
    let rest = &bytes[HEADER_BYTES..];
    let labels = rest.get(..label_len)?;
    let id = rest.get(label_len..label_len + id_len)?;
    Some((labels, id, id_hash))
}

impl CacheView<'_> {
    /// Starts loading what a lookup of `key` reads first; see [`HashIndex::prefetch`].
    pub fn prefetch(&self, key: u64) {
        self.table.index.prefetch(key);
    }

    /// Starts loading the entries a lookup of `key` compares, when their buckets are in the
    /// processor's cache already (prefetched before): the second stage of a lookup's two
    /// misses.
    pub fn prefetch_entries(&self, key: u64) {
        let table = &*self.table;
        table.index.find(key, |offset| {
            let offset = offset as usize;
            if let Some(chunk) = table.chunks.get(offset / CHUNK_BYTES) {
                // The header and the first label bytes; the comparison's sequential reads
                // bring the rest.
                for line in 0..PREFETCH_LINES {
                    prefetch_index::prefetch_index(chunk, offset % CHUNK_BYTES + line * 64);
                }
            }
            false
        });
    }

    /// Starts loading the header and the ID of the series at `slot`, found earlier, which
    /// [`series`](Self::series) reads: between its lookup and its use a request reads every
    /// other series, which pushes the entry out of the processor's nearer caches.
    pub fn prefetch_series(&self, slot: CacheSlot) {
        let offset = slot.entry as usize;
        if let Some(chunk) = self.table.chunks.get(offset / CHUNK_BYTES) {
            let start = offset % CHUNK_BYTES;
            prefetch_index::prefetch_index(chunk, start);
            let id_start = start + HEADER_BYTES + slot.label_len as usize;
            for line in 0..PREFETCH_ID_LINES {
                prefetch_index::prefetch_index(chunk, id_start + line * 64);
            }
        }
    }

    /// The series with these label bytes (`key` = [`SeriesCache::key`] of them).
    pub fn get(&self, key: u64, label_bytes: &[u8]) -> Option<CachedSeries<'_>> {
        self.series(self.find(key, label_bytes)?)
    }

    /// Where the series with these label bytes is, to read it later with
    /// [`series`](Self::series) or prefetch with [`prefetch_series`](Self::prefetch_series)
    /// (a slot is two numbers, no borrow: a request can keep one per series in a reused
    /// buffer).
    pub fn find(&self, key: u64, label_bytes: &[u8]) -> Option<CacheSlot> {
        let entry = self.table.find(key, label_bytes)?;
        Some(CacheSlot {
            entry,
            // An entry's label bytes fit a chunk, so their length fits a `u32`.
            label_len: u32::try_from(label_bytes.len()).unwrap_or(u32::MAX),
        })
    }

    /// The series at `slot`, found in this view.
    pub fn series(&self, slot: CacheSlot) -> Option<CachedSeries<'_>> {
        let (_, id, id_hash) = self.table.entry(slot.entry)?;
        Some(CachedSeries { id, id_hash })
    }
}

impl NewSeries {
    /// Remembers a series to add: its key, label bytes, ID and ID hash. A series too large
    /// for a chunk is not remembered.
    pub fn push(&mut self, key: u64, label_bytes: &[u8], id: &[u8], id_hash: u32) {
        if HEADER_BYTES + label_bytes.len() + id.len() > CHUNK_BYTES {
            return;
        }
        self.keys.push((key, self.entries.len()));
        self.entries
            .extend_from_slice(&(label_bytes.len() as u32).to_le_bytes());
        self.entries
            .extend_from_slice(&(id.len() as u32).to_le_bytes());
        self.entries.extend_from_slice(&id_hash.to_le_bytes());
        self.entries.extend_from_slice(label_bytes);
        self.entries.extend_from_slice(id);
    }

    /// Series remembered.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Forgets every series; a buffer grown past [`NEW_SERIES_RETAINED_BYTES`] (by the first
    /// requests, when every series is new) is freed, as later requests bring few.
    fn clear(&mut self) {
        if self.capacity_bytes() > NEW_SERIES_RETAINED_BYTES {
            *self = NewSeries::default();
        } else {
            self.keys.clear();
            self.entries.clear();
        }
    }

    /// Whether no series is remembered.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Bytes held, for the scratch's retention bound.
    pub fn capacity_bytes(&self) -> usize {
        self.entries.capacity() + self.keys.capacity() * std::mem::size_of::<(u64, usize)>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn add(cache: &SeriesCache, labels: &[u8], id: &[u8], id_hash: u32) {
        let mut new = NewSeries::default();
        new.push(cache.key(labels), labels, id, id_hash);
        cache.insert(&mut new);
        assert!(new.is_empty());
    }

    fn get(cache: &SeriesCache, labels: &[u8]) -> Option<(Vec<u8>, u32)> {
        let view = cache.read();
        view.get(cache.key(labels), labels)
            .map(|s| (s.id.to_vec(), s.id_hash))
    }

    #[test]
    fn finds_what_was_added_by_its_exact_label_bytes() {
        let cache = SeriesCache::new(DEFAULT_MAX_BYTES);
        assert_eq!(get(&cache, b"a"), None);
        add(&cache, b"labels-a", b"id-a", 7);
        add(&cache, b"labels-b", b"id-b", 8);
        assert_eq!(get(&cache, b"labels-a"), Some((b"id-a".to_vec(), 7)));
        assert_eq!(get(&cache, b"labels-b"), Some((b"id-b".to_vec(), 8)));
        assert_eq!(get(&cache, b"labels-"), None);
        assert_eq!(get(&cache, b"labels-ab"), None);
        // Adding a series again keeps one entry.
        add(&cache, b"labels-a", b"id-a", 7);
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn series_that_share_a_hash_keep_their_own_entries() {
        let cache = SeriesCache::new(DEFAULT_MAX_BYTES);
        let mut new = NewSeries::default();
        new.push(42, b"one", b"id-1", 1);
        new.push(42, b"two", b"id-2", 2);
        cache.insert(&mut new);
        let view = cache.read();
        assert_eq!(view.get(42, b"one").map(|s| s.id), Some(b"id-1".as_slice()));
        assert_eq!(view.get(42, b"two").map(|s| s.id_hash), Some(2));
        assert_eq!(view.get(42, b"three"), None);
    }

    #[test]
    fn a_full_cache_empties_and_refills_within_its_bound() {
        let cache = SeriesCache::new(2 * CHUNK_BYTES);
        let id = vec![1u8; 1000];
        // About 1,000 entries per chunk: 5,000 series pass the two chunks twice.
        for i in 0..5000u32 {
            add(&cache, format!("series-{i}").as_bytes(), &id, i);
            assert!(cache.allocated_bytes() <= 2 * CHUNK_BYTES + (64 << 10));
        }
        assert!(cache.len() < 5000);
        assert_eq!(get(&cache, b"series-4999"), Some((id.clone(), 4999)));
        assert_eq!(get(&cache, b"series-0"), None, "emptied when full");
    }

    #[test]
    fn a_cache_of_no_bytes_keeps_nothing() {
        let cache = SeriesCache::new(0);
        add(&cache, b"labels", b"id", 1);
        assert_eq!(get(&cache, b"labels"), None);
        assert_eq!(cache.allocated_bytes(), 0);
    }

    #[test]
    fn an_entry_larger_than_a_chunk_is_not_cached() {
        let cache = SeriesCache::new(DEFAULT_MAX_BYTES);
        let labels = vec![b'x'; CHUNK_BYTES];
        add(&cache, &labels, b"id", 1);
        assert_eq!(get(&cache, &labels), None);
        assert!(cache.is_empty());
    }

    proptest! {
        #[test]
        fn agrees_with_a_map(
            series in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..40),
                 proptest::collection::vec(any::<u8>(), 0..40), any::<u32>()),
                0..200),
            batch in 1usize..20,
        ) {
            let cache = SeriesCache::new(DEFAULT_MAX_BYTES);
            let mut model: HashMap<Vec<u8>, (Vec<u8>, u32)> = HashMap::new();
            for group in series.chunks(batch) {
                let mut new = NewSeries::default();
                for (labels, id, hash) in group {
                    // The first of equal label bytes wins, as in the cache.
                    if !model.contains_key(labels) {
                        model.insert(labels.clone(), (id.clone(), *hash));
                    }
                    new.push(cache.key(labels), labels, id, *hash);
                }
                cache.insert(&mut new);
            }
            prop_assert_eq!(cache.len(), model.len());
            for (labels, want) in &model {
                let got = get(&cache, labels);
                prop_assert_eq!(got.as_ref(), Some(want));
            }
        }
    }
}
