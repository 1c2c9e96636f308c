//! An m3msg producer that follows a topic in KV: the glue between `m3_cluster`'s topics and
//! placements and `m3_msg`'s [`Producer`], which knows neither.
//!
//! ```text
//! topic watch ──(appears)──▶ Producer::new(numberOfShards)
//!             ──(consumer services)──▶ add/remove_consumer_service
//!                 each service's placement watch ──▶ its ConsumerInstances (live)
//! ```
//!
//! Two users: an aggregator's output to the coordinators (topic `aggregated_metrics`, SHARED
//! to m3coordinator) and the m3msg aggregator client (topic `aggregator_ingest`, REPLICATED to
//! m3aggregator), with which coordinators send samples and aggregators forward rollups.
//!
//! The topic may be created after the process starts (SEED.md creates it last), so the
//! producer is handed out as a [`SharedProducer`] that is empty until the topic exists; what
//! to do meanwhile is the user's choice (the aggregator keeps its windows; the client counts
//! the samples it cannot send).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use m3_cluster::keys;
use m3_cluster::placement::{Placement, PlacementFormat, PlacementStore};
use m3_cluster::topic::{TopicError, TopicStore};
use m3_cluster::{ConsumptionType, KvStore};
use m3_msg::{ConsumerInstance, ConsumerInstances, ConsumerServiceSpec, Producer, ProducerConfig};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The producer, once the topic exists.
pub type SharedProducer = Arc<tokio::sync::OnceCell<Producer>>;

/// Which topic to follow and how to produce to it.
#[derive(Debug, Clone)]
pub struct TopicProducerOptions {
    /// KV environment of the topic and of its consumer services' placements.
    pub environment: String,
    /// The topic, e.g. `aggregated_metrics`.
    pub topic: String,
    /// The KV namespace of the consumer services' placements (M3's
    /// `placementServiceOverride.namespaces.placement`); by default `/placement` for
    /// m3aggregator and `_sd.placement` for any other service.
    pub placement_namespace: Option<String>,
    /// The producer's buffer, retries and connections.
    pub producer: ProducerConfig,
    /// Said in the log while the topic does not exist, e.g. what is kept meanwhile.
    pub waiting_note: &'static str,
}

/// Starts following `options.topic`; the returned task runs until `cancel`.
///
/// # Errors
/// When the topic cannot be watched.
pub async fn start(
    kv: &Arc<dyn KvStore>,
    options: TopicProducerOptions,
    metrics: m3_msg::ProducerMetrics,
    cancel: &CancellationToken,
) -> Result<(SharedProducer, tokio::task::JoinHandle<()>), TopicError> {
    let topics = TopicStore::new(Arc::clone(kv), options.environment.clone());
    let mut topic_watch = topics.watch(&options.topic).await?;
    let shared: SharedProducer = Arc::new(tokio::sync::OnceCell::new());
    let kv = Arc::clone(kv);
    let cancel = cancel.clone();
    let cell = Arc::clone(&shared);
    let task = tokio::spawn(async move {
        let topic = loop {
            if let Some(t) = topic_watch.borrow_and_update().clone() {
                break t;
            }
            tracing::warn!(topic = %options.topic, "Topic does not exist yet; {} (create it with POST /api/v1/topic/init).", options.waiting_note);
            tokio::select! {
                changed = tokio::time::timeout(Duration::from_secs(30), topic_watch.changed()) => {
                    if matches!(changed, Ok(Err(_))) {
                        return;
                    }
                }
                () = cancel.cancelled() => return,
            }
        };
        let producer = Producer::with_metrics(
            options.producer.clone(),
            topic.value.number_of_shards,
            metrics,
        );
        let _ = cell.set(producer.clone());
        let mut services: BTreeMap<String, CancellationToken> = BTreeMap::new();
        loop {
            let current = topic_watch.borrow_and_update().clone();
            let wanted: Vec<_> = current
                .map(|t| t.value.consumer_services.clone())
                .unwrap_or_default();
            for service in &wanted {
                let name = service.service_id.name.clone();
                if services.contains_key(&name) {
                    continue;
                }
                let consumption = match service.consumption_type {
                    ConsumptionType::Replicated => m3_msg::ConsumptionType::Replicated,
                    _ => m3_msg::ConsumptionType::Shared,
                };
                let spec = ConsumerServiceSpec {
                    name: name.clone(),
                    consumption,
                    message_ttl: (service.message_ttl_nanos > 0)
                        .then(|| Duration::from_nanos(service.message_ttl_nanos as u64)),
                };
                let key = match &options.placement_namespace {
                    Some(namespace) => keys::placement_key_in(namespace, &service.service_id),
                    None => keys::placement_key(&service.service_id),
                };
                let format = PlacementFormat::of_service(&service.service_id.name);
                let placement_watch = match PlacementStore::new(Arc::clone(&kv), key, format)
                    .watch()
                    .await
                {
                    Ok(w) => w,
                    Err(e) => {
                        tracing::error!(service = %name, error = %e, "Cannot watch consumer placement.");
                        continue;
                    }
                };
                let (tx, rx) = watch::channel(ConsumerInstances::default());
                let service_cancel = cancel.child_token();
                tokio::spawn(follow_consumer_placement(
                    placement_watch,
                    tx,
                    service_cancel.clone(),
                ));
                if let Err(e) = producer.add_consumer_service(spec, rx) {
                    tracing::error!(service = %name, error = %e, "Cannot add consumer service.");
                    service_cancel.cancel();
                    continue;
                }
                tracing::info!(service = %name, topic = %options.topic, "Producing to consumer service.");
                services.insert(name, service_cancel);
            }
            let gone: Vec<String> = services
                .keys()
                .filter(|n| !wanted.iter().any(|s| &s.service_id.name == *n))
                .cloned()
                .collect();
            for name in gone {
                if let Some(c) = services.remove(&name) {
                    c.cancel();
                }
                producer.remove_consumer_service(&name);
            }
            tokio::select! {
                changed = topic_watch.changed() => if changed.is_err() { break },
                () = cancel.cancelled() => break,
            }
        }
    });
    Ok((shared, task))
}

/// Keeps a consumer service's instances in line with its placement.
async fn follow_consumer_placement(
    mut watch: m3_cluster::kv::DecodedWatch<Placement>,
    tx: watch::Sender<ConsumerInstances>,
    cancel: CancellationToken,
) {
    loop {
        let instances = watch
            .borrow_and_update()
            .as_ref()
            .map(|p| consumer_instances(&p.value))
            .unwrap_or_default();
        let _ = tx.send(instances);
        tokio::select! {
            changed = watch.changed() => if changed.is_err() { break },
            () = cancel.cancelled() => break,
        }
    }
}

/// A placement's instances as m3msg consumers: a sharded placement's instances own their
/// shards; a non-sharded one's own every shard.
fn consumer_instances(placement: &Placement) -> ConsumerInstances {
    ConsumerInstances {
        instances: placement
            .instances()
            .map(|i| ConsumerInstance {
                id: i.id.clone(),
                endpoint: i.endpoint.clone(),
                shards: placement.is_sharded.then(|| i.shard_ids().collect()),
            })
            .collect(),
    }
}
