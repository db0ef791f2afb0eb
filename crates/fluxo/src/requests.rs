//! Splitting a sink batch into the requests a service accepts: one rule for every sink, so the limits
//! of Pub/Sub (`Publish`: messages, bytes), Bigtable (`MutateRows`: entries, mutations, bytes) and
//! BigQuery (`AppendRows`: rows, bytes) are applied the same way.

/// Groups items, in order, into requests of at most `max_items` items and at most `max[k]` of each
/// weight `k` (bytes, mutations, ...). A request is closed when the next item would pass a limit; an
/// item that passes a limit on its own still forms a request alone (callers refuse the items that can
/// never fit before adding them).
///
/// ```
/// use fluxo::RequestSplitter;
/// // At most 3 items and 100 bytes per request.
/// let mut split = RequestSplitter::new(3, [100]);
/// let mut requests: Vec<Vec<usize>> = vec![];
/// for (i, bytes) in [40, 40, 40, 10, 10, 10, 10].into_iter().enumerate() {
///     if split.add([bytes]) || requests.is_empty() {
///         requests.push(vec![]);
///     }
///     requests.last_mut().unwrap().push(i);
/// }
/// assert_eq!(requests, vec![vec![0, 1], vec![2, 3, 4], vec![5, 6]]);
/// ```
#[derive(Debug, Clone)]
pub struct RequestSplitter<const N: usize> {
    max_items: usize,
    max: [usize; N],
    items: usize,
    used: [usize; N],
}

impl<const N: usize> RequestSplitter<N> {
    /// A splitter for requests of at most `max_items` items (at least 1) and `max` of each weight.
    pub fn new(max_items: usize, max: [usize; N]) -> Self {
        RequestSplitter {
            max_items: max_items.max(1),
            max,
            items: 0,
            used: [0; N],
        }
    }

    /// Counts the next item; true when it must start a new request because the current one (not
    /// empty) has no room for it: the caller closes the current request first.
    pub fn add(&mut self, weights: [usize; N]) -> bool {
        let full = self.items > 0
            && (self.items >= self.max_items
                || (0..N).any(|k| {
                    // A sum past usize::MAX passes every limit.
                    self.used[k]
                        .checked_add(weights[k])
                        .is_none_or(|sum| sum > self.max[k])
                }));
        if full {
            self.reset();
        }
        self.items += 1;
        for (used, w) in self.used.iter_mut().zip(weights) {
            *used = used.saturating_add(w);
        }
        full
    }

    /// Starts over (the next item opens a request whatever it weighs), for example for another
    /// table.
    pub fn reset(&mut self) {
        self.items = 0;
        self.used = [0; N];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Requests as index lists, by the splitter.
    fn plan<const N: usize>(
        max_items: usize,
        max: [usize; N],
        items: &[[usize; N]],
    ) -> Vec<Vec<usize>> {
        let mut split = RequestSplitter::new(max_items, max);
        let mut out: Vec<Vec<usize>> = Vec::new();
        for (i, w) in items.iter().enumerate() {
            if split.add(*w) || out.is_empty() {
                out.push(Vec::new());
            }
            if let Some(last) = out.last_mut() {
                last.push(i);
            }
        }
        out
    }

    #[test]
    fn every_limit_closes_a_request_and_oversize_items_stand_alone() {
        assert_eq!(
            plan(2, [10], &[[1]; 5]),
            vec![vec![0, 1], vec![2, 3], vec![4]]
        );
        assert_eq!(
            plan(100, [10], &[[6], [4], [1], [10], [11], [0]]),
            vec![vec![0, 1], vec![2], vec![3], vec![4], vec![5]]
        );
        // Two weights: the second closes the request although the first has room.
        assert_eq!(
            plan(100, [100, 3], &[[1, 2], [1, 1], [1, 1], [1, 3]]),
            vec![vec![0, 1], vec![2], vec![3]]
        );
        assert_eq!(plan(0, [5], &[[1], [1]]), vec![vec![0], vec![1]]);
        assert!(plan::<1>(3, [5], &[]).is_empty());
        // Weights near usize::MAX do not overflow.
        assert_eq!(
            plan(10, [usize::MAX], &[[usize::MAX], [1]]),
            vec![vec![0], vec![1]]
        );
    }

    /// Against an independent reading of the rule: every request is within the limits, or is a
    /// single item; no request could have taken the next request's first item.
    #[test]
    fn requests_are_within_limits_and_maximal() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2_000 {
            let (max_items, max_a, max_b) = (rng.usize(1..8), rng.usize(1..50), rng.usize(1..20));
            let items: Vec<[usize; 2]> = (0..rng.usize(0..40))
                .map(|_| [rng.usize(0..60), rng.usize(0..25)])
                .collect();
            let reqs = plan(max_items, [max_a, max_b], &items);
            let flat: Vec<usize> = reqs.iter().flatten().copied().collect();
            assert_eq!(flat, (0..items.len()).collect::<Vec<_>>());
            let sum = |r: &[usize], k: usize| r.iter().map(|&i| items[i][k]).sum::<usize>();
            for (n, r) in reqs.iter().enumerate() {
                let within = r.len() <= max_items && sum(r, 0) <= max_a && sum(r, 1) <= max_b;
                assert!(within || r.len() == 1, "{r:?} of {items:?}");
                if let Some(next) = reqs.get(n + 1) {
                    let mut grown = r.clone();
                    grown.push(next[0]);
                    let fits = grown.len() <= max_items
                        && sum(&grown, 0) <= max_a
                        && sum(&grown, 1) <= max_b;
                    assert!(!fits, "{r:?} could take {} of {items:?}", next[0]);
                }
            }
        }
    }
}
