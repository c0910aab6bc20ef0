//! Criterion: the OTLP receiver's CPU work for one request of 100 Claude Code `api_request`
//! events — protobuf decode (prost, and the in-place fast path the server uses), mapping,
//! record validation — without HTTP or the pipeline.
//! End-to-end throughput: `scripts/bench-otlp.sh`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gatemeter::claude_code::mapping::Mapping;
use gatemeter::otlp::decode::{self, Encoding};
use gatemeter::otlp::scan;
use gatemeter::price::PriceTable;
use gatemeter::record::Validation;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;

/// 100 copies of the first real api_request event of the protobuf capture, unique ids.
fn body() -> Vec<u8> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/claude-code/protobuf/0004_logs.pb"
    );
    let bytes = std::fs::read(path).expect("fixture");
    let mut req = ExportLogsServiceRequest::decode(&bytes[..]).expect("fixture decodes");
    let rl = &mut req.resource_logs[0];
    let sl = &mut rl.scope_logs[0];
    let api = sl
        .log_records
        .iter()
        .find(|r| {
            r.attributes.iter().any(|kv| {
                kv.key == "event.name"
                    && matches!(kv.value.as_ref().and_then(|v| v.value.as_ref()),
                        Some(Value::StringValue(s)) if s == "api_request")
            })
        })
        .expect("an api_request")
        .clone();
    sl.log_records = (0..100)
        .map(|i| {
            let mut r = api.clone();
            for kv in &mut r.attributes {
                if kv.key == "request_id" {
                    kv.value = Some(opentelemetry_proto::tonic::common::v1::AnyValue {
                        value: Some(Value::StringValue(format!("req_{i:020}"))),
                    });
                }
            }
            r
        })
        .collect();
    req.encode_to_vec()
}

fn otlp(c: &mut Criterion) {
    let body = body();
    let prices = PriceTable::default();
    let mapping = Mapping {
        namespace_attribute: Some("team.id".into()),
        ..Mapping::default()
    };
    let mut g = c.benchmark_group("otlp_logs");
    g.throughput(Throughput::Elements(100));
    g.bench_function("decode_map_validate_100_api_requests", |b| {
        b.iter(|| {
            let req: ExportLogsServiceRequest =
                decode::message(black_box(&body), Encoding::Protobuf).expect("decodes");
            let v = Validation {
                now_ms: 1_795_460_000_000,
                prices: &prices,
                keep_requests: None,
            };
            let out = mapping.logs(&req, &v);
            assert_eq!(out.events.len(), 100);
            black_box(out)
        })
    });
    g.bench_function("fast_path_map_validate_100_api_requests", |b| {
        b.iter(|| {
            let view = scan::logs(black_box(&body)).expect("fast path");
            let v = Validation {
                now_ms: 1_795_460_000_000,
                prices: &prices,
                keep_requests: None,
            };
            let out = mapping.logs_view(&view, &v);
            assert_eq!(out.events.len(), 100);
            black_box(out)
        })
    });
    g.finish();
}

criterion_group!(benches, otlp);
criterion_main!(benches);
