//! The aggregator client: routes every metric to each aggregator instance that owns its shard.
//!
//! ```text
//! request ──▶ ClientBatch (one buffer per instance, no locks) ──commit──▶ InstanceWriter queue
//!                                                                   └──▶ writer task ──TCP──▶ m3aggregator
//! ```
//!
//! * **Routing.** shard = murmur3_32(id) % numShards; the metric goes to *every* instance whose
//!   copy of the shard accepts writes at the metric's time: from `cutover − warmup` to
//!   `cutoff + linger` (M3's `shardCutoverWarmupDuration` / `shardCutoffLingerDuration`), so
//!   shard moves lose nothing. The placement comes from a KV watch and is swapped in whole.
//! * **Batching.** A request encodes all its metrics into buffers first and queues them once,
//!   so the hot path takes no lock per sample. The buffers are per shard (and set of owners at
//!   the metric's time), not per instance: each frame is written once and the same buffer is
//!   queued for every replica that owns the shard, and the writer hands an instance's buffers to
//!   the socket in one vectored write. The writer done last with a buffer gives it back for the
//!   next batches (`client/frame_pool.rs`), so its pages stay mapped.
//! * **Queues.** Each instance has a queue bounded in batches (`queueSize`) and in bytes
//!   (`maxQueueBytes`); when it is full, `queueDropType: oldest` drops the oldest batch and
//!   `current` the new one. Every dropped metric is counted. A slow or dead instance only fills
//!   its own queue; writes to the others go on (M3 issue 4133 was a client that blocked
//!   entirely).
//! * **Backpressure.** A connected instance that falls behind (its queue past half the byte
//!   bound) makes [`AggregatorClient::congested`] true: the coordinator then refuses new
//!   requests with 503 before accepting anything, so the sender slows down and nothing already
//!   accepted is dropped. An instance that is not connected does not hold writes up; its queue
//!   drops at the bound instead.
//! * **Connections.** One writer task per instance connects, writes batches with a write
//!   timeout, and reconnects with backoff. rawtcp has no acks: a batch whose write fails is
//!   retried once on a new connection, then dropped and counted. An instance whose engine runs
//!   in this process ([`InProcessAggregators`], `m3 local`) is written to without a socket.
//! * **In this process, on commit.** With [`ClientOptions::apply_in_process_on_commit`] and
//!   every instance's engine in this process, a batch holds timed values as they are
//!   ([`ClientBatch::route_timed`]), not frames, and `commit` adds them to each owner's engine
//!   on the calling thread: nothing is encoded, queued or decoded, and the caller's ack follows
//!   the adds.
//!
//! The coordinator uses it to send samples to the aggregators, and aggregators use it to
//! forward rollups to the aggregators that own the rollup IDs, as M3's `src/aggregator/client`.
//! Each user counts through its own [`ClientMetrics`].
//!
//! All of the above is the rawtcp transport (`type: legacy` or `tcp`). With `type: m3msg` the
//! same batches go to an m3msg topic instead ([`m3msg`]): routing, queues, retries and acks
//! are then the m3msg producer's.

pub mod config;
mod frame_pool;
mod in_process;
pub mod m3msg;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use m3_cluster::placement::Placement;
use parking_lot::{Mutex, RwLock};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use frame_pool::FramePool;

pub use self::config::{AggregatorClientConfig, ClientConfigError, QueueDropType};
pub use self::in_process::InProcessAggregators;
use self::in_process::{InProcessConnection, InlineEngine};
pub use self::m3msg::M3msgTransport;
use m3_metric::MetricType;
use m3_proto::metricpb::StagedMetadatas;
use prost::Message;

use crate::aggregator::{KnownShard, TimedSample};
use crate::metadata::Metadatas;
use crate::topic_producer::SharedProducer;

/// Why the client dropped metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientDrop {
    /// A full queue towards an instance dropped a batch.
    QueueFull,
    /// Writing a batch failed after a reconnect.
    WriteFailed,
    /// Still queued when the writer stopped (shutdown, or the instance left the placement).
    WriterStopped,
}

/// Where the client counts what it sends and drops (each user keeps its own metric names).
pub trait ClientMetrics: Send + Sync + 'static {
    /// `n` metrics dropped for `reason`.
    fn dropped(&self, reason: ClientDrop, n: u64);
    /// `n` metrics queued towards an instance.
    fn queued(&self, n: u64);
}

/// Client settings, resolved from `downsample.remoteAggregator.client`.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Batches queued per instance.
    pub queue_size: usize,
    /// Bytes queued per instance.
    pub max_queue_bytes: usize,
    /// What a full queue drops.
    pub queue_drop_type: QueueDropType,
    /// Write to a new owner this long before its cutover.
    pub cutover_warmup: Duration,
    /// Keep writing to an old owner this long after its cutoff.
    pub cutoff_linger: Duration,
    /// Dial timeout.
    pub connect_timeout: Duration,
    /// Write timeout.
    pub write_timeout: Duration,
    /// Longest wait between reconnect attempts.
    pub max_reconnect_backoff: Duration,
    /// Largest single encoded metric.
    pub max_message_size: usize,
    /// How long startup waits for the placement.
    pub init_watch_timeout: Duration,
    /// Largest encoded batch one request may queue towards one instance (`maxBatchSize`,
    /// default 8 MiB as in M3); samples beyond it are refused as too large.
    pub max_batch_bytes: usize,
    /// rawtcp (`None`, the default) or an m3msg topic.
    pub m3msg: Option<M3msgTransport>,
    /// rawtcp: the instances whose engine runs in this process, written to without a socket.
    pub in_process: InProcessAggregators,
    /// Apply a batch for an engine in this process at once, on the thread that commits it,
    /// instead of queueing it for the instance's writer task. For a committer that holds no
    /// engine lock (the coordinator's requests); an aggregator forwarding from its flush queues.
    pub apply_in_process_on_commit: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            queue_size: 128,
            max_queue_bytes: 64 * 1024 * 1024,
            queue_drop_type: QueueDropType::Oldest,
            cutover_warmup: Duration::from_secs(600),
            cutoff_linger: Duration::from_secs(3600),
            connect_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(15),
            max_reconnect_backoff: Duration::from_secs(20),
            max_message_size: m3_proto::framing::DEFAULT_RAWTCP_MAX_MESSAGE_SIZE,
            init_watch_timeout: Duration::from_secs(10),
            max_batch_bytes: 8 * 1024 * 1024,
            m3msg: None,
            in_process: InProcessAggregators::default(),
            apply_in_process_on_commit: false,
        }
    }
}

impl ClientOptions {
    /// Options from the config block; absent keys take M3's code defaults.
    ///
    /// # Errors
    /// Every [`ClientConfigError`], each naming the key (relative to the block) and the reason.
    pub fn from_config(
        config: &AggregatorClientConfig,
    ) -> Result<ClientOptions, Vec<ClientConfigError>> {
        config.validate()?;
        let d = ClientOptions::default();
        Ok(ClientOptions {
            queue_size: config.queue_size.unwrap_or(d.queue_size).max(1),
            max_queue_bytes: config.max_queue_bytes.unwrap_or(d.max_queue_bytes).max(1),
            queue_drop_type: config.queue_drop_type.unwrap_or_default(),
            cutover_warmup: config
                .shard_cutover_warmup_duration
                .unwrap_or(d.cutover_warmup),
            cutoff_linger: config
                .shard_cutoff_linger_duration
                .unwrap_or(d.cutoff_linger),
            connect_timeout: config
                .connection
                .connection_timeout
                .unwrap_or(d.connect_timeout),
            write_timeout: config.connection.write_timeout.unwrap_or(d.write_timeout),
            max_reconnect_backoff: config
                .connection
                .max_reconnect_duration
                .unwrap_or(d.max_reconnect_backoff),
            max_message_size: config
                .encoder
                .max_message_size
                .unwrap_or(d.max_message_size),
            init_watch_timeout: config
                .placement_watcher
                .init_watch_timeout
                .unwrap_or(d.init_watch_timeout),
            max_batch_bytes: config.max_batch_size.unwrap_or(d.max_batch_bytes).max(1),
            m3msg: config.m3msg_transport(),
            in_process: InProcessAggregators::default(),
            apply_in_process_on_commit: false,
        })
    }
}

/// One queued batch: encoded frames, in parts shared with the other owners of their shards,
/// and how many metrics they hold.
struct QueuedBatch {
    parts: Vec<Bytes>,
    /// The shard of each part's metrics (an engine in this process need not hash their IDs);
    /// empty when not known.
    shards: Vec<KnownShard>,
    /// The parts' total length.
    len: usize,
    metrics: u64,
    retried: bool,
}

impl QueuedBatch {
    fn new(parts: Vec<Bytes>, metrics: u64) -> QueuedBatch {
        QueuedBatch {
            len: parts.iter().map(Bytes::len).sum(),
            parts,
            shards: Vec::new(),
            metrics,
            retried: false,
        }
    }

    /// Adds `part`, holding `metrics` metrics of `shard`.
    fn push(&mut self, part: Bytes, shard: KnownShard, metrics: u64) {
        self.len += part.len();
        self.metrics += metrics;
        self.parts.push(part);
        self.shards.push(shard);
    }
}

/// The bounds of an instance's queue.
#[derive(Debug, Clone, Copy)]
struct QueueBounds {
    batches: usize,
    bytes: usize,
}

impl QueueBounds {
    fn of(options: &ClientOptions) -> QueueBounds {
        QueueBounds {
            batches: options.queue_size,
            bytes: options.max_queue_bytes,
        }
    }
}

/// An instance's queued batches and their size in bytes.
#[derive(Default)]
struct Queue {
    batches: VecDeque<QueuedBatch>,
    bytes: usize,
}

impl Queue {
    fn push_back(&mut self, batch: QueuedBatch) {
        self.bytes += batch.len;
        self.batches.push_back(batch);
    }

    fn push_front(&mut self, batch: QueuedBatch) {
        self.bytes += batch.len;
        self.batches.push_front(batch);
    }

    fn pop_front(&mut self) -> Option<QueuedBatch> {
        let batch = self.batches.pop_front()?;
        self.bytes -= batch.len;
        Some(batch)
    }

    fn len(&self) -> usize {
        self.batches.len()
    }

    /// Whether the queue holds more than `bounds` allow.
    fn over(&self, bounds: QueueBounds) -> bool {
        self.batches.len() > bounds.batches || self.bytes > bounds.bytes
    }

    /// Moves batches from the front into `into`, at least one and then while they total at
    /// most `max_bytes`: one TCP write's worth.
    fn take_front(&mut self, max_bytes: usize, into: &mut Vec<QueuedBatch>) {
        let mut taken = 0;
        while let Some(next) = self.batches.front() {
            if taken > 0 && taken + next.len > max_bytes {
                break;
            }
            taken += next.len;
            if let Some(batch) = self.pop_front() {
                into.push(batch);
            }
        }
    }

    fn drain_all(&mut self) -> impl Iterator<Item = QueuedBatch> + '_ {
        self.bytes = 0;
        self.batches.drain(..)
    }
}

/// The queue and connection of one aggregator instance.
struct InstanceWriter {
    id: String,
    endpoint: String,
    queue: Mutex<Queue>,
    /// Whether the writer holds a connection (it may then hold writes up, see
    /// [`AggregatorClient::congested`]).
    connected: AtomicBool,
    notify: Notify,
    cancel: CancellationToken,
    /// The instance's engine when it runs in this process and batches are applied to it on
    /// commit; its queue then stays empty.
    inline: Option<InlineEngine>,
}

/// Which instance accepts a shard, and during which times.
#[derive(Clone, Copy)]
struct Owner {
    instance: usize,
    from_nanos: i64,
    until_nanos: i64,
}

/// A placement turned into routing tables.
struct Topology {
    num_shards: u32,
    writers: Vec<Arc<InstanceWriter>>,
    owners: Vec<Vec<Owner>>,
    /// Every instance's engine runs in this process and takes batches on commit: batches
    /// then carry timed values rather than frames.
    all_inline: bool,
}

/// The aggregator client. Cheap to share behind an `Arc`.
pub struct AggregatorClient {
    options: ClientOptions,
    /// The m3msg transport's producer, once [`AggregatorClient::start_m3msg`] ran.
    producer: std::sync::OnceLock<SharedProducer>,
    topology: RwLock<Option<Arc<Topology>>>,
    writers: Mutex<HashMap<(String, String), Arc<InstanceWriter>>>,
    metrics: Arc<dyn ClientMetrics>,
    cancel: CancellationToken,
    /// The capacity a batch gives each group's buffer: the largest group of the last batch
    /// committed, plus an eighth. Requests of one client are alike, so a group's buffer is
    /// allocated once instead of grown by copying (the reallocations were 6% of the
    /// coordinator's CPU as a relay with a fixed 8 KiB).
    group_capacity: AtomicUsize,
    /// For a typed batch: the values a group has room for from the start, sized as
    /// `group_capacity` is (its IDs' buffer takes `group_capacity`).
    typed_capacity: AtomicUsize,
    /// Written frame buffers, for the next batches' groups.
    frame_pool: Arc<FramePool>,
}

impl std::fmt::Debug for AggregatorClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AggregatorClient")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl AggregatorClient {
    /// A client with no placement yet; feed it with [`AggregatorClient::update_placement`] or
    /// [`AggregatorClient::follow`].
    pub fn new(options: ClientOptions, metrics: Arc<dyn ClientMetrics>) -> Arc<AggregatorClient> {
        Arc::new(AggregatorClient {
            options,
            producer: std::sync::OnceLock::new(),
            topology: RwLock::new(None),
            writers: Mutex::new(HashMap::new()),
            metrics,
            cancel: CancellationToken::new(),
            group_capacity: AtomicUsize::new(GROUP_INITIAL_BYTES),
            typed_capacity: AtomicUsize::new(0),
            frame_pool: Arc::default(),
        })
    }

    /// The options in force.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// Whether the client sends over m3msg (`type: m3msg`) rather than rawtcp.
    pub fn uses_m3msg(&self) -> bool {
        self.options.m3msg.is_some()
    }

    /// For `type: m3msg`: follows the topic, producing to its consumer services once it
    /// exists. The producer's metrics are `metrics`; the returned task runs until `cancel`.
    /// With rawtcp this does nothing and returns `None`.
    ///
    /// # Errors
    /// When the topic cannot be watched.
    pub async fn start_m3msg(
        &self,
        kv: &Arc<dyn m3_cluster::KvStore>,
        default_environment: &str,
        metrics: m3_msg::ProducerMetrics,
        cancel: &CancellationToken,
    ) -> Result<Option<tokio::task::JoinHandle<()>>, m3_cluster::topic::TopicError> {
        let Some(transport) = &self.options.m3msg else {
            return Ok(None);
        };
        let (producer, task) =
            m3msg::start(kv, transport, default_environment, metrics, cancel).await?;
        let _ = self.producer.set(producer);
        Ok(Some(task))
    }

    /// Follows a placement watch until `cancel`: every new placement is swapped in.
    pub fn follow(
        self: &Arc<Self>,
        mut watch: m3_cluster::kv::DecodedWatch<Placement>,
        cancel: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let client = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let current = watch.borrow_and_update().clone();
                match current {
                    Some(versioned) => client.update_placement(&versioned.value),
                    None => client.clear_placement(),
                }
                tokio::select! {
                    changed = watch.changed() => if changed.is_err() { break },
                    () = cancel.cancelled() => break,
                }
            }
        })
    }

    /// Waits until a placement is known, up to the configured `initWatchTimeout`.
    ///
    /// # Errors
    /// When no placement arrived in time (M3: "init watch timeout").
    pub async fn wait_for_placement(&self) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + self.options.init_watch_timeout;
        if let Some(transport) = &self.options.m3msg {
            while self.producer.get().and_then(|p| p.get()).is_none() {
                if tokio::time::Instant::now() >= deadline {
                    return Err(format!(
                        "init watch timeout: no topic {:?} after {:?}",
                        transport.topic, self.options.init_watch_timeout
                    ));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            return Ok(());
        }
        while self.topology.read().is_none() {
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "init watch timeout: no m3aggregator placement after {:?}",
                    self.options.init_watch_timeout
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    fn clear_placement(&self) {
        *self.topology.write() = None;
        let old: Vec<_> = self.writers.lock().drain().map(|(_, w)| w).collect();
        for w in old {
            w.cancel.cancel();
        }
    }

    /// Replaces the routing tables with those of `placement`, reusing the writers (and queued
    /// batches) of instances that stay, starting writers for new ones and stopping removed ones.
    pub fn update_placement(self: &Arc<Self>, placement: &Placement) {
        if self.uses_m3msg() {
            // The m3msg producer routes by the topic's consumer placement.
            return;
        }
        let warmup = duration_nanos(self.options.cutover_warmup);
        let linger = duration_nanos(self.options.cutoff_linger);
        let mut writers = self.writers.lock();
        let mut kept = HashMap::new();
        let mut topology = Topology {
            num_shards: placement.num_shards,
            writers: Vec::new(),
            owners: vec![Vec::new(); placement.num_shards as usize],
            all_inline: false,
        };
        for instance in placement.instances() {
            let key = (instance.id.clone(), instance.endpoint.clone());
            let writer = writers
                .remove(&key)
                .unwrap_or_else(|| self.start_writer(&key.0, &key.1));
            kept.insert(key, Arc::clone(&writer));
            let index = topology.writers.len();
            topology.writers.push(writer);
            for shard in &instance.shards {
                let Some(slot) = topology.owners.get_mut(shard.id as usize) else {
                    continue;
                };
                let from_nanos = if shard.cutover_nanos > 0 {
                    shard.cutover_nanos.saturating_sub(warmup)
                } else {
                    i64::MIN
                };
                let cutoff = shard.effective_cutoff_nanos();
                let until_nanos = if cutoff > 0 && cutoff < i64::MAX {
                    cutoff.saturating_add(linger)
                } else {
                    i64::MAX
                };
                slot.push(Owner {
                    instance: index,
                    from_nanos,
                    until_nanos,
                });
            }
        }
        for (_, removed) in writers.drain() {
            removed.cancel.cancel();
        }
        topology.all_inline =
            !topology.writers.is_empty() && topology.writers.iter().all(|w| w.inline.is_some());
        *writers = kept;
        drop(writers);
        *self.topology.write() = Some(Arc::new(topology));
    }

    fn start_writer(self: &Arc<Self>, id: &str, endpoint: &str) -> Arc<InstanceWriter> {
        let writer = Arc::new(InstanceWriter {
            id: id.to_string(),
            endpoint: endpoint.to_string(),
            queue: Mutex::new(Queue::default()),
            connected: AtomicBool::new(false),
            notify: Notify::new(),
            cancel: self.cancel.child_token(),
            inline: if self.options.apply_in_process_on_commit {
                self.options
                    .in_process
                    .inline(endpoint, self.options.max_message_size)
            } else {
                None
            },
        });
        let task_writer = Arc::clone(&writer);
        let options = self.options.clone();
        let metrics = Arc::clone(&self.metrics);
        let frame_pool = Arc::clone(&self.frame_pool);
        tokio::spawn(run_writer(task_writer, options, metrics, frame_pool));
        writer
    }

    /// Starts a batch for one request against the current placement.
    pub fn batch(&self) -> ClientBatch {
        if self.uses_m3msg() {
            let empty = SharedProducer::default();
            let producer = self.producer.get().unwrap_or(&empty);
            return ClientBatch {
                topology: None,
                groups: Vec::new(),
                open_group: Vec::new(),
                max_batch_bytes: self.options.max_batch_bytes,
                group_capacity: GROUP_INITIAL_BYTES,
                typed_capacity: 0,
                m3msg: Some(m3msg::M3msgBatch::new(producer)),
                typed: false,
                metadatas: Vec::new(),
                frame_pool: Arc::clone(&self.frame_pool),
            };
        }
        let topology = self.topology.read().clone();
        let open_group = vec![NO_GROUP; topology.as_ref().map_or(0, |t| t.num_shards as usize)];
        ClientBatch {
            typed: topology.as_ref().is_some_and(|t| t.all_inline),
            metadatas: Vec::new(),
            topology,
            groups: Vec::new(),
            open_group,
            max_batch_bytes: self.options.max_batch_bytes,
            group_capacity: self.group_capacity.load(Ordering::Relaxed),
            typed_capacity: self.typed_capacity.load(Ordering::Relaxed),
            m3msg: None,
            frame_pool: Arc::clone(&self.frame_pool),
        }
    }

    /// Queues every buffer of `batch` on its instance.
    ///
    /// Returns how many metrics full queues dropped (counted as `queue_full`), so the caller can
    /// ask the sender to retry.
    pub fn commit(&self, batch: ClientBatch) -> u64 {
        if let Some(m3msg) = batch.m3msg {
            return m3msg.commit(&*self.metrics);
        }
        let Some(topology) = batch.topology else {
            return 0;
        };
        if batch.typed {
            return self.commit_typed(&topology, &batch.groups, &batch.metadatas);
        }
        let mut total_dropped = 0;
        self.size_next_groups(batch.groups.iter().map(|g| g.frames.len()).max());
        // Each instance's batches: the shared parts of its shards, at most `maxBatchSize`
        // bytes per batch.
        let mut per_instance: Vec<Vec<QueuedBatch>> =
            topology.writers.iter().map(|_| Vec::new()).collect();
        for group in batch.groups {
            let bytes = group.frames.freeze();
            let owners = &topology.owners[group.shard as usize];
            for (position, owner) in owners.iter().enumerate().take(64) {
                if group.owners & (1 << position) == 0 {
                    continue;
                }
                let Some(batches) = per_instance.get_mut(owner.instance) else {
                    continue;
                };
                let start_new = batches
                    .last()
                    .is_none_or(|last| last.len + bytes.len() > batch.max_batch_bytes);
                if start_new {
                    batches.push(QueuedBatch::new(Vec::new(), 0));
                }
                if let Some(last) = batches.last_mut() {
                    let shard = KnownShard {
                        shard: group.shard,
                        num_shards: topology.num_shards,
                    };
                    last.push(bytes.clone(), shard, group.count);
                }
            }
        }
        let queued = topology
            .writers
            .iter()
            .zip(per_instance)
            .flat_map(|(writer, batches)| batches.into_iter().map(move |batch| (writer, batch)));
        for (writer, queued_batch) in queued {
            let metrics = queued_batch.metrics;
            if metrics == 0 {
                continue;
            }
            if writer.cancel.is_cancelled() {
                // Shutting down, or the instance just left the placement: nobody will send it.
                self.metrics.dropped(ClientDrop::WriterStopped, metrics);
                total_dropped += metrics;
                continue;
            }
            if let Some(engine) = &writer.inline {
                engine.write_frames(&queued_batch.parts, &queued_batch.shards);
                self.metrics.queued(metrics);
                for part in queued_batch.parts {
                    self.frame_pool.give_back(part);
                }
                continue;
            }
            let dropped = enqueue(
                &mut writer.queue.lock(),
                queued_batch,
                QueueBounds::of(&self.options),
                self.options.queue_drop_type,
            );
            if dropped > 0 {
                self.metrics.dropped(ClientDrop::QueueFull, dropped);
            }
            if !(dropped == metrics && self.options.queue_drop_type == QueueDropType::Current) {
                self.metrics.queued(metrics);
            }
            total_dropped += dropped;
            writer.notify.notify_one();
        }
        total_dropped
    }

    /// Sizes the buffers of the next batches' groups for `largest` bytes (the largest group
    /// of the batch being committed, if any) plus an eighth.
    fn size_next_groups(&self, largest: Option<usize>) {
        if let Some(largest) = largest {
            // `maxBatchSize` may be set below the floor; the floor wins then.
            let ceiling = self.options.max_batch_bytes.max(GROUP_MIN_BYTES);
            let capacity = (largest + largest / 8).clamp(GROUP_MIN_BYTES, ceiling);
            self.group_capacity.store(capacity, Ordering::Relaxed);
        }
    }

    /// [`commit`](Self::commit) of a batch of timed values: each group is added to the engine
    /// of each of its owners, here and now.
    fn commit_typed(
        &self,
        topology: &Topology,
        groups: &[FrameGroup],
        encoded_metadatas: &[Vec<u8>],
    ) -> u64 {
        self.size_next_groups(groups.iter().map(|g| g.ids.len()).max());
        if let Some(largest) = groups.iter().map(|g| g.typed.len()).max() {
            let ceiling = self.options.max_batch_bytes / std::mem::size_of::<TypedValue>();
            let capacity = (largest + largest / 8).min(ceiling);
            self.typed_capacity.store(capacity, Ordering::Relaxed);
        }
        // The coordinator encoded these; one that does not decode drops its values, counted by
        // each engine that would have taken them.
        let metadatas: Vec<Option<StagedMetadatas>> = encoded_metadatas
            .iter()
            .map(|bytes| StagedMetadatas::decode(bytes.as_slice()).ok())
            .collect();
        let mut dropped = 0;
        let mut samples = Vec::new();
        let mut hashes = Vec::new();
        for group in groups {
            samples.clear();
            let mut undecodable = 0u64;
            for value in &group.typed {
                let Some(Some(staged)) = metadatas.get(value.metadatas as usize) else {
                    undecodable += 1;
                    continue;
                };
                samples.push(TimedSample {
                    metric_type: value.metric_type,
                    id: group.ids.get(value.id.clone()).unwrap_or_default(),
                    time_nanos: value.time_nanos,
                    value: value.value,
                    metadatas: Metadatas::Staged(staged),
                });
            }
            let known = KnownShard {
                shard: group.shard,
                num_shards: topology.num_shards,
            };
            // Hashed once here for every engine rather than by each.
            hashes.clear();
            hashes.extend(samples.iter().map(|s| crate::shard::entry_hash(s.id)));
            let owners = &topology.owners[group.shard as usize];
            for (position, owner) in owners.iter().enumerate().take(64) {
                if group.owners & (1 << position) == 0 {
                    continue;
                }
                let Some(writer) = topology.writers.get(owner.instance) else {
                    continue;
                };
                if writer.cancel.is_cancelled() {
                    self.metrics.dropped(ClientDrop::WriterStopped, group.count);
                    dropped += group.count;
                    continue;
                }
                let Some(engine) = &writer.inline else {
                    // Not reached: a typed batch's topology has an engine for every writer.
                    self.metrics.dropped(ClientDrop::WriterStopped, group.count);
                    dropped += group.count;
                    continue;
                };
                engine.add(known, &samples, &hashes, undecodable);
                if !group.frames.is_empty() {
                    // Metrics routed with an encoder of their own.
                    engine.write_frames(&[&group.frames[..]], &[known]);
                }
                self.metrics.queued(group.count);
            }
        }
        dropped
    }

    /// Metrics queued towards instances and not yet written (over m3msg: not yet acked).
    pub fn queued_metrics(&self) -> u64 {
        if let Some(producer) = self.producer.get().and_then(|p| p.get()) {
            return producer.buffered_messages() as u64;
        }
        self.writers
            .lock()
            .values()
            .map(|w| {
                w.queue
                    .lock()
                    .batches
                    .iter()
                    .map(|b| b.metrics)
                    .sum::<u64>()
            })
            .sum()
    }

    /// Whether a connected instance is behind: its queue holds more than half its byte bound.
    /// New requests should then be refused (retry later) rather than queued, so nothing
    /// accepted is dropped by a full queue. Instances without a connection never congest the
    /// client: their queues drop at the bound, and writes to the other replicas go on.
    pub fn congested(&self) -> bool {
        let Some(topology) = self.topology.read().clone() else {
            return false;
        };
        let threshold = self.options.max_queue_bytes / 2;
        topology.writers.iter().any(|writer| {
            writer.connected.load(Ordering::Relaxed) && writer.queue.lock().bytes > threshold
        })
    }

    /// Waits (bounded) until every queue is empty, then stops the writers.
    pub async fn close(&self, timeout: Duration) {
        if let Some(producer) = self.producer.get().and_then(|p| p.get()) {
            producer.close(timeout).await;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        while self.queued_metrics() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.cancel.cancel();
    }
}

impl Drop for AggregatorClient {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Per-request buffers against the placement the batch started with.
pub struct ClientBatch {
    topology: Option<Arc<Topology>>,
    /// The frames so far, grouped by shard and owners.
    groups: Vec<FrameGroup>,
    /// Per shard, the group its next frame goes to if the owners match ([`NO_GROUP`]: none).
    open_group: Vec<usize>,
    max_batch_bytes: usize,
    /// The capacity a new group's buffer starts with.
    group_capacity: usize,
    /// The values a new group of a typed batch has room for.
    typed_capacity: usize,
    /// Set for the m3msg transport, which then takes every metric.
    m3msg: Option<m3msg::M3msgBatch>,
    /// Every owner takes timed values on commit ([`Topology::all_inline`]): groups hold them
    /// as they are instead of frames.
    typed: bool,
    /// The distinct encoded metadatas of the batch's timed values.
    metadatas: Vec<Vec<u8>>,
    /// Where the groups' frame buffers come from.
    frame_pool: Arc<FramePool>,
}

/// No group open for a shard.
const NO_GROUP: usize = usize::MAX;

/// The capacity of a group's buffer until a batch was committed: about a request's share of
/// one shard.
const GROUP_INITIAL_BYTES: usize = 8 * 1024;
/// The least capacity a group's buffer starts with.
const GROUP_MIN_BYTES: usize = 1024;

/// Frames (or, in a typed batch, timed values) of one shard for one set of its owners (bit
/// `i` = `owners[shard][i]`; every owner of a shard outside a move, a subset while a shard
/// moves): written once, queued for (or added to) each owner. At most `maxBatchSize` bytes; a
/// shard with more starts another group.
struct FrameGroup {
    shard: u32,
    owners: u64,
    frames: BytesMut,
    count: u64,
    /// A typed batch's values, their IDs back to back in `ids`.
    typed: Vec<TypedValue>,
    ids: Vec<u8>,
}

impl FrameGroup {
    /// The bytes the group holds.
    fn len(&self) -> usize {
        self.frames.len() + self.ids.len() + self.typed.len() * std::mem::size_of::<TypedValue>()
    }
}

/// A timed value of a typed batch.
struct TypedValue {
    metric_type: MetricType,
    /// Where its ID is in its group's `ids`.
    id: std::ops::Range<usize>,
    time_nanos: i64,
    value: f64,
    /// Its metadatas, an index into the batch's `metadatas`.
    metadatas: u32,
}

/// Why a metric could not be routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteError {
    /// No placement yet.
    NoPlacement,
    /// No instance owns the shard at that time.
    NoOwner,
}

impl ClientBatch {
    /// Whether a placement is known.
    pub fn has_placement(&self) -> bool {
        match &self.m3msg {
            Some(m3msg) => m3msg.has_topic(),
            None => self.topology.is_some(),
        }
    }

    /// Calls `encode` once per instance that should receive the metric with `id` at
    /// `time_nanos`, passing that instance's buffer. Returns how many instances got it.
    ///
    /// # Errors
    /// [`RouteError`] when nobody takes the metric.
    pub fn route(
        &mut self,
        id: &[u8],
        time_nanos: i64,
        encode: impl FnMut(&mut BytesMut),
    ) -> Result<usize, RouteError> {
        self.route_hashed(id, m3_cluster::murmur3_32(id), time_nanos, encode)
    }

    /// [`route`](Self::route) for a caller that knows `id_hash`, the
    /// [`murmur3_32`](m3_cluster::murmur3_32) of `id` (kept from an earlier request of the
    /// same series).
    ///
    /// # Errors
    /// [`RouteError`] when nobody takes the metric.
    pub fn route_hashed(
        &mut self,
        id: &[u8],
        id_hash: u32,
        time_nanos: i64,
        encode: impl FnOnce(&mut BytesMut),
    ) -> Result<usize, RouteError> {
        if let Some(m3msg) = &mut self.m3msg {
            return m3msg.route(id_hash, encode);
        }
        let (group, owners) = self.group_for(id.len(), id_hash, time_nanos)?;
        encode(&mut group.frames);
        group.count += 1;
        Ok(owners)
    }

    /// Routes a timed value of `metric_type` with `id` (whose
    /// [`murmur3_32`](m3_cluster::murmur3_32) is `id_hash`) and its encoded
    /// `StagedMetadatas`: kept as it is when the batch is typed, else written as a frame as
    /// [`route_hashed`](Self::route_hashed) writes it. Returns how many instances get it.
    ///
    /// # Errors
    /// [`RouteError`] when nobody takes the value.
    pub fn route_timed(
        &mut self,
        id: &[u8],
        id_hash: u32,
        metric_type: MetricType,
        time_nanos: i64,
        value: f64,
        encoded_metadatas: &[u8],
    ) -> Result<usize, RouteError> {
        if !self.typed {
            return self.route_hashed(id, id_hash, time_nanos, |buf| {
                m3_proto::timed_frame::put_timed_metric_frame(
                    metric_type.to_proto() as u8,
                    id,
                    time_nanos,
                    value,
                    encoded_metadatas,
                    buf,
                );
            });
        }
        let metadatas = self.metadatas_index(encoded_metadatas);
        let (group, owners) = self.group_for(id.len(), id_hash, time_nanos)?;
        let start = group.ids.len();
        group.ids.extend_from_slice(id);
        group.typed.push(TypedValue {
            metric_type,
            id: start..group.ids.len(),
            time_nanos,
            value,
            metadatas,
        });
        group.count += 1;
        Ok(owners)
    }

    /// The room the first group has for ID bytes and for values, for tests of the sizing.
    #[cfg(test)]
    fn first_group_capacities(&self) -> (usize, usize) {
        self.groups
            .first()
            .map_or((0, 0), |g| (g.ids.capacity(), g.typed.capacity()))
    }

    /// The index of `encoded` in the batch's distinct metadatas, added when new. Values come
    /// in runs with the same metadatas, and a batch has few distinct ones (one per set of
    /// rules that apply alike).
    fn metadatas_index(&mut self, encoded: &[u8]) -> u32 {
        let index = match self.metadatas.last() {
            Some(last) if last.as_slice() == encoded => self.metadatas.len() - 1,
            _ => match self.metadatas.iter().position(|m| m.as_slice() == encoded) {
                Some(i) => i,
                None => {
                    self.metadatas.push(encoded.to_vec());
                    self.metadatas.len() - 1
                }
            },
        };
        u32::try_from(index).unwrap_or(u32::MAX)
    }

    /// The group a metric with an ID of `id_len` bytes, hashing to `id_hash`, at `time_nanos`
    /// goes in, and how many instances own it then.
    fn group_for(
        &mut self,
        id_len: usize,
        id_hash: u32,
        time_nanos: i64,
    ) -> Result<(&mut FrameGroup, usize), RouteError> {
        let topology = self.topology.as_ref().ok_or(RouteError::NoPlacement)?;
        if topology.num_shards == 0 {
            return Err(RouteError::NoOwner);
        }
        let shard = id_hash % topology.num_shards;
        let mut owners = 0u64;
        // A shard has its replicas plus, while it moves, the copies leaving and arriving: far
        // fewer than 64 owners.
        for (position, owner) in topology.owners[shard as usize].iter().enumerate().take(64) {
            if time_nanos >= owner.from_nanos && time_nanos < owner.until_nanos {
                owners |= 1 << position;
            }
        }
        if owners == 0 {
            return Err(RouteError::NoOwner);
        }
        let slot = &mut self.open_group[shard as usize];
        let reuse = self.groups.get(*slot).is_some_and(|group| {
            group.owners == owners
                && (group.count == 0 || group.len() + id_len <= self.max_batch_bytes)
        });
        if !reuse {
            *slot = self.groups.len();
            let (frames, ids, typed) = if self.typed {
                (
                    BytesMut::new(),
                    Vec::with_capacity(self.group_capacity),
                    Vec::with_capacity(self.typed_capacity),
                )
            } else {
                (
                    self.frame_pool.take(self.group_capacity),
                    Vec::new(),
                    Vec::new(),
                )
            };
            self.groups.push(FrameGroup {
                shard,
                owners,
                frames,
                count: 0,
                typed,
                ids,
            });
        }
        Ok((&mut self.groups[*slot], owners.count_ones() as usize))
    }
}

/// Queues `batch` within `bounds`: when it does not fit, `Oldest` drops batches at the front
/// to make room, `Current` drops `batch` itself. An empty queue always takes the batch (a
/// batch larger than the byte bound is still sent). Returns the metrics dropped.
fn enqueue(
    queue: &mut Queue,
    batch: QueuedBatch,
    bounds: QueueBounds,
    drop_type: QueueDropType,
) -> u64 {
    let fits = queue.len() < bounds.batches && queue.bytes + batch.len <= bounds.bytes;
    if fits || queue.len() == 0 {
        queue.push_back(batch);
        return 0;
    }
    match drop_type {
        QueueDropType::Oldest => {
            queue.push_back(batch);
            let mut dropped = 0;
            while queue.over(bounds) && queue.len() > 1 {
                dropped += queue.pop_front().map_or(0, |b| b.metrics);
            }
            dropped
        }
        QueueDropType::Current => batch.metrics,
    }
}

/// Counts what a stopped writer (shutdown, or its instance left the placement) never sent.
fn drop_unsent(writer: &InstanceWriter, pending: Vec<QueuedBatch>, metrics: &dyn ClientMetrics) {
    let queued: u64 = writer.queue.lock().drain_all().map(|b| b.metrics).sum();
    let pending: u64 = pending.iter().map(|b| b.metrics).sum();
    if queued + pending > 0 {
        metrics.dropped(ClientDrop::WriterStopped, queued + pending);
    }
}

/// Puts unsent batches back at the front of the queue, dropping (and counting) the oldest beyond
/// the queue bound.
fn requeue(
    writer: &InstanceWriter,
    pending: &mut Vec<QueuedBatch>,
    options: &ClientOptions,
    metrics: &dyn ClientMetrics,
) {
    let mut queue = writer.queue.lock();
    for batch in pending.drain(..).rev() {
        queue.push_front(batch);
    }
    while queue.over(QueueBounds::of(options)) && queue.len() > 1 {
        let dropped = queue.pop_front().map_or(0, |b| b.metrics);
        if dropped > 0 {
            metrics.dropped(ClientDrop::QueueFull, dropped);
        }
    }
}

/// Writes every part, in order, in as few vectored writes as the socket takes.
async fn write_parts(stream: &mut TcpStream, parts: &[Bytes]) -> std::io::Result<()> {
    let mut slices: Vec<std::io::IoSlice<'_>> =
        parts.iter().map(|p| std::io::IoSlice::new(p)).collect();
    let mut remaining = &mut slices[..];
    while !remaining.is_empty() {
        let written = stream.write_vectored(remaining).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        std::io::IoSlice::advance_slices(&mut remaining, written);
    }
    Ok(())
}

/// How much the writer takes off its queue for one round of writes.
const WRITE_CHUNK_BYTES: usize = 4 * 1024 * 1024;

fn duration_nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// Where a writer's batches go.
enum Connection {
    /// A rawtcp connection to the instance's endpoint.
    Tcp(TcpStream),
    /// The instance's engine, in this process.
    InProcess(InProcessConnection),
}

/// Connects to the writer's instance: its engine when it runs in this process, else its
/// endpoint over TCP. `None` when that failed (logged).
async fn connect(writer: &InstanceWriter, options: &ClientOptions) -> Option<Connection> {
    if let Some(engine) = options
        .in_process
        .connect(&writer.endpoint, options.max_message_size)
    {
        tracing::info!(instance = %writer.id, endpoint = %writer.endpoint, "Writing to the aggregator in this process.");
        return Some(Connection::InProcess(engine));
    }
    match tokio::time::timeout(
        options.connect_timeout,
        TcpStream::connect(&writer.endpoint),
    )
    .await
    {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            tracing::info!(instance = %writer.id, endpoint = %writer.endpoint, "Connected to aggregator.");
            Some(Connection::Tcp(stream))
        }
        Ok(Err(e)) => {
            tracing::warn!(instance = %writer.id, endpoint = %writer.endpoint, error = %e, "Cannot connect to aggregator; batches stay queued.");
            None
        }
        Err(_) => {
            tracing::warn!(instance = %writer.id, endpoint = %writer.endpoint, "Connecting to aggregator timed out; batches stay queued.");
            None
        }
    }
}

/// The writer task of one instance: drain the queue, write, reconnect on failure.
async fn run_writer(
    writer: Arc<InstanceWriter>,
    options: ClientOptions,
    metrics: Arc<dyn ClientMetrics>,
    frame_pool: Arc<FramePool>,
) {
    let mut connection: Option<Connection> = None;
    let mut backoff = Duration::from_millis(50);
    let mut pending: Vec<QueuedBatch> = Vec::new();
    loop {
        if pending.is_empty() {
            writer
                .queue
                .lock()
                .take_front(WRITE_CHUNK_BYTES, &mut pending);
        }
        if pending.is_empty() {
            tokio::select! {
                () = writer.notify.notified() => continue,
                () = writer.cancel.cancelled() => return drop_unsent(&writer, pending, &*metrics),
            }
        }
        if connection.is_none() {
            connection = connect(&writer, &options).await;
            if connection.is_some() {
                writer.connected.store(true, Ordering::Relaxed);
                backoff = Duration::from_millis(50);
            } else {
                // Keep the batches queued (the queue bound applies to new ones) and retry later.
                requeue(&writer, &mut pending, &options, &*metrics);
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {},
                    () = writer.cancel.cancelled() => return drop_unsent(&writer, pending, &*metrics),
                }
                backoff = (backoff * 2).min(options.max_reconnect_backoff);
                continue;
            }
        }
        let stream = match connection.as_mut() {
            Some(Connection::Tcp(stream)) => stream,
            Some(Connection::InProcess(engine)) => {
                for batch in pending.drain(..) {
                    engine.write(&batch.parts, &batch.shards);
                    for part in batch.parts {
                        frame_pool.give_back(part);
                    }
                    // The engine's work runs on this task: let the others have the thread
                    // between batches (up to `WRITE_CHUNK_BYTES` are taken at once).
                    tokio::task::yield_now().await;
                }
                continue;
            }
            None => continue,
        };
        let mut failed = None;
        for (i, batch) in pending.iter().enumerate() {
            match tokio::time::timeout(options.write_timeout, write_parts(stream, &batch.parts))
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    failed = Some((i, e.to_string()));
                    break;
                }
                Err(_) => {
                    failed = Some((i, "write timed out".to_string()));
                    break;
                }
            }
        }
        match failed {
            None => {
                for part in pending.drain(..).flat_map(|batch| batch.parts) {
                    frame_pool.give_back(part);
                }
            }
            Some((i, error)) => {
                tracing::warn!(instance = %writer.id, endpoint = %writer.endpoint, %error, "Writing to aggregator failed; reconnecting.");
                connection = None;
                writer.connected.store(false, Ordering::Relaxed);
                // The failed batch may be partly written: it is retried once whole on the new
                // connection (the aggregator drops a torn frame with the old connection).
                pending.drain(..i);
                if let Some(first) = pending.first_mut() {
                    if first.retried {
                        metrics.dropped(ClientDrop::WriteFailed, first.metrics);
                        pending.remove(0);
                    } else {
                        first.retried = true;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Counts drops by reason, for the assertions.
    #[derive(Default)]
    pub(super) struct Counted {
        pub(super) queue_full: AtomicU64,
        pub(super) writer_stopped: AtomicU64,
    }

    impl ClientMetrics for Counted {
        fn dropped(&self, reason: ClientDrop, n: u64) {
            match reason {
                ClientDrop::QueueFull => self.queue_full.fetch_add(n, Ordering::Relaxed),
                ClientDrop::WriterStopped => self.writer_stopped.fetch_add(n, Ordering::Relaxed),
                ClientDrop::WriteFailed => 0,
            };
        }
        fn queued(&self, _: u64) {}
    }
    use m3_cluster::placement::{Instance, Shard, ShardState};
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    pub(super) fn placement(endpoints: &[(&str, &str)], num_shards: u32) -> Placement {
        let mut p = Placement {
            num_shards,
            replica_factor: endpoints.len() as u32,
            is_sharded: true,
            is_mirrored: true,
            ..Placement::default()
        };
        for (id, endpoint) in endpoints {
            let mut instance = Instance::new(*id).with_endpoint(*endpoint);
            instance.shards = (0..num_shards)
                .map(|s| Shard::new(s, ShardState::Available))
                .collect();
            p.instances.insert(id.to_string(), instance);
        }
        p
    }

    #[tokio::test]
    async fn every_owner_receives_each_metric() {
        let a = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let b = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (ea, eb) = (
            a.local_addr().unwrap().to_string(),
            b.local_addr().unwrap().to_string(),
        );
        let client = AggregatorClient::new(ClientOptions::default(), Arc::new(Counted::default()));
        client.update_placement(&placement(&[("a", &ea), ("b", &eb)], 8));
        let mut batch = client.batch();
        for i in 0..10u8 {
            let sent = batch
                .route(&[i], 1, |buf| buf.extend_from_slice(&[i]))
                .unwrap();
            assert_eq!(sent, 2);
        }
        client.commit(batch);
        for listener in [a, b] {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut got = vec![0u8; 10];
            conn.read_exact(&mut got).await.unwrap();
            // Grouped by shard, so in shard order across series (one series' metrics keep
            // theirs: they share a shard).
            got.sort_unstable();
            assert_eq!(got, (0..10).collect::<Vec<u8>>());
        }
    }

    /// Frames are written once per shard and shared by its owners: with two replicas owning
    /// every shard, both queues hold the same buffers (not copies); one series' metrics keep
    /// their order; `maxBatchSize` splits an instance's share into several batches.
    #[tokio::test]
    async fn owners_share_each_shards_frames_and_batches_split_at_the_cap() {
        let options = ClientOptions {
            max_batch_bytes: 64,
            ..ClientOptions::default()
        };
        let client = AggregatorClient::new(options, Arc::new(Counted::default()));
        // Nothing listens: the batches stay queued for inspection.
        client.update_placement(&placement(&[("a", "127.0.0.1:1"), ("b", "127.0.0.1:2")], 4));
        let mut batch = client.batch();
        for i in 0..40u8 {
            let id = [i % 8];
            assert_eq!(
                batch.route(&id, 1, |buf| buf.extend_from_slice(&[i % 8, i])),
                Ok(2)
            );
        }
        client.commit(batch);
        let topology = client.topology.read().clone().unwrap();
        let queued: Vec<Vec<Bytes>> = topology
            .writers
            .iter()
            .map(|w| {
                w.queue
                    .lock()
                    .batches
                    .iter()
                    .flat_map(|b| {
                        assert!(b.len <= 64 || b.parts.len() == 1, "a batch over the cap");
                        b.parts.clone()
                    })
                    .collect()
            })
            .collect();
        assert_eq!(queued[0].len(), queued[1].len());
        for (a, b) in queued[0].iter().zip(&queued[1]) {
            assert_eq!(a.as_ptr(), b.as_ptr(), "the same buffer, not a copy");
        }
        let batches = topology.writers[0].queue.lock().len();
        assert!(batches > 1, "80 bytes at a 64-byte cap: {batches} batches");
        // Every metric once per instance, each series' in order.
        let bytes: Vec<u8> = queued[0].iter().flat_map(|p| p.iter().copied()).collect();
        assert_eq!(bytes.len(), 80);
        for series in 0..8u8 {
            let values: Vec<u8> = bytes
                .chunks(2)
                .filter(|frame| frame[0] == series)
                .map(|frame| frame[1])
                .collect();
            let want: Vec<u8> = (0..40u8).filter(|i| i % 8 == series).collect();
            assert_eq!(values, want, "series {series}");
        }
    }

    #[tokio::test]
    async fn group_buffers_start_at_the_size_the_last_batch_needed() {
        let options = ClientOptions {
            max_batch_bytes: 64 * 1024,
            ..ClientOptions::default()
        };
        let client = AggregatorClient::new(options, Arc::new(Counted::default()));
        client.update_placement(&placement(&[("a", "127.0.0.1:1")], 1));
        let capacity_of_first_group = |batch: &ClientBatch| batch.groups[0].frames.capacity();
        let mut batch = client.batch();
        for _ in 0..2000 {
            assert_eq!(
                batch.route(b"x", 1, |buf| buf.extend_from_slice(&[7; 10])),
                Ok(1)
            );
        }
        client.commit(batch);
        // The next batch's group holds 20,000 bytes without growing.
        let mut batch = client.batch();
        assert_eq!(
            batch.route(b"x", 1, |buf| buf.extend_from_slice(&[7])),
            Ok(1)
        );
        let grown = capacity_of_first_group(&batch);
        assert!((20_000..=64 * 1024).contains(&grown), "capacity {grown}");
        client.commit(batch);
        // A small batch brings it back down, never below the floor (a new buffer gets the
        // frame pool's quarter of headroom; none is pooled, as nothing was written).
        let mut batch = client.batch();
        assert_eq!(
            batch.route(b"x", 1, |buf| buf.extend_from_slice(&[7])),
            Ok(1)
        );
        assert_eq!(
            capacity_of_first_group(&batch),
            GROUP_MIN_BYTES + GROUP_MIN_BYTES / 4
        );
    }

    #[tokio::test]
    async fn full_queue_drops_oldest_and_counts() {
        let metrics = Arc::new(Counted::default());
        let options = ClientOptions {
            queue_size: 2,
            ..ClientOptions::default()
        };
        let client = AggregatorClient::new(options, metrics.clone());
        // Nothing listens on this endpoint, so batches pile up.
        client.update_placement(&placement(&[("a", "127.0.0.1:1")], 1));
        for _ in 0..5 {
            let mut batch = client.batch();
            batch
                .route(b"x", 1, |buf| buf.extend_from_slice(b"x"))
                .unwrap();
            client.commit(batch);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let dropped = metrics.queue_full.load(Ordering::Relaxed);
        assert!(dropped >= 3, "dropped {dropped}");
        assert!(client.queued_metrics() <= 2);
    }

    /// `queueDropType` through `commit()`: five batches committed while the instance is down
    /// (the writer task cannot run between the synchronous commits), a queue of two; once the
    /// instance listens, the two batches the drop type keeps arrive, and the three others are
    /// counted as dropped.
    #[tokio::test]
    async fn committed_batches_over_the_queue_size_are_dropped_by_drop_type() {
        for (drop_type, kept) in [
            (QueueDropType::Oldest, b"45"),
            (QueueDropType::Current, b"12"),
        ] {
            let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let endpoint = free.local_addr().unwrap();
            drop(free); // nothing listens until every batch is committed
            let metrics = Arc::new(Counted::default());
            let options = ClientOptions {
                queue_size: 2,
                queue_drop_type: drop_type,
                max_reconnect_backoff: Duration::from_millis(100),
                ..ClientOptions::default()
            };
            let client = AggregatorClient::new(options, metrics.clone());
            client.update_placement(&placement(&[("a", &endpoint.to_string())], 1));
            for payload in [b"1", b"2", b"3", b"4", b"5"] {
                let mut batch = client.batch();
                batch
                    .route(b"x", 1, |buf| buf.extend_from_slice(payload))
                    .unwrap();
                client.commit(batch);
            }
            assert_eq!(
                metrics.queue_full.load(Ordering::Relaxed),
                3,
                "{drop_type:?}"
            );
            let listener = TcpListener::bind(endpoint).await.unwrap();
            let (mut conn, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
                .await
                .expect("the writer reconnects")
                .unwrap();
            let mut got = [0u8; 2];
            conn.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, kept, "{drop_type:?}");
            assert_eq!(client.queued_metrics(), 0, "{drop_type:?}");
        }
    }

    /// `queueDropType` by payload: `oldest` keeps the newest batches, `current` the first ones.
    #[test]
    fn each_drop_type_drops_the_batch_it_names() {
        let batch = |payload: &'static [u8], metrics: u64| {
            QueuedBatch::new(vec![Bytes::from_static(payload)], metrics)
        };
        for (drop_type, kept, dropped) in [
            (QueueDropType::Oldest, [b"3", b"4"], 1 + 2),
            (QueueDropType::Current, [b"1", b"2"], 3 + 4),
        ] {
            let mut queue = Queue::default();
            let mut total = 0;
            let bounds = QueueBounds {
                batches: 2,
                bytes: usize::MAX,
            };
            for (payload, metrics) in [(b"1", 1), (b"2", 2), (b"3", 3), (b"4", 4)] {
                total += enqueue(&mut queue, batch(payload, metrics), bounds, drop_type);
            }
            let payloads: Vec<&[u8]> = queue.batches.iter().map(|b| b.parts[0].as_ref()).collect();
            assert_eq!(payloads, kept.map(|k| k.as_slice()), "{drop_type:?}");
            assert_eq!(total, dropped, "{drop_type:?}");
            assert_eq!(queue.bytes, 2, "{drop_type:?}");
        }
    }

    /// The byte bound: batches of 4 bytes under a bound of 10 bytes keep two queued; a batch
    /// larger than the bound still goes into an empty queue (it is sent, not refused forever).
    #[test]
    fn the_byte_bound_drops_by_drop_type_and_an_empty_queue_takes_any_batch() {
        let batch = |payload: &'static [u8]| QueuedBatch::new(vec![Bytes::from_static(payload)], 1);
        let bounds = QueueBounds {
            batches: 100,
            bytes: 10,
        };
        for (drop_type, kept) in [
            (QueueDropType::Oldest, [b"cccc", b"dddd"]),
            (QueueDropType::Current, [b"aaaa", b"bbbb"]),
        ] {
            let mut queue = Queue::default();
            let mut dropped = 0;
            for payload in [b"aaaa", b"bbbb", b"cccc", b"dddd"] {
                dropped += enqueue(&mut queue, batch(payload), bounds, drop_type);
            }
            let payloads: Vec<&[u8]> = queue.batches.iter().map(|b| b.parts[0].as_ref()).collect();
            assert_eq!(payloads, kept.map(|k| k.as_slice()), "{drop_type:?}");
            assert_eq!((dropped, queue.bytes), (2, 8), "{drop_type:?}");
        }
        let mut queue = Queue::default();
        assert_eq!(
            enqueue(
                &mut queue,
                batch(b"larger than ten"),
                bounds,
                QueueDropType::Oldest
            ),
            0
        );
        assert_eq!(queue.len(), 1);
        // The next batch pushes the oversized one out.
        assert_eq!(
            enqueue(&mut queue, batch(b"x"), bounds, QueueDropType::Oldest),
            1
        );
        assert_eq!((queue.len(), queue.bytes), (1, 1));
    }

    /// The writer takes one write's worth off the queue: at least one batch, then while the
    /// total stays within the chunk.
    #[test]
    fn the_writer_takes_a_bounded_chunk() {
        let mut queue = Queue::default();
        for payload in [&b"12345"[..], b"123", b"12", b"1"] {
            queue.push_back(QueuedBatch::new(vec![Bytes::from_static(payload)], 1));
        }
        let mut taken = Vec::new();
        queue.take_front(3, &mut taken);
        assert_eq!(taken.len(), 1, "at least one batch, even over the chunk");
        taken.clear();
        queue.take_front(5, &mut taken);
        assert_eq!(taken.len(), 2, "3 + 2 bytes fit in 5");
        assert_eq!((queue.len(), queue.bytes), (1, 1));
    }

    /// A connected instance that does not read congests the client once its queue passes half
    /// the byte bound; an instance nobody listens on never does (its queue drops instead).
    #[tokio::test]
    async fn a_connected_instance_that_falls_behind_congests_the_client() {
        let options = ClientOptions {
            max_queue_bytes: 1024 * 1024,
            queue_size: 1_000_000,
            ..ClientOptions::default()
        };
        let metrics = Arc::new(Counted::default());
        let client = AggregatorClient::new(options.clone(), metrics.clone());
        // Nothing listens on this endpoint.
        client.update_placement(&placement(&[("a", "127.0.0.1:1")], 1));
        let payload = vec![7u8; 64 * 1024];
        for _ in 0..64 {
            let mut batch = client.batch();
            batch
                .route(b"x", 1, |buf| buf.extend_from_slice(&payload))
                .unwrap();
            client.commit(batch);
            assert!(
                !client.congested(),
                "an unconnected instance never congests"
            );
        }
        assert!(metrics.queue_full.load(Ordering::Relaxed) > 0);

        // A listener that accepts and never reads: the socket buffers fill, then the queue.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = listener.local_addr().unwrap().to_string();
        let stalled = AggregatorClient::new(options, Arc::new(Counted::default()));
        stalled.update_placement(&placement(&[("a", &endpoint)], 1));
        let accept = tokio::spawn(async move { listener.accept().await.map(|(conn, _)| conn) });
        let mut congested = false;
        for _ in 0..2_000 {
            let mut batch = stalled.batch();
            batch
                .route(b"x", 1, |buf| buf.extend_from_slice(&payload))
                .unwrap();
            stalled.commit(batch);
            tokio::time::sleep(Duration::from_millis(1)).await;
            if stalled.congested() {
                congested = true;
                break;
            }
        }
        assert!(congested, "a stalled reader congests the client");
        let _held = accept.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn batches_of_a_removed_instance_are_counted_as_dropped() {
        let metrics = Arc::new(Counted::default());
        let client = AggregatorClient::new(ClientOptions::default(), metrics.clone());
        // Nothing listens here, so the batch stays queued until the instance is removed.
        client.update_placement(&placement(&[("a", "127.0.0.1:1")], 1));
        let mut batch = client.batch();
        batch
            .route(b"x", 1, |buf| buf.extend_from_slice(b"x"))
            .unwrap();
        client.commit(batch);
        client.update_placement(&placement(&[("b", "127.0.0.1:2")], 1));
        let stopped = || metrics.writer_stopped.load(Ordering::Relaxed);
        for _ in 0..100 {
            if stopped() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(stopped(), 1);
    }

    #[test]
    fn shard_windows_gate_writes() {
        let client_options = ClientOptions {
            cutover_warmup: Duration::from_nanos(10),
            cutoff_linger: Duration::from_nanos(5),
            ..ClientOptions::default()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let client = AggregatorClient::new(client_options, Arc::new(Counted::default()));
            let mut p = placement(&[("a", "127.0.0.1:1")], 1);
            if let Some(i) = p.instances.get_mut("a") {
                i.shards[0].cutover_nanos = 100;
                i.shards[0].cutoff_nanos = 200;
            }
            client.update_placement(&p);
            let mut batch = client.batch();
            assert_eq!(batch.route(b"x", 89, |_| {}), Err(RouteError::NoOwner));
            assert_eq!(batch.route(b"x", 90, |_| {}), Ok(1));
            assert_eq!(batch.route(b"x", 204, |_| {}), Ok(1));
            assert_eq!(batch.route(b"x", 205, |_| {}), Err(RouteError::NoOwner));
        });
    }
}
