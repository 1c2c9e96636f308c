//! A shard: the unit of ownership, locking and flush times.
//!
//! Each shard owns its series behind one mutex, so two writers contend only when their series
//! hash to the same shard, and a flush or expiry pass locks one shard at a time. Nothing inside
//! a shard does I/O, so the lock is never held across an await or a socket write.
//!
//! Series are found by the hash of their ID bytes, borrowed from the decoded message, so an
//! add allocates only when a series or a window is new. Per category, a shard keeps its series
//! in a dense slab of 40-byte slots (a reference to the ID's bytes, half the hash, the
//! [`Entry`]) and finds them through a hash table of 32-bit slot indices; flushes walk the
//! slab in order. The (storage policy, aggregation types,
//! metric type, pipeline, forwarding hops) of each elem is interned in a small per-shard table
//! and referred to by a 16-bit index, which keeps elems small.
//!
//! Elems with a pipeline (see [`crate::pipeline`]) keep their transforms' state beside the
//! entries, keyed by series ID, so plain series pay nothing for it. Forwarded windows remember
//! which (source, version) pairs they were given, so a source that sends a window twice (a
//! retry, a failed-over leader) is counted once.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashMap};
use m3_hash_index::{HashIndex, PREFETCH_AHEAD};
use parking_lot::Mutex;

use m3_metric::{AggregationId, MetricType, StoragePolicy, id::with_suffix};
use m3_proto::flushpb;
use m3_rules::{TransformState, transform};

use crate::aggregation::{self, StateKind, WindowState};
use crate::entry::{Elem, Entry, TooManyWindows, WriteTime};
use crate::error::AddError;
use crate::flush::{
    AggregatedOutput, Category, FlushMode, ForwardedOutput, align_down, checked_align_down,
};
use crate::id_arena::{ArenaFull, IdArena, IdRef};
use crate::id_dictionary::SharedIdDictionary;
use crate::indexed_slots::IndexedSlots;
use crate::metadata::{Active, Target};
use crate::metrics::{Metrics, OutputDiscard, WindowDiscard};
use crate::options::{AggregatorOptions, nanos};
use crate::pipeline::{ParsedPipeline, PipelineTable};

/// Most distinct elem specs per shard (the index is 16 bits).
pub(crate) const MAX_SPECS: usize = u16::MAX as usize;

/// What an elem aggregates and how its outputs are named.
#[derive(Debug, Clone)]
pub(crate) struct ElemSpec {
    pub(crate) policy: StoragePolicy,
    pub(crate) resolution: i64,
    pub(crate) types: AggregationId,
    pub(crate) metric_type: MetricType,
    pub(crate) kind: StateKind,
    /// Whether outputs get the aggregation's suffix.
    pub(crate) suffixed: bool,
    /// Whether an elem of this spec was created in each category (for flush times).
    pub(crate) used_in: [bool; 3],
    /// The pipeline (index into the shard's [`PipelineTable`]; 0: none).
    pub(crate) pipeline: u16,
    /// How many aggregators forwarded the values before this one (0: written by a client).
    pub(crate) forwarded_times: u32,
}

/// (policy, aggregation types, metric type, pipeline, forwarding hops).
type SpecKey = (StoragePolicy, AggregationId, MetricType, u16, u32);

/// The interned specs of one shard.
///
/// Specs, and the pipelines they name, come and go with the series that use them (a rollup
/// whose ID carries a pod's name gets a new pipeline, and so a new spec, with every pod): when
/// expiry has removed series and specs were added since, [`ShardState::sweep_specs`] frees
/// the specs no elem uses and the pipelines no spec names, and new ones take the freed indexes
/// ([`IndexedSlots`]).
#[derive(Debug, Default)]
pub(crate) struct SpecTable {
    specs: IndexedSlots<ElemSpec>,
    index: HashMap<SpecKey, u16>,
    last: Option<(SpecKey, u16)>,
    pipelines: PipelineTable,
    /// Specs interned since the last sweep: none, and a sweep would find nothing to free.
    added_since_sweep: usize,
}

impl SpecTable {
    /// The index, state kind and resolution of the spec for `key`, created (after validation)
    /// if new.
    fn intern(
        &mut self,
        key: SpecKey,
        category: Category,
    ) -> Result<(u16, StateKind, i64), AddError> {
        let found = match &self.last {
            Some((k, i)) if *k == key => Some(*i),
            _ => self.index.get(&key).copied(),
        };
        let index = match found {
            Some(i) => i,
            None => {
                let (policy, types, metric_type, pipeline, forwarded_times) = key;
                if !aggregation::is_valid(types, metric_type) {
                    return Err(AddError::InvalidAggregation {
                        metric_type,
                        aggregation_id: types.0,
                    });
                }
                let resolution = policy.resolution.window_nanos();
                if resolution <= 0 {
                    return Err(AddError::InvalidStoragePolicy);
                }
                let spec = ElemSpec {
                    policy,
                    resolution,
                    types,
                    metric_type,
                    kind: StateKind::for_types(types),
                    // One aggregation of a counter or gauge keeps the series' name (the storage
                    // policy tells windows apart), as M3 names Prometheus series; several need
                    // a suffix each, and timers always have one.
                    suffixed: metric_type == MetricType::Timer || types.types().nth(1).is_some(),
                    used_in: [false; 3],
                    pipeline,
                    forwarded_times,
                };
                let i = self
                    .specs
                    .add(spec, MAX_SPECS)
                    .ok_or(AddError::TooManyPolicies { max: MAX_SPECS })?;
                self.index.insert(key, i);
                self.added_since_sweep += 1;
                i
            }
        };
        self.last = Some((key, index));
        match self.specs.get_mut(index) {
            Some(spec) => {
                spec.used_in[category.index()] = true;
                Ok((index, spec.kind, spec.resolution))
            }
            // The index and the list change together: not reached.
            None => Err(AddError::InvalidStoragePolicy),
        }
    }

    /// The live spec at `index`.
    fn get(&self, index: u16) -> Option<&ElemSpec> {
        self.specs.get(index)
    }

    /// The live specs.
    fn live(&self) -> impl Iterator<Item = &ElemSpec> {
        self.specs.values()
    }

    /// Frees every spec whose index `in_use` does not hold, then every pipeline no spec left
    /// names. Returns (specs, pipelines) freed.
    fn sweep(&mut self, in_use: &[bool]) -> (usize, usize) {
        self.added_since_sweep = 0;
        self.last = None;
        let mut freed = 0;
        for i in 0..self.specs.slots().len() {
            let Ok(i) = u16::try_from(i) else { break };
            if in_use.get(usize::from(i)).copied().unwrap_or(false) {
                continue;
            }
            if let Some(spec) = self.specs.remove(i) {
                self.index.remove(&(
                    spec.policy,
                    spec.types,
                    spec.metric_type,
                    spec.pipeline,
                    spec.forwarded_times,
                ));
                freed += 1;
            }
        }
        let highest = self.live().map(|spec| spec.pipeline).max().unwrap_or(0);
        let mut pipelines_in_use = vec![false; usize::from(highest) + 1];
        for spec in self.live() {
            pipelines_in_use[usize::from(spec.pipeline)] = true;
        }
        (freed, self.pipelines.sweep(&pipelines_in_use))
    }
}

/// A series: where its ID's bytes are (in the map's [`IdArena`]), the half of its
/// [`entry_hash`] the index does not keep, and its state.
#[derive(Debug)]
struct Slot {
    id: IdRef,
    hash_low: u32,
    entry: Entry,
}

/// The hash every shard finds a series ID by: one random seed per process, so a batch can
/// hash its IDs before it takes any shard's lock ([`entry_hash`]).
fn id_hasher() -> &'static DefaultHashBuilder {
    static HASHER: OnceLock<DefaultHashBuilder> = OnceLock::new();
    HASHER.get_or_init(DefaultHashBuilder::default)
}

/// The hash a shard finds the series `id` by.
pub(crate) fn entry_hash(id: &[u8]) -> u64 {
    id_hasher().hash_one(id)
}

/// Entries by the 64-bit hash of their ID: a dense slab of slots, found through a
/// [`HashIndex`] of 32-bit slot indices (8-byte buckets, instead of a whole slot per bucket).
/// One hash per lookup-or-insert ([`entry_hash`]); the IDs are packed in an [`IdArena`] in
/// the form an [`IdDictionary`](crate::id_dictionary::IdDictionary) gives them (the tag
/// pairs other series share kept once) and decoded only to flush or forget a series. The
/// dictionary is the aggregator's, shared by every map of every shard, so a metric name every
/// shard sees is kept once; its lock is the innermost, taken for an encode or a release, and
/// for reading through a whole flush of the map. A map releases its IDs' symbols when it is
/// dropped (its shard moved away).
///
/// A series is known by its hash, as M3's aggregator map knows a series by a 128-bit murmur3
/// of its ID: the index compares the hash's high 32 bits (its bucket tag) and the slot the
/// low 32, and the ID bytes are never compared. Comparing them took a cache miss of its own
/// on every add (the bytes lie apart from the slot) and a `memcmp`, an eighth of an
/// aggregator's CPU under load. Two IDs of one shard and category with the same 64-bit hash
/// would share an entry: a lookup meets another series' slot with the same tag about once in
/// 2^32 buckets it probes (two or three), and that slot's low half matches once in 2^32 of
/// those, so at three million adds a second an aggregator would misfile one sample in some
/// tens of thousands of years.
#[derive(Debug, Default)]
struct EntryMap {
    index: HashIndex,
    slots: Vec<Slot>,
    ids: IdArena,
    dict: SharedIdDictionary,
    /// An ID being encoded or decoded.
    scratch: Vec<u8>,
    /// Per spec, the earliest end a window of this map may have.
    earliest_ends: EarliestEnds,
}

/// Per elem spec, a time no window of a map ends before: lowered as windows are added,
/// raised past each flush's target. A flush whose targets all lie before these has nothing
/// to take, and skips the map's slots instead of reading every elem of every series (with a
/// 1 s `checkEvery` and 10 s windows, nine flushes in ten). Window ends are multiples of
/// their resolution, so once a flush took every window ending at or before `until`, what is
/// left ends at `align_down(until) + resolution` or later.
#[derive(Debug, Default)]
struct EarliestEnds(Vec<i64>);

impl EarliestEnds {
    /// A window of `spec` ending at `end` was opened or written to.
    #[inline]
    fn window_added(&mut self, spec: u16, end: i64) {
        let spec = usize::from(spec);
        if spec >= self.0.len() {
            self.0.resize(spec + 1, i64::MAX);
        }
        let earliest = &mut self.0[spec];
        *earliest = (*earliest).min(end);
    }

    /// Whether a flush taking, per spec, the windows ending at or before `plan[spec]` may
    /// take any.
    fn any_due(&self, plan: &[i64]) -> bool {
        plan.iter()
            .zip(&self.0)
            .any(|(&until, &earliest)| until >= earliest)
    }

    /// A flush took the windows of `spec` ending at or before `until`.
    fn flushed(&mut self, spec: usize, until: i64, resolution: i64) {
        if let Some(earliest) = self.0.get_mut(spec)
            && until >= *earliest
        {
            *earliest = align_down(until, resolution).saturating_add(resolution);
        }
    }
}

impl Drop for EntryMap {
    fn drop(&mut self) {
        if self.slots.is_empty() {
            return;
        }
        let mut dict = self.dict.write();
        for slot in &self.slots {
            dict.release(self.ids.get(slot.id));
        }
    }
}

impl EntryMap {
    /// An empty map whose IDs are stored through `dict`.
    fn new(dict: SharedIdDictionary) -> EntryMap {
        EntryMap {
            index: HashIndex::default(),
            slots: Vec::new(),
            ids: IdArena::default(),
            dict,
            scratch: Vec::new(),
            earliest_ends: EarliestEnds::default(),
        }
    }

    /// The slot index of the entry for `id` (whose [`entry_hash`] is `hash`), created with
    /// `make` if missing (then `true`).
    /// [`ArenaFull`] when the series is new and the arena has no room for its ID.
    fn get_or_insert(
        &mut self,
        id: &[u8],
        hash: u64,
        make: impl FnOnce() -> Entry,
    ) -> Result<(usize, bool), ArenaFull> {
        if let Some(i) = self.find(hash) {
            return Ok((i, false));
        }
        let EntryMap {
            index,
            slots,
            ids,
            dict,
            scratch,
            ..
        } = self;
        scratch.clear();
        let mut dict = dict.write();
        dict.encode(id, scratch);
        let id = match ids.add(scratch) {
            Ok(at) => at,
            Err(full) => {
                dict.release(scratch);
                return Err(full);
            }
        };
        drop(dict);
        let i = slots.len();
        // Shard-local counts stay far below 2^32; a slab that large would have failed to
        // allocate first.
        index.insert(
            hash,
            u32::try_from(i).expect("fewer than 2^32 entries per shard"),
        );
        if slots.len() == slots.capacity() {
            // Grow by a quarter rather than double: the slab is most of a shard's fixed cost
            // per series.
            slots.reserve_exact((i / 4).max(16));
        }
        slots.push(Slot {
            id,
            hash_low: hash as u32,
            entry: make(),
        });
        Ok((i, true))
    }

    /// The slot index of the entry whose ID's [`entry_hash`] is `hash`, if there is one.
    fn find(&self, hash: u64) -> Option<usize> {
        let EntryMap { index, slots, .. } = self;
        index
            .find(hash, |i| slots[i as usize].hash_low == hash as u32)
            .map(|i| i as usize)
    }

    /// Starts loading the index bucket a lookup of `hash` reads first (see [`HashIndex`]).
    fn prefetch(&self, hash: u64) {
        self.index.prefetch(hash);
    }

    /// The ID of the slot at `i`.
    #[cfg(test)]
    fn id(&self, i: usize) -> Vec<u8> {
        let mut id = Vec::new();
        self.dict
            .read()
            .decode(self.ids.get(self.slots[i].id), &mut id);
        id
    }

    /// Removes the slot at `i`, moving the last slot into its place. The ID's bytes are given
    /// back by [`compact_ids`](Self::compact_ids).
    fn remove_at(&mut self, i: usize) {
        let EntryMap {
            index,
            slots,
            ids,
            dict,
            scratch,
            ..
        } = self;
        let mut dict = dict.write();
        let removed = slots.swap_remove(i);
        let stored = ids.get(removed.id);
        scratch.clear();
        dict.decode(stored, scratch);
        index.remove(entry_hash(scratch), i as u32);
        dict.release(stored);
        ids.remove(removed.id);
        if let Some(moved) = slots.get(i) {
            scratch.clear();
            dict.decode(ids.get(moved.id), scratch);
            index.replace(entry_hash(scratch), slots.len() as u32, i as u32);
        }
    }

    /// The ID of the slot at `i`, decoded into the map's scratch buffer.
    fn decode_id(&mut self, i: usize) -> &[u8] {
        self.scratch.clear();
        self.dict
            .read()
            .decode(self.ids.get(self.slots[i].id), &mut self.scratch);
        &self.scratch
    }

    /// Copies the live IDs into fresh pages once removed ones take more room than they do,
    /// and gives back the index's and the slots' room once most of it is empty (series that
    /// came and went would otherwise keep the largest size the shard ever had).
    fn compact_ids(&mut self) {
        if self.ids.is_sparse() {
            self.ids.compact(self.slots.iter_mut().map(|s| &mut s.id));
        }
        if self.index.shrink_if_sparse() {
            self.slots.shrink_to(self.slots.len() * 2);
        }
    }

    fn len(&self) -> usize {
        self.slots.len()
    }

    fn contains(&self, id: &[u8]) -> bool {
        self.find(entry_hash(id)).is_some()
    }

    /// Heap bytes of the index, the slab and the IDs (by capacity), without the shared
    /// dictionary.
    fn allocation_size(&self) -> usize {
        self.index.allocation_size()
            + self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.ids.allocation_size()
            + self.scratch.capacity()
    }
}

/// The transform state of a series' pipeline elems: (spec, one state per aggregation type and
/// head transform).
type PipelineStates = Vec<(u16, Vec<TransformState>)>;

/// Forwarded windows: (series ID, spec, window start) → the (source, version) pairs added.
type ForwardedSources = HashMap<(Box<[u8]>, u16, i64), Vec<(u32, u32)>>;

/// The mutable part of a shard.
#[derive(Debug, Default)]
pub(crate) struct ShardState {
    entries: [EntryMap; 3],
    specs: SpecTable,
    /// Per category, series ID → the state of its pipeline elems.
    transforms: [HashMap<Box<[u8]>, PipelineStates>; 3],
    sources: ForwardedSources,
    /// Leader flush times: (category, resolution, forwarding hops) → window end flushed up to.
    flushed: HashMap<(Category, i64, u32), i64>,
}

/// One forwarded write, already past the ownership check: the values the sources' leaders
/// aggregated for one window, for the series `id`.
pub(crate) struct Forwarded<'a> {
    pub(crate) metric_type: MetricType,
    pub(crate) id: &'a [u8],
    /// The source window's end.
    pub(crate) time_nanos: i64,
    pub(crate) values: &'a [f64],
    pub(crate) source_id: u32,
    pub(crate) version: u32,
    pub(crate) aggregation_id: AggregationId,
    pub(crate) policy: StoragePolicy,
    pub(crate) pipeline: Option<&'a m3_proto::pipelinepb::AppliedPipeline>,
    pub(crate) forwarded_times: u32,
    pub(crate) now_nanos: i64,
}

/// One sample to add to a shard, already past the ownership and metadata checks.
pub(crate) struct Sample<'a> {
    pub(crate) category: Category,
    pub(crate) metric_type: MetricType,
    pub(crate) id: &'a [u8],
    /// Timestamp used for bucketing and Last.
    pub(crate) time_nanos: i64,
    pub(crate) values: &'a [f64],
    pub(crate) now_nanos: i64,
}

/// One sample of a run added under one lock ([`ShardState::add_run`]): the sample, its ID's
/// [`entry_hash`] and its active metadata (not tombstoned).
pub(crate) struct RunSample<'a> {
    pub(crate) sample: Sample<'a>,
    pub(crate) hash: u64,
    pub(crate) active: Active<'a>,
    /// The shard came from a hint ([`crate::shard_hints`]), not from the shard function: the
    /// series is looked up here but never created, and a miss is handed back unadded.
    pub(crate) shard_hinted: bool,
}

/// The slot [`ShardState::add_run`] notes for a hinted sample whose series is not in the
/// shard (no slab reaches 2^32 − 1 slots).
const UNCONFIRMED_SLOT: u32 = u32::MAX;
/// The slot [`ShardState::add_run`] notes for a new series its shard had no room for.
const FULL_SLOT: u32 = u32::MAX - 1;

/// Buffers [`ShardState::add_run`] reuses from run to run.
#[derive(Debug, Default)]
pub(crate) struct RunScratch {
    /// Per sample of the run, its entry's slot and whether the run created it.
    slots: Vec<(u32, bool)>,
    /// The targets of the metadata being added.
    targets: Vec<Result<ResolvedTarget, AddError>>,
}

impl RunScratch {
    /// Scratch for runs of up to `samples` samples without growing.
    pub(crate) fn with_capacity(samples: usize) -> RunScratch {
        RunScratch {
            slots: Vec::with_capacity(samples),
            targets: Vec::new(),
        }
    }
}

/// Settings the shard needs on the add and flush paths, in nanoseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) buffer_past: i64,
    pub(crate) buffer_future: i64,
    pub(crate) buffer_before_cutover: i64,
    pub(crate) buffer_after_cutoff: i64,
    pub(crate) entry_ttl: i64,
    pub(crate) max_windows: usize,
    pub(crate) discard_nan: bool,
    pub(crate) default_types: [AggregationId; 3],
    /// Forwarded windows wait this long after their end, plus one resolution per hop.
    pub(crate) forwarding_delay: i64,
}

impl Limits {
    pub(crate) fn new(o: &AggregatorOptions) -> Limits {
        Limits {
            buffer_past: nanos(o.buffer_past),
            buffer_future: nanos(o.buffer_future),
            buffer_before_cutover: nanos(o.buffer_before_cutover),
            buffer_after_cutoff: nanos(o.buffer_after_cutoff),
            entry_ttl: nanos(o.entry_ttl),
            max_windows: o.max_open_windows_per_elem,
            discard_nan: o.discard_nan_aggregated_values,
            default_types: MetricType::ALL.map(|t| AggregationId::DEFAULT.resolve(t)),
            forwarding_delay: nanos(o.forwarding_max_const_delay()),
        }
    }

    /// How long after its end a forwarded window of `resolution` that went through `hops`
    /// aggregators waits for its sources (M3's `maxConstDelay + resolution × hops`).
    pub(crate) fn forwarding_delay(&self, resolution: i64, hops: u32) -> i64 {
        self.forwarding_delay
            .saturating_add(resolution.saturating_mul(i64::from(hops)))
    }

    /// The flush target of windows of `resolution` in `category`: windows ending at or before
    /// it are closed.
    /// With `final_flush`, every window that has ended is closed, whatever its category.
    fn flush_target(
        &self,
        category: Category,
        resolution: i64,
        hops: u32,
        now: i64,
        final_flush: bool,
    ) -> i64 {
        match category {
            _ if final_flush => now,
            Category::Untimed => now,
            Category::Timed => now.saturating_sub(self.buffer_past.saturating_add(resolution)),
            Category::Forwarded => now.saturating_sub(self.forwarding_delay(resolution, hops)),
        }
    }
}

/// A shard owned by this instance.
#[derive(Debug)]
pub(crate) struct Shard {
    pub(crate) id: u32,
    cutover_nanos: AtomicI64,
    /// Cutoff, with 0 (unbounded) stored as `i64::MAX`.
    cutoff_nanos: AtomicI64,
    /// Server time since which this instance holds every window of the shard it has not seen
    /// flushed: when it started receiving the shard's writes, raised by a forced follower
    /// flush to the time before which it dropped windows.
    since_nanos: AtomicI64,
    pub(crate) state: Mutex<ShardState>,
}

impl Shard {
    /// A shard whose series IDs are stored through `dict`, the aggregator's.
    pub(crate) fn new(
        id: u32,
        cutover_nanos: i64,
        cutoff_nanos: i64,
        since_nanos: i64,
        dict: &SharedIdDictionary,
    ) -> Shard {
        let shard = Shard {
            id,
            cutover_nanos: AtomicI64::new(0),
            cutoff_nanos: AtomicI64::new(i64::MAX),
            since_nanos: AtomicI64::new(since_nanos),
            state: Mutex::new(ShardState {
                entries: std::array::from_fn(|_| EntryMap::new(dict.clone())),
                ..ShardState::default()
            }),
        };
        shard.set_window(cutover_nanos, cutoff_nanos);
        shard
    }

    /// Updates cutover and cutoff (0 cutoff = never).
    pub(crate) fn set_window(&self, cutover_nanos: i64, cutoff_nanos: i64) {
        let cutoff = if cutoff_nanos == 0 {
            i64::MAX
        } else {
            cutoff_nanos
        };
        self.cutover_nanos.store(cutover_nanos, Ordering::Relaxed);
        self.cutoff_nanos.store(cutoff, Ordering::Relaxed);
    }

    /// See the field: since when this instance holds the shard's unflushed windows.
    pub(crate) fn since_nanos(&self) -> i64 {
        self.since_nanos.load(Ordering::Relaxed)
    }

    /// Records that windows ending at or before `nanos` were dropped unflushed.
    pub(crate) fn raise_since(&self, nanos: i64) {
        self.since_nanos.fetch_max(nanos, Ordering::Relaxed);
    }

    /// The shard's ID, cutover and cutoff (0 = never) as assigned.
    pub(crate) fn assignment(&self) -> crate::ShardAssignment {
        let cutoff = self.cutoff_nanos.load(Ordering::Relaxed);
        crate::ShardAssignment {
            id: self.id,
            cutover_nanos: self.cutover_nanos.load(Ordering::Relaxed),
            cutoff_nanos: if cutoff == i64::MAX { 0 } else { cutoff },
        }
    }

    /// Whether the shard accepts writes at `now`.
    pub(crate) fn check_writeable(&self, now: i64, limits: &Limits) -> Result<(), AddError> {
        let from = self
            .cutover_nanos
            .load(Ordering::Relaxed)
            .saturating_sub(limits.buffer_before_cutover);
        let until = self
            .cutoff_nanos
            .load(Ordering::Relaxed)
            .saturating_add(limits.buffer_after_cutoff);
        if now >= from && now < until {
            Ok(())
        } else {
            Err(AddError::ShardNotWriteable {
                shard: self.id,
                from_nanos: from,
                until_nanos: until,
                now_nanos: now,
            })
        }
    }
}

impl ShardState {
    /// Adds `sample` to every target `visit_targets` yields, reporting each outcome to `outcome`.
    /// Returns whether at least one target accepted the sample.
    pub(crate) fn add(
        &mut self,
        sample: &Sample<'_>,
        limits: &Limits,
        metrics: &Metrics,
        visit_targets: impl FnOnce(&mut dyn FnMut(Result<Target<'_>, AddError>)),
        outcome: &mut dyn FnMut(Result<(), AddError>),
    ) -> bool {
        let ShardState { entries, specs, .. } = self;
        let map = &mut entries[sample.category.index()];
        let found = map.get_or_insert(sample.id, entry_hash(sample.id), || {
            metrics.entry_created();
            Entry::new()
        });
        let Ok((slot, _)) = found else {
            outcome(Err(AddError::ShardFull));
            return false;
        };
        let EntryMap {
            slots,
            earliest_ends,
            ..
        } = &mut *map;
        let entry = &mut slots[slot].entry;
        let mut accepted = false;
        visit_targets(&mut |target| {
            let result = target
                .and_then(|target| add_target(specs, entry, earliest_ends, sample, limits, target));
            accepted |= result.is_ok();
            outcome(result);
        });
        if !accepted && entry.is_empty() {
            // Nothing was accepted for a series we just created: do not keep it.
            map.remove_at(slot);
            metrics.entry_dropped_unused();
        }
        accepted
    }

    /// Adds a run of samples of one category, as [`add`](Self::add) adds each, in two passes:
    /// first every sample's entry is found or created (lookups into a large table that miss
    /// the cache, overlapped by the processor when nothing else runs between them), then the
    /// values are added. `scratch` holds buffers kept between runs. `outcome` gets each
    /// sample's index in `run` with whether a target accepted it and its first error. A series
    /// created and left empty by the run is removed at its end, so its slot, and the order
    /// flushes emit it in, may differ from adding the values one by one (nothing else does).
    /// A [`shard_hinted`](RunSample::shard_hinted) sample whose series this shard does not
    /// hold is not added and gets no `outcome`: its index in `run` goes to `unconfirmed`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn add_run(
        &mut self,
        run: &[RunSample<'_>],
        unconfirmed: &mut Vec<usize>,
        scratch: &mut RunScratch,
        limits: &Limits,
        metrics: &Metrics,
        defaults: &[StoragePolicy],
        outcome: &mut dyn FnMut(usize, bool, Option<AddError>),
    ) {
        let Some(category) = run.first().map(|r| r.sample.category) else {
            return;
        };
        let ShardState { entries, specs, .. } = self;
        let map = &mut entries[category.index()];
        let RunScratch { slots, targets } = scratch;
        slots.clear();
        for (i, r) in run.iter().enumerate() {
            if let Some(ahead) = run.get(i + PREFETCH_AHEAD) {
                map.prefetch(ahead.hash);
            }
            let (slot, created) = if r.shard_hinted {
                match map.find(r.hash) {
                    Some(slot) => (slot, false),
                    None => {
                        unconfirmed.push(i);
                        slots.push((UNCONFIRMED_SLOT, false));
                        continue;
                    }
                }
            } else {
                match map.get_or_insert(r.sample.id, r.hash, Entry::new) {
                    Ok(found) => found,
                    Err(ArenaFull) => {
                        slots.push((FULL_SLOT, false));
                        continue;
                    }
                }
            };
            if created {
                metrics.entry_created();
            }
            // A shard's slab stays far below 2^32 slots (see `get_or_insert`).
            slots.push((slot as u32, created));
        }
        // The targets of the previous sample's metadata and metric type, resolved once for
        // every sample that shares them (nearly all of a run: a client's rules give most
        // series the same metadata).
        let mut resolved_for: Option<(Active<'_>, MetricType)> = None;
        for (i, (r, &(slot, _))) in run.iter().zip(slots.iter()).enumerate() {
            if slot == UNCONFIRMED_SLOT {
                continue;
            }
            if slot == FULL_SLOT {
                let e = AddError::ShardFull;
                metrics.record_rejected(e.reason(), r.sample.values.len() as u64);
                outcome(i, false, Some(e));
                continue;
            }
            let metric_type = r.sample.metric_type;
            let same = resolved_for
                .is_some_and(|(a, t)| t == metric_type && a.is_same_metadata(&r.active));
            if !same {
                targets.clear();
                crate::metadata::for_each_target(r.active, defaults, |target| {
                    targets.push(
                        target.and_then(|t| {
                            resolve_target(specs, metric_type, category, 0, limits, t)
                        }),
                    );
                });
                resolved_for = Some((r.active, metric_type));
            }
            let EntryMap {
                slots: entries,
                earliest_ends,
                ..
            } = &mut *map;
            let entry = &mut entries[slot as usize].entry;
            let mut accepted = false;
            let mut first_error = None;
            for target in targets.iter() {
                match target
                    .clone()
                    .and_then(|t| add_resolved(entry, earliest_ends, &r.sample, limits, t))
                {
                    Ok(()) => accepted = true,
                    Err(e) => {
                        metrics.record_rejected(e.reason(), r.sample.values.len() as u64);
                        first_error.get_or_insert(e);
                    }
                }
            }
            outcome(i, accepted, first_error);
        }
        // Entries this run created that took nothing are not kept. Removing moves the last
        // slot into the freed one, so the highest go first: every slot still to be removed is
        // then below the one moved.
        slots.retain(|&(_, created)| created);
        slots.sort_unstable_by_key(|&(slot, _)| std::cmp::Reverse(slot));
        for &(slot, _) in slots.iter() {
            if map.slots[slot as usize].entry.is_empty() {
                map.remove_at(slot as usize);
                metrics.entry_dropped_unused();
            }
        }
        map.compact_ids();
    }

    /// Adds one forwarded write to its window, once per (source, version): a repeat is counted
    /// (`forwarded_duplicates`) and ignored. The values land in the window that ends at the
    /// source window's end, which is also the output's timestamp.
    pub(crate) fn add_forwarded(
        &mut self,
        write: &Forwarded<'_>,
        limits: &Limits,
        metrics: &Metrics,
    ) -> Result<(), AddError> {
        let ShardState {
            entries,
            specs,
            sources,
            ..
        } = self;
        let ResolvedTarget {
            spec,
            kind,
            resolution,
        } = resolve_target(
            specs,
            write.metric_type,
            Category::Forwarded,
            write.forwarded_times,
            limits,
            Target {
                aggregation_id: write.aggregation_id,
                policy: write.policy,
                pipeline: write.pipeline,
            },
        )?;
        let end = write.time_nanos;
        let now = write.now_nanos;
        let late_limit =
            now.saturating_sub(limits.forwarding_delay(resolution, write.forwarded_times));
        if end < late_limit {
            return Err(AddError::TooFarInThePast {
                timestamp_nanos: end,
                limit_nanos: late_limit,
                off_by: duration_between(end, late_limit),
            });
        }
        let future_limit = now.saturating_add(limits.buffer_future);
        if end > future_limit {
            return Err(AddError::TooFarInTheFuture {
                timestamp_nanos: end,
                limit_nanos: future_limit,
                off_by: duration_between(future_limit, end),
            });
        }
        // The window that ends at `end`: its values are stamped with the source window's end.
        let t = end.saturating_sub(1);
        let Some(start) =
            checked_align_down(t, resolution).filter(|s| s.checked_add(resolution).is_some())
        else {
            return Err(AddError::InvalidTimestamp {
                timestamp_nanos: end,
            });
        };
        let seen = sources
            .entry((Box::from(write.id), spec, start))
            .or_default();
        if seen.contains(&(write.source_id, write.version)) {
            metrics.record_forwarded_duplicate(write.values.len() as u64);
            return Ok(());
        }
        let map = &mut entries[Category::Forwarded.index()];
        let (slot, _) = map
            .get_or_insert(write.id, entry_hash(write.id), || {
                metrics.entry_created();
                Entry::new()
            })
            .map_err(|ArenaFull| AddError::ShardFull)?;
        let written = WriteTime::at(now);
        map.slots[slot]
            .entry
            .elem_mut(spec, kind, written)
            .add(
                start,
                start + resolution,
                t,
                write.values,
                limits.max_windows,
                written,
            )
            .map_err(|TooManyWindows| AddError::TooManyWindows {
                max: limits.max_windows,
            })?;
        map.earliest_ends.window_added(spec, start + resolution);
        seen.push((write.source_id, write.version));
        Ok(())
    }

    /// Flushes this shard (see [`FlushMode`]); returns (outputs, windows discarded).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn flush(
        &mut self,
        shard: &Shard,
        now: i64,
        mode: FlushMode<'_>,
        limits: &Limits,
        metrics: &Metrics,
        out: &mut Vec<AggregatedOutput>,
        forwarded: &mut Vec<ForwardedOutput>,
        times: Option<&mut flushpb::ShardFlushTimes>,
    ) -> (usize, u64) {
        let cutover = shard.cutover_nanos.load(Ordering::Relaxed);
        let cutoff = shard.cutoff_nanos.load(Ordering::Relaxed);
        // Where a follower's discarding stops: the leader's flush times of this shard, or a
        // time before which everything goes.
        let follower_until = match mode {
            FlushMode::Leader | FlushMode::LeaderFinal => None,
            FlushMode::Follower { flushed_times } => Some(FollowerUntil::Flushed(
                flushed_times.by_shard.get(&shard.id),
            )),
            FlushMode::FollowerForced { before_nanos } => Some(FollowerUntil::Forced(
                before_nanos,
                WindowDiscard::FollowerForced,
            )),
            FlushMode::NoOutput { before_nanos } => {
                Some(FollowerUntil::Forced(before_nanos, WindowDiscard::NoOutput))
            }
        };
        let final_flush = matches!(mode, FlushMode::LeaderFinal);
        let ShardState {
            entries,
            specs,
            transforms,
            sources,
            flushed,
        } = self;
        let spec_list = specs.specs.slots();
        let mut emitted = 0usize;
        let mut discarded = [0u64; WindowDiscard::ALL.len()];
        let mut plan: Vec<i64> = Vec::with_capacity(spec_list.len());
        for category in Category::ALL {
            // Per spec: windows ending at or before this are taken out.
            plan.clear();
            plan.extend(spec_list.iter().map(|spec| {
                // A freed spec has no elem to flush.
                let Some(spec) = spec else {
                    return i64::MIN;
                };
                match follower_until {
                    None => align_down(
                        limits.flush_target(
                            category,
                            spec.resolution,
                            spec.forwarded_times,
                            now,
                            final_flush,
                        ),
                        spec.resolution,
                    ),
                    Some(FollowerUntil::Flushed(times)) => times
                        .and_then(|t| {
                            flushed_time(t, category, spec.resolution, spec.forwarded_times)
                        })
                        .unwrap_or(i64::MIN),
                    Some(FollowerUntil::Forced(before, _)) => align_down(before, spec.resolution),
                }
            }));
            let states = &mut transforms[category.index()];
            let EntryMap {
                slots,
                ids,
                dict,
                scratch,
                earliest_ends,
                ..
            } = &mut entries[category.index()];
            let due = earliest_ends.any_due(&plan);
            let slots = if due { &mut slots[..] } else { &mut [] };
            let dict = dict.read();
            for Slot {
                id: stored, entry, ..
            } in slots.iter_mut()
            {
                // Decoded once a window of the series is due, not for every series each pass.
                let mut decoded = false;
                let mut id_of = |scratch: &mut Vec<u8>| {
                    if !decoded {
                        scratch.clear();
                        dict.decode(ids.get(*stored), scratch);
                        decoded = true;
                    }
                };
                for elem in entry.elems_mut() {
                    let (Some(spec), Some(until)) =
                        (specs.get(elem.spec()), plan.get(usize::from(elem.spec())))
                    else {
                        continue;
                    };
                    let resolution = spec.resolution;
                    let pipeline = (spec.pipeline != 0).then(|| specs.pipelines.get(spec.pipeline));
                    let mut state = pipeline.map(|p| {
                        id_of(scratch);
                        pipeline_state(states, scratch, elem.spec(), spec, p)
                    });
                    elem.take_until(resolution, *until, &mut |start, window| {
                        let end = start.saturating_add(resolution);
                        let discard = if let Some(until) = follower_until {
                            Some(match until {
                                FollowerUntil::Flushed(_) => WindowDiscard::Follower,
                                FollowerUntil::Forced(_, reason) => reason,
                            })
                        } else if end <= cutover {
                            Some(WindowDiscard::BeforeCutover)
                        } else if start >= cutoff {
                            Some(WindowDiscard::AfterCutoff)
                        } else {
                            None
                        };
                        match (pipeline, state.as_deref_mut()) {
                            // Every replica runs the transforms on every window, emitted or
                            // not, so a new leader carries on with the same state.
                            (Some(p), Some(state)) => {
                                let sink =
                                    discard.is_none().then_some((&mut *out, &mut *forwarded));
                                id_of(scratch);
                                emitted += run_pipeline(
                                    scratch, spec, p, state, end, window, shard.id, limits,
                                    metrics, sink,
                                );
                            }
                            _ if discard.is_none() => {
                                id_of(scratch);
                                emitted += emit(scratch, spec, end, window, limits, metrics, out);
                            }
                            _ => {}
                        }
                        if let Some(reason) = discard {
                            discarded[reason as usize] += 1;
                        }
                    });
                }
            }
            if due {
                for (spec, (until, of_spec)) in plan.iter().zip(spec_list).enumerate() {
                    if let Some(of_spec) = of_spec {
                        earliest_ends.flushed(spec, *until, of_spec.resolution);
                    }
                }
            }
            if category == Category::Forwarded {
                // Windows taken out no longer need to know their sources.
                sources.retain(|(_, spec, start), _| {
                    match (specs.get(*spec), plan.get(usize::from(*spec))) {
                        (Some(spec), Some(until)) => start.saturating_add(spec.resolution) > *until,
                        _ => false,
                    }
                });
            }
        }
        if let Some(times) = times {
            for spec in specs.live() {
                for category in Category::ALL {
                    if !spec.used_in[category.index()] {
                        continue;
                    }
                    let target = align_down(
                        limits.flush_target(
                            category,
                            spec.resolution,
                            spec.forwarded_times,
                            now,
                            final_flush,
                        ),
                        spec.resolution,
                    );
                    let slot = flushed
                        .entry((category, spec.resolution, spec.forwarded_times))
                        .or_insert(i64::MIN);
                    *slot = (*slot).max(target);
                    // A shard cut off emits no window starting at or after its cutoff, so its
                    // flush times claim no later window: the member that leads next in the
                    // shard set (a replacement) emits those instead of skipping them.
                    let claimed = if cutoff == i64::MAX {
                        *slot
                    } else {
                        (*slot).min(last_window_end_before(cutoff, spec.resolution))
                    };
                    set_flushed_time(
                        times,
                        category,
                        spec.resolution,
                        spec.forwarded_times,
                        claimed,
                    );
                }
            }
        }
        for reason in WindowDiscard::ALL {
            metrics.windows_discarded_by(reason, discarded[reason as usize]);
        }
        metrics.outputs_flushed_by(emitted as u64);
        (emitted, discarded.iter().sum())
    }

    /// The kinds of windows this shard holds, as their flush times are keyed.
    pub(crate) fn flush_keys(&self) -> Vec<crate::campaign::FlushKey> {
        let mut keys = Vec::new();
        for spec in self.specs.live() {
            for category in Category::ALL {
                if spec.used_in[category.index()] {
                    keys.push(crate::campaign::FlushKey {
                        category,
                        resolution_nanos: spec.resolution,
                        forwarded_times: spec.forwarded_times,
                    });
                }
            }
        }
        keys.sort_unstable_by_key(|k| (k.category.index(), k.resolution_nanos, k.forwarded_times));
        keys.dedup();
        keys
    }

    /// Removes entries idle for longer than the TTL with no open window; returns how many.
    /// Of the entries that stay, removes the elems idle that long with no open window: the
    /// elems of metadata a series no longer comes with (a rule changed), which M3 removes at
    /// the change, with the transform state kept for them.
    pub(crate) fn expire(&mut self, now: i64, limits: &Limits) -> usize {
        let mut removed = 0;
        let mut elems_removed = 0;
        let idle_elem = |elem: &Elem| now.saturating_sub(elem.written().nanos()) > limits.entry_ttl;
        for (map, states) in self.entries.iter_mut().zip(&mut self.transforms) {
            let mut i = 0;
            while let Some(s) = map.slots.get(i) {
                let idle = s
                    .entry
                    .last_write_nanos()
                    .is_none_or(|t| now.saturating_sub(t) > limits.entry_ttl);
                if !idle || s.entry.has_windows() {
                    let gone = map.slots[i].entry.remove_idle_elems(idle_elem);
                    if gone > 0 {
                        elems_removed += gone;
                        if let Some(per_series) = states.get_mut(map.decode_id(i)) {
                            let entry = &map.slots[i].entry;
                            per_series.retain(|(spec, _)| {
                                entry.elems().iter().any(|e| e.spec() == *spec)
                            });
                        }
                    }
                    i += 1;
                } else {
                    // The last slot moves to `i`; look at it next.
                    map.remove_at(i);
                    removed += 1;
                }
            }
            map.compact_ids();
        }
        if removed > 0 {
            // Transform state goes with its series.
            for (map, states) in self.entries.iter().zip(&mut self.transforms) {
                states.retain(|id, _| map.contains(id));
            }
        }
        if elems_removed > 0 {
            for states in &mut self.transforms {
                states.retain(|_, per_series| !per_series.is_empty());
            }
            tracing::debug!(elems_removed, "Removed idle elems of series still written.");
        }
        if (removed > 0 || elems_removed > 0) && self.specs.added_since_sweep > 0 {
            self.sweep_specs();
        }
        removed
    }

    /// Frees the specs no elem uses and the pipelines no spec names (see [`SpecTable`]), and
    /// the state kept by a freed spec's index, which a new spec may take. Walks every elem:
    /// run after expiry, which walked every series already.
    fn sweep_specs(&mut self) {
        let mut in_use = vec![false; self.specs.specs.slots().len()];
        for map in &self.entries {
            for slot in &map.slots {
                for elem in slot.entry.elems() {
                    if let Some(used) = in_use.get_mut(usize::from(elem.spec())) {
                        *used = true;
                    }
                }
            }
        }
        let (specs, pipelines) = self.specs.sweep(&in_use);
        if specs == 0 {
            return;
        }
        let used = |spec: u16| in_use.get(usize::from(spec)).copied().unwrap_or(false);
        for states in &mut self.transforms {
            for per_series in states.values_mut() {
                per_series.retain(|(spec, _)| used(*spec));
            }
            states.retain(|_, per_series| !per_series.is_empty());
        }
        self.sources.retain(|(_, spec, _), _| used(*spec));
        tracing::debug!(
            specs,
            pipelines,
            "Freed the elem specs and pipelines of expired series."
        );
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.iter().map(EntryMap::len).sum()
    }

    /// Whether this shard holds a series entry for `id` (of any category).
    #[cfg(test)]
    pub(crate) fn holds(&self, id: &[u8]) -> bool {
        self.entries.iter().any(|map| map.contains(id))
    }

    /// (specs, pipelines) this shard holds.
    pub(crate) fn table_sizes(&self) -> (usize, usize) {
        (self.specs.live().count(), self.specs.pipelines.len())
    }

    /// (entries, windows, estimated heap bytes) of this shard.
    pub(crate) fn stats(&self) -> (usize, usize, usize) {
        let mut windows = 0;
        let mut bytes = 0;
        for map in &self.entries {
            bytes += map.allocation_size();
            for Slot { entry, .. } in &map.slots {
                windows += entry.elems().iter().map(Elem::len).sum::<usize>();
                bytes += entry.heap_bytes();
            }
        }
        (self.len(), windows, bytes)
    }
}

/// A target as a shard's elems know it: the elem spec, its state kind and resolution.
#[derive(Debug, Clone, Copy)]
struct ResolvedTarget {
    spec: u16,
    kind: StateKind,
    resolution: i64,
}

/// Interns `target` for values of `metric_type` in `category` that were forwarded
/// `forwarded_times` times (0 for a client's values).
fn resolve_target(
    specs: &mut SpecTable,
    metric_type: MetricType,
    category: Category,
    forwarded_times: u32,
    limits: &Limits,
    target: Target<'_>,
) -> Result<ResolvedTarget, AddError> {
    let types = if target.aggregation_id.is_default() {
        limits.default_types[metric_type as usize]
    } else {
        target.aggregation_id
    };
    let pipeline = specs.pipelines.intern(target.pipeline)?;
    let (spec, kind, resolution) = specs.intern(
        (target.policy, types, metric_type, pipeline, forwarded_times),
        category,
    )?;
    Ok(ResolvedTarget {
        spec,
        kind,
        resolution,
    })
}

fn add_target(
    specs: &mut SpecTable,
    entry: &mut Entry,
    earliest_ends: &mut EarliestEnds,
    sample: &Sample<'_>,
    limits: &Limits,
    target: Target<'_>,
) -> Result<(), AddError> {
    let resolved = resolve_target(
        specs,
        sample.metric_type,
        sample.category,
        0,
        limits,
        target,
    )?;
    add_resolved(entry, earliest_ends, sample, limits, resolved)
}

/// Adds `sample` to the window of `target` it falls in, if the buffers allow.
fn add_resolved(
    entry: &mut Entry,
    earliest_ends: &mut EarliestEnds,
    sample: &Sample<'_>,
    limits: &Limits,
    target: ResolvedTarget,
) -> Result<(), AddError> {
    let ResolvedTarget {
        spec,
        kind,
        resolution,
    } = target;
    let t = sample.time_nanos;
    if sample.category == Category::Timed {
        let now = sample.now_nanos;
        let future_limit = now.saturating_add(limits.buffer_future);
        if t > future_limit {
            return Err(AddError::TooFarInTheFuture {
                timestamp_nanos: t,
                limit_nanos: future_limit,
                off_by: duration_between(future_limit, t),
            });
        }
        let past_limit = now.saturating_sub(limits.buffer_past.saturating_add(resolution));
        if t < past_limit {
            return Err(AddError::TooFarInThePast {
                timestamp_nanos: t,
                limit_nanos: past_limit,
                off_by: duration_between(t, past_limit),
            });
        }
    }
    let Some(start) =
        checked_align_down(t, resolution).filter(|start| start.checked_add(resolution).is_some())
    else {
        return Err(AddError::InvalidTimestamp { timestamp_nanos: t });
    };
    let now = WriteTime::at(sample.now_nanos);
    entry
        .elem_mut(spec, kind, now)
        .add(
            start,
            start + resolution,
            t,
            sample.values,
            limits.max_windows,
            now,
        )
        .map_err(|TooManyWindows| AddError::TooManyWindows {
            max: limits.max_windows,
        })?;
    earliest_ends.window_added(spec, start + resolution);
    Ok(())
}

fn duration_between(earlier: i64, later: i64) -> std::time::Duration {
    std::time::Duration::from_nanos(
        u64::try_from(i128::from(later) - i128::from(earlier)).unwrap_or(u64::MAX),
    )
}

/// The end of the last window of `resolution` that starts before `cutoff`: the last window a
/// shard cut off at `cutoff` emits.
pub(crate) fn last_window_end_before(cutoff: i64, resolution: i64) -> i64 {
    align_down(cutoff.saturating_sub(1), resolution).saturating_add(resolution)
}

/// The flush time `times` holds for a category, resolution and number of hops.
pub(crate) fn flushed_time(
    times: &flushpb::ShardFlushTimes,
    category: Category,
    resolution: i64,
    hops: u32,
) -> Option<i64> {
    match category {
        Category::Untimed => times.standard_by_resolution.get(&resolution).copied(),
        Category::Timed => times.timed_by_resolution.get(&resolution).copied(),
        Category::Forwarded => times
            .forwarded_by_resolution
            .get(&resolution)
            .and_then(|f| f.by_num_forwarded_times.get(&(hops as i32)))
            .copied(),
    }
}

fn set_flushed_time(
    times: &mut flushpb::ShardFlushTimes,
    category: Category,
    resolution: i64,
    hops: u32,
    value: i64,
) {
    match category {
        Category::Untimed => {
            times.standard_by_resolution.insert(resolution, value);
        }
        Category::Timed => {
            times.timed_by_resolution.insert(resolution, value);
        }
        Category::Forwarded => {
            times
                .forwarded_by_resolution
                .entry(resolution)
                .or_default()
                .by_num_forwarded_times
                .insert(hops as i32, value);
        }
    }
}

/// The transform state of one series' pipeline elem, created on first use.
fn pipeline_state<'s>(
    states: &'s mut HashMap<Box<[u8]>, PipelineStates>,
    id: &[u8],
    spec_index: u16,
    spec: &ElemSpec,
    pipeline: &ParsedPipeline,
) -> &'s mut Vec<TransformState> {
    if !states.contains_key(id) {
        states.insert(Box::from(id), Vec::new());
    }
    let Some(per_series) = states.get_mut(id) else {
        unreachable!("inserted above")
    };
    let at = match per_series.iter().position(|(s, _)| *s == spec_index) {
        Some(at) => at,
        None => {
            let n = spec.types.types().count() * pipeline.head.len();
            per_series.push((spec_index, vec![TransformState::default(); n]));
            per_series.len() - 1
        }
    };
    &mut per_series[at].1
}

/// Runs one closed window of a pipeline elem: each aggregation's value goes through the head
/// transforms; the result is forwarded under the rollup ID, or emitted when there is no rollup.
/// With no `sink` (a window a follower discards) only the transforms' state moves on. Returns
/// how many values were emitted or forwarded.
#[allow(clippy::too_many_arguments)]
fn run_pipeline(
    id: &[u8],
    spec: &ElemSpec,
    pipeline: &ParsedPipeline,
    states: &mut [TransformState],
    end: i64,
    window: &dyn WindowState,
    source_shard: u32,
    limits: &Limits,
    metrics: &Metrics,
    mut sink: Option<(&mut Vec<AggregatedOutput>, &mut Vec<ForwardedOutput>)>,
) -> usize {
    let per_type = pipeline.head.len();
    let mut n = 0;
    for (i, aggregation) in spec.types.types().enumerate() {
        let value = window.value_of(aggregation);
        let transformed = match states.get_mut(i * per_type..(i + 1) * per_type) {
            Some(states) => transform::apply(&pipeline.head, states, end, value, spec.resolution),
            None => continue,
        };
        let Some((out, forwarded)) = sink.as_mut() else {
            continue;
        };
        if transformed.value.is_nan() && limits.discard_nan {
            metrics.output_discarded(OutputDiscard::Nan);
            continue;
        }
        if let Some(rollup) = &pipeline.rollup {
            forwarded.push(ForwardedOutput {
                id: rollup.id.clone(),
                metric_type: spec.metric_type,
                time_nanos: end,
                value: transformed.value,
                aggregation_id: rollup.aggregation,
                storage_policy: spec.policy,
                pipeline: pipeline.remainder.clone(),
                source_id: source_shard,
                forwarded_times: spec.forwarded_times + 1,
            });
            n += 1;
            continue;
        }
        let Some(output_id) = output_id(id, spec, aggregation, metrics) else {
            continue;
        };
        if let Some(at) = transformed.reset_at {
            out.push(AggregatedOutput {
                id: output_id.clone(),
                time_nanos: at,
                value: 0.0,
                storage_policy: spec.policy,
                aggregation,
                metric_type: spec.metric_type,
            });
        }
        out.push(AggregatedOutput {
            id: output_id,
            time_nanos: end,
            value: transformed.value,
            storage_policy: spec.policy,
            aggregation,
            metric_type: spec.metric_type,
        });
        n += 1;
    }
    n
}

/// The output ID of `aggregation` of the series `id`: with the aggregation's suffix when the
/// spec asks for one. `None` (counted) when the ID is malformed.
fn output_id(
    id: &[u8],
    spec: &ElemSpec,
    aggregation: m3_metric::AggregationType,
    metrics: &Metrics,
) -> Option<Vec<u8>> {
    let mut output_id = Vec::new();
    if spec.suffixed {
        if with_suffix(id, aggregation.output_name(), &mut output_id).is_err() {
            metrics.output_discarded(OutputDiscard::InvalidId);
            return None;
        }
    } else {
        output_id.extend_from_slice(id);
    }
    Some(output_id)
}

/// Appends the outputs of one closed window; returns how many were appended.
fn emit(
    id: &[u8],
    spec: &ElemSpec,
    end: i64,
    state: &dyn WindowState,
    limits: &Limits,
    metrics: &Metrics,
    out: &mut Vec<AggregatedOutput>,
) -> usize {
    let mut n = 0;
    for aggregation in spec.types.types() {
        let value = state.value_of(aggregation);
        if value.is_nan() && limits.discard_nan {
            metrics.output_discarded(OutputDiscard::Nan);
            continue;
        }
        let Some(output_id) = output_id(id, spec, aggregation, metrics) else {
            continue;
        };
        out.push(AggregatedOutput {
            id: output_id,
            time_nanos: end,
            value,
            storage_policy: spec.policy,
            aggregation,
            metric_type: spec.metric_type,
        });
        n += 1;
    }
    n
}

/// How far a follower's flush discards, per shard.
#[derive(Clone, Copy)]
enum FollowerUntil<'a> {
    /// Up to the leader's persisted flush times of the shard (none: nothing).
    Flushed(Option<&'a flushpb::ShardFlushTimes>),
    /// Every window ending at or before this time (a forced follower flush, or windows with
    /// nowhere to go), counted with the reason.
    Forced(i64, WindowDiscard),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slab_stays_consistent_through_removals() {
        let mut map = EntryMap::default();
        let ids: Vec<Vec<u8>> = (0..100u32).map(|i| i.to_be_bytes().to_vec()).collect();
        for id in &ids {
            map.get_or_insert(id, entry_hash(id), Entry::new).unwrap();
        }
        // Remove the first slot (ID 99 moves in), then the last (ID 98), then every third.
        map.remove_at(0);
        map.remove_at(map.len() - 1);
        let mut i = 0;
        while i < map.len() {
            if map.id(i)[3] % 3 == 0 {
                map.remove_at(i);
            } else {
                i += 1;
            }
        }
        let kept: Vec<&Vec<u8>> = ids[1..98].iter().filter(|id| id[3] % 3 != 0).collect();
        assert_eq!(map.len(), kept.len());
        for id in kept {
            let (slot, created) = map
                .get_or_insert(id, entry_hash(id), || panic!("{id:?} was lost"))
                .unwrap();
            assert!(!created);
            assert_eq!(map.id(slot), &id[..]);
        }
        map.compact_ids();
        for id in ids[1..98].iter().filter(|id| id[3] % 3 != 0) {
            let (slot, created) = map
                .get_or_insert(id, entry_hash(id), || panic!("{id:?} was lost"))
                .unwrap();
            assert!(!created);
            assert_eq!(map.id(slot), &id[..]);
        }
        assert_eq!(std::mem::size_of::<Slot>(), 40);
    }
}
