//! A real etcd for tests: one member, loopback ports, a temporary data dir.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
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
        let binary = find_on_path("etcd").unwrap_or_else(|| {
            panic!(
                "etcd not found on PATH: run scripts/install-test-deps.sh (Debian package etcd-server)"
            )
        });
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

/// Asks etcd's `/health` endpoint over plain HTTP/1.0.
fn is_healthy(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let request = format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.") && response.contains("\"health\":\"true\"")
}
