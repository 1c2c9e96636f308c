//! M3's metric model: the vocabulary every other crate speaks.
//!
//! * [`id`]: metric IDs. A Prometheus series becomes an ID by sorting its labels by name and
//!   encoding them with M3's tag encoding, so the same series always yields the same bytes, and
//!   so the same shard, on every coordinator.
//! * [`label_bytes`]: copying label names and values without a `memcpy` call each.
//! * [`metric_type`]: counters, timers and gauges.
//! * [`aggregation`]: the 24 aggregation types, their bitset IDs and the defaults per metric type.
//! * [`policy`]: storage policies such as `10s:2d` or `1m@1s:40d`, written with M3's duration
//!   strings (`m3_config::duration`).
//!
//! This crate does no I/O; conversions to the protobuf messages of `m3-proto` live beside each
//! type.
//!
//! ```
//! use m3_metric::policy::StoragePolicy;
//! let policy: StoragePolicy = "1m@1s:40d".parse().unwrap();
//! assert_eq!(policy.resolution.window.as_secs(), 60);
//! assert_eq!(policy.to_string(), "1m@1s:40d");
//! ```

pub mod aggregation;
pub mod id;
pub mod label_bytes;
pub mod metric_type;
pub mod policy;

pub use aggregation::{AggregationId, AggregationType};
pub use metric_type::MetricType;
pub use policy::{Resolution, Retention, StoragePolicy};
