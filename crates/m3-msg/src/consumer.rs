//! The consumer server: accepts producer connections, hands each message to a handler, and
//! sends back batched acks.
//!
//! Per connection, a read loop decodes frames and calls [`MessageHandler::handle`] with a
//! [`ConsumedMessage`]. The handler (or whatever task it passes the message to) later calls
//! [`ConsumedMessage::ack`], or lets it go un-acked with [`ConsumedMessage::no_ack`] or by
//! dropping it, so the producer redelivers after its retry backoff. Processing may therefore
//! happen off the read loop, for example while a storage write completes.
//!
//! Acks collect in a per-connection list and are written as `msgpb.Ack` frames when
//! `ackBufferSize` of them are pending or every `ackFlushInterval`, whichever comes first:
//!
//! ```text
//! read loop ──handle(msg)──▶ handler ──ack()──▶ pending acks ──▶ writer task ──▶ socket
//!                                              (flush at ackBufferSize or every ackFlushInterval)
//! ```
//!
//! A bad frame (length over `maxMessageSize`, undecodable protobuf) is counted, logged and
//! closes only its own connection. Acks for a connection that has closed cannot be delivered;
//! they are counted as `acks_lost` and the producer redelivers those messages.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use m3_proto::framing::{next_m3msg_frame, put_m3msg_frame};
use m3_proto::msgpb;
use parking_lot::Mutex;
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use m3_server::tcp::{ConnectionLimit, FrameDeadline, ListenerLimits};

use crate::config::ConsumerConfig;
use crate::metrics::{ConsumerMetrics, FrameErrorKind};

/// Upper bound of one encoded `Metadata` inside an `Ack` (three u64 varints, tags, length).
const MAX_ACK_ENTRY_LEN: usize = 36;

/// What a handler decided about a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Processed (or deliberately discarded): ack it so the producer forgets it.
    Ack,
    /// Not processed, retriable: send no ack, so the producer redelivers it.
    NoAck,
}

/// Processes consumed messages.
///
/// `handle` runs on the connection's read loop, so it should return quickly: do slow work on
/// another task and call [`ConsumedMessage::ack`] from there. Any `Fn(ConsumedMessage)` closure
/// is a handler; [`handler_fn`] adapts an async function.
pub trait MessageHandler: Send + Sync + 'static {
    /// Takes one message. Ack it, decline it, or move it somewhere that will.
    fn handle(&self, message: ConsumedMessage);
}

impl<F> MessageHandler for F
where
    F: Fn(ConsumedMessage) + Send + Sync + 'static,
{
    fn handle(&self, message: ConsumedMessage) {
        self(message)
    }
}

/// A handler that runs `f(value, metadata)` on its own task per message and acks when the
/// returned future yields [`Decision::Ack`].
///
/// Tasks are not limited in number here; the producer's buffer bounds how many messages can
/// be outstanding at once.
pub fn handler_fn<F, Fut>(f: F) -> Arc<dyn MessageHandler>
where
    F: Fn(Bytes, msgpb::Metadata) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Decision> + Send + 'static,
{
    Arc::new(move |message: ConsumedMessage| {
        let fut = f(message.value().clone(), message.metadata());
        tokio::spawn(async move {
            let decision = fut.await;
            message.finish(decision);
        });
    })
}

/// One received message, with the means to ack it.
///
/// Dropping it without a decision counts as [`Decision::NoAck`].
#[derive(Debug)]
pub struct ConsumedMessage {
    metadata: msgpb::Metadata,
    value: Bytes,
    acks: Arc<AckQueue>,
    decided: bool,
}

impl ConsumedMessage {
    /// The payload.
    pub fn value(&self) -> &Bytes {
        &self.value
    }

    /// The ack key: the shard for SHARED topics, replica×shards+shard for REPLICATED ones.
    pub fn shard(&self) -> u64 {
        self.metadata.shard
    }

    /// The producer writer's message ID.
    pub fn id(&self) -> u64 {
        self.metadata.id
    }

    /// When the producer sent this copy, in nanoseconds since the Unix epoch.
    pub fn sent_at_nanos(&self) -> u64 {
        self.metadata.sent_at_nanos
    }

    /// The wire metadata.
    pub fn metadata(&self) -> msgpb::Metadata {
        self.metadata
    }

    /// Acks the message.
    pub fn ack(self) {
        self.finish(Decision::Ack);
    }

    /// Leaves the message un-acked so the producer redelivers it.
    pub fn no_ack(self) {
        self.finish(Decision::NoAck);
    }

    /// Applies `decision`.
    pub fn finish(mut self, decision: Decision) {
        self.decide(decision);
    }

    fn decide(&mut self, decision: Decision) {
        if std::mem::replace(&mut self.decided, true) {
            return;
        }
        match decision {
            Decision::Ack => self.acks.push(self.metadata),
            Decision::NoAck => self.acks.metrics.inc_no_acks(),
        }
    }
}

impl Drop for ConsumedMessage {
    fn drop(&mut self) {
        self.decide(Decision::NoAck);
    }
}

/// Pending acks of one connection.
#[derive(Debug)]
struct AckQueue {
    state: Mutex<AckState>,
    full: Notify,
    threshold: usize,
    metrics: ConsumerMetrics,
}

#[derive(Debug, Default)]
struct AckState {
    pending: Vec<msgpb::Metadata>,
    closed: bool,
}

impl AckQueue {
    fn push(&self, meta: msgpb::Metadata) {
        let mut state = self.state.lock();
        if state.closed {
            drop(state);
            self.metrics.add_acks_lost(1);
            return;
        }
        state.pending.push(meta);
        let full = state.pending.len() >= self.threshold;
        drop(state);
        if full {
            self.full.notify_one();
        }
    }

    /// Takes what is pending; with `close`, later pushes are counted as lost.
    fn take(&self, close: bool) -> Vec<msgpb::Metadata> {
        let mut state = self.state.lock();
        state.closed |= close;
        std::mem::take(&mut state.pending)
    }
}

/// The consumer server.
#[derive(Clone)]
pub struct ConsumerServer {
    config: ConsumerConfig,
    handler: Arc<dyn MessageHandler>,
    metrics: ConsumerMetrics,
}

impl std::fmt::Debug for ConsumerServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerServer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ConsumerServer {
    /// A server giving messages to `handler`, with its own metrics.
    pub fn new(config: ConsumerConfig, handler: Arc<dyn MessageHandler>) -> Self {
        Self {
            config,
            handler,
            metrics: ConsumerMetrics::default(),
        }
    }

    /// Counts into `metrics` instead (register them with [`ConsumerMetrics::register`]).
    pub fn with_metrics(mut self, metrics: ConsumerMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &ConsumerMetrics {
        &self.metrics
    }

    /// Accepts connections on `listener` until `shutdown` is cancelled, then stops reading,
    /// sends the acks already collected, and returns once every connection has closed.
    pub async fn serve(self, listener: TcpListener, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        let connections = ConnectionLimit::new(self.config.max_connections);
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = listener.accept() => r,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let Some(permit) = connections.try_acquire() else {
                        self.metrics.inc_connections_refused();
                        debug!(%peer, "m3msg connection over maxConnections closed.");
                        drop(stream);
                        continue;
                    };
                    self.metrics.inc_connections();
                    let _ = stream.set_nodelay(true);
                    let conn = ConnectionTask {
                        peer,
                        handler: Arc::clone(&self.handler),
                        config: self.config.clone(),
                        metrics: self.metrics.clone(),
                        stop: shutdown.child_token(),
                    };
                    tracker.spawn(async move {
                        conn.run(stream).await;
                        drop(permit);
                    });
                }
                Err(err) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    self.metrics.inc_connection_errors();
                    warn!(error = %err, "m3msg consumer accept failed.");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
        }
        drop(listener);
        tracker.close();
        tracker.wait().await;
    }
}

/// Runs a consumer server with fresh metrics; see [`ConsumerServer::serve`].
pub async fn serve(
    listener: TcpListener,
    handler: Arc<dyn MessageHandler>,
    config: ConsumerConfig,
    shutdown: CancellationToken,
) {
    ConsumerServer::new(config, handler)
        .serve(listener, shutdown)
        .await
}

struct ConnectionTask {
    peer: SocketAddr,
    handler: Arc<dyn MessageHandler>,
    config: ConsumerConfig,
    metrics: ConsumerMetrics,
    /// Cancelled on server shutdown or when the ack writer fails.
    stop: CancellationToken,
}

impl ConnectionTask {
    async fn run(self, stream: TcpStream) {
        debug!(peer = %self.peer, "m3msg producer connected.");
        let (read, write) = stream.into_split();
        let acks = Arc::new(AckQueue {
            state: Mutex::new(AckState::default()),
            full: Notify::new(),
            threshold: self.config.ack_buffer_size.max(1),
            metrics: self.metrics.clone(),
        });
        let reading_done = CancellationToken::new();
        let writer = self.write_acks(write, Arc::clone(&acks), reading_done.clone());
        let reader = async {
            tokio::select! {
                _ = self.stop.cancelled() => {}
                _ = self.read_messages(read, &acks) => {}
            }
            reading_done.cancel();
        };
        tokio::join!(reader, writer);
        debug!(peer = %self.peer, "m3msg producer connection closed.");
    }

    async fn read_messages(&self, mut read: OwnedReadHalf, acks: &Arc<AckQueue>) {
        let max = self.config.max_message_size;
        let mut buf = BytesMut::with_capacity(
            self.config
                .connection_read_buffer_size
                .clamp(64, crate::MAX_INITIAL_BUFFER),
        );
        let mut deadline = FrameDeadline::new(&ListenerLimits {
            max_connections: self.config.max_connections,
            idle_timeout: self.config.idle_timeout,
            frame_timeout: self.config.frame_timeout,
        });
        loop {
            loop {
                let frame = match next_m3msg_frame(&mut buf, max) {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(err) => {
                        self.metrics.inc_frame_error(FrameErrorKind::TooLarge);
                        warn!(peer = %self.peer, error = %err, "m3msg frame too large; closing connection.");
                        return;
                    }
                };
                let msg = match msgpb::Message::decode(frame) {
                    Ok(msg) => msg,
                    Err(err) => {
                        self.metrics.inc_frame_error(FrameErrorKind::Decode);
                        warn!(peer = %self.peer, error = %err, "m3msg frame not decodable; closing connection.");
                        return;
                    }
                };
                self.metrics.inc_messages_received();
                self.handler.handle(ConsumedMessage {
                    metadata: msg.metadata.unwrap_or_default(),
                    value: msg.value,
                    acks: Arc::clone(acks),
                    decided: false,
                });
            }
            deadline.set_partial(!buf.is_empty());
            let read = tokio::time::timeout_at(deadline.deadline(), read.read_buf(&mut buf)).await;
            match read {
                Ok(Ok(0)) => return,
                Ok(Ok(_)) => deadline.on_read(),
                Ok(Err(err)) => {
                    self.metrics.inc_connection_errors();
                    debug!(peer = %self.peer, error = %err, "m3msg read failed.");
                    return;
                }
                Err(_) => {
                    self.metrics.inc_frame_error(FrameErrorKind::Timeout);
                    warn!(peer = %self.peer, expired = ?deadline.expired(), buffered = buf.len(), "m3msg connection timed out; closing it.");
                    return;
                }
            }
        }
    }

    /// Writes ack batches until reading is done, then sends what is left once and closes.
    async fn write_acks(
        &self,
        mut write: OwnedWriteHalf,
        acks: Arc<AckQueue>,
        reading_done: CancellationToken,
    ) {
        let mut tick =
            tokio::time::interval(self.config.ack_flush_interval.max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut buf = BytesMut::new();
        loop {
            let last = tokio::select! {
                biased;
                _ = reading_done.cancelled() => true,
                _ = acks.full.notified() => false,
                _ = tick.tick() => false,
            };
            let batch = acks.take(last);
            if let Err(err) = self.send_acks(&mut write, &mut buf, &batch).await {
                self.metrics.inc_connection_errors();
                debug!(peer = %self.peer, error = %err, "m3msg ack write failed.");
                let rest = acks.take(true);
                self.metrics.add_acks_lost(rest.len());
                self.stop.cancel();
                return;
            }
            if last {
                let _ = write.shutdown().await;
                return;
            }
        }
    }

    async fn send_acks(
        &self,
        write: &mut OwnedWriteHalf,
        buf: &mut BytesMut,
        batch: &[msgpb::Metadata],
    ) -> std::io::Result<()> {
        let per_frame = (self.config.max_message_size / MAX_ACK_ENTRY_LEN).max(1);
        for chunk in batch.chunks(per_frame) {
            buf.clear();
            let ack = msgpb::Ack {
                metadata: chunk.to_vec(),
            };
            if let Err(err) = put_m3msg_frame(&ack, buf, self.config.max_message_size) {
                // Cannot happen with the chunk size above; count rather than fail silently.
                self.metrics.add_acks_lost(chunk.len());
                warn!(peer = %self.peer, error = %err, "m3msg ack frame not encodable.");
                continue;
            }
            let written =
                tokio::time::timeout(self.config.connection_write_timeout, write.write_all(buf))
                    .await;
            match written {
                Ok(Ok(())) => self.metrics.add_acks_sent(chunk.len()),
                Ok(Err(err)) => {
                    self.metrics.add_acks_lost(chunk.len());
                    return Err(err);
                }
                Err(_) => {
                    self.metrics.add_acks_lost(chunk.len());
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "ack write timed out",
                    ));
                }
            }
        }
        Ok(())
    }
}
