//! Engine settings, named after the keys of M3's `aggregator:` config section.
//!
//! Defaults are M3's *code* defaults (what M3 uses when a key is absent inside a present
//! `aggregator:` section), except `defaultStoragePolicies`, which follows the shipped seed
//! config (`[10s:2d]`). The config loader of the binary maps YAML onto this struct.

use std::time::Duration;

use m3_metric::StoragePolicy;

/// Settings of an [`Aggregator`](crate::Aggregator).
#[derive(Debug, Clone, PartialEq)]
pub struct AggregatorOptions {
    /// `bufferDurationForPastTimedMetric`: a timed sample is accepted while
    /// `now − t ≤ buffer_past + resolution`, and a timed window is flushed once
    /// `now ≥ window end + buffer_past + resolution`. Default 1m.
    pub buffer_past: Duration,
    /// `bufferDurationForFutureTimedMetric`: a timed sample is accepted while
    /// `t − now ≤ buffer_future`. Default 1m.
    pub buffer_future: Duration,
    /// `bufferDurationBeforeShardCutover`: writes are accepted this long before a shard's
    /// cutover. Default 10m.
    pub buffer_before_cutover: Duration,
    /// `bufferDurationAfterShardCutoff`: writes are accepted this long after a shard's cutoff.
    /// Default 1h.
    pub buffer_after_cutoff: Duration,
    /// `entryTTL`: an entry with no writes for this long and no open window is removed by
    /// [`Aggregator::expire_entries`](crate::Aggregator::expire_entries). Default 1h.
    pub entry_ttl: Duration,
    /// `defaultStoragePolicies`: used for metrics whose metadata names no storage policy.
    /// Default `[10s:2d]`.
    pub default_storage_policies: Vec<StoragePolicy>,
    /// `maxTimerBatchSizePerWrite`: a batch timer is added in chunks of at most this many
    /// values, taking the shard lock once per chunk. 0 adds the whole batch at once. Default 0.
    pub max_timer_batch_size_per_write: usize,
    /// `discardNaNAggregatedValues`: NaN results are counted and not emitted. Default true.
    pub discard_nan_aggregated_values: bool,
    /// Most windows one series may have open per storage policy; a write that would open
    /// another is rejected (`too_many_windows`). Guards against tiny resolutions with wide
    /// timed buffers. Default 1024.
    pub max_open_windows_per_elem: usize,
    /// `forwarding.maxConstDelay`: a forwarded (rollup) window waits this long after its end,
    /// plus one resolution per forwarding hop, for every source's leader to forward it, then
    /// flushes; later writes to it are refused as too late. `None` (default): the past buffer
    /// plus 30s: sources forward a timed window only after their past buffer, and a source
    /// leader that dies just before forwarding is replaced one election TTL (10s) later.
    pub forwarding_max_const_delay: Option<Duration>,
}

impl AggregatorOptions {
    /// The constant part of the forwarding delay (see
    /// [`forwarding_max_const_delay`](Self::forwarding_max_const_delay)).
    pub fn forwarding_max_const_delay(&self) -> Duration {
        self.forwarding_max_const_delay
            .unwrap_or_else(|| self.buffer_past.saturating_add(Duration::from_secs(30)))
    }
}

impl Default for AggregatorOptions {
    fn default() -> Self {
        AggregatorOptions {
            buffer_past: Duration::from_secs(60),
            buffer_future: Duration::from_secs(60),
            buffer_before_cutover: Duration::from_secs(600),
            buffer_after_cutoff: Duration::from_secs(3600),
            entry_ttl: Duration::from_secs(3600),
            default_storage_policies: vec![StoragePolicy::new(
                Duration::from_secs(10),
                Duration::from_secs(2 * 86_400),
            )],
            max_timer_batch_size_per_write: 0,
            discard_nan_aggregated_values: true,
            max_open_windows_per_elem: 1024,
            forwarding_max_const_delay: None,
        }
    }
}

/// A duration in nanoseconds, saturating at `i64::MAX`.
pub(crate) fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_m3() {
        let o = AggregatorOptions::default();
        assert_eq!(o.buffer_past, Duration::from_secs(60));
        assert_eq!(o.buffer_future, Duration::from_secs(60));
        assert_eq!(o.entry_ttl, Duration::from_secs(3600));
        assert_eq!(o.default_storage_policies[0].to_string(), "10s:2d");
        assert!(o.discard_nan_aggregated_values);
        assert_eq!(nanos(Duration::MAX), i64::MAX);
    }
}
