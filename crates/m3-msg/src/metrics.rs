//! Self-metrics of the producer and the consumer server, declared in one place.
//!
//! Each side has one cloneable struct of `prometheus-client` metrics. Clones share the same
//! counters, so a binary creates the struct, registers it once under a prefix, and hands a
//! clone to the producer or server:
//!
//! ```
//! use prometheus_client::registry::Registry;
//! let mut registry = Registry::default();
//! let metrics = m3_msg::ProducerMetrics::default();
//! metrics.register(&mut registry, "m3msg_producer");
//! ```
//!
//! Every message the producer stops trying to deliver is counted in `dropped` with a
//! [`DropReason`]; messages refused by `produce` (the caller still holds them) are counted in
//! `rejected`.

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Why the producer gave up on a message. The label value is the snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// `buffer_full`: pushed out of a full buffer by a newer message (`OnFull::DropOldest`).
    /// Counted once per message.
    BufferFull,
    /// `ttl_expired`: not acked by a consumer service within its message TTL. Counted per
    /// service (and per replica for REPLICATED).
    TtlExpired,
    /// `no_consumer_instance`: no instance of the service owns the shard (REPLICATED at
    /// produce time, or a replica slot that lost its instance with no replacement). Counted
    /// per service / replica.
    NoConsumerInstance,
    /// `no_consumer_service`: no consumer service at produce time, or the service was removed
    /// with messages outstanding. Counted per message or per service.
    NoConsumerService,
    /// `encode_error`: the message could not be framed (larger than the writer's
    /// `maxMessageSize`).
    EncodeError,
    /// `closed`: still un-acked when [`Producer::close`](crate::Producer::close) gave up
    /// waiting, or when the producer was dropped.
    Closed,
}

impl DropReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BufferFull => "buffer_full",
            Self::TtlExpired => "ttl_expired",
            Self::NoConsumerInstance => "no_consumer_instance",
            Self::NoConsumerService => "no_consumer_service",
            Self::EncodeError => "encode_error",
            Self::Closed => "closed",
        }
    }
}

/// Why `produce` refused a message (it was handed back, not lost). The label value is the
/// snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// `buffer_full`: the buffer is full and the strategy is `OnFull::ReturnError`.
    BufferFull,
    /// `too_large`: the value is larger than `maxMessageSize` or the whole buffer.
    TooLarge,
    /// `invalid_shard`: the shard is not below the topic's shard count.
    InvalidShard,
    /// `closed`: the producer is closed.
    Closed,
}

impl RejectReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BufferFull => "buffer_full",
            Self::TooLarge => "too_large",
            Self::InvalidShard => "invalid_shard",
            Self::Closed => "closed",
        }
    }
}

/// Which frame check failed. The label value is the snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameErrorKind {
    /// `too_large`: the length prefix exceeds the maximum message size.
    TooLarge,
    /// `decode`: the payload is not a valid protobuf `Message` (or `Ack` on the producer
    /// side).
    Decode,
    /// `timeout`: a frame began but did not arrive whole within the frame timeout, or the
    /// connection sent nothing for the idle timeout; the connection is closed.
    Timeout,
}

impl FrameErrorKind {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::Decode => "decode",
            Self::Timeout => "timeout",
        }
    }
}

macro_rules! label_value_from_as_str {
    ($($ty:ty),*) => {$(
        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
                encoder.write_str(self.as_str())
            }
        }
    )*};
}
label_value_from_as_str!(DropReason, RejectReason, FrameErrorKind);

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct DropLabels {
    reason: DropReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct RejectLabels {
    reason: RejectReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct FrameLabels {
    kind: FrameErrorKind,
}

/// Producer-side counters (shared by all its consumer service writers and connections).
#[derive(Debug, Clone, Default)]
pub struct ProducerMetrics {
    produced: Counter,
    rejected: Family<RejectLabels, Counter>,
    dropped: Family<DropLabels, Counter>,
    sent: Counter,
    retries: Counter,
    acks_received: Counter,
    ack_frame_errors: Family<FrameLabels, Counter>,
    connection_errors: Counter,
    buffer_bytes: Gauge,
    buffer_messages: Gauge,
}

impl ProducerMetrics {
    /// Registers every metric under `prefix` (e.g. `m3msg_producer` gives
    /// `m3msg_producer_dropped_total{reason="ttl_expired"}`).
    pub fn register(&self, registry: &mut Registry, prefix: &str) {
        let r = registry.sub_registry_with_prefix(prefix);
        r.register(
            "produced",
            "Messages accepted into the buffer",
            self.produced.clone(),
        );
        r.register(
            "rejected",
            "Messages refused by produce and handed back to the caller",
            self.rejected.clone(),
        );
        r.register(
            "dropped",
            "Messages given up on, by reason",
            self.dropped.clone(),
        );
        r.register(
            "sent",
            "Message deliveries handed to a connection, first tries and retries",
            self.sent.clone(),
        );
        r.register(
            "retries",
            "Deliveries of a message after its first",
            self.retries.clone(),
        );
        r.register(
            "acks_received",
            "Acks that matched an outstanding message",
            self.acks_received.clone(),
        );
        r.register(
            "ack_frame_errors",
            "Bad ack frames from consumers; each closes its connection",
            self.ack_frame_errors.clone(),
        );
        r.register(
            "connection_errors",
            "Failed dials, writes and reads on consumer connections",
            self.connection_errors.clone(),
        );
        r.register(
            "buffer_bytes",
            "Bytes of message values held in the buffer",
            self.buffer_bytes.clone(),
        );
        r.register(
            "buffer_messages",
            "Messages held in the buffer",
            self.buffer_messages.clone(),
        );
    }

    /// Messages accepted by `produce`.
    pub fn produced(&self) -> u64 {
        self.produced.get()
    }

    /// Messages dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped.get_or_create(&DropLabels { reason }).get()
    }

    /// Messages refused by `produce` for `reason`.
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected.get_or_create(&RejectLabels { reason }).get()
    }

    /// Deliveries handed to connections.
    pub fn sent(&self) -> u64 {
        self.sent.get()
    }

    /// Redeliveries.
    pub fn retries(&self) -> u64 {
        self.retries.get()
    }

    /// Acks that matched an outstanding message.
    pub fn acks_received(&self) -> u64 {
        self.acks_received.get()
    }

    /// Bad ack frames.
    pub fn ack_frame_errors(&self, kind: FrameErrorKind) -> u64 {
        self.ack_frame_errors
            .get_or_create(&FrameLabels { kind })
            .get()
    }

    /// Connection failures.
    pub fn connection_errors(&self) -> u64 {
        self.connection_errors.get()
    }

    pub(crate) fn inc_produced(&self) {
        self.produced.inc();
    }
    pub(crate) fn inc_rejected(&self, reason: RejectReason) {
        self.rejected.get_or_create(&RejectLabels { reason }).inc();
    }
    pub(crate) fn inc_dropped(&self, reason: DropReason) {
        self.dropped.get_or_create(&DropLabels { reason }).inc();
    }
    pub(crate) fn inc_sent(&self, retry: bool) {
        self.sent.inc();
        if retry {
            self.retries.inc();
        }
    }
    pub(crate) fn inc_acks_received(&self) {
        self.acks_received.inc();
    }
    pub(crate) fn inc_ack_frame_error(&self, kind: FrameErrorKind) {
        self.ack_frame_errors
            .get_or_create(&FrameLabels { kind })
            .inc();
    }
    pub(crate) fn inc_connection_errors(&self) {
        self.connection_errors.inc();
    }
    pub(crate) fn buffer_added(&self, bytes: usize) {
        self.buffer_bytes.inc_by(bytes as i64);
        self.buffer_messages.inc();
    }
    pub(crate) fn buffer_released(&self, bytes: usize) {
        self.buffer_bytes.dec_by(bytes as i64);
        self.buffer_messages.dec();
    }
}

/// Consumer-server counters.
#[derive(Debug, Clone, Default)]
pub struct ConsumerMetrics {
    connections: Counter,
    messages_received: Counter,
    acks_sent: Counter,
    no_acks: Counter,
    acks_lost: Counter,
    frame_errors: Family<FrameLabels, Counter>,
    connection_errors: Counter,
    connections_refused: Counter,
}

impl ConsumerMetrics {
    /// Registers every metric under `prefix` (e.g. `m3msg_consumer`).
    pub fn register(&self, registry: &mut Registry, prefix: &str) {
        let r = registry.sub_registry_with_prefix(prefix);
        r.register(
            "connections_refused",
            "Producer connections closed at once because maxConnections were open",
            self.connections_refused.clone(),
        );
        r.register(
            "connections",
            "Producer connections accepted",
            self.connections.clone(),
        );
        r.register(
            "messages_received",
            "Messages decoded and given to the handler",
            self.messages_received.clone(),
        );
        r.register(
            "acks_sent",
            "Acks written to producers",
            self.acks_sent.clone(),
        );
        r.register(
            "no_acks",
            "Messages the handler declined to ack; the producer redelivers them",
            self.no_acks.clone(),
        );
        r.register(
            "acks_lost",
            "Acks not sent because their connection had closed; the producer redelivers",
            self.acks_lost.clone(),
        );
        r.register(
            "frame_errors",
            "Bad frames; each closes its connection",
            self.frame_errors.clone(),
        );
        r.register(
            "connection_errors",
            "Reads or ack writes that failed",
            self.connection_errors.clone(),
        );
    }

    /// Accepted connections.
    pub fn connections(&self) -> u64 {
        self.connections.get()
    }
    /// Messages given to the handler.
    pub fn messages_received(&self) -> u64 {
        self.messages_received.get()
    }
    /// Acks written.
    pub fn acks_sent(&self) -> u64 {
        self.acks_sent.get()
    }
    /// Messages not acked by the handler.
    pub fn no_acks(&self) -> u64 {
        self.no_acks.get()
    }
    /// Acks lost to a closed connection.
    pub fn acks_lost(&self) -> u64 {
        self.acks_lost.get()
    }
    /// Frame errors of `kind`.
    pub fn frame_errors(&self, kind: FrameErrorKind) -> u64 {
        self.frame_errors.get_or_create(&FrameLabels { kind }).get()
    }
    /// Failed reads or writes.
    pub fn connection_errors(&self) -> u64 {
        self.connection_errors.get()
    }

    pub(crate) fn inc_connections(&self) {
        self.connections.inc();
    }
    pub(crate) fn inc_messages_received(&self) {
        self.messages_received.inc();
    }
    pub(crate) fn add_acks_sent(&self, n: usize) {
        self.acks_sent.inc_by(n as u64);
    }
    pub(crate) fn inc_no_acks(&self) {
        self.no_acks.inc();
    }
    pub(crate) fn add_acks_lost(&self, n: usize) {
        self.acks_lost.inc_by(n as u64);
    }
    pub(crate) fn inc_frame_error(&self, kind: FrameErrorKind) {
        self.frame_errors.get_or_create(&FrameLabels { kind }).inc();
    }
    pub(crate) fn inc_connection_errors(&self) {
        self.connection_errors.inc();
    }
    pub(crate) fn inc_connections_refused(&self) {
        self.connections_refused.inc();
    }
    /// Connections closed at once because `maxConnections` were open.
    pub fn connections_refused(&self) -> u64 {
        self.connections_refused.get()
    }
}
