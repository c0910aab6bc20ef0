//! Micro-benchmarks of the hot path: parsing + validating records, aggregating them, and
//! rendering /metrics. End-to-end throughput is measured with `gatemeter loadgen`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gatemeter::aggregate::{Aggregator, Limits};
use gatemeter::export::prometheus::render;
use gatemeter::health::Health;
use gatemeter::price::PriceTable;
use gatemeter::record::{Event, Validation, parse_array, parse_event};
use gatemeter::store::{LiveStore, MemoryStore};

fn records(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                r#"{{"request_id":"bench-{i:012}","namespace":"ns-{}","provider":"p{}","model":"model-{}","endpoint":"/v1/messages","status":{},"duration_ms":{},"ttfb_ms":{},"input_tokens":{},"output_tokens":{},"cache_read_tokens":{},"cost_usd":0.001234,"user":"user-{}","session_id":"s-{}","is_streaming":true}}"#,
                i % 4,
                i % 3,
                i % 5,
                if i % 17 == 0 { 500 } else { 200 },
                50 + (i * 7919) % 60_000,
                10 + i % 300,
                i % 5000,
                i % 800,
                i % 20_000,
                i % 20,
                i % 50
            )
        })
        .collect()
}

/// [`records`] with the free text a gateway sends: a user agent and client address on every
/// record, an error message on failures (the fields scrubbed of secrets at validation).
fn records_with_text(n: usize) -> Vec<String> {
    records(n)
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let error = if r.contains(r#""status":500"#) {
                r#","error":"upstream 500: overloaded_error (request req_011CUp, retry later)""#
            } else {
                ""
            };
            format!(
                r#"{},"user_agent":"claude-cli/2.1.328 (external, cli)","client_ip":"10.20.{}.{}"{error}}}"#,
                &r[..r.len() - 1],
                i % 4,
                i % 200
            )
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let prices = PriceTable::default();
    let v = Validation {
        now_ms: 1_760_000_000_000,
        prices: &prices,
        keep_requests: None,
    };
    let recs = records(100);

    let mut g = c.benchmark_group("record");
    g.throughput(Throughput::Elements(100));
    g.bench_function("parse_validate_100", |b| {
        b.iter(|| {
            for r in &recs {
                black_box(parse_event(black_box(r), &v).ok());
            }
        })
    });
    let texts = records_with_text(100);
    g.bench_function("parse_validate_text_100", |b| {
        b.iter(|| {
            for r in &texts {
                black_box(parse_event(black_box(r), &v).ok());
            }
        })
    });
    let array = format!("[{}]", recs.join(","));
    g.bench_function("parse_array_100", |b| {
        b.iter(|| black_box(parse_array(black_box(&array), &v)))
    });
    g.finish();

    let events: Vec<Event> = recs
        .iter()
        .filter_map(|r| parse_event(r, &v).ok())
        .collect();
    let mut g = c.benchmark_group("aggregate");
    g.throughput(Throughput::Elements(100));
    let mut agg = Aggregator::new(Limits {
        dedup_window: 0,
        ..Limits::default()
    });
    g.bench_function("apply_100", |b| {
        b.iter(|| {
            for e in &events {
                black_box(agg.apply(e, 0));
            }
        })
    });
    g.finish();

    let store = MemoryStore::new();
    store.apply(agg.take(), 1_760_000_000_000);
    let view = store.view(1_760_000_000_000);
    let health = Health::new(1000).snapshot();
    c.bench_function("render_metrics", |b| {
        b.iter(|| black_box(render(&view, &health, ("memory", true), false)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
