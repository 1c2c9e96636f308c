//! `kill -9` during a write burst: a child process writes batches to a [`Store`] as fast as it
//! can and prints the number of each batch once `write_batch` returned, while another thread
//! compacts the head into blocks and trims the log behind it; the test kills it with SIGKILL at
//! a moment that varies from run to run, reopens the store and checks that every acknowledged
//! batch is there with its exact values, and that what the log held after the last
//! acknowledgement is either whole or cut cleanly. Twenty runs.
//!
//! The child is this test binary run again with `--ignored --exact crash_writer` (an ignored
//! test that only does something when the test below starts it with `M3_CRASH_DIR` set).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use m3_storage::{Labels, NamespaceConfig, Store};

const SERIES: usize = 500;
const BATCH: usize = 200;
const RUNS: u64 = 20;
/// A batch's samples are one minute after the previous batch's: two-hour blocks are cut every
/// 120 batches.
const BATCH_SPACING_MS: i64 = 60_000;

fn open(dir: &Path) -> Store {
    Store::open(
        dir,
        vec![NamespaceConfig::unaggregated(
            "raw",
            Duration::from_secs(100 * 365 * 24 * 3600),
        )],
    )
    .expect("opens")
}

fn series_labels() -> Vec<Labels> {
    (0..SERIES)
        .map(|i| {
            Labels::new([
                ("__name__", "crash_test"),
                ("series", &format!("{i:03}")[..]),
            ])
            .expect("valid labels")
        })
        .collect()
}

/// Sample `j` of batch `batch`: its series, time and value.
fn sample(batch: u64, j: usize) -> (usize, i64, f64) {
    let series = (batch as usize * 7 + j) % SERIES;
    (
        series,
        batch as i64 * BATCH_SPACING_MS,
        batch as f64 * 0.5 + j as f64,
    )
}

#[test]
#[ignore = "the child process of every_acknowledged_batch_survives_kill_9; started by it"]
fn crash_writer() {
    let Some(dir) = std::env::var_os("M3_CRASH_DIR") else {
        return;
    };
    let store = open(Path::new(&dir));
    let newest = Arc::new(AtomicI64::new(0));
    {
        let store = store.clone();
        let newest = Arc::clone(&newest);
        std::thread::spawn(move || {
            loop {
                // Wall-clock "now" a block range past the newest batch: everything older than
                // an hour behind it is cut.
                store
                    .compact(newest.load(Ordering::Relaxed) + 60 * 60_000)
                    .expect("compacts");
                std::thread::sleep(Duration::from_millis(3));
            }
        });
    }
    let sets = series_labels();
    for batch in 0..1_000_000u64 {
        let samples: Vec<(&Labels, i64, f64)> = (0..BATCH)
            .map(|j| {
                let (series, time, value) = sample(batch, j);
                (&sets[series], time, value)
            })
            .collect();
        let summary = store.write_batch("raw", &samples).expect("writes");
        assert_eq!(summary.samples, BATCH as u64);
        newest.store(batch as i64 * BATCH_SPACING_MS, Ordering::Relaxed);
        println!("acked {batch}");
    }
}

#[test]
fn every_acknowledged_batch_survives_kill_9() {
    let exe = std::env::current_exe().expect("the test binary");
    let sets = series_labels();
    let mut compacted_runs = 0;
    for run in 0..RUNS {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut child = Command::new(&exe)
            .args(["--ignored", "--exact", "crash_writer", "--nocapture"])
            .args(["--test-threads", "1"])
            .env("M3_CRASH_DIR", dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the child starts");
        let acked = Arc::new(Mutex::new(None::<u64>));
        let reader = {
            let acked = Arc::clone(&acked);
            let stdout = child.stdout.take().expect("piped");
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(n) = line.strip_prefix("acked ").and_then(|n| n.parse().ok()) {
                        *acked.lock().expect("lock") = Some(n);
                    }
                }
            })
        };
        // Wait for the first acknowledgement, then kill at a moment that varies per run.
        for _ in 0..500 {
            if acked.lock().expect("lock").is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(30 + run * 23 % 250));
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        reader.join().expect("reader");
        let last = acked
            .lock()
            .expect("lock")
            .unwrap_or_else(|| panic!("run {run}: the child acknowledged nothing"));

        let store = open(dir.path());
        let blocks = std::fs::read_dir(dir.path().join("raw/blocks"))
            .map(|d| d.count())
            .unwrap_or(0);
        compacted_runs += usize::from(blocks > 0);
        let stored: HashMap<Labels, Vec<(i64, f64)>> = store
            .select("raw", &[], i64::MIN, i64::MAX)
            .expect("reads")
            .into_iter()
            .map(|s| (s.labels, s.samples))
            .collect();
        let holds = |batch: u64, j: usize| {
            let (series, time, value) = sample(batch, j);
            stored.get(&sets[series]).is_some_and(|samples| {
                samples
                    .binary_search_by_key(&time, |s| s.0)
                    .is_ok_and(|i| samples[i].1 == value)
            })
        };
        let mut missing = Vec::new();
        for batch in 0..=last {
            for j in 0..BATCH {
                if !holds(batch, j) {
                    missing.push((batch, j));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "run {run}: {} of {} acknowledged samples missing or wrong after kill -9 ({blocks} blocks), first {:?}",
            missing.len(),
            (last + 1) as usize * BATCH,
            &missing[..missing.len().min(5)]
        );
        // A batch written after the last acknowledgement is there whole or not at all.
        for batch in last + 1..last + 4 {
            let present = (0..BATCH).filter(|&j| holds(batch, j)).count();
            assert!(
                present == 0 || present == BATCH,
                "run {run}: batch {batch} after the last acknowledged is partly there ({present} of {BATCH})"
            );
        }
    }
    println!("{RUNS} kills, {compacted_runs} of them after blocks were cut");
    assert!(
        compacted_runs > 0,
        "no run got as far as cutting a block: the test does not exercise compaction"
    );
}
