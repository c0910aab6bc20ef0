//! `POST /v1/events`: the native ingest API (SPEC §3.1).
//!
//! One JSON object, a JSON array of objects, or NDJSON; gzip or zstd. Each record is validated
//! on its own, so a batch is accepted in part: the answer lists the index, field and reason of
//! every rejected record (up to [`MAX_LISTED_ERRORS`]). Accepted records are queued without
//! waiting (with `durability: spool`, after their group's `fdatasync`); a full queue or spool
//! answers 503 with `Retry-After` and takes nothing.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::api::ApiError;
use crate::clock::now_ms;
use crate::health::{Health, RequestReject, Source};
use crate::pipeline::Pipeline;
use crate::price::PriceTable;
use crate::record::{Event, RecordError, Validation, parse_array, parse_event};
use crate::spool::{Refusal, Spool};

/// Most per-record errors listed in one answer (all are counted).
pub const MAX_LISTED_ERRORS: usize = 100;

/// What the native ingest handler needs.
#[derive(Clone)]
pub struct NativeIngest {
    /// Where accepted events go.
    pub pipeline: Pipeline,
    /// With `durability: spool`: accepted events go through it (on disk before the answer).
    pub spool: Option<Spool>,
    /// Health counters.
    pub health: Arc<Health>,
    /// Limits.
    pub config: IngestConfig,
    /// Prices for records without a cost.
    pub prices: Arc<PriceTable>,
}

/// Ingest limits of the native API.
#[derive(Debug, Clone, Copy)]
pub struct IngestConfig {
    /// Largest body accepted, after decompression, in bytes.
    pub max_body_bytes: usize,
    /// Most records in one request.
    pub max_records_per_request: usize,
    /// Keep each record's `request` object, redacted, up to this many bytes (`None`: skip it).
    pub keep_requests: Option<usize>,
}

/// The answer to an ingest request (200, or 400 when nothing was valid).
#[derive(Debug, Serialize)]
pub struct IngestResponse {
    /// Records taken (duplicates of already counted ids included: they are acknowledged, not counted twice).
    pub accepted: usize,
    /// Records refused.
    pub rejected: usize,
    /// Why, per refused record (at most [`MAX_LISTED_ERRORS`]).
    pub errors: Vec<IndexedError>,
    /// Present and true when more errors occurred than are listed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub errors_truncated: bool,
}

/// One refused record.
#[derive(Debug, Serialize)]
pub struct IndexedError {
    /// Position of the record in the body (0-based; NDJSON: among non-blank lines).
    pub index: usize,
    /// Offending field.
    pub field: String,
    /// Why.
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Ndjson,
}

fn format_of(headers: &HeaderMap) -> Result<Format, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/json" => Ok(Format::Json),
        "application/x-ndjson"
        | "application/ndjson"
        | "application/jsonl"
        | "application/x-jsonlines" => Ok(Format::Ndjson),
        _ => Err(ApiError::UnsupportedMediaType {
            code: "unsupported_media_type",
            message: format!(
                "Content-Type {:?} is not accepted; send application/json (an object or an array) or application/x-ndjson",
                if ct.is_empty() { "(none)" } else { ct }
            ),
        }),
    }
}

/// The outcome of reading a body: events to queue and refused records.
struct Parsed {
    events: Vec<Event>,
    errors: Vec<(usize, RecordError)>,
}

impl Parsed {
    fn push(&mut self, index: usize, r: Result<Event, RecordError>) {
        match r {
            Ok(e) => self.events.push(e),
            Err(e) => self.errors.push((index, e)),
        }
    }
}

fn malformed(message: String) -> (RequestReject, ApiError) {
    (
        RequestReject::Malformed,
        ApiError::BadRequest {
            code: "malformed",
            message,
        },
    )
}

fn too_many(n: usize, max: usize) -> (RequestReject, ApiError) {
    (
        RequestReject::TooManyRecords,
        ApiError::TooLarge {
            code: "too_many_records",
            message: format!("the body holds {n} records; the limit is {max} per request"),
        },
    )
}

fn parse_body(
    body: &[u8],
    format: Format,
    v: &Validation<'_>,
    max: usize,
) -> Result<Parsed, (RequestReject, ApiError)> {
    let text =
        std::str::from_utf8(body).map_err(|e| malformed(format!("the body is not UTF-8: {e}")))?;
    let mut parsed = Parsed {
        events: Vec::new(),
        errors: Vec::new(),
    };
    match format {
        Format::Ndjson => {
            let lines = text
                .split('\n')
                .map(|l| l.trim_end_matches('\r'))
                .filter(|l| !l.trim().is_empty());
            for (i, line) in lines.enumerate() {
                if i >= max {
                    let n = text.split('\n').filter(|l| !l.trim().is_empty()).count();
                    return Err(too_many(n, max));
                }
                parsed.push(i, parse_event(line, v));
            }
        }
        Format::Json => match text.trim_start().as_bytes().first() {
            Some(b'[') => {
                // Fast path: one pass when every element deserializes.
                if let Some(results) = parse_array(text, v) {
                    if results.len() > max {
                        return Err(too_many(results.len(), max));
                    }
                    parsed.events.reserve(results.len());
                    for (i, r) in results.into_iter().enumerate() {
                        parsed.push(i, r);
                    }
                    return Ok(parsed);
                }
                let items: Vec<&RawValue> = serde_json::from_str(text)
                    .map_err(|e| malformed(format!("invalid JSON array: {e}")))?;
                if items.len() > max {
                    return Err(too_many(items.len(), max));
                }
                parsed.events.reserve(items.len());
                for (i, item) in items.iter().enumerate() {
                    parsed.push(i, parse_event(item.get(), v));
                }
            }
            Some(b'{') => parsed.push(0, parse_event(text, v)),
            _ => {
                return Err(malformed(
                    "expected a JSON object, an array of objects, or NDJSON with Content-Type application/x-ndjson"
                        .to_string(),
                ));
            }
        },
    }
    Ok(parsed)
}

/// `POST /v1/events`.
pub async fn post_events(
    State(ingest): State<Arc<NativeIngest>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match handle(&ingest, &headers, body).await {
        Ok(resp) => resp,
        Err((reason, err)) => {
            ingest.health.rejected_request(Source::Native, reason);
            err.into_response()
        }
    }
}

async fn handle(
    ingest: &NativeIngest,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, (RequestReject, ApiError)> {
    let format = format_of(headers).map_err(|e| (RequestReject::UnsupportedMediaType, e))?;
    let bytes = crate::ingest::body::read(body, headers, ingest.config.max_body_bytes)
        .await
        .map_err(|e| (e.reason, e.error))?;
    let v = Validation {
        now_ms: now_ms(),
        prices: &ingest.prices,
        keep_requests: ingest.config.keep_requests,
    };
    let Parsed { events, errors } =
        parse_body(&bytes, format, &v, ingest.config.max_records_per_request)?;
    drop(bytes);

    let health = &ingest.health;
    for (_, e) in &errors {
        health.rejected_record(Source::Native, e.reason);
    }
    let accepted = events.len();
    if accepted > 0 {
        let submitted = match &ingest.spool {
            None => ingest.pipeline.try_submit(events).map_err(Refusal::from),
            Some(spool) => spool.submit(events).await,
        };
        submitted.map_err(|e| {
            let message = match e {
                Refusal::QueueFull => "the ingest queue is full; nothing was taken, retry after 1 s",
                Refusal::ShuttingDown => {
                    "the server is shutting down; nothing was taken, retry against another instance"
                }
                Refusal::Full => {
                    "the durable spool is full (the stores are behind); nothing was taken, retry after 1 s"
                }
                Refusal::Failed => {
                    "the durable spool could not write to disk; nothing was taken, retry after 1 s"
                }
            };
            (
                RequestReject::Overloaded,
                ApiError::Unavailable {
                    message: message.to_string(),
                    retry_after_secs: 1,
                },
            )
        })?;
        health.accepted(Source::Native, accepted as u64);
    }
    let rejected = errors.len();
    let resp = IngestResponse {
        accepted,
        rejected,
        errors_truncated: rejected > MAX_LISTED_ERRORS,
        errors: errors
            .into_iter()
            .take(MAX_LISTED_ERRORS)
            .map(|(index, e)| IndexedError {
                index,
                field: e.field,
                message: e.message,
            })
            .collect(),
    };
    let status = if accepted == 0 && rejected > 0 {
        health.rejected_request(Source::Native, RequestReject::NothingValid);
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(resp)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str, format: Format) -> Result<Parsed, (RequestReject, ApiError)> {
        let prices = PriceTable::default();
        parse_body(
            body.as_bytes(),
            format,
            &Validation {
                now_ms: 1_760_000_000_000,
                prices: &prices,
                keep_requests: None,
            },
            3,
        )
    }

    const OK: &str = r#"{"model":"m","status":200,"duration_ms":1}"#;

    #[test]
    fn array_is_accepted_in_part() {
        let p = parse(&format!(r#"[{OK}, {{"model":"m"}}, 5]"#), Format::Json).expect("parsed");
        assert_eq!(p.events.len(), 1);
        let idx: Vec<usize> = p.errors.iter().map(|(i, _)| *i).collect();
        assert_eq!(idx, vec![1, 2]);
        assert_eq!(p.errors[0].1.field, "status");
    }

    #[test]
    fn ndjson_counts_non_blank_lines() {
        let p = parse(&format!("{OK}\n\n{{bad\r\n{OK}\n"), Format::Ndjson).expect("parsed");
        assert_eq!(p.events.len(), 2);
        assert_eq!(p.errors[0].0, 1);
    }

    #[tokio::test]
    async fn a_full_queue_answers_503_with_retry_after_and_takes_nothing() {
        use axum::body::Body;
        use axum::http::Request;
        use tower::ServiceExt;

        use crate::store::{Discard, MemoryStore};

        let health = Arc::new(Health::new(3));
        let cfg = crate::pipeline::PipelineConfig {
            queue_capacity: 3,
            ..Default::default()
        };
        // On this single-threaded runtime the aggregator task cannot run until the test awaits
        // something that is not ready, so the queue stays as the requests leave it.
        let (pipeline, _task) = Pipeline::spawn(
            cfg,
            Arc::new(MemoryStore::new()),
            Arc::new(Discard),
            health.clone(),
        );
        let ingest = NativeIngest {
            pipeline,
            spool: None,
            health: health.clone(),
            config: IngestConfig {
                max_body_bytes: 1 << 20,
                max_records_per_request: 3,
                keep_requests: None,
            },
            prices: Arc::new(PriceTable::default()),
        };
        let app = axum::Router::new()
            .route("/v1/events", axum::routing::post(post_events))
            .with_state(Arc::new(ingest));
        let post = |body: String| {
            Request::post("/v1/events")
                .header("content-type", "application/json")
                .body(Body::from(body))
                .expect("request")
        };
        let first = app
            .clone()
            .oneshot(post(format!("[{OK},{OK}]")))
            .await
            .expect("answer");
        assert_eq!(first.status(), StatusCode::OK);
        let second = app
            .oneshot(post(format!("[{OK},{OK}]")))
            .await
            .expect("answer");
        assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(second.headers()[header::RETRY_AFTER], "1");
        let body = axum::body::to_bytes(second.into_body(), 1 << 16)
            .await
            .expect("body");
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("queue is full"), "{text}");
        let h = health.snapshot();
        assert_eq!(h.accepted[Source::Native as usize], 2);
        assert_eq!(h.dropped[crate::health::DropReason::QueueFull as usize], 2);
        assert_eq!(
            h.rejected_requests[Source::Native as usize][RequestReject::Overloaded as usize],
            1
        );
    }

    #[test]
    fn limits_and_malformed_bodies() {
        let four = format!("[{OK},{OK},{OK},{OK}]");
        assert!(matches!(
            parse(&four, Format::Json),
            Err((RequestReject::TooManyRecords, _))
        ));
        let four_lines = format!("{OK}\n{OK}\n{OK}\n{OK}\n");
        assert!(matches!(
            parse(&four_lines, Format::Ndjson),
            Err((RequestReject::TooManyRecords, _))
        ));
        assert!(matches!(
            parse("[1,", Format::Json),
            Err((RequestReject::Malformed, _))
        ));
        assert!(matches!(
            parse("42", Format::Json),
            Err((RequestReject::Malformed, _))
        ));
    }
}
