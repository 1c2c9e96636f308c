use std::time::{Duration, Instant};

use m3_storage::retention::DELETE_BATCH;
use m3_storage::{Matcher, RetentionTask};

use crate::{AGG, HOUR, RAW, labels, open, tmp};

const H_MS: i64 = 3_600_000;

#[test]
fn deletes_only_samples_older_than_each_namespace_keeps() {
    let dir = tmp();
    let store = open(dir.path());
    let a = labels(&[("__name__", "a")]);
    let b = labels(&[("__name__", "b")]);
    let now = 100 * 24 * H_MS;
    // RAW keeps 48h: cutoff = now - 48h; AGG keeps 40d.
    let raw_cutoff = now - 48 * H_MS;
    store
        .write_batch(
            RAW,
            &[
                (&a, raw_cutoff - 1, 1.0),
                (&a, raw_cutoff, 2.0),
                (&a, now, 3.0),
                (&b, 0, 4.0),
                (&b, raw_cutoff - 10 * H_MS, 5.0),
            ],
        )
        .unwrap();
    store
        .write_batch(
            AGG,
            &[(&a, raw_cutoff - 1, 1.0), (&a, now - 41 * 24 * H_MS, 0.5)],
        )
        .unwrap();

    let report = store.enforce_retention(now).unwrap();
    assert_eq!(
        report.per_namespace,
        vec![(RAW.to_string(), 3), (AGG.to_string(), 1)]
    );
    assert_eq!(report.total(), 4);
    assert_eq!(store.metrics().samples_deleted_by_retention(), 4);

    let raw = store.select(RAW, &[], i64::MIN, i64::MAX).unwrap();
    assert_eq!(raw.len(), 1, "b has nothing left");
    assert_eq!(raw[0].samples, vec![(raw_cutoff, 2.0), (now, 3.0)]);
    let agg = store.select(AGG, &[], i64::MIN, i64::MAX).unwrap();
    assert_eq!(agg[0].samples, vec![(raw_cutoff - 1, 1.0)]);

    // Idempotent; the series index outlives its samples.
    assert_eq!(store.enforce_retention(now).unwrap().total(), 0);
    assert_eq!(store.series_count(RAW).unwrap(), 2);
    // Writing to an emptied series later works.
    store.write_batch(RAW, &[(&b, now, 6.0)]).unwrap();
    assert_eq!(
        store
            .select(RAW, &[Matcher::equal("__name__", "b")], 0, i64::MAX)
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn deletes_across_several_batches_and_survives_restart() {
    let dir = tmp();
    let n = DELETE_BATCH as i64 * 2 + 17;
    {
        let store = open(dir.path());
        let l = labels(&[("__name__", "many")]);
        let batch: Vec<_> = (0..n).map(|t| (&l, t, t as f64)).collect();
        store.write_batch(RAW, &batch).unwrap();
        let now = 48 * H_MS + n - 10; // keeps the last 10 samples
        assert_eq!(store.enforce_retention(now).unwrap().total(), n as u64 - 10);
        store.close().unwrap();
    }
    let store = open(dir.path());
    let left = store.select(RAW, &[], i64::MIN, i64::MAX).unwrap();
    assert_eq!(left[0].samples.len(), 10);
    assert_eq!(left[0].samples[0].0, n - 10);
}

#[test]
fn background_task_enforces_and_stops() {
    let dir = tmp();
    let store = open(dir.path());
    let l = labels(&[("__name__", "ancient")]);
    store.write_batch(RAW, &[(&l, 0, 1.0)]).unwrap();
    assert!(
        HOUR * 48 < Duration::from_secs(1_000_000_000),
        "epoch sample is far beyond retention"
    );

    let task = RetentionTask::start(store.clone(), Duration::from_millis(5)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.metrics().samples_deleted_by_retention() == 0 {
        assert!(Instant::now() < deadline, "retention task never ran");
        std::thread::sleep(Duration::from_millis(5));
    }
    task.stop();
    assert!(
        store
            .select(RAW, &[], i64::MIN, i64::MAX)
            .unwrap()
            .is_empty()
    );
}
