//! Rules compiled and checked, and matched against a series.
//!
//! [`RuleSet::compile`] turns the YAML ([`crate::config`]) into rules, checking every rule and
//! reporting every problem at once (the rule, the key, the reason). [`RuleSet::matches`] gives,
//! for one series, what M3's `activeRuleSet.ForwardMatch` gives the coordinator:
//!
//! * **pipelines for the series' own ID**: one per matching mapping rule (its aggregations and
//!   storage policies), and one per matching rollup rule that starts with a transform or an
//!   aggregation: the pipeline travels with the sample (e.g. `Increase → rollup(ID, Sum) →
//!   Add`), and the aggregator owning the series applies its head and forwards the rest under
//!   the rollup ID, computed here from the series' tags;
//! * **rollup metrics**: a rollup rule that starts with a rollup is applied by the coordinator
//!   itself, which sends the sample under the rollup ID with the rest of the pipeline;
//! * **tagged metrics**: a mapping rule with `tags` sends the sample under its own ID with those
//!   tags added (a rule tag replaces a series tag of the same name; M3 appends it and the
//!   write then fails), aggregated as the rule says;
//! * the storage policies the mapping rules set (they replace the automatic mapping rules for
//!   those policies) and whether a `drop` rule matched.
//!
//! Prometheus samples are gauges to M3's aggregator, so aggregations must be valid for gauges:
//! `Last, Min, Max, Mean, Count, Sum, SumSq, Stdev`. A rule asking for quantiles of a
//! Prometheus sample is refused at startup rather than failing every write.

use std::fmt;

use m3_metric::{AggregationId, AggregationType, MetricType, StoragePolicy};
use m3_proto::{aggregationpb, metricpb, pipelinepb};

use crate::config::{RollupRuleConfig, RulesConfig, StoragePolicyConfig, TagConfig};
use crate::filter::Filter;
use crate::rollup_id::{Grouping, METRIC_NAME_TEMPLATE, RollupName};
use crate::transform::Transform;

/// One problem of one rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// The rule's name (or its position when unnamed).
    pub rule: String,
    /// The config key, e.g. `downsample.rules.rollupRules[0].transforms[1].rollup.metricName`.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rule {:?}, {}: {}", self.rule, self.key, self.reason)
    }
}

/// Every problem found in the rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct RuleErrors(pub Vec<RuleError>);

impl fmt::Display for RuleErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&lines.join("; "))
    }
}

/// One step of a rollup rule's pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Transform(Transform),
    Rollup(RollupOp),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct RollupOp {
    name: RollupName,
    aggregation: AggregationId,
}

#[derive(Debug, Clone)]
struct MappingRule {
    filter: Filter,
    aggregation: AggregationId,
    policies: Vec<StoragePolicy>,
    drop: bool,
    /// Tags added to the output series, sorted by name; none: the output keeps the series' ID.
    tags: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Debug, Clone)]
struct RollupRule {
    filter: Filter,
    /// The series' own aggregation before the pipeline: a leading `aggregate`, if any. A rule
    /// with one keeps the series' own ID up to its first rollup even when that comes next.
    aggregation: Option<AggregationId>,
    ops: Vec<Op>,
    policies: Vec<StoragePolicy>,
}

/// What the rules say about one series.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Matched {
    /// Pipelines for the series' own ID (mapping rules, and rollup rules that start with a
    /// transform or an aggregation).
    pub pipelines: Vec<metricpb::PipelineMetadata>,
    /// The storage policies of the matching mapping rules: the automatic mapping rules do not
    /// apply for these.
    pub mapping_policies: Vec<StoragePolicy>,
    /// A matching mapping rule drops the series: no raw write, no automatic rules.
    pub drop: bool,
    /// Samples to send under rollup IDs (rollup rules that start with a rollup): the ID and
    /// its pipeline.
    pub rollups: Vec<(Vec<u8>, metricpb::PipelineMetadata)>,
    /// Samples to send under the series' ID with a mapping rule's tags added: the ID and the
    /// rule's pipeline.
    pub tagged: Vec<(Vec<u8>, metricpb::PipelineMetadata)>,
}

impl Matched {
    /// Whether no rule matched.
    pub fn is_empty(&self) -> bool {
        self.pipelines.is_empty() && self.rollups.is_empty() && self.tagged.is_empty() && !self.drop
    }
}

/// Compiled mapping and rollup rules.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    mapping: Vec<MappingRule>,
    rollup: Vec<RollupRule>,
}

impl RuleSet {
    /// Compiles `config` (found under `key` in the config file, e.g. `downsample.rules`),
    /// accepting only storage policies in `available` (the aggregated namespaces').
    ///
    /// # Errors
    /// Every problem of every rule: a bad or empty filter, an unknown aggregation or transform,
    /// an aggregation not valid for Prometheus samples, a rollup without `metricName` or with
    /// both `groupBy` and `excludeBy`, no transforms, more than one derivative in a row, a
    /// storage policy no namespace has, `drop` with storage policies, a repeated rule name.
    pub fn compile(
        config: &RulesConfig,
        key: &str,
        available: &[StoragePolicy],
    ) -> Result<RuleSet, RuleErrors> {
        let mut errors = Vec::new();
        let mut names: Vec<String> = Vec::new();
        let mut check_name =
            |name: &str, rule: &str, rule_key: &str, errors: &mut Vec<RuleError>| {
                if !name.is_empty() {
                    if names.iter().any(|n| n == name) {
                        errors.push(RuleError {
                            rule: rule.into(),
                            key: format!("{rule_key}.name"),
                            reason: "another rule has the same name".into(),
                        });
                    }
                    names.push(name.to_string());
                }
            };
        let mut set = RuleSet::default();
        for (i, rule) in config.mapping_rules.iter().enumerate() {
            let rule_key = format!("{key}.mappingRules[{i}]");
            let label = label(&rule.name, "mapping", i);
            check_name(&rule.name, &label, &rule_key, &mut errors);
            let mut ctx = Ctx {
                rule: label,
                key: rule_key,
                errors: &mut errors,
            };
            let filter = ctx.filter(&rule.filter);
            let aggregation = ctx.aggregations(&rule.aggregations, "aggregations");
            let policies = ctx.policies(&rule.storage_policies, available);
            if rule.drop && !rule.storage_policies.is_empty() {
                ctx.fail("drop", "a drop rule takes no storagePolicies");
            }
            if !rule.drop && rule.storage_policies.is_empty() {
                ctx.fail(
                    "storagePolicies",
                    "a mapping rule needs storage policies (or drop: true)",
                );
            }
            let tags = ctx.tags(&rule.tags);
            if rule.drop && !rule.tags.is_empty() {
                ctx.fail("tags", "a drop rule writes no series to add tags to");
            }
            if let (Some(filter), Some(aggregation), Some(policies), Some(tags)) =
                (filter, aggregation, policies, tags)
            {
                set.mapping.push(MappingRule {
                    filter,
                    aggregation,
                    policies,
                    drop: rule.drop,
                    tags,
                });
            }
        }
        for (i, rule) in config.rollup_rules.iter().enumerate() {
            let rule_key = format!("{key}.rollupRules[{i}]");
            let label = label(&rule.name, "rollup", i);
            check_name(&rule.name, &label, &rule_key, &mut errors);
            let mut ctx = Ctx {
                rule: label,
                key: rule_key,
                errors: &mut errors,
            };
            let filter = ctx.filter(&rule.filter);
            let policies = ctx.policies(&rule.storage_policies, available);
            if rule.storage_policies.is_empty() {
                ctx.fail("storagePolicies", "a rollup rule needs storage policies");
            }
            let pipeline = ctx.pipeline(rule);
            if let (Some(filter), Some(policies), Some((aggregation, ops))) =
                (filter, policies, pipeline)
            {
                set.rollup.push(RollupRule {
                    filter,
                    aggregation,
                    ops,
                    policies,
                });
            }
        }
        if errors.is_empty() {
            Ok(set)
        } else {
            Err(RuleErrors(errors))
        }
    }

    /// Whether there is no rule.
    pub fn is_empty(&self) -> bool {
        self.mapping.is_empty() && self.rollup.is_empty()
    }

    /// The rules' verdict on a series with `tags` (sorted by name). The synthetic tags M3 adds
    /// for matching are `__m3_type__` (`gauge`: every Prometheus sample) and
    /// `__m3_prom_type__` (`prom_type`, from the `Prometheus-Metric-Type` header, else
    /// `unknown`).
    pub fn matches(&self, tags: &[(&[u8], &[u8])], prom_type: &[u8]) -> Matched {
        let lookup = |name: &[u8]| -> Option<&[u8]> {
            match name {
                b"__m3_type__" => Some(b"gauge"),
                b"__m3_prom_type__" => Some(prom_type),
                _ => tags.iter().find(|(n, _)| *n == name).map(|(_, v)| *v),
            }
        };
        let mut matched = Matched::default();
        for rule in &self.mapping {
            if !rule.filter.matches(lookup) {
                continue;
            }
            if rule.drop {
                matched.drop = true;
                continue;
            }
            matched.mapping_policies.extend(&rule.policies);
            let pipeline = pipeline_metadata(rule.aggregation, &rule.policies, Vec::new());
            if rule.tags.is_empty() {
                matched.pipelines.push(pipeline);
            } else {
                let mut id = Vec::new();
                if tagged_id(tags, &rule.tags, &mut id) {
                    matched.tagged.push((id, pipeline));
                }
            }
        }
        let mut id = Vec::new();
        'rules: for rule in &self.rollup {
            if !rule.filter.matches(lookup) {
                continue;
            }
            let mut applied = Vec::with_capacity(rule.ops.len());
            for op in &rule.ops {
                applied.push(match op {
                    Op::Transform(t) => pipelinepb::AppliedPipelineOp {
                        r#type: pipelinepb::applied_pipeline_op::Type::Transformation as i32,
                        transformation: Some(pipelinepb::TransformationOp {
                            r#type: t.to_proto(),
                        }),
                        rollup: None,
                    },
                    Op::Rollup(rollup) => {
                        if !rollup.name.build(tags, &mut id) {
                            // The series lacks a groupBy tag: this rule does not roll it up.
                            continue 'rules;
                        }
                        pipelinepb::AppliedPipelineOp {
                            r#type: pipelinepb::applied_pipeline_op::Type::Rollup as i32,
                            transformation: None,
                            rollup: Some(pipelinepb::AppliedRollupOp {
                                id: id.clone().into(),
                                aggregation_id: Some(aggregationpb::AggregationId {
                                    id: rollup.aggregation.0,
                                }),
                            }),
                        }
                    }
                });
            }
            if let (None, Some(Op::Rollup(first))) = (rule.aggregation, rule.ops.first()) {
                // Applied here: the sample goes out under the rollup ID, with the rest.
                let rollup_id = applied
                    .first()
                    .and_then(|op| op.rollup.as_ref())
                    .map(|r| r.id.to_vec())
                    .unwrap_or_default();
                applied.remove(0);
                matched.rollups.push((
                    rollup_id,
                    pipeline_metadata(first.aggregation, &rule.policies, applied),
                ));
            } else {
                matched.pipelines.push(pipeline_metadata(
                    rule.aggregation.unwrap_or(AggregationId::DEFAULT),
                    &rule.policies,
                    applied,
                ));
            }
        }
        matched.pipelines.dedup();
        matched
    }
}

/// Writes into `out` the ID of a series with `tags` (sorted by name) with a mapping rule's
/// `rule_tags` (sorted) added, replacing series tags of the same name; M3's `__m3*` tags of
/// the series are left out. `false` when the ID cannot be encoded.
fn tagged_id(tags: &[(&[u8], &[u8])], rule_tags: &[(Vec<u8>, Vec<u8>)], out: &mut Vec<u8>) -> bool {
    out.clear();
    let mut merged: Vec<(&[u8], &[u8])> = tags
        .iter()
        .filter(|(n, _)| !n.starts_with(b"__m3") && !rule_tags.iter().any(|(r, _)| r == n))
        .copied()
        .chain(rule_tags.iter().map(|(n, v)| (n.as_slice(), v.as_slice())))
        .collect();
    merged.sort_by(|a, b| a.0.cmp(b.0));
    m3_metric::id::encode_tags(merged, out).is_ok()
}

/// A pipeline's metadata: aggregation, storage policies, applied operations.
fn pipeline_metadata(
    aggregation: AggregationId,
    policies: &[StoragePolicy],
    ops: Vec<pipelinepb::AppliedPipelineOp>,
) -> metricpb::PipelineMetadata {
    metricpb::PipelineMetadata {
        aggregation_id: Some(aggregationpb::AggregationId { id: aggregation.0 }),
        storage_policies: policies.iter().map(StoragePolicy::to_proto).collect(),
        pipeline: (!ops.is_empty()).then_some(pipelinepb::AppliedPipeline { ops }),
        ..Default::default()
    }
}

fn label(name: &str, kind: &str, index: usize) -> String {
    if name.is_empty() {
        format!("{kind} rule #{index} (unnamed)")
    } else {
        name.to_string()
    }
}

/// Checks of one rule, collecting errors.
struct Ctx<'a> {
    rule: String,
    key: String,
    errors: &'a mut Vec<RuleError>,
}

impl Ctx<'_> {
    fn fail(&mut self, key: &str, reason: impl Into<String>) {
        self.errors.push(RuleError {
            rule: self.rule.clone(),
            key: format!("{}.{key}", self.key),
            reason: reason.into(),
        });
    }

    fn filter(&mut self, text: &str) -> Option<Filter> {
        Filter::parse(text)
            .map_err(|e| self.fail("filter", e.to_string()))
            .ok()
    }

    fn aggregations(&mut self, names: &[String], key: &str) -> Option<AggregationId> {
        let mut types = Vec::new();
        let mut ok = true;
        for (i, name) in names.iter().enumerate() {
            match name.parse::<AggregationType>() {
                Ok(t) if t.is_valid_for(MetricType::Gauge) => types.push(t),
                Ok(t) => {
                    self.fail(
                        &format!("{key}[{i}]"),
                        format!(
                            "{t} cannot aggregate Prometheus samples, which are gauges to the \
                             aggregator: use one of Last, Min, Max, Mean, Count, Sum, SumSq, Stdev"
                        ),
                    );
                    ok = false;
                }
                Err(e) => {
                    self.fail(&format!("{key}[{i}]"), e.to_string());
                    ok = false;
                }
            }
        }
        ok.then(|| AggregationId::from_types(types))
    }

    fn policies(
        &mut self,
        configs: &[StoragePolicyConfig],
        available: &[StoragePolicy],
    ) -> Option<Vec<StoragePolicy>> {
        let mut ok = true;
        let mut out = Vec::new();
        for (i, c) in configs.iter().enumerate() {
            let policy = StoragePolicy::new(c.resolution, c.retention);
            let known = available.iter().any(|a| {
                a.resolution.window == policy.resolution.window && a.retention == policy.retention
            });
            if !known {
                let names: Vec<String> = available.iter().map(ToString::to_string).collect();
                self.fail(
                    &format!("storagePolicies[{i}]"),
                    format!(
                        "no aggregated namespace has resolution {:?} and retention {:?} \
                         (configured: {})",
                        c.resolution,
                        c.retention,
                        if names.is_empty() {
                            "none".to_string()
                        } else {
                            names.join(", ")
                        }
                    ),
                );
                ok = false;
            } else if out.contains(&policy) {
                self.fail(&format!("storagePolicies[{i}]"), "listed twice");
                ok = false;
            } else {
                out.push(policy);
            }
        }
        ok.then_some(out)
    }

    /// A rule's tags, sorted by name: each with a name and a value, no name twice, none of
    /// M3's `__m3*` option tags (graphite naming, dropped timestamps), which m3-rs does not
    /// implement.
    fn tags(&mut self, tags: &[TagConfig]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut ok = true;
        let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(tags.len());
        for (i, tag) in tags.iter().enumerate() {
            let key = format!("tags[{i}]");
            if tag.name.is_empty() || tag.value.is_empty() {
                self.fail(&key, "a tag needs a name and a value");
                ok = false;
            } else if tag.name.starts_with("__m3") {
                self.fail(
                    &format!("{key}.name"),
                    format!(
                        "{:?}: M3's __m3 option tags (graphite naming, dropped timestamps) are \
                         not supported",
                        tag.name
                    ),
                );
                ok = false;
            } else if out.iter().any(|(n, _)| *n == tag.name.as_bytes()) {
                self.fail(
                    &format!("{key}.name"),
                    format!("{:?} is listed twice", tag.name),
                );
                ok = false;
            } else {
                out.push((
                    tag.name.clone().into_bytes(),
                    tag.value.clone().into_bytes(),
                ));
            }
        }
        out.sort();
        ok.then_some(out)
    }

    /// The leading aggregation and the operations of a rollup rule.
    fn pipeline(&mut self, rule: &RollupRuleConfig) -> Option<(Option<AggregationId>, Vec<Op>)> {
        if rule.transforms.is_empty() {
            self.fail("transforms", "a rollup rule needs at least one transform");
            return None;
        }
        let rule_tags = self.tags(&rule.tags);
        let mut ok = rule_tags.is_some();
        let rule_tags = rule_tags.unwrap_or_default();
        let mut aggregation = None;
        let mut ops = Vec::new();
        let mut derivatives = 0;
        for (i, step) in rule.transforms.iter().enumerate() {
            let key = format!("transforms[{i}]");
            let set = usize::from(step.transform.is_some())
                + usize::from(step.aggregate.is_some())
                + usize::from(step.rollup.is_some());
            if set != 1 {
                self.fail(
                    &key,
                    "each step is exactly one of transform, aggregate, rollup",
                );
                ok = false;
                continue;
            }
            if let Some(t) = &step.transform {
                match Transform::parse(&t.kind) {
                    Some(t) => {
                        if t.is_binary() {
                            derivatives += 1;
                            if derivatives > 1 {
                                self.fail(
                                    &format!("{key}.transform.type"),
                                    "only first-order transforms are supported: one PerSecond \
                                     or Increase between two rollups",
                                );
                                ok = false;
                            }
                        }
                        ops.push(Op::Transform(t));
                    }
                    None => {
                        self.fail(
                            &format!("{key}.transform.type"),
                            format!(
                                "unknown transform {:?}: expected one of Absolute, PerSecond, \
                                 Increase, Add, Reset",
                                t.kind
                            ),
                        );
                        ok = false;
                    }
                }
            } else if let Some(a) = &step.aggregate {
                if i != 0 {
                    self.fail(
                        &format!("{key}.aggregate"),
                        "an aggregation must be the first step of a rollup rule",
                    );
                    ok = false;
                }
                match self.aggregations(
                    std::slice::from_ref(&a.kind),
                    &format!("{key}.aggregate.type"),
                ) {
                    Some(id) => aggregation = Some(id),
                    None => ok = false,
                }
            } else if let Some(r) = &step.rollup {
                derivatives = 0;
                let key = format!("{key}.rollup");
                if r.metric_name.is_empty() {
                    self.fail(&format!("{key}.metricName"), "a rollup needs a metricName");
                    ok = false;
                } else if r.metric_name.contains("{{")
                    && (r.metric_name.matches(METRIC_NAME_TEMPLATE).count() != 1
                        || r.metric_name
                            .replace(METRIC_NAME_TEMPLATE, "")
                            .contains("{{"))
                {
                    self.fail(
                        &format!("{key}.metricName"),
                        format!(
                            "the only template allowed, once, is {METRIC_NAME_TEMPLATE}: {:?}",
                            r.metric_name
                        ),
                    );
                    ok = false;
                }
                let grouping = match (&r.group_by, &r.exclude_by) {
                    (Some(_), Some(_)) => {
                        self.fail(&key, "set groupBy or excludeBy, not both");
                        ok = false;
                        continue;
                    }
                    (Some(by), None) => Grouping::By(sorted(by)),
                    (None, Some(ex)) => Grouping::Excluding(sorted(ex)),
                    (None, None) => Grouping::By(Vec::new()),
                };
                let Some(aggregation) =
                    self.aggregations(&r.aggregations, &format!("{key}.aggregations"))
                else {
                    ok = false;
                    continue;
                };
                ops.push(Op::Rollup(RollupOp {
                    name: RollupName {
                        metric_name: r.metric_name.clone(),
                        grouping,
                        tags: rule_tags.clone(),
                    },
                    aggregation,
                }));
            }
        }
        ok.then_some((aggregation, ops))
    }
}

fn sorted(names: &[String]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = names.iter().map(|n| n.clone().into_bytes()).collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policies() -> Vec<StoragePolicy> {
        vec!["10s:2d".parse().unwrap(), "1m:40d".parse().unwrap()]
    }

    fn compile(yaml: &str) -> Result<RuleSet, RuleErrors> {
        let config: RulesConfig = serde_saphyr::from_str(yaml).unwrap();
        RuleSet::compile(&config, "downsample.rules", &policies())
    }

    #[test]
    fn every_bad_rule_is_reported_with_its_name_and_key() {
        let errors = compile(
            r#"
mappingRules:
  - name: unknown aggregation
    filter: "__name__:a"
    aggregations: [Maximum]
    storagePolicies: [{resolution: 10s, retention: 2d}]
  - name: empty filter
    filter: ""
    storagePolicies: [{resolution: 10s, retention: 2d}]
  - name: no namespace
    filter: "__name__:a"
    storagePolicies: [{resolution: 5m, retention: 1y}]
  - name: quantile of a gauge
    filter: "__name__:a"
    aggregations: [P99]
    storagePolicies: [{resolution: 10s, retention: 2d}]
rollupRules:
  - name: no metric name
    filter: "__name__:a"
    transforms:
      - rollup: {groupBy: [x], aggregations: [Sum]}
    storagePolicies: [{resolution: 10s, retention: 2d}]
  - name: both groupings
    filter: "__name__:a"
    transforms:
      - rollup: {metricName: b, groupBy: [x], excludeBy: [y]}
    storagePolicies: [{resolution: 10s, retention: 2d}]
  - name: second derivative
    filter: "__name__:a"
    transforms:
      - transform: {type: Increase}
      - transform: {type: PerSecond}
      - rollup: {metricName: b, groupBy: [x]}
    storagePolicies: [{resolution: 10s, retention: 2d}]
"#,
        )
        .unwrap_err();
        let found = |rule: &str, key_end: &str, reason: &str| {
            errors
                .0
                .iter()
                .any(|e| e.rule == rule && e.key.ends_with(key_end) && e.reason.contains(reason))
        };
        assert!(
            found(
                "unknown aggregation",
                "mappingRules[0].aggregations[0]",
                "unknown aggregation type \"Maximum\""
            ),
            "{errors}"
        );
        assert!(
            found(
                "empty filter",
                "mappingRules[1].filter",
                "the filter is empty"
            ),
            "{errors}"
        );
        assert!(
            found(
                "no namespace",
                "mappingRules[2].storagePolicies[0]",
                "no aggregated namespace"
            ),
            "{errors}"
        );
        assert!(
            found("quantile of a gauge", "aggregations[0]", "gauges"),
            "{errors}"
        );
        assert!(
            found(
                "no metric name",
                "transforms[0].rollup.metricName",
                "needs a metricName"
            ),
            "{errors}"
        );
        assert!(
            found("both groupings", "transforms[0].rollup", "not both"),
            "{errors}"
        );
        assert!(
            found(
                "second derivative",
                "transforms[1].transform.type",
                "first-order"
            ),
            "{errors}"
        );
        assert_eq!(errors.0.len(), 7, "{errors}");
    }

    fn series<'a>(pairs: &'a [(&'a str, &'a str)]) -> Vec<(&'a [u8], &'a [u8])> {
        pairs
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .collect()
    }

    #[test]
    fn matching_yields_pipelines_rollups_and_drops() {
        let rules = compile(
            r#"
mappingRules:
  - name: mysql max
    filter: "app:mysql*"
    aggregations: [Max]
    storagePolicies: [{resolution: 1m, retention: 40d}]
  - name: drop debug
    filter: "level:debug"
    drop: true
rollupRules:
  - name: by route
    filter: "__name__:http_requests_total"
    transforms:
      - transform: {type: Increase}
      - rollup: {metricName: requests_by_route, groupBy: [route], aggregations: [Sum]}
      - transform: {type: Add}
    storagePolicies: [{resolution: 10s, retention: 2d}]
  - name: total first
    filter: "__name__:http_requests_total"
    transforms:
      - rollup: {metricName: requests_total, groupBy: [], aggregations: [Sum]}
    storagePolicies: [{resolution: 10s, retention: 2d}]
"#,
        )
        .unwrap();
        let mysql = rules.matches(
            &series(&[("__name__", "q"), ("app", "mysql-1")]),
            b"unknown",
        );
        assert_eq!(mysql.pipelines.len(), 1);
        assert_eq!(mysql.mapping_policies, vec!["1m:40d".parse().unwrap()]);
        assert!(!mysql.drop && mysql.rollups.is_empty());

        let debug = rules.matches(
            &series(&[("__name__", "q"), ("level", "debug")]),
            b"unknown",
        );
        assert!(debug.drop && debug.pipelines.is_empty());

        let http = rules.matches(
            &series(&[
                ("__name__", "http_requests_total"),
                ("pod", "p"),
                ("route", "/a"),
            ]),
            b"unknown",
        );
        assert_eq!(
            http.pipelines.len(),
            1,
            "transform first: travels with the series"
        );
        let ops = &http.pipelines[0].pipeline.as_ref().unwrap().ops;
        assert_eq!(ops.len(), 3);
        let rollup_id = ops[1].rollup.as_ref().unwrap().id.to_vec();
        assert_eq!(
            m3_metric::id::decode_tags(&rollup_id).unwrap(),
            vec![
                ("__name__".into(), "requests_by_route".into()),
                ("__rollup__".into(), "true".into()),
                ("route".into(), "/a".into()),
            ]
        );
        assert_eq!(
            http.rollups.len(),
            1,
            "rollup first: the coordinator applies it"
        );
        assert!(http.rollups[0].1.pipeline.is_none());

        let no_route = rules.matches(
            &series(&[("__name__", "http_requests_total"), ("pod", "p")]),
            b"unknown",
        );
        assert!(
            no_route.pipelines.is_empty(),
            "a missing groupBy tag: no rollup"
        );
        assert_eq!(no_route.rollups.len(), 1, "an empty groupBy needs no tag");
        assert!(
            rules
                .matches(&series(&[("__name__", "other")]), b"unknown")
                .is_empty()
        );
    }
    #[test]
    fn a_leading_aggregation_keeps_the_series_id_up_to_the_rollup() {
        let rules = compile(
            r#"
rollupRules:
  - name: max per pod then sum
    filter: "__name__:queue_depth"
    transforms:
      - aggregate: {type: Max}
      - rollup: {metricName: queue_depth_total, groupBy: [], aggregations: [Sum]}
    storagePolicies: [{resolution: 10s, retention: 2d}]
"#,
        )
        .unwrap();
        let matched = rules.matches(
            &series(&[("__name__", "queue_depth"), ("pod", "p")]),
            b"unknown",
        );
        assert!(
            matched.rollups.is_empty(),
            "each series is aggregated first, so nothing is rolled up at the coordinator"
        );
        assert_eq!(matched.pipelines.len(), 1);
        let pipeline = &matched.pipelines[0];
        assert_eq!(
            pipeline.aggregation_id.as_ref().map(|a| a.id),
            Some(AggregationId::from_types([AggregationType::Max]).0)
        );
        let ops = &pipeline.pipeline.as_ref().unwrap().ops;
        assert_eq!(ops.len(), 1);
        assert!(ops[0].rollup.is_some());
    }
    #[test]
    fn a_mapping_rule_with_tags_writes_under_the_tagged_id() {
        let rules = compile(
            r#"
mappingRules:
  - name: tagged max
    filter: "__name__:cpu"
    aggregations: [Max]
    storagePolicies: [{resolution: 1m, retention: 40d}]
    tags:
      - {name: tier, value: gold}
      - {name: host, value: any}
"#,
        )
        .unwrap();
        let matched = rules.matches(
            &series(&[
                ("__m3_type__", "gauge"),
                ("__name__", "cpu"),
                ("host", "h1"),
            ]),
            b"unknown",
        );
        assert!(matched.pipelines.is_empty(), "not under the series' own ID");
        assert_eq!(matched.mapping_policies, vec!["1m:40d".parse().unwrap()]);
        assert_eq!(matched.tagged.len(), 1);
        let (id, pipeline) = &matched.tagged[0];
        assert_eq!(
            m3_metric::id::decode_tags(id).unwrap(),
            vec![
                ("__name__".into(), "cpu".into()),
                ("host".into(), "any".into()),
                ("tier".into(), "gold".into()),
            ],
            "rule tags added, a rule tag replacing the series' tag, __m3 tags left out"
        );
        assert_eq!(
            pipeline.aggregation_id.as_ref().map(|a| a.id),
            Some(AggregationId::from_types([AggregationType::Max]).0)
        );
    }

    #[test]
    fn bad_rule_tags_are_reported() {
        let errors = compile(
            r#"
mappingRules:
  - name: graphite
    filter: "__name__:a"
    storagePolicies: [{resolution: 10s, retention: 2d}]
    tags: [{name: __m3_graphite_prefix__, value: stats}]
  - name: twice
    filter: "__name__:a"
    storagePolicies: [{resolution: 10s, retention: 2d}]
    tags: [{name: x, value: "1"}, {name: x, value: "2"}]
  - name: dropped
    filter: "__name__:a"
    drop: true
    tags: [{name: x, value: "1"}]
"#,
        )
        .unwrap_err();
        let found = |rule: &str, key_end: &str, reason: &str| {
            errors
                .0
                .iter()
                .any(|e| e.rule == rule && e.key.ends_with(key_end) && e.reason.contains(reason))
        };
        assert!(found("graphite", "tags[0].name", "__m3"), "{errors}");
        assert!(found("twice", "tags[1].name", "twice"), "{errors}");
        assert!(found("dropped", "mappingRules[2].tags", "drop"), "{errors}");
        assert_eq!(errors.0.len(), 3, "{errors}");
    }
}
