use std::time::Duration;

use m3_storage::{Error, InstantSample, QueryEngine, QueryResult, STALE_NAN_BITS, Series, Store};

use crate::{RAW, labels, open, tmp};

const MIN: i64 = 60_000;

/// `up{job="api"}` every minute from 1m to 10m with value = minute; `up{job="db"}` at 1m only;
/// `other` at 5m.
fn fixture(store: &Store) {
    let api = labels(&[("__name__", "up"), ("job", "api")]);
    let db = labels(&[("__name__", "up"), ("job", "db")]);
    let other = labels(&[("__name__", "other")]);
    let mut batch: Vec<_> = (1..=10).map(|m| (&api, m * MIN, m as f64)).collect();
    batch.push((&db, MIN, 100.0));
    batch.push((&other, 5 * MIN, 5.0));
    store.write_batch(RAW, &batch).unwrap();
}

fn vector(r: QueryResult) -> Vec<InstantSample> {
    match r {
        QueryResult::Vector(v) => v,
        other => panic!("expected vector, got {other:?}"),
    }
}

fn matrix(r: QueryResult) -> Vec<Series> {
    match r {
        QueryResult::Matrix(m) => m,
        other => panic!("expected matrix, got {other:?}"),
    }
}

#[test]
fn instant_vector_takes_latest_within_lookback() {
    let dir = tmp();
    let store = open(dir.path());
    fixture(&store);

    let v = vector(store.instant_query(RAW, "up", 3 * MIN + 30_000).unwrap());
    assert_eq!(v.len(), 2);
    assert_eq!(v[0].labels, labels(&[("__name__", "up"), ("job", "api")]));
    assert_eq!((v[0].timestamp_ms, v[0].value), (3 * MIN + 30_000, 3.0));
    assert_eq!(v[1].value, 100.0, "db's 1m sample is within 5m");

    // At exactly 6m the db sample (1m) is 5m old: the window (t-5m, t] excludes it.
    let v = vector(store.instant_query(RAW, "up", 6 * MIN).unwrap());
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].value, 6.0, "a sample exactly at t counts");

    let v = vector(
        store
            .instant_query(RAW, r#"up{job=~"d.*"}"#, 2 * MIN)
            .unwrap(),
    );
    assert_eq!(v.len(), 1);
    assert!(vector(store.instant_query(RAW, "up", 0).unwrap()).is_empty());
    assert!(vector(store.instant_query(RAW, "nothing_here", 5 * MIN).unwrap()).is_empty());

    // A shorter lookback.
    let engine = QueryEngine::new(store.clone()).with_lookback(Duration::from_secs(30));
    assert!(
        vector(
            engine
                .instant_query(RAW, "other", 5 * MIN + 30_000)
                .unwrap()
        )
        .is_empty()
    );
    assert_eq!(
        vector(
            engine
                .instant_query(RAW, "other", 5 * MIN + 29_999)
                .unwrap()
        )
        .len(),
        1
    );
}

#[test]
fn offset_and_at_modifiers() {
    let dir = tmp();
    let store = open(dir.path());
    fixture(&store);
    let v = vector(
        store
            .instant_query(RAW, r#"up{job="api"} offset 3m"#, 8 * MIN)
            .unwrap(),
    );
    assert_eq!((v[0].timestamp_ms, v[0].value), (8 * MIN, 5.0));
    let v = vector(
        store
            .instant_query(RAW, r#"up{job="api"} @ 120"#, 8 * MIN)
            .unwrap(),
    );
    assert_eq!(v[0].value, 2.0);
    let v = vector(
        store
            .instant_query(RAW, r#"up{job="api"} offset -2m"#, 3 * MIN)
            .unwrap(),
    );
    assert_eq!(v[0].value, 5.0);
}

#[test]
fn matrix_selector_returns_raw_points() {
    let dir = tmp();
    let store = open(dir.path());
    fixture(&store);
    let m = matrix(
        store
            .instant_query(RAW, r#"up{job="api"}[3m]"#, 5 * MIN)
            .unwrap(),
    );
    assert_eq!(m.len(), 1);
    // (2m, 5m]: left-open.
    assert_eq!(
        m[0].samples,
        vec![(3 * MIN, 3.0), (4 * MIN, 4.0), (5 * MIN, 5.0)]
    );
    let m = matrix(
        store
            .instant_query(RAW, r#"up[2m] offset 5m"#, 10 * MIN)
            .unwrap(),
    );
    assert_eq!(m[0].samples, vec![(4 * MIN, 4.0), (5 * MIN, 5.0)]);
    assert_eq!(m.len(), 1, "db has nothing in (3m, 5m]");
}

#[test]
fn range_query_one_point_per_step() {
    let dir = tmp();
    let store = open(dir.path());
    fixture(&store);
    let m = matrix(store.range_query(RAW, "up", 0, 8 * MIN, 2 * MIN).unwrap());
    assert_eq!(m.len(), 2);
    assert_eq!(
        m[0].samples,
        vec![
            (2 * MIN, 2.0),
            (4 * MIN, 4.0),
            (6 * MIN, 6.0),
            (8 * MIN, 8.0)
        ],
        "no point at 0: nothing written yet"
    );
    // db: sample at 1m visible at 2m and 4m, gone (5m old or more) from 6m on.
    assert_eq!(m[1].samples, vec![(2 * MIN, 100.0), (4 * MIN, 100.0)]);

    // Steps between samples carry the latest value; past the last sample the lookback runs out.
    let m = matrix(
        store
            .range_query(RAW, "other", 4 * MIN, 11 * MIN, MIN)
            .unwrap(),
    );
    let ts: Vec<i64> = m[0].samples.iter().map(|p| p.0).collect();
    assert_eq!(ts, vec![5 * MIN, 6 * MIN, 7 * MIN, 8 * MIN, 9 * MIN]);
    assert!(m[0].samples.iter().all(|p| p.1 == 5.0));

    // Offset shifts every step.
    let m = matrix(
        store
            .range_query(RAW, r#"up{job="api"} offset 1m"#, 3 * MIN, 4 * MIN, MIN)
            .unwrap(),
    );
    assert_eq!(m[0].samples, vec![(3 * MIN, 2.0), (4 * MIN, 3.0)]);
    // @ end() pins every step to the query end.
    let m = matrix(
        store
            .range_query(RAW, r#"up{job="api"} @ end()"#, 3 * MIN, 5 * MIN, MIN)
            .unwrap(),
    );
    assert_eq!(
        m[0].samples,
        vec![(3 * MIN, 5.0), (4 * MIN, 5.0), (5 * MIN, 5.0)]
    );
}

#[test]
fn staleness_markers_end_a_series() {
    let dir = tmp();
    let store = open(dir.path());
    let l = labels(&[("__name__", "s")]);
    let stale = f64::from_bits(STALE_NAN_BITS);
    store
        .write_batch(
            RAW,
            &[
                (&l, MIN, 1.0),
                (&l, 2 * MIN, stale),
                (&l, 3 * MIN, f64::NAN),
            ],
        )
        .unwrap();
    assert_eq!(
        vector(store.instant_query(RAW, "s", MIN + 1).unwrap()).len(),
        1
    );
    assert!(vector(store.instant_query(RAW, "s", 2 * MIN + 1).unwrap()).is_empty());
    // An ordinary NaN is a value.
    assert!(
        vector(store.instant_query(RAW, "s", 3 * MIN).unwrap())[0]
            .value
            .is_nan()
    );
    let m = matrix(store.instant_query(RAW, "s[5m]", 3 * MIN).unwrap());
    assert_eq!(
        m[0].samples.len(),
        2,
        "the marker is left out of range vectors"
    );
    let m = matrix(store.range_query(RAW, "s", MIN, 3 * MIN, MIN).unwrap());
    let ts: Vec<i64> = m[0].samples.iter().map(|p| p.0).collect();
    assert_eq!(ts, vec![MIN, 3 * MIN]);
}

#[test]
fn errors_are_typed() {
    let dir = tmp();
    let store = open(dir.path());
    fixture(&store);
    let e = store.instant_query(RAW, "sum(up)", MIN).unwrap_err();
    assert!(
        matches!(e, Error::Unsupported(_)) && e.is_bad_input(),
        "{e}"
    );
    assert!(
        e.to_string().starts_with("unsupported expression: sum(up)"),
        "{e}"
    );
    assert!(matches!(
        store.instant_query(RAW, "rate(up[5m])", MIN),
        Err(Error::Unsupported(_))
    ));
    assert!(matches!(
        store.instant_query(RAW, "up{", MIN),
        Err(Error::BadQuery(_))
    ));
    assert!(matches!(store.instant_query(RAW, r#"up{a=~"("}"#, MIN), Err(e) if e.is_bad_input()));
    assert!(matches!(
        store.instant_query("nope", "up", MIN),
        Err(Error::UnknownNamespace(_))
    ));
    for (s, e, step) in [
        (10, 0, 1),
        (0, 10, 0),
        (0, 10, -1),
        (0, 11_000, 1),
        (i64::MIN, i64::MAX, 1),
    ] {
        let r = store.range_query(RAW, "up", s, e, step);
        assert!(
            matches!(r, Err(Error::BadQuery(_))),
            "{s} {e} {step}: {r:?}"
        );
    }
    assert!(store.range_query(RAW, "up", 0, 10_999, 1).is_ok());
    assert!(matches!(
        store.range_query(RAW, "up[5m]", 0, MIN, MIN),
        Err(Error::BadQuery(_))
    ));
    // Extreme evaluation times do not overflow.
    for t in [i64::MIN, i64::MAX] {
        store.instant_query(RAW, "up offset 1h", t).unwrap();
        store.instant_query(RAW, "up[1h] offset -1h", t).unwrap();
    }
    store
        .range_query(RAW, "up", i64::MAX - 10, i64::MAX, 3)
        .unwrap();
    store
        .range_query(RAW, "up", i64::MIN, i64::MIN + 10, 3)
        .unwrap();
}
