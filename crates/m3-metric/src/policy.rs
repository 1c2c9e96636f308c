//! Storage policies: how finely a metric is aggregated and how long the result is kept.
//!
//! The text form is M3's: `resolution:retention`, where the resolution may name its precision
//! with `@`: `10s:2d`, `1m:40d`, `1m@1s:40d`. Without `@`, the precision is the largest time unit
//! that divides the window (10s → 1s, 1m → 1m), and it is printed only when it differs from that.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use m3_proto::policypb;

use m3_config::duration::{ParseDurationError, format_duration, parse_duration};

/// The window a metric is aggregated over, and the precision its timestamps are kept at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Resolution {
    /// Length of each aggregation window; windows are aligned to the Unix epoch.
    pub window: Duration,
    /// Precision of the emitted timestamps.
    pub precision: Duration,
}

/// How long aggregated data is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Retention(pub Duration);

/// A resolution and a retention: one aggregated output of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoragePolicy {
    /// Window and precision.
    pub resolution: Resolution,
    /// Retention of the output.
    pub retention: Retention,
}

/// A storage policy string that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParsePolicyError {
    /// No `:` between resolution and retention.
    #[error("invalid storage policy {0:?}: expected resolution:retention, e.g. 10s:2d")]
    MissingSeparator(String),
    /// A part is not a duration.
    #[error("invalid storage policy {policy:?}: {source}")]
    Duration {
        /// The whole policy text.
        policy: String,
        /// The duration error.
        source: ParseDurationError,
    },
    /// A zero window, zero retention, or a precision that does not fit the window.
    #[error("invalid storage policy {policy:?}: {reason}")]
    Invalid {
        /// The whole policy text.
        policy: String,
        /// What is wrong.
        reason: &'static str,
    },
}

const PRECISION_UNITS: [Duration; 6] = [
    Duration::from_secs(86_400),
    Duration::from_secs(3_600),
    Duration::from_secs(60),
    Duration::from_secs(1),
    Duration::from_millis(1),
    Duration::from_micros(1),
];

impl Resolution {
    /// A resolution with the default precision for `window`.
    pub fn new(window: Duration) -> Resolution {
        Resolution {
            window,
            precision: default_precision(window),
        }
    }

    /// Window size in nanoseconds.
    pub fn window_nanos(&self) -> i64 {
        i64::try_from(self.window.as_nanos()).unwrap_or(i64::MAX)
    }
}

/// The largest time unit that divides `window` exactly.
pub fn default_precision(window: Duration) -> Duration {
    let nanos = window.as_nanos();
    PRECISION_UNITS
        .into_iter()
        .find(|unit| nanos != 0 && nanos.is_multiple_of(unit.as_nanos()))
        .unwrap_or(Duration::from_nanos(1))
}

impl StoragePolicy {
    /// A policy with the default precision.
    pub fn new(window: Duration, retention: Duration) -> StoragePolicy {
        StoragePolicy {
            resolution: Resolution::new(window),
            retention: Retention(retention),
        }
    }

    /// The protobuf form.
    pub fn to_proto(&self) -> policypb::StoragePolicy {
        policypb::StoragePolicy {
            resolution: Some(policypb::Resolution {
                window_size: self.resolution.window_nanos(),
                precision: i64::try_from(self.resolution.precision.as_nanos()).unwrap_or(i64::MAX),
            }),
            retention: Some(policypb::Retention {
                period: i64::try_from(self.retention.0.as_nanos()).unwrap_or(i64::MAX),
            }),
        }
    }

    /// Reads the protobuf form; `None` when a part is missing or not positive.
    pub fn from_proto(proto: &policypb::StoragePolicy) -> Option<StoragePolicy> {
        let resolution = proto.resolution.as_ref()?;
        let retention = proto.retention.as_ref()?;
        if resolution.window_size <= 0 || retention.period <= 0 || resolution.precision < 0 {
            return None;
        }
        let window = Duration::from_nanos(resolution.window_size as u64);
        let precision = if resolution.precision == 0 {
            default_precision(window)
        } else {
            Duration::from_nanos(resolution.precision as u64)
        };
        Some(StoragePolicy {
            resolution: Resolution { window, precision },
            retention: Retention(Duration::from_nanos(retention.period as u64)),
        })
    }
}

impl FromStr for StoragePolicy {
    type Err = ParsePolicyError;

    fn from_str(text: &str) -> Result<StoragePolicy, ParsePolicyError> {
        let (resolution_text, retention_text) = text
            .split_once(':')
            .ok_or_else(|| ParsePolicyError::MissingSeparator(text.to_string()))?;
        let parse = |part: &str| {
            parse_duration(part).map_err(|source| ParsePolicyError::Duration {
                policy: text.to_string(),
                source,
            })
        };
        let invalid = |reason| ParsePolicyError::Invalid {
            policy: text.to_string(),
            reason,
        };
        let (window, precision) = match resolution_text.split_once('@') {
            Some((w, p)) => (parse(w)?, Some(parse(p)?)),
            None => (parse(resolution_text)?, None),
        };
        let retention = parse(retention_text)?;
        if window.is_zero() {
            return Err(invalid("resolution must be positive"));
        }
        if retention.is_zero() {
            return Err(invalid("retention must be positive"));
        }
        let precision = match precision {
            Some(p) if p.is_zero() || p > window || window.as_nanos() % p.as_nanos() != 0 => {
                return Err(invalid(
                    "precision must be positive and divide the resolution",
                ));
            }
            Some(p) => p,
            None => default_precision(window),
        };
        Ok(StoragePolicy {
            resolution: Resolution { window, precision },
            retention: Retention(retention),
        })
    }
}

impl fmt::Display for StoragePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.resolution.window))?;
        if self.resolution.precision != default_precision(self.resolution.window) {
            write!(f, "@{}", format_duration(self.resolution.precision))?;
        }
        write!(f, ":{}", format_duration(self.retention.0))
    }
}

impl serde::Serialize for StoragePolicy {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for StoragePolicy {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_prints_m3_forms() {
        for text in ["10s:2d", "1m:40d", "1m@1s:40d", "1h:365d", "10s@1ms:6h"] {
            let policy: StoragePolicy = text.parse().unwrap();
            assert_eq!(policy.to_string(), text);
        }
        let p: StoragePolicy = "10s:2d".parse().unwrap();
        assert_eq!(p.resolution.window, Duration::from_secs(10));
        assert_eq!(p.resolution.precision, Duration::from_secs(1));
        assert_eq!(p.retention.0, Duration::from_secs(172_800));
        let p: StoragePolicy = "1m:40d".parse().unwrap();
        assert_eq!(p.resolution.precision, Duration::from_secs(60));
    }

    #[test]
    fn rejects_bad_policies() {
        for text in [
            "10s",
            "0s:2d",
            "10s:0",
            "10s@3s:2d",
            "10s@20s:2d",
            "x:2d",
            "10s:y",
        ] {
            assert!(text.parse::<StoragePolicy>().is_err(), "{text}");
        }
    }

    #[test]
    fn proto_round_trip() {
        let p: StoragePolicy = "1m@1s:40d".parse().unwrap();
        assert_eq!(StoragePolicy::from_proto(&p.to_proto()), Some(p));
        assert_eq!(
            StoragePolicy::from_proto(&policypb::StoragePolicy::default()),
            None
        );
    }

    proptest! {
        #[test]
        fn text_round_trip(window_s in 1u64..100_000, retention_h in 1u64..100_000, precision_idx in 0usize..3) {
            let window = Duration::from_secs(window_s);
            let precision = [default_precision(window), Duration::from_secs(1), Duration::from_millis(1)][precision_idx];
            let policy = StoragePolicy {
                resolution: Resolution { window, precision },
                retention: Retention(Duration::from_secs(retention_h * 3600)),
            };
            prop_assert_eq!(policy.to_string().parse::<StoragePolicy>(), Ok(policy));
        }
    }
}
