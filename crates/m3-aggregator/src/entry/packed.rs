//! The windows of gauges and counters packed to 12 bytes each.
//!
//! A timed series keeps a window open per resolution until the past buffer has passed: eight
//! for a sample every 10 s under the default 1 m buffer. Stored with its start (or, for `Last`,
//! its value's timestamp) as an `i64` next to its 8-byte state, a window takes 16 bytes. Here
//! it takes 12: the state's 8 bytes and a 32-bit key counted from a base the list keeps once.
//!
//! | state | the key counts | in steps of |
//! |---|---|---|
//! | `Last` | the value's timestamp | 1 ms |
//! | `Sum` | the window's start | the resolution |
//!
//! Eight windows then fit jemalloc's 96-byte size class rather than its 128-byte one, ten the
//! 128-byte class rather than the 160-byte one.
//!
//! Packing is exact or not done. A `Last` timestamp off the base's millisecond grid
//! (Prometheus's timestamps are whole milliseconds; an M3 client may send any nanosecond), or
//! a key of 2^32 − 1 steps or more, makes [`PackedWindows::add`] refuse with [`Unpackable`]
//! and leave the list as it was. The elem then keeps its windows in the wide form (`OneInline`
//! in `entry.rs`) until they have all flushed. The base moves to the oldest window left at
//! every flush, so a series that always has a window open keeps small keys.
//!
//! Slots after the last window hold [`Slot::EMPTY`]: the slice's length is the list's
//! capacity. It grows one slot at a time up to sixteen, then by half, as the wide vectors do,
//! so it settles at the number of windows the series keeps open.

use std::cmp::Ordering;
use std::marker::PhantomData;

use m3_metric::AggregationType;

use super::{Stored, TooManyWindows, Window, visit_ended};
use crate::aggregation::{LastValue, SumValue, WindowState};

/// Nanoseconds in the step of a `Last` key.
const MILLISECOND: i64 = 1_000_000;

/// A window whose whole state is one `f64` and one time: what packing needs of it.
pub(crate) trait Packable: Stored {
    /// The time the key stands for: a `Last` value's timestamp, a `Sum` window's start.
    fn keyed_time(&self) -> i64;
    /// Nanoseconds per key step, for windows of `resolution`.
    fn step(resolution: i64) -> i64;
    /// The state's value.
    fn value(&self) -> f64;
    /// The window with this keyed time and value.
    fn from_parts(keyed_time: i64, value: f64) -> Self;
}

impl Packable for LastValue {
    fn keyed_time(&self) -> i64 {
        self.time_nanos()
    }

    fn step(_resolution: i64) -> i64 {
        MILLISECOND
    }

    fn value(&self) -> f64 {
        self.value_of(AggregationType::Last)
    }

    fn from_parts(keyed_time: i64, value: f64) -> Self {
        <LastValue as WindowState>::new(keyed_time, value)
    }
}

impl Packable for Window<SumValue> {
    fn keyed_time(&self) -> i64 {
        self.start
    }

    fn step(resolution: i64) -> i64 {
        resolution
    }

    fn value(&self) -> f64 {
        self.state.value_of(AggregationType::Sum)
    }

    fn from_parts(keyed_time: i64, value: f64) -> Self {
        Window {
            start: keyed_time,
            state: SumValue::new(keyed_time, value),
        }
    }
}

/// One window: the value's bits and the key (4-byte alignment, so 12 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Slot {
    value: [u32; 2],
    key: u32,
}

impl Slot {
    /// A slot past the last window.
    const EMPTY: Slot = Slot {
        value: [0; 2],
        key: u32::MAX,
    };

    fn new(key: u32, value: f64) -> Slot {
        let bits = value.to_bits();
        Slot {
            value: [bits as u32, (bits >> 32) as u32],
            key,
        }
    }

    fn value(self) -> f64 {
        f64::from_bits(u64::from(self.value[0]) | (u64::from(self.value[1]) << 32))
    }

    fn is_empty(self) -> bool {
        self.key == Slot::EMPTY.key
    }
}

/// The key of `time` counted from `base` in steps of `step`: `None` unless `time` is a whole
/// number of steps after `base`, fewer than 2^32 − 1.
fn key_of(base: i64, time: i64, step: i64) -> Option<u32> {
    let after = time.checked_sub(base)?;
    if after < 0 || step <= 0 || after % step != 0 {
        return None;
    }
    u32::try_from(after / step)
        .ok()
        .filter(|key| *key != Slot::EMPTY.key)
}

/// A window that the packed form cannot hold exactly: the list is as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Unpackable;

/// An elem's windows, sorted by start, packed; see the module docs.
#[derive(Debug, Clone)]
pub(crate) struct PackedWindows<W> {
    /// The time key 0 stands for.
    base: i64,
    /// The windows, then [`Slot::EMPTY`] to the capacity.
    slots: Box<[Slot]>,
    kind: PhantomData<fn() -> W>,
}

impl<W: Packable> PackedWindows<W> {
    /// `windows` (sorted by start) packed, or `None` if there are none or one cannot be.
    pub(super) fn pack(windows: &[W], resolution: i64) -> Option<PackedWindows<W>> {
        let base = windows.first()?.keyed_time();
        let step = W::step(resolution);
        let slots = windows
            .iter()
            .map(|w| Some(Slot::new(key_of(base, w.keyed_time(), step)?, w.value())))
            .collect::<Option<Box<[Slot]>>>()?;
        Some(PackedWindows {
            base,
            slots,
            kind: PhantomData,
        })
    }

    /// The windows, in the wide form.
    pub(super) fn unpack(&self, resolution: i64) -> Vec<W> {
        self.windows()
            .iter()
            .map(|slot| self.window(*slot, resolution))
            .collect()
    }

    pub(super) fn len(&self) -> usize {
        self.slots.iter().take_while(|s| !s.is_empty()).count()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.slots.first().is_none_or(|s| s.is_empty())
    }

    /// Heap bytes held (capacity, not length).
    pub(super) fn heap_bytes(&self) -> usize {
        std::mem::size_of_val::<[Slot]>(&self.slots)
    }

    fn windows(&self) -> &[Slot] {
        &self.slots[..self.len()]
    }

    fn window(&self, slot: Slot, resolution: i64) -> W {
        // The key was taken from a time this far after the base, so this gives it back.
        let after = i64::from(slot.key).wrapping_mul(W::step(resolution));
        W::from_parts(self.base.wrapping_add(after), slot.value())
    }

    /// As `add_to` in `entry.rs`: adds `values` observed at `time_nanos` to the window
    /// `[start, end)`, opening it if it is not there. [`Unpackable`] when the window that
    /// results cannot be packed; nothing has changed then.
    pub(super) fn add(
        &mut self,
        start: i64,
        end: i64,
        time_nanos: i64,
        values: &[f64],
        max_windows: usize,
    ) -> Result<Result<(), TooManyWindows>, Unpackable> {
        let Some((first, rest)) = values.split_first() else {
            return Ok(Ok(()));
        };
        let resolution = end.saturating_sub(start);
        let step = W::step(resolution);
        let len = self.len();
        // Most writes hit the newest window: search from the back.
        let mut insert_at = 0;
        for i in (0..len).rev() {
            let mut window = self.window(self.slots[i], resolution);
            match window.cmp_window(start, end) {
                Ordering::Equal => {
                    for v in values {
                        window.add(time_nanos, *v);
                    }
                    let key = key_of(self.base, window.keyed_time(), step).ok_or(Unpackable)?;
                    self.slots[i] = Slot::new(key, window.value());
                    return Ok(Ok(()));
                }
                Ordering::Less => {
                    insert_at = i + 1;
                    break;
                }
                Ordering::Greater => {}
            }
        }
        if len >= max_windows {
            return Ok(Err(TooManyWindows));
        }
        let mut window = W::open(start, time_nanos, *first);
        for v in rest {
            window.add(time_nanos, *v);
        }
        self.insert(insert_at, len, &window, step)?;
        Ok(Ok(()))
    }

    /// Puts `window` at `at` of the `len` windows, moving the base back to it if it is older.
    fn insert(&mut self, at: usize, len: usize, window: &W, step: i64) -> Result<(), Unpackable> {
        let time = window.keyed_time();
        let key = if time < self.base {
            let shift = key_of(time, self.base, step).ok_or(Unpackable)?;
            let shifted_fits = self.slots[..len].iter().all(|s| {
                s.key
                    .checked_add(shift)
                    .is_some_and(|key| key != Slot::EMPTY.key)
            });
            if !shifted_fits {
                return Err(Unpackable);
            }
            for slot in &mut self.slots[..len] {
                slot.key += shift;
            }
            self.base = time;
            0
        } else {
            key_of(self.base, time, step).ok_or(Unpackable)?
        };
        if len == self.slots.len() {
            let mut grown = Vec::from(std::mem::take(&mut self.slots));
            let more = if len < 16 { 1 } else { len / 2 };
            grown.reserve_exact(more);
            grown.resize(len + more, Slot::EMPTY);
            self.slots = grown.into_boxed_slice();
        }
        self.slots.copy_within(at..len, at + 1);
        self.slots[at] = Slot::new(key, window.value());
        Ok(())
    }

    /// As `take_until` in `entry.rs`: removes every window whose end is ≤ `until_end`, oldest
    /// first, showing each to `visit` with its start; returns how many went. The slots stay
    /// (see [`is_empty`](Self::is_empty)).
    pub(super) fn take_until(
        &mut self,
        resolution: i64,
        until_end: i64,
        visit: &mut dyn FnMut(i64, &dyn WindowState),
    ) -> usize {
        let len = self.len();
        let windows = self.slots[..len]
            .iter()
            .map(|slot| self.window(*slot, resolution));
        let taken = visit_ended::<W>(windows, resolution, until_end, visit);
        if taken > 0 {
            self.slots.copy_within(taken..len, 0);
            self.slots[len - taken..len].fill(Slot::EMPTY);
            // The oldest window left becomes the base: keys stay small.
            if let Some(shift) = self.slots.first().filter(|s| !s.is_empty()).map(|s| s.key) {
                let step = W::step(resolution);
                self.base = self.base.wrapping_add(i64::from(shift).wrapping_mul(step));
                for slot in &mut self.slots[..len - taken] {
                    slot.key -= shift;
                }
            }
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = MILLISECOND;
    const S: i64 = 1_000 * MS;

    fn last(windows: &PackedWindows<LastValue>, resolution: i64) -> Vec<(i64, f64)> {
        windows
            .unpack(resolution)
            .iter()
            .map(|w| (w.time_nanos(), w.value()))
            .collect()
    }

    #[test]
    fn a_slot_is_twelve_bytes_and_the_list_twenty_four() {
        assert_eq!(std::mem::size_of::<Slot>(), 12);
        assert_eq!(std::mem::size_of::<PackedWindows<LastValue>>(), 24);
        assert_eq!(std::mem::size_of::<PackedWindows<Window<SumValue>>>(), 24);
    }

    #[test]
    fn values_keep_every_bit() {
        for v in [
            0.0,
            -0.0,
            f64::NAN,
            f64::INFINITY,
            f64::MIN_POSITIVE,
            -1.5e300,
        ] {
            assert_eq!(Slot::new(7, v).value().to_bits(), v.to_bits());
        }
    }

    #[test]
    fn keys_are_whole_steps_below_the_empty_mark() {
        assert_eq!(key_of(10, 10, 5), Some(0));
        assert_eq!(key_of(10, 25, 5), Some(3));
        assert_eq!(key_of(10, 26, 5), None);
        assert_eq!(key_of(10, 5, 5), None);
        assert_eq!(key_of(0, (u32::MAX as i64 - 1) * 2, 2), Some(u32::MAX - 1));
        assert_eq!(key_of(0, u32::MAX as i64 * 2, 2), None);
        assert_eq!(key_of(i64::MIN, i64::MAX, 1), None);
        assert_eq!(key_of(0, 10, 0), None);
    }

    #[test]
    fn an_off_grid_timestamp_is_refused_and_changes_nothing() {
        let r = 10 * S;
        let windows = [
            <LastValue as WindowState>::new(5 * S, 1.0),
            <LastValue as WindowState>::new(15 * S, 2.0),
        ];
        let mut packed = PackedWindows::pack(&windows, r).expect("whole milliseconds pack");
        let before = last(&packed, r);
        // Later in the newest window, a nanosecond off the grid.
        assert_eq!(
            packed.add(10 * S, 20 * S, 16 * S + 1, &[3.0], 8),
            Err(Unpackable)
        );
        // A new window off the grid.
        assert_eq!(
            packed.add(20 * S, 30 * S, 21 * S + 1, &[3.0], 8),
            Err(Unpackable)
        );
        assert_eq!(last(&packed, r), before);
        // On the grid, both go in.
        assert_eq!(packed.add(10 * S, 20 * S, 16 * S, &[3.0], 8), Ok(Ok(())));
        assert_eq!(packed.add(20 * S, 30 * S, 21 * S, &[4.0], 8), Ok(Ok(())));
        assert_eq!(
            last(&packed, r),
            vec![(5 * S, 1.0), (16 * S, 3.0), (21 * S, 4.0)]
        );
    }

    #[test]
    fn an_older_window_moves_the_base_back() {
        let r = 10 * S;
        let mut packed =
            PackedWindows::pack(&[<LastValue as WindowState>::new(100 * S, 1.0)], r).unwrap();
        assert_eq!(packed.add(50 * S, 60 * S, 55 * S, &[2.0], 8), Ok(Ok(())));
        assert_eq!(packed.base, 55 * S);
        assert_eq!(last(&packed, r), vec![(55 * S, 2.0), (100 * S, 1.0)]);
        // So far back that the newest key would not fit: refused, unchanged.
        let far = 100 * S - i64::from(u32::MAX) * MS;
        let far_start = far - far.rem_euclid(r);
        assert_eq!(
            packed.add(far_start, far_start + r, far, &[3.0], 8),
            Err(Unpackable)
        );
        assert_eq!(last(&packed, r), vec![(55 * S, 2.0), (100 * S, 1.0)]);
    }

    #[test]
    fn a_series_that_always_has_a_window_open_stays_packed_past_the_key_range() {
        // Daily windows for a year: 2^32 ms is under 50 days.
        let day = 86_400 * S;
        let mut packed =
            PackedWindows::pack(&[<LastValue as WindowState>::new(0, 0.0)], day).unwrap();
        for d in 1..365 {
            let t = d * day + 7 * MS;
            assert_eq!(
                packed.add(d * day, (d + 1) * day, t, &[d as f64], 4),
                Ok(Ok(()))
            );
            let mut seen = Vec::new();
            assert_eq!(packed.take_until(day, d * day, &mut |s, _| seen.push(s)), 1);
            assert_eq!(seen, vec![(d - 1) * day]);
            assert_eq!(last(&packed, day), vec![(t, d as f64)]);
        }
        assert_eq!(packed.heap_bytes(), 2 * 12);
    }

    #[test]
    fn sum_windows_key_their_start_in_resolutions() {
        let r = 10 * S;
        let mut packed =
            PackedWindows::pack(&[Window::<SumValue>::from_parts(-20 * S, 1.0)], r).unwrap();
        for (start, v) in [(30 * S, 2.0), (-20 * S, 0.5), (-40 * S, 4.0), (30 * S, 1.0)] {
            assert_eq!(packed.add(start, start + r, start + 3, &[v], 8), Ok(Ok(())));
        }
        let mut seen = Vec::new();
        let taken = packed.take_until(r, 40 * S, &mut |s, w| {
            seen.push((s, w.value_of(AggregationType::Sum)))
        });
        assert_eq!(taken, 3);
        assert_eq!(seen, vec![(-40 * S, 4.0), (-20 * S, 1.5), (30 * S, 3.0)]);
        assert!(packed.is_empty());
        assert_eq!(packed.heap_bytes(), 3 * 12);
    }
}
