//! A real VictoriaMetrics single-node for tests: Debian's `victoria-metrics` binary on a free
//! loopback port, taking Prometheus remote write at `/api/v1/write`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::process::{ChildProcess, find_on_path};

/// How long VictoriaMetrics may take to answer `/health`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `victoria-metrics` for one test, its data in a temporary dir. Dropping the handle
/// kills it and removes the dir. [`VictoriaMetricsProcess::stop`] and
/// [`VictoriaMetricsProcess::restart`] take it down and bring it back on the same port with the
/// same data, as an endpoint that goes away for a while.
#[derive(Debug)]
pub struct VictoriaMetricsProcess {
    process: ChildProcess,
    port: u16,
    dir: TempDir,
}

impl VictoriaMetricsProcess {
    /// Starts VictoriaMetrics and waits until it answers.
    ///
    /// # Panics
    /// When `victoria-metrics` is not on `PATH` (the message says how to install it), when it
    /// cannot start, or when it does not answer within 30 seconds (the message quotes its log).
    pub fn start() -> VictoriaMetricsProcess {
        let dir = tempfile::Builder::new()
            .prefix("m3-testkit-victoria-metrics-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary dir for victoria-metrics: {e}"));
        let port = crate::free_port();
        let mut vm = VictoriaMetricsProcess {
            process: spawn(dir.path(), port),
            port,
            dir,
        };
        vm.wait_ready();
        vm
    }

    /// The base URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its Prometheus remote-write URL.
    pub fn remote_write_url(&self) -> String {
        format!("{}/api/v1/write", self.url())
    }

    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The process, for its log and for signals.
    pub fn process(&mut self) -> &mut ChildProcess {
        &mut self.process
    }

    /// Stops it cleanly (SIGTERM, which writes what it holds in memory to disk; SIGKILL after
    /// 30 seconds): its endpoint refuses connections until [`VictoriaMetricsProcess::restart`].
    pub fn stop(&mut self) {
        self.process.stop_within(READY_TIMEOUT);
    }

    /// Starts it again on the same port with the same data and waits until it answers.
    ///
    /// # Panics
    /// As [`VictoriaMetricsProcess::start`].
    pub fn restart(&mut self) {
        self.stop();
        self.process = spawn(self.dir.path(), self.port);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let address = self.address();
        self.process
            .wait_answering(address, "/health", READY_TIMEOUT);
    }
}

fn spawn(dir: &Path, port: u16) -> ChildProcess {
    let binary = require_victoria_metrics(find_on_path("victoria-metrics"));
    let mut command = Command::new(binary);
    command
        .arg(format!("-storageDataPath={}", dir.join("data").display()))
        .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
        // Queries see samples as soon as they are written, not 30 s later.
        .arg("-search.latencyOffset=0s")
        .arg("-loggerLevel=WARN")
        .current_dir(dir);
    ChildProcess::spawn("victoria-metrics", command)
}

/// The binary, or the panic every test needing it shows when it is missing.
fn require_victoria_metrics(found: Option<PathBuf>) -> PathBuf {
    found.unwrap_or_else(|| {
        panic!(
            "victoria-metrics not found on PATH: run scripts/install-deps.sh (Debian package \
             victoria-metrics)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::{find_in, http_get};

    #[test]
    #[should_panic(expected = "victoria-metrics not found on PATH: run scripts/install-deps.sh")]
    fn missing_binary_fails_with_install_hint() {
        let empty = tempfile::tempdir().unwrap();
        require_victoria_metrics(find_in(empty.path().as_os_str(), "victoria-metrics"));
    }

    #[test]
    fn starts_stops_and_comes_back_on_the_same_port() {
        let mut vm = VictoriaMetricsProcess::start();
        let address = vm.address();
        vm.stop();
        assert!(http_get(address, "/health").is_none(), "stopped");
        vm.restart();
        assert_eq!(vm.address(), address);
        assert_eq!(http_get(address, "/health").map(|(s, _)| s), Some(200));
    }
}
