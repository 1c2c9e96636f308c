//! M3's KV override block (`kvConfig:`, `topicServiceOverride:`): which namespace,
//! environment and zone of the cluster KV a setting lives in.

use serde::Deserialize;

/// A KV scope as M3 keys it (its `kv.OverrideConfiguration`). Each key is optional; the user
/// fills in its own defaults. Unknown keys are errors.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KvScopeConfig {
    /// KV namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Environment.
    #[serde(default)]
    pub environment: Option<String>,
    /// Zone.
    #[serde(default)]
    pub zone: Option<String>,
}
