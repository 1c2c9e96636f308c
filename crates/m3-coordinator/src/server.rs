//! Assembles a running coordinator from its config: the store, the write path, the aggregator
//! client, the m3msg ingest server and the HTTP API, with one shutdown.
//!
//! `m3coordinator` and `m3 local` both start a coordinator through [`Coordinator::start`], so
//! the all-in-one mode runs exactly the code a deployment runs.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use m3_cluster::KvStore;
use m3_cluster::keys::{DEFAULT_ENVIRONMENT, ServiceId, placement_key_in};
use m3_cluster::placement::{PlacementFormat, PlacementStore};
use m3_storage::{NamespaceConfig, Store};
use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Backend, ValidConfig, ValidNamespace};
use crate::downsample::Downsampler;
use crate::ingest::IngestHandler;
use crate::limits::RemoteWriteLimits;
use crate::metrics::{CoordinatorMetrics, RefusedReason};
use crate::remote_out::RemoteOut;
use crate::remote_write::DecodeLimits;
use crate::write::{WriteError, WriteMode, WritePath};
use m3_aggregator::client::AggregatorClient;

/// Where a started coordinator listens.
#[derive(Debug, Clone)]
pub struct CoordinatorAddrs {
    /// The HTTP API.
    pub http: SocketAddr,
    /// The m3msg ingest server, if configured.
    pub ingest: Option<SocketAddr>,
}

/// A running coordinator.
pub struct Coordinator {
    addrs: CoordinatorAddrs,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    client: Option<Arc<AggregatorClient>>,
    remote_out: Option<Arc<RemoteOut>>,
    /// The embedded store; `None` under `backend: prom-remote`.
    store: Option<Store>,
    /// What stores the aggregators' output, when an `ingest` section is configured.
    ingest_handler: Option<IngestHandler>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

/// Shared state of the HTTP handlers.
#[derive(Clone)]
struct HttpState {
    write: Arc<WritePath>,
    registry: Arc<Mutex<Registry>>,
    /// Bounds the remote-write requests being read, decoded and stored at once; beyond it
    /// the coordinator answers 429, before reading the body, so senders back off instead of
    /// queueing without bound.
    writes_in_flight: Arc<tokio::sync::Semaphore>,
    write_limits: RemoteWriteLimits,
    metrics: CoordinatorMetrics,
    store: Option<Store>,
    namespaces: Arc<Vec<ValidNamespace>>,
    /// Storage policies that only remote-write endpoints have (aggregated writes may name
    /// them).
    endpoint_policies: Arc<Vec<m3_metric::StoragePolicy>>,
}

impl Coordinator {
    /// Starts a coordinator with a validated config; `kv` holds the placements and topics; `http_listener` and `ingest_listener` override the configured
    /// addresses (tests and `m3 local` pass pre-bound listeners).
    ///
    /// # Errors
    /// A store that does not open, addresses that do not bind, a KV that cannot be watched.
    pub async fn start(
        config: &ValidConfig,
        kv: Arc<dyn KvStore>,
        http_listener: Option<TcpListener>,
        ingest_listener: Option<TcpListener>,
    ) -> anyhow::Result<Coordinator> {
        let namespaces = config.namespaces.clone();
        let store = match config.backend {
            Backend::Embedded => Some(open_store(Path::new(&config.data_dir), &namespaces)?),
            Backend::PromRemote => None,
        };
        let metrics = CoordinatorMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        if let Some(store) = &store {
            store.metrics().register(&mut registry);
        }
        let cancel = CancellationToken::new();
        let mut tasks = Vec::new();

        let remote_out = match &config.remote_out {
            Some(settings) => Some(Arc::new(
                RemoteOut::start(settings, &metrics)
                    .context("starting the prometheusRemoteBackend client")?,
            )),
            None => None,
        };
        let downsampler = Downsampler::new(
            &config.aggregation_targets,
            config.rules.clone(),
            config.matcher_cache_capacity,
        );
        let client = match &config.remote_aggregator {
            Some((remote, options)) if downsampler.is_enabled() => {
                let client = AggregatorClient::new(options.clone(), Arc::new(metrics.clone()));
                let environment = remote
                    .placement_kv
                    .environment
                    .clone()
                    .unwrap_or_else(|| DEFAULT_ENVIRONMENT.to_string());
                if client.uses_m3msg() {
                    let producer_metrics = m3_msg::ProducerMetrics::default();
                    producer_metrics
                        .register(&mut registry, "m3coordinator_aggregator_m3msg_producer");
                    if let Some(task) = client
                        .start_m3msg(&kv, &environment, producer_metrics, &cancel)
                        .await
                        .context("watching the aggregator ingest topic")?
                    {
                        tasks.push(task);
                    }
                } else {
                    let service = ServiceId::new(
                        remote.placement_watcher.key.clone(),
                        environment,
                        remote.placement_kv.zone.clone().unwrap_or_default(),
                    );
                    let key = placement_key_in(&remote.placement_kv.namespace, &service);
                    // M3's aggregator client reads the aggregator's format whatever the key.
                    let watch =
                        PlacementStore::new(Arc::clone(&kv), key, PlacementFormat::Snapshots)
                            .watch()
                            .await
                            .context("watching the m3aggregator placement")?;
                    tasks.push(client.follow(watch, cancel.clone()));
                }
                Some(client)
            }
            _ => None,
        };

        let raw_namespace = namespaces
            .iter()
            .find(|n| n.policy.is_none() && !n.read_only)
            .map(|n| n.name.clone());
        let write_limits = config.limits.remote_write.clone();
        let write_path = WritePath::new(
            store.clone(),
            raw_namespace,
            downsampler,
            client.clone(),
            config.write_buffers.clone(),
            metrics.clone(),
        )
        .with_decode_limits(DecodeLimits {
            max_decompressed_size: write_limits.max_decompressed_bytes,
            max_samples: write_limits.max_samples_per_request,
            max_series: write_limits.max_series_per_request,
            max_labels: write_limits.max_labels_per_request,
            label_limit: write_limits.label_limit,
            label_name_length_limit: write_limits.label_name_length_limit,
            label_value_length_limit: write_limits.label_value_length_limit,
        })
        .with_series_cache(
            write_limits.series_cache_bytes,
            write_limits.series_cache_ids,
        );
        let write = Arc::new(match &remote_out {
            Some(remote_out) => write_path.with_remote_out(Arc::clone(remote_out)),
            None => write_path,
        });

        let ingest_handler = config.ingest.as_ref().map(|_| {
            IngestHandler::new(store.clone(), metrics.clone()).with_remote_out(remote_out.clone())
        });
        let ingest = match (&config.ingest, &ingest_handler) {
            (Some(ingest), Some(handler)) => {
                let listener = match ingest_listener {
                    Some(l) => l,
                    None => TcpListener::bind(&ingest.m3msg.server.listen_address)
                        .await
                        .with_context(|| {
                            format!(
                                "binding ingest.m3msg.server.listenAddress {}",
                                ingest.m3msg.server.listen_address
                            )
                        })?,
                };
                let addr = listener.local_addr()?;
                let consumer = ingest.m3msg.consumer_config();
                let handler = handler.clone().into_message_handler(
                    ingest.ingester.worker_pool_size.unwrap_or(4).clamp(1, 16),
                );
                let consumer_metrics = m3_msg::ConsumerMetrics::default();
                consumer_metrics.register(&mut registry, "m3coordinator_ingest");
                let server =
                    m3_msg::ConsumerServer::new(consumer, handler).with_metrics(consumer_metrics);
                let shutdown = cancel.clone();
                tasks.push(tokio::spawn(async move {
                    server.serve(listener, shutdown).await
                }));
                Some(addr)
            }
            _ => None,
        };

        let max_window = config
            .aggregation_targets
            .iter()
            .filter_map(|n| n.policy.map(|p| p.resolution.window))
            .max()
            .unwrap_or(Duration::from_secs(60));
        let state = HttpState {
            write,
            registry: Arc::new(Mutex::new(registry)),
            writes_in_flight: Arc::new(tokio::sync::Semaphore::new(
                // Above tokio's limit the bound is no bound anyway.
                write_limits
                    .max_concurrent_requests
                    .clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
            )),
            write_limits,
            metrics: metrics.clone(),
            store: store.clone(),
            namespaces: Arc::new(namespaces.clone()),
            endpoint_policies: Arc::new(
                config
                    .remote_out
                    .iter()
                    .flat_map(|r| r.endpoints.iter().filter_map(|e| e.policy))
                    .collect(),
            ),
        };
        let app = Router::new()
            .route("/health", get(health))
            .route("/ready", get(health))
            .route("/metrics", get(serve_metrics))
            .route("/api/v1/prom/remote/write", post(remote_write))
            .with_state(state)
            .merge(crate::admin::router(crate::admin::AdminState {
                kv: Arc::clone(&kv),
                max_aggregation_window: max_window,
                limits: config.limits.placement.clone(),
            }))
            .merge(match &store {
                Some(store) => crate::query_api::router(crate::query_api::QueryState::new(
                    store.clone(),
                    namespaces.clone(),
                    config.limits.query.clone(),
                )),
                None => crate::query_api::without_store_router(),
            })
            // Admin JSON and query forms; remote write reads its body itself, within its limit.
            .layer(axum::extract::DefaultBodyLimit::max(ADMIN_BODY_LIMIT));
        let listener = match http_listener {
            Some(l) => l,
            None => {
                let address = &config.listen_address;
                TcpListener::bind(address)
                    .await
                    .with_context(|| format!("binding listenAddress {address}"))?
            }
        };
        let http = listener.local_addr()?;
        let shutdown = cancel.clone();
        let http_limits = config.limits.http.to_http_limits();
        let refused = metrics.http_connections_refused.clone();
        tasks.push(tokio::spawn(m3_server::http::serve(
            listener,
            app,
            http_limits,
            shutdown,
            move || {
                refused.inc();
            },
        )));
        if let Some(store) = &store {
            let retention_store = store.clone();
            let retention_cancel = cancel.clone();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(60));
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        () = retention_cancel.cancelled() => break,
                    }
                    let store = retention_store.clone();
                    let report = tokio::task::spawn_blocking(move || {
                        if let Err(e) = store.compact(m3_storage::retention::unix_ms(SystemTime::now())) {
                            tracing::error!(error = %e, "Compacting the store's heads into blocks failed.");
                        }
                        store.enforce_retention_at(SystemTime::now())
                    })
                    .await;
                    if let Ok(Err(e)) = report {
                        tracing::error!(error = %e, "Retention pass failed.");
                    }
                }
            }));
            tasks.push(tokio::spawn(recover_store(store.clone(), cancel.clone())));
        }
        tracing::info!(%http, ingest = ?ingest, "Coordinator started.");
        Ok(Coordinator {
            addrs: CoordinatorAddrs { http, ingest },
            cancel,
            tasks,
            client,
            remote_out,
            store,
            ingest_handler,
        })
    }

    /// What stores the aggregators' output, as the consumer of aggregators running in this
    /// process (`m3 local`): their outputs are stored as the m3msg ingest stores messages,
    /// without being encoded. `None` without an `ingest` section.
    pub fn aggregated_output_sink(&self) -> Option<Arc<dyn m3_aggregator::output::OutputSink>> {
        self.ingest_handler
            .clone()
            .map(|handler| Arc::new(handler) as Arc<dyn m3_aggregator::output::OutputSink>)
    }

    /// Where it listens.
    pub fn addrs(&self) -> &CoordinatorAddrs {
        &self.addrs
    }

    /// Waits (bounded) until the queues towards the aggregators are written out.
    pub async fn drain_aggregator_client(&self, timeout: Duration) {
        if let Some(client) = &self.client {
            client.close(timeout).await;
        }
    }

    /// Stops accepting writes, drains the aggregator queues (bounded), stops the servers, sends
    /// what the remote-write endpoints have queued (bounded) and flushes the store.
    pub async fn shutdown(self) {
        if let Some(client) = &self.client {
            client.close(Duration::from_secs(5)).await;
        }
        self.cancel.cancel();
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        if let Some(remote_out) = &self.remote_out {
            remote_out.close(Duration::from_secs(10)).await;
        }
        if let Some(store) = self.store {
            let _ = tokio::task::spawn_blocking(move || store.flush()).await;
        }
    }
}

/// While the store cannot write (see `Store::write_failure`), tries every few seconds to make
/// it write again, so writes resume by themselves once space is freed.
async fn recover_store(store: Store, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = cancel.cancelled() => return,
        }
        if store.write_failure().is_none() {
            continue;
        }
        let recovering = store.clone();
        match tokio::task::spawn_blocking(move || recovering.try_recover()).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => tracing::debug!("Store still busy; recovery retried later."),
            Ok(Err(e)) => tracing::warn!(error = %e, "The store cannot write yet."),
            Err(e) => tracing::error!(error = %e, "Store recovery task failed."),
        }
    }
}

/// Largest body of the admin and query endpoints.
const ADMIN_BODY_LIMIT: usize = 4 * 1024 * 1024;

/// Opens the store with the namespaces of the config.
fn open_store(dir: &Path, namespaces: &[ValidNamespace]) -> anyhow::Result<Store> {
    if dir.exists() && !dir.is_dir() {
        anyhow::bail!(
            "storage.dataDir {} exists and is not a directory",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating data directory {}", dir.display()))?;
    let configs = namespaces
        .iter()
        .map(|n| {
            let config = match n.policy {
                Some(p) => {
                    NamespaceConfig::aggregated(n.name.clone(), p.resolution.window, n.retention)
                }
                None => NamespaceConfig::unaggregated(n.name.clone(), n.retention),
            };
            let config = match n.buffer_past {
                Some(buffer_past) => config.with_buffer_past(buffer_past),
                None => config,
            };
            match n.buffer_future {
                Some(buffer_future) => config.with_buffer_future(buffer_future),
                None => config,
            }
        })
        .collect();
    Store::open(dir, configs).with_context(|| format!("opening the store in {}", dir.display()))
}

/// `/health` and `/ready`: 200 `{"ok": true}` while the coordinator can store what it is
/// sent, 503 with the reason while the store cannot write (a full disk), so a load balancer or
/// Kubernetes stops sending it writes until it recovers.
async fn health(State(state): State<HttpState>) -> Response {
    match state.store.as_ref().and_then(Store::write_failure) {
        None => axum::Json(serde_json::json!({"ok": true})).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({
                "ok": false,
                "store": format!("cannot write: {reason}"),
            })),
        )
            .into_response(),
    }
}

async fn serve_metrics(State(state): State<HttpState>) -> Response {
    m3_server::http::metrics_response(&state.registry)
}

/// The media type of remote write 2.0, which this receiver does not speak yet.
const REMOTE_WRITE_V2_PROTO: &str = "io.prometheus.write.v2.request";

/// Every answer remote write gives. [`WriteAnswer::into_response`] is the one place that maps
/// each to its HTTP status, following the remote-write spec: 2xx stored, 4xx never retried by
/// the sender (the request is wrong: retrying cannot help), 429 and 5xx retried (later it may
/// work), with `Retry-After` where the wait is known.
#[derive(Debug)]
enum WriteAnswer {
    /// Everything was stored or queued (200).
    Stored,
    /// M3's write headers do not make sense (400).
    BadHeaders(String),
    /// A `Content-Type` or encoding this receiver does not speak, e.g. remote write 2.0 (415).
    UnsupportedMedia(String),
    /// Too many requests in flight (429, `Retry-After: 1`).
    Throttled,
    /// A body (or its decompressed form, or its counts) over a limit (413).
    TooLarge(String),
    /// The body did not arrive within `bodyTimeout` (408).
    BodyTimeout(Duration),
    /// Some series or samples were refused, the rest stored (400 with the reasons).
    PartlyRejected(String),
    /// The body does not decode (400).
    Undecodable(String),
    /// The aggregation tier is not ready or its queues are full (503, `Retry-After: 1`).
    Overloaded(String),
    /// The store failed (503).
    StoreFailed(String),
    /// The write task itself failed (500).
    Internal,
}

impl IntoResponse for WriteAnswer {
    fn into_response(self) -> Response {
        let retry_after = [(header::RETRY_AFTER, "1")];
        match self {
            WriteAnswer::Stored => StatusCode::OK.into_response(),
            WriteAnswer::BadHeaders(reason)
            | WriteAnswer::PartlyRejected(reason)
            | WriteAnswer::Undecodable(reason) => (StatusCode::BAD_REQUEST, reason).into_response(),
            WriteAnswer::UnsupportedMedia(reason) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, reason).into_response()
            }
            WriteAnswer::Throttled => (
                StatusCode::TOO_MANY_REQUESTS,
                retry_after,
                "too many remote-write requests in flight; retry later",
            )
                .into_response(),
            WriteAnswer::TooLarge(reason) => {
                (StatusCode::PAYLOAD_TOO_LARGE, reason).into_response()
            }
            WriteAnswer::BodyTimeout(limit) => (
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "request body not received within {limit:?} (limits.remoteWrite.bodyTimeout)"
                ),
            )
                .into_response(),
            WriteAnswer::Overloaded(reason) => {
                (StatusCode::SERVICE_UNAVAILABLE, retry_after, reason).into_response()
            }
            WriteAnswer::StoreFailed(reason) => {
                (StatusCode::SERVICE_UNAVAILABLE, reason).into_response()
            }
            WriteAnswer::Internal => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
            }
        }
    }
}

/// The 413 reason for a body over `limits.remoteWrite.maxBodyBytes`.
fn body_too_large(limit: usize) -> WriteAnswer {
    WriteAnswer::TooLarge(format!(
        "request body larger than {limit} bytes (limits.remoteWrite.maxBodyBytes)"
    ))
}

/// One of the `maxConcurrentRequests` slots, shown in `write_requests_in_flight` while held.
struct WriteSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    in_flight: prometheus_client::metrics::gauge::Gauge,
}

impl WriteSlot {
    fn hold(
        permit: tokio::sync::OwnedSemaphorePermit,
        in_flight: &prometheus_client::metrics::gauge::Gauge,
    ) -> WriteSlot {
        in_flight.inc();
        WriteSlot {
            _permit: permit,
            in_flight: in_flight.clone(),
        }
    }
}

impl Drop for WriteSlot {
    fn drop(&mut self) {
        self.in_flight.dec();
    }
}

/// Remote write: refused whole before anything is read when unsupported (415) or when too many
/// requests are in flight (429); the body is read within its size limit (413) and time limit
/// (408), then decoded and written (see [`WriteAnswer`] for every answer).
async fn remote_write(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: Body,
) -> WriteAnswer {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let mode = match write_mode(&headers, &state.namespaces, &state.endpoint_policies) {
        Ok(mode) => mode,
        Err(reason) => return WriteAnswer::BadHeaders(reason),
    };
    if let Some(reason) = unsupported_content(&headers) {
        state
            .metrics
            .refuse_request(RefusedReason::unsupported_media_type);
        return WriteAnswer::UnsupportedMedia(reason);
    }
    let Ok(permit) = Arc::clone(&state.writes_in_flight).try_acquire_owned() else {
        state.metrics.write_requests_throttled.inc();
        return WriteAnswer::Throttled;
    };
    let permit = WriteSlot::hold(permit, &state.metrics.write_requests_in_flight);
    let limit = state.write_limits.max_body_bytes;
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        state.metrics.refuse_request(RefusedReason::too_large);
        return body_too_large(limit);
    }
    let read = tokio::time::timeout(
        state.write_limits.body_timeout,
        axum::body::to_bytes(body, limit),
    )
    .await;
    let body = match read {
        Ok(Ok(body)) => body,
        Ok(Err(_)) => {
            // Over the limit, or the client went away mid-body.
            state.metrics.refuse_request(RefusedReason::too_large);
            return body_too_large(limit);
        }
        Err(_) => {
            state.metrics.refuse_request(RefusedReason::body_timeout);
            return WriteAnswer::BodyTimeout(state.write_limits.body_timeout);
        }
    };
    let write = Arc::clone(&state.write);
    let result = tokio::task::spawn_blocking(move || {
        let result = write.write_as(&body, now, &mode);
        drop(permit);
        result
    })
    .await;
    match result {
        Ok(Ok(outcome)) => match (outcome.overload(), outcome.rejection()) {
            (Some(reason), _) => WriteAnswer::Overloaded(reason),
            (None, Some(reason)) => WriteAnswer::PartlyRejected(reason),
            (None, None) => WriteAnswer::Stored,
        },
        Ok(Err(WriteError::Decode(e))) if e.is_too_large() => WriteAnswer::TooLarge(e.to_string()),
        Ok(Err(WriteError::Decode(e))) => WriteAnswer::Undecodable(e.to_string()),
        Ok(Err(e @ (WriteError::RemoteOutFull(_) | WriteError::AggregatorBehind))) => {
            WriteAnswer::Overloaded(e.to_string())
        }
        Ok(Err(e @ WriteError::Storage(_))) => {
            tracing::error!(error = %e, "Remote write failed.");
            WriteAnswer::StoreFailed(e.to_string())
        }
        Err(e) => {
            tracing::error!(error = %e, "Remote write task failed.");
            WriteAnswer::Internal
        }
    }
}

/// Where the samples of a request go, from M3's headers: `M3-Metrics-Type: unaggregated` (raw
/// only), `M3-Metrics-Type: aggregated` with `M3-Storage-Policy: <resolution>:<retention>`
/// (stored as given in that aggregated namespace), `M3-Write-Type: aggregate` (to the
/// aggregators only) or `default`.
fn write_mode(
    headers: &HeaderMap,
    namespaces: &[ValidNamespace],
    endpoint_policies: &[m3_metric::StoragePolicy],
) -> Result<WriteMode, String> {
    let text = |name: &str| -> Result<Option<String>, String> {
        headers
            .get(name)
            .map(|v| {
                v.to_str()
                    .map(|s| s.trim().to_string())
                    .map_err(|_| format!("header {name} is not visible ASCII"))
            })
            .transpose()
    };
    let metrics_type = text("M3-Metrics-Type")?;
    let write_type = text("M3-Write-Type")?;
    match metrics_type
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None => {}
        Some("unaggregated") => return Ok(WriteMode::RawOnly),
        Some("aggregated") => {
            let Some(policy) = text("M3-Storage-Policy")? else {
                return Err(
                    "M3-Metrics-Type: aggregated needs M3-Storage-Policy (e.g. 1m:40d)".into(),
                );
            };
            let parsed: m3_metric::StoragePolicy = policy
                .parse()
                .map_err(|e| format!("M3-Storage-Policy {policy:?}: {e}"))?;
            let same = |p: &m3_metric::StoragePolicy| {
                p.resolution.window == parsed.resolution.window && p.retention == parsed.retention
            };
            let namespace = namespaces
                .iter()
                .find(|n| !n.read_only && n.policy.as_ref().is_some_and(same))
                .map(|n| n.name.clone());
            if namespace.is_none() && !endpoint_policies.iter().any(same) {
                return Err(format!(
                    "no aggregated namespace or remote-write endpoint has storage policy {policy}"
                ));
            }
            return Ok(WriteMode::Aggregated {
                namespace,
                policy: parsed,
            });
        }
        Some(other) => {
            return Err(format!(
                "M3-Metrics-Type {other:?}: expected unaggregated or aggregated"
            ));
        }
    }
    match write_type
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("default") => Ok(WriteMode::Default),
        Some("aggregate") => Ok(WriteMode::AggregateOnly),
        Some(other) => Err(format!(
            "M3-Write-Type {other:?}: expected default or aggregate"
        )),
    }
}

/// Why a request's `Content-Type` or `Content-Encoding` is not one this receiver speaks
/// (remote write 1.0: snappy-compressed `application/x-protobuf`); `None` when it is, or when
/// the headers are absent.
fn unsupported_content(headers: &HeaderMap) -> Option<String> {
    if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
        let text = content_type.to_str().unwrap_or("").to_ascii_lowercase();
        let media = text.split(';').next().unwrap_or("").trim();
        if media != "application/x-protobuf" {
            return Some(format!(
                "unsupported Content-Type {text:?}: remote write takes application/x-protobuf (remote write 1.0)"
            ));
        }
        let proto = text
            .split(';')
            .skip(1)
            .filter_map(|p| p.trim().strip_prefix("proto="))
            .next();
        if let Some(proto) = proto
            && proto != "prometheus.writerequest"
        {
            let hint = if proto == REMOTE_WRITE_V2_PROTO {
                "remote write 2.0 is not supported yet; send remote write 1.0 (prometheus.WriteRequest)"
            } else {
                "only prometheus.WriteRequest (remote write 1.0) is supported"
            };
            return Some(format!("unsupported Content-Type {text:?}: {hint}"));
        }
    }
    if let Some(encoding) = headers.get(header::CONTENT_ENCODING) {
        let text = encoding.to_str().unwrap_or("").trim().to_ascii_lowercase();
        if text != "snappy" && !text.is_empty() {
            return Some(format!(
                "unsupported Content-Encoding {text:?}: remote write bodies are snappy-compressed"
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(name.clone(), value.parse().unwrap());
        }
        map
    }

    /// `bufferPast` and `bufferFuture` from the config reach the store: a sample further
    /// behind its series' newest than the one, or further ahead of the clock than the other, is
    /// refused, one within them taken; the defaults (an hour, ten minutes) apply where they are
    /// not set.
    #[test]
    fn the_namespaces_buffers_reach_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let namespace = |name: &str, buffer_past, buffer_future| ValidNamespace {
            name: name.into(),
            policy: None,
            retention: Duration::from_secs(48 * 3600),
            downsample_all: false,
            read_only: false,
            buffer_past,
            buffer_future,
        };
        let minute = Duration::from_secs(60);
        let store = open_store(
            dir.path(),
            &[namespace("default", Some(minute), Some(minute))],
        )
        .unwrap();
        let up = m3_storage::Labels::new([("__name__", "up")]).unwrap();
        store
            .write_batch("default", &[(&up, 600_000, 1.0)])
            .unwrap();
        let summary = store
            .write_batch("default", &[(&up, 500_000, 1.0), (&up, 590_000, 1.0)])
            .unwrap();
        assert_eq!((summary.samples, summary.too_old), (1, 1));
        let now = m3_storage::retention::unix_ms(std::time::SystemTime::now());
        let five_minutes_ahead = now + 300_000;
        let summary = store
            .write_batch("default", &[(&up, five_minutes_ahead, 1.0)])
            .unwrap();
        assert_eq!((summary.samples, summary.too_new), (0, 1));
        drop(store);
        let other = tempfile::tempdir().unwrap();
        let store = open_store(other.path(), &[namespace("default", None, None)]).unwrap();
        store
            .write_batch("default", &[(&up, 600_000, 1.0)])
            .unwrap();
        let summary = store
            .write_batch("default", &[(&up, 500_000, 1.0)])
            .unwrap();
        assert_eq!(summary.too_old, 0, "within the default hour");
        let summary = store
            .write_batch("default", &[(&up, five_minutes_ahead, 1.0)])
            .unwrap();
        assert_eq!(summary.too_new, 0, "within the default ten minutes");
    }

    #[test]
    fn remote_write_2_and_other_media_types_are_refused_with_the_reason() {
        assert_eq!(unsupported_content(&HeaderMap::new()), None);
        for ok in [
            "application/x-protobuf",
            "application/x-protobuf;proto=prometheus.WriteRequest",
        ] {
            assert_eq!(
                unsupported_content(&headers(&[(header::CONTENT_TYPE, ok)])),
                None,
                "{ok}"
            );
        }
        let v2 = unsupported_content(&headers(&[(
            header::CONTENT_TYPE,
            "application/x-protobuf;proto=io.prometheus.write.v2.Request",
        )]))
        .unwrap();
        assert!(v2.contains("remote write 2.0 is not supported"), "{v2}");
        assert!(
            unsupported_content(&headers(&[(header::CONTENT_TYPE, "application/json")])).is_some()
        );
        assert!(unsupported_content(&headers(&[(header::CONTENT_ENCODING, "gzip")])).is_some());
    }
}
