//! Placement and topic admin API (being written).
