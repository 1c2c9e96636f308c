//! Prometheus query API (being written).
