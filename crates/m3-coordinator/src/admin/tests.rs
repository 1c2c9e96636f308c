//! The admin API end to end over HTTP, on an in-memory KV.

use std::collections::BTreeMap;

use m3_cluster::MemoryKv;
use reqwest::Method;
use serde_json::Value;

use super::*;

const SEED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../docs/seed/m3aggregator.md"
);

/// The router served on a free local port over one in-memory KV.
struct Server {
    base: String,
    client: reqwest::Client,
    kv: Arc<MemoryKv>,
}

impl Server {
    async fn start(max_aggregation_window: Duration) -> Server {
        let kv = Arc::new(MemoryKv::new());
        let state = AdminState {
            kv: kv.clone(),
            max_aggregation_window,
            limits: PlacementLimits::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router(state)).await });
        Server {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            kv,
        }
    }

    /// Sends a request and returns the status and the JSON body.
    async fn send_with(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> (u16, Value) {
        let mut req = self
            .client
            .request(method.clone(), format!("{}{path}", self.base));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(body) = body {
            // What `curl -d` sends.
            req = req
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(body.to_owned());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: body {text:?} is not JSON: {e}"));
        (status, json)
    }

    async fn send(&self, method: Method, path: &str, body: Option<&str>) -> (u16, Value) {
        self.send_with(method, path, &[], body).await
    }

    async fn ok(&self, method: Method, path: &str, body: Option<&str>) -> Value {
        let (status, json) = self.send(method.clone(), path, body).await;
        assert_eq!(status, 200, "{method} {path}: {json}");
        json
    }

    async fn fails(&self, method: Method, path: &str, body: Option<&str>, want: u16) -> String {
        let (status, json) = self.send(method.clone(), path, body).await;
        assert_error(status, &json, want, &format!("{method} {path}"))
    }
}

/// Checks an error answer and returns its reason.
fn assert_error(status: u16, json: &Value, want: u16, what: &str) -> String {
    assert_eq!(status, want, "{what}: {json}");
    assert_eq!(json["status"], "error", "{what}: {json}");
    let reason = json["error"].as_str().unwrap_or_default().to_owned();
    assert!(!reason.is_empty(), "{what}: empty reason in {json}");
    reason
}

const AGG_PLACEMENT: &str = "/api/v1/services/m3aggregator/placement";
const COORD_PLACEMENT: &str = "/api/v1/services/m3coordinator/placement";

fn agg(id: &str, group: &str) -> Value {
    serde_json::json!({
        "id": id, "isolation_group": group, "zone": "embedded", "weight": 100,
        "endpoint": id, "hostname": id, "port": 6000
    })
}

fn init_body(num_shards: u32, rf: u32, instances: &[Value]) -> String {
    serde_json::json!({
        "num_shards": num_shards, "replication_factor": rf, "instances": instances
    })
    .to_string()
}

/// One shard of an instance in a response: (id, state, sourceId, cutoverNanos).
type ShardRow = (u64, String, String, String);
/// Instance ID → (shard set, its shards by ID).
type Layout = BTreeMap<String, (u64, Vec<ShardRow>)>;

/// The layout of a placement response.
fn shards_by_instance(p: &Value) -> Layout {
    let instances = p["placement"]["instances"].as_object().unwrap();
    instances
        .iter()
        .map(|(id, i)| {
            let shards = i["shards"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    (
                        s["id"].as_u64().unwrap(),
                        s["state"].as_str().unwrap().to_owned(),
                        s["sourceId"].as_str().unwrap().to_owned(),
                        s["cutoverNanos"].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            (id.clone(), (i["shardSetId"].as_u64().unwrap(), shards))
        })
        .collect()
}

/// One `curl -X METHOD URL -d '<body>'` command of the seed document.
struct SeedCommand {
    method: String,
    path: String,
    body: String,
}

fn seed_commands() -> Vec<SeedCommand> {
    let text = std::fs::read_to_string(SEED).unwrap_or_else(|e| {
        panic!("cannot read the seed document {SEED}: {e}; the admin API tests replay its curl commands")
    });
    let mut commands = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("curl ") {
        rest = &rest[start..];
        let (head, after) = rest
            .split_once(" -d '")
            .unwrap_or_else(|| panic!("curl command without -d '..' in {SEED}: {rest:.80}"));
        let (body, after) = after
            .split_once('\'')
            .unwrap_or_else(|| panic!("unterminated -d body in {SEED}: {head}"));
        let mut words = head.split_whitespace();
        let mut method = String::from("POST");
        let mut url = None;
        while let Some(word) = words.next() {
            if word == "-X" {
                method = words.next().unwrap_or("POST").to_owned();
            } else if word.starts_with("http://") || word.starts_with("https://") {
                url = Some(word);
            }
        }
        let url = url.unwrap_or_else(|| panic!("curl command without URL: {head}"));
        let path = url
            .split_once("://")
            .and_then(|(_, hostpath)| hostpath.find('/').map(|i| &hostpath[i..]))
            .unwrap_or("/");
        commands.push(SeedCommand {
            method,
            path: path.to_owned(),
            body: body.to_owned(),
        });
        rest = after;
    }
    commands
}

#[tokio::test]
async fn seed_commands_create_the_documented_topology() {
    let commands = seed_commands();
    let paths: Vec<(&str, &str)> = commands
        .iter()
        .map(|c| (c.method.as_str(), c.path.as_str()))
        .collect();
    assert_eq!(
        paths,
        [
            ("POST", "/api/v1/services/m3aggregator/placement/init"),
            ("POST", "/api/v1/topic/init"),
            ("POST", "/api/v1/services/m3coordinator/placement/init"),
            ("POST", "/api/v1/topic"),
        ],
        "the seed's curl commands changed"
    );

    let server = Server::start(DEFAULT_MAX_AGGREGATION_WINDOW).await;
    for c in &commands {
        let method = Method::from_bytes(c.method.as_bytes()).unwrap();
        server.ok(method, &c.path, Some(&c.body)).await;
    }

    // The aggregator placement: 64 shards, RF 2, one shard set of two instances in
    // distinct isolation groups holding identical shards, owned from cutover 0.
    let p = server.ok(Method::GET, AGG_PLACEMENT, None).await;
    assert_eq!(p["version"], 1);
    let placement = &p["placement"];
    assert_eq!(placement["numShards"], 64);
    assert_eq!(placement["replicaFactor"], 2);
    assert_eq!(placement["isSharded"], true);
    assert_eq!(placement["isMirrored"], true);
    assert_eq!(placement["maxShardSetId"], 1);
    assert_eq!(placement["cutoverTime"], "0");
    assert_eq!(placement["isSubclustered"], false);
    assert_eq!(placement["instancesPerSubcluster"], 0);
    let a = &placement["instances"]["m3aggregator01:6000"];
    let b = &placement["instances"]["m3aggregator02:6000"];
    assert_eq!(a["isolationGroup"], "availability-zone-a");
    assert_eq!(b["isolationGroup"], "availability-zone-b");
    for i in [a, b] {
        assert_eq!(i["zone"], "embedded");
        assert_eq!(i["weight"], 100);
        assert_eq!(i["port"], 6000);
        assert_eq!(i["metadata"]["debugPort"], 0);
        assert_eq!(i["subclusterId"], 0);
    }
    assert_eq!(a["endpoint"], "m3aggregator01:6000");
    assert_eq!(a["hostname"], "m3aggregator01");
    let sets = shards_by_instance(&p);
    assert_eq!(sets.len(), 2);
    let (set_a, shards_a) = &sets["m3aggregator01:6000"];
    let (set_b, shards_b) = &sets["m3aggregator02:6000"];
    assert_eq!(
        (set_a, set_b),
        (&1, &1),
        "RF 2 mirrored: one shard set of two"
    );
    assert_eq!(
        shards_a, shards_b,
        "members of a shard set hold identical shards"
    );
    assert_eq!(
        shards_a.iter().map(|s| s.0).collect::<Vec<_>>(),
        (0..64).collect::<Vec<_>>()
    );
    assert!(shards_a.iter().all(|s| s.1 == "INITIALIZING" && s.3 == "0"));
    assert_eq!(a["shards"][0]["cutoffNanos"], "0");
    assert!(
        server
            .kv
            .get("/placement/default_env/m3aggregator")
            .await
            .unwrap()
            .is_some()
    );

    // The coordinator placement: non-sharded, one instance.
    let c = server.ok(Method::GET, COORD_PLACEMENT, None).await;
    assert_eq!(c["placement"]["isSharded"], false);
    let coord = &c["placement"]["instances"]["m3coordinator01"];
    assert_eq!(coord["endpoint"], "m3coordinator01:7507");
    assert_eq!(coord["zone"], "embedded");
    assert_eq!(coord["port"], 7507);
    assert_eq!(coord["shards"], serde_json::json!([]));
    assert!(
        server
            .kv
            .get("_sd.placement/default_env/m3coordinator")
            .await
            .unwrap()
            .is_some()
    );

    // The topic with the coordinators as SHARED consumers.
    let t = server.ok(Method::GET, "/api/v1/topic", None).await;
    assert_eq!(t["version"], 2);
    assert_eq!(t["topic"]["name"], "aggregated_metrics");
    assert_eq!(t["topic"]["numberOfShards"], 64);
    assert_eq!(
        t["topic"]["consumerServices"],
        serde_json::json!([{
            "serviceId": {"name": "m3coordinator", "environment": "default_env", "zone": "embedded"},
            "consumptionType": "SHARED",
            "messageTtlNanos": "300000000000"
        }])
    );
}

#[tokio::test]
async fn replication_factor_larger_than_isolation_groups_is_rejected() {
    let server = Server::start(DEFAULT_MAX_AGGREGATION_WINDOW).await;
    let body = init_body(64, 3, &[agg("a:1", "zone-a"), agg("b:1", "zone-b")]);
    let reason = server
        .fails(
            Method::POST,
            &format!("{AGG_PLACEMENT}/init"),
            Some(&body),
            400,
        )
        .await;
    assert!(reason.contains("isolation groups"), "{reason}");
    server.fails(Method::GET, AGG_PLACEMENT, None, 404).await;
}

#[tokio::test]
async fn duplicate_instance_ids_are_rejected() {
    let server = Server::start(DEFAULT_MAX_AGGREGATION_WINDOW).await;
    let body = init_body(64, 2, &[agg("a:1", "zone-a"), agg("a:1", "zone-b")]);
    let reason = server
        .fails(
            Method::POST,
            &format!("{AGG_PLACEMENT}/init"),
            Some(&body),
            400,
        )
        .await;
    assert!(reason.contains("duplicate"), "{reason}");
    let coord = r#"{"instances":[{"id":"c","endpoint":"c:1"},{"id":"c","endpoint":"c:2"}]}"#;
    server
        .fails(
            Method::POST,
            &format!("{COORD_PLACEMENT}/init"),
            Some(coord),
            400,
        )
        .await;
}

#[tokio::test]
async fn zero_or_absent_num_shards_is_rejected_for_sharded_services() {
    let server = Server::start(DEFAULT_MAX_AGGREGATION_WINDOW).await;
    let instances = [agg("a:1", "zone-a"), agg("b:1", "zone-b")];
    let zero = init_body(0, 2, &instances);
    let absent = serde_json::json!({"replication_factor": 2, "instances": instances}).to_string();
    for svc in ["m3aggregator", "m3db"] {
        for body in [&zero, &absent] {
            let path = format!("/api/v1/services/{svc}/placement/init");
            let reason = server.fails(Method::POST, &path, Some(body), 400).await;
            assert!(reason.contains("num_shards"), "{reason}");
        }
    }
    let negative = r#"{"numShards": -1, "replicationFactor": 2}"#;
    server
        .fails(
            Method::POST,
            &format!("{AGG_PLACEMENT}/init"),
            Some(negative),
            400,
        )
        .await;
}

#[tokio::test]
async fn unknown_consumption_type_is_rejected() {
    let server = Server::start(DEFAULT_MAX_AGGREGATION_WINDOW).await;
    server
        .ok(
            Method::POST,
            "/api/v1/topic/init",
            Some(r#"{"numberOfShards": 64}"#),
        )
        .await;
    for ty in [r#""BROADCAST""#, "7", r#""UNKNOWN""#] {
        let body = format!(
            r#"{{"consumerService":{{"serviceId":{{"name":"m3coordinator"}},"consumptionType":{ty}}}}}"#
        );
        let reason = server
            .fails(Method::POST, "/api/v1/topic", Some(&body), 400)
            .await;
        assert!(reason.contains("consumption type"), "{ty}: {reason}");
    }
    // Absent: UNKNOWN, rejected too.
    let body = r#"{"consumerService":{"serviceId":{"name":"m3coordinator"}}}"#;
    server
        .fails(Method::POST, "/api/v1/topic", Some(body), 400)
        .await;
    let t = server.ok(Method::GET, "/api/v1/topic", None).await;
    assert_eq!(t["topic"]["consumerServices"], serde_json::json!([]));
}

/// Regression: consumer service IDs in topic bodies had no length limit.
#[tokio::test]
async fn overlong_consumer_service_ids_are_rejected() {
    let server = Server::start(DEFAULT_MAX_AGGREGATION_WINDOW).await;
    server
        .ok(
            Method::POST,
            "/api/v1/topic/init",
            Some(r#"{"numberOfShards": 64}"#),
        )
        .await;
    let long = "x".repeat(PlacementLimits::default().max_id_length + 1);
    for (field, service_id) in [
        ("serviceId.name", format!(r#"{{"name":"{long}"}}"#)),
        (
            "serviceId.environment",
            format!(r#"{{"name":"m3coordinator","environment":"{long}"}}"#),
        ),
        (
            "serviceId.zone",
            format!(r#"{{"name":"m3coordinator","zone":"{long}"}}"#),
        ),
    ] {
        let service = format!(r#"{{"serviceId":{service_id},"consumptionType":"SHARED"}}"#);
        let reason = server
            .fails(
                Method::POST,
                "/api/v1/topic",
                Some(&format!(r#"{{"consumerService":{service}}}"#)),
                400,
            )
            .await;
        assert!(reason.contains(field), "{field}: {reason}");
        let reason = server
            .fails(
                Method::PUT,
                "/api/v1/topic",
                Some(&format!(
                    r#"{{"consumerServices":[{service}],"version":1}}"#
                )),
                400,
            )
            .await;
        assert!(reason.contains(field), "{field}: {reason}");
    }
    let t = server.ok(Method::GET, "/api/v1/topic", None).await;
    assert_eq!(t["topic"]["consumerServices"], serde_json::json!([]));
}

#[tokio::test]
async fn malformed_json_is_rejected() {
    let server = Server::start(DEFAULT_MAX_AGGREGATION_WINDOW).await;
    for (path, body) in [
        (format!("{AGG_PLACEMENT}/init"), r#"{"num_shards": 64,"#),
        (format!("{AGG_PLACEMENT}/init"), ""),
        (format!("{AGG_PLACEMENT}/init"), r#"{"num_shards": 1.5}"#),
        (format!("{AGG_PLACEMENT}/init"), r#"{"num_shards": "many"}"#),
        (AGG_PLACEMENT.to_owned(), "[]"),
        ("/api/v1/topic/init".to_owned(), "numberOfShards=64"),
        ("/api/v1/topic".to_owned(), r#"{"consumerService": 5}"#),
    ] {
        let reason = server.fails(Method::POST, &path, Some(body), 400).await;
        assert!(reason.starts_with("invalid "), "{path} {body:?}: {reason}");
    }
}

#[tokio::test]
async fn unknown_fields_are_rejected() {
    let server = Server::start(DEFAULT_MAX_AGGREGATION_WINDOW).await;
    let nested = serde_json::json!({
        "num_shards": 4, "replication_factor": 1,
        "instances": [{"id": "a:1", "endpoint": "a:1", "weight": 1, "isolationGroupp": "x"}]
    })
    .to_string();
    for (path, body) in [
        (format!("{AGG_PLACEMENT}/init"), r#"{"num_shard": 64}"#.to_owned()),
        (format!("{AGG_PLACEMENT}/init"), nested),
        (
            "/api/v1/topic/init".to_owned(),
            r#"{"numberOfShards": 64, "shards": 1}"#.to_owned(),
        ),
        (
            "/api/v1/topic".to_owned(),
            r#"{"consumerService":{"serviceId":{"name":"x","region":"y"},"consumptionType":"SHARED"}}"#
                .to_owned(),
        ),
    ] {
        let reason = server.fails(Method::POST, &path, Some(&body), 400).await;
        assert!(reason.contains("unknown field"), "{path}: {reason}");
    }
}

#[tokio::test]
async fn init_twice_conflicts() {
    let server = Server::start(DEFAULT_MAX_AGGREGATION_WINDOW).await;
    let body = init_body(8, 2, &[agg("a:1", "zone-a"), agg("b:1", "zone-b")]);
    let init = format!("{AGG_PLACEMENT}/init");
    server.ok(Method::POST, &init, Some(&body)).await;
    let reason = server.fails(Method::POST, &init, Some(&body), 409).await;
    assert!(reason.contains("already exists"), "{reason}");

    let topic = r#"{"numberOfShards": 64}"#;
    let t = server
        .ok(Method::POST, "/api/v1/topic/init", Some(topic))
        .await;
    assert_eq!(t["version"], 1);
    let reason = server
        .fails(Method::POST, "/api/v1/topic/init", Some(topic), 409)
        .await;
    assert!(reason.contains("already exists"), "{reason}");
}

#[tokio::test]
async fn missing_placement_topic_and_service_are_not_found() {
    let server = Server::start(DEFAULT_MAX_AGGREGATION_WINDOW).await;
    for path in [
        AGG_PLACEMENT,
        COORD_PLACEMENT,
        "/api/v1/services/m3db/placement",
    ] {
        let reason = server.fails(Method::GET, path, None, 404).await;
        assert!(reason.contains("no placement"), "{reason}");
        server.fails(Method::DELETE, path, None, 404).await;
        server
            .fails(Method::DELETE, &format!("{path}/x:1"), None, 404)
            .await;
        server
            .fails(Method::POST, path, Some(r#"{"instances":[]}"#), 404)
            .await;
    }
    let reason = server.fails(Method::GET, "/api/v1/topic", None, 404).await;
    assert!(reason.contains("not found"), "{reason}");
    server
        .fails(Method::DELETE, "/api/v1/topic", None, 404)
        .await;
    let add =
        r#"{"consumerService":{"serviceId":{"name":"m3coordinator"},"consumptionType":"SHARED"}}"#;
    server
        .fails(Method::POST, "/api/v1/topic", Some(add), 404)
        .await;

    let reason = server
        .fails(
            Method::GET,
            "/api/v1/services/m3aggregators/placement",
            None,
            404,
        )
        .await;
    assert!(reason.contains("did you mean \"m3aggregator\""), "{reason}");
    server
        .fails(
            Method::POST,
            "/api/v1/services/prometheus/placement/init",
            Some("{}"),
            404,
        )
        .await;
}

#[tokio::test]
async fn add_then_remove_aggregator_instances() {
    // A 1ns window: each change's transition is its own request time, so the next change
    // may start at once.
    let server = Server::start(Duration::from_nanos(1)).await;
    let body = init_body(64, 2, &[agg("a:1", "zone-a"), agg("b:1", "zone-b")]);
    server
        .ok(Method::POST, &format!("{AGG_PLACEMENT}/init"), Some(&body))
        .await;

    let add =
        serde_json::json!({"instances": [agg("c:1", "zone-a"), agg("d:1", "zone-b")]}).to_string();
    let p = server.ok(Method::POST, AGG_PLACEMENT, Some(&add)).await;
    assert_eq!(p["version"], 2);
    assert_eq!(p["placement"]["maxShardSetId"], 2);
    let sets = shards_by_instance(&p);
    let (set_c, shards_c) = &sets["c:1"];
    assert_eq!(*set_c, 2);
    // Same shards, each member taking over from its counterpart in the old shard set.
    let without_source = |shards: &[ShardRow]| {
        shards
            .iter()
            .map(|s| (s.0, s.1.clone(), s.3.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(without_source(shards_c), without_source(&sets["d:1"].1));
    assert_eq!(shards_c.len(), 32, "balanced across two shard sets");
    let transition = p["placement"]["cutoverTime"].as_str().unwrap().to_owned();
    assert_ne!(transition, "0");
    for (shard, state, source, cutover) in shards_c {
        assert_eq!(state, "INITIALIZING");
        assert_eq!(cutover, &transition);
        assert!(source == "a:1" || source == "b:1", "{source}");
        // The old owner keeps the shard LEAVING until the transition.
        let old = sets[source].1.iter().find(|s| s.0 == *shard).unwrap();
        assert_eq!(old.1, "LEAVING");
    }

    let remove = r#"{"instanceIds": ["c:1", "d:1"]}"#;
    let p = server
        .ok(
            Method::POST,
            &format!("{AGG_PLACEMENT}/remove"),
            Some(remove),
        )
        .await;
    assert_eq!(p["version"], 3);
    let sets = shards_by_instance(&p);
    for id in ["a:1", "b:1"] {
        let owned: Vec<u64> = sets[id]
            .1
            .iter()
            .filter(|s| s.1 != "LEAVING")
            .map(|s| s.0)
            .collect();
        assert_eq!(
            owned,
            (0..64).collect::<Vec<_>>(),
            "{id} owns every shard again"
        );
    }
    for id in ["c:1", "d:1"] {
        assert!(sets[id].1.iter().all(|s| s.1 == "LEAVING"), "{id}");
    }

    // Part of a shard set, or an unknown instance.
    let reason = server
        .fails(
            Method::POST,
            &format!("{AGG_PLACEMENT}/remove"),
            Some(r#"{"instance_ids": ["a:1"]}"#),
            400,
        )
        .await;
    assert!(reason.contains("whole shard set"), "{reason}");
    server
        .fails(
            Method::POST,
            &format!("{AGG_PLACEMENT}/remove"),
            Some(r#"{"instance_ids": ["zz:1"]}"#),
            404,
        )
        .await;
    server
        .fails(
            Method::POST,
            &format!("{AGG_PLACEMENT}/remove"),
            Some(r#"{"instance_ids": []}"#),
            400,
        )
        .await;
    // Force is accepted and changes nothing about the checks (module docs).
    let reason = server
        .fails(
            Method::POST,
            &format!("{AGG_PLACEMENT}/remove"),
            Some(r#"{"instance_ids": ["a:1"], "force": true}"#),
            400,
        )
        .await;
    assert!(reason.contains("whole shard set"), "{reason}");
}

#[tokio::test]
async fn a_change_waits_for_the_previous_transition() {
    let server = Server::start(DEFAULT_MAX_AGGREGATION_WINDOW).await;
    let body = init_body(16, 2, &[agg("a:1", "zone-a"), agg("b:1", "zone-b")]);
    server
        .ok(Method::POST, &format!("{AGG_PLACEMENT}/init"), Some(&body))
        .await;
    // Shards of the initial placement are owned since cutover 0: adding works at once.
    let add =
        serde_json::json!({"instances": [agg("c:1", "zone-a"), agg("d:1", "zone-b")]}).to_string();
    let p = server.ok(Method::POST, AGG_PLACEMENT, Some(&add)).await;
    let cutover: i64 = p["placement"]["cutoverTime"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        cutover % 60_000_000_000,
        0,
        "transition on a window boundary"
    );
    // The transition is up to a minute away: the next change is refused.
    let reason = server
        .fails(
            Method::POST,
            &format!("{AGG_PLACEMENT}/remove"),
            Some(r#"{"instance_ids": ["c:1", "d:1"]}"#),
            400,
        )
        .await;
    assert!(reason.contains("before cutover"), "{reason}");
}

#[tokio::test]
async fn replace_an_aggregator_instance() {
    let server = Server::start(Duration::from_nanos(1)).await;
    let body = init_body(8, 2, &[agg("a:1", "zone-a"), agg("b:1", "zone-b")]);
    server
        .ok(Method::POST, &format!("{AGG_PLACEMENT}/init"), Some(&body))
        .await;
    let replace = serde_json::json!({
        "leavingInstanceIDs": ["a:1"], "candidates": [agg("c:1", "zone-a")]
    })
    .to_string();
    let p = server
        .ok(
            Method::POST,
            &format!("{AGG_PLACEMENT}/replace"),
            Some(&replace),
        )
        .await;
    let sets = shards_by_instance(&p);
    let (set_c, shards_c) = &sets["c:1"];
    assert_eq!(
        *set_c, 1,
        "the candidate joins the leaving instance's shard set"
    );
    assert_eq!(shards_c.len(), 8);
    assert!(
        shards_c
            .iter()
            .all(|s| s.1 == "INITIALIZING" && s.2 == "a:1")
    );
    assert!(sets["a:1"].1.iter().all(|s| s.1 == "LEAVING"));

    // No candidate from an isolation group the shard set does not already use.
    let bad = serde_json::json!({
        "leaving_instance_ids": ["b:1"], "candidates": [agg("d:1", "zone-a")]
    })
    .to_string();
    let reason = server
        .fails(
            Method::POST,
            &format!("{AGG_PLACEMENT}/replace"),
            Some(&bad),
            400,
        )
        .await;
    assert!(reason.contains("no replacement candidate"), "{reason}");
    let unknown = serde_json::json!({
        "leavingInstanceIDs": ["zz:1"], "candidates": [agg("d:1", "zone-b")]
    })
    .to_string();
    server
        .fails(
            Method::POST,
            &format!("{AGG_PLACEMENT}/replace"),
            Some(&unknown),
            404,
        )
        .await;
}

#[tokio::test]
async fn delete_instances_placements_and_topics() {
    let server = Server::start(DEFAULT_MAX_AGGREGATION_WINDOW).await;
    let coord = r#"{"instances":[
        {"id":"c1","endpoint":"c1:7507"},
        {"id":"c2","endpoint":"c2:7507","zone":"other"}]}"#;
    let p = server
        .ok(
            Method::POST,
            &format!("{COORD_PLACEMENT}/init"),
            Some(coord),
        )
        .await;
    assert_eq!(
        p["placement"]["instances"]["c1"]["zone"], "embedded",
        "zone header default"
    );
    assert_eq!(p["placement"]["instances"]["c2"]["zone"], "other");
    let add = r#"{"instances":[{"id":"c3","endpoint":"c3:7507"}]}"#;
    server.ok(Method::POST, COORD_PLACEMENT, Some(add)).await;

    let p = server
        .ok(Method::DELETE, &format!("{COORD_PLACEMENT}/c1"), None)
        .await;
    assert_eq!(p["version"], 3);
    let ids: Vec<&String> = p["placement"]["instances"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(ids, ["c2", "c3"]);
    let reason = server
        .fails(Method::DELETE, &format!("{COORD_PLACEMENT}/c1"), None, 404)
        .await;
    assert!(reason.contains("\"c1\""), "{reason}");

    let deleted = server.ok(Method::DELETE, COORD_PLACEMENT, None).await;
    assert_eq!(deleted, serde_json::json!({"deleted": true}));
    server.fails(Method::GET, COORD_PLACEMENT, None, 404).await;
    server
        .fails(Method::DELETE, COORD_PLACEMENT, None, 404)
        .await;

    server
        .ok(
            Method::POST,
            "/api/v1/topic/init",
            Some(r#"{"number_of_shards": "8"}"#),
        )
        .await;
    let deleted = server.ok(Method::DELETE, "/api/v1/topic", None).await;
    assert_eq!(deleted["topic"]["numberOfShards"], 8);
    server.fails(Method::GET, "/api/v1/topic", None, 404).await;
}

#[tokio::test]
async fn topic_replace_is_check_and_set() {
    let server = Server::start(DEFAULT_MAX_AGGREGATION_WINDOW).await;
    server
        .ok(
            Method::POST,
            "/api/v1/topic/init",
            Some(r#"{"numberOfShards": 64}"#),
        )
        .await;
    let replicated = r#"{"consumer_services":[{"service_id":{"name":"m3aggregator",
        "environment":"default_env","zone":"embedded"},"consumption_type":2,
        "message_ttl_nanos":1000,"filters":{"percentageFilter":{"percentage":50}}}],
        "version":1}"#;
    let t = server
        .ok(Method::PUT, "/api/v1/topic", Some(replicated))
        .await;
    assert_eq!(t["version"], 2);
    let cs = &t["topic"]["consumerServices"][0];
    assert_eq!(cs["consumptionType"], "REPLICATED");
    assert_eq!(cs["messageTtlNanos"], "1000");
    assert_eq!(cs["filters"]["percentageFilter"]["percentage"], 50.0);
    // Stale version.
    let reason = server
        .fails(Method::PUT, "/api/v1/topic", Some(replicated), 409)
        .await;
    assert!(reason.contains("expected version 1"), "{reason}");
    // A duplicate consumer service is bad input.
    let dup = r#"{"consumerService":{"serviceId":{"name":"m3aggregator",
        "environment":"default_env","zone":"embedded"},"consumptionType":"REPLICATED"}}"#;
    server
        .fails(Method::POST, "/api/v1/topic", Some(dup), 400)
        .await;
}

#[tokio::test]
async fn headers_pick_environment_zone_and_topic() {
    let server = Server::start(DEFAULT_MAX_AGGREGATION_WINDOW).await;
    let headers = [
        ("cluster-environment-name", "prod"),
        ("Cluster-Zone-Name", "zone-9"),
        ("Topic-Name", "aggregator_ingest"),
    ];
    let body = serde_json::json!({
        "numShards": "4", "replicationFactor": 1,
        "instances": [{"id": "a:1", "endpoint": "a:1", "weight": 1, "isolationGroup": "g"}]
    })
    .to_string();
    let (status, p) = server
        .send_with(
            Method::POST,
            &format!("{AGG_PLACEMENT}/init"),
            &headers,
            Some(&body),
        )
        .await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["placement"]["instances"]["a:1"]["zone"], "zone-9");
    assert!(
        server
            .kv
            .get("/placement/prod/m3aggregator")
            .await
            .unwrap()
            .is_some()
    );
    server.fails(Method::GET, AGG_PLACEMENT, None, 404).await;
    let (status, _) = server
        .send_with(Method::GET, AGG_PLACEMENT, &headers, None)
        .await;
    assert_eq!(status, 200);

    let (status, t) = server
        .send_with(
            Method::POST,
            "/api/v1/topic/init",
            &headers,
            Some(r#"{"numberOfShards": 16}"#),
        )
        .await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["topic"]["name"], "aggregator_ingest");
    assert!(
        server
            .kv
            .get("/topic/prod/aggregator_ingest")
            .await
            .unwrap()
            .is_some()
    );
    server.fails(Method::GET, "/api/v1/topic", None, 404).await;
}

#[tokio::test]
async fn dry_runs_compute_without_storing_and_force_is_accepted() {
    let server = Server::start(DEFAULT_MAX_AGGREGATION_WINDOW).await;
    let body = init_body(8, 2, &[agg("a:1", "zone-a"), agg("b:1", "zone-b")]);
    let init = format!("{AGG_PLACEMENT}/init");
    let (status, preview) = server
        .send_with(Method::POST, &init, &[("Dry-Run", "true")], Some(&body))
        .await;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(preview["version"], 0);
    assert_eq!(shards_by_instance(&preview).len(), 2);
    server.fails(Method::GET, AGG_PLACEMENT, None, 404).await;
    // Neither true nor false: refused, never taken for an ordinary change.
    let (status, json) = server
        .send_with(Method::POST, &init, &[("Dry-Run", "yes")], Some(&body))
        .await;
    let reason = assert_error(status, &json, 400, "Dry-Run: yes");
    assert!(reason.contains("Dry-Run"), "{reason}");
    server.fails(Method::GET, AGG_PLACEMENT, None, 404).await;

    let (status, json) = server
        .send_with(Method::POST, &init, &[("Force", "true")], Some(&body))
        .await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["version"], 1);

    let add =
        serde_json::json!({"instances": [agg("c:1", "zone-a"), agg("d:1", "zone-b")]}).to_string();
    let (status, preview) = server
        .send_with(
            Method::POST,
            AGG_PLACEMENT,
            &[("Dry-Run", "TRUE")],
            Some(&add),
        )
        .await;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(preview["version"], 1, "the version it would replace");
    assert_eq!(shards_by_instance(&preview).len(), 4);
    let stored = server.ok(Method::GET, AGG_PLACEMENT, None).await;
    assert_eq!(stored["version"], 1);
    assert_eq!(shards_by_instance(&stored).len(), 2);

    let forced = serde_json::json!({
        "instances": [agg("c:1", "zone-a"), agg("d:1", "zone-b")], "force": true
    })
    .to_string();
    let added = server.ok(Method::POST, AGG_PLACEMENT, Some(&forced)).await;
    assert_eq!(added["version"], 2);
    assert_eq!(
        shards_by_instance(&added),
        shards_by_instance(&preview),
        "the stored change is the one previewed"
    );

    let (status, json) = server
        .send_with(Method::DELETE, AGG_PLACEMENT, &[("Dry-Run", "true")], None)
        .await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json, serde_json::json!({"deleted": false, "dryRun": true}));
    server.ok(Method::GET, AGG_PLACEMENT, None).await;
    let (status, json) = server
        .send_with(
            Method::DELETE,
            &format!("{AGG_PLACEMENT}/zz:1?force=true"),
            &[],
            None,
        )
        .await;
    assert_error(status, &json, 404, "an unknown instance");
}

/// `placement/set` as an operator uses it: GET, edit, preview (no `confirm`), store at the
/// version read.
#[tokio::test]
async fn placement_set_stores_a_placement_as_given() {
    let server = Server::start(DEFAULT_MAX_AGGREGATION_WINDOW).await;
    let set = format!("{AGG_PLACEMENT}/set");
    let body = init_body(8, 2, &[agg("a:1", "zone-a"), agg("b:1", "zone-b")]);
    // Without a placement: a dry run answers version 0...
    let preview = server
        .ok(Method::POST, &format!("{AGG_PLACEMENT}/init"), Some(&body))
        .await;
    let mut edited = preview["placement"].clone();
    edited["instances"]["a:1"]["endpoint"] = "a:2".into();
    let request = |placement: &Value, version: i64, confirm: bool| {
        serde_json::json!({"placement": placement, "version": version, "confirm": confirm})
            .to_string()
    };

    let dry = server
        .ok(Method::POST, &set, Some(&request(&edited, 1, false)))
        .await;
    assert_eq!(dry["dryRun"], true);
    assert_eq!(dry["version"], 2);
    let stored = server.ok(Method::GET, AGG_PLACEMENT, None).await;
    assert_eq!(stored["placement"]["instances"]["a:1"]["endpoint"], "a:1");

    let done = server
        .ok(Method::POST, &set, Some(&request(&edited, 1, true)))
        .await;
    assert_eq!(done["dryRun"], false);
    assert_eq!(done["version"], 2);
    let stored = server.ok(Method::GET, AGG_PLACEMENT, None).await;
    assert_eq!(stored["version"], 2);
    assert_eq!(stored["placement"]["instances"]["a:1"]["endpoint"], "a:2");
    assert_eq!(stored["placement"], done["placement"]);

    // An edit of a version that moved on is refused.
    let reason = server
        .fails(
            Method::POST,
            &set,
            Some(&request(&preview["placement"], 1, true)),
            409,
        )
        .await;
    assert!(reason.contains("version"), "{reason}");

    // Invalid: an instance keyed by another ID. Refused unless forced.
    let mut invalid = stored["placement"].clone();
    let b = invalid["instances"]["b:1"].clone();
    invalid["instances"]["x:1"] = b;
    let reason = server
        .fails(Method::POST, &set, Some(&request(&invalid, 2, true)), 400)
        .await;
    assert!(
        reason.starts_with("unable to validate new placement"),
        "{reason}"
    );
    let mut kind = stored["placement"].clone();
    kind["isMirrored"] = false.into();
    let reason = server
        .fails(Method::POST, &set, Some(&request(&kind, 2, true)), 400)
        .await;
    assert!(reason.contains("isMirrored"), "{reason}");
    // Force does not store a placement the aggregators could not run with (module docs).
    let forced =
        serde_json::json!({"placement": invalid, "confirm": true, "force": true}).to_string();
    server.fails(Method::POST, &set, Some(&forced), 400).await;
    assert_eq!(
        server.ok(Method::GET, AGG_PLACEMENT, None).await["version"],
        2
    );
}

/// When a shard set leaves the aggregator placement, its election and flush-times keys go
/// with it; the others stay.
#[tokio::test]
async fn a_removed_shard_set_takes_its_keys_with_it() {
    let server = Server::start(DEFAULT_MAX_AGGREGATION_WINDOW).await;
    let body = init_body(
        8,
        2,
        &[
            agg("a:1", "zone-a"),
            agg("b:1", "zone-b"),
            agg("c:1", "zone-a"),
            agg("d:1", "zone-b"),
        ],
    );
    let p = server
        .ok(Method::POST, &format!("{AGG_PLACEMENT}/init"), Some(&body))
        .await;
    let env = m3_cluster::keys::DEFAULT_ENVIRONMENT;
    let keys_of = |shard_set: u32| {
        let election = m3_cluster::keys::election_key(env, "m3aggregator", shard_set);
        vec![
            // A leaseless key under the election: nobody's candidacy.
            format!(
                "{}694d7f3a2b1c0e5d",
                m3_cluster::keys::election_queue_prefix(&election)
            ),
            election,
            m3_cluster::keys::flush_times_key(env, shard_set),
        ]
    };
    for shard_set in [1, 2] {
        for key in keys_of(shard_set) {
            server
                .kv
                .set(&key, bytes::Bytes::from_static(b"x"))
                .await
                .unwrap();
        }
    }
    let present = |key: String| {
        let kv = server.kv.clone();
        async move { kv.get(&key).await.unwrap().is_some() }
    };
    // Keep shard set 1 only, holding every shard.
    let mut one = p["placement"].clone();
    let instances = one["instances"].as_object_mut().unwrap();
    instances.retain(|_, i| i["shardSetId"] == 1);
    assert_eq!(instances.len(), 2);
    let every_shard: Vec<Value> = (0..8)
        .map(|id| {
            serde_json::json!({"id": id, "state": "AVAILABLE", "cutoverNanos": "0",
                "cutoffNanos": "0", "sourceId": ""})
        })
        .collect();
    for instance in instances.values_mut() {
        instance["shards"] = Value::Array(every_shard.clone());
    }
    let request = serde_json::json!({"placement": one, "confirm": true, "force": true}).to_string();
    server
        .ok(
            Method::POST,
            &format!("{AGG_PLACEMENT}/set"),
            Some(&request),
        )
        .await;
    for key in keys_of(2) {
        assert!(
            !present(key.clone()).await,
            "{key} of the removed shard set is left"
        );
    }
    for key in keys_of(1) {
        assert!(
            present(key.clone()).await,
            "{key} of a remaining shard set is gone"
        );
    }
    server.ok(Method::DELETE, AGG_PLACEMENT, None).await;
    for key in keys_of(1) {
        assert!(
            !present(key.clone()).await,
            "{key} is left after the placement is deleted"
        );
    }
}

/// M3's `GET ..?version=N`: each earlier version as it was stored, 404 for a version that is
/// not there, 400 for one that is not a number.
#[tokio::test]
async fn earlier_versions_of_a_placement_are_read_back() {
    let server = Server::start(Duration::from_nanos(1)).await;
    let body = init_body(64, 2, &[agg("a:1", "zone-a"), agg("b:1", "zone-b")]);
    let first = server
        .ok(Method::POST, &format!("{AGG_PLACEMENT}/init"), Some(&body))
        .await;
    let add =
        serde_json::json!({"instances": [agg("c:1", "zone-a"), agg("d:1", "zone-b")]}).to_string();
    let second = server.ok(Method::POST, AGG_PLACEMENT, Some(&add)).await;
    assert_eq!(second["version"], 2);

    let at_one = server
        .ok(Method::GET, &format!("{AGG_PLACEMENT}?version=1"), None)
        .await;
    assert_eq!(at_one["version"], 1);
    assert_eq!(at_one["placement"], first["placement"]);
    assert_eq!(
        at_one["placement"]["instances"].as_object().unwrap().len(),
        2
    );
    let at_two = server
        .ok(Method::GET, &format!("{AGG_PLACEMENT}?version=2"), None)
        .await;
    assert_eq!(at_two, second);
    let current = server.ok(Method::GET, AGG_PLACEMENT, None).await;
    assert_eq!(current, second, "without version: the current one");
    let empty = server
        .ok(Method::GET, &format!("{AGG_PLACEMENT}?version="), None)
        .await;
    assert_eq!(empty, second, "an empty version is none, as in M3");

    let reason = server
        .fails(
            Method::GET,
            &format!("{AGG_PLACEMENT}?version=3"),
            None,
            404,
        )
        .await;
    assert!(reason.contains("version 3"), "{reason}");
    let reason = server
        .fails(
            Method::GET,
            &format!("{AGG_PLACEMENT}?version=two"),
            None,
            400,
        )
        .await;
    assert!(reason.contains("\"two\""), "{reason}");
    // The coordinator placement, stored bare, reads back the same way.
    let coordinator = serde_json::json!({"instances": [agg("e:1", "zone-a")]}).to_string();
    server
        .ok(
            Method::POST,
            &format!("{COORD_PLACEMENT}/init"),
            Some(&coordinator),
        )
        .await;
    let at_one = server
        .ok(Method::GET, &format!("{COORD_PLACEMENT}?version=1"), None)
        .await;
    assert_eq!(at_one["version"], 1);
}
