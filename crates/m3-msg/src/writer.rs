//! One consumer service's writer: queues, routing, retries, TTLs and acks.
//!
//! Each consumer service gets one task that owns all of its delivery state, so the hot path
//! needs no locks: the producer sends it new messages over a channel, connections send it
//! acks over another, and the service's instance list arrives through a `watch` channel.
//!
//! Queues are keyed by the *ack key* that goes on the wire as `Metadata.shard`:
//!
//! | consumption | queues | ack key | delivered to |
//! |---|---|---|---|
//! | SHARED | one per shard | `shard` | one connected owner of the shard, chosen per (re)send |
//! | REPLICATED | one per (shard, replica slot) | `slot × numberOfShards + shard` | the slot's instance |
//!
//! Message IDs come from one counter per writer, so they increase monotonically in every
//! queue. Every pending copy has one due time in a min-heap; when it comes up the copy is
//! either expired (`produced_at + TTL ≤ now`, counted `ttl_expired`), skipped (acked, or
//! dropped from the buffer), or (re)sent with `sentAtNanos` set to now and given its next
//! retry time from the backoff. A copy that finds no connection to take it is looked at again
//! after `messageQueueNewWritesScanInterval` without counting an attempt.
//!
//! REPLICATED replica slots are stable: an instance keeps its slot while it owns the shard, a
//! new owner takes the lowest free slot (inheriting the un-acked copies of the instance it
//! replaces), and a slot nobody takes over has its copies dropped as `no_consumer_instance`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use m3_proto::msgpb;
use prost::Message as _;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::buffer::RefMessage;
use crate::config::WriterConfig;
use crate::connection::{AckBatch, Connection};
use crate::metrics::{DropReason, ProducerMetrics};
use crate::topology::{ConsumerInstances, ConsumerServiceSpec, ConsumptionType};

/// Due copies handled per wake-up before acks and new messages get a turn.
const DUE_BATCH: usize = 4096;
/// New messages taken per wake-up.
const NEW_BATCH: usize = 1024;
/// Ack frames buffered between connections and the writer.
const ACK_CHANNEL: usize = 1024;
/// Schedule entries kept room for however few are pending. A flush of every series' windows
/// puts one entry per message in the schedule at once (2^18 entries, 8 MiB, at 200,000
/// messages); the room goes back once the burst has been acked and its entries dropped.
const SCHEDULE_KEPT_ENTRIES: usize = 4096;

/// The producer's handle to a running writer.
#[derive(Debug)]
pub(crate) struct WriterHandle {
    tx: mpsc::UnboundedSender<Arc<RefMessage>>,
    cancel: CancellationToken,
    removed: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl WriterHandle {
    /// Starts the writer task on `runtime`.
    pub(crate) fn spawn(
        runtime: &tokio::runtime::Handle,
        spec: ConsumerServiceSpec,
        number_of_shards: u32,
        config: WriterConfig,
        instances: watch::Receiver<ConsumerInstances>,
        metrics: ProducerMetrics,
        cancel: CancellationToken,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (ack_tx, ack_rx) = mpsc::channel(ACK_CHANNEL);
        let removed = Arc::new(AtomicBool::new(false));
        let n = number_of_shards.max(1);
        let writer = Writer {
            spec,
            number_of_shards: n,
            config,
            metrics,
            cancel: cancel.clone(),
            ack_tx,
            instances: HashMap::new(),
            owners: vec![Vec::new(); n as usize],
            replicas: vec![Vec::new(); n as usize],
            queues: HashMap::new(),
            schedule: BinaryHeap::new(),
            purge_at: SCHEDULE_KEPT_ENTRIES,
            next_id: 0,
            rotate: 0,
        };
        let task = runtime.spawn(writer.run(rx, ack_rx, instances, Arc::clone(&removed)));
        Self {
            tx,
            cancel,
            removed,
            task,
        }
    }

    /// Hands a message (holding one reference for this writer) to the task; gives it back if
    /// the task has stopped.
    pub(crate) fn send(&self, msg: Arc<RefMessage>) -> Result<(), Arc<RefMessage>> {
        self.tx.send(msg).map_err(|e| e.0)
    }

    /// Stops the writer because its service was removed: outstanding copies are counted as
    /// `no_consumer_service`.
    pub(crate) fn remove(self) {
        self.removed.store(true, Ordering::Release);
        self.cancel.cancel();
    }

    /// Stops the writer because the producer closed (drops were already counted) and waits
    /// for it to finish.
    pub(crate) async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

#[derive(Debug)]
struct Instance {
    endpoint: String,
    conn: Connection,
}

#[derive(Debug)]
struct Pending {
    msg: Arc<RefMessage>,
    attempts: u32,
    due: Instant,
    sent_to: Option<Arc<str>>,
}

struct Writer {
    spec: ConsumerServiceSpec,
    number_of_shards: u32,
    config: WriterConfig,
    metrics: ProducerMetrics,
    cancel: CancellationToken,
    ack_tx: mpsc::Sender<AckBatch>,
    instances: HashMap<Arc<str>, Instance>,
    /// Owners per shard, sorted by instance ID.
    owners: Vec<Vec<Arc<str>>>,
    /// Replica slots per shard (REPLICATED only).
    replicas: Vec<Vec<Option<Arc<str>>>>,
    /// Pending copies by ack key, then message ID.
    queues: HashMap<u64, BTreeMap<u64, Pending>>,
    /// (due, ack key, id); entries whose due no longer matches are stale and skipped.
    schedule: BinaryHeap<Reverse<(Instant, u64, u64)>>,
    /// The schedule's length at which its stale entries are next dropped
    /// ([`drop_stale_entries`]).
    purge_at: usize,
    next_id: u64,
    rotate: usize,
}

impl Writer {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Arc<RefMessage>>,
        mut ack_rx: mpsc::Receiver<AckBatch>,
        mut instances: watch::Receiver<ConsumerInstances>,
        removed: Arc<AtomicBool>,
    ) {
        let snapshot = instances.borrow_and_update().clone();
        self.apply(&snapshot);
        let mut watching = true;
        loop {
            // Due work first, in bounded batches, so a steady stream of new messages or acks
            // can never starve retries and TTL expiry.
            let mut next_due = self.schedule.peek().map(|Reverse((due, _, _))| *due);
            if next_due.is_some_and(|due| due <= Instant::now()) {
                self.on_due();
                next_due = self.schedule.peek().map(|Reverse((due, _, _))| *due);
            }
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break,
                changed = instances.changed(), if watching => match changed {
                    Ok(()) => {
                        let snapshot = instances.borrow_and_update().clone();
                        self.apply(&snapshot);
                    }
                    // The topology source went away: keep delivering to the last known set.
                    Err(_) => watching = false,
                },
                Some(batch) = ack_rx.recv() => self.on_acks(batch),
                msg = rx.recv() => match msg {
                    Some(msg) => {
                        self.on_new(msg);
                        for _ in 0..NEW_BATCH {
                            let Ok(msg) = rx.try_recv() else { break };
                            self.on_new(msg);
                        }
                    }
                    None => break,
                },
                _ = sleep_until_opt(next_due) => self.on_due(),
            }
        }
        self.shutdown(&mut rx, removed.load(Ordering::Acquire));
    }

    fn on_new(&mut self, msg: Arc<RefMessage>) {
        let id = self.next_id;
        self.next_id += 1;
        let Some(value) = msg.value() else {
            // Dropped from the buffer before we saw it; counted there.
            msg.dec_ref();
            return;
        };
        if frame_len(&value) > self.config.max_message_size {
            self.metrics.inc_dropped(DropReason::EncodeError);
            warn!(
                service = %self.spec.name,
                size = value.len(),
                max = self.config.max_message_size,
                "m3msg message larger than maxMessageSize, dropped."
            );
            msg.dec_ref();
            return;
        }
        let shard = msg.shard() % self.number_of_shards;
        match self.spec.consumption {
            ConsumptionType::Shared => self.enqueue(u64::from(shard), id, msg),
            ConsumptionType::Replicated => {
                let n = u64::from(self.number_of_shards);
                let keys: Vec<u64> = self.replicas[shard as usize]
                    .iter()
                    .enumerate()
                    .filter(|(_, slot)| slot.is_some())
                    .map(|(slot, _)| slot as u64 * n + u64::from(shard))
                    .collect();
                if keys.is_empty() {
                    self.metrics.inc_dropped(DropReason::NoConsumerInstance);
                    msg.dec_ref();
                    return;
                }
                msg.add_refs(keys.len() - 1);
                for key in keys {
                    self.enqueue(key, id, Arc::clone(&msg));
                }
            }
        }
    }

    fn enqueue(&mut self, key: u64, id: u64, msg: Arc<RefMessage>) {
        let now = Instant::now();
        self.queues.entry(key).or_default().insert(
            id,
            Pending {
                msg,
                attempts: 0,
                due: now,
                sent_to: None,
            },
        );
        self.attempt(key, id, now);
    }

    fn on_due(&mut self) {
        let now = Instant::now();
        for _ in 0..DUE_BATCH {
            let Some(&Reverse((due, key, id))) = self.schedule.peek() else {
                break;
            };
            if due > now {
                break;
            }
            self.schedule.pop();
            let current = self
                .queues
                .get(&key)
                .and_then(|q| q.get(&id))
                .is_some_and(|p| p.due == due);
            if current {
                self.attempt(key, id, now);
            }
        }
        release_spare_room(&mut self.schedule);
    }

    /// Expires, discards or (re)sends one pending copy, then schedules its next look.
    fn attempt(&mut self, key: u64, id: u64, now: Instant) {
        let Some(pending) = self.queues.get(&key).and_then(|q| q.get(&id)) else {
            return;
        };
        let deadline = self
            .spec
            .message_ttl
            .map(|ttl| pending.msg.produced_at() + ttl);
        let value = pending.msg.value();
        let expired = deadline.is_some_and(|d| d <= now);
        if value.is_none() || expired {
            if let Some(p) = self.remove(key, id) {
                if expired && p.msg.is_live() {
                    self.metrics.inc_dropped(DropReason::TtlExpired);
                }
                p.msg.dec_ref();
            }
            return;
        }
        let retry = pending.attempts > 0;
        let sent = match (value, self.pick(key)) {
            (Some(value), Some(target)) => {
                let msg = msgpb::Message {
                    metadata: Some(msgpb::Metadata {
                        shard: key,
                        id,
                        sent_at_nanos: now_nanos(),
                    }),
                    value,
                };
                match self.instances.get(&target) {
                    Some(inst) if inst.conn.try_send(msg).is_ok() => Some(target),
                    _ => None,
                }
            }
            _ => None,
        };
        let Some(pending) = self.queues.get_mut(&key).and_then(|q| q.get_mut(&id)) else {
            return;
        };
        let mut due = match sent {
            Some(target) => {
                pending.attempts = pending.attempts.saturating_add(1);
                pending.sent_to = Some(target);
                self.metrics.inc_sent(retry);
                now + self.config.message_retry.backoff(pending.attempts)
            }
            None => now + self.config.message_queue_new_writes_scan_interval,
        };
        if let Some(deadline) = deadline {
            due = due.min(deadline);
        }
        pending.due = due;
        self.schedule.push(Reverse((due, key, id)));
    }

    /// The instance a copy with this ack key goes to now, if any can take it.
    fn pick(&mut self, key: u64) -> Option<Arc<str>> {
        let n = u64::from(self.number_of_shards);
        let shard = (key % n) as usize;
        match self.spec.consumption {
            ConsumptionType::Shared => {
                let owners = self.owners.get(shard)?;
                let len = owners.len();
                let start = self.rotate;
                self.rotate = self.rotate.wrapping_add(1);
                // The connected owner with the most free queue space; ties rotate.
                let mut best: Option<(&Arc<str>, usize)> = None;
                for i in 0..len {
                    let id = &owners[(start + i) % len];
                    let Some(inst) = self.instances.get(id) else {
                        continue;
                    };
                    if !inst.conn.is_connected() {
                        continue;
                    }
                    let free = inst.conn.capacity();
                    if free > 0 && best.is_none_or(|(_, f)| free > f) {
                        best = Some((id, free));
                    }
                }
                best.map(|(id, _)| Arc::clone(id))
            }
            ConsumptionType::Replicated => {
                let slot = usize::try_from(key / n).ok()?;
                let id = self.replicas.get(shard)?.get(slot)?.as_ref()?;
                let inst = self.instances.get(id)?;
                (inst.conn.is_connected() && inst.conn.capacity() > 0).then(|| Arc::clone(id))
            }
        }
    }

    fn remove(&mut self, key: u64, id: u64) -> Option<Pending> {
        let queue = self.queues.get_mut(&key)?;
        let pending = queue.remove(&id);
        if queue.is_empty() {
            self.queues.remove(&key);
        }
        pending
    }

    fn on_acks(&mut self, batch: AckBatch) {
        for meta in batch {
            if let Some(p) = self.remove(meta.shard, meta.id) {
                self.metrics.inc_acks_received();
                p.msg.dec_ref();
            }
        }
        let queues = &self.queues;
        drop_stale_entries(&mut self.schedule, &mut self.purge_at, |entry| {
            let Reverse((due, key, id)) = entry;
            queues
                .get(key)
                .and_then(|q| q.get(id))
                .is_some_and(|p| p.due == *due)
        });
    }

    /// Applies a new instance list: connections, shard owners, replica slots, and early
    /// retries for copies whose instance went away.
    fn apply(&mut self, snapshot: &ConsumerInstances) {
        let n = self.number_of_shards;
        let mut latest: HashMap<&str, &crate::topology::ConsumerInstance> = HashMap::new();
        for inst in &snapshot.instances {
            latest.insert(inst.id.as_str(), inst);
        }

        self.instances.retain(|id, inst| {
            let keep = latest
                .get(id.as_ref())
                .is_some_and(|new| new.endpoint == inst.endpoint);
            if !keep {
                debug!(instance = %id, "m3msg consumer instance removed.");
            }
            keep
        });
        for (id, inst) in &latest {
            if !self.instances.contains_key(*id) {
                debug!(service = %self.spec.name, instance = %id, endpoint = %inst.endpoint, "m3msg consumer instance added.");
                let conn = Connection::spawn(
                    inst.endpoint.clone(),
                    self.config.connection.clone(),
                    self.config.max_message_size,
                    self.ack_tx.clone(),
                    self.metrics.clone(),
                    self.cancel.child_token(),
                );
                self.instances.insert(
                    Arc::from(*id),
                    Instance {
                        endpoint: inst.endpoint.clone(),
                        conn,
                    },
                );
            }
        }

        let mut owners: Vec<Vec<Arc<str>>> = vec![Vec::new(); n as usize];
        for (id, inst) in &self.instances {
            let Some(spec) = latest.get(id.as_ref()) else {
                continue;
            };
            match &spec.shards {
                None => owners.iter_mut().for_each(|o| o.push(Arc::clone(id))),
                Some(shards) => {
                    for &shard in shards {
                        match owners.get_mut(shard as usize) {
                            Some(o) if !o.contains(id) => o.push(Arc::clone(id)),
                            Some(_) => {}
                            None => warn!(
                                service = %self.spec.name,
                                endpoint = %inst.endpoint,
                                shard,
                                number_of_shards = n,
                                "m3msg consumer instance owns a shard beyond the topic's shard count; ignored."
                            ),
                        }
                    }
                }
            }
        }
        owners.iter_mut().for_each(|o| o.sort());
        self.owners = owners;

        if self.spec.consumption == ConsumptionType::Replicated {
            self.update_replicas();
        }

        // Copies last sent to an instance that is gone (or whose slot changed hands) are
        // retried now instead of after their backoff.
        let now = Instant::now();
        let mut early = Vec::new();
        for (&key, queue) in &mut self.queues {
            let slot_owner = match self.spec.consumption {
                ConsumptionType::Shared => None,
                ConsumptionType::Replicated => {
                    let shard = (key % u64::from(n)) as usize;
                    let slot = (key / u64::from(n)) as usize;
                    self.replicas
                        .get(shard)
                        .and_then(|s| s.get(slot))
                        .cloned()
                        .flatten()
                }
            };
            for (&id, p) in queue.iter_mut() {
                let Some(sent_to) = &p.sent_to else { continue };
                let gone = !self.instances.contains_key(sent_to)
                    || slot_owner.as_ref().is_some_and(|o| o != sent_to);
                if gone && p.due > now {
                    p.due = now;
                    early.push(Reverse((now, key, id)));
                }
            }
        }
        self.schedule.extend(early);
    }

    fn update_replicas(&mut self) {
        let n = u64::from(self.number_of_shards);
        let mut orphaned = Vec::new();
        for (shard, slots) in self.replicas.iter_mut().enumerate() {
            let owners = &self.owners[shard];
            for slot in slots.iter_mut() {
                if slot.as_ref().is_some_and(|id| !owners.contains(id)) {
                    *slot = None;
                }
            }
            for id in owners {
                if slots.iter().any(|s| s.as_ref() == Some(id)) {
                    continue;
                }
                match slots.iter().position(Option::is_none) {
                    Some(free) => slots[free] = Some(Arc::clone(id)),
                    None => slots.push(Some(Arc::clone(id))),
                }
            }
            for (slot, owner) in slots.iter().enumerate() {
                if owner.is_none() {
                    orphaned.push(slot as u64 * n + shard as u64);
                }
            }
            while slots.last().is_some_and(Option::is_none) {
                slots.pop();
            }
        }
        for key in orphaned {
            if let Some(queue) = self.queues.remove(&key) {
                for (_, p) in queue {
                    if p.msg.is_live() {
                        self.metrics.inc_dropped(DropReason::NoConsumerInstance);
                    }
                    p.msg.dec_ref();
                }
            }
        }
    }

    /// Gives back every reference this writer holds.
    fn shutdown(&mut self, rx: &mut mpsc::UnboundedReceiver<Arc<RefMessage>>, removed: bool) {
        rx.close();
        let count = |msg: &RefMessage, metrics: &ProducerMetrics| {
            if removed && msg.is_live() {
                metrics.inc_dropped(DropReason::NoConsumerService);
            }
        };
        while let Ok(msg) = rx.try_recv() {
            count(&msg, &self.metrics);
            msg.dec_ref();
        }
        for (_, queue) in self.queues.drain() {
            for (_, p) in queue {
                count(&p.msg, &self.metrics);
                p.msg.dec_ref();
            }
        }
        self.instances.clear();
    }
}

async fn sleep_until_opt(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// Encoded size of a `Message` carrying `value`, with the largest possible metadata.
fn frame_len(value: &Bytes) -> usize {
    msgpb::Message {
        metadata: Some(msgpb::Metadata {
            shard: u64::MAX,
            id: u64::MAX,
            sent_at_nanos: u64::MAX,
        }),
        value: value.clone(),
    }
    .encoded_len()
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Gives back a schedule's room once it holds a quarter of it or less, keeping twice what it
/// holds (at least [`SCHEDULE_KEPT_ENTRIES`]) so a steady stream never reallocates.
fn release_spare_room<T: Ord>(schedule: &mut BinaryHeap<T>) {
    let capacity = schedule.capacity();
    let len = schedule.len();
    if capacity > SCHEDULE_KEPT_ENTRIES && len <= capacity / 4 {
        schedule.shrink_to((len * 2).max(SCHEDULE_KEPT_ENTRIES));
    }
}

/// Drops the schedule's stale entries (copies acked, or scheduled again since) once it has
/// grown to `purge_at`, then sets `purge_at` to twice what is left.
///
/// A sent copy's entry stays in the schedule until its retry is due, seconds later, even when
/// its ack came back at once. An aggregator's flush sends a message per series every
/// resolution, so without this the schedule held an entry for every message of the last few
/// seconds, nearly all acked: 8 MiB at 100,000 series. Each purge reads every entry, and the
/// next waits until the schedule has doubled, so an entry is read a bounded number of times
/// on average.
fn drop_stale_entries<T: Ord>(
    schedule: &mut BinaryHeap<T>,
    purge_at: &mut usize,
    is_current: impl FnMut(&T) -> bool,
) {
    if schedule.len() < *purge_at {
        return;
    }
    schedule.retain(is_current);
    release_spare_room(schedule);
    *purge_at = (schedule.len() * 2).max(SCHEDULE_KEPT_ENTRIES);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acked_entries_leave_the_schedule_once_they_are_half_of_it() {
        let mut schedule: BinaryHeap<Reverse<(u64, u64, u64)>> = BinaryHeap::new();
        let mut purge_at = SCHEDULE_KEPT_ENTRIES;
        // Every tenth copy is still pending; the others were acked.
        let pending = |entry: &Reverse<(u64, u64, u64)>| entry.0.2.is_multiple_of(10);
        for id in 0..(SCHEDULE_KEPT_ENTRIES as u64 - 1) {
            schedule.push(Reverse((id, 0, id)));
        }
        drop_stale_entries(&mut schedule, &mut purge_at, pending);
        assert_eq!(
            schedule.len(),
            SCHEDULE_KEPT_ENTRIES - 1,
            "below the purge length nothing is read"
        );

        for id in (SCHEDULE_KEPT_ENTRIES as u64 - 1)..200_000 {
            schedule.push(Reverse((id, 0, id)));
            drop_stale_entries(&mut schedule, &mut purge_at, pending);
        }
        let mut left: Vec<u64> = schedule.iter().map(|e| e.0.2).collect();
        left.sort_unstable();
        assert!(
            left.iter()
                .all(|id| id.is_multiple_of(10) || *id >= 200_000 - purge_at as u64),
            "acked entries older than the last purge were dropped"
        );
        assert!(
            schedule.len() < 2 * 20_000 + SCHEDULE_KEPT_ENTRIES,
            "the schedule holds about the pending copies, not every copy sent: {}",
            schedule.len()
        );
        assert!(
            (0..200_000)
                .step_by(10)
                .all(|id| left.binary_search(&id).is_ok()),
            "every pending copy keeps its entry"
        );
        assert_eq!(schedule.peek(), Some(&Reverse((0, 0, 0))));
    }

    #[test]
    fn a_drained_burst_gives_its_schedule_room_back() {
        let mut schedule: BinaryHeap<Reverse<(u64, u64, u64)>> = BinaryHeap::new();
        for i in 0..200_000u64 {
            schedule.push(Reverse((i, 0, i)));
        }
        release_spare_room(&mut schedule);
        assert!(
            schedule.capacity() >= 200_000,
            "a full schedule keeps its room"
        );

        while schedule.len() > 40_000 {
            schedule.pop();
        }
        release_spare_room(&mut schedule);
        assert!(
            schedule.capacity() < 100_000,
            "a schedule at a fifth of its room keeps about twice what it holds, not {}",
            schedule.capacity()
        );
        assert_eq!(schedule.len(), 40_000);
        assert_eq!(schedule.peek(), Some(&Reverse((160_000, 0, 160_000))));

        schedule.clear();
        release_spare_room(&mut schedule);
        assert!(schedule.capacity() >= SCHEDULE_KEPT_ENTRIES);
        assert!(schedule.capacity() < 2 * SCHEDULE_KEPT_ENTRIES);
    }
}
