//! An aggregator as a cluster member: it follows its placement, campaigns for the leadership of
//! its shard set, and runs the flush manager, which flushes on a timer and sends what it flushes
//! to the coordinators over m3msg.
//!
//! ```text
//! placement watch ──▶ set_shards, election per shard set, forwarding client's routes
//! topic + consumer placements ──▶ producer's consumer services and instances (live)
//! every checkEvery ──▶ flush manager (flush_manager.rs): leader emits, follower discards
//! every entryCheckInterval ──▶ expire idle series
//! ```
//!
//! The election takes a free lease at once only while this instance holds every window the
//! leader has not flushed (`can_lead`), so a process restarted within the TTL does not take the
//! leadership back with empty windows. Whether it campaigns at all is the flush manager's call,
//! from its shards' cutover and cutoff times (`campaign.rs`): a replacement waits for its
//! cutover, a replaced member stops once its windows up to the cutoff are flushed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use m3_cluster::keys::{self, ServiceId};
use m3_cluster::placement::{Placement, PlacementFormat, PlacementStore};
use m3_cluster::{ElectionState, KvStore, LeaderElection};
use m3_msg::ProducerConfig;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::flush_manager::{FlushManager, FlushStatus, ResignRequest};
use crate::rawtcp::unix_nanos_now;
use crate::topic_producer::TopicProducerOptions;
use crate::{Aggregator, ShardAssignment};

/// Where an instance finds its cluster state and how it behaves in it.
#[derive(Debug, Clone)]
pub struct InstanceOptions {
    /// This instance's ID in the placement.
    pub instance_id: String,
    /// KV environment (default `default_env`).
    pub environment: String,
    /// KV zone (default `embedded`).
    pub zone: String,
    /// Placement KV namespace (default `/placement`).
    pub placement_namespace: String,
    /// Placement key (default `m3aggregator`).
    pub placement_key: String,
    /// Topic the output goes to (default `aggregated_metrics`).
    pub topic: String,
    /// Leader lease TTL (`electionManager.election.ttlSeconds`, default 10s).
    pub election_ttl: Duration,
    /// Flush check period (`flushManager.checkEvery`, default 1s).
    pub check_every: Duration,
    /// Expiry sweep period (`entryCheckInterval`).
    pub entry_check_interval: Duration,
    /// The m3msg producer.
    pub producer: ProducerConfig,
    /// How long shutdown waits with no ack arriving before it gives up on what is still
    /// unacked (a backlog that is being acked is waited for however large it is).
    pub shutdown_ack_timeout: Duration,
    /// The placement's shard count, kept current from the placement watch, for a shard
    /// function that follows the placement ([`placement_shard_fn`]).
    pub num_shards: Arc<AtomicU32>,
    /// How long a flush waits for the coordinators' acks before it persists its flush times;
    /// when they do not all arrive in time, the times are persisted at a later flush.
    pub ack_wait: Duration,
    /// A leader's flush pauses between shards while more than this many bytes of its output
    /// wait for the coordinators' acks, and goes on once half of them are acked: a flush of
    /// many series then never holds its whole output unacked in memory. When acks stop
    /// arriving for `ack_wait`, the rest of that flush goes out without pausing (the producer's
    /// `maxBufferSize` still bounds it).
    pub max_unacked_flush_bytes: usize,
    /// The client that forwards rollup values to other aggregators (`aggregator.client`).
    pub client: crate::client::ClientOptions,
    /// How long a follower keeps windows while its leader's flush times do not move before it
    /// drops the older ones (`flushManager.maxBufferSize`, M3's default 5m); also how long
    /// windows wait past their end for an output topic with a consumer service.
    pub max_buffer_size: Duration,
    /// How often a follower in that forced mode drops what has grown older than
    /// `max_buffer_size` (`flushManager.forcedFlushWindowSize`, M3's default 10s).
    pub forced_flush_window_size: Duration,
    /// The output's consumer when it runs in this process (`m3 local`): the output goes to it
    /// instead of to the m3msg topic, which is then not followed (see [`crate::output`]).
    pub in_process_output: Option<crate::output::InProcessOutput>,
}

impl InstanceOptions {
    /// M3's default `entryCheckInterval`: idle series are looked for every 10 minutes.
    pub const DEFAULT_ENTRY_CHECK_INTERVAL: Duration = Duration::from_secs(600);

    /// Output bytes a leader's flush lets wait for acks before it pauses (4 MiB, some 15,000
    /// aggregated values): enough to keep a coordinator busy, small next to the series held.
    pub const DEFAULT_MAX_UNACKED_FLUSH_BYTES: usize = 4 << 20;

    /// Defaults for `instance_id`.
    pub fn new(instance_id: impl Into<String>) -> InstanceOptions {
        InstanceOptions {
            instance_id: instance_id.into(),
            environment: keys::DEFAULT_ENVIRONMENT.to_string(),
            zone: keys::DEFAULT_ZONE.to_string(),
            placement_namespace: "/placement".to_string(),
            placement_key: "m3aggregator".to_string(),
            topic: "aggregated_metrics".to_string(),
            election_ttl: Duration::from_secs(10),
            check_every: Duration::from_secs(1),
            entry_check_interval: InstanceOptions::DEFAULT_ENTRY_CHECK_INTERVAL,
            producer: ProducerConfig::default(),
            shutdown_ack_timeout: Duration::from_secs(10),
            ack_wait: Duration::from_secs(5),
            max_unacked_flush_bytes: InstanceOptions::DEFAULT_MAX_UNACKED_FLUSH_BYTES,
            num_shards: Arc::new(AtomicU32::new(0)),
            client: crate::client::ClientOptions::default(),
            max_buffer_size: Duration::from_secs(300),
            forced_flush_window_size: Duration::from_secs(10),
            in_process_output: None,
        }
    }
}

/// The election of the shard set this instance is in, with the shard set's ID; replaced when
/// the placement moves the instance to another shard set.
pub(crate) type SharedElection = Arc<Mutex<Option<(u32, Arc<LeaderElection>)>>>;

/// A shard function (murmur3_32(id) % numShards) whose shard count follows the placement this
/// instance watches; before the first placement every ID maps to shard 0, which is not owned.
pub fn placement_shard_fn(options: &InstanceOptions) -> crate::ShardFn {
    let num_shards = Arc::clone(&options.num_shards);
    Arc::new(move |id: &[u8]| m3_cluster::shard_for(id, num_shards.load(Ordering::Relaxed)))
}

/// A running aggregator instance.
pub struct AggregatorInstance {
    aggregator: Arc<Aggregator>,
    status: watch::Receiver<FlushStatus>,
    election: SharedElection,
    resign_requests: mpsc::Sender<ResignRequest>,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for AggregatorInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AggregatorInstance").finish_non_exhaustive()
    }
}

impl AggregatorInstance {
    /// Joins the cluster: follows the placement and the topic, campaigns and flushes until
    /// [`AggregatorInstance::shutdown`].
    ///
    /// # Errors
    /// When the KV watches cannot be set up or the topic does not appear in time.
    ///
    /// The engine's and the producer's self-metrics are registered into `registry`.
    pub async fn start(
        aggregator: Arc<Aggregator>,
        kv: Arc<dyn KvStore>,
        options: InstanceOptions,
        registry: &mut prometheus_client::registry::Registry,
    ) -> anyhow::Result<AggregatorInstance> {
        let cancel = CancellationToken::new();
        let mut tasks = Vec::new();
        aggregator.register(registry);
        let producer = if options.in_process_output.is_some() {
            // The output goes to the consumer in this process: no topic to follow.
            crate::topic_producer::SharedProducer::default()
        } else {
            let producer_metrics = m3_msg::ProducerMetrics::default();
            producer_metrics.register(registry, "m3aggregator_m3msg_producer");
            let (producer, producer_task) = crate::topic_producer::start(
                &kv,
                TopicProducerOptions {
                    environment: options.environment.clone(),
                    topic: options.topic.clone(),
                    placement_namespace: None,
                    producer: options.producer.clone(),
                    waiting_note: "windows are kept until it does",
                },
                producer_metrics,
                &cancel,
            )
            .await?;
            tasks.push(producer_task);
            producer
        };

        let placement_key = keys::placement_key_in(
            &options.placement_namespace,
            &ServiceId::new(
                options.placement_key.clone(),
                options.environment.clone(),
                options.zone.clone(),
            ),
        );
        let placements =
            PlacementStore::new(Arc::clone(&kv), placement_key, PlacementFormat::Snapshots)
                .watch()
                .await?;
        let client = crate::client::AggregatorClient::new(
            options.client.clone(),
            Arc::new(crate::forward::ForwardingMetrics(Arc::clone(&aggregator))),
        );
        let client_producer_metrics = m3_msg::ProducerMetrics::default();
        client_producer_metrics.register(registry, "m3aggregator_forwarding_m3msg_producer");
        if let Some(task) = client
            .start_m3msg(&kv, &options.environment, client_producer_metrics, &cancel)
            .await?
        {
            tasks.push(task);
        }
        let election: SharedElection = Arc::new(Mutex::new(None));
        let (status_tx, status) = watch::channel(FlushStatus {
            election_state: ElectionState::Unknown,
            can_lead: false,
        });
        // The election takes a free lease at once only while this instance can lead.
        let can_lead = status.clone();
        let (eligible_tx, eligible) = watch::channel(false);
        let eligible_tx = Arc::new(eligible_tx);
        let forwarded_eligibility = Arc::clone(&eligible_tx);
        tasks.push(tokio::spawn(async move {
            let eligible_tx = forwarded_eligibility;
            let mut can_lead = can_lead;
            loop {
                let value = can_lead.borrow_and_update().can_lead;
                eligible_tx.send_if_modified(|e| std::mem::replace(e, value) != value);
                if can_lead.changed().await.is_err() {
                    break;
                }
            }
        }));
        tasks.push(tokio::spawn(follow_placement(PlacementFollower {
            watch: placements,
            aggregator: Arc::clone(&aggregator),
            kv: Arc::clone(&kv),
            options: options.clone(),
            election: Arc::clone(&election),
            eligible,
            eligible_tx,
            client: Arc::clone(&client),
            cancel: cancel.clone(),
        })));
        let (resign_requests, resign_rx) = mpsc::channel(4);
        let flush_manager = FlushManager {
            aggregator: Arc::clone(&aggregator),
            kv,
            options: options.clone(),
            election: Arc::clone(&election),
            producer,
            client,
            status: status_tx,
            resign_requests: resign_rx,
            cancel: cancel.clone(),
        };
        tasks.push(tokio::spawn(flush_manager.run()));
        let expiry_aggregator = Arc::clone(&aggregator);
        let expiry_cancel = cancel.clone();
        let every = options.entry_check_interval;
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    () = expiry_cancel.cancelled() => break,
                }
                expiry_aggregator.expire_entries(unix_nanos_now());
            }
        }));
        Ok(AggregatorInstance {
            aggregator,
            status,
            election,
            resign_requests,
            cancel,
            tasks,
        })
    }

    /// The engine.
    pub fn aggregator(&self) -> &Arc<Aggregator> {
        &self.aggregator
    }

    /// The current flush status.
    pub fn status(&self) -> FlushStatus {
        *self.status.borrow()
    }

    /// Gives up leadership (`POST /resign`).
    ///
    /// # Errors
    /// When the instance is in no shard set or the KV write fails.
    ///
    /// A leader first flushes, waits for the acks and persists its flush times, so the next
    /// leader neither repeats nor skips a window.
    pub async fn resign(&self) -> anyhow::Result<()> {
        let (reply, answer) = oneshot::channel();
        self.resign_requests
            .send(reply)
            .await
            .map_err(|_| anyhow::anyhow!("the instance is shutting down"))?;
        answer
            .await
            .map_err(|_| anyhow::anyhow!("the instance is shutting down"))?
    }

    /// Flushes ended windows (as leader), waits for acks, resigns and stops.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
        let election = self.election.lock().take();
        if let Some((_, e)) = election {
            // Resigning needs the KV; with the KV down the lease simply runs out.
            if tokio::time::timeout(Duration::from_secs(15), e.close())
                .await
                .is_err()
            {
                tracing::warn!("Could not resign within 15s; the lease will expire on its own.");
            }
        }
    }
}

/// Everything the placement follower works with.
struct PlacementFollower {
    watch: m3_cluster::kv::DecodedWatch<Placement>,
    aggregator: Arc<Aggregator>,
    kv: Arc<dyn KvStore>,
    options: InstanceOptions,
    election: SharedElection,
    /// Whether this instance may lead (fed by canLead), handed to each election it joins.
    eligible: watch::Receiver<bool>,
    /// Its sender, to say at once whether a shard set just joined may be led from here.
    eligible_tx: Arc<watch::Sender<bool>>,
    client: Arc<crate::client::AggregatorClient>,
    cancel: CancellationToken,
}

async fn follow_placement(parts: PlacementFollower) {
    let PlacementFollower {
        mut watch,
        aggregator,
        kv,
        options,
        election,
        eligible,
        eligible_tx,
        client,
        cancel,
    } = parts;
    loop {
        let placement = watch.borrow_and_update().clone();
        if let Some(p) = &placement {
            options
                .num_shards
                .store(p.value.num_shards, Ordering::Relaxed);
            client.update_placement(&p.value);
        }
        let me = placement
            .as_ref()
            .and_then(|p| p.value.instance(&options.instance_id).cloned());
        match me {
            None => {
                if placement.is_some() {
                    tracing::error!(
                        instance = %options.instance_id,
                        "Aggregator instance ID must appear in placement; this instance owns no shards. Check aggregator.hostID against the placement's instance IDs."
                    );
                } else {
                    tracing::warn!("No m3aggregator placement yet; owning no shards.");
                }
                aggregator.set_shards(Vec::new(), unix_nanos_now());
                if let Some((_, old)) = election.lock().take() {
                    old.begin_close();
                    tokio::spawn(async move { old.close().await });
                }
            }
            Some(instance) => {
                let assignments = instance
                    .shards
                    .iter()
                    .map(|s| ShardAssignment {
                        id: s.id,
                        cutover_nanos: s.cutover_nanos.max(0),
                        cutoff_nanos: if s.cutoff_nanos == i64::MAX {
                            0
                        } else {
                            s.cutoff_nanos.max(0)
                        },
                    })
                    .collect();
                aggregator.set_shards(assignments, unix_nanos_now());
                let shard_set = instance.shard_set_id;
                let joining = election.lock().as_ref().map(|(id, _)| *id) != Some(shard_set);
                if joining {
                    // Eligible at once when this member holds every window the shard set has
                    // not flushed (always, in a new cluster: no flush times yet), so a shard
                    // set gets its leader without waiting for the first flush cycle to say so.
                    let flush_key = keys::flush_times_key(&options.environment, shard_set);
                    if let Some((times, _)) =
                        crate::flush_manager::read_flush_times(&kv, &flush_key).await
                    {
                        eligible_tx.send_replace(aggregator.can_lead(&times));
                    }
                }
                let mut current = election.lock();
                if current.as_ref().map(|(id, _)| *id) != Some(shard_set) {
                    if let Some((_, old)) = current.take() {
                        old.begin_close();
                        tokio::spawn(async move { old.close().await });
                    }
                    let key =
                        keys::election_key(&options.environment, &options.placement_key, shard_set);
                    let e = Arc::new(
                        LeaderElection::new(
                            Arc::clone(&kv),
                            key,
                            options.instance_id.clone(),
                            options.election_ttl,
                        )
                        .with_eligibility(eligible.clone()),
                    );
                    // Campaign at once when the shards' times allow it (no flush times are known
                    // yet: a member that is only cut off holds nothing then and stays out); the
                    // flush manager re-checks at every flush (campaign.rs).
                    let held = aggregator.held_shards();
                    if crate::campaign::may_campaign(
                        &held,
                        unix_nanos_now(),
                        &m3_proto::flushpb::ShardSetFlushTimes::default(),
                    )
                    .is_ok()
                    {
                        e.campaign();
                    }
                    tracing::info!(instance = %options.instance_id, shard_set, shards = instance.shards.len(), "Joined shard set.");
                    *current = Some((shard_set, e));
                }
            }
        }
        tokio::select! {
            changed = watch.changed() => if changed.is_err() { break },
            () = cancel.cancelled() => break,
        }
    }
}
