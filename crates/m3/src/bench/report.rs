//! The summary printed at the end of a run.

use std::fmt;
use std::time::Duration;

use super::BenchOptions;
use super::coordinator::CoordinatorDiff;
use super::cpu::CpuUse;
use super::load::LoadResult;
use super::windows::ExpectedWindows;

pub(super) struct Report {
    pub(super) options: BenchOptions,
    pub(super) load: LoadResult,
    pub(super) coordinator: Option<CoordinatorDiff>,
    pub(super) cpu: Vec<CpuUse>,
    /// The windows the accepted samples fell in, at the end of the run.
    pub(super) expected: ExpectedWindows,
    pub(super) resolutions: Vec<Duration>,
}

/// `1234567.0` → `1234567`; counts are integers, rates are rounded.
pub(super) fn count(n: f64) -> String {
    format!("{:.0}", n)
}

pub(super) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub(super) fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        let l = &self.load;
        let seconds = l.elapsed.as_secs_f64().max(1e-9);
        let target = if o.rate == 0 {
            "as fast as possible".to_string()
        } else {
            format!("target {} samples/s", o.rate)
        };
        writeln!(
            f,
            "m3 bench: {} series x {} labels, {target}, {:?}, batch {}, concurrency {}, to {}",
            o.series, o.labels, o.duration, o.batch, o.concurrency, o.url
        )?;
        writeln!(
            f,
            "sent:      {} samples in {} requests over {:.2} s",
            l.sent, l.requests, seconds
        )?;
        writeln!(f, "accepted:  {} samples (2xx)", l.accepted)?;
        writeln!(f, "rejected:  {} samples (4xx)", l.rejected)?;
        if let Some(reason) = &l.first_rejection {
            writeln!(f, "           first: {reason}")?;
        }
        writeln!(f, "failed:    {} samples (5xx or transport)", l.failed)?;
        if let Some(reason) = &l.first_failure {
            writeln!(f, "           first: {reason}")?;
        }
        writeln!(
            f,
            "rate:      {} samples/s sent, {} samples/s accepted",
            count(l.sent as f64 / seconds),
            count(l.accepted as f64 / seconds)
        )?;
        writeln!(
            f,
            "latency:   p50 {}, p99 {}, max {} per request",
            ms(percentile(&l.latencies, 0.5)),
            ms(percentile(&l.latencies, 0.99)),
            ms(l.latencies.last().copied().unwrap_or_default())
        )?;
        match &self.coordinator {
            None => writeln!(f, "coordinator: no metrics read")?,
            Some(c) => {
                writeln!(f, "coordinator (counter differences over the run):")?;
                writeln!(f, "  received:    {} samples", count(c.received))?;
                writeln!(f, "  stored raw:  {} samples", count(c.stored_raw))?;
                writeln!(
                    f,
                    "  forwarded:   {} samples (to aggregator instances, once per replica)",
                    count(c.forwarded)
                )?;
                if c.dropped.is_empty() {
                    writeln!(f, "  dropped:     0 samples")?;
                }
                for (reason, n) in &c.dropped {
                    writeln!(f, "  dropped:     {} samples ({reason})", count(*n))?;
                }
                if c.waited.is_zero() {
                    writeln!(
                        f,
                        "  aggregated:  {} outputs stored during the run (windows are written \
                         after window end + past buffer + resolution; see --wait-stored)",
                        count(c.aggregated)
                    )?;
                } else {
                    writeln!(
                        f,
                        "  aggregated:  {} outputs stored during the run and {:?} after it \
                         ({} during the run)",
                        count(c.aggregated),
                        c.waited,
                        count(c.aggregated_during_run)
                    )?;
                }
                let resolutions: Vec<String> =
                    self.resolutions.iter().map(|r| format!("{r:?}")).collect();
                writeln!(
                    f,
                    "  windows:     {} expected (one per series, window and resolution {}), {} due by the last scrape (window end + {:?} past buffer + resolution + {:?} to be stored), {} not due yet",
                    self.expected.total,
                    resolutions.join(", "),
                    self.expected.due,
                    self.options.buffer_past,
                    super::windows::DELIVERY_ALLOWANCE,
                    self.expected.total - self.expected.due
                )?;
                let due = self.expected.due as f64;
                if c.aggregated < due {
                    writeln!(
                        f,
                        "  LOST:        {} due windows not stored (lost, or later than the past buffer says)",
                        count(due - c.aggregated)
                    )?;
                } else {
                    writeln!(
                        f,
                        "  lost:        none (every due window was stored; the count includes any other aggregated traffic)"
                    )?;
                }
            }
        }
        for cpu in &self.cpu {
            write!(
                f,
                "cpu:       {}: {:.2} s over {:.2} s = {:.2} cores",
                cpu.what,
                cpu.seconds,
                seconds,
                cpu.seconds / seconds
            )?;
            if cpu.seconds > 0.0 {
                write!(
                    f,
                    ", {} accepted samples per CPU-s",
                    count(l.accepted as f64 / cpu.seconds)
                )?;
            }
            let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
            if let Some(bytes) = cpu.resident_bytes {
                write!(f, ", RSS {:.0} MiB", mib(bytes))?;
            }
            if let Some(over_run) = cpu.resident_over_run {
                write!(
                    f,
                    " (sampled each second: {:.0} MiB mean over the last third of the run, {:.0} MiB at most)",
                    mib(over_run.mean_last_third),
                    mib(over_run.peak)
                )?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}
