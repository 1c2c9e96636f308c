//! The ingest side: aggregated metrics arriving from the aggregators over m3msg are stored in
//! the aggregated namespace whose resolution and retention match their storage policy.
//!
//! A message is acked only once it is stored, or when it can never be stored (it does not
//! decode): then it is counted and logged. A metric whose storage policy matches no namespace,
//! or whose write fails, is *not* acked, so the aggregator redelivers it until its message TTL —
//! a namespace added to the config in time still receives it (M3 does the same).
//!
//! IDs are tag-encoded label sets (see `m3_metric::id`); an ID that is not becomes the series
//! name, with characters Prometheus does not allow replaced by `_`.
//!
//! Messages are stored in batches: the connection's read loop queues each message (a bounded
//! queue; when full the message is not acked and comes back later), and a few workers take up
//! to [`MAX_BATCH`] at a time and write them with one store write per namespace, then ack each.
//! A leader flushing 300k windows at once is stored in seconds, not a minute of single-sample
//! writes.
//!
//! ```text
//! read loop ──try_send──▶ queue (bounded) ──recv_many──▶ worker ──▶ one write per namespace ──▶ ack each
//!                                                           └──▶ remote-write endpoints of the policy
//!                                                                (ack waits for them)
//! ```
//!
//! Aggregators in the same process (`m3 local`) hand their outputs over without encoding them:
//! the handler is their `m3_aggregator::output::OutputSink`, stores a flushed shard's outputs
//! as it stores a batch of messages, and gives back the ones it would not have acked, which the
//! aggregator writes again later, as it would redeliver them.
//!
//! With `prometheusRemoteBackend` endpoints, a metric also goes to every endpoint of its storage
//! policy, and its message is acked only once each of them accepted it (or refused it for good
//! with a 4xx, which is counted there): an endpoint that is down or full holds the ack, and the
//! aggregator redelivers later. A policy that only endpoints have (no namespace) is sent there
//! and not stored.

use std::sync::Arc;

use m3_aggregator::AggregatedOutput;
use m3_aggregator::output::{OutputSink, SinkWrite};
use m3_metric::StoragePolicy;
use m3_msg::{ConsumedMessage, Decision, MessageHandler};
use m3_proto::Message;
use m3_proto::metricpb::AggregatedMetric;
use m3_storage::{Labels, Store, WriteSummary};

use crate::metrics::{CoordinatorMetrics, IngestErrorReason};
use crate::remote_out::{Delivery, RemoteOut};

/// Turns m3msg messages into stored samples.
#[derive(Clone)]
pub struct IngestHandler {
    /// The embedded store; `None` under `backend: prom-remote`.
    store: Option<Store>,
    metrics: CoordinatorMetrics,
    remote_out: Option<Arc<RemoteOut>>,
}

/// Samples of one batch bound for remote-write endpoints, and the message each came from.
#[derive(Default)]
pub struct OutBound {
    samples: Vec<(usize, StoragePolicy, Labels, i64, f64)>,
}

/// Deliveries to wait for: the messages of each batch sent to one endpoint.
pub type PendingDeliveries = Vec<(Vec<usize>, tokio::sync::oneshot::Receiver<Delivery>)>;

impl IngestHandler {
    /// A handler storing into `store` (none: only sending to endpoints).
    pub fn new(store: impl Into<Option<Store>>, metrics: CoordinatorMetrics) -> IngestHandler {
        IngestHandler {
            store: store.into(),
            metrics,
            remote_out: None,
        }
    }

    /// The same handler also sending to the endpoints of `remote_out` (if any).
    #[must_use]
    pub fn with_remote_out(mut self, remote_out: Option<Arc<RemoteOut>>) -> IngestHandler {
        self.remote_out = remote_out;
        self
    }

    /// The m3msg handler: messages are queued and stored in batches by `workers` tasks, each
    /// acked once stored (see the module doc). Call within a Tokio runtime.
    pub fn into_message_handler(self, workers: usize) -> Arc<dyn MessageHandler> {
        let (queue, receiver) = tokio::sync::mpsc::channel::<ConsumedMessage>(QUEUE_SIZE);
        let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
        let handler = Arc::new(self);
        for _ in 0..workers.max(1) {
            tokio::spawn(store_batches(Arc::clone(&handler), Arc::clone(&receiver)));
        }
        let metrics = handler.metrics.clone();
        Arc::new(move |message: ConsumedMessage| {
            if let Err(full) = queue.try_send(message) {
                metrics.ingest_error(IngestErrorReason::queue_full);
                full.into_inner().finish(Decision::NoAck);
            }
        })
    }

    /// Stores a batch of `AggregatedMetric` payloads, one store write per namespace; the
    /// decision for each, in order. Endpoints are not sent to (see [`Self::store_batch`]).
    pub fn handle_batch(&self, values: &[&[u8]]) -> Vec<Decision> {
        self.store_batch(values).0
    }

    /// Stores a batch as [`Self::handle_batch`] does; also returns the samples that
    /// remote-write endpoints should receive (those whose store decision is an ack).
    pub fn store_batch(&self, values: &[&[u8]]) -> (Vec<Decision>, OutBound) {
        self.store_prepared(values.len(), values.iter().map(|value| self.prepare(value)))
    }

    /// Stores a flushed shard's outputs as [`Self::store_batch`] stores the same values
    /// arriving as messages: what an aggregator in this process hands over without encoding
    /// them (see `m3_aggregator::output`).
    pub fn store_outputs(&self, outputs: &[AggregatedOutput]) -> (Vec<Decision>, OutBound) {
        self.store_prepared(
            outputs.len(),
            outputs.iter().map(|output| {
                self.metrics.ingest_received.inc();
                self.prepare_sample(
                    &output.id,
                    output.storage_policy,
                    output.time_nanos,
                    output.value,
                )
            }),
        )
    }

    fn store_prepared(
        &self,
        count: usize,
        prepared: impl Iterator<Item = Prepared>,
    ) -> (Vec<Decision>, OutBound) {
        let mut decisions = vec![Decision::Ack; count];
        let mut by_namespace: Vec<(String, Vec<PendingSample>)> = Vec::new();
        let mut out = OutBound::default();
        for (i, prepared) in prepared.enumerate() {
            match prepared {
                Prepared::Decided(decision) => decisions[i] = decision,
                Prepared::Sample {
                    namespace,
                    policy,
                    labels,
                    time_ms,
                    value,
                } => {
                    if self
                        .remote_out
                        .as_ref()
                        .is_some_and(|r| r.endpoints_for(policy).next().is_some())
                    {
                        out.samples
                            .push((i, policy, labels.clone(), time_ms, value));
                    }
                    let Some(namespace) = namespace else {
                        continue;
                    };
                    let slot = match by_namespace.iter().position(|(n, _)| *n == namespace) {
                        Some(slot) => slot,
                        None => {
                            by_namespace.push((namespace, Vec::new()));
                            by_namespace.len() - 1
                        }
                    };
                    by_namespace[slot].1.push((i, labels, time_ms, value));
                }
            }
        }
        let decisions = self.store_by_namespace(&by_namespace, decisions);
        out.samples.retain(|(i, ..)| decisions[*i] == Decision::Ack);
        (decisions, out)
    }

    /// Queues `out` to the endpoints of each sample's policy. A message whose samples find an
    /// endpoint's queue full is not acked (`decisions`); the others wait for the deliveries
    /// returned. Blocking work (encoding): call from a blocking thread.
    pub fn send_out(&self, out: &OutBound, decisions: &mut [Decision]) -> PendingDeliveries {
        let mut pending = PendingDeliveries::new();
        let Some(remote_out) = &self.remote_out else {
            return pending;
        };
        let mut policies: Vec<StoragePolicy> = Vec::new();
        for (_, policy, ..) in &out.samples {
            if !policies.contains(policy) {
                policies.push(*policy);
            }
        }
        let mut scratch = Vec::new();
        for policy in policies {
            let of_policy: Vec<&(usize, StoragePolicy, Labels, i64, f64)> = out
                .samples
                .iter()
                .filter(|(_, p, ..)| *p == policy)
                .collect();
            let samples: Vec<(&Labels, i64, f64)> = of_policy
                .iter()
                .map(|(_, _, l, t, v)| (l, *t, *v))
                .collect();
            let messages: Vec<usize> = of_policy.iter().map(|(i, ..)| *i).collect();
            let endpoints: Vec<&crate::remote_out::Endpoint> =
                remote_out.endpoints_for(policy).collect();
            match crate::remote_out::send_to_all(&endpoints, &samples, &mut scratch) {
                Ok(deliveries) => {
                    pending.extend(deliveries.into_iter().map(|d| (messages.clone(), d)));
                }
                Err(full) => {
                    tracing::debug!(error = %full, "Aggregated metrics left un-acked for redelivery.");
                    self.not_delivered(&messages, decisions);
                }
            }
        }
        pending
    }

    /// Waits for `pending` and leaves un-acked the messages an endpoint did not take.
    pub async fn await_deliveries(&self, pending: PendingDeliveries, decisions: &mut [Decision]) {
        for (messages, delivery) in pending {
            match delivery.await {
                // Refused for good: counted as dropped by the endpoint; acked, as redelivery
                // would be refused again.
                Ok(Delivery::Accepted | Delivery::Rejected) => {}
                Ok(Delivery::GaveUp | Delivery::Stopped) | Err(_) => {
                    self.not_delivered(&messages, decisions);
                }
            }
        }
    }

    fn not_delivered(&self, messages: &[usize], decisions: &mut [Decision]) {
        for &i in messages {
            if decisions[i] == Decision::Ack {
                decisions[i] = Decision::NoAck;
                self.metrics
                    .ingest_error(IngestErrorReason::remote_out_not_delivered);
            }
        }
    }

    /// One store write per namespace of `by_namespace`; `decisions` updated for each sample.
    fn store_by_namespace(
        &self,
        by_namespace: &[(String, Vec<PendingSample>)],
        mut decisions: Vec<Decision>,
    ) -> Vec<Decision> {
        let Some(store) = &self.store else {
            return decisions;
        };
        for (namespace, samples) in by_namespace {
            let refs: Vec<(&Labels, i64, f64)> =
                samples.iter().map(|(_, l, t, v)| (l, *t, *v)).collect();
            match store.write_batch(namespace, &refs) {
                Ok(summary) => {
                    self.metrics.ingest_stored.inc_by(summary.samples);
                    self.count_refused(namespace, &summary);
                }
                Err(e) if e.is_bad_input() => {
                    // One bad series refuses the whole batch: store them one by one to keep
                    // the others.
                    for (i, labels, t, v) in samples {
                        decisions[*i] = self.store_one(store, namespace, labels, *t, *v);
                    }
                }
                Err(e) => {
                    self.metrics
                        .ingest_errors_by(IngestErrorReason::storage_error, samples.len() as u64);
                    tracing::error!(error = %e, namespace, samples = samples.len(), "Storing aggregated metrics failed; leaving them un-acked for redelivery.");
                    for (i, ..) in samples {
                        decisions[*i] = Decision::NoAck;
                    }
                }
            }
        }
        decisions
    }

    /// Counts and logs windows the store refused: older than the namespace's `bufferPast`,
    /// or further ahead of the clock than its `bufferFuture`.
    fn count_refused(&self, namespace: &str, summary: &WriteSummary) {
        let count = |reason, refused| self.metrics.ingest_errors_by(reason, refused);
        if summary.too_old > 0 {
            count(IngestErrorReason::too_old, summary.too_old);
            tracing::warn!(
                namespace,
                refused = summary.too_old,
                "Aggregated windows further behind their series' newest than the namespace's bufferPast were refused by the store."
            );
        }
        if summary.too_new > 0 {
            count(IngestErrorReason::too_new, summary.too_new);
            tracing::warn!(
                namespace,
                refused = summary.too_new,
                "Aggregated windows further ahead of the clock than the namespace's bufferFuture were refused by the store."
            );
        }
    }

    /// Stores one `AggregatedMetric` payload and says whether to ack it.
    pub fn handle(&self, value: &[u8]) -> Decision {
        self.handle_batch(&[value])[0]
    }

    fn store_one(
        &self,
        store: &Store,
        namespace: &str,
        labels: &Labels,
        time_ms: i64,
        value: f64,
    ) -> Decision {
        match store.write_batch(namespace, &[(labels, time_ms, value)]) {
            Ok(summary) => {
                self.metrics.ingest_stored.inc_by(summary.samples);
                self.count_refused(namespace, &summary);
                Decision::Ack
            }
            Err(e) if e.is_bad_input() => {
                self.metrics.ingest_error(IngestErrorReason::invalid_id);
                tracing::warn!(error = %e, "Aggregated metric refused by the store; dropping it.");
                Decision::Ack
            }
            Err(e) => {
                self.metrics.ingest_error(IngestErrorReason::storage_error);
                tracing::error!(error = %e, "Storing aggregated metric failed; leaving it un-acked for redelivery.");
                Decision::NoAck
            }
        }
    }

    /// Decodes one payload into the sample to store, or the decision when there is none.
    fn prepare(&self, value: &[u8]) -> Prepared {
        self.metrics.ingest_received.inc();
        let Ok(message) = AggregatedMetric::decode(value) else {
            self.metrics.ingest_error(IngestErrorReason::decode_error);
            tracing::warn!(
                bytes = value.len(),
                "Aggregated metric does not decode; dropping it."
            );
            return Prepared::Decided(Decision::Ack);
        };
        let Some(metric) = message.metric else {
            self.metrics.ingest_error(IngestErrorReason::decode_error);
            return Prepared::Decided(Decision::Ack);
        };
        let (Some(timed), Some(policy)) = (metric.timed_metric, metric.storage_policy) else {
            self.metrics.ingest_error(IngestErrorReason::decode_error);
            return Prepared::Decided(Decision::Ack);
        };
        let Some(policy) = m3_metric::StoragePolicy::from_proto(&policy) else {
            self.metrics.ingest_error(IngestErrorReason::decode_error);
            return Prepared::Decided(Decision::Ack);
        };
        self.prepare_sample(&timed.id, policy, timed.time_nanos, timed.value)
    }

    /// The sample to store for a decoded metric, or the decision when there is none.
    fn prepare_sample(
        &self,
        id: &[u8],
        policy: StoragePolicy,
        time_nanos: i64,
        value: f64,
    ) -> Prepared {
        let found = match &self.store {
            Some(store) => store
                .namespaces()
                .namespace_for(policy.resolution.window, policy.retention.0)
                .map(|ns| ns.name.clone())
                .map_err(|e| e.to_string()),
            None => Err("nothing is stored here (backend prom-remote)".to_string()),
        };
        let namespace = match found {
            Ok(ns) => Some(ns),
            Err(_)
                if self
                    .remote_out
                    .as_ref()
                    .is_some_and(|r| r.endpoints_for(policy).next().is_some()) =>
            {
                None
            }
            Err(e) => {
                self.metrics.ingest_error(IngestErrorReason::no_namespace);
                tracing::warn!(policy = %policy, error = %e, "No namespace for aggregated metric; leaving it un-acked for redelivery.");
                return Prepared::Decided(Decision::NoAck);
            }
        };
        let Some(labels) = labels_of(id) else {
            self.metrics.ingest_error(IngestErrorReason::invalid_id);
            return Prepared::Decided(Decision::Ack);
        };
        Prepared::Sample {
            namespace,
            policy,
            labels,
            time_ms: time_nanos.div_euclid(1_000_000),
            value,
        }
    }
}

/// Messages waiting to be stored before the read loops stop acking (not acked beyond: the
/// aggregators redeliver them).
const QUEUE_SIZE: usize = 64 * 1024;

/// Messages stored in one batch.
pub const MAX_BATCH: usize = 4096;

/// A sample waiting for its namespace's write: (message index, labels, time ms, value).
type PendingSample = (usize, Labels, i64, f64);

/// What one payload amounts to.
enum Prepared {
    /// Nothing to store: ack (undecodable, dropped) or not (no namespace yet).
    Decided(Decision),
    /// A sample to store in `namespace` (none: only endpoints have its policy) and to send to
    /// the endpoints of `policy`.
    Sample {
        namespace: Option<String>,
        policy: StoragePolicy,
        labels: Labels,
        time_ms: i64,
        value: f64,
    },
}

/// A worker: takes up to [`MAX_BATCH`] queued messages at a time, stores them on a blocking
/// thread and acks each as decided.
async fn store_batches(
    handler: Arc<IngestHandler>,
    receiver: Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<ConsumedMessage>>>,
) {
    loop {
        let mut batch = Vec::with_capacity(64);
        let received = receiver.lock().await.recv_many(&mut batch, MAX_BATCH).await;
        if received == 0 {
            return;
        }
        let stored = Arc::clone(&handler);
        let values: Vec<bytes::Bytes> = batch.iter().map(|m| m.value().clone()).collect();
        let written = tokio::task::spawn_blocking(move || {
            let refs: Vec<&[u8]> = values.iter().map(|v| v.as_ref()).collect();
            let (mut decisions, out) = stored.store_batch(&refs);
            let pending = stored.send_out(&out, &mut decisions);
            (decisions, pending)
        })
        .await;
        match written {
            Ok((decisions, pending)) if pending.is_empty() => finish_all(batch, decisions),
            // Acks that wait for endpoints wait in their own task, so a slow or unreachable
            // endpoint does not hold this worker (and every other policy's messages) back. Their
            // number is bounded by the endpoints' queues: a full one answers at once.
            Ok((mut decisions, pending)) => {
                let handler = Arc::clone(&handler);
                tokio::spawn(async move {
                    handler.await_deliveries(pending, &mut decisions).await;
                    finish_all(batch, decisions);
                });
            }
            Err(_) => {
                let decisions = vec![Decision::NoAck; batch.len()];
                finish_all(batch, decisions);
            }
        }
    }
}

/// The handler as the consumer of the aggregators in this process (`m3 local`): a flushed
/// shard's outputs are stored on a blocking thread, sent to the endpoints of their policies,
/// and those not stored (or not delivered) are given back to be written again later, as an
/// un-acked message would be redelivered.
impl OutputSink for IngestHandler {
    fn write(&self, outputs: Vec<AggregatedOutput>) -> SinkWrite {
        let handler = self.clone();
        Box::pin(async move {
            let count = outputs.len();
            let stored = handler.clone();
            let written = tokio::task::spawn_blocking(move || {
                let (mut decisions, out) = stored.store_outputs(&outputs);
                let pending = stored.send_out(&out, &mut decisions);
                (outputs, decisions, pending)
            })
            .await;
            match written {
                Ok((outputs, mut decisions, pending)) => {
                    handler.await_deliveries(pending, &mut decisions).await;
                    outputs
                        .into_iter()
                        .zip(decisions)
                        .filter(|(_, decision)| *decision == Decision::NoAck)
                        .map(|(output, _)| output)
                        .collect()
                }
                Err(e) => {
                    // The outputs went down with the task: counted as storage errors.
                    handler
                        .metrics
                        .ingest_errors_by(IngestErrorReason::storage_error, count as u64);
                    tracing::error!(error = %e, outputs = count, "Storing aggregated outputs failed.");
                    Vec::new()
                }
            }
        })
    }
}

/// Acks or not each message of `batch` as decided.
fn finish_all(batch: Vec<ConsumedMessage>, decisions: Vec<Decision>) {
    for (message, decision) in batch.into_iter().zip(decisions) {
        message.finish(decision);
    }
}

/// The labels of a metric ID.
///
/// Every stored output of the aggregators goes through here. The IDs the coordinator encodes
/// hold their tags sorted, UTF-8 and non-empty, and are copied into the labels at once; any
/// other tag-encoded ID is decoded tag by tag (invalid UTF-8 replaced) and sorted.
pub fn labels_of(id: &[u8]) -> Option<Labels> {
    if let Ok(tags) = m3_metric::id::TagIter::new(id) {
        if tags.clone().all(|tag| tag.is_ok())
            && let Some(labels) = Labels::from_canonical_bytes(tags.map_while(Result::ok))
        {
            return Some(labels);
        }
        let tags = m3_metric::id::decode_tags(id).ok()?;
        return Labels::new(tags).ok();
    }
    let name: String = String::from_utf8_lossy(id)
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit()) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        return None;
    }
    Labels::new([("__name__".to_string(), name)]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use m3_proto::metricpb::{TimedMetric, TimedMetricWithStoragePolicy};
    use m3_storage::{Matcher, NamespaceConfig};
    use std::time::Duration;

    fn store(dir: &std::path::Path) -> Store {
        Store::open(
            dir,
            vec![
                NamespaceConfig::unaggregated("default", Duration::from_secs(86_400)),
                NamespaceConfig::aggregated(
                    "agg",
                    Duration::from_secs(10),
                    Duration::from_secs(172_800),
                ),
            ],
        )
        .unwrap()
    }

    fn message(id: &[u8], policy: &str, time_nanos: i64, value: f64) -> Vec<u8> {
        let policy: m3_metric::StoragePolicy = policy.parse().unwrap();
        AggregatedMetric {
            metric: Some(TimedMetricWithStoragePolicy {
                timed_metric: Some(TimedMetric {
                    r#type: 3,
                    id: Bytes::copy_from_slice(id),
                    time_nanos,
                    value,
                    annotation: Bytes::new(),
                }),
                storage_policy: Some(policy.to_proto()),
                routing_policy: None,
            }),
            encode_nanos: 0,
        }
        .encode_to_vec()
    }

    fn tagged(name: &str) -> Vec<u8> {
        let mut id = Vec::new();
        m3_metric::id::encode_tags(
            [
                (b"__name__".as_slice(), name.as_bytes()),
                (b"job".as_slice(), b"x".as_slice()),
            ],
            &mut id,
        )
        .unwrap();
        id
    }

    #[test]
    fn a_batch_is_stored_whole_and_each_message_decided() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let handler = IngestHandler::new(store.clone(), CoordinatorMetrics::default());
        let a = message(&tagged("a"), "10s:2d", 20_000_000_000, 1.0);
        let b = message(&tagged("b"), "10s:2d", 20_000_000_000, 2.0);
        let no_namespace = message(&tagged("c"), "1m:40d", 60_000_000_000, 3.0);
        let garbage = vec![0xff, 0xff, 0xff];
        let decisions = handler.handle_batch(&[&a, &b, &no_namespace, &garbage]);
        assert_eq!(
            decisions,
            vec![Decision::Ack, Decision::Ack, Decision::NoAck, Decision::Ack]
        );
        assert_eq!(store.series_count("agg").unwrap(), 2);
    }

    fn output(id: &[u8], policy: &str, time_nanos: i64, value: f64) -> AggregatedOutput {
        AggregatedOutput {
            id: id.to_vec(),
            time_nanos,
            value,
            storage_policy: policy.parse().unwrap(),
            aggregation: m3_metric::AggregationType::Last,
            metric_type: m3_metric::MetricType::Gauge,
        }
    }

    /// The in-process hand-off stores what the same values would store as messages, and
    /// gives back only what has nowhere to go yet.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn outputs_handed_over_in_process_are_stored_as_messages_are() {
        let (by_message, by_output) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let values = [
            (tagged("a"), "10s:2d", 20_000_000_000, 1.0),
            (tagged("b"), "10s:2d", 20_000_000_000, 2.5),
            (tagged("a"), "10s:2d", 30_000_000_000, 3.0),
            (tagged("c"), "1m:40d", 60_000_000_000, 4.0),
            (b"not tag encoded".to_vec(), "10s:2d", 30_000_000_000, 5.0),
        ];
        let messages: Vec<Vec<u8>> = values
            .iter()
            .map(|(id, policy, t, v)| message(id, policy, *t, *v))
            .collect();
        let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        let message_store = store(by_message.path());
        let message_metrics = CoordinatorMetrics::default();
        let decisions =
            IngestHandler::new(message_store.clone(), message_metrics.clone()).handle_batch(&refs);

        let output_store = store(by_output.path());
        let output_metrics = CoordinatorMetrics::default();
        let sink = IngestHandler::new(output_store.clone(), output_metrics.clone());
        let outputs: Vec<AggregatedOutput> = values
            .iter()
            .map(|(id, policy, t, v)| output(id, policy, *t, *v))
            .collect();
        let given_back = sink.write(outputs.clone()).await;

        let not_acked: Vec<&AggregatedOutput> = outputs
            .iter()
            .zip(&decisions)
            .filter(|(_, d)| **d == Decision::NoAck)
            .map(|(o, _)| o)
            .collect();
        assert_eq!(not_acked.len(), 1, "the 1m output has no namespace");
        assert_eq!(given_back.len(), 1);
        assert_eq!(
            (&given_back[0].id, given_back[0].time_nanos),
            (&not_acked[0].id, not_acked[0].time_nanos)
        );
        let everything = [Matcher::regex("__name__", ".+").unwrap()];
        let read = |store: &Store| store.select("agg", &everything, 0, 100_000).unwrap();
        let (expected, got) = (read(&message_store), read(&output_store));
        assert_eq!(got.len(), 3, "a, b and the name made of the untagged ID");
        assert_eq!(
            got.iter()
                .map(|s| (&s.labels, &s.samples))
                .collect::<Vec<_>>(),
            expected
                .iter()
                .map(|s| (&s.labels, &s.samples))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            output_metrics.ingest_stored.get(),
            message_metrics.ingest_stored.get()
        );
        assert_eq!(output_metrics.ingest_received.get(), 5);
    }

    #[test]
    fn stores_in_the_namespace_matching_the_policy_and_acks() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let metrics = CoordinatorMetrics::default();
        let handler = IngestHandler::new(store.clone(), metrics.clone());
        let decision = handler.handle(&message(&tagged("up"), "10s:2d", 20_000_000_000, 1.5));
        assert_eq!(decision, Decision::Ack);
        let got = store
            .select("agg", &[Matcher::equal("__name__", "up")], 0, 100_000)
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].labels.get("job"), Some("x"));
        assert_eq!(got[0].samples, vec![(20_000, 1.5)]);
        assert_eq!(metrics.ingest_stored.get(), 1);
    }

    #[test]
    fn no_namespace_is_not_acked_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = CoordinatorMetrics::default();
        let handler = IngestHandler::new(store(dir.path()), metrics.clone());
        let decision = handler.handle(&message(&tagged("up"), "1m:40d", 60_000_000_000, 1.0));
        assert_eq!(decision, Decision::NoAck);
        let count = metrics
            .ingest_errors
            .get_or_create(&crate::metrics::IngestErrorLabels {
                reason: IngestErrorReason::no_namespace,
            })
            .get();
        assert_eq!(count, 1);
    }

    #[test]
    fn garbage_is_acked_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = CoordinatorMetrics::default();
        let handler = IngestHandler::new(store(dir.path()), metrics.clone());
        assert_eq!(handler.handle(&[0xff, 0xff, 0xff]), Decision::Ack);
        let count = metrics
            .ingest_errors
            .get_or_create(&crate::metrics::IngestErrorLabels {
                reason: IngestErrorReason::decode_error,
            })
            .get();
        assert_eq!(count, 1);
    }

    /// Stores and sends `values` as a worker does; the decisions.
    async fn store_and_send(handler: &IngestHandler, values: &[&[u8]]) -> Vec<Decision> {
        let (mut decisions, out) = handler.store_batch(values);
        let pending = handler.send_out(&out, &mut decisions);
        handler.await_deliveries(pending, &mut decisions).await;
        decisions
    }

    #[tokio::test]
    async fn a_policy_only_an_endpoint_has_is_sent_there_and_acked_once_accepted() {
        use crate::remote_out::testing;
        // The endpoint fails once, then accepts.
        let (url, requests) = testing::endpoint(vec![503]).await;
        let (out, metrics) = testing::start(
            &url,
            "    storagePolicy: {resolution: 1m, retention: 40d}\nretry:\n  initialBackoff: 10ms\n",
        );
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let handler =
            IngestHandler::new(store.clone(), metrics.clone()).with_remote_out(Some(Arc::new(out)));
        let only_endpoint = message(&tagged("a"), "1m:40d", 60_000_000_000, 3.0);
        let only_namespace = message(&tagged("b"), "10s:2d", 20_000_000_000, 1.0);
        let decisions = store_and_send(&handler, &[&only_endpoint, &only_namespace]).await;
        assert_eq!(decisions, vec![Decision::Ack, Decision::Ack]);
        assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(store.series_count("agg").unwrap(), 1);
        assert_eq!(metrics.ingest_stored.get(), 1);
    }

    #[tokio::test]
    async fn an_endpoint_that_does_not_take_a_metric_leaves_its_message_unacked() {
        use crate::remote_out::testing;
        let (url, _) = testing::endpoint(vec![503; 100]).await;
        let (out, metrics) = testing::start(
            &url,
            "    storagePolicy: {resolution: 10s, retention: 2d}\nretry:\n  initialBackoff: 10ms\n  maxRetries: 1\n",
        );
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let handler =
            IngestHandler::new(store.clone(), metrics.clone()).with_remote_out(Some(Arc::new(out)));
        let stored_and_sent = message(&tagged("a"), "10s:2d", 20_000_000_000, 1.0);
        let decisions = store_and_send(&handler, &[&stored_and_sent]).await;
        // Stored, but the endpoint did not take it: the aggregator sends it again.
        assert_eq!(decisions, vec![Decision::NoAck]);
        assert_eq!(store.series_count("agg").unwrap(), 1);
        let not_delivered = metrics
            .ingest_errors
            .get_or_create(&crate::metrics::IngestErrorLabels {
                reason: IngestErrorReason::remote_out_not_delivered,
            })
            .get();
        assert_eq!(not_delivered, 1);
    }

    #[test]
    fn opaque_ids_become_sanitized_names() {
        let labels = labels_of(b"stats.rpc-latency.p99").unwrap();
        assert_eq!(labels.get("__name__"), Some("stats_rpc_latency_p99"));
        assert!(labels_of(b"").is_none());
        assert_eq!(labels_of(&tagged("up")).unwrap().get("job"), Some("x"));
    }

    /// A tag-encoded ID from raw parts, in the order given (`encode_tags` keeps it too).
    fn id_of(tags: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut id = Vec::new();
        m3_metric::id::encode_tags(tags.iter().copied(), &mut id).unwrap();
        id
    }

    /// What `labels_of` gave before IDs in canonical form were copied at once: every tag
    /// decoded to owned strings (invalid UTF-8 replaced), then sorted and checked.
    fn labels_tag_by_tag(id: &[u8]) -> Option<Labels> {
        Labels::new(m3_metric::id::decode_tags(id).ok()?).ok()
    }

    proptest::proptest! {
        /// Whatever the tags (any order, repeated or empty names and values, bytes that are
        /// not UTF-8 or split a character across two parts), the labels are those of the
        /// tag-by-tag path, or none when it has none.
        #[test]
        fn labels_of_any_tags_are_those_decoded_tag_by_tag(
            tags in proptest::collection::vec(
                (
                    proptest::sample::select(vec![&b""[..], b"__name__", b"a", b"b", b"job", b"\xc3", b"\xa9"]),
                    proptest::sample::select(vec![&b""[..], b"x", b"up", b"\xc3", b"\xa9", b"\xc3\xa9", b"\xff"]),
                ),
                0..6,
            )
        ) {
            let id = id_of(&tags);
            proptest::prop_assert_eq!(labels_of(&id), labels_tag_by_tag(&id));
        }
    }

    #[test]
    fn truncated_tag_encoded_ids_have_no_labels() {
        let id = id_of(&[(b"__name__", b"up"), (b"job", b"api")]);
        for cut in 4..id.len() {
            assert_eq!(labels_of(&id[..cut]), None, "cut at {cut}");
        }
        assert!(labels_of(&id).is_some());
    }
}
