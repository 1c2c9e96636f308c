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
//! The IDs the benchmark keeps are allocated before the first measurement, so only the
//! engine's copies count. Run with `cargo bench -p m3-aggregator --bench memory`.

use m3_metric::MetricType;

mod common;
use common::{S, T0};

fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn report(label: &str, n: usize, before: Option<u64>, agg: &m3_aggregator::Aggregator) {
    let stats = agg.stats();
    let rss = match (before, rss_bytes()) {
        (Some(b), Some(a)) => format!("{:.0}", a.saturating_sub(b) as f64 / n as f64),
        _ => "n/a".to_string(),
    };
    println!(
        "memory/{label}: {n} series, {} windows: RSS growth {rss} B/series, engine estimate {:.0} B/series",
        stats.windows,
        stats.estimated_bytes as f64 / n as f64,
    );
}

fn main() {
    // `cargo bench` passes criterion's flags to every bench binary; they do not apply here.
    let n = 1_000_000usize;
    let ids = common::ids(n);
    let meta = common::metadatas();
    let id_bytes: usize = ids.iter().map(Vec::len).sum();
    println!(
        "memory: average ID length {:.0} B; Last window state {} B",
        id_bytes as f64 / n as f64,
        std::mem::size_of::<m3_aggregator::aggregation::LastValue>()
    );
    let before = rss_bytes();
    let agg = common::engine();
    let t = T0 + 5 * S;
    common::add_all(&agg, &ids, &meta, t, t);
    report("one_window", n, before, &agg);
    for w in 1..8 {
        let tw = t + w * 10 * S;
        common::add_all(&agg, &ids, &meta, tw, tw);
        if w == 4 {
            report("five_windows", n, before, &agg);
        }
    }
    report("eight_windows", n, before, &agg);
    let _ = MetricType::Gauge;
}
