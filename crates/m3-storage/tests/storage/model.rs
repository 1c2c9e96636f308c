//! Random writes, retention passes and restarts applied to the store and to a naive in-memory
//! model; every query must agree.
//!
//! The model is, per namespace (the raw one, [`RAW`], and the aggregated one, [`AGG`]), a map
//! from label set to its samples by timestamp:
//!
//! * a write puts each sample in its namespace, a later value for the same (series, timestamp)
//!   replacing the earlier one, also within one batch;
//! * a retention pass at `now` drops, in each namespace, the samples older than
//!   `now − retention` of that namespace (48h raw, 40d aggregated); a series left without
//!   samples is gone (it no longer counts and no query sees it). The cutoff stays: a sample
//!   written later with an older timestamp is never seen (the store frees space in whole
//!   chunks and blocks, but reads start at the cutoff);
//! * a reopen (dropping the store, after closing it or not, and opening it again from the same
//!   directory) changes nothing, and neither does a compaction (moving the heads' older chunks
//!   into blocks).
//!
//! After every action the series count of each namespace is checked; at the end `select`,
//! `series`, `label_names` and `label_values` are compared on both namespaces for random matchers
//! and time ranges.

use std::collections::BTreeMap;

use m3_storage::{Labels, Matcher};
use proptest::prelude::*;

use crate::{AGG, RAW, labels, namespaces, open, tmp};

/// The namespaces the model covers, in the order of [`namespaces`].
const NAMESPACES: [&str; 2] = [RAW, AGG];

/// Retention of each of [`NAMESPACES`], in milliseconds.
fn retention_ms() -> [i64; 2] {
    let configs = namespaces();
    NAMESPACES.map(|name| {
        configs
            .iter()
            .find(|c| c.name == name)
            .expect("namespace configured")
            .retention_ms()
    })
}

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
    /// One batch of (pool index, timestamp, value) to the namespace at this index of
    /// [`NAMESPACES`].
    Write(usize, Vec<(usize, i64, i32)>),
    /// A retention pass at this time.
    Retain(i64),
    /// Drops the store (after `close` when true) and opens it again from its directory.
    Reopen { close: bool },
    /// Compacts the heads into blocks at this wall-clock time (ms).
    Compact(i64),
}

fn action() -> impl Strategy<Value = Action> {
    let retention = retention_ms();
    prop_oneof![
        8 => (0..NAMESPACES.len(), prop::collection::vec((0..12usize, -5..60i64, -3..3i32), 1..12))
            .prop_map(|(ns, points)| Action::Write(ns, points)),
        // Cut one namespace somewhere in the written range (and the shorter-lived one wholly).
        2 => (0..NAMESPACES.len(), 0..40i64)
            .prop_map(move |(ns, cutoff)| Action::Retain(cutoff + retention[ns])),
        2 => any::<bool>().prop_map(|close| Action::Reopen { close }),
        // With two-hour blocks the cutoff is (now − 1h) rounded down to 2h: 3h cuts what is
        // before 0, 5h and later everything written so far.
        2 => prop::sample::select(vec![3 * HOUR_MS, 5 * HOUR_MS, 7 * HOUR_MS]).prop_map(Action::Compact),
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

const HOUR_MS: i64 = 3_600_000;

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
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn select_agrees_with_model(
        actions in prop::collection::vec(action(), 1..10),
        queries in prop::collection::vec((prop::collection::vec(matcher(), 0..3), -10..70i64, 0..40i64), 1..8),
    ) {
        let dir = tmp();
        let mut store = open(dir.path());
        let pool = pool();
        let retention = retention_ms();
        let mut models = [Model::new(), Model::new()];
        let mut floors = [i64::MIN; 2];
        for a in &actions {
            match a {
                Action::Write(ns, points) => {
                    let batch: Vec<_> = points.iter().map(|&(i, t, v)| (&pool[i], t, f64::from(v))).collect();
                    store.write_batch(NAMESPACES[*ns], &batch).unwrap();
                    for &(i, t, v) in points {
                        if t >= floors[*ns] {
                            models[*ns].entry(pool[i].clone()).or_default().insert(t, f64::from(v));
                        }
                    }
                }
                Action::Retain(now) => {
                    store.enforce_retention(*now).unwrap();
                    for ((model, retention), floor) in models.iter_mut().zip(retention).zip(&mut floors) {
                        let cutoff = now - retention;
                        *floor = (*floor).max(cutoff);
                        let cutoff = *floor;
                        for pts in model.values_mut() {
                            pts.retain(|t, _| *t >= cutoff);
                        }
                        // Retention drops the series it empties.
                        model.retain(|_, pts| !pts.is_empty());
                    }
                }
                Action::Reopen { close } => {
                    if *close {
                        store.close().unwrap();
                    } else {
                        drop(store);
                    }
                    store = open(dir.path());
                }
                Action::Compact(now) => {
                    store.compact(*now).unwrap();
                }
            }
            for (name, model) in NAMESPACES.iter().zip(&models) {
                prop_assert_eq!(store.series_count(name).unwrap(), model.len(), "series in {} after {:?}", name, a);
            }
        }
        for (name, model) in NAMESPACES.iter().zip(&models) {
            for (matchers, start, len) in &queries {
                let end = start + len;
                let got: Vec<_> = store
                    .select(name, matchers, *start, end)
                    .unwrap()
                    .into_iter()
                    .map(|s| (s.labels, s.samples))
                    .collect();
                let want = model_select(model, matchers, *start, end);
                prop_assert_eq!(&got, &want, "{}: matchers {:?} range {}..={}", name, matchers, start, end);

                let got_series = store.series(name, matchers, *start, end).unwrap();
                let want_series: Vec<Labels> = want.iter().map(|(l, _)| l.clone()).collect();
                prop_assert_eq!(got_series, want_series, "{}", name);

                let mut want_names: Vec<String> = want
                    .iter()
                    .flat_map(|(l, _)| l.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>())
                    .collect();
                want_names.sort();
                want_names.dedup();
                prop_assert_eq!(store.label_names(name, matchers, *start, end).unwrap(), want_names, "{}", name);

                let mut want_jobs: Vec<String> = want.iter().filter_map(|(l, _)| l.get("job").map(String::from)).collect();
                want_jobs.sort();
                want_jobs.dedup();
                prop_assert_eq!(store.label_values(name, "job", matchers, *start, end).unwrap(), want_jobs, "{}", name);
            }
        }
    }
}
