//! Prometheus remote write v1 decoding: snappy block + `prometheus.WriteRequest`, without
//! allocating per sample.
//!
//! A generic protobuf decoder builds a `String` for every label name and value, which costs
//! more than everything else the write path does. This decoder instead records where each label
//! and sample sits in the decompressed body and hands out borrowed slices. A
//! [`RemoteWriteDecoder`] keeps its buffers between requests, so a warm decoder allocates
//! nothing at all. `benches/remote_write.rs` measures it against the prost-generated decoder.
//!
//! Validation follows the remote-write spec: label names sorted and unique, no empty names or
//! values, names matching the Prometheus character sets, valid UTF-8. A series that breaks a rule
//! is reported in [`DecodedRequest::invalid`] with the reason; the other series stay usable, so
//! the caller can keep the good ones and still answer 400.

use std::fmt;
use std::ops::Range;

/// The largest decompressed body accepted (Prometheus's own receiver uses 32 MiB too).
pub const DEFAULT_MAX_DECOMPRESSED_SIZE: usize = 32 * 1024 * 1024;

/// Why a request body could not be decoded at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The body is not a snappy block.
    #[error("body is not snappy-compressed (block format): {0}")]
    Snappy(String),
    /// The decompressed body would be larger than the limit.
    #[error("decompressed body of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced decompressed size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The body is not a valid `WriteRequest`.
    #[error("body is not a valid prometheus.WriteRequest protobuf: {0}")]
    Protobuf(&'static str),
}

/// Why one series was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidSeries {
    /// Two labels with the same name.
    DuplicateLabel,
    /// Labels not sorted by name.
    UnsortedLabels,
    /// A label with an empty name.
    EmptyLabelName,
    /// A label with an empty value.
    EmptyLabelValue,
    /// A label name outside `[a-zA-Z_][a-zA-Z0-9_]*`.
    InvalidLabelName,
    /// A metric name outside `[a-zA-Z_:][a-zA-Z0-9_:]*`.
    InvalidMetricName,
    /// A name or value that is not UTF-8.
    InvalidUtf8,
    /// A series with no labels at all.
    NoLabels,
}

impl fmt::Display for InvalidSeries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InvalidSeries::DuplicateLabel => "duplicate label name",
            InvalidSeries::UnsortedLabels => "labels are not sorted by name",
            InvalidSeries::EmptyLabelName => "empty label name",
            InvalidSeries::EmptyLabelValue => "empty label value",
            InvalidSeries::InvalidLabelName => "label name does not match [a-zA-Z_][a-zA-Z0-9_]*",
            InvalidSeries::InvalidMetricName => {
                "metric name does not match [a-zA-Z_:][a-zA-Z0-9_:]*"
            }
            InvalidSeries::InvalidUtf8 => "label name or value is not valid UTF-8",
            InvalidSeries::NoLabels => "series has no labels",
        })
    }
}

/// One label as byte ranges into the decompressed body.
#[derive(Debug, Clone, Copy)]
struct LabelPos {
    name: (u32, u32),
    value: (u32, u32),
}

/// One series: ranges into the label and sample arrays.
#[derive(Debug, Clone)]
struct SeriesPos {
    labels: Range<u32>,
    samples: Range<u32>,
}

/// A sample of a series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// The value.
    pub value: f64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

/// A decoder that reuses its buffers across requests.
#[derive(Debug)]
pub struct RemoteWriteDecoder {
    body: Vec<u8>,
    labels: Vec<LabelPos>,
    samples: Vec<Sample>,
    series: Vec<SeriesPos>,
    invalid: Vec<(usize, InvalidSeries)>,
    max_decompressed_size: usize,
}

/// A decoded request borrowed from its decoder.
#[derive(Debug)]
pub struct DecodedRequest<'a> {
    decoder: &'a RemoteWriteDecoder,
}

/// A series of a decoded request.
#[derive(Debug, Clone, Copy)]
pub struct SeriesRef<'a> {
    decoder: &'a RemoteWriteDecoder,
    index: usize,
}

impl RemoteWriteDecoder {
    /// A decoder with the default decompressed-size limit.
    pub fn new() -> RemoteWriteDecoder {
        RemoteWriteDecoder::with_max_size(DEFAULT_MAX_DECOMPRESSED_SIZE)
    }

    /// A decoder refusing bodies that decompress to more than `max_decompressed_size` bytes.
    pub fn with_max_size(max_decompressed_size: usize) -> RemoteWriteDecoder {
        RemoteWriteDecoder {
            body: Vec::new(),
            labels: Vec::new(),
            samples: Vec::new(),
            series: Vec::new(),
            invalid: Vec::new(),
            max_decompressed_size,
        }
    }

    /// Decompresses and decodes a snappy-compressed `WriteRequest`.
    ///
    /// # Errors
    /// When the body is not snappy, too large, or not a `WriteRequest`. Series-level problems
    /// are not errors; see [`DecodedRequest::invalid`].
    pub fn decode_snappy(&mut self, body: &[u8]) -> Result<DecodedRequest<'_>, DecodeError> {
        let size =
            snap::raw::decompress_len(body).map_err(|e| DecodeError::Snappy(e.to_string()))?;
        if size > self.max_decompressed_size {
            return Err(DecodeError::TooLarge {
                size,
                max: self.max_decompressed_size,
            });
        }
        self.body.resize(size, 0);
        let written = snap::raw::Decoder::new()
            .decompress(body, &mut self.body)
            .map_err(|e| DecodeError::Snappy(e.to_string()))?;
        self.body.truncate(written);
        self.parse()
    }

    /// Decodes an uncompressed `WriteRequest`.
    ///
    /// # Errors
    /// When the bytes are not a `WriteRequest`.
    pub fn decode(&mut self, proto: &[u8]) -> Result<DecodedRequest<'_>, DecodeError> {
        self.body.clear();
        self.body.extend_from_slice(proto);
        self.parse()
    }

    fn parse(&mut self) -> Result<DecodedRequest<'_>, DecodeError> {
        self.labels.clear();
        self.samples.clear();
        self.series.clear();
        self.invalid.clear();
        if self.body.len() > u32::MAX as usize {
            return Err(DecodeError::TooLarge {
                size: self.body.len(),
                max: u32::MAX as usize,
            });
        }
        let body = std::mem::take(&mut self.body);
        let result = self.parse_request(&body);
        self.body = body;
        result?;
        Ok(DecodedRequest { decoder: self })
    }

    fn parse_request(&mut self, body: &[u8]) -> Result<(), DecodeError> {
        let mut reader = Reader { buf: body, pos: 0 };
        while !reader.done() {
            let (field, wire) = reader.key()?;
            match (field, wire) {
                (1, WIRE_LEN) => {
                    let range = reader.len_delimited()?;
                    self.parse_series(body, range)?;
                }
                _ => reader.skip(wire)?,
            }
        }
        Ok(())
    }

    fn parse_series(&mut self, body: &[u8], range: Range<usize>) -> Result<(), DecodeError> {
        let labels_start = self.labels.len() as u32;
        let samples_start = self.samples.len() as u32;
        let mut reader = Reader {
            buf: &body[..range.end],
            pos: range.start,
        };
        while !reader.done() {
            let (field, wire) = reader.key()?;
            match (field, wire) {
                (1, WIRE_LEN) => {
                    let label = reader.len_delimited()?;
                    self.labels.push(parse_label(body, label)?);
                }
                (2, WIRE_LEN) => {
                    let sample = reader.len_delimited()?;
                    self.samples.push(parse_sample(body, sample)?);
                }
                _ => reader.skip(wire)?,
            }
        }
        let index = self.series.len();
        self.series.push(SeriesPos {
            labels: labels_start..self.labels.len() as u32,
            samples: samples_start..self.samples.len() as u32,
        });
        if let Err(reason) = validate_labels(body, &self.labels[labels_start as usize..]) {
            self.invalid.push((index, reason));
        }
        Ok(())
    }
}

fn parse_label(body: &[u8], range: Range<usize>) -> Result<LabelPos, DecodeError> {
    let mut reader = Reader {
        buf: &body[..range.end],
        pos: range.start,
    };
    let mut label = LabelPos {
        name: (0, 0),
        value: (0, 0),
    };
    while !reader.done() {
        let (field, wire) = reader.key()?;
        match (field, wire) {
            (1, WIRE_LEN) => {
                let r = reader.len_delimited()?;
                label.name = (r.start as u32, r.end as u32);
            }
            (2, WIRE_LEN) => {
                let r = reader.len_delimited()?;
                label.value = (r.start as u32, r.end as u32);
            }
            _ => reader.skip(wire)?,
        }
    }
    Ok(label)
}

fn parse_sample(body: &[u8], range: Range<usize>) -> Result<Sample, DecodeError> {
    let mut reader = Reader {
        buf: &body[..range.end],
        pos: range.start,
    };
    let mut sample = Sample {
        value: 0.0,
        timestamp_ms: 0,
    };
    while !reader.done() {
        let (field, wire) = reader.key()?;
        match (field, wire) {
            (1, WIRE_FIXED64) => sample.value = f64::from_bits(reader.fixed64()?),
            (2, WIRE_VARINT) => sample.timestamp_ms = reader.varint()? as i64,
            _ => reader.skip(wire)?,
        }
    }
    Ok(sample)
}

fn slice(body: &[u8], (start, end): (u32, u32)) -> &[u8] {
    &body[start as usize..end as usize]
}

fn validate_labels(body: &[u8], labels: &[LabelPos]) -> Result<(), InvalidSeries> {
    if labels.is_empty() {
        return Err(InvalidSeries::NoLabels);
    }
    let mut previous: Option<&[u8]> = None;
    for label in labels {
        let name = slice(body, label.name);
        let value = slice(body, label.value);
        if name.is_empty() {
            return Err(InvalidSeries::EmptyLabelName);
        }
        if value.is_empty() {
            return Err(InvalidSeries::EmptyLabelValue);
        }
        if let Some(prev) = previous {
            match prev.cmp(name) {
                std::cmp::Ordering::Equal => return Err(InvalidSeries::DuplicateLabel),
                std::cmp::Ordering::Greater => return Err(InvalidSeries::UnsortedLabels),
                std::cmp::Ordering::Less => {}
            }
        }
        previous = Some(name);
        if name == b"__name__" {
            if !valid_name(value, true) {
                return Err(InvalidSeries::InvalidMetricName);
            }
        } else if !valid_name(name, false) {
            return Err(InvalidSeries::InvalidLabelName);
        }
        if std::str::from_utf8(value).is_err() {
            return Err(InvalidSeries::InvalidUtf8);
        }
    }
    Ok(())
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, with `:` also allowed for metric names.
fn valid_name(name: &[u8], allow_colon: bool) -> bool {
    let ok = |c: u8, first: bool| {
        c.is_ascii_alphabetic()
            || c == b'_'
            || (allow_colon && c == b':')
            || (!first && c.is_ascii_digit())
    };
    match name.split_first() {
        Some((&first, rest)) => ok(first, true) && rest.iter().all(|&c| ok(c, false)),
        None => false,
    }
}

impl Default for RemoteWriteDecoder {
    fn default() -> Self {
        RemoteWriteDecoder::new()
    }
}

impl<'a> DecodedRequest<'a> {
    /// Number of series in the request, valid or not.
    pub fn len(&self) -> usize {
        self.decoder.series.len()
    }

    /// Whether the request has no series.
    pub fn is_empty(&self) -> bool {
        self.decoder.series.is_empty()
    }

    /// Total number of samples, valid or not.
    pub fn sample_count(&self) -> usize {
        self.decoder.samples.len()
    }

    /// Every series, valid or not; check [`SeriesRef::invalid`].
    pub fn series(&self) -> impl Iterator<Item = SeriesRef<'a>> + 'a {
        let decoder = self.decoder;
        (0..decoder.series.len()).map(move |index| SeriesRef { decoder, index })
    }

    /// The series that broke a rule, by index, with the reason.
    pub fn invalid(&self) -> &'a [(usize, InvalidSeries)] {
        &self.decoder.invalid
    }
}

impl<'a> SeriesRef<'a> {
    /// Labels as `(name, value)` byte slices, in request order (sorted, if valid).
    pub fn labels(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let decoder = self.decoder;
        let range = &decoder.series[self.index].labels;
        decoder.labels[range.start as usize..range.end as usize]
            .iter()
            .map(move |l| (slice(&decoder.body, l.name), slice(&decoder.body, l.value)))
    }

    /// The samples.
    pub fn samples(&self) -> &'a [Sample] {
        let range = &self.decoder.series[self.index].samples;
        &self.decoder.samples[range.start as usize..range.end as usize]
    }

    /// Why this series is invalid, if it is.
    pub fn invalid(&self) -> Option<InvalidSeries> {
        self.decoder
            .invalid
            .iter()
            .find(|(i, _)| *i == self.index)
            .map(|(_, reason)| *reason)
    }

    /// The value of the label called `name`.
    pub fn label(&self, name: &[u8]) -> Option<&'a [u8]> {
        self.labels().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_FIXED32: u8 = 5;

/// A bounds-checked cursor over protobuf bytes.
struct Reader<'b> {
    buf: &'b [u8],
    pos: usize,
}

impl Reader<'_> {
    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    #[inline]
    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .buf
                .get(self.pos)
                .ok_or(DecodeError::Protobuf("truncated varint"))?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(DecodeError::Protobuf("varint longer than 10 bytes"))
    }

    #[inline]
    fn key(&mut self) -> Result<(u64, u8), DecodeError> {
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 {
            return Err(DecodeError::Protobuf("field number 0"));
        }
        Ok((field, (key & 7) as u8))
    }

    #[inline]
    fn len_delimited(&mut self) -> Result<Range<usize>, DecodeError> {
        let len = self.varint()?;
        let start = self.pos;
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| start.checked_add(l))
            .filter(|&end| end <= self.buf.len())
            .ok_or(DecodeError::Protobuf(
                "length-delimited field runs past the end",
            ))?;
        self.pos = end;
        Ok(start..end)
    }

    #[inline]
    fn fixed64(&mut self) -> Result<u64, DecodeError> {
        let bytes = self
            .buf
            .get(self.pos..self.pos + 8)
            .ok_or(DecodeError::Protobuf("truncated fixed64"))?;
        self.pos += 8;
        let mut array = [0u8; 8];
        array.copy_from_slice(bytes);
        Ok(u64::from_le_bytes(array))
    }

    fn skip(&mut self, wire: u8) -> Result<(), DecodeError> {
        match wire {
            WIRE_VARINT => self.varint().map(drop),
            WIRE_FIXED64 => self.fixed64().map(drop),
            WIRE_LEN => self.len_delimited().map(drop),
            WIRE_FIXED32 => {
                if self.pos + 4 > self.buf.len() {
                    return Err(DecodeError::Protobuf("truncated fixed32"));
                }
                self.pos += 4;
                Ok(())
            }
            _ => Err(DecodeError::Protobuf("unsupported wire type")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use m3_proto::Message;
    use m3_proto::prometheus::{Label, Sample as PSample, TimeSeries, WriteRequest};
    use proptest::prelude::*;

    fn series(labels: &[(&str, &str)], samples: &[(f64, i64)]) -> TimeSeries {
        TimeSeries {
            labels: labels
                .iter()
                .map(|(n, v)| Label {
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            samples: samples
                .iter()
                .map(|&(value, timestamp)| PSample { value, timestamp })
                .collect(),
        }
    }

    fn compress(req: &WriteRequest) -> Vec<u8> {
        snap::raw::Encoder::new()
            .compress_vec(&req.encode_to_vec())
            .unwrap()
    }

    #[test]
    fn decodes_series_and_samples() {
        let req = WriteRequest {
            timeseries: vec![
                series(
                    &[("__name__", "up"), ("job", "a")],
                    &[(1.0, 1000), (2.0, 2000)],
                ),
                series(&[("__name__", "x")], &[(f64::NAN, -5)]),
            ],
        };
        let mut decoder = RemoteWriteDecoder::new();
        let decoded = decoder.decode_snappy(&compress(&req)).unwrap();
        assert_eq!(decoded.len(), 2);
        assert_eq!(decoded.sample_count(), 3);
        assert!(decoded.invalid().is_empty());
        let all: Vec<_> = decoded.series().collect();
        assert_eq!(all[0].label(b"job"), Some(b"a".as_slice()));
        assert_eq!(
            all[0].samples()[1],
            Sample {
                value: 2.0,
                timestamp_ms: 2000
            }
        );
        assert!(all[1].samples()[0].value.is_nan());
        assert_eq!(all[1].samples()[0].timestamp_ms, -5);
    }

    #[test]
    fn reports_invalid_series_and_keeps_valid_ones() {
        let cases = [
            (vec![("b", "1"), ("a", "2")], InvalidSeries::UnsortedLabels),
            (vec![("a", "1"), ("a", "2")], InvalidSeries::DuplicateLabel),
            (vec![("", "1")], InvalidSeries::EmptyLabelName),
            (vec![("a", "")], InvalidSeries::EmptyLabelValue),
            (vec![("1a", "x")], InvalidSeries::InvalidLabelName),
            (vec![("__name__", "a-b")], InvalidSeries::InvalidMetricName),
            (vec![], InvalidSeries::NoLabels),
        ];
        for (labels, reason) in cases {
            let req = WriteRequest {
                timeseries: vec![
                    series(&[("__name__", "ok")], &[(1.0, 1)]),
                    series(&labels, &[(1.0, 1)]),
                ],
            };
            let mut decoder = RemoteWriteDecoder::new();
            let decoded = decoder.decode_snappy(&compress(&req)).unwrap();
            assert_eq!(decoded.invalid(), &[(1, reason)], "{labels:?}");
            assert_eq!(
                decoded.series().filter(|s| s.invalid().is_none()).count(),
                1
            );
        }
    }

    #[test]
    fn rejects_bad_bodies() {
        let mut decoder = RemoteWriteDecoder::new();
        assert!(matches!(
            decoder.decode_snappy(b"not snappy at all"),
            Err(DecodeError::Snappy(_))
        ));
        let not_proto = snap::raw::Encoder::new().compress_vec(&[0xff; 20]).unwrap();
        assert!(matches!(
            decoder.decode_snappy(&not_proto),
            Err(DecodeError::Protobuf(_))
        ));
        let req = WriteRequest {
            timeseries: vec![series(&[("__name__", "up")], &[(1.0, 1)])],
        };
        let full = req.encode_to_vec();
        let truncated = snap::raw::Encoder::new()
            .compress_vec(&full[..full.len() - 3])
            .unwrap();
        assert!(matches!(
            decoder.decode_snappy(&truncated),
            Err(DecodeError::Protobuf(_))
        ));
        let mut small = RemoteWriteDecoder::with_max_size(4);
        assert!(matches!(
            small.decode_snappy(&compress(&req)),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    proptest! {
        #[test]
        fn agrees_with_prost(
            input in proptest::collection::vec(
                (proptest::collection::btree_map("[a-z_]{1,8}", "[a-z0-9]{1,8}", 1..6),
                 proptest::collection::vec((any::<f64>(), any::<i64>()), 0..4)),
                0..8)
        ) {
            let req = WriteRequest {
                timeseries: input.iter().map(|(labels, samples)| TimeSeries {
                    labels: labels.iter().map(|(n, v)| Label { name: n.clone(), value: v.clone() }).collect(),
                    samples: samples.iter().map(|&(value, timestamp)| PSample { value, timestamp }).collect(),
                }).collect(),
            };
            let bytes = req.encode_to_vec();
            // Compare with what prost reads from the same bytes (proto3 drops -0.0, for one).
            let req = WriteRequest::decode(bytes.as_slice()).unwrap();
            let mut decoder = RemoteWriteDecoder::new();
            let decoded = decoder.decode(&bytes).unwrap();
            prop_assert_eq!(decoded.len(), req.timeseries.len());
            for (got, want) in decoded.series().zip(&req.timeseries) {
                let labels: Vec<(String, String)> = got.labels().map(|(n, v)| (String::from_utf8(n.to_vec()).unwrap(), String::from_utf8(v.to_vec()).unwrap())).collect();
                let want_labels: Vec<(String, String)> = want.labels.iter().map(|l| (l.name.clone(), l.value.clone())).collect();
                prop_assert_eq!(labels, want_labels);
                for (g, w) in got.samples().iter().zip(&want.samples) {
                    prop_assert_eq!(g.value.to_bits(), w.value.to_bits());
                    prop_assert_eq!(g.timestamp_ms, w.timestamp);
                }
            }
        }

        #[test]
        fn never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut decoder = RemoteWriteDecoder::new();
            let _ = decoder.decode(&bytes).map(|d| d.series().map(|s| s.labels().count()).sum::<usize>());
            let _ = decoder.decode_snappy(&bytes).map(|d| d.len());
        }
    }
}
