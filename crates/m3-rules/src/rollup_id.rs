//! The ID of a rollup series, built from a source series' tags.
//!
//! As M3's coordinator builds it: the kept tags (those named by `groupBy`, or all but those
//! named by `excludeBy`, never the source's `__name__`), the rule's tags, `__name__` set to the
//! rollup's metric name and `__rollup__` set to `true`; tags whose name starts with `__m3` are
//! left out. The result is tag-encoded (`m3_metric::id`), sorted by name. A series that lacks a
//! `groupBy` tag is not rolled up (M3's documented rule; its code only notices a missing tag
//! that sorts before one of the series').

use m3_metric::id::encode_tags;

use crate::filter::NAME_TAG;

/// The tag that marks a rollup series.
pub const ROLLUP_TAG: &[u8] = b"__rollup__";
/// Its value.
pub const ROLLUP_VALUE: &[u8] = b"true";
/// The template in a rollup's metric name that stands for the source's name.
pub const METRIC_NAME_TEMPLATE: &str = "{{ .MetricName }}";

/// Which tags a rollup keeps.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Grouping {
    /// These tags, sorted.
    By(Vec<Vec<u8>>),
    /// All tags but these, sorted.
    Excluding(Vec<Vec<u8>>),
}

/// How to name a rollup series.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RollupName {
    /// The metric name, possibly with [`METRIC_NAME_TEMPLATE`].
    pub metric_name: String,
    /// The kept tags.
    pub grouping: Grouping,
    /// The rule's tags.
    pub tags: Vec<(Vec<u8>, Vec<u8>)>,
}

impl RollupName {
    /// Writes the rollup ID for a series with `tags` (sorted by name) into `out`; `false` when
    /// the series is not rolled up (a `groupBy` tag is missing, or the ID cannot be encoded).
    pub fn build(&self, tags: &[(&[u8], &[u8])], out: &mut Vec<u8>) -> bool {
        out.clear();
        let source_name = tags
            .iter()
            .find(|(n, _)| *n == NAME_TAG)
            .map_or(&b""[..], |(_, v)| v);
        let mut kept: Vec<(&[u8], &[u8])> = Vec::with_capacity(tags.len() + self.tags.len() + 2);
        match &self.grouping {
            Grouping::By(names) => {
                for name in names {
                    match tags.iter().find(|(n, _)| *n == name.as_slice()) {
                        Some(pair) => kept.push(*pair),
                        None => return false,
                    }
                }
            }
            Grouping::Excluding(names) => kept.extend(
                tags.iter()
                    .filter(|(n, _)| *n != NAME_TAG && !names.iter().any(|x| x == n)),
            ),
        }
        kept.extend(self.tags.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        kept.retain(|(n, _)| !n.starts_with(b"__m3"));
        let new_name;
        let name: &[u8] = if self.metric_name.contains(METRIC_NAME_TEMPLATE) {
            new_name = self
                .metric_name
                .replace(METRIC_NAME_TEMPLATE, &String::from_utf8_lossy(source_name));
            new_name.as_bytes()
        } else {
            self.metric_name.as_bytes()
        };
        // A kept tag of the same name wins over the synthetic ones, as in M3.
        if !kept.iter().any(|(n, _)| *n == NAME_TAG) {
            kept.push((NAME_TAG, name));
        }
        if !kept.iter().any(|(n, _)| *n == ROLLUP_TAG) {
            kept.push((ROLLUP_TAG, ROLLUP_VALUE));
        }
        kept.sort_by(|a, b| a.0.cmp(b.0));
        kept.dedup_by(|a, b| a.0 == b.0);
        encode_tags(kept, out).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use m3_metric::id::decode_tags;

    fn name(metric: &str, grouping: Grouping) -> RollupName {
        RollupName {
            metric_name: metric.into(),
            grouping,
            tags: Vec::new(),
        }
    }

    fn decoded(id: &[u8]) -> Vec<(String, String)> {
        decode_tags(id).unwrap()
    }

    fn pairs(tags: &[(&str, &str)]) -> Vec<(String, String)> {
        tags.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn group_by_keeps_the_named_tags_and_needs_them_all() {
        let series: &[(&[u8], &[u8])] = &[
            (b"__name__", b"http_requests_total"),
            (b"code", b"200"),
            (b"pod", b"p1"),
            (b"route", b"/api"),
        ];
        let mut id = Vec::new();
        let rollup = name("requests_by_route", Grouping::By(vec![b"route".to_vec()]));
        assert!(rollup.build(series, &mut id));
        assert_eq!(
            decoded(&id),
            pairs(&[
                ("__name__", "requests_by_route"),
                ("__rollup__", "true"),
                ("route", "/api")
            ])
        );
        let missing = name("x", Grouping::By(vec![b"zone".to_vec()]));
        assert!(!missing.build(series, &mut id));
    }

    #[test]
    fn exclude_by_keeps_the_rest_and_rule_tags_join() {
        let series: &[(&[u8], &[u8])] = &[
            (b"__m3_type__", b"gauge"),
            (b"__name__", b"cpu"),
            (b"host", b"h1"),
            (b"pod", b"p1"),
        ];
        let mut rollup = name(
            "{{ .MetricName }}_by_host",
            Grouping::Excluding(vec![b"pod".to_vec()]),
        );
        rollup.tags = vec![(b"team".to_vec(), b"infra".to_vec())];
        let mut id = Vec::new();
        assert!(rollup.build(series, &mut id));
        assert_eq!(
            decoded(&id),
            pairs(&[
                ("__name__", "cpu_by_host"),
                ("__rollup__", "true"),
                ("host", "h1"),
                ("team", "infra")
            ])
        );
    }
}
