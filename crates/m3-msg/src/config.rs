//! Configuration for the producer and the consumer server, keyed like M3's YAML.
//!
//! Every struct here is plain data with a [`Default`] that states M3's default for each field,
//! and derives `serde::Deserialize` with M3's lowerCamelCase key names, so a binary can embed
//! these structs in its own config file:
//!
//! ```yaml
//! producer:
//!   buffer:
//!     maxBufferSize: 1000000000
//!   writer:
//!     messageRetry:
//!       initialBackoff: 1m
//!       maxBackoff: 2m
//!     connection:
//!       dialTimeout: 5s
//!       flushInterval: 1s
//! ```
//!
//! Durations are written as Go duration strings (`250ms`, `5s`, `1m30s`) as in M3's files. Keys
//! this crate does not use (for example `topicName`, which the glue that builds consumer service
//! specs reads) are ignored here; strict unknown-key checking belongs to the binary that owns the
//! whole file.

use std::time::Duration;

use serde::Deserialize;

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

/// Producer settings (`producer:` in M3's flush handler and coordinator configs).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProducerConfig {
    /// The shared in-memory buffer.
    pub buffer: BufferConfig,
    /// The per consumer service writers and their connections.
    pub writer: WriterConfig,
}

/// The producer's buffer (`buffer:`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BufferConfig {
    /// Bytes of message values the buffer may hold before `onFullStrategy` applies
    /// (`maxBufferSize`). Default 100 MiB (M3's code default; the shipped aggregator config
    /// uses 1e9). A value's size is its length, not its allocation's capacity.
    pub max_buffer_size: usize,
    /// Largest single message value accepted (`maxMessageSize`). Default 1 MiB.
    pub max_message_size: usize,
    /// What to do when the buffer is full (`onFullStrategy`). Default `dropOldest`.
    pub on_full_strategy: OnFull,
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            max_buffer_size: 100 * 1024 * 1024,
            max_message_size: 1024 * 1024,
            on_full_strategy: OnFull::DropOldest,
        }
    }
}

/// A consumer service writer (`writer:`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WriterConfig {
    /// Backoff between deliveries of a message that was not acked (`messageRetry`).
    /// Default 5s initial, factor 2, jittered; see [`RetryConfig`] for the cap.
    pub message_retry: RetryConfig,
    /// How soon a message is tried again when no connection could take it at all (no live
    /// instance owns its shard, or every owner is disconnected)
    /// (`messageQueueNewWritesScanInterval`). Default 200ms.
    #[serde(with = "duration")]
    pub message_queue_new_writes_scan_interval: Duration,
    /// Largest encoded `Message` frame written (the consumer's decoder limit). Default 4 MiB.
    pub max_message_size: usize,
    /// Connections to consumer instances.
    pub connection: ConnectionConfig,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            message_retry: RetryConfig::default(),
            message_queue_new_writes_scan_interval: Duration::from_millis(200),
            max_message_size: m3_proto::framing::DEFAULT_M3MSG_MAX_MESSAGE_SIZE,
            connection: ConnectionConfig::default(),
        }
    }
}

/// Exponential backoff with optional jitter (`retry:`, `messageRetry:`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RetryConfig {
    /// First delay (`initialBackoff`). Default 5s (M3's message retry default).
    #[serde(with = "duration")]
    pub initial_backoff: Duration,
    /// Growth per attempt (`backoffFactor`). Default 2.
    pub backoff_factor: f64,
    /// Largest delay (`maxBackoff`). M3 leaves message retries unbounded by default; we cap at
    /// 2m, the value of M3's shipped aggregator config.
    #[serde(with = "duration")]
    pub max_backoff: Duration,
    /// Randomise each delay within [delay/2, delay] (`jitter`). Default true.
    pub jitter: bool,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_secs(5),
            backoff_factor: 2.0,
            max_backoff: Duration::from_secs(120),
            jitter: true,
        }
    }
}

impl RetryConfig {
    /// The delay before attempt number `attempt + 1`, where `attempt` counts from 1 (the delay
    /// after the first try). Never panics, saturates at [`RetryConfig::max_backoff`].
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
#[serde(rename_all = "camelCase", default)]
pub struct ConnectionConfig {
    /// Timeout for establishing a TCP connection (`dialTimeout`). Default 5s.
    #[serde(with = "duration")]
    pub dial_timeout: Duration,
    /// Timeout for writing one buffered batch (`writeTimeout`). Default 5s.
    #[serde(with = "duration")]
    pub write_timeout: Duration,
    /// Backoff between reconnect attempts (`retry`). Default 1s → 10s, jittered.
    pub retry: RetryConfig,
    /// Buffered messages are written at least this often (`flushInterval`). Default 1s.
    #[serde(with = "duration")]
    pub flush_interval: Duration,
    /// Buffered bytes that trigger a write before the flush interval (`writeBufferSize`).
    /// Default 65536 (the shipped aggregator config uses 16384).
    pub write_buffer_size: usize,
    /// Read buffer for acks (`readBufferSize`). Default 256 bytes grows as needed.
    pub read_buffer_size: usize,
    /// Messages queued for this connection and not yet encoded; when full, the writer picks
    /// another instance or tries again later. Default 4096 (not an M3 key).
    pub queue_size: usize,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            dial_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
            retry: RetryConfig {
                initial_backoff: Duration::from_secs(1),
                backoff_factor: 2.0,
                max_backoff: Duration::from_secs(10),
                jitter: true,
            },
            flush_interval: Duration::from_secs(1),
            write_buffer_size: 65536,
            read_buffer_size: 256,
            queue_size: 4096,
        }
    }
}

/// The consumer server (`m3msg.consumer:` / `ingest.m3msg.consumer:`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConsumerConfig {
    /// Pending acks are sent at least this often (`ackFlushInterval`). Default 200ms.
    #[serde(with = "duration")]
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
    #[serde(with = "duration")]
    pub connection_write_timeout: Duration,
    /// Producer connections served at once; more are closed at once and counted. Default
    /// 4096.
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed. Default 10m (producers send
    /// heartbeats of data far more often).
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// A frame must arrive whole within this long of its first byte, or the connection is
    /// closed (a peer cannot hold a half-sent frame's memory forever). Default 1m.
    #[serde(with = "duration")]
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

/// Go-style duration strings for serde: `300ms`, `5s`, `1m30s`, `2h`, `1.5s`; a bare `0`.
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, de::Error};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).ok_or_else(|| {
            D::Error::custom(format!(
                "invalid duration {text:?}: expected a number with a unit, like 250ms, 5s, 1m30s"
            ))
        })
    }

    pub(super) fn parse(text: &str) -> Option<Duration> {
        let text = text.trim();
        if text == "0" {
            return Some(Duration::ZERO);
        }
        let mut rest = text;
        let mut total = 0f64;
        if rest.is_empty() {
            return None;
        }
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .filter(|&n| n > 0)?;
            let value: f64 = rest[..num_len].parse().ok()?;
            rest = &rest[num_len..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let scale = match &rest[..unit_len] {
                "ns" => 1e-9,
                "us" | "µs" => 1e-6,
                "ms" => 1e-3,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                _ => return None,
            };
            rest = &rest[unit_len..];
            total += value * scale;
        }
        Duration::try_from_secs_f64(total).ok()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn parses_go_durations() {
            assert_eq!(parse("250ms"), Some(Duration::from_millis(250)));
            assert_eq!(parse("5s"), Some(Duration::from_secs(5)));
            assert_eq!(parse("1m30s"), Some(Duration::from_secs(90)));
            assert_eq!(parse("2h"), Some(Duration::from_secs(7200)));
            assert_eq!(parse("1.5s"), Some(Duration::from_millis(1500)));
            assert_eq!(parse("0"), Some(Duration::ZERO));
            for bad in ["", "5", "s", "5x", "-1s", "1..2s"] {
                assert_eq!(parse(bad), None, "{bad:?}");
            }
        }
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
        let retry = RetryConfig {
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
        let jittered = RetryConfig {
            jitter: true,
            ..retry
        };
        for attempt in 1..10 {
            let d = jittered.backoff(attempt);
            assert!(d <= Duration::from_secs(5) && d >= Duration::from_millis(500));
        }
    }
}
