//! The crate's one error type.
//!
//! Every fallible call in `m3-storage` returns [`Error`]. The variants split into two classes,
//! reported by [`Error::is_bad_input`]:
//!
//! * **bad input**: the caller asked for something impossible (an unknown namespace, an invalid
//!   label set, a regex that does not compile, an unsupported PromQL expression). An HTTP layer maps
//!   these to `400 bad_data` and does not log them as failures of ours.
//! * **internal**: the storage engine failed or found bytes it cannot decode. These map to a 5xx
//!   and deserve an error-level log line.
//!
//! Messages carry the offending input so that the person reading them can act on it.

use std::time::Duration;

use crate::labels::LabelsError;

/// A specialised `Result` for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the store and the query engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The storage engine failed: a write-ahead log write or sync (a full disk), a block that
    /// cannot be written or read. The message names the file or namespace.
    #[error("storage engine error: {0}")]
    Engine(String),

    /// The data directory holds a store this build does not read.
    #[error(
        "{dir} holds a store in an earlier format ({found}) that this build does not read. \
         Either keep running the earlier m3-rs build until the data there is past its retention, \
         or move the directory aside (e.g. `mv {dir} {dir}.old`) and start again with an empty one"
    )]
    OldFormat {
        /// The data directory.
        dir: String,
        /// What was found there.
        found: String,
    },

    /// The store cannot serve the call right now (it is reopening after a failed write).
    #[error("store unavailable: {0}")]
    Unavailable(&'static str),

    /// A namespace name that is not configured in this store.
    #[error("unknown namespace {0:?}")]
    UnknownNamespace(String),

    /// No aggregated namespace has exactly this resolution and retention. The wording follows
    /// M3's own error so operators recognise it.
    #[error(
        "no configured cluster namespace for: retention={}, resolution={}",
        fmt_duration(*retention),
        fmt_duration(*resolution)
    )]
    NoNamespaceFor {
        /// The requested resolution.
        resolution: Duration,
        /// The requested retention.
        retention: Duration,
    },

    /// The namespace configuration handed to [`Store::open`](crate::Store::open) is invalid.
    /// Every problem found is listed, each naming its namespace.
    #[error("invalid namespace config: {}", problems.join("; "))]
    InvalidConfig {
        /// One line per problem, e.g. `namespace "agg": retention must be greater than zero`.
        problems: Vec<String>,
    },

    /// A label set that cannot identify a series.
    #[error("invalid labels: {0}")]
    InvalidLabels(#[from] LabelsError),

    /// A `=~` or `!~` matcher whose pattern does not compile.
    #[error("invalid regex {pattern:?} in matcher for label {label:?}: {source}")]
    InvalidRegex {
        /// The label the matcher applies to.
        label: String,
        /// The pattern as given (before anchoring).
        pattern: String,
        /// The compiler's complaint.
        #[source]
        source: Box<regex::Error>,
    },

    /// Bytes read back from disk that do not decode. Points at a bug or at disk corruption.
    #[error("corrupt {what} in the store: {detail}")]
    Corrupt {
        /// Which kind of record failed to decode.
        what: &'static str,
        /// Details for debugging.
        detail: String,
    },
}

impl Error {
    /// Whether the caller's input caused this error (as opposed to a failure of the store).
    ///
    /// An HTTP layer answers `400` for `true` and `5xx` for `false`.
    pub fn is_bad_input(&self) -> bool {
        match self {
            Error::UnknownNamespace(_)
            | Error::NoNamespaceFor { .. }
            | Error::InvalidLabels(_)
            | Error::InvalidRegex { .. }
            | Error::InvalidConfig { .. } => true,
            Error::Engine(_)
            | Error::OldFormat { .. }
            | Error::Unavailable(_)
            | Error::Corrupt { .. } => false,
        }
    }
}

/// Formats a duration the way M3 storage policies spell them (`10s`, `1m`, `48h`, `1500ms`).
pub(crate) fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    for (unit, size) in [("h", 3_600_000u128), ("m", 60_000), ("s", 1_000)] {
        if ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_namespace_message_names_policy() {
        let e = Error::NoNamespaceFor {
            resolution: Duration::from_secs(60),
            retention: Duration::from_secs(48 * 3600),
        };
        assert_eq!(
            e.to_string(),
            "no configured cluster namespace for: retention=48h, resolution=1m"
        );
        assert!(e.is_bad_input());
    }

    #[test]
    fn durations_format_in_largest_exact_unit() {
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(fmt_duration(Duration::from_secs(10)), "10s");
        assert_eq!(fmt_duration(Duration::from_secs(90)), "90s");
        assert_eq!(fmt_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn an_old_format_says_what_to_do() {
        let e = Error::OldFormat {
            dir: "/var/lib/m3".into(),
            found: "fjall".into(),
        };
        let text = e.to_string();
        assert!(
            text.contains("/var/lib/m3 holds a store in an earlier format"),
            "{text}"
        );
        assert!(text.contains("mv /var/lib/m3 /var/lib/m3.old"), "{text}");
        assert!(!e.is_bad_input());
    }
}
