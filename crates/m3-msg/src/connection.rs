//! One TCP connection from a consumer service writer to one consumer instance.
//!
//! The writer hands messages over with a non-blocking [`Connection::try_send`]; a task owns the
//! socket and does all I/O, so no lock is ever held across it. The task's life:
//!
//! ```text
//!  dial (dialTimeout) ──ok──▶ connected: frames → write buffer ──▶ socket
//!    ▲        │                  written when writeBufferSize is reached or every
//!    │      fail                 flushInterval (writeTimeout per write);
//!    │        ▼                  Ack frames ← socket, routed to the writer
//!  backoff (retry) ◀── read/write error, EOF or bad ack frame
//! ```
//!
//! While disconnected, [`Connection::is_connected`] is false so writers pick another owner or
//! wait; anything still queued is discarded, because the writer redelivers every un-acked
//! message after its retry backoff anyway. Delivery is at-least-once by construction: this
//! layer never needs to know what was lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::BytesMut;
use m3_proto::framing::{FrameError, next_m3msg_frame, put_m3msg_frame};
use m3_proto::msgpb;
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::ConnectionConfig;
use crate::metrics::{FrameErrorKind, ProducerMetrics};

/// Acks from one frame, forwarded to the writer that owns the connection.
pub(crate) type AckBatch = Vec<msgpb::Metadata>;

/// Handle to a connection task. Dropping it stops the task.
#[derive(Debug)]
pub(crate) struct Connection {
    tx: mpsc::Sender<msgpb::Message>,
    connected: Arc<AtomicBool>,
    cancel: CancellationToken,
}

impl Connection {
    /// Starts the connection task on the current runtime.
    pub(crate) fn spawn(
        endpoint: String,
        config: ConnectionConfig,
        max_message_size: usize,
        acks: mpsc::Sender<AckBatch>,
        metrics: ProducerMetrics,
        cancel: CancellationToken,
    ) -> Self {
        let (tx, rx) = mpsc::channel(config.queue_size.max(1));
        let connected = Arc::new(AtomicBool::new(false));
        let task = Task {
            endpoint,
            config,
            max_message_size,
            acks,
            metrics,
            cancel: cancel.clone(),
            connected: Arc::clone(&connected),
        };
        tokio::spawn(task.run(rx));
        Self {
            tx,
            connected,
            cancel,
        }
    }

    /// Whether the socket is up right now.
    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Free slots in the send queue; the writer prefers the owner with the most.
    pub(crate) fn capacity(&self) -> usize {
        self.tx.capacity()
    }

    /// Queues a message without waiting; hands it back when the queue is full or closed.
    pub(crate) fn try_send(&self, msg: msgpb::Message) -> Result<(), msgpb::Message> {
        self.tx.try_send(msg).map_err(|e| e.into_inner())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Why a connected session ended.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("connection closed by consumer")]
    Eof,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("write timed out")]
    WriteTimeout,
    #[error("bad ack frame: {0}")]
    Frame(#[from] FrameError),
    #[error("bad ack frame: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("stopped")]
    Stopped,
}

struct Task {
    endpoint: String,
    config: ConnectionConfig,
    max_message_size: usize,
    acks: mpsc::Sender<AckBatch>,
    metrics: ProducerMetrics,
    cancel: CancellationToken,
    connected: Arc<AtomicBool>,
}

impl Task {
    async fn run(self, mut rx: mpsc::Receiver<msgpb::Message>) {
        let mut failures: u32 = 0;
        loop {
            let dial = tokio::select! {
                _ = self.cancel.cancelled() => return,
                r = tokio::time::timeout(self.config.dial_timeout, TcpStream::connect(&self.endpoint)) => r,
            };
            match dial {
                Ok(Ok(stream)) => {
                    failures = 0;
                    // Latency matters more than packet count; batching happens in our buffer.
                    let _ = stream.set_nodelay(true);
                    debug!(endpoint = %self.endpoint, "m3msg connection established.");
                    self.connected.store(true, Ordering::Release);
                    let end = self.session(stream, &mut rx).await;
                    self.connected.store(false, Ordering::Release);
                    match end {
                        SessionEnd::Stopped => return,
                        end => {
                            self.metrics.inc_connection_errors();
                            warn!(endpoint = %self.endpoint, reason = %end, "m3msg connection lost; reconnecting.");
                        }
                    }
                }
                Ok(Err(err)) => {
                    failures = failures.saturating_add(1);
                    self.metrics.inc_connection_errors();
                    debug!(endpoint = %self.endpoint, error = %err, "m3msg dial failed.");
                }
                Err(_) => {
                    failures = failures.saturating_add(1);
                    self.metrics.inc_connection_errors();
                    debug!(endpoint = %self.endpoint, "m3msg dial timed out.");
                }
            }
            let deadline = Instant::now() + self.config.retry.backoff(failures.max(1));
            loop {
                tokio::select! {
                    _ = self.cancel.cancelled() => return,
                    _ = tokio::time::sleep_until(deadline) => break,
                    // Discard while down: the writer redelivers un-acked messages.
                    msg = rx.recv() => if msg.is_none() { return },
                }
            }
        }
    }

    async fn session(
        &self,
        stream: TcpStream,
        rx: &mut mpsc::Receiver<msgpb::Message>,
    ) -> SessionEnd {
        let (read, write) = stream.into_split();
        let result = tokio::select! {
            _ = self.cancel.cancelled() => Err(SessionEnd::Stopped),
            r = self.read_acks(read) => r,
            r = self.write_messages(write, rx) => r,
        };
        match result {
            Ok(()) => SessionEnd::Stopped,
            Err(end) => end,
        }
    }

    async fn write_messages(
        &self,
        mut write: OwnedWriteHalf,
        rx: &mut mpsc::Receiver<msgpb::Message>,
    ) -> Result<(), SessionEnd> {
        let limit = self.config.write_buffer_size.max(1);
        let mut buf = BytesMut::with_capacity(limit.min(crate::MAX_INITIAL_BUFFER));
        let mut tick = tokio::time::interval(
            self.config
                .flush_interval
                .max(std::time::Duration::from_millis(1)),
        );
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = rx.recv() => {
                    let Some(msg) = msg else {
                        self.flush(&mut write, &mut buf).await?;
                        return Ok(());
                    };
                    if let Err(err) = put_m3msg_frame(&msg, &mut buf, self.max_message_size) {
                        // The writer checks sizes before sending, so this is a bug if seen;
                        // the message stays un-acked and is retried until its TTL.
                        warn!(endpoint = %self.endpoint, error = %err, "m3msg message not encodable.");
                    }
                    if buf.len() >= limit {
                        self.flush(&mut write, &mut buf).await?;
                    }
                }
                _ = tick.tick() => self.flush(&mut write, &mut buf).await?,
            }
        }
    }

    async fn flush(
        &self,
        write: &mut OwnedWriteHalf,
        buf: &mut BytesMut,
    ) -> Result<(), SessionEnd> {
        if buf.is_empty() {
            return Ok(());
        }
        match tokio::time::timeout(self.config.write_timeout, write.write_all(buf)).await {
            Ok(Ok(())) => {
                buf.clear();
                Ok(())
            }
            Ok(Err(err)) => Err(err.into()),
            Err(_) => Err(SessionEnd::WriteTimeout),
        }
    }

    async fn read_acks(&self, mut read: OwnedReadHalf) -> Result<(), SessionEnd> {
        let mut buf = BytesMut::with_capacity(
            self.config
                .read_buffer_size
                .clamp(64, crate::MAX_INITIAL_BUFFER),
        );
        loop {
            loop {
                let frame = match next_m3msg_frame(&mut buf, self.max_message_size) {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(err) => {
                        self.metrics.inc_ack_frame_error(FrameErrorKind::TooLarge);
                        return Err(err.into());
                    }
                };
                let ack = msgpb::Ack::decode(frame).inspect_err(|_| {
                    self.metrics.inc_ack_frame_error(FrameErrorKind::Decode);
                })?;
                if !ack.metadata.is_empty() && self.acks.send(ack.metadata).await.is_err() {
                    return Err(SessionEnd::Stopped);
                }
            }
            if read.read_buf(&mut buf).await? == 0 {
                return Err(SessionEnd::Eof);
            }
        }
    }
}
