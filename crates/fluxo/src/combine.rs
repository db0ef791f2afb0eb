//! Combine functions: associative aggregations computed per key and window without buffering every value.

use std::marker::PhantomData;
use std::ops::AddAssign;

use crate::element::Data;

/// An aggregation in Beam's `CombineFn` shape. Accumulators of merged session windows are merged with
/// [`CombineFn::merge`], so it must be associative.
pub trait CombineFn<V>: Send + Sync + 'static {
    /// Intermediate state for one key and window.
    type Acc: Clone + Send + Sync + 'static;
    /// The value emitted per pane.
    type Out: Data;
    /// An empty accumulator.
    fn create(&self) -> Self::Acc;
    /// Adds one input.
    fn add(&self, acc: &mut Self::Acc, value: V);
    /// Merges `other` into `acc`.
    fn merge(&self, acc: &mut Self::Acc, other: Self::Acc);
    /// The output of a pane.
    fn extract(&self, acc: Self::Acc) -> Self::Out;
}

/// Counts elements.
#[derive(Debug, Clone, Copy, Default)]
pub struct Count;

impl<V> CombineFn<V> for Count {
    type Acc = u64;
    type Out = u64;
    fn create(&self) -> u64 {
        0
    }
    fn add(&self, acc: &mut u64, _value: V) {
        *acc += 1;
    }
    fn merge(&self, acc: &mut u64, other: u64) {
        *acc += other;
    }
    fn extract(&self, acc: u64) -> u64 {
        acc
    }
}

/// Sums values.
#[derive(Debug, Clone, Copy)]
pub struct Sum<V>(PhantomData<fn() -> V>);

impl<V> Default for Sum<V> {
    fn default() -> Self {
        Sum(PhantomData)
    }
}

impl<V> CombineFn<V> for Sum<V>
where
    V: Data + Default + AddAssign,
{
    type Acc = V;
    type Out = V;
    fn create(&self) -> V {
        V::default()
    }
    fn add(&self, acc: &mut V, value: V) {
        *acc += value;
    }
    fn merge(&self, acc: &mut V, other: V) {
        *acc += other;
    }
    fn extract(&self, acc: V) -> V {
        acc
    }
}

/// Collects values into a list: the combine behind `group_by_key`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ToList;

impl<V: Data> CombineFn<V> for ToList {
    type Acc = Vec<V>;
    type Out = Vec<V>;
    fn create(&self) -> Vec<V> {
        Vec::new()
    }
    fn add(&self, acc: &mut Vec<V>, value: V) {
        acc.push(value);
    }
    fn merge(&self, acc: &mut Vec<V>, mut other: Vec<V>) {
        acc.append(&mut other);
    }
    fn extract(&self, acc: Vec<V>) -> Vec<V> {
        acc
    }
}

/// Reduces values with a binary function (`Option` accumulator, so no identity element is needed).
pub struct Reduce<V, F>(F, PhantomData<fn() -> V>);

impl<V, F> Reduce<V, F> {
    /// Wraps an associative binary function.
    pub fn new(f: F) -> Self {
        Reduce(f, PhantomData)
    }
}

impl<V, F> CombineFn<V> for Reduce<V, F>
where
    V: Data,
    F: Fn(V, V) -> V + Send + Sync + 'static,
{
    type Acc = Option<V>;
    type Out = Option<V>;
    fn create(&self) -> Option<V> {
        None
    }
    fn add(&self, acc: &mut Option<V>, value: V) {
        *acc = Some(match acc.take() {
            Some(a) => (self.0)(a, value),
            None => value,
        });
    }
    fn merge(&self, acc: &mut Option<V>, other: Option<V>) {
        if let Some(o) = other {
            self.add(acc, o);
        }
    }
    fn extract(&self, acc: Option<V>) -> Option<V> {
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins() {
        let c = Count;
        let mut a = CombineFn::<&str>::create(&c);
        c.add(&mut a, "x");
        c.add(&mut a, "y");
        CombineFn::<&str>::merge(&c, &mut a, 3);
        assert_eq!(CombineFn::<&str>::extract(&c, a), 5);

        let s = Sum::<i64>::default();
        let mut a = s.create();
        s.add(&mut a, 4);
        s.add(&mut a, -1);
        assert_eq!(s.extract(a), 3);

        let r = Reduce::new(|a: u32, b: u32| a.max(b));
        let mut a = r.create();
        r.add(&mut a, 3);
        r.merge(&mut a, Some(9));
        assert_eq!(r.extract(a), Some(9));
    }
}
