//! Real components for m3-rs's tests.
//!
//! The project's rule is that tests exercise the real thing: a real etcd for the etcd KV backend
//! and elections, real `m3aggregator` and `m3coordinator` processes, a real Prometheus and a real
//! VictoriaMetrics. This crate starts those components for a test, on free loopback ports and in
//! temporary directories, waits until they answer, and stops them when the handle is dropped, so
//! a failing test leaves nothing running behind.
//!
//! A component that is not installed makes the test **fail** with a message saying how to install
//! it; it never makes the test pass by skipping.
//!
//! | helper | what |
//! |---|---|
//! | [`free_port`], [`free_ports`] | free TCP ports on 127.0.0.1 |
//! | [`free_port_on_all`] | one port free on several loopback addresses (127.0.0.2, 127.0.0.3…) |
//! | [`EtcdProcess`] | a single-member etcd cluster with its own data dir; stop and restart on the same ports |
//! | [`PrometheusProcess`] | Debian's `prometheus` scraping itself, optionally remote-writing or receiving remote writes; stop and restart |
//! | [`VictoriaMetricsProcess`] | Debian's `victoria-metrics` single-node taking remote writes; stop and restart |
//! | [`Binary`] | the path of a workspace binary (`m3aggregator`, `m3coordinator`) built next to the test |
//! | [`ChildProcess`] | a process with its output in a log file, SIGKILL/SIGTERM, killed on drop, log tail in messages |
//! | [`run_to_exit`] | run a binary that should fail, and read what it said |
//! | [`wait_for`], [`wait_for_blocking`] | poll until a condition holds, instead of sleeping |
//!
//! # Example
//!
//! ```no_run
//! let mut etcd = m3_testkit::EtcdProcess::start();
//! let endpoint = etcd.endpoint(); // "127.0.0.1:<port>", as M3 configs list etcd endpoints
//! etcd.stop(); // a crash: clients see the connection drop
//! etcd.restart(); // same ports, same data
//! # let _ = endpoint;
//! ```

#![warn(missing_docs, unreachable_pub)]

mod etcd;
mod process;
mod prometheus;
mod victoria_metrics;

pub use etcd::EtcdProcess;
pub use process::{Binary, ChildProcess, run_to_exit};
pub use prometheus::{PrometheusOptions, PrometheusProcess};
pub use victoria_metrics::VictoriaMetricsProcess;

use std::future::Future;
use std::net::{Ipv4Addr, TcpListener};
use std::time::{Duration, Instant};

/// A TCP port on 127.0.0.1 that was free a moment ago: the OS picks it by binding port 0, and the
/// listener is closed again before returning.
///
/// Another process may take the port between this call and its use; on a test machine that is
/// rare enough to accept.
///
/// # Panics
/// When no loopback port can be bound at all.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap_or_else(|e| panic!("cannot bind a free port on 127.0.0.1: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("cannot read the address of a bound listener: {e}"))
        .port()
}

/// `count` distinct free ports (see [`free_port`]). All listeners are held until every port is
/// chosen, so the ports differ from each other.
///
/// # Panics
/// When no loopback port can be bound.
pub fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| {
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .unwrap_or_else(|e| panic!("cannot bind a free port on 127.0.0.1: {e}"))
        })
        .collect();
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .unwrap_or_else(|e| panic!("cannot read the address of a bound listener: {e}"))
                .port()
        })
        .collect()
}

/// A TCP port that was free a moment ago on every address of `addrs`, e.g. `127.0.0.2` and
/// `127.0.0.3` for two aggregators that must listen on the same port (as in SEED.md's
/// placement, where both use 6000). The OS picks a port on the first address; the others are
/// bound with it, and another pick is tried when one of them is taken.
///
/// # Panics
/// When `addrs` is empty or no common port is found in 100 attempts.
pub fn free_port_on_all(addrs: &[Ipv4Addr]) -> u16 {
    let (first, rest) = addrs
        .split_first()
        .unwrap_or_else(|| panic!("free_port_on_all needs at least one address"));
    for _ in 0..100 {
        let Ok(listener) = TcpListener::bind((*first, 0)) else {
            continue;
        };
        let Ok(port) = listener.local_addr().map(|a| a.port()) else {
            continue;
        };
        let others: Result<Vec<TcpListener>, _> = rest
            .iter()
            .map(|addr| TcpListener::bind((*addr, port)))
            .collect();
        if others.is_ok() {
            return port;
        }
    }
    panic!("no TCP port free on all of {addrs:?} in 100 attempts")
}

/// Polls `check` every `every` until it returns `Some`, for at most `timeout`; the value, or
/// `None` when time ran out. The check runs at least once, and once more at the deadline.
///
/// Tests use this instead of fixed sleeps and panic with their own context (what they waited
/// for, what they last saw, the processes' logs) when it returns `None`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, every: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        tokio::time::sleep(every.min(deadline - now)).await;
    }
}

/// [`wait_for`] for synchronous checks, sleeping the thread between polls.
pub fn wait_for_blocking<T>(
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(every.min(deadline - now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_free_on_two_loopback_addresses() {
        let addrs = [Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)];
        let port = free_port_on_all(&addrs);
        let _a = TcpListener::bind((addrs[0], port)).unwrap();
        let _b = TcpListener::bind((addrs[1], port)).unwrap();
    }

    #[test]
    fn wait_for_blocking_returns_the_first_value_or_none() {
        let mut calls = 0;
        let got = wait_for_blocking(Duration::from_secs(5), Duration::from_millis(1), || {
            calls += 1;
            (calls == 3).then_some(calls)
        });
        assert_eq!(got, Some(3));
        let none: Option<()> =
            wait_for_blocking(Duration::from_millis(20), Duration::from_millis(5), || None);
        assert_eq!(none, None);
    }

    #[tokio::test]
    async fn wait_for_polls_until_some() {
        let mut calls = 0;
        let got = wait_for(Duration::from_secs(5), Duration::from_millis(1), || {
            calls += 1;
            let done = calls == 3;
            async move { done.then_some("done") }
        })
        .await;
        assert_eq!(got, Some("done"));
        let none: Option<()> = wait_for(
            Duration::from_millis(20),
            Duration::from_millis(5),
            || async { None },
        )
        .await;
        assert_eq!(none, None);
    }
}
