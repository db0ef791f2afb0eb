//! Windowing strategies: how elements are assigned to windows, when panes fire, how late data is treated.

use std::sync::Arc;
use std::time::Duration;

use crate::element::{duration_micros, Timestamp, Window};

/// A window strategy written outside the engine (Beam's custom `WindowFn`), used through
/// [`WindowFn::custom`]: calendar months, business days, per-tenant offsets. Non-merging: every
/// timestamp gets its windows independently of other elements (merging strategies such as sessions
/// are built in only).
///
/// The engine checks the contract on every element: each window must contain the timestamp
/// (`start <= ts < end`), there must be at least one, and a strategy whose
/// [`WindowAssigner::assigns_to_single_window`] says `true` must assign exactly one. An element that
/// breaks it is failed (`Rejected`, with the reason naming the strategy), never silently kept in
/// one window or dropped.
pub trait WindowAssigner: Send + Sync + 'static {
    /// A short name, for messages and `Debug`.
    fn name(&self) -> &str;

    /// Calls `f` once for every window that `ts` belongs to.
    fn assign(&self, ts: Timestamp, f: &mut dyn FnMut(Window));

    /// True when every timestamp belongs to exactly one window: the element is then relabelled in
    /// place instead of copied. The default `false` is always correct, only slower.
    fn assigns_to_single_window(&self) -> bool {
        false
    }

    /// Checks the strategy's parameters when the pipeline is built; the error is one line.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

/// A [`WindowAssigner`] held by a [`WindowFn`]. Two are equal when they are the same instance
/// (clones of one `WindowFn::custom`), which is what [`crate::Pipeline::flatten`] compares.
#[derive(Clone)]
pub struct CustomWindows(Arc<dyn WindowAssigner>);

impl CustomWindows {
    /// The strategy.
    pub fn assigner(&self) -> &dyn WindowAssigner {
        &*self.0
    }
}

impl PartialEq for CustomWindows {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for CustomWindows {}

impl std::fmt::Debug for CustomWindows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Inside `WindowFn::Custom(..)`, so the name alone: `Custom("calendar-months")`.
        write!(f, "{:?}", self.0.name())
    }
}

/// How elements are assigned to event-time windows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowFn {
    /// One window for all time (the default).
    Global,
    /// Tumbling windows of `size`, aligned to the epoch plus `offset`.
    Fixed {
        /// Window length.
        size: Duration,
        /// Shift of the window boundaries from the epoch.
        offset: Duration,
    },
    /// Windows of `size` starting every `period`; an element belongs to `size / period` windows.
    Sliding {
        /// Window length.
        size: Duration,
        /// Distance between window starts.
        period: Duration,
    },
    /// Per-key sessions: an element opens `[t, t + gap)`, and overlapping windows of one key merge.
    Sessions {
        /// Inactivity gap that closes a session.
        gap: Duration,
    },
    /// A strategy written outside the engine ([`WindowAssigner`], [`WindowFn::custom`]).
    Custom(CustomWindows),
}

impl WindowFn {
    /// Fixed windows of `size` aligned to the epoch.
    pub fn fixed(size: Duration) -> Self {
        WindowFn::Fixed {
            size,
            offset: Duration::ZERO,
        }
    }

    /// Sliding windows of `size` every `period`.
    pub fn sliding(size: Duration, period: Duration) -> Self {
        WindowFn::Sliding { size, period }
    }

    /// Session windows closed by `gap` of inactivity.
    pub fn sessions(gap: Duration) -> Self {
        WindowFn::Sessions { gap }
    }

    /// A user-defined strategy (see [`WindowAssigner`] for the contract the engine checks).
    pub fn custom(assigner: impl WindowAssigner) -> Self {
        WindowFn::Custom(CustomWindows(Arc::new(assigner)))
    }

    /// True when windows must be merged per key after assignment.
    pub fn is_merging(&self) -> bool {
        matches!(self, WindowFn::Sessions { .. })
    }

    /// True when [`WindowFn::assign`] gives every timestamp exactly one window (Beam's
    /// `assignsToOneWindow`): window assignment then relabels each element in place; otherwise it
    /// copies the element into every window it belongs to. Every strategy must answer it truthfully;
    /// a multi-window strategy that said `true` would keep one window of each element.
    pub fn assigns_to_single_window(&self) -> bool {
        match self {
            WindowFn::Global | WindowFn::Fixed { .. } | WindowFn::Sessions { .. } => true,
            // One window when the period equals the size (tumbling windows).
            WindowFn::Sliding { size, period } => period >= size,
            WindowFn::Custom(c) => c.0.assigns_to_single_window(),
        }
    }

    /// Checks the parameters (non-zero sizes, period not larger than size; a custom strategy's own
    /// check).
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            WindowFn::Global => Ok(()),
            WindowFn::Custom(ref c) => {
                c.0.validate()
                    .map_err(|e| format!("window strategy '{}': {e}", c.0.name()))
            }
            WindowFn::Fixed { size, offset } => {
                if size.is_zero() {
                    Err("fixed window size must be greater than zero".into())
                } else if offset >= size {
                    Err("fixed window offset must be smaller than the size".into())
                } else {
                    Ok(())
                }
            }
            WindowFn::Sliding { size, period } => {
                if size.is_zero() || period.is_zero() {
                    Err("sliding window size and period must be greater than zero".into())
                } else if period > size {
                    Err("sliding window period must not exceed its size".into())
                } else {
                    Ok(())
                }
            }
            WindowFn::Sessions { gap } => {
                if gap.is_zero() {
                    Err("session gap must be greater than zero".into())
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Calls `f` once for every window that `ts` belongs to (before any merging).
    pub fn assign(&self, ts: Timestamp, mut f: impl FnMut(Window)) {
        match *self {
            WindowFn::Global => f(Window::GLOBAL),
            WindowFn::Fixed { size, offset } => {
                let size = duration_micros(size);
                let offset = duration_micros(offset);
                let start = floor_to(ts.0, size, offset);
                f(Window::new(
                    Timestamp(start),
                    Timestamp(start.saturating_add(size)),
                ));
            }
            WindowFn::Sliding { size, period } => {
                let size = duration_micros(size);
                let period = duration_micros(period);
                let last_start = floor_to(ts.0, period, 0);
                let mut start = last_start;
                // Every window [start, start + size) with start <= ts < start + size, newest first.
                while start > ts.0.saturating_sub(size) {
                    f(Window::new(
                        Timestamp(start),
                        Timestamp(start.saturating_add(size)),
                    ));
                    match start.checked_sub(period) {
                        Some(s) => start = s,
                        None => break,
                    }
                }
            }
            WindowFn::Sessions { gap } => {
                f(Window::new(ts, ts.plus(gap)));
            }
            WindowFn::Custom(ref c) => c.0.assign(ts, &mut f),
        }
    }
}

/// Largest `offset + k * size` that is `<= t` (floor division, correct for negative times).
fn floor_to(t: i64, size: i64, offset: i64) -> i64 {
    let rel = t.saturating_sub(offset);
    rel - rel.rem_euclid(size) + offset
}

/// Early firings before the watermark reaches the end of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EarlyFiring {
    /// Fire a pane whenever this many new elements arrived in it.
    EveryCount(u64),
    /// Fire a pane this long (processing time) after the first element that arrived in it.
    AfterDelay(Duration),
}

/// When panes fire. Every trigger fires on time when the watermark passes the end of the window, and for
/// late data within the allowed lateness (one late pane per incoming batch that touched the window).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Trigger {
    /// Optional speculative firings before the watermark.
    pub early: Option<EarlyFiring>,
}

impl Trigger {
    /// Fire only when the watermark passes the end of the window (and for late data).
    pub fn at_watermark() -> Self {
        Trigger { early: None }
    }

    /// Adds early firings every `n` elements.
    pub fn with_early_count(mut self, n: u64) -> Self {
        self.early = Some(EarlyFiring::EveryCount(n.max(1)));
        self
    }

    /// Adds early firings `delay` after the first element of a pane.
    pub fn with_early_delay(mut self, delay: Duration) -> Self {
        self.early = Some(EarlyFiring::AfterDelay(delay));
        self
    }
}

/// Whether a pane contains only what arrived since the previous pane, or everything so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accumulation {
    /// Each pane holds only the elements since the previous firing (the default).
    #[default]
    Discarding,
    /// Each pane holds every element of the window so far.
    Accumulating,
}

/// What happens to elements that arrive after their window expired (watermark past end + lateness).
///
/// The default routes them: a grouping step's late output must then be consumed
/// ([`crate::PCollection::combine_per_key_with_late`]), or the pipeline does not build, so late data
/// (a redelivery after a sink failure, a stalled producer) is never acknowledged without a trace unless
/// [`Windowing::drop_late`] asked for it. Global windows never expire and need neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LatePolicy {
    /// Dropped and counted in the step's `discarded` and `late` metrics, and acknowledged (the user
    /// chose to lose them).
    Drop,
    /// Sent to the late output of the grouping step (the default).
    #[default]
    Route,
}

/// Everything a grouping step needs to know about windows: assignment, trigger, lateness, accumulation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Windowing {
    /// Window assignment.
    pub window_fn: WindowFn,
    /// Firing policy.
    pub trigger: Trigger,
    /// How long after the end of a window late data is still accepted.
    pub allowed_lateness: Duration,
    /// Discarding or accumulating panes.
    pub accumulation: Accumulation,
    /// What to do with data later than the allowed lateness.
    pub late: LatePolicy,
}

impl Default for Windowing {
    fn default() -> Self {
        Windowing::new(WindowFn::Global)
    }
}

impl Windowing {
    /// A strategy with the given assignment, firing at the watermark, no allowed lateness, discarding,
    /// late data routed to the grouping step's late output.
    pub fn new(window_fn: WindowFn) -> Self {
        Windowing {
            window_fn,
            trigger: Trigger::default(),
            allowed_lateness: Duration::ZERO,
            accumulation: Accumulation::Discarding,
            late: LatePolicy::Route,
        }
    }

    /// Fixed windows.
    pub fn fixed(size: Duration) -> Self {
        Self::new(WindowFn::fixed(size))
    }

    /// Sliding windows.
    pub fn sliding(size: Duration, period: Duration) -> Self {
        Self::new(WindowFn::sliding(size, period))
    }

    /// Session windows.
    pub fn sessions(gap: Duration) -> Self {
        Self::new(WindowFn::sessions(gap))
    }

    /// Sets the trigger.
    pub fn triggering(mut self, trigger: Trigger) -> Self {
        self.trigger = trigger;
        self
    }

    /// Sets the allowed lateness.
    pub fn allowed_lateness(mut self, lateness: Duration) -> Self {
        self.allowed_lateness = lateness;
        self
    }

    /// Accumulating panes.
    pub fn accumulating(mut self) -> Self {
        self.accumulation = Accumulation::Accumulating;
        self
    }

    /// Discarding panes (the default).
    pub fn discarding(mut self) -> Self {
        self.accumulation = Accumulation::Discarding;
        self
    }

    /// Routes data later than the allowed lateness to the grouping step's late output (the default).
    pub fn route_late(mut self) -> Self {
        self.late = LatePolicy::Route;
        self
    }

    /// Drops data later than the allowed lateness and acknowledges it (counted in the step's
    /// `discarded` and `late` metrics): for results where a late record is worth less than its cost.
    pub fn drop_late(mut self) -> Self {
        self.late = LatePolicy::Drop;
        self
    }

    /// True when a window can expire, so late data can exist (every window function but
    /// [`WindowFn::Global`]).
    pub fn can_be_late(&self) -> bool {
        self.window_fn != WindowFn::Global
    }

    /// The watermark at which a window's state is dropped and later data counts as too late.
    pub(crate) fn expiry(&self, w: &Window) -> Timestamp {
        if w.end == Timestamp::MAX {
            Timestamp::MAX
        } else {
            w.end.plus(self.allowed_lateness)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows(f: &WindowFn, ts: i64) -> Vec<(i64, i64)> {
        let mut v = Vec::new();
        f.assign(Timestamp(ts), |w| v.push((w.start.0, w.end.0)));
        v.sort();
        v
    }

    const S: i64 = 1_000_000;

    #[test]
    fn fixed_assignment() {
        let f = WindowFn::fixed(Duration::from_secs(10));
        assert_eq!(windows(&f, 0), vec![(0, 10 * S)]);
        assert_eq!(windows(&f, 10 * S - 1), vec![(0, 10 * S)]);
        assert_eq!(windows(&f, 10 * S), vec![(10 * S, 20 * S)]);
        assert_eq!(windows(&f, -1), vec![(-10 * S, 0)]);
        let off = WindowFn::Fixed {
            size: Duration::from_secs(10),
            offset: Duration::from_secs(3),
        };
        assert_eq!(windows(&off, 2 * S), vec![(-7 * S, 3 * S)]);
        assert_eq!(windows(&off, 3 * S), vec![(3 * S, 13 * S)]);
    }

    #[test]
    fn single_window_contract_matches_assignment() {
        let s = Duration::from_secs;
        for f in [
            WindowFn::Global,
            WindowFn::fixed(s(10)),
            WindowFn::Fixed {
                size: s(10),
                offset: s(3),
            },
            WindowFn::sliding(s(10), s(5)),
            WindowFn::sliding(s(10), s(3)),
            WindowFn::sliding(s(10), s(10)),
            WindowFn::sessions(s(30)),
        ] {
            for ts in [
                -7 * S,
                -1,
                0,
                1,
                5 * S,
                9 * S + S / 2,
                i64::MAX / 2,
                i64::MIN / 2,
            ] {
                let n = windows(&f, ts).len();
                assert!(n >= 1, "{f:?} at {ts}");
                if f.assigns_to_single_window() {
                    assert_eq!(n, 1, "{f:?} at {ts} claims one window");
                }
            }
            let multi = windows(&f, 7 * S).len() > 1;
            assert_eq!(f.assigns_to_single_window(), !multi, "{f:?}");
        }
    }

    #[test]
    fn sliding_assignment() {
        let f = WindowFn::sliding(Duration::from_secs(10), Duration::from_secs(5));
        assert_eq!(windows(&f, 7 * S), vec![(0, 10 * S), (5 * S, 15 * S)]);
        assert_eq!(windows(&f, 5 * S), vec![(0, 10 * S), (5 * S, 15 * S)]);
        assert_eq!(windows(&f, 4 * S), vec![(-5 * S, 5 * S), (0, 10 * S)]);
        let g = WindowFn::sliding(Duration::from_secs(10), Duration::from_secs(3));
        // starts 0, 3, 6, 9 cover 9.5s? window [0,10),[3,13),[6,16),[9,19)
        assert_eq!(windows(&g, 9 * S + S / 2).len(), 4);
    }

    #[test]
    fn sessions_assignment_and_validation() {
        let f = WindowFn::sessions(Duration::from_secs(30));
        assert_eq!(windows(&f, 5 * S), vec![(5 * S, 35 * S)]);
        assert!(f.is_merging());
        assert!(WindowFn::sessions(Duration::ZERO).validate().is_err());
        assert!(
            WindowFn::sliding(Duration::from_secs(1), Duration::from_secs(2))
                .validate()
                .is_err()
        );
        assert!(WindowFn::fixed(Duration::from_secs(1)).validate().is_ok());
    }
}
