//! The rawtcp ingest server: M3's coordinator-to-aggregator protocol.
//!
//! Each connection carries a stream of frames, each a zig-zag varint length followed by a
//! protobuf `MetricWithMetadatas`. There are no acks and nothing is ever written back, exactly
//! like M3: the client learns nothing, so every problem is counted and logged here.
//!
//! * A frame that cannot be decoded (bad length prefix, oversized, or protobuf that does not
//!   parse) loses the stream position: it is counted (`decode_error`), logged, and **that
//!   connection is closed**. Other connections are unaffected; the client reconnects.
//! * A message that decodes but is rejected (late, unowned shard, bad aggregation…) is counted
//!   by the engine and logged; the connection stays open.
//! * Logs of errors are rate limited to `error_log_limit_per_second` per server (M3's
//!   `errorLogLimitPerSecond`), so a misbehaving client cannot flood the log; counters are not.
//!
//! Each listener serves at most `maxConnections` connections; a connection that sends nothing
//! for `idleTimeout`, or starts a frame and does not finish it within `frameTimeout`, is closed
//! and counted (`rawtcp_connections_closed`), so a peer cannot hold a half-sent 50 MB frame's
//! memory forever.
//!
//! One read buffer per connection is reused for the whole connection: frames are split off its
//! front and the space is reclaimed once they are processed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use m3_server::tcp::{ConnectionLimit, FrameDeadline, ListenerLimits};

use crate::aggregator::Aggregator;
use crate::error::RejectReason;
use crate::ingest;

/// Error log lines allowed per second per server.
pub const DEFAULT_ERROR_LOG_LIMIT_PER_SECOND: u64 = 10;
/// Initial capacity of a connection's read buffer (M3's `readBufferSize`).
const READ_BUFFER_SIZE: usize = 64 * 1024;

/// The current Unix time in nanoseconds (0 before the epoch, saturating far after it).
pub fn unix_nanos_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Allows `limit` log lines per second, shared by all connections of a server.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    limit: u64,
    /// Upper 32 bits: the current second (wrapping); lower 32 bits: lines logged in it.
    state: AtomicU64,
}

impl LogLimiter {
    pub(crate) fn new(limit: u64) -> LogLimiter {
        LogLimiter {
            limit,
            state: AtomicU64::new(0),
        }
    }

    pub(crate) fn allow(&self) -> bool {
        let second = (unix_nanos_now() / 1_000_000_000) as u64 & 0xffff_ffff;
        let mut current = self.state.load(Ordering::Relaxed);
        loop {
            let (s, n) = (current >> 32, current & 0xffff_ffff);
            let (next, allowed) = if s != second {
                ((second << 32) | 1, true)
            } else if n < self.limit {
                (current + 1, true)
            } else {
                return false;
            };
            match self.state.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return allowed,
                Err(actual) => current = actual,
            }
        }
    }
}

/// Serves rawtcp connections from `listener` into `aggregator` until `shutdown` is cancelled,
/// then closes every connection and returns once they have all finished.
///
/// `max_message_size` bounds the length prefix of a frame (M3's
/// `protobufIterator.maxMessageSize`, default
/// [`DEFAULT_RAWTCP_MAX_MESSAGE_SIZE`](m3_proto::framing::DEFAULT_RAWTCP_MAX_MESSAGE_SIZE)).
///
/// # Errors
/// None today: accept errors (for example running out of file descriptors) are logged and
/// retried with backoff from 5 ms up to 1 s, as M3's accept loop does. The `Result` leaves room
/// for listener setup errors.
///
/// # Cancel safety
/// Dropping the returned future stops accepting but leaves running connections to finish on
/// their own; cancel `shutdown` instead for an orderly stop.
pub async fn serve_rawtcp(
    listener: TcpListener,
    aggregator: Arc<Aggregator>,
    max_message_size: usize,
    limits: ListenerLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let tracker = TaskTracker::new();
    let connections = ConnectionLimit::new(limits.max_connections);
    let limiter = Arc::new(LogLimiter::new(DEFAULT_ERROR_LOG_LIMIT_PER_SECOND));
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                let Some(permit) = connections.try_acquire() else {
                    aggregator.metrics().record_connection_refused();
                    if limiter.allow() {
                        tracing::warn!(%peer, max = limits.max_connections, "rawtcp connection over maxConnections closed.");
                    }
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tracing::debug!(%peer, "rawtcp connection accepted.");
                let connection = handle_connection(
                    stream,
                    Arc::clone(&aggregator),
                    max_message_size,
                    FrameDeadline::new(&limits),
                    shutdown.clone(),
                    Arc::clone(&limiter),
                );
                tracker.spawn(async move {
                    connection.await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, ?backoff, "rawtcp accept failed, retrying.");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

async fn handle_connection(
    mut stream: TcpStream,
    aggregator: Arc<Aggregator>,
    max_message_size: usize,
    mut deadline: FrameDeadline,
    shutdown: CancellationToken,
    limiter: Arc<LogLimiter>,
) {
    let peer = stream.peer_addr().ok();
    let mut buf = BytesMut::with_capacity(READ_BUFFER_SIZE);
    let mut decoder = ingest::MessageDecoder::default();
    let mut rejected = |e: ingest::IngestError| {
        if limiter.allow() {
            tracing::warn!(?peer, error = %e, "rawtcp message rejected.");
        }
    };
    loop {
        let now = unix_nanos_now();
        // Everything read is applied before the next read waits.
        if let Err(e) =
            decoder.apply_frames(&aggregator, &mut buf, max_message_size, now, &mut rejected)
        {
            aggregator
                .metrics()
                .record_rejected(RejectReason::DecodeError, 1);
            if limiter.allow() {
                tracing::error!(?peer, error = %e, "closing rawtcp connection.");
            }
            return;
        }
        if buf.capacity() - buf.len() < READ_BUFFER_SIZE / 4 {
            // Reclaims the space of processed frames when they are no longer referenced.
            buf.reserve(READ_BUFFER_SIZE);
        }
        deadline.set_partial(!buf.is_empty());
        let read = tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep_until(deadline.deadline()) => {
                aggregator.metrics().record_connection_timed_out();
                if limiter.allow() {
                    tracing::warn!(?peer, expired = ?deadline.expired(), buffered = buf.len(), "rawtcp connection timed out; closing it.");
                }
                return;
            }
            read = stream.read_buf(&mut buf) => read,
        };
        deadline.on_read();
        match read {
            Ok(0) => {
                if !buf.is_empty() {
                    // The peer closed in the middle of a frame.
                    aggregator
                        .metrics()
                        .record_rejected(RejectReason::DecodeError, 1);
                    if limiter.allow() {
                        tracing::warn!(
                            ?peer,
                            bytes = buf.len(),
                            "rawtcp connection closed inside a frame."
                        );
                    }
                }
                return;
            }
            Ok(_) => {}
            Err(e) => {
                if limiter.allow() {
                    tracing::warn!(?peer, error = %e, "rawtcp read failed, closing connection.");
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_limiter_caps_per_second() {
        let l = LogLimiter::new(3);
        let allowed = (0..10).filter(|_| l.allow()).count();
        // A second boundary may fall inside the loop; at most two seconds' worth.
        assert!((3..=6).contains(&allowed), "{allowed}");
    }
}
