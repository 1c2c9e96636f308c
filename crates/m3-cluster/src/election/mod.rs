//! Leader election for a shard set, over any [`KvStore`], with M3's keys and etcd's election
//! recipe, so that m3-rs and M3 aggregators sharing an etcd exclude each other.
//!
//! Every member of an aggregator shard set aggregates the same data, but only one may flush it
//! downstream. Members campaign in the shard set's election ([`crate::keys::election_key`],
//! `_ld/<env>/<service>/shardset/<id>/lock`); the winner leads until it resigns, stops, or
//! loses its lease.
//!
//! # How it works: a queue of leased keys
//!
//! This is the recipe of etcd's `concurrency.Election`, which M3's leader client uses:
//!
//! - A campaigning member holds a *lease* with the election's TTL ([`KvStore::grant_lease`])
//!   and renews it every `ttl / 3`. The lease is the member's session: when the process dies,
//!   renewals stop and the store deletes the member's key one TTL later.
//! - To stand, a member creates the key `<election key>/<lease ID in hex>` attached to its
//!   lease, holding its value (the instance ID). The keys under the election key form a queue
//!   ordered by creation ([`KvStore::list_by_creation`]): **the first in the queue leads**,
//!   the others follow and lead in turn as the keys ahead of them go.
//! - [`LeaderElection::resign`] deletes the member's key, so the next in the queue leads at
//!   once, and holds the member back from standing again for one TTL.
//!   [`LeaderElection::close`] deletes it and revokes the lease. Both stop leading locally
//!   *before* the key goes, so the member never leads while the next one already does.
//!
//! ```text
//!   A: lease a, key …/lock/a  ─renew─renew─ (crash: no renewals)  …/lock/a deleted one TTL later
//!   B: lease b, key …/lock/b   follower ........................  first in the queue: leader
//! ```
//!
//! Members read the queue every `ttl / 10` (at most every 500 ms) rather than watching it: a
//! hand-over waits for the lease to run out anyway, and a read survives an etcd restart without
//! any watch to re-establish. A key under the election key without a lease is nobody's
//! candidacy (it would block the queue for ever): it is deleted with a warning.
//!
//! # A restarted process is a new candidate
//!
//! A process that crashes and restarts within the TTL gets a new lease, hence a new key behind
//! every member still standing. It never takes its previous life's place: the new process holds
//! none of the windows its previous life had open, while a follower holds them all.
//!
//! # Who stands: eligibility
//!
//! A member is *eligible* when it can lead without a gap: it holds every window the leader
//! has not yet flushed (the aggregator's `canLead`, fed in through
//! [`LeaderElection::with_eligibility`]). Only eligible members stand, and a member that finds
//! itself first in the queue without being eligible (it stopped being eligible while queued)
//! steps out instead of leading. When nobody stands (every member lacks windows, e.g. right
//! after a whole shard set restarted, or eligibility is not known yet), the others stand too
//! after a short wait, the longest running first, and keep their place, so the shard set still
//! gets a leader. An established leader stays leader: it is the one whose flushes define what
//! "every window" means.
//!
//! # Leading now
//!
//! The lease is kept by the store, not by the member's clock, so clock skew between members
//! cannot make two of them lead. A member does not know at once that its lease ended, though:
//! a process paused longer than the TTL (SIGSTOP, a stalled host) wakes up still marked leader.
//! [`LeaderElection::leads`] therefore also checks the lease's local deadline: the instant the
//! last successful renewal was *sent* plus the TTL, which passes no later than the store ends
//! the lease. Flushing only while it holds keeps two members from flushing the same windows.
//! (The deadline is on the monotonic clock, which does not count time a host spends
//! suspended.) State written as leader is guarded by the term ([`LeaderElection::term`]): the
//! leader's key as created, which exists exactly as long as the term.
//!
//! # States
//!
//! As in M3: [`ElectionState::Leader`], [`ElectionState::Follower`] (campaigning, another
//! member leads or nobody yet), [`ElectionState::PendingFollower`] (this member just lost or
//! gave up leadership and has not yet seen the new leader) and [`ElectionState::Unknown`] (not
//! campaigning, or the KV store cannot be reached).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::kv::{CreatedKey, Guard, KvError, KvStore, LeaseId, lease_ttl_seconds};

/// Where this member stands in the election.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElectionState {
    /// Not campaigning, or the state cannot be known (KV store unreachable).
    Unknown,
    /// Campaigning while another member leads, or nobody yet.
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
    /// `<key>/`: where the candidates' keys live.
    queue_prefix: String,
    value: String,
    /// The lease TTL, in whole seconds as the store counts it.
    ttl: Duration,
    state: watch::Sender<ElectionState>,
    /// Whether this member can lead without a gap (see the module doc).
    eligible: watch::Receiver<bool>,
    /// Until when this member holds back after resigning.
    hold_off: Mutex<Option<Instant>>,
    /// While leading: the local instant at which the lease ends unless renewed, taken *before*
    /// the request that granted or renewed it (see [`LeaderElection::leads`]).
    lease_end: Mutex<Option<Instant>>,
    /// When this member was created: how long its process has been running, roughly.
    created: Instant,
    /// While leading: this member's key in the queue as created (see [`LeaderElection::term`]).
    term: Mutex<Option<Guard>>,
    /// The generation of the latest campaign (each [`LeaderElection::campaign`] that starts a
    /// task takes the next one).
    generation: AtomicU64,
    /// The latest generation asked to close: its task stands no more and does not lead.
    closed_generation: AtomicU64,
}

impl Shared {
    fn is_held_off(&self) -> bool {
        self.hold_off.lock().is_some_and(|t| Instant::now() < t)
    }

    fn set_state(&self, state: ElectionState) {
        if state != ElectionState::Leader {
            *self.lease_end.lock() = None;
            *self.term.lock() = None;
        }
        self.state.send_if_modified(|current| {
            let changed = *current != state;
            *current = state;
            changed
        });
    }

    fn is_leader(&self) -> bool {
        *self.state.borrow() == ElectionState::Leader
    }

    /// Whether campaign `generation` was asked to close.
    fn is_closing(&self, generation: u64) -> bool {
        self.closed_generation.load(Ordering::SeqCst) >= generation
    }

    /// Whether the latest campaign was asked to close.
    fn latest_is_closing(&self) -> bool {
        self.is_closing(self.generation.load(Ordering::SeqCst))
    }
}

/// One member's participation in one election. See the [module docs](self).
///
/// Dropping it stops campaigning without resigning: its lease then runs out after the TTL and
/// another member takes over, as after a crash. Call [`LeaderElection::close`] for a clean
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
    /// instance ID) with lease `ttl` (M3's default: 10s), rounded up to whole seconds as etcd
    /// counts lease TTLs. Nothing happens until [`LeaderElection::campaign`].
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
        LeaderElection {
            shared: Arc::new(Shared {
                kv,
                queue_prefix: crate::keys::election_queue_prefix(&key),
                key,
                value: candidate_value.into(),
                ttl: Duration::from_secs(lease_ttl_seconds(ttl).unsigned_abs()),
                state,
                eligible,
                hold_off: Mutex::new(None),
                lease_end: Mutex::new(None),
                term: Mutex::new(None),
                created: Instant::now(),
                generation: AtomicU64::new(0),
                closed_generation: AtomicU64::new(0),
            }),
            running: Mutex::new(None),
        }
    }

    /// Makes standing depend on `eligible`: while it reads `false`, this member stands only
    /// when nobody has stood for one TTL (see the module doc). Default: always eligible. Call
    /// before [`LeaderElection::campaign`].
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
            let generation = self.shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
            let handle = tokio::spawn(run(self.shared.clone(), rx, generation));
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
    /// VM) wakes up still marked leader, and its flush timers may fire before the renewal that
    /// would tell it the lease ended. The lease deadline was taken before its last successful
    /// renewal was sent, so it passes no later than the moment the store ends the lease and
    /// another member may lead: checking it before every flush keeps two members from flushing
    /// the same windows.
    pub fn leads(&self) -> bool {
        self.shared.is_leader()
            && !self.shared.latest_is_closing()
            && self
                .shared
                .lease_end
                .lock()
                .is_some_and(|end| Instant::now() < end)
    }

    /// While this member leads: its key in the election queue as created, which exists exactly
    /// as long as this term lasts (keys are only ever added behind it, so it stays first until
    /// it goes; standing again later creates it anew, at another revision). State written "as
    /// leader" with [`KvStore::check_and_set_guarded`] and this guard is refused once the term
    /// ended, however late the write arrives.
    pub fn term(&self) -> Option<Guard> {
        if self.leads() {
            self.shared.term.lock().clone()
        } else {
            None
        }
    }

    /// A receiver of this member's [`ElectionState`] (whether or not it campaigns).
    pub fn state(&self) -> watch::Receiver<ElectionState> {
        self.shared.state.subscribe()
    }

    /// Gives up leadership: this member's key is deleted so the next in the queue leads at
    /// once, this member becomes a follower and does not stand again for one TTL. When not
    /// leading it leaves the queue and holds back the same way.
    ///
    /// # Errors
    /// [`ElectionError::NotCampaigning`] when [`LeaderElection::campaign`] was not called;
    /// [`ElectionError::Kv`] when the store failed (the key then goes with the lease, or at the
    /// next attempt).
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

    /// Stops leading at once, without waiting: [`LeaderElection::leads`] is false from now on
    /// and the campaign no longer stands. For callers that cannot wait for
    /// [`LeaderElection::close`] (with the store down it takes up to a TTL) but must not flush
    /// as leader meanwhile; `close` still has to be called to leave the queue.
    pub fn begin_close(&self) {
        let latest = self.shared.generation.load(Ordering::SeqCst);
        self.shared
            .closed_generation
            .fetch_max(latest, Ordering::SeqCst);
        if self.shared.is_leader() {
            self.shared.set_state(ElectionState::PendingFollower);
        }
    }

    /// Stops campaigning: stops leading at once, then deletes this member's key and revokes its
    /// lease (so the next in the queue leads at once), and waits for the background task. The
    /// state becomes [`ElectionState::Unknown`] unless a new campaign started meanwhile.
    pub async fn close(&self) {
        self.begin_close();
        let closed = self.shared.generation.load(Ordering::SeqCst);
        let running = self.running.lock().take();
        if let Some(running) = running {
            let (tx, rx) = oneshot::channel();
            if running.commands.send(Command::Stop(tx)).is_ok() {
                let _ = rx.await;
            }
            let _ = running.handle.await;
        }
        if self.shared.generation.load(Ordering::SeqCst) == closed {
            self.shared.set_state(ElectionState::Unknown);
        }
    }

    /// The current leader's value (the first candidate in the queue), `None` when nobody
    /// stands.
    ///
    /// # Errors
    /// [`ElectionError::Kv`] when the store failed.
    pub async fn leader(&self) -> Result<Option<String>, ElectionError> {
        let queue = self
            .shared
            .kv
            .list_by_creation(&self.shared.queue_prefix)
            .await?;
        Ok(queue
            .into_iter()
            .find(|k| k.lease != 0)
            .map(|k| String::from_utf8_lossy(&k.value).into_owned()))
    }
}

impl Drop for LeaderElection {
    fn drop(&mut self) {
        if let Some(running) = self.running.get_mut().take() {
            running.handle.abort();
        }
    }
}

/// One lease of this member and the key it stands with.
struct Session {
    lease: LeaseId,
    /// `<key>/<lease in hex>`, as etcd's election recipe names it.
    own_key: String,
    /// The local instant the lease ends unless renewed (see [`LeaderElection::leads`]).
    valid_until: Instant,
}

/// How a session ended.
enum SessionEnd {
    /// The lease ended: campaign again with a new one.
    Lost,
    /// Asked to stop; the reply is sent once the session is cleaned up.
    Stop(Option<oneshot::Sender<()>>),
}

async fn run(shared: Arc<Shared>, mut commands: mpsc::UnboundedReceiver<Command>, generation: u64) {
    loop {
        let Some(mut session) = open_session(&shared, &mut commands).await else {
            return;
        };
        match stand(&shared, &mut session, &mut commands, generation).await {
            SessionEnd::Lost => {}
            SessionEnd::Stop(reply) => {
                // Stop leading before the key goes, so the next in line never leads alongside;
                // a newer campaign's state is not this one's to touch.
                shared
                    .closed_generation
                    .fetch_max(generation, Ordering::SeqCst);
                if shared.generation.load(Ordering::SeqCst) == generation {
                    shared.set_state(ElectionState::Unknown);
                }
                // Bounded: with the store down the key goes with the lease one TTL later.
                let _ = tokio::time::timeout(shared.ttl, async {
                    let _ = shared.kv.delete(&session.own_key).await;
                    let _ = shared.kv.revoke_lease(session.lease).await;
                })
                .await;
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
                return;
            }
        }
    }
}

/// How long a member that is not eligible waits, once nobody stands, before it stands anyway:
/// two polls, so that eligible members (who stand at their next poll) get in first, plus the
/// part of one TTL this member has not yet been running. Among members that are not eligible,
/// the longest running one therefore stands first, as it holds the most: a process restarted
/// after a crash queues behind a follower that kept running, even when that follower's
/// eligibility is not (yet) known to be true.
fn default_wait(shared: &Shared) -> Duration {
    poll_interval(shared.ttl) * 2 + shared.ttl.saturating_sub(shared.created.elapsed())
}

/// How often a member retries a failed request and reads the queue.
fn poll_interval(ttl: Duration) -> Duration {
    (ttl / 10).clamp(Duration::from_millis(10), Duration::from_millis(500))
}

/// Grants this member a lease, retrying while the store fails. `None` when asked to stop
/// meanwhile.
async fn open_session(
    shared: &Shared,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> Option<Session> {
    loop {
        let asked = Instant::now();
        match shared.kv.grant_lease(shared.ttl).await {
            Ok(lease) => {
                return Some(Session {
                    lease,
                    own_key: format!("{}{lease:x}", shared.queue_prefix),
                    valid_until: asked + shared.ttl,
                });
            }
            Err(err) => {
                tracing::warn!(key = %shared.key, error = %err, "Cannot get an election lease; retrying.");
                shared.set_state(ElectionState::Unknown);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(poll_interval(shared.ttl)) => {}
            cmd = commands.recv() => match cmd {
                None | Some(Command::Stop(_)) => return None,
                Some(Command::Resign(reply)) => {
                    *shared.hold_off.lock() = Some(Instant::now() + shared.ttl);
                    let _ = reply.send(Ok(()));
                }
            },
        }
    }
}

/// Campaigns with `session` until its lease ends or a stop command comes.
async fn stand(
    shared: &Shared,
    session: &mut Session,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    generation: u64,
) -> SessionEnd {
    let mut eligible = shared.eligible.clone();
    let renew_every = shared.ttl / 3;
    let mut next_renewal = Instant::now() + renew_every;
    // Since when nobody stands (the queue is empty): after a wait, members that are not
    // eligible stand too (see `default_wait`).
    let mut empty_since: Option<Instant> = None;
    // Whether this member stood because nobody else did: it keeps its place while queued.
    let mut stood_by_default = false;
    loop {
        if Instant::now() >= next_renewal {
            let asked = Instant::now();
            match shared.kv.keep_lease_alive(session.lease).await {
                Ok(()) => {
                    session.valid_until = asked + shared.ttl;
                    if shared.is_leader() {
                        *shared.lease_end.lock() = Some(session.valid_until);
                    }
                    next_renewal = Instant::now() + renew_every;
                }
                Err(KvError::LeaseNotFound { .. }) => {
                    return lose(shared, "the election lease ended");
                }
                Err(err) => {
                    tracing::warn!(key = %shared.key, error = %err, "Election lease renewal failed.");
                    next_renewal = Instant::now() + poll_interval(shared.ttl);
                }
            }
        }
        if Instant::now() >= session.valid_until {
            return lose(shared, "the election lease was not renewed within its TTL");
        }
        match read_queue(shared).await {
            Ok(queue) => {
                let first = queue.first();
                let own = queue.iter().find(|k| k.key == session.own_key);
                let first_is_own = first.is_some_and(|k| k.key == session.own_key);
                let queued = own.is_some();
                if first.is_none() {
                    empty_since.get_or_insert_with(Instant::now);
                } else {
                    empty_since = None;
                }
                if !queued {
                    stood_by_default = false;
                }
                let is_eligible = *eligible.borrow_and_update();
                let default_turn = empty_since.is_some_and(|t| t.elapsed() >= default_wait(shared));
                // A held-off or closing member never stands, also when its key is still first
                // (its resignation's delete failed): it deletes the key again below.
                let stands = !shared.is_held_off()
                    && !shared.is_closing(generation)
                    && ((first_is_own && shared.is_leader())
                        || is_eligible
                        || default_turn
                        || (queued && stood_by_default));
                let leading = first_is_own && stands;
                if stands && !queued {
                    match shared
                        .kv
                        .create_with_lease(
                            &session.own_key,
                            bytes::Bytes::from(shared.value.clone()),
                            session.lease,
                        )
                        .await
                    {
                        // Read the queue again at once to see where the key landed.
                        Ok(_) => {
                            stood_by_default = !is_eligible;
                            continue;
                        }
                        Err(KvError::LeaseNotFound { .. }) => {
                            return lose(shared, "the election lease ended");
                        }
                        Err(err) => {
                            tracing::warn!(key = %shared.key, error = %err, "Cannot stand for election; retrying.");
                        }
                    }
                } else if !stands && queued {
                    // Not eligible, held off or closing: step out of the way of the others.
                    if shared.is_leader() {
                        shared.set_state(ElectionState::PendingFollower);
                    }
                    if let Err(err) = shared.kv.delete(&session.own_key).await {
                        tracing::warn!(key = %shared.key, error = %err, "Cannot leave the election queue; retrying.");
                    }
                }
                if let (true, Some(own)) = (leading, own) {
                    if !shared.is_leader() {
                        *shared.lease_end.lock() = Some(session.valid_until);
                        *shared.term.lock() = Some(Guard {
                            key: own.key.clone(),
                            create_revision: own.create_revision,
                        });
                        shared.set_state(ElectionState::Leader);
                        tracing::info!(key = %shared.key, value = %shared.value, "Became leader.");
                    }
                } else if shared.is_leader() {
                    tracing::warn!(key = %shared.key, value = %shared.value, "Lost leadership: another candidate is first in the queue.");
                    shared.set_state(ElectionState::PendingFollower);
                } else if first.is_some() || *shared.state.borrow() == ElectionState::Unknown {
                    shared.set_state(ElectionState::Follower);
                }
            }
            Err(err) => {
                tracing::debug!(key = %shared.key, error = %err, "Cannot read the election queue.");
                if !shared.is_leader() {
                    shared.set_state(ElectionState::Unknown);
                }
            }
        }
        let wake = next_renewal.min(Instant::now() + poll_interval(shared.ttl));
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            // A closed sender means the eligibility is final: nothing more to wait for.
            Ok(()) = eligible.changed() => {}
            cmd = commands.recv() => match cmd {
                None => return SessionEnd::Stop(None),
                Some(Command::Stop(reply)) => return SessionEnd::Stop(Some(reply)),
                Some(Command::Resign(reply)) => {
                    // Stop leading first, then let the next in line lead; a failed delete is
                    // retried at the next poll (a held-off member's key is deleted again).
                    let was_leader = shared.is_leader();
                    *shared.hold_off.lock() = Some(Instant::now() + shared.ttl);
                    shared.set_state(ElectionState::Follower);
                    let result = shared
                        .kv
                        .delete(&session.own_key)
                        .await
                        .map(|_| ())
                        .map_err(ElectionError::from);
                    if was_leader {
                        tracing::info!(key = %shared.key, value = %shared.value, "Resigned leadership.");
                    }
                    let _ = reply.send(result);
                }
            },
        }
    }
}

/// Ends a session whose lease ended (or may have): a leader steps down.
fn lose(shared: &Shared, why: &str) -> SessionEnd {
    if shared.is_leader() {
        tracing::warn!(key = %shared.key, value = %shared.value, why, "Lost leadership.");
        shared.set_state(ElectionState::PendingFollower);
    } else {
        tracing::info!(key = %shared.key, why, "Campaigning with a new election lease.");
    }
    SessionEnd::Lost
}

/// The candidates' keys, first in line first. Keys without a lease are nobody's candidacy and
/// would block the queue for ever: they are deleted.
async fn read_queue(shared: &Shared) -> Result<Vec<CreatedKey>, KvError> {
    let mut queue = shared.kv.list_by_creation(&shared.queue_prefix).await?;
    let mut garbage = Vec::new();
    queue.retain(|k| {
        if k.lease == 0 {
            garbage.push(k.key.clone());
        }
        k.lease != 0
    });
    for key in garbage {
        tracing::warn!(key = %key, "Deleting a key without a lease from the election queue.");
        shared.kv.delete(&key).await?;
    }
    Ok(queue)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::kv::memory::MemoryKv;

    const TTL: Duration = Duration::from_secs(10);
    const KEY: &str = "_ld/default_env/m3aggregator/shardset/1/lock";

    fn candidates(kv: &Arc<MemoryKv>, n: usize) -> Vec<LeaderElection> {
        (0..n)
            .map(|i| LeaderElection::new(kv.clone(), KEY, format!("agg{i}"), TTL))
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
        assert!(elections[lead[0]].leads());
    }

    /// The keys are etcd's election recipe's, under M3's election key: a member of another
    /// implementation reads who leads, and its own key queues like ours.
    #[tokio::test(start_paused = true)]
    async fn candidates_stand_with_leased_keys_named_by_their_lease() {
        let kv = Arc::new(MemoryKv::new());
        let member = LeaderElection::new(kv.clone(), KEY, "10.0.0.1:6000", TTL);
        member
            .campaign()
            .wait_for(|s| *s == ElectionState::Leader)
            .await
            .unwrap();
        let queue = kv.list_by_creation(&format!("{KEY}/")).await.unwrap();
        assert_eq!(queue.len(), 1);
        assert_eq!(queue[0].key, format!("{KEY}/{:x}", queue[0].lease));
        assert_eq!(queue[0].value, Bytes::from_static(b"10.0.0.1:6000"));

        // Another implementation's member queues behind, and leads once ours closes.
        let other_lease = kv.grant_lease(TTL).await.unwrap();
        let other_key = format!("{KEY}/{other_lease:x}");
        kv.create_with_lease(&other_key, Bytes::from_static(b"m3-go"), other_lease)
            .await
            .unwrap();
        member.close().await;
        assert_eq!(member.leader().await.unwrap().as_deref(), Some("m3-go"));

        // And while it leads, ours follows.
        let mut rx = member.campaign();
        tokio::time::sleep(TTL * 2).await;
        kv.keep_lease_alive(other_lease).await.unwrap_err(); // not renewed: it ended
        rx.wait_for(|s| *s == ElectionState::Leader).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_follows_while_another_implementations_member_leads() {
        let kv = Arc::new(MemoryKv::new());
        let other_lease = kv.grant_lease(TTL).await.unwrap();
        kv.create_with_lease(
            &format!("{KEY}/{other_lease:x}"),
            Bytes::from_static(b"m3-go"),
            other_lease,
        )
        .await
        .unwrap();
        let member = LeaderElection::new(kv.clone(), KEY, "agg0", TTL);
        let mut rx = member.campaign();
        for _ in 0..10 {
            kv.keep_lease_alive(other_lease).await.unwrap();
            tokio::time::sleep(TTL / 3).await;
            assert_eq!(*rx.borrow_and_update(), ElectionState::Follower);
        }
        kv.revoke_lease(other_lease).await.unwrap();
        rx.wait_for(|s| *s == ElectionState::Leader).await.unwrap();
    }

    /// The term key exists while the term lasts: a write guarded by it fails after a
    /// hand-over, even one issued by the old leader before it noticed.
    #[tokio::test(start_paused = true)]
    async fn writes_guarded_by_the_term_key_fail_once_the_term_ended() {
        let kv = Arc::new(MemoryKv::new());
        let elections = candidates(&kv, 2);
        for e in &elections {
            e.campaign();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let first = leaders(&elections)[0];
        let other = 1 - first;
        let term = elections[first].term().expect("a leader has a term");
        assert_eq!(elections[other].term(), None, "a follower has none");
        kv.check_and_set_guarded("flush", 0, Bytes::from_static(b"1"), &term)
            .await
            .expect("written during the term");
        elections[first].resign().await.unwrap();
        assert_eq!(elections[first].term(), None);
        assert!(matches!(
            kv.check_and_set_guarded("flush", 1, Bytes::from_static(b"2"), &term)
                .await,
            Err(KvError::GuardMissing { .. })
        ));
        let mut rx = elections[other].state();
        rx.wait_for(|s| *s == ElectionState::Leader).await.unwrap();
        let next = elections[other].term().expect("the new term");
        assert_ne!(next, term);
        kv.check_and_set_guarded("flush", 1, Bytes::from_static(b"2"), &next)
            .await
            .expect("the new leader writes");

        // The first member stands again once its hold-off ends, with the same lease and key
        // name: a new term all the same, which the old guard does not pass.
        elections[other].resign().await.unwrap();
        let mut rx = elections[first].state();
        rx.wait_for(|s| *s == ElectionState::Leader).await.unwrap();
        let again = elections[first].term().expect("a term again");
        assert_eq!(again.key, term.key, "the same session's key");
        assert_ne!(again, term, "created anew");
        assert!(matches!(
            kv.check_and_set_guarded("flush", 2, Bytes::from_static(b"3"), &term)
                .await,
            Err(KvError::GuardMissing { .. })
        ));
    }

    /// `begin_close` stops leading at once, before the key goes (nobody leads twice), and the
    /// closing campaign hands over by itself.
    #[tokio::test(start_paused = true)]
    async fn begin_close_stops_leading_before_the_hand_over() {
        let kv = Arc::new(MemoryKv::new());
        let elections = candidates(&kv, 2);
        for e in &elections {
            e.campaign();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let first = leaders(&elections)[0];
        let other = 1 - first;
        elections[first].begin_close();
        assert!(!elections[first].leads(), "no flush as leader from now on");
        assert_eq!(elections[first].term(), None);
        // The closing campaign steps out of the queue by itself: the other leads, the first
        // never again.
        let mut rx = elections[other].state();
        rx.wait_for(|s| *s == ElectionState::Leader).await.unwrap();
        tokio::time::sleep(TTL).await;
        assert!(!elections[first].leads());
        assert_ne!(*elections[first].state().borrow(), ElectionState::Leader);
        elections[first].close().await;
        assert_eq!(*elections[first].state().borrow(), ElectionState::Unknown);
        // Campaigning again after a close works and leads again once the other goes.
        elections[first].campaign();
        elections[other].close().await;
        elections[first]
            .state()
            .wait_for(|s| *s == ElectionState::Leader)
            .await
            .unwrap();
        assert!(elections[first].leads());
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
        assert!(!elections[first].leads());
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
    async fn a_leader_whose_key_is_deleted_steps_down() {
        let kv = Arc::new(MemoryKv::new());
        let e = LeaderElection::new(kv.clone(), KEY, "agg0", TTL);
        let mut rx = e.campaign();
        rx.wait_for(|s| *s == ElectionState::Leader).await.unwrap();
        // Another member queues, then an operator deletes the leader's key.
        let other = kv.grant_lease(TTL * 100).await.unwrap();
        kv.create_with_lease(&format!("{KEY}/{other:x}"), Bytes::from_static(b"b"), other)
            .await
            .unwrap();
        let own = kv.list_by_creation(&format!("{KEY}/")).await.unwrap()[0]
            .key
            .clone();
        kv.delete(&own).await.unwrap();
        rx.wait_for(|s| *s != ElectionState::Leader).await.unwrap();
        assert!(!e.leads());
        assert_eq!(e.leader().await.unwrap().as_deref(), Some("b"));
    }

    #[tokio::test(start_paused = true)]
    async fn close_hands_over_and_leaseless_garbage_is_removed() {
        let kv = Arc::new(MemoryKv::new());
        // What an earlier layout left under the election key: no lease, nobody's candidacy.
        kv.set(&format!("{KEY}/candidates"), Bytes::from_static(b"\xff"))
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
        assert_eq!(kv.get(&format!("{KEY}/candidates")).await.unwrap(), None);
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
        // The closed member left nothing behind.
        assert_eq!(
            kv.list_by_creation(&format!("{KEY}/")).await.unwrap().len(),
            1
        );
    }

    /// Regression (issue 6): a leader that crashed and restarted within the TTL used to renew
    /// "its own" record and lead again at once, holding none of the open windows.
    #[tokio::test(start_paused = true)]
    async fn a_restarted_process_does_not_take_back_its_previous_place() {
        let kv = Arc::new(MemoryKv::new());
        let first_life = LeaderElection::new(kv.clone(), KEY, "agg0", TTL);
        first_life
            .campaign()
            .wait_for(|s| *s == ElectionState::Leader)
            .await
            .unwrap();
        let other = LeaderElection::new(kv.clone(), KEY, "agg1", TTL);
        other.campaign();
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(first_life); // crash: no resignation, the lease stays until it expires
        let crashed_at = Instant::now();
        tokio::time::sleep(Duration::from_secs(2)).await;

        let (eligible_tx, eligible) = watch::channel(false);
        let second_life =
            LeaderElection::new(kv.clone(), KEY, "agg0", TTL).with_eligibility(eligible);
        let mut second = second_life.campaign();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            *second.borrow_and_update(),
            ElectionState::Follower,
            "the old key is another member's"
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
        tokio::time::sleep(Duration::from_secs(1)).await;
        other.resign().await.unwrap();
        tokio::time::timeout(
            Duration::from_secs(1),
            second.wait_for(|s| *s == ElectionState::Leader),
        )
        .await
        .expect("an eligible member queued behind takes over at once")
        .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_eligible_member_leads_before_an_older_one_that_is_not() {
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
        tokio::time::sleep(Duration::from_secs(1)).await;
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
    async fn a_member_that_stops_being_eligible_leaves_the_queue() {
        let kv = Arc::new(MemoryKv::new());
        let leader = LeaderElection::new(kv.clone(), KEY, "agg0", TTL);
        leader
            .campaign()
            .wait_for(|s| *s == ElectionState::Leader)
            .await
            .unwrap();
        let (eligible_tx, eligible) = watch::channel(true);
        let lacking = LeaderElection::new(kv.clone(), KEY, "agg1", TTL).with_eligibility(eligible);
        lacking.campaign();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            kv.list_by_creation(&format!("{KEY}/")).await.unwrap().len(),
            2
        );
        eligible_tx.send_replace(false);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let queue = kv.list_by_creation(&format!("{KEY}/")).await.unwrap();
        assert_eq!(queue.len(), 1, "only the leader stands");
        assert_eq!(queue[0].value, Bytes::from_static(b"agg0"));
        // Third member, eligible, queues behind the leader and takes over from it.
        let complete = LeaderElection::new(kv.clone(), KEY, "agg2", TTL);
        let mut rx = complete.campaign();
        tokio::time::sleep(Duration::from_secs(1)).await;
        leader.close().await;
        rx.wait_for(|s| *s == ElectionState::Leader).await.unwrap();
        assert_eq!(*lacking.state().borrow(), ElectionState::Follower);
    }

    #[tokio::test(start_paused = true)]
    async fn with_nobody_eligible_one_member_leads_after_a_wait() {
        let kv = Arc::new(MemoryKv::new());
        let (_keep, not_eligible) = watch::channel(false);
        let members: Vec<LeaderElection> = (0..2)
            .map(|i| {
                LeaderElection::new(kv.clone(), KEY, format!("agg{i}"), TTL)
                    .with_eligibility(not_eligible.clone())
            })
            .collect();
        let started = Instant::now();
        for m in &members {
            m.campaign();
        }
        tokio::time::sleep(TTL / 2).await;
        assert!(leaders(&members).is_empty(), "too early");
        let mut rxs: Vec<_> = members.iter().map(LeaderElection::state).collect();
        let (a, b) = rxs.split_at_mut(1);
        tokio::select! {
            _ = a[0].wait_for(|s| *s == ElectionState::Leader) => {}
            _ = b[0].wait_for(|s| *s == ElectionState::Leader) => {}
        }
        let waited = started.elapsed();
        assert!(
            waited >= TTL / 2 && waited <= TTL + Duration::from_secs(1),
            "took {waited:?}"
        );
        tokio::time::sleep(TTL * 3).await;
        assert_eq!(leaders(&members).len(), 1);
    }

    /// Of members that are not eligible, the one running longest stands first: a restarted
    /// process queues behind a follower that kept running.
    #[tokio::test(start_paused = true)]
    async fn with_nobody_eligible_the_longest_running_member_leads() {
        let kv = Arc::new(MemoryKv::new());
        let (_keep, not_eligible) = watch::channel(false);
        let crashed = LeaderElection::new(kv.clone(), KEY, "agg9", TTL);
        crashed
            .campaign()
            .wait_for(|s| *s == ElectionState::Leader)
            .await
            .unwrap();
        let older = LeaderElection::new(kv.clone(), KEY, "agg1", TTL)
            .with_eligibility(not_eligible.clone());
        older.campaign();
        tokio::time::sleep(TTL).await;
        drop(crashed);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let restarted =
            LeaderElection::new(kv.clone(), KEY, "agg9", TTL).with_eligibility(not_eligible);
        restarted.campaign();
        older
            .state()
            .wait_for(|s| *s == ElectionState::Leader)
            .await
            .unwrap();
        tokio::time::sleep(TTL * 3).await;
        assert_eq!(*restarted.state().borrow(), ElectionState::Follower);
        assert_eq!(*older.state().borrow(), ElectionState::Leader);
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_campaign_leaves_nothing_behind() {
        let kv = Arc::new(MemoryKv::new());
        let member = LeaderElection::new(kv.clone(), KEY, "agg0", TTL);
        member
            .campaign()
            .wait_for(|s| *s == ElectionState::Leader)
            .await
            .unwrap();
        let queue = kv.list_by_creation(&format!("{KEY}/")).await.unwrap();
        assert_eq!(queue.len(), 1);
        member.close().await;
        assert!(
            kv.list_by_creation(&format!("{KEY}/"))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            kv.keep_lease_alive(queue[0].lease).await,
            Err(KvError::LeaseNotFound {
                lease: queue[0].lease
            }),
            "the lease is revoked"
        );
    }

    /// A store whose every call fails, as etcd does while it is down.
    struct Down;

    fn down<T: Send + 'static>() -> crate::kv::BoxFuture<'static, Result<T, KvError>> {
        Box::pin(async { Err(KvError::backend("store down")) })
    }

    impl KvStore for Down {
        fn get<'a>(
            &'a self,
            _: &'a str,
        ) -> crate::kv::BoxFuture<'a, Result<Option<crate::kv::Versioned>, KvError>> {
            down()
        }
        fn get_version<'a>(
            &'a self,
            _: &'a str,
            _: i64,
        ) -> crate::kv::BoxFuture<'a, Result<Option<Bytes>, KvError>> {
            down()
        }
        fn set<'a>(
            &'a self,
            _: &'a str,
            _: Bytes,
        ) -> crate::kv::BoxFuture<'a, Result<i64, KvError>> {
            down()
        }
        fn set_if_not_exists<'a>(
            &'a self,
            _: &'a str,
            _: Bytes,
        ) -> crate::kv::BoxFuture<'a, Result<i64, KvError>> {
            down()
        }
        fn check_and_set<'a>(
            &'a self,
            _: &'a str,
            _: i64,
            _: Bytes,
        ) -> crate::kv::BoxFuture<'a, Result<i64, KvError>> {
            down()
        }
        fn check_and_set_guarded<'a>(
            &'a self,
            _: &'a str,
            _: i64,
            _: Bytes,
            _: &'a Guard,
        ) -> crate::kv::BoxFuture<'a, Result<i64, KvError>> {
            down()
        }
        fn delete<'a>(
            &'a self,
            _: &'a str,
        ) -> crate::kv::BoxFuture<'a, Result<Option<crate::kv::Versioned>, KvError>> {
            down()
        }
        fn watch<'a>(
            &'a self,
            _: &'a str,
        ) -> crate::kv::BoxFuture<'a, Result<crate::kv::KvWatch, KvError>> {
            down()
        }
        fn grant_lease(&self, _: Duration) -> crate::kv::BoxFuture<'_, Result<LeaseId, KvError>> {
            down()
        }
        fn keep_lease_alive(&self, _: LeaseId) -> crate::kv::BoxFuture<'_, Result<(), KvError>> {
            down()
        }
        fn revoke_lease(&self, _: LeaseId) -> crate::kv::BoxFuture<'_, Result<(), KvError>> {
            down()
        }
        fn create_with_lease<'a>(
            &'a self,
            _: &'a str,
            _: Bytes,
            _: LeaseId,
        ) -> crate::kv::BoxFuture<'a, Result<bool, KvError>> {
            down()
        }
        fn list_by_creation<'a>(
            &'a self,
            _: &'a str,
        ) -> crate::kv::BoxFuture<'a, Result<Vec<CreatedKey>, KvError>> {
            down()
        }
    }

    /// Regression: with every store call failing, `close` used to wait forever because the
    /// retry loop never read the stop command (an aggregator hung on SIGTERM with etcd down).
    #[tokio::test(start_paused = true)]
    async fn close_returns_while_the_store_is_down() {
        let e = LeaderElection::new(Arc::new(Down), KEY, "agg0", TTL);
        e.campaign();
        tokio::time::sleep(TTL * 2).await;
        assert_eq!(*e.state().borrow(), ElectionState::Unknown);
        assert!(e.resign().await.is_ok(), "resign answers too");
        tokio::time::timeout(Duration::from_secs(1), e.close())
            .await
            .expect("close returns");
    }
}
