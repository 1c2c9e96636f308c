//! A rawtcp byte stream, in two reads, into the server's frame reader and message decoder (the
//! in-place reader of timed metrics, batched into the engine; prost for the rest) and the
//! engine: every frame that decodes is applied to an aggregator owning every shard, then the
//! engine is flushed. The same bytes also go whole to `apply_whole_frames` (what an in-process
//! writer calls) with a known shard, right or wrong, into a second engine. Nothing may panic,
//! whatever the bytes.
#![no_main]

use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use m3_aggregator::{
    AggregatedOutput, Aggregator, AggregatorOptions, FlushMode, KnownShard, ShardAssignment,
};

const NOW: i64 = 1_700_000_000_000_000_000;

fuzz_target!(|data: &[u8]| {
    let aggregator = Aggregator::new(AggregatorOptions::default(), Arc::new(|_: &[u8]| 0));
    aggregator.set_shards(vec![ShardAssignment::unbounded(0)], 0);
    let mut decoder = m3_aggregator::ingest::MessageDecoder::default();
    // As the rawtcp server: the bytes arrive in two reads (cut where the first byte says), each
    // drained into the engine; a stream error ends the connection.
    let cut = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let mut buf = BytesMut::from(&data[..cut]);
    if decoder
        .apply_frames(&aggregator, &mut buf, 1 << 20, NOW, &mut |_| {})
        .is_ok()
    {
        buf.extend_from_slice(&data[cut..]);
        let _ = decoder.apply_frames(&aggregator, &mut buf, 1 << 20, NOW, &mut |_| {});
    }
    flush_all(&aggregator);

    // Four shards; the known shard and its count come from the second and third bytes, so
    // some are right, some out of range and some of another count (ignored).
    let sharded = Aggregator::new(
        AggregatorOptions::default(),
        Arc::new(|id: &[u8]| id.len() as u32 % 4),
    )
    .with_murmur3_shard_count(Arc::new(AtomicU32::new(4)));
    sharded.set_shards((0..4).map(ShardAssignment::unbounded).collect(), 0);
    let known = KnownShard {
        shard: data.get(1).map_or(0, |&b| u32::from(b % 6)),
        num_shards: data.get(2).map_or(4, |&b| 4 + u32::from(b % 2) * 4),
    };
    let mut decoder = m3_aggregator::ingest::MessageDecoder::default();
    let _ = decoder.apply_whole_frames(&sharded, Some(known), data, 1 << 20, NOW, &mut |_| {});
    flush_all(&sharded);
});

/// Flushes `aggregator` at the end of time: every window must close.
fn flush_all(aggregator: &Aggregator) {
    let mut out: Vec<AggregatedOutput> = Vec::new();
    // A storage policy may have any resolution (days, years): only the end of time is past
    // every window's end.
    let flushed = aggregator.flush(i64::MAX, FlushMode::LeaderFinal, &mut out);
    assert_eq!(flushed.outputs, out.len());
    aggregator.expire_entries(i64::MAX);
    assert_eq!(
        aggregator.stats().windows,
        0,
        "a final flush at the end of time leaves no window open"
    );
}
