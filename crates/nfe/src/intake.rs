//! The intake decision: one received record in, a valid [`Invoice`] or exactly one [`DeadLetter`]
//! out, whatever the bytes and whatever happened to earlier deliveries of the same message.
//!
//! The streaming pipeline and the replay call [`Intake::process`] for every message; so does the
//! `validate_step` fuzz target, which checks that the dead letters it produces always fit their
//! sinks' limits.

use jiff::Timestamp;

use crate::dead_letter::{stage, DeadLetter, SourceMeta};
use crate::enrich::Invoice;
use crate::issue::{ErrorCode, Issue, Rejection};
use crate::source::field;
use crate::validate::Validator;

/// Why an earlier delivery of a message was not stored, as the transport observed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PreviousFailure<'a> {
    /// True when a sink refused the data permanently (retrying cannot help); false for a transient
    /// failure (retries exhausted, drain timeout).
    pub permanent: bool,
    /// The failure as reported (sink label and error), for the dead letter's message.
    pub reason: &'a str,
}

/// What the transport knows about one delivery beyond the bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delivery<'a> {
    /// Set by `ingest` on a record whose `NFeID` already appeared earlier in its page: that
    /// record's index in the page.
    pub duplicate_of: Option<&'a str>,
    /// The delivery count of this message, this delivery included (1 for the first), when known.
    pub attempt: Option<u32>,
    /// The last failure of an earlier delivery, when known.
    pub previous_failure: Option<PreviousFailure<'a>>,
}

/// The intake step's rules: validation, the duplicate flag from `ingest`, and the poison-message
/// guard (a message a sink refused permanently, or delivered too often, becomes a dead letter so
/// that it is acknowledged instead of coming back forever).
#[derive(Clone, Debug)]
pub struct Intake {
    validator: Validator,
    max_failed_deliveries: Option<u32>,
}

impl Intake {
    /// Validates with `validator`. `max_failed_deliveries`: a message whose delivery count is
    /// above it is a dead letter (`NFE_DELIVERY_ATTEMPTS_EXCEEDED`) without being processed again;
    /// `None` disables the guard.
    pub fn new(validator: Validator, max_failed_deliveries: Option<u32>) -> Self {
        Intake {
            validator,
            max_failed_deliveries,
        }
    }

    /// The validator in use.
    pub fn validator(&self) -> &Validator {
        &self.validator
    }

    /// One delivery: the invoice, or its dead letter (`source` is only called for a dead letter,
    /// which is stamped with the current time). Never panics, whatever the bytes.
    pub fn process(
        &self,
        raw: &[u8],
        delivery: &Delivery<'_>,
        source: impl FnOnce() -> SourceMeta,
    ) -> Result<Invoice, Box<DeadLetter>> {
        let dead = |rejection: Rejection, at_stage: &str, source: SourceMeta| {
            Box::new(DeadLetter::rejected(
                raw.to_vec(),
                rejection,
                at_stage,
                source,
                Timestamp::now(),
            ))
        };
        if let Some(f) = delivery.previous_failure.filter(|f| f.permanent) {
            let issue = Issue::new(
                ErrorCode::SinkRejected,
                "$",
                format!("a sink refused this record permanently: {}", f.reason),
            );
            return Err(dead(Rejection::new(vec![issue]), stage::SINK, source()));
        }
        if let (Some(attempt), Some(max)) = (delivery.attempt, self.max_failed_deliveries) {
            if attempt > max {
                let last = delivery
                    .previous_failure
                    .map_or("not known to this worker", |f| f.reason);
                let issue = Issue::new(
                    ErrorCode::DeliveryAttemptsExceeded,
                    "$",
                    format!(
                        "delivery {attempt}: {} earlier deliveries were not stored \
                         (max_failed_deliveries); last failure: {last}",
                        attempt - 1
                    ),
                );
                return Err(dead(Rejection::new(vec![issue]), stage::DELIVERY, source()));
            }
        }
        if let Some(first) = delivery.duplicate_of {
            let issue = Issue::new(
                ErrorCode::DuplicateId,
                format!("$.{}", field::NFE_ID),
                format!("NFeID already sent by record {first} of the same page"),
            );
            return Err(dead(Rejection::new(vec![issue]), stage::VALIDATE, source()));
        }
        self.validator
            .process(raw)
            .map_err(|rejection| dead(rejection, stage::VALIDATE, source()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ValidationConfig;

    const VALID: &[u8] = br#"{"CreateDate":"2021-05-24T20:21:34.79","EmissionDate":"2021-05-24T00:00:00",
        "Discount":0.0,"NFeNumber":503,"NFeID":3,"ItemList":[{"ProductName":"Beer","Value":9.00,"Quantity":6}]}"#;

    fn intake() -> Intake {
        Intake::new(ValidationConfig::default().build().unwrap(), Some(4))
    }

    fn run(raw: &[u8], d: Delivery<'_>) -> Result<Invoice, Box<DeadLetter>> {
        intake().process(raw, &d, SourceMeta::default)
    }

    #[test]
    fn valid_records_pass_and_every_other_case_is_one_dead_letter_with_its_code() {
        assert_eq!(run(VALID, Delivery::default()).unwrap().nfe_id, 3);
        let code = |r: Result<Invoice, Box<DeadLetter>>| {
            let d = r.unwrap_err();
            assert_eq!(d.raw.0, VALID, "the dead letter keeps the exact bytes");
            (d.issues[0].code, d.stage.clone())
        };
        let rejected = PreviousFailure {
            permanent: true,
            reason: "BigQuery: invalid row",
        };
        let transient = PreviousFailure {
            permanent: false,
            reason: "Bigtable: retries exhausted",
        };
        assert_eq!(
            code(run(
                VALID,
                Delivery {
                    previous_failure: Some(rejected),
                    attempt: Some(2),
                    ..Delivery::default()
                }
            )),
            (ErrorCode::SinkRejected, stage::SINK.to_owned())
        );
        // A transient failure is retried until the guard's count.
        for attempt in 1..=4 {
            let d = Delivery {
                previous_failure: Some(transient),
                attempt: Some(attempt),
                ..Delivery::default()
            };
            assert!(run(VALID, d).is_ok(), "attempt {attempt}");
        }
        let over = run(
            VALID,
            Delivery {
                previous_failure: Some(transient),
                attempt: Some(5),
                ..Delivery::default()
            },
        );
        let message = over.as_ref().unwrap_err().issues[0].message.clone();
        assert!(message.contains("retries exhausted"), "{message}");
        assert_eq!(
            code(over),
            (
                ErrorCode::DeliveryAttemptsExceeded,
                stage::DELIVERY.to_owned()
            )
        );
        assert_eq!(
            code(run(
                VALID,
                Delivery {
                    duplicate_of: Some("0"),
                    ..Delivery::default()
                }
            )),
            (ErrorCode::DuplicateId, stage::VALIDATE.to_owned())
        );
        let unguarded = Intake::new(ValidationConfig::default().build().unwrap(), None);
        let d = Delivery {
            attempt: Some(1_000),
            ..Delivery::default()
        };
        assert!(unguarded.process(VALID, &d, SourceMeta::default).is_ok());
    }
}
