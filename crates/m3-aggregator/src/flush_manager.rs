//! The flush manager of a cluster member: every `checkEvery` it flushes the engine as the
//! leader or as a follower of its shard set, answers resign requests, and keeps the shard set's
//! flush times in KV.
//!
//! ```text
//! every checkEvery:  leader   → flush closed windows → m3msg producer (topic aggregated_metrics),
//!                                                      or the consumer in this process (output.rs)
//!                              → rollup values → rawtcp to the rollup IDs' owners (forward.rs)
//!                              → wait for acks → persist flush times (KV shardset/<id>/flush)
//!                    follower → read flush times → discard what the leader flushed
//! ```
//!
//! A follower that becomes leader first discards with the latest persisted flush times, then
//! flushes as leader, so the handover emits no window twice and skips none that it buffered.
//!
//! A follower whose leader's flush times have not moved for `maxBufferSize` (the leader cannot
//! get its output acked, or is wedged) would otherwise hold every window for as long as that
//! lasts. As M3 does, it then enters a forced mode: every `forcedFlushWindowSize` it drops the
//! windows that ended more than `maxBufferSize` ago (counted as
//! `windows_discarded{reason="follower_forced"}`), until the flush times move again. Taking
//! over after that can miss those windows; the bound on memory is the price, as in M3.
//!
//! The leader persists its flush times only once the coordinators have acked everything it
//! produced (bounded by `ack_wait`). Persisting earlier would let a leader crash lose the windows
//! still in its producer's buffer: the new leader would start after them. Persisting after the
//! acks turns that loss into a re-emit of the same values, which the store overwrites in place.
//!
//! On shutdown a leader flushes every window that has ended (timed ones still inside the past
//! buffer too: nobody is left to emit them), waits for the acks as long as they keep arriving,
//! and persists its flush times, so the member that leads next does not emit them again.
//!
//! Without an output topic, or with a topic that has no consumer service yet, nothing is
//! flushed: the windows stay in the engine until there is somewhere to send them, for at most
//! `maxBufferSize` past their end. Older ones are dropped and counted
//! (`windows_discarded{reason="no_output"}`), so an aggregator whose consumers never register
//! does not hold every window of every series it is sent, and its series can expire.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use m3_cluster::keys;
use m3_cluster::{ElectionState, KvError, KvStore, LeaderElection};
use m3_msg::Producer;
use m3_proto::Message;
use m3_proto::flushpb::{ShardFlushTimes, ShardSetFlushTimes};
use m3_proto::metricpb::{AggregatedMetric, TimedMetric, TimedMetricWithStoragePolicy};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::campaign::{NoCampaign, may_campaign};
use crate::client::AggregatorClient;
use crate::instance::{InstanceOptions, SharedElection};
use crate::metrics::OutputDiscard;
use crate::output::OutputSink;
use crate::rawtcp::unix_nanos_now;
use crate::topic_producer::SharedProducer;
use crate::{AggregatedOutput, Aggregator, FlushMode};

/// The election state and leadership eligibility, for `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushStatus {
    /// Leader, follower…
    pub election_state: ElectionState,
    /// Whether this follower holds every window the leader has not flushed.
    pub can_lead: bool,
}

/// A resign request to the flush manager, answered when done.
pub(crate) type ResignRequest = oneshot::Sender<anyhow::Result<()>>;

/// What wakes the flush manager up.
struct Tick {
    /// The instance is shutting down: this is the final flush.
    stopping: bool,
    /// A resign request to answer after this flush.
    resign: Option<ResignRequest>,
}

/// The flush manager's parts and the state it keeps between flushes.
pub(crate) struct FlushManager {
    pub(crate) aggregator: Arc<Aggregator>,
    pub(crate) kv: Arc<dyn KvStore>,
    pub(crate) options: InstanceOptions,
    pub(crate) election: SharedElection,
    pub(crate) producer: SharedProducer,
    pub(crate) client: Arc<AggregatorClient>,
    pub(crate) status: watch::Sender<FlushStatus>,
    pub(crate) resign_requests: mpsc::Receiver<ResignRequest>,
    pub(crate) cancel: CancellationToken,
}

/// What the loop remembers from one flush to the next.
struct LoopState {
    /// Whether the previous flush was a leader's.
    was_leader: bool,
    /// The last flush times read, used while the KV cannot be read.
    persisted: ShardSetFlushTimes,
    /// The shard set `persisted` belongs to.
    persisted_for: Option<u32>,
    /// The KV version of `persisted` (0: none stored).
    persisted_version: i64,
    /// When the flush times were last written (or this member started following).
    flush_times_moved_at: Instant,
    /// The last forced follower flush, while in forced mode.
    last_forced_flush: Option<Instant>,
    /// Why this member last declined to campaign, while it does (see `campaign.rs`).
    not_campaigning: Option<NoCampaign>,
    /// Whether the last flush found nowhere to send the output.
    had_no_output: bool,
    /// Outputs the in-process consumer did not store yet, oldest first.
    unstored: Vec<Unstored>,
}

/// Outputs an in-process consumer did not store, from flushes that first tried them `since`.
struct Unstored {
    since: Instant,
    outputs: Vec<AggregatedOutput>,
}

impl Unstored {
    /// The memory the outputs hold, as the bound on them counts it.
    fn bytes(&self) -> usize {
        self.outputs
            .iter()
            .map(|o| std::mem::size_of::<AggregatedOutput>() + o.id.capacity())
            .sum()
    }
}

/// Where this flush's output goes.
enum Output<'a> {
    /// The m3msg topic's producer.
    Topic(&'a Producer),
    /// The consumer in this process, and how long an output may wait for it.
    InProcess(Arc<dyn OutputSink>, Duration),
}

impl FlushManager {
    /// Flushes every `checkEvery` until cancelled, then flushes a last time and closes the
    /// producer.
    pub(crate) async fn run(mut self) {
        let mut state = LoopState {
            was_leader: false,
            persisted: ShardSetFlushTimes::default(),
            persisted_for: None,
            persisted_version: 0,
            flush_times_moved_at: Instant::now(),
            last_forced_flush: None,
            not_campaigning: None,
            had_no_output: false,
            unstored: Vec::new(),
        };
        loop {
            let tick = self.next_tick().await;
            let current = self
                .election
                .lock()
                .as_ref()
                .map(|(id, e)| (*id, *e.state().borrow()));
            match current {
                None => {
                    let _ = self.status.send(FlushStatus {
                        election_state: ElectionState::Unknown,
                        can_lead: false,
                    });
                    if let Some(reply) = tick.resign {
                        let _ =
                            reply.send(Err(anyhow::anyhow!("this instance is in no shard set")));
                    }
                }
                Some((shard_set, election_state)) => {
                    let flushed = self
                        .flush(&mut state, shard_set, election_state, tick.stopping)
                        .await;
                    match tick.resign {
                        Some(reply) if flushed => self.resign(reply).await,
                        Some(reply) => {
                            let _ = reply
                                .send(Err(anyhow::anyhow!("the output topic does not exist yet")));
                        }
                        None => {}
                    }
                }
            }
            if tick.stopping {
                break;
            }
        }
        self.close_producer().await;
    }

    /// Waits for the next check, a resign request or the shutdown.
    async fn next_tick(&mut self) -> Tick {
        tokio::select! {
            () = tokio::time::sleep(self.options.check_every) => Tick { stopping: false, resign: None },
            () = self.cancel.cancelled() => Tick { stopping: true, resign: None },
            request = self.resign_requests.recv() => match request {
                Some(reply) => Tick { stopping: false, resign: Some(reply) },
                None => Tick { stopping: true, resign: None },
            },
        }
    }

    /// One flush of `shard_set` in `election_state`; `false` when there is nowhere to send
    /// the output yet, so nothing was flushed.
    async fn flush(
        &self,
        state: &mut LoopState,
        shard_set: u32,
        election_state: ElectionState,
        stopping: bool,
    ) -> bool {
        let flush_key = keys::flush_times_key(&self.options.environment, shard_set);
        match read_flush_times(&self.kv, &flush_key).await {
            Some((times, version)) => {
                // The leader writes its flush times after every acked flush, also when they
                // did not move (a leaving leader's stop at its cutoff, resolutions of 5m and
                // more): a new write, not a new value, shows that it is making progress.
                if version != state.persisted_version || state.persisted_for != Some(shard_set) {
                    state.flush_times_moved_at = Instant::now();
                    state.last_forced_flush = None;
                }
                state.persisted = times;
                state.persisted_version = version;
                state.persisted_for = Some(shard_set);
            }
            None if state.persisted_for != Some(shard_set) => {
                state.persisted = ShardSetFlushTimes::default();
                state.persisted_for = Some(shard_set);
            }
            None => {}
        }
        if !stopping {
            self.gate_campaign(state, shard_set).await;
        }
        let election_state = self
            .election
            .lock()
            .as_ref()
            .filter(|(id, _)| *id == shard_set)
            .map_or(election_state, |(_, e)| current_state(e));
        let output = match &self.options.in_process_output {
            Some(in_process) => in_process
                .sink()
                .map(|sink| Output::InProcess(Arc::clone(sink), in_process.message_ttl())),
            None => self
                .producer
                .get()
                .filter(|p| !p.consumer_services().is_empty())
                .map(Output::Topic),
        };
        let Some(output) = output else {
            // No output topic or no consumer service yet: keep the windows until there is
            // somewhere to send them (flushing now would drop the output and move the flush
            // times past it), up to maxBufferSize past their end.
            self.drop_windows_with_no_output(state);
            let _ = self.status.send(FlushStatus {
                election_state,
                can_lead: election_state == ElectionState::Leader
                    || self.aggregator.can_lead(&state.persisted),
            });
            return false;
        };
        if state.had_no_output {
            tracing::info!(
                shard_set,
                "The output topic has a consumer service: flushing again."
            );
            state.had_no_output = false;
        }
        if let Output::InProcess(sink, ttl) = &output {
            // What the consumer did not take before goes first, leader or not (over m3msg
            // the producer retries whatever the election says, too).
            self.write_unstored(state, sink, *ttl).await;
        }
        if election_state == ElectionState::Leader {
            self.flush_as_leader(state, shard_set, &flush_key, &output, stopping)
                .await;
            state.was_leader = true;
            let _ = self.status.send(FlushStatus {
                election_state,
                can_lead: true,
            });
        } else {
            if state.was_leader {
                state.flush_times_moved_at = Instant::now();
                state.last_forced_flush = None;
            }
            // A follower's flush discards windows and emits nothing.
            self.aggregator.flush_into(
                unix_nanos_now(),
                FlushMode::Follower {
                    flushed_times: &state.persisted,
                },
                &mut |_| {},
            );
            self.force_flush_if_stale(state, shard_set);
            let passthrough = self.aggregator.take_passthrough();
            self.aggregator
                .metrics()
                .record_passthrough_follower_dropped(passthrough.len() as u64);
            state.was_leader = false;
            let _ = self.status.send(FlushStatus {
                election_state,
                can_lead: self.aggregator.can_lead(&state.persisted),
            });
        }
        true
    }

    /// Campaigns, or stops campaigning, as the shard set's cutover and cutoff times and its
    /// persisted flush times say (see `campaign.rs`).
    async fn gate_campaign(&self, state: &mut LoopState, shard_set: u32) {
        let Some(election) = self
            .election
            .lock()
            .as_ref()
            .filter(|(id, _)| *id == shard_set)
            .map(|(_, e)| Arc::clone(e))
        else {
            return;
        };
        let shards = self.aggregator.held_shards();
        match may_campaign(&shards, unix_nanos_now(), &state.persisted) {
            Ok(()) => {
                if !election.is_campaigning() {
                    if let Some(was) = state.not_campaigning.take() {
                        tracing::info!(
                            shard_set,
                            previously = was.reason(),
                            "Campaigning for leadership."
                        );
                    }
                    election.campaign();
                }
            }
            Err(why) => {
                if state.not_campaigning != Some(why) {
                    tracing::info!(
                        shard_set,
                        reason = why.reason(),
                        "Not campaigning for leadership."
                    );
                    state.not_campaigning = Some(why);
                }
                if election.is_campaigning() {
                    // Stops leading now, then resigns, so another member takes over at once.
                    // The resignation is not awaited: with the KV down it takes up to a TTL,
                    // and flushing (as a follower) must go on.
                    election.begin_close();
                    tokio::spawn(async move { election.close().await });
                }
            }
        }
    }

    /// As a follower whose leader's flush times have not moved for `maxBufferSize`: every
    /// `forcedFlushWindowSize`, drops the windows that ended more than `maxBufferSize` ago
    /// (see the module doc).
    fn force_flush_if_stale(&self, state: &mut LoopState, shard_set: u32) {
        let stale_for = state.flush_times_moved_at.elapsed();
        if stale_for < self.options.max_buffer_size {
            return;
        }
        if state
            .last_forced_flush
            .is_some_and(|t| t.elapsed() < self.options.forced_flush_window_size)
        {
            return;
        }
        if state.last_forced_flush.is_none() {
            tracing::warn!(
                shard_set,
                stale_for = ?stale_for,
                max_buffer_size = ?self.options.max_buffer_size,
                "The leader's flush times have not moved for maxBufferSize; dropping older windows to bound memory."
            );
        }
        let max_buffer = i64::try_from(self.options.max_buffer_size.as_nanos()).unwrap_or(i64::MAX);
        let before_nanos = unix_nanos_now().saturating_sub(max_buffer);
        self.aggregator.flush_into(
            unix_nanos_now(),
            FlushMode::FollowerForced { before_nanos },
            &mut |_| {},
        );
        state.last_forced_flush = Some(Instant::now());
    }

    /// With nowhere to send the output, drops the windows that ended `maxBufferSize` ago or
    /// earlier, counted, and keeps the rest for when a consumer service registers.
    fn drop_windows_with_no_output(&self, state: &mut LoopState) {
        if !state.had_no_output {
            tracing::warn!(
                max_buffer_size = ?self.options.max_buffer_size,
                "No output topic, or no consumer service on it: keeping windows for maxBufferSize, then dropping them."
            );
            state.had_no_output = true;
        }
        let max_buffer = i64::try_from(self.options.max_buffer_size.as_nanos()).unwrap_or(i64::MAX);
        let now = unix_nanos_now();
        self.aggregator.flush_into(
            now,
            FlushMode::NoOutput {
                before_nanos: now.saturating_sub(max_buffer),
            },
            &mut |_| {},
        );
    }

    /// Emits the ended windows, forwards rollup values, and persists the flush times once the
    /// coordinators have acked everything.
    async fn flush_as_leader(
        &self,
        state: &mut LoopState,
        shard_set: u32,
        flush_key: &str,
        output: &Output<'_>,
        stopping: bool,
    ) {
        let now = unix_nanos_now();
        if !state.was_leader {
            // Taking over: drop what the previous leader already flushed.
            self.aggregator.flush_into(
                now,
                FlushMode::Follower {
                    flushed_times: &state.persisted,
                },
                &mut |_| {},
            );
            tracing::info!(
                shard_set,
                "Became leader; flushing from the persisted flush times."
            );
        }
        let mode = if stopping {
            FlushMode::LeaderFinal
        } else {
            FlushMode::Leader
        };
        // Each shard's outputs go to the producer as soon as the shard is flushed, and the
        // next shard waits while too much of that output is unacked: a flush of many series
        // never holds all its outputs at once, here or in the producer.
        let mut refused = 0;
        let most_unacked = self.options.max_unacked_flush_bytes;
        let mut pacing = true;
        // Into the consumer in this process, each shard's outputs are stored before the next
        // shard is flushed: the write is the pacing.
        let mut unstored = Vec::new();
        let mut pass = self.aggregator.flush_pass(now, mode);
        while let Some(outputs) = pass.next_shard() {
            match output {
                Output::Topic(producer) => {
                    refused += produce(producer, outputs, now);
                    if pacing && producer.buffered_bytes() > most_unacked {
                        // No lock is held here. Acks that stop coming end the pacing for this
                        // flush.
                        pacing = producer
                            .wait_for_room(most_unacked / 2, self.options.ack_wait)
                            .await;
                    }
                }
                Output::InProcess(sink, _) => {
                    let outputs: Vec<AggregatedOutput> = outputs.collect();
                    if !outputs.is_empty() {
                        unstored.extend(sink.write(outputs).await);
                    }
                }
            }
        }
        let result = pass.finish();
        crate::forward::send(
            &self.client,
            self.aggregator.take_forwarded(),
            self.aggregator.metrics(),
        );
        // Passthrough metrics are written by the leader only.
        let passthrough = self.aggregator.take_passthrough();
        // Flush times move on only once what they cover is acked (see the module doc).
        let acked = match output {
            Output::Topic(producer) => {
                refused += produce(producer, passthrough.into_iter(), now);
                if stopping {
                    producer
                        .flush_while_progressing(self.options.shutdown_ack_timeout)
                        .await
                } else {
                    producer.flush(self.options.ack_wait).await
                }
            }
            Output::InProcess(sink, _) => {
                if !passthrough.is_empty() {
                    unstored.extend(sink.write(passthrough).await);
                }
                if !unstored.is_empty() {
                    state.unstored.push(Unstored {
                        since: Instant::now(),
                        outputs: unstored,
                    });
                    self.bound_unstored(state);
                }
                if stopping && !state.unstored.is_empty() {
                    let left: usize = state.unstored.iter().map(|u| u.outputs.len()).sum();
                    tracing::warn!(
                        left,
                        "Shut down with output the consumer in this process did not store."
                    );
                }
                state.unstored.is_empty()
            }
        };
        if !acked || refused > 0 {
            tracing::debug!(
                shard_set,
                "Output not fully acked yet; flush times persist later."
            );
            return;
        }
        self.persist_flush_times(shard_set, flush_key, &result.flush_times)
            .await;
    }

    /// Gives the in-process consumer again what it did not store before; drops, counted,
    /// what waited longer than `ttl`.
    async fn write_unstored(
        &self,
        state: &mut LoopState,
        sink: &Arc<dyn OutputSink>,
        ttl: Duration,
    ) {
        let mut kept = Vec::new();
        for Unstored { since, outputs } in std::mem::take(&mut state.unstored) {
            if since.elapsed() > ttl {
                tracing::warn!(
                    outputs = outputs.len(),
                    ttl = ?ttl,
                    "Dropping aggregated outputs the consumer in this process did not store within the message TTL."
                );
                self.aggregator
                    .metrics()
                    .outputs_discarded_by(OutputDiscard::Expired, outputs.len() as u64);
                continue;
            }
            let outputs = sink.write(outputs).await;
            if !outputs.is_empty() {
                kept.push(Unstored { since, outputs });
            }
        }
        state.unstored = kept;
    }

    /// Drops the oldest outputs not stored yet, counted, while they hold more than the
    /// producer's buffer may (`maxBufferSize`, 100 MiB by default): a store that cannot write
    /// for the whole message TTL would otherwise hold every output of that time.
    fn bound_unstored(&self, state: &mut LoopState) {
        let bound = self.options.producer.buffer.max_buffer_size;
        let mut held: usize = state.unstored.iter().map(Unstored::bytes).sum();
        while held > bound && !state.unstored.is_empty() {
            let oldest = state.unstored.remove(0);
            held -= oldest.bytes();
            tracing::warn!(
                outputs = oldest.outputs.len(),
                bound,
                "Dropping the oldest aggregated outputs the consumer in this process did not store: more are held than maxBufferSize."
            );
            self.aggregator
                .metrics()
                .outputs_discarded_by(OutputDiscard::BufferFull, oldest.outputs.len() as u64);
        }
    }

    /// Merges `flushed` into the shard set's persisted flush times with a check-and-set on the
    /// version read, guarded by this member's election term ([`LeaderElection::term`]), while
    /// it still leads on its own clock ([`LeaderElection::leads`]). Leadership may move during
    /// the ack wait or between the read and the write: a member whose term or lease ended writes
    /// nothing, however late its write arrives, and a write that lost a race with another
    /// writer is merged again on top of what that writer stored, never over it.
    async fn persist_flush_times(
        &self,
        shard_set: u32,
        flush_key: &str,
        flushed: &ShardSetFlushTimes,
    ) {
        const ATTEMPTS: usize = 3;
        if flushed.by_shard.is_empty() {
            return;
        }
        let term = || {
            self.election
                .lock()
                .as_ref()
                .filter(|(id, _)| *id == shard_set)
                .and_then(|(_, e)| e.term())
        };
        for _ in 0..ATTEMPTS {
            let Some(term_guard) = term() else { return };
            // Unreadable: the next acked flush persists these times with its own.
            let Some((mut merged, version)) = read_flush_times(&self.kv, flush_key).await else {
                return;
            };
            for (shard, times) in &flushed.by_shard {
                merge_flush_times(merged.by_shard.entry(*shard).or_default(), times);
            }
            if term().as_ref() != Some(&term_guard) {
                return;
            }
            match self
                .kv
                .check_and_set_guarded(
                    flush_key,
                    version,
                    Bytes::from(merged.encode_to_vec()),
                    &term_guard,
                )
                .await
            {
                Ok(_) => return,
                Err(KvError::VersionMismatch { .. }) => {
                    tracing::debug!(shard_set, "Flush times changed meanwhile; merging again.");
                }
                Err(KvError::GuardMissing { .. }) => {
                    tracing::info!(
                        shard_set,
                        "Flush times not persisted: the leadership term ended."
                    );
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, shard_set, "Persisting flush times failed.");
                    return;
                }
            }
        }
        tracing::warn!(
            shard_set,
            "Flush times not persisted: another writer kept changing them."
        );
    }

    /// Answers a resign request after this cycle's flush: as a leader, that flush is acked and
    /// its flush times persisted, so the next leader starts exactly where this one stopped.
    async fn resign(&self, reply: ResignRequest) {
        let election = self.election.lock().as_ref().map(|(_, e)| Arc::clone(e));
        let result = match election {
            Some(e) => e.resign().await.map_err(anyhow::Error::from),
            None => Err(anyhow::anyhow!("this instance is in no shard set")),
        };
        let _ = reply.send(result);
    }

    /// Closes the producer, waiting for the acks still outstanding.
    async fn close_producer(&self) {
        let Some(producer) = self.producer.get() else {
            return;
        };
        let unacked = producer.close(self.options.shutdown_ack_timeout).await;
        if unacked > 0 {
            tracing::warn!(
                unacked,
                "Shut down with output not acked by any coordinator."
            );
        }
    }
}

/// `election`'s state for this flush: a member marked leader whose lease ran out on its own
/// clock (it was paused past the TTL and has not yet seen who took over) flushes as a pending
/// follower, never as leader.
fn current_state(election: &LeaderElection) -> ElectionState {
    match *election.state().borrow() {
        ElectionState::Leader if !election.leads() => ElectionState::PendingFollower,
        state => state,
    }
}

/// Hands `outputs` to the producer as `AggregatedMetric` messages, each on the shard of its ID.
/// Returns how many the producer refused.
fn produce(
    producer: &Producer,
    outputs: impl Iterator<Item = AggregatedOutput>,
    encode_nanos: i64,
) -> usize {
    let num_shards = producer.number_of_shards().max(1);
    let mut refused = 0usize;
    for output in outputs {
        let shard = m3_cluster::shard_for(&output.id, num_shards);
        let message = AggregatedMetric {
            metric: Some(TimedMetricWithStoragePolicy {
                timed_metric: Some(TimedMetric {
                    r#type: output.metric_type.to_proto(),
                    id: Bytes::from(output.id),
                    time_nanos: output.time_nanos,
                    value: output.value,
                    annotation: Bytes::new(),
                }),
                storage_policy: Some(output.storage_policy.to_proto()),
                routing_policy: None,
            }),
            encode_nanos,
        };
        if let Err(e) = producer.produce(shard, Bytes::from(message.encode_to_vec())) {
            refused += 1;
            tracing::warn!(error = %e, "Output not accepted by the m3msg producer.");
        }
    }
    refused
}

/// Takes the later of each (category, resolution, forwarding hops) flush time, so an older
/// write never moves a newer one back.
fn merge_flush_times(into: &mut ShardFlushTimes, from: &ShardFlushTimes) {
    let later = |slot: &mut i64, t: i64| *slot = (*slot).max(t);
    for (resolution, t) in &from.standard_by_resolution {
        later(
            into.standard_by_resolution.entry(*resolution).or_insert(*t),
            *t,
        );
    }
    for (resolution, t) in &from.timed_by_resolution {
        later(
            into.timed_by_resolution.entry(*resolution).or_insert(*t),
            *t,
        );
    }
    for (resolution, by_hops) in &from.forwarded_by_resolution {
        let into_hops = &mut into
            .forwarded_by_resolution
            .entry(*resolution)
            .or_default()
            .by_num_forwarded_times;
        for (hops, t) in &by_hops.by_num_forwarded_times {
            later(into_hops.entry(*hops).or_insert(*t), *t);
        }
    }
}

/// The persisted flush times of a shard set and their KV version (0: none stored); `None`
/// when the KV cannot be read.
pub(crate) async fn read_flush_times(
    kv: &Arc<dyn KvStore>,
    key: &str,
) -> Option<(ShardSetFlushTimes, i64)> {
    match kv.get(key).await {
        Ok(Some(v)) => {
            let times = ShardSetFlushTimes::decode(v.value).unwrap_or_else(|e| {
                tracing::error!(key, error = %e, "Flush times do not decode; treating as none.");
                ShardSetFlushTimes::default()
            });
            Some((times, v.version))
        }
        Ok(None) => Some((ShardSetFlushTimes::default(), 0)),
        Err(e) => {
            tracing::warn!(key, error = %e, "Reading flush times failed.");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use m3_proto::flushpb::ForwardedFlushTimesForResolution;

    /// Regression: forwarded flush times were left out, so followers never dropped forwarded
    /// windows and a new leader emitted them again.
    #[test]
    fn merging_keeps_the_later_time_of_every_kind_forwarded_included() {
        let mut stored = ShardFlushTimes::default();
        stored.standard_by_resolution.insert(10, 100);
        stored.timed_by_resolution.insert(10, 300);
        let mut hops = ForwardedFlushTimesForResolution::default();
        hops.by_num_forwarded_times.insert(1, 500);
        stored.forwarded_by_resolution.insert(60, hops);

        let mut own = ShardFlushTimes::default();
        own.standard_by_resolution.insert(10, 200);
        own.timed_by_resolution.insert(10, 250);
        let mut hops = ForwardedFlushTimesForResolution::default();
        hops.by_num_forwarded_times.insert(1, 600);
        hops.by_num_forwarded_times.insert(2, 50);
        own.forwarded_by_resolution.insert(60, hops);

        merge_flush_times(&mut stored, &own);
        assert_eq!(stored.standard_by_resolution[&10], 200);
        assert_eq!(stored.timed_by_resolution[&10], 300, "never moved back");
        let forwarded = &stored.forwarded_by_resolution[&60].by_num_forwarded_times;
        assert_eq!(forwarded[&1], 600);
        assert_eq!(forwarded[&2], 50);
    }
}
