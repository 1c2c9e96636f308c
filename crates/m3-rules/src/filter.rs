//! M3's tag filter syntax: which series a rule applies to.
//!
//! A filter is a space-separated list of `tag:pattern` terms, all of which must match
//! (`app:nginx* __name__:http_requests_total env:!prod`). `__name__` is the metric name. A
//! term's tag must be present for it to match, negated or not (`env:!prod` does not match a
//! series without `env`), except `__name__`, which a nameless series matches for `*` and for a
//! negation, as in M3.
//!
//! Patterns (byte-wise, case-sensitive, no escapes) follow `src/metrics/filters/filter.go`:
//!
//! | pattern | matches |
//! |---|---|
//! | `abc` | exactly `abc` |
//! | `*` | anything, also an empty value |
//! | `abc*`, `*abc` | a prefix, a suffix |
//! | `ab*cd` | starts with `ab` and ends with `cd` (checked independently) |
//! | `*abc*` | contains `abc` (literal) |
//! | `?` | any one byte |
//! | `[abc]`, `[a-z0-9]`, `[!a-z]` | one byte of a set, of ranges (when the second byte is `-`), or not |
//! | `{a,bc,d}` | one of the alternatives (the longest that fits, no backtracking) |
//! | `!pattern` | anything the pattern does not match |
//!
//! Any other placement of `*` (`a*b*c`, `**`), an unclosed `[` or `{`, an empty `[]` or `{}`,
//! a range out of order and a lone `!` are errors, with M3's wording.

use std::fmt;

/// Why a filter does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// A term is not `tag:pattern` with exactly one colon.
    #[error("invalid filter {term:?}: expecting tag pattern pairs")]
    NotAPair {
        /// The term.
        term: String,
    },
    /// A term with no tag name.
    #[error("invalid filter {term:?}: empty tag name")]
    EmptyTagName {
        /// The term.
        term: String,
    },
    /// A term with no pattern.
    #[error("invalid filter {term:?}: empty filter pattern")]
    EmptyPattern {
        /// The term.
        term: String,
    },
    /// The same tag twice.
    #[error("invalid filter {filter:?}: duplicate tag {tag:?} found")]
    DuplicateTag {
        /// The whole filter.
        filter: String,
        /// The tag.
        tag: String,
    },
    /// A pattern that does not parse.
    #[error("invalid filter pattern {pattern:?} for tag {tag:?}: {reason}")]
    BadPattern {
        /// The tag.
        tag: String,
        /// The pattern.
        pattern: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No term at all.
    #[error("the filter is empty: name at least one tag, e.g. __name__:http_requests_total")]
    Empty,
}

/// The tag that holds the metric name.
pub const NAME_TAG: &[u8] = b"__name__";

/// A parsed filter: every term must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    text: String,
    /// Terms sorted by tag name.
    terms: Vec<(Vec<u8>, ValueFilter)>,
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Filter {
    /// Parses `text`.
    ///
    /// # Errors
    /// [`FilterError`] for a malformed term or pattern, a repeated tag, or no term at all.
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        let mut terms: Vec<(Vec<u8>, ValueFilter)> = Vec::new();
        for term in text
            .trim()
            .split(' ')
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            let mut parts = term.split(':');
            let (Some(tag), Some(pattern), None) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(FilterError::NotAPair { term: term.into() });
            };
            if tag.is_empty() {
                return Err(FilterError::EmptyTagName { term: term.into() });
            }
            if pattern.is_empty() {
                return Err(FilterError::EmptyPattern { term: term.into() });
            }
            if terms.iter().any(|(t, _)| t == tag.as_bytes()) {
                return Err(FilterError::DuplicateTag {
                    filter: text.into(),
                    tag: tag.into(),
                });
            }
            let value = ValueFilter::parse(pattern.as_bytes()).map_err(|reason| {
                FilterError::BadPattern {
                    tag: tag.into(),
                    pattern: pattern.into(),
                    reason,
                }
            })?;
            terms.push((tag.as_bytes().to_vec(), value));
        }
        if terms.is_empty() {
            return Err(FilterError::Empty);
        }
        terms.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Filter {
            text: text.trim().to_string(),
            terms,
        })
    }

    /// Whether a series with these tags matches. `tags` gives a tag's value by name.
    pub fn matches<'a>(&self, tag: impl Fn(&[u8]) -> Option<&'a [u8]>) -> bool {
        self.terms.iter().all(|(name, value)| match tag(name) {
            Some(v) => value.matches(v),
            // A nameless series: M3 matches the name term against "nothing", which `*` and a
            // negation accept.
            None if name == NAME_TAG => value.matches_absent(),
            None => false,
        })
    }
}

/// One term's pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ValueFilter {
    Not(Box<ValueFilter>),
    All,
    Whole(Vec<Element>),
    Prefix(Vec<Element>),
    Suffix(Vec<Element>),
    PrefixSuffix(Vec<Element>, Vec<Element>),
    Contains(Vec<u8>),
}

/// One element of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Element {
    Literal(Vec<u8>),
    AnyByte,
    Class { negated: bool, set: ByteSet },
    Alternatives(Vec<Vec<u8>>),
}

/// A set of bytes.
#[derive(Clone, PartialEq, Eq)]
struct ByteSet([u64; 4]);

impl fmt::Debug for ByteSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ByteSet")
    }
}

impl ByteSet {
    fn insert(&mut self, b: u8) {
        self.0[usize::from(b >> 6)] |= 1 << (b & 63);
    }
    fn contains(&self, b: u8) -> bool {
        self.0[usize::from(b >> 6)] & (1 << (b & 63)) != 0
    }
}

const INVALID: &str = "invalid filter pattern defined";

impl ValueFilter {
    fn parse(pattern: &[u8]) -> Result<ValueFilter, &'static str> {
        if let Some(rest) = pattern.strip_prefix(b"!") {
            if rest.is_empty() {
                return Err(INVALID);
            }
            return Ok(ValueFilter::Not(Box::new(ValueFilter::parse_positive(
                rest,
            )?)));
        }
        ValueFilter::parse_positive(pattern)
    }

    fn parse_positive(pattern: &[u8]) -> Result<ValueFilter, &'static str> {
        let stars: Vec<usize> = pattern
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'*')
            .map(|(i, _)| i)
            .collect();
        let n = pattern.len();
        match stars.as_slice() {
            [] => Ok(ValueFilter::Whole(elements(pattern)?)),
            [0] if n == 1 => Ok(ValueFilter::All),
            [i] if *i == n - 1 => Ok(ValueFilter::Prefix(elements(&pattern[..n - 1])?)),
            [0] => Ok(ValueFilter::Suffix(elements(&pattern[1..])?)),
            [i] => Ok(ValueFilter::PrefixSuffix(
                elements(&pattern[..*i])?,
                elements(&pattern[i + 1..])?,
            )),
            [0, j] if *j == n - 1 && n > 2 => {
                let inner = &pattern[1..n - 1];
                if inner.iter().any(|b| matches!(b, b'?' | b'[' | b'{')) {
                    return Err(INVALID);
                }
                Ok(ValueFilter::Contains(inner.to_vec()))
            }
            _ => Err(INVALID),
        }
    }

    fn matches(&self, value: &[u8]) -> bool {
        match self {
            ValueFilter::Not(inner) => !inner.matches(value),
            ValueFilter::All => true,
            ValueFilter::Whole(elems) => match_forward(elems, value) == Some(value.len()),
            ValueFilter::Prefix(elems) => match_forward(elems, value).is_some(),
            ValueFilter::Suffix(elems) => match_backward(elems, value).is_some(),
            ValueFilter::PrefixSuffix(start, end) => {
                match_forward(start, value).is_some() && match_backward(end, value).is_some()
            }
            ValueFilter::Contains(needle) => {
                needle.is_empty() || value.windows(needle.len()).any(|w| w == needle.as_slice())
            }
        }
    }

    /// Matching a tag that is absent (only for the name tag).
    fn matches_absent(&self) -> bool {
        match self {
            ValueFilter::All => true,
            ValueFilter::Not(inner) => !inner.matches_absent(),
            _ => false,
        }
    }
}

/// Splits a `*`-free pattern into elements.
fn elements(pattern: &[u8]) -> Result<Vec<Element>, &'static str> {
    let mut out = Vec::new();
    let mut literal = Vec::new();
    let mut i = 0;
    let flush = |literal: &mut Vec<u8>, out: &mut Vec<Element>| {
        if !literal.is_empty() {
            out.push(Element::Literal(std::mem::take(literal)));
        }
    };
    while i < pattern.len() {
        match pattern[i] {
            b'?' => {
                flush(&mut literal, &mut out);
                out.push(Element::AnyByte);
                i += 1;
            }
            b'[' => {
                flush(&mut literal, &mut out);
                let close = pattern[i + 1..]
                    .iter()
                    .position(|b| *b == b']')
                    .ok_or(INVALID)?;
                let body = &pattern[i + 1..i + 1 + close];
                out.push(class(body)?);
                i += close + 2;
            }
            b'{' => {
                flush(&mut literal, &mut out);
                let close = pattern[i + 1..]
                    .iter()
                    .position(|b| *b == b'}')
                    .ok_or(INVALID)?;
                let body = &pattern[i + 1..i + 1 + close];
                if body.is_empty() {
                    return Err(INVALID);
                }
                out.push(Element::Alternatives(
                    body.split(|b| *b == b',').map(<[u8]>::to_vec).collect(),
                ));
                i += close + 2;
            }
            b => {
                literal.push(b);
                i += 1;
            }
        }
    }
    flush(&mut literal, &mut out);
    Ok(out)
}

/// A `[...]` class body (without the brackets).
fn class(body: &[u8]) -> Result<Element, &'static str> {
    if body.is_empty() {
        return Err(INVALID);
    }
    let (negated, body) = match body.strip_prefix(b"!") {
        Some(rest) => (true, rest),
        None => (false, body),
    };
    let mut set = ByteSet([0; 4]);
    if body.get(1) == Some(&b'-') {
        if body.len() % 3 != 0 {
            return Err(INVALID);
        }
        for triple in body.chunks(3) {
            let (lo, dash, hi) = (triple[0], triple[1], triple[2]);
            if dash != b'-' || lo > hi {
                return Err(INVALID);
            }
            for b in lo..=hi {
                set.insert(b);
            }
        }
    } else {
        for b in body {
            set.insert(*b);
        }
    }
    Ok(Element::Class { negated, set })
}

/// Matches `elems` from the start of `value`; the bytes consumed, or `None`.
fn match_forward(elems: &[Element], value: &[u8]) -> Option<usize> {
    let mut pos = 0;
    for elem in elems {
        let rest = &value[pos..];
        pos += match elem {
            Element::Literal(lit) => rest.starts_with(lit).then_some(lit.len())?,
            Element::AnyByte => (!rest.is_empty()).then_some(1)?,
            Element::Class { negated, set } => {
                let b = *rest.first()?;
                (set.contains(b) != *negated).then_some(1)?
            }
            Element::Alternatives(alts) => alts
                .iter()
                .filter(|a| !a.is_empty() && rest.starts_with(a))
                .map(Vec::len)
                .max()?,
        };
    }
    Some(pos)
}

/// Matches `elems` against the end of `value`, last element first; the bytes consumed.
fn match_backward(elems: &[Element], value: &[u8]) -> Option<usize> {
    let mut end = value.len();
    for elem in elems.iter().rev() {
        let rest = &value[..end];
        end -= match elem {
            Element::Literal(lit) => rest.ends_with(lit).then_some(lit.len())?,
            Element::AnyByte => (!rest.is_empty()).then_some(1)?,
            Element::Class { negated, set } => {
                let b = *rest.last()?;
                (set.contains(b) != *negated).then_some(1)?
            }
            Element::Alternatives(alts) => alts
                .iter()
                .filter(|a| !a.is_empty() && rest.ends_with(a))
                .map(Vec::len)
                .max()?,
        };
    }
    Some(value.len() - end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(pattern: &str) -> ValueFilter {
        ValueFilter::parse(pattern.as_bytes()).unwrap()
    }

    #[test]
    fn value_patterns_match_as_m3s() {
        let cases: &[(&str, &[&str], &[&str])] = &[
            ("foo", &["foo"], &["fo", "foob", "Foo"]),
            ("foo*", &["foo", "foobar"], &["fo", "xfoo"]),
            ("*bar", &["bar", "foobar"], &["barx"]),
            ("*cat*", &["cat", "baztestcat"], &["ca"]),
            ("foo*bar", &["foobar", "foozapbar"], &["bazbar"]),
            ("foo*oar", &["fooar"], &["foar"]),
            ("ba?[0-9][!a-z]9", &["bar959", "bat449"], &["bar9"]),
            ("{ba,fo,car}*", &["ba", "foo", "car"], &["ca"]),
            ("!foo*bar", &["bazbar"], &["foobar", "foozapbar"]),
            ("[!cC]ar", &["bar"], &["car", "Car"]),
            ("nginx*", &["nginx", "nginx-edge"], &["my-nginx"]),
            ("!prod", &["dev", ""], &["prod"]),
            ("[_a-z]x", &["_x", "ax", "-x", "zx"], &["bx"]),
            ("*", &["", "anything"], &[]),
            // Greedy, no backtracking: "ab" is taken, then "bc" does not fit "c".
            ("{a,ab}bc", &["abbc"], &["abc"]),
        ];
        for (pattern, yes, no) in cases {
            let f = value(pattern);
            for v in *yes {
                assert!(f.matches(v.as_bytes()), "{pattern} should match {v:?}");
            }
            for v in *no {
                assert!(!f.matches(v.as_bytes()), "{pattern} should not match {v:?}");
            }
        }
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in [
            "!",
            "**",
            "***",
            "*too*many*",
            "*too**many",
            "to*o*many",
            "to*o*ma*ny",
            "abc[sdf",
            "ab]c[sdf",
            "abc[z-a]",
            "*con[tT]ains*",
            "*con{tT}ains*",
            "*con?ains*",
            "abc[a-zA-Z0-]",
            "abc[a-zA-Z0]",
            "abc[a-zZ-A]",
            "ab}c{sdf",
            "ab{}sdf",
            "ab[]sdf",
        ] {
            assert!(ValueFilter::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    fn tags<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&[u8]) -> Option<&'a [u8]> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(n, _)| n.as_bytes() == name)
                .map(|(_, v)| v.as_bytes())
        }
    }

    #[test]
    fn every_term_must_match_and_present() {
        let f = Filter::parse("app:nginx* __name__:foo env:!prod").unwrap();
        let cases: &[(&[(&str, &str)], bool)] = &[
            (
                &[("__name__", "foo"), ("app", "nginx-edge"), ("env", "dev")],
                true,
            ),
            (&[("__name__", "foo"), ("app", "nginx-edge")], false),
            (
                &[("__name__", "foo"), ("app", "nginx"), ("env", "prod")],
                false,
            ),
            (
                &[("__name__", "foobar"), ("app", "nginx"), ("env", "dev")],
                false,
            ),
            (
                &[("__name__", "foo"), ("app", "Nginx"), ("env", "dev")],
                false,
            ),
            (
                &[
                    ("__name__", "foo"),
                    ("app", "nginx"),
                    ("env", "dev"),
                    ("zone", "x"),
                ],
                true,
            ),
        ];
        for (series, want) in cases {
            assert_eq!(f.matches(tags(series)), *want, "{series:?}");
        }
        let nameless = Filter::parse("__name__:!foo").unwrap();
        assert!(nameless.matches(tags(&[("a", "b")])));
        assert!(
            !Filter::parse("__name__:foo*")
                .unwrap()
                .matches(tags(&[("a", "b")]))
        );
    }

    #[test]
    fn malformed_filters_name_the_term() {
        assert_eq!(Filter::parse("  ").unwrap_err(), FilterError::Empty);
        assert_eq!(
            Filter::parse("a:b c").unwrap_err(),
            FilterError::NotAPair { term: "c".into() }
        );
        assert_eq!(
            Filter::parse("a:b:c").unwrap_err(),
            FilterError::NotAPair {
                term: "a:b:c".into()
            }
        );
        assert!(matches!(
            Filter::parse(":x").unwrap_err(),
            FilterError::EmptyTagName { .. }
        ));
        assert!(matches!(
            Filter::parse("env:").unwrap_err(),
            FilterError::EmptyPattern { .. }
        ));
        assert!(matches!(
            Filter::parse("a:1 a:2").unwrap_err(),
            FilterError::DuplicateTag { .. }
        ));
        let bad = Filter::parse("a:[z-a]").unwrap_err().to_string();
        assert_eq!(
            bad,
            "invalid filter pattern \"[z-a]\" for tag \"a\": invalid filter pattern defined"
        );
    }
}
