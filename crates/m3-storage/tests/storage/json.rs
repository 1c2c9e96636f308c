use m3_storage::{Matcher, STALE_NAN_BITS};

use crate::{RAW, labels, open, tmp};

#[test]
fn vector_json_matches_prometheus() {
    let dir = tmp();
    let store = open(dir.path());
    let a = labels(&[("__name__", "up"), ("job", "api"), ("instance", "h:1")]);
    let b = labels(&[("__name__", "up"), ("job", "db")]);
    store
        .write_batch(
            RAW,
            &[
                (&a, 1_700_000_000_000, 1.0),
                (&b, 1_700_000_000_250, f64::INFINITY),
            ],
        )
        .unwrap();
    let r = store.instant_query(RAW, "up", 1_700_000_000_500).unwrap();
    assert_eq!(
        serde_json::to_string(&r).unwrap(),
        concat!(
            r#"{"resultType":"vector","result":["#,
            r#"{"metric":{"__name__":"up","instance":"h:1","job":"api"},"value":[1700000000.5,"1"]},"#,
            r#"{"metric":{"__name__":"up","job":"db"},"value":[1700000000.5,"+Inf"]}"#,
            r#"]}"#
        )
    );
    let empty = store.instant_query(RAW, "nothing", 0).unwrap();
    assert_eq!(
        serde_json::to_string(&empty).unwrap(),
        r#"{"resultType":"vector","result":[]}"#
    );
}

#[test]
fn matrix_json_matches_prometheus() {
    let dir = tmp();
    let store = open(dir.path());
    let a = labels(&[("__name__", "x")]);
    store
        .write_batch(
            RAW,
            &[
                (&a, 1_000, 0.1),
                (&a, 2_001, -2e-7),
                (&a, 3_000, f64::NAN),
                (&a, 4_000, 1e21),
                (&a, 5_000, f64::from_bits(STALE_NAN_BITS)),
            ],
        )
        .unwrap();
    let r = store.instant_query(RAW, "x[10s]", 5_000).unwrap();
    assert_eq!(
        serde_json::to_string(&r).unwrap(),
        concat!(
            r#"{"resultType":"matrix","result":[{"metric":{"__name__":"x"},"values":["#,
            r#"[1,"0.1"],[2.001,"-2e-07"],[3,"NaN"],[4,"1e+21"]"#,
            r#"]}]}"#
        )
    );
    let r = store.range_query(RAW, "x", 1_000, 2_000, 1_000).unwrap();
    assert_eq!(
        serde_json::to_string(&r).unwrap(),
        r#"{"resultType":"matrix","result":[{"metric":{"__name__":"x"},"values":[[1,"0.1"],[2,"0.1"]]}]}"#
    );
    // select() results and series() label sets serialize in the same shapes.
    let s = store
        .select(RAW, &[Matcher::equal("__name__", "x")], 0, 1_000)
        .unwrap();
    assert_eq!(
        serde_json::to_string(&s).unwrap(),
        r#"[{"metric":{"__name__":"x"},"values":[[1,"0.1"]]}]"#
    );
    let l = store.series(RAW, &[], 0, 10_000).unwrap();
    assert_eq!(serde_json::to_string(&l).unwrap(), r#"[{"__name__":"x"}]"#);
}
