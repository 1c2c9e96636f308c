//! M3's mapping and rollup rules, as the coordinator applies them to each series.
//!
//! A **mapping rule** aggregates a series under its own ID (`Max` of `app:mysql*` at `1m`); a
//! **rollup rule** aggregates *across* series, under a new ID built from some of their tags
//! (`Sum` of the per-window increase of `http_requests_total`, by `route`). Rules are written in
//! the coordinator's config (`downsample.rules`, [`config`]) with M3's keys and filter syntax
//! ([`filter`]), compiled and checked at start ([`RuleSet::compile`]), then matched against
//! every series ([`RuleSet::matches`]): the result is M3's metadata — pipelines of transforms
//! ([`transform`]) and rollups with their IDs ([`rollup_id`]) — that travels with the sample to
//! the aggregators. A series seen before costs one lookup in a [`MatchCache`].
//!
//! | module | what |
//! |---|---|
//! | [`config`] | the YAML of `downsample.rules` |
//! | [`filter`] | `tag:glob` filters |
//! | [`transform`] | Absolute, PerSecond, Increase, Add, Reset: math and state |
//! | [`rollup_id`] | the tag-encoded ID of a rollup series |
//! | [`ruleset`] | compiled rules and matching |
//! | [`cache`] | match results per series ID |
//!
//! ```
//! use m3_rules::{RuleSet, config::RulesConfig};
//! use m3_metric::StoragePolicy;
//!
//! let yaml = r#"
//! rollupRules:
//!   - name: requests by route
//!     filter: "__name__:http_requests_total"
//!     transforms:
//!       - transform: {type: Increase}
//!       - rollup: {metricName: http_requests_by_route, groupBy: [route], aggregations: [Sum]}
//!       - transform: {type: Add}
//!     storagePolicies: [{resolution: 10s, retention: 2d}]
//! "#;
//! let config: RulesConfig = serde_saphyr::from_str(yaml).unwrap();
//! let policies = ["10s:2d".parse::<StoragePolicy>().unwrap()];
//! let rules = RuleSet::compile(&config, "downsample.rules", &policies).unwrap();
//! let series: &[(&[u8], &[u8])] = &[
//!     (b"__name__", b"http_requests_total"),
//!     (b"pod", b"p1"),
//!     (b"route", b"/api"),
//! ];
//! let matched = rules.matches(series, b"unknown");
//! // The pipeline travels with the series' own ID: Increase, rollup, Add.
//! assert_eq!(matched.pipelines.len(), 1);
//! assert_eq!(matched.pipelines[0].pipeline.as_ref().unwrap().ops.len(), 3);
//! ```

#![warn(missing_docs, unreachable_pub)]

pub mod cache;
pub mod config;
pub mod filter;
pub mod rollup_id;
pub mod ruleset;
pub mod transform;

pub use cache::MatchCache;
pub use filter::{Filter, FilterError};
pub use ruleset::{Matched, RuleError, RuleErrors, RuleSet};
pub use transform::{Transform, TransformState};
