//! Read-back of `gatemeter.request` log records — another gatemeter's OTLP log export (edge →
//! central) — into request records, validated like native ones.
//!
//! The attribute names are the `otlp` column of the record's field table
//! (`crate::record::fields`), the very table the export (`crate::export::otlp_logs`) writes
//! from; every field the export sends comes back, cost as exact integer micro-USD with its
//! source (the round trip is tested beside the export). Attributes of the record override the
//! resource's.

use compact_str::CompactString;

use super::decode::{Val, bool_of, compact_text, f64_of, str_of, u64_of};
use super::scan::Kv;
use crate::record::fields::{FIELDS, FieldId, by_otlp_key};
use crate::record::{CostSource, RecordError, RecordFields, RejectReason, ValidRecord, Validation};

/// The request record a `gatemeter.request` log record carries, from its resource and record
/// attributes and its time (epoch ms, when set).
pub fn record(
    resource: &[Kv<'_>],
    attrs: &[Kv<'_>],
    time_ms: Option<i64>,
    v: &Validation<'_>,
) -> Result<Box<ValidRecord>, RecordError> {
    let mut found: [Option<Val<'_>>; FIELDS.len()] = [None; FIELDS.len()];
    for kv in resource.iter().chain(attrs) {
        if kv.val == Val::Empty {
            continue;
        }
        if let Some(id) = by_otlp_key(kv.key) {
            found[id as usize] = Some(kv.val);
        }
    }
    let mut f = RecordFields {
        timestamp_ms: time_ms,
        ..RecordFields::default()
    };
    for (def, val) in FIELDS.iter().zip(found) {
        if let (Some(key), Some(val)) = (def.otlp, val) {
            put(&mut f, def.id, key, val)?;
        }
    }
    // The export names the model used as the one asked for when none other was.
    if f.original_model == f.model {
        f.original_model = None;
    }
    f.validate(v)
}

/// Sets field `id` of `f` from the value of attribute `key`.
fn put(f: &mut RecordFields, id: FieldId, key: &str, v: Val<'_>) -> Result<(), RecordError> {
    let text = || compact_text(v);
    let int = || u64_of(v).map_err(|m| attr_err(key, m));
    let small = || {
        let n = int()?;
        u32::try_from(n).map_err(|_| attr_err(key, format!("{n} is too large")))
    };
    match id {
        // The log record's time; a column derived from `user_id` and `user`.
        FieldId::Timestamp | FieldId::UserRef => {}
        FieldId::RequestId => f.request_id = text(),
        FieldId::Namespace => f.namespace = text(),
        FieldId::Instance => f.instance = text(),
        FieldId::User => f.user = text(),
        FieldId::UserId => f.user_id = text(),
        FieldId::Key => f.key = text(),
        FieldId::KeyId => f.key_id = text(),
        FieldId::Provider => f.provider = text(),
        FieldId::Model => f.model = text(),
        FieldId::OriginalModel => f.original_model = text(),
        FieldId::Endpoint => f.endpoint = text(),
        FieldId::ApiType => f.api_type = text(),
        FieldId::Method => f.method = text(),
        FieldId::Status => {
            let n = int()?;
            f.status =
                Some(u16::try_from(n).map_err(|_| attr_err(key, format!("{n} is too large")))?);
        }
        FieldId::DurationMs => f.duration_ms = Some(f64_of(v).map_err(|m| attr_err(key, m))?),
        FieldId::TtfbMs => f.ttfb_ms = Some(f64_of(v).map_err(|m| attr_err(key, m))?),
        FieldId::InputTokens => f.input_tokens = Some(int()?),
        FieldId::OutputTokens => f.output_tokens = Some(int()?),
        FieldId::CacheWrite5m => f.cache_creation_5m_tokens = Some(int()?),
        FieldId::CacheWrite1h => f.cache_creation_1h_tokens = Some(int()?),
        FieldId::CacheRead => f.cache_read_tokens = Some(int()?),
        FieldId::Cost => f.cost_micros = Some(int()?),
        FieldId::CostSource => {
            let s = str_of(v).unwrap_or_default();
            f.cost_source = Some(CostSource::parse(s).ok_or_else(|| {
                attr_err(key, format!("{s:?} is not reported, priced or unpriced"))
            })?);
        }
        FieldId::SessionId => f.session_id = text(),
        FieldId::RetryCount => f.retry_count = Some(small()?),
        FieldId::ProviderChain => {
            let s = str_of(v).unwrap_or_default();
            let chain: Vec<CompactString> = serde_json::from_str(s)
                .map_err(|_| attr_err(key, "is not a JSON array of strings".into()))?;
            f.provider_chain = Some(chain);
        }
        FieldId::IsStreaming => f.is_streaming = Some(bool_of(v).map_err(|m| attr_err(key, m))?),
        FieldId::Error => f.error = text(),
        FieldId::BlockedBy => f.blocked_by = text(),
        FieldId::BlockReason => f.block_reason = text(),
        FieldId::UserAgent => f.user_agent = text(),
        FieldId::ClientIp => f.client_ip = text(),
        FieldId::MessagesCount => f.messages_count = Some(small()?),
        FieldId::TraceId => f.trace_id = text(),
        FieldId::SpanId => f.span_id = text(),
        FieldId::ProviderRequestId => f.provider_request_id = text(),
        FieldId::CostAmount => f.cost = text(),
        FieldId::Currency => f.currency = text(),
    }
    Ok(())
}

fn attr_err(key: &str, message: String) -> RecordError {
    RecordError {
        field: format!("attributes.{key}"),
        message,
        reason: RejectReason::WrongType,
    }
}
