//! The coordinator's config file, with M3's key names.
//!
//! The `downsample` and `ingest` blocks of SEED.md parse verbatim (a test loads them from the
//! seed itself). Every struct denies unknown keys, so a misspelt key fails at startup naming the
//! key and the file instead of being ignored. Keys M3 has deprecated (`flushSize`) or that tune
//! Go object pools (`bytesPool`, `opPool`) are accepted for compatibility and documented as
//! having no effect here.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use m3_config::{ConfigError, Ignored};
use m3_metric::StoragePolicy;

/// The whole coordinator config file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CoordinatorConfig {
    /// HTTP listen address for the API (default `0.0.0.0:7201`).
    #[serde(default)]
    pub listen_address: Option<String>,
    /// Self-metrics and logging settings (accepted; `/metrics` is served on the API port).
    #[serde(default)]
    pub metrics: Option<Ignored>,
    /// Logging level (accepted; `RUST_LOG` wins).
    #[serde(default)]
    pub logging: Option<Ignored>,
    /// Storage clusters and their namespaces.
    #[serde(default)]
    pub clusters: Vec<ClusterConfig>,
    /// Where the embedded store keeps its files.
    #[serde(default)]
    pub storage: StorageConfig,
    /// Cluster KV (etcd) settings; required by `m3coordinator`, unused by `m3 local` (in-memory KV).
    #[serde(default)]
    pub cluster_management: Option<ClusterManagementConfig>,
    /// Downsampling: rules and the remote aggregator client.
    #[serde(default)]
    pub downsample: DownsampleConfig,
    /// The m3msg ingest server receiving aggregated metrics.
    #[serde(default)]
    pub ingest: Option<IngestConfig>,
    /// Timed-sample buffers the coordinator checks before sending to the aggregators; they
    /// should match the aggregators' `bufferDurationForPastTimedMetric` /
    /// `bufferDurationForFutureTimedMetric`.
    #[serde(default)]
    pub write_buffers: WriteBuffersConfig,
    /// Bounds on what one client may make the coordinator hold (see [`crate::limits`]).
    #[serde(default)]
    pub limits: crate::limits::LimitsConfig,
    /// M3's storage backend: `m3db` (the default) is the embedded store here.
    #[serde(default)]
    pub backend: Option<String>,
    /// Prometheus remote-write endpoints receiving copies of raw samples and aggregated output
    /// (see [`crate::remote_out`]).
    #[serde(default)]
    pub prometheus_remote_backend: Option<crate::remote_out::config::PrometheusRemoteBackendConfig>,
}

/// `clusterManagement:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterManagementConfig {
    /// The etcd client (M3's keys).
    pub etcd: m3_cluster::kv::etcd::EtcdConfig,
}

/// A storage cluster; here always the embedded store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterConfig {
    /// The namespaces of the cluster.
    pub namespaces: Vec<NamespaceConfig>,
    /// M3DB client settings (accepted for compatibility; the embedded store needs none).
    #[serde(default)]
    pub client: Option<Ignored>,
}

/// One namespace, with M3's keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NamespaceConfig {
    /// Namespace name.
    pub namespace: String,
    /// `unaggregated` or `aggregated`.
    #[serde(rename = "type")]
    pub kind: NamespaceKind,
    /// How long data is kept.
    #[serde(with = "m3_config::duration")]
    pub retention: Duration,
    /// Resolution; required for aggregated namespaces.
    #[serde(default, with = "m3_config::option_duration")]
    pub resolution: Option<Duration>,
    /// Downsampling options of an aggregated namespace.
    #[serde(default)]
    pub downsample: Option<NamespaceDownsample>,
    /// A read-only namespace gets no writes and no automatic mapping rule.
    #[serde(default)]
    pub read_only: bool,
    /// How far behind a series' newest sample the embedded store still takes a write (M3DB's
    /// namespace option of the same name); older ones are refused and counted. Default: an
    /// hour, or ten windows of an aggregated namespace if that is longer.
    #[serde(default, with = "m3_config::option_duration")]
    pub buffer_past: Option<Duration>,
    /// How far ahead of the clock the embedded store still takes a write (M3DB's namespace
    /// option of the same name); later ones are refused and counted. Default: ten minutes.
    #[serde(default, with = "m3_config::option_duration")]
    pub buffer_future: Option<Duration>,
}

/// Namespace type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NamespaceKind {
    /// Raw samples.
    Unaggregated,
    /// Aggregated samples at one resolution.
    Aggregated,
}

/// `downsample:` under an aggregated namespace.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NamespaceDownsample {
    /// Whether every metric gets an automatic mapping rule for this namespace (default true).
    #[serde(default = "default_true")]
    pub all: bool,
}

/// Serde's default for a flag that is on unless turned off (also used by [`crate::limits`]).
pub(crate) fn default_true() -> bool {
    true
}

/// Where the embedded store lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StorageConfig {
    /// Directory of the embedded store (default `./data`).
    #[serde(default = "default_data_dir")]
    pub data_dir: String,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: default_data_dir(),
        }
    }
}

fn default_data_dir() -> String {
    "./data".to_string()
}

/// `downsample:`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DownsampleConfig {
    /// Send metrics to remote aggregators.
    #[serde(default)]
    pub remote_aggregator: Option<RemoteAggregatorConfig>,
    /// Explicit mapping and rollup rules (M3's keys; see `m3_rules`).
    #[serde(default)]
    pub rules: Option<m3_rules::config::RulesConfig>,
    /// The rule matcher's per-series cache.
    #[serde(default)]
    pub matcher: Option<MatcherConfig>,
    /// Whether namespaces get automatic mapping rules unless they say otherwise.
    #[serde(default)]
    pub all: Option<bool>,
}

/// `downsample.matcher:`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MatcherConfig {
    /// The cache of rule matches per series.
    #[serde(default)]
    pub cache: Option<MatcherCacheConfig>,
    /// The tag naming a series' rules namespace; accepted (every series uses the config's
    /// rules).
    #[serde(default)]
    pub namespace_tag: Option<Ignored>,
    /// Accepted.
    #[serde(default)]
    pub require_namespace_watch_on_init: Option<Ignored>,
}

/// `downsample.matcher.cache:`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MatcherCacheConfig {
    /// Series whose rule match is cached (default 1,000,000).
    #[serde(default)]
    pub capacity: Option<usize>,
}

/// `downsample.remoteAggregator:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RemoteAggregatorConfig {
    /// The aggregator client (M3's keys, declared with the client).
    pub client: m3_aggregator::client::config::AggregatorClientConfig,
}

/// `ingest:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngestConfig {
    /// Write workers and retries.
    #[serde(default)]
    pub ingester: IngesterConfig,
    /// The m3msg server.
    pub m3msg: m3_msg::ConsumerServerSection,
}

/// `ingest.ingester:`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngesterConfig {
    /// Concurrent storage writes.
    #[serde(default)]
    pub worker_pool_size: Option<usize>,
    /// Go object pool size; accepted, no effect.
    #[serde(default)]
    pub op_pool: Option<Ignored>,
    /// Storage write retries before the message is left un-acked for redelivery (M3's shared
    /// `retry:` block).
    #[serde(default)]
    pub retry: Option<m3_config::RetryConfig>,
    /// Fraction of write errors logged.
    #[serde(default)]
    pub log_sample_rate: Option<f64>,
}

/// Past/future limits for timed samples.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WriteBuffersConfig {
    /// Samples older than now − (this + resolution) are rejected (default 1m).
    #[serde(default = "default_buffer", with = "m3_config::duration")]
    pub buffer_past: Duration,
    /// Samples newer than now + this are rejected (default 1m).
    #[serde(default = "default_future_buffer", with = "m3_config::duration")]
    pub buffer_future: Duration,
}

impl Default for WriteBuffersConfig {
    fn default() -> Self {
        WriteBuffersConfig {
            buffer_past: default_buffer(),
            buffer_future: default_future_buffer(),
        }
    }
}

/// The aggregator's default `bufferDurationForPastTimedMetric` (M3's code default), so that a
/// coordinator without `writeBuffers` refuses what the aggregators would refuse.
fn default_buffer() -> Duration {
    Duration::from_secs(60)
}

fn default_future_buffer() -> Duration {
    Duration::from_secs(60)
}

/// A namespace after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidNamespace {
    /// Name.
    pub name: String,
    /// The storage policy of an aggregated namespace, `None` for the unaggregated one.
    pub policy: Option<StoragePolicy>,
    /// Retention.
    pub retention: Duration,
    /// Whether it gets an automatic mapping rule.
    pub downsample_all: bool,
    /// Read-only.
    pub read_only: bool,
    /// `bufferPast`, when set (the store's default otherwise).
    pub buffer_past: Option<Duration>,
    /// `bufferFuture`, when set (the store's default otherwise).
    pub buffer_future: Option<Duration>,
}

/// The settings a coordinator runs with: the file after [`CoordinatorConfig::validate`], with
/// defaults applied and the namespaces, rules and aggregator client resolved once.
#[derive(Debug, Clone)]
pub struct ValidConfig {
    /// HTTP listen address (default `0.0.0.0:7201`).
    pub listen_address: String,
    /// Directory of the embedded store.
    pub data_dir: String,
    /// The cluster KV (etcd): required by [`CoordinatorConfig::load`] (`m3coordinator`),
    /// absent under `m3 local` (in-memory KV).
    pub etcd: Option<m3_cluster::kv::etcd::EtcdConfig>,
    /// The namespaces of every cluster.
    pub namespaces: Vec<ValidNamespace>,
    /// The explicit rules, compiled against the aggregated namespaces.
    pub rules: m3_rules::RuleSet,
    /// Series whose rule match is cached.
    pub matcher_cache_capacity: usize,
    /// The remote aggregator client: its block (where the placement is) and its options.
    pub remote_aggregator: Option<(
        m3_aggregator::client::config::AggregatorClientConfig,
        m3_aggregator::client::ClientOptions,
    )>,
    /// The m3msg ingest server.
    pub ingest: Option<IngestConfig>,
    /// Timed-sample buffers.
    pub write_buffers: WriteBuffersConfig,
    /// Bounds on what one client may make the coordinator hold.
    pub limits: crate::limits::LimitsConfig,
    /// Remote write out, when endpoints are configured.
    pub remote_out: Option<crate::remote_out::config::RemoteOutSettings>,
    /// What the aggregators produce for: the aggregated namespaces, and the storage policies
    /// of remote-write endpoints that no namespace has (the rules and the automatic mapping
    /// rules are built from these).
    pub aggregation_targets: Vec<ValidNamespace>,
    /// Where data is kept.
    pub backend: Backend,
}

/// `backend:` — where the coordinator keeps what it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded store (`m3db`, the default), plus copies to any `prometheusRemoteBackend`
    /// endpoints.
    Embedded,
    /// Only `prometheusRemoteBackend`'s endpoints (`prom-remote`): nothing is stored here and
    /// the query API answers that it has no data.
    PromRemote,
}

impl CoordinatorConfig {
    /// Loads and validates the file at `path` as `m3coordinator` runs it: `clusterManagement`
    /// (etcd) is required.
    ///
    /// # Errors
    /// Unreadable file, unknown keys, bad values; every bad value at once, each naming the
    /// file and key.
    pub fn load(path: &Path) -> Result<ValidConfig, ConfigError> {
        let config: CoordinatorConfig = m3_config::load(path)?;
        config.checked(path, true)
    }

    /// Parses and validates `text` as if it were the file at `path` (no environment), as
    /// [`CoordinatorConfig::validate`] does.
    ///
    /// # Errors
    /// As [`CoordinatorConfig::load`].
    pub fn parse(path: &Path, text: &str) -> Result<ValidConfig, ConfigError> {
        let config: CoordinatorConfig = m3_config::parse(path, text, &|_| None)?;
        config.validate(path)
    }

    /// Checks every value and resolves the namespaces, the rules and the aggregator client;
    /// `clusterManagement` may be absent (as under `m3 local`).
    ///
    /// # Errors
    /// Every problem of the file (see [`m3_config::Problems`]), each naming its key.
    pub fn validate(self, path: &Path) -> Result<ValidConfig, ConfigError> {
        self.checked(path, false)
    }

    fn checked(self, path: &Path, etcd_required: bool) -> Result<ValidConfig, ConfigError> {
        let mut problems = m3_config::Problems::new(path);
        if etcd_required && self.cluster_management.is_none() {
            problems.add(
                "clusterManagement",
                "missing: the coordinator needs clusterManagement.etcd (the cluster KV)",
            );
        }
        let namespaces = self.namespaces(&mut problems);
        let backend = match self.backend.as_deref() {
            None | Some("m3db") => Backend::Embedded,
            Some("prom-remote") => {
                if self.prometheus_remote_backend.is_none() {
                    problems.add(
                        "prometheusRemoteBackend",
                        "missing: backend prom-remote sends everything to its endpoints",
                    );
                }
                if !self.clusters.is_empty() {
                    problems.add(
                        "clusters",
                        "not used with backend prom-remote (nothing is stored here; the \
                         endpoints' storage policies are the aggregated namespaces): remove \
                         it, or remove backend to keep the embedded store",
                    );
                }
                Backend::PromRemote
            }
            Some(other) => {
                problems.add(
                    "backend",
                    format!(
                        "{other:?} is not a backend here: m3db (the embedded store) and \
                         prom-remote (prometheusRemoteBackend's endpoints only) are"
                    ),
                );
                Backend::Embedded
            }
        };
        let remote_out = self
            .prometheus_remote_backend
            .as_ref()
            .map(|r| r.validate("prometheusRemoteBackend", &mut problems));
        let aggregation_targets = aggregation_targets(
            &namespaces,
            remote_out.as_ref().map_or(&[][..], |r| &r.endpoints[..]),
        );
        let configured: usize = self.clusters.iter().map(|c| c.namespaces.len()).sum();
        let rules = match &self.downsample.rules {
            None => m3_rules::RuleSet::default(),
            // Rules name namespaces by storage policy: with a namespace refused above, they
            // would report policies as missing that are only misconfigured.
            Some(_) if namespaces.len() != configured => m3_rules::RuleSet::default(),
            Some(rules) => {
                let available: Vec<StoragePolicy> = aggregation_targets
                    .iter()
                    .filter(|n| !n.read_only)
                    .filter_map(|n| n.policy)
                    .collect();
                m3_rules::RuleSet::compile(rules, "downsample.rules", &available).unwrap_or_else(
                    |errors| {
                        problems.add("downsample.rules", errors.to_string());
                        m3_rules::RuleSet::default()
                    },
                )
            }
        };
        let remote_aggregator = self.downsample.remote_aggregator.and_then(|remote| {
            match m3_aggregator::client::ClientOptions::from_config(&remote.client) {
                Ok(options) => Some((remote.client, options)),
                Err(errors) => {
                    for e in errors {
                        problems.add(
                            format!("downsample.remoteAggregator.client.{}", e.key),
                            e.reason,
                        );
                    }
                    None
                }
            }
        });
        let matcher_cache_capacity = self
            .downsample
            .matcher
            .and_then(|m| m.cache)
            .and_then(|c| c.capacity)
            .unwrap_or(crate::downsample::DEFAULT_CACHE_CAPACITY);
        problems.finish(ValidConfig {
            listen_address: self
                .listen_address
                .unwrap_or_else(|| "0.0.0.0:7201".to_string()),
            data_dir: self.storage.data_dir,
            etcd: self.cluster_management.map(|c| c.etcd),
            namespaces,
            rules,
            matcher_cache_capacity,
            remote_aggregator,
            ingest: self.ingest,
            write_buffers: self.write_buffers,
            limits: self.limits,
            remote_out,
            aggregation_targets,
            backend,
        })
    }

    /// The namespaces of every cluster that are valid: one unaggregated namespace at most,
    /// aggregated ones with a resolution, no two aggregated with the same resolution and
    /// retention. Each problem goes to `problems` and its namespace is left out.
    fn namespaces(&self, problems: &mut m3_config::Problems) -> Vec<ValidNamespace> {
        let mut out: Vec<ValidNamespace> = Vec::new();
        // Names and kinds of every namespace, valid or not, for the duplicate checks.
        let mut names: Vec<&str> = Vec::new();
        let mut unaggregated = 0usize;
        let default_all = self.downsample.all.unwrap_or(true);
        for (ci, cluster) in self.clusters.iter().enumerate() {
            for (ni, ns) in cluster.namespaces.iter().enumerate() {
                let key = format!("clusters[{ci}].namespaces[{ni}]");
                let mut bad = |field: &str, message: String| {
                    let key = if field.is_empty() {
                        key.clone()
                    } else {
                        format!("{key}.{field}")
                    };
                    problems.add(key, message);
                };
                let mut valid = true;
                if ns.retention.is_zero() {
                    bad("retention", "must be positive".into());
                    valid = false;
                }
                if ns.buffer_past.is_some_and(|b| b.is_zero()) {
                    bad("bufferPast", "must be positive".into());
                    valid = false;
                }
                // Zero would refuse every sample of a clock a millisecond fast.
                if ns.buffer_future.is_some_and(|b| b.is_zero()) {
                    bad("bufferFuture", "must be positive".into());
                    valid = false;
                }
                let policy = match (ns.kind, ns.resolution) {
                    (NamespaceKind::Unaggregated, _) => None,
                    (NamespaceKind::Aggregated, None) => {
                        bad(
                            "resolution",
                            "an aggregated namespace needs a resolution".into(),
                        );
                        valid = false;
                        None
                    }
                    (NamespaceKind::Aggregated, Some(r)) if r.is_zero() => {
                        bad("resolution", "must be positive".into());
                        valid = false;
                        None
                    }
                    (NamespaceKind::Aggregated, Some(r)) => {
                        Some(StoragePolicy::new(r, ns.retention))
                    }
                };
                if names.contains(&ns.namespace.as_str()) {
                    bad(
                        "namespace",
                        format!("namespace {:?} is defined twice", ns.namespace),
                    );
                    valid = false;
                }
                if ns.kind == NamespaceKind::Unaggregated && unaggregated > 0 {
                    bad("type", "only one unaggregated namespace is allowed".into());
                    valid = false;
                }
                if let Some(p) = policy
                    && out.iter().any(|o| {
                        o.policy.is_some_and(|q| {
                            q.resolution.window == p.resolution.window && q.retention == p.retention
                        })
                    })
                {
                    bad(
                        "",
                        format!(
                            "another aggregated namespace already has resolution:retention {p}"
                        ),
                    );
                    valid = false;
                }
                names.push(&ns.namespace);
                if ns.kind == NamespaceKind::Unaggregated {
                    unaggregated += 1;
                }
                if valid {
                    out.push(ValidNamespace {
                        name: ns.namespace.clone(),
                        policy,
                        retention: ns.retention,
                        downsample_all: ns.downsample.as_ref().map_or(default_all, |d| d.all),
                        read_only: ns.read_only,
                        buffer_past: ns.buffer_past,
                        buffer_future: ns.buffer_future,
                    });
                }
            }
        }
        out
    }
}

/// The namespaces, then one target per storage policy of a remote-write endpoint that no
/// writable namespace has (named `prometheusRemoteBackend:<endpoint>`). A policy both have gets
/// automatic mapping rules when either asks for them.
fn aggregation_targets(
    namespaces: &[ValidNamespace],
    endpoints: &[crate::remote_out::config::ValidEndpoint],
) -> Vec<ValidNamespace> {
    let mut targets = namespaces.to_vec();
    for endpoint in endpoints {
        let Some(policy) = endpoint.policy else {
            continue;
        };
        let existing = targets.iter_mut().find(|t| {
            !t.read_only
                && t.policy.is_some_and(|p| {
                    p.resolution.window == policy.resolution.window
                        && p.retention == policy.retention
                })
        });
        match existing {
            Some(target) => target.downsample_all |= endpoint.downsample_all,
            None => targets.push(ValidNamespace {
                name: format!("prometheusRemoteBackend:{}", endpoint.name),
                policy: Some(policy),
                retention: policy.retention.0,
                downsample_all: endpoint.downsample_all,
                read_only: false,
                buffer_past: None,
                buffer_future: None,
            }),
        }
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The YAML blocks of SEED.md's "Coordinator configuration" section, extracted from the seed
    /// itself so that a change to the seed is tested too.
    fn seed_coordinator_block() -> String {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/seed/m3aggregator.md"
        );
        let seed = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("SEED.md must be at {path} (shared/ beside the repo): {e}"));
        let start = seed
            .find("# This is for sending metrics to the remote m3aggregators")
            .expect("seed has the coordinator block");
        let rest = &seed[start..];
        let end = rest.find("```").expect("block ends");
        rest[..end].to_string()
    }

    #[test]
    fn seed_blocks_parse_verbatim() {
        let text = seed_coordinator_block();
        let config = CoordinatorConfig::parse(Path::new("SEED.md"), &text).unwrap();
        let client = config.remote_aggregator.unwrap().0;
        assert_eq!(client.placement_kv.namespace, "/placement");
        assert_eq!(client.placement_watcher.key, "m3aggregator");
        assert_eq!(
            client.placement_watcher.init_watch_timeout,
            Some(Duration::from_secs(10))
        );
        assert_eq!(client.queue_size, Some(10_000));
        assert_eq!(
            client.queue_drop_type,
            Some(m3_aggregator::client::QueueDropType::Oldest)
        );
        assert_eq!(client.max_timer_batch_size, Some(1120));
        assert_eq!(
            client.connection.write_timeout,
            Some(Duration::from_millis(250))
        );
        assert_eq!(client.encoder.max_message_size, Some(10_485_760));
        let ingest = config.ingest.unwrap();
        assert_eq!(ingest.m3msg.server.listen_address, "0.0.0.0:7507");
        assert_eq!(ingest.ingester.worker_pool_size, Some(100));
    }

    #[test]
    fn unknown_key_is_named() {
        let text = seed_coordinator_block().replace("queueSize", "queueSise");
        let err = CoordinatorConfig::parse(Path::new("coord.yml"), &text)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("coord.yml") && err.contains("queueSise"),
            "{err}"
        );
    }

    #[test]
    fn shipped_config_loads() {
        let path = std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../config/m3coordinator.yml"
        ));
        let text = std::fs::read_to_string(&path).unwrap();
        let config = CoordinatorConfig::parse(&path, &text).unwrap();
        assert_eq!(config.listen_address, "0.0.0.0:7201");
        let etcd = config.etcd.as_ref().unwrap();
        assert_eq!(
            etcd.etcd_clusters[0].endpoints,
            vec!["127.0.0.1:2379".to_string()]
        );
        assert_eq!(config.namespaces.len(), 3);
        assert_eq!(
            config.ingest.unwrap().m3msg.server.listen_address,
            "0.0.0.0:7507"
        );
        assert_eq!(config.write_buffers.buffer_past, Duration::from_secs(60));
    }

    #[test]
    fn a_bad_rule_fails_startup_naming_the_rule_key_and_file() {
        let text = r#"
clusters:
  - namespaces:
      - namespace: agg
        type: aggregated
        resolution: 10s
        retention: 2d
downsample:
  rules:
    rollupRules:
      - name: by route
        filter: "__name__:http_requests_total"
        transforms:
          - rollup: {groupBy: [route], aggregations: [Sum]}
        storagePolicies: [{resolution: 1m, retention: 40d}]
"#;
        let err = CoordinatorConfig::parse(Path::new("c.yml"), text)
            .unwrap_err()
            .to_string();
        for part in [
            "c.yml",
            "\"by route\"",
            "downsample.rules.rollupRules[0].transforms[0].rollup.metricName",
            "needs a metricName",
            "rollupRules[0].storagePolicies[0]",
            "no aggregated namespace",
        ] {
            assert!(err.contains(part), "{part} not in {err}");
        }
    }

    /// Every problem is reported at once: namespaces, rules and the client, each by key.
    #[test]
    fn every_problem_is_named_at_once() {
        let text = seed_coordinator_block().replace("queueSize: 10000", "queueSize: 0")
            + "clusters:\n  - namespaces:\n      - namespace: a\n        type: aggregated\n        retention: 0s\n        resolution: 10s\n      - namespace: b\n        type: aggregated\n        retention: 2d\n";
        let err = CoordinatorConfig::parse(Path::new("c.yml"), &text)
            .unwrap_err()
            .to_string();
        for part in [
            "c.yml: 3 problems",
            "`clusters[0].namespaces[0].retention`: must be positive",
            "`clusters[0].namespaces[1].resolution`: an aggregated namespace needs a resolution",
            "`downsample.remoteAggregator.client.queueSize`: must be positive",
        ] {
            assert!(err.contains(part), "{part} not in {err}");
        }
        // As m3coordinator loads it, the missing cluster KV is one more.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yml");
        std::fs::write(&file, &text).unwrap();
        let err = CoordinatorConfig::load(&file).unwrap_err().to_string();
        assert!(
            err.contains("4 problems") && err.contains("`clusterManagement`: missing"),
            "{err}"
        );
    }

    #[test]
    fn namespaces_are_validated() {
        let ok = "clusters:\n  - namespaces:\n      - namespace: default\n        type: unaggregated\n        retention: 48h\n      - namespace: agg\n        type: aggregated\n        retention: 2d\n        resolution: 10s\n";
        let config = CoordinatorConfig::parse(Path::new("c.yml"), ok).unwrap();
        let ns = &config.namespaces;
        assert_eq!(ns[1].policy.unwrap().to_string(), "10s:2d");
        assert!(ns[1].downsample_all);

        let missing_resolution = ok.replace("        resolution: 10s\n", "");
        let err = CoordinatorConfig::parse(Path::new("c.yml"), &missing_resolution)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("clusters[0].namespaces[1].resolution"),
            "{err}"
        );

        let bad_duration = ok.replace("retention: 2d", "retention: 2 days");
        let err = CoordinatorConfig::parse(Path::new("c.yml"), &bad_duration)
            .unwrap_err()
            .to_string();
        assert!(err.contains("2 days"), "{err}");

        assert_eq!(ns[0].buffer_past, None, "the store's default");
        let buffered = ok.replace(
            "retention: 48h\n",
            "retention: 48h\n        bufferPast: 10m\n",
        );
        let config = CoordinatorConfig::parse(Path::new("c.yml"), &buffered).unwrap();
        assert_eq!(
            config.namespaces[0].buffer_past,
            Some(Duration::from_secs(600))
        );
        let zero = ok.replace(
            "retention: 48h\n",
            "retention: 48h\n        bufferPast: 0s\n",
        );
        let err = CoordinatorConfig::parse(Path::new("c.yml"), &zero)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`clusters[0].namespaces[0].bufferPast`: must be positive"),
            "{err}"
        );

        assert_eq!(ns[0].buffer_future, None, "the store's default");
        let ahead = ok.replace(
            "retention: 48h\n",
            "retention: 48h\n        bufferFuture: 2m\n",
        );
        let config = CoordinatorConfig::parse(Path::new("c.yml"), &ahead).unwrap();
        assert_eq!(
            config.namespaces[0].buffer_future,
            Some(Duration::from_secs(120))
        );
        let zero = ok.replace(
            "retention: 48h\n",
            "retention: 48h\n        bufferFuture: 0s\n",
        );
        let err = CoordinatorConfig::parse(Path::new("c.yml"), &zero)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`clusters[0].namespaces[0].bufferFuture`: must be positive"),
            "{err}"
        );
    }

    /// Endpoints' storage policies are aggregation targets: a policy no namespace has gets its
    /// own automatic mapping rule, and rules may name it.
    #[test]
    fn endpoint_policies_are_aggregation_targets() {
        let text = r#"
clusters:
  - namespaces:
      - namespace: default
        type: unaggregated
        retention: 48h
      - namespace: agg
        type: aggregated
        resolution: 10s
        retention: 2d
        downsample: {all: false}
prometheusRemoteBackend:
  endpoints:
    - name: same
      address: http://127.0.0.1:8428/api/v1/write
      storagePolicy: {resolution: 10s, retention: 2d}
    - name: own
      address: http://127.0.0.1:9090/api/v1/write
      storagePolicy: {resolution: 5m, retention: 90d, downsample: {all: false}}
downsample:
  rules:
    mappingRules:
      - name: to the endpoint
        filter: "__name__:up"
        aggregations: [Max]
        storagePolicies: [{resolution: 5m, retention: 90d}]
"#;
        let config = CoordinatorConfig::parse(Path::new("c.yml"), text).unwrap();
        assert_eq!(config.namespaces.len(), 2);
        let targets: Vec<(String, String, bool)> = config
            .aggregation_targets
            .iter()
            .filter_map(|t| Some((t.name.clone(), t.policy?.to_string(), t.downsample_all)))
            .collect();
        assert_eq!(
            targets,
            vec![
                ("agg".to_string(), "10s:2d".to_string(), true),
                (
                    "prometheusRemoteBackend:own".to_string(),
                    "5m:90d".to_string(),
                    false
                ),
            ]
        );
        assert_eq!(config.remote_out.unwrap().endpoints.len(), 2);

        // prom-remote: the endpoints are the storage, so clusters must go.
        let err =
            CoordinatorConfig::parse(Path::new("c.yml"), &format!("backend: prom-remote\n{text}"))
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("`clusters`") && err.contains("not used with backend prom-remote"),
            "{err}"
        );
        let endpoints_only = text[text.find("prometheusRemoteBackend").unwrap()..].to_string();
        let config = CoordinatorConfig::parse(
            Path::new("c.yml"),
            &format!("backend: prom-remote\n{endpoints_only}"),
        )
        .unwrap();
        assert_eq!(config.backend, Backend::PromRemote);
        assert!(config.namespaces.is_empty());
        let policies: Vec<String> = config
            .aggregation_targets
            .iter()
            .filter_map(|t| Some(t.policy?.to_string()))
            .collect();
        assert_eq!(policies, vec!["10s:2d".to_string(), "5m:90d".to_string()]);
        let err = CoordinatorConfig::parse(Path::new("c.yml"), "backend: prom-remote\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`prometheusRemoteBackend`: missing"), "{err}");
        let err = CoordinatorConfig::parse(Path::new("c.yml"), &format!("backend: grpc\n{text}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"grpc\" is not a backend here"), "{err}");
        let fine = CoordinatorConfig::parse(Path::new("c.yml"), &format!("backend: m3db\n{text}"));
        assert!(fine.is_ok());
    }
}
