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
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use m3_cluster::KvStore;
use m3_cluster::keys::{DEFAULT_ENVIRONMENT, ServiceId, placement_key_in};
use m3_cluster::placement::PlacementStore;
use m3_storage::{NamespaceConfig, Store};
use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::aggregator_client::{AggregatorClient, ClientOptions};
use crate::config::{CoordinatorConfig, ValidNamespace};
use crate::downsample::Downsampler;
use crate::ingest::IngestHandler;
use crate::metrics::CoordinatorMetrics;
use crate::write::{WriteError, WritePath};

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
    store: Store,
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
    /// Bounds the remote-write requests being decoded and stored at once; beyond it the
    /// coordinator answers 429 so senders back off instead of queueing without bound.
    writes_in_flight: Arc<tokio::sync::Semaphore>,
    metrics: CoordinatorMetrics,
}

/// Remote-write requests handled at once before 429.
const MAX_WRITES_IN_FLIGHT: usize = 64;

impl Coordinator {
    /// Starts a coordinator. `config_path` is only used in error messages; `kv` holds the
    /// placements and topics; `http_listener` and `ingest_listener` override the configured
    /// addresses (tests and `m3 local` pass pre-bound listeners).
    ///
    /// # Errors
    /// Invalid namespaces, a store that does not open, addresses that do not bind.
    pub async fn start(
        config: &CoordinatorConfig,
        config_path: &Path,
        kv: Arc<dyn KvStore>,
        http_listener: Option<TcpListener>,
        ingest_listener: Option<TcpListener>,
    ) -> anyhow::Result<Coordinator> {
        let namespaces = config.namespaces(config_path)?;
        let store = open_store(Path::new(&config.storage.data_dir), &namespaces)?;
        let metrics = CoordinatorMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        store.metrics().register(&mut registry);
        let cancel = CancellationToken::new();
        let mut tasks = Vec::new();

        let downsampler = Downsampler::from_namespaces(&namespaces);
        let client = match &config.downsample.remote_aggregator {
            Some(remote) if downsampler.is_enabled() => {
                let client = AggregatorClient::new(
                    ClientOptions::from_config(&remote.client),
                    metrics.clone(),
                );
                let service = ServiceId::new(
                    remote.client.placement_watcher.key.clone(),
                    remote
                        .client
                        .placement_kv
                        .environment
                        .clone()
                        .unwrap_or_else(|| DEFAULT_ENVIRONMENT.to_string()),
                    remote.client.placement_kv.zone.clone().unwrap_or_default(),
                );
                let key = placement_key_in(&remote.client.placement_kv.namespace, &service);
                let watch = PlacementStore::new(Arc::clone(&kv), key)
                    .watch()
                    .await
                    .context("watching the m3aggregator placement")?;
                tasks.push(client.follow(watch, cancel.clone()));
                Some(client)
            }
            _ => None,
        };

        let raw_namespace = namespaces
            .iter()
            .find(|n| n.policy.is_none() && !n.read_only)
            .map(|n| n.name.clone());
        let write = Arc::new(WritePath::new(
            store.clone(),
            raw_namespace,
            downsampler,
            client.clone(),
            config.write_buffers.clone(),
            metrics.clone(),
        ));

        let ingest = match &config.ingest {
            Some(ingest) => {
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
                let mut consumer = m3_msg::ConsumerConfig::default();
                if let Some(c) = &ingest.m3msg.consumer {
                    if let Some(i) = c.ack_flush_interval {
                        consumer.ack_flush_interval = i;
                    }
                    if let Some(n) = c.ack_buffer_size {
                        consumer.ack_buffer_size = n;
                    }
                }
                let handler =
                    IngestHandler::new(store.clone(), metrics.clone()).into_message_handler();
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
            None => None,
        };

        let max_window = namespaces
            .iter()
            .filter_map(|n| n.policy.map(|p| p.resolution.window))
            .max()
            .unwrap_or(Duration::from_secs(60));
        let state = HttpState {
            write,
            registry: Arc::new(Mutex::new(registry)),
            writes_in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_WRITES_IN_FLIGHT)),
            metrics: metrics.clone(),
        };
        let app = Router::new()
            .route(
                "/health",
                get(|| async { axum::Json(serde_json::json!({"ok": true})) }),
            )
            .route("/metrics", get(serve_metrics))
            .route("/api/v1/prom/remote/write", post(remote_write))
            .with_state(state)
            .merge(crate::admin::router(crate::admin::AdminState {
                kv: Arc::clone(&kv),
                max_aggregation_window: max_window,
            }))
            .merge(crate::query_api::router(crate::query_api::QueryState {
                store: store.clone(),
                namespaces: namespaces.clone(),
            }))
            .layer(axum::extract::DefaultBodyLimit::max(64 * 1024 * 1024));
        let listener = match http_listener {
            Some(l) => l,
            None => {
                let address = config
                    .listen_address
                    .clone()
                    .unwrap_or_else(|| "0.0.0.0:7201".to_string());
                TcpListener::bind(&address)
                    .await
                    .with_context(|| format!("binding listenAddress {address}"))?
            }
        };
        let http = listener.local_addr()?;
        let shutdown = cancel.clone();
        tasks.push(tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "HTTP server failed.");
            }
        }));
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
                    store.enforce_retention_at(SystemTime::now())
                })
                .await;
                if let Ok(Err(e)) = report {
                    tracing::error!(error = %e, "Retention pass failed.");
                }
            }
        }));
        tracing::info!(%http, ingest = ?ingest, "Coordinator started.");
        Ok(Coordinator {
            addrs: CoordinatorAddrs { http, ingest },
            cancel,
            tasks,
            client,
            store,
        })
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

    /// Stops accepting writes, drains the aggregator queues (bounded), stops the servers and
    /// flushes the store.
    pub async fn shutdown(self) {
        if let Some(client) = &self.client {
            client.close(Duration::from_secs(5)).await;
        }
        self.cancel.cancel();
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        let store = self.store;
        let _ = tokio::task::spawn_blocking(move || store.flush()).await;
    }
}

/// Opens the store with the namespaces of the config.
fn open_store(dir: &Path, namespaces: &[ValidNamespace]) -> anyhow::Result<Store> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating data directory {}", dir.display()))?;
    let configs = namespaces
        .iter()
        .map(|n| match n.policy {
            Some(p) => {
                NamespaceConfig::aggregated(n.name.clone(), p.resolution.window, n.retention)
            }
            None => NamespaceConfig::unaggregated(n.name.clone(), n.retention),
        })
        .collect();
    Store::open(dir, configs).with_context(|| format!("opening the store in {}", dir.display()))
}

async fn serve_metrics(State(state): State<HttpState>) -> Response {
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &state.registry.lock()).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn remote_write(State(state): State<HttpState>, body: Bytes) -> Response {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let Ok(permit) = Arc::clone(&state.writes_in_flight).try_acquire_owned() else {
        state.metrics.write_requests_throttled.inc();
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            "too many remote-write requests in flight; retry later",
        )
            .into_response();
    };
    let write = Arc::clone(&state.write);
    let result = tokio::task::spawn_blocking(move || {
        let result = write.write(&body, now);
        drop(permit);
        result
    })
    .await;
    match result {
        Ok(Ok(outcome)) => {
            if let Some(reason) = outcome.overload() {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(header::RETRY_AFTER, "1")],
                    reason,
                )
                    .into_response();
            }
            match outcome.rejection() {
                None => StatusCode::OK.into_response(),
                Some(reason) => (StatusCode::BAD_REQUEST, reason).into_response(),
            }
        }
        Ok(Err(WriteError::Decode(e))) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        Ok(Err(e @ WriteError::Storage(_))) => {
            tracing::error!(error = %e, "Remote write failed.");
            (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "Remote write task failed.");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}
