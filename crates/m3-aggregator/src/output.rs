//! Where a leader's flushed windows go when their consumer runs in the same process.
//!
//! A deployment's aggregators send their output over m3msg (topic `aggregated_metrics`) to
//! the coordinators, which ack each message once it is stored. `m3 local` runs the consumer
//! in the aggregator's process, and encoding each value as a protobuf message, framing it,
//! writing it to a loopback socket, reading, decoding and acking it there cost most of the
//! CPU its aggregated path took at a scrape's pace. An [`OutputSink`] takes the values as they
//! are instead, one flushed shard at a time, and answers with those it could not store yet:
//!
//! ```text
//! flush pass ──shard's outputs──▶ OutputSink::write ──▶ (stored) ─┐
//!      ▲                                   └─ not stored yet ─────┴▶ retried at the next flush,
//!      └──────────── flush times persist once nothing waits ──────   dropped past the TTL
//! ```
//!
//! The guarantees are those of the m3msg path: the flush times move on only once everything
//! they cover is stored, and a value that cannot be stored within the message TTL is dropped
//! and counted (`outputs_discarded{reason="expired"}`), as are the oldest while more wait than
//! the producer's buffer would hold (`maxBufferSize`; `reason="buffer_full"`).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::flush::AggregatedOutput;

/// What [`OutputSink::write`] returns: the outputs it did not store, to be given again later.
pub type SinkWrite = Pin<Box<dyn Future<Output = Vec<AggregatedOutput>> + Send>>;

/// A consumer of aggregated outputs in this process.
pub trait OutputSink: Send + Sync {
    /// Stores `outputs`; resolves to those not stored now (a store that cannot write, a
    /// storage policy with nowhere to go yet), which the caller gives again later.
    fn write(&self, outputs: Vec<AggregatedOutput>) -> SinkWrite;
}

/// The sink an aggregator's output goes to instead of its m3msg topic, attached once its
/// consumer has started (the aggregators start first). Until then a leader keeps its windows,
/// as it does while its topic has no consumer service. Clones share the slot.
#[derive(Clone)]
pub struct InProcessOutput {
    sink: Arc<OnceLock<Arc<dyn OutputSink>>>,
    message_ttl: Duration,
}

impl InProcessOutput {
    /// An empty slot; an output not stored within `message_ttl` of its first attempt is
    /// dropped and counted.
    pub fn new(message_ttl: Duration) -> InProcessOutput {
        InProcessOutput {
            sink: Arc::new(OnceLock::new()),
            message_ttl,
        }
    }

    /// Attaches the consumer; later calls change nothing.
    pub fn attach(&self, sink: Arc<dyn OutputSink>) {
        let _ = self.sink.set(sink);
    }

    /// The consumer, once attached.
    pub fn sink(&self) -> Option<&Arc<dyn OutputSink>> {
        self.sink.get()
    }

    /// How long an output may wait to be stored.
    pub fn message_ttl(&self) -> Duration {
        self.message_ttl
    }
}

impl std::fmt::Debug for InProcessOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessOutput")
            .field("attached", &self.sink.get().is_some())
            .field("message_ttl", &self.message_ttl)
            .finish()
    }
}
