//! Sales per store in sliding hourly windows: a second pipeline on the fluxo engine, built only from
//! its public API (no change to the engine or the connectors was needed for it).
//!
//! ```text
//! Pub/Sub (event time in the `sold_at` attribute)
//!   -> Parse (DoFn: a sale, or a dead letter with the raw bytes and the reason)
//!   -> window_into(sliding 1 h every 15 min, allowed lateness) -> key by store
//!   -> combine_per_key_with_late(Sum)
//!        main: one total per store, window and pane  -> Cloud Storage `<output>/totals/...`
//!        late: sales after their windows closed      -> Cloud Storage `<output>/late/...`
//!   dead letters                                      -> Cloud Storage `<output>/dead/...`
//! ```
//!
//! Panes are discarding: the panes of one store and window add up to its total (a window fires on
//! time, then once more per batch of late sales within the allowed lateness). Nothing is
//! acknowledged on Pub/Sub before the file holding it is written.

use std::convert::Infallible;
use std::time::Duration;

use fluxo::{
    Data, DoFn, DoFnContext, PCollection, Sink, SinkConfig, Sum, Timing, Window, Windowing,
};
use serde::{Deserialize, Serialize};

/// The message attribute holding a sale's event time (RFC 3339 or integer milliseconds), read by the
/// Pub/Sub source as the element's timestamp.
pub const EVENT_TIME_ATTRIBUTE: &str = "sold_at";

/// Longest store id accepted; longer ones are dead letters.
pub const MAX_STORE_LEN: usize = 64;

/// A sale as published: `{"store": "SP-01", "cents": 1250}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sale {
    /// Store id (1..=64 bytes).
    pub store: String,
    /// Amount in cents (whole, non-negative: JSON integers up to 2^64 - 1).
    pub cents: u64,
}

/// The total of one store in one window, as one pane reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreTotal {
    /// Store id.
    pub store: String,
    /// Window start, microseconds since the Unix epoch.
    pub window_start_micros: i64,
    /// Window end (exclusive), microseconds since the Unix epoch.
    pub window_end_micros: i64,
    /// Sum of the sales of this pane (panes are discarding: add the panes of a window up).
    pub cents: u64,
    /// 0 for the window's first pane, then 1, 2, ...
    pub pane_index: u32,
    /// `on_time` or `late` (a pane for sales within the allowed lateness).
    pub timing: String,
}

/// A sale that arrived after its windows closed (event time more than the allowed lateness behind the
/// watermark), kept instead of dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LateSale {
    /// Store id.
    pub store: String,
    /// Amount in cents.
    pub cents: u64,
    /// The window it was too late for: start, microseconds since the Unix epoch.
    pub window_start_micros: i64,
}

/// A message that is not a sale, with its bytes (lossy UTF-8) and the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// The message data.
    pub raw: String,
    /// Why it was rejected.
    pub reason: String,
}

impl Data for Sale {
    fn size_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.store.capacity()
    }
}

impl Data for StoreTotal {
    fn size_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.store.capacity() + self.timing.capacity()
    }
}

impl Data for LateSale {
    fn size_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.store.capacity()
    }
}

impl Data for Rejected {
    fn size_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.raw.capacity() + self.reason.capacity()
    }
}

/// Parses one message's data; anything that is not a sale becomes a [`Rejected`] dead letter.
#[derive(Debug, Clone, Copy, Default)]
pub struct Parse;

/// Why `data` is not a sale, or the sale.
pub fn parse(data: &[u8]) -> Result<Sale, String> {
    let sale: Sale = serde_json::from_slice(data).map_err(|e| format!("not a sale: {e}"))?;
    if sale.store.is_empty() || sale.store.len() > MAX_STORE_LEN {
        return Err(format!(
            "store must be 1 to {MAX_STORE_LEN} bytes, got {}",
            sale.store.len()
        ));
    }
    Ok(sale)
}

impl DoFn for Parse {
    type In = fluxo_gcp::pubsub::PubsubMessage;
    type Out = Sale;
    type Dead = Rejected;

    fn process(&mut self, m: Self::In, ctx: &mut DoFnContext<'_, Sale, Rejected>) {
        match parse(&m.data) {
            Ok(sale) => ctx.output(sale),
            Err(reason) => ctx.dead_letter(Rejected {
                raw: String::from_utf8_lossy(&m.data).into_owned(),
                reason,
            }),
        }
    }
}

/// Window and lateness settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Window length. Default: 1 hour.
    pub window: Duration,
    /// A new window starts every `period` (each sale counts in `window / period` windows). Default:
    /// 15 minutes.
    pub period: Duration,
    /// How long after a window's end late sales still count in it (as late panes). Default: 1 hour.
    pub allowed_lateness: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            window: Duration::from_secs(3600),
            period: Duration::from_secs(900),
            allowed_lateness: Duration::from_secs(3600),
        }
    }
}

/// Where the three outputs go.
pub struct Outputs<T, L, D> {
    /// Totals per store, window and pane.
    pub totals: T,
    /// Sales after their windows closed.
    pub late: L,
    /// Messages that are not sales.
    pub dead: D,
    /// Batching of the three sinks.
    pub batch: SinkConfig,
}

/// Adds the pipeline's steps after the source `messages`.
pub fn build<T, L, D>(
    messages: &PCollection<fluxo_gcp::pubsub::PubsubMessage>,
    settings: Settings,
    outputs: Outputs<T, L, D>,
) where
    T: Sink<StoreTotal>,
    L: Sink<LateSale>,
    D: Sink<Rejected>,
{
    let parsed = messages.par_do("Parse", Parse);
    let windowing = Windowing::sliding(settings.window, settings.period)
        .allowed_lateness(settings.allowed_lateness);
    let (totals, late) = parsed
        .main
        .window_into("Sliding", windowing)
        .map("ByStore", |s: Sale| (s.store, s.cents))
        .combine_per_key_with_late("SumPerStore", Sum::<u64>::default());
    totals
        .par_do("Totals", ToStoreTotal)
        .main
        .write("WriteTotals", outputs.totals, outputs.batch);
    late.par_do("Late", ToLateSale)
        .main
        .write("WriteLate", outputs.late, outputs.batch);
    parsed
        .dead_letters
        .write("WriteDeadLetters", outputs.dead, outputs.batch);
}

/// A pane of `(store, cents)` as a [`StoreTotal`] row, with its window and pane.
struct ToStoreTotal;

impl DoFn for ToStoreTotal {
    type In = (String, u64);
    type Out = StoreTotal;
    type Dead = Infallible;

    fn process(
        &mut self,
        (store, cents): (String, u64),
        ctx: &mut DoFnContext<'_, StoreTotal, Infallible>,
    ) {
        let (w, pane) = (ctx.window(), ctx.pane());
        ctx.output(StoreTotal {
            store,
            window_start_micros: w.start.micros(),
            window_end_micros: w.end.micros(),
            cents,
            pane_index: pane.index,
            timing: timing_name(pane.timing).to_string(),
        });
    }
}

/// A late `(store, cents)` as a [`LateSale`] row, with the window it missed.
struct ToLateSale;

impl DoFn for ToLateSale {
    type In = (String, u64);
    type Out = LateSale;
    type Dead = Infallible;

    fn process(
        &mut self,
        (store, cents): (String, u64),
        ctx: &mut DoFnContext<'_, LateSale, Infallible>,
    ) {
        let w = ctx.window();
        ctx.output(LateSale {
            store,
            cents,
            window_start_micros: w.start.micros(),
        });
    }
}

fn timing_name(t: Timing) -> &'static str {
    match t {
        Timing::Early => "early",
        Timing::OnTime => "on_time",
        Timing::Late => "late",
        Timing::Unknown => "unknown",
    }
}

/// The window a [`StoreTotal`] belongs to.
pub fn window_of(t: &StoreTotal) -> Window {
    Window::new(
        fluxo::Timestamp::from_micros(t.window_start_micros),
        fluxo::Timestamp::from_micros(t.window_end_micros),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_sales_at_the_edges_and_refuses_the_rest() {
        let ok = |s: &str| parse(s.as_bytes());
        assert_eq!(
            ok(r#"{"store":"SP-01","cents":18446744073709551615}"#),
            Ok(Sale {
                store: "SP-01".into(),
                cents: u64::MAX
            })
        );
        assert_eq!(ok(r#"{"store":"a","cents":0}"#).map(|s| s.cents), Ok(0));
        let long = "x".repeat(MAX_STORE_LEN);
        assert!(ok(&format!(r#"{{"store":"{long}","cents":1}}"#)).is_ok());
        for bad in [
            String::new(),
            "   ".into(),
            "[]".into(),
            r#"{"store":"a","cents":18446744073709551616}"#.into(),
            r#"{"store":"a","cents":-1}"#.into(),
            r#"{"store":"a","cents":1.5}"#.into(),
            r#"{"store":"a","cents":"1"}"#.into(),
            r#"{"store":"a"}"#.into(),
            r#"{"store":"","cents":1}"#.into(),
            format!(r#"{{"store":"{long}x","cents":1}}"#),
            r#"{"store":"a","cents":1,"extra":true}"#.into(),
        ] {
            let err = ok(&bad).expect_err(&bad);
            assert!(!err.is_empty() && !err.contains('\n'), "{bad}: {err}");
        }
    }
}
