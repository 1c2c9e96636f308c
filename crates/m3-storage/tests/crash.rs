//! `kill -9` during a write burst: a child process appends batches to a [`DurableHead`] as fast
//! as it can and prints the number of each batch once `append` returned; the test kills it with
//! SIGKILL at a moment that varies from run to run, reopens the head and checks that every
//! acknowledged batch is there with its exact values, and that what the log held after the last
//! acknowledgement is either whole or cut cleanly. Twenty runs.
//!
//! The child is this test binary run again with `--ignored --exact crash_writer` (an ignored
//! test that only does something when the test below starts it with `M3_CRASH_DIR` set).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use m3_storage::Labels;
use m3_storage::tsdb::durable::DurableHead;
use m3_storage::tsdb::head::HeadOptions;
use m3_storage::tsdb::wal::WalOptions;

const SERIES: usize = 500;
const BATCH: usize = 200;
const RUNS: u64 = 20;

fn options() -> (HeadOptions, WalOptions) {
    (
        HeadOptions {
            out_of_order_window: 3_600_000,
        },
        WalOptions {
            // Small segments, so kills also land around segment changes.
            segment_bytes: 256 * 1024,
            ..WalOptions::default()
        },
    )
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
    (series, batch as i64 * 1000, batch as f64 * 0.5 + j as f64)
}

#[test]
#[ignore = "the child process of every_acknowledged_batch_survives_kill_9; started by it"]
fn crash_writer() {
    let Some(dir) = std::env::var_os("M3_CRASH_DIR") else {
        return;
    };
    let (head_options, wal_options) = options();
    let (mut durable, _) =
        DurableHead::open(Path::new(&dir), head_options, wal_options).expect("opens");
    let sets = series_labels();
    for batch in 0..1_000_000u64 {
        let samples: Vec<(&Labels, i64, f64)> = (0..BATCH)
            .map(|j| {
                let (series, time, value) = sample(batch, j);
                (&sets[series], time, value)
            })
            .collect();
        durable.append(&samples).expect("appends");
        println!("acked {batch}");
    }
}

#[test]
fn every_acknowledged_batch_survives_kill_9() {
    let exe = std::env::current_exe().expect("the test binary");
    let sets = series_labels();
    let mut torn = 0;
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

        let (head_options, wal_options) = options();
        let (durable, report) =
            DurableHead::open(dir.path(), head_options, wal_options).expect("reopens");
        torn += usize::from(report.torn_tail.is_some());
        let head = durable.head();
        let mut missing = Vec::new();
        let mut got = Vec::new();
        for batch in 0..=last {
            for j in 0..BATCH {
                let (series, time, value) = sample(batch, j);
                let Some(reference) = head.find(&sets[series]) else {
                    missing.push((batch, j));
                    continue;
                };
                got.clear();
                head.samples(reference, time, time, &mut got);
                if got != [(time, value)] {
                    missing.push((batch, j));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "run {run}: {} of {} acknowledged samples missing or wrong after kill -9, first {:?}",
            missing.len(),
            (last + 1) as usize * BATCH,
            &missing[..missing.len().min(5)]
        );
        // A batch written after the last acknowledgement is there whole or not at all.
        for batch in last + 1..last + 4 {
            let present = (0..BATCH)
                .filter(|&j| {
                    let (series, time, value) = sample(batch, j);
                    head.find(&sets[series]).is_some_and(|reference| {
                        got.clear();
                        head.samples(reference, time, time, &mut got);
                        got == [(time, value)]
                    })
                })
                .count();
            assert!(
                present == 0 || present == BATCH,
                "run {run}: batch {batch} after the last acknowledged is partly there ({present} of {BATCH})"
            );
        }
    }
    println!("{RUNS} kills, {torn} of them mid-record (torn tails cut at reopen)");
}
