//! One aggregator server: the engine, its cluster membership and its listeners, started
//! together and shut down in order.
//!
//! ```text
//! rawtcp listener ─┐
//! m3msg listener ──┼─▶ engine ◀── instance (placement, election, flush manager) ─▶ m3msg out
//! HTTP admin ──────┘      (/health, /status, /resign, /metrics)
//! ```
//!
//! `m3aggregator` and `m3 local` are glue over this: they bind the listeners (so a port in use
//! fails before anything starts), pick the KV store, and call [`AggregatorServer::start`]. The
//! shutdown order matters for data: the listeners stop first (bounded, so a client that never
//! finishes a request cannot hold the final flush back), then the instance flushes every ended
//! window as leader, waits for the acks and resigns. [`AggregatorServer::stop_listening`] is the
//! first half alone, for a process that stops several servers and wants every listener closed
//! before any final flush.

use std::sync::Arc;
use std::time::Duration;

use m3_cluster::KvStore;
use m3_server::http::HttpLimits;
use m3_server::tcp::ListenerLimits;
use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::ValidConfig;
use crate::flush_manager::FlushStatus;
use crate::instance::{AggregatorInstance, InstanceOptions, placement_shard_fn};
use crate::m3msg_ingest::serve_m3msg;
use crate::{Aggregator, AggregatorOptions, serve_rawtcp};

/// How long shutdown waits for a listener's connections to finish before it aborts them.
const LISTENER_STOP_GRACE: Duration = Duration::from_secs(5);

/// Everything a server runs with.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Engine options.
    pub engine: AggregatorOptions,
    /// Cluster membership options (instance ID, keys, producer, forwarding client).
    pub instance: InstanceOptions,
    /// Largest rawtcp frame.
    pub rawtcp_max_message_size: usize,
    /// rawtcp connection limit and timeouts.
    pub rawtcp_limits: ListenerLimits,
    /// The m3msg consumer settings, used when an m3msg listener is given.
    pub m3msg: m3_msg::ConsumerConfig,
    /// HTTP connection limit and header timeout.
    pub http_limits: HttpLimits,
}

impl From<&ValidConfig> for ServerOptions {
    fn from(config: &ValidConfig) -> ServerOptions {
        ServerOptions {
            engine: config.engine.clone(),
            instance: config.instance.clone(),
            rawtcp_max_message_size: config.rawtcp_max_message_size,
            rawtcp_limits: config.rawtcp_limits,
            m3msg: config
                .m3msg
                .as_ref()
                .map(|(_, consumer)| consumer.clone())
                .unwrap_or_default(),
            http_limits: config.http_limits,
        }
    }
}

/// The listeners a server serves, bound by the caller.
#[derive(Debug)]
pub struct Listeners {
    /// rawtcp ingest (`rawtcp.listenAddress`), if served.
    pub rawtcp: Option<TcpListener>,
    /// m3msg ingest (`m3msg.server.listenAddress`), if served.
    pub m3msg: Option<TcpListener>,
    /// The admin HTTP API (`http.listenAddress`).
    pub http: TcpListener,
}

/// A running aggregator server.
#[derive(Debug)]
pub struct AggregatorServer {
    instance: Arc<AggregatorInstance>,
    cancel: CancellationToken,
    listener_tasks: Vec<JoinHandle<()>>,
}

impl AggregatorServer {
    /// Starts the engine, joins the cluster through `kv` and serves `listeners`.
    ///
    /// # Errors
    /// When the instance cannot join the cluster (the KV watches cannot be set up).
    pub async fn start(
        options: ServerOptions,
        kv: Arc<dyn KvStore>,
        listeners: Listeners,
    ) -> anyhow::Result<AggregatorServer> {
        let aggregator = Arc::new(
            Aggregator::new(options.engine, placement_shard_fn(&options.instance))
                .with_murmur3_shard_count(Arc::clone(&options.instance.num_shards)),
        );
        let mut registry = Registry::default();
        let consumer_metrics = m3_msg::ConsumerMetrics::default();
        if listeners.m3msg.is_some() {
            consumer_metrics.register(&mut registry, "m3aggregator_m3msg_ingest");
        }
        let instance = Arc::new(
            AggregatorInstance::start(Arc::clone(&aggregator), kv, options.instance, &mut registry)
                .await?,
        );
        let cancel = CancellationToken::new();
        let mut listener_tasks = Vec::new();
        if let Some(listener) = listeners.rawtcp {
            let serving = serve_rawtcp(
                listener,
                Arc::clone(&aggregator),
                options.rawtcp_max_message_size,
                options.rawtcp_limits,
                cancel.clone(),
            );
            listener_tasks.push(tokio::spawn(async move {
                if let Err(e) = serving.await {
                    tracing::error!(error = %e, "rawtcp server failed.");
                }
            }));
        }
        if let Some(listener) = listeners.m3msg {
            listener_tasks.push(tokio::spawn(serve_m3msg(
                listener,
                Arc::clone(&aggregator),
                options.m3msg,
                consumer_metrics,
                cancel.clone(),
            )));
        }
        let app = crate::http::router(Arc::clone(&instance), Arc::new(Mutex::new(registry)));
        listener_tasks.push(tokio::spawn(m3_server::http::serve(
            listeners.http,
            app,
            options.http_limits,
            cancel.clone(),
            move || aggregator.metrics().record_http_connection_refused(),
        )));
        Ok(AggregatorServer {
            instance,
            cancel,
            listener_tasks,
        })
    }

    /// The engine, for a sender in this process
    /// ([`InProcessAggregators`](crate::client::InProcessAggregators)).
    pub fn aggregator(&self) -> &Arc<Aggregator> {
        self.instance.aggregator()
    }

    /// The current election state and leadership eligibility.
    pub fn status(&self) -> FlushStatus {
        self.instance.status()
    }

    /// Stops every listener: connections get five seconds to finish, then are
    /// aborted. Windows stay open; the instance keeps its leadership. Calling it again is
    /// harmless.
    pub async fn stop_listening(&mut self) {
        self.cancel.cancel();
        for mut task in self.listener_tasks.drain(..) {
            if tokio::time::timeout(LISTENER_STOP_GRACE, &mut task)
                .await
                .is_err()
            {
                task.abort();
                let _ = task.await;
            }
        }
    }

    /// Stops the listeners, then flushes every ended window (as leader), waits for the acks,
    /// resigns and stops.
    pub async fn shutdown(mut self) {
        self.stop_listening().await;
        match Arc::try_unwrap(self.instance) {
            Ok(instance) => instance.shutdown().await,
            Err(_) => {
                tracing::warn!("The instance is still referenced; it was not shut down cleanly.")
            }
        }
    }
}
