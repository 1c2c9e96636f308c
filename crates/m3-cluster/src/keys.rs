//! Every KV key the cluster uses, built in one place and laid out as M3 lays them out in etcd.
//!
//! M3 addresses etcd through "stores" scoped by a namespace and an environment: the raw etcd key
//! is `<namespace>/<environment>/<key>` (the environment part is left out when empty). Using
//! the same layout means an etcd written by M3 can be read by this project and the other way
//! round. The zone of a [`ServiceId`] does not appear in keys: in M3 it selects which etcd
//! cluster to talk to.
//!
//! | key (etcd, raw) | value | written by | read by |
//! |---|---|---|---|
//! | `/placement/<env>/m3aggregator` | `placementpb.Placement` | coordinator admin API | aggregators, coordinator's aggregator client, m3msg producers |
//! | `_sd.placement/<env>/<service>` (e.g. `m3coordinator`, `m3db`) | `placementpb.Placement` | coordinator admin API | m3msg producers (consumer placements) |
//! | `/topic/<env>/<topic name>` (e.g. `aggregated_metrics`) | `topicpb.Topic` | coordinator topic API | m3msg producers |
//! | `_ld/<env>/<service>/shardset/<id>/lock` | election record (see [`crate::election`]) | aggregators of shard set `<id>` | the same aggregators, `/status` |
//! | `_kv/<env>/shardset/<id>/flush` | `ShardSetFlushTimes` | the shard set's leader after each flush | the shard set's followers, a new leader |
//!
//! Sources (M3, read for the layout only): placements use namespace `_sd.placement` unless
//! overridden, and the coordinator overrides it to `/placement` for `m3aggregator`; the key in
//! the namespace is `<env>/<service>`. The topic service uses namespace `/topic` with the topic
//! name as key. Elections use the prefix `_ld/<env>/<service>/` followed by the election ID,
//! which for aggregators is `shardset/<id>/lock`. Flush times use the key `shardset/<id>/flush`
//! in the default KV namespace `_kv`.
//!
//! One difference from M3: M3's etcd elections create one key per candidate under the election
//! prefix (etcd's concurrency package); this project keeps one record at the election key, so
//! the election works on any [`crate::kv::KvStore`]. The key is the same, the value is not, so a
//! mixed M3/m3-rs shard set does not share elections.

/// The service name of aggregators.
pub const M3AGGREGATOR: &str = "m3aggregator";
/// The service name of coordinators.
pub const M3COORDINATOR: &str = "m3coordinator";
/// M3's default placement namespace for services.
pub const DEFAULT_PLACEMENT_NAMESPACE: &str = "_sd.placement";
/// The placement namespace the coordinator uses for `m3aggregator`.
pub const AGGREGATOR_PLACEMENT_NAMESPACE: &str = "/placement";
/// The namespace of m3msg topics.
pub const TOPIC_NAMESPACE: &str = "/topic";
/// M3's default KV namespace (flush times and other plain keys).
pub const KV_NAMESPACE: &str = "_kv";
/// The prefix of leader-election keys.
pub const ELECTION_PREFIX: &str = "_ld";
/// The default environment (`Cluster-Environment-Name` header default).
pub const DEFAULT_ENVIRONMENT: &str = "default_env";
/// The default zone (`Cluster-Zone-Name` header default).
pub const DEFAULT_ZONE: &str = "embedded";

/// Names a service in the cluster: M3's `ServiceID`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId {
    /// Service name, e.g. `m3aggregator`.
    pub name: String,
    /// Environment, e.g. `default_env`.
    pub environment: String,
    /// Zone, e.g. `embedded`.
    pub zone: String,
}

impl ServiceId {
    /// A service ID from its parts.
    pub fn new(
        name: impl Into<String>,
        environment: impl Into<String>,
        zone: impl Into<String>,
    ) -> Self {
        ServiceId {
            name: name.into(),
            environment: environment.into(),
            zone: zone.into(),
        }
    }
}

/// The raw key of `key` in the store scoped by `namespace` and `environment`:
/// `<namespace>/<environment>/<key>`, or `<namespace>/<key>` when the environment is empty.
pub fn kv_key(namespace: &str, environment: &str, key: &str) -> String {
    if environment.is_empty() {
        format!("{namespace}/{key}")
    } else {
        format!("{namespace}/{environment}/{key}")
    }
}

/// The placement namespace M3's coordinator uses for a service: `/placement` for
/// `m3aggregator`, `_sd.placement` for every other service.
pub fn placement_namespace(service_name: &str) -> &'static str {
    if service_name == M3AGGREGATOR {
        AGGREGATOR_PLACEMENT_NAMESPACE
    } else {
        DEFAULT_PLACEMENT_NAMESPACE
    }
}

/// The placement key of a service in its default namespace (see [`placement_namespace`]), e.g.
/// `/placement/default_env/m3aggregator`.
pub fn placement_key(service: &ServiceId) -> String {
    placement_key_in(placement_namespace(&service.name), service)
}

/// The placement key of a service in an explicit namespace (M3's placement namespace override).
pub fn placement_key_in(namespace: &str, service: &ServiceId) -> String {
    kv_key(namespace, &service.environment, &service.name)
}

/// The key of an m3msg topic, e.g. `/topic/default_env/aggregated_metrics`.
pub fn topic_key(environment: &str, topic_name: &str) -> String {
    kv_key(TOPIC_NAMESPACE, environment, topic_name)
}

/// The election key of a shard set, e.g. `_ld/default_env/m3aggregator/shardset/1/lock`.
pub fn election_key(environment: &str, service_name: &str, shard_set_id: u32) -> String {
    kv_key(
        ELECTION_PREFIX,
        environment,
        &format!("{service_name}/shardset/{shard_set_id}/lock"),
    )
}

/// Where the candidates of an election stand: each under `<prefix><lease ID in hex>`, as in
/// etcd's election recipe (see `election`).
pub fn election_queue_prefix(election_key: &str) -> String {
    format!("{election_key}/")
}

/// The flush-times key of a shard set in the default KV namespace, e.g.
/// `_kv/default_env/shardset/1/flush`.
pub fn flush_times_key(environment: &str, shard_set_id: u32) -> String {
    flush_times_key_in(KV_NAMESPACE, environment, shard_set_id)
}

/// The flush-times key of a shard set in an explicit namespace (M3's `flushTimesManager.kvConfig`).
pub fn flush_times_key_in(namespace: &str, environment: &str, shard_set_id: u32) -> String {
    kv_key(
        namespace,
        environment,
        &format!("shardset/{shard_set_id}/flush"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_m3_layout() {
        let agg = ServiceId::new(M3AGGREGATOR, DEFAULT_ENVIRONMENT, DEFAULT_ZONE);
        assert_eq!(placement_key(&agg), "/placement/default_env/m3aggregator");
        let coord = ServiceId::new(M3COORDINATOR, "prod", DEFAULT_ZONE);
        assert_eq!(placement_key(&coord), "_sd.placement/prod/m3coordinator");
        assert_eq!(
            placement_key_in("/placement", &coord),
            "/placement/prod/m3coordinator"
        );
        assert_eq!(
            topic_key(DEFAULT_ENVIRONMENT, "aggregated_metrics"),
            "/topic/default_env/aggregated_metrics"
        );
        assert_eq!(
            election_key("default_env", M3AGGREGATOR, 3),
            "_ld/default_env/m3aggregator/shardset/3/lock"
        );
        assert_eq!(
            flush_times_key("default_env", 3),
            "_kv/default_env/shardset/3/flush"
        );
        assert_eq!(kv_key("_kv", "", "x"), "_kv/x");
    }
}
