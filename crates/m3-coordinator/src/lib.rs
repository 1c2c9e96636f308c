//! The coordinator: where Prometheus writes and queries, and where aggregated metrics are stored.

pub mod config;
pub mod downsample;
pub mod remote_write;
