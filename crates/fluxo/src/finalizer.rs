//! End-to-end acknowledgement.
//!
//! A source that needs to know when its elements are done (a Pub/Sub subscription, for example) opens an
//! [`AckBatch`] for each batch it reads and attaches one [`Finalizer`] to each element. Fan-out copies and
//! derived elements clone the finalizer; sinks record their outcome on it and drop it. When the last copy of
//! an element is dropped, the element's slot is resolved; when every slot of the batch is resolved, the
//! source receives the per-element [`Status`] list through [`AckReceiver`] and can ack or nack upstream.
//!
//! The design keeps the per-element cost to a few atomic operations and no allocation: all elements of one
//! source batch share a single allocation holding one slot (reference count + status) per element. A copy
//! that fails may also say why ([`Finalizer::fail`]); reasons live in a side list touched only on failure,
//! and reach the source with [`AckReceiver::wait_outcomes`] (a Pub/Sub source uses them to dead-letter a
//! message a sink refused, instead of redelivering it forever).

use std::cell::Cell;
use std::future::Future;
use std::hash::{DefaultHasher, Hasher};
use std::pin::Pin;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::sync::oneshot;

thread_local! {
    /// Set while a future that did not finish is being dropped (an aborted step): the finalizers it held
    /// were not delivered.
    static CANCELLING: Cell<bool> = const { Cell::new(false) };
}

/// Wraps a step's future so that dropping it before it finished (an abort at the drain deadline, or a
/// detached parallel batch) resolves the finalizers it held as [`Status::Errored`] instead of delivered.
pub(crate) struct Guarded<F> {
    inner: Option<Pin<Box<F>>>,
}

impl<F> Guarded<F> {
    pub(crate) fn new(f: F) -> Self {
        Guarded {
            inner: Some(Box::pin(f)),
        }
    }
}

impl<F: Future> Future for Guarded<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Pending;
        };
        let out = inner.as_mut().poll(cx);
        if out.is_ready() {
            self.inner = None;
        }
        out
    }
}

impl<F> Drop for Guarded<F> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            let before = CANCELLING.with(|c| c.replace(true));
            drop(inner);
            CANCELLING.with(|c| c.set(before));
        }
    }
}

/// The outcome of one element, merged over every copy of it. Higher values win when copies disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Status {
    /// Every copy reached its sink and was durably written (or was consumed on purpose: filtered out,
    /// aggregated into a pane that was delivered, stored as a dead letter).
    Delivered = 0,
    /// At least one copy failed in a way that may succeed later (for example a sink exhausted its retries).
    /// Sources should make the element available again (Pub/Sub: nack).
    Errored = 1,
    /// At least one copy was refused permanently (a fatal sink error). Sources should not expect a retry to
    /// help; Pub/Sub sources nack so the subscription's dead-letter policy takes the message.
    Rejected = 2,
}

impl Status {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Status::Delivered,
            1 => Status::Errored,
            _ => Status::Rejected,
        }
    }

    /// True for [`Status::Delivered`].
    pub fn is_delivered(self) -> bool {
        self == Status::Delivered
    }
}

struct Slot {
    refs: AtomicU32,
    status: AtomicU8,
}

/// Why an element failed, as reported by the step or sink that failed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Index of the element in its acknowledgement batch.
    pub index: usize,
    /// The failure's status ([`Status::Errored`] or [`Status::Rejected`]).
    pub status: Status,
    /// What failed (for sinks: `<sink label>: <error>`).
    pub reason: std::sync::Arc<str>,
}

/// Every element's outcome of an acknowledgement batch: statuses in hand-out order, and the reasons
/// reported for failed elements (at most one per element: the one of its worst status, first come).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcomes {
    /// One status per element.
    pub statuses: Vec<Status>,
    /// Reasons of failed elements, in index order.
    pub failures: Vec<Failure>,
}

/// Numbers acknowledgement batches: every batch a source opens is one delivery of its records.
static DELIVERIES: AtomicU64 = AtomicU64::new(1);

/// The identity of a source record in one delivery of it: `id` is the same every time the source
/// delivers the record again (a Pub/Sub message id), `delivery` differs from one delivery to the next.
/// Grouping steps with accumulating panes use it so that a redelivered record is counted once (see
/// [`ack_batch_with_ids`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordId {
    /// The record's identity, stable across redeliveries (a hash of the source's own id; see
    /// [`record_id`]).
    pub id: u64,
    /// The acknowledgement batch this copy was delivered in.
    pub delivery: u64,
}

/// Hashes a source's own record identifier (a Pub/Sub message id, an object name and offset) into the
/// 64-bit id [`ack_batch_with_ids`] takes. Stable within a process, which is as long as the grouping
/// state that compares ids lives. Two different records collide with probability about 2^-64 per pair.
pub fn record_id(key: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(key);
    h.finish()
}

struct Shared {
    slots: Box<[Slot]>,
    /// This batch's delivery number ([`RecordId::delivery`]).
    delivery: u64,
    /// Record ids in slot order, or empty when the source did not supply them.
    ids: Box<[u64]>,
    pending: AtomicUsize,
    notify: Mutex<Option<oneshot::Sender<Outcomes>>>,
    /// Reasons of failed copies, one entry per slot, allocated on the first failure (empty while
    /// every copy succeeds); touched only on failure.
    failures: Mutex<Vec<Option<SlotFailure>>>,
}

/// The worst failure recorded on one slot, with its reason.
type SlotFailure = (Status, Arc<str>);

impl Shared {
    fn slot_done(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            let statuses = self
                .slots
                .iter()
                .map(|s| Status::from_u8(s.status.load(Ordering::Acquire)))
                .collect();
            let failures =
                std::mem::take(&mut *self.failures.lock().unwrap_or_else(|p| p.into_inner()))
                    .into_iter()
                    .enumerate()
                    .filter_map(|(index, f)| {
                        f.map(|(status, reason)| Failure {
                            index,
                            status,
                            reason,
                        })
                    })
                    .collect();
            let sender = self.notify.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(tx) = sender {
                // The receiver may have gone away (the source stopped waiting); nothing to do then.
                let _ = tx.send(Outcomes { statuses, failures });
            }
        }
    }

    fn record_failure(&self, idx: u32, status: Status, reason: &Arc<str>) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failures.is_empty() {
            failures.resize(self.slots.len(), None);
        }
        if let Some(slot) = failures.get_mut(idx as usize) {
            // The worst status wins; among equals, the first reason stays.
            if slot.as_ref().is_none_or(|(s, _)| status > *s) {
                *slot = Some((status, reason.clone()));
            }
        }
    }
}

/// Resolves to the per-element statuses of an acknowledgement batch, in the order the finalizers were handed out.
pub struct AckReceiver {
    rx: oneshot::Receiver<Outcomes>,
    len: usize,
}

/// Opens an acknowledgement batch of `len` elements: a source attaches one returned finalizer to each
/// element (index order) and awaits the [`AckReceiver`] to learn every element's outcome. A batch of zero
/// elements resolves immediately with an empty list.
pub fn ack_batch(len: usize) -> (Vec<Finalizer>, AckReceiver) {
    open_batch(len, Box::default())
}

/// [`ack_batch`] for a source whose records have an identity that survives redelivery (`ids[i]` for
/// the `i`-th finalizer, usually [`record_id`] of the source's own id). Steps downstream see it as
/// [`Finalizer::record`]: an accumulating grouping step then adds a redelivered record's value once,
/// however many times the record is delivered while its window is open.
pub fn ack_batch_with_ids(ids: Vec<u64>) -> (Vec<Finalizer>, AckReceiver) {
    let len = ids.len();
    open_batch(len, ids.into_boxed_slice())
}

fn open_batch(len: usize, ids: Box<[u64]>) -> (Vec<Finalizer>, AckReceiver) {
    let (tx, rx) = oneshot::channel();
    let slots: Box<[Slot]> = (0..len)
        .map(|_| Slot {
            refs: AtomicU32::new(1),
            status: AtomicU8::new(Status::Delivered as u8),
        })
        .collect();
    let shared = Arc::new(Shared {
        slots,
        delivery: DELIVERIES.fetch_add(1, Ordering::Relaxed),
        ids,
        pending: AtomicUsize::new(len),
        notify: Mutex::new(Some(tx)),
        failures: Mutex::new(Vec::new()),
    });
    if len == 0 {
        if let Some(tx) = shared
            .notify
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = tx.send(Outcomes::default());
        }
    }
    // One strong count per slot, given back by the slot's last copy (see `Finalizer::shared`).
    let finalizers = (0..len as u32)
        .map(|idx| Finalizer {
            // SAFETY: `Arc::into_raw` never returns null.
            shared: unsafe {
                NonNull::new_unchecked(Arc::into_raw(Arc::clone(&shared)).cast_mut())
            },
            idx,
        })
        .collect();
    (finalizers, AckReceiver { rx, len })
}

impl AckReceiver {
    /// Number of elements in the batch.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the batch has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Waits until every element of the batch is resolved. If the pipeline is torn down before that (a
    /// crash, an aborted run), the missing outcomes are reported as [`Status::Errored`] so the source
    /// never acknowledges an element that was not delivered.
    pub async fn wait(self) -> Vec<Status> {
        self.wait_outcomes().await.statuses
    }

    /// [`AckReceiver::wait`] with the reasons of the failed elements.
    pub async fn wait_outcomes(self) -> Outcomes {
        match self.rx.await {
            Ok(outcomes) => outcomes,
            Err(_) => Outcomes {
                statuses: vec![Status::Errored; self.len],
                failures: Vec::new(),
            },
        }
    }
}

/// The acknowledgement handle of one element. Cloning it makes a new copy that must also finish before the
/// element counts as done. Dropping it without [`Finalizer::update`] means the copy finished normally.
pub struct Finalizer {
    /// The batch's shared state. Each *slot* whose copies are still alive holds one strong count of
    /// the `Arc` (taken in `open_batch`, given back when the slot's last copy drops); copies of one
    /// slot share it and only touch the slot's own counter. An `Arc` per copy cost two more atomic
    /// operations per copy on one counter shared by every element of the batch (14% of the engine
    /// benchmark's time was cloning and dropping it).
    shared: NonNull<Shared>,
    idx: u32,
}

// SAFETY: `Finalizer` gives access to `Shared` only through `&Shared` (all of whose state is atomics
// and mutexes, so `Shared: Send + Sync`), and the pointer stays valid while the copy lives (the strong
// count its slot holds).
unsafe impl Send for Finalizer {}
unsafe impl Sync for Finalizer {}

impl Finalizer {
    fn shared(&self) -> &Shared {
        // SAFETY: the slot of this copy holds a strong count until its last copy drops (see `shared`).
        unsafe { self.shared.as_ref() }
    }

    fn slot(&self) -> &Slot {
        &self.shared().slots[self.idx as usize]
    }

    /// The record this finalizer belongs to, when its source supplied record ids
    /// ([`ack_batch_with_ids`]).
    pub fn record(&self) -> Option<RecordId> {
        let shared = self.shared();
        shared.ids.get(self.idx as usize).map(|&id| RecordId {
            id,
            delivery: shared.delivery,
        })
    }

    /// Records the outcome of this copy; the worst outcome over all copies wins.
    pub fn update(&self, status: Status) {
        if status != Status::Delivered {
            self.slot().status.fetch_max(status as u8, Ordering::AcqRel);
        }
    }

    /// Records a failure of this copy with its reason (see [`AckReceiver::wait_outcomes`]).
    pub fn fail(&self, status: Status, reason: &Arc<str>) {
        if status != Status::Delivered {
            self.update(status);
            self.shared().record_failure(self.idx, status, reason);
        }
    }
}

impl Clone for Finalizer {
    fn clone(&self) -> Self {
        // A live copy keeps its slot's count above zero, so the slot (and its strong count) cannot
        // finish while this increment happens.
        self.slot().refs.fetch_add(1, Ordering::Relaxed);
        Finalizer {
            shared: self.shared,
            idx: self.idx,
        }
    }
}

impl Drop for Finalizer {
    fn drop(&mut self) {
        // A copy dropped while a step panics or is aborted was not delivered: never let a crash or an
        // abort acknowledge data.
        if std::thread::panicking() || CANCELLING.with(Cell::get) {
            self.update(Status::Errored);
        }
        if self.slot().refs.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared().slot_done();
            // SAFETY: the slot's last copy gives back the strong count the slot took in
            // `open_batch`; nothing of this copy touches `Shared` afterwards.
            unsafe { Arc::decrement_strong_count(self.shared.as_ptr()) };
        }
    }
}

impl std::fmt::Debug for Finalizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Finalizer").field("idx", &self.idx).finish()
    }
}

/// The finalizers an element carries: none (the source does not track acknowledgement), one (the usual
/// case), or many (an aggregate built from several inputs, such as a window pane).
#[derive(Debug, Clone, Default)]
pub enum Finalizers {
    /// Not tracked.
    #[default]
    None,
    /// One source element.
    One(Finalizer),
    /// Several source elements (aggregates).
    Many(Vec<Finalizer>),
}

impl Finalizers {
    /// Records the outcome on every finalizer held.
    pub fn update(&self, status: Status) {
        match self {
            Finalizers::None => {}
            Finalizers::One(f) => f.update(status),
            Finalizers::Many(fs) => fs.iter().for_each(|f| f.update(status)),
        }
    }

    /// Records a failure with its reason on every finalizer held.
    pub fn fail(&self, status: Status, reason: &Arc<str>) {
        match self {
            Finalizers::None => {}
            Finalizers::One(f) => f.fail(status, reason),
            Finalizers::Many(fs) => fs.iter().for_each(|f| f.fail(status, reason)),
        }
    }

    /// Moves the finalizers of `other` into `self`.
    pub fn merge(&mut self, other: Finalizers) {
        match other {
            Finalizers::None => {}
            Finalizers::One(f) => self.push(f),
            Finalizers::Many(fs) => fs.into_iter().for_each(|f| self.push(f)),
        }
    }

    fn push(&mut self, f: Finalizer) {
        match std::mem::take(self) {
            Finalizers::None => *self = Finalizers::One(f),
            Finalizers::One(g) => *self = Finalizers::Many(vec![g, f]),
            Finalizers::Many(mut fs) => {
                fs.push(f);
                *self = Finalizers::Many(fs);
            }
        }
    }

    /// The record of an element derived from exactly one source record that has an id; `None` for
    /// untracked elements and aggregates.
    pub fn record(&self) -> Option<RecordId> {
        match self {
            Finalizers::One(f) => f.record(),
            _ => None,
        }
    }

    /// True when nothing is tracked.
    pub fn is_empty(&self) -> bool {
        match self {
            Finalizers::None => true,
            Finalizers::One(_) => false,
            Finalizers::Many(fs) => fs.is_empty(),
        }
    }
}

impl From<Finalizer> for Finalizers {
    fn from(f: Finalizer) -> Self {
        Finalizers::One(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resolves_when_all_copies_are_dropped() {
        let (fins, rx) = ack_batch(3);
        let mut fins = fins.into_iter();
        let a = fins.next().unwrap();
        let b = fins.next().unwrap();
        let c = fins.next().unwrap();
        let a2 = a.clone();
        drop(a);
        b.update(Status::Errored);
        drop(b);
        c.update(Status::Rejected);
        let c2 = c.clone();
        c2.update(Status::Errored);
        drop(c);
        drop(c2);
        a2.update(Status::Delivered);
        drop(a2);
        assert_eq!(
            rx.wait().await,
            vec![Status::Delivered, Status::Errored, Status::Rejected]
        );
    }

    /// A weak handle on a batch's shared state, to see when it is freed.
    fn weak_shared(f: &Finalizer) -> std::sync::Weak<Shared> {
        // SAFETY: `f` is alive, so its slot holds a strong count; the count taken here is given back
        // by dropping `a`.
        unsafe {
            Arc::increment_strong_count(f.shared.as_ptr());
            let a = Arc::from_raw(f.shared.as_ptr());
            Arc::downgrade(&a)
        }
    }

    #[test]
    fn the_batch_state_lives_exactly_as_long_as_its_copies() {
        // Copies across threads, out of order, and a receiver dropped first or kept.
        for keep_receiver in [false, true] {
            let (fins, rx) = ack_batch(64);
            let weak = weak_shared(&fins[0]);
            let rx = keep_receiver.then_some(rx);
            let copies: Vec<Finalizer> = fins.iter().flat_map(|f| [f.clone(), f.clone()]).collect();
            drop(fins);
            assert!(weak.upgrade().is_some(), "copies still alive");
            let (a, b) = copies.split_at(64);
            let (a, b) = (a.to_vec(), b.to_vec());
            drop(copies);
            let t = std::thread::spawn(move || drop(a));
            drop(b);
            t.join().unwrap();
            assert!(weak.upgrade().is_none(), "freed once the last copy dropped");
            if let Some(rx) = rx {
                let statuses = futures::executor::block_on(rx.wait());
                assert_eq!(statuses, vec![Status::Delivered; 64]);
            }
        }
    }

    #[tokio::test]
    async fn pending_copy_holds_the_batch() {
        let (mut fins, rx) = ack_batch(1);
        let f = fins.pop().unwrap();
        let copy = f.clone();
        drop(f);
        let mut rx = Box::pin(rx.wait());
        assert!(futures::poll!(&mut rx).is_pending());
        drop(copy);
        assert_eq!(rx.await, vec![Status::Delivered]);
    }

    #[tokio::test]
    async fn dropping_an_unfinished_guarded_future_errors_its_elements() {
        let (mut fins, rx) = ack_batch(2);
        let held = fins.pop().unwrap();
        let done = fins.pop().unwrap();
        let fut = Guarded::new(async move {
            std::future::pending::<()>().await;
            drop(held);
        });
        let mut fut = Box::pin(fut);
        assert!(futures::poll!(&mut fut).is_pending());
        drop(fut);
        drop(done);
        assert_eq!(rx.wait().await, vec![Status::Delivered, Status::Errored]);
    }

    #[tokio::test]
    async fn failure_reasons_reach_the_receiver_worst_first() {
        let (fins, rx) = ack_batch(3);
        let mut fins = fins.into_iter();
        let (a, b, c) = (
            fins.next().unwrap(),
            fins.next().unwrap(),
            fins.next().unwrap(),
        );
        let b2 = b.clone();
        b.fail(Status::Errored, &Arc::from("Bigtable: timed out"));
        b2.fail(Status::Rejected, &Arc::from("BigQuery: invalid row"));
        b2.fail(Status::Errored, &Arc::from("later, milder"));
        c.update(Status::Errored);
        drop((a, b, b2, c));
        let out = rx.wait_outcomes().await;
        assert_eq!(
            out.statuses,
            vec![Status::Delivered, Status::Rejected, Status::Errored]
        );
        assert_eq!(
            out.failures,
            vec![Failure {
                index: 1,
                status: Status::Rejected,
                reason: Arc::from("BigQuery: invalid row"),
            }]
        );
    }

    #[test]
    fn record_ids_are_stable_per_record_and_distinct_per_delivery() {
        let ids = vec![record_id(b"m-1"), record_id(b"m-2")];
        assert_ne!(ids[0], ids[1]);
        let (first, _rx1) = ack_batch_with_ids(ids.clone());
        let (again, _rx2) = ack_batch_with_ids(vec![ids[0]]);
        let (a, b) = (first[0].record().unwrap(), first[1].record().unwrap());
        let a2 = again[0].record().unwrap();
        assert_eq!((a.id, b.id, a2.id), (ids[0], ids[1], ids[0]));
        assert_eq!(a.delivery, b.delivery);
        assert_ne!(a.delivery, a2.delivery);
        assert_eq!(first[0].clone().record(), Some(a));
        let (plain, _rx3) = ack_batch(1);
        assert_eq!(plain[0].record(), None);
        assert_eq!(Finalizers::None.record(), None);
    }

    #[tokio::test]
    async fn empty_batch_resolves_immediately() {
        let (fins, rx) = ack_batch(0);
        assert!(fins.is_empty());
        assert!(rx.wait().await.is_empty());
    }

    #[tokio::test]
    async fn merged_finalizers_resolve_together() {
        let (fins, rx) = ack_batch(2);
        let mut agg = Finalizers::None;
        for f in fins {
            agg.merge(Finalizers::One(f));
        }
        agg.update(Status::Errored);
        drop(agg);
        assert_eq!(rx.wait().await, vec![Status::Errored, Status::Errored]);
    }
}
