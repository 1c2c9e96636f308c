//! The on-disk layout: which fjall keyspace holds what, and how keys are built.
//!
//! Everything lives in one fjall database (one directory) with five keyspaces. Integers are
//! big-endian so that byte order equals numeric order; strings are prefixed with their length
//! (`u32` BE) so that any byte may appear in them. `ns` is the namespace's numeric id (a `u32`
//! assigned the first time a namespace name is seen, recorded in `meta`), `sid` a series id (a
//! `u64`, unique across the whole store, never reused).
//!
//! | keyspace        | key                                                      | value              |
//! |-----------------|----------------------------------------------------------|--------------------|
//! | `meta`          | `"format_version"`                                       | `u32` (currently 1) |
//! | `meta`          | `"next_namespace_id"`                                    | `u32`              |
//! | `meta`          | `"next_series_id"`                                       | `u64`              |
//! | `meta`          | `"ns/" name`                                             | `ns: u32`          |
//! | `series_ids`    | `ns | encoded labels`                                    | `sid: u64`         |
//! | `series_labels` | `ns | sid`                                               | encoded labels     |
//! | `postings`      | `ns | len name | name | len value | value | sid`         | empty              |
//! | `samples`       | `ns | sid | timestamp`                                    | `f64` bits, BE     |
//!
//! *Encoded labels* are described in [`crate::labels`]. The *timestamp* is milliseconds since the
//! Unix epoch as an `i64` with its sign bit flipped, then big-endian, so negative timestamps sort
//! before positive ones.
//!
//! Readers:
//! * `series_ids` is read once at open to rebuild the in-memory label-set → id map the write path
//!   uses; it is the authority on whether a series exists.
//! * `series_labels` turns ids found in `postings` back into label sets, and lists a namespace's
//!   series when no matcher narrows the search.
//! * `postings` is the inverted index: a prefix scan on `ns | name` gives every value of a label
//!   (and the series carrying it), one on `ns | name | value` the series with that exact pair.
//! * `samples` is scanned per series over a time range; re-writing a (series, timestamp) replaces
//!   the value, which makes redelivered writes harmless.

use crate::labels::{Labels, put_str, take_str};

pub(crate) const KS_META: &str = "meta";
pub(crate) const KS_SERIES_IDS: &str = "series_ids";
pub(crate) const KS_SERIES_LABELS: &str = "series_labels";
pub(crate) const KS_POSTINGS: &str = "postings";
pub(crate) const KS_SAMPLES: &str = "samples";

pub(crate) const META_FORMAT_VERSION: &[u8] = b"format_version";
/// Written (value `1`) to check that the store can write again after a failure.
pub(crate) const META_WRITE_PROBE: &[u8] = b"write_probe";
pub(crate) const META_NEXT_NAMESPACE_ID: &[u8] = b"next_namespace_id";
pub(crate) const META_NEXT_SERIES_ID: &[u8] = b"next_series_id";
pub(crate) const FORMAT_VERSION: u32 = 1;

pub(crate) fn meta_namespace_key(name: &str) -> Vec<u8> {
    let mut k = b"ns/".to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

pub(crate) fn series_id_key(ns: u32, labels: &Labels) -> Vec<u8> {
    let mut k = ns.to_be_bytes().to_vec();
    labels.encode_into(&mut k);
    k
}

/// Splits a `series_ids` key into the namespace id and the labels.
pub(crate) fn parse_series_id_key(key: &[u8]) -> Option<(u32, Labels)> {
    let (ns, rest) = key.split_first_chunk::<4>()?;
    Some((u32::from_be_bytes(*ns), Labels::decode(rest)?))
}

pub(crate) fn series_labels_key(ns: u32, sid: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&ns.to_be_bytes());
    k[4..].copy_from_slice(&sid.to_be_bytes());
    k
}

pub(crate) fn parse_series_labels_key(key: &[u8]) -> Option<u64> {
    let (_, sid) = key.split_first_chunk::<4>()?;
    Some(u64::from_be_bytes(sid.try_into().ok()?))
}

/// `ns | len name | name`: every posting of label `name`.
pub(crate) fn postings_name_prefix(ns: u32, name: &str) -> Vec<u8> {
    let mut k = ns.to_be_bytes().to_vec();
    put_str(&mut k, name);
    k
}

/// `ns | len name | name | len value | value`: the series carrying `name=value`.
pub(crate) fn postings_value_prefix(ns: u32, name: &str, value: &str) -> Vec<u8> {
    let mut k = postings_name_prefix(ns, name);
    put_str(&mut k, value);
    k
}

pub(crate) fn postings_key(ns: u32, name: &str, value: &str, sid: u64) -> Vec<u8> {
    let mut k = postings_value_prefix(ns, name, value);
    k.extend_from_slice(&sid.to_be_bytes());
    k
}

/// Parses what follows a [`postings_name_prefix`]: the value and the series id.
pub(crate) fn parse_postings_rest(mut rest: &[u8]) -> Option<(String, u64)> {
    let value = take_str(&mut rest)?;
    let sid: [u8; 8] = rest.try_into().ok()?;
    Some((value, u64::from_be_bytes(sid)))
}

pub(crate) fn encode_ts(ts: i64) -> [u8; 8] {
    ((ts as u64) ^ (1 << 63)).to_be_bytes()
}

pub(crate) fn decode_ts(b: [u8; 8]) -> i64 {
    (u64::from_be_bytes(b) ^ (1 << 63)) as i64
}

pub(crate) fn sample_key(ns: u32, sid: u64, ts: i64) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..4].copy_from_slice(&ns.to_be_bytes());
    k[4..12].copy_from_slice(&sid.to_be_bytes());
    k[12..].copy_from_slice(&encode_ts(ts));
    k
}

/// Decodes a `samples` entry into `(timestamp, value)`.
pub(crate) fn decode_sample(key: &[u8], value: &[u8]) -> Option<(i64, f64)> {
    let (_, ts) = key.split_last_chunk::<8>()?;
    if key.len() != 20 {
        return None;
    }
    let v: [u8; 8] = value.try_into().ok()?;
    Some((decode_ts(*ts), f64::from_bits(u64::from_be_bytes(v))))
}

pub(crate) fn encode_value(v: f64) -> [u8; 8] {
    v.to_bits().to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_sort_like_integers() {
        let ts = [i64::MIN, -1_000, -1, 0, 1, 1_700_000_000_000, i64::MAX];
        for w in ts.windows(2) {
            assert!(encode_ts(w[0]) < encode_ts(w[1]), "{} vs {}", w[0], w[1]);
        }
        for t in ts {
            assert_eq!(decode_ts(encode_ts(t)), t);
        }
    }

    #[test]
    fn sample_and_postings_keys_round_trip() {
        let k = sample_key(3, 42, -5);
        assert_eq!(decode_sample(&k, &encode_value(1.5)), Some((-5, 1.5)));
        assert_eq!(decode_sample(&k[..19], &encode_value(1.5)), None);
        assert_eq!(decode_sample(&k, &[0; 7]), None);

        let p = postings_key(1, "job", "api", 7);
        let prefix = postings_name_prefix(1, "job");
        assert!(p.starts_with(&prefix));
        assert!(p.starts_with(&postings_value_prefix(1, "job", "api")));
        assert_eq!(
            parse_postings_rest(&p[prefix.len()..]),
            Some(("api".into(), 7))
        );
        assert_eq!(parse_postings_rest(&p[prefix.len()..p.len() - 1]), None);
    }
}
