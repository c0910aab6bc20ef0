//! Criterion: the OTLP receiver's CPU work for one request of 100 Claude Code `api_request`
//! events — protobuf decode (prost, and the in-place fast path the server uses), mapping,
//! record validation — and for one request of 100 GenAI chat spans (prost decode, and the
//! in-place fast path the server uses; span mapping, validation), without HTTP or the pipeline.
//! End-to-end throughput: `scripts/bench-otlp.sh`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gatemeter::claude_code::mapping::Mapping;
use gatemeter::otlp::decode::{self, Encoding};
use gatemeter::otlp::scan;
use gatemeter::price::PriceTable;
use gatemeter::record::Validation;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
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

/// 100 copies of the first answered chat span of the OpenAI client capture
/// (`tests/data/genai/openai-v2`), unique span ids; with the prompt and answer on the span
/// (content capture on) or without them (the instrumentation's default).
fn spans_body(content: bool) -> Vec<u8> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/genai/openai-v2");
    let index = std::fs::read_to_string(format!("{dir}/index.jsonl")).expect("index");
    let file = index
        .lines()
        .find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["path"] == "/v1/traces").then(|| v["file"].as_str().map(str::to_string))?
        })
        .expect("a traces body");
    let bytes = std::fs::read(format!("{dir}/{file}")).expect("fixture");
    let mut req = ExportTraceServiceRequest::decode(&bytes[..]).expect("fixture decodes");
    let ss = &mut req.resource_spans[0].scope_spans[0];
    let chat = ss
        .spans
        .iter()
        .find(|s| {
            s.attributes
                .iter()
                .any(|kv| kv.key == "gen_ai.usage.output_tokens")
        })
        .expect("an answered call")
        .clone();
    let mut chat = chat;
    if !content {
        chat.attributes
            .retain(|kv| !kv.key.ends_with(".messages") && kv.key != "gen_ai.system_instructions");
    }
    ss.spans = (0..100u64)
        .map(|i| {
            let mut s = chat.clone();
            s.span_id = i.to_be_bytes().to_vec();
            s
        })
        .collect();
    req.resource_spans.truncate(1);
    req.resource_spans[0].scope_spans.truncate(1);
    req.encode_to_vec()
}

fn genai(c: &mut Criterion) {
    let prices = PriceTable::default();
    // The capture's spans are dated when it was made; validation refuses records a day ahead.
    let now_ms = gatemeter::clock::now_ms();
    let mut g = c.benchmark_group("otlp_traces");
    g.throughput(Throughput::Elements(100));
    for (name, content) in [
        ("100_genai_spans", true),
        ("100_genai_spans_no_content", false),
    ] {
        let body = spans_body(content);
        g.bench_function(format!("decode_map_validate_{name}"), |b| {
            b.iter(|| {
                let req: ExportTraceServiceRequest =
                    decode::message(black_box(&body), Encoding::Protobuf).expect("decodes");
                let v = Validation {
                    now_ms,
                    prices: &prices,
                    keep_requests: None,
                };
                let out = gatemeter::genai::spans(&req, Some("team.id"), Default::default(), &v);
                assert_eq!(out.events.len(), 100, "{:?}", out.rejected.first());
                black_box(out)
            })
        });
        g.bench_function(format!("fast_path_map_validate_{name}"), |b| {
            b.iter(|| {
                let view = scan::spans(black_box(&body)).expect("fast path");
                let v = Validation {
                    now_ms,
                    prices: &prices,
                    keep_requests: None,
                };
                let out =
                    gatemeter::genai::spans_view(&view, Some("team.id"), Default::default(), &v);
                assert_eq!(out.events.len(), 100, "{:?}", out.rejected.first());
                black_box(out)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, otlp, genai);
criterion_main!(benches);
