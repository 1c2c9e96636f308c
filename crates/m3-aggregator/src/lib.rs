//! The aggregation tier's engine: windows, shards, flushes, and the rawtcp ingest server.
//!
//! An aggregator receives every sample of the shards it owns (from coordinators over rawtcp),
//! aggregates each series per storage policy into epoch-aligned windows, and when a window
//! closes emits one value per aggregation type, timestamped with the window's end. Replicas of
//! a shard set aggregate the same data; only the leader emits (see [`flush`]).
//!
//! | module | what it holds |
//! |---|---|
//! | [`aggregator`] | [`Aggregator`]: owned shards, `add_untimed` / `add_timed`, `flush`, `expire_entries` |
//! | [`metadata`] | staged metadatas → (aggregation types, storage policy) targets |
//! | [`aggregation`] | per-window state: Last, Sum, moments, timers |
//! | [`quantile`] | timer quantiles: exact below 3 values, DDSketch (1 % relative error) above |
//! | [`flush`] | leader/follower flush modes, outputs, flush times |
//! | [`instance`] | a cluster member: placement, election, the flush manager's tasks |
//! | [`flush_manager`] | the flush loop: leader emits and persists flush times, follower discards |
//! | [`output`] | [`output::OutputSink`]: the output's consumer when it runs in the same process |
//! | [`error`] | [`AddError`] and the counted [`RejectReason`]s |
//! | [`metrics`] | self-metrics (`prometheus-client`) |
//! | [`options`] | [`AggregatorOptions`], with M3's defaults |
//! | [`ingest`] | `MetricWithMetadatas` → engine calls, shared by the servers |
//! | [`rawtcp`] | [`serve_rawtcp`]: the varint-framed TCP server |
//! | [`m3msg_ingest`] | the m3msg ingest server |
//! | [`server`] | one aggregator server: engine, instance and listeners, shut down in order |
//!
//! ```
//! use std::sync::Arc;
//! use m3_aggregator::{AggregatedOutput, Aggregator, AggregatorOptions, FlushMode, Metadatas, ShardAssignment};
//! use m3_metric::MetricType;
//!
//! let agg = Aggregator::new(AggregatorOptions::default(), Arc::new(|_id: &[u8]| 0));
//! agg.set_shards(vec![ShardAssignment::unbounded(0)], 0);
//! let now = 1_700_000_003_000_000_000; // 3s into a 10s window
//! agg.add_untimed(MetricType::Counter, b"requests", &[2.0], Metadatas::Default, now).unwrap();
//! agg.add_untimed(MetricType::Counter, b"requests", &[5.0], Metadatas::Default, now + 1).unwrap();
//!
//! let mut out: Vec<AggregatedOutput> = Vec::new();
//! agg.flush(now + 10_000_000_000, FlushMode::Leader, &mut out);
//! assert_eq!(out.len(), 1);
//! assert_eq!(out[0].id, b"requests"); // counter Sum keeps its name
//! assert_eq!(out[0].value, 7.0);
//! assert_eq!(out[0].time_nanos, 1_700_000_010_000_000_000); // window end
//! ```

//! ## Cost
//!
//! The add path allocates nothing per sample once a series and its window exist: the series is
//! found by its borrowed ID bytes, metadata is read in place from the decoded message, and the
//! elem's (policy, aggregation) pair is an index into a per-shard table. Measured with
//! `cargo bench -p m3-aggregator` (2-core VM, shared, one thread, 70-byte tag-encoded IDs,
//! murmur3 as the shard function; see docs/benchmarks.md for the run):
//!
//! | benchmark | result |
//! |---|---|
//! | `aggregator_add/timed_gauge/100k` | ≈ 3.3 M samples/s |
//! | `aggregator_add/timed_gauge/1M` | ≈ 1.8 M samples/s (cache misses dominate) |
//! | `aggregator_add/timed_gauge_new_window/100k` | ≈ 2.7 M samples/s (every add opens a window) |
//! | `window_flush/untimed_counter/100k` | ≈ 1.7 M windows/s (one output each) |
//! | `memory` (1M timed gauges, `Last`, one policy) | ≈ 139 B/series with one open window, ≈ 283 B with the eight a 10s series keeps open under the default 1m past buffer |

#![warn(missing_docs, unreachable_pub)]

pub mod aggregation;
pub mod aggregator;
pub mod campaign;
pub mod client;
pub mod config;

mod entry;
pub mod error;
pub mod flush;
pub mod flush_manager;
mod forward;
pub mod http;
mod id_arena;
mod id_dictionary;
mod indexed_slots;
pub mod ingest;
pub mod instance;
pub mod m3msg_ingest;
pub mod metadata;
pub mod metrics;
pub mod options;
pub mod output;
mod pipeline;
pub mod quantile;
pub mod rawtcp;
pub mod server;
mod shard;
mod shard_hints;
pub mod topic_producer;

pub use aggregator::{
    Aggregator, EngineStats, FlushPass, ForwardedWrite, KnownShard, ShardAssignment, ShardFn,
    TimedSample,
};
pub use error::{AddError, RejectReason};
pub use flush::{AggregatedOutput, Category, FlushMode, FlushResult, ForwardedOutput};
pub use metadata::Metadatas;
pub use metrics::Metrics;
pub use options::AggregatorOptions;
pub use rawtcp::serve_rawtcp;
