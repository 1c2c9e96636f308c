//! Cluster state for m3-rs: the KV store, placements, topics, leader election and the shard
//! function.
//!
//! Everything the processes of a cluster must agree on lives in a KV store (etcd, or memory in
//! `m3 local`) and is modelled here. The crate knows nothing about metrics.
//!
//! | module | what | used by |
//! |---|---|---|
//! | [`kv`] | the [`kv::KvStore`] trait, the in-memory and etcd backends, typed watches, the backend contract | everything below |
//! | [`keys`] | every KV key, laid out as M3 lays them out in etcd | stores, admin API |
//! | [`shard`] | `murmur3_32(id) % num_shards` | clients, aggregators, m3msg |
//! | [`placement`] | placements (mirrored, sharded, non-sharded), their algorithms and their store | admin API, clients, aggregators |
//! | [`topic`] | m3msg topics and their store | admin API, m3msg producers |
//! | [`election`] | leader election per shard set over any KV backend | aggregators |
//!
//! # Example
//!
//! Build an aggregator placement, store it, and look up who owns a metric's shard:
//!
//! ```
//! use std::sync::Arc;
//! use m3_cluster::{keys, placement, shard_for, Instance, MemoryKv, PlacementFormat, PlacementStore, ServiceId};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let instances = vec![
//!     Instance::new("agg-a:6000").with_isolation_group("zone-a"),
//!     Instance::new("agg-b:6000").with_isolation_group("zone-b"),
//! ];
//! // 64 shards, replication factor 2, shards cut over at t = 0.
//! let p = placement::build_mirrored(instances, 64, 2, 0)?;
//!
//! let kv = Arc::new(MemoryKv::new());
//! let key = keys::placement_key(&ServiceId::new("m3aggregator", "default_env", "embedded"));
//! assert_eq!(key, "/placement/default_env/m3aggregator");
//! let store = PlacementStore::new(kv, key, PlacementFormat::of_service("m3aggregator"));
//! store.init(&p).await?;
//!
//! let shard = shard_for(b"some-metric-id", p.num_shards);
//! let owners: Vec<&str> = p.instances_for_shard(shard).map(|i| i.id.as_str()).collect();
//! assert_eq!(owners, ["agg-a:6000", "agg-b:6000"]);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs, unreachable_pub)]

pub mod election;
pub mod keys;
pub mod kv;
pub mod placement;
pub mod shard;
pub mod topic;

pub use election::{ElectionError, ElectionState, LeaderElection};
pub use keys::ServiceId;
pub use kv::etcd::{EtcdConfig, EtcdKv};
pub use kv::memory::MemoryKv;
pub use kv::{CreatedKey, Guard, KvError, KvStore, KvWatch, LeaseId, Versioned};
pub use placement::{
    Instance, Placement, PlacementError, PlacementFormat, PlacementStore, Shard, ShardState,
};
pub use shard::{murmur3_32, shard_for};
pub use topic::{ConsumerService, ConsumptionType, Topic, TopicError, TopicStore};

#[cfg(test)]
mod auto_traits {
    //! Public types that cross tasks must stay `Send + Sync`.
    use super::*;

    fn send_sync<T: Send + Sync>() {}

    #[test]
    fn public_types_are_send_and_sync() {
        send_sync::<MemoryKv>();
        send_sync::<EtcdKv>();
        send_sync::<EtcdConfig>();
        send_sync::<std::sync::Arc<dyn KvStore>>();
        send_sync::<Placement>();
        send_sync::<PlacementStore>();
        send_sync::<TopicStore>();
        send_sync::<LeaderElection>();
        send_sync::<KvError>();
        send_sync::<PlacementError>();
        send_sync::<placement::store::PlacementStoreError>();
        send_sync::<TopicError>();
        send_sync::<ElectionError>();
    }
}
