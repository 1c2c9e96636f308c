//! CPU time of processes (`--pid`) and of the bench itself, from `/proc/<pid>/stat`, and their
//! resident memory from `/proc/<pid>/status`.

use std::time::Duration;

use anyhow::Context;

/// Linux reports process times in clock ticks of `USER_HZ`, which is 100 on every architecture
/// Linux supports today (`getconf CLK_TCK`).
pub(super) const CLOCK_TICKS_PER_SECOND: u64 = 100;

/// User + system CPU time of process `pid` so far.
///
/// # Errors
/// No such process, or a `/proc/<pid>/stat` that does not parse.
pub(super) fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("--pid {pid}: reading {path} (is the process running?)"))?;
    parse_stat_cpu(&text).with_context(|| format!("--pid {pid}: unexpected contents of {path}"))
}

pub(super) fn own_cpu_time() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_stat_cpu(&text).ok()
}

/// `utime + stime` (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name (field 2)
/// is in parentheses and may hold spaces and parentheses, so fields are counted from the last
/// `)`.
pub(super) fn parse_stat_cpu(stat: &str) -> anyhow::Result<Duration> {
    let after_name = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .context("no `)` closing the command name")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // fields[0] is field 3 (state), so field 14 is fields[11].
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .context("too few fields")?
            .parse::<u64>()
            .with_context(|| format!("field {} is not a number", i + 3))
    };
    let total = ticks(11)? + ticks(12)?;
    Ok(Duration::from_millis(total * 1000 / CLOCK_TICKS_PER_SECOND))
}

/// Resident memory (`VmRSS`) of process `pid` now, in bytes; `None` when it cannot be read.
pub(super) fn resident_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_rss(&text)
}

/// The `VmRSS:` line of a `/proc/<pid>/status`, in bytes.
fn parse_status_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// CPU seconds one process used during the send phase, and its resident memory after it.
#[derive(Debug)]
pub(super) struct CpuUse {
    pub(super) what: String,
    pub(super) seconds: f64,
    pub(super) resident_bytes: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_cpu_counts_from_the_last_parenthesis() {
        let stat = "4242 (m3 (local)) S 1 4242 4242 0 -1 4194560 9000 0 0 0 250 75 0 0 20 0 \
                    12 0 100 200000000 5000 18446744073709551615";
        assert_eq!(
            parse_stat_cpu(stat).expect("parses"),
            Duration::from_millis(3250)
        );
        assert!(parse_stat_cpu("4242 (x) S 1").is_err());
        assert!(own_cpu_time().is_some());
    }

    #[test]
    fn resident_memory_is_the_vmrss_line_in_bytes() {
        let status = "Name:\tm3\nVmPeak:\t  900000 kB\nVmRSS:\t  123456 kB\nThreads:\t9\n";
        assert_eq!(parse_status_rss(status), Some(123_456 * 1024));
        assert_eq!(parse_status_rss("Name:\tm3\n"), None);
        assert!(resident_bytes(std::process::id()).is_some_and(|b| b > 0));
    }
}
