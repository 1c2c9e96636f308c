//! A real Prometheus for tests: Debian's `prometheus` binary on a free loopback port, scraping
//! itself, optionally remote-writing to the system under test.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::process::{ChildProcess, find_on_path};

/// How long Prometheus may take to report itself ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What the generated `prometheus.yml` says.
#[derive(Debug, Clone)]
pub struct PrometheusOptions {
    /// How often Prometheus scrapes itself (its only target). Default 1s.
    pub scrape_interval: Duration,
    /// Where `remote_write` sends samples; none by default.
    pub remote_write_url: Option<String>,
    /// `remote_write[0].queue_config.batch_send_deadline`: the longest a sample waits in the
    /// queue before it is sent. Default 1s.
    pub batch_send_deadline: Duration,
    /// Accept remote writes at `/api/v1/write` (`--web.enable-remote-write-receiver`). Default
    /// false.
    pub remote_write_receiver: bool,
    /// `storage.tsdb.out_of_order_time_window`: how far behind a series' newest sample a
    /// written sample may be. Default none (Prometheus refuses out-of-order samples).
    pub out_of_order_time_window: Option<Duration>,
}

impl Default for PrometheusOptions {
    fn default() -> PrometheusOptions {
        PrometheusOptions {
            scrape_interval: Duration::from_secs(1),
            remote_write_url: None,
            batch_send_deadline: Duration::from_secs(1),
            remote_write_receiver: false,
            out_of_order_time_window: None,
        }
    }
}

/// A running `prometheus` (the Debian package's binary) for one test.
///
/// [`PrometheusProcess::start`] picks a free port, writes a config into a temporary dir (job
/// `prometheus` scraping Prometheus itself, and `remote_write` when asked), keeps the TSDB in
/// that dir and waits until `/-/ready` answers. Dropping the handle kills Prometheus and removes
/// the dir. Its output goes to a log that [`PrometheusProcess::process`] quotes.
#[derive(Debug)]
pub struct PrometheusProcess {
    process: ChildProcess,
    port: u16,
    config: String,
    receiver: bool,
    _dir: TempDir,
}

impl PrometheusProcess {
    /// Starts Prometheus and waits until it is ready.
    ///
    /// # Panics
    /// When `prometheus` is not on `PATH` (the message says how to install it), when it cannot
    /// start, or when it is not ready within 30 seconds (the message quotes its log).
    pub fn start(options: &PrometheusOptions) -> PrometheusProcess {
        let binary = require_prometheus(find_on_path("prometheus"));
        let dir = tempfile::Builder::new()
            .prefix("m3-testkit-prometheus-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary dir for prometheus: {e}"));
        let port = crate::free_port();
        let config = config_yaml(port, options);
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, &config)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", config_path.display()));
        let command = command(&binary, dir.path(), port, options.remote_write_receiver);
        let mut prometheus = PrometheusProcess {
            process: ChildProcess::spawn("prometheus", command),
            port,
            config,
            receiver: options.remote_write_receiver,
            _dir: dir,
        };
        prometheus.wait_ready();
        prometheus
    }

    /// Stops Prometheus cleanly (SIGTERM, waiting up to 30 seconds, then SIGKILL): its remote
    /// write endpoint refuses connections until [`PrometheusProcess::restart`].
    pub fn stop(&mut self) {
        self.process.stop_within(READY_TIMEOUT);
    }

    /// Starts Prometheus again on the same port with the same config and data, and waits until
    /// it is ready.
    ///
    /// # Panics
    /// As [`PrometheusProcess::start`].
    pub fn restart(&mut self) {
        self.stop();
        let binary = require_prometheus(find_on_path("prometheus"));
        let command = command(&binary, self._dir.path(), self.port, self.receiver);
        self.process = ChildProcess::spawn("prometheus", command);
        self.wait_ready();
    }

    /// The base URL of its HTTP API, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The address it listens on; also the `instance` label of its self-scrape.
    pub fn address(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The generated `prometheus.yml`.
    pub fn config(&self) -> &str {
        &self.config
    }

    /// The process, for its log and for signals.
    pub fn process(&mut self) -> &mut ChildProcess {
        &mut self.process
    }

    fn wait_ready(&mut self) {
        let address = self.address();
        self.process
            .wait_answering(address, "/-/ready", READY_TIMEOUT);
    }
}

/// The command line of a Prometheus kept in `dir`, on `port`.
fn command(binary: &std::path::Path, dir: &std::path::Path, port: u16, receiver: bool) -> Command {
    let mut command = Command::new(binary);
    command
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .current_dir(dir);
    if receiver {
        command.arg("--web.enable-remote-write-receiver");
    }
    command
}

/// The prometheus binary, or the panic every test needing it shows when it is missing.
fn require_prometheus(found: Option<PathBuf>) -> PathBuf {
    found.unwrap_or_else(|| {
        panic!(
            "prometheus not found on PATH: run scripts/install-deps.sh (Debian package prometheus)"
        )
    })
}

/// Prometheus's duration syntax, in milliseconds.
fn prom_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

/// The config of a Prometheus on `port`.
fn config_yaml(port: u16, options: &PrometheusOptions) -> String {
    let interval = prom_duration(options.scrape_interval);
    let mut yaml = format!(
        "global:\n  scrape_interval: {interval}\n  scrape_timeout: {interval}\n  evaluation_interval: {interval}\n\
         scrape_configs:\n  - job_name: prometheus\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
    );
    if let Some(window) = options.out_of_order_time_window {
        yaml.push_str(&format!(
            "storage:\n  tsdb:\n    out_of_order_time_window: {}\n",
            prom_duration(window)
        ));
    }
    if let Some(url) = &options.remote_write_url {
        yaml.push_str(&format!(
            "remote_write:\n  - url: {url}\n    queue_config:\n      batch_send_deadline: {}\n",
            prom_duration(options.batch_send_deadline)
        ));
    }
    yaml
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::{find_in, http_get};
    use std::time::Instant;

    #[test]
    #[should_panic(
        expected = "prometheus not found on PATH: run scripts/install-deps.sh (Debian package prometheus)"
    )]
    fn missing_prometheus_fails_with_install_hint() {
        let empty = tempfile::tempdir().unwrap();
        require_prometheus(find_in(empty.path().as_os_str(), "prometheus"));
    }

    #[test]
    fn config_scrapes_itself_and_remote_writes() {
        let options = PrometheusOptions {
            remote_write_url: Some("http://127.0.0.1:7201/api/v1/prom/remote/write".into()),
            ..PrometheusOptions::default()
        };
        assert_eq!(
            config_yaml(9090, &options),
            "global:\n  scrape_interval: 1000ms\n  scrape_timeout: 1000ms\n  evaluation_interval: 1000ms\n\
             scrape_configs:\n  - job_name: prometheus\n    static_configs:\n      - targets: ['127.0.0.1:9090']\n\
             remote_write:\n  - url: http://127.0.0.1:7201/api/v1/prom/remote/write\n    queue_config:\n      batch_send_deadline: 1000ms\n"
        );
    }

    #[test]
    fn starts_ready_and_scrapes_itself() {
        let prometheus = PrometheusProcess::start(&PrometheusOptions::default());
        let dir = prometheus._dir.path().to_path_buf();
        assert!(dir.join("prometheus.yml").is_file());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let answer = http_get(prometheus.address(), "/api/v1/query?query=up");
            if let Some((200, body)) = &answer
                && body.contains("\"value\":[")
                && body.contains("\"1\"]")
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no `up` sample within 20s: {answer:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        drop(prometheus);
        assert!(!dir.exists(), "the temporary dir is removed on drop");
    }
}
