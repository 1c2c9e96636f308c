//! Where a query's series come from.
//!
//! The engine reads through [`SeriesSource`], one namespace's matching series with their raw
//! samples in a time range, handed over one at a time so the engine can count what it holds
//! before the next is read. [`NamespaceSource`] is the embedded store's namespace; tests may
//! give the engine anything else that holds series.

use m3_storage::{Labels, Matcher, Store};

use crate::error::Result;

/// What [`SeriesSource::select_each`] calls with each series and its samples.
pub type EachSeries<'a> = dyn FnMut(&Labels, &[(i64, f64)]) -> Result<()> + 'a;

/// Series with their raw samples, by label matchers.
pub trait SeriesSource {
    /// Calls `each` with every series matching all `matchers` that has samples in
    /// `start_ms..=end_ms`, in label order, and those samples oldest first (staleness markers
    /// included). Stops at the first error `each` returns.
    ///
    /// # Errors
    ///
    /// A storage failure, or what `each` returned.
    fn select_each(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        each: &mut EachSeries<'_>,
    ) -> Result<()>;
}

impl<S: SeriesSource + ?Sized> SeriesSource for &S {
    fn select_each(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        each: &mut EachSeries<'_>,
    ) -> Result<()> {
        (**self).select_each(matchers, start_ms, end_ms, each)
    }
}

/// One namespace of the embedded store.
#[derive(Debug, Clone)]
pub struct NamespaceSource {
    store: Store,
    namespace: String,
}

impl NamespaceSource {
    /// Reads `namespace` of `store`.
    pub fn new(store: Store, namespace: impl Into<String>) -> NamespaceSource {
        NamespaceSource {
            store,
            namespace: namespace.into(),
        }
    }
}

impl SeriesSource for NamespaceSource {
    fn select_each(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        each: &mut EachSeries<'_>,
    ) -> Result<()> {
        self.store.select_each(
            &self.namespace,
            matchers,
            start_ms,
            end_ms,
            |labels, samples| each(&labels, samples),
        )
    }
}
