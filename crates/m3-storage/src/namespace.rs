//! Namespaces: where a sample goes, at what resolution and for how long.
//!
//! M3 stores raw and downsampled data side by side, each in its own namespace:
//!
//! * exactly zero or one **unaggregated** namespace holds raw samples as Prometheus sent them;
//! * any number of **aggregated** namespaces hold the aggregators' output, one per storage policy
//!   (`1m:40d` = resolution one minute, retention forty days).
//!
//! The coordinator's ingest path receives an aggregated sample tagged with its storage policy and
//! must find the namespace with *exactly* that resolution and retention
//! ([`Namespaces::namespace_for`]); there is no "closest match", mirroring M3, so a misconfigured
//! policy is an error rather than data landing in the wrong place.
//!
//! [`Namespaces::new`] validates a whole configuration at once and reports every problem it finds.

use std::collections::HashSet;
use std::time::Duration;

use crate::error::{Error, Result, fmt_duration};

/// [`NamespaceConfig::buffer_past`] of raw data, and the least for aggregated data.
pub const DEFAULT_BUFFER_PAST: Duration = Duration::from_secs(3600);
/// How far ahead of the clock a write is still taken by default: M3DB's namespace default.
pub const DEFAULT_BUFFER_FUTURE: Duration = Duration::from_secs(600);
/// The least block range ([`NamespaceConfig::block_range_ms`]).
const DEFAULT_BLOCK_RANGE: Duration = Duration::from_secs(2 * 3600);

/// Whether a namespace holds raw or downsampled data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NamespaceKind {
    /// Raw samples, as written by remote write.
    Unaggregated,
    /// Samples produced by the aggregators at a fixed resolution.
    Aggregated,
}

/// One namespace of the store.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamespaceConfig {
    /// Unique name; used by queries and writes to address the namespace.
    pub name: String,
    /// Raw or downsampled.
    pub kind: NamespaceKind,
    /// Window size of the aggregated data; `None` for the unaggregated namespace.
    pub resolution: Option<Duration>,
    /// How long samples are kept; older ones are removed by
    /// [`Store::enforce_retention`](crate::Store::enforce_retention).
    pub retention: Duration,
    /// How far behind a series' newest sample a write is still taken (M3DB's `bufferPast`);
    /// older ones are refused and counted. Defaults: an hour for raw data; for aggregated
    /// data an hour or ten windows, whichever is longer, so windows redelivered after an
    /// outage still land.
    pub buffer_past: Duration,
    /// How far ahead of the store's clock a sample is still taken (M3DB's `bufferFuture`,
    /// default ten minutes); later ones are refused and counted. A sample from years ahead (a
    /// client's clock, a timestamp in the wrong unit) would otherwise keep its chunk, its log
    /// segment and every later segment from ever being dropped.
    pub buffer_future: Duration,
}

impl NamespaceConfig {
    /// The raw-data namespace.
    pub fn unaggregated(name: impl Into<String>, retention: Duration) -> Self {
        NamespaceConfig {
            name: name.into(),
            kind: NamespaceKind::Unaggregated,
            resolution: None,
            retention,
            buffer_past: DEFAULT_BUFFER_PAST,
            buffer_future: DEFAULT_BUFFER_FUTURE,
        }
    }

    /// A downsampled namespace for the storage policy `resolution:retention`.
    pub fn aggregated(name: impl Into<String>, resolution: Duration, retention: Duration) -> Self {
        NamespaceConfig {
            name: name.into(),
            kind: NamespaceKind::Aggregated,
            resolution: Some(resolution),
            retention,
            buffer_past: DEFAULT_BUFFER_PAST.max(resolution.saturating_mul(10)),
            buffer_future: DEFAULT_BUFFER_FUTURE,
        }
    }

    /// The same namespace taking writes up to `buffer_past` behind each series' newest.
    pub fn with_buffer_past(mut self, buffer_past: Duration) -> Self {
        self.buffer_past = buffer_past;
        self
    }

    /// The same namespace taking writes up to `buffer_future` ahead of the clock.
    pub fn with_buffer_future(mut self, buffer_future: Duration) -> Self {
        self.buffer_future = buffer_future;
        self
    }

    /// [`buffer_future`](Self::buffer_future) in milliseconds, saturating.
    pub fn buffer_future_ms(&self) -> i64 {
        i64::try_from(self.buffer_future.as_millis()).unwrap_or(i64::MAX)
    }

    /// [`buffer_past`](Self::buffer_past) in milliseconds, saturating.
    pub fn buffer_past_ms(&self) -> i64 {
        i64::try_from(self.buffer_past.as_millis()).unwrap_or(i64::MAX)
    }

    /// The time range of one block on disk (ms): two hours, as Prometheus, or 120 windows
    /// of a coarser aggregated namespace, so a block holds about one chunk per series.
    pub fn block_range_ms(&self) -> i64 {
        let windows = self
            .resolution
            .map_or(Duration::ZERO, |r| r.saturating_mul(120));
        i64::try_from(DEFAULT_BLOCK_RANGE.max(windows).as_millis()).unwrap_or(i64::MAX)
    }

    /// The range (ms) whose blocks are merged into one once it is past: a tenth of the
    /// retention, as Prometheus merges up to, in whole block ranges; 0 (no merging) when that
    /// is less than two of them. `m3 local`'s 40-day namespace keeps 10 merged blocks and at
    /// most 48 of two hours, instead of 480.
    pub fn merge_range_ms(&self) -> i64 {
        let block = self.block_range_ms().max(1);
        let blocks = (self.retention_ms() / 10) / block;
        if blocks < 2 {
            0
        } else {
            blocks.saturating_mul(block)
        }
    }

    /// The directory name of the namespace's data: the name itself when it is made of
    /// letters, digits, `_`, `-` and `.` (and is not `.` or `..`), otherwise `ns-` and the
    /// name's bytes in hex, so no name can reach outside the data directory.
    pub fn dir_name(&self) -> String {
        let plain = !self.name.is_empty()
            && self.name != "."
            && self.name != ".."
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            && !self.name.starts_with("ns-");
        if plain {
            self.name.clone()
        } else {
            let hex: String = self.name.bytes().map(|b| format!("{b:02x}")).collect();
            format!("ns-{hex}")
        }
    }

    /// The retention in milliseconds, saturating at `i64::MAX`.
    pub fn retention_ms(&self) -> i64 {
        i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX)
    }

    fn problems(&self, out: &mut Vec<String>) {
        let name = &self.name;
        if name.is_empty() {
            out.push("a namespace has an empty name".to_string());
        } else if name.len() > 255 || name.chars().any(char::is_control) {
            out.push(format!(
                "namespace {name:?}: name must be at most 255 bytes without control characters"
            ));
        }
        if self.retention.as_millis() == 0 {
            out.push(format!(
                "namespace {name:?}: retention must be at least 1ms"
            ));
        }
        match (self.kind, self.resolution) {
            (NamespaceKind::Unaggregated, Some(r)) => out.push(format!(
                "namespace {name:?}: an unaggregated namespace has no resolution (got {})",
                fmt_duration(r)
            )),
            (NamespaceKind::Aggregated, None) => out.push(format!(
                "namespace {name:?}: an aggregated namespace needs a resolution"
            )),
            (NamespaceKind::Aggregated, Some(r)) if r.as_millis() == 0 => out.push(format!(
                "namespace {name:?}: resolution must be at least 1ms"
            )),
            (NamespaceKind::Aggregated, Some(r)) if r > self.retention => out.push(format!(
                "namespace {name:?}: resolution {} is longer than retention {}",
                fmt_duration(r),
                fmt_duration(self.retention)
            )),
            _ => {}
        }
    }
}

/// A validated set of namespaces with the lookups the write and ingest paths need.
#[derive(Debug, Clone)]
pub struct Namespaces {
    list: Vec<NamespaceConfig>,
}

impl Namespaces {
    /// Validates `list`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] listing every problem: an empty list, empty or repeated names,
    /// zero durations, a resolution on the unaggregated namespace or none on an aggregated one,
    /// more than one unaggregated namespace, two aggregated namespaces with the same
    /// resolution and retention.
    pub fn new(list: Vec<NamespaceConfig>) -> Result<Self> {
        let mut problems = Vec::new();
        if list.is_empty() {
            problems.push("no namespaces configured".to_string());
        }
        let mut names = HashSet::new();
        let mut policies = HashSet::new();
        let mut unaggregated = Vec::new();
        for ns in &list {
            ns.problems(&mut problems);
            if !names.insert(ns.name.as_str()) {
                problems.push(format!("namespace {:?} is configured twice", ns.name));
            }
            match ns.kind {
                NamespaceKind::Unaggregated => unaggregated.push(ns.name.as_str()),
                NamespaceKind::Aggregated => {
                    if !policies.insert((ns.resolution, ns.retention)) {
                        problems.push(format!(
                            "namespace {:?}: another aggregated namespace already has \
                             resolution {} and retention {}",
                            ns.name,
                            fmt_duration(ns.resolution.unwrap_or_default()),
                            fmt_duration(ns.retention)
                        ));
                    }
                }
            }
        }
        if unaggregated.len() > 1 {
            problems.push(format!(
                "only one unaggregated namespace is allowed, found {unaggregated:?}"
            ));
        }
        if problems.is_empty() {
            Ok(Namespaces { list })
        } else {
            Err(Error::InvalidConfig { problems })
        }
    }

    /// The namespace called `name`.
    pub fn get(&self, name: &str) -> Option<&NamespaceConfig> {
        self.list.iter().find(|n| n.name == name)
    }

    /// The position of namespace `name` in [`iter`](Self::iter).
    pub(crate) fn index_of(&self, name: &str) -> Result<usize> {
        self.list
            .iter()
            .position(|n| n.name == name)
            .ok_or_else(|| Error::UnknownNamespace(name.to_string()))
    }

    /// The namespace at `index` of [`iter`](Self::iter) (from [`index_of`](Self::index_of)).
    pub(crate) fn by_index(&self, index: usize) -> &NamespaceConfig {
        &self.list[index]
    }

    /// The unaggregated namespace, if one is configured.
    pub fn unaggregated(&self) -> Option<&NamespaceConfig> {
        self.list
            .iter()
            .find(|n| n.kind == NamespaceKind::Unaggregated)
    }

    /// The aggregated namespace with exactly this resolution and retention.
    pub fn aggregated(
        &self,
        resolution: Duration,
        retention: Duration,
    ) -> Option<&NamespaceConfig> {
        self.list.iter().find(|n| {
            n.kind == NamespaceKind::Aggregated
                && n.resolution == Some(resolution)
                && n.retention == retention
        })
    }

    /// Like [`aggregated`](Self::aggregated), but a miss is M3's error.
    ///
    /// # Errors
    ///
    /// [`Error::NoNamespaceFor`] when no aggregated namespace matches exactly.
    pub fn namespace_for(
        &self,
        resolution: Duration,
        retention: Duration,
    ) -> Result<&NamespaceConfig> {
        self.aggregated(resolution, retention)
            .ok_or(Error::NoNamespaceFor {
                resolution,
                retention,
            })
    }

    /// All namespaces in configuration order.
    pub fn iter(&self) -> impl Iterator<Item = &NamespaceConfig> {
        self.list.iter()
    }

    /// The number of namespaces.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Never true for a validated set; present for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Duration = Duration::from_secs(3600);
    const M: Duration = Duration::from_secs(60);

    fn sample() -> Namespaces {
        Namespaces::new(vec![
            NamespaceConfig::unaggregated("default", 48 * H),
            NamespaceConfig::aggregated("agg_1m_40d", M, 40 * 24 * H),
            NamespaceConfig::aggregated("agg_10s_2d", Duration::from_secs(10), 48 * H),
        ])
        .unwrap()
    }

    #[test]
    fn lookups() {
        let ns = sample();
        assert_eq!(ns.unaggregated().unwrap().name, "default");
        assert_eq!(ns.aggregated(M, 40 * 24 * H).unwrap().name, "agg_1m_40d");
        assert!(ns.aggregated(M, 48 * H).is_none());
        let e = ns.namespace_for(M, 48 * H).unwrap_err();
        assert!(
            e.to_string().contains("retention=48h, resolution=1m"),
            "{e}"
        );
        assert_eq!(
            ns.get("agg_10s_2d").unwrap().resolution,
            Some(Duration::from_secs(10))
        );
        assert!(matches!(
            ns.index_of("nope"),
            Err(Error::UnknownNamespace(_))
        ));
    }

    #[test]
    fn directory_names_stay_inside_the_data_directory() {
        let dir = |name: &str| NamespaceConfig::unaggregated(name, H).dir_name();
        assert_eq!(dir("default"), "default");
        assert_eq!(dir("agg_1m-40d.v2"), "agg_1m-40d.v2");
        assert_eq!(dir(".."), "ns-2e2e");
        assert_eq!(dir("a/b"), "ns-612f62");
        assert_eq!(
            dir("ns-x"),
            "ns-6e732d78",
            "the escaped form cannot be spelled"
        );
    }

    #[test]
    fn reports_every_problem() {
        let bad = vec![
            NamespaceConfig::unaggregated("a", H),
            NamespaceConfig::unaggregated("b", Duration::ZERO),
            NamespaceConfig::aggregated("a", M, H),
            NamespaceConfig::aggregated("c", M, H),
            NamespaceConfig {
                name: "d".into(),
                kind: NamespaceKind::Aggregated,
                resolution: None,
                retention: H,
                buffer_past: H,
                buffer_future: H,
            },
        ];
        let Err(Error::InvalidConfig { problems }) = Namespaces::new(bad) else {
            panic!("expected InvalidConfig");
        };
        let all = problems.join("\n");
        for needle in [
            "\"b\": retention must be at least 1ms",
            "namespace \"a\" is configured twice",
            "\"c\": another aggregated namespace already has resolution 1m and retention 1h",
            "\"d\": an aggregated namespace needs a resolution",
            "only one unaggregated namespace is allowed",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert!(Namespaces::new(vec![]).is_err());
    }
}
