//! Label sets: the identity of a series.
//!
//! A series is named by its labels, Prometheus style: `{__name__="http_requests_total",
//! job="api"}`. [`Labels`] keeps the pairs sorted by name with no duplicate names and no empty
//! values, so two label sets that mean the same series compare and hash equal whatever order the
//! client sent them in. An empty value is dropped on construction because Prometheus treats
//! `foo=""` and "no label `foo`" as the same thing.
//!
//! # Size
//!
//! A label set's size is measured as its length-prefixed encoding ([`Labels::encoded_len`]):
//!
//! ```text
//! count: u32 | ( name_len: u32 | name bytes | value_len: u32 | value bytes ) * count
//! ```

use std::fmt;

use m3_metric::label_bytes::{SHORT_PART, push_short};
use serde::ser::{Serialize, SerializeMap, Serializer};

/// The label that carries the metric name.
pub const METRIC_NAME_LABEL: &str = "__name__";

/// The most bytes a series' labels may take once encoded ([`Labels::encoded_len`]); a bound on
/// what one series costs in the index and in every log and block record naming it. A writer
/// checks it per series before writing a batch, so one such series is refused alone instead of
/// failing the whole batch.
pub const MAX_ENCODED_LABELS_BYTES: usize = 60 * 1024;

/// Why a list of pairs is not a valid label set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LabelsError {
    /// No label had a non-empty value.
    #[error("a series needs at least one label with a non-empty value")]
    Empty,
    /// A label with an empty name.
    #[error("label name is empty (value {value:?})")]
    EmptyName {
        /// The value the nameless label carried.
        value: String,
    },
    /// The same name twice.
    #[error("duplicate label name {0:?}")]
    DuplicateName(String),
    /// A name or value longer than the on-disk format allows (4 GiB).
    #[error("label {0:?} is too long")]
    TooLong(String),
    /// A name or value that is not UTF-8.
    #[error("label {name:?} is not UTF-8")]
    NotUtf8 {
        /// The label's name (lossily converted).
        name: String,
    },
    /// The labels together are longer than a key of the engine may be.
    #[error("the labels of series {name:?} take {size} bytes; a series may take at most {max}")]
    SeriesTooLong {
        /// The series' `__name__` (or empty).
        name: String,
        /// Encoded size.
        size: usize,
        /// The limit.
        max: usize,
    },
}

/// A validated, sorted label set. See the [module docs](self).
///
/// The names and values sit back to back in one string, with the end of each in a second
/// allocation: building one costs two allocations however many labels it has, hashing it is
/// two contiguous writes, and a million of them cost their text, not forty `String`s each.
#[derive(Clone, PartialEq, Eq)]
pub struct Labels {
    /// Names and values back to back, in name order.
    text: Box<str>,
    /// Per label, where its name ends and where its value ends in `text`.
    ends: Box<[(u32, u32)]>,
}

/// A validated label set borrowed: what a [`Labels`] holds, in memory it does not own (a
/// [`Labels`], or one set of a [`LabelsBatch`]). It hashes and compares as the [`Labels`] with
/// the same pairs, so a store can find a series by it without building one.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LabelsView<'a> {
    /// Names and values back to back, in name order.
    text: &'a str,
    /// Per label, where its name ends and where its value ends in `text`.
    ends: &'a [(u32, u32)],
}

/// Anything a label set can be borrowed from: [`Labels`], references to them, [`LabelsView`].
pub trait AsLabelsView {
    /// The label set, borrowed.
    fn labels_view(&self) -> LabelsView<'_>;
}

impl AsLabelsView for Labels {
    fn labels_view(&self) -> LabelsView<'_> {
        self.view()
    }
}

impl AsLabelsView for LabelsView<'_> {
    fn labels_view(&self) -> LabelsView<'_> {
        *self
    }
}

impl<T: AsLabelsView + ?Sized> AsLabelsView for &T {
    fn labels_view(&self) -> LabelsView<'_> {
        (**self).labels_view()
    }
}

impl std::hash::Hash for Labels {
    /// As its [`LabelsView`] hashes, so either finds the same entry of a hash table.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.view().hash(state);
    }
}

impl Labels {
    /// Builds a label set from name/value pairs in any order.
    ///
    /// Pairs with an empty value are dropped.
    ///
    /// # Errors
    ///
    /// [`LabelsError`] when a name is empty, a name repeats, the labels hold more than 4 GiB,
    /// or nothing is left.
    ///
    /// # Examples
    ///
    /// ```
    /// use m3_storage::Labels;
    ///
    /// let l = Labels::new([("job", "api"), ("__name__", "up"), ("zone", "")]).unwrap();
    /// assert_eq!(l.metric_name(), Some("up"));
    /// assert_eq!(l.get("zone"), None);
    /// assert_eq!(l.to_string(), r#"{__name__="up", job="api"}"#);
    /// ```
    pub fn new<I, N, V>(pairs: I) -> Result<Self, LabelsError>
    where
        I: IntoIterator<Item = (N, V)>,
        N: AsRef<str>,
        V: AsRef<str>,
    {
        let mut kept: Vec<(N, V)> = Vec::new();
        for (name, value) in pairs {
            if name.as_ref().is_empty() {
                return Err(LabelsError::EmptyName {
                    value: value.as_ref().to_owned(),
                });
            }
            if !value.as_ref().is_empty() {
                kept.push((name, value));
            }
        }
        kept.sort_unstable_by(|a, b| a.0.as_ref().cmp(b.0.as_ref()));
        if let Some(w) = kept.windows(2).find(|w| w[0].0.as_ref() == w[1].0.as_ref()) {
            return Err(LabelsError::DuplicateName(w[0].0.as_ref().to_owned()));
        }
        if kept.is_empty() {
            return Err(LabelsError::Empty);
        }
        Labels::from_sorted(kept.iter().map(|(n, v)| (n.as_ref(), v.as_ref())))
    }

    /// Labels from pairs already sorted by name, distinct, with no empty value.
    fn from_sorted<'a>(
        pairs: impl Iterator<Item = (&'a str, &'a str)> + Clone,
    ) -> Result<Labels, LabelsError> {
        let len: usize = pairs.clone().map(|(n, v)| n.len() + v.len()).sum();
        let mut text = String::with_capacity(len);
        let mut ends = Vec::with_capacity(pairs.clone().count());
        for (name, value) in pairs {
            text.push_str(name);
            let name_end = u32::try_from(text.len());
            text.push_str(value);
            match (name_end, u32::try_from(text.len())) {
                (Ok(name_end), Ok(value_end)) => ends.push((name_end, value_end)),
                _ => return Err(LabelsError::TooLong(name.to_owned())),
            }
        }
        Ok(Labels {
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
        })
    }

    /// The label set, borrowed.
    pub fn view(&self) -> LabelsView<'_> {
        LabelsView {
            text: &self.text,
            ends: &self.ends,
        }
    }

    /// The value of label `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.view().get(name)
    }

    /// The value of `__name__`, if present.
    pub fn metric_name(&self) -> Option<&str> {
        self.get(METRIC_NAME_LABEL)
    }

    /// The pairs, sorted by name.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + Clone {
        self.view().iter()
    }

    /// The number of labels (never zero).
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Always `false`: a label set has at least one label. Present for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.text.len() + self.ends.len() * std::mem::size_of::<(u32, u32)>()
    }

    /// Labels from pairs taken out of another `Labels` in order (sorted by name, distinct,
    /// no empty values), without sorting or checking them again.
    pub(crate) fn from_valid_pairs<'a>(
        pairs: impl Iterator<Item = (&'a str, &'a str)> + Clone,
    ) -> Labels {
        Labels::from_sorted(pairs).unwrap_or_else(|_| Labels {
            text: Box::default(),
            ends: Box::default(),
        })
    }

    /// Labels from byte pairs that already are a valid set as a tag-encoded metric ID holds
    /// them (sorted by name, distinct, no empty name or value, UTF-8), copied once with no
    /// string per name and value. `None` when they are not: the caller takes the general
    /// path, [`Labels::new`].
    ///
    /// # Examples
    ///
    /// ```
    /// use m3_storage::Labels;
    ///
    /// let pairs = [(&b"__name__"[..], &b"up"[..]), (b"job", b"api")];
    /// let l = Labels::from_canonical_bytes(pairs.into_iter()).unwrap();
    /// assert_eq!(l, Labels::new([("job", "api"), ("__name__", "up")]).unwrap());
    /// assert_eq!(Labels::from_canonical_bytes(pairs.into_iter().rev()), None);
    /// ```
    pub fn from_canonical_bytes<'p>(
        pairs: impl Iterator<Item = (&'p [u8], &'p [u8])> + Clone,
    ) -> Option<Labels> {
        let len = pairs.clone().map(|(n, v)| n.len() + v.len()).sum();
        let mut bytes = Vec::with_capacity(len);
        let mut ends = Vec::with_capacity(pairs.clone().count());
        if !copy_canonical(pairs, &mut bytes, &mut ends).ok()? {
            return None;
        }
        let text = String::from_utf8(bytes).ok()?;
        on_char_boundaries(&text, &ends).then(|| Labels {
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
        })
    }

    /// How many bytes the encoding of labels with these (name, value) byte lengths takes,
    /// to compare with [`MAX_ENCODED_LABELS_BYTES`] before building the labels.
    pub fn encoded_len(lengths: impl IntoIterator<Item = (usize, usize)>) -> usize {
        lengths.into_iter().fold(4, |total, (name, value)| {
            total + Labels::encoded_label_len(name, value)
        })
    }

    /// What one label with these name and value byte lengths adds to
    /// [`encoded_len`](Self::encoded_len).
    pub const fn encoded_label_len(name: usize, value: usize) -> usize {
        8 + name + value
    }
}

impl<'a> LabelsView<'a> {
    /// Label `i`: its name and value.
    fn pair(&self, i: usize) -> (&'a str, &'a str) {
        let start = match i.checked_sub(1) {
            Some(previous) => self.ends[previous].1 as usize,
            None => 0,
        };
        let (name_end, value_end) = self.ends[i];
        (
            self.text.get(start..name_end as usize).unwrap_or_default(),
            self.text
                .get(name_end as usize..value_end as usize)
                .unwrap_or_default(),
        )
    }

    /// The value of label `name`, if present.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        let (mut low, mut high) = (0, self.ends.len());
        while low < high {
            let middle = (low + high) / 2;
            let (n, v) = self.pair(middle);
            match n.cmp(name) {
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Greater => high = middle,
                std::cmp::Ordering::Equal => return Some(v),
            }
        }
        None
    }

    /// The pairs as bytes, sorted by name: what a compare reads, without the char-boundary
    /// checks that slicing the text as `str` makes.
    pub(crate) fn byte_pairs(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + use<'a> {
        let text = self.text.as_bytes();
        let mut start = 0usize;
        self.ends.iter().map(move |&(name_end, value_end)| {
            let (name_end, value_end) = (name_end as usize, value_end as usize);
            let name = text.get(start..name_end).unwrap_or_default();
            let value = text.get(name_end..value_end).unwrap_or_default();
            start = value_end;
            (name, value)
        })
    }

    /// The value of `__name__`, if present.
    pub fn metric_name(&self) -> Option<&'a str> {
        self.get(METRIC_NAME_LABEL)
    }

    /// The pairs, sorted by name.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&'a str, &'a str)> + Clone + use<'a> {
        let view = *self;
        (0..view.ends.len()).map(move |i| view.pair(i))
    }

    /// The number of labels (never zero).
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Always `false`: a label set has at least one label. Present for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The label set, owned.
    pub fn to_labels(&self) -> Labels {
        Labels {
            text: self.text.into(),
            ends: self.ends.into(),
        }
    }
}

impl fmt::Debug for LabelsView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.to_labels(), f)
    }
}

/// The order of two label names by their bytes (for UTF-8, code point order). The first bytes
/// are compared before the rest: names nearly always differ there, and a slice comparison is a
/// call into `memcmp` for every label written.
pub fn cmp_names(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    match (a.split_first(), b.split_first()) {
        (Some((a_first, a_rest)), Some((b_first, b_rest))) => {
            a_first.cmp(b_first).then_with(|| a_rest.cmp(b_rest))
        }
        _ => a.cmp(b),
    }
}

/// Appends `pairs` to `bytes`, names and values back to back, and their ends (relative to
/// where `bytes` started) to `ends`, if they are in the form a valid label set arrives in:
/// sorted by name (byte order, which is code point order for UTF-8), distinct, no empty name
/// or value, at least one pair. `Ok(false)` otherwise, with `bytes` and `ends` as they were:
/// the caller then takes the pairs label by label, as [`Labels::new`] does. UTF-8 is left to
/// the caller, to check once for the whole set.
///
/// # Errors
/// [`LabelsError::TooLong`] when the set is over 4 GiB.
fn copy_canonical<'p>(
    pairs: impl Iterator<Item = (&'p [u8], &'p [u8])>,
    bytes: &mut Vec<u8>,
    ends: &mut Vec<(u32, u32)>,
) -> Result<bool, LabelsError> {
    let (bytes_start, ends_start) = (bytes.len(), ends.len());
    let mut previous: Option<&[u8]> = None;
    for (name, value) in pairs {
        let sorted_after = previous.is_none_or(|p| cmp_names(p, name).is_lt());
        if name.is_empty() || value.is_empty() || !sorted_after {
            bytes.truncate(bytes_start);
            ends.truncate(ends_start);
            return Ok(false);
        }
        previous = Some(name);
        bytes.reserve(name.len() + value.len() + SHORT_PART);
        push_short(bytes, name);
        let name_end = u32::try_from(bytes.len() - bytes_start);
        push_short(bytes, value);
        match (name_end, u32::try_from(bytes.len() - bytes_start)) {
            (Ok(name_end), Ok(value_end)) => ends.push((name_end, value_end)),
            _ => {
                bytes.truncate(bytes_start);
                ends.truncate(ends_start);
                return Err(LabelsError::TooLong(String::from_utf8_lossy(name).into()));
            }
        }
    }
    Ok(previous.is_some())
}

/// Whether `pairs` are a label set as [`Labels`] holds one, checked without building it: at
/// least one label, names sorted and distinct, no name or value empty, the text within the
/// `u32` offsets a [`Labels`] keeps.
pub(crate) fn is_canonical<'p>(pairs: impl Iterator<Item = (&'p str, &'p str)>) -> bool {
    let mut previous: Option<&str> = None;
    let mut text_len = 0usize;
    for (name, value) in pairs {
        let sorted_after =
            previous.is_none_or(|p| cmp_names(p.as_bytes(), name.as_bytes()).is_lt());
        if name.is_empty() || value.is_empty() || !sorted_after {
            return false;
        }
        text_len += name.len() + value.len();
        previous = Some(name);
    }
    previous.is_some() && u32::try_from(text_len).is_ok()
}

/// Whether every name and value of `text` (cut at `ends`) starts and ends on a character: a
/// set checked to be UTF-8 as a whole may still have bytes split across two of its parts
/// that join into a valid character.
fn on_char_boundaries(text: &str, ends: &[(u32, u32)]) -> bool {
    ends.iter().all(|&(name_end, value_end)| {
        text.is_char_boundary(name_end as usize) && text.is_char_boundary(value_end as usize)
    })
}

/// The label sets of one write, in two buffers reused from write to write: a remote-write
/// request's series get their [`LabelsView`]s without an allocation per series.
///
/// [`push`](Self::push) takes what [`Labels::new`] takes and checks it alike; pairs that come
/// sorted by name with no empty value (as valid remote-write series do) are copied in place, any
/// others go through [`Labels::new`].
#[derive(Debug, Default)]
pub struct LabelsBatch {
    /// Every set's names and values back to back.
    text: String,
    /// Every set's label ends, each relative to its set's start in `text`.
    ends: Vec<(u32, u32)>,
    /// Per set, its range of `text` and of `ends`.
    sets: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>,
    /// A set's bytes before they are checked to be UTF-8 ([`push_bytes`](Self::push_bytes)).
    unchecked: Vec<u8>,
}

impl LabelsBatch {
    /// An empty batch.
    pub fn new() -> LabelsBatch {
        LabelsBatch::default()
    }

    /// Forgets every set, keeping the buffers.
    pub fn clear(&mut self) {
        self.text.clear();
        self.ends.clear();
        self.sets.clear();
    }

    /// The number of sets.
    pub fn len(&self) -> usize {
        self.sets.len()
    }

    /// Whether there is no set.
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// Bytes the buffers hold (their capacity).
    pub fn retained_bytes(&self) -> usize {
        self.text.capacity()
            + self.unchecked.capacity()
            + self.ends.capacity() * std::mem::size_of::<(u32, u32)>()
            + self.sets.capacity()
                * std::mem::size_of::<(std::ops::Range<usize>, std::ops::Range<usize>)>()
    }

    /// Adds a label set; its index for [`get`](Self::get).
    ///
    /// # Errors
    /// As [`Labels::new`]; nothing is added.
    pub fn push<'p>(
        &mut self,
        pairs: impl Iterator<Item = (&'p str, &'p str)> + Clone,
    ) -> Result<usize, LabelsError> {
        self.push_bytes(pairs.map(|(name, value)| (name.as_bytes(), value.as_bytes())))
    }

    /// [`push`](Self::push) for pairs of bytes, as a remote-write request holds them: checked
    /// to be UTF-8 once per set (and each name and value to lie on characters) rather than
    /// once per name and value.
    ///
    /// # Errors
    /// As [`push`](Self::push), and [`LabelsError::NotUtf8`]; nothing is added.
    pub fn push_bytes<'p>(
        &mut self,
        pairs: impl Iterator<Item = (&'p [u8], &'p [u8])> + Clone,
    ) -> Result<usize, LabelsError> {
        let ends_start = self.ends.len();
        self.unchecked.clear();
        let canonical = copy_canonical(pairs.clone(), &mut self.unchecked, &mut self.ends)?;
        if canonical
            && let Ok(text) = std::str::from_utf8(&self.unchecked)
            && on_char_boundaries(text, &self.ends[ends_start..])
        {
            let text_start = self.text.len();
            self.text.push_str(text);
            return Ok(self.add_set(text_start, ends_start));
        }
        // Out of order, an empty name or value, or not UTF-8: label by label, as `Labels`
        // takes them.
        self.ends.truncate(ends_start);
        let mut strings = Vec::new();
        for (name, value) in pairs {
            match (std::str::from_utf8(name), std::str::from_utf8(value)) {
                (Ok(name), Ok(value)) => strings.push((name, value)),
                _ => {
                    return Err(LabelsError::NotUtf8 {
                        name: String::from_utf8_lossy(name).into(),
                    });
                }
            }
        }
        let labels = Labels::new(strings)?;
        let text_start = self.text.len();
        self.text.push_str(&labels.text);
        self.ends.extend_from_slice(&labels.ends);
        Ok(self.add_set(text_start, ends_start))
    }

    /// Records the set whose text and ends were appended from these positions on; its index.
    fn add_set(&mut self, text_start: usize, ends_start: usize) -> usize {
        self.sets
            .push((text_start..self.text.len(), ends_start..self.ends.len()));
        self.sets.len() - 1
    }

    /// Set `index`, as [`push`](Self::push) returned it.
    ///
    /// # Panics
    /// When no set has that index.
    pub fn get(&self, index: usize) -> LabelsView<'_> {
        let (text, ends) = self.sets[index].clone();
        LabelsView {
            text: &self.text[text],
            ends: &self.ends[ends],
        }
    }
}

impl fmt::Display for Labels {
    /// Prometheus' text form: `{a="1", b="2"}` with Go-style escapes in values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (n, v)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{n}=\"")?;
            for c in v.chars() {
                match c {
                    '"' => f.write_str("\\\"")?,
                    '\\' => f.write_str("\\\\")?,
                    '\n' => f.write_str("\\n")?,
                    c => write!(f, "{c}")?,
                }
            }
            f.write_str("\"")?;
        }
        f.write_str("}")
    }
}

impl Ord for Labels {
    /// Label by label: names, then values, as a list of pairs sorts.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.iter().cmp(other.iter())
    }
}

impl PartialOrd for Labels {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Labels {
    /// A JSON object `{"name": "value", ...}`, the `metric` field of Prometheus' API.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (n, v) in self.iter() {
            map.serialize_entry(n, v)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_compare_as_their_bytes_do() {
        let names: [&[u8]; 9] = [
            b"",
            b"a",
            b"ab",
            b"b",
            b"ba",
            b"job",
            b"jobs",
            b"\xc3\xa9",
            b"z",
        ];
        for a in names {
            for b in names {
                assert_eq!(cmp_names(a, b), a.cmp(b), "{a:?} against {b:?}");
            }
        }
    }

    #[test]
    fn sorts_and_drops_empty_values() {
        let l = Labels::new([("b", "2"), ("a", "1"), ("c", "")]).unwrap();
        assert_eq!(l.iter().collect::<Vec<_>>(), vec![("a", "1"), ("b", "2")]);
        assert_eq!(l.get("a"), Some("1"));
        assert_eq!(l.get("b"), Some("2"));
        assert_eq!(l.get("c"), None);
    }

    #[test]
    fn order_is_label_by_label() {
        let l = |pairs: &[(&str, &str)]| Labels::new(pairs.iter().copied()).unwrap();
        let mut sets = [
            l(&[("b", "1")]),
            l(&[("a", "2")]),
            l(&[("a", "1"), ("b", "1")]),
            l(&[("a", "1")]),
            l(&[("ab", "0")]),
        ];
        sets.sort();
        let shown: Vec<String> = sets.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                r#"{a="1"}"#,
                r#"{a="1", b="1"}"#,
                r#"{a="2"}"#,
                r#"{ab="0"}"#,
                r#"{b="1"}"#
            ]
        );
    }

    #[test]
    fn rejects_bad_sets() {
        assert_eq!(
            Labels::new([("a", "1"), ("a", "2")]),
            Err(LabelsError::DuplicateName("a".into()))
        );
        assert_eq!(Labels::new([("a", "")]), Err(LabelsError::Empty));
        assert!(matches!(
            Labels::new([("", "x")]),
            Err(LabelsError::EmptyName { .. })
        ));
        assert_eq!(
            Labels::new(Vec::<(String, String)>::new()),
            Err(LabelsError::Empty)
        );
    }

    proptest::proptest! {
        /// A batch's set is the `Labels` built from the same pairs: equal, hashing alike, and
        /// refused alike; a refused set leaves the batch as it was.
        #[test]
        fn a_batch_set_is_the_labels_of_its_pairs(
            sets in proptest::collection::vec(
                proptest::collection::vec(("[a-d_]{0,3}", "[xy\u{e9}]{0,2}"), 0..6),
                1..6,
            ),
        ) {
            use std::hash::BuildHasher;
            let hasher = hashbrown::DefaultHashBuilder::default();
            let mut batch = LabelsBatch::new();
            let mut from_bytes = LabelsBatch::new();
            let mut kept = Vec::new();
            for pairs in &sets {
                let expected = Labels::new(pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())));
                let before = batch.len();
                let got = batch.push(pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())));
                let got_from_bytes =
                    from_bytes.push_bytes(pairs.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
                proptest::prop_assert_eq!(&got, &got_from_bytes);
                match (&expected, got) {
                    (Ok(labels), Ok(index)) => {
                        proptest::prop_assert_eq!(index, before);
                        kept.push(labels.clone());
                    }
                    (Err(e), Err(got)) => {
                        proptest::prop_assert_eq!(e, &got);
                        proptest::prop_assert_eq!(batch.len(), before);
                    }
                    (expected, got) => {
                        proptest::prop_assert!(false, "{expected:?} but the batch gave {got:?}")
                    }
                }
            }
            for (index, labels) in kept.iter().enumerate() {
                let view = batch.get(index);
                proptest::prop_assert_eq!(view, labels.view());
                proptest::prop_assert_eq!(from_bytes.get(index), labels.view());
                proptest::prop_assert_eq!(view.to_labels(), labels.clone());
                proptest::prop_assert_eq!(hasher.hash_one(view), hasher.hash_one(labels));
                proptest::prop_assert_eq!(view.iter().collect::<Vec<_>>(), labels.iter().collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn a_batch_refuses_bytes_that_are_not_utf8_and_keeps_what_it_has() {
        let mut batch = LabelsBatch::new();
        let first = batch.push_bytes([(&b"a"[..], &b"1"[..])].into_iter());
        assert_eq!(first, Ok(0));
        for pairs in [
            [(&b"a"[..], &b"\xff"[..]), (&b"b"[..], &b"2"[..])],
            // Out of order, so checked label by label.
            [(&b"b"[..], &b"2"[..]), (&b"a"[..], &b"\xc3"[..])],
            // Together valid ("a\u{e9}1"), but a character split between a value and a name.
            [(&b"a"[..], &b"\xc3"[..]), (&b"\xa9"[..], &b"1"[..])],
        ] {
            assert_eq!(
                batch.push_bytes(pairs.into_iter()),
                Err(LabelsError::NotUtf8 { name: "a".into() })
            );
        }
        assert_eq!(batch.len(), 1);
        let again = batch.push_bytes([(&b"b"[..], &b"\xc3\xa9"[..])].into_iter());
        assert_eq!(again, Ok(1));
        assert_eq!(batch.get(1).get("b"), Some("\u{e9}"));
        assert_eq!(batch.get(0).get("a"), Some("1"));
    }

    #[test]
    fn display_escapes_values() {
        let l = Labels::new([("a", "x\"y\\z\n")]).unwrap();
        assert_eq!(l.to_string(), r#"{a="x\"y\\z\n"}"#);
    }
}
