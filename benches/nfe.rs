//! Invoice domain throughput: parse + validate + enrich + Bigtable row encoding per invoice, and the
//! cost of hostile records by size.
//!
//! Run with `cargo bench --bench nfe`. Inputs are generated here: reference-sized invoices (the
//! shape of `crates/nfe/testdata/challenge-invoices.json`, pretty-printed the same way) with 1 to
//! 8 items; and hostile records of 1 KiB to 1,000 KiB full of strings that are not UTF-8 (group
//! `nfe_hostile`, throughput in bytes: a constant rate across sizes means a cost linear in the
//! record's size). Results: `docs/benchmarks.md`.

use std::hint::black_box;
use std::time::Duration;

#[path = "common/hostile.rs"]
mod hostile_records;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use nfe::{split_page, BigtableLayout, Delivery, Intake, SourceMeta, ValidationConfig};

const PRODUCTS: [&str; 12] = [
    "Rice",
    "Flour",
    "Bean",
    "Tomate",
    "Pasta",
    "Beer",
    "French fries",
    "Ice cream",
    "Feijão preto",
    "Açúcar refinado",
    "Café torrado 500g",
    "Pão francês",
];

/// A small deterministic generator (SplitMix64), so every run measures the same bytes.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One invoice in the reference set's layout, with `items` items (1..=8).
fn invoice(g: &mut Gen, id: u64, items: usize) -> String {
    let hour = g.below(24);
    let minute = g.below(60);
    let mut s = format!(
        "{{\n      \"CreateDate\":\"2021-05-24T{hour:02}:{minute:02}:34.79\",\n      \
         \"EmissionDate\":\"2021-05-24T00:00:00\",\n      \"Discount\":{}.{:02},\n      \
         \"NFeNumber\":{},\n      \"NFeID\":{id},\n      \"ItemList\":[\n",
        g.below(2),
        g.below(100),
        500 + id
    );
    for i in 0..items {
        let name = PRODUCTS[g.below(PRODUCTS.len() as u64) as usize];
        let value = format!("{}.{:02}", 5 + g.below(40), g.below(100));
        let quantity = 1 + g.below(10);
        s.push_str(&format!(
            "         {{\"ProductName\":\"{name}\",\"Value\":{value},\"Quantity\":{quantity}}}"
        ));
        s.push_str(if i + 1 < items { ",\n" } else { "\n" });
    }
    s.push_str("      ]\n   }");
    s
}

/// `n` invoices with 1..=8 items each (uniform), ids in order.
fn invoices(n: usize) -> Vec<Vec<u8>> {
    let mut g = Gen(20_210_524);
    (0..n)
        .map(|i| {
            let items = 1 + (g.below(8) as usize);
            invoice(&mut g, i as u64 + 1, items).into_bytes()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let validator = ValidationConfig::default().build().expect("default config");
    let layout = BigtableLayout::default();
    let records = invoices(1024);
    let bytes: usize = records.iter().map(Vec::len).sum();
    assert!(
        records.iter().all(|r| validator.process(r).is_ok()),
        "generated invoices are valid"
    );
    eprintln!(
        "nfe bench: {} invoices, {:.0} bytes and {:.1} items per invoice on average",
        records.len(),
        bytes as f64 / records.len() as f64,
        records
            .iter()
            .map(|r| validator.process(r).map(|i| i.item_count).unwrap_or(0) as f64)
            .sum::<f64>()
            / records.len() as f64
    );

    let mut group = c.benchmark_group("nfe");
    group.throughput(Throughput::Elements(records.len() as u64));
    group.measurement_time(Duration::from_secs(5));

    group.bench_function("parse_validate_enrich_bigtable", |b| {
        b.iter(|| {
            let mut cells = 0usize;
            for raw in &records {
                if let Ok(invoice) = validator.process(black_box(raw)) {
                    let rows = layout.encode(&invoice);
                    cells += rows[0].cells.len() + rows[1].cells.len();
                }
            }
            black_box(cells)
        })
    });

    group.bench_function("parse_validate", |b| {
        b.iter(|| {
            let mut ok = 0usize;
            for raw in &records {
                ok += usize::from(validator.validate(black_box(raw)).is_ok());
            }
            black_box(ok)
        })
    });

    group.bench_function("parse_validate_enrich", |b| {
        b.iter(|| {
            let mut ok = 0usize;
            for raw in &records {
                ok += usize::from(validator.process(black_box(raw)).is_ok());
            }
            black_box(ok)
        })
    });

    let enriched: Vec<_> = records
        .iter()
        .filter_map(|r| validator.process(r).ok())
        .collect();
    group.bench_function("bigtable_encode", |b| {
        b.iter(|| {
            let mut cells = 0usize;
            for invoice in &enriched {
                let rows = layout.encode(black_box(invoice));
                cells += rows[0].cells.len() + rows[1].cells.len();
            }
            black_box(cells)
        })
    });

    let page = {
        let mut p = b"[\n   ".to_vec();
        for (i, r) in records.iter().enumerate() {
            if i > 0 {
                p.extend_from_slice(b",\n   ");
            }
            p.extend_from_slice(r);
        }
        p.extend_from_slice(b"\n]");
        p
    };
    group.bench_function("split_page", |b| {
        b.iter(|| black_box(split_page(black_box(&page)).map(|p| p.records.len())))
    });
    group.finish();
}

/// The Validate step on hostile records: intake (parse, validate, at most 100 issues kept) and the
/// dead letter's two encodings (object and topic message), per byte of record.
fn bench_hostile(c: &mut Criterion) {
    let intake = Intake::new(
        ValidationConfig::default().build().expect("config"),
        Some(9),
    );
    let mut group = c.benchmark_group("nfe_hostile");
    group.measurement_time(Duration::from_secs(4));
    group.sample_size(20);
    for (shape, items) in [("bad_strings", false), ("bad_items", true)] {
        for kib in [1usize, 10, 100, 1000] {
            let record = hostile_records::hostile(kib * 1024, items, 1);
            let dead = intake
                .process(&record, &Delivery::default(), SourceMeta::default)
                .expect_err("hostile records are dead letters");
            eprintln!(
                "nfe_hostile/{shape}/{kib}KiB: {} bytes, {} issues kept, {} omitted",
                record.len(),
                dead.issues.len(),
                dead.issues_omitted
            );
            group.throughput(Throughput::Bytes(record.len() as u64));
            group.bench_with_input(
                BenchmarkId::new(shape, format!("{kib}KiB")),
                &record,
                |b, r| {
                    b.iter(|| {
                        let d = intake
                            .process(black_box(r), &Delivery::default(), SourceMeta::default)
                            .expect_err("dead letter");
                        let encoded = invoices::graph::encode_dead_letter(&d, "gs://bucket");
                        black_box((encoded.object.0.len(), encoded.message.data.len()))
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, bench, bench_hostile);
criterion_main!(benches);
