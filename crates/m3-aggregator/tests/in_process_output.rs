//! A leader whose output goes to a consumer in its own process (`m3 local`'s path, see
//! `m3_aggregator::output`): while the consumer cannot store, nothing is lost and the flush
//! times wait; what waits longer than the message TTL is dropped and counted.
//!
//! One aggregator owns every shard of a one-instance placement in a [`MemoryKv`], as `m3 local`
//! sets it up. Counters of 1 are added to it each few milliseconds and aggregated as `Sum` per
//! 1 s window, so a window stored twice, or stored with some of its samples missing, shows in
//! the stored sums. The consumer is a sink that refuses everything until told to store.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use m3_aggregator::instance::{AggregatorInstance, InstanceOptions};
use m3_aggregator::metadata::build;
use m3_aggregator::metrics::OutputDiscard;
use m3_aggregator::output::{InProcessOutput, OutputSink, SinkWrite};
use m3_aggregator::rawtcp::unix_nanos_now;
use m3_aggregator::{AggregatedOutput, Aggregator, AggregatorOptions, Metadatas};
use m3_cluster::keys::{self, ServiceId};
use m3_cluster::placement::{Instance, PlacementFormat, PlacementStore, build_mirrored};
use m3_cluster::{ElectionState, KvStore, MemoryKv};
use m3_metric::{AggregationId, AggregationType, MetricType, StoragePolicy};
use m3_proto::Message;
use m3_proto::flushpb::ShardSetFlushTimes;
use parking_lot::Mutex;
use prometheus_client::registry::Registry;

const NUM_SHARDS: u32 = 4;
const SECOND: i64 = 1_000_000_000;
const SERIES: [&[u8]; 3] = [b"requests_a", b"requests_b", b"requests_c"];

/// A consumer that refuses every output until `storing` is set, then keeps them.
#[derive(Default)]
struct Consumer {
    storing: AtomicBool,
    /// Outputs offered and refused, counted once per (series, window).
    refused: Mutex<BTreeMap<(Vec<u8>, i64), f64>>,
    stored: Mutex<Vec<AggregatedOutput>>,
}

struct Sink(Arc<Consumer>);

impl OutputSink for Sink {
    fn write(&self, outputs: Vec<AggregatedOutput>) -> SinkWrite {
        let consumer = Arc::clone(&self.0);
        Box::pin(async move {
            if consumer.storing.load(Ordering::Relaxed) {
                consumer.stored.lock().extend(outputs);
                return Vec::new();
            }
            let mut refused = consumer.refused.lock();
            for output in &outputs {
                refused.insert((output.id.clone(), output.time_nanos), output.value);
            }
            outputs
        })
    }
}

struct Setup {
    kv: Arc<dyn KvStore>,
    aggregator: Arc<Aggregator>,
    instance: AggregatorInstance,
    consumer: Arc<Consumer>,
}

/// One aggregator owning every shard, its output attached to a [`Consumer`]; at most
/// `max_buffer_size` bytes of outputs wait for it.
async fn start(message_ttl: Duration, max_buffer_size: usize) -> Setup {
    let kv: Arc<dyn KvStore> = Arc::new(MemoryKv::new());
    let env = keys::DEFAULT_ENVIRONMENT;
    let zone = keys::DEFAULT_ZONE;
    let placement = build_mirrored(
        vec![
            Instance::new("aggregator-a")
                .with_endpoint("127.0.0.1:1")
                .with_isolation_group("a")
                .with_zone(zone)
                .with_weight(100),
        ],
        NUM_SHARDS,
        1,
        0,
    )
    .expect("placement");
    PlacementStore::new(
        Arc::clone(&kv),
        keys::placement_key(&ServiceId::new("m3aggregator", env, zone)),
        PlacementFormat::Snapshots,
    )
    .init(&placement)
    .await
    .expect("placement stored");
    let aggregator = Arc::new(Aggregator::new(
        AggregatorOptions::default(),
        Arc::new(|id: &[u8]| m3_cluster::shard_for(id, NUM_SHARDS)),
    ));
    let consumer = Arc::new(Consumer::default());
    let output = InProcessOutput::new(message_ttl);
    output.attach(Arc::new(Sink(Arc::clone(&consumer))));
    let mut options = InstanceOptions::new("aggregator-a");
    options.check_every = Duration::from_millis(100);
    options.election_ttl = Duration::from_secs(2);
    options.in_process_output = Some(output);
    options.producer.buffer.max_buffer_size = max_buffer_size;
    let instance = AggregatorInstance::start(
        Arc::clone(&aggregator),
        Arc::clone(&kv),
        options,
        &mut Registry::default(),
    )
    .await
    .expect("aggregator starts");
    wait_until("the aggregator to lead every shard", || {
        instance.status().election_state == ElectionState::Leader
            && aggregator.owned_shards().len() == NUM_SHARDS as usize
    })
    .await;
    Setup {
        kv,
        aggregator,
        instance,
        consumer,
    }
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Adds a counter of 1 to every series each 20 ms for `how_long`; returns, per series and
/// 1 s window end, how many were added.
async fn add_for(aggregator: &Aggregator, how_long: Duration) -> BTreeMap<(Vec<u8>, i64), f64> {
    let sums = build::simple(
        AggregationId::from_types([AggregationType::Sum]),
        &["1s:1h".parse::<StoragePolicy>().expect("policy")],
    );
    let mut added = BTreeMap::new();
    let until = tokio::time::Instant::now() + how_long;
    while tokio::time::Instant::now() < until {
        let now = unix_nanos_now();
        for id in SERIES {
            aggregator
                .add_untimed(
                    MetricType::Counter,
                    id,
                    &[1.0],
                    Metadatas::Staged(&sums),
                    now,
                )
                .expect("added");
            let window_end = now.div_euclid(SECOND) * SECOND + SECOND;
            *added.entry((id.to_vec(), window_end)).or_insert(0.0) += 1.0;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    added
}

/// The flush times persisted in KV for the one shard set (none: empty).
async fn persisted_flush_times(kv: &Arc<dyn KvStore>) -> ShardSetFlushTimes {
    let mut times = ShardSetFlushTimes::default();
    for shard_set in 0..=1 {
        let key = keys::flush_times_key(keys::DEFAULT_ENVIRONMENT, shard_set);
        if let Some(value) = kv.get(&key).await.expect("KV reads") {
            times = ShardSetFlushTimes::decode(value.value).expect("flush times decode");
        }
    }
    times
}

/// The latest window end any shard's persisted flush times claim.
fn latest_flushed(times: &ShardSetFlushTimes) -> i64 {
    times
        .by_shard
        .values()
        .flat_map(|shard| shard.standard_by_resolution.values())
        .copied()
        .max()
        .unwrap_or(i64::MIN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_the_consumer_refuses_are_retried_and_the_flush_times_wait_for_them() {
    let setup = start(Duration::from_secs(60), 100 << 20).await;
    // The consumer refuses everything for three seconds: windows close and are offered.
    let mut added = add_for(&setup.aggregator, Duration::from_secs(3)).await;
    wait_until("the consumer to refuse some windows", || {
        setup.consumer.refused.lock().len() >= SERIES.len()
    })
    .await;
    assert!(
        setup.consumer.stored.lock().is_empty(),
        "nothing is stored while the consumer refuses"
    );
    let first_refused = setup
        .consumer
        .refused
        .lock()
        .keys()
        .map(|(_, end)| *end)
        .min()
        .expect("refused windows");
    assert!(
        latest_flushed(&persisted_flush_times(&setup.kv).await) < first_refused,
        "flush times persisted past output that was not stored"
    );

    // It stores from now on: what it refused comes again, with what closes meanwhile.
    setup.consumer.storing.store(true, Ordering::Relaxed);
    for (window, count) in add_for(&setup.aggregator, Duration::from_secs(2)).await {
        *added.entry(window).or_insert(0.0) += count;
    }
    // Every window added to has ended a second later.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    wait_until("every window to be stored", || {
        setup.consumer.stored.lock().len() >= added.len()
    })
    .await;

    let mut stored: BTreeMap<(Vec<u8>, i64), f64> = BTreeMap::new();
    let mut twice = Vec::new();
    for output in setup.consumer.stored.lock().iter() {
        if stored
            .insert((output.id.clone(), output.time_nanos), output.value)
            .is_some()
        {
            twice.push((
                String::from_utf8_lossy(&output.id).into_owned(),
                output.time_nanos,
            ));
        }
    }
    let missing: Vec<_> = added.keys().filter(|w| !stored.contains_key(*w)).collect();
    let differing: Vec<_> = added
        .iter()
        .filter(|(w, sum)| stored.get(*w).is_some_and(|s| s != *sum))
        .collect();
    let unexpected: Vec<_> = stored.keys().filter(|w| !added.contains_key(*w)).collect();
    assert!(
        twice.is_empty() && missing.is_empty() && differing.is_empty() && unexpected.is_empty(),
        "{} windows expected, {} stored: twice {twice:?}, missing {missing:?}, differing {differing:?}, unexpected {unexpected:?}",
        added.len(),
        stored.len()
    );
    let refused = setup.consumer.refused.lock().clone();
    assert!(
        refused.iter().all(|(w, sum)| stored.get(w) == Some(sum)),
        "a refused window was stored with another value, or not at all"
    );
    // Flush times persist once everything they cover is stored.
    let last_window = added.keys().map(|(_, end)| *end).max().expect("windows");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while latest_flushed(&persisted_flush_times(&setup.kv).await) < last_window {
        assert!(
            tokio::time::Instant::now() < deadline,
            "flush times not persisted once everything was stored"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        setup
            .aggregator
            .metrics()
            .outputs_discarded(OutputDiscard::Expired),
        0
    );
    setup.instance.shutdown().await;
}

/// Adds for two seconds to a consumer that refuses everything, then waits until every window
/// added to has been offered, refused and dropped for `reason`, each counted once.
async fn refuse_until_each_window_is_dropped(setup: &Setup, reason: OutputDiscard) {
    let added = add_for(&setup.aggregator, Duration::from_secs(2)).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let metrics = setup.aggregator.metrics();
    wait_until("every window to be offered, refused and dropped", || {
        let refused = setup.consumer.refused.lock().len() as u64;
        refused == added.len() as u64 && metrics.outputs_discarded(reason) == refused
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_not_stored_within_the_message_ttl_are_dropped_and_counted() {
    let setup = start(Duration::from_secs(1), 100 << 20).await;
    refuse_until_each_window_is_dropped(&setup, OutputDiscard::Expired).await;
    assert!(setup.consumer.stored.lock().is_empty());
    setup.instance.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_beyond_the_buffer_bound_are_dropped_oldest_first_and_counted() {
    // A bound no flush's outputs fit: each flush's are dropped as soon as they are refused.
    let setup = start(Duration::from_secs(60), 1).await;
    refuse_until_each_window_is_dropped(&setup, OutputDiscard::BufferFull).await;
    assert_eq!(
        setup
            .aggregator
            .metrics()
            .outputs_discarded(OutputDiscard::Expired),
        0
    );
    assert!(setup.consumer.stored.lock().is_empty());
    setup.instance.shutdown().await;
}
