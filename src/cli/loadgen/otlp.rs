//! The `--format otlp` mode of loadgen: `POST /v1/logs` with OTLP/HTTP protobuf bodies of
//! Claude Code `api_request` events (the attribute set of the real CLI's records), one event per
//! record of the batch. Template bodies are encoded once; each record's `request_id` is a
//! fixed-width string, so the counter is patched in place like the JSON templates'.
//!
//! The records carry `cost_usd_micros`, so the server's cost total is exactly what was sent.
//! They carry no `event.sequence`, so Claude Code event de-duplication is not exercised.

use bytes::Bytes;
use gatemeter::client;
use http_body_util::Full;
use hyper::header::HeaderValue;
use hyper::{Request, StatusCode};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use prost::Message;

use super::{ConnStats, ID_DIGITS, POOL_RECORDS, POOL_TEMPLATES, Template};
use crate::cli::traffic::claude_code::{ApiRequest, event, kv, logs_export, resource, s};
use crate::cli::traffic::{Detail, Traffic};

/// The template pool: `batch` api_request events per body.
pub(super) fn pool(batch: usize, run_id: u32) -> Vec<Template> {
    let count = (POOL_RECORDS / batch.max(1)).clamp(1, POOL_TEMPLATES);
    let mut traffic = Traffic::new(u64::from(run_id), "lg", Detail::Lean, 1.0);
    let marker = format!("lg-{run_id:08x}-");
    let placeholder = format!("{marker}{}", "0".repeat(ID_DIGITS));
    let now_ns = gatemeter::clock::now_ms().max(0) as u64 * 1_000_000;
    let session = [
        kv("deployment.environment", s("loadgen")),
        kv("team.id", s("loadgen")),
        kv(
            "user.id",
            s("a5d53f85830ced6fdb516c999ca5ba6ecebc4a87615762226c4563cbae3b9fcb"),
        ),
        kv("session.id", s("4a702d95-bf6a-4e2f-a49a-0737445004ba")),
        kv("anthropic.provider", s("firstParty")),
        kv("terminal.type", s("dumb")),
    ];
    let resource = resource(&session[..2]);
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
                    for (sum, n) in tokens.iter_mut().zip(r.tokens) {
                        *sum += n;
                    }
                    let cost = r.cost_micros.unwrap_or(0);
                    cost_micros += cost;
                    let attributes = ApiRequest {
                        prompt_id: "489ded67-7f8a-4455-ab32-9fa3e4fe16d1",
                        model: &model,
                        tokens: r.tokens,
                        cost_micros: cost,
                        duration_ms: r.duration_ms,
                        ttft_ms: r.duration_ms / 2,
                        request_id: &placeholder,
                    }
                    .attributes();
                    event("api_request", now_ns, &session, None, attributes)
                })
                .collect();
            let body = logs_export(vec![(resource.clone(), records)]).encode_to_vec();
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
    client::post_request(host, "/v1/logs", "application/x-protobuf", body)
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
