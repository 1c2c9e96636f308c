//! The producer's buffer: ref-counted messages and the byte budget they share.
//!
//! A produced message becomes one [`RefMessage`] shared by every consumer service writer. Each
//! writer holds one reference per queue the message sits in (one for SHARED, one per replica
//! for REPLICATED) and gives it back when that copy is acked or given up on. When the last
//! reference goes, the message is *released*: its value is freed and its bytes leave the
//! budget.
//!
//! The [`Buffer`] keeps produce order as a queue of weak references, so that
//! `OnFull::DropOldest` can find the oldest live message without owning anything:
//!
//! ```text
//!  front (oldest)                                        back (newest)
//!  [released] [live] [dropped] [live] [live] ... [live]
//!      ^ popped lazily      ^ skipped; only live messages count against maxBufferSize
//! ```
//!
//! Dropping a message marks it dead and frees its value at once; writers still holding it
//! notice on their next look and discard their copies without sending. A message moves out of
//! the live state exactly once, which is what keeps the byte count and the drop counters exact.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::{BufferConfig, OnFull};
use crate::error::ProduceError;
use crate::metrics::{DropReason, ProducerMetrics};

const LIVE: u8 = 0;
const RELEASED: u8 = 1;
const DROPPED: u8 = 2;

/// Budget shared by the buffer and its messages.
#[derive(Debug)]
struct Accounting {
    used_bytes: AtomicUsize,
    live: AtomicUsize,
    released: Notify,
    metrics: ProducerMetrics,
}

/// One produced message, shared by the writers that deliver it.
#[derive(Debug)]
pub(crate) struct RefMessage {
    shard: u32,
    size: usize,
    produced_at: Instant,
    value: Mutex<Option<Bytes>>,
    refs: AtomicUsize,
    state: AtomicU8,
    accounting: Arc<Accounting>,
}

impl RefMessage {
    pub(crate) fn shard(&self) -> u32 {
        self.shard
    }

    pub(crate) fn produced_at(&self) -> Instant {
        self.produced_at
    }

    /// The value, or `None` once the message was released or dropped.
    pub(crate) fn value(&self) -> Option<Bytes> {
        self.value.lock().clone()
    }

    pub(crate) fn is_live(&self) -> bool {
        self.state.load(Ordering::Acquire) == LIVE
    }

    /// Adds references for extra copies. Only call while holding a reference, so the count
    /// cannot reach zero in between.
    pub(crate) fn add_refs(&self, n: usize) {
        self.refs.fetch_add(n, Ordering::AcqRel);
    }

    /// Gives back one reference; the last one releases the message.
    pub(crate) fn dec_ref(&self) {
        if self.refs.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.finish(RELEASED);
        }
    }

    /// Drops the message for every writer. Returns whether this call did it (so the caller
    /// counts the drop once).
    pub(crate) fn drop_now(&self) -> bool {
        self.finish(DROPPED)
    }

    fn finish(&self, to: u8) -> bool {
        if self
            .state
            .compare_exchange(LIVE, to, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        self.value.lock().take();
        let acct = &self.accounting;
        acct.used_bytes.fetch_sub(self.size, Ordering::AcqRel);
        acct.live.fetch_sub(1, Ordering::AcqRel);
        acct.metrics.buffer_released(self.size);
        acct.released.notify_waiters();
        true
    }
}

impl Drop for RefMessage {
    fn drop(&mut self) {
        // Safety net: every path gives references back explicitly, but if a writer vanished
        // with copies in hand the drop is still counted and the bytes returned.
        if self.finish(DROPPED) {
            self.accounting
                .metrics
                .inc_dropped(DropReason::NoConsumerService);
        }
    }
}

/// Produce-ordered weak references plus the byte budget.
#[derive(Debug)]
pub(crate) struct Buffer {
    config: BufferConfig,
    order: Mutex<VecDeque<Weak<RefMessage>>>,
    accounting: Arc<Accounting>,
}

impl Buffer {
    pub(crate) fn new(config: BufferConfig, metrics: ProducerMetrics) -> Self {
        Self {
            config,
            order: Mutex::new(VecDeque::new()),
            accounting: Arc::new(Accounting {
                used_bytes: AtomicUsize::new(0),
                live: AtomicUsize::new(0),
                released: Notify::new(),
                metrics,
            }),
        }
    }

    pub(crate) fn config(&self) -> &BufferConfig {
        &self.config
    }

    /// Bytes held by live messages.
    pub(crate) fn used_bytes(&self) -> usize {
        self.accounting.used_bytes.load(Ordering::Acquire)
    }

    /// Live messages.
    pub(crate) fn live(&self) -> usize {
        self.accounting.live.load(Ordering::Acquire)
    }

    /// Makes room for `value` (dropping the oldest messages or refusing, per the strategy) and
    /// adds it with `refs` references. The caller has checked the value fits the buffer at all.
    pub(crate) fn admit(
        &self,
        shard: u32,
        value: Bytes,
        refs: usize,
    ) -> Result<Arc<RefMessage>, ProduceError> {
        let size = value.len();
        let max = self.config.max_buffer_size;
        let acct = &self.accounting;
        let mut order = self.order.lock();
        while self.used_bytes().saturating_add(size) > max {
            if self.config.on_full_strategy == OnFull::ReturnError {
                return Err(ProduceError::BufferFull {
                    value,
                    needed: size,
                    max,
                });
            }
            let Some(oldest) = order.pop_front() else {
                break;
            };
            if let Some(msg) = oldest.upgrade()
                && msg.drop_now()
            {
                acct.metrics.inc_dropped(DropReason::BufferFull);
            }
        }
        let msg = Arc::new(RefMessage {
            shard,
            size,
            produced_at: Instant::now(),
            value: Mutex::new(Some(value)),
            refs: AtomicUsize::new(refs),
            state: AtomicU8::new(LIVE),
            accounting: Arc::clone(acct),
        });
        acct.used_bytes.fetch_add(size, Ordering::AcqRel);
        acct.live.fetch_add(1, Ordering::AcqRel);
        acct.metrics.buffer_added(size);
        order.push_back(Arc::downgrade(&msg));
        while order
            .front()
            .is_some_and(|w| !w.upgrade().is_some_and(|m| m.is_live()))
        {
            order.pop_front();
        }
        // Released messages in the middle stay until they reach the front; compact when they
        // clearly outnumber the live ones so the queue stays proportional to the buffer.
        if order.len() > 1024 && order.len() > 2 * self.live() {
            order.retain(|w| w.upgrade().is_some_and(|m| m.is_live()));
        }
        Ok(msg)
    }

    /// Drops every live message, counting each as `reason`. Returns how many.
    pub(crate) fn drop_all(&self, reason: DropReason) -> usize {
        let mut order = self.order.lock();
        let mut dropped = 0;
        for weak in order.drain(..) {
            if let Some(msg) = weak.upgrade()
                && msg.drop_now()
            {
                self.accounting.metrics.inc_dropped(reason);
                dropped += 1;
            }
        }
        dropped
    }

    /// Waits until no message is live or `deadline` passes; returns whether the buffer drained.
    pub(crate) async fn wait_drained(&self, deadline: Instant) -> bool {
        self.wait_until(|b| b.live() == 0, || tokio::time::sleep_until(deadline))
            .await
    }

    /// Waits until no message is live for as long as messages keep being released: gives up
    /// only once none has been released for `stall`. A large backlog that a consumer works
    /// through steadily drains however long it takes; a consumer that has stopped answering
    /// costs `stall`. Returns whether the buffer drained.
    pub(crate) async fn wait_drained_while_progressing(&self, stall: Duration) -> bool {
        self.wait_until(|b| b.live() == 0, || tokio::time::sleep(stall))
            .await
    }

    /// Waits until live messages hold at most `bytes`, for as long as messages keep being
    /// released (see [`wait_drained_while_progressing`](Self::wait_drained_while_progressing)).
    /// Returns whether they got there.
    pub(crate) async fn wait_at_most_while_progressing(
        &self,
        bytes: usize,
        stall: Duration,
    ) -> bool {
        self.wait_until(|b| b.used_bytes() <= bytes, || tokio::time::sleep(stall))
            .await
    }

    /// Waits until `done` holds, or until the timer `give_up` makes (re-made after each
    /// release) fires first; returns whether `done` holds.
    async fn wait_until<F, T>(&self, done: impl Fn(&Self) -> bool, give_up: F) -> bool
    where
        F: Fn() -> T,
        T: std::future::Future<Output = ()>,
    {
        loop {
            let notified = self.accounting.released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done(self) {
                return true;
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = give_up() => return done(self),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer(max: usize, on_full: OnFull) -> (Buffer, ProducerMetrics) {
        let metrics = ProducerMetrics::default();
        let config = BufferConfig {
            max_buffer_size: max,
            on_full_strategy: on_full,
            ..BufferConfig::default()
        };
        (Buffer::new(config, metrics.clone()), metrics)
    }

    #[tokio::test]
    async fn release_returns_bytes_once() {
        let (buf, metrics) = buffer(100, OnFull::DropOldest);
        let msg = buf.admit(0, Bytes::from_static(b"hello"), 2).unwrap();
        assert_eq!(buf.used_bytes(), 5);
        msg.dec_ref();
        assert_eq!(buf.used_bytes(), 5);
        assert!(msg.value().is_some());
        msg.dec_ref();
        assert_eq!(buf.used_bytes(), 0);
        assert_eq!(buf.live(), 0);
        assert!(msg.value().is_none());
        drop(msg);
        assert_eq!(metrics.dropped(DropReason::NoConsumerService), 0);
    }

    #[tokio::test]
    async fn drop_oldest_makes_room() {
        let (buf, metrics) = buffer(10, OnFull::DropOldest);
        let a = buf.admit(0, Bytes::from_static(b"aaaa"), 1).unwrap();
        let b = buf.admit(0, Bytes::from_static(b"bbbb"), 1).unwrap();
        let c = buf.admit(0, Bytes::from_static(b"cccc"), 1).unwrap();
        assert!(!a.is_live());
        assert!(b.is_live() && c.is_live());
        assert_eq!(buf.used_bytes(), 8);
        assert_eq!(metrics.dropped(DropReason::BufferFull), 1);
        // The writer's late reference return changes nothing.
        a.dec_ref();
        assert_eq!(buf.used_bytes(), 8);
    }

    #[tokio::test]
    async fn return_error_hands_the_value_back() {
        let (buf, _) = buffer(6, OnFull::ReturnError);
        let _a = buf.admit(0, Bytes::from_static(b"aaaa"), 1).unwrap();
        let err = buf.admit(0, Bytes::from_static(b"bbbb"), 1).unwrap_err();
        assert_eq!(err.into_value(), Bytes::from_static(b"bbbb"));
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_room_follows_releases_and_gives_up_when_they_stop() {
        let (buf, _) = buffer(100, OnFull::DropOldest);
        let messages: Vec<_> = (0..4)
            .map(|_| buf.admit(0, Bytes::from_static(b"0123456789"), 1).unwrap())
            .collect();
        assert_eq!(buf.used_bytes(), 40);
        // Nothing is released: the wait gives up after the stall, still above the mark.
        assert!(
            !buf.wait_at_most_while_progressing(20, Duration::from_secs(1))
                .await
        );
        // Releases that keep coming, each within the stall, are waited for.
        let releaser = async {
            for message in &messages[..3] {
                tokio::time::sleep(Duration::from_millis(900)).await;
                message.dec_ref();
            }
        };
        let (reached, ()) = tokio::join!(
            buf.wait_at_most_while_progressing(20, Duration::from_secs(1)),
            releaser
        );
        assert!(reached);
        assert!(buf.used_bytes() <= 20);
        // Already below the mark: no wait at all.
        assert!(buf.wait_at_most_while_progressing(10, Duration::ZERO).await);
    }

    #[tokio::test]
    async fn forgotten_message_is_counted() {
        let (buf, metrics) = buffer(10, OnFull::DropOldest);
        drop(buf.admit(0, Bytes::from_static(b"x"), 1).unwrap());
        assert_eq!(buf.used_bytes(), 0);
        assert_eq!(metrics.dropped(DropReason::NoConsumerService), 1);
    }
}
