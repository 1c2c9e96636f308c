//! `prometheusRemoteBackend:` — where remote write out sends, with M3's keys.
//!
//! M3's coordinator names Prometheus remote-write endpoints under `prometheusRemoteBackend`:
//! an endpoint without `storagePolicy` receives raw samples, one with a storage policy receives
//! the aggregated output of that resolution and retention. The endpoints receive copies next to
//! the embedded store (`backend` unset or `m3db`), or everything with nothing stored here
//! (`backend: prom-remote`, as in M3). The keys M3 has for its HTTP client
//! (`requestTimeout`, `connectTimeout`, `keepAlive`, `idleConnTimeout`, `maxIdleConns`) keep their
//! meaning; `queueSize`, `maxSamplesPerSend`, `retry` and per-endpoint `headers` are this
//! project's (M3 sends synchronously and has no queue).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use m3_config::RetryConfig;
use m3_metric::StoragePolicy;

use crate::config::NamespaceDownsample;

/// `prometheusRemoteBackend:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PrometheusRemoteBackendConfig {
    /// Where to send.
    pub endpoints: Vec<EndpointConfig>,
    /// A request's whole time limit (default 30s).
    #[serde(default, with = "m3_config::option_duration")]
    pub request_timeout: Option<Duration>,
    /// Connecting (default 5s).
    #[serde(default, with = "m3_config::option_duration")]
    pub connect_timeout: Option<Duration>,
    /// TCP keep-alive interval (default 30s).
    #[serde(default, with = "m3_config::option_duration")]
    pub keep_alive: Option<Duration>,
    /// How long an idle connection is kept (default 90s).
    #[serde(default, with = "m3_config::option_duration")]
    pub idle_conn_timeout: Option<Duration>,
    /// Idle connections kept per endpoint (default 16).
    #[serde(default)]
    pub max_idle_conns: Option<usize>,
    /// Samples waiting per endpoint (default 200,000); beyond, writes are answered 503 and
    /// aggregated output is not acked, so the sender retries later. A batch larger than the
    /// whole queue is taken only when the queue is empty: keep it well above the largest
    /// remote-write request.
    #[serde(default)]
    pub queue_size: Option<usize>,
    /// Samples per request (default 2,000, as Prometheus sends).
    #[serde(default)]
    pub max_samples_per_send: Option<usize>,
    /// Retries of 5xx, 429 and failed connections (default: from 100ms, doubling up to 10s,
    /// forever). Other 4xx answers are never retried.
    #[serde(default)]
    pub retry: Option<RetryConfig>,
}

/// One endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointConfig {
    /// Its name in logs and metrics (default: its address).
    #[serde(default)]
    pub name: Option<String>,
    /// The remote-write URL, e.g. `http://victoria:8428/api/v1/write`.
    pub address: String,
    /// Absent: raw samples. Present: the aggregated output of this resolution and retention.
    #[serde(default)]
    pub storage_policy: Option<EndpointStoragePolicy>,
    /// Extra request headers (e.g. a tenant header).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// `storagePolicy:` of an endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointStoragePolicy {
    /// Resolution of the aggregated output sent there.
    #[serde(with = "m3_config::duration")]
    pub resolution: Duration,
    /// Its retention (which names the policy, as for a namespace).
    #[serde(with = "m3_config::duration")]
    pub retention: Duration,
    /// Whether every metric is downsampled to it (default true), as for a namespace.
    #[serde(default)]
    pub downsample: Option<NamespaceDownsample>,
}

/// An endpoint after validation.
#[derive(Debug, Clone)]
pub struct ValidEndpoint {
    /// Name in logs and metrics.
    pub name: String,
    /// The URL.
    pub url: reqwest::Url,
    /// `None`: raw samples; otherwise the aggregated output of this policy.
    pub policy: Option<StoragePolicy>,
    /// Whether every metric gets an automatic mapping rule to `policy`.
    pub downsample_all: bool,
    /// Extra headers.
    pub headers: reqwest::header::HeaderMap,
}

/// The retry schedule of failed sends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The first wait.
    pub initial: Duration,
    /// Growth per retry.
    pub factor: f64,
    /// The longest wait.
    pub max: Duration,
    /// Retries before giving up; `None` retries for as long as the coordinator runs.
    pub max_retries: Option<u32>,
}

impl Backoff {
    /// The wait before retry number `retry` (0 for the first retry).
    pub fn delay(&self, retry: u32) -> Duration {
        let grown = self.initial.as_secs_f64() * self.factor.powi(retry.min(64) as i32);
        Duration::try_from_secs_f64(grown)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

/// Remote write out after validation.
#[derive(Debug, Clone)]
pub struct RemoteOutSettings {
    /// The endpoints, names unique.
    pub endpoints: Vec<ValidEndpoint>,
    /// A request's time limit.
    pub request_timeout: Duration,
    /// Connect time limit.
    pub connect_timeout: Duration,
    /// TCP keep-alive.
    pub keep_alive: Duration,
    /// Idle connection lifetime.
    pub idle_conn_timeout: Duration,
    /// Idle connections per endpoint.
    pub max_idle_conns: usize,
    /// Samples waiting per endpoint.
    pub queue_size: usize,
    /// Samples per request.
    pub max_samples_per_send: usize,
    /// Retries.
    pub backoff: Backoff,
}

impl PrometheusRemoteBackendConfig {
    /// Checks every value; each problem goes to `problems` under `key` (the block's key).
    pub fn validate(&self, key: &str, problems: &mut m3_config::Problems) -> RemoteOutSettings {
        let positive = |problems: &mut m3_config::Problems, field: &str, value: Option<usize>| {
            if value == Some(0) {
                problems.add(format!("{key}.{field}"), "must be at least 1");
            }
        };
        positive(problems, "queueSize", self.queue_size);
        positive(problems, "maxSamplesPerSend", self.max_samples_per_send);
        positive(problems, "maxIdleConns", self.max_idle_conns);
        if self.endpoints.is_empty() {
            problems.add(format!("{key}.endpoints"), "lists no endpoint");
        }
        let mut endpoints: Vec<ValidEndpoint> = Vec::new();
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            if let Some(valid) = endpoint.validate(&format!("{key}.endpoints[{i}]"), problems) {
                if endpoints.iter().any(|e| e.name == valid.name) {
                    problems.add(
                        format!("{key}.endpoints[{i}].name"),
                        format!("{:?} names another endpoint too", valid.name),
                    );
                    continue;
                }
                endpoints.push(valid);
            }
        }
        let retry = self.retry.unwrap_or_default();
        let backoff = Backoff {
            initial: retry.initial_backoff.unwrap_or(Duration::from_millis(100)),
            factor: retry.backoff_factor.unwrap_or(2.0),
            max: retry.max_backoff.unwrap_or(Duration::from_secs(10)),
            max_retries: match (retry.forever, retry.max_retries) {
                (Some(true), _) | (_, None) => None,
                (_, Some(n)) => Some(n),
            },
        };
        if backoff.initial.is_zero() {
            problems.add(format!("{key}.retry.initialBackoff"), "must be positive");
        }
        if backoff.max < backoff.initial {
            problems.add(
                format!("{key}.retry.maxBackoff"),
                format!(
                    "must be at least initialBackoff ({:?}), else failed sends retry without a pause",
                    backoff.initial
                ),
            );
        }
        for (field, value) in [
            ("requestTimeout", self.request_timeout),
            ("connectTimeout", self.connect_timeout),
        ] {
            if value.is_some_and(|d| d.is_zero()) {
                problems.add(format!("{key}.{field}"), "must be positive");
            }
        }
        if !(backoff.factor >= 1.0 && backoff.factor.is_finite()) {
            problems.add(
                format!("{key}.retry.backoffFactor"),
                "must be a number of at least 1",
            );
        }
        RemoteOutSettings {
            endpoints,
            request_timeout: self.request_timeout.unwrap_or(Duration::from_secs(30)),
            connect_timeout: self.connect_timeout.unwrap_or(Duration::from_secs(5)),
            keep_alive: self.keep_alive.unwrap_or(Duration::from_secs(30)),
            idle_conn_timeout: self.idle_conn_timeout.unwrap_or(Duration::from_secs(90)),
            max_idle_conns: self.max_idle_conns.unwrap_or(16).max(1),
            queue_size: self.queue_size.unwrap_or(200_000).max(1),
            max_samples_per_send: self.max_samples_per_send.unwrap_or(2_000).max(1),
            backoff,
        }
    }
}

impl EndpointConfig {
    fn validate(&self, key: &str, problems: &mut m3_config::Problems) -> Option<ValidEndpoint> {
        let mut valid = true;
        let url = match reqwest::Url::parse(&self.address) {
            Ok(url) if url.scheme() == "http" && url.host().is_some() => Some(url),
            Ok(url) if url.scheme() == "https" => {
                problems.add(
                    format!("{key}.address"),
                    format!(
                        "{:?}: https is not supported by this build; send to an http address \
                         (a TLS-terminating proxy next to the coordinator, for example)",
                        self.address
                    ),
                );
                valid = false;
                Some(url)
            }
            Ok(_) => {
                problems.add(
                    format!("{key}.address"),
                    format!("{:?} is not an http:// URL with a host", self.address),
                );
                None
            }
            Err(e) => {
                problems.add(
                    format!("{key}.address"),
                    format!("{:?} is not a URL: {e}", self.address),
                );
                None
            }
        };
        let policy = match &self.storage_policy {
            None => None,
            Some(p) => {
                if p.resolution.is_zero() {
                    problems.add(
                        format!("{key}.storagePolicy.resolution"),
                        "must be positive",
                    );
                    valid = false;
                }
                if p.retention.is_zero() {
                    problems.add(format!("{key}.storagePolicy.retention"), "must be positive");
                    valid = false;
                }
                Some(StoragePolicy::new(p.resolution, p.retention))
            }
        };
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in &self.headers {
            match (
                reqwest::header::HeaderName::from_bytes(name.as_bytes()),
                reqwest::header::HeaderValue::from_str(value),
            ) {
                (Ok(name), Ok(value)) => {
                    headers.insert(name, value);
                }
                _ => {
                    problems.add(
                        format!("{key}.headers.{name}"),
                        "is not a valid HTTP header name and value",
                    );
                    valid = false;
                }
            }
        }
        let name = self.name.clone().unwrap_or_else(|| self.address.clone());
        if name.is_empty() {
            problems.add(format!("{key}.name"), "must not be empty");
            valid = false;
        }
        let url = url?;
        valid.then(|| ValidEndpoint {
            name,
            url,
            policy,
            downsample_all: self
                .storage_policy
                .as_ref()
                .and_then(|p| p.downsample.as_ref())
                .is_none_or(|d| d.all),
            headers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn validate(text: &str) -> Result<RemoteOutSettings, String> {
        let config: PrometheusRemoteBackendConfig =
            serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        let mut problems = m3_config::Problems::new(Path::new("c.yml"));
        let settings = config.validate("prometheusRemoteBackend", &mut problems);
        problems.finish(settings).map_err(|e| e.to_string())
    }

    #[test]
    fn m3s_keys_and_defaults() {
        let settings = validate(
            "endpoints:\n  - name: raw\n    address: http://127.0.0.1:8428/api/v1/write\n  - address: http://prom:9090/api/v1/write\n    storagePolicy:\n      resolution: 1m\n      retention: 40d\n      downsample:\n        all: false\nrequestTimeout: 10s\n",
        )
        .unwrap();
        assert_eq!(settings.endpoints.len(), 2);
        assert_eq!(settings.endpoints[0].name, "raw");
        assert!(settings.endpoints[0].policy.is_none());
        assert_eq!(settings.endpoints[1].name, "http://prom:9090/api/v1/write");
        assert_eq!(settings.endpoints[1].policy.unwrap().to_string(), "1m:40d");
        assert!(!settings.endpoints[1].downsample_all);
        assert_eq!(settings.request_timeout, Duration::from_secs(10));
        assert_eq!(settings.max_samples_per_send, 2_000);
        assert_eq!(settings.backoff.max_retries, None);
        assert_eq!(settings.backoff.delay(0), Duration::from_millis(100));
        assert_eq!(settings.backoff.delay(3), Duration::from_millis(800));
        assert_eq!(settings.backoff.delay(40), Duration::from_secs(10));
    }

    #[test]
    fn every_problem_names_its_key() {
        let err = validate(
            "endpoints:\n  - name: a\n    address: https://x/api/v1/write\n  - name: a\n    address: http://y/w\n  - name: b\n    address: not a url\n  - name: c\n    address: http://z/w\n    storagePolicy: {resolution: 0s, retention: 2d}\n    headers: {\"bad header\": x}\nqueueSize: 0\nrequestTimeout: 0s\nretry: {initialBackoff: 1s, maxBackoff: 10ms}\n",
        )
        .unwrap_err();
        for part in [
            "prometheusRemoteBackend.endpoints[0].address",
            "https is not supported",
            "prometheusRemoteBackend.endpoints[2].address",
            "prometheusRemoteBackend.endpoints[3].storagePolicy.resolution",
            "prometheusRemoteBackend.endpoints[3].headers.bad header",
            "prometheusRemoteBackend.queueSize",
            "prometheusRemoteBackend.requestTimeout",
            "prometheusRemoteBackend.retry.maxBackoff",
        ] {
            assert!(err.contains(part), "{part} not in {err}");
        }
        let err = validate(
            "endpoints:\n  - name: a\n    address: http://x/w\n  - name: a\n    address: http://y/w\n",
        )
        .unwrap_err();
        assert!(
            err.contains("endpoints[1].name") && err.contains("names another endpoint"),
            "{err}"
        );
        assert!(
            validate("endpoints: []\n")
                .unwrap_err()
                .contains("lists no endpoint")
        );
    }
}
