//! OpenTelemetry GenAI semantic conventions: what a GenAI client span becomes (SPEC §3.2).
//!
//! A span is a GenAI call when it carries `gen_ai.operation.name` (or OpenLLMetry's
//! `llm.request.type`) with an operation that calls a model — `chat`, `text_completion`,
//! `generate_content`, `embeddings` (and OpenLLMetry's `completion`, `embedding`, `rerank`).
//! Such a span becomes one request record, built as [`RecordFields`] and validated like every
//! other record:
//! - identity (`request_id`) `otel:<trace id>:<span id>` in hex: a retried export repeats it and
//!   the pipeline's de-duplication acknowledges it without counting it again; the trace and span
//!   ids are kept in the log (`trace_id`, `span_id`);
//! - time from the span's start, duration from start to end, time to first token from
//!   `gen_ai.response.time_to_first_chunk` / `gen_ai.server.time_to_first_token` (seconds);
//! - provider from `gen_ai.provider.name`, else the previous `gen_ai.system`; `api_type` from
//!   it ([`api_type`]); model from `gen_ai.response.model`, else `gen_ai.request.model` (the
//!   asked-for model kept as `original_model` when they differ);
//! - tokens from `gen_ai.usage.input_tokens` / `output_tokens`, else the previous
//!   `prompt_tokens` / `completion_tokens`; cache reads and writes from
//!   `gen_ai.usage.cache_read.input_tokens` / `cache_creation.input_tokens` / `cache_write.input_tokens` (and OpenLLMetry's
//!   `cache_read_input_tokens` / `cache_creation_input_tokens`). The conventions count cached
//!   tokens inside `input_tokens`; the record keeps them in their own buckets, so they are taken
//!   out of the input count (priced once, at their own rate);
//! - status: span status `ERROR` → `http.response.status_code` if present, else the status a
//!   numeric `error.type` or a known client error class names ([`error_status`]), else 0 (no
//!   answer); otherwise 200. `error` from `error.type`, else the status message;
//! - session from `gen_ai.conversation.id`, else `session.id`; user from `user.id`, else
//!   `enduser.id`; namespace from the configured attribute (span over resource); endpoint from
//!   `url.path`, else the operation's usual path ([`endpoint`]).
//!
//! Other spans are not records: agent and tool spans (`invoke_agent`, `execute_tool`, …) wrap
//! the calls that are, and any other span is counted unused under its instrumentation scope.
//!
//! Which signal is the record (the rule, also in the README): one per source (a resource's
//! `service.name`), by configuration, never by arrival order (real clients send events and
//! metrics before their spans). By default **spans**: GenAI metric points
//! (`gen_ai.client.token.usage`, `gen_ai.client.operation.duration`, …) and GenAI events
//! (`gen_ai.*` log records) describe the same calls again and are never added to the request
//! families: they are counted `covered` by the OTLP diagnostics. A source listed by
//! `service.name` in `otlp.genai_event_sources` (one that exports events but no spans) has its
//! [`DETAILS_EVENT`]s read as the records (same identity as the span's); one listed in
//! `otlp.genai_metric_sources` (metrics only) has its duration and token points read as records
//! ([`metrics`]); either way its call spans are counted `covered` ([`Listed`]). The
//! `gen_ai_client_*` families of `/metrics` are derived from the records.
//!
//! The traces receiver maps a borrowed view of the request ([`spans_view`]): read in place from
//! protobuf (`crate::otlp::scan::spans`), or taken from prost's decoding ([`spans`]).
//!
//! Pure mapping: no state, no clock (the caller's [`Validation`] carries `now`), counts nothing
//! ([`metrics::Streams`], the one state, is held by the caller).

use compact_str::CompactString;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;

use crate::health::otlp::{Reasons, count_reason};
use crate::otlp::decode::{Val, compact_text, f64_of, str_of, u64_of};
use crate::otlp::scan::{self, Kv, LogRef, ResourceSpansRef};
use crate::record::{Event, RecordError, RecordFields, RejectReason, Validation};

pub mod metrics;

/// What a traces request turned into.
#[derive(Debug, Default)]
pub struct SpansOutcome {
    /// Request records for the pipeline.
    pub events: Vec<Event>,
    /// Spans received.
    pub received: u64,
    /// GenAI spans that are not calls (agents, tools): understood, carried by the call spans.
    pub covered: u64,
    /// Spans gatemeter does not read, by instrumentation scope name (bounded).
    pub unused: Reasons,
    /// Rejected spans (index, error).
    pub rejected: Vec<(usize, RecordError)>,
}

/// The attributes a span mapping reads (span over resource).
#[derive(Default, Clone, Copy)]
struct Attrs<'a> {
    namespace: Option<Val<'a>>,
    operation: Option<Val<'a>>,
    llm_request_type: Option<Val<'a>>,
    provider: Option<Val<'a>>,
    system: Option<Val<'a>>,
    request_model: Option<Val<'a>>,
    response_model: Option<Val<'a>>,
    input_tokens: Option<Val<'a>>,
    output_tokens: Option<Val<'a>>,
    prompt_tokens: Option<Val<'a>>,
    completion_tokens: Option<Val<'a>>,
    cache_read: Option<Val<'a>>,
    cache_creation: Option<Val<'a>>,
    error_type: Option<Val<'a>>,
    http_status: Option<Val<'a>>,
    url_path: Option<Val<'a>>,
    conversation: Option<Val<'a>>,
    session: Option<Val<'a>>,
    user_id: Option<Val<'a>>,
    enduser_id: Option<Val<'a>>,
    ttft_s: Option<Val<'a>>,
    streaming: Option<Val<'a>>,
    response_id: Option<Val<'a>>,
}

impl<'a> Attrs<'a> {
    fn fill_from(&mut self, attrs: impl Iterator<Item = (&'a str, Val<'a>)>, ns_key: Option<&str>) {
        for (k, v) in attrs {
            if v == Val::Empty {
                continue;
            }
            if ns_key == Some(k) {
                self.namespace = Some(v);
            }
            let slot = match k {
                "gen_ai.operation.name" => &mut self.operation,
                "llm.request.type" => &mut self.llm_request_type,
                "gen_ai.provider.name" => &mut self.provider,
                "gen_ai.system" => &mut self.system,
                "gen_ai.request.model" => &mut self.request_model,
                "gen_ai.response.model" => &mut self.response_model,
                "gen_ai.usage.input_tokens" => &mut self.input_tokens,
                "gen_ai.usage.output_tokens" => &mut self.output_tokens,
                "gen_ai.usage.prompt_tokens" => &mut self.prompt_tokens,
                "gen_ai.usage.completion_tokens" => &mut self.completion_tokens,
                "gen_ai.usage.cache_read.input_tokens" | "gen_ai.usage.cache_read_input_tokens" => {
                    &mut self.cache_read
                }
                "gen_ai.usage.cache_creation.input_tokens"
                | "gen_ai.usage.cache_write.input_tokens"
                | "gen_ai.usage.cache_creation_input_tokens" => &mut self.cache_creation,
                "error.type" => &mut self.error_type,
                "http.response.status_code" => &mut self.http_status,
                "url.path" => &mut self.url_path,
                "gen_ai.conversation.id" => &mut self.conversation,
                "session.id" => &mut self.session,
                "user.id" => &mut self.user_id,
                "enduser.id" => &mut self.enduser_id,
                "gen_ai.response.time_to_first_chunk" | "gen_ai.server.time_to_first_token" => {
                    &mut self.ttft_s
                }
                "gen_ai.request.stream" | "gen_ai.is_streaming" | "llm.is_streaming" => {
                    &mut self.streaming
                }
                "gen_ai.response.id" => &mut self.response_id,
                _ => continue,
            };
            *slot = Some(v);
        }
    }
}

/// What a span's operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    /// A model call: a record.
    Call(&'static str),
    /// A GenAI span that is not a model call (agent, tool, workflow).
    Other,
}

fn operation(a: &Attrs<'_>) -> Option<Operation> {
    let op = a
        .operation
        .and_then(str_of)
        .or_else(|| a.llm_request_type.and_then(str_of))?;
    Some(match op {
        "chat" => Operation::Call("chat"),
        "text_completion" | "completion" => Operation::Call("text_completion"),
        "generate_content" => Operation::Call("generate_content"),
        "embeddings" | "embedding" => Operation::Call("embeddings"),
        "rerank" => Operation::Call("rerank"),
        _ => Operation::Other,
    })
}

/// The record's API family for a GenAI provider name (`gen_ai.provider.name` values, and the
/// previous `gen_ai.system` ones).
pub fn api_type(provider: &str) -> &'static str {
    match provider {
        "openai" | "azure.ai.openai" | "az.ai.openai" => "openai",
        "anthropic" => "claude",
        "gcp.gemini" | "gcp.vertex_ai" | "gcp.gen_ai" | "gemini" | "google" | "vertex_ai" => {
            "gemini"
        }
        _ => "other",
    }
}

/// The path a call of `op` usually goes to, when the span has no `url.path` (it also names the
/// operation for the `gen_ai_*` families: [`crate::record::genai_operation`]).
pub fn endpoint(op: &str, api_type: &str) -> &'static str {
    match (op, api_type) {
        ("chat", "claude") => "/v1/messages",
        ("chat", "gemini") | ("generate_content", _) => "/v1beta/models:generateContent",
        ("chat", _) => "/v1/chat/completions",
        ("text_completion", _) => "/v1/completions",
        ("embeddings", _) => "/v1/embeddings",
        ("rerank", _) => "/v1/rerank",
        _ => "/",
    }
}

/// The HTTP status an `error.type` names: a number, or a known client error class (OpenAI's
/// and Anthropic's Python and JS SDKs; also as Python prints a class, `<class 'openai.X'>`,
/// which opentelemetry-instrumentation-openai-v2 2.4b0 sends); `None` for anything else.
pub fn error_status(error_type: &str) -> Option<u16> {
    if let Ok(n) = error_type.parse::<u16>()
        && (100..1000).contains(&n)
    {
        return Some(n);
    }
    let bare = error_type
        .strip_prefix("<class '")
        .and_then(|t| t.strip_suffix("'>"))
        .unwrap_or(error_type);
    let class = bare.rsplit(['.', ':']).next().unwrap_or(bare);
    Some(match class {
        "BadRequestError" => 400,
        "AuthenticationError" => 401,
        "PermissionDeniedError" => 403,
        "NotFoundError" => 404,
        "ConflictError" => 409,
        "UnprocessableEntityError" => 422,
        "RateLimitError" => 429,
        "InternalServerError" => 500,
        "OverloadedError" => 529,
        "APIConnectionError" | "APITimeoutError" | "timeout" => 0,
        _ => return None,
    })
}

/// The status in an SDK's error message (`Error code: 429 - …`, the OpenAI and Anthropic SDKs'
/// form, which they also put in the span's status message).
fn message_status(message: &str) -> Option<u16> {
    let rest = message.split("Error code: ").nth(1)?;
    let digits = rest.get(..3)?;
    digits
        .parse::<u16>()
        .ok()
        .filter(|n| (100..1000).contains(n))
}

/// Lower-case hex of an id (`None` when empty or all zero, OTLP's "no id").
pub fn hex_id(id: &[u8]) -> Option<CompactString> {
    if id.iter().all(|b| *b == 0) {
        return None;
    }
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    // Written into a stack buffer and copied once: a `push` per digit was a fifth of the
    // traces fast path's time (perf, issue 21).
    let mut buf = [0u8; 64];
    let Some(out) = buf.get_mut(..id.len() * 2) else {
        let mut s = CompactString::with_capacity(id.len() * 2);
        for b in id {
            s.push(DIGITS[(b >> 4) as usize] as char);
            s.push(DIGITS[(b & 15) as usize] as char);
        }
        return Some(s);
    };
    for (pair, b) in out.chunks_exact_mut(2).zip(id) {
        pair[0] = DIGITS[(b >> 4) as usize];
        pair[1] = DIGITS[(b & 15) as usize];
    }
    std::str::from_utf8(out).ok().map(CompactString::from)
}

fn attr_err(field: &str, message: String) -> RecordError {
    RecordError {
        field: format!("attributes.{field}"),
        message,
        reason: RejectReason::WrongType,
    }
}

fn opt_u64(v: Option<Val<'_>>, field: &str) -> Result<Option<u64>, RecordError> {
    v.map(|v| u64_of(v).map_err(|m| attr_err(field, m)))
        .transpose()
}

fn text(v: Option<Val<'_>>) -> Option<CompactString> {
    v.and_then(compact_text)
}

/// The one call the mapping reads, from a span or an event: ids, times, status.
struct Call<'a> {
    trace_id: &'a [u8],
    span_id: &'a [u8],
    start_ns: u64,
    end_ns: u64,
    /// Status code (`StatusCode` as i32) and message.
    status: (i32, &'a str),
}

/// The GenAI event that describes one whole call (semantic conventions 1.37+), read as the
/// record for the sources listed in `otlp.genai_event_sources`.
pub const DETAILS_EVENT: &str = "gen_ai.client.inference.operation.details";

/// Whether a source (a resource, by `service.name`) is listed as one whose GenAI records come
/// from its [`DETAILS_EVENT`]s instead of its spans.
pub fn is_event_source(service_name: Option<&str>, event_sources: &[String]) -> bool {
    service_name.is_some_and(|n| event_sources.iter().any(|s| s == n))
}

/// The sources (by `service.name`) whose GenAI records do not come from their spans:
/// `otlp.genai_event_sources` (their [`DETAILS_EVENT`]s) and `otlp.genai_metric_sources`
/// (their metric points, [`metrics`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Listed<'a> {
    /// Sources whose details events are the records.
    pub events: &'a [String],
    /// Sources whose `gen_ai.client.*` metric points are the records.
    pub metrics: &'a [String],
}

impl Listed<'_> {
    /// Whether the call spans of `service_name` are `covered` rather than records.
    pub fn not_spans(&self, service_name: Option<&str>) -> bool {
        is_event_source(service_name, self.events) || is_event_source(service_name, self.metrics)
    }
}

/// A [`DETAILS_EVENT`] as a record (its source listed in `otlp.genai_event_sources`): read
/// like a span (same attributes, same `otel:<trace>:<span>` identity from the log record's span
/// context), at the event's time; the event has no start and end, so the duration is 0.
/// `None` when the event names no model call.
pub fn event_record(
    resource: &[Kv<'_>],
    r: &LogRef<'_>,
    namespace_attribute: Option<&str>,
    v: &Validation<'_>,
) -> Option<Result<Box<crate::record::ValidRecord>, RecordError>> {
    let mut a = Attrs::default();
    a.fill_from(
        resource.iter().map(|kv| (kv.key, kv.val)),
        namespace_attribute,
    );
    a.fill_from(
        r.attrs.iter().map(|kv| (kv.key, kv.val)),
        namespace_attribute,
    );
    let Some(Operation::Call(op)) = operation(&a) else {
        return None;
    };
    let t = if r.time_ns != 0 {
        r.time_ns
    } else {
        r.observed_ns
    };
    let s = Call {
        trace_id: r.trace_id,
        span_id: r.span_id,
        start_ns: t,
        end_ns: t,
        status: (0, ""),
    };
    Some(record(&a, op, &s).and_then(|f| f.validate(v)))
}

/// The `service.name` of a resource.
fn service_name<'a>(attrs: &[Kv<'a>]) -> Option<&'a str> {
    attrs
        .iter()
        .find(|kv| kv.key == "service.name")
        .and_then(|kv| str_of(kv.val))
}

/// Maps a decoded traces request (through its view, [`spans_view`]).
pub fn spans(
    req: &ExportTraceServiceRequest,
    namespace_attribute: Option<&str>,
    listed: Listed<'_>,
    v: &Validation<'_>,
) -> SpansOutcome {
    spans_view(&scan::spans_view(req), namespace_attribute, listed, v)
}

/// Maps a traces request's view (decoded, or read in place by [`scan::spans`]);
/// `namespace_attribute` names the namespace attribute; the call spans of the `listed` sources
/// are `covered` (their events or metric points are the records).
pub fn spans_view(
    resources: &[ResourceSpansRef<'_>],
    namespace_attribute: Option<&str>,
    listed: Listed<'_>,
    v: &Validation<'_>,
) -> SpansOutcome {
    let mut out = SpansOutcome::default();
    let mut index = 0usize;
    for rs in resources {
        let mut base = Attrs::default();
        base.fill_from(
            rs.resource.iter().map(|kv| (kv.key, kv.val)),
            namespace_attribute,
        );
        let from_events = listed.not_spans(service_name(&rs.resource));
        for ss in &rs.scopes {
            out.events.reserve(ss.spans.len());
            for span in &ss.spans {
                out.received += 1;
                let i = index;
                index += 1;
                let mut a = base;
                a.fill_from(
                    span.attrs.iter().map(|kv| (kv.key, kv.val)),
                    namespace_attribute,
                );
                match operation(&a) {
                    None => count_reason(&mut out.unused, ss.scope, 1),
                    Some(Operation::Other) => out.covered += 1,
                    Some(Operation::Call(_)) if from_events => out.covered += 1,
                    Some(Operation::Call(op)) => {
                        let s = Call {
                            trace_id: span.trace_id,
                            span_id: span.span_id,
                            start_ns: span.start_ns,
                            end_ns: span.end_ns,
                            status: (span.status_code, span.status_message),
                        };
                        match record(&a, op, &s).and_then(|f| f.validate(v)) {
                            Ok(r) => out.events.push(Event::Finish(r)),
                            Err(e) => out.rejected.push((i, e)),
                        }
                    }
                }
            }
        }
    }
    out
}

fn record(a: &Attrs<'_>, op: &'static str, s: &Call<'_>) -> Result<RecordFields, RecordError> {
    let trace_id = hex_id(s.trace_id);
    let span_id = hex_id(s.span_id);
    let request_id = match (&trace_id, &span_id) {
        (Some(t), Some(sp)) => {
            let mut id = CompactString::with_capacity(6 + t.len() + sp.len());
            for part in ["otel:", t, ":", sp] {
                id.push_str(part);
            }
            Some(id)
        }
        _ => None,
    };
    let provider = text(a.provider).or_else(|| text(a.system));
    let api = api_type(provider.as_deref().unwrap_or(""));
    let asked = text(a.request_model);
    let model = text(a.response_model).or_else(|| asked.clone());
    let original_model = asked.filter(|m| Some(m) != model.as_ref());
    let user_id = text(a.user_id).or_else(|| text(a.enduser_id));
    let error = s.status.0 == StatusCode::Error as i32;
    let error_type = text(a.error_type);
    let status = if error || error_type.is_some() {
        a.http_status
            .and_then(|s| u64_of(s).ok())
            .and_then(|n| u16::try_from(n).ok())
            .or_else(|| message_status(s.status.1))
            .or_else(|| error_type.as_deref().and_then(error_status))
            .unwrap_or(0)
    } else {
        200
    };
    let error_text = if status == 200 {
        None
    } else {
        error_type.or_else(|| (!s.status.1.is_empty()).then(|| CompactString::from(s.status.1)))
    };
    let duration_ms = s.end_ns.saturating_sub(s.start_ns) / 1_000_000;
    let ttfb_ms = match a.ttft_s {
        Some(t) => {
            let secs = f64_of(t).map_err(|m| attr_err("gen_ai.response.time_to_first_chunk", m))?;
            (secs.is_finite() && secs >= 0.0).then(|| (secs * 1000.0).round() as u64)
        }
        None => None,
    };
    let input = match opt_u64(a.input_tokens, "gen_ai.usage.input_tokens")? {
        Some(n) => Some(n),
        None => opt_u64(a.prompt_tokens, "gen_ai.usage.prompt_tokens")?,
    };
    let output = match opt_u64(a.output_tokens, "gen_ai.usage.output_tokens")? {
        Some(n) => Some(n),
        None => opt_u64(a.completion_tokens, "gen_ai.usage.completion_tokens")?,
    };
    let cache_read = opt_u64(a.cache_read, "gen_ai.usage.cache_read.input_tokens")?;
    let cache_write = opt_u64(a.cache_creation, "gen_ai.usage.cache_creation.input_tokens")?;
    // Cached tokens are counted inside input_tokens by the conventions; the record's buckets
    // are disjoint.
    let input = input.map(|n| {
        n.saturating_sub(cache_read.unwrap_or(0))
            .saturating_sub(cache_write.unwrap_or(0))
    });
    let endpoint = text(a.url_path).unwrap_or_else(|| CompactString::const_new(endpoint(op, api)));
    Ok(RecordFields {
        request_id,
        timestamp_ms: (s.start_ns != 0).then_some((s.start_ns / 1_000_000) as i64),
        namespace: text(a.namespace),
        user: user_id.clone(),
        user_id,
        provider,
        model,
        original_model,
        endpoint: Some(endpoint),
        api_type: Some(CompactString::const_new(api)),
        method: Some(CompactString::const_new("POST")),
        status: Some(status),
        duration_ms: Some(duration_ms as f64),
        ttfb_ms: ttfb_ms.map(|t| t as f64),
        input_tokens: input,
        output_tokens: output,
        cache_creation_5m_tokens: cache_write,
        cache_read_tokens: cache_read,
        session_id: text(a.conversation).or_else(|| text(a.session)),
        is_streaming: a
            .streaming
            .and_then(|s| crate::otlp::decode::bool_of(s).ok()),
        error: error_text,
        trace_id,
        span_id,
        ..RecordFields::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::ApiType;

    const NOW_MS: i64 = 1_795_460_000_000;

    fn attr(k: &str, v: &str) -> String {
        format!(r#"{{"key":"{k}","value":{v}}}"#)
    }

    fn s(v: &str) -> String {
        format!(r#"{{"stringValue":"{v}"}}"#)
    }

    fn int(v: u64) -> String {
        format!(r#"{{"intValue":"{v}"}}"#)
    }

    /// One span (OTLP/JSON) with `attrs`, status `code`, resource `team.id` = `t`.
    fn one(attrs: &[String], code: u8) -> SpansOutcome {
        let start = NOW_MS as u128 * 1_000_000 - 2_000_000_000;
        let end = start + 1_234_000_000;
        let json = format!(
            r#"{{"resourceSpans":[{{"resource":{{"attributes":[{}]}},"scopeSpans":[{{"scope":{{"name":"opentelemetry.instrumentation.openai_v2"}},"spans":[{{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"chat gpt-4o","kind":3,"startTimeUnixNano":"{start}","endTimeUnixNano":"{end}","attributes":[{}],"status":{{"code":{code}}}}}]}}]}}]}}"#,
            attr("team.id", &s("t")),
            attrs.join(",")
        );
        let req: ExportTraceServiceRequest =
            crate::otlp::decode::message(json.as_bytes(), crate::otlp::decode::Encoding::Json)
                .expect("json");
        let prices = crate::price::PriceTable::default();
        let v = Validation {
            now_ms: NOW_MS,
            prices: &prices,
            keep_requests: None,
        };
        spans(&req, Some("team.id"), Listed::default(), &v)
    }

    fn record_of(out: SpansOutcome) -> Box<crate::record::ValidRecord> {
        assert!(out.rejected.is_empty(), "{:?}", out.rejected);
        match out.events.into_iter().next() {
            Some(Event::Finish(r)) => r,
            other => panic!("no record: {other:?}"),
        }
    }

    #[test]
    fn a_chat_span_with_current_names_is_a_record() {
        let r = record_of(one(
            &[
                attr("gen_ai.operation.name", &s("chat")),
                attr("gen_ai.provider.name", &s("openai")),
                attr("gen_ai.request.model", &s("gpt-4o")),
                attr("gen_ai.response.model", &s("gpt-4o-2024-08-06")),
                attr("gen_ai.usage.input_tokens", &int(120)),
                attr("gen_ai.usage.output_tokens", &int(30)),
                attr("gen_ai.usage.cache_read.input_tokens", &int(20)),
                attr("gen_ai.conversation.id", &s("conv-1")),
                attr("user.id", &s("alice")),
                attr(
                    "gen_ai.response.time_to_first_chunk",
                    r#"{"doubleValue":0.25}"#,
                ),
            ],
            1,
        ));
        assert_eq!(r.provider, "openai");
        assert_eq!(r.api_type, ApiType::Openai);
        assert_eq!(r.model, "gpt-4o-2024-08-06");
        assert_eq!(r.original_model.as_deref(), Some("gpt-4o"));
        assert_eq!(r.endpoint, "/v1/chat/completions");
        assert_eq!(r.namespace, "t");
        assert_eq!(r.status, 200);
        assert_eq!(r.duration_ms, crate::record::Millis::from_ms(1234));
        assert_eq!(r.ttfb_ms, Some(crate::record::Millis::from_ms(250)));
        assert_eq!(
            (r.tokens.input, r.tokens.output, r.tokens.cache_read),
            (100, 30, 20),
            "cache reads are taken out of input_tokens"
        );
        assert_eq!(r.session_id.as_deref(), Some("conv-1"));
        assert_eq!(r.user_id.as_deref(), Some("alice"));
        assert_eq!(
            r.trace_id.as_deref(),
            Some("5b8efff798038103d269b633813fc60c")
        );
        assert_eq!(r.span_id.as_deref(), Some("eee19b7ec3c1b174"));
        assert_eq!(
            r.request_id.as_ref().map(|i| i.as_str()),
            Some("otel:5b8efff798038103d269b633813fc60c:eee19b7ec3c1b174")
        );
        assert_eq!(r.timestamp_ms, NOW_MS - 2000);
    }

    #[test]
    fn previous_attribute_names_are_read() {
        let r = record_of(one(
            &[
                attr("llm.request.type", &s("completion")),
                attr("gen_ai.system", &s("anthropic")),
                attr("gen_ai.request.model", &s("claude-3-5-haiku")),
                attr("gen_ai.usage.prompt_tokens", &int(7)),
                attr("gen_ai.usage.completion_tokens", &int(9)),
                attr("session.id", &s("s-9")),
                attr("enduser.id", &s("bob")),
            ],
            0,
        ));
        assert_eq!(r.provider, "anthropic");
        assert_eq!(r.api_type, ApiType::Claude);
        assert_eq!(r.model, "claude-3-5-haiku");
        assert_eq!(r.original_model, None);
        assert_eq!(r.endpoint, "/v1/completions");
        assert_eq!((r.tokens.input, r.tokens.output), (7, 9));
        assert_eq!(r.session_id.as_deref(), Some("s-9"));
        assert_eq!(r.user.as_deref(), Some("bob"));
    }

    #[test]
    fn error_spans_take_their_status_from_the_error_type() {
        for (error_type, status) in [
            ("openai.RateLimitError", 429),
            ("<class 'openai.InternalServerError'>", 500),
            ("InternalServerError", 500),
            ("503", 503),
            ("APIConnectionError", 0),
            ("SomethingElse", 0),
        ] {
            let r = record_of(one(
                &[
                    attr("gen_ai.operation.name", &s("chat")),
                    attr("gen_ai.system", &s("openai")),
                    attr("gen_ai.request.model", &s("gpt-4o")),
                    attr("error.type", &s(error_type)),
                ],
                2,
            ));
            assert_eq!(r.status, status, "{error_type}");
            assert!(!r.is_success());
            assert_eq!(r.error.as_deref(), Some(error_type));
        }
    }

    #[test]
    fn ids_are_lower_case_hex_and_zero_is_none() {
        assert_eq!(hex_id(&[0xab, 0x01, 0xf0]).as_deref(), Some("ab01f0"));
        assert_eq!(hex_id(&[0; 16]), None);
        assert_eq!(hex_id(&[]), None);
        let long: Vec<u8> = (0..40u8).collect();
        let want: String = long.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex_id(&long).as_deref(), Some(want.as_str()));
    }

    #[test]
    fn the_sdk_error_message_gives_the_status() {
        assert_eq!(message_status("Error code: 429 - {'error': …}"), Some(429));
        assert_eq!(message_status("Error code: 5"), None);
        assert_eq!(message_status("Connection error."), None);
    }

    #[test]
    fn agent_tool_and_foreign_spans_are_not_records() {
        let out = one(&[attr("gen_ai.operation.name", &s("execute_tool"))], 0);
        assert_eq!((out.events.len(), out.covered), (0, 1));
        let out = one(&[attr("http.request.method", &s("GET"))], 0);
        assert!(out.events.is_empty());
        assert_eq!(
            out.unused,
            vec![("opentelemetry.instrumentation.openai_v2".into(), 1)]
        );
    }

    #[test]
    fn the_fast_path_gives_the_records_prost_gives() {
        // Every GenAI trace capture and a generated corpus, mapped from the borrowed scan
        // (what the server does for protobuf) and from prost's decoding: the same records,
        // rejections and counts.
        use prost::Message;
        let prices = crate::price::PriceTable::default();
        let now_ms = crate::clock::now_ms();
        let v = Validation {
            now_ms,
            prices: &prices,
            keep_requests: None,
        };
        let mut bodies = scan::testdata::captures();
        let corpus = scan::testdata::corpus(200, now_ms as u64 * 1_000_000);
        bodies.extend(corpus.into_iter().map(|b| ("corpus".to_string(), b)));
        let (mut records, mut rejected) = (0, 0);
        for (name, body) in bodies {
            let req = ExportTraceServiceRequest::decode(&body[..]).expect("prost");
            let fast = scan::spans(&body).expect("the fast path takes it");
            let chat_app = ["chat-app".to_string()];
            let listing = [
                Listed::default(),
                Listed {
                    events: &chat_app,
                    metrics: &[],
                },
            ];
            for listed in listing {
                let slow = spans(&req, Some("team.id"), listed, &v);
                let quick = spans_view(&fast, Some("team.id"), listed, &v);
                assert_eq!(format!("{quick:?}"), format!("{slow:?}"), "{name}");
                records += quick.events.len();
                rejected += quick.rejected.len();
            }
        }
        assert!(
            records > 500 && rejected > 100,
            "{records} records, {rejected} rejected"
        );
    }

    #[test]
    fn a_span_without_a_model_is_rejected_naming_the_field() {
        let out = one(
            &[
                attr("gen_ai.operation.name", &s("chat")),
                attr("gen_ai.usage.input_tokens", &s("many")),
            ],
            0,
        );
        assert_eq!(out.rejected.len(), 1);
        assert_eq!(
            out.rejected[0].1.field,
            "attributes.gen_ai.usage.input_tokens"
        );
        let out = one(&[attr("gen_ai.operation.name", &s("chat"))], 0);
        assert_eq!(out.rejected[0].1.field, "model");
    }
}
