//! CPU time of processes (`--pid`) and of the bench itself, from `/proc/<pid>/stat`, and their
//! resident memory from `/proc/<pid>/status`, at the end and sampled each second through the
//! run.

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
    /// Its resident memory over the send phase, when it was sampled.
    pub(super) resident_over_run: Option<ResidentOverRun>,
}

/// A process's resident memory sampled once a second through the send phase. A process whose
/// memory rises and falls (a head's chunks all closing within a second, every few seconds)
/// shows its level here, where a single reading at the end shows wherever the run stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ResidentOverRun {
    /// The mean of the samples in the run's last third (its steady state, as near as a run
    /// gets to one), in bytes.
    pub(super) mean_last_third: u64,
    /// The largest sample, in bytes.
    pub(super) peak: u64,
}

impl ResidentOverRun {
    /// The figures of `samples` (bytes, in time order); `None` without any.
    pub(super) fn of(samples: &[u64]) -> Option<ResidentOverRun> {
        let peak = *samples.iter().max()?;
        let last_third = &samples[samples.len() - samples.len().div_ceil(3)..];
        Some(ResidentOverRun {
            mean_last_third: last_third.iter().sum::<u64>() / last_third.len() as u64,
            peak,
        })
    }
}

/// Samples the resident memory of processes once a second until [`ResidentSampler::finish`].
pub(super) struct ResidentSampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Vec<Vec<u64>>>,
}

impl ResidentSampler {
    pub(super) fn start(pids: Vec<u32>) -> ResidentSampler {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut samples = vec![Vec::new(); pids.len()];
            let mut every_second = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = &mut stopped => return samples,
                    _ = every_second.tick() => {
                        for (pid, taken) in pids.iter().zip(&mut samples) {
                            taken.extend(resident_bytes(*pid));
                        }
                    }
                }
            }
        });
        ResidentSampler { stop, task }
    }

    /// The samples' figures, one per process in the order given to [`ResidentSampler::start`].
    pub(super) async fn finish(self) -> Vec<Option<ResidentOverRun>> {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(samples) => samples.iter().map(|s| ResidentOverRun::of(s)).collect(),
            Err(_) => Vec::new(),
        }
    }
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
    }

    #[test]
    fn memory_over_a_run_is_the_last_thirds_mean_and_the_peak() {
        let saw = [100, 140, 180, 100, 140, 180, 120, 160, 200];
        assert_eq!(
            ResidentOverRun::of(&saw),
            Some(ResidentOverRun {
                mean_last_third: 160,
                peak: 200
            })
        );
        // Fewer than three samples: the last third is the last one.
        assert_eq!(
            ResidentOverRun::of(&[300, 100]),
            Some(ResidentOverRun {
                mean_last_third: 100,
                peak: 300
            })
        );
        assert_eq!(ResidentOverRun::of(&[]), None);
        assert!(resident_bytes(std::process::id()).is_some_and(|b| b > 0));
    }
}
