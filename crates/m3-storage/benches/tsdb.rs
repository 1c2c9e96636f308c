//! The time-series engine's parts, one sample at a time. Every result is checked.
//!
//! * `chunk/push/regular_scrape`: appending samples of a 15 s scrape of a slowly growing
//!   counter (one jittered scrape in ten) to chunks of 120; throughput in samples. Prints the
//!   encoded bytes per sample.
//! * `chunk/iter/regular_scrape`: reading them back.
//! * `chunk/bytes`: not timed; the encoded bytes per sample of two other kinds of series: a
//!   scrape whose every timestamp is a millisecond off the 15 s grid (as a scraper's clock
//!   gives; the rounding of `m3 bench`'s pacer does the same), and the outputs of 10 s windows
//!   of a 15 s scrape (window ends, 10 s and 20 s apart in turn), as an aggregated namespace
//!   stores them.
//! * `head/append/{100k,1M}`: batches of 2,000 samples, one per series in turn over N live
//!   series of 10 labels, each sample 15 s after the series' previous one, into a head that
//!   already holds every series (as after the first scrape); throughput in samples.
//! * `head/memory`: not timed; 100,000 series of 10 labels take 80 samples each as `m3 bench`
//!   sends them at full speed (a round every 250–350 ms, values growing by a per-series step,
//!   two series in three not integers), then the head's own estimate and the growth of RSS are
//!   printed per series and per sample, with the chunks' encoded bytes beside their buffers.
//! * `store/write_batch/{100k,1M}`: the same through [`Store::write_batch`]: the namespace's
//!   head applies the batch and its write-ahead log takes it in one append.
//! * `store/on_disk`: not timed; prints the bytes per sample of a regular scrape in the
//!   write-ahead log, then once compacted into blocks, chunks alone and with the blocks' index.
//! * `block/select_all/20k`: `Store::select` of every series once a block holds them (20,000
//!   series of 10 labels, 120 samples each, nothing left in the head); throughput in series.
//! * `block/select_one/20k`: the same for one series, found by an `=` matcher on a label only
//!   it carries.
//! * `block/memory`: not timed; the RSS an opened block's index takes per series (100,000
//!   series of 10 labels, four blocks), beside the index file's bytes per series; then the
//!   most the process held above that while opening the four, and while merging them.
//! * `block/open/20k`: opening a block of 20,000 series of 10 labels from its summary;
//!   `block/open_checked/20k`: the same block without a summary (as written before them), its
//!   index read and checked; throughput in index bytes.
//! * `block/merge/4x20k`: four blocks of the same 20,000 series, one chunk each, merged into
//!   one (chunks copied as they are); throughput in series. Prints the index bytes of the
//!   merged block and of its sources.
//! * `wal/append/2000`: one batch record of 2,000 samples' worth (16 bytes each plus a series
//!   reference) per append, as a remote-write request would make; throughput in samples.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::time::Duration;

use m3_storage::tsdb::block::{Block, write_block};
use m3_storage::tsdb::chunk::Chunk;
use m3_storage::tsdb::head::{Head, HeadOptions};
use m3_storage::tsdb::merge::merge_blocks;
use m3_storage::tsdb::wal::{Wal, WalOptions};
use m3_storage::{Labels, Matcher, NamespaceConfig, Store};

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

/// Samples of 100 series' chunks, 120 each: a counter growing by a per-series step, at times
/// `time_of(i)` for the series' i-th sample.
fn series_at(time_of: impl Fn(i64) -> i64) -> Vec<(i64, f64)> {
    let mut samples = Vec::with_capacity(SAMPLES);
    for series in 0..SAMPLES / CHUNK_SAMPLES {
        for i in 0..CHUNK_SAMPLES as i64 {
            let value = (series * 1000) as f64 + (i * (series as i64 % 7 + 1)) as f64;
            samples.push((time_of(i), value));
        }
    }
    samples
}

/// `samples` in chunks of [`CHUNK_SAMPLES`].
fn encode(samples: &[(i64, f64)]) -> Vec<Chunk> {
    samples
        .chunks(CHUNK_SAMPLES)
        .map(|part| {
            let mut chunk = Chunk::new();
            for &(t, v) in part {
                chunk.push(t, v).expect("increasing times");
            }
            chunk
        })
        .collect()
}

fn bytes_per_sample(samples: &[(i64, f64)]) -> f64 {
    let bytes: usize = encode(samples).iter().map(Chunk::encoded_len).sum();
    bytes as f64 / samples.len() as f64
}

fn chunks(c: &mut Criterion) {
    let samples = regular_scrape();
    let encoded = encode(&samples);
    println!(
        "chunk/regular_scrape: {:.2} bytes per sample",
        bytes_per_sample(&samples)
    );
    let jittered = series_at(|i| 1_700_000_000_000 + i * 15_000 + (i % 3) - 1);
    let window_ends =
        series_at(|i| 1_700_000_000_000 + (i / 2) * 30_000 + 10_000 + (i % 2) * 20_000);
    println!(
        "chunk/bytes: {:.2} bytes per sample with every time a millisecond off the grid, {:.2} for 10 s windows' outputs of a 15 s scrape",
        bytes_per_sample(&jittered),
        bytes_per_sample(&window_ends)
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

/// The process's resident memory (`VmRSS`), in bytes; 0 where /proc is not there.
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// The process's peak resident memory (`VmHWM`) since [`reset_peak_rss`], in bytes; 0 where
/// /proc is not there.
fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// Makes the peak resident memory the current one (Linux's `clear_refs`, value 5).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Batches of one sample per series in turn, each 15 s after the series' previous one, as
/// scrapes of `sets` arrive.
struct Scrape<'a> {
    sets: &'a [Labels],
    next: usize,
    round: i64,
    batch: Vec<(&'a Labels, i64, f64)>,
    size: usize,
}

impl<'a> Scrape<'a> {
    fn new(sets: &'a [Labels], size: usize) -> Scrape<'a> {
        Scrape {
            sets,
            next: 0,
            round: 1,
            batch: Vec::with_capacity(size),
            size,
        }
    }

    fn next_batch(&mut self) -> &[(&'a Labels, i64, f64)] {
        self.batch.clear();
        for _ in 0..self.size {
            self.batch.push((
                &self.sets[self.next],
                self.round * 15_000,
                self.round as f64,
            ));
            self.next += 1;
            if self.next == self.sets.len() {
                self.next = 0;
                self.round += 1;
            }
        }
        &self.batch
    }
}

fn head(c: &mut Criterion) {
    const BATCH: usize = 2000;
    let mut group = c.benchmark_group("head");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, count) in [("100k", 100_000usize), ("1M", 1_000_000)] {
        let sets = label_sets(count);
        let first: Vec<(&Labels, i64, f64)> = sets.iter().map(|l| (l, 0, 0.0)).collect();
        let before = rss_bytes();
        let mut head = Head::new(HeadOptions {
            out_of_order_window: 3_600_000,
            ..HeadOptions::default()
        });
        assert_eq!(head.append(&first).new_series, count);
        let grown = rss_bytes().saturating_sub(before);
        drop(first);
        let mut scrape = Scrape::new(&sets, BATCH);
        group.bench_function(format!("append/{name}"), |b| {
            b.iter(|| {
                let summary = head.append(scrape.next_batch());
                assert_eq!(summary.appended, BATCH);
                black_box(summary)
            })
        });
        println!(
            "head/{name}: {} series, about {:.0} bytes per series by its own estimate, RSS grew {:.0} bytes per series while they were created (one sample each)",
            head.series_count(),
            head.heap_bytes() as f64 / count as f64,
            grown as f64 / count as f64
        );
    }
    group.finish();
}

/// Memory of a head after a burst of irregular rounds. See the module docs.
fn head_memory(_: &mut Criterion) {
    const SERIES: usize = 100_000;
    const ROUNDS: i64 = 80;
    const BATCH: usize = 2000;
    let sets = label_sets(SERIES);
    let before = rss_bytes();
    let mut head = Head::new(HeadOptions {
        out_of_order_window: 3_600_000,
        ..HeadOptions::default()
    });
    let mut batch: Vec<(&Labels, i64, f64)> = Vec::with_capacity(BATCH);
    let mut time = 1_700_000_000_000i64;
    for round in 0..ROUNDS {
        // A round takes 250–350 ms, as at full speed; the step varies with the round.
        time += 250 + (round * 37) % 101;
        for (start, part) in sets.chunks(BATCH).enumerate() {
            batch.clear();
            for (offset, labels) in part.iter().enumerate() {
                let index = start * BATCH + offset;
                let value = round as f64 * ((index % 7) + 1) as f64 + (index % 3) as f64 * 0.25;
                batch.push((labels, time, value));
            }
            assert_eq!(head.append(&batch).appended, batch.len());
        }
    }
    let grown = rss_bytes().saturating_sub(before);
    let samples = (SERIES as i64 * ROUNDS) as f64;
    let stats = head.chunk_stats();
    println!(
        "head/memory: {SERIES} series x {ROUNDS} samples: about {:.0} bytes per series by its own estimate, RSS grew {:.0} per series ({:.2} per sample); chunks: {:.2} encoded bytes per sample in buffers of {:.2}",
        head.heap_bytes() as f64 / SERIES as f64,
        grown as f64 / SERIES as f64,
        grown as f64 / samples,
        stats.encoded_bytes as f64 / samples,
        stats.buffer_bytes as f64 / samples,
    );
}

/// A store in `dir` with one raw namespace, `raw`, keeping two days.
fn raw_store(dir: &std::path::Path) -> Store {
    Store::open(
        dir,
        vec![NamespaceConfig::unaggregated(
            "raw",
            Duration::from_secs(48 * 3600),
        )],
    )
    .expect("opens")
}

fn store(c: &mut Criterion) {
    const BATCH: usize = 2000;
    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, count) in [("100k", 100_000usize), ("1M", 1_000_000)] {
        let dir = tempfile::tempdir().expect("temp dir");
        let sets = label_sets(count);
        let store = raw_store(dir.path());
        for part in sets.chunks(BATCH) {
            let first: Vec<(&Labels, i64, f64)> = part.iter().map(|l| (l, 0, 0.0)).collect();
            store.write_batch("raw", &first).expect("writes");
        }
        let mut scrape = Scrape::new(&sets, BATCH);
        group.bench_function(format!("write_batch/{name}"), |b| {
            b.iter(|| {
                let summary = store
                    .write_batch("raw", scrape.next_batch())
                    .expect("writes");
                assert_eq!(summary.samples, BATCH as u64);
                black_box(summary)
            })
        });
    }
    group.finish();
}

/// Bytes on disk per sample once a regular scrape is in blocks: 10,000 series of 10 labels,
/// four hours of a 15 s scrape of growing counters (one scrape in ten jittered by a few ms),
/// written in batches of 2,000 and compacted. Prints the chunks' share and the blocks' whole
/// size (chunks and index: labels, chunk references, postings).
fn on_disk(_: &mut Criterion) {
    const SERIES: usize = 10_000;
    const SCRAPES: i64 = 4 * 240;
    let start = 1_700_000_000_000 / 7_200_000 * 7_200_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let sets = label_sets(SERIES);
    let store = raw_store(dir.path());
    let mut batch: Vec<(&Labels, i64, f64)> = Vec::with_capacity(2000);
    for scrape in 0..SCRAPES {
        for (i, labels) in sets.iter().enumerate() {
            let jitter = if scrape % 10 == 7 { (i % 5) as i64 } else { 0 };
            let value = (i * 1000) as f64 + (scrape * 2 + scrape % 5) as f64;
            batch.push((labels, start + scrape * 15_000 + jitter, value));
            if batch.len() == 2000 {
                store.write_batch("raw", &batch).expect("writes");
                batch.clear();
            }
        }
    }
    store.write_batch("raw", &batch).expect("writes");
    let samples = SERIES as u64 * SCRAPES as u64;
    let wal: u64 = std::fs::read_dir(dir.path().join("raw/wal"))
        .expect("the log")
        .map(|file| file.expect("entry").metadata().expect("metadata").len())
        .sum();
    println!(
        "store/on_disk/regular_scrape: the write-ahead log holds {:.2} bytes per sample before the cut",
        wal as f64 / samples as f64
    );
    let cut = store
        .compact(start + SCRAPES * 15_000 + 4 * 3_600_000)
        .expect("compacts");
    assert_eq!(cut, samples, "every sample is in a block");
    let mut chunks = 0u64;
    let mut whole = 0u64;
    for block in std::fs::read_dir(dir.path().join("raw/blocks")).expect("blocks") {
        for file in std::fs::read_dir(block.expect("entry").path()).expect("block") {
            let file = file.expect("entry");
            let len = file.metadata().expect("metadata").len();
            whole += len;
            if file.file_name() == "chunks" {
                chunks += len;
            }
        }
    }
    println!(
        "store/on_disk/regular_scrape: {:.2} bytes per sample in chunks, {:.2} with the index ({} samples)",
        chunks as f64 / samples as f64,
        whole as f64 / samples as f64,
        samples
    );
    let read = store.select("raw", &[], i64::MIN, i64::MAX).expect("reads");
    assert_eq!(
        read.iter().map(|s| s.samples.len() as u64).sum::<u64>(),
        samples,
        "the blocks read back whole"
    );
}

/// Writes a block of `sets`, each with one chunk of 120 samples from `start` (ms) on.
fn block_at(dir: &std::path::Path, sets: &[Labels], start: i64) {
    let chunks: Vec<_> = (0..sets.len())
        .map(|i| {
            let mut chunk = Chunk::new();
            for t in 0..CHUNK_SAMPLES as i64 {
                chunk
                    .push(start + t * 15_000, (i as i64 * 1000 + t) as f64)
                    .expect("increasing times");
            }
            chunk.seal()
        })
        .collect();
    let mut series: Vec<_> = sets
        .iter()
        .zip(&chunks)
        .map(|(l, c)| (l, vec![c]))
        .collect();
    let end = start + (CHUNK_SAMPLES as i64 - 1) * 15_000;
    write_block(dir, start, end, &mut series).expect("writes");
}

/// Merging blocks: four two-hour blocks of the same 20,000 series (one chunk each, the common
/// case whose chunks are copied) into one; throughput in series.
fn block_merge(c: &mut Criterion) {
    const SERIES: usize = 20_000;
    const BLOCKS: usize = 4;
    let dir = tempfile::tempdir().expect("temp dir");
    let sets = label_sets(SERIES);
    let blocks: Vec<Block> = (0..BLOCKS)
        .map(|b| {
            let path = dir.path().join(b.to_string());
            block_at(&path, &sets, b as i64 * 7_200_000);
            Block::open(&path).expect("opens")
        })
        .collect();
    let sources: Vec<&Block> = blocks.iter().collect();
    let out = dir.path().join("merged");
    let mut group = c.benchmark_group("block");
    group.sample_size(10);
    group.throughput(Throughput::Elements(SERIES as u64));
    // Block 0 again without its summary, as a block written before summaries.
    let unsummarised = dir.path().join("unsummarised");
    std::fs::create_dir(&unsummarised).expect("creates");
    for file in ["index", "chunks"] {
        std::fs::copy(dir.path().join("0").join(file), unsummarised.join(file)).expect("copies");
    }
    group.throughput(Throughput::Bytes(
        std::fs::metadata(dir.path().join("0/index"))
            .expect("an index")
            .len(),
    ));
    for (name, path) in [
        ("open/20k", dir.path().join("0")),
        ("open_checked/20k", unsummarised),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let block = Block::open(&path).expect("opens");
                assert_eq!(block.series_count(), SERIES);
                block
            })
        });
    }
    group.throughput(Throughput::Elements(SERIES as u64));
    group.bench_function("merge/4x20k", |b| {
        b.iter(|| {
            let merged = merge_blocks(&sources, &out).expect("merges");
            assert_eq!(merged.series, SERIES);
            assert_eq!(merged.samples, (SERIES * BLOCKS * CHUNK_SAMPLES) as u64);
            assert_eq!(merged.series_rewritten, 0);
            std::fs::remove_dir_all(&out).expect("removes");
        })
    });
    group.finish();
    let merged = merge_blocks(&sources, &out).expect("merges");
    let block = Block::open(&out).expect("opens");
    assert_eq!(block.sample_count(), merged.samples);
    let index =
        |path: &std::path::Path| std::fs::metadata(path.join("index")).expect("index").len();
    println!(
        "block/merge: index bytes {} for the merged block, {} for its four sources",
        index(&out),
        (0..BLOCKS)
            .map(|b| index(&dir.path().join(b.to_string())))
            .sum::<u64>()
    );
}

fn block_reads(c: &mut Criterion) {
    const SERIES: usize = 20_000;
    let start = 1_700_000_000_000 / 7_200_000 * 7_200_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let sets = label_sets(SERIES);
    let store = raw_store(dir.path());
    for t in 0..CHUNK_SAMPLES as i64 {
        for part in sets.chunks(2000) {
            let batch: Vec<(&Labels, i64, f64)> = part
                .iter()
                .enumerate()
                .map(|(i, l)| (l, start + t * 15_000, (i as i64 * 1000 + t) as f64))
                .collect();
            store.write_batch("raw", &batch).expect("writes");
        }
    }
    let cut = store.compact(start + 4 * 3_600_000).expect("compacts");
    assert_eq!(cut, (SERIES * CHUNK_SAMPLES) as u64, "all in one block");
    let mut group = c.benchmark_group("block");
    group.throughput(Throughput::Elements(SERIES as u64));
    group.bench_function("select_all/20k", |b| {
        b.iter(|| {
            let read = store.select("raw", &[], i64::MIN, i64::MAX).expect("reads");
            assert_eq!(read.len(), SERIES);
            black_box(read)
        })
    });
    group.throughput(Throughput::Elements(1));
    let one = [Matcher::equal("pod", format!("pod-{}", SERIES / 2))];
    group.bench_function("select_one/20k", |b| {
        b.iter(|| {
            let read = store
                .select("raw", &one, i64::MIN, i64::MAX)
                .expect("reads");
            assert_eq!(read.len(), 1);
            assert_eq!(read[0].samples.len(), CHUNK_SAMPLES);
            black_box(read)
        })
    });
    group.finish();
}

/// Not timed: the memory an opened block takes per series, and the most a process holds
/// while it opens blocks and while it merges them.
fn block_memory(_: &mut Criterion) {
    const SERIES: usize = 100_000;
    const BLOCKS: usize = 4;
    let dir = tempfile::tempdir().expect("temp dir");
    let sets = label_sets(SERIES);
    for b in 0..BLOCKS {
        block_at(&dir.path().join(b.to_string()), &sets, b as i64 * 7_200_000);
    }
    // Kept to the end: their memory, freed, would hide what opening and merging take.
    let _kept = sets;
    let index = std::fs::metadata(dir.path().join("0/index"))
        .expect("an index")
        .len();
    reset_peak_rss();
    let before = rss_bytes();
    let blocks: Vec<Block> = (0..BLOCKS)
        .map(|b| Block::open(&dir.path().join(b.to_string())).expect("opens"))
        .collect();
    let grown = rss_bytes().saturating_sub(before);
    let opening_peak = peak_rss_bytes().saturating_sub(before);
    println!(
        "block/memory: {:.1} bytes of RSS per series per open block ({} bytes of index file per series); {:.1} MB at most while opening",
        grown as f64 / (SERIES * BLOCKS) as f64,
        index / SERIES as u64,
        opening_peak as f64 / 1e6
    );
    assert_eq!(
        blocks.iter().map(Block::series_count).sum::<usize>(),
        SERIES * BLOCKS
    );
    let sources: Vec<&Block> = blocks.iter().collect();
    let out = dir.path().join("merged");
    reset_peak_rss();
    let before = rss_bytes();
    let merged = merge_blocks(&sources, &out).expect("merges");
    let merging_peak = peak_rss_bytes().saturating_sub(before);
    assert_eq!(merged.series, SERIES);
    let merged_index = std::fs::metadata(out.join("index"))
        .expect("an index")
        .len();
    println!(
        "block/memory: {:.1} MB at most while merging {BLOCKS} blocks of {SERIES} series (merged index {:.1} MB)",
        merging_peak as f64 / 1e6,
        merged_index as f64 / 1e6
    );
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

// The memory figures first, before other benchmarks leave freed memory for them to reuse.
criterion_group!(
    benches,
    block_memory,
    head_memory,
    chunks,
    head,
    store,
    on_disk,
    block_reads,
    block_merge,
    wal
);
criterion_main!(benches);
