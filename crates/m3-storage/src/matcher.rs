//! Label matchers with Prometheus semantics.
//!
//! A matcher tests one label of a series: `job="api"`, `job!="api"`, `job=~"api|web"`,
//! `job!~"test.*"`. Two rules from Prometheus matter and are easy to get wrong:
//!
//! * Regexes are **fully anchored**: `=~"api"` matches `api` only, not `rapid`. The pattern is
//!   compiled as `^(?:pattern)$`.
//! * A series **without** the label is tested as if the label had the empty value. So `job=""`
//!   selects series lacking `job`, `job!=""` selects those having it, and `job=~".*"` matches
//!   everything.
//!
//! The store uses [`Matcher::matches_empty`] to decide whether the inverted index can narrow a
//! query: a matcher that rejects the empty value can only be satisfied by series that carry the
//! label, so its postings bound the result.

use std::fmt;

use regex::Regex;

use crate::error::{Error, Result};
use crate::labels::Labels;

/// A regex compiled fully anchored, remembering the pattern as the user wrote it.
#[derive(Clone)]
pub struct AnchoredRegex {
    pattern: String,
    regex: Regex,
}

impl AnchoredRegex {
    /// Compiles `pattern` as `^(?:pattern)$`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRegex`] when the pattern does not compile (the error names `label`).
    pub fn new(label: &str, pattern: &str) -> Result<Self> {
        let regex = Regex::new(&format!("^(?:{pattern})$")).map_err(|e| Error::InvalidRegex {
            label: label.to_string(),
            pattern: pattern.to_string(),
            source: Box::new(e),
        })?;
        Ok(AnchoredRegex {
            pattern: pattern.to_string(),
            regex,
        })
    }

    /// The pattern as written, without the anchors.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Whether the whole of `s` matches.
    pub fn is_match(&self, s: &str) -> bool {
        self.regex.is_match(s)
    }
}

impl fmt::Debug for AnchoredRegex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.pattern)
    }
}

impl PartialEq for AnchoredRegex {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern
    }
}

/// One label matcher. Build with [`Matcher::equal`], [`Matcher::not_equal`], [`Matcher::regex`],
/// [`Matcher::not_regex`].
#[derive(Debug, Clone, PartialEq)]
pub enum Matcher {
    /// `name="value"`
    Equal {
        /// Label name.
        name: String,
        /// Exact value.
        value: String,
    },
    /// `name!="value"`
    NotEqual {
        /// Label name.
        name: String,
        /// Rejected value.
        value: String,
    },
    /// `name=~"regex"`
    Regex {
        /// Label name.
        name: String,
        /// Anchored regex.
        regex: AnchoredRegex,
    },
    /// `name!~"regex"`
    NotRegex {
        /// Label name.
        name: String,
        /// Anchored regex.
        regex: AnchoredRegex,
    },
}

impl Matcher {
    /// `name="value"`.
    pub fn equal(name: impl Into<String>, value: impl Into<String>) -> Self {
        Matcher::Equal {
            name: name.into(),
            value: value.into(),
        }
    }

    /// `name!="value"`.
    pub fn not_equal(name: impl Into<String>, value: impl Into<String>) -> Self {
        Matcher::NotEqual {
            name: name.into(),
            value: value.into(),
        }
    }

    /// `name=~"pattern"`, anchored.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRegex`] when the pattern does not compile.
    pub fn regex(name: impl Into<String>, pattern: &str) -> Result<Self> {
        let name = name.into();
        let regex = AnchoredRegex::new(&name, pattern)?;
        Ok(Matcher::Regex { name, regex })
    }

    /// `name!~"pattern"`, anchored.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRegex`] when the pattern does not compile.
    pub fn not_regex(name: impl Into<String>, pattern: &str) -> Result<Self> {
        let name = name.into();
        let regex = AnchoredRegex::new(&name, pattern)?;
        Ok(Matcher::NotRegex { name, regex })
    }

    /// The label this matcher tests.
    pub fn name(&self) -> &str {
        match self {
            Matcher::Equal { name, .. }
            | Matcher::NotEqual { name, .. }
            | Matcher::Regex { name, .. }
            | Matcher::NotRegex { name, .. } => name,
        }
    }

    /// Whether a label value satisfies the matcher (`""` stands for "label absent").
    pub fn matches_value(&self, v: &str) -> bool {
        match self {
            Matcher::Equal { value, .. } => v == value,
            Matcher::NotEqual { value, .. } => v != value,
            Matcher::Regex { regex, .. } => regex.is_match(v),
            Matcher::NotRegex { regex, .. } => !regex.is_match(v),
        }
    }

    /// Whether a series lacking the label satisfies the matcher.
    pub fn matches_empty(&self) -> bool {
        self.matches_value("")
    }

    /// Whether a series with these labels satisfies the matcher.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.matches_value(labels.get(self.name()).unwrap_or(""))
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Matcher::Equal { name, value } => write!(f, "{name}={value:?}"),
            Matcher::NotEqual { name, value } => write!(f, "{name}!={value:?}"),
            Matcher::Regex { name, regex } => write!(f, "{name}=~{:?}", regex.pattern()),
            Matcher::NotRegex { name, regex } => write!(f, "{name}!~{:?}", regex.pattern()),
        }
    }
}

/// Whether `labels` satisfies every matcher.
pub fn matches_all(matchers: &[Matcher], labels: &Labels) -> bool {
    matchers.iter().all(|m| m.matches(labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(pairs: &[(&str, &str)]) -> Labels {
        Labels::new(pairs.iter().copied()).unwrap()
    }

    #[test]
    fn regexes_are_anchored() {
        let m = Matcher::regex("job", "api").unwrap();
        assert!(m.matches_value("api"));
        assert!(!m.matches_value("rapid"));
        let m = Matcher::regex("job", "a|b").unwrap();
        assert!(m.matches_value("a") && m.matches_value("b") && !m.matches_value("ab"));
    }

    #[test]
    fn missing_label_is_empty_value() {
        let s = l(&[("__name__", "up")]);
        assert!(Matcher::equal("job", "").matches(&s));
        assert!(!Matcher::not_equal("job", "").matches(&s));
        assert!(Matcher::regex("job", ".*").unwrap().matches(&s));
        assert!(!Matcher::regex("job", ".+").unwrap().matches(&s));
        assert!(Matcher::not_regex("job", ".+").unwrap().matches(&s));
        assert!(Matcher::not_equal("job", "api").matches(&s));
    }

    #[test]
    fn bad_regex_is_an_error_naming_the_input() {
        let e = Matcher::regex("job", "(").unwrap_err();
        assert!(e.is_bad_input());
        assert!(e.to_string().contains("\"(\""), "{e}");
        assert!(e.to_string().contains("\"job\""), "{e}");
    }
}
