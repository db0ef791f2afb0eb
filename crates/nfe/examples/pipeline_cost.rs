//! Processes a fixed set of generated invoices once: parse, validate, enrich, Bigtable encoding.
//! A fixed workload for instruction-count profilers (e.g. `valgrind --tool=callgrind`), which
//! give stable numbers on a busy machine; wall-clock figures come from `cargo bench --bench nfe`.
//!
//! `cargo run --release -p nfe --example pipeline_cost -- 1000`

use nfe::{BigtableLayout, ValidationConfig};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let validator = ValidationConfig::default().build().expect("default config");
    let layout = BigtableLayout::default();
    let products = [
        "Rice",
        "Flour",
        "Bean",
        "Feijão preto",
        "Açúcar refinado",
        "Ice cream",
    ];
    let records: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let items: Vec<String> = (0..1 + i % 8)
                .map(|j| {
                    format!(
                        r#"{{"ProductName":"{}","Value":{}.{:02},"Quantity":{}}}"#,
                        products[(i + j) % products.len()],
                        5 + (i * 7 + j) % 40,
                        (i * 13 + j * 7) % 100,
                        1 + (i + j) % 10
                    )
                })
                .collect();
            format!(
                r#"{{"CreateDate":"2021-05-24T20:21:34.79","EmissionDate":"2021-05-24T00:00:00","Discount":0.0,"NFeNumber":{},"NFeID":{},"ItemList":[{}]}}"#,
                500 + i,
                i + 1,
                items.join(",")
            )
            .into_bytes()
        })
        .collect();
    let start = std::time::Instant::now();
    let mut cells = 0;
    for raw in &records {
        let invoice = validator.process(raw).expect("valid invoice");
        let rows = layout.encode(&invoice);
        cells += rows[0].cells.len() + rows[1].cells.len();
    }
    let elapsed = start.elapsed();
    println!(
        "{n} invoices, {cells} cells, {:.0} invoices/s",
        n as f64 / elapsed.as_secs_f64()
    );
}
