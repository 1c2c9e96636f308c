//! Why a write was rejected, with M3's wording and the numbers a client needs to fix it.
//!
//! Every variant maps to one [`RejectReason`], the label under which the rejection is counted
//! in the self-metrics, so a log line and a counter always agree.

use std::time::Duration;

use m3_metric::MetricType;

/// The reasons a sample is not aggregated; each is a label value of `samples_rejected`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// A timed sample older than the past buffer plus the resolution.
    TooFarPast,
    /// A timed sample further ahead than the future buffer.
    TooFarFuture,
    /// The sample's shard is not assigned to this instance.
    ShardNotOwned,
    /// The shard is assigned but outside its writable window (cutover / cutoff).
    ShardNotWriteable,
    /// Aggregation types not valid for the metric type, or unknown bits.
    InvalidAggregation,
    /// A storage policy with a missing or non-positive resolution or retention.
    InvalidStoragePolicy,
    /// A pipeline the engine cannot run (unknown operation, rollup without ID, second-order
    /// derivative).
    InvalidPipeline,
    /// Every staged metadata has a cutover in the future.
    NoApplicableMetadata,
    /// The active staged metadata is tombstoned (the rule was deleted).
    Tombstoned,
    /// The elem already has the maximum number of open windows.
    TooManyWindows,
    /// A timestamp whose window end does not fit in 64 bits.
    InvalidTimestamp,
    /// The shard already tracks the maximum number of distinct (storage policy, aggregation
    /// types, metric type) combinations.
    TooManyPolicies,
    /// A new series in a shard whose series IDs already fill what it addresses.
    ShardFull,
    /// A rawtcp frame or protobuf message that does not decode; the connection is closed.
    DecodeError,
    /// A message that decodes but lacks the field its type names.
    MalformedMessage,
    /// A message type not handled, or unknown.
    UnsupportedMessageType,
}

impl RejectReason {
    /// Every reason, in label order.
    pub const ALL: [RejectReason; 16] = [
        RejectReason::TooFarPast,
        RejectReason::TooFarFuture,
        RejectReason::ShardNotOwned,
        RejectReason::ShardNotWriteable,
        RejectReason::InvalidAggregation,
        RejectReason::InvalidStoragePolicy,
        RejectReason::InvalidPipeline,
        RejectReason::NoApplicableMetadata,
        RejectReason::Tombstoned,
        RejectReason::TooManyWindows,
        RejectReason::InvalidTimestamp,
        RejectReason::TooManyPolicies,
        RejectReason::ShardFull,
        RejectReason::DecodeError,
        RejectReason::MalformedMessage,
        RejectReason::UnsupportedMessageType,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::TooFarPast => "too_far_past",
            RejectReason::TooFarFuture => "too_far_future",
            RejectReason::ShardNotOwned => "shard_not_owned",
            RejectReason::ShardNotWriteable => "shard_not_writeable",
            RejectReason::InvalidAggregation => "invalid_aggregation",
            RejectReason::InvalidStoragePolicy => "invalid_storage_policy",
            RejectReason::InvalidPipeline => "invalid_pipeline",
            RejectReason::NoApplicableMetadata => "no_applicable_metadata",
            RejectReason::Tombstoned => "tombstoned",
            RejectReason::TooManyWindows => "too_many_windows",
            RejectReason::InvalidTimestamp => "invalid_timestamp",
            RejectReason::TooManyPolicies => "too_many_policies",
            RejectReason::ShardFull => "shard_full",
            RejectReason::DecodeError => "decode_error",
            RejectReason::MalformedMessage => "malformed_message",
            RejectReason::UnsupportedMessageType => "unsupported_message_type",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// A write that was not (fully) aggregated.
///
/// When a sample targets several storage policies, the policies that were accepted keep the
/// sample; the error reports the first policy that was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AddError {
    /// The shard is not in this instance's shard set.
    #[error("aggregator shard is not owned: shard {shard}")]
    ShardNotOwned {
        /// The sample's shard.
        shard: u32,
    },
    /// The shard is owned but not writable now.
    #[error(
        "aggregator shard is not writeable: shard {shard} accepts writes in [{from_nanos}, {until_nanos}) ns, now is {now_nanos} ns"
    )]
    ShardNotWriteable {
        /// The sample's shard.
        shard: u32,
        /// Cutover minus the buffer before cutover.
        from_nanos: i64,
        /// Cutoff plus the buffer after cutoff.
        until_nanos: i64,
        /// The server time of the write.
        now_nanos: i64,
    },
    /// A timed sample older than `bufferDurationForPastTimedMetric` plus the resolution.
    #[error(
        "too far in the past: datapoint for aggregation at {timestamp_nanos} ns is older than the limit {limit_nanos} ns by {off_by:?} (bufferDurationForPastTimedMetric + resolution)"
    )]
    TooFarInThePast {
        /// The sample's timestamp.
        timestamp_nanos: i64,
        /// The oldest accepted timestamp.
        limit_nanos: i64,
        /// How much too old.
        off_by: Duration,
    },
    /// A timed sample further ahead than `bufferDurationForFutureTimedMetric`.
    #[error(
        "too far in the future: datapoint for aggregation at {timestamp_nanos} ns is newer than the limit {limit_nanos} ns by {off_by:?} (bufferDurationForFutureTimedMetric)"
    )]
    TooFarInTheFuture {
        /// The sample's timestamp.
        timestamp_nanos: i64,
        /// The newest accepted timestamp.
        limit_nanos: i64,
        /// How much too new.
        off_by: Duration,
    },
    /// Aggregation types the metric type does not support.
    #[error(
        "invalid aggregation types {aggregation_id:#x} for a {metric_type}: counters take Min, Max, Mean, Count, Sum, SumSq, Stdev; gauges those and Last; timers all but Last"
    )]
    InvalidAggregation {
        /// The metric type.
        metric_type: MetricType,
        /// The aggregation ID bitset as sent.
        aggregation_id: u64,
    },
    /// A storage policy that is missing a resolution or retention, or has a non-positive one.
    #[error("invalid storage policy: resolution and retention must be present and positive")]
    InvalidStoragePolicy,
    /// A pipeline the engine cannot run.
    #[error("invalid pipeline: {reason}")]
    InvalidPipeline {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No staged metadata has cut over yet.
    #[error(
        "no applicable metadata: the earliest cutover {earliest_cutover_nanos} ns is after now {now_nanos} ns"
    )]
    NoApplicableMetadata {
        /// The earliest cutover in the metadatas.
        earliest_cutover_nanos: i64,
        /// The server time of the write.
        now_nanos: i64,
    },
    /// The elem has as many open windows as allowed.
    #[error("too many open windows ({max}) for one series and storage policy")]
    TooManyWindows {
        /// The limit.
        max: usize,
    },
    /// Too many distinct (storage policy, aggregation types, metric type) in one shard.
    #[error("too many distinct storage policy and aggregation combinations in shard (max {max})")]
    TooManyPolicies {
        /// The limit.
        max: usize,
    },
    /// A new series in a shard whose ID arena addresses no more pages (about 4 GiB of IDs).
    #[error("too many series in one aggregator shard: their IDs fill the 4 GiB it addresses")]
    ShardFull,
    /// A timestamp whose window end overflows.
    #[error("invalid timestamp {timestamp_nanos} ns: its window end overflows")]
    InvalidTimestamp {
        /// The timestamp.
        timestamp_nanos: i64,
    },
}

impl AddError {
    /// The counter label this error is recorded under.
    pub fn reason(&self) -> RejectReason {
        match self {
            AddError::ShardNotOwned { .. } => RejectReason::ShardNotOwned,
            AddError::ShardNotWriteable { .. } => RejectReason::ShardNotWriteable,
            AddError::TooFarInThePast { .. } => RejectReason::TooFarPast,
            AddError::TooFarInTheFuture { .. } => RejectReason::TooFarFuture,
            AddError::InvalidAggregation { .. } => RejectReason::InvalidAggregation,
            AddError::InvalidStoragePolicy => RejectReason::InvalidStoragePolicy,
            AddError::InvalidPipeline { .. } => RejectReason::InvalidPipeline,
            AddError::NoApplicableMetadata { .. } => RejectReason::NoApplicableMetadata,
            AddError::TooManyWindows { .. } => RejectReason::TooManyWindows,
            AddError::InvalidTimestamp { .. } => RejectReason::InvalidTimestamp,
            AddError::TooManyPolicies { .. } => RejectReason::TooManyPolicies,
            AddError::ShardFull => RejectReason::ShardFull,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_indexed_in_order() {
        for (i, r) in RejectReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    #[test]
    fn messages_carry_m3_wording() {
        let e = AddError::TooFarInThePast {
            timestamp_nanos: 1,
            limit_nanos: 5,
            off_by: Duration::from_nanos(4),
        };
        assert!(e.to_string().starts_with("too far in the past"));
        assert_eq!(e.reason().as_str(), "too_far_past");
        let e = AddError::ShardNotOwned { shard: 3 };
        assert_eq!(e.to_string(), "aggregator shard is not owned: shard 3");
    }
}
