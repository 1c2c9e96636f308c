//! Configuration for the producer and the consumer server, keyed like M3's YAML.
//!
//! Every struct here is plain data with a [`Default`] that states M3's default for each field,
//! and derives `serde::Deserialize` with M3's lowerCamelCase key names, so a binary embeds these
//! structs in its own config file and gets the producer it describes without copying fields:
//!
//! ```yaml
//! producer:
//!   buffer:
//!     maxBufferSize: 1000000000
//!   writer:
//!     topicName: aggregated_metrics
//!     messageRetry:
//!       initialBackoff: 1m
//!       maxBackoff: 2m
//!     connection:
//!       dialTimeout: 5s
//!       flushInterval: 1s
//! ```
//!
//! The producer blocks (`producer`, `buffer`, `writer`, `connection`) accept every key of M3's
//! blocks, document those that have no effect here, and refuse unknown keys, so a misspelt key
//! fails at startup. A key left out, or a block written with nothing under it, takes its
//! default. Durations are M3's duration strings ([`m3_config::duration`]); retry blocks are
//! M3's shared `retry:` block ([`m3_config::RetryConfig`]) over each use's own defaults
//! ([`RetryPolicy::MESSAGE`], [`RetryPolicy::RECONNECT`]).

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// What [`Producer::produce`](crate::Producer::produce) does when the buffer has no room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OnFull {
    /// Drop the oldest buffered messages until the new one fits, counting each drop as
    /// `buffer_full`. M3's default (`dropOldest`).
    #[default]
    DropOldest,
    /// Refuse the new message and hand it back in
    /// [`ProduceError::BufferFull`](crate::ProduceError::BufferFull) (`returnError`).
    ReturnError,
}

/// Producer settings (`producer:` in M3's flush handler and aggregator client configs).
///
/// `writer` (with its `topicName`) is required when the block is read from a file; `buffer`
/// may be left out.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProducerConfig {
    /// The shared in-memory buffer.
    #[serde(default, deserialize_with = "block_or_default")]
    pub buffer: BufferConfig,
    /// The per consumer service writers and their connections.
    pub writer: WriterConfig,
}

/// The producer's buffer (`buffer:`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct BufferConfig {
    /// Bytes of message values the buffer may hold before `onFullStrategy` applies
    /// (`maxBufferSize`). Default 100 MiB (M3's code default; the shipped aggregator config
    /// uses 1e9). A value's size is its length, not its allocation's capacity.
    pub max_buffer_size: usize,
    /// Largest single message value accepted (`maxMessageSize`). Default 1 MiB.
    pub max_message_size: usize,
    /// What to do when the buffer is full (`onFullStrategy`). Default `dropOldest`.
    pub on_full_strategy: OnFull,
    /// M3's share of the buffer a message may spill over (`allowedSpilloverRatio`). Accepted,
    /// no effect.
    pub allowed_spillover_ratio: Option<f64>,
    /// M3's pause between drops of old messages (`dropOldestInterval`). Accepted, no effect:
    /// a full buffer drops at once.
    #[serde(with = "m3_config::option_duration")]
    pub drop_oldest_interval: Option<Duration>,
    /// M3's retry of buffer cleanups (`cleanupRetry`). Accepted, no effect.
    pub cleanup_retry: Option<m3_config::Ignored>,
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            max_buffer_size: 100 * 1024 * 1024,
            max_message_size: 1024 * 1024,
            on_full_strategy: OnFull::DropOldest,
            allowed_spillover_ratio: None,
            drop_oldest_interval: None,
            cleanup_retry: None,
        }
    }
}

/// A consumer service writer (`writer:`), with every key of M3's writer block. `topicName`,
/// `topicServiceOverride` and `placementServiceOverride` say where the topic and the consumer
/// placements are; the glue that follows them into
/// [`ConsumerServiceSpec`](crate::ConsumerServiceSpec)s reads them, the producer does not.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WriterConfig {
    /// The topic produced to (`topicName`), e.g. `aggregated_metrics`. Required in a file.
    pub topic_name: String,
    /// Where the topic is in KV (`topicServiceOverride`).
    #[serde(default)]
    pub topic_service_override: Option<m3_config::KvScopeConfig>,
    /// Accepted, no effect.
    #[serde(default)]
    pub topic_watch_init_timeout: Option<m3_config::Ignored>,
    /// Where the consumer services' placements are (`placementServiceOverride`).
    #[serde(default)]
    pub placement_service_override: Option<PlacementServiceOverride>,
    /// Accepted, no effect.
    #[serde(default)]
    pub placement_watch_init_timeout: Option<m3_config::Ignored>,
    /// Accepted, no effect.
    #[serde(default)]
    pub placement: Option<m3_config::Ignored>,
    /// Go object pool; accepted, no effect.
    #[serde(default)]
    pub message_pool: Option<m3_config::Ignored>,
    /// Backoff between deliveries of a message that was not acked (`messageRetry`, M3's
    /// `retry:` block over [`RetryPolicy::MESSAGE`]; `maxRetries` and `forever` have no effect:
    /// a message is retried until it is acked or its TTL ends).
    #[serde(default = "message_retry_default", deserialize_with = "message_retry")]
    pub message_retry: RetryPolicy,
    /// How soon a message is tried again when no connection could take it at all (no live
    /// instance owns its shard, or every owner is disconnected)
    /// (`messageQueueNewWritesScanInterval`). Default 200ms.
    #[serde(
        default = "new_writes_scan_interval_default",
        with = "m3_config::duration"
    )]
    pub message_queue_new_writes_scan_interval: Duration,
    /// Accepted, no effect.
    #[serde(default, with = "m3_config::option_duration")]
    pub message_queue_full_scan_interval: Option<Duration>,
    /// Accepted, no effect.
    #[serde(default)]
    pub message_queue_scan_batch_size: Option<usize>,
    /// Accepted, no effect.
    #[serde(default)]
    pub initial_ack_map_size: Option<usize>,
    /// Accepted, no effect.
    #[serde(default, with = "m3_config::option_duration")]
    pub close_check_interval: Option<Duration>,
    /// Accepted, no effect.
    #[serde(default)]
    pub ack_error_retry: Option<m3_config::Ignored>,
    /// Go encoder settings; accepted, no effect.
    #[serde(default)]
    pub encoder: Option<m3_config::Ignored>,
    /// Accepted, no effect.
    #[serde(default)]
    pub decoder: Option<m3_config::Ignored>,
    /// Connections to consumer instances.
    #[serde(default, deserialize_with = "block_or_default")]
    pub connection: ConnectionConfig,
    /// Accepted, no effect.
    #[serde(default)]
    pub ignore_cutoff_cutover: Option<bool>,
    /// Largest encoded `Message` frame written (the consumer's decoder limit). Default 4 MiB.
    /// Not an M3 key: set in code, not read from files.
    #[serde(skip, default = "writer_max_message_size_default")]
    pub max_message_size: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            topic_name: String::new(),
            topic_service_override: None,
            topic_watch_init_timeout: None,
            placement_service_override: None,
            placement_watch_init_timeout: None,
            placement: None,
            message_pool: None,
            message_retry: message_retry_default(),
            message_queue_new_writes_scan_interval: new_writes_scan_interval_default(),
            message_queue_full_scan_interval: None,
            message_queue_scan_batch_size: None,
            initial_ack_map_size: None,
            close_check_interval: None,
            ack_error_retry: None,
            encoder: None,
            decoder: None,
            connection: ConnectionConfig::default(),
            ignore_cutoff_cutover: None,
            max_message_size: writer_max_message_size_default(),
        }
    }
}

impl WriterConfig {
    /// The consumer services' placement namespace (`placementServiceOverride.namespaces.placement`),
    /// when set.
    pub fn placement_namespace(&self) -> Option<String> {
        self.placement_service_override
            .as_ref()?
            .namespaces
            .as_ref()?
            .placement
            .clone()
    }
}

fn message_retry_default() -> RetryPolicy {
    RetryPolicy::MESSAGE
}

fn new_writes_scan_interval_default() -> Duration {
    Duration::from_millis(200)
}

fn writer_max_message_size_default() -> usize {
    m3_proto::framing::DEFAULT_M3MSG_MAX_MESSAGE_SIZE
}

/// `messageRetry:` over [`RetryPolicy::MESSAGE`].
fn message_retry<'de, D: Deserializer<'de>>(d: D) -> Result<RetryPolicy, D::Error> {
    let block = Option::<m3_config::RetryConfig>::deserialize(d)?;
    Ok(RetryPolicy::MESSAGE.with_block(&block.unwrap_or_default()))
}

/// `connection.retry:` over [`RetryPolicy::RECONNECT`].
fn reconnect_retry<'de, D: Deserializer<'de>>(d: D) -> Result<RetryPolicy, D::Error> {
    let block = Option::<m3_config::RetryConfig>::deserialize(d)?;
    Ok(RetryPolicy::RECONNECT.with_block(&block.unwrap_or_default()))
}

/// A block written with nothing under it (`buffer:` whose keys are all commented out) is the
/// block's defaults.
fn block_or_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `writer.placementServiceOverride:`: M3's service override. Only `namespaces.placement` is
/// read; other keys are accepted.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlacementServiceOverride {
    /// KV namespaces.
    #[serde(default)]
    pub namespaces: Option<NamespacesOverride>,
    /// Other keys, accepted.
    #[serde(flatten)]
    pub other: std::collections::BTreeMap<String, m3_config::Ignored>,
}

/// `placementServiceOverride.namespaces:`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespacesOverride {
    /// The placement namespace, e.g. `/placement`.
    #[serde(default)]
    pub placement: Option<String>,
    /// Other namespaces, accepted.
    #[serde(flatten)]
    pub other: std::collections::BTreeMap<String, m3_config::Ignored>,
}

/// Exponential backoff with optional jitter: what a `retry:` block
/// ([`m3_config::RetryConfig`]) configures, with every value filled in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// First delay (`initialBackoff`).
    pub initial_backoff: Duration,
    /// Growth per attempt (`backoffFactor`).
    pub backoff_factor: f64,
    /// Largest delay (`maxBackoff`).
    pub max_backoff: Duration,
    /// Randomise each delay within [delay/2, delay] (`jitter`).
    pub jitter: bool,
}

impl RetryPolicy {
    /// Redelivery of an un-acked message (`messageRetry`): 5s (M3's default), factor 2,
    /// jittered, capped at 2m. M3 leaves message retries unbounded by default; the cap is the
    /// value of M3's shipped aggregator config.
    pub const MESSAGE: RetryPolicy = RetryPolicy {
        initial_backoff: Duration::from_secs(5),
        backoff_factor: 2.0,
        max_backoff: Duration::from_secs(120),
        jitter: true,
    };

    /// Reconnecting to a consumer instance (`connection.retry`): 1s, factor 2, jittered,
    /// capped at 10s.
    pub const RECONNECT: RetryPolicy = RetryPolicy {
        initial_backoff: Duration::from_secs(1),
        backoff_factor: 2.0,
        max_backoff: Duration::from_secs(10),
        jitter: true,
    };

    /// This policy with the keys `block` sets. `maxRetries` and `forever` have no effect here.
    pub fn with_block(self, block: &m3_config::RetryConfig) -> RetryPolicy {
        RetryPolicy {
            initial_backoff: block.initial_backoff.unwrap_or(self.initial_backoff),
            backoff_factor: block.backoff_factor.unwrap_or(self.backoff_factor),
            max_backoff: block.max_backoff.unwrap_or(self.max_backoff),
            jitter: block.jitter.unwrap_or(self.jitter),
        }
    }

    /// The delay before attempt number `attempt + 1`, where `attempt` counts from 1 (the delay
    /// after the first try). Never panics, saturates at [`RetryPolicy::max_backoff`].
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(64) as i32;
        let factor = if self.backoff_factor.is_finite() && self.backoff_factor >= 1.0 {
            self.backoff_factor
        } else {
            1.0
        };
        let secs = self.initial_backoff.as_secs_f64() * factor.powi(exp);
        let capped = secs.min(self.max_backoff.as_secs_f64());
        let base = Duration::try_from_secs_f64(capped).unwrap_or(self.max_backoff);
        if self.jitter && !base.is_zero() {
            let half = base / 2;
            let extra = rand::random_range(0..=half.as_nanos().min(u64::MAX as u128) as u64);
            half + Duration::from_nanos(extra)
        } else {
            base
        }
    }
}

/// A connection to one consumer instance (`connection:`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ConnectionConfig {
    /// Timeout for establishing a TCP connection (`dialTimeout`). Default 5s.
    #[serde(with = "m3_config::duration")]
    pub dial_timeout: Duration,
    /// Timeout for writing one buffered batch (`writeTimeout`). Default 5s.
    #[serde(with = "m3_config::duration")]
    pub write_timeout: Duration,
    /// TCP keep-alive period (`keepAlivePeriod`). Accepted, no effect.
    #[serde(with = "m3_config::option_duration")]
    pub keep_alive_period: Option<Duration>,
    /// M3's pause before a reset connection is reopened (`resetDelay`). Accepted, no effect:
    /// `retry` paces reconnects.
    #[serde(with = "m3_config::option_duration")]
    pub reset_delay: Option<Duration>,
    /// Backoff between reconnect attempts (`retry`, M3's `retry:` block over
    /// [`RetryPolicy::RECONNECT`]; `maxRetries` and `forever` have no effect: a writer
    /// reconnects for as long as the instance is in the placement).
    #[serde(deserialize_with = "reconnect_retry")]
    pub retry: RetryPolicy,
    /// Buffered messages are written at least this often (`flushInterval`). Default 1s.
    #[serde(with = "m3_config::duration")]
    pub flush_interval: Duration,
    /// Buffered bytes that trigger a write before the flush interval (`writeBufferSize`).
    /// Default 65536 (the shipped aggregator config uses 16384).
    pub write_buffer_size: usize,
    /// Read buffer for acks (`readBufferSize`). Default 256 bytes grows as needed.
    pub read_buffer_size: usize,
    /// M3's connections per instance (`numConnections`). Accepted, no effect: one connection
    /// per instance.
    pub num_connections: Option<usize>,
    /// Messages queued for this connection and not yet encoded; when full, the writer picks
    /// another instance or tries again later. Default 4096. Not an M3 key: set in code, not
    /// read from files.
    #[serde(skip)]
    pub queue_size: usize,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            dial_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
            keep_alive_period: None,
            reset_delay: None,
            retry: RetryPolicy::RECONNECT,
            flush_interval: Duration::from_secs(1),
            write_buffer_size: 65536,
            read_buffer_size: 256,
            num_connections: None,
            queue_size: 4096,
        }
    }
}

/// The consumer server (`m3msg.consumer:` / `ingest.m3msg.consumer:`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConsumerConfig {
    /// Pending acks are sent at least this often (`ackFlushInterval`). Default 200ms.
    #[serde(with = "m3_config::duration")]
    pub ack_flush_interval: Duration,
    /// Pending acks that trigger a send before the interval (`ackBufferSize`). Default
    /// 1,048,576 as in M3; the ack list is split into frames under `maxMessageSize`.
    pub ack_buffer_size: usize,
    /// Largest frame accepted (`decoder.maxMessageSize` in M3). Default 4 MiB. A larger
    /// length prefix is a counted frame error that closes the connection.
    pub max_message_size: usize,
    /// Initial read buffer per connection (`connectionReadBufferSize`). Default 64 KiB.
    pub connection_read_buffer_size: usize,
    /// Timeout for writing one batch of acks (`connectionWriteTimeout`). Default 5s.
    #[serde(with = "m3_config::duration")]
    pub connection_write_timeout: Duration,
    /// Producer connections served at once; more are closed at once and counted. Default
    /// 4096.
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed. Default 10m (producers send
    /// heartbeats of data far more often).
    #[serde(with = "m3_config::duration")]
    pub idle_timeout: Duration,
    /// A frame must arrive whole within this long of its first byte, or the connection is
    /// closed (a peer cannot hold a half-sent frame's memory forever). Default 1m.
    #[serde(with = "m3_config::duration")]
    pub frame_timeout: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            ack_flush_interval: Duration::from_millis(200),
            ack_buffer_size: 1_048_576,
            max_message_size: m3_proto::framing::DEFAULT_M3MSG_MAX_MESSAGE_SIZE,
            connection_read_buffer_size: 64 * 1024,
            connection_write_timeout: Duration::from_secs(5),
            max_connections: 4096,
            idle_timeout: Duration::from_secs(600),
            frame_timeout: Duration::from_secs(60),
        }
    }
}

/// The `m3msg:` block of a process that consumes a topic: the aggregator's `m3msg:` (samples
/// from coordinators) and the coordinator's `ingest.m3msg:` (aggregated metrics), as M3 keys
/// them. Unknown keys in `server` and in the block are errors; M3's tuning keys of `consumer`
/// that have no effect here (`messagePool`, `encoder`, …) are accepted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConsumerServerSection {
    /// The TCP server.
    pub server: ServerListenSection,
    /// Handler options; accepted.
    #[serde(default)]
    pub handler: Option<m3_config::Ignored>,
    /// Consumer options.
    #[serde(default)]
    pub consumer: Option<ConsumerSection>,
}

/// `m3msg.server:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerListenSection {
    /// Listen address, e.g. `0.0.0.0:6000`.
    pub listen_address: String,
    /// Accept-loop retry; accepted.
    #[serde(default)]
    pub retry: Option<m3_config::Ignored>,
    /// TCP keep-alive; accepted.
    #[serde(default)]
    pub keep_alive_enabled: Option<bool>,
    /// TCP keep-alive period; accepted.
    #[serde(default, with = "m3_config::option_duration")]
    pub keep_alive_period: Option<Duration>,
}

/// `m3msg.consumer:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerSection {
    /// How often batched acks are flushed (default 200ms).
    #[serde(default, with = "m3_config::option_duration")]
    pub ack_flush_interval: Option<Duration>,
    /// Acks batched before a flush.
    #[serde(default)]
    pub ack_buffer_size: Option<usize>,
    /// Producer connections at once (default 4096).
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// A connection that sends nothing for this long is closed (default 10m).
    #[serde(default, with = "m3_config::option_duration")]
    pub idle_timeout: Option<Duration>,
    /// A frame must arrive whole within this long (default 1m).
    #[serde(default, with = "m3_config::option_duration")]
    pub frame_timeout: Option<Duration>,
    /// Other consumer keys, accepted.
    #[serde(flatten)]
    pub other: std::collections::BTreeMap<String, m3_config::Ignored>,
}

impl ConsumerServerSection {
    /// The consumer server's settings: the defaults with what the block sets.
    pub fn consumer_config(&self) -> ConsumerConfig {
        let mut consumer = ConsumerConfig::default();
        if let Some(c) = &self.consumer {
            if let Some(i) = c.ack_flush_interval {
                consumer.ack_flush_interval = i;
            }
            if let Some(n) = c.ack_buffer_size {
                consumer.ack_buffer_size = n;
            }
            if let Some(n) = c.max_connections {
                consumer.max_connections = n;
            }
            if let Some(t) = c.idle_timeout {
                consumer.idle_timeout = t;
            }
            if let Some(t) = c.frame_timeout {
                consumer.frame_timeout = t;
            }
        }
        consumer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_m3_keys() {
        let json = r#"{
            "buffer": {"maxBufferSize": 1000000000, "onFullStrategy": "returnError"},
            "writer": {
                "messageRetry": {"initialBackoff": "1m", "maxBackoff": "2m"},
                "messageQueueNewWritesScanInterval": "1s",
                "topicName": "aggregated_metrics",
                "connection": {"dialTimeout": "5s", "writeTimeout": "5s", "flushInterval": "1s",
                               "writeBufferSize": 16384, "readBufferSize": 256}
            }
        }"#;
        let config: ProducerConfig = serde_json::from_str(json).unwrap();
        assert_eq!(config.buffer.max_buffer_size, 1_000_000_000);
        assert_eq!(config.buffer.on_full_strategy, OnFull::ReturnError);
        assert_eq!(
            config.writer.message_retry.initial_backoff,
            Duration::from_secs(60)
        );
        assert_eq!(
            config.writer.message_retry.max_backoff,
            Duration::from_secs(120)
        );
        assert_eq!(config.writer.connection.write_buffer_size, 16384);
        assert_eq!(config.writer.connection.queue_size, 4096);

        let consumer: ConsumerConfig =
            serde_json::from_str(r#"{"ackFlushInterval": "100ms", "ackBufferSize": 10}"#).unwrap();
        assert_eq!(consumer.ack_flush_interval, Duration::from_millis(100));
        assert_eq!(consumer.ack_buffer_size, 10);
    }

    #[test]
    fn bad_duration_names_the_value() {
        let err = serde_json::from_str::<ConnectionConfig>(r#"{"dialTimeout": "5 parsecs"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("5 parsecs"), "{err}");
    }

    #[test]
    fn backoff_grows_and_caps() {
        let retry = RetryPolicy {
            initial_backoff: Duration::from_secs(1),
            backoff_factor: 2.0,
            max_backoff: Duration::from_secs(5),
            jitter: false,
        };
        assert_eq!(retry.backoff(1), Duration::from_secs(1));
        assert_eq!(retry.backoff(2), Duration::from_secs(2));
        assert_eq!(retry.backoff(3), Duration::from_secs(4));
        assert_eq!(retry.backoff(4), Duration::from_secs(5));
        assert_eq!(retry.backoff(u32::MAX), Duration::from_secs(5));
        let jittered = RetryPolicy {
            jitter: true,
            ..retry
        };
        for attempt in 1..10 {
            let d = jittered.backoff(attempt);
            assert!(d <= Duration::from_secs(5) && d >= Duration::from_millis(500));
        }
    }

    #[test]
    fn a_retry_block_sets_only_its_keys_over_each_uses_defaults() {
        let json = r#"{
            "writer": {
                "topicName": "t",
                "messageRetry": {"maxBackoff": "30s", "maxRetries": 3, "forever": true},
                "connection": {"retry": {"initialBackoff": "2s"}}
            }
        }"#;
        let config: ProducerConfig = serde_json::from_str(json).unwrap();
        assert_eq!(
            config.writer.message_retry,
            RetryPolicy {
                max_backoff: Duration::from_secs(30),
                ..RetryPolicy::MESSAGE
            }
        );
        assert_eq!(
            config.writer.connection.retry,
            RetryPolicy {
                initial_backoff: Duration::from_secs(2),
                ..RetryPolicy::RECONNECT
            }
        );
        assert_eq!(
            ProducerConfig::default().writer.message_retry,
            RetryPolicy::MESSAGE
        );
        assert_eq!(
            ProducerConfig::default().writer.connection.retry,
            RetryPolicy::RECONNECT
        );
    }

    #[test]
    fn empty_blocks_take_defaults() {
        let json = r#"{
            "buffer": null,
            "writer": {"topicName": "t", "messageRetry": null, "connection": null}
        }"#;
        let config: ProducerConfig = serde_json::from_str(json).unwrap();
        let want = ProducerConfig {
            writer: WriterConfig {
                topic_name: "t".into(),
                ..WriterConfig::default()
            },
            ..ProducerConfig::default()
        };
        assert_eq!(config, want);
    }

    #[test]
    fn unknown_keys_missing_topic_and_keys_set_in_code_are_refused() {
        for (json, word) in [
            (
                r#"{"writer": {"topicName": "t", "topicNmae": "u"}}"#,
                "topicNmae",
            ),
            (
                r#"{"buffer": {"maxBuferSize": 1}, "writer": {"topicName": "t"}}"#,
                "maxBuferSize",
            ),
            (
                r#"{"writer": {"topicName": "t", "connection": {"queueSize": 1}}}"#,
                "queueSize",
            ),
            (
                r#"{"writer": {"topicName": "t", "maxMessageSize": 1}}"#,
                "maxMessageSize",
            ),
            (
                r#"{"writer": {"topicName": "t", "messageRetry": {"tries": 1}}}"#,
                "tries",
            ),
            (r#"{"writer": {}}"#, "topicName"),
            (r#"{"buffer": {}}"#, "writer"),
        ] {
            let err = serde_json::from_str::<ProducerConfig>(json)
                .unwrap_err()
                .to_string();
            assert!(err.contains(word), "{json}: {err}");
        }
    }

    #[test]
    fn placement_namespace_comes_from_the_service_override() {
        let json = r#"{"writer": {
            "topicName": "t",
            "topicServiceOverride": {"environment": "default_env"},
            "placementServiceOverride": {"namespaces": {"placement": "/placement"}, "zone": "z"}
        }}"#;
        let config: ProducerConfig = serde_json::from_str(json).unwrap();
        assert_eq!(
            config.writer.placement_namespace().as_deref(),
            Some("/placement")
        );
        assert_eq!(
            config
                .writer
                .topic_service_override
                .and_then(|o| o.environment)
                .as_deref(),
            Some("default_env")
        );
    }
}
