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

use std::sync::Arc;

use bytes::Bytes;
use m3_msg::{Decision, MessageHandler};
use m3_proto::Message;
use m3_proto::metricpb::AggregatedMetric;
use m3_storage::{Labels, Store};

use crate::metrics::{CoordinatorMetrics, IngestErrorReason};

/// Turns m3msg messages into stored samples.
#[derive(Clone)]
pub struct IngestHandler {
    store: Store,
    metrics: CoordinatorMetrics,
}

impl IngestHandler {
    /// A handler storing into `store`.
    pub fn new(store: Store, metrics: CoordinatorMetrics) -> IngestHandler {
        IngestHandler { store, metrics }
    }

    /// The m3msg handler: each message is stored on a blocking thread, then acked or not.
    pub fn into_message_handler(self) -> Arc<dyn MessageHandler> {
        let handler = Arc::new(self);
        m3_msg::handler_fn(move |value: Bytes, _metadata| {
            let handler = Arc::clone(&handler);
            async move {
                tokio::task::spawn_blocking(move || handler.handle(&value))
                    .await
                    .unwrap_or(Decision::NoAck)
            }
        })
    }

    /// Stores one `AggregatedMetric` payload and says whether to ack it.
    pub fn handle(&self, value: &[u8]) -> Decision {
        self.metrics.ingest_received.inc();
        let Ok(message) = AggregatedMetric::decode(value) else {
            self.metrics.ingest_error(IngestErrorReason::decode_error);
            tracing::warn!(
                bytes = value.len(),
                "Aggregated metric does not decode; dropping it."
            );
            return Decision::Ack;
        };
        let Some(metric) = message.metric else {
            self.metrics.ingest_error(IngestErrorReason::decode_error);
            return Decision::Ack;
        };
        let (Some(timed), Some(policy)) = (metric.timed_metric, metric.storage_policy) else {
            self.metrics.ingest_error(IngestErrorReason::decode_error);
            return Decision::Ack;
        };
        let Some(policy) = m3_metric::StoragePolicy::from_proto(&policy) else {
            self.metrics.ingest_error(IngestErrorReason::decode_error);
            return Decision::Ack;
        };
        let namespace = match self
            .store
            .namespaces()
            .namespace_for(policy.resolution.window, policy.retention.0)
        {
            Ok(ns) => ns.name.clone(),
            Err(e) => {
                self.metrics.ingest_error(IngestErrorReason::no_namespace);
                tracing::warn!(policy = %policy, error = %e, "No namespace for aggregated metric; leaving it un-acked for redelivery.");
                return Decision::NoAck;
            }
        };
        let Some(labels) = labels_of(&timed.id) else {
            self.metrics.ingest_error(IngestErrorReason::invalid_id);
            return Decision::Ack;
        };
        let time_ms = timed.time_nanos.div_euclid(1_000_000);
        match self
            .store
            .write_batch(&namespace, &[(&labels, time_ms, timed.value)])
        {
            Ok(_) => {
                self.metrics.ingest_stored.inc();
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
}

/// The labels of a metric ID.
pub fn labels_of(id: &[u8]) -> Option<Labels> {
    if m3_metric::id::is_tag_encoded(id) {
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

    #[test]
    fn opaque_ids_become_sanitized_names() {
        let labels = labels_of(b"stats.rpc-latency.p99").unwrap();
        assert_eq!(labels.get("__name__"), Some("stats_rpc_latency_p99"));
        assert!(labels_of(b"").is_none());
        assert_eq!(labels_of(&tagged("up")).unwrap().get("job"), Some("x"));
    }
}
