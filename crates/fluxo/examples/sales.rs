//! Revenue per store and hour, from sales lines: a whole fluxo pipeline in one screen.
//!
//! Run: `cargo run --release -p fluxo --example sales`
//!
//! Lines look like `store,amount_cents,epoch_seconds`. Good lines are summed per store in hourly event-time
//! windows; bad lines go to a dead-letter output with the reason. Both end in sinks that print.

use std::time::Duration;

use fluxo::{
    DoFn, DoFnContext, IterSource, Pipeline, RunOptions, Sink, SinkBatch, SinkConfig, Sum,
    Timestamp, Windowing, WriteError,
};

/// Parses one line; bad data is data: it goes to the dead-letter output, it does not stop the pipeline.
struct ParseSale;

impl DoFn for ParseSale {
    type In = String;
    type Out = (String, u64); // (store, amount in cents)
    type Dead = (String, String); // (raw line, reason)

    fn process(
        &mut self,
        line: String,
        ctx: &mut DoFnContext<'_, (String, u64), (String, String)>,
    ) {
        let fields: Vec<&str> = line.split(',').collect();
        let parsed = match fields.as_slice() {
            [store, cents, secs] => cents
                .parse::<u64>()
                .map_err(|e| format!("amount: {e}"))
                .and_then(|c| Ok((c, secs.parse::<i64>().map_err(|e| format!("time: {e}"))?)))
                .map(|(c, s)| (store.to_string(), c, s)),
            _ => Err(format!("expected 3 fields, got {}", fields.len())),
        };
        match parsed {
            // The event time comes from the record, not from the clock.
            Ok((store, cents, secs)) => ctx.output_at((store, cents), Timestamp::from_secs(secs)),
            Err(reason) => ctx.dead_letter((line, reason)),
        }
    }
}

/// A sink that prints each element with its window; real sinks write to storage and report failures.
struct Print(&'static str);

impl<T: fluxo::Data + std::fmt::Debug> Sink<T> for Print {
    // Printing cannot fail.
    type Error = std::convert::Infallible;

    async fn write(&self, batch: &SinkBatch<T>) -> Result<(), WriteError<Self::Error>> {
        for (value, meta) in batch.iter() {
            let window = if meta.window.is_global() {
                "no window".to_string()
            } else {
                format!("hour {}", meta.window.start.micros() / 3_600_000_000)
            };
            println!("{:<12} {window:<12} {value:?}", self.0);
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let lines = [
        "lisbon,1250,1700000000",
        "recife,990,1700000100",
        "lisbon,500,1700001000",
        "not a sale",
        "recife,abc,1700002000",
        "recife,4000,1700003700",
    ];
    // The source assigns processing order; event time comes from the data in ParseSale.
    let input = lines.map(|l| (l.to_string(), Timestamp::from_secs(1_700_000_000)));

    let p = Pipeline::new("sales");
    let sales = p
        .read("ReadLines", IterSource::new(input.into_iter()))
        .par_do("Parse", ParseSale);
    let (totals, late) = sales
        .main
        .window_into("Hourly", Windowing::fixed(Duration::from_secs(3600)))
        .combine_per_key_with_late("SumPerStore", Sum::<u64>::default());
    totals.write("PrintTotals", Print("total"), SinkConfig::default());
    // Sales that arrive after their hour closed are kept apart, never dropped silently.
    late.write("PrintLate", Print("late sale"), SinkConfig::default());
    sales.dead_letters.write(
        "PrintDeadLetters",
        Print("dead letter"),
        SinkConfig::default(),
    );

    let report = p.run(RunOptions::default()).await?;
    println!("\n{report}");
    Ok(())
}
