//! Binary operators: arithmetic, comparisons (filtering, or `bool`), and the set operators
//! `and`, `or`, `unless`, between scalars and vectors, with Prometheus' vector matching.
//!
//! Two vector elements match when their *signatures* are equal: their labels restricted to the
//! `on(…)` list, or all but the `ignoring(…)` list and the metric name (the default). One-to-one
//! matching requires a signature to be unique on each side; `group_left` lets many left
//! elements share one right element (and `group_right` the reverse), copying the listed labels
//! from the "one" side. The signatures depend on labels only, so they are computed once per
//! series; the matching itself is done at each step among the elements present there.

use std::collections::{HashMap, HashSet};

use promql_parser::parser::token::{
    T_ADD, T_ATAN2, T_DIV, T_EQLC, T_GTE, T_GTR, T_LAND, T_LOR, T_LSS, T_LTE, T_LUNLESS, T_MOD,
    T_MUL, T_NEQ, T_POW, T_SUB,
};
use promql_parser::parser::{BinModifier, BinaryExpr, LabelModifier, VectorMatchCardinality};

use crate::error::{QueryError, Result};
use crate::eval::{Budget, Evaluator, Steps, merge_same_labels};
use crate::labels::{LabelIndex, LabelSet};
use crate::value::{StepSeries, Value};

/// Evaluates a binary expression at every step.
pub(crate) fn eval(ev: &mut Evaluator<'_>, bin: &BinaryExpr, steps: &Steps) -> Result<Value> {
    let op = bin.op.id();
    let modifier = bin.modifier.as_ref();
    let return_bool = modifier.is_some_and(|m| m.return_bool);
    let lhs = ev.eval(&bin.lhs, steps)?;
    let rhs = ev.eval(&bin.rhs, steps)?;
    match (lhs, rhs) {
        (Value::Scalar(a), Value::Scalar(b)) => Ok(Value::Scalar(
            a.into_iter()
                .zip(b)
                .map(|(l, r)| {
                    let (v, keep) = apply(op, l, r);
                    if is_comparison(op) {
                        f64::from(u8::from(keep))
                    } else {
                        v
                    }
                })
                .collect(),
        )),
        (Value::Vector(v), Value::Scalar(s)) => {
            vector_scalar(op, v, &s, false, return_bool).map(Value::Vector)
        }
        (Value::Scalar(s), Value::Vector(v)) => {
            vector_scalar(op, v, &s, true, return_bool).map(Value::Vector)
        }
        (Value::Vector(l), Value::Vector(r)) => {
            let out = if op == T_LAND || op == T_LOR || op == T_LUNLESS {
                set_operation(op, l, r, modifier, steps)
            } else {
                vector_vector(&mut ev.budget, op, l, r, modifier, return_bool, steps)?
            };
            merge_same_labels(out).map(Value::Vector)
        }
        (l, r) => Err(QueryError::BadData(format!(
            "binary operator between {} and {} is not supported",
            l.type_name(),
            r.type_name()
        ))),
    }
}

fn is_comparison(op: u16) -> bool {
    matches!(op, T_EQLC | T_NEQ | T_GTR | T_LSS | T_GTE | T_LTE)
}

/// Whether the result of `op` loses the metric name (arithmetic does, except `atan2`).
fn drops_metric_name(op: u16) -> bool {
    matches!(op, T_ADD | T_SUB | T_MUL | T_DIV | T_POW | T_MOD)
}

/// `l op r`: the value and, for a comparison, whether it holds (the value is then `l`).
fn apply(op: u16, l: f64, r: f64) -> (f64, bool) {
    match op {
        T_ADD => (l + r, true),
        T_SUB => (l - r, true),
        T_MUL => (l * r, true),
        T_DIV => (l / r, true),
        T_MOD => (l % r, true),
        T_POW => (l.powf(r), true),
        T_ATAN2 => (l.atan2(r), true),
        T_EQLC => (l, l == r),
        T_NEQ => (l, l != r),
        T_GTR => (l, l > r),
        T_LSS => (l, l < r),
        T_GTE => (l, l >= r),
        T_LTE => (l, l <= r),
        _ => (f64::NAN, false),
    }
}

/// A vector and a scalar; `scalar_first` when the scalar is the left operand.
fn vector_scalar(
    op: u16,
    series: Vec<StepSeries>,
    scalar: &[f64],
    scalar_first: bool,
    return_bool: bool,
) -> Result<Vec<StepSeries>> {
    let drop_name = drops_metric_name(op) || return_bool;
    let out = series
        .into_iter()
        .filter_map(|s| {
            let values: Vec<Option<f64>> = s
                .values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let v = (*v)?;
                    let (l, r) = if scalar_first {
                        (scalar[i], v)
                    } else {
                        (v, scalar[i])
                    };
                    let (mut value, keep) = apply(op, l, r);
                    // A comparison keeps the vector's value, whichever side it is on.
                    if is_comparison(op) && scalar_first {
                        value = r;
                    }
                    if return_bool {
                        return Some(f64::from(u8::from(keep)));
                    }
                    keep.then_some(value)
                })
                .collect();
            values.iter().any(Option::is_some).then(|| StepSeries {
                labels: if drop_name {
                    s.labels.without_metric_name()
                } else {
                    s.labels
                },
                values,
            })
        })
        .collect();
    merge_same_labels(out)
}

/// How two elements are matched.
struct Matching<'a> {
    on: bool,
    names: &'a [String],
}

impl Matching<'_> {
    fn from(modifier: Option<&BinModifier>) -> Matching<'_> {
        match modifier.and_then(|m| m.matching.as_ref()) {
            Some(LabelModifier::Include(l)) => Matching {
                on: true,
                names: &l.labels,
            },
            Some(LabelModifier::Exclude(l)) => Matching {
                on: false,
                names: &l.labels,
            },
            None => Matching {
                on: false,
                names: &[],
            },
        }
    }

    fn signature(&self, labels: &LabelSet) -> LabelSet {
        let mut sig = labels.clone();
        if self.on {
            sig.keep_only(self.names);
        } else {
            sig = sig.without_metric_name();
            sig.remove_all(self.names);
        }
        sig
    }
}

/// `and`, `or`, `unless`: elements kept or added by whether their signature is present on the
/// other side at that step; labels are not changed.
fn set_operation(
    op: u16,
    mut lhs: Vec<StepSeries>,
    mut rhs: Vec<StepSeries>,
    modifier: Option<&BinModifier>,
    steps: &Steps,
) -> Vec<StepSeries> {
    let matching = Matching::from(modifier);
    let lsig: Vec<LabelSet> = lhs.iter().map(|s| matching.signature(&s.labels)).collect();
    let rsig: Vec<LabelSet> = rhs.iter().map(|s| matching.signature(&s.labels)).collect();
    let mut present: HashSet<&LabelSet> = HashSet::new();
    for step in 0..steps.count {
        present.clear();
        if op == T_LOR {
            present.extend(
                lhs.iter()
                    .zip(&lsig)
                    .filter(|(s, _)| s.values[step].is_some())
                    .map(|(_, sig)| sig),
            );
            for (s, sig) in rhs.iter_mut().zip(&rsig) {
                if present.contains(sig) {
                    s.values[step] = None;
                }
            }
        } else {
            present.extend(
                rhs.iter()
                    .zip(&rsig)
                    .filter(|(s, _)| s.values[step].is_some())
                    .map(|(_, sig)| sig),
            );
            let keep_if_present = op == T_LAND;
            for (s, sig) in lhs.iter_mut().zip(&lsig) {
                if present.contains(sig) != keep_if_present {
                    s.values[step] = None;
                }
            }
        }
    }
    let mut out = lhs;
    if op == T_LOR {
        out.extend(rhs);
    }
    out.retain(|s| s.values.iter().any(Option::is_some));
    out
}

/// Arithmetic and comparisons between two vectors.
fn vector_vector(
    budget: &mut Budget,
    op: u16,
    lhs: Vec<StepSeries>,
    rhs: Vec<StepSeries>,
    modifier: Option<&BinModifier>,
    return_bool: bool,
    steps: &Steps,
) -> Result<Vec<StepSeries>> {
    let matching = Matching::from(modifier);
    let card = modifier.map_or(&VectorMatchCardinality::OneToOne, |m| &m.card);
    let (include, swapped) = match card {
        VectorMatchCardinality::ManyToOne(l) => (l.labels.as_slice(), false),
        VectorMatchCardinality::OneToMany(l) => (l.labels.as_slice(), true),
        _ => (&[][..], false),
    };
    let one_to_one = matches!(card, VectorMatchCardinality::OneToOne);
    // `many` is the side with one output per element; `one` the side matched to it.
    let (many, one) = if swapped { (rhs, lhs) } else { (lhs, rhs) };
    let many_sig: Vec<LabelSet> = many.iter().map(|s| matching.signature(&s.labels)).collect();
    let one_sig: Vec<LabelSet> = one.iter().map(|s| matching.signature(&s.labels)).collect();
    let drop_name = drops_metric_name(op) || return_bool;

    let mut out: Vec<StepSeries> = Vec::new();
    let mut out_index = LabelIndex::default();
    let mut one_at: HashMap<&LabelSet, usize> = HashMap::new();
    let mut matched: HashSet<&LabelSet> = HashSet::new();
    let mut written: HashSet<usize> = HashSet::new();
    for step in 0..steps.count {
        if step % 64 == 0 {
            budget.check_deadline("binary operator")?;
        }
        one_at.clear();
        matched.clear();
        written.clear();
        for (i, (s, sig)) in one.iter().zip(&one_sig).enumerate() {
            if s.values[step].is_none() {
                continue;
            }
            if let Some(previous) = one_at.insert(sig, i) {
                return Err(duplicate_series(
                    sig,
                    &one[previous].labels,
                    &s.labels,
                    if swapped { "left" } else { "right" },
                ));
            }
        }
        for (s, sig) in many.iter().zip(&many_sig) {
            let Some(mv) = s.values[step] else { continue };
            let Some(&j) = one_at.get(sig) else { continue };
            let ov = one[j].values[step].unwrap_or(f64::NAN);
            let (l, r) = if swapped { (ov, mv) } else { (mv, ov) };
            let (value, keep) = apply(op, l, r);
            let value = if return_bool {
                f64::from(u8::from(keep))
            } else if keep {
                value
            } else {
                continue;
            };
            // Checked on what the operator kept, as Prometheus checks it.
            if one_to_one && !matched.insert(sig) {
                return Err(QueryError::Execution(
                    "multiple matches for labels: many-to-one matching must be explicit \
                     (group_left/group_right)"
                        .into(),
                ));
            }
            let mut labels = s.labels.clone();
            if drop_name {
                labels.remove(crate::labels::METRIC_NAME);
            }
            if one_to_one {
                if matching.on {
                    labels.keep_only(matching.names);
                } else {
                    labels.remove_all(matching.names);
                }
            }
            for name in include {
                match one[j].labels.get(name) {
                    Some(v) => labels.set(name, v.to_owned()),
                    None => labels.remove(name),
                }
            }
            let (index, new) = out_index.index_of(&labels);
            if new {
                budget.take_series(steps)?;
                out.push(StepSeries {
                    labels,
                    values: vec![None; steps.count],
                });
            }
            if !written.insert(index) {
                return Err(QueryError::Execution(
                    "multiple matches for labels: grouping labels must ensure unique matches"
                        .into(),
                ));
            }
            out[index].values[step] = Some(value);
        }
    }
    Ok(out)
}

fn duplicate_series(sig: &LabelSet, a: &LabelSet, b: &LabelSet, side: &str) -> QueryError {
    QueryError::Execution(format!(
        "found duplicate series for the match group {sig} on the {side} hand-side of the \
         operation: [{a}, {b}];many-to-many matching not allowed: matching labels must be \
         unique on one side"
    ))
}
