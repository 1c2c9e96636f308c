//! Memory per live series, measured as resident-set growth (Linux `/proc/self/statm`) and as
//! the engine's own estimate (`Aggregator::stats`), for timed gauges with one storage policy.
//!
//! Three states are reported for 1M series:
//! * **one window** per series (a single sample per series, or untimed data between flushes);
//! * **five windows**: about the steady timed state of a series scraped every 15s;
//! * **eight windows**, the worst steady timed state: a sample every 10s with the default 1m
//!   past buffer keeps eight windows open per series (windows close at end + bufferPast +
//!   resolution).
//!
//! Windows are added to every series in turn, as at startup, so the figures include the heap
//! holes the window vectors leave behind as they grow.
//!
//! The allocator is jemalloc, as in the `m3aggregator` binary: what a series costs depends on
//! it (glibc's malloc adds a header to every block and rounds a 128-byte window vector up to
//! 144 bytes; jemalloc keeps it in a 128-byte size class).
//!
//! The IDs the benchmark keeps are allocated before the first measurement, so only the
//! engine's copies count. Each measurement runs in a fresh process (the bench re-runs itself
//! three times), since memory freed by one run would be reused by the next; every run's figures
//! are printed, then their median. Run with `cargo bench -p m3-aggregator --bench memory`.

use std::process::Command;

/// The `m3aggregator` binary's allocator (its `main.rs`), so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[allow(dead_code)] // each benchmark uses a part of the shared setup
mod common;
use common::{S, T0};

/// Set in the child processes that do one measurement each.
const RUN_VAR: &str = "M3_MEMORY_BENCH_RUN";
const RUNS: usize = 3;
const SERIES: usize = 1_000_000;

/// The resident set in bytes (`VmRSS` of `/proc/self/status`, in kB).
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// One state's figures: (label, windows, RSS growth per series, engine estimate per series).
type Figures = (&'static str, usize, u64, u64);

fn measure(label: &'static str, before: u64, agg: &m3_aggregator::Aggregator) -> Figures {
    let stats = agg.stats();
    // jemalloc returns the pages of freed blocks (the smaller window vectors each series
    // grew out of) after its dirty decay time, one second in this build (.cargo/config.toml):
    // a running aggregator holds them no longer than that, so neither does the figure.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let after = rss_bytes().expect("VmRSS is readable");
    (
        label,
        stats.windows,
        after.saturating_sub(before) / SERIES as u64,
        stats.estimated_bytes as u64 / SERIES as u64,
    )
}

/// One measurement, in this process: prints one line per state, `label windows rss engine`.
fn run_once() {
    let ids = common::ids(SERIES);
    let meta = common::metadatas();
    let before = rss_bytes().expect("VmRSS is readable");
    let agg = common::engine();
    let t = T0 + 5 * S;
    let mut figures = Vec::new();
    common::add_all(&agg, &ids, &meta, t, t);
    figures.push(measure("one_window", before, &agg));
    for w in 1..8 {
        let tw = t + w * 10 * S;
        common::add_all(&agg, &ids, &meta, tw, tw);
        if w == 4 {
            figures.push(measure("five_windows", before, &agg));
        }
    }
    figures.push(measure("eight_windows", before, &agg));
    for (label, windows, rss, engine) in figures {
        println!("{label} {windows} {rss} {engine}");
    }
}

fn main() {
    // `cargo bench` passes criterion's flags to every bench binary; they do not apply here.
    if std::env::var_os(RUN_VAR).is_some() {
        run_once();
        return;
    }
    let ids = common::ids(1000);
    println!(
        "memory: {SERIES} timed gauges, one policy; average ID length {:.0} B; Last window state {} B",
        ids.iter().map(Vec::len).sum::<usize>() as f64 / ids.len() as f64,
        std::mem::size_of::<m3_aggregator::aggregation::LastValue>()
    );
    let me = std::env::current_exe().expect("the bench's own path");
    let mut runs: Vec<Vec<(String, usize, u64, u64)>> = Vec::new();
    for run in 1..=RUNS {
        let output = Command::new(&me)
            .env(RUN_VAR, "1")
            .output()
            .expect("the bench re-runs itself");
        assert!(
            output.status.success(),
            "measurement run {run} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let lines: Vec<(String, usize, u64, u64)> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| {
                let mut f = line.split_whitespace();
                Some((
                    f.next()?.to_string(),
                    f.next()?.parse().ok()?,
                    f.next()?.parse().ok()?,
                    f.next()?.parse().ok()?,
                ))
            })
            .collect();
        assert_eq!(lines.len(), 3, "run {run} printed {lines:?}");
        for (label, windows, rss, engine) in &lines {
            println!(
                "memory/{label} run {run}: {windows} windows, RSS growth {rss} B/series, engine estimate {engine} B/series"
            );
        }
        runs.push(lines);
    }
    for state in 0..3 {
        let mut rss: Vec<u64> = runs.iter().map(|r| r[state].2).collect();
        rss.sort_unstable();
        let (label, windows, _, engine) = &runs[0][state];
        println!(
            "memory/{label}: {windows} windows, RSS growth {} B/series (median of {RUNS} runs: {rss:?}), engine estimate {engine} B/series",
            rss[RUNS / 2]
        );
    }
}
