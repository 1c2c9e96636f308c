//! The pipelines elems run: transforms, then a rollup forwarded to another aggregator.
//!
//! A pipeline arrives with a sample as M3's `AppliedPipeline`: transforms and rollups, each
//! rollup naming the ID of the series it rolls up into and its aggregation. The engine splits it
//! where M3's `newParsedPipeline` does:
//!
//! ```text
//!   Increase  →  rollup(ID, Sum)  →  Add
//!   └ head ─┘    └── rollup ───┘     └ remainder: travels with the forwarded value ┘
//! ```
//!
//! Each closed window's value goes through the head transforms; with a rollup, the result is
//! forwarded under the rollup ID, carrying the remainder, to the aggregators owning that ID,
//! where it is aggregated across sources and the remainder runs. Without one, the result is
//! emitted as usual. Pipelines are interned per shard, so an elem refers to its pipeline by a
//! 16-bit index, as it does to its spec.

use bytes::Bytes;
use hashbrown::HashMap;
use m3_metric::AggregationId;
use m3_proto::Message;
use m3_proto::pipelinepb::{self, applied_pipeline_op::Type as OpType};
use m3_rules::Transform;

use crate::error::AddError;
use crate::indexed_slots::IndexedSlots;

/// A rollup: the series to roll up into and the aggregation across sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RollupTarget {
    pub(crate) id: Bytes,
    pub(crate) aggregation: AggregationId,
}

/// A pipeline split for the engine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ParsedPipeline {
    /// Transforms before the first rollup, applied here.
    pub(crate) head: Vec<Transform>,
    /// The first rollup, if any.
    pub(crate) rollup: Option<RollupTarget>,
    /// What follows the rollup, encoded as an `AppliedPipeline` for the forwarded metadata.
    pub(crate) remainder: Bytes,
}

impl ParsedPipeline {
    /// Splits `pipeline`.
    ///
    /// # Errors
    /// [`AddError::InvalidPipeline`] for an operation of unknown type, a rollup without ID and
    /// more than one derivative (PerSecond, Increase) before the rollup.
    pub(crate) fn parse(
        pipeline: &pipelinepb::AppliedPipeline,
    ) -> Result<ParsedPipeline, AddError> {
        let invalid = |reason: &'static str| AddError::InvalidPipeline { reason };
        let mut parsed = ParsedPipeline::default();
        for (i, op) in pipeline.ops.iter().enumerate() {
            match OpType::try_from(op.r#type) {
                Ok(OpType::Transformation) => {
                    let t = op
                        .transformation
                        .as_ref()
                        .and_then(|t| Transform::from_proto(t.r#type))
                        .ok_or_else(|| invalid("unknown transformation"))?;
                    parsed.head.push(t);
                }
                Ok(OpType::Rollup) => {
                    let rollup = op
                        .rollup
                        .as_ref()
                        .ok_or_else(|| invalid("rollup without its op"))?;
                    if rollup.id.is_empty() {
                        return Err(invalid("rollup without an ID"));
                    }
                    parsed.rollup = Some(RollupTarget {
                        id: rollup.id.clone(),
                        aggregation: AggregationId(
                            rollup.aggregation_id.as_ref().map_or(0, |a| a.id),
                        ),
                    });
                    let rest = pipelinepb::AppliedPipeline {
                        ops: pipeline.ops[i + 1..].to_vec(),
                    };
                    if !rest.ops.is_empty() {
                        parsed.remainder = Bytes::from(rest.encode_to_vec());
                    }
                    break;
                }
                _ => return Err(invalid("unknown operation type")),
            }
        }
        if parsed.head.iter().filter(|t| t.is_binary()).count() > 1 {
            return Err(invalid(
                "more than one derivative transform before a rollup",
            ));
        }
        Ok(parsed)
    }
}

/// The pipeline index 0 stands for, and what a freed index reads as.
static EMPTY: ParsedPipeline = ParsedPipeline {
    head: Vec::new(),
    rollup: None,
    remainder: Bytes::new(),
};

/// The pipelines of one shard, interned; index 0 is the empty pipeline.
///
/// A rollup's pipeline names the rollup series, which often carries a tag of its sources that
/// comes and goes (a pod, a version): each new value is a new pipeline. The shard's sweep
/// ([`PipelineTable::sweep`]) frees the pipelines no spec uses any more, and a new pipeline
/// takes a freed index ([`IndexedSlots`]).
#[derive(Debug)]
pub(crate) struct PipelineTable {
    pipelines: IndexedSlots<ParsedPipeline>,
    index: HashMap<Vec<u8>, u16>,
}

/// Most pipelines per shard, the empty one included (the index is 16 bits).
const MAX_PIPELINES: usize = u16::MAX as usize + 1;

impl Default for PipelineTable {
    fn default() -> Self {
        let mut pipelines = IndexedSlots::default();
        pipelines.add(ParsedPipeline::default(), MAX_PIPELINES);
        PipelineTable {
            pipelines,
            index: HashMap::new(),
        }
    }
}

impl PipelineTable {
    /// The index of `pipeline` (0 for none or an empty one), parsed and added if new.
    pub(crate) fn intern(
        &mut self,
        pipeline: Option<&pipelinepb::AppliedPipeline>,
    ) -> Result<u16, AddError> {
        let Some(pipeline) = pipeline.filter(|p| !p.ops.is_empty()) else {
            return Ok(0);
        };
        let key = pipeline.encode_to_vec();
        if let Some(i) = self.index.get(&key) {
            return Ok(*i);
        }
        let full = AddError::TooManyPolicies {
            max: usize::from(u16::MAX),
        };
        if self.pipelines.is_full(MAX_PIPELINES) {
            return Err(full);
        }
        let parsed = ParsedPipeline::parse(pipeline)?;
        let i = self.pipelines.add(parsed, MAX_PIPELINES).ok_or(full)?;
        self.index.insert(key, i);
        Ok(i)
    }

    /// The pipeline at `index` (the empty one for a freed index, which no spec names).
    pub(crate) fn get(&self, index: u16) -> &ParsedPipeline {
        self.pipelines.get(index).unwrap_or(&EMPTY)
    }

    /// Frees every pipeline but the empty one whose index `in_use` does not hold; returns
    /// how many went.
    pub(crate) fn sweep(&mut self, in_use: &[bool]) -> usize {
        let used = |i: u16| i == 0 || in_use.get(usize::from(i)).copied().unwrap_or(false);
        self.index.retain(|_, i| used(*i));
        let unused: Vec<u16> = (0..self.pipelines.slots().len())
            .filter_map(|i| u16::try_from(i).ok())
            .filter(|&i| !used(i))
            .collect();
        unused
            .into_iter()
            .filter(|&i| self.pipelines.remove(i).is_some())
            .count()
    }

    /// Pipelines held, the empty one included.
    pub(crate) fn len(&self) -> usize {
        self.pipelines.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use m3_proto::aggregationpb;

    fn transform(t: Transform) -> pipelinepb::AppliedPipelineOp {
        pipelinepb::AppliedPipelineOp {
            r#type: OpType::Transformation as i32,
            transformation: Some(pipelinepb::TransformationOp {
                r#type: t.to_proto(),
            }),
            rollup: None,
        }
    }

    fn rollup(id: &[u8]) -> pipelinepb::AppliedPipelineOp {
        pipelinepb::AppliedPipelineOp {
            r#type: OpType::Rollup as i32,
            transformation: None,
            rollup: Some(pipelinepb::AppliedRollupOp {
                id: Bytes::copy_from_slice(id),
                aggregation_id: Some(aggregationpb::AggregationId { id: 1 << 7 }),
            }),
        }
    }

    #[test]
    fn splits_at_the_first_rollup() {
        let p = pipelinepb::AppliedPipeline {
            ops: vec![
                transform(Transform::Increase),
                rollup(b"r1"),
                transform(Transform::Add),
                rollup(b"r2"),
            ],
        };
        let parsed = ParsedPipeline::parse(&p).unwrap();
        assert_eq!(parsed.head, vec![Transform::Increase]);
        assert_eq!(parsed.rollup.as_ref().unwrap().id.as_ref(), b"r1");
        let rest = pipelinepb::AppliedPipeline::decode(parsed.remainder).unwrap();
        assert_eq!(rest.ops.len(), 2);
        let mut table = PipelineTable::default();
        assert_eq!(table.intern(None).unwrap(), 0);
        assert_eq!(table.intern(Some(&p)).unwrap(), 1);
        assert_eq!(table.intern(Some(&p)).unwrap(), 1);
    }

    #[test]
    fn bad_pipelines_are_refused() {
        let twice = pipelinepb::AppliedPipeline {
            ops: vec![
                transform(Transform::Increase),
                transform(Transform::PerSecond),
            ],
        };
        assert!(ParsedPipeline::parse(&twice).is_err());
        let no_id = pipelinepb::AppliedPipeline {
            ops: vec![rollup(b"")],
        };
        assert!(ParsedPipeline::parse(&no_id).is_err());
    }
}
