//! Real components for m3-rs's tests.
//!
//! The project's rule is that tests exercise the real thing: a real etcd for the etcd KV backend
//! and elections, and later real `m3aggregator` and `m3coordinator` processes and a real
//! Prometheus. This crate starts those components for a test, on free loopback ports and in
//! temporary directories, waits until they answer, and stops them when the handle is dropped, so
//! a failing test leaves nothing running behind.
//!
//! A component that is not installed makes the test **fail** with a message saying how to install
//! it; it never makes the test pass by skipping.
//!
//! | helper | what |
//! |---|---|
//! | [`free_port`] | a free TCP port on 127.0.0.1 |
//! | [`EtcdProcess`] | a single-member etcd cluster with its own data dir; stop and restart on the same ports |
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

pub use etcd::EtcdProcess;

use std::net::{Ipv4Addr, TcpListener};

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
