//! The coordinator: where Prometheus writes and queries, and where aggregated metrics are stored.

pub mod admin;
pub mod config;
pub mod downsample;
pub mod ingest;
pub mod limits;
pub mod metrics;
pub mod query_api;
pub mod remote_out;
pub mod remote_write;
pub mod series_cache;
pub mod server;

pub mod write;
