//! Leader election for a shard set, over any [`KvStore`].
//!
//! Every member of an aggregator shard set aggregates the same data, but only one may flush it
//! downstream. Members campaign on the shard set's election key
//! ([`crate::keys::election_key`]); the winner is leader until it resigns or stops renewing.
//!
//! # How it works
//!
//! The key holds one lease record: the leader's value (its instance ID) and the wall-clock time
//! in milliseconds at which the lease expires. All writes are `check_and_set` against the version
//! just read, so two candidates can never both win the same version.
//!
//! - A candidate that finds the key absent, expired or resigned writes itself as leader with
//!   `expires_at = now + ttl`, at once if it is first in the line of candidates (see below).
//! - The leader renews every `ttl / 3`. When a renewal finds another version, someone else took
//!   over and it steps down at once; when the backend fails it keeps trying and steps down by
//!   itself once its own lease has run out.
//! - Followers watch the key and wake up when the record changes or the lease expires.
//! - [`LeaderElection::resign`] overwrites the record with an expired one (so followers take over
//!   immediately) and holds the resigning member back from campaigning for one `ttl`.
//!
//! ```text
//!   leader A   ──write──┬─renew─┬─renew─┬─ (crash: no more renewals)
//!                       │ ttl/3 │       │
//!   lease      [────────┼───────┼───────┼── ttl ──]
//!   follower B  watch ..........................  expired → write B ── leader B
//! ```
//!
//! # A restarted process is a new candidate
//!
//! The record carries the leader's *incarnation*, a number drawn anew by every
//! [`LeaderElection`]. A process that crashes and restarts within the TTL finds a live record
//! with its own instance ID but another incarnation: it treats it as another member's lease and
//! waits for it to expire like everyone else. Taking the record back would be wrong: the new
//! process holds none of the windows its previous life had open, while a follower holds them
//! all.
//!
//! # Who takes a free lease: the line of candidates
//!
//! A member is *eligible* when it can lead without a gap: it holds every window the leader
//! has not yet flushed (the aggregator's `canLead`, fed in through
//! [`LeaderElection::with_eligibility`]). Every campaigning member keeps an entry in a line of
//! candidates next to the election key, ordered eligible first, then longest standing first
//! (see [`candidates`]). When the lease is free, the first in line takes it at once; any other
//! member waits one more TTL and takes it only if nobody did. So a member never wins while one
//! that can lead is alive, a restarted process queues behind the follower that kept running (as
//! in M3's etcd election queue), and a shard set whose first in line is wedged still gets a
//! leader:
//!
//! ```text
//!   lease of B (crashed)  [──────── ttl ────────]
//!   A (first in line)                            take ── leader A
//!   B' (restarted, behind A)     wait .......................... (one ttl) sees A: follower
//! ```
//!
//! Expiry compares wall-clock times written by different processes, so members' clocks must
//! agree to well within a TTL (M3's default TTL is 10s; NTP keeps clocks within milliseconds).
//! The clock is read as "wall clock at start + monotonic time since", which never jumps
//! backwards and follows Tokio's paused time in tests. An etcd backend may later back the same
//! API with etcd leases instead.
//!
//! # States
//!
//! As in M3: [`ElectionState::Leader`], [`ElectionState::Follower`] (another member leads),
//! [`ElectionState::PendingFollower`] (this member just lost or gave up leadership and has not
//! yet seen the new leader) and [`ElectionState::Unknown`] (not campaigning, or the KV store
//! cannot be reached).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::kv::{KvError, KvStore, KvWatch, Versioned};

mod candidates;

/// Where this member stands in the election.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElectionState {
    /// Not campaigning, or the state cannot be known (KV store unreachable).
    Unknown,
    /// Another member leads.
    Follower,
    /// This member just stopped leading and has not yet seen who leads now.
    PendingFollower,
    /// This member leads.
    Leader,
}

/// Errors of a [`LeaderElection`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElectionError {
    /// `resign` was called while not campaigning.
    #[error("not campaigning in election {key:?}")]
    NotCampaigning {
        /// The election key.
        key: String,
    },
    /// The KV store failed.
    #[error(transparent)]
    Kv(#[from] KvError),
}

/// The record stored at the election key.
#[derive(Clone, PartialEq, Message)]
struct LeaseRecord {
    /// The leader's value (instance ID); empty after a resignation.
    #[prost(string, tag = "1")]
    leader: String,
    /// Wall-clock milliseconds since the Unix epoch at which the lease ends.
    #[prost(int64, tag = "2")]
    expires_at_ms: i64,
    /// The leader's incarnation: drawn anew by each [`LeaderElection`], so a restarted process
    /// does not mistake its previous life's lease for its own.
    #[prost(uint64, tag = "3")]
    incarnation: u64,
}

impl LeaseRecord {
    fn decode_lenient(bytes: &[u8]) -> Option<Self> {
        LeaseRecord::decode(bytes).ok()
    }

    fn is_live(&self, now_ms: i64) -> bool {
        !self.leader.is_empty() && self.expires_at_ms > now_ms
    }

    fn is_held_by(&self, shared: &Shared) -> bool {
        self.leader == shared.value && self.incarnation == shared.incarnation
    }
}

/// A number that differs between two [`LeaderElection`]s, also across process restarts: the
/// wall clock in nanoseconds mixed with the process ID and a per-process counter.
fn new_incarnation() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mixed = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    mixed.max(1)
}

/// Wall clock in milliseconds, read as the wall time at creation plus monotonic time since.
#[derive(Debug, Clone, Copy)]
struct Clock {
    wall_ms_at_base: i64,
    base: Instant,
}

impl Clock {
    fn new() -> Self {
        let wall_ms_at_base = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Clock {
            wall_ms_at_base,
            base: Instant::now(),
        }
    }

    fn now_ms(&self) -> i64 {
        let since = i64::try_from(self.base.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.wall_ms_at_base.saturating_add(since)
    }

    /// The local instant at which wall time `ms` is reached (now if already past).
    fn instant_of(&self, ms: i64) -> Instant {
        let ahead = ms.saturating_sub(self.now_ms()).max(0);
        Instant::now() + Duration::from_millis(u64::try_from(ahead).unwrap_or(0))
    }
}

enum Command {
    Resign(oneshot::Sender<Result<(), ElectionError>>),
    Stop(oneshot::Sender<()>),
}

struct Running {
    commands: mpsc::UnboundedSender<Command>,
    handle: JoinHandle<()>,
}

struct Shared {
    kv: Arc<dyn KvStore>,
    key: String,
    /// `<key>/candidates`: the line of candidates (see [`candidates`]).
    candidates_key: String,
    value: String,
    incarnation: u64,
    /// Wall-clock milliseconds since which this member stands.
    since_ms: i64,
    ttl: Duration,
    clock: Clock,
    state: watch::Sender<ElectionState>,
    /// Whether this member can lead without a gap (see the module doc).
    eligible: watch::Receiver<bool>,
    /// Until when this member holds back after resigning.
    hold_off: watch::Sender<Option<Instant>>,
    /// While leading: the local instant at which the lease ends unless renewed, taken *before*
    /// the write that acquired or renewed it, so it never lies after the expiry the other
    /// members see (see [`LeaderElection::leads`]).
    lease_end: Mutex<Option<Instant>>,
}

impl Shared {
    fn is_held_off(&self) -> bool {
        self.hold_off.borrow().is_some_and(|t| Instant::now() < t)
    }

    fn hold_off_for_ttl(&self) {
        self.hold_off.send_replace(Some(Instant::now() + self.ttl));
    }
}

/// One member's participation in one election. See the [module docs](self).
///
/// Dropping it stops campaigning without resigning: a leader's lease then runs out after the TTL
/// and another member takes over, as after a crash. Call [`LeaderElection::close`] for a clean
/// hand-over.
pub struct LeaderElection {
    shared: Arc<Shared>,
    running: Mutex<Option<Running>>,
}

impl std::fmt::Debug for LeaderElection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElection")
            .field("key", &self.shared.key)
            .field("value", &self.shared.value)
            .field("ttl", &self.shared.ttl)
            .field("state", &*self.shared.state.borrow())
            .finish_non_exhaustive()
    }
}

impl LeaderElection {
    /// An election at `election_key` in which this member stands as `candidate_value` (its
    /// instance ID) with lease `ttl` (M3's default: 10s). Nothing happens until
    /// [`LeaderElection::campaign`]. A TTL under 3ms is raised to 3ms.
    pub fn new(
        kv: Arc<dyn KvStore>,
        election_key: impl Into<String>,
        candidate_value: impl Into<String>,
        ttl: Duration,
    ) -> Self {
        let (state, _) = watch::channel(ElectionState::Unknown);
        // Always eligible unless told otherwise; the sender is dropped, so the value is final.
        let (_, eligible) = watch::channel(true);
        let key = election_key.into();
        let clock = Clock::new();
        LeaderElection {
            shared: Arc::new(Shared {
                kv,
                candidates_key: crate::keys::election_candidates_key(&key),
                key,
                value: candidate_value.into(),
                incarnation: new_incarnation(),
                since_ms: clock.now_ms(),
                ttl: ttl.max(Duration::from_millis(3)),
                clock,
                state,
                eligible,
                hold_off: watch::channel(None).0,
                lease_end: Mutex::new(None),
            }),
            running: Mutex::new(None),
        }
    }

    /// Makes taking a free lease depend on `eligible`: while it reads `false`, this member
    /// waits one TTL after the lease became free before taking it (see the module doc). Default:
    /// always eligible. Call before [`LeaderElection::campaign`].
    ///
    /// # Panics
    /// When called after [`LeaderElection::campaign`] (the running campaign would not see it).
    #[must_use]
    pub fn with_eligibility(mut self, eligible: watch::Receiver<bool>) -> Self {
        assert!(
            self.running.get_mut().is_none(),
            "with_eligibility must be called before campaign"
        );
        match Arc::get_mut(&mut self.shared) {
            Some(shared) => shared.eligible = eligible,
            None => unreachable!("the shared state has no other owner before campaign"),
        }
        self
    }

    /// Reads time from `clock` instead of this member's own. Tests run with tokio's clock
    /// paused, where each member's own clock (wall time when it was created + paused monotonic
    /// time) drifts from the others' by however long the machine really took between their
    /// creations; members sharing one clock agree exactly.
    #[cfg(test)]
    fn with_clock(mut self, clock: Clock) -> Self {
        match Arc::get_mut(&mut self.shared) {
            Some(shared) => {
                shared.since_ms = clock.now_ms();
                shared.clock = clock;
            }
            None => unreachable!("the shared state has no other owner before campaign"),
        }
        self
    }

    /// The election key.
    pub fn key(&self) -> &str {
        &self.shared.key
    }

    /// Starts campaigning in a background task (no-op when already campaigning) and returns a
    /// receiver of this member's [`ElectionState`].
    ///
    /// # Panics
    /// Spawns a task, so it must be called within a Tokio runtime.
    pub fn campaign(&self) -> watch::Receiver<ElectionState> {
        let mut running = self.running.lock();
        let alive = running.as_ref().is_some_and(|r| !r.handle.is_finished());
        if !alive {
            let (tx, rx) = mpsc::unbounded_channel();
            let handle = tokio::spawn(run(self.shared.clone(), rx));
            *running = Some(Running {
                commands: tx,
                handle,
            });
        }
        self.shared.state.subscribe()
    }

    /// Whether this member is campaigning ([`LeaderElection::campaign`] called, and neither
    /// [`LeaderElection::close`] since nor the campaign ended).
    pub fn is_campaigning(&self) -> bool {
        self.running
            .lock()
            .as_ref()
            .is_some_and(|r| !r.handle.is_finished())
    }

    /// Whether this member leads *now*: its state is [`ElectionState::Leader`] and its lease
    /// has not run out on its own clock.
    ///
    /// The state alone can be stale: a process paused longer than the TTL (SIGSTOP, a frozen
    /// VM, a long GC-like stall) wakes up still marked leader, and its flush timers may fire
    /// before the renewal that would tell it another member took over. Its lease deadline was
    /// taken before its last successful write, so it passes no later than the moment the other
    /// members may take the lease: checking it before every flush keeps two members from
    /// flushing the same windows.
    pub fn leads(&self) -> bool {
        *self.shared.state.borrow() == ElectionState::Leader
            && self
                .shared
                .lease_end
                .lock()
                .is_some_and(|end| Instant::now() < end)
    }

    /// A receiver of this member's [`ElectionState`] (whether or not it campaigns).
    pub fn state(&self) -> watch::Receiver<ElectionState> {
        self.shared.state.subscribe()
    }

    /// Gives up leadership: the lease is marked expired so another member can take over at
    /// once, this member becomes a follower and does not campaign again for one TTL. Does
    /// nothing but the hold-off when not leading.
    ///
    /// # Errors
    /// [`ElectionError::NotCampaigning`] when [`LeaderElection::campaign`] was not called;
    /// [`ElectionError::Kv`] when the store failed (the lease then runs out by itself).
    pub async fn resign(&self) -> Result<(), ElectionError> {
        let not_campaigning = || ElectionError::NotCampaigning {
            key: self.shared.key.clone(),
        };
        let commands = self
            .running
            .lock()
            .as_ref()
            .map(|r| r.commands.clone())
            .ok_or_else(not_campaigning)?;
        let (tx, rx) = oneshot::channel();
        commands
            .send(Command::Resign(tx))
            .map_err(|_| not_campaigning())?;
        rx.await.map_err(|_| not_campaigning())?
    }

    /// Stops campaigning, resigning first when leading, and waits for the background task.
    /// The state becomes [`ElectionState::Unknown`].
    pub async fn close(&self) {
        let running = self.running.lock().take();
        if let Some(running) = running {
            let (tx, rx) = oneshot::channel();
            if running.commands.send(Command::Stop(tx)).is_ok() {
                let _ = rx.await;
            }
            let _ = running.handle.await;
        }
        self.shared.state.send_replace(ElectionState::Unknown);
    }

    /// The current leader's value as stored in KV, `None` when nobody holds a live lease.
    ///
    /// # Errors
    /// [`ElectionError::Kv`] when the store failed.
    pub async fn leader(&self) -> Result<Option<String>, ElectionError> {
        let stored = self.shared.kv.get(&self.shared.key).await?;
        let now = self.shared.clock.now_ms();
        Ok(stored
            .and_then(|v| LeaseRecord::decode_lenient(&v.value))
            .filter(|r| r.is_live(now))
            .map(|r| r.leader))
    }
}

impl Drop for LeaderElection {
    fn drop(&mut self) {
        if let Some(running) = self.running.get_mut().take() {
            running.handle.abort();
        }
    }
}

/// What the follower phase decided.
enum Next {
    /// Try to write ourselves as leader over this version (0: key absent).
    Acquire(i64),
    /// Stop the task.
    Stop,
}

/// What the leader phase ended with.
enum LeaderExit {
    Resigned,
    Lost,
    Stop,
}

async fn run(shared: Arc<Shared>, mut commands: mpsc::UnboundedReceiver<Command>) {
    let retry = shared.ttl / 10;
    let _heartbeat = AbortOnDrop(tokio::spawn(heartbeat(Arc::clone(&shared))));
    let Some(mut watch) = open_watch(&shared, &shared.key, &mut commands).await else {
        return;
    };
    let Some(mut candidates) = open_watch(&shared, &shared.candidates_key, &mut commands).await
    else {
        return;
    };
    loop {
        let expected = match follow(&shared, &mut watch, &mut candidates, &mut commands).await {
            Next::Stop => break,
            Next::Acquire(version) => version,
        };
        let record = own_record(&shared);
        let lease_end = Instant::now() + shared.ttl;
        match shared
            .kv
            .check_and_set(&shared.key, expected, Bytes::from(record.encode_to_vec()))
            .await
        {
            Ok(version) => {
                *shared.lease_end.lock() = Some(lease_end);
                shared.state.send_replace(ElectionState::Leader);
                tracing::info!(key = %shared.key, value = %shared.value, "Became leader.");
                let exit = lead(&shared, &mut watch, &mut commands, version, lease_end).await;
                *shared.lease_end.lock() = None;
                match exit {
                    LeaderExit::Stop => break,
                    LeaderExit::Resigned | LeaderExit::Lost => {}
                }
            }
            Err(KvError::VersionMismatch { .. }) => {
                // Somebody else wrote first; wait for the watch to show it before deciding again.
                let _ = tokio::time::timeout(retry, watch.changed()).await;
            }
            Err(err) => {
                tracing::warn!(key = %shared.key, error = %err, "Campaign write failed; retrying.");
                shared.state.send_replace(ElectionState::Unknown);
                // Keep answering commands while the store fails, so `close` cannot hang.
                tokio::select! {
                    () = tokio::time::sleep(retry) => {}
                    cmd = commands.recv() => match cmd {
                        None | Some(Command::Stop(_)) => break,
                        Some(Command::Resign(reply)) => {
                            shared.hold_off_for_ttl();
                            let _ = reply.send(Ok(()));
                        }
                    },
                }
            }
        }
    }
    // Leave the line of candidates; with the store down the entry lapses after a TTL.
    let _ = tokio::time::timeout(shared.ttl, candidates::deregister(&shared)).await;
}

/// Aborts a task when dropped, so the heartbeat ends with the campaign however it ends.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps this member's entry in the line of candidates current: every `ttl / 3`, and at once
/// when its eligibility or its hold-off changes.
async fn heartbeat(shared: Arc<Shared>) {
    let mut eligible = shared.eligible.clone();
    let mut hold_off = shared.hold_off.subscribe();
    loop {
        let now_eligible = *eligible.borrow_and_update();
        if let Err(err) = candidates::register(&shared, now_eligible).await {
            tracing::debug!(key = %shared.candidates_key, error = %err, "Candidate entry not renewed.");
        }
        let hold_off_end = hold_off.borrow_and_update().filter(|t| *t > Instant::now());
        tokio::select! {
            () = tokio::time::sleep(shared.ttl / 3) => {}
            Ok(()) = eligible.changed() => {}
            Ok(()) = hold_off.changed() => {}
            () = sleep_until_opt(hold_off_end) => {}
        }
    }
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

/// The record this member writes as leader: held until now + ttl.
fn own_record(shared: &Shared) -> LeaseRecord {
    LeaseRecord {
        leader: shared.value.clone(),
        expires_at_ms: shared.clock.now_ms().saturating_add(ttl_ms(shared.ttl)),
        incarnation: shared.incarnation,
    }
}

/// Opens a KV watch on `key`, retrying while the store fails. `None` when asked to stop
/// meanwhile.
async fn open_watch(
    shared: &Shared,
    key: &str,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> Option<KvWatch> {
    loop {
        match shared.kv.watch(key).await {
            Ok(w) => return Some(w),
            Err(err) => {
                tracing::warn!(key, error = %err, "Cannot watch election key; retrying.");
                shared.state.send_replace(ElectionState::Unknown);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(shared.ttl / 10) => {}
            cmd = commands.recv() => match cmd {
                None | Some(Command::Stop(_)) => return None,
                Some(Command::Resign(reply)) => {
                    shared.hold_off_for_ttl();
                    let _ = reply.send(Ok(()));
                }
            },
        }
    }
}

/// Follows the election until this member should try to acquire the lease.
async fn follow(
    shared: &Shared,
    watch: &mut KvWatch,
    candidates: &mut KvWatch,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> Next {
    let mut eligible = shared.eligible.clone();
    let mut hold_off = shared.hold_off.subscribe();
    // When the lease was first seen free (absent, expired or resigned): a member that is not
    // first in line takes it one TTL later if nobody did.
    let mut free_since: Option<Instant> = None;
    loop {
        let current: Option<Versioned> = watch.borrow_and_update().clone();
        let now_ms = shared.clock.now_ms();
        let record = current
            .as_ref()
            .and_then(|v| LeaseRecord::decode_lenient(&v.value));
        let version = current.as_ref().map_or(0, |v| v.version);
        let held_off_until = *hold_off.borrow_and_update();
        let held_off = held_off_until.is_some_and(|t| Instant::now() < t);
        let live = record.as_ref().filter(|r| r.is_live(now_ms));
        let wake_at = match live {
            // Our own live record (this campaign, e.g. after the watch reopened): renew it.
            Some(r) if r.is_held_by(shared) && !held_off => return Next::Acquire(version),
            Some(r) => {
                free_since = None;
                if !r.is_held_by(shared) || *shared.state.borrow() == ElectionState::Leader {
                    shared.state.send_replace(ElectionState::Follower);
                }
                Some(shared.clock.instant_of(r.expires_at_ms))
            }
            None => {
                // A lease that ran out became free when it expired (its holder is gone);
                // a resigned or absent one now.
                let lapsed = record
                    .as_ref()
                    .filter(|r| !r.leader.is_empty())
                    .map(|r| (r.leader.as_str(), r.incarnation));
                let since = *free_since.get_or_insert_with(|| match &record {
                    Some(r) if !r.leader.is_empty() => shared.clock.instant_of(r.expires_at_ms),
                    _ => Instant::now(),
                });
                let grace_end = since + shared.ttl;
                let first = candidates::first_in_line(
                    shared,
                    candidates
                        .borrow_and_update()
                        .as_ref()
                        .map(|v| v.value.as_ref()),
                    *eligible.borrow_and_update(),
                    lapsed,
                );
                let may_take = first || Instant::now() >= grace_end;
                if may_take && !held_off {
                    return Next::Acquire(version);
                }
                if *shared.state.borrow() == ElectionState::Leader {
                    shared.state.send_replace(ElectionState::Follower);
                }
                (!may_take).then_some(grace_end)
            }
        };
        let wake_at = match (wake_at, held_off_until.filter(|_| held_off)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (None, b) => b,
            (a, None) => a,
        };
        tokio::select! {
            changed = watch.changed() => {
                if changed.is_err() {
                    // The backend closed the watch: open a new one.
                    match open_watch(shared, &shared.key, commands).await {
                        Some(w) => *watch = w,
                        None => return Next::Stop,
                    }
                }
            }
            changed = candidates.changed() => {
                if changed.is_err() {
                    match open_watch(shared, &shared.candidates_key, commands).await {
                        Some(w) => *candidates = w,
                        None => return Next::Stop,
                    }
                }
            }
            // A closed sender means the eligibility is final: nothing more to wait for.
            Ok(()) = eligible.changed() => {}
            () = sleep_until_opt(wake_at) => {}
            cmd = commands.recv() => match cmd {
                None | Some(Command::Stop(_)) => return Next::Stop,
                Some(Command::Resign(reply)) => {
                    shared.hold_off_for_ttl();
                    let _ = reply.send(Ok(()));
                }
            },
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Leads: renews every ttl/3 until resigned, stopped or overtaken.
async fn lead(
    shared: &Shared,
    watch: &mut KvWatch,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    mut version: i64,
    mut lease_end: Instant,
) -> LeaderExit {
    let renew_every = shared.ttl / 3;
    let mut next_renewal = Instant::now() + renew_every;
    let mut watch_open = true;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next_renewal) => {
                let record = own_record(shared);
                let attempt_end = Instant::now() + shared.ttl;
                match shared
                    .kv
                    .check_and_set(&shared.key, version, Bytes::from(record.encode_to_vec()))
                    .await
                {
                    Ok(v) => {
                        version = v;
                        lease_end = attempt_end;
                        *shared.lease_end.lock() = Some(lease_end);
                    }
                    Err(KvError::VersionMismatch { .. }) => return step_down(shared, "lease taken over"),
                    Err(err) => {
                        tracing::warn!(key = %shared.key, error = %err, "Lease renewal failed.");
                        if Instant::now() >= lease_end {
                            shared.state.send_replace(ElectionState::Unknown);
                            tracing::warn!(key = %shared.key, "Lease ran out without renewal; stepping down.");
                            return LeaderExit::Lost;
                        }
                    }
                }
                next_renewal = Instant::now() + renew_every;
            }
            changed = watch.changed(), if watch_open => {
                if changed.is_err() {
                    // Keep leading on renewals alone; the follower phase reopens the watch.
                    watch_open = false;
                    continue;
                }
                let overtaken = watch
                    .borrow_and_update()
                    .as_ref()
                    .is_none_or(|v| v.version != version);
                if overtaken {
                    return step_down(shared, "election key changed by another writer");
                }
            }
            cmd = commands.recv() => match cmd {
                None => return LeaderExit::Stop,
                Some(Command::Stop(reply)) => {
                    let _ = give_up(shared, version).await;
                    let _ = reply.send(());
                    return LeaderExit::Stop;
                }
                Some(Command::Resign(reply)) => {
                    // Step out of the line first, so the next in line sees the lease free and
                    // itself first at once.
                    shared.hold_off_for_ttl();
                    let eligible = *shared.eligible.borrow();
                    let _ = candidates::register(shared, eligible).await;
                    let result = give_up(shared, version).await;
                    shared.state.send_replace(ElectionState::Follower);
                    tracing::info!(key = %shared.key, value = %shared.value, "Resigned leadership.");
                    let _ = reply.send(result);
                    return LeaderExit::Resigned;
                }
            },
        }
    }
}

fn step_down(shared: &Shared, why: &str) -> LeaderExit {
    tracing::warn!(key = %shared.key, value = %shared.value, why, "Lost leadership.");
    shared.state.send_replace(ElectionState::PendingFollower);
    LeaderExit::Lost
}

/// Marks our lease expired so followers take over at once. A version mismatch means we were no
/// longer leader, which is the outcome wanted.
async fn give_up(shared: &Shared, version: i64) -> Result<(), ElectionError> {
    let expired = LeaseRecord::default();
    match shared
        .kv
        .check_and_set(&shared.key, version, Bytes::from(expired.encode_to_vec()))
        .await
    {
        Ok(_) | Err(KvError::VersionMismatch { .. }) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::memory::MemoryKv;

    const TTL: Duration = Duration::from_secs(10);
    const KEY: &str = "_ld/default_env/m3aggregator/shardset/1/lock";

    fn candidates(kv: &Arc<MemoryKv>, n: usize) -> Vec<LeaderElection> {
        let clock = Clock::new();
        (0..n)
            .map(|i| LeaderElection::new(kv.clone(), KEY, format!("agg{i}"), TTL).with_clock(clock))
            .collect()
    }

    fn leaders(elections: &[LeaderElection]) -> Vec<usize> {
        elections
            .iter()
            .enumerate()
            .filter(|(_, e)| *e.state().borrow() == ElectionState::Leader)
            .map(|(i, _)| i)
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn exactly_one_of_three_leads_and_keeps_leading() {
        let kv = Arc::new(MemoryKv::new());
        let elections = candidates(&kv, 3);
        for e in &elections {
            e.campaign();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let lead = leaders(&elections);
        assert_eq!(lead.len(), 1, "exactly one leader");
        let leader_value = format!("agg{}", lead[0]);
        for (i, e) in elections.iter().enumerate() {
            if i != lead[0] {
                assert_eq!(*e.state().borrow(), ElectionState::Follower);
            }
            assert_eq!(e.leader().await.unwrap(), Some(leader_value.clone()));
        }
        // Renewals keep the same leader across many TTLs.
        tokio::time::sleep(TTL * 5).await;
        assert_eq!(leaders(&elections), lead);
    }

    #[tokio::test(start_paused = true)]
    async fn resign_hands_over() {
        let kv = Arc::new(MemoryKv::new());
        let elections = candidates(&kv, 2);
        for e in &elections {
            e.campaign();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let first = leaders(&elections)[0];
        let other = 1 - first;
        let started = Instant::now();
        elections[first].resign().await.unwrap();
        assert_eq!(*elections[first].state().borrow(), ElectionState::Follower);
        let mut rx = elections[other].state();
        rx.wait_for(|s| *s == ElectionState::Leader).await.unwrap();
        assert!(
            started.elapsed() < TTL,
            "hand-over must not wait for the TTL"
        );
        tokio::time::sleep(TTL * 3).await;
        assert_eq!(leaders(&elections), vec![other]);
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_leader_is_replaced_after_the_ttl() {
        let kv = Arc::new(MemoryKv::new());
        let mut elections = candidates(&kv, 3);
        for e in &elections {
            e.campaign();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let first = leaders(&elections)[0];
        drop(elections.remove(first));
        let dropped_at = Instant::now();

        tokio::time::sleep(TTL / 2).await;
        assert!(leaders(&elections).is_empty(), "lease still held");

        let mut rxs: Vec<_> = elections.iter().map(LeaderElection::state).collect();
        let (a, b) = rxs.split_at_mut(1);
        tokio::select! {
            _ = a[0].wait_for(|s| *s == ElectionState::Leader) => {}
            _ = b[0].wait_for(|s| *s == ElectionState::Leader) => {}
        }
        let waited = dropped_at.elapsed();
        assert!(waited <= TTL + Duration::from_secs(1), "took {waited:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(leaders(&elections).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn overwritten_lease_makes_the_leader_step_down() {
        let kv = Arc::new(MemoryKv::new());
        let e = LeaderElection::new(kv.clone(), KEY, "agg0", TTL);
        let mut rx = e.campaign();
        rx.wait_for(|s| *s == ElectionState::Leader).await.unwrap();
        let intruder = LeaseRecord {
            leader: "intruder".into(),
            expires_at_ms: i64::MAX,
            incarnation: 7,
        };
        kv.set(KEY, Bytes::from(intruder.encode_to_vec()))
            .await
            .unwrap();
        rx.wait_for(|s| *s == ElectionState::Follower)
            .await
            .unwrap();
        assert_eq!(e.leader().await.unwrap(), Some("intruder".into()));
    }

    #[tokio::test(start_paused = true)]
    async fn close_hands_over_and_garbage_is_overwritten() {
        let kv = Arc::new(MemoryKv::new());
        kv.set(KEY, Bytes::from_static(b"\xff\xff not a record"))
            .await
            .unwrap();
        let elections = candidates(&kv, 2);
        assert!(matches!(
            elections[0].resign().await,
            Err(ElectionError::NotCampaigning { .. })
        ));
        for e in &elections {
            e.campaign();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let first = leaders(&elections)[0];
        let other = 1 - first;
        elections[first].close().await;
        assert_eq!(*elections[first].state().borrow(), ElectionState::Unknown);
        let mut rx = elections[other].state();
        tokio::time::timeout(
            Duration::from_secs(1),
            rx.wait_for(|s| *s == ElectionState::Leader),
        )
        .await
        .expect("hand-over on close is immediate")
        .unwrap();
    }

    /// Regression (issue 6): a leader that crashed and restarted within the TTL used to renew
    /// "its own" record and lead again at once, holding none of the open windows.
    #[tokio::test(start_paused = true)]
    async fn a_restarted_process_does_not_take_back_its_previous_lease() {
        let kv = Arc::new(MemoryKv::new());
        let clock = Clock::new();
        let first_life = LeaderElection::new(kv.clone(), KEY, "agg0", TTL).with_clock(clock);
        first_life
            .campaign()
            .wait_for(|s| *s == ElectionState::Leader)
            .await
            .unwrap();
        let other = LeaderElection::new(kv.clone(), KEY, "agg1", TTL).with_clock(clock);
        other.campaign();
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(first_life); // crash: no resignation, the lease stays until it expires
        let crashed_at = Instant::now();
        tokio::time::sleep(Duration::from_secs(2)).await;

        let (eligible_tx, eligible) = watch::channel(false);
        let second_life = LeaderElection::new(kv.clone(), KEY, "agg0", TTL)
            .with_clock(clock)
            .with_eligibility(eligible);
        let mut second = second_life.campaign();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            *second.borrow_and_update(),
            ElectionState::Follower,
            "the old lease is another member's"
        );
        let mut rx = other.state();
        rx.wait_for(|s| *s == ElectionState::Leader).await.unwrap();
        assert!(crashed_at.elapsed() >= TTL - Duration::from_secs(1));
        // Not eligible, and an eligible member leads: never wins, over many TTLs.
        tokio::time::sleep(TTL * 4).await;
        assert_eq!(*second.borrow(), ElectionState::Follower);
        assert_eq!(*other.state().borrow(), ElectionState::Leader);
        // Once it can lead and the leader resigns, it takes over at once.
        eligible_tx.send_replace(true);
        other.resign().await.unwrap();
        tokio::time::timeout(
            Duration::from_secs(1),
            second.wait_for(|s| *s == ElectionState::Leader),
        )
        .await
        .expect("an eligible member takes a resigned lease at once")
        .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_eligible_member_takes_a_lapsed_lease_before_an_older_one_that_is_not() {
        let kv = Arc::new(MemoryKv::new());
        let crashed = LeaderElection::new(kv.clone(), KEY, "agg9", TTL);
        crashed
            .campaign()
            .wait_for(|s| *s == ElectionState::Leader)
            .await
            .unwrap();
        let (_keep, not_eligible) = watch::channel(false);
        let lacking =
            LeaderElection::new(kv.clone(), KEY, "agg0", TTL).with_eligibility(not_eligible);
        lacking.campaign();
        // Candidates are ordered by wall-clock start, which paused time does not move.
        std::thread::sleep(Duration::from_millis(5));
        let complete = LeaderElection::new(kv.clone(), KEY, "agg1", TTL);
        let mut rx = complete.campaign();
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(crashed);
        rx.wait_for(|s| *s == ElectionState::Leader).await.unwrap();
        tokio::time::sleep(TTL * 3).await;
        assert_eq!(*lacking.state().borrow(), ElectionState::Follower);
        assert_eq!(*complete.state().borrow(), ElectionState::Leader);
    }

    #[tokio::test(start_paused = true)]
    async fn with_nobody_eligible_the_longest_standing_candidate_leads() {
        let kv = Arc::new(MemoryKv::new());
        let crashed = LeaderElection::new(kv.clone(), KEY, "agg9", TTL);
        crashed
            .campaign()
            .wait_for(|s| *s == ElectionState::Leader)
            .await
            .unwrap();
        let (_keep, not_eligible) = watch::channel(false);
        let older = LeaderElection::new(kv.clone(), KEY, "agg1", TTL)
            .with_eligibility(not_eligible.clone());
        older.campaign();
        // Candidates are ordered by wall-clock start, which paused time does not move.
        std::thread::sleep(Duration::from_millis(5));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let younger =
            LeaderElection::new(kv.clone(), KEY, "agg0", TTL).with_eligibility(not_eligible);
        younger.campaign();
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(crashed);
        let mut rx = older.state();
        rx.wait_for(|s| *s == ElectionState::Leader).await.unwrap();
        tokio::time::sleep(TTL * 3).await;
        assert_eq!(*younger.state().borrow(), ElectionState::Follower);
    }

    /// A member first in line that does not take the lease (wedged) holds the others up for one
    /// TTL only.
    #[tokio::test(start_paused = true)]
    async fn a_candidate_that_is_not_first_in_line_leads_one_ttl_after_the_lease_is_free() {
        let kv = Arc::new(MemoryKv::new());
        let wedged = candidates::CandidateList {
            candidates: vec![candidates::CandidateRecord {
                value: "wedged".into(),
                incarnation: 1,
                since_ms: 0,
                eligible: true,
                expires_at_ms: i64::MAX,
                withdrawn: false,
            }],
        };
        kv.set(
            &format!("{KEY}/candidates"),
            Bytes::from(wedged.encode_to_vec()),
        )
        .await
        .unwrap();
        let (_keep, not_eligible) = watch::channel(false);
        let member =
            LeaderElection::new(kv.clone(), KEY, "agg0", TTL).with_eligibility(not_eligible);
        let started = Instant::now();
        let mut rx = member.campaign();
        tokio::time::sleep(TTL / 2).await;
        assert_ne!(*rx.borrow_and_update(), ElectionState::Leader, "too early");
        rx.wait_for(|s| *s == ElectionState::Leader).await.unwrap();
        let waited = started.elapsed();
        assert!(
            waited >= TTL && waited <= TTL + Duration::from_secs(1),
            "took {waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_campaign_leaves_the_line_of_candidates() {
        let kv = Arc::new(MemoryKv::new());
        let member = LeaderElection::new(kv.clone(), KEY, "agg0", TTL);
        member
            .campaign()
            .wait_for(|s| *s == ElectionState::Leader)
            .await
            .unwrap();
        let listed = || async {
            let stored = kv.get(&format!("{KEY}/candidates")).await.unwrap();
            stored
                .map(|v| candidates::CandidateList::decode(v.value.as_ref()).unwrap())
                .unwrap_or_default()
                .candidates
                .len()
        };
        assert_eq!(listed().await, 1);
        member.close().await;
        assert_eq!(listed().await, 0);
    }

    /// A store whose writes always fail, as etcd does while it is down.
    struct FailingWrites(MemoryKv);

    impl KvStore for FailingWrites {
        fn get<'a>(
            &'a self,
            key: &'a str,
        ) -> crate::kv::BoxFuture<'a, Result<Option<Versioned>, KvError>> {
            self.0.get(key)
        }
        fn set<'a>(
            &'a self,
            _: &'a str,
            _: Bytes,
        ) -> crate::kv::BoxFuture<'a, Result<i64, KvError>> {
            Box::pin(async { Err(KvError::backend("store down")) })
        }
        fn set_if_not_exists<'a>(
            &'a self,
            _: &'a str,
            _: Bytes,
        ) -> crate::kv::BoxFuture<'a, Result<i64, KvError>> {
            Box::pin(async { Err(KvError::backend("store down")) })
        }
        fn check_and_set<'a>(
            &'a self,
            _: &'a str,
            _: i64,
            _: Bytes,
        ) -> crate::kv::BoxFuture<'a, Result<i64, KvError>> {
            Box::pin(async { Err(KvError::backend("store down")) })
        }
        fn delete<'a>(
            &'a self,
            key: &'a str,
        ) -> crate::kv::BoxFuture<'a, Result<Option<Versioned>, KvError>> {
            self.0.delete(key)
        }
        fn watch<'a>(&'a self, key: &'a str) -> crate::kv::BoxFuture<'a, Result<KvWatch, KvError>> {
            self.0.watch(key)
        }
    }

    /// Regression: with every campaign write failing, `close` used to wait forever because the
    /// retry loop never read the stop command (an aggregator hung on SIGTERM with etcd down).
    #[tokio::test(start_paused = true)]
    async fn close_returns_while_the_store_refuses_writes() {
        let kv: Arc<dyn KvStore> = Arc::new(FailingWrites(MemoryKv::new()));
        let election = LeaderElection::new(kv, KEY, "agg0", TTL);
        election.campaign();
        tokio::time::sleep(Duration::from_secs(5)).await;
        tokio::time::timeout(Duration::from_secs(5), election.close())
            .await
            .expect("close returns although the store is down");
    }
}
