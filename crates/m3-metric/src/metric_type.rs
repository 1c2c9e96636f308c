//! The three metric types M3 aggregates.

use m3_proto::metricpb;

/// What kind of values a metric carries, which decides its valid and default aggregations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MetricType {
    /// Integer increments, summed per window by default.
    Counter,
    /// Batches of float samples (durations, sizes), summarised with statistics and quantiles.
    Timer,
    /// Float values, the latest per window by default.
    Gauge,
}

impl MetricType {
    /// All metric types, in M3's enum order.
    pub const ALL: [MetricType; 3] = [MetricType::Counter, MetricType::Timer, MetricType::Gauge];

    /// The lower-case name used in logs and self-metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Timer => "timer",
            MetricType::Gauge => "gauge",
        }
    }

    /// The metric type of a protobuf `MetricType`, or `None` for `UNKNOWN` and unknown values.
    pub fn from_proto(value: i32) -> Option<MetricType> {
        match metricpb::MetricType::try_from(value).ok()? {
            metricpb::MetricType::Counter => Some(MetricType::Counter),
            metricpb::MetricType::Timer => Some(MetricType::Timer),
            metricpb::MetricType::Gauge => Some(MetricType::Gauge),
            metricpb::MetricType::Unknown => None,
        }
    }

    /// The protobuf `MetricType` value.
    pub fn to_proto(self) -> i32 {
        match self {
            MetricType::Counter => metricpb::MetricType::Counter as i32,
            MetricType::Timer => metricpb::MetricType::Timer as i32,
            MetricType::Gauge => metricpb::MetricType::Gauge as i32,
        }
    }
}

impl std::fmt::Display for MetricType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proto_round_trip() {
        for t in MetricType::ALL {
            assert_eq!(MetricType::from_proto(t.to_proto()), Some(t));
        }
        assert_eq!(MetricType::from_proto(0), None);
        assert_eq!(MetricType::from_proto(99), None);
    }
}
