//! One rawtcp frame of a timed metric with already-encoded metadata, written by hand.
//!
//! The coordinator sends every remote-write sample as a `MetricWithMetadatas` of type
//! `TIMED_METRIC_WITH_METADATAS`: a `TimedMetric` (type, ID, time, value) and the series'
//! `StagedMetadatas`. The metadata is the same for every sample of a series (it comes from the
//! rules, computed once per series), so it is encoded once and spliced in; the frame is written
//! straight into the instance's batch buffer without building a message or allocating. The
//! bytes equal prost's encoding of the same message (checked by a property test).
//!
//! [`read_timed_metric_message`] is the other direction, for the aggregator: it borrows the
//! metric's fields and the metadata bytes from a received message without decoding the
//! metadata (the receiver decodes it once per distinct value). It takes only messages whose
//! meaning is unambiguous — each field once, no field it does not know — and answers `None`
//! for everything else, which the caller then decodes the general way.

use bytes::{BufMut, BytesMut};

/// `MetricWithMetadatas.Type.TIMED_METRIC_WITH_METADATAS`.
const TIMED_METRIC_WITH_METADATAS: u8 = 6;

/// Appends a rawtcp frame carrying a `MetricWithMetadatas` of type
/// `TIMED_METRIC_WITH_METADATAS`: a timed metric of `metric_type` (`MetricType` enum value)
/// with `id`, `time_nanos`, `value`, and the encoded `StagedMetadatas` bytes.
pub fn put_timed_metric_frame(
    metric_type: u8,
    id: &[u8],
    time_nanos: i64,
    value: f64,
    encoded_metadatas: &[u8],
    out: &mut BytesMut,
) {
    // TimedMetric { type = 1, id = 2, time_nanos = 3, value = 4 }
    let mut timed_len = if metric_type != 0 { 2 } else { 0 };
    if !id.is_empty() {
        timed_len += 1 + varint_len(id.len() as u64) + id.len();
    }
    if time_nanos != 0 {
        timed_len += 1 + varint_len(time_nanos as u64);
    }
    if value != 0.0 {
        timed_len += 1 + 8;
    }
    // TimedMetricWithMetadatas { metric = 1, metadatas = 2 }
    let body_len = 1
        + varint_len(timed_len as u64)
        + timed_len
        + 1
        + varint_len(encoded_metadatas.len() as u64)
        + encoded_metadatas.len();
    // MetricWithMetadatas { type = 1, timed_metric_with_metadatas = 7 }
    let message_len = 2 + 1 + varint_len(body_len as u64) + body_len;

    // The small fields around the ID and the metadata are assembled on the stack and each run
    // appended with one copy: written byte by byte into `out`, every byte checked its capacity
    // and stored its length (this function took 18% of the coordinator's CPU under relay load,
    // most of it in those loops; docs/benchmarks.md).
    let mut head = FieldBytes::<HEAD_MAX>::new();
    head.varint(zigzag(message_len as i64));
    head.byte(0x08);
    head.byte(TIMED_METRIC_WITH_METADATAS);
    head.byte((7 << 3) | 2);
    head.varint(body_len as u64);
    head.byte((1 << 3) | 2);
    head.varint(timed_len as u64);
    if metric_type != 0 {
        head.byte(0x08);
        head.byte(metric_type);
    }
    if !id.is_empty() {
        head.byte((2 << 3) | 2);
        head.varint(id.len() as u64);
    }
    let mut middle = FieldBytes::<MIDDLE_MAX>::new();
    if time_nanos != 0 {
        middle.byte(3 << 3);
        middle.varint(time_nanos as u64);
    }
    if value != 0.0 {
        middle.byte((4 << 3) | 1);
        middle.f64_le(value);
    }
    middle.byte((2 << 3) | 2);
    middle.varint(encoded_metadatas.len() as u64);

    out.reserve(head.len + id.len() + middle.len + encoded_metadatas.len());
    out.put_slice(head.as_slice());
    out.put_slice(id);
    out.put_slice(middle.as_slice());
    out.put_slice(encoded_metadatas);
}

/// The most bytes of a frame before its ID: four tags, the message type, the metric type's tag
/// and value, and four varints of at most ten bytes.
const HEAD_MAX: usize = 4 + 1 + 2 + 4 * 10;
/// The most bytes between the ID and the metadata: the time (tag and varint), the value (tag
/// and eight bytes), and the metadata's tag and length.
const MIDDLE_MAX: usize = (1 + 10) + (1 + 8) + (1 + 10);

/// Up to `N` bytes of protobuf fields on the stack. The callers write at most `N` bytes
/// whatever the values (the bounds above count every field at its longest), so the indexing
/// cannot go past the end.
struct FieldBytes<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> FieldBytes<N> {
    fn new() -> Self {
        FieldBytes {
            bytes: [0; N],
            len: 0,
        }
    }

    fn byte(&mut self, byte: u8) {
        self.bytes[self.len] = byte;
        self.len += 1;
    }

    fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.byte((value as u8) | 0x80);
            value >>= 7;
        }
        self.byte(value as u8);
    }

    fn f64_le(&mut self, value: f64) {
        self.bytes[self.len..self.len + 8].copy_from_slice(&value.to_le_bytes());
        self.len += 8;
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The parts of a `MetricWithMetadatas` of type `TIMED_METRIC_WITH_METADATAS`, borrowed from
/// the message bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TimedMetricMessage<'a> {
    /// `TimedMetric.type` (`MetricType` enum value).
    pub metric_type: i32,
    /// `TimedMetric.id`.
    pub id: &'a [u8],
    /// `TimedMetric.time_nanos`.
    pub time_nanos: i64,
    /// `TimedMetric.value`.
    pub value: f64,
    /// The encoded `StagedMetadatas`, when present.
    pub metadatas: Option<&'a [u8]>,
}

/// Reads `message` (one frame's payload) as a timed metric with staged metadatas, when it is
/// one in the plain form: the outer `type` is 6, its metric is present, and every field of the
/// three messages involved appears at most once and is one this reader knows. `None` for any
/// other message, well-formed or not: decode those with prost, which gives the same result for
/// the messages this reader takes.
pub fn read_timed_metric_message(message: &[u8]) -> Option<TimedMetricMessage<'_>> {
    read_as_written(message).or_else(|| read_any_order(message))
}

/// The layout [`put_timed_metric_frame`] writes, read byte by byte without a field loop: the
/// outer type as the bytes `08 06`, then field 7 holding field 1 (the metric, its fields in
/// number order, each optional) and optionally field 2 (the metadatas), every length ending
/// exactly where its message does. `None` for anything else, which [`read_any_order`] reads;
/// every message taken here reads the same there (a property test checks it).
fn read_as_written(message: &[u8]) -> Option<TimedMetricMessage<'_>> {
    let mut outer =
        Cursor::new(message.strip_prefix(&[0x08, TIMED_METRIC_WITH_METADATAS, 0x3a])?);
    let body = outer.length_delimited()?;
    if !outer.is_done() {
        return None;
    }
    let mut body = Cursor::new(body);
    let mut metric = Cursor::new(body.optional_field(0x0a)??);
    let metadatas = body.optional_field(0x12)?;
    if !body.is_done() {
        return None;
    }
    let mut read = TimedMetricMessage {
        metadatas,
        ..TimedMetricMessage::default()
    };
    if metric.take_key(0x08) {
        read.metric_type = metric.varint()? as i32;
    }
    if let Some(id) = metric.optional_field(0x12)? {
        read.id = id;
    }
    if metric.take_key(0x18) {
        read.time_nanos = metric.varint()? as i64;
    }
    if metric.take_key(0x21) {
        read.value = f64::from_bits(metric.fixed64()?);
    }
    metric.is_done().then_some(read)
}

/// A position in one message's bytes, for [`read_as_written`].
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Cursor<'a> {
        Cursor { rest: bytes }
    }

    fn is_done(&self) -> bool {
        self.rest.is_empty()
    }

    /// Steps over `key` (a one-byte field key) when it comes next.
    fn take_key(&mut self, key: u8) -> bool {
        match self.rest.split_first() {
            Some((&first, rest)) if first == key => {
                self.rest = rest;
                true
            }
            _ => false,
        }
    }

    fn varint(&mut self) -> Option<u64> {
        let (value, len) = read_varint(self.rest)?;
        self.rest = &self.rest[len..];
        Some(value)
    }

    fn fixed64(&mut self) -> Option<u64> {
        let (bytes, rest) = self.rest.split_first_chunk::<8>()?;
        self.rest = rest;
        Some(u64::from_le_bytes(*bytes))
    }

    /// A varint length, then that many bytes.
    fn length_delimited(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.varint()?).ok()?;
        if len > self.rest.len() {
            return None;
        }
        let (bytes, rest) = self.rest.split_at(len);
        self.rest = rest;
        Some(bytes)
    }

    /// The bytes of the length-delimited field with one-byte `key`: `Some(None)` when another
    /// field (or the end) comes next, `None` when the field is cut short.
    fn optional_field(&mut self, key: u8) -> Option<Option<&'a [u8]>> {
        if !self.take_key(key) {
            return Some(None);
        }
        self.length_delimited().map(Some)
    }
}

/// The varint at the front of `bytes` and its length (at most ten bytes; bits past the 64th
/// are dropped, as the general decoders do). Up to eight bytes are read as one word.
fn read_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    if let Some(&first) = bytes.first()
        && first < 0x80
    {
        return Some((u64::from(first), 1));
    }
    let Some(word) = bytes.first_chunk::<8>() else {
        return read_varint_bytewise(bytes);
    };
    let word = u64::from_le_bytes(*word);
    // The high bit of each byte is clear on the last byte of the varint.
    let ends = !word & 0x8080_8080_8080_8080;
    if ends == 0 {
        // Nine bytes or more: a timestamp in nanoseconds takes nine.
        return match bytes.get(8) {
            Some(&ninth) if ninth < 0x80 => {
                Some((squeeze_groups(word) | (u64::from(ninth) << 56), 9))
            }
            _ => read_varint_bytewise(bytes),
        };
    }
    let len = (ends.trailing_zeros() / 8 + 1) as usize;
    let kept = if len == 8 {
        word
    } else {
        word & ((1u64 << (8 * len)) - 1)
    };
    Some((squeeze_groups(kept), len))
}

/// The low seven bits of each byte of `word`, packed together (56 bits): pairs, then fours,
/// then all eight.
fn squeeze_groups(word: u64) -> u64 {
    let mut x = word & 0x7f7f_7f7f_7f7f_7f7f;
    x = ((x & 0x7f00_7f00_7f00_7f00) >> 1) | (x & 0x007f_007f_007f_007f);
    x = ((x & 0x3fff_0000_3fff_0000) >> 2) | (x & 0x0000_3fff_0000_3fff);
    ((x & 0x0fff_ffff_0000_0000) >> 4) | (x & 0x0000_0000_0fff_ffff)
}

/// [`read_varint`] one byte at a time: short buffers and varints of nine or ten bytes.
fn read_varint_bytewise(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Any message [`read_timed_metric_message`] takes, its fields in any order.
fn read_any_order(message: &[u8]) -> Option<TimedMetricMessage<'_>> {
    let mut message_type = None;
    let mut body = None;
    for field in Fields::new(message) {
        match field? {
            (1, Value::Varint(v)) if message_type.is_none() => message_type = Some(v as i32),
            (7, Value::Bytes(b)) if body.is_none() => body = Some(b),
            _ => return None,
        }
    }
    if message_type != Some(i32::from(TIMED_METRIC_WITH_METADATAS)) {
        return None;
    }
    let mut metric = None;
    let mut metadatas = None;
    for field in Fields::new(body?) {
        match field? {
            (1, Value::Bytes(b)) if metric.is_none() => metric = Some(b),
            (2, Value::Bytes(b)) if metadatas.is_none() => metadatas = Some(b),
            _ => return None,
        }
    }
    let mut read = TimedMetricMessage {
        metadatas,
        ..TimedMetricMessage::default()
    };
    let mut seen = [false; 5];
    for field in Fields::new(metric?) {
        let (number, value) = field?;
        let slot = seen.get_mut(number as usize)?;
        if *slot {
            return None;
        }
        *slot = true;
        match (number, value) {
            (1, Value::Varint(v)) => read.metric_type = v as i32,
            (2, Value::Bytes(b)) => read.id = b,
            (3, Value::Varint(v)) => read.time_nanos = v as i64,
            (4, Value::Fixed64(v)) => read.value = f64::from_bits(v),
            _ => return None,
        }
    }
    Some(read)
}

/// A field's value, by wire type (groups and 32-bit fields are not read).
enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
}

/// The fields of one protobuf message: `Some(None)` at the first field it cannot read.
struct Fields<'a> {
    cursor: Cursor<'a>,
}

impl<'a> Fields<'a> {
    fn new(message: &'a [u8]) -> Fields<'a> {
        Fields {
            cursor: Cursor::new(message),
        }
    }

    fn field(&mut self) -> Option<(u32, Value<'a>)> {
        let key = self.cursor.varint()?;
        let number = u32::try_from(key >> 3).ok()?;
        let value = match key & 7 {
            0 => Value::Varint(self.cursor.varint()?),
            1 => Value::Fixed64(self.cursor.fixed64()?),
            2 => Value::Bytes(self.cursor.length_delimited()?),
            _ => return None,
        };
        (number != 0).then_some((number, value))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Option<(u32, Value<'a>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.cursor.is_done() {
            return None;
        }
        let field = self.field();
        if field.is_none() {
            // Stop after the first unreadable field.
            self.cursor = Cursor::new(&[]);
        }
        Some(field)
    }
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn varint_len(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::next_rawtcp_frame;
    use crate::metricpb::{
        MetricWithMetadatas, StagedMetadata, StagedMetadatas, TimedMetric,
        TimedMetricWithMetadatas, metric_with_metadatas,
    };
    use proptest::prelude::*;
    use prost::Message;

    /// A read message's fields, its value as bits (NaN equals itself).
    fn fields(m: TimedMetricMessage<'_>) -> (i32, &[u8], i64, u64, Option<&[u8]>) {
        (
            m.metric_type,
            m.id,
            m.time_nanos,
            m.value.to_bits(),
            m.metadatas,
        )
    }

    proptest! {
        #[test]
        fn hand_encoding_equals_prost(
            metric_type in 0u8..4,
            id in proptest::collection::vec(any::<u8>(), 0..300),
            t in any::<i64>(),
            v in any::<f64>(),
            cutover in any::<i64>(),
        ) {
            let metadatas = StagedMetadatas {
                metadatas: vec![StagedMetadata { cutover_nanos: cutover, ..Default::default() }],
            }
            .encode_to_vec();
            let mut out = BytesMut::new();
            put_timed_metric_frame(metric_type, &id, t, v, &metadatas, &mut out);
            let payload = next_rawtcp_frame(&mut out, 1 << 20).unwrap().unwrap();
            prop_assert!(out.is_empty());
            let want = MetricWithMetadatas {
                r#type: metric_with_metadatas::Type::TimedMetricWithMetadatas as i32,
                timed_metric_with_metadatas: Some(TimedMetricWithMetadatas {
                    metric: Some(TimedMetric {
                        r#type: i32::from(metric_type),
                        id: id.clone().into(),
                        time_nanos: t,
                        value: v,
                        annotation: Default::default(),
                    }),
                    metadatas: Some(StagedMetadatas::decode(metadatas.as_slice()).unwrap()),
                }),
                ..Default::default()
            };
            let want = want.encode_to_vec();
            prop_assert_eq!(payload.as_ref(), want.as_slice());

            // And back: the borrowed reader sees what was written.
            let read = read_timed_metric_message(&payload).expect("the plain form is read");
            prop_assert_eq!(read.metric_type, i32::from(metric_type));
            prop_assert_eq!(read.id, id.as_slice());
            prop_assert_eq!(read.time_nanos, t);
            // -0.0 is not written (as prost does not), so it reads back as 0.0.
            let written = if v == 0.0 { 0.0f64 } else { v };
            prop_assert_eq!(read.value.to_bits(), written.to_bits());
            prop_assert_eq!(read.metadatas, Some(metadatas.as_slice()));
        }

        /// The word-at-a-time varint reads what the byte loop reads, on any bytes.
        #[test]
        fn varint_by_word_equals_bytewise(
            bytes in proptest::collection::vec(any::<u8>(), 0..12),
            value in any::<u64>(),
        ) {
            prop_assert_eq!(read_varint(&bytes), read_varint_bytewise(&bytes));
            let mut encoded = FieldBytes::<10>::new();
            encoded.varint(value);
            prop_assert_eq!(read_varint(encoded.as_slice()), Some((value, encoded.len)));
        }

        /// Whatever the written-layout reader takes, the any-order reader reads the same,
        /// on written frames, on them cut or with a byte changed, and on any bytes.
        #[test]
        fn the_written_layout_reads_as_any_order(
            metric_type in 0u8..4,
            id in proptest::collection::vec(any::<u8>(), 0..200),
            t in any::<i64>(),
            v in any::<f64>(),
            metadatas in proptest::collection::vec(any::<u8>(), 0..20),
            cut in any::<proptest::sample::Index>(),
            flip in any::<proptest::sample::Index>(),
            flipped in any::<u8>(),
            noise in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut out = BytesMut::new();
            put_timed_metric_frame(metric_type, &id, t, v, &metadatas, &mut out);
            let payload = next_rawtcp_frame(&mut out, 1 << 20).unwrap().unwrap();
            let written = read_as_written(&payload);
            prop_assert!(written.is_some(), "a written frame is read by the fast path");
            prop_assert_eq!(written.map(fields), read_any_order(&payload).map(fields));
            let mut changed = payload.to_vec();
            let at = flip.index(changed.len());
            changed[at] = flipped;
            let truncated = &payload[..cut.index(payload.len())];
            for input in [&changed[..], truncated, &noise[..]] {
                if let Some(read) = read_as_written(input) {
                    prop_assert_eq!(Some(fields(read)), read_any_order(input).map(fields));
                }
            }
        }

        /// On any bytes, and on any message prost builds, the reader either declines or agrees
        /// with prost's decoding.
        #[test]
        fn the_reader_declines_or_agrees_with_prost(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            metric_type in any::<i32>(),
            outer_type in prop_oneof![Just(6i32), any::<i32>()],
            id in proptest::collection::vec(any::<u8>(), 0..40),
            t in any::<i64>(),
            v in any::<f64>(),
            with_metric in any::<bool>(),
            with_metadatas in any::<bool>(),
            with_gauge in any::<bool>(),
            annotation in proptest::collection::vec(any::<u8>(), 0..3),
        ) {
            let built = MetricWithMetadatas {
                r#type: outer_type,
                timed_metric_with_metadatas: Some(TimedMetricWithMetadatas {
                    metric: with_metric.then(|| TimedMetric {
                        r#type: metric_type,
                        id: id.clone().into(),
                        time_nanos: t,
                        value: v,
                        annotation: annotation.into(),
                    }),
                    metadatas: with_metadatas.then(|| StagedMetadatas {
                        metadatas: vec![StagedMetadata { cutover_nanos: t, ..Default::default() }],
                    }),
                }),
                gauge_with_metadatas: with_gauge.then(Default::default),
                ..Default::default()
            }
            .encode_to_vec();
            // Arbitrary bytes, the built message, and the built message with bytes appended.
            let mut appended = built.clone();
            appended.extend_from_slice(&bytes);
            for input in [&bytes, &built, &appended] {
                let Some(read) = read_timed_metric_message(input) else { continue };
                let decoded = MetricWithMetadatas::decode(input.as_slice());
                prop_assert!(decoded.is_ok(), "read bytes prost refuses: {input:?}");
                let decoded = decoded.unwrap();
                prop_assert_eq!(decoded.r#type, 6);
                let inner = decoded.timed_metric_with_metadatas.unwrap();
                let metric = inner.metric.unwrap();
                prop_assert_eq!(read.metric_type, metric.r#type);
                prop_assert_eq!(read.id, metric.id.as_ref());
                prop_assert_eq!(read.time_nanos, metric.time_nanos);
                prop_assert_eq!(read.value.to_bits(), metric.value.to_bits());
                prop_assert!(metric.annotation.is_empty());
                let metadatas = read.metadatas.map(|m| StagedMetadatas::decode(m).unwrap());
                prop_assert_eq!(metadatas, inner.metadatas);
            }
        }
    }
}
