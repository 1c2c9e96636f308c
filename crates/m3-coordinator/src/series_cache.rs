//! The series the coordinator has routed before: for each, its tag-encoded ID and the ID's
//! murmur3 (which picks its shard), so a series Prometheus sends again every scrape is routed
//! after one lookup instead of being tag-encoded and hashed again.
//!
//! A series is known by a 128-bit hash of its label bytes ([`SeriesRef::label_bytes`]: the
//! same labels written the same way), XXH3 under a seed drawn at start ([`SeriesKey`]). Half
//! of it finds the entry through a [`HashIndex`], the other half, kept in the entry, confirms
//! it. The label bytes themselves are not kept: they were half of an entry (some 270 of 530
//! bytes for a series of ten labels, 27 MB of `m3 local`'s memory at 100,000 series), and the
//! comparison with them read four cache lines where the check reads one. Two series share an
//! entry only if their label bytes agree in all 128 bits, about once in 2^100 lookups at a
//! million series (as M3 itself knows a series in an aggregator by a 128-bit murmur3 of its
//! ID); the seed, unknown outside the process, keeps anyone from choosing label sets that
//! collide.
//!
//! Entries lie one after the other in chunks of [`CHUNK_BYTES`] (a header, then the ID), so a
//! lookup touches the index's bucket and one place in a chunk, and the cache holds no
//! allocation per series. It is bounded in bytes: when a new chunk would pass the bound, the
//! cache is emptied and refills with the series still being written (as
//! `m3_rules::MatchCache` does), which keeps the bound without an LRU's bookkeeping on the
//! hot path.
//!
//! A cache built [`without_ids`](SeriesCache::without_ids) keeps the header only (16 bytes a
//! series where the ID takes some 150 more): its series are still neither checked nor hashed
//! again, but their IDs are encoded again. That is the trade for a process that holds every
//! series in memory anyway (`m3 local`'s embedded store), where the IDs would be a second copy
//! of every label set.
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

/// The default bound of a cache: about a million series of ten labels.
pub const DEFAULT_MAX_BYTES: usize = 256 << 20;

/// The most a request's [`NewSeries`] keeps allocated between requests.
const NEW_SERIES_RETAINED_BYTES: usize = 256 << 10;

/// Cache lines of an ID [`CacheView::prefetch_series`] loads: a Prometheus series' ID of ten
/// labels or so.
const PREFETCH_ID_LINES: usize = 4;

/// An entry's header: the ID's length, the ID's murmur3, the key's check half.
const HEADER_BYTES: usize = 16;

/// What a series is known by: the 128-bit hash of its label bytes, in two halves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesKey {
    /// Finds the entry in the index.
    index: u64,
    /// Kept in the entry, confirms it.
    check: u64,
}

/// The series seen before, shared by every request.
#[derive(Debug)]
pub struct SeriesCache {
    seed: u64,
    max_chunks: usize,
    /// Whether entries keep the series' IDs.
    keeps_ids: bool,
    table: RwLock<Table>,
}

#[derive(Debug, Default)]
struct Table {
    /// [`SeriesKey::index`] → the entry's offset (chunk × [`CHUNK_BYTES`] + position).
    index: HashIndex,
    chunks: Vec<Vec<u8>>,
}

/// A series found in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachedSeries<'a> {
    /// The tag-encoded ID; `None` in a cache [`without_ids`](SeriesCache::without_ids).
    pub id: Option<&'a [u8]>,
    /// `murmur3_32` of the ID.
    pub id_hash: u32,
}

/// Where a series is in a [`CacheView`]: its entry's offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSlot {
    entry: u32,
}

/// The cache as one request reads it.
#[derive(Debug)]
pub struct CacheView<'a> {
    table: RwLockReadGuard<'a, Table>,
    /// Cache lines [`prefetch_series`](Self::prefetch_series) loads.
    entry_lines: usize,
}

/// Series a request did not find, kept until it adds them all at once.
#[derive(Debug, Default)]
pub struct NewSeries {
    /// Per series: its key and where its entry starts in `entries`.
    keys: Vec<(SeriesKey, usize)>,
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
        // The process's random hash state, as a seed.
        let seed = hashbrown::DefaultHashBuilder::default().hash_one(0x5eed_u64);
        SeriesCache {
            seed,
            max_chunks,
            keeps_ids: true,
            table: RwLock::new(Table::default()),
        }
    }

    /// The same cache keeping no IDs: a series found is known to have valid labels and its
    /// ID's hash is known, but the ID must be encoded again (see the module docs).
    #[must_use]
    pub fn without_ids(mut self) -> SeriesCache {
        self.keeps_ids = false;
        self
    }

    /// Whether entries keep the series' IDs; when not, [`NewSeries::push`] is given none.
    pub fn keeps_ids(&self) -> bool {
        self.keeps_ids
    }

    /// What the series with these label bytes is found by.
    pub fn key(&self, label_bytes: &[u8]) -> SeriesKey {
        let hash = twox_hash::XxHash3_128::oneshot_with_seed(self.seed, label_bytes);
        SeriesKey {
            index: hash as u64,
            check: (hash >> 64) as u64,
        }
    }

    /// The cache for one request's lookups.
    pub fn read(&self) -> CacheView<'_> {
        CacheView {
            table: self.table.read(),
            entry_lines: if self.keeps_ids { PREFETCH_ID_LINES } else { 1 },
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
        self.table.read().allocated_bytes()
    }

    /// Adds the series of `new` that are not cached yet (another request may have added one
    /// meanwhile), and empties `new`. Returns the series cached and the bytes held after, if
    /// `new` had any series to add.
    pub fn insert(&self, new: &mut NewSeries) -> Option<CacheSize> {
        if new.keys.is_empty() || self.max_chunks == 0 {
            new.clear();
            return None;
        }
        let mut table = self.table.write();
        for (i, &(key, start)) in new.keys.iter().enumerate() {
            let end = new
                .keys
                .get(i + 1)
                .map_or(new.entries.len(), |&(_, next)| next);
            let entry = &new.entries[start..end];
            if table.find(key).is_none() {
                table.add(key, entry, self.max_chunks);
            }
        }
        new.clear();
        Some(CacheSize {
            series: table.index.len(),
            bytes: table.allocated_bytes(),
        })
    }
}

/// How much a [`SeriesCache`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSize {
    /// Series cached.
    pub series: usize,
    /// The chunks' bytes (whole chunks) and the index's.
    pub bytes: usize,
}

impl Table {
    fn allocated_bytes(&self) -> usize {
        self.chunks.len() * CHUNK_BYTES + self.index.allocation_size()
    }

    fn entry(&self, offset: u32) -> Option<Entry<'_>> {
        let offset = offset as usize;
        let chunk = self.chunks.get(offset / CHUNK_BYTES)?;
        Entry::read(chunk.get(offset % CHUNK_BYTES..)?)
    }

    fn find(&self, key: SeriesKey) -> Option<u32> {
        self.index.find(key.index, |offset| {
            self.entry(offset)
                .is_some_and(|entry| entry.check == key.check)
        })
    }

    /// Appends `entry` (header and ID) and indexes it under `key`.
    fn add(&mut self, key: SeriesKey, entry: &[u8], max_chunks: usize) {
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
        self.index.insert(key.index, offset);
    }
}

/// One entry as a chunk holds it: `id_len: u32 | id_hash: u32 | check: u64 | ID`, little-endian;
/// `id_len` 0 when the ID is not kept (a tag-encoded ID is never empty).
struct Entry<'a> {
    id: Option<&'a [u8]>,
    id_hash: u32,
    check: u64,
}

impl<'a> Entry<'a> {
    /// The entry that starts `bytes`.
    fn read(bytes: &'a [u8]) -> Option<Entry<'a>> {
        let (header, rest) = bytes.split_first_chunk::<HEADER_BYTES>()?;
        let (id_len, rest_of_header) = header.split_first_chunk::<4>()?;
        let (id_hash, check) = rest_of_header.split_first_chunk::<4>()?;
        let check: [u8; 8] = check.try_into().ok()?;
        let id = rest.get(..u32::from_le_bytes(*id_len) as usize)?;
        Some(Entry {
            id: (!id.is_empty()).then_some(id),
            id_hash: u32::from_le_bytes(*id_hash),
            check: u64::from_le_bytes(check),
        })
    }

    /// Appends the entry for `id` (empty: not kept) under `key` to `out`.
    fn write(key: SeriesKey, id: &[u8], id_hash: u32, out: &mut Vec<u8>) {
        // `NewSeries::push` keeps entries within a chunk, so the length fits.
        out.extend_from_slice(&(id.len() as u32).to_le_bytes());
        out.extend_from_slice(&id_hash.to_le_bytes());
        out.extend_from_slice(&key.check.to_le_bytes());
        out.extend_from_slice(id);
    }
}

impl CacheView<'_> {
    /// Starts loading what a lookup of `key` reads first; see [`HashIndex::prefetch`].
    pub fn prefetch(&self, key: SeriesKey) {
        self.table.index.prefetch(key.index);
    }

    /// Starts loading the headers a lookup of `key` checks, when their buckets are in the
    /// processor's cache already (prefetched before): the second stage of a lookup's two
    /// misses.
    pub fn prefetch_entries(&self, key: SeriesKey) {
        let table = &*self.table;
        table.index.find(key.index, |offset| {
            let offset = offset as usize;
            if let Some(chunk) = table.chunks.get(offset / CHUNK_BYTES) {
                prefetch_index::prefetch_index(chunk, offset % CHUNK_BYTES);
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
            for line in 0..self.entry_lines {
                prefetch_index::prefetch_index(chunk, start + line * 64);
            }
        }
    }

    /// The series with `key` ([`SeriesCache::key`] of its label bytes).
    pub fn get(&self, key: SeriesKey) -> Option<CachedSeries<'_>> {
        self.series(self.find(key)?)
    }

    /// Where the series with `key` is, to read it later with [`series`](Self::series) or
    /// prefetch with [`prefetch_series`](Self::prefetch_series) (a slot is a number, no
    /// borrow: a request can keep one per series in a reused buffer).
    pub fn find(&self, key: SeriesKey) -> Option<CacheSlot> {
        let entry = self.table.find(key)?;
        Some(CacheSlot { entry })
    }

    /// The series at `slot`, found in this view.
    pub fn series(&self, slot: CacheSlot) -> Option<CachedSeries<'_>> {
        let entry = self.table.entry(slot.entry)?;
        Some(CachedSeries {
            id: entry.id,
            id_hash: entry.id_hash,
        })
    }
}

impl NewSeries {
    /// Remembers a series to add: its key, ID (`None` for a cache that keeps none) and ID
    /// hash. A series too large for a chunk is not remembered.
    pub fn push(&mut self, key: SeriesKey, id: Option<&[u8]>, id_hash: u32) {
        let id = id.unwrap_or_default();
        if HEADER_BYTES + id.len() > CHUNK_BYTES {
            return;
        }
        self.keys.push((key, self.entries.len()));
        Entry::write(key, id, id_hash, &mut self.entries);
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
        self.entries.capacity() + self.keys.capacity() * std::mem::size_of::<(SeriesKey, usize)>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn add(cache: &SeriesCache, labels: &[u8], id: &[u8], id_hash: u32) {
        let mut new = NewSeries::default();
        new.push(cache.key(labels), cache.keeps_ids().then_some(id), id_hash);
        cache.insert(&mut new);
        assert!(new.is_empty());
    }

    fn get(cache: &SeriesCache, labels: &[u8]) -> Option<(Vec<u8>, u32)> {
        let view = cache.read();
        view.get(cache.key(labels))
            .map(|s| (s.id.unwrap_or_default().to_vec(), s.id_hash))
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
    fn series_whose_keys_share_an_index_half_keep_their_own_entries() {
        let cache = SeriesCache::new(DEFAULT_MAX_BYTES);
        let key = |check| SeriesKey { index: 42, check };
        let mut new = NewSeries::default();
        new.push(key(1), Some(b"id-1"), 1);
        new.push(key(2), Some(b"id-2"), 2);
        cache.insert(&mut new);
        let view = cache.read();
        assert_eq!(
            view.get(key(1)).and_then(|s| s.id),
            Some(b"id-1".as_slice())
        );
        assert_eq!(view.get(key(2)).map(|s| s.id_hash), Some(2));
        assert_eq!(view.get(key(3)), None);
    }

    #[test]
    fn an_entry_costs_its_id_and_sixteen_bytes() {
        let mut new = NewSeries::default();
        let cache = SeriesCache::new(DEFAULT_MAX_BYTES);
        new.push(cache.key(&[7u8; 300]), Some(&[1u8; 250]), 9);
        assert_eq!(new.entries.len(), 16 + 250);
    }

    #[test]
    fn a_cache_without_ids_keeps_sixteen_bytes_a_series_and_the_id_hash() {
        let cache = SeriesCache::new(DEFAULT_MAX_BYTES).without_ids();
        let mut new = NewSeries::default();
        for i in 0..1000u32 {
            new.push(cache.key(format!("series-{i}").as_bytes()), None, i);
        }
        assert_eq!(new.entries.len(), 16 * 1000);
        cache.insert(&mut new);
        let view = cache.read();
        for i in 0..1000u32 {
            let found = view.get(cache.key(format!("series-{i}").as_bytes()));
            assert_eq!(
                found,
                Some(CachedSeries {
                    id: None,
                    id_hash: i
                })
            );
        }
        assert_eq!(view.get(cache.key(b"series-1000")), None);
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
        let id = vec![b'x'; CHUNK_BYTES];
        add(&cache, b"labels", &id, 1);
        assert_eq!(get(&cache, b"labels"), None);
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
                    new.push(cache.key(labels), Some(id), *hash);
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
