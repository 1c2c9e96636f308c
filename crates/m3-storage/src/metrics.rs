//! The store's self-metrics, all declared here.
//!
//! Counters are `prometheus-client` counters, so a server can [`register`](StoreMetrics::register)
//! them in its registry and serve them at `/metrics`; tests and status pages read them with the
//! plain getters. Cloning a [`StoreMetrics`] shares the counters.
//!
//! | metric (after registration)                      | meaning                                  |
//! |--------------------------------------------------|------------------------------------------|
//! | `m3_storage_samples_written_total`               | samples accepted by `write_batch`        |
//! | `m3_storage_series_created_total`                | new series added to the index            |
//! | `m3_storage_samples_deleted_by_retention_total`  | samples removed because they expired     |
//! | `m3_storage_series_removed_by_retention_total`   | series dropped once they had no samples  |
//! | `m3_storage_write_errors_total`                  | `write_batch` calls that failed          |
//! | `m3_storage_samples_refused_total{reason="too_old"}` | samples further behind their series' newest than `bufferPast` |
//! | `m3_storage_samples_refused_total{reason="too_new"}` | samples further ahead of the clock than `bufferFuture` |
//! | `m3_storage_samples_compacted_total`             | samples the heads cut into blocks on disk |
//! | `m3_storage_blocks_merged_total`                 | blocks merged into one per past merge range (a tenth of the retention) |
//! | `m3_storage_blocks_quarantined_total`            | blocks that did not open (damaged or missing files) and were moved to their namespace's `quarantine` directory when the store opened; their samples are not read |
//! | `m3_storage_block_merge_errors_total`            | merges that failed (logged; their blocks stay as they are, and the range is not tried again until a restart) |
//! | `m3_storage_head_series`, `m3_storage_head_bytes` | series in the heads and their memory (approximate, with the label names and values numbered for the process), after the last retention pass |
//! | `m3_storage_head_label_sets`                     | distinct label sets the heads hold, each once however many namespaces have its series: counted at open, set by each retention pass |
//! | `m3_storage_blocks`, `m3_storage_block_bytes`    | blocks on disk and the bytes of their chunks, likewise |
//! | `m3_storage_head_chunk_file_bytes`               | the heads' closed chunks in files, likewise |
//! | `m3_storage_head_chunk_file_errors{op}`          | closed chunks the files could not take (`write`: kept in memory) or give back (`read`: missing from answers), since the heads opened |
//! | `m3_storage_writable`                            | 1 while the store can write, 0 after a failed write until it recovers |

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The label of `m3_storage_samples_refused_total`: `reason`.
type RefusedReason = [(&'static str, &'static str); 1];

/// Counters kept by a [`Store`](crate::Store). See the [module docs](self).
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    pub(crate) samples_written: Counter,
    pub(crate) series_created: Counter,
    pub(crate) samples_deleted_by_retention: Counter,
    pub(crate) series_removed_by_retention: Counter,
    pub(crate) write_errors: Counter,
    pub(crate) writable: Gauge,
    /// By reason; the two counters below are its members.
    samples_refused: Family<RefusedReason, Counter>,
    pub(crate) samples_refused_too_old: Counter,
    pub(crate) samples_refused_too_new: Counter,
    pub(crate) samples_compacted: Counter,
    pub(crate) blocks_merged: Counter,
    pub(crate) block_merge_errors: Counter,
    pub(crate) blocks_quarantined: Counter,
    pub(crate) head_series: Gauge,
    pub(crate) head_bytes: Gauge,
    pub(crate) head_label_sets: Gauge,
    pub(crate) blocks: Gauge,
    pub(crate) block_bytes: Gauge,
    pub(crate) head_chunk_file_bytes: Gauge,
    pub(crate) head_chunk_file_write_errors: Gauge,
    pub(crate) head_chunk_file_read_errors: Gauge,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        let writable = Gauge::default();
        writable.set(1);
        let samples_refused = Family::<RefusedReason, Counter>::default();
        // A family's counter shares its value with its clones.
        let refused = |reason| samples_refused.get_or_create(&[("reason", reason)]).clone();
        let (samples_refused_too_old, samples_refused_too_new) =
            (refused("too_old"), refused("too_new"));
        StoreMetrics {
            samples_written: Counter::default(),
            series_created: Counter::default(),
            samples_deleted_by_retention: Counter::default(),
            series_removed_by_retention: Counter::default(),
            write_errors: Counter::default(),
            writable,
            samples_refused,
            samples_refused_too_old,
            samples_refused_too_new,
            samples_compacted: Counter::default(),
            blocks_merged: Counter::default(),
            block_merge_errors: Counter::default(),
            blocks_quarantined: Counter::default(),
            head_series: Gauge::default(),
            head_bytes: Gauge::default(),
            head_label_sets: Gauge::default(),
            blocks: Gauge::default(),
            block_bytes: Gauge::default(),
            head_chunk_file_bytes: Gauge::default(),
            head_chunk_file_write_errors: Gauge::default(),
            head_chunk_file_read_errors: Gauge::default(),
        }
    }
}

impl StoreMetrics {
    /// Samples accepted by `write_batch` (a rewrite of an existing point counts again).
    pub fn samples_written(&self) -> u64 {
        self.samples_written.get()
    }

    /// Series created since the store was opened.
    pub fn series_created(&self) -> u64 {
        self.series_created.get()
    }

    /// Blocks moved aside when the store opened, because they did not open.
    pub fn blocks_quarantined(&self) -> u64 {
        self.blocks_quarantined.get()
    }

    /// Samples removed by retention since the store was opened.
    pub fn samples_deleted_by_retention(&self) -> u64 {
        self.samples_deleted_by_retention.get()
    }

    /// Series dropped from the index because retention left them without samples.
    pub fn series_removed_by_retention(&self) -> u64 {
        self.series_removed_by_retention.get()
    }

    /// `write_batch` calls that returned an error.
    pub fn write_errors(&self) -> u64 {
        self.write_errors.get()
    }

    /// Samples refused because they were further behind their series' newest than the
    /// namespace's `bufferPast`.
    pub fn samples_refused_too_old(&self) -> u64 {
        self.samples_refused_too_old.get()
    }

    /// Samples refused because they were further ahead of the clock than the namespace's
    /// `bufferFuture`.
    pub fn samples_refused_too_new(&self) -> u64 {
        self.samples_refused_too_new.get()
    }

    /// Samples cut from the heads into blocks on disk.
    pub fn samples_compacted(&self) -> u64 {
        self.samples_compacted.get()
    }

    /// Blocks merged into longer ones.
    pub fn blocks_merged(&self) -> u64 {
        self.blocks_merged.get()
    }

    /// Series in the heads, as of the last retention pass.
    pub fn head_series(&self) -> i64 {
        self.head_series.get()
    }

    /// The heads' memory in bytes (approximate), as of the last retention pass.
    pub fn head_bytes(&self) -> i64 {
        self.head_bytes.get()
    }

    /// Distinct label sets the heads hold (each once for all namespaces): counted at open, set
    /// by each retention pass.
    pub fn head_label_sets(&self) -> i64 {
        self.head_label_sets.get()
    }

    /// Blocks on disk, as of the last retention pass.
    pub fn blocks(&self) -> i64 {
        self.blocks.get()
    }

    /// Bytes of the blocks' chunks on disk, as of the last retention pass.
    pub fn block_bytes(&self) -> i64 {
        self.block_bytes.get()
    }

    /// Registers the counters under the `m3_storage` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let sub = registry.sub_registry_with_prefix("m3_storage");
        sub.register(
            "samples_written",
            "Samples accepted by the embedded store",
            self.samples_written.clone(),
        );
        sub.register(
            "series_created",
            "Series added to the embedded store's index",
            self.series_created.clone(),
        );
        sub.register(
            "samples_deleted_by_retention",
            "Samples removed from the embedded store because they were older than retention",
            self.samples_deleted_by_retention.clone(),
        );
        sub.register(
            "blocks_quarantined",
            "Blocks of the embedded store that did not open (damaged or missing files) and were moved to their namespace's quarantine directory at open",
            self.blocks_quarantined.clone(),
        );
        sub.register(
            "series_removed_by_retention",
            "Series dropped from the embedded store's index because retention emptied them",
            self.series_removed_by_retention.clone(),
        );
        sub.register(
            "writable",
            "1 while the embedded store can write, 0 after a failed write until it recovers",
            self.writable.clone(),
        );
        sub.register(
            "samples_refused",
            "Samples the embedded store refused, by reason (too_old: further behind their series' newest sample than the namespace's bufferPast; too_new: further ahead of the clock than its bufferFuture)",
            self.samples_refused.clone(),
        );
        sub.register(
            "head_series",
            "Series in the embedded store's in-memory heads",
            self.head_series.clone(),
        );
        sub.register(
            "head_bytes",
            "Approximate memory of the embedded store's heads (as of the last retention pass)",
            self.head_bytes.clone(),
        );
        sub.register(
            "head_label_sets",
            "Distinct label sets the embedded store's heads hold, each once however many namespaces have its series (counted at open, set by each retention pass)",
            self.head_label_sets.clone(),
        );
        sub.register(
            "blocks",
            "Blocks of the embedded store on disk (as of the last retention pass)",
            self.blocks.clone(),
        );
        sub.register(
            "block_bytes",
            "Bytes of the chunks in the embedded store's blocks (as of the last retention pass)",
            self.block_bytes.clone(),
        );
        sub.register(
            "head_chunk_file_bytes",
            "Bytes of the closed chunks the embedded store's heads keep in files (as of the last retention pass)",
            self.head_chunk_file_bytes.clone(),
        );
        for (op, gauge, help) in [
            (
                "write",
                &self.head_chunk_file_write_errors,
                "Closed chunks the heads' files could not take, kept in memory instead, since the heads opened",
            ),
            (
                "read",
                &self.head_chunk_file_read_errors,
                "Closed chunks the heads' files could not give back, missing from answers, since the heads opened",
            ),
        ] {
            sub.sub_registry_with_label(("op".into(), op.into()))
                .register("head_chunk_file_errors", help, gauge.clone());
        }
        sub.register(
            "samples_compacted",
            "Samples the embedded store cut from its heads into blocks on disk",
            self.samples_compacted.clone(),
        );
        sub.register(
            "blocks_merged",
            "Blocks the embedded store merged into one per past merge range",
            self.blocks_merged.clone(),
        );
        sub.register(
            "block_merge_errors",
            "Merges of a past range's blocks that failed",
            self.block_merge_errors.clone(),
        );
        sub.register(
            "write_errors",
            "Writes to the embedded store that failed",
            self.write_errors.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_names() {
        let m = StoreMetrics::default();
        m.samples_written.inc_by(3);
        let mut reg = Registry::default();
        m.register(&mut reg);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(out.contains("m3_storage_samples_written_total 3"), "{out}");
        assert!(
            out.contains("m3_storage_samples_deleted_by_retention_total 0"),
            "{out}"
        );
        m.samples_refused_too_old.inc_by(2);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(
            out.contains("m3_storage_samples_refused_total{reason=\"too_old\"} 2"),
            "{out}"
        );
        assert!(
            out.contains("m3_storage_samples_refused_total{reason=\"too_new\"} 0"),
            "{out}"
        );
        assert_eq!(out.matches("# HELP m3_storage_samples_refused").count(), 1);
        assert!(
            out.contains("m3_storage_samples_compacted_total 0"),
            "{out}"
        );
    }
}
