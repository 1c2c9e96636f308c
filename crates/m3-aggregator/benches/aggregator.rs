//! Throughput of the add path and of window flushes.
//!
//! * `aggregator_add/timed_gauge/{100k,1M}`: timed gauges (default metadata: Last, 10s:2d)
//!   with N live series, one sample per series in turn; throughput in samples.
//! * `window_flush/untimed_counter/100k`: flushing one closed window of each of 100k series
//!   into reused output storage; throughput in windows (one output each).

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

use m3_aggregator::{AggregatedOutput, FlushMode, Metadatas};
use m3_metric::MetricType;

mod common;
use common::{S, T0};

const BATCH: usize = 10_000;

fn aggregator_add(c: &mut Criterion) {
    let mut group = c.benchmark_group("aggregator_add");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (label, n) in [("100k", 100_000usize), ("1M", 1_000_000)] {
        let ids = common::ids(n);
        let meta = common::metadatas();
        let agg = common::engine();
        let t = T0 + 5 * S;
        common::add_all(&agg, &ids, &meta, t, t);
        if n >= 1_000_000 {
            group.sample_size(10);
        }
        let mut next = 0usize;
        group.bench_function(format!("timed_gauge/{label}"), |b| {
            b.iter(|| {
                for _ in 0..BATCH {
                    let id = &ids[next];
                    next += 1;
                    if next == n {
                        next = 0;
                    }
                    let r = agg.add_timed(
                        MetricType::Gauge,
                        id,
                        t,
                        next as f64,
                        Metadatas::Staged(&meta),
                        t + S,
                    );
                    debug_assert!(r.is_ok());
                }
            });
        });
    }
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
                let now = T0 + window * 10 * S + S;
                for id in &ids {
                    let _ =
                        agg.add_untimed(MetricType::Counter, id, &[1.0], Metadatas::Default, now);
                }
                let out: Vec<AggregatedOutput> = Vec::with_capacity(n);
                (now + 10 * S, out)
            },
            |(flush_at, mut out)| {
                agg.flush(flush_at, FlushMode::Leader, &mut out);
                out
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

criterion_group!(benches, aggregator_add, window_flush);
criterion_main!(benches);
