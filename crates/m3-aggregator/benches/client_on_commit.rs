//! The coordinator's side of `m3 local`: a request's timed values routed into a batch
//! ([`ClientBatch::route_timed`]) and committed to two engines in this process, each a replica
//! of every shard ([`ClientOptions::apply_in_process_on_commit`]). No frame, queue or socket:
//! what is measured is routing, the batch's buffers and both engines' adds.
//!
//! * `client_on_commit/two_replicas/50k`: 50,000 live series, requests of 2,000 of them in
//!   the order a remote-write request brings them; every value goes into a window that is
//!   already open in both engines. Throughput in values routed (each is added twice). Every
//!   value must be added by both engines: a drop or rejection fails the bench.
//!
//! [`ClientBatch::route_timed`]: m3_aggregator::client::ClientBatch::route_timed
//! [`ClientOptions::apply_in_process_on_commit`]: m3_aggregator::client::ClientOptions

use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use m3_aggregator::client::{
    AggregatorClient, ClientDrop, ClientMetrics, ClientOptions, InProcessAggregators,
};
use m3_aggregator::{Aggregator, AggregatorOptions, RejectReason, ShardAssignment};
use m3_cluster::{Instance, Placement, Shard, ShardState};
use m3_metric::MetricType;
use prost::Message;

#[allow(dead_code)] // each benchmark uses a part of the shared setup
mod common;
use common::{NUM_SHARDS, S};

/// Values per request, as `m3 bench` sends them.
const REQUEST: usize = 2000;
const SERIES: usize = 50_000;

/// Fails the bench on any drop.
struct NoDrops;

impl ClientMetrics for NoDrops {
    fn dropped(&self, reason: ClientDrop, n: u64) {
        panic!("the bench dropped {n} values: {reason:?}");
    }
    fn queued(&self, _: u64) {}
}

/// An engine owning every shard, told the client's shard count so it takes the client's
/// shard of each group instead of hashing the IDs again.
fn engine() -> Arc<Aggregator> {
    let aggregator = Aggregator::new(
        AggregatorOptions::default(),
        Arc::new(|id: &[u8]| m3_cluster::shard_for(id, NUM_SHARDS)),
    )
    .with_murmur3_shard_count(Arc::new(AtomicU32::new(NUM_SHARDS)));
    aggregator.set_shards((0..NUM_SHARDS).map(ShardAssignment::unbounded).collect(), 0);
    Arc::new(aggregator)
}

/// Both instances own every shard (RF 2, as `m3 local`).
fn placement(endpoints: &[&str]) -> Placement {
    let mut placement = Placement {
        num_shards: NUM_SHARDS,
        replica_factor: endpoints.len() as u32,
        is_sharded: true,
        is_mirrored: true,
        ..Placement::default()
    };
    for endpoint in endpoints {
        let mut instance = Instance::new(*endpoint).with_endpoint(*endpoint);
        instance.shards = (0..NUM_SHARDS)
            .map(|s| Shard::new(s, ShardState::Available))
            .collect();
        placement.instances.insert(endpoint.to_string(), instance);
    }
    placement
}

fn client_on_commit(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    // The client starts a (here idle) writer task per instance.
    let _entered = runtime.enter();
    let (a, b) = (engine(), engine());
    let in_process = InProcessAggregators::default();
    in_process.attach("a.invalid:1", Arc::clone(&a));
    in_process.attach("b.invalid:1", Arc::clone(&b));
    let options = ClientOptions {
        in_process,
        apply_in_process_on_commit: true,
        ..ClientOptions::default()
    };
    let client = AggregatorClient::new(options, Arc::new(NoDrops));
    client.update_placement(&placement(&["a.invalid:1", "b.invalid:1"]));

    let ids = common::ids(SERIES);
    let hashes: Vec<u32> = ids.iter().map(|id| m3_cluster::murmur3_32(id)).collect();
    let metadatas = common::metadatas().encode_to_vec();
    // Now, as the engines check timed values against the clock: one window, opened below.
    let now = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_nanos(),
    )
    .expect("fits");
    let t = now - now % (10 * S) + S;
    let send = |start: usize| {
        let mut batch = client.batch();
        for i in start..start + REQUEST {
            let routed = batch.route_timed(
                &ids[i],
                hashes[i],
                MetricType::Gauge,
                t,
                i as f64,
                &metadatas,
            );
            assert_eq!(routed, Ok(2), "both replicas own every shard");
        }
        assert_eq!(client.commit(batch), 0);
    };
    for start in (0..SERIES).step_by(REQUEST) {
        send(start);
    }
    let added = |engine: &Aggregator| engine.metrics().added(MetricType::Gauge);
    assert_eq!((added(&a), added(&b)), (SERIES as u64, SERIES as u64));

    let mut next = 0;
    let mut group = c.benchmark_group("client_on_commit");
    group.throughput(Throughput::Elements(REQUEST as u64));
    group.bench_function("two_replicas/50k", |bench| {
        bench.iter(|| {
            send(next);
            next = (next + REQUEST) % SERIES;
        })
    });
    group.finish();
    let rejected: u64 = [&a, &b]
        .iter()
        .flat_map(|e| RejectReason::ALL.map(|reason| e.metrics().rejected(reason)))
        .sum();
    assert_eq!(rejected, 0, "every value was added");
    assert_eq!(added(&a), added(&b));
}

criterion_group!(benches, client_on_commit);
criterion_main!(benches);
