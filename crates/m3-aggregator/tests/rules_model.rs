//! Rollup rules through the engines, against a naive model.
//!
//! Random counters, gauges or timers of series `m{a, b}` go through a random rollup rule — an
//! optional aggregation of each series, optional head transforms, a rollup by `a` (or over
//! everything) with a random aggregation, optional tail transforms — compiled and matched by
//! `m3_rules` as the coordinator does. The engine owning the series aggregates and forwards; its
//! forwarded values are handed to a second engine (the one owning the rollup IDs), which
//! aggregates them and runs the tail. Some rules roll up a second time (over everything, after
//! the first rollup's tail), which a third engine receives. The model computes the same from
//! the samples with plain maps and loops: per series and window the series' aggregation, the
//! head transforms in window order, per group the rollup aggregation, the tail transforms, and
//! again for a second rollup. Every output window must be there with the model's value, and no
//! other.
//!
//! Quantiles are left out: rules refuse them (Prometheus samples are gauges), and a timer's own
//! quantiles are covered against exact ranks by the aggregator's model test.

use std::collections::BTreeMap;
use std::sync::Arc;

use m3_aggregator::metadata::build;
use m3_aggregator::{
    AggregatedOutput, Aggregator, AggregatorOptions, FlushMode, ForwardedWrite, Metadatas,
    ShardAssignment,
};
use m3_metric::{AggregationType, MetricType, StoragePolicy};
use m3_proto::metricpb;
use m3_rules::config::RulesConfig;
use m3_rules::{RuleSet, Transform, TransformState, transform};
use proptest::prelude::*;

const S: i64 = 1_000_000_000;
const T0: i64 = 1_700_000_000 * S;
const R: i64 = 10 * S;

#[derive(Debug, Clone)]
struct Rule {
    kind: MetricType,
    own: Option<AggregationType>,
    head: Vec<Transform>,
    group_by_a: bool,
    rollup: AggregationType,
    tail: Vec<Transform>,
    /// A second rollup over every group, with its own tail.
    second: Option<(AggregationType, Vec<Transform>)>,
}

fn transforms(max_derivatives: usize) -> impl Strategy<Value = Vec<Transform>> {
    prop::collection::vec(
        prop_oneof![
            Just(Transform::Absolute),
            Just(Transform::Add),
            Just(Transform::Increase),
            Just(Transform::PerSecond),
        ],
        0..3,
    )
    .prop_map(move |ts| {
        let mut derivatives = 0;
        ts.into_iter()
            .filter(|t| {
                if t.is_binary() {
                    derivatives += 1;
                }
                !t.is_binary() || derivatives <= max_derivatives
            })
            .collect()
    })
}

fn rollup_aggregation() -> impl Strategy<Value = AggregationType> {
    prop_oneof![
        Just(AggregationType::Sum),
        Just(AggregationType::Max),
        Just(AggregationType::Min),
        Just(AggregationType::Count),
        Just(AggregationType::Mean),
    ]
}

fn own_aggregation() -> impl Strategy<Value = AggregationType> {
    prop_oneof![
        Just(AggregationType::Last),
        Just(AggregationType::SumSq),
        Just(AggregationType::Stdev),
        rollup_aggregation(),
    ]
}

fn rule_strategy() -> impl Strategy<Value = Rule> {
    (
        prop_oneof![
            Just(MetricType::Counter),
            Just(MetricType::Gauge),
            Just(MetricType::Timer),
        ],
        prop::option::of(own_aggregation()),
        own_aggregation(),
        transforms(1),
        any::<bool>(),
        rollup_aggregation(),
        transforms(1),
        prop::option::of((rollup_aggregation(), transforms(1))),
    )
        .prop_map(
            |(kind, own, timer_own, head, group_by_a, rollup, tail, second)| {
                // A timer's default aggregations are many; a rule over timers names one unless
                // it rolls the samples up straight away.
                let own = if kind == MetricType::Timer && !head.is_empty() {
                    own.or(Some(timer_own))
                } else {
                    own
                };
                // Last is for gauges only, as in M3.
                let own = own.map(|a| {
                    if a == AggregationType::Last && kind != MetricType::Gauge {
                        AggregationType::Max
                    } else {
                        a
                    }
                });
                Rule {
                    kind,
                    own,
                    head,
                    group_by_a,
                    rollup,
                    tail,
                    second,
                }
            },
        )
}

/// (series a, series b, seconds after T0, value)
type Write = (u8, u8, i64, i32);

fn writes_strategy() -> impl Strategy<Value = Vec<Write>> {
    prop::collection::vec((0u8..2, 0u8..3, 0i64..60, -50i32..1000), 1..120)
}

fn yaml(rule: &Rule) -> String {
    let mut steps = Vec::new();
    if let Some(own) = rule.own {
        steps.push(format!("      - aggregate: {{type: {own}}}"));
    }
    for t in &rule.head {
        steps.push(format!("      - transform: {{type: {}}}", t.name()));
    }
    let group = if rule.group_by_a { "[a]" } else { "[]" };
    steps.push(format!(
        "      - rollup: {{metricName: rolled, groupBy: {group}, aggregations: [{}]}}",
        rule.rollup
    ));
    for t in &rule.tail {
        steps.push(format!("      - transform: {{type: {}}}", t.name()));
    }
    if let Some((aggregation, tail)) = &rule.second {
        steps.push(format!(
            "      - rollup: {{metricName: rolled2, groupBy: [], aggregations: [{aggregation}]}}"
        ));
        for t in tail {
            steps.push(format!("      - transform: {{type: {}}}", t.name()));
        }
    }
    format!(
        "rollupRules:\n  - name: model\n    filter: \"__name__:m\"\n    transforms:\n{}\n    storagePolicies: [{{resolution: 10s, retention: 2d}}]\n",
        steps.join("\n")
    )
}

fn engine() -> Aggregator {
    let agg = Aggregator::new(
        AggregatorOptions::default(),
        Arc::new(|id: &[u8]| u32::from(id.iter().fold(0u8, |a, b| a.wrapping_add(*b))) % 4),
    );
    agg.set_shards((0..4).map(ShardAssignment::unbounded).collect(), 0);
    agg
}

fn aggregate(kind: AggregationType, points: &[(i64, f64)]) -> f64 {
    let values = points.iter().map(|p| p.1);
    match kind {
        AggregationType::Last => {
            // Latest timestamp; a tie goes to the later write.
            let max_t = points.iter().map(|p| p.0).max().unwrap_or(0);
            points
                .iter()
                .rev()
                .find(|p| p.0 == max_t)
                .map_or(f64::NAN, |p| p.1)
        }
        AggregationType::Sum => values.sum(),
        AggregationType::Max => values.fold(f64::NEG_INFINITY, f64::max),
        AggregationType::Min => values.fold(f64::INFINITY, f64::min),
        AggregationType::Count => points.len() as f64,
        AggregationType::Mean => values.sum::<f64>() / points.len() as f64,
        AggregationType::SumSq => values.map(|v| v * v).sum(),
        AggregationType::Stdev => {
            let n = points.len() as f64;
            if points.len() < 2 {
                return 0.0;
            }
            let mean = values.sum::<f64>() / n;
            let squares: f64 = points.iter().map(|p| (p.1 - mean) * (p.1 - mean)).sum();
            (squares / (n - 1.0)).sqrt()
        }
        other => unreachable!("{other} is not drawn"),
    }
}

/// Runs `ts` over window values in time order; `None` for a dropped (NaN) point.
fn run(ts: &[Transform], windows: &BTreeMap<i64, f64>) -> BTreeMap<i64, Option<f64>> {
    let mut state = vec![TransformState::default(); ts.len()];
    windows
        .iter()
        .map(|(end, v)| {
            let out = transform::apply(ts, &mut state, *end, *v, R).value;
            (*end, (!out.is_nan()).then_some(out))
        })
        .collect()
}

/// The aggregation of a series whose rule names none.
fn default_aggregation(kind: MetricType) -> AggregationType {
    match kind {
        MetricType::Counter => AggregationType::Sum,
        MetricType::Gauge => AggregationType::Last,
        MetricType::Timer => unreachable!("rules over timers name their aggregation"),
    }
}

/// A series' windows: window end → its points (time, value) in write order.
type Windows = BTreeMap<i64, Vec<(i64, f64)>>;

fn model(rule: &Rule, writes: &[Write]) -> BTreeMap<(u8, i64), f64> {
    let mut series: BTreeMap<(u8, u8), Windows> = BTreeMap::new();
    for &(a, b, secs, v) in writes {
        let t = T0 + secs * S;
        let end = t - t.rem_euclid(R) + R;
        series
            .entry((a, b))
            .or_default()
            .entry(end)
            .or_default()
            .push((t, f64::from(v)));
    }
    // group → window end → forwarded values (or, for a rule that starts with the rollup, every
    // sample of the group: the coordinator sends them under the rollup ID).
    let mut groups: BTreeMap<u8, BTreeMap<i64, Vec<f64>>> = BTreeMap::new();
    let rollup_first = rule.own.is_none() && rule.head.is_empty();
    for ((a, _), windows) in &series {
        if rollup_first {
            let group = if rule.group_by_a { *a } else { 0 };
            for (end, points) in windows {
                let values = groups.entry(group).or_default().entry(*end).or_default();
                values.extend(points.iter().map(|p| p.1));
            }
            continue;
        }
        let own: BTreeMap<i64, f64> = windows
            .iter()
            .map(|(end, points)| {
                (
                    *end,
                    aggregate(
                        rule.own.unwrap_or_else(|| default_aggregation(rule.kind)),
                        points,
                    ),
                )
            })
            .collect();
        for (end, value) in run(&rule.head, &own) {
            if let Some(v) = value {
                let group = if rule.group_by_a { *a } else { 0 };
                groups
                    .entry(group)
                    .or_default()
                    .entry(end)
                    .or_default()
                    .push(v);
            }
        }
    }
    let first = rollup_stage(groups, rule.rollup, &rule.tail);
    let Some((aggregation, tail)) = &rule.second else {
        return first;
    };
    let mut everything: BTreeMap<u8, BTreeMap<i64, Vec<f64>>> = BTreeMap::new();
    for ((_, end), v) in first {
        everything
            .entry(0)
            .or_default()
            .entry(end)
            .or_default()
            .push(v);
    }
    rollup_stage(everything, *aggregation, tail)
}

/// One rollup: per group and window the aggregation of its values, then `tail` per group in
/// window order; (group, window end) → value.
fn rollup_stage(
    groups: BTreeMap<u8, BTreeMap<i64, Vec<f64>>>,
    aggregation: AggregationType,
    tail: &[Transform],
) -> BTreeMap<(u8, i64), f64> {
    let mut out = BTreeMap::new();
    for (group, windows) in groups {
        let rolled: BTreeMap<i64, f64> = windows
            .iter()
            .map(|(end, values)| {
                let points: Vec<(i64, f64)> = values.iter().map(|v| (*end, *v)).collect();
                (*end, aggregate(aggregation, &points))
            })
            .collect();
        for (end, value) in run(tail, &rolled) {
            if let Some(v) = value {
                out.insert((group, end), v);
            }
        }
    }
    out
}

fn tags(a: u8, b: u8) -> Vec<(Vec<u8>, Vec<u8>)> {
    vec![
        (b"__name__".to_vec(), b"m".to_vec()),
        (b"a".to_vec(), vec![b'x' + a]),
        (b"b".to_vec(), vec![b'0' + b]),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn rollups_match_the_model(rule in rule_strategy(), writes in writes_strategy()) {
        let want = model(&rule, &writes);
        let got = engines(&rule, &writes);
        prop_assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{:?}", rule);
        for (key, w) in &want {
            let g = got[key];
            prop_assert!(
                (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                "{:?} at {:?}: engines {} model {}", rule, key, g, w
            );
        }
    }
}

/// The engines, with each source series forwarding as its own source: the values of one
/// source shard for a window travel in one message in production; here they are sent one by
/// one with distinct source IDs so the receiver's de-duplication cannot merge them.
fn engines(rule: &Rule, writes: &[Write]) -> BTreeMap<(u8, i64), f64> {
    let config: RulesConfig = serde_saphyr::from_str(&yaml(rule)).expect("rule YAML");
    let policy: StoragePolicy = "10s:2d".parse().expect("policy");
    let rules = RuleSet::compile(&config, "downsample.rules", &[policy]).expect("rule compiles");
    let sources = engine();
    for &(a, b, secs, v) in writes {
        let tags = tags(a, b);
        let borrowed: Vec<(&[u8], &[u8])> = tags
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
            .collect();
        let matched = rules.matches(&borrowed, b"unknown");
        let mut id = Vec::new();
        m3_metric::id::encode_tags(borrowed.iter().copied(), &mut id).expect("ID");
        let t = T0 + secs * S;
        // As the coordinator sends it: under its own ID with the pipeline, or (a rule that
        // starts with the rollup) under the rollup ID.
        let targets = (!matched.pipelines.is_empty())
            .then(|| (id.clone(), matched.pipelines.clone()))
            .into_iter()
            .chain(
                matched
                    .rollups
                    .iter()
                    .map(|(id, p)| (id.clone(), vec![p.clone()])),
            );
        for (id, pipelines) in targets {
            let staged = metricpb::StagedMetadatas {
                metadatas: vec![build::staged(0, false, pipelines)],
            };
            sources
                .add_timed(
                    rule.kind,
                    &id,
                    t,
                    f64::from(v),
                    Metadatas::Staged(&staged),
                    t,
                )
                .expect("sample accepted");
        }
    }
    let mut out: Vec<AggregatedOutput> = Vec::new();
    sources.flush(T0 + 3600 * S, FlushMode::Leader, &mut out);
    // Each stage's forwarded values go to a fresh engine, until one forwards nothing.
    let mut forwarded = sources.take_forwarded();
    let mut source_id = 0u32;
    while !forwarded.is_empty() {
        let rollups = engine();
        for f in forwarded {
            let pipeline = (!f.pipeline.is_empty()).then(|| {
                <m3_proto::pipelinepb::AppliedPipeline as m3_proto::Message>::decode(
                    f.pipeline.clone(),
                )
                .expect("pipeline")
            });
            source_id += 1;
            rollups
                .add_forwarded(
                    ForwardedWrite {
                        metric_type: f.metric_type,
                        id: &f.id,
                        time_nanos: f.time_nanos,
                        values: &[f.value],
                        source_id,
                        version: 0,
                        aggregation_id: f.aggregation_id,
                        storage_policy: f.storage_policy,
                        pipeline: pipeline.as_ref(),
                        forwarded_times: f.forwarded_times,
                    },
                    f.time_nanos + S,
                )
                .expect("forwarded value accepted");
        }
        rollups.flush(T0 + 3600 * S, FlushMode::Leader, &mut out);
        forwarded = rollups.take_forwarded();
    }
    out.into_iter()
        .map(|o| {
            let labels = m3_metric::id::decode_tags(&o.id).expect("rollup ID decodes");
            let group = labels
                .iter()
                .find(|(n, _)| n == "a")
                .map_or(0, |(_, v)| v.as_bytes()[0] - b'x');
            ((group, o.time_nanos), o.value)
        })
        .collect()
}
