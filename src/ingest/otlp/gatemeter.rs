//! Read-back of `gatemeter.request` log records — another gatemeter's OTLP log export (edge →
//! central) — into request records, validated like native ones.
//!
//! The attribute names are the `otlp` column of the record's field table
//! (`crate::record::fields`), the very table the export (`crate::export::otlp_logs`) writes
//! from; every field the export sends comes back, cost as exact integer micro-USD with its
//! source. Attributes of the record override the resource's.

use compact_str::CompactString;

use super::decode::{Val, bool_of, compact_text, str_of, u64_of};
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
        FieldId::DurationMs => f.duration_ms = Some(int()?),
        FieldId::TtfbMs => f.ttfb_ms = Some(int()?),
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

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;

    use crate::export::otlp_logs::encode_batch;
    use crate::price::PriceTable;
    use crate::record::{CostSource, RecordFields, ValidRecord, Validation};

    const NOW: i64 = 1_795_460_000_000;

    /// Exports `sent` and reads it back.
    fn round_trip(sent: &ValidRecord) -> ValidRecord {
        let req = encode_batch(&[Box::new(sent.clone())]);
        let view = crate::ingest::otlp::scan::view(&req);
        let rl = &view[0];
        let lr = &rl.records[0];
        assert_eq!(lr.event_name, crate::record::fields::GATEMETER_EVENT);
        let time_ms = Some((lr.time_ns / 1_000_000) as i64);
        let v = Validation {
            now_ms: NOW,
            prices: &PriceTable::default(),
        };
        *super::record(&rl.resource, &lr.attrs, time_ms, &v).expect("read back")
    }

    #[test]
    fn every_field_survives_export_and_read_back() {
        let mut sent = *crate::record::test_full_record();
        assert_eq!(sent.cost_source, CostSource::Reported);
        assert_eq!(round_trip(&sent), sent);
        sent.cost_source = CostSource::Priced;
        sent.cost_micros = 1_234_567;
        assert_eq!(round_trip(&sent), sent);
        // And so do absent optional fields and defaults.
        let prices = PriceTable::default();
        let v = Validation {
            now_ms: NOW,
            prices: &prices,
        };
        let minimal = RecordFields {
            model: Some("m".into()),
            status: Some(0),
            duration_ms: Some(0),
            ..RecordFields::default()
        }
        .validate(&v)
        .expect("valid");
        assert_eq!(minimal.cost_source, CostSource::Unpriced);
        assert_eq!(round_trip(&minimal), *minimal);
    }

    #[test]
    fn unreadable_attributes_reject_the_record_naming_them() {
        let sent = crate::record::test_full_record();
        let mut req = encode_batch(&[sent]);
        let attrs = &mut req.resource_logs[0].scope_logs[0].log_records[0].attributes;
        for kv in attrs.iter_mut() {
            if kv.key == "gatemeter.provider_chain" {
                kv.value = Some(opentelemetry_proto::tonic::common::v1::AnyValue {
                    value: Some(Value::StringValue("a,b".into())),
                });
            }
        }
        let view = crate::ingest::otlp::scan::view(&req);
        let v = Validation {
            now_ms: NOW,
            prices: &PriceTable::default(),
        };
        let err = super::record(&view[0].resource, &view[0].records[0].attrs, None, &v)
            .expect_err("refused");
        assert_eq!(err.field, "attributes.gatemeter.provider_chain");
    }
}
