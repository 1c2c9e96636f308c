//! The chaos harness: the seed's cluster of real processes under steady traffic of known values,
//! with the faults operators meet injected one after another, then every window read back and
//! counted per fault.
//!
//! # Cluster
//!
//! etcd, two `m3aggregator`s forming one shard set, one `m3coordinator`, and spare aggregators
//! that join through placement changes. The aggregators run the shipped config with an election
//! TTL of 3s instead of 10s, so a dead leader is replaced within seconds; the m3msg topic's
//! message TTL is 20s instead of 300s, so an ingest outage longer than half of it stays short.
//!
//! # Traffic
//!
//! Counters written straight to every aggregator over rawtcp, as the coordinator's aggregator
//! client does, aggregated as **Sum and Count** per 1s window into a 1s namespace: a window that
//! misses a sample, or is emitted by a replica that missed one, has another value.
//!
//! # Faults
//!
//! Each fault is a phase; the windows ending during a phase are its row in the report.
//!
//! | phase | what happens |
//! |---|---|
//! | leader SIGKILL | the leader is killed and restarted a second later, [`leader_kills`] times (20 by default); each kill waits until the follower reports it can lead, i.e. until the windows the restarted process missed are flushed |
//! | follower SIGKILL | the follower is killed and restarted |
//! | leader SIGSTOP | the leader is paused for two TTLs, so the follower takes over, then resumed: it must not flush as leader again |
//! | coordinator SIGKILL | the coordinator is killed and restarted on its data dir |
//! | ingest outage | the coordinator is paused for more than half the message TTL |
//! | etcd SIGKILL | etcd is killed and restarted on its data dir |
//! | add + remove shard set | two aggregators join as a second shard set, take half the shards, and are removed again; they are stopped once they no longer lead |
//! | replace leader | the leader is replaced by a spare aggregator and stopped once it handed over |
//!
//! # Report
//!
//! Per phase: windows expected (sent), stored with their exact value, missing, differing, and
//! stored twice (stored once, then written again with another value, which the store's
//! overwrite would otherwise hide: every window is read back at each phase change, and every
//! value seen is remembered). Every row must read 0 missing, 0 differing, 0 stored twice. A
//! window emitted twice with the *same* value is invisible in the store and not counted.
//!
//! # Soak
//!
//! `M3_CHAOS_LEADER_KILLS=<n>` sets the number of leader kills and `M3_CHAOS_ROUNDS=<n>` runs
//! the whole sequence of faults `n` times, for a longer run on demand:
//!
//! ```text
//! M3_CHAOS_ROUNDS=5 M3_CHAOS_LEADER_KILLS=50 cargo test -p m3-e2e --test chaos -- --nocapture
//! ```

mod support;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use support::{
    AGGREGATOR_CONFIG, COORDINATOR_CONFIG, Cluster, SentWindows, SumWriter, WindowHistory,
    WindowReport, compare_sum_count, now_ms, seed_commands, start_aggregator_with,
};

/// The election TTL of these aggregators, in seconds.
const TTL_SECONDS: u64 = 3;
/// The election TTL.
const TTL: Duration = Duration::from_secs(TTL_SECONDS);
/// The m3msg topic's message TTL.
const MESSAGE_TTL: Duration = Duration::from_secs(20);
/// The storage policy the counters are aggregated with.
const POLICY: &str = "1s:1h";
/// Its resolution, in ms.
const RESOLUTION_MS: i64 = 1_000;
/// The headers that pick its namespace.
const NAMESPACE: &[(&str, &str)] = &[
    ("M3-Metrics-Type", "aggregated"),
    ("M3-Storage-Policy", POLICY),
];
/// The counters' metric name.
const METRIC: &str = "chaos_sum";
/// Spare aggregators' host IDs and addresses, taken in order: the two of the added shard set,
/// then the replacement.
const SPARE_HOSTS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(127, 0, 0, 4),
    Ipv4Addr::new(127, 0, 0, 5),
    Ipv4Addr::new(127, 0, 0, 6),
];
/// How long a killed process stays down before it is started again.
const DOWN_FOR: Duration = Duration::from_secs(1);
/// Quiet time after each fault, so its effects land in its own phase.
const SETTLE: Duration = Duration::from_secs(3);
/// The longest any wait for the cluster may take.
const PATIENCE: Duration = Duration::from_secs(120);

/// How many leader SIGKILLs each round injects: `M3_CHAOS_LEADER_KILLS`, 20 by default.
fn leader_kills() -> usize {
    env_count("M3_CHAOS_LEADER_KILLS", 20)
}

/// How many rounds of every fault to run: `M3_CHAOS_ROUNDS`, 1 by default.
fn rounds() -> usize {
    env_count("M3_CHAOS_ROUNDS", 1)
}

fn env_count(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a count")),
        Err(_) => default,
    }
}

/// One fault's stretch of time: the windows ending in `(from, to]` are its row.
struct Phase {
    name: String,
    from: i64,
    to: i64,
}

/// The cluster under test and what the harness knows about it.
struct Chaos {
    cluster: Cluster,
    /// The aggregators of the original shard set (indices into `cluster.aggregators`).
    shard_set: Vec<usize>,
    /// Spare hosts not used yet.
    spares: Vec<Ipv4Addr>,
    phases: Vec<Phase>,
    /// Aggregator starts so far, for unique process names.
    lives: usize,
    /// The traffic, once started.
    writer: Option<SumWriter>,
    /// When the traffic started (ms).
    started: i64,
    /// Every stored value seen so far, so a window overwritten later is reported.
    history: WindowHistory,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_window_survives_every_fault() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (aggregator_config, coordinator_config) = write_configs(dir.path());
    let cluster = Cluster::start_with("chaos", 1, &aggregator_config, &coordinator_config).await;
    for host in SPARE_HOSTS {
        for port in [cluster.rawtcp_port, cluster.aggregators[0].http.port()] {
            assert!(
                std::net::TcpListener::bind((host, port)).is_ok(),
                "{host}:{port} is taken; the spare aggregators need it"
            );
        }
    }
    run_seed_commands_with_message_ttl(&cluster).await;
    let mut chaos = Chaos {
        cluster,
        shard_set: vec![0, 1],
        spares: SPARE_HOSTS.to_vec(),
        phases: Vec::new(),
        lives: 2,
        writer: None,
        started: 0,
        history: WindowHistory::default(),
    };
    chaos.leader_among(&[0, 1]).await;

    let rawtcp_port = chaos.cluster.rawtcp_port;
    let endpoints: Vec<SocketAddr> = chaos
        .cluster
        .aggregators
        .iter()
        .map(|a| a.rawtcp)
        .chain(
            SPARE_HOSTS
                .iter()
                .map(|h| SocketAddr::from((*h, rawtcp_port))),
        )
        .collect();
    chaos.started = now_ms();
    chaos.writer = Some(SumWriter::start_with_policy(
        endpoints,
        METRIC,
        10,
        Duration::from_millis(250),
        POLICY,
    ));
    tokio::time::sleep(Duration::from_secs(5)).await;
    chaos.begin("steady traffic").await;

    for round in 0..rounds() {
        println!("{} round {}", now_ms(), round + 1);
        chaos.kill_leaders(leader_kills()).await;
        chaos.kill_follower().await;
        chaos.pause_leader().await;
        chaos.kill_coordinator().await;
        chaos.ingest_outage().await;
        chaos.kill_etcd().await;
        if chaos.spares.len() >= 3 {
            chaos.add_and_remove_shard_set().await;
            chaos.replace_leader().await;
        }
        chaos.begin("steady traffic").await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let writer = chaos.writer.take().expect("traffic started");
    let sent = writer.stop().await;
    let stopped = now_ms();
    if let Some(last) = chaos.phases.last_mut() {
        last.to = support::window_end(stopped, RESOLUTION_MS);
    }
    chaos.phases[0].from = chaos.started - RESOLUTION_MS;
    chaos.report(&sent).await;
}

/// The shipped configs, with the election TTL and the namespaces of this harness.
fn write_configs(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let aggregator = std::fs::read_to_string(AGGREGATOR_CONFIG).expect("shipped aggregator config");
    let ttl = "      ttlSeconds: 10\n";
    assert!(
        aggregator.contains(ttl),
        "the shipped aggregator config's ttlSeconds moved"
    );
    let aggregator_path = dir.join("m3aggregator.yml");
    std::fs::write(
        &aggregator_path,
        aggregator.replace(ttl, &format!("      ttlSeconds: {TTL_SECONDS}\n")),
    )
    .expect("write aggregator config");

    let coordinator =
        std::fs::read_to_string(COORDINATOR_CONFIG).expect("shipped coordinator config");
    let one_minute = "      - namespace: agg_1m_40d\n        type: aggregated\n        resolution: 1m\n        retention: 40d\n";
    assert!(
        coordinator.contains(one_minute),
        "the shipped config's 1m namespace moved"
    );
    // Without the 1m namespace, placement transitions fall on 10s boundaries, not 1m ones.
    let one_second = "      - namespace: agg_1s_1h\n        type: aggregated\n        resolution: 1s\n        retention: 1h\n";
    let coordinator_path = dir.join("m3coordinator.yml");
    std::fs::write(
        &coordinator_path,
        coordinator.replace(one_minute, one_second),
    )
    .expect("write coordinator config");
    (aggregator_path, coordinator_path)
}

/// SEED.md's commands, with the topic's message TTL shortened to [`MESSAGE_TTL`].
async fn run_seed_commands_with_message_ttl(cluster: &Cluster) {
    let seed_ttl = "\"messageTtlNanos\": \"300000000000\"";
    let mut shortened = 0;
    for command in seed_commands() {
        let mut command = command.localized(&cluster.hosts(0));
        if command.body.contains(seed_ttl) {
            command.body = command.body.replace(
                seed_ttl,
                &format!("\"messageTtlNanos\": \"{}\"", MESSAGE_TTL.as_nanos()),
            );
            shortened += 1;
        }
        cluster.send_curl(&command).await;
    }
    assert_eq!(shortened, 1, "SEED.md's topic command moved");
}

impl Chaos {
    /// Starts a new phase now; the previous one ends here. Reads every window stored so far
    /// into the history first.
    async fn begin(&mut self, name: &str) {
        if let Some(writer) = &self.writer {
            let sent = writer.sent();
            compare_sum_count(
                &self.cluster,
                &sent,
                METRIC,
                NAMESPACE,
                (self.started - RESOLUTION_MS, now_ms()),
                &self.history,
            )
            .await;
        }
        let now = now_ms();
        if let Some(last) = self.phases.last_mut() {
            last.to = now;
        }
        println!("{now} phase: {name}");
        self.phases.push(Phase {
            name: name.to_string(),
            from: now,
            to: now,
        });
    }

    fn next_name(&mut self, host: Ipv4Addr) -> String {
        self.lives += 1;
        format!("chaos-m3aggregator-{host}-life{}", self.lives)
    }

    /// Waits until exactly one of `members` leads and the others follow; the leader's index.
    async fn leader_among(&self, members: &[usize]) -> usize {
        let cluster = &self.cluster;
        let found = m3_testkit::wait_for(PATIENCE, Duration::from_millis(200), || async move {
            let mut leaders = Vec::new();
            for &i in members {
                match cluster.status(i).await {
                    Some((state, _)) if state == "leader" => leaders.push(i),
                    Some((state, _)) if state == "follower" => {}
                    _ => return None,
                }
            }
            (leaders.len() == 1).then(|| leaders[0])
        })
        .await;
        found.unwrap_or_else(|| {
            panic!(
                "no single leader among aggregators {members:?} within {PATIENCE:?}{}",
                cluster.logs()
            )
        })
    }

    /// Waits until every aggregator of `members` but `except` is up and reports it can lead.
    async fn wait_can_lead(&self, members: &[usize], except: usize) {
        let cluster = &self.cluster;
        let ready = m3_testkit::wait_for(PATIENCE, Duration::from_millis(200), || async move {
            for &i in members.iter().filter(|&&i| i != except) {
                if !matches!(cluster.status(i).await, Some((_, true))) {
                    return None;
                }
            }
            Some(())
        })
        .await;
        if ready.is_none() {
            panic!(
                "aggregators {members:?} other than {except} did not report canLead within {PATIENCE:?}{}",
                cluster.logs()
            );
        }
    }

    /// Kills aggregator `index` and starts it again [`DOWN_FOR`] later.
    async fn crash_and_restart(&mut self, index: usize) {
        self.cluster.aggregators[index].process.kill();
        tokio::time::sleep(DOWN_FOR).await;
        let name = self.next_name(self.cluster.aggregators[index].host);
        self.cluster.restart_aggregator(index, &name);
        self.cluster.wait_aggregator_healthy(index).await;
    }

    async fn kill_leaders(&mut self, kills: usize) {
        self.begin(&format!("leader SIGKILL + restart ({kills}x)"))
            .await;
        let members = self.shard_set.clone();
        for kill in 0..kills {
            let leader = self.leader_among(&members).await;
            // The follower holds every window the leader has not flushed yet: killing the
            // leader before that would leave nobody with them (a double fault).
            self.wait_can_lead(&members, leader).await;
            self.crash_and_restart(leader).await;
            println!(
                "{} kill {}: leader {leader} killed and restarted",
                now_ms(),
                kill + 1
            );
        }
        let leader = self.leader_among(&members).await;
        self.wait_can_lead(&members, leader).await;
        tokio::time::sleep(SETTLE).await;
    }

    async fn kill_follower(&mut self) {
        self.begin("follower SIGKILL + restart").await;
        let members = self.shard_set.clone();
        let leader = self.leader_among(&members).await;
        let follower = members
            .iter()
            .copied()
            .find(|&i| i != leader)
            .expect("a follower");
        self.crash_and_restart(follower).await;
        self.leader_among(&members).await;
        self.wait_can_lead(&members, self.leader_among(&members).await)
            .await;
        tokio::time::sleep(SETTLE).await;
    }

    async fn pause_leader(&mut self) {
        self.begin("leader SIGSTOP for 2 TTLs, SIGCONT").await;
        let members = self.shard_set.clone();
        let leader = self.leader_among(&members).await;
        self.wait_can_lead(&members, leader).await;
        self.cluster.aggregators[leader].process.pause();
        tokio::time::sleep(TTL * 2 + Duration::from_secs(1)).await;
        self.cluster.aggregators[leader].process.resume();
        let now_leading = self.leader_among(&members).await;
        println!(
            "{} paused leader {leader} resumed; {now_leading} leads",
            now_ms()
        );
        assert_ne!(
            now_leading,
            leader,
            "nobody took over from the leader paused for two TTLs{}",
            self.cluster.logs()
        );
        let resumed = &self.cluster.aggregators[leader].process;
        assert!(
            resumed.log().contains("Lost leadership"),
            "the resumed leader did not notice it lost its lease: {resumed}"
        );
        self.wait_can_lead(&members, now_leading).await;
        tokio::time::sleep(SETTLE).await;
    }

    async fn kill_coordinator(&mut self) {
        self.begin("coordinator SIGKILL + restart").await;
        self.cluster.coordinators[0].process.kill();
        tokio::time::sleep(DOWN_FOR).await;
        self.lives += 1;
        let name = format!("chaos-m3coordinator-life{}", self.lives);
        self.cluster.restart_coordinator(0, &name).await;
        tokio::time::sleep(SETTLE).await;
    }

    async fn ingest_outage(&mut self) {
        let outage = MESSAGE_TTL / 2 + Duration::from_secs(2);
        self.begin(&format!(
            "coordinator ingest outage ({}s, message TTL {}s)",
            outage.as_secs(),
            MESSAGE_TTL.as_secs()
        ))
        .await;
        self.cluster.coordinators[0].process.pause();
        tokio::time::sleep(outage).await;
        self.cluster.coordinators[0].process.resume();
        tokio::time::sleep(SETTLE * 2).await;
    }

    async fn kill_etcd(&mut self) {
        self.begin("etcd SIGKILL + restart").await;
        self.cluster.etcd.stop();
        tokio::time::sleep(DOWN_FOR).await;
        let etcd = &mut self.cluster.etcd;
        tokio::task::block_in_place(|| etcd.restart());
        let members = self.shard_set.clone();
        let leader = self.leader_among(&members).await;
        self.wait_can_lead(&members, leader).await;
        tokio::time::sleep(SETTLE).await;
    }

    /// The aggregator placement, as the admin API answers it.
    async fn placement(&self) -> Value {
        self.cluster
            .client
            .get(self.placement_url(""))
            .send()
            .await
            .expect("GET placement")
            .json()
            .await
            .expect("placement JSON")
    }

    fn placement_url(&self, path: &str) -> String {
        format!(
            "{}/api/v1/services/m3aggregator/placement{path}",
            self.cluster.coordinators[0].url()
        )
    }

    /// POSTs a placement change, retrying while it is refused because the previous change's
    /// transition has not passed yet; the new placement.
    async fn change_placement(&self, path: &str, body: &Value) -> Value {
        let url = self.placement_url(path);
        let client = &self.cluster.client;
        let mut last = String::new();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while tokio::time::Instant::now() < deadline {
            let response = client
                .post(&url)
                .json(body)
                .send()
                .await
                .expect("POST placement change");
            let status = response.status().as_u16();
            let answer: Value = response.json().await.expect("placement change answer");
            if status == 200 {
                return answer;
            }
            last = format!("{status} {answer}");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        panic!(
            "POST {url} {body} was refused for {PATIENCE:?}: {last}{}",
            self.cluster.logs()
        )
    }

    /// The request entry of a new instance on `host`, in isolation group `group`.
    fn candidate(&self, host: Ipv4Addr, template: &Value) -> Value {
        let port = self.cluster.rawtcp_port;
        json!({
            "id": format!("{host}:{port}"),
            "isolation_group": template["isolationGroup"],
            "zone": template["zone"],
            "weight": template["weight"],
            "endpoint": format!("{host}:{port}"),
            "hostname": host.to_string(),
            "port": port,
        })
    }

    /// Starts an aggregator on a spare host, not yet in the placement; its index.
    async fn start_spare(&mut self) -> usize {
        let host = self.spares.remove(0);
        let name = self.next_name(host);
        let config = self.cluster.aggregators[0].config.clone();
        let ports = (
            self.cluster.rawtcp_port,
            self.cluster.aggregators[0].http.port(),
        );
        let spare = start_aggregator_with(&name, &self.cluster.etcd, host, ports, &config);
        self.cluster.aggregators.push(spare);
        let index = self.cluster.aggregators.len() - 1;
        self.cluster.wait_aggregator_healthy(index).await;
        index
    }

    fn instance_id(&self, index: usize) -> String {
        format!(
            "{}:{}",
            self.cluster.aggregators[index].host, self.cluster.rawtcp_port
        )
    }

    /// Stops the aggregators `leaving` cleanly once none of them leads any more (their windows
    /// are out), which must not happen before `transition_ms`: they own their shards until
    /// then. (With a whole shard set leaving, its leader may be either member.)
    async fn stop_when_none_leads(&mut self, leaving: &[usize], transition_ms: i64) {
        let cluster = &self.cluster;
        let done = m3_testkit::wait_for(PATIENCE, Duration::from_millis(500), || async move {
            for &index in leaving {
                match cluster.status(index).await {
                    Some((state, _)) if state != "leader" => {}
                    _ => return None,
                }
            }
            Some(())
        })
        .await;
        if done.is_none() {
            panic!(
                "aggregators {leaving:?} still lead {PATIENCE:?} after leaving the placement{}",
                cluster.logs()
            );
        }
        let handed_over = now_ms();
        assert!(
            handed_over >= transition_ms,
            "aggregators {leaving:?} stopped leading at {handed_over}, before their shards' cutoff at {transition_ms}{}",
            cluster.logs()
        );
        for &index in leaving {
            let process = &mut self.cluster.aggregators[index].process;
            process.terminate();
            assert!(
                process.wait_exit(Duration::from_secs(30)).is_some(),
                "aggregator {index} did not stop on SIGTERM: {process}"
            );
        }
    }

    async fn add_and_remove_shard_set(&mut self) {
        self.begin("add a shard set, then remove it").await;
        let added = [self.start_spare().await, self.start_spare().await];
        let placement = self.placement().await;
        let instances = &placement["placement"]["instances"];
        let templates: Vec<Value> = self
            .shard_set
            .iter()
            .map(|&i| instances[self.instance_id(i)].clone())
            .collect();
        let body = json!({
            "instances": [
                self.candidate(self.cluster.aggregators[added[0]].host, &templates[0]),
                self.candidate(self.cluster.aggregators[added[1]].host, &templates[1]),
            ],
        });
        let answer = self.change_placement("", &body).await;
        println!("{} added {added:?}: {}", now_ms(), shard_counts(&answer));
        self.leader_among(&added).await;
        // Traffic through both shard sets for a while, then the new one leaves again.
        tokio::time::sleep(Duration::from_secs(15)).await;
        let ids: Vec<String> = added.iter().map(|&i| self.instance_id(i)).collect();
        let answer = self
            .change_placement("/remove", &json!({ "instance_ids": ids }))
            .await;
        println!("{} removed {added:?}: {}", now_ms(), shard_counts(&answer));
        self.stop_when_none_leads(&added, transition_ms(&answer))
            .await;
        let members = self.shard_set.clone();
        let leader = self.leader_among(&members).await;
        self.wait_can_lead(&members, leader).await;
        tokio::time::sleep(SETTLE).await;
    }

    async fn replace_leader(&mut self) {
        self.begin("replace the leader").await;
        let replacement = self.start_spare().await;
        let members = self.shard_set.clone();
        let leader = self.leader_among(&members).await;
        let placement = self.placement().await;
        let leaving = placement["placement"]["instances"][self.instance_id(leader)].clone();
        let body = json!({
            "leavingInstanceIDs": [self.instance_id(leader)],
            "candidates": [self.candidate(self.cluster.aggregators[replacement].host, &leaving)],
        });
        let answer = self.change_placement("/replace", &body).await;
        println!("{} replaced {leader} with {replacement}", now_ms());
        self.stop_when_none_leads(&[leader], transition_ms(&answer))
            .await;
        self.shard_set = members
            .iter()
            .copied()
            .filter(|&i| i != leader)
            .chain([replacement])
            .collect();
        let members = self.shard_set.clone();
        let new_leader = self.leader_among(&members).await;
        self.wait_can_lead(&members, new_leader).await;
        tokio::time::sleep(SETTLE).await;
    }

    /// Reads every window back, prints the table, and fails unless every phase is exact.
    async fn report(&self, sent: &SentWindows) {
        let (from, to) = (
            self.phases.first().map_or(0, |p| p.from),
            self.phases.last().map_or(0, |p| p.to),
        );
        let history = &self.history;
        // Windows still in flight (the last ones, redeliveries) land within a minute or two.
        let cluster = &self.cluster;
        let history_ref = history;
        let exact = m3_testkit::wait_for(PATIENCE, Duration::from_secs(2), || async move {
            let report =
                compare_sum_count(cluster, sent, METRIC, NAMESPACE, (from, to), history_ref).await;
            report.is_exact().then_some(report)
        })
        .await;
        let mut table = String::from(
            "| phase | expected | stored | missing | differing | stored twice |\n|---|---|---|---|---|---|\n",
        );
        let mut failed = Vec::new();
        for phase in &self.phases {
            let report: WindowReport = compare_sum_count(
                cluster,
                sent,
                METRIC,
                NAMESPACE,
                (phase.from, phase.to),
                history,
            )
            .await;
            let twice = report
                .corrected
                .iter()
                .filter(|line| in_phase(line, phase))
                .count()
                + report.duplicated;
            table.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                phase.name,
                report.expected,
                report.stored,
                report.missing.len(),
                report.differing.len(),
                twice
            ));
            if !report.missing.is_empty() || !report.differing.is_empty() || twice > 0 {
                failed.push(format!("{}: {report}", phase.name));
            }
        }
        println!("{table}");
        assert!(
            exact.is_some() && failed.is_empty(),
            "windows lost or wrong under faults:\n{table}\n{}{}",
            failed.join("\n"),
            cluster.logs()
        );
    }
}

/// Whether a correction line (`<series> @<end>: ...`) is about a window ending in `phase`.
fn in_phase(line: &str, phase: &Phase) -> bool {
    line.split_once(" @")
        .and_then(|(_, rest)| rest.split(':').next())
        .and_then(|end| end.parse::<i64>().ok())
        .is_some_and(|end| end > phase.from && end <= phase.to)
}

/// The transition time of a placement change, in ms, from its answer.
fn transition_ms(answer: &Value) -> i64 {
    answer["placement"]["cutoverTime"]
        .as_str()
        .and_then(|t| t.parse::<i64>().ok())
        .map(|nanos| nanos / 1_000_000)
        .unwrap_or_else(|| panic!("no transition time in {answer}"))
}

/// "<instance>: <n> shards" for each instance of a placement answer.
fn shard_counts(answer: &Value) -> String {
    let mut counts = BTreeMap::new();
    if let Some(instances) = answer["placement"]["instances"].as_object() {
        for (id, instance) in instances {
            counts.insert(
                id.clone(),
                instance["shards"].as_array().map_or(0, Vec::len),
            );
        }
    }
    format!("{counts:?}")
}
