//! The `--format otlp` mode of loadgen: `POST /v1/logs` with OTLP/HTTP protobuf bodies of
//! Claude Code `api_request` events (the attribute set of the real CLI's records), one event per
//! record of the batch. Template bodies are encoded once; each record's `request_id` is a
//! fixed-width string, so the counter is patched in place like the JSON templates'.
//!
//! The records carry `cost_usd_micros`, so the server's cost total is exactly what was sent.
//! They carry no `event.sequence`, so Claude Code event de-duplication is not exercised.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use super::{ConnStats, ID_DIGITS, POOL_RECORDS, POOL_TEMPLATES, Template};
use crate::cli::traffic::{Detail, Traffic};

fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn s(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.to_string())
}

fn i(v: u64) -> any_value::Value {
    any_value::Value::IntValue(v.min(i64::MAX as u64) as i64)
}

/// The template pool: `batch` api_request events per body.
pub(super) fn pool(batch: usize, run_id: u32) -> Vec<Template> {
    let count = (POOL_RECORDS / batch.max(1)).clamp(1, POOL_TEMPLATES);
    let mut traffic = Traffic::new(u64::from(run_id), "lg", Detail::Lean, 1.0);
    let marker = format!("lg-{run_id:08x}-");
    let placeholder = format!("{marker}{}", "0".repeat(ID_DIGITS));
    let now_ns = gatemeter::clock::now_ms().max(0) as u64 * 1_000_000;
    let resource = Resource {
        attributes: vec![
            kv("deployment.environment", s("loadgen")),
            kv("team.id", s("loadgen")),
            kv("host.arch", s("amd64")),
            kv("os.type", s("linux")),
            kv("service.name", s("claude-code")),
            kv("service.version", s("2.1.328")),
        ],
        ..Default::default()
    };
    (0..count)
        .map(|_| {
            let mut tokens = [0u64; 5];
            let mut cost_micros = 0;
            let records = (0..batch)
                .map(|_| {
                    let r = traffic.next_request().record;
                    let model = r
                        .fields
                        .get("model")
                        .and_then(|m| m.as_str())
                        .unwrap_or("claude-sonnet-4-5")
                        .to_string();
                    let [input, output, c5, c1, read] = r.tokens;
                    for (sum, n) in tokens.iter_mut().zip(r.tokens) {
                        *sum += n;
                    }
                    let cost = r.cost_micros.unwrap_or(0);
                    cost_micros += cost;
                    LogRecord {
                        time_unix_nano: now_ns,
                        observed_time_unix_nano: now_ns,
                        body: Some(AnyValue {
                            value: Some(s("claude_code.api_request")),
                        }),
                        attributes: vec![
                            kv("deployment.environment", s("loadgen")),
                            kv("team.id", s("loadgen")),
                            kv("user.id", s("a5d53f85830ced6fdb516c999ca5ba6ecebc4a87615762226c4563cbae3b9fcb")),
                            kv("session.id", s("4a702d95-bf6a-4e2f-a49a-0737445004ba")),
                            kv("anthropic.provider", s("firstParty")),
                            kv("terminal.type", s("dumb")),
                            kv("event.name", s("api_request")),
                            kv("event.timestamp", s("2026-11-23T18:30:49.672Z")),
                            kv("prompt.id", s("489ded67-7f8a-4455-ab32-9fa3e4fe16d1")),
                            kv("model", s(&model)),
                            kv("input_tokens", i(input)),
                            kv("output_tokens", i(output)),
                            kv("cache_read_tokens", i(read)),
                            kv("cache_creation_tokens", i(c5 + c1)),
                            kv("cache_creation_5m_tokens", i(c5)),
                            kv("cache_creation_1h_tokens", i(c1)),
                            kv("cost_usd", any_value::Value::DoubleValue(cost as f64 / 1e6)),
                            kv("cost_usd_micros", i(cost)),
                            kv("duration_ms", i(r.duration_ms)),
                            kv("ttft_ms", i(r.duration_ms / 2)),
                            kv("request_id", s(&placeholder)),
                            kv("speed", s("normal")),
                            kv("query_source", s("sdk")),
                            kv("effort", s("medium")),
                        ],
                        ..Default::default()
                    }
                })
                .collect();
            let body = ExportLogsServiceRequest {
                resource_logs: vec![ResourceLogs {
                    resource: Some(resource.clone()),
                    scope_logs: vec![ScopeLogs {
                        scope: Some(InstrumentationScope {
                            name: "com.anthropic.claude_code.events".into(),
                            version: "2.1.328".into(),
                            ..Default::default()
                        }),
                        log_records: records,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            }
            .encode_to_vec();
            // Every placeholder's digits, in record order.
            let needle = placeholder.as_bytes();
            let id_offsets = body
                .windows(needle.len())
                .enumerate()
                .filter(|(_, w)| *w == needle)
                .map(|(at, _)| at + marker.len())
                .collect();
            Template {
                body,
                id_offsets,
                tokens,
                cost_micros,
            }
        })
        .collect()
}

/// A `POST /v1/logs` protobuf request.
pub(super) fn logs_request(host: &HeaderValue, body: Bytes) -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = Uri::from_static("/v1/logs");
    let h = req.headers_mut();
    h.insert(header::HOST, host.clone());
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-protobuf"),
    );
    req
}

/// Books one OTLP answer: 200 is the whole batch unless `partial_success` says otherwise.
pub(super) fn tally(
    stats: &mut ConnStats,
    status: StatusCode,
    body: &[u8],
    t: &Template,
    batch: u64,
) {
    match status {
        StatusCode::OK => {
            let rejected = ExportLogsServiceResponse::decode(body)
                .ok()
                .and_then(|r| r.partial_success)
                .map_or(0, |p| p.rejected_log_records.max(0) as u64)
                .min(batch);
            stats.accepted += batch - rejected;
            stats.rejected += rejected;
            if rejected == 0 {
                for (sum, n) in stats.tokens.iter_mut().zip(t.tokens) {
                    *sum += n;
                }
                stats.cost_micros += t.cost_micros;
            } else {
                stats.partial += 1;
                stats.note_error(|| {
                    format!("HTTP 200 with {rejected} of {batch} log records rejected")
                });
            }
        }
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => stats.overloaded += 1,
        _ => {
            stats.errors += 1;
            stats.note_error(|| {
                format!(
                    "HTTP {}: {}",
                    status.as_u16(),
                    String::from_utf8_lossy(&body[..body.len().min(300)])
                )
            });
        }
    }
}
