//! What one query may spend: samples held in memory and wall time.
//!
//! A selector over every series and a long range would otherwise load gigabytes before the
//! answer is even serialised. The query engine takes samples from a [`Budget`] as it loads them
//! and gives back those it drops, so the budget tracks what the query holds at its peak, as
//! Prometheus's `--query.max-samples` does. Loading checks the deadline every few thousand
//! samples, so a query stops soon after its time is up even inside one long series.

use std::time::Instant;

use crate::error::{Error, Result};

/// Limits of one query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryLimits {
    /// Samples held at once (loaded and not yet dropped, plus result points). Prometheus's
    /// default is 50 million.
    pub max_samples: usize,
    /// When the query must give up, if ever.
    pub deadline: Option<Instant>,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            max_samples: 50_000_000,
            deadline: None,
        }
    }
}

/// A query's running account against its [`QueryLimits`].
#[derive(Debug)]
pub(crate) struct Budget {
    limits: QueryLimits,
    held: usize,
}

/// How often, in samples read, loading checks the deadline.
pub(crate) const DEADLINE_CHECK_EVERY: usize = 4096;

impl Budget {
    pub(crate) fn new(limits: QueryLimits) -> Budget {
        Budget { limits, held: 0 }
    }

    /// Accounts for `n` more samples held.
    ///
    /// # Errors
    /// [`Error::TooManySamples`] beyond the limit.
    pub(crate) fn take(&mut self, n: usize) -> Result<()> {
        self.held = self.held.saturating_add(n);
        if self.held > self.limits.max_samples {
            return Err(Error::TooManySamples {
                limit: self.limits.max_samples,
            });
        }
        Ok(())
    }

    /// Accounts for `n` samples no longer held.
    pub(crate) fn give_back(&mut self, n: usize) {
        self.held = self.held.saturating_sub(n);
    }

    /// # Errors
    /// [`Error::Timeout`] once the deadline has passed.
    pub(crate) fn check_deadline(&self) -> Result<()> {
        match self.limits.deadline {
            Some(deadline) if Instant::now() >= deadline => Err(Error::Timeout),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_tracks_what_is_held_and_the_deadline() {
        let mut budget = Budget::new(QueryLimits {
            max_samples: 10,
            deadline: None,
        });
        budget.take(6).unwrap();
        budget.give_back(6);
        budget.take(10).unwrap();
        assert!(matches!(
            budget.take(1),
            Err(Error::TooManySamples { limit: 10 })
        ));
        budget.check_deadline().unwrap();
        let late = Budget::new(QueryLimits {
            max_samples: 1,
            deadline: Some(Instant::now()),
        });
        assert!(matches!(late.check_deadline(), Err(Error::Timeout)));
    }
}
