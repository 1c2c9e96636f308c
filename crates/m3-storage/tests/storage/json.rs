use m3_storage::Matcher;

/// Prometheus' staleness marker.
const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

use crate::{RAW, labels, open, tmp};

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
    // Staleness markers are stored and read back as written; the query engine drops them.
    let all = store
        .select(RAW, &[Matcher::equal("__name__", "x")], 0, 10_000)
        .unwrap();
    assert_eq!(
        serde_json::to_string(&all).unwrap(),
        concat!(
            r#"[{"metric":{"__name__":"x"},"values":["#,
            r#"[1,"0.1"],[2.001,"-2e-07"],[3,"NaN"],[4,"1e+21"],[5,"NaN"]"#,
            r#"]}]"#
        )
    );
    // select() results and series() label sets serialize in Prometheus' shapes.
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
