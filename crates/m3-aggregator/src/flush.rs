//! What a flush takes, and what it gives back.
//!
//! Every replica of a shard set aggregates the same writes; only the elected **leader** emits.
//! After each flush the leader persists its *flush times* — per shard, category and resolution,
//! the window end up to which every window was emitted — to KV as M3's `ShardSetFlushTimes`.
//! A **follower** flushes with the leader's last persisted times and discards exactly the
//! windows the leader has emitted, keeping the rest. When a follower is elected it flushes as
//! leader and emits from where the old leader stopped:
//!
//! ```text
//!   windows   |--w1--|--w2--|--w3--|--w4--|
//!   leader A  emit w1, w2 ─▶ flush times = end(w2) ─▶ KV
//!   follower B            discard w1, w2 (≤ end(w2)), keep w3…
//!   A dies, B leads       emit w3, w4 …               no gap, no duplicate
//! ```
//!
//! When windows become flushable:
//!
//! | category | a window [start, end) is flushed once |
//! |---|---|
//! | untimed | `now ≥ end` |
//! | timed | `now ≥ end + bufferPast + resolution` |
//! | forwarded (rollup values from other aggregators, after `n` hops) | `now ≥ end + maxConstDelay + n × resolution` |
//!
//! A window of an elem with a rollup is not emitted but *forwarded*: its value, through the
//! head transforms, goes under the rollup ID to the aggregators owning it
//! ([`ForwardedOutput`]), stamped with the window's end. There it lands in the forwarded window
//! that ends at the same time, so the rollup's output carries the source windows' end.
//! Forwarded windows have flush times of their own (per resolution and hop count), and
//! followers discard them like the others.
//!
//! A new leader must first see the latest persisted flush times (one follower flush with them)
//! before its first leader flush; otherwise it would emit windows the old leader emitted after
//! this replica's last follower flush.

use m3_metric::{AggregationType, MetricType, StoragePolicy};
use m3_proto::flushpb;

/// The category of a series: how its timestamps were assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    /// Bucketed by server arrival time (counters, gauges, batch timers). M3's "standard".
    Untimed,
    /// Bucketed by the metric's own timestamp, within the past/future buffers.
    Timed,
    /// Values forwarded by other aggregators' leaders (rollups), bucketed by their source
    /// window's end.
    Forwarded,
}

impl Category {
    /// Every category.
    pub const ALL: [Category; 3] = [Category::Untimed, Category::Timed, Category::Forwarded];

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// How a flush treats closed windows.
#[derive(Debug, Clone, Copy)]
pub enum FlushMode<'a> {
    /// Emit closed windows and return the flush times to persist.
    Leader,
    /// As `Leader`, but for the last flush before the process stops: every window that has
    /// *ended* is emitted, including timed windows still inside the past buffer (nobody would
    /// be left to emit them). Windows still open are not.
    LeaderFinal,
    /// Emit nothing; discard the windows the leader has flushed according to `flushed_times`
    /// (as read from KV), keep all later windows.
    Follower {
        /// The leader's last persisted flush times.
        flushed_times: &'a flushpb::ShardSetFlushTimes,
    },
    /// Emit nothing; discard every window ending at or before `before_nanos`, whatever the
    /// leader has flushed: M3's forced follower flush, for a follower whose leader's flush
    /// times have not moved for `maxBufferSize` (see the flush manager).
    FollowerForced {
        /// Windows ending at or before this (Unix nanoseconds) are dropped.
        before_nanos: i64,
    },
    /// Emit nothing; discard every window ending at or before `before_nanos`: there is no
    /// output topic or no consumer service to send them to, and they have waited
    /// `maxBufferSize` for one (see the flush manager).
    NoOutput {
        /// Windows ending at or before this (Unix nanoseconds) are dropped.
        before_nanos: i64,
    },
}

/// One aggregated value, ready to be sent to storage.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregatedOutput {
    /// The output series ID: the input ID, with the aggregation's suffix unless the series is a
    /// counter or gauge aggregated with its default type (see `m3_metric::id`).
    pub id: Vec<u8>,
    /// The window end, in Unix nanoseconds.
    pub time_nanos: i64,
    /// The aggregated value.
    pub value: f64,
    /// The storage policy (resolution and retention) the value belongs to.
    pub storage_policy: StoragePolicy,
    /// The aggregation that produced it.
    pub aggregation: AggregationType,
    /// The input metric type.
    pub metric_type: MetricType,
}

/// One window's value forwarded to the aggregators that own the rollup ID.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardedOutput {
    /// The rollup series' ID.
    pub id: bytes::Bytes,
    /// The source elem's metric type.
    pub metric_type: MetricType,
    /// The source window's end.
    pub time_nanos: i64,
    /// The value after the head transforms.
    pub value: f64,
    /// The aggregation across sources.
    pub aggregation_id: m3_metric::AggregationId,
    /// The storage policy.
    pub storage_policy: StoragePolicy,
    /// The rest of the pipeline, encoded (`AppliedPipeline`); empty when none.
    pub pipeline: bytes::Bytes,
    /// The source shard (M3's `SourceID`): with the version, what the receiver deduplicates.
    pub source_id: u32,
    /// Hops so far, this one included.
    pub forwarded_times: u32,
}

/// The outcome of one [`Aggregator::flush`](crate::Aggregator::flush).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlushResult {
    /// Leader only: per owned shard, the window end up to which each (category, resolution)
    /// has been emitted (untimed under `standard_by_resolution`, timed under
    /// `timed_by_resolution`, resolutions in nanoseconds). Empty for followers.
    pub flush_times: flushpb::ShardSetFlushTimes,
    /// Values appended to the output vector.
    pub outputs: usize,
    /// Windows dropped without output (follower discards, windows outside the shard's
    /// cutover/cutoff).
    pub windows_discarded: u64,
}

/// The start of the window of `resolution` holding `t` (aligned to the epoch), or `None` when
/// it is below `i64::MIN`. `resolution` must be positive.
pub(crate) fn checked_align_down(t: i64, resolution: i64) -> Option<i64> {
    t.checked_sub(t.checked_rem_euclid(resolution)?)
}

/// [`checked_align_down`], saturating at `i64::MIN`.
pub(crate) fn align_down(t: i64, resolution: i64) -> i64 {
    checked_align_down(t, resolution).unwrap_or(i64::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_is_to_the_epoch() {
        assert_eq!(align_down(25, 10), 20);
        assert_eq!(align_down(20, 10), 20);
        assert_eq!(align_down(-1, 10), -10);
        assert_eq!(align_down(i64::MIN, 10), i64::MIN);
        assert_eq!(checked_align_down(i64::MIN, 10), None);
        assert_eq!(checked_align_down(i64::MIN + 8, 10), Some(i64::MIN + 8));
        assert_eq!(align_down(i64::MAX, 10), i64::MAX - 7);
    }
}
