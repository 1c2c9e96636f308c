//! Who consumes a topic: consumer services and their live instances.
//!
//! The producer does not read placements or topics from KV itself. Glue code elsewhere turns
//! a topic (its consumer services, consumption types and message TTLs) and each service's
//! placement into the plain values below, and keeps them current:
//!
//! * the set of consumer services changes through
//!   [`Producer::add_consumer_service`](crate::Producer::add_consumer_service) and
//!   [`Producer::remove_consumer_service`](crate::Producer::remove_consumer_service);
//! * the instances of one service change through the [`tokio::sync::watch`] channel handed
//!   over with its [`ConsumerServiceSpec`]. Sending a new [`ConsumerInstances`] is all it takes:
//!   an added instance starts receiving, a removed one stops, and for a SHARED service its
//!   un-acked messages are retried on another owner of the shard.

use std::time::Duration;

/// How the instances of a consumer service share a topic's messages (M3's
/// `ConsumptionType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConsumptionType {
    /// Each message goes to one instance owning its shard and is acked once (`SHARED = 1`).
    /// Used for `aggregated_metrics` → m3coordinator.
    Shared,
    /// Each message goes to every instance owning its shard; each copy is acked on its own
    /// (`REPLICATED = 2`). Used for `aggregator_ingest` → m3aggregator.
    Replicated,
}

/// One consumer service of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerServiceSpec {
    /// Unique name within the producer, e.g. `m3coordinator`.
    pub name: String,
    /// SHARED or REPLICATED.
    pub consumption: ConsumptionType,
    /// A message not acked this long after it was produced is dropped for this service and
    /// counted as `ttl_expired` (`message_ttl_nanos`; M3 docs recommend 5m). `None` retries
    /// until acked or pushed out of the buffer.
    pub message_ttl: Option<Duration>,
}

/// One live instance of a consumer service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerInstance {
    /// Instance ID from the placement; identifies the instance across updates.
    pub id: String,
    /// `host:port` of its m3msg consumer server.
    pub endpoint: String,
    /// Shards it owns, or `None` for a non-sharded placement, where it owns every shard.
    /// Shards at or above the topic's shard count are ignored.
    pub shards: Option<Vec<u32>>,
}

impl ConsumerInstance {
    /// Whether this instance owns `shard`.
    pub fn owns(&self, shard: u32) -> bool {
        match &self.shards {
            None => true,
            Some(shards) => shards.contains(&shard),
        }
    }
}

/// A snapshot of a consumer service's live instances.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsumerInstances {
    /// The instances; IDs should be unique (a repeated ID keeps its last entry).
    pub instances: Vec<ConsumerInstance>,
}
