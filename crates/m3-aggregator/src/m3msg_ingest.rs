//! The aggregator's m3msg ingest server (`m3msg:` in its config): samples from coordinators
//! and forwarded rollups from other aggregators over the `aggregator_ingest` topic.
//!
//! Each m3msg message carries one `MetricWithMetadatas` (the payload of a rawtcp frame), and
//! goes through the same [`ingest::MessageDecoder`] as rawtcp, so both servers treat every
//! message type alike (one decoder per thread: it keeps the last metadata it decoded). Applying is an in-memory add under a shard lock, so it runs on the connection's read
//! loop. Every message is acked once applied, also when the engine refused it or it does not
//! decode (counted as `decode_error`): as in M3, a message that cannot be applied now will not
//! be applied on redelivery either, and a producer retrying it would only hold its buffer.

use std::cell::RefCell;
use std::sync::Arc;

use m3_msg::{ConsumedMessage, ConsumerConfig, ConsumerMetrics, ConsumerServer, MessageHandler};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::error::RejectReason;
use crate::rawtcp::{DEFAULT_ERROR_LOG_LIMIT_PER_SECOND, LogLimiter, unix_nanos_now};
use crate::{Aggregator, ingest};

thread_local! {
    static DECODER: RefCell<ingest::MessageDecoder> = RefCell::default();
}

/// The handler: decode, apply, ack.
pub fn handler(aggregator: Arc<Aggregator>) -> Arc<dyn MessageHandler> {
    let limiter = LogLimiter::new(DEFAULT_ERROR_LOG_LIMIT_PER_SECOND);
    Arc::new(move |message: ConsumedMessage| {
        let applied = DECODER.with_borrow_mut(|decoder| {
            decoder.apply(&aggregator, message.value().as_ref(), unix_nanos_now())
        });
        match applied {
            Ok(applied) => {
                if let Err(e) = applied
                    && limiter.allow()
                {
                    tracing::warn!(error = %e, "m3msg message rejected.");
                }
            }
            Err(e) => {
                aggregator
                    .metrics()
                    .record_rejected(RejectReason::DecodeError, 1);
                if limiter.allow() {
                    tracing::warn!(error = %e, shard = message.shard(), "m3msg message does not decode; acked and dropped.");
                }
            }
        }
        message.ack();
    })
}

/// Serves m3msg producers from `listener` into `aggregator` until `shutdown`; the consumer's
/// own counters (connections, frames, acks) are `metrics`.
pub async fn serve_m3msg(
    listener: TcpListener,
    aggregator: Arc<Aggregator>,
    config: ConsumerConfig,
    metrics: ConsumerMetrics,
    shutdown: CancellationToken,
) {
    ConsumerServer::new(config, handler(aggregator))
        .with_metrics(metrics)
        .serve(listener, shutdown)
        .await;
}
