//! Runs the built `m3` binary for tests: a fresh data directory and config with free ports per
//! test, the coordinator's address read from what `m3 local` prints, and helpers to write and
//! query.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use m3_proto::metricpb::MetricWithMetadatas;
use m3_proto::prometheus::{Label, Sample, TimeSeries};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

/// A remote-write series: `labels` and their `(ms, value)` samples.
pub(crate) fn series(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> TimeSeries {
    TimeSeries {
        labels: labels
            .iter()
            .map(|(n, v)| Label {
                name: n.to_string(),
                value: v.to_string(),
            })
            .collect(),
        samples: samples
            .iter()
            .map(|&(timestamp, value)| Sample { value, timestamp })
            .collect(),
    }
}

/// Milliseconds since the epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A running `m3 local`.
pub(crate) struct LocalProcess {
    child: Option<Child>,
    http: String,
    ingest: String,
    aggregators: Vec<String>,
    aggregator_http: Vec<String>,
    dir: Option<tempfile::TempDir>,
    client: reqwest::Client,
    /// Every line the process printed so far.
    output: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// The thread reading the process's output; it ends when the process does.
    reader: Option<std::thread::JoinHandle<()>>,
}

/// The test config of `m3 local` (`DATA_DIR` is replaced by the data directory); tests that
/// need other settings edit it and pass it to [`LocalProcess::start_with`].
pub(crate) const CONFIG: &str = r#"
coordinator:
  listenAddress: 127.0.0.1:0
  clusters:
    - namespaces:
        - namespace: default
          type: unaggregated
          retention: 48h
        - namespace: agg_10s_2d
          type: aggregated
          resolution: 10s
          retention: 2d
        - namespace: agg_1m_40d
          type: aggregated
          resolution: 1m
          retention: 40d
  storage:
    dataDir: DATA_DIR
  downsample:
    remoteAggregator:
      client:
        placementKV:
          namespace: /placement
        placementWatcher:
          key: m3aggregator
          initWatchTimeout: 10s
        hashType: murmur32
        queueSize: 10000
        queueDropType: oldest
  ingest:
    m3msg:
      server:
        listenAddress: 127.0.0.1:0
  writeBuffers:
    bufferPast: 30s
    bufferFuture: 1m
aggregators:
  listenAddresses: ["127.0.0.1:0", "127.0.0.1:0"]
  httpListenAddresses: ["127.0.0.1:0", "127.0.0.1:0"]
  numShards: 16
  bufferDurationForPastTimedMetric: 30s
  bufferDurationForFutureTimedMetric: 1m
"#;

/// [`CONFIG`] with one aggregator, as `m3 local` runs by default.
pub(crate) fn one_aggregator_config() -> String {
    let two = r#"  listenAddresses: ["127.0.0.1:0", "127.0.0.1:0"]
  httpListenAddresses: ["127.0.0.1:0", "127.0.0.1:0"]"#;
    assert!(
        CONFIG.contains(two),
        "the test config lists two aggregators"
    );
    CONFIG.replace(
        two,
        "  listenAddresses: [\"127.0.0.1:0\"]\n  httpListenAddresses: [\"127.0.0.1:0\"]",
    )
}

impl LocalProcess {
    /// Starts `m3 local` with a test config (30s past buffer) in a fresh directory.
    pub(crate) async fn start(name: &str) -> LocalProcess {
        LocalProcess::start_with(name, CONFIG, &[]).await
    }

    /// Starts `m3 local` with `config` in a fresh directory, through `launcher` (a command
    /// prefix such as `["prlimit", "--nofile=1024:"]`) if not empty.
    pub(crate) async fn start_with(name: &str, config: &str, launcher: &[&str]) -> LocalProcess {
        let dir = tempfile::Builder::new()
            .prefix(&format!("m3-e2e-{name}-"))
            .tempdir()
            .expect("temp dir");
        let mut process = LocalProcess::launch(dir.path(), config, launcher).await;
        process.dir = Some(dir);
        process
    }

    /// Starts `m3 local` keeping its config and data in `dir` (which the caller owns, so a
    /// second process can reopen the same data).
    pub(crate) async fn start_in(dir: &std::path::Path) -> LocalProcess {
        LocalProcess::launch(dir, CONFIG, &[]).await
    }

    /// As [`LocalProcess::start_in`], with `config`.
    pub(crate) async fn start_in_with(dir: &std::path::Path, config: &str) -> LocalProcess {
        LocalProcess::launch(dir, config, &[]).await
    }

    async fn launch(dir: &std::path::Path, config_text: &str, launcher: &[&str]) -> LocalProcess {
        let mut child = spawn_local(dir, config_text, launcher);
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = std::sync::Arc::clone(&output);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("[m3 local] {line}");
                if let Ok(mut kept) = kept.lock() {
                    kept.push(line.clone());
                }
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let (mut http, mut aggregators, mut aggregator_http, mut ingest) = (None, None, None, None);
        while http.is_none()
            || aggregators.is_none()
            || aggregator_http.is_none()
            || ingest.is_none()
        {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|_| {
                let _ = child.kill();
                panic!("m3 local did not print its addresses within 30s")
            });
            if let Some(rest) = line.trim().strip_prefix("coordinator API:") {
                http = Some(rest.trim().to_string());
            }
            if let Some(rest) = line.trim().strip_prefix("ingest (m3msg):") {
                ingest = Some(rest.trim().to_string());
            }
            if let Some(rest) = line.trim().strip_prefix("aggregators (rawtcp):") {
                aggregators = Some(rest.split(',').map(|s| s.trim().to_string()).collect());
            }
            if let Some(rest) = line.trim().strip_prefix("aggregators (HTTP):") {
                aggregator_http = Some(
                    rest.split(',')
                        .map(|s| format!("http://{}", s.trim()))
                        .collect(),
                );
            }
        }
        LocalProcess {
            child: Some(child),
            http: http.unwrap_or_default(),
            ingest: ingest.unwrap_or_default(),
            aggregators: aggregators.unwrap_or_default(),
            aggregator_http: aggregator_http.unwrap_or_default(),
            dir: None,
            client: reqwest::Client::new(),
            output,
            reader: Some(reader),
        }
    }

    /// The process ID.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The coordinator's m3msg ingest address.
    pub(crate) fn ingest(&self) -> &str {
        &self.ingest
    }

    /// The process's peak resident memory so far (`VmHWM`), in bytes.
    pub(crate) fn peak_rss(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:") * 1024
    }

    /// Resets the peak resident memory to the current one (`/proc/<pid>/clear_refs`).
    pub(crate) fn reset_peak_rss(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5")
            .expect("clear_refs is writable for our own child");
    }

    /// Whether the process is still running.
    pub(crate) fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The rawtcp endpoints of the aggregators.
    pub(crate) fn aggregator_endpoints(&self) -> Vec<String> {
        self.aggregators.clone()
    }

    /// The aggregators' HTTP base URLs.
    pub(crate) fn aggregator_http(&self) -> Vec<String> {
        self.aggregator_http.clone()
    }

    /// GETs `url` and returns status and body.
    pub(crate) async fn get(&self, url: &str) -> (u16, String) {
        let response = self.client.get(url).send().await.expect("server answers");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    /// The coordinator's base URL.
    pub(crate) fn http(&self) -> &str {
        &self.http
    }

    /// Sends an uncompressed `WriteRequest`, snappy-compressing it as Prometheus does.
    pub(crate) async fn remote_write(&self, proto: &[u8]) -> (u16, String) {
        let body = snap::raw::Encoder::new()
            .compress_vec(proto)
            .expect("compress");
        self.remote_write_raw(body).await
    }

    /// Sends `body` as it is.
    pub(crate) async fn remote_write_raw(&self, body: Vec<u8>) -> (u16, String) {
        let response = self
            .client
            .post(format!("{}/api/v1/prom/remote/write", self.http))
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .body(body)
            .send()
            .await
            .expect("coordinator answers");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    /// An instant query with extra headers; returns the JSON body.
    pub(crate) async fn query(&self, query: &str, headers: &[(&str, &str)]) -> Value {
        let mut request = self.client.get(format!(
            "{}/api/v1/query?query={}",
            self.http,
            url_encode(query)
        ));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("coordinator answers");
        let text = response.text().await.expect("body");
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("query {query}: not JSON ({e}): {text}"))
    }

    /// Polls `query` (up to 90s) until `done` accepts the result, which is returned.
    pub(crate) async fn wait_for_points(
        &self,
        query: &str,
        headers: &[(&str, &str)],
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let got = self.query(query, headers).await;
            if done(&got) || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Sends SIGTERM and waits for a clean exit.
    /// Returns every line the process printed.
    pub(crate) async fn stop(mut self) -> Vec<String> {
        let Some(mut child) = self.child.take() else {
            return Vec::new();
        };
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                assert!(status.success(), "m3 local exited with {status}");
                // The output ends with the process: read it to the end.
                if let Some(reader) = self.reader.take() {
                    let _ = tokio::task::spawn_blocking(move || reader.join()).await;
                }
                return self.output.lock().map(|l| l.clone()).unwrap_or_default();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("m3 local did not stop within 60s of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Writes `config_text` (with `DATA_DIR` set to `dir/data`) to `dir` and spawns `m3 local` on
/// it through `launcher` (a command prefix) if not empty; its stdout (log and banner) piped.
pub(crate) fn spawn_local(dir: &std::path::Path, config_text: &str, launcher: &[&str]) -> Child {
    let config = dir.join("m3local.yml");
    let data = dir.join("data");
    std::fs::write(
        &config,
        config_text.replace("DATA_DIR", &data.display().to_string()),
    )
    .expect("write config");
    let mut command = match launcher.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(env!("CARGO_BIN_EXE_m3"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_m3")),
    };
    command
        .args(["local", "-f"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the m3 binary starts")
}

impl Drop for LocalProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A `/proc/<pid>/status` field in KiB (0 when absent).
pub(crate) fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The (ms, value) points of the matrix series whose `host` label is `host`.
pub(crate) fn matrix_points(result: &Value, host: &str) -> Vec<(i64, f64)> {
    result["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["metric"]["host"] == host)
        .flat_map(points_of)
        .collect()
}

/// Every (ms, value) point of every series of a matrix result.
pub(crate) fn all_points(result: &Value) -> Vec<(i64, f64)> {
    result["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(points_of)
        .collect()
}

/// Series by their labels (sorted by name), each with its (ms, value) points.
pub(crate) type ByLabels = std::collections::BTreeMap<Vec<(String, String)>, Vec<(i64, f64)>>;

/// Every series of a matrix result, by its labels, with its points.
pub(crate) fn points_by_labels(result: &Value) -> ByLabels {
    result["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|series| {
            let mut labels: Vec<(String, String)> = series["metric"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(n, v)| (n.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect();
            labels.sort();
            (labels, points_of(series))
        })
        .collect()
}

fn points_of(series: &Value) -> Vec<(i64, f64)> {
    series["values"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let t = p[0].as_f64()?;
            let v: f64 = p[1].as_str()?.parse().ok()?;
            Some(((t * 1000.0).round() as i64, v))
        })
        .collect()
}

/// Writes `messages` as rawtcp frames to `endpoint`, as M3's client does.
pub(crate) async fn write_rawtcp(endpoint: &str, messages: &[MetricWithMetadatas]) {
    let mut buf = BytesMut::new();
    for m in messages {
        m3_proto::framing::put_rawtcp_frame(m, &mut buf, 1 << 20).expect("frame");
    }
    let mut stream = tokio::net::TcpStream::connect(endpoint)
        .await
        .expect("aggregator accepts");
    stream.write_all(&buf).await.expect("write");
    stream.flush().await.expect("flush");
    stream.shutdown().await.expect("shutdown");
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
