//! Entries, elems and windows: the state of one series inside a shard.
//!
//! ```text
//! Entry (one per category and metric ID)
//!  └─ Elem (one per storage policy × aggregation types × metric type)
//!      └─ Window (one per open interval [start, start + resolution), sorted by start)
//! ```
//!
//! Windows are aligned to the Unix epoch: a value at `t` falls in the window starting at
//! `t` truncated to the resolution. A series written every interval has one or two open
//! windows for untimed data, and `(bufferPast + resolution) / interval + 1` for timed data,
//! because timed windows stay open until the past buffer has passed.
//!
//! Layout is chosen for memory: an entry with one elem (the common case) keeps it inline, the
//! window vector of an elem holds only the state its aggregation types need (see
//! [`aggregation`](crate::aggregation)), and a window vector that flushes empty frees its
//! memory.

use crate::aggregation::{LastValue, Moments, StateKind, SumValue, TimerValues, WindowState};

/// One open window.
#[derive(Debug, Clone)]
pub(crate) struct Window<S> {
    pub(crate) start: i64,
    pub(crate) state: S,
}

/// An elem's windows, typed by the state its aggregation types need.
#[derive(Debug, Clone)]
pub(crate) enum Windows {
    Last(Vec<Window<LastValue>>),
    Sum(Vec<Window<SumValue>>),
    Moments(Vec<Window<Moments>>),
    Timer(Vec<Window<TimerValues>>),
}

/// The elem already has as many windows as allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooManyWindows;

fn add_to<S: WindowState>(
    windows: &mut Vec<Window<S>>,
    start: i64,
    time_nanos: i64,
    values: &[f64],
    max_windows: usize,
) -> Result<(), TooManyWindows> {
    let Some((first, rest)) = values.split_first() else {
        return Ok(());
    };
    // Most writes hit the newest window: search from the back.
    let mut insert_at = 0;
    for (i, w) in windows.iter_mut().enumerate().rev() {
        if w.start == start {
            for v in values {
                w.state.add(time_nanos, *v);
            }
            return Ok(());
        }
        if w.start < start {
            insert_at = i + 1;
            break;
        }
    }
    if windows.len() >= max_windows {
        return Err(TooManyWindows);
    }
    if windows.capacity() == 0 {
        // Vec's first growth would allocate 4 slots; most series need one.
        windows.reserve_exact(1);
    }
    let mut state = S::new(time_nanos, *first);
    for v in rest {
        state.add(time_nanos, *v);
    }
    windows.insert(insert_at, Window { start, state });
    Ok(())
}

fn take_until<S: WindowState>(
    windows: &mut Vec<Window<S>>,
    resolution: i64,
    until_end: i64,
    visit: &mut dyn FnMut(i64, &dyn WindowState),
) -> usize {
    // Window ends never overflow: they are checked when the window is created.
    let n = windows
        .iter()
        .take_while(|w| w.start.saturating_add(resolution) <= until_end)
        .count();
    if n == 0 {
        return 0;
    }
    for w in &windows[..n] {
        visit(w.start, &w.state);
    }
    if n == windows.len() {
        *windows = Vec::new();
    } else {
        windows.drain(..n);
    }
    n
}

impl Windows {
    pub(crate) fn new(kind: StateKind) -> Windows {
        match kind {
            StateKind::Last => Windows::Last(Vec::new()),
            StateKind::Sum => Windows::Sum(Vec::new()),
            StateKind::Moments => Windows::Moments(Vec::new()),
            StateKind::Timer => Windows::Timer(Vec::new()),
        }
    }

    /// Adds `values` observed at `time_nanos` to the window starting at `start`.
    pub(crate) fn add(
        &mut self,
        start: i64,
        time_nanos: i64,
        values: &[f64],
        max_windows: usize,
    ) -> Result<(), TooManyWindows> {
        match self {
            Windows::Last(w) => add_to(w, start, time_nanos, values, max_windows),
            Windows::Sum(w) => add_to(w, start, time_nanos, values, max_windows),
            Windows::Moments(w) => add_to(w, start, time_nanos, values, max_windows),
            Windows::Timer(w) => add_to(w, start, time_nanos, values, max_windows),
        }
    }

    /// Removes every window whose end is ≤ `until_end`, oldest first, showing each to `visit`
    /// with its start. Returns how many were removed.
    pub(crate) fn take_until(
        &mut self,
        resolution: i64,
        until_end: i64,
        visit: &mut dyn FnMut(i64, &dyn WindowState),
    ) -> usize {
        match self {
            Windows::Last(w) => take_until(w, resolution, until_end, visit),
            Windows::Sum(w) => take_until(w, resolution, until_end, visit),
            Windows::Moments(w) => take_until(w, resolution, until_end, visit),
            Windows::Timer(w) => take_until(w, resolution, until_end, visit),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Windows::Last(w) => w.len(),
            Windows::Sum(w) => w.len(),
            Windows::Moments(w) => w.len(),
            Windows::Timer(w) => w.len(),
        }
    }

    /// Heap bytes held by the window vector (capacity, not length).
    pub(crate) fn heap_bytes(&self) -> usize {
        fn bytes<S>(w: &Vec<Window<S>>) -> usize {
            w.capacity() * std::mem::size_of::<Window<S>>()
        }
        match self {
            Windows::Last(w) => bytes(w),
            Windows::Sum(w) => bytes(w),
            Windows::Moments(w) => bytes(w),
            Windows::Timer(w) => bytes(w),
        }
    }
}

/// The windows of one storage policy × aggregation types × metric type of a series.
#[derive(Debug, Clone)]
pub(crate) struct Elem {
    /// Index of the elem's spec in its shard's spec table.
    pub(crate) spec: u16,
    pub(crate) windows: Windows,
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
    /// Server time of the last accepted write.
    pub(crate) last_write_nanos: i64,
    elems: Elems,
}

impl Entry {
    pub(crate) fn new(now_nanos: i64) -> Entry {
        Entry {
            last_write_nanos: now_nanos,
            elems: Elems::Many(Vec::new()),
        }
    }

    /// The elem for `spec`, created with `kind` state if missing.
    pub(crate) fn elem_mut(&mut self, spec: u16, kind: StateKind) -> &mut Elem {
        let found = match &self.elems {
            Elems::One(e) => (e.spec == spec).then_some(0),
            Elems::Many(v) => v.iter().position(|e| e.spec == spec),
        };
        let index = match found {
            Some(i) => i,
            None => {
                let new = Elem {
                    spec,
                    windows: Windows::new(kind),
                };
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

    pub(crate) fn has_windows(&self) -> bool {
        self.elems().iter().any(|e| e.windows.len() > 0)
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
        elems
            + self
                .elems()
                .iter()
                .map(|e| e.windows.heap_bytes())
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use m3_metric::AggregationType;

    #[test]
    fn windows_stay_sorted_and_drain_in_order() {
        let mut w = Windows::new(StateKind::Sum);
        for (start, v) in [(20, 1.0), (0, 2.0), (10, 3.0), (20, 4.0), (30, 5.0)] {
            w.add(start, start, &[v], 16).unwrap();
        }
        assert_eq!(w.len(), 4);
        let mut seen = Vec::new();
        let n = w.take_until(10, 30, &mut |start, s| {
            seen.push((start, s.value_of(AggregationType::Sum)));
        });
        assert_eq!(n, 3);
        assert_eq!(seen, vec![(0, 2.0), (10, 3.0), (20, 5.0)]);
        assert_eq!(w.len(), 1);
        assert_eq!(w.take_until(10, 39, &mut |_, _| {}), 0);
        assert_eq!(w.take_until(10, 40, &mut |_, _| {}), 1);
        assert_eq!(w.heap_bytes(), 0);
    }

    #[test]
    fn window_limit_is_enforced() {
        let mut w = Windows::new(StateKind::Last);
        w.add(0, 0, &[1.0], 2).unwrap();
        w.add(10, 10, &[1.0], 2).unwrap();
        w.add(10, 11, &[1.0], 2).unwrap();
        assert_eq!(w.add(20, 20, &[1.0], 2), Err(TooManyWindows));
        // An empty batch opens nothing.
        w.add(30, 30, &[], 2).unwrap();
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn entry_keeps_one_elem_inline_then_grows() {
        let mut e = Entry::new(0);
        assert!(e.is_empty());
        e.elem_mut(3, StateKind::Last);
        e.elem_mut(3, StateKind::Last);
        assert_eq!(e.elems().len(), 1);
        e.elem_mut(5, StateKind::Sum);
        e.elem_mut(3, StateKind::Last);
        e.elem_mut(7, StateKind::Sum);
        let specs: Vec<u16> = e.elems().iter().map(|x| x.spec).collect();
        assert_eq!(specs, vec![3, 5, 7]);
        assert!(!e.has_windows());
    }
}
