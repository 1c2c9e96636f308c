//! Errors of placement building, changes, validation and decoding.
//!
//! Almost every variant is the caller's mistake and carries what is needed to fix it (the
//! instance ID, the shard set, the offending numbers), so the admin API can return the message as
//! an HTTP 400 as is. [`PlacementError::is_invalid_input`] tells the two kinds apart: decode errors
//! mean the stored placement itself is broken.

/// Why a placement could not be built, changed, validated or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// No instances were given.
    #[error("no instances given; a placement needs at least one instance")]
    NoInstances,
    /// `num_shards` is 0.
    #[error("number of shards must be at least 1, got 0")]
    ZeroShards,
    /// `num_shards` is above [`MAX_SHARDS`](super::MAX_SHARDS).
    #[error("number of shards must be at most {max}, got {num_shards}")]
    TooManyShards {
        /// The number asked for.
        num_shards: u32,
        /// The most a placement may have.
        max: u32,
    },
    /// The replication factor is 0.
    #[error("replication factor must be at least 1, got 0")]
    ZeroReplicationFactor,
    /// More replicas than distinct isolation groups.
    #[error(
        "replication factor {replication_factor} is larger than the number of distinct isolation \
         groups ({isolation_groups}); every replica of a shard must be in a different isolation group"
    )]
    ReplicationFactorTooLarge {
        /// Requested replication factor.
        replication_factor: u32,
        /// Distinct isolation groups among the instances.
        isolation_groups: usize,
    },
    /// Instances of one weight cannot be split into shard sets of RF members.
    #[error(
        "{count} instance(s) with weight {weight} cannot be split into shard sets of \
         {replication_factor}: the count must be a multiple of the replication factor"
    )]
    NotDivisible {
        /// Number of instances with this weight.
        count: usize,
        /// The weight.
        weight: u32,
        /// Replication factor (= shard set size).
        replication_factor: u32,
    },
    /// Instances cannot be grouped into shard sets whose members are in distinct isolation groups.
    #[error(
        "cannot form shard sets of {replication_factor} instances with weight {weight} from \
         distinct isolation groups: too many instances share an isolation group ({detail})"
    )]
    IsolationGroupsUnbalanced {
        /// The weight of the instances being grouped.
        weight: u32,
        /// Replication factor.
        replication_factor: u32,
        /// Instance counts per isolation group.
        detail: String,
    },
    /// The same instance ID appears twice.
    #[error("duplicate instance id {id:?}")]
    DuplicateInstance {
        /// The repeated ID.
        id: String,
    },
    /// An instance to add is already in the placement.
    #[error("instance {id:?} is already in the placement")]
    InstanceExists {
        /// The ID.
        id: String,
    },
    /// An instance named by the caller is not in the placement.
    #[error("instance {id:?} is not in the placement")]
    UnknownInstance {
        /// The ID.
        id: String,
    },
    /// A required instance field is empty.
    #[error("instance {instance} has no {field}")]
    MissingField {
        /// The instance ID, or its position when the ID itself is missing.
        instance: String,
        /// The empty field.
        field: &'static str,
    },
    /// A sharded placement needs positive weights.
    #[error(
        "instance {id:?} has weight 0; instances of a sharded placement need a positive weight"
    )]
    ZeroWeight {
        /// The instance ID.
        id: String,
    },
    /// Members of one shard set have different weights.
    #[error(
        "shard set {shard_set_id} has unequal weights {weights:?}; members of a shard set must have equal weight"
    )]
    UnequalWeights {
        /// The shard set.
        shard_set_id: u32,
        /// The weights found.
        weights: Vec<u32>,
    },
    /// Two members of one shard set (or two replicas of one shard) share an isolation group.
    #[error("shard set {shard_set_id} has two members in isolation group {isolation_group:?}")]
    IsolationGroupConflict {
        /// The shard set (0 for non-mirrored placements).
        shard_set_id: u32,
        /// The shared group.
        isolation_group: String,
    },
    /// A shard set given explicitly has the wrong number of members.
    #[error(
        "shard set {shard_set_id} has {actual} member(s); it needs exactly {expected} (the replication factor)"
    )]
    ShardSetSize {
        /// The shard set.
        shard_set_id: u32,
        /// Replication factor.
        expected: u32,
        /// Members given.
        actual: usize,
    },
    /// Some instances carry a shard set ID and others do not.
    #[error(
        "either every instance or no instance may carry a shard_set_id; {with} do and {without} do not"
    )]
    MixedShardSetIds {
        /// Instances with an ID.
        with: usize,
        /// Instances without one.
        without: usize,
    },
    /// An explicit shard set ID is already used in the placement.
    #[error("shard set {shard_set_id} already exists in the placement")]
    ShardSetExists {
        /// The shard set.
        shard_set_id: u32,
    },
    /// Removing part of a shard set from a mirrored placement.
    #[error(
        "instances of a mirrored placement are removed a whole shard set at a time; shard set \
         {shard_set_id} would keep {remaining:?} (use replace to swap single instances)"
    )]
    PartialShardSetRemoval {
        /// The shard set.
        shard_set_id: u32,
        /// Members not named for removal.
        remaining: Vec<String>,
    },
    /// A removal would leave no instance to own the shards.
    #[error("cannot remove every instance: no one would be left to own the shards")]
    RemovesEverything,
    /// No candidate fits a leaving instance.
    #[error(
        "no replacement candidate for instance {leaving:?}: a candidate needs weight {weight} and \
         an isolation group not used by the rest of shard set {shard_set_id}"
    )]
    NoReplacementCandidate {
        /// The instance to replace.
        leaving: String,
        /// Its shard set.
        shard_set_id: u32,
        /// Its weight.
        weight: u32,
    },
    /// An INITIALIZING shard cannot be made AVAILABLE before its cutover time.
    #[error(
        "could not mark shard {shard} of instance {instance:?} available before cutover time \
         {cutover_nanos} (now {now_nanos})"
    )]
    BeforeCutover {
        /// The instance.
        instance: String,
        /// The shard.
        shard: u32,
        /// Its cutover time.
        cutover_nanos: i64,
        /// The time of the attempt.
        now_nanos: i64,
    },
    /// A LEAVING shard cannot be dropped before its cutoff plus the largest aggregation window.
    #[error(
        "could not drop leaving shard {shard} of instance {instance:?}: cutoff {cutoff_nanos} is \
         not yet one aggregation window ({max_window_nanos}ns) in the past (now {now_nanos})"
    )]
    BeforeCutoff {
        /// The instance.
        instance: String,
        /// The shard.
        shard: u32,
        /// Its cutoff time.
        cutoff_nanos: i64,
        /// The largest aggregation window.
        max_window_nanos: i64,
        /// The time of the attempt.
        now_nanos: i64,
    },
    /// The operation is not supported for this kind of placement.
    #[error("{operation} is not supported for {kind} placements")]
    Unsupported {
        /// The operation.
        operation: &'static str,
        /// The placement kind.
        kind: &'static str,
    },
    /// A placement breaks an invariant (see `Placement::validate`).
    #[error("invalid placement: {reason}")]
    Invalid {
        /// What is wrong.
        reason: String,
    },
    /// The stored bytes are not a placement protobuf.
    #[error("placement does not decode: {reason}")]
    Decode {
        /// The decoder's message.
        reason: String,
    },
}

impl PlacementError {
    /// True when the error is the caller's mistake (HTTP 400); false when a stored placement is
    /// broken ([`PlacementError::Decode`]).
    pub fn is_invalid_input(&self) -> bool {
        !matches!(self, PlacementError::Decode { .. })
    }

    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        PlacementError::Invalid {
            reason: reason.into(),
        }
    }
}
