use m3_storage::{Labels, Matcher, Store};

use crate::{RAW, labels, namespaces, open, tmp};

/// Four series of `http_requests_total` plus `up`, all with a sample at 1s; `old` only at 100s.
fn fixture(store: &Store) -> Vec<Labels> {
    let all = vec![
        labels(&[
            ("__name__", "http_requests_total"),
            ("job", "api"),
            ("code", "200"),
        ]),
        labels(&[
            ("__name__", "http_requests_total"),
            ("job", "api"),
            ("code", "500"),
        ]),
        labels(&[
            ("__name__", "http_requests_total"),
            ("job", "web"),
            ("code", "200"),
        ]),
        labels(&[("__name__", "http_requests_total"), ("code", "404")]),
        labels(&[("__name__", "up"), ("job", "api"), ("instance", "a:9090")]),
    ];
    let batch: Vec<_> = all.iter().map(|l| (l, 1_000, 1.0)).collect();
    store.write_batch(RAW, &batch).unwrap();
    let old = labels(&[("__name__", "old"), ("job", "gone")]);
    store.write_batch(RAW, &[(&old, 100_000, 1.0)]).unwrap();
    all
}

fn names(store: &Store, matchers: &[Matcher]) -> Vec<String> {
    store
        .series(RAW, matchers, 0, 10_000)
        .unwrap()
        .into_iter()
        .map(|l| l.to_string())
        .collect()
}

#[test]
fn matcher_kinds() {
    let dir = tmp();
    let store = open(dir.path());
    fixture(&store);
    let http = Matcher::equal("__name__", "http_requests_total");

    assert_eq!(
        names(&store, &[http.clone(), Matcher::equal("job", "api")]).len(),
        2
    );
    // != keeps series lacking the label.
    assert_eq!(
        names(&store, &[http.clone(), Matcher::not_equal("job", "api")]),
        vec![
            r#"{__name__="http_requests_total", code="200", job="web"}"#,
            r#"{__name__="http_requests_total", code="404"}"#,
        ]
    );
    // Regexes are anchored: "5" alone matches nothing, "5.." matches 500.
    assert!(names(&store, &[Matcher::regex("code", "5").unwrap()]).is_empty());
    assert_eq!(
        names(&store, &[Matcher::regex("code", "5..").unwrap()]).len(),
        1
    );
    assert_eq!(
        names(&store, &[Matcher::regex("code", "2..|404").unwrap()]).len(),
        3
    );
    assert_eq!(
        names(
            &store,
            &[http.clone(), Matcher::not_regex("code", "2..").unwrap()]
        )
        .len(),
        2
    );
    // Several positive matchers intersect.
    assert_eq!(
        names(
            &store,
            &[Matcher::equal("job", "api"), Matcher::equal("code", "200")]
        ),
        vec![r#"{__name__="http_requests_total", code="200", job="api"}"#]
    );
    assert!(
        names(
            &store,
            &[Matcher::equal("job", "web"), Matcher::equal("code", "500")]
        )
        .is_empty()
    );
}

#[test]
fn empty_value_semantics() {
    let dir = tmp();
    let store = open(dir.path());
    fixture(&store);
    let http = Matcher::equal("__name__", "http_requests_total");
    // job="" selects series without job.
    assert_eq!(
        names(&store, &[http.clone(), Matcher::equal("job", "")]),
        vec![r#"{__name__="http_requests_total", code="404"}"#]
    );
    // job!="" selects series with job.
    assert_eq!(
        names(&store, &[http.clone(), Matcher::not_equal("job", "")]).len(),
        3
    );
    // =~".*" matches everything, =~".+" only series having the label.
    assert_eq!(
        names(
            &store,
            &[http.clone(), Matcher::regex("job", ".*").unwrap()]
        )
        .len(),
        4
    );
    assert_eq!(
        names(
            &store,
            &[http.clone(), Matcher::regex("job", ".+").unwrap()]
        )
        .len(),
        3
    );
    assert_eq!(
        names(
            &store,
            &[http.clone(), Matcher::not_regex("job", ".+").unwrap()]
        )
        .len(),
        1
    );
    // Only matchers that accept "" → full scan of the namespace.
    assert_eq!(names(&store, &[Matcher::not_equal("job", "api")]).len(), 2);
    assert_eq!(names(&store, &[Matcher::equal("instance", "")]).len(), 4);
}

#[test]
fn no_matchers_selects_every_live_series() {
    let dir = tmp();
    let store = open(dir.path());
    let all = fixture(&store);
    let mut got = store.series(RAW, &[], 0, 10_000).unwrap();
    let mut want = all.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want, "`old` has no sample in range");
    assert_eq!(store.series(RAW, &[], 0, 200_000).unwrap().len(), 6);
    // Results are sorted by labels.
    let s = store.select(RAW, &[], 0, 200_000).unwrap();
    assert!(s.windows(2).all(|w| w[0].labels < w[1].labels));
}

#[test]
fn label_names_and_values() {
    let dir = tmp();
    let store = open(dir.path());
    fixture(&store);
    assert_eq!(
        store.label_names(RAW, &[], 0, 10_000).unwrap(),
        vec!["__name__", "code", "instance", "job"]
    );
    assert_eq!(
        store
            .label_names(RAW, &[Matcher::equal("__name__", "up")], 0, 10_000)
            .unwrap(),
        vec!["__name__", "instance", "job"]
    );
    assert_eq!(
        store.label_values(RAW, "job", &[], 0, 10_000).unwrap(),
        vec!["api", "web"]
    );
    assert_eq!(
        store.label_values(RAW, "job", &[], 0, 200_000).unwrap(),
        vec!["api", "gone", "web"]
    );
    assert_eq!(
        store
            .label_values(RAW, "__name__", &[Matcher::equal("job", "api")], 0, 10_000)
            .unwrap(),
        vec!["http_requests_total", "up"]
    );
    assert_eq!(
        store
            .label_values(
                RAW,
                "code",
                &[Matcher::regex("job", "w.*").unwrap()],
                0,
                10_000
            )
            .unwrap(),
        vec!["200"]
    );
    assert!(
        store
            .label_values(RAW, "nope", &[], 0, 10_000)
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .label_names(RAW, &[], 20_000, 30_000)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn odd_bytes_in_labels() {
    let dir = tmp();
    let store = open(dir.path());
    // Values that are prefixes of each other and contain separators must not bleed together.
    let a = labels(&[("__name__", "x"), ("v", "a")]);
    let b = labels(&[("__name__", "x"), ("v", "ab")]);
    let c = labels(&[("__name__", "x"), ("va", "b\0\n\"")]);
    store
        .write_batch(RAW, &[(&a, 1, 1.0), (&b, 1, 2.0), (&c, 1, 3.0)])
        .unwrap();
    assert_eq!(
        store
            .series(RAW, &[Matcher::equal("v", "a")], 0, 10)
            .unwrap(),
        vec![a]
    );
    assert_eq!(
        store.label_values(RAW, "v", &[], 0, 10).unwrap(),
        vec!["a", "ab"]
    );
    assert_eq!(
        store.label_values(RAW, "va", &[], 0, 10).unwrap(),
        vec!["b\0\n\""]
    );
}

/// Any timestamp reads back, the latest one a namespace whose `bufferFuture` takes it.
#[test]
fn negative_and_extreme_timestamps() {
    let dir = tmp();
    let mut config = namespaces();
    config[0] = config[0]
        .clone()
        .with_buffer_future(std::time::Duration::MAX);
    let store = Store::open(dir.path(), config).unwrap();
    let l = labels(&[("__name__", "t")]);
    store
        .write_batch(
            RAW,
            &[
                (&l, i64::MIN, 1.0),
                (&l, -5, 2.0),
                (&l, 0, 3.0),
                (&l, i64::MAX, 4.0),
            ],
        )
        .unwrap();
    let all = store.select(RAW, &[], i64::MIN, i64::MAX).unwrap();
    assert_eq!(
        all[0].samples,
        vec![(i64::MIN, 1.0), (-5, 2.0), (0, 3.0), (i64::MAX, 4.0)]
    );
    let mid = store.select(RAW, &[], -10, 10).unwrap();
    assert_eq!(mid[0].samples, vec![(-5, 2.0), (0, 3.0)]);
    assert!(
        store.select(RAW, &[], 10, -10).unwrap().is_empty(),
        "start > end is empty"
    );
}
