//! The aggregator client's YAML block, as M3 writes it: the coordinator's
//! `downsample.remoteAggregator.client` and the aggregator's own `aggregator.client` (used to
//! forward rollups to other aggregators) are the same block, validated here once for both.

use std::time::Duration;

use m3_config::Ignored;
use serde::Deserialize;

/// `downsample.remoteAggregator.client` / `aggregator.client`: M3's aggregator client keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AggregatorClientConfig {
    /// `legacy` or `tcp` (the same: rawtcp, the default), or `m3msg` (produce to the topic
    /// of the `m3msg:` block).
    #[serde(default, rename = "type")]
    pub client_type: Option<String>,
    /// For `type: m3msg`: the producer and its topic (M3: `aggregator_ingest`).
    #[serde(default)]
    pub m3msg: Option<ClientM3msgConfig>,
    /// KV namespace/environment/zone of the aggregator placement.
    #[serde(default, rename = "placementKV")]
    pub placement_kv: PlacementKvConfig,
    /// Placement key and how long to wait for it at startup.
    #[serde(default)]
    pub placement_watcher: PlacementWatcherConfig,
    /// Only `murmur32` is valid.
    #[serde(default)]
    pub hash_type: Option<String>,
    /// Start writing to a new shard owner this long before its cutover (default 10m).
    #[serde(default, with = "m3_config::option_duration")]
    pub shard_cutover_warmup_duration: Option<Duration>,
    /// Keep writing to an old shard owner this long after its cutoff (default 1h).
    #[serde(default, with = "m3_config::option_duration")]
    pub shard_cutoff_linger_duration: Option<Duration>,
    /// Deprecated in M3; accepted and ignored.
    #[serde(default)]
    pub flush_size: Option<u64>,
    /// Number of flush workers (accepted; one writer task per instance here).
    #[serde(default)]
    pub flush_worker_count: Option<u32>,
    /// Periodic flush of partially filled batches (default 100ms here; M3's 0 means none).
    #[serde(default, with = "m3_config::option_duration")]
    pub force_flush_every: Option<Duration>,
    /// Bytes of encoded metrics per batch before it is queued (default 8 MiB... capped by
    /// `encoder.maxMessageSize`).
    #[serde(default)]
    pub max_batch_size: Option<usize>,
    /// Split batch timers into messages of at most this many values (0 = no split).
    #[serde(default)]
    pub max_timer_batch_size: Option<usize>,
    /// Batches queued per aggregator instance before drops start (default 128).
    #[serde(default)]
    pub queue_size: Option<usize>,
    /// Bytes of encoded metrics queued per aggregator instance before drops start (default
    /// 64 MiB; not an M3 key). A connected instance whose queue passes half of it makes the
    /// coordinator answer new writes 503 until it catches up.
    #[serde(default)]
    pub max_queue_bytes: Option<usize>,
    /// `oldest` (default) or `current`.
    #[serde(default)]
    pub queue_drop_type: Option<QueueDropType>,
    /// Encoder buffer settings.
    #[serde(default)]
    pub encoder: EncoderConfig,
    /// TCP connection settings.
    #[serde(default)]
    pub connection: ConnectionConfig,
}

/// `m3msg:` of the client block.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientM3msgConfig {
    /// The producer, as in the aggregator's flush handler (M3's `producer:` block).
    pub producer: m3_msg::ProducerConfig,
}

/// A client block key that is wrong, relative to the block (e.g. `type`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ClientConfigError {
    /// The key within the client block.
    pub key: String,
    /// What is wrong and what to do.
    pub reason: String,
}

impl ClientConfigError {
    fn new(key: &str, reason: impl Into<String>) -> ClientConfigError {
        ClientConfigError {
            key: key.to_string(),
            reason: reason.into(),
        }
    }
}

impl AggregatorClientConfig {
    /// Checks the keys the client cannot run with.
    ///
    /// # Errors
    /// Every wrong key.
    pub fn validate(&self) -> Result<(), Vec<ClientConfigError>> {
        let mut problems = Vec::new();
        if let Some(hash) = &self.hash_type
            && hash != "murmur32"
        {
            problems.push(ClientConfigError::new(
                "hashType",
                format!("unsupported hash type {hash:?}: only murmur32 is supported"),
            ));
        }
        match self.client_type.as_deref() {
            None | Some("legacy" | "tcp") => {}
            Some("m3msg") => {
                if self.m3msg.is_none() {
                    problems.push(ClientConfigError::new(
                        "m3msg",
                        "missing: type m3msg needs m3msg.producer.writer.topicName \
                         (e.g. aggregator_ingest)",
                    ));
                }
            }
            Some(other) => problems.push(ClientConfigError::new(
                "type",
                format!("unsupported client type {other:?}: use legacy or tcp (rawtcp), or m3msg"),
            )),
        }
        if self.queue_size == Some(0) {
            problems.push(ClientConfigError::new("queueSize", "must be positive"));
        }
        if self.max_queue_bytes == Some(0) {
            problems.push(ClientConfigError::new("maxQueueBytes", "must be positive"));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// The m3msg transport, for `type: m3msg`.
    pub fn m3msg_transport(&self) -> Option<super::M3msgTransport> {
        if self.client_type.as_deref() != Some("m3msg") {
            return None;
        }
        let producer = &self.m3msg.as_ref()?.producer;
        let writer = &producer.writer;
        Some(super::M3msgTransport {
            topic: writer.topic_name.clone(),
            environment: writer
                .topic_service_override
                .as_ref()
                .and_then(|o| o.environment.clone()),
            placement_namespace: writer.placement_namespace(),
            producer: crate::config::producer_options(producer),
        })
    }
}

/// What a full per-instance queue drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum QueueDropType {
    /// Drop the oldest queued batch to make room.
    #[default]
    Oldest,
    /// Drop the batch being queued.
    Current,
}

/// `placementKV:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PlacementKvConfig {
    /// KV namespace (default `/placement`).
    #[serde(default = "default_placement_namespace")]
    pub namespace: String,
    /// Environment (default `default_env`).
    #[serde(default)]
    pub environment: Option<String>,
    /// Zone (default `embedded`).
    #[serde(default)]
    pub zone: Option<String>,
}

impl Default for PlacementKvConfig {
    fn default() -> Self {
        PlacementKvConfig {
            namespace: default_placement_namespace(),
            environment: None,
            zone: None,
        }
    }
}

fn default_placement_namespace() -> String {
    "/placement".to_string()
}

/// `placementWatcher:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PlacementWatcherConfig {
    /// Placement key (default `m3aggregator`).
    #[serde(default = "default_placement_key")]
    pub key: String,
    /// How long startup waits for the placement (default 10s).
    #[serde(default, with = "m3_config::option_duration")]
    pub init_watch_timeout: Option<Duration>,
}

impl Default for PlacementWatcherConfig {
    fn default() -> Self {
        PlacementWatcherConfig {
            key: default_placement_key(),
            init_watch_timeout: None,
        }
    }
}

fn default_placement_key() -> String {
    "m3aggregator".to_string()
}

/// `encoder:`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EncoderConfig {
    /// Initial buffer size per instance batch.
    #[serde(default)]
    pub init_buffer_size: Option<usize>,
    /// Largest single encoded metric (default 50 MiB).
    #[serde(default)]
    pub max_message_size: Option<usize>,
    /// Go buffer pool tuning; accepted, no effect (buffers are reused per instance here).
    #[serde(default)]
    pub bytes_pool: Option<Ignored>,
}

/// `connection:`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConnectionConfig {
    /// Dial timeout (default 1s).
    #[serde(default, with = "m3_config::option_duration")]
    pub connection_timeout: Option<Duration>,
    /// TCP keep-alive (default true).
    #[serde(default)]
    pub connection_keep_alive: Option<bool>,
    /// Read timeout (accepted; rawtcp has no responses).
    #[serde(default, with = "m3_config::option_duration")]
    pub read_timeout: Option<Duration>,
    /// Write timeout (default 15s).
    #[serde(default, with = "m3_config::option_duration")]
    pub write_timeout: Option<Duration>,
    /// Reconnect tuning, accepted.
    #[serde(default)]
    pub init_reconnect_threshold: Option<u32>,
    /// Reconnect tuning, accepted.
    #[serde(default)]
    pub max_reconnect_threshold: Option<u32>,
    /// Reconnect tuning, accepted.
    #[serde(default)]
    pub reconnect_threshold_multiplier: Option<u32>,
    /// Longest wait between reconnects (default 20s).
    #[serde(default, with = "m3_config::option_duration")]
    pub max_reconnect_duration: Option<Duration>,
    /// Write retries, accepted.
    #[serde(default)]
    pub write_retries: Option<Ignored>,
}
