//! A shard: the unit of ownership, locking and flush times.
//!
//! Each shard owns its series behind one mutex, so two writers contend only when their series
//! hash to the same shard, and a flush or expiry pass locks one shard at a time. Nothing inside
//! a shard does I/O, so the lock is never held across an await or a socket write.
//!
//! Series are found by their ID bytes, borrowed from the decoded message, so an add allocates
//! only when a series or a window is new. Per category, a shard keeps its series in a dense
//! slab of 48-byte slots (boxed ID + [`Entry`]) and finds them through a hash table of 32-bit
//! slot indices; flushes walk the slab in order. The (storage policy, aggregation types,
//! metric type) of each elem is interned in a small per-shard table and referred to by a
//! 16-bit index, which keeps elems small.

use std::sync::atomic::{AtomicI64, Ordering};

use std::hash::BuildHasher;

use hashbrown::hash_table::{self, HashTable};
use hashbrown::{DefaultHashBuilder, HashMap};
use parking_lot::Mutex;

use m3_metric::{AggregationId, MetricType, StoragePolicy, id::with_suffix};
use m3_proto::flushpb;

use crate::aggregation::{self, StateKind, WindowState};
use crate::entry::{Elem, Entry, TooManyWindows, WriteTime};
use crate::error::AddError;
use crate::flush::{AggregatedOutput, Category, FlushMode, align_down, checked_align_down};
use crate::metrics::{Metrics, OutputDiscard, WindowDiscard};
use crate::options::{AggregatorOptions, nanos};

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
    pub(crate) used_in: [bool; 2],
}

type SpecKey = (StoragePolicy, AggregationId, MetricType);

/// The interned specs of one shard.
#[derive(Debug, Default)]
pub(crate) struct SpecTable {
    specs: Vec<ElemSpec>,
    index: HashMap<SpecKey, u16>,
    last: Option<(SpecKey, u16)>,
}

impl SpecTable {
    /// The index of the spec for `key`, created (after validation) if new.
    fn intern(&mut self, key: SpecKey, category: Category) -> Result<(u16, StateKind), AddError> {
        let found = match &self.last {
            Some((k, i)) if *k == key => Some(*i),
            _ => self.index.get(&key).copied(),
        };
        let index = match found {
            Some(i) => i,
            None => {
                let (policy, types, metric_type) = key;
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
                if self.specs.len() >= MAX_SPECS {
                    return Err(AddError::TooManyPolicies { max: MAX_SPECS });
                }
                let default = AggregationId::DEFAULT.resolve(metric_type);
                let i = self.specs.len() as u16;
                self.specs.push(ElemSpec {
                    policy,
                    resolution,
                    types,
                    metric_type,
                    kind: StateKind::for_types(types),
                    suffixed: metric_type == MetricType::Timer || types != default,
                    used_in: [false; 2],
                });
                self.index.insert(key, i);
                i
            }
        };
        self.last = Some((key, index));
        let spec = &mut self.specs[usize::from(index)];
        spec.used_in[category.index()] = true;
        Ok((index, spec.kind))
    }
}

/// A series' ID and state.
#[derive(Debug)]
struct Slot {
    id: Box<[u8]>,
    entry: Entry,
}

/// Entries by ID bytes: a dense slab of slots, found through a hash table of 32-bit slot
/// indices (5 bytes per bucket with its control byte, instead of a whole slot per bucket).
/// One hash per lookup-or-insert, looked up by a borrowed `&[u8]`.
#[derive(Debug, Default)]
struct EntryMap {
    index: HashTable<u32>,
    slots: Vec<Slot>,
    hasher: DefaultHashBuilder,
}

impl EntryMap {
    /// The slot index of the entry for `id`, created with `make` if missing.
    fn get_or_insert(&mut self, id: &[u8], make: impl FnOnce() -> Entry) -> usize {
        let EntryMap {
            index,
            slots,
            hasher,
        } = self;
        let hash = hasher.hash_one(id);
        let entry = index.entry(
            hash,
            |&i| *slots[i as usize].id == *id,
            |&i| hasher.hash_one(&*slots[i as usize].id),
        );
        match entry {
            hash_table::Entry::Occupied(o) => *o.get() as usize,
            hash_table::Entry::Vacant(v) => {
                let i = slots.len();
                // Shard-local counts stay far below 2^32; a slab that large would have failed
                // to allocate first.
                v.insert(u32::try_from(i).expect("fewer than 2^32 entries per shard"));
                if slots.len() == slots.capacity() {
                    // Grow by a quarter rather than double: the slab is most of a shard's
                    // fixed cost per series.
                    slots.reserve_exact((i / 4).max(16));
                }
                slots.push(Slot {
                    id: Box::from(id),
                    entry: make(),
                });
                i
            }
        }
    }

    /// Removes the slot at `i`, moving the last slot into its place.
    fn remove_at(&mut self, i: usize) {
        let EntryMap {
            index,
            slots,
            hasher,
        } = self;
        let hash = hasher.hash_one(&*slots[i].id);
        if let Ok(o) = index.find_entry(hash, |&x| x as usize == i) {
            o.remove();
        }
        slots.swap_remove(i);
        if let Some(moved) = slots.get(i) {
            let hash = hasher.hash_one(&*moved.id);
            let last = slots.len();
            if let Some(x) = index.find_mut(hash, |&x| x as usize == last) {
                *x = i as u32;
            }
        }
    }

    fn len(&self) -> usize {
        self.slots.len()
    }

    /// Heap bytes of the index and the slab (by capacity).
    fn allocation_size(&self) -> usize {
        self.index.allocation_size() + self.slots.capacity() * std::mem::size_of::<Slot>()
    }
}

/// The mutable part of a shard.
#[derive(Debug, Default)]
pub(crate) struct ShardState {
    entries: [EntryMap; 2],
    specs: SpecTable,
    /// Leader flush times: (category, resolution) → window end flushed up to.
    flushed: HashMap<(Category, i64), i64>,
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
        }
    }

    /// The flush target of windows of `resolution` in `category`: windows ending at or before
    /// it are closed.
    /// With `final_flush`, every window that has ended is closed, whatever its category.
    fn flush_target(
        &self,
        category: Category,
        resolution: i64,
        now: i64,
        final_flush: bool,
    ) -> i64 {
        match category {
            _ if final_flush => now,
            Category::Untimed => now,
            Category::Timed => now.saturating_sub(self.buffer_past.saturating_add(resolution)),
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
    /// Server time since which this instance has received the shard's writes.
    pub(crate) since_nanos: i64,
    pub(crate) state: Mutex<ShardState>,
}

impl Shard {
    pub(crate) fn new(id: u32, cutover_nanos: i64, cutoff_nanos: i64, since_nanos: i64) -> Shard {
        let shard = Shard {
            id,
            cutover_nanos: AtomicI64::new(0),
            cutoff_nanos: AtomicI64::new(i64::MAX),
            since_nanos,
            state: Mutex::new(ShardState::default()),
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
        visit_targets: impl FnOnce(&mut dyn FnMut(Result<(AggregationId, StoragePolicy), AddError>)),
        outcome: &mut dyn FnMut(Result<(), AddError>),
    ) -> bool {
        let ShardState { entries, specs, .. } = self;
        let map = &mut entries[sample.category.index()];
        let slot = map.get_or_insert(sample.id, || {
            metrics.entry_created();
            Entry::new()
        });
        let entry = &mut map.slots[slot].entry;
        let mut accepted = false;
        visit_targets(&mut |target| {
            let result = target.and_then(|(aggregation_id, policy)| {
                add_target(specs, entry, sample, limits, aggregation_id, policy)
            });
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
        times: Option<&mut flushpb::ShardFlushTimes>,
    ) -> (usize, u64) {
        let cutover = shard.cutover_nanos.load(Ordering::Relaxed);
        let cutoff = shard.cutoff_nanos.load(Ordering::Relaxed);
        let leader_times = match mode {
            FlushMode::Leader | FlushMode::LeaderFinal => None,
            FlushMode::Follower { flushed_times } => Some(flushed_times.by_shard.get(&shard.id)),
        };
        let final_flush = matches!(mode, FlushMode::LeaderFinal);
        let specs = &self.specs.specs;
        let mut emitted = 0usize;
        let mut discarded = [0u64; 3];
        let mut plan: Vec<i64> = Vec::with_capacity(specs.len());
        for category in Category::ALL {
            // Per spec: windows ending at or before this are taken out.
            plan.clear();
            plan.extend(specs.iter().map(|spec| {
                match leader_times {
                    None => align_down(
                        limits.flush_target(category, spec.resolution, now, final_flush),
                        spec.resolution,
                    ),
                    Some(times) => times
                        .and_then(|t| {
                            let by_res = match category {
                                Category::Untimed => &t.standard_by_resolution,
                                Category::Timed => &t.timed_by_resolution,
                            };
                            by_res.get(&spec.resolution).copied()
                        })
                        .unwrap_or(i64::MIN),
                }
            }));
            for Slot { id, entry } in &mut self.entries[category.index()].slots {
                for elem in entry.elems_mut() {
                    let (Some(spec), Some(until)) = (
                        specs.get(usize::from(elem.spec())),
                        plan.get(usize::from(elem.spec())),
                    ) else {
                        continue;
                    };
                    let resolution = spec.resolution;
                    elem.take_until(resolution, *until, &mut |start, state| {
                        let end = start.saturating_add(resolution);
                        let discard = if leader_times.is_some() {
                            Some(WindowDiscard::Follower)
                        } else if end <= cutover {
                            Some(WindowDiscard::BeforeCutover)
                        } else if start >= cutoff {
                            Some(WindowDiscard::AfterCutoff)
                        } else {
                            None
                        };
                        match discard {
                            Some(reason) => discarded[reason as usize] += 1,
                            None => {
                                emitted += emit(id, spec, end, state, limits, metrics, out);
                            }
                        }
                    });
                }
            }
        }
        if let Some(times) = times {
            for spec in specs {
                for category in Category::ALL {
                    if !spec.used_in[category.index()] {
                        continue;
                    }
                    let target = align_down(
                        limits.flush_target(category, spec.resolution, now, final_flush),
                        spec.resolution,
                    );
                    let flushed = self
                        .flushed
                        .entry((category, spec.resolution))
                        .or_insert(i64::MIN);
                    *flushed = (*flushed).max(target);
                    let by_res = match category {
                        Category::Untimed => &mut times.standard_by_resolution,
                        Category::Timed => &mut times.timed_by_resolution,
                    };
                    by_res.insert(spec.resolution, *flushed);
                }
            }
        }
        for reason in [
            WindowDiscard::Follower,
            WindowDiscard::BeforeCutover,
            WindowDiscard::AfterCutoff,
        ] {
            metrics.windows_discarded_by(reason, discarded[reason as usize]);
        }
        metrics.outputs_flushed_by(emitted as u64);
        (emitted, discarded.iter().sum())
    }

    /// Removes entries idle for longer than the TTL with no open window; returns how many.
    pub(crate) fn expire(&mut self, now: i64, limits: &Limits) -> usize {
        let mut removed = 0;
        for map in &mut self.entries {
            let mut i = 0;
            while let Some(s) = map.slots.get(i) {
                let idle = s
                    .entry
                    .last_write_nanos()
                    .is_none_or(|t| now.saturating_sub(t) > limits.entry_ttl);
                if !idle || s.entry.has_windows() {
                    i += 1;
                } else {
                    // The last slot moves to `i`; look at it next.
                    map.remove_at(i);
                    removed += 1;
                }
            }
        }
        removed
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.iter().map(EntryMap::len).sum()
    }

    /// (entries, windows, estimated heap bytes) of this shard.
    pub(crate) fn stats(&self) -> (usize, usize, usize) {
        let mut windows = 0;
        let mut bytes = 0;
        for map in &self.entries {
            bytes += map.allocation_size();
            for Slot { id, entry } in &map.slots {
                windows += entry.elems().iter().map(Elem::len).sum::<usize>();
                bytes += id.len() + entry.heap_bytes();
            }
        }
        (self.len(), windows, bytes)
    }
}

fn add_target(
    specs: &mut SpecTable,
    entry: &mut Entry,
    sample: &Sample<'_>,
    limits: &Limits,
    aggregation_id: AggregationId,
    policy: StoragePolicy,
) -> Result<(), AddError> {
    let metric_type = sample.metric_type;
    let types = if aggregation_id.is_default() {
        limits.default_types[metric_type as usize]
    } else {
        aggregation_id
    };
    let (spec, kind) = specs.intern((policy, types, metric_type), sample.category)?;
    let resolution = specs.specs[usize::from(spec)].resolution;
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
        })
}

fn duration_between(earlier: i64, later: i64) -> std::time::Duration {
    std::time::Duration::from_nanos(
        u64::try_from(i128::from(later) - i128::from(earlier)).unwrap_or(u64::MAX),
    )
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
        let mut output_id = Vec::new();
        if spec.suffixed {
            if with_suffix(id, aggregation.output_name(), &mut output_id).is_err() {
                metrics.output_discarded(OutputDiscard::InvalidId);
                continue;
            }
        } else {
            output_id.extend_from_slice(id);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slab_stays_consistent_through_removals() {
        let mut map = EntryMap::default();
        let ids: Vec<Vec<u8>> = (0..100u32).map(|i| i.to_be_bytes().to_vec()).collect();
        for id in &ids {
            map.get_or_insert(id, Entry::new);
        }
        // Remove the first slot (ID 99 moves in), then the last (ID 98), then every third.
        map.remove_at(0);
        map.remove_at(map.len() - 1);
        let mut i = 0;
        while i < map.len() {
            if map.slots[i].id[3] % 3 == 0 {
                map.remove_at(i);
            } else {
                i += 1;
            }
        }
        let kept: Vec<&Vec<u8>> = ids[1..98].iter().filter(|id| id[3] % 3 != 0).collect();
        assert_eq!(map.len(), kept.len());
        for id in kept {
            let slot = map.get_or_insert(id, || panic!("{id:?} was lost"));
            assert_eq!(*map.slots[slot].id, **id);
        }
        assert_eq!(std::mem::size_of::<Slot>(), 48);
    }
}
