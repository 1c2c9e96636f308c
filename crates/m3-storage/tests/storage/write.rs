use m3_storage::{Error, Matcher, Store};

use crate::{AGG, RAW, labels, namespaces, open, tmp};

#[test]
fn write_then_read_round_trip() {
    let dir = tmp();
    let store = open(dir.path());
    let up = labels(&[("__name__", "up"), ("job", "api")]);
    let s = store
        .write_batch(
            RAW,
            &[(&up, 3_000, 3.0), (&up, 1_000, 1.0), (&up, 2_000, f64::NAN)],
        )
        .unwrap();
    assert_eq!((s.samples, s.series_created), (3, 1));

    let got = store
        .select(RAW, &[Matcher::equal("__name__", "up")], 0, 10_000)
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].labels, up);
    let ts: Vec<i64> = got[0].samples.iter().map(|p| p.0).collect();
    assert_eq!(
        ts,
        vec![1_000, 2_000, 3_000],
        "oldest first whatever the write order"
    );
    assert!(got[0].samples[1].1.is_nan());

    // Inclusive bounds.
    let got = store
        .select(RAW, &[Matcher::equal("job", "api")], 2_000, 3_000)
        .unwrap();
    assert_eq!(got[0].samples.len(), 2);
    assert!(
        store
            .select(RAW, &[Matcher::equal("job", "api")], 3_001, 9_000)
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.metrics().samples_written(), 3);
    assert_eq!(store.metrics().series_created(), 1);
}

#[test]
fn rewriting_a_timestamp_overwrites() {
    let dir = tmp();
    let store = open(dir.path());
    let up = labels(&[("__name__", "up")]);
    store.write_batch(RAW, &[(&up, 1_000, 1.0)]).unwrap();
    let again = store.write_batch(RAW, &[(&up, 1_000, 7.0)]).unwrap();
    assert_eq!(again.series_created, 0);
    // The same point twice in one batch: the last one wins.
    store
        .write_batch(RAW, &[(&up, 2_000, 1.0), (&up, 2_000, 2.0)])
        .unwrap();
    let got = store
        .select(RAW, &[Matcher::equal("__name__", "up")], 0, 5_000)
        .unwrap();
    assert_eq!(got[0].samples, vec![(1_000, 7.0), (2_000, 2.0)]);
    assert_eq!(store.series_count(RAW).unwrap(), 1);
}

#[test]
fn namespaces_are_separate() {
    let dir = tmp();
    let store = open(dir.path());
    let up = labels(&[("__name__", "up")]);
    store.write_batch(RAW, &[(&up, 1_000, 1.0)]).unwrap();
    store.write_batch(AGG, &[(&up, 60_000, 2.0)]).unwrap();
    let m = [Matcher::equal("__name__", "up")];
    assert_eq!(
        store.select(RAW, &m, 0, 100_000).unwrap()[0].samples,
        vec![(1_000, 1.0)]
    );
    assert_eq!(
        store.select(AGG, &m, 0, 100_000).unwrap()[0].samples,
        vec![(60_000, 2.0)]
    );
}

#[test]
fn unknown_namespace_is_bad_input_and_counted() {
    let dir = tmp();
    let store = open(dir.path());
    let up = labels(&[("__name__", "up")]);
    let e = store.write_batch("nope", &[(&up, 1, 1.0)]).unwrap_err();
    assert!(
        matches!(e, Error::UnknownNamespace(ref n) if n == "nope"),
        "{e}"
    );
    assert!(e.is_bad_input());
    assert_eq!(store.metrics().write_errors(), 1);
    assert!(store.select("nope", &[], 0, 1).is_err());
}

#[test]
fn many_new_series_in_one_batch_including_repeats() {
    let dir = tmp();
    let store = open(dir.path());
    let all: Vec<_> = (0..50)
        .map(|i| labels(&[("__name__", "m"), ("i", &i.to_string())]))
        .collect();
    let mut batch = Vec::new();
    for (i, l) in all.iter().enumerate() {
        batch.push((l, 1_000, i as f64));
        batch.push((l, 2_000, i as f64));
    }
    let s = store.write_batch(RAW, &batch).unwrap();
    assert_eq!((s.samples, s.series_created), (100, 50));
    assert_eq!(store.series(RAW, &[], 0, 5_000).unwrap().len(), 50);
}

#[test]
fn data_survives_restart() {
    let dir = tmp();
    let a = labels(&[("__name__", "up"), ("job", "api")]);
    let b = labels(&[("__name__", "up"), ("job", "db")]);
    {
        let store = open(dir.path());
        store
            .write_batch(RAW, &[(&a, 1_000, 1.0), (&b, 1_000, 2.0)])
            .unwrap();
        store.write_batch(AGG, &[(&a, 60_000, 5.0)]).unwrap();
        store.close().unwrap();
    }
    {
        // Dropped without close: fjall persists on drop.
        let store = open(dir.path());
        assert_eq!(store.series_count(RAW).unwrap(), 2);
        let got = store
            .select(RAW, &[Matcher::regex("job", "api|db").unwrap()], 0, 5_000)
            .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].samples, vec![(1_000, 1.0)]);
        assert_eq!(got[1].samples, vec![(1_000, 2.0)]);
        assert_eq!(
            store.label_values(RAW, "job", &[], 0, 5_000).unwrap(),
            vec!["api", "db"]
        );
        // Existing series are reused, new ones get fresh ids.
        let c = labels(&[("__name__", "up"), ("job", "web")]);
        let s = store
            .write_batch(RAW, &[(&a, 2_000, 1.0), (&c, 2_000, 3.0)])
            .unwrap();
        assert_eq!(s.series_created, 1);
    }
    let store = open(dir.path());
    let got = store
        .select(RAW, &[Matcher::equal("__name__", "up")], 0, 5_000)
        .unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].samples, vec![(1_000, 1.0), (2_000, 1.0)]);
    assert_eq!(got[2].labels, labels(&[("__name__", "up"), ("job", "web")]));
    assert_eq!(
        store.select(AGG, &[], 0, 100_000).unwrap()[0].samples,
        vec![(60_000, 5.0)]
    );
}

#[test]
fn namespace_ids_stay_stable_when_config_changes() {
    let dir = tmp();
    let up = labels(&[("__name__", "up")]);
    {
        let store = open(dir.path());
        store.write_batch(AGG, &[(&up, 60_000, 9.0)]).unwrap();
    }
    // Reopen with the namespaces reordered and one added in front.
    let mut ns = namespaces();
    ns.reverse();
    ns.insert(
        0,
        m3_storage::NamespaceConfig::aggregated(
            "agg_10s_2d",
            std::time::Duration::from_secs(10),
            crate::HOUR * 48,
        ),
    );
    let store = Store::open(dir.path(), ns).unwrap();
    assert_eq!(
        store.select(AGG, &[], 0, 100_000).unwrap()[0].samples,
        vec![(60_000, 9.0)]
    );
    assert!(
        store
            .select("agg_10s_2d", &[], 0, 100_000)
            .unwrap()
            .is_empty()
    );
    assert!(store.select(RAW, &[], 0, 100_000).unwrap().is_empty());
}

#[test]
fn store_is_send_sync_and_clone_shares_state() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Store>();

    let dir = tmp();
    let store = open(dir.path());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    // Every thread writes the same series set: creation must not duplicate them.
                    let l = labels(&[("__name__", "c"), ("i", &(i % 10).to_string())]);
                    store
                        .write_batch(RAW, &[(&l, i64::from(t * 100 + i), 1.0)])
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(store.series_count(RAW).unwrap(), 10);
    assert_eq!(store.metrics().series_created(), 10);
    let total: usize = store
        .select(RAW, &[], 0, 1_000)
        .unwrap()
        .iter()
        .map(|s| s.samples.len())
        .sum();
    assert_eq!(total, 100);
}

#[test]
fn invalid_config_is_rejected_before_touching_disk() {
    let dir = tmp();
    let path = dir.path().join("store");
    let bad = vec![
        m3_storage::NamespaceConfig::unaggregated("a", std::time::Duration::ZERO),
        m3_storage::NamespaceConfig::unaggregated("a", crate::HOUR),
    ];
    let e = Store::open(&path, bad).unwrap_err();
    assert!(
        matches!(e, Error::InvalidConfig { ref problems } if problems.len() >= 2),
        "{e}"
    );
    assert!(!path.exists());
}

#[test]
fn flush_and_explicit_close_with_clones_alive() {
    let dir = tmp();
    let store = open(dir.path());
    let other = store.clone();
    let up = labels(&[("__name__", "up")]);
    store.write_batch(RAW, &[(&up, 1, 1.0)]).unwrap();
    store.flush().unwrap();
    store.close().unwrap();
    // The clone still works; the database closes with the last handle.
    other.write_batch(RAW, &[(&up, 2, 2.0)]).unwrap();
    assert_eq!(other.select(RAW, &[], 0, 10).unwrap()[0].samples.len(), 2);
}

/// Regression (issue 6): labels over 64 KiB made the engine panic; the batch is now refused
/// as bad input and the store keeps working.
#[test]
fn a_series_too_long_for_a_key_is_refused_not_a_panic() {
    let dir = tmp();
    let store = open(dir.path());
    let huge = "x".repeat(70 * 1024);
    let long = labels(&[("__name__", "big"), ("v", huge.as_str())]);
    let err = store.write_batch(RAW, &[(&long, 1_000, 1.0)]).unwrap_err();
    assert!(err.is_bad_input(), "{err}");
    assert!(err.to_string().contains("at most"), "{err}");
    assert!(
        store.write_failure().is_none(),
        "bad input is not a store failure"
    );
    let ok = labels(&[("__name__", "ok")]);
    store.write_batch(RAW, &[(&ok, 1_000, 1.0)]).unwrap();
    assert_eq!(store.series_count(RAW).unwrap(), 1);
}

#[test]
fn a_store_that_can_write_recovers_at_once() {
    let dir = tmp();
    let store = open(dir.path());
    assert_eq!(store.write_failure(), None);
    assert!(store.try_recover().unwrap());
}

/// A sample further behind its series' newest than `bufferPast` (an hour by default) is
/// refused and counted; the rest of its batch is stored, and other series are not affected.
#[test]
fn samples_older_than_buffer_past_are_refused_and_counted_the_rest_stored() {
    let dir = tmp();
    let store = open(dir.path());
    let a = labels(&[("__name__", "a")]);
    let b = labels(&[("__name__", "b")]);
    let h = 3_600_000;
    store.write_batch(RAW, &[(&a, 10 * h, 1.0)]).unwrap();
    let summary = store
        .write_batch(
            RAW,
            &[
                (&a, 10 * h - 2 * h, 2.0), // two hours behind a's newest: refused
                (&a, 10 * h - h / 2, 3.0), // half an hour behind: taken, out of order
                (&b, 10 * h - 5 * h, 4.0), // b's first sample: taken
            ],
        )
        .unwrap();
    assert_eq!((summary.samples, summary.too_old), (2, 1));
    assert_eq!(store.metrics().samples_refused_too_old(), 1);
    let got: Vec<_> = store
        .select(RAW, &[], i64::MIN, i64::MAX)
        .unwrap()
        .into_iter()
        .map(|s| s.samples)
        .collect();
    assert_eq!(
        got,
        vec![
            vec![(10 * h - h / 2, 3.0), (10 * h, 1.0)],
            vec![(5 * h, 4.0)]
        ]
    );
}

/// A sample further ahead of the clock than `bufferFuture` (ten minutes by default) is refused
/// and counted, the rest of its batch stored; the setting moves the bound.
#[test]
fn samples_further_ahead_than_buffer_future_are_refused_and_counted_the_rest_stored() {
    let now = m3_storage::retention::unix_ms(std::time::SystemTime::now());
    let minute = 60_000;
    let a = labels(&[("__name__", "a")]);
    let b = labels(&[("__name__", "b")]);
    let year = 365 * 24 * 60 * minute;

    let dir = tmp();
    let store = open(dir.path());
    let summary = store
        .write_batch(
            RAW,
            &[
                (&a, now, 1.0),
                (&a, now + 5 * minute, 2.0), // a clock five minutes fast: taken
                (&b, now + year, 3.0),       // a year ahead: refused
                (&b, now - minute, 4.0),
            ],
        )
        .unwrap();
    assert_eq!((summary.samples, summary.too_new), (3, 1));
    assert_eq!(summary.series_created, 2);
    assert_eq!(store.metrics().samples_refused_too_new(), 1);
    let got: Vec<_> = store
        .select(RAW, &[], i64::MIN, i64::MAX)
        .unwrap()
        .into_iter()
        .map(|s| s.samples)
        .collect();
    assert_eq!(
        got,
        vec![
            vec![(now, 1.0), (now + 5 * minute, 2.0)],
            vec![(now - minute, 4.0)]
        ]
    );
    // Nothing of the refused sample is in the log: a reopened store reads the same.
    drop(store);
    let store = open(dir.path());
    let reopened: Vec<_> = store
        .select(RAW, &[], i64::MIN, i64::MAX)
        .unwrap()
        .into_iter()
        .map(|s| s.samples)
        .collect();
    assert_eq!(reopened, got);

    let dir = tmp();
    let strict = Store::open(
        dir.path(),
        vec![
            m3_storage::NamespaceConfig::unaggregated(RAW, std::time::Duration::from_secs(3600))
                .with_buffer_future(std::time::Duration::from_secs(60)),
        ],
    )
    .unwrap();
    let summary = strict
        .write_batch(RAW, &[(&a, now + 5 * minute, 2.0), (&a, now, 1.0)])
        .unwrap();
    assert_eq!((summary.samples, summary.too_new), (1, 1));
}
