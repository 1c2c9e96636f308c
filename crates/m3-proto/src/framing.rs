//! The two framings M3 uses on TCP, with size limits.
//!
//! * **rawtcp** (coordinator → aggregator, aggregator → aggregator): each frame is the message
//!   length as a *signed* varint (zig-zag, like Go's `binary.PutVarint`) followed by the
//!   protobuf bytes of a `MetricWithMetadatas`. There are no acks.
//! * **m3msg** (aggregator → coordinator and back for acks): each frame is the message length as a
//!   4-byte big-endian integer followed by the protobuf bytes of a `Message` or an `Ack`.
//!
//! Decoding works on a growable buffer the caller fills from the socket: `next_*_frame` returns
//! `Ok(None)` when the buffer does not yet hold a whole frame, so the caller reads more and tries
//! again. A length prefix above the configured maximum, zero or negative is an error, and the
//! caller should close the connection: after a bad prefix the stream position cannot be trusted.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

/// Default maximum rawtcp message size (M3's `protobufIterator.maxMessageSize`: 50 MiB).
pub const DEFAULT_RAWTCP_MAX_MESSAGE_SIZE: usize = 50 * 1024 * 1024;
/// Default maximum m3msg message size (M3's decoder default: 4 MiB).
pub const DEFAULT_M3MSG_MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// The longest varint a rawtcp length prefix may use (`MaxVarintLen64`).
const MAX_VARINT_LEN: usize = 10;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The message is larger than the configured maximum.
    #[error("message size {size} is larger than maximum supported size {max}")]
    TooLarge {
        /// Size announced by the prefix (or of the message being encoded).
        size: u64,
        /// The configured maximum.
        max: usize,
    },
    /// The length prefix is zero or negative.
    #[error("invalid message size {0}: must be positive")]
    NonPositiveSize(i64),
    /// The varint length prefix runs past ten bytes.
    #[error("malformed varint length prefix")]
    MalformedVarint,
    /// The protobuf payload did not decode.
    #[error("decoding protobuf payload: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// Appends one rawtcp frame holding `msg` to `buf`.
///
/// # Errors
/// [`FrameError::TooLarge`] when the encoded message is larger than `max_size`; `buf` is left as
/// it was.
pub fn put_rawtcp_frame<M: Message>(
    msg: &M,
    buf: &mut BytesMut,
    max_size: usize,
) -> Result<(), FrameError> {
    let len = msg.encoded_len();
    if len > max_size {
        return Err(FrameError::TooLarge {
            size: len as u64,
            max: max_size,
        });
    }
    put_zigzag_varint(len as i64, buf);
    buf.reserve(len);
    // Encoding into a BytesMut with enough capacity reserved cannot fail.
    msg.encode_raw(buf);
    Ok(())
}

/// The place of a rawtcp frame at the front of a buffer, read from its length prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawtcpFrame {
    /// Bytes of the length prefix.
    pub prefix_len: usize,
    /// Bytes of the message after it.
    pub size: usize,
}

impl RawtcpFrame {
    /// Where the frame ends: prefix and message.
    pub fn end(&self) -> usize {
        self.prefix_len + self.size
    }
}

/// Reads the length prefix of the rawtcp frame at the front of `buf`, without taking anything:
/// `Ok(None)` when the prefix itself is not whole yet. The message may not be whole either:
/// compare [`RawtcpFrame::end`] with the bytes at hand.
///
/// # Errors
/// A prefix that is malformed, not positive, or larger than `max_size`.
pub fn rawtcp_frame_at(buf: &[u8], max_size: usize) -> Result<Option<RawtcpFrame>, FrameError> {
    let Some((size, prefix_len)) = read_zigzag_varint(buf)? else {
        return Ok(None);
    };
    if size <= 0 {
        return Err(FrameError::NonPositiveSize(size));
    }
    if size as u64 > max_size as u64 {
        return Err(FrameError::TooLarge {
            size: size as u64,
            max: max_size,
        });
    }
    Ok(Some(RawtcpFrame {
        prefix_len,
        size: size as usize,
    }))
}

/// Takes the next whole rawtcp frame's payload from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of a frame; nothing is consumed then.
///
/// # Errors
/// A prefix that is malformed, not positive, or larger than `max_size`.
pub fn next_rawtcp_frame(buf: &mut BytesMut, max_size: usize) -> Result<Option<Bytes>, FrameError> {
    let Some(frame) = rawtcp_frame_at(buf, max_size)? else {
        return Ok(None);
    };
    if buf.len() < frame.end() {
        buf.reserve(frame.end() - buf.len());
        return Ok(None);
    }
    buf.advance(frame.prefix_len);
    Ok(Some(buf.split_to(frame.size).freeze()))
}

/// Appends one m3msg frame holding `msg` to `buf`.
///
/// # Errors
/// [`FrameError::TooLarge`] when the encoded message is larger than `max_size`.
pub fn put_m3msg_frame<M: Message>(
    msg: &M,
    buf: &mut BytesMut,
    max_size: usize,
) -> Result<(), FrameError> {
    let len = msg.encoded_len();
    if len > max_size || len > u32::MAX as usize {
        return Err(FrameError::TooLarge {
            size: len as u64,
            max: max_size,
        });
    }
    buf.reserve(4 + len);
    buf.put_u32(len as u32);
    msg.encode_raw(buf);
    Ok(())
}

/// Takes the next whole m3msg frame's payload from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of a frame; nothing is consumed then. A zero
/// length is a valid (empty) message in m3msg.
///
/// # Errors
/// [`FrameError::TooLarge`] when the prefix announces more than `max_size` bytes.
pub fn next_m3msg_frame(buf: &mut BytesMut, max_size: usize) -> Result<Option<Bytes>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let size = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if size > max_size {
        return Err(FrameError::TooLarge {
            size: size as u64,
            max: max_size,
        });
    }
    if buf.len() < 4 + size {
        buf.reserve(4 + size - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(size).freeze()))
}

/// Appends `value` as a zig-zag varint: a rawtcp length prefix (also any other, for tests of
/// bad prefixes).
pub fn put_zigzag_varint(value: i64, buf: &mut BytesMut) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        buf.put_u8((zigzag as u8) | 0x80);
        zigzag >>= 7;
    }
    buf.put_u8(zigzag as u8);
}

/// Reads a zig-zag varint from the front of `buf` without consuming it; returns the value and
/// the number of bytes it used, or `None` if the buffer ends inside the varint.
fn read_zigzag_varint(buf: &[u8]) -> Result<Option<(i64, usize)>, FrameError> {
    let mut value: u64 = 0;
    for (i, &byte) in buf.iter().enumerate().take(MAX_VARINT_LEN) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            let decoded = ((value >> 1) as i64) ^ -((value & 1) as i64);
            return Ok(Some((decoded, i + 1)));
        }
    }
    if buf.len() >= MAX_VARINT_LEN {
        return Err(FrameError::MalformedVarint);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msgpb;
    use proptest::prelude::*;

    fn msg(id: u64, value: Vec<u8>) -> msgpb::Message {
        msgpb::Message {
            metadata: Some(msgpb::Metadata {
                shard: 3,
                id,
                sent_at_nanos: 7,
            }),
            value: value.into(),
        }
    }

    #[test]
    fn zigzag_matches_go_put_varint() {
        // Go: binary.PutVarint(buf, 1) == [0x02]; 64 → [0x80 0x01]; 300 → [0xd8 0x04].
        for (value, want) in [
            (1i64, vec![0x02u8]),
            (64, vec![0x80, 0x01]),
            (300, vec![0xd8, 0x04]),
            (-1, vec![0x01]),
        ] {
            let mut buf = BytesMut::new();
            put_zigzag_varint(value, &mut buf);
            assert_eq!(buf.as_ref(), want.as_slice(), "value {value}");
            assert_eq!(read_zigzag_varint(&buf), Ok(Some((value, want.len()))));
        }
    }

    #[test]
    fn rawtcp_partial_frames_wait_for_more_bytes() {
        let mut full = BytesMut::new();
        put_rawtcp_frame(&msg(1, vec![9; 300]), &mut full, 1024).unwrap();
        let mut buf = BytesMut::new();
        for (i, byte) in full.iter().enumerate() {
            buf.put_u8(*byte);
            let got = next_rawtcp_frame(&mut buf, 1024).unwrap();
            assert_eq!(got.is_some(), i + 1 == full.len());
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn rawtcp_rejects_bad_prefixes() {
        let mut buf = BytesMut::new();
        put_zigzag_varint(-5, &mut buf);
        assert_eq!(
            next_rawtcp_frame(&mut buf, 1024),
            Err(FrameError::NonPositiveSize(-5))
        );
        let mut buf = BytesMut::new();
        put_zigzag_varint(0, &mut buf);
        assert_eq!(
            next_rawtcp_frame(&mut buf, 1024),
            Err(FrameError::NonPositiveSize(0))
        );
        let mut buf = BytesMut::new();
        put_zigzag_varint(2048, &mut buf);
        assert_eq!(
            next_rawtcp_frame(&mut buf, 1024),
            Err(FrameError::TooLarge {
                size: 2048,
                max: 1024
            })
        );
        let mut buf = BytesMut::from(&[0xffu8; 12][..]);
        assert_eq!(
            next_rawtcp_frame(&mut buf, 1024),
            Err(FrameError::MalformedVarint)
        );
    }

    #[test]
    fn encoders_refuse_oversized_messages() {
        let mut buf = BytesMut::new();
        let big = msg(1, vec![0; 100]);
        assert!(matches!(
            put_rawtcp_frame(&big, &mut buf, 10),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            put_m3msg_frame(&big, &mut buf, 10),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(buf.is_empty());
    }

    #[test]
    fn m3msg_rejects_oversized_prefix() {
        let mut buf = BytesMut::new();
        buf.put_u32(4_194_305);
        assert_eq!(
            next_m3msg_frame(&mut buf, DEFAULT_M3MSG_MAX_MESSAGE_SIZE),
            Err(FrameError::TooLarge {
                size: 4_194_305,
                max: DEFAULT_M3MSG_MAX_MESSAGE_SIZE
            })
        );
    }

    proptest! {
        #[test]
        fn rawtcp_round_trip(ids in proptest::collection::vec((any::<u64>(), proptest::collection::vec(any::<u8>(), 0..200)), 1..20)) {
            let mut buf = BytesMut::new();
            for (id, value) in &ids {
                put_rawtcp_frame(&msg(*id, value.clone()), &mut buf, 4096).unwrap();
            }
            for (id, value) in &ids {
                let payload = next_rawtcp_frame(&mut buf, 4096).unwrap().unwrap();
                let got = msgpb::Message::decode(payload).unwrap();
                prop_assert_eq!(got, msg(*id, value.clone()));
            }
            prop_assert!(next_rawtcp_frame(&mut buf, 4096).unwrap().is_none());
        }

        #[test]
        fn m3msg_round_trip(ids in proptest::collection::vec((any::<u64>(), proptest::collection::vec(any::<u8>(), 0..200)), 1..20)) {
            let mut buf = BytesMut::new();
            for (id, value) in &ids {
                put_m3msg_frame(&msg(*id, value.clone()), &mut buf, 4096).unwrap();
            }
            for (id, value) in &ids {
                let payload = next_m3msg_frame(&mut buf, 4096).unwrap().unwrap();
                let got = msgpb::Message::decode(payload).unwrap();
                prop_assert_eq!(got, msg(*id, value.clone()));
            }
            prop_assert!(next_m3msg_frame(&mut buf, 4096).unwrap().is_none());
        }

        #[test]
        fn rawtcp_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut buf = BytesMut::from(bytes.as_slice());
            let _ = next_rawtcp_frame(&mut buf, 32);
        }
    }
}
