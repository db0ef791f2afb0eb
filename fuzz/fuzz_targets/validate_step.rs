//! Fuzz target: the whole intake step, as the pipeline runs it for every message.
//!
//! The input decides the delivery (duplicate flag, delivery count, earlier failure, permanent or
//! not), the validator's limits, the source metadata and the object URL, then carries the record's
//! bytes (layout: `nfe_fuzz::validate_step`). `nfe::Intake::process` must give a valid invoice
//! with exact totals, or exactly one dead letter that keeps the exact bytes, with a bounded issue
//! list and topic messages within their budgets; see `src/validate_step.rs` for every check.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    nfe_fuzz::validate_step::run(data);
});
