//! Transforms: what a pipeline does to each window's value before it is rolled up or stored.
//!
//! M3's `src/metrics/transformation`, first-order only:
//!
//! | transform | kind | result for the window value `v` at time `t` |
//! |---|---|---|
//! | `Absolute` | unary | `|v|` |
//! | `PerSecond` | binary | `(v − prev) / (t − prevT)` per second; none when either is NaN, time does not advance or `v < prev` |
//! | `Increase` | binary | `v − prev`, with a missing previous value counting as 0 (the first window emits `v` whole); none when `v` is NaN, time does not advance or `v < prev` (a counter reset) |
//! | `Add` | unary, stateful | the running sum of every value so far (NaN adds nothing) |
//! | `Reset` | unary | `v`, plus a `0` half a resolution later when stored (never forwarded) |
//!
//! "Previous" is the value fed into the same transform for the series' last window that had
//! data, however long ago. Every replica runs the transforms on every window, also the ones it
//! discards as a follower, so a new leader continues with the same state.

use m3_proto::transformationpb::TransformationType;

/// One transform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transform {
    /// `|v|`.
    Absolute,
    /// Rate per second against the previous window.
    PerSecond,
    /// Increase against the previous window.
    Increase,
    /// Running sum.
    Add,
    /// `v`, then a zero half a resolution later.
    Reset,
}

impl Transform {
    /// Every transform.
    pub const ALL: [Transform; 5] = [
        Transform::Absolute,
        Transform::PerSecond,
        Transform::Increase,
        Transform::Add,
        Transform::Reset,
    ];

    /// The name in rules (`Absolute`, `PerSecond`, `Increase`, `Add`, `Reset`).
    pub fn name(self) -> &'static str {
        match self {
            Transform::Absolute => "Absolute",
            Transform::PerSecond => "PerSecond",
            Transform::Increase => "Increase",
            Transform::Add => "Add",
            Transform::Reset => "Reset",
        }
    }

    /// Parses a rule's transform name (exact, as M3).
    pub fn parse(name: &str) -> Option<Transform> {
        Transform::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Whether the transform compares against the previous window (a derivative).
    pub fn is_binary(self) -> bool {
        matches!(self, Transform::PerSecond | Transform::Increase)
    }

    /// The protobuf enum value.
    pub fn to_proto(self) -> i32 {
        (match self {
            Transform::Absolute => TransformationType::Absolute,
            Transform::PerSecond => TransformationType::Persecond,
            Transform::Increase => TransformationType::Increase,
            Transform::Add => TransformationType::Add,
            Transform::Reset => TransformationType::Reset,
        }) as i32
    }

    /// From the protobuf enum value.
    pub fn from_proto(value: i32) -> Option<Transform> {
        match TransformationType::try_from(value).ok()? {
            TransformationType::Absolute => Some(Transform::Absolute),
            TransformationType::Persecond => Some(Transform::PerSecond),
            TransformationType::Increase => Some(Transform::Increase),
            TransformationType::Add => Some(Transform::Add),
            TransformationType::Reset => Some(Transform::Reset),
            TransformationType::Unknown => None,
        }
    }
}

/// The state one transform keeps for one series and aggregation type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TransformState {
    /// Binary transforms: the time and input value of the previous window (NaN: none).
    prev_time: i64,
    prev_value: f64,
    /// `Add`: the running sum.
    sum: f64,
}

impl Default for TransformState {
    fn default() -> Self {
        TransformState {
            prev_time: 0,
            prev_value: f64::NAN,
            sum: 0.0,
        }
    }
}

/// The result of a chain of transforms for one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transformed {
    /// The value (NaN: no point for this window).
    pub value: f64,
    /// `Reset`: a zero to store at this time too.
    pub reset_at: Option<i64>,
}

/// Runs `transforms` over the window value `value` at `time_nanos`, updating `states` (one per
/// transform). `resolution_nanos` places `Reset`'s zero.
///
/// # Panics
/// When `states` is shorter than `transforms`.
pub fn apply(
    transforms: &[Transform],
    states: &mut [TransformState],
    time_nanos: i64,
    value: f64,
    resolution_nanos: i64,
) -> Transformed {
    let mut value = value;
    let mut reset_at = None;
    for (transform, state) in transforms.iter().zip(states.iter_mut()) {
        value = match transform {
            Transform::Absolute => value.abs(),
            Transform::Add => {
                if !value.is_nan() {
                    state.sum += value;
                }
                state.sum
            }
            Transform::Reset => {
                reset_at = Some(time_nanos.saturating_add((resolution_nanos / 2).max(1)));
                value
            }
            Transform::PerSecond | Transform::Increase => {
                let (prev_time, prev_value) = (state.prev_time, state.prev_value);
                state.prev_time = time_nanos;
                state.prev_value = value;
                binary(*transform, prev_time, prev_value, time_nanos, value)
            }
        };
    }
    Transformed { value, reset_at }
}

fn binary(transform: Transform, prev_time: i64, prev: f64, time: i64, value: f64) -> f64 {
    if prev_time >= time || value.is_nan() {
        return f64::NAN;
    }
    match transform {
        Transform::PerSecond => {
            let diff = value - prev;
            if prev.is_nan() || diff < 0.0 {
                return f64::NAN;
            }
            diff * 1e9 / (time - prev_time) as f64
        }
        _ => {
            let prev = if prev.is_nan() { 0.0 } else { prev };
            let diff = value - prev;
            if diff < 0.0 { f64::NAN } else { diff }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn run(transforms: &[Transform], points: &[(i64, f64)]) -> Vec<f64> {
        let mut states = vec![TransformState::default(); transforms.len()];
        points
            .iter()
            .map(|&(t, v)| apply(transforms, &mut states, t * S, v, 10 * S).value)
            .collect()
    }

    fn same(got: &[f64], want: &[f64]) -> bool {
        got.len() == want.len()
            && got
                .iter()
                .zip(want)
                .all(|(a, b)| (a.is_nan() && b.is_nan()) || a == b)
    }

    #[test]
    fn increase_counts_the_first_window_whole_and_drops_a_reset() {
        let got = run(
            &[Transform::Increase],
            &[(30, 110.0), (60, 130.0), (90, 5.0), (120, 15.0)],
        );
        assert!(same(&got, &[110.0, 20.0, f64::NAN, 10.0]), "{got:?}");
    }

    #[test]
    fn per_second_needs_a_previous_value() {
        let got = run(
            &[Transform::PerSecond],
            &[(10, 5.0), (20, 25.0), (30, 20.0)],
        );
        assert!(same(&got, &[f64::NAN, 2.0, f64::NAN]), "{got:?}");
    }

    #[test]
    fn add_keeps_a_running_sum_and_ignores_nan() {
        let got = run(&[Transform::Add], &[(1, 3.0), (2, f64::NAN), (3, 4.0)]);
        assert!(same(&got, &[3.0, 3.0, 7.0]), "{got:?}");
    }

    #[test]
    fn absolute_and_reset() {
        let mut states = vec![TransformState::default(); 2];
        let out = apply(
            &[Transform::Absolute, Transform::Reset],
            &mut states,
            100 * S,
            -4.0,
            10 * S,
        );
        assert_eq!(out.value, 4.0);
        assert_eq!(out.reset_at, Some(105 * S));
    }

    #[test]
    fn names_and_protos_round_trip() {
        for t in Transform::ALL {
            assert_eq!(Transform::parse(t.name()), Some(t));
            assert_eq!(Transform::from_proto(t.to_proto()), Some(t));
        }
        assert_eq!(
            Transform::parse("increase"),
            None,
            "names are exact, as in M3"
        );
    }
}
