//! m3msg: at-least-once, in-memory message delivery from a producer to the consumer services
//! of a topic, speaking M3's wire format.
//!
//! A [`Producer`] takes `(shard, bytes)` and delivers each message to every consumer service
//! registered with it, retrying with backoff until the message is acked or the service's
//! message TTL runs out. A consumer runs [`ConsumerServer`] (or [`serve`]) with a
//! [`MessageHandler`] that acks each message when it is safely processed, or leaves it
//! un-acked so the producer delivers it again.
//!
//! | module | what it is for |
//! |---|---|
//! | [`config`] | M3's YAML keys and defaults for producer and consumer |
//! | [`topology`] | consumer services and their live instances, as the producer's input |
//! | [`producer`] | the buffer front end and consumer service management |
//! | `writer` | per consumer service queues, routing (SHARED/REPLICATED), retries, TTL, acks |
//! | `connection` | one TCP connection per consumer instance: dial, buffered writes, ack reads |
//! | [`consumer`] | the consumer server, handler trait and batched acks |
//! | [`metrics`] | self-metrics for `/metrics` |
//!
//! The wire format is M3's: each frame is a 4-byte big-endian length then a protobuf
//! `msgpb.Message{metadata{shard, id, sentAtNanos}, value}` towards the consumer and
//! `msgpb.Ack{metadata[]}` back. So a producer here can feed an M3 consumer and the other way
//! round.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use m3_msg::*;
//! use tokio_util::sync::CancellationToken;
//!
//! // A consumer that acks everything it gets.
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! let endpoint = listener.local_addr().unwrap().to_string();
//! let handler = |msg: ConsumedMessage| msg.ack();
//! let shutdown = CancellationToken::new();
//! tokio::spawn(serve(listener, Arc::new(handler), ConsumerConfig::default(), shutdown.clone()));
//!
//! // A producer writing to it.
//! let mut config = ProducerConfig::default();
//! config.writer.connection.flush_interval = Duration::from_millis(5);
//! let producer = Producer::new(config, 4);
//! let (_tx, instances) = tokio::sync::watch::channel(ConsumerInstances {
//!     instances: vec![ConsumerInstance { id: "c1".into(), endpoint, shards: None }],
//! });
//! let spec = ConsumerServiceSpec {
//!     name: "m3coordinator".into(),
//!     consumption: ConsumptionType::Shared,
//!     message_ttl: None,
//! };
//! producer.add_consumer_service(spec, instances).unwrap();
//! producer.produce(1, bytes::Bytes::from_static(b"hello")).unwrap();
//! assert!(producer.flush(Duration::from_secs(5)).await);
//! producer.close(Duration::from_secs(1)).await;
//! shutdown.cancel();
//! # }
//! ```

#![warn(missing_docs, unreachable_pub)]

mod buffer;
pub mod config;
mod connection;
pub mod consumer;
mod error;
pub mod metrics;
pub mod producer;
pub mod topology;
mod writer;

pub use config::{
    BufferConfig, ConnectionConfig, ConsumerConfig, ConsumerServerSection, OnFull, ProducerConfig,
    RetryPolicy, WriterConfig,
};
pub use consumer::{ConsumedMessage, ConsumerServer, Decision, MessageHandler, handler_fn, serve};
pub use error::{ProduceError, ServiceError};
pub use metrics::{ConsumerMetrics, DropReason, FrameErrorKind, ProducerMetrics, RejectReason};
pub use producer::Producer;
pub use topology::{ConsumerInstance, ConsumerInstances, ConsumerServiceSpec, ConsumptionType};

/// The most a connection's buffer is allocated with up front, whatever its configured size: it
/// grows as frames need, and a configured size far beyond memory would otherwise abort the
/// process when the connection opens.
pub(crate) const MAX_INITIAL_BUFFER: usize = 16 << 20;
