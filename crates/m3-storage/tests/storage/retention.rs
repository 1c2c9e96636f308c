use std::time::{Duration, Instant};

use m3_storage::{Matcher, RetentionTask};

use crate::{AGG, HOUR, RAW, labels, open, tmp};

const H_MS: i64 = 3_600_000;

/// Reads stop at each namespace's cutoff at once; space goes in whole chunks: a chunk wholly
/// before the cutoff is deleted, one reaching past it stays (its old samples hidden).
#[test]
fn hides_samples_older_than_each_namespace_keeps_and_frees_whole_chunks() {
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
            &[(&a, now - 41 * 24 * H_MS, 0.5), (&a, raw_cutoff - 1, 1.0)],
        )
        .unwrap();

    let report = store.enforce_retention(now).unwrap();
    let summary: Vec<_> = report
        .per_namespace
        .iter()
        .map(|n| (n.namespace.as_str(), n.samples_deleted, n.series_removed))
        .collect();
    // RAW: b's chunk is wholly before the cutoff (2 samples, the series goes); a's reaches
    // past it. AGG: a's one chunk reaches past its cutoff.
    assert_eq!(summary, vec![(RAW, 2, 1), (AGG, 0, 0)]);
    assert_eq!((report.samples_deleted(), report.series_removed()), (2, 1));
    assert_eq!(store.metrics().samples_deleted_by_retention(), 2);
    assert_eq!(store.metrics().series_removed_by_retention(), 1);

    let raw = store.select(RAW, &[], i64::MIN, i64::MAX).unwrap();
    assert_eq!(raw.len(), 1, "b has nothing left");
    assert_eq!(raw[0].samples, vec![(raw_cutoff, 2.0), (now, 3.0)]);
    let agg = store.select(AGG, &[], i64::MIN, i64::MAX).unwrap();
    assert_eq!(agg[0].samples, vec![(raw_cutoff - 1, 1.0)]);

    // The emptied series is gone from the index: label queries no longer see it.
    assert_eq!(store.series_count(RAW).unwrap(), 1);
    assert!(
        store
            .label_values(RAW, "__name__", &[], i64::MIN, i64::MAX)
            .unwrap()
            .iter()
            .all(|v| v != "b")
    );
    assert!(
        store
            .series(RAW, &[Matcher::equal("__name__", "b")], i64::MIN, i64::MAX)
            .unwrap()
            .is_empty()
    );

    // Idempotent.
    let again = store.enforce_retention(now).unwrap();
    assert_eq!((again.samples_deleted(), again.series_removed()), (0, 0));
    // Writing the dropped series again recreates it.
    let s = store.write_batch(RAW, &[(&b, now, 6.0)]).unwrap();
    assert_eq!(s.series_created, 1);
    assert_eq!(
        store
            .select(RAW, &[Matcher::equal("__name__", "b")], 0, i64::MAX)
            .unwrap()[0]
            .samples,
        vec![(now, 6.0)]
    );
}

#[test]
fn dropped_series_stay_dropped_after_restart() {
    let dir = tmp();
    let l = labels(&[("__name__", "gone"), ("job", "x")]);
    let keep = labels(&[("__name__", "kept")]);
    {
        let store = open(dir.path());
        store
            .write_batch(RAW, &[(&l, 0, 1.0), (&keep, 100 * H_MS, 1.0)])
            .unwrap();
        assert_eq!(
            store
                .enforce_retention(100 * H_MS)
                .unwrap()
                .series_removed(),
            1
        );
    }
    let store = open(dir.path());
    assert_eq!(store.series_count(RAW).unwrap(), 1);
    assert_eq!(
        store.label_names(RAW, &[], i64::MIN, i64::MAX).unwrap(),
        vec!["__name__"]
    );
    assert_eq!(
        store
            .write_batch(RAW, &[(&l, 100 * H_MS, 2.0)])
            .unwrap()
            .series_created,
        1
    );
}

#[test]
fn frees_whole_chunks_hides_the_rest_and_survives_restart() {
    let dir = tmp();
    let n = 1_000;
    {
        let store = open(dir.path());
        let l = labels(&[("__name__", "many")]);
        let batch: Vec<_> = (0..n).map(|t| (&l, t, t as f64)).collect();
        store.write_batch(RAW, &batch).unwrap();
        let now = 48 * H_MS + n - 10; // keeps the last 10 samples
        // Chunks of 120: the eight wholly before 990 go; 960..999 stays, 960..989 hidden.
        assert_eq!(store.enforce_retention(now).unwrap().samples_deleted(), 960);
        let left = store.select(RAW, &[], i64::MIN, i64::MAX).unwrap();
        assert_eq!(left[0].samples.len(), 10);
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

/// What a coordinator's retention loop does at start: compact, then enforce. A sample past
/// retention is deleted and counted — from the block it was cut into, or, when an earlier pass
/// had already moved the cutoff past it, while the log is replayed — and a recent one stays.
#[test]
fn compaction_then_retention_after_a_restart_deletes_the_expired_sample() {
    let now = 1_700_000_000_000;
    let old = labels(&[("__name__", "r"), ("host", "old")]);
    let new = labels(&[("__name__", "r"), ("host", "new")]);
    for retention_ran_before_the_write in [false, true] {
        let dir = tmp();
        {
            let store = open(dir.path());
            if retention_ran_before_the_write {
                store.compact(now).unwrap();
                store.enforce_retention(now).unwrap();
            }
            store
                .write_batch(RAW, &[(&old, now - 72 * H_MS, 1.0), (&new, now, 2.0)])
                .unwrap();
            store.close().unwrap();
        }
        let store = open(dir.path());
        let cut = store.compact(now).unwrap();
        let report = store.enforce_retention(now).unwrap();
        if retention_ran_before_the_write {
            assert_eq!((cut, report.samples_deleted()), (0, 0), "gone at open");
        } else {
            assert_eq!((cut, report.samples_deleted()), (1, 1), "cut, then deleted");
            assert_eq!(report.per_namespace[0].blocks_deleted, 1);
        }
        assert_eq!(store.metrics().samples_deleted_by_retention(), 1);
        let left = store.select(RAW, &[], i64::MIN, i64::MAX).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].samples, vec![(now, 2.0)]);
    }
}

/// A retention pass reports what the store holds: series and memory of the heads, blocks and
/// their bytes.
#[test]
fn a_retention_pass_sets_the_size_gauges() {
    let dir = tmp();
    let store = open(dir.path());
    let now = 1_700_000_000_000;
    let a = labels(&[("__name__", "a")]);
    let b = labels(&[("__name__", "b")]);
    let old: Vec<_> = (0..200)
        .map(|i| (&a, now - 10 * H_MS + i * 15_000, 1.0))
        .collect();
    store.write_batch(RAW, &old).unwrap();
    store.write_batch(RAW, &[(&b, now, 1.0)]).unwrap();
    assert_eq!(
        store.metrics().head_series(),
        2,
        "new series are counted as they are written"
    );
    assert_eq!(store.metrics().head_bytes(), 0, "measured by a pass");
    store.compact(now).unwrap();
    store.enforce_retention(now).unwrap();
    let metrics = store.metrics();
    // `a` was cut whole into a block and left the head empty; `b` is in the head.
    assert_eq!(metrics.head_series(), 1);
    assert!(metrics.head_bytes() > 0);
    assert_eq!(metrics.blocks(), 1);
    assert!(metrics.block_bytes() > 0 && metrics.block_bytes() < 200 * 16);
    drop(store);
    // Reopened, the replayed head's series and their label sets are counted before any pass.
    let store = open(dir.path());
    let at_open = store.metrics().head_series();
    assert!(
        at_open >= 1,
        "the replayed head's series are counted before any pass"
    );
    assert_eq!(store.metrics().head_label_sets(), at_open);
    store.compact(now).unwrap();
    store.enforce_retention(now).unwrap();
    assert_eq!(store.metrics().head_series(), at_open);
}

/// A series in several namespaces keeps its labels once: the label sets the heads hold count
/// it once, and it stays readable in each namespace until retention has emptied it in all.
#[test]
fn a_series_in_several_namespaces_keeps_its_labels_once_until_the_last_lets_go() {
    let dir = tmp();
    let store = open(dir.path());
    let now = 100 * 24 * H_MS;
    let raw_cutoff = now - 48 * H_MS;
    let a = labels(&[("__name__", "a"), ("instance", "10.0.0.1:9100")]);
    let b = labels(&[("__name__", "b")]);
    store
        .write_batch(RAW, &[(&a, raw_cutoff - H_MS, 1.0), (&b, now, 2.0)])
        .unwrap();
    store.write_batch(AGG, &[(&a, now, 3.0)]).unwrap();
    store.enforce_retention(now - 49 * H_MS).unwrap();
    let metrics = store.metrics();
    assert_eq!(metrics.head_series(), 3);
    assert_eq!(metrics.head_label_sets(), 2, "a once for both namespaces");

    // RAW's retention empties `a` there; AGG still holds it under the same labels.
    let report = store.enforce_retention(now).unwrap();
    assert_eq!(report.series_removed(), 1);
    assert_eq!(store.metrics().head_label_sets(), 2);
    let agg = store.select(AGG, &[], i64::MIN, i64::MAX).unwrap();
    assert_eq!(agg.len(), 1);
    assert_eq!(agg[0].labels, a);
    assert_eq!(agg[0].samples, vec![(now, 3.0)]);

    // Written to RAW again, `a` is a new series there with the labels AGG holds.
    store.write_batch(RAW, &[(&a, now, 4.0)]).unwrap();
    let raw = store
        .select(RAW, &[Matcher::equal("__name__", "a")], i64::MIN, i64::MAX)
        .unwrap();
    assert_eq!(raw.len(), 1);
    assert_eq!(raw[0].labels, a);
    assert_eq!(raw[0].samples, vec![(now, 4.0)]);
    store.enforce_retention(now).unwrap();
    assert_eq!(store.metrics().head_label_sets(), 2);

    // Emptied everywhere, the label set goes.
    store.enforce_retention(now + 50 * 24 * H_MS).unwrap();
    assert_eq!(store.metrics().head_series(), 0);
    assert_eq!(store.metrics().head_label_sets(), 0);
}

/// A namespace whose compaction or retention fails (its directory damaged from outside) does
/// not stop the other namespaces': they are compacted and expired all the same, and the
/// failure is returned.
#[test]
fn a_failing_namespace_does_not_stop_the_others_maintenance() {
    let now = 1_700_000_000_000;
    let dir = tmp();
    let store = open(dir.path());
    let a = labels(&[("__name__", "a")]);
    for namespace in [RAW, AGG] {
        store
            .write_batch(namespace, &[(&a, now - 10 * H_MS, 1.0)])
            .unwrap();
    }
    // The raw namespace (the first) cannot write a block: its blocks directory is a file.
    let raw_blocks = dir.path().join(RAW).join("blocks");
    if raw_blocks.exists() {
        std::fs::remove_dir_all(&raw_blocks).unwrap();
    }
    std::fs::write(&raw_blocks, b"not a directory").unwrap();
    let err = store.compact(now).unwrap_err();
    assert!(err.to_string().contains("blocks"), "{err}");
    assert_eq!(
        store.metrics().samples_compacted(),
        1,
        "the aggregated namespace was compacted"
    );
    let agg_blocks = std::fs::read_dir(dir.path().join(AGG).join("blocks")).unwrap();
    assert_eq!(agg_blocks.count(), 1);

    // Nor can it record its retention cutoff: the file's temporary name is a directory.
    std::fs::create_dir(dir.path().join(RAW).join(".retention.tmp")).unwrap();
    let past_both = now + 41 * 24 * H_MS;
    let err = store.enforce_retention(past_both).unwrap_err();
    assert!(err.to_string().contains("retention"), "{err}");
    assert_eq!(
        store.metrics().samples_deleted_by_retention(),
        1,
        "the aggregated namespace's sample went"
    );
    assert!(
        store
            .select(AGG, &[], i64::MIN, i64::MAX)
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.select(RAW, &[], i64::MIN, i64::MAX).unwrap().len(), 1);
}
