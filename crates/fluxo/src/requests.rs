//! Splitting a sink batch into the requests a service accepts ([`RequestSplitter`]) and sending them
//! ([`send_requests`]): one rule for every sink, so the limits of Pub/Sub (`Publish`: messages,
//! bytes), Bigtable (`MutateRows`: entries, mutations, bytes) and BigQuery (`AppendRows`: rows, bytes)
//! are applied the same way, and a failed request fails exactly the elements it carried.

use std::future::Future;

use futures::StreamExt;

use crate::sink::WriteError;

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

/// When [`send_requests`] reports a batch whose every element failed with its whole request as one
/// failure ([`WriteError::All`], the first request's error: the engine retries or settles the batch as
/// one by that error's class) rather than element by element ([`WriteError::Partial`], each element
/// classified by its own request's error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllFailed {
    /// Only when the batch went out as one request: the errors of several requests may differ in
    /// class (a request refused as invalid next to one that timed out), and each element keeps its own.
    OneRequest,
    /// Whenever every request failed as a whole: for a service whose requests fail alike when it is
    /// down or slow, one failure for the batch instead of one per element.
    EveryRequest,
}

/// Sends the requests of one sink batch, at most `concurrency` at once, and turns their answers into
/// the batch's outcome. Each request comes with the batch indices of the elements it carries and the
/// future that sends it; the future answers `Ok` with the elements the service refused one by one
/// (batch indices, for example the per-entry statuses of `MutateRows`) or `Err` when the request
/// failed as a whole, which fails every element it carried. `failures` holds what the caller refused
/// before sending (elements that can never be written).
///
/// The outcome is `Ok` when nothing failed; [`WriteError::All`] (with the error of the first request)
/// when every one of the `batch_len` elements failed with its whole request, nothing was refused
/// before, and `all_failed` allows it for that many requests; else [`WriteError::Partial`] with every
/// failed index once, in index order.
pub async fn send_requests<E, It, Fut>(
    requests: impl IntoIterator<Item = (It, Fut)>,
    concurrency: usize,
    batch_len: usize,
    mut failures: Vec<(usize, E)>,
    all_failed: AllFailed,
) -> Result<(), WriteError<E>>
where
    It: IntoIterator<Item = usize>,
    Fut: Future<Output = Result<Vec<(usize, E)>, E>>,
    E: Clone,
{
    let refused_before = failures.len();
    // A plain loop over `FuturesUnordered` with a named async fn, not a stream of closures: the
    // callers' futures must stay `Send` inside `Sink::write`, and closures returning async blocks
    // defeat the compiler's proof of that ("implementation of FnOnce is not general enough").
    let concurrency = concurrency.max(1);
    let mut queued = requests.into_iter().enumerate();
    let mut running = futures::stream::FuturesUnordered::new();
    let mut answers = Vec::new();
    loop {
        while running.len() < concurrency {
            let Some((n, (items, send))) = queued.next() else {
                break;
            };
            running.push(numbered(n, items, send));
        }
        match running.next().await {
            Some(answer) => answers.push(answer),
            None => break,
        }
    }
    // Completion order varies; the request order decides which error stands for the batch.
    answers.sort_unstable_by_key(|(n, _, _)| *n);
    let one_request = answers.len() == 1;
    let (mut whole_failures, mut every_request_failed) = (0usize, !answers.is_empty());
    let mut first_error = None;
    for (_, items, answer) in answers {
        match answer {
            Ok(refused) => {
                every_request_failed = false;
                failures.extend(refused);
            }
            Err(e) => {
                let before = failures.len();
                failures.extend(items.into_iter().map(|i| (i, e.clone())));
                whole_failures += failures.len() - before;
                first_error.get_or_insert(e);
            }
        }
    }
    if failures.is_empty() {
        return Ok(());
    }
    let as_one = one_request || all_failed == AllFailed::EveryRequest;
    if as_one && every_request_failed && refused_before == 0 && whole_failures == batch_len {
        if let Some(e) = first_error {
            return Err(WriteError::All(e));
        }
    }
    failures.sort_by_key(|(i, _)| *i);
    Err(WriteError::Partial(failures))
}

/// `send`'s answer with the request's number and elements.
async fn numbered<It, Fut: Future>(n: usize, items: It, send: Fut) -> (usize, It, Fut::Output) {
    (n, items, send.await)
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

    /// Random batches split into random requests, each failing whole, refusing some elements, or
    /// succeeding; the outcome against an expectation computed directly from the same choices.
    #[test]
    fn failed_requests_fail_exactly_their_elements() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let mut rng = fastrand::Rng::with_seed(11);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        for _ in 0..500 {
            let len = rng.usize(0..30);
            // Refused before sending, then the rest in requests of 1..5 elements.
            let refused: Vec<usize> = (0..len).filter(|_| rng.u8(..10) == 0).collect();
            let mut requests: Vec<Vec<usize>> = Vec::new();
            for i in (0..len).filter(|i| !refused.contains(i)) {
                if requests.last().is_none_or(|r| r.len() >= rng.usize(1..5)) {
                    requests.push(Vec::new());
                }
                requests.last_mut().unwrap().push(i);
            }
            // 0: ok, 1: the whole request fails, 2: some of its elements are refused.
            let fate: Vec<u8> = requests.iter().map(|_| rng.u8(..3)).collect();
            let partly: Vec<Vec<usize>> = requests
                .iter()
                .map(|r| r.iter().copied().filter(|_| rng.bool()).collect())
                .collect();
            let mut expected: Vec<usize> = refused.clone();
            for (k, r) in requests.iter().enumerate() {
                match fate[k] {
                    1 => expected.extend(r),
                    2 => expected.extend(&partly[k]),
                    _ => {}
                }
            }
            expected.sort_unstable();
            let all_failed = if rng.bool() {
                AllFailed::OneRequest
            } else {
                AllFailed::EveryRequest
            };
            let all_whole = !requests.is_empty()
                && fate.iter().all(|f| *f == 1)
                && refused.is_empty()
                && expected.len() == len
                && (requests.len() == 1 || all_failed == AllFailed::EveryRequest);

            let limit = rng.usize(1..4);
            let (running, peak) = (AtomicUsize::new(0), AtomicUsize::new(0));
            let sends = requests.iter().enumerate().map(|(k, r)| {
                let (fate, partly, running, peak) = (fate[k], &partly[k], &running, &peak);
                // Paused time: requests finish in the order of their delays, not of their start. At
                // least 1 ms, so every request waits and the limit is reached when there are enough.
                let delay = std::time::Duration::from_millis(rng.u64(1..5));
                let send = async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(delay).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    match fate {
                        1 => Err(k),
                        2 => Ok(partly.iter().map(|&i| (i, k)).collect()),
                        _ => Ok(Vec::new()),
                    }
                };
                (r.clone(), send)
            });
            let prior = refused.iter().map(|&i| (i, usize::MAX)).collect();
            let out = rt.block_on(send_requests(sends, limit, len, prior, all_failed));
            assert_eq!(peak.load(Ordering::SeqCst), limit.min(requests.len()));
            match out {
                Ok(()) => assert!(expected.is_empty()),
                Err(WriteError::All(e)) => {
                    assert!(all_whole, "All for {expected:?}");
                    assert_eq!(e, 0, "the first request's error stands for the batch");
                }
                Err(WriteError::Partial(f)) => {
                    assert!(!all_whole);
                    let got: Vec<usize> = f.iter().map(|(i, _)| *i).collect();
                    assert_eq!(got, expected, "each failed element once, in index order");
                    for (i, e) in f {
                        if refused.contains(&i) {
                            assert_eq!(e, usize::MAX);
                        } else {
                            assert!(requests[e].contains(&i), "{i} failed with request {e}");
                        }
                    }
                }
            }
        }
    }

    /// Two requests that both fail whole, with errors of different classes: one failure for the batch
    /// only when the sink asks for it; a batch sent as one request fails as one either way.
    #[test]
    fn a_batch_fails_as_one_only_as_the_sink_asks() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let two = |all_failed| {
            let sends = vec![
                (
                    vec![0, 1],
                    std::future::ready(Err::<Vec<(usize, &str)>, _>("timeout")),
                ),
                (vec![2], std::future::ready(Err("invalid"))),
            ];
            rt.block_on(send_requests(sends, 2, 3, Vec::new(), all_failed))
        };
        match two(AllFailed::OneRequest) {
            Err(WriteError::Partial(f)) => {
                assert_eq!(f, vec![(0, "timeout"), (1, "timeout"), (2, "invalid")]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            two(AllFailed::EveryRequest),
            Err(WriteError::All("timeout"))
        ));
        for all_failed in [AllFailed::OneRequest, AllFailed::EveryRequest] {
            let sends = vec![(
                vec![0, 1],
                std::future::ready(Err::<Vec<(usize, &str)>, _>("down")),
            )];
            let out = rt.block_on(send_requests(sends, 1, 2, Vec::new(), all_failed));
            assert!(matches!(out, Err(WriteError::All("down"))), "{out:?}");
            // An element refused before sending keeps the others apart too.
            let sends = vec![(
                vec![1],
                std::future::ready(Err::<Vec<(usize, &str)>, _>("down")),
            )];
            let out = rt.block_on(send_requests(sends, 1, 2, vec![(0, "bad")], all_failed));
            assert!(
                matches!(&out, Err(WriteError::Partial(f)) if *f == vec![(0, "bad"), (1, "down")]),
                "{out:?}"
            );
        }
    }
}
