//! Metric IDs: M3's tag encoding, and the names of aggregated outputs.
//!
//! A Prometheus series is identified by its label set. Coordinators turn it into an ID by sorting
//! the labels by name and encoding them the way M3 does:
//!
//! ```text
//! magic u16 LE = 10101 ("u'") | count u16 LE | count × (len u16 LE, name, len u16 LE, value)
//! ```
//!
//! Every coordinator produces the same bytes for the same series, so every coordinator picks the
//! same shard, and the aggregators see one series however Prometheus load-balances. IDs that do
//! not start with the magic (Graphite-style `a.b.c`, or anything a client sends) are opaque bytes.
//!
//! ## Output names
//! When one series yields several aggregations (a timer's Sum, P99, Max…), each is its own
//! series. For a tag-encoded ID the aggregation's output name is appended to `__name__` after a
//! colon — `rpc_latency` becomes `rpc_latency:p99`, `rpc_latency:upper`, `rpc_latency:sum_sq` —
//! colons being Prometheus's mark of a derived series. For an opaque ID, `.p99` is appended to
//! the bytes, as M3 does. A counter or gauge aggregated one way only keeps its name unchanged
//! (the engine decides when to suffix).

use crate::label_bytes::{SHORT_PART, push_short};

/// M3's tag-encoding magic number.
pub const TAG_MAGIC: u16 = 10101;
/// The tag that carries the metric name.
pub const NAME_TAG: &[u8] = b"__name__";
/// The tag that marks rollup outputs.
pub const ROLLUP_TAG: &[u8] = b"__rollup__";

/// An ID that could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// More than 65535 tags, or a name or value longer than 65535 bytes.
    #[error("tag {what} too long: {len} > 65535")]
    TooLong {
        /// What was too long.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// The ID ends inside a tag.
    #[error("tag-encoded ID is truncated")]
    Truncated,
    /// The ID does not start with the magic number.
    #[error("ID is not tag-encoded")]
    NotTagEncoded,
}

/// Appends the tag encoding of `tags` (already sorted by name) to `out`.
///
/// `out` is not cleared, so a caller can reuse one buffer for many IDs without allocating.
///
/// # Errors
/// [`IdError::TooLong`] for more than 65535 tags or a name or value longer than 65535 bytes;
/// `out` is then restored to its length on entry.
pub fn encode_tags<'a, I>(tags: I, out: &mut Vec<u8>) -> Result<(), IdError>
where
    I: IntoIterator<Item = (&'a [u8], &'a [u8])>,
{
    let start = out.len();
    out.extend_from_slice(&TAG_MAGIC.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    let mut count: usize = 0;
    for (name, value) in tags {
        let lengths = part_len(name, "name").and_then(|n| Ok((n, part_len(value, "value")?)));
        let (name_len, value_len) = match lengths {
            Ok(lengths) => lengths,
            Err(e) => {
                out.truncate(start);
                return Err(e);
            }
        };
        // One capacity check for the whole tag rather than one per piece, with the slack
        // `push_short` writes past a part.
        out.reserve(4 + name.len() + value.len() + SHORT_PART);
        out.extend_from_slice(&name_len.to_le_bytes());
        push_short(out, name);
        out.extend_from_slice(&value_len.to_le_bytes());
        push_short(out, value);
        count += 1;
    }
    let Ok(count) = u16::try_from(count) else {
        out.truncate(start);
        return Err(IdError::TooLong {
            what: "count",
            len: count,
        });
    };
    out[start + 2..start + 4].copy_from_slice(&count.to_le_bytes());
    Ok(())
}

/// The length prefix of a tag name or value.
#[inline]
fn part_len(bytes: &[u8], what: &'static str) -> Result<u16, IdError> {
    u16::try_from(bytes.len()).map_err(|_| IdError::TooLong {
        what,
        len: bytes.len(),
    })
}

/// Whether `id` starts with the tag-encoding magic.
pub fn is_tag_encoded(id: &[u8]) -> bool {
    id.len() >= 4 && id[..2] == TAG_MAGIC.to_le_bytes()
}

/// Iterates the `(name, value)` pairs of a tag-encoded ID without allocating.
#[derive(Debug, Clone)]
pub struct TagIter<'a> {
    rest: &'a [u8],
    remaining: u16,
}

impl<'a> TagIter<'a> {
    /// Starts iterating `id`.
    ///
    /// # Errors
    /// [`IdError::NotTagEncoded`] when the magic is missing.
    pub fn new(id: &'a [u8]) -> Result<TagIter<'a>, IdError> {
        if !is_tag_encoded(id) {
            return Err(IdError::NotTagEncoded);
        }
        Ok(TagIter {
            remaining: u16::from_le_bytes([id[2], id[3]]),
            rest: &id[4..],
        })
    }

    fn take_part(&mut self) -> Result<&'a [u8], IdError> {
        if self.rest.len() < 2 {
            return Err(IdError::Truncated);
        }
        let len = usize::from(u16::from_le_bytes([self.rest[0], self.rest[1]]));
        let part = self.rest.get(2..2 + len).ok_or(IdError::Truncated)?;
        self.rest = &self.rest[2 + len..];
        Ok(part)
    }
}

impl<'a> Iterator for TagIter<'a> {
    type Item = Result<(&'a [u8], &'a [u8]), IdError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let pair = self
            .take_part()
            .and_then(|name| Ok((name, self.take_part()?)));
        if pair.is_err() {
            self.remaining = 0;
        }
        Some(pair)
    }
}

/// Decodes a tag-encoded ID into owned UTF-8 `(name, value)` pairs (lossy for invalid UTF-8).
///
/// # Errors
/// When `id` is not tag-encoded or is truncated.
pub fn decode_tags(id: &[u8]) -> Result<Vec<(String, String)>, IdError> {
    TagIter::new(id)?
        .map(|pair| {
            pair.map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
        })
        .collect()
}

/// Writes into `out` the ID of the output of `id` whose series name gets `suffix` (see the
/// module doc: `__name__` gains `:suffix` for tag-encoded IDs, opaque IDs gain `.suffix`).
///
/// # Errors
/// When `id` is tag-encoded but malformed, or the new name is too long.
pub fn with_suffix(id: &[u8], suffix: &str, out: &mut Vec<u8>) -> Result<(), IdError> {
    out.clear();
    if !is_tag_encoded(id) {
        out.extend_from_slice(id);
        out.push(b'.');
        out.extend_from_slice(suffix.as_bytes());
        return Ok(());
    }
    let tags: Vec<(&[u8], &[u8])> = TagIter::new(id)?.collect::<Result<_, _>>()?;
    let mut renamed: Vec<u8> = Vec::new();
    let name = tags.iter().find(|(n, _)| *n == NAME_TAG).map(|(_, v)| *v);
    if let Some(name) = name {
        renamed.extend_from_slice(name);
        renamed.push(b':');
    }
    renamed.extend_from_slice(suffix.as_bytes());
    let mut with_name: Vec<(&[u8], &[u8])> = tags
        .into_iter()
        .map(|(n, v)| {
            if n == NAME_TAG {
                (n, renamed.as_slice())
            } else {
                (n, v)
            }
        })
        .collect();
    if name.is_none() {
        // A series without a name gets one from the suffix alone, kept in sorted position.
        let pos = with_name.partition_point(|(n, _)| *n < NAME_TAG);
        with_name.insert(pos, (NAME_TAG, renamed.as_slice()));
    }
    encode_tags(with_name, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(tags: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_tags(
            tags.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
            &mut out,
        )
        .unwrap();
        out
    }

    #[test]
    fn encoding_matches_m3_layout() {
        let id = encode(&[("__name__", "up"), ("job", "x")]);
        let mut want = vec![0x75, 0x27, 2, 0];
        want.extend_from_slice(&[8, 0]);
        want.extend_from_slice(b"__name__");
        want.extend_from_slice(&[2, 0]);
        want.extend_from_slice(b"up");
        want.extend_from_slice(&[3, 0]);
        want.extend_from_slice(b"job");
        want.extend_from_slice(&[1, 0]);
        want.extend_from_slice(b"x");
        assert_eq!(id, want);
        assert_eq!(&id[..2], b"u'");
    }

    #[test]
    fn truncated_ids_are_errors_not_panics() {
        let id = encode(&[("__name__", "up"), ("job", "x")]);
        for cut in 4..id.len() {
            assert_eq!(
                decode_tags(&id[..cut]),
                Err(IdError::Truncated),
                "cut {cut}"
            );
        }
        assert_eq!(decode_tags(b"ab"), Err(IdError::NotTagEncoded));
    }

    #[test]
    fn suffix_renames_tagged_and_appends_to_opaque() {
        let id = encode(&[("__name__", "rpc"), ("job", "x")]);
        let mut out = Vec::new();
        with_suffix(&id, "p99", &mut out).unwrap();
        assert_eq!(out, encode(&[("__name__", "rpc:p99"), ("job", "x")]));
        with_suffix(b"stats.rpc", "p99", &mut out).unwrap();
        assert_eq!(out, b"stats.rpc.p99");
        let nameless = encode(&[("a", "1"), ("z", "2")]);
        with_suffix(&nameless, "upper", &mut out).unwrap();
        assert_eq!(
            out,
            encode(&[("__name__", "upper"), ("a", "1"), ("z", "2")])
        );
    }

    #[test]
    fn too_long_value_leaves_buffer_untouched() {
        let mut out = vec![1, 2, 3];
        let long = vec![b'x'; 70_000];
        let err = encode_tags([(b"a".as_slice(), long.as_slice())], &mut out).unwrap_err();
        assert_eq!(
            err,
            IdError::TooLong {
                what: "value",
                len: 70_000
            }
        );
        assert_eq!(out, vec![1, 2, 3]);
    }

    proptest! {
        #[test]
        fn tags_round_trip(tags in proptest::collection::btree_map("[a-z_]{1,12}", "[ -~]{0,20}", 0..12)) {
            let mut out = Vec::new();
            encode_tags(tags.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())), &mut out).unwrap();
            let decoded = decode_tags(&out).unwrap();
            let want: Vec<(String, String)> = tags.into_iter().collect();
            prop_assert_eq!(decoded, want);
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut id = vec![0x75, 0x27];
            id.extend(bytes);
            let _ = decode_tags(&id);
        }
    }
}
