//! The seed's topology from real processes: an etcd, two `m3aggregator`s on 127.0.0.2 and
//! 127.0.0.3 (same port, as in SEED.md's placement), one or more `m3coordinator`s, all run with
//! the shipped configs in `config/` and the environment variables they read. Plus SEED.md's
//! `curl` commands, a remote-write client that remembers what it wrote, and the expected
//! aggregated output (Last per 10s window) computed from that.

#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use m3_proto::Message;
use m3_proto::prometheus::{Label, Sample, TimeSeries, WriteRequest};
use m3_testkit::{Binary, ChildProcess, EtcdProcess};
use serde_json::Value;
use tempfile::TempDir;

/// SEED.md (kept in the repository as docs/seed/m3aggregator.md), read at test time: the
/// walkthrough is the spec.
pub(crate) const SEED_MD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../docs/seed/m3aggregator.md"
);
/// The shipped aggregator config.
pub(crate) const AGGREGATOR_CONFIG: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/m3aggregator.yml");
/// The shipped coordinator config.
pub(crate) const COORDINATOR_CONFIG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../config/m3coordinator.yml"
);

/// The headers that pick the 10s aggregated namespace.
pub(crate) const AGG_10S: &[(&str, &str)] = &[
    ("M3-Metrics-Type", "aggregated"),
    ("M3-Storage-Policy", "10s:2d"),
];

/// The aggregated resolution checked, in ms.
pub(crate) const RESOLUTION_MS: i64 = 10_000;

/// `bufferDurationForPastTimedMetric` and `writeBuffers.bufferPast` in these tests: small, so
/// windows flush soon after they end (at end + bufferPast + resolution).
pub(crate) const BUFFER_PAST: &str = "5s";
/// [`BUFFER_PAST`] in ms.
pub(crate) const BUFFER_PAST_MS: i64 = 5_000;

/// A series' labels, sorted by name.
pub(crate) type LabelSet = BTreeMap<String, String>;

/// Milliseconds since the epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The end of the window of `resolution_ms` holding `t_ms`.
pub(crate) fn window_end(t_ms: i64, resolution_ms: i64) -> i64 {
    t_ms.div_euclid(resolution_ms) * resolution_ms + resolution_ms
}

/// One running `m3aggregator`.
pub(crate) struct Aggregator {
    /// The process.
    pub process: ChildProcess,
    /// Its host ID (`M3AGGREGATOR_HOST_ID`), also the address it listens on.
    pub host: Ipv4Addr,
    /// rawtcp.
    pub rawtcp: SocketAddr,
    /// Admin HTTP.
    pub http: SocketAddr,
    /// Its config file.
    pub config: PathBuf,
}

/// One running `m3coordinator`.
pub(crate) struct Coordinator {
    /// The process.
    pub process: ChildProcess,
    /// HTTP API.
    pub http: SocketAddr,
    /// m3msg ingest.
    pub ingest: SocketAddr,
    /// Its config file.
    pub config: PathBuf,
    _data: TempDir,
}

impl Coordinator {
    /// `http://<http>`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.http)
    }
}

/// etcd, two aggregators, `coordinators` coordinators.
pub(crate) struct Cluster {
    /// The cluster KV.
    pub etcd: EtcdProcess,
    /// 127.0.0.2 and 127.0.0.3.
    pub aggregators: Vec<Aggregator>,
    /// On 127.0.0.1.
    pub coordinators: Vec<Coordinator>,
    /// The rawtcp port both aggregators use (SEED.md's 6000).
    pub rawtcp_port: u16,
    /// HTTP client for everything.
    pub client: reqwest::Client,
}

/// The aggregators' host IDs and addresses.
pub(crate) const AGGREGATOR_HOSTS: [Ipv4Addr; 2] =
    [Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)];

impl Cluster {
    /// Starts etcd, the two aggregators and `coordinators` coordinators from the shipped
    /// configs, and waits until each answers `/health`.
    pub(crate) async fn start(name: &str, coordinators: usize) -> Cluster {
        Cluster::start_with(
            name,
            coordinators,
            Path::new(AGGREGATOR_CONFIG),
            Path::new(COORDINATOR_CONFIG),
        )
        .await
    }

    /// As [`Cluster::start`], with other config files for the aggregators and coordinators.
    pub(crate) async fn start_with(
        name: &str,
        coordinators: usize,
        aggregator_config: &Path,
        coordinator_config: &Path,
    ) -> Cluster {
        let etcd = EtcdProcess::start();
        let rawtcp_port = m3_testkit::free_port_on_all(&AGGREGATOR_HOSTS);
        let http_port = loop {
            let port = m3_testkit::free_port_on_all(&AGGREGATOR_HOSTS);
            if port != rawtcp_port {
                break port;
            }
        };
        let aggregators = AGGREGATOR_HOSTS
            .iter()
            .enumerate()
            .map(|(i, host)| {
                start_aggregator_with(
                    &format!("{name}-m3aggregator{:02}", i + 1),
                    &etcd,
                    *host,
                    (rawtcp_port, http_port),
                    aggregator_config,
                )
            })
            .collect();
        let coordinators = (0..coordinators)
            .map(|i| {
                start_coordinator_with(
                    &format!("{name}-m3coordinator{:02}", i + 1),
                    &etcd,
                    coordinator_config,
                )
            })
            .collect();
        let cluster = Cluster {
            etcd,
            aggregators,
            coordinators,
            rawtcp_port,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("HTTP client"),
        };
        for aggregator in &cluster.aggregators {
            cluster
                .wait_healthy(
                    &format!("http://{}/health", aggregator.http),
                    &aggregator.process,
                )
                .await;
        }
        for coordinator in &cluster.coordinators {
            cluster
                .wait_healthy(
                    &format!("{}/health", coordinator.url()),
                    &coordinator.process,
                )
                .await;
        }
        cluster
    }

    /// Waits until `url` answers 2xx, failing with `process`'s log after 30s.
    pub(crate) async fn wait_healthy(&self, url: &str, process: &ChildProcess) {
        let ok = m3_testkit::wait_for(Duration::from_secs(30), Duration::from_millis(50), || {
            let request = self.client.get(url).send();
            async move { request.await.ok().filter(|r| r.status().is_success()) }
        })
        .await;
        if ok.is_none() {
            panic!("{url} did not answer within 30s; {process}");
        }
    }

    /// The logs of every process, for panic messages.
    pub(crate) fn logs(&self) -> String {
        let mut out = String::new();
        for a in &self.aggregators {
            out.push_str(&format!("\n--- {a}\n", a = a.process));
        }
        for c in &self.coordinators {
            out.push_str(&format!("\n--- {c}\n", c = c.process));
        }
        out
    }

    /// How SEED.md's host names map to this cluster's addresses (coordinator `0` serves the
    /// admin API).
    pub(crate) fn hosts(&self, coordinator: usize) -> SeedHosts {
        SeedHosts {
            coordinator_http: self.coordinators[coordinator].http,
            coordinator_ingest: self.coordinators[coordinator].ingest,
            aggregators: AGGREGATOR_HOSTS,
            aggregator_port: self.rawtcp_port,
        }
    }

    /// The election state of each aggregator (`/status`'s `electionState`).
    pub(crate) async fn election_states(&self) -> Vec<String> {
        let mut states = Vec::new();
        for a in &self.aggregators {
            let state = match self
                .client
                .get(format!("http://{}/status", a.http))
                .send()
                .await
            {
                Ok(response) => response
                    .json::<Value>()
                    .await
                    .ok()
                    .and_then(|v| {
                        v["status"]["flushStatus"]["electionState"]
                            .as_str()
                            .map(str::to_string)
                    })
                    .unwrap_or_else(|| "unreadable".to_string()),
                Err(_) => "unreachable".to_string(),
            };
            states.push(state);
        }
        states
    }

    /// Aggregator `index`'s `/status`: (election state, canLead), `None` when unreachable.
    pub(crate) async fn status(&self, index: usize) -> Option<(String, bool)> {
        let a = &self.aggregators[index];
        let v: Value = self
            .client
            .get(format!("http://{}/status", a.http))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let flush = &v["status"]["flushStatus"];
        Some((
            flush["electionState"].as_str()?.to_string(),
            flush["canLead"].as_bool()?,
        ))
    }

    /// Waits until exactly one aggregator is leader and the other follower; the leader's index.
    pub(crate) async fn wait_for_leader(&self, timeout: Duration) -> usize {
        let last = RefCell::new(Vec::new());
        let leader = m3_testkit::wait_for(timeout, Duration::from_millis(200), || {
            let states = self.election_states();
            let last = &last;
            async move {
                let states = states.await;
                *last.borrow_mut() = states.clone();
                let leaders: Vec<usize> = (0..states.len())
                    .filter(|&i| states[i] == "leader")
                    .collect();
                let followers = states.iter().filter(|s| *s == "follower").count();
                (leaders.len() == 1 && followers == states.len() - 1).then(|| leaders[0])
            }
        })
        .await;
        leader.unwrap_or_else(|| {
            panic!(
                "no single leader within {timeout:?}; election states {:?}{}",
                last.borrow(),
                self.logs()
            )
        })
    }

    /// Runs SEED.md's `curl` commands against coordinator `0`, asserting 2xx for each.
    pub(crate) async fn run_seed_commands(&self) {
        let hosts = self.hosts(0);
        for command in seed_commands() {
            let command = command.localized(&hosts);
            self.send_curl(&command).await;
        }
    }

    /// Sends one curl command as curl would (`-d` sends a form content type) and asserts 2xx.
    pub(crate) async fn send_curl(&self, command: &CurlCommand) {
        let method = reqwest::Method::from_bytes(command.method.as_bytes()).expect("method");
        let response = self
            .client
            .request(method, &command.url)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(command.body.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{} {}: {e}{}", command.method, command.url, self.logs()));
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert!(
            status.is_success(),
            "{} {} answered {status}: {body}\nrequest body:\n{}{}",
            command.method,
            command.url,
            command.body,
            self.logs()
        );
    }

    /// Starts aggregator `index` again after it exited (a crashed pod coming back): same host,
    /// ports and config, a new process.
    pub(crate) fn restart_aggregator(&mut self, index: usize, name: &str) {
        let old = &self.aggregators[index];
        let restarted = start_aggregator_with(
            name,
            &self.etcd,
            old.host,
            (old.rawtcp.port(), old.http.port()),
            &old.config,
        );
        self.aggregators[index] = restarted;
    }

    /// Kills coordinator `index` if it still runs and starts it again (a crashed pod coming
    /// back): same ports, config and data dir, a new process; waits until it answers
    /// `/health`.
    pub(crate) async fn restart_coordinator(&mut self, index: usize, name: &str) {
        let placeholder = tempfile::tempdir().expect("temporary dir");
        let old = &mut self.coordinators[index];
        old.process.kill();
        let data = std::mem::replace(&mut old._data, placeholder);
        let restarted = spawn_coordinator(
            name,
            &self.etcd,
            &old.config.clone(),
            (old.http, old.ingest),
            data,
        );
        self.coordinators[index] = restarted;
        let c = &self.coordinators[index];
        self.wait_healthy(&format!("{}/health", c.url()), &c.process)
            .await;
    }

    /// Waits until aggregator `index` answers `/health`.
    pub(crate) async fn wait_aggregator_healthy(&self, index: usize) {
        let a = &self.aggregators[index];
        self.wait_healthy(&format!("http://{}/health", a.http), &a.process)
            .await;
    }

    /// The stored points of the series matched by `selector` in the namespace picked by
    /// `headers`, from every coordinator: (labels, coordinator index) → points.
    pub(crate) async fn stored(
        &self,
        selector: &str,
        headers: &[(&str, &str)],
    ) -> Vec<(LabelSet, usize, Vec<(i64, f64)>)> {
        let mut out = Vec::new();
        for (i, c) in self.coordinators.iter().enumerate() {
            let result = query(&self.client, &c.url(), selector, headers, None).await;
            for (labels, points) in matrix(&result) {
                out.push((labels, i, points));
            }
        }
        out
    }
}

/// Starts one `m3aggregator` on `host` with the shipped config.
pub(crate) fn start_aggregator(
    name: &str,
    etcd: &EtcdProcess,
    host: Ipv4Addr,
    rawtcp_port: u16,
    http_port: u16,
) -> Aggregator {
    start_aggregator_with(
        name,
        etcd,
        host,
        (rawtcp_port, http_port),
        Path::new(AGGREGATOR_CONFIG),
    )
}

/// Starts one `m3aggregator` on `host` with the config file at `config`; `ports` are its
/// ingest port (`M3AGGREGATOR_RAWTCP_ADDRESS`) and its HTTP port.
pub(crate) fn start_aggregator_with(
    name: &str,
    etcd: &EtcdProcess,
    host: Ipv4Addr,
    ports: (u16, u16),
    config: &Path,
) -> Aggregator {
    let rawtcp = SocketAddr::from((host, ports.0));
    let http = SocketAddr::from((host, ports.1));
    let mut command = Command::new(Binary::path("m3aggregator"));
    command
        .arg("-f")
        .arg(config)
        .env("ETCD_ENDPOINT", etcd.endpoint())
        .env("M3AGGREGATOR_HOST_ID", host.to_string())
        .env("M3AGGREGATOR_RAWTCP_ADDRESS", rawtcp.to_string())
        .env("M3AGGREGATOR_HTTP_ADDRESS", http.to_string())
        .env("M3AGGREGATOR_BUFFER_PAST", BUFFER_PAST)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    Aggregator {
        process: ChildProcess::spawn(name, command),
        host,
        rawtcp,
        http,
        config: config.to_path_buf(),
    }
}

/// Starts one `m3coordinator` with the config file at `config`.
pub(crate) fn start_coordinator_with(
    name: &str,
    etcd: &EtcdProcess,
    config: &std::path::Path,
) -> Coordinator {
    let ports = m3_testkit::free_ports(2);
    let data = tempfile::Builder::new()
        .prefix(&format!("m3-e2e-{name}-"))
        .tempdir()
        .expect("temporary data dir");
    spawn_coordinator(
        name,
        etcd,
        config,
        (
            SocketAddr::from((Ipv4Addr::LOCALHOST, ports[0])),
            SocketAddr::from((Ipv4Addr::LOCALHOST, ports[1])),
        ),
        data,
    )
}

/// Runs `m3coordinator` with `config`, its HTTP API and m3msg ingest on `(http, ingest)`, its
/// data under `data`.
fn spawn_coordinator(
    name: &str,
    etcd: &EtcdProcess,
    config: &std::path::Path,
    (http, ingest): (SocketAddr, SocketAddr),
    data: TempDir,
) -> Coordinator {
    let mut command = Command::new(Binary::path("m3coordinator"));
    command
        .arg("-f")
        .arg(config)
        .env("ETCD_ENDPOINT", etcd.endpoint())
        .env("M3COORDINATOR_LISTEN_ADDRESS", http.to_string())
        .env("M3COORDINATOR_INGEST_ADDRESS", ingest.to_string())
        .env("M3COORDINATOR_DATA_DIR", data.path().join("data"))
        .env("M3COORDINATOR_BUFFER_PAST", BUFFER_PAST)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    Coordinator {
        process: ChildProcess::spawn(name, command),
        http,
        ingest,
        config: config.to_path_buf(),
        _data: data,
    }
}

/// One `curl -X <method> <url> -d '<body>'` of SEED.md.
#[derive(Debug, Clone)]
pub(crate) struct CurlCommand {
    /// `POST`.
    pub method: String,
    /// As written.
    pub url: String,
    /// As written, byte for byte.
    pub body: String,
}

/// Where SEED.md's host names point in a test.
#[derive(Debug, Clone)]
pub(crate) struct SeedHosts {
    /// `m3coordinator01:7201`.
    pub coordinator_http: SocketAddr,
    /// `m3coordinator01:7507`.
    pub coordinator_ingest: SocketAddr,
    /// `m3aggregator01`, `m3aggregator02`.
    pub aggregators: [Ipv4Addr; 2],
    /// `6000`.
    pub aggregator_port: u16,
}

impl CurlCommand {
    /// The command with SEED.md's host names (and their ports) replaced by `hosts`; nothing
    /// else changes.
    ///
    /// # Panics
    /// When a SEED.md host name is left over, i.e. the seed gained a host this does not map.
    pub(crate) fn localized(&self, hosts: &SeedHosts) -> CurlCommand {
        let url = self.url.replace(
            "http://m3coordinator01:7201",
            &format!("http://{}", hosts.coordinator_http),
        );
        let port = hosts.aggregator_port;
        let [a1, a2] = hosts.aggregators;
        let ingest = hosts.coordinator_ingest;
        let replacements = [
            ("m3aggregator01:6000".to_string(), format!("{a1}:{port}")),
            ("m3aggregator02:6000".to_string(), format!("{a2}:{port}")),
            ("\"m3aggregator01\"".to_string(), format!("\"{a1}\"")),
            ("\"m3aggregator02\"".to_string(), format!("\"{a2}\"")),
            ("\"port\": 6000".to_string(), format!("\"port\": {port}")),
            ("m3coordinator01:7507".to_string(), ingest.to_string()),
            (
                "\"hostname\": \"m3coordinator01\"".to_string(),
                format!("\"hostname\": \"{}\"", ingest.ip()),
            ),
            (
                "\"port\": 7507".to_string(),
                format!("\"port\": {}", ingest.port()),
            ),
        ];
        let mut body = self.body.clone();
        for (from, to) in &replacements {
            body = body.replace(from.as_str(), to);
        }
        for leftover in [
            "m3aggregator0",
            ":6000",
            ":7507",
            "\"hostname\": \"m3coordinator",
        ] {
            assert!(
                !body.contains(leftover) && !url.contains(leftover),
                "SEED.md host name {leftover:?} not mapped in {url}:\n{body}"
            );
        }
        CurlCommand {
            method: self.method.clone(),
            url,
            body,
        }
    }
}

/// Every `curl ... -d '...'` in SEED.md, in order.
///
/// # Panics
/// When SEED.md is missing or holds no curl command.
pub(crate) fn seed_commands() -> Vec<CurlCommand> {
    let text = std::fs::read_to_string(SEED_MD).unwrap_or_else(|e| {
        panic!(
            "cannot read SEED.md at {SEED_MD}: {e} (the walkthrough test runs its curl commands)"
        )
    });
    let commands = parse_curl_commands(&text);
    assert!(!commands.is_empty(), "no curl command found in {SEED_MD}");
    commands
}

/// Parses `curl [flags] -X METHOD URL -d '<body>'` commands out of markdown.
pub(crate) fn parse_curl_commands(text: &str) -> Vec<CurlCommand> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("curl ") {
        rest = &rest[start + 5..];
        let Some(data) = rest.find(" -d '") else {
            break;
        };
        let head = &rest[..data];
        let after = &rest[data + 5..];
        let Some(end) = after.find('\'') else {
            break;
        };
        let body = &after[..end];
        rest = &after[end + 1..];
        let words: Vec<&str> = head.split_whitespace().collect();
        let method = words
            .iter()
            .position(|w| *w == "-X")
            .and_then(|i| words.get(i + 1))
            .map_or("POST", |m| m)
            .to_string();
        let Some(url) = words.iter().find(|w| w.starts_with("http")) else {
            continue;
        };
        out.push(CurlCommand {
            method,
            url: url.to_string(),
            body: body.to_string(),
        });
    }
    out
}

/// Percent-encodes everything but unreserved characters.
pub(crate) fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An instant query (`/api/v1/query`) against `base`, at `time_s` if given; the JSON answer.
pub(crate) async fn query(
    client: &reqwest::Client,
    base: &str,
    query: &str,
    headers: &[(&str, &str)],
    time_s: Option<f64>,
) -> Value {
    let mut url = format!("{base}/api/v1/query?query={}", url_encode(query));
    if let Some(t) = time_s {
        url.push_str(&format!("&time={t:.3}"));
    }
    let mut request = client.get(&url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    assert!(status.is_success(), "GET {url} answered {status}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {text}"))
}

/// The series of a matrix result: labels → (ms, value) points.
pub(crate) fn matrix(result: &Value) -> Vec<(LabelSet, Vec<(i64, f64)>)> {
    result["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|series| {
            let labels = series["metric"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect();
            let points = series["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| {
                    let t = p[0].as_f64()?;
                    let v: f64 = p[1].as_str()?.parse().ok()?;
                    Some(((t * 1000.0).round() as i64, v))
                })
                .collect();
            (labels, points)
        })
        .collect()
}

/// Labels as `{a="1", b="2"}`.
pub(crate) fn show_labels(labels: &LabelSet) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", inner.join(", "))
}

/// Sends a `WriteRequest` snappy-compressed, as Prometheus does; status and body.
pub(crate) async fn remote_write(
    client: &reqwest::Client,
    base: &str,
    request: &WriteRequest,
) -> Result<(u16, String), String> {
    let body = snap::raw::Encoder::new()
        .compress_vec(&request.encode_to_vec())
        .map_err(|e| e.to_string())?;
    let response = client
        .post(format!("{base}/api/v1/prom/remote/write"))
        .header("Content-Encoding", "snappy")
        .header("Content-Type", "application/x-protobuf")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    Ok((status, response.text().await.unwrap_or_default()))
}

/// What a [`Writer`] sent and had accepted, and what it saw go wrong.
#[derive(Debug, Default)]
pub(crate) struct Written {
    /// series label → window end → (timestamp, value) of the latest accepted sample.
    pub last: BTreeMap<String, BTreeMap<i64, (i64, f64)>>,
    /// The timestamp of the latest accepted request.
    pub latest_ms: i64,
    /// Requests that were not answered 200: (time, coordinator, status or error).
    pub failures: Vec<(i64, usize, String)>,
    /// Requests answered 200.
    pub accepted: usize,
}

/// A remote-write client like a Prometheus with one scrape per second: every `every` it writes
/// one sample (timestamp now) for each of `series` series of metric `name`, label
/// `series="s<i>"`, to the coordinators in turn (round robin), and records what was accepted.
pub(crate) struct Writer {
    written: Arc<Mutex<Written>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    /// Starts writing.
    pub(crate) fn start(
        client: reqwest::Client,
        coordinators: Vec<String>,
        name: &str,
        series: usize,
        every: Duration,
    ) -> Writer {
        let written = Arc::new(Mutex::new(Written::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let name = name.to_string();
        let task_written = Arc::clone(&written);
        let task_stop = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n: u64 = 0;
            while !task_stop.load(Ordering::SeqCst) {
                tick.tick().await;
                let t = now_ms();
                let values: Vec<f64> = (0..series).map(|i| (n * 100 + i as u64) as f64).collect();
                let request = WriteRequest {
                    timeseries: (0..series)
                        .map(|i| TimeSeries {
                            labels: vec![
                                Label {
                                    name: "__name__".into(),
                                    value: name.clone(),
                                },
                                Label {
                                    name: "series".into(),
                                    value: format!("s{i}"),
                                },
                            ],
                            samples: vec![Sample {
                                value: values[i],
                                timestamp: t,
                            }],
                        })
                        .collect(),
                };
                let target = (n as usize) % coordinators.len();
                let answer = remote_write(&client, &coordinators[target], &request).await;
                let mut written = task_written.lock().unwrap_or_else(|e| e.into_inner());
                match answer {
                    Ok((200, _)) => {
                        written.accepted += 1;
                        written.latest_ms = t;
                        for (i, value) in values.iter().enumerate() {
                            written
                                .last
                                .entry(format!("s{i}"))
                                .or_default()
                                .insert(window_end(t, RESOLUTION_MS), (t, *value));
                        }
                    }
                    Ok((status, body)) => {
                        written
                            .failures
                            .push((t, target, format!("{status}: {body}")))
                    }
                    Err(e) => written.failures.push((t, target, e)),
                }
                drop(written);
                n += 1;
            }
        });
        Writer {
            written,
            stop,
            task,
        }
    }

    /// A snapshot of what was written.
    pub(crate) fn with_written<T>(&self, f: impl FnOnce(&Written) -> T) -> T {
        f(&self.written.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Waits until a request with a timestamp at or after `t_ms` was accepted.
    pub(crate) async fn wait_past(&self, t_ms: i64, timeout: Duration) {
        let reached = m3_testkit::wait_for(timeout, Duration::from_millis(100), || {
            let latest = self.with_written(|w| w.latest_ms);
            async move { (latest >= t_ms).then_some(()) }
        })
        .await;
        if reached.is_none() {
            let failures = self.with_written(|w| w.failures.clone());
            panic!(
                "no write accepted at or after {t_ms} within {timeout:?}; failures: {failures:?}"
            );
        }
    }

    /// Stops writing.
    pub(crate) async fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
    }
}

/// Compares what the coordinators store in the 10s aggregated namespace for `name` with the
/// Last per window of what `writer` wrote, for windows ending in `(from, to]`: a summary when
/// equal (windows checked, windows stored per coordinator), otherwise a listing of every
/// difference. The union over all coordinators is compared, and a
/// window stored with two different values counts as a difference.
pub(crate) async fn compare_aggregated(
    cluster: &Cluster,
    writer: &Writer,
    name: &str,
    from: i64,
    to: i64,
) -> Result<String, String> {
    let stored = cluster.stored(&format!("{name}[10m]"), AGG_10S).await;
    let mut got: BTreeMap<String, BTreeMap<i64, Vec<(usize, f64)>>> = BTreeMap::new();
    for (labels, coordinator, points) in stored {
        let series = labels.get("series").cloned().unwrap_or_default();
        for (t, v) in points {
            if t > from && t <= to {
                got.entry(series.clone())
                    .or_default()
                    .entry(t)
                    .or_default()
                    .push((coordinator, v));
            }
        }
    }
    let want: BTreeMap<String, BTreeMap<i64, f64>> = writer.with_written(|w| {
        w.last
            .iter()
            .map(|(s, windows)| {
                let in_range = windows
                    .iter()
                    .filter(|(end, _)| **end > from && **end <= to)
                    .map(|(end, (_, v))| (*end, *v))
                    .collect();
                (s.clone(), in_range)
            })
            .collect()
    });
    let mut diffs = Vec::new();
    let mut checked = 0;
    for (series, windows) in &want {
        for (end, value) in windows {
            checked += 1;
            match got.get(series).and_then(|g| g.get(end)) {
                None => diffs.push(format!("{series} @{end}: want {value}, missing")),
                Some(values) => {
                    if values.iter().any(|(_, v)| v != value) {
                        diffs.push(format!(
                            "{series} @{end}: want {value}, got (coordinator, value) {values:?}"
                        ));
                    }
                }
            }
        }
    }
    for (series, windows) in &got {
        for (end, values) in windows {
            if !want.get(series).is_some_and(|w| w.contains_key(end)) {
                diffs.push(format!("{series} @{end}: not written, got {values:?}"));
            }
        }
    }
    if checked == 0 {
        diffs.push(format!("nothing was written for windows in ({from}, {to}]"));
    }
    if !diffs.is_empty() {
        return Err(format!(
            "{} of {checked} windows in ({from}, {to}] differ:\n  {}",
            diffs.len(),
            diffs.join("\n  ")
        ));
    }
    // A window re-emitted after a leader change (same value, by design) may land on another
    // coordinator of the SHARED consumer service than the first time.
    let mut per_coordinator = vec![0usize; cluster.coordinators.len()];
    let mut on_several = 0;
    for stored in got.values().flat_map(|w| w.values()) {
        for (coordinator, _) in stored {
            per_coordinator[*coordinator] += 1;
        }
        if stored.len() > 1 {
            on_several += 1;
        }
    }
    Ok(format!(
        "{checked} windows of {} series match; stored per coordinator: {per_coordinator:?}, \
         {on_several} windows stored more than once with the same value",
        want.len()
    ))
}

/// Polls [`compare_aggregated`] until it reports no difference, for at most `timeout`, and
/// prints the summary.
///
/// # Panics
/// With the last difference listing and the processes' logs.
pub(crate) async fn wait_aggregated(
    cluster: &Cluster,
    writer: &Writer,
    name: &str,
    from: i64,
    to: i64,
    timeout: Duration,
) {
    let last = RefCell::new(String::new());
    let matched = m3_testkit::wait_for(timeout, Duration::from_millis(500), || {
        let compared = compare_aggregated(cluster, writer, name, from, to);
        let last = &last;
        async move {
            match compared.await {
                Ok(summary) => Some(summary),
                Err(diff) => {
                    *last.borrow_mut() = diff;
                    None
                }
            }
        }
    })
    .await;
    if let Some(summary) = &matched {
        println!("{} {name}, windows in ({from}, {to}]: {summary}", now_ms());
    } else {
        let failures = writer.with_written(|w| w.failures.clone());
        panic!(
            "aggregated output of {name} did not match within {timeout:?}: {}\nwrite failures: {failures:?}{}",
            last.borrow(),
            cluster.logs()
        );
    }
}

/// Sum and Count of one 10s window as a [`SumWriter`] sent it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct SumCount {
    /// The sum of the values.
    pub sum: f64,
    /// How many values.
    pub count: u64,
}

/// What a [`SumWriter`] sent: series → window end → sum and count.
pub(crate) type SentWindows = BTreeMap<String, BTreeMap<i64, SumCount>>;

/// A client that writes timed counters straight to every aggregator over rawtcp, as the
/// coordinator's aggregator client does, with explicit metadata asking for **Sum and Count**
/// per 10s window: values where a window missing some of its samples shows (unlike Last).
///
/// Every `every` it sends one sample (timestamp now, value 1, 2, 3…) per series to each
/// aggregator it can reach, reconnecting to those that went away. A sample counts as sent when
/// at least one aggregator took it; since every replica of the shard set gets every sample, a
/// window is complete on a replica that was up all along.
pub(crate) struct SumWriter {
    sent: Arc<Mutex<SentWindows>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl SumWriter {
    /// Starts writing `series` series of metric `name` (label `series="c<i>"`) to `endpoints`,
    /// aggregated per 10s window into the 10s:2d namespace.
    pub(crate) fn start(
        endpoints: Vec<SocketAddr>,
        name: &str,
        series: usize,
        every: Duration,
    ) -> SumWriter {
        SumWriter::start_with_policy(endpoints, name, series, every, "10s:2d")
    }

    /// As [`SumWriter::start`], aggregated with the storage policy `policy` (`1s:1h`): windows
    /// of its resolution, stored in the namespace of that resolution and retention.
    pub(crate) fn start_with_policy(
        endpoints: Vec<SocketAddr>,
        name: &str,
        series: usize,
        every: Duration,
        policy: &str,
    ) -> SumWriter {
        use m3_proto::metricpb::{
            Metadata, MetricWithMetadatas, PipelineMetadata, StagedMetadata, StagedMetadatas,
            TimedMetric, TimedMetricWithMetadatas,
        };
        use tokio::io::AsyncWriteExt;

        let sent = Arc::new(Mutex::new(SentWindows::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let ids: Vec<(String, Vec<u8>)> = (0..series)
            .map(|i| {
                let label = format!("c{i}");
                let mut id = Vec::new();
                m3_metric::id::encode_tags(
                    [
                        ("__name__".as_bytes(), name.as_bytes()),
                        ("series".as_bytes(), label.as_bytes()),
                    ],
                    &mut id,
                )
                .expect("tag-encoded ID");
                (label, id)
            })
            .collect();
        let policy: m3_metric::StoragePolicy = policy.parse().expect("storage policy");
        let resolution_ms = policy.resolution.window_nanos() / 1_000_000;
        let metadatas = StagedMetadatas {
            metadatas: vec![StagedMetadata {
                cutover_nanos: 0,
                tombstoned: false,
                metadata: Some(Metadata {
                    pipelines: vec![PipelineMetadata {
                        aggregation_id: Some(m3_proto::aggregationpb::AggregationId {
                            id: m3_metric::AggregationId::from_types([
                                m3_metric::AggregationType::Sum,
                                m3_metric::AggregationType::Count,
                            ])
                            .0,
                        }),
                        storage_policies: vec![policy.to_proto()],
                        ..PipelineMetadata::default()
                    }],
                }),
            }],
        };
        let task_sent = Arc::clone(&sent);
        let task_stop = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let mut connections: Vec<Option<tokio::net::TcpStream>> =
                endpoints.iter().map(|_| None).collect();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n: u64 = 0;
            while !task_stop.load(Ordering::SeqCst) {
                tick.tick().await;
                n += 1;
                let t = now_ms();
                let mut frames = bytes::BytesMut::new();
                for (_, id) in &ids {
                    let message = MetricWithMetadatas {
                        r#type: 6, // TIMED_METRIC_WITH_METADATAS
                        timed_metric_with_metadatas: Some(TimedMetricWithMetadatas {
                            metric: Some(TimedMetric {
                                r#type: 1, // COUNTER
                                id: bytes::Bytes::from(id.clone()),
                                time_nanos: t * 1_000_000,
                                value: n as f64,
                                annotation: bytes::Bytes::new(),
                            }),
                            metadatas: Some(metadatas.clone()),
                        }),
                        ..MetricWithMetadatas::default()
                    };
                    m3_proto::framing::put_rawtcp_frame(&message, &mut frames, 1 << 20)
                        .expect("frame");
                }
                let mut delivered = 0;
                for (endpoint, connection) in endpoints.iter().zip(connections.iter_mut()) {
                    if connection.is_none() {
                        *connection = tokio::time::timeout(
                            Duration::from_millis(200),
                            tokio::net::TcpStream::connect(endpoint),
                        )
                        .await
                        .ok()
                        .and_then(Result::ok);
                    }
                    let Some(stream) = connection.as_mut() else {
                        continue;
                    };
                    // A paused (SIGSTOPped) aggregator stops reading: give up on it rather
                    // than stall the writes to the others.
                    match tokio::time::timeout(
                        Duration::from_millis(500),
                        stream.write_all(&frames),
                    )
                    .await
                    {
                        Ok(Ok(())) => delivered += 1,
                        Ok(Err(_)) | Err(_) => *connection = None,
                    }
                }
                if delivered > 0 {
                    let mut sent = task_sent.lock().unwrap_or_else(|e| e.into_inner());
                    for (label, _) in &ids {
                        let window = sent
                            .entry(label.clone())
                            .or_default()
                            .entry(window_end(t, resolution_ms))
                            .or_default();
                        window.sum += n as f64;
                        window.count += 1;
                    }
                }
            }
        });
        SumWriter { sent, stop, task }
    }

    /// A copy of what was sent.
    pub(crate) fn sent(&self) -> SentWindows {
        self.sent.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops writing; what was sent.
    pub(crate) async fn stop(self) -> SentWindows {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        std::mem::take(&mut *self.sent.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Window-by-window comparison of stored Sum and Count with what a [`SumWriter`] sent, for
/// windows ending in `(from, to]`: every window counted as expected, stored, missing,
/// differing, or stored more than once.
#[derive(Debug, Default)]
pub(crate) struct WindowReport {
    /// Windows sent (per series and aggregation).
    pub expected: usize,
    /// Expected windows found with the right value.
    pub stored: usize,
    /// Expected windows not found.
    pub missing: Vec<String>,
    /// Windows found with another value (or found but never sent).
    pub differing: Vec<String>,
    /// Windows stored by more than one coordinator.
    pub duplicated: usize,
    /// Windows whose stored value changed between two comparisons: written again with another
    /// value (a partial window corrected later, or one emitted twice), which the store's
    /// overwrite would otherwise hide.
    pub corrected: Vec<String>,
}

impl WindowReport {
    /// Whether every expected window is stored exactly, once, never with another value before,
    /// and nothing else is stored.
    pub(crate) fn is_exact(&self) -> bool {
        self.missing.is_empty()
            && self.differing.is_empty()
            && self.corrected.is_empty()
            && self.duplicated == 0
            && self.stored == self.expected
    }
}

/// The first value seen of every stored window across repeated comparisons, so a window that
/// is stored, then overwritten with another value, is reported even when the final value is
/// right.
#[derive(Debug, Default)]
pub(crate) struct WindowHistory {
    first_seen: Mutex<BTreeMap<String, f64>>,
    corrected: Mutex<Vec<String>>,
}

impl WindowHistory {
    /// Records `value` for `window`; a value different from the first one seen is kept as a
    /// correction.
    pub(crate) fn observe(&self, window: String, value: f64) {
        let mut first_seen = self.first_seen.lock().unwrap_or_else(|e| e.into_inner());
        match first_seen.get(&window) {
            Some(first) if first.to_bits() != value.to_bits() => {
                self.corrected
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(format!("{window}: first stored {first}, later {value}"));
                first_seen.insert(window, value);
            }
            Some(_) => {}
            None => {
                first_seen.insert(window, value);
            }
        }
    }

    /// Every correction seen so far.
    pub(crate) fn corrections(&self) -> Vec<String> {
        self.corrected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl std::fmt::Display for WindowReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "expected {}, stored {}, missing {}, differing {}, stored more than once {}",
            self.expected,
            self.stored,
            self.missing.len(),
            self.differing.len(),
            self.duplicated
        )?;
        if !self.corrected.is_empty() {
            write!(f, ", corrected later {}", self.corrected.len())?;
        }
        for line in self
            .missing
            .iter()
            .chain(&self.differing)
            .chain(&self.corrected)
            .take(40)
        {
            write!(f, "\n  {line}")?;
        }
        Ok(())
    }
}

/// Polls [`compare_sum_count`] for the windows ending in `(from, to]` until every one is stored
/// once with its value (nothing corrected meanwhile), for up to `timeout`; returns that report.
///
/// # Panics
/// With the last report, `what` the windows went through, and the processes' logs.
pub(crate) async fn wait_sum_count_exact(
    cluster: &Cluster,
    sent: &SentWindows,
    name: &str,
    (from, to): (i64, i64),
    timeout: Duration,
    what: &str,
) -> WindowReport {
    // Every value stored across the polls: a window stored, then changed, is reported.
    let history = WindowHistory::default();
    let report = m3_testkit::wait_for(timeout, Duration::from_secs(1), || {
        let compared = compare_sum_count(cluster, sent, name, AGG_10S, (from, to), &history);
        async move { Some(compared.await).filter(WindowReport::is_exact) }
    })
    .await;
    match report {
        Some(report) => report,
        None => {
            let last = compare_sum_count(cluster, sent, name, AGG_10S, (from, to), &history).await;
            panic!("Sum/Count windows {what}: {last}{}", cluster.logs())
        }
    }
}

/// Compares the Sum (`name:sum`) and Count (`name:count`) series stored in the namespace that
/// `namespace`'s headers pick (e.g. [`AGG_10S`]) with `sent`, for windows ending in
/// `(from, to]`. Every stored value is also recorded in `history`, and the report lists each
/// window whose value ever changed between comparisons.
pub(crate) async fn compare_sum_count(
    cluster: &Cluster,
    sent: &SentWindows,
    name: &str,
    namespace: &[(&str, &str)],
    (from, to): (i64, i64),
    history: &WindowHistory,
) -> WindowReport {
    // Back far enough for the first window, and at least the 15 minutes the tests ran with.
    let range_s = ((now_ms() - from) / 1000 + 60).max(900);
    let mut report = WindowReport::default();
    for (output, pick) in [
        (
            format!("{name}:sum"),
            (|w: &SumCount| w.sum) as fn(&SumCount) -> f64,
        ),
        (format!("{name}:count"), |w: &SumCount| w.count as f64),
    ] {
        let stored = cluster
            .stored(&format!("{output}[{range_s}s]"), namespace)
            .await;
        let mut got: BTreeMap<(String, i64), Vec<f64>> = BTreeMap::new();
        for (labels, _, points) in stored {
            let series = labels.get("series").cloned().unwrap_or_default();
            for (t, v) in points {
                history.observe(format!("{output}{{series={series}}} @{t}"), v);
                if t > from && t <= to {
                    got.entry((series.clone(), t)).or_default().push(v);
                }
            }
        }
        for (series, windows) in sent {
            for (end, window) in windows.range(from + 1..=to) {
                report.expected += 1;
                let want = pick(window);
                match got.remove(&(series.clone(), *end)) {
                    None => report
                        .missing
                        .push(format!("{output}{{series={series}}} @{end}: want {want}")),
                    Some(values) => {
                        if values.len() > 1 {
                            report.duplicated += 1;
                        }
                        if values.iter().all(|v| *v == want) {
                            report.stored += 1;
                        } else {
                            report.differing.push(format!(
                                "{output}{{series={series}}} @{end}: want {want}, got {values:?}"
                            ));
                        }
                    }
                }
            }
        }
        for ((series, end), values) in got {
            report.differing.push(format!(
                "{output}{{series={series}}} @{end}: never sent, got {values:?}"
            ));
        }
    }
    report.corrected = history.corrections();
    report
}
