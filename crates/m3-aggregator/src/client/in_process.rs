//! Aggregator instances served by an engine in this process.
//!
//! `m3 local` runs the coordinator and both aggregators in one process. The frames between
//! them need not cross loopback TCP: when an instance's endpoint is attached here, its writer
//! hands each queued batch to that engine's [`MessageDecoder`] instead of a socket. The frames,
//! the decoder and the engine calls are the ones a rawtcp connection uses; what goes is two
//! copies through the kernel per frame, the syscalls, and waking a reader task per read.
//! Routing, batching, the queues bounded in bytes and the backpressure before them are the
//! client's as for any instance.
//!
//! An endpoint that is not attached is dialled over TCP as usual, so a placement may mix
//! instances in this process with remote ones.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;

use crate::aggregator::{Aggregator, KnownShard};
use crate::error::RejectReason;
use crate::ingest::{IngestError, MessageDecoder};
use crate::rawtcp::{DEFAULT_ERROR_LOG_LIMIT_PER_SECOND, LogLimiter, unix_nanos_now};

/// The endpoints of the placement whose aggregator runs in this process, each with its
/// engine. Cloning shares the set.
#[derive(Clone, Default)]
pub struct InProcessAggregators {
    engines: Arc<RwLock<HashMap<String, Arc<Aggregator>>>>,
}

impl std::fmt::Debug for InProcessAggregators {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let engines = self.engines.read();
        f.debug_set().entries(engines.keys()).finish()
    }
}

impl InProcessAggregators {
    /// From now on, a writer to the instance at `endpoint` that (re)connects hands its
    /// batches to `aggregator` instead of dialling the endpoint.
    pub fn attach(&self, endpoint: impl Into<String>, aggregator: Arc<Aggregator>) {
        self.engines.write().insert(endpoint.into(), aggregator);
    }

    /// A connection to the engine at `endpoint`, if one is attached.
    pub(super) fn connect(
        &self,
        endpoint: &str,
        max_message_size: usize,
    ) -> Option<InProcessConnection> {
        let aggregator = Arc::clone(self.engines.read().get(endpoint)?);
        Some(InProcessConnection {
            aggregator,
            decoder: MessageDecoder::default(),
            max_message_size,
            limiter: LogLimiter::new(DEFAULT_ERROR_LOG_LIMIT_PER_SECOND),
        })
    }
}

/// One writer's way into an engine in this process: what a rawtcp connection is to a remote
/// one.
pub(super) struct InProcessConnection {
    aggregator: Arc<Aggregator>,
    decoder: MessageDecoder,
    max_message_size: usize,
    limiter: LogLimiter,
}

impl InProcessConnection {
    /// Applies every frame of `parts` (each holds whole frames) to the engine; the metrics of
    /// `parts[i]` are in shard `shards[i]`, when given. Rejections are counted by the engine
    /// and logged, rate limited, as a rawtcp connection does; a part that does not decode is
    /// counted as a decode error and the rest of it skipped.
    pub(super) fn write(&mut self, parts: &[Bytes], shards: &[KnownShard]) {
        let now = unix_nanos_now();
        let limiter = &self.limiter;
        let mut rejected = |e: IngestError| {
            if limiter.allow() {
                tracing::warn!(error = %e, "in-process aggregator message rejected.");
            }
        };
        for (i, part) in parts.iter().enumerate() {
            if let Err(e) = self.decoder.apply_whole_frames(
                &self.aggregator,
                shards.get(i).copied(),
                part,
                self.max_message_size,
                now,
                &mut rejected,
            ) {
                self.aggregator
                    .metrics()
                    .record_rejected(RejectReason::DecodeError, 1);
                if limiter.allow() {
                    tracing::error!(error = %e, "in-process aggregator frames do not decode; skipping the rest of the batch part.");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use m3_metric::{AggregationId, MetricType};
    use prost::Message;

    use super::*;
    use crate::aggregator::ShardAssignment;
    use crate::client::tests::{Counted, placement};
    use crate::client::{AggregatorClient, ClientOptions};
    use crate::metadata::build;
    use crate::options::AggregatorOptions;

    const NUM_SHARDS: u32 = 8;

    /// An engine owning every shard, sharded as the client shards.
    fn engine() -> Arc<Aggregator> {
        let aggregator = Aggregator::new(
            AggregatorOptions::default(),
            Arc::new(|id: &[u8]| m3_cluster::shard_for(id, NUM_SHARDS)),
        )
        .with_murmur3_shard_count(Arc::new(std::sync::atomic::AtomicU32::new(NUM_SHARDS)));
        aggregator.set_shards((0..NUM_SHARDS).map(ShardAssignment::unbounded).collect(), 0);
        Arc::new(aggregator)
    }

    /// Waits (bounded) until `aggregator` has added `want` gauges.
    async fn added(aggregator: &Aggregator, want: u64) -> u64 {
        for _ in 0..500 {
            if aggregator.metrics().added(MetricType::Gauge) >= want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        aggregator.metrics().added(MetricType::Gauge)
    }

    /// Two replicas in this process, at endpoints nothing could dial: every sample reaches
    /// both engines, each series in its own entry.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_replica_in_this_process_takes_every_metric_without_a_socket() {
        let (a, b) = (engine(), engine());
        let in_process = InProcessAggregators::default();
        in_process.attach("a.invalid:1", Arc::clone(&a));
        in_process.attach("b.invalid:1", Arc::clone(&b));
        let options = ClientOptions {
            in_process,
            ..ClientOptions::default()
        };
        let client = AggregatorClient::new(options, Arc::new(Counted::default()));
        client.update_placement(&placement(
            &[("a", "a.invalid:1"), ("b", "b.invalid:1")],
            NUM_SHARDS,
        ));
        let now = crate::rawtcp::unix_nanos_now();
        let metadatas =
            build::simple(AggregationId::DEFAULT, &["10s:2d".parse().unwrap()]).encode_to_vec();
        let (series, rounds) = (50, 3);
        for _ in 0..rounds {
            let mut batch = client.batch();
            for i in 0..series {
                let id = format!("series-{i}");
                let sent = batch.route(id.as_bytes(), now, |buf| {
                    m3_proto::timed_frame::put_timed_metric_frame(
                        3,
                        id.as_bytes(),
                        now,
                        1.0,
                        &metadatas,
                        buf,
                    )
                });
                assert_eq!(sent, Ok(2));
            }
            assert_eq!(client.commit(batch), 0);
        }
        for engine in [&a, &b] {
            assert_eq!(added(engine, series * rounds).await, series * rounds);
            assert_eq!(engine.stats().entries, series as usize);
            assert_eq!(engine.metrics().rejected(RejectReason::DecodeError), 0);
        }
        client.close(Duration::from_secs(1)).await;
    }

    /// Bytes that do not decode are counted as a decode error, and the parts after them
    /// still apply.
    #[test]
    fn a_part_that_does_not_decode_is_counted_and_the_next_applies() {
        let aggregator = engine();
        let in_process = InProcessAggregators::default();
        in_process.attach("a", Arc::clone(&aggregator));
        assert!(in_process.connect("elsewhere:1", 1 << 20).is_none());
        let mut connection = in_process.connect("a", 1 << 20).expect("attached");
        let metadatas =
            build::simple(AggregationId::DEFAULT, &["10s:2d".parse().unwrap()]).encode_to_vec();
        let mut frame = bytes::BytesMut::new();
        m3_proto::timed_frame::put_timed_metric_frame(
            3,
            b"ok",
            crate::rawtcp::unix_nanos_now(),
            1.0,
            &metadatas,
            &mut frame,
        );
        let garbage = Bytes::from_static(&[0x06, 0xff, 0xff, 0xff]);
        connection.write(&[garbage.clone(), frame.freeze(), garbage], &[]);
        assert_eq!(aggregator.metrics().rejected(RejectReason::DecodeError), 2);
        assert_eq!(aggregator.metrics().added(MetricType::Gauge), 1);
    }
}
