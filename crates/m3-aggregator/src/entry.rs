//! Entries, elems and windows: the state of one series inside a shard.
//!
//! ```text
//! Entry (one per category and metric ID)
//!  └─ Elem (one per storage policy × aggregation types × metric type)
//!      └─ window (one per open interval [start, start + resolution), sorted by start)
//! ```
//!
//! Windows are aligned to the Unix epoch: a value at `t` falls in the window starting at
//! `t` truncated to the resolution. A series written every interval has one or two open
//! windows for untimed data, and `(bufferPast + resolution) / interval + 1` for timed data,
//! because timed windows stay open until the past buffer has passed.
//!
//! Layout is chosen for memory (sizes on 64-bit):
//!
//! | part | size |
//! |---|---|
//! | [`Entry`]: the elems, one kept inline (the common case), more in a vector | 32 B |
//! | [`Elem`]: spec index, last write time (seconds) and window vector, per state kind | 32 B |
//! | a `Last` window ([`LastValue`]; its start is derived from its timestamp) | 16 B |
//! | a `Sum` window (start + [`SumValue`]) | 16 B |
//! | either, packed with its neighbours ([`packed`]) | 12 B |
//! | a `Moments` / `Timer` window (start + state) | 64 B / 88 B + sketch |
//!
//! `Last` and `Sum` windows, the states of gauges and counters, keep their first window inline
//! ([`OneInline`], in the bytes the vector would take): a series written about once per window
//! holds one window between flushes, and a heap block for it would cost as much as the window
//! again. When a second window opens they are packed ([`Elem::LastPacked`],
//! [`Elem::SumPacked`]) if they pack exactly, and stay packed until they have all flushed or
//! one does not pack (then the elem keeps the wide form until it empties). A window list grows
//! one window at a time up to sixteen, then by half: the number of windows a series keeps open
//! is steady, so its capacity settles at that number. Windows that flush empty free their
//! memory.

mod packed;

use std::cmp::Ordering;

use self::packed::{Packable, PackedWindows, Unpackable};
use crate::aggregation::{LastValue, Moments, StateKind, SumValue, TimerValues, WindowState};
use crate::flush::align_down;

/// A window stored with its start.
#[derive(Debug, Clone)]
pub(crate) struct Window<S> {
    start: i64,
    state: S,
}

/// A window as an elem stores it: a state, with its start stored or derived.
pub(crate) trait Stored: Sized {
    /// A window starting at `start` holding `value` observed at `time_nanos`.
    fn open(start: i64, time_nanos: i64, value: f64) -> Self;
    /// Where this window is relative to the window `[start, end)`.
    fn cmp_window(&self, start: i64, end: i64) -> Ordering;
    /// The start of this window of `resolution`.
    fn start(&self, resolution: i64) -> i64;
    fn add(&mut self, time_nanos: i64, value: f64);
    fn state(&self) -> &dyn WindowState;
}

impl<S: WindowState> Stored for Window<S> {
    fn open(start: i64, time_nanos: i64, value: f64) -> Self {
        Window {
            start,
            state: S::new(time_nanos, value),
        }
    }

    fn cmp_window(&self, start: i64, _end: i64) -> Ordering {
        self.start.cmp(&start)
    }

    fn start(&self, _resolution: i64) -> i64 {
        self.start
    }

    fn add(&mut self, time_nanos: i64, value: f64) {
        self.state.add(time_nanos, value);
    }

    fn state(&self) -> &dyn WindowState {
        &self.state
    }
}

/// A `Last` window needs no stored start: the timestamp of its value lies inside it.
impl Stored for LastValue {
    fn open(_start: i64, time_nanos: i64, value: f64) -> Self {
        LastValue::new(time_nanos, value)
    }

    fn cmp_window(&self, start: i64, end: i64) -> Ordering {
        let t = self.time_nanos();
        if t < start {
            Ordering::Less
        } else if t < end {
            Ordering::Equal
        } else {
            Ordering::Greater
        }
    }

    fn start(&self, resolution: i64) -> i64 {
        align_down(self.time_nanos(), resolution)
    }

    fn add(&mut self, time_nanos: i64, value: f64) {
        WindowState::add(self, time_nanos, value);
    }

    fn state(&self) -> &dyn WindowState {
        self
    }
}

/// An elem's windows, sorted by start: what [`add_to`] and [`take_until`] need of a container.
trait WindowList<W> {
    fn as_slice(&self) -> &[W];
    fn as_mut_slice(&mut self) -> &mut [W];
    /// Inserts `window` at `index` (≤ len).
    fn insert(&mut self, index: usize, window: W);
    /// Removes the first `n` (≤ len) windows.
    fn remove_first(&mut self, n: usize);
    /// Heap bytes held (capacity, not length).
    fn heap_bytes(&self) -> usize;
}

impl<W> WindowList<W> for Vec<W> {
    fn as_slice(&self) -> &[W] {
        self
    }

    fn as_mut_slice(&mut self) -> &mut [W] {
        self
    }

    fn insert(&mut self, index: usize, window: W) {
        if self.len() == self.capacity() {
            // A series keeps about the same number of windows open, so the capacity settles;
            // growing in small steps keeps it at that number.
            let len = self.len();
            self.reserve_exact(if len < 16 { 1 } else { len / 2 });
        }
        Vec::insert(self, index, window);
    }

    fn remove_first(&mut self, n: usize) {
        if n == self.len() {
            *self = Vec::new();
        } else {
            self.drain(..n);
        }
    }

    fn heap_bytes(&self) -> usize {
        self.capacity() * std::mem::size_of::<W>()
    }
}

/// Windows with the first kept inline: no heap block until a second window opens. For a
/// 16-byte window this is the size of a `Vec` (the vector's capacity holds the tag).
#[derive(Debug, Clone)]
pub(crate) enum OneInline<W> {
    One(W),
    /// Empty (without a heap block) or two windows and more.
    Many(Vec<W>),
}

impl<W> Default for OneInline<W> {
    fn default() -> Self {
        OneInline::Many(Vec::new())
    }
}

impl<W> WindowList<W> for OneInline<W> {
    fn as_slice(&self) -> &[W] {
        match self {
            OneInline::One(w) => std::slice::from_ref(w),
            OneInline::Many(v) => v,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [W] {
        match self {
            OneInline::One(w) => std::slice::from_mut(w),
            OneInline::Many(v) => v,
        }
    }

    fn insert(&mut self, index: usize, window: W) {
        match std::mem::take(self) {
            OneInline::Many(v) if v.is_empty() => *self = OneInline::One(window),
            OneInline::Many(mut v) => {
                WindowList::insert(&mut v, index, window);
                *self = OneInline::Many(v);
            }
            OneInline::One(first) => {
                let mut v = Vec::with_capacity(2);
                v.push(first);
                v.insert(index, window);
                *self = OneInline::Many(v);
            }
        }
    }

    fn remove_first(&mut self, n: usize) {
        match self {
            // A vector drained to one window stays a vector: a series that keeps one or two
            // windows open would otherwise free and allocate at every flush.
            OneInline::Many(v) => v.remove_first(n),
            OneInline::One(_) if n > 0 => *self = OneInline::default(),
            OneInline::One(_) => {}
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            OneInline::One(_) => 0,
            OneInline::Many(v) => v.heap_bytes(),
        }
    }
}

/// The elem already has as many windows as allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooManyWindows;

fn add_to<W: Stored>(
    windows: &mut impl WindowList<W>,
    start: i64,
    end: i64,
    time_nanos: i64,
    values: &[f64],
    max_windows: usize,
) -> Result<(), TooManyWindows> {
    let Some((first, rest)) = values.split_first() else {
        return Ok(());
    };
    // Most writes hit the newest window: search from the back.
    let mut insert_at = 0;
    for (i, w) in windows.as_mut_slice().iter_mut().enumerate().rev() {
        match w.cmp_window(start, end) {
            Ordering::Equal => {
                for v in values {
                    w.add(time_nanos, *v);
                }
                return Ok(());
            }
            Ordering::Less => {
                insert_at = i + 1;
                break;
            }
            Ordering::Greater => {}
        }
    }
    if windows.as_slice().len() >= max_windows {
        return Err(TooManyWindows);
    }
    let mut window = W::open(start, time_nanos, *first);
    for v in rest {
        window.add(time_nanos, *v);
    }
    windows.insert(insert_at, window);
    Ok(())
}

/// Shows `visit` the windows (sorted by start, as stored or unpacked) whose end is
/// ≤ `until_end`, with their start, and returns how many there were: the windows a flush
/// takes.
fn visit_ended<W: Stored>(
    windows: impl IntoIterator<Item = impl std::borrow::Borrow<W>>,
    resolution: i64,
    until_end: i64,
    visit: &mut dyn FnMut(i64, &dyn WindowState),
) -> usize {
    let mut n = 0;
    for w in windows {
        let w = w.borrow();
        let start = w.start(resolution);
        // Window ends never overflow: they are checked when the window is created.
        if start.saturating_add(resolution) > until_end {
            break;
        }
        visit(start, w.state());
        n += 1;
    }
    n
}

fn take_until<W: Stored>(
    windows: &mut impl WindowList<W>,
    resolution: i64,
    until_end: i64,
    visit: &mut dyn FnMut(i64, &dyn WindowState),
) -> usize {
    let n = visit_ended::<W>(windows.as_slice(), resolution, until_end, visit);
    if n > 0 {
        windows.remove_first(n);
    }
    n
}

/// The windows of one storage policy × aggregation types × metric type of a series, typed
/// by the state its aggregation types need.
#[derive(Debug, Clone)]
pub(crate) enum Elem {
    Last {
        /// Index of the elem's spec in its shard's spec table.
        spec: u16,
        /// The last accepted write (kept here, in what would be padding, rather than in the
        /// entry).
        written: WriteTime,
        windows: OneInline<LastValue>,
    },
    Sum {
        spec: u16,
        written: WriteTime,
        windows: OneInline<Window<SumValue>>,
    },
    /// `Last` with two windows and more, packed (see [`packed`]).
    LastPacked {
        spec: u16,
        written: WriteTime,
        windows: PackedWindows<LastValue>,
    },
    /// `Sum` with two windows and more, packed.
    SumPacked {
        spec: u16,
        written: WriteTime,
        windows: PackedWindows<Window<SumValue>>,
    },
    Moments {
        spec: u16,
        written: WriteTime,
        windows: Vec<Window<Moments>>,
    },
    Timer {
        spec: u16,
        written: WriteTime,
        windows: Vec<Window<TimerValues>>,
    },
}

/// Server time of a write, in Unix seconds rounded up (so an idle series is never expired
/// early) and saturated to `u32` (1970 to 2106).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct WriteTime(u32);

impl WriteTime {
    const SECOND: i64 = 1_000_000_000;

    pub(crate) fn at(now_nanos: i64) -> WriteTime {
        let secs =
            now_nanos.div_euclid(Self::SECOND) + i64::from(now_nanos.rem_euclid(Self::SECOND) != 0);
        WriteTime(u32::try_from(secs.max(0)).unwrap_or(u32::MAX))
    }

    pub(crate) fn nanos(self) -> i64 {
        i64::from(self.0) * Self::SECOND
    }
}

/// Runs `$wide` with `$windows` bound to the window list of whichever wide variant `$elem`
/// is, or `$packed` with it bound to the [`PackedWindows`] of a packed one.
macro_rules! with_windows {
    ($elem:expr, $windows:ident => $wide:expr, packed => $packed:expr) => {
        match $elem {
            Elem::Last {
                windows: $windows, ..
            } => $wide,
            Elem::Sum {
                windows: $windows, ..
            } => $wide,
            Elem::Moments {
                windows: $windows, ..
            } => $wide,
            Elem::Timer {
                windows: $windows, ..
            } => $wide,
            Elem::LastPacked {
                windows: $windows, ..
            } => $packed,
            Elem::SumPacked {
                windows: $windows, ..
            } => $packed,
        }
    };
}

/// [`add_to`] on the wide form, then the windows packed if the add moved the inline window
/// into a vector of two and both pack.
fn add_then_pack<W: Packable>(
    windows: &mut OneInline<W>,
    start: i64,
    end: i64,
    time_nanos: i64,
    values: &[f64],
    max_windows: usize,
) -> (Result<(), TooManyWindows>, Option<PackedWindows<W>>) {
    let was_inline = matches!(windows, OneInline::One(_));
    let added = add_to(windows, start, end, time_nanos, values, max_windows);
    let packed = match windows {
        OneInline::Many(v) if was_inline && v.len() == 2 => {
            PackedWindows::pack(v, end.saturating_sub(start))
        }
        _ => None,
    };
    (added, packed)
}

/// [`PackedWindows::add`], or, when the result would not pack, the add on the windows
/// unpacked, which are then returned to take the packed ones' place.
fn add_or_unpack<W: Packable>(
    windows: &mut PackedWindows<W>,
    start: i64,
    end: i64,
    time_nanos: i64,
    values: &[f64],
    max_windows: usize,
) -> (Result<(), TooManyWindows>, Option<OneInline<W>>) {
    match windows.add(start, end, time_nanos, values, max_windows) {
        Ok(added) => (added, None),
        Err(Unpackable) => {
            let mut wide = OneInline::Many(windows.unpack(end.saturating_sub(start)));
            let added = add_to(&mut wide, start, end, time_nanos, values, max_windows);
            (added, Some(wide))
        }
    }
}

impl Elem {
    pub(crate) fn new(spec: u16, kind: StateKind, written: WriteTime) -> Elem {
        match kind {
            StateKind::Last => Elem::Last {
                spec,
                written,
                windows: OneInline::default(),
            },
            StateKind::Sum => Elem::Sum {
                spec,
                written,
                windows: OneInline::default(),
            },
            StateKind::Moments => Elem::Moments {
                spec,
                written,
                windows: Vec::new(),
            },
            StateKind::Timer => Elem::Timer {
                spec,
                written,
                windows: Vec::new(),
            },
        }
    }

    /// Index of the elem's spec in its shard's spec table.
    pub(crate) fn spec(&self) -> u16 {
        match self {
            Elem::Last { spec, .. }
            | Elem::Sum { spec, .. }
            | Elem::LastPacked { spec, .. }
            | Elem::SumPacked { spec, .. }
            | Elem::Moments { spec, .. }
            | Elem::Timer { spec, .. } => *spec,
        }
    }

    fn written_mut(&mut self) -> &mut WriteTime {
        match self {
            Elem::Last { written, .. }
            | Elem::Sum { written, .. }
            | Elem::LastPacked { written, .. }
            | Elem::SumPacked { written, .. }
            | Elem::Moments { written, .. }
            | Elem::Timer { written, .. } => written,
        }
    }

    /// The last accepted write.
    pub(crate) fn written(&self) -> WriteTime {
        match self {
            Elem::Last { written, .. }
            | Elem::Sum { written, .. }
            | Elem::LastPacked { written, .. }
            | Elem::SumPacked { written, .. }
            | Elem::Moments { written, .. }
            | Elem::Timer { written, .. } => *written,
        }
    }

    /// Makes this elem the one `make` builds from its spec and last write: how its windows
    /// change form (packed, wide) in place.
    fn reform(&mut self, make: impl FnOnce(u16, WriteTime) -> Elem) {
        *self = make(self.spec(), self.written());
    }

    /// Adds `values` observed at `time_nanos` to the window `[start, end)`, and records the
    /// write at server time `now`.
    pub(crate) fn add(
        &mut self,
        start: i64,
        end: i64,
        time_nanos: i64,
        values: &[f64],
        max_windows: usize,
        now: WriteTime,
    ) -> Result<(), TooManyWindows> {
        let added = match self {
            Elem::Last { windows, .. } => {
                let (added, packed) =
                    add_then_pack(windows, start, end, time_nanos, values, max_windows);
                if let Some(windows) = packed {
                    self.reform(|spec, written| Elem::LastPacked {
                        spec,
                        written,
                        windows,
                    });
                }
                added
            }
            Elem::Sum { windows, .. } => {
                let (added, packed) =
                    add_then_pack(windows, start, end, time_nanos, values, max_windows);
                if let Some(windows) = packed {
                    self.reform(|spec, written| Elem::SumPacked {
                        spec,
                        written,
                        windows,
                    });
                }
                added
            }
            Elem::LastPacked { windows, .. } => {
                let (added, wide) =
                    add_or_unpack(windows, start, end, time_nanos, values, max_windows);
                if let Some(windows) = wide {
                    self.reform(|spec, written| Elem::Last {
                        spec,
                        written,
                        windows,
                    });
                }
                added
            }
            Elem::SumPacked { windows, .. } => {
                let (added, wide) =
                    add_or_unpack(windows, start, end, time_nanos, values, max_windows);
                if let Some(windows) = wide {
                    self.reform(|spec, written| Elem::Sum {
                        spec,
                        written,
                        windows,
                    });
                }
                added
            }
            Elem::Moments { windows, .. } => {
                add_to(windows, start, end, time_nanos, values, max_windows)
            }
            Elem::Timer { windows, .. } => {
                add_to(windows, start, end, time_nanos, values, max_windows)
            }
        };
        added?;
        *self.written_mut() = now;
        Ok(())
    }

    /// Removes every window whose end is ≤ `until_end`, oldest first, showing each to `visit`
    /// with its start. Returns how many were removed. A packed list that empties goes back to
    /// the wide form, without a heap block.
    pub(crate) fn take_until(
        &mut self,
        resolution: i64,
        until_end: i64,
        visit: &mut dyn FnMut(i64, &dyn WindowState),
    ) -> usize {
        let taken = with_windows!(&mut *self,
            w => take_until(w, resolution, until_end, visit),
            packed => w.take_until(resolution, until_end, visit));
        match self {
            Elem::LastPacked { windows, .. } if windows.is_empty() => {
                self.reform(|spec, written| Elem::Last {
                    spec,
                    written,
                    windows: OneInline::default(),
                });
            }
            Elem::SumPacked { windows, .. } if windows.is_empty() => {
                self.reform(|spec, written| Elem::Sum {
                    spec,
                    written,
                    windows: OneInline::default(),
                });
            }
            _ => {}
        }
        taken
    }

    pub(crate) fn len(&self) -> usize {
        with_windows!(self, w => w.as_slice().len(), packed => w.len())
    }

    /// Heap bytes held by the windows (capacity, not length).
    pub(crate) fn heap_bytes(&self) -> usize {
        with_windows!(self, w => w.heap_bytes(), packed => w.heap_bytes())
    }
}

/// The elems of an entry; one is kept inline.
#[derive(Debug, Clone)]
enum Elems {
    One(Elem),
    Many(Vec<Elem>),
}

/// One series (metric ID) of one category in a shard.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    elems: Elems,
}

impl Entry {
    pub(crate) fn new() -> Entry {
        Entry {
            elems: Elems::Many(Vec::new()),
        }
    }

    /// The elem for `spec`, created with `kind` state if missing (recording `now` as its
    /// last write).
    pub(crate) fn elem_mut(&mut self, spec: u16, kind: StateKind, now: WriteTime) -> &mut Elem {
        let found = match &self.elems {
            Elems::One(e) => (e.spec() == spec).then_some(0),
            Elems::Many(v) => v.iter().position(|e| e.spec() == spec),
        };
        let index = match found {
            Some(i) => i,
            None => {
                let new = Elem::new(spec, kind, now);
                let old = std::mem::replace(&mut self.elems, Elems::Many(Vec::new()));
                let (elems, index) = match old {
                    Elems::Many(v) if v.is_empty() => (Elems::One(new), 0),
                    Elems::Many(mut v) => {
                        v.push(new);
                        let i = v.len() - 1;
                        (Elems::Many(v), i)
                    }
                    Elems::One(first) => (Elems::Many(vec![first, new]), 1),
                };
                self.elems = elems;
                index
            }
        };
        match &mut self.elems {
            Elems::One(e) => e,
            Elems::Many(v) => &mut v[index],
        }
    }

    pub(crate) fn elems_mut(&mut self) -> &mut [Elem] {
        match &mut self.elems {
            Elems::One(e) => std::slice::from_mut(e),
            Elems::Many(v) => v,
        }
    }

    pub(crate) fn elems(&self) -> &[Elem] {
        match &self.elems {
            Elems::One(e) => std::slice::from_ref(e),
            Elems::Many(v) => v,
        }
    }

    /// Server time of the last accepted write (of the elem's creation if none was), in
    /// whole seconds rounded up; `None` without elems.
    pub(crate) fn last_write_nanos(&self) -> Option<i64> {
        self.elems()
            .iter()
            .map(Elem::written)
            .max()
            .map(WriteTime::nanos)
    }

    /// Removes the elems with no open window that `idle` says are idle, keeping one inline
    /// when one is left; returns how many went.
    pub(crate) fn remove_idle_elems(&mut self, idle: impl Fn(&Elem) -> bool) -> usize {
        let Elems::Many(elems) = &mut self.elems else {
            // A single elem goes with its entry.
            return 0;
        };
        let before = elems.len();
        elems.retain(|e| e.len() > 0 || !idle(e));
        let removed = before - elems.len();
        if removed > 0 {
            if elems.len() == 1 {
                if let Some(last) = elems.pop() {
                    self.elems = Elems::One(last);
                }
            } else {
                elems.shrink_to_fit();
            }
        }
        removed
    }

    pub(crate) fn has_windows(&self) -> bool {
        self.elems().iter().any(|e| e.len() > 0)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.elems().is_empty()
    }

    /// Heap bytes held outside the entry itself (elem vector and windows).
    pub(crate) fn heap_bytes(&self) -> usize {
        let elems = match &self.elems {
            Elems::One(_) => 0,
            Elems::Many(v) => v.capacity() * std::mem::size_of::<Elem>(),
        };
        elems + self.elems().iter().map(Elem::heap_bytes).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use m3_metric::AggregationType;

    fn add(
        e: &mut Elem,
        start: i64,
        t: i64,
        values: &[f64],
        max: usize,
    ) -> Result<(), TooManyWindows> {
        e.add(start, start + 10, t, values, max, WriteTime(0))
    }

    #[test]
    fn windows_stay_sorted_and_drain_in_order() {
        for kind in [StateKind::Sum, StateKind::Last] {
            let mut w = Elem::new(0, kind, WriteTime(0));
            for (t, v) in [(20, 1.0), (5, 2.0), (10, 3.0), (21, 4.0), (30, 5.0)] {
                add(&mut w, t - t % 10, t, &[v], 16).unwrap();
            }
            assert_eq!(w.len(), 4);
            let mut seen = Vec::new();
            let n = w.take_until(10, 30, &mut |start, s| {
                let agg = match kind {
                    StateKind::Sum => AggregationType::Sum,
                    _ => AggregationType::Last,
                };
                seen.push((start, s.value_of(agg)));
            });
            assert_eq!(n, 3);
            let third = if kind == StateKind::Sum { 5.0 } else { 4.0 };
            assert_eq!(seen, vec![(0, 2.0), (10, 3.0), (20, third)], "{kind:?}");
            assert_eq!(w.len(), 1);
            assert_eq!(w.take_until(10, 39, &mut |_, _| {}), 0);
            assert_eq!(w.take_until(10, 40, &mut |_, _| {}), 1);
            assert_eq!(w.heap_bytes(), 0);
        }
    }

    #[test]
    fn last_windows_derive_their_start_at_the_edges() {
        let mut w = Elem::new(0, StateKind::Last, WriteTime(0));
        // Negative times align down; a window's last nanosecond stays in it.
        add(&mut w, -10, -1, &[1.0], 16).unwrap();
        add(&mut w, -10, -10, &[2.0], 16).unwrap();
        add(&mut w, 0, 0, &[3.0], 16).unwrap();
        add(&mut w, 0, 9, &[4.0], 16).unwrap();
        assert_eq!(w.len(), 2);
        let mut seen = Vec::new();
        w.take_until(10, 10, &mut |start, s| {
            seen.push((start, s.value_of(AggregationType::Last)));
        });
        assert_eq!(seen, vec![(-10, 1.0), (0, 4.0)]);
    }

    #[test]
    fn first_window_is_inline_until_a_second_opens() {
        for kind in [StateKind::Sum, StateKind::Last] {
            let mut w = Elem::new(0, kind, WriteTime(0));
            add(&mut w, 20, 21, &[1.0], 16).unwrap();
            add(&mut w, 20, 22, &[2.0], 16).unwrap();
            assert_eq!((w.len(), w.heap_bytes()), (1, 0), "{kind:?}");
            // A second window before the inline one.
            add(&mut w, 10, 11, &[3.0], 16).unwrap();
            assert_eq!(w.len(), 2);
            // Sum windows pack (12 bytes each); these Last timestamps are nanoseconds apart, off
            // any millisecond grid, so they stay wide (16 bytes each).
            let each = if kind == StateKind::Sum { 12 } else { 16 };
            assert_eq!(w.heap_bytes(), 2 * each, "{kind:?}");
            let mut starts = Vec::new();
            w.take_until(10, 20, &mut |start, _| starts.push(start));
            // Drained to one window, the vector stays (no free and allocate at every flush).
            assert_eq!((w.len(), starts), (1, vec![10]));
            assert!(w.heap_bytes() > 0);
            w.take_until(10, 30, &mut |_, _| {});
            assert_eq!((w.len(), w.heap_bytes()), (0, 0), "{kind:?}");
            // Inline again.
            add(&mut w, 40, 40, &[1.0], 16).unwrap();
            assert_eq!((w.len(), w.heap_bytes()), (1, 0), "{kind:?}");
            let mut seen = Vec::new();
            w.take_until(10, 50, &mut |start, _| seen.push(start));
            assert_eq!((seen, w.len()), (vec![40], 0));
        }
    }

    #[test]
    fn window_limit_is_enforced() {
        let mut w = Elem::new(0, StateKind::Last, WriteTime(0));
        add(&mut w, 0, 0, &[1.0], 2).unwrap();
        add(&mut w, 10, 10, &[1.0], 2).unwrap();
        add(&mut w, 10, 11, &[1.0], 2).unwrap();
        assert_eq!(add(&mut w, 20, 20, &[1.0], 2), Err(TooManyWindows));
        // An empty batch opens nothing.
        add(&mut w, 30, 30, &[], 2).unwrap();
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn layout_sizes() {
        assert_eq!(std::mem::size_of::<LastValue>(), 16);
        assert_eq!(std::mem::size_of::<Window<SumValue>>(), 16);
        assert_eq!(std::mem::size_of::<Window<Moments>>(), 64);
        assert_eq!(std::mem::size_of::<Window<TimerValues>>(), 88);
        assert_eq!(std::mem::size_of::<OneInline<LastValue>>(), 24);
        assert_eq!(std::mem::size_of::<OneInline<Window<SumValue>>>(), 24);
        assert_eq!(std::mem::size_of::<Elem>(), 32);
        assert_eq!(std::mem::size_of::<PackedWindows<LastValue>>(), 24);
        assert_eq!(std::mem::size_of::<Entry>(), 32);
    }

    #[test]
    fn entry_keeps_one_elem_inline_then_grows() {
        let mut e = Entry::new();
        assert!(e.is_empty());
        assert_eq!(e.last_write_nanos(), None);
        let t = WriteTime(1);
        e.elem_mut(3, StateKind::Last, t);
        e.elem_mut(3, StateKind::Last, t);
        assert_eq!(e.elems().len(), 1);
        e.elem_mut(5, StateKind::Sum, WriteTime(3));
        e.elem_mut(3, StateKind::Last, t);
        e.elem_mut(7, StateKind::Sum, WriteTime(2));
        let specs: Vec<u16> = e.elems().iter().map(Elem::spec).collect();
        assert_eq!(specs, vec![3, 5, 7]);
        assert!(!e.has_windows());
        assert_eq!(e.last_write_nanos(), Some(3_000_000_000));
    }

    /// One step of [`packed_and_wide_windows_match_a_model`]: an add of `values` at `ms`
    /// milliseconds (plus `off_grid` nanoseconds), or a flush of the windows ending by `until`
    /// resolutions.
    #[derive(Debug, Clone)]
    enum Step {
        Add {
            ms: i64,
            off_grid: i64,
            values: Vec<f64>,
        },
        Flush {
            until: i64,
        },
    }

    fn steps(off_grid: bool) -> impl proptest::strategy::Strategy<Value = Vec<Step>> {
        use proptest::prelude::*;
        let add = (
            -30_000i64..120_000,
            if off_grid {
                prop_oneof![3 => Just(0i64), 1 => 1i64..1_000_000].boxed()
            } else {
                Just(0i64).boxed()
            },
            prop::collection::vec((-8i32..8).prop_map(|v| f64::from(v) / 4.0), 0..3),
        )
            .prop_map(|(ms, off_grid, values)| Step::Add {
                ms,
                off_grid,
                values,
            });
        let flush = (-3i64..13).prop_map(|until| Step::Flush { until });
        prop::collection::vec(prop_oneof![4 => add, 1 => flush], 1..80)
    }

    /// Runs `steps` on an elem of `kind` and on a map of window start to (time, value), and
    /// checks every add's result, every flushed window and the window count against the map.
    fn run_against_model(kind: StateKind, steps: &[Step]) {
        const MS: i64 = 1_000_000;
        const R: i64 = 10_000 * MS;
        const MAX: usize = 6;
        let agg = match kind {
            StateKind::Last => AggregationType::Last,
            _ => AggregationType::Sum,
        };
        let mut elem = Elem::new(0, kind, WriteTime(0));
        let mut model: std::collections::BTreeMap<i64, (i64, f64)> = Default::default();
        let mut all_on_grid = true;
        for step in steps {
            match step {
                Step::Add {
                    ms,
                    off_grid,
                    values,
                } => {
                    all_on_grid &= *off_grid == 0;
                    let t = ms * MS + off_grid;
                    let start = t.div_euclid(R) * R;
                    let added = elem.add(start, start + R, t, values, MAX, WriteTime(0));
                    let expected = if values.is_empty() {
                        Ok(())
                    } else if let Some((time, value)) = model.get_mut(&start) {
                        for v in values {
                            if kind == StateKind::Sum {
                                *value += v;
                            } else if t >= *time {
                                (*time, *value) = (t, *v);
                            }
                        }
                        Ok(())
                    } else if model.len() >= MAX {
                        Err(TooManyWindows)
                    } else {
                        let value = if kind == StateKind::Sum {
                            values[1..].iter().fold(values[0], |sum, v| sum + v)
                        } else {
                            values[values.len() - 1]
                        };
                        model.insert(start, (t, value));
                        Ok(())
                    };
                    assert_eq!(added, expected, "{step:?}");
                }
                Step::Flush { until } => {
                    let mut seen = Vec::new();
                    let taken = elem.take_until(R, until * R, &mut |start, w| {
                        seen.push((start, w.value_of(agg)));
                    });
                    let mut expected = Vec::new();
                    while let Some(entry) = model.first_entry() {
                        if entry.key() + R > until * R {
                            break;
                        }
                        let (start, (_, value)) = entry.remove_entry();
                        expected.push((start, value));
                    }
                    assert_eq!(taken, expected.len());
                    assert_eq!(seen, expected, "{step:?}");
                }
            }
            assert_eq!(elem.len(), model.len());
            if all_on_grid && model.len() >= 2 {
                assert!(
                    matches!(elem, Elem::LastPacked { .. } | Elem::SumPacked { .. }),
                    "whole milliseconds keep {kind:?} windows packed"
                );
            }
            if model.is_empty() {
                assert_eq!(elem.heap_bytes(), 0);
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn packed_and_wide_windows_match_a_model(
            on_grid in steps(false),
            any_time in steps(true),
        ) {
            for kind in [StateKind::Last, StateKind::Sum] {
                run_against_model(kind, &on_grid);
                run_against_model(kind, &any_time);
            }
        }
    }

    #[test]
    fn eight_windows_of_whole_milliseconds_take_twelve_bytes_each() {
        const S: i64 = 1_000_000_000;
        for kind in [StateKind::Last, StateKind::Sum] {
            let mut elem = Elem::new(0, kind, WriteTime(0));
            for w in 0..8 {
                let t = 1_700_000_000 * S + w * 10 * S + 123_000_000;
                let start = t - t % (10 * S);
                elem.add(start, start + 10 * S, t, &[1.0], 16, WriteTime(0))
                    .unwrap();
            }
            assert_eq!((elem.len(), elem.heap_bytes()), (8, 96), "{kind:?}");
        }
    }

    #[test]
    fn write_times_round_up_to_the_second_and_saturate() {
        assert_eq!(WriteTime::at(0), WriteTime(0));
        assert_eq!(WriteTime::at(1), WriteTime(1));
        assert_eq!(WriteTime::at(1_000_000_000), WriteTime(1));
        assert_eq!(WriteTime::at(1_000_000_001).nanos(), 2_000_000_000);
        assert_eq!(WriteTime::at(-5), WriteTime(0));
        assert_eq!(WriteTime::at(i64::MAX), WriteTime(u32::MAX));
        assert_eq!(WriteTime::at(i64::MIN), WriteTime(0));
    }
}
