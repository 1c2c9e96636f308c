//! The head: the recent samples of every series of one namespace, in memory, compressed.
//!
//! Series are found by a hash of their label set (collisions are checked against the labels
//! the series holds, packed into one allocation: [`PackedLabels`]), and by an inverted index (label name →
//! value → the label sets carrying it) that answers `=` matchers without looking at other
//! series. The labels and the index are the store's, shared by its heads ([`LabelSets`]): the
//! index gives label set numbers, which the head maps to its own series. Each series holds its
//! samples in [`Chunk`]s of up to [`CHUNK_SAMPLES`]:
//!
//! ```text
//! series: labels | closed chunks … | open chunk (appends)
//! beside them, by series: out of order (sorted, small; most series have none)
//! ```
//!
//! A sample after the series' newest goes to the open chunk. One at or before it is *out of
//! order*: within [`HeadOptions::out_of_order_window`] of the newest it is kept in a small
//! sorted buffer (the head's, by series: `out_of_order`) that wins over the chunks for its
//! timestamp (so writing a timestamp again replaces its value, as one key per sample did);
//! further back it is refused and counted. The buffer is folded into the chunks once it holds
//! [`OUT_OF_ORDER_FOLD`] samples.
//!
//! A closed chunk never changes again: its bytes go to the head's chunk files when it has them
//! ([`ChunkFiles`], [`Head::with_chunk_files`]), the series keeping where they are, and stay in
//! memory sealed otherwise (or when a write fails).
//!
//! Retention drops whole chunks that end before the cutoff ([`Head::truncate_before`]), and a
//! series with nothing left. Its reference goes to the next new series: series come and go
//! (a pod's series end when it is replaced), and slots kept for every series ever created would
//! grow without end. A reader that found a series and reads it after letting the head go
//! holds a [`HeadSeries`], which reads nothing once its reference names another series.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

use m3_hash_index::{HashIndex, PREFETCH_AHEAD};

use crate::labels::{Labels, LabelsView};
use crate::matcher::Matcher;
use crate::tsdb::chunk::{Chunk, ChunkIter, SealedChunk};
use crate::tsdb::chunk_files::{ChunkFiles, ChunkLocation};
use crate::tsdb::closed_chunks::{ClosedChunk, ClosedChunks, Place};
use crate::tsdb::label_sets::{LabelSets, SetId};
use crate::tsdb::out_of_order::{Buffer, OutOfOrderBuffers};
use crate::tsdb::packed_labels::PackedLabels;
use crate::tsdb::paged_slots::PagedSlots;

/// Samples per chunk before a new one starts (Prometheus's figure: two hours of a 60 s scrape,
/// half an hour of a 15 s one).
pub const CHUNK_SAMPLES: usize = 120;
/// Out-of-order samples a series buffers before they are folded into its chunks.
pub const OUT_OF_ORDER_FOLD: usize = 32;

/// A series' number within its head: the slot it lives in. A removed series' number is given
/// to a later one.
pub type SeriesRef = u32;

/// In [`Head`]'s map from label sets to series: the head holds no series with that set.
const NOT_HERE: SeriesRef = SeriesRef::MAX;

/// A series as a reader found it: its reference and the labels it had then. A read through it
/// made after the head's lock was let go reads that series or nothing, never the series a
/// reused reference names since.
#[derive(Debug, Clone)]
pub struct HeadSeries {
    reference: SeriesRef,
    labels: PackedLabels,
}

/// How the head takes samples.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeadOptions {
    /// How far behind a series' newest sample a sample is still taken (ms).
    pub out_of_order_window: i64,
    /// Where the head's series take their packed labels and postings when other heads may
    /// hold the same ones (the namespaces of one store); `None` gives the head a table of its
    /// own.
    pub label_sets: Option<LabelSets>,
}

/// What an append did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendSummary {
    /// Samples taken (in order, out of order, or replacing a value).
    pub appended: usize,
    /// Samples equal to what the series already holds at that time (nothing changed).
    pub duplicates: usize,
    /// Samples further behind their series' newest than the out-of-order window: refused.
    pub too_old: usize,
    /// Series created.
    pub new_series: usize,
}

/// What [`Head::chunk_stats`] counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChunkStats {
    /// Bytes the encoded samples take.
    pub encoded_bytes: usize,
    /// Bytes of the buffers holding them (their capacity).
    pub buffer_bytes: usize,
}

/// What [`Head::truncate_before`] dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Truncated {
    /// Series left without samples, removed.
    pub series: usize,
    /// Samples dropped (whole chunks and buffered samples).
    pub samples: usize,
}

/// What the head's chunk files did; see [`Head::chunk_file_stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChunkFileStats {
    /// Bytes in the files (closed chunks, including those of series since re-encoded or gone).
    pub bytes: u64,
    /// Closed chunks kept in memory because the files could not take them (a full disk).
    pub write_errors: u64,
    /// Closed chunks that could not be read back (read as empty, and logged).
    pub read_errors: u64,
}

/// Where a head's closed chunks go, the chunk files when it has them and memory otherwise, and
/// how they are read back.
#[derive(Debug, Default)]
struct ClosedChunkStore {
    files: Option<ChunkFiles>,
    write_errors: u64,
    read_errors: AtomicU64,
}

impl ClosedChunkStore {
    /// Writes `full` (closed) to the files: where it is, or `None` when there are none or
    /// they failed, and memory keeps it.
    fn close(&mut self, full: &Chunk) -> Option<ChunkLocation> {
        let files = self.files.as_mut()?;
        match files.append(full.bytes(), full.last_time()) {
            Ok(location) => Some(location),
            Err(e) => {
                self.write_errors += 1;
                if self.write_errors.is_power_of_two() {
                    tracing::warn!(error = %e, errors = self.write_errors, "A closed chunk could not be written to the head's chunk files; it stays in memory.");
                }
                None
            }
        }
    }

    fn read(&self, location: ChunkLocation, out: &mut Vec<u8>) -> std::io::Result<()> {
        let result = match &self.files {
            Some(files) => files.read(location, out),
            None => Err(std::io::Error::other("the head has no chunk files")),
        };
        if let Err(e) = &result {
            let errors = self.read_errors.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::error!(error = %e, errors, "A closed chunk of the head could not be read back.");
        }
        result
    }

    /// Calls `f` with the chunk's samples. A chunk that cannot be read is counted, logged and
    /// read as empty.
    fn with_samples<R>(&self, chunk: &ClosedChunk<'_>, f: impl FnOnce(ChunkIter<'_>) -> R) -> R {
        match chunk.place {
            Place::Memory(bytes) => f(Chunk::decode(bytes, chunk.count)),
            Place::File(location) => {
                let mut bytes = Vec::new();
                match self.read(location, &mut bytes) {
                    Ok(()) => f(Chunk::decode(&bytes, chunk.count)),
                    Err(_) => f(Chunk::decode(&[], 0)),
                }
            }
        }
    }

    /// The chunk with its bytes in memory; `None` when they cannot be read.
    fn load(&self, chunk: &ClosedChunk<'_>) -> Option<SealedChunk> {
        match chunk.place {
            Place::Memory(bytes) => Some(chunk.sealed(bytes.into())),
            Place::File(location) => {
                let mut bytes = Vec::new();
                self.read(location, &mut bytes).ok()?;
                Some(chunk.sealed(bytes.into_boxed_slice()))
            }
        }
    }

    /// Deletes the chunk files that hold only chunks ending before `cutoff`: call it once the
    /// head holds none of those.
    fn release_before(&mut self, cutoff: i64) {
        if let Some(files) = &mut self.files {
            files.release_before(cutoff);
        }
    }

    fn stats(&self) -> ChunkFileStats {
        ChunkFileStats {
            bytes: self.files.as_ref().map_or(0, ChunkFiles::bytes),
            write_errors: self.write_errors,
            read_errors: self.read_errors.load(Ordering::Relaxed),
        }
    }

    fn heap_bytes(&self) -> usize {
        self.files.as_ref().map_or(0, ChunkFiles::heap_bytes)
    }
}

/// One series.
#[derive(Debug)]
struct MemSeries {
    labels: PackedLabels,
    /// Closed chunks, oldest first, packed.
    closed: ClosedChunks,
    open: Chunk,
    // The out-of-order samples are the head's `OutOfOrderBuffers`', by the series' reference.
}

impl MemSeries {
    fn new(labels: PackedLabels) -> MemSeries {
        MemSeries {
            labels,
            closed: ClosedChunks::default(),
            open: Chunk::new(),
        }
    }

    /// The newest time the series was given (`i64::MIN`: none): the open chunk's last, as the
    /// open chunk holds the newest sample while it holds any, and keeps its time once the
    /// samples were cut off into a block ([`Chunk::last_time`]).
    fn max_time(&self) -> i64 {
        self.open.last_time()
    }

    /// Whether it holds no sample, `buffered` being its out-of-order samples.
    fn is_empty(&self, buffered: &[(i64, f64)]) -> bool {
        self.open.is_empty() && self.closed.is_empty() && buffered.is_empty()
    }

    /// Takes one sample; whether it was taken (appended, replaced or equal to what is there).
    /// `reference` is the series' own, its out-of-order samples those `buffers` hold under it.
    #[allow(clippy::too_many_arguments)]
    fn append(
        &mut self,
        reference: SeriesRef,
        time: i64,
        value: f64,
        window: i64,
        store: &mut ClosedChunkStore,
        buffers: &mut OutOfOrderBuffers,
        summary: &mut AppendSummary,
    ) -> bool {
        // The newest time is kept when chunks are cut off into a block, so the out-of-order
        // window still counts from it.
        let max_time = self.max_time();
        if max_time == i64::MIN || time > max_time {
            if self.open.len() >= CHUNK_SAMPLES {
                let full = self.open.take();
                // The next chunk likely encodes to about as many bytes: it starts with a
                // quarter of them and grows by half, so an open chunk holds some 60% of a full
                // one's bytes on average rather than all of them from its first sample.
                self.open.reserve(full.encoded_len() / 4);
                self.close(full, store);
            }
            // Cannot fail: time is after everything in the open chunk.
            if self.open.push(time, value).is_ok() {
                summary.appended += 1;
            }
            return true;
        }
        if time < max_time.saturating_sub(window) {
            summary.too_old += 1;
            return false;
        }
        let stored = self.value_at(buffers.of(reference), time, store);
        if stored.map(f64::to_bits) == Some(value.to_bits()) {
            summary.duplicates += 1;
            return true;
        }
        summary.appended += 1;
        if buffers.insert(reference, time, value) >= OUT_OF_ORDER_FOLD {
            self.fold_out_of_order(buffers.take(reference), store);
        }
        true
    }

    /// The value stored at exactly `time`, if any.
    fn value_at(
        &self,
        buffered: &[(i64, f64)],
        time: i64,
        store: &ClosedChunkStore,
    ) -> Option<f64> {
        if let Ok(i) = buffered.binary_search_by_key(&time, |s| s.0) {
            return Some(buffered[i].1);
        }
        let holds = |first: i64, last: i64| first <= time && time <= last;
        let find = |mut samples: ChunkIter<'_>| samples.find(|s| s.0 == time).map(|s| s.1);
        self.closed
            .iter()
            .filter(|c| holds(c.first_time(), c.last_time()))
            .find_map(|c| store.with_samples(&c, find))
            .or_else(|| {
                (!self.open.is_empty() && holds(self.open.first_time(), self.open.last_time()))
                    .then(|| find(self.open.iter()))
                    .flatten()
            })
    }

    /// The first sample's time in the chunks.
    fn first_chunk_time(&self) -> Option<i64> {
        self.closed
            .iter()
            .next()
            .map(|c| c.first_time())
            .or_else(|| (!self.open.is_empty()).then(|| self.open.first_time()))
    }

    /// Every sample in `start..=end`, sorted, the out-of-order samples (`buffered`) winning on
    /// equal times.
    fn samples_in(
        &self,
        buffered: &[(i64, f64)],
        start: i64,
        end: i64,
        store: &ClosedChunkStore,
        out: &mut Vec<(i64, f64)>,
    ) {
        let in_range = |s: &(i64, f64)| (start..=end).contains(&s.0);
        let overlaps = |first: i64, last: i64| last >= start && first <= end;
        // The chunks hold disjoint, ascending times: their samples go out in turn, through a
        // merge only when out-of-order samples must be woven in.
        let mut from_chunks = Vec::new();
        let target = if buffered.is_empty() {
            &mut *out
        } else {
            &mut from_chunks
        };
        for chunk in self.closed.iter() {
            if overlaps(chunk.first_time(), chunk.last_time()) {
                store.with_samples(&chunk, |samples| target.extend(samples.filter(in_range)));
            }
        }
        if !self.open.is_empty() && overlaps(self.open.first_time(), self.open.last_time()) {
            target.extend(self.open.iter().filter(in_range));
        }
        if !buffered.is_empty() {
            let buffered = buffered.iter().copied().filter(in_range);
            merge_into(from_chunks.into_iter(), buffered, out);
        }
    }

    /// Whether any sample lies in `start..=end`, decoding at most the chunks that straddle an
    /// end of the range.
    fn has_samples_in(
        &self,
        buffered: &[(i64, f64)],
        start: i64,
        end: i64,
        store: &ClosedChunkStore,
    ) -> bool {
        buffered.iter().any(|s| (start..=end).contains(&s.0))
            || self.closed.iter().any(|c| {
                chunk_has_samples_in(c.first_time(), c.last_time(), start, end, || {
                    store
                        .with_samples(&c, |samples| samples.collect::<Vec<_>>())
                        .into_iter()
                })
            })
            || (!self.open.is_empty()
                && chunk_has_samples_in(
                    self.open.first_time(),
                    self.open.last_time(),
                    start,
                    end,
                    || self.open.iter(),
                ))
    }

    /// Closes a complete chunk: into the files when they take it, its bytes kept in the list
    /// otherwise.
    fn close(&mut self, full: Chunk, store: &mut ClosedChunkStore) {
        let location = store.close(&full);
        self.closed.push(ClosedChunk::of(&full, location));
    }

    /// Re-encodes the chunks with the out-of-order samples `buffered` (taken out of the
    /// head's buffers) merged in.
    fn fold_out_of_order(&mut self, buffered: Buffer, store: &mut ClosedChunkStore) {
        let newest = self.max_time();
        let mut all = Vec::new();
        self.samples_in(&buffered, i64::MIN, i64::MAX, store, &mut all);
        self.closed = ClosedChunks::default();
        self.open = Chunk::new();
        for (time, value) in all {
            if self.open.len() >= CHUNK_SAMPLES {
                let full = self.open.take();
                self.close(full, store);
            }
            // Sorted and one per time: cannot fail.
            let _ = self.open.push(time, value);
        }
        if self.open.last_time() < newest {
            // The newest sample went into a block before these arrived: its time still
            // bounds the out-of-order window, so the open chunk starts empty after it.
            let rebuilt = std::mem::replace(&mut self.open, Chunk::empty_after(newest));
            if !rebuilt.is_empty() {
                self.close(rebuilt, store);
            }
        }
    }

    fn heap_bytes(&self) -> usize {
        self.labels.heap_bytes() + self.closed.heap_bytes() + self.open.heap_bytes()
    }
}

/// Whether a chunk covering `first..=last` has a sample in `start..=end`: without decoding it
/// when it lies wholly inside or outside the range, else by reading `samples()`.
pub(crate) fn chunk_has_samples_in<I: Iterator<Item = (i64, f64)>>(
    first: i64,
    last: i64,
    start: i64,
    end: i64,
    samples: impl FnOnce() -> I,
) -> bool {
    if last < start || first > end {
        return false;
    }
    // Its first and last samples are samples.
    if (start..=end).contains(&first) || (start..=end).contains(&last) {
        return true;
    }
    samples()
        .map(|s| s.0)
        .find(|&t| t >= start)
        .is_some_and(|t| t <= end)
}

/// Merges two time-sorted runs into `out`; on equal times the second wins.
fn merge_into(
    first: impl Iterator<Item = (i64, f64)>,
    second: impl Iterator<Item = (i64, f64)>,
    out: &mut Vec<(i64, f64)>,
) {
    let mut first = first.peekable();
    let mut second = second.peekable();
    loop {
        match (first.peek(), second.peek()) {
            (Some(a), Some(b)) if a.0 < b.0 => out.extend(first.next()),
            (Some(a), Some(b)) if a.0 == b.0 => {
                first.next();
                out.extend(second.next());
            }
            (_, Some(_)) => out.extend(second.next()),
            (Some(_), None) => out.extend(first.next()),
            (None, None) => return,
        }
    }
}

/// The series of one namespace and their recent samples. Not synchronised: the owner holds it
/// behind a lock and takes it once per batch.
#[derive(Debug)]
pub struct Head {
    options: HeadOptions,
    hasher: hashbrown::DefaultHashBuilder,
    /// Series by label-set hash, confirmed against the series' hash and labels.
    by_hash: HashIndex,
    /// By [`SeriesRef`]; `None` once removed by retention.
    series: PagedSlots<MemSeries>,
    /// Empty slots below `series.len()`, the next new series' reference last. An entry whose
    /// slot was filled since (a replayed record naming it) is skipped when taken.
    free: Vec<SeriesRef>,
    /// The series' labels and the postings over them, shared with the store's other heads.
    label_sets: LabelSets,
    /// Label set number → the series holding it here ([`NOT_HERE`]: none).
    series_of_set: Vec<SeriesRef>,
    live: usize,
    /// Where closed chunks go.
    closed_chunks: ClosedChunkStore,
    /// The series' out-of-order samples, by reference.
    out_of_order: OutOfOrderBuffers,
}

impl Head {
    /// An empty head keeping closed chunks in memory.
    pub fn new(options: HeadOptions) -> Head {
        Head {
            label_sets: options.label_sets.clone().unwrap_or_default(),
            options,
            hasher: hashbrown::DefaultHashBuilder::default(),
            by_hash: HashIndex::new(),
            series: PagedSlots::default(),
            free: Vec::new(),
            series_of_set: Vec::new(),
            live: 0,
            closed_chunks: ClosedChunkStore::default(),
            out_of_order: OutOfOrderBuffers::default(),
        }
    }

    /// An empty head keeping closed chunks in `files` (see [`ChunkFiles`]).
    pub fn with_chunk_files(options: HeadOptions, files: ChunkFiles) -> Head {
        let mut head = Head::new(options);
        head.closed_chunks.files = Some(files);
        head
    }

    /// What the chunk files hold and how often they failed.
    pub fn chunk_file_stats(&self) -> ChunkFileStats {
        self.closed_chunks.stats()
    }

    /// The hash the head finds `labels` by: see [`get_or_create_hashed`](Self::get_or_create_hashed).
    pub fn hash(&self, labels: LabelsView<'_>) -> u64 {
        self.hasher.hash_one(labels)
    }

    /// The series with exactly these labels.
    pub fn find(&self, labels: LabelsView<'_>) -> Option<SeriesRef> {
        self.find_hashed(labels, self.hash(labels))
    }

    fn find_hashed(&self, labels: LabelsView<'_>, hash: u64) -> Option<SeriesRef> {
        let series = &self.series;
        self.by_hash.find(hash, |r| {
            series
                .get(r as usize)
                .and_then(Option::as_ref)
                .is_some_and(|s| s.labels.matches(labels))
        })
    }

    /// Starts loading what a lookup of `hash` reads first, without waiting for it. A batch
    /// prefetches the lookups a few ahead of the one it is doing; see [`HashIndex`].
    pub fn prefetch(&self, hash: u64) {
        self.by_hash.prefetch(hash);
    }

    /// The series with these labels, created if new (`true` when created). A new series takes
    /// a removed series' reference when there is one, the next unused one otherwise; past
    /// `u32::MAX` live series (some 600 GB of head) the last one would be shared.
    pub fn get_or_create(&mut self, labels: LabelsView<'_>) -> (SeriesRef, bool) {
        self.get_or_create_hashed(labels, self.hash(labels))
    }

    /// [`get_or_create`](Self::get_or_create) with the labels' [`hash`](Self::hash) computed
    /// before. A batch hashes all its label sets first and then looks them up: the lookups,
    /// each a few cache misses into a large table, then follow each other closely enough for
    /// the processor to overlap them, which hashing between them prevents.
    pub fn get_or_create_hashed(&mut self, labels: LabelsView<'_>, hash: u64) -> (SeriesRef, bool) {
        if let Some(found) = self.find_hashed(labels, hash) {
            return (found, false);
        }
        let reference = self.take_free_reference();
        self.insert(reference, labels);
        (reference, true)
    }

    /// A reference for a new series: an empty slot's, or the next past the last slot.
    fn take_free_reference(&mut self) -> SeriesRef {
        while let Some(reference) = self.free.pop() {
            if matches!(self.series.get(reference as usize), Some(None)) {
                return reference;
            }
        }
        SeriesRef::try_from(self.series.len()).unwrap_or(SeriesRef::MAX)
    }

    /// Gives the empty slots `references` (ascending) to new series, the lowest first.
    pub fn free_references(&mut self, references: &[SeriesRef]) {
        self.free.extend(references.iter().rev());
    }

    /// Lists every empty slot for new series to take: after a log's replay, which fills the
    /// slots its records name and leaves the others empty.
    pub fn reclaim_free_references(&mut self) {
        self.free.clear();
        let empty = self
            .series
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.is_none())
            .map(|(index, _)| index as SeriesRef);
        self.free.extend(empty);
        // Taken from the end: the lowest first, which keeps the live series low.
        self.free.reverse();
    }

    /// Puts `labels` at `reference` (replaying a log that named it so).
    fn insert(&mut self, reference: SeriesRef, labels: LabelsView<'_>) {
        self.by_hash.insert(self.hash(labels), reference);
        let (packed, set) = self.label_sets.intern(labels);
        self.set_series_of_set(set, reference);
        // A slot given to a new series starts without out-of-order samples.
        self.out_of_order.take(reference);
        let slot = self.series.slot_mut(reference as usize);
        if slot.is_none() {
            self.live += 1;
        }
        *slot = Some(MemSeries::new(packed));
    }

    /// Records that label set `set` is series `reference` here ([`NOT_HERE`]: no series).
    fn set_series_of_set(&mut self, set: SetId, reference: SeriesRef) {
        let index = set as usize;
        if index >= self.series_of_set.len() {
            if reference == NOT_HERE {
                return;
            }
            // Numbers are dense: grown by an eighth at a time, not doubled.
            let len = (index + 1).max(self.series_of_set.len() + self.series_of_set.len() / 8);
            self.series_of_set
                .reserve_exact(len - self.series_of_set.len());
            self.series_of_set.resize(len, NOT_HERE);
        }
        self.series_of_set[index] = reference;
    }

    /// Re-creates series `reference` with `labels`, as a replayed log record says.
    ///
    /// The same labels under an older reference are a series that retention removed before
    /// these labels were written again (a live series is found, not created): the older one
    /// goes, as it went then. A reference already naming other labels is a series the head
    /// removed before it gave the reference to these labels: what replay brought back of it
    /// moves to a slot no later record names.
    pub fn restore_series(&mut self, reference: SeriesRef, labels: Labels) {
        match self.find(labels.view()) {
            Some(found) if found == reference => return,
            Some(older) => self.remove_series(older),
            None => {}
        }
        self.move_to_new_slot(reference);
        self.insert(reference, labels.view());
    }

    /// Moves series `reference`, if it holds samples, to the slot past the last, which no
    /// record replayed so far names; an empty one is removed. Its samples were logged before
    /// the head removed it, and are in a block unless writing the block failed: kept, they
    /// are read as before, and retention drops them in time.
    fn move_to_new_slot(&mut self, reference: SeriesRef) {
        let Some(series) = self
            .series
            .get_mut(reference as usize)
            .and_then(Option::take)
        else {
            return;
        };
        if series.is_empty(self.out_of_order.of(reference)) {
            self.unindex_all(vec![(reference, series)]);
            self.live -= 1;
            return;
        }
        let moved = vec![(reference, series)];
        self.unindex_hashes(&moved);
        let Some((_, series)) = moved.into_iter().next() else {
            return;
        };
        let new_reference = SeriesRef::try_from(self.series.len()).unwrap_or(SeriesRef::MAX);
        self.by_hash
            .insert(self.hash(series.labels.unpack().view()), new_reference);
        if let Some(set) = self.label_sets.id_of(&series.labels) {
            self.set_series_of_set(set, new_reference);
        }
        self.out_of_order.move_buffer(reference, new_reference);
        *self.series.slot_mut(new_reference as usize) = Some(series);
    }

    /// Appends samples; each is `(series, time ms, value)`.
    pub fn append_refs(&mut self, samples: &[(SeriesRef, i64, f64)]) -> AppendSummary {
        let mut summary = AppendSummary::default();
        let window = self.options.out_of_order_window;
        let store = &mut self.closed_chunks;
        let buffers = &mut self.out_of_order;
        for &(reference, time, value) in samples {
            if let Some(Some(series)) = self.series.get_mut(reference as usize) {
                series.append(reference, time, value, window, store, buffers, &mut summary);
            }
        }
        summary
    }

    /// [`Head::append_refs`], keeping in `samples` only those taken (appended, replacing a
    /// value, or equal to what is there): what a log must hold to replay the same head.
    pub fn append_refs_retaining_taken(
        &mut self,
        samples: &mut Vec<(SeriesRef, i64, f64)>,
    ) -> AppendSummary {
        let mut summary = AppendSummary::default();
        let window = self.options.out_of_order_window;
        let series = &mut self.series;
        let store = &mut self.closed_chunks;
        let buffers = &mut self.out_of_order;
        samples.retain(
            |&(reference, time, value)| match series.get_mut(reference as usize) {
                Some(Some(series)) => {
                    series.append(reference, time, value, window, store, buffers, &mut summary)
                }
                _ => false,
            },
        );
        summary
    }

    /// The oldest sample time the head holds (`i64::MAX` when it holds none).
    pub fn min_time(&self) -> i64 {
        self.series
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i as SeriesRef, s.as_ref()?)))
            .flat_map(|(reference, s)| {
                s.first_chunk_time()
                    .into_iter()
                    .chain(self.out_of_order.of(reference).first().map(|o| o.0))
            })
            .min()
            .unwrap_or(i64::MAX)
    }

    /// Every live series with its reference, in reference order.
    pub fn live_series(&self) -> impl Iterator<Item = (SeriesRef, Labels)> + '_ {
        self.series
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i as SeriesRef, s.labels.unpack())))
    }

    /// Appends samples by label set, creating series as needed.
    pub fn append(&mut self, samples: &[(&Labels, i64, f64)]) -> AppendSummary {
        let mut refs = Vec::with_capacity(samples.len());
        let mut new_series = 0;
        let hashes: Vec<u64> = samples.iter().map(|s| self.hash(s.0.view())).collect();
        for (i, (&(labels, time, value), &hash)) in samples.iter().zip(&hashes).enumerate() {
            if let Some(&ahead) = hashes.get(i + PREFETCH_AHEAD) {
                self.prefetch(ahead);
            }
            let (reference, created) = self.get_or_create_hashed(labels.view(), hash);
            new_series += usize::from(created);
            refs.push((reference, time, value));
        }
        AppendSummary {
            new_series,
            ..self.append_refs(&refs)
        }
    }

    /// Live series.
    pub fn series_count(&self) -> usize {
        self.live
    }

    /// The encoded bytes of every chunk against the buffers holding them.
    pub fn chunk_stats(&self) -> ChunkStats {
        let mut stats = ChunkStats::default();
        for series in self.series.iter().flatten() {
            for chunk in series.closed.iter() {
                stats.encoded_bytes += chunk.encoded_len();
                if let Place::Memory(bytes) = chunk.place {
                    stats.buffer_bytes += bytes.len();
                }
            }
            stats.encoded_bytes += series.open.encoded_len();
            stats.buffer_bytes += series.open.heap_bytes();
        }
        stats
    }

    /// The series matching every matcher (all series for none), ascending by reference.
    pub fn matching(&self, matchers: &[Matcher]) -> Vec<SeriesRef> {
        // Matchers that reject "" need the label: their postings bound the answer, as label
        // sets that this head's series or another head's carry.
        let candidates = self.label_sets.candidates(matchers).map(|sets| {
            let mut refs: Vec<SeriesRef> = sets
                .into_iter()
                .filter_map(|set| self.series_of_set.get(set as usize).copied())
                .filter(|&r| r != NOT_HERE)
                .collect();
            refs.sort_unstable();
            // One series per set: a duplicate could only come from a map gone stale.
            refs.dedup();
            refs
        });
        let candidates = candidates.unwrap_or_else(|| {
            (0..self.series.len() as SeriesRef)
                .filter(|&r| self.series[r as usize].is_some())
                .collect()
        });
        candidates
            .into_iter()
            .filter(|&r| {
                self.series[r as usize].as_ref().is_some_and(|s| {
                    matchers
                        .iter()
                        .all(|m| m.matches_value(s.labels.get(m.name()).unwrap_or("")))
                })
            })
            .collect()
    }

    /// Whether series `reference` has a sample in `start..=end`.
    pub fn has_samples(&self, reference: SeriesRef, start: i64, end: i64) -> bool {
        match self.series.get(reference as usize) {
            Some(Some(series)) => series.has_samples_in(
                self.out_of_order.of(reference),
                start,
                end,
                &self.closed_chunks,
            ),
            _ => false,
        }
    }

    /// Series `reference` as a reader keeps it to read later (see [`HeadSeries`]).
    pub fn series_handle(&self, reference: SeriesRef) -> Option<HeadSeries> {
        let series = self.series.get(reference as usize)?.as_ref()?;
        Some(HeadSeries {
            reference,
            labels: series.labels.clone(),
        })
    }

    /// The series `handle` names, if its reference still names it.
    fn series_of(&self, handle: &HeadSeries) -> Option<&MemSeries> {
        self.series
            .get(handle.reference as usize)?
            .as_ref()
            .filter(|series| series.labels == handle.labels)
    }

    /// [`Head::has_samples`] of the series `handle` names: `false` once it is gone.
    pub fn handle_has_samples(&self, handle: &HeadSeries, start: i64, end: i64) -> bool {
        self.series_of(handle).is_some_and(|series| {
            let buffered = self.out_of_order.of(handle.reference);
            series.has_samples_in(buffered, start, end, &self.closed_chunks)
        })
    }

    /// [`Head::samples`] of the series `handle` names: nothing once it is gone.
    pub fn handle_samples(
        &self,
        handle: &HeadSeries,
        start: i64,
        end: i64,
        out: &mut Vec<(i64, f64)>,
    ) {
        if let Some(series) = self.series_of(handle) {
            let buffered = self.out_of_order.of(handle.reference);
            series.samples_in(buffered, start, end, &self.closed_chunks, out);
        }
    }

    /// The labels of series `reference`.
    pub fn labels(&self, reference: SeriesRef) -> Option<Labels> {
        self.series
            .get(reference as usize)?
            .as_ref()
            .map(|s| s.labels.unpack())
    }

    /// The samples of series `reference` in `start..=end`, appended to `out` (sorted).
    pub fn samples(&self, reference: SeriesRef, start: i64, end: i64, out: &mut Vec<(i64, f64)>) {
        if let Some(Some(series)) = self.series.get(reference as usize) {
            let buffered = self.out_of_order.of(reference);
            series.samples_in(buffered, start, end, &self.closed_chunks, out);
        }
    }

    /// Takes out of the head every chunk that ends before `cutoff` (ms), for writing a block:
    /// buffered out-of-order samples before the cutoff are folded into the chunks first, so
    /// none is left behind. Series keep their place (and their newest time) even when nothing
    /// is left of them in the head. Returns each series' labels and its chunks, in time order.
    pub fn cut_before(&mut self, cutoff: i64) -> Vec<(Labels, Vec<SealedChunk>)> {
        let store = &mut self.closed_chunks;
        let buffers = &mut self.out_of_order;
        let mut cut = Vec::new();
        let mut unreadable = false;
        for (index, slot) in self.series.iter_mut().enumerate() {
            let Some(series) = slot else { continue };
            let reference = index as SeriesRef;
            if buffers.of(reference).first().is_some_and(|s| s.0 < cutoff) {
                series.fold_out_of_order(buffers.take(reference), store);
            }
            // No allocation for the many series with nothing to cut.
            let mut taken = Vec::new();
            if series
                .closed
                .iter()
                .next()
                .is_some_and(|c| c.last_time() < cutoff)
            {
                // A chunk whose file cannot be read stays in the head (and so do the files).
                let mut kept: Vec<ClosedChunk<'_>> = Vec::new();
                for chunk in series.closed.iter() {
                    if chunk.last_time() >= cutoff {
                        kept.push(chunk);
                    } else if let Some(sealed) = store.load(&chunk) {
                        taken.push(sealed);
                    } else {
                        unreadable = true;
                        kept.push(chunk);
                    }
                }
                series.closed = kept.into_iter().collect();
            }
            if series.closed.is_empty()
                && !series.open.is_empty()
                && series.open.last_time() < cutoff
            {
                taken.push(series.open.take().seal());
            }
            if !taken.is_empty() {
                cut.push((series.labels.unpack(), taken));
            }
        }
        if !unreadable {
            store.release_before(cutoff);
        }
        cut
    }

    /// Drops every chunk and buffered sample wholly before `cutoff` (ms), and the series left
    /// empty; their references go to new series.
    pub fn truncate_before(&mut self, cutoff: i64) -> Truncated {
        let mut removed = Vec::new();
        let truncated = self.truncate_before_holding_references(cutoff, &mut removed);
        self.free_references(&removed);
        truncated
    }

    /// [`Head::truncate_before`], listing the removed series' references in `removed_references`
    /// (ascending) instead of giving them to new series: a log records the removal first
    /// ([`Head::free_references`] then), or its replay could not tell a series created again
    /// under its old reference from the old one.
    pub fn truncate_before_holding_references(
        &mut self,
        cutoff: i64,
        removed_references: &mut Vec<SeriesRef>,
    ) -> Truncated {
        let mut removed: Vec<(SeriesRef, MemSeries)> = Vec::new();
        let mut samples = 0;
        for (index, slot) in self.series.iter_mut().enumerate() {
            let Some(series) = slot else { continue };
            if series.closed.iter().any(|c| c.last_time() < cutoff) {
                series.closed = series
                    .closed
                    .iter()
                    .filter(|c| {
                        let keep = c.last_time() >= cutoff;
                        if !keep {
                            samples += c.len();
                        }
                        keep
                    })
                    .collect();
            }
            if !series.open.is_empty() && series.open.last_time() < cutoff {
                samples += series.open.len();
                series.open.clear();
            }
            // A buffered sample before the cutoff still shadows a sample of a kept chunk (a
            // replaced value): it goes only when no kept chunk reaches back to it.
            let earliest_kept = series.first_chunk_time();
            let reference = index as SeriesRef;
            samples += self.out_of_order.retain(reference, |s| {
                s.0 >= cutoff || earliest_kept.is_some_and(|e| s.0 >= e)
            });
            if series.is_empty(self.out_of_order.of(reference))
                && let Some(series) = slot.take()
            {
                removed.push((index as SeriesRef, series));
            }
        }
        let removed_series = removed.len();
        removed_references.extend(removed.iter().map(|(reference, _)| *reference));
        self.unindex_all(removed);
        self.live -= removed_series;
        self.closed_chunks.release_before(cutoff);
        Truncated {
            series: removed_series,
            samples,
        }
    }

    /// Removes series `reference`.
    pub fn remove_series(&mut self, reference: SeriesRef) {
        if let Some(series) = self
            .series
            .get_mut(reference as usize)
            .and_then(Option::take)
        {
            self.out_of_order.take(reference);
            self.unindex_all(vec![(reference, series)]);
            self.live -= 1;
            self.free.push(reference);
        }
    }

    /// Takes `removed` out of the hash table, and gives their labels back to the label sets,
    /// which drop the postings of those no other head holds.
    fn unindex_all(&mut self, removed: Vec<(SeriesRef, MemSeries)>) {
        if removed.is_empty() {
            return;
        }
        self.unindex_hashes(&removed);
        self.by_hash.shrink_if_sparse();
        let sets = self
            .label_sets
            .release_all(removed.into_iter().map(|(_, series)| series.labels));
        for set in sets {
            self.set_series_of_set(set, NOT_HERE);
        }
    }

    fn unindex_hashes(&mut self, removed: &[(SeriesRef, MemSeries)]) {
        for (reference, series) in removed {
            // Removal is rare: the hash is computed again rather than kept in every series.
            let hash = self.hasher.hash_one(series.labels.unpack().view());
            let removed = self.by_hash.remove(hash, *reference);
            debug_assert!(
                removed,
                "series {reference} was indexed under its labels' hash"
            );
        }
    }

    /// The reference the next new series gets.
    pub fn next_reference(&self) -> usize {
        self.series.len()
    }

    /// Heap bytes the head holds, approximately: chunks, its share of the labels, buffers and
    /// the hash table (the postings are the label sets': [`LabelSets::heap_bytes`]).
    pub fn heap_bytes(&self) -> usize {
        let series: usize = self
            .series
            .iter()
            .flatten()
            .map(MemSeries::heap_bytes)
            .sum();
        series
            + self.series_of_set.capacity() * std::mem::size_of::<SeriesRef>()
            + self.closed_chunks.heap_bytes()
            + self.out_of_order.heap_bytes()
            + self.series.allocation_size()
            + self.by_hash.allocation_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const WINDOW: i64 = 1_000;

    /// A head taking its labels from a table of its own, as the heads of a store share one.
    fn head() -> Head {
        Head::new(HeadOptions {
            out_of_order_window: WINDOW,
            label_sets: Some(LabelSets::default()),
        })
    }

    fn head_with_files(dir: &std::path::Path) -> Head {
        Head::with_chunk_files(
            HeadOptions {
                out_of_order_window: WINDOW,
                label_sets: None,
            },
            ChunkFiles::open(dir).unwrap(),
        )
    }

    fn labels(job: &str, instance: &str) -> Labels {
        Labels::new([("__name__", "up"), ("job", job), ("instance", instance)]).unwrap()
    }

    fn all(head: &Head, reference: SeriesRef) -> Vec<(i64, f64)> {
        let mut out = Vec::new();
        head.samples(reference, i64::MIN, i64::MAX, &mut out);
        out
    }

    /// Closed chunks cost their bytes and no spare slots, and the chunk opened after one
    /// closes starts well under the size of a full one; every sample still reads back.
    #[test]
    fn chunks_hold_little_spare_capacity() {
        let mut head = head();
        let a = labels("api", "1");
        let samples: Vec<(&Labels, i64, f64)> = (0..3 * CHUNK_SAMPLES as i64 + 1)
            .map(|i| (&a, i * 15_000, (i * 7 % 13) as f64 + 0.25 * i as f64))
            .collect();
        head.append(&samples);
        let reference = head.find(a.view()).unwrap();
        let series = head.series[reference as usize].as_ref().unwrap();
        assert_eq!(series.closed.len(), 3);
        let full = series.closed.iter().nth(2).unwrap().encoded_len();
        assert!(
            series.open.heap_bytes() < full / 2,
            "a chunk with one sample holds {} bytes, a full one {full}",
            series.open.heap_bytes()
        );
        let want: Vec<(i64, f64)> = samples.iter().map(|s| (s.1, s.2)).collect();
        assert_eq!(all(&head, reference), want);
    }

    /// A chunk spanning more than 2^32 ms goes to the files as any other, and every sample
    /// reads back in order.
    #[test]
    fn a_chunk_of_any_span_goes_to_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut head = head_with_files(dir.path());
        let a = labels("api", "1");
        // The first chunk's samples are a day apart (120 days in all), the next two's 15 s.
        let day = 86_400_000;
        let times: Vec<i64> = (0..CHUNK_SAMPLES as i64)
            .map(|i| i * day)
            .chain(
                (0..2 * CHUNK_SAMPLES as i64 + 1).map(|i| CHUNK_SAMPLES as i64 * day + i * 15_000),
            )
            .collect();
        let samples: Vec<(&Labels, i64, f64)> =
            times.iter().map(|&t| (&a, t, (t % 1000) as f64)).collect();
        head.append(&samples);
        let reference = head.find(a.view()).unwrap();
        let series = head.series[reference as usize].as_ref().unwrap();
        let kinds: Vec<bool> = series
            .closed
            .iter()
            .map(|c| matches!(c.place, Place::Memory(_)))
            .collect();
        assert_eq!(
            kinds,
            [false, false, false],
            "which closed chunks are in memory"
        );
        let first = series.closed.iter().next().unwrap();
        assert_eq!(first.last_time() - first.first_time(), 119 * day);
        let second = series.closed.iter().nth(1).unwrap();
        assert_eq!(second.last_time() - second.first_time(), 119 * 15_000);
        let want: Vec<(i64, f64)> = samples.iter().map(|s| (s.1, s.2)).collect();
        assert_eq!(all(&head, reference), want);
    }

    #[test]
    fn closed_chunks_in_files_leave_memory_read_back_and_go_with_the_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut in_files = head_with_files(dir.path());
        let mut in_memory = head();
        let series: Vec<Labels> = (0..50).map(|i| labels("api", &i.to_string())).collect();
        let mut want = Vec::new();
        for i in 0..3 * CHUNK_SAMPLES as i64 + 10 {
            let batch: Vec<(&Labels, i64, f64)> = series
                .iter()
                .enumerate()
                .map(|(s, l)| {
                    (
                        l,
                        i * 15_000,
                        (i * 7 % 13) as f64 + 0.25 * (i + s as i64) as f64,
                    )
                })
                .collect();
            want.push(batch.iter().map(|b| (b.1, b.2)).collect::<Vec<_>>());
            in_files.append(&batch);
            in_memory.append(&batch);
        }
        let encoded = in_memory.chunk_stats().encoded_bytes;
        let stats = in_files.chunk_file_stats();
        assert_eq!(stats.read_errors + stats.write_errors, 0);
        // Three of each series' four chunks are in the files.
        let closed = encoded - in_files.chunk_stats().buffer_bytes;
        assert!(
            stats.bytes as usize >= closed / 2,
            "{stats:?} against {encoded} encoded"
        );
        // Memory holds every closed chunk's bytes fewer (the files' write buffer aside), less
        // the few bytes a chunk's place in the files takes to note.
        let without_buffer = in_files.heap_bytes() - in_files.closed_chunks.heap_bytes();
        assert!(
            in_memory.heap_bytes() - without_buffer >= stats.bytes as usize * 19 / 20,
            "in files {without_buffer} + {} on disk, in memory {}",
            stats.bytes,
            in_memory.heap_bytes()
        );
        for (s, l) in series.iter().enumerate() {
            let r = in_files.find(l.view()).unwrap();
            let expected: Vec<(i64, f64)> = want.iter().map(|batch| batch[s]).collect();
            assert_eq!(all(&in_files, r), expected);
            assert!(in_files.has_samples(r, 15_000, 15_000));
            assert!(!in_files.has_samples(r, 15_001, 29_999));
        }
        // A cut takes the chunks out of the files, bytes intact.
        let cutoff = 2 * CHUNK_SAMPLES as i64 * 15_000;
        let cut = in_files.cut_before(cutoff);
        assert_eq!(cut.len(), series.len());
        for (labels, chunks) in &cut {
            let s = series.iter().position(|l| l == labels).unwrap();
            let samples: Vec<(i64, f64)> = chunks.iter().flat_map(|c| c.iter()).collect();
            let expected: Vec<(i64, f64)> = want
                .iter()
                .map(|batch| batch[s])
                .filter(|x| x.0 < cutoff)
                .collect();
            assert_eq!(samples, expected);
        }
        assert_eq!(in_files.chunk_file_stats().read_errors, 0);
    }

    #[test]
    fn chunks_the_files_cannot_take_stay_in_memory_counted_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        let mut head = head_with_files(dir.path());
        head.closed_chunks.files.as_mut().unwrap().fail_writes();
        // Enough closed chunks to fill the write buffer several times over.
        let series: Vec<Labels> = (0..3_000).map(|i| labels("db", &i.to_string())).collect();
        for i in 0..2 * CHUNK_SAMPLES as i64 + 1 {
            let batch: Vec<(&Labels, i64, f64)> = series
                .iter()
                .enumerate()
                .map(|(s, l)| (l, i * 10_000, (s as i64 * 31 + i * i) as f64 / 7.0))
                .collect();
            head.append(&batch);
        }
        let stats = head.chunk_file_stats();
        assert!(stats.write_errors > 0, "{stats:?}");
        assert_eq!(stats.read_errors, 0);
        let in_memory = head
            .series
            .iter()
            .flatten()
            .flat_map(|s| s.closed.iter())
            .filter(|c| matches!(c.place, Place::Memory(_)))
            .count();
        assert_eq!(in_memory as u64, stats.write_errors);
        for (s, l) in series.iter().enumerate().step_by(97) {
            let r = head.find(l.view()).unwrap();
            let want: Vec<(i64, f64)> = (0..2 * CHUNK_SAMPLES as i64 + 1)
                .map(|i| (i * 10_000, (s as i64 * 31 + i * i) as f64 / 7.0))
                .collect();
            assert_eq!(all(&head, r), want);
        }
        assert_eq!(head.chunk_file_stats().read_errors, 0);
    }

    /// What every series costs in memory, in every head that has it, before any sample: a
    /// field added shows here first. (What a closed chunk costs is pinned in `closed_chunks`.)
    #[test]
    fn a_series_costs_80_bytes() {
        assert_eq!(std::mem::size_of::<Option<MemSeries>>(), 80);
        assert_eq!(std::mem::size_of::<SealedChunk>(), 40);
    }

    #[test]
    fn a_chunk_file_cut_short_from_outside_reads_as_empty_and_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut head = head_with_files(dir.path());
        let a = labels("api", "1");
        let samples: Vec<(&Labels, i64, f64)> = (0..2 * CHUNK_SAMPLES as i64)
            .map(|i| (&a, i * 1_000, i as f64 * 1.5))
            .collect();
        head.append(&samples);
        // Out of the buffer and into the file, which is then cut short.
        head.closed_chunks
            .files
            .as_mut()
            .unwrap()
            .write_buffer()
            .unwrap();
        let file = std::fs::read_dir(dir.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(1)
            .unwrap();
        let r = head.find(a.view()).unwrap();
        let kept = all(&head, r);
        assert_eq!(kept.len(), CHUNK_SAMPLES, "the open chunk's samples only");
        assert_eq!(head.chunk_file_stats().read_errors, 1);
        // A cut keeps the unreadable chunk in the head rather than losing track of it.
        let cut = head.cut_before(i64::MAX);
        assert!(cut.is_empty());
        assert_eq!(head.series[r as usize].as_ref().unwrap().closed.len(), 1);
    }

    #[test]
    fn in_order_out_of_order_replaced_duplicate_and_too_old() {
        let mut head = head();
        let a = labels("api", "1");
        let summary = head.append(&[(&a, 1_000, 1.0), (&a, 2_000, 2.0), (&a, 3_000, 3.0)]);
        assert_eq!(
            summary,
            AppendSummary {
                appended: 3,
                new_series: 1,
                ..AppendSummary::default()
            }
        );
        let summary = head.append(&[
            (&a, 2_500, 2.5),  // out of order, inside the window
            (&a, 2_000, 20.0), // replaces
            (&a, 3_000, 3.0),  // the same again
            (&a, 1_999, 9.0),  // further back than the window from 3000
        ]);
        assert_eq!(
            (summary.appended, summary.duplicates, summary.too_old),
            (2, 1, 1)
        );
        let r = head.find(a.view()).unwrap();
        assert_eq!(
            all(&head, r),
            vec![(1_000, 1.0), (2_000, 20.0), (2_500, 2.5), (3_000, 3.0)]
        );
    }

    /// A block takes a series' samples, not its newest time: the out-of-order window still
    /// counts from it, also once enough late samples arrived to be folded into chunks.
    #[test]
    fn the_window_counts_from_the_newest_time_after_a_cut_and_a_fold() {
        let mut head = head();
        let a = labels("api", "1");
        let newest = 100_000;
        head.append(&[(&a, newest - 10, 1.0), (&a, newest, 2.0)]);
        let cut = head.cut_before(newest + 1);
        assert_eq!(cut.len(), 1, "the block took the series' chunk");
        let r = head.find(a.view()).unwrap();
        assert_eq!(head.series[r as usize].as_ref().unwrap().max_time(), newest);

        let late: Vec<(&Labels, i64, f64)> = (0..OUT_OF_ORDER_FOLD as i64)
            .map(|i| (&a, newest - WINDOW + 1 + i, 3.0))
            .collect();
        let summary = head.append(&late);
        assert_eq!((summary.appended, summary.too_old), (late.len(), 0));
        let series = head.series[r as usize].as_ref().unwrap();
        assert!(
            head.out_of_order.of(r).is_empty(),
            "the late samples were folded"
        );
        assert_eq!(series.max_time(), newest);

        let summary = head.append(&[(&a, newest - WINDOW - 1, 4.0), (&a, newest + 5, 5.0)]);
        assert_eq!((summary.appended, summary.too_old), (1, 1));
        let held = all(&head, r);
        assert_eq!(held.len(), late.len() + 1);
        assert_eq!(held.last(), Some(&(newest + 5, 5.0)));
    }

    #[test]
    fn matchers_use_postings_and_check_every_matcher() {
        let mut head = head();
        let a1 = labels("api", "1");
        let a2 = labels("api", "2");
        let d1 = labels("db", "1");
        head.append(&[(&a1, 1, 1.0), (&a2, 1, 1.0), (&d1, 1, 1.0)]);
        let names = |matchers: &[Matcher]| -> Vec<String> {
            head.matching(matchers)
                .into_iter()
                .map(|r| {
                    let l = head.labels(r).unwrap();
                    format!("{}/{}", l.get("job").unwrap(), l.get("instance").unwrap())
                })
                .collect()
        };
        assert_eq!(
            names(&[Matcher::equal("job", "api")]),
            vec!["api/1", "api/2"]
        );
        assert_eq!(
            names(&[
                Matcher::equal("job", "api"),
                Matcher::not_equal("instance", "1")
            ]),
            vec!["api/2"]
        );
        assert_eq!(
            names(&[Matcher::regex("instance", "1|3").unwrap()]),
            vec!["api/1", "db/1"]
        );
        assert_eq!(
            names(&[Matcher::not_regex("job", "a.*").unwrap()]),
            vec!["db/1"]
        );
        assert_eq!(names(&[]).len(), 3);
        assert!(names(&[Matcher::equal("job", "none")]).is_empty());
        assert_eq!(names(&[Matcher::equal("zone", "")]).len(), 3);
    }

    /// Two heads of one store share the postings: each answers matchers with its own series
    /// only, a series removed from one is still found in the other, and a new series taking a
    /// removed one's number is not seen by a head that never held it.
    #[test]
    fn heads_sharing_label_sets_answer_with_their_own_series() {
        let sets = LabelSets::default();
        let options = HeadOptions {
            out_of_order_window: WINDOW,
            label_sets: Some(sets.clone()),
        };
        let mut raw = Head::new(options.clone());
        let mut agg = Head::new(options);
        let a = labels("api", "1");
        let b = labels("api", "2");
        let c = labels("db", "1");
        raw.append(&[(&a, 10, 1.0), (&b, 10, 1.0)]);
        agg.append(&[(&c, 10, 1.0), (&b, 500_000, 1.0)]);
        let jobs = |head: &Head, job: &str| -> Vec<Labels> {
            head.matching(&[Matcher::equal("job", job)])
                .into_iter()
                .map(|r| head.labels(r).unwrap())
                .collect()
        };
        assert_eq!(jobs(&raw, "api"), vec![a.clone(), b.clone()]);
        assert_eq!(jobs(&agg, "api"), vec![b.clone()]);
        assert!(jobs(&raw, "db").is_empty());
        assert_eq!(sets.len(), 3);
        raw.truncate_before(1_000);
        assert!(jobs(&raw, "api").is_empty());
        assert_eq!(jobs(&agg, "api"), vec![b.clone()]);
        assert_eq!(sets.len(), 2, "b and c are held by the other head");
        let d = labels("web", "1");
        raw.append(&[(&d, 2_000, 1.0)]);
        assert!(jobs(&agg, "web").is_empty());
        assert_eq!(jobs(&raw, "web"), vec![d]);
        assert_eq!(agg.matching(&[]).len(), 2);
    }

    #[test]
    fn retention_drops_whole_chunks_and_empty_series() {
        let mut head = head();
        let a = labels("api", "1");
        let b = labels("db", "1");
        let samples: Vec<(&Labels, i64, f64)> = (0..300).map(|i| (&a, i * 10, i as f64)).collect();
        head.append(&samples);
        head.append(&[(&b, 5, 1.0)]);
        // Chunk 0 holds 0..=1190, chunk 1 1200..=2390, the open one 2400..=2990.
        assert_eq!(head.truncate_before(1_500).series, 1);
        assert_eq!(head.series_count(), 1);
        assert!(head.find(b.view()).is_none());
        assert!(head.matching(&[Matcher::equal("job", "db")]).is_empty());
        let r = head.find(a.view()).unwrap();
        assert_eq!(all(&head, r).first(), Some(&(1_200, 120.0)));
        // A series created again after its removal is a new one.
        head.append(&[(&b, 5_000, 2.0)]);
        let again = head.find(b.view()).unwrap();
        assert_eq!(all(&head, again), vec![(5_000, 2.0)]);
    }

    /// Series that come and go (a pod's, replaced by the next pod's) take the slots of the
    /// removed ones: the head's slots and memory stay those of its live series however many
    /// series have lived in it.
    #[test]
    fn new_series_take_the_slots_of_removed_ones() {
        let mut head = head();
        for generation in 0..20 {
            let pods: Vec<Labels> = (0..500)
                .map(|i| labels("api", &format!("pod-{generation}-{i}")))
                .collect();
            let t = generation * 10_000;
            let batch: Vec<(&Labels, i64, f64)> = pods.iter().map(|l| (l, t, 1.0)).collect();
            assert_eq!(head.append(&batch).new_series, 500);
            assert_eq!(head.series_count(), 500);
            assert_eq!(
                head.next_reference(),
                500,
                "generation {generation}: the slots of live series only"
            );
            for pod in &pods {
                let r = head.find(pod.view()).unwrap();
                assert_eq!(all(&head, r), vec![(t, 1.0)]);
                assert_eq!(head.labels(r).as_ref(), Some(pod));
            }
            assert_eq!(head.matching(&[Matcher::equal("job", "api")]).len(), 500);
            assert_eq!(head.truncate_before(t + 1).series, 500);
            assert!(head.matching(&[Matcher::equal("job", "api")]).is_empty());
        }
    }

    /// A reader that found a series before it was removed reads nothing of the series that
    /// took its reference since.
    #[test]
    fn a_handle_reads_its_series_and_never_the_one_that_took_its_reference() {
        let mut head = head();
        let old = labels("api", "old");
        let new = labels("api", "new");
        head.append(&[(&old, 10, 1.0)]);
        let r = head.find(old.view()).unwrap();
        let handle = head.series_handle(r).unwrap();
        let mut read = Vec::new();
        head.handle_samples(&handle, i64::MIN, i64::MAX, &mut read);
        assert_eq!(read, vec![(10, 1.0)]);
        assert!(head.handle_has_samples(&handle, 0, 10));

        head.truncate_before(100);
        head.append(&[(&new, 200, 2.0)]);
        assert_eq!(head.find(new.view()), Some(r), "the reference is reused");
        read.clear();
        head.handle_samples(&handle, i64::MIN, i64::MAX, &mut read);
        assert!(read.is_empty(), "{read:?}");
        assert!(!head.handle_has_samples(&handle, i64::MIN, i64::MAX));
        // The same labels written again read through an old handle: the same series.
        head.truncate_before(300);
        head.append(&[(&old, 400, 3.0)]);
        assert_eq!(head.find(old.view()), Some(r));
        read.clear();
        head.handle_samples(&handle, i64::MIN, i64::MAX, &mut read);
        assert_eq!(read, vec![(400, 3.0)]);
    }

    /// What the model keeps: a value per time per series, the last write winning.
    type Model = BTreeMap<Labels, BTreeMap<i64, f64>>;

    #[derive(Debug, Clone)]
    enum Op {
        Append(Vec<(usize, i64, u8)>),
        Truncate(i64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => prop::collection::vec((0usize..6, -200i64..5_000, 0u8..4), 1..40).prop_map(Op::Append),
            1 => (-500i64..5_000).prop_map(Op::Truncate),
        ]
    }

    proptest! {
        /// Any appends (in order, out of order, too old, repeated) and truncations leave the
        /// head answering every series and range as a model that applies the same rules,
        /// whether its closed chunks are in memory or in files.
        #[test]
        fn the_head_equals_a_model(ops in prop::collection::vec(op(), 1..30), ranges in prop::collection::vec((-500i64..5_000, 0i64..3_000), 4), in_files in any::<bool>()) {
            let pool: Vec<Labels> = (0..6).map(|i| labels(if i % 2 == 0 { "api" } else { "db" }, &i.to_string())).collect();
            let dir = tempfile::tempdir().unwrap();
            let mut head = if in_files { head_with_files(dir.path()) } else { head() };
            let mut model = Model::new();
            for op in ops {
                match op {
                    Op::Append(samples) => {
                        let batch: Vec<(&Labels, i64, f64)> = samples
                            .iter()
                            .map(|&(s, t, v)| (&pool[s], t, f64::from(v)))
                            .collect();
                        let mut expected = AppendSummary::default();
                        for &(labels, t, v) in &batch {
                            let series = model.entry(labels.clone()).or_insert_with(|| {
                                expected.new_series += 1;
                                BTreeMap::new()
                            });
                            match series.last_key_value().map(|(k, _)| *k) {
                                Some(max) if t <= max => {
                                    if t < max - WINDOW {
                                        expected.too_old += 1;
                                    } else if series.get(&t) == Some(&v) {
                                        expected.duplicates += 1;
                                    } else {
                                        series.insert(t, v);
                                        expected.appended += 1;
                                    }
                                }
                                _ => {
                                    series.insert(t, v);
                                    expected.appended += 1;
                                }
                            }
                        }
                        prop_assert_eq!(head.append(&batch), expected);
                    }
                    Op::Truncate(cutoff) => {
                        head.truncate_before(cutoff);
                        // Whole chunks go: what survives before the cutoff depends on where
                        // chunks end, but nothing at or after it may go, and nothing may change.
                        let mut next = Model::new();
                        for (labels, series) in &model {
                            let kept = head.find(labels.view()).map(|r| all(&head, r)).unwrap_or_default();
                            for (t, v) in series.range(cutoff..) {
                                prop_assert!(kept.contains(&(*t, *v)), "{labels:?} lost {t}");
                            }
                            for (t, v) in &kept {
                                prop_assert_eq!(series.get(t), Some(v));
                            }
                            if !kept.is_empty() {
                                next.insert(labels.clone(), kept.into_iter().collect());
                            }
                        }
                        model = next;
                    }
                }
            }
            prop_assert_eq!(head.series_count(), model.len());
            // The postings agree with the model after every creation and removal.
            for job in ["api", "db"] {
                let mut got: Vec<Labels> = head
                    .matching(&[Matcher::equal("job", job)])
                    .into_iter()
                    .map(|r| head.labels(r).unwrap())
                    .collect();
                got.sort();
                let want: Vec<Labels> = model.keys().filter(|l| l.get("job") == Some(job)).cloned().collect();
                prop_assert_eq!(got, want);
            }
            for (labels, series) in &model {
                let r = head.find(labels.view()).expect("series in the head");
                for &(start, len) in &ranges {
                    let mut got = Vec::new();
                    head.samples(r, start, start + len, &mut got);
                    let want: Vec<(i64, f64)> = series.range(start..=start + len).map(|(t, v)| (*t, *v)).collect();
                    prop_assert_eq!(got, want);
                }
            }
        }
    }
}
