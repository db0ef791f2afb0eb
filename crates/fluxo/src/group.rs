//! Per-key, per-window aggregation (`GroupByKey`, `Combine`): window state, session merging, triggers,
//! allowed lateness.
//!
//! State lives in this worker only (no cross-worker shuffle). Event-time timers are kept in an ordered
//! map from fire time to keys, so a watermark advance touches only the windows that are due.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::Hash;
use std::time::Instant as StdInstant;

use tokio::time::Instant;

use crate::channel::Watermark;
use crate::combine::CombineFn;
use crate::element::{Data, Element, PaneInfo, Timestamp, Timing, Window};
use crate::finalizer::{Finalizers, RecordId};
use crate::metrics::{Counter, StepMetrics};
use crate::operator::{Operator, Output};
use crate::window::{Accumulation, EarlyFiring, LatePolicy, Windowing};

impl<A> Pane<A> {
    fn new(window: Window, acc: A) -> Self {
        Pane {
            window,
            acc,
            finalizers: Finalizers::None,
            seen: HashMap::new(),
            count: 0,
            fired: 0,
            on_time_fired: false,
        }
    }
}

struct Pane<A> {
    window: Window,
    acc: A,
    finalizers: Finalizers,
    /// Records whose value is in `acc`: record id -> the delivery it was added from. A later delivery
    /// of the same record (a redelivery after a nack) is not added again. Filled only for sources that
    /// supply record ids; cleared with `acc` when a discarding pane fires.
    seen: HashMap<u64, u64>,
    /// Elements added since the last firing (redelivered ones included: their finalizers wait for the
    /// next firing).
    count: u64,
    /// Panes emitted so far.
    fired: u32,
    on_time_fired: bool,
}

/// The grouping step: `(K, V)` in, `(K, C::Out)` per pane out, plus an optional late output.
pub(crate) struct GroupOp<K, V, C: CombineFn<V>> {
    combine: C,
    windowing: Windowing,
    state: HashMap<K, Vec<Pane<C::Acc>>>,
    timers: BTreeMap<Timestamp, Vec<K>>,
    delays: VecDeque<(Instant, K, Window)>,
    watermark: Timestamp,
    main: Output<(K, C::Out)>,
    late: Output<(K, V)>,
    metrics: StepMetrics,
    /// Redelivered records whose value the pane already held.
    redelivered: Counter,
    /// Panes touched by late data in the current batch.
    dirty: Vec<(K, Window)>,
}

impl<K, V, C> GroupOp<K, V, C>
where
    K: Data + Hash + Eq,
    V: Data,
    C: CombineFn<V>,
{
    pub(crate) fn new(
        combine: C,
        windowing: Windowing,
        main: Output<(K, C::Out)>,
        late: Output<(K, V)>,
        metrics: StepMetrics,
        redelivered: Counter,
    ) -> Self {
        GroupOp {
            combine,
            windowing,
            state: HashMap::new(),
            timers: BTreeMap::new(),
            delays: VecDeque::new(),
            watermark: Timestamp::MIN,
            main,
            late,
            metrics,
            redelivered,
            dirty: Vec::new(),
        }
    }

    /// Removes the timers of a window that was merged away.
    fn unschedule(&mut self, key: &K, window: &Window) {
        for t in [window.end, self.windowing.expiry(window)] {
            if let Some(keys) = self.timers.get_mut(&t) {
                if let Some(pos) = keys.iter().position(|k| k == key) {
                    keys.swap_remove(pos);
                }
                if keys.is_empty() {
                    self.timers.remove(&t);
                }
            }
        }
    }

    fn schedule(&mut self, key: &K, window: &Window) {
        self.timers.entry(window.end).or_default().push(key.clone());
        let expiry = self.windowing.expiry(window);
        if expiry != window.end {
            self.timers.entry(expiry).or_default().push(key.clone());
        }
    }

    /// Adds one element; returns an early pane to emit if the count trigger fired.
    fn add(
        &mut self,
        key: K,
        value: V,
        window: Window,
        finalizers: Finalizers,
        record: Option<RecordId>,
    ) -> Option<Element<(K, C::Out)>> {
        let merging = self.windowing.window_fn.is_merging();
        if !self.state.contains_key(&key) {
            self.state.insert(key.clone(), Vec::new());
        }
        let mut merged_away = Vec::new();
        let panes = self.state.get_mut(&key)?;
        let (idx, scheduled) = if merging {
            // Merge every session of this key that overlaps the new one into a single pane.
            let mut merged = Pane::new(window, self.combine.create());
            let mut i = 0;
            let mut absorbed_fired = false;
            while i < panes.len() {
                if panes[i].window.intersects(&merged.window) {
                    let p = panes.swap_remove(i);
                    merged_away.push(p.window);
                    merged.window = merged.window.span(&p.window);
                    self.combine.merge(&mut merged.acc, p.acc);
                    merged.finalizers.merge(p.finalizers);
                    merged.seen.extend(p.seen);
                    merged.count += p.count;
                    merged.fired = merged.fired.max(p.fired);
                    absorbed_fired |= p.on_time_fired;
                } else {
                    i += 1;
                }
            }
            merged.on_time_fired = absorbed_fired && merged.window.end <= self.watermark;
            let new_window = merged.window;
            panes.push(merged);
            (panes.len() - 1, Some(new_window))
        } else {
            match panes.iter().position(|p| p.window == window) {
                Some(i) => (i, None),
                None => {
                    panes.push(Pane::new(window, self.combine.create()));
                    (panes.len() - 1, Some(window))
                }
            }
        };
        for w in &merged_away {
            self.unschedule(&key, w);
        }
        if let Some(w) = scheduled {
            self.schedule(&key, &w);
        }
        let panes = self.state.get_mut(&key)?;
        let pane = &mut panes[idx];
        if already_added(&mut pane.seen, record) {
            self.redelivered.inc();
        } else {
            self.combine.add(&mut pane.acc, value);
        }
        pane.finalizers.merge(finalizers);
        pane.count += 1;
        let window = pane.window;
        if pane.on_time_fired || window.end <= self.watermark {
            self.dirty.push((key, window));
            return None;
        }
        match self.windowing.trigger.early {
            Some(EarlyFiring::EveryCount(n)) if pane.count >= n => {
                let accumulation = self.windowing.accumulation;
                Some(fire(
                    &self.combine,
                    accumulation,
                    &key,
                    pane,
                    Timing::Early,
                    false,
                ))
            }
            Some(EarlyFiring::AfterDelay(d)) if pane.count == 1 => {
                self.delays.push_back((Instant::now() + d, key, window));
                None
            }
            _ => None,
        }
    }

    async fn emit(&self, panes: Vec<Element<(K, C::Out)>>) {
        if panes.is_empty() {
            return;
        }
        self.metrics.sent.inc_by(panes.len() as u64);
        let unconsumed = self.main.send(panes).await;
        if unconsumed > 0 {
            self.metrics.discarded.inc_by(unconsumed);
        }
    }

    /// Fires the late panes of windows touched by late data in the last batch.
    fn fire_dirty(&mut self, out: &mut Vec<Element<(K, C::Out)>>) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_by_key(|d| d.1);
        dirty.dedup_by(|a, b| a.1 == b.1 && a.0 == b.0);
        for (key, window) in dirty {
            if let Some(pane) = self
                .state
                .get_mut(&key)
                .and_then(|ps| ps.iter_mut().find(|p| p.window == window))
            {
                if pane.count > 0 {
                    pane.on_time_fired = true;
                    out.push(fire(
                        &self.combine,
                        self.windowing.accumulation,
                        &key,
                        pane,
                        Timing::Late,
                        false,
                    ));
                }
            }
        }
    }

    /// Fires on-time panes and drops expired state for every timer up to the watermark.
    fn advance(&mut self, wm: Timestamp, out: &mut Vec<Element<(K, C::Out)>>) {
        self.watermark = wm;
        while let Some(entry) = self.timers.first_entry() {
            if *entry.key() > wm {
                break;
            }
            let keys = entry.remove();
            for key in keys {
                let Some(panes) = self.state.get_mut(&key) else {
                    continue;
                };
                for pane in panes.iter_mut() {
                    if !pane.on_time_fired && pane.window.end <= wm {
                        pane.on_time_fired = true;
                        let last = self.windowing.expiry(&pane.window) <= wm;
                        if pane.count > 0 {
                            out.push(fire(
                                &self.combine,
                                self.windowing.accumulation,
                                &key,
                                pane,
                                Timing::OnTime,
                                last,
                            ));
                        }
                    }
                }
                let windowing = &self.windowing;
                panes.retain(|p| windowing.expiry(&p.window) > wm);
                if panes.is_empty() {
                    self.state.remove(&key);
                }
            }
        }
    }
}

/// True when this pane's accumulator already holds `record`'s value from an earlier delivery, so the
/// value of this (re)delivery must not be added again. Copies of the same delivery (a record that a
/// `flat_map` turned into several elements of one pane) are all added.
fn already_added(seen: &mut HashMap<u64, u64>, record: Option<RecordId>) -> bool {
    let Some(r) = record else {
        return false;
    };
    match seen.entry(r.id) {
        std::collections::hash_map::Entry::Occupied(o) => *o.get() != r.delivery,
        std::collections::hash_map::Entry::Vacant(v) => {
            v.insert(r.delivery);
            false
        }
    }
}

fn fire<K: Clone, V, C: CombineFn<V>>(
    combine: &C,
    accumulation: Accumulation,
    key: &K,
    pane: &mut Pane<C::Acc>,
    timing: Timing,
    is_last: bool,
) -> Element<(K, C::Out)> {
    let acc = match accumulation {
        Accumulation::Discarding => {
            pane.seen.clear();
            std::mem::replace(&mut pane.acc, combine.create())
        }
        Accumulation::Accumulating => pane.acc.clone(),
    };
    let element = Element {
        value: (key.clone(), combine.extract(acc)),
        timestamp: pane.window.max_timestamp(),
        window: pane.window,
        pane: PaneInfo {
            timing,
            index: pane.fired,
            is_last,
        },
        finalizers: std::mem::take(&mut pane.finalizers),
    };
    pane.fired += 1;
    pane.count = 0;
    element
}

impl<K, V, C> Operator for GroupOp<K, V, C>
where
    K: Data + Hash + Eq,
    V: Data,
    C: CombineFn<V>,
{
    type In = (K, V);

    async fn process(&mut self, _input: usize, batch: Vec<Element<(K, V)>>) {
        let start = StdInstant::now();
        let received = batch.len() as u64;
        self.metrics.received.inc_by(received);
        let mut out = Vec::new();
        let mut late = Vec::new();
        let mut dropped = 0u64;
        for e in batch {
            if self.windowing.expiry(&e.window) <= self.watermark {
                match self.windowing.late {
                    LatePolicy::Drop => dropped += 1,
                    LatePolicy::Route => late.push(e),
                }
                continue;
            }
            let record = e.finalizers.record();
            let (k, v) = e.value;
            if let Some(pane) = self.add(k, v, e.window, e.finalizers, record) {
                out.push(pane);
            }
        }
        self.fire_dirty(&mut out);
        self.metrics.observe_batch(received, start.elapsed());
        let late_count = dropped + late.len() as u64;
        if late_count > 0 {
            self.metrics.late.inc_by(late_count);
        }
        if dropped > 0 {
            self.metrics.discarded.inc_by(dropped);
        }
        self.emit(out).await;
        if !late.is_empty() {
            let unconsumed = self.late.send(late).await;
            if unconsumed > 0 {
                self.metrics.discarded.inc_by(unconsumed);
            }
        }
    }

    async fn on_watermark(&mut self, wm: Watermark) {
        if let Watermark::EventTime(t) = wm {
            let mut out = Vec::new();
            self.advance(t, &mut out);
            self.emit(out).await;
        }
        self.main.send_watermark(wm);
        self.late.send_watermark(wm);
    }

    fn next_timer(&self) -> Option<Instant> {
        self.delays.front().map(|d| d.0)
    }

    async fn on_timer(&mut self) {
        let now = Instant::now();
        let mut out = Vec::new();
        while let Some((deadline, _, _)) = self.delays.front() {
            if *deadline > now {
                break;
            }
            let Some((_, key, window)) = self.delays.pop_front() else {
                break;
            };
            let accumulation = self.windowing.accumulation;
            if let Some(pane) = self
                .state
                .get_mut(&key)
                .and_then(|ps| ps.iter_mut().find(|p| p.window.span(&window) == p.window))
            {
                if pane.count > 0 && !pane.on_time_fired {
                    out.push(fire(
                        &self.combine,
                        accumulation,
                        &key,
                        pane,
                        Timing::Early,
                        false,
                    ));
                }
            }
        }
        self.emit(out).await;
    }
}
