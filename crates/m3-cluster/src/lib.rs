//! Cluster state for m3-rs: the KV store, placements, topics, leader election and the shard
//! function.
//!
//! Everything the processes of a cluster must agree on lives in a KV store (etcd, or memory in
//! `m3 local`) and is modelled here. The crate knows nothing about metrics.
//!
//! | module | what | used by |
//! |---|---|---|
//! | [`kv`] | the [`kv::KvStore`] trait, the in-memory backend, typed watches, the backend contract | everything below |
//! | [`keys`] | every KV key, laid out as M3 lays them out in etcd | stores, admin API |
//! | [`shard`] | `murmur3_32(id) % num_shards` | clients, aggregators, m3msg |
//! | [`placement`] | placements (mirrored, sharded, non-sharded), their algorithms and their store | admin API, clients, aggregators |
//! | [`topic`] | m3msg topics and their store | admin API, m3msg producers |
//! | [`election`] | leader election per shard set over any KV backend | aggregators |

#![warn(missing_docs, unreachable_pub)]

pub mod election;
pub mod keys;
pub mod kv;
pub mod placement;
pub mod shard;
pub mod topic;

pub use keys::ServiceId;
pub use kv::{KvError, KvStore, KvWatch, Versioned};
pub use shard::{murmur3_32, shard_for};
