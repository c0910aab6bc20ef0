//! The OTLP/HTTP protocol (OTLP 1.x, "OTLP/HTTP" section): one handler for the three signals.
//!
//! - 200 with an empty `Export*ServiceResponse` on full success; 200 with `partial_success`
//!   (count and message) when some records were rejected;
//! - 400 undecodable body, 413 over the body limit (checked again after decompression),
//!   415 media type or encoding not supported, 405 not POST, 503 + `Retry-After` when the queues
//!   are full — errors carry a `google.rpc.Status`;
//! - every answer in the request's encoding (protobuf or JSON; JSON when the request's own
//!   media type is not supported).
//!
//! A request is taken whole or not at all: the Claude Code queue slot is reserved before the
//! records are submitted, and nothing is sent if either is refused.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;

use crate::api::ApiError;
use crate::claude_code::mapping::{Mapping, MetricsOutcome};
use crate::claude_code::task::ClaudeCode;
use crate::genai;
use crate::health::otlp::{Diagnostics, ItemReject, Signal, Use};
use crate::health::{Health, RequestReject, Source};
use crate::ingest::body;
use crate::otlp::decode::{self, Encoding};
use crate::otlp::scan;
use crate::pipeline::Pipeline;
use crate::price::PriceTable;
use crate::record::Validation;
use crate::record::{Event, RecordError};
use crate::spool::Spool;

/// `google.rpc.Status`, the body of OTLP/HTTP error answers (not part of opentelemetry-proto).
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct Status {
    /// gRPC status code.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// What went wrong.
    #[prost(string, tag = "2")]
    pub message: String,
}

/// Most rejection messages listed in one `partial_success.error_message`.
const MAX_LISTED_ERRORS: usize = 5;

/// Seconds a client should wait after a 503.
const RETRY_AFTER_SECS: u32 = 1;

/// State of the OTLP handler.
pub struct OtlpIngest {
    /// Where request records go.
    pub pipeline: Pipeline,
    /// With `durability: spool`: request records go through it (on disk before the answer).
    pub spool: Option<Spool>,
    /// Where Claude Code metric points and tool events go.
    pub claude_code: ClaudeCode,
    /// Item and request counters.
    pub diagnostics: Arc<Diagnostics>,
    /// Process health (records accepted / rejected under source `otlp`).
    pub health: Arc<Health>,
    /// Body limit after decompression.
    pub max_body_bytes: usize,
    /// Prices for records without a cost.
    pub prices: Arc<PriceTable>,
    /// Item mapping.
    pub mapping: Mapping,
    /// Keep a record's `request` object, redacted, up to this many bytes (`None`: skip it).
    pub keep_requests: Option<usize>,
    /// The cumulative GenAI metric streams of `otlp.genai_metric_sources` (a short lock: one
    /// read, one commit per metrics request, never across an await).
    pub genai_streams: std::sync::Mutex<genai::metrics::Streams>,
}

/// A refused request: why (which also gives its status) and what to tell the client.
struct Refusal {
    reason: RequestReject,
    message: String,
}

impl Refusal {
    fn new(reason: RequestReject, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

fn encode<T: Message + serde::Serialize>(enc: Encoding, msg: &T) -> Vec<u8> {
    match enc {
        Encoding::Protobuf => msg.encode_to_vec(),
        Encoding::Json => {
            // An absent `partial_success` is omitted (`{}`), not written as null.
            let mut v = serde_json::to_value(msg).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.retain(|_, x| !x.is_null());
            }
            serde_json::to_vec(&v).unwrap_or_else(|_| b"{}".to_vec())
        }
    }
}

fn answer(status: StatusCode, enc: Encoding, body: Vec<u8>) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(enc.content_type()),
        )],
        body,
    )
        .into_response()
}

fn refuse(enc: Encoding, r: Refusal) -> Response {
    let status = r.reason.status();
    let code = match status {
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => 14, // UNAVAILABLE
        StatusCode::PAYLOAD_TOO_LARGE => 8,                                    // RESOURCE_EXHAUSTED
        StatusCode::METHOD_NOT_ALLOWED | StatusCode::UNSUPPORTED_MEDIA_TYPE => 12, // UNIMPLEMENTED
        _ => 3,                                                                // INVALID_ARGUMENT
    };
    let body = Status {
        code,
        message: r.message,
    };
    let mut resp = answer(status, enc, encode(enc, &body));
    match status {
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        StatusCode::METHOD_NOT_ALLOWED => {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
        }
        _ => {}
    }
    resp
}

fn body_refusal(e: body::BodyError) -> Refusal {
    let message = match e.error {
        ApiError::TooLarge { message, .. } | ApiError::UnsupportedMediaType { message, .. } => {
            message
        }
        other => other.to_string(),
    };
    Refusal::new(e.reason, message)
}

/// `POST /v1/logs`, `/v1/metrics`, `/v1/traces` (any method is routed here so that the others
/// get a proper 405).
pub async fn export(
    State(s): State<Arc<OtlpIngest>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(signal) = Signal::from_path(uri.path()) else {
        return ApiError::NotFound.into_response();
    };
    let enc = Encoding::from_headers(&headers);
    let result = if method != Method::POST {
        Err(Refusal::new(
            RequestReject::MethodNotAllowed,
            format!("{method} is not allowed on {}; use POST", signal.path()),
        ))
    } else if let Some(enc) = enc {
        s.receive(signal, enc, &headers, body).await
    } else {
        let got = headers
            .get(header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        Err(Refusal::new(
            RequestReject::UnsupportedMediaType,
            format!(
                "Content-Type {} is not supported; use application/x-protobuf or application/json",
                got.map_or_else(|| "(none)".to_string(), |g| format!("{g:?}"))
            ),
        ))
    };
    let enc = enc.unwrap_or(Encoding::Json);
    match result {
        Ok(body) => answer(StatusCode::OK, enc, body),
        Err(r) => {
            s.diagnostics.rejected_request(signal, r.reason);
            if let Some(c) = r.reason.process_wide() {
                s.health.rejected_request(Source::Otlp, c);
            }
            refuse(enc, r)
        }
    }
}

/// The partial-success message of a metrics request: per reason, the count and the first
/// point's message (`out_of_range: 2 points, first: claude_code.cost.usage: 1e308 exceeds …`).
fn points_message(out: &MetricsOutcome) -> String {
    let mut msg = String::new();
    for r in ItemReject::ALL {
        let n = out.rejected[r as usize];
        if n == 0 {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str("; ");
        }
        let first = out.first_error[r as usize].as_deref().unwrap_or("");
        let s = if n == 1 { "" } else { "s" };
        msg.push_str(&format!("{}: {n} point{s}, first: {first}", r.as_str()));
    }
    msg
}

/// The partial-success message of rejected records: the first few (`log record 3: …`), then
/// how many more.
fn rejections_message(item: &str, rejected: &[(usize, RecordError)]) -> String {
    let mut msg = String::new();
    for (i, e) in rejected.iter().take(MAX_LISTED_ERRORS) {
        if !msg.is_empty() {
            msg.push_str("; ");
        }
        msg.push_str(&format!("{item} {i}: {e}"));
    }
    if rejected.len() > MAX_LISTED_ERRORS {
        msg.push_str(&format!(
            "; and {} more",
            rejected.len() - MAX_LISTED_ERRORS
        ));
    }
    msg
}

fn overloaded() -> Refusal {
    Refusal::new(
        RequestReject::Overloaded,
        "the ingest queue is full; retry after the Retry-After delay",
    )
}

impl OtlpIngest {
    async fn receive(
        &self,
        signal: Signal,
        enc: Encoding,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Vec<u8>, Refusal> {
        let bytes = body::read(body, headers, self.max_body_bytes)
            .await
            .map_err(body_refusal)?;
        let undecodable = |m: String| Refusal::new(RequestReject::Undecodable, m);
        match signal {
            Signal::Logs => {
                if enc == Encoding::Protobuf
                    && let Some(view) = scan::logs(&bytes)
                {
                    return self.logs(enc, &view).await;
                }
                let req: ExportLogsServiceRequest =
                    decode::message(&bytes, enc).map_err(undecodable)?;
                self.logs(enc, &scan::view(&req)).await
            }
            Signal::Metrics => {
                let req: ExportMetricsServiceRequest =
                    decode::message(&bytes, enc).map_err(undecodable)?;
                self.metrics(enc, &req).await
            }
            Signal::Traces => {
                if enc == Encoding::Protobuf
                    && let Some(view) = scan::spans(&bytes)
                {
                    return self.traces(enc, &view).await;
                }
                let req: ExportTraceServiceRequest =
                    decode::message(&bytes, enc).map_err(undecodable)?;
                self.traces(enc, &scan::spans_view(&req)).await
            }
        }
    }

    /// Queues request records: straight into the pipeline, or through the spool.
    async fn submit(&self, events: Vec<Event>) -> Result<(), Refusal> {
        match &self.spool {
            None => self.pipeline.try_submit(events).map_err(|_| overloaded()),
            Some(spool) => spool.submit(events).await.map_err(|r| {
                Refusal::new(
                    RequestReject::Overloaded,
                    format!("{r}; nothing was taken, retry after the Retry-After delay"),
                )
            }),
        }
    }

    async fn logs(
        &self,
        enc: Encoding,
        req: &[scan::ResourceLogsRef<'_>],
    ) -> Result<Vec<u8>, Refusal> {
        let v = Validation {
            now_ms: crate::clock::now_ms(),
            prices: &self.prices,
            keep_requests: self.keep_requests,
        };
        let out = self.mapping.logs_view(req, &v);
        let d = &self.diagnostics;
        // Reserve the Claude Code slot first: then the pipeline's answer decides alone.
        let slot = if out.inputs.is_empty() {
            None
        } else {
            Some(self.claude_code.reserve().ok_or_else(overloaded)?)
        };
        let records = out.events.len() as u64;
        self.submit(out.events).await?;
        if let Some(slot) = slot {
            slot.send(out.inputs);
        }
        d.received(Signal::Logs, out.received);
        d.accepted(Signal::Logs, Use::Record, records);
        d.accepted(Signal::Logs, Use::Tool, out.tools);
        d.accepted(Signal::Logs, Use::Event, out.other_events);
        d.accepted(Signal::Logs, Use::Covered, out.covered);
        d.unused(Signal::Logs, &out.unused);
        let rejected = out.rejected.len() as u64;
        d.rejected(Signal::Logs, ItemReject::InvalidRecord, rejected);
        self.health.accepted(Source::Otlp, records);
        for (_, e) in &out.rejected {
            self.health.rejected_record(Source::Otlp, e.reason);
        }
        let partial_success = (rejected > 0).then(|| ExportLogsPartialSuccess {
            rejected_log_records: rejected as i64,
            error_message: rejections_message("log record", &out.rejected),
        });
        Ok(encode(enc, &ExportLogsServiceResponse { partial_success }))
    }

    async fn traces(
        &self,
        enc: Encoding,
        req: &[scan::ResourceSpansRef<'_>],
    ) -> Result<Vec<u8>, Refusal> {
        let v = Validation {
            now_ms: crate::clock::now_ms(),
            prices: &self.prices,
            keep_requests: None,
        };
        let out = genai::spans_view(
            req,
            self.mapping.namespace_attribute.as_deref(),
            self.listed(),
            &v,
        );
        let records = out.events.len() as u64;
        self.submit(out.events).await?;
        let d = &self.diagnostics;
        d.received(Signal::Traces, out.received);
        d.accepted(Signal::Traces, Use::Record, records);
        d.accepted(Signal::Traces, Use::Covered, out.covered);
        d.unused(Signal::Traces, &out.unused);
        let rejected = out.rejected.len() as u64;
        d.rejected(Signal::Traces, ItemReject::InvalidRecord, rejected);
        self.health.accepted(Source::Otlp, records);
        for (_, e) in &out.rejected {
            self.health.rejected_record(Source::Otlp, e.reason);
        }
        let partial_success = (rejected > 0).then(|| ExportTracePartialSuccess {
            rejected_spans: rejected as i64,
            error_message: rejections_message("span", &out.rejected),
        });
        Ok(encode(enc, &ExportTraceServiceResponse { partial_success }))
    }

    /// The GenAI sources whose records are not their spans.
    fn listed(&self) -> genai::Listed<'_> {
        genai::Listed {
            events: &self.mapping.genai_event_sources,
            metrics: &self.mapping.genai_metric_sources,
        }
    }

    async fn metrics(
        &self,
        enc: Encoding,
        req: &ExportMetricsServiceRequest,
    ) -> Result<Vec<u8>, Refusal> {
        let now_ms = crate::clock::now_ms();
        let mut out = self.mapping.metrics(req, now_ms);
        let v = Validation {
            now_ms,
            prices: &self.prices,
            keep_requests: None,
        };
        // The listed metrics-only sources' GenAI points as records. The stream positions are
        // read under a short lock and kept only once the records were taken, so a refused
        // request leaves them for its retry (whose records carry the same ids).
        let calls = if self.mapping.genai_metric_sources.is_empty() {
            genai::metrics::MetricCalls::default()
        } else {
            let streams = self.genai_streams.lock().unwrap_or_else(|e| e.into_inner());
            genai::metrics::read(
                req,
                self.mapping.namespace_attribute.as_deref(),
                &self.mapping.genai_metric_sources,
                &streams,
                &v,
            )
        };
        // Reserve the Claude Code slot first: then the pipeline's answer decides alone.
        let slot = if out.inputs.is_empty() {
            None
        } else {
            Some(self.claude_code.reserve().ok_or_else(overloaded)?)
        };
        let records = calls.events.len() as u64;
        let taken = calls.taken();
        if records > 0 {
            self.submit(calls.events).await?;
        }
        if !calls.positions.is_empty() {
            let mut streams = self.genai_streams.lock().unwrap_or_else(|e| e.into_inner());
            streams.commit(calls.positions);
        }
        if let Some(slot) = slot {
            slot.send(std::mem::take(&mut out.inputs));
        }
        // The points read as records were counted `covered` by the mapping.
        out.covered = out.covered.saturating_sub(taken);
        for (e, message) in calls.refused {
            let reason = match e {
                genai::metrics::PointError::BadValue => ItemReject::BadValue,
                genai::metrics::PointError::OutOfRange => ItemReject::OutOfRange,
                genai::metrics::PointError::StreamLimit => ItemReject::StreamLimit,
                genai::metrics::PointError::Future => ItemReject::Future,
            };
            out.reject_with(reason, 1, message);
        }
        // Items are points: a point whose records failed validation is one rejected point
        // (each of its records counts in the process-wide family).
        let mut bad_points: Vec<usize> = calls.rejected.iter().map(|(i, _)| *i).collect();
        bad_points.sort_unstable();
        bad_points.dedup();
        if let Some((i, e)) = calls.rejected.first() {
            out.reject_with(
                ItemReject::InvalidRecord,
                bad_points.len() as u64,
                format!("point {i}: {e}"),
            );
        }
        for (_, e) in &calls.rejected {
            self.health.rejected_record(Source::Otlp, e.reason);
        }
        let d = &self.diagnostics;
        d.received(Signal::Metrics, out.received);
        let read = calls.points.saturating_sub(bad_points.len() as u64);
        d.accepted(Signal::Metrics, Use::Record, read);
        d.accepted(Signal::Metrics, Use::Repeated, calls.repeated);
        d.accepted(Signal::Metrics, Use::Covered, out.covered);
        d.unused(Signal::Metrics, &out.unused);
        for r in ItemReject::ALL {
            d.rejected(Signal::Metrics, r, out.rejected[r as usize]);
        }
        self.health.accepted(Source::Otlp, records);
        let rejected = out.rejected_total();
        let partial_success = (rejected > 0).then(|| ExportMetricsPartialSuccess {
            rejected_data_points: rejected as i64,
            error_message: points_message(&out),
        });
        Ok(encode(
            enc,
            &ExportMetricsServiceResponse { partial_success },
        ))
    }
}

#[cfg(test)]
mod tests {
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;
    use crate::claude_code::state::Limits;
    use crate::store::{Discard, MemoryStore};

    fn logs(ids: &[&str]) -> String {
        let now_ns = crate::clock::now_ms() as u128 * 1_000_000;
        let records: Vec<String> = ids
            .iter()
            .map(|id| {
                format!(
                    r#"{{"timeUnixNano":"{now_ns}","attributes":[
                    {{"key":"event.name","value":{{"stringValue":"api_request"}}}},
                    {{"key":"request_id","value":{{"stringValue":"{id}"}}}},
                    {{"key":"model","value":{{"stringValue":"m"}}}},
                    {{"key":"duration_ms","value":{{"intValue":"5"}}}}]}}"#
                )
            })
            .collect();
        format!(
            r#"{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[{}]}}]}}]}}"#,
            records.join(",")
        )
    }

    const METRICS: &str = r#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"claude_code.session.count","sum":{"aggregationTemporality":1,"isMonotonic":true,"dataPoints":[{"startTimeUnixNano":"1","timeUnixNano":"2","asDouble":1}]}}]}]}]}"#;

    fn req(path: &str, body: String) -> Request<Body> {
        Request::post(path)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .expect("request")
    }

    #[tokio::test]
    async fn full_queues_answer_503_with_retry_after_and_take_nothing() {
        // On this single-threaded runtime neither the aggregator nor the Claude Code task runs
        // until the test awaits something that is not ready: the queues stay as left.
        let health = Arc::new(Health::new(3));
        let (pipeline, _p) = Pipeline::spawn(
            crate::pipeline::PipelineConfig {
                queue_capacity: 3,
                ..Default::default()
            },
            Arc::new(MemoryStore::new()),
            Arc::new(Discard),
            health.clone(),
        );
        let diagnostics = Arc::new(Diagnostics::default());
        let (claude_code, _c) = ClaudeCode::spawn(
            Limits::default(),
            2,
            Arc::new(crate::budget::SeriesBudget::unlimited()),
            diagnostics.clone(),
        );
        let state = Arc::new(OtlpIngest {
            pipeline,
            spool: None,
            claude_code,
            diagnostics: diagnostics.clone(),
            health: health.clone(),
            max_body_bytes: 1 << 20,
            prices: Arc::new(PriceTable::default()),
            mapping: Mapping::default(),
            keep_requests: None,
            genai_streams: std::sync::Mutex::new(genai::metrics::Streams::new(0)),
        });
        let app = axum::Router::new()
            .route("/v1/logs", axum::routing::any(export))
            .route("/v1/metrics", axum::routing::any(export))
            .with_state(state);

        let ok = app
            .clone()
            .oneshot(req("/v1/logs", logs(&["a", "b"])))
            .await
            .expect("answer");
        assert_eq!(ok.status(), StatusCode::OK);
        // Two more records do not fit the record queue (3): refused whole ...
        let full = app
            .clone()
            .oneshot(req("/v1/logs", logs(&["c", "d"])))
            .await
            .expect("answer");
        assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(full.headers()[header::RETRY_AFTER], "1");
        assert_eq!(health.snapshot().queue_depth, 2);
        // ... and its reserved Claude Code slot was given back: one metrics request still fits.
        let m = app
            .clone()
            .oneshot(req("/v1/metrics", METRICS.into()))
            .await
            .expect("answer");
        assert_eq!(m.status(), StatusCode::OK);
        let m = app
            .clone()
            .oneshot(req("/v1/metrics", METRICS.into()))
            .await
            .expect("answer");
        assert_eq!(m.status(), StatusCode::SERVICE_UNAVAILABLE);
        let d = diagnostics.snapshot();
        assert_eq!(
            d.rejected_requests[Signal::Logs as usize][RequestReject::Overloaded as usize],
            1
        );
        assert_eq!(
            d.rejected_requests[Signal::Metrics as usize][RequestReject::Overloaded as usize],
            1
        );
        assert_eq!(
            d.received[Signal::Logs as usize],
            2,
            "refused requests are not counted as received"
        );
    }
}
