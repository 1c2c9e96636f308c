//! `downsample.rules`: mapping and rollup rules as M3's coordinator config writes them.
//!
//! ```yaml
//! downsample:
//!   rules:
//!     mappingRules:
//!       - name: "mysql at 1m"
//!         filter: "app:mysql*"
//!         aggregations: ["Max"]
//!         storagePolicies:
//!           - resolution: 1m
//!             retention: 40d
//!     rollupRules:
//!       - name: "requests by route"
//!         filter: "__name__:http_requests_total"
//!         transforms:
//!           - transform:
//!               type: "Increase"
//!           - rollup:
//!               metricName: "http_requests_by_route"
//!               groupBy: ["route"]
//!               aggregations: ["Sum"]
//!           - transform:
//!               type: "Add"
//!         storagePolicies:
//!           - resolution: 10s
//!             retention: 2d
//! ```
//!
//! These structs only read the YAML; [`crate::RuleSet::compile`] checks them, every rule at
//! once, and names the rule, the key and the reason of each problem.

use std::time::Duration;

use serde::Deserialize;

/// `downsample.rules`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RulesConfig {
    /// Mapping rules: aggregations of a series under its own ID.
    #[serde(default)]
    pub mapping_rules: Vec<MappingRuleConfig>,
    /// Rollup rules: aggregations across series, under a new ID.
    #[serde(default)]
    pub rollup_rules: Vec<RollupRuleConfig>,
}

/// One mapping rule (M3's `MappingRuleConfiguration`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MappingRuleConfig {
    /// The rule's name (in errors and logs).
    #[serde(default)]
    pub name: String,
    /// Which series (see [`crate::filter`]).
    #[serde(default)]
    pub filter: String,
    /// Aggregation types (`Last`, `Max`, `Sum`…); empty: the metric type's default.
    #[serde(default)]
    pub aggregations: Vec<String>,
    /// Where the aggregated values go; each must be an aggregated namespace's.
    #[serde(default)]
    pub storage_policies: Vec<StoragePolicyConfig>,
    /// Drop the series: no raw write and no automatic mapping rules (other rules still apply).
    #[serde(default)]
    pub drop: bool,
    /// Tags added to the output series: this rule's aggregations are written under the
    /// series' ID with these tags added.
    #[serde(default)]
    pub tags: Vec<TagConfig>,
}

/// One rollup rule (M3's `RollupRuleConfiguration`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RollupRuleConfig {
    /// The rule's name.
    #[serde(default)]
    pub name: String,
    /// Which series.
    #[serde(default)]
    pub filter: String,
    /// The pipeline: transforms, at most one leading aggregation, rollups.
    #[serde(default)]
    pub transforms: Vec<TransformConfig>,
    /// Where the rolled-up values go.
    #[serde(default)]
    pub storage_policies: Vec<StoragePolicyConfig>,
    /// Tags added to the rollup series' ID.
    #[serde(default)]
    pub tags: Vec<TagConfig>,
}

/// One step of a rollup rule: exactly one of `transform`, `aggregate`, `rollup`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TransformConfig {
    /// A transform (`Absolute`, `PerSecond`, `Increase`, `Add`, `Reset`).
    #[serde(default)]
    pub transform: Option<TransformOpConfig>,
    /// An aggregation of the series itself, before anything else.
    #[serde(default)]
    pub aggregate: Option<AggregateOpConfig>,
    /// A rollup across series.
    #[serde(default)]
    pub rollup: Option<RollupOpConfig>,
}

/// `transform: {type}`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TransformOpConfig {
    /// The transform's name.
    #[serde(rename = "type", default)]
    pub kind: String,
}

/// `aggregate: {type}`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AggregateOpConfig {
    /// The aggregation's name.
    #[serde(rename = "type", default)]
    pub kind: String,
}

/// `rollup: {metricName, groupBy | excludeBy, aggregations}`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RollupOpConfig {
    /// The rollup series' name; `{{ .MetricName }}` stands for the source's name.
    #[serde(default)]
    pub metric_name: String,
    /// Tags kept (the others are summed over); a series lacking one is not rolled up.
    #[serde(default)]
    pub group_by: Option<Vec<String>>,
    /// Tags summed over (all others are kept).
    #[serde(default)]
    pub exclude_by: Option<Vec<String>>,
    /// Aggregation types across the series; empty: the default (Last for gauges).
    #[serde(default)]
    pub aggregations: Vec<String>,
}

/// `{resolution, retention}`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StoragePolicyConfig {
    /// Window size, e.g. `10s`.
    #[serde(with = "m3_config::duration")]
    pub resolution: Duration,
    /// Retention, e.g. `2d`.
    #[serde(with = "m3_config::duration")]
    pub retention: Duration,
}

/// `{name, value}`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TagConfig {
    /// Tag name.
    #[serde(default)]
    pub name: String,
    /// Tag value.
    #[serde(default)]
    pub value: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_block_parses() {
        let doc = include_str!("config.rs");
        let yaml: String = doc
            .lines()
            .skip_while(|l| !l.starts_with("//! downsample:"))
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!").strip_prefix(' ').unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        #[derive(Deserialize)]
        struct Downsample {
            downsample: Rules,
        }
        #[derive(Deserialize)]
        struct Rules {
            rules: RulesConfig,
        }
        let parsed: Downsample = serde_saphyr::from_str(&yaml).unwrap();
        let rules = parsed.downsample.rules;
        assert_eq!(rules.mapping_rules[0].aggregations, vec!["Max"]);
        let rollup = &rules.rollup_rules[0];
        assert_eq!(rollup.transforms.len(), 3);
        assert_eq!(
            rollup.transforms[1].rollup.as_ref().unwrap().group_by,
            Some(vec!["route".to_string()])
        );
        assert_eq!(
            rollup.storage_policies[0].resolution,
            Duration::from_secs(10)
        );
    }
}
