//! Bounds for hand-written TCP servers (rawtcp, m3msg): how many connections at once, and how
//! long a connection may sit idle or in the middle of a frame.
//!
//! ```text
//!   bytes   ──▌▌▌──────────────▌▌▌▌▌▌▌──── ─ ─ ─ (stalls mid-frame)
//!   idle         [── ≤ idle ──]
//!   frame                       [── ≤ frame timeout ──] ✗ closed
//! ```
//!
//! A connection that sends nothing for `idle` is closed; so is one that starts a frame and
//! does not finish it within `frame`. Without the second bound a peer can announce a 50 MB
//! frame, send half of it and hold the memory forever.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Connections served at once; further ones are accepted and closed at once (default
    /// 4096).
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed (default 10m).
    pub idle_timeout: Duration,
    /// A frame (or request) must arrive whole within this long of its first byte (default
    /// 1m).
    pub frame_timeout: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_connections: 4096,
            idle_timeout: Duration::from_secs(600),
            frame_timeout: Duration::from_secs(60),
        }
    }
}

/// Counts the connections of one listener against [`ListenerLimits::max_connections`].
#[derive(Debug, Clone)]
pub struct ConnectionLimit {
    permits: Arc<Semaphore>,
}

impl ConnectionLimit {
    /// A limit of `max` connections at once.
    pub fn new(max: usize) -> ConnectionLimit {
        ConnectionLimit {
            // Above tokio's limit the bound is no bound anyway.
            permits: Arc::new(Semaphore::new(max.clamp(1, Semaphore::MAX_PERMITS))),
        }
    }

    /// A slot for a new connection, held until dropped; `None` when every slot is taken (the
    /// caller closes the connection and counts it).
    pub fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.permits).try_acquire_owned().ok()
    }
}

/// The deadline of the next read on a framed connection: the idle timeout between frames, the
/// frame timeout once a frame has begun.
#[derive(Debug)]
pub struct FrameDeadline {
    idle: Duration,
    frame: Duration,
    /// When the last byte arrived with no partial frame pending.
    idle_since: Instant,
    /// When the partial frame in the buffer started, if any.
    frame_since: Option<Instant>,
}

/// Why [`FrameDeadline::expired`] closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Nothing arrived for the idle timeout.
    Idle,
    /// A frame did not arrive whole within the frame timeout.
    PartialFrame,
}

impl FrameDeadline {
    /// Deadlines from `limits`, starting now.
    pub fn new(limits: &ListenerLimits) -> FrameDeadline {
        FrameDeadline {
            idle: limits.idle_timeout,
            frame: limits.frame_timeout,
            idle_since: Instant::now(),
            frame_since: None,
        }
    }

    /// Records that bytes arrived.
    pub fn on_read(&mut self) {
        self.idle_since = Instant::now();
    }

    /// Records whether the buffer, after taking the whole frames out, holds part of a frame:
    /// the frame timeout runs from the first time it does until it no longer does.
    pub fn set_partial(&mut self, partial: bool) {
        match (partial, self.frame_since) {
            (true, None) => self.frame_since = Some(Instant::now()),
            (false, _) => self.frame_since = None,
            (true, Some(_)) => {}
        }
    }

    /// The instant at which the connection should be closed if no further byte arrives.
    pub fn deadline(&self) -> Instant {
        let idle = self.idle_since + self.idle;
        match self.frame_since {
            Some(started) => idle.min(started + self.frame),
            None => idle,
        }
    }

    /// Which bound the deadline enforces.
    pub fn expired(&self) -> Expiry {
        if self
            .frame_since
            .is_some_and(|s| s + self.frame <= self.idle_since + self.idle)
        {
            Expiry::PartialFrame
        } else {
            Expiry::Idle
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_partial_frame_shortens_the_deadline_and_a_whole_one_resets_it() {
        let limits = ListenerLimits {
            max_connections: 1,
            idle_timeout: Duration::from_secs(600),
            frame_timeout: Duration::from_secs(60),
        };
        let mut d = FrameDeadline::new(&limits);
        let start = Instant::now();
        assert_eq!(d.deadline(), start + limits.idle_timeout);
        d.on_read();
        d.set_partial(true);
        assert_eq!(d.deadline(), start + limits.frame_timeout);
        assert_eq!(d.expired(), Expiry::PartialFrame);
        tokio::time::advance(Duration::from_secs(30)).await;
        d.on_read();
        d.set_partial(true); // more of the same frame: the frame deadline stays
        assert_eq!(d.deadline(), start + limits.frame_timeout);
        d.set_partial(false);
        assert_eq!(
            d.deadline(),
            start + Duration::from_secs(30) + limits.idle_timeout
        );
        assert_eq!(d.expired(), Expiry::Idle);
    }

    #[test]
    fn the_connection_limit_hands_out_max_slots() {
        let limit = ConnectionLimit::new(2);
        let a = limit.try_acquire();
        let b = limit.try_acquire();
        assert!(a.is_some() && b.is_some());
        assert!(limit.try_acquire().is_none());
        drop(a);
        assert!(limit.try_acquire().is_some());
    }
}
