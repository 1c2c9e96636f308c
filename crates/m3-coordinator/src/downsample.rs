//! The downsampler: decides what each incoming series is aggregated into, and with which
//! metadata it travels to the aggregators.
//!
//! Two kinds of rules, as in M3's coordinator:
//!
//! * **automatic mapping rules**: every aggregated namespace that is not read-only and has
//!   `downsample.all` (the default) aggregates every series as **Last** at the namespace's
//!   resolution:retention, precision 1s;
//! * **explicit rules** from `downsample.rules` (see `m3_rules`): mapping rules replace the
//!   automatic rule for the storage policies they name; a `drop` rule keeps the raw sample out
//!   of the store and turns the automatic rules off for the series; rollup rules that start with
//!   a transform send their pipeline with the series, and those that start with a rollup send
//!   the sample again under the rollup ID.
//!
//! What a series gets is its [`SeriesPlan`]: the encoded `StagedMetadatas` for its own ID, the
//! rollup IDs with theirs, and whether its raw samples are stored. Without explicit rules every
//! series shares one plan; with them, plans are computed once per series ID and cached, so a
//! series Prometheus sends every scrape costs one lookup.

use std::sync::Arc;
use std::time::Duration;

use m3_metric::{AggregationId, AggregationType, Resolution, StoragePolicy};
use m3_proto::Message;
use m3_proto::metricpb::{Metadata, PipelineMetadata, StagedMetadata, StagedMetadatas};
use m3_rules::{MatchCache, RuleSet};

use crate::config::ValidNamespace;

/// Series whose plan is cached (M3's `matcher.cache.capacity`; 0 there means no cache).
pub const DEFAULT_CACHE_CAPACITY: usize = 1_000_000;
/// What the cached plans may cost in bytes whatever their number: a million series of 250-byte
/// IDs, each rolled up under two 200-byte rollup IDs, would otherwise take about 1 GB.
pub const CACHE_MAX_BYTES: usize = 256 << 20;

/// What one series is aggregated into.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SeriesPlan {
    /// The encoded `StagedMetadatas` sent with the series' own ID; `None`: the series itself is
    /// not aggregated.
    pub own: Option<Vec<u8>>,
    /// Other IDs the sample is sent under, each with its encoded `StagedMetadatas`: the
    /// rollup IDs of rollup rules that start with a rollup, and the series' ID with the tags of
    /// a mapping rule that adds tags.
    pub other_ids: Vec<(Vec<u8>, Vec<u8>)>,
    /// Whether the raw sample is stored (false when a `drop` rule matched).
    pub store_raw: bool,
}

impl SeriesPlan {
    /// The heap bytes the plan holds (its vectors' capacities).
    pub fn heap_bytes(&self) -> usize {
        self.own.as_ref().map_or(0, Vec::capacity)
            + self.other_ids.capacity() * std::mem::size_of::<(Vec<u8>, Vec<u8>)>()
            + self
                .other_ids
                .iter()
                .map(|(id, metadatas)| id.capacity() + metadatas.capacity())
                .sum::<usize>()
    }

    /// Whether the series goes to the aggregators at all.
    pub fn aggregates(&self) -> bool {
        self.own.is_some() || !self.other_ids.is_empty()
    }
}

/// A series' plan as [`Downsampler::plan`] gives it: without explicit rules every series has
/// the default plan, lent without touching its reference count. Request handlers on every
/// core take a plan per series, so a count they all change would move its cache line from
/// core to core twice per series (5–8% of the coordinator's CPU as a relay, measured with
/// `perf`).
#[derive(Debug)]
pub enum PlanRef<'a> {
    /// The plan of every series when no explicit rule is configured.
    Default(&'a SeriesPlan),
    /// A plan the rules computed, shared with the match cache.
    Cached(Arc<SeriesPlan>),
}

impl std::ops::Deref for PlanRef<'_> {
    type Target = SeriesPlan;

    fn deref(&self) -> &SeriesPlan {
        match self {
            PlanRef::Default(plan) => plan,
            PlanRef::Cached(plan) => plan,
        }
    }
}

/// The rules and their per-series plans.
#[derive(Debug)]
pub struct Downsampler {
    automatic: Vec<StoragePolicy>,
    rules: RuleSet,
    /// The plan of a series no explicit rule matches.
    default_plan: SeriesPlan,
    cache: MatchCache<SeriesPlan>,
    largest_resolution: Duration,
}

impl Downsampler {
    /// The automatic rules of `namespaces`, and no explicit rule.
    pub fn from_namespaces(namespaces: &[ValidNamespace]) -> Downsampler {
        Downsampler::new(namespaces, RuleSet::default(), DEFAULT_CACHE_CAPACITY)
    }

    /// The automatic rules of `namespaces` and the explicit `rules`, caching plans of up to
    /// `cache_capacity` series and [`CACHE_MAX_BYTES`].
    pub fn new(
        namespaces: &[ValidNamespace],
        rules: RuleSet,
        cache_capacity: usize,
    ) -> Downsampler {
        let automatic: Vec<StoragePolicy> = namespaces
            .iter()
            .filter(|ns| ns.downsample_all && !ns.read_only)
            .filter_map(|ns| ns.policy)
            .map(|p| StoragePolicy {
                resolution: Resolution {
                    window: p.resolution.window,
                    precision: Duration::from_secs(1).min(p.resolution.window),
                },
                retention: p.retention,
            })
            .collect();
        let largest_resolution = namespaces
            .iter()
            .filter_map(|ns| ns.policy)
            .map(|p| p.resolution.window)
            .max()
            .unwrap_or(Duration::ZERO);
        let default_plan = SeriesPlan {
            own: (!automatic.is_empty()).then(|| encode(vec![last_pipeline(&automatic)])),
            other_ids: Vec::new(),
            store_raw: true,
        };
        Downsampler {
            automatic,
            rules,
            default_plan,
            cache: MatchCache::bounded(cache_capacity, CACHE_MAX_BYTES, SeriesPlan::heap_bytes),
            largest_resolution,
        }
    }

    /// Whether any rule applies, i.e. whether samples may go to the aggregators at all.
    pub fn is_enabled(&self) -> bool {
        !self.automatic.is_empty() || !self.rules.is_empty()
    }

    /// Whether explicit rules are configured: only then does [`plan`](Self::plan) read the
    /// series' tags.
    pub fn has_rules(&self) -> bool {
        !self.rules.is_empty()
    }

    /// The storage policies of the automatic rules.
    pub fn policies(&self) -> &[StoragePolicy] {
        &self.automatic
    }

    /// The largest resolution of any aggregated namespace (for the too-far-in-the-past check).
    pub fn largest_resolution(&self) -> Duration {
        self.largest_resolution
    }

    /// The plan of the series with tag-encoded `id` and `tags` (sorted by name).
    pub fn plan(&self, id: &[u8], tags: &[(&[u8], &[u8])]) -> PlanRef<'_> {
        if self.rules.is_empty() {
            return PlanRef::Default(&self.default_plan);
        }
        PlanRef::Cached(
            self.cache
                .get_or_insert_with(id, || self.compute(tags, b"unknown")),
        )
    }

    fn compute(&self, tags: &[(&[u8], &[u8])], prom_type: &[u8]) -> SeriesPlan {
        let matched = self.rules.matches(tags, prom_type);
        if matched.is_empty() {
            return self.default_plan.clone();
        }
        let mut pipelines = matched.pipelines;
        if !matched.drop {
            // Explicit mapping rules replace the automatic ones for the policies they name.
            let remaining: Vec<StoragePolicy> = self
                .automatic
                .iter()
                .filter(|auto| {
                    !matched.mapping_policies.iter().any(|p| {
                        p.resolution.window == auto.resolution.window
                            && p.retention == auto.retention
                    })
                })
                .copied()
                .collect();
            if !remaining.is_empty() {
                pipelines.push(last_pipeline(&remaining));
            }
        }
        SeriesPlan {
            own: (!pipelines.is_empty()).then(|| encode(pipelines)),
            other_ids: matched
                .rollups
                .into_iter()
                .chain(matched.tagged)
                .map(|(id, pipeline)| (id, encode(vec![pipeline])))
                .collect(),
            store_raw: !matched.drop,
        }
    }
}

/// The automatic rules' pipeline: Last at `policies`.
fn last_pipeline(policies: &[StoragePolicy]) -> PipelineMetadata {
    PipelineMetadata {
        aggregation_id: Some(m3_proto::aggregationpb::AggregationId {
            id: AggregationId::from_types([AggregationType::Last]).0,
        }),
        storage_policies: policies.iter().map(StoragePolicy::to_proto).collect(),
        ..PipelineMetadata::default()
    }
}

/// One staged version, cut over since the epoch, with `pipelines`, encoded.
fn encode(pipelines: Vec<PipelineMetadata>) -> Vec<u8> {
    StagedMetadatas {
        metadatas: vec![StagedMetadata {
            cutover_nanos: 0,
            tombstoned: false,
            metadata: Some(Metadata { pipelines }),
        }],
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespaces() -> Vec<ValidNamespace> {
        vec![
            ValidNamespace {
                name: "default".into(),
                policy: None,
                retention: Duration::from_secs(86_400),
                downsample_all: true,
                read_only: false,
                buffer_past: None,
                buffer_future: None,
            },
            ValidNamespace {
                name: "agg10s".into(),
                policy: Some("10s:2d".parse().unwrap()),
                retention: Duration::from_secs(172_800),
                downsample_all: true,
                read_only: false,
                buffer_past: None,
                buffer_future: None,
            },
            ValidNamespace {
                name: "agg1m".into(),
                policy: Some("1m:40d".parse().unwrap()),
                retention: Duration::from_secs(40 * 86_400),
                downsample_all: true,
                read_only: false,
                buffer_past: None,
                buffer_future: None,
            },
            ValidNamespace {
                name: "manual".into(),
                policy: Some("1h:1y".parse().unwrap()),
                retention: Duration::from_secs(365 * 86_400),
                downsample_all: false,
                read_only: false,
                buffer_past: None,
                buffer_future: None,
            },
        ]
    }

    fn pipelines(encoded: &[u8]) -> Vec<PipelineMetadata> {
        StagedMetadatas::decode(encoded).unwrap().metadatas[0]
            .metadata
            .clone()
            .unwrap()
            .pipelines
    }

    #[test]
    fn automatic_rules_are_last_per_aggregated_namespace() {
        let d = Downsampler::from_namespaces(&namespaces());
        let names: Vec<String> = d.policies().iter().map(|p| p.to_string()).collect();
        assert_eq!(names, ["10s:2d", "1m@1s:40d"]);
        let plan = d.plan(b"any", &[]);
        assert!(matches!(plan, PlanRef::Default(_)));
        let p = pipelines(plan.own.as_ref().unwrap());
        assert_eq!(
            p[0].aggregation_id.unwrap().id,
            AggregationId::from_types([AggregationType::Last]).0
        );
        assert_eq!(p[0].storage_policies.len(), 2);
        assert!(plan.store_raw && plan.other_ids.is_empty());
        assert_eq!(d.largest_resolution(), Duration::from_secs(3600));
    }

    #[test]
    fn mapping_rules_replace_automatic_policies_and_drop_keeps_raw_out() {
        let config: m3_rules::config::RulesConfig = serde_saphyr::from_str(
            r#"
mappingRules:
  - name: max at 1m
    filter: "__name__:cpu"
    aggregations: [Max]
    storagePolicies: [{resolution: 1m, retention: 40d}]
  - name: drop debug
    filter: "level:debug"
    drop: true
rollupRules:
  - name: total
    filter: "__name__:cpu"
    transforms:
      - rollup: {metricName: cpu_total, groupBy: [], aggregations: [Sum]}
    storagePolicies: [{resolution: 10s, retention: 2d}]
"#,
        )
        .unwrap();
        let available: Vec<StoragePolicy> = namespaces().iter().filter_map(|n| n.policy).collect();
        let rules = RuleSet::compile(&config, "downsample.rules", &available).unwrap();
        let d = Downsampler::new(&namespaces(), rules, 16);

        let cpu: &[(&[u8], &[u8])] = &[(b"__name__", b"cpu"), (b"host", b"a")];
        let plan = d.plan(b"cpu-a", cpu);
        let p = pipelines(plan.own.as_ref().unwrap());
        assert_eq!(p.len(), 2, "Max at 1m, Last at the remaining 10s");
        assert_eq!(
            p[0].aggregation_id.unwrap().id,
            AggregationId::from_types([AggregationType::Max]).0
        );
        assert_eq!(p[1].storage_policies.len(), 1);
        assert_eq!(plan.other_ids.len(), 1);
        assert!(plan.store_raw);
        assert!(matches!(plan, PlanRef::Cached(_)));
        assert!(std::ptr::eq(&*plan, &*d.plan(b"cpu-a", cpu)), "cached");

        let debug: &[(&[u8], &[u8])] = &[(b"__name__", b"mem"), (b"level", b"debug")];
        let plan = d.plan(b"mem-debug", debug);
        assert!(!plan.store_raw && !plan.aggregates());

        let other: &[(&[u8], &[u8])] = &[(b"__name__", b"mem")];
        assert_eq!(*d.plan(b"mem", other), d.default_plan);
    }
}
