//! Random writes, retention passes and queries applied to the store and to a naive in-memory
//! model; every query must agree.

use std::collections::BTreeMap;

use m3_storage::{Labels, Matcher};
use proptest::prelude::*;

use crate::{RAW, labels, open, tmp};

const RETENTION_MS: i64 = 48 * 3_600_000;

/// A small pool of label sets sharing names and values, so matchers hit and miss.
fn pool() -> Vec<Labels> {
    let mut out = Vec::new();
    for name in ["a", "b"] {
        for job in ["", "x", "y"] {
            for zone in ["", "x"] {
                out.push(labels(&[("__name__", name), ("job", job), ("zone", zone)]));
            }
        }
    }
    out
}

#[derive(Debug, Clone)]
enum Action {
    Write(Vec<(usize, i64, i32)>),
    Retain(i64),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        8 => prop::collection::vec((0..12usize, -5..60i64, -3..3i32), 1..12).prop_map(Action::Write),
        1 => (0..40i64).prop_map(Action::Retain),
    ]
}

fn matcher() -> impl Strategy<Value = Matcher> {
    let name = prop::sample::select(vec!["__name__", "job", "zone", "missing"]);
    let value = prop::sample::select(vec!["", "a", "x", "y"]);
    let pattern = prop::sample::select(vec!["", "a", "x|y", ".*", ".+", "y.*", "[ab]"]);
    prop_oneof![
        (name.clone(), value.clone()).prop_map(|(n, v)| Matcher::equal(n, v)),
        (name.clone(), value).prop_map(|(n, v)| Matcher::not_equal(n, v)),
        (name.clone(), pattern.clone()).prop_map(|(n, p)| Matcher::regex(n, p).unwrap()),
        (name, pattern).prop_map(|(n, p)| Matcher::not_regex(n, p).unwrap()),
    ]
}

type Model = BTreeMap<Labels, BTreeMap<i64, f64>>;

fn model_select(
    model: &Model,
    matchers: &[Matcher],
    start: i64,
    end: i64,
) -> Vec<(Labels, Vec<(i64, f64)>)> {
    model
        .iter()
        .filter(|(l, _)| matchers.iter().all(|m| m.matches(l)))
        .map(|(l, pts)| {
            (
                l.clone(),
                pts.range(start..=end)
                    .map(|(t, v)| (*t, *v))
                    .collect::<Vec<_>>(),
            )
        })
        .filter(|(_, pts)| !pts.is_empty())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn select_agrees_with_model(
        actions in prop::collection::vec(action(), 1..8),
        queries in prop::collection::vec((prop::collection::vec(matcher(), 0..3), -10..70i64, 0..40i64), 1..8),
    ) {
        let dir = tmp();
        let store = open(dir.path());
        let pool = pool();
        let mut model = Model::new();
        for a in &actions {
            match a {
                Action::Write(points) => {
                    let batch: Vec<_> = points.iter().map(|&(i, t, v)| (&pool[i], t, f64::from(v))).collect();
                    store.write_batch(RAW, &batch).unwrap();
                    for &(i, t, v) in points {
                        model.entry(pool[i].clone()).or_default().insert(t, f64::from(v));
                    }
                }
                Action::Retain(cutoff) => {
                    store.enforce_retention(cutoff + RETENTION_MS).unwrap();
                    for pts in model.values_mut() {
                        pts.retain(|t, _| *t >= *cutoff);
                    }
                }
            }
        }
        // Series only lose samples through retention, which drops them once empty.
        let live = model.values().filter(|pts| !pts.is_empty()).count();
        prop_assert_eq!(store.series_count(RAW).unwrap(), live);
        for (matchers, start, len) in &queries {
            let end = start + len;
            let got: Vec<_> = store
                .select(RAW, matchers, *start, end)
                .unwrap()
                .into_iter()
                .map(|s| (s.labels, s.samples))
                .collect();
            let want = model_select(&model, matchers, *start, end);
            prop_assert_eq!(&got, &want, "matchers {:?} range {}..={}", matchers, start, end);

            let got_series = store.series(RAW, matchers, *start, end).unwrap();
            let want_series: Vec<Labels> = want.iter().map(|(l, _)| l.clone()).collect();
            prop_assert_eq!(got_series, want_series);

            let mut want_jobs: Vec<String> = want.iter().filter_map(|(l, _)| l.get("job").map(String::from)).collect();
            want_jobs.dedup();
            want_jobs.sort();
            want_jobs.dedup();
            prop_assert_eq!(store.label_values(RAW, "job", matchers, *start, end).unwrap(), want_jobs);
        }
    }
}
