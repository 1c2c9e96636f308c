//! M3's protobuf messages and the two framings that carry them.
//!
//! The schemas in `proto/` are written from M3's field numbers, so every message here is
//! byte-compatible with M3's: an `m3aggregator` of this project can take rawtcp traffic from an M3
//! coordinator, and an M3 aggregator's output can be ingested here.
//!
//! | module | M3 package | used for |
//! |---|---|---|
//! | [`aggregationpb`] | `aggregationpb` | aggregation types, aggregation ID bitsets |
//! | [`policypb`] | `policypb` | storage policies (resolution, retention) |
//! | [`pipelinepb`], [`transformationpb`] | same | rollup pipelines |
//! | [`metricpb`] | `metricpb` | the rawtcp envelope `MetricWithMetadatas`, `AggregatedMetric` |
//! | [`msgpb`] | `msgpb` | m3msg `Message` and `Ack` |
//! | [`topicpb`] | `topicpb` | topics and consumer services |
//! | [`placementpb`] | `placementpb` | placements stored in KV |
//! | [`flushpb`] | flush times | per shard set flush times stored in KV |
//! | [`prometheus`] | `prometheus` | remote write v1 `WriteRequest` |
//!
//! Framing lives in [`framing`]: rawtcp frames are a zig-zag varint length followed by the
//! message; m3msg frames are a 4-byte big-endian length followed by the message. Both enforce a
//! maximum message size so that a corrupt or hostile length prefix cannot make a reader allocate
//! without bound.

#![allow(missing_docs)]

pub mod framing;
pub mod timed_frame;

/// Aggregation types and aggregation ID bitsets.
pub mod aggregationpb {
    include!(concat!(env!("OUT_DIR"), "/aggregationpb.rs"));
}
/// Storage, drop and routing policies.
pub mod policypb {
    include!(concat!(env!("OUT_DIR"), "/policypb.rs"));
}
/// Transformation types used in pipelines.
pub mod transformationpb {
    include!(concat!(env!("OUT_DIR"), "/transformationpb.rs"));
}
/// Rule pipelines and applied pipelines.
pub mod pipelinepb {
    include!(concat!(env!("OUT_DIR"), "/pipelinepb.rs"));
}
/// Metrics, metadata and the rawtcp envelope.
pub mod metricpb {
    include!(concat!(env!("OUT_DIR"), "/metricpb.rs"));
}
/// m3msg messages and acks.
pub mod msgpb {
    include!(concat!(env!("OUT_DIR"), "/msgpb.rs"));
}
/// Topics and consumer services.
pub mod topicpb {
    include!(concat!(env!("OUT_DIR"), "/topicpb.rs"));
}
/// Placements.
pub mod placementpb {
    include!(concat!(env!("OUT_DIR"), "/placementpb.rs"));
}
/// Flush times per shard set.
pub mod flushpb {
    include!(concat!(env!("OUT_DIR"), "/flushpb.rs"));
}
/// Prometheus remote write v1.
pub mod prometheus {
    include!(concat!(env!("OUT_DIR"), "/prometheus.rs"));
}

pub use prost::Message;
