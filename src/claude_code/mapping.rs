//! What OTLP items become.
//!
//! Log records (by `event.name`, else the body `claude_code.<name>`):
//! - `api_request` / `api_error` → a request record, built as [`RecordFields`] and validated like
//!   a native record: user from `user.email` else `user.id`, session from `session.id`,
//!   namespace from the configured attribute, provider `anthropic`, endpoint `/v1/messages`, cost
//!   from `cost_usd_micros` (else `cost_usd`), cache creation split into 5 m / 1 h buckets;
//! - `api_request_body` (raw bodies, `OTEL_LOG_RAW_API_BODIES=1`) → the `request` object of the
//!   next `api_request` / `api_error` of its session in the same export, kept only with
//!   `log_store.store_requests` and redacted at validation (`request_bodies`);
//! - `tool_result` / `tool_decision` → tool events; every Claude Code event is counted by name;
//!   events and tools are identified by session, sequence number, name and time (a retried
//!   export is not counted twice; a resumed session's restarted sequence is counted);
//! - `gatemeter.request` → a request record exported by another gatemeter (edge → central), read
//!   back by [`crate::otlp::gatemeter`].
//!
//! Metric data points of the known Claude Code metrics (monotonic Sums) → points for the Claude
//! Code state, with labels from the point's attributes minus the deny-list (session, user and
//! account ids) unless allow-listed. Points are bounded like native records
//! ([`max_increment`], from `record::MAX_*`) and refused when dated more than
//! [`MAX_POINT_FUTURE_MS`] after receipt, each refusal counted by [`ItemReject`] reason.
//!
//! It maps and validates; it holds no state ([`super::state`] does), counts nothing (the
//! receiver does) and reads no clock (the caller's [`Validation`] carries `now`).

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

use compact_str::{CompactString, ToCompactString};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point};

use crate::catalog;
use crate::claude_code::state::{Input, Labels, Point, Temporality, ToolEvent};
use crate::genai;
use crate::health::otlp::{ItemReject, Reasons, count_reason};
use crate::otlp::decode::{
    Val, bool_of, compact_text, f64_of, hash_value, point_count, str_of, text_of, u64_of,
};
use crate::otlp::scan::{Kv, LogRef, ResourceLogsRef};
use crate::record::{
    Event, MAX_COST_USD, MAX_DURATION_MS, MAX_TOKENS, RecordError, RecordFields, Validation,
};

/// Attributes that are never labels unless allow-listed (besides every `user.*`).
pub const DENIED_LABELS: &[&str] = &[
    "session.id",
    "organization.id",
    "prompt.id",
    "tool_use_id",
    "request_id",
    "event.sequence",
    "event.timestamp",
];

/// Longest label value kept; longer values are cut.
const MAX_LABEL_VALUE: usize = 128;

/// Event name of request records exported by gatemeter.
pub use crate::record::fields::GATEMETER_EVENT;

/// How items are mapped (from the `otlp:` config).
#[derive(Debug, Clone, Default)]
pub struct Mapping {
    /// Attribute whose value is the record's namespace (e.g. `team.id`).
    pub namespace_attribute: Option<String>,
    /// Attributes kept as labels although denied by default.
    pub label_allowlist: Vec<String>,
    /// Sources (`service.name`) whose GenAI records are their
    /// `gen_ai.client.inference.operation.details` events instead of their spans.
    pub genai_event_sources: Vec<String>,
    /// Sources (`service.name`) whose GenAI records are their `gen_ai.client.*` metric points
    /// (`crate::genai::metrics`) instead of their spans.
    pub genai_metric_sources: Vec<String>,
}

/// What a logs request turned into.
#[derive(Debug, Default)]
pub struct LogsOutcome {
    /// Request records for the pipeline.
    pub events: Vec<Event>,
    /// Tool events and event counts for the Claude Code task.
    pub inputs: Vec<Input>,
    /// Log records received.
    pub received: u64,
    /// Records that became tool events.
    pub tools: u64,
    /// Other Claude Code events.
    pub other_events: u64,
    /// GenAI events (`gen_ai.*`): their calls are counted from the spans.
    pub covered: u64,
    /// Log records gatemeter does not read, by event name (bounded).
    pub unused: Reasons,
    /// Rejected records, with the first few errors (index, error).
    pub rejected: Vec<(usize, RecordError)>,
}

/// What a metrics request turned into.
#[derive(Debug, Default)]
pub struct MetricsOutcome {
    /// Points for the Claude Code task.
    pub inputs: Vec<Input>,
    /// Data points received (of every type).
    pub received: u64,
    /// GenAI metric points (`gen_ai.*`): their calls are counted from the spans.
    pub covered: u64,
    /// Points gatemeter does not read, by instrumentation scope name (bounded).
    pub unused: Reasons,
    /// Rejected points, by reason (indexed by [`ItemReject`]).
    pub rejected: [u64; ItemReject::ALL.len()],
    /// The first rejection message of each reason.
    pub first_error: [Option<String>; ItemReject::ALL.len()],
}

impl MetricsOutcome {
    /// Points rejected for any reason.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().sum()
    }

    fn reject(&mut self, reason: ItemReject, n: u64, message: impl FnOnce() -> String) {
        self.rejected[reason as usize] += n;
        self.first_error[reason as usize].get_or_insert_with(message);
    }

    /// Counts `n` points refused for `reason` (elsewhere than in the mapping), `message`
    /// listed if it is the reason's first.
    pub fn reject_with(&mut self, reason: ItemReject, n: u64, message: String) {
        self.reject(reason, n, || message);
    }
}

pub use crate::otlp::MAX_POINT_FUTURE_MS;

/// Largest cumulative value a point may carry: beyond 2^53 a double no longer holds every
/// integer, and a running total could no longer be told apart from its neighbours.
pub const MAX_CUMULATIVE: f64 = 9_007_199_254_740_992.0;

/// A point's value for a message: huge ones in exponent form (`1e308`, not 309 digits).
fn number(v: f64) -> String {
    if v.abs() >= 1e15 {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

/// Largest increment one point may add: the bounds of one native record (`record.rs`) — cost in
/// USD at most [`MAX_COST_USD`], active time in seconds at most [`MAX_DURATION_MS`] / 1000,
/// tokens and every other count at most [`MAX_TOKENS`].
pub fn max_increment(metric: &str, money: bool) -> f64 {
    if money {
        MAX_COST_USD
    } else if metric == "claude_code.active_time.total" {
        (MAX_DURATION_MS / 1000) as f64
    } else {
        MAX_TOKENS as f64
    }
}

/// The attributes a log record mapping reads, found in one pass (record over resource).
#[derive(Default, Clone, Copy)]
struct Attrs<'a> {
    event_name: Option<Val<'a>>,
    namespace: Option<Val<'a>>,
    user_email: Option<Val<'a>>,
    user_id: Option<Val<'a>>,
    session_id: Option<Val<'a>>,
    sequence: Option<Val<'a>>,
    model: Option<Val<'a>>,
    input_tokens: Option<Val<'a>>,
    output_tokens: Option<Val<'a>>,
    cache_read: Option<Val<'a>>,
    cache_creation: Option<Val<'a>>,
    cache_5m: Option<Val<'a>>,
    cache_1h: Option<Val<'a>>,
    cost_usd: Option<Val<'a>>,
    cost_micros: Option<Val<'a>>,
    duration_ms: Option<Val<'a>>,
    ttft_ms: Option<Val<'a>>,
    request_id: Option<Val<'a>>,
    status_code: Option<Val<'a>>,
    error: Option<Val<'a>>,
    attempt: Option<Val<'a>>,
    tool_name: Option<Val<'a>>,
    success: Option<Val<'a>>,
    decision: Option<Val<'a>>,
    source: Option<Val<'a>>,
    tool_use_id: Option<Val<'a>>,
    raw_body: Option<Val<'a>>,
}

impl<'a> Attrs<'a> {
    fn fill(&mut self, attrs: &[Kv<'a>], ns_key: Option<&str>) {
        for kv in attrs {
            let v = kv.val;
            if v == Val::Empty {
                continue;
            }
            let k = kv.key;
            if ns_key == Some(k) {
                self.namespace = Some(v);
            }
            let slot = match k {
                "event.name" => &mut self.event_name,
                "user.email" => &mut self.user_email,
                "user.id" => &mut self.user_id,
                "session.id" => &mut self.session_id,
                "event.sequence" => &mut self.sequence,
                "model" | "gen_ai.response.model" => &mut self.model,
                "input_tokens" | "gen_ai.usage.input_tokens" => &mut self.input_tokens,
                "output_tokens" | "gen_ai.usage.output_tokens" => &mut self.output_tokens,
                "cache_read_tokens" | "gen_ai.usage.cache_read.input_tokens" => {
                    &mut self.cache_read
                }
                "cache_creation_tokens" => &mut self.cache_creation,
                "cache_creation_5m_tokens" => &mut self.cache_5m,
                "cache_creation_1h_tokens" => &mut self.cache_1h,
                "cost_usd" => &mut self.cost_usd,
                "cost_usd_micros" => &mut self.cost_micros,
                "duration_ms" => &mut self.duration_ms,
                "ttft_ms" => &mut self.ttft_ms,
                "request_id" => &mut self.request_id,
                "status_code" | "http.response.status_code" => &mut self.status_code,
                "error" => &mut self.error,
                "attempt" => &mut self.attempt,
                "tool_name" | "function_name" => &mut self.tool_name,
                "success" => &mut self.success,
                "decision" => &mut self.decision,
                "source" => &mut self.source,
                "tool_use_id" => &mut self.tool_use_id,
                "body" => &mut self.raw_body,
                _ => continue,
            };
            *slot = Some(v);
        }
    }
}

fn attr_err(field: &str, message: String) -> RecordError {
    RecordError {
        field: format!("attributes.{field}"),
        message,
        reason: crate::record::RejectReason::WrongType,
    }
}

fn opt_u64(v: Option<Val<'_>>, field: &str) -> Result<Option<u64>, RecordError> {
    v.map(|v| u64_of(v).map_err(|m| attr_err(field, m)))
        .transpose()
}

fn opt_f64(v: Option<Val<'_>>, field: &str) -> Result<Option<f64>, RecordError> {
    v.map(|v| f64_of(v).map_err(|m| attr_err(field, m)))
        .transpose()
}

fn opt_u32(v: Option<Val<'_>>, field: &str) -> Result<Option<u32>, RecordError> {
    opt_u64(v, field)?
        .map(|n| u32::try_from(n).map_err(|_| attr_err(field, format!("{n} is too large"))))
        .transpose()
}

fn opt_text(v: Option<Val<'_>>) -> Option<CompactString> {
    v.and_then(compact_text)
}

fn time_ms(r: &LogRef<'_>) -> Option<i64> {
    let ns = event_time_ns(r);
    (ns != 0).then_some((ns / 1_000_000) as i64)
}

impl Mapping {
    /// Maps a decoded logs request. `v` validates the records.
    pub fn logs(&self, req: &ExportLogsServiceRequest, v: &Validation<'_>) -> LogsOutcome {
        self.logs_view(&crate::otlp::scan::view(req), v)
    }

    /// Maps a logs request's view (decoded or read in place). `v` validates the records.
    pub fn logs_view(&self, resources: &[ResourceLogsRef<'_>], v: &Validation<'_>) -> LogsOutcome {
        let mut out = LogsOutcome::default();
        let ns_key = self.namespace_attribute.as_deref();
        let mut bodies = match v.keep_requests {
            Some(_) => request_bodies(resources, ns_key),
            None => HashMap::new(),
        };
        let mut index = 0usize;
        for rl in resources {
            let mut base = Attrs::default();
            base.fill(&rl.resource, ns_key);
            let service_name = rl
                .resource
                .iter()
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| str_of(kv.val));
            {
                out.events.reserve(rl.records.len());
                for r in &rl.records {
                    out.received += 1;
                    let i = index;
                    index += 1;
                    let mut a = base;
                    a.fill(&r.attrs, ns_key);
                    let name: Option<&str> = a
                        .event_name
                        .and_then(str_of)
                        .or((!r.event_name.is_empty()).then_some(r.event_name))
                        .or_else(|| str_of(r.body).and_then(|b| b.strip_prefix("claude_code.")));
                    let Some(name) = name else {
                        count_reason(&mut out.unused, "", 1);
                        continue;
                    };
                    // GenAI events describe calls whose spans are the records (`crate::genai`),
                    // but for the sources configured to send their calls as events.
                    if name.starts_with("gen_ai.") {
                        let record = (name == genai::DETAILS_EVENT
                            && genai::is_event_source(service_name, &self.genai_event_sources))
                        .then(|| genai::event_record(&rl.resource, r, ns_key, v))
                        .flatten();
                        match record {
                            Some(Ok(rec)) => out.events.push(Event::Finish(rec)),
                            Some(Err(e)) => out.rejected.push((i, e)),
                            None => out.covered += 1,
                        }
                        continue;
                    }
                    let cli = name.starts_with("gemini_cli.") || name.starts_with("codex.");
                    let event_id = event_id(&a, name, r).or_else(|| {
                        cli.then(|| super::clis::event_id(&rl.resource, &r.attrs, name))
                            .flatten()
                    });
                    let mut body = || {
                        let session = a.session_id.and_then(str_of)?;
                        bodies.get_mut(session)?.pop_front()
                    };
                    let result = match name {
                        "api_request" => self.record(&a, r, false, body(), v).map(Some),
                        "api_error" => self.record(&a, r, true, body(), v).map(Some),
                        n if super::clis::is_record_event(n) => {
                            super::clis::record(n, &rl.resource, &r.attrs, time_ms(r), ns_key, v)
                        }
                        GATEMETER_EVENT => {
                            crate::otlp::gatemeter::record(&rl.resource, &r.attrs, time_ms(r), v)
                                .map(Some)
                        }
                        _ => Ok(None),
                    };
                    let made_record = matches!(result, Ok(Some(_)));
                    match result {
                        Ok(Some(rec)) => out.events.push(Event::Finish(rec)),
                        Ok(None) => {}
                        // A rejected event is not counted as received by name either.
                        Err(e) => {
                            out.rejected.push((i, e));
                            continue;
                        }
                    }
                    if name == GATEMETER_EVENT {
                        continue;
                    }
                    out.inputs.push(Input::Event {
                        name: CompactString::from(name),
                        id: event_id,
                    });
                    // Codex names its tool events like Claude Code; a Gemini CLI tool call is
                    // both a result and its decision.
                    let tool_kinds: &[&str] = match name {
                        "tool_result" | "codex.tool_result" => &["tool_result"],
                        "tool_decision" | "codex.tool_decision" => &["tool_decision"],
                        "gemini_cli.tool_call" => &["tool_result", "tool_decision"],
                        _ => &[],
                    };
                    let counted = name == "api_request" || name == "api_error" || made_record;
                    if counted {
                        // Already a record.
                    } else if tool_kinds.is_empty() {
                        out.other_events += 1;
                    } else {
                        let tools: Vec<ToolEvent> = tool_kinds
                            .iter()
                            .filter_map(|k| tool_event(k, &a, event_id))
                            .collect();
                        if tools.is_empty() {
                            out.other_events += 1;
                        } else {
                            out.tools += 1;
                            out.inputs.extend(tools.into_iter().map(Input::Tool));
                        }
                    }
                }
            }
        }
        out
    }

    fn record(
        &self,
        a: &Attrs<'_>,
        r: &LogRef<'_>,
        error: bool,
        body: Option<serde_json::Value>,
        v: &Validation<'_>,
    ) -> Result<Box<crate::record::ValidRecord>, RecordError> {
        let user_id = opt_text(a.user_id);
        let user = opt_text(a.user_email).or_else(|| user_id.clone());
        let session_id = opt_text(a.session_id);
        // The idempotency key: the API request id; for errors (which may have none, and whose
        // id must not collide with the retried request's) the session's event sequence number
        // and the event's time (a resumed session restarts the sequence: see `event_id`).
        let seq_id = match (&session_id, a.sequence.and_then(text_of), time_ms(r)) {
            (Some(s), Some(n), Some(t)) => Some(CompactString::from(format!("cc:{s}:{n}:{t}"))),
            (Some(s), Some(n), None) => Some(CompactString::from(format!("cc:{s}:{n}"))),
            _ => None,
        };
        let request_id = if error {
            seq_id.or_else(|| {
                opt_text(a.request_id).map(|id| CompactString::from(format!("{id}:error")))
            })
        } else {
            opt_text(a.request_id).or(seq_id)
        };
        let mut f = RecordFields {
            request_id,
            // The CLI's own id of the API call, on errors too: what a user finds the row by.
            provider_request_id: opt_text(a.request_id).filter(|id| id != "undefined"),
            timestamp_ms: time_ms(r),
            namespace: opt_text(a.namespace),
            user,
            user_id,
            provider: Some(CompactString::const_new("anthropic")),
            model: opt_text(a.model),
            endpoint: Some(CompactString::const_new("/v1/messages")),
            api_type: Some(CompactString::const_new("claude")),
            method: Some(CompactString::const_new("POST")),
            session_id,
            request: body.map(|b| serde_json::json!({ "body": b })),
            ..RecordFields::default()
        };
        // Milliseconds, decimals kept to the microsecond.
        f.duration_ms = opt_f64(a.duration_ms, "duration_ms")?;
        if error {
            // Network failures report no HTTP status ("undefined"): status 0, no response.
            f.status = Some(
                a.status_code
                    .and_then(|s| u64_of(s).ok())
                    .and_then(|n| u16::try_from(n).ok())
                    .unwrap_or(0),
            );
            f.duration_ms = Some(f.duration_ms.unwrap_or(0.0));
            f.error = opt_text(a.error);
            f.retry_count = opt_u32(a.attempt, "attempt")?.map(|n| n.saturating_sub(1));
            f.cost_usd = Some(0.0);
            return f.validate(v);
        }
        f.status = Some(200);
        f.ttfb_ms = opt_f64(a.ttft_ms, "ttft_ms")?;
        f.input_tokens = opt_u64(a.input_tokens, "input_tokens")?;
        f.output_tokens = opt_u64(a.output_tokens, "output_tokens")?;
        f.cache_read_tokens = opt_u64(a.cache_read, "cache_read_tokens")?;
        let (c5, c1) = cache_split(a)?;
        f.cache_creation_5m_tokens = c5;
        f.cache_creation_1h_tokens = c1;
        f.cost_micros = opt_u64(a.cost_micros, "cost_usd_micros")?;
        if f.cost_micros.is_none() {
            f.cost_usd = cost_usd(a)?;
        }
        f.validate(v)
    }
}

/// Claude Code's raw request bodies (`api_request_body` events, sent with
/// `OTEL_LOG_RAW_API_BODIES=1`: the JSON in the attribute `body`, cut by the CLI at 60 KB) of
/// this export, per session in order: each fills the `request` slot of the next `api_request` /
/// `api_error` of its session in the same export. A body that is not whole JSON is kept as text.
/// None of the captured sessions (`tests/data/claude-code/`) has them: the shape is the
/// documented one.
fn request_bodies(
    resources: &[ResourceLogsRef<'_>],
    ns_key: Option<&str>,
) -> HashMap<String, VecDeque<serde_json::Value>> {
    let mut out: HashMap<String, VecDeque<serde_json::Value>> = HashMap::new();
    for rl in resources {
        let mut base = Attrs::default();
        base.fill(&rl.resource, ns_key);
        for r in &rl.records {
            let mut a = base;
            a.fill(&r.attrs, ns_key);
            let name = a
                .event_name
                .and_then(str_of)
                .or((!r.event_name.is_empty()).then_some(r.event_name))
                .or_else(|| str_of(r.body).and_then(|b| b.strip_prefix("claude_code.")));
            if name != Some(REQUEST_BODY_EVENT) {
                continue;
            }
            let (Some(session), Some(text)) =
                (a.session_id.and_then(str_of), a.raw_body.and_then(str_of))
            else {
                continue;
            };
            let body = serde_json::from_str(text)
                .unwrap_or_else(|_| serde_json::Value::String(text.to_string()));
            out.entry(session.to_string()).or_default().push_back(body);
        }
    }
    out
}

/// The event carrying a raw API request body.
pub const REQUEST_BODY_EVENT: &str = "api_request_body";

/// The 5 m / 1 h split of cache creation tokens; what the split does not explain of
/// `cache_creation_tokens` is counted as 5 m (Anthropic's default TTL).
fn cache_split(a: &Attrs<'_>) -> Result<(Option<u64>, Option<u64>), RecordError> {
    let c5 = opt_u64(a.cache_5m, "cache_creation_5m_tokens")?;
    let c1 = opt_u64(a.cache_1h, "cache_creation_1h_tokens")?;
    let total = opt_u64(a.cache_creation, "cache_creation_tokens")?;
    let split = c5.unwrap_or(0) + c1.unwrap_or(0);
    Ok(match total {
        Some(t) if t > split => (Some(c5.unwrap_or(0) + (t - split)), c1),
        _ => (c5, c1),
    })
}

fn cost_usd(a: &Attrs<'_>) -> Result<Option<f64>, RecordError> {
    a.cost_usd
        .map(|c| f64_of(c).map_err(|m| attr_err("cost_usd", m)))
        .transpose()
}

fn id_hash(v: Option<Val<'_>>) -> Option<u64> {
    let s = v.and_then(str_of)?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    Some(h.finish())
}

fn bounded(s: CompactString) -> CompactString {
    if s.len() <= MAX_LABEL_VALUE {
        return s;
    }
    let mut end = MAX_LABEL_VALUE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    CompactString::from(&s[..end])
}

/// The identity of a Claude Code event: its session, sequence number, name and time.
///
/// (`session.id`, `event.sequence`) alone does not name one event: the sequence restarts at 0 in
/// every CLI process, and a resumed conversation (`claude --continue` / `--resume`) keeps its
/// `session.id`, so each later process emits pairs that an earlier one already used (for other
/// events). The time tells those apart, while a retried export repeats its events unchanged.
fn event_id(a: &Attrs<'_>, name: &str, r: &LogRef<'_>) -> Option<u64> {
    let session = a.session_id.and_then(str_of)?;
    let seq = a.sequence.and_then(text_of)?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (session, seq.as_ref(), name, event_time_ns(r)).hash(&mut h);
    Some(h.finish())
}

/// When the event happened: its time, else when it was observed (0 when neither is set).
fn event_time_ns(r: &LogRef<'_>) -> u64 {
    if r.time_ns != 0 {
        r.time_ns
    } else {
        r.observed_ns
    }
}

fn tool_event(name: &str, a: &Attrs<'_>, event_id: Option<u64>) -> Option<ToolEvent> {
    let tool = bounded(opt_text(a.tool_name)?);
    let id = event_id.or_else(|| id_hash(a.tool_use_id));
    if name == "tool_result" {
        Some(ToolEvent::Result {
            tool,
            // A result without a readable `success` is counted as a call, not as a failure.
            success: a.success.is_none_or(|s| bool_of(s).unwrap_or(true)),
            duration_ms: a.duration_ms.and_then(|d| u64_of(d).ok()),
            id,
        })
    } else {
        Some(ToolEvent::Decision {
            tool,
            decision: bounded(opt_text(a.decision).unwrap_or_default()),
            source: bounded(opt_text(a.source).unwrap_or_default()),
            id,
        })
    }
}

/// A Prometheus label name for an attribute key: `.` and other characters → `_`.
pub fn label_name(key: &str) -> CompactString {
    let mut out = CompactString::with_capacity(key.len());
    for (i, c) in key.chars().enumerate() {
        if c.is_ascii_alphanumeric() && !(i == 0 && c.is_ascii_digit()) || c == '_' {
            out.push(c);
        } else {
            out.push('_');
        }
    }
    out
}

impl Mapping {
    fn label_allowed(&self, key: &str) -> bool {
        let denied = key.starts_with("user.") || DENIED_LABELS.contains(&key);
        !denied || self.label_allowlist.iter().any(|k| k == key)
    }

    fn labels(&self, attrs: &[KeyValue]) -> Labels {
        let mut out: Labels = Vec::with_capacity(attrs.len());
        for kv in attrs {
            if !self.label_allowed(&kv.key) {
                continue;
            }
            let Some(v) = kv.value.as_ref().map(Val::of).and_then(text_of) else {
                continue;
            };
            let name = label_name(&kv.key);
            if name.is_empty() || name.starts_with("__") {
                continue;
            }
            out.push((name, bounded(v.to_compact_string())));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.dedup_by(|a, b| a.0 == b.0);
        out
    }

    /// Maps a metrics request received at `now_ms` (epoch milliseconds).
    pub fn metrics(&self, req: &ExportMetricsServiceRequest, now_ms: i64) -> MetricsOutcome {
        let latest_ns = u64::try_from(now_ms.saturating_add(MAX_POINT_FUTURE_MS))
            .unwrap_or(0)
            .saturating_mul(1_000_000);
        let mut out = MetricsOutcome::default();
        for rm in &req.resource_metrics {
            let mut res_hash = std::collections::hash_map::DefaultHasher::new();
            if let Some(res) = &rm.resource {
                for kv in &res.attributes {
                    kv.key.hash(&mut res_hash);
                    if let Some(v) = &kv.value {
                        hash_value(v, &mut res_hash);
                    }
                }
            }
            let res_hash = res_hash.finish();
            for sm in &rm.scope_metrics {
                let scope = sm.scope.as_ref().map_or("", |s| s.name.as_str());
                for m in &sm.metrics {
                    let n = point_count(m.data.as_ref()) as u64;
                    out.received += n;
                    let known = catalog::CLAUDE_CODE_METRICS
                        .iter()
                        .position(|(name, _, _)| *name == m.name);
                    let max_inc = known.map_or(0.0, |i| {
                        let (name, _, money) = catalog::CLAUDE_CODE_METRICS[i];
                        max_increment(name, money)
                    });
                    // GenAI metrics describe calls whose spans are the records (`crate::genai`).
                    if known.is_none() && m.name.starts_with("gen_ai.") {
                        out.covered += n;
                        continue;
                    }
                    let (Some(metric), Some(Data::Sum(sum))) = (known, &m.data) else {
                        count_reason(&mut out.unused, scope, n);
                        continue;
                    };
                    if !sum.is_monotonic {
                        count_reason(&mut out.unused, scope, n);
                        continue;
                    }
                    let temporality = match sum.aggregation_temporality {
                        1 => Temporality::Delta,
                        2 => Temporality::Cumulative,
                        t => {
                            out.reject(ItemReject::BadValue, n, || {
                                format!("{}: aggregation temporality {t} is not delta (1) or cumulative (2)", m.name)
                            });
                            continue;
                        }
                    };
                    for p in &sum.data_points {
                        let value = match p.value {
                            Some(number_data_point::Value::AsDouble(d)) => d,
                            Some(number_data_point::Value::AsInt(i)) => i as f64,
                            None => f64::NAN,
                        };
                        if !value.is_finite() || value < 0.0 {
                            out.reject(ItemReject::BadValue, 1, || {
                                format!(
                                    "{}: {} is not a finite non-negative value of a monotonic sum",
                                    m.name,
                                    number(value)
                                )
                            });
                            continue;
                        }
                        let bound = match temporality {
                            Temporality::Delta => max_inc,
                            Temporality::Cumulative => MAX_CUMULATIVE,
                        };
                        if value > bound {
                            out.reject(ItemReject::OutOfRange, 1, || {
                                format!(
                                    "{}: {} exceeds the limit of {bound} per point",
                                    m.name,
                                    number(value)
                                )
                            });
                            continue;
                        }
                        if p.time_unix_nano.max(p.start_time_unix_nano) > latest_ns {
                            out.reject(ItemReject::Future, 1, || {
                                format!(
                                    "{}: a point dated {} ns is more than {} s after its receipt",
                                    m.name,
                                    p.time_unix_nano.max(p.start_time_unix_nano),
                                    MAX_POINT_FUTURE_MS / 1000
                                )
                            });
                            continue;
                        }
                        let mut h = std::collections::hash_map::DefaultHasher::new();
                        (metric, res_hash).hash(&mut h);
                        for kv in &p.attributes {
                            kv.key.hash(&mut h);
                            if let Some(v) = &kv.value {
                                hash_value(v, &mut h);
                            }
                        }
                        out.inputs.push(Input::Point(Point {
                            metric,
                            stream: h.finish(),
                            labels: self.labels(&p.attributes),
                            temporality,
                            start_ns: p.start_time_unix_nano,
                            time_ns: p.time_unix_nano,
                            value,
                            max_increment: max_inc,
                        }));
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map_one(attrs: &str) -> Result<Box<crate::record::ValidRecord>, RecordError> {
        let json = format!(
            r#"{{"resourceLogs":[{{"resource":{{"attributes":[{{"key":"team.id","value":{{"stringValue":"t"}}}}]}},"scopeLogs":[{{"logRecords":[{{"timeUnixNano":"1795458649672000000","attributes":[{attrs}]}}]}}]}}]}}"#
        );
        let req: ExportLogsServiceRequest = serde_json::from_str(&json).expect("json");
        let prices = crate::price::PriceTable::default();
        let v = Validation {
            now_ms: 1_795_460_000_000,
            prices: &prices,
            keep_requests: None,
        };
        let m = Mapping {
            namespace_attribute: Some("team.id".into()),
            ..Mapping::default()
        };
        let mut out = m.logs(&req, &v);
        if let Some((_, e)) = out.rejected.pop() {
            return Err(e);
        }
        match out.events.pop() {
            Some(Event::Finish(r)) => Ok(r),
            other => panic!("no record: {other:?}"),
        }
    }

    /// A raw body event fills the `request` of the next `api_request` of its session, redacted,
    /// only when requests are kept.
    #[test]
    fn raw_request_bodies_fill_the_request_slot() {
        let body = serde_json::json!({"model": "claude", "api_key": "canary-cc", "messages": []})
            .to_string();
        let rec = |attrs: &[String]| {
            format!(
                r#"{{"timeUnixNano":"1795458649672000000","attributes":[{}]}}"#,
                attrs.join(",")
            )
        };
        let s = |v: &str| serde_json::json!({ "stringValue": v }).to_string();
        let json = format!(
            r#"{{"resourceLogs":[{{"resource":{{"attributes":[]}},"scopeLogs":[{{"logRecords":[{},{}]}}]}}]}}"#,
            rec(&[
                a("event.name", &s("api_request_body")),
                a("session.id", &s("s-1")),
                a("body", &s(&body)),
            ]),
            rec(&[
                a("event.name", &s("api_request")),
                a("session.id", &s("s-1")),
                a("request_id", &s("req_1")),
                a("model", &s("claude")),
                a("duration_ms", &s("10")),
            ]),
        );
        let req: ExportLogsServiceRequest = serde_json::from_str(&json).expect("json");
        let prices = crate::price::PriceTable::default();
        for keep in [None, Some(65_536)] {
            let v = Validation {
                now_ms: 1_795_460_000_000,
                prices: &prices,
                keep_requests: keep,
            };
            let out = Mapping::default().logs(&req, &v);
            let [Event::Finish(r)] = out.events.as_slice() else {
                panic!("one record: {:?}", out.events)
            };
            match keep {
                None => assert_eq!(r.request, None),
                Some(_) => {
                    let kept = r.request.as_ref().expect("kept");
                    assert!(kept.json.contains(r#""model":"claude""#), "{}", kept.json);
                    assert!(!kept.json.contains("canary-cc"), "{}", kept.json);
                }
            }
        }
    }

    fn a(k: &str, v: &str) -> String {
        format!(r#"{{"key":"{k}","value":{v}}}"#)
    }

    #[test]
    fn an_api_error_without_response_is_status_0_and_keyed_by_sequence_and_time() {
        let r = map_one(
            &[
                a("event.name", r#"{"stringValue":"api_error"}"#),
                a("session.id", r#"{"stringValue":"s1"}"#),
                a("event.sequence", r#"{"intValue":"5"}"#),
                a("model", r#"{"stringValue":"claude-x"}"#),
                a("status_code", r#"{"stringValue":"undefined"}"#),
                a("error", r#"{"stringValue":"Connection error."}"#),
                a("attempt", r#"{"intValue":3}"#),
            ]
            .join(","),
        )
        .expect("valid");
        assert_eq!(r.status, 0);
        assert!(!r.is_success());
        assert_eq!(r.retry_count, 2);
        assert_eq!(r.cost_micros, 0);
        assert_eq!(r.cost_source, crate::record::CostSource::Reported);
        assert_eq!(
            r.request_id.as_ref().map(|i| i.as_str()),
            Some("cc:s1:5:1795458649672")
        );
        assert_eq!(r.namespace, "t");
        assert_eq!(r.error.as_deref(), Some("Connection error."));
        assert_eq!(r.timestamp_ms, 1_795_458_649_672);
    }

    #[test]
    fn cache_creation_is_split_and_cost_falls_back_to_usd() {
        let r = map_one(
            &[
                a("event.name", r#"{"stringValue":"api_request"}"#),
                a("model", r#"{"stringValue":"claude-x"}"#),
                a("duration_ms", r#"{"stringValue":"900"}"#),
                a("ttft_ms", r#"{"doubleValue":300}"#),
                a("cache_creation_tokens", r#"{"intValue":"500"}"#),
                a("cache_creation_1h_tokens", r#"{"intValue":"200"}"#),
                a("cost_usd", r#"{"stringValue":"0.0125"}"#),
                a("user.id", r#"{"stringValue":"u-hash"}"#),
            ]
            .join(","),
        )
        .expect("valid");
        assert_eq!(r.tokens.cache_write_5m, 300);
        assert_eq!(r.tokens.cache_write_1h, 200);
        assert_eq!(r.cost_micros, 12_500);
        assert_eq!(r.ttfb_ms, Some(crate::record::Millis::from_ms(300)));
        assert_eq!(
            r.user.as_deref(),
            Some("u-hash"),
            "user.id when no user.email"
        );
        assert_eq!(r.provider, "anthropic");
        assert_eq!(r.endpoint, "/v1/messages");
    }

    #[test]
    fn unreadable_numbers_reject_the_record_naming_the_attribute() {
        let e = map_one(
            &[
                a("event.name", r#"{"stringValue":"api_request"}"#),
                a("model", r#"{"stringValue":"claude-x"}"#),
                a("duration_ms", r#"{"stringValue":"9"}"#),
                a("input_tokens", r#"{"stringValue":"lots"}"#),
            ]
            .join(","),
        )
        .expect_err("invalid");
        assert_eq!(e.field, "attributes.input_tokens");
        assert!(e.message.contains("lots"), "{e}");
        let e = map_one(
            &[
                a("event.name", r#"{"stringValue":"api_request"}"#),
                a("duration_ms", r#"{"stringValue":"9"}"#),
            ]
            .join(","),
        )
        .expect_err("no model");
        assert_eq!(e.field, "model");
    }

    /// An `api_error` carrying the CLI's request id keeps it in `provider_request_id` (what a
    /// user searches the log by), while the idempotency key stays the event's own identity; its
    /// `attempt` (a string here) gives the retries before it.
    #[test]
    fn an_api_error_keeps_the_cli_request_id_apart_from_its_identity() {
        let r = map_one(
            &[
                a("event.name", r#"{"stringValue":"api_error"}"#),
                a("session.id", r#"{"stringValue":"s1"}"#),
                a("event.sequence", r#"{"intValue":"7"}"#),
                a("model", r#"{"stringValue":"claude-x"}"#),
                a("status_code", r#"{"stringValue":"529"}"#),
                a("duration_ms", r#"{"stringValue":"1234.5"}"#),
                a("request_id", r#"{"stringValue":"req_011CLIabc"}"#),
                a("attempt", r#"{"stringValue":"4"}"#),
            ]
            .join(","),
        )
        .expect("valid");
        assert_eq!(r.status, 529);
        assert_eq!(r.provider_request_id.as_deref(), Some("req_011CLIabc"));
        assert_eq!(
            r.request_id.as_ref().map(|i| i.as_str()),
            Some("cc:s1:7:1795458649672")
        );
        assert_eq!(r.retry_count, 3);
        assert_eq!(r.duration_ms, crate::record::Millis::from_micros(1_234_500));
        // Without an attempt attribute: no retries known.
        let r = map_one(
            &[
                a("event.name", r#"{"stringValue":"api_error"}"#),
                a("model", r#"{"stringValue":"claude-x"}"#),
                a("status_code", r#"{"intValue":"500"}"#),
                a("request_id", r#"{"stringValue":"undefined"}"#),
            ]
            .join(","),
        )
        .expect("valid");
        assert_eq!((r.retry_count, r.provider_request_id), (0, None));
    }

    /// A secret in an api_error message is redacted by the record's validation.
    #[test]
    fn api_error_messages_are_scrubbed_of_secrets() {
        let r = map_one(
            &[
                a("event.name", r#"{"stringValue":"api_error"}"#),
                a("model", r#"{"stringValue":"claude-x"}"#),
                a("status_code", r#"{"stringValue":"401"}"#),
                a(
                    "error",
                    r#"{"stringValue":"invalid x-api-key sk-canary-789, Bearer abc.def, api_key=zzz"}"#,
                ),
            ]
            .join(","),
        )
        .expect("valid");
        assert_eq!(
            r.error.as_deref(),
            Some("invalid x-api-key [REDACTED], Bearer [REDACTED], api_key=[REDACTED]")
        );
    }

    const NOW_MS: i64 = 1_795_460_000_000;

    /// Maps one delta point of `metric` with value `value` (OTLP/JSON) at `time_ns`.
    fn map_point(metric: &str, value: &str, time_ns: u128) -> MetricsOutcome {
        let json = format!(
            r#"{{"resourceMetrics":[{{"scopeMetrics":[{{"metrics":[{{"name":"{metric}","sum":{{"aggregationTemporality":1,"isMonotonic":true,"dataPoints":[{{{value},"startTimeUnixNano":"1","timeUnixNano":"{time_ns}"}}]}}}}]}}]}}]}}"#
        );
        let req: ExportMetricsServiceRequest = serde_json::from_str(&json).expect("json");
        Mapping::default().metrics(&req, NOW_MS)
    }

    #[test]
    fn metric_points_are_bounded_like_native_records() {
        let now_ns = NOW_MS as u128 * 1_000_000;
        let cases = [
            (
                "claude_code.cost.usage",
                r#""asDouble":1e308"#,
                ItemReject::OutOfRange,
            ),
            (
                "claude_code.cost.usage",
                r#""asDouble":100000.01"#,
                ItemReject::OutOfRange,
            ),
            (
                "claude_code.token.usage",
                r#""asInt":"9223372036854775807""#,
                ItemReject::OutOfRange,
            ),
            (
                "claude_code.token.usage",
                r#""asInt":"100000001""#,
                ItemReject::OutOfRange,
            ),
            (
                "claude_code.active_time.total",
                r#""asDouble":86400.5"#,
                ItemReject::OutOfRange,
            ),
            (
                "claude_code.cost.usage",
                r#""asDouble":-1"#,
                ItemReject::BadValue,
            ),
        ];
        for (metric, value, reason) in cases {
            let out = map_point(metric, value, now_ns);
            assert_eq!(out.rejected_total(), 1, "{metric} {value}");
            assert_eq!(out.rejected[reason as usize], 1, "{metric} {value}");
            assert!(out.inputs.is_empty());
            let msg = out.first_error[reason as usize].as_deref().unwrap_or("");
            assert!(msg.contains(metric), "{msg}");
        }
        for (metric, value) in [
            ("claude_code.cost.usage", r#""asDouble":100000"#),
            ("claude_code.token.usage", r#""asInt":"100000000""#),
            ("claude_code.active_time.total", r#""asDouble":86400"#),
        ] {
            let out = map_point(metric, value, now_ns);
            assert_eq!(out.rejected_total(), 0, "{metric} {value}");
            assert_eq!(out.inputs.len(), 1);
        }
    }

    #[test]
    fn metric_points_dated_past_the_tolerance_are_refused() {
        let limit_ns = (NOW_MS + MAX_POINT_FUTURE_MS) as u128 * 1_000_000;
        let out = map_point("claude_code.cost.usage", r#""asDouble":1"#, limit_ns);
        assert_eq!(out.rejected_total(), 0);
        let out = map_point("claude_code.cost.usage", r#""asDouble":1"#, limit_ns + 1);
        assert_eq!(out.rejected[ItemReject::Future as usize], 1);
        assert!(out.inputs.is_empty());
        let y2099 = 4_070_908_800_000u128 * 1_000_000;
        let out = map_point("claude_code.cost.usage", r#""asDouble":1"#, y2099);
        assert_eq!(out.rejected[ItemReject::Future as usize], 1);
    }

    #[test]
    fn label_names_are_sanitised() {
        assert_eq!(label_name("team.id"), "team_id");
        assert_eq!(
            label_name("deployment.environment"),
            "deployment_environment"
        );
        assert_eq!(label_name("9lives"), "_lives");
        assert_eq!(label_name("a-b c"), "a_b_c");
    }

    use opentelemetry_proto::tonic::common::v1::AnyValue;

    #[test]
    fn ids_are_never_labels_unless_allow_listed() {
        let kv = |k: &str, v: &str| KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(
                    opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(v.into()),
                ),
            }),
            ..Default::default()
        };
        let attrs = vec![
            kv("session.id", "s"),
            kv("user.id", "u"),
            kv("user.email", "e@x"),
            kv("user.account_uuid", "a"),
            kv("organization.id", "o"),
            kv("type", "input"),
            kv("model", "m"),
        ];
        let m = Mapping::default();
        let names: Vec<String> = m
            .labels(&attrs)
            .into_iter()
            .map(|(k, _)| k.to_string())
            .collect();
        assert_eq!(names, vec!["model", "type"]);
        let m = Mapping {
            label_allowlist: vec!["user.email".into()],
            ..Mapping::default()
        };
        let names: Vec<String> = m
            .labels(&attrs)
            .into_iter()
            .map(|(k, _)| k.to_string())
            .collect();
        assert_eq!(names, vec!["model", "type", "user_email"]);
    }
}
