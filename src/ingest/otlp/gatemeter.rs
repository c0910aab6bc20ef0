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
    use std::collections::HashMap;

    use opentelemetry_proto::tonic::common::v1::any_value::Value;

    use crate::export::otlp_logs::encode_batch;
    use crate::price::{ModelPrice, PriceTable};
    use crate::record::{CostSource, RecordFields, ValidRecord, Validation};

    const NOW: i64 = 1_795_460_000_000;

    /// A record with every field set to a value that is not its default.
    fn full_record(prices: &PriceTable) -> Box<ValidRecord> {
        let v = Validation {
            now_ms: NOW,
            prices,
        };
        let r = RecordFields {
            request_id: Some("r-1".into()),
            timestamp_ms: Some(NOW - 5_000),
            namespace: Some("team-a".into()),
            instance: Some("gw-2".into()),
            user: Some("ann@example.com".into()),
            user_id: Some("u-7".into()),
            key: Some("ci".into()),
            key_id: Some("k-9".into()),
            provider: Some("anthropic".into()),
            model: Some("claude-sonnet-4-5".into()),
            original_model: Some("claude-opus-4-1".into()),
            endpoint: Some("/v1/messages".into()),
            api_type: Some("claude".into()),
            method: Some("PUT".into()),
            status: Some(529),
            duration_ms: Some(1200),
            ttfb_ms: Some(300),
            input_tokens: Some(10),
            output_tokens: Some(20),
            cache_creation_5m_tokens: Some(1),
            cache_creation_1h_tokens: Some(2),
            cache_read_tokens: Some(3),
            session_id: Some("s-1".into()),
            retry_count: Some(2),
            provider_chain: Some(vec!["a".into(), "b\"c".into()]),
            is_streaming: Some(true),
            error: Some("overloaded".into()),
            blocked_by: Some("words".into()),
            block_reason: Some("a word".into()),
            user_agent: Some("claude-cli/2.1".into()),
            client_ip: Some("10.0.0.1".into()),
            messages_count: Some(4),
            trace_id: Some("0af7651916cd43dd8448eb211c80319c".into()),
            ..RecordFields::default()
        }
        .validate(&v)
        .expect("valid");
        // Priced by the table, not reported.
        assert_eq!(r.cost_source, CostSource::Priced);
        assert_eq!(r.cost_micros, 1_234_568);
        r
    }

    fn prices() -> PriceTable {
        let models = HashMap::from([(
            "claude-sonnet-4-5".to_string(),
            ModelPrice {
                input: 123_456_789,
                ..ModelPrice::default()
            },
        )]);
        PriceTable::new(models, HashMap::new()).expect("prices")
    }

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
        let sent = full_record(&prices());
        assert_eq!(round_trip(&sent), *sent);
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
        let sent = full_record(&prices());
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
