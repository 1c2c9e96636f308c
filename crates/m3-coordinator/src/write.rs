//! The write path of remote write: raw samples to the unaggregated namespace, and every sample
//! routed to the aggregators that own its series.
//!
//! One request is handled in one pass over the decoded body. For each valid series the labels
//! are tag-encoded into a reused buffer (the series ID), and each sample is
//!
//! 1. kept for the raw write, and
//! 2. unless its timestamp lies outside the aggregation buffers, encoded as a timed gauge frame
//!    into the buffer of each aggregator instance that owns the ID's shard.
//!
//! Invalid series and out-of-buffer samples do not stop the others: what is valid is written,
//! and the request is then answered 400 naming what was refused, so nothing accepted is lost
//! and nothing refused is silent. Storage failures answer 5xx so Prometheus retries.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use m3_storage::{LabelsBatch, LabelsView, Store};

use crate::config::WriteBuffersConfig;
use crate::downsample::Downsampler;
use crate::metrics::{CoordinatorMetrics, DropReason};
use crate::remote_out::RemoteOut;
use crate::remote_write::{DecodeError, DecodeLimits, InvalidSeries, RemoteWriteDecoder};
use crate::series_cache::{CacheSlot, CachedSeries, NewSeries, SeriesCache, SeriesKey};
use m3_aggregator::client::{AggregatorClient, RouteError};
use m3_metric::MetricType;

/// Request buffers that grew past this for a large request are dropped rather than kept for
/// the next request, so one large request does not pin its memory for good.
const MAX_RETAINED_SCRATCH_BYTES: usize = 4 * 1024 * 1024;

/// How many series ahead of the one being routed the cached ID is prefetched: far enough for
/// a load from memory to arrive, near enough that it is still in the nearest cache when used.
const ID_AHEAD: usize = 8;

/// The earliest and latest timestamps (ms) whose nanoseconds fit an `i64`: samples outside
/// are refused, as nothing downstream could represent them.
const MIN_TIMESTAMP_MS: i64 = i64::MIN / 1_000_000;
const MAX_TIMESTAMP_MS: i64 = i64::MAX / 1_000_000;

/// Everything a remote-write request needs.
pub struct WritePath {
    /// The embedded store; `None` under `backend: prom-remote`.
    store: Option<Store>,
    raw_namespace: Option<String>,
    downsampler: Downsampler,
    client: Option<Arc<AggregatorClient>>,
    buffers: WriteBuffersConfig,
    metrics: CoordinatorMetrics,
    decode_limits: DecodeLimits,
    /// Buffers of finished requests, taken by the next ones.
    scratches: Mutex<Vec<Scratch>>,
    /// Remote-write endpoints receiving copies of the raw samples.
    remote_out: Option<Arc<RemoteOut>>,
    /// The IDs and ID hashes of the series routed before.
    series_cache: SeriesCache,
}

impl std::fmt::Debug for WritePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WritePath")
            .field("raw_namespace", &self.raw_namespace)
            .finish_non_exhaustive()
    }
}

/// What happened to a request that decoded.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Samples in the request.
    pub samples: usize,
    /// Raw samples stored.
    pub stored_raw: usize,
    /// Samples sent to at least one aggregator.
    pub forwarded: usize,
    /// Invalid series: count and the first few reasons with their labels.
    pub invalid_series: usize,
    /// Descriptions of the first invalid series.
    pub invalid_examples: Vec<String>,
    /// Samples older than the aggregation past buffer.
    pub too_far_past: usize,
    /// Samples newer than the aggregation future buffer.
    pub too_far_future: usize,
    /// Samples whose timestamp no nanosecond clock can hold (neither stored nor aggregated).
    pub invalid_timestamps: usize,
    /// Samples no aggregator owns.
    pub unowned: usize,
    /// Samples whose labels are too long to tag-encode (stored raw, not aggregated).
    pub too_large: usize,
    /// Samples dropped by a full queue towards an aggregator (this request's or older ones).
    pub queue_full: usize,
    /// Samples the store refused: further behind their series' newest sample than the raw
    /// namespace's `bufferPast` (not stored raw; still aggregated if in the aggregation
    /// window).
    pub too_old_for_store: usize,
    /// Samples the store refused: further ahead of the clock than the raw namespace's
    /// `bufferFuture` (not stored raw).
    pub too_new_for_store: usize,
    /// Whether the sender should retry later (no placement yet, or aggregator queues full):
    /// answered 503 so Prometheus retries; the raw samples are rewritten idempotently.
    pub retry_later: bool,
}

impl WriteOutcome {
    /// The 400 reason, when something was refused.
    pub fn rejection(&self) -> Option<String> {
        let mut parts = Vec::new();
        if self.invalid_series > 0 {
            parts.push(format!(
                "{} invalid series (e.g. {})",
                self.invalid_series,
                self.invalid_examples.join("; ")
            ));
        }
        if self.invalid_timestamps > 0 {
            parts.push(format!(
                "{} samples: timestamp outside [{MIN_TIMESTAMP_MS}, {MAX_TIMESTAMP_MS}] ms (not stored)",
                self.invalid_timestamps
            ));
        }
        if self.too_old_for_store > 0 {
            parts.push(format!(
                "{} samples: out of bounds, further behind their series' newest sample than the raw namespace's bufferPast (not stored raw)",
                self.too_old_for_store
            ));
        }
        if self.too_new_for_store > 0 {
            parts.push(format!(
                "{} samples: datapoint too far in future, further ahead of now than the raw namespace's bufferFuture (not stored raw)",
                self.too_new_for_store
            ));
        }
        if self.too_far_past > 0 {
            parts.push(format!(
                "{} samples: datapoint for aggregation too far in past (stored raw, not aggregated)",
                self.too_far_past
            ));
        }
        if self.too_far_future > 0 {
            parts.push(format!(
                "{} samples: datapoint for aggregation too far in future (stored raw, not aggregated)",
                self.too_far_future
            ));
        }
        if self.too_large > 0 {
            parts.push(format!(
                "{} samples: labels too long for a metric ID (stored raw, not aggregated)",
                self.too_large
            ));
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }

    /// The 503 reason, when the sender should retry.
    pub fn overload(&self) -> Option<String> {
        self.retry_later.then(|| {
            format!(
                "aggregation tier not ready or overloaded ({} samples without a placement, {} dropped by full aggregator queues); retry later",
                self.unowned, self.queue_full
            )
        })
    }
}

/// Where a request's samples go: M3's remote-write headers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum WriteMode {
    /// Raw to the unaggregated namespace, and to the aggregators as the rules say.
    #[default]
    Default,
    /// To the aggregators only, nothing raw (`M3-Write-Type: aggregate`).
    AggregateOnly,
    /// Raw only, no aggregation (`M3-Metrics-Type: unaggregated`).
    RawOnly,
    /// Already aggregated at `policy` (`M3-Metrics-Type: aggregated` with `M3-Storage-Policy`):
    /// stored as given into the aggregated namespace of that policy (if there is one) and sent
    /// to the remote-write endpoints of that policy, no aggregation.
    Aggregated {
        /// The namespace of the policy, if the embedded store has one.
        namespace: Option<String>,
        /// The storage policy.
        policy: m3_metric::StoragePolicy,
    },
}

/// Why a request failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The body did not decode (400), or is over a limit (413).
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The store failed: 503, Prometheus retries.
    #[error("storing raw samples: {0}")]
    Storage(m3_storage::Error),
    /// A remote-write endpoint's queue has no room: 503 before anything was stored or
    /// forwarded, Prometheus retries.
    #[error(transparent)]
    RemoteOutFull(#[from] crate::remote_out::QueueFull),
    /// An aggregator instance is behind (its queue past half of `maxQueueBytes`): 503 before
    /// anything was stored or forwarded, Prometheus retries.
    #[error(
        "an aggregator instance is behind: its queue is over half of maxQueueBytes; retry later"
    )]
    AggregatorBehind,
}

const MAX_INVALID_EXAMPLES: usize = 3;

impl WritePath {
    /// A write path over `store` (none: nothing stored here); `raw_namespace` receives raw
    /// samples, `client` (if any) receives what the downsampler selects.
    pub fn new(
        store: impl Into<Option<Store>>,
        raw_namespace: Option<String>,
        downsampler: Downsampler,
        client: Option<Arc<AggregatorClient>>,
        buffers: WriteBuffersConfig,
        metrics: CoordinatorMetrics,
    ) -> WritePath {
        WritePath {
            store: store.into(),
            raw_namespace,
            downsampler,
            client,
            buffers,
            metrics,
            decode_limits: DecodeLimits::default(),
            scratches: Mutex::new(Vec::new()),
            remote_out: None,
            series_cache: SeriesCache::new(crate::series_cache::DEFAULT_MAX_BYTES),
        }
    }

    /// The same write path sending copies of raw samples to the raw endpoints of `remote_out`.
    #[must_use]
    pub fn with_remote_out(mut self, remote_out: Arc<RemoteOut>) -> WritePath {
        self.remote_out = Some(remote_out);
        self
    }

    /// The same write path keeping at most `max_bytes` of series in its series cache (0:
    /// none), with their IDs if `keep_ids`.
    #[must_use]
    pub fn with_series_cache(mut self, max_bytes: usize, keep_ids: bool) -> WritePath {
        self.series_cache = if keep_ids {
            SeriesCache::new(max_bytes)
        } else {
            SeriesCache::new(max_bytes).without_ids()
        };
        self
    }

    /// The same write path decoding within `limits`.
    #[must_use]
    pub fn with_decode_limits(mut self, limits: DecodeLimits) -> WritePath {
        self.decode_limits = limits;
        self
    }

    /// Handles one snappy-compressed remote-write body at `now_nanos`. Blocking (storage I/O):
    /// call from a blocking thread.
    ///
    /// # Errors
    /// [`WriteError::Decode`] for a body that is not a `WriteRequest` (nothing is written);
    /// [`WriteError::Storage`] when raw samples could not be stored.
    pub fn write(&self, body: &[u8], now_nanos: i64) -> Result<WriteOutcome, WriteError> {
        self.write_as(body, now_nanos, &WriteMode::Default)
    }

    /// [`write`](Self::write), with the samples going where `mode` says.
    ///
    /// # Errors
    /// As [`write`](Self::write).
    pub fn write_as(
        &self,
        body: &[u8],
        now_nanos: i64,
        mode: &WriteMode,
    ) -> Result<WriteOutcome, WriteError> {
        self.metrics.write_requests.inc();
        let popped = self.scratches.lock().pop();
        let mut scratch = popped.unwrap_or_else(|| Scratch {
            decoder: RemoteWriteDecoder::with_limits(self.decode_limits),
            raw_labels: LabelsBatch::new(),
            keys: Vec::new(),
            found: Vec::new(),
            new_series: NewSeries::default(),
        });
        let result = self.write_with(&mut scratch, body, now_nanos, mode);
        if scratch.retained_bytes() <= MAX_RETAINED_SCRATCH_BYTES {
            self.scratches.lock().push(scratch);
        }
        match &result {
            Ok(outcome) if outcome.rejection().is_some() => {
                self.metrics.write_requests_invalid.inc();
            }
            Err(WriteError::Decode(e)) if e.is_too_large() => {
                self.metrics
                    .refuse_request(crate::metrics::RefusedReason::too_large);
            }
            Err(WriteError::Decode(_)) => {
                self.metrics.write_requests_invalid.inc();
            }
            _ => {}
        }
        result
    }

    fn write_with(
        &self,
        scratch: &mut Scratch,
        body: &[u8],
        now_nanos: i64,
        mode: &WriteMode,
    ) -> Result<WriteOutcome, WriteError> {
        let aggregate = matches!(mode, WriteMode::Default | WriteMode::AggregateOnly);
        if aggregate && self.client.as_ref().is_some_and(|c| c.congested()) {
            self.metrics
                .refuse_request(crate::metrics::RefusedReason::aggregator_behind);
            return Err(WriteError::AggregatorBehind);
        }
        let Scratch {
            decoder,
            raw_labels,
            keys,
            found,
            new_series,
        } = scratch;
        raw_labels.clear();
        keys.clear();
        found.clear();
        let parsed = decoder.parse_snappy(body)?;
        // Series routed before are found in the cache by the hash of their label bytes: their
        // labels were checked then, their ID's hash kept (and the ID, unless the cache keeps
        // none). The keys are hashed up front so
        // that each lookup's bucket is fetched from memory while the lookups before it run.
        let aggregating = self.client.is_some() && self.downsampler.is_enabled() && aggregate;
        let cache =
            (aggregating && self.series_cache.is_enabled()).then(|| self.series_cache.read());
        if let Some(cache) = &cache {
            keys.extend(parsed.label_bytes().map(|b| self.series_cache.key(b)));
            // Two stages ahead of the lookup: the bucket of the series `PREFETCH_AHEAD`
            // later, and the entry of the one half as far, whose bucket arrived meanwhile.
            let (far, near) = (
                m3_hash_index::PREFETCH_AHEAD,
                m3_hash_index::PREFETCH_AHEAD / 2,
            );
            for index in 0..keys.len() {
                if let Some(&ahead) = keys.get(index + far) {
                    cache.prefetch(ahead);
                }
                if let Some(&ahead) = keys.get(index + near) {
                    cache.prefetch_entries(ahead);
                }
                found.push(keys.get(index).and_then(|&key| cache.find(key)));
            }
        }
        let request = parsed.check_labels(|index| found.get(index).is_some_and(Option::is_some));
        let mut outcome = WriteOutcome {
            samples: request.sample_count(),
            ..WriteOutcome::default()
        };
        self.metrics.samples_received.inc_by(outcome.samples as u64);

        let past_limit = now_nanos.saturating_sub(nanos(
            self.buffers.buffer_past + self.downsampler.largest_resolution(),
        ));
        let future_limit = now_nanos.saturating_add(nanos(self.buffers.buffer_future));
        let raw_namespace = match mode {
            WriteMode::Default | WriteMode::RawOnly => self.raw_namespace.as_ref(),
            WriteMode::AggregateOnly => None,
            WriteMode::Aggregated { namespace, .. } => namespace.as_ref(),
        }
        .filter(|_| self.store.is_some());
        // The endpoints receiving the samples as they came.
        let out_endpoints: Vec<&crate::remote_out::Endpoint> = match (&self.remote_out, mode) {
            (None, _) | (_, WriteMode::AggregateOnly) => Vec::new(),
            (Some(out), WriteMode::Default | WriteMode::RawOnly) => out.raw_endpoints().collect(),
            (Some(out), WriteMode::Aggregated { policy, .. }) => {
                out.endpoints_for(*policy).collect()
            }
        };
        let keep_raw = raw_namespace.is_some() || !out_endpoints.is_empty();
        let mut batch = match (&self.client, aggregating) {
            (Some(client), true) => Some(client.batch()),
            _ => None,
        };
        let mut id = Vec::with_capacity(256);
        let mut tags: Vec<(&[u8], &[u8])> = Vec::with_capacity(16);
        // Raw samples point at their series' labels, copied once per series into `raw_labels`.
        let mut raw: Vec<(usize, i64, f64)> =
            Vec::with_capacity(if keep_raw { outcome.samples } else { 0 });
        for (index, series) in request.series().enumerate() {
            // The ID of a series a few ahead, found in the cache, is copied into frames soon.
            if let (Some(cache), Some(&Some(ahead))) = (&cache, found.get(index + ID_AHEAD)) {
                cache.prefetch_series(ahead);
            }
            let bad_timestamps = series
                .samples()
                .iter()
                .filter(|s| !valid_timestamp(s.timestamp_ms))
                .count();
            if let Some(reason) = series.invalid() {
                outcome.invalid_series += 1;
                self.metrics
                    .drop_samples(DropReason::invalid_series, series.samples().len() as u64);
                if outcome.invalid_examples.len() < MAX_INVALID_EXAMPLES {
                    outcome
                        .invalid_examples
                        .push(describe_invalid(&series, reason));
                }
                continue;
            }
            outcome.invalid_timestamps += bad_timestamps;
            // The series' ID and its hash, from the cache or encoded now.
            let cached = match (&cache, found.get(index)) {
                (Some(cache), Some(&Some(slot))) => cache.series(slot),
                _ => None,
            };
            let routed_id = match (aggregating, cached) {
                (false, _) => None,
                (
                    true,
                    Some(CachedSeries {
                        id: Some(cached_id),
                        id_hash,
                    }),
                ) => Some((cached_id, id_hash)),
                // New, or cached without its ID (then its hash is known).
                (true, cached) => {
                    id.clear();
                    if m3_metric::id::encode_tags(series.labels(), &mut id).is_ok() {
                        let id_hash = match cached {
                            Some(cached) => cached.id_hash,
                            None => {
                                let id_hash = m3_cluster::murmur3_32(&id);
                                if let (Some(_), Some(&key)) = (&cache, keys.get(index)) {
                                    let kept = self.series_cache.keeps_ids().then_some(&id[..]);
                                    new_series.push(key, kept, id_hash);
                                }
                                id_hash
                            }
                        };
                        Some((id.as_slice(), id_hash))
                    } else {
                        // Labels over 64 KiB cannot be tag-encoded; the series is stored raw
                        // only.
                        let n = series.samples().len();
                        self.metrics.drop_samples(DropReason::too_large, n as u64);
                        outcome.too_large += n;
                        None
                    }
                }
            };
            // The rules' plan for the series, when it may be aggregated.
            let plan = routed_id.map(|(id, _)| {
                tags.clear();
                if self.downsampler.has_rules() {
                    tags.extend(series.labels());
                }
                self.downsampler.plan(id, &tags)
            });
            let store_raw = plan.as_ref().is_none_or(|p| p.store_raw);
            if !store_raw {
                self.metrics
                    .drop_samples(DropReason::dropped_by_rule, series.samples().len() as u64);
            }
            if keep_raw && store_raw {
                match raw_labels.push_bytes(series.labels()) {
                    Ok(index) => {
                        raw.extend(
                            series
                                .samples()
                                .iter()
                                .filter(|s| valid_timestamp(s.timestamp_ms))
                                .map(|s| (index, s.timestamp_ms, s.value)),
                        );
                    }
                    Err(_) => {
                        // The decoder validated the labels, so this is not expected; count it.
                        self.metrics.drop_samples(
                            DropReason::invalid_series,
                            series.samples().len() as u64,
                        );
                    }
                }
            }
            let (Some(batch), Some(plan), Some((id, id_hash))) = (batch.as_mut(), plan, routed_id)
            else {
                continue;
            };
            if !plan.aggregates() {
                continue;
            }
            for sample in series.samples() {
                if !valid_timestamp(sample.timestamp_ms) {
                    continue;
                }
                let t = sample.timestamp_ms * 1_000_000;
                if t < past_limit {
                    outcome.too_far_past += 1;
                    continue;
                }
                if t > future_limit {
                    outcome.too_far_future += 1;
                    continue;
                }
                let mut routed = plan
                    .own
                    .as_ref()
                    .map(|own| batch.route_timed(id, id_hash, GAUGE, t, sample.value, own));
                for (other_id, metadatas) in &plan.other_ids {
                    let other_hash = m3_cluster::murmur3_32(other_id);
                    let result =
                        batch.route_timed(other_id, other_hash, GAUGE, t, sample.value, metadatas);
                    if routed.as_ref().is_none_or(Result::is_err) {
                        routed = Some(result);
                    }
                }
                match routed.unwrap_or(Ok(0)) {
                    Ok(_) => outcome.forwarded += 1,
                    Err(RouteError::NoPlacement) => {
                        self.metrics.drop_samples(DropReason::no_placement, 1);
                        outcome.unowned += 1;
                        outcome.retry_later = true;
                    }
                    Err(RouteError::NoOwner) => {
                        self.metrics
                            .drop_samples(DropReason::no_aggregator_owner, 1);
                        outcome.unowned += 1;
                    }
                }
            }
        }
        // Nothing below reads the cache; the series it did not have go in before the storage
        // write, so that the next request finds them.
        drop(cache);
        if let Some(size) = self.series_cache.insert(new_series) {
            let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
            self.metrics.series_cache_series.set(gauge(size.series));
            self.metrics.series_cache_bytes.set(gauge(size.bytes));
        }
        self.metrics.drop_samples(
            DropReason::invalid_timestamp,
            outcome.invalid_timestamps as u64,
        );
        self.metrics
            .drop_samples(DropReason::too_far_past, outcome.too_far_past as u64);
        self.metrics
            .drop_samples(DropReason::too_far_future, outcome.too_far_future as u64);
        // Raw first: when the store fails the request is retried, and nothing was sent to the
        // aggregators yet, so nothing is aggregated twice. The endpoints' queues before the
        // store, so that a full one refuses the request before anything is kept.
        let refs: Vec<(LabelsView<'_>, i64, f64)> = raw
            .iter()
            .map(|&(index, t, v)| (raw_labels.get(index), t, v))
            .collect();
        if !out_endpoints.is_empty() && !refs.is_empty() {
            // Delivery is not awaited: the endpoints' queues hold the samples from here.
            let _deliveries =
                crate::remote_out::send_to_all(&out_endpoints, &refs, &mut Vec::new())?;
        }
        if let (Some(ns), Some(store)) = (raw_namespace, &self.store)
            && !refs.is_empty()
        {
            let summary = match store.write_batch(ns, &refs) {
                Ok(summary) => summary,
                Err(e) => {
                    self.metrics
                        .drop_samples(DropReason::storage_error, refs.len() as u64);
                    return Err(WriteError::Storage(e));
                }
            };
            outcome.stored_raw = summary.samples as usize;
            outcome.too_old_for_store = summary.too_old as usize;
            outcome.too_new_for_store = summary.too_new as usize;
            self.metrics.samples_stored_raw.inc_by(summary.samples);
            if summary.too_old > 0 {
                self.metrics
                    .drop_samples(DropReason::too_old_for_store, summary.too_old);
            }
            if summary.too_new > 0 {
                self.metrics
                    .drop_samples(DropReason::too_new_for_store, summary.too_new);
            }
        }
        if let (Some(client), Some(batch)) = (&self.client, batch) {
            let dropped = client.commit(batch);
            if dropped > 0 {
                outcome.queue_full += dropped as usize;
                outcome.retry_later = true;
            }
        }
        Ok(outcome)
    }
}

/// What one request needs besides its body, reused by the next request.
#[derive(Debug)]
struct Scratch {
    decoder: RemoteWriteDecoder,
    /// The label sets of the raw samples.
    raw_labels: LabelsBatch,
    /// The series' keys in the series cache.
    keys: Vec<SeriesKey>,
    /// Where the cache has each series, if it has it.
    found: Vec<Option<CacheSlot>>,
    /// The series the cache did not have.
    new_series: NewSeries,
}

impl Scratch {
    fn retained_bytes(&self) -> usize {
        self.decoder.retained_bytes()
            + self.raw_labels.retained_bytes()
            + self.keys.capacity() * std::mem::size_of::<SeriesKey>()
            + self.found.capacity() * std::mem::size_of::<Option<CacheSlot>>()
            + self.new_series.capacity_bytes()
    }
}

fn describe_invalid(series: &crate::remote_write::SeriesRef<'_>, reason: InvalidSeries) -> String {
    let labels: Vec<String> = series
        .labels()
        .take(8)
        .map(|(n, v)| {
            format!(
                "{}={:?}",
                String::from_utf8_lossy(n),
                String::from_utf8_lossy(v)
            )
        })
        .collect();
    format!("{reason}: {{{}}}", labels.join(", "))
}

/// Whether a remote-write timestamp (ms) converts to nanoseconds without overflow.
fn valid_timestamp(ms: i64) -> bool {
    (MIN_TIMESTAMP_MS..=MAX_TIMESTAMP_MS).contains(&ms)
}

/// Prometheus samples are gauges to the aggregator (M3's `MetricType.GAUGE`).
const GAUGE: MetricType = MetricType::Gauge;

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ValidNamespace;
    use bytes::BytesMut;
    use m3_aggregator::client::ClientOptions;
    use m3_cluster::placement::{Instance, Placement, Shard, ShardState};
    use m3_proto::Message;
    use m3_proto::metricpb::MetricWithMetadatas;
    use m3_proto::prometheus::{Label, Sample, TimeSeries, WriteRequest};
    use m3_storage::{Matcher, NamespaceConfig};
    use tokio::io::AsyncReadExt;

    const NOW_MS: i64 = 1_700_000_000_000;

    fn namespaces() -> Vec<ValidNamespace> {
        vec![
            ValidNamespace {
                name: "default".into(),
                policy: None,
                retention: Duration::from_secs(86_400),
                downsample_all: true,
                read_only: false,
                buffer_past: None,
                buffer_future: None,
            },
            ValidNamespace {
                name: "agg".into(),
                policy: Some("10s:2d".parse().unwrap()),
                retention: Duration::from_secs(172_800),
                downsample_all: true,
                read_only: false,
                buffer_past: None,
                buffer_future: None,
            },
        ]
    }

    /// A placement of four shards, all on instance "a" at `endpoint`.
    fn one_instance_placement(endpoint: String) -> Placement {
        let mut placement = Placement {
            num_shards: 4,
            replica_factor: 1,
            is_sharded: true,
            ..Placement::default()
        };
        let mut instance = Instance::new("a").with_endpoint(endpoint);
        instance.shards = (0..4)
            .map(|s| Shard::new(s, ShardState::Available))
            .collect();
        placement.instances.insert("a".into(), instance);
        placement
    }

    fn store(dir: &std::path::Path) -> Store {
        Store::open(
            dir,
            vec![
                NamespaceConfig::unaggregated("default", Duration::from_secs(86_400)),
                NamespaceConfig::aggregated(
                    "agg",
                    Duration::from_secs(10),
                    Duration::from_secs(172_800),
                ),
            ],
        )
        .unwrap()
    }

    /// A series as labels and (timestamp ms, value) samples.
    type TestSeries<'a> = (&'a [(&'a str, &'a str)], &'a [(i64, f64)]);

    fn body(series: &[TestSeries<'_>]) -> Vec<u8> {
        let request = WriteRequest {
            timeseries: series
                .iter()
                .map(|(labels, samples)| TimeSeries {
                    labels: labels
                        .iter()
                        .map(|(n, v)| Label {
                            name: n.to_string(),
                            value: v.to_string(),
                        })
                        .collect(),
                    samples: samples
                        .iter()
                        .map(|&(timestamp, value)| Sample { value, timestamp })
                        .collect(),
                })
                .collect(),
        };
        snap::raw::Encoder::new()
            .compress_vec(&request.encode_to_vec())
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stores_raw_routes_in_buffer_samples_and_reports_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = listener.local_addr().unwrap().to_string();
        let metrics = CoordinatorMetrics::default();
        let client = AggregatorClient::new(ClientOptions::default(), Arc::new(metrics.clone()));
        client.update_placement(&one_instance_placement(endpoint));
        let path = WritePath::new(
            store.clone(),
            Some("default".into()),
            Downsampler::from_namespaces(&namespaces()),
            // The client stops its writers when dropped: keep it until the frame is read (a
            // writer stopped before it sent closed the connection empty, and the read below
            // waited forever).
            Some(Arc::clone(&client)),
            WriteBuffersConfig::default(),
            metrics.clone(),
        );
        let too_old = NOW_MS - 3_600_000;
        let request = body(&[
            (
                &[("__name__", "up"), ("job", "a")],
                &[(too_old, 1.0), (NOW_MS, 2.0)],
            ),
            (&[("job", "b"), ("__name__", "up")], &[(NOW_MS, 3.0)]),
        ]);
        let outcome = tokio::task::spawn_blocking(move || path.write(&request, NOW_MS * 1_000_000))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(outcome.samples, 3);
        assert_eq!(outcome.stored_raw, 2);
        assert_eq!(outcome.forwarded, 1);
        assert_eq!(outcome.too_far_past, 1);
        assert_eq!(outcome.invalid_series, 1);
        let reason = outcome.rejection().unwrap();
        assert!(
            reason.contains("sorted") && reason.contains("too far in past"),
            "{reason}"
        );

        // The raw samples of the valid series, both of them.
        let raw = store
            .select("default", &[Matcher::equal("__name__", "up")], 0, i64::MAX)
            .unwrap();
        assert_eq!(raw.len(), 1);
        assert_eq!(raw[0].samples, vec![(too_old, 1.0), (NOW_MS, 2.0)]);

        // Exactly one frame reached the aggregator: the in-buffer sample, with its timestamp.
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut buf = BytesMut::new();
        let frame = loop {
            if let Some(frame) = m3_proto::framing::next_rawtcp_frame(&mut buf, 1 << 20).unwrap() {
                break frame;
            }
            let read =
                tokio::time::timeout(std::time::Duration::from_secs(10), conn.read_buf(&mut buf))
                    .await
                    .expect("the frame arrives")
                    .unwrap();
            assert!(read > 0, "connection closed before a whole frame");
        };
        let message = MetricWithMetadatas::decode(frame).unwrap();
        let timed = message.timed_metric_with_metadatas.unwrap().metric.unwrap();
        assert_eq!(timed.time_nanos, NOW_MS * 1_000_000);
        assert_eq!(timed.value, 2.0);
        assert!(buf.is_empty());
    }

    /// Reads rawtcp frames from `conn` until `count` arrived; returns each frame's metric ID.
    async fn read_frame_ids(conn: &mut tokio::net::TcpStream, count: usize) -> Vec<Vec<u8>> {
        let mut buf = BytesMut::new();
        let mut ids = Vec::new();
        while ids.len() < count {
            while let Some(frame) = m3_proto::framing::next_rawtcp_frame(&mut buf, 1 << 20).unwrap()
            {
                let message = MetricWithMetadatas::decode(frame).unwrap();
                let timed = message.timed_metric_with_metadatas.unwrap().metric.unwrap();
                ids.push(timed.id.to_vec());
            }
            if ids.len() < count {
                let read = tokio::time::timeout(Duration::from_secs(10), conn.read_buf(&mut buf))
                    .await
                    .expect("every frame arrives")
                    .unwrap();
                assert!(read > 0, "connection closed after {} frames", ids.len());
            }
        }
        ids
    }

    /// A series sent again is routed from the series cache: under the same ID, to the
    /// instance that owns the ID's shard, as the first time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn series_sent_again_go_under_the_same_id_to_their_shards_owner() {
        send_twice_and_check_routes(crate::series_cache::DEFAULT_MAX_BYTES, true).await;
    }

    /// The same from a cache that keeps no IDs (`seriesCacheIds: false`): the IDs are encoded
    /// again, their hashes come from the cache.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn series_sent_again_through_a_cache_without_ids_go_to_the_same_owner() {
        send_twice_and_check_routes(crate::series_cache::DEFAULT_MAX_BYTES, false).await;
    }

    /// The same without a series cache (`seriesCacheBytes: 0`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_a_series_cache_series_are_routed_all_the_same() {
        send_twice_and_check_routes(0, true).await;
    }

    async fn send_twice_and_check_routes(series_cache_bytes: usize, keep_ids: bool) {
        let listeners = [
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        ];
        // Shards 0 and 1 on "a", 2 and 3 on "b".
        let mut placement = Placement {
            num_shards: 4,
            replica_factor: 1,
            is_sharded: true,
            ..Placement::default()
        };
        for (n, (name, listener)) in ["a", "b"].iter().zip(&listeners).enumerate() {
            let endpoint = listener.local_addr().unwrap().to_string();
            let mut instance = Instance::new(*name).with_endpoint(endpoint);
            instance.shards = (0..2)
                .map(|s| Shard::new(2 * n as u32 + s, ShardState::Available))
                .collect();
            placement.instances.insert((*name).into(), instance);
        }
        let metrics = CoordinatorMetrics::default();
        let client = AggregatorClient::new(ClientOptions::default(), Arc::new(metrics.clone()));
        client.update_placement(&placement);
        let path = Arc::new(
            WritePath::new(
                None,
                None,
                Downsampler::from_namespaces(&namespaces()),
                Some(Arc::clone(&client)),
                WriteBuffersConfig::default(),
                metrics.clone(),
            )
            .with_series_cache(series_cache_bytes, keep_ids),
        );
        let names: Vec<String> = (0..40).map(|i| format!("s{i}")).collect();
        let labels: Vec<[(&str, &str); 2]> = names
            .iter()
            .map(|n| [("__name__", "up"), ("series", n.as_str())])
            .collect();
        let samples = [(NOW_MS, 1.0)];
        let mut series: Vec<TestSeries<'_>> =
            labels.iter().map(|l| (&l[..], &samples[..])).collect();
        // An invalid series is refused every time: it never enters the cache.
        let unsorted = [("series", "z"), ("__name__", "up")];
        series.push((&unsorted[..], &samples[..]));
        let request = Arc::new(body(&series));
        for round in 0..2 {
            let (writer, request) = (Arc::clone(&path), Arc::clone(&request));
            let outcome =
                tokio::task::spawn_blocking(move || writer.write(&request, NOW_MS * 1_000_000))
                    .await
                    .unwrap()
                    .unwrap();
            assert_eq!(outcome.forwarded, 40, "round {round}");
            assert_eq!(outcome.invalid_series, 1, "round {round}");
            let cached = if series_cache_bytes > 0 { 40 } else { 0 };
            assert_eq!(path.series_cache.len(), cached, "round {round}");
            assert_eq!(path.metrics.series_cache_series.get(), cached as i64);
            let bytes = path.series_cache.allocated_bytes() as i64;
            assert_eq!(path.metrics.series_cache_bytes.get(), bytes);
            assert_eq!(bytes > 0, series_cache_bytes > 0);
        }
        // Every ID the tag encoding gives, twice, at its shard's owner.
        let mut want: [Vec<Vec<u8>>; 2] = [Vec::new(), Vec::new()];
        for l in &labels {
            let mut id = Vec::new();
            m3_metric::id::encode_tags(
                l.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
                &mut id,
            )
            .unwrap();
            let owner = (m3_cluster::shard_for(&id, 4) / 2) as usize;
            want[owner].push(id.clone());
            want[owner].push(id);
        }
        for (owner, listener) in listeners.iter().enumerate() {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut got = read_frame_ids(&mut conn, want[owner].len()).await;
            got.sort();
            want[owner].sort();
            assert_eq!(got, want[owner], "instance {owner}");
        }
    }

    /// Regression (issue 6): a request over the batch cap was stored raw, a third of it
    /// aggregated, and answered 400 (which Prometheus does not retry).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_over_the_batch_cap_is_split_and_aggregated_whole() {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = listener.local_addr().unwrap().to_string();
        let metrics = CoordinatorMetrics::default();
        let options = ClientOptions {
            max_batch_bytes: 300,
            ..ClientOptions::default()
        };
        let client = AggregatorClient::new(options, Arc::new(metrics.clone()));
        client.update_placement(&one_instance_placement(endpoint));
        let path = WritePath::new(
            store(dir.path()),
            Some("default".into()),
            Downsampler::from_namespaces(&namespaces()),
            // The client stops its writers when dropped: keep it until every frame is read.
            Some(Arc::clone(&client)),
            WriteBuffersConfig::default(),
            metrics.clone(),
        );
        let names: Vec<String> = (0..50).map(|i| format!("s{i}")).collect();
        let labels: Vec<[(&str, &str); 2]> = names
            .iter()
            .map(|n| [("__name__", "up"), ("series", n.as_str())])
            .collect();
        let samples = [(NOW_MS, 1.0)];
        let series: Vec<TestSeries<'_>> = labels.iter().map(|l| (&l[..], &samples[..])).collect();
        let request = body(&series);
        let outcome = tokio::task::spawn_blocking(move || path.write(&request, NOW_MS * 1_000_000))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(outcome.rejection(), None);
        assert_eq!((outcome.stored_raw, outcome.forwarded), (50, 50));

        let (mut conn, _) = listener.accept().await.unwrap();
        let frames = read_frame_ids(&mut conn, 50).await;
        assert_eq!(frames.len(), 50);
    }

    /// An aggregator that accepts the connection and stops reading: once its queue passes half
    /// of `maxQueueBytes`, requests are refused whole (503, nothing stored or queued, counted),
    /// instead of queues growing without end or accepted samples being dropped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_aggregator_that_falls_behind_gets_requests_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = listener.local_addr().unwrap().to_string();
        let metrics = CoordinatorMetrics::default();
        let options = ClientOptions {
            max_queue_bytes: 256 * 1024,
            queue_size: 1_000_000,
            ..ClientOptions::default()
        };
        let client = AggregatorClient::new(options, Arc::new(metrics.clone()));
        client.update_placement(&one_instance_placement(endpoint));
        let accepted = tokio::spawn(async move { listener.accept().await.map(|(c, _)| c) });
        let path = Arc::new(WritePath::new(
            store.clone(),
            Some("default".into()),
            Downsampler::from_namespaces(&namespaces()),
            Some(Arc::clone(&client)),
            WriteBuffersConfig::default(),
            metrics.clone(),
        ));
        let names: Vec<String> = (0..500).map(|i| format!("series-{i:0>100}")).collect();
        let mut stored_before_refusal = 0;
        let mut refused = None;
        for round in 0..2_000 {
            let t = NOW_MS + round;
            let labels: Vec<[(&str, &str); 2]> = names
                .iter()
                .map(|n| [("__name__", "up"), ("series", n.as_str())])
                .collect();
            let samples = [(t, 1.0)];
            let series: Vec<TestSeries<'_>> =
                labels.iter().map(|l| (&l[..], &samples[..])).collect();
            let request = body(&series);
            let writer = Arc::clone(&path);
            let result =
                tokio::task::spawn_blocking(move || writer.write(&request, NOW_MS * 1_000_000))
                    .await
                    .unwrap();
            match result {
                Ok(outcome) => stored_before_refusal += outcome.stored_raw,
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let refused = refused.expect("a stalled aggregator gets requests refused");
        assert!(matches!(refused, WriteError::AggregatorBehind), "{refused}");
        assert!(refused.to_string().contains("retry later"), "{refused}");
        let stored = store
            .select("default", &[Matcher::equal("__name__", "up")], 0, i64::MAX)
            .unwrap()
            .iter()
            .map(|s| s.samples.len())
            .sum::<usize>();
        assert_eq!(
            stored, stored_before_refusal,
            "the refused request stored nothing"
        );
        let refusals = metrics
            .write_requests_refused
            .get_or_create(&crate::metrics::RefusedLabels {
                reason: crate::metrics::RefusedReason::aggregator_behind,
            })
            .get();
        assert_eq!(refusals, 1);
        let _held = accepted.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn no_placement_yet_asks_the_sender_to_retry() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = CoordinatorMetrics::default();
        let client = AggregatorClient::new(ClientOptions::default(), Arc::new(metrics.clone()));
        let path = WritePath::new(
            store(dir.path()),
            Some("default".into()),
            Downsampler::from_namespaces(&namespaces()),
            Some(client),
            WriteBuffersConfig::default(),
            metrics.clone(),
        );
        let outcome = path
            .write(
                &body(&[(&[("__name__", "up")], &[(NOW_MS, 1.0)])]),
                NOW_MS * 1_000_000,
            )
            .unwrap();
        assert_eq!(outcome.stored_raw, 1);
        assert!(outcome.retry_later);
        assert!(outcome.overload().unwrap().contains("retry later"));
        let dropped = metrics
            .samples_dropped
            .get_or_create(&crate::metrics::DropLabels {
                reason: DropReason::no_placement,
            })
            .get();
        assert_eq!(dropped, 1);
    }

    #[test]
    fn without_aggregators_only_raw_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let path = WritePath::new(
            store.clone(),
            Some("default".into()),
            Downsampler::from_namespaces(&namespaces()),
            None,
            WriteBuffersConfig::default(),
            CoordinatorMetrics::default(),
        );
        let outcome = path
            .write(
                &body(&[(&[("__name__", "up")], &[(NOW_MS, 1.0)])]),
                NOW_MS * 1_000_000,
            )
            .unwrap();
        assert_eq!((outcome.stored_raw, outcome.forwarded), (1, 0));
        assert!(outcome.rejection().is_none());
        assert!(matches!(
            path.write(b"garbage", NOW_MS * 1_000_000),
            Err(WriteError::Decode(_))
        ));
    }

    /// A raw sample from years ahead (a wrong clock, a timestamp in microseconds) is refused
    /// by the store with the reason and counted; the rest of the request is stored.
    #[test]
    fn raw_samples_beyond_buffer_future_are_refused_with_the_reason_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let metrics = CoordinatorMetrics::default();
        let path = WritePath::new(
            store.clone(),
            Some("default".into()),
            Downsampler::from_namespaces(&namespaces()),
            None,
            WriteBuffersConfig::default(),
            metrics.clone(),
        );
        let now_ms = m3_storage::retention::unix_ms(std::time::SystemTime::now());
        let years_ahead = now_ms + 10 * 365 * 86_400_000;
        let outcome = path
            .write(
                &body(&[(&[("__name__", "up")], &[(now_ms, 1.0), (years_ahead, 2.0)])]),
                now_ms * 1_000_000,
            )
            .unwrap();
        assert_eq!((outcome.stored_raw, outcome.too_new_for_store), (1, 1));
        let reason = outcome.rejection().unwrap();
        assert!(reason.contains("bufferFuture"), "{reason}");
        let dropped = metrics
            .samples_dropped
            .get_or_create(&crate::metrics::DropLabels {
                reason: DropReason::too_new_for_store,
            })
            .get();
        assert_eq!(dropped, 1);
        let raw = store.select("default", &[], 0, i64::MAX).unwrap();
        assert_eq!(raw[0].samples, vec![(now_ms, 1.0)]);
    }

    fn path_with_remote_out(
        store: &Store,
        url: &str,
        rest: &str,
    ) -> (WritePath, CoordinatorMetrics) {
        let (out, metrics) = crate::remote_out::testing::start(url, rest);
        let path = WritePath::new(
            store.clone(),
            Some("default".into()),
            Downsampler::from_namespaces(&namespaces()),
            None,
            WriteBuffersConfig::default(),
            metrics.clone(),
        )
        .with_remote_out(Arc::new(out));
        (path, metrics)
    }

    #[tokio::test]
    async fn raw_samples_reach_the_raw_endpoints_too() {
        let (url, requests) = crate::remote_out::testing::endpoint(Vec::new()).await;
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let (path, metrics) = path_with_remote_out(&store, &url, "");
        let outcome = path
            .write(
                &body(&[(&[("__name__", "up")], &[(NOW_MS, 1.0), (NOW_MS + 1, 2.0)])]),
                NOW_MS * 1_000_000,
            )
            .unwrap();
        assert_eq!(outcome.stored_raw, 2);
        let labels = crate::metrics::EndpointLabels {
            endpoint: "e".into(),
        };
        for _ in 0..200 {
            if metrics.out_samples_sent.get_or_create(&labels).get() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(metrics.out_samples_sent.get_or_create(&labels).get(), 2);
        assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    /// When a raw endpoint's queue has no room, the request is refused (503) before anything is
    /// stored, so Prometheus's retry stores it once.
    #[tokio::test]
    async fn a_full_raw_endpoint_refuses_the_request_before_anything_is_stored() {
        // Nothing listens there: what is queued stays queued, retried.
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let (path, metrics) =
            path_with_remote_out(&store, "http://127.0.0.1:1/api/v1/write", "queueSize: 2\n");
        let first = &body(&[(&[("__name__", "up")], &[(NOW_MS, 1.0), (NOW_MS + 1, 2.0)])]);
        assert_eq!(path.write(first, NOW_MS * 1_000_000).unwrap().stored_raw, 2);
        let second = &body(&[(&[("__name__", "later")], &[(NOW_MS, 1.0)])]);
        let refused = path.write(second, NOW_MS * 1_000_000).unwrap_err();
        assert!(matches!(refused, WriteError::RemoteOutFull(_)), "{refused}");
        assert!(refused.to_string().contains("retry later"), "{refused}");
        assert_eq!(store.series_count("default").unwrap(), 1, "nothing stored");
        let refused_samples = metrics
            .out_samples_refused
            .get_or_create(&crate::metrics::EndpointLabels {
                endpoint: "e".into(),
            })
            .get();
        assert_eq!(refused_samples, 1);
    }
}
