//! An m3msg byte stream as the coordinator's ingest reads it: frames, `msgpb.Message`, the
//! `AggregatedMetric` payload and the tag-encoded ID turned into labels. Nothing may panic.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use m3_proto::Message;
use m3_proto::metricpb::AggregatedMetric;
use m3_proto::msgpb;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = m3_proto::framing::next_m3msg_frame(&mut buf, 1 << 20) {
        if let Ok(message) = msgpb::Message::decode(frame.clone()) {
            if let Ok(metric) = AggregatedMetric::decode(message.value) {
                if let Some(timed) = metric.metric.and_then(|m| m.timed_metric) {
                    let _ = m3_coordinator::ingest::labels_of(&timed.id);
                }
            }
        }
        let _ = msgpb::Ack::decode(frame);
    }
    let _ = m3_coordinator::ingest::labels_of(data);
    let _ = m3_metric::id::decode_tags(data);
});
