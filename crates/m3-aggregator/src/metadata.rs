//! From the metadata a client sends to the (aggregation, storage policy) pairs a sample feeds.
//!
//! Coordinators attach `StagedMetadatas` to every untimed and most timed samples: a list of
//! metadata versions sorted by cutover time, each a list of pipelines, each naming an
//! aggregation ID and storage policies. The engine reads them in place (no conversion, no
//! allocation per sample):
//!
//! 1. the active version is the **last one whose cutover ≤ now** (M3 assumes ascending order and
//!    scans from the end); if none has cut over the sample is rejected
//!    (`no_applicable_metadata`);
//! 2. a **tombstoned** active version means the rule was deleted: the sample is dropped and
//!    counted (`tombstoned`), and the write succeeds;
//! 3. **no versions, no metadata or no pipelines** mean "defaults": the configured
//!    `defaultStoragePolicies` with the metric type's default aggregations;
//! 4. a pipeline with **no storage policies** uses `defaultStoragePolicies` too;
//! 5. a pipeline with **operations** (transforms, rollups) is kept with its target: the elem
//!    runs it (see `pipeline.rs`). `drop_policy` and `routing_policy` are coordinator and
//!    flush-routing concerns and are ignored here.

use m3_metric::{AggregationId, StoragePolicy};
use m3_proto::{metricpb, pipelinepb};

use crate::error::AddError;

/// The metadata a sample is aggregated with.
#[derive(Debug, Clone, Copy)]
pub enum Metadatas<'a> {
    /// Staged metadatas, as in counters, gauges, batch timers and `TimedMetricWithMetadatas`.
    Staged(&'a metricpb::StagedMetadatas),
    /// One aggregation and one storage policy, as in `TimedMetricWithMetadata`.
    Single {
        /// The aggregation types (empty = the metric type's defaults).
        aggregation_id: AggregationId,
        /// The storage policy.
        storage_policy: StoragePolicy,
    },
    /// The defaults: `defaultStoragePolicies` with default aggregation.
    Default,
}

/// The active metadata version, resolved.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Active<'a> {
    /// Defaults.
    Default,
    /// The rule was deleted: drop the sample.
    Tombstoned,
    /// These pipelines.
    Pipelines(&'a [metricpb::PipelineMetadata]),
    /// One pair.
    Single(AggregationId, StoragePolicy),
}

impl Active<'_> {
    /// Whether `other` is this same metadata: the same pipelines (the same decoded ones, not
    /// equal copies), or equal otherwise. Values with the same metadata feed the same targets.
    pub(crate) fn is_same_metadata(&self, other: &Active<'_>) -> bool {
        match (self, other) {
            (Active::Default, Active::Default) | (Active::Tombstoned, Active::Tombstoned) => true,
            (Active::Pipelines(a), Active::Pipelines(b)) => std::ptr::eq(*a, *b),
            (Active::Single(a, p), Active::Single(b, q)) => a == b && p == q,
            _ => false,
        }
    }
}

/// Picks the active metadata version at `now_nanos`.
pub(crate) fn active(metadatas: Metadatas<'_>, now_nanos: i64) -> Result<Active<'_>, AddError> {
    let staged = match metadatas {
        Metadatas::Default => return Ok(Active::Default),
        Metadatas::Single {
            aggregation_id,
            storage_policy,
        } => return Ok(Active::Single(aggregation_id, storage_policy)),
        Metadatas::Staged(staged) => &staged.metadatas,
    };
    if staged.is_empty() {
        return Ok(Active::Default);
    }
    let Some(version) = staged.iter().rev().find(|m| m.cutover_nanos <= now_nanos) else {
        return Err(AddError::NoApplicableMetadata {
            earliest_cutover_nanos: staged.iter().map(|m| m.cutover_nanos).min().unwrap_or(0),
            now_nanos,
        });
    };
    if version.tombstoned {
        return Ok(Active::Tombstoned);
    }
    match &version.metadata {
        Some(m) if !m.pipelines.is_empty() => Ok(Active::Pipelines(&m.pipelines)),
        _ => Ok(Active::Default),
    }
}

/// One (aggregation, storage policy, pipeline) a sample feeds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a> {
    pub(crate) aggregation_id: AggregationId,
    pub(crate) policy: StoragePolicy,
    /// Transforms and rollups to run on each window (`None`: emit as aggregated).
    pub(crate) pipeline: Option<&'a pipelinepb::AppliedPipeline>,
}

/// Calls `visit` with every target of `active`, or with the error of every policy that cannot
/// be used.
pub(crate) fn for_each_target<'a>(
    active: Active<'a>,
    defaults: &[StoragePolicy],
    mut visit: impl FnMut(Result<Target<'a>, AddError>),
) {
    let plain = |aggregation_id, policy| Target {
        aggregation_id,
        policy,
        pipeline: None,
    };
    match active {
        Active::Tombstoned => {}
        Active::Default => {
            for p in defaults {
                visit(Ok(plain(AggregationId::DEFAULT, *p)));
            }
        }
        Active::Single(aggregation_id, policy) => visit(Ok(plain(aggregation_id, policy))),
        Active::Pipelines(pipelines) => {
            for pipeline in pipelines {
                let aggregation_id =
                    AggregationId(pipeline.aggregation_id.as_ref().map_or(0, |a| a.id));
                let ops = pipeline.pipeline.as_ref().filter(|p| !p.ops.is_empty());
                let target = |policy| Target {
                    aggregation_id,
                    policy,
                    pipeline: ops,
                };
                if pipeline.storage_policies.is_empty() {
                    for p in defaults {
                        visit(Ok(target(*p)));
                    }
                    continue;
                }
                for proto in &pipeline.storage_policies {
                    match StoragePolicy::from_proto(proto) {
                        Some(p) => visit(Ok(target(p))),
                        None => visit(Err(AddError::InvalidStoragePolicy)),
                    }
                }
            }
        }
    }
}

/// Builders for staged metadatas, for tests, benchmarks and clients of this crate.
pub mod build {
    use m3_metric::{AggregationId, StoragePolicy};
    use m3_proto::{aggregationpb, metricpb, pipelinepb};

    /// One pipeline with `aggregation_id` and `policies`, and no operations.
    pub fn pipeline(
        aggregation_id: AggregationId,
        policies: &[StoragePolicy],
    ) -> metricpb::PipelineMetadata {
        metricpb::PipelineMetadata {
            aggregation_id: Some(aggregationpb::AggregationId {
                id: aggregation_id.0,
            }),
            storage_policies: policies.iter().map(StoragePolicy::to_proto).collect(),
            ..Default::default()
        }
    }

    /// A pipeline with one rollup operation.
    pub fn rollup_pipeline(
        new_id: &[u8],
        policies: &[StoragePolicy],
    ) -> metricpb::PipelineMetadata {
        let mut p = pipeline(AggregationId::DEFAULT, policies);
        p.pipeline = Some(pipelinepb::AppliedPipeline {
            ops: vec![pipelinepb::AppliedPipelineOp {
                r#type: pipelinepb::applied_pipeline_op::Type::Rollup as i32,
                rollup: Some(pipelinepb::AppliedRollupOp {
                    id: new_id.to_vec().into(),
                    aggregation_id: None,
                }),
                ..Default::default()
            }],
        });
        p
    }

    /// One staged version.
    pub fn staged(
        cutover_nanos: i64,
        tombstoned: bool,
        pipelines: Vec<metricpb::PipelineMetadata>,
    ) -> metricpb::StagedMetadata {
        metricpb::StagedMetadata {
            cutover_nanos,
            tombstoned,
            metadata: Some(metricpb::Metadata { pipelines }),
        }
    }

    /// A single version at cutover 0 with one pipeline.
    pub fn simple(
        aggregation_id: AggregationId,
        policies: &[StoragePolicy],
    ) -> metricpb::StagedMetadatas {
        metricpb::StagedMetadatas {
            metadatas: vec![staged(0, false, vec![pipeline(aggregation_id, policies)])],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use m3_metric::AggregationType;

    fn p(s: &str) -> StoragePolicy {
        s.parse().unwrap()
    }

    type Targets = (Vec<(u64, String)>, Vec<AddError>);

    fn targets(m: Metadatas<'_>, now: i64) -> Result<Targets, AddError> {
        let active = active(m, now)?;
        let mut out = Vec::new();
        let mut errs = Vec::new();
        for_each_target(active, &[p("10s:2d")], |t| match t {
            Ok(t) if t.pipeline.is_none() => out.push((t.aggregation_id.0, t.policy.to_string())),
            Ok(t) => out.push((t.aggregation_id.0, format!("{} with a pipeline", t.policy))),
            Err(e) => errs.push(e),
        });
        Ok((out, errs))
    }

    #[test]
    fn latest_cut_over_version_wins() {
        let max = AggregationId::from_types([AggregationType::Max]);
        let staged = metricpb::StagedMetadatas {
            metadatas: vec![
                build::staged(100, false, vec![build::pipeline(max, &[p("1m:40d")])]),
                build::staged(200, false, vec![build::pipeline(max, &[p("5m:90d")])]),
                build::staged(300, true, vec![]),
            ],
        };
        let (t, _) = targets(Metadatas::Staged(&staged), 250).unwrap();
        assert_eq!(t, vec![(max.0, "5m:90d".to_string())]);
        let (t, _) = targets(Metadatas::Staged(&staged), 150).unwrap();
        assert_eq!(t, vec![(max.0, "1m:40d".to_string())]);
        // Tombstoned: nothing.
        let (t, e) = targets(Metadatas::Staged(&staged), 300).unwrap();
        assert!(t.is_empty() && e.is_empty());
        assert!(matches!(
            active(Metadatas::Staged(&staged), 300),
            Ok(Active::Tombstoned)
        ));
        // Nothing cut over yet.
        assert!(matches!(
            targets(Metadatas::Staged(&staged), 50),
            Err(AddError::NoApplicableMetadata {
                earliest_cutover_nanos: 100,
                ..
            })
        ));
    }

    #[test]
    fn empty_metadata_means_defaults() {
        let (t, _) = targets(Metadatas::Staged(&metricpb::StagedMetadatas::default()), 0).unwrap();
        assert_eq!(t, vec![(0, "10s:2d".to_string())]);
        let no_pipelines = metricpb::StagedMetadatas {
            metadatas: vec![build::staged(0, false, vec![])],
        };
        let (t, _) = targets(Metadatas::Staged(&no_pipelines), 0).unwrap();
        assert_eq!(t, vec![(0, "10s:2d".to_string())]);
        let no_policies = build::simple(AggregationId::DEFAULT, &[]);
        let (t, _) = targets(Metadatas::Staged(&no_policies), 0).unwrap();
        assert_eq!(t, vec![(0, "10s:2d".to_string())]);
        let (t, _) = targets(Metadatas::Default, 0).unwrap();
        assert_eq!(t, vec![(0, "10s:2d".to_string())]);
    }

    #[test]
    fn rollup_pipelines_are_kept_and_bad_policies_reported() {
        let mut staged = build::simple(AggregationId::DEFAULT, &[p("1m:40d")]);
        let pipelines = &mut staged.metadatas[0].metadata.as_mut().unwrap().pipelines;
        pipelines.push(build::rollup_pipeline(b"rolled", &[p("1m:40d")]));
        pipelines[0]
            .storage_policies
            .push(m3_proto::policypb::StoragePolicy::default());
        let (t, e) = targets(Metadatas::Staged(&staged), 0).unwrap();
        assert_eq!(
            t,
            vec![
                (0, "1m:40d".to_string()),
                (0, "1m:40d with a pipeline".to_string())
            ]
        );
        assert_eq!(e, vec![AddError::InvalidStoragePolicy]);
    }
}
