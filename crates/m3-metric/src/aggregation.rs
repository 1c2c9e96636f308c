//! The 24 aggregation types, their bitset IDs, and which apply to which metric type.
//!
//! An [`AggregationId`] is M3's `AggregationID`: a 64-bit set where bit *i* means the type with
//! ID *i*. The empty set means "the defaults for the metric type" ([`default_types`]), which is
//! what clients send unless a rule asks for something else.

use std::fmt;
use std::str::FromStr;

use crate::MetricType;

/// One aggregation function, numbered as in M3's `aggregationpb.AggregationType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum AggregationType {
    /// The value with the latest timestamp.
    Last = 1,
    /// The smallest value (output name `lower`).
    Min = 2,
    /// The largest value (output name `upper`).
    Max = 3,
    /// Arithmetic mean.
    Mean = 4,
    /// The 0.5 quantile.
    Median = 5,
    /// Number of values.
    Count = 6,
    /// Sum of values.
    Sum = 7,
    /// Sum of squared values.
    SumSq = 8,
    /// Sample standard deviation.
    Stdev = 9,
    /// 0.1 quantile.
    P10 = 10,
    /// 0.2 quantile.
    P20 = 11,
    /// 0.3 quantile.
    P30 = 12,
    /// 0.4 quantile.
    P40 = 13,
    /// 0.5 quantile.
    P50 = 14,
    /// 0.6 quantile.
    P60 = 15,
    /// 0.7 quantile.
    P70 = 16,
    /// 0.8 quantile.
    P80 = 17,
    /// 0.9 quantile.
    P90 = 18,
    /// 0.95 quantile.
    P95 = 19,
    /// 0.99 quantile.
    P99 = 20,
    /// 0.999 quantile.
    P999 = 21,
    /// 0.9999 quantile.
    P9999 = 22,
    /// 0.25 quantile.
    P25 = 23,
    /// 0.75 quantile.
    P75 = 24,
}

use AggregationType::*;

impl AggregationType {
    /// All 24 types in ID order.
    pub const ALL: [AggregationType; 24] = [
        Last, Min, Max, Mean, Median, Count, Sum, SumSq, Stdev, P10, P20, P30, P40, P50, P60, P70,
        P80, P90, P95, P99, P999, P9999, P25, P75,
    ];

    /// M3's numeric ID (1..=24).
    pub fn id(self) -> u8 {
        self as u8
    }

    /// The type with M3's numeric ID.
    pub fn from_id(id: u64) -> Option<AggregationType> {
        if id == 0 || id > 24 {
            return None;
        }
        Some(Self::ALL[(id - 1) as usize])
    }

    /// The name used as an output suffix: `last`, `lower`, `upper`, `mean`, `median`, `count`,
    /// `sum`, `sum_sq`, `stdev`, `p50`, `p999`…
    pub fn output_name(self) -> &'static str {
        match self {
            Last => "last",
            Min => "lower",
            Max => "upper",
            Mean => "mean",
            Median => "median",
            Count => "count",
            Sum => "sum",
            SumSq => "sum_sq",
            Stdev => "stdev",
            P10 => "p10",
            P20 => "p20",
            P25 => "p25",
            P30 => "p30",
            P40 => "p40",
            P50 => "p50",
            P60 => "p60",
            P70 => "p70",
            P75 => "p75",
            P80 => "p80",
            P90 => "p90",
            P95 => "p95",
            P99 => "p99",
            P999 => "p999",
            P9999 => "p9999",
        }
    }

    /// The name as written in rules and configs: `Last`, `Min`, `SumSq`, `P99`…
    pub fn config_name(self) -> &'static str {
        match self {
            Last => "Last",
            Min => "Min",
            Max => "Max",
            Mean => "Mean",
            Median => "Median",
            Count => "Count",
            Sum => "Sum",
            SumSq => "SumSq",
            Stdev => "Stdev",
            P10 => "P10",
            P20 => "P20",
            P25 => "P25",
            P30 => "P30",
            P40 => "P40",
            P50 => "P50",
            P60 => "P60",
            P70 => "P70",
            P75 => "P75",
            P80 => "P80",
            P90 => "P90",
            P95 => "P95",
            P99 => "P99",
            P999 => "P999",
            P9999 => "P9999",
        }
    }

    /// The quantile this type reports, if it is one (Median is 0.5).
    pub fn quantile(self) -> Option<f64> {
        Some(match self {
            Median | P50 => 0.5,
            P10 => 0.1,
            P20 => 0.2,
            P25 => 0.25,
            P30 => 0.3,
            P40 => 0.4,
            P60 => 0.6,
            P70 => 0.7,
            P75 => 0.75,
            P80 => 0.8,
            P90 => 0.9,
            P95 => 0.95,
            P99 => 0.99,
            P999 => 0.999,
            P9999 => 0.9999,
            _ => return None,
        })
    }

    /// Whether this type may be applied to `metric_type` (M3: counters and gauges take no
    /// quantiles, timers take no Last, counters take no Last).
    pub fn is_valid_for(self, metric_type: MetricType) -> bool {
        match metric_type {
            MetricType::Timer => self != Last,
            MetricType::Counter => matches!(self, Min | Max | Mean | Count | Sum | SumSq | Stdev),
            MetricType::Gauge => {
                matches!(self, Last | Min | Max | Mean | Count | Sum | SumSq | Stdev)
            }
        }
    }
}

impl fmt::Display for AggregationType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.config_name())
    }
}

/// An aggregation name that is not one of the 24.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown aggregation type {0:?}: expected one of Last, Min, Max, Mean, Median, Count, Sum, SumSq, Stdev, P10, P20, P25, P30, P40, P50, P60, P70, P75, P80, P90, P95, P99, P999, P9999"
)]
pub struct UnknownAggregationType(pub String);

impl FromStr for AggregationType {
    type Err = UnknownAggregationType;

    /// Accepts config names (`SumSq`, `P99`) and output names (`sum_sq`, `upper`), any case.
    fn from_str(text: &str) -> Result<AggregationType, UnknownAggregationType> {
        AggregationType::ALL
            .into_iter()
            .find(|t| {
                t.config_name().eq_ignore_ascii_case(text)
                    || t.output_name().eq_ignore_ascii_case(text)
            })
            .ok_or_else(|| UnknownAggregationType(text.to_string()))
    }
}

impl serde::Serialize for AggregationType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.config_name())
    }
}

impl<'de> serde::Deserialize<'de> for AggregationType {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A set of aggregation types as M3's 64-bit `AggregationID`; empty means "defaults".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct AggregationId(pub u64);

impl AggregationId {
    /// The empty set: use the metric type's defaults.
    pub const DEFAULT: AggregationId = AggregationId(0);

    /// The set holding exactly `types`.
    pub fn from_types(types: impl IntoIterator<Item = AggregationType>) -> AggregationId {
        AggregationId(types.into_iter().fold(0, |acc, t| acc | (1u64 << t.id())))
    }

    /// Whether this is the empty "defaults" set.
    pub fn is_default(self) -> bool {
        self.0 == 0
    }

    /// Whether `t` is in the set.
    pub fn contains(self, t: AggregationType) -> bool {
        self.0 & (1u64 << t.id()) != 0
    }

    /// The types in the set, in ID order; bits that name no type are ignored.
    pub fn types(self) -> impl Iterator<Item = AggregationType> {
        AggregationType::ALL
            .into_iter()
            .filter(move |t| self.contains(*t))
    }

    /// The set the aggregator computes for `metric_type`: the defaults when empty, else this set.
    pub fn resolve(self, metric_type: MetricType) -> AggregationId {
        if self.is_default() {
            AggregationId::from_types(default_types(metric_type).iter().copied())
        } else {
            self
        }
    }

    /// Whether the set has bits that name no aggregation type.
    pub fn has_unknown_bits(self) -> bool {
        self.0 & !AggregationId::from_types(AggregationType::ALL).0 != 0
    }
}

/// M3's default aggregation types per metric type.
pub fn default_types(metric_type: MetricType) -> &'static [AggregationType] {
    match metric_type {
        MetricType::Counter => &[Sum],
        MetricType::Gauge => &[Last],
        MetricType::Timer => &[
            Sum, SumSq, Mean, Min, Max, Count, Stdev, Median, P50, P95, P99,
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_m3() {
        assert_eq!(Last.id(), 1);
        assert_eq!(Stdev.id(), 9);
        assert_eq!(P9999.id(), 22);
        assert_eq!(P25.id(), 23);
        assert_eq!(P75.id(), 24);
        for t in AggregationType::ALL {
            assert_eq!(AggregationType::from_id(u64::from(t.id())), Some(t));
        }
        assert_eq!(AggregationType::from_id(0), None);
        assert_eq!(AggregationType::from_id(25), None);
    }

    #[test]
    fn parses_both_name_forms() {
        assert_eq!("SumSq".parse(), Ok(SumSq));
        assert_eq!("sum_sq".parse(), Ok(SumSq));
        assert_eq!("upper".parse(), Ok(Max));
        assert_eq!("p99".parse(), Ok(P99));
        assert!("P98".parse::<AggregationType>().is_err());
    }

    #[test]
    fn bitset_round_trip() {
        let id = AggregationId::from_types([Max, P99, Last]);
        assert_eq!(id.0, (1 << 1) | (1 << 3) | (1 << 20));
        assert_eq!(id.types().collect::<Vec<_>>(), vec![Last, Max, P99]);
        assert!(!id.has_unknown_bits());
        assert!(AggregationId(1).has_unknown_bits());
    }

    #[test]
    fn defaults_are_valid_for_their_type() {
        for m in MetricType::ALL {
            for t in default_types(m) {
                assert!(t.is_valid_for(m), "{t} for {m}");
            }
            assert_eq!(
                AggregationId::DEFAULT.resolve(m).types().count(),
                default_types(m).len()
            );
        }
        assert_eq!(default_types(MetricType::Timer).len(), 11);
    }
}
