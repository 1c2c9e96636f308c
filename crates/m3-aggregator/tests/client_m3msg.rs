//! The aggregator client over m3msg (`type: m3msg`): topic and placement in a KV, two real
//! m3msg consumer servers on loopback standing for the two replicas of every shard. Every
//! metric must reach both replicas exactly once, on the shard its ID hashes to, as the
//! `MetricWithMetadatas` the caller encoded; a replica that was down gets what it missed
//! when it comes back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use m3_aggregator::client::{
    AggregatorClient, ClientDrop, ClientMetrics, ClientOptions, M3msgTransport,
};
use m3_cluster::keys::{self, ServiceId};
use m3_cluster::placement::{PlacementFormat, build_mirrored};
use m3_cluster::{
    ConsumerService, ConsumptionType, Instance, KvStore, MemoryKv, PlacementStore, TopicStore,
};
use m3_msg::{ConsumedMessage, ConsumerConfig, ConsumerServer, ProducerConfig};
use m3_proto::Message;
use m3_proto::metricpb::{self, MetricWithMetadatas};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const SHARDS: u32 = 8;

#[derive(Default)]
struct NoDrops;

impl ClientMetrics for NoDrops {
    fn dropped(&self, reason: ClientDrop, n: u64) {
        panic!("{n} metrics dropped: {reason:?}");
    }
    fn queued(&self, _n: u64) {}
}

/// What one replica received: metric ID → the message shard of each copy.
type Received = Arc<Mutex<BTreeMap<Vec<u8>, Vec<u64>>>>;

async fn replica(listener: TcpListener, cancel: CancellationToken) -> Received {
    let received = Received::default();
    let seen = Arc::clone(&received);
    let handler = Arc::new(move |message: ConsumedMessage| {
        let metric = MetricWithMetadatas::decode(message.value().as_ref())
            .expect("each message is one MetricWithMetadatas");
        let id = metric
            .gauge_with_metadatas
            .and_then(|g| g.gauge)
            .map(|g| g.id.to_vec())
            .expect("a gauge");
        seen.lock().entry(id).or_default().push(message.shard());
        message.ack();
    });
    tokio::spawn(ConsumerServer::new(ConsumerConfig::default(), handler).serve(listener, cancel));
    received
}

fn gauge(id: &[u8]) -> MetricWithMetadatas {
    MetricWithMetadatas {
        r#type: metricpb::metric_with_metadatas::Type::GaugeWithMetadatas as i32,
        gauge_with_metadatas: Some(metricpb::GaugeWithMetadatas {
            gauge: Some(metricpb::Gauge {
                id: id.to_vec().into(),
                value: 1.5,
                ..Default::default()
            }),
            metadatas: None,
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_reaches_every_replica_of_its_shard_once() {
    let kv: Arc<dyn KvStore> = Arc::new(MemoryKv::new());
    let cancel = CancellationToken::new();
    let first = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let second_address = {
        // The second replica is down at first: its port is reserved and closed.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let endpoints = [
        first.local_addr().unwrap().to_string(),
        second_address.to_string(),
    ];
    let first_received = replica(first, cancel.child_token()).await;

    let instances = endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| {
            Instance::new(format!("agg{i}"))
                .with_endpoint(e.clone())
                .with_isolation_group(format!("g{i}"))
                .with_zone("embedded")
        })
        .collect();
    let placement = build_mirrored(instances, SHARDS, 2, 0).unwrap();
    let aggregators = ServiceId::new("m3aggregator", "default_env", "embedded");
    PlacementStore::new(
        Arc::clone(&kv),
        keys::placement_key(&aggregators),
        PlacementFormat::Snapshots,
    )
    .init(&placement)
    .await
    .unwrap();
    let topics = TopicStore::new(Arc::clone(&kv), "default_env");
    topics.init("aggregator_ingest", SHARDS).await.unwrap();
    topics
        .add_consumer_service(
            "aggregator_ingest",
            ConsumerService::new(aggregators, ConsumptionType::Replicated),
        )
        .await
        .unwrap();

    let mut producer = ProducerConfig::default();
    producer.writer.message_retry.initial_backoff = Duration::from_secs(1);
    producer.writer.message_retry.max_backoff = Duration::from_secs(2);
    // Sent copies reach the socket at once, so a retry means a lost ack, not a slow flush.
    producer.writer.connection.flush_interval = Duration::from_millis(20);
    let client = AggregatorClient::new(
        ClientOptions {
            m3msg: Some(M3msgTransport {
                topic: "aggregator_ingest".into(),
                environment: None,
                placement_namespace: None,
                producer,
            }),
            ..ClientOptions::default()
        },
        Arc::new(NoDrops),
    );
    assert!(client.uses_m3msg());
    client
        .start_m3msg(
            &kv,
            "default_env",
            m3_msg::ProducerMetrics::default(),
            &cancel,
        )
        .await
        .unwrap()
        .expect("a task following the topic");
    client.wait_for_placement().await.unwrap();

    let ids: Vec<Vec<u8>> = (0..200)
        .map(|i| format!("series-{i}").into_bytes())
        .collect();
    let mut batch = client.batch();
    assert!(batch.has_placement());
    for id in &ids {
        let routed = batch.route(id, 0, |buf: &mut BytesMut| {
            m3_proto::framing::put_rawtcp_frame(&gauge(id), buf, 1 << 20).unwrap();
        });
        assert_eq!(routed, Ok(1));
    }
    assert_eq!(client.commit(batch), 0);

    // REPLICATED: each replica gets one copy, on a message shard of replica slot ×
    // shards + the ID's shard.
    let check = |received: &Received| -> Result<(), String> {
        let received = received.lock();
        if received.len() != ids.len() {
            return Err(format!("{} of {} IDs received", received.len(), ids.len()));
        }
        for id in &ids {
            let shard = u64::from(m3_cluster::shard_for(id, SHARDS));
            match received.get(id).map(Vec::as_slice) {
                Some([key]) if key % u64::from(SHARDS) == shard => {}
                other => {
                    return Err(format!(
                        "{}: message shards {other:?}, want one copy on shard {shard}",
                        String::from_utf8_lossy(id)
                    ));
                }
            }
        }
        Ok(())
    };
    let wait = |received: Received| {
        let check = &check;
        async move {
            eventually(|| check(&received).is_ok()).await;
            check(&received)
        }
    };
    assert_eq!(wait(Arc::clone(&first_received)).await, Ok(()));

    // The second replica comes back: it receives every message it missed, once.
    let second = TcpListener::bind(second_address).await.unwrap();
    let second_received = replica(second, cancel.child_token()).await;
    assert_eq!(wait(Arc::clone(&second_received)).await, Ok(()));
    assert_eq!(check(&first_received), Ok(()), "no copy twice");
    let slot = |r: &Received| -> Vec<u64> {
        let mut slots: Vec<u64> = r
            .lock()
            .values()
            .flatten()
            .map(|k| k / u64::from(SHARDS))
            .collect();
        slots.dedup();
        slots
    };
    assert_ne!(
        slot(&first_received),
        slot(&second_received),
        "two replica slots"
    );

    client.close(Duration::from_secs(2)).await;
    assert_eq!(client.queued_metrics(), 0);
    cancel.cancel();
}

/// Polls `done` every 50ms for up to 20s.
async fn eventually(done: impl Fn() -> bool) -> bool {
    for _ in 0..400 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done()
}
