//! `limits:` — what one client may make the coordinator hold, and for how long.
//!
//! Every bound a hostile or careless client could otherwise push without end is here, with
//! its default, so docs/limits.md can state the worst case per request, per connection and per
//! query from one place:
//!
//! ```yaml
//! limits:
//!   http:
//!     maxConnections: 4096        # beyond: 503 and closed
//!     readHeaderTimeout: 60s      # also the keep-alive idle timeout
//!   remoteWrite:
//!     maxConcurrentRequests: 16   # beyond: 429 before the body is read
//!     maxBodyBytes: 16777216      # compressed; beyond: 413
//!     maxDecompressedBytes: 33554432
//!     bodyTimeout: 30s
//!     maxSamplesPerRequest: 100000
//!     maxSeriesPerRequest: 100000
//!     maxLabelsPerRequest: 1000000
//!     labelLimit: 128             # labels per series (Prometheus's label_limit)
//!     labelNameLengthLimit: 1024  # Prometheus's label_name_length_limit
//!     labelValueLengthLimit: 16384
//!     seriesCacheBytes: 268435456 # IDs of series seen before; 0: none
//!   query:
//!     maxSamples: 50000000        # Prometheus's --query.max-samples
//!     timeout: 2m                 # --query.timeout
//!     maxConcurrency: 20          # --query.max-concurrency; more wait in line
//!   placement:
//!     maxShards: 16384
//!     maxInstances: 1024
//!     maxIdLength: 256            # instance IDs, hostnames, endpoints, zones, topic names
//! ```
//!
//! Prometheus itself sends at most 2000 samples per request by default (`max_samples_per_send`)
//! and vmagent 10000 rows, so the request bounds leave ample room for real senders.

use std::time::Duration;

use serde::Deserialize;

/// The whole `limits:` block.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LimitsConfig {
    /// The HTTP listener.
    #[serde(default)]
    pub http: HttpLimitsConfig,
    /// Prometheus remote write.
    #[serde(default)]
    pub remote_write: RemoteWriteLimits,
    /// The query API.
    #[serde(default)]
    pub query: QueryLimits,
    /// The placement and topic admin API.
    #[serde(default)]
    pub placement: PlacementLimits,
}

/// `limits.http:`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpLimitsConfig {
    /// Connections served at once; beyond, a connection gets 503 and is closed (default 4096;
    /// the process raises its soft file-descriptor limit to the hard limit at start).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A request's headers must arrive within this long; also the keep-alive idle timeout
    /// (default 60s).
    #[serde(default = "default_read_header_timeout", with = "m3_config::duration")]
    pub read_header_timeout: Duration,
}

impl Default for HttpLimitsConfig {
    fn default() -> Self {
        HttpLimitsConfig {
            max_connections: default_max_connections(),
            read_header_timeout: default_read_header_timeout(),
        }
    }
}

impl HttpLimitsConfig {
    /// The listener bounds for `m3_server::http::serve`.
    pub fn to_http_limits(&self) -> m3_server::http::HttpLimits {
        m3_server::http::HttpLimits {
            max_connections: self.max_connections,
            header_read_timeout: self.read_header_timeout,
            ..m3_server::http::HttpLimits::default()
        }
    }
}

/// `limits.remoteWrite:`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RemoteWriteLimits {
    /// Requests handled at once; beyond, 429 with `Retry-After` before the body is read
    /// (default 16).
    #[serde(default = "default_concurrent_writes")]
    pub max_concurrent_requests: usize,
    /// Largest (compressed) body; beyond, 413 (default 16 MiB).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Largest decompressed body; beyond, 413 (default 32 MiB, as Prometheus's receiver).
    #[serde(default = "default_max_decompressed")]
    pub max_decompressed_bytes: usize,
    /// The body must arrive within this long of the headers (default 30s).
    #[serde(default = "default_body_timeout", with = "m3_config::duration")]
    pub body_timeout: Duration,
    /// Samples per request; beyond, 413 before anything is stored (default 100000).
    #[serde(default = "default_max_samples")]
    pub max_samples_per_request: usize,
    /// Series per request; beyond, 413 (default 100000).
    #[serde(default = "default_max_samples")]
    pub max_series_per_request: usize,
    /// Labels of all series of a request together; beyond, 413 (default 1000000).
    #[serde(default = "default_max_labels")]
    pub max_labels_per_request: usize,
    /// Labels per series, `__name__` included; a series over it is refused (400), the others
    /// are kept (default 128; Prometheus's `label_limit`).
    #[serde(default = "default_label_limit")]
    pub label_limit: usize,
    /// Bytes per label name (default 1024; Prometheus's `label_name_length_limit`).
    #[serde(default = "default_label_name_length")]
    pub label_name_length_limit: usize,
    /// Bytes per label value (default 16384; Prometheus's `label_value_length_limit`).
    #[serde(default = "default_label_value_length")]
    pub label_value_length_limit: usize,
    /// Memory for the series routed before (a hash of their label bytes, their ID and its
    /// hash: about 220 B per series of ten labels), so that a series sent again is neither
    /// checked nor encoded again; when full it is emptied and refills (default 256 MiB; 0: no
    /// cache).
    #[serde(default = "default_series_cache_bytes")]
    pub series_cache_bytes: usize,
    /// Whether the series cache keeps each series' ID (default true). Without, an entry is 16
    /// bytes: a series sent again is still not checked nor hashed again, but its ID is encoded
    /// again. For a process that holds every series in memory anyway (`m3 local`).
    #[serde(default = "crate::config::default_true")]
    pub series_cache_ids: bool,
}

impl Default for RemoteWriteLimits {
    fn default() -> Self {
        RemoteWriteLimits {
            max_concurrent_requests: default_concurrent_writes(),
            max_body_bytes: default_max_body(),
            max_decompressed_bytes: default_max_decompressed(),
            body_timeout: default_body_timeout(),
            max_samples_per_request: default_max_samples(),
            max_series_per_request: default_max_samples(),
            max_labels_per_request: default_max_labels(),
            label_limit: default_label_limit(),
            label_name_length_limit: default_label_name_length(),
            label_value_length_limit: default_label_value_length(),
            series_cache_bytes: default_series_cache_bytes(),
            series_cache_ids: crate::config::default_true(),
        }
    }
}

/// `limits.query:`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct QueryLimits {
    /// Samples a query may load; beyond, 422 `execution` with Prometheus's message (default
    /// 50000000, Prometheus's `--query.max-samples`).
    #[serde(default = "default_query_samples")]
    pub max_samples: usize,
    /// Series a query may read, all its selectors together; beyond, 422 `execution`
    /// (default 1000000).
    #[serde(default = "default_query_series")]
    pub max_series: usize,
    /// A query running longer is stopped: 503 `timeout` (default 2m, `--query.timeout`).
    #[serde(default = "default_query_timeout", with = "m3_config::duration")]
    pub timeout: Duration,
    /// Queries evaluated at once; more wait in line, within their timeout (default 20,
    /// `--query.max-concurrency`).
    #[serde(default = "default_query_concurrency")]
    pub max_concurrency: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            max_samples: default_query_samples(),
            max_series: default_query_series(),
            timeout: default_query_timeout(),
            max_concurrency: default_query_concurrency(),
        }
    }
}

/// `limits.placement:`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PlacementLimits {
    /// Shards of a placement or topic (default 16384).
    #[serde(default = "default_max_shards")]
    pub max_shards: u32,
    /// Instances of a placement (default 1024).
    #[serde(default = "default_max_instances")]
    pub max_instances: usize,
    /// Bytes of an instance ID, hostname, endpoint, zone, isolation group, service or topic
    /// name (default 256).
    #[serde(default = "default_max_id_length")]
    pub max_id_length: usize,
}

impl Default for PlacementLimits {
    fn default() -> Self {
        PlacementLimits {
            max_shards: default_max_shards(),
            max_instances: default_max_instances(),
            max_id_length: default_max_id_length(),
        }
    }
}

fn default_max_connections() -> usize {
    4096
}
fn default_read_header_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_concurrent_writes() -> usize {
    16
}
fn default_max_body() -> usize {
    16 * 1024 * 1024
}
fn default_max_decompressed() -> usize {
    32 * 1024 * 1024
}
fn default_body_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_samples() -> usize {
    100_000
}
fn default_max_labels() -> usize {
    1_000_000
}
fn default_label_limit() -> usize {
    128
}
fn default_label_name_length() -> usize {
    1024
}
fn default_label_value_length() -> usize {
    16 * 1024
}
fn default_series_cache_bytes() -> usize {
    crate::series_cache::DEFAULT_MAX_BYTES
}
fn default_query_samples() -> usize {
    50_000_000
}
fn default_query_series() -> usize {
    1_000_000
}
fn default_query_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_query_concurrency() -> usize {
    20
}
fn default_max_shards() -> u32 {
    16_384
}
fn default_max_instances() -> usize {
    1024
}
fn default_max_id_length() -> usize {
    256
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_block_parses_to_the_defaults() {
        let doc = include_str!("limits.rs");
        let yaml: String = doc
            .lines()
            .skip_while(|l| !l.starts_with("//! limits:"))
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!").strip_prefix(' ').unwrap_or(""))
            .map(|l| l.split('#').next().unwrap_or("").trim_end())
            .collect::<Vec<_>>()
            .join("\n");
        #[derive(Deserialize)]
        struct Wrapper {
            limits: LimitsConfig,
        }
        let parsed: Wrapper = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(parsed.limits, LimitsConfig::default(), "{yaml}");
    }
}
