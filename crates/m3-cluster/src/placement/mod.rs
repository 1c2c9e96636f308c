//! Placements: which instance owns which shard, and since when.
//!
//! A [`Placement`] is M3's `placementpb.Placement` as a Rust value: instances keyed by ID, each
//! with its isolation group, weight, endpoint, shard set and [`Shard`]s. It converts to and from
//! the protobuf without loss ([`Placement::to_proto`], [`Placement::from_proto`]) so that a
//! placement written by M3 reads back byte-compatible, and the admin API can show every field.
//!
//! # Kinds of placement
//!
//! | kind | built by | used for |
//! |---|---|---|
//! | mirrored | [`build_mirrored`] | `m3aggregator`: instances form shard sets of RF members that hold identical shards; one member of each set leads |
//! | sharded | [`build_sharded`] | `m3db`-style: each shard on RF instances of distinct isolation groups |
//! | non-sharded | [`build_non_sharded`] | `m3coordinator`: a list of instances, no shards |
//!
//! # Moving shards
//!
//! Placements never move a shard in one step. A change marks the new owner's copy
//! INITIALIZING with a cutover time and the old owner's copy LEAVING with a cutoff time (and the
//! new copy names the old owner in `source_id`). Clients write to both copies around that time,
//! so nothing is lost while the new owner warms up:
//!
//! ```text
//!                     transition time T (cutover of new = cutoff of old)
//!                                 │
//! old owner  ─── AVAILABLE ───────┼── LEAVING (still flushes windows before T) ──┤ dropped
//! new owner                 INITIALIZING (aggregates from T) ─────────────────────┤ AVAILABLE
//!                                 │                        │
//!                                 T                        T + max aggregation window
//!                                                          = earliest mark_all_available
//! ```
//!
//! [`Placement::mark_all_available`] ends a change: it refuses while a cutover is in the future
//! or a cutoff is less than one aggregation window in the past, then drops the leaving copies
//! (and instances left without shards) and makes every shard AVAILABLE with cutover and cutoff
//! reset to 0 (unbounded). Add, remove and replace call it first, as M3 does, so a new change
//! cannot start before the previous one has finished.
//!
//! The algorithms live in `algo`, the KV store in [`store`].

mod algo;
mod error;
pub mod format;
pub mod store;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;
use m3_proto::placementpb;
use prost::Message;

pub use algo::{Timing, build_mirrored, build_non_sharded, build_sharded, transition_nanos};
pub use error::PlacementError;

/// The most shards a placement may have. Every reader of a placement (the routing clients, the
/// aggregators, validation) keeps a table with an entry per shard, so a placement in KV with
/// billions of shards would take the readers' memory; M3 deployments use 64 to a few thousand.
pub const MAX_SHARDS: u32 = 1 << 16;
pub use format::PlacementFormat;
pub use store::PlacementStore;

/// The lifecycle state of a shard on one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ShardState {
    /// The instance is taking the shard over; it owns it from `cutover_nanos`.
    Initializing,
    /// The instance owns the shard.
    Available,
    /// The instance is giving the shard up; it owns it until `cutoff_nanos`.
    Leaving,
}

impl ShardState {
    /// M3's name: `INITIALIZING`, `AVAILABLE` or `LEAVING`.
    pub fn as_str(self) -> &'static str {
        self.to_proto().as_str_name()
    }

    fn to_proto(self) -> placementpb::ShardState {
        match self {
            ShardState::Initializing => placementpb::ShardState::Initializing,
            ShardState::Available => placementpb::ShardState::Available,
            ShardState::Leaving => placementpb::ShardState::Leaving,
        }
    }

    fn from_proto(value: i32) -> Option<Self> {
        match placementpb::ShardState::try_from(value).ok()? {
            placementpb::ShardState::Initializing => Some(ShardState::Initializing),
            placementpb::ShardState::Available => Some(ShardState::Available),
            placementpb::ShardState::Leaving => Some(ShardState::Leaving),
        }
    }
}

/// One shard as held by one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// Shard ID, `0..num_shards`.
    pub id: u32,
    /// Lifecycle state on this instance.
    pub state: ShardState,
    /// For an INITIALIZING shard, the instance it is taken over from (empty when none).
    pub source_id: String,
    /// When this instance starts owning the shard; 0 = since forever.
    pub cutover_nanos: i64,
    /// When this instance stops owning the shard; 0 = never.
    pub cutoff_nanos: i64,
    /// M3's shard redirection (kept for lossless round trips; unused here).
    pub redirect_to_shard_id: Option<u32>,
}

impl Shard {
    /// A shard with the given ID and state, no source, unbounded cutover and cutoff.
    pub fn new(id: u32, state: ShardState) -> Self {
        Shard {
            id,
            state,
            source_id: String::new(),
            cutover_nanos: 0,
            cutoff_nanos: 0,
            redirect_to_shard_id: None,
        }
    }

    /// The cutoff time with 0 read as "never" (`i64::MAX`), as M3 does.
    pub fn effective_cutoff_nanos(&self) -> i64 {
        if self.cutoff_nanos == 0 {
            i64::MAX
        } else {
            self.cutoff_nanos
        }
    }
}

/// Optional instance metadata (M3's `InstanceMetadata`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InstanceMetadata {
    /// Debug port of the instance.
    pub debug_port: u32,
}

/// One instance (process) in a placement.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Instance {
    /// Unique ID, e.g. `m3aggregator01:6000`; the key of the placement's instance map.
    pub id: String,
    /// Failure domain (rack, availability zone); replicas of a shard never share one.
    pub isolation_group: String,
    /// Zone, e.g. `embedded`.
    pub zone: String,
    /// Relative capacity; shards are spread in proportion to weight.
    pub weight: u32,
    /// Where to send data, `host:port`.
    pub endpoint: String,
    /// Host name.
    pub hostname: String,
    /// Port.
    pub port: u32,
    /// Shard set of a mirrored placement (1-based; 0 = none).
    pub shard_set_id: u32,
    /// Shards held, sorted by ID, at most one entry per ID.
    pub shards: Vec<Shard>,
    /// Optional metadata.
    pub metadata: Option<InstanceMetadata>,
    /// M3's subcluster ID (kept for lossless round trips; unused here).
    pub subcluster_id: u32,
}

impl Instance {
    /// An instance with the given ID, endpoint equal to the ID, weight 1 and nothing else set.
    pub fn new(id: impl Into<String>) -> Self {
        let id = id.into();
        Instance {
            endpoint: id.clone(),
            id,
            weight: 1,
            ..Instance::default()
        }
    }

    /// Sets the isolation group.
    pub fn with_isolation_group(mut self, group: impl Into<String>) -> Self {
        self.isolation_group = group.into();
        self
    }

    /// Sets the weight (default 1).
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Sets the endpoint (default: the ID).
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = endpoint.into();
        self
    }

    /// Sets the zone.
    pub fn with_zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = zone.into();
        self
    }

    /// Sets the shard set ID (mirrored placements; default 0 = assigned by the algorithm).
    pub fn with_shard_set_id(mut self, shard_set_id: u32) -> Self {
        self.shard_set_id = shard_set_id;
        self
    }

    /// The instance's copy of a shard, if it holds one.
    pub fn shard(&self, id: u32) -> Option<&Shard> {
        self.shards
            .binary_search_by_key(&id, |s| s.id)
            .ok()
            .and_then(|i| self.shards.get(i))
    }

    /// IDs of the shards held, in any state, ascending.
    pub fn shard_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.shards.iter().map(|s| s.id)
    }

    /// IDs of the shards held in a state other than LEAVING, ascending.
    pub fn owned_shard_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.shards
            .iter()
            .filter(|s| s.state != ShardState::Leaving)
            .map(|s| s.id)
    }

    fn shard_mut(&mut self, id: u32) -> Option<&mut Shard> {
        match self.shards.binary_search_by_key(&id, |s| s.id) {
            Ok(i) => self.shards.get_mut(i),
            Err(_) => None,
        }
    }

    /// Inserts or replaces a shard, keeping the list sorted.
    fn put_shard(&mut self, shard: Shard) {
        match self.shards.binary_search_by_key(&shard.id, |s| s.id) {
            Ok(i) => self.shards[i] = shard,
            Err(i) => self.shards.insert(i, shard),
        }
    }

    fn remove_shard(&mut self, id: u32) -> Option<Shard> {
        match self.shards.binary_search_by_key(&id, |s| s.id) {
            Ok(i) => Some(self.shards.remove(i)),
            Err(_) => None,
        }
    }

    fn to_proto(&self) -> placementpb::Instance {
        placementpb::Instance {
            id: self.id.clone(),
            isolation_group: self.isolation_group.clone(),
            zone: self.zone.clone(),
            weight: self.weight,
            endpoint: self.endpoint.clone(),
            shards: self
                .shards
                .iter()
                .map(|s| placementpb::Shard {
                    id: s.id,
                    state: s.state.to_proto() as i32,
                    source_id: s.source_id.clone(),
                    cutover_nanos: s.cutover_nanos,
                    cutoff_nanos: s.cutoff_nanos,
                    redirect_to_shard_id: s.redirect_to_shard_id,
                })
                .collect(),
            shard_set_id: self.shard_set_id,
            hostname: self.hostname.clone(),
            port: self.port,
            metadata: self.metadata.map(|m| placementpb::InstanceMetadata {
                debug_port: m.debug_port,
            }),
            subcluster_id: self.subcluster_id,
        }
    }

    fn from_proto(pb: placementpb::Instance) -> Result<Self, PlacementError> {
        let mut shards = Vec::with_capacity(pb.shards.len());
        for s in pb.shards {
            let state = ShardState::from_proto(s.state).ok_or_else(|| PlacementError::Decode {
                reason: format!(
                    "instance {:?} shard {} has unknown state {}",
                    pb.id, s.id, s.state
                ),
            })?;
            shards.push(Shard {
                id: s.id,
                state,
                source_id: s.source_id,
                cutover_nanos: s.cutover_nanos,
                cutoff_nanos: s.cutoff_nanos,
                redirect_to_shard_id: s.redirect_to_shard_id,
            });
        }
        shards.sort_by_key(|s| s.id);
        if let Some(w) = shards.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(PlacementError::Decode {
                reason: format!("instance {:?} holds shard {} twice", pb.id, w[0].id),
            });
        }
        Ok(Instance {
            id: pb.id,
            isolation_group: pb.isolation_group,
            zone: pb.zone,
            weight: pb.weight,
            endpoint: pb.endpoint,
            hostname: pb.hostname,
            port: pb.port,
            shard_set_id: pb.shard_set_id,
            shards,
            metadata: pb.metadata.map(|m| InstanceMetadata {
                debug_port: m.debug_port,
            }),
            subcluster_id: pb.subcluster_id,
        })
    }
}

/// A placement: instances and the shards they own. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Placement {
    /// Instances by ID.
    pub instances: BTreeMap<String, Instance>,
    /// Replicas per shard (= members per shard set when mirrored).
    pub replica_factor: u32,
    /// Number of shards; shard IDs are `0..num_shards`.
    pub num_shards: u32,
    /// Whether instances own shards (false for coordinators).
    pub is_sharded: bool,
    /// When this placement takes effect (M3 staged placements).
    pub cutover_time: i64,
    /// Whether instances form shard sets with identical shards (aggregators).
    pub is_mirrored: bool,
    /// Highest shard set ID ever assigned; new shard sets get higher IDs.
    pub max_shard_set_id: u32,
    /// M3's subclustering flag (kept for lossless round trips; unused here).
    pub is_subclustered: bool,
    /// M3's instances per subcluster (kept for lossless round trips; unused here).
    pub instances_per_subcluster: u32,
}

impl Placement {
    /// The protobuf form, as stored in KV.
    pub fn to_proto(&self) -> placementpb::Placement {
        placementpb::Placement {
            instances: self
                .instances
                .iter()
                .map(|(id, i)| (id.clone(), i.to_proto()))
                .collect::<HashMap<_, _>>(),
            replica_factor: self.replica_factor,
            num_shards: self.num_shards,
            is_sharded: self.is_sharded,
            cutover_time: self.cutover_time,
            is_mirrored: self.is_mirrored,
            max_shard_set_id: self.max_shard_set_id,
            is_subclustered: self.is_subclustered,
            instances_per_subcluster: self.instances_per_subcluster,
        }
    }

    /// Reads the protobuf form.
    ///
    /// # Errors
    /// [`PlacementError::Decode`] when a map key differs from its instance's ID, a shard state is
    /// unknown, an instance holds a shard twice, or `num_shards` is above [`MAX_SHARDS`] (every
    /// reader sizes tables by it). The placement's invariants are not checked; call
    /// [`Placement::validate`] for that.
    pub fn from_proto(pb: placementpb::Placement) -> Result<Self, PlacementError> {
        if pb.num_shards > MAX_SHARDS {
            return Err(PlacementError::Decode {
                reason: format!(
                    "num_shards {} is above the {MAX_SHARDS} a placement may have",
                    pb.num_shards
                ),
            });
        }
        let mut instances = BTreeMap::new();
        for (key, instance) in pb.instances {
            if key != instance.id {
                return Err(PlacementError::Decode {
                    reason: format!(
                        "instance map key {key:?} differs from instance id {:?}",
                        instance.id
                    ),
                });
            }
            instances.insert(key, Instance::from_proto(instance)?);
        }
        Ok(Placement {
            instances,
            replica_factor: pb.replica_factor,
            num_shards: pb.num_shards,
            is_sharded: pb.is_sharded,
            cutover_time: pb.cutover_time,
            is_mirrored: pb.is_mirrored,
            max_shard_set_id: pb.max_shard_set_id,
            is_subclustered: pb.is_subclustered,
            instances_per_subcluster: pb.instances_per_subcluster,
        })
    }

    /// Protobuf bytes, as stored in KV.
    pub fn encode(&self) -> Bytes {
        Bytes::from(self.to_proto().encode_to_vec())
    }

    /// Reads protobuf bytes.
    ///
    /// # Errors
    /// [`PlacementError::Decode`] when the bytes are not a placement (see [`Placement::from_proto`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, PlacementError> {
        let pb = placementpb::Placement::decode(bytes).map_err(|e| PlacementError::Decode {
            reason: e.to_string(),
        })?;
        Self::from_proto(pb)
    }

    /// An instance by ID.
    pub fn instance(&self, id: &str) -> Option<&Instance> {
        self.instances.get(id)
    }

    /// Every instance, ordered by ID.
    pub fn instances(&self) -> impl Iterator<Item = &Instance> + '_ {
        self.instances.values()
    }

    /// Instances holding a copy of `shard` in any state (INITIALIZING and LEAVING included: a
    /// client writes to each whose cutover/cutoff window covers the write), ordered by ID.
    pub fn instances_for_shard(&self, shard: u32) -> impl Iterator<Item = &Instance> + '_ {
        self.instances
            .values()
            .filter(move |i| i.shard(shard).is_some())
    }

    /// Members of a shard set, ordered by ID.
    pub fn shard_set_members(&self, shard_set_id: u32) -> impl Iterator<Item = &Instance> + '_ {
        self.instances
            .values()
            .filter(move |i| i.shard_set_id == shard_set_id)
    }

    /// The shard set IDs in use, ascending.
    pub fn shard_set_ids(&self) -> BTreeSet<u32> {
        self.instances.values().map(|i| i.shard_set_id).collect()
    }

    /// Checks the placement's invariants:
    ///
    /// - every instance has an ID (equal to its key) and an endpoint;
    /// - non-sharded: no instance holds shards;
    /// - sharded: `num_shards` and the replication factor are positive; every shard ID is below
    ///   `num_shards`; every shard has exactly RF non-LEAVING copies, on distinct isolation groups;
    ///   every INITIALIZING copy with a `source_id` names an instance holding that shard LEAVING;
    /// - mirrored: every instance has a shard set ID no higher than `max_shard_set_id`; members of
    ///   a set have equal weights, and those holding non-LEAVING shards hold the same ones and are
    ///   in distinct isolation groups.
    ///
    /// # Errors
    /// [`PlacementError::Invalid`] naming the first broken invariant (or a more specific
    /// variant such as [`PlacementError::UnequalWeights`]).
    pub fn validate(&self) -> Result<(), PlacementError> {
        for (key, i) in &self.instances {
            if i.id.is_empty() {
                return Err(PlacementError::MissingField {
                    instance: format!("with key {key:?}"),
                    field: "id",
                });
            }
            if *key != i.id {
                return Err(PlacementError::invalid(format!(
                    "instance key {key:?} differs from its id {:?}",
                    i.id
                )));
            }
            if i.endpoint.is_empty() {
                return Err(PlacementError::MissingField {
                    instance: format!("{:?}", i.id),
                    field: "endpoint",
                });
            }
            if i.shards.windows(2).any(|w| w[0].id >= w[1].id) {
                return Err(PlacementError::invalid(format!(
                    "shards of instance {:?} are not sorted and unique",
                    i.id
                )));
            }
        }
        if !self.is_sharded {
            if let Some(i) = self.instances.values().find(|i| !i.shards.is_empty()) {
                return Err(PlacementError::invalid(format!(
                    "instance {:?} holds shards in a non-sharded placement",
                    i.id
                )));
            }
            return Ok(());
        }
        if self.num_shards == 0 {
            return Err(PlacementError::ZeroShards);
        }
        if self.replica_factor == 0 {
            return Err(PlacementError::ZeroReplicationFactor);
        }
        self.validate_shards()?;
        if self.is_mirrored {
            self.validate_shard_sets()?;
        }
        Ok(())
    }

    fn validate_shards(&self) -> Result<(), PlacementError> {
        let mut owners: Vec<Vec<&Instance>> = vec![Vec::new(); self.num_shards as usize];
        for i in self.instances.values() {
            for s in &i.shards {
                let Some(slot) = owners.get_mut(s.id as usize) else {
                    return Err(PlacementError::invalid(format!(
                        "instance {:?} holds shard {} but the placement has {} shards",
                        i.id, s.id, self.num_shards
                    )));
                };
                if s.state != ShardState::Leaving {
                    slot.push(i);
                }
                if s.state == ShardState::Initializing && !s.source_id.is_empty() {
                    let source_leaving = self
                        .instances
                        .get(&s.source_id)
                        .and_then(|src| src.shard(s.id))
                        .is_some_and(|src| src.state == ShardState::Leaving);
                    if !source_leaving {
                        return Err(PlacementError::invalid(format!(
                            "instance {:?} takes shard {} from {:?}, which does not hold it LEAVING",
                            i.id, s.id, s.source_id
                        )));
                    }
                }
            }
        }
        for (shard, holders) in owners.iter().enumerate() {
            if holders.len() != self.replica_factor as usize {
                return Err(PlacementError::invalid(format!(
                    "shard {shard} has {} owner(s) {:?}; replication factor is {}",
                    holders.len(),
                    holders.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
                    self.replica_factor
                )));
            }
            let mut groups = BTreeSet::new();
            for i in holders {
                if !groups.insert(i.isolation_group.as_str()) {
                    return Err(PlacementError::invalid(format!(
                        "shard {shard} has two owners in isolation group {:?}",
                        i.isolation_group
                    )));
                }
            }
        }
        Ok(())
    }

    fn validate_shard_sets(&self) -> Result<(), PlacementError> {
        let mut sets: BTreeMap<u32, Vec<&Instance>> = BTreeMap::new();
        for i in self.instances.values() {
            if i.shard_set_id == 0 || i.shard_set_id > self.max_shard_set_id {
                return Err(PlacementError::invalid(format!(
                    "instance {:?} has shard set {} outside 1..={}",
                    i.id, i.shard_set_id, self.max_shard_set_id
                )));
            }
            sets.entry(i.shard_set_id).or_default().push(i);
        }
        for (&id, members) in &sets {
            let weights: BTreeSet<u32> = members.iter().map(|i| i.weight).collect();
            if weights.len() > 1 {
                return Err(PlacementError::UnequalWeights {
                    shard_set_id: id,
                    weights: weights.into_iter().collect(),
                });
            }
            let owning: Vec<&&Instance> = members
                .iter()
                .filter(|i| i.owned_shard_ids().next().is_some())
                .collect();
            let mut groups = BTreeSet::new();
            for i in &owning {
                if !groups.insert(i.isolation_group.as_str()) {
                    return Err(PlacementError::IsolationGroupConflict {
                        shard_set_id: id,
                        isolation_group: i.isolation_group.clone(),
                    });
                }
            }
            if let Some(first) = owning.first() {
                let expected: Vec<u32> = first.owned_shard_ids().collect();
                for i in &owning[1..] {
                    if i.owned_shard_ids().ne(expected.iter().copied()) {
                        return Err(PlacementError::invalid(format!(
                            "members {:?} and {:?} of shard set {id} own different shards",
                            first.id, i.id
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

impl TryFrom<placementpb::Placement> for Placement {
    type Error = PlacementError;

    fn try_from(pb: placementpb::Placement) -> Result<Self, Self::Error> {
        Placement::from_proto(pb)
    }
}

impl From<&Placement> for placementpb::Placement {
    fn from(p: &Placement) -> Self {
        p.to_proto()
    }
}
