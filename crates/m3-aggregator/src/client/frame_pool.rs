//! Frame buffers kept for reuse between batches.
//!
//! A batch encodes its frames into one buffer per group (a shard and its owners), some tens of
//! kilobytes per request; the buffer is frozen, queued for every owner, and freed once the
//! last owner's writer has written it. Allocated afresh for every request, those buffers cost
//! the coordinator as a relay about 8% of its CPU in page faults alone: the allocator returns
//! the freed pages to the kernel, and the next buffer faults them in again as frames are
//! written into it.
//!
//! So the writer that holds the last reference to a written buffer gives it back here
//! ([`FramePool::give_back`]: the other owners' writers still holding it make the return a
//! no-op), and the next batch takes it with its pages still mapped. The pool is bounded in
//! bytes: at most what a burst of batches had in flight is kept, never more than
//! [`MAX_POOLED_BYTES`].

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;

/// The most buffer capacity the pool keeps.
const MAX_POOLED_BYTES: usize = 16 * 1024 * 1024;

/// Cleared frame buffers, ready for the next batch's groups.
#[derive(Default)]
pub(crate) struct FramePool {
    buffers: Mutex<Pooled>,
}

#[derive(Default)]
struct Pooled {
    buffers: Vec<BytesMut>,
    /// The buffers' total capacity.
    bytes: usize,
}

impl FramePool {
    /// An empty buffer with room for at least `capacity` bytes: a pooled one when there is
    /// one large enough, else a new one.
    ///
    /// A pooled buffer that is too small is dropped rather than grown (growing maps new pages
    /// just the same), and a new buffer gets a quarter more than asked: the sizes asked for
    /// wander a little from batch to batch, and the pool then settles on buffers that fit
    /// them all.
    pub(crate) fn take(&self, capacity: usize) -> BytesMut {
        let pooled = {
            let mut pooled = self.buffers.lock();
            let buffer = pooled.buffers.pop();
            if let Some(buffer) = &buffer {
                pooled.bytes -= buffer.capacity();
            }
            buffer
        };
        match pooled {
            Some(buffer) if buffer.capacity() >= capacity => buffer,
            _ => BytesMut::with_capacity(capacity + capacity / 4),
        }
    }

    /// Keeps `buffer` for reuse when this was its last reference and the pool has room;
    /// otherwise drops it (a reference another owner still holds stays valid).
    pub(crate) fn give_back(&self, buffer: Bytes) {
        let Ok(mut buffer) = buffer.try_into_mut() else {
            return;
        };
        buffer.clear();
        let mut pooled = self.buffers.lock();
        if pooled.bytes + buffer.capacity() <= MAX_POOLED_BYTES {
            pooled.bytes += buffer.capacity();
            pooled.buffers.push(buffer);
        }
    }

    /// The capacity pooled, for tests.
    #[cfg(test)]
    pub(crate) fn pooled_bytes(&self) -> usize {
        self.buffers.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_once_its_last_reference_is_given_back() {
        let pool = FramePool::default();
        let mut buffer = pool.take(4096);
        buffer.extend_from_slice(b"frames");
        let first = buffer.freeze();
        let second = first.clone();
        let address = first.as_ptr();
        // One owner's writer is done; the other still holds the bytes.
        pool.give_back(first);
        assert_eq!(pool.pooled_bytes(), 0);
        assert_eq!(&second[..], b"frames", "the other reference is intact");
        pool.give_back(second);
        assert!(pool.pooled_bytes() >= 4096);
        let reused = pool.take(1024);
        assert!(reused.is_empty());
        assert_eq!(reused.as_ptr(), address, "the same allocation is reused");
        assert_eq!(pool.pooled_bytes(), 0);
    }

    #[test]
    fn a_taken_buffer_has_the_room_asked_for_even_when_the_pooled_one_was_smaller() {
        let pool = FramePool::default();
        pool.give_back(pool.take(16).freeze());
        assert!(pool.take(64 * 1024).capacity() >= 64 * 1024);
    }

    #[test]
    fn the_pool_keeps_at_most_its_bound() {
        let pool = FramePool::default();
        let each = 1024 * 1024;
        for _ in 0..(MAX_POOLED_BYTES / each + 4) {
            pool.give_back(BytesMut::with_capacity(each).freeze());
        }
        assert!(pool.pooled_bytes() <= MAX_POOLED_BYTES);
        assert!(pool.pooled_bytes() >= MAX_POOLED_BYTES - each);
    }
}
