//! Compressed chunks of one series' samples: delta-of-delta timestamps and XOR'd values, the
//! encoding of Facebook's Gorilla paper that M3TSZ and Prometheus's XOR chunks also use.
//!
//! A regular scrape (same interval, slowly changing values) costs about one to two bytes per
//! sample instead of sixteen: a timestamp whose interval did not change is one bit, a value
//! equal to the previous one is one bit, and a changed value stores only the bits that differ,
//! in the window of the previous change when it fits.
//!
//! ```text
//! sample 0:  timestamp (64 bits) | value (64 bits)
//! sample n:  Δ of Δ timestamp     | XOR with previous value
//!            0                    → same interval           0        → same value
//!            10  + 14 bits        → |ΔΔ| < 2^13             10 + m   → m bits in the previous window
//!            110 + 17 bits        → |ΔΔ| < 2^16             11 + 5 bits leading zeros + 6 bits
//!            1110 + 20 bits       → |ΔΔ| < 2^19                  length − 1 + m bits
//!            1111 + 64 bits       → anything
//! ```
//!
//! Integers, as M3TSZ's integer mode: when the previous value is an integer that a float holds
//! exactly, the value is written as the change of its change (a counter growing at a steady rate
//! costs one bit, one growing by a few a scrape about seven), or, when it is not an integer, as
//! a XOR behind a two-bit escape:
//!
//! ```text
//! previous value an exact integer:
//!   0                      → changed by as much as last time (ΔΔ = 0)
//!   10 + ΔΔ ≠ 0:  0 + 4 bits | 10 + 10 bits | 110 + 20 bits | 1110 + 36 bits | 1111 + 64 bits
//!   11 + XOR as above      → not an exact integer
//! ```
//!
//! A chunk is append-only with strictly increasing timestamps; the caller (the head) decides
//! where one chunk ends and the next begins. The evaluated crates (`tsz`, unmaintained since
//! 2017; `gortsz`, 32-bit times and values, nightly-only; `nodedb-codec`, a pre-release) do not
//! fit, and the encoding is small, so it is written here and pinned by a property test.

use std::fmt;

/// The most samples a chunk holds (a head closes its chunks at 120). The bound lets a chunk
/// count its samples and its whole words in 16 bits each: a sample takes at most 147 bits
/// (a 68-bit timestamp escape and a 79-bit value), so 16,384 of them fill at most 37,632
/// words. Those 4 bytes less make an open chunk 56 bytes rather than 64, in every series of
/// a head.
pub const MAX_SAMPLES: usize = 16_384;

/// The smallest buffer of a chunk, in bytes: the first sample alone takes sixteen, and the
/// pending word eight more.
const MIN_CAPACITY: usize = 32;

/// What the allocator's size class for a request of `bytes` holds: classes are 16 bytes apart
/// up to 128, then four to each doubling (jemalloc's, which the binaries run on; glibc's
/// chunks are 16 bytes apart, so a class size wastes nothing there either). A buffer of a
/// class's size uses the bytes the allocator would round the request up to anyway.
fn size_class(bytes: usize) -> usize {
    if bytes <= 128 {
        return bytes.next_multiple_of(16);
    }
    bytes
        .checked_next_power_of_two()
        .map_or(bytes, |power| bytes.next_multiple_of(power / 8))
}

/// The bits of one chunk, written most significant bit first.
///
/// The bits after the last whole 8-byte word form the *pending word*, and an append loads that
/// word, or-s its bits in and stores it back over the buffer's last eight bytes at once, rather
/// than or-ing bits into one byte after another (which stalled on each byte's store, and was
/// most of the cost of a chunk). So the buffer runs up to eight bytes past the encoded ones,
/// all zero, until the chunk is complete and [`BitWriter::shrink_to_fit`] cuts them off. The
/// word is read from the buffer rather than also kept in a field: 8 bytes less in every open
/// chunk of a head, for a load the store that follows it would miss the cache on anyway. The
/// buffer is a boxed slice whose length is its capacity (8 bytes less than a `Vec`): what is
/// stored ends with the pending word, and the bytes after it are zero.
///
/// ```text
/// bytes:  [ whole words … | pending word (8 bytes) ]
///                         ^ flushed_words × 8    └ pending_len bits used, the rest zero
/// ```
///
/// The writer also carries a few bytes of its owner's (`extra`): its own fields take 19
/// bytes, and the 5 its alignment leaves after them would stay empty in any struct holding
/// it. A [`Chunk`] keeps its sample count and XOR window there ([`ChunkState`]), which makes
/// it 56 bytes rather than 64.
#[derive(Clone, Default)]
struct BitWriter<E> {
    bytes: Box<[u8]>,
    /// Whole words before the pending word (see [`MAX_SAMPLES`] for why 16 bits hold them).
    flushed_words: u16,
    /// Bits used of the pending word (0..=63).
    pending_len: u8,
    /// The owner's few bytes; the writer never reads them.
    extra: E,
}

impl<E: PartialEq> PartialEq for BitWriter<E> {
    fn eq(&self, other: &BitWriter<E>) -> bool {
        self.len_bits() == other.len_bits()
            && self.encoded() == other.encoded()
            && self.extra == other.extra
    }
}

impl<E: Eq> Eq for BitWriter<E> {}

impl<E> BitWriter<E> {
    /// Lengthens the buffer to at least `len` bytes with zeros, growing its capacity by a
    /// quarter, to the end of the allocator's size class: a head holds an open chunk per
    /// series, and doubling left them a third empty on average, growing by half (to sizes
    /// such as 144 bytes, which took 160 from the allocator) a quarter; this leaves a sixth.
    /// A chunk is reallocated a few times more while it fills, some nanoseconds a sample.
    #[cold]
    fn grow_to(&mut self, len: usize) {
        let capacity = self.bytes.len();
        if len > capacity {
            let wanted = (capacity + capacity / 4).max(MIN_CAPACITY).max(len);
            self.resize(size_class(wanted));
        }
    }

    /// Moves the bytes into a zeroed buffer of `capacity` (at least what is stored).
    fn resize(&mut self, capacity: usize) {
        let mut wider = vec![0u8; capacity].into_boxed_slice();
        let kept = self.bytes.len().min(capacity);
        wider[..kept].copy_from_slice(&self.bytes[..kept]);
        self.bytes = wider;
    }

    /// Bytes of whole words before the pending word.
    #[inline]
    fn flushed(&self) -> usize {
        usize::from(self.flushed_words) * 8
    }

    /// Bytes stored: the whole words and, once a bit is written, the pending word.
    fn stored_len(&self) -> usize {
        if self.flushed_words == 0 && self.pending_len == 0 {
            0
        } else {
            (self.flushed() + 8).min(self.bytes.len())
        }
    }

    /// The pending word: its eight bytes, read as zero past the buffer's end (a buffer cut to
    /// its encoded bytes ends inside it).
    #[inline(always)]
    fn pending(&self) -> u64 {
        let start = self.flushed();
        match self.bytes.get(start..).and_then(<[u8]>::first_chunk::<8>) {
            Some(word) => u64::from_be_bytes(*word),
            None => {
                let mut word = [0u8; 8];
                let tail = self.bytes.get(start..).unwrap_or_default();
                word[..tail.len()].copy_from_slice(tail);
                u64::from_be_bytes(word)
            }
        }
    }

    /// Writes `pending` over the pending word's eight bytes.
    #[inline(always)]
    fn store_pending(&mut self, pending: u64) {
        let start = self.flushed();
        let end = start + 8;
        if self.bytes.len() < end {
            self.grow_to(end);
        }
        self.bytes[start..end].copy_from_slice(&pending.to_be_bytes());
    }

    #[inline(always)]
    fn push_bit(&mut self, bit: bool) {
        self.push_bits(u64::from(bit), 1);
    }

    /// Appends the low `count` bits of `value` (count ≤ 64), most significant first.
    #[inline(always)]
    fn push_bits(&mut self, value: u64, count: u8) {
        let count = count.min(64);
        if count == 0 {
            return;
        }
        let value = if count == 64 {
            value
        } else {
            value & ((1u64 << count) - 1)
        };
        let free = 64 - self.pending_len;
        let mut pending = self.pending();
        if count < free {
            pending |= value << (free - count);
            self.pending_len += count;
        } else {
            // The top `free` bits complete the word; the other `rest` start the next, whose
            // bytes are still zero.
            let rest = count - free;
            pending |= value >> rest;
            self.store_pending(pending);
            self.flushed_words += 1;
            pending = if rest == 0 { 0 } else { value << (64 - rest) };
            self.pending_len = rest;
        }
        self.store_pending(pending);
    }

    /// The encoded bytes (without the pending word's unused ones).
    fn encoded(&self) -> &[u8] {
        let len =
            (self.flushed() + usize::from(self.pending_len).div_ceil(8)).min(self.bytes.len());
        &self.bytes[..len]
    }

    fn len_bits(&self) -> usize {
        self.flushed() * 8 + usize::from(self.pending_len)
    }

    /// Makes room for `bytes` more encoded bytes (and the pending word's) at once.
    fn reserve(&mut self, bytes: usize) {
        let wanted = self.stored_len() + bytes + 8;
        if wanted > self.bytes.len() {
            self.resize(size_class(wanted));
        }
    }

    /// Cuts off the pending word's unused bytes and releases spare capacity: for a complete
    /// chunk. (A later append would store the pending word again.)
    fn shrink_to_fit(&mut self) {
        let len = self.encoded().len();
        if len < self.bytes.len() {
            self.resize(len);
        }
    }

    /// Writes `value` in the first of `buckets` (prefix, prefix length, payload bits) whose
    /// payload holds it, else as `1111` and all 64 bits.
    fn push_bucketed(&mut self, value: i64, buckets: &[(u64, u8, u8)]) {
        for &(prefix, prefix_len, payload) in buckets {
            let half = 1i64 << (payload - 1);
            if (-half..half).contains(&value) {
                self.push_bits(prefix, prefix_len);
                self.push_bits((value as u64) & ((1u64 << payload) - 1), payload);
                return;
            }
        }
        self.push_bits(0b1111, 4);
        self.push_bits(value as u64, 64);
    }
}

/// Reads what a [`BitWriter`] wrote.
struct BitReader<'a> {
    bytes: &'a [u8],
    position: usize,
    end: usize,
}

impl<'a> BitReader<'a> {
    fn new(bytes: &'a [u8], end: usize) -> BitReader<'a> {
        BitReader {
            bytes,
            position: 0,
            end: end.min(bytes.len() * 8),
        }
    }

    fn read_bit(&mut self) -> Option<bool> {
        if self.position >= self.end {
            return None;
        }
        let byte = self.bytes[self.position / 8];
        let bit = byte & (0x80 >> (self.position % 8)) != 0;
        self.position += 1;
        Some(bit)
    }

    /// The next `count` bits (≤ 64) as the low bits of a `u64`.
    fn read_bits(&mut self, count: u8) -> Option<u64> {
        if self.position + usize::from(count) > self.end {
            return None;
        }
        let mut value = 0u64;
        let mut left = count;
        while left > 0 {
            let byte = self.bytes[self.position / 8];
            let offset = (self.position % 8) as u8;
            let available = 8 - offset;
            let take = available.min(left);
            let part = (byte >> (available - take)) & (((1u16 << take) - 1) as u8);
            value = (value << take) | u64::from(part);
            self.position += usize::from(take);
            left -= take;
        }
        Some(value)
    }
}

/// The timestamp buckets: (prefix bits, prefix length, payload bits).
const DOD_BUCKETS: [(u64, u8, u8); 3] = [(0b10, 2, 14), (0b110, 3, 17), (0b1110, 4, 20)];
/// The buckets of a non-zero change of an integer value's change: (prefix bits, prefix
/// length, payload bits); past the last, `1111` and 64 bits.
const INT_BUCKETS: [(u64, u8, u8); 4] =
    [(0b0, 1, 4), (0b10, 2, 10), (0b110, 3, 20), (0b1110, 4, 36)];
/// Integers up to this magnitude are exact in a float.
const EXACT_INT: f64 = 9_007_199_254_740_992.0;

/// The value as an integer when a float holds it exactly and gives back the same bits (not
/// `-0.0`, not NaN).
fn exact_int(bits: u64) -> Option<i64> {
    let value = f64::from_bits(bits);
    if value.is_finite() && value.fract() == 0.0 && value.abs() < EXACT_INT {
        let int = value as i64;
        ((int as f64).to_bits() == bits).then_some(int)
    } else {
        None
    }
}

/// One series' samples, compressed.
#[derive(Clone, PartialEq, Eq)]
pub struct Chunk {
    bits: BitWriter<ChunkState>,
    last_time: i64,
    last_delta: i64,
    last_value: u64,
    /// How much the value changed last time, when it and the one before were integers.
    last_int_delta: i64,
}

/// A chunk's fields of a byte or two, kept in its [`BitWriter`]'s spare bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ChunkState {
    /// Samples held, at most [`MAX_SAMPLES`].
    count: u16,
    /// Leading and trailing zeros of the last stored XOR window (`leading = u8::MAX`: none).
    leading: u8,
    trailing: u8,
}

impl fmt::Debug for Chunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chunk")
            .field("samples", &self.bits.extra.count)
            .field("first_time", &self.first_time())
            .field("last_time", &self.last_time)
            .field("bytes", &self.bits.encoded().len())
            .finish()
    }
}

/// Why a chunk refused a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The sample's timestamp is not after the chunk's last one.
    #[error("sample at {time} ms is not after the chunk's last sample at {last} ms")]
    NotAfterLast {
        /// The refused sample's time.
        time: i64,
        /// The chunk's last time.
        last: i64,
    },
    /// The chunk holds [`MAX_SAMPLES`] already.
    #[error("the chunk holds {MAX_SAMPLES} samples already")]
    Full,
}

impl Default for Chunk {
    fn default() -> Chunk {
        Chunk::new()
    }
}

impl Chunk {
    /// An empty chunk.
    pub fn new() -> Chunk {
        Chunk {
            bits: BitWriter {
                bytes: Box::default(),
                flushed_words: 0,
                pending_len: 0,
                extra: ChunkState {
                    count: 0,
                    leading: u8::MAX,
                    trailing: 0,
                },
            },
            last_time: i64::MIN,
            last_delta: 0,
            last_value: 0,
            last_int_delta: 0,
        }
    }

    /// Samples in the chunk.
    pub fn len(&self) -> usize {
        usize::from(self.bits.extra.count)
    }

    /// Whether it holds no sample.
    pub fn is_empty(&self) -> bool {
        self.bits.extra.count == 0
    }

    /// The first sample's time (ms); meaningless when empty.
    pub fn first_time(&self) -> i64 {
        // The first sample's time is the chunk's first 64 bits, stored with it rather than
        // in every open chunk of a head.
        self.bits
            .bytes
            .first_chunk::<8>()
            .map_or(0, |bytes| i64::from_be_bytes(*bytes))
    }

    /// The last sample's time (ms). An empty chunk answers with the time of the last sample
    /// [`take`](Chunk::take)n or [`clear`](Chunk::clear)ed out of it, or with `i64::MIN` when
    /// none was: a head's open chunk so keeps its series' newest time once a block took its
    /// samples, with no field for it in every series.
    pub fn last_time(&self) -> i64 {
        self.last_time
    }

    /// An empty chunk whose [`last_time`](Chunk::last_time) is `time`.
    pub fn empty_after(time: i64) -> Chunk {
        Chunk {
            last_time: time,
            ..Chunk::new()
        }
    }

    /// Takes the samples out, leaving an empty chunk that keeps the last one's time.
    pub fn take(&mut self) -> Chunk {
        std::mem::replace(self, Chunk::empty_after(self.last_time))
    }

    /// Drops the samples, keeping the last one's time.
    pub fn clear(&mut self) {
        *self = Chunk::empty_after(self.last_time);
    }

    /// Bytes the encoded samples take.
    pub fn encoded_len(&self) -> usize {
        self.bits.encoded().len()
    }

    /// Heap bytes the chunk holds (its buffer's capacity).
    pub fn heap_bytes(&self) -> usize {
        self.bits.bytes.len()
    }

    /// Makes room for `bytes` more encoded bytes at once: a chunk that follows a full one of
    /// the same series is likely to need as many, and growing to them takes several copies.
    pub fn reserve(&mut self, bytes: usize) {
        self.bits.reserve(bytes);
    }

    /// Releases spare buffer capacity (once the chunk is complete).
    pub fn shrink_to_fit(&mut self) {
        self.bits.shrink_to_fit();
    }

    /// Appends a sample.
    ///
    /// # Errors
    /// [`PushError::NotAfterLast`] when `time` is not after the last sample's,
    /// [`PushError::Full`] when the chunk holds [`MAX_SAMPLES`] (nothing is appended).
    pub fn push(&mut self, time: i64, value: f64) -> Result<(), PushError> {
        let bits = value.to_bits();
        if self.bits.extra.count == 0 {
            self.bits.push_bits(time as u64, 64);
            self.bits.push_bits(bits, 64);
            self.last_time = time;
            self.last_value = bits;
            self.bits.extra.count = 1;
            return Ok(());
        }
        if time <= self.last_time {
            return Err(PushError::NotAfterLast {
                time,
                last: self.last_time,
            });
        }
        if self.len() >= MAX_SAMPLES {
            return Err(PushError::Full);
        }
        let delta = time.wrapping_sub(self.last_time);
        self.push_dod(delta.wrapping_sub(self.last_delta));
        self.push_value(bits);
        self.last_delta = delta;
        self.last_time = time;
        self.last_value = bits;
        self.bits.extra.count += 1;
        Ok(())
    }

    fn push_dod(&mut self, dod: i64) {
        if dod == 0 {
            self.bits.push_bit(false);
            return;
        }
        self.bits.push_bucketed(dod, &DOD_BUCKETS);
    }

    fn push_value(&mut self, bits: u64) {
        let Some(previous) = exact_int(self.last_value) else {
            self.push_xor(bits ^ self.last_value);
            self.last_int_delta = 0;
            return;
        };
        let Some(current) = exact_int(bits) else {
            self.bits.push_bits(0b11, 2);
            self.push_xor(bits ^ self.last_value);
            self.last_int_delta = 0;
            return;
        };
        // Both below 2^53 in magnitude: no overflow.
        let delta = current - previous;
        let dod = delta - self.last_int_delta;
        self.last_int_delta = delta;
        if dod == 0 {
            self.bits.push_bit(false);
            return;
        }
        self.bits.push_bits(0b10, 2);
        self.bits.push_bucketed(dod, &INT_BUCKETS);
    }

    fn push_xor(&mut self, xor: u64) {
        if xor == 0 {
            self.bits.push_bit(false);
            return;
        }
        self.bits.push_bit(true);
        let leading = (xor.leading_zeros() as u8).min(31);
        let trailing = xor.trailing_zeros() as u8;
        let ChunkState {
            leading: window_leading,
            trailing: window_trailing,
            ..
        } = self.bits.extra;
        if window_leading != u8::MAX && leading >= window_leading && trailing >= window_trailing {
            // Fits the previous window.
            self.bits.push_bit(false);
            let width = 64 - window_leading - window_trailing;
            self.bits.push_bits(xor >> window_trailing, width);
            return;
        }
        self.bits.push_bit(true);
        let width = 64 - leading - trailing;
        self.bits.push_bits(u64::from(leading), 5);
        // 1..=64 stored as 0..=63.
        self.bits.push_bits(u64::from(width - 1), 6);
        self.bits.push_bits(xor >> trailing, width);
        self.bits.extra.leading = leading;
        self.bits.extra.trailing = trailing;
    }

    /// The samples, in time order.
    pub fn iter(&self) -> ChunkIter<'_> {
        ChunkIter::new(
            BitReader::new(self.bits.encoded(), self.bits.len_bits()),
            u32::from(self.bits.extra.count),
        )
    }

    /// The encoded bytes, for writing a block; [`Chunk::decode`] reads them back.
    pub fn bytes(&self) -> &[u8] {
        self.bits.encoded()
    }

    /// The samples of `count` samples' worth of encoded `bytes` (as [`Chunk::bytes`] gave),
    /// for reading a block. A truncated or corrupt chunk ends early: the iterator stops at the
    /// first sample that does not decode.
    pub fn decode(bytes: &[u8], count: u32) -> ChunkIter<'_> {
        ChunkIter::new(BitReader::new(bytes, bytes.len() * 8), count)
    }
}

/// A complete chunk: its encoded bytes and what a read needs to know without decoding them,
/// without the encoder state an open [`Chunk`] carries (40 bytes here against 80, plus the
/// bytes, held exactly).
#[derive(Clone, PartialEq, Eq)]
pub struct SealedChunk {
    bytes: Box<[u8]>,
    count: u32,
    first_time: i64,
    last_time: i64,
}

impl fmt::Debug for SealedChunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedChunk")
            .field("samples", &self.count)
            .field("first_time", &self.first_time)
            .field("last_time", &self.last_time)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl SealedChunk {
    /// Samples in the chunk.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether it holds no sample.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The first sample's time (ms).
    pub fn first_time(&self) -> i64 {
        self.first_time
    }

    /// The last sample's time (ms).
    pub fn last_time(&self) -> i64 {
        self.last_time
    }

    /// The encoded bytes; [`Chunk::decode`] reads them.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The samples, in time order.
    pub fn iter(&self) -> ChunkIter<'_> {
        Chunk::decode(&self.bytes, self.count)
    }

    /// A sealed chunk of `count` samples from `first_time` to `last_time` encoded in `bytes`.
    pub fn from_parts(bytes: Box<[u8]>, count: u32, first_time: i64, last_time: i64) -> Self {
        SealedChunk {
            bytes,
            count,
            first_time,
            last_time,
        }
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.bytes.len()
    }
}

impl Chunk {
    /// The chunk, complete: no sample can be appended any more.
    pub fn seal(self) -> SealedChunk {
        SealedChunk {
            bytes: self.bits.encoded().into(),
            count: u32::from(self.bits.extra.count),
            first_time: self.first_time(),
            last_time: self.last_time,
        }
    }
}

/// The samples of a chunk; see [`Chunk::iter`].
pub struct ChunkIter<'a> {
    reader: BitReader<'a>,
    remaining: u32,
    read: u32,
    time: i64,
    delta: i64,
    value: u64,
    int_delta: i64,
    leading: u8,
    trailing: u8,
}

impl<'a> ChunkIter<'a> {
    fn new(reader: BitReader<'a>, count: u32) -> ChunkIter<'a> {
        ChunkIter {
            reader,
            remaining: count,
            read: 0,
            time: 0,
            delta: 0,
            value: 0,
            int_delta: 0,
            leading: 0,
            trailing: 0,
        }
    }

    fn next_sample(&mut self) -> Option<(i64, f64)> {
        if self.read == 0 {
            self.time = self.reader.read_bits(64)? as i64;
            self.value = self.reader.read_bits(64)?;
            return Some((self.time, f64::from_bits(self.value)));
        }
        let dod = self.read_dod()?;
        self.delta = self.delta.wrapping_add(dod);
        self.time = self.time.wrapping_add(self.delta);
        if let Some(previous) = exact_int(self.value) {
            if !self.reader.read_bit()? {
                // Changed by as much as last time.
                return self.int_value(previous);
            }
            if !self.reader.read_bit()? {
                let dod = self.read_int_dod()?;
                self.int_delta = self.int_delta.checked_add(dod)?;
                return self.int_value(previous);
            }
        }
        self.int_delta = 0;
        self.read_xor()?;
        Some((self.time, f64::from_bits(self.value)))
    }

    /// The value `previous` plus the current change, which must stay an exact integer.
    fn int_value(&mut self, previous: i64) -> Option<(i64, f64)> {
        let value = previous.checked_add(self.int_delta)?;
        let float = value as f64;
        if float.abs() >= EXACT_INT {
            return None;
        }
        self.value = float.to_bits();
        Some((self.time, float))
    }

    fn read_int_dod(&mut self) -> Option<i64> {
        for (_, _, payload) in INT_BUCKETS {
            // Each bucket's prefix is one more 1 than the last, then a 0.
            if !self.reader.read_bit()? {
                let raw = self.reader.read_bits(payload)?;
                let shift = 64 - u32::from(payload);
                return Some(((raw << shift) as i64) >> shift);
            }
        }
        Some(self.reader.read_bits(64)? as i64)
    }

    /// A XOR'd value (after its "changed" bit).
    fn read_xor(&mut self) -> Option<()> {
        if self.reader.read_bit()? {
            let xor = if self.reader.read_bit()? {
                let leading = self.reader.read_bits(5)? as u8;
                let width = self.reader.read_bits(6)? as u8 + 1;
                let trailing = 64u8.checked_sub(leading + width)?;
                self.leading = leading;
                self.trailing = trailing;
                self.reader.read_bits(width)? << trailing
            } else {
                let width = 64u8.checked_sub(self.leading + self.trailing)?;
                if width == 0 {
                    return None;
                }
                self.reader.read_bits(width)? << self.trailing
            };
            self.value ^= xor;
        }
        Some(())
    }

    fn read_dod(&mut self) -> Option<i64> {
        if !self.reader.read_bit()? {
            return Some(0);
        }
        for (_, prefix_len, payload) in DOD_BUCKETS {
            // The bucket's prefix is prefix_len − 1 ones then a zero; one 1 is read already.
            if prefix_len == 4 || !self.reader.read_bit()? {
                if prefix_len == 4 && self.reader.read_bit()? {
                    return Some(self.reader.read_bits(64)? as i64);
                }
                let raw = self.reader.read_bits(payload)?;
                // Sign-extend the payload.
                let shift = 64 - u32::from(payload);
                return Some(((raw << shift) as i64) >> shift);
            }
        }
        None
    }
}

impl Iterator for ChunkIter<'_> {
    type Item = (i64, f64);

    fn next(&mut self) -> Option<(i64, f64)> {
        if self.remaining == 0 {
            return None;
        }
        match self.next_sample() {
            Some(sample) => {
                self.remaining -= 1;
                self.read += 1;
                Some(sample)
            }
            None => {
                self.remaining = 0;
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(samples: &[(i64, f64)]) -> Chunk {
        let mut chunk = Chunk::new();
        for &(t, v) in samples {
            chunk.push(t, v).unwrap();
        }
        let got: Vec<(i64, u64)> = chunk.iter().map(|(t, v)| (t, v.to_bits())).collect();
        let want: Vec<(i64, u64)> = samples.iter().map(|&(t, v)| (t, v.to_bits())).collect();
        assert_eq!(got, want);
        let decoded: Vec<(i64, u64)> = Chunk::decode(chunk.bytes(), chunk.len() as u32)
            .map(|(t, v)| (t, v.to_bits()))
            .collect();
        assert_eq!(decoded, want);
        chunk
    }

    #[test]
    fn a_regular_scrape_takes_about_a_byte_or_two_per_sample() {
        // 120 samples 15 s apart, a counter growing by a few per scrape, one jittered scrape.
        let mut samples = Vec::new();
        let mut value = 1000.0;
        for i in 0..120i64 {
            let jitter = if i == 60 { 3 } else { 0 };
            value += (i % 5) as f64;
            samples.push((1_700_000_000_000 + i * 15_000 + jitter, value));
        }
        let chunk = roundtrip(&samples);
        let per_sample = chunk.encoded_len() as f64 / samples.len() as f64;
        assert!(per_sample < 1.25, "{per_sample} bytes per sample");
        // The same counter as a float that is not an integer takes the XOR path.
        let floats: Vec<(i64, f64)> = samples.iter().map(|&(t, v)| (t, v + 0.5)).collect();
        let chunk = roundtrip(&floats);
        let per_sample = chunk.encoded_len() as f64 / samples.len() as f64;
        assert!(per_sample < 2.0, "{per_sample} bytes per sample");
        // Integers and floats in turn switch between the two paths.
        let mixed: Vec<(i64, f64)> = (0..120)
            .map(|i| {
                (
                    i * 1000,
                    if i % 3 == 0 {
                        i as f64 + 0.25
                    } else {
                        (i * 7) as f64
                    },
                )
            })
            .collect();
        roundtrip(&mixed);
        // A constant gauge on a steady scrape: two bits per sample after the first.
        let constant: Vec<(i64, f64)> = (0..120).map(|i| (i * 10_000, 1.0)).collect();
        let chunk = roundtrip(&constant);
        assert!(chunk.encoded_len() <= 16 + 120 * 2 / 8 + 8, "{chunk:?}");
    }

    /// The bits of `pushes` packed one at a time, most significant first: the model.
    fn packed_one_by_one(pushes: &[(u64, u8)]) -> (Vec<u8>, usize) {
        let mut bytes = Vec::new();
        let mut len = 0usize;
        for &(value, count) in pushes {
            for i in (0..count).rev() {
                if len.is_multiple_of(8) {
                    bytes.push(0u8);
                }
                if (value >> i) & 1 == 1 {
                    let last = bytes.len() - 1;
                    bytes[last] |= 0x80 >> (len % 8);
                }
                len += 1;
            }
        }
        (bytes, len)
    }

    proptest! {
        #[test]
        fn bits_across_word_boundaries_are_the_bits_pushed(
            pushes in proptest::collection::vec((any::<u64>(), 0u8..=64), 0..80),
            shrink_at in 0usize..80,
        ) {
            let mut writer = BitWriter::<()>::default();
            for (i, &(value, count)) in pushes.iter().enumerate() {
                if i == shrink_at {
                    // A shrunk writer that is appended to again stores its pending word anew.
                    writer.shrink_to_fit();
                }
                writer.push_bits(value, count);
            }
            let masked: Vec<(u64, u8)> = pushes
                .iter()
                .map(|&(v, c)| (if c == 64 { v } else { v & ((1u64 << c) - 1) }, c))
                .collect();
            let (bytes, len) = packed_one_by_one(&masked);
            prop_assert_eq!(writer.len_bits(), len);
            prop_assert_eq!(writer.encoded(), &bytes[..]);
            writer.shrink_to_fit();
            prop_assert_eq!(writer.encoded(), &bytes[..]);
        }
    }

    #[test]
    fn size_classes_are_the_allocators() {
        let classes: Vec<usize> = [1, 16, 17, 120, 128, 129, 160, 161, 250, 257, 500, 513, 3000]
            .iter()
            .map(|&n| size_class(n))
            .collect();
        assert_eq!(
            classes,
            [
                16, 16, 32, 128, 128, 160, 160, 192, 256, 320, 512, 640, 3072
            ]
        );
    }

    #[test]
    fn a_growing_buffer_stays_within_a_quarter_again_its_bytes() {
        let mut chunk = Chunk::new();
        for i in 0..1000i64 {
            // Irregular times and values that change in most bits: a few bytes a sample.
            chunk
                .push(i * 300 + (i * 37) % 101, (i as f64).sqrt() * 1e3)
                .unwrap();
            let (used, held) = (chunk.encoded_len(), chunk.heap_bytes());
            // It grows when the pending word passes its end, to a quarter more than it held.
            assert!(
                held <= size_class((used + 8) * 5 / 4).max(MIN_CAPACITY),
                "{held} bytes held for {used} encoded after {} samples",
                i + 1
            );
        }
    }

    #[test]
    fn a_reserved_chunk_fills_without_growing() {
        let mut chunk = Chunk::new();
        chunk.reserve(400);
        let held = chunk.heap_bytes();
        for i in 0..100i64 {
            chunk.push(i * 15_000, i as f64 * 2.5).unwrap();
        }
        assert!(chunk.encoded_len() <= 400);
        assert_eq!(chunk.heap_bytes(), held);
    }

    #[test]
    fn special_values_and_extreme_times_round_trip() {
        roundtrip(&[
            (i64::MIN, f64::NAN),
            (i64::MIN + 1, f64::INFINITY),
            (-1, f64::NEG_INFINITY),
            (0, -0.0),
            (1, f64::MIN_POSITIVE),
            (i64::MAX - 1, f64::MAX),
            (i64::MAX, f64::from_bits(0x7ff0_0000_0000_0002)),
        ]);
    }

    #[test]
    fn a_sample_not_after_the_last_is_refused_and_changes_nothing() {
        let mut chunk = Chunk::new();
        chunk.push(10, 1.0).unwrap();
        chunk.push(20, 2.0).unwrap();
        let before = chunk.clone();
        assert_eq!(
            chunk.push(20, 3.0),
            Err(PushError::NotAfterLast { time: 20, last: 20 })
        );
        assert!(chunk.push(5, 3.0).is_err());
        assert_eq!(chunk, before);
    }

    #[test]
    fn a_full_chunk_of_the_widest_samples_reads_back_and_refuses_more() {
        assert_eq!(std::mem::size_of::<Chunk>(), 56);
        // Intervals alternating between 1 ms and 2^30 ms (every timestamp the 68-bit escape)
        // and values that are never integers, their changing bits in a new window each time.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut time = 0i64;
        let samples: Vec<(i64, f64)> = (0..MAX_SAMPLES)
            .map(|i| {
                time += if i % 2 == 0 { 1 } else { 1 << 30 };
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                // In [1, 2), the mantissa random: never an integer, never NaN.
                (time, f64::from_bits(0x3ff0_0000_0000_0000 | (state >> 12)))
            })
            .collect();
        let mut chunk = Chunk::new();
        for &(t, v) in &samples {
            chunk.push(t, v).unwrap();
        }
        assert_eq!(chunk.push(time + 1, 1.0), Err(PushError::Full));
        assert_eq!(chunk.len(), MAX_SAMPLES);
        let bytes = chunk.bytes().len();
        assert!(
            bytes > MAX_SAMPLES * 15,
            "{bytes} bytes: not the widest samples"
        );
        let read: Vec<(i64, u64)> = chunk.iter().map(|(t, v)| (t, v.to_bits())).collect();
        let want: Vec<(i64, u64)> = samples.iter().map(|&(t, v)| (t, v.to_bits())).collect();
        assert_eq!(read, want);
        assert_eq!(chunk.seal().iter().count(), MAX_SAMPLES);
    }

    #[test]
    fn a_truncated_chunk_ends_early_without_panicking() {
        let samples: Vec<(i64, f64)> = (0..50)
            .map(|i| (i * 1000 + i * i, i as f64 * 1.5))
            .collect();
        let chunk = roundtrip(&samples);
        for cut in 0..chunk.bytes().len() {
            let got: Vec<(i64, f64)> = Chunk::decode(&chunk.bytes()[..cut], 50).collect();
            assert!(got.len() < 50);
            for (g, w) in got.iter().zip(&samples) {
                assert_eq!(g.0, w.0);
            }
        }
    }

    proptest! {
        /// Any increasing times and any values come back bit for bit.
        #[test]
        fn any_samples_round_trip(
            start in any::<i64>(),
            steps in prop::collection::vec(
                prop_oneof![Just(15_000i64), Just(15_001), 1i64..100_000, 1i64..i64::MAX / 256],
                0..200,
            ),
            values in prop::collection::vec(
                prop_oneof![
                    any::<f64>(),
                    (0u32..1000).prop_map(f64::from),
                    Just(0.0),
                    Just(-0.0),
                    (-(1i64 << 53) + 1..(1i64 << 53)).prop_map(|i| i as f64),
                    Just(9_007_199_254_740_992.0),
                    Just(-9_007_199_254_740_991.0),
                ],
                200,
            ),
        ) {
            let mut samples = Vec::new();
            let mut time = start;
            for (i, step) in std::iter::once(0).chain(steps).enumerate() {
                let Some(next) = time.checked_add(step) else { break };
                time = next;
                samples.push((time, values[i % values.len()]));
            }
            roundtrip(&samples);
        }

        /// Garbage never panics the reader.
        #[test]
        fn garbage_decodes_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..200), count in 0u32..300) {
            let _ = Chunk::decode(&bytes, count).count();
        }
    }
}
