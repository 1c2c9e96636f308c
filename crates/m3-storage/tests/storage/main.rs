//! Integration tests of the embedded store against a real fjall database in a temp dir.

mod json;
mod model;
mod promql;
mod read;
mod retention;
mod write;

use std::path::Path;
use std::time::Duration;

use m3_storage::{Labels, NamespaceConfig, Store};

pub const RAW: &str = "default";
pub const AGG: &str = "agg_1m_40d";
pub const HOUR: Duration = Duration::from_secs(3600);

pub fn namespaces() -> Vec<NamespaceConfig> {
    vec![
        NamespaceConfig::unaggregated(RAW, 48 * HOUR),
        NamespaceConfig::aggregated(AGG, Duration::from_secs(60), 40 * 24 * HOUR),
    ]
}

pub fn open(dir: &Path) -> Store {
    Store::open(dir, namespaces()).expect("open store")
}

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    Labels::new(pairs.iter().copied()).expect("valid labels")
}

pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}
