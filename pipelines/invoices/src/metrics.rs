//! Metric families of the invoices pipeline (the engine's and the connectors' are declared in their
//! own crates): dead letters by error code and publish-to-sink latency per sink.

use std::collections::BTreeMap;
use std::sync::Arc;

use fluxo::metrics::{Counter, Def, Metrics};
use nfe::ErrorCode;

/// Dead letters by error code.
pub const DEAD_LETTERS: Def = Def::counter(
    "invoices_dead_letters",
    "Dead letters by error code (docs/validation.md); a record with several codes counts under each",
    &["code"],
);

/// Upper bounds of [`PUBLISH_TO_SINK`]: 10 ms to 1 h.
pub const PUBLISH_TO_SINK_SECONDS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1_800.0, 3_600.0,
];

/// Time from an element's event time (the Pub/Sub publish time in the streaming run) to the end of
/// the write that stored it, per sink step.
pub const PUBLISH_TO_SINK: Def = Def::histogram(
    "invoices_publish_to_sink_seconds",
    "Time from the message's publish time (its event time) until the sink step durably wrote it, in seconds",
    &["step"],
    PUBLISH_TO_SINK_SECONDS,
);

/// Every family of this crate.
pub const ALL: &[Def] = &[DEAD_LETTERS, PUBLISH_TO_SINK];

/// One counter per [`ErrorCode`], created up front so every code has a series (at 0) from the
/// start: a rate over a code that never fired is 0, not "no data". Cheap to clone.
#[derive(Clone, Debug)]
pub struct DeadLetterCodes {
    counters: Arc<[Counter]>,
}

impl DeadLetterCodes {
    /// Registers [`DEAD_LETTERS`] in `metrics` with one series per code.
    pub fn new(metrics: &Metrics) -> Self {
        Self {
            counters: ErrorCode::ALL
                .iter()
                .map(|code| metrics.counter(&DEAD_LETTERS, &[code.as_str()]))
                .collect(),
        }
    }

    /// Counts one dead letter under `code`.
    pub fn count(&self, code: ErrorCode) {
        // `ErrorCode::ALL` lists the variants in declaration order (a test checks it).
        if let Some(counter) = self.counters.get(code as usize) {
            counter.inc();
        }
    }

    /// The codes counted so far (non-zero only), for the run report.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        ErrorCode::ALL
            .iter()
            .zip(self.counters.iter())
            .filter(|(_, c)| c.get() > 0)
            .map(|(code, c)| (code.as_str().to_owned(), c.get()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_counted_under_their_own_label() {
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(*code as usize, i, "{code:?}");
        }
        let metrics = Metrics::new("invoices");
        let codes = DeadLetterCodes::new(&metrics);
        let (first, last) = (ErrorCode::ALL[0], ErrorCode::ALL[ErrorCode::ALL.len() - 1]);
        codes.count(first);
        codes.count(first);
        codes.count(last);
        let text = metrics.encode();
        let line = |code: ErrorCode, n: u64| {
            format!(
                "invoices_dead_letters_total{{pipeline=\"invoices\",code=\"{}\"}} {n}\n",
                code.as_str()
            )
        };
        assert!(text.contains(&line(first, 2)), "{text}");
        assert!(text.contains(&line(last, 1)), "{text}");
        assert!(text.contains(&line(ErrorCode::ALL[1], 0)), "{text}");
        assert_eq!(
            codes.snapshot(),
            BTreeMap::from([
                (first.as_str().to_owned(), 2),
                (last.as_str().to_owned(), 1)
            ])
        );
    }
}
