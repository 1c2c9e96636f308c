//! Integration tests of the embedded store in a temporary data directory.

mod format;
mod json;
mod model;
mod read;
mod retention;
mod write;

use std::path::Path;
use std::time::Duration;

use m3_storage::{Labels, NamespaceConfig, Store};

/// The raw (unaggregated) namespace, 48h retention.
pub(crate) const RAW: &str = "default";
/// The aggregated namespace, 1m:40d.
pub(crate) const AGG: &str = "agg_1m_40d";
/// One hour.
pub(crate) const HOUR: Duration = Duration::from_secs(3600);

/// The two namespaces every test store has.
pub(crate) fn namespaces() -> Vec<NamespaceConfig> {
    vec![
        NamespaceConfig::unaggregated(RAW, 48 * HOUR),
        NamespaceConfig::aggregated(AGG, Duration::from_secs(60), 40 * 24 * HOUR),
    ]
}

/// Opens (or reopens) the store in `dir` with [`namespaces`].
pub(crate) fn open(dir: &Path) -> Store {
    Store::open(dir, namespaces()).expect("open store")
}

/// Labels from (name, value) pairs.
pub(crate) fn labels(pairs: &[(&str, &str)]) -> Labels {
    Labels::new(pairs.iter().copied()).expect("valid labels")
}

/// A fresh temporary directory, removed on drop.
pub(crate) fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}
