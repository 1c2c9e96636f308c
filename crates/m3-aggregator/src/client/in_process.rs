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
//! A client may instead apply each batch on commit ([`InlineEngine`]): when every instance of
//! the placement is in this process, its batches then carry the timed values themselves, and
//! the committing thread adds them to each owner's engine. That spares encoding and decoding a
//! frame per value per replica (a tenth of `m3 local`'s CPU) and the queue's memory, and the
//! committer's ack comes after the adds.
//!
//! An endpoint that is not attached is dialled over TCP as usual, so a placement may mix
//! instances in this process with remote ones.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::aggregator::{Aggregator, KnownShard, TimedSample};
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
        Some(InProcessConnection::new(aggregator, max_message_size))
    }

    /// The engine at `endpoint`, if one is attached, to be applied to on commit.
    pub(super) fn inline(&self, endpoint: &str, max_message_size: usize) -> Option<InlineEngine> {
        let first = self.connect(endpoint, max_message_size)?;
        Some(InlineEngine {
            first,
            decoders: parking_lot::Mutex::new(Vec::new()),
        })
    }
}

/// An engine in this process that committed batches are applied to at once, on the committing
/// thread ([`ClientOptions::apply_in_process_on_commit`](super::ClientOptions)): nothing waits
/// in a queue, and the committer waits for the adds (its backpressure). Timed values are added
/// as they are ([`add`](Self::add)); frames, from a batch routed before the placement was all
/// in this process, are read by a decoder of a pool, one per concurrent committer.
pub(super) struct InlineEngine {
    first: InProcessConnection,
    decoders: parking_lot::Mutex<Vec<InProcessConnection>>,
}

impl InlineEngine {
    /// Adds `samples`, all of shard `known`, to the engine; `hashes` are their IDs'
    /// [`entry_hash`](crate::shard::entry_hash)es, one per sample, computed once for every
    /// engine. `undecodable` more values of the batch were dropped because their metadatas did
    /// not decode, and are counted here.
    pub(super) fn add(
        &self,
        known: KnownShard,
        samples: &[TimedSample<'_>],
        hashes: &[u64],
        undecodable: u64,
    ) {
        let aggregator = &self.first.aggregator;
        if undecodable > 0 {
            aggregator
                .metrics()
                .record_rejected(RejectReason::DecodeError, undecodable);
        }
        let limiter = &self.first.limiter;
        let now = unix_nanos_now();
        aggregator.add_timed_batch_hashed(Some(known), samples, Some(hashes), now, &mut |_, e| {
            if limiter.allow() {
                tracing::warn!(error = %e, "in-process aggregator value rejected.");
            }
        });
    }

    /// Applies `parts` as [`InProcessConnection::write`] does.
    pub(super) fn write_frames(&self, parts: &[impl AsRef<[u8]>], shards: &[KnownShard]) {
        let pooled = self.decoders.lock().pop();
        let mut connection = pooled.unwrap_or_else(|| self.first.another());
        connection.write(parts, shards);
        self.decoders.lock().push(connection);
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
    fn new(aggregator: Arc<Aggregator>, max_message_size: usize) -> InProcessConnection {
        InProcessConnection {
            aggregator,
            decoder: MessageDecoder::default(),
            max_message_size,
            limiter: LogLimiter::new(DEFAULT_ERROR_LOG_LIMIT_PER_SECOND),
        }
    }

    /// A connection to the same engine, with its own decoder.
    fn another(&self) -> InProcessConnection {
        InProcessConnection::new(Arc::clone(&self.aggregator), self.max_message_size)
    }

    /// Applies every frame of `parts` (each holds whole frames) to the engine; the metrics of
    /// `parts[i]` are in shard `shards[i]`, when given. Rejections are counted by the engine
    /// and logged, rate limited, as a rawtcp connection does; a part that does not decode is
    /// counted as a decode error and the rest of it skipped.
    pub(super) fn write(&mut self, parts: &[impl AsRef<[u8]>], shards: &[KnownShard]) {
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
                part.as_ref(),
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

    use bytes::Bytes;

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

    /// A client of `engines`, each attached in this process at its endpoint, with a placement
    /// of instances `a`, `b`, ... (in that order) in which each owns every shard.
    fn client_of(
        engines: &[(&str, &Arc<Aggregator>)],
        apply_in_process_on_commit: bool,
    ) -> Arc<AggregatorClient> {
        let in_process = InProcessAggregators::default();
        for (endpoint, engine) in engines {
            in_process.attach(*endpoint, Arc::clone(engine));
        }
        let options = ClientOptions {
            in_process,
            apply_in_process_on_commit,
            ..ClientOptions::default()
        };
        let client = AggregatorClient::new(options, Arc::new(Counted::default()));
        let ids = ["a", "b", "c", "d"];
        let instances: Vec<(&str, &str)> = ids
            .iter()
            .zip(engines)
            .map(|(id, (endpoint, _))| (*id, *endpoint))
            .collect();
        client.update_placement(&placement(&instances, NUM_SHARDS));
        client
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
        let client = client_of(&[("a.invalid:1", &a), ("b.invalid:1", &b)], false);
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

    /// Applied on commit: values routed as they are, and one routed as a frame into the same
    /// batch, are in both replicas' engines when `commit` returns; values whose metadatas do
    /// not decode are counted as decode errors by each engine.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_commit_every_replica_has_added_the_batch_when_commit_returns() {
        let (a, b) = (engine(), engine());
        let client = client_of(&[("a.invalid:1", &a), ("b.invalid:1", &b)], true);
        let now = crate::rawtcp::unix_nanos_now();
        let ten_seconds =
            build::simple(AggregationId::DEFAULT, &["10s:2d".parse().unwrap()]).encode_to_vec();
        let one_minute =
            build::simple(AggregationId::DEFAULT, &["1m:40d".parse().unwrap()]).encode_to_vec();
        let series = 40u64;
        let mut batch = client.batch();
        for i in 0..series {
            let id = format!("series-{i}");
            let hash = m3_cluster::murmur3_32(id.as_bytes());
            let metadatas = if i % 2 == 0 {
                &ten_seconds
            } else {
                &one_minute
            };
            let sent =
                batch.route_timed(id.as_bytes(), hash, MetricType::Gauge, now, 1.0, metadatas);
            assert_eq!(sent, Ok(2));
        }
        let broken = [0xff, 0xff];
        let sent = batch.route_timed(b"broken", 7, MetricType::Gauge, now, 1.0, &broken);
        assert_eq!(sent, Ok(2));
        let sent = batch.route(b"framed", now, |buf| {
            m3_proto::timed_frame::put_timed_metric_frame(3, b"framed", now, 1.0, &ten_seconds, buf)
        });
        assert_eq!(sent, Ok(2));
        assert_eq!(client.commit(batch), 0);
        for engine in [&a, &b] {
            assert_eq!(engine.metrics().added(MetricType::Gauge), series + 1);
            assert_eq!(engine.stats().entries, series as usize + 1);
            assert_eq!(engine.metrics().rejected(RejectReason::DecodeError), 1);
        }
        assert_eq!(client.queued_metrics(), 0);
        client.close(Duration::from_secs(1)).await;
    }

    /// A typed batch's group starts with room for the IDs and values the largest group of the
    /// last batch held.
    #[tokio::test]
    async fn typed_groups_start_at_the_size_the_last_batch_needed() {
        let client = client_of(&[("a.invalid:1", &engine())], true);
        let now = crate::rawtcp::unix_nanos_now();
        let metadatas =
            build::simple(AggregationId::DEFAULT, &["10s:2d".parse().unwrap()]).encode_to_vec();
        let id = [7u8; 100];
        let route = |batch: &mut crate::client::ClientBatch| {
            batch.route_timed(&id, 1, MetricType::Gauge, now, 1.0, &metadatas)
        };
        let mut batch = client.batch();
        for _ in 0..500 {
            assert_eq!(route(&mut batch), Ok(1));
        }
        client.commit(batch);
        let mut batch = client.batch();
        assert_eq!(route(&mut batch), Ok(1));
        let (ids, values) = batch.first_group_capacities();
        assert!(ids >= 500 * id.len(), "room for {ids} ID bytes");
        assert!(values >= 500, "room for {values} values");
        client.commit(batch);
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
