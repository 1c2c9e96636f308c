//! The producer: accepts `(shard, value)` and delivers it to every consumer service.
//!
//! ```text
//!  produce(shard, value)
//!     │  checks: open, shard < numberOfShards, size ≤ maxMessageSize
//!     ▼
//!  Buffer (maxBufferSize bytes, dropOldest | returnError)
//!     │  one RefMessage, one reference per consumer service
//!     ├──▶ writer "m3coordinator" (SHARED)    ──▶ connections ──▶ instances
//!     └──▶ writer "m3aggregator"  (REPLICATED) ──▶ connections ──▶ instances
//!                         ▲ acks ───────────────────────┘
//! ```
//!
//! A message leaves the buffer when every service has acked it or given up on it (TTL,
//! instance gone), or when the buffer drops it to make room. Delivery is at-least-once while
//! the message is in memory; nothing is persisted, so a restart loses what was buffered.
//!
//! Consumer services can be added and removed at any time. A service only receives messages
//! produced after it was added; removing one drops (and counts) what it had outstanding.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::buffer::Buffer;
use crate::config::ProducerConfig;
use crate::error::{ProduceError, ServiceError};
use crate::metrics::{DropReason, ProducerMetrics, RejectReason};
use crate::topology::{ConsumerInstances, ConsumerServiceSpec};
use crate::writer::WriterHandle;

/// An m3msg producer for one topic. Cheap to clone; clones share everything.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use m3_msg::{
///     ConsumerInstance, ConsumerInstances, ConsumerServiceSpec, ConsumptionType, Producer,
///     ProducerConfig,
/// };
///
/// let producer = Producer::new(ProducerConfig::default(), 64);
/// let (_instances_tx, instances) = tokio::sync::watch::channel(ConsumerInstances {
///     instances: vec![ConsumerInstance {
///         id: "coordinator-1".into(),
///         endpoint: "127.0.0.1:7507".into(),
///         shards: None,
///     }],
/// });
/// producer.add_consumer_service(
///     ConsumerServiceSpec {
///         name: "m3coordinator".into(),
///         consumption: ConsumptionType::Shared,
///         message_ttl: Some(Duration::from_secs(300)),
///     },
///     instances,
/// )?;
/// producer.produce(7, bytes::Bytes::from_static(b"payload"))?;
/// producer.close(Duration::from_secs(5)).await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ProducerConfig,
    number_of_shards: u32,
    buffer: Buffer,
    services: Mutex<HashMap<String, WriterHandle>>,
    metrics: ProducerMetrics,
    closed: AtomicBool,
    cancel: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.buffer.drop_all(DropReason::Closed);
        self.cancel.cancel();
    }
}

impl Producer {
    /// A producer for a topic with `number_of_shards` shards, with its own metrics.
    pub fn new(config: ProducerConfig, number_of_shards: u32) -> Self {
        Self::with_metrics(config, number_of_shards, ProducerMetrics::default())
    }

    /// A producer that counts into `metrics` (register them with
    /// [`ProducerMetrics::register`]).
    pub fn with_metrics(
        config: ProducerConfig,
        number_of_shards: u32,
        metrics: ProducerMetrics,
    ) -> Self {
        let buffer = Buffer::new(config.buffer.clone(), metrics.clone());
        Self {
            inner: Arc::new(Inner {
                config,
                number_of_shards,
                buffer,
                services: Mutex::new(HashMap::new()),
                metrics,
                closed: AtomicBool::new(false),
                cancel: CancellationToken::new(),
            }),
        }
    }

    /// The producer's metrics.
    pub fn metrics(&self) -> &ProducerMetrics {
        &self.inner.metrics
    }

    /// The topic's shard count.
    pub fn number_of_shards(&self) -> u32 {
        self.inner.number_of_shards
    }

    /// Starts writing to a consumer service whose live instances arrive on `instances`.
    ///
    /// Messages produced from now on are delivered to it; earlier ones are not.
    ///
    /// # Errors
    /// [`ServiceError::AlreadyExists`] if the name is taken, [`ServiceError::Closed`] after
    /// [`close`](Self::close), [`ServiceError::NoRuntime`] outside a Tokio runtime.
    pub fn add_consumer_service(
        &self,
        spec: ConsumerServiceSpec,
        instances: watch::Receiver<ConsumerInstances>,
    ) -> Result<(), ServiceError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(ServiceError::Closed);
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(ServiceError::NoRuntime(spec.name));
        };
        let mut services = self.inner.services.lock();
        if services.contains_key(&spec.name) {
            return Err(ServiceError::AlreadyExists(spec.name));
        }
        let name = spec.name.clone();
        let writer = WriterHandle::spawn(
            &runtime,
            spec,
            self.inner.number_of_shards,
            self.inner.config.writer.clone(),
            instances,
            self.inner.metrics.clone(),
            self.inner.cancel.child_token(),
        );
        services.insert(name, writer);
        Ok(())
    }

    /// Stops writing to a consumer service. Its outstanding messages are dropped for it and
    /// counted as `no_consumer_service`. Returns whether the service existed.
    pub fn remove_consumer_service(&self, name: &str) -> bool {
        let writer = self.inner.services.lock().remove(name);
        match writer {
            Some(writer) => {
                writer.remove();
                true
            }
            None => false,
        }
    }

    /// Names of the consumer services being written to.
    pub fn consumer_services(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.services.lock().keys().cloned().collect();
        names.sort();
        names
    }

    /// Accepts a message for delivery to every consumer service.
    ///
    /// Never blocks. With `OnFull::DropOldest` a full buffer makes room by dropping the
    /// oldest messages (counted as `buffer_full`). With no consumer service the message is
    /// accepted and counted as dropped (`no_consumer_service`).
    ///
    /// # Errors
    /// The value is handed back in every error: [`ProduceError::BufferFull`] (strategy
    /// `returnError`), [`ProduceError::TooLarge`], [`ProduceError::InvalidShard`],
    /// [`ProduceError::Closed`]. Each is counted in `rejected`.
    pub fn produce(&self, shard: u32, value: Bytes) -> Result<(), ProduceError> {
        let inner = &*self.inner;
        let result = self.try_produce(shard, value);
        if let Err(err) = &result {
            let reason = match err {
                ProduceError::BufferFull { .. } => RejectReason::BufferFull,
                ProduceError::TooLarge { .. } => RejectReason::TooLarge,
                ProduceError::InvalidShard { .. } => RejectReason::InvalidShard,
                ProduceError::Closed { .. } => RejectReason::Closed,
            };
            inner.metrics.inc_rejected(reason);
        }
        result
    }

    fn try_produce(&self, shard: u32, value: Bytes) -> Result<(), ProduceError> {
        let inner = &*self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(ProduceError::Closed { value });
        }
        if shard >= inner.number_of_shards {
            return Err(ProduceError::InvalidShard {
                value,
                shard,
                number_of_shards: inner.number_of_shards,
            });
        }
        let buffer_config = inner.buffer.config();
        let max = buffer_config
            .max_message_size
            .min(buffer_config.max_buffer_size);
        if value.len() > max {
            let size = value.len();
            return Err(ProduceError::TooLarge { value, size, max });
        }
        let services = inner.services.lock();
        if services.is_empty() {
            inner.metrics.inc_produced();
            inner.metrics.inc_dropped(DropReason::NoConsumerService);
            return Ok(());
        }
        let msg = inner.buffer.admit(shard, value, services.len())?;
        inner.metrics.inc_produced();
        for writer in services.values() {
            if let Err(msg) = writer.send(Arc::clone(&msg)) {
                if msg.is_live() {
                    inner.metrics.inc_dropped(DropReason::NoConsumerService);
                }
                msg.dec_ref();
            }
        }
        Ok(())
    }

    /// Bytes of message values currently buffered (not yet acked or given up by every
    /// consumer service).
    pub fn buffered_bytes(&self) -> usize {
        self.inner.buffer.used_bytes()
    }

    /// Messages currently buffered.
    pub fn buffered_messages(&self) -> usize {
        self.inner.buffer.live()
    }

    /// Waits until the buffer is empty or `timeout` passes, without closing. Returns whether
    /// the buffer drained.
    pub async fn flush(&self, timeout: Duration) -> bool {
        self.inner
            .buffer
            .wait_drained(Instant::now() + timeout)
            .await
    }

    /// Waits until the buffer is empty for as long as acks keep arriving: gives up only once
    /// none has arrived for `stall`, without closing. A final flush uses it, so a large backlog
    /// that the consumers work through steadily is waited for however long it takes. Returns
    /// whether the buffer drained.
    pub async fn flush_while_progressing(&self, stall: Duration) -> bool {
        self.inner
            .buffer
            .wait_drained_while_progressing(stall)
            .await
    }

    /// Waits until at most `bytes` of messages are buffered, for as long as acks keep arriving
    /// (giving up once none has arrived for `stall`). A producer of a large burst paces itself
    /// with it, so the burst is not all held unacked at once. Returns whether the buffer got
    /// down to `bytes`.
    pub async fn wait_for_room(&self, bytes: usize, stall: Duration) -> bool {
        self.inner
            .buffer
            .wait_at_most_while_progressing(bytes, stall)
            .await
    }

    /// Closes the producer: refuses new messages, waits for outstanding acks as long as they
    /// keep arriving (giving up once none has arrived for `stall`), then drops what is left
    /// (counted as `closed`) and stops every writer and connection. Returns how many messages
    /// were dropped. Calling it again is harmless.
    ///
    /// # Cancel safety
    /// If the future is dropped while waiting, the producer stays closed to new messages and
    /// its writers keep delivering until the producer itself is dropped.
    pub async fn close(&self, stall: Duration) -> usize {
        self.inner.closed.store(true, Ordering::Release);
        self.inner
            .buffer
            .wait_drained_while_progressing(stall)
            .await;
        let dropped = self.inner.buffer.drop_all(DropReason::Closed);
        let writers: Vec<WriterHandle> = self
            .inner
            .services
            .lock()
            .drain()
            .map(|(_, writer)| writer)
            .collect();
        for writer in writers {
            writer.stop().await;
        }
        self.inner.cancel.cancel();
        dropped
    }
}
