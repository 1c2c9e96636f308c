//! The embedded time-series store of m3-rs.
//!
//! The coordinator writes raw Prometheus samples into the *unaggregated* namespace and the
//! aggregators' output into the *aggregated* namespace matching each storage policy; the HTTP
//! query layer reads them back. This crate is that storage: it knows about namespaces, series,
//! samples and queries, and nothing about the cluster.
//!
//! # A tour
//!
//! ```
//! use std::time::Duration;
//! use m3_storage::{Labels, Matcher, NamespaceConfig, Store};
//!
//! let dir = tempfile::tempdir()?;
//! let store = Store::open(dir.path(), vec![
//!     NamespaceConfig::unaggregated("default", Duration::from_secs(2 * 24 * 3600)),
//!     NamespaceConfig::aggregated("agg", Duration::from_secs(60), Duration::from_secs(40 * 24 * 3600)),
//! ])?;
//!
//! // The ingest path finds the namespace for a storage policy (1m:40d).
//! let agg = store.namespaces().namespace_for(
//!     Duration::from_secs(60), Duration::from_secs(40 * 24 * 3600))?;
//! assert_eq!(agg.name, "agg");
//!
//! // Write a batch (one remote-write request's worth).
//! let a = Labels::new([("__name__", "up"), ("job", "api")])?;
//! let b = Labels::new([("__name__", "up"), ("job", "db")])?;
//! store.write_batch("default", &[(&a, 10_000, 1.0), (&b, 10_000, 0.0), (&a, 20_000, 1.0)])?;
//!
//! // Raw reads with matchers.
//! let found = store.select("default", &[Matcher::regex("job", "a.*")?], 0, 30_000)?;
//! assert_eq!(found.len(), 1);
//! assert_eq!(found[0].samples, vec![(10_000, 1.0), (20_000, 1.0)]);
//!
//! // Serialized the way Prometheus' HTTP API writes a matrix.
//! assert_eq!(
//!     serde_json::to_string(&found)?,
//!     r#"[{"metric":{"__name__":"up","job":"api"},"values":[[10,"1"],[20,"1"]]}]"#
//! );
//!
//! // Retention, typically from a background task.
//! let report = store.enforce_retention(40 * 24 * 3600 * 1000)?;
//! assert_eq!(report.samples_deleted(), 3);
//! assert_eq!(report.series_removed(), 2);
//! store.close()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Modules
//!
//! * [`namespace`]: namespace configuration and lookups by name and storage policy.
//! * [`store`]: opening the store, writing, flushing, compacting; the on-disk layout.
//! * [`query`]: `select`, `series`, `label_names`, `label_values`.
//! * [`result`]: read results and their Prometheus JSON form.
//! * [`retention`]: deleting expired samples, once or from a background thread.
//! * [`metrics`]: the store's self-metrics.
//! * [`tsdb`]: the time-series engine under the store: chunks, the write-ahead log, the head,
//!   blocks, and the per-namespace database that ties them together.

#![warn(missing_docs, unreachable_pub)]

pub mod error;
pub mod labels;
pub mod matcher;
pub mod metrics;
pub mod namespace;
pub mod query;
pub mod result;
pub mod retention;
pub mod store;
pub mod tsdb;

pub use error::{Error, Result};
pub use labels::{
    AsLabelsView, Labels, LabelsBatch, LabelsError, LabelsView, MAX_ENCODED_LABELS_BYTES,
    METRIC_NAME_LABEL,
};
pub use matcher::{AnchoredRegex, Matcher};
pub use metrics::StoreMetrics;
pub use namespace::{NamespaceConfig, NamespaceKind, Namespaces};
pub use result::{Point, Series, format_value};
pub use retention::{NamespaceRetention, RetentionReport, RetentionTask};
pub use store::{SampleRef, Store, WriteSummary};
