//! The engine's front door: owned shards, the add paths, flush and expiry.
//!
//! An [`Aggregator`] holds the shards this instance owns. A write is routed to its shard with
//! the caller-supplied shard function (M3: `murmur3_32(id) % numShards`), checked against the
//! shard's writable window, resolved against its metadata into (aggregation types, storage
//! policy) targets, and added to one window per target:
//!
//! ```text
//! add_untimed / add_timed
//!   └─ shard_fn(id) → owned? writeable? ─▶ metadata → targets ─▶ shard lock
//!        └─ entry(id) → elem(policy, types, metric type) → window(t truncated to resolution)
//! flush(now, Leader | Follower)  ─▶ closed windows → AggregatedOutput (timestamp = window end)
//! expire_entries(now)            ─▶ drops series idle for entryTTL with no open window
//! ```
//!
//! The engine never reads a clock: every method takes `now` in Unix nanoseconds, so tests and
//! simulations drive time explicitly. It does no I/O; the caller sends outputs and persists
//! flush times.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use hashbrown::HashMap;
use parking_lot::RwLock;
use prometheus_client::registry::Registry;

use m3_metric::MetricType;
use m3_proto::flushpb;

use crate::error::{AddError, RejectReason};
use crate::flush::{AggregatedOutput, Category, FlushMode, FlushResult, ForwardedOutput};
use crate::id_dictionary::SharedIdDictionary;
use crate::metadata::{self, Active, Metadatas};
use crate::metrics::Metrics;
use crate::options::AggregatorOptions;
use crate::shard::{Forwarded, Limits, Sample, Shard};
use crate::shard_hints::{HintTable, ShardHints};

/// Maps a metric ID to its shard, e.g. `murmur3_32(id) % numShards`.
pub type ShardFn = Arc<dyn Fn(&[u8]) -> u32 + Send + Sync>;

/// A shard this instance owns, with the placement's cutover and cutoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardAssignment {
    /// The shard ID.
    pub id: u32,
    /// Unix nanoseconds from which the shard is ours (0 = always).
    pub cutover_nanos: i64,
    /// Unix nanoseconds from which the shard is no longer ours (0 = never).
    pub cutoff_nanos: i64,
}

impl ShardAssignment {
    /// A shard owned without time bounds.
    pub fn unbounded(id: u32) -> ShardAssignment {
        ShardAssignment {
            id,
            cutover_nanos: 0,
            cutoff_nanos: 0,
        }
    }
}

/// Sizes of the engine's state, for status pages and memory accounting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Owned shards.
    pub shards: usize,
    /// Series entries.
    pub entries: usize,
    /// Open windows.
    pub windows: usize,
    /// Estimated heap bytes of entries, IDs and windows (hash tables by allocation size,
    /// vectors by capacity; allocator overhead not included).
    pub estimated_bytes: usize,
    /// Distinct elem specs (storage policy, aggregation, metric type, pipeline, forwarding
    /// hops) the shards hold, summed over shards.
    pub specs: usize,
    /// Distinct pipelines the shards hold (a rollup's names its rollup series), summed over
    /// shards, the empty pipeline of each shard included.
    pub pipelines: usize,
}

/// The aggregation engine. `Send + Sync`: share it in an `Arc` between connection tasks and
/// the flush loop.
pub struct Aggregator {
    options: AggregatorOptions,
    limits: Limits,
    shard_fn: ShardFn,
    /// When `shard_fn` is murmur3_32(id) % this count (the placement's): lets a sender that
    /// computed a batch's shard under the same count say so ([`KnownShard`]).
    murmur3_shard_count: Option<Arc<AtomicU32>>,
    /// The shard each recent series ID was routed to, used only with `murmur3_shard_count`.
    shard_hints: ShardHints,
    shards: RwLock<HashMap<u32, Arc<Shard>>>,
    /// The stored form of every shard's series IDs (the tag pairs they share, once).
    ids: SharedIdDictionary,
    metrics: Metrics,
    /// Rollup values leader flushes produced, for the caller to send ([`Aggregator::take_forwarded`]).
    forwarded: parking_lot::Mutex<Vec<ForwardedOutput>>,
    /// Passthrough metrics received, for the caller to emit as leader or drop as follower.
    passthrough: parking_lot::Mutex<Vec<AggregatedOutput>>,
}

/// A forwarded (rollup) write: the values the sources' leaders aggregated for one window.
#[derive(Debug, Clone, Copy)]
pub struct ForwardedWrite<'a> {
    /// The source elems' metric type.
    pub metric_type: MetricType,
    /// The rollup series' ID.
    pub id: &'a [u8],
    /// The source window's end.
    pub time_nanos: i64,
    /// One value per source series.
    pub values: &'a [f64],
    /// The source (its shard), for de-duplication with `version`.
    pub source_id: u32,
    /// The version of this window's values from that source (0 unless re-sent).
    pub version: u32,
    /// The aggregation across sources.
    pub aggregation_id: m3_metric::AggregationId,
    /// The storage policy.
    pub storage_policy: m3_metric::StoragePolicy,
    /// The rest of the pipeline.
    pub pipeline: Option<&'a m3_proto::pipelinepb::AppliedPipeline>,
    /// Hops so far.
    pub forwarded_times: u32,
}

/// The shard of every value of a batch, as its sender computed it: murmur3_32(id) %
/// `num_shards`. The aggregator takes it instead of hashing each ID only when its own shard
/// function is the same ([`Aggregator::with_murmur3_shard_count`]); otherwise it is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownShard {
    /// The shard.
    pub shard: u32,
    /// The shard count it was computed with.
    pub num_shards: u32,
}

/// One timed value of a batch ([`Aggregator::add_timed_batch`]).
#[derive(Debug, Clone, Copy)]
pub struct TimedSample<'a> {
    /// The metric type.
    pub metric_type: MetricType,
    /// The series ID.
    pub id: &'a [u8],
    /// The value's own timestamp.
    pub time_nanos: i64,
    /// The value.
    pub value: f64,
    /// What to aggregate it with.
    pub metadatas: Metadatas<'a>,
}

/// Where a value of a batch goes: its shard, its ID's entry hash, and whether the shard came
/// from a hint (to be confirmed by the series being there) rather than the shard function.
#[derive(Debug, Clone, Copy)]
struct SampleKey {
    shard: u32,
    hash: u64,
    hinted: bool,
}

/// Passthrough metrics kept for the next flush at most; beyond, the oldest are dropped.
const MAX_PENDING_PASSTHROUGH: usize = 1 << 20;

impl std::fmt::Debug for Aggregator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aggregator")
            .field("options", &self.options)
            .field("shards", &self.shards.read().len())
            .finish_non_exhaustive()
    }
}

impl Aggregator {
    /// An engine owning no shard yet; call [`set_shards`](Self::set_shards) before writing.
    pub fn new(options: AggregatorOptions, shard_fn: ShardFn) -> Aggregator {
        Aggregator {
            limits: Limits::new(&options),
            options,
            shard_fn,
            murmur3_shard_count: None,
            shard_hints: ShardHints::default(),
            shards: RwLock::new(HashMap::new()),
            ids: SharedIdDictionary::default(),
            metrics: Metrics::new(),
            forwarded: parking_lot::Mutex::new(Vec::new()),
            passthrough: parking_lot::Mutex::new(Vec::new()),
        }
    }

    /// The same engine, told that its shard function is murmur3_32(id) % `num_shards` (as
    /// [`placement_shard_fn`](crate::instance::placement_shard_fn) is), so that a batch whose
    /// [`KnownShard`] was computed with the same count is not hashed again, and the series of
    /// other batches find their shard by hint. Batches then compute shards as murmur3 under
    /// the count read once per batch, so a shard function that does not follow `num_shards`
    /// breaks this contract.
    #[must_use]
    pub fn with_murmur3_shard_count(mut self, num_shards: Arc<AtomicU32>) -> Aggregator {
        self.murmur3_shard_count = Some(num_shards);
        self
    }

    /// The settings.
    pub fn options(&self) -> &AggregatorOptions {
        &self.options
    }

    /// The self-metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Adds the self-metrics to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        self.metrics.register(registry);
    }

    /// Replaces the set of owned shards (from the placement).
    ///
    /// Shards already owned keep their data and get the new cutover/cutoff; new shards start
    /// empty and remember `now_nanos` as the time they started buffering (see
    /// [`can_lead`](Self::can_lead)); shards no longer listed are dropped with their data, and
    /// their entries are counted under `entries_removed{reason="shard_removed"}`.
    pub fn set_shards(&self, assignments: Vec<ShardAssignment>, now_nanos: i64) {
        let mut table = self.shards.write();
        let keep: HashMap<u32, ShardAssignment> =
            assignments.into_iter().map(|a| (a.id, a)).collect();
        let mut removed = 0;
        table.retain(|id, shard| {
            if keep.contains_key(id) {
                true
            } else {
                removed += shard.state.lock().len();
                false
            }
        });
        self.metrics.entries_shard_removed_by(removed as u64);
        for (id, a) in keep {
            match table.get(&id) {
                Some(shard) => shard.set_window(a.cutover_nanos, a.cutoff_nanos),
                None => {
                    table.insert(
                        id,
                        Arc::new(Shard::new(
                            id,
                            a.cutover_nanos,
                            a.cutoff_nanos,
                            now_nanos,
                            &self.ids,
                        )),
                    );
                }
            }
        }
    }

    /// The owned shard IDs, sorted.
    pub fn owned_shards(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.shards.read().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// The owned shards with their cutover and cutoff times and the kinds of windows held in
    /// each, by ID (locks each shard briefly).
    pub fn held_shards(&self) -> Vec<crate::campaign::HeldShard> {
        let shards: Vec<Arc<Shard>> = self.shards.read().values().cloned().collect();
        let mut held: Vec<crate::campaign::HeldShard> = shards
            .iter()
            .map(|s| crate::campaign::HeldShard {
                assignment: s.assignment(),
                flush_keys: s.state.lock().flush_keys(),
            })
            .collect();
        held.sort_unstable_by_key(|s| s.assignment.id);
        held
    }

    /// Adds untimed values: counter increments, gauge values or a batch of timer values,
    /// bucketed by the server time `now_nanos`.
    ///
    /// Batch timers are added in chunks of `maxTimerBatchSizePerWrite` values.
    ///
    /// # Errors
    /// The first reason a value was not aggregated for some target (see [`AddError`]); every
    /// rejection is also counted. Targets that accepted the values keep them. A tombstoned
    /// metadata drops the values, counts them (`tombstoned`) and returns `Ok`.
    pub fn add_untimed(
        &self,
        metric_type: MetricType,
        id: &[u8],
        values: &[f64],
        metadatas: Metadatas<'_>,
        now_nanos: i64,
    ) -> Result<(), AddError> {
        let chunk = self.options.max_timer_batch_size_per_write;
        if metric_type == MetricType::Timer && chunk > 0 && values.len() > chunk {
            let mut first_err = None;
            for part in values.chunks(chunk) {
                let r = self.add(
                    Category::Untimed,
                    metric_type,
                    id,
                    now_nanos,
                    part,
                    metadatas,
                    now_nanos,
                );
                if let Err(e) = r {
                    first_err.get_or_insert(e);
                }
            }
            return first_err.map_or(Ok(()), Err);
        }
        self.add(
            Category::Untimed,
            metric_type,
            id,
            now_nanos,
            values,
            metadatas,
            now_nanos,
        )
    }

    /// Adds timed values as [`add_timed`](Self::add_timed) adds each, with the costs shared:
    /// every ID is hashed before any lock is taken, and consecutive values of one shard (a
    /// client sends a shard's values together) take its lock and check its ownership once,
    /// their series found in one pass before any is added to (see `ShardState::add_run`).
    /// `rejected` gets the index in `samples` and the first error of each value not (wholly)
    /// aggregated; every rejection is counted as by [`add_timed`](Self::add_timed). It is
    /// called while a shard's lock is held: it must not call into this aggregator.
    ///
    /// With a murmur3 shard function ([`with_murmur3_shard_count`](Self::with_murmur3_shard_count))
    /// known series find their shard by hint (see `shard_hints.rs`). A value whose hint is not
    /// confirmed is added after the rest of the batch; every value of its series in the batch
    /// read the same hint, so they keep their order, unless another connection overwrote the
    /// hint's slot or created the series while this batch was being added.
    pub fn add_timed_batch(
        &self,
        samples: &[TimedSample<'_>],
        now_nanos: i64,
        rejected: &mut dyn FnMut(usize, AddError),
    ) {
        self.add_timed_batch_of_shard(None, samples, now_nanos, rejected);
    }

    /// [`add_timed_batch`](Self::add_timed_batch) of values that are all in the shard
    /// `known` says, if any: when it was computed as this engine computes shards, the IDs are
    /// not hashed to find it.
    pub fn add_timed_batch_of_shard(
        &self,
        known: Option<KnownShard>,
        samples: &[TimedSample<'_>],
        now_nanos: i64,
        rejected: &mut dyn FnMut(usize, AddError),
    ) {
        self.add_timed_batch_hashed(known, samples, None, now_nanos, rejected);
    }

    /// [`add_timed_batch_of_shard`](Self::add_timed_batch_of_shard) with each sample's
    /// [`entry_hash`](crate::shard::entry_hash) given, when the caller has them: a client
    /// applying a batch to several engines in this process hashes its IDs once for all of them
    /// (the hash's seed is the process's). `hashes`, when given, has one hash per sample.
    pub(crate) fn add_timed_batch_hashed(
        &self,
        known: Option<KnownShard>,
        samples: &[TimedSample<'_>],
        hashes: Option<&[u64]>,
        now_nanos: i64,
        rejected: &mut dyn FnMut(usize, AddError),
    ) {
        // The placement's count, read once: every shard of the batch is computed under it.
        let murmur3_count = self
            .murmur3_shard_count
            .as_ref()
            .map(|count| count.load(Ordering::Relaxed));
        let known_shard = known
            .filter(|k| murmur3_count == Some(k.num_shards) && k.shard < k.num_shards)
            .map(|k| k.shard);
        let hashes = hashes.filter(|h| h.len() == samples.len());
        let mut keys: Vec<SampleKey> = samples
            .iter()
            .enumerate()
            .map(|(i, s)| SampleKey {
                shard: known_shard.unwrap_or(0),
                hash: match hashes {
                    Some(hashes) => hashes[i],
                    None => crate::shard::entry_hash(s.id),
                },
                hinted: false,
            })
            .collect();
        // Hints are read and written only when routing by murmur3 under the placement's count.
        let hints = murmur3_count
            .filter(|_| known_shard.is_none())
            .map(|_| self.shard_hints.table());
        if known_shard.is_none() {
            self.route(samples, &mut keys, murmur3_count, hints.as_deref());
        }
        let mut unconfirmed = Vec::new();
        self.add_routed(
            samples,
            &keys,
            murmur3_count,
            now_nanos,
            &mut unconfirmed,
            rejected,
        );
        // Only a batch routed by hint has any (see `route`).
        let (Some(count), Some(hints)) = (murmur3_count, hints) else {
            return;
        };
        let mut retry_keys = Vec::new();
        if !unconfirmed.is_empty() {
            // Hints no entry confirmed: those values take murmur3's shard, as every value did
            // before it had a hint.
            self.metrics
                .shard_hints_unconfirmed(unconfirmed.len() as u64);
            let retry: Vec<TimedSample<'_>> = unconfirmed.iter().map(|&i| samples[i]).collect();
            retry_keys = unconfirmed
                .iter()
                .map(|&i| SampleKey {
                    shard: m3_cluster::shard_for(samples[i].id, count),
                    hash: keys[i].hash,
                    hinted: false,
                })
                .collect();
            let mut none = Vec::new();
            self.add_routed(
                &retry,
                &retry_keys,
                murmur3_count,
                now_nanos,
                &mut none,
                &mut |j, e| rejected(unconfirmed[j], e),
            );
            debug_assert!(none.is_empty(), "only hinted values go unconfirmed");
        }
        // Written once the batch is in, not while it is routed: every value of a series in one
        // batch then takes the same path, and stays in order.
        for key in keys.iter().chain(&retry_keys).filter(|k| !k.hinted) {
            hints.set(key.hash, key.shard, count);
        }
        self.shard_hints.grow_if_full(&hints);
    }

    /// Gives each value of a batch its shard: the shard function's, or, when that is murmur3
    /// under `murmur3_count` shards, the hint of the value's series if there is one (see
    /// [`crate::shard_hints`]).
    fn route(
        &self,
        samples: &[TimedSample<'_>],
        keys: &mut [SampleKey],
        murmur3_count: Option<u32>,
        hints: Option<&HintTable>,
    ) {
        let (Some(count), Some(hints)) = (murmur3_count, hints) else {
            for (key, sample) in keys.iter_mut().zip(samples) {
                key.shard = (self.shard_fn)(sample.id);
            }
            return;
        };
        for i in 0..keys.len() {
            if let Some(ahead) = keys.get(i + m3_hash_index::PREFETCH_AHEAD) {
                hints.prefetch(ahead.hash);
            }
            let key = &mut keys[i];
            match hints.get(key.hash, count) {
                Some(shard) => {
                    key.shard = shard;
                    key.hinted = true;
                }
                None => key.shard = m3_cluster::shard_for(samples[i].id, count),
            }
        }
    }

    /// Adds the values of a routed batch, one run of consecutive values of a shard at a time.
    /// A hinted value its shard does not confirm (series not there, shard not owned or not
    /// writeable, metadata that rejects it and a hint murmur3 under `murmur3_count` does not
    /// agree with) is neither added nor rejected: its index goes to `unconfirmed`, to be
    /// routed again.
    fn add_routed(
        &self,
        samples: &[TimedSample<'_>],
        keys: &[SampleKey],
        murmur3_count: Option<u32>,
        now_nanos: i64,
        unconfirmed: &mut Vec<usize>,
        rejected: &mut dyn FnMut(usize, AddError),
    ) {
        // Sized once for the longest run of one shard, the most they hold: grown from empty,
        // these were reallocated several times per batch (1.4% of `m3 local`'s CPU).
        let longest_run = keys
            .chunk_by(|a, b| a.shard == b.shard)
            .map(<[_]>::len)
            .max()
            .unwrap_or(0);
        let mut run = Vec::with_capacity(longest_run);
        let mut indexes = Vec::with_capacity(longest_run);
        let mut run_unconfirmed = Vec::new();
        let mut scratch = crate::shard::RunScratch::with_capacity(longest_run);
        let table = self.shards.read();
        let mut start = 0;
        while start < samples.len() {
            let shard_id = keys[start].shard;
            let end = keys[start..]
                .iter()
                .position(|k| k.shard != shard_id)
                .map_or(samples.len(), |n| start + n);
            let writeable = match table.get(&shard_id) {
                None => Err(AddError::ShardNotOwned { shard: shard_id }),
                Some(shard) => shard
                    .check_writeable(now_nanos, &self.limits)
                    .map(|()| shard),
            };
            let shard = match writeable {
                Ok(shard) => shard,
                Err(e) => {
                    let mut refused = 0;
                    for (i, key) in keys.iter().enumerate().take(end).skip(start) {
                        if key.hinted {
                            unconfirmed.push(i);
                        } else {
                            refused += 1;
                            rejected(i, e.clone());
                        }
                    }
                    self.metrics.record_rejected(e.reason(), refused);
                    start = end;
                    continue;
                }
            };
            run.clear();
            // The index in `samples` of each sample of `run`.
            indexes.clear();
            for (i, sample) in samples.iter().enumerate().take(end).skip(start) {
                let active = metadata::active(sample.metadatas, now_nanos);
                if keys[i].hinted
                    && matches!(active, Err(_) | Ok(Active::Tombstoned))
                    && murmur3_count.map(|count| m3_cluster::shard_for(sample.id, count))
                        != Some(shard_id)
                {
                    // Rejected or dropped only in its real shard (murmur3 for these few).
                    unconfirmed.push(i);
                    continue;
                }
                match active {
                    Err(e) => {
                        self.metrics.record_rejected(e.reason(), 1);
                        rejected(i, e);
                    }
                    Ok(Active::Tombstoned) => {
                        self.metrics.record_rejected(RejectReason::Tombstoned, 1);
                    }
                    Ok(active) => {
                        indexes.push(i);
                        run.push(crate::shard::RunSample {
                            sample: Sample {
                                category: Category::Timed,
                                metric_type: sample.metric_type,
                                id: sample.id,
                                time_nanos: sample.time_nanos,
                                values: std::slice::from_ref(&sample.value),
                                now_nanos,
                            },
                            hash: keys[i].hash,
                            active,
                            shard_hinted: keys[i].hinted,
                        });
                    }
                }
            }
            // Counted once per run: an atomic add per sample costs, the more so when two
            // threads add to one engine.
            let mut added = [0u64; MetricType::ALL.len()];
            run_unconfirmed.clear();
            shard.state.lock().add_run(
                &run,
                &mut run_unconfirmed,
                &mut scratch,
                &self.limits,
                &self.metrics,
                &self.options.default_storage_policies,
                &mut |i, accepted, error| {
                    if accepted {
                        added[run[i].sample.metric_type as usize] += 1;
                    }
                    if let Some(e) = error {
                        rejected(indexes[i], e);
                    }
                },
            );
            unconfirmed.extend(run_unconfirmed.iter().map(|&i| indexes[i]));
            for (metric_type, n) in MetricType::ALL.into_iter().zip(added) {
                if n > 0 {
                    self.metrics.record_added(metric_type, n);
                }
            }
            start = end;
        }
    }

    /// Adds one timed value at its own timestamp `time_nanos`.
    ///
    /// # Errors
    /// As [`add_untimed`](Self::add_untimed), plus [`AddError::TooFarInThePast`] when
    /// `now − t > bufferPast + resolution` and [`AddError::TooFarInTheFuture`] when
    /// `t − now > bufferFuture` (checked per storage policy).
    pub fn add_timed(
        &self,
        metric_type: MetricType,
        id: &[u8],
        time_nanos: i64,
        value: f64,
        metadatas: Metadatas<'_>,
        now_nanos: i64,
    ) -> Result<(), AddError> {
        self.add(
            Category::Timed,
            metric_type,
            id,
            time_nanos,
            std::slice::from_ref(&value),
            metadatas,
            now_nanos,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn add(
        &self,
        category: Category,
        metric_type: MetricType,
        id: &[u8],
        time_nanos: i64,
        values: &[f64],
        metadatas: Metadatas<'_>,
        now_nanos: i64,
    ) -> Result<(), AddError> {
        if values.is_empty() {
            return Ok(());
        }
        let n = values.len() as u64;
        let reject = |e: AddError| {
            self.metrics.record_rejected(e.reason(), n);
            e
        };
        let shard_id = (self.shard_fn)(id);
        let table = self.shards.read();
        let Some(shard) = table.get(&shard_id) else {
            return Err(reject(AddError::ShardNotOwned { shard: shard_id }));
        };
        shard
            .check_writeable(now_nanos, &self.limits)
            .map_err(reject)?;
        let active = metadata::active(metadatas, now_nanos).map_err(reject)?;
        if matches!(active, Active::Tombstoned) {
            self.metrics.record_rejected(RejectReason::Tombstoned, n);
            return Ok(());
        }
        let sample = Sample {
            category,
            metric_type,
            id,
            time_nanos,
            values,
            now_nanos,
        };
        let mut first_err = None;
        let accepted = shard.state.lock().add(
            &sample,
            &self.limits,
            &self.metrics,
            |visit| {
                metadata::for_each_target(active, &self.options.default_storage_policies, visit)
            },
            &mut |outcome| {
                if let Err(e) = outcome {
                    self.metrics.record_rejected(e.reason(), n);
                    first_err.get_or_insert(e);
                }
            },
        );
        drop(table);
        if accepted {
            self.metrics.record_added(metric_type, n);
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Adds a forwarded (rollup) write from another aggregator's leader: counted once per
    /// (source, version) and window, refused when it arrives after the window's forwarding
    /// delay.
    ///
    /// # Errors
    /// As [`add_untimed`](Self::add_untimed), with lateness measured from the source window's
    /// end against the forwarding delay.
    pub fn add_forwarded(&self, write: ForwardedWrite<'_>, now_nanos: i64) -> Result<(), AddError> {
        let n = write.values.len() as u64;
        if n == 0 {
            return Ok(());
        }
        let reject = |e: AddError| {
            self.metrics.record_rejected(e.reason(), n);
            e
        };
        let shard_id = (self.shard_fn)(write.id);
        let table = self.shards.read();
        let Some(shard) = table.get(&shard_id) else {
            return Err(reject(AddError::ShardNotOwned { shard: shard_id }));
        };
        shard
            .check_writeable(now_nanos, &self.limits)
            .map_err(reject)?;
        let forwarded = Forwarded {
            metric_type: write.metric_type,
            id: write.id,
            time_nanos: write.time_nanos,
            values: write.values,
            source_id: write.source_id,
            version: write.version,
            aggregation_id: write.aggregation_id,
            policy: write.storage_policy,
            pipeline: write.pipeline,
            forwarded_times: write.forwarded_times.max(1),
            now_nanos,
        };
        shard
            .state
            .lock()
            .add_forwarded(&forwarded, &self.limits, &self.metrics)
            .map_err(reject)?;
        self.metrics.record_added(write.metric_type, n);
        Ok(())
    }

    /// Keeps a passthrough metric (already aggregated elsewhere) for the flush loop, which
    /// emits it as leader and drops it as follower ([`take_passthrough`](Self::take_passthrough)).
    pub fn add_passthrough(&self, output: AggregatedOutput) {
        self.metrics.record_passthrough(1);
        let mut pending = self.passthrough.lock();
        if pending.len() >= MAX_PENDING_PASSTHROUGH {
            pending.remove(0);
            self.metrics.record_passthrough_follower_dropped(1);
        }
        pending.push(output);
    }

    /// The passthrough metrics received since the last call.
    pub fn take_passthrough(&self) -> Vec<AggregatedOutput> {
        std::mem::take(&mut *self.passthrough.lock())
    }

    /// The rollup values leader flushes produced since the last call, to send to the
    /// aggregators owning their IDs.
    pub fn take_forwarded(&self) -> Vec<ForwardedOutput> {
        std::mem::take(&mut *self.forwarded.lock())
    }

    /// Flushes every closed window of every owned shard (see [`FlushMode`] and the
    /// [`flush`](crate::flush) module for when a window is closed).
    ///
    /// As leader, outputs are appended to `out` (which is not cleared, so the caller can reuse
    /// one vector across flushes) and the flush times to persist are returned. As follower,
    /// windows up to the leader's flush times are discarded and nothing is appended.
    ///
    /// Each shard is locked once, for one pass over its series.
    pub fn flush(
        &self,
        now_nanos: i64,
        mode: FlushMode<'_>,
        out: &mut Vec<AggregatedOutput>,
    ) -> FlushResult {
        self.flush_into(now_nanos, mode, &mut |outputs| out.extend(outputs))
    }

    /// [`flush`](Self::flush), handing each shard's outputs to `emit` as soon as that shard is
    /// flushed (and unlocked), so that the outputs of a whole flush are never held at once.
    /// `emit` must not call into this aggregator's flush.
    pub fn flush_into(
        &self,
        now_nanos: i64,
        mode: FlushMode<'_>,
        emit: &mut dyn FnMut(std::vec::Drain<'_, AggregatedOutput>),
    ) -> FlushResult {
        let mut pass = self.flush_pass(now_nanos, mode);
        while let Some(outputs) = pass.next_shard() {
            if outputs.len() > 0 {
                emit(outputs);
            }
        }
        pass.finish()
    }

    /// A flush taken one shard at a time: [`FlushPass::next_shard`] flushes the next owned
    /// shard and hands over its outputs, and the caller may wait between shards (for the
    /// output to be acked) without holding any lock. [`FlushPass::finish`] gives the result.
    pub fn flush_pass<'a>(&'a self, now_nanos: i64, mode: FlushMode<'a>) -> FlushPass<'a> {
        let shards: Vec<Arc<Shard>> = self.shards.read().values().cloned().collect();
        FlushPass {
            aggregator: self,
            shards: shards.into_iter(),
            now_nanos,
            mode,
            result: FlushResult::default(),
            forwarded: Vec::new(),
            out: Vec::new(),
        }
    }

    /// Whether this instance, as a follower, has buffered every window the leader has not yet
    /// flushed, so that it can take over without a gap.
    ///
    /// For each owned shard and each (category, resolution) in `flushed_times`, the oldest
    /// unflushed window starts at the flushed time `f`; this instance must have been receiving
    /// the shard's writes since `f`. Absent or zero flush times mean the cluster is just
    /// starting: no constraint. As in M3, timed samples that arrived before `f` for a window
    /// after it (early by up to `bufferFuture`) are not accounted for: remote-write clients
    /// send samples stamped at or before their arrival.
    pub fn can_lead(&self, flushed_times: &flushpb::ShardSetFlushTimes) -> bool {
        let table = self.shards.read();
        table.values().all(|shard| {
            let Some(times) = flushed_times.by_shard.get(&shard.id) else {
                return true;
            };
            times
                .standard_by_resolution
                .values()
                .chain(times.timed_by_resolution.values())
                .chain(
                    times
                        .forwarded_by_resolution
                        .values()
                        .flat_map(|f| f.by_num_forwarded_times.values()),
                )
                .all(|f| *f <= 0 || shard.since_nanos() <= *f)
        })
    }

    /// Removes series with no write for `entryTTL` and no open window; returns how many were
    /// removed (also counted as `entries_removed{reason="expired"}`).
    pub fn expire_entries(&self, now_nanos: i64) -> usize {
        let shards: Vec<Arc<Shard>> = self.shards.read().values().cloned().collect();
        let mut removed = 0;
        for shard in shards {
            removed += shard.state.lock().expire(now_nanos, &self.limits);
        }
        self.metrics.entries_expired_by(removed as u64);
        removed
    }

    /// Current sizes (locks each shard briefly).
    pub fn stats(&self) -> EngineStats {
        let shards: Vec<Arc<Shard>> = self.shards.read().values().cloned().collect();
        let mut stats = EngineStats {
            shards: shards.len(),
            ..EngineStats::default()
        };
        for shard in shards {
            let state = shard.state.lock();
            let (entries, windows, bytes) = state.stats();
            let (specs, pipelines) = state.table_sizes();
            drop(state);
            stats.entries += entries;
            stats.windows += windows;
            stats.estimated_bytes += bytes;
            stats.specs += specs;
            stats.pipelines += pipelines;
        }
        stats.estimated_bytes += self.ids.read().allocation_size();
        stats
    }
}

/// One flush of every owned shard, a shard at a time (see [`Aggregator::flush_pass`]).
pub struct FlushPass<'a> {
    aggregator: &'a Aggregator,
    shards: std::vec::IntoIter<Arc<Shard>>,
    now_nanos: i64,
    mode: FlushMode<'a>,
    result: FlushResult,
    forwarded: Vec<ForwardedOutput>,
    out: Vec<AggregatedOutput>,
}

impl FlushPass<'_> {
    /// Flushes the next shard and hands over its outputs (possibly none); `None` once every
    /// shard is flushed. The shard is locked only while it is flushed.
    pub fn next_shard(&mut self) -> Option<std::vec::Drain<'_, AggregatedOutput>> {
        let shard = self.shards.next()?;
        let aggregator = self.aggregator;
        if let FlushMode::FollowerForced { before_nanos } = self.mode {
            // What is dropped here is no longer held: `can_lead` must know.
            shard.raise_since(before_nanos);
        }
        let mut times = flushpb::ShardFlushTimes::default();
        let leader = matches!(self.mode, FlushMode::Leader | FlushMode::LeaderFinal);
        let (outputs, discarded) = shard.state.lock().flush(
            &shard,
            self.now_nanos,
            self.mode,
            &aggregator.limits,
            &aggregator.metrics,
            &mut self.out,
            &mut self.forwarded,
            leader.then_some(&mut times),
        );
        self.result.outputs += outputs;
        self.result.windows_discarded += discarded;
        if leader {
            self.result.flush_times.by_shard.insert(shard.id, times);
        }
        Some(self.out.drain(..))
    }

    /// What the flush did; the rollup values it produced go to
    /// [`Aggregator::take_forwarded`]. Shards not yet flushed are left as they are.
    pub fn finish(mut self) -> FlushResult {
        if !self.forwarded.is_empty() {
            self.aggregator.forwarded.lock().append(&mut self.forwarded);
        }
        let (symbols, bytes) = {
            let ids = self.aggregator.ids.read();
            (ids.symbols(), ids.allocation_size())
        };
        self.aggregator.metrics.set_id_dictionary(symbols, bytes);
        self.result
    }
}

#[cfg(test)]
mod shard_hint_tests {
    use super::*;

    const NUM_SHARDS: u32 = 8;
    const S: i64 = 1_000_000_000;
    const NOW: i64 = 1_700_000_040 * S;

    /// An engine routing by murmur3 under the placement count `count`, as the server builds
    /// it, owning shards `0..owned`.
    fn engine_with(count: Arc<AtomicU32>, owned: u32) -> Aggregator {
        let shard_count = Arc::clone(&count);
        let agg = Aggregator::new(
            AggregatorOptions::default(),
            Arc::new(move |id: &[u8]| {
                m3_cluster::shard_for(id, shard_count.load(Ordering::Relaxed))
            }),
        )
        .with_murmur3_shard_count(count);
        agg.set_shards(
            (0..owned).map(crate::ShardAssignment::unbounded).collect(),
            0,
        );
        agg
    }

    /// [`engine_with`] `NUM_SHARDS` shards, all owned.
    fn engine() -> Aggregator {
        engine_with(Arc::new(AtomicU32::new(NUM_SHARDS)), NUM_SHARDS)
    }

    /// Metadata whose rule was deleted: its values are dropped.
    fn tombstoned() -> m3_proto::metricpb::StagedMetadatas {
        m3_proto::metricpb::StagedMetadatas {
            metadatas: vec![crate::metadata::build::staged(0, true, Vec::new())],
        }
    }

    fn gauge(id: &[u8], value: f64) -> TimedSample<'_> {
        TimedSample {
            metric_type: MetricType::Gauge,
            id,
            time_nanos: NOW,
            value,
            metadatas: crate::Metadatas::Default,
        }
    }

    fn holders(agg: &Aggregator, id: &[u8]) -> Vec<u32> {
        let mut held: Vec<u32> = agg
            .shards
            .read()
            .iter()
            .filter(|(_, shard)| shard.state.lock().holds(id))
            .map(|(&shard, _)| shard)
            .collect();
        held.sort_unstable();
        held
    }

    /// A hint naming the wrong shard (as two IDs sharing a slot and tag would) is not trusted:
    /// the series is created in murmur3's shard only, and the hint is replaced.
    #[test]
    fn a_wrong_hint_never_puts_a_series_in_another_shard() {
        let agg = engine();
        let id = b"some.series".as_slice();
        let real = m3_cluster::shard_for(id, NUM_SHARDS);
        let wrong = (real + 1) % NUM_SHARDS;
        let hash = crate::shard::entry_hash(id);
        agg.shard_hints.table().set(hash, wrong, NUM_SHARDS);
        let mut errors = Vec::new();
        agg.add_timed_batch(&[gauge(id, 1.0)], NOW, &mut |i, e| errors.push((i, e)));
        assert_eq!(errors, vec![]);
        assert_eq!(holders(&agg, id), vec![real]);
        assert_eq!(agg.metrics().shard_hints_unconfirmed_total(), 1);
        assert_eq!(agg.shard_hints.table().get(hash, NUM_SHARDS), Some(real));
        // Confirmed from now on: no second pass.
        agg.add_timed_batch(&[gauge(id, 2.0)], NOW, &mut |i, e| errors.push((i, e)));
        assert_eq!(errors, vec![]);
        assert_eq!(agg.metrics().shard_hints_unconfirmed_total(), 1);
        assert_eq!(agg.metrics().added(MetricType::Gauge), 2);
    }

    /// Under a wrong hint, a value its metadata would reject (tombstoned) is judged by its
    /// real shard: not owned there, so `ShardNotOwned`, told and counted once.
    #[test]
    fn a_wrong_hint_does_not_decide_a_rejection() {
        let agg = engine();
        let id = b"some.series".as_slice();
        let real = m3_cluster::shard_for(id, NUM_SHARDS);
        let wrong = (real + 1) % NUM_SHARDS;
        agg.set_shards(vec![crate::ShardAssignment::unbounded(wrong)], 0);
        agg.shard_hints
            .table()
            .set(crate::shard::entry_hash(id), wrong, NUM_SHARDS);
        let tombstoned = tombstoned();
        let sample = TimedSample {
            metadatas: crate::Metadatas::Staged(&tombstoned),
            ..gauge(id, 1.0)
        };
        let mut errors = Vec::new();
        agg.add_timed_batch(&[sample], NOW, &mut |i, e| errors.push((i, e)));
        assert_eq!(errors, vec![(0, AddError::ShardNotOwned { shard: real })]);
        assert_eq!(agg.metrics().rejected(RejectReason::ShardNotOwned), 1);
        assert_eq!(agg.metrics().rejected(RejectReason::Tombstoned), 0);
    }

    /// Under a right hint, a tombstoned value is dropped in its shard without a second pass.
    #[test]
    fn a_right_hint_drops_a_tombstoned_value_in_place() {
        let agg = engine();
        let id = b"some.series".as_slice();
        agg.add_timed_batch(&[gauge(id, 1.0)], NOW, &mut |_, e| panic!("{e}"));
        let tombstoned = tombstoned();
        let sample = TimedSample {
            metadatas: crate::Metadatas::Staged(&tombstoned),
            ..gauge(id, 2.0)
        };
        agg.add_timed_batch(&[sample], NOW, &mut |_, e| panic!("{e}"));
        assert_eq!(agg.metrics().rejected(RejectReason::Tombstoned), 1);
        assert_eq!(agg.metrics().shard_hints_unconfirmed_total(), 0);
    }

    /// After the placement's shard count changes, a series' old entry in a shard still owned
    /// does not draw its values: they go to the shard murmur3 gives under the new count.
    #[test]
    fn a_new_shard_count_routes_past_old_entries() {
        let count = Arc::new(AtomicU32::new(NUM_SHARDS));
        let wider = NUM_SHARDS * 2;
        let agg = engine_with(Arc::clone(&count), wider);
        let id = (0..)
            .map(|i| format!("series.{i}").into_bytes())
            .find(|id| m3_cluster::shard_for(id, NUM_SHARDS) != m3_cluster::shard_for(id, wider))
            .expect("some ID moves when the count doubles");
        let mut errors = Vec::new();
        agg.add_timed_batch(&[gauge(&id, 1.0)], NOW, &mut |i, e| errors.push((i, e)));
        agg.add_timed_batch(&[gauge(&id, 2.0)], NOW, &mut |i, e| errors.push((i, e)));
        assert_eq!(
            holders(&agg, &id),
            vec![m3_cluster::shard_for(&id, NUM_SHARDS)]
        );
        count.store(wider, Ordering::Relaxed);
        agg.add_timed_batch(&[gauge(&id, 3.0)], NOW, &mut |i, e| errors.push((i, e)));
        assert_eq!(errors, vec![]);
        let mut expected = vec![
            m3_cluster::shard_for(&id, NUM_SHARDS),
            m3_cluster::shard_for(&id, wider),
        ];
        expected.sort_unstable();
        assert_eq!(holders(&agg, &id), expected);
        assert_eq!(agg.metrics().shard_hints_unconfirmed_total(), 0);
    }

    /// A hint to a shard that is no longer owned does not reject the value by itself: the
    /// value is routed again and rejected only because murmur3's shard is not owned, at its
    /// own index, counted once.
    #[test]
    fn a_hint_to_an_unowned_shard_routes_again_and_rejects_by_the_real_shard() {
        let agg = engine();
        let ids: Vec<Vec<u8>> = (0..64)
            .map(|i| format!("series.{i}").into_bytes())
            .collect();
        let batch: Vec<TimedSample<'_>> = ids.iter().map(|id| gauge(id, 1.0)).collect();
        let mut errors = Vec::new();
        agg.add_timed_batch(&batch, NOW, &mut |i, e| errors.push((i, e)));
        assert_eq!(errors, vec![]);
        let dropped = 3;
        agg.set_shards(
            (0..NUM_SHARDS)
                .filter(|&s| s != dropped)
                .map(crate::ShardAssignment::unbounded)
                .collect(),
            0,
        );
        agg.add_timed_batch(&batch, NOW, &mut |i, e| errors.push((i, e)));
        let expected: Vec<(usize, AddError)> = ids
            .iter()
            .enumerate()
            .filter(|(_, id)| m3_cluster::shard_for(id, NUM_SHARDS) == dropped)
            .map(|(i, _)| (i, AddError::ShardNotOwned { shard: dropped }))
            .collect();
        assert!(!expected.is_empty(), "some series are in the dropped shard");
        assert_eq!(errors, expected);
        assert_eq!(
            agg.metrics().shard_hints_unconfirmed_total(),
            expected.len() as u64
        );
        assert_eq!(
            agg.metrics().added(MetricType::Gauge),
            (2 * ids.len() - expected.len()) as u64
        );
    }
}

#[cfg(test)]
mod stored_id_tests {
    use super::*;
    use m3_metric::id::encode_tags;
    use std::collections::BTreeSet;

    const S: i64 = 1_000_000_000;
    const T0: i64 = 1_700_000_000 * S;
    const HOUR: i64 = 3600 * S;

    /// Series `i`: a few names and jobs shared by many series, an instance of its own.
    fn id(i: usize) -> Vec<u8> {
        let mut id = Vec::new();
        encode_tags(
            [
                (&b"__name__"[..], format!("metric_{}", i % 7).as_bytes()),
                (
                    &b"instance"[..],
                    format!("10.0.{}.{}:9100", i / 256, i % 256).as_bytes(),
                ),
                (&b"job"[..], format!("job-{}", i % 3).as_bytes()),
            ],
            &mut id,
        )
        .expect("short tags encode");
        id
    }

    fn add(agg: &Aggregator, ids: &[Vec<u8>], t: i64) {
        let samples: Vec<TimedSample<'_>> = ids
            .iter()
            .map(|id| TimedSample {
                metric_type: MetricType::Gauge,
                id,
                time_nanos: t,
                value: 1.0,
                metadatas: crate::Metadatas::Default,
            })
            .collect();
        let mut errors = Vec::new();
        agg.add_timed_batch(&samples, t, &mut |i, e| errors.push((i, e)));
        assert_eq!(errors, vec![]);
    }

    fn flushed_ids(agg: &Aggregator, now: i64) -> BTreeSet<Vec<u8>> {
        let mut out = Vec::new();
        agg.flush(now, FlushMode::LeaderFinal, &mut out);
        out.into_iter().map(|o| o.id).collect()
    }

    /// IDs are stored with their shared tag pairs once and decoded to flush: every output
    /// carries its series' exact ID, through series that expire (their pairs given back) and
    /// new ones that take the freed symbols.
    #[test]
    fn outputs_carry_their_series_ids_through_expiry_and_new_series() {
        let agg = Aggregator::new(
            AggregatorOptions::default(),
            Arc::new(|id: &[u8]| m3_cluster::shard_for(id, 8)),
        );
        agg.set_shards((0..8).map(crate::ShardAssignment::unbounded).collect(), 0);
        let first: Vec<Vec<u8>> = (0..3000).map(id).collect();
        add(&agg, &first, T0);
        assert_eq!(
            flushed_ids(&agg, T0 + 20 * S),
            first.iter().cloned().collect()
        );
        // Two hours on, the second half is written again with 1500 new series; the first
        // half expires.
        let later: Vec<Vec<u8>> = (1500..4500).map(id).collect();
        add(&agg, &later, T0 + 2 * HOUR);
        assert_eq!(agg.expire_entries(T0 + 2 * HOUR + 10 * S), 1500);
        let flushed = flushed_ids(&agg, T0 + 2 * HOUR + 20 * S);
        assert_eq!(flushed, later.iter().cloned().collect());
        assert_eq!(agg.expire_entries(T0 + 4 * HOUR), 3000);
        let last: Vec<Vec<u8>> = (4000..6000).map(id).collect();
        add(&agg, &last, T0 + 4 * HOUR);
        assert_eq!(
            flushed_ids(&agg, T0 + 4 * HOUR + 20 * S),
            last.iter().cloned().collect()
        );
    }

    /// Every shard stores its IDs through the one dictionary, so a pair the shards share is
    /// one symbol; a shard that moves away gives back the references of its series.
    #[test]
    fn one_dictionary_serves_every_shard_and_a_shard_moved_away_gives_its_symbols_back() {
        let agg = Aggregator::new(
            AggregatorOptions::default(),
            Arc::new(|id: &[u8]| m3_cluster::shard_for(id, 8)),
        );
        let all = || (0..8).map(crate::ShardAssignment::unbounded).collect();
        agg.set_shards(all(), 0);
        let ids: Vec<Vec<u8>> = (0..3000).map(id).collect();
        add(&agg, &ids, T0);
        // Seven metric names and three jobs as pairs; `__name__`, `instance` and `job` as
        // names. A dictionary per shard would hold most of them eight times.
        assert_eq!(agg.ids.read().symbols(), 13);
        agg.set_shards((0..4).map(crate::ShardAssignment::unbounded).collect(), 0);
        assert_eq!(agg.ids.read().symbols(), 13, "the shards left use them all");
        agg.set_shards(Vec::new(), 0);
        assert_eq!(agg.ids.read().symbols(), 0);
        // New series (an instance pair seen before would now be seen twice, and shared).
        agg.set_shards(all(), 0);
        let others: Vec<Vec<u8>> = (3000..6000).map(id).collect();
        add(&agg, &others, T0 + HOUR);
        assert_eq!(agg.ids.read().symbols(), 13);
        assert_eq!(
            flushed_ids(&agg, T0 + HOUR + 20 * S),
            others.iter().cloned().collect()
        );
        // A flush tells `/metrics` what the dictionary holds.
        let (symbols, bytes) = agg.metrics().id_dictionary();
        assert_eq!(symbols, 13);
        assert_eq!(bytes as usize, agg.ids.read().allocation_size());
        assert!(bytes > 0);
    }
}
