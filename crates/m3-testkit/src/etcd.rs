//! A real etcd for tests: one member, loopback ports, a temporary data dir.

use std::fs::OpenOptions;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::process::{find_on_path, log_tail};

/// How long etcd may take to answer its health check after being started.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The member name used in etcd's single-member cluster.
const MEMBER: &str = "m3-testkit";

/// A running `etcd` (the Debian `etcd-server` binary) for one test.
///
/// [`EtcdProcess::start`] picks free ports for the client and peer URLs, creates a temporary data
/// dir and waits until etcd reports itself healthy. [`EtcdProcess::stop`] kills it (as a crash
/// would) and [`EtcdProcess::restart`] starts it again on the same ports with the same data, so
/// tests can check that clients reconnect. Dropping the handle kills etcd and removes the data dir.
///
/// etcd's own output goes to `etcd.log` in the temporary dir; it is quoted when etcd fails to come
/// up.
#[derive(Debug)]
pub struct EtcdProcess {
    binary: PathBuf,
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl EtcdProcess {
    /// Starts etcd and waits until it answers.
    ///
    /// # Panics
    /// When `etcd` is not on `PATH` (the message says how to install it), when it cannot be
    /// spawned, or when it does not become healthy within 20 seconds (the message quotes its log).
    pub fn start() -> EtcdProcess {
        let binary = require_etcd(find_on_path("etcd"));
        let dir = tempfile::Builder::new()
            .prefix("m3-testkit-etcd-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary dir for etcd: {e}"));
        let ports = crate::free_ports(2);
        let mut etcd = EtcdProcess {
            binary,
            dir,
            client_port: ports[0],
            peer_port: ports[1],
            child: None,
        };
        etcd.spawn();
        etcd
    }

    /// The client endpoint as M3 configs list it: `127.0.0.1:<port>`, no scheme.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// The client URL, `http://127.0.0.1:<port>`.
    pub fn client_url(&self) -> String {
        format!("http://{}", self.endpoint())
    }

    /// The data dir (kept across [`EtcdProcess::restart`]).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The value of one of etcd's own Prometheus metrics (served at `/metrics`), summed over its
    /// label sets; `None` when etcd does not answer or has no such metric. Useful to check what
    /// a client leaves behind on the server, e.g. `etcd_debugging_mvcc_watcher_total` for open
    /// watches.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.client_port));
        let body = http_get(addr, "/metrics")?;
        let mut found = None;
        for line in body.lines() {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            // `name 3` or `name{labels} 3`, not `name_suffix 3`.
            if !(rest.starts_with(' ') || rest.starts_with('{')) {
                continue;
            }
            let value = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
            if let Some(value) = value {
                *found.get_or_insert(0.0) += value;
            }
        }
        found
    }

    /// Whether etcd is running (started and not stopped).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills etcd (SIGKILL, like a crash) and waits for it to exit. Open client connections
    /// break. Does nothing when it is not running.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops etcd if it runs, then starts it again on the same ports with the same data dir and
    /// waits until it answers.
    ///
    /// # Panics
    /// As [`EtcdProcess::start`], when it does not come back.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// A command running `etcdctl` (Debian package `etcd-client`) with the v3 API against this
    /// etcd: etcd's own Go client, the one M3 is built on, for tests of what such a client sees.
    ///
    /// # Panics
    /// When `etcdctl` is not on `PATH`, with a message saying how to install it.
    pub fn etcdctl(&self) -> Command {
        let binary = find_on_path("etcdctl").unwrap_or_else(|| {
            panic!(
                "etcdctl not found on PATH: run scripts/install-deps.sh (Debian package etcd-client)"
            )
        });
        let mut command = Command::new(binary);
        command
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.endpoint());
        command
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn spawn(&mut self) {
        let log_path = self.log_path();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log_path.display()));
        let log_err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log_path.display()));
        let client_url = self.client_url();
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new(&self.binary)
            .arg("--name")
            .arg(MEMBER)
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--initial-cluster")
            .arg(format!("{MEMBER}={peer_url}"))
            .arg("--initial-cluster-state")
            .arg("new")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        self.child = Some(child);
        self.wait_ready(&log_path);
    }

    fn wait_ready(&mut self, log_path: &Path) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.client_port));
        loop {
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                panic!(
                    "etcd exited with {status} while starting on {}; its log:\n{}",
                    self.endpoint(),
                    log_tail(log_path, 30)
                );
            }
            if is_healthy(addr) {
                return;
            }
            if Instant::now() >= deadline {
                self.stop();
                panic!(
                    "etcd did not become healthy on {} within {READY_TIMEOUT:?}; its log:\n{}",
                    self.endpoint(),
                    log_tail(log_path, 30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The etcd binary, or the panic every test needing etcd shows when it is missing.
fn require_etcd(found: Option<PathBuf>) -> PathBuf {
    found.unwrap_or_else(|| {
        panic!("etcd not found on PATH: run scripts/install-deps.sh (Debian package etcd-server)")
    })
}

/// Asks etcd's `/health` endpoint.
fn is_healthy(addr: SocketAddr) -> bool {
    http_get(addr, "/health").is_some_and(|body| body.contains("\"health\":\"true\""))
}

/// The body of a 200 answer to `GET path` on etcd's client port, `None` otherwise.
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    match crate::process::http_get(addr, path)? {
        (200, body) => Some(body),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::find_in;

    #[test]
    #[should_panic(
        expected = "etcd not found on PATH: run scripts/install-deps.sh (Debian package etcd-server)"
    )]
    fn missing_etcd_fails_with_install_hint() {
        let empty = tempfile::tempdir().unwrap();
        require_etcd(find_in(empty.path().as_os_str(), "etcd"));
    }

    #[test]
    fn stop_and_restart_keep_ports_and_data() {
        let mut etcd = EtcdProcess::start();
        let endpoint = etcd.endpoint();
        assert!(etcd.is_running());
        assert!(
            etcd.data_dir().join("member").is_dir(),
            "etcd wrote its data dir"
        );
        assert_eq!(etcd.metric("etcd_debugging_mvcc_watcher_total"), Some(0.0));
        assert_eq!(etcd.metric("no_such_metric"), None);

        etcd.stop();
        assert!(!etcd.is_running());
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, etcd.client_port));
        assert!(!is_healthy(addr), "a stopped etcd does not answer");

        etcd.restart();
        assert!(etcd.is_running());
        assert_eq!(etcd.endpoint(), endpoint);
        // Healthy once already (restart waits for it); a loaded machine can make one health
        // check slower than its 2 s read timeout, so ask until it answers.
        let healthy = crate::wait_for_blocking(READY_TIMEOUT, Duration::from_millis(100), || {
            is_healthy(addr).then_some(())
        });
        assert!(healthy.is_some(), "the restarted etcd stopped answering");
        let log = std::fs::read_to_string(etcd.log_path()).unwrap();
        assert!(
            log.contains("restarting member") || log.contains("recovered store"),
            "the second start reused the data dir; log:\n{log}"
        );
    }
}
