//! Requests and responses in jsonpb's shapes (see the parent module's "JSON" section): field
//! names in both forms, integers as numbers or strings, enums as names or numbers on the way in;
//! lowerCamelCase with every field and 64-bit integers as strings on the way out.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use crate::limits::PlacementLimits;
use axum::Json;
use axum::response::{IntoResponse, Response};
use m3_cluster::Versioned;
use m3_cluster::keys::ServiceId;
use m3_cluster::placement::{Instance, InstanceMetadata, Placement, Shard, ShardState};
use m3_cluster::topic::{ConsumerService, ConsumptionType, Topic};
use m3_proto::topicpb;
use serde::de::{self, DeserializeOwned, Deserializer, Unexpected, Visitor};
use serde::{Deserialize, Serialize};

use super::*;

/// Parses a request body. Like jsonpb, only a JSON object is a message: serde would also read a
/// struct from an array of its fields in order, which no M3 client sends on purpose.
pub(super) fn parse<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, AdminError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        None => {
            return Err(AdminError::BadRequest(format!(
                "invalid {what}: the body is empty; expected a JSON object"
            )));
        }
        Some(_) => {
            return Err(AdminError::BadRequest(format!(
                "invalid {what}: expected a JSON object starting with '{{'"
            )));
        }
    }
    serde_json::from_slice(body).map_err(|e| AdminError::BadRequest(format!("invalid {what}: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Requests (jsonpb-compatible parsing)
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PlacementInitRequest {
    #[serde(default)]
    pub(super) instances: Vec<InstanceRequest>,
    #[serde(
        default,
        rename = "numShards",
        alias = "num_shards",
        deserialize_with = "int"
    )]
    pub(super) num_shards: u32,
    #[serde(
        default,
        rename = "replicationFactor",
        alias = "replication_factor",
        deserialize_with = "int"
    )]
    pub(super) replication_factor: u32,
    #[serde(default, rename = "optionOverride", alias = "option_override")]
    pub(super) option_override: Option<OptionsRequest>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PlacementAddRequest {
    #[serde(default)]
    pub(super) instances: Vec<InstanceRequest>,
    /// Accepted; force never skips the cutover and cutoff checks (see the module docs).
    #[serde(default, rename = "force")]
    pub(super) _force: bool,
    #[serde(default, rename = "optionOverride", alias = "option_override")]
    pub(super) option_override: Option<OptionsRequest>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PlacementRemoveRequest {
    #[serde(default, rename = "instanceIds", alias = "instance_ids")]
    pub(super) instance_ids: Vec<String>,
    /// Accepted; force never skips the cutover and cutoff checks (see the module docs).
    #[serde(default, rename = "force")]
    pub(super) _force: bool,
    #[serde(default, rename = "optionOverride", alias = "option_override")]
    pub(super) option_override: Option<OptionsRequest>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PlacementReplaceRequest {
    #[serde(
        default,
        rename = "leavingInstanceIDs",
        alias = "leavingInstanceIds",
        alias = "leaving_instance_ids"
    )]
    pub(super) leaving_instance_ids: Vec<String>,
    #[serde(default)]
    pub(super) candidates: Vec<InstanceRequest>,
    /// Accepted; force never skips the cutover and cutoff checks (see the module docs).
    #[serde(default, rename = "force")]
    pub(super) _force: bool,
    #[serde(default, rename = "optionOverride", alias = "option_override")]
    pub(super) option_override: Option<OptionsRequest>,
}

/// `POST ../placement/set`: M3's `PlacementSetRequest`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PlacementSetRequest {
    pub(super) placement: PlacementRequest,
    #[serde(default, deserialize_with = "int")]
    pub(super) version: i64,
    #[serde(default)]
    pub(super) confirm: bool,
    /// Accepted; the placement is validated all the same (see the module docs).
    #[serde(default, rename = "force")]
    pub(super) _force: bool,
}

/// A whole placement, as GET answers it (`placementpb.Placement`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PlacementRequest {
    #[serde(default)]
    pub(super) instances: BTreeMap<String, InstanceRequest>,
    #[serde(
        default,
        rename = "replicaFactor",
        alias = "replica_factor",
        deserialize_with = "int"
    )]
    pub(super) replica_factor: u32,
    #[serde(
        default,
        rename = "numShards",
        alias = "num_shards",
        deserialize_with = "int"
    )]
    pub(super) num_shards: u32,
    #[serde(default, rename = "isSharded", alias = "is_sharded")]
    pub(super) is_sharded: bool,
    #[serde(
        default,
        rename = "cutoverTime",
        alias = "cutover_time",
        deserialize_with = "int"
    )]
    pub(super) cutover_time: i64,
    #[serde(default, rename = "isMirrored", alias = "is_mirrored")]
    pub(super) is_mirrored: bool,
    #[serde(
        default,
        rename = "maxShardSetId",
        alias = "max_shard_set_id",
        deserialize_with = "int"
    )]
    pub(super) max_shard_set_id: u32,
    #[serde(default, rename = "isSubclustered", alias = "is_subclustered")]
    pub(super) is_subclustered: bool,
    #[serde(
        default,
        rename = "instancesPerSubcluster",
        alias = "instances_per_subcluster",
        deserialize_with = "int"
    )]
    pub(super) instances_per_subcluster: u32,
}

/// `placementpb.Options`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OptionsRequest {
    #[serde(default, rename = "isSharded", alias = "is_sharded")]
    pub(super) is_sharded: Option<bool>,
    /// Accepted for compatibility; shard sets never depend on ports here.
    #[serde(default, rename = "skipPortMirroring", alias = "skip_port_mirroring")]
    pub(super) _skip_port_mirroring: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct InstanceRequest {
    #[serde(default)]
    pub(super) id: String,
    #[serde(default, rename = "isolationGroup", alias = "isolation_group")]
    pub(super) isolation_group: String,
    #[serde(default)]
    pub(super) zone: String,
    #[serde(default, deserialize_with = "int")]
    pub(super) weight: u32,
    #[serde(default)]
    pub(super) endpoint: String,
    #[serde(default)]
    pub(super) shards: Vec<ShardRequest>,
    #[serde(
        default,
        rename = "shardSetId",
        alias = "shard_set_id",
        deserialize_with = "int"
    )]
    pub(super) shard_set_id: u32,
    #[serde(default)]
    pub(super) hostname: String,
    #[serde(default, deserialize_with = "int")]
    pub(super) port: u32,
    #[serde(default)]
    pub(super) metadata: Option<MetadataRequest>,
    #[serde(
        default,
        rename = "subclusterId",
        alias = "subcluster_id",
        deserialize_with = "int"
    )]
    pub(super) subcluster_id: u32,
}

impl InstanceRequest {
    pub(super) fn into_instance(self, default_zone: &str) -> Instance {
        let mut shards: Vec<Shard> = self
            .shards
            .into_iter()
            .map(ShardRequest::into_shard)
            .collect();
        shards.sort_by_key(|s| s.id);
        Instance {
            id: self.id,
            isolation_group: self.isolation_group,
            zone: if self.zone.is_empty() {
                default_zone.to_owned()
            } else {
                self.zone
            },
            weight: self.weight,
            endpoint: self.endpoint,
            hostname: self.hostname,
            port: self.port,
            shard_set_id: self.shard_set_id,
            shards,
            metadata: self.metadata.map(|m| InstanceMetadata {
                debug_port: m.debug_port,
            }),
            subcluster_id: self.subcluster_id,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MetadataRequest {
    #[serde(
        default,
        rename = "debugPort",
        alias = "debug_port",
        deserialize_with = "int"
    )]
    pub(super) debug_port: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ShardRequest {
    #[serde(default, deserialize_with = "int")]
    pub(super) id: u32,
    #[serde(default = "initializing", deserialize_with = "shard_state")]
    pub(super) state: ShardState,
    #[serde(default, rename = "sourceId", alias = "source_id")]
    pub(super) source_id: String,
    #[serde(
        default,
        rename = "cutoverNanos",
        alias = "cutover_nanos",
        deserialize_with = "int"
    )]
    pub(super) cutover_nanos: i64,
    #[serde(
        default,
        rename = "cutoffNanos",
        alias = "cutoff_nanos",
        deserialize_with = "int"
    )]
    pub(super) cutoff_nanos: i64,
    #[serde(
        default,
        rename = "redirectToShardId",
        alias = "redirect_to_shard_id",
        deserialize_with = "optional_int"
    )]
    pub(super) redirect_to_shard_id: Option<u32>,
}

impl ShardRequest {
    pub(super) fn into_shard(self) -> Shard {
        Shard {
            id: self.id,
            state: self.state,
            source_id: self.source_id,
            cutover_nanos: self.cutover_nanos,
            cutoff_nanos: self.cutoff_nanos,
            redirect_to_shard_id: self.redirect_to_shard_id,
        }
    }
}

pub(super) fn initializing() -> ShardState {
    ShardState::Initializing
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TopicInitRequest {
    #[serde(
        default,
        rename = "numberOfShards",
        alias = "number_of_shards",
        deserialize_with = "int"
    )]
    pub(super) number_of_shards: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TopicAddRequest {
    #[serde(default, rename = "consumerService", alias = "consumer_service")]
    pub(super) consumer_service: Option<ConsumerServiceRequest>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TopicUpdateRequest {
    #[serde(default, rename = "consumerServices", alias = "consumer_services")]
    pub(super) consumer_services: Vec<ConsumerServiceRequest>,
    #[serde(default, deserialize_with = "int")]
    pub(super) version: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConsumerServiceRequest {
    #[serde(default, rename = "serviceId", alias = "service_id")]
    pub(super) service_id: Option<ServiceIdRequest>,
    #[serde(
        default = "unknown_consumption",
        rename = "consumptionType",
        alias = "consumption_type",
        deserialize_with = "consumption_type"
    )]
    pub(super) consumption_type: ConsumptionType,
    #[serde(
        default,
        rename = "messageTtlNanos",
        alias = "message_ttl_nanos",
        deserialize_with = "int"
    )]
    pub(super) message_ttl_nanos: i64,
    #[serde(default)]
    pub(super) filters: Option<FiltersRequest>,
}

impl ConsumerServiceRequest {
    /// The consumer service, its service ID's name, environment and zone checked against
    /// `limits.placement.maxIdLength`.
    pub(super) fn into_consumer_service(
        self,
        limits: &PlacementLimits,
    ) -> Result<ConsumerService, AdminError> {
        let sid = self.service_id.unwrap_or_default();
        check_length("serviceId.name", &sid.name, limits.max_id_length)?;
        check_length(
            "serviceId.environment",
            &sid.environment,
            limits.max_id_length,
        )?;
        check_length("serviceId.zone", &sid.zone, limits.max_id_length)?;
        Ok(ConsumerService {
            service_id: ServiceId::new(sid.name, sid.environment, sid.zone),
            consumption_type: self.consumption_type,
            message_ttl_nanos: self.message_ttl_nanos,
            filters: self.filters.map(FiltersRequest::into_proto),
        })
    }
}

pub(super) fn unknown_consumption() -> ConsumptionType {
    ConsumptionType::Unknown
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ServiceIdRequest {
    #[serde(default)]
    pub(super) name: String,
    #[serde(default)]
    pub(super) environment: String,
    #[serde(default)]
    pub(super) zone: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FiltersRequest {
    #[serde(
        default,
        rename = "storagePolicyFilter",
        alias = "storage_policy_filter"
    )]
    pub(super) storage_policy_filter: Option<StoragePolicyFilterJson>,
    #[serde(default, rename = "percentageFilter", alias = "percentage_filter")]
    pub(super) percentage_filter: Option<PercentageFilterJson>,
    #[serde(default, rename = "shardSetFilter", alias = "shard_set_filter")]
    pub(super) shard_set_filter: Option<ShardSetFilterJson>,
    #[serde(
        default,
        rename = "routingPolicyFilter",
        alias = "routing_policy_filter"
    )]
    pub(super) routing_policy_filter: Option<RoutingPolicyFilterJson>,
}

impl FiltersRequest {
    pub(super) fn into_proto(self) -> topicpb::Filters {
        topicpb::Filters {
            storage_policy_filter: self.storage_policy_filter.map(|f| {
                topicpb::StoragePolicyFilter {
                    storage_policies: f.storage_policies,
                }
            }),
            percentage_filter: self.percentage_filter.map(|f| topicpb::PercentageFilter {
                percentage: f.percentage,
            }),
            shard_set_filter: self.shard_set_filter.map(|f| topicpb::ShardSetFilter {
                shard_set: f.shard_set,
            }),
            routing_policy_filter: self.routing_policy_filter.map(|f| {
                topicpb::RoutingPolicyFilter {
                    allowed_traffic_types: f.allowed_traffic_types,
                    is_default: f.is_default,
                }
            }),
        }
    }
}

// The filter messages have the same shape in requests and responses.

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StoragePolicyFilterJson {
    #[serde(default, rename = "storagePolicies", alias = "storage_policies")]
    pub(super) storage_policies: Vec<String>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PercentageFilterJson {
    #[serde(default)]
    pub(super) percentage: f64,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ShardSetFilterJson {
    #[serde(default, rename = "shardSet", alias = "shard_set")]
    pub(super) shard_set: String,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RoutingPolicyFilterJson {
    #[serde(
        default,
        rename = "allowedTrafficTypes",
        alias = "allowed_traffic_types"
    )]
    pub(super) allowed_traffic_types: Vec<String>,
    #[serde(default, rename = "isDefault", alias = "is_default")]
    pub(super) is_default: bool,
}

/// An integer as jsonpb reads it: a JSON number or a decimal string; `null` is the default.
pub(super) fn int<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i128> + Default,
{
    d.deserialize_any(IntVisitor(PhantomData))
}

/// Like [`int`] for an optional wrapper value (`google.protobuf.UInt32Value`).
pub(super) fn optional_int<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i128> + Default,
{
    Option::<IntOrString<T>>::deserialize(d).map(|v| v.map(|v| v.0))
}

pub(super) struct IntOrString<T>(T);

impl<'de, T: TryFrom<i128> + Default> Deserialize<'de> for IntOrString<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        int(d).map(IntOrString)
    }
}

pub(super) struct IntVisitor<T>(PhantomData<T>);

impl<T: TryFrom<i128>> IntVisitor<T> {
    pub(super) fn fit<E: de::Error>(n: i128) -> Result<T, E> {
        T::try_from(n).map_err(|_| {
            E::custom(format!(
                "{n} is out of range for {}",
                std::any::type_name::<T>()
            ))
        })
    }
}

impl<T: TryFrom<i128> + Default> Visitor<'_> for IntVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer, as a number or a string")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        Self::fit(i128::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        Self::fit(i128::from(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        match v.parse::<i128>() {
            Ok(n) => Self::fit(n),
            Err(_) => Err(E::invalid_value(Unexpected::Str(v), &self)),
        }
    }

    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        Ok(T::default())
    }
}

/// A shard state by name (`INITIALIZING`, `AVAILABLE`, `LEAVING`) or number (0, 1, 2).
pub(super) fn shard_state<'de, D: Deserializer<'de>>(d: D) -> Result<ShardState, D::Error> {
    const NAMES: &[&str] = &["INITIALIZING", "AVAILABLE", "LEAVING"];
    let state = |n: i128| match n {
        0 => Some(ShardState::Initializing),
        1 => Some(ShardState::Available),
        2 => Some(ShardState::Leaving),
        _ => None,
    };
    match d.deserialize_any(EnumVisitor {
        what: "shard state",
    })? {
        EnumValue::Name(name) => match name.to_ascii_uppercase().as_str() {
            "INITIALIZING" => Ok(ShardState::Initializing),
            "AVAILABLE" => Ok(ShardState::Available),
            "LEAVING" => Ok(ShardState::Leaving),
            _ => Err(de::Error::unknown_variant(&name, NAMES)),
        },
        EnumValue::Number(n) => state(n).ok_or_else(|| {
            de::Error::custom(format!("unknown shard state {n}; expected 0, 1 or 2"))
        }),
    }
}

/// A consumption type by name (`SHARED`, `REPLICATED`) or number (1, 2).
pub(super) fn consumption_type<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<ConsumptionType, D::Error> {
    match d.deserialize_any(EnumVisitor {
        what: "consumption type",
    })? {
        EnumValue::Name(name) => name.parse().map_err(de::Error::custom),
        EnumValue::Number(0) => Ok(ConsumptionType::Unknown),
        EnumValue::Number(1) => Ok(ConsumptionType::Shared),
        EnumValue::Number(2) => Ok(ConsumptionType::Replicated),
        EnumValue::Number(n) => Err(de::Error::custom(format!(
            "unknown consumption type {n}; expected SHARED (1) or REPLICATED (2)"
        ))),
    }
}

pub(super) enum EnumValue {
    Name(String),
    Number(i128),
}

pub(super) struct EnumVisitor {
    pub(super) what: &'static str,
}

impl Visitor<'_> for EnumVisitor {
    type Value = EnumValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} name or number", self.what)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<EnumValue, E> {
        Ok(EnumValue::Number(i128::from(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<EnumValue, E> {
        Ok(EnumValue::Number(i128::from(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<EnumValue, E> {
        Ok(EnumValue::Name(v.to_owned()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<EnumValue, E> {
        Ok(EnumValue::Number(0))
    }
}

// ---------------------------------------------------------------------------------------------
// Responses (jsonpb with EmitDefaults)
// ---------------------------------------------------------------------------------------------

#[derive(Serialize)]
pub(super) struct PlacementResponse<'a> {
    pub(super) placement: PlacementJson<'a>,
    pub(super) version: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PlacementJson<'a> {
    pub(super) instances: BTreeMap<&'a str, InstanceJson<'a>>,
    pub(super) replica_factor: u32,
    pub(super) num_shards: u32,
    pub(super) is_sharded: bool,
    pub(super) cutover_time: String,
    pub(super) is_mirrored: bool,
    pub(super) max_shard_set_id: u32,
    pub(super) is_subclustered: bool,
    pub(super) instances_per_subcluster: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct InstanceJson<'a> {
    pub(super) id: &'a str,
    pub(super) isolation_group: &'a str,
    pub(super) zone: &'a str,
    pub(super) weight: u32,
    pub(super) endpoint: &'a str,
    pub(super) shards: Vec<ShardJson<'a>>,
    pub(super) shard_set_id: u32,
    pub(super) hostname: &'a str,
    pub(super) port: u32,
    pub(super) metadata: MetadataJson,
    pub(super) subcluster_id: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ShardJson<'a> {
    pub(super) id: u32,
    pub(super) state: &'static str,
    pub(super) source_id: &'a str,
    pub(super) cutover_nanos: String,
    pub(super) cutoff_nanos: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) redirect_to_shard_id: Option<u32>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct MetadataJson {
    pub(super) debug_port: u32,
}

pub(super) fn placement_json(p: &Placement) -> PlacementJson<'_> {
    let instances = p
        .instances
        .iter()
        .map(|(id, i)| {
            let instance = InstanceJson {
                id: &i.id,
                isolation_group: &i.isolation_group,
                zone: &i.zone,
                weight: i.weight,
                endpoint: &i.endpoint,
                shards: i
                    .shards
                    .iter()
                    .map(|s| ShardJson {
                        id: s.id,
                        state: s.state.as_str(),
                        source_id: &s.source_id,
                        cutover_nanos: s.cutover_nanos.to_string(),
                        cutoff_nanos: s.cutoff_nanos.to_string(),
                        redirect_to_shard_id: s.redirect_to_shard_id,
                    })
                    .collect(),
                shard_set_id: i.shard_set_id,
                hostname: &i.hostname,
                port: i.port,
                metadata: MetadataJson {
                    debug_port: i.metadata.map_or(0, |m| m.debug_port),
                },
                subcluster_id: i.subcluster_id,
            };
            (id.as_str(), instance)
        })
        .collect();
    PlacementJson {
        instances,
        replica_factor: p.replica_factor,
        num_shards: p.num_shards,
        is_sharded: p.is_sharded,
        cutover_time: p.cutover_time.to_string(),
        is_mirrored: p.is_mirrored,
        max_shard_set_id: p.max_shard_set_id,
        is_subclustered: p.is_subclustered,
        instances_per_subcluster: p.instances_per_subcluster,
    }
}

/// The answer of `POST ../placement/set`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PlacementSetResponse<'a> {
    pub(super) placement: PlacementJson<'a>,
    pub(super) version: i64,
    pub(super) dry_run: bool,
}

pub(super) fn placement_response(p: &Placement, version: i64) -> Response {
    Json(PlacementResponse {
        placement: placement_json(p),
        version,
    })
    .into_response()
}

#[derive(Serialize)]
pub(super) struct TopicResponse<'a> {
    pub(super) topic: TopicJson<'a>,
    pub(super) version: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct TopicJson<'a> {
    pub(super) name: &'a str,
    pub(super) number_of_shards: u32,
    pub(super) consumer_services: Vec<ConsumerServiceJson<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ConsumerServiceJson<'a> {
    pub(super) service_id: ServiceIdJson<'a>,
    pub(super) consumption_type: &'static str,
    pub(super) message_ttl_nanos: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) filters: Option<FiltersJson>,
}

#[derive(Serialize)]
pub(super) struct ServiceIdJson<'a> {
    pub(super) name: &'a str,
    pub(super) environment: &'a str,
    pub(super) zone: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct FiltersJson {
    pub(super) storage_policy_filter: Option<StoragePolicyFilterJson>,
    pub(super) percentage_filter: Option<PercentageFilterJson>,
    pub(super) shard_set_filter: Option<ShardSetFilterJson>,
    pub(super) routing_policy_filter: Option<RoutingPolicyFilterJson>,
}

impl FiltersJson {
    pub(super) fn from_proto(f: &topicpb::Filters) -> Self {
        FiltersJson {
            storage_policy_filter: f.storage_policy_filter.as_ref().map(|f| {
                StoragePolicyFilterJson {
                    storage_policies: f.storage_policies.clone(),
                }
            }),
            percentage_filter: f.percentage_filter.as_ref().map(|f| PercentageFilterJson {
                percentage: f.percentage,
            }),
            shard_set_filter: f.shard_set_filter.as_ref().map(|f| ShardSetFilterJson {
                shard_set: f.shard_set.clone(),
            }),
            routing_policy_filter: f.routing_policy_filter.as_ref().map(|f| {
                RoutingPolicyFilterJson {
                    allowed_traffic_types: f.allowed_traffic_types.clone(),
                    is_default: f.is_default,
                }
            }),
        }
    }
}

pub(super) fn topic_response(t: &Versioned<Topic>) -> Response {
    let topic = &t.value;
    Json(TopicResponse {
        topic: TopicJson {
            name: &topic.name,
            number_of_shards: topic.number_of_shards,
            consumer_services: topic
                .consumer_services
                .iter()
                .map(|c| ConsumerServiceJson {
                    service_id: ServiceIdJson {
                        name: &c.service_id.name,
                        environment: &c.service_id.environment,
                        zone: &c.service_id.zone,
                    },
                    consumption_type: c.consumption_type.as_str(),
                    message_ttl_nanos: c.message_ttl_nanos.to_string(),
                    filters: c.filters.as_ref().map(FiltersJson::from_proto),
                })
                .collect(),
        },
        version: t.version,
    })
    .into_response()
}
