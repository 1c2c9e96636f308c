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
//!
//! Decoding is two steps, so that a caller that remembers series can skip the checks of those
//! it has seen: [`RemoteWriteDecoder::parse_snappy`] finds where every label and sample is,
//! and [`ParsedRequest::check_labels`] checks the labels of the series the caller does not
//! trust. A series is trusted by its label bytes ([`SeriesRef::label_bytes`]): equal bytes are
//! equal labels, which passed the same checks before. [`RemoteWriteDecoder::decode_snappy`]
//! checks every series.
//!
//! # Bounds
//!
//! A hostile body cannot make the decoder allocate more than its [`DecodeLimits`] allow: the
//! decompressed size is read from the snappy header before decompressing, and samples, series
//! and labels are counted as they are parsed, so decoding stops with [`DecodeError::TooMany`]
//! before an array grows past its limit. (An empty sample is 2 bytes on the wire and 16 in
//! memory: without a count limit, 32 MiB of them decode to 256 MiB.) Label counts and lengths
//! per series are checked like the other label rules: the series is invalid, the rest stay.

use std::fmt;
use std::ops::Range;

/// The largest decompressed body accepted (Prometheus's own receiver uses 32 MiB too).
pub const DEFAULT_MAX_DECOMPRESSED_SIZE: usize = 32 * 1024 * 1024;

/// What one request may decode to. The defaults are the coordinator's
/// (`limits.remoteWrite`, see `crate::limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Decompressed bytes.
    pub max_decompressed_size: usize,
    /// Samples of all series.
    pub max_samples: usize,
    /// Series.
    pub max_series: usize,
    /// Labels of all series.
    pub max_labels: usize,
    /// Labels of one series.
    pub label_limit: usize,
    /// Bytes of one label name.
    pub label_name_length_limit: usize,
    /// Bytes of one label value.
    pub label_value_length_limit: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_decompressed_size: DEFAULT_MAX_DECOMPRESSED_SIZE,
            max_samples: 100_000,
            max_series: 100_000,
            max_labels: 1_000_000,
            label_limit: 128,
            label_name_length_limit: 1024,
            label_value_length_limit: 16 * 1024,
        }
    }
}

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
    /// The request holds more samples, series or labels than one request may.
    #[error("request has more than {max} {what}; split it into smaller requests")]
    TooMany {
        /// `samples`, `series` or `labels`.
        what: &'static str,
        /// The limit.
        max: usize,
    },
}

impl DecodeError {
    /// Whether the body is too large rather than malformed (HTTP 413 rather than 400).
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            DecodeError::TooLarge { .. } | DecodeError::TooMany { .. }
        )
    }
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
    /// More labels than `label_limit`.
    TooManyLabels {
        /// The limit.
        limit: u32,
    },
    /// A label name longer than `label_name_length_limit` bytes.
    LabelNameTooLong {
        /// The limit.
        limit: u32,
    },
    /// A label value longer than `label_value_length_limit` bytes.
    LabelValueTooLong {
        /// The limit.
        limit: u32,
    },
    /// Labels that together take more than the store holds for one series
    /// ([`m3_storage::MAX_ENCODED_LABELS_BYTES`], counting 8 bytes per label besides its name
    /// and value): each label may be within its own limits and the series still too large.
    LabelsTooLarge {
        /// The limit.
        limit: u32,
    },
}

impl fmt::Display for InvalidSeries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidSeries::TooManyLabels { limit } => {
                return write!(f, "more than {limit} labels (label_limit)");
            }
            InvalidSeries::LabelNameTooLong { limit } => {
                return write!(
                    f,
                    "label name longer than {limit} bytes (label_name_length_limit)"
                );
            }
            InvalidSeries::LabelValueTooLong { limit } => {
                return write!(
                    f,
                    "label value longer than {limit} bytes (label_value_length_limit)"
                );
            }
            InvalidSeries::LabelsTooLarge { limit } => {
                return write!(
                    f,
                    "labels take more than {limit} bytes together (8 per label plus names and values)"
                );
            }
            _ => {}
        }
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
            InvalidSeries::TooManyLabels { .. }
            | InvalidSeries::LabelNameTooLong { .. }
            | InvalidSeries::LabelValueTooLong { .. }
            | InvalidSeries::LabelsTooLarge { .. } => unreachable!("written above"),
        })
    }
}

/// One label as byte ranges into the decompressed body.
#[derive(Debug, Clone, Copy)]
struct LabelPos {
    name: (u32, u32),
    value: (u32, u32),
}

/// One series: ranges into the label and sample arrays, and why it is invalid if it is.
#[derive(Debug, Clone)]
struct SeriesPos {
    labels: Range<u32>,
    /// The bytes from the first label field's key to the end of the last label: equal spans
    /// decode to equal labels.
    label_span: (u32, u32),
    samples: Range<u32>,
    invalid: Option<InvalidSeries>,
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
    limits: DecodeLimits,
}

/// A request parsed but whose labels are not checked yet, borrowed from its decoder.
#[derive(Debug)]
pub struct ParsedRequest<'a> {
    decoder: &'a mut RemoteWriteDecoder,
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
    /// A decoder with the default [`DecodeLimits`].
    pub fn new() -> RemoteWriteDecoder {
        RemoteWriteDecoder::with_limits(DecodeLimits::default())
    }

    /// A decoder within `limits`.
    pub fn with_limits(limits: DecodeLimits) -> RemoteWriteDecoder {
        RemoteWriteDecoder {
            body: Vec::new(),
            labels: Vec::new(),
            samples: Vec::new(),
            series: Vec::new(),
            invalid: Vec::new(),
            limits,
        }
    }

    /// Bytes the decoder's buffers hold between requests (their capacity).
    pub fn retained_bytes(&self) -> usize {
        self.body.capacity()
            + self.labels.capacity() * std::mem::size_of::<LabelPos>()
            + self.samples.capacity() * std::mem::size_of::<Sample>()
            + self.series.capacity() * std::mem::size_of::<SeriesPos>()
            + self.invalid.capacity() * std::mem::size_of::<(usize, InvalidSeries)>()
    }

    /// Decompresses and decodes a snappy-compressed `WriteRequest`.
    ///
    /// # Errors
    /// When the body is not snappy, too large, or not a `WriteRequest`. Series-level problems
    /// are not errors; see [`DecodedRequest::invalid`].
    pub fn decode_snappy(&mut self, body: &[u8]) -> Result<DecodedRequest<'_>, DecodeError> {
        Ok(self.parse_snappy(body)?.check_labels(|_| false))
    }

    /// Decompresses and parses a snappy-compressed `WriteRequest` without checking its labels
    /// yet: [`ParsedRequest::check_labels`] does, skipping the series the caller knows to be
    /// valid (seen before, byte for byte).
    ///
    /// # Errors
    /// As [`decode_snappy`](Self::decode_snappy).
    pub fn parse_snappy(&mut self, body: &[u8]) -> Result<ParsedRequest<'_>, DecodeError> {
        let size =
            snap::raw::decompress_len(body).map_err(|e| DecodeError::Snappy(e.to_string()))?;
        if size > self.limits.max_decompressed_size {
            return Err(DecodeError::TooLarge {
                size,
                max: self.limits.max_decompressed_size,
            });
        }
        self.body.resize(size, 0);
        let written = snap::raw::Decoder::new()
            .decompress(body, &mut self.body)
            .map_err(|e| DecodeError::Snappy(e.to_string()))?;
        self.body.truncate(written);
        self.parse()?;
        Ok(ParsedRequest { decoder: self })
    }

    /// Decodes an uncompressed `WriteRequest`.
    ///
    /// # Errors
    /// When the bytes are not a `WriteRequest`, or larger than the limits.
    pub fn decode(&mut self, proto: &[u8]) -> Result<DecodedRequest<'_>, DecodeError> {
        if proto.len() > self.limits.max_decompressed_size {
            return Err(DecodeError::TooLarge {
                size: proto.len(),
                max: self.limits.max_decompressed_size,
            });
        }
        self.body.clear();
        self.body.extend_from_slice(proto);
        self.parse()?;
        Ok(ParsedRequest { decoder: self }.check_labels(|_| false))
    }

    fn parse(&mut self) -> Result<(), DecodeError> {
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
        // The body is moved out while the position arrays are filled, so the parser can borrow
        // it and push to `self` at once; this swaps three words and allocates nothing.
        let body = std::mem::take(&mut self.body);
        let result = self.parse_request(&body);
        self.body = body;
        result
    }

    /// Checks the labels of every series for which `trusted(index)` is false.
    fn check_labels(&mut self, mut trusted: impl FnMut(usize) -> bool) {
        for (index, series) in self.series.iter_mut().enumerate() {
            if trusted(index) {
                continue;
            }
            let mut check = LabelCheck::new(&self.limits);
            for label in &self.labels[series.labels.start as usize..series.labels.end as usize] {
                check.next(&self.body, label);
            }
            series.invalid = check.finish();
            if let Some(reason) = series.invalid {
                self.invalid.push((index, reason));
            }
        }
    }

    fn parse_request(&mut self, body: &[u8]) -> Result<(), DecodeError> {
        let mut reader = Reader { buf: body, pos: 0 };
        while !reader.done() {
            match reader.key()? {
                (1, WIRE_LEN) => {
                    let range = reader.len_delimited()?;
                    if self.series.len() >= self.limits.max_series {
                        return Err(DecodeError::TooMany {
                            what: "series",
                            max: self.limits.max_series,
                        });
                    }
                    self.parse_series(body, range)?;
                }
                (_, wire) => reader.skip(wire)?,
            }
        }
        Ok(())
    }

    /// Parses one `TimeSeries`: where its labels and samples are. Its labels are checked
    /// afterwards, unless the caller knows them ([`ParsedRequest::check_labels`]).
    fn parse_series(&mut self, body: &[u8], range: Range<usize>) -> Result<(), DecodeError> {
        let labels_start = self.labels.len() as u32;
        let samples_start = self.samples.len() as u32;
        let mut reader = Reader {
            buf: &body[..range.end],
            pos: range.start,
        };
        let mut label_span: Option<(usize, usize)> = None;
        while !reader.done() {
            let field_start = reader.pos;
            match reader.key()? {
                (1, WIRE_LEN) => {
                    let range = reader.len_delimited()?;
                    let span_start = label_span.map_or(field_start, |(start, _)| start);
                    label_span = Some((span_start, range.end));
                    let label = parse_label(body, range.clone())?;
                    if self.labels.len() >= self.limits.max_labels {
                        return Err(DecodeError::TooMany {
                            what: "labels",
                            max: self.limits.max_labels,
                        });
                    }
                    self.labels.push(label);
                }
                (2, WIRE_LEN) => {
                    let sample = reader.len_delimited()?;
                    if self.samples.len() >= self.limits.max_samples {
                        return Err(DecodeError::TooMany {
                            what: "samples",
                            max: self.limits.max_samples,
                        });
                    }
                    self.samples.push(parse_sample(body, sample)?);
                }
                (_, wire) => reader.skip(wire)?,
            }
        }
        // `parse` refuses bodies whose offsets do not fit a `u32`.
        let (span_start, span_end) = label_span.unwrap_or((0, 0));
        self.series.push(SeriesPos {
            labels: labels_start..self.labels.len() as u32,
            label_span: (span_start as u32, span_end as u32),
            samples: samples_start..self.samples.len() as u32,
            invalid: None,
        });
        Ok(())
    }
}

/// Parses one `Label` message.
///
/// Every producer writes a label as `0x0a len name 0x12 len value`, with one-byte lengths for
/// names and values under 128 bytes; that exact layout is recognised directly. Anything else
/// (long strings, fields reordered, repeated or unknown) takes the general field loop, which
/// gives the same result for the common layout too.
#[inline(always)]
fn parse_label(body: &[u8], range: Range<usize>) -> Result<LabelPos, DecodeError> {
    let message = &body[range.clone()];
    if let [0x0a, name_len @ 0..0x80, rest @ ..] = message {
        let name_len = usize::from(*name_len);
        if let Some(&[0x12, value_len @ 0..0x80]) = rest.get(name_len..name_len + 2)
            && rest.len() == name_len + 2 + usize::from(value_len)
        {
            // `range.end <= body.len() <= u32::MAX`, checked in `parse`.
            let name_start = range.start as u32 + 2;
            let name_end = name_start + name_len as u32;
            return Ok(LabelPos {
                name: (name_start, name_end),
                value: (name_end + 2, range.end as u32),
            });
        }
    }
    parse_label_fields(body, range)
}

fn parse_label_fields(body: &[u8], range: Range<usize>) -> Result<LabelPos, DecodeError> {
    let mut reader = Reader {
        buf: &body[..range.end],
        pos: range.start,
    };
    let mut label = LabelPos {
        name: (0, 0),
        value: (0, 0),
    };
    while !reader.done() {
        match reader.key()? {
            (1, WIRE_LEN) => {
                let r = reader.len_delimited()?;
                label.name = (r.start as u32, r.end as u32);
            }
            (2, WIRE_LEN) => {
                let r = reader.len_delimited()?;
                label.value = (r.start as u32, r.end as u32);
            }
            (_, wire) => reader.skip(wire)?,
        }
    }
    Ok(label)
}

#[inline]
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
        match reader.key()? {
            (1, WIRE_FIXED64) => sample.value = f64::from_bits(reader.fixed64()?),
            (2, WIRE_VARINT) => sample.timestamp_ms = reader.varint()? as i64,
            (_, wire) => reader.skip(wire)?,
        }
    }
    Ok(sample)
}

#[inline]
fn slice(body: &[u8], (start, end): (u32, u32)) -> &[u8] {
    &body[start as usize..end as usize]
}

/// The validation of one series' labels, fed one label at a time in request order.
///
/// Rules are checked per label in this order, and the first broken one is the series' reason:
/// empty name, empty value, order against the previous name (duplicate or unsorted), name
/// character set (metric-name set for the `__name__` value), UTF-8 of the value.
struct LabelCheck<'b> {
    previous: Option<&'b [u8]>,
    count: usize,
    /// The labels' encoded size in the store so far (`Labels::encoded_len`).
    encoded_len: usize,
    error: Option<InvalidSeries>,
    label_limit: usize,
    name_length_limit: usize,
    value_length_limit: usize,
}

fn limit_u32(limit: usize) -> u32 {
    u32::try_from(limit).unwrap_or(u32::MAX)
}

impl<'b> LabelCheck<'b> {
    fn new(limits: &DecodeLimits) -> LabelCheck<'b> {
        LabelCheck {
            previous: None,
            count: 0,
            encoded_len: m3_storage::Labels::encoded_len([]),
            error: None,
            label_limit: limits.label_limit,
            name_length_limit: limits.label_name_length_limit,
            value_length_limit: limits.label_value_length_limit,
        }
    }

    /// Checks `label` of `body`.
    #[inline]
    fn next(&mut self, body: &'b [u8], label: &LabelPos) {
        self.count += 1;
        self.encoded_len += m3_storage::Labels::encoded_label_len(
            label.name.1.saturating_sub(label.name.0) as usize,
            label.value.1.saturating_sub(label.value.0) as usize,
        );
        if self.error.is_none() && self.count > self.label_limit {
            self.error = Some(InvalidSeries::TooManyLabels {
                limit: limit_u32(self.label_limit),
            });
        }
        if self.error.is_none()
            && let Err(reason) = self.check(body, label)
        {
            self.error = Some(reason);
        }
    }

    #[inline]
    fn check(&mut self, body: &'b [u8], label: &LabelPos) -> Result<(), InvalidSeries> {
        let name = slice(body, label.name);
        let value = slice(body, label.value);
        if name.len() > self.name_length_limit {
            return Err(InvalidSeries::LabelNameTooLong {
                limit: limit_u32(self.name_length_limit),
            });
        }
        if value.len() > self.value_length_limit {
            return Err(InvalidSeries::LabelValueTooLong {
                limit: limit_u32(self.value_length_limit),
            });
        }
        if name.is_empty() {
            return Err(InvalidSeries::EmptyLabelName);
        }
        if value.is_empty() {
            return Err(InvalidSeries::EmptyLabelValue);
        }
        if let Some(previous) = self.previous {
            match m3_storage::labels::cmp_names(previous, name) {
                std::cmp::Ordering::Equal => return Err(InvalidSeries::DuplicateLabel),
                std::cmp::Ordering::Greater => return Err(InvalidSeries::UnsortedLabels),
                std::cmp::Ordering::Less => {}
            }
        }
        self.previous = Some(name);
        if name == b"__name__" {
            if !valid_name(value, METRIC_FIRST, METRIC_REST) {
                return Err(InvalidSeries::InvalidMetricName);
            }
        } else if !valid_name(name, LABEL_FIRST, LABEL_REST) {
            return Err(InvalidSeries::InvalidLabelName);
        }
        // An ASCII value is valid UTF-8 without running the full decoder over it.
        if !value.is_ascii() && std::str::from_utf8(value).is_err() {
            return Err(InvalidSeries::InvalidUtf8);
        }
        Ok(())
    }

    fn finish(self) -> Option<InvalidSeries> {
        if self.count == 0 {
            return Some(InvalidSeries::NoLabels);
        }
        if self.error.is_none() && self.encoded_len > m3_storage::MAX_ENCODED_LABELS_BYTES {
            return Some(InvalidSeries::LabelsTooLarge {
                limit: limit_u32(m3_storage::MAX_ENCODED_LABELS_BYTES),
            });
        }
        self.error
    }
}

/// Byte classes for names: bit set when the byte may appear at that place.
const LABEL_FIRST: u8 = 1;
const LABEL_REST: u8 = 2;
const METRIC_FIRST: u8 = 4;
const METRIC_REST: u8 = 8;

/// `NAME_BYTES[b]` has the class bits of byte `b`: letters and `_` anywhere, digits after the
/// first byte, `:` anywhere in metric names only.
static NAME_BYTES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = if c.is_ascii_alphabetic() || c == b'_' {
            LABEL_FIRST | LABEL_REST | METRIC_FIRST | METRIC_REST
        } else if c.is_ascii_digit() {
            LABEL_REST | METRIC_REST
        } else if c == b':' {
            METRIC_FIRST | METRIC_REST
        } else {
            0
        };
        b += 1;
    }
    table
};

/// Whether `name` is non-empty, its first byte has class `first` and the others class `rest`:
/// `[a-zA-Z_][a-zA-Z0-9_]*` for label names, `[a-zA-Z_:][a-zA-Z0-9_:]*` for metric names.
#[inline]
fn valid_name(name: &[u8], first: u8, rest: u8) -> bool {
    match name.split_first() {
        Some((&head, tail)) => {
            // AND the classes of all bytes without branching per byte: names are short and
            // nearly always valid, so an early exit buys nothing.
            let classes = tail
                .iter()
                .fold(u8::MAX, |acc, &c| acc & NAME_BYTES[usize::from(c)]);
            NAME_BYTES[usize::from(head)] & first != 0 && classes & rest != 0
        }
        None => false,
    }
}

impl Default for RemoteWriteDecoder {
    fn default() -> Self {
        RemoteWriteDecoder::new()
    }
}

impl<'a> ParsedRequest<'a> {
    /// Each series' label bytes ([`SeriesRef::label_bytes`]), in order.
    pub fn label_bytes(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let decoder = &*self.decoder;
        decoder
            .series
            .iter()
            .map(move |series| slice(&decoder.body, series.label_span))
    }

    /// Checks the labels of every series but those for which `trusted(index)` holds (their
    /// label bytes equal those of a series checked before), and hands out the request.
    pub fn check_labels(self, trusted: impl FnMut(usize) -> bool) -> DecodedRequest<'a> {
        self.decoder.check_labels(trusted);
        DecodedRequest {
            decoder: self.decoder,
        }
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
    pub fn labels(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone + 'a {
        let decoder = self.decoder;
        let range = &decoder.series[self.index].labels;
        decoder.labels[range.start as usize..range.end as usize]
            .iter()
            .map(move |l| (slice(&decoder.body, l.name), slice(&decoder.body, l.value)))
    }

    /// The encoded label fields of the series, from the first label to the last (with
    /// whatever the sender put between them): two series whose label bytes are equal have
    /// equal labels, so these bytes identify a series the way its sender wrote it.
    pub fn label_bytes(&self) -> &'a [u8] {
        slice(
            &self.decoder.body,
            self.decoder.series[self.index].label_span,
        )
    }

    /// The samples.
    pub fn samples(&self) -> &'a [Sample] {
        let range = &self.decoder.series[self.index].samples;
        &self.decoder.samples[range.start as usize..range.end as usize]
    }

    /// Why this series is invalid, if it is.
    pub fn invalid(&self) -> Option<InvalidSeries> {
        self.decoder.series[self.index].invalid
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

    /// A varint. Keys and label lengths are nearly always one byte, so that case is tried
    /// first, inline; longer ones (series lengths, timestamps) take the loop.
    #[inline(always)]
    fn varint(&mut self) -> Result<u64, DecodeError> {
        match self.buf.get(self.pos) {
            Some(&byte) if byte < 0x80 => {
                self.pos += 1;
                Ok(u64::from(byte))
            }
            _ => self.varint_long(),
        }
    }

    fn varint_long(&mut self) -> Result<u64, DecodeError> {
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

    #[inline(always)]
    fn key(&mut self) -> Result<(u64, u8), DecodeError> {
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 {
            return Err(DecodeError::Protobuf("field number 0"));
        }
        Ok((field, (key & 7) as u8))
    }

    #[inline(always)]
    fn len_delimited(&mut self) -> Result<Range<usize>, DecodeError> {
        let len = self.varint()?;
        // `pos <= buf.len()` always holds, so this cannot underflow.
        let left = self.buf.len() - self.pos;
        if len > left as u64 {
            return Err(DecodeError::Protobuf(
                "length-delimited field runs past the end",
            ));
        }
        let start = self.pos;
        self.pos += len as usize;
        Ok(start..self.pos)
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
    fn labels_are_checked_except_where_the_caller_trusts_them() {
        let req = WriteRequest {
            timeseries: vec![
                series(&[("b", "1"), ("a", "2")], &[(1.0, 1)]),
                series(&[("__name__", "up")], &[(1.0, 1)]),
                series(&[("b", "1"), ("a", "2")], &[(2.0, 2)]),
            ],
        };
        let body = compress(&req);
        let mut decoder = RemoteWriteDecoder::new();
        let parsed = decoder.parse_snappy(&body).unwrap();
        let spans: Vec<Vec<u8>> = parsed.label_bytes().map(<[u8]>::to_vec).collect();
        assert_eq!(spans[0], spans[2], "equal labels, equal bytes");
        assert_ne!(spans[0], spans[1]);
        // Trusting the third series skips its check; the first is still refused.
        let decoded = parsed.check_labels(|index| index == 2);
        assert_eq!(decoded.invalid(), &[(0, InvalidSeries::UnsortedLabels)]);
        let invalid: Vec<_> = decoded.series().map(|s| s.invalid()).collect();
        assert_eq!(invalid, [Some(InvalidSeries::UnsortedLabels), None, None]);
        // Decoding again checks everything anew.
        let decoded = decoder.decode_snappy(&body).unwrap();
        assert_eq!(
            decoded.invalid(),
            &[
                (0, InvalidSeries::UnsortedLabels),
                (2, InvalidSeries::UnsortedLabels)
            ]
        );
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

    /// Regression (issue 6): 1.5 MB of empty samples decoded to gigabytes; counts are now
    /// checked before each array grows.
    #[test]
    fn sample_series_and_label_counts_are_bounded_before_allocating() {
        let limits = DecodeLimits {
            max_samples: 10,
            max_series: 3,
            max_labels: 5,
            ..DecodeLimits::default()
        };
        let empty_samples = WriteRequest {
            timeseries: vec![TimeSeries {
                labels: vec![Label {
                    name: "__name__".into(),
                    value: "x".into(),
                }],
                samples: vec![PSample::default(); 11],
            }],
        };
        let mut decoder = RemoteWriteDecoder::with_limits(limits);
        let err = decoder
            .decode_snappy(&compress(&empty_samples))
            .unwrap_err();
        assert_eq!(
            err,
            DecodeError::TooMany {
                what: "samples",
                max: 10
            }
        );
        assert!(err.is_too_large());
        assert!(decoder.samples.capacity() <= 16, "grew past the limit");
        let many_series = WriteRequest {
            timeseries: (0..4)
                .map(|_| series(&[("__name__", "x")], &[(1.0, 1)]))
                .collect(),
        };
        assert!(matches!(
            decoder.decode_snappy(&compress(&many_series)),
            Err(DecodeError::TooMany { what: "series", .. })
        ));
        let many_labels = WriteRequest {
            timeseries: vec![series(
                &[
                    ("a", "1"),
                    ("b", "1"),
                    ("c", "1"),
                    ("d", "1"),
                    ("e", "1"),
                    ("f", "1"),
                ],
                &[(1.0, 1)],
            )],
        };
        assert!(matches!(
            decoder.decode_snappy(&compress(&many_labels)),
            Err(DecodeError::TooMany { what: "labels", .. })
        ));
    }

    /// Labels each within their own limits but too large together for the store are refused
    /// per series (the store would refuse the whole batch).
    #[test]
    fn labels_too_large_together_invalidate_only_their_series() {
        let value = "v".repeat(15 * 1024);
        let names: Vec<String> = (0..5).map(|i| format!("l{i}")).collect();
        let mut wide: Vec<(&str, &str)> = vec![("__name__", "x")];
        wide.extend(names.iter().map(|n| (n.as_str(), value.as_str())));
        let just_fits = "v".repeat(
            m3_storage::MAX_ENCODED_LABELS_BYTES
                - m3_storage::Labels::encoded_len([(8, 1), (1, 0)]),
        );
        let req = WriteRequest {
            timeseries: vec![
                series(&wide, &[(1.0, 1)]),
                series(&[("__name__", "x"), ("a", just_fits.as_str())], &[(1.0, 1)]),
            ],
        };
        let mut decoder = RemoteWriteDecoder::with_limits(DecodeLimits {
            label_value_length_limit: 64 * 1024,
            ..DecodeLimits::default()
        });
        let decoded = decoder.decode_snappy(&compress(&req)).unwrap();
        let limit = m3_storage::MAX_ENCODED_LABELS_BYTES as u32;
        assert_eq!(
            decoded.invalid(),
            &[(0, InvalidSeries::LabelsTooLarge { limit })]
        );
        assert!(
            InvalidSeries::LabelsTooLarge { limit }
                .to_string()
                .starts_with("labels take more than 61440 bytes")
        );
    }

    /// Regression (issue 6): labels over 64 KiB reached the store and made it panic.
    #[test]
    fn label_limits_invalidate_the_series_and_keep_the_others() {
        let limits = DecodeLimits {
            label_limit: 2,
            label_name_length_limit: 8,
            label_value_length_limit: 16,
            ..DecodeLimits::default()
        };
        let long_value = "v".repeat(17);
        let long_name = "n".repeat(9);
        let req = WriteRequest {
            timeseries: vec![
                series(&[("__name__", "ok"), ("job", "a")], &[(1.0, 1)]),
                series(&[("__name__", "x"), ("job", &long_value)], &[(1.0, 1)]),
                series(&[("__name__", "x"), (long_name.as_str(), "a")], &[(1.0, 1)]),
                series(&[("__name__", "x"), ("a", "1"), ("b", "2")], &[(1.0, 1)]),
            ],
        };
        let mut decoder = RemoteWriteDecoder::with_limits(limits);
        let decoded = decoder.decode_snappy(&compress(&req)).unwrap();
        assert_eq!(
            decoded.invalid(),
            &[
                (1, InvalidSeries::LabelValueTooLong { limit: 16 }),
                (2, InvalidSeries::LabelNameTooLong { limit: 8 }),
                (3, InvalidSeries::TooManyLabels { limit: 2 }),
            ]
        );
        assert_eq!(
            InvalidSeries::LabelValueTooLong { limit: 16 }.to_string(),
            "label value longer than 16 bytes (label_value_length_limit)"
        );
        assert_eq!(
            decoded.series().filter(|s| s.invalid().is_none()).count(),
            1
        );
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
        let mut small = RemoteWriteDecoder::with_limits(DecodeLimits {
            max_decompressed_size: 4,
            ..DecodeLimits::default()
        });
        assert!(matches!(
            small.decode_snappy(&compress(&req)),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    /// Appends a protobuf varint.
    fn put_varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// Appends a length-delimited field.
    fn put_bytes(field: u8, bytes: &[u8], out: &mut Vec<u8>) {
        out.push(field << 3 | 2);
        put_varint(bytes.len() as u64, out);
        out.extend_from_slice(bytes);
    }

    /// A `WriteRequest` of series given as raw label bytes (prost's `String`s cannot hold
    /// invalid UTF-8), each with one sample.
    fn raw_request(series: &[Vec<(Vec<u8>, Vec<u8>)>]) -> Vec<u8> {
        let mut request = Vec::new();
        for labels in series {
            let mut ts = Vec::new();
            for (name, value) in labels {
                let mut label = Vec::new();
                put_bytes(1, name, &mut label);
                put_bytes(2, value, &mut label);
                put_bytes(1, &label, &mut ts);
            }
            put_bytes(
                2,
                &[0x09, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f, 0x10, 0x07],
                &mut ts,
            );
            put_bytes(1, &ts, &mut request);
        }
        request
    }

    /// The validation rules written plainly, one pass after parsing: the reference the
    /// decoder's single-pass validation must agree with.
    fn reference_validation(labels: &[(Vec<u8>, Vec<u8>)]) -> Option<InvalidSeries> {
        let plain_name = |name: &[u8], colon: bool| {
            let ok = |c: u8, first: bool| {
                c.is_ascii_alphabetic()
                    || c == b'_'
                    || (colon && c == b':')
                    || (!first && c.is_ascii_digit())
            };
            match name.split_first() {
                Some((&first, rest)) => ok(first, true) && rest.iter().all(|&c| ok(c, false)),
                None => false,
            }
        };
        if labels.is_empty() {
            return Some(InvalidSeries::NoLabels);
        }
        let mut previous: Option<&[u8]> = None;
        for (name, value) in labels {
            if name.is_empty() {
                return Some(InvalidSeries::EmptyLabelName);
            }
            if value.is_empty() {
                return Some(InvalidSeries::EmptyLabelValue);
            }
            match previous.map(|p| p.cmp(name)) {
                Some(std::cmp::Ordering::Equal) => return Some(InvalidSeries::DuplicateLabel),
                Some(std::cmp::Ordering::Greater) => return Some(InvalidSeries::UnsortedLabels),
                _ => {}
            }
            previous = Some(name);
            if name == b"__name__" {
                if !plain_name(value, true) {
                    return Some(InvalidSeries::InvalidMetricName);
                }
            } else if !plain_name(name, false) {
                return Some(InvalidSeries::InvalidLabelName);
            }
            if std::str::from_utf8(value).is_err() {
                return Some(InvalidSeries::InvalidUtf8);
            }
        }
        None
    }

    #[test]
    fn rejects_values_that_are_not_utf8() {
        let body = raw_request(&[
            vec![(b"__name__".to_vec(), b"up".to_vec())],
            vec![
                (b"__name__".to_vec(), b"up".to_vec()),
                (b"job".to_vec(), vec![b'a', 0xff, b'b']),
            ],
            vec![(b"job".to_vec(), "caf\u{e9}".as_bytes().to_vec())],
        ]);
        let mut decoder = RemoteWriteDecoder::new();
        let decoded = decoder.decode(&body).unwrap();
        assert_eq!(decoded.invalid(), &[(1, InvalidSeries::InvalidUtf8)]);
        let reasons: Vec<_> = decoded.series().map(|s| s.invalid()).collect();
        assert_eq!(reasons, [None, Some(InvalidSeries::InvalidUtf8), None]);
    }

    #[test]
    fn decodes_labels_in_any_field_layout() {
        // Value before name, an unknown varint field, and a value too long for a one-byte
        // length: none of these is the common layout, all are valid protobuf.
        let long = vec![b'v'; 300];
        let mut label = Vec::new();
        put_bytes(2, &long, &mut label);
        label.extend_from_slice(&[3 << 3, 42]);
        put_bytes(1, b"job", &mut label);
        let mut ts = Vec::new();
        put_bytes(1, &label, &mut ts);
        let mut body = Vec::new();
        put_bytes(1, &ts, &mut body);
        let mut decoder = RemoteWriteDecoder::new();
        let decoded = decoder.decode(&body).unwrap();
        let series = decoded.series().next().unwrap();
        assert_eq!(series.label(b"job"), Some(long.as_slice()));
        assert_eq!(series.invalid(), None);
        assert!(series.samples().is_empty());
    }

    proptest! {
        #[test]
        fn agrees_with_prost(
            input in proptest::collection::vec(
                (proptest::collection::btree_map("[a-z_]{1,8}", "[a-z0-9]{1,8}|[a-z]{120,200}", 1..6),
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
                // The label bytes are exactly the label fields as prost writes them.
                let only_labels = TimeSeries { labels: want.labels.clone(), samples: Vec::new() };
                let want_bytes = only_labels.encode_to_vec();
                prop_assert_eq!(got.label_bytes(), want_bytes.as_slice());
                for (g, w) in got.samples().iter().zip(&want.samples) {
                    prop_assert_eq!(g.value.to_bits(), w.value.to_bits());
                    prop_assert_eq!(g.timestamp_ms, w.timestamp);
                }
            }
        }

        #[test]
        fn validation_agrees_with_reference(
            input in proptest::collection::vec(
                proptest::collection::vec(
                    (proptest::collection::vec(proptest::sample::select(b"_az09:-\xc3\xa9\xff".to_vec()), 0..5),
                     proptest::collection::vec(proptest::sample::select(b"az0:_-\xc3\xa9\xff".to_vec()), 0..5)),
                    0..5)
                    .prop_map(|mut labels| {
                        // Mostly sorted, as real senders do, so that later rules are reached.
                        if labels.len() % 2 == 0 {
                            labels.sort();
                        }
                        labels
                    }),
                0..6)
        ) {
            let mut decoder = RemoteWriteDecoder::new();
            let decoded = decoder.decode(&raw_request(&input)).unwrap();
            let want: Vec<_> = input.iter().map(|labels| reference_validation(labels)).collect();
            let got: Vec<_> = decoded.series().map(|s| s.invalid()).collect();
            prop_assert_eq!(&got, &want);
            let listed: Vec<_> = want
                .iter()
                .enumerate()
                .filter_map(|(i, reason)| reason.map(|r| (i, r)))
                .collect();
            prop_assert_eq!(decoded.invalid(), listed.as_slice());
        }

        #[test]
        fn never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut decoder = RemoteWriteDecoder::new();
            let _ = decoder.decode(&bytes).map(|d| d.series().map(|s| s.labels().count()).sum::<usize>());
            let _ = decoder.decode_snappy(&bytes).map(|d| d.len());
        }
    }
}
