//! m3msg topics: who consumes a stream of messages, and how.
//!
//! A [`Topic`] names a message stream (`aggregated_metrics`, `aggregator_ingest`), its number of
//! shards, and its consumer services. Each [`ConsumerService`] is a placement-backed service
//! (`m3coordinator`, `m3aggregator`) with a [`ConsumptionType`]: SHARED sends each message to one
//! owner of its shard, REPLICATED to every owner. The model converts to and from
//! `topicpb.Topic` without loss so topics written by M3 read back unchanged.
//!
//! [`TopicStore`] keeps topics in KV under `/topic/<env>/<name>` (see [`crate::keys::topic_key`])
//! with M3's admin semantics: `init` refuses an existing topic, adding a consumer service refuses
//! a duplicate or an UNKNOWN consumption type, replacing consumer services is check-and-set
//! against the version the caller read.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use bytes::Bytes;
use m3_proto::topicpb;
use prost::Message;

use crate::keys::{ServiceId, topic_key};
use crate::kv::{DecodedWatch, KvError, KvStore, Versioned, watch_decoded};

/// How a consumer service receives a topic's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConsumptionType {
    /// Not set; rejected when adding a consumer service, kept when read from KV.
    Unknown,
    /// Each message goes to one instance owning its shard (coordinators).
    Shared,
    /// Each message goes to every instance owning its shard (aggregators).
    Replicated,
}

impl ConsumptionType {
    /// M3's name: `UNKNOWN`, `SHARED` or `REPLICATED`.
    pub fn as_str(self) -> &'static str {
        self.to_proto().as_str_name()
    }

    fn to_proto(self) -> topicpb::ConsumptionType {
        match self {
            ConsumptionType::Unknown => topicpb::ConsumptionType::Unknown,
            ConsumptionType::Shared => topicpb::ConsumptionType::Shared,
            ConsumptionType::Replicated => topicpb::ConsumptionType::Replicated,
        }
    }

    fn from_proto(value: i32) -> Self {
        match topicpb::ConsumptionType::try_from(value) {
            Ok(topicpb::ConsumptionType::Shared) => ConsumptionType::Shared,
            Ok(topicpb::ConsumptionType::Replicated) => ConsumptionType::Replicated,
            Ok(topicpb::ConsumptionType::Unknown) | Err(_) => ConsumptionType::Unknown,
        }
    }
}

impl fmt::Display for ConsumptionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ConsumptionType {
    type Err = TopicError;

    /// Parses `SHARED` or `REPLICATED` (any case; `UNKNOWN` too).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "SHARED" => Ok(ConsumptionType::Shared),
            "REPLICATED" => Ok(ConsumptionType::Replicated),
            "UNKNOWN" => Ok(ConsumptionType::Unknown),
            _ => Err(TopicError::InvalidConsumptionType {
                value: s.to_owned(),
            }),
        }
    }
}

/// A service consuming a topic.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerService {
    /// The consuming service; its placement maps shards to instances.
    pub service_id: ServiceId,
    /// SHARED or REPLICATED.
    pub consumption_type: ConsumptionType,
    /// How long the producer retries a message for this service; 0 = forever.
    pub message_ttl_nanos: i64,
    /// M3's optional message filters, kept as stored.
    pub filters: Option<topicpb::Filters>,
}

impl ConsumerService {
    /// A consumer service without TTL or filters.
    pub fn new(service_id: ServiceId, consumption_type: ConsumptionType) -> Self {
        ConsumerService {
            service_id,
            consumption_type,
            message_ttl_nanos: 0,
            filters: None,
        }
    }

    fn to_proto(&self) -> topicpb::ConsumerService {
        topicpb::ConsumerService {
            service_id: Some(topicpb::ServiceId {
                name: self.service_id.name.clone(),
                environment: self.service_id.environment.clone(),
                zone: self.service_id.zone.clone(),
            }),
            consumption_type: self.consumption_type.to_proto() as i32,
            message_ttl_nanos: self.message_ttl_nanos,
            filters: self.filters.clone(),
        }
    }

    fn from_proto(pb: topicpb::ConsumerService) -> Self {
        let sid = pb.service_id.unwrap_or_default();
        ConsumerService {
            service_id: ServiceId::new(sid.name, sid.environment, sid.zone),
            consumption_type: ConsumptionType::from_proto(pb.consumption_type),
            message_ttl_nanos: pb.message_ttl_nanos,
            filters: pb.filters,
        }
    }
}

/// An m3msg topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Topic {
    /// Name, e.g. `aggregated_metrics`.
    pub name: String,
    /// Number of shards messages are spread over.
    pub number_of_shards: u32,
    /// Who consumes the topic.
    pub consumer_services: Vec<ConsumerService>,
}

impl Topic {
    /// A topic without consumer services.
    pub fn new(name: impl Into<String>, number_of_shards: u32) -> Self {
        Topic {
            name: name.into(),
            number_of_shards,
            consumer_services: Vec::new(),
        }
    }

    /// The consumer service for a service ID, if any.
    pub fn consumer_service(&self, service_id: &ServiceId) -> Option<&ConsumerService> {
        self.consumer_services
            .iter()
            .find(|c| c.service_id == *service_id)
    }

    /// Checks the topic: a name, at least one shard, consumer services with a name, a known
    /// consumption type, a non-negative TTL, and no service listed twice.
    ///
    /// # Errors
    /// The matching [`TopicError`] variant.
    pub fn validate(&self) -> Result<(), TopicError> {
        if self.name.is_empty() {
            return Err(TopicError::EmptyName);
        }
        if self.number_of_shards == 0 {
            return Err(TopicError::ZeroShards {
                name: self.name.clone(),
            });
        }
        for (idx, c) in self.consumer_services.iter().enumerate() {
            if c.service_id.name.is_empty() {
                return Err(TopicError::InvalidConsumerService {
                    service: format!("at position {idx}"),
                    reason: "service name is empty".into(),
                });
            }
            if c.consumption_type == ConsumptionType::Unknown {
                return Err(TopicError::InvalidConsumerService {
                    service: describe(&c.service_id),
                    reason: "consumption type must be SHARED or REPLICATED".into(),
                });
            }
            if c.message_ttl_nanos < 0 {
                return Err(TopicError::InvalidConsumerService {
                    service: describe(&c.service_id),
                    reason: format!("message TTL {}ns is negative", c.message_ttl_nanos),
                });
            }
            if self.consumer_services[..idx]
                .iter()
                .any(|o| o.service_id == c.service_id)
            {
                return Err(TopicError::ConsumerServiceExists {
                    topic: self.name.clone(),
                    service: describe(&c.service_id),
                });
            }
        }
        Ok(())
    }

    /// The protobuf form, as stored in KV.
    pub fn to_proto(&self) -> topicpb::Topic {
        topicpb::Topic {
            name: self.name.clone(),
            number_of_shards: self.number_of_shards,
            consumer_services: self
                .consumer_services
                .iter()
                .map(ConsumerService::to_proto)
                .collect(),
        }
    }

    /// Reads the protobuf form. A missing service ID reads as an empty one and an unknown
    /// consumption type as [`ConsumptionType::Unknown`]; [`Topic::validate`] reports both.
    pub fn from_proto(pb: topicpb::Topic) -> Self {
        Topic {
            name: pb.name,
            number_of_shards: pb.number_of_shards,
            consumer_services: pb
                .consumer_services
                .into_iter()
                .map(ConsumerService::from_proto)
                .collect(),
        }
    }

    /// Protobuf bytes, as stored in KV.
    pub fn encode(&self) -> Bytes {
        Bytes::from(self.to_proto().encode_to_vec())
    }

    /// Reads protobuf bytes.
    ///
    /// # Errors
    /// [`TopicError::Decode`] when the bytes are not a topic.
    pub fn decode(bytes: &[u8]) -> Result<Self, TopicError> {
        topicpb::Topic::decode(bytes)
            .map(Topic::from_proto)
            .map_err(|e| TopicError::Decode {
                reason: e.to_string(),
            })
    }
}

impl From<topicpb::Topic> for Topic {
    fn from(pb: topicpb::Topic) -> Self {
        Topic::from_proto(pb)
    }
}

impl From<&Topic> for topicpb::Topic {
    fn from(t: &Topic) -> Self {
        t.to_proto()
    }
}

fn describe(s: &ServiceId) -> String {
    format!(
        "{}/{}/{} (name/environment/zone)",
        s.name, s.environment, s.zone
    )
}

/// Errors of topics and the [`TopicStore`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The topic has no name.
    #[error("topic name is empty")]
    EmptyName,
    /// The topic has no shards.
    #[error("topic {name:?} needs at least 1 shard (numberOfShards), got 0")]
    ZeroShards {
        /// Topic name.
        name: String,
    },
    /// `init` found the topic already stored.
    #[error("topic {name:?} already exists")]
    AlreadyExists {
        /// Topic name.
        name: String,
    },
    /// No topic with this name.
    #[error("topic {name:?} not found")]
    NotFound {
        /// Topic name.
        name: String,
    },
    /// A consumer service for this service already exists.
    #[error("topic {topic:?} already has a consumer service for {service}")]
    ConsumerServiceExists {
        /// Topic name.
        topic: String,
        /// The service.
        service: String,
    },
    /// A consumer service is malformed.
    #[error("invalid consumer service {service}: {reason}")]
    InvalidConsumerService {
        /// The service.
        service: String,
        /// What is wrong.
        reason: String,
    },
    /// A consumption type string is not SHARED or REPLICATED.
    #[error("unknown consumption type {value:?}; expected SHARED or REPLICATED")]
    InvalidConsumptionType {
        /// The input.
        value: String,
    },
    /// The topic changed since the caller read it.
    #[error(
        "topic {name:?} changed: expected version {expected}, found {actual}; read it again and retry"
    )]
    VersionMismatch {
        /// Topic name.
        name: String,
        /// The version the caller expected.
        expected: i64,
        /// The stored version (0 when absent).
        actual: i64,
    },
    /// The stored bytes are not a topic.
    #[error("topic does not decode: {reason}")]
    Decode {
        /// The decoder's message.
        reason: String,
    },
    /// The KV backend failed.
    #[error(transparent)]
    Kv(KvError),
}

impl TopicError {
    /// True when the error is the caller's mistake or a conflict the caller can resolve (4xx);
    /// false for decode and backend failures.
    pub fn is_invalid_input(&self) -> bool {
        !matches!(self, TopicError::Decode { .. } | TopicError::Kv(_))
    }

    fn from_kv(name: &str, e: KvError) -> Self {
        match e {
            KvError::AlreadyExists { .. } => TopicError::AlreadyExists {
                name: name.to_owned(),
            },
            KvError::VersionMismatch {
                expected, actual, ..
            } => TopicError::VersionMismatch {
                name: name.to_owned(),
                expected,
                actual,
            },
            other => TopicError::Kv(other),
        }
    }
}

/// Topics of one environment in KV.
#[derive(Clone)]
pub struct TopicStore {
    kv: Arc<dyn KvStore>,
    environment: String,
}

impl fmt::Debug for TopicStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TopicStore")
            .field("environment", &self.environment)
            .finish_non_exhaustive()
    }
}

impl TopicStore {
    /// A store for the topics of `environment` (e.g. `default_env`).
    pub fn new(kv: Arc<dyn KvStore>, environment: impl Into<String>) -> Self {
        TopicStore {
            kv,
            environment: environment.into(),
        }
    }

    /// The KV key of a topic.
    pub fn key(&self, name: &str) -> String {
        topic_key(&self.environment, name)
    }

    /// Creates a topic with no consumer services; returns it at version 1.
    ///
    /// # Errors
    /// [`TopicError::AlreadyExists`], [`TopicError::EmptyName`], [`TopicError::ZeroShards`],
    /// [`TopicError::Kv`].
    pub async fn init(
        &self,
        name: &str,
        number_of_shards: u32,
    ) -> Result<Versioned<Topic>, TopicError> {
        let topic = Topic::new(name, number_of_shards);
        topic.validate()?;
        let version = self
            .kv
            .set_if_not_exists(&self.key(name), topic.encode())
            .await
            .map_err(|e| TopicError::from_kv(name, e))?;
        Ok(Versioned {
            value: topic,
            version,
        })
    }

    /// A topic and its version, `None` when absent.
    ///
    /// # Errors
    /// [`TopicError::Decode`], [`TopicError::Kv`].
    pub async fn get(&self, name: &str) -> Result<Option<Versioned<Topic>>, TopicError> {
        let stored = self
            .kv
            .get(&self.key(name))
            .await
            .map_err(|e| TopicError::from_kv(name, e))?;
        stored
            .map(|v| {
                Ok(Versioned {
                    value: Topic::decode(&v.value)?,
                    version: v.version,
                })
            })
            .transpose()
    }

    /// Writes a topic if it is still at `expected_version`; returns the new version.
    ///
    /// # Errors
    /// [`TopicError::VersionMismatch`], validation errors of [`Topic::validate`],
    /// [`TopicError::Kv`].
    pub async fn check_and_set(
        &self,
        topic: &Topic,
        expected_version: i64,
    ) -> Result<i64, TopicError> {
        topic.validate()?;
        self.kv
            .check_and_set(&self.key(&topic.name), expected_version, topic.encode())
            .await
            .map_err(|e| TopicError::from_kv(&topic.name, e))
    }

    /// Adds a consumer service to an existing topic (read, then check-and-set).
    ///
    /// # Errors
    /// [`TopicError::NotFound`], [`TopicError::ConsumerServiceExists`],
    /// [`TopicError::InvalidConsumerService`] (e.g. UNKNOWN consumption type),
    /// [`TopicError::VersionMismatch`] when the topic changed concurrently, [`TopicError::Decode`],
    /// [`TopicError::Kv`].
    pub async fn add_consumer_service(
        &self,
        name: &str,
        service: ConsumerService,
    ) -> Result<Versioned<Topic>, TopicError> {
        let current = self.get(name).await?.ok_or_else(|| TopicError::NotFound {
            name: name.to_owned(),
        })?;
        let mut topic = current.value;
        if topic.consumer_service(&service.service_id).is_some() {
            return Err(TopicError::ConsumerServiceExists {
                topic: name.to_owned(),
                service: describe(&service.service_id),
            });
        }
        topic.consumer_services.push(service);
        let version = self.check_and_set(&topic, current.version).await?;
        Ok(Versioned {
            value: topic,
            version,
        })
    }

    /// Replaces a topic's consumer services if the topic is still at `expected_version`.
    ///
    /// # Errors
    /// [`TopicError::NotFound`], [`TopicError::VersionMismatch`], validation errors,
    /// [`TopicError::Decode`], [`TopicError::Kv`].
    pub async fn replace_consumer_services(
        &self,
        name: &str,
        services: Vec<ConsumerService>,
        expected_version: i64,
    ) -> Result<Versioned<Topic>, TopicError> {
        let current = self.get(name).await?.ok_or_else(|| TopicError::NotFound {
            name: name.to_owned(),
        })?;
        let mut topic = current.value;
        topic.consumer_services = services;
        let version = self.check_and_set(&topic, expected_version).await?;
        Ok(Versioned {
            value: topic,
            version,
        })
    }

    /// Deletes a topic and returns what was stored.
    ///
    /// # Errors
    /// [`TopicError::NotFound`], [`TopicError::Decode`], [`TopicError::Kv`].
    pub async fn delete(&self, name: &str) -> Result<Versioned<Topic>, TopicError> {
        let previous = self
            .kv
            .delete(&self.key(name))
            .await
            .map_err(|e| TopicError::from_kv(name, e))?
            .ok_or_else(|| TopicError::NotFound {
                name: name.to_owned(),
            })?;
        Ok(Versioned {
            value: Topic::decode(&previous.value)?,
            version: previous.version,
        })
    }

    /// Watches a topic: the receiver holds the current topic (`None` when absent) and every
    /// later one. Values that do not decode are logged and skipped.
    ///
    /// # Errors
    /// [`TopicError::Kv`] when the watch cannot be established.
    ///
    /// # Panics
    /// Spawns a task, so it must be called within a Tokio runtime.
    pub async fn watch(&self, name: &str) -> Result<DecodedWatch<Topic>, TopicError> {
        let raw = self
            .kv
            .watch(&self.key(name))
            .await
            .map_err(|e| TopicError::from_kv(name, e))?;
        Ok(watch_decoded(raw, "topic", |b| Topic::decode(b)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::memory::MemoryKv;

    fn coordinators() -> ConsumerService {
        ConsumerService {
            message_ttl_nanos: 300_000_000_000,
            ..ConsumerService::new(
                ServiceId::new("m3coordinator", "default_env", "embedded"),
                ConsumptionType::Shared,
            )
        }
    }

    #[test]
    fn proto_round_trip_and_parsing() {
        let mut t = Topic::new("aggregated_metrics", 64);
        let mut cs = coordinators();
        cs.filters = Some(topicpb::Filters {
            percentage_filter: Some(topicpb::PercentageFilter { percentage: 50.0 }),
            ..Default::default()
        });
        t.consumer_services.push(cs);
        assert_eq!(Topic::decode(&t.encode()).unwrap(), t);
        assert_eq!("replicated".parse(), Ok(ConsumptionType::Replicated));
        assert_eq!("SHARED".parse(), Ok(ConsumptionType::Shared));
        assert!("both".parse::<ConsumptionType>().is_err());
        assert!(matches!(
            Topic::decode(b"\xff\xff"),
            Err(TopicError::Decode { .. })
        ));
        let unknown = topicpb::Topic {
            name: "t".into(),
            number_of_shards: 1,
            consumer_services: vec![topicpb::ConsumerService {
                consumption_type: 99,
                ..Default::default()
            }],
        };
        let t = Topic::from_proto(unknown);
        assert_eq!(
            t.consumer_services[0].consumption_type,
            ConsumptionType::Unknown
        );
        assert!(t.validate().is_err());
    }

    #[tokio::test]
    async fn store_lifecycle() {
        let store = TopicStore::new(Arc::new(MemoryKv::new()), "default_env");
        assert_eq!(
            store.key("aggregated_metrics"),
            "/topic/default_env/aggregated_metrics"
        );
        assert_eq!(store.get("aggregated_metrics").await.unwrap(), None);
        let mut watch = store.watch("aggregated_metrics").await.unwrap();

        let t = store.init("aggregated_metrics", 64).await.unwrap();
        assert_eq!(t.version, 1);
        assert!(matches!(
            store.init("aggregated_metrics", 64).await,
            Err(TopicError::AlreadyExists { .. })
        ));
        assert!(matches!(
            store.init("other", 0).await,
            Err(TopicError::ZeroShards { .. })
        ));

        let added = store
            .add_consumer_service("aggregated_metrics", coordinators())
            .await
            .unwrap();
        assert_eq!(added.version, 2);
        assert!(matches!(
            store
                .add_consumer_service("aggregated_metrics", coordinators())
                .await,
            Err(TopicError::ConsumerServiceExists { .. })
        ));
        let unknown = ConsumerService::new(
            ServiceId::new("m3aggregator", "default_env", "embedded"),
            ConsumptionType::Unknown,
        );
        let err = store
            .add_consumer_service("aggregated_metrics", unknown)
            .await
            .unwrap_err();
        assert!(matches!(err, TopicError::InvalidConsumerService { .. }));
        assert!(matches!(
            store.add_consumer_service("missing", coordinators()).await,
            Err(TopicError::NotFound { .. })
        ));
        watch
            .wait_for(|v| v.as_ref().is_some_and(|v| v.version == 2))
            .await
            .unwrap();

        let replicated = ConsumerService::new(
            ServiceId::new("m3aggregator", "default_env", "embedded"),
            ConsumptionType::Replicated,
        );
        assert!(matches!(
            store
                .replace_consumer_services("aggregated_metrics", vec![replicated.clone()], 1)
                .await,
            Err(TopicError::VersionMismatch {
                expected: 1,
                actual: 2,
                ..
            })
        ));
        let replaced = store
            .replace_consumer_services("aggregated_metrics", vec![replicated.clone()], 2)
            .await
            .unwrap();
        assert_eq!(replaced.version, 3);
        let got = store.get("aggregated_metrics").await.unwrap().unwrap();
        assert_eq!(got.value.consumer_services, vec![replicated]);

        assert_eq!(store.delete("aggregated_metrics").await.unwrap().version, 3);
        assert!(matches!(
            store.delete("aggregated_metrics").await,
            Err(TopicError::NotFound { .. })
        ));
        watch.wait_for(Option::is_none).await.unwrap();
    }
}
