//! OTLP bodies into `opentelemetry-proto` types, and reading attribute values.
//!
//! Protobuf goes through prost (its recursion limit of 100 nested messages refuses deeply nested
//! AnyValues); OTLP/JSON through the crate's serde support (hex trace/span ids, int64 as a string
//! or a number, enums as integers, unknown fields ignored; serde_json's recursion limit of 128
//! refuses deep nesting). Both refusals are errors, never a stack overflow.
//!
//! Attribute values are read leniently where Claude Code is lenient: numbers and booleans that
//! arrive as strings are parsed.

use std::borrow::Cow;

use axum::http::{HeaderMap, header};
use compact_str::CompactString;
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value::Value};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use serde::de::DeserializeOwned;

/// The two OTLP/HTTP encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `application/x-protobuf`.
    Protobuf,
    /// `application/json`.
    Json,
}

impl Encoding {
    /// The media type answers carry.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Protobuf => "application/x-protobuf",
            Self::Json => "application/json",
        }
    }

    /// The encoding named by the request's Content-Type (parameters ignored), if supported.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
        let media = ct.split(';').next()?.trim().to_ascii_lowercase();
        match media.as_str() {
            "application/x-protobuf" | "application/protobuf" => Some(Self::Protobuf),
            "application/json" => Some(Self::Json),
            _ => None,
        }
    }
}

/// Decodes one export request message.
pub fn message<T: prost::Message + Default + DeserializeOwned>(
    body: &[u8],
    enc: Encoding,
) -> Result<T, String> {
    match enc {
        Encoding::Protobuf => T::decode(body).map_err(|e| format!("invalid protobuf: {e}")),
        Encoding::Json if has_string_double(body) => {
            let mut v: serde_json::Value =
                serde_json::from_slice(body).map_err(|e| format!("invalid OTLP/JSON: {e}"))?;
            doubles_from_strings(&mut v);
            serde_json::from_value(v).map_err(|e| format!("invalid OTLP/JSON: {e}"))
        }
        Encoding::Json => {
            serde_json::from_slice(body).map_err(|e| format!("invalid OTLP/JSON: {e}"))
        }
    }
}

/// Whether an `"asDouble"` key of `body` has a string value (`"asDouble": "1.5"`).
fn has_string_double(body: &[u8]) -> bool {
    memchr::memmem::find_iter(body, b"\"asDouble\"").any(|at| {
        let rest = &body[at + b"\"asDouble\"".len()..];
        let mut it = rest.iter().copied().skip_while(u8::is_ascii_whitespace);
        it.next() == Some(b':') && it.find(|b| !b.is_ascii_whitespace()) == Some(b'"')
    })
}

/// Proto3 JSON may send a double as a string (`"1.5"`, `"NaN"`, `"Infinity"`); the generated
/// types read only numbers there (and a flattened oneof that fails to read is silently absent).
/// Finite values become numbers; the others are dropped, so the point has no value and is
/// refused as not finite. Depth is bounded by serde_json's recursion limit.
fn doubles_from_strings(v: &mut serde_json::Value) {
    use serde_json::Value as Json;
    match v {
        Json::Object(m) => {
            let number = match m.get("asDouble") {
                Some(Json::String(s)) => Some(
                    s.trim()
                        .parse::<f64>()
                        .ok()
                        .and_then(serde_json::Number::from_f64),
                ),
                _ => None,
            };
            match number {
                Some(Some(n)) => {
                    m.insert("asDouble".to_string(), Json::Number(n));
                }
                Some(None) => {
                    m.remove("asDouble");
                }
                None => {}
            }
            m.values_mut().for_each(doubles_from_strings);
        }
        Json::Array(a) => a.iter_mut().for_each(doubles_from_strings),
        _ => {}
    }
}

/// A scalar attribute value, borrowed (from a decoded message or straight from the body).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Val<'a> {
    /// `stringValue`.
    Str(&'a str),
    /// `intValue`.
    Int(i64),
    /// `doubleValue`.
    Double(f64),
    /// `boolValue`.
    Bool(bool),
    /// An array, a key-value list or bytes: no scalar reading.
    Other,
    /// No value.
    Empty,
}

impl<'a> Val<'a> {
    /// The view of a decoded value.
    pub fn of(v: &'a AnyValue) -> Self {
        match &v.value {
            Some(Value::StringValue(s)) => Val::Str(s),
            Some(Value::IntValue(i)) => Val::Int(*i),
            Some(Value::DoubleValue(d)) => Val::Double(*d),
            Some(Value::BoolValue(b)) => Val::Bool(*b),
            None => Val::Empty,
            Some(_) => Val::Other,
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Val::Empty => "an empty value",
            Val::Str(_) => "a string",
            Val::Bool(_) => "a boolean",
            Val::Int(_) => "an integer",
            Val::Double(_) => "a double",
            Val::Other => "an array, key-value list or bytes",
        }
    }
}

/// A string value (only `stringValue`).
pub fn str_of(v: Val<'_>) -> Option<&str> {
    match v {
        Val::Str(s) => Some(s),
        _ => None,
    }
}

/// A scalar as text: strings as they are, numbers and booleans printed. Arrays, maps and bytes
/// have no text form here.
pub fn text_of(v: Val<'_>) -> Option<Cow<'_, str>> {
    match v {
        Val::Str(s) => Some(Cow::Borrowed(s)),
        Val::Int(i) => Some(Cow::Owned(i.to_string())),
        Val::Double(d) => Some(Cow::Owned(d.to_string())),
        Val::Bool(b) => Some(Cow::Borrowed(if b { "true" } else { "false" })),
        Val::Other | Val::Empty => None,
    }
}

/// A compact copy of [`text_of`] (copied from the `str`: `to_compact_string` on a `Cow` would
/// go through `fmt::Display`).
pub fn compact_text(v: Val<'_>) -> Option<CompactString> {
    match v {
        Val::Str(s) => Some(CompactString::from(s)),
        other => text_of(other).map(|t| CompactString::from(t.as_ref())),
    }
}

/// A non-negative integer: `intValue`, a whole `doubleValue`, or a string holding either.
pub fn u64_of(v: Val<'_>) -> Result<u64, String> {
    match v {
        Val::Int(i) => u64::try_from(i).map_err(|_| format!("{i} is negative")),
        Val::Double(d) => whole(d),
        Val::Str(s) => {
            let t = s.trim();
            t.parse::<u64>()
                .or_else(|_| {
                    t.parse::<f64>()
                        .map_err(|_| ())
                        .and_then(|d| whole(d).map_err(|_| ()))
                })
                .map_err(|_| format!("{s:?} is not a non-negative integer"))
        }
        other => Err(format!("{} is not an integer", other.kind())),
    }
}

fn whole(d: f64) -> Result<u64, String> {
    if d.is_finite() && d >= 0.0 && d.fract() == 0.0 && d < 1.8e19 {
        Ok(d as u64)
    } else {
        Err(format!("{d} is not a non-negative integer"))
    }
}

/// A number: `doubleValue`, `intValue`, or a string holding one.
pub fn f64_of(v: Val<'_>) -> Result<f64, String> {
    match v {
        Val::Double(d) => Ok(d),
        Val::Int(i) => Ok(i as f64),
        Val::Str(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| format!("{s:?} is not a number")),
        other => Err(format!("{} is not a number", other.kind())),
    }
}

/// A boolean: `boolValue`, or the strings `true` / `false` (any case), or 0 / 1.
pub fn bool_of(v: Val<'_>) -> Result<bool, String> {
    match v {
        Val::Bool(b) => Ok(b),
        Val::Int(0) => Ok(false),
        Val::Int(1) => Ok(true),
        Val::Str(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(format!("{s:?} is not a boolean")),
        },
        other => Err(format!("{} is not a boolean", other.kind())),
    }
}

/// The number of points of a metric, of any type (what a request's `received` counts and its
/// point indexes run over).
pub fn point_count(data: Option<&Data>) -> usize {
    match data {
        Some(Data::Gauge(g)) => g.data_points.len(),
        Some(Data::Sum(s)) => s.data_points.len(),
        Some(Data::Histogram(h)) => h.data_points.len(),
        Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
        Some(Data::Summary(s)) => s.data_points.len(),
        None => 0,
    }
}

/// Feeds a value into a hasher (stream identities); nesting is bounded by the decoders.
pub fn hash_value(v: &AnyValue, h: &mut impl std::hash::Hasher) {
    use std::hash::Hash;
    match &v.value {
        None => 0u8.hash(h),
        Some(Value::StringValue(s)) => (1u8, s).hash(h),
        Some(Value::BoolValue(b)) => (2u8, b).hash(h),
        Some(Value::IntValue(i)) => (3u8, i).hash(h),
        Some(Value::DoubleValue(d)) => (4u8, d.to_bits()).hash(h),
        Some(Value::ArrayValue(a)) => {
            5u8.hash(h);
            a.values.len().hash(h);
            for x in &a.values {
                hash_value(x, h);
            }
        }
        Some(Value::KvlistValue(kv)) => {
            6u8.hash(h);
            kv.values.len().hash(h);
            for x in &kv.values {
                x.key.hash(h);
                if let Some(v) = &x.value {
                    hash_value(v, h);
                }
            }
        }
        Some(Value::BytesValue(b)) => (7u8, b).hash(h),
        Some(_) => 8u8.hash(h),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;

    #[test]
    fn compact_text_is_text_of() {
        let long = "x".repeat(64);
        for v in [
            Val::Str("m"),
            Val::Str(&long),
            Val::Str(""),
            Val::Int(-7),
            Val::Double(1.25),
            Val::Bool(true),
            Val::Other,
            Val::Empty,
        ] {
            assert_eq!(compact_text(v).as_deref(), text_of(v).as_deref(), "{v:?}");
        }
    }

    fn s(v: &str) -> AnyValue {
        AnyValue {
            value: Some(Value::StringValue(v.into())),
        }
    }

    #[test]
    fn numbers_and_booleans_in_strings_are_read() {
        assert_eq!(u64_of(Val::of(&s("126"))), Ok(126));
        assert_eq!(u64_of(Val::of(&s(" 7.0 "))), Ok(7));
        assert!(u64_of(Val::of(&s("-1"))).is_err());
        assert!(u64_of(Val::of(&s("abc"))).is_err());
        assert_eq!(bool_of(Val::of(&s("true"))), Ok(true));
        assert_eq!(bool_of(Val::of(&s("False"))), Ok(false));
        assert!(bool_of(Val::of(&s("yes"))).is_err());
        assert_eq!(f64_of(Val::of(&s("0.025344"))), Ok(0.025344));
    }

    /// `asDouble` as a string is legal proto3 JSON: read as the number; a non-finite one leaves
    /// the point without a value (refused by the mapping).
    #[test]
    fn otlp_json_reads_doubles_sent_as_strings() {
        use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
        use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point};
        let body = |v: &str| {
            format!(
                r#"{{"resourceMetrics":[{{"scopeMetrics":[{{"metrics":[{{"name":"m","sum":{{"aggregationTemporality":1,"isMonotonic":true,"dataPoints":[{{"asDouble" : {v},"timeUnixNano":"1"}}]}}}}]}}]}}]}}"#
            )
        };
        let value = |v: &str| {
            let req: ExportMetricsServiceRequest =
                message(body(v).as_bytes(), Encoding::Json).expect("decodes");
            let m = &req.resource_metrics[0].scope_metrics[0].metrics[0];
            let Some(Data::Sum(sum)) = &m.data else {
                panic!("a sum")
            };
            sum.data_points[0].value
        };
        let double = |d| Some(number_data_point::Value::AsDouble(d));
        assert_eq!(value(r#""1.5""#), double(1.5));
        assert_eq!(value(r#"" 2e3""#), double(2000.0));
        assert_eq!(value("1.5"), double(1.5));
        for odd in [r#""NaN""#, r#""Infinity""#, r#""-Infinity""#, r#""x""#] {
            assert_eq!(value(odd), None, "{odd}");
        }
        assert!(has_string_double(br#"{"asDouble":"1"}"#));
        assert!(!has_string_double(br#"{"asDouble": 1, "s": "asDouble"}"#));
    }

    #[test]
    fn otlp_json_reads_ints_as_strings_or_numbers_and_hex_ids() {
        let json = br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[
            {"timeUnixNano":"1795458564571000000","severityNumber":9,
             "traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
             "unknownField":{"x":1},
             "attributes":[{"key":"a","value":{"intValue":6}},{"key":"b","value":{"intValue":"7"}}]},
            {"timeUnixNano":1795458564571000000}]}]}]}"#;
        let req: ExportLogsServiceRequest = message(json, Encoding::Json).expect("decodes");
        let logs = &req.resource_logs[0].scope_logs[0].log_records;
        assert_eq!(logs[0].time_unix_nano, 1_795_458_564_571_000_000);
        assert_eq!(logs[1].time_unix_nano, 1_795_458_564_571_000_000);
        assert_eq!(logs[0].severity_number, 9);
        assert_eq!(logs[0].trace_id.len(), 16);
        assert_eq!(logs[0].span_id.len(), 8);
        let vals: Vec<u64> = logs[0]
            .attributes
            .iter()
            .map(|kv| u64_of(Val::of(kv.value.as_ref().expect("value"))).expect("int"))
            .collect();
        assert_eq!(vals, vec![6, 7]);
    }

    fn nested_json(depth: usize) -> String {
        let open = r#"{"kvlistValue":{"values":[{"key":"k","value":"#;
        let close = "}]}}";
        let v = format!(
            r#"{}{{"stringValue":"leaf"}}{}"#,
            open.repeat(depth),
            close.repeat(depth)
        );
        format!(r#"{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[{{"body":{v}}}]}}]}}]}}"#)
    }

    fn nested_proto(depth: usize) -> Vec<u8> {
        use opentelemetry_proto::tonic::common::v1::{KeyValue, KeyValueList};
        use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
        use prost::Message;
        // Encoded by hand from the inside out so that building it needs no deep recursion.
        let mut inner = s("leaf").encode_to_vec();
        for _ in 0..depth {
            let kv = {
                let mut b = Vec::new();
                prost::encoding::string::encode(1, &"k".to_string(), &mut b);
                prost::encoding::encode_key(2, prost::encoding::WireType::LengthDelimited, &mut b);
                prost::encoding::encode_varint(inner.len() as u64, &mut b);
                b.extend_from_slice(&inner);
                b
            };
            let mut list = Vec::new();
            prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut list);
            prost::encoding::encode_varint(kv.len() as u64, &mut list);
            list.extend_from_slice(&kv);
            let mut any = Vec::new();
            // AnyValue.kvlist_value is field 6.
            prost::encoding::encode_key(6, prost::encoding::WireType::LengthDelimited, &mut any);
            prost::encoding::encode_varint(list.len() as u64, &mut any);
            any.extend_from_slice(&list);
            inner = any;
        }
        let _ = (KeyValue::default(), KeyValueList::default());
        let shell = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![LogRecord::default()],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        // Splice the body (LogRecord field 5) into the innermost record by re-encoding layers.
        let mut record = shell.resource_logs[0].scope_logs[0].log_records[0].encode_to_vec();
        prost::encoding::encode_key(5, prost::encoding::WireType::LengthDelimited, &mut record);
        prost::encoding::encode_varint(inner.len() as u64, &mut record);
        record.extend_from_slice(&inner);
        let wrap = |field: u32, payload: Vec<u8>| {
            let mut b = Vec::new();
            prost::encoding::encode_key(field, prost::encoding::WireType::LengthDelimited, &mut b);
            prost::encoding::encode_varint(payload.len() as u64, &mut b);
            b.extend_from_slice(&payload);
            b
        };
        let scope_logs = wrap(2, record); // ScopeLogs.log_records = 2
        let resource_logs = wrap(2, scope_logs); // ResourceLogs.scope_logs = 2
        wrap(1, resource_logs) // ExportLogsServiceRequest.resource_logs = 1
    }

    #[test]
    fn shallow_nesting_decodes_in_both_encodings() {
        let r: ExportLogsServiceRequest =
            message(nested_json(5).as_bytes(), Encoding::Json).expect("json");
        assert!(
            r.resource_logs[0].scope_logs[0].log_records[0]
                .body
                .is_some()
        );
        let r: ExportLogsServiceRequest =
            message(&nested_proto(5), Encoding::Protobuf).expect("protobuf");
        assert!(
            r.resource_logs[0].scope_logs[0].log_records[0]
                .body
                .is_some()
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        for depth in [200, 2000] {
            let e =
                message::<ExportLogsServiceRequest>(nested_json(depth).as_bytes(), Encoding::Json)
                    .expect_err("too deep");
            assert!(e.contains("recursion limit"), "{e}");
            let e = message::<ExportLogsServiceRequest>(&nested_proto(depth), Encoding::Protobuf)
                .expect_err("too deep");
            assert!(e.contains("recursion limit"), "{e}");
        }
    }
}
