//! The coordinator as a relay: one Prometheus-shaped remote-write request (2000 series, ten
//! labels, one sample each) through the whole write path with no store — snappy, decode,
//! validation, rule match, metric ID, shard, frame encoding into both replicas' buffers, queueing
//! — with the two aggregator instances of a 64-shard RF 2 placement as loopback sockets whose
//! readers discard what they get. The series of `SERIES_TOTAL` rotate through the requests as
//! a Prometheus fleet's do, so per-series caches see the same reuse they would. Throughput is in
//! samples per second; `scripts/bench-relay-vs-vmagent.sh` measures the same path end to end
//! next to vmagent.

#[allow(dead_code)] // each benchmark uses a part of the shared setup
mod common;

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use common::{SERIES, prometheus_shaped_labels};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use m3_aggregator::client::{AggregatorClient, ClientOptions};
use m3_cluster::placement::{Instance, Placement, Shard, ShardState};
use m3_coordinator::config::{ValidNamespace, WriteBuffersConfig};
use m3_coordinator::downsample::Downsampler;
use m3_coordinator::metrics::CoordinatorMetrics;
use m3_coordinator::write::WritePath;
use m3_proto::Message;
use m3_proto::prometheus::{Sample, TimeSeries, WriteRequest};

/// Distinct series over all requests (the relay script's default).
const SERIES_TOTAL: usize = 50_000;
const NOW_MS: i64 = 1_700_000_000_000;

/// A loopback listener whose every connection is read and discarded on its own thread.
fn discarding_instance() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    let endpoint = listener.local_addr().expect("a bound address").to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    endpoint
}

fn placement(endpoints: &[String]) -> Placement {
    let mut placement = Placement {
        num_shards: 64,
        replica_factor: endpoints.len() as u32,
        is_sharded: true,
        is_mirrored: true,
        ..Placement::default()
    };
    for (i, endpoint) in endpoints.iter().enumerate() {
        let id = format!("instance-{i}");
        let mut instance = Instance::new(&id).with_endpoint(endpoint.clone());
        instance.shards = (0..64)
            .map(|s| Shard::new(s, ShardState::Available))
            .collect();
        placement.instances.insert(id, instance);
    }
    placement
}

/// Request `index` of the rotation: series `index * SERIES ..` of the fleet, at `NOW_MS`.
fn request(index: usize) -> Vec<u8> {
    let timeseries = (0..SERIES)
        .map(|j| TimeSeries {
            labels: prometheus_shaped_labels((index * SERIES + j) % SERIES_TOTAL),
            samples: vec![Sample {
                value: j as f64,
                timestamp: NOW_MS,
            }],
        })
        .collect();
    snap::raw::Encoder::new()
        .compress_vec(&WriteRequest { timeseries }.encode_to_vec())
        .expect("compressing a generated request")
}

fn relay(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime for the client's writers");
    let _entered = runtime.enter();
    let metrics = CoordinatorMetrics::default();
    let options = ClientOptions {
        // The readers keep up; a bound this large never refuses, so every iteration does the
        // whole job.
        max_queue_bytes: 1 << 30,
        ..ClientOptions::default()
    };
    let client = AggregatorClient::new(options, Arc::new(metrics.clone()));
    client.update_placement(&placement(&[discarding_instance(), discarding_instance()]));
    let namespaces = [ValidNamespace {
        name: "agg_10s_2d".into(),
        policy: Some("10s:2d".parse().expect("a storage policy")),
        retention: Duration::from_secs(172_800),
        downsample_all: true,
        read_only: false,
        buffer_past: None,
        buffer_future: None,
    }];
    let path = WritePath::new(
        None,
        None,
        Downsampler::from_namespaces(&namespaces),
        Some(Arc::clone(&client)),
        WriteBuffersConfig::default(),
        metrics,
    );
    let requests: Vec<Vec<u8>> = (0..SERIES_TOTAL / SERIES).map(request).collect();
    let mut group = c.benchmark_group("relay");
    group.throughput(Throughput::Elements(SERIES as u64));
    group.bench_function(
        BenchmarkId::new("write_path_to_2_replicas", SERIES_TOTAL),
        |b| {
            let mut next = 0;
            b.iter(|| {
                let outcome = path
                    .write(&requests[next % requests.len()], NOW_MS * 1_000_000)
                    .expect("the relay takes the request");
                assert_eq!(outcome.forwarded, SERIES, "every sample forwarded");
                next += 1;
            });
        },
    );
    group.finish();
    drop(_entered);
}

criterion_group!(benches, relay);
criterion_main!(benches);
