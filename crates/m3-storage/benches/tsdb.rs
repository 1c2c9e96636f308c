//! The time-series engine's parts, one sample at a time. Every result is checked.
//!
//! * `chunk/push/regular_scrape`: appending samples of a 15 s scrape of a slowly growing
//!   counter (one jittered scrape in ten) to chunks of 120; throughput in samples. Prints the
//!   encoded bytes per sample.
//! * `chunk/iter/regular_scrape`: reading them back.
//! * `head/append/{100k,1M}`: batches of 2,000 samples, one per series in turn over N live
//!   series of 10 labels, each sample 15 s after the series' previous one, into a head that
//!   already holds every series (as after the first scrape); throughput in samples.
//! * `durable/append/100k`: the same as `head/append/100k` through a [`DurableHead`], which
//!   logs every batch (series records once, then a samples record) before applying it.
//! * `wal/append/2000`: one batch record of 2,000 samples' worth (16 bytes each plus a series
//!   reference) per append, as a remote-write request would make; throughput in samples.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use m3_storage::Labels;
use m3_storage::tsdb::chunk::Chunk;
use m3_storage::tsdb::durable::DurableHead;
use m3_storage::tsdb::head::{Head, HeadOptions};
use m3_storage::tsdb::wal::{Wal, WalOptions};

const CHUNK_SAMPLES: usize = 120;
const SAMPLES: usize = 120 * 100;

/// Samples of 100 series' chunks, 120 each: 15 s apart, a counter growing by 0–4.
fn regular_scrape() -> Vec<(i64, f64)> {
    let mut samples = Vec::with_capacity(SAMPLES);
    for series in 0..SAMPLES / CHUNK_SAMPLES {
        let mut value = (series * 1000) as f64;
        for i in 0..CHUNK_SAMPLES as i64 {
            let jitter = if i % 10 == 7 { (series % 5) as i64 } else { 0 };
            value += (i % 5) as f64;
            samples.push((1_700_000_000_000 + i * 15_000 + jitter, value));
        }
    }
    samples
}

fn chunks(c: &mut Criterion) {
    let samples = regular_scrape();
    let encoded: Vec<Chunk> = samples
        .chunks(CHUNK_SAMPLES)
        .map(|part| {
            let mut chunk = Chunk::new();
            for &(t, v) in part {
                chunk.push(t, v).expect("increasing times");
            }
            chunk
        })
        .collect();
    let bytes: usize = encoded.iter().map(Chunk::encoded_len).sum();
    println!(
        "chunk/regular_scrape: {:.2} bytes per sample",
        bytes as f64 / SAMPLES as f64
    );

    let mut group = c.benchmark_group("chunk");
    group.throughput(Throughput::Elements(SAMPLES as u64));
    group.bench_function("push/regular_scrape", |b| {
        b.iter(|| {
            let mut total = 0;
            for part in samples.chunks(CHUNK_SAMPLES) {
                let mut chunk = Chunk::new();
                for &(t, v) in part {
                    chunk.push(t, v).expect("increasing times");
                }
                total += chunk.len();
            }
            assert_eq!(total, SAMPLES);
            black_box(total)
        })
    });
    group.bench_function("iter/regular_scrape", |b| {
        b.iter(|| {
            let mut sum = 0.0;
            let mut count = 0;
            for chunk in &encoded {
                for (_, v) in chunk.iter() {
                    sum += v;
                    count += 1;
                }
            }
            assert_eq!(count, SAMPLES);
            black_box(sum)
        })
    });
    group.finish();
}

/// `count` Prometheus-shaped label sets of 10 labels.
fn label_sets(count: usize) -> Vec<Labels> {
    (0..count)
        .map(|i| {
            Labels::new([
                ("__name__".to_string(), format!("metric_{}", i % 100)),
                (
                    "instance".to_string(),
                    format!("10.0.{}.{}:9100", i / 250 % 256, i % 250),
                ),
                ("job".to_string(), format!("job-{}", i % 20)),
                ("namespace".to_string(), format!("ns-{}", i % 7)),
                ("pod".to_string(), format!("pod-{i}")),
                ("container".to_string(), "app".to_string()),
                ("cluster".to_string(), "prod-eu-1".to_string()),
                ("region".to_string(), "eu-west-1".to_string()),
                ("team".to_string(), format!("team-{}", i % 13)),
                ("le".to_string(), format!("{}", i % 11)),
            ])
            .expect("valid labels")
        })
        .collect()
}

fn head(c: &mut Criterion) {
    const BATCH: usize = 2000;
    let mut group = c.benchmark_group("head");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, count) in [("100k", 100_000usize), ("1M", 1_000_000)] {
        let sets = label_sets(count);
        let mut head = Head::new(HeadOptions {
            out_of_order_window: 3_600_000,
        });
        let first: Vec<(&Labels, i64, f64)> = sets.iter().map(|l| (l, 0, 0.0)).collect();
        assert_eq!(head.append(&first).new_series, count);
        drop(first);
        let mut next = 0usize;
        let mut round = 1i64;
        let mut batch: Vec<(&Labels, i64, f64)> = Vec::with_capacity(BATCH);
        group.bench_function(format!("append/{name}"), |b| {
            b.iter(|| {
                batch.clear();
                for _ in 0..BATCH {
                    batch.push((&sets[next], round * 15_000, round as f64));
                    next += 1;
                    if next == count {
                        next = 0;
                        round += 1;
                    }
                }
                let summary = head.append(&batch);
                assert_eq!(summary.appended, BATCH);
                black_box(summary)
            })
        });
        println!(
            "head/{name}: {} series, about {:.0} bytes per series",
            head.series_count(),
            head.heap_bytes() as f64 / count as f64
        );
    }
    group.finish();
}

fn durable(c: &mut Criterion) {
    const BATCH: usize = 2000;
    const SERIES: usize = 100_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let sets = label_sets(SERIES);
    let options = HeadOptions {
        out_of_order_window: 3_600_000,
    };
    let (mut head, _) =
        DurableHead::open(dir.path(), options, WalOptions::default()).expect("opens");
    for part in sets.chunks(BATCH) {
        let first: Vec<(&Labels, i64, f64)> = part.iter().map(|l| (l, 0, 0.0)).collect();
        head.append(&first).expect("appends");
    }
    let mut next = 0usize;
    let mut round = 1i64;
    let mut batch: Vec<(&Labels, i64, f64)> = Vec::with_capacity(BATCH);
    let mut group = c.benchmark_group("durable");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("append/100k", |b| {
        b.iter(|| {
            batch.clear();
            for _ in 0..BATCH {
                batch.push((&sets[next], round * 15_000, round as f64));
                next += 1;
                if next == SERIES {
                    next = 0;
                    round += 1;
                }
            }
            let summary = head.append(&batch).expect("appends");
            assert_eq!(summary.appended, BATCH);
            black_box(summary)
        })
    });
    group.finish();
}

fn wal(c: &mut Criterion) {
    const BATCH: usize = 2000;
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut wal, _) = Wal::open(dir.path(), WalOptions::default(), |_| {
        Ok::<(), std::convert::Infallible>(())
    })
    .expect("opens");
    // A batch record: per sample a 4-byte series reference, 8-byte time and 8-byte value.
    let record = vec![0x5au8; BATCH * 20];
    let mut group = c.benchmark_group("wal");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut appended = 0u64;
    group.bench_function("append/2000", |b| {
        b.iter(|| {
            wal.append(&[&record[..]]).expect("appends");
            appended += 1;
        })
    });
    group.finish();
    // The segments must replay to what was written.
    drop(wal);
    let mut records = 0u64;
    let (_, report) = Wal::open(dir.path(), WalOptions::default(), |r: &[u8]| {
        assert_eq!(r.len(), record.len());
        records += 1;
        Ok::<(), std::convert::Infallible>(())
    })
    .expect("replays");
    assert!(report.torn_tail.is_none());
    assert_eq!(records, appended, "every appended batch replays");
}

criterion_group!(benches, chunks, head, durable, wal);
criterion_main!(benches);
