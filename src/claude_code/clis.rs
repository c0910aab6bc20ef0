//! The other coding CLIs' OTLP events as request records: Gemini CLI (`gemini_cli.*`) and
//! Codex CLI (`codex.*`), read like Claude Code's `api_request` / `api_error` (captures of both
//! real CLIs: `tests/data/genai/gemini-cli`, `codex-cli`).
//!
//! - Gemini CLI: `gemini_cli.api_response` → a record (model, `duration_ms`, `status_code`;
//!   `input_token_count` counts the cached `cached_content_token_count`, which goes to cache
//!   reads; `thoughts_token_count` is billed as output and added to it); `gemini_cli.api_error`
//!   → a failed record (`status_code`, else 0; `error`). Provider `google`, `api_type` gemini.
//! - Codex CLI: the `codex.sse_event` of kind `response.completed` that carries the token counts
//!   → a record (`input_token_count` counts `cached_token_count`, which goes to cache reads;
//!   `output_token_count` already counts `reasoning_token_count`); `codex.api_request` with a
//!   status that is not 2xx → a failed record. Provider `openai`, `api_type` codex. Codex puts
//!   the request's duration on `codex.api_request`, not on the event with the tokens: a
//!   successful Codex record has duration 0.
//!
//! Identity: the CLI's session (`session.id` / `conversation.id`), the event's own
//! `event.timestamp` and name — a retried export repeats all three. Namespace from the
//! configured attribute, user from `user.email` else `user.id`. Pure: reads no clock.

use std::hash::{Hash, Hasher};

use compact_str::CompactString;

use crate::otlp::decode::{Val, compact_text, str_of, u64_of};
use crate::otlp::scan::Kv;
use crate::record::{RecordError, RecordFields, RejectReason, ValidRecord, Validation};

/// Whether `name` is a Gemini CLI or Codex CLI event this module may turn into a record.
pub fn is_record_event(name: &str) -> bool {
    matches!(
        name,
        "gemini_cli.api_response"
            | "gemini_cli.api_error"
            | "codex.sse_event"
            | "codex.api_request"
    )
}

/// An attribute of the record, else of the resource.
fn get<'a>(resource: &[Kv<'a>], attrs: &[Kv<'a>], key: &str) -> Option<Val<'a>> {
    attrs
        .iter()
        .chain(resource)
        .find(|kv| kv.key == key && kv.val != Val::Empty)
        .map(|kv| kv.val)
}

fn attr_err(field: &str, message: String) -> RecordError {
    RecordError {
        field: format!("attributes.{field}"),
        message,
        reason: RejectReason::WrongType,
    }
}

/// Reads the record's events: `Ok(None)` when this event is not a record (another Codex SSE
/// kind, a successful `codex.api_request`).
pub fn record(
    name: &str,
    resource: &[Kv<'_>],
    attrs: &[Kv<'_>],
    time_ms: Option<i64>,
    namespace_attribute: Option<&str>,
    v: &Validation<'_>,
) -> Result<Option<Box<ValidRecord>>, RecordError> {
    let at = |k: &str| get(resource, attrs, k);
    let num = |k: &str| -> Result<Option<u64>, RecordError> {
        at(k)
            .map(|x| u64_of(x).map_err(|m| attr_err(k, m)))
            .transpose()
    };
    let text = |k: &str| at(k).and_then(compact_text);
    let status = at("status_code")
        .or_else(|| at("http.response.status_code"))
        .and_then(|s| u64_of(s).ok())
        .and_then(|n| u16::try_from(n).ok());
    let gemini = name.starts_with("gemini_cli.");
    let mut f = match name {
        "codex.sse_event" => {
            let completed = at("event.kind").and_then(str_of) == Some("response.completed");
            if !completed || at("input_token_count").is_none() {
                return Ok(None);
            }
            RecordFields {
                status: Some(200),
                ..RecordFields::default()
            }
        }
        "codex.api_request" => match status {
            Some(s) if (200..300).contains(&s) => return Ok(None),
            s => RecordFields {
                status: Some(s.unwrap_or(0)),
                error: text("error.message").or_else(|| text("error")),
                cost_usd: Some(0.0),
                ..RecordFields::default()
            },
        },
        "gemini_cli.api_error" => RecordFields {
            status: Some(status.unwrap_or(0)),
            error: text("error").or_else(|| text("error_type")),
            cost_usd: Some(0.0),
            ..RecordFields::default()
        },
        _ => RecordFields {
            status: Some(status.unwrap_or(200)),
            ..RecordFields::default()
        },
    };
    if f.status == Some(200) {
        let (input, cached, thoughts) = if gemini {
            (
                num("input_token_count")?,
                num("cached_content_token_count")?,
                num("thoughts_token_count")?,
            )
        } else {
            (num("input_token_count")?, num("cached_token_count")?, None)
        };
        f.input_tokens = input.map(|n| n.saturating_sub(cached.unwrap_or(0)));
        f.cache_read_tokens = cached;
        f.output_tokens = match (num("output_token_count")?, thoughts) {
            (Some(o), Some(t)) => Some(o + t),
            (o, _) => o,
        };
        f.ttfb_ms = num("ttft_ms")?.filter(|t| *t > 0).map(|t| t as f64);
    }
    let session = text("session.id").or_else(|| text("conversation.id"));
    let stamp = at("event.timestamp").and_then(str_of);
    f.request_id = match (&session, stamp) {
        (Some(s), Some(t)) => Some(CompactString::from(format!("{name}:{s}:{t}"))),
        _ => None,
    };
    f.timestamp_ms = time_ms;
    f.namespace = namespace_attribute.and_then(&text);
    f.user_id = text("user.id");
    f.user = text("user.email").or_else(|| f.user_id.clone());
    f.model = text("model");
    f.duration_ms = Some(num("duration_ms")?.unwrap_or(0) as f64);
    f.session_id = session;
    f.method = Some(CompactString::const_new("POST"));
    if gemini {
        f.provider = Some(CompactString::const_new("google"));
        f.api_type = Some(CompactString::const_new("gemini"));
        f.endpoint = Some(CompactString::const_new(
            "/v1beta/models:streamGenerateContent",
        ));
    } else {
        f.provider = Some(CompactString::const_new("openai"));
        f.api_type = Some(CompactString::const_new("codex"));
        f.endpoint = Some(CompactString::const_new("/v1/responses"));
    }
    f.validate(v).map(Some)
}

/// The identity of a CLI event without Claude Code's sequence number: its session, name,
/// `event.timestamp` and tool call id, when it has a session and a timestamp.
pub fn event_id(resource: &[Kv<'_>], attrs: &[Kv<'_>], name: &str) -> Option<u64> {
    let at = |k: &str| get(resource, attrs, k).and_then(str_of);
    let session = at("session.id").or_else(|| at("conversation.id"))?;
    let stamp = at("event.timestamp")?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (session, name, stamp, at("call_id")).hash(&mut h);
    Some(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv<'a>(key: &'a str, val: Val<'a>) -> Kv<'a> {
        Kv { key, val }
    }

    fn map(name: &str, attrs: &[Kv<'_>]) -> Result<Option<Box<ValidRecord>>, RecordError> {
        let prices = crate::price::PriceTable::default();
        let v = Validation {
            now_ms: 1_796_000_000_000,
            prices: &prices,
            keep_requests: None,
        };
        let res = [kv("team.id", Val::Str("cli-team"))];
        record(
            name,
            &res,
            attrs,
            Some(1_795_999_000_000),
            Some("team.id"),
            &v,
        )
    }

    #[test]
    fn a_gemini_response_splits_cached_and_adds_thoughts_to_output() {
        let r = map(
            "gemini_cli.api_response",
            &[
                kv("session.id", Val::Str("s1")),
                kv("event.timestamp", Val::Str("2026-12-05T05:03:45.209Z")),
                kv("model", Val::Str("gemini-2.5-pro")),
                kv("duration_ms", Val::Str("340")),
                kv("input_token_count", Val::Str("110")),
                kv("output_token_count", Val::Str("8")),
                kv("cached_content_token_count", Val::Str("40")),
                kv("thoughts_token_count", Val::Str("3")),
                kv("status_code", Val::Str("200")),
            ],
        )
        .expect("valid")
        .expect("a record");
        assert_eq!(
            (r.tokens.input, r.tokens.cache_read, r.tokens.output),
            (70, 40, 11)
        );
        assert_eq!(r.api_type, crate::record::ApiType::Gemini);
        assert_eq!(
            (r.provider.as_str(), r.namespace.as_str()),
            ("google", "cli-team")
        );
        assert_eq!(
            (r.status, r.duration_ms),
            (200, crate::record::Millis::from_ms(340))
        );
        assert_eq!(r.session_id.as_deref(), Some("s1"));
    }

    #[test]
    fn codex_records_come_from_the_completed_event_with_tokens_and_from_failed_requests() {
        let base = [
            kv("conversation.id", Val::Str("c1")),
            kv("event.timestamp", Val::Str("2026-12-05T05:04:36.411Z")),
            kv("model", Val::Str("gpt-5-codex")),
        ];
        let with = |extra: &[Kv<'static>]| {
            let mut a = base.to_vec();
            a.extend_from_slice(extra);
            a
        };
        let r = map(
            "codex.sse_event",
            &with(&[
                kv("event.kind", Val::Str("response.completed")),
                kv("input_token_count", Val::Str("240")),
                kv("output_token_count", Val::Str("11")),
                kv("cached_token_count", Val::Str("64")),
                kv("reasoning_token_count", Val::Str("5")),
            ]),
        )
        .expect("valid")
        .expect("a record");
        assert_eq!(
            (r.tokens.input, r.tokens.cache_read, r.tokens.output),
            (176, 64, 11)
        );
        assert_eq!(r.api_type, crate::record::ApiType::Codex);
        let none = map(
            "codex.sse_event",
            &with(&[kv("event.kind", Val::Str("response.completed"))]),
        )
        .expect("valid");
        assert!(
            none.is_none(),
            "the completed event without tokens is not a record"
        );
        let ok = map(
            "codex.api_request",
            &with(&[kv("http.response.status_code", Val::Str("200"))]),
        )
        .expect("valid");
        assert!(ok.is_none());
        let failed = map(
            "codex.api_request",
            &with(&[
                kv("http.response.status_code", Val::Str("429")),
                kv("duration_ms", Val::Str("16")),
            ]),
        )
        .expect("valid")
        .expect("a failed record");
        assert_eq!(
            (failed.status, failed.duration_ms),
            (429, crate::record::Millis::from_ms(16))
        );
        assert!(!failed.is_success());
    }
}
