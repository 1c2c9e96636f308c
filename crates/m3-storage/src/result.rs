//! Read results and the pieces of Prometheus' JSON they are written with.
//!
//! [`Series`] serializes as an element of a Prometheus matrix,
//! `{"metric":{"__name__":"up"},"values":[[1700000000,"1"],[1700000015,"0"]]}`, and [`Point`]
//! as one `[t, "v"]` pair; the query engine (`m3-query`) builds its answers from both, byte for
//! byte the way Prometheus writes them.
//!
//! Two formatting rules come from Prometheus and matter to clients that compare strings:
//!
//! * **Timestamps** are Unix seconds as a JSON number with millisecond precision: whole seconds
//!   print without a fraction (`1700000000`), others with the shortest fraction (`1700000000.5`).
//! * **Values** are strings: `"NaN"`, `"+Inf"`, `"-Inf"`, otherwise the shortest decimal that
//!   reads back to the same `f64`, in plain notation, switching to exponent notation (`"1e+21"`,
//!   `"1.5e-07"`) below 1e-6 and from 1e21 on in magnitude. See [`format_value`].

use serde::ser::{Serialize, SerializeStruct, SerializeTuple, Serializer};

use crate::labels::Labels;

/// `[t, "v"]`: a timestamp in Unix milliseconds and a value, in Prometheus' JSON form.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point(pub i64, pub f64);

impl Serialize for Point {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut t = serializer.serialize_tuple(2)?;
        t.serialize_element(&Seconds(self.0))?;
        t.serialize_element(&format_value(self.1))?;
        t.end()
    }
}

/// A series and its samples, oldest first.
///
/// Serializes as an element of a Prometheus matrix: `{"metric": {...}, "values": [[t, "v"], ...]}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The series' labels.
    pub labels: Labels,
    /// `(timestamp ms, value)` pairs in increasing time order.
    pub samples: Vec<(i64, f64)>,
}

impl Serialize for Series {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Series", 2)?;
        s.serialize_field("metric", &self.labels)?;
        s.serialize_field("values", &PointSeq(&self.samples))?;
        s.end()
    }
}

/// A slice of `(ms, value)` pairs serialized as a list of [`Point`]s.
pub(crate) struct PointSeq<'a>(pub(crate) &'a [(i64, f64)]);

impl Serialize for PointSeq<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|&(t, v)| Point(t, v)))
    }
}

/// Unix milliseconds written as seconds: an integer when whole, else a float with the fraction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub i64);

impl Serialize for Seconds {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0 % 1000 == 0 {
            serializer.serialize_i64(self.0 / 1000)
        } else {
            // Both operands are exact in f64 (|ms| < 2^53 for any realistic time), so the quotient
            // is the double nearest to the decimal seconds value, and shortest-round-trip
            // printing yields exactly that decimal.
            serializer.serialize_f64(self.0 as f64 / 1000.0)
        }
    }
}

/// Formats a sample value the way Prometheus' API does.
///
/// ```
/// use m3_storage::format_value;
///
/// assert_eq!(format_value(1.0), "1");
/// assert_eq!(format_value(0.1), "0.1");
/// assert_eq!(format_value(f64::NAN), "NaN");
/// assert_eq!(format_value(f64::INFINITY), "+Inf");
/// assert_eq!(format_value(1e21), "1e+21");
/// assert_eq!(format_value(1.5e-7), "1.5e-07");
/// ```
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        return "NaN".to_string();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.to_string();
    }
    let abs = v.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        // Rust's `{:e}` is shortest-round-trip like Go's; only the exponent is written differently
        // (Go: explicit sign, at least two digits).
        let s = format!("{v:e}");
        if let Some((mantissa, exp)) = s.split_once('e') {
            let (sign, digits) = match exp.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', exp),
            };
            return format!("{mantissa}e{sign}{digits:0>2}");
        }
        return s;
    }
    format!("{v}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_format_like_prometheus() {
        let cases = [
            (0.0, "0"),
            (-0.0, "-0"),
            (1.0, "1"),
            (-2.5, "-2.5"),
            (0.1, "0.1"),
            (1.0 / 3.0, "0.3333333333333333"),
            (1e20, "100000000000000000000"),
            (1e21, "1e+21"),
            (-1.234e25, "-1.234e+25"),
            (1e-6, "0.000001"),
            (9.9e-7, "9.9e-07"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (f64::NEG_INFINITY, "-Inf"),
            (123456789.125, "123456789.125"),
        ];
        for (v, want) in cases {
            assert_eq!(format_value(v), want, "{v:?}");
        }
    }

    #[test]
    fn timestamps_are_seconds_with_ms_precision() {
        let j = |ms| serde_json::to_string(&Point(ms, 1.0)).unwrap();
        assert_eq!(j(1_700_000_000_000), r#"[1700000000,"1"]"#);
        assert_eq!(j(1_700_000_000_500), r#"[1700000000.5,"1"]"#);
        assert_eq!(j(1_700_000_000_123), r#"[1700000000.123,"1"]"#);
        assert_eq!(j(1_700_000_000_001), r#"[1700000000.001,"1"]"#);
        assert_eq!(j(-1_500), r#"[-1.5,"1"]"#);
        assert_eq!(j(0), r#"[0,"1"]"#);
    }

    #[test]
    fn every_millisecond_fraction_prints_exactly() {
        for frac in 0..1000 {
            let ms = 1_700_000_000_000 + frac;
            let s = serde_json::to_string(&Seconds(ms)).unwrap();
            let want = if frac == 0 {
                "1700000000".to_string()
            } else {
                format!("1700000000.{frac:03}")
                    .trim_end_matches('0')
                    .to_string()
            };
            assert_eq!(s, want);
        }
    }
}
