//! M3's duration strings: Go's `10s`, `1m30s`, `250ms`, plus days (`2d`), weeks (`1w`),
//! months (`1mon` = 30 days) and years (`1y` = 365 days).
//!
//! Config files, storage policies and admin requests all use them, so the one parser lives here.
//! Printing picks the largest unit that divides the duration exactly, up to days, so that
//! `"2d"`, `"40d"` and `"10s"` print back as written.
//!
//! For serde, `#[serde(with = "m3_config::duration")]` reads a required duration string and
//! `#[serde(default, with = "m3_config::option_duration")]` an optional one.

use std::time::Duration;

/// A duration string that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason}")]
pub struct ParseDurationError {
    /// The text that was given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

const UNITS: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("mon", 30 * 86_400 * 1_000_000_000),
    ("m", 60 * 1_000_000_000),
    ("h", 3_600 * 1_000_000_000),
    ("d", 86_400 * 1_000_000_000),
    ("w", 7 * 86_400 * 1_000_000_000),
    ("y", 365 * 86_400 * 1_000_000_000),
];

/// Parses `"10s"`, `"1m30s"`, `"2d"`, `"1.5h"`, `"0"`.
///
/// # Errors
/// Empty input, a missing or unknown unit, a negative value, or one above 2^63 − 1 ns (about
/// 292 years: durations are added to nanosecond timestamps).
pub fn parse_duration(input: &str) -> Result<Duration, ParseDurationError> {
    let err = |reason| ParseDurationError {
        input: input.to_string(),
        reason,
    };
    let text = input.trim();
    if text.is_empty() {
        return Err(err("empty duration"));
    }
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.starts_with('-') {
        return Err(err("negative durations are not allowed"));
    }
    let mut total: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| err("missing unit (one of ns, us, ms, s, m, h, d, w, mon, y)"))?;
        if number_len == 0 {
            return Err(err("expected a number"));
        }
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let &(_, unit_nanos) = UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .ok_or_else(|| err("unknown unit (one of ns, us, ms, s, m, h, d, w, mon, y)"))?;
        let nanos = scale(number, unit_nanos).ok_or_else(|| err("invalid number"))?;
        total = total
            .checked_add(nanos)
            .ok_or_else(|| err("duration too large"))?;
        rest = next;
    }
    // Durations are added to nanosecond timestamps (`i64`), so none may exceed their range.
    if total > i64::MAX as u128 {
        return Err(err("duration too large (at most 292 years)"));
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| err("duration too large"))?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// `number * unit_nanos` for a decimal number such as `1.5`.
fn scale(number: &str, unit_nanos: u128) -> Option<u128> {
    let (whole, fraction) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut nanos = whole.checked_mul(unit_nanos)?;
    let mut divisor: u128 = 1;
    for digit in fraction.chars() {
        divisor = divisor.checked_mul(10)?;
        let d = u128::from(digit.to_digit(10)?);
        nanos = nanos.checked_add(d.checked_mul(unit_nanos)? / divisor)?;
    }
    Some(nanos)
}

/// Prints a duration with the largest unit (up to days) that divides it exactly: `2d`, `10s`,
/// `90s`, `1500ms`.
pub fn format_duration(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    for (name, unit) in [
        ("d", 86_400_000_000_000u128),
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
    ] {
        if nanos.is_multiple_of(unit) {
            return format!("{}{name}", nanos / unit);
        }
    }
    format!("{nanos}ns")
}

/// For `#[serde(with = "m3_config::duration")]`: a required duration string.
///
/// # Errors
/// When the value is not a duration string; the message quotes the value.
pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = <String as serde::Deserialize>::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

/// An optional duration string, for `#[serde(default, with = "m3_config::option_duration")]`.
pub mod option {
    use std::time::Duration;

    use serde::Deserialize;

    /// Deserializes an absent or null value as `None`, anything else as a duration string.
    ///
    /// # Errors
    /// When the value is present and not a duration string; the message quotes the value.
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| super::parse_duration(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_go_and_extended_units() {
        let cases = [
            ("10s", Duration::from_secs(10)),
            ("1m", Duration::from_secs(60)),
            ("1m30s", Duration::from_secs(90)),
            ("250ms", Duration::from_millis(250)),
            ("2d", Duration::from_secs(2 * 86_400)),
            ("1w", Duration::from_secs(7 * 86_400)),
            ("1mon", Duration::from_secs(30 * 86_400)),
            ("1y", Duration::from_secs(365 * 86_400)),
            ("1.5h", Duration::from_secs(5_400)),
            ("1.5s", Duration::from_millis(1_500)),
            ("2h", Duration::from_secs(7_200)),
            ("5us", Duration::from_micros(5)),
            ("5µs", Duration::from_micros(5)),
            ("0", Duration::ZERO),
            ("300000000000ns", Duration::from_secs(300)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn rejects_bad_input_with_reason() {
        for text in [
            "",
            "10",
            "s",
            "10x",
            "5 parsecs",
            "-1s",
            "1..5s",
            "99999999999999999999999y",
            "18446744073709551615s",
            "293y",
        ] {
            let err = parse_duration(text).unwrap_err();
            assert_eq!(err.input, text);
        }
        assert_eq!(
            parse_duration("292y"),
            Ok(Duration::from_secs(292 * 365 * 86_400))
        );
    }

    #[test]
    fn formats_with_largest_exact_unit() {
        assert_eq!(format_duration(Duration::from_secs(172_800)), "2d");
        assert_eq!(format_duration(Duration::from_secs(10)), "10s");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(3_600)), "1h");
        assert_eq!(format_duration(Duration::from_millis(1_500)), "1500ms");
    }

    #[derive(Debug, serde::Deserialize)]
    struct Timeouts {
        #[serde(with = "crate::duration")]
        write: Duration,
        #[serde(default, with = "crate::option_duration")]
        read: Option<Duration>,
    }

    #[test]
    fn serde_helpers_read_required_and_optional_durations() {
        let t: Timeouts = serde_saphyr::from_str("write: 1m30s\nread: 250ms\n").unwrap();
        assert_eq!(t.write, Duration::from_secs(90));
        assert_eq!(t.read, Some(Duration::from_millis(250)));
        let t: Timeouts = serde_saphyr::from_str("write: 2d\n").unwrap();
        assert_eq!(t.write, Duration::from_secs(2 * 86_400));
        assert_eq!(t.read, None);
        let err = serde_saphyr::from_str::<Timeouts>("write: 1s\nread: soon\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"soon\""), "{err}");
    }

    proptest! {
        #[test]
        fn format_then_parse_is_identity(nanos in 0u64..u64::MAX / 4) {
            let d = Duration::from_nanos(nanos);
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }
}
