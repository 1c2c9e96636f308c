//! Throughput of the add path and of window flushes. Every add and flush is checked: a bench
//! whose samples were rejected would measure the rejection path.
//!
//! * `aggregator_add/timed_gauge/{100k,1M}`: timed gauges (default metadata: Last, 10s:2d)
//!   with N live series, one sample per series in turn, each into a window that is already
//!   open; throughput in samples.
//! * `aggregator_add/timed_gauge_new_window/100k`: as production sees it, where a series is
//!   scraped about once per resolution, so most adds open a new window: every pass over the
//!   series moves one resolution on, and the ended windows are flushed between passes (the
//!   flush is not timed).
//! * `aggregator_add/shard_runs/{one_by_one/100k,batched/100k,batched/1M}`: the same adds in
//!   the order a coordinator sends them (each 2,000 series of a request grouped by shard),
//!   added one by one with `add_timed` or 250 at a time (about one 64 KiB rawtcp read) with
//!   `add_timed_batch`.
//! * `aggregator_add/new_series/100k`: 100k series seen for the first time, one sample each,
//!   into an engine that holds none (a fresh one per iteration, made and dropped untimed):
//!   every add creates an entry and stores its ID through the aggregator's ID dictionary;
//!   throughput in samples.
//! * `window_flush/untimed_counter/100k`: flushing one closed window of each of 100k series
//!   into reused output storage; throughput in windows (one output each).

use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

use m3_aggregator::{
    AggregatedOutput, Aggregator, AggregatorOptions, FlushMode, Metadatas, TimedSample,
};
use m3_metric::MetricType;
use m3_proto::metricpb::StagedMetadatas;

#[allow(dead_code)] // each benchmark uses a part of the shared setup
mod common;
use common::{S, T0};

const BATCH: usize = 10_000;
/// The storage policy's resolution (`common::metadatas`).
const RESOLUTION: i64 = 10 * S;

/// Adds one timed gauge sample at `t` to `BATCH` series from `next` on, in turn.
fn add_batch(
    agg: &Aggregator,
    ids: &[Vec<u8>],
    meta: &StagedMetadatas,
    next: &mut usize,
    t: i64,
    now: i64,
) {
    for _ in 0..BATCH {
        let id = &ids[*next];
        *next += 1;
        if *next == ids.len() {
            *next = 0;
        }
        if let Err(e) = agg.add_timed(
            MetricType::Gauge,
            id,
            t,
            *next as f64,
            Metadatas::Staged(meta),
            now,
        ) {
            panic!("bench sample rejected: {e}");
        }
    }
}

/// Timed values read from one rawtcp connection at a time.
const READ_BATCH: usize = 250;

/// `aggregator_add/shard_runs/*`: see the module docs.
fn shard_runs(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    meta: &StagedMetadatas,
) {
    // 1M series do not fit in the processor's caches: there the lookups wait on memory.
    for (size, n, batched) in [
        ("100k", 100_000, false),
        ("100k", 100_000, true),
        ("1M", 1_000_000, true),
    ] {
        let mut ids = common::ids(n);
        for request in ids.chunks_mut(2000) {
            request.sort_by_key(|id| m3_cluster::shard_for(id, common::NUM_SHARDS));
        }
        let t = T0 + 5 * S;
        let agg = common::engine();
        common::add_all(&agg, &ids, meta, t, t);
        let mut next = 0usize;
        let name = if batched { "batched" } else { "one_by_one" };
        group.bench_function(format!("shard_runs/{name}/{size}"), |b| {
            b.iter(|| {
                if !batched {
                    add_batch(&agg, &ids, meta, &mut next, t, t + S);
                    return;
                }
                for _ in 0..BATCH / READ_BATCH {
                    let end = (next + READ_BATCH).min(ids.len());
                    let samples: Vec<TimedSample<'_>> = ids[next..end]
                        .iter()
                        .map(|id| TimedSample {
                            metric_type: MetricType::Gauge,
                            id,
                            time_nanos: t,
                            value: 1.0,
                            metadatas: Metadatas::Staged(meta),
                        })
                        .collect();
                    agg.add_timed_batch(&samples, t + S, &mut |_, e| {
                        panic!("bench sample rejected: {e}")
                    });
                    next = if end == ids.len() { 0 } else { end };
                }
            });
        });
    }
}

fn aggregator_add(c: &mut Criterion) {
    let mut group = c.benchmark_group("aggregator_add");
    group.throughput(Throughput::Elements(BATCH as u64));
    let meta = common::metadatas();
    for (label, n) in [("100k", 100_000usize), ("1M", 1_000_000)] {
        let ids = common::ids(n);
        let agg = common::engine();
        let t = T0 + 5 * S;
        common::add_all(&agg, &ids, &meta, t, t);
        if n >= 1_000_000 {
            group.sample_size(10);
        }
        let mut next = 0usize;
        group.bench_function(format!("timed_gauge/{label}"), |b| {
            b.iter(|| add_batch(&agg, &ids, &meta, &mut next, t, t + S));
        });
    }

    shard_runs(&mut group, &meta);

    let n = 100_000usize;
    let ids = common::ids(n);
    // A short past buffer, so the flush between passes closes the windows two passes back and
    // the engine holds about as many windows as a production one does.
    let agg = common::engine_with(AggregatorOptions {
        buffer_past: Duration::from_secs(5),
        ..AggregatorOptions::default()
    });
    let mut pass_start = T0 + 5 * S;
    let mut next = 0usize;
    let mut outputs: Vec<AggregatedOutput> = Vec::with_capacity(n);
    let mut ran = false;
    group.bench_function("timed_gauge_new_window/100k", |b| {
        b.iter_custom(|iterations| {
            ran = true;
            let mut timed = Duration::ZERO;
            for _ in 0..iterations {
                let started = Instant::now();
                add_batch(&agg, &ids, &meta, &mut next, pass_start, pass_start + S);
                timed += started.elapsed();
                if next < BATCH {
                    // A pass over every series ended: the next one is a resolution later.
                    pass_start += RESOLUTION;
                    outputs.clear();
                    agg.flush(pass_start, FlushMode::Leader, &mut outputs);
                }
            }
            timed
        });
    });
    assert!(
        !ran || agg.metrics().outputs_flushed() > 0,
        "the new-window bench flushed nothing: windows piled up instead"
    );

    group.throughput(Throughput::Elements(n as u64));
    group.sample_size(10);
    let t = T0 + 5 * S;
    group.bench_function("new_series/100k", |b| {
        b.iter_batched(
            common::engine,
            |agg| {
                common::add_all(&agg, &ids, &meta, t, t);
                assert_eq!(agg.metrics().entries_live(), n as i64);
                agg
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

fn window_flush(c: &mut Criterion) {
    let mut group = c.benchmark_group("window_flush");
    let n = 100_000usize;
    group.throughput(Throughput::Elements(n as u64));
    let ids = common::ids(n);
    let agg = common::engine();
    let mut window = 0i64;
    group.bench_function("untimed_counter/100k", |b| {
        b.iter_batched(
            || {
                // One fresh window per series, closed by the flush below.
                window += 1;
                let now = T0 + window * RESOLUTION + S;
                for id in &ids {
                    if let Err(e) =
                        agg.add_untimed(MetricType::Counter, id, &[1.0], Metadatas::Default, now)
                    {
                        panic!("bench sample rejected: {e}");
                    }
                }
                let out: Vec<AggregatedOutput> = Vec::with_capacity(n);
                (now + RESOLUTION, out)
            },
            |(flush_at, mut out)| {
                agg.flush(flush_at, FlushMode::Leader, &mut out);
                assert_eq!(out.len(), n, "one output per series and window");
                out
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

criterion_group!(benches, aggregator_add, window_flush);
criterion_main!(benches);
