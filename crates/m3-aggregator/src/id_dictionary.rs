//! The stored form of an aggregator's series IDs: tag pairs that several series share are kept
//! once.
//!
//! A Prometheus series reaches the aggregator as M3's tag encoding of its labels (see
//! [`m3_metric::id`]), a few hundred bytes of which most are pairs thousands of other series
//! carry too (`job="node"`, a metric name, the tag names). A shard finds its series by hash
//! (`EntryMap` in `shard.rs`) and reads an ID's bytes only to flush or forget the series, so
//! the bytes can be kept in a form that is slower to read: each pair the aggregator has seen
//! before becomes a reference to one copy of it, the rest stay literal. One dictionary serves
//! every shard ([`SharedIdDictionary`]): a metric name reaches all of them, and a dictionary
//! per shard kept it once per shard (13 B of every series at 1M series over 256 shards).
//!
//! ```text
//! stored:  1 | count (varint) | per pair, one token:
//!              0 | name len (varint) | name | value len (varint) | value   a literal pair
//!              2 * symbol + 1                                           a shared pair
//!              2 * symbol + 2 | value len (varint) | value              a shared name
//!          0 | the ID's bytes                      (an ID that is not tag-encoded)
//! ```
//!
//! A pair is given a symbol the second time the aggregator sees it: the first time only a
//! 32-bit fingerprint of it is noted in a table (at least [`MIN_SEEN_SLOTS`] fingerprints,
//! and one for every [`IDS_PER_SEEN_SLOT`] IDs stored, in buckets of [`SEEN_WAYS`]), so a pair
//! only one series has (an `instance`, a series number) never costs a dictionary entry. A pair
//! that comes back before newer ones pushed its fingerprint out of its bucket gets a symbol,
//! and every ID stored after that refers to it. A bucket keeps its newest fingerprints: more
//! than [`SEEN_WAYS`] pairs that share a bucket and come round in strict turn push each other
//! out and stay literal (a matter of memory, never of the bytes).
//!
//! A pair without a symbol still shares its name the same way: the tag names an aggregator
//! sees are few, and a unique value (`instance="host-17:9100"`) is kept as the name's symbol
//! and the value's bytes. Names and pairs share one table of symbols; their bytes (a name with
//! its length, a pair with both) can never be equal, since a pair is longer than the length
//! its first two bytes give. Lengths in the stored form are varints (one byte below 128)
//! instead of the encoding's two bytes.
//!
//! Symbols are counted by the stored IDs that refer to them ([`IdDictionary::release`] is
//! called when one is forgotten), and a symbol no ID refers to is freed and its number reused.
//!
//! The pairs' bytes lie end to end in one buffer and a symbol is 12 bytes (where its pair
//! starts, its length, its count), so a dictionary entry costs its bytes plus about 20: a
//! boxed pair cost 24 more for the box and the allocator's header. The bytes of freed pairs
//! are given back by copying the live ones once they are the larger part.
//!
//! Decoding gives back exactly the bytes encoded, for any bytes: an ID that does not parse as
//! a whole tag encoding (a Graphite name, a cut-short or padded encoding) is stored as it is.

use std::sync::Arc;

use hashbrown::HashTable;
use parking_lot::RwLock;

use crate::shard::entry_hash;

/// The first two bytes of a tag-encoded ID (little-endian 10101).
const MAGIC: [u8; 2] = 10101u16.to_le_bytes();
/// Fingerprints of pairs seen once, at least, once the dictionary has stored a tag-encoded ID.
const MIN_SEEN_SLOTS: usize = 4096;
/// Stored IDs per fingerprint slot past [`MIN_SEEN_SLOTS`]: the table grows with the IDs, so
/// a pair that comes back after a set share of the other series still finds its fingerprint
/// (at 1M series, one byte a series). A grown table starts empty: the pairs seen once so far
/// are seen once more before they get a symbol.
const IDS_PER_SEEN_SLOT: usize = 4;
/// Fingerprints per bucket of the seen table (32 bytes): pairs that share a bucket and come in
/// turn still find their fingerprint there.
const SEEN_WAYS: usize = 8;
/// Dead pair bytes below this are not worth a copy.
const MIN_COMPACTED: usize = 4096;
/// Stored-form marks (first byte).
const OPAQUE: u8 = 0;
const TAGGED: u8 = 1;

/// One shared pair: where its bytes (as they appear in an ID: two lengths and two strings)
/// are in the dictionary's buffer, and how many stored IDs refer to it (0: a freed symbol).
#[derive(Debug, Clone, Copy)]
struct Pair {
    start: u32,
    len: u32,
    refs: u32,
}

impl Pair {
    fn bytes(self, buffer: &[u8]) -> &[u8] {
        &buffer[self.start as usize..(self.start + self.len) as usize]
    }
}

/// The dictionary of an aggregator, shared by all its shards.
pub(crate) type SharedIdDictionary = Arc<RwLock<IdDictionary>>;

/// Shared pairs by symbol; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct IdDictionary {
    /// By symbol; a freed symbol has no references and its number is in `free`.
    pairs: Vec<Pair>,
    free: Vec<u32>,
    /// The pairs' bytes, end to end.
    bytes: Vec<u8>,
    /// Bytes in `bytes` of freed pairs.
    dead: usize,
    /// Symbols by the hash of their pair's bytes.
    index: HashTable<u32>,
    /// Fingerprints of pairs seen once, by the low bits of their hash (0: none); allocated with
    /// the first tag-encoded ID.
    seen: Vec<u32>,
    /// Tag-encoded IDs stored and not released, which size `seen`.
    tagged_ids: usize,
}

/// The pairs of a tag-encoded ID (after the magic and count), if `id` is one exactly: every
/// pair whole and nothing after the last.
fn pairs_of(id: &[u8]) -> Option<(u16, Vec<&[u8]>)> {
    let rest = id.strip_prefix(&MAGIC)?;
    let (count, mut rest) = rest.split_first_chunk::<2>()?;
    let count = u16::from_le_bytes(*count);
    let mut pairs = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let (pair, after) = take_pair(rest)?;
        pairs.push(pair);
        rest = after;
    }
    rest.is_empty().then_some((count, pairs))
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// The varint at the front of `bytes` and the bytes after it.
fn take_varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    // Most varints of a stored ID (its count, its lengths) are one byte.
    if let Some((&byte, rest)) = bytes.split_first()
        && byte < 0x80
    {
        return Some((u64::from(byte), rest));
    }
    let mut value = 0u64;
    for (i, &byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}

/// The literal pair at the front of `bytes` (two length-prefixed strings) and the rest.
fn take_pair(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut len = 0;
    let mut rest = bytes;
    for _ in 0..2 {
        let (n, after) = rest.split_first_chunk::<2>()?;
        let n = usize::from(u16::from_le_bytes(*n));
        rest = after.get(n..)?;
        len += 2 + n;
    }
    Some((&bytes[..len], rest))
}

/// A whole pair (from [`take_pair`]) split into its name with the name's length, as a shared
/// name is kept, and its value without its length.
fn split_pair(pair: &[u8]) -> (&[u8], &[u8]) {
    let name_len = pair
        .first_chunk::<2>()
        .map_or(0, |n| usize::from(u16::from_le_bytes(*n)));
    let name = pair.get(..2 + name_len).unwrap_or(pair);
    let value = pair.get(2 + name_len + 2..).unwrap_or_default();
    (name, value)
}

/// Appends `bytes` behind their length as a varint.
fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// The string at the front of `bytes` (behind its varint length, at most `u16::MAX` as the
/// tag encoding allows) and the rest.
fn take_string(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = take_varint(bytes)?;
    let len = usize::from(u16::try_from(len).ok()?);
    (len <= rest.len()).then(|| rest.split_at(len))
}

/// Appends `bytes` behind their length as the tag encoding writes it (two bytes,
/// little-endian); [`take_string`] has checked that it fits.
fn put_tag_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// One pair of a stored tag-encoded ID.
enum Token<'a> {
    Literal {
        name: &'a [u8],
        value: &'a [u8],
    },
    /// A shared pair.
    Pair(u32),
    /// A shared name and the pair's value.
    Named {
        name: u32,
        value: &'a [u8],
    },
}

impl Token<'_> {
    /// The symbol the token refers to, if any.
    fn symbol(&self) -> Option<u32> {
        match *self {
            Token::Literal { .. } => None,
            Token::Pair(symbol) | Token::Named { name: symbol, .. } => Some(symbol),
        }
    }
}

/// The pair count of a stored tag-encoded ID (after its mark) and its tokens; the tokens end
/// early at anything [`IdDictionary::encode`] does not write.
fn tokens(stored: &[u8]) -> Option<(u64, impl Iterator<Item = Token<'_>>)> {
    let (count, mut rest) = take_varint(stored)?;
    let tokens = (0..count).map_while(move |_| {
        let (token, after) = take_varint(rest)?;
        let (token, after) = match token {
            0 => {
                let (name, after) = take_string(after)?;
                let (value, after) = take_string(after)?;
                (Token::Literal { name, value }, after)
            }
            t if t % 2 == 1 => (Token::Pair(u32::try_from(t / 2).ok()?), after),
            t => {
                let (value, after) = take_string(after)?;
                let name = u32::try_from(t / 2 - 1).ok()?;
                (Token::Named { name, value }, after)
            }
        };
        rest = after;
        Some(token)
    });
    Some((count, tokens))
}

impl IdDictionary {
    /// Appends the stored form of `id` to `out`, taking a reference to every symbol it uses.
    pub(crate) fn encode(&mut self, id: &[u8], out: &mut Vec<u8>) {
        let Some((count, pairs)) = pairs_of(id) else {
            out.push(OPAQUE);
            out.extend_from_slice(id);
            return;
        };
        self.tagged_ids += 1;
        let wanted = (self.tagged_ids / IDS_PER_SEEN_SLOT)
            .next_power_of_two()
            .max(MIN_SEEN_SLOTS);
        if self.seen.len() < wanted {
            self.seen = vec![0; wanted];
        }
        out.push(TAGGED);
        put_varint(out, u64::from(count));
        for pair in pairs {
            if let Some(symbol) = self.symbol_for(pair) {
                put_varint(out, 2 * u64::from(symbol) + 1);
                continue;
            }
            let (name, value) = split_pair(pair);
            match self.symbol_for(name) {
                Some(symbol) => put_varint(out, 2 * u64::from(symbol) + 2),
                None => {
                    out.push(0);
                    put_string(out, name.get(2..).unwrap_or_default());
                }
            }
            put_string(out, value);
        }
    }

    /// The symbol of `pair` (a whole pair, or a name with its length) with one more
    /// reference, if it has one or is seen for the second time; otherwise notes its
    /// fingerprint.
    fn symbol_for(&mut self, pair: &[u8]) -> Option<u32> {
        let hash = entry_hash(pair);
        let IdDictionary {
            pairs,
            free,
            bytes,
            index,
            seen,
            ..
        } = self;
        if let Some(&symbol) = index.find(hash, |&s| pairs[s as usize].bytes(bytes) == pair) {
            pairs[symbol as usize].refs += 1;
            return Some(symbol);
        }
        // Offsets are 32 bits: past 4 GiB of shared pairs, new ones stay literal.
        let start = u32::try_from(bytes.len()).ok()?;
        let len = u32::try_from(pair.len()).ok()?;
        start.checked_add(len)?;
        let first = hash as usize % (seen.len() / SEEN_WAYS) * SEEN_WAYS;
        let bucket = &mut seen[first..first + SEEN_WAYS];
        let fingerprint = ((hash >> 32) as u32).max(1);
        let Some(way) = bucket.iter().position(|&f| f == fingerprint) else {
            bucket.rotate_right(1);
            bucket[0] = fingerprint;
            return None;
        };
        bucket[way] = 0;
        bytes.extend_from_slice(pair);
        let entry = Pair {
            start,
            len,
            refs: 1,
        };
        let symbol = match free.pop() {
            Some(symbol) => {
                pairs[symbol as usize] = entry;
                symbol
            }
            None => {
                // A dictionary holds at most one symbol per pair of the IDs it stores, far
                // fewer than 2^32.
                pairs.push(entry);
                (pairs.len() - 1) as u32
            }
        };
        index.insert_unique(hash, symbol, |&s| {
            entry_hash(pairs[s as usize].bytes(bytes))
        });
        Some(symbol)
    }

    /// Appends the ID whose stored form (from [`encode`](Self::encode)) is `stored` to `out`.
    pub(crate) fn decode(&self, stored: &[u8], out: &mut Vec<u8>) {
        match stored.split_first() {
            Some((&TAGGED, rest)) => self.decode_tagged(rest, out),
            Some((_, rest)) => out.extend_from_slice(rest),
            None => {}
        }
    }

    /// [`decode`](Self::decode) of a tag-encoded ID; stops at anything `encode` does not write.
    fn decode_tagged(&self, stored: &[u8], out: &mut Vec<u8>) {
        let Some((count, tokens)) = tokens(stored) else {
            return;
        };
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&(count as u16).to_le_bytes());
        let shared = |symbol: u32| {
            self.pairs
                .get(symbol as usize)
                .filter(|p| p.refs > 0)
                .map_or(&[][..], |p| p.bytes(&self.bytes))
        };
        for token in tokens {
            match token {
                Token::Literal { name, value } => {
                    put_tag_string(out, name);
                    put_tag_string(out, value);
                }
                Token::Pair(symbol) => out.extend_from_slice(shared(symbol)),
                Token::Named { name, value } => {
                    out.extend_from_slice(shared(name));
                    put_tag_string(out, value);
                }
            }
        }
    }

    /// Gives back the references the stored form `stored` holds (its ID is forgotten), freeing
    /// the symbols no stored ID refers to any more.
    pub(crate) fn release(&mut self, stored: &[u8]) {
        let Some((&TAGGED, rest)) = stored.split_first() else {
            return;
        };
        self.tagged_ids = self.tagged_ids.saturating_sub(1);
        let Some((_, tokens)) = tokens(rest) else {
            return;
        };
        for token in tokens {
            let Some(symbol) = token.symbol() else {
                continue;
            };
            let Some(p) = self.pairs.get_mut(symbol as usize) else {
                continue;
            };
            if p.refs == 0 {
                continue;
            }
            p.refs -= 1;
            if p.refs > 0 {
                continue;
            }
            let p = *p;
            let hash = entry_hash(p.bytes(&self.bytes));
            if let Ok(found) = self.index.find_entry(hash, |&s| s == symbol) {
                found.remove();
            }
            self.dead += p.len as usize;
            self.free.push(symbol);
        }
        if self.dead > self.bytes.len() - self.dead && self.dead > MIN_COMPACTED {
            self.compact();
        }
    }

    /// Copies the bytes of the pairs in use into a new buffer, in symbol order.
    fn compact(&mut self) {
        let old = std::mem::take(&mut self.bytes);
        self.bytes.reserve_exact(old.len() - self.dead);
        for p in self.pairs.iter_mut() {
            if p.refs == 0 {
                (p.start, p.len) = (0, 0);
                continue;
            }
            let start = self.bytes.len() as u32;
            self.bytes.extend_from_slice(p.bytes(&old));
            p.start = start;
        }
        self.dead = 0;
    }

    /// Symbols in use (every symbol not freed has references).
    pub(crate) fn symbols(&self) -> usize {
        self.pairs.len() - self.free.len()
    }

    /// Heap bytes held (by capacity; a pair's bytes by length).
    pub(crate) fn allocation_size(&self) -> usize {
        self.pairs.capacity() * std::mem::size_of::<Pair>()
            + self.bytes.capacity()
            + self.free.capacity() * 4
            + self.index.capacity() * 5
            + self.seen.capacity() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use m3_metric::id::encode_tags;
    use proptest::prelude::*;

    fn id(tags: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_tags(
            tags.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
            &mut out,
        )
        .expect("short tags encode");
        out
    }

    /// A series of ten names, its own instance, one job.
    fn series(i: usize) -> Vec<u8> {
        id(&[
            ("__name__", &format!("metric_{}", i % 10)),
            ("instance", &format!("host-{i}:9100")),
            ("job", "node"),
        ])
    }

    #[test]
    fn shared_pairs_are_kept_once_and_unique_ones_stay_literal() {
        let mut dict = IdDictionary::default();
        let mut stored = Vec::new();
        for i in 0..1000 {
            let mut s = Vec::new();
            dict.encode(&series(i), &mut s);
            stored.push(s);
        }
        // Ten metric names and the job as pairs, `__name__` and `instance` as names; no
        // instance value.
        assert_eq!(dict.symbols(), 13);
        // The mark, the count, the metric name's symbol, the instance (the name's symbol, the
        // value's length and bytes), the job's symbol.
        let instance = "host-999:9100".len();
        assert_eq!(stored[999].len(), 1 + 1 + 1 + (1 + 1 + instance) + 1);
        assert_eq!(
            series(999).len(),
            4 + 20 + (2 + "instance".len() + 2 + instance) + 11
        );
        for (i, s) in stored.iter().enumerate() {
            let mut out = Vec::new();
            dict.decode(s, &mut out);
            assert_eq!(out, series(i));
        }
    }

    #[test]
    fn symbols_no_id_refers_to_are_freed_and_reused() {
        let mut dict = IdDictionary::default();
        let stored: Vec<Vec<u8>> = (0..100)
            .map(|i| {
                let mut s = Vec::new();
                dict.encode(&series(i), &mut s);
                s
            })
            .collect();
        assert_eq!(dict.symbols(), 13);
        for s in &stored {
            dict.release(s);
        }
        assert_eq!(dict.symbols(), 0);
        assert_eq!(dict.index.len(), 0);
        let mut s = Vec::new();
        dict.encode(&series(0), &mut s);
        dict.encode(&series(10), &mut s);
        assert_eq!(dict.pairs.len(), 13, "freed symbol numbers are taken again");
    }

    #[test]
    fn the_bytes_of_freed_pairs_are_given_back() {
        let named = |i: usize| {
            id(&[
                (
                    "__name__",
                    &format!("a_rather_long_metric_name_{}", i % 500),
                ),
                ("instance", &format!("host-{i}:9100")),
            ])
        };
        let mut dict = IdDictionary::default();
        let stored: Vec<Vec<u8>> = (0..2000)
            .map(|i| {
                let mut s = Vec::new();
                dict.encode(&named(i), &mut s);
                s
            })
            .collect();
        // The names as pairs, `__name__` and `instance` as names.
        assert_eq!(dict.symbols(), 502);
        let full = dict.bytes.len();
        // Every series of the first 450 names goes.
        for (i, s) in stored.iter().enumerate() {
            if i % 500 < 450 {
                dict.release(s);
            }
        }
        assert_eq!(dict.symbols(), 52);
        assert!(
            dict.bytes.len() < full / 4,
            "{} of {full} bytes kept",
            dict.bytes.len()
        );
        for (i, s) in stored.iter().enumerate().filter(|(i, _)| i % 500 >= 450) {
            let mut out = Vec::new();
            dict.decode(s, &mut out);
            assert_eq!(out, named(i));
        }
    }

    proptest! {
        /// Any bytes, tag-encoded or not, cut short or padded, come back exactly, and the
        /// symbols of IDs released in any order are all freed.
        #[test]
        fn every_id_decodes_to_its_bytes(
            ids in proptest::collection::vec(
                prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..40),
                    (0usize..20, 0usize..3, any::<u8>()).prop_map(|(i, cut, pad)| {
                        let mut b = series(i);
                        match cut {
                            0 => {}
                            1 => { b.truncate(b.len() - 1 - usize::from(pad) % 8); }
                            _ => b.push(pad),
                        }
                        b
                    }),
                    // Names and values of every length class a varint has, empty ones too,
                    // repeating so that pairs and names both become symbols.
                    proptest::collection::vec((0u8..4, 0usize..3, 0usize..200), 0..5)
                        .prop_map(|tags| {
                            let tags: Vec<(String, String)> = tags
                                .into_iter()
                                .map(|(n, v, len)| {
                                    let name = char::from(b'a' + n)
                                        .to_string()
                                        .repeat(usize::from(n) * 50);
                                    (name, format!("{v}{}", "x".repeat(len % 3 * 70)))
                                })
                                .collect();
                            let tags: Vec<(&str, &str)> =
                                tags.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                            id(&tags)
                        }),
                ],
                1..60,
            ),
            release_order in any::<u64>(),
        ) {
            let mut dict = IdDictionary::default();
            let mut stored = Vec::new();
            for id in &ids {
                let mut s = Vec::new();
                dict.encode(id, &mut s);
                stored.push(s);
            }
            let referred = dict.pairs.iter().filter(|p| p.refs > 0).count();
            prop_assert_eq!(dict.symbols(), referred);
            for (id, s) in ids.iter().zip(&stored) {
                let mut out = Vec::new();
                dict.decode(s, &mut out);
                prop_assert_eq!(&out, id);
            }
            let mut order: Vec<usize> = (0..stored.len()).collect();
            let mut x = release_order;
            for i in (1..order.len()).rev() {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                order.swap(i, (x >> 33) as usize % (i + 1));
            }
            for (k, &i) in order.iter().enumerate() {
                dict.release(&stored[i]);
                // The IDs not yet released still decode.
                for &j in &order[k + 1..] {
                    let mut out = Vec::new();
                    dict.decode(&stored[j], &mut out);
                    prop_assert_eq!(&out, &ids[j]);
                }
            }
            prop_assert_eq!(dict.symbols(), 0);
        }
    }
}
