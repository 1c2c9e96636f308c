//! From a decoded `MetricWithMetadatas` to the engine call its type names.
//!
//! Shared by the rawtcp server and (later) the m3msg server, so both treat every message type
//! the same way:
//!
//! | `type` | field | engine call |
//! |---|---|---|
//! | 1 counter | `counter_with_metadatas` | `add_untimed(Counter, [value])` |
//! | 2 batch timer | `batch_timer_with_metadatas` | `add_untimed(Timer, values)` |
//! | 3 gauge | `gauge_with_metadatas` | `add_untimed(Gauge, [value])` |
//! | 5 timed + `TimedMetadata` | `timed_metric_with_metadata` | `add_timed` with that one policy |
//! | 6 timed + staged | `timed_metric_with_metadatas` | `add_timed` with the staged metadatas |
//! | 4 forwarded | `forwarded_metric_with_metadata` | `add_forwarded`: a rollup's values from another aggregator's leader |
//! | 7 passthrough | `timed_metric_with_storage_policy` | `add_passthrough`: stored as given, by the leader only |
//!
//! A message whose type names a field that is absent is counted as `malformed_message`.
//!
//! [`MessageDecoder`] is the entry for raw message bytes. Type 6 — what the coordinator sends
//! for every sample — is read in place: the metric's fields borrowed, the metadata decoded only
//! when its bytes differ from those already decoded (the previous message's, or for a stream
//! those of the messages waiting; the coordinator sends the same metadata for every series its
//! rules treat alike). Every other message is decoded whole with prost.
//!
//! A stream (rawtcp) hands its read buffer to [`MessageDecoder::apply_frames`], which reads the
//! frames in place and applies them all before it returns: type 6 messages wait and
//! go to the engine together ([`Aggregator::add_timed_batch`]), which shares one shard lock
//! among a shard's values; any other message first applies what waits, so a stream's messages
//! are applied in order. A sender in this process hands over buffers of whole frames instead
//! ([`MessageDecoder::apply_whole_frames`]), read the same way, with the shard of their
//! metrics when it knows it.

use std::ops::Range;

use bytes::{Buf, BytesMut};
use m3_metric::{AggregationId, MetricType, StoragePolicy};
use m3_proto::framing::rawtcp_frame_at;
use m3_proto::metricpb::{self, metric_with_metadatas::Type};

use crate::aggregator::{Aggregator, ForwardedWrite, KnownShard, TimedSample};
use crate::error::{AddError, RejectReason};
use crate::flush::AggregatedOutput;
use crate::metadata::Metadatas;

/// Why a message was not (fully) applied. Every case is already counted when returned.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IngestError {
    /// The engine rejected (part of) the write.
    #[error(transparent)]
    Add(#[from] AddError),
    /// The message lacks the field its type names, or names an unknown metric type.
    #[error("malformed {message_type} message: {what}")]
    Malformed {
        /// The envelope type.
        message_type: &'static str,
        /// What is missing.
        what: &'static str,
    },
    /// A type value outside the enum.
    #[error("unrecognized message type {0}")]
    UnknownType(i32),
}

/// Why a rawtcp stream cannot be read on: its position is lost, so it must close.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// A length prefix that is malformed, not positive or over the maximum message size.
    #[error("rawtcp frame error: {0}")]
    Frame(#[from] m3_proto::framing::FrameError),
    /// A message that is not a `MetricWithMetadatas`.
    #[error("rawtcp message does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    /// Bytes that should hold whole frames end inside one.
    #[error("rawtcp frames end inside a frame: {trailing} bytes after the last whole frame")]
    Truncated {
        /// The bytes of the partial frame.
        trailing: usize,
    },
}

/// Most timed messages [`MessageDecoder::apply_frames`] holds before it applies them.
pub const MAX_QUEUED: usize = 1024;
/// Most distinct metadatas the queued messages may carry; a message with one more applies
/// those queued first.
const MAX_QUEUED_METADATAS: usize = 8;

/// Decodes and applies messages, one connection or consumer at a time (it keeps the last
/// metadata it decoded, and for [`apply_frames`](Self::apply_frames) the few the waiting
/// messages carry).
#[derive(Debug, Default)]
pub struct MessageDecoder {
    /// The encoded bytes of `metadatas`.
    metadatas_bytes: Vec<u8>,
    metadatas: metricpb::StagedMetadatas,
    queued: Vec<QueuedTimed>,
    /// The distinct metadatas of the queued messages (the first `used`), each with its
    /// encoded bytes; the rest are kept from earlier batches to be found again undecoded.
    queued_metadatas: Vec<(Vec<u8>, metricpb::StagedMetadatas)>,
    used_metadatas: usize,
}

/// A type 6 message waiting in [`MessageDecoder::apply_frames`]: where its ID is in the
/// stream, and which of the queued metadatas it carries.
#[derive(Debug, Clone)]
struct QueuedTimed {
    metric_type: MetricType,
    id: Range<usize>,
    time_nanos: i64,
    value: f64,
    metadatas: Option<usize>,
}

/// What [`MessageDecoder::read_frames`] did with a stream.
struct FramesRead {
    /// The bytes of the frames applied (and of the one that failed, if any).
    taken: usize,
    /// The whole length of the partial frame at the end, prefix included.
    partial_frame_len: Option<usize>,
    result: Result<(), StreamError>,
}

/// Where `inner`, a slice of `outer`, lies in it.
fn range_within(outer: &[u8], inner: &[u8]) -> Range<usize> {
    let start = (inner.as_ptr() as usize).wrapping_sub(outer.as_ptr() as usize);
    start..start.wrapping_add(inner.len())
}

impl MessageDecoder {
    /// Applies every whole rawtcp frame at the front of `buf` and removes it, leaving a partial
    /// frame at the end for the next read (with room reserved for the rest of it). Everything
    /// taken is applied before this returns, in stream order; `rejected` hears of every message
    /// not (wholly) applied, all of them counted.
    ///
    /// The frames are read where they lie: a timed message waits as the place of its ID in
    /// `buf`, so nothing is copied or reference-counted per frame, and `buf` gives up the
    /// applied frames once they all went to the engine.
    ///
    /// # Errors
    /// [`StreamError`] at a bad length prefix or a message that does not decode (neither
    /// counted here: the caller closes the stream and counts it); what came before it is
    /// applied.
    pub fn apply_frames(
        &mut self,
        aggregator: &Aggregator,
        buf: &mut BytesMut,
        max_message_size: usize,
        now_nanos: i64,
        rejected: &mut dyn FnMut(IngestError),
    ) -> Result<(), StreamError> {
        let read = self.read_frames(aggregator, None, buf, max_message_size, now_nanos, rejected);
        buf.advance(read.taken);
        if let Some(len) = read.partial_frame_len {
            buf.reserve(len.saturating_sub(buf.len()));
        }
        read.result
    }

    /// Applies `frames`, which hold whole rawtcp frames only (what a client wrote into one
    /// buffer), in order; `rejected` hears of every message not (wholly) applied, all of them
    /// counted. For a sender in this process: no stream carries a frame on to the next call,
    /// and it may know the shard of every metric in `frames` (`known`, see
    /// [`Aggregator::add_timed_batch_of_shard`]).
    ///
    /// # Errors
    /// As [`apply_frames`](Self::apply_frames), and [`StreamError::Truncated`] when `frames`
    /// ends inside a frame; what came before is applied.
    pub fn apply_whole_frames(
        &mut self,
        aggregator: &Aggregator,
        known: Option<KnownShard>,
        frames: &[u8],
        max_message_size: usize,
        now_nanos: i64,
        rejected: &mut dyn FnMut(IngestError),
    ) -> Result<(), StreamError> {
        let read = self.read_frames(
            aggregator,
            known,
            frames,
            max_message_size,
            now_nanos,
            rejected,
        );
        read.result?;
        match frames.len() - read.taken {
            0 => Ok(()),
            trailing => Err(StreamError::Truncated { trailing }),
        }
    }

    /// Applies the whole frames at the front of `stream`, stopping at its end, at a partial
    /// frame or at the first error.
    fn read_frames(
        &mut self,
        aggregator: &Aggregator,
        known: Option<KnownShard>,
        stream: &[u8],
        max_message_size: usize,
        now_nanos: i64,
        rejected: &mut dyn FnMut(IngestError),
    ) -> FramesRead {
        let mut taken = 0;
        let mut partial_frame_len = None;
        let result = loop {
            match rawtcp_frame_at(&stream[taken..], max_message_size) {
                Ok(Some(frame)) if frame.end() <= stream.len() - taken => {
                    let payload = taken + frame.prefix_len..taken + frame.end();
                    taken += frame.end();
                    if let Err(e) =
                        self.take(aggregator, known, stream, payload, now_nanos, rejected)
                    {
                        break Err(StreamError::Decode(e));
                    }
                }
                Ok(Some(frame)) => {
                    partial_frame_len = Some(frame.end());
                    break Ok(());
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(StreamError::Frame(e)),
            }
        };
        self.flush(aggregator, known, stream, now_nanos, rejected);
        FramesRead {
            taken,
            partial_frame_len,
            result,
        }
    }

    /// Takes the message at `payload` of `stream`: a type 6 message waits for
    /// [`flush`](Self::flush) (which applies what waits first when the queue is full); any
    /// other message applies what waits, then itself.
    fn take(
        &mut self,
        aggregator: &Aggregator,
        known: Option<KnownShard>,
        stream: &[u8],
        payload: Range<usize>,
        now_nanos: i64,
        rejected: &mut dyn FnMut(IngestError),
    ) -> Result<(), prost::DecodeError> {
        use prost::Message;
        let message = &stream[payload];
        let Some(timed) = m3_proto::timed_frame::read_timed_metric_message(message) else {
            self.flush(aggregator, known, stream, now_nanos, rejected);
            let decoded = metricpb::MetricWithMetadatas::decode(message)?;
            if let Err(e) = apply(aggregator, &decoded, now_nanos) {
                rejected(e);
            }
            return Ok(());
        };
        if self.queued.len() >= MAX_QUEUED {
            self.flush(aggregator, known, stream, now_nanos, rejected);
        }
        let metadatas = match timed.metadatas {
            None => None,
            Some(bytes) => {
                let seen = self.queued_metadatas[..self.used_metadatas]
                    .iter()
                    .position(|(b, _)| b.as_slice() == bytes);
                match seen {
                    Some(i) => Some(i),
                    None => {
                        if self.used_metadatas == MAX_QUEUED_METADATAS {
                            self.flush(aggregator, known, stream, now_nanos, rejected);
                        }
                        let i = self.used_metadatas;
                        if self.queued_metadatas.len() == i {
                            self.queued_metadatas.push(Default::default());
                        }
                        let slot = &mut self.queued_metadatas[i];
                        if slot.0.as_slice() != bytes {
                            let decoded = match metricpb::StagedMetadatas::decode(bytes) {
                                Ok(decoded) => decoded,
                                Err(e) => {
                                    self.flush(aggregator, known, stream, now_nanos, rejected);
                                    return Err(e);
                                }
                            };
                            slot.1 = decoded;
                            slot.0.clear();
                            slot.0.extend_from_slice(bytes);
                        }
                        self.used_metadatas += 1;
                        Some(i)
                    }
                }
            }
        };
        // Checked after the metadata decoded, as `apply` does: bytes that do not decode close
        // the stream whatever the metric type says.
        let Some(metric_type) = MetricType::from_proto(timed.metric_type) else {
            rejected(malformed_timed(aggregator));
            return Ok(());
        };
        self.queued.push(QueuedTimed {
            metric_type,
            id: range_within(stream, timed.id),
            time_nanos: timed.time_nanos,
            value: timed.value,
            metadatas,
        });
        Ok(())
    }

    /// Applies the messages [`take`](Self::take) queued from `stream`, telling `rejected` of
    /// those not (wholly) applied.
    fn flush(
        &mut self,
        aggregator: &Aggregator,
        known: Option<KnownShard>,
        stream: &[u8],
        now_nanos: i64,
        rejected: &mut dyn FnMut(IngestError),
    ) {
        if self.queued.is_empty() {
            return;
        }
        let metadatas = &self.queued_metadatas;
        let samples: Vec<TimedSample<'_>> = self
            .queued
            .iter()
            .map(|q| TimedSample {
                metric_type: q.metric_type,
                // A range the reader found inside `stream`.
                id: stream.get(q.id.clone()).unwrap_or_default(),
                time_nanos: q.time_nanos,
                value: q.value,
                metadatas: match q.metadatas {
                    Some(i) => metadatas
                        .get(i)
                        .map_or(Metadatas::Default, |m| Metadatas::Staged(&m.1)),
                    None => Metadatas::Default,
                },
            })
            .collect();
        aggregator.add_timed_batch_of_shard(known, &samples, now_nanos, &mut |_, e| {
            rejected(e.into());
        });
        self.queued.clear();
        self.used_metadatas = 0;
    }

    /// Decodes `message` (one frame's payload) and applies it at `now_nanos`.
    ///
    /// # Errors
    /// [`prost::DecodeError`] when the bytes are not a `MetricWithMetadatas` (not counted:
    /// the caller decides what a decode error costs the stream); `Ok(Err)` as [`apply`].
    pub fn apply(
        &mut self,
        aggregator: &Aggregator,
        message: &[u8],
        now_nanos: i64,
    ) -> Result<Result<(), IngestError>, prost::DecodeError> {
        use prost::Message;
        let Some(timed) = m3_proto::timed_frame::read_timed_metric_message(message) else {
            let decoded = metricpb::MetricWithMetadatas::decode(message)?;
            return Ok(apply(aggregator, &decoded, now_nanos));
        };
        let metadatas = match timed.metadatas {
            None => Metadatas::Default,
            Some(bytes) => {
                if bytes != self.metadatas_bytes.as_slice() {
                    self.metadatas = metricpb::StagedMetadatas::decode(bytes)?;
                    self.metadatas_bytes.clear();
                    self.metadatas_bytes.extend_from_slice(bytes);
                }
                Metadatas::Staged(&self.metadatas)
            }
        };
        let Some(metric_type) = MetricType::from_proto(timed.metric_type) else {
            return Ok(Err(malformed_timed(aggregator)));
        };
        Ok(aggregator
            .add_timed(
                metric_type,
                timed.id,
                timed.time_nanos,
                timed.value,
                metadatas,
                now_nanos,
            )
            .map_err(IngestError::from))
    }
}

/// A type 6 message with a metric type outside the enum: counted, and the error.
fn malformed_timed(aggregator: &Aggregator) -> IngestError {
    aggregator
        .metrics()
        .record_rejected(RejectReason::MalformedMessage, 1);
    IngestError::Malformed {
        message_type: Type::TimedMetricWithMetadatas.as_str_name(),
        what: "metric type",
    }
}

fn staged(m: Option<&metricpb::StagedMetadatas>) -> Metadatas<'_> {
    m.map_or(Metadatas::Default, Metadatas::Staged)
}

/// Applies one message to `aggregator` at server time `now_nanos`.
///
/// # Errors
/// See [`IngestError`]; the caller only needs to log, the counting is done.
pub fn apply(
    aggregator: &Aggregator,
    msg: &metricpb::MetricWithMetadatas,
    now_nanos: i64,
) -> Result<(), IngestError> {
    let metrics = aggregator.metrics();
    let malformed = |message_type: &'static str, what: &'static str| {
        metrics.record_rejected(RejectReason::MalformedMessage, 1);
        IngestError::Malformed { message_type, what }
    };
    let Ok(kind) = Type::try_from(msg.r#type) else {
        metrics.record_rejected(RejectReason::UnsupportedMessageType, 1);
        return Err(IngestError::UnknownType(msg.r#type));
    };
    let name = kind.as_str_name();
    match kind {
        Type::CounterWithMetadatas => {
            let m = msg.counter_with_metadatas.as_ref();
            let c = m
                .and_then(|m| m.counter.as_ref())
                .ok_or_else(|| malformed(name, "counter"))?;
            let metadatas = staged(m.and_then(|m| m.metadatas.as_ref()));
            aggregator.add_untimed(
                MetricType::Counter,
                &c.id,
                &[c.value as f64],
                metadatas,
                now_nanos,
            )?;
        }
        Type::BatchTimerWithMetadatas => {
            let m = msg.batch_timer_with_metadatas.as_ref();
            let t = m
                .and_then(|m| m.batch_timer.as_ref())
                .ok_or_else(|| malformed(name, "batch_timer"))?;
            let metadatas = staged(m.and_then(|m| m.metadatas.as_ref()));
            aggregator.add_untimed(MetricType::Timer, &t.id, &t.values, metadatas, now_nanos)?;
        }
        Type::GaugeWithMetadatas => {
            let m = msg.gauge_with_metadatas.as_ref();
            let g = m
                .and_then(|m| m.gauge.as_ref())
                .ok_or_else(|| malformed(name, "gauge"))?;
            let metadatas = staged(m.and_then(|m| m.metadatas.as_ref()));
            aggregator.add_untimed(MetricType::Gauge, &g.id, &[g.value], metadatas, now_nanos)?;
        }
        Type::TimedMetricWithMetadata => {
            let m = msg
                .timed_metric_with_metadata
                .as_ref()
                .ok_or_else(|| malformed(name, "timed_metric_with_metadata"))?;
            let metric = m.metric.as_ref().ok_or_else(|| malformed(name, "metric"))?;
            let metric_type = MetricType::from_proto(metric.r#type)
                .ok_or_else(|| malformed(name, "metric type"))?;
            let meta = m
                .metadata
                .as_ref()
                .ok_or_else(|| malformed(name, "metadata"))?;
            let Some(storage_policy) = meta
                .storage_policy
                .as_ref()
                .and_then(StoragePolicy::from_proto)
            else {
                metrics.record_rejected(RejectReason::InvalidStoragePolicy, 1);
                return Err(AddError::InvalidStoragePolicy.into());
            };
            let aggregation_id = AggregationId(meta.aggregation_id.as_ref().map_or(0, |a| a.id));
            aggregator.add_timed(
                metric_type,
                &metric.id,
                metric.time_nanos,
                metric.value,
                Metadatas::Single {
                    aggregation_id,
                    storage_policy,
                },
                now_nanos,
            )?;
        }
        Type::TimedMetricWithMetadatas => {
            let m = msg
                .timed_metric_with_metadatas
                .as_ref()
                .ok_or_else(|| malformed(name, "timed_metric_with_metadatas"))?;
            let metric = m.metric.as_ref().ok_or_else(|| malformed(name, "metric"))?;
            let metric_type = MetricType::from_proto(metric.r#type)
                .ok_or_else(|| malformed(name, "metric type"))?;
            aggregator.add_timed(
                metric_type,
                &metric.id,
                metric.time_nanos,
                metric.value,
                staged(m.metadatas.as_ref()),
                now_nanos,
            )?;
        }
        Type::ForwardedMetricWithMetadata => {
            let f = msg
                .forwarded_metric_with_metadata
                .as_ref()
                .ok_or_else(|| malformed(name, "forwarded_metric_with_metadata"))?;
            let metric = f.metric.as_ref().ok_or_else(|| malformed(name, "metric"))?;
            let meta = f
                .metadata
                .as_ref()
                .ok_or_else(|| malformed(name, "metadata"))?;
            let metric_type = MetricType::from_proto(metric.r#type)
                .ok_or_else(|| malformed(name, "metric type"))?;
            let Some(storage_policy) = meta
                .storage_policy
                .as_ref()
                .and_then(StoragePolicy::from_proto)
            else {
                metrics.record_rejected(RejectReason::InvalidStoragePolicy, 1);
                return Err(AddError::InvalidStoragePolicy.into());
            };
            aggregator.add_forwarded(
                ForwardedWrite {
                    metric_type,
                    id: &metric.id,
                    time_nanos: metric.time_nanos,
                    values: &metric.values,
                    source_id: meta.source_id,
                    version: metric.version,
                    aggregation_id: AggregationId(meta.aggregation_id.as_ref().map_or(0, |a| a.id)),
                    storage_policy,
                    pipeline: meta.pipeline.as_ref(),
                    forwarded_times: u32::try_from(meta.num_forwarded_times).unwrap_or(1),
                },
                now_nanos,
            )?;
        }
        Type::TimedMetricWithStoragePolicy => {
            let p = msg
                .timed_metric_with_storage_policy
                .as_ref()
                .ok_or_else(|| malformed(name, "timed_metric_with_storage_policy"))?;
            let metric = p
                .timed_metric
                .as_ref()
                .ok_or_else(|| malformed(name, "timed_metric"))?;
            let metric_type = MetricType::from_proto(metric.r#type)
                .ok_or_else(|| malformed(name, "metric type"))?;
            let Some(storage_policy) = p
                .storage_policy
                .as_ref()
                .and_then(StoragePolicy::from_proto)
            else {
                metrics.record_rejected(RejectReason::InvalidStoragePolicy, 1);
                return Err(AddError::InvalidStoragePolicy.into());
            };
            aggregator.add_passthrough(AggregatedOutput {
                id: metric.id.to_vec(),
                time_nanos: metric.time_nanos,
                value: metric.value,
                storage_policy,
                aggregation: m3_metric::AggregationType::Last,
                metric_type,
            });
        }
        Type::Unknown => {
            metrics.record_rejected(RejectReason::UnsupportedMessageType, 1);
            return Err(IngestError::UnknownType(msg.r#type));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use prost::Message;

    use super::*;
    use crate::aggregator::ShardAssignment;
    use crate::metadata::build;
    use crate::options::AggregatorOptions;

    const S: i64 = 1_000_000_000;
    const NOW: i64 = 1_700_000_000 * S;

    fn engine() -> Aggregator {
        let agg = Aggregator::new(AggregatorOptions::default(), Arc::new(|_: &[u8]| 0));
        agg.set_shards(vec![ShardAssignment::unbounded(0)], 0);
        agg
    }

    /// A type 6 message for series `id` aggregated at `resolution_secs`s.
    fn timed(id: &str, resolution_secs: u64) -> Bytes {
        let policy = format!("{resolution_secs}s:2d").parse().unwrap();
        metricpb::MetricWithMetadatas {
            r#type: Type::TimedMetricWithMetadatas as i32,
            timed_metric_with_metadatas: Some(metricpb::TimedMetricWithMetadatas {
                metric: Some(metricpb::TimedMetric {
                    r#type: 3,
                    id: Bytes::copy_from_slice(id.as_bytes()),
                    time_nanos: NOW,
                    value: 1.0,
                    ..Default::default()
                }),
                metadatas: Some(build::simple(AggregationId::DEFAULT, &[policy])),
            }),
            ..Default::default()
        }
        .encode_to_vec()
        .into()
    }

    fn gauge(id: &str) -> Bytes {
        metricpb::MetricWithMetadatas {
            r#type: Type::GaugeWithMetadatas as i32,
            gauge_with_metadatas: Some(metricpb::GaugeWithMetadatas {
                gauge: Some(metricpb::Gauge {
                    id: Bytes::copy_from_slice(id.as_bytes()),
                    value: 2.0,
                    ..Default::default()
                }),
                metadatas: None,
            }),
            ..Default::default()
        }
        .encode_to_vec()
        .into()
    }

    fn no_rejection(e: IngestError) {
        panic!("rejected: {e}");
    }

    /// `messages` framed as a rawtcp stream.
    fn stream(messages: &[Bytes]) -> BytesMut {
        let mut out = BytesMut::new();
        for m in messages {
            m3_proto::framing::put_zigzag_varint(m.len() as i64, &mut out);
            out.extend_from_slice(m);
        }
        out
    }

    const MAX: usize = m3_proto::framing::DEFAULT_RAWTCP_MAX_MESSAGE_SIZE;

    #[test]
    fn waiting_messages_keep_their_metadata_and_all_apply() {
        let agg = engine();
        let mut decoder = MessageDecoder::default();
        // More distinct metadatas than a batch holds, each used twice, and more messages
        // than a batch holds: each lands in its own policy's window.
        let resolutions = 1..=(MAX_QUEUED_METADATAS as u64 + 3);
        let mut messages = Vec::new();
        for round in 0..(MAX_QUEUED / 10 + 2) {
            for r in resolutions.clone() {
                messages.push(timed(&format!("s{round}"), r));
            }
        }
        assert!(messages.len() > MAX_QUEUED);
        let mut buf = stream(&messages);
        decoder
            .apply_frames(&agg, &mut buf, MAX, NOW, &mut no_rejection)
            .unwrap();
        assert!(buf.is_empty());
        assert_eq!(
            agg.metrics().added(MetricType::Gauge),
            messages.len() as u64
        );
        // One entry per series, one window per (series, policy).
        assert_eq!(agg.stats().entries, MAX_QUEUED / 10 + 2);
        assert_eq!(agg.stats().windows, messages.len());
    }

    #[test]
    fn a_partial_frame_waits_for_the_rest() {
        let agg = engine();
        let mut decoder = MessageDecoder::default();
        let whole = stream(&[timed("a", 10), timed("b", 10), gauge("c")]);
        // Every cut: what is whole applies, the rest waits in the buffer for the next read.
        for cut in 0..whole.len() {
            let before = agg.metrics().added(MetricType::Gauge);
            let mut buf = BytesMut::from(&whole[..cut]);
            decoder
                .apply_frames(&agg, &mut buf, MAX, NOW, &mut no_rejection)
                .unwrap();
            buf.extend_from_slice(&whole[cut..]);
            decoder
                .apply_frames(&agg, &mut buf, MAX, NOW, &mut no_rejection)
                .unwrap();
            assert!(buf.is_empty(), "cut at {cut}");
            assert_eq!(agg.metrics().added(MetricType::Gauge), before + 3);
        }
    }

    /// Bytes said to hold whole frames: all apply; cut anywhere inside a frame, the frames
    /// before the cut apply and the cut is told, with the bytes after the last whole frame.
    #[test]
    fn whole_frames_apply_and_a_cut_one_is_an_error() {
        let agg = engine();
        let mut decoder = MessageDecoder::default();
        let frames = [timed("a", 10), gauge("b"), timed("c", 10)];
        let whole = stream(&frames);
        decoder
            .apply_whole_frames(&agg, None, &whole, MAX, NOW, &mut no_rejection)
            .unwrap();
        assert_eq!(agg.metrics().added(MetricType::Gauge), 3);

        let mut frame_ends = Vec::new();
        let mut end = 0;
        for frame in &frames {
            end += stream(std::slice::from_ref(frame)).len();
            frame_ends.push(end);
        }
        for cut in 1..whole.len() {
            let before = agg.metrics().added(MetricType::Gauge);
            let result =
                decoder.apply_whole_frames(&agg, None, &whole[..cut], MAX, NOW, &mut no_rejection);
            let whole_before_cut = frame_ends.iter().filter(|&&e| e <= cut).count();
            let last_end = frame_ends[..whole_before_cut].last().copied().unwrap_or(0);
            match result {
                Ok(()) => assert_eq!(cut, last_end, "cut at {cut} is between frames"),
                Err(StreamError::Truncated { trailing }) => {
                    assert_eq!(trailing, cut - last_end, "cut at {cut}");
                }
                Err(e) => panic!("cut at {cut}: {e}"),
            }
            assert_eq!(
                agg.metrics().added(MetricType::Gauge),
                before + whole_before_cut as u64,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_bad_message_or_prefix_ends_the_stream_after_what_came_before() {
        let agg = engine();
        let mut decoder = MessageDecoder::default();
        let garbage = Bytes::from_static(&[0xff, 0xff, 0xff]);
        let mut buf = stream(&[
            timed("a", 10),
            timed("b", 10),
            gauge("c"),
            timed("d", 10),
            garbage,
            timed("never", 10),
        ]);
        let result = decoder.apply_frames(&agg, &mut buf, MAX, NOW, &mut no_rejection);
        assert!(matches!(result, Err(StreamError::Decode(_))), "{result:?}");
        assert_eq!(agg.metrics().added(MetricType::Gauge), 4);

        let mut buf = stream(&[timed("e", 10)]);
        // A negative length prefix.
        m3_proto::framing::put_zigzag_varint(-5, &mut buf);
        buf.extend_from_slice(&stream(&[timed("never", 10)]));
        let result = decoder.apply_frames(&agg, &mut buf, MAX, NOW, &mut no_rejection);
        assert!(matches!(result, Err(StreamError::Frame(_))), "{result:?}");
        assert_eq!(agg.metrics().added(MetricType::Gauge), 5);
    }

    #[test]
    fn rejections_of_waiting_messages_are_told() {
        let agg = Aggregator::new(AggregatorOptions::default(), Arc::new(|_: &[u8]| 1));
        agg.set_shards(vec![ShardAssignment::unbounded(0)], 0);
        let mut decoder = MessageDecoder::default();
        let mut told = Vec::new();
        let mut buf = stream(&[timed("a", 10)]);
        decoder
            .apply_frames(&agg, &mut buf, MAX, NOW, &mut |e| told.push(e))
            .unwrap();
        assert_eq!(
            told,
            vec![IngestError::Add(AddError::ShardNotOwned { shard: 1 })]
        );
        assert_eq!(agg.metrics().rejected(RejectReason::ShardNotOwned), 1);
    }
}
