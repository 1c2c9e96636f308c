//! The read API behind Prometheus' HTTP endpoints.
//!
//! | Prometheus endpoint               | method                                   |
//! |-----------------------------------|------------------------------------------|
//! | (raw data, remote read)           | [`Store::select`]                        |
//! | `/api/v1/series`                  | [`Store::series`]                        |
//! | `/api/v1/labels`                  | [`Store::label_names`]                   |
//! | `/api/v1/label/<name>/values`     | [`Store::label_values`]                  |
//!
//! All take a namespace, a list of [`Matcher`]s that must all hold (an empty list selects every
//! series), and an inclusive time range in Unix milliseconds. A series is part of the answer only
//! when it has at least one sample in that range.
//!
//! # How series are found
//!
//! Matchers that reject the empty value (`job="api"`, `job=~".+"`, `job!=""`) can only be met by
//! series that carry the label, so their postings in the inverted index bound the answer: the
//! store intersects the postings of all such matchers, then checks every matcher on each
//! candidate's labels. When no matcher narrows the search (only `!=`, `!~` or patterns matching
//! `""`), every series of the namespace is a candidate. Results are sorted by label set.

use std::collections::BTreeSet;

use crate::error::Result;
use crate::labels::Labels;
use crate::matcher::{Matcher, matches_all};
use crate::result::Series;
use crate::store::{Ns, Store};

impl Store {
    /// Series matching all `matchers` with their samples in `start_ms..=end_ms`.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownNamespace`](crate::Error::UnknownNamespace), or engine errors.
    pub fn select(
        &self,
        namespace: &str,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<Series>> {
        let ns = self.ns(namespace)?;
        let mut out = Vec::new();
        for (sid, labels) in self.matching_series(ns, matchers)? {
            let samples = self.samples_in(ns, sid, start_ms, end_ms)?;
            if !samples.is_empty() {
                out.push(Series { labels, samples });
            }
        }
        Ok(out)
    }

    /// Label sets of the series matching all `matchers` with a sample in `start_ms..=end_ms`.
    ///
    /// # Errors
    ///
    /// As for [`select`](Self::select).
    pub fn series(
        &self,
        namespace: &str,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<Labels>> {
        let ns = self.ns(namespace)?;
        Ok(self
            .live_series(ns, matchers, start_ms, end_ms)?
            .into_iter()
            .map(|(_, l)| l)
            .collect())
    }

    /// Sorted, distinct label names of the matching series with a sample in the range.
    ///
    /// # Errors
    ///
    /// As for [`select`](Self::select).
    pub fn label_names(
        &self,
        namespace: &str,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<String>> {
        let ns = self.ns(namespace)?;
        let mut names = BTreeSet::new();
        for (_, labels) in self.live_series(ns, matchers, start_ms, end_ms)? {
            for (n, _) in labels.iter() {
                if !names.contains(n) {
                    names.insert(n.to_string());
                }
            }
        }
        Ok(names.into_iter().collect())
    }

    /// Sorted, distinct values of label `name` among the matching series with a sample in the
    /// range. Series lacking the label contribute nothing.
    ///
    /// # Errors
    ///
    /// As for [`select`](Self::select).
    pub fn label_values(
        &self,
        namespace: &str,
        name: &str,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<String>> {
        let ns = self.ns(namespace)?;
        let mut values = BTreeSet::new();
        if matchers.is_empty() {
            // Straight from the index: every posting of `name`, checked for samples per value
            // only until one live series is found.
            let mut by_value: Vec<(String, u64)> = Vec::new();
            self.scan_label(ns, name, |v, sid| by_value.push((v.to_string(), sid)))?;
            for (v, sid) in by_value {
                if !values.contains(&v) && self.has_samples_in(ns, sid, start_ms, end_ms)? {
                    values.insert(v);
                }
            }
        } else {
            for (_, labels) in self.live_series(ns, matchers, start_ms, end_ms)? {
                if let Some(v) = labels.get(name)
                    && !values.contains(v)
                {
                    values.insert(v.to_string());
                }
            }
        }
        Ok(values.into_iter().collect())
    }

    /// Matching series with at least one sample in the range.
    fn live_series(
        &self,
        ns: Ns,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<(u64, Labels)>> {
        let mut out = Vec::new();
        for (sid, labels) in self.matching_series(ns, matchers)? {
            if self.has_samples_in(ns, sid, start_ms, end_ms)? {
                out.push((sid, labels));
            }
        }
        Ok(out)
    }

    /// Every series of the namespace satisfying all matchers, sorted by labels. See the module
    /// docs for how the inverted index narrows the search.
    pub(crate) fn matching_series(
        &self,
        ns: Ns,
        matchers: &[Matcher],
    ) -> Result<Vec<(u64, Labels)>> {
        let mut candidates: Option<BTreeSet<u64>> = None;
        for m in matchers.iter().filter(|m| !m.matches_empty()) {
            let ids = self.postings_for(ns, m)?;
            candidates = Some(match candidates {
                None => ids,
                Some(prev) => prev.intersection(&ids).copied().collect(),
            });
            if candidates.as_ref().is_some_and(BTreeSet::is_empty) {
                return Ok(Vec::new());
            }
        }
        let mut out = match candidates {
            None => self
                .all_series(ns)?
                .into_iter()
                .filter(|(_, l)| matches_all(matchers, l))
                .collect::<Vec<_>>(),
            Some(ids) => {
                let mut out = Vec::with_capacity(ids.len());
                for sid in ids {
                    if let Some(labels) = self.labels_of(ns, sid)?
                        && matches_all(matchers, &labels)
                    {
                        out.push((sid, labels));
                    }
                }
                out
            }
        };
        out.sort_by(|a, b| a.1.cmp(&b.1));
        Ok(out)
    }
}
