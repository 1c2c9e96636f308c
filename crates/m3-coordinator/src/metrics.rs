//! The coordinator's self-metrics, declared in one place and served at `/metrics`.
//!
//! Every sample the coordinator does not pass on is counted here with a reason: invalid input,
//! a timestamp outside the aggregation buffers, no aggregator owning its shard, a full queue
//! towards an aggregator, an aggregated metric matching no namespace.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Why samples were not written or forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum DropReason {
    /// The series broke a remote-write label rule.
    invalid_series,
    /// Older than the aggregation past buffer (still stored raw).
    too_far_past,
    /// Newer than the aggregation future buffer (still stored raw).
    too_far_future,
    /// No aggregator instance owns the shard at the sample's time.
    no_aggregator_owner,
    /// A full queue towards an aggregator dropped a batch.
    queue_full,
    /// Writing a batch to an aggregator failed after a reconnect.
    write_failed,
    /// Still queued when the writer stopped (shutdown, or the instance left the placement).
    writer_stopped,
    /// The aggregator placement is not available yet.
    no_placement,
    /// An encoded metric was larger than `encoder.maxMessageSize`.
    too_large,
    /// The raw-sample store write failed.
    storage_error,
    /// The timestamp is outside what nanoseconds since the epoch can hold (years 1678–2262).
    invalid_timestamp,
    /// A `drop: true` mapping rule keeps the series' raw samples out of the store.
    dropped_by_rule,
    /// Further behind the series' newest sample than the raw namespace's `bufferPast`: the
    /// store refused it (it is still aggregated when inside the aggregation window).
    too_old_for_store,
    /// Further ahead of the clock than the raw namespace's `bufferFuture`: the store refused
    /// it.
    too_new_for_store,
}

/// Label set for drops.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DropLabels {
    /// Why.
    pub reason: DropReason,
}

/// Why a remote-write request was refused whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RefusedReason {
    /// Over a `limits.remoteWrite` bound (413).
    too_large,
    /// A Content-Type this receiver does not speak, e.g. remote write 2.0 (415).
    unsupported_media_type,
    /// The body did not arrive within `limits.remoteWrite.bodyTimeout` (408).
    body_timeout,
    /// An aggregator instance is behind; answered 503 so the sender retries.
    aggregator_behind,
}

/// Label set for refused requests.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RefusedLabels {
    /// Why.
    pub reason: RefusedReason,
}

/// Why an aggregated metric from the aggregators was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum IngestErrorReason {
    /// The payload is not an `AggregatedMetric`.
    decode_error,
    /// No aggregated namespace has the metric's resolution and retention (not acked, so the
    /// aggregator retries until the message TTL).
    no_namespace,
    /// The store refused the write (not acked, retried).
    storage_error,
    /// A remote-write endpoint of its policy did not take it (queue full, out of retries,
    /// shutdown): not acked, the aggregator redelivers it.
    remote_out_not_delivered,
    /// The ID could not be turned into labels.
    invalid_id,
    /// The ingest queue was full: not acked, so the aggregator redelivers it later.
    queue_full,
    /// Further behind its series' newest sample than the namespace's `bufferPast`: the store
    /// refused it (acked: a redelivery would be refused again).
    too_old,
    /// Further ahead of the clock than the namespace's `bufferFuture`: the store refused it
    /// (acked).
    too_new,
}

/// Label set for ingest errors.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct IngestErrorLabels {
    /// Why.
    pub reason: IngestErrorReason,
}

/// Why samples sent out by remote write out were not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum OutDropReason {
    /// The endpoint answered a 4xx other than 429, which no retry changes.
    rejected,
    /// `retry.maxRetries` ran out (aggregated output is then not acked and comes again).
    retries_exhausted,
    /// Still queued or retrying when the coordinator stopped.
    shutdown,
}

/// Label set of remote write out's per-endpoint metrics.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EndpointLabels {
    /// The endpoint's name.
    pub endpoint: String,
}

/// Label set of remote write out's drops.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EndpointDropLabels {
    /// The endpoint's name.
    pub endpoint: String,
    /// Why.
    pub reason: OutDropReason,
}

/// All coordinator counters; clones share them.
#[derive(Debug, Clone, Default)]
pub struct CoordinatorMetrics {
    /// Remote-write requests received.
    pub write_requests: Counter,
    /// Remote-write requests answered 400.
    pub write_requests_invalid: Counter,
    /// Remote-write requests answered 429 (too many in flight).
    pub write_requests_throttled: Counter,
    /// Remote-write requests holding one of the `maxConcurrentRequests` slots now (reading,
    /// decoding or storing).
    pub write_requests_in_flight: Gauge,
    /// Remote-write requests refused whole: 413 (over a `limits.remoteWrite` bound), 415
    /// (remote write 2.0), 408 (the body did not arrive in time).
    pub write_requests_refused: Family<RefusedLabels, Counter>,
    /// HTTP connections refused over `limits.http.maxConnections`.
    pub http_connections_refused: Counter,
    /// Samples received by remote write.
    pub samples_received: Counter,
    /// Raw samples written to the unaggregated namespace.
    pub samples_stored_raw: Counter,
    /// Samples encoded towards aggregator instances (once per owning instance).
    pub samples_forwarded: Counter,
    /// Samples dropped, by reason.
    pub samples_dropped: Family<DropLabels, Counter>,
    /// Aggregated metrics received from the aggregators.
    pub ingest_received: Counter,
    /// Aggregated metrics stored.
    pub ingest_stored: Counter,
    /// Aggregated metrics not stored, by reason.
    pub ingest_errors: Family<IngestErrorLabels, Counter>,
    /// Remote write out: samples an endpoint accepted.
    pub out_samples_sent: Family<EndpointLabels, Counter>,
    /// Remote write out: samples not delivered, by reason.
    pub out_samples_dropped: Family<EndpointDropLabels, Counter>,
    /// Remote write out: samples refused because the endpoint's queue was full (the writer is
    /// answered 503, aggregated output is not acked: both come again).
    pub out_samples_refused: Family<EndpointLabels, Counter>,
    /// Remote write out: sends that failed and were retried (5xx, 429, connection errors).
    pub out_send_retries: Family<EndpointLabels, Counter>,
    /// Remote write out: samples waiting in an endpoint's queue.
    pub out_queued_samples: Family<EndpointLabels, Gauge>,
    /// Series in the series cache, as of the last request that added some.
    pub series_cache_series: Gauge,
    /// Bytes the series cache holds (whole 1 MiB chunks and its index), likewise.
    pub series_cache_bytes: Gauge,
}

impl m3_aggregator::client::ClientMetrics for CoordinatorMetrics {
    fn dropped(&self, reason: m3_aggregator::client::ClientDrop, n: u64) {
        use m3_aggregator::client::ClientDrop;
        self.drop_samples(
            match reason {
                ClientDrop::QueueFull => DropReason::queue_full,
                ClientDrop::WriteFailed => DropReason::write_failed,
                ClientDrop::WriterStopped => DropReason::writer_stopped,
            },
            n,
        );
    }

    fn queued(&self, n: u64) {
        self.samples_forwarded.inc_by(n);
    }
}

impl CoordinatorMetrics {
    /// Counts `n` samples dropped for `reason`.
    pub fn drop_samples(&self, reason: DropReason, n: u64) {
        if n > 0 {
            self.samples_dropped
                .get_or_create(&DropLabels { reason })
                .inc_by(n);
        }
    }

    /// Counts a request refused whole.
    pub fn refuse_request(&self, reason: RefusedReason) {
        self.write_requests_refused
            .get_or_create(&RefusedLabels { reason })
            .inc();
    }

    /// Counts an ingest error.
    pub fn ingest_error(&self, reason: IngestErrorReason) {
        self.ingest_errors_by(reason, 1);
    }

    /// Counts `n` ingest errors of one reason.
    pub fn ingest_errors_by(&self, reason: IngestErrorReason, n: u64) {
        self.ingest_errors
            .get_or_create(&IngestErrorLabels { reason })
            .inc_by(n);
    }

    /// Registers every metric under the `m3coordinator` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("m3coordinator");
        r.register(
            "write_requests",
            "Remote-write requests received",
            self.write_requests.clone(),
        );
        r.register(
            "series_cache_series",
            "Series the remote-write series cache knows (routed without encoding their ID again), as of the last request that added some; the cache empties when limits.remoteWrite.seriesCacheBytes is reached",
            self.series_cache_series.clone(),
        );
        r.register(
            "series_cache_bytes",
            "Bytes the remote-write series cache holds, as of the last request that added series",
            self.series_cache_bytes.clone(),
        );
        r.register(
            "write_requests_invalid",
            "Remote-write requests answered 400",
            self.write_requests_invalid.clone(),
        );
        r.register(
            "http_connections_refused",
            "HTTP connections refused over limits.http.maxConnections (answered 503)",
            self.http_connections_refused.clone(),
        );
        r.register(
            "write_requests_throttled",
            "Remote-write requests answered 429 (too many in flight)",
            self.write_requests_throttled.clone(),
        );
        r.register(
            "write_requests_in_flight",
            "Remote-write requests holding a limits.remoteWrite.maxConcurrentRequests slot",
            self.write_requests_in_flight.clone(),
        );
        r.register(
            "write_requests_refused",
            "Remote-write requests refused whole (413 too large, 415 unsupported, 408 body timeout)",
            self.write_requests_refused.clone(),
        );
        r.register(
            "samples_received",
            "Samples received by remote write",
            self.samples_received.clone(),
        );
        r.register(
            "samples_stored_raw",
            "Raw samples written to the unaggregated namespace",
            self.samples_stored_raw.clone(),
        );
        r.register(
            "samples_forwarded",
            "Samples sent to aggregator instances, once per owning instance",
            self.samples_forwarded.clone(),
        );
        r.register(
            "samples_dropped",
            "Samples dropped, by reason",
            self.samples_dropped.clone(),
        );
        r.register(
            "ingest_received",
            "Aggregated metrics received from aggregators",
            self.ingest_received.clone(),
        );
        r.register(
            "ingest_stored",
            "Aggregated metrics stored",
            self.ingest_stored.clone(),
        );
        r.register(
            "ingest_errors",
            "Aggregated metrics not stored, by reason",
            self.ingest_errors.clone(),
        );
        r.register(
            "remote_out_samples_sent",
            "Samples a prometheusRemoteBackend endpoint accepted",
            self.out_samples_sent.clone(),
        );
        r.register(
            "remote_out_samples_dropped",
            "Samples not delivered to a prometheusRemoteBackend endpoint, by reason",
            self.out_samples_dropped.clone(),
        );
        r.register(
            "remote_out_samples_refused",
            "Samples refused because an endpoint's queue was full (the sender retries)",
            self.out_samples_refused.clone(),
        );
        r.register(
            "remote_out_send_retries",
            "Sends to an endpoint that failed and were retried",
            self.out_send_retries.clone(),
        );
        r.register(
            "remote_out_queued_samples",
            "Samples waiting in an endpoint's queue",
            self.out_queued_samples.clone(),
        );
    }
}
