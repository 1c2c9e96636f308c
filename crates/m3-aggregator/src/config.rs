//! The `m3aggregator` config file, with M3's key names.
//!
//! The file M3 ships (`m3aggregator.yml`) has sections this project interprets (`rawtcp`,
//! `http`, `kvClient`, `aggregator` with its buffers, placement, election, flush and output
//! settings) and sections that tune Go object pools or M3 features not built yet. Every key is
//! checked: keys M3 defines but that have no effect here are accepted and listed as such in the
//! field docs; anything else is an error naming the key and the file.
//!
//! [`AggregatorConfig::validate`] turns the raw file into [`ValidConfig`], the settings the
//! process runs with, resolving the host ID from the environment and checking values types
//! cannot express.

use std::path::Path;
use std::time::Duration;

use m3_config::{ConfigError, Ignored, KvScopeConfig};
use m3_metric::StoragePolicy;
use serde::Deserialize;

use crate::AggregatorOptions;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AggregatorConfig {
    /// Logging (use `RUST_LOG`); accepted.
    #[serde(default)]
    pub logging: Option<Ignored>,
    /// M3's metrics reporter; self-metrics are served at `http.listenAddress` `/metrics`.
    #[serde(default)]
    pub metrics: Option<Ignored>,
    /// The m3msg ingest server (topic `aggregator_ingest`); with or instead of `rawtcp`.
    #[serde(default)]
    pub m3msg: Option<m3_msg::ConsumerServerSection>,
    /// The rawtcp ingest server.
    #[serde(default)]
    pub rawtcp: Option<RawTcpConfig>,
    /// The admin HTTP server.
    #[serde(default)]
    pub http: Option<HttpConfig>,
    /// Where the cluster KV (etcd) is. Required.
    #[serde(default, rename = "kvClient")]
    pub kv_client: Option<KvClientConfig>,
    /// Runtime limits watched in KV (not supported yet); accepted.
    #[serde(default)]
    pub runtime_options: Option<Ignored>,
    /// The aggregator itself.
    #[serde(default)]
    pub aggregator: AggregatorSection,
    /// Debug endpoints; accepted.
    #[serde(default)]
    pub debug: Option<Ignored>,
}

/// `aggregator.forwarding:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ForwardingConfig {
    /// A forwarded window waits this long after its end, plus one resolution per hop, for its
    /// sources (default: the past buffer + 30s).
    #[serde(default, with = "m3_config::option_duration")]
    pub max_const_delay: Option<Duration>,
    /// M3's per-hop delay for jittered flushes; accepted (flushes are not jittered here).
    #[serde(default, with = "m3_config::option_duration")]
    pub max_single_delay: Option<Duration>,
}

/// `rawtcp:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawTcpConfig {
    /// e.g. `0.0.0.0:6000`.
    pub listen_address: String,
    /// Rate limit of per-message error logs; accepted.
    #[serde(default)]
    pub error_log_limit_per_second: Option<u64>,
    /// TCP keep-alive; accepted.
    #[serde(default)]
    pub keep_alive_enabled: Option<bool>,
    /// TCP keep-alive period; accepted.
    #[serde(default, with = "m3_config::option_duration")]
    pub keep_alive_period: Option<Duration>,
    /// Accept-loop retry; accepted.
    #[serde(default)]
    pub retry: Option<Ignored>,
    /// Read buffer size; accepted.
    #[serde(default)]
    pub read_buffer_size: Option<usize>,
    /// Frame decoding.
    #[serde(default)]
    pub protobuf_iterator: Option<ProtobufIteratorConfig>,
    /// TLS (not supported yet).
    #[serde(default)]
    pub tls: Option<Ignored>,
    /// Connections served at once; more are closed and counted (default 4096).
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// A connection that sends nothing for this long is closed (default 10m).
    #[serde(default, with = "m3_config::option_duration")]
    pub idle_timeout: Option<Duration>,
    /// A frame must arrive whole within this long of its first byte (default 1m).
    #[serde(default, with = "m3_config::option_duration")]
    pub frame_timeout: Option<Duration>,
}

/// `rawtcp.protobufIterator:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProtobufIteratorConfig {
    /// Initial buffer; accepted.
    #[serde(default)]
    pub init_buffer_size: Option<usize>,
    /// Largest frame accepted (default 50 MiB).
    #[serde(default)]
    pub max_message_size: Option<usize>,
    /// Go buffer pool; accepted.
    #[serde(default)]
    pub bytes_pool: Option<Ignored>,
}

/// `http:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpConfig {
    /// e.g. `0.0.0.0:6001`.
    pub listen_address: String,
    /// A request's headers must arrive within this long; also the keep-alive idle timeout
    /// (default 60s).
    #[serde(default, with = "m3_config::option_duration")]
    pub read_timeout: Option<Duration>,
    /// Accepted.
    #[serde(default, with = "m3_config::option_duration")]
    pub write_timeout: Option<Duration>,
}

/// `kvClient:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KvClientConfig {
    /// The etcd client.
    pub etcd: m3_cluster::kv::etcd::EtcdConfig,
}

/// `aggregator:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AggregatorSection {
    /// How this host is named.
    #[serde(default, rename = "hostID")]
    pub host_id: Option<HostIdConfig>,
    /// How the placement instance ID is formed.
    #[serde(default, rename = "instanceID")]
    pub instance_id: Option<InstanceIdConfig>,
    /// Accepted.
    #[serde(default)]
    pub verbose_errors: Option<bool>,
    /// Output ID prefixes (only empty is supported).
    #[serde(default)]
    pub metric_prefix: Option<String>,
    /// See `metricPrefix`.
    #[serde(default)]
    pub counter_prefix: Option<String>,
    /// See `metricPrefix`.
    #[serde(default)]
    pub timer_prefix: Option<String>,
    /// See `metricPrefix`.
    #[serde(default)]
    pub gauge_prefix: Option<String>,
    /// Output name transforms; accepted (naming is documented in `m3_metric::id`).
    #[serde(default)]
    pub aggregation_types: Option<Ignored>,
    /// Quantile stream settings; accepted (quantiles come from a DDSketch, 1% relative error).
    #[serde(default)]
    pub stream: Option<Ignored>,
    /// The client that forwards rollup values to the aggregators owning the rollup IDs (the
    /// same block as the coordinator's `downsample.remoteAggregator.client`).
    #[serde(default)]
    pub client: Option<crate::client::AggregatorClientConfig>,
    /// Where this aggregator's placement is.
    #[serde(default)]
    pub placement_manager: Option<PlacementManagerConfig>,
    /// Only `murmur32`.
    #[serde(default)]
    pub hash_type: Option<String>,
    /// Accept writes this long before a shard's cutover (default 10m).
    #[serde(default, with = "m3_config::option_duration")]
    pub buffer_duration_before_shard_cutover: Option<Duration>,
    /// Accept writes this long after a shard's cutoff (default 1h).
    #[serde(default, with = "m3_config::option_duration")]
    pub buffer_duration_after_shard_cutoff: Option<Duration>,
    /// Lateness allowed for timed metrics, plus one resolution (default 1m).
    #[serde(default, with = "m3_config::option_duration")]
    pub buffer_duration_for_past_timed_metric: Option<Duration>,
    /// Earliness allowed for timed metrics (default 1m).
    #[serde(default, with = "m3_config::option_duration")]
    pub buffer_duration_for_future_timed_metric: Option<Duration>,
    /// How long `/resign` may take; accepted.
    #[serde(default, with = "m3_config::option_duration")]
    pub resign_timeout: Option<Duration>,
    /// Wait after SIGTERM before exiting; accepted.
    #[serde(default, with = "m3_config::option_duration")]
    pub shutdown_wait_timeout: Option<Duration>,
    /// Where flush times are persisted.
    #[serde(default)]
    pub flush_times_manager: Option<FlushTimesManagerConfig>,
    /// Leader election.
    #[serde(default)]
    pub election_manager: Option<ElectionManagerConfig>,
    /// Flush scheduling.
    #[serde(default)]
    pub flush_manager: Option<FlushManagerConfig>,
    /// Where aggregated output goes.
    #[serde(default)]
    pub flush: Option<FlushConfig>,
    /// Passthrough writes (always written by the leader here); accepted.
    #[serde(default)]
    pub passthrough: Option<Ignored>,
    /// How long forwarded (rollup) windows wait for their sources.
    #[serde(default)]
    pub forwarding: Option<ForwardingConfig>,
    /// Idle series expiry (default 1h).
    #[serde(default, rename = "entryTTL", with = "m3_config::option_duration")]
    pub entry_ttl: Option<Duration>,
    /// Expiry sweep period (default 10m here).
    #[serde(default, with = "m3_config::option_duration")]
    pub entry_check_interval: Option<Duration>,
    /// Accepted (sweeps are whole passes).
    #[serde(default)]
    pub entry_check_batch_percent: Option<f64>,
    /// Split incoming batch timers into chunks (0 = no split).
    #[serde(default)]
    pub max_timer_batch_size_per_write: Option<usize>,
    /// Storage policies of metrics that carry none (default `[10s:2d]`).
    #[serde(default)]
    pub default_storage_policies: Option<Vec<StoragePolicy>>,
    /// Accepted.
    #[serde(default)]
    pub max_num_cached_source_sets: Option<u32>,
    /// Drop NaN results (default true).
    #[serde(default, rename = "discardNaNAggregatedValues")]
    pub discard_nan_aggregated_values: Option<bool>,
    /// Go object pools; accepted.
    #[serde(default)]
    pub entry_pool: Option<Ignored>,
    /// Go object pools; accepted.
    #[serde(default)]
    pub counter_elem_pool: Option<Ignored>,
    /// Go object pools; accepted.
    #[serde(default)]
    pub timer_elem_pool: Option<Ignored>,
    /// Go object pools; accepted.
    #[serde(default)]
    pub gauge_elem_pool: Option<Ignored>,
    /// Accepted.
    #[serde(default)]
    pub add_to_reset: Option<bool>,
    /// Accepted.
    #[serde(default)]
    pub timed_metrics_flush_offset_enabled: Option<bool>,
    /// Accepted.
    #[serde(default)]
    pub feature_flags: Option<Ignored>,
    /// Accepted.
    #[serde(default)]
    pub writes_ignore_cutoff_cutover: Option<bool>,
}

/// `hostID:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HostIdConfig {
    /// `environment`, `config` or `hostname`.
    pub resolver: String,
    /// For `environment`: the variable holding the host ID.
    #[serde(default)]
    pub env_var_name: Option<String>,
    /// For `config`: the host ID.
    #[serde(default)]
    pub value: Option<String>,
}

/// `instanceID:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InstanceIdConfig {
    /// `host_id` (the instance ID is the host ID) or `host_id_port` (`hostID:<rawtcp port>`).
    #[serde(rename = "type")]
    pub id_type: String,
}

/// `placementManager:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PlacementManagerConfig {
    /// Where the placement lives (default `/placement`, `default_env`, `embedded`).
    #[serde(default)]
    pub kv_config: KvScopeConfig,
    /// The key and startup wait.
    #[serde(default)]
    pub placement_watcher: Option<PlacementWatcherConfig>,
}

/// `placementWatcher:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PlacementWatcherConfig {
    /// Placement key (default `m3aggregator`).
    #[serde(default)]
    pub key: Option<String>,
    /// Startup wait; accepted (the aggregator starts without a placement and owns no shard).
    #[serde(default, with = "m3_config::option_duration")]
    pub init_watch_timeout: Option<Duration>,
}

/// `flushTimesManager:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FlushTimesManagerConfig {
    /// Where flush times live (environment used; namespace `_kv`).
    #[serde(default)]
    pub kv_config: KvScopeConfig,
    /// Only `shardset/%d/flush`.
    #[serde(default)]
    pub flush_times_key_fmt: Option<String>,
    /// Accepted.
    #[serde(default)]
    pub flush_times_persist_retrier: Option<Ignored>,
}

/// `electionManager:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ElectionManagerConfig {
    /// Lease settings.
    #[serde(default)]
    pub election: Option<ElectionConfig>,
    /// The service the election keys belong to (environment used).
    #[serde(default, rename = "serviceID")]
    pub service_id: Option<ServiceIdConfig>,
    /// Only `shardset/%d/lock`.
    #[serde(default)]
    pub election_key_fmt: Option<String>,
    /// Accepted.
    #[serde(default)]
    pub campaign_retrier: Option<Ignored>,
    /// Accepted.
    #[serde(default)]
    pub change_retrier: Option<Ignored>,
    /// Accepted.
    #[serde(default)]
    pub resign_retrier: Option<Ignored>,
    /// Accepted.
    #[serde(default, with = "m3_config::option_duration")]
    pub campaign_state_check_interval: Option<Duration>,
    /// Accepted.
    #[serde(default, with = "m3_config::option_duration")]
    pub shard_cutoff_check_offset: Option<Duration>,
    /// Accepted (the leader value is the instance ID).
    #[serde(default)]
    pub leader_value: Option<String>,
}

/// `electionManager.election:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ElectionConfig {
    /// Accepted.
    #[serde(default, with = "m3_config::option_duration")]
    pub leader_timeout: Option<Duration>,
    /// Accepted.
    #[serde(default, with = "m3_config::option_duration")]
    pub resign_timeout: Option<Duration>,
    /// Leader lease TTL in seconds (default 10).
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

/// `serviceID:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceIdConfig {
    /// Service name.
    #[serde(default)]
    pub name: Option<String>,
    /// Environment.
    #[serde(default)]
    pub environment: Option<String>,
    /// Zone.
    #[serde(default)]
    pub zone: Option<String>,
}

/// `flushManager:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FlushManagerConfig {
    /// How often closed windows are looked for (default 1s).
    #[serde(default, with = "m3_config::option_duration")]
    pub check_every: Option<Duration>,
    /// Accepted.
    #[serde(default)]
    pub jitter_enabled: Option<bool>,
    /// Accepted.
    #[serde(default)]
    pub max_jitters: Option<Ignored>,
    /// Accepted.
    #[serde(default, rename = "numWorkersPerCPU")]
    pub num_workers_per_cpu: Option<f64>,
    /// Deprecated in M3; accepted.
    #[serde(default, with = "m3_config::option_duration")]
    pub flush_times_persist_every: Option<Duration>,
    /// How long a follower keeps windows its leader has not flushed while the leader's flush
    /// times do not move, before it drops the older ones (default 5m).
    #[serde(default, with = "m3_config::option_duration")]
    pub max_buffer_size: Option<Duration>,
    /// How often a follower in that forced mode drops them (default 10s).
    #[serde(default, with = "m3_config::option_duration")]
    pub forced_flush_window_size: Option<Duration>,
    /// Bytes of a leader's output that may wait for acks before its flush pauses between
    /// shards (default 4 MiB; not an M3 key).
    #[serde(default)]
    pub max_unacked_bytes: Option<u64>,
}

/// `flush:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FlushConfig {
    /// Output handlers; exactly one `dynamicBackend` named `m3msg` is supported.
    pub handlers: Vec<FlushHandlerConfig>,
}

/// One `flush.handlers[]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FlushHandlerConfig {
    /// The m3msg backend.
    #[serde(default)]
    pub dynamic_backend: Option<DynamicBackendConfig>,
    /// Not supported.
    #[serde(default)]
    pub static_backend: Option<Ignored>,
}

/// `dynamicBackend:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DynamicBackendConfig {
    /// `m3msg`.
    pub name: String,
    /// Only `murmur32`.
    #[serde(default)]
    pub hash_type: Option<String>,
    /// The m3msg producer (M3's `producer:` block, declared with the producer).
    /// `buffer.onFullStrategy` is accepted and has no effect: a full buffer drops its oldest
    /// messages.
    pub producer: m3_msg::ProducerConfig,
    /// Not supported yet; accepted.
    #[serde(default)]
    pub filters: Option<Ignored>,
    /// Not supported yet; accepted.
    #[serde(default)]
    pub storage_policy_filters: Option<Ignored>,
    /// Not supported yet; accepted.
    #[serde(default)]
    pub percentage_filters: Option<Ignored>,
    /// Not supported yet; accepted.
    #[serde(default)]
    pub routing_policy_filters: Option<Ignored>,
    /// Not supported yet; accepted.
    #[serde(default)]
    pub routing_policy_config: Option<Ignored>,
    /// Accepted.
    #[serde(default)]
    pub writer: Option<Ignored>,
}

/// The settings the process runs with, after validation.
#[derive(Debug, Clone)]
pub struct ValidConfig {
    /// rawtcp listen address, when the rawtcp server runs.
    pub rawtcp_address: Option<String>,
    /// m3msg listen address and consumer settings, when the m3msg server runs.
    pub m3msg: Option<(String, m3_msg::ConsumerConfig)>,
    /// Largest rawtcp frame.
    pub rawtcp_max_message_size: usize,
    /// rawtcp connection limit and timeouts.
    pub rawtcp_limits: m3_server::tcp::ListenerLimits,
    /// HTTP listen address.
    pub http_address: String,
    /// HTTP connection limit and header timeout.
    pub http_limits: m3_server::http::HttpLimits,
    /// The etcd client settings.
    pub etcd: m3_cluster::kv::etcd::EtcdConfig,
    /// Engine options.
    pub engine: AggregatorOptions,
    /// Cluster membership options (instance ID, keys, producer).
    pub instance: crate::instance::InstanceOptions,
    /// Expected number of shards is read from the placement; `murmur32` is the only hash.
    pub host_id: String,
}

impl AggregatorConfig {
    /// Reads and validates the file at `path`, taking variables and the host ID from the
    /// process environment.
    ///
    /// # Errors
    /// Every problem as a [`ConfigError`] naming the file and key.
    pub fn load(path: &Path) -> Result<ValidConfig, ConfigError> {
        let raw: AggregatorConfig = m3_config::load(path)?;
        raw.validate(path, &|name| std::env::var(name).ok())
    }

    /// Parses and validates `text` as if read from `path`, with `env` for variables.
    ///
    /// # Errors
    /// As [`AggregatorConfig::load`].
    pub fn parse(
        path: &Path,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ValidConfig, ConfigError> {
        let raw: AggregatorConfig = m3_config::parse(path, text, env)?;
        raw.validate(path, env)
    }

    /// Checks the values and resolves the host ID.
    ///
    /// # Errors
    /// Every problem of the file, each naming its key (see [`m3_config::Problems`]).
    pub fn validate(
        self,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ValidConfig, ConfigError> {
        let mut problems = m3_config::Problems::new(path);
        let etcd = match self.kv_client {
            Some(kv) => kv.etcd,
            None => {
                problems.add(
                    "kvClient",
                    "missing: the aggregator needs kvClient.etcd (the cluster KV)",
                );
                m3_cluster::kv::etcd::EtcdConfig::default()
            }
        };
        if self.rawtcp.is_none() && self.m3msg.is_none() {
            problems.add(
                "rawtcp",
                "missing: set rawtcp.listenAddress or m3msg.server.listenAddress \
                 (e.g. 0.0.0.0:6000)",
            );
        }
        let m3msg = self
            .m3msg
            .map(|m| (m.server.listen_address.clone(), m.consumer_config()));
        let mut http_limits = m3_server::http::HttpLimits::default();
        if let Some(t) = self.http.as_ref().and_then(|h| h.read_timeout) {
            http_limits.header_read_timeout = t;
        }
        let http_address = self
            .http
            .map(|h| h.listen_address)
            .unwrap_or_else(|| "0.0.0.0:6001".to_string());
        let a = self.aggregator;
        for (key, hash) in [("aggregator.hashType", &a.hash_type)] {
            if let Some(h) = hash
                && h != "murmur32"
            {
                problems.add(key, format!("unsupported hash type {h:?}: only murmur32"));
            }
        }
        for (key, prefix) in [
            ("aggregator.metricPrefix", &a.metric_prefix),
            ("aggregator.counterPrefix", &a.counter_prefix),
            ("aggregator.timerPrefix", &a.timer_prefix),
            ("aggregator.gaugePrefix", &a.gauge_prefix),
        ] {
            if prefix.as_deref().is_some_and(|p| !p.is_empty()) {
                problems.add(key, "output prefixes are not supported yet; leave it empty");
            }
        }
        let host_id = resolve_host_id(a.host_id.as_ref(), env).unwrap_or_else(|m| {
            problems.add("aggregator.hostID", m);
            String::new()
        });
        // The instance's ingest port: rawtcp's, or m3msg's when only m3msg runs.
        let ingest_address = self
            .rawtcp
            .as_ref()
            .map(|r| r.listen_address.as_str())
            .or(m3msg.as_ref().map(|(address, _)| address.as_str()))
            .unwrap_or_default();
        let port = ingest_address
            .rsplit_once(':')
            .map(|(_, p)| p.to_string())
            .unwrap_or_default();
        let instance_id = match a.instance_id.as_ref().map(|i| i.id_type.as_str()) {
            Some("host_id") => host_id.clone(),
            // M3's default when the key is absent: host ID and rawtcp port.
            None | Some("host_id_port") => format!("{host_id}:{port}"),
            Some(other) => {
                problems.add(
                    "aggregator.instanceID.type",
                    format!("unknown instance ID type {other:?}: use host_id or host_id_port"),
                );
                String::new()
            }
        };
        let defaults = AggregatorOptions::default();
        let engine = AggregatorOptions {
            buffer_past: a
                .buffer_duration_for_past_timed_metric
                .unwrap_or(defaults.buffer_past),
            buffer_future: a
                .buffer_duration_for_future_timed_metric
                .unwrap_or(defaults.buffer_future),
            buffer_before_cutover: a
                .buffer_duration_before_shard_cutover
                .unwrap_or(defaults.buffer_before_cutover),
            buffer_after_cutoff: a
                .buffer_duration_after_shard_cutoff
                .unwrap_or(defaults.buffer_after_cutoff),
            entry_ttl: a.entry_ttl.unwrap_or(defaults.entry_ttl),
            default_storage_policies: a
                .default_storage_policies
                .clone()
                .unwrap_or_else(|| defaults.default_storage_policies.clone()),
            max_timer_batch_size_per_write: a
                .max_timer_batch_size_per_write
                .unwrap_or(defaults.max_timer_batch_size_per_write),
            discard_nan_aggregated_values: a
                .discard_nan_aggregated_values
                .unwrap_or(defaults.discard_nan_aggregated_values),
            forwarding_max_const_delay: a.forwarding.as_ref().and_then(|f| f.max_const_delay),
            ..defaults
        };
        if engine.default_storage_policies.is_empty() {
            problems.add(
                "aggregator.defaultStoragePolicies",
                "must list at least one policy, e.g. [10s:2d]",
            );
        }
        let mut instance = crate::instance::InstanceOptions::new(instance_id);
        if let Some(client) = &a.client {
            match crate::client::ClientOptions::from_config(client) {
                Ok(options) => instance.client = options,
                Err(errors) => {
                    for e in errors {
                        problems.add(format!("aggregator.client.{}", e.key), e.reason);
                    }
                }
            }
        }
        if let Some(pm) = &a.placement_manager {
            if let Some(ns) = &pm.kv_config.namespace {
                instance.placement_namespace = ns.clone();
            }
            if let Some(env) = &pm.kv_config.environment {
                instance.environment = env.clone();
            }
            if let Some(zone) = &pm.kv_config.zone {
                instance.zone = zone.clone();
            }
            if let Some(key) = pm.placement_watcher.as_ref().and_then(|w| w.key.clone()) {
                instance.placement_key = key;
            }
        }
        if let Some(em) = &a.election_manager {
            if let Some(ttl) = em.election.as_ref().and_then(|e| e.ttl_seconds) {
                if ttl == 0 {
                    problems.add(
                        "aggregator.electionManager.election.ttlSeconds",
                        "must be positive",
                    );
                }
                instance.election_ttl = Duration::from_secs(ttl);
            }
            if let Some(fmt) = &em.election_key_fmt
                && fmt != "shardset/%d/lock"
            {
                problems.add(
                    "aggregator.electionManager.electionKeyFmt",
                    "only shardset/%d/lock is supported",
                );
            }
        }
        if let Some(fm) = &a.flush_manager {
            for (key, value, slot) in [
                ("checkEvery", fm.check_every, &mut instance.check_every),
                (
                    "maxBufferSize",
                    fm.max_buffer_size,
                    &mut instance.max_buffer_size,
                ),
                (
                    "forcedFlushWindowSize",
                    fm.forced_flush_window_size,
                    &mut instance.forced_flush_window_size,
                ),
            ] {
                if let Some(value) = value {
                    if value.is_zero() {
                        problems.add(format!("aggregator.flushManager.{key}"), "must be positive");
                    }
                    *slot = value;
                }
            }
            match fm.max_unacked_bytes.map(usize::try_from) {
                None => {}
                Some(Ok(bytes)) if bytes > 0 => instance.max_unacked_flush_bytes = bytes,
                Some(_) => problems.add(
                    "aggregator.flushManager.maxUnackedBytes",
                    "must be a positive number of bytes",
                ),
            }
        }
        if let Some(ftm) = &a.flush_times_manager
            && let Some(fmt) = &ftm.flush_times_key_fmt
            && fmt != "shardset/%d/flush"
        {
            problems.add(
                "aggregator.flushTimesManager.flushTimesKeyFmt",
                "only shardset/%d/flush is supported",
            );
        }
        if let Some(interval) = a.entry_check_interval {
            instance.entry_check_interval = interval;
        }
        if let Some(flush) = &a.flush {
            let backends: Vec<&DynamicBackendConfig> = flush
                .handlers
                .iter()
                .filter_map(|h| h.dynamic_backend.as_ref())
                .collect();
            if backends.len() != 1 || flush.handlers.len() != 1 {
                problems.add(
                    "aggregator.flush.handlers",
                    "exactly one handler with a dynamicBackend (m3msg) is supported",
                );
            }
        }
        if let Some(backend) = a
            .flush
            .as_ref()
            .and_then(|f| f.handlers.first())
            .and_then(|h| h.dynamic_backend.as_ref())
        {
            if backend.name != "m3msg" {
                problems.add(
                    "aggregator.flush.handlers[0].dynamicBackend.name",
                    format!("unsupported backend {:?}: only m3msg", backend.name),
                );
            }
            let writer = &backend.producer.writer;
            instance.topic = writer.topic_name.clone();
            // One environment keys the placement, the topic, the elections and the flush times.
            if let Some(env) = writer
                .topic_service_override
                .as_ref()
                .and_then(|o| o.environment.as_ref())
                && *env != instance.environment
            {
                problems.add("aggregator.flush.handlers[0].dynamicBackend.producer.writer.topicServiceOverride.environment", format!(
                        "{env:?} differs from the placement environment {:?}; one environment is supported",
                        instance.environment
                    ));
            }
            instance.producer = producer_options(&backend.producer);
        }
        let defaults = m3_server::tcp::ListenerLimits::default();
        let rawtcp = self.rawtcp;
        let rawtcp_limits = m3_server::tcp::ListenerLimits {
            max_connections: rawtcp
                .as_ref()
                .and_then(|r| r.max_connections)
                .unwrap_or(defaults.max_connections),
            idle_timeout: rawtcp
                .as_ref()
                .and_then(|r| r.idle_timeout)
                .unwrap_or(defaults.idle_timeout),
            frame_timeout: rawtcp
                .as_ref()
                .and_then(|r| r.frame_timeout)
                .unwrap_or(defaults.frame_timeout),
        };
        problems.finish(ValidConfig {
            rawtcp_limits,
            http_limits,
            rawtcp_max_message_size: rawtcp
                .as_ref()
                .and_then(|r| r.protobuf_iterator.as_ref())
                .and_then(|p| p.max_message_size)
                .unwrap_or(m3_proto::framing::DEFAULT_RAWTCP_MAX_MESSAGE_SIZE),
            rawtcp_address: rawtcp.map(|r| r.listen_address),
            m3msg,
            http_address,
            etcd,
            engine,
            instance,
            host_id,
        })
    }
}

/// The producer the aggregator runs with for a `producer:` block: the block as written, except
/// `buffer.onFullStrategy`, which is accepted and has no effect here (a full buffer always drops
/// its oldest messages).
pub(crate) fn producer_options(block: &m3_msg::ProducerConfig) -> m3_msg::ProducerConfig {
    let mut producer = block.clone();
    producer.buffer.on_full_strategy = m3_msg::OnFull::DropOldest;
    producer
}

/// The host ID from `aggregator.hostID`.
fn resolve_host_id(
    config: Option<&HostIdConfig>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let Some(config) = config else {
        return hostname().ok_or_else(|| "not set and the host name cannot be read".to_string());
    };
    match config.resolver.as_str() {
        "environment" => {
            let name = config
                .env_var_name
                .as_deref()
                .ok_or("resolver environment needs envVarName")?;
            match env(name) {
                Some(v) if !v.is_empty() => Ok(v),
                _ => Err(format!(
                    "resolver environment: variable {name} is not set; set it to this instance's ID in the placement"
                )),
            }
        }
        "config" => config
            .value
            .clone()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| "resolver config needs a non-empty value".to_string()),
        "hostname" => {
            hostname().ok_or_else(|| "resolver hostname: the host name cannot be read".to_string())
        }
        other => Err(format!(
            "unknown resolver {other:?}: use environment, config or hostname"
        )),
    }
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> (PathBuf, String) {
        let path = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../config/m3aggregator.yml"
        ));
        let text = std::fs::read_to_string(&path).unwrap();
        (path, text)
    }

    fn env(name: &str) -> Option<String> {
        (name == "M3AGGREGATOR_HOST_ID").then(|| "m3aggregator01".to_string())
    }

    use std::path::PathBuf;

    #[test]
    fn shipped_config_loads() {
        let (path, text) = shipped();
        let config = AggregatorConfig::parse(&path, &text, &env).unwrap();
        assert_eq!(config.host_id, "m3aggregator01");
        assert_eq!(config.instance.instance_id, "m3aggregator01:6000");
        assert_eq!(config.rawtcp_address.as_deref(), Some("0.0.0.0:6000"));
        assert_eq!(config.http_address, "0.0.0.0:6001");
        assert_eq!(config.engine.buffer_past, Duration::from_secs(60));
        assert_eq!(
            config.engine.default_storage_policies[0].to_string(),
            "10s:2d"
        );
        assert_eq!(config.instance.topic, "aggregated_metrics");
        assert_eq!(config.instance.placement_namespace, "/placement");
        assert_eq!(config.instance.election_ttl, Duration::from_secs(10));
        assert_eq!(
            config.instance.producer.buffer.max_buffer_size,
            1_000_000_000
        );
        assert_eq!(config.instance.max_unacked_flush_bytes, 4 << 20);
        let smaller = text.replace("maxUnackedBytes: 4194304", "maxUnackedBytes: 1048576");
        assert_ne!(smaller, text);
        let config = AggregatorConfig::parse(&path, &smaller, &env).unwrap();
        assert_eq!(config.instance.max_unacked_flush_bytes, 1 << 20);
        assert_eq!(
            config.etcd.etcd_clusters[0].endpoints,
            vec!["127.0.0.1:2379".to_string()]
        );
    }

    /// The shipped `producer:` block reads straight into the producer's config: what it sets
    /// over the producer's defaults, each retry over its own defaults.
    #[test]
    fn producer_block_is_the_producers_config() {
        let (path, text) = shipped();
        let producer = AggregatorConfig::parse(&path, &text, &env)
            .unwrap()
            .instance
            .producer;
        let mut want = m3_msg::ProducerConfig::default();
        want.buffer.max_buffer_size = 1_000_000_000;
        want.writer.topic_name = "aggregated_metrics".into();
        want.writer.topic_service_override = Some(KvScopeConfig {
            namespace: None,
            environment: Some("default_env".into()),
            zone: Some("embedded".into()),
        });
        want.writer.message_retry.initial_backoff = Duration::from_secs(1);
        want.writer.message_retry.max_backoff = Duration::from_secs(10);
        want.writer.message_queue_new_writes_scan_interval = Duration::from_secs(1);
        want.writer.connection.flush_interval = Duration::from_millis(100);
        want.writer.connection.write_buffer_size = 16384;
        assert_eq!(producer, want);

        let return_error = text.replace(
            "maxBufferSize: 1000000000",
            "maxBufferSize: 1000000000\n              onFullStrategy: returnError",
        );
        assert_ne!(return_error, text);
        let producer = AggregatorConfig::parse(&path, &return_error, &env)
            .unwrap()
            .instance
            .producer;
        assert_eq!(producer.buffer.on_full_strategy, m3_msg::OnFull::DropOldest);

        let unknown = text.replace(
            "flushInterval: 100ms",
            "flushInterval: 100ms\n                queueSize: 4",
        );
        let err = AggregatorConfig::parse(&path, &unknown, &env)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("queueSize") && err.contains("m3aggregator.yml"),
            "{err}"
        );
        let bad_retry = text.replace(
            "maxBackoff: 10s\n              messageQueue",
            "maxBackof: 10s\n              messageQueue",
        );
        assert_ne!(bad_retry, text);
        let err = AggregatorConfig::parse(&path, &bad_retry, &env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("maxBackof"), "{err}");
    }

    /// Every bad value of the file is reported at once, each with its key, not one per start.
    #[test]
    fn every_problem_is_reported_at_once() {
        let (path, text) = shipped();
        let bad = text
            .replace("hashType: murmur32", "hashType: sha1")
            .replace("ttlSeconds: 10", "ttlSeconds: 0")
            .replace("checkEvery: 1s", "checkEvery: 0s")
            .replace("maxUnackedBytes: 4194304", "maxUnackedBytes: 0");
        let err = AggregatorConfig::parse(&path, &bad, &|_| None)
            .unwrap_err()
            .to_string();
        for part in [
            "m3aggregator.yml",
            "problems:",
            "`aggregator.hostID`",
            "`aggregator.hashType`: unsupported hash type \"sha1\"",
            "`aggregator.electionManager.election.ttlSeconds`: must be positive",
            "`aggregator.flushManager.checkEvery`: must be positive",
            "`aggregator.flushManager.maxUnackedBytes`: must be a positive number of bytes",
        ] {
            assert!(err.contains(part), "{part} not in {err}");
        }
    }

    #[test]
    fn host_id_from_the_environment_is_required() {
        let (path, text) = shipped();
        let err = AggregatorConfig::parse(&path, &text, &|_| None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("aggregator.hostID") && err.contains("M3AGGREGATOR_HOST_ID"),
            "{err}"
        );
        assert!(err.contains("m3aggregator.yml"), "{err}");
    }

    #[test]
    fn unknown_key_bad_duration_and_missing_kv_client_name_key_and_file() {
        let (path, text) = shipped();
        let unknown = text.replace("  entryTTL: 1h", "  entryTTL: 1h\n  entryTLL: 2h");
        let err = AggregatorConfig::parse(&path, &unknown, &env)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("entryTLL") && err.contains("m3aggregator.yml"),
            "{err}"
        );

        let bad_duration = text.replace("checkEvery: 1s", "checkEvery: often");
        let err = AggregatorConfig::parse(&path, &bad_duration, &env)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("often") && err.contains("m3aggregator.yml"),
            "{err}"
        );

        let start = text.find("kvClient:").unwrap();
        let end = text.find("aggregator:\n").unwrap();
        let missing = format!("{}{}", &text[..start], &text[end..]);
        let err = AggregatorConfig::parse(&path, &missing, &env)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("kvClient") && err.contains("m3aggregator.yml"),
            "{err}"
        );
    }

    #[test]
    fn instance_id_types() {
        let (path, text) = shipped();
        let host_only = text.replace("type: host_id_port", "type: host_id");
        let config = AggregatorConfig::parse(&path, &host_only, &env).unwrap();
        assert_eq!(config.instance.instance_id, "m3aggregator01");
        let bad = text.replace("type: host_id_port", "type: pod_name");
        let err = AggregatorConfig::parse(&path, &bad, &env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("aggregator.instanceID.type"), "{err}");
    }
    /// The m3msg setup of M3's how-to: an `m3msg:` ingest server instead of rawtcp, and a
    /// forwarding client of `type: m3msg` on the `aggregator_ingest` topic.
    #[test]
    fn m3msg_ingest_and_client_as_in_m3s_how_to() {
        let (path, text) = shipped();
        let start = text.find("rawtcp:").unwrap();
        let end = text.find("http:").unwrap();
        let m3msg = format!(
            "{}m3msg:
  server:
    listenAddress: 0.0.0.0:6000
    retry:
      maxBackoff: 10s
      jitter: true
  consumer:
    messagePool:
      size: 16384
      watermark:
        low: 0.2
        high: 0.5

{}",
            &text[..start],
            &text[end..]
        )
        .replace(
            "aggregator:\n",
            "aggregator:
  client:
    type: m3msg
    m3msg:
      producer:
        writer:
          topicName: aggregator_ingest
          topicServiceOverride:
            zone: embedded
            environment: default_env
          placement:
            isStaged: true
          placementServiceOverride:
            namespaces:
              placement: /placement
          messagePool:
            size: 16384
",
        );
        let config = AggregatorConfig::parse(&path, &m3msg, &env).unwrap();
        assert_eq!(config.rawtcp_address, None);
        assert_eq!(
            config.m3msg.as_ref().map(|(a, _)| a.as_str()),
            Some("0.0.0.0:6000")
        );
        assert_eq!(config.instance.instance_id, "m3aggregator01:6000");
        let transport = config.instance.client.m3msg.expect("m3msg client");
        assert_eq!(transport.topic, "aggregator_ingest");
        assert_eq!(transport.placement_namespace.as_deref(), Some("/placement"));

        let no_block = text.replace("aggregator:\n", "aggregator:\n  client:\n    type: m3msg\n");
        let err = AggregatorConfig::parse(&path, &no_block, &env)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("aggregator.client.m3msg") && err.contains("topicName"),
            "{err}"
        );

        let no_type = m3msg.replace("type: m3msg", "type: grpc");
        let err = AggregatorConfig::parse(&path, &no_type, &env)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("aggregator.client.type") && err.contains("grpc"),
            "{err}"
        );

        let neither = format!("{}{}", &text[..start], &text[end..]);
        let err = AggregatorConfig::parse(&path, &neither, &env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("m3msg.server.listenAddress"), "{err}");
    }
}
