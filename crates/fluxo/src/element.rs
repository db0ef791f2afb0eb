//! Elements: a value with its event timestamp, window, pane and acknowledgement finalizers.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::finalizer::Finalizers;

/// Event time in microseconds since the Unix epoch. [`Timestamp::MIN`] and [`Timestamp::MAX`] stand for
/// "before anything" and "end of input".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Before any event.
    pub const MIN: Timestamp = Timestamp(i64::MIN);
    /// End of input: a watermark at `MAX` fires every window.
    pub const MAX: Timestamp = Timestamp(i64::MAX);

    /// From microseconds since the Unix epoch.
    pub const fn from_micros(micros: i64) -> Self {
        Timestamp(micros)
    }

    /// From milliseconds since the Unix epoch.
    pub const fn from_millis(millis: i64) -> Self {
        Timestamp(millis.saturating_mul(1000))
    }

    /// From seconds since the Unix epoch.
    pub const fn from_secs(secs: i64) -> Self {
        Timestamp(secs.saturating_mul(1_000_000))
    }

    /// Microseconds since the Unix epoch.
    pub const fn micros(self) -> i64 {
        self.0
    }

    /// The current wall-clock time.
    pub fn now() -> Self {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Timestamp(d.as_micros() as i64)
    }

    /// Adds a duration, saturating at the bounds.
    pub fn plus(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_add(duration_micros(d)))
    }

    /// Subtracts a duration, saturating at the bounds.
    pub fn minus(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_sub(duration_micros(d)))
    }
}

pub(crate) fn duration_micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// A half-open event-time interval `[start, end)`. The global window spans all of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Window {
    /// Inclusive start.
    pub start: Timestamp,
    /// Exclusive end.
    pub end: Timestamp,
}

impl Window {
    /// The single window of unwindowed data.
    pub const GLOBAL: Window = Window {
        start: Timestamp::MIN,
        end: Timestamp::MAX,
    };

    /// A window `[start, end)`.
    pub const fn new(start: Timestamp, end: Timestamp) -> Self {
        Window { start, end }
    }

    /// The last timestamp inside the window; panes of this window carry it.
    pub fn max_timestamp(&self) -> Timestamp {
        if self.end == Timestamp::MAX {
            Timestamp::MAX
        } else {
            Timestamp(self.end.0 - 1)
        }
    }

    /// True when the windows overlap or touch (used to merge sessions).
    pub fn intersects(&self, other: &Window) -> bool {
        self.start < other.end && other.start < self.end
    }

    /// The smallest window covering both.
    pub fn span(&self, other: &Window) -> Window {
        Window {
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }

    /// True for [`Window::GLOBAL`].
    pub fn is_global(&self) -> bool {
        *self == Window::GLOBAL
    }
}

impl Default for Window {
    fn default() -> Self {
        Window::GLOBAL
    }
}

/// Why a pane fired, relative to the watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Timing {
    /// Before the watermark passed the end of the window (early firing).
    Early,
    /// When the watermark passed the end of the window.
    OnTime,
    /// After the on-time pane, for data that arrived late but within the allowed lateness.
    Late,
    /// Not produced by a trigger (elements that were never grouped).
    #[default]
    Unknown,
}

/// Which firing of a window produced an element.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PaneInfo {
    /// Why the pane fired.
    pub timing: Timing,
    /// 0 for the first pane of the window, then 1, 2, ...
    pub index: u32,
    /// True when no further pane of this window will follow.
    pub is_last: bool,
}

/// A value in flight with its event time, window, pane and finalizers.
#[derive(Debug, Clone)]
pub struct Element<T> {
    /// The payload.
    pub value: T,
    /// Event time.
    pub timestamp: Timestamp,
    /// The window the element belongs to ([`Window::GLOBAL`] until windowed).
    pub window: Window,
    /// The pane that produced it (for grouped output).
    pub pane: PaneInfo,
    /// Acknowledgement handles shared with its copies.
    pub finalizers: Finalizers,
}

impl<T> Element<T> {
    /// An element in the global window without acknowledgement tracking.
    pub fn new(value: T, timestamp: Timestamp) -> Self {
        Element {
            value,
            timestamp,
            window: Window::GLOBAL,
            pane: PaneInfo::default(),
            finalizers: Finalizers::None,
        }
    }

    /// Attaches finalizers.
    pub fn with_finalizers(mut self, finalizers: impl Into<Finalizers>) -> Self {
        self.finalizers = finalizers.into();
        self
    }
}

/// A type that can travel through a pipeline. `size_bytes` estimates its memory footprint so that buffers
/// and sink batches can be bounded by bytes; the default counts only the inline size, so types that own
/// heap memory should override it.
///
/// ```
/// #[derive(Clone)]
/// struct Reading { sensor: String, value: f64 }
/// impl fluxo::Data for Reading {
///     fn size_bytes(&self) -> usize { std::mem::size_of::<Self>() + self.sensor.len() }
/// }
/// ```
pub trait Data: Clone + Send + Sync + 'static {
    /// Approximate bytes used by the value, heap included.
    fn size_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
    }
}

macro_rules! data_inline {
    ($($t:ty),*) => { $(impl Data for $t {})* };
}
data_inline!(
    (),
    bool,
    char,
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    f32,
    f64,
    &'static str,
    Timestamp,
    Window,
    Duration
);

impl Data for String {
    fn size_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.len()
    }
}

impl<T: Data> Data for Vec<T> {
    fn size_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.iter().map(Data::size_bytes).sum::<usize>()
    }
}

impl<T: Data> Data for Option<T> {
    fn size_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.as_ref().map_or(0, |v| {
                v.size_bytes().saturating_sub(std::mem::size_of::<T>())
            })
    }
}

impl<T: Data> Data for Box<T> {
    fn size_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + (**self).size_bytes()
    }
}

/// A shared value is kept alive by all its handles, so each handle counts its share: the value's size
/// divided by the handles alive when it is counted. The handles of one value in flight add up to the
/// value's size, whether 1 or 990 elements hold it. Walks the value on every count: for large values
/// held by many elements, [`Shared`] measures once.
impl<T: Data> Data for Arc<T> {
    fn size_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + (**self).size_bytes() / Arc::strong_count(self)
    }
}

impl Data for Arc<str> {
    fn size_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.len() / Arc::strong_count(self)
    }
}

impl<T: Data> Data for Arc<[T]> {
    fn size_bytes(&self) -> usize {
        let all: usize = self.iter().map(Data::size_bytes).sum();
        std::mem::size_of::<Self>() + all / Arc::strong_count(self)
    }
}

/// A value shared by several elements (the branches of a fan-out, the lines of one invoice), with its
/// size measured once when it is created.
///
/// Buffers and sink batches are bounded by the bytes their elements keep alive. A handle keeps the
/// whole value alive, so each handle counts its share, the size divided by the handles alive when it is
/// counted: a value split into 990 elements counts once in a buffer that holds them all, not 990
/// times, and not as a pointer. Cloning is an atomic increment.
pub struct Shared<T> {
    inner: Arc<SharedInner<T>>,
}

struct SharedInner<T> {
    value: T,
    bytes: usize,
}

impl<T: Data> Shared<T> {
    /// Shares `value`, measured by [`Data::size_bytes`].
    pub fn new(value: T) -> Self {
        let bytes = value.size_bytes();
        Self::with_size(value, bytes)
    }
}

impl<T> Shared<T> {
    /// Shares a value of a type that is not [`Data`] itself (a domain type of another crate) with
    /// its approximate memory, heap included.
    pub fn with_size(value: T, bytes: usize) -> Self {
        Shared {
            inner: Arc::new(SharedInner { value, bytes }),
        }
    }

    /// The size given or measured at creation.
    pub fn value_bytes(&self) -> usize {
        self.inner.bytes
    }
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T> std::ops::Deref for Shared<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner.value
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.value.fmt(f)
    }
}

impl<T: Send + Sync + 'static> Data for Shared<T> {
    fn size_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.inner.bytes / Arc::strong_count(&self.inner)
    }
}

impl<A: Data, B: Data> Data for (A, B) {
    fn size_bytes(&self) -> usize {
        self.0.size_bytes() + self.1.size_bytes()
    }
}

impl<A: Data, B: Data, C: Data> Data for (A, B, C) {
    fn size_bytes(&self) -> usize {
        self.0.size_bytes() + self.1.size_bytes() + self.2.size_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_geometry() {
        let a = Window::new(Timestamp(0), Timestamp(10));
        let b = Window::new(Timestamp(5), Timestamp(15));
        let c = Window::new(Timestamp(10), Timestamp(20));
        assert!(a.intersects(&b));
        assert!(!a.intersects(&c));
        assert_eq!(a.span(&c), Window::new(Timestamp(0), Timestamp(20)));
        assert_eq!(a.max_timestamp(), Timestamp(9));
        assert_eq!(Window::GLOBAL.max_timestamp(), Timestamp::MAX);
    }

    #[test]
    fn sizes_count_heap() {
        assert_eq!("abc".to_string().size_bytes(), 24 + 3);
        assert_eq!(vec![1u8, 2, 3].size_bytes(), 24 + 3);
        assert_eq!((1u32, 2u64).size_bytes(), 12);
    }

    #[test]
    fn shared_values_count_once_over_their_handles() {
        let one = Arc::new("abc".to_string());
        assert_eq!(one.size_bytes(), 8 + 24 + 3);
        assert_eq!(Arc::<str>::from("abcd").size_bytes(), 16 + 4);
        assert_eq!(Arc::<[u8]>::from(vec![1u8; 5]).size_bytes(), 16 + 5);
        let text = Arc::new("x".repeat(990));
        let handles = vec![Arc::clone(&text); 9];
        // 10 handles: each counts a tenth of 24 + 990 bytes.
        assert_eq!(handles[0].size_bytes(), 8 + 1014 / 10);
        let big = Shared::with_size((), 990_000);
        let lines: Vec<Shared<()>> = (0..990).map(|_| big.clone()).collect();
        drop(big);
        let total: usize = lines.iter().map(Data::size_bytes).sum();
        assert_eq!(total, 990 * 8 + 990_000);
        assert_eq!(Shared::new("abc".to_string()).size_bytes(), 8 + 27);
        assert_eq!(Shared::new(7u64).value_bytes(), 8);
    }
}
