//! Remote write out: copies of raw samples and of aggregated output sent to Prometheus
//! remote-write endpoints (VictoriaMetrics, Prometheus, Mimir, Thanos, an M3 coordinator), so a
//! deployment that outgrows one machine lands its data in a distributed TSDB.
//!
//! Each endpoint has a bounded queue, counted in samples, and one sender task that sends what is
//! queued in order, one request at a time (Prometheus and most TSDBs refuse out-of-order
//! samples of a series, so requests are not reordered by parallel sends):
//!
//! ```text
//! remote write ─▶ try_send (encoded, compressed) ─▶ queue ≤ queueSize samples ─▶ sender ─▶ POST
//! m3msg ingest ─▶ try_send ─────────────────────▶   (per endpoint)                │ 2xx: accepted
//!                   ▲ full: 503 / not acked                                       │ 5xx, 429, no
//!                   └── the writer or the aggregator sends again                  │   connection:
//!                                                                                 │   retry, backoff
//!                                                                                 │ other 4xx: drop
//! ```
//!
//! What nothing else would send again is never dropped silently: a remote-write request whose
//! raw samples do not fit an endpoint's queue is answered 503 before anything is stored (the
//! writer retries it whole); aggregated output is acked to the aggregator only once every
//! endpoint of its storage policy accepted it, so an endpoint that is down holds the acks and
//! the aggregators redeliver. Samples an endpoint refuses with a 4xx other than 429 are dropped
//! and counted with the endpoint's answer in the log, as Prometheus does.
//!
//! Bodies are encoded and compressed by the caller (see [`encode`]), on the thread that
//! already holds the samples, so a queued sample costs its compressed bytes, not its labels.

pub mod config;
pub mod encode;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use m3_metric::StoragePolicy;

use crate::metrics::{CoordinatorMetrics, EndpointDropLabels, EndpointLabels, OutDropReason};
use config::{Backoff, RemoteOutSettings, ValidEndpoint};
use encode::{Body, OutSample};

/// How a queued batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The endpoint accepted every request of the batch.
    Accepted,
    /// The endpoint refused one or more requests of the batch with a 4xx other than 429 (no
    /// retry would change that); the others were accepted.
    Rejected,
    /// `retry.maxRetries` ran out.
    GaveUp,
    /// The coordinator stopped first.
    Stopped,
}

/// The endpoint's queue has no room for the batch; send it again later.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("remote write endpoint {endpoint:?} has {queued} samples queued (queueSize); retry later")]
pub struct QueueFull {
    /// The endpoint's name.
    pub endpoint: String,
    /// Samples it holds.
    pub queued: usize,
}

/// A batch waiting for its endpoint.
struct Job {
    bodies: Vec<Body>,
    /// The batch's room in the queue, given back when it ends.
    _room: OwnedSemaphorePermit,
    done: Option<oneshot::Sender<Delivery>>,
}

/// One endpoint: its queue and what it receives.
pub struct Endpoint {
    name: String,
    policy: Option<StoragePolicy>,
    jobs: mpsc::UnboundedSender<Job>,
    room: Arc<Semaphore>,
    queue_size: usize,
    max_samples_per_send: usize,
    metrics: CoordinatorMetrics,
    labels: EndpointLabels,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("name", &self.name)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// The endpoint's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `None` for raw samples, else the storage policy of the aggregated output it receives.
    pub fn policy(&self) -> Option<StoragePolicy> {
        self.policy
    }

    /// Encodes `samples` and queues them; the receiver says how the batch ended (drop it to
    /// not wait). See [`send_to_all`].
    ///
    /// # Errors
    /// [`QueueFull`] when the queue has no room for the batch: nothing was queued.
    pub fn try_send<L: m3_storage::AsLabelsView>(
        &self,
        samples: &[OutSample<L>],
        scratch: &mut Vec<u8>,
    ) -> Result<oneshot::Receiver<Delivery>, QueueFull> {
        let mut receivers = send_to_all(&[self], samples, scratch)?;
        receivers.pop().ok_or_else(|| QueueFull {
            endpoint: self.name.clone(),
            queued: 0,
        })
    }

    /// Room for `samples` samples in the queue, or the error saying it is full (counted). A
    /// batch larger than the whole queue is taken only when the queue is empty.
    fn reserve(&self, samples: usize) -> Result<OwnedSemaphorePermit, QueueFull> {
        let wanted = samples.min(self.queue_size);
        u32::try_from(wanted)
            .ok()
            .and_then(|n| Arc::clone(&self.room).try_acquire_many_owned(n).ok())
            .ok_or_else(|| {
                self.metrics
                    .out_samples_refused
                    .get_or_create(&self.labels)
                    .inc_by(samples as u64);
                QueueFull {
                    endpoint: self.name.clone(),
                    queued: self.queue_size - self.room.available_permits(),
                }
            })
    }

    /// Ends `job`: `rejected` samples were refused by the endpoint, `undelivered` more were not
    /// sent because the job ended as `delivery` (out of retries, or stopped).
    fn finish(&self, mut job: Job, delivery: Delivery, rejected: usize, undelivered: usize) {
        let queued: usize = job.bodies.iter().map(|b| b.samples).sum();
        self.metrics
            .out_queued_samples
            .get_or_create(&self.labels)
            .dec_by(queued as i64);
        let end_reason = match delivery {
            Delivery::GaveUp => Some(OutDropReason::retries_exhausted),
            Delivery::Stopped => Some(OutDropReason::shutdown),
            Delivery::Accepted | Delivery::Rejected => None,
        };
        for (reason, n) in [
            (Some(OutDropReason::rejected), rejected),
            (end_reason, undelivered),
        ] {
            if let Some(reason) = reason
                && n > 0
            {
                self.metrics
                    .out_samples_dropped
                    .get_or_create(&EndpointDropLabels {
                        endpoint: self.name.clone(),
                        reason,
                    })
                    .inc_by(n as u64);
            }
        }
        if let Some(done) = job.done.take() {
            let _ = done.send(delivery);
        }
    }
}

/// Queues `samples` on every endpoint of `endpoints`, all or none: room is reserved in every
/// queue first, so a full one refuses the batch before any other has it (a retry then sends
/// it once). The batch is encoded once and shared. One receiver per endpoint, in order, says
/// how its copy ended. Blocking work (encoding, compression): call from a blocking thread or
/// with small batches.
///
/// # Errors
/// [`QueueFull`] naming the first endpoint without room: nothing was queued anywhere.
pub fn send_to_all<L: m3_storage::AsLabelsView>(
    endpoints: &[&Endpoint],
    samples: &[OutSample<L>],
    scratch: &mut Vec<u8>,
) -> Result<Vec<oneshot::Receiver<Delivery>>, QueueFull> {
    let mut rooms = Vec::with_capacity(endpoints.len());
    if !samples.is_empty() {
        for endpoint in endpoints {
            rooms.push(endpoint.reserve(samples.len())?);
        }
    }
    let max_per_send = endpoints.first().map_or(1, |e| e.max_samples_per_send);
    let bodies = if samples.is_empty() {
        Vec::new()
    } else {
        encode::encode_requests(samples, max_per_send, scratch)
    };
    let mut receivers = Vec::with_capacity(endpoints.len());
    let mut rooms = rooms.into_iter();
    for endpoint in endpoints {
        let (done, receiver) = oneshot::channel();
        receivers.push(receiver);
        let Some(room) = rooms.next() else {
            // Nothing to send.
            let _ = done.send(Delivery::Accepted);
            continue;
        };
        endpoint
            .metrics
            .out_queued_samples
            .get_or_create(&endpoint.labels)
            .inc_by(samples.len() as i64);
        let job = Job {
            bodies: bodies.clone(),
            _room: room,
            done: Some(done),
        };
        if let Err(mpsc::error::SendError(job)) = endpoint.jobs.send(job) {
            // The sender has stopped: the batch ends here.
            endpoint.finish(job, Delivery::Stopped, 0, samples.len());
        }
    }
    Ok(receivers)
}

/// Every endpoint and its sender task.
pub struct RemoteOut {
    endpoints: Vec<Arc<Endpoint>>,
    /// Cancelled when the coordinator stops taking writes: senders send what is queued, then
    /// end.
    closing: CancellationToken,
    /// Cancelled when the grace period is over: senders stop retrying.
    stop: CancellationToken,
    tasks: parking_lot::Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for RemoteOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteOut")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

impl RemoteOut {
    /// Starts a sender per endpoint. Call within a Tokio runtime.
    ///
    /// # Errors
    /// The HTTP client cannot be built (no usable TLS or DNS setup on this host).
    pub fn start(
        settings: &RemoteOutSettings,
        metrics: &CoordinatorMetrics,
    ) -> Result<RemoteOut, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .tcp_keepalive(settings.keep_alive)
            .pool_idle_timeout(settings.idle_conn_timeout)
            .pool_max_idle_per_host(settings.max_idle_conns)
            .user_agent(concat!("m3coordinator/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let closing = CancellationToken::new();
        let stop = CancellationToken::new();
        let mut endpoints = Vec::with_capacity(settings.endpoints.len());
        let mut tasks = Vec::with_capacity(settings.endpoints.len());
        for valid in &settings.endpoints {
            let (jobs, queue) = mpsc::unbounded_channel();
            let endpoint = Arc::new(Endpoint {
                name: valid.name.clone(),
                policy: valid.policy,
                jobs,
                room: Arc::new(Semaphore::new(
                    settings.queue_size.min(Semaphore::MAX_PERMITS),
                )),
                queue_size: settings.queue_size,
                max_samples_per_send: settings.max_samples_per_send,
                metrics: metrics.clone(),
                labels: EndpointLabels {
                    endpoint: valid.name.clone(),
                },
            });
            let sender = Sender {
                endpoint: Arc::clone(&endpoint),
                target: valid.clone(),
                client: client.clone(),
                backoff: settings.backoff,
                closing: closing.clone(),
                stop: stop.clone(),
            };
            tasks.push(tokio::spawn(sender.run(queue)));
            endpoints.push(endpoint);
        }
        Ok(RemoteOut {
            endpoints,
            closing,
            stop,
            tasks: parking_lot::Mutex::new(tasks),
        })
    }

    /// The endpoints receiving raw samples.
    pub fn raw_endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints
            .iter()
            .filter(|e| e.policy.is_none())
            .map(Arc::as_ref)
    }

    /// Whether any endpoint receives raw samples.
    pub fn has_raw_endpoints(&self) -> bool {
        self.raw_endpoints().next().is_some()
    }

    /// The endpoints receiving the aggregated output of `policy`.
    pub fn endpoints_for(&self, policy: StoragePolicy) -> impl Iterator<Item = &Endpoint> {
        self.endpoints
            .iter()
            .filter(move |e| e.policy.is_some_and(|p| same_policy(p, policy)))
            .map(Arc::as_ref)
    }

    /// Sends what is queued within `grace`, then stops; what is left is counted as dropped
    /// (`shutdown`).
    pub async fn close(&self, grace: Duration) {
        self.closing.cancel();
        let mut tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *self.tasks.lock());
        let deadline = tokio::time::Instant::now() + grace;
        let mut warned = false;
        for task in &mut tasks {
            if tokio::time::timeout_at(deadline, &mut *task).await.is_ok() {
                continue;
            }
            if !warned {
                tracing::warn!(
                    ?grace,
                    "Remote write endpoints still had samples queued at shutdown; dropping them."
                );
                warned = true;
            }
            self.stop.cancel();
            // Stopped, a sender ends at once (its request in flight is abandoned).
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
    }
}

impl Drop for RemoteOut {
    /// Without [`RemoteOut::close`] (a coordinator that failed to start), the senders stop.
    fn drop(&mut self) {
        self.closing.cancel();
        self.stop.cancel();
    }
}

/// An answer's `Retry-After` in seconds (the HTTP-date form is not used by remote-write
/// receivers and is ignored).
fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get(reqwest::header::RETRY_AFTER)?;
    let seconds: u64 = value.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds))
}

/// The first 512 bytes of an answer's body, as text (for the log).
async fn answer_prefix(mut response: reqwest::Response) -> String {
    const LIMIT: usize = 512;
    let mut bytes = Vec::new();
    while bytes.len() < LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                bytes.extend_from_slice(&chunk[..chunk.len().min(LIMIT - bytes.len())])
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Whether two storage policies name the same resolution and retention (the precision of the
/// resolution does not matter for routing, as for namespaces).
fn same_policy(a: StoragePolicy, b: StoragePolicy) -> bool {
    a.resolution.window == b.resolution.window && a.retention == b.retention
}

/// The task sending one endpoint's queue.
struct Sender {
    endpoint: Arc<Endpoint>,
    target: ValidEndpoint,
    client: reqwest::Client,
    backoff: Backoff,
    closing: CancellationToken,
    stop: CancellationToken,
}

/// How one request ended.
enum Sent {
    Accepted,
    Rejected,
    GaveUp,
    Stopped,
}

impl Sender {
    async fn run(self, mut queue: mpsc::UnboundedReceiver<Job>) {
        loop {
            let job = tokio::select! {
                biased;
                job = queue.recv() => job,
                () = self.closing.cancelled() => queue.try_recv().ok(),
            };
            let Some(job) = job else { break };
            self.deliver(job).await;
        }
        // Closed with batches still queued (they arrived after the last look): they end here.
        queue.close();
        while let Ok(job) = queue.try_recv() {
            let samples = job.bodies.iter().map(|b| b.samples).sum();
            self.endpoint.finish(job, Delivery::Stopped, 0, samples);
        }
    }

    /// Sends every request of `job` in order. A request the endpoint refuses for good is
    /// dropped and the next ones are still sent; one out of retries or stopped ends the job.
    async fn deliver(&self, job: Job) {
        let mut rejected = 0;
        let mut undelivered = 0;
        let mut ended = None;
        for body in &job.bodies {
            if ended.is_some() {
                undelivered += body.samples;
                continue;
            }
            match self.send(body).await {
                Sent::Accepted => {
                    self.endpoint
                        .metrics
                        .out_samples_sent
                        .get_or_create(&self.endpoint.labels)
                        .inc_by(body.samples as u64);
                }
                Sent::Rejected => rejected += body.samples,
                Sent::GaveUp => {
                    ended = Some(Delivery::GaveUp);
                    undelivered += body.samples;
                }
                Sent::Stopped => {
                    ended = Some(Delivery::Stopped);
                    undelivered += body.samples;
                }
            }
        }
        let delivery = ended.unwrap_or(if rejected > 0 {
            Delivery::Rejected
        } else {
            Delivery::Accepted
        });
        self.endpoint.finish(job, delivery, rejected, undelivered);
    }

    /// Posts one body until it is accepted, refused for good, out of retries or stopped.
    async fn send(&self, body: &Body) -> Sent {
        let mut retry = 0u32;
        loop {
            let request = self
                .client
                .post(self.target.url.clone())
                .headers(self.target.headers.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
                .header(reqwest::header::CONTENT_ENCODING, "snappy")
                .header("X-Prometheus-Remote-Write-Version", "0.1.0")
                .body(body.bytes.clone())
                .send();
            // What failed, and how long the endpoint asked us to wait (`Retry-After`).
            let (failure, asked_wait) = tokio::select! {
                () = self.stop.cancelled() => return Sent::Stopped,
                answer = request => match answer {
                    Ok(response) if response.status().is_success() => return Sent::Accepted,
                    Ok(response) => {
                        let status = response.status();
                        let asked_wait = retry_after(&response);
                        let text = answer_prefix(response).await;
                        if status.as_u16() == 429 || status.is_server_error() {
                            (format!("{status}: {}", text.trim()), asked_wait)
                        } else {
                            tracing::warn!(
                                endpoint = %self.endpoint.name,
                                %status,
                                answer = %text.trim(),
                                samples = body.samples,
                                "Remote write endpoint refused a request; dropping it (not retried)."
                            );
                            return Sent::Rejected;
                        }
                    }
                    Err(e) => (e.to_string(), None),
                },
            };
            if self.backoff.max_retries.is_some_and(|max| retry >= max) {
                tracing::warn!(
                    endpoint = %self.endpoint.name,
                    error = %failure,
                    retries = retry,
                    "Remote write endpoint still failing after retry.maxRetries; giving up on the request."
                );
                return Sent::GaveUp;
            }
            self.endpoint
                .metrics
                .out_send_retries
                .get_or_create(&self.endpoint.labels)
                .inc();
            // The endpoint's own `Retry-After`, within the configured largest wait.
            let delay =
                asked_wait.map_or_else(|| self.backoff.delay(retry), |d| d.min(self.backoff.max));
            if retry == 0 || retry.is_power_of_two() {
                tracing::warn!(
                    endpoint = %self.endpoint.name,
                    error = %failure,
                    retry,
                    ?delay,
                    "Remote write send failed; retrying."
                );
            }
            retry = retry.saturating_add(1);
            tokio::select! {
                () = self.stop.cancelled() => return Sent::Stopped,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }
}

/// A scripted endpoint and remote write out towards it, for the tests of this crate.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::remote_out::config::PrometheusRemoteBackendConfig;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A remote-write endpoint answering the statuses of `script` in turn (then 200), counting
    /// the requests it got.
    pub(crate) async fn endpoint(script: Vec<u16>) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&requests);
        let script = Arc::new(script);
        let app = axum::Router::new().route(
            "/api/v1/write",
            axum::routing::post(move || {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let status = script.get(n).copied().unwrap_or(200);
                async move { axum::http::StatusCode::from_u16(status).unwrap() }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{address}/api/v1/write"), requests)
    }

    /// Remote write out to `url` as endpoint `e`, with `rest` of the block (fast retries unless
    /// it says otherwise).
    pub(crate) fn start(url: &str, rest: &str) -> (RemoteOut, CoordinatorMetrics) {
        let text = format!("endpoints:\n  - name: e\n    address: {url}\n{rest}");
        let config: PrometheusRemoteBackendConfig = serde_saphyr::from_str(&text).unwrap();
        let mut problems = m3_config::Problems::new(std::path::Path::new("t.yml"));
        let settings = config.validate("p", &mut problems);
        let settings = problems.finish(settings).unwrap();
        let metrics = CoordinatorMetrics::default();
        (RemoteOut::start(&settings, &metrics).unwrap(), metrics)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{endpoint, start};
    use super::*;
    use crate::remote_out::config::PrometheusRemoteBackendConfig;
    use axum::response::IntoResponse;
    use m3_storage::Labels;
    use std::sync::atomic::Ordering;

    const FAST_RETRIES: &str = "retry:\n  initialBackoff: 10ms\n  maxBackoff: 20ms\n";

    fn labels() -> Labels {
        Labels::new([("__name__".to_string(), "x".to_string())]).unwrap()
    }

    fn e() -> EndpointLabels {
        EndpointLabels {
            endpoint: "e".to_string(),
        }
    }

    fn dropped(metrics: &CoordinatorMetrics, reason: OutDropReason) -> u64 {
        metrics
            .out_samples_dropped
            .get_or_create(&EndpointDropLabels {
                endpoint: "e".into(),
                reason,
            })
            .get()
    }

    #[tokio::test]
    async fn server_errors_and_429_are_retried_until_accepted() {
        let (url, requests) = endpoint(vec![503, 429, 500]).await;
        let (out, metrics) = start(&url, FAST_RETRIES);
        let x = labels();
        let endpoint = out.raw_endpoints().next().unwrap();
        let delivery = endpoint
            .try_send(&[(&x, 1, 1.0), (&x, 2, 2.0)], &mut Vec::new())
            .unwrap();
        assert_eq!(delivery.await.unwrap(), Delivery::Accepted);
        assert_eq!(requests.load(Ordering::SeqCst), 4);
        assert_eq!(metrics.out_send_retries.get_or_create(&e()).get(), 3);
        assert_eq!(metrics.out_samples_sent.get_or_create(&e()).get(), 2);
        assert_eq!(metrics.out_queued_samples.get_or_create(&e()).get(), 0);
    }

    #[tokio::test]
    async fn other_4xx_are_dropped_at_once_and_counted_and_the_rest_still_sent() {
        let (url, requests) = endpoint(vec![400]).await;
        let (out, metrics) = start(&url, &format!("{FAST_RETRIES}maxSamplesPerSend: 1\n"));
        let x = labels();
        let endpoint = out.raw_endpoints().next().unwrap();
        // Two requests: the first is refused for good, the second still goes.
        let delivery = endpoint
            .try_send(&[(&x, 1, 1.0), (&x, 2, 2.0)], &mut Vec::new())
            .unwrap();
        assert_eq!(delivery.await.unwrap(), Delivery::Rejected);
        assert_eq!(requests.load(Ordering::SeqCst), 2);
        assert_eq!(dropped(&metrics, OutDropReason::rejected), 1);
        assert_eq!(metrics.out_samples_sent.get_or_create(&e()).get(), 1);
        assert_eq!(metrics.out_send_retries.get_or_create(&e()).get(), 0);
    }

    /// Two endpoints, one full: neither gets the batch, so the writer's retry sends it once.
    #[tokio::test]
    async fn a_batch_goes_to_every_endpoint_or_to_none() {
        let (url, _) = endpoint(Vec::new()).await;
        let text = format!(
            "endpoints:\n  - name: up\n    address: {url}\n  - name: down\n    address: http://127.0.0.1:1/api/v1/write\nqueueSize: 2\n{FAST_RETRIES}"
        );
        let config: PrometheusRemoteBackendConfig = serde_saphyr::from_str(&text).unwrap();
        let settings = config.validate("p", &mut m3_config::Problems::new("t.yml".as_ref()));
        let metrics = CoordinatorMetrics::default();
        let out = RemoteOut::start(&settings, &metrics).unwrap();
        let x = labels();
        let endpoints: Vec<&Endpoint> = out.raw_endpoints().collect();
        // Fills "down" (nothing listens there, so its copy stays queued).
        let first =
            send_to_all(&endpoints, &[(&x, 1, 1.0), (&x, 2, 2.0)], &mut Vec::new()).unwrap();
        assert_eq!(first.len(), 2);
        let up = EndpointLabels {
            endpoint: "up".into(),
        };
        for _ in 0..200 {
            if metrics.out_samples_sent.get_or_create(&up).get() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(metrics.out_samples_sent.get_or_create(&up).get(), 2);
        let full = send_to_all(&endpoints, &[(&x, 3, 3.0)], &mut Vec::new()).unwrap_err();
        assert_eq!(full.endpoint, "down");
        assert_eq!(
            metrics.out_queued_samples.get_or_create(&up).get(),
            0,
            "\"up\" got nothing of the refused batch"
        );
        out.close(Duration::from_millis(100)).await;
    }

    /// A 429 with `Retry-After: 1` is retried after that second, not after the configured
    /// 10ms (a lower bound only: load makes it longer, never shorter).
    #[tokio::test]
    async fn retry_after_is_honoured() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let app = axum::Router::new().route(
            "/api/v1/write",
            axum::routing::post(move || {
                let first = counter.fetch_add(1, Ordering::SeqCst) == 0;
                async move {
                    if first {
                        (
                            axum::http::StatusCode::TOO_MANY_REQUESTS,
                            [(axum::http::header::RETRY_AFTER, "1")],
                        )
                            .into_response()
                    } else {
                        axum::http::StatusCode::OK.into_response()
                    }
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        let (out, _) = start(
            &format!("http://{address}/api/v1/write"),
            "retry:\n  initialBackoff: 10ms\n  maxBackoff: 5s\n",
        );
        let x = labels();
        let started = std::time::Instant::now();
        let delivery = out
            .raw_endpoints()
            .next()
            .unwrap()
            .try_send(&[(&x, 1, 1.0)], &mut Vec::new())
            .unwrap();
        assert_eq!(delivery.await.unwrap(), Delivery::Accepted);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(
            started.elapsed() >= Duration::from_millis(950),
            "retried after {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn out_of_retries_gives_up_and_counts() {
        let (url, requests) = endpoint(vec![503; 10]).await;
        let (out, metrics) = start(&url, "retry:\n  initialBackoff: 10ms\n  maxRetries: 2\n");
        let x = labels();
        let endpoint = out.raw_endpoints().next().unwrap();
        let delivery = endpoint.try_send(&[(&x, 1, 1.0)], &mut Vec::new()).unwrap();
        assert_eq!(delivery.await.unwrap(), Delivery::GaveUp);
        assert_eq!(requests.load(Ordering::SeqCst), 3);
        assert_eq!(dropped(&metrics, OutDropReason::retries_exhausted), 1);
    }

    #[tokio::test]
    async fn a_full_queue_refuses_and_a_closed_endpoint_drops_what_it_holds() {
        // Nothing listens: every send fails and is retried until the coordinator stops.
        let (out, metrics) = start(
            "http://127.0.0.1:1/api/v1/write",
            &format!("{FAST_RETRIES}queueSize: 3\n"),
        );
        // (Dropping `out` without closing would stop its senders too.)
        let x = labels();
        let endpoint = out.raw_endpoints().next().unwrap();
        let first = endpoint
            .try_send(&[(&x, 1, 1.0), (&x, 2, 2.0)], &mut Vec::new())
            .unwrap();
        let full = endpoint
            .try_send(&[(&x, 3, 3.0), (&x, 4, 4.0)], &mut Vec::new())
            .unwrap_err();
        assert_eq!(full.queued, 2);
        assert!(full.to_string().contains("retry later"), "{full}");
        assert_eq!(metrics.out_samples_refused.get_or_create(&e()).get(), 2);
        out.close(Duration::from_millis(200)).await;
        assert_eq!(first.await.unwrap(), Delivery::Stopped);
        assert_eq!(dropped(&metrics, OutDropReason::shutdown), 2);
        assert!(metrics.out_send_retries.get_or_create(&e()).get() > 0);
    }

    #[test]
    fn endpoints_are_found_by_policy() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let text = "endpoints:\n  - name: raw\n    address: http://a/w\n  - name: agg\n    address: http://b/w\n    storagePolicy: {resolution: 10s, retention: 2d}\n";
            let config: PrometheusRemoteBackendConfig = serde_saphyr::from_str(text).unwrap();
            let settings = config.validate("p", &mut m3_config::Problems::new("t.yml".as_ref()));
            let out = RemoteOut::start(&settings, &CoordinatorMetrics::default()).unwrap();
            let names = |policy: &str| -> Vec<String> {
                out.endpoints_for(policy.parse().unwrap())
                    .map(|e| e.name().to_string())
                    .collect()
            };
            assert_eq!(names("10s:2d"), vec!["agg".to_string()]);
            assert!(names("1m:40d").is_empty());
            assert!(out.has_raw_endpoints());
            assert_eq!(out.raw_endpoints().next().unwrap().name(), "raw");
        });
    }
}
