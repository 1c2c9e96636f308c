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
//! series that carry the label, so their postings in the head's and each block's inverted index
//! bound the answer; every matcher is then checked on each candidate's labels. When no matcher
//! narrows the search (only `!=`, `!~` or patterns matching `""`), every series is a candidate.
//! Blocks outside the time range are not consulted. Results are sorted by label set.

use std::collections::BTreeSet;

use crate::error::Result;
use crate::labels::Labels;
use crate::matcher::Matcher;
use crate::result::Series;
use crate::store::Store;
use crate::tsdb::db::{Reader, SeriesSources};

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
        let reader = self.reader(namespace)?;
        let mut out = Vec::new();
        for (labels, sources) in reader.matching(matchers, start_ms, end_ms)? {
            let mut samples = Vec::new();
            read_samples(&reader, &sources, start_ms, end_ms, &mut samples)?;
            if !samples.is_empty() {
                out.push(Series { labels, samples });
            }
        }
        Ok(out)
    }

    /// Like [`select`](Self::select), but hands each series to `each` as soon as it is read,
    /// in label order, so a caller can account for what it holds (a query's sample limit and
    /// deadline) before the next series is loaded. `each` sees the samples in a buffer reused
    /// for the next series; series without samples in the range are skipped. The first error
    /// `each` returns stops the walk and is returned.
    ///
    /// # Errors
    ///
    /// As for [`select`](Self::select), or what `each` returns.
    pub fn select_each<E: From<crate::Error>>(
        &self,
        namespace: &str,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        mut each: impl FnMut(Labels, &[(i64, f64)]) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let reader = self.reader(namespace)?;
        let mut samples = Vec::new();
        for (labels, sources) in reader
            .matching(matchers, start_ms, end_ms)
            .map_err(crate::Error::from)?
        {
            samples.clear();
            read_samples(&reader, &sources, start_ms, end_ms, &mut samples)?;
            if !samples.is_empty() {
                each(labels, &samples)?;
            }
        }
        Ok(())
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
        let reader = self.reader(namespace)?;
        live_series(&reader, matchers, start_ms, end_ms)
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
        let reader = self.reader(namespace)?;
        let mut names = BTreeSet::new();
        for labels in live_series(&reader, matchers, start_ms, end_ms)? {
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
        let reader = self.reader(namespace)?;
        // Only series carrying the label: lets the postings narrow the search.
        let mut with_label = matchers.to_vec();
        with_label.push(Matcher::not_equal(name, ""));
        let mut values = BTreeSet::new();
        for labels in live_series(&reader, &with_label, start_ms, end_ms)? {
            if let Some(v) = labels.get(name)
                && !values.contains(v)
            {
                values.insert(v.to_string());
            }
        }
        Ok(values.into_iter().collect())
    }
}

/// The samples of one series in `start..=end`, appended to `out`.
pub(crate) fn read_samples(
    reader: &Reader<'_>,
    sources: &SeriesSources,
    start: i64,
    end: i64,
    out: &mut Vec<(i64, f64)>,
) -> Result<()> {
    Ok(reader.samples(sources, start, end, out)?)
}

/// Matching series with at least one sample in the range.
fn live_series(
    reader: &Reader<'_>,
    matchers: &[Matcher],
    start_ms: i64,
    end_ms: i64,
) -> Result<Vec<Labels>> {
    let mut out = Vec::new();
    for (labels, sources) in reader.matching(matchers, start_ms, end_ms)? {
        if reader.has_samples(&sources, start_ms, end_ms)? {
            out.push(labels);
        }
    }
    Ok(out)
}
