//! The client's m3msg transport (`type: m3msg`): every metric is one m3msg message on a topic
//! (M3's `aggregator_ingest`), produced to shard murmur3_32(id) % the topic's shard count.
//!
//! Routing to the aggregator instances is the producer's: the topic's consumer service
//! (m3aggregator, REPLICATED) and its placement say which instances own a shard, and every
//! one of them receives the message and acks it. Unlike rawtcp, an instance that is down
//! gets its messages again when it comes back, for as long as they stay in the producer's
//! buffer (until the consumer service's message TTL).
//!
//! A request's metrics are encoded into one growing buffer, as rawtcp frames (the encoder the
//! callers already use), and each message is the frame's payload sliced out of that buffer:
//! no copy and no allocation per metric.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use m3_msg::{ProduceError, Producer, ProducerConfig};

use super::{ClientDrop, ClientMetrics, RouteError};
use crate::topic_producer::SharedProducer;

/// Bytes the encode buffer grows by: its messages share one allocation per chunk.
const ENCODE_CHUNK: usize = 64 * 1024;
/// Below this spare capacity a new chunk is taken before encoding.
const ENCODE_HEADROOM: usize = 4 * 1024;

/// Where the m3msg transport produces.
#[derive(Debug, Clone)]
pub struct M3msgTransport {
    /// The topic (`producer.writer.topicName`, e.g. `aggregator_ingest`).
    pub topic: String,
    /// Its KV environment (`topicServiceOverride.environment`); by default the placement's.
    pub environment: Option<String>,
    /// The KV namespace of the consumer services' placements
    /// (`placementServiceOverride.namespaces.placement`).
    pub placement_namespace: Option<String>,
    /// Buffer, retries, connections.
    pub producer: ProducerConfig,
}

/// One request's messages, produced at commit.
pub(super) struct M3msgBatch {
    producer: Option<Producer>,
    encoded: BytesMut,
    messages: Vec<(u32, Bytes)>,
}

impl M3msgBatch {
    pub(super) fn new(producer: &SharedProducer) -> M3msgBatch {
        M3msgBatch {
            producer: producer.get().cloned(),
            encoded: BytesMut::new(),
            messages: Vec::new(),
        }
    }

    pub(super) fn has_topic(&self) -> bool {
        self.producer.is_some()
    }

    /// Encodes the metric once; it goes to every owner of its shard.
    pub(super) fn route(
        &mut self,
        id_hash: u32,
        encode: impl FnOnce(&mut BytesMut),
    ) -> Result<usize, RouteError> {
        let producer = self.producer.as_ref().ok_or(RouteError::NoPlacement)?;
        let shards = producer.number_of_shards();
        if shards == 0 {
            return Err(RouteError::NoOwner);
        }
        if self.encoded.capacity() < ENCODE_HEADROOM {
            self.encoded.reserve(ENCODE_CHUNK);
        }
        encode(&mut self.encoded);
        let mut frame = self.encoded.split();
        // The encoder wrote one rawtcp frame, or nothing when the metric was too large.
        if let Ok(Some(payload)) = m3_proto::framing::next_rawtcp_frame(&mut frame, usize::MAX) {
            self.messages.push((id_hash % shards, payload));
        }
        Ok(1)
    }

    /// Produces every message; returns how many the producer refused (each counted).
    pub(super) fn commit(self, metrics: &dyn ClientMetrics) -> u64 {
        let Some(producer) = self.producer else {
            return 0;
        };
        let mut refused = 0;
        let total = self.messages.len() as u64;
        for (shard, message) in self.messages {
            if let Err(e) = producer.produce(shard, message) {
                let reason = match e {
                    ProduceError::BufferFull { .. } => ClientDrop::QueueFull,
                    ProduceError::Closed { .. } => ClientDrop::WriterStopped,
                    ProduceError::TooLarge { .. } | ProduceError::InvalidShard { .. } => {
                        ClientDrop::WriteFailed
                    }
                };
                metrics.dropped(reason, 1);
                refused += 1;
            }
        }
        metrics.queued(total - refused);
        refused
    }
}

/// Starts following the transport's topic; the producer appears in `cell` when the topic
/// exists.
pub(super) async fn start(
    kv: &Arc<dyn m3_cluster::KvStore>,
    transport: &M3msgTransport,
    default_environment: &str,
    metrics: m3_msg::ProducerMetrics,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<(SharedProducer, tokio::task::JoinHandle<()>), m3_cluster::topic::TopicError> {
    crate::topic_producer::start(
        kv,
        crate::topic_producer::TopicProducerOptions {
            environment: transport
                .environment
                .clone()
                .unwrap_or_else(|| default_environment.to_string()),
            topic: transport.topic.clone(),
            placement_namespace: transport.placement_namespace.clone(),
            producer: transport.producer.clone(),
            waiting_note: "samples for the aggregators are dropped and counted until it does",
        },
        metrics,
        cancel,
    )
    .await
}
