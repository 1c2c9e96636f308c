//! End-to-end tests of m3-rs as SEED.md deploys it; the crate itself is empty.
//!
//! The tests in `tests/` run the real processes: a real etcd (on free
//! ports with a temporary data dir), two `m3aggregator`s on 127.0.0.2 and 127.0.0.3 and one or
//! more `m3coordinator`s, all started from the shipped configs in `config/` with the
//! environment variables those configs read, and Debian's `prometheus` as the remote-write
//! client. The binaries must be built first (`cargo build --workspace --bins`; `make test` does).
//!
//! | test file | what it shows |
//! |---|---|
//! | `walkthrough.rs` | SEED.md's `curl` commands work as written (host names aside); remote write yields exactly the Last per 10s window; output keeps arriving when the leader aggregator is SIGKILLed, when etcd restarts, and with two coordinators taking writes in turn |
//! | `startup_errors.rs` | a config with an unknown key, a bad duration or no `kvClient`, and an unreachable etcd, stop the binaries at once with a message naming the key or endpoint and the file |
//! | `prometheus.rs` | with Prometheus scraping itself and remote-writing to the coordinator, every stored 10s window equals the last raw sample Prometheus holds for it |
