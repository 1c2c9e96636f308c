//! Every self-metric of the aggregation engine, declared in one place.
//!
//! Counters are created once, with all their label values, when the [`Metrics`] is built, so
//! the add path bumps a plain atomic and never looks a label set up. [`Metrics::register`] adds
//! them to a `prometheus-client` registry; prefix it (`registry.sub_registry_with_prefix(
//! "m3aggregator")`) to get M3-like names.
//!
//! | metric | labels | meaning |
//! |---|---|---|
//! | `samples_added` | `type` | values aggregated into at least one storage policy |
//! | `samples_rejected` | `reason` | values not aggregated (per value, per rejected policy) |
//! | `entries_live` | | series entries held now |
//! | `id_dictionary_symbols` | | tag pairs and names the stored series IDs share, kept once (as of the last flush) |
//! | `id_dictionary_bytes` | | heap bytes of those shared pairs and their tables (as of the last flush) |
//! | `shard_hints_unconfirmed` | | values whose shard hint was not confirmed (series not in the hinted shard, shard not owned or writeable, or a rejecting metadata where murmur3 disagrees), routed again by murmur3 (nothing is dropped) |
//! | `entries_removed` | `reason` = `expired` / `shard_removed` | entries dropped |
//! | `outputs_flushed` | | aggregated values emitted by a leader flush |
//! | `outputs_discarded` | `reason` = `nan` / `invalid_id` / `expired` / `buffer_full` | results not emitted (`expired`, `buffer_full`: not stored by the consumer in this process within its message TTL, or beyond the producer's `maxBufferSize` while it could not store) |
//! | `windows_discarded` | `reason` = `follower` / `before_cutover` / `after_cutoff` / `follower_forced` / `no_output` | windows dropped without output (`no_output`: no output topic or consumer service for `maxBufferSize`) |

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use m3_metric::MetricType;

use crate::error::RejectReason;

type Labels = [(&'static str, &'static str); 1];

/// Why a window was dropped without being emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowDiscard {
    /// A follower dropped a window the leader has flushed.
    Follower,
    /// The window ended before the shard's cutover: the previous owner emits it.
    BeforeCutover,
    /// The window started at or after the shard's cutoff: the next owner emits it.
    AfterCutoff,
    /// A follower whose leader's flush times stopped moving for `maxBufferSize` dropped a
    /// window older than that (M3's forced follower flush), bounding its memory.
    FollowerForced,
    /// With no output topic or no consumer service on it, a window that waited
    /// `maxBufferSize` for one, bounding memory.
    NoOutput,
}

impl WindowDiscard {
    pub(crate) const ALL: [WindowDiscard; 5] = [
        WindowDiscard::Follower,
        WindowDiscard::BeforeCutover,
        WindowDiscard::AfterCutoff,
        WindowDiscard::FollowerForced,
        WindowDiscard::NoOutput,
    ];

    fn as_str(self) -> &'static str {
        match self {
            WindowDiscard::Follower => "follower",
            WindowDiscard::BeforeCutover => "before_cutover",
            WindowDiscard::AfterCutoff => "after_cutoff",
            WindowDiscard::FollowerForced => "follower_forced",
            WindowDiscard::NoOutput => "no_output",
        }
    }
}

/// Why an aggregated value was not emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputDiscard {
    /// A NaN result with `discardNaNAggregatedValues` on.
    Nan,
    /// A tag-encoded ID that is malformed, so no suffixed name can be built.
    InvalidId,
    /// An output the consumer in this process did not store within its message TTL
    /// (`m3 local`'s `aggregators.messageTTL`; over m3msg the producer counts these).
    Expired,
    /// An output the consumer in this process had not stored, dropped (oldest first) while
    /// more of them were held than the producer's buffer allows (`maxBufferSize`).
    BufferFull,
}

/// The engine's counters and gauges.
#[derive(Debug)]
pub struct Metrics {
    samples_added_family: Family<Labels, Counter>,
    samples_rejected_family: Family<Labels, Counter>,
    entries_removed_family: Family<Labels, Counter>,
    outputs_discarded_family: Family<Labels, Counter>,
    windows_discarded_family: Family<Labels, Counter>,
    samples_added: [Counter; 3],
    samples_rejected: Vec<Counter>,
    entries_live: Gauge,
    id_dictionary_symbols: Gauge,
    id_dictionary_bytes: Gauge,
    entries_expired: Counter,
    entries_shard_removed: Counter,
    outputs_flushed: Counter,
    outputs_nan: Counter,
    outputs_invalid_id: Counter,
    outputs_expired: Counter,
    outputs_buffer_full: Counter,
    windows_discarded: [Counter; WindowDiscard::ALL.len()],
    connections_closed_family: Family<Labels, Counter>,
    connections_refused: Counter,
    connections_timed_out: Counter,
    http_connections_refused: Counter,
    forwarded_duplicates: Counter,
    shard_hints_unconfirmed: Counter,
    forwarded_sent: Counter,
    forwarded_dropped_family: Family<Labels, Counter>,
    passthrough_added: Counter,
    passthrough_follower_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// All metrics at zero.
    pub fn new() -> Metrics {
        let samples_added_family = Family::<Labels, Counter>::default();
        let samples_rejected_family = Family::<Labels, Counter>::default();
        let entries_removed_family = Family::<Labels, Counter>::default();
        let outputs_discarded_family = Family::<Labels, Counter>::default();
        let windows_discarded_family = Family::<Labels, Counter>::default();
        let samples_added = MetricType::ALL.map(|t| {
            samples_added_family
                .get_or_create(&[("type", t.as_str())])
                .clone()
        });
        let samples_rejected = RejectReason::ALL
            .iter()
            .map(|r| {
                samples_rejected_family
                    .get_or_create(&[("reason", r.as_str())])
                    .clone()
            })
            .collect();
        let entries_expired = entries_removed_family
            .get_or_create(&[("reason", "expired")])
            .clone();
        let entries_shard_removed = entries_removed_family
            .get_or_create(&[("reason", "shard_removed")])
            .clone();
        let outputs_nan = outputs_discarded_family
            .get_or_create(&[("reason", "nan")])
            .clone();
        let outputs_invalid_id = outputs_discarded_family
            .get_or_create(&[("reason", "invalid_id")])
            .clone();
        let outputs_expired = outputs_discarded_family
            .get_or_create(&[("reason", "expired")])
            .clone();
        let outputs_buffer_full = outputs_discarded_family
            .get_or_create(&[("reason", "buffer_full")])
            .clone();
        let windows_discarded = WindowDiscard::ALL.map(|d| {
            windows_discarded_family
                .get_or_create(&[("reason", d.as_str())])
                .clone()
        });
        let connections_closed_family = Family::<Labels, Counter>::default();
        let connections_refused = connections_closed_family
            .get_or_create(&[("reason", "max_connections")])
            .clone();
        let connections_timed_out = connections_closed_family
            .get_or_create(&[("reason", "timeout")])
            .clone();
        Metrics {
            forwarded_duplicates: Counter::default(),
            shard_hints_unconfirmed: Counter::default(),
            forwarded_sent: Counter::default(),
            forwarded_dropped_family: Family::<Labels, Counter>::default(),
            passthrough_added: Counter::default(),
            passthrough_follower_dropped: Counter::default(),
            http_connections_refused: Counter::default(),
            connections_closed_family,
            connections_refused,
            connections_timed_out,
            samples_added_family,
            samples_rejected_family,
            entries_removed_family,
            outputs_discarded_family,
            windows_discarded_family,
            samples_added,
            samples_rejected,
            entries_live: Gauge::default(),
            id_dictionary_symbols: Gauge::default(),
            id_dictionary_bytes: Gauge::default(),
            entries_expired,
            entries_shard_removed,
            outputs_flushed: Counter::default(),
            outputs_nan,
            outputs_invalid_id,
            outputs_expired,
            outputs_buffer_full,
            windows_discarded,
        }
    }

    /// Adds every metric to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "samples_added",
            "Values aggregated, by metric type",
            self.samples_added_family.clone(),
        );
        registry.register(
            "samples_rejected",
            "Values not aggregated, by reason (per rejected storage policy)",
            self.samples_rejected_family.clone(),
        );
        registry.register(
            "entries_live",
            "Series entries currently held",
            self.entries_live.clone(),
        );
        registry.register(
            "id_dictionary_symbols",
            "Tag pairs and names shared by the stored series IDs, kept once (as of the last flush)",
            self.id_dictionary_symbols.clone(),
        );
        registry.register(
            "id_dictionary_bytes",
            "Heap bytes of the shared tag pairs and their tables (as of the last flush)",
            self.id_dictionary_bytes.clone(),
        );
        registry.register(
            "entries_removed",
            "Series entries removed, by reason",
            self.entries_removed_family.clone(),
        );
        registry.register(
            "outputs_flushed",
            "Aggregated values emitted by leader flushes",
            self.outputs_flushed.clone(),
        );
        registry.register(
            "outputs_discarded",
            "Aggregated values not emitted, by reason",
            self.outputs_discarded_family.clone(),
        );
        registry.register(
            "windows_discarded",
            "Aggregation windows dropped without output, by reason",
            self.windows_discarded_family.clone(),
        );
        registry.register(
            "shard_hints_unconfirmed",
            "Values whose remembered shard did not hold their series, routed again by murmur3 (none dropped)",
            self.shard_hints_unconfirmed.clone(),
        );
        registry.register(
            "forwarded_duplicates",
            "Forwarded values ignored because their (source, version) was already added to the window",
            self.forwarded_duplicates.clone(),
        );
        registry.register(
            "forwarded_sent",
            "Rollup values queued towards the aggregators owning the rollup IDs",
            self.forwarded_sent.clone(),
        );
        registry.register(
            "forwarded_dropped",
            "Rollup values not sent, by reason",
            self.forwarded_dropped_family.clone(),
        );
        registry.register(
            "passthrough_added",
            "Passthrough metrics received",
            self.passthrough_added.clone(),
        );
        registry.register(
            "passthrough_follower_dropped",
            "Passthrough metrics a follower received and dropped (only the leader writes them)",
            self.passthrough_follower_dropped.clone(),
        );
        registry.register(
            "http_connections_refused",
            "HTTP connections refused over the connection limit (answered 503)",
            self.http_connections_refused.clone(),
        );
        registry.register(
            "rawtcp_connections_closed",
            "rawtcp connections closed by the server: over maxConnections, or idle / mid-frame past the timeout",
            self.connections_closed_family.clone(),
        );
    }

    /// Counts an HTTP connection refused (503) over the admin listener's connection limit.
    pub fn record_http_connection_refused(&self) {
        self.http_connections_refused.inc();
    }

    /// Counts a rawtcp connection closed at once because `maxConnections` were open.
    pub fn record_connection_refused(&self) {
        self.connections_refused.inc();
    }

    /// Counts a rawtcp connection closed idle or in the middle of a frame past its timeout.
    pub fn record_connection_timed_out(&self) {
        self.connections_timed_out.inc();
    }

    /// rawtcp connections closed over `maxConnections` and past their timeouts.
    pub fn connections_closed(&self) -> (u64, u64) {
        (
            self.connections_refused.get(),
            self.connections_timed_out.get(),
        )
    }

    /// Counts `n` values of `metric_type` added.
    pub fn record_added(&self, metric_type: MetricType, n: u64) {
        self.samples_added[metric_type as usize].inc_by(n);
    }

    /// Counts `n` values rejected for `reason`.
    pub fn record_rejected(&self, reason: RejectReason, n: u64) {
        if let Some(c) = self.samples_rejected.get(reason.index()) {
            c.inc_by(n);
        }
    }

    /// Values added so far for `metric_type`.
    pub fn added(&self, metric_type: MetricType) -> u64 {
        self.samples_added[metric_type as usize].get()
    }

    /// Values rejected so far for `reason`.
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.samples_rejected
            .get(reason.index())
            .map_or(0, Counter::get)
    }

    /// Entries held now.
    pub fn entries_live(&self) -> i64 {
        self.entries_live.get()
    }

    /// The ID dictionary's symbols and heap bytes, as last set.
    pub fn id_dictionary(&self) -> (i64, i64) {
        (
            self.id_dictionary_symbols.get(),
            self.id_dictionary_bytes.get(),
        )
    }

    /// Entries removed by expiry so far.
    pub fn entries_expired(&self) -> u64 {
        self.entries_expired.get()
    }

    /// Values emitted by leader flushes so far.
    pub fn outputs_flushed(&self) -> u64 {
        self.outputs_flushed.get()
    }

    /// Windows discarded so far for `reason`.
    pub fn windows_discarded(&self, reason: WindowDiscard) -> u64 {
        self.windows_discarded[reason as usize].get()
    }

    /// Results not emitted so far for `reason`.
    pub fn outputs_discarded(&self, reason: OutputDiscard) -> u64 {
        match reason {
            OutputDiscard::Nan => self.outputs_nan.get(),
            OutputDiscard::InvalidId => self.outputs_invalid_id.get(),
            OutputDiscard::Expired => self.outputs_expired.get(),
            OutputDiscard::BufferFull => self.outputs_buffer_full.get(),
        }
    }

    pub(crate) fn shard_hints_unconfirmed(&self, n: u64) {
        self.shard_hints_unconfirmed.inc_by(n);
    }

    /// Values whose shard hint was not confirmed so far (see `shard_hints_unconfirmed`).
    pub fn shard_hints_unconfirmed_total(&self) -> u64 {
        self.shard_hints_unconfirmed.get()
    }

    pub(crate) fn record_forwarded_duplicate(&self, n: u64) {
        self.forwarded_duplicates.inc_by(n);
    }

    /// Forwarded values ignored as duplicates so far.
    pub fn forwarded_duplicates(&self) -> u64 {
        self.forwarded_duplicates.get()
    }

    /// Counts passthrough metrics received.
    pub fn record_passthrough(&self, n: u64) {
        self.passthrough_added.inc_by(n);
    }

    /// Counts passthrough metrics a follower dropped.
    pub fn record_passthrough_follower_dropped(&self, n: u64) {
        self.passthrough_follower_dropped.inc_by(n);
    }

    /// Counts rollup values queued or dropped on their way to other aggregators.
    pub fn record_forwarded(&self, sent: u64, dropped: &[(&'static str, u64)]) {
        self.forwarded_sent.inc_by(sent);
        for (reason, n) in dropped {
            if *n > 0 {
                self.forwarded_dropped_family
                    .get_or_create(&[("reason", *reason)])
                    .inc_by(*n);
            }
        }
    }

    pub(crate) fn set_id_dictionary(&self, symbols: usize, bytes: usize) {
        self.id_dictionary_symbols
            .set(i64::try_from(symbols).unwrap_or(i64::MAX));
        self.id_dictionary_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub(crate) fn entry_created(&self) {
        self.entries_live.inc();
    }

    pub(crate) fn entry_dropped_unused(&self) {
        self.entries_live.dec();
    }

    pub(crate) fn entries_expired_by(&self, n: u64) {
        self.entries_expired.inc_by(n);
        self.entries_live.dec_by(n as i64);
    }

    pub(crate) fn entries_shard_removed_by(&self, n: u64) {
        self.entries_shard_removed.inc_by(n);
        self.entries_live.dec_by(n as i64);
    }

    pub(crate) fn outputs_flushed_by(&self, n: u64) {
        self.outputs_flushed.inc_by(n);
    }

    pub(crate) fn output_discarded(&self, reason: OutputDiscard) {
        self.outputs_discarded_by(reason, 1);
    }

    pub(crate) fn outputs_discarded_by(&self, reason: OutputDiscard, n: u64) {
        match reason {
            OutputDiscard::Nan => self.outputs_nan.inc_by(n),
            OutputDiscard::InvalidId => self.outputs_invalid_id.inc_by(n),
            OutputDiscard::Expired => self.outputs_expired.inc_by(n),
            OutputDiscard::BufferFull => self.outputs_buffer_full.inc_by(n),
        };
    }

    pub(crate) fn windows_discarded_by(&self, reason: WindowDiscard, n: u64) {
        self.windows_discarded[reason as usize].inc_by(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn registers_and_encodes_all_labels() {
        let m = Metrics::new();
        m.record_added(MetricType::Gauge, 3);
        m.record_rejected(RejectReason::TooFarPast, 2);
        let mut registry = Registry::default();
        m.register(&mut registry);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("samples_added_total{type=\"gauge\"} 3"),
            "{text}"
        );
        assert!(text.contains("samples_rejected_total{reason=\"too_far_past\"} 2"));
        assert!(text.contains("samples_rejected_total{reason=\"decode_error\"} 0"));
        assert!(text.contains("windows_discarded_total{reason=\"follower\"} 0"));
        assert_eq!(m.added(MetricType::Gauge), 3);
    }
}
