//! Model test: random timed writes through the engine, compared with a naive model that keeps
//! every (timestamp, value) per series and window and computes each aggregation directly.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;

use m3_aggregator::quantile::RELATIVE_ACCURACY;
use m3_aggregator::{
    AggregatedOutput, Aggregator, AggregatorOptions, FlushMode, Metadatas, ShardAssignment,
};
use m3_metric::{AggregationId, AggregationType, MetricType, StoragePolicy};

const S: i64 = 1_000_000_000;
const T0: i64 = 1_700_000_000 * S;
const RES: i64 = 10 * S;

#[derive(Debug, Clone)]
struct Series {
    metric_type: MetricType,
    types: AggregationId,
}

fn series_strategy() -> impl Strategy<Value = Series> {
    (0usize..3, any::<u32>(), 0usize..24).prop_map(|(t, mask, start)| {
        let metric_type = MetricType::ALL[t];
        // Up to six types, read from a random starting point so the high quantiles (last in
        // the list) are drawn as often as the others.
        let all = AggregationType::ALL;
        let chosen: Vec<AggregationType> = (0..all.len())
            .map(|k| (start + k) % all.len())
            .filter(|i| mask & (1 << (i % 32)) != 0 && all[*i].is_valid_for(metric_type))
            .map(|i| all[i])
            .take(6)
            .collect();
        Series {
            metric_type,
            types: AggregationId::from_types(chosen),
        }
    })
}

/// (series index, seconds after T0, value, arrival delay in seconds)
type Write = (usize, i64, f64, i64);

fn writes_strategy(n_series: usize) -> impl Strategy<Value = Vec<Write>> {
    prop::collection::vec(
        (
            0..n_series,
            0i64..60,
            prop_oneof![
                (-1000i32..1000).prop_map(f64::from),
                -1.0e3f64..1.0e3,
                0.001f64..10.0,
            ],
            0i64..30,
        ),
        1..200,
    )
}

fn nearest_rank(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
    sorted[rank - 1]
}

fn check(agg: AggregationType, got: f64, points: &[(i64, f64)]) -> Result<(), TestCaseError> {
    let values: Vec<f64> = points.iter().map(|p| p.1).collect();
    let n = values.len() as f64;
    let sum: f64 = values.iter().sum();
    let scale: f64 = values.iter().map(|v| v.abs()).sum::<f64>().max(1.0);
    let close = |expected: f64, tol: f64| -> Result<(), TestCaseError> {
        prop_assert!(
            (got - expected).abs() <= tol,
            "{agg}: got {got}, expected {expected} (tolerance {tol})"
        );
        Ok(())
    };
    match agg {
        AggregationType::Last => {
            // Latest timestamp; ties go to the later arrival (the later write in the list).
            let max_t = points.iter().map(|p| p.0).max().unwrap();
            let last = points.iter().rev().find(|p| p.0 == max_t).unwrap().1;
            close(last, 0.0)
        }
        AggregationType::Min => close(values.iter().copied().fold(f64::INFINITY, f64::min), 0.0),
        AggregationType::Max => close(
            values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            0.0,
        ),
        AggregationType::Count => close(n, 0.0),
        AggregationType::Sum => close(sum, 1e-9 * scale),
        AggregationType::SumSq => {
            let sq: f64 = values.iter().map(|v| v * v).sum();
            close(sq, 1e-9 * sq.max(1.0))
        }
        AggregationType::Mean => close(sum / n, 1e-9 * scale),
        AggregationType::Stdev => {
            let expected = if values.len() < 2 {
                0.0
            } else {
                let mean = sum / n;
                let ss: f64 = values.iter().map(|v| (v - mean).powi(2)).sum();
                (ss / (n - 1.0)).sqrt()
            };
            close(expected, 1e-3 + 1e-6 * expected)
        }
        _ => {
            let q = agg.quantile().unwrap();
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            // M3's nearest rank; exact below three values, within the sketch's 1 % above.
            let x = nearest_rank(&sorted, q);
            if sorted.len() < 3 {
                return close(x, 0.0);
            }
            close(x, RELATIVE_ACCURACY * x.abs() * (1.0 + 1e-12) + 1e-9)
        }
    }
}

fn run(series: Vec<Series>, writes: Vec<Write>) -> Result<(), TestCaseError> {
    let agg = Aggregator::new(
        AggregatorOptions::default(),
        Arc::new(|id: &[u8]| u32::from(id.last().copied().unwrap_or(0)) % 3),
    );
    agg.set_shards((0..3).map(ShardAssignment::unbounded).collect(), 0);
    let policy: StoragePolicy = "10s:2d".parse().unwrap();
    // (series, window start) → points in arrival order.
    let mut model: BTreeMap<(usize, i64), Vec<(i64, f64)>> = BTreeMap::new();
    for (s, secs, value, delay) in writes {
        let sr = &series[s];
        let value = if sr.metric_type == MetricType::Counter {
            value.trunc()
        } else {
            value
        };
        let t = T0 + secs * S + (secs * 7919) % S;
        let id = format!("s{s}");
        agg.add_timed(
            sr.metric_type,
            id.as_bytes(),
            t,
            value,
            Metadatas::Single {
                aggregation_id: sr.types,
                storage_policy: policy,
            },
            t + delay * S,
        )
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
        model
            .entry((s, t.div_euclid(RES) * RES))
            .or_default()
            .push((t, value));
    }
    let mut out: Vec<AggregatedOutput> = Vec::new();
    agg.flush(T0 + 1000 * S, FlushMode::Leader, &mut out);
    let mut expected_outputs = 0;
    for ((s, start), points) in &model {
        let sr = &series[*s];
        let types: Vec<AggregationType> = sr.types.resolve(sr.metric_type).types().collect();
        expected_outputs += types.len();
        let base = format!("s{s}");
        for agg_type in types {
            let o = out
                .iter()
                .find(|o| {
                    o.time_nanos == start + RES
                        && o.aggregation == agg_type
                        && o.id.starts_with(base.as_bytes())
                        && (o.id.len() == base.len() || o.id[base.len()] == b'.')
                })
                .ok_or_else(|| TestCaseError::fail(format!("missing {base} {agg_type}")))?;
            check(agg_type, o.value, points)?;
        }
    }
    prop_assert_eq!(out.len(), expected_outputs);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn flush_matches_naive_model(
        (series, writes) in prop::collection::vec(series_strategy(), 1..5)
            .prop_flat_map(|series| {
                let n = series.len();
                (Just(series), writes_strategy(n))
            })
    ) {
        run(series, writes)?;
    }
}
