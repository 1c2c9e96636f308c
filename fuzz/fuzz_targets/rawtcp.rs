//! A rawtcp byte stream, in two reads, into the server's frame reader and message decoder (the
//! in-place reader of timed metrics, batched into the engine; prost for the rest) and the
//! engine: every frame that decodes is applied to an aggregator owning every shard, then the
//! engine is flushed. Nothing may panic, whatever the bytes.
#![no_main]

use std::sync::Arc;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use m3_aggregator::{AggregatedOutput, Aggregator, AggregatorOptions, FlushMode, ShardAssignment};

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
});
