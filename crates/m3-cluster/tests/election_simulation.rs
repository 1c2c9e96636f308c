//! Deterministic simulation of the leader election and the flush-time protocol built on it.
//!
//! Three members of one shard set run real [`LeaderElection`]s over one [`MemoryKv`], on
//! Tokio's paused clock, each through its own view of the store that can delay every request
//! and its answer, or cut the member off (a network partition). A seeded schedule crashes and
//! restarts members, partitions them, delays their traffic, makes the leader resign, and closes
//! a member's campaign and starts it again (an aggregator leaving and rejoining its shard set,
//! with `begin_close` first, as the flush manager does). What the aggregator does on top
//! is modelled in a few lines, with the same rules:
//!
//! - a member holds a window completely only if it ran since before the window started (a
//!   restarted process missed what came before);
//! - it is eligible to stand when it holds every window not yet flushed (the persisted flush
//!   time), as `canLead` says;
//! - while [`LeaderElection::leads`] holds, it emits every window that ended more than the
//!   past buffer ago and is not yet flushed, with the value it holds ("complete" or "partial"),
//!   then persists the new flush time with a check-and-set guarded by its term key.
//!
//! Invariants, checked for every seed: at no step, and at no emission, do two members lead at
//! once; every window is emitted; no window is ever emitted with a partial value, so none has
//! two different values (a window emitted twice with the same value, by a leader whose flush
//! time was not yet persisted and its successor, is allowed and counted). Faults are spaced (one at a time, with quiet time between) as in the chaos harness:
//! a window lost because every member that held it crashed is a double fault, not a bug.
//!
//! `M3_ELECTION_SIMULATION_SEEDS=<n>` runs more seeds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use m3_cluster::kv::{BoxFuture, CreatedKey, Guard, KvError, KvStore, KvWatch, LeaseId, Versioned};
use m3_cluster::{ElectionState, LeaderElection, MemoryKv};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

const KEY: &str = "_ld/default_env/m3aggregator/shardset/1/lock";
const FLUSH_KEY: &str = "_kv/default_env/shardset/1/flush";
const TTL: Duration = Duration::from_secs(3);
/// The aggregation window.
const WINDOW: Duration = Duration::from_secs(1);
/// How long after its end a window is flushed.
const BUFFER_PAST: Duration = Duration::from_secs(1);
/// One simulation step.
const STEP: Duration = Duration::from_millis(100);
/// Simulated time per seed, then a quiet time for the last windows to flush.
const RUN: Duration = Duration::from_secs(240);
const SETTLE: Duration = Duration::from_secs(20);
const MEMBERS: usize = 3;

/// A small deterministic generator (xorshift64*), so a seed replays the same schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from + 1))
    }
}

/// What the schedule does to one member's connection to the store.
#[derive(Default)]
struct Link {
    /// Every request fails until then.
    cut_until: Option<Instant>,
    /// Each request and each answer waits this long.
    delay: Duration,
}

/// One member's view of the shared store: requests and answers delayed, or cut off.
struct FaultyKv {
    inner: Arc<MemoryKv>,
    link: Arc<Mutex<Link>>,
}

impl FaultyKv {
    fn call<'a, T: Send + 'a>(
        &'a self,
        op: impl FnOnce() -> BoxFuture<'a, Result<T, KvError>> + Send + 'a,
    ) -> BoxFuture<'a, Result<T, KvError>> {
        Box::pin(async move {
            let delay = self.link.lock().delay;
            tokio::time::sleep(delay).await;
            let cut = |link: &Link| link.cut_until.is_some_and(|t| Instant::now() < t);
            if cut(&self.link.lock()) {
                return Err(KvError::backend("partitioned"));
            }
            let result = op().await;
            tokio::time::sleep(delay).await;
            if cut(&self.link.lock()) {
                // The request was applied; its answer is lost.
                return Err(KvError::backend("partitioned"));
            }
            result
        })
    }
}

impl KvStore for FaultyKv {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Versioned>, KvError>> {
        self.call(move || self.inner.get(key))
    }
    fn get_version<'a>(
        &'a self,
        key: &'a str,
        version: i64,
    ) -> BoxFuture<'a, Result<Option<Bytes>, KvError>> {
        self.call(move || self.inner.get_version(key, version))
    }
    fn set<'a>(&'a self, key: &'a str, value: Bytes) -> BoxFuture<'a, Result<i64, KvError>> {
        self.call(move || self.inner.set(key, value))
    }
    fn set_if_not_exists<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
    ) -> BoxFuture<'a, Result<i64, KvError>> {
        self.call(move || self.inner.set_if_not_exists(key, value))
    }
    fn check_and_set<'a>(
        &'a self,
        key: &'a str,
        expected: i64,
        value: Bytes,
    ) -> BoxFuture<'a, Result<i64, KvError>> {
        self.call(move || self.inner.check_and_set(key, expected, value))
    }
    fn check_and_set_guarded<'a>(
        &'a self,
        key: &'a str,
        expected: i64,
        value: Bytes,
        guard: &'a Guard,
    ) -> BoxFuture<'a, Result<i64, KvError>> {
        self.call(move || {
            self.inner
                .check_and_set_guarded(key, expected, value, guard)
        })
    }
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Versioned>, KvError>> {
        self.call(move || self.inner.delete(key))
    }
    fn watch<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<KvWatch, KvError>> {
        self.call(move || self.inner.watch(key))
    }
    fn grant_lease(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId, KvError>> {
        self.call(move || self.inner.grant_lease(ttl))
    }
    fn keep_lease_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), KvError>> {
        self.call(move || self.inner.keep_lease_alive(lease))
    }
    fn revoke_lease(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), KvError>> {
        self.call(move || self.inner.revoke_lease(lease))
    }
    fn create_with_lease<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        lease: LeaseId,
    ) -> BoxFuture<'a, Result<bool, KvError>> {
        self.call(move || self.inner.create_with_lease(key, value, lease))
    }
    fn list_by_creation<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<Vec<CreatedKey>, KvError>> {
        self.call(move || self.inner.list_by_creation(prefix))
    }
}

/// One member: its election, and since when it has been running (`None`: crashed).
struct Member {
    kv: Arc<FaultyKv>,
    election: Option<LeaderElection>,
    eligible: watch::Sender<bool>,
    running_since: Option<Instant>,
    /// When a crashed member comes back.
    restart_at: Option<Instant>,
}

impl Member {
    fn start(&mut self, name: &str) {
        let (eligible, rx) = watch::channel(false);
        let election =
            LeaderElection::new(self.kv.clone(), KEY, name.to_owned(), TTL).with_eligibility(rx);
        election.campaign();
        self.election = Some(election);
        self.eligible = eligible;
        self.running_since = Some(Instant::now());
        self.restart_at = None;
    }

    fn leads(&self) -> bool {
        self.election.as_ref().is_some_and(LeaderElection::leads)
    }

    /// Whether it holds window `w` (starting at `epoch + w * WINDOW`) completely.
    fn holds(&self, epoch: Instant, w: u64) -> bool {
        self.running_since
            .is_some_and(|since| since <= epoch + WINDOW * u32::try_from(w).unwrap_or(u32::MAX))
    }
}

/// The persisted flush time: the first window not yet flushed.
async fn flushed_until(kv: &dyn KvStore) -> Result<(u64, i64), KvError> {
    Ok(match kv.get(FLUSH_KEY).await? {
        Some(v) => (
            std::str::from_utf8(&v.value)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            v.version,
        ),
        None => (0, 0),
    })
}

/// Every emission: window → (member, value) in order.
type Emitted = BTreeMap<u64, Vec<(usize, &'static str)>>;

struct Outcome {
    windows: u64,
    emitted: Emitted,
    faults: usize,
}

async fn simulate(seed: u64) -> Outcome {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let store = Arc::new(MemoryKv::new());
    let mut members: Vec<Member> = (0..MEMBERS)
        .map(|_| Member {
            kv: Arc::new(FaultyKv {
                inner: store.clone(),
                link: Arc::new(Mutex::new(Link::default())),
            }),
            election: None,
            eligible: watch::channel(false).0,
            running_since: None,
            restart_at: None,
        })
        .collect();
    let epoch = Instant::now();
    for (i, m) in members.iter_mut().enumerate() {
        m.start(&format!("agg{i}"));
    }
    let mut emitted = Emitted::new();
    let mut faults = 0;
    // No new fault before then: one fault at a time, with quiet time after it.
    let mut quiet_until = epoch + Duration::from_secs(5);
    let mut lives = MEMBERS;
    let end = epoch + RUN;
    loop {
        let now = Instant::now();
        if now >= end + SETTLE {
            break;
        }
        // The schedule.
        for m in &mut members {
            if m.restart_at.is_some_and(|t| now >= t) {
                lives += 1;
                m.start(&format!("agg-life{lives}"));
                quiet_until = now + TTL * 2 + WINDOW * 3;
            }
            let mut link = m.kv.link.lock();
            if link.cut_until.is_some_and(|t| now >= t) {
                link.cut_until = None;
                quiet_until = now + TTL * 2 + WINDOW * 3;
            }
        }
        if now < end && now >= quiet_until && rng.below(20) == 0 {
            faults += 1;
            let target = usize::try_from(rng.below(MEMBERS as u64)).unwrap_or(0);
            let m = &mut members[target];
            match rng.below(5) {
                0 => {
                    // Crash: the process and everything it held are gone.
                    m.election = None;
                    m.running_since = None;
                    m.restart_at = Some(now + rng.millis(200, 5_000));
                    quiet_until = end + SETTLE;
                }
                1 => {
                    m.kv.link.lock().cut_until = Some(now + rng.millis(500, 8_000));
                    quiet_until = end + SETTLE;
                }
                2 => {
                    m.kv.link.lock().delay = rng.millis(0, 400);
                    quiet_until = now + TTL;
                }
                3 => {
                    // The leader resigns (POST /resign), whoever it is.
                    if let Some(e) = members
                        .iter()
                        .find(|m| m.leads())
                        .and_then(|m| m.election.as_ref())
                    {
                        let _ = e.resign().await;
                    }
                    quiet_until = now + TTL * 2 + WINDOW * 3;
                }
                _ => {
                    // Leaves the shard set and joins again: the campaign closes (without
                    // waiting, as the flush manager does) and starts anew.
                    if let Some(e) = &m.election {
                        e.begin_close();
                        e.close().await;
                        e.campaign();
                    }
                    quiet_until = now + TTL * 2 + WINDOW * 3;
                }
            }
        }

        // The aggregator's part.
        let leading: Vec<usize> = (0..MEMBERS).filter(|&i| members[i].leads()).collect();
        assert!(
            leading.len() <= 1,
            "seed {seed}: members {leading:?} lead at once at {:?}",
            now - epoch
        );
        for (i, m) in members.iter().enumerate() {
            if m.election.is_none() {
                continue;
            }
            let Ok((next, version)) = flushed_until(m.kv.as_ref()).await else {
                continue;
            };
            let _ = m.eligible.send(m.holds(epoch, next));
            if !m.leads() {
                continue;
            }
            // Windows that ended more than the past buffer ago.
            let elapsed = Instant::now().saturating_duration_since(epoch);
            let due = elapsed.saturating_sub(BUFFER_PAST).as_secs() / WINDOW.as_secs();
            if due <= next {
                continue;
            }
            for (j, other) in members.iter().enumerate() {
                assert!(
                    j == i || !other.leads(),
                    "seed {seed}: member {i} emits while member {j} leads, at {:?}",
                    Instant::now() - epoch
                );
            }
            for w in next..due {
                let value = if m.holds(epoch, w) {
                    "complete"
                } else {
                    "partial"
                };
                emitted.entry(w).or_default().push((i, value));
            }
            let Some(term) = m.election.as_ref().and_then(LeaderElection::term) else {
                continue;
            };
            let _ =
                m.kv.check_and_set_guarded(FLUSH_KEY, version, Bytes::from(due.to_string()), &term)
                    .await;
        }
        tokio::time::sleep(STEP).await;
    }
    let states: Vec<ElectionState> = members
        .iter()
        .filter_map(|m| m.election.as_ref().map(|e| *e.state().borrow()))
        .collect();
    assert!(
        states.contains(&ElectionState::Leader),
        "seed {seed}: nobody leads at the end: {states:?}"
    );
    Outcome {
        windows: (RUN + SETTLE - BUFFER_PAST * 2).as_secs() / WINDOW.as_secs(),
        emitted,
        faults,
    }
}

fn seeds() -> u64 {
    std::env::var("M3_ELECTION_SIMULATION_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12)
}

#[tokio::test(start_paused = true)]
async fn every_window_is_emitted_whole_under_crashes_partitions_delays_and_hand_overs() {
    let mut total_faults = 0;
    let mut twice = 0;
    for seed in 0..seeds() {
        let outcome = simulate(seed).await;
        assert!(outcome.faults > 0, "seed {seed}: no fault injected");
        total_faults += outcome.faults;
        for w in 0..outcome.windows {
            let emissions = outcome.emitted.get(&w).map_or(&[][..], Vec::as_slice);
            assert!(
                !emissions.is_empty(),
                "seed {seed}: window {w} never emitted ({} faults)",
                outcome.faults
            );
            assert!(
                emissions.iter().all(|(_, value)| *value == "complete"),
                "seed {seed}: window {w} emitted with a partial value: {emissions:?}"
            );
            if emissions.len() > 1 {
                twice += 1;
            }
        }
    }
    assert!(
        total_faults >= seeds() as usize,
        "the schedule injected only {total_faults} faults"
    );
    println!(
        "{} seeds, {total_faults} faults, {twice} windows emitted twice with the same value",
        seeds()
    );
}
