//! The etcd [`KvStore`]: how a real cluster shares placements, topics, elections and flush times.
//!
//! # Configuration
//!
//! [`EtcdConfig`] is M3's `kvClient.etcd` block (the same shape as `clusterManagement.etcd`),
//! key for key, so an M3 config file parses unchanged:
//!
//! ```
//! # use m3_cluster::kv::etcd::EtcdConfig;
//! let yaml = r#"
//! env: default_env
//! zone: embedded
//! service: m3aggregator
//! cacheDir: /var/lib/m3kv
//! etcdClusters:
//!   - zone: embedded
//!     endpoints:
//!       - 127.0.0.1:2379
//!     dialTimeout: 5s
//! "#;
//! let config: EtcdConfig = serde_saphyr::from_str(yaml).unwrap();
//! assert_eq!(config.endpoints().unwrap(), ["127.0.0.1:2379"]);
//! ```
//!
//! Every M3 key is accepted; those that make sense for this client are used, the rest are read
//! and ignored so that existing files keep working:
//!
//! | key | used? |
//! |---|---|
//! | `zone`, `etcdClusters[].zone` | picks the cluster whose zone equals `zone`, else the first one |
//! | `etcdClusters[].endpoints` | yes, `host:port` (or `http://host:port`) |
//! | `etcdClusters[].dialTimeout` | yes: connect timeout and the startup reachability check (default 5s) |
//! | `etcdClusters[].keepAlive` | yes: HTTP/2 keep-alive `period` and `timeout` (default on, 20s / 10s) |
//! | `requestTimeout` | yes: bound on every get, set, delete and transaction (default 10s) |
//! | `watchChanInitTimeout` | yes: bound on opening a watch (default `requestTimeout`) |
//! | `etcdClusters[].tls` | refused with an error when set: TLS is not supported yet |
//! | `env`, `service`, `cacheDir`, `m3sd`, `watchWithRevision`, `newDirectoryMode`, `retry`, `autoSyncInterval`, `watchChanCheckInterval`, `watchChanResetInterval`, `enableFastGets` | accepted, ignored |
//!
//! `env` and the namespaces do not prefix keys here: callers pass full keys built by
//! [`crate::keys`] (M3's `<namespace>/<env>/<key>`), and this backend uses them unchanged, so an
//! etcd written by M3 reads the same.
//!
//! # Operations
//!
//! | trait method | etcd request |
//! |---|---|
//! | `get` | `Range` on the key; the version is etcd's per-key `version` |
//! | `get_version` | `Range` at the revision before each change, back to the version asked for (fails once compacted) |
//! | `set` | `Txn{ success: [Put, Range] }` (the range reads back the new version) |
//! | `set_if_not_exists` | `Txn{ if version(key) == 0: [Put, Range] }` |
//! | `check_and_set` | `Txn{ if version(key) == expected: [Put, Range] else: [Range] }` |
//! | `check_and_set_guarded` | as `check_and_set`, also `if create_revision(guard) == its revision`, reading the guard on failure |
//! | `delete` | `DeleteRange` with `prev_kv` |
//! | `watch` | `Range` for the current value, then `Watch` from the next revision |
//! | `grant_lease` | `LeaseGrant` |
//! | `keep_lease_alive` | one request and its answer on a `LeaseKeepAlive` stream |
//! | `revoke_lease` | `LeaseRevoke` |
//! | `create_with_lease` | `Txn{ if create_revision(key) == 0: [Put with lease] }` |
//! | `list_by_creation` | `Range` over the prefix, sorted by create revision |
//!
//! Every request is bounded by `requestTimeout`. A request that fails or times out returns
//! [`KvError::Backend`] naming the endpoints; the client itself stays usable and reconnects on
//! later requests, so callers retry (etcd restarted, network blip) and succeed once etcd answers.
//!
//! # Watches
//!
//! A watch is a background task per [`KvStore::watch`] call, feeding a `tokio::sync::watch`
//! channel. It survives etcd going away:
//!
//! ```text
//!  get (rev R) ──▶ watch from R+1 ──events──▶ ... ✕ stream drops (etcd restarted, reset)
//!        ▲                                         │ warn, back off 100ms → 200ms → … → 5s
//!        └──────────── get again (rev R') ◀────────┘ publish it if it changed, watch from R'+1
//! ```
//!
//! Reading the key again before resuming covers everything that can happen while the stream was
//! down: writes missed meanwhile (the get returns the newest value), a compacted history (a
//! watch from a compacted revision is refused; the task reads again) and an etcd whose data was
//! wiped (revisions went backwards). With latest-value semantics nothing is lost by collapsing
//! the missed writes into the newest one. The task publishes only real changes, so receivers
//! are not woken by a resumption that found nothing new, and it ends once every receiver is
//! dropped.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, KeyValue,
    PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchOptions,
    WatchStream,
};
use serde::Deserialize;
use tokio::sync::watch;

use super::{
    BoxFuture, CreatedKey, Guard, KvError, KvStore, KvWatch, LeaseId, Versioned, lease_ttl_seconds,
};

/// Dial timeout when `etcdClusters[].dialTimeout` is not set.
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Request timeout when `requestTimeout` is not set (M3's default).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 keep-alive period when `keepAlive.period` is not set (M3's default).
pub const DEFAULT_KEEP_ALIVE_PERIOD: Duration = Duration::from_secs(20);
/// HTTP/2 keep-alive timeout when `keepAlive.timeout` is not set (M3's default).
pub const DEFAULT_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// First pause before a dropped watch is resumed; doubled on each failure up to
/// [`WATCH_MAX_BACKOFF`].
const WATCH_MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between attempts to resume a dropped watch.
const WATCH_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// M3's `kvClient.etcd` (and `clusterManagement.etcd`) config block. See the
/// [module docs](self) for which keys are used.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EtcdConfig {
    /// The zone of this process; selects the entry of `etcdClusters` with the same zone.
    #[serde(default)]
    pub zone: String,
    /// The environment (`default_env` in M3's examples). Keys carry it already.
    #[serde(default)]
    pub env: String,
    /// The service name, e.g. `m3aggregator`.
    pub service: String,
    /// M3's local cache of KV values. Accepted, not used.
    #[serde(default)]
    pub cache_dir: Option<String>,
    /// The etcd clusters, one per zone.
    #[serde(default)]
    pub etcd_clusters: Vec<EtcdClusterConfig>,
    /// M3's service-discovery client settings. Accepted, not used.
    #[serde(default)]
    pub m3sd: Option<M3sdConfig>,
    /// M3's revision to start watches from. Accepted, not used.
    #[serde(default)]
    pub watch_with_revision: Option<i64>,
    /// File mode for directories M3 creates (the cache dir). Accepted, not used.
    #[serde(default)]
    pub new_directory_mode: Option<u32>,
    /// M3's retry settings for KV requests (its shared `retry:` block). Accepted, not used:
    /// callers retry.
    #[serde(default)]
    pub retry: Option<m3_config::RetryConfig>,
    /// Bound on each request (default [`DEFAULT_REQUEST_TIMEOUT`]).
    #[serde(default, with = "m3_config::option_duration")]
    pub request_timeout: Option<Duration>,
    /// Bound on opening a watch (default: the request timeout).
    #[serde(default, with = "m3_config::option_duration")]
    pub watch_chan_init_timeout: Option<Duration>,
    /// M3's watch health-check interval. Accepted, not used (HTTP/2 keep-alive detects dead
    /// connections).
    #[serde(default, with = "m3_config::option_duration")]
    pub watch_chan_check_interval: Option<Duration>,
    /// M3's watch reset interval. Accepted, not used.
    #[serde(default, with = "m3_config::option_duration")]
    pub watch_chan_reset_interval: Option<Duration>,
    /// M3's serializable-read option. Accepted, not used (reads are linearizable).
    #[serde(default)]
    pub enable_fast_gets: Option<bool>,
}

/// One entry of `etcdClusters`: the etcd cluster serving a zone.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EtcdClusterConfig {
    /// The zone this cluster serves.
    #[serde(default)]
    pub zone: String,
    /// Client endpoints, `host:port` or `http://host:port`.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// HTTP/2 keep-alive.
    #[serde(default)]
    pub keep_alive: Option<KeepAliveConfig>,
    /// Client TLS. Not supported yet: setting a path is an error at connect time.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// M3's member-list sync interval. Accepted, not used.
    #[serde(default, with = "m3_config::option_duration")]
    pub auto_sync_interval: Option<Duration>,
    /// Connect timeout, also the bound on the startup check (default [`DEFAULT_DIAL_TIMEOUT`]).
    #[serde(default, with = "m3_config::option_duration")]
    pub dial_timeout: Option<Duration>,
}

/// `etcdClusters[].keepAlive`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeepAliveConfig {
    /// Whether to send keep-alive pings (default true).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Ping period (default [`DEFAULT_KEEP_ALIVE_PERIOD`]).
    #[serde(default, with = "m3_config::option_duration")]
    pub period: Option<Duration>,
    /// M3's random extra period. Accepted, not used.
    #[serde(default, with = "m3_config::option_duration")]
    pub jitter: Option<Duration>,
    /// How long to wait for a ping's answer before the connection counts as dead (default
    /// [`DEFAULT_KEEP_ALIVE_TIMEOUT`]).
    #[serde(default, with = "m3_config::option_duration")]
    pub timeout: Option<Duration>,
}

/// `etcdClusters[].tls`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsConfig {
    /// Client certificate.
    #[serde(default)]
    pub crt_path: Option<String>,
    /// CA certificate.
    #[serde(default)]
    pub ca_crt_path: Option<String>,
    /// Client key.
    #[serde(default)]
    pub key_path: Option<String>,
}

impl TlsConfig {
    fn is_set(&self) -> bool {
        [&self.crt_path, &self.ca_crt_path, &self.key_path]
            .iter()
            .any(|p| p.as_deref().is_some_and(|p| !p.is_empty()))
    }
}

/// `m3sd`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct M3sdConfig {
    /// How long M3 waits for the first service-discovery answer.
    #[serde(default, with = "m3_config::option_duration")]
    pub init_timeout: Option<Duration>,
}

impl EtcdConfig {
    /// The cluster this process talks to: the one whose zone equals `zone`, else the first.
    /// `None` when `etcdClusters` is empty.
    pub fn cluster(&self) -> Option<&EtcdClusterConfig> {
        self.etcd_clusters
            .iter()
            .find(|c| c.zone == self.zone)
            .or_else(|| self.etcd_clusters.first())
    }

    /// The endpoints of [`EtcdConfig::cluster`].
    ///
    /// # Errors
    /// [`KvError::Backend`] when there is no cluster or it lists no endpoint.
    pub fn endpoints(&self) -> Result<&[String], KvError> {
        let cluster = self.cluster().ok_or_else(|| {
            KvError::backend("kvClient.etcd.etcdClusters is empty: list at least one etcd cluster")
        })?;
        if cluster.endpoints.is_empty() {
            return Err(KvError::backend(format!(
                "kvClient.etcd.etcdClusters (zone {:?}) has no endpoints",
                cluster.zone
            )));
        }
        Ok(&cluster.endpoints)
    }

    /// The request timeout in effect.
    pub fn effective_request_timeout(&self) -> Duration {
        self.request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT)
    }

    /// The dial timeout in effect.
    pub fn effective_dial_timeout(&self) -> Duration {
        self.cluster()
            .and_then(|c| c.dial_timeout)
            .unwrap_or(DEFAULT_DIAL_TIMEOUT)
    }
}

/// A [`KvStore`] backed by etcd v3. Cheap to clone (clones share the connection).
#[derive(Clone)]
pub struct EtcdKv {
    client: Client,
    /// `a:1, b:2`, for error messages.
    endpoints: String,
    request_timeout: Duration,
    watch_init_timeout: Duration,
}

impl fmt::Debug for EtcdKv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdKv")
            .field("endpoints", &self.endpoints)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl EtcdKv {
    /// Connects to the etcd cluster selected by `config` and checks that it answers within the
    /// dial timeout, so a process started against an unreachable etcd fails at once with a
    /// clear message instead of failing its first real request later.
    ///
    /// # Errors
    /// [`KvError::Backend`] when the config lists no endpoint, asks for TLS, or when etcd does not
    /// answer in time: `cannot reach etcd at 127.0.0.1:2379 within 5s: <cause>`.
    pub async fn connect(config: &EtcdConfig) -> Result<EtcdKv, KvError> {
        let endpoints = config.endpoints()?.to_vec();
        let joined = endpoints.join(", ");
        let cluster = config.cluster().cloned().unwrap_or_default();
        if cluster.tls.as_ref().is_some_and(TlsConfig::is_set) {
            return Err(KvError::backend(format!(
                "kvClient.etcd.etcdClusters.tls is set for etcd at {joined}, but TLS to etcd is not \
                 supported yet: remove the tls block or use a plain-text endpoint"
            )));
        }
        let dial = config.effective_dial_timeout();
        let mut options = ConnectOptions::new().with_connect_timeout(dial);
        let keep_alive = cluster.keep_alive.unwrap_or_default();
        if keep_alive.enabled.unwrap_or(true) {
            options = options.with_keep_alive(
                keep_alive.period.unwrap_or(DEFAULT_KEEP_ALIVE_PERIOD),
                keep_alive.timeout.unwrap_or(DEFAULT_KEEP_ALIVE_TIMEOUT),
            );
        }
        let unreachable = |cause: &dyn fmt::Display| -> KvError {
            KvError::backend(format!(
                "cannot reach etcd at {joined} within {dial:?}: {cause}"
            ))
        };
        let mut client =
            match tokio::time::timeout(dial, Client::connect(&endpoints, Some(options))).await {
                Ok(Ok(client)) => client,
                Ok(Err(e)) => return Err(unreachable(&e)),
                Err(_) => return Err(unreachable(&"no connection")),
            };
        // The connection is lazy: ask etcd something to know that it is there.
        match tokio::time::timeout(dial, client.status()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(unreachable(&e)),
            Err(_) => return Err(unreachable(&"no answer")),
        }
        let request_timeout = config.effective_request_timeout();
        tracing::info!(endpoints = %joined, "Connected to etcd.");
        Ok(EtcdKv {
            client,
            endpoints: joined,
            request_timeout,
            watch_init_timeout: config.watch_chan_init_timeout.unwrap_or(request_timeout),
        })
    }

    /// The endpoints this client talks to, comma separated.
    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// Runs one request under the request timeout, turning failures into [`KvError::Backend`].
    async fn request<T>(
        &self,
        what: &str,
        key: &str,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, KvError> {
        self.request_classified(what, key, fut, |_| None).await
    }

    /// As [`EtcdKv::request`], with `classify` turning the etcd errors it knows into their
    /// typed [`KvError`] first.
    async fn request_classified<T>(
        &self,
        what: &str,
        key: &str,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
        classify: impl FnOnce(&etcd_client::Error) -> Option<KvError>,
    ) -> Result<T, KvError> {
        match tokio::time::timeout(self.request_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if let Some(typed) = classify(&e) => Err(typed),
            Ok(Err(e)) => Err(KvError::backend(format!(
                "etcd {what} of {key:?} at {} failed: {e}",
                self.endpoints
            ))),
            Err(_) => Err(KvError::backend(format!(
                "etcd {what} of {key:?} at {} timed out after {:?}",
                self.endpoints, self.request_timeout
            ))),
        }
    }

    /// Reads a key with the store revision it was read at.
    async fn get_at_revision(&self, key: &str) -> Result<(Option<Versioned>, i64), KvError> {
        let mut client = self.client.clone();
        let mut resp = self.request("get", key, client.get(key, None)).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let value = resp.take_kvs().into_iter().next().map(versioned);
        Ok((value, revision))
    }

    /// A transaction that writes `value` when `guard` holds and reads the key back either way.
    async fn guarded_put(
        &self,
        what: &str,
        key: &str,
        guard: Option<Compare>,
        value: Bytes,
    ) -> Result<(bool, i64), KvError> {
        let put_and_read = [TxnOp::put(key, value.to_vec(), None), TxnOp::get(key, None)];
        let txn = match guard {
            Some(guard) => Txn::new()
                .when([guard])
                .and_then(put_and_read)
                .or_else([TxnOp::get(key, None)]),
            None => Txn::new().and_then(put_and_read),
        };
        let mut client = self.client.clone();
        let resp = self.request(what, key, client.txn(txn)).await?;
        Ok((resp.succeeded(), version_read_back(&resp)))
    }
}

fn versioned(kv: KeyValue) -> Versioned {
    let version = kv.version();
    let (_, value) = kv.into_key_value();
    Versioned {
        value: Bytes::from(value),
        version,
    }
}

/// The version read by the `Range` of a [`EtcdKv::guarded_put`] transaction; 0 when absent.
fn version_read_back(resp: &TxnResponse) -> i64 {
    resp.op_responses()
        .iter()
        .rev()
        .find_map(|op| match op {
            TxnOpResponse::Get(get) => Some(get.kvs().first().map_or(0, KeyValue::version)),
            _ => None,
        })
        .unwrap_or(0)
}

/// gRPC status codes etcd answers with (`google.golang.org/grpc/codes`).
const GRPC_NOT_FOUND: i32 = 5;
const GRPC_OUT_OF_RANGE: i32 = 11;

/// etcd's own answer, when it answered with a gRPC status: its code and message (not a message
/// of ours, which holds keys and endpoints that could contain any text).
fn grpc_status(error: &etcd_client::Error) -> Option<(i32, &str)> {
    match error {
        etcd_client::Error::GRpcStatus(status) => Some((status.code() as i32, status.message())),
        _ => None,
    }
}

/// Whether etcd answered that a lease does not exist (`etcdserver: requested lease not found`;
/// the keep-alive stream reports it as a keep-alive error).
fn is_lease_not_found(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::LeaseKeepAliveError(message) => message.contains("lease not found"),
        other => grpc_status(other)
            .is_some_and(|(code, message)| code == GRPC_NOT_FOUND && message.contains("lease")),
    }
}

/// Whether etcd answered that the revision asked for is compacted away.
fn is_compacted(error: &etcd_client::Error) -> bool {
    grpc_status(error)
        .is_some_and(|(code, message)| code == GRPC_OUT_OF_RANGE && message.contains("compacted"))
}

/// How many earlier versions [`KvStore::get_version`] walks back at most (one request each).
const MAX_VERSION_WALK: i64 = 1_000;

impl KvStore for EtcdKv {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Versioned>, KvError>> {
        Box::pin(async move { Ok(self.get_at_revision(key).await?.0) })
    }

    fn get_version<'a>(
        &'a self,
        key: &'a str,
        version: i64,
    ) -> BoxFuture<'a, Result<Option<Bytes>, KvError>> {
        Box::pin(async move {
            // Walk back from the current value, one earlier revision per version, at most
            // MAX_VERSION_WALK versions: older ones read as absent.
            let mut client = self.client.clone();
            let mut options: Option<GetOptions> = None;
            let mut steps = 0;
            loop {
                let answer = self
                    .request_classified("get", key, client.get(key, options.take()), |e| {
                        // Older than the oldest revision etcd keeps: no such version any more.
                        is_compacted(e).then(|| KvError::Compacted {
                            key: key.to_owned(),
                        })
                    })
                    .await;
                let mut resp = match answer {
                    Ok(resp) => resp,
                    Err(KvError::Compacted { .. }) => return Ok(None),
                    Err(e) => return Err(e),
                };
                let Some(kv) = resp.take_kvs().into_iter().next() else {
                    return Ok(None);
                };
                if kv.version() == version {
                    return Ok(Some(Bytes::from(kv.into_key_value().1)));
                }
                steps += 1;
                if kv.version() < version || version < 1 || steps > MAX_VERSION_WALK {
                    return Ok(None);
                }
                options = Some(GetOptions::new().with_revision(kv.mod_revision() - 1));
            }
        })
    }

    fn set<'a>(&'a self, key: &'a str, value: Bytes) -> BoxFuture<'a, Result<i64, KvError>> {
        Box::pin(async move {
            let (_, version) = self.guarded_put("set", key, None, value).await?;
            Ok(version)
        })
    }

    fn set_if_not_exists<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
    ) -> BoxFuture<'a, Result<i64, KvError>> {
        Box::pin(async move {
            let guard = Compare::version(key, CompareOp::Equal, 0);
            match self
                .guarded_put("set_if_not_exists", key, Some(guard), value)
                .await?
            {
                (true, version) => Ok(version),
                (false, _) => Err(KvError::AlreadyExists {
                    key: key.to_owned(),
                }),
            }
        })
    }

    fn check_and_set<'a>(
        &'a self,
        key: &'a str,
        expected_version: i64,
        value: Bytes,
    ) -> BoxFuture<'a, Result<i64, KvError>> {
        Box::pin(async move {
            let guard = Compare::version(key, CompareOp::Equal, expected_version);
            match self
                .guarded_put("check_and_set", key, Some(guard), value)
                .await?
            {
                (true, version) => Ok(version),
                (false, actual) => Err(KvError::VersionMismatch {
                    key: key.to_owned(),
                    expected: expected_version,
                    actual,
                }),
            }
        })
    }

    fn check_and_set_guarded<'a>(
        &'a self,
        key: &'a str,
        expected_version: i64,
        value: Bytes,
        guard: &'a Guard,
    ) -> BoxFuture<'a, Result<i64, KvError>> {
        Box::pin(async move {
            let txn = Txn::new()
                .when([
                    Compare::version(key, CompareOp::Equal, expected_version),
                    Compare::create_revision(
                        guard.key.as_str(),
                        CompareOp::Equal,
                        guard.create_revision,
                    ),
                ])
                .and_then([TxnOp::put(key, value.to_vec(), None), TxnOp::get(key, None)])
                .or_else([TxnOp::get(key, None), TxnOp::get(guard.key.as_str(), None)]);
            let mut client = self.client.clone();
            let resp = self
                .request("check_and_set_guarded", key, client.txn(txn))
                .await?;
            // (version, create revision) of each key read back: 0 when absent.
            let ranges: Vec<(i64, i64)> = resp
                .op_responses()
                .iter()
                .filter_map(|op| match op {
                    TxnOpResponse::Get(get) => Some(
                        get.kvs()
                            .first()
                            .map_or((0, 0), |kv| (kv.version(), kv.create_revision())),
                    ),
                    _ => None,
                })
                .collect();
            match (resp.succeeded(), ranges.as_slice()) {
                (true, [(version, _)]) => Ok(*version),
                (false, [_, (_, created)]) if *created != guard.create_revision => {
                    Err(KvError::GuardMissing {
                        key: key.to_owned(),
                        guard: guard.key.clone(),
                    })
                }
                (false, [(actual, _), _]) => Err(KvError::VersionMismatch {
                    key: key.to_owned(),
                    expected: expected_version,
                    actual: *actual,
                }),
                _ => Err(KvError::backend(format!(
                    "etcd check_and_set_guarded of {key:?} at {} answered an unexpected transaction",
                    self.endpoints
                ))),
            }
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Versioned>, KvError>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            let options = DeleteOptions::new().with_prev_key();
            let mut resp = self
                .request("delete", key, client.delete(key, Some(options)))
                .await?;
            Ok(resp.take_prev_kvs().into_iter().next().map(versioned))
        })
    }

    fn grant_lease(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId, KvError>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            let granted = self
                .request(
                    "lease grant",
                    "",
                    client.lease_grant(lease_ttl_seconds(ttl), None),
                )
                .await?;
            Ok(granted.id())
        })
    }

    fn keep_lease_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), KvError>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            let key = format!("lease {lease:x}");
            let renewed = self
                .request_classified(
                    "keep-alive",
                    &key,
                    async {
                        let (mut keeper, mut answers) = client.lease_keep_alive(lease).await?;
                        keeper.keep_alive().await?;
                        answers.message().await
                    },
                    |e| is_lease_not_found(e).then_some(KvError::LeaseNotFound { lease }),
                )
                .await?;
            match renewed {
                // etcd answers a TTL of 0 for a lease that no longer exists.
                Some(answer) if answer.ttl() > 0 => Ok(()),
                Some(_) => Err(KvError::LeaseNotFound { lease }),
                None => Err(KvError::backend(format!(
                    "etcd keep-alive of lease {lease:x} at {} got no answer",
                    self.endpoints
                ))),
            }
        })
    }

    fn revoke_lease(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), KvError>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            let key = format!("lease {lease:x}");
            match self
                .request_classified("lease revoke", &key, client.lease_revoke(lease), |e| {
                    is_lease_not_found(e).then_some(KvError::LeaseNotFound { lease })
                })
                .await
            {
                Ok(_) | Err(KvError::LeaseNotFound { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    fn create_with_lease<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        lease: LeaseId,
    ) -> BoxFuture<'a, Result<bool, KvError>> {
        Box::pin(async move {
            let txn = Txn::new()
                .when([Compare::create_revision(key, CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key,
                    value.to_vec(),
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            let mut client = self.client.clone();
            let resp = self
                .request_classified("create", key, client.txn(txn), |e| {
                    is_lease_not_found(e).then_some(KvError::LeaseNotFound { lease })
                })
                .await?;
            Ok(resp.succeeded())
        })
    }

    fn list_by_creation<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<Vec<CreatedKey>, KvError>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            let options = GetOptions::new()
                .with_prefix()
                .with_sort(SortTarget::Create, SortOrder::Ascend);
            let mut resp = self
                .request("list", prefix, client.get(prefix, Some(options)))
                .await?;
            Ok(resp
                .take_kvs()
                .into_iter()
                .map(|kv| {
                    let (create_revision, lease) = (kv.create_revision(), kv.lease());
                    let (key, value) = kv.into_key_value();
                    CreatedKey {
                        key: String::from_utf8_lossy(&key).into_owned(),
                        value: Bytes::from(value),
                        create_revision,
                        lease,
                    }
                })
                .collect())
        })
    }

    fn watch<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<KvWatch, KvError>> {
        Box::pin(async move {
            let (current, revision) = self.get_at_revision(key).await?;
            let (tx, rx) = watch::channel(current);
            let task = WatchTask {
                kv: self.clone(),
                key: key.to_owned(),
                tx,
                revision,
                backoff: WATCH_MIN_BACKOFF,
            };
            tokio::spawn(task.run());
            Ok(rx)
        })
    }
}

/// Why a watch stream stopped.
enum StreamEnd {
    /// Every receiver is gone: the task ends.
    Unwatched,
    /// The stream failed or etcd cancelled the watch; read again and resume.
    Dropped(String),
}

/// The background task behind one [`KvStore::watch`] call (see the [module docs](self)).
struct WatchTask {
    kv: EtcdKv,
    key: String,
    tx: watch::Sender<Option<Versioned>>,
    /// The store revision up to which the published value is known to be current.
    revision: i64,
    backoff: Duration,
}

impl WatchTask {
    async fn run(mut self) {
        let mut resync = false;
        loop {
            if resync {
                let read = tokio::select! {
                    () = self.tx.closed() => return,
                    read = self.kv.get_at_revision(&self.key) => read,
                };
                match read {
                    Ok((value, revision)) => {
                        self.publish(value);
                        self.revision = revision;
                    }
                    Err(e) => {
                        if !self.pause(&format!("cannot read the key again: {e}")).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            resync = true;
            let mut stream = match self.open().await {
                Some(Ok(stream)) => stream,
                Some(Err(reason)) => {
                    if !self.pause(&reason).await {
                        return;
                    }
                    continue;
                }
                None => return,
            };
            match self.follow(&mut stream).await {
                StreamEnd::Unwatched => {
                    tracing::debug!(key = %self.key, "etcd watch ended: no receivers left.");
                    return;
                }
                StreamEnd::Dropped(reason) => {
                    if !self.pause(&reason).await {
                        return;
                    }
                }
            }
        }
    }

    /// Opens the etcd watch from the revision after the one already published. `None` when every
    /// receiver went away meanwhile.
    async fn open(&mut self) -> Option<Result<WatchStream, String>> {
        let mut client = self.kv.client.clone();
        let options = WatchOptions::new().with_start_revision(self.revision + 1);
        let timeout = self.kv.watch_init_timeout;
        let opened = tokio::select! {
            () = self.tx.closed() => return None,
            opened = tokio::time::timeout(timeout, client.watch(self.key.as_str(), Some(options))) => opened,
        };
        Some(match opened {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(format!("cannot open the watch: {e}")),
            Err(_) => Err(format!("cannot open the watch within {timeout:?}")),
        })
    }

    /// Applies the stream's events until it ends.
    async fn follow(&mut self, stream: &mut WatchStream) -> StreamEnd {
        loop {
            let message = tokio::select! {
                () = self.tx.closed() => return StreamEnd::Unwatched,
                message = stream.message() => message,
            };
            let resp = match message {
                Ok(Some(resp)) => resp,
                Ok(None) => return StreamEnd::Dropped("etcd closed the watch stream".into()),
                Err(e) => return StreamEnd::Dropped(format!("watch stream failed: {e}")),
            };
            if resp.compact_revision() > 0 {
                return StreamEnd::Dropped(format!(
                    "revision {} is compacted (oldest kept: {})",
                    self.revision + 1,
                    resp.compact_revision()
                ));
            }
            if resp.canceled() {
                return StreamEnd::Dropped(format!(
                    "etcd cancelled the watch: {}",
                    resp.cancel_reason()
                ));
            }
            if resp.created() && self.backoff > WATCH_MIN_BACKOFF {
                tracing::info!(key = %self.key, revision = self.revision, "etcd watch resumed.");
                self.backoff = WATCH_MIN_BACKOFF;
            }
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                if kv.key() != self.key.as_bytes() {
                    continue;
                }
                let value = match event.event_type() {
                    EventType::Put => Some(Versioned {
                        value: Bytes::copy_from_slice(kv.value()),
                        version: kv.version(),
                    }),
                    EventType::Delete => None,
                };
                self.revision = self.revision.max(kv.mod_revision());
                self.publish(value);
            }
        }
    }

    /// Sends `value` to the receivers unless it is what they hold already.
    fn publish(&self, value: Option<Versioned>) {
        self.tx.send_if_modified(|current| {
            if *current == value {
                false
            } else {
                *current = value;
                true
            }
        });
    }

    /// Logs why the watch is down and waits the current backoff (then doubles it). `false` when
    /// every receiver went away meanwhile.
    async fn pause(&mut self, reason: &str) -> bool {
        tracing::warn!(
            key = %self.key,
            endpoints = %self.kv.endpoints,
            revision = self.revision,
            retry_in = ?self.backoff,
            "etcd watch interrupted: {reason}; reading the key again and resuming."
        );
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(WATCH_MAX_BACKOFF);
        tokio::select! {
            () = self.tx.closed() => false,
            () = tokio::time::sleep(wait) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_m3_key() {
        let yaml = r#"
zone: embedded
env: default_env
service: m3aggregator
cacheDir: /var/lib/m3kv
etcdClusters:
  - zone: other
    endpoints: [other:2379]
  - zone: embedded
    endpoints:
      - m3db_seed:2379
      - http://m3db_seed2:2379
    keepAlive:
      enabled: true
      period: 20s
      jitter: 10s
      timeout: 10s
    tls:
      crtPath: ""
      caCrtPath: ""
      keyPath: ""
    autoSyncInterval: 1m
    dialTimeout: 2s
m3sd:
  initTimeout: 10s
watchWithRevision: 7
newDirectoryMode: 493
retry:
  initialBackoff: 100ms
  backoffFactor: 2.0
  maxBackoff: 5s
  maxRetries: 3
  forever: false
  jitter: true
requestTimeout: 3s
watchChanInitTimeout: 4s
watchChanCheckInterval: 5s
watchChanResetInterval: 6s
enableFastGets: true
"#;
        let config: EtcdConfig = serde_saphyr::from_str(yaml).expect("parses");
        assert_eq!(
            config.endpoints().unwrap(),
            ["m3db_seed:2379", "http://m3db_seed2:2379"]
        );
        assert_eq!(config.effective_dial_timeout(), Duration::from_secs(2));
        assert_eq!(config.effective_request_timeout(), Duration::from_secs(3));
        assert_eq!(config.watch_chan_init_timeout, Some(Duration::from_secs(4)));
        let cluster = config.cluster().unwrap();
        assert_eq!(cluster.auto_sync_interval, Some(Duration::from_secs(60)));
        assert!(!cluster.tls.as_ref().unwrap().is_set());
        assert_eq!(
            cluster.keep_alive.as_ref().unwrap().period,
            Some(Duration::from_secs(20))
        );
        assert_eq!(config.retry.as_ref().unwrap().max_retries, Some(3));
        assert_eq!(config.new_directory_mode, Some(493));
    }

    #[test]
    fn defaults_and_first_cluster_fallback() {
        let yaml = "service: m3coordinator\nzone: nowhere\netcdClusters:\n  - zone: embedded\n    endpoints: [a:2379]\n";
        let config: EtcdConfig = serde_saphyr::from_str(yaml).expect("parses");
        assert_eq!(config.endpoints().unwrap(), ["a:2379"]);
        assert_eq!(config.effective_dial_timeout(), DEFAULT_DIAL_TIMEOUT);
        assert_eq!(config.effective_request_timeout(), DEFAULT_REQUEST_TIMEOUT);
    }

    #[test]
    fn unknown_keys_and_missing_service_are_errors() {
        let unknown = "service: s\netcdClusters:\n  - endpoints: [a:1]\n    dailTimeout: 1s\n";
        let err = serde_saphyr::from_str::<EtcdConfig>(unknown).unwrap_err();
        assert!(err.to_string().contains("dailTimeout"), "{err}");
        let missing = "zone: embedded\n";
        let err = serde_saphyr::from_str::<EtcdConfig>(missing).unwrap_err();
        assert!(err.to_string().contains("service"), "{err}");
    }

    #[test]
    fn no_endpoints_is_a_clear_error() {
        let config = EtcdConfig {
            service: "s".into(),
            ..EtcdConfig::default()
        };
        let err = config.endpoints().unwrap_err();
        assert!(err.to_string().contains("etcdClusters is empty"), "{err}");
    }

    #[tokio::test]
    async fn tls_is_refused_with_a_clear_error() {
        let config = EtcdConfig {
            service: "s".into(),
            etcd_clusters: vec![EtcdClusterConfig {
                endpoints: vec!["127.0.0.1:1".into()],
                tls: Some(TlsConfig {
                    ca_crt_path: Some("/ca.crt".into()),
                    ..TlsConfig::default()
                }),
                ..EtcdClusterConfig::default()
            }],
            ..EtcdConfig::default()
        };
        let err = EtcdKv::connect(&config).await.unwrap_err();
        assert!(err.to_string().contains("TLS"), "{err}");
    }
}
